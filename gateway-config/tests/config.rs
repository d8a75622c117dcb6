//! Loading, validation and error reporting of `ficus-config`, against real TOML text.

use std::path::{Path, PathBuf};

use ficus_config::{
    load, parse_str, schema, BackendKind, Config, ConfigError, ConfigErrors, Grant, InstanceMode,
    LbPolicy, OnError, PathRule,
};

const FILE: &str = "conf/gateway.toml";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    parse_str(text, Path::new(FILE))
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.0,
    }
}

/// The single error of `text`.
fn error(text: &str) -> ConfigError {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got: {all:#?}");
    all.remove(0)
}

/// Asserts an error's key path, line and message substring.
#[track_caller]
fn assert_error(e: &ConfigError, key_path: &str, line: usize, message: &str) {
    assert_eq!(e.key_path, key_path, "key path of {e}");
    assert_eq!(e.line, Some(line), "line of {e}");
    assert!(
        e.message.contains(message),
        "message of {e}\n  expected to contain: {message}"
    );
    assert_eq!(e.file, PathBuf::from(FILE));
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

// ---------------------------------------------------------------------------------------------
// Examples and defaults

#[test]
fn quickstart_example_loads() {
    let path = example("quickstart.toml");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.admin.to_string(), "127.0.0.1:9901");
    assert_eq!(config.plugins["hello"].grants, vec![Grant::Log]);
    assert!(config.plugins["headers"].grants.is_empty());
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.handler.as_deref(), Some("hello"));
    assert_eq!(route.match_.path_rule(), PathRule::Prefix("/"));
    assert_eq!(
        route.pipeline[0].config_json(),
        r#"{"response":{"set":{"x-powered-by":"ficus"}}}"#
    );
    assert_eq!(
        config.resolve(&config.plugins["hello"].source),
        path.parent().unwrap().join("../../target/wasm/hello.wasm")
    );
}

#[test]
fn full_example_loads_and_shows_the_defaults() {
    let config = load(&example("full.toml")).unwrap_or_else(|e| panic!("{e}"));
    let defaults = Config::default();
    assert_eq!(config.server, defaults.server);
    assert_eq!(config.backend, defaults.backend);
    let mut plugin = config.plugins["example"].clone();
    // The example also shows the optional canary, with every key at its default.
    let canary = plugin
        .canary
        .take()
        .expect("the full example shows a canary");
    assert_eq!(plugin, ficus_config::Plugin::new("plugins/example.wasm"));
    assert_eq!(
        canary.source,
        std::path::Path::new("plugins/example-v2.wasm")
    );
    assert_eq!(
        (canary.percent, canary.max_error_rate, canary.max_latency_ms),
        (10, 0.01, 10.0)
    );
    assert_eq!((canary.min_requests, canary.promote_after), (20, 1000));
    assert_eq!(
        config.upstreams["example"],
        ficus_config::Upstream::new(["127.0.0.1:9001", "localhost:9002"])
    );
    let api = &config.routes[0];
    assert_eq!(api.max_attempts, 1);
    assert!(!api.plugin_body);
    assert_eq!(api.match_.methods, ["GET", "POST"]);
    assert_eq!(api.pipeline[0].config_json(), "{}");
    assert_eq!(config.route_name(1), "site");
}

#[test]
fn empty_file_is_all_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config, Config::default());
    let s = &config.server;
    assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.admin.to_string(), "127.0.0.1:9901");
    assert_eq!(s.admin_token, None);
    assert_eq!(s.max_header_bytes, 16384);
    assert_eq!(s.max_headers, 100);
    assert_eq!(s.max_request_body_bytes, 1 << 20);
    assert_eq!(s.max_response_body_bytes, 8 << 20);
    assert_eq!(s.shutdown_grace_ms, 10_000);
    assert_eq!(s.cache_dir, PathBuf::from(".ficus-cache"));
    assert!(s.http2);
    assert_eq!(config.backend.kind, BackendKind::Embedded);
    assert_eq!(config.backend.data_dir, PathBuf::from("./data"));
    assert!(config.validate().is_ok());
}

