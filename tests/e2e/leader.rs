//! Leader election on the embedded backend: three real `ficus` processes share one data
//! directory and elect a leader through the lease files under `<data_dir>/leader/`.
//!
//! Exactly one leads and all agree on its id and term; kill -9 of the leader → another takes
//! over within the lease TTL + 1 s with a higher term; a stopped (SIGSTOP) leader is replaced
//! and, once continued, steps down and shows its stale term; a graceful shutdown hands over
//! faster than the TTL; tick plugins run only on the leader; a filter sees `leader.status` on
//! the request path; bad `[leader]` / `[[ticks]]` config is rejected by `ficus check`.
//!
//! The failover tests print the measured failover times (`cargo test -p ficus --test e2e --
//! leader --nocapture`).

use crate::support::{dead_endpoint, metric, Cfg, Fixture, Gateway, TempDir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The plugins this module adds (see `config::every_built_plugin_is_a_known_fixture`).
pub(crate) const FIXTURES: [&str; 3] = [
    "tick-counter.wasm",
    "leader-probe.wasm",
    "tick-appender.wasm",
];

/// Small lease timing so that failovers take about a second and a half.
const TTL_MS: u64 = 1500;
const LEADER: &str =
    "lease_ttl_ms = 1500\nrenew_deadline_ms = 1000\nretry_period_ms = 250\ngroups = [\"default\"]";

/// Longest wait for a state the cluster should reach.
const WAIT: Duration = Duration::from_secs(10);

/// A built fixture of this module, as written in a config's `source`.
fn fixture(file: &str) -> String {
    let path: PathBuf = Path::new(ficus::WASM_DIR).join(file);
    assert!(
        path.is_file(),
        "fixture {} is missing (host/build.rs builds plugins/ into {})",
        path.display(),
        ficus::WASM_DIR
    );
    path.to_string_lossy().into_owned()
}

/// A node's config: shared data dir, its own id, the `leader-probe` filter on every request,
/// and `extra` TOML (ticks).
fn node_cfg(data: &Path, id: &str, extra: &str) -> Cfg {
    node_cfg_on(data, id, extra, "")
}

/// [`node_cfg`] with extra `[backend]` keys.
fn node_cfg_on(data: &Path, id: &str, extra: &str, backend: &str) -> Cfg {
    let mut cfg = Cfg::new()
        .plugin_source(
            "probe",
            &fixture("leader-probe.wasm"),
            r#"grants = ["leader"]"#,
        )
        .plugin_source(
            "counter",
            &fixture("tick-counter.wasm"),
            r#"grants = ["log", "metrics", "leader"]"#,
        );
    // The appending tick only on NATS (embedded nodes share one data directory, and an
    // embedded event store belongs to one process).
    if !backend.is_empty() {
        cfg = cfg.plugin_source(
            "appender",
            &fixture("tick-appender.wasm"),
            "grants = [\"log\", \"metrics\", \"leader\", \"events\"]\ntimeout_ms = 5000",
        );
    }
    cfg.upstream("nowhere", &[dead_endpoint()], "")
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n{backend}\n[leader]\nnode_id = {id:?}\n{LEADER}\n\
             [[routes]]\nupstream = \"nowhere\"\npipeline = [{{ plugin = \"probe\" }}]\n{extra}",
            data.to_string_lossy()
        ))
}

/// Three nodes `n0`, `n1`, `n2` sharing one data directory, started in order.
struct Cluster {
    nodes: Vec<Option<Gateway>>,
    _data: TempDir,
}

impl Cluster {
    fn start(extra: &str) -> Cluster {
        let data = TempDir::new("leader-data");
        let nodes = (0..3)
            .map(|i| {
                Some(Gateway::start(&node_cfg(
                    data.path(),
                    &format!("n{i}"),
                    extra,
                )))
            })
            .collect();
        Cluster { nodes, _data: data }
    }

