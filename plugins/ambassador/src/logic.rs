//! The ambassador's pure logic: the configuration and its validation, the
//! retry decision (conditions, idempotency gate, attempts, `Retry-After`,
//! deadline), capped exponential backoff with full jitter, `Retry-After`
//! parsing (delta-seconds and HTTP-date), the retry-budget arithmetic, request
//! ids and the access-log line.
//!
//! Nothing here calls the host: time and randomness come in as arguments, so
//! this module compiles and is unit-tested natively. Besides this crate's own
//! `cargo test`, the root workspace's end-to-end test binary includes this
//! file (`tests/e2e/ambassador.rs`, `#[path]` module), so `cargo test
//! --workspace` runs these unit tests too. Keep it free of `ficus_sdk` and
//! `wasip2`: it may use only `std`, `serde` and `serde_json`.

use std::fmt;

use serde::Deserialize;

/// Defaults, as documented in the plugin's README and module doc.
pub(crate) mod defaults {
    /// `retry.attempts`: total attempts, the first one included.
    pub(crate) const ATTEMPTS: u32 = 3;
    /// `retry.on`.
    pub(crate) const RETRY_ON: [&str; 3] = ["connect-failure", "reset", "timeout"];
    /// `retry.statuses`.
    pub(crate) const STATUSES: [u16; 4] = [500, 502, 503, 504];
    /// `retry.backoff_base_ms`.
    pub(crate) const BACKOFF_BASE_MS: u32 = 25;
    /// `retry.backoff_max_ms`.
    pub(crate) const BACKOFF_MAX_MS: u32 = 250;
    /// `retry.max_retry_after_ms`.
    pub(crate) const MAX_RETRY_AFTER_MS: u32 = 10_000;
    /// `idempotency.methods`.
    pub(crate) const IDEMPOTENT_METHODS: [&str; 5] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"];
    /// `idempotency.header`.
    pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";
    /// `budget.ratio`.
    pub(crate) const BUDGET_RATIO: f64 = 0.2;
    /// `budget.min_per_second`.
    pub(crate) const BUDGET_MIN_PER_SECOND: u32 = 10;
    /// `request_id.header`.
    pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";
    /// `auth.api_key.header`.
    pub(crate) const API_KEY_HEADER: &str = "x-api-key";
}

/// Largest `retry.attempts`: the gateway caps a route's `max_attempts` at 10.
pub(crate) const MAX_ATTEMPTS: u32 = 10;
/// The host caps a retry delay at 60 s (`host/src/pipeline/mod.rs`), so no
/// delay setting may exceed it.
pub(crate) const MAX_DELAY_MS: u32 = 60_000;
/// Largest per-try timeout and deadline: one hour.
pub(crate) const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// Lifetime of a budget window's counters in the state store. Windows are
/// one second long and named by their second, so this only garbage-collects.
pub(crate) const BUDGET_KEY_TTL_MS: u64 = 5_000;

/// Headers the gateway manages; plugins cannot set or remove them.
const HOST_MANAGED: [&str; 9] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

// ---------------------------------------------------------------------------
// Raw configuration: the JSON the host passes to `configure`.
// ---------------------------------------------------------------------------

/// The per-route config as written. Every key is optional; unknown keys are
/// rejected. Numbers are read as signed/floating values so that negative and
/// out-of-range values get a message naming the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    idempotency: RawIdempotency,
    #[serde(default)]
    budget: RawBudget,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    request_id: RawRequestId,
    #[serde(default)]
    strip: RawStrip,
    access_log: Option<bool>,
    metrics: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<i64>,
    on: Option<Vec<String>>,
    statuses: Option<Vec<serde_json::Value>>,
    backoff_base_ms: Option<i64>,
    backoff_max_ms: Option<i64>,
    per_try_timeout_ms: Option<i64>,
    deadline_ms: Option<i64>,
    retry_after: Option<bool>,
    max_retry_after_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    enabled: Option<bool>,
    methods: Option<Vec<String>>,
    header: Option<String>,
    retry_unsent: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    enabled: Option<bool>,
    ratio: Option<f64>,
    min_per_second: Option<i64>,
    scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bearer_token: Option<String>,
    api_key: Option<RawApiKey>,
    overwrite: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    header: Option<String>,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequestId {
    enabled: Option<bool>,
    header: Option<String>,
    generate: Option<bool>,
    response: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrip {
    #[serde(default)]
    request: Vec<String>,
    #[serde(default)]
    response: Vec<String>,
}

// ---------------------------------------------------------------------------
// Validated configuration.
// ---------------------------------------------------------------------------

/// Why an upstream attempt produced no response (mirrors the WIT
/// `upstream-error`, which this module cannot import).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    ConnectFailed,
    ConnectTimeout,
    Timeout,
    Reset,
    Protocol,
    NoEndpoint,
}

impl Failure {
    /// The WIT (kebab-case) name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::ConnectFailed => "connect-failed",
            Failure::ConnectTimeout => "connect-timeout",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Protocol => "protocol",
            Failure::NoEndpoint => "no-endpoint",
        }
    }

    /// The request never left the gateway (the connection was not opened),
    /// so retrying it cannot duplicate a side effect.
    pub(crate) fn unsent(self) -> bool {
        matches!(
            self,
            Failure::ConnectFailed | Failure::ConnectTimeout | Failure::NoEndpoint
        )
    }
}

/// A `retry.on` condition: a kind of upstream failure worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    /// `connect-failure`: connection refused/unreachable or connect timeout.
    ConnectFailure,
    /// `reset`: connection closed or reset before a response head.
    Reset,
    /// `timeout`: no response head within the attempt's timeout.
    Timeout,
    /// `protocol`: the upstream answered with invalid HTTP.
    Protocol,
}

const CONDITIONS: [(&str, Condition); 4] = [
    ("connect-failure", Condition::ConnectFailure),
    ("reset", Condition::Reset),
    ("timeout", Condition::Timeout),
    ("protocol", Condition::Protocol),
];

impl Condition {
    fn parse(name: &str) -> Option<Condition> {
        CONDITIONS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    /// Whether this condition covers the failure. `no-endpoint` is never
    /// retried: the cluster is unknown or empty, another attempt finds the
    /// same.
    pub(crate) fn covers(self, failure: Failure) -> bool {
        matches!(
            (self, failure),
            (
                Condition::ConnectFailure,
                Failure::ConnectFailed | Failure::ConnectTimeout
            ) | (Condition::Reset, Failure::Reset)
                | (Condition::Timeout, Failure::Timeout)
                | (Condition::Protocol, Failure::Protocol)
        )
    }
}

/// A `retry.statuses` entry: one status code or a class such as `5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusMatch {
    Code(u16),
    /// The hundreds digit, 1..=5.
    Class(u16),
}

