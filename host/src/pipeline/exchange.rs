//! The request and response state that flows through a route's pipeline and
//! is lent to plugins (moved into the plugin's store for one hook call and
//! taken back afterwards).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Headers that describe one connection, not the message. They are never
/// forwarded, and plugins may not set them.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether plugins may edit this header.
pub fn plugin_may_edit(name: &HeaderName) -> bool {
    name != http::header::CONTENT_LENGTH && !is_hop_by_hop(name.as_str())
}

/// Whether `name` (lower case, as [`HeaderName::as_str`] gives it) is one of
/// [`HOP_BY_HOP`]. A `match` on the string compiles to a length switch and at
/// most a comparison or two, where a scan of the list compares every name.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// [`HOP_BY_HOP`] as header names, so removing them parses nothing.
static HOP_BY_HOP_NAMES: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Remove hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry no hop-by-hop header at all: one pass over the
    // names finds that without hashing each of the eight names into the map.
    if !headers.keys().any(|name| is_hop_by_hop(name.as_str())) {
        return;
    }
    if headers.contains_key(http::header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for n in &HOP_BY_HOP_NAMES {
        headers.remove(n);
    }
}

/// The client request as the pipeline sees it.
#[derive(Debug)]
pub struct RequestState {
    /// Method.
    pub method: Method,
    /// Request target; `path_and_query` is what filters see and edit.
    pub uri: Uri,
    /// Headers (hop-by-hop already removed).
    pub headers: HeaderMap,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The client's address.
    pub client_addr: SocketAddr,
    /// The client's IP address as a header value (for `X-Forwarded-For`),
    /// made once per connection by [`client_ip_value`].
    pub client_ip: HeaderValue,
    /// Name of the matched route.
    pub route: Arc<str>,
    /// The buffered request body.
    pub body: Bytes,
    /// Whether plugins may see and replace the body.
    pub body_exposed: bool,
    /// Per-attempt upstream timeout chosen by a plugin.
    pub attempt_timeout: Option<Duration>,
    /// The route's cap on upstream attempts.
    pub max_attempts: u32,
    /// Per-request plugin context: (pipeline position, key, value).
    pub context: Vec<(u16, String, String)>,
    /// A shadow copy requested by a filter.
    pub mirror: Option<Box<super::shadow::Mirror>>,
}

impl RequestState {
    /// The authority: from the URI (HTTP/2) or the `Host` header.
    pub fn authority(&self) -> String {
        if let Some(a) = self.uri.authority() {
            return a.as_str().to_owned();
        }
        self.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// Path and query (`/` when empty).
    pub fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    }

    /// Read a context value stored by the filter at `pos`.
    pub fn context(&self, pos: u16, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(p, k, _)| *p == pos && k == key)
            .map(|(_, _, v)| v.as_str())
    }

    /// Store a context value for the filter at `pos`.
    pub fn set_context(&mut self, pos: u16, key: String, value: String) {
        if let Some(slot) = self
            .context
            .iter_mut()
            .find(|(p, k, _)| *p == pos && *k == key)
        {
            slot.2 = value;
        } else {
            self.context.push((pos, key, value));
        }
    }
}

/// The response head (and, when the route buffers bodies, the body) as the
/// pipeline sees it. A streamed body travels separately.
#[derive(Debug)]
pub struct ResponseState {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Buffered body, when exposed to plugins or produced locally.
    pub body: Option<Bytes>,
    /// Whether plugins may see and replace the body.
    pub body_exposed: bool,
}

/// The IP address of `addr` as a header value.
pub fn client_ip_value(addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(addr.ip().to_string()))
        .expect("an IP address is a valid header value")
}

/// Parse a header name and value given by a plugin.
pub fn header_pair(name: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let n = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let v = HeaderValue::from_bytes(value).ok()?;
    Some((n, v))
}

#[cfg(test)]
mod tests {
    use super::{is_hop_by_hop, strip_hop_by_hop, HOP_BY_HOP, HOP_BY_HOP_NAMES};
    use http::{HeaderMap, HeaderValue};

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(|n| n.as_str()).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = map(&[
            ("host", "a"),
            ("connection", "keep-alive, X-Named"),
            ("keep-alive", "timeout=5"),
            ("x-named", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "close"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-kept"]);
    }

    #[test]
    fn a_hop_by_hop_header_alone_is_removed_without_connection() {
        let mut h = map(&[
            ("x-kept", "1"),
            ("trailer", "x"),
            ("proxy-authenticate", "y"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn the_hop_by_hop_name_lists_agree() {
        for (s, n) in HOP_BY_HOP.iter().zip(&HOP_BY_HOP_NAMES) {
            assert_eq!(*s, n.as_str());
            assert!(is_hop_by_hop(s), "{s}");
        }
        for other in [
            "content-length",
            "host",
            "x-connection",
            "connections",
            "t",
            "trailers",
            "upgrade-insecure-requests",
        ] {
            assert!(!is_hop_by_hop(other), "{other}");
        }
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let pairs = [("host", "a"), ("x-named", "1"), ("accept", "*/*")];
        let mut h = map(&pairs);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h,
            map(&pairs),
            "a header is removed only when a Connection header names it"
        );
        let mut empty = HeaderMap::new();
        strip_hop_by_hop(&mut empty);
        assert!(empty.is_empty());
    }
}
