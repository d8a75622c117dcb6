//! `circuit-breaker`: stop calling an upstream that keeps failing, in the
//! manner of resilience4j's CircuitBreaker.
//!
//! A breaker is **closed** while calls succeed: every upstream attempt is
//! classified (success, failure, slow, ignored) and recorded in a sliding
//! window (the last N calls, or the calls of the last N seconds). Once the
//! window holds `minimum_calls`, a failure rate ≥ `failure_rate_threshold` or
//! a slow-call rate ≥ `slow_call_rate_threshold` **opens** it: requests are
//! answered at once with `503` and `Retry-After`, without reaching the
//! upstream, for `wait_in_open_ms`. Then the first request moves it to
//! **half-open**, where exactly `permitted_calls_in_half_open` probe requests
//! go through (concurrent requests beyond them are rejected); when every probe
//! has reported, the breaker closes, or re-opens if the probes' rates reach
//! the thresholds. Modes: `normal`, `dry-run` (records and transitions,
//! never rejects), `forced-open` (rejects everything) and `disabled`.
//!
//! State lives in the host `state` capability, in one record per breaker
//! updated by compare-and-set, so every worker and instance of the gateway
//! (and, on a distributed state backend, every gateway) shares it. The
//! transitions are logged and counted, and the gauge
//! `circuit_breaker_state{breaker}` reads 0 closed, 1 open, 2 half-open,
//! 3 disabled, 4 forced-open.
//!
//! Grants: `["state", "clock", "metrics", "log"]` (the wall clock times the
//! wait in open and the time-based window; without `clock` it reads 0 and the
//! config is rejected).
//!
//! ```toml
//! [[routes.pipeline]]
//! plugin = "circuit-breaker"
//! config = { failure_rate_threshold = 0.5, sliding_window_size = 20, minimum_calls = 10,
//!            wait_in_open_ms = 30000, permitted_calls_in_half_open = 3 }
//! ```
//!
//! ## Config reference (every key optional)
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `key` | `"route"` | `"route"`: one breaker per route; `"upstream"`: one per upstream (needs `upstream`), shared by every route naming it; `"endpoint"`: one per endpoint (needs `upstream` and `endpoints`) |
//! | `name` | route / upstream name | the breaker's name (state key and `breaker` label); routes with the same `key` and `name` share one breaker |
//! | `upstream` | none | the upstream cluster guarded; attempts that went to another cluster are ignored |
//! | `endpoints` | `[]` | with `key = "endpoint"`: the upstream's endpoints (`host:port`); the plugin routes each request to one whose breaker admits it |
//! | `mode` | `"normal"` | `"normal"`, `"dry-run"` (alias `"metrics-only"`), `"forced-open"`, `"disabled"` |
//! | `sliding_window_type` | `"count-based"` | or `"time-based"` |
//! | `sliding_window_size` | `100` | calls (count-based, 1..=10000) or seconds (time-based, 1..=600) |
//! | `minimum_calls` | `100` | calls in the window before any decision (count-based: capped at the window size) |
//! | `failure_rate_threshold` | `0.5` | open when failures / calls ≥ this; a rate in (0, 1] |
//! | `slow_call_rate_threshold` | `1.0` | open when slow calls / calls ≥ this; a rate in (0, 1] |
//! | `slow_call_duration_ms` | `60000` | a call is slow when its latency is above this |
//! | `wait_in_open_ms` | `60000` | time open before half-open (≥ 1) |
//! | `wait_in_open_multiplier` | `1.0` | each consecutive re-opening multiplies the wait (≥ 1) |
//! | `max_wait_in_open_ms` | `wait_in_open_ms`, or `600000` with a multiplier | cap of the multiplied wait |
//! | `permitted_calls_in_half_open` | `10` | probes let through in half-open (1..=10000) |
//! | `max_wait_in_half_open_ms` | `60000` | half-open longer than this re-opens (0: wait forever) |
//! | `failure_statuses` | `["5xx"]` | statuses recorded as failures: codes (`429`), classes (`"5xx"`), ranges (`"500-504"`) |
//! | `ignore_statuses` | `[]` | statuses not recorded at all (wins over `failure_statuses`) |
//! | `failure_errors` | all six | upstream errors recorded as failures: `connect-failed`, `connect-timeout`, `timeout`, `reset`, `protocol`, `no-endpoint`; unlisted kinds are ignored |
//! | `reject_status` | `503` | status of the rejection |
//! | `reject_body` | `circuit breaker is <state>` | body of the rejection (text/plain) |
//! | `retry_after` | `true` | send `Retry-After` (seconds until the wait in open is over; 1 in half-open) |
//! | `state_ttl_ms` | `3600000` | an idle breaker's record expires after this (0: never); never before its waits are over |
//!
//! See README.md for the semantics in detail (retries, keys, dry-run,
//! failure of the state backend).

