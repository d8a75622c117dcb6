//! The configuration model: plain serde structs, one per TOML table.
//!
//! Every struct denies unknown fields, and every field documents its default. Types here only
//! describe the *shape* of a configuration; rules that span fields or tables (cross references,
//! ranges, shadowed routes) live in the `validate` module.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ConfigError;
use crate::locate::Locator;

/// Default values of every field, as functions so serde, `Default` impls and the JSON Schema
/// agree.
pub(crate) mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::PathBuf;

    pub(crate) fn listen() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
    }
    pub(crate) fn admin() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9901))
    }
    pub(crate) const fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub(crate) const fn max_headers() -> usize {
        100
    }
    pub(crate) const fn max_request_body_bytes() -> u64 {
        1024 * 1024
    }
    pub(crate) const fn max_response_body_bytes() -> u64 {
        8 * 1024 * 1024
    }
    pub(crate) const fn shutdown_grace_ms() -> u64 {
        10_000
    }
    pub(crate) const fn header_read_timeout_ms() -> u64 {
        30_000
    }
    pub(crate) fn cache_dir() -> PathBuf {
        PathBuf::from(".ficus-cache")
    }
    pub(crate) const fn http2() -> bool {
        true
    }
    pub(crate) const fn canary_percent() -> u32 {
        10
    }
    pub(crate) const fn canary_max_error_rate() -> f64 {
        0.01
    }
    pub(crate) const fn canary_max_latency_ms() -> f64 {
        10.0
    }
    pub(crate) const fn canary_min_requests() -> u64 {
        20
    }
    pub(crate) const fn canary_promote_after() -> u64 {
        1000
    }
    pub(crate) const fn max_plugin_instances() -> u32 {
        1000
    }
    pub(crate) fn data_dir() -> PathBuf {
        PathBuf::from("./data")
    }
    pub(crate) const fn plugin_timeout_ms() -> u64 {
        100
    }
    pub(crate) const fn memory_limit_bytes() -> u64 {
        16 * 1024 * 1024
    }
    pub(crate) const fn pool_size() -> u32 {
        32
    }
    pub(crate) const fn connect_timeout_ms() -> u64 {
        1_000
    }
    pub(crate) const fn upstream_timeout_ms() -> u64 {
        15_000
    }
    pub(crate) const fn max_attempts() -> u32 {
        1
    }
    pub(crate) fn step_config() -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }
    pub(crate) const fn max_message_bytes() -> u64 {
        1024 * 1024
    }
    pub(crate) const fn max_deliver() -> u32 {
        5
    }
    pub(crate) const fn backoff_ms() -> u64 {
        100
    }
    pub(crate) const fn backoff_max_ms() -> u64 {
        10_000
    }
    pub(crate) const fn max_in_flight() -> u32 {
        256
    }
}

/// Where a configuration came from: the file path and its full text, kept so that errors found
/// after parsing (by [`Config::validate`] or by the host through [`Config::error_at`]) can be
/// reported with a line and column.
#[derive(Debug, Clone, Default)]
struct Origin {
    file: PathBuf,
    text: Arc<str>,
}

/// A complete gateway configuration: the root of the TOML document.
///
/// Obtain one with [`crate::load`] or [`crate::parse_str`], which parse, validate and normalise
/// it, and remember the file it came from. `Config::default()` is a valid configuration that
/// listens on the default addresses and has no plugins, upstreams or routes.
///
/// Equality compares the configuration values only, not the file or text they came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Ficus gateway configuration",
    description = "Configuration of the Ficus gateway (gateway.toml). Relative paths are relative \
                   to the directory of the configuration file."
)]
pub struct Config {
    /// Listeners and request limits. Default: every `[server]` field at its default.
    #[serde(default)]
    pub server: Server,
    /// Backend of the host capabilities (state, publish…). Default: `kind = "embedded"`.
    #[serde(default)]
    pub backend: Backend,
    /// WebAssembly plugins by name (`[a-z0-9][a-z0-9_-]*`). Default: none.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": crate::validate::NAME_PATTERN }))]
    pub plugins: BTreeMap<String, Plugin>,
    /// Upstream clusters by name (`[a-z0-9][a-z0-9_-]*`). Default: none.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": crate::validate::NAME_PATTERN }))]
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes, tried in order; the first whose `match` fits a request handles it. Default: none
    /// (every request gets 404).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Pub/sub limits. Default: every `[pubsub]` field at its default.
    #[serde(default)]
    pub pubsub: PubSub,
    /// Subscriptions: which subscriber plugin receives the messages published to which
    /// subjects. Default: none.
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    /// Leader election: this node's id, lease timing and the groups it campaigns for.
    /// Default: every `[leader]` field at its default.
    #[serde(default)]
    pub leader: crate::leader::Leader,
    /// Scheduled work run by `tick` plugins on the leader of a group. Default: none.
    #[serde(default)]
    pub ticks: Vec<crate::leader::Tick>,
    /// Projections: plugins that fold the event store into read models, run on the leader of a
    /// group. Default: none.
    #[serde(default)]
    pub projections: Vec<crate::projections::Projection>,
    #[serde(skip)]
    #[schemars(skip)]
    origin: Origin,
}

