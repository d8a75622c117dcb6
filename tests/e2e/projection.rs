//! CQRS, read side: projections fold the event store into read models, query handlers read
//! them. The orders demo end to end (command → projection → query), a read model that equals
//! a replay from scratch after kill -9, rebuild equal to live processing, and projections that
//! fail (err, trap, malformed data) without losing or repeating an event.

use crate::cqrs::command;
use crate::support::{Cfg, Gateway, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Plugins this module tests (for `config::every_built_plugin_is_a_known_fixture`).
pub(crate) const FIXTURES: [&str; 4] = [
    "orders-projection.wasm",
    "orders-query.wasm",
    "event-writer.wasm",
    "projection-probe.wasm",
];

fn wasm(name: &str) -> String {
    Path::new(ficus::WASM_DIR)
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The CQRS demo (as gateway-config/examples/cqrs.toml), plus the event writer on `/append/`.
fn orders_cfg(data: &Path) -> Cfg {
    orders_cfg_on(data, "", "")
}

/// [`orders_cfg`] with more `[backend]` lines and more sections.
fn orders_cfg_on(data: &Path, backend: &str, extra: &str) -> Cfg {
    Cfg::new()
        .plugin_source(
            "orders",
            &wasm("orders-command.wasm"),
            "grants = [\"events\"]\ntimeout_ms = 5000",
        )
        .plugin_source(
            "orders-projection",
            &wasm("orders-projection.wasm"),
            "grants = [\"log\"]\ntimeout_ms = 2000",
        )
        .plugin_source(
            "orders-query",
            &wasm("orders-query.wasm"),
            "grants = [\"read-model\"]\ntimeout_ms = 2000",
        )
        .plugin_source("writer", &wasm("event-writer.wasm"), "grants = [\"events\"]\ntimeout_ms = 5000")
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n{backend}\n{extra}\n\
             [[projections]]\nname = \"orders\"\nplugin = \"orders-projection\"\n\
             stream_prefix = \"order-\"\n\n\
             [[routes]]\nname = \"commands\"\n\
             match = {{ path_prefix = \"/orders\", methods = [\"POST\"] }}\nhandler = \"orders\"\n\n\
             [[routes]]\nname = \"queries\"\n\
             match = {{ path_prefix = \"/orders\", methods = [\"GET\"] }}\nhandler = \"orders-query\"\n\n\
             [[routes]]\nname = \"append\"\nmatch = {{ path_prefix = \"/append/\" }}\nhandler = \"writer\"\n",
            data.to_string_lossy()
        ))
}

async fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    let resp = gw.get(path).timeout(Duration::from_secs(10)).send().await;
    let json = resp.json();
    (resp.status, json)
}

