//! The pipeline: header edits, hook order, short-circuits, upstream choice by a filter,
//! retries, per-request context, path rewrites, state, replaced responses, and the log and
//! metrics capabilities — all through the real `headers` and `probe` plugins.

use std::collections::BTreeSet;

use crate::support::{
    dead_endpoint, has_field, metric, unique, Cfg, Fixture, Gateway, Shared, Upstream,
};

struct Env {
    gw: Gateway,
    main: Upstream,
    alt1: Upstream,
    alt2: Upstream,
}

/// `probe` imports log, metrics and state, so it needs all three grants.
const PROBE_GRANTS: &str = r#"grants = ["log", "metrics", "state"]"#;

const ROUTES: &str = r#"
[[routes]]
name = "headers"
match = { path_prefix = "/headers" }
upstream = "main"
pipeline = [
  { plugin = "headers", config = { request = { set = { x-set = "new" }, add = { x-add = "added" }, remove = ["x-remove-me"] }, response = { set = { x-resp-set = "yes" }, add = { x-resp-add = "r" }, remove = ["x-upstream"] } } },
]

[[routes]]
name = "order"
match = { path_prefix = "/order" }
upstream = "main"
pipeline = [
  { plugin = "probe", config = { tag = "A" } },
  { plugin = "probe", config = { tag = "B" } },
]

[[routes]]
name = "short"
match = { path_prefix = "/short" }
upstream = "main"
pipeline = [
  { plugin = "probe", config = { tag = "A" } },
  { plugin = "probe", config = { respond_if_header = "x-short" } },
  { plugin = "probe", config = { tag = "C" } },
]

[[routes]]
name = "short-status"
match = { path_prefix = "/forbidden" }
upstream = "main"
pipeline = [{ plugin = "probe", config = { respond_if_header = "x-short", respond_status = 403 } }]

[[routes]]
name = "choose"
match = { path_prefix = "/choose" }
upstream = "main"
pipeline = [{ plugin = "probe", config = { route_header = "x-cluster", report_attempt = true } }]

[[routes]]
name = "retry"
match = { path_prefix = "/retry" }
upstream = "main"
max_attempts = 3
pipeline = [
  { plugin = "probe", config = { report_attempt = true } },
  { plugin = "probe", config = { retry_status = 503, retry_max = 5 } },
]

[[routes]]
name = "retry-budget"
match = { path_prefix = "/budget" }
upstream = "main"
max_attempts = 5
pipeline = [
  { plugin = "probe", config = { report_attempt = true } },
  { plugin = "probe", config = { retry_status = 503, retry_max = 2 } },
]

[[routes]]
name = "retry-dead"
match = { path_prefix = "/dead" }
upstream = "dead"
max_attempts = 3
pipeline = [
  { plugin = "probe", config = { report_attempt = true } },
  { plugin = "probe", config = { retry_status = 502, retry_max = 5 } },
]

[[routes]]
name = "context"
match = { path_prefix = "/context" }
upstream = "main"
pipeline = [{ plugin = "probe", config = { context = true, rewrite_path = "/rewritten?by=probe" } }]

[[routes]]
name = "state"
match = { path_prefix = "/state" }
upstream = "main"
pipeline = [{ plugin = "probe", config = { use_state = true } }]

[[routes]]
name = "replace"
match = { path_prefix = "/replace" }
upstream = "main"
pipeline = [{ plugin = "probe", config = { replace_status = 203, tag = "R" } }]

[[routes]]
name = "fresh"
match = { path_prefix = "/fresh" }
upstream = "main"
pipeline = [{ plugin = "probe-fresh", config = { tag = "F", context = true } }]

[[routes]]
name = "caps"
match = { path_prefix = "/caps" }
upstream = "main"
pipeline = [{ plugin = "probe", config = { log_line = "probe says hello", metric = "probe_requests_total" } }]
"#;

static ENV: Shared<Env> = Shared::new(|| {
    let main = Upstream::start("main");
    let alt1 = Upstream::start("alt1");
    let alt2 = Upstream::start("alt2");
    let cfg = Cfg::new()
        .plugin("headers", Fixture::Headers, "")
        .plugin("probe", Fixture::Probe, PROBE_GRANTS)
        .plugin(
            "probe-fresh",
            Fixture::Probe,
            &format!("{PROBE_GRANTS}\ninstances = \"fresh\""),
        )
        .upstream("main", &[main.endpoint()], "")
        .upstream("alt", &[alt1.endpoint(), alt2.endpoint()], "")
        .upstream("dead", &[dead_endpoint()], "")
        .toml(ROUTES);
    Env {
        gw: Gateway::start(&cfg),
        main,
        alt1,
        alt2,
    }
});