impl PartialEq for Config {
    fn eq(&self, other: &Self) -> bool {
        self.server == other.server
            && self.backend == other.backend
            && self.plugins == other.plugins
            && self.upstreams == other.upstreams
            && self.routes == other.routes
            && self.leader == other.leader
            && self.ticks == other.ticks
            && self.projections == other.projections
            && self.pubsub == other.pubsub
            && self.subscriptions == other.subscriptions
    }
}

impl Config {
    /// Path of the file this configuration was read from (as given to [`crate::load`] or
    /// [`crate::parse_str`]); empty for a configuration built in code.
    pub fn file(&self) -> &Path {
        &self.origin.file
    }

    /// The TOML text this configuration was parsed from; empty for one built in code.
    pub fn source_text(&self) -> &str {
        &self.origin.text
    }

    /// Directory relative paths in the configuration are resolved against: the directory of the
    /// configuration file, or `.` when the file has no parent (or the config was built in code).
    pub fn base_dir(&self) -> &Path {
        match self.origin.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// Resolves `path` against [`Config::base_dir`]; absolute paths are returned unchanged.
    ///
    /// Use it for `plugins.*.source`, `server.cache_dir` and `backend.data_dir`.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir().join(path)
        }
    }

    /// Display name of route `index`: its `name`, or `routes[index]` when it has none (or when
    /// `index` is out of range).
    pub fn route_name(&self, index: usize) -> String {
        self.routes
            .get(index)
            .and_then(|r| r.name.clone())
            .unwrap_or_else(|| format!("routes[{index}]"))
    }

    /// An error about the value at `key_path` (e.g. `plugins.x.source` or
    /// `routes[1].pipeline[0].config`), located in this configuration's file with the same
    /// line/column resolution as validation errors. When the key path cannot be found in the
    /// text, the nearest enclosing key that can be found gives the line.
    pub fn error_at(&self, key_path: &str, message: impl Into<String>) -> ConfigError {
        Locator::new(&self.origin.text).error(&self.origin.file, key_path, message.into())
    }

    /// Records where this configuration came from (used by [`crate::parse_str`]).
    pub(crate) fn set_origin(&mut self, file: &Path, text: &str) {
        self.origin = Origin {
            file: file.to_path_buf(),
            text: Arc::from(text),
        };
    }

    /// Canonical spelling of values that are matched case-insensitively: methods uppercase,
    /// hosts and header names lowercase. Run after validation so that error key paths still
    /// name the keys as they were written.
    pub(crate) fn normalise(&mut self) {
        for route in &mut self.routes {
            let m = &mut route.match_;
            for method in &mut m.methods {
                method.make_ascii_uppercase();
            }
            if let Some(host) = &mut m.host {
                host.make_ascii_lowercase();
            }
            m.headers = std::mem::take(&mut m.headers)
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
        }
    }
}

