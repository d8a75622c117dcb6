//! A request's life on a route: `on-request` hooks in order, the upstream
//! (or Wasm handler) with retries requested by filters, `on-response` hooks
//! in reverse order, then the response to the client.
//!
//! Every filter whose `on-request` ran gets its `on-response`, even when the
//! client goes away: the gateway runs the pipeline on a task of its own
//! ([`run_for_client`]), and a client that disconnects only cuts the upstream
//! attempt (or a retry's back-off) short. The filters then see a local
//! `499 client closed request`, which is never sent. Filters that take a
//! resource in `on-request` (an in-flight slot, a concurrency permit) can
//! rely on releasing it in `on-response`.

pub mod canary;
pub mod exchange;
pub mod response;
pub mod shadow;

use crate::conn_timer::ConnTimer;
use crate::plugin::bindings::{
    AttemptInfo, RequestAction, ResponseAction, ResponseSpec, UpstreamError,
};
use crate::plugin::filter::{FilterPool, Instance};
use crate::plugin::handler::Handler;
use crate::plugin::{Hook, PluginError};
use crate::upstream::{kind_name, status_for, Cluster};
use bytes::Bytes;
use canary::Canary;
use exchange::{strip_hop_by_hop, RequestState, ResponseState};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use response::{error_response, BoxBody, Reply};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One step of a route's pipeline.
pub struct Step {
    /// The plugin's warm instances for this route.
    pub pool: Arc<FilterPool>,
    /// Skip the plugin when it fails (instead of failing the request).
    pub fail_open: bool,
    /// A canary version taking a share of the requests.
    pub canary: Option<Arc<Canary>>,
}

impl Step {
    fn pool_for(&self, slot: &Slot) -> &FilterPool {
        match (&self.canary, slot.canary) {
            (Some(c), true) => &c.pool,
            _ => &self.pool,
        }
    }
}

/// Where a route sends requests after its filters.
pub enum Destination {
    /// An upstream cluster.
    Upstream(Arc<Cluster>),
    /// A `wasi:http` handler component.
    Handler(Arc<Handler>),
}

/// Everything a route needs at request time.
pub struct Route {
    /// Route name.
    pub name: Arc<str>,
    /// The pipeline, in order.
    pub steps: Vec<Step>,
    /// Default destination.
    pub destination: Destination,
    /// Cap on upstream attempts when filters ask for retries.
    pub max_attempts: u32,
    /// Buffer bodies and expose them to plugins.
    pub plugin_body: bool,
    /// Limit for buffered response bodies.
    pub max_response_body: usize,
    /// Metrics handles.
    pub metrics: RouteMetrics,
}

impl Route {
    /// Whether a request on this route must run on a task of its own, so
    /// that a client going away cannot cut the pipeline between a filter's
    /// `on-request` and its `on-response`. Routes where no filter (nor a
    /// canary version) has an `on-response` hook run on the client's own
    /// future: one task spawn, wake-up and channel fewer per request.
    pub fn needs_own_task(&self) -> bool {
        self.has_response_hooks()
    }

    /// Whether a filter (or a canary version, which may differ) of this route
    /// has an `on-response` hook: only then is an attempt's latency read.
    fn has_response_hooks(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.pool.wants_response() || s.canary.is_some())
    }
}

/// Pre-registered per-route metrics (cheap on the request path).
pub struct RouteMetrics {
    by_class: [metrics::Counter; 5],
    duration: metrics::Histogram,
}

impl RouteMetrics {
    /// Register the route's metrics.
    pub fn new(route: &str) -> Self {
        let class = |c: &'static str| metrics::counter!("ficus_requests_total", "route" => route.to_owned(), "class" => c);
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: metrics::histogram!("ficus_request_duration_seconds", "route" => route.to_owned()),
        }
    }

    fn record(&self, status: StatusCode, started: Instant) {
        let i = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[i].increment(1);
        self.duration.record(started.elapsed().as_secs_f64());
    }
}

/// Look-up of clusters by name, for filters that choose the upstream.
pub type Clusters = HashMap<String, Arc<Cluster>>;