#[tokio::test]
async fn headers_plugin_edits_request_and_response() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let resp = gw
        .get("/headers/x")
        .header("x-remove-me", "secret")
        .header("x-set", "old")
        .header("x-add", "orig")
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let echo = resp.echo();
    assert_eq!(echo.upstream, "main");
    // What the upstream received.
    assert_eq!(echo.header("x-set"), Some("new"), "{echo:?}");
    assert_eq!(echo.header("x-add"), Some("orig, added"), "{echo:?}");
    assert_eq!(echo.header("x-remove-me"), None, "{echo:?}");
    // What the client received.
    assert_eq!(
        resp.header("x-resp-set").as_deref(),
        Some("yes"),
        "{resp:?}"
    );
    assert_eq!(resp.header("x-resp-add").as_deref(), Some("r"), "{resp:?}");
    assert_eq!(
        resp.header("x-upstream"),
        None,
        "removed by the plugin: {resp:?}"
    );
    assert_eq!(
        resp.header("content-length").as_deref(),
        Some(resp.body.len().to_string().as_str()),
        "{resp:?}"
    );
}

#[tokio::test]
async fn on_request_runs_in_order_and_on_response_in_reverse() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let resp = gw.get("/order").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // Both set x-probe-req on the way in: B ran after A.
    assert_eq!(resp.echo().header("x-probe-req"), Some("B"), "{resp:?}");
    // On the way out B appends first, then A; A sets x-probe-resp last.
    assert_eq!(resp.header_all("x-probe-order"), ["B", "A"], "{resp:?}");
    assert_eq!(
        resp.header("x-probe-resp").as_deref(),
        Some("A"),
        "{resp:?}"
    );
}

#[tokio::test]
async fn short_circuit_skips_the_upstream_and_later_filters() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();

    let id = unique("short");
    let resp = gw
        .get("/short/1")
        .test_id(&id)
        .header("x-short", "1")
        .send()
        .await;
    assert_eq!(resp.status, 418, "{resp:?}");
    assert_eq!(resp.text(), "short-circuit by probe");
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(resp.header("x-upstream"), None, "{resp:?}");
    // Only the filter before the short-circuit sees the response; C never ran.
    assert_eq!(resp.header_all("x-probe-order"), ["A"], "{resp:?}");
    assert_eq!(env.main.count(&id), 0, "the upstream must not be called");

    // Without the header the whole pipeline and the upstream run.
    let resp = gw.get("/short/1").test_id(&id).send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.echo().header("x-probe-req"), Some("C"));
    assert_eq!(resp.header_all("x-probe-order"), ["C", "A"], "{resp:?}");
    assert_eq!(env.main.count(&id), 1);

    // The status of a direct response is the plugin's to choose.
    let id = unique("short");
    let resp = gw
        .get("/forbidden")
        .test_id(&id)
        .header("x-short", "yes")
        .send()
        .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.text(), "short-circuit by probe");
    assert_eq!(env.main.count(&id), 0);
}

#[tokio::test]
async fn filter_chooses_cluster_and_endpoint() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();

    // No choice: the route's upstream.
    let resp = gw.get("/choose").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.echo().upstream, "main");
    assert_eq!(resp.header("x-upstream-cluster").as_deref(), Some("main"));
    assert_eq!(
        resp.header("x-upstream-endpoint"),
        Some(env.main.endpoint()),
        "{resp:?}"
    );
    assert_eq!(resp.header("x-attempt").as_deref(), Some("1"));
    assert_eq!(resp.header("x-local").as_deref(), Some("false"));
    assert_eq!(resp.header("x-upstream-error"), None, "{resp:?}");

    // Another cluster, endpoint chosen by address.
    for target in [&env.alt2, &env.alt1, &env.alt2, &env.alt2] {
        let resp = gw
            .get("/choose")
            .header("x-cluster", "alt")
            .header("x-endpoint-key", &target.endpoint())
            .send()
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.echo().upstream, target.name(), "{resp:?}");
        assert_eq!(resp.header("x-upstream-cluster").as_deref(), Some("alt"));
        assert_eq!(resp.header("x-upstream-endpoint"), Some(target.endpoint()));
    }

    // Any other key always lands on the same endpoint.
    let mut landed = Vec::new();
    for _ in 0..4 {
        let resp = gw
            .get("/choose")
            .header("x-cluster", "alt")
            .header("x-endpoint-key", "user-42")
            .send()
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        landed.push(resp.echo().upstream);
    }
    assert!(landed.iter().all(|u| *u == landed[0]), "{landed:?}");

    // No key: the cluster's balancing spreads requests over both endpoints.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let resp = gw.get("/choose").header("x-cluster", "alt").send().await;
        seen.insert(resp.echo().upstream);
    }
    let want: BTreeSet<String> = ["alt1".to_owned(), "alt2".to_owned()].into();
    assert_eq!(seen, want, "round robin over alt");

    // A cluster that does not exist: 503, reported to the filter as no-endpoint.
    let resp = gw.get("/choose").header("x-cluster", "nope").send().await;
    resp.assert_gateway_error(503, "upstream_no_endpoint");
    assert_eq!(
        resp.header("x-upstream-error").as_deref(),
        Some("no-endpoint"),
        "{resp:?}"
    );
}

