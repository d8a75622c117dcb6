//! A small HTTP client for the tests: one connection per request, HTTP/1.1 or HTTP/2 with
//! prior knowledge, every request under a timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default time a request may take, end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to send.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    http2: bool,
    timeout: Duration,
}

impl Req {
    pub(crate) fn new(method: &str, url: String) -> Req {
        Req {
            method: Method::from_bytes(method.as_bytes()).expect("a valid method"),
            url,
            headers: Vec::new(),
            body: Bytes::new(),
            http2: false,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Add a header (HTTP/1: `host` overrides the one derived from the URL).
    pub(crate) fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Tag the request for [`super::Upstream::count`].
    pub(crate) fn test_id(self, id: &str) -> Req {
        self.header("x-test-id", id)
    }

    pub(crate) fn body(mut self, body: impl Into<Bytes>) -> Req {
        self.body = body.into();
        self
    }

    /// Use HTTP/2 with prior knowledge (h2c).
    pub(crate) fn http2(mut self) -> Req {
        self.http2 = true;
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Req {
        self.timeout = timeout;
        self
    }

    /// Send; panics when no response arrives.
    pub(crate) async fn send(self) -> Resp {
        let what = format!("{} {}", self.method, self.url);
        match self.try_send().await {
            Ok(resp) => resp,
            Err(e) => panic!("{what}: {e}"),
        }
    }

    /// Send; `Err` describes a transport failure or timeout.
    pub(crate) async fn try_send(self) -> Result<Resp, String> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_max_idle_per_host(0);
        if self.http2 {
            builder.http2_only(true);
        }
        let client: Client<_, Full<Bytes>> = builder.build_http();
        let mut req = hyper::Request::new(Full::new(self.body));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.url.parse().map_err(|e| format!("bad url: {e}"))?;
        for (name, value) in &self.headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(value).map_err(|e| e.to_string())?,
            );
        }
        let exchange = async {
            let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e:?}"))?
                .to_bytes();
            Ok(Resp {
                status: parts.status.as_u16(),
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no response within {:?}", self.timeout)),
        }
    }
}

/// A complete response.
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    /// The first value of a header.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header, in order (comma-separated values split).
    pub(crate) fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON body.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }

    /// What an [`super::Upstream`] echoed back; panics when the response is not an echo.
    pub(crate) fn echo(&self) -> Echo {
        let json = self.json();
        let field = |name: &str| {
            json[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name:?} in the echo: {self:?}"))
                .to_owned()
        };
        let headers = json["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("no headers in the echo: {self:?}"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        Echo {
            upstream: field("upstream"),
            method: field("method"),
            path: field("path"),
            headers,
            body: field("body"),
        }
    }

    /// Assert that this is a gateway error response with `status` and `x-ficus-error: code`.
    pub(crate) fn assert_gateway_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("x-ficus-error").as_deref(),
            Some(code),
            "x-ficus-error: {self:?}"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain")),
            "gateway errors are text/plain: {self:?}"
        );
        assert!(
            self.header("x-upstream").is_none(),
            "a gateway error must not come from an upstream: {self:?}"
        );
    }
}

impl fmt::Debug for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?} {}", self.version, self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
        }
        let text = self.text();
        let shown: String = text.chars().take(2000).collect();
        write!(f, "\n{shown}")?;
        if shown.len() < text.len() {
            write!(f, "… ({} bytes)", self.body.len())?;
        }
        Ok(())
    }
}

/// The request as an upstream received it.
#[derive(Debug, Clone)]
pub(crate) struct Echo {
    /// Name of the upstream server that answered.
    pub(crate) upstream: String,
    pub(crate) method: String,
    /// Path and query.
    pub(crate) path: String,
    /// Header name → values joined with `, `.
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: String,
}

impl Echo {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Write `request` as raw bytes to `addr` and read until the server closes the connection
/// (or 10 s pass). Write errors are ignored: a server may answer and close before reading a
/// request it rejects.
pub(crate) async fn raw_http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&received).into_owned()
}