/// A response being produced: head (lent to filters), body and attempt info.
struct Produced {
    state: Box<ResponseState>,
    stream: Option<BoxBody>,
    info: Attempt,
}

/// What the pipeline knows of the attempt that produced a response. The
/// names are shared (`Arc<str>`), so a request on a route without
/// `on-response` hooks copies no string; [`Attempt::wit`] makes the WIT's
/// [`AttemptInfo`] for a hook.
#[derive(Clone)]
struct Attempt {
    number: u32,
    cluster: Option<Arc<str>>,
    endpoint: Option<Arc<str>>,
    latency_us: u64,
    error: Option<UpstreamError>,
    local: bool,
}

impl Attempt {
    /// The attempt as `on-response` sees it.
    fn wit(&self) -> AttemptInfo {
        AttemptInfo {
            number: self.number,
            cluster: self.cluster.as_deref().map(str::to_owned),
            endpoint: self.endpoint.as_deref().map(str::to_owned),
            latency_us: self.latency_us,
            error: self.error,
            local: self.local,
        }
    }
}

impl Produced {
    fn local(spec: ResponseSpec, attempt: u32, exposed: bool) -> Self {
        let mut headers = http::HeaderMap::new();
        for (n, v) in spec.headers {
            if let Some((n, v)) = exchange::header_pair(&n, &v) {
                headers.append(n, v);
            }
        }
        strip_hop_by_hop(&mut headers);
        headers.remove(http::header::CONTENT_LENGTH);
        Produced {
            state: Box::new(ResponseState {
                status: StatusCode::from_u16(spec.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                headers,
                body: Some(Bytes::from(spec.body)),
                body_exposed: exposed,
            }),
            stream: None,
            info: local_info(attempt),
        }
    }

    fn error(reply: Reply, info: Attempt, exposed: bool) -> Self {
        Produced {
            state: Box::new(ResponseState {
                status: reply.status,
                headers: reply.headers,
                body: Some(reply.body),
                body_exposed: exposed,
            }),
            stream: None,
            info,
        }
    }

    fn into_response(self) -> http::Response<BoxBody> {
        let ResponseState {
            status,
            headers,
            body,
            ..
        } = *self.state;
        let body = match (body, self.stream) {
            (Some(b), _) => response::full(b),
            (None, Some(s)) => s,
            (None, None) => response::full(Bytes::new()),
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

fn plugin_failed(route: &Route, step: &Step, pool: &FilterPool, hook: Hook, err: &PluginError) {
    let spec = pool.spec();
    metrics::counter!(
        "ficus_plugin_errors_total",
        "plugin" => spec.plugin.to_string(),
        "route" => route.name.to_string(),
        "hook" => hook.as_str(),
        "kind" => err.kind(),
    )
    .increment(1);
    tracing::error!(
        plugin = %spec.plugin,
        route = %route.name,
        hook = hook.as_str(),
        fail_open = step.fail_open,
        canary = step.canary.as_ref().is_some_and(|c| std::ptr::eq(&*c.pool, pool)),
        "plugin failed: {err}"
    );
}

fn plugin_error_reply() -> Reply {
    Reply::text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "plugin_error",
        "the request failed in a gateway plugin",
    )
}

/// Status of the response the filters see when the client went away before
/// the upstream answered (nginx's "client closed request").
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Run a matched request through the route, for a client that stays.
pub async fn run(
    route: &Route,
    clusters: &Clusters,
    req: Box<RequestState>,
    started: Instant,
) -> http::Response<BoxBody> {
    run_for_client(route, clusters, req, started, None, None).await
}

/// Resolves once the client has gone away: the sender of `gone` (held by the
/// client's request future) was dropped. Nothing is ever sent on it. Without
/// a receiver (a pipeline run by the client's own future) it never resolves.
async fn client_gone(gone: &mut Option<tokio::sync::watch::Receiver<()>>) {
    match gone {
        Some(gone) => while gone.changed().await.is_ok() {},
        None => std::future::pending().await,
    }
}

/// Counts a request as `499` in the route's metrics when its pipeline,
/// run by the client's own future, is dropped because the client went away.
pub struct Unfinished<'a> {
    route: &'a Route,
    started: Instant,
    done: bool,
}

impl<'a> Unfinished<'a> {
    /// Watch a request on `route` that started at `started`.
    pub fn new(route: &'a Route, started: Instant) -> Self {
        Unfinished {
            route,
            started,
            done: false,
        }
    }

    /// The pipeline ended (and recorded its own outcome).
    pub fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            let status =
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
            self.route.metrics.record(status, self.started);
        }
    }
}

