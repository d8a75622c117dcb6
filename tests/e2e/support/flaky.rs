//! An upstream that fails on command: a test queues faults for its `x-test-id` and the next
//! requests carrying that id get them, one per request, in order (an error status with extra
//! headers, a slow answer, a dropped connection); once the queue is empty they get a normal
//! `200` echo. Every request is recorded with its arrival time and headers, so a test can count
//! attempts and measure the gaps between them from the upstream's side.
//!
//! Answers carry `x-upstream: <name>` and the same JSON echo as [`super::Upstream`], so
//! [`super::http::Resp::echo`] works on them.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The servers' own runtime, so that a module can share them between tests (each
/// `#[tokio::test]` has a runtime of its own, which ends with the test).
fn background() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-flaky")
            .enable_all()
            .build()
            .expect("cannot start the flaky-upstream runtime")
    })
}

/// What the next request with a given test id gets.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// Answer with this status and these extra response headers.
    Status(u16, Vec<(&'static str, String)>),
    /// Answer `200` after this long.
    Slow(Duration),
    /// Read the request, then close the connection without answering.
    Drop,
}

impl Fault {
    /// An error answer without extra headers.
    pub(crate) fn status(status: u16) -> Fault {
        Fault::Status(status, Vec::new())
    }

    /// `n` copies of `self`.
    pub(crate) fn times(self, n: usize) -> Vec<Fault> {
        vec![self; n]
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) at: Instant,
    pub(crate) method: String,
    /// Header name → values joined with `, `.
    pub(crate) headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    hits: Mutex<HashMap<String, Vec<Hit>>>,
}

/// A running flaky upstream; stops accepting when dropped.
pub(crate) struct Flaky {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Flaky {
    /// Start a server called `name` on a free loopback port.
    pub(crate) fn start(name: &str) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("upstream address");
        let shared = Arc::new(Shared::default());
        let name: Arc<str> = Arc::from(name);
        let task = {
            let shared = shared.clone();
            background().spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("register the upstream port");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let shared = shared.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            let name = name.clone();
                            async move { answer(&shared, &name, req).await }
                        });
                        // A `Drop` fault makes the service fail, which closes the connection
                        // without a response.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Flaky { addr, shared, task }
    }

    /// `127.0.0.1:PORT`, as written in a config's `endpoints`.
    pub(crate) fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Queue faults for the next requests carrying `x-test-id: id`.
    pub(crate) fn fail_next(&self, id: &str, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .extend(faults);
    }

    /// The requests with `x-test-id: id` received so far, in arrival order.
    pub(crate) fn hits(&self, id: &str) -> Vec<Hit> {
        self.shared
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// How many requests with `x-test-id: id` arrived.
    pub(crate) fn count(&self, id: &str) -> usize {
        self.hits(id).len()
    }

    /// The gaps between consecutive arrivals of requests with `x-test-id: id`.
    pub(crate) fn gaps(&self, id: &str) -> Vec<Duration> {
        self.hits(id)
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at))
            .collect()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The connection is dropped on purpose.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

async fn answer(
    shared: &Shared,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let mut headers = BTreeMap::new();
    for key in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(key)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(key.as_str().to_owned(), values.join(", "));
    }
    let id = headers.get("x-test-id").cloned();
    let fault = match &id {
        Some(id) => {
            shared
                .hits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.clone())
                .or_default()
                .push(Hit {
                    at: Instant::now(),
                    method: parts.method.to_string(),
                    headers: headers.clone(),
                });
            shared
                .faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(id)
                .and_then(VecDeque::pop_front)
        }
        None => None,
    };
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, extra) = match fault {
        None => (200, Vec::new()),
        Some(Fault::Status(status, extra)) => (status, extra),
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            (200, Vec::new())
        }
        Some(Fault::Drop) => return Err(Dropped),
    };
    let echo = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert("x-upstream", name.parse().expect("a header-safe name"));
    h.insert("content-type", "application/json".parse().expect("static"));
    for (key, value) in extra {
        h.append(key, value.parse().expect("a valid header value"));
    }
    Ok(resp)
}
