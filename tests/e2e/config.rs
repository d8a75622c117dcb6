//! Config errors as `ficus check` and `ficus run` report them — located by file, line, column
//! and key path — and `ficus check` on a good config.

use crate::support::{position_of, Cfg, Fixture, Gateway};

/// An endpoint for configs that are checked, never served.
const NOWHERE: &str = "127.0.0.1:9";

/// Assert that `stderr` has the line `error: <file>:<line>:<col>: <key_path>: <message>` with
/// the position of `needle` in the config text.
fn assert_error_at(
    stderr: &str,
    file: &std::path::Path,
    text: &str,
    needle: &str,
    key_path: &str,
    message: &str,
) {
    let (line, column) = position_of(text, needle);
    let want = format!(
        "error: {}:{line}:{column}: {key_path}: {message}",
        file.display()
    );
    assert!(
        stderr.lines().any(|l| l == want),
        "expected the line\n  {want}\nin stderr:\n{stderr}"
    );
}

/// Built plugins that belong to another suite (`host/benches`), not to this one.
const BENCHMARK_PLUGINS: [&str; 2] = ["bench-read.wasm", "bench-copy.wasm"];

#[test]
fn every_built_plugin_is_a_known_fixture() {
    let mut known: Vec<&str> = Fixture::ALL.iter().map(|f| f.file_name()).collect();
    known.extend(BENCHMARK_PLUGINS);
    known.extend(crate::reload::FIXTURES);
    known.extend(crate::strangler::FIXTURES);
    known.extend(crate::cqrs::FIXTURES);
    known.extend(crate::projection::FIXTURES);
    known.extend(crate::leader::FIXTURES);
    known.extend(crate::pubsub::FIXTURES);
    known.push("shard-router.wasm"); // tested by tests/e2e/shard.rs
    let mut built = Vec::new();
    for entry in std::fs::read_dir(ficus::WASM_DIR).expect("the plugin directory exists") {
        let name = entry.expect("a directory entry").file_name();
        let name = name.to_string_lossy().into_owned();
        if name.ends_with(".wasm") {
            built.push(name);
        }
    }
    for name in &built {
        assert!(
            known.contains(&name.as_str()),
            "{name} is built but the e2e suite does not know it: add it to support::Fixture and \
             test it"
        );
    }
    for fixture in Fixture::ALL {
        assert!(fixture.path().is_file());
    }
}

#[test]
fn check_accepts_a_good_config() {
    let checked = Cfg::new()
        .plugin("headers", Fixture::Headers, "")
        .plugin(
            "probe",
            Fixture::Probe,
            r#"grants = ["log", "metrics", "state"]"#,
        )
        .plugin("hello", Fixture::Hello, "")
        .upstream("main", &[NOWHERE.to_owned()], "")
        .toml(
            r#"
            [[routes]]
            name = "orders"
            match = { path_prefix = "/orders" }
            upstream = "main"
            pipeline = [
              { plugin = "headers", config = { request = { set = { x-env = "test" } } } },
              { plugin = "probe", config = { tag = "x" } },
            ]

            [[routes]]
            name = "hello"
            match = { path_prefix = "/hello" }
            handler = "hello"
            "#,
        )
        .check();
    assert_eq!(checked.code, Some(0), "{checked}");
    assert!(
        checked
            .stdout
            .contains(": ok (3 plugins, 1 upstreams, 2 routes)"),
        "{checked}"
    );
    assert!(
        checked.stdout.contains("route orders: [headers -> probe]"),
        "{checked}"
    );
    assert!(checked.stdout.contains("route hello: []"), "{checked}");
    assert!(!checked.stderr.contains("error"), "{checked}");
}

/// Two misspelt plugin names in two routes.
fn misspelt_plugins() -> Cfg {
    Cfg::new()
        .plugin("breaker", Fixture::Headers, "")
        .plugin("ambassador", Fixture::Headers, "")
        .upstream("main", &[NOWHERE.to_owned()], "")
        .toml(
            r#"
            [[routes]]
            name = "orders"
            match = { path_prefix = "/orders" }
            upstream = "main"
            pipeline = [
              { plugin = "brekaer" },
            ]

            [[routes]]
            name = "payments"
            match = { path_prefix = "/payments" }
            upstream = "main"
            pipeline = [
              { plugin = "breaker" },
              { plugin = "ambasador" },
            ]
            "#,
        )
}

#[test]
fn unknown_plugins_are_reported_at_their_lines() {
    let checked = misspelt_plugins().check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert_error_at(
        &checked.stderr,
        &checked.file,
        &checked.text,
        "\"brekaer\"",
        "routes[0].pipeline[0].plugin",
        "unknown plugin \"brekaer\" (known: ambassador, breaker)",
    );
    assert_error_at(
        &checked.stderr,
        &checked.file,
        &checked.text,
        "\"ambasador\"",
        "routes[1].pipeline[1].plugin",
        "unknown plugin \"ambasador\" (known: ambassador, breaker)",
    );
    assert!(checked.stdout.is_empty(), "{checked}");
}

#[test]
fn run_refuses_an_invalid_config() {
    let cfg = misspelt_plugins();
    let err = match Gateway::try_start(&cfg) {
        Ok(gw) => panic!(
            "the gateway started on {} with an invalid config",
            gw.addr()
        ),
        Err(err) => err,
    };
    assert_eq!(err.code, Some(2), "{err}");
    assert!(
        err.stderr
            .contains("routes[0].pipeline[0].plugin: unknown plugin \"brekaer\""),
        "{err}"
    );
    assert!(
        err.stderr
            .contains("routes[1].pipeline[1].plugin: unknown plugin \"ambasador\""),
        "{err}"
    );
}

