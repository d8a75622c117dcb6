//! The admin listener: `/healthz`, `/metrics` (Prometheus text),
//! `/admin/status`, `/admin/leader`, `/admin/subscriptions`,
//! `/admin/streams/{stream}`, `/admin/projections`, `/admin/backend`,
//! `POST /admin/reload` and
//! `POST /admin/projections/{name}/rebuild`. It binds loopback by default; when a token is
//! configured, `/admin/*` requires `Authorization: Bearer <token>`.

pub mod backend;

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
    /// The event store (`/admin/streams/...`), when one is open.
    pub events: Option<Arc<dyn crate::capability::events::EventStore>>,
    /// The projections (`/admin/projections`).
    pub projections: Arc<crate::projection::Projections>,
    /// The backend (`/admin/backend`).
    pub backend: backend::BackendInfo,
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
            (&http::Method::GET, "/admin/projections") => {
                let body = serde_json::json!({ "projections": self.projections.status() });
                text(StatusCode::OK, "application/json", body.to_string())
            }
            (&http::Method::POST, p)
                if p.starts_with("/admin/projections/") && p.ends_with("/rebuild") =>
            {
                let name = &p["/admin/projections/".len()..p.len() - "/rebuild".len()];
                self.rebuild(name).await
            }
            (&http::Method::GET, "/admin/backend") => text(
                StatusCode::OK,
                "application/json",
                self.backend.report().await.to_string(),
            ),
            (&http::Method::GET, p) if p.starts_with("/admin/streams/") => {
                self.stream(p, req.uri().query()).await
            }
            _ => error_response(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint"),
        }
    }

    /// `POST /admin/projections/{name}/rebuild`: 202 with the generation
    /// being built.
    async fn rebuild(&self, name: &str) -> http::Response<BoxBody> {
        use crate::projection::RebuildError;
        match self.projections.rebuild(name).await {
            Ok(generation) => {
                let body = serde_json::json!({
                    "projection": name,
                    "rebuilding": generation,
                    "message": "the current model answers queries until the rebuilt one has caught up; follow GET /admin/projections",
                });
                text(StatusCode::ACCEPTED, "application/json", body.to_string())
            }
            Err(e) => {
                let (status, code) = match e {
                    RebuildError::Unknown { .. } => (StatusCode::NOT_FOUND, "unknown_projection"),
                    RebuildError::Running(_) => (StatusCode::CONFLICT, "already_rebuilding"),
                    RebuildError::NotLeader { .. } => (StatusCode::CONFLICT, "not_leader"),
                    RebuildError::Store(_) | RebuildError::Stopped(_) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                    }
                };
                error_response(status, code, &e.to_string())
            }
        }
    }

    /// `GET /admin/streams/{stream}?version=N`: the stream's events up to
    /// version N (all of them without `version`), so its state at any
    /// version can be rebuilt (time travel). Event data is shown as UTF-8
    /// text when it is, else base64-free hex.
    async fn stream(&self, path: &str, query: Option<&str>) -> http::Response<BoxBody> {
        use crate::capability::events::{Direction, EventsError};
        let Some(store) = &self.events else {
            return error_response(
                StatusCode::NOT_FOUND,
                "no_event_store",
                "this gateway has no event store (no plugin is granted \"events\")",
            );
        };
        let raw = &path["/admin/streams/".len()..];
        let stream = match percent_decode(raw) {
            Some(s) if !s.is_empty() => s,
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_stream",
                    "expected /admin/streams/{stream} with a percent-encoded UTF-8 stream name",
                )
            }
        };
        let mut upto = u64::MAX;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("version", v)) => match v.parse::<u64>() {
                    Ok(n) => upto = n,
                    Err(_) => {
                        return error_response(
                            StatusCode::BAD_REQUEST,
                            "bad_version",
                            "version: expected a non-negative integer",
                        )
                    }
                },
                _ => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        "unknown query parameter, expected version=N",
                    )
                }
            }
        }
        let current = match store.stream_version(&stream).await {
            Ok(v) => v,
            Err(EventsError::Invalid(m)) => {
                return error_response(StatusCode::BAD_REQUEST, "bad_stream", &m)
            }
            Err(e) => {
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &e.to_string(),
                )
            }
        };
        if current == 0 {
            return error_response(
                StatusCode::NOT_FOUND,
                "unknown_stream",
                &format!("stream {stream:?} has no events"),
            );
        }
        let mut events = Vec::new();
        let mut from = 1;
        while from <= upto.min(current) {
            let max = (upto.min(current) - from + 1).min(1000) as usize;
            match store
                .read_stream(&stream, from, max, Direction::Forward)
                .await
            {
                Ok(page) if page.is_empty() => break,
                Ok(page) => {
                    from = page.last().map_or(from, |e| e.version + 1);
                    events.extend(page);
                }
                Err(e) => {
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        &e.to_string(),
                    )
                }
            }
        }
        let events: Vec<serde_json::Value> = events
            .into_iter()
            .map(|e| {
                serde_json::json!({
                    "version": e.version,
                    "position": e.position,
                    "id": e.id,
                    "type": e.event_type,
                    "data": show(&e.data),
                    "metadata": show(&e.metadata),
                    "recorded_ms": e.recorded_ms,
                })
            })
            .collect();
        let body = serde_json::json!({
            "stream": stream,
            "version": upto.min(current),
            "current_version": current,
            "events": events,
        });
        text(StatusCode::OK, "application/json", body.to_string())
    }
}

/// Event bytes for JSON: parsed JSON when they are, else text when UTF-8,
/// else hex.
fn show(bytes: &[u8]) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        return v;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::json!({ "hex": hex::encode(bytes) }),
    }
}

/// Decode `%XX` escapes; `None` when malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
