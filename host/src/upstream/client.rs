//! The HTTP/1.1 client of one endpoint: a pool of keep-alive connections
//! built on hyper's connection API (`hyper::client::conn::http1`).
//!
//! hyper-util's `legacy::Client` does the same job for any number of hosts:
//! per request it hashes the authority into its pool key, races a pool
//! checkout against a connect (a `select` of two futures), records connection
//! metadata in the response's extensions and moves the request through
//! several layers of futures: ~6k instructions per request more on the proxy
//! path (`bench/instructions.sh`). An endpoint needs none of that: its client
//! takes the most recently returned idle connection (or dials one), sends,
//! and puts the connection back when the response head arrives.
//!
//! What it keeps from hyper-util's behaviour:
//!
//! * a connection goes back to the pool only once it can take another
//!   request (a response body still streaming keeps it out until done);
//! * closed connections are never handed out, and a request that a pooled
//!   connection refused unsent (the upstream closed it meanwhile) is retried
//!   on another connection, as it was never sent;
//! * at most [`MAX_IDLE`] idle connections, each closed after
//!   [`IDLE_TIMEOUT`] unused;
//! * the connect timeout is shared among the addresses a name resolves to;
//!   `TCP_NODELAY` and TCP keep-alive are set.

use crate::lock;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Most idle connections kept per endpoint; more are closed when returned.
pub const MAX_IDLE: usize = 256;

/// How long a connection may stay idle in the pool (checked every third of
/// it, so it is closed after 90–120 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often the idle pool is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Sweeps an idle connection survives: `IDLE_TIMEOUT / SWEEP_EVERY`.
const SWEEPS_IDLE: u64 = 3;

/// TCP keep-alive idle time of upstream connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint's name did not resolve.
    #[error("cannot resolve {addr}")]
    Resolve {
        /// The endpoint.
        addr: Arc<str>,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The TCP connect failed.
    #[error("tcp connect to {addr} failed")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// No address answered within the connect timeout.
    #[error("tcp connect to {addr} timed out after {ms} ms")]
    ConnectTimeout {
        /// The endpoint.
        addr: Arc<str>,
        /// The connect timeout.
        ms: u128,
    },
    /// The exchange failed after the connection was made.
    #[error(transparent)]
    Http(hyper::Error),
}

impl ClientError {
    /// Whether the connection was never made.
    pub fn is_connect(&self) -> bool {
        !matches!(self, ClientError::Http(_))
    }

    /// Whether the connect timed out (ours, or the operating system's).
    pub fn is_connect_timeout(&self) -> bool {
        match self {
            ClientError::ConnectTimeout { .. } => true,
            ClientError::Connect { source, .. } => source.kind() == std::io::ErrorKind::TimedOut,
            _ => false,
        }
    }

    /// Whether the upstream answered something that is not HTTP/1.
    pub fn is_protocol(&self) -> bool {
        matches!(self, ClientError::Http(e) if e.is_parse())
    }
}

/// An idle connection and the sweep it was returned at.
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    sweep: u64,
}

struct Inner {
    addr: Arc<str>,
    connect_timeout: Duration,
    /// Last returned on top.
    idle: Mutex<Vec<Idle>>,
    /// Sweeps done so far.
    sweeps: AtomicU64,
    /// Whether the sweeping task runs.
    sweeping: AtomicBool,
}