#[test]
fn plugin_upstream_and_route_defaults() {
    let config = parse(
        r#"
[plugins.p]
source = "p.wasm"
[upstreams.u]
endpoints = ["u.internal:80"]
[[routes]]
upstream = "u"
"#,
    )
    .unwrap();
    let p = &config.plugins["p"];
    assert!(p.grants.is_empty());
    assert_eq!(p.on_error, OnError::FailClosed);
    assert_eq!(p.timeout_ms, 100);
    assert_eq!(p.memory_limit_bytes, 16 << 20);
    assert_eq!(p.instances, InstanceMode::Pooled);
    assert_eq!(p.pool_size, 32);
    let u = &config.upstreams["u"];
    assert_eq!(u.connect_timeout_ms, 1000);
    assert_eq!(u.timeout_ms, 15_000);
    assert_eq!(u.lb, LbPolicy::RoundRobin);
    let r = &config.routes[0];
    assert_eq!(r.name, None);
    assert_eq!(config.route_name(0), "routes[0]");
    assert_eq!(r.match_, ficus_config::Match::default());
    assert!(r.pipeline.is_empty());
    assert_eq!(r.max_attempts, 1);
    assert!(!r.plugin_body);
    assert_eq!(r, &ficus_config::Route::to_upstream("u"));
}

#[test]
fn enums_parse_from_their_toml_spelling() {
    let config = parse(
        r#"
[plugins.p]
source = "p.wasm"
grants = ["log", "metrics", "state", "clock"]
on_error = "fail-open"
instances = "fresh"
[upstreams.u]
endpoints = ["[::1]:80"]
lb = "random"
[[routes]]
upstream = "u"
"#,
    )
    .unwrap();
    let p = &config.plugins["p"];
    assert_eq!(
        p.grants,
        [Grant::Log, Grant::Metrics, Grant::State, Grant::Clock]
    );
    assert_eq!(p.on_error, OnError::FailOpen);
    assert_eq!(p.instances, InstanceMode::Fresh);
    assert_eq!(config.upstreams["u"].lb, LbPolicy::Random);
}

#[test]
fn matches_are_normalised_and_helpers_work() {
    let config = parse(
        r#"
[upstreams.u]
endpoints = ["127.0.0.1:1"]
[[routes]]
match = { path_prefix = "/orders", methods = ["get", "Post"], host = "API.Example.com", headers = { "X-Env" = "canary" } }
upstream = "u"
"#,
    )
    .unwrap();
    let m = &config.routes[0].match_;
    assert_eq!(m.methods, ["GET", "POST"]);
    assert_eq!(m.host.as_deref(), Some("api.example.com"));
    assert_eq!(m.headers.get("x-env").map(String::as_str), Some("canary"));
    assert!(m.matches_path("/orders"));
    assert!(m.matches_path("/orders/7"));
    assert!(!m.matches_path("/orders-admin"));
    assert!(m.matches_host("api.EXAMPLE.com:8080"));
    assert!(!m.matches_host("example.com"));
    assert!(m.matches_method("get"));
    assert!(!m.matches_method("DELETE"));
}

#[test]
fn paths_resolve_against_the_config_directory() {
    let config = parse("").unwrap();
    assert_eq!(config.file(), Path::new(FILE));
    assert_eq!(config.base_dir(), Path::new("conf"));
    assert_eq!(config.resolve("a.wasm"), PathBuf::from("conf/a.wasm"));
    assert_eq!(config.resolve("/abs/a.wasm"), PathBuf::from("/abs/a.wasm"));
    let bare = parse_str("", Path::new("gateway.toml")).unwrap();
    assert_eq!(bare.base_dir(), Path::new("."));
    assert_eq!(Config::default().resolve("x"), PathBuf::from("./x"));
}

#[test]
fn pipeline_config_json() {
    let config = parse(
        r#"
[plugins.headers]
source = "h.wasm"
[upstreams.u]
endpoints = ["127.0.0.1:1"]
[[routes]]
upstream = "u"
pipeline = [
  { plugin = "headers", config = { request = { set = { "x-a" = "1" }, remove = ["x-b"] } } },
  { plugin = "headers" },
]
"#,
    )
    .unwrap();
    let steps = &config.routes[0].pipeline;
    let json: serde_json::Value = serde_json::from_str(&steps[0].config_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "request": { "set": { "x-a": "1" }, "remove": ["x-b"] } })
    );
    assert_eq!(steps[1].config_json(), "{}");
}

