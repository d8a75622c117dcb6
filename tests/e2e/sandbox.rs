//! The sandbox: plugins that loop, trap or exhaust memory fail their own requests (or are
//! skipped, when fail-open), are logged and counted, and leave every other route and the
//! process healthy. A plugin whose memory only grows is retired before it reaches its limit,
//! so no request fails. A plugin importing a capability it was not granted does not load.

use crate::support::{
    has_field, metric, position_of, unique, Cfg, Fixture, Gateway, Shared, Upstream,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Env {
    gw: Gateway,
    main: Upstream,
}

const MEMORY_LIMIT: u64 = 4 * 1024 * 1024;

const ROUTES: &str = r#"
[[routes]]
name = "loop"
match = { path_prefix = "/loop" }
upstream = "main"
pipeline = [{ plugin = "loop" }]

[[routes]]
name = "loop-open"
match = { path_prefix = "/open/loop" }
upstream = "main"
pipeline = [{ plugin = "loop-open" }]

[[routes]]
name = "trap"
match = { path_prefix = "/trap" }
upstream = "main"
pipeline = [{ plugin = "trap" }]

[[routes]]
name = "trap-open"
match = { path_prefix = "/open/trap" }
upstream = "main"
pipeline = [{ plugin = "trap-open" }]

[[routes]]
name = "hog"
match = { path_prefix = "/hog" }
upstream = "main"
pipeline = [{ plugin = "hog" }]

[[routes]]
name = "hog-open"
match = { path_prefix = "/open/hog" }
upstream = "main"
pipeline = [{ plugin = "hog-open" }]

[[routes]]
name = "leaky"
match = { path_prefix = "/leaky" }
upstream = "main"
pipeline = [{ plugin = "leaky", config = { leak_kib = 1024 } }]

[[routes]]
name = "healthy"
match = { path_prefix = "/healthy" }
upstream = "main"
pipeline = [{ plugin = "headers", config = { response = { set = { x-healthy = "yes" } } } }]
"#;

static ENV: Shared<Env> = Shared::new(|| {
    let main = Upstream::start("main");
    let hog = format!("memory_limit_bytes = {MEMORY_LIMIT}\ntimeout_ms = 5000");
    let cfg = Cfg::new()
        .plugin("loop", Fixture::Loop, "timeout_ms = 50")
        .plugin(
            "loop-open",
            Fixture::Loop,
            "timeout_ms = 50\non_error = \"fail-open\"",
        )
        // A deadline the trap cannot reach even on a busy machine, so it always traps.
        .plugin("trap", Fixture::Trap, "timeout_ms = 5000")
        .plugin(
            "trap-open",
            Fixture::Trap,
            "timeout_ms = 5000\non_error = \"fail-open\"",
        )
        .plugin("hog", Fixture::MemoryHog, &hog)
        .plugin(
            "hog-open",
            Fixture::MemoryHog,
            &format!("{hog}\non_error = \"fail-open\""),
        )
        .plugin("headers", Fixture::Headers, "")
        // The default 16 MiB and 1 MiB leaked per call: without retirement about every
        // 15th call would hit the limit and fail its request.
        .plugin("leaky", Fixture::Leaky, "timeout_ms = 5000")
        .upstream("main", &[main.endpoint()], "")
        .toml(ROUTES);
    Env {
        gw: Gateway::start(&cfg),
        main,
    }
});

/// A log entry about a failed plugin call, naming plugin, route and hook.
pub(crate) fn plugin_failure(entry: &str, plugin: &str, route: &str, hook: &str) -> bool {
    entry.contains("plugin failed")
        && has_field(entry, "plugin", plugin)
        && has_field(entry, "route", route)
        && has_field(entry, "hook", hook)
}

#[tokio::test]
async fn looping_plugin_is_stopped_at_its_deadline() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("loop");
    let resp = gw
        .get("/loop")
        .test_id(&id)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    resp.assert_gateway_error(500, "plugin_error");
    assert_eq!(
        env.main.count(&id),
        0,
        "fail-closed: the upstream is not called"
    );
    let entry = gw
        .wait_for_log("the loop's timeout", |e| {
            plugin_failure(e, "loop", "loop", "on-request") && e.contains("deadline")
        })
        .await;
    assert!(entry.contains("50 ms"), "the deadline is named: {entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_route_answers_while_a_plugin_loops() {
    let gw: &'static Gateway = &ENV.get().gw;
    let _watch = gw.watch();
    let stop = Arc::new(AtomicBool::new(false));
    let loop_statuses = Arc::new(Mutex::new(Vec::new()));
    let hammers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let statuses = loop_statuses.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let resp = gw
                        .get("/loop")
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    let code = resp.header("x-ficus-error").unwrap_or_default();
                    statuses.lock().unwrap().push((resp.status, code));
                }
            })
        })
        .collect();
    // Let the looping requests get going, then use the healthy route meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..20 {
        let resp = gw
            .get("/healthy")
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert_eq!(resp.status, 200, "healthy request {i}: {resp:?}");
        assert_eq!(resp.header("x-healthy").as_deref(), Some("yes"), "{resp:?}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let during = loop_statuses.lock().unwrap().len();
    stop.store(true, Ordering::Relaxed);
    for hammer in hammers {
        hammer.await.expect("a hammering task panicked");
    }
    let statuses = loop_statuses.lock().unwrap().clone();
    assert!(
        during >= 4,
        "looping requests should have completed while the healthy route was used ({during})"
    );
    assert!(
        statuses
            .iter()
            .all(|(s, code)| *s == 500 && code == "plugin_error"),
        "every looping request fails with plugin_error: {statuses:?}"
    );
}

