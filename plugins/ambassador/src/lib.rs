//! `ambassador`: the go-between that takes retries, timeouts, auth, request
//! ids, access logging and metrics off the services behind (and in front of)
//! the gateway — the resilience features of an Envoy route, as a filter.
//!
//! What it does, per request:
//!
//! * **on-request** — remembers the start time (request context), removes
//!   `strip.request` headers, sets auth headers (`auth.bearer_token`,
//!   `auth.api_key`), propagates the request id header or generates a
//!   random UUID, and sets the first attempt's timeout
//!   (`min(retry.per_try_timeout_ms, retry.deadline_ms)`).
//! * **on-response**, for every attempt — records attempt metrics, then
//!   decides whether to retry: the attempt failed with a `retry.on`
//!   condition (`connect-failure`, `reset`, `timeout`, `protocol`) or answered
//!   a `retry.statuses` status (codes or classes like `"5xx"`); the request
//!   passes the idempotency gate; `retry.attempts` is not reached; the
//!   delay (capped exponential backoff with full jitter, or the upstream's
//!   `Retry-After`) fits in `retry.deadline_ms`; and the retry budget of the
//!   current one-second window is not spent. A retry sets the next attempt's
//!   timeout to what the deadline leaves. On the final response it strips
//!   `strip.response` headers, echoes the request id, and writes one access
//!   log line and the request metrics.
//!
//! ## Grants and placement
//!
//! The component imports `log`, `metrics` and `state` and reads the wall
//! clock, so its plugin table needs
//! `grants = ["log", "metrics", "state", "clock"]`. Without `clock` the
//! sandbox's clock is frozen at the Unix epoch and `configure` fails saying
//! so (deadlines, budget windows, `Retry-After` dates and latencies need it).
//!
//! The route's `max_attempts` is the hard cap: the gateway ignores a retry
//! once it made `max_attempts` attempts, without telling the plugin. Set
//! `retry.attempts` ≤ the route's `max_attempts` (the plugin cannot read it);
//! with more, the last retry the plugin asks for is silently dropped (its
//! access-log line and request metrics are then missing). Put the ambassador
//! first in the pipeline, so that its `on-response` sees the response last.
//!
//! ## Configuration (every key optional; unknown keys are rejected)
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `retry.attempts` | `3` | total attempts, first included; 1..=10, ≤ route `max_attempts` |
//! | `retry.on` | `["connect-failure", "reset", "timeout"]` | failures to retry; also `"protocol"` |
//! | `retry.statuses` | `[500, 502, 503, 504]` | statuses to retry: codes (100..=599) or classes `"1xx"`..`"5xx"` |
//! | `retry.backoff_base_ms` | `25` | backoff base, 1..=60000 |
//! | `retry.backoff_max_ms` | `250` (or the base if larger) | backoff cap, 1..=60000, ≥ base |
//! | `retry.per_try_timeout_ms` | none (cluster `timeout_ms`) | timeout of each attempt, 1..=3600000 |
//! | `retry.deadline_ms` | none | overall deadline for all attempts and delays, 1..=3600000 |
//! | `retry.retry_after` | `true` | wait as long as a retryable response's `Retry-After` asks |
//! | `retry.max_retry_after_ms` | `10000` | longest `Retry-After` honoured; longer: no retry; 0..=60000 |
//! | `idempotency.enabled` | `true` | retry only idempotent requests |
//! | `idempotency.methods` | `["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]` | idempotent methods |
//! | `idempotency.header` | `"idempotency-key"` | a request with this header is retryable |
//! | `idempotency.retry_unsent` | `true` | connect failures (request never sent) are retryable for any method |
//! | `budget.enabled` | `true` | apply a retry budget |
//! | `budget.ratio` | `0.2` | retries per window ≤ ratio × requests; 0..=1 |
//! | `budget.min_per_second` | `10` | …or this many, if more; 0..=1000000 |
//! | `budget.scope` | `"cluster"` | counters shared per `"cluster"`, `"route"` or `"global"` |
//! | `auth.bearer_token` | none | set `authorization: Bearer <token>` |
//! | `auth.api_key.header` | `"x-api-key"` | API key header name |
//! | `auth.api_key.value` | (required with `api_key`) | API key |
//! | `auth.overwrite` | `true` | replace auth headers the client sent (else keep them) |
//! | `request_id.enabled` | `true` | propagate / generate a request id |
//! | `request_id.header` | `"x-request-id"` | its header |
//! | `request_id.generate` | `true` | generate a UUID v4 when missing |
//! | `request_id.response` | `true` | echo it in the response |
//! | `strip.request` | `[]` | request headers removed before the upstream |
//! | `strip.response` | `[]` | response headers removed before the client |
//! | `access_log` | `true` | one `info` line per request |
//! | `metrics` | `true` | the `ambassador_*` metrics |
//!
//! The full reference, with the metrics and the log line, is in the
//! plugin's `README.md`. The pure logic lives in `src/logic.rs` (no host
//! imports; unit-tested natively, and also from the root workspace's e2e
//! test binary, which includes that file).