#[test]
fn syntax_error_is_reported_at_its_line() {
    let checked = Cfg::new()
        .upstream("main", &[NOWHERE.to_owned()], "")
        .toml(
            r#"
            [[routes]]
            name = "broken
            upstream = "main"
            "#,
        )
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    let (line, _) = position_of(&checked.text, "name = \"broken");
    let prefix = format!("error: {}:{line}:", checked.file.display());
    assert!(
        checked.stderr.lines().any(|l| l.starts_with(&prefix)),
        "expected an error starting with {prefix:?}\n{checked}"
    );
}

#[test]
fn unknown_key_is_reported_with_its_path() {
    let checked = Cfg::new().server(r#"lisen = "127.0.0.1:8080""#).check();
    assert_eq!(checked.code, Some(2), "{checked}");
    let (line, _) = position_of(&checked.text, "lisen");
    let prefix = format!("error: {}:{line}:", checked.file.display());
    assert!(
        checked
            .stderr
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains("lisen")),
        "expected an error about `lisen` at line {line}\n{checked}"
    );
}

#[test]
fn plugin_rejecting_its_config_is_reported_at_the_step() {
    let checked = Cfg::new()
        .plugin("headers", Fixture::Headers, "")
        .plugin(
            "probe",
            Fixture::Probe,
            r#"grants = ["log", "metrics", "state"]"#,
        )
        .upstream("main", &[NOWHERE.to_owned()], "")
        .toml(
            r#"
            [[routes]]
            name = "orders"
            match = { path_prefix = "/orders" }
            upstream = "main"
            pipeline = [
              { plugin = "headers" },
              { plugin = "probe", config = { reject_config = true } },
            ]

            [[routes]]
            name = "typo"
            match = { path_prefix = "/typo" }
            upstream = "main"
            pipeline = [
              { plugin = "headers", config = { requets = { set = { x-a = "1" } } } },
            ]
            "#,
        )
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert_error_at(
        &checked.stderr,
        &checked.file,
        &checked.text,
        "{ reject_config = true }",
        "routes[0].pipeline[1].config",
        "plugin \"probe\" in route \"orders\": configure rejected the config: \
         probe: config rejected on purpose",
    );
    // Every rejected step is reported, not just the first.
    let (line, column) = position_of(&checked.text, "{ requets");
    let location = format!(
        "{}:{line}:{column}: routes[1].pipeline[0].config: ",
        checked.file.display()
    );
    assert!(
        checked.stderr.lines().any(|l| l.contains(&location)
            && l.contains("requets")
            && l.contains("route \"typo\"")),
        "expected an error at {location} naming `requets`\n{checked}"
    );
}

#[test]
fn unloadable_plugin_sources_are_reported() {
    let checked = Cfg::new()
        .plugin_source("ghost", "missing/ghost.wasm", "")
        // The config file itself: it exists, but is not a component.
        .plugin_source("garbage", "gateway.toml", "")
        .upstream("main", &[NOWHERE.to_owned()], "")
        .toml(
            r#"
            [[routes]]
            name = "r"
            upstream = "main"
            pipeline = [{ plugin = "ghost" }, { plugin = "garbage" }]
            "#,
        )
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    let dir = checked.file.parent().expect("the config's directory");
    // Relative sources are resolved against the config file's directory.
    let ghost = dir.join("missing/ghost.wasm");
    let ghost_error = checked
        .stderr
        .lines()
        .find(|l| l.contains("plugins.ghost.source: "))
        .unwrap_or_else(|| panic!("no error at plugins.ghost.source\n{checked}"));
    assert!(
        ghost_error.contains("cannot read") && ghost_error.contains(&ghost.display().to_string()),
        "{ghost_error}"
    );
    let garbage_error = checked
        .stderr
        .lines()
        .find(|l| l.contains("plugins.garbage.source: "))
        .unwrap_or_else(|| panic!("no error at plugins.garbage.source\n{checked}"));
    assert!(
        garbage_error.contains("not a valid component"),
        "{garbage_error}"
    );
}

#[test]
fn unreachable_route_is_reported() {
    let checked = Cfg::new()
        .upstream("main", &[NOWHERE.to_owned()], "")
        .toml(
            r#"
            [[routes]]
            name = "all-orders"
            match = { path_prefix = "/orders" }
            upstream = "main"

            [[routes]]
            name = "one-order"
            match = { path_prefix = "/orders/7", methods = ["GET"] }
            upstream = "main"
            "#,
        )
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    let (line, _) = position_of(&checked.text, "path_prefix = \"/orders/7\"");
    let prefix = format!("error: {}:{line}:", checked.file.display());
    assert!(
        checked.stderr.lines().any(|l| l.starts_with(&prefix)
            && l.contains("routes[1].match")
            && l.contains("route \"one-order\" is shadowed by route \"all-orders\"")),
        "expected a shadowing error at line {line}\n{checked}"
    );
}

#[test]
fn schema_command_prints_the_json_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .arg("schema")
        .output()
        .expect("run ficus schema");
    assert!(out.status.success(), "ficus schema failed: {out:?}");
    let schema: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("ficus schema prints JSON");
    let properties = &schema["properties"];
    for key in ["server", "backend", "plugins", "upstreams", "routes"] {
        assert!(
            properties.get(key).is_some(),
            "schema lacks {key}: {properties}"
        );
    }
}