    /// Three nodes on `[backend] kind = "nats"` with `servers`: each its own data directory
    /// (as on three machines), leases in the NATS KV bucket with `replicas` copies.
    fn start_on_nats(servers: &[String], replicas: u8, extra: &str) -> Cluster {
        let data = TempDir::new("leader-nats");
        let backend = format!("kind = \"nats\"\nservers = {servers:?}\nreplicas = {replicas}\n");
        let nodes = (0..3)
            .map(|i| {
                let dir = data.path().join(format!("n{i}"));
                std::fs::create_dir_all(&dir).expect("node data dir");
                Some(Gateway::start(&node_cfg_on(
                    &dir,
                    &format!("n{i}"),
                    extra,
                    &backend,
                )))
            })
            .collect();
        Cluster { nodes, _data: data }
    }

    fn node(&self, i: usize) -> &Gateway {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Indices of the nodes not killed.
    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// Kill node `i` with SIGKILL and reap it.
    async fn kill9(&mut self, i: usize) {
        let gw = self.nodes[i].take().expect("node is running");
        signal(&gw, "KILL");
        assert!(gw.wait_exit(WAIT).await.is_some(), "n{i} did not die");
    }
}

fn signal(gw: &Gateway, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), gw.pid().to_string()])
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -{name} {} failed", gw.pid());
}

/// `/admin/leader` of a node; `None` when it does not answer within 5 s.
async fn leader_status(gw: &Gateway) -> Option<Value> {
    let resp = gw
        .admin_get("/admin/leader")
        .timeout(Duration::from_secs(5))
        .try_send()
        .await
        .ok()?;
    assert_eq!(resp.status, 200, "GET /admin/leader: {resp:?}");
    Some(resp.json())
}

/// A node's view of group `default`.
async fn group(gw: &Gateway) -> Value {
    let status = leader_status(gw).await.expect("/admin/leader answers");
    status["groups"]["default"].clone()
}

