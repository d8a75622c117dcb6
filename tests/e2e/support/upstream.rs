//! Upstream servers: real hyper HTTP/1.1 servers on loopback, run on a background runtime of
//! their own so that a module can share them between tests (each `#[tokio::test]` has its own
//! runtime, which ends with the test).
//!
//! Every response carries `x-upstream: <name>` and a JSON echo of the request:
//! `{"upstream", "method", "path" (with query), "headers": {name: "v1, v2"}, "body"}`.
//! Request headers steer the answer:
//!
//! * `x-want-status: N` — answer with status N (default 200);
//! * `x-delay-ms: N` — wait N ms before answering;
//! * `x-fail-first: N` (with `x-test-id`) — the first N requests with this test id get
//!   `x-fail-status` (default 503), later ones answer normally.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

fn background() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-upstream")
            .enable_all()
            .build()
            .expect("cannot start the upstream runtime")
    })
}

/// A running upstream server; stops accepting when dropped.
pub(crate) struct Upstream {
    name: String,
    addr: SocketAddr,
    /// The `x-test-id` of every request received, in arrival order.
    seen: Arc<Mutex<Vec<Option<String>>>>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Start a server called `name` on a free loopback port.
    pub(crate) fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let state = Arc::new(State {
            name: name.to_owned(),
            seen: seen.clone(),
        });
        let task = background().spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("register the upstream port");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            name: name.to_owned(),
            addr,
            seen,
            connections,
            task,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:PORT`, as written in a config's `endpoints`.
    pub(crate) fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// How many connections this server accepted.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many requests carrying `x-test-id: id` this server received.
    pub(crate) fn count(&self, id: &str) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|seen| seen.as_deref() == Some(id))
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    name: String,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl State {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
        let test_id = header("x-test-id");
        let nth = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.push(test_id.clone());
            seen.iter().filter(|s| **s == test_id).count() as u64
        };
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if let Some(ms) = number("x-delay-ms") {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let failing = test_id.is_some() && number("x-fail-first").is_some_and(|n| nth <= n);
        let status = if failing {
            number("x-fail-status").unwrap_or(503)
        } else {
            number("x-want-status").unwrap_or(200)
        };
        let mut headers = serde_json::Map::new();
        for name in parts.headers.keys() {
            let values: Vec<String> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            headers.insert(name.as_str().to_owned(), values.join(", ").into());
        }
        let echo = serde_json::json!({
            "upstream": self.name,
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())));
        *resp.status_mut() =
            StatusCode::from_u16(u16::try_from(status).unwrap_or(500)).unwrap_or(StatusCode::OK);
        let h = resp.headers_mut();
        h.insert("x-upstream", self.name.parse().expect("a header-safe name"));
        h.insert("content-type", "application/json".parse().expect("static"));
        resp
    }
}

/// An endpoint where nothing listens: a port bound and released again (connection refused).
pub(crate) fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    addr.to_string()
}

/// A TCP server that is not a well-behaved HTTP server: for every connection it reads the
/// request head, writes `reply` as raw bytes (nothing, or something that is not HTTP) and
/// closes the connection.
pub(crate) struct BrokenUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl BrokenUpstream {
    pub(crate) fn start(reply: &'static [u8]) -> BrokenUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("address");
        let task = background().spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).expect("register the port");
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(reply).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        BrokenUpstream { addr, task }
    }

    pub(crate) fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for BrokenUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