/// Run a matched request through the route. `gone` reports the client going
/// away (its sender dropped; `None` when the client's own future runs the
/// pipeline, see [`Route::needs_own_task`]); the pipeline still runs to its end, so that
/// every filter whose `on-request` ran gets its `on-response`, but the
/// upstream attempt in progress and any retry are abandoned: the filters see a
/// local [`CLIENT_CLOSED_REQUEST`] response instead. `timer` is the client
/// connection's, given when the pipeline runs on that connection's task: the
/// upstream attempts then wait on it (see [`ConnTimer`]).
pub async fn run_for_client(
    route: &Route,
    clusters: &Clusters,
    mut req: Box<RequestState>,
    started: Instant,
    mut gone: Option<tokio::sync::watch::Receiver<()>>,
    timer: Option<&ConnTimer>,
) -> http::Response<BoxBody> {
    let n = route.steps.len();
    let mut slots: Vec<Slot> = Vec::with_capacity(n);
    for step in &route.steps {
        slots.push(Slot {
            instance: None,
            canary: step.canary.as_ref().is_some_and(|c| c.pick()),
            spent: Duration::ZERO,
            failed: false,
            ran: false,
        });
    }
    let mut target = None;
    let mut local: Option<Produced> = None;

    for (i, step) in route.steps.iter().enumerate() {
        let slot = &mut slots[i];
        let pool = step.pool_for(slot);
        if !pool.wants_request() {
            slot.ran = true;
            continue;
        }
        let call = slot.canary.then(Instant::now);
        let (back, result) = pool.on_request(&mut slot.instance, req).await;
        slot.count_time(call);
        req = back;
        match result {
            Ok(RequestAction::Continue) => slot.ran = true,
            Ok(RequestAction::Route(t)) => {
                target = Some(t);
                slot.ran = true;
            }
            Ok(RequestAction::Respond(spec)) => {
                slot.failed |= spec.status >= 500;
                local = Some(Produced::local(spec, 1, route.plugin_body));
                break;
            }
            Err(e) => {
                slot.failed = true;
                plugin_failed(route, step, pool, Hook::OnRequest, &e);
                if !step.fail_open {
                    let info = local_info(1);
                    local = Some(Produced::error(
                        plugin_error_reply(),
                        info,
                        route.plugin_body,
                    ));
                    break;
                }
            }
        }
    }

    // With no response hook to run (hence no retry) and no mirror, nothing
    // reads the request's headers after the attempt: move them to the
    // upstream instead of copying them.
    let last_use = req.mirror.is_none()
        && route
            .steps
            .iter()
            .zip(&slots)
            .all(|(step, slot)| !slot.ran || !step.pool_for(slot).wants_response());
    let mut attempt = 1u32;
    loop {
        let mut produced = match local.take() {
            Some(p) => p,
            None => tokio::select! {
                p = destination(route, clusters, &mut req, target.as_ref(), attempt, last_use, timer) => p,
                () = client_gone(&mut gone) => client_closed(attempt, route.plugin_body),
            },
        };
        let mut retry = None;
        for (step, slot) in route.steps.iter().zip(&mut slots).rev() {
            let pool = step.pool_for(slot);
            if !slot.ran || !pool.wants_response() {
                continue;
            }
            let call = slot.canary.then(Instant::now);
            let (back_req, back_resp, result) = pool
                .on_response(
                    &mut slot.instance,
                    req,
                    produced.state,
                    &produced.info.wit(),
                )
                .await;
            slot.count_time(call);
            req = back_req;
            produced.state = back_resp;
            match result {
                Ok(ResponseAction::Continue) => {}
                Ok(ResponseAction::Replace(spec)) => {
                    slot.failed |= spec.status >= 500;
                    let info = produced.info.clone();
                    produced = Produced::local(spec, attempt, route.plugin_body);
                    produced.info = info;
                }
                Ok(ResponseAction::Retry(delay)) => {
                    if !produced.info.local && attempt < route.max_attempts {
                        retry = Some(delay);
                        break;
                    }
                }
                Err(e) => {
                    slot.failed = true;
                    plugin_failed(route, step, pool, Hook::OnResponse, &e);
                    if !step.fail_open {
                        let info = produced.info.clone();
                        produced = Produced::error(plugin_error_reply(), info, route.plugin_body);
                    }
                }
            }
        }
        if let Some(delay) = retry {
            drop(produced);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(u64::from(delay.min(60_000)))) => {}
                // The next attempt then ends at once, as a local 499.
                () = client_gone(&mut gone) => {}
            }
            attempt += 1;
            continue;
        }
        for (step, slot) in route.steps.iter().zip(&slots) {
            if let (true, Some(canary)) = (slot.canary, &step.canary) {
                canary.record(slot.failed, slot.spent);
            }
        }
        if let Some(mirror) = req.mirror.take() {
            if mirror.compare.body && produced.state.body.is_none() {
                // Buffer the primary body so it can be compared.
                if let Some(stream) = produced.stream.take() {
                    match response::collect_limited(stream, route.max_response_body).await {
                        Ok(b) => produced.state.body = Some(b),
                        Err(e) => {
                            tracing::warn!(route = %route.name, "primary body for shadow comparison failed: {e}");
                            let info = produced.info.clone();
                            produced = upstream_failure_from(route, info);
                        }
                    }
                }
            }
            let cluster = clusters.get(&mirror.target.cluster).cloned();
            shadow::spawn(
                route.name.clone(),
                cluster,
                *mirror,
                &req,
                shadow::Primary::of(&produced.state),
                route.max_response_body,
            );
        }
        // Fresh-mode instances end with their request.
        for (step, slot) in route.steps.iter().zip(&mut slots) {
            if let Some(instance) = slot.instance.take() {
                step.pool_for(slot).discard(instance);
            }
        }
        let resp = produced.into_response();
        route.metrics.record(resp.status(), started);
        return resp;
    }
}

