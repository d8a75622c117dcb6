//! The `circuit-breaker` plugin.
//!
//! * Its state machine (`plugins/circuit-breaker/src/machine.rs`) has no Wasm imports, so it is
//!   compiled into this test binary as the module [`machine`]: its unit tests and property tests
//!   (`breaker::machine::tests::*`, in `machine_tests.rs` beside it) run here, in the root
//!   workspace that `cargo test --workspace` covers; the plugins workspace is built only for
//!   wasm32.
//! * End to end, through the real gateway and switchable upstreams ([`Switch`]): the breaker
//!   opens at the threshold, rejects fast while open, lets exactly the permitted probes through
//!   in half-open and closes after recovery (or re-opens); dry-run, forced-open and disabled
//!   modes; slow calls; the time-based window; per-upstream and per-endpoint keys; retries by an
//!   outer filter counted per attempt; the gauge in `/metrics`; bad configs refused by
//!   `ficus check` naming the key.

#[allow(dead_code, unreachable_pub)]
#[path = "../../plugins/circuit-breaker/src/machine.rs"]
mod machine;

use std::time::{Duration, Instant};

use crate::support::{metric, Cfg, Fixture, Gateway, Shared, Switch};

/// Everything the plugin imports.
const GRANTS: &str = r#"grants = ["state", "clock", "metrics", "log"]"#;

struct Env {
    gw: Gateway,
    basic: Switch,
    reopen: Switch,
    dry: Switch,
    forced: Switch,
    disabled: Switch,
    slow: Switch,
    time: Switch,
    shared: Switch,
    ep1: Switch,
    ep2: Switch,
    retry: Switch,
}

fn routes(ep1: &str, ep2: &str) -> String {
    format!(
        r#"
[[routes]]
name = "basic"
match = {{ path_prefix = "/basic" }}
upstream = "basic"
pipeline = [{{ plugin = "cb", config = {{ sliding_window_size = 10, minimum_calls = 10, failure_rate_threshold = 0.5, wait_in_open_ms = 1500, permitted_calls_in_half_open = 2 }} }}]

[[routes]]
name = "reopen"
match = {{ path_prefix = "/reopen" }}
upstream = "reopen"
pipeline = [{{ plugin = "cb", config = {{ sliding_window_size = 2, minimum_calls = 2, wait_in_open_ms = 1000, permitted_calls_in_half_open = 1 }} }}]

[[routes]]
name = "dry"
match = {{ path_prefix = "/dry" }}
upstream = "dry"
pipeline = [{{ plugin = "cb", config = {{ mode = "dry-run", sliding_window_size = 4, minimum_calls = 4 }} }}]

[[routes]]
name = "forced"
match = {{ path_prefix = "/forced" }}
upstream = "forced"
pipeline = [{{ plugin = "cb", config = {{ mode = "forced-open", wait_in_open_ms = 30000 }} }}]

[[routes]]
name = "disabled"
match = {{ path_prefix = "/disabled" }}
upstream = "disabled"
pipeline = [{{ plugin = "cb", config = {{ mode = "disabled", sliding_window_size = 2, minimum_calls = 2 }} }}]

[[routes]]
name = "slow"
match = {{ path_prefix = "/slow" }}
upstream = "slow"
pipeline = [{{ plugin = "cb", config = {{ sliding_window_size = 4, minimum_calls = 4, slow_call_duration_ms = 150, slow_call_rate_threshold = 0.5 }} }}]

[[routes]]
name = "time"
match = {{ path_prefix = "/time" }}
upstream = "time"
pipeline = [{{ plugin = "cb", config = {{ sliding_window_type = "time-based", sliding_window_size = 2, minimum_calls = 3 }} }}]

[[routes]]
name = "shared-a"
match = {{ path_prefix = "/shared-a" }}
upstream = "shared"
pipeline = [{{ plugin = "cb", config = {{ key = "upstream", upstream = "shared", sliding_window_size = 3, minimum_calls = 3 }} }}]

[[routes]]
name = "shared-b"
match = {{ path_prefix = "/shared-b" }}
upstream = "shared"
pipeline = [{{ plugin = "cb", config = {{ key = "upstream", upstream = "shared", sliding_window_size = 3, minimum_calls = 3 }} }}]

[[routes]]
name = "endpoint"
match = {{ path_prefix = "/endpoint" }}
upstream = "pair"
pipeline = [{{ plugin = "cb", config = {{ key = "endpoint", upstream = "pair", endpoints = ["{ep1}", "{ep2}"], sliding_window_size = 2, minimum_calls = 2 }} }}]

[[routes]]
name = "retry"
match = {{ path_prefix = "/retry" }}
upstream = "retry"
max_attempts = 3
pipeline = [
  {{ plugin = "probe", config = {{ retry_status = 500, retry_max = 3, retry_delay_ms = 1 }} }},
  {{ plugin = "cb", config = {{ sliding_window_size = 3, minimum_calls = 3 }} }},
]
"#
    )
}

