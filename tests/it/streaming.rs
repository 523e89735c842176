//! Bodies stream both ways and are never held whole; a transfer that breaks on one side is
//! broken, never completed, on the other.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;

use crate::harness::Stack;
use crate::support::{self, devops};

const BIG: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const MIB: u64 = 1024 * 1024;

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_256_mib_upload_streams_through_without_being_buffered() {
    let stack = Stack::start().await;
    let (tx, body) = support::body_channel(4);
    let request = Request::post(stack.url("/_test/upload"))
        .header("content-length", BIG.to_string())
        .header("authorization", crate::harness::basic_pat())
        .body(body)
        .expect("request");
    let response = tokio::spawn(support::send(request));
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    let mut sent = 0u64;
    while sent < MIB {
        tx.send(Ok(chunk.clone())).await.expect("send");
        sent += CHUNK as u64;
    }
    // The rest is held back until Azure DevOps has seen the first MiB: a proxy that buffered
    // the body would never forward it, and this would time out.
    wait_until("upstream received the first MiB", || {
        stack.devops.upload_bytes_received() >= MIB - CHUNK as u64 * 8
    })
    .await;
    while sent < BIG {
        tx.send(Ok(chunk.clone())).await.expect("send");
        sent += CHUNK as u64;
    }
    drop(tx);
    let response = response.await.expect("task").expect("response");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(answer["bytes"], BIG);
    assert_eq!(stack.devops.upload_bytes_received(), BIG);
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(&format!("ado_auth_proxy_request_body_bytes_total {BIG}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_256_mib_download_streams_through_without_being_buffered() {
    let stack = Stack::start().await;
    let request = Request::get(stack.url(&format!("/_test/download?bytes={BIG}&gate=1")))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = support::send(request).await.expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-length"],
        BIG.to_string().as_str()
    );
    let mut body = response.into_body();
    let mut received = 0u64;
    let mut released = false;
    let mut pattern_ok = true;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the first MiB arrives while upstream is still holding the rest")
    {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            pattern_ok &= devops::is_pattern(received, data);
            received += data.len() as u64;
        }
        // Upstream sends the rest only once the client has the first MiB.
        if !released && received >= MIB {
            stack.devops.release_download();
            released = true;
        }
    }
    assert_eq!(received, BIG);
    assert!(pattern_ok, "bytes arrived unchanged and in order");
}

#[tokio::test]
async fn an_upstream_that_breaks_off_mid_body_breaks_the_client_download() {
    let stack = Stack::start().await;
    let request = Request::get(stack.url("/_test/truncate?bytes=4000000"))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = support::send(request).await.expect("response head");
    assert_eq!(response.status(), 200);
    let result = response.into_body().collect().await;
    assert!(result.is_err(), "a truncated body must not end cleanly");
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"ado_auth_proxy_upstream_errors_total{kind="response_body"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_that_breaks_off_mid_upload_aborts_the_upstream_request() {
    let stack = Stack::start().await;
    let (tx, body) = support::body_channel(4);
    // Chunked, so that a proxy that ended the body early would make a complete, shorter upload.
    let request = Request::post(stack.url("/_test/upload"))
        .body(body)
        .expect("request");
    let response = tokio::spawn(support::send(request));
    let chunk = Bytes::from(vec![1u8; CHUNK]);
    for _ in 0..16 {
        tx.send(Ok(chunk.clone())).await.expect("send");
    }
    wait_until("upstream received the first chunks", || {
        stack.devops.upload_bytes_received() > 0
    })
    .await;
    tx.send(Err("client gave up".into()))
        .await
        .expect("send error");
    drop(tx);
    let _ = response.await;
    wait_until("upstream saw the upload break", || {
        stack.devops.uploads_broken() == 1
    })
    .await;
    assert_eq!(
        stack.devops.uploads_completed(),
        0,
        "a half-sent upload must never complete"
    );
}