/// The status of projection `name` from `/admin/projections`.
async fn projection(gw: &Gateway, name: &str) -> Value {
    let all = gw.admin_get("/admin/projections").send().await.json();
    all["projections"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no projection {name}: {all}"))
}

/// Wait until `pred` holds for projection `name`'s status; returns it.
async fn wait_projection(
    gw: &Gateway,
    name: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = projection(gw, name).await;
        if pred(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait until the `orders` model has seen the event at `position`.
async fn caught_up(gw: &Gateway, position: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, stats) = get(gw, "/orders/stats").await;
        assert_eq!(s, 200, "{stats}");
        if stats["last_position"].as_u64().unwrap_or(0) >= position {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "the projection did not reach {position}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every order document, by id, read through the query handler (every status, every page).
async fn all_orders(gw: &Gateway) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for status in ["placed", "paid", "shipped", "cancelled"] {
        let mut after = String::new();
        loop {
            let (s, page) = get(gw, &format!("/orders?status={status}&limit=7{after}")).await;
            assert_eq!(s, 200, "{page}");
            for o in page["orders"].as_array().unwrap() {
                assert_eq!(o["status"], status, "{o}");
                out.insert(o["id"].as_str().unwrap().to_owned(), o.clone());
            }
            match page["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
    }
    out
}

#[tokio::test]
async fn queries_reflect_commands_once_the_projection_catches_up() {
    let data = TempDir::new("proj-flow");
    let gw = Gateway::start(&orders_cfg(data.path()));
    let mut last = 0;
    for (path, body) in [
        ("/orders/7/place", r#"{"customer":"c1","total":4200}"#),
        ("/orders/7/pay", r#"{"amount":4200}"#),
        ("/orders/7/ship", ""),
        ("/orders/8/place", r#"{"customer":"c2","total":100}"#),
        ("/orders/8/cancel", r#"{"reason":"changed my mind"}"#),
        ("/orders/9/place", r#"{"customer":"c1","total":5}"#),
    ] {
        let (s, b) = command(&gw, path, body).await;
        assert_eq!(s, 200, "{path}: {b}");
        last = b["position"].as_u64().unwrap();
    }
    // Refused commands append nothing, so the model never sees them.
    let (s, _) = command(&gw, "/orders/9/ship", "").await;
    assert_eq!(s, 409);

    let stats = caught_up(&gw, last).await;
    assert_eq!(stats["events"], 6, "{stats}");
    assert_eq!(stats["skipped"], 0, "{stats}");
    assert_eq!(
        stats["by_status"],
        serde_json::json!({ "shipped": 1, "cancelled": 1, "placed": 1 })
    );
    let (s, o) = get(&gw, "/orders/7").await;
    assert_eq!(s, 200, "{o}");
    assert_eq!(
        (
            o["status"].as_str(),
            o["customer"].as_str(),
            o["total"].as_u64(),
            o["version"].as_u64()
        ),
        (Some("shipped"), Some("c1"), Some(4200), Some(3)),
        "{o}"
    );
    let (_, o) = get(&gw, "/orders/8").await;
    assert_eq!(
        (o["status"].as_str(), o["cancel_reason"].as_str()),
        (Some("cancelled"), Some("changed my mind"))
    );
    let orders = all_orders(&gw).await;
    assert_eq!(orders.keys().collect::<Vec<_>>(), ["7", "8", "9"]);

    // Bad queries get clear errors.
    for (path, status, needle) in [
        ("/orders/404", 404, "no order \"404\""),
        ("/orders/bad%20id", 400, "invalid order id"),
        ("/orders?status=lost", 400, "unknown status \"lost\""),
        ("/orders?status=paid&limit=0", 400, "limit"),
        ("/orders", 400, "expected GET /orders?status="),
    ] {
        let (s, b) = get(&gw, path).await;
        assert_eq!(s, status, "{path}: {b}");
        assert!(b["error"].as_str().unwrap().contains(needle), "{path}: {b}");
    }

    // The admin view.
    let p = projection(&gw, "orders").await;
    assert_eq!(
        (
            p["state"].as_str(),
            p["generation"].as_u64(),
            p["group"].as_str()
        ),
        (Some("running"), Some(1), Some("default")),
        "{p}"
    );
    assert!(p["checkpoint"].as_u64().unwrap() >= last, "{p}");
    assert!(p["last_error"].is_null(), "{p}");
    gw.terminate();
}

#[tokio::test]
async fn malformed_event_data_is_skipped_by_the_orders_projection_and_counted() {
    let data = TempDir::new("proj-malformed");
    let gw = Gateway::start(&orders_cfg(data.path()));
    // A writer that bypasses the command handler's checks.
    let (s, b) = command(&gw, "/append/order-x?type=OrderPlaced", "{not json").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = command(&gw, "/append/order-x?type=OrderExploded", "{}").await;
    assert_eq!(s, 200, "{b}");
    // Streams outside the projection's prefix are not delivered at all.
    let (s, b) = command(&gw, "/append/invoice-1?type=InvoiceSent", "{}").await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = command(&gw, "/orders/ok/place", r#"{"customer":"c","total":1}"#).await;
    assert_eq!(s, 200, "{b}");
    let stats = caught_up(&gw, b["position"].as_u64().unwrap()).await;
    assert_eq!(
        (stats["events"].as_u64(), stats["skipped"].as_u64()),
        (Some(1), Some(2)),
        "{stats}"
    );
    let (s, _) = get(&gw, "/orders/x").await;
    assert_eq!(s, 404);
    let log = gw
        .wait_for_log("the skipped event's warning", |l| {
            l.contains("skipping event")
        })
        .await;
    assert!(log.contains("OrderPlaced data"), "{log}");
    // Oversized events and bad stream names are refused at append with the reason.
    let half = "x".repeat(600 * 1024);
    let (s, b) = command(&gw, "/append/order-big?type=OrderPlaced&repeat=2", &half).await;
    assert_eq!(s, 413, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("at most 1048576"),
        "{b}"
    );
    let (s, b) = command(&gw, "/append/?type=X", "{}").await;
    assert_eq!(s, 422, "{b}");
    assert!(b["error"].as_str().unwrap().contains("stream name"), "{b}");
    gw.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_read_model_equals_a_replay_and_a_rebuild_equals_live() {
    let data = TempDir::new("proj-kill");
    let cfg = orders_cfg(data.path());
    let mut acknowledged = 0u64;
    let mut ids = Vec::new();
    for round in 0..3 {
        let gw = Gateway::start(&cfg);
        // A client places and pays orders as fast as it can; the gateway dies under it.
        let addr = gw.addr();
        let client = tokio::spawn(async move {
            let mut acked = 0u64;
            let mut ids = Vec::new();
            for i in 0.. {
                let id = format!("r{round}-{i}");
                ids.push(id.clone());
                for (action, body) in [
                    ("place", r#"{"customer":"k","total":9}"#),
                    ("pay", r#"{"amount":9}"#),
                ] {
                    let req = crate::support::Req::new(
                        "POST",
                        format!("http://{addr}/orders/{id}/{action}"),
                    )
                    .body(body.to_owned())
                    .timeout(Duration::from_secs(5));
                    match req.try_send().await {
                        Ok(r) if r.status == 200 => acked += 1,
                        _ => return (acked, ids),
                    }
                }
            }
            (acked, ids)
        });
        tokio::time::sleep(Duration::from_millis(400 + 200 * round)).await;
        gw.kill_9().await;
        let (acked, round_ids) = client.await.expect("client");
        assert!(
            acked > 0,
            "round {round}: the client got no answer before the kill"
        );
        acknowledged += acked;
        ids.extend(round_ids);
    }

    let gw = Gateway::start(&cfg);
    let (expected, events, head) = replay(&gw, &ids).await;
    assert!(
        events >= acknowledged,
        "every acknowledged command is stored: {events} < {acknowledged}"
    );
    let stats = caught_up(&gw, head).await;
    println!(
        "kill -9 x3: {acknowledged} commands acknowledged, {events} events stored, {} orders checked",
        expected.len()
    );
    assert_eq!(
        stats["events"].as_u64(),
        Some(events),
        "each event applied exactly once: {stats}"
    );
    let live = all_orders(&gw).await;
    let seen = statuses(&live);
    assert_eq!(
        seen, expected,
        "the read model equals a replay of the stored events"
    );

    // Rebuild from position 1 into a new generation; the old one answers until the switch.
    let resp = gw
        .admin_request("POST", "/admin/projections/orders/rebuild")
        .send()
        .await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let building = resp.json()["rebuilding"].as_u64().unwrap();
    assert_eq!(building, 2);
    let (s, during) = get(&gw, "/orders/stats").await;
    assert_eq!(s, 200);
    assert!(
        during["events"].as_u64().unwrap() > 0,
        "the old model still answers: {during}"
    );
    let p = wait_projection(
        &gw,
        "orders",
        "the rebuilt generation to become active",
        |p| p["generation"] == 2 && p["rebuild"].is_null(),
    )
    .await;
    let rebuilt = &p["last_rebuild"];
    println!(
        "rebuild: {} events in {} ms ({:.0} events/s)",
        rebuilt["applied"],
        rebuilt["elapsed_ms"],
        rebuilt["events_per_sec"].as_f64().unwrap()
    );
    assert_eq!(rebuilt["applied"].as_u64(), Some(events), "{p}");
    assert_eq!(
        all_orders(&gw).await,
        live,
        "the rebuilt model equals the live one"
    );
    let (_, after) = get(&gw, "/orders/stats").await;
    assert_eq!(after, stats, "stats equal too");
    // And the new generation keeps following live commands.
    let (s, b) = command(&gw, "/orders/after/place", r#"{"customer":"c","total":1}"#).await;
    assert_eq!(s, 200, "{b}");
    caught_up(&gw, b["position"].as_u64().unwrap()).await;
    let (s, _) = get(&gw, "/orders/after").await;
    assert_eq!(s, 200);
    gw.terminate();
}

/// A replay from scratch by hand of the orders `ids` (every order's stream, as stored):
/// each stored order's (status, events), the number of events, and the last position.
async fn replay(gw: &Gateway, ids: &[String]) -> (BTreeMap<String, (&'static str, u64)>, u64, u64) {
    let mut expected = BTreeMap::new();
    let mut events = 0u64;
    let mut head = 0u64;
    for id in ids {
        let resp = gw
            .admin_get(&format!("/admin/streams/order-{id}"))
            .send()
            .await;
        if resp.status == 404 {
            continue; // the command never reached the store
        }
        let v = resp.json();
        let stored = v["events"].as_array().unwrap();
        events += stored.len() as u64;
        head = head.max(
            stored
                .iter()
                .map(|e| e["position"].as_u64().unwrap())
                .max()
                .unwrap(),
        );
        let status = match stored.last().unwrap()["type"].as_str().unwrap() {
            "OrderPlaced" => "placed",
            "OrderPaid" => "paid",
            other => panic!("unexpected {other}"),
        };
        expected.insert(id.clone(), (status, stored.len() as u64));
    }
    (expected, events, head)
}

/// Each order document's (status, version), to compare with [`replay`].
fn statuses(live: &BTreeMap<String, Value>) -> BTreeMap<String, (&'static str, u64)> {
    live.iter()
        .map(|(id, o)| {
            let status = match o["status"].as_str().unwrap() {
                "placed" => "placed",
                "paid" => "paid",
                other => panic!("unexpected status {other}"),
            };
            (id.clone(), (status, o["version"].as_u64().unwrap()))
        })
        .collect()
}

/// Place and pay orders `<prefix>-0`, `<prefix>-1`… through `addr` until a request fails
/// (the gateway died) or `stop` is set; returns the acknowledged commands and the ids tried.
async fn order_client(
    addr: std::net::SocketAddr,
    prefix: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<String>) {
    let mut acked = 0u64;
    let mut ids = Vec::new();
    for i in 0.. {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let id = format!("{prefix}-{i}");
        ids.push(id.clone());
        for (action, body) in [
            ("place", r#"{"customer":"k","total":9}"#),
            ("pay", r#"{"amount":9}"#),
        ] {
            let req =
                crate::support::Req::new("POST", format!("http://{addr}/orders/{id}/{action}"))
                    .body(body.to_owned())
                    .timeout(Duration::from_secs(5));
            match req.try_send().await {
                Ok(r) if r.status == 200 => acked += 1,
                _ => return (acked, ids),
            }
        }
    }
    (acked, ids)
}

/// Lease timing of the NATS tests: a failover takes about a second and a half.
const FAST_LEADER: &str =
    "lease_ttl_ms = 1500\nrenew_deadline_ms = 1000\nretry_period_ms = 250\ngroups = [\"default\"]";

/// The states of projection `orders` on every running node.
async fn states(nodes: &[Option<Gateway>]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for node in nodes {
        out.push(match node {
            Some(gw) => Some(
                projection(gw, "orders").await["state"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            None => None,
        });
    }
    out
}

/// Wait until exactly one running node runs the projection and the others stand by; its index.
async fn the_one_running(nodes: &[Option<Gateway>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = states(nodes).await;
        let running: Vec<usize> = (0..s.len())
            .filter(|&i| s[i].as_deref() == Some("running"))
            .collect();
        let standby = s.iter().filter(|x| x.as_deref() == Some("standby")).count();
        if running.len() == 1 && running.len() + standby == s.iter().flatten().count() {
            return running[0];
        }
        assert!(Instant::now() < deadline, "no single running node: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three gateways with `[backend] kind = "nats"` on one nats-server run the orders demo: every
/// node answers queries from the shared read model, the projection runs on exactly one node at
/// a time, and after kill -9 of that node another one resumes it from the checkpoint in the
/// log: the read model equals a replay of the events, each applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_every_node_answers_and_the_projection_resumes_elsewhere_after_kill_9() {
    let nats = crate::nats_server::NatsServer::start();
    let backend = format!("kind = \"nats\"\nservers = [{:?}]\n", nats.url);
    let dirs: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("proj-nats-{i}")))
        .collect();
    let cfg = |i: usize| {
        orders_cfg_on(
            dirs[i].path(),
            &backend,
            &format!("[leader]\nnode_id = \"n{i}\"\n{FAST_LEADER}\n"),
        )
    };
    let mut nodes: Vec<Option<Gateway>> = (0..3).map(|i| Some(Gateway::start(&cfg(i)))).collect();
    let leader = the_one_running(&nodes).await;

    // Commands through every node; the projection (on `leader`) folds them; every node answers.
    let mut ids = Vec::new();
    let mut last = 0;
    for i in 0..12 {
        let gw = nodes[i % 3].as_ref().unwrap();
        let id = format!("warm-{i}");
        let (s, b) = command(
            gw,
            &format!("/orders/{id}/place"),
            r#"{"customer":"c","total":3}"#,
        )
        .await;
        assert_eq!(s, 200, "{b}");
        last = b["position"].as_u64().unwrap();
        ids.push(id);
    }
    for gw in nodes.iter().flatten() {
        let stats = caught_up(gw, last).await;
        assert_eq!(stats["events"].as_u64(), Some(12), "{stats}");
    }
    assert_eq!(
        all_orders(nodes[0].as_ref().unwrap()).await,
        all_orders(nodes[2].as_ref().unwrap()).await
    );

    // A client writes through a node that survives while the projection's node dies.
    let survivor = (leader + 1) % 3;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = tokio::spawn(order_client(
        nodes[survivor].as_ref().unwrap().addr(),
        "kill".into(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at = Instant::now();
    nodes[leader].take().unwrap().kill_9().await;
    let next = the_one_running(&nodes).await;
    let takeover = killed_at.elapsed();
    assert_ne!(next, leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, more) = client.await.expect("client");
    assert!(acked > 0, "the client got no answer");
    ids.extend(more);

    let gw = nodes[survivor].as_ref().unwrap();
    let (expected, events, head) = replay(gw, &ids).await;
    assert!(events >= acked + 12, "every acknowledged command is stored");
    for gw in nodes.iter().flatten() {
        let stats = caught_up(gw, head).await;
        assert_eq!(
            stats["events"].as_u64(),
            Some(events),
            "each event applied exactly once: {stats}"
        );
        assert_eq!(
            statuses(&all_orders(gw).await),
            expected,
            "the read model equals a replay of the stored events"
        );
    }
    let p = projection(nodes[next].as_ref().unwrap(), "orders").await;
    assert_eq!(p["checkpoint"].as_u64(), Some(head), "{p}");
    println!(
        "3 gateways on NATS: projection moved n{leader} -> n{next} {} ms after kill -9; \
         {events} events, each applied once on every node",
        takeover.as_millis()
    );
    for gw in nodes.iter().flatten() {
        gw.terminate();
    }
    drop(nats);
}

/// `ficus run` with projections on a NATS server that is not there fails at start with the
/// address it tried.
#[test]
fn on_nats_an_unreachable_server_fails_the_start_clearly() {
    let data = TempDir::new("proj-nats-down");
    let port = crate::nats_server::free_port();
    let cfg = orders_cfg_on(
        data.path(),
        &format!("kind = \"nats\"\nservers = [\"nats://127.0.0.1:{port}\"]\n"),
        "",
    );
    let err = Gateway::try_start(&cfg)
        .err()
        .expect("no NATS server: the start fails");
    assert!(
        err.stderr
            .contains(&format!("cannot connect to nats://127.0.0.1:{port}"))
            || err.stderr.contains(&format!(
                "cannot connect to NATS at nats://127.0.0.1:{port}"
            )),
        "{err}"
    );
}

/// Two probe projections over different stream prefixes, with the event writer.
fn probe_cfg(data: &Path) -> Cfg {
    Cfg::new()
        .plugin_source("probe", &wasm("projection-probe.wasm"), "grants = [\"log\"]\ntimeout_ms = 2000")
        .plugin_source("writer", &wasm("event-writer.wasm"), "grants = [\"events\"]\ntimeout_ms = 5000")
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n\n\
             [[projections]]\nname = \"pa\"\nplugin = \"probe\"\nstream_prefix = \"a-\"\n\
             retry_ms = 20\nretry_max_ms = 200\nbatch = 4\nconfig = {{ model = \"pa\" }}\n\n\
             [[projections]]\nname = \"pb\"\nplugin = \"probe\"\nstream_prefix = \"b-\"\n\
             retry_ms = 20\nretry_max_ms = 200\nconfig = {{ model = \"pb\" }}\n\n\
             [[routes]]\nname = \"append\"\nmatch = {{ path_prefix = \"/append/\" }}\nhandler = \"writer\"\n",
            data.to_string_lossy()
        ))
}

async fn append(gw: &Gateway, stream: &str, event_type: &str) -> u64 {
    let (s, b) = command(gw, &format!("/append/{stream}?type={event_type}"), "{}").await;
    assert_eq!(s, 200, "{b}");
    b["position"].as_u64().unwrap()
}

#[tokio::test]
async fn a_failing_event_stalls_only_its_projection_and_nothing_is_applied_twice() {
    let data = TempDir::new("proj-fail");
    let gw = Gateway::start(&probe_cfg(data.path()));
    // pa: an event that fails twice, then applies (retried with backoff, same instance).
    let p1 = append(&gw, "a-1", "Ok").await;
    let p2 = append(&gw, "a-1", "FailTwice").await;
    let p3 = append(&gw, "a-1", "Ok").await;
    // pb: a trap, then an event behind it that must wait.
    let b1 = append(&gw, "b-1", "Ok").await;
    let b2 = append(&gw, "b-1", "Trap").await;
    let _b3 = append(&gw, "b-1", "Ok").await;

    let pa = wait_projection(&gw, "pa", "pa to apply past the failing event", |p| {
        p["checkpoint"].as_u64() >= Some(p3)
    })
    .await;
    assert!(pa["last_error"].is_null(), "{pa}");
    assert_eq!(pa["applied"].as_u64(), Some(3), "{pa}");
    let pb = wait_projection(&gw, "pb", "pb to stall at the trap", |p| {
        p["state"] == "stalled"
    })
    .await;
    assert_eq!(
        pb["checkpoint"].as_u64(),
        Some(b1),
        "pb stops right before the trap: {pb}"
    );
    let err = pb["last_error"].as_str().unwrap();
    assert!(
        err.contains(&format!("at position {b2}")) && err.contains("trap"),
        "{err}"
    );
    let _ = (p1, p2);

    // pa goes on while pb is stalled.
    let p4 = append(&gw, "a-2", "Poison").await;
    let pa = wait_projection(&gw, "pa", "pa to stall at the poison", |p| {
        p["state"] == "stalled"
    })
    .await;
    assert_eq!(pa["checkpoint"].as_u64(), Some(p3), "{pa}");
    assert!(
        pa["last_error"].as_str().unwrap().contains("poison event"),
        "{pa}"
    );
    assert!(
        pa["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("position {p4}")),
        "{pa}"
    );

    // After a kill -9 both resume from their checkpoints: nothing applied twice.
    gw.kill_9().await;
    let gw = Gateway::start(&probe_cfg(data.path()));
    let pa = wait_projection(&gw, "pa", "pa to stall again at the poison", |p| {
        p["state"] == "stalled"
    })
    .await;
    assert_eq!(pa["checkpoint"].as_u64(), Some(p3), "{pa}");
    assert_eq!(
        pa["applied"].as_u64(),
        Some(0),
        "nothing re-applied after the restart: {pa}"
    );
    let metrics = gw.metrics().await;
    assert!(
        crate::support::metric(
            &metrics,
            "ficus_projection_events_total",
            &[("projection", "pa"), ("result", "failed")]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // Rebuild errors: unknown projection, and the wrong method.
    let resp = gw
        .admin_request("POST", "/admin/projections/nope/rebuild")
        .send()
        .await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert!(
        resp.text()
            .contains("unknown projection \"nope\" (known: pa, pb)"),
        "{resp:?}"
    );
    let resp = gw.admin_get("/admin/projections/pa/rebuild").send().await;
    assert_eq!(resp.status, 404, "{resp:?}");
    gw.terminate();
}

#[test]
fn check_reports_projection_plugins_that_do_not_fit() {
    let data = TempDir::new("proj-check");
    // A filter plugin named as a projection, and a probe whose configure rejects its config.
    let cfg = Cfg::new()
        .plugin_source(
            "notproj",
            &wasm("orders-query.wasm"),
            "grants = [\"read-model\"]\ntimeout_ms = 2000",
        )
        .plugin_source(
            "probe",
            &wasm("projection-probe.wasm"),
            "grants = [\"log\"]",
        )
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n\n\
             [[projections]]\nname = \"x\"\nplugin = \"notproj\"\n\n\
             [[projections]]\nname = \"y\"\nplugin = \"probe\"\n",
            data.path().to_string_lossy()
        ));
    let checked = cfg.check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("projections[0].plugin")
            && checked.stderr.contains("not a projection plugin"),
        "{checked}"
    );
    assert!(
        checked.stderr.contains("projections[1].config")
            && checked.stderr.contains("config: expected"),
        "{checked}"
    );
}

#[test]
fn a_query_handler_without_the_read_model_grant_fails_check() {
    let data = TempDir::new("proj-grant");
    let cfg = Cfg::new()
        .plugin_source("q", &wasm("orders-query.wasm"), "")
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n\n[[routes]]\nname = \"q\"\nmatch = {{ path_prefix = \"/\" }}\nhandler = \"q\"\n",
            data.path().to_string_lossy()
        ));
    let checked = cfg.check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("ficus:gateway/read-model")
            && checked.stderr.contains("\"read-model\""),
        "{checked}"
    );
}