static ENV: Shared<Env> = Shared::new(|| {
    let start = Switch::start;
    let (basic, reopen, dry, forced, disabled, slow) = (
        start("basic"),
        start("reopen"),
        start("dry"),
        start("forced"),
        start("disabled"),
        start("slow"),
    );
    let (time, shared, ep1, ep2, retry) = (
        start("time"),
        start("shared"),
        start("ep1"),
        start("ep2"),
        start("retry"),
    );
    let mut cfg = Cfg::new()
        .plugin("cb", Fixture::CircuitBreaker, GRANTS)
        .plugin(
            "probe",
            Fixture::Probe,
            r#"grants = ["log", "metrics", "state"]"#,
        );
    for up in [
        &basic, &reopen, &dry, &forced, &disabled, &slow, &time, &shared, &retry,
    ] {
        cfg = cfg.upstream(up.name(), &[up.endpoint()], "");
    }
    let cfg = cfg
        .upstream("pair", &[ep1.endpoint(), ep2.endpoint()], "")
        .toml(&routes(&ep1.endpoint(), &ep2.endpoint()));
    Env {
        gw: Gateway::start(&cfg),
        basic,
        reopen,
        dry,
        forced,
        disabled,
        slow,
        time,
        shared,
        ep1,
        ep2,
        retry,
    }
});

/// What a test needs to know about one response.
#[derive(Debug)]
struct Seen {
    status: u16,
    /// `x-circuit-breaker`: set on the breaker's own rejections.
    breaker: Option<String>,
    retry_after: Option<String>,
    upstream: Option<String>,
    took: Duration,
}

async fn get(gw: &Gateway, path: &str) -> Seen {
    let started = Instant::now();
    let resp = gw.get(path).send().await;
    Seen {
        status: resp.status,
        breaker: resp.header("x-circuit-breaker"),
        retry_after: resp.header("retry-after"),
        upstream: resp.header("x-upstream"),
        took: started.elapsed(),
    }
}

/// Send `n` requests at once.
async fn burst(gw: &Gateway, path: &str, n: usize) -> Vec<Seen> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let req = gw.get(path);
        set.spawn(async move {
            let resp = req.send().await;
            Seen {
                status: resp.status,
                breaker: resp.header("x-circuit-breaker"),
                retry_after: resp.header("retry-after"),
                upstream: resp.header("x-upstream"),
                took: Duration::ZERO,
            }
        });
    }
    let mut out = Vec::new();
    while let Some(seen) = set.join_next().await {
        out.push(seen.expect("a request task"));
    }
    out
}

/// Assert a rejection by the breaker (not by the upstream).
#[track_caller]
fn assert_rejected(seen: &Seen, state: &str) {
    assert_eq!(seen.status, 503, "{seen:?}");
    assert_eq!(seen.breaker.as_deref(), Some(state), "{seen:?}");
    assert_eq!(
        seen.upstream, None,
        "the upstream must not answer: {seen:?}"
    );
    let secs: u64 = seen
        .retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric retry-after: {seen:?}"));
    assert!(secs >= 1, "{seen:?}");
}

/// Assert an answer of the upstream, let through.
#[track_caller]
fn assert_passed(seen: &Seen, status: u16, upstream: &str) {
    assert_eq!(seen.status, status, "{seen:?}");
    assert_eq!(seen.upstream.as_deref(), Some(upstream), "{seen:?}");
    assert_eq!(seen.breaker, None, "{seen:?}");
}