impl StatusMatch {
    pub(crate) fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(code) => status == code,
            StatusMatch::Class(class) => status / 100 == class,
        }
    }

    fn parse(at: &str, value: &serde_json::Value) -> Result<StatusMatch, String> {
        let code = |n: i64| -> Result<StatusMatch, String> {
            if (100..=599).contains(&n) {
                Ok(StatusMatch::Code(n as u16))
            } else {
                Err(format!(
                    "config.{at}: {n} is not an HTTP status code (100..=599)"
                ))
            }
        };
        match value {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(n) => code(n),
                None => Err(format!(
                    "config.{at}: {n} is not an HTTP status code (100..=599)"
                )),
            },
            serde_json::Value::String(text) => {
                let t = text.trim().to_ascii_lowercase();
                if t.len() == 3 && t.ends_with("xx") {
                    match t.as_bytes()[0] {
                        d @ b'1'..=b'5' => Ok(StatusMatch::Class(u16::from(d - b'0'))),
                        _ => Err(format!(
                            "config.{at}: unknown status class {text:?} (expected 1xx, 2xx, 3xx, \
                             4xx or 5xx)"
                        )),
                    }
                } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                    code(t.parse::<i64>().unwrap_or(-1))
                } else {
                    Err(format!(
                        "config.{at}: {text:?} is neither a status code (100..=599) nor a status \
                         class (1xx..5xx)"
                    ))
                }
            }
            other => Err(format!(
                "config.{at}: expected a status code or a status class like \"5xx\", got {other}"
            )),
        }
    }
}

/// `retry`: when and how to retry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Retry {
    pub(crate) attempts: u32,
    pub(crate) on: Vec<Condition>,
    pub(crate) statuses: Vec<StatusMatch>,
    pub(crate) backoff_base_ms: u32,
    pub(crate) backoff_max_ms: u32,
    pub(crate) per_try_timeout_ms: Option<u32>,
    pub(crate) deadline_ms: Option<u32>,
    pub(crate) retry_after: bool,
    pub(crate) max_retry_after_ms: u32,
}

/// `idempotency`: which requests may be retried.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Idempotency {
    pub(crate) enabled: bool,
    /// Uppercase.
    pub(crate) methods: Vec<String>,
    /// Lowercase.
    pub(crate) header: String,
    pub(crate) retry_unsent: bool,
}

impl Idempotency {
    /// Whether a request may be retried: the gate is off, or the method is
    /// idempotent, or the client sent an idempotency key, or (with
    /// `retry_unsent`) the failed attempt never reached the upstream.
    pub(crate) fn allows(&self, method: &str, has_key: bool, unsent: bool) -> bool {
        !self.enabled
            || has_key
            || (unsent && self.retry_unsent)
            || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// Which requests share a retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every request to the same upstream cluster (any route).
    Cluster,
    /// Every request on the same route.
    Route,
    /// Every request through any ambassador step of this plugin.
    Global,
}

/// `budget`: retries may not exceed `ratio` of the requests of a one-second
/// window, or `min_per_second` if that is more.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Budget {
    pub(crate) ratio: f64,
    pub(crate) min_per_second: u32,
    pub(crate) scope: Scope,
}

impl Budget {
    /// How many retries a window with `requests` requests allows.
    pub(crate) fn allowed(&self, requests: i64) -> u64 {
        let share = (self.ratio * requests.max(0) as f64).floor() as u64;
        share.max(u64::from(self.min_per_second))
    }

    /// Whether the `retries`-th retry of a window with `requests` requests is
    /// within the budget (`retries` counts this one).
    pub(crate) fn allows(&self, requests: i64, retries: i64) -> bool {
        retries <= 0 || (retries as u64) <= self.allowed(requests)
    }

    /// The name of the counter group this request belongs to.
    pub(crate) fn scope_name(&self, cluster: Option<&str>, route: &str) -> String {
        match self.scope {
            Scope::Cluster => format!("cluster:{}", cluster.unwrap_or("-")),
            Scope::Route => format!("route:{route}"),
            Scope::Global => "global".to_string(),
        }
    }
}

/// State keys of the request and retry counters of the one-second window
/// containing `now_unix_ms`.
pub(crate) fn budget_keys(scope: &str, now_unix_ms: u64) -> (String, String) {
    let window = now_unix_ms / 1000;
    (
        format!("budget/{scope}/{window}/requests"),
        format!("budget/{scope}/{window}/retries"),
    )
}

/// `request_id`: propagate or generate a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId {
    /// Lowercase.
    pub(crate) header: String,
    pub(crate) generate: bool,
    pub(crate) response: bool,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) retry: Retry,
    pub(crate) idempotency: Idempotency,
    pub(crate) budget: Option<Budget>,
    /// Headers to set on every request (`authorization`, API key).
    pub(crate) auth_headers: Vec<(String, String)>,
    /// Replace a value the client sent (else keep it).
    pub(crate) auth_overwrite: bool,
    pub(crate) request_id: Option<RequestId>,
    pub(crate) strip_request: Vec<String>,
    pub(crate) strip_response: Vec<String>,
    pub(crate) access_log: bool,
    pub(crate) metrics: bool,
}

impl Default for Config {
    fn default() -> Self {
        match Config::from_raw(RawConfig::default()) {
            Ok(config) => config,
            Err(message) => unreachable!("the defaults are valid: {message}"),
        }
    }
}

/// Whether `name` is an RFC 9110 token (header names, methods).
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Whether `value` is a valid header value (no control characters but tab).
pub(crate) fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn header_name(at: &str, name: &str) -> Result<String, String> {
    if !is_token(name) {
        return Err(format!("config.{at}: {name:?} is not a valid header name"));
    }
    let lower = name.to_ascii_lowercase();
    if HOST_MANAGED.contains(&lower.as_str()) {
        return Err(format!(
            "config.{at}: header {name:?} is managed by the gateway and cannot be edited"
        ));
    }
    Ok(lower)
}

fn header_value(at: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("config.{at}: must not be empty"));
    }
    if !is_header_value(value) {
        return Err(format!(
            "config.{at}: not a valid header value (control characters such as CR or LF)"
        ));
    }
    Ok(())
}

/// A number in `min..=max`, or an error naming the key.
fn ranged(at: &str, value: Option<i64>, default: u32, min: u32, max: u32) -> Result<u32, String> {
    match value {
        None => Ok(default),
        Some(v) if v >= i64::from(min) && v <= i64::from(max) => Ok(v as u32),
        Some(v) => Err(format!(
            "config.{at}: must be between {min} and {max}, got {v}"
        )),
    }
}

fn optional_ranged(at: &str, value: Option<i64>, max: u32) -> Result<Option<u32>, String> {
    value.map(|v| ranged(at, Some(v), 0, 1, max)).transpose()
}

