//! Response bodies and the gateway's own error responses: one place maps a
//! failure to the status, a machine-readable code (`x-ficus-error`) and a
//! short text that leaks no internals.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the gateway sends to clients.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(b: Bytes) -> BoxBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// A locally produced response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// A plain-text error reply: `"<status line>: <message>\n"`.
    pub fn text(status: StatusCode, code: &str, message: &str) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(code) {
            headers.insert("x-ficus-error", v);
        }
        let reason = status.canonical_reason().unwrap_or("");
        let body = Bytes::from(format!("{} {reason}: {message}\n", status.as_u16()));
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// A plain-text error response.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> http::Response<BoxBody> {
    let r = Reply::text(status, code, message);
    let mut resp = http::Response::new(full(r.body));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers;
    resp
}

/// Why a body could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The body is larger than the limit.
    #[error("body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// Reading the body failed.
    #[error("reading the body failed: {0}")]
    Read(String),
}

/// Buffer a whole body, refusing more than `limit` bytes.
///
/// (Written out instead of `http_body_util::Limited` + `collect`, whose
/// error conversion trips the compiler's `Send` inference in async code.)
pub async fn collect_limited<B>(mut body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut first: Option<Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CollectError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(CollectError::TooLarge(limit));
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut buf = bytes::BytesMut::with_capacity(total);
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match rest {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}
