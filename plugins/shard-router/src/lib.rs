//! `shard-router`: send each request to the shard that owns its key.
//!
//! A shard is an upstream cluster (or one endpoint of a cluster) with a
//! stable `id` and a weight. The key comes from the first of the configured
//! sources that is present (header, cookie, path segment, query parameter,
//! client IP); it is placed by key ranges, then by Maglev or weighted
//! rendezvous hashing, skipping unhealthy shards and, optionally, shards over
//! their bounded load. The chosen shard is returned as a `route` action and
//! reported in a response header (`x-shard`). See README.md for the full
//! configuration reference.
//!
//! The placement logic lives in [`placement`] and the key parsers in
//! [`keys`]: plain `std` modules that the gateway's end-to-end suite also
//! compiles natively, so their unit and statistical tests run in CI.
//!
//! The component imports `ficus:gateway/state` (bounded load, state-driven
//! health, ejection, the control endpoint), so a route using it must grant
//! `"state"`.

mod keys;
mod placement;

use ficus_sdk::prelude::*;
use ficus_sdk::state;
use placement::{Hashing, KeyRange, Maglev, Ranges, Rendezvous};
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Key sources, tried in order.
    key: Vec<KeySource>,
    shards: Vec<ShardConfig>,
    #[serde(default)]
    placement: PlacementKind,
    table_size: Option<u64>,
    #[serde(default)]
    ranges: Vec<RangeConfig>,
    default_shard: Option<String>,
    #[serde(default = "default_missing_status")]
    missing_status: u16,
    #[serde(default = "default_missing_body")]
    missing_body: String,
    #[serde(default = "default_unavailable_status")]
    unavailable_status: u16,
    #[serde(default = "default_unavailable_body")]
    unavailable_body: String,
    #[serde(default)]
    unhealthy: Vec<String>,
    #[serde(default)]
    health_from_state: bool,
    #[serde(default = "default_shard_header")]
    shard_header: String,
    upstream_header: Option<String>,
    #[serde(default)]
    endpoint_by_key: bool,
    bounded_load: Option<BoundedLoadConfig>,
    eject_ms: Option<u64>,
    control: Option<ControlConfig>,
}

fn default_missing_status() -> u16 {
    400
}

fn default_missing_body() -> String {
    "missing shard key\n".to_string()
}

fn default_unavailable_status() -> u16 {
    503
}

fn default_unavailable_body() -> String {
    "no healthy shard for this key\n".to_string()
}