/// `[server]`: listeners, request limits and process-level settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Address of the proxy listener, `ip:port`. Default: `"127.0.0.1:8080"`.
    #[serde(default = "defaults::listen", deserialize_with = "socket_addr")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Address of the admin listener (health, metrics, reload), `ip:port`. Default:
    /// `"127.0.0.1:9901"`.
    #[serde(default = "defaults::admin", deserialize_with = "socket_addr")]
    #[schemars(with = "String")]
    pub admin: SocketAddr,
    /// Bearer token required by the admin listener. Default: none; required when `admin` is
    /// not a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Largest accepted request head (request line and headers), in bytes; 1024..=1048576.
    /// Default: `16384`.
    #[serde(default = "defaults::max_header_bytes")]
    #[schemars(range(min = 1024, max = 1_048_576))]
    pub max_header_bytes: usize,
    /// Largest number of request headers; 1..=1000. Default: `100`.
    #[serde(default = "defaults::max_headers")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_headers: usize,
    /// Largest request body, in bytes; larger requests get `413`. Default: `1048576` (1 MiB).
    #[serde(default = "defaults::max_request_body_bytes")]
    pub max_request_body_bytes: u64,
    /// Largest response body buffered when a route exposes bodies to plugins
    /// (`plugin_body = true`), in bytes. Default: `8388608` (8 MiB).
    #[serde(default = "defaults::max_response_body_bytes")]
    pub max_response_body_bytes: u64,
    /// How long in-flight requests may finish after a shutdown signal, in milliseconds.
    /// Default: `10000`.
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// How long an HTTP/1 client has to send a complete request head, in milliseconds,
    /// counted from the connection's start or the end of its previous request (so it also
    /// closes idle keep-alive connections); 100..=3600000. Default: `30000`.
    #[serde(default = "defaults::header_read_timeout_ms")]
    #[schemars(range(min = 100, max = 3_600_000))]
    pub header_read_timeout_ms: u64,
    /// Directory of precompiled plugin artifacts, relative to the configuration file's
    /// directory. Default: `".ficus-cache"`.
    #[serde(default = "defaults::cache_dir")]
    pub cache_dir: PathBuf,
    /// Accept HTTP/2 cleartext (h2c with prior knowledge) besides HTTP/1.1. Default: `true`.
    #[serde(default = "defaults::http2")]
    pub http2: bool,
    /// Most plugin instances alive at once across all routes (warm pools,
    /// instances serving requests, handler instances): the capacity of the
    /// pooling allocator. Size it for peak concurrency; when it is full, a
    /// request that needs a new instance fails per its plugin's `on_error`.
    /// Default: `1000`.
    #[serde(default = "defaults::max_plugin_instances")]
    pub max_plugin_instances: u32,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            admin: defaults::admin(),
            admin_token: None,
            max_header_bytes: defaults::max_header_bytes(),
            max_headers: defaults::max_headers(),
            max_request_body_bytes: defaults::max_request_body_bytes(),
            max_response_body_bytes: defaults::max_response_body_bytes(),
            shutdown_grace_ms: defaults::shutdown_grace_ms(),
            header_read_timeout_ms: defaults::header_read_timeout_ms(),
            cache_dir: defaults::cache_dir(),
            http2: defaults::http2(),
            max_plugin_instances: defaults::max_plugin_instances(),
        }
    }
}

/// `[backend]`: what implements the host capabilities (state, publish…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Backend implementation. Default: `"embedded"`.
    #[serde(default)]
    pub kind: BackendKind,
    /// Directory of the embedded backend's data, relative to the configuration file's
    /// directory. Default: `"./data"`. With `kind = "nats"`, the read models still keep
    /// their data here (events, leases and pub/sub are on NATS).
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// NATS server URLs (`nats://host:port` or `tls://host:port`), tried in turn. Required
    /// (at least one) with `kind = "nats"`, refused otherwise. Default: `[]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and nkey seed), relative to the configuration file's
    /// directory. Only with `kind = "nats"`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// The JetStream stream holding the event store (letters, digits, `-`, `_`). Only with
    /// `kind = "nats"`. Default: `"FICUS_EVENTS"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_stream: Option<String>,
    /// The JetStream stream holding the read models' log of operations (letters, digits,
    /// `-`, `_`). Only with `kind = "nats"`. Default: `"FICUS_READMODELS"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readmodels_stream: Option<String>,
    /// Copies of the JetStream stream: 1, 3 or 5 (replicas above 1 need a NATS cluster and
    /// nats-server >= 2.10.8). Only with `kind = "nats"`. Default: `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u8>,
}