#[tokio::test]
async fn trapping_plugin_fails_closed_and_is_logged() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("trap");
    let resp = gw.get("/trap").test_id(&id).send().await;
    resp.assert_gateway_error(500, "plugin_error");
    assert!(
        !resp.text().contains("panic"),
        "the client does not see the panic: {resp:?}"
    );
    assert_eq!(env.main.count(&id), 0);
    gw.wait_for_log("the trap, with the guest's panic message", |e| {
        plugin_failure(e, "trap", "trap", "on-request")
            && e.contains("probe trap: deliberate panic")
    })
    .await;

    // The dead instance is replaced: the next request fails the same way, not worse.
    let resp = gw.get("/trap").send().await;
    resp.assert_gateway_error(500, "plugin_error");
}

#[tokio::test]
async fn memory_hog_is_stopped_at_its_memory_limit() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let resp = gw.get("/hog").timeout(Duration::from_secs(20)).send().await;
    resp.assert_gateway_error(500, "plugin_error");
    let entry = gw
        .wait_for_log("the memory limit", |e| {
            plugin_failure(e, "hog", "hog", "on-request") && e.contains("memory limit")
        })
        .await;
    assert!(
        entry.contains(&MEMORY_LIMIT.to_string()),
        "the limit is named: {entry}"
    );
}

#[tokio::test]
async fn fail_open_plugins_let_requests_through() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    for (path, plugin) in [
        ("/open/loop", "loop-open"),
        ("/open/trap", "trap-open"),
        ("/open/hog", "hog-open"),
    ] {
        let id = unique("open");
        let resp = gw
            .get(path)
            .test_id(&id)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.echo().upstream, "main");
        assert_eq!(env.main.count(&id), 1, "{path}: one upstream call");
        gw.wait_for_log(&format!("the failure of {plugin}"), |e| {
            plugin_failure(e, plugin, plugin, "on-request") && has_field(e, "fail_open", "true")
        })
        .await;
    }
}