/// One request's use of one pipeline step.
struct Slot {
    /// The instance kept for the request (fresh mode).
    instance: Option<Instance>,
    /// Whether the request uses the step's canary version.
    canary: bool,
    /// Time spent in the step's hooks (measured for canary versions only,
    /// whose latency is compared against the primary's).
    spent: Duration,
    /// Whether the step failed or produced a 5xx.
    failed: bool,
    /// Whether its `on-request` ran (or it has none): only then does its
    /// `on-response` run.
    ran: bool,
}

impl Slot {
    /// Add the time since `call` (taken only for canary versions) to the
    /// hooks' time.
    fn count_time(&mut self, call: Option<Instant>) {
        if let Some(call) = call {
            self.spent += call.elapsed();
        }
    }
}

/// A 502 for a primary response whose body failed while being buffered.
fn upstream_failure_from(route: &Route, info: Attempt) -> Produced {
    upstream_failure(
        route,
        info.number,
        info.cluster,
        info.endpoint,
        info.latency_us,
        UpstreamError::Protocol,
    )
}

/// What the filters see when the client went away during an attempt: a
/// local 499 (local, so no filter retries it).
fn client_closed(attempt: u32, exposed: bool) -> Produced {
    let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
    Produced::error(
        Reply::text(
            status,
            "client_closed_request",
            "the client closed the request before the response",
        ),
        local_info(attempt),
        exposed,
    )
}

fn local_info(attempt: u32) -> Attempt {
    Attempt {
        number: attempt,
        cluster: None,
        endpoint: None,
        latency_us: 0,
        error: None,
        local: true,
    }
}