impl Backend {
    /// Default of [`Backend::events_stream`].
    pub const DEFAULT_EVENTS_STREAM: &'static str = "FICUS_EVENTS";

    /// The event store's JetStream stream name (with its default).
    pub fn events_stream(&self) -> &str {
        self.events_stream
            .as_deref()
            .unwrap_or(Self::DEFAULT_EVENTS_STREAM)
    }

    /// Default of [`Backend::readmodels_stream`].
    pub const DEFAULT_READMODELS_STREAM: &'static str = "FICUS_READMODELS";

    /// The read models' JetStream stream name (with its default).
    pub fn readmodels_stream(&self) -> &str {
        self.readmodels_stream
            .as_deref()
            .unwrap_or(Self::DEFAULT_READMODELS_STREAM)
    }

    /// The JetStream replicas (with its default).
    pub fn replicas(&self) -> u8 {
        self.replicas.unwrap_or(1)
    }
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            kind: BackendKind::default(),
            data_dir: defaults::data_dir(),
            servers: Vec::new(),
            credentials: None,
            events_stream: None,
            readmodels_stream: None,
            replicas: None,
        }
    }
}

/// Implementation of the host capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In-process state and publish, persisted under `backend.data_dir`. The default.
    #[default]
    Embedded,
    /// NATS JetStream (`backend.servers`): the event store and leader election. Pub/sub
    /// still runs on the embedded backend.
    Nats,
}

impl BackendKind {
    /// Every supported kind, in the order error messages list them.
    pub const ALL: &'static [BackendKind] = &[BackendKind::Embedded, BackendKind::Nats];

    /// The kind's name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Nats => "nats",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kinds that are planned but not implemented: named in a friendlier error.
const FUTURE_BACKEND_KINDS: &[&str] = &[];

impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if let Some(kind) = BackendKind::ALL.iter().find(|k| k.as_str() == name) {
            return Ok(*kind);
        }
        let expected = BackendKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let message = if FUTURE_BACKEND_KINDS.contains(&name.as_str()) {
            format!("backend kind {name:?} is not supported yet (expected: {expected})")
        } else {
            format!("unknown backend kind {name:?} (expected: {expected})")
        };
        Err(serde::de::Error::custom(message))
    }
}

/// `[plugins.NAME]`: a WebAssembly component and the capabilities it is granted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Path of the component (`.wasm`), relative to the configuration file's directory.
    /// Required; no default.
    pub source: PathBuf,
    /// Host capabilities the plugin may import; an ungranted import fails at instantiation.
    /// Default: `[]` (none).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// What a request sees when the plugin traps, times out or exceeds its memory. Default:
    /// `"fail-closed"`.
    #[serde(default)]
    pub on_error: OnError,
    /// Deadline for each call into the plugin, in milliseconds; 1..=60000. Default: `100`.
    #[serde(default = "defaults::plugin_timeout_ms")]
    #[schemars(range(min = 1, max = 60_000))]
    pub timeout_ms: u64,
    /// Linear memory limit of each instance, in bytes; 65536..=1073741824. Default: `16777216`
    /// (16 MiB).
    #[serde(default = "defaults::memory_limit_bytes")]
    #[schemars(range(min = 65_536, max = 1_073_741_824))]
    pub memory_limit_bytes: u64,
    /// Whether instances are reused across requests. Default: `"pooled"`.
    #[serde(default)]
    pub instances: InstanceMode,
    /// Largest number of warm instances kept per plugin per route (when `instances =
    /// "pooled"`); 1..=1024. Default: `32`.
    #[serde(default = "defaults::pool_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub pool_size: u32,
    /// How the host calls the plugin's filter hooks. `"sync"` skips the async fiber of each
    /// call (about 0.2 us per hook call) but a call that loops holds its worker thread until
    /// `timeout_ms`, and the plugin may import only `wasi:cli`, `wasi:clocks`, `wasi:io` and
    /// `wasi:random` and no grant whose functions wait (`state`, `pubsub`, `events`,
    /// `read-model`). Applies to route pipelines; handlers, subscribers, ticks and projections
    /// are always called async. Default: `"async"`.
    #[serde(default)]
    pub calls: CallMode,
    /// A canary version of this plugin: another component that receives a share of the
    /// requests, with automatic rollback or promotion. Default: none.
    #[serde(default)]
    pub canary: Option<Canary>,
}

