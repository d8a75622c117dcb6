//! A gateway generation: everything built from one config (routes with
//! their plugin pools, upstream clusters, handlers), and the entry point
//! that serves one request with it.

use crate::capability::Services;
use crate::conn_timer::ConnTimer;
use crate::pipeline::canary::{Budget, Canary, CanarySummary};
use crate::pipeline::exchange::{strip_hop_by_hop, RequestState};
use crate::pipeline::response::{collect_limited, error_response, BoxBody, CollectError};
use crate::pipeline::{self, Clusters, Destination, Route, RouteMetrics, Step};
use crate::plugin::ctx::Capabilities;
use crate::plugin::engine::{CacheOutcome, Loaded, PluginEngine};
use crate::plugin::filter::{FilterPool, FilterSpec};
use crate::plugin::handler::{Handler, HandlerSpec};
use crate::plugin::{Grants, PluginError};
use crate::server::router::{PathMatch, RouteMatch};
use crate::upstream::{Balance, Cluster};
use ficus_config::{
    CallMode, Config, ConfigError, ConfigErrors, Grant, InstanceMode, LbPolicy, OnError,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One built generation of the gateway.
pub struct Gateway {
    routes: Vec<(RouteMatch, Arc<Route>)>,
    clusters: Clusters,
    max_request_body: usize,
}

/// The host-side grant set of a plugin's configured grants.
pub(crate) fn grants_of(list: &[Grant]) -> Grants {
    let mut g = Grants::default();
    for grant in list {
        match grant {
            Grant::Log => g.log = true,
            Grant::Metrics => g.metrics = true,
            Grant::State => g.state = true,
            Grant::Pubsub => g.pubsub = true,
            Grant::Leader => g.leader = true,
            Grant::Events => g.events = true,
            Grant::ReadModel => g.read_model = true,
            Grant::Clock => g.clock = true,
        }
    }
    g
}

/// Summary of a built route, for `ficus check` and `/admin/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteSummary {
    /// Route name.
    pub name: String,
    /// Plugins in pipeline order.
    pub pipeline: Vec<String>,
    /// Idle warm instances per step.
    pub idle_instances: Vec<usize>,
}

/// How much of a build was reused from the previous generation.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BuildStats {
    /// Pipeline steps whose warm pool was kept.
    pub steps_reused: usize,
    /// Pipeline steps built anew.
    pub steps_built: usize,
    /// Handlers kept.
    pub handlers_reused: usize,
    /// Clusters kept (with their connection pools).
    pub clusters_reused: usize,
    /// Components compiled (not found in any cache).
    pub compiled: usize,
}