mod config;
// Part of the module's API is used only by the root-workspace tests
// (tests/e2e/breaker.rs includes the file).
#[allow(dead_code)]
mod machine;

use std::time::{SystemTime, UNIX_EPOCH};

use ficus_sdk::prelude::*;
use ficus_sdk::{log, metrics, state};

use config::{Breaker, KeyKind, Mode};
use machine::{
    Acquired, Attempt, Clock, Decision, ErrorKind, Machine, Outcome, Permit, State, Store,
    StoreError, Stored, Transition,
};

/// The request-context key carrying the permit from on-request to
/// on-response: `<target index>|<permit>`, or `d` (dry-run per endpoint:
/// decided when the response arrives).
const CONTEXT: &str = "cb";

/// The host `state` capability as a [`Store`].
struct HostStore;

impl Store for HostStore {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        state::get(key)
            .map(|e| {
                e.map(|e| Stored {
                    value: e.value,
                    revision: e.revision,
                })
            })
            .map_err(|e| StoreError(format!("{e:?}")))
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        state::compare_and_set(key, expected, value, ttl_ms)
            .map_err(|e| StoreError(format!("{e:?}")))
    }
}

/// The WASI wall clock (shared meaning across gateways, unlike a monotonic
/// clock); needs the `clock` grant.
struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        wall_ms()
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One breaker this step may use: its name (metric label) and state key.
struct Target {
    name: String,
    key: String,
    /// For `key = "endpoint"`: the endpoint address.
    endpoint: Option<String>,
    /// Last gauge value this instance set, and when.
    gauge: Option<(f64, u64)>,
}

impl Target {
    fn new(kind: KeyKind, name: String, endpoint: Option<String>) -> Target {
        Target {
            key: format!("cb/{}/{name}", kind.as_str()),
            name,
            endpoint,
            gauge: None,
        }
    }
}

struct CircuitBreaker {
    cfg: Breaker,
    /// Empty until the first request for `key = "route"` without `name`
    /// (the route name is known only then; instances are per route).
    targets: Vec<Target>,
    /// Rotation over endpoints (per instance).
    next: usize,
    /// When this instance last logged a state-backend error.
    last_error_log_ms: u64,
}

/// How often the gauge is re-asserted even when unchanged, so that an
/// instance whose last observation was stale does not leave it wrong.
const GAUGE_REFRESH_MS: u64 = 1000;

/// Earliest plausible wall clock (2001-09-09): below it the clock is frozen
/// (no `clock` grant).
const PLAUSIBLE_NOW_MS: u64 = 1_000_000_000_000;

impl CircuitBreaker {
    fn dry_run(&self) -> bool {
        self.cfg.mode == Mode::DryRun
    }