/// `[plugins.NAME.canary]`: try a new version of a plugin on a share of the requests.
///
/// Each request picks stable or canary per pipeline step (and keeps that version for both
/// hooks). The host counts, for the canary, its errors (traps, timeouts, memory failures and
/// 5xx responses it produces) and its mean hook latency. Once `min_requests` canary requests
/// have run, exceeding either budget rolls the canary back (all traffic to stable); meeting
/// them for `promote_after` requests promotes it (all traffic to the canary). Decisions are
/// logged, counted in `ficus_canary_decisions_total` and shown in `/admin/status`. A promotion
/// lasts until the next reload: make it permanent by pointing `source` at the new file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Path of the canary component, relative to the configuration file's directory. Required.
    pub source: PathBuf,
    /// Share of requests sent to the canary, in percent; 0..=100. Default: `10`.
    #[serde(default = "defaults::canary_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
    /// Largest tolerated error rate of the canary, 0.0..=1.0. Default: `0.01`.
    #[serde(default = "defaults::canary_max_error_rate")]
    pub max_error_rate: f64,
    /// Largest tolerated mean time of one canary hook call, in milliseconds. Default: `10`.
    #[serde(default = "defaults::canary_max_latency_ms")]
    pub max_latency_ms: f64,
    /// Canary requests observed before any decision; >= 1. Default: `20`.
    #[serde(default = "defaults::canary_min_requests")]
    pub min_requests: u64,
    /// Canary requests within budget after which it is promoted; >= `min_requests`.
    /// Default: `1000`.
    #[serde(default = "defaults::canary_promote_after")]
    pub promote_after: u64,
}

impl Plugin {
    /// A plugin loaded from `source` with every other field at its default.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            grants: Vec::new(),
            on_error: OnError::default(),
            timeout_ms: defaults::plugin_timeout_ms(),
            memory_limit_bytes: defaults::memory_limit_bytes(),
            instances: InstanceMode::default(),
            pool_size: defaults::pool_size(),
            calls: CallMode::default(),
            canary: None,
        }
    }
}

/// A host capability a plugin may be granted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// Structured logging through the host.
    Log,
    /// Counters, gauges and histograms exported by the host.
    Metrics,
    /// Key-value state shared across instances (kept by the backend).
    State,
    /// Publishing messages to subjects.
    Pubsub,
    /// Observing leader elections.
    Leader,
    /// The event store (append and read events).
    Events,
    /// Reading the read models built by projections.
    #[serde(rename = "read-model")]
    ReadModel,
    /// Wall and monotonic clocks.
    Clock,
}

impl Grant {
    /// The grant's name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Log => "log",
            Grant::Metrics => "metrics",
            Grant::State => "state",
            Grant::Pubsub => "pubsub",
            Grant::Leader => "leader",
            Grant::Events => "events",
            Grant::ReadModel => "read-model",
            Grant::Clock => "clock",
        }
    }

    /// Whether the interface's host functions wait (on the backend or the event store), so
    /// that a plugin granted it cannot have `calls = "sync"`.
    pub fn waits(self) -> bool {
        matches!(
            self,
            Grant::State | Grant::Pubsub | Grant::Events | Grant::ReadModel
        )
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request sees when a plugin fails (trap, timeout, memory limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The request fails with a 5xx response. The default.
    #[default]
    FailClosed,
    /// The failing step is skipped and the request continues as if it had passed.
    FailOpen,
}

/// Whether plugin instances are reused across requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// Warm instances are kept in a pool (up to `pool_size`) and reused. The default.
    #[default]
    Pooled,
    /// A new instance for every request; no state survives between requests.
    Fresh,
}

/// How the host calls a plugin's filter hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallMode {
    /// On an async fiber that yields to other requests while the call runs. The default.
    #[default]
    Async,
    /// Directly on the worker thread: faster, but a looping call holds the thread until its
    /// deadline.
    Sync,
}

