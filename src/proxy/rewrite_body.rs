//! Which responses get their URLs rewritten, and the streaming pipeline that does it: JSON, HTML
//! and XML bodies, plain or gzip-, deflate- or br-encoded (decoded, rewritten and encoded again
//! with the same encoding, so the client's `Accept-Encoding` still holds). Everything else
//! (packfiles, tarballs, wheels, nupkgs, jars) streams through untouched.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZlibDecoder, ZlibEncoder,
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, TryStreamExt as _};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyDataStream, BodyExt as _};
use hyper::body::Incoming;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use super::rewrite::{Rewriter, UrlMap, rewrite_all};
use super::snapshot::Snapshot;
use crate::error::{Rejection, UpstreamFailure};

/// Read size of the decoding and encoding stages: large enough that a 50 MiB body is not a
/// million small reads.
const STAGE_BYTES: usize = 64 * 1024;

/// A rewritten body's bytes.
pub type RewrittenBody = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Bodies of known length up to this are read and rewritten whole (API answers, indexes);
/// larger ones stream.
pub const WHOLE_BODY_BYTES: u64 = 64 * 1024;

/// A response body as it goes to the client.
pub enum Outbound {
    Streamed(Incoming),
    Rewritten(RewrittenBody),
    Whole(Bytes),
}

/// Reads a small body whole and rewrites it, with the `Content-Length` of the result.
pub async fn rewrite_whole(
    response: Response<Incoming>,
    snapshot: Arc<Snapshot>,
    map: Arc<UrlMap>,
) -> Result<Response<Outbound>, Rejection> {
    let (mut parts, mut body) = response.into_parts();
    // Most small bodies arrive as one frame: kept as it is, not copied into a collection.
    let (mut whole, mut joined) = (Bytes::new(), None::<BytesMut>);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Rejection::Upstream(UpstreamFailure::ResponseBody))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut both = BytesMut::with_capacity(whole.len() + data.len());
                both.extend_from_slice(&whole);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    let body = joined.map_or(whole, BytesMut::freeze);
    let body = match rewrite_all(&body, &snapshot.hosts, &map) {
        Some(rewritten) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(rewritten.len()));
            rewritten
        }
        None => body,
    };
    Ok(Response::from_parts(parts, Outbound::Whole(body)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

static CONTENT_MD5: header::HeaderName = header::HeaderName::from_static("content-md5");

/// Rewrites the URL-bearing headers, and says whether (and how encoded) the body is to be
/// rewritten. `None`: the body passes untouched.
pub fn rewrite_response(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
    snapshot: &Snapshot,
    map: &UrlMap,
) -> Option<Encoding> {
    // One pass over the names instead of a hashed lookup per header of interest: responses have
    // a handful of headers and most of these are absent.
    let (mut urls, mut rewritable, mut encoding, mut stale) = (false, false, None, false);
    for (name, value) in headers.iter() {
        if name == header::LOCATION || name == header::CONTENT_LOCATION || name == header::LINK {
            urls = true;
        } else if name == header::CONTENT_TYPE {
            rewritable = holds_urls(value.as_bytes());
        } else if name == header::CONTENT_ENCODING {
            encoding = Some(encoding_of(value.as_bytes()));
        } else if name == header::CONTENT_RANGE
            || name == header::ACCEPT_RANGES
            || name == CONTENT_MD5
        {
            stale = true;
        }
    }
    if urls {
        for name in [header::LOCATION, header::CONTENT_LOCATION, header::LINK] {
            if let Some(rewritten) = headers
                .get(&name)
                .and_then(|value| rewrite_all(value.as_bytes(), &snapshot.hosts, map))
                .and_then(|value| HeaderValue::from_maybe_shared(value).ok())
            {
                headers.insert(name, rewritten);
            }
        }
    }
    if !rewritable
        || *method == Method::HEAD
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return None;
    }
    // Stacked or unknown encodings are passed as they are rather than guessed at.
    let encoding = encoding.unwrap_or(Some(Encoding::Identity))?;
    // A range or digest of the original no longer describes the rewritten body, nor does its
    // length, which the caller sets again (whole) or drops (streamed).
    if stale {
        headers.remove(header::CONTENT_RANGE);
        headers.remove(header::ACCEPT_RANGES);
        headers.remove(&CONTENT_MD5);
    }
    Some(encoding)
}

fn encoding_of(value: &[u8]) -> Option<Encoding> {
    match value.trim_ascii() {
        v if v.eq_ignore_ascii_case(b"identity") => Some(Encoding::Identity),
        v if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") => {
            Some(Encoding::Gzip)
        }
        v if v.eq_ignore_ascii_case(b"deflate") => Some(Encoding::Deflate),
        v if v.eq_ignore_ascii_case(b"br") => Some(Encoding::Brotli),
        _ => None,
    }
}

