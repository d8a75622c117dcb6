//! CQRS, command side: the `orders-command` handler (plugins/orders/orders-command) loads an
//! order from the event store, decides and appends with the expected version. Invariants
//! answer 409/422 with a clear body, concurrent commands on one order have exactly one winner,
//! and the events survive a kill -9.

use crate::support::{Cfg, Gateway, TempDir};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Plugins this module tests (for `config::every_built_plugin_is_a_known_fixture`).
pub(crate) const FIXTURES: [&str; 1] = ["orders-command.wasm"];

fn cfg(data: &Path, grants: &str) -> Cfg {
    cfg_on(data, grants, "")
}

/// `backend`: extra `[backend]` keys (e.g. the NATS backend's).
fn cfg_on(data: &Path, grants: &str, backend: &str) -> Cfg {
    let source = Path::new(ficus::WASM_DIR).join("orders-command.wasm");
    Cfg::new()
        .plugin_source(
            "orders",
            &source.to_string_lossy(),
            &format!("grants = [{grants}]\ntimeout_ms = 5000"),
        )
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n{backend}\n[[routes]]\nname = \"orders\"\n\
             match = {{ path_prefix = \"/orders\" }}\nhandler = \"orders\"\n",
            data.to_string_lossy()
        ))
}

/// POST a command (JSON body); its status and JSON answer.
pub(crate) async fn command(gw: &Gateway, path: &str, body: &str) -> (u16, serde_json::Value) {
    let resp = gw
        .request("POST", path)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    let json = resp.json();
    (resp.status, json)
}