/// `[upstreams.NAME]`: a set of equivalent endpoints a route can forward to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Endpoints as `host:port` (host: IP address or DNS name; IPv6 in brackets). Required,
    /// non-empty, no duplicates; no default.
    #[schemars(length(min = 1))]
    pub endpoints: Vec<String>,
    /// Timeout for establishing a connection, in milliseconds. Default: `1000`.
    #[serde(default = "defaults::connect_timeout_ms")]
    #[schemars(range(min = 1))]
    pub connect_timeout_ms: u64,
    /// Timeout of each attempt until the response head arrives, in milliseconds. Default:
    /// `15000`.
    #[serde(default = "defaults::upstream_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// How an endpoint is chosen when no plugin picks one. Default: `"round-robin"`.
    #[serde(default)]
    pub lb: LbPolicy,
}

impl Upstream {
    /// An upstream over `endpoints` with every other field at its default.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            timeout_ms: defaults::upstream_timeout_ms(),
            lb: LbPolicy::default(),
        }
    }
}

/// Load-balancing policy of an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LbPolicy {
    /// Endpoints in turn. The default.
    #[default]
    RoundRobin,
    /// An endpoint chosen uniformly at random.
    Random,
}

/// `[[routes]]`: which requests a route takes, the plugins they go through and where they end.
///
/// Exactly one of `upstream` and `handler` is set (checked by validation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name used in logs, metrics and errors; unique. Default: none, shown as `routes[i]`
    /// (`Config::route_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which requests the route takes. Default: `{}` (every request).
    #[serde(rename = "match", default)]
    pub match_: Match,
    /// Name of the `[upstreams]` entry requests are forwarded to. Default: none; exactly one of
    /// `upstream` and `handler` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Name of the `[plugins]` entry (a `wasi:http` handler component) that answers requests.
    /// Default: none; exactly one of `upstream` and `handler` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Plugins the request and response go through: requests in order, responses in reverse.
    /// Default: `[]`.
    #[serde(default)]
    pub pipeline: Vec<PipelineStep>,
    /// Cap on upstream attempts when plugins ask for retries; 1..=10. Default: `1` (no retry).
    #[serde(default = "defaults::max_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: u32,
    /// Buffer request and response bodies and expose them to plugins (responses up to
    /// `server.max_response_body_bytes`). Default: `false` (bodies stream through).
    #[serde(default)]
    pub plugin_body: bool,
}

/// Every field at its default. Not valid on its own: set `upstream` or `handler`.
impl Default for Route {
    fn default() -> Self {
        Self {
            name: None,
            match_: Match::default(),
            upstream: None,
            handler: None,
            pipeline: Vec::new(),
            max_attempts: defaults::max_attempts(),
            plugin_body: false,
        }
    }
}

impl Route {
    /// A route matching every request, forwarded to `upstream`, other fields at their defaults.
    pub fn to_upstream(upstream: impl Into<String>) -> Self {
        Self {
            upstream: Some(upstream.into()),
            ..Self::default()
        }
    }

    /// A route matching every request, answered by the handler plugin `handler`, other fields
    /// at their defaults.
    pub fn to_handler(handler: impl Into<String>) -> Self {
        Self {
            handler: Some(handler.into()),
            ..Self::default()
        }
    }
}

