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
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt as _};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyDataStream;
use hyper::body::Incoming;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use super::rewrite::{Rewriter, UrlMap, rewrite_all};
use super::snapshot::Snapshot;

/// Read size of the decoding and encoding stages: large enough that a 50 MiB body is not a
/// million small reads.
const STAGE_BYTES: usize = 64 * 1024;

/// A rewritten body's bytes.
pub type RewrittenBody = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

static LINK: header::HeaderName = header::LINK;

/// Rewrites the URL-bearing headers, and says whether (and how encoded) the body is to be
/// rewritten. `None`: the body passes untouched.
pub fn rewrite_response(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
    snapshot: &Snapshot,
    map: &UrlMap,
) -> Option<Encoding> {
    for name in [&header::LOCATION, &header::CONTENT_LOCATION, &LINK] {
        if let Some(rewritten) = headers
            .get(name)
            .and_then(|value| rewrite_all(value.as_bytes(), &snapshot.hosts, map))
            .and_then(|value| HeaderValue::from_maybe_shared(value).ok())
        {
            headers.insert(name, rewritten);
        }
    }
    if *method == Method::HEAD
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
        || !headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| holds_urls(value.as_bytes()))
    {
        return None;
    }
    let encoding = match headers
        .get(header::CONTENT_ENCODING)
        .map(HeaderValue::as_bytes)
    {
        None => Encoding::Identity,
        Some(value) => match value.trim_ascii() {
            v if v.eq_ignore_ascii_case(b"identity") => Encoding::Identity,
            v if v.eq_ignore_ascii_case(b"gzip") || v.eq_ignore_ascii_case(b"x-gzip") => {
                Encoding::Gzip
            }
            v if v.eq_ignore_ascii_case(b"deflate") => Encoding::Deflate,
            v if v.eq_ignore_ascii_case(b"br") => Encoding::Brotli,
            // Stacked or unknown encodings: passed as they are rather than guessed at.
            _ => return None,
        },
    };
    // The rewritten length is known only at the end; a digest or range of the original would
    // no longer describe it.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_RANGE);
    headers.remove(header::ACCEPT_RANGES);
    headers.remove("content-md5");
    Some(encoding)
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
pub fn rewritten(
    body: Incoming,
    encoding: Encoding,
    snapshot: Arc<Snapshot>,
    map: Arc<UrlMap>,
) -> RewrittenBody {
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
}