#[tokio::test]
async fn filter_retries_until_the_upstream_succeeds() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    for failures in [0usize, 1, 2] {
        let id = unique("retry");
        let resp = gw
            .get("/retry")
            .test_id(&id)
            .header("x-fail-first", &failures.to_string())
            .send()
            .await;
        assert_eq!(resp.status, 200, "{failures} failures: {resp:?}");
        assert_eq!(
            resp.header("x-attempt"),
            Some((failures + 1).to_string()),
            "{resp:?}"
        );
        assert_eq!(env.main.count(&id), failures + 1, "upstream calls");
    }
}

#[tokio::test]
async fn retries_are_capped_by_route_max_attempts() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    // The plugin would try 5 times; the route allows 3.
    let id = unique("capped");
    let resp = gw
        .get("/retry")
        .test_id(&id)
        .header("x-fail-first", "10")
        .send()
        .await;
    assert_eq!(
        resp.status, 503,
        "the last upstream answer is kept: {resp:?}"
    );
    assert_eq!(resp.header("x-upstream").as_deref(), Some("main"));
    assert_eq!(resp.header("x-attempt").as_deref(), Some("3"), "{resp:?}");
    assert_eq!(env.main.count(&id), 3);

    // The plugin's own limit (2 attempts) is lower than the route's (5).
    let id = unique("budget");
    let resp = gw
        .get("/budget")
        .test_id(&id)
        .header("x-fail-first", "10")
        .send()
        .await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("x-attempt").as_deref(), Some("2"), "{resp:?}");
    assert_eq!(env.main.count(&id), 2);
}

#[tokio::test]
async fn failed_connections_are_retried_and_reported_to_filters() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let resp = gw.get("/dead").send().await;
    resp.assert_gateway_error(502, "upstream_connect_failed");
    assert_eq!(resp.header("x-attempt").as_deref(), Some("3"), "{resp:?}");
    assert_eq!(
        resp.header("x-upstream-error").as_deref(),
        Some("connect-failed"),
        "{resp:?}"
    );
    assert_eq!(resp.header("x-upstream-cluster").as_deref(), Some("dead"));
    assert_eq!(resp.header("x-local").as_deref(), Some("false"));
}

#[tokio::test]
async fn context_round_trips_and_path_is_rewritten() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let resp = gw.get("/context/abc?q=1").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.echo().path, "/rewritten?by=probe", "{resp:?}");
    assert_eq!(
        resp.header("x-context-path").as_deref(),
        Some("/context/abc?q=1"),
        "{resp:?}"
    );
    // Context is per request: a second request sees its own value.
    let resp = gw.get("/context/other").send().await;
    assert_eq!(
        resp.header("x-context-path").as_deref(),
        Some("/context/other"),
        "{resp:?}"
    );
}

#[tokio::test]
async fn state_counter_persists_across_requests() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    let mut hits = Vec::new();
    for _ in 0..3 {
        let resp = gw.get("/state").send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-state-error"), None, "{resp:?}");
        let n: i64 = resp
            .header("x-hits")
            .unwrap_or_else(|| panic!("no x-hits: {resp:?}"))
            .parse()
            .expect("x-hits is a number");
        hits.push(n);
    }
    assert!(hits[0] >= 1, "{hits:?}");
    assert_eq!(hits, [hits[0], hits[0] + 1, hits[0] + 2]);
}

#[tokio::test]
async fn on_response_can_replace_the_response() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("replace");
    let resp = gw.get("/replace").test_id(&id).send().await;
    assert_eq!(resp.status, 203, "{resp:?}");
    assert_eq!(resp.text(), "replaced by probe");
    assert_eq!(resp.header("x-probe-resp").as_deref(), Some("R"));
    assert_eq!(
        resp.header("x-upstream"),
        None,
        "the upstream response is gone: {resp:?}"
    );
    assert_eq!(env.main.count(&id), 1, "the upstream was still called");
}

#[tokio::test]
async fn plugin_log_lines_and_metrics_are_attributed() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for _ in 0..2 {
        let resp = gw.get("/caps").send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.echo().header("x-metric-error"), None, "{resp:?}");
    }
    gw.wait_for_log("the probe's log line, with plugin and route", |e| {
        e.contains("probe says hello")
            && has_field(e, "plugin", "probe")
            && has_field(e, "route", "caps")
    })
    .await;
    let text = gw.metrics().await;
    let count = metric(
        &text,
        "probe_requests_total",
        &[("plugin", "probe"), ("route", "caps")],
    );
    assert!(
        count.is_some_and(|n| n >= 2.0),
        "probe_requests_total{{plugin=probe,route=caps}} = {count:?} in:\n{text}"
    );
}

#[tokio::test]
async fn fresh_instances_run_both_hooks_of_a_request() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for i in 0..3 {
        let path = format!("/fresh/{i}");
        let resp = gw.get(&path).send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.echo().header("x-probe-req"), Some("F"));
        assert_eq!(resp.header("x-probe-resp").as_deref(), Some("F"));
        assert_eq!(resp.header("x-context-path"), Some(path), "{resp:?}");
    }
}