/// Make one attempt at the destination. With `last_use`, the request's
/// headers are moved to the upstream request (nothing reads them afterwards).
async fn destination(
    route: &Route,
    clusters: &Clusters,
    req: &mut RequestState,
    target: Option<&crate::plugin::bindings::UpstreamTarget>,
    attempt: u32,
    last_use: bool,
    timer: Option<&ConnTimer>,
) -> Produced {
    let cluster = match (target, &route.destination) {
        (Some(t), _) => match clusters.get(&t.cluster) {
            Some(c) => c.clone(),
            None => {
                tracing::warn!(route = %route.name, cluster = %t.cluster, "a filter chose an unknown upstream cluster");
                return upstream_failure(
                    route,
                    attempt,
                    Some(Arc::from(t.cluster.as_str())),
                    None,
                    0,
                    UpstreamError::NoEndpoint,
                );
            }
        },
        (None, Destination::Upstream(c)) => c.clone(),
        // Boxed: a handler call's future would otherwise size every
        // request's future, also on upstream routes (see `Gateway::handle`).
        (None, Destination::Handler(h)) => {
            return Box::pin(call_handler(route, h, req, attempt)).await
        }
    };
    let key = target.and_then(|t| t.endpoint_key.as_deref());
    let Some(endpoint) = cluster.pick(key) else {
        return upstream_failure(
            route,
            attempt,
            Some(cluster.name.clone()),
            None,
            0,
            UpstreamError::NoEndpoint,
        );
    };
    let mut out = http::Request::new(Full::new(req.body.clone()));
    *out.method_mut() = req.method.clone();
    *out.uri_mut() = crate::upstream::client::origin_form(&req.uri);
    let mut headers = if last_use {
        std::mem::take(&mut req.headers)
    } else {
        req.headers.clone()
    };
    if !headers.contains_key(http::header::HOST) {
        // The client's authority (HTTP/2, absolute-form), else the
        // endpoint's, as hyper would have set from a real URI.
        let host = req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| endpoint.host.clone());
        headers.insert(http::header::HOST, host);
    }
    // One hash of the name for the look-up and the insert.
    match headers.entry(X_FORWARDED_FOR) {
        http::header::Entry::Occupied(mut e) => {
            let xff = forwarded_for(Some(e.get()), &req.client_ip);
            e.insert(xff);
        }
        http::header::Entry::Vacant(e) => {
            e.insert(req.client_ip.clone());
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(req.scheme));
    *out.headers_mut() = headers;

    let timeout = req.attempt_timeout.unwrap_or(cluster.timeout);
    // Only `on-response` hooks read an attempt's latency: time it for them.
    let sent = route.has_response_hooks().then(Instant::now);
    let result = cluster.send(endpoint, out, timeout, timer).await;
    let latency_us = sent.map_or(0, |sent| sent.elapsed().as_micros() as u64);
    match result {
        Ok(resp) => {
            cluster.responses.increment(1);
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let info = Attempt {
                number: attempt,
                cluster: Some(cluster.name.clone()),
                endpoint: Some(endpoint.addr.clone()),
                latency_us,
                error: None,
                local: false,
            };
            let body = body
                .map_err(|e| Box::new(e) as response::BoxError)
                .boxed_unsync();
            match received(route, parts, body, info).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(route = %route.name, cluster = %cluster.name, "upstream response body failed: {e}");
                    upstream_failure(
                        route,
                        attempt,
                        Some(cluster.name.clone()),
                        Some(endpoint.addr.clone()),
                        latency_us,
                        UpstreamError::Protocol,
                    )
                }
            }
        }
        Err(failure) => {
            metrics::counter!("ficus_upstream_attempts_total", "cluster" => cluster.name.to_string(), "outcome" => kind_name(failure.kind)).increment(1);
            tracing::warn!(
                route = %route.name,
                cluster = %cluster.name,
                endpoint = %endpoint.addr,
                attempt,
                "upstream attempt failed ({}): {}",
                kind_name(failure.kind),
                failure.detail
            );
            upstream_failure(
                route,
                attempt,
                Some(cluster.name.clone()),
                Some(endpoint.addr.clone()),
                latency_us,
                failure.kind,
            )
        }
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// `X-Forwarded-For` with the client's address appended to what came in.
fn forwarded_for(prev: Option<&HeaderValue>, client: &HeaderValue) -> HeaderValue {
    match prev.filter(|p| p.to_str().is_ok()) {
        Some(prev) => {
            let mut buf = Vec::with_capacity(prev.len() + 2 + client.len());
            buf.extend_from_slice(prev.as_bytes());
            buf.extend_from_slice(b", ");
            buf.extend_from_slice(client.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(buf)).unwrap_or_else(|_| client.clone())
        }
        None => client.clone(),
    }
}

