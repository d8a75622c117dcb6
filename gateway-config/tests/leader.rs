//! `[leader]` and `[[ticks]]`: defaults, the lease timing rule, intervals and cross references,
//! against real TOML text.

use std::path::Path;
use std::time::Duration;

mod common;

use common::{assert_error, errors, parse};

const PLUGIN: &str = "[plugins.cron]\nsource = \"cron.wasm\"\n";

#[test]
fn defaults_and_implicit_groups() {
    let config = parse("");
    assert_eq!(config.leader.lease_ttl_ms, 5000);
    assert_eq!(config.leader.renew_deadline_ms, 3000);
    assert_eq!(config.leader.retry_period_ms, 1000);
    assert_eq!(config.leader.node_id, None);
    assert!(config.ticks.is_empty());
    assert!(config.leader_groups().is_empty());

    let config = parse(&format!(
        "{PLUGIN}[leader]\nnode_id = \"a\"\ngroups = [\"projections\"]\n\
         [[ticks]]\nname = \"sweep\"\nplugin = \"cron\"\nevery = \"500ms\"\n\
         [[ticks]]\nname = \"report\"\nplugin = \"cron\"\nevery = \"1m\"\ngroup = \"reports\"\n\
         config = {{ mode = \"ok\" }}\n"
    ));
    assert_eq!(config.leader.node_id.as_deref(), Some("a"));
    assert_eq!(config.ticks[0].every.0, Duration::from_millis(500));
    assert_eq!(config.ticks[0].group, "default");
    assert_eq!(config.ticks[0].config_json(), "{}");
    assert_eq!(config.ticks[1].every.0, Duration::from_secs(60));
    assert_eq!(config.ticks[1].config_json(), r#"{"mode":"ok"}"#);
    let groups: Vec<String> = config.leader_groups().into_iter().collect();
    assert_eq!(groups, ["default", "projections", "reports"]);
}

#[test]
fn zero_ttl_is_rejected() {
    let e = errors("[leader]\nlease_ttl_ms = 0\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_error(&e[0], "leader.lease_ttl_ms", 2, "must be above 0");
    assert_error(
        &e[1],
        "leader.lease_ttl_ms",
        2,
        "must be above renew_deadline_ms (3000)",
    );
}

#[test]
fn timing_rule_is_enforced() {
    let e = errors("[leader]\nlease_ttl_ms = 3000\nrenew_deadline_ms = 3000\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_error(
        &e[0],
        "leader.lease_ttl_ms",
        2,
        "lease_ttl_ms > renew_deadline_ms > retry_period_ms > 0",
    );
    let e = errors("[leader]\nrenew_deadline_ms = 500\nretry_period_ms = 500\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_error(
        &e[0],
        "leader.renew_deadline_ms",
        2,
        "above retry_period_ms (500)",
    );
    let e = errors("[leader]\nretry_period_ms = 0\n");
    assert_error(&e[0], "leader.retry_period_ms", 2, "must be above 0");
    parse("[leader]\nlease_ttl_ms = 1500\nrenew_deadline_ms = 1000\nretry_period_ms = 250\n");
}

#[test]
fn bad_groups_and_node_ids() {
    let e = errors("[leader]\nnode_id = \" \"\ngroups = [\"a\", \"A b\", \"a\"]\n");
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_error(&e[0], "leader.node_id", 2, "must not be empty");
    assert_error(&e[1], "leader.groups[1]", 3, "invalid group name \"A b\"");
    assert_error(&e[2], "leader.groups[2]", 3, "duplicate group \"a\"");
}

#[test]
fn malformed_and_zero_intervals() {
    let e = errors(&format!(
        "{PLUGIN}[[ticks]]\nname = \"t\"\nplugin = \"cron\"\nevery = \"10 seconds\"\n"
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_error(
        &e[0],
        "ticks[0].every",
        6,
        "invalid interval \"10 seconds\"",
    );
    let e = errors(&format!(
        "{PLUGIN}[[ticks]]\nname = \"t\"\nplugin = \"cron\"\nevery = \"0s\"\n"
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_error(&e[0], "ticks[0].every", 6, "must be above zero");
    let e = errors(&format!(
        "{PLUGIN}[[ticks]]\nname = \"t\"\nplugin = \"cron\"\n"
    ));
    assert!(e[0].message.contains("missing field `every`"), "{e:#?}");
}

#[test]
fn tick_cross_references_and_names() {
    let e = errors(&format!(
        "{PLUGIN}[[ticks]]\nname = \"t\"\nplugin = \"crno\"\nevery = \"1s\"\n\
         [[ticks]]\nname = \"t\"\nplugin = \"cron\"\nevery = \"1s\"\ngroup = \"Bad\"\nconfig = 3\n"
    ));
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_error(
        &e[0],
        "ticks[0].plugin",
        5,
        "unknown plugin \"crno\" (known: cron)",
    );
    assert_error(
        &e[1],
        "ticks[1].name",
        8,
        "duplicate tick name \"t\" (already used by ticks[0])",
    );
    assert_error(&e[2], "ticks[1].group", 11, "invalid group name \"Bad\"");
    assert_error(
        &e[3],
        "ticks[1].config",
        12,
        "expected a table (got a number)",
    );
}

#[test]
fn schema_describes_leader_and_ticks() {
    let schema = ficus_config::schema();
    assert!(schema.contains("lease_ttl_ms"));
    assert!(schema.contains("\"ticks\""));
}

#[test]
fn full_example_shows_leader_and_ticks_at_their_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/full.toml");
    let config = ficus_config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.leader, ficus_config::Leader::default());
    let tick = &config.ticks[0];
    assert_eq!(
        (
            tick.name.as_str(),
            tick.plugin.as_str(),
            tick.group.as_str()
        ),
        ("sweep", "sweeper", "default")
    );
    assert_eq!(tick.every.0, Duration::from_secs(10));
    assert!(config.plugins.contains_key("sweeper"));
}