/// `match`: conditions a request must meet, all of them, for a route to take it.
///
/// Path rules are segment-aware: prefix `/orders` matches `/orders`, `/orders/` and `/orders/7`
/// but not `/orders-admin`; prefix `/orders/` matches everything below `/orders/`; prefix `/`
/// matches every path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Exact path (starts with `/`). Default: none. At most one of `path` and `path_prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix (starts with `/`), matched segment by segment. Default: none, which means
    /// `"/"` when `path` is not set either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Accepted methods (uppercased when loaded). Default: `[]` (any method).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Required host, compared case-insensitively with the request's host without its port
    /// (lowercased when loaded). Default: none (any host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Required headers: name (case-insensitive, lowercased when loaded) to exact value.
    /// Default: `{}` (no header condition).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The path condition of a [`Match`], with the default made explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathRule<'a> {
    /// The request path equals this.
    Exact(&'a str),
    /// The request path is this or lies below it (segment-aware, see [`Match`]).
    Prefix(&'a str),
}

impl PathRule<'_> {
    /// Whether a request path (without query) satisfies the rule.
    pub fn matches(&self, path: &str) -> bool {
        match *self {
            PathRule::Exact(p) => path == p,
            PathRule::Prefix(p) => prefix_matches(p, path),
        }
    }

    /// Whether `self` accepts every path `other` accepts.
    pub fn covers(&self, other: &PathRule<'_>) -> bool {
        match (*self, *other) {
            (PathRule::Exact(a), PathRule::Exact(b)) => a == b,
            (PathRule::Exact(_), PathRule::Prefix(_)) => false,
            (PathRule::Prefix(a), PathRule::Exact(b) | PathRule::Prefix(b)) => prefix_matches(a, b),
        }
    }
}

/// Segment-aware prefix test: `prefix` matches `path` when they are equal, when `prefix` ends
/// with `/` and starts `path`, or when `path` continues `prefix` with a `/`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

impl Match {
    /// The path condition: `path` (exact), else `path_prefix`, else prefix `/`.
    pub fn path_rule(&self) -> PathRule<'_> {
        match (&self.path, &self.path_prefix) {
            (Some(p), _) => PathRule::Exact(p),
            (None, Some(p)) => PathRule::Prefix(p),
            (None, None) => PathRule::Prefix("/"),
        }
    }

    /// Whether a request path (without query) satisfies the path condition.
    pub fn matches_path(&self, path: &str) -> bool {
        self.path_rule().matches(path)
    }

    /// Whether a request method satisfies the method condition (case-insensitively).
    pub fn matches_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// Whether a request's `Host` (or `:authority`), possibly with a port, satisfies the host
    /// condition. Compared case-insensitively, port ignored.
    pub fn matches_host(&self, authority: &str) -> bool {
        match &self.host {
            None => true,
            Some(want) => strip_port(authority).eq_ignore_ascii_case(strip_port(want)),
        }
    }

    /// Whether `self` takes every request `other` takes (so a route with `other` placed after
    /// one with `self` can never be reached).
    pub fn covers(&self, other: &Match) -> bool {
        let methods = self.methods.is_empty()
            || (!other.methods.is_empty()
                && other
                    .methods
                    .iter()
                    .all(|m| self.methods.iter().any(|s| s.eq_ignore_ascii_case(m))));
        let host = match (&self.host, &other.host) {
            (None, _) => true,
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (Some(_), None) => false,
        };
        let headers = self.headers.iter().all(|(name, value)| {
            other
                .headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        });
        methods && host && headers && self.path_rule().covers(&other.path_rule())
    }

    /// Whether `self` and `other` take exactly the same requests.
    pub fn same_as(&self, other: &Match) -> bool {
        self.covers(other) && other.covers(self)
    }
}

/// `host` of `host:port` / `[v6]:port`; unchanged when there is no port.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &authority[..end + 2],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// One step of a route's pipeline: a plugin and the configuration it receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineStep {
    /// Name of the `[plugins]` entry. Required; no default.
    pub plugin: String,
    /// Configuration handed to the plugin (as JSON) when the route is built; any table.
    /// Default: `{}`.
    #[serde(default = "defaults::step_config")]
    #[schemars(extend("type" = "object"))]
    pub config: serde_json::Value,
}

impl PipelineStep {
    /// A step running `plugin` with an empty configuration.
    pub fn new(plugin: impl Into<String>) -> Self {
        Self {
            plugin: plugin.into(),
            config: defaults::step_config(),
        }
    }

    /// JSON text of the step's configuration; `{}` when it is absent (null).
    pub fn config_json(&self) -> String {
        if self.config.is_null() {
            "{}".to_owned()
        } else {
            self.config.to_string()
        }
    }
}

/// Deserialises an `ip:port` listener address with a message that says what was expected.
fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid listen address {text:?} (expected ip:port, e.g. \"127.0.0.1:8080\")"
        ))
    })
}