impl Config {
    /// Validate and complete a raw config. Every error names its key, as
    /// `config.<path>: <problem>`.
    pub(crate) fn from_raw(raw: RawConfig) -> Result<Config, String> {
        let r = raw.retry;
        let attempts = ranged(
            "retry.attempts",
            r.attempts,
            defaults::ATTEMPTS,
            1,
            MAX_ATTEMPTS,
        )?;
        let on = match r.on {
            None => defaults::RETRY_ON
                .iter()
                .filter_map(|n| Condition::parse(n))
                .collect(),
            Some(names) => {
                let mut on = Vec::with_capacity(names.len());
                for (i, name) in names.iter().enumerate() {
                    match Condition::parse(name.trim()) {
                        Some(c) => on.push(c),
                        None => {
                            let hint = if name.ends_with("xx")
                                || name.bytes().all(|b| b.is_ascii_digit())
                            {
                                "; status codes and classes go in retry.statuses"
                            } else {
                                ""
                            };
                            return Err(format!(
                                "config.retry.on[{i}]: unknown retry condition {name:?} (expected \
                                 connect-failure, reset, timeout or protocol{hint})"
                            ));
                        }
                    }
                }
                on
            }
        };
        let statuses = match r.statuses {
            None => defaults::STATUSES
                .iter()
                .map(|c| StatusMatch::Code(*c))
                .collect(),
            Some(values) => values
                .iter()
                .enumerate()
                .map(|(i, v)| StatusMatch::parse(&format!("retry.statuses[{i}]"), v))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let backoff_base_ms = ranged(
            "retry.backoff_base_ms",
            r.backoff_base_ms,
            defaults::BACKOFF_BASE_MS,
            1,
            MAX_DELAY_MS,
        )?;
        let backoff_max_ms = ranged(
            "retry.backoff_max_ms",
            r.backoff_max_ms,
            defaults::BACKOFF_MAX_MS.max(backoff_base_ms),
            1,
            MAX_DELAY_MS,
        )?;
        if backoff_base_ms > backoff_max_ms {
            return Err(format!(
                "config.retry.backoff_base_ms: {backoff_base_ms} is larger than \
                 retry.backoff_max_ms ({backoff_max_ms})"
            ));
        }
        let per_try_timeout_ms = optional_ranged(
            "retry.per_try_timeout_ms",
            r.per_try_timeout_ms,
            MAX_TIMEOUT_MS,
        )?;
        let deadline_ms = optional_ranged("retry.deadline_ms", r.deadline_ms, MAX_TIMEOUT_MS)?;
        let max_retry_after_ms = ranged(
            "retry.max_retry_after_ms",
            r.max_retry_after_ms,
            defaults::MAX_RETRY_AFTER_MS,
            0,
            MAX_DELAY_MS,
        )?;
        let retry = Retry {
            attempts,
            on,
            statuses,
            backoff_base_ms,
            backoff_max_ms,
            per_try_timeout_ms,
            deadline_ms,
            retry_after: r.retry_after.unwrap_or(true),
            max_retry_after_ms,
        };

        let i = raw.idempotency;
        let methods = match i.methods {
            None => defaults::IDEMPOTENT_METHODS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            Some(methods) => {
                let mut out = Vec::with_capacity(methods.len());
                for (n, m) in methods.iter().enumerate() {
                    if !is_token(m) {
                        return Err(format!(
                            "config.idempotency.methods[{n}]: {m:?} is not a valid method"
                        ));
                    }
                    out.push(m.to_ascii_uppercase());
                }
                out
            }
        };
        let idempotency = Idempotency {
            enabled: i.enabled.unwrap_or(true),
            methods,
            header: header_name(
                "idempotency.header",
                i.header.as_deref().unwrap_or(defaults::IDEMPOTENCY_HEADER),
            )?,
            retry_unsent: i.retry_unsent.unwrap_or(true),
        };

        let b = raw.budget;
        let ratio = b.ratio.unwrap_or(defaults::BUDGET_RATIO);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!(
                "config.budget.ratio: must be a fraction between 0 and 1 (0.2 = 20 %), got {ratio}"
            ));
        }
        let min_per_second = ranged(
            "budget.min_per_second",
            b.min_per_second,
            defaults::BUDGET_MIN_PER_SECOND,
            0,
            1_000_000,
        )?;
        let scope = match b.scope.as_deref().unwrap_or("cluster") {
            "cluster" => Scope::Cluster,
            "route" => Scope::Route,
            "global" => Scope::Global,
            other => {
                return Err(format!(
                    "config.budget.scope: unknown scope {other:?} (expected cluster, route or \
                     global)"
                ))
            }
        };
        let budget = b.enabled.unwrap_or(true).then_some(Budget {
            ratio,
            min_per_second,
            scope,
        });

        let a = raw.auth;
        let mut auth_headers = Vec::new();
        if let Some(token) = &a.bearer_token {
            header_value("auth.bearer_token", token)?;
            auth_headers.push(("authorization".to_string(), format!("Bearer {token}")));
        }
        if let Some(key) = &a.api_key {
            let name = header_name(
                "auth.api_key.header",
                key.header.as_deref().unwrap_or(defaults::API_KEY_HEADER),
            )?;
            header_value("auth.api_key.value", &key.value)?;
            if auth_headers.iter().any(|(n, _)| *n == name) {
                return Err(format!(
                    "config.auth.api_key.header: {name:?} is already set by auth.bearer_token"
                ));
            }
            auth_headers.push((name, key.value.clone()));
        }

        let q = raw.request_id;
        let request_id = if q.enabled.unwrap_or(true) {
            Some(RequestId {
                header: header_name(
                    "request_id.header",
                    q.header.as_deref().unwrap_or(defaults::REQUEST_ID_HEADER),
                )?,
                generate: q.generate.unwrap_or(true),
                response: q.response.unwrap_or(true),
            })
        } else {
            None
        };

        let names = |key: &str, list: &[String]| -> Result<Vec<String>, String> {
            list.iter()
                .enumerate()
                .map(|(n, name)| header_name(&format!("{key}[{n}]"), name))
                .collect()
        };
        let strip_request = names("strip.request", &raw.strip.request)?;
        let strip_response = names("strip.response", &raw.strip.response)?;
        for (name, _) in &auth_headers {
            if strip_request.contains(name) {
                return Err(format!(
                    "config.strip.request: {name:?} is also set by auth; it would be removed \
                     before it is set"
                ));
            }
        }

        Ok(Config {
            retry,
            idempotency,
            budget,
            auth_headers,
            auth_overwrite: a.overwrite.unwrap_or(true),
            request_id,
            strip_request,
            strip_response,
            access_log: raw.access_log.unwrap_or(true),
            metrics: raw.metrics.unwrap_or(true),
        })
    }

    /// The attempt timeout to set in `on-request`: the per-try timeout, cut
    /// to the overall deadline. `None`: keep the cluster's `timeout_ms`.
    pub(crate) fn first_attempt_timeout_ms(&self) -> Option<u32> {
        match (self.retry.per_try_timeout_ms, self.retry.deadline_ms) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        }
    }

    /// Why this outcome is worth retrying, if it is: an upstream failure
    /// covered by `retry.on`, or a response status in `retry.statuses`.
    /// Failures are judged by `retry.on` only (not by the gateway's 502/504
    /// that stands for them); local responses never.
    pub(crate) fn retry_reason(&self, o: &Outcome<'_>) -> Option<Reason> {
        if o.local {
            return None;
        }
        match o.failure {
            Some(f) => self
                .retry
                .on
                .iter()
                .any(|c| c.covers(f))
                .then_some(Reason::Failure(f)),
            None => self
                .retry
                .statuses
                .iter()
                .any(|s| s.matches(o.status))
                .then_some(Reason::Status(o.status)),
        }
    }

    /// Decide what to do with an attempt's outcome (before the budget, which
    /// needs the state store).
    pub(crate) fn decide(&self, o: &Outcome<'_>, facts: &Facts<'_>, random: u64) -> Decision {
        let Some(reason) = self.retry_reason(o) else {
            return Decision::Done;
        };
        let denied = |denial| Decision::Denied { reason, denial };
        let unsent = o.failure.is_some_and(Failure::unsent);
        if !self
            .idempotency
            .allows(facts.method, facts.has_idempotency_key, unsent)
        {
            return denied(Denial::NotIdempotent);
        }
        if o.attempt >= self.retry.attempts {
            return denied(Denial::Attempts);
        }
        let retry_after = o
            .retry_after
            .filter(|_| self.retry.retry_after && o.failure.is_none())
            .and_then(|v| parse_retry_after(v, facts.now_unix_ms));
        let delay_ms = match retry_after {
            Some(ms) if ms > u64::from(self.retry.max_retry_after_ms) => {
                return denied(Denial::RetryAfter)
            }
            Some(ms) => ms as u32,
            None => backoff_delay_ms(
                o.attempt,
                self.retry.backoff_base_ms,
                self.retry.backoff_max_ms,
                random,
            ),
        };
        let timeout_ms = match self.retry.deadline_ms {
            Some(deadline) => {
                let remaining = u64::from(deadline).saturating_sub(facts.elapsed_ms);
                if u64::from(delay_ms) >= remaining {
                    return denied(Denial::Deadline);
                }
                // remaining <= deadline, a u32.
                let left = (remaining - u64::from(delay_ms)) as u32;
                Some(self.retry.per_try_timeout_ms.map_or(left, |t| t.min(left)))
            }
            // The per-try timeout set in on-request still applies.
            None => None,
        };
        Decision::Retry {
            reason,
            delay_ms,
            timeout_ms,
        }
    }
}