impl Gateway {
    /// Build a generation from a validated config: load (through the
    /// compile cache), link, instantiate and configure every plugin. All
    /// errors are collected, each attributed to its place in the config.
    ///
    /// With `previous`, every unchanged part is reused: a pipeline step with
    /// the same route, position, component bytes and settings keeps its warm
    /// instance pool, an unchanged handler is kept, and an unchanged cluster
    /// keeps its connection pool.
    pub async fn build(
        config: &Config,
        engine: &PluginEngine,
        services: &Services,
        previous: Option<&Gateway>,
    ) -> Result<(Gateway, BuildStats), ConfigErrors> {
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut stats = BuildStats::default();

        let mut components: HashMap<&str, Loaded> = HashMap::new();
        for (name, plugin) in &config.plugins {
            let path = config.resolve(&plugin.source);
            match engine.load(&path) {
                Ok(loaded) => {
                    tracing::debug!(plugin = %name, outcome = ?loaded.outcome, "loaded plugin");
                    if loaded.outcome == CacheOutcome::Compiled {
                        stats.compiled += 1;
                    }
                    components.insert(name.as_str(), loaded);
                }
                Err(e) => errors.push(config.error_at(
                    &format!("plugins.{name}.source"),
                    format!("plugin \"{name}\": {e}"),
                )),
            }
        }

        let mut clusters: Clusters = HashMap::new();
        for (name, up) in &config.upstreams {
            let balance = match up.lb {
                LbPolicy::RoundRobin => Balance::RoundRobin,
                LbPolicy::Random => Balance::Random,
            };
            let connect_timeout = Duration::from_millis(up.connect_timeout_ms);
            let timeout = Duration::from_millis(up.timeout_ms);
            let kept = previous.and_then(|p| p.clusters.get(name)).filter(|c| {
                c.spec.endpoints == up.endpoints
                    && c.spec.balance == balance
                    && c.spec.connect_timeout == connect_timeout
                    && c.spec.timeout == timeout
            });
            if let Some(c) = kept {
                stats.clusters_reused += 1;
                clusters.insert(name.clone(), c.clone());
                continue;
            }
            match Cluster::new(name, &up.endpoints, balance, connect_timeout, timeout) {
                Ok(c) => {
                    clusters.insert(name.clone(), Arc::new(c));
                }
                Err(e) => errors.push(config.error_at(&format!("upstreams.{name}.endpoints"), e)),
            }
        }

        let mut routes = Vec::new();
        for (ri, rc) in config.routes.iter().enumerate() {
            let route_name: Arc<str> = config.route_name(ri).into();
            let previous_route = previous.and_then(|p| {
                p.routes
                    .iter()
                    .map(|(_, r)| r)
                    .find(|r| r.name == route_name)
            });
            let caps = |plugin: &str| Arc::new(Capabilities::new(plugin, &route_name, services));
            let mut steps = Vec::new();
            for (si, step) in rc.pipeline.iter().enumerate() {
                let key = format!("routes[{ri}].pipeline[{si}]");
                let (Some(pc), Some(loaded)) = (
                    config.plugins.get(&step.plugin),
                    components.get(step.plugin.as_str()),
                ) else {
                    continue; // reported by validation or loading
                };
                let spec = FilterSpec {
                    component: loaded.hash,
                    plugin: step.plugin.as_str().into(),
                    route: route_name.clone(),
                    position: si as u16,
                    config_json: step.config_json(),
                    timeout: Duration::from_millis(pc.timeout_ms),
                    memory_limit: pc.memory_limit_bytes as usize,
                    pool_size: pc.pool_size as usize,
                    fresh: pc.instances == InstanceMode::Fresh,
                    grants: grants_of(&pc.grants),
                    sync_calls: pc.calls == CallMode::Sync,
                };
                let fail_open = pc.on_error == OnError::FailOpen;
                let previous_step = previous_route.and_then(|r| r.steps.get(si));

                // The canary version, if configured.
                let mut canary = None;
                if let Some(cc) = &pc.canary {
                    let at = format!("plugins.{}.canary.source", step.plugin);
                    let budget = Budget {
                        percent: cc.percent,
                        max_error_rate: cc.max_error_rate,
                        max_latency: Duration::from_secs_f64(cc.max_latency_ms / 1000.0),
                        min_requests: cc.min_requests,
                        promote_after: cc.promote_after,
                    };
                    match engine.load(&config.resolve(&cc.source)) {
                        Err(e) => {
                            errors.push(config.error_at(
                                &at,
                                format!("canary of plugin \"{}\": {e}", step.plugin),
                            ));
                            continue;
                        }
                        Ok(loaded_canary) => {
                            if loaded_canary.outcome == CacheOutcome::Compiled {
                                stats.compiled += 1;
                            }
                            let canary_spec = FilterSpec {
                                component: loaded_canary.hash,
                                ..spec.clone()
                            };
                            let kept = previous_step
                                .and_then(|s| s.canary.as_ref())
                                .filter(|c| *c.pool.spec() == canary_spec && c.budget == budget);
                            if let Some(c) = kept {
                                canary = Some(c.clone());
                            } else {
                                match FilterPool::new(
                                    engine,
                                    &loaded_canary.component,
                                    canary_spec,
                                    caps(&step.plugin),
                                )
                                .await
                                {
                                    Ok(pool) => {
                                        canary = Some(Arc::new(Canary::new(Arc::new(pool), budget)))
                                    }
                                    Err(e) => {
                                        errors.push(config.error_at(
                                            &at,
                                            format!(
                                                "canary of plugin \"{}\" in route \"{route_name}\": {e}",
                                                step.plugin
                                            ),
                                        ));
                                        continue;
                                    }
                                }
                            }
                        }
                    }
                }

                // An unchanged stable version keeps its warm pool (whatever
                // happened to the canary).
                let reusable_pool = previous_step
                    .filter(|s| *s.pool.spec() == spec)
                    .map(|s| s.pool.clone());
                if let Some(pool) = reusable_pool {
                    stats.steps_reused += 1;
                    steps.push(Step {
                        pool,
                        fail_open,
                        canary,
                    });
                    continue;
                }
                match FilterPool::new(engine, &loaded.component, spec, caps(&step.plugin)).await {
                    Ok(pool) => {
                        stats.steps_built += 1;
                        steps.push(Step {
                            pool: Arc::new(pool),
                            fail_open,
                            canary,
                        })
                    }
                    Err(e) => {
                        let at = match e {
                            PluginError::Rejected(_) => format!("{key}.config"),
                            _ => format!("{key}.plugin"),
                        };
                        errors.push(config.error_at(
                            &at,
                            format!("plugin \"{}\" in route \"{route_name}\": {e}", step.plugin),
                        ));
                    }
                }
            }
            let destination = if let Some(h) = &rc.handler {
                let (Some(pc), Some(loaded)) = (config.plugins.get(h), components.get(h.as_str()))
                else {
                    continue;
                };
                let spec = HandlerSpec {
                    component: loaded.hash,
                    plugin: h.as_str().into(),
                    timeout: Duration::from_millis(pc.timeout_ms),
                    memory_limit: pc.memory_limit_bytes as usize,
                    grants: grants_of(&pc.grants),
                };
                let kept = previous_route.and_then(|r| match &r.destination {
                    Destination::Handler(old) if *old.spec() == spec => Some(old.clone()),
                    _ => None,
                });
                if let Some(old) = kept {
                    stats.handlers_reused += 1;
                    Destination::Handler(old)
                } else {
                    match Handler::new(engine, &loaded.component, spec, caps(h)).await {
                        Ok(handler) => Destination::Handler(Arc::new(handler)),
                        Err(e) => {
                            errors.push(config.error_at(
                                &format!("routes[{ri}].handler"),
                                format!("handler \"{h}\" in route \"{route_name}\": {e}"),
                            ));
                            continue;
                        }
                    }
                }
            } else if let Some(u) = &rc.upstream {
                match clusters.get(u) {
                    Some(c) => Destination::Upstream(c.clone()),
                    None => continue,
                }
            } else {
                continue;
            };
            let matcher = match compile_match(&rc.match_) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(config.error_at(&format!("routes[{ri}].match"), e));
                    continue;
                }
            };
            routes.push((
                matcher,
                Arc::new(Route {
                    metrics: RouteMetrics::new(&route_name),
                    name: route_name,
                    steps,
                    destination,
                    max_attempts: rc.max_attempts.max(1),
                    plugin_body: rc.plugin_body,
                    max_response_body: config.server.max_response_body_bytes as usize,
                }),
            ));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok((
            Gateway {
                routes,
                clusters,
                max_request_body: config.server.max_request_body_bytes as usize,
            },
            stats,
        ))
    }

    /// Every canary and where it stands.
    pub fn canaries(&self) -> Vec<CanarySummary> {
        self.routes
            .iter()
            .flat_map(|(_, r)| r.steps.iter())
            .filter_map(|s| s.canary.as_ref().map(|c| c.summary()))
            .collect()
    }

    /// Routes and their pipelines.
    pub fn summary(&self) -> Vec<RouteSummary> {
        self.routes
            .iter()
            .map(|(_, r)| RouteSummary {
                name: r.name.to_string(),
                pipeline: r
                    .steps
                    .iter()
                    .map(|s| s.pool.spec().plugin.to_string())
                    .collect(),
                idle_instances: r.steps.iter().map(|s| s.pool.idle()).collect(),
            })
            .collect()
    }

    /// Serve one request. The future is not boxed: hyper keeps it in the
    /// connection's own task, one allocation fewer per request.
    pub async fn handle(
        self: Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
        client_addr: SocketAddr,
        client_ip: HeaderValue,
        timer: Option<ConnTimer>,
    ) -> http::Response<BoxBody> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let host = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let mut matched: Option<Arc<Route>> = None;
        for (m, r) in &self.routes {
            if m.matches(&parts.method, parts.uri.path(), host, &parts.headers) {
                matched = Some(r.clone());
                break;
            }
        }
        let Some(route) = matched else {
            return pipeline::not_found();
        };
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_request_body as u64) {
            return too_large(self.max_request_body);
        }
        let body = match collect_limited(body, self.max_request_body).await {
            Ok(b) => b,
            Err(CollectError::TooLarge(_)) => return too_large(self.max_request_body),
            Err(CollectError::Read(_)) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request_body",
                    "the request body could not be read",
                )
            }
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        let req = Box::new(RequestState {
            method: parts.method,
            uri: parts.uri,
            headers,
            scheme: "http",
            client_addr,
            client_ip,
            route: route.name.clone(),
            body,
            body_exposed: route.plugin_body,
            attempt_timeout: None,
            max_attempts: route.max_attempts,
            context: Vec::new(),
            mirror: None,
        });
        if !route.needs_own_task() {
            // No filter of this route has an `on-response` hook, so a client
            // going away (hyper dropping this future) cannot cut a pipeline
            // between its hooks: run it here, without a task of its own.
            let mut unfinished = pipeline::Unfinished::new(&route, started);
            let resp = pipeline::run_for_client(
                &route,
                &self.clusters,
                req,
                started,
                None,
                timer.as_ref(),
            )
            .await;
            unfinished.finished();
            return resp;
        }
        // The pipeline runs on a task of its own, so that a client going away
        // (hyper drops this future) cannot cut it between `on-request` and
        // `on-response`: dropping `client` tells the pipeline to abandon the
        // upstream attempt and finish its hooks (see `pipeline`).
        let (client, gone) = tokio::sync::watch::channel(());
        let result = self.spawn_pipeline(route, req, started, gone).await;
        drop(client);
        match result {
            Ok(resp) => resp,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the gateway is shutting down",
            ),
        }
    }
}

