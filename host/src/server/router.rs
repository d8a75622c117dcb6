//! Route matching: path (exact or segment-aware prefix), methods, host and
//! headers. Routes are tried in config order; the first match wins.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path (without query) equals this.
    Exact(String),
    /// The path starts with this at a segment boundary: `/orders` matches
    /// `/orders`, `/orders/7` and `/orders?x`, not `/ordersx`.
    Prefix(String),
}

/// A compiled route condition.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods (empty: any).
    pub methods: Vec<Method>,
    /// Host, lowercase, without port (`None`: any).
    pub host: Option<String>,
    /// Headers that must be present with exactly these values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RouteMatch {
    /// Whether a request matches.
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        host: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                p == "/"
                    || (path.starts_with(p.as_str())
                        && (p.ends_with('/')
                            || path.len() == p.len()
                            || path.as_bytes()[p.len()] == b'/'))
            }
        };
        if !path_ok {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if let Some(want) = &self.host {
            let Some(h) = host else { return false };
            if !strip_port(h).eq_ignore_ascii_case(want) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(n, v)| headers.get_all(n).iter().any(|have| have == v))
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: PathMatch) -> RouteMatch {
        RouteMatch {
            path,
            methods: vec![],
            host: None,
            headers: vec![],
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let r = m(PathMatch::Prefix("/orders".into()));
        let h = HeaderMap::new();
        assert!(r.matches(&Method::GET, "/orders", None, &h));
        assert!(r.matches(&Method::GET, "/orders/7", None, &h));
        assert!(!r.matches(&Method::GET, "/ordersx", None, &h));
        assert!(!r.matches(&Method::GET, "/", None, &h));
        assert!(m(PathMatch::Prefix("/".into())).matches(&Method::GET, "/anything", None, &h));
    }

    #[test]
    fn exact_method_host_and_headers() {
        let mut r = m(PathMatch::Exact("/a".into()));
        r.methods = vec![Method::POST];
        r.host = Some("api.example.com".into());
        r.headers = vec![(
            HeaderName::from_static("x-env"),
            HeaderValue::from_static("canary"),
        )];
        let mut h = HeaderMap::new();
        h.insert("x-env", HeaderValue::from_static("canary"));
        assert!(r.matches(&Method::POST, "/a", Some("API.example.com:8080"), &h));
        assert!(!r.matches(&Method::GET, "/a", Some("api.example.com"), &h));
        assert!(!r.matches(&Method::POST, "/a/b", Some("api.example.com"), &h));
        assert!(!r.matches(&Method::POST, "/a", Some("other"), &h));
        assert!(!r.matches(
            &Method::POST,
            "/a",
            Some("api.example.com"),
            &HeaderMap::new()
        ));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