// ---------------------------------------------------------------------------------------------
// Parse errors: syntax, unknown fields, types, enum values

#[test]
fn syntax_error_has_line_and_column() {
    let e = error("[server]\nlisten = \"127.0.0.1:8080\"\nadmin = \n");
    assert_eq!(e.line, Some(3));
    assert!(e.column.is_some());
    assert!(!e.message.is_empty());
    assert!(e.to_string().starts_with("conf/gateway.toml:3:"), "{e}");
}

#[test]
fn unknown_field_names_the_field_and_the_expected_ones() {
    let e = error("[server]\nlisten = \"127.0.0.1:8080\"\nlistne = \"x\"\n");
    assert_error(&e, "server.listne", 3, "unknown field `listne`");
    assert!(e.message.contains("`listen`"), "{e}");
    assert_eq!(e.column, Some(1));
}

#[test]
fn unknown_field_inside_an_inline_table() {
    let text = r#"
[upstreams.u]
endpoints = ["127.0.0.1:1"]

[[routes]]
upstream = "u"

[[routes]]
upstream = "u"
match = { path_prefix = "/a", method = ["GET"] }
"#;
    let e = error(text);
    assert_error(&e, "routes[1].match.method", 10, "unknown field `method`");
    assert!(e.message.contains("`methods`"), "{e}");
}

#[test]
fn unknown_top_level_table() {
    let e = error("[server]\n\n[plugin.x]\nsource = \"x.wasm\"\n");
    assert_eq!(e.line, Some(3));
    assert!(e.key_path.starts_with("plugin"), "{e}");
    assert!(e.message.contains("unknown field `plugin`"), "{e}");
}

#[test]
fn wrong_type_has_line_and_key_path() {
    let e = error("[server]\nmax_headers = \"many\"\n");
    assert_error(&e, "server.max_headers", 2, "invalid type");
}

#[test]
fn bad_enum_value() {
    let text = "[plugins.p]\nsource = \"p.wasm\"\ngrants = [\"log\", \"network\"]\n";
    let e = error(text);
    assert_error(&e, "plugins.p.grants[1]", 3, "unknown variant `network`");
    assert!(e.message.contains("`clock`"), "{e}");
}

#[test]
fn unknown_backend_kind() {
    let e = error("[backend]\nkind = \"redis\"\n");
    assert_error(
        &e,
        "backend.kind",
        2,
        "unknown backend kind \"redis\" (expected: embedded, nats)",
    );
}

#[test]
fn nats_backend() {
    let config = parse(
        "[backend]\nkind = \"nats\"\nservers = [\"nats://127.0.0.1:4222\", \"tls://nats.example:4222\"]\n\
         credentials = \"ficus.creds\"\nevents_stream = \"ORDERS_EVENTS\"\nreadmodels_stream = \"ORDERS_RM\"\nreplicas = 3\n",
    )
    .unwrap();
    assert_eq!(config.backend.kind, BackendKind::Nats);
    assert_eq!(config.backend.servers.len(), 2);
    assert_eq!(
        config.backend.credentials.as_deref(),
        Some(Path::new("ficus.creds"))
    );
    assert_eq!(config.backend.events_stream(), "ORDERS_EVENTS");
    assert_eq!(config.backend.readmodels_stream(), "ORDERS_RM");
    assert_eq!(config.backend.replicas(), 3);
    // Defaults.
    let config =
        parse("[backend]\nkind = \"nats\"\nservers = [\"nats://127.0.0.1:4222\"]\n").unwrap();
    assert_eq!(config.backend.events_stream(), "FICUS_EVENTS");
    assert_eq!(config.backend.readmodels_stream(), "FICUS_READMODELS");
    assert_eq!(config.backend.replicas(), 1);
    assert_eq!(config.backend.credentials, None);
}

