//! `[leader]` (leader election) and `[[ticks]]` (singleton scheduled work): their model and
//! validation.
//!
//! The node campaigns for every group in `leader.groups` plus every group a tick names; a tick
//! runs only on the node that currently leads its group.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::locate::{join_index, join_key};
use crate::model::Config;
use crate::validate::{json_kind, known, valid_name, Problems};

pub(crate) mod defaults {
    pub(crate) const fn lease_ttl_ms() -> u64 {
        5_000
    }
    pub(crate) const fn renew_deadline_ms() -> u64 {
        3_000
    }
    pub(crate) const fn retry_period_ms() -> u64 {
        1_000
    }
    pub(crate) fn group() -> String {
        "default".to_owned()
    }
}

/// `[leader]`: how this node takes part in leader elections.
///
/// Timing follows Kubernetes' leader election: a leader renews its lease every
/// `retry_period_ms`; if it could not renew for `renew_deadline_ms` it stops acting as leader;
/// other nodes take over once the lease (`lease_ttl_ms`) has expired. Hence
/// `lease_ttl_ms > renew_deadline_ms > retry_period_ms > 0`: a leader always stops before
/// anybody else may start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Leader {
    /// This node's id in elections (shown as the leader's id to every node and to plugins).
    /// Must be unique among the nodes sharing the backend. Default: `"<hostname>-<pid>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// How long a lease lasts without renewal, in milliseconds: the longest a group stays
    /// without a leader when its leader dies. Default: `5000`.
    #[serde(default = "defaults::lease_ttl_ms")]
    #[schemars(range(min = 1))]
    pub lease_ttl_ms: u64,
    /// A leader that could not renew its lease for this long stops acting as leader, in
    /// milliseconds; below `lease_ttl_ms`. Default: `3000`.
    #[serde(default = "defaults::renew_deadline_ms")]
    #[schemars(range(min = 1))]
    pub renew_deadline_ms: u64,
    /// How often a leader renews its lease and a follower tries to take it, in milliseconds;
    /// below `renew_deadline_ms`. Default: `1000`.
    #[serde(default = "defaults::retry_period_ms")]
    #[schemars(range(min = 1))]
    pub retry_period_ms: u64,
    /// Election groups this node campaigns for (`[a-z0-9][a-z0-9_-]*`). Groups named by
    /// `[[ticks]]` are added implicitly. Default: `[]`.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Default for Leader {
    fn default() -> Self {
        Self {
            node_id: None,
            lease_ttl_ms: defaults::lease_ttl_ms(),
            renew_deadline_ms: defaults::renew_deadline_ms(),
            retry_period_ms: defaults::retry_period_ms(),
            groups: Vec::new(),
        }
    }
}

/// `[[ticks]]`: scheduled work run by a `tick` plugin on the leader of a group (a cluster-wide
/// cron).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tick {
    /// Name used in logs and metrics (`[a-z0-9][a-z0-9_-]*`); unique. Required.
    pub name: String,
    /// Name of the `[plugins]` entry: a component exporting `ficus:gateway/tick-hooks`.
    /// Required.
    pub plugin: String,
    /// Interval between runs, e.g. `"500ms"`, `"10s"`, `"1m"`, `"1h"`; above zero. Required.
    pub every: Every,
    /// Election group whose leader runs the tick. Default: `"default"`.
    #[serde(default = "defaults::group")]
    pub group: String,
    /// Configuration handed to the plugin's `configure` (as JSON); any table. Default: `{}`.
    #[serde(default = "crate::model::defaults::step_config")]
    #[schemars(extend("type" = "object"))]
    pub config: serde_json::Value,
}

impl Tick {
    /// JSON text of the tick's configuration; `{}` when it is absent (null).
    pub fn config_json(&self) -> String {
        if self.config.is_null() {
            "{}".to_owned()
        } else {
            self.config.to_string()
        }
    }
}

/// A positive interval written as a number and a unit: `ms`, `s`, `m` or `h` (e.g. `"250ms"`,
/// `"10s"`). Zero is accepted by parsing and rejected by validation (with its key path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(with = "String", extend("pattern" = "^[0-9]+(ms|s|m|h)$"))]
pub struct Every(pub Duration);

impl Every {
    /// Parses `"<digits><unit>"` with unit `ms`, `s`, `m` or `h`.
    pub fn parse(text: &str) -> Result<Every, String> {
        let bad = || {
            format!(
                "invalid interval {text:?} (expected a whole number followed by ms, s, m or h, \
                 e.g. \"500ms\" or \"10s\")"
            )
        };
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let millis = number.checked_mul(millis_per).ok_or_else(bad)?;
        Ok(Every(Duration::from_millis(millis)))
    }
}