/// A response head and body from the destination: buffered and shown to
/// plugins when the route asks for bodies (up to its limit), streamed to the
/// client otherwise.
async fn received(
    route: &Route,
    mut parts: http::response::Parts,
    body: BoxBody,
    info: Attempt,
) -> Result<Produced, response::CollectError> {
    let (body, stream) = if route.plugin_body {
        let collected = response::collect_limited(body, route.max_response_body).await?;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        (Some(collected), None)
    } else {
        (None, Some(body))
    };
    Ok(Produced {
        state: Box::new(ResponseState {
            status: parts.status,
            headers: parts.headers,
            body_exposed: body.is_some(),
            body,
        }),
        stream,
        info,
    })
}

fn upstream_failure(
    route: &Route,
    attempt: u32,
    cluster: Option<Arc<str>>,
    endpoint: Option<Arc<str>>,
    latency_us: u64,
    kind: UpstreamError,
) -> Produced {
    let status = status_for(kind);
    let message = match kind {
        UpstreamError::ConnectFailed => "could not connect to the upstream service",
        UpstreamError::ConnectTimeout => "timed out connecting to the upstream service",
        UpstreamError::Timeout => "the upstream service did not answer in time",
        UpstreamError::Reset => "the upstream service closed the connection",
        UpstreamError::Protocol => "the upstream service sent an invalid response",
        UpstreamError::NoEndpoint => "no upstream service is available",
    };
    let reply = Reply::text(
        status,
        &format!("upstream_{}", kind_name(kind).replace('-', "_")),
        message,
    );
    Produced::error(
        reply,
        Attempt {
            number: attempt,
            cluster,
            endpoint,
            latency_us,
            error: Some(kind),
            local: false,
        },
        route.plugin_body,
    )
}

async fn call_handler(
    route: &Route,
    handler: &Handler,
    req: &RequestState,
    attempt: u32,
) -> Produced {
    let mut builder = http::Request::builder().method(req.method.clone());
    let authority = req.authority();
    let uri = http::Uri::builder()
        .scheme(req.scheme)
        .authority(if authority.is_empty() {
            "localhost"
        } else {
            authority.as_str()
        })
        .path_and_query(req.path_and_query())
        .build();
    builder = builder.uri(uri.unwrap_or_else(|_| http::Uri::from_static("/")));
    let mut out = match builder.body(Full::new(req.body.clone())) {
        Ok(r) => r,
        Err(_) => {
            return Produced::error(plugin_error_reply(), local_info(attempt), route.plugin_body)
        }
    };
    *out.headers_mut() = req.headers.clone();
    let sent = Instant::now();
    match handler.handle(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let info = Attempt {
                number: attempt,
                cluster: None,
                endpoint: None,
                latency_us: sent.elapsed().as_micros() as u64,
                error: None,
                local: true,
            };
            let body = body
                .map_err(|e| Box::new(e) as response::BoxError)
                .boxed_unsync();
            match received(route, parts, body, info.clone()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(route = %route.name, "handler response body failed: {e}");
                    Produced::error(plugin_error_reply(), info, true)
                }
            }
        }
        Err(e) => {
            metrics::counter!(
                "ficus_plugin_errors_total",
                "plugin" => handler.plugin().to_owned(),
                "route" => route.name.to_string(),
                "hook" => Hook::Handle.as_str(),
                "kind" => e.kind(),
            )
            .increment(1);
            tracing::error!(
                plugin = handler.plugin(),
                route = %route.name,
                hook = "handle",
                "plugin failed: {e}"
            );
            Produced::error(plugin_error_reply(), local_info(attempt), route.plugin_body)
        }
    }
}

/// The 404 for requests no route matches.
pub fn not_found() -> http::Response<BoxBody> {
    error_response(
        StatusCode::NOT_FOUND,
        "no_route",
        "no route matches this request",
    )
}
