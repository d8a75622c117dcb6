//! `[[projections]]`: projection plugins that fold the event store into read models, and their
//! validation.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::locate::{join_index, join_key};
use crate::model::{Config, Grant};
use crate::validate::{check_name, json_kind, known, Problems};

/// `[[projections]]`: a projection plugin (a component exporting `ficus:gateway/projection-hooks`)
/// that receives every stored event passing its filter, in global order, and writes the read
/// model named after the projection. It runs on the leader of its election group only; its
/// checkpoint is committed in the same transaction as its read-model writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Projection {
    /// Name of the projection and of the read model it writes (`[a-z0-9][a-z0-9_-]*`); unique.
    /// Query handlers read the model by this name. Required.
    pub name: String,
    /// Name of the `[plugins]` entry: a component exporting `ficus:gateway/projection-hooks`.
    /// Required.
    pub plugin: String,
    /// Only events of streams whose name starts with this prefix (e.g. `"order-"`). Default: every
    /// stream.
    #[serde(default)]
    pub stream_prefix: Option<String>,
    /// Only events of these types (e.g. `["OrderPlaced", "OrderPaid"]`). Default: `[]` (every
    /// type).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Election group whose leader runs the projection. Default: `"default"`.
    #[serde(default = "defaults::group")]
    pub group: String,
    /// Most events applied per read-model transaction (one fsync each). Default: `256`.
    #[serde(default = "defaults::batch")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch: u32,
    /// Delay before retrying an event whose `on-event` failed; doubles up to
    /// `retry_max_ms`. Default: `100`.
    #[serde(default = "defaults::retry_ms")]
    #[schemars(range(min = 1))]
    pub retry_ms: u64,
    /// Longest delay between retries of a failing event. Default: `30000`.
    #[serde(default = "defaults::retry_max_ms")]
    #[schemars(range(min = 1))]
    pub retry_max_ms: u64,
    /// Configuration handed to the plugin's `configure` (as JSON); any table. Default: `{}`.
    #[serde(default = "crate::model::defaults::step_config")]
    #[schemars(extend("type" = "object"))]
    pub config: serde_json::Value,
}

impl Projection {
    /// JSON text of the projection's configuration; `{}` when it is absent (null).
    pub fn config_json(&self) -> String {
        if self.config.is_null() {
            "{}".to_owned()
        } else {
            self.config.to_string()
        }
    }
}

mod defaults {
    pub(super) fn group() -> String {
        "default".to_owned()
    }
    pub(super) fn batch() -> u32 {
        256
    }
    pub(super) fn retry_ms() -> u64 {
        100
    }
    pub(super) fn retry_max_ms() -> u64 {
        30_000
    }
}

/// Checks `[[projections]]`.
pub(crate) fn check(config: &Config, out: &mut Problems) {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in config.projections.iter().enumerate() {
        let base = join_index("projections", i);
        check_name("projection", &p.name, &join_key(&base, "name"), out);
        if let Some(first) = names.get(p.name.as_str()) {
            out.push(
                join_key(&base, "name"),
                format!(
                    "duplicate projection name {:?} (already used by projections[{first}])",
                    p.name
                ),
            );
        } else {
            names.insert(&p.name, i);
        }
        match config.plugins.get(&p.plugin) {
            None => out.push(
                join_key(&base, "plugin"),
                format!(
                    "unknown plugin {:?} (known: {})",
                    p.plugin,
                    known(config.plugins.keys())
                ),
            ),
            Some(plugin) => {
                for grant in [Grant::Events, Grant::State, Grant::Pubsub] {
                    if plugin.grants.contains(&grant) {
                        out.push(
                            join_key(&join_key("plugins", &p.plugin), "grants"),
                            format!(
                                "plugin {:?} runs projection {:?}: a projection only reads \
                                 its events and writes its read model, so it cannot be granted \
                                 {:?} (expected a subset of log, metrics, read-model, clock)",
                                p.plugin,
                                p.name,
                                grant.as_str()
                            ),
                        );
                    }
                }
            }
        }
        if let Some(prefix) = &p.stream_prefix {
            if prefix.is_empty() || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
                out.push(
                    join_key(&base, "stream_prefix"),
                    format!(
                        "invalid stream prefix {prefix:?} (expected a non-empty prefix without \
                         whitespace or control characters, or no key for every stream)"
                    ),
                );
            }
        }
        for (j, t) in p.event_types.iter().enumerate() {
            if t.is_empty() || t.len() > 128 {
                out.push(
                    join_index(&join_key(&base, "event_types"), j),
                    "expected an event type of 1 to 128 bytes",
                );
            }
        }
        crate::leader::check_group(&p.group, &join_key(&base, "group"), out);
        out.range(join_key(&base, "batch"), p.batch as u64, 1, 10_000);
        out.range(join_key(&base, "retry_ms"), p.retry_ms, 1, 3_600_000);
        if p.retry_max_ms < p.retry_ms {
            out.push(
                join_key(&base, "retry_max_ms"),
                format!(
                    "must be at least retry_ms ({}) (got {})",
                    p.retry_ms, p.retry_max_ms
                ),
            );
        }
        if !p.config.is_object() && !p.config.is_null() {
            out.push(
                join_key(&base, "config"),
                format!("expected a table (got {})", json_kind(&p.config)),
            );
        }
    }
}