/// `[pubsub]`: limits of the publish/subscribe capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PubSub {
    /// Largest message accepted by `publish`: payload plus header names and values, in bytes
    /// (1..=67108864); a larger one fails with `too-large`. Default: `1048576` (1 MiB).
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: u64,
}

impl Default for PubSub {
    fn default() -> Self {
        Self {
            max_message_bytes: defaults::max_message_bytes(),
        }
    }
}

/// How a subscription's messages are delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Durable: stored under `backend.data_dir` before `publish` returns, delivered until
    /// `on-message` returns ok (retried with backoff up to `max_deliver` times, then sent to
    /// the dead-letter subject); survives restarts. The default.
    #[default]
    AtLeastOnce,
    /// In-process fan-out, nothing stored: a message is dropped (and counted) when the
    /// subscription already buffers `max_in_flight` messages, or when `on-message` fails.
    AtMostOnce,
}

impl Delivery {
    /// The mode's name as written in TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::AtMostOnce => "at-most-once",
        }
    }
}

/// `[[subscriptions]]`: a subscriber plugin receiving the messages of a subject pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Unique name (`[a-z0-9][a-z0-9_-]*`): labels metrics, names the durable queue. Required.
    pub name: String,
    /// Subject pattern: dot-separated tokens of `[A-Za-z0-9_-]`, where `*` matches one token
    /// and a final `>` one or more tokens (`orders.*`, `orders.>`). Required.
    pub subject: String,
    /// Name of the `[plugins]` entry that receives the messages (it must export
    /// `ficus:gateway/subscriber-hooks`). Required.
    pub plugin: String,
    /// Queue group: subscriptions with the same `queue` compete for messages, and each message
    /// goes to exactly one of them. Members must have the same `subject`, `delivery` and
    /// retry settings. Default: none (every subscription gets every matching message).
    #[serde(default)]
    pub queue: Option<String>,
    /// `"at-least-once"` (durable) or `"at-most-once"`. Default: `"at-least-once"`.
    #[serde(default)]
    pub delivery: Delivery,
    /// At-least-once: deliveries of a message before it goes to the dead-letter subject
    /// (1..=1000). Default: `5`.
    #[serde(default = "defaults::max_deliver")]
    pub max_deliver: u32,
    /// At-least-once: delay before the first redelivery, in milliseconds; it doubles on every
    /// further failure up to `backoff_max_ms`. Default: `100`.
    #[serde(default = "defaults::backoff_ms")]
    pub backoff_ms: u64,
    /// At-least-once: largest redelivery delay, in milliseconds. Default: `10000`.
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Messages the subscription holds in memory at once (1..=65536): the delivery window of
    /// an at-least-once subscription (the rest waits on disk), the buffer of an at-most-once
    /// one (a message published while it is full is dropped and counted). Default: `256`.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: u32,
    /// At-least-once: subject a message is published to after `max_deliver` failed
    /// deliveries (with headers `ficus-dead-letter-subscription`, `-subject` and `-reason`).
    /// Default: `"dead.<name>"`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Configuration handed to the plugin's `configure` (as JSON); any table. Default: `{}`.
    #[serde(default = "defaults::step_config")]
    #[schemars(extend("type" = "object"))]
    pub config: serde_json::Value,
}

impl Subscription {
    /// A subscription of `plugin` to `subject` with every other field at its default.
    pub fn new(
        name: impl Into<String>,
        subject: impl Into<String>,
        plugin: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            subject: subject.into(),
            plugin: plugin.into(),
            queue: None,
            delivery: Delivery::default(),
            max_deliver: defaults::max_deliver(),
            backoff_ms: defaults::backoff_ms(),
            backoff_max_ms: defaults::backoff_max_ms(),
            max_in_flight: defaults::max_in_flight(),
            dead_letter: None,
            config: defaults::step_config(),
        }
    }

    /// The dead-letter subject: `dead_letter`, or `dead.<name>`.
    pub fn dead_letter_subject(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("dead.{}", self.name))
    }

    /// JSON text of the plugin configuration; `{}` when it is absent (null).
    pub fn config_json(&self) -> String {
        if self.config.is_null() {
            "{}".to_owned()
        } else {
            self.config.to_string()
        }
    }
}