mod logic;

use ficus_sdk::prelude::*;
use ficus_sdk::{log, metrics, state};
use logic::{
    budget_keys, outcome_label, AccessLog, Budget, Config, Decision, Denial, Facts, Failure,
    Outcome, RawConfig, Scope, BUDGET_KEY_TTL_MS,
};

/// Request-context keys (per request and per pipeline position).
const CTX_STARTED: &str = "t0";
const CTX_REQUEST_ID: &str = "rid";
const CTX_RETRIED_ON: &str = "why";
const CTX_COUNTED: &str = "counted";

/// Longest request id propagated as is; a longer one is replaced.
const MAX_REQUEST_ID_LEN: usize = 200;

const CLOCK_MESSAGE: &str = "ambassador: the clock is frozen: add \"clock\" to this plugin's \
     grants (grants = [\"log\", \"metrics\", \"state\", \"clock\"]); deadlines, retry-budget \
     windows, Retry-After dates and latencies read the wall clock";

/// Wall-clock milliseconds since the Unix epoch (0 when the clock is not
/// granted). The wall clock, not the monotonic one: a request's `on-request`
/// and `on-response` may run in different instances, and each instance's
/// monotonic clock counts from its own creation.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_u64() -> u64 {
    wasip2::random::random::get_random_u64()
}

fn failure_of(error: UpstreamError) -> Failure {
    match error {
        UpstreamError::ConnectFailed => Failure::ConnectFailed,
        UpstreamError::ConnectTimeout => Failure::ConnectTimeout,
        UpstreamError::Timeout => Failure::Timeout,
        UpstreamError::Reset => Failure::Reset,
        UpstreamError::Protocol => Failure::Protocol,
        UpstreamError::NoEndpoint => Failure::NoEndpoint,
    }
}

struct Ambassador {
    config: Config,
    /// Whether the last state error was logged (log one per burst, not one
    /// per request).
    state_error_logged: bool,
}

impl Ambassador {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) {
        if self.config.metrics {
            let _ = metrics::counter_add(name, 1, labels);
        }
    }

    fn state_failed(&mut self, cluster: &str, err: &ficus_sdk::StateError) {
        self.counter("ambassador_budget_errors_total", &[("cluster", cluster)]);
        if !self.state_error_logged {
            self.state_error_logged = true;
            log::warn(format!(
                "retry budget unavailable ({err}); retries are allowed without a budget until the \
                 state store answers again"
            ));
        }
    }

    /// Count the request in its budget window (once per request).
    fn count_request(&mut self, req: &Request, scope: &str, now: u64) {
        if req.context(CTX_COUNTED).is_some() {
            return;
        }
        req.set_context(CTX_COUNTED, "1");
        let (requests, _) = budget_keys(scope, now);
        match state::increment(&requests, 1, Some(BUDGET_KEY_TTL_MS)) {
            Ok(_) => self.state_error_logged = false,
            Err(err) => self.state_failed(scope, &err),
        }
    }

    /// Take one retry from the budget of the current window; false when it
    /// is spent. State errors allow the retry (the attempts cap still holds).
    fn spend_budget(&mut self, budget: &Budget, scope: &str, cluster: &str, now: u64) -> bool {
        let (requests_key, retries_key) = budget_keys(scope, now);
        let ttl = Some(BUDGET_KEY_TTL_MS);
        let counts = state::increment(&requests_key, 0, ttl)
            .and_then(|requests| Ok((requests, state::increment(&retries_key, 1, ttl)?)));
        match counts {
            Ok((requests, retries)) => {
                if budget.allows(requests, retries) {
                    true
                } else {
                    let _ = state::increment(&retries_key, -1, ttl);
                    false
                }
            }
            Err(err) => {
                self.state_failed(cluster, &err);
                true
            }
        }
    }
}

impl Filter for Ambassador {
    fn configure(config: &str) -> Result<Self, String> {
        let raw: RawConfig = ficus_sdk::config(config)?;
        let config = Config::from_raw(raw)?;
        if now_ms() == 0 {
            return Err(CLOCK_MESSAGE.to_string());
        }
        Ok(Ambassador {
            config,
            state_error_logged: false,
        })
    }