#[test]
fn nats_backend_bad_inputs() {
    let e = error("[backend]\nkind = \"nats\"\n");
    assert_error(&e, "backend.servers", 1, "list at least one NATS server");
    let e =
        error("[backend]\nkind = \"nats\"\nservers = [\"nats://a:4222\", \"127.0.0.1:4222\"]\n");
    assert_error(
        &e,
        "backend.servers[1]",
        3,
        "\"127.0.0.1:4222\" is not a NATS URL (expected nats://host:port or tls://host:port)",
    );
    let e = error("[backend]\nkind = \"nats\"\nservers = [\"nats://a:4222\"]\nreplicas = 2\n");
    assert_error(&e, "backend.replicas", 4, "must be 1, 3 or 5 (got 2)");
    let e = error(
        "[backend]\nkind = \"nats\"\nservers = [\"nats://a:4222\"]\nevents_stream = \"my.events\"\n",
    );
    assert_error(
        &e,
        "backend.events_stream",
        4,
        "\"my.events\" is not a JetStream stream name",
    );
    let e = error(
        "[backend]\nkind = \"nats\"\nservers = [\"nats://a:4222\"]\nreadmodels_stream = \"rm>\"\n",
    );
    assert_error(
        &e,
        "backend.readmodels_stream",
        4,
        "\"rm>\" is not a JetStream stream name",
    );
    let e = error(
        "[backend]\nkind = \"nats\"\nservers = [\"nats://a:4222\"]\nreadmodels_stream = \"FICUS_EVENTS\"\n",
    );
    assert_error(
        &e,
        "backend.readmodels_stream",
        4,
        "must differ from backend.events_stream",
    );
    let e = error("[backend]\nkind = \"nats\"\nservers = \"nats://a:4222\"\n");
    assert_error(&e, "backend.servers", 3, "invalid type");
    let e = error("[backend]\nkind = \"nats\"\nservers = [\"nats://a:4222\"]\nreplica = 3\n");
    assert!(e.message.contains("unknown field `replica`"), "{e}");
    // NATS keys on the embedded backend.
    let e = error("[backend]\nservers = [\"nats://a:4222\"]\n");
    assert_error(
        &e,
        "backend.servers",
        2,
        "only used with kind = \"nats\" (the backend is \"embedded\")",
    );
    let all = errors("[backend]\nreplicas = 3\nevents_stream = \"X\"\nreadmodels_stream = \"Y\"\n");
    let keys: Vec<&str> = all.iter().map(|e| e.key_path.as_str()).collect();
    assert_eq!(
        keys,
        [
            "backend.replicas",
            "backend.events_stream",
            "backend.readmodels_stream"
        ]
    );
}

#[test]
fn bad_listen_address() {
    let e = error("[server]\n\nlisten = \"127.0.0.1\"\n");
    assert_error(
        &e,
        "server.listen",
        3,
        "invalid listen address \"127.0.0.1\" (expected ip:port",
    );
}

#[test]
fn missing_required_field() {
    let e = error("[plugins.p]\ngrants = []\n");
    assert_eq!(e.line, Some(1), "{e}");
    assert_eq!(e.key_path, "plugins.p");
    assert!(e.message.contains("missing field `source`"), "{e}");
}

#[test]
fn unreadable_file() {
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("does-not-exist.toml");
    let errors = load(&missing).unwrap_err();
    let e = &errors.0[0];
    assert_eq!(e.file, missing);
    assert_eq!(e.key_path, "");
    assert_eq!(e.line, None);
    assert!(e.message.contains("cannot read"), "{e}");
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));
}

// ---------------------------------------------------------------------------------------------
// Validation errors

const PLUGINS: &str = r#"
[plugins.ambassador]
source = "a.wasm"

[plugins.breaker]
source = "b.wasm"

[upstreams.orders]
endpoints = ["127.0.0.1:9001"]
"#;

/// `PLUGINS` (9 lines, the last one blank) followed by `routes`.
fn with_plugins(routes: &str) -> String {
    format!("{PLUGINS}{routes}")
}

