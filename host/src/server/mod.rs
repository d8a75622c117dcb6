//! The proxy listener: HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on
//! one port, header limits, and graceful shutdown (stop accepting, let
//! in-flight requests finish within the grace period).

pub mod drain;
pub mod router;

use crate::conn_timer::ConnTimer;
use crate::gateway::Gateway;
use arc_swap::ArcSwap;
use futures_util::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Max bytes of request head (HTTP/1) / header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Max number of request headers (HTTP/1).
    pub max_headers: usize,
    /// Accept HTTP/2 cleartext besides HTTP/1.1.
    pub http2: bool,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// How long an HTTP/1 client has to send a request head (from the
    /// connection's start or the end of its previous request).
    pub header_read_timeout: Duration,
}

/// Accept connections until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<ArcSwap<Gateway>>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        // Slow clients may not hold a connection open by trickling headers;
        // the timer is set per connection below (see `ConnTimer`).
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192))
        .max_headers(options.max_headers);
    builder
        .http2()
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    if !options.http2 {
        builder = builder.http1_only();
    }
    let drain = drain::Drain::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, client_addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let client_ip = crate::pipeline::exchange::client_ip_value(client_addr);
                // One timer per connection (see `ConnTimer`): hyper's
                // header-read timeouts and the attempt timeouts of HTTP/1
                // requests (served on the connection's task) share one
                // tokio sleep instead of arming one each.
                let timer = ConnTimer::new();
                let mut conn_builder = builder.clone();
                conn_builder.http1().timer(timer.clone());
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let generation = gateway.load_full();
                    // HTTP/2 serves each stream on a task of its own.
                    let timer = (req.version() < http::Version::HTTP_2).then(|| timer.clone());
                    // `map`, not an `async` block: a block awaiting `fut`
                    // would be laid out twice its size (a moved-from local
                    // keeps its slot), and hyper moves it per request.
                    generation
                        .handle(req, client_addr, client_ip.clone(), timer)
                        .map(infallible)
                });
                let conn = conn_builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let mut watch = drain.watch();
                tokio::spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    let ended = std::future::poll_fn(|cx| {
                        if watch.should_stop(cx) {
                            // Finish in-flight requests, then close.
                            conn.as_mut().graceful_shutdown();
                        }
                        conn.as_mut().poll(cx)
                    })
                    .await;
                    drop(watch);
                    if let Err(e) = ended {
                        tracing::debug!(client = %client_addr, "connection ended with error: {e}");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(options.shutdown_grace, drain.drained())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed with requests still in flight");
    }
}

/// A response as the `Result` hyper's services return (a named `fn`: hyper
/// needs its type to be one, not generic over the response's lifetimes).
fn infallible(
    resp: http::Response<crate::pipeline::response::BoxBody>,
) -> Result<http::Response<crate::pipeline::response::BoxBody>, Infallible> {
    Ok(resp)
}