async fn gauge(gw: &Gateway, breaker: &str) -> Option<f64> {
    metric(
        &gw.metrics().await,
        "circuit_breaker_state",
        &[("breaker", breaker), ("plugin", "cb")],
    )
}

async fn transitions(gw: &Gateway, breaker: &str, from: &str, to: &str) -> f64 {
    metric(
        &gw.metrics().await,
        "circuit_breaker_transitions_total",
        &[("breaker", breaker), ("from", from), ("to", to)],
    )
    .unwrap_or(0.0)
}

async fn calls(gw: &Gateway, breaker: &str, outcome: &str) -> f64 {
    metric(
        &gw.metrics().await,
        "circuit_breaker_calls_total",
        &[("breaker", breaker), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

async fn wait_for_transition(gw: &Gateway, line: &str) -> String {
    gw.wait_for_log(line, |e| e.contains(line)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_at_the_threshold_rejects_fast_probes_exactly_and_closes() {
    let env = ENV.get();
    let (gw, up) = (&env.gw, &env.basic);
    let _watch = gw.watch();

    // 5 successes and 4 failures: 9 calls, below minimum_calls = 10.
    for status in [200, 200, 200, 200, 200, 500, 500, 500, 500] {
        up.set_status(status);
        assert_passed(&get(gw, "/basic").await, status, "basic");
    }
    assert_eq!(gauge(gw, "basic").await, Some(0.0), "closed");
    // The 10th call makes it 5 failures in 10 = 50 %: it still passes, and trips the breaker.
    assert_passed(&get(gw, "/basic").await, 500, "basic");
    let entry = wait_for_transition(
        gw,
        "circuit breaker \"basic\" (route): closed -> open (failure rate 50% (5 of 10 calls))",
    )
    .await;
    assert!(entry.contains("WARN"), "{entry}");
    assert_eq!(gauge(gw, "basic").await, Some(1.0), "open");
    assert_eq!(transitions(gw, "basic", "closed", "open").await, 1.0);

    // Open: rejected at once, the upstream sees nothing.
    let hits = up.hits();
    assert_eq!(hits, 10);
    up.set_status(200);
    for _ in 0..5 {
        let seen = get(gw, "/basic").await;
        assert_rejected(&seen, "open");
        assert!(seen.took < Duration::from_millis(500), "not fast: {seen:?}");
        assert!(seen.retry_after.as_deref() <= Some("2"), "{seen:?}");
    }
    assert_eq!(up.hits(), hits, "requests reached the upstream while open");
    assert_eq!(calls(gw, "basic", "not_permitted").await, 5.0);

    // After wait_in_open (1.5 s): half-open lets exactly 2 probes through, even when 6
    // requests arrive at once (the probes take 1 s at the upstream).
    tokio::time::sleep(Duration::from_millis(1600)).await;
    up.set_delay(Duration::from_millis(1000));
    let seen = burst(gw, "/basic", 6).await;
    let passed = seen.iter().filter(|s| s.status == 200).count();
    assert_eq!(passed, 2, "{seen:#?}");
    for s in seen.iter().filter(|s| s.status != 200) {
        assert_rejected(s, "half-open");
    }
    assert_eq!(
        up.hits(),
        hits + 2,
        "exactly the permitted probes reached the upstream"
    );
    wait_for_transition(gw, "circuit breaker \"basic\" (route): open -> half-open").await;
    // Both probes succeeded: closed again.
    wait_for_transition(
        gw,
        "circuit breaker \"basic\" (route): half-open -> closed (2 probe calls: 0 failed, 0 slow)",
    )
    .await;
    assert_eq!(gauge(gw, "basic").await, Some(0.0));
    up.set_delay(Duration::ZERO);
    assert_passed(&get(gw, "/basic").await, 200, "basic");
    assert_eq!(transitions(gw, "basic", "half-open", "closed").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_reopens_and_a_good_one_closes() {
    let env = ENV.get();
    let (gw, up) = (&env.gw, &env.reopen);
    let _watch = gw.watch();
    up.set_status(502);
    assert_passed(&get(gw, "/reopen").await, 502, "reopen");
    assert_passed(&get(gw, "/reopen").await, 502, "reopen");
    assert_rejected(&get(gw, "/reopen").await, "open");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The probe fails: open again, for another wait.
    assert_passed(&get(gw, "/reopen").await, 502, "reopen");
    wait_for_transition(
        gw,
        "circuit breaker \"reopen\" (route): half-open -> open (probe failure rate 100% (1 of 1 calls))",
    )
    .await;
    let hits = up.hits();
    assert_rejected(&get(gw, "/reopen").await, "open");
    assert_eq!(up.hits(), hits);
    assert_eq!(gauge(gw, "reopen").await, Some(1.0));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    up.set_status(200);
    assert_passed(&get(gw, "/reopen").await, 200, "reopen");
    wait_for_transition(
        gw,
        "circuit breaker \"reopen\" (route): half-open -> closed",
    )
    .await;
    assert_passed(&get(gw, "/reopen").await, 200, "reopen");
    assert_eq!(gauge(gw, "reopen").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_never_blocks_but_reports_the_transitions() {
    let env = ENV.get();
    let (gw, up) = (&env.gw, &env.dry);
    let _watch = gw.watch();
    up.set_status(500);
    for _ in 0..10 {
        assert_passed(&get(gw, "/dry").await, 500, "dry");
    }
    assert_eq!(up.hits(), 10, "dry-run let every request through");
    let entry = wait_for_transition(
        gw,
        "[dry-run] circuit breaker \"dry\" (route): closed -> open (failure rate 100% (4 of 4 calls))",
    )
    .await;
    assert!(
        entry.contains("route=dry") || entry.contains("route=\"dry\""),
        "{entry}"
    );
    assert_eq!(
        gauge(gw, "dry").await,
        Some(1.0),
        "the shadow state is open"
    );
    assert_eq!(transitions(gw, "dry", "closed", "open").await, 1.0);
    assert_eq!(calls(gw, "dry", "dry_run_not_permitted").await, 6.0);
    assert_eq!(calls(gw, "dry", "not_permitted").await, 0.0);
    assert_eq!(calls(gw, "dry", "failure").await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_open_blocks_and_disabled_never_does() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    for _ in 0..3 {
        let seen = get(gw, "/forced").await;
        assert_rejected(&seen, "forced-open");
        assert_eq!(seen.retry_after.as_deref(), Some("30"), "{seen:?}");
    }
    assert_eq!(env.forced.hits(), 0);
    assert_eq!(gauge(gw, "forced").await, Some(4.0));

    env.disabled.set_status(500);
    for _ in 0..6 {
        assert_passed(&get(gw, "/disabled").await, 500, "disabled");
    }
    assert_eq!(env.disabled.hits(), 6);
    assert_eq!(gauge(gw, "disabled").await, Some(3.0));
    assert_eq!(transitions(gw, "disabled", "closed", "open").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_trip_it() {
    let env = ENV.get();
    let (gw, up) = (&env.gw, &env.slow);
    let _watch = gw.watch();
    up.set_delay(Duration::from_millis(300));
    for _ in 0..4 {
        // Successful but slow: 300 ms > slow_call_duration_ms = 150.
        assert_passed(&get(gw, "/slow").await, 200, "slow");
    }
    wait_for_transition(
        gw,
        "circuit breaker \"slow\" (route): closed -> open (slow-call rate 100% (4 of 4 calls))",
    )
    .await;
    let seen = get(gw, "/slow").await;
    assert_rejected(&seen, "open");
    assert!(seen.took < Duration::from_millis(300), "{seen:?}");
    assert_eq!(up.hits(), 4);
    assert_eq!(calls(gw, "slow", "slow_success").await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_based_window_forgets_old_failures() {
    let env = ENV.get();
    let (gw, up) = (&env.gw, &env.time);
    let _watch = gw.watch();
    up.set_status(500);
    assert_passed(&get(gw, "/time").await, 500, "time");
    assert_passed(&get(gw, "/time").await, 500, "time");
    // The window is 2 s: these two failures leave it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_passed(&get(gw, "/time").await, 500, "time");
    assert_passed(&get(gw, "/time").await, 500, "time");
    assert_eq!(
        gauge(gw, "time").await,
        Some(0.0),
        "2 calls in the window < 3"
    );
    assert_passed(&get(gw, "/time").await, 500, "time");
    wait_for_transition(
        gw,
        "circuit breaker \"time\" (route): closed -> open (failure rate 100% (3 of 3 calls))",
    )
    .await;
    assert_rejected(&get(gw, "/time").await, "open");
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_upstream_breaker_is_shared_by_the_routes_using_it() {
    let env = ENV.get();
    let (gw, up) = (&env.gw, &env.shared);
    let _watch = gw.watch();
    up.set_status(503);
    for _ in 0..3 {
        assert_passed(&get(gw, "/shared-a").await, 503, "shared");
    }
    // Tripped through route a; route b is rejected too.
    assert_rejected(&get(gw, "/shared-b").await, "open");
    assert_rejected(&get(gw, "/shared-a").await, "open");
    assert_eq!(up.hits(), 3);
    let text = gw.metrics().await;
    for route in ["shared-a", "shared-b"] {
        assert_eq!(
            metric(
                &text,
                "circuit_breaker_state",
                &[("breaker", "shared"), ("key", "upstream"), ("route", route)]
            ),
            Some(1.0),
            "{route}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_endpoint_breaker_routes_around_an_open_endpoint() {
    let env = ENV.get();
    let (gw, ep1, ep2) = (&env.gw, &env.ep1, &env.ep2);
    let _watch = gw.watch();
    ep1.set_status(500);
    let mut sent = 0;
    while ep1.hits() < 2 {
        sent += 1;
        assert!(sent <= 20, "ep1 was never chosen");
        let seen = get(gw, "/endpoint").await;
        match seen.upstream.as_deref() {
            Some("ep1") => assert_eq!(seen.status, 500, "{seen:?}"),
            _ => assert_passed(&seen, 200, "ep2"),
        }
    }
    let name = format!("pair/{}", ep1.endpoint());
    wait_for_transition(
        gw,
        &format!("circuit breaker \"{name}\" (endpoint): closed -> open"),
    )
    .await;
    // ep1 is open: every request goes to ep2.
    for _ in 0..6 {
        assert_passed(&get(gw, "/endpoint").await, 200, "ep2");
    }
    assert_eq!(ep1.hits(), 2);
    assert_eq!(gauge(gw, &name).await, Some(1.0));
    assert_eq!(
        gauge(gw, &format!("pair/{}", ep2.endpoint())).await,
        Some(0.0)
    );
    // ep2 fails too: its window of 2 holds a success and a failure (50 %), so it opens, and
    // with both endpoints open the request is rejected.
    ep2.set_status(500);
    assert_passed(&get(gw, "/endpoint").await, 500, "ep2");
    let hits = ep2.hits();
    assert_rejected(&get(gw, "/endpoint").await, "open");
    assert_eq!((ep1.hits(), ep2.hits()), (2, hits));
    assert_eq!(calls(gw, &name, "not_permitted").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_retried_request_is_recorded() {
    let env = ENV.get();
    let (gw, up) = (&env.gw, &env.retry);
    let _watch = gw.watch();
    up.set_status(500);
    // One client request, three upstream attempts (the outer `probe` retries): three
    // failures, enough for the window of 3.
    assert_passed(&get(gw, "/retry").await, 500, "retry");
    assert_eq!(up.hits(), 3);
    wait_for_transition(
        gw,
        "circuit breaker \"retry\" (route): closed -> open (failure rate 100% (3 of 3 calls))",
    )
    .await;
    assert_rejected(&get(gw, "/retry").await, "open");
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauge_is_in_admin_metrics() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    env.disabled.set_status(200);
    get(gw, "/disabled").await;
    let text = gw.metrics().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("circuit_breaker_state{") && l.contains("breaker=\"disabled\""))
        .unwrap_or_else(|| panic!("no circuit_breaker_state for `disabled` in:\n{text}"));
    for label in [
        "plugin=\"cb\"",
        "route=\"disabled\"",
        "key=\"route\"",
        "breaker=\"disabled\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    assert!(line.ends_with(" 3"), "{line}");
}

#[test]
fn bad_configs_are_refused_by_check_naming_the_key() {
    let cases = [
        (
            "{ failure_rate_threshold = 1.5 }",
            "config.failure_rate_threshold: 1.5 is not a rate in (0, 1]",
        ),
        (
            "{ slow_call_rate_threshold = -0.2 }",
            "config.slow_call_rate_threshold: -0.2 is not a rate in (0, 1]",
        ),
        (
            r#"{ failure_statuses = ["5xx", "6xx"] }"#,
            "config.failure_statuses[1]: \"6xx\" is not a status class",
        ),
        (
            r#"{ ignore_statuses = [700] }"#,
            "config.ignore_statuses[0]: 700 is not an HTTP status",
        ),
        (
            r#"{ failure_errors = ["refused"] }"#,
            "config.failure_errors[0]: \"refused\" is not an upstream error kind",
        ),
        (
            "{ wait_in_open_ms = -1 }",
            "config.wait_in_open_ms: invalid value: integer `-1`",
        ),
        (
            "{ minimum_calls = 0 }",
            "config.minimum_calls: must be at least 1",
        ),
        (
            r#"{ key = "upstream" }"#,
            "config.upstream: required when key = \"upstream\"",
        ),
        (
            r#"{ key = "endpoint", upstream = "main" }"#,
            "config.endpoints: required when key = \"endpoint\"",
        ),
        (
            r#"{ mode = "half-open" }"#,
            "config.mode: unknown variant `half-open`",
        ),
        ("{ failure_rate = 0.5 }", "unknown field `failure_rate`"),
    ];
    let mut routes = String::new();
    for (i, (config, _)) in cases.iter().enumerate() {
        routes.push_str(&format!(
            "[[routes]]\nname = \"bad{i}\"\nmatch = {{ path_prefix = \"/bad{i}\" }}\n\
             upstream = \"main\"\npipeline = [{{ plugin = \"cb\", config = {config} }}]\n\n"
        ));
    }
    let checked = Cfg::new()
        .plugin("cb", Fixture::CircuitBreaker, GRANTS)
        .upstream("main", &["127.0.0.1:9".to_owned()], "")
        .toml(&routes)
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    for (i, (_, message)) in cases.iter().enumerate() {
        let route = format!("route \"bad{i}\"");
        assert!(
            checked
                .stderr
                .lines()
                .any(|l| l.contains(&route) && l.contains(message)),
            "expected an error for {route} with {message:?}\n{checked}"
        );
    }
}

#[test]
fn check_accepts_a_full_config_and_refuses_a_missing_clock_grant() {
    let full = r#"{ key = "route", name = "orders", mode = "normal",
        sliding_window_type = "count-based", sliding_window_size = 50, minimum_calls = 20,
        failure_rate_threshold = 0.4, slow_call_rate_threshold = 0.8, slow_call_duration_ms = 2000,
        wait_in_open_ms = 10000, wait_in_open_multiplier = 2.0, max_wait_in_open_ms = 120000,
        permitted_calls_in_half_open = 3, max_wait_in_half_open_ms = 30000,
        failure_statuses = ["5xx", 429, "400-403"], ignore_statuses = [501],
        failure_errors = ["connect-failed", "timeout"], reject_status = 429,
        reject_body = "busy", retry_after = false, state_ttl_ms = 0 }"#;
    let route = |plugin: &str| {
        format!(
            "[[routes]]\nname = \"r-{plugin}\"\nmatch = {{ path_prefix = \"/{plugin}\" }}\n\
             upstream = \"main\"\npipeline = [{{ plugin = \"{plugin}\", config = {} }}]\n",
            full.replace('\n', " ")
        )
    };
    let ok = Cfg::new()
        .plugin("cb", Fixture::CircuitBreaker, GRANTS)
        .upstream("main", &["127.0.0.1:9".to_owned()], "")
        .toml(&route("cb"))
        .check();
    assert_eq!(ok.code, Some(0), "{ok}");

    let no_clock = Cfg::new()
        .plugin(
            "cb",
            Fixture::CircuitBreaker,
            r#"grants = ["state", "metrics", "log"]"#,
        )
        .upstream("main", &["127.0.0.1:9".to_owned()], "")
        .toml(&route("cb"))
        .check();
    assert_eq!(no_clock.code, Some(2), "{no_clock}");
    assert!(
        no_clock.stderr.contains("grant the plugin \\\"clock\\\"")
            || no_clock.stderr.contains("grant the plugin \"clock\""),
        "{no_clock}"
    );
}
