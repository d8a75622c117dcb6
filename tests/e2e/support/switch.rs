//! An upstream whose behaviour the test switches: every request gets the current status
//! after the current delay, whatever it carries, so that "the upstream recovered" is the
//! upstream's doing and not the request's. Counts every request it received.
//!
//! Answers carry `x-upstream: <name>` and the body `<name> <status>`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The servers' own runtime, so that a module can share them between tests.
fn background() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-switch")
            .enable_all()
            .build()
            .expect("cannot start the switch-upstream runtime")
    })
}

struct Behaviour {
    status: AtomicU16,
    delay_ms: AtomicU64,
    hits: AtomicUsize,
}

/// A running switchable upstream; stops accepting when dropped.
pub(crate) struct Switch {
    name: String,
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    task: JoinHandle<()>,
}

impl Switch {
    /// Start a server called `name` answering `200` at once.
    pub(crate) fn start(name: &str) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("upstream address");
        let behaviour = Arc::new(Behaviour {
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            hits: AtomicUsize::new(0),
        });
        let served = behaviour.clone();
        let label = name.to_owned();
        let task = background().spawn(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("register the upstream port");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let served = served.clone();
                let label = label.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let served = served.clone();
                        let label = label.clone();
                        async move {
                            served.hits.fetch_add(1, Ordering::SeqCst);
                            let delay = served.delay_ms.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let status = served.status.load(Ordering::SeqCst);
                            let mut resp =
                                Response::new(Full::new(Bytes::from(format!("{label} {status}"))));
                            *resp.status_mut() =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                            resp.headers_mut()
                                .insert("x-upstream", label.parse().expect("a header-safe name"));
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Switch {
            name: name.to_owned(),
            addr,
            behaviour,
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

    /// Answer every request from now on with `status`.
    pub(crate) fn set_status(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// Wait this long before answering.
    pub(crate) fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.behaviour.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub(crate) fn hits(&self) -> usize {
        self.behaviour.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