// ---------------------------------------------------------------------------
// The retry decision.
// ---------------------------------------------------------------------------

/// What an attempt produced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome<'a> {
    /// 1 for the first attempt.
    pub(crate) attempt: u32,
    pub(crate) status: u16,
    pub(crate) failure: Option<Failure>,
    /// Produced by a plugin or handler, not an upstream: never retried.
    pub(crate) local: bool,
    /// The response's `Retry-After` header.
    pub(crate) retry_after: Option<&'a str>,
}

/// What is known about the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    pub(crate) method: &'a str,
    pub(crate) has_idempotency_key: bool,
    /// Since `on-request`.
    pub(crate) elapsed_ms: u64,
    /// Wall clock (for `Retry-After` dates).
    pub(crate) now_unix_ms: u64,
}

/// Why a response is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Failure(Failure),
    Status(u16),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Failure(failure) => f.write_str(failure.as_str()),
            Reason::Status(status) => write!(f, "{status}"),
        }
    }
}

/// Why a retryable response is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    /// The idempotency gate: the method is not idempotent and there is no
    /// idempotency key.
    NotIdempotent,
    /// `retry.attempts` reached.
    Attempts,
    /// `Retry-After` asks for more than `retry.max_retry_after_ms`.
    RetryAfter,
    /// The delay would reach past `retry.deadline_ms`.
    Deadline,
    /// The retry budget of the window is spent.
    Budget,
}

impl Denial {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Denial::NotIdempotent => "not-idempotent",
            Denial::Attempts => "attempts",
            Denial::RetryAfter => "retry-after",
            Denial::Deadline => "deadline",
            Denial::Budget => "budget",
        }
    }
}

/// The decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Keep the response: it is fine, or not a retry condition.
    Done,
    /// Retryable, but not retried.
    Denied { reason: Reason, denial: Denial },
    /// Retry after `delay_ms`; set the next attempt's timeout if given.
    Retry {
        reason: Reason,
        delay_ms: u32,
        timeout_ms: Option<u32>,
    },
}

/// The backoff cap before retry number `retry` (1 for the first retry):
/// `min(max, base * 2^(retry-1))`.
pub(crate) fn backoff_cap_ms(retry: u32, base_ms: u32, max_ms: u32) -> u32 {
    let shift = retry.saturating_sub(1).min(32);
    let cap = u64::from(base_ms) << shift;
    cap.min(u64::from(max_ms)) as u32
}

/// Full jitter: a delay uniform in `0..=cap` drawn from `random`.
pub(crate) fn backoff_delay_ms(retry: u32, base_ms: u32, max_ms: u32, random: u64) -> u32 {
    let cap = backoff_cap_ms(retry, base_ms, max_ms);
    (random % (u64::from(cap) + 1)) as u32
}

// ---------------------------------------------------------------------------
// Retry-After.
// ---------------------------------------------------------------------------

/// The wait a `Retry-After` value asks for, in milliseconds: delta-seconds
/// (`120`) or an HTTP-date (in the past: 0). `None` when it is neither.
pub(crate) fn parse_retry_after(value: &str, now_unix_ms: u64) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit: a very long wait.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(secs.saturating_mul(1000));
    }
    let at = parse_http_date(value)?;
    Some(at.saturating_mul(1000).saturating_sub(now_unix_ms))
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn month(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .map(|i| i as u32 + 1)
}

fn number(text: &str, digits: std::ops::RangeInclusive<usize>) -> Option<u32> {
    if !digits.contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn clock_time(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(':');
    let h = number(parts.next()?, 2..=2)?;
    let m = number(parts.next()?, 2..=2)?;
    let s = number(parts.next()?, 2..=2)?;
    if parts.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some((h, m, s.min(59)))
}

fn is_weekday(text: &str, long: bool) -> bool {
    const DAYS: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = text.to_ascii_lowercase();
    DAYS.iter()
        .any(|d| if long { *d == lower } else { d[..3] == lower })
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn unix_seconds(year: i64, month: u32, day: u32, (h, m, s): (u32, u32, u32)) -> Option<u64> {
    if year < 1970 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + i64::from(h * 3600 + m * 60 + s)).ok()
}

/// Parse an HTTP-date (RFC 9110 §5.6.7) into Unix seconds: the preferred
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37
/// 1994`) forms.
pub(crate) fn parse_http_date(text: &str) -> Option<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        // IMF-fixdate.
        [wd, day, mon, year, time, "GMT"] if wd.ends_with(',') => {
            if !is_weekday(wd.trim_end_matches(','), false) {
                return None;
            }
            let year = i64::from(number(year, 4..=4)?);
            unix_seconds(year, month(mon)?, number(day, 2..=2)?, clock_time(time)?)
        }
        // RFC 850.
        [wd, date, time, "GMT"] if wd.ends_with(',') => {
            if !is_weekday(wd.trim_end_matches(','), true) {
                return None;
            }
            let mut parts = date.split('-');
            let day = number(parts.next()?, 2..=2)?;
            let mon = month(parts.next()?)?;
            let yy = i64::from(number(parts.next()?, 2..=2)?);
            if parts.next().is_some() {
                return None;
            }
            // Two-digit years: RFC 9110 says a date more than 50 years in the
            // future means the past century; 70..99 → 19xx, 00..69 → 20xx.
            let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
            unix_seconds(year, mon, day, clock_time(time)?)
        }
        // asctime.
        [wd, mon, day, time, year] => {
            if !is_weekday(wd, false) {
                return None;
            }
            let year = i64::from(number(year, 4..=4)?);
            unix_seconds(year, month(mon)?, number(day, 1..=2)?, clock_time(time)?)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Request ids and the access log.
// ---------------------------------------------------------------------------

/// A random (version 4) UUID from 128 random bits.
pub(crate) fn request_id(hi: u64, lo: u64) -> String {
    let hi = (hi & !0xF000) | 0x4000;
    let lo = (lo & !(0xC000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// A `name=value` field: the value is quoted (Rust string syntax) when it is
/// empty or holds whitespace, quotes, `=` or control characters.
struct Field<'a>(&'a str, &'a str);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Field(name, value) = *self;
        let plain = !value.is_empty()
            && value
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
        if plain {
            write!(f, "{name}={value}")
        } else {
            write!(f, "{name}={value:?}")
        }
    }
}

/// One access-log line.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) attempts: u32,
    pub(crate) latency_ms: u64,
    pub(crate) upstream: Option<&'a str>,
    pub(crate) endpoint: Option<&'a str>,
    pub(crate) error: Option<Failure>,
    pub(crate) request_id: Option<&'a str>,
    /// Why earlier attempts were retried, comma-separated (empty: none).
    pub(crate) retried_on: &'a str,
    pub(crate) denied: Option<Denial>,
}

impl<'a> fmt::Display for AccessLog<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dash = |v: Option<&'a str>| v.unwrap_or("-");
        write!(
            f,
            "access {} {} status={} attempts={} latency_ms={} {} {} error={} {} {} denied={}",
            Field("method", self.method),
            Field("path", self.path),
            self.status,
            self.attempts,
            self.latency_ms,
            Field("upstream", dash(self.upstream)),
            Field("endpoint", dash(self.endpoint)),
            self.error.map_or("-", Failure::as_str),
            Field("request_id", dash(self.request_id)),
            Field(
                "retried_on",
                if self.retried_on.is_empty() {
                    "-"
                } else {
                    self.retried_on
                }
            ),
            self.denied.map_or("-", Denial::as_str),
        )
    }
}

