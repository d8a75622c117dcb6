//! `calls = "sync"`: filter hooks called without a fiber. Such plugins edit requests and
//! responses like async ones; a loop is stopped at its deadline, a trap and a memory hog fail
//! their own request (the trap's panic message, written through the synchronous `wasi:io`,
//! is logged), and the other routes keep answering. Grants whose functions wait are refused
//! with the key that asked for them.

use crate::sandbox::plugin_failure;
use crate::support::{unique, Cfg, Checked, Fixture, Gateway, Shared, Upstream};
use std::time::Duration;

struct Env {
    gw: Gateway,
    main: Upstream,
}

const ROUTES: &str = r#"
[[routes]]
name = "edit"
match = { path_prefix = "/edit" }
upstream = "main"
pipeline = [
  { plugin = "headers", config = { request = { set = { x-set = "new" }, remove = ["x-remove-me"] }, response = { set = { x-resp-set = "yes" }, remove = ["x-upstream"] } } },
  { plugin = "headers", config = { request = { add = { x-second = "2" } } } },
]

[[routes]]
name = "loop"
match = { path_prefix = "/loop" }
upstream = "main"
pipeline = [{ plugin = "loop" }]

[[routes]]
name = "sleep"
match = { path_prefix = "/sleep" }
upstream = "main"
pipeline = [{ plugin = "sleeper", config = { sleep_ms = 3000 } }]

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
"#;

static ENV: Shared<Env> = Shared::new(|| {
    let main = Upstream::start("main");
    let cfg = Cfg::new()
        .plugin("headers", Fixture::Headers, "calls = \"sync\"")
        .plugin("loop", Fixture::Loop, "calls = \"sync\"\ntimeout_ms = 50")
        .plugin(
            "sleeper",
            Fixture::Loop,
            "calls = \"sync\"\ntimeout_ms = 10000",
        )
        .plugin("trap", Fixture::Trap, "calls = \"sync\"\ntimeout_ms = 5000")
        .plugin(
            "trap-open",
            Fixture::Trap,
            "calls = \"sync\"\ntimeout_ms = 5000\non_error = \"fail-open\"",
        )
        .plugin(
            "hog",
            Fixture::MemoryHog,
            "calls = \"sync\"\ntimeout_ms = 5000\nmemory_limit_bytes = 4194304",
        )
        .upstream("main", &[main.endpoint()], "")
        .toml(ROUTES);
    Env {
        gw: Gateway::start(&cfg),
        main,
    }
});

#[tokio::test]
async fn sync_plugins_edit_requests_and_responses() {
    let env = ENV.get();
    for _ in 0..3 {
        let resp = env
            .gw
            .get("/edit")
            .header("x-remove-me", "gone")
            .header("x-set", "old")
            .send()
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            resp.header("x-resp-set").as_deref(),
            Some("yes"),
            "{resp:?}"
        );
        assert_eq!(resp.header("x-upstream"), None, "removed: {resp:?}");
        let echo = resp.echo();
        assert_eq!(echo.header("x-set"), Some("new"), "{echo:?}");
        assert_eq!(echo.header("x-remove-me"), None, "{echo:?}");
        assert_eq!(echo.header("x-second"), Some("2"), "{echo:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_sync_plugin_is_stopped_at_its_deadline_and_others_answer() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("sync-loop");
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

    // A loop holds its worker thread only until its deadline: loops in flight on every
    // worker at once still leave the gateway answering once they end.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let gw: &'static Gateway = &ENV.get().gw;
            tokio::spawn(async move {
                gw.get("/loop")
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .status
            })
        })
        .collect();
    let resp = gw
        .get("/edit")
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    for l in loops {
        assert_eq!(l.await.expect("a loop request task panicked"), 500);
    }
}