impl Gateway {
    /// Spawn the pipeline of a request on a task of its own. A plain `fn`,
    /// so that the spawned future (as large as the pipeline's) is built here
    /// and not laid out inside [`Gateway::handle`]'s future, which every
    /// request moves several times.
    fn spawn_pipeline(
        self: &Arc<Self>,
        route: Arc<Route>,
        req: Box<RequestState>,
        started: Instant,
        gone: tokio::sync::watch::Receiver<()>,
    ) -> tokio::task::JoinHandle<http::Response<BoxBody>> {
        let gateway = self.clone();
        tokio::spawn(async move {
            pipeline::run_for_client(&route, &gateway.clusters, req, started, Some(gone), None)
                .await
        })
    }
}

fn too_large(limit: usize) -> http::Response<BoxBody> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_body_too_large",
        &format!("the request body exceeds the limit of {limit} bytes"),
    )
}

fn compile_match(m: &ficus_config::Match) -> Result<RouteMatch, String> {
    let path = match (&m.path, &m.path_prefix) {
        (Some(p), _) => PathMatch::Exact(p.clone()),
        (None, Some(p)) => PathMatch::Prefix(p.clone()),
        (None, None) => PathMatch::Prefix("/".into()),
    };
    let methods = m
        .methods
        .iter()
        .map(|s| {
            Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("invalid method {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let headers = m
        .headers
        .iter()
        .map(|(n, v)| {
            let n = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("invalid header name {n:?}"))?;
            let v = HeaderValue::from_str(v).map_err(|_| format!("invalid header value {v:?}"))?;
            Ok((n, v))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RouteMatch {
        path,
        methods,
        host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        headers,
    })
}