    fn labels<'a>(&'a self, target: &'a Target) -> [(&'a str, &'a str); 2] {
        [("breaker", &target.name), ("key", self.cfg.key.as_str())]
    }

    /// The breakers of this step (built on first use).
    fn ensure_targets(&mut self, req: &Request) {
        if !self.targets.is_empty() {
            return;
        }
        let c = &self.cfg;
        self.targets = match c.key {
            KeyKind::Route => {
                let name = c.name.clone().unwrap_or_else(|| req.route());
                vec![Target::new(KeyKind::Route, name, None)]
            }
            KeyKind::Upstream => {
                let name = c
                    .name
                    .clone()
                    .or_else(|| c.upstream.clone())
                    .unwrap_or_default();
                vec![Target::new(KeyKind::Upstream, name, None)]
            }
            KeyKind::Endpoint => {
                let base = c
                    .name
                    .clone()
                    .or_else(|| c.upstream.clone())
                    .unwrap_or_default();
                c.endpoints
                    .iter()
                    .map(|e| Target::new(KeyKind::Endpoint, format!("{base}/{e}"), Some(e.clone())))
                    .collect()
            }
        };
    }

    fn count(&self, target: &Target, outcome: &str) {
        let [b, k] = self.labels(target);
        let _ = metrics::counter_add(
            "circuit_breaker_calls_total",
            1,
            &[b, k, ("outcome", outcome)],
        );
    }

    fn set_gauge(&mut self, index: usize, value: f64, force: bool) {
        let now = wall_ms();
        let target = &self.targets[index];
        let fresh = target
            .gauge
            .is_some_and(|(v, at)| v == value && now.saturating_sub(at) < GAUGE_REFRESH_MS);
        if fresh && !force {
            return;
        }
        let [b, k] = self.labels(target);
        let _ = metrics::gauge_set("circuit_breaker_state", value, &[b, k]);
        self.targets[index].gauge = Some((value, now));
    }

    fn transitioned(&mut self, index: usize, t: &Transition) {
        let target = &self.targets[index];
        let [b, k] = self.labels(target);
        let _ = metrics::counter_add(
            "circuit_breaker_transitions_total",
            1,
            &[b, k, ("from", t.from.as_str()), ("to", t.to.as_str())],
        );
        let message = format!(
            "{}circuit breaker {:?} ({}): {t}",
            if self.dry_run() { "[dry-run] " } else { "" },
            target.name,
            self.cfg.key.as_str()
        );
        if t.to == State::Open {
            log::warn(message);
        } else {
            log::info(message);
        }
        self.set_gauge(index, t.to.gauge(), true);
    }

    fn state_error(&mut self, index: usize, op: &str, err: &StoreError) {
        let target = &self.targets[index];
        let [b, k] = self.labels(target);
        let _ = metrics::counter_add("circuit_breaker_state_errors_total", 1, &[b, k]);
        let now = wall_ms();
        if now.saturating_sub(self.last_error_log_ms) >= 10_000 {
            self.last_error_log_ms = now;
            log::warn(format!(
                "circuit breaker {:?}: state {op} failed, letting the request through \
                 without recording it: {err}",
                target.name
            ));
        }
    }

    /// Ask the breaker at `index` for a permit; state errors let the request
    /// through (`None`).
    fn acquire(&mut self, index: usize) -> Option<Acquired> {
        let store = HostStore;
        let clock = WallClock;
        let result =
            Machine::new(&self.cfg.settings, &store, &clock).acquire(&self.targets[index].key);
        match result {
            Ok(acquired) => {
                if let Some(t) = &acquired.transition {
                    self.transitioned(index, t);
                } else {
                    self.set_gauge(index, acquired.state.gauge(), false);
                }
                Some(acquired)
            }
            Err(e) => {
                self.state_error(index, "read", &e);
                None
            }
        }
    }

    fn record(&mut self, index: usize, permit: Permit, outcome: Outcome) {
        let store = HostStore;
        let clock = WallClock;
        let result = Machine::new(&self.cfg.settings, &store, &clock).record(
            &self.targets[index].key,
            permit,
            outcome,
        );
        self.count(&self.targets[index], outcome.as_str());
        match result {
            Ok(recorded) => {
                if let Some(t) = &recorded.transition {
                    self.transitioned(index, t);
                }
            }
            Err(e) => self.state_error(index, "update", &e),
        }
    }

    fn reject(&self, state_name: &str, retry_after_ms: u64) -> RequestAction {
        let body = match &self.cfg.reject_body {
            Some(body) => body.clone(),
            None => format!("circuit breaker is {state_name}\n"),
        };
        let mut spec = ResponseSpec::text(self.cfg.reject_status, body)
            .header("x-circuit-breaker", state_name);
        if self.cfg.retry_after {
            spec = spec.header(
                "retry-after",
                machine::retry_after_secs(retry_after_ms).to_string(),
            );
        }
        RequestAction::Respond(spec)
    }

    /// Normal and dry-run modes, one breaker (route or upstream key).
    fn on_request_single(&mut self, req: &Request) -> RequestAction {
        let Some(acquired) = self.acquire(0) else {
            return RequestAction::Continue;
        };
        match acquired.decision {
            Decision::Permitted(permit) => {
                req.set_context(CONTEXT, &format!("0|{}", permit.encode()));
                RequestAction::Continue
            }
            Decision::Rejected { retry_after_ms } => {
                if self.dry_run() {
                    self.count(&self.targets[0], "dry_run_not_permitted");
                    RequestAction::Continue
                } else {
                    self.count(&self.targets[0], "not_permitted");
                    self.reject(acquired.state.as_str(), retry_after_ms)
                }
            }
        }
    }

    /// Normal mode with `key = "endpoint"`: route to the first endpoint (in
    /// rotation) whose breaker admits the request.
    fn on_request_endpoint(&mut self, req: &Request) -> RequestAction {
        let n = self.targets.len();
        let start = self.next % n;
        self.next = self.next.wrapping_add(1);
        let mut soonest: Option<(u64, State)> = None;
        for step in 0..n {
            let index = (start + step) % n;
            let Some(acquired) = self.acquire(index) else {
                // The state backend failed: let the host balance as usual.
                return RequestAction::Continue;
            };
            match acquired.decision {
                Decision::Permitted(permit) => {
                    req.set_context(CONTEXT, &format!("{index}|{}", permit.encode()));
                    let cluster = self.cfg.upstream.clone().unwrap_or_default();
                    let endpoint = self.targets[index].endpoint.clone().unwrap_or_default();
                    return RequestAction::Route(
                        UpstreamTarget::new(cluster).endpoint_key(endpoint),
                    );
                }
                Decision::Rejected { retry_after_ms } => {
                    if soonest.is_none_or(|(ms, _)| retry_after_ms < ms) {
                        soonest = Some((retry_after_ms, acquired.state));
                    }
                }
            }
        }
        let (retry_after_ms, state) = soonest.unwrap_or((1000, State::Open));
        for index in 0..n {
            self.count(&self.targets[index], "not_permitted");
        }
        self.reject(state.as_str(), retry_after_ms)
    }

    /// Dry-run with `key = "endpoint"`: the endpoint is known only now, so
    /// admission is decided (and immediately recorded) at response time.
    fn on_response_endpoint_dry_run(&mut self, attempt: &AttemptInfo, outcome: Outcome) {
        let Some(endpoint) = attempt.endpoint.as_deref() else {
            return;
        };
        let Some(index) = self
            .targets
            .iter()
            .position(|t| t.endpoint.as_deref() == Some(endpoint))
        else {
            return;
        };
        let Some(acquired) = self.acquire(index) else {
            return;
        };
        match acquired.decision {
            Decision::Permitted(permit) => self.record(index, permit, outcome),
            Decision::Rejected { .. } => {
                self.count(&self.targets[index], "dry_run_not_permitted");
            }
        }
    }

    fn classify(&self, resp: &Response, attempt: &AttemptInfo) -> Outcome {
        if let (Some(want), Some(got)) = (&self.cfg.upstream, &attempt.cluster) {
            if want != got {
                // Another filter sent this request elsewhere: not our upstream.
                return Outcome::Ignored;
            }
        }
        self.cfg.policy.classify(&Attempt {
            status: resp.status(),
            error: attempt.error.map(|e| match e {
                UpstreamError::ConnectFailed => ErrorKind::ConnectFailed,
                UpstreamError::ConnectTimeout => ErrorKind::ConnectTimeout,
                UpstreamError::Timeout => ErrorKind::Timeout,
                UpstreamError::Reset => ErrorKind::Reset,
                UpstreamError::Protocol => ErrorKind::Protocol,
                UpstreamError::NoEndpoint => ErrorKind::NoEndpoint,
            }),
            latency_us: attempt.latency_us,
            local: attempt.local,
        })
    }
}