#[tokio::test]
async fn plugin_failures_are_counted_in_metrics() {
    let gw = &ENV.get().gw;
    let _watch = gw.watch();
    for path in ["/trap", "/loop", "/hog", "/open/trap"] {
        let resp = gw.get(path).timeout(Duration::from_secs(20)).send().await;
        assert!(resp.status == 500 || resp.status == 200, "{path}: {resp:?}");
    }
    let text = gw.metrics().await;
    for (plugin, kind) in [
        ("trap", "trap"),
        ("loop", "timeout"),
        ("hog", "memory"),
        ("trap-open", "trap"),
    ] {
        let labels = [
            ("plugin", plugin),
            ("route", plugin),
            ("hook", "on-request"),
            ("kind", kind),
        ];
        let n = metric(&text, "ficus_plugin_errors_total", &labels);
        assert!(
            n.is_some_and(|n| n >= 1.0),
            "ficus_plugin_errors_total{labels:?} = {n:?} in:\n{text}"
        );
    }
    let failed = metric(
        &text,
        "ficus_requests_total",
        &[("route", "trap"), ("class", "5xx")],
    );
    assert!(
        failed.is_some_and(|n| n >= 1.0),
        "5xx on route trap: {failed:?}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_survives_a_burst_of_hostile_requests() {
    let gw: &'static Gateway = &ENV.get().gw;
    let _watch = gw.watch();
    let burst: Vec<_> = ["/trap", "/hog", "/loop"]
        .into_iter()
        .cycle()
        .take(15)
        .map(|path| {
            tokio::spawn(async move {
                let resp = gw.get(path).timeout(Duration::from_secs(30)).send().await;
                (path, resp.status, resp.header("x-ficus-error"))
            })
        })
        .collect();
    for request in burst {
        let (path, status, code) = request.await.expect("request task");
        assert_eq!(
            (status, code.as_deref()),
            (500, Some("plugin_error")),
            "{path}"
        );
    }
    assert!(gw.is_running(), "the gateway process died");
    let health = gw.admin_get("/healthz").send().await;
    assert_eq!(health.status, 200, "{health:?}");
    let resp = gw.get("/healthy").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-healthy").as_deref(), Some("yes"));
}

/// A config loading `ungranted` (which imports `ficus:gateway/state`) with `grants`.
fn ungranted_config(grants: &str, upstream: &str) -> Cfg {
    Cfg::new()
        .plugin("ungranted", Fixture::Ungranted, grants)
        .upstream("main", &[upstream.to_owned()], "")
        .toml(
            r#"
            [[routes]]
            name = "counting"
            match = { path_prefix = "/count" }
            upstream = "main"
            pipeline = [
              { plugin = "ungranted" },
            ]
            "#,
        )
}

/// The parts every report of the ungranted import must name.
fn assert_names_the_missing_grant(stderr: &str) {
    for part in [
        "plugin \"ungranted\"",
        "route \"counting\"",
        "ficus:gateway/state",
        "add \"state\" to plugins.ungranted.grants",
    ] {
        assert!(stderr.contains(part), "{part:?} is not in:\n{stderr}");
    }
}

#[test]
fn ungranted_import_fails_check() {
    let checked = ungranted_config("", "127.0.0.1:9").check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert_names_the_missing_grant(&checked.stderr);
    let (line, column) = position_of(&checked.text, "\"ungranted\" }");
    let location = format!("{}:{line}:{column}:", checked.file.display());
    assert!(
        checked
            .stderr
            .lines()
            .any(|l| l.contains(&location) && l.contains("routes[0].pipeline[0].plugin: ")),
        "expected an error at {location} routes[0].pipeline[0].plugin\n{checked}"
    );
}

#[test]
fn ungranted_import_stops_run() {
    let err = match Gateway::try_start(&ungranted_config("", "127.0.0.1:9")) {
        Ok(gw) => panic!(
            "the gateway started on {} despite the ungranted import",
            gw.addr()
        ),
        Err(err) => err,
    };
    assert!(
        err.code.is_some_and(|c| c != 0),
        "ficus run must exit with an error: {err}"
    );
    assert_names_the_missing_grant(&err.stderr);
}

#[tokio::test]
async fn granting_the_import_lets_the_plugin_load_and_work() {
    let up = Upstream::start("main");
    let cfg = ungranted_config(r#"grants = ["state"]"#, &up.endpoint());
    let checked = cfg.check();
    assert_eq!(checked.code, Some(0), "{checked}");
    let gw = Gateway::start(&cfg);
    for expected in ["1", "2"] {
        let resp = gw.get("/count").send().await;
        assert_eq!(resp.status, 200, "{resp:?}");
        let echo = resp.echo();
        assert_eq!(echo.header("x-state-error"), None, "{echo:?}");
        assert_eq!(echo.header("x-ungranted"), Some(expected), "{echo:?}");
    }
}

#[tokio::test]
async fn an_instance_whose_memory_only_grows_is_retired_before_it_fails_a_request() {
    let env = ENV.get();
    let gw = &env.gw;
    // Sequential requests reuse one warm instance, so it grows by 1 MiB per request.
    for i in 0..45 {
        let resp = gw.get("/leaky").send().await;
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
    }
    let metrics = gw.metrics().await;
    let retired = metric(
        &metrics,
        "ficus_plugin_instances_retired_total",
        &[
            ("plugin", "leaky"),
            ("route", "leaky"),
            ("reason", "memory"),
        ],
    )
    .unwrap_or(0.0);
    assert!(
        retired >= 2.0,
        "45 MiB leaked with a 16 MiB limit retires instances: {retired}"
    );
    assert_eq!(
        metric(
            &metrics,
            "ficus_plugin_errors_total",
            &[("plugin", "leaky")]
        ),
        None,
        "no call failed"
    );
}