    fn on_request(&mut self, req: &Request) -> RequestAction {
        let c = &self.config;
        req.set_context(CTX_STARTED, &now_ms().to_string());
        for name in &c.strip_request {
            req.remove_header(name);
        }
        for (name, value) in &c.auth_headers {
            if c.auth_overwrite || !req.has_header(name) {
                let _ = req.set_header_str(name, value);
            }
        }
        if let Some(rid) = &c.request_id {
            let id = match req.header_str(&rid.header) {
                Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN => Some(id),
                _ if rid.generate => {
                    let id = logic::request_id(random_u64(), random_u64());
                    let _ = req.set_header_str(&rid.header, &id);
                    Some(id)
                }
                _ => None,
            };
            if let Some(id) = id {
                req.set_context(CTX_REQUEST_ID, &id);
            }
        }
        if let Some(ms) = c.first_attempt_timeout_ms() {
            req.set_attempt_timeout(ms);
        }
        RequestAction::Continue
    }

    fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
        attempt: &AttemptInfo,
    ) -> ResponseAction {
        let now = now_ms();
        let started = req
            .context(CTX_STARTED)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(now);
        let elapsed = now.saturating_sub(started);
        let failure = attempt.error.map(failure_of);
        let status = resp.status();
        let cluster = attempt.cluster.as_deref().unwrap_or("-");

        if !attempt.local {
            self.counter(
                "ambassador_attempts_total",
                &[
                    ("cluster", cluster),
                    ("outcome", outcome_label(status, failure)),
                ],
            );
            if self.config.metrics {
                let _ = metrics::histogram_observe(
                    "ambassador_attempt_duration_seconds",
                    attempt.latency_us as f64 / 1e6,
                    &[("cluster", cluster)],
                );
            }
        }

        // The budget's counter group, when a budget applies.
        let budget = self.config.budget.clone().filter(|_| !attempt.local);
        let scope = budget.as_ref().map(|b| {
            let route = if b.scope == Scope::Route {
                req.route()
            } else {
                String::new()
            };
            b.scope_name(attempt.cluster.as_deref(), &route)
        });
        if let Some(scope) = &scope {
            self.count_request(req, scope, now);
        }

        let method = req.method();
        let retry_after = resp.header_str("retry-after");
        let outcome = Outcome {
            attempt: attempt.number,
            status,
            failure,
            local: attempt.local,
            retry_after: retry_after.as_deref(),
        };
        let mut decision = Decision::Done;
        if self.config.retry_reason(&outcome).is_some() {
            let facts = Facts {
                method: &method,
                has_idempotency_key: req.has_header(&self.config.idempotency.header),
                elapsed_ms: elapsed,
                now_unix_ms: now,
            };
            decision = self.config.decide(&outcome, &facts, random_u64());
        }
        if let (Decision::Retry { reason, .. }, Some(b), Some(scope)) = (decision, &budget, &scope)
        {
            if !self.spend_budget(b, scope, cluster, now) {
                decision = Decision::Denied {
                    reason,
                    denial: Denial::Budget,
                };
            }
        }

        match decision {
            Decision::Retry {
                reason,
                delay_ms,
                timeout_ms,
            } => {
                if let Some(ms) = timeout_ms {
                    req.set_attempt_timeout(ms);
                }
                let reason = reason.to_string();
                let retried_on = match req.context(CTX_RETRIED_ON) {
                    Some(before) => format!("{before},{reason}"),
                    None => reason.clone(),
                };
                req.set_context(CTX_RETRIED_ON, &retried_on);
                self.counter(
                    "ambassador_retries_total",
                    &[("cluster", cluster), ("reason", &reason)],
                );
                if log::enabled(log::Level::Debug) {
                    log::debug(format!(
                        "retrying {method} {} (attempt {} failed: {reason}) in {delay_ms} ms",
                        req.path(),
                        attempt.number
                    ));
                }
                return ResponseAction::Retry(delay_ms);
            }
            Decision::Denied { denial, .. } => {
                self.counter(
                    "ambassador_retries_denied_total",
                    &[("cluster", cluster), ("reason", denial.as_str())],
                );
            }
            Decision::Done => {}
        }

        // The final response.
        let c = &self.config;
        for name in &c.strip_response {
            resp.remove_header(name);
        }
        let request_id = req.context(CTX_REQUEST_ID);
        if let (Some(rid), Some(id)) = (&c.request_id, &request_id) {
            if rid.response {
                let _ = resp.set_header_str(&rid.header, id);
            }
        }
        self.counter(
            "ambassador_requests_total",
            &[("cluster", cluster), ("class", outcome_label(status, None))],
        );
        if c.access_log {
            let retried_on = req.context(CTX_RETRIED_ON).unwrap_or_default();
            let denied = match decision {
                Decision::Denied { denial, .. } => Some(denial),
                _ => None,
            };
            let line = AccessLog {
                method: &method,
                path: &req.path(),
                status,
                attempts: attempt.number,
                latency_ms: elapsed,
                upstream: attempt.cluster.as_deref(),
                endpoint: attempt.endpoint.as_deref(),
                error: failure,
                request_id: request_id.as_deref(),
                retried_on: &retried_on,
                denied,
            };
            log::info(line.to_string());
        }
        ResponseAction::Continue
    }
}

ficus_sdk::export_filter!(Ambassador);