/// JSON (also `+json` types: git LFS, PyPI's simple API), HTML and XML (also `+xml`).
fn holds_urls(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let is = |t: &[u8]| essence.eq_ignore_ascii_case(t);
    let ends = |suffix: &[u8]| {
        essence.len() > suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    is(b"application/json")
        || is(b"text/json")
        || is(b"text/html")
        || is(b"application/xml")
        || is(b"text/xml")
        || ends(b"+json")
        || ends(b"+xml")
}

/// The upstream body, decoded if need be, rewritten, and encoded again.
pub fn rewritten<B>(
    body: B,
    encoding: Encoding,
    snapshot: Arc<Snapshot>,
    map: Arc<UrlMap>,
) -> RewrittenBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let data: RewrittenBody = Box::pin(BodyDataStream::new(body).map_err(io::Error::other));
    let rewrite = |decoded: RewrittenBody| RewriteStream {
        inner: decoded,
        rewriter: Rewriter::new(),
        snapshot,
        map,
        done: false,
    };
    match encoding {
        Encoding::Identity => Box::pin(rewrite(data)),
        Encoding::Gzip => {
            let decoded = stage(GzipDecoder::new(StreamReader::new(data)));
            stage(GzipEncoder::new(StreamReader::new(rewrite(decoded))))
        }
        Encoding::Deflate => {
            let decoded = stage(ZlibDecoder::new(StreamReader::new(data)));
            stage(ZlibEncoder::new(StreamReader::new(rewrite(decoded))))
        }
        Encoding::Brotli => {
            let decoded = stage(BrotliDecoder::new(StreamReader::new(data)));
            // Brotli's default quality (11) is for static files; this is on the fly.
            let rewritten = StreamReader::new(rewrite(decoded));
            stage(BrotliEncoder::with_quality(rewritten, Level::Precise(5)))
        }
    }
}

/// One decoding or encoding stage, read in large pieces.
fn stage(reader: impl AsyncRead + Send + 'static) -> RewrittenBody {
    Box::pin(ReaderStream::with_capacity(reader, STAGE_BYTES))
}

/// Chunks through a [`Rewriter`]; what it holds back is sent when the body ends.
struct RewriteStream {
    inner: RewrittenBody,
    rewriter: Rewriter,
    snapshot: Arc<Snapshot>,
    map: Arc<UrlMap>,
    done: bool,
}

impl Stream for RewriteStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => {
                    let out = this.rewriter.push(chunk, &this.snapshot.hosts, &this.map);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    this.done = true;
                    let rest = this.rewriter.finish(&this.snapshot.hosts, &this.map);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_html_and_xml_hold_urls_binaries_do_not() {
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.git-lfs+json",
            "application/vnd.pypi.simple.v1+json",
            "text/html; charset=utf-8",
            "application/xml",
            "text/xml",
            "application/atom+xml",
        ] {
            assert!(holds_urls(t.as_bytes()), "{t}");
        }
        for t in [
            "application/octet-stream",
            "application/x-git-upload-pack-result",
            "application/zip",
            "application/gzip",
            "text/plain",
            "json",
        ] {
            assert!(!holds_urls(t.as_bytes()), "{t}");
        }
    }

    async fn through(encoding: Encoding, encoded: Vec<u8>) -> Vec<u8> {
        use futures_util::StreamExt as _;
        let config = crate::config::Config::from_toml(
            "[identities.default]\ntenant_id = \"t\"\nclient_id = \"c\"\n\
             credential = { kind = \"client_secret\", secret = \"s\" }\n\
             [[clients]]\nname = \"c\"\nkey_sha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\n",
        )
        .expect("config");
        let metrics = crate::telemetry::metrics::Metrics::new();
        let token = Arc::new(crate::token::TokenCache::new("default".to_string(), true));
        let snapshot = Snapshot::build(
            &config,
            "127.0.0.1:8080".parse().expect("addr"),
            &metrics,
            |_| Some(token.clone()),
            &crate::issuers::Issuers::default(),
        )
        .expect("snapshot");
        let body = http_body_util::Full::new(Bytes::from(encoded));
        let mut stream = rewritten(
            body,
            encoding,
            Arc::new(snapshot),
            Arc::new(UrlMap::new("http://127.0.0.1:8080")),
        );
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    /// Every encoding: decoded, rewritten, and encoded again the same way.
    #[tokio::test]
    async fn encoded_bodies_are_rewritten_and_encoded_again() {
        use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder};
        use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZlibEncoder};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let json = r#"{"a":"https://pkgs.dev.azure.com/contoso/x","b":"https://evil.example/y"}"#
            .repeat(2000);
        let expected = json.replace(
            "https://pkgs.dev.azure.com/",
            "http://127.0.0.1:8080/_host/pkgs.dev.azure.com/",
        );
        macro_rules! round_trip {
            ($encoding:expr, $encoder:ident, $decoder:ident) => {{
                let mut encoder = $encoder::new(Vec::new());
                encoder.write_all(json.as_bytes()).await.expect("encode");
                encoder.shutdown().await.expect("finish");
                let out = through($encoding, encoder.into_inner()).await;
                let mut decoded = String::new();
                $decoder::new(&out[..])
                    .read_to_string(&mut decoded)
                    .await
                    .expect("still encoded the same way");
                assert!(decoded == expected, "{:?}", $encoding);
            }};
        }
        round_trip!(Encoding::Gzip, GzipEncoder, GzipDecoder);
        round_trip!(Encoding::Deflate, ZlibEncoder, ZlibDecoder);
        round_trip!(Encoding::Brotli, BrotliEncoder, BrotliDecoder);
        let plain = through(Encoding::Identity, json.clone().into_bytes()).await;
        assert!(plain == expected.as_bytes());
    }
}