#[test]
fn unknown_plugin_in_pipeline() {
    let text = with_plugins(
        r#"
[[routes]]
upstream = "orders"
pipeline = [
  { plugin = "ambassador" },
  { plugin = "brekaer" },
]
"#,
    );
    let e = error(&text);
    assert_error(
        &e,
        "routes[0].pipeline[1].plugin",
        15,
        r#"unknown plugin "brekaer" (known: ambassador, breaker)"#,
    );
    assert_eq!(
        e.to_string(),
        "conf/gateway.toml:15:14: routes[0].pipeline[1].plugin: unknown plugin \"brekaer\" \
         (known: ambassador, breaker)"
    );
}

#[test]
fn unknown_plugin_in_a_pipeline_written_as_tables() {
    let text = with_plugins(
        r#"
[[routes]]
upstream = "orders"

[[routes.pipeline]]
plugin = "breaker"

[[routes.pipeline]]
plugin = "nope"
"#,
    );
    let e = error(&text);
    assert_error(
        &e,
        "routes[0].pipeline[1].plugin",
        18,
        "unknown plugin \"nope\"",
    );
}

#[test]
fn unknown_upstream_and_handler() {
    let text = with_plugins(
        r#"
[[routes]]
match = { path_prefix = "/a" }
upstream = "ordrs"

[[routes]]
handler = "helo"
"#,
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_error(
        &all[0],
        "routes[0].upstream",
        13,
        r#"unknown upstream "ordrs" (known: orders)"#,
    );
    assert_error(
        &all[1],
        "routes[1].handler",
        16,
        r#"unknown plugin "helo" (known: ambassador, breaker)"#,
    );
}

#[test]
fn upstream_xor_handler() {
    let text = with_plugins(
        r#"
[[routes]]
match = { path = "/a" }
upstream = "orders"
handler = "ambassador"

[[routes]]
name = "empty"
"#,
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_error(
        &all[0],
        "routes[0]",
        11,
        r#"expected exactly one of "upstream" or "handler""#,
    );
    assert_error(
        &all[1],
        "routes[1]",
        16,
        r#"expected exactly one of "upstream" or "handler""#,
    );
}

#[test]
fn bad_endpoints() {
    let text = r#"
[upstreams.orders]
endpoints = [
  "127.0.0.1:9001",
  "127.0.0.1",
  "orders.internal:0",
  "bad host:80",
  "127.0.0.1:9001",
]

[upstreams.empty]
endpoints = []
"#;
    let all = errors(text);
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_error(
        &all[0],
        "upstreams.orders.endpoints[1]",
        5,
        r#"invalid address "127.0.0.1" (expected host:port)"#,
    );
    assert_error(
        &all[1],
        "upstreams.orders.endpoints[2]",
        6,
        "invalid port in \"orders.internal:0\"",
    );
    assert_error(
        &all[2],
        "upstreams.orders.endpoints[3]",
        7,
        "invalid host in \"bad host:80\"",
    );
    assert_error(
        &all[3],
        "upstreams.orders.endpoints[4]",
        8,
        r#"duplicate endpoint "127.0.0.1:9001" (already at endpoints[0])"#,
    );
    assert_error(
        &all[4],
        "upstreams.empty.endpoints",
        12,
        "expected at least one endpoint",
    );
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let e = error("[server]\nadmin = \"0.0.0.0:9901\"\n");
    assert_error(
        &e,
        "server.admin",
        2,
        "admin listener 0.0.0.0:9901 is not loopback: set server.admin_token",
    );
    assert!(parse("[server]\nadmin = \"0.0.0.0:9901\"\nadmin_token = \"s\"\n").is_ok());
    assert!(parse("[server]\nadmin = \"[::1]:9901\"\n").is_ok());
}

#[test]
fn duplicate_route_names() {
    let text = with_plugins(
        r#"
[[routes]]
name = "orders"
match = { path = "/a" }
upstream = "orders"

[[routes]]
name = "orders"
match = { path = "/b" }
upstream = "orders"
"#,
    );
    let e = error(&text);
    assert_error(
        &e,
        "routes[1].name",
        17,
        r#"duplicate route name "orders" (already used by routes[0])"#,
    );
}

#[test]
fn same_match_is_unreachable() {
    let text = with_plugins(
        r#"
[[routes]]
name = "a"
match = { path_prefix = "/orders", methods = ["GET", "POST"] }
upstream = "orders"

[[routes]]
name = "b"
match = { methods = ["post", "get"], path_prefix = "/orders" }
upstream = "orders"
"#,
    );
    let e = error(&text);
    assert_error(
        &e,
        "routes[1].match",
        18,
        r#"route "b" has the same match as route "a" (routes[0]) and can never be reached"#,
    );
}

#[test]
fn default_matches_are_the_same() {
    let text = with_plugins(
        r#"
[[routes]]
upstream = "orders"

[[routes]]
match = { path_prefix = "/" }
upstream = "orders"
"#,
    );
    let e = error(&text);
    assert_error(
        &e,
        "routes[1].match",
        15,
        "routes[1] has the same match as routes[0] and can never be reached",
    );
}

#[test]
fn shadowed_prefix_is_unreachable() {
    let text = with_plugins(
        r#"
[[routes]]
name = "all-orders"
match = { path_prefix = "/orders" }
upstream = "orders"

[[routes]]
name = "one-order"
upstream = "orders"
match = { path_prefix = "/orders/v2", methods = ["GET"] }

[[routes]]
name = "not-shadowed"
upstream = "orders"
match = { path_prefix = "/orders-admin" }
"#,
    );
    let e = error(&text);
    assert_error(
        &e,
        "routes[1].match",
        19,
        r#"route "one-order" is shadowed by route "all-orders" (routes[0])"#,
    );
    assert!(e.message.contains("can never be reached"), "{e}");
}

#[test]
fn narrower_earlier_routes_do_not_shadow() {
    let text = with_plugins(
        r#"
[[routes]]
match = { path_prefix = "/orders", methods = ["GET"] }
upstream = "orders"

[[routes]]
match = { path_prefix = "/orders", host = "a.example" }
upstream = "orders"

[[routes]]
match = { path_prefix = "/orders", headers = { "x-env" = "canary" } }
upstream = "orders"

[[routes]]
match = { path = "/orders" }
upstream = "orders"

[[routes]]
match = { path_prefix = "/orders" }
upstream = "orders"
"#,
    );
    // Each earlier route is narrower than every later one in some condition (method, host,
    // header or exact path), so none is shadowed.
    parse(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn duplicate_grants() {
    let e = error("[plugins.p]\nsource = \"p.wasm\"\ngrants = [\"log\", \"state\", \"log\"]\n");
    assert_error(
        &e,
        "plugins.p.grants[2]",
        3,
        r#"duplicate grant "log" (already at grants[0])"#,
    );
}

#[test]
fn sync_calls_refuse_grants_whose_functions_wait() {
    let e = error(
        "[plugins.p]\nsource = \"p.wasm\"\ngrants = [\"log\", \"state\", \"pubsub\"]\ncalls = \"sync\"\n",
    );
    assert_error(
        &e,
        "plugins.p.calls",
        4,
        r#"calls = "sync" cannot be combined with the grants "state", "pubsub" (their host functions wait)"#,
    );
    // Grants that answer at once are fine, and so is async with any grant.
    parse("[plugins.p]\nsource = \"p.wasm\"\ngrants = [\"log\", \"metrics\", \"leader\", \"clock\"]\ncalls = \"sync\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    parse("[plugins.p]\nsource = \"p.wasm\"\ngrants = [\"state\"]\ncalls = \"async\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bad_plugin_and_upstream_names() {
    let text = r#"
[plugins.Breaker]
source = "b.wasm"

[plugins."_x"]
source = "x.wasm"

[upstreams."Orders v2"]
endpoints = ["127.0.0.1:1"]
"#;
    let all = errors(text);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_error(
        &all[0],
        "plugins.Breaker",
        2,
        r#"invalid plugin name "Breaker" (expected lowercase letters"#,
    );
    assert_error(&all[1], "plugins._x", 5, r#"invalid plugin name "_x""#);
    assert_error(
        &all[2],
        "upstreams.\"Orders v2\"",
        8,
        r#"invalid upstream name "Orders v2""#,
    );
}

#[test]
fn plugin_used_both_as_handler_and_in_a_pipeline_is_fine() {
    let text = with_plugins(
        r#"
[[routes]]
handler = "breaker"
pipeline = [{ plugin = "breaker" }]
"#,
    );
    parse(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn match_rules() {
    let text = with_plugins(
        r#"
[[routes]]
match = { path = "/a", path_prefix = "/a" }
upstream = "orders"

[[routes]]
match = { path_prefix = "orders" }
upstream = "orders"

[[routes]]
match = { path = "/b", methods = ["GET", "G T", "get"], host = "api.example.com:8080" }
upstream = "orders"

[[routes]]
match = { path = "/c", headers = { "x y" = "1" } }
upstream = "orders"
"#,
    );
    let all = errors(&text);
    let summary: Vec<(String, Option<usize>)> =
        all.iter().map(|e| (e.key_path.clone(), e.line)).collect();
    assert_eq!(
        summary,
        [
            ("routes[0].match".to_owned(), Some(12)),
            ("routes[1].match.path_prefix".to_owned(), Some(16)),
            ("routes[2].match.methods[1]".to_owned(), Some(20)),
            ("routes[2].match.methods[2]".to_owned(), Some(20)),
            ("routes[2].match.host".to_owned(), Some(20)),
            ("routes[3].match.headers.\"x y\"".to_owned(), Some(24)),
        ]
    );
    assert!(all[0]
        .message
        .contains(r#"expected at most one of "path" or "path_prefix""#));
    assert!(all[1]
        .message
        .contains(r#"path_prefix "orders" must start with "/""#));
    assert!(all[2].message.contains(r#"invalid HTTP method "G T""#));
    assert!(all[3]
        .message
        .contains(r#"duplicate method "get" (already at methods[0])"#));
    assert!(all[4].message.contains("must not include a port"));
    assert!(all[5].message.contains(r#"invalid header name "x y""#));
}

#[test]
fn ranges() {
    let text = r#"
[server]
max_header_bytes = 10
max_headers = 0

[plugins.p]
source = "p.wasm"
timeout_ms = 0
memory_limit_bytes = 1024
pool_size = 2000

[upstreams.u]
endpoints = ["127.0.0.1:1"]
connect_timeout_ms = 0

[[routes]]
upstream = "u"
max_attempts = 11
"#;
    let all = errors(text);
    let summary: Vec<(&str, Option<usize>)> =
        all.iter().map(|e| (e.key_path.as_str(), e.line)).collect();
    assert_eq!(
        summary,
        [
            ("server.max_header_bytes", Some(3)),
            ("server.max_headers", Some(4)),
            ("plugins.p.timeout_ms", Some(8)),
            ("plugins.p.memory_limit_bytes", Some(9)),
            ("plugins.p.pool_size", Some(10)),
            ("upstreams.u.connect_timeout_ms", Some(14)),
            ("routes[0].max_attempts", Some(18)),
        ]
    );
    assert!(all[0]
        .message
        .contains("must be between 1024 and 1048576 (got 10)"));
    assert!(all[6].message.contains("must be between 1 and 10 (got 11)"));
}

#[test]
fn pipeline_config_must_be_a_table() {
    let text = with_plugins(
        r#"
[[routes]]
upstream = "orders"
pipeline = [{ plugin = "breaker", config = "fast" }]
"#,
    );
    let e = error(&text);
    assert_error(
        &e,
        "routes[0].pipeline[0].config",
        13,
        "expected a table (got a string)",
    );
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    let text = r#"[server]
admin = "10.0.0.1:9901"

[plugins.breaker]
source = "b.wasm"
grants = ["log", "log"]

[upstreams.orders]
endpoints = ["127.0.0.1"]

[[routes]]
name = "a"
upstream = "ordrs"
pipeline = [{ plugin = "brekaer" }]

[[routes]]
name = "a"
handler = "breaker"
"#;
    let errors = parse(text).unwrap_err();
    let lines: Vec<Option<usize>> = errors.iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        [
            Some(2),
            Some(6),
            Some(9),
            Some(13),
            Some(14),
            Some(16),
            Some(17)
        ],
        "{errors}"
    );
    let rendered = errors.to_string();
    assert_eq!(rendered.lines().count(), 7, "{rendered}");
    let expected = [
        "conf/gateway.toml:2:9: server.admin: admin listener 10.0.0.1:9901 is not loopback",
        "conf/gateway.toml:6:18: plugins.breaker.grants[1]: duplicate grant \"log\"",
        "conf/gateway.toml:9:14: upstreams.orders.endpoints[0]: invalid address \"127.0.0.1\"",
        "conf/gateway.toml:13:12: routes[0].upstream: unknown upstream \"ordrs\" (known: orders)",
        "conf/gateway.toml:14:24: routes[0].pipeline[0].plugin: unknown plugin \"brekaer\"",
        "conf/gateway.toml:16:1: routes[1].match: route \"a\" has the same match as route \"a\"",
        "conf/gateway.toml:17:8: routes[1].name: duplicate route name \"a\"",
    ];
    for (line, want) in rendered.lines().zip(expected) {
        assert!(
            line.starts_with(want),
            "{line}\n  expected to start with: {want}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Errors reported later by the host

#[test]
fn error_at_locates_host_errors() {
    let text = with_plugins(
        r#"
[[routes]]
match = { path = "/x" }
upstream = "orders"
pipeline = [
  { plugin = "breaker", config = { window = -1 } },
]

[[routes]]
upstream = "orders"
"#,
    );
    let config = parse(&text).unwrap();
    let e = config.error_at("plugins.breaker.source", "cannot load component: not found");
    assert_eq!(e.line, Some(6));
    assert_eq!(
        e.to_string(),
        "conf/gateway.toml:6:10: plugins.breaker.source: cannot load component: not found"
    );
    let e = config.error_at("routes[0].pipeline[0].config", "window must be positive");
    assert_eq!(e.line, Some(15));
    assert_eq!(e.key_path, "routes[0].pipeline[0].config");
    // An absent key falls back to the nearest enclosing one.
    let e = config.error_at("plugins.ambassador.timeout_ms", "too slow");
    assert_eq!(e.line, Some(2));
    // Unknown paths and configs built in code have no position.
    assert_eq!(config.error_at("nowhere", "x").line, None);
    let e = Config::default().error_at("server.listen", "address in use");
    assert_eq!(e.to_string(), "server.listen: address in use");
}

// ---------------------------------------------------------------------------------------------
// Schema

#[test]
fn schema_is_json_and_describes_routes() {
    let text = schema();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(text.contains("\"routes\""));
    let properties = &value["properties"];
    for key in ["server", "backend", "plugins", "upstreams", "routes"] {
        assert!(properties.get(key).is_some(), "schema lacks {key}");
    }
    assert!(text.contains("fail-closed"));
    assert!(text.contains("round-robin"));
    assert!(text.contains("\"match\""));
}

#[test]
fn canary_budgets_are_validated() {
    let text = r#"
[plugins.p]
source = "p.wasm"
canary = { source = "p2.wasm", percent = 150, max_error_rate = 1.5, min_requests = 50, promote_after = 10 }
"#;
    let errors = parse(text).unwrap_err().to_string();
    assert!(errors.contains("plugins.p.canary.percent"), "{errors}");
    assert!(
        errors.contains("plugins.p.canary.max_error_rate"),
        "{errors}"
    );
    assert!(
        errors.contains("plugins.p.canary.promote_after: 10 is below min_requests (50)"),
        "{errors}"
    );
}

#[test]
fn cqrs_example_loads() {
    let path = example("cqrs.toml");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.plugins["orders"].grants, vec![Grant::Events]);
    assert_eq!(config.routes[0].handler.as_deref(), Some("orders"));
    assert_eq!(
        config.resolve(&config.plugins["orders"].source),
        path.parent()
            .unwrap()
            .join("../../target/wasm/orders-command.wasm")
    );
    assert_eq!(
        config.plugins["orders-query"].grants,
        vec![Grant::ReadModel]
    );
    assert_eq!(config.routes[1].handler.as_deref(), Some("orders-query"));
    let p = &config.projections[0];
    assert_eq!(
        (
            p.name.as_str(),
            p.plugin.as_str(),
            p.stream_prefix.as_deref()
        ),
        ("orders", "orders-projection", Some("order-"))
    );
    assert_eq!((p.group.as_str(), p.batch), ("default", 256));
    assert!(config.leader_groups().contains("default"));
}