/// The connection pool of one endpoint (cheap to share: all state is
/// behind one `Arc`).
#[derive(Clone)]
pub struct EndpointClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EndpointClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClient")
            .field("addr", &self.inner.addr)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl EndpointClient {
    /// A client for `addr` (`host:port`), dialling within `connect_timeout`.
    pub fn new(addr: Arc<str>, connect_timeout: Duration) -> Self {
        EndpointClient {
            inner: Arc::new(Inner {
                addr,
                connect_timeout,
                idle: Mutex::new(Vec::new()),
                sweeps: AtomicU64::new(0),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Idle connections in the pool now.
    pub fn idle_count(&self) -> usize {
        lock(&self.inner.idle).len()
    }

    /// Send `req` (origin-form URI, `Host` set) and wait for the response
    /// head. Dropping the future cancels the request and closes its
    /// connection (hyper cannot abort one HTTP/1 exchange and keep the
    /// connection).
    pub async fn send(
        &self,
        mut req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: dialling is rare, and its future (resolver,
                // connect, handshake) would otherwise size, and be moved
                // with, every request's future.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection closed before the request was
                    // written: nothing reached the upstream, so it goes out
                    // again on another connection. Each turn takes one idle
                    // connection out for good, or dials a fresh one, whose
                    // refusal ends the loop.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(ClientError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently returned open connection, if any.
    fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = lock(&self.inner.idle);
        while let Some(Idle { sender, .. }) = idle.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
            // Closed (or, which cannot happen for a returned one, busy):
            // dropping the sender lets its connection task end.
        }
        None
    }

    /// Return a connection after its response head arrived.
    fn checkin(&self, mut sender: SendRequest<Full<Bytes>>) {
        if sender.is_ready() {
            self.put(sender);
        } else if !sender.is_closed() {
            // The response body is still on the wire: the connection takes
            // another request once hyper has read it.
            let client = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    client.put(sender);
                }
            });
        }
    }

    fn put(&self, sender: SendRequest<Full<Bytes>>) {
        let sweep = self.inner.sweeps.load(Ordering::Relaxed);
        let mut idle = lock(&self.inner.idle);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, sweep });
        }
    }

    /// Dial the endpoint and hand the connection to hyper.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream = self.dial().await?;
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        sender.ready().await.map_err(ClientError::Http)?;
        self.start_sweeping();
        Ok(sender)
    }

    /// Resolve the endpoint and connect to its addresses in turn, each
    /// getting an equal share of what is left of the connect timeout.
    async fn dial(&self) -> Result<tokio::net::TcpStream, ClientError> {
        let inner = &self.inner;
        let timed_out = || ClientError::ConnectTimeout {
            addr: inner.addr.clone(),
            ms: inner.connect_timeout.as_millis(),
        };
        let deadline = tokio::time::Instant::now() + inner.connect_timeout;
        let addrs: Vec<_> =
            tokio::time::timeout_at(deadline, tokio::net::lookup_host(&*inner.addr))
                .await
                .map_err(|_| timed_out())?
                .map_err(|source| ClientError::Resolve {
                    addr: inner.addr.clone(),
                    source,
                })?
                .collect();
        let mut last = None;
        for (i, addr) in addrs.iter().enumerate() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = left / (addrs.len() - i) as u32;
            match tokio::time::timeout(share, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(source)) => {
                    last = Some(ClientError::Connect {
                        addr: addr.to_string(),
                        source,
                    })
                }
                Err(_) => last = Some(timed_out()),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Resolve {
            addr: inner.addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        }))
    }

    /// Start the task that closes connections idle too long (once per
    /// client; it ends with the client).
    fn start_sweeping(&self) {
        if self.inner.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                sweep(&inner);
            }
        });
    }
}

/// One sweep: drop closed connections and those idle [`SWEEPS_IDLE`] sweeps.
fn sweep(inner: &Inner) {
    let now = inner.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
    lock(&inner.idle).retain(|i| !i.sender.is_closed() && now - i.sweep <= SWEEPS_IDLE);
}