/// The label of a status class (`5xx`) or of a failure.
pub(crate) fn outcome_label(status: u16, failure: Option<Failure>) -> &'static str {
    if let Some(f) = failure {
        return f.as_str();
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<Config, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| format!("json: {e}"))?;
        Config::from_raw(raw)
    }

    fn err(json: &str) -> String {
        match config(json) {
            Ok(c) => panic!("{json} was accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// A tiny deterministic generator (xorshift64*) for property checks.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    // --- config ---------------------------------------------------------

    #[test]
    fn defaults_are_documented_values() {
        let c = config("{}").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.retry.attempts, 3);
        assert_eq!(
            c.retry.on,
            vec![
                Condition::ConnectFailure,
                Condition::Reset,
                Condition::Timeout
            ]
        );
        assert_eq!(
            c.retry.statuses,
            [500, 502, 503, 504].map(StatusMatch::Code).to_vec()
        );
        assert_eq!((c.retry.backoff_base_ms, c.retry.backoff_max_ms), (25, 250));
        assert_eq!(c.retry.per_try_timeout_ms, None);
        assert_eq!(c.retry.deadline_ms, None);
        assert!(c.retry.retry_after);
        assert_eq!(c.retry.max_retry_after_ms, 10_000);
        assert!(c.idempotency.enabled && c.idempotency.retry_unsent);
        assert_eq!(
            c.idempotency.methods,
            ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
        );
        assert_eq!(c.idempotency.header, "idempotency-key");
        assert_eq!(
            c.budget,
            Some(Budget {
                ratio: 0.2,
                min_per_second: 10,
                scope: Scope::Cluster
            })
        );
        assert!(c.auth_headers.is_empty() && c.auth_overwrite);
        assert_eq!(
            c.request_id,
            Some(RequestId {
                header: "x-request-id".into(),
                generate: true,
                response: true
            })
        );
        assert!(c.strip_request.is_empty() && c.strip_response.is_empty());
        assert!(c.access_log && c.metrics);
        assert_eq!(c.first_attempt_timeout_ms(), None);
    }

    #[test]
    fn a_full_config_is_read() {
        let c = config(
            r#"{
            "retry": {"attempts": 5, "on": ["reset", "protocol"], "statuses": ["5xx", 429, "409"],
                      "backoff_base_ms": 10, "backoff_max_ms": 1000, "per_try_timeout_ms": 300,
                      "deadline_ms": 2000, "retry_after": false, "max_retry_after_ms": 0},
            "idempotency": {"enabled": true, "methods": ["get", "Post"], "header": "X-Idem",
                            "retry_unsent": false},
            "budget": {"ratio": 0.5, "min_per_second": 0, "scope": "route"},
            "auth": {"bearer_token": "t0k", "api_key": {"header": "X-Key", "value": "k"},
                     "overwrite": false},
            "request_id": {"header": "X-Trace", "generate": false, "response": false},
            "strip": {"request": ["X-Internal"], "response": ["server"]},
            "access_log": false, "metrics": false
        }"#,
        )
        .unwrap();
        assert_eq!(c.retry.attempts, 5);
        assert_eq!(c.retry.on, vec![Condition::Reset, Condition::Protocol]);
        assert_eq!(
            c.retry.statuses,
            vec![
                StatusMatch::Class(5),
                StatusMatch::Code(429),
                StatusMatch::Code(409)
            ]
        );
        assert_eq!(c.first_attempt_timeout_ms(), Some(300));
        assert!(!c.retry.retry_after);
        assert_eq!(c.idempotency.methods, ["GET", "POST"]);
        assert_eq!(c.idempotency.header, "x-idem");
        assert_eq!(c.budget.as_ref().unwrap().scope, Scope::Route);
        assert_eq!(
            c.auth_headers,
            vec![
                ("authorization".into(), "Bearer t0k".into()),
                ("x-key".into(), "k".into())
            ]
        );
        assert!(!c.auth_overwrite);
        assert_eq!(c.request_id.as_ref().unwrap().header, "x-trace");
        assert_eq!(c.strip_request, ["x-internal"]);
        assert_eq!(c.strip_response, ["server"]);
        assert!(!c.access_log && !c.metrics);

        let off =
            config(r#"{"budget": {"enabled": false}, "request_id": {"enabled": false}}"#).unwrap();
        assert_eq!(off.budget, None);
        assert_eq!(off.request_id, None);
        let deadline_only = config(r#"{"retry": {"deadline_ms": 700}}"#).unwrap();
        assert_eq!(deadline_only.first_attempt_timeout_ms(), Some(700));
        let both = config(r#"{"retry": {"deadline_ms": 700, "per_try_timeout_ms": 900}}"#).unwrap();
        assert_eq!(both.first_attempt_timeout_ms(), Some(700));
    }

    #[test]
    fn backoff_max_defaults_to_at_least_the_base() {
        let c = config(r#"{"retry": {"backoff_base_ms": 500}}"#).unwrap();
        assert_eq!(
            (c.retry.backoff_base_ms, c.retry.backoff_max_ms),
            (500, 500)
        );
    }

    #[test]
    fn bad_values_are_rejected_naming_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"retry": {"attempts": 0}}"#,
                "config.retry.attempts: must be between 1 and 10, got 0",
            ),
            (
                r#"{"retry": {"attempts": -2}}"#,
                "config.retry.attempts: must be between 1 and 10, got -2",
            ),
            (
                r#"{"retry": {"attempts": 11}}"#,
                "config.retry.attempts: must be between 1 and 10",
            ),
            (
                r#"{"retry": {"backoff_base_ms": 0}}"#,
                "config.retry.backoff_base_ms: must be between 1 and 60000, got 0",
            ),
            (
                r#"{"retry": {"backoff_max_ms": -1}}"#,
                "config.retry.backoff_max_ms: must be between 1 and 60000",
            ),
            (
                r#"{"retry": {"backoff_max_ms": 60001}}"#,
                "config.retry.backoff_max_ms: must be between 1 and 60000",
            ),
            (
                r#"{"retry": {"backoff_base_ms": 300, "backoff_max_ms": 200}}"#,
                "config.retry.backoff_base_ms: 300 is larger than retry.backoff_max_ms (200)",
            ),
            (
                r#"{"retry": {"per_try_timeout_ms": 0}}"#,
                "config.retry.per_try_timeout_ms: must be between 1 and",
            ),
            (
                r#"{"retry": {"deadline_ms": -5}}"#,
                "config.retry.deadline_ms: must be between 1 and",
            ),
            (
                r#"{"retry": {"max_retry_after_ms": -1}}"#,
                "config.retry.max_retry_after_ms: must be between 0 and 60000",
            ),
            (
                r#"{"retry": {"on": ["reset", "bogus"]}}"#,
                "config.retry.on[1]: unknown retry condition \"bogus\"",
            ),
            (
                r#"{"retry": {"on": ["5xx"]}}"#,
                "status codes and classes go in retry.statuses",
            ),
            (
                r#"{"retry": {"statuses": ["5xx", "6xx"]}}"#,
                "config.retry.statuses[1]: unknown status class \"6xx\"",
            ),
            (
                r#"{"retry": {"statuses": ["0xx"]}}"#,
                "config.retry.statuses[0]: unknown status class",
            ),
            (
                r#"{"retry": {"statuses": [600]}}"#,
                "config.retry.statuses[0]: 600 is not an HTTP status code",
            ),
            (
                r#"{"retry": {"statuses": [99]}}"#,
                "config.retry.statuses[0]: 99 is not an HTTP status code",
            ),
            (
                r#"{"retry": {"statuses": [5.5]}}"#,
                "config.retry.statuses[0]: 5.5 is not an HTTP status code",
            ),
            (
                r#"{"retry": {"statuses": ["teapot"]}}"#,
                "config.retry.statuses[0]: \"teapot\" is neither",
            ),
            (
                r#"{"retry": {"statuses": [true]}}"#,
                "config.retry.statuses[0]: expected a status code",
            ),
            (
                r#"{"budget": {"ratio": 1.5}}"#,
                "config.budget.ratio: must be a fraction between 0 and 1",
            ),
            (
                r#"{"budget": {"ratio": -0.1}}"#,
                "config.budget.ratio: must be a fraction between 0 and 1",
            ),
            (
                r#"{"budget": {"min_per_second": -1}}"#,
                "config.budget.min_per_second: must be between 0 and",
            ),
            (
                r#"{"budget": {"scope": "planet"}}"#,
                "config.budget.scope: unknown scope \"planet\"",
            ),
            (
                r#"{"idempotency": {"methods": ["GET", "BAD METHOD"]}}"#,
                "config.idempotency.methods[1]:",
            ),
            (
                r#"{"idempotency": {"header": "bad header"}}"#,
                "config.idempotency.header: \"bad header\" is not a valid header name",
            ),
            (
                r#"{"auth": {"bearer_token": ""}}"#,
                "config.auth.bearer_token: must not be empty",
            ),
            (
                r#"{"auth": {"bearer_token": "a\nb"}}"#,
                "config.auth.bearer_token: not a valid header value",
            ),
            (
                r#"{"auth": {"api_key": {"value": "k", "header": "content-length"}}}"#,
                "config.auth.api_key.header: header \"content-length\" is managed",
            ),
            (
                r#"{"auth": {"api_key": {"value": "k", "header": "Authorization"}, "bearer_token": "t"}}"#,
                "config.auth.api_key.header: \"authorization\" is already set",
            ),
            (
                r#"{"request_id": {"header": ""}}"#,
                "config.request_id.header: \"\" is not a valid header name",
            ),
            (
                r#"{"strip": {"request": ["ok", "transfer-encoding"]}}"#,
                "config.strip.request[1]: header \"transfer-encoding\" is managed",
            ),
            (
                r#"{"strip": {"response": ["a:b"]}}"#,
                "config.strip.response[0]: \"a:b\" is not a valid header name",
            ),
            (
                r#"{"strip": {"request": ["x-api-key"]}, "auth": {"api_key": {"value": "k"}}}"#,
                "config.strip.request: \"x-api-key\" is also set by auth",
            ),
        ];
        for (json, expected) in cases {
            let message = err(json);
            assert!(
                message.starts_with(expected) || message.contains(expected),
                "{json}\n  expected: {expected}\n  got:      {message}"
            );
            assert!(message.starts_with("config."), "{message}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(err(r#"{"retries": {}}"#).contains("unknown field `retries`"));
        assert!(err(r#"{"retry": {"attempt": 2}}"#).contains("unknown field `attempt`"));
        assert!(err(r#"{"auth": {"api_key": {"header": "x"}}}"#).contains("missing field `value`"));
    }

    // --- idempotency ----------------------------------------------------

    #[test]
    fn idempotency_gate() {
        let gate = Config::default().idempotency;
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "get"] {
            assert!(gate.allows(m, false, false), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "TRACE"] {
            assert!(!gate.allows(m, false, false), "{m}");
            assert!(gate.allows(m, true, false), "{m} with a key");
            assert!(gate.allows(m, false, true), "{m} unsent");
        }
        let strict = Idempotency {
            retry_unsent: false,
            ..gate.clone()
        };
        assert!(!strict.allows("POST", false, true));
        let off = Idempotency {
            enabled: false,
            ..gate
        };
        assert!(off.allows("POST", false, false));
    }

    // --- backoff --------------------------------------------------------

    #[test]
    fn backoff_caps_grow_exponentially_up_to_the_max() {
        let caps: Vec<u32> = (1..=8).map(|r| backoff_cap_ms(r, 25, 250)).collect();
        assert_eq!(caps, [25, 50, 100, 200, 250, 250, 250, 250]);
        assert_eq!(backoff_cap_ms(0, 25, 250), 25);
        assert_eq!(backoff_cap_ms(40, 60_000, 60_000), 60_000);
        assert_eq!(backoff_cap_ms(u32::MAX, 1, 7), 7);
        assert_eq!(backoff_delay_ms(1, 25, 250, 0), 0);
        assert_eq!(backoff_delay_ms(1, 25, 250, 25), 25);
        assert_eq!(backoff_delay_ms(1, 25, 250, 26), 0);
        assert_eq!(
            backoff_delay_ms(3, 25, 250, u64::MAX),
            (u64::MAX % 101) as u32
        );
    }

    #[test]
    fn backoff_delays_stay_within_bounds_and_use_the_whole_range() {
        // Property check over many random inputs: 0 <= delay <= min(max, base * 2^(n-1)).
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let base = (rng.next() % u64::from(MAX_DELAY_MS)) as u32 + 1;
            let max = base + (rng.next() % u64::from(MAX_DELAY_MS - base + 1)) as u32;
            let retry = (rng.next() % 12) as u32 + 1;
            let delay = backoff_delay_ms(retry, base, max, rng.next());
            let bound = (u64::from(base) << (retry - 1)).min(u64::from(max));
            assert!(u64::from(delay) <= bound, "{delay} > {bound}");
            assert!(delay <= max && delay <= MAX_DELAY_MS);
        }
        // Full jitter: both ends of the range are reached, and the mean is near cap/2.
        let (mut lo, mut hi, mut sum) = (u32::MAX, 0, 0u64);
        for _ in 0..10_000 {
            let d = backoff_delay_ms(3, 25, 250, rng.next());
            lo = lo.min(d);
            hi = hi.max(d);
            sum += u64::from(d);
        }
        assert_eq!((lo, hi), (0, 100));
        let mean = sum / 10_000;
        assert!((40..=60).contains(&mean), "mean {mean}");
    }

    // --- Retry-After ----------------------------------------------------

    const NOW: u64 = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after("0", NOW), Some(0));
        assert_eq!(parse_retry_after("1", NOW), Some(1000));
        assert_eq!(parse_retry_after(" 120 ", NOW), Some(120_000));
        assert_eq!(
            parse_retry_after("99999999999999999999999", NOW),
            Some(u64::MAX)
        );
        for bad in ["", "-1", "1.5", "1s", "soon", "+3"] {
            assert_eq!(parse_retry_after(bad, NOW), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_dates_in_all_three_forms() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 23:59:59 GMT"),
            Some(951_868_799)
        );
        assert_eq!(
            parse_http_date("Wed, 01 Jan 2025 00:00:00 GMT"),
            Some(1_735_689_600)
        );
        assert_eq!(
            parse_http_date("Friday, 01-Jan-21 00:00:00 GMT"),
            Some(1_609_459_200)
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sun 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov  6 08:49:37",
            "tomorrow",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
        // Relative to now; a past date means no wait.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:39 GMT", NOW),
            Some(2000)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:39 GMT", NOW + 500),
            Some(1500)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", NOW),
            Some(0)
        );
    }

    #[test]
    fn civil_days_match_a_day_by_day_walk() {
        let mut days = 0i64;
        for year in 1970..2100 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(
                        days_from_civil(year, month, day),
                        days,
                        "{year}-{month}-{day}"
                    );
                    days += 1;
                }
            }
        }
    }

    // --- budget ---------------------------------------------------------

    #[test]
    fn budget_arithmetic() {
        let b = Budget {
            ratio: 0.2,
            min_per_second: 3,
            scope: Scope::Cluster,
        };
        assert_eq!(b.allowed(0), 3);
        assert_eq!(b.allowed(10), 3);
        assert_eq!(b.allowed(15), 3);
        assert_eq!(b.allowed(20), 4);
        assert_eq!(b.allowed(104), 20);
        assert_eq!(b.allowed(-7), 3);
        assert!(b.allows(100, 20));
        assert!(!b.allows(100, 21));
        assert!(b.allows(1, 3));
        assert!(!b.allows(1, 4));
        let none = Budget {
            ratio: 0.0,
            min_per_second: 0,
            ..b.clone()
        };
        assert!(!none.allows(1_000_000, 1));
        let all = Budget {
            ratio: 1.0,
            min_per_second: 0,
            ..b.clone()
        };
        assert!(all.allows(50, 50));
        assert!(!all.allows(50, 51));
        // Property: retries never exceed max(min, ratio * requests).
        let mut rng = Rng(7);
        for _ in 0..5000 {
            let ratio = (rng.next() % 1001) as f64 / 1000.0;
            let min = (rng.next() % 20) as u32;
            let b = Budget {
                ratio,
                min_per_second: min,
                scope: Scope::Global,
            };
            let requests = (rng.next() % 10_000) as i64;
            let retries = (rng.next() % 10_000) as i64 + 1;
            let bound = (ratio * requests as f64).max(f64::from(min));
            assert_eq!(b.allows(requests, retries), retries as f64 <= bound.floor());
        }
    }

    #[test]
    fn budget_keys_and_scopes() {
        let (req, ret) = budget_keys("cluster:main", 1_700_000_000_999);
        assert_eq!(req, "budget/cluster:main/1700000000/requests");
        assert_eq!(ret, "budget/cluster:main/1700000000/retries");
        assert_eq!(
            budget_keys("x", 1_700_000_001_000).0,
            "budget/x/1700000001/requests"
        );
        let mut b = Config::default().budget.unwrap();
        assert_eq!(b.scope_name(Some("main"), "r"), "cluster:main");
        assert_eq!(b.scope_name(None, "r"), "cluster:-");
        b.scope = Scope::Route;
        assert_eq!(b.scope_name(Some("main"), "r"), "route:r");
        b.scope = Scope::Global;
        assert_eq!(b.scope_name(Some("main"), "r"), "global");
    }

    // --- the decision ---------------------------------------------------

    fn outcome(attempt: u32, status: u16, failure: Option<Failure>) -> Outcome<'static> {
        Outcome {
            attempt,
            status,
            failure,
            local: false,
            retry_after: None,
        }
    }

    fn get(elapsed_ms: u64) -> Facts<'static> {
        Facts {
            method: "GET",
            has_idempotency_key: false,
            elapsed_ms,
            now_unix_ms: NOW,
        }
    }

    #[test]
    fn what_is_retried() {
        let c = Config::default();
        let retry = |o: &Outcome<'_>| matches!(c.decide(o, &get(0), 7), Decision::Retry { .. });
        assert!(!retry(&outcome(1, 200, None)));
        assert!(!retry(&outcome(1, 404, None)));
        assert!(!retry(&outcome(1, 501, None)));
        for s in [500, 502, 503, 504] {
            assert!(retry(&outcome(1, s, None)), "{s}");
        }
        for f in [
            Failure::ConnectFailed,
            Failure::ConnectTimeout,
            Failure::Reset,
            Failure::Timeout,
        ] {
            assert!(retry(&outcome(1, 502, Some(f))), "{f:?}");
        }
        // Not by default: protocol errors; never: no endpoint; never: local responses.
        assert!(!retry(&outcome(1, 502, Some(Failure::Protocol))));
        assert!(!retry(&outcome(1, 503, Some(Failure::NoEndpoint))));
        let local = Outcome {
            local: true,
            ..outcome(1, 503, None)
        };
        assert_eq!(c.decide(&local, &get(0), 7), Decision::Done);
        // Failures are judged by `on` only, not by the gateway's error status.
        let only_status = config(r#"{"retry": {"on": [], "statuses": ["5xx"]}}"#).unwrap();
        assert_eq!(
            only_status.decide(&outcome(1, 502, Some(Failure::Reset)), &get(0), 7),
            Decision::Done
        );
        assert!(matches!(
            only_status.decide(&outcome(1, 507, None), &get(0), 7),
            Decision::Retry {
                reason: Reason::Status(507),
                ..
            }
        ));
    }

    #[test]
    fn attempts_cap_and_gate() {
        let c = Config::default();
        assert!(matches!(
            c.decide(&outcome(2, 503, None), &get(0), 0),
            Decision::Retry { delay_ms: 0, .. }
        ));
        assert_eq!(
            c.decide(&outcome(3, 503, None), &get(0), 0),
            Decision::Denied {
                reason: Reason::Status(503),
                denial: Denial::Attempts
            }
        );
        let post = Facts {
            method: "POST",
            ..get(0)
        };
        assert_eq!(
            c.decide(&outcome(1, 503, None), &post, 0),
            Decision::Denied {
                reason: Reason::Status(503),
                denial: Denial::NotIdempotent
            }
        );
        // A reset POST may have reached the upstream: not retried either.
        assert!(matches!(
            c.decide(&outcome(1, 502, Some(Failure::Reset)), &post, 0),
            Decision::Denied {
                denial: Denial::NotIdempotent,
                ..
            }
        ));
        // A POST that never left (connection refused) is safe to retry.
        assert!(matches!(
            c.decide(&outcome(1, 502, Some(Failure::ConnectFailed)), &post, 0),
            Decision::Retry { .. }
        ));
        let keyed = Facts {
            has_idempotency_key: true,
            ..post
        };
        assert!(matches!(
            c.decide(&outcome(1, 503, None), &keyed, 0),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn delays_come_from_backoff_or_retry_after() {
        let c = Config::default();
        for attempt in 1..=2 {
            let mut rng = Rng(u64::from(attempt) * 31);
            for _ in 0..1000 {
                match c.decide(&outcome(attempt, 503, None), &get(0), rng.next()) {
                    Decision::Retry {
                        delay_ms,
                        timeout_ms: None,
                        ..
                    } => assert!(delay_ms <= 25 << (attempt - 1)),
                    other => panic!("{other:?}"),
                }
            }
        }
        let with = |value: &'static str| Outcome {
            retry_after: Some(value),
            ..outcome(1, 503, None)
        };
        assert!(matches!(
            c.decide(&with("2"), &get(0), 0),
            Decision::Retry { delay_ms: 2000, .. }
        ));
        assert!(matches!(
            c.decide(&with("Sun, 06 Nov 1994 08:49:40 GMT"), &get(0), 0),
            Decision::Retry { delay_ms: 3000, .. }
        ));
        // Unparseable: plain backoff.
        assert!(matches!(
            c.decide(&with("later"), &get(0), 3),
            Decision::Retry { delay_ms: 3, .. }
        ));
        // Longer than max_retry_after_ms (10 s): the response is kept.
        assert!(matches!(
            c.decide(&with("11"), &get(0), 0),
            Decision::Denied {
                denial: Denial::RetryAfter,
                ..
            }
        ));
        // Ignored when disabled.
        let ignore = config(r#"{"retry": {"retry_after": false}}"#).unwrap();
        assert!(matches!(
            ignore.decide(&with("11"), &get(0), 5),
            Decision::Retry { delay_ms: 5, .. }
        ));
    }

    #[test]
    fn the_deadline_bounds_delays_and_the_next_attempt() {
        let c = config(
            r#"{"retry": {"deadline_ms": 1000, "per_try_timeout_ms": 300, "backoff_base_ms": 100,
                          "backoff_max_ms": 100}}"#,
        )
        .unwrap();
        // 100 ms delay, 400 ms used: the next attempt gets the per-try timeout.
        assert_eq!(
            c.decide(&outcome(1, 503, None), &get(400), 100),
            Decision::Retry {
                reason: Reason::Status(503),
                delay_ms: 100,
                timeout_ms: Some(300)
            }
        );
        // 800 ms used: 200 left, 100 of them waiting: 100 for the attempt.
        assert_eq!(
            c.decide(&outcome(1, 503, None), &get(800), 100),
            Decision::Retry {
                reason: Reason::Status(503),
                delay_ms: 100,
                timeout_ms: Some(100)
            }
        );
        // The delay would use up the rest: no retry.
        assert!(matches!(
            c.decide(&outcome(1, 503, None), &get(900), 100),
            Decision::Denied {
                denial: Denial::Deadline,
                ..
            }
        ));
        assert!(matches!(
            c.decide(&outcome(1, 504, Some(Failure::Timeout)), &get(5000), 0),
            Decision::Denied {
                denial: Denial::Deadline,
                ..
            }
        ));
        // Retry-After beyond the deadline is not honoured by waiting.
        let late = Outcome {
            retry_after: Some("1"),
            ..outcome(1, 503, None)
        };
        assert!(matches!(
            c.decide(&late, &get(100), 0),
            Decision::Denied {
                denial: Denial::Deadline,
                ..
            }
        ));
    }

    // --- request ids and the log line -------------------------------------

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = request_id(0, 0);
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
        let id = request_id(u64::MAX, u64::MAX);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let mut rng = Rng(99);
        let a = request_id(rng.next(), rng.next());
        let b = request_id(rng.next(), rng.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(is_header_value(&a));
    }

    #[test]
    fn access_log_line() {
        let line = AccessLog {
            method: "GET",
            path: "/orders/7",
            status: 503,
            attempts: 3,
            latency_ms: 42,
            upstream: Some("main"),
            endpoint: Some("127.0.0.1:8081"),
            error: None,
            request_id: Some("abc"),
            retried_on: "503,reset",
            denied: Some(Denial::Attempts),
        }
        .to_string();
        assert_eq!(
            line,
            "access method=GET path=/orders/7 status=503 attempts=3 latency_ms=42 upstream=main \
             endpoint=127.0.0.1:8081 error=- request_id=abc retried_on=503,reset denied=attempts"
        );
        let line = AccessLog {
            method: "POST",
            path: "/",
            status: 502,
            attempts: 1,
            latency_ms: 0,
            upstream: None,
            endpoint: None,
            error: Some(Failure::ConnectFailed),
            request_id: Some("a b\"c"),
            retried_on: "",
            denied: None,
        }
        .to_string();
        assert_eq!(
            line,
            "access method=POST path=/ status=502 attempts=1 latency_ms=0 upstream=- endpoint=- \
             error=connect-failed request_id=\"a b\\\"c\" retried_on=- denied=-"
        );
    }

    #[test]
    fn outcome_labels() {
        assert_eq!(outcome_label(200, None), "2xx");
        assert_eq!(outcome_label(404, None), "4xx");
        assert_eq!(outcome_label(503, None), "5xx");
        assert_eq!(outcome_label(101, None), "1xx");
        assert_eq!(outcome_label(302, None), "3xx");
        assert_eq!(outcome_label(504, Some(Failure::Timeout)), "timeout");
    }

    #[test]
    fn tokens_and_values() {
        assert!(is_token("x-request-id") && is_token("GET"));
        assert!(!is_token("") && !is_token("a b") && !is_token("a:b"));
        assert!(is_header_value("Bearer abc") && is_header_value(""));
        assert!(!is_header_value("a\rb"));
        assert_eq!(Failure::Reset.as_str(), "reset");
        assert!(Failure::ConnectTimeout.unsent() && !Failure::Reset.unsent());
        assert_eq!(Reason::Failure(Failure::Timeout).to_string(), "timeout");
        assert_eq!(Reason::Status(503).to_string(), "503");
    }
}