/// Poll the nodes `among` until exactly one reports itself leader and every one of them
/// reports that leader and term; returns (leader index, term). Panics after `timeout`.
async fn agreed_leader(cluster: &Cluster, among: &[usize], timeout: Duration) -> (usize, u64) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut views = Vec::new();
        for &i in among {
            views.push((i, group(cluster.node(i)).await));
        }
        let leaders: Vec<usize> = views
            .iter()
            .filter(|(_, v)| v["role"] == "leader")
            .map(|(i, _)| *i)
            .collect();
        if let [leader] = leaders[..] {
            let id = format!("n{leader}");
            let term = views.iter().find(|(i, _)| *i == leader).unwrap().1["term"].as_u64();
            let agree = views
                .iter()
                .all(|(_, v)| v["leader_id"] == id.as_str() && v["term"].as_u64() == term);
            if let (true, Some(term)) = (agree, term) {
                return (leader, term);
            }
        }
        if Instant::now() > deadline {
            panic!("the nodes did not agree on one leader within {timeout:?}: {views:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll until one of `among` reports itself leader with a term above `above`; returns
/// (index, term, time waited).
async fn new_leader(cluster: &Cluster, among: &[usize], above: u64) -> (usize, u64, Duration) {
    let started = Instant::now();
    loop {
        for &i in among {
            let v = group(cluster.node(i)).await;
            if v["role"] == "leader" {
                let term = v["term"].as_u64().expect("a leader has a term");
                assert!(
                    term > above,
                    "n{i} leads with term {term}, not above {above}"
                );
                return (i, term, started.elapsed());
            }
        }
        assert!(
            started.elapsed() < WAIT,
            "no new leader among {among:?} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the `leader-probe` filter answers on node `gw`: (id, term, is_self).
async fn probe(gw: &Gateway) -> (String, u64, bool) {
    let resp = gw.get("/anything").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let id = resp
        .header("x-leader-id")
        .unwrap_or_else(|| panic!("no leader: {resp:?}"));
    let term = resp
        .header("x-leader-term")
        .expect("term")
        .parse()
        .expect("a number");
    (
        id,
        term,
        resp.header("x-leader-self").as_deref() == Some("true"),
    )
}

#[tokio::test]
async fn one_leader_then_failover_after_kill_9_within_the_ttl() {
    let mut cluster = Cluster::start("");
    let (leader, term) = agreed_leader(&cluster, &[0, 1, 2], WAIT).await;
    // The first node to start leads at once.
    assert_eq!((leader, term), (0, 1));
    // Plugins see the same on the request path, on every node.
    for i in 0..3 {
        let (id, t, is_self) = probe(cluster.node(i)).await;
        assert_eq!(
            (id.as_str(), t, is_self),
            ("n0", 1, i == 0),
            "probe on n{i}"
        );
    }
    let m = cluster.node(0).metrics().await;
    assert_eq!(
        metric(&m, "ficus_leader_is_leader", &[("group", "default")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ficus_leader_elections_total", &[("group", "default")]),
        Some(1.0)
    );
    let m = cluster.node(1).metrics().await;
    assert_eq!(
        metric(&m, "ficus_leader_is_leader", &[("group", "default")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "ficus_leader_changes_total", &[("group", "default")]),
        Some(1.0)
    );

    let killed = Instant::now();
    cluster.kill9(leader).await;
    let survivors = cluster.alive();
    let (next, next_term, _) = new_leader(&cluster, &survivors, term).await;
    let failover = killed.elapsed();
    println!(
        "leader failover after kill -9: {} ms (lease TTL {TTL_MS} ms, retry 250 ms)",
        failover.as_millis()
    );
    assert!(
        failover <= Duration::from_millis(TTL_MS + 1000),
        "failover took {failover:?}"
    );
    let (agreed, agreed_term) = agreed_leader(&cluster, &survivors, WAIT).await;
    assert_eq!((agreed, agreed_term), (next, next_term));
    let (id, t, is_self) = probe(cluster.node(next)).await;
    assert_eq!((id, t, is_self), (format!("n{next}"), next_term, true));
    let m = cluster.node(next).metrics().await;
    assert_eq!(
        metric(&m, "ficus_leader_is_leader", &[("group", "default")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ficus_leader_elections_total", &[("group", "default")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ficus_leader_changes_total", &[("group", "default")]),
        Some(2.0)
    );
}

#[tokio::test]
async fn stopped_leader_is_replaced_and_steps_down_with_a_stale_term() {
    // The leader also runs a tick every 100 ms: after SIGCONT it must not run it again.
    let cluster = Cluster::start(TICK);
    let (leader, term) = agreed_leader(&cluster, &[0, 1, 2], WAIT).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster
        .node(leader)
        .wait_for_log("a tick run", |e| e.contains("tick run group=default"))
        .await;
    signal(cluster.node(leader), "STOP");
    let (next, next_term, waited) = new_leader(&cluster, &others, term).await;
    println!("leader failover after SIGSTOP: {} ms", waited.as_millis());
    assert!(
        waited <= Duration::from_millis(TTL_MS + 1000),
        "took {waited:?}"
    );
    // Keep it stopped well past its lease, then let it run again. Everything it wrote before
    // the stop has been read by now: its log from here on is what it does after SIGCONT.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_before = cluster.node(leader).stderr().len();
    signal(cluster.node(leader), "CONT");
    // At once it no longer acts as leader (its renew deadline passed while stopped) ...
    let v = group(cluster.node(leader)).await;
    assert_eq!(v["role"], "follower", "{v}");
    // ... and soon it sees the new leader: its own term is stale.
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let v = group(cluster.node(leader)).await;
        if v["term"].as_u64() == Some(next_term) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "n{leader} never saw term {next_term}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v["role"], "follower", "{v}");
    assert_eq!(v["leader_id"], format!("n{next}"), "{v}");
    assert_eq!(v["last_term"].as_u64(), Some(term), "{v}");
    assert_eq!(v["stale"], true, "{v}");
    let (id, t, is_self) = probe(cluster.node(leader)).await;
    assert_eq!((id, t, is_self), (format!("n{next}"), next_term, false));
    // Everybody agrees; the new leader keeps its lease.
    assert_eq!(
        agreed_leader(&cluster, &[0, 1, 2], WAIT).await,
        (next, next_term)
    );
    let entry = cluster
        .node(leader)
        .wait_for_log("the step-down", |e| e.contains("stepping down"))
        .await;
    assert!(entry.contains("WARN"), "{entry}");
    // Its overdue tick found it no longer leader: no run after SIGCONT, only skips.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = cluster.node(leader).stderr();
    let after = &log[log_before..];
    assert!(
        !after.contains("tick run"),
        "the deposed leader ran a tick after SIGCONT:\n{after}"
    );
    let m = cluster.node(leader).metrics().await;
    assert!(ticks(&m, "count", "not_leader") >= 1.0, "{m}");
    let m = cluster.node(next).metrics().await;
    let next_term = next_term.to_string();
    assert!(
        metric(&m, "tick_runs", &[("term", next_term.as_str())]).unwrap_or(0.0) >= 1.0,
        "the new leader does not tick:\n{m}"
    );
}

#[tokio::test]
async fn graceful_shutdown_hands_over_faster_than_the_ttl() {
    let mut cluster = Cluster::start("");
    let (leader, term) = agreed_leader(&cluster, &[0, 1, 2], WAIT).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let gw = cluster.nodes[leader].take().expect("running");
    let started = Instant::now();
    gw.terminate();
    let (next, next_term, waited) = new_leader(&cluster, &others, term).await;
    println!(
        "leader failover after graceful shutdown (SIGTERM): {} ms (lease TTL {TTL_MS} ms)",
        waited.as_millis()
    );
    assert!(
        waited < Duration::from_millis(TTL_MS),
        "handover took {waited:?}, not faster than the {TTL_MS} ms TTL"
    );
    assert!(gw.wait_exit(WAIT).await.is_some_and(|s| s.success()));
    assert!(
        gw.stderr().contains("resigned leadership"),
        "{}",
        gw.stderr()
    );
    assert_eq!(
        agreed_leader(&cluster, &others, WAIT).await,
        (next, next_term)
    );
    assert!(started.elapsed() < WAIT);
}

/// Sum of `ficus_tick_total{tick,result}` of a node.
fn ticks(m: &str, tick: &str, result: &str) -> f64 {
    metric(m, "ficus_tick_total", &[("tick", tick), ("result", result)]).unwrap_or(0.0)
}

/// A tick counting its runs every 100 ms, in group `default`.
const TICK: &str = "[[ticks]]\nname = \"count\"\nplugin = \"counter\"\nevery = \"100ms\"\n";

#[tokio::test]
async fn ticks_run_only_on_the_leader() {
    let mut cluster = Cluster::start(TICK);
    let (leader, term) = agreed_leader(&cluster, &[0, 1, 2], WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        let m = cluster.node(i).metrics().await;
        let runs = metric(&m, "tick_runs", &[("group", "default")]).unwrap_or(0.0);
        if i == leader {
            assert!(ticks(&m, "count", "ok") >= 5.0, "leader n{i}:\n{m}");
            assert_eq!(ticks(&m, "count", "ok"), runs, "n{i}:\n{m}");
            let term = term.to_string();
            assert_eq!(
                metric(&m, "tick_runs", &[("term", term.as_str())]),
                Some(runs),
                "every run carries the leader's term"
            );
            assert_eq!(ticks(&m, "count", "error"), 0.0, "n{i}:\n{m}");
        } else {
            assert_eq!(
                ticks(&m, "count", "ok"),
                0.0,
                "follower n{i} ran the tick:\n{m}"
            );
            assert_eq!(runs, 0.0, "follower n{i}:\n{m}");
            assert!(ticks(&m, "count", "not_leader") >= 5.0, "n{i}:\n{m}");
        }
    }
    // After the leader dies, the new leader runs the tick with its own term; the other
    // survivor still never does.
    cluster.kill9(leader).await;
    let survivors = cluster.alive();
    let (next, next_term, _) = new_leader(&cluster, &survivors, term).await;
    let next_term_text = next_term.to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let m = cluster.node(next).metrics().await;
        if metric(&m, "tick_runs", &[("term", next_term_text.as_str())]).unwrap_or(0.0) >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "n{next} does not tick:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in survivors.into_iter().filter(|&i| i != next) {
        let m = cluster.node(i).metrics().await;
        assert_eq!(
            ticks(&m, "count", "ok"),
            0.0,
            "follower n{i} ran the tick:\n{m}"
        );
    }
}

#[tokio::test]
async fn failing_ticks_are_counted_and_the_next_tick_still_runs() {
    let data = TempDir::new("leader-data");
    let extra = "[[ticks]]\nname = \"fails\"\nplugin = \"counter\"\nevery = \"100ms\"\n\
                 config = { mode = \"error\" }\n\
                 [[ticks]]\nname = \"traps\"\nplugin = \"counter\"\nevery = \"100ms\"\n\
                 group = \"other\"\nconfig = { mode = \"trap\" }\n";
    let gw = Gateway::start(&node_cfg(data.path(), "solo", extra));
    let deadline = Instant::now() + WAIT;
    loop {
        let m = gw.metrics().await;
        if ticks(&m, "fails", "error") >= 3.0 && ticks(&m, "traps", "trap") >= 3.0 {
            // Each failed run counted its run first: every tick ran again after a failure.
            assert!(metric(&m, "tick_runs", &[("group", "other")]).unwrap_or(0.0) >= 3.0);
            assert_eq!(
                ticks(&m, "fails", "ok") + ticks(&m, "traps", "ok"),
                0.0,
                "{m}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ticks did not fail as expected:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entry = gw
        .wait_for_log("a trapped tick", |e| {
            e.contains("tick failed") && e.contains("tick-counter: deliberate panic")
        })
        .await;
    assert!(
        entry.contains("tick=traps") && entry.contains("group=other"),
        "{entry}"
    );
    gw.wait_for_log("an erring tick", |e| {
        e.contains("tick failed") && e.contains("tick=fails") && e.contains("failing on purpose")
    })
    .await;
    // A node alone leads both groups at once, and /admin/leader lists them.
    let status = leader_status(&gw).await.expect("answers");
    assert_eq!(status["node_id"], "solo");
    for g in ["default", "other"] {
        assert_eq!(status["groups"][g]["role"], "leader", "{status}");
        assert_eq!(status["groups"][g]["term"], 1, "{status}");
    }
}

/// `ficus check` on a config with a tick plugin and `extra` TOML; returns the error lines.
fn check_errors(extra: &str) -> (String, Vec<String>) {
    let checked = Cfg::new()
        .plugin_source(
            "counter",
            &fixture("tick-counter.wasm"),
            r#"grants = ["log", "metrics", "leader"]"#,
        )
        .plugin("headers", Fixture::Headers, "")
        .toml(extra)
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    let lines = checked
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(str::to_owned)
        .collect();
    (checked.to_string(), lines)
}

#[track_caller]
fn assert_has(all: &(String, Vec<String>), key_path: &str, message: &str) {
    assert!(
        all.1
            .iter()
            .any(|l| l.contains(&format!(": {key_path}: ")) && l.contains(message)),
        "expected an error at {key_path} containing {message:?}\n{}",
        all.0
    );
}

#[test]
fn bad_leader_and_tick_config_is_rejected_by_check() {
    let all = check_errors("[leader]\nlease_ttl_ms = 0\n");
    assert_has(&all, "leader.lease_ttl_ms", "must be above 0");
    let all = check_errors("[leader]\nlease_ttl_ms = 1000\nrenew_deadline_ms = 1000\n");
    assert_has(
        &all,
        "leader.lease_ttl_ms",
        "expected lease_ttl_ms > renew_deadline_ms > retry_period_ms > 0",
    );
    let all =
        check_errors("[[ticks]]\nname = \"a\"\nplugin = \"counter\"\nevery = \"ten seconds\"\n");
    assert_has(&all, "ticks[0].every", "invalid interval \"ten seconds\"");
    let all = check_errors("[[ticks]]\nname = \"a\"\nplugin = \"countr\"\nevery = \"0ms\"\n");
    assert_has(
        &all,
        "ticks[0].plugin",
        "unknown plugin \"countr\" (known: counter, headers)",
    );
    assert_has(&all, "ticks[0].every", "must be above zero");
}

#[test]
fn check_builds_tick_plugins() {
    // A filter is not a tick plugin; the config the plugin rejects is located at `config`.
    let all = check_errors(
        "[[ticks]]\nname = \"a\"\nplugin = \"headers\"\nevery = \"1s\"\n\
         [[ticks]]\nname = \"b\"\nplugin = \"counter\"\nevery = \"1s\"\nconfig = { mode = \"fast\" }\n",
    );
    assert_has(&all, "ticks[0].plugin", "not a tick plugin");
    assert_has(&all, "ticks[1].config", "configure rejected the config");
    assert_eq!(all.1.len(), 2, "{}", all.0);
    // Grants apply to ticks as to filters.
    let checked = Cfg::new()
        .plugin_source(
            "counter",
            &fixture("tick-counter.wasm"),
            r#"grants = ["log"]"#,
        )
        .toml("[[ticks]]\nname = \"a\"\nplugin = \"counter\"\nevery = \"1s\"\n")
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains(": ticks[0].plugin: ")
            && checked
                .stderr
                .contains("add \"metrics\" to plugins.counter.grants"),
        "{checked}"
    );
    // A good tick passes, and check writes no lease.
    let data = TempDir::new("leader-check");
    let checked = Cfg::new()
        .plugin_source(
            "counter",
            &fixture("tick-counter.wasm"),
            r#"grants = ["log", "metrics", "leader"]"#,
        )
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n[[ticks]]\nname = \"a\"\nplugin = \"counter\"\nevery = \"1s\"\n",
            data.path().to_string_lossy()
        ))
        .check();
    assert_eq!(checked.code, Some(0), "{checked}");
    assert!(
        checked
            .stdout
            .contains("  tick a: counter every 1s on the leader of group default"),
        "{checked}"
    );
    assert!(!data.path().join("leader").exists(), "check campaigned");
}

#[tokio::test]
async fn election_and_tick_changes_need_a_restart() {
    let data = TempDir::new("leader-data");
    let tick =
        |every: &str| format!("[[ticks]]\nname = \"t\"\nplugin = \"counter\"\nevery = {every:?}\n");
    let gw = Gateway::start(&node_cfg(data.path(), "solo", &tick("1s")));
    // A node alone leads as soon as it is ready.
    let v = group(&gw).await;
    assert_eq!(
        (v["role"].as_str(), v["term"].as_u64()),
        (Some("leader"), Some(1)),
        "{v}"
    );
    for (text, changed) in [
        (
            node_cfg(data.path(), "solo", &tick("2s")).render(),
            "ticks changed",
        ),
        (
            node_cfg(data.path(), "solo", &tick("1s"))
                .render()
                .replace("lease_ttl_ms = 1500", "lease_ttl_ms = 2500"),
            "leader changed",
        ),
    ] {
        std::fs::write(gw.config_file(), text).expect("rewrite the config");
        let resp = gw.admin_request("POST", "/admin/reload").send().await;
        assert_eq!(resp.status, 422, "{resp:?}");
        let error = resp.json()["outcome"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains(changed) && error.contains("restart ficus"),
            "{error}"
        );
    }
    // Still leading and ticking as before.
    assert_eq!(group(&gw).await["role"], "leader");
}

/// `[backend] kind = "nats"`: three `ficus` nodes (separate data directories) and a 3-node
/// NATS cluster (lease bucket with 3 replicas). Exactly one leader, all agree; kill -9 of the
/// leader node → a new leader within the lease TTL + 1 s with a higher term.
#[tokio::test]
async fn on_nats_one_leader_then_failover_after_kill_9_within_the_ttl() {
    let nats = crate::nats_server::NatsServer::cluster(3);
    let servers: Vec<String> = nats.iter().map(|s| s.url.clone()).collect();
    let mut cluster = Cluster::start_on_nats(&servers, 3, "");
    let (leader, term) = agreed_leader(&cluster, &[0, 1, 2], WAIT).await;
    for i in 0..3 {
        let (id, t, is_self) = probe(cluster.node(i)).await;
        assert_eq!(
            (id, t, is_self),
            (format!("n{leader}"), term, i == leader),
            "probe on n{i}"
        );
    }
    let killed = Instant::now();
    cluster.kill9(leader).await;
    let survivors = cluster.alive();
    let (next, next_term, _) = new_leader(&cluster, &survivors, term).await;
    let failover = killed.elapsed();
    println!(
        "NATS KV leases, 3-node NATS cluster (R3): leader failover after kill -9: {} ms \
         (lease TTL {TTL_MS} ms, retry 250 ms), term {term} -> {next_term}",
        failover.as_millis()
    );
    assert!(
        failover <= Duration::from_millis(TTL_MS + 1000),
        "failover took {failover:?}"
    );
    let (agreed, agreed_term) = agreed_leader(&cluster, &survivors, WAIT).await;
    assert_eq!((agreed, agreed_term), (next, next_term));
}

/// `[backend] kind = "nats"`, three `ficus` nodes on a 3-node NATS cluster (R3): the leader
/// runs a tick that appends a `Tick` event carrying its term, after a long computation. It is
/// stopped (SIGSTOP) mid-tick, past its lease: another node takes over with a higher term.
/// Once continued, the deposed leader steps down, and the append its interrupted tick then
/// makes is refused by the event store: its term no longer holds the lease (fencing). The
/// stream's terms never go back.
#[tokio::test]
async fn on_nats_a_stopped_leader_steps_down_and_its_late_append_is_fenced() {
    let nats = crate::nats_server::NatsServer::cluster(3);
    let servers: Vec<String> = nats.iter().map(|s| s.url.clone()).collect();
    // ~0.1-0.5 s of computation per tick: the process is nearly always inside one.
    let ticks = "[[ticks]]\nname = \"append\"\nplugin = \"appender\"\nevery = \"100ms\"\n\
                 config = { append_stream = \"ticks\", busy_iterations = 200000000 }\n";
    let cluster = Cluster::start_on_nats(&servers, 3, ticks);
    let (leader, term) = agreed_leader(&cluster, &[0, 1, 2], WAIT).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let old = cluster.node(leader);
    // Its first tick has appended; the next one is computing.
    let deadline = Instant::now() + WAIT;
    while stream_terms(old).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the leader never appended a tick"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs_before = old.stderr().matches("tick run").count();
    while old.stderr().matches("tick run").count() == runs_before {
        assert!(Instant::now() < deadline, "the leader stopped ticking");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(old, "STOP");
    let (next, next_term, waited) = new_leader(&cluster, &others, term).await;
    println!(
        "NATS (R3) leader failover after SIGSTOP mid-tick: {} ms, term {term} -> {next_term}",
        waited.as_millis()
    );
    assert!(
        waited <= Duration::from_millis(TTL_MS + 1000),
        "took {waited:?}"
    );
    // The new leader appends under its term.
    let deadline = Instant::now() + WAIT;
    while !stream_terms(cluster.node(next)).await.contains(&next_term) {
        assert!(Instant::now() < deadline, "the new leader never appended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log_before = old.stderr().len();
    signal(old, "CONT");
    let refused = old
        .wait_for_log("the deposed leader's late append refused", |e| {
            e.contains("tick append refused")
        })
        .await;
    assert!(refused.contains(&format!("term={term}")), "{refused}");
    assert!(refused.contains("fenced"), "{refused}");
    let v = group(old).await;
    assert_eq!(v["role"], "follower", "{v}");
    // No append of the old term after the new term's first one; the old leader never ticks again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terms = stream_terms(cluster.node(next)).await;
    assert!(
        terms.windows(2).all(|w| w[0] <= w[1]),
        "terms go back in the stream: {terms:?}"
    );
    assert!(
        terms.contains(&term) && terms.contains(&next_term),
        "{terms:?}"
    );
    let after = &old.stderr()[log_before..];
    assert_eq!(
        after.matches("tick run").count(),
        0,
        "the deposed leader ran another tick:\n{after}"
    );
    let m = old.metrics().await;
    assert!(
        metric(&m, "ficus_events_fenced_total", &[("group", "default")]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    println!(
        "fenced: {} Tick events in order of terms {:?}",
        terms.len(),
        terms.iter().collect::<std::collections::BTreeSet<_>>()
    );
}

/// The term of every `Tick` event of stream `ticks`, in stream order (empty before the first).
async fn stream_terms(gw: &Gateway) -> Vec<u64> {
    let r = gw.admin_get("/admin/streams/ticks").send().await;
    if r.status == 404 {
        return Vec::new();
    }
    let v = r.json();
    v["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| e["data"]["term"].as_u64().expect("a Tick event's term"))
                .collect()
        })
        .unwrap_or_default()
}