fn default_shard_header() -> String {
    "x-shard".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum KeySource {
    Header(String),
    Cookie(String),
    PathSegment(usize),
    Query(String),
    ClientIp(bool),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PlacementKind {
    #[default]
    Maglev,
    Rendezvous,
    Range,
}

impl PlacementKind {
    fn as_str(self) -> &'static str {
        match self {
            PlacementKind::Maglev => "maglev",
            PlacementKind::Rendezvous => "rendezvous",
            PlacementKind::Range => "range",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardConfig {
    id: String,
    cluster: String,
    endpoint: Option<String>,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeConfig {
    from: Option<String>,
    to: Option<String>,
    shard: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Measure {
    #[default]
    InFlight,
    Requests,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoundedLoadConfig {
    #[serde(default = "default_factor")]
    factor: f64,
    #[serde(default)]
    measure: Measure,
    window_ms: Option<u64>,
}

fn default_factor() -> f64 {
    1.25
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlConfig {
    path_prefix: String,
    token: String,
}

/// Longest shard id (it is used in headers and state keys).
const MAX_ID_BYTES: usize = 128;
/// Longest window or ejection time: one day.
const MAX_MS: u64 = 86_400_000;

fn check_status(key: &str, status: u16) -> Result<(), String> {
    if (100..=599).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "config.{key}: {status} is not an HTTP status (100..=599)"
        ))
    }
}

fn check_header(key: &str, name: &str) -> Result<(), String> {
    if ficus_sdk::is_valid_header_name(name) {
        Ok(())
    } else {
        Err(format!("config.{key}: {name:?} is not a valid header name"))
    }
}

fn check_id(key: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("config.{key}: a shard id must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "config.{key}: shard id {id:?} is longer than {MAX_ID_BYTES} bytes"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':'))
    {
        return Err(format!(
            "config.{key}: shard id {id:?} may only contain ASCII letters, digits and `-_.~:`"
        ));
    }
    Ok(())
}

fn check_ms(key: &str, ms: u64) -> Result<(), String> {
    if (1..=MAX_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!("config.{key}: {ms} is not in 1..={MAX_MS}"))
    }
}

// ---------------------------------------------------------------------------
// The configured router
// ---------------------------------------------------------------------------

struct Shard {
    id: String,
    cluster: String,
    endpoint: Option<String>,
    weight: u32,
    /// State key marking the shard unhealthy (`down:<id>`).
    down_key: String,
}

struct Bounded {
    factor: f64,
    measure: Measure,
    window_ms: u64,
    /// Sum of the weights of the hashed shards not listed as unhealthy.
    weight_sum: u64,
}

struct Control {
    prefix: String,
    authorization: String,
}

/// How a shard was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Range,
    Hash,
    Default,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Range => "range",
            Via::Hash => "hash",
            Via::Default => "default",
        }
    }
}

enum Placed {
    Shard(usize, Via),
    Missing,
    Unavailable,
}

/// The bounded-load counters of the current window.
struct Window {
    /// `bl:<route>:<generation>:`.
    prefix: String,
    total: u64,
}

struct ShardRouter {
    sources: Vec<KeySource>,
    shards: Vec<Shard>,
    kind: PlacementKind,
    hashing: Option<Hashing>,
    ranges: Ranges,
    default_shard: Option<usize>,
    missing: (u16, String),
    unavailable: (u16, String),
    /// Listed in `unhealthy`.
    unhealthy: Vec<bool>,
    health_from_state: bool,
    shard_header: Option<String>,
    upstream_header: Option<String>,
    endpoint_by_key: bool,
    bounded: Option<Bounded>,
    eject_ms: Option<u64>,
    control: Option<Control>,
    /// The route this instance serves (asked once, in on-request). Only
    /// on-request may rely on it: a request's on-response can run on
    /// another instance, so anything it needs travels in the request
    /// context.
    route: Option<String>,
}

/// Context keys (per request, per pipeline position).
const CTX_SHARD: &str = "shard";
/// The prefix of the bounded-load counters a request was counted in
/// (`bl:<route>:<generation>:`), until its slot is released.
const CTX_LOAD: &str = "load";

impl ShardRouter {
    fn build(config: Config) -> Result<ShardRouter, String> {
        if config.key.is_empty() {
            return Err("config.key: at least one key source is required".into());
        }
        for (i, source) in config.key.iter().enumerate() {
            match source {
                KeySource::Header(name) => check_header(&format!("key[{i}].header"), name)?,
                KeySource::Cookie(name) if name.is_empty() => {
                    return Err(format!("config.key[{i}].cookie: must not be empty"))
                }
                KeySource::Query(name) if name.is_empty() => {
                    return Err(format!("config.key[{i}].query: must not be empty"))
                }
                KeySource::ClientIp(false) => {
                    return Err(format!(
                        "config.key[{i}].client_ip: must be `true` (remove the entry to disable it)"
                    ))
                }
                _ => {}
            }
        }

        if config.shards.is_empty() {
            return Err("config.shards: at least one shard is required".into());
        }
        if config.shards.len() > placement::MAX_SHARDS {
            return Err(format!(
                "config.shards: {} shards; at most {} are supported",
                config.shards.len(),
                placement::MAX_SHARDS
            ));
        }
        for (i, shard) in config.shards.iter().enumerate() {
            check_id(&format!("shards[{i}].id"), &shard.id)?;
            if let Some(j) = config.shards[..i].iter().position(|s| s.id == shard.id) {
                return Err(format!(
                    "config.shards[{i}].id: duplicate shard id {:?} (also shards[{j}].id)",
                    shard.id
                ));
            }
            if shard.cluster.is_empty() {
                return Err(format!("config.shards[{i}].cluster: must not be empty"));
            }
            if shard.endpoint.as_deref() == Some("") {
                return Err(format!(
                    "config.shards[{i}].endpoint: must not be empty (`host:port` of an endpoint \
                     of the cluster)"
                ));
            }
        }
        let index_of = |key: &str, id: &str| -> Result<usize, String> {
            config
                .shards
                .iter()
                .position(|s| s.id == id)
                .ok_or_else(|| format!("config.{key}: unknown shard id {id:?}"))
        };

        let weighted: Vec<(&str, u32)> = config
            .shards
            .iter()
            .map(|s| (s.id.as_str(), s.weight))
            .collect();
        if config.placement != PlacementKind::Range && weighted.iter().all(|(_, w)| *w == 0) {
            return Err(
                "config.shards: the weights sum to zero (at least one shard needs a \
                        weight above 0)"
                    .into(),
            );
        }
        if config.table_size.is_some() && config.placement != PlacementKind::Maglev {
            return Err(format!(
                "config.table_size: only applies to placement = \"maglev\" (placement is {:?})",
                config.placement.as_str()
            ));
        }
        let table_error = |e: placement::BuildError| match e {
            placement::BuildError::NotPrime(_)
            | placement::BuildError::TableTooSmall { .. }
            | placement::BuildError::TableTooLarge(_) => format!("config.table_size: {e}"),
            other => format!("config.shards: {other}"),
        };
        let hashing = match config.placement {
            PlacementKind::Maglev => Some(Hashing::Maglev(
                Maglev::new(
                    &weighted,
                    config.table_size.unwrap_or(placement::DEFAULT_TABLE_SIZE),
                )
                .map_err(table_error)?,
            )),
            PlacementKind::Rendezvous => Some(Hashing::Rendezvous(
                Rendezvous::new(&weighted).map_err(table_error)?,
            )),
            PlacementKind::Range => None,
        };

        if config.placement == PlacementKind::Range && config.ranges.is_empty() {
            return Err(
                "config.ranges: placement = \"range\" needs at least one range".to_string(),
            );
        }
        let mut ranges = Vec::with_capacity(config.ranges.len());
        for (i, r) in config.ranges.iter().enumerate() {
            ranges.push(KeyRange {
                from: r.from.clone(),
                to: r.to.clone(),
                shard: index_of(&format!("ranges[{i}].shard"), &r.shard)?,
            });
        }
        let ranges =
            Ranges::new(ranges).map_err(|(i, message)| format!("config.ranges[{i}]: {message}"))?;

        let default_shard = match &config.default_shard {
            Some(id) => Some(index_of("default_shard", id)?),
            None => None,
        };
        check_status("missing_status", config.missing_status)?;
        check_status("unavailable_status", config.unavailable_status)?;
        let mut unhealthy = vec![false; config.shards.len()];
        for (i, id) in config.unhealthy.iter().enumerate() {
            unhealthy[index_of(&format!("unhealthy[{i}]"), id)?] = true;
        }
        let shard_header = match config.shard_header.as_str() {
            "" => None,
            name => {
                check_header("shard_header", name)?;
                Some(name.to_string())
            }
        };
        if let Some(name) = &config.upstream_header {
            check_header("upstream_header", name)?;
        }

        let bounded = match config.bounded_load {
            None => None,
            Some(b) => {
                if config.placement == PlacementKind::Range {
                    return Err("config.bounded_load: only applies to hashed placement \
                                (maglev or rendezvous)"
                        .into());
                }
                if !b.factor.is_finite() || b.factor < 1.0 || b.factor > 100.0 {
                    return Err(format!(
                        "config.bounded_load.factor: {} is not in 1.0..=100.0",
                        b.factor
                    ));
                }
                let window_ms = b.window_ms.unwrap_or(match b.measure {
                    Measure::InFlight => 10_000,
                    Measure::Requests => 1_000,
                });
                check_ms("bounded_load.window_ms", window_ms)?;
                let weight_sum = config
                    .shards
                    .iter()
                    .zip(&unhealthy)
                    .filter(|(_, down)| !**down)
                    .map(|(s, _)| u64::from(s.weight))
                    .sum();
                Some(Bounded {
                    factor: b.factor,
                    measure: b.measure,
                    window_ms,
                    weight_sum,
                })
            }
        };
        if let Some(ms) = config.eject_ms {
            check_ms("eject_ms", ms)?;
            if !config.health_from_state {
                return Err(
                    "config.eject_ms: ejected shards are recorded in state; set \
                            health_from_state = true"
                        .into(),
                );
            }
        }
        let control = match config.control {
            None => None,
            Some(c) => {
                if !c.path_prefix.starts_with('/') || c.path_prefix.len() < 2 {
                    return Err(format!(
                        "config.control.path_prefix: {:?} must start with `/` and name a path",
                        c.path_prefix
                    ));
                }
                if c.token.len() < 8 || !ficus_sdk::is_valid_header_value(c.token.as_bytes()) {
                    return Err("config.control.token: at least 8 visible characters".into());
                }
                Some(Control {
                    prefix: c.path_prefix.trim_end_matches('/').to_string(),
                    authorization: format!("Bearer {}", c.token),
                })
            }
        };

        Ok(ShardRouter {
            sources: config.key,
            shards: config
                .shards
                .into_iter()
                .map(|s| Shard {
                    down_key: format!("down:{}", s.id),
                    id: s.id,
                    cluster: s.cluster,
                    endpoint: s.endpoint,
                    weight: s.weight,
                })
                .collect(),
            kind: config.placement,
            hashing,
            ranges,
            default_shard,
            missing: (config.missing_status, config.missing_body),
            unavailable: (config.unavailable_status, config.unavailable_body),
            unhealthy,
            health_from_state: config.health_from_state,
            shard_header,
            upstream_header: config.upstream_header,
            endpoint_by_key: config.endpoint_by_key,
            bounded,
            eject_ms: config.eject_ms,
            control,
            route: None,
        })
    }

    /// The key: the first source that yields a non-empty value.
    fn key(&self, req: &Request) -> Option<String> {
        let mut path_with_query: Option<String> = None;
        for source in &self.sources {
            let found = match source {
                KeySource::Header(name) => req
                    .header_str(name)
                    .and_then(|v| keys::header_text(&v).map(str::to_owned)),
                KeySource::Cookie(name) => {
                    let values = req.header_all_str("cookie");
                    keys::cookie(values.iter().map(String::as_str), name).map(str::to_owned)
                }
                KeySource::PathSegment(index) => {
                    let full = path_with_query.get_or_insert_with(|| req.path_with_query());
                    let (path, _) = ficus_sdk::split_path_query(full);
                    keys::path_segment(path, *index).map(str::to_owned)
                }
                KeySource::Query(name) => {
                    let full = path_with_query.get_or_insert_with(|| req.path_with_query());
                    ficus_sdk::split_path_query(full)
                        .1
                        .and_then(|q| keys::query_param(q, name))
                        .map(str::to_owned)
                }
                KeySource::ClientIp(_) => {
                    Some(keys::client_ip(&req.client_addr()).to_owned()).filter(|ip| !ip.is_empty())
                }
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Listed as unhealthy in the config, or (with `health_from_state`)
    /// marked down in state. A state error counts as healthy (fail open).
    fn healthy(&self, shard: usize) -> bool {
        if self.unhealthy[shard] {
            return false;
        }
        if self.health_from_state {
            if let Ok(Some(_)) = state::get(&self.shards[shard].down_key) {
                return false;
            }
        }
        true
    }

    /// The bounded-load window: its generation is the revision of the
    /// window key, created with a TTL of `window_ms` by the first request
    /// after the previous one expired, so every instance (and every gateway
    /// sharing the state backend) counts into the same keys.
    fn window(&self, bounded: &Bounded) -> Result<Window, ficus_sdk::StateError> {
        let route = self.route.as_deref().unwrap_or_default();
        let window_key = format!("bl:{route}:window");
        let mut generation = None;
        for _ in 0..3 {
            if let Some(entry) = state::get(&window_key)? {
                generation = Some(entry.revision);
                break;
            }
            if let Some(revision) =
                state::compare_and_set(&window_key, None, b"", Some(bounded.window_ms))?
            {
                generation = Some(revision);
                break;
            }
        }
        let generation = generation.ok_or_else(|| {
            ficus_sdk::StateError::Unavailable("bounded-load window contention".into())
        })?;
        let prefix = format!("bl:{route}:{generation}:");
        let total = read_count(&format!("{prefix}total"))?;
        Ok(Window { prefix, total })
    }

    /// Place a key. With `account`, bounded load is applied and the choice
    /// counted (a real request); without, it is a dry run (`lookup`).
    fn place(&self, key: Option<&str>, req: Option<&Request>) -> Placed {
        let Some(key) = key else {
            return self.fallback_to_default();
        };
        if let Some(shard) = self.ranges.find(key) {
            return if self.healthy(shard) {
                Placed::Shard(shard, Via::Range)
            } else {
                Placed::Unavailable
            };
        }
        let Some(hashing) = &self.hashing else {
            // placement = "range" and no range holds the key.
            return self.fallback_to_default();
        };
        let hash = placement::key_hash(key.as_bytes());
        let window = match (&self.bounded, req) {
            (Some(bounded), Some(_)) => self.window(bounded).ok().map(|w| (bounded, w)),
            _ => None,
        };
        let chosen =
            match &window {
                None => hashing.choose(hash, |s| self.healthy(s)),
                Some((bounded, window)) => hashing
                    .choose(hash, |s| {
                        self.healthy(s)
                            && read_count(&format!("{}s:{}", window.prefix, self.shards[s].id))
                                .map_or(true, |load| {
                                    load < placement::capacity(
                                        window.total,
                                        bounded.factor,
                                        self.shards[s].weight,
                                        bounded.weight_sum,
                                    )
                                })
                    })
                    // Every healthy shard is full (counters raced): ignore the bound.
                    .or_else(|| hashing.choose(hash, |s| self.healthy(s))),
            };
        let Some(shard) = chosen else {
            return Placed::Unavailable;
        };
        if let (Some((bounded, window)), Some(req)) = (&window, req) {
            let ttl = Some(bounded.window_ms.saturating_mul(2));
            let counted = state::increment(
                &format!("{}s:{}", window.prefix, self.shards[shard].id),
                1,
                ttl,
            )
            .and_then(|_| state::increment(&format!("{}total", window.prefix), 1, ttl));
            if counted.is_ok() && bounded.measure == Measure::InFlight {
                // The counters' prefix travels with the request: its
                // on-response may run on another instance of the pool (one
                // created after this call, which never saw a request).
                req.set_context(CTX_LOAD, &window.prefix);
            }
        }
        Placed::Shard(shard, Via::Hash)
    }

    fn fallback_to_default(&self) -> Placed {
        match self.default_shard {
            Some(shard) if self.healthy(shard) => Placed::Shard(shard, Via::Default),
            Some(_) => Placed::Unavailable,
            None => Placed::Missing,
        }
    }

    fn route_to(&self, req: &Request, shard: usize, key: Option<&str>) -> RequestAction {
        let s = &self.shards[shard];
        req.set_context(CTX_SHARD, &s.id);
        if let Some(name) = &self.upstream_header {
            let _ = req.set_header_str(name, &s.id);
        }
        let endpoint_key = match (&s.endpoint, key) {
            (Some(endpoint), _) => Some(endpoint.clone()),
            (None, Some(key)) if self.endpoint_by_key => Some(key.to_string()),
            _ => None,
        };
        RequestAction::Route(UpstreamTarget {
            cluster: s.cluster.clone(),
            endpoint_key,
        })
    }

    // -- control endpoint ---------------------------------------------------

    fn control(&self, control: &Control, req: &Request, rest: &str) -> RequestAction {
        let authorized = req
            .header("authorization")
            .is_some_and(|v| constant_time_eq(&v, control.authorization.as_bytes()));
        if !authorized {
            return RequestAction::Respond(
                json_response(401, &serde_json::json!({ "error": "unauthorized" }))
                    .header("www-authenticate", "Bearer"),
            );
        }
        let method = req.method();
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let response = match (method.as_str(), segments.as_slice()) {
            ("GET", [] | ["shards"]) => json_response(200, &self.status()),
            ("GET", ["lookup"]) => {
                let key = req
                    .query()
                    .and_then(|q| keys::query_param(&q, "key").map(keys::percent_decode));
                match key {
                    Some(key) => json_response(200, &self.lookup(&key)),
                    None => json_response(
                        400,
                        &serde_json::json!({ "error": "the `key` query parameter is required" }),
                    ),
                }
            }
            ("PUT" | "POST" | "DELETE", ["unhealthy", id]) => self.mark(req, &method, id),
            (_, [] | ["shards"] | ["lookup"] | ["unhealthy", _]) => {
                json_response(405, &serde_json::json!({ "error": "method not allowed" }))
            }
            _ => json_response(
                404,
                &serde_json::json!({
                    "error": "unknown control path",
                    "paths": ["GET /shards", "GET /lookup?key=K", "PUT|DELETE /unhealthy/ID[?ttl_ms=N]"],
                }),
            ),
        };
        RequestAction::Respond(response)
    }

    fn status(&self) -> serde_json::Value {
        let shares: Vec<f64> = match &self.hashing {
            Some(Hashing::Maglev(m)) => m
                .entries(self.shards.len())
                .into_iter()
                .map(|e| e as f64 / m.table_size() as f64)
                .collect(),
            Some(Hashing::Rendezvous(_)) => {
                let sum: u64 = self.shards.iter().map(|s| u64::from(s.weight)).sum();
                self.shards
                    .iter()
                    .map(|s| f64::from(s.weight) / sum.max(1) as f64)
                    .collect()
            }
            None => vec![0.0; self.shards.len()],
        };
        let shards: Vec<serde_json::Value> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let in_state =
                    self.health_from_state && matches!(state::get(&s.down_key), Ok(Some(_)));
                serde_json::json!({
                    "id": s.id,
                    "cluster": s.cluster,
                    "endpoint": s.endpoint,
                    "weight": s.weight,
                    "hash_share": shares[i],
                    "unhealthy_config": self.unhealthy[i],
                    "unhealthy_state": in_state,
                    "healthy": !self.unhealthy[i] && !in_state,
                })
            })
            .collect();
        serde_json::json!({
            "placement": self.kind.as_str(),
            "table_size": match &self.hashing {
                Some(Hashing::Maglev(m)) => Some(m.table_size()),
                _ => None,
            },
            "ranges": self.ranges_json(),
            "default_shard": self.default_shard.map(|i| self.shards[i].id.as_str()),
            "health_from_state": self.health_from_state,
            "bounded_load": self.bounded.as_ref().map(|b| serde_json::json!({
                "factor": b.factor,
                "measure": match b.measure { Measure::InFlight => "in_flight", Measure::Requests => "requests" },
                "window_ms": b.window_ms,
            })),
            "shards": shards,
        })
    }

    fn ranges_json(&self) -> Vec<serde_json::Value> {
        self.ranges
            .as_slice()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "from": r.from,
                    "to": r.to,
                    "shard": self.shards[r.shard].id,
                })
            })
            .collect()
    }

    fn lookup(&self, key: &str) -> serde_json::Value {
        let (shard, via) = match self.place(Some(key), None) {
            Placed::Shard(s, via) => (Some(self.shards[s].id.as_str()), Some(via.as_str())),
            Placed::Missing | Placed::Unavailable => (None, None),
        };
        let preference: Vec<&str> = match &self.hashing {
            Some(h) => h
                .preference(placement::key_hash(key.as_bytes()))
                .into_iter()
                .map(|s| self.shards[s].id.as_str())
                .collect(),
            None => Vec::new(),
        };
        serde_json::json!({
            "key": key,
            "shard": shard,
            "via": via,
            "hash_preference": preference,
        })
    }

    fn mark(&self, req: &Request, method: &str, id: &str) -> ResponseSpec {
        let Some(shard) = self.shards.iter().find(|s| s.id == id) else {
            return json_response(
                404,
                &serde_json::json!({ "error": format!("unknown shard id {id:?}") }),
            );
        };
        if !self.health_from_state {
            return json_response(
                409,
                &serde_json::json!({
                    "error": "health_from_state is off: this route ignores state health marks"
                }),
            );
        }
        let result = if method == "DELETE" {
            state::delete(&shard.down_key).map(|_| ())
        } else {
            let ttl = req
                .query()
                .and_then(|q| keys::query_param(&q, "ttl_ms").and_then(|v| v.parse::<u64>().ok()));
            state::set(&shard.down_key, b"operator", ttl).map(|_| ())
        };
        match result {
            Ok(()) => ResponseSpec::new(204),
            Err(err) => json_response(
                503,
                &serde_json::json!({ "error": format!("state: {err}") }),
            ),
        }
    }
}

