//! `[[projections]]`: defaults, cross references, grants and bad values, against real TOML text.

mod common;

use common::{assert_error, errors, parse};

const PLUGIN: &str = "[plugins.proj]\nsource = \"proj.wasm\"\ngrants = [\"log\"]\n";

#[test]
fn defaults_and_groups() {
    let config = parse(&format!(
        "{PLUGIN}[[projections]]\nname = \"orders\"\nplugin = \"proj\"\n\
         [[projections]]\nname = \"totals\"\nplugin = \"proj\"\nstream_prefix = \"order-\"\n\
         event_types = [\"OrderPaid\"]\ngroup = \"readers\"\nbatch = 10\nretry_ms = 5\n\
         retry_max_ms = 50\nconfig = {{ currency = \"EUR\" }}\n"
    ));
    let [a, b] = config.projections.as_slice() else {
        panic!("two projections")
    };
    assert_eq!(
        (a.group.as_str(), a.batch, a.retry_ms, a.retry_max_ms),
        ("default", 256, 100, 30_000)
    );
    assert_eq!((a.stream_prefix.as_deref(), a.event_types.len()), (None, 0));
    assert_eq!(a.config_json(), "{}");
    assert_eq!(b.stream_prefix.as_deref(), Some("order-"));
    assert_eq!(b.event_types, ["OrderPaid"]);
    assert_eq!((b.batch, b.retry_ms, b.retry_max_ms), (10, 5, 50));
    assert_eq!(b.config_json(), r#"{"currency":"EUR"}"#);
    let groups: Vec<String> = config.leader_groups().into_iter().collect();
    assert_eq!(groups, ["default", "readers"]);
}

#[test]
fn bad_projections_are_reported_with_key_paths() {
    let e = errors(&format!(
        "{PLUGIN}[[projections]]\nname = \"orders\"\nplugin = \"porj\"\n\
         [[projections]]\nname = \"orders\"\nplugin = \"proj\"\nstream_prefix = \"\"\n\
         event_types = [\"\"]\ngroup = \"Bad\"\nbatch = 0\nretry_ms = 10\nretry_max_ms = 5\n\
         config = 3\n"
    ));
    let paths: Vec<&str> = e.iter().map(|e| e.key_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "projections[0].plugin",
            "projections[1].name",
            "projections[1].stream_prefix",
            "projections[1].event_types[0]",
            "projections[1].group",
            "projections[1].batch",
            "projections[1].retry_max_ms",
            "projections[1].config",
        ],
        "{e:#?}"
    );
    assert_error(
        &e[0],
        "projections[0].plugin",
        6,
        "unknown plugin \"porj\" (known: proj)",
    );
    assert_error(
        &e[1],
        "projections[1].name",
        8,
        "duplicate projection name \"orders\" (already used by projections[0])",
    );
    assert_error(&e[5], "projections[1].batch", 13, "");
    assert_error(
        &e[6],
        "projections[1].retry_max_ms",
        15,
        "must be at least retry_ms (10)",
    );
    assert_error(
        &e[7],
        "projections[1].config",
        16,
        "expected a table (got a number)",
    );
}

#[test]
fn a_projection_cannot_be_granted_the_event_store_or_side_effects() {
    let e = errors(
        "[plugins.proj]\nsource = \"p.wasm\"\ngrants = [\"events\", \"pubsub\"]\n\
         [[projections]]\nname = \"m\"\nplugin = \"proj\"\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_error(
        &e[0],
        "plugins.proj.grants",
        3,
        "cannot be granted \"events\" (expected a subset of log, metrics, read-model, clock)",
    );
    assert!(e[1].message.contains("\"pubsub\""), "{e:#?}");
}

#[test]
fn unknown_keys_and_missing_fields_are_shape_errors() {
    let e = errors(&format!(
        "{PLUGIN}[[projections]]\nname = \"m\"\nplugin = \"proj\"\nfrom = 0\n"
    ));
    assert!(e[0].message.contains("unknown field `from`"), "{e:#?}");
    let e = errors(&format!("{PLUGIN}[[projections]]\nname = \"m\"\n"));
    assert!(e[0].message.contains("missing field `plugin`"), "{e:#?}");
}

#[test]
fn schema_describes_projections() {
    let schema = ficus_config::schema();
    assert!(schema.contains("\"projections\""));
    assert!(schema.contains("stream_prefix"));
}