/// The origin-form URI (path and query; `/` when the request has none) a
/// request to an endpoint carries on the endpoint's own connection.
pub fn origin_form(uri: &http::Uri) -> http::Uri {
    uri.path_and_query().map_or_else(
        || http::Uri::from_static("/"),
        |pq| http::Uri::from(pq.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    fn request(path: &str) -> http::Request<Full<Bytes>> {
        http::Request::builder()
            .uri(path)
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    /// A loopback server running `serve` on each connection, on a task of
    /// its own; its address and the count of connections accepted.
    async fn counting_server<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (addr, conns)
    }

    /// A hyper server counting its connections; every answer is `ok`.
    async fn server() -> (String, Arc<AtomicUsize>) {
        counting_server(|stream| async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }),
                )
                .await;
        })
        .await
    }

    /// Read one request head from `stream` (false: it closed first).
    async fn read_head(stream: &mut TcpStream) -> bool {
        let mut buf = [0; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    /// Wait (at most 0.5 s) until `n` connections are idle in the pool: a
    /// connection whose body was just read may still be on its way back.
    async fn wait_for_idle(client: &EndpointClient, n: usize) {
        for _ in 0..100 {
            if client.idle_count() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn body(resp: http::Response<Incoming>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, conns) = server().await;
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        for _ in 0..5 {
            let resp = client.send(request("/")).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(client.idle_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_more_and_keep_them_idle() {
        let (addr, conns) = server().await;
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        let sends = (0..4).map(|_| {
            let client = client.clone();
            async move { body(client.send(request("/")).await.unwrap()).await }
        });
        for b in futures_util::future::join_all(sends).await {
            assert_eq!(b, "ok");
        }
        let opened = conns.load(Ordering::SeqCst);
        assert!((1..=4).contains(&opened), "{opened}");
        // Bodies read: every connection is idle again.
        wait_for_idle(&client, opened).await;
        assert_eq!(client.idle_count(), opened);
    }

    /// A response whose body is still on the wire when its head arrives:
    /// the connection goes back to the pool once the body is read, and the
    /// next request reuses it.
    #[tokio::test]
    async fn a_connection_returns_to_the_pool_after_a_slow_body() {
        let (addr, conns) = counting_server(|mut stream| async move {
            while read_head(&mut stream).await {
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
                if stream.write_all(head).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if stream.write_all(b"0\r\n\r\n").await.is_err() {
                    break;
                }
            }
        })
        .await;
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        let resp = client.send(request("/")).await.unwrap();
        assert_eq!(client.idle_count(), 0, "busy while its body streams");
        assert_eq!(body(resp).await, "ok");
        wait_for_idle(&client, 1).await;
        assert_eq!(client.idle_count(), 1, "back once the body was read");
        let resp = client.send(request("/")).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    /// An upstream that answers one request per connection, says nothing
    /// about closing, and closes: the pooled connection is seen closed, or
    /// refuses the next request unsent, and the request goes out on a new one.
    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (addr, conns) = counting_server(|mut stream| async move {
            if read_head(&mut stream).await {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        })
        .await;
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        for _ in 0..3 {
            let resp = client.send(request("/")).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    /// The race the check at checkout cannot close: the upstream closes a
    /// pooled connection after it was taken but before hyper wrote the
    /// request. hyper hands the request back unsent; it goes out on a new
    /// connection.
    #[tokio::test]
    async fn a_request_a_pooled_connection_refused_unsent_goes_out_on_a_new_one() {
        let (addr, conns) = server().await;
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        let (near, far) = tokio::io::duplex(1024);
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(near))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.ready().await.unwrap();
        client.put(sender);
        // Closed, and (one thread, no await since) its connection task has
        // not seen it.
        drop(far);
        let resp = client.send(request("/")).await.unwrap();
        assert_eq!(body(resp).await, "ok");
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one new connection");
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        let err = client.send(request("/")).await.unwrap_err();
        assert!(err.is_connect() && !err.is_connect_timeout(), "{err}");
        assert!(
            err.to_string().starts_with("tcp connect to 127.0.0.1:"),
            "{err}"
        );
    }

    /// A listener whose accept queue is full drops further SYNs, so a
    /// connect to it hangs: the connect timeout ends it.
    #[tokio::test]
    async fn a_connect_that_hangs_is_a_connect_timeout() {
        let hanging = crate::testing::hanging::HangingEndpoint::start();
        let addr = hanging.addr();
        let client = EndpointClient::new(addr.to_string().into(), Duration::from_millis(300));
        let err = tokio::time::timeout(Duration::from_secs(5), client.send(request("/")))
            .await
            .expect("the connect timeout ends the attempt")
            .unwrap_err();
        assert!(err.is_connect_timeout(), "{err}");
        assert_eq!(
            err.to_string(),
            format!("tcp connect to {addr} timed out after 300 ms")
        );
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_a_connect_error() {
        let client = EndpointClient::new("no-such-host.invalid:80".into(), Duration::from_secs(2));
        let err = client.send(request("/")).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn a_reply_that_is_not_http_is_a_protocol_error() {
        let (addr, _) = counting_server(|mut stream| async move {
            if read_head(&mut stream).await {
                let _ = stream.write_all(b"SPEAKING NO HTTP\r\n\r\n").await;
            }
        })
        .await;
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        let err = client.send(request("/")).await.unwrap_err();
        assert!(!err.is_connect() && err.is_protocol(), "{err}");
        assert_eq!(client.idle_count(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, conns) = server().await;
        let client = EndpointClient::new(addr.into(), Duration::from_secs(1));
        body(client.send(request("/")).await.unwrap()).await;
        assert_eq!(client.idle_count(), 1);
        for _ in 0..SWEEPS_IDLE {
            sweep(&client.inner);
        }
        assert_eq!(
            client.idle_count(),
            1,
            "idle for {SWEEPS_IDLE} sweeps: kept"
        );
        sweep(&client.inner);
        assert_eq!(client.idle_count(), 0, "one more: closed");
        body(client.send(request("/")).await.unwrap()).await;
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }
}