impl Filter for CircuitBreaker {
    fn configure(config: &str) -> Result<Self, String> {
        let cfg = config::parse(config)?;
        if matches!(cfg.mode, Mode::Normal | Mode::DryRun) && wall_ms() < PLAUSIBLE_NOW_MS {
            return Err(
                "circuit-breaker: the wall clock reads the Unix epoch: grant the plugin \
                 \"clock\" (grants = [\"state\", \"clock\", \"metrics\", \"log\"])"
                    .into(),
            );
        }
        // Desynchronise the endpoint rotation of instances created together.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or(0);
        Ok(CircuitBreaker {
            cfg,
            targets: Vec::new(),
            next: seed,
            last_error_log_ms: 0,
        })
    }

    fn hooks(&self) -> HookSet {
        match self.cfg.mode {
            Mode::Normal | Mode::DryRun => HookSet::ON_REQUEST | HookSet::ON_RESPONSE,
            Mode::ForcedOpen | Mode::Disabled => HookSet::ON_REQUEST,
        }
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        self.ensure_targets(req);
        match self.cfg.mode {
            Mode::ForcedOpen => {
                for index in 0..self.targets.len() {
                    self.set_gauge(index, 4.0, false);
                    self.count(&self.targets[index], "not_permitted");
                }
                self.reject("forced-open", self.cfg.settings.wait_in_open_ms)
            }
            Mode::Disabled => {
                for index in 0..self.targets.len() {
                    self.set_gauge(index, 3.0, false);
                }
                RequestAction::Continue
            }
            Mode::DryRun if self.cfg.key == KeyKind::Endpoint => {
                req.set_context(CONTEXT, "d");
                RequestAction::Continue
            }
            Mode::Normal if self.cfg.key == KeyKind::Endpoint => self.on_request_endpoint(req),
            Mode::Normal | Mode::DryRun => self.on_request_single(req),
        }
    }

    fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
        attempt: &AttemptInfo,
    ) -> ResponseAction {
        let Some(context) = req.context(CONTEXT) else {
            return ResponseAction::Continue;
        };
        self.ensure_targets(req);
        let mut outcome = self.classify(resp, attempt);
        if context == "d" {
            self.on_response_endpoint_dry_run(attempt, outcome);
            return ResponseAction::Continue;
        }
        let Some((index, permit)) = context.split_once('|').and_then(|(i, p)| {
            let index: usize = i.parse().ok()?;
            Some((index, Permit::decode(p)?))
        }) else {
            return ResponseAction::Continue;
        };
        if index >= self.targets.len() {
            return ResponseAction::Continue;
        }
        if let Some(endpoint) = &self.targets[index].endpoint {
            if attempt.endpoint.as_deref() != Some(endpoint.as_str()) {
                outcome = Outcome::Ignored;
            }
        }
        self.record(index, permit, outcome);
        if permit.probe {
            // A probe counts once: later attempts of this request (retries
            // asked for by another filter) are not probes.
            req.set_context(CONTEXT, "");
        }
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(CircuitBreaker);
