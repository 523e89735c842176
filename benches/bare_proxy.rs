//! The floor of the chosen HTTP stack, for `benches/compare.sh` and `benches/instructions.sh`:
//! the least a hyper 1.x server plus a hyper 1.x HTTP/1 client can do to proxy a request.
//!
//! `cargo run --release --example bench-bare-proxy -- PORT UPSTREAM_PORT`
//!
//! Nothing of ado-auth-proxy is in it: no client authentication, allowlist, header stripping,
//! token cache, timeouts, metrics or logs, and no connection pool. Each client connection gets its
//! own upstream connection for its whole life (the cheapest way to use hyper's client: no pool
//! lookup, no checkout, never a new connection per request), and each request only has its
//! `Authorization` and `Host` replaced. Two threads, each with a single-threaded runtime accepting
//! from the same listening socket, like the proxy's workers and nginx's two worker processes.
//!
//! Whatever this costs per request, the proxy, built on the same two hyper state machines, cannot
//! cost less; compare.sh and instructions.sh report it as the `bare` target next to nginx and the
//! proxy. It does less than the nginx configuration of those scripts too (no access log line, no
//! `Cookie` or `Connection` rewriting), so bare against nginx leans towards bare. A client
//! connection whose upstream connection closed answers 502 from then on: a benchmark tool, not
//! a proxy.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, upstream_port] = args.as_slice() else {
        eprintln!("usage: bench-bare-proxy PORT UPSTREAM_PORT");
        std::process::exit(2);
    };
    let (Ok(port), Ok(upstream_port)) = (port.parse::<u16>(), upstream_port.parse::<u16>()) else {
        eprintln!("bench-bare-proxy: ports must be numbers");
        std::process::exit(2);
    };
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
    let host = HeaderValue::from_str(&upstream.to_string()).expect("an address is a header value");
    // As long as an Entra ID access token, so the request is as large as the proxy's.
    let bearer = HeaderValue::from_str(&format!("Bearer {}", "t".repeat(1400)))
        .expect("ASCII is a header value");
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap_or_else(|error| {
        eprintln!("bench-bare-proxy: cannot listen on port {port}: {error}");
        std::process::exit(1);
    });
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    eprintln!("bench-bare-proxy listening on 127.0.0.1:{port}, upstream {upstream}");
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let listener = listener.try_clone().expect("listener clone");
            let (host, bearer) = (host.clone(), bearer.clone());
            std::thread::spawn(move || worker(listener, upstream, host, bearer))
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

fn worker(listener: StdListener, upstream: SocketAddr, host: HeaderValue, bearer: HeaderValue) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::from_std(listener).expect("register listener");
        loop {
            let Ok((client, _)) = listener.accept().await else {
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let (host, bearer) = (host.clone(), bearer.clone());
            tokio::task::spawn_local(async move {
                let _ = serve(client, upstream, host, bearer).await;
            });
        }
    });
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    host: HeaderValue,
    bearer: HeaderValue,
) -> Result<(), Box<dyn std::error::Error>> {
    client.set_nodelay(true)?;
    let upstream = TcpStream::connect(upstream).await?;
    upstream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::task::spawn_local(connection);
    let sender: Rc<RefCell<SendRequest<Incoming>>> = Rc::new(RefCell::new(sender));
    let service = service_fn(move |mut request: Request<Incoming>| {
        let headers = request.headers_mut();
        headers.insert(HOST, host.clone());
        headers.insert(AUTHORIZATION, bearer.clone());
        let sender = sender.clone();
        async move {
            // As the proxy's pool does: only a connection done with its last exchange takes
            // the next request (the borrow lasts one poll, never across an await).
            let ready = std::future::poll_fn(|cx| sender.borrow_mut().poll_ready(cx)).await;
            let response = match ready {
                Ok(()) => {
                    let pending = sender.borrow_mut().send_request(request);
                    pending.await
                }
                Err(error) => Err(error),
            };
            Ok::<_, Infallible>(match response {
                Ok(response) => response.map(BodyExt::boxed_unsync),
                Err(_) => bad_gateway(),
            })
        }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}

fn bad_gateway() -> Response<ProxyBody> {
    let mut response = Response::new(
        Empty::new()
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
