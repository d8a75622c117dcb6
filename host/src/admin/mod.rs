//! The admin listener: `/healthz`, `/metrics` (Prometheus text),
//! `/admin/status`, `/admin/leader`, `/admin/subscriptions` and `POST /admin/reload`. It binds loopback by default; when a token is
//! configured, `/admin/*` requires `Authorization: Bearer <token>`.

use crate::capability::leader::Elector;
use crate::capability::metrics;
use crate::pipeline::response::{error_response, full, BoxBody};
use crate::reload::{Reloader, Trigger};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpListener;

/// Shared admin state.
pub struct Admin {
    /// The serving generation and its reloads.
    pub reloader: Arc<Reloader>,
    /// Bearer token for `/admin/*`, if configured.
    pub token: Option<String>,
    /// When the gateway started.
    pub started: SystemTime,
    /// This node's elections (`/admin/leader`).
    pub leader: Arc<Elector>,
    /// The pub/sub backend (`/admin/subscriptions`).
    pub pubsub: Arc<dyn crate::capability::pubsub::Publisher>,
}

impl Admin {
    fn authorized(&self, req: &http::Request<hyper::body::Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }

    async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<BoxBody> {
        let path = req.uri().path();
        if path.starts_with("/admin/") && !self.authorized(&req) {
            return error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
        }
        match (req.method(), path) {
            (&http::Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
            (&http::Method::GET, "/metrics") => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics::render(),
            ),
            (&http::Method::GET, "/admin/status") => {
                let uptime = self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
                let body = serde_json::json!({
                    "uptime_seconds": uptime,
                    "reload": self.reloader.status(),
                    "routes": self.reloader.gateway().load().summary(),
                    "canaries": self.reloader.gateway().load().canaries(),
                });
                text(StatusCode::OK, "application/json", body.to_string())
            }
            (&http::Method::GET, "/admin/leader") => {
                let body = serde_json::to_string(&self.leader.status_all())
                    .expect("the election status always serialises");
                text(StatusCode::OK, "application/json", body)
            }
            (&http::Method::GET, "/admin/subscriptions") => {
                let body = serde_json::json!({ "subscriptions": self.pubsub.subscriptions() });
                text(StatusCode::OK, "application/json", body.to_string())
            }
            (&http::Method::POST, "/admin/reload") => {
                let outcome = self.reloader.reload(Trigger::Admin).await;
                let status = if outcome.ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                let body = serde_json::json!({
                    "generation": self.reloader.status().generation,
                    "outcome": outcome,
                });
                text(status, "application/json", body.to_string())
            }
            _ => error_response(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint"),
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> http::Response<BoxBody> {
    let mut resp = http::Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serve the admin API until `shutdown` resolves.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let admin = admin.clone();
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