impl fmt::Display for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms != 0 && ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Every {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Every {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Every::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Every election group this node campaigns for: `leader.groups` and the groups of
    /// `[[ticks]]` and `[[projections]]`, sorted, without duplicates.
    pub fn leader_groups(&self) -> BTreeSet<String> {
        self.leader
            .groups
            .iter()
            .chain(self.ticks.iter().map(|t| &t.group))
            .chain(self.projections.iter().map(|p| &p.group))
            .cloned()
            .collect()
    }
}

/// Checks `[leader]` and `[[ticks]]`.
pub(crate) fn check(config: &Config, out: &mut Problems) {
    let leader = &config.leader;
    if let Some(id) = &leader.node_id {
        if id.trim().is_empty() {
            out.push("leader.node_id", "must not be empty");
        } else if id.chars().any(char::is_control) {
            out.push("leader.node_id", "must not contain control characters");
        }
    }
    for (key, value) in [
        ("lease_ttl_ms", leader.lease_ttl_ms),
        ("renew_deadline_ms", leader.renew_deadline_ms),
        ("retry_period_ms", leader.retry_period_ms),
    ] {
        if value == 0 {
            out.push(
                join_key("leader", key),
                "must be above 0 (expected lease_ttl_ms > renew_deadline_ms > retry_period_ms > 0)",
            );
        }
    }
    if leader.renew_deadline_ms > 0 && leader.lease_ttl_ms <= leader.renew_deadline_ms {
        out.push(
            "leader.lease_ttl_ms",
            format!(
                "{} must be above renew_deadline_ms ({}): a leader must stop acting before its \
                 lease can be taken (expected lease_ttl_ms > renew_deadline_ms > retry_period_ms > 0)",
                leader.lease_ttl_ms, leader.renew_deadline_ms
            ),
        );
    }
    if leader.retry_period_ms > 0 && leader.renew_deadline_ms <= leader.retry_period_ms {
        out.push(
            "leader.renew_deadline_ms",
            format!(
                "{} must be above retry_period_ms ({}): a leader needs more than one renewal \
                 attempt per deadline (expected lease_ttl_ms > renew_deadline_ms > \
                 retry_period_ms > 0)",
                leader.renew_deadline_ms, leader.retry_period_ms
            ),
        );
    }
    for (i, group) in leader.groups.iter().enumerate() {
        let path = join_index("leader.groups", i);
        check_group(group, &path, out);
        if let Some(first) = leader.groups[..i].iter().position(|g| g == group) {
            out.push(
                path,
                format!("duplicate group {group:?} (already at groups[{first}])"),
            );
        }
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, tick) in config.ticks.iter().enumerate() {
        let base = join_index("ticks", i);
        let name_path = join_key(&base, "name");
        if !valid_name(&tick.name) {
            out.push(
                name_path,
                format!(
                    "invalid tick name {:?} (expected lowercase letters, digits, '_' or '-', \
                     starting with a letter or digit)",
                    tick.name
                ),
            );
        } else if let Some(first) = names.get(tick.name.as_str()) {
            out.push(
                name_path,
                format!(
                    "duplicate tick name {:?} (already used by ticks[{first}])",
                    tick.name
                ),
            );
        } else {
            names.insert(&tick.name, i);
        }
        if !config.plugins.contains_key(&tick.plugin) {
            out.push(
                join_key(&base, "plugin"),
                format!(
                    "unknown plugin {:?} (known: {})",
                    tick.plugin,
                    known(config.plugins.keys())
                ),
            );
        }
        if tick.every.0.is_zero() {
            out.push(
                join_key(&base, "every"),
                "must be above zero (e.g. \"500ms\" or \"10s\")",
            );
        }
        check_group(&tick.group, &join_key(&base, "group"), out);
        if !tick.config.is_object() && !tick.config.is_null() {
            out.push(
                join_key(&base, "config"),
                format!("expected a table (got {})", json_kind(&tick.config)),
            );
        }
    }
}

pub(crate) fn check_group(group: &str, path: &str, out: &mut Problems) {
    if !valid_name(group) {
        out.push(
            path,
            format!(
                "invalid group name {group:?} (expected lowercase letters, digits, '_' or '-', \
                 starting with a letter or digit)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(Every::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(Every::parse("10s").unwrap().0, Duration::from_secs(10));
        assert_eq!(Every::parse("2m").unwrap().0, Duration::from_secs(120));
        assert_eq!(Every::parse("1h").unwrap().0, Duration::from_secs(3600));
        assert_eq!(Every::parse("0s").unwrap().0, Duration::ZERO);
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "10sec",
            "99999999999999999999h",
        ] {
            let e = Every::parse(bad).unwrap_err();
            assert!(e.contains("invalid interval"), "{bad:?}: {e}");
        }
        for text in ["250ms", "10s", "3m", "1h", "1500ms"] {
            assert_eq!(Every::parse(text).unwrap().to_string(), text);
        }
    }
}