#[tokio::test]
async fn place_pay_ship_with_invariants_enforced() {
    let data = TempDir::new("cqrs-flow");
    let gw = Gateway::start(&cfg(data.path(), "\"events\""));

    let (s, b) = command(&gw, "/orders/7/place", r#"{"customer":"c1","total":4200}"#).await;
    assert_eq!(
        (s, b["event"].as_str(), b["version"].as_u64()),
        (200, Some("OrderPlaced"), Some(1)),
        "{b}"
    );

    let (s, b) = command(&gw, "/orders/7/ship", "").await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"], "cannot ship an unpaid order");

    let (s, b) = command(&gw, "/orders/7/pay", r#"{"amount":100}"#).await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("does not match the order total 4200"),
        "{b}"
    );

    let (s, b) = command(&gw, "/orders/7/pay", r#"{"amount":4200}"#).await;
    assert_eq!((s, b["version"].as_u64()), (200, Some(2)), "{b}");
    let (s, b) = command(&gw, "/orders/7/pay", r#"{"amount":4200}"#).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("the order is already paid")),
        "{b}"
    );
    let (s, b) = command(&gw, "/orders/7/ship", "").await;
    assert_eq!(
        (s, b["event"].as_str(), b["version"].as_u64()),
        (200, Some("OrderShipped"), Some(3)),
        "{b}"
    );
    let (s, b) = command(&gw, "/orders/7/cancel", "{}").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("cannot cancel a shipped order")),
        "{b}"
    );

    // Bad commands.
    let (s, b) = command(&gw, "/orders/7/place", r#"{"customer":"c1","total":1}"#).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("the order already exists")),
        "{b}"
    );
    let (s, b) = command(&gw, "/orders/8/pay", r#"{"amount":1}"#).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("no such order")),
        "{b}"
    );
    let (s, b) = command(&gw, "/orders/8/refund", "{}").await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("unknown action"),
        "{b}"
    );
    let (s, b) = command(
        &gw,
        "/orders/8/place",
        r#"{"customer":"c1","total":"lots"}"#,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"].as_str().unwrap().starts_with("place body:"),
        "{b}"
    );
    let (s, b) = command(&gw, "/orders/8/place", "{not json").await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = command(&gw, "/orders/bad%20id/place", "{}").await;
    assert_eq!(s, 422, "{b}");
    let resp = gw.get("/orders/7").send().await;
    assert_eq!(resp.status, 405, "{resp:?}");
    // The embedded backend says where its files are.
    let backend = gw.admin_get("/admin/backend").send().await.json();
    assert_eq!(backend["kind"], "embedded", "{backend}");
    assert_eq!(
        backend["data_dir"].as_str().map(std::path::PathBuf::from),
        Some(data.path().to_path_buf()),
        "{backend}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_on_one_order_have_exactly_one_winner() {
    let data = TempDir::new("cqrs-race");
    let gw: &'static Gateway = Box::leak(Box::new(Gateway::start(&cfg(data.path(), "\"events\""))));
    for round in 0..5 {
        let id = format!("race-{round}");
        let (s, b) = command(
            gw,
            &format!("/orders/{id}/place"),
            r#"{"customer":"c","total":10}"#,
        )
        .await;
        assert_eq!(s, 200, "{b}");
        // Eight different cancels (different reasons) at the same version: one wins, the
        // others reload, see a cancelled order and get 409.
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let path = format!("/orders/{id}/cancel");
                let body = format!(r#"{{"reason":"r{i}"}}"#);
                tokio::spawn(async move { command(gw, &path, &body).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            let (s, b) = t.await.expect("task");
            match s {
                200 => wins += 1,
                409 => assert!(
                    b["error"] == "the order is cancelled"
                        || b["error"]
                            .as_str()
                            .unwrap_or_default()
                            .starts_with("concurrent modification"),
                    "{b}"
                ),
                other => panic!("unexpected {other}: {b}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    // Identical concurrent commands are one command: the same event id, stored once, and
    // every caller gets the same result.
    let (s, _) = command(gw, "/orders/same/place", r#"{"customer":"c","total":10}"#).await;
    assert_eq!(s, 200);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move { command(gw, "/orders/same/pay", r#"{"amount":10}"#).await })
        })
        .collect();
    let mut positions = Vec::new();
    for t in tasks {
        let (s, b) = t.await.expect("task");
        match s {
            200 => positions.push(b["position"].as_u64().expect("position")),
            409 => assert_eq!(b["error"], "the order is already paid", "{b}"),
            other => panic!("unexpected {other}: {b}"),
        }
    }
    positions.dedup();
    assert_eq!(positions.len(), 1, "one OrderPaid event: {positions:?}");
    let (s, b) = command(gw, "/orders/same/ship", "").await;
    assert_eq!(
        (s, b["version"].as_u64()),
        (200, Some(3)),
        "place, pay, ship: {b}"
    );
    gw.terminate();
}

#[tokio::test]
async fn events_survive_kill_9() {
    let data = TempDir::new("cqrs-kill");
    let first = Gateway::start(&cfg(data.path(), "\"events\""));
    let (s, _) = command(&first, "/orders/k/place", r#"{"customer":"c","total":5}"#).await;
    assert_eq!(s, 200);
    let (s, _) = command(&first, "/orders/k/pay", r#"{"amount":5}"#).await;
    assert_eq!(s, 200);
    let status = Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(first.wait_exit(Duration::from_secs(10)).await.is_some());
    let second = Gateway::start(&cfg(data.path(), "\"events\""));
    let (s, b) = command(&second, "/orders/k/ship", "").await;
    assert_eq!(
        (s, b["version"].as_u64()),
        (200, Some(3)),
        "the paid order ships after the restart: {b}"
    );
}

#[test]
fn a_handler_importing_events_without_the_grant_fails_check() {
    let data = TempDir::new("cqrs-grant");
    let checked = cfg(data.path(), "").check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("ficus:gateway/events") && checked.stderr.contains("\"events\""),
        "the error names the interface and the grant: {checked}"
    );
}

#[tokio::test]
async fn admin_shows_a_stream_up_to_any_version() {
    let data = TempDir::new("cqrs-admin");
    let gw = Gateway::start(&cfg(data.path(), "\"events\""));
    for (path, body) in [
        ("/orders/t/place", r#"{"customer":"c","total":3}"#),
        ("/orders/t/pay", r#"{"amount":3}"#),
        ("/orders/t/ship", ""),
    ] {
        let (s, b) = command(&gw, path, body).await;
        assert_eq!(s, 200, "{b}");
    }
    let resp = gw
        .admin_get("/admin/streams/order-t?version=2")
        .send()
        .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = resp.json();
    assert_eq!(
        (v["version"].as_u64(), v["current_version"].as_u64()),
        (Some(2), Some(3)),
        "{v}"
    );
    let types: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderPaid"]);
    assert_eq!(
        v["events"][0]["data"]["total"], 3,
        "JSON data is shown as JSON: {v}"
    );
    let all = gw.admin_get("/admin/streams/order-t").send().await.json();
    assert_eq!(all["events"].as_array().unwrap().len(), 3, "{all}");

    for (path, status, code) in [
        ("/admin/streams/order-nope", 404, "unknown_stream"),
        ("/admin/streams/order-t?version=x", 400, "bad_version"),
        ("/admin/streams/order-t?v=1", 400, "bad_query"),
        ("/admin/streams/%24all", 400, "bad_stream"),
        ("/admin/streams/%zz", 400, "bad_stream"),
    ] {
        let resp = gw.admin_get(path).send().await;
        assert_eq!(resp.status, status, "{path}: {resp:?}");
        assert_eq!(
            resp.header("x-ficus-error").as_deref(),
            Some(code),
            "{path}: {resp:?}"
        );
    }
}

/// The order aggregate's pure logic (plugins/orders/orders-command/src/domain.rs), run natively.
#[path = "../../plugins/orders/orders-command/src/domain.rs"]
#[allow(dead_code, unreachable_pub)]
mod domain;

mod domain_logic {
    use super::domain::{event_id, parse, Command, Order, Refusal, Status};

    fn order(events: &[(&str, &str)]) -> Order {
        let mut o = Order::default();
        for (t, d) in events {
            o.apply(t, d.as_bytes());
        }
        o
    }

    #[test]
    fn every_command_in_every_state() {
        let placed = [("OrderPlaced", r#"{"customer":"c","total":5}"#)];
        let paid = [placed[0], ("OrderPaid", r#"{"amount":5}"#)];
        let shipped = [paid[0], paid[1], ("OrderShipped", "{}")];
        let cancelled = [placed[0], ("OrderCancelled", "{}")];
        let pay5 = |_: ()| parse("/orders/1/pay", br#"{"amount":5}"#).unwrap().1;
        let ship = parse("/orders/1/ship", b"").unwrap().1;
        let cancel = parse("/orders/1/cancel", b"{}").unwrap().1;
        let place = parse("/orders/1/place", br#"{"customer":"c","total":5}"#)
            .unwrap()
            .1;
        let ok = |o: &Order, c: &Command| o.decide(c).map(|(t, _)| t);
        let conflict = |m: &str| Err(Refusal::Conflict(m.to_owned()));

        let new = Order::default();
        assert_eq!(ok(&new, &place), Ok("OrderPlaced"));
        assert_eq!(ok(&new, &pay5(())), conflict("no such order"));
        let o = order(&placed);
        assert_eq!((o.status, o.total), (Some(Status::Placed), 5));
        assert_eq!(ok(&o, &place), conflict("the order already exists"));
        assert_eq!(ok(&o, &ship), conflict("cannot ship an unpaid order"));
        assert_eq!(ok(&o, &pay5(())), Ok("OrderPaid"));
        assert!(matches!(
            o.decide(&parse("/orders/1/pay", br#"{"amount":4}"#).unwrap().1),
            Err(Refusal::Invalid(_))
        ));
        assert_eq!(ok(&o, &cancel), Ok("OrderCancelled"));
        let o = order(&paid);
        assert_eq!(ok(&o, &pay5(())), conflict("the order is already paid"));
        assert_eq!(ok(&o, &ship), Ok("OrderShipped"));
        assert_eq!(ok(&o, &cancel), Ok("OrderCancelled"));
        let o = order(&shipped);
        assert_eq!(ok(&o, &ship), conflict("the order is already shipped"));
        assert_eq!(ok(&o, &cancel), conflict("cannot cancel a shipped order"));
        let o = order(&cancelled);
        for c in [&pay5(()), &ship, &cancel] {
            assert_eq!(ok(&o, c), conflict("the order is cancelled"));
        }
    }

    #[test]
    fn commands_are_parsed_strictly() {
        for (path, body, needle) in [
            ("/orders/1", "", "expected POST /orders/{id}/"),
            ("/orders//place", "", "order id"),
            ("/orders/a.b/place", "", "order id"),
            ("/orders/1/refund", "", "unknown action"),
            (
                "/orders/1/place",
                r#"{"customer":"c"}"#,
                "place body: missing field `total`",
            ),
            (
                "/orders/1/pay",
                r#"{"amount":1,"x":2}"#,
                "pay body: unknown field `x`",
            ),
            ("/orders/1/pay", "{", "pay body:"),
        ] {
            match parse(path, body.as_bytes()) {
                Err(Refusal::Invalid(m)) => assert!(m.contains(needle), "{path} {body}: {m}"),
                other => panic!("{path} {body}: {other:?}"),
            }
        }
        let (stream, command) = parse("/orders/A-1_b/ship?x=1", b"  ").unwrap();
        assert_eq!((stream.as_str(), command), ("order-A-1_b", Command::Ship));
    }

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let a = event_id("order-1", 0, "OrderPlaced", b"{}");
        assert_eq!(a, event_id("order-1", 0, "OrderPlaced", b"{}"));
        assert_ne!(a, event_id("order-1", 1, "OrderPlaced", b"{}"));
        assert_ne!(a, event_id("order-2", 0, "OrderPlaced", b"{}"));
        assert_ne!(a, event_id("order-1", 0, "OrderPaid", b"{}"));
        assert_ne!(a, event_id("order-1", 0, "OrderPlaced", b"{ }"));
        assert!(a.starts_with("order-1:0:"));
    }
}

/// Durability: a client appends continuously (through the `event-writer` fixture) while the
/// gateway is killed with SIGKILL, three times. After each restart, every append that was
/// acknowledged is stored at the version and position it was acknowledged with, and the
/// stream has no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_survives_kill_9_without_gaps() {
    let data = TempDir::new("cqrs-durable");
    let writer = Path::new(ficus::WASM_DIR).join("event-writer.wasm");
    let cfg = Cfg::new()
        .plugin_source(
            "writer",
            &writer.to_string_lossy(),
            "grants = [\"events\"]\ntimeout_ms = 5000",
        )
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n\n[[routes]]\nname = \"append\"\n\
             match = {{ path_prefix = \"/append/\" }}\nhandler = \"writer\"\n",
            data.path().to_string_lossy()
        ));
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..3u64 {
        let gw = Gateway::start(&cfg);
        let addr = gw.addr();
        let client = tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let req = crate::support::Req::new(
                    "POST",
                    format!("http://{addr}/append/durable-1?type=Tick"),
                )
                .body(format!("{{\"round\":{round}}}"))
                .timeout(Duration::from_secs(5));
                match req.try_send().await {
                    Ok(r) if r.status == 200 => {
                        let v = r.json();
                        acked.push((
                            v["version"].as_u64().unwrap(),
                            v["position"].as_u64().unwrap(),
                        ));
                    }
                    _ => return acked,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300 + 150 * round)).await;
        gw.kill_9().await;
        let round_acked = client.await.expect("client");
        assert!(
            !round_acked.is_empty(),
            "round {round}: nothing acknowledged before the kill"
        );
        acked.extend(round_acked);
    }
    let gw = Gateway::start(&cfg);
    let stored = gw.admin_get("/admin/streams/durable-1").send().await.json();
    let stored: Vec<(u64, u64)> = stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["version"].as_u64().unwrap(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect();
    for (i, (version, position)) in stored.iter().enumerate() {
        assert_eq!(*version, i as u64 + 1, "versions have no gaps");
        assert_eq!(
            *position, *version,
            "one stream: positions have no gaps either"
        );
    }
    for (version, position) in &acked {
        assert_eq!(
            stored.get(*version as usize - 1),
            Some(&(*version, *position)),
            "acknowledged append v{version}@{position} is stored as acknowledged"
        );
    }
    println!(
        "kill -9 x3: {} appends acknowledged, all {} checked present; {} stored (the rest were in flight)",
        acked.len(),
        acked.len(),
        stored.len()
    );
    gw.terminate();
}

/// `[backend] kind = "nats"`: two gateways (separate data directories, as on two machines)
/// share one event store on a real nats-server. Each sees the other's events, and concurrent
/// commands on one order through both gateways have exactly one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_an_event_store_on_nats() {
    let nats = crate::nats_server::NatsServer::start();
    let backend = format!("kind = \"nats\"\nservers = [{:?}]\n", nats.url);
    let (d1, d2) = (TempDir::new("cqrs-nats-1"), TempDir::new("cqrs-nats-2"));
    let gw1: &'static Gateway = Box::leak(Box::new(Gateway::start(&cfg_on(
        d1.path(),
        "\"events\"",
        &backend,
    ))));
    let gw2: &'static Gateway = Box::leak(Box::new(Gateway::start(&cfg_on(
        d2.path(),
        "\"events\"",
        &backend,
    ))));
    let (s, b) = command(gw1, "/orders/n/place", r#"{"customer":"c","total":7}"#).await;
    assert_eq!((s, b["version"].as_u64()), (200, Some(1)), "{b}");
    let (s, b) = command(gw2, "/orders/n/pay", r#"{"amount":7}"#).await;
    assert_eq!((s, b["version"].as_u64()), (200, Some(2)), "{b}");
    let (s, b) = command(gw1, "/orders/n/pay", r#"{"amount":7}"#).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("the order is already paid")),
        "{b}"
    );
    let mut total_wins = 0;
    for round in 0..3 {
        let id = format!("nats-race-{round}");
        let (s, b) = command(
            gw2,
            &format!("/orders/{id}/place"),
            r#"{"customer":"c","total":1}"#,
        )
        .await;
        assert_eq!(s, 200, "{b}");
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let gw = if i % 2 == 0 { gw1 } else { gw2 };
                let path = format!("/orders/{id}/cancel");
                let body = format!(r#"{{"reason":"r{i}"}}"#);
                tokio::spawn(async move { command(gw, &path, &body).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            let (s, b) = t.await.expect("task");
            match s {
                200 => wins += 1,
                409 => {}
                other => panic!("unexpected {other}: {b}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        total_wins += wins;
    }
    println!("two gateways on NATS: {total_wins} winners in 3 rounds of 8 concurrent cancels");
    gw1.terminate();
    gw2.terminate();
    drop(nats);
}
