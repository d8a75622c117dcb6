//! The per-route config: parsed with `ficus_sdk::config` (which names the key
//! path of a type error) and validated into [`Breaker`] (whose errors name the
//! key too). The full reference is in the crate docs and README.md.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::machine::{ErrorKind, Policy, Settings, StatusSet, WindowKind};

/// What a breaker is keyed by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum KeyKind {
    /// One breaker per route (or per `name`). The default.
    #[default]
    Route,
    /// One breaker per upstream cluster, shared by every route that names it.
    Upstream,
    /// One breaker per endpoint of an upstream; the plugin picks the endpoint.
    Endpoint,
}

impl KeyKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyKind::Route => "route",
            KeyKind::Upstream => "upstream",
            KeyKind::Endpoint => "endpoint",
        }
    }
}

/// How the breaker acts on its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// Record, transition and reject. The default.
    #[default]
    Normal,
    /// Record and transition, never reject (shadow mode).
    #[serde(alias = "metrics-only")]
    DryRun,
    /// Reject every request; record nothing.
    ForcedOpen,
    /// Let every request through; record nothing.
    Disabled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum WindowType {
    #[default]
    #[serde(alias = "count")]
    CountBased,
    #[serde(alias = "time")]
    TimeBased,
}

/// One entry of `failure_statuses` / `ignore_statuses`: `503`, `"5xx"`,
/// `"503"` or `"500-504"`.
#[derive(Debug, Clone, Copy)]
struct StatusRule((u16, u16));