/// A counter's value (missing: 0; negative, after a window reset: 0).
fn read_count(key: &str) -> Result<u64, ficus_sdk::StateError> {
    Ok(state::get(key)?
        .and_then(|e| {
            std::str::from_utf8(&e.value)
                .ok()?
                .trim()
                .parse::<i64>()
                .ok()
        })
        .map_or(0, |n| n.max(0) as u64))
}

fn json_response(status: u16, value: &serde_json::Value) -> ResponseSpec {
    ResponseSpec::new(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(value.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `prefix` itself or below it, as `/rest`.
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

impl Filter for ShardRouter {
    fn configure(config: &str) -> Result<Self, String> {
        ShardRouter::build(ficus_sdk::config(config)?)
    }

    fn hooks(&self) -> HookSet {
        let in_flight = self
            .bounded
            .as_ref()
            .is_some_and(|b| b.measure == Measure::InFlight);
        if self.shard_header.is_some() || in_flight || self.eject_ms.is_some() {
            HookSet::ON_REQUEST | HookSet::ON_RESPONSE
        } else {
            HookSet::ON_REQUEST
        }
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        if let Some(control) = &self.control {
            let path = req.path();
            if let Some(rest) = under(&path, &control.prefix) {
                return self.control(control, req, rest);
            }
        }
        if self.bounded.is_some() && self.route.is_none() {
            self.route = Some(req.route());
        }
        let key = self.key(req);
        match self.place(key.as_deref(), Some(req)) {
            Placed::Shard(shard, _) => self.route_to(req, shard, key.as_deref()),
            Placed::Missing => {
                RequestAction::Respond(ResponseSpec::text(self.missing.0, self.missing.1.clone()))
            }
            Placed::Unavailable => RequestAction::Respond(ResponseSpec::text(
                self.unavailable.0,
                self.unavailable.1.clone(),
            )),
        }
    }

    fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
        attempt: &AttemptInfo,
    ) -> ResponseAction {
        let Some(id) = req.context(CTX_SHARD) else {
            return ResponseAction::Continue;
        };
        if let Some(name) = &self.shard_header {
            let _ = resp.set_header_str(name, &id);
        }
        if let Some(bounded) = &self.bounded {
            // In flight until the first response (a retry keeps its slot
            // released: the load of retries is not counted).
            if bounded.measure == Measure::InFlight {
                if let Some(prefix) = req.context(CTX_LOAD).filter(|p| !p.is_empty()) {
                    // The TTL applies only if the window expired meanwhile
                    // and the decrement creates the key: it must not stay.
                    let ttl = Some(bounded.window_ms.saturating_mul(2));
                    let _ = state::increment(&format!("{prefix}s:{id}"), -1, ttl);
                    let _ = state::increment(&format!("{prefix}total"), -1, ttl);
                    req.set_context(CTX_LOAD, "");
                }
            }
        }
        if let (Some(ms), Some(error)) = (self.eject_ms, attempt.error) {
            if matches!(
                error,
                UpstreamError::ConnectFailed | UpstreamError::ConnectTimeout
            ) {
                if let Some(shard) = self.shards.iter().find(|s| s.id == id) {
                    let value = format!("ejected: {}", error.as_str());
                    let _ = state::set(&shard.down_key, value.as_bytes(), Some(ms));
                }
            }
        }
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(ShardRouter);
