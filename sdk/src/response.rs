//! Builders for the records a hook returns.

use crate::{ResponseSpec, UpstreamTarget};

/// Builder methods, e.g.
/// `ResponseSpec::new(429).header("retry-after", "1").body("slow down\n")`.
impl ResponseSpec {
    /// A response with this status, no headers and an empty body.
    ///
    /// The status must be in 100..=599; the host refuses others and fails the
    /// request as a plugin error. `content-length` is set by the host.
    pub fn new(status: u16) -> Self {
        ResponseSpec {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response with this body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        ResponseSpec::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// Add a header (kept in order; a name may repeat). Names are
    /// case-insensitive; invalid names or values and hop-by-hop headers are
    /// dropped or refused by the host, so validate untrusted input with
    /// [`is_valid_header_name`](crate::is_valid_header_name) and
    /// [`is_valid_header_value`](crate::is_valid_header_value).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body (replacing any previous one).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// Builder methods, e.g. `UpstreamTarget::new("orders-v2").endpoint_key(user)`.
impl UpstreamTarget {
    /// Send the request to this cluster, letting the host balance endpoints.
    pub fn new(cluster: impl Into<String>) -> Self {
        UpstreamTarget {
            cluster: cluster.into(),
            endpoint_key: None,
        }
    }

    /// Pin the endpoint: an endpoint address (`host:port`) of the cluster, or
    /// any key that the host hashes onto the endpoint list.
    pub fn endpoint_key(mut self, key: impl Into<String>) -> Self {
        self.endpoint_key = Some(key.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::{RequestAction, ResponseSpec, UpstreamTarget};

    #[test]
    fn response_builder() {
        let spec = ResponseSpec::new(503)
            .header("retry-after", "1")
            .header(String::from("x-b"), vec![1u8, 2])
            .header("x-c", b"raw")
            .body("down\n");
        assert_eq!(spec.status, 503);
        assert_eq!(
            spec.headers,
            vec![
                ("retry-after".to_string(), b"1".to_vec()),
                ("x-b".to_string(), vec![1, 2]),
                ("x-c".to_string(), b"raw".to_vec()),
            ]
        );
        assert_eq!(spec.body, b"down\n");
        assert_eq!(ResponseSpec::new(204).body, Vec::<u8>::new());
    }

    #[test]
    fn text_response() {
        let spec = ResponseSpec::text(418, "teapot");
        assert_eq!(spec.headers[0].0, "content-type");
        assert_eq!(spec.headers[0].1, b"text/plain; charset=utf-8");
        assert_eq!(spec.body, b"teapot");
    }

    #[test]
    fn upstream_target_builder() {
        let t = UpstreamTarget::new("orders").endpoint_key("user-7");
        assert_eq!(t.cluster, "orders");
        assert_eq!(t.endpoint_key.as_deref(), Some("user-7"));
        assert_eq!(UpstreamTarget::new("a").endpoint_key, None);
        assert_eq!(
            RequestAction::Route(UpstreamTarget::new("a")),
            RequestAction::Route(UpstreamTarget {
                cluster: "a".into(),
                endpoint_key: None
            })
        );
    }
}

/// Names as written in the WIT.
impl crate::UpstreamError {
    /// The WIT (kebab-case) name, e.g. `connect-failed`.
    pub fn as_str(&self) -> &'static str {
        use crate::UpstreamError as E;
        match self {
            E::ConnectFailed => "connect-failed",
            E::ConnectTimeout => "connect-timeout",
            E::Timeout => "timeout",
            E::Reset => "reset",
            E::Protocol => "protocol",
            E::NoEndpoint => "no-endpoint",
        }
    }
}

/// Writes the WIT (kebab-case) name.
impl std::fmt::Display for crate::UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod upstream_error_tests {
    use crate::UpstreamError;

    #[test]
    fn kebab_names() {
        assert_eq!(UpstreamError::ConnectFailed.as_str(), "connect-failed");
        assert_eq!(UpstreamError::NoEndpoint.to_string(), "no-endpoint");
        assert_eq!(UpstreamError::Timeout.as_str(), "timeout");
    }
}