impl<'de> Deserialize<'de> for StatusRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code (503), class (\"5xx\") or range (\"500-504\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRule, E> {
                match u16::try_from(v) {
                    Ok(code) if (100..=599).contains(&code) => Ok(StatusRule((code, code))),
                    _ => Err(E::custom(format!("{v} is not an HTTP status (100..=599)"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRule, E> {
                Err(E::custom(format!("{v} is not an HTTP status (100..=599)")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRule, E> {
                StatusSet::parse_rule(v).map(StatusRule).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One entry of `failure_errors`.
#[derive(Debug, Clone, Copy)]
struct ErrorName(ErrorKind);

impl<'de> Deserialize<'de> for ErrorName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        ErrorKind::parse(&name).map(ErrorName).ok_or_else(|| {
            let known: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
            de::Error::custom(format!(
                "{name:?} is not an upstream error kind: expected one of {}",
                known.join(", ")
            ))
        })
    }
}

/// The config as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    key: KeyKind,
    name: Option<String>,
    upstream: Option<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    sliding_window_type: WindowType,
    sliding_window_size: Option<u32>,
    minimum_calls: Option<u32>,
    failure_rate_threshold: Option<f64>,
    slow_call_rate_threshold: Option<f64>,
    slow_call_duration_ms: Option<u64>,
    wait_in_open_ms: Option<u64>,
    wait_in_open_multiplier: Option<f64>,
    max_wait_in_open_ms: Option<u64>,
    permitted_calls_in_half_open: Option<u32>,
    max_wait_in_half_open_ms: Option<u64>,
    failure_statuses: Option<Vec<StatusRule>>,
    ignore_statuses: Option<Vec<StatusRule>>,
    failure_errors: Option<Vec<ErrorName>>,
    reject_status: Option<u16>,
    reject_body: Option<String>,
    retry_after: Option<bool>,
    state_ttl_ms: Option<u64>,
}

/// A validated config.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    pub(crate) key: KeyKind,
    pub(crate) name: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) endpoints: Vec<String>,
    pub(crate) mode: Mode,
    pub(crate) settings: Settings,
    pub(crate) policy: Policy,
    pub(crate) reject_status: u16,
    pub(crate) reject_body: Option<String>,
    pub(crate) retry_after: bool,
}

/// Default cap of the multiplied wait in open.
const DEFAULT_MAX_WAIT_IN_OPEN_MS: u64 = 600_000;

fn check_name(key: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "config.{key}: {value:?} must be 1..=128 characters of A-Z a-z 0-9 - _ . : /"
        ))
    }
}

fn check_endpoint(at: usize, value: &str) -> Result<(), String> {
    let port_ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if port_ok {
        Ok(())
    } else {
        Err(format!(
            "config.endpoints[{at}]: {value:?} is not host:port (write it exactly as in the upstream's `endpoints`)"
        ))
    }
}

/// Parse and validate the config text.
pub(crate) fn parse(text: &str) -> Result<Breaker, String> {
    let raw: Raw = ficus_sdk::config(text)?;
    let d = Settings::default();
    let window = match raw.sliding_window_type {
        WindowType::CountBased => WindowKind::Count,
        WindowType::TimeBased => WindowKind::Time,
    };
    let wait_in_open_ms = raw.wait_in_open_ms.unwrap_or(d.wait_in_open_ms);
    let multiplier = raw
        .wait_in_open_multiplier
        .unwrap_or(d.wait_in_open_multiplier);
    let max_wait_in_open_ms = raw.max_wait_in_open_ms.unwrap_or(if multiplier > 1.0 {
        DEFAULT_MAX_WAIT_IN_OPEN_MS.max(wait_in_open_ms)
    } else {
        wait_in_open_ms
    });
    let settings = Settings {
        window,
        window_size: raw.sliding_window_size.unwrap_or(d.window_size),
        minimum_calls: raw.minimum_calls.unwrap_or(d.minimum_calls),
        failure_rate_threshold: raw
            .failure_rate_threshold
            .unwrap_or(d.failure_rate_threshold),
        slow_call_rate_threshold: raw
            .slow_call_rate_threshold
            .unwrap_or(d.slow_call_rate_threshold),
        slow_call_duration_ms: raw.slow_call_duration_ms.unwrap_or(d.slow_call_duration_ms),
        wait_in_open_ms,
        wait_in_open_multiplier: multiplier,
        max_wait_in_open_ms,
        permitted_calls_in_half_open: raw
            .permitted_calls_in_half_open
            .unwrap_or(d.permitted_calls_in_half_open),
        max_wait_in_half_open_ms: raw
            .max_wait_in_half_open_ms
            .unwrap_or(d.max_wait_in_half_open_ms),
        state_ttl_ms: raw.state_ttl_ms.unwrap_or(d.state_ttl_ms),
    };
    settings.validate()?;

    let mut policy = Policy::new(settings.slow_call_duration_ms);
    if let Some(rules) = &raw.failure_statuses {
        policy.failure_statuses = StatusSet::from_ranges(rules.iter().map(|r| r.0).collect());
    }
    if let Some(rules) = &raw.ignore_statuses {
        policy.ignore_statuses = StatusSet::from_ranges(rules.iter().map(|r| r.0).collect());
    }
    if let Some(kinds) = &raw.failure_errors {
        let kinds: Vec<ErrorKind> = kinds.iter().map(|k| k.0).collect();
        policy.set_failure_errors(&kinds);
    }

    if let Some(name) = &raw.name {
        check_name("name", name)?;
    }
    if let Some(upstream) = &raw.upstream {
        check_name("upstream", upstream)?;
    }
    match raw.key {
        KeyKind::Route => {}
        KeyKind::Upstream | KeyKind::Endpoint if raw.upstream.is_none() => {
            return Err(format!(
                "config.upstream: required when key = \"{}\": on-request runs before the \
                 gateway picks the upstream, so name the upstream this breaker guards (the \
                 route's `upstream`)",
                raw.key.as_str()
            ));
        }
        KeyKind::Upstream | KeyKind::Endpoint => {}
    }
    if raw.key == KeyKind::Endpoint {
        if raw.endpoints.is_empty() {
            return Err(
                "config.endpoints: required when key = \"endpoint\": list the upstream's \
                 endpoints (host:port, as in its `endpoints`); the plugin picks a healthy one"
                    .into(),
            );
        }
        for (i, e) in raw.endpoints.iter().enumerate() {
            check_endpoint(i, e)?;
            if raw.endpoints[..i].contains(e) {
                return Err(format!("config.endpoints[{i}]: {e:?} is listed twice"));
            }
        }
    } else if !raw.endpoints.is_empty() {
        return Err(format!(
            "config.endpoints: only used with key = \"endpoint\" (key is \"{}\")",
            raw.key.as_str()
        ));
    }
    let reject_status = raw.reject_status.unwrap_or(503);
    if !(100..=599).contains(&reject_status) {
        return Err(format!(
            "config.reject_status: {reject_status} is not an HTTP status (100..=599)"
        ));
    }
    if raw.reject_body.as_ref().is_some_and(|b| b.len() > 65_536) {
        return Err("config.reject_body: longer than 64 KiB".into());
    }
    Ok(Breaker {
        key: raw.key,
        name: raw.name,
        upstream: raw.upstream,
        endpoints: raw.endpoints,
        mode: raw.mode,
        settings,
        policy,
        reject_status,
        reject_body: raw.reject_body,
        retry_after: raw.retry_after.unwrap_or(true),
    })
}