/// A synchronous hook that waits (here `std::thread::sleep`, a `wasi:clocks` pollable) waits
/// in `block_in_place`: the worker hands its other requests to another thread, so sleeping
/// hooks on every worker at once (eight: more than the workers of most machines) still leave
/// the gateway answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_sync_plugin_does_not_hold_up_other_requests() {
    let env = ENV.get();
    let sleepers: Vec<_> = (0..8)
        .map(|_| {
            let gw: &'static Gateway = &ENV.get().gw;
            tokio::spawn(async move {
                gw.get("/sleep")
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await
                    .status
            })
        })
        .collect();
    // Let the sleepers reach the plugin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let resp = env
            .gw
            .get("/edit")
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    // Had the sleeping hooks held their threads, the edits would have waited for the first
    // of them (more sleepers than this machine has workers) to end.
    let still_sleeping = sleepers.iter().filter(|s| !s.is_finished()).count();
    assert_eq!(
        still_sleeping,
        sleepers.len(),
        "other requests were answered only after some sleeping hooks ended"
    );
    for s in sleepers {
        assert_eq!(s.await.expect("a sleep request task panicked"), 200);
    }
}

#[tokio::test]
async fn a_trapping_sync_plugin_fails_its_request_and_its_panic_is_logged() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let id = unique("sync-trap");
    let resp = gw.get("/trap").test_id(&id).send().await;
    resp.assert_gateway_error(500, "plugin_error");
    assert_eq!(env.main.count(&id), 0);
    // The panic message reaches the log through the guest's stderr, written with the
    // synchronous `blocking-write-and-flush`.
    gw.wait_for_log("the trap, with the guest's panic message", |e| {
        plugin_failure(e, "trap", "trap", "on-request")
            && e.contains("probe trap: deliberate panic")
    })
    .await;
    // The dead instance is replaced: the next request fails the same way, not worse.
    gw.get("/trap")
        .send()
        .await
        .assert_gateway_error(500, "plugin_error");

    // Fail-open skips the plugin.
    let id = unique("sync-trap-open");
    let resp = gw.get("/open/trap").test_id(&id).send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(env.main.count(&id), 1);
}

#[tokio::test]
async fn a_sync_memory_hog_is_stopped_at_its_memory_limit() {
    let env = ENV.get();
    let gw = &env.gw;
    let _watch = gw.watch();
    let resp = gw.get("/hog").timeout(Duration::from_secs(20)).send().await;
    resp.assert_gateway_error(500, "plugin_error");
    gw.wait_for_log("the memory limit", |e| {
        plugin_failure(e, "hog", "hog", "on-request") && e.contains("memory limit")
    })
    .await;
    let resp = gw.get("/edit").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// `ficus check` of one route whose only step is `plugin` (`fixture`, with the `[plugins.NAME]`
/// lines `lines`).
fn check_one_step(plugin: &str, fixture: Fixture, lines: &str) -> Checked {
    Cfg::new()
        .plugin(plugin, fixture, lines)
        .upstream("main", &["127.0.0.1:9".to_owned()], "")
        .toml(&format!(
            "[[routes]]\nname = \"r\"\nupstream = \"main\"\npipeline = [{{ plugin = \"{plugin}\" }}]\n"
        ))
        .check()
}

#[test]
fn sync_calls_with_a_waiting_grant_are_a_config_error() {
    let checked = check_one_step(
        "ungranted",
        Fixture::Ungranted,
        "calls = \"sync\"\ngrants = [\"state\", \"log\"]",
    );
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("plugins.ungranted.calls: ")
            && checked
                .stderr
                .contains("calls = \"sync\" cannot be combined with the grants \"state\""),
        "{checked}"
    );
    assert!(
        !checked.stderr.contains("\"log\" ("),
        "log does not wait: {checked}"
    );
}

#[test]
fn an_unknown_call_mode_is_a_config_error() {
    let checked = check_one_step("headers", Fixture::Headers, "calls = \"blocking\"");
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("calls") && checked.stderr.contains("`async`"),
        "names the key and the expected values: {checked}"
    );
}
