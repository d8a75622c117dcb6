//! Pub/sub: a request-path filter (`plugins/publisher`) publishes, subscriber plugins
//! (`plugins/fixtures/subscriber`, which logs a `received label=… subject=… seq=… delivery=…
//! payload=…` line per delivery) receive. Fan-out, queue groups, redelivery after an error or
//! a trap, dead letters, per-subject order, durability across kill -9, the at-most-once drop
//! policy, and bad configs rejected by `ficus check`.

use crate::nats_server::NatsServer;
use crate::support::{dead_endpoint, Cfg, Gateway, TempDir, Upstream};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Plugins built only for this module.
pub(crate) const FIXTURES: [&str; 2] = ["subscriber.wasm", "publisher.wasm"];

/// Longest wait for deliveries that should happen.
const WAIT: Duration = Duration::from_secs(20);

fn fixture(file: &str) -> String {
    let path = Path::new(ficus::WASM_DIR).join(file);
    assert!(
        path.is_file(),
        "fixture {} is missing (host/build.rs builds plugins/ into {})",
        path.display(),
        ficus::WASM_DIR
    );
    path.to_string_lossy().into_owned()
}

/// A config with the `sub` subscriber plugin, the `pub` publisher on `/publish` (subject from
/// `x-subject`, payload from `x-payload`, answers 202), a data dir, and `extra` TOML, on the
/// embedded backend.
fn cfg(data: &Path, extra: &str) -> Cfg {
    cfg_on("", data, extra)
}

/// The `[backend]` lines of a gateway on the NATS server `nats`.
fn nats_backend(nats: &NatsServer) -> String {
    format!("kind = \"nats\"\nservers = [{:?}]\n", nats.url)
}

/// [`cfg`] with `backend` lines in `[backend]` (empty: embedded; [`nats_backend`]: NATS).
fn cfg_on(backend: &str, data: &Path, extra: &str) -> Cfg {
    Cfg::new()
        .plugin_source(
            "sub",
            &fixture("subscriber.wasm"),
            "grants = [\"log\", \"clock\"]\ntimeout_ms = 2000",
        )
        .plugin_source("pub", &fixture("publisher.wasm"), "grants = [\"pubsub\"]")
        .upstream("nowhere", &[dead_endpoint()], "")
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n{backend}\
             [[routes]]\nmatch = {{ path = \"/publish\" }}\nupstream = \"nowhere\"\n\
             pipeline = [{{ plugin = \"pub\", config = {{ subject = \"default.subject\", \
             subject_header = \"x-subject\", payload_header = \"x-payload\", respond = 202 }} }}]\n\
             {extra}",
            data.to_string_lossy()
        ))
}

async fn publish(gw: &Gateway, subject: &str, payload: &str) {
    let resp = gw
        .request("POST", "/publish")
        .header("x-subject", subject)
        .header("x-payload", payload)
        .send()
        .await;
    assert_eq!(resp.status, 202, "publish {subject} {payload}: {resp:?}");
}

/// One logged delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    label: String,
    subject: String,
    seq: u64,
    delivery: u32,
    payload: String,
    headers: String,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let at = line.find(&key)? + key.len();
    Some(line[at..].split_whitespace().next().unwrap_or_default())
}

/// Every delivery logged in `log`, in order.
fn received(log: &str) -> Vec<Received> {
    log.lines()
        .filter(|l| l.contains("received label="))
        .filter_map(|l| {
            let at = l.find("received label=")?;
            let l = &l[at..];
            Some(Received {
                label: field(l, "label")?.to_owned(),
                subject: field(l, "subject")?.to_owned(),
                seq: field(l, "seq")?.parse().ok()?,
                delivery: field(l, "delivery")?.parse().ok()?,
                payload: field(l, "payload")?.to_owned(),
                headers: field(l, "headers").unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

fn of(all: &[Received], label: &str) -> Vec<Received> {
    all.iter().filter(|r| r.label == label).cloned().collect()
}

/// Wait until `done` holds for the deliveries logged by `gateways` (all their logs together).
async fn wait_for(
    gateways: &[&Gateway],
    what: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log: String = gateways.iter().map(|g| g.stderr()).collect();
        let all = received(&log);
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {WAIT:?}; deliveries so far: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn subscriptions(gw: &Gateway) -> BTreeMap<String, Value> {
    let resp = gw.admin_get("/admin/subscriptions").send().await;
    assert_eq!(resp.status, 200, "GET /admin/subscriptions: {resp:?}");
    resp.json()["subscriptions"]
        .as_array()
        .expect("a list of subscriptions")
        .iter()
        .map(|s| (s["name"].as_str().expect("name").to_owned(), s.clone()))
        .collect()
}

/// Wait until `/admin/subscriptions` satisfies `done`.
async fn wait_stats(gw: &Gateway, what: &str, done: impl Fn(&BTreeMap<String, Value>) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = subscriptions(gw).await;
        if done(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {WAIT:?}; /admin/subscriptions: {stats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn n(stats: &BTreeMap<String, Value>, sub: &str, key: &str) -> u64 {
    stats[sub][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{sub}.{key} in {stats:#?}"))
}

#[tokio::test]
async fn fan_out_wildcards_and_a_queue_group_that_delivers_each_message_once() {
    fan_out("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_fan_out_wildcards_and_a_queue_group_that_delivers_each_message_once() {
    let nats = NatsServer::start();
    fan_out(&nats_backend(&nats)).await;
}

async fn fan_out(backend: &str) {
    let data = TempDir::new(&format!(
        "pubsub-fanout{}",
        if backend.is_empty() { "" } else { "-nats" }
    ));
    let gw = Gateway::start(&cfg_on(
        backend,
        data.path(),
        r#"
        [[subscriptions]]
        name = "all"
        subject = "jobs.>"
        plugin = "sub"
        config = { label = "all" }
        [[subscriptions]]
        name = "one-level"
        subject = "jobs.*"
        plugin = "sub"
        delivery = "at-most-once"
        config = { label = "one" }
        [[subscriptions]]
        name = "w1"
        subject = "jobs.>"
        plugin = "sub"
        queue = "workers"
        config = { label = "w1" }
        [[subscriptions]]
        name = "w2"
        subject = "jobs.>"
        plugin = "sub"
        queue = "workers"
        config = { label = "w2" }
        "#,
    ));
    let count = 30;
    for i in 0..count {
        publish(&gw, "jobs.new", &format!("m{i}")).await;
    }
    publish(&gw, "jobs.eu.new", "deep").await;
    publish(&gw, "other.new", "nobody").await;
    let all = wait_for(&[&gw], "every subscription got its messages", |all| {
        of(all, "all").len() == count + 1
            && of(all, "one").len() == count
            && of(all, "w1").len() + of(all, "w2").len() > count
    })
    .await;
    // Two independent subscriptions each get every message, in publish order.
    let payloads = |label: &str| -> Vec<String> {
        of(&all, label)
            .into_iter()
            .filter(|r| r.subject == "jobs.new")
            .map(|r| r.payload)
            .collect()
    };
    let expected: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads("all"), expected);
    assert_eq!(payloads("one"), expected);
    // `jobs.*` is one token: not `jobs.eu.new`; `jobs.>` is.
    assert!(of(&all, "one").iter().all(|r| r.subject == "jobs.new"));
    assert!(of(&all, "all").iter().any(|r| r.subject == "jobs.eu.new"));
    assert!(all.iter().all(|r| r.subject != "other.new"));
    // The message carries the publisher's headers.
    assert!(
        of(&all, "all")[0].headers.contains("method:POST")
            && of(&all, "all")[0].headers.contains("path:/publish"),
        "{:?}",
        of(&all, "all")[0]
    );

    // Let any stray duplicate show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = gw.stderr();
    let all = received(&log);
    let mut members: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for r in all.iter().filter(|r| r.label == "w1" || r.label == "w2") {
        members
            .entry(r.payload.clone())
            .or_default()
            .push(r.label.as_str());
    }
    assert_eq!(
        members.len(),
        count + 1,
        "every message reached the group: {members:?}"
    );
    for (payload, got) in &members {
        assert_eq!(got.len(), 1, "{payload} was delivered to {got:?}");
    }
    let w1 = of(&all, "w1").len();
    let w2 = of(&all, "w2").len();
    eprintln!("queue group split: w1 {w1}, w2 {w2}");

    wait_stats(&gw, "counters settle", |s| {
        n(s, "all", "acked") == count as u64 + 1 && n(s, "all", "pending") == 0
    })
    .await;
    let stats = subscriptions(&gw).await;
    assert_eq!(stats["w1"]["queue"], "workers");
    // A queue group's durable counters are the group's.
    assert_eq!(n(&stats, "w1", "acked"), count as u64 + 1);
    assert_eq!(n(&stats, "w2", "acked"), count as u64 + 1);
    assert_eq!(stats["one-level"]["delivery"], "at-most-once");
    assert_eq!(n(&stats, "one-level", "acked"), count as u64);
    assert_eq!(n(&stats, "one-level", "dropped"), 0);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ficus_pubsub_deliveries_total{subscription=\"all\",outcome=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_in_order_then_dead_lettered() {
    retries("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_failed_deliveries_are_retried_in_order_then_dead_lettered() {
    let nats = NatsServer::start();
    retries(&nats_backend(&nats)).await;
}

async fn retries(backend: &str) {
    let data = TempDir::new(&format!(
        "pubsub-retry{}",
        if backend.is_empty() { "" } else { "-nats" }
    ));
    let gw = Gateway::start(&cfg_on(
        backend,
        data.path(),
        r#"
        [[subscriptions]]
        name = "errs"
        subject = "retry.err"
        plugin = "sub"
        backoff_ms = 20
        config = { label = "errs", fail = "err", fail_deliveries = 2 }
        [[subscriptions]]
        name = "traps"
        subject = "retry.trap"
        plugin = "sub"
        backoff_ms = 20
        config = { label = "traps", fail = "trap", fail_deliveries = 1 }
        [[subscriptions]]
        name = "doomed"
        subject = "doom.*"
        plugin = "sub"
        max_deliver = 3
        backoff_ms = 10
        config = { label = "doomed", fail_payload = "poison" }
        [[subscriptions]]
        name = "dlq"
        subject = "dead.>"
        plugin = "sub"
        dead_letter = "graveyard"
        config = { label = "dlq" }
        "#,
    ));
    publish(&gw, "retry.err", "e1").await;
    publish(&gw, "retry.err", "e2").await;
    publish(&gw, "retry.trap", "t1").await;
    publish(&gw, "doom.x", "poison-pill").await;
    publish(&gw, "doom.y", "fine").await;
    let all = wait_for(&[&gw], "retries and the dead letter", |all| {
        of(all, "errs").len() == 6 && of(all, "traps").len() == 2 && !of(all, "dlq").is_empty()
    })
    .await;

    // Each message of `errs` fails twice and succeeds on the third delivery; the second message
    // is not delivered before the first is done (per-subject order).
    let errs: Vec<(String, u32)> = of(&all, "errs")
        .into_iter()
        .map(|r| (r.payload, r.delivery))
        .collect();
    let expect = |p: &str, d: u32| (p.to_string(), d);
    assert_eq!(
        errs,
        vec![
            expect("e1", 1),
            expect("e1", 2),
            expect("e1", 3),
            expect("e2", 1),
            expect("e2", 2),
            expect("e2", 3)
        ]
    );
    // A trap is a failed delivery too; the instance is replaced and the retry succeeds.
    let traps: Vec<u32> = of(&all, "traps").iter().map(|r| r.delivery).collect();
    assert_eq!(traps, vec![1, 2]);
    gw.wait_for_log("the trap", |e| {
        e.contains("subscriber failed") && e.contains("asked to trap")
    })
    .await;

    // The poison pill is delivered max_deliver = 3 times, then dead-lettered to dead.doomed,
    // where the `dlq` subscription gets it with the reason.
    let doomed: Vec<(String, u32)> = of(&all, "doomed")
        .into_iter()
        .filter(|r| r.payload == "poison-pill")
        .map(|r| (r.payload, r.delivery))
        .collect();
    assert_eq!(
        doomed,
        vec![
            expect("poison-pill", 1),
            expect("poison-pill", 2),
            expect("poison-pill", 3)
        ]
    );
    let dlq = of(&all, "dlq");
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert_eq!(dlq[0].subject, "dead.doomed");
    assert_eq!(dlq[0].payload, "poison-pill");
    assert!(
        dlq[0]
            .headers
            .contains("ficus-dead-letter-subscription:doomed")
            && dlq[0].headers.contains("ficus-dead-letter-subject:doom.x")
            && dlq[0]
                .headers
                .contains("ficus-dead-letter-reason:asked_to_fail_delivery_3"),
        "{:?}",
        dlq[0]
    );
    // Another subject of the same subscription was not held up by the poison pill for ever.
    assert!(of(&all, "doomed").iter().any(|r| r.payload == "fine"));

    wait_stats(&gw, "counters", |s| {
        n(s, "doomed", "dead_lettered") == 1
            && n(s, "doomed", "pending") == 0
            && n(s, "dlq", "acked") == 1
            && n(s, "errs", "acked") == 2
    })
    .await;
    let stats = subscriptions(&gw).await;
    assert_eq!(n(&stats, "errs", "redelivered"), 4);
    assert_eq!(n(&stats, "errs", "failed"), 4);
    assert_eq!(n(&stats, "traps", "redelivered"), 1);
    assert_eq!(n(&stats, "doomed", "redelivered"), 2);
    assert_eq!(stats["doomed"]["dead_letter"], "dead.doomed");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ficus_pubsub_dead_lettered_total{subscription=\"doomed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("ficus_pubsub_deliveries_total{subscription=\"traps\",outcome=\"trap\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn durable_messages_survive_kill_9_and_duplicates_are_counted() {
    let data = TempDir::new("pubsub-durable");
    // A slow subscriber: most of the time a message is in its hands.
    let config = cfg(
        data.path(),
        r#"
        [[subscriptions]]
        name = "slow"
        subject = "jobs.*"
        plugin = "sub"
        config = { label = "slow", busy_ms = 60 }
        "#,
    );
    let first = Gateway::start(&config);
    let count = 30;
    for i in 0..count {
        // Alternate subjects: order holds per subject.
        publish(&first, &format!("jobs.s{}", i % 2), &format!("m{i}")).await;
    }
    wait_for(&[&first], "some deliveries before the crash", |all| {
        all.len() >= 5
    })
    .await;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .expect("cannot run kill");
    assert!(status.success());
    assert!(
        first.wait_exit(WAIT).await.is_some(),
        "the gateway did not die"
    );
    let before = received(&first.stderr());
    assert!(before.len() < count, "the crash came too late: {before:#?}");

    let second = Gateway::start(&config);
    let all = wait_for(
        &[&first, &second],
        "every message after the restart",
        |all| (0..count).all(|i| all.iter().any(|r| r.payload == format!("m{i}"))),
    )
    .await;
    wait_stats(&second, "the queue drains", |s| {
        n(s, "slow", "pending") == 0
    })
    .await;
    let stats = subscriptions(&second).await;
    // None lost: each message acknowledged exactly once, over both runs (persisted counters).
    assert_eq!(n(&stats, "slow", "acked"), count as u64, "{stats:#?}");
    // Duplicates are allowed, and counted: every delivery after the first of a message. The
    // last delivery of each message (in the second run) carries its delivery count.
    let mut last: BTreeMap<&str, u32> = BTreeMap::new();
    for r in &all {
        let d = last.entry(r.payload.as_str()).or_default();
        *d = (*d).max(r.delivery);
    }
    assert_eq!(last.len(), count, "{all:#?}");
    let duplicates: u64 = last.values().map(|d| u64::from(d - 1)).sum();
    assert_eq!(n(&stats, "slow", "redelivered"), duplicates, "{stats:#?}");
    eprintln!(
        "kill -9 after {} deliveries; {} messages redelivered after the restart",
        before.len(),
        duplicates
    );
    // Per-subject order across the restart: first deliveries of each subject in publish order.
    for s in ["jobs.s0", "jobs.s1"] {
        let firsts: Vec<u64> = all
            .iter()
            .filter(|r| r.subject == s && r.delivery == 1)
            .map(|r| r.seq)
            .collect();
        assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{s}: {firsts:?}");
    }

    // While it runs, a second process cannot open the same store.
    let third = Gateway::try_start(&config)
        .err()
        .expect("a second gateway on the same data dir must not start");
    assert!(
        third.stderr.contains("pubsub.redb") && third.stderr.contains("another ficus process"),
        "{third}"
    );
}

#[tokio::test]
async fn at_most_once_drops_what_a_slow_subscriber_cannot_take() {
    drops("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_at_most_once_drops_what_a_slow_subscriber_cannot_take() {
    let nats = NatsServer::start();
    drops(&nats_backend(&nats)).await;
}

async fn drops(backend: &str) {
    let data = TempDir::new(&format!(
        "pubsub-drop{}",
        if backend.is_empty() { "" } else { "-nats" }
    ));
    let gw = Gateway::start(&cfg_on(
        backend,
        data.path(),
        r#"
        [[subscriptions]]
        name = "lossy"
        subject = "ticks"
        plugin = "sub"
        delivery = "at-most-once"
        max_in_flight = 2
        config = { label = "lossy", busy_ms = 300 }
        "#,
    ));
    let count = 20u64;
    for i in 0..count {
        publish(&gw, "ticks", &format!("t{i}")).await;
    }
    wait_stats(&gw, "every message handled or dropped", |s| {
        n(s, "lossy", "acked") + n(s, "lossy", "dropped") == count && n(s, "lossy", "pending") == 0
    })
    .await;
    let stats = subscriptions(&gw).await;
    let acked = n(&stats, "lossy", "acked");
    // One in the subscriber's hands and two buffered at most while the burst lasts.
    assert!(
        acked <= 4 && n(&stats, "lossy", "dropped") >= count - 4,
        "{stats:#?}"
    );
    let got = received(&gw.stderr());
    assert_eq!(got.len() as u64, acked, "{got:#?}");
    // Nothing was stored: at-most-once needs no store file.
    assert!(!data.path().join("pubsub.redb").exists());
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("ficus_pubsub_dropped_total{subscription=\"lossy\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_filter_publishes_order_placed_and_the_request_goes_on() {
    order_placed("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_filter_publishes_order_placed_and_the_request_goes_on() {
    let nats = NatsServer::start();
    order_placed(&nats_backend(&nats)).await;
}

async fn order_placed(backend: &str) {
    let data = TempDir::new(&format!(
        "pubsub-order{}",
        if backend.is_empty() { "" } else { "-nats" }
    ));
    let upstream = Upstream::start("orders");
    let gw = Gateway::start(
        &Cfg::new()
            .plugin_source("sub", &fixture("subscriber.wasm"), "grants = [\"log\"]")
            .plugin_source("pub", &fixture("publisher.wasm"), "grants = [\"pubsub\"]")
            .upstream("orders", &[upstream.endpoint()], "")
            .toml(&format!(
                "[backend]\ndata_dir = {:?}\n{backend}[pubsub]\nmax_message_bytes = 64\n\
                 [[routes]]\nmatch = {{ path_prefix = \"/orders\" }}\nupstream = \"orders\"\n\
                 pipeline = [{{ plugin = \"pub\", config = {{ subject = \"orders.placed\", \
                 subject_header = \"x-subject\" }} }}]\n\
                 [[subscriptions]]\nname = \"audit\"\nsubject = \"orders.*\"\nplugin = \"sub\"\n\
                 config = {{ label = \"audit\" }}\n",
                data.path().to_string_lossy()
            )),
    );
    let resp = gw.request("POST", "/orders/42").send().await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let all = wait_for(&[&gw], "the order event", |all| !all.is_empty()).await;
    assert_eq!(all[0].subject, "orders.placed");
    assert_eq!(all[0].payload, "/orders/42");

    // Publish errors reach the filter, which answers instead of calling the upstream.
    let bad = gw
        .request("POST", "/orders/1")
        .header("x-subject", "orders.*")
        .send()
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.text().contains("wildcard"), "{}", bad.text());
    let long = format!("/orders/{}", "x".repeat(100));
    let big = gw.request("POST", &long).send().await;
    assert_eq!(big.status, 413, "{big:?}");
}

#[tokio::test]
async fn check_rejects_bad_subscriptions_with_key_paths() {
    let data = TempDir::new("pubsub-check");
    let checked = cfg(
        data.path(),
        r#"
        [plugins.headers]
        source = "HEADERS"
        [[subscriptions]]
        name = "a"
        subject = "orders.>.x"
        plugin = "nope"
        max_deliver = 0
        [[subscriptions]]
        name = "b"
        subject = "jobs.*"
        plugin = "sub"
        queue = "q"
        [[subscriptions]]
        name = "c"
        subject = "jobs.>"
        plugin = "sub"
        queue = "q"
        "#
        .replace("HEADERS", &fixture("headers.wasm"))
        .as_str(),
    )
    .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    for (path, text) in [
        ("subscriptions[0].subject", "must be the last token"),
        ("subscriptions[0].plugin", "unknown plugin \"nope\""),
        ("subscriptions[0].max_deliver", "between 1 and 1000 (got 0)"),
        (
            "subscriptions[2].subject",
            "members of queue group \"q\" must agree on subject",
        ),
    ] {
        assert!(
            checked
                .stderr
                .lines()
                .any(|l| l.contains(&format!(": {path}: ")) && l.contains(text)),
            "no {path}: {text}\n{checked}"
        );
    }

    // Past validation: the plugin must be a subscriber, and its configure must accept.
    let checked = cfg(
        data.path(),
        r#"
        [plugins.headers]
        source = "HEADERS"
        [[subscriptions]]
        name = "not-a-subscriber"
        subject = "a"
        plugin = "headers"
        [[subscriptions]]
        name = "rejected"
        subject = "b"
        plugin = "sub"
        config = { fail = "explode" }
        "#
        .replace("HEADERS", &fixture("headers.wasm"))
        .as_str(),
    )
    .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("subscriptions[0].plugin")
            && checked.stderr.contains("not a subscriber plugin"),
        "{checked}"
    );
    assert!(
        checked.stderr.contains("subscriptions[1].config")
            && checked.stderr.contains("`fail`: expected"),
        "{checked}"
    );

    // A good config passes and lists its subscriptions; check never opens the store.
    let ok = cfg(
        data.path(),
        "[[subscriptions]]\nname = \"s\"\nsubject = \"orders.*\"\nplugin = \"sub\"\nqueue = \"g\"\n",
    )
    .check();
    assert_eq!(ok.code, Some(0), "{ok}");
    assert!(
        ok.stdout
            .contains("subscription s: orders.* -> sub (at-least-once, queue g)"),
        "{ok}"
    );
    assert!(!data.path().join("pubsub.redb").exists());
}

#[tokio::test]
async fn publishing_needs_the_pubsub_grant() {
    let data = TempDir::new("pubsub-grant");
    let checked = Cfg::new()
        .plugin_source("pub", &fixture("publisher.wasm"), "grants = [\"log\"]")
        .upstream("nowhere", &[dead_endpoint()], "")
        .toml(&format!(
            "[backend]\ndata_dir = {:?}\n[[routes]]\nupstream = \"nowhere\"\n\
             pipeline = [{{ plugin = \"pub\", config = {{ subject = \"a\" }} }}]\n",
            data.path().to_string_lossy()
        ))
        .check();
    assert_eq!(checked.code, Some(2), "{checked}");
    assert!(
        checked.stderr.contains("routes[0].pipeline[0].plugin")
            && checked.stderr.contains("ficus:gateway/pubsub")
            && checked
                .stderr
                .contains("add \"pubsub\" to plugins.pub.grants"),
        "{checked}"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_message_in_hand_and_reload_refuses_new_subscriptions() {
    let data = TempDir::new("pubsub-graceful");
    let sub = |busy: u32| {
        format!(
            "[[subscriptions]]\nname = \"slow\"\nsubject = \"work\"\nplugin = \"sub\"\n\
             config = {{ label = \"slow\", busy_ms = {busy} }}\n"
        )
    };
    let config = cfg(data.path(), &sub(700));
    let gw = Gateway::start(&config);

    // Subscriptions apply at start only: a reload that changes them is refused.
    std::fs::write(gw.config_file(), cfg(data.path(), &sub(1)).render()).expect("rewrite");
    let reload = gw.admin_request("POST", "/admin/reload").send().await;
    assert_eq!(reload.status, 422, "{reload:?}");
    assert!(
        reload.text().contains("subscriptions changed") && reload.text().contains("restart"),
        "{}",
        reload.text()
    );

    publish(&gw, "work", "w1").await;
    wait_for(&[&gw], "the delivery starts", |all| !all.is_empty()).await;
    gw.terminate();
    assert!(gw.wait_exit(WAIT).await.is_some(), "no clean exit");
    // The message in hand was finished and acknowledged: a restart does not deliver it again.
    let again = Gateway::start(&config);
    wait_stats(&again, "nothing pending", |s| {
        n(s, "slow", "pending") == 0 && n(s, "slow", "acked") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received(&again.stderr()).is_empty(), "{}", again.stderr());
    assert_eq!(n(&subscriptions(&again).await, "slow", "redelivered"), 0);
}

/// `[backend] kind = "nats"`: three gateways on one nats-server, each with the at-least-once
/// subscription `work` (one shared JetStream consumer). A numbered stream of messages is
/// published while one subscriber node is killed with -9: every message is processed at least
/// once (none lost); duplicates (the dead node's unacknowledged messages, redelivered after
/// the consumer's ack wait) are counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_three_nodes_share_a_subscription_and_lose_nothing_when_one_is_killed() {
    let nats = NatsServer::start();
    let backend = nats_backend(&nats);
    let dirs: Vec<TempDir> = (0..3)
        .map(|i| TempDir::new(&format!("pubsub-nats-node{i}")))
        .collect();
    let node = |i: usize| {
        Gateway::start(&cfg_on(
            &backend,
            dirs[i].path(),
            &format!(
                r#"
                [[subscriptions]]
                name = "work"
                subject = "jobs.*"
                plugin = "sub"
                max_in_flight = 4
                config = {{ label = "n{i}", busy_ms = 15 }}
                "#
            ),
        ))
    };
    let (a, b, c) = (node(0), node(1), node(2));
    let count = 90;
    for i in 0..count / 2 {
        publish(&a, &format!("jobs.s{}", i % 3), &format!("m{i}")).await;
    }
    wait_for(&[&b], "node 1 handles some messages", |all| all.len() >= 3).await;
    b.kill_9().await;
    let before_kill = received(&b.stderr()).len();
    for i in count / 2..count {
        publish(&c, &format!("jobs.s{}", i % 3), &format!("m{i}")).await;
    }
    let all = wait_for(&[&a, &b, &c], "every message processed", |all| {
        (0..count).all(|i| all.iter().any(|r| r.payload == format!("m{i}")))
    })
    .await;
    // Let redeliveries still in flight show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log: String = [&a, &b, &c].iter().map(|g| g.stderr()).collect();
    let all_now = received(&log);
    assert!(all_now.len() >= all.len());
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &all_now {
        *times.entry(r.payload.as_str()).or_default() += 1;
    }
    assert_eq!(times.len(), count, "every message, none lost: {times:?}");
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    let per_node: Vec<usize> = ["n0", "n1", "n2"]
        .iter()
        .map(|l| of(&all_now, l).len())
        .collect();
    eprintln!(
        "nats cross-node: {count} messages, {} deliveries (per node {per_node:?}), node 1 killed \
         after {before_kill} deliveries, {duplicates} duplicates",
        all_now.len()
    );
    assert!(
        per_node[0] > 0 && per_node[2] > 0,
        "the surviving nodes share the work: {per_node:?}"
    );
    // The survivors drain the consumer: nothing pending for the shared subscription.
    wait_stats(&a, "the consumer drains", |s| n(s, "work", "pending") == 0).await;
    let acked =
        n(&subscriptions(&a).await, "work", "acked") + n(&subscriptions(&c).await, "work", "acked");
    assert!(
        acked as usize + before_kill >= count,
        "acked {acked} + {before_kill} before the kill < {count}"
    );
}

/// `[backend] kind = "nats"` with no server listening: `ficus run` fails at start with a clear
/// error naming the servers.
#[tokio::test]
async fn nats_unreachable_servers_fail_the_start_clearly() {
    let data = TempDir::new("pubsub-nats-unreachable");
    let url = format!("nats://127.0.0.1:{}", crate::nats_server::free_port());
    let err = Gateway::try_start(&cfg_on(
        &format!("kind = \"nats\"\nservers = [{url:?}]\n"),
        data.path(),
        "[[subscriptions]]\nname = \"s\"\nsubject = \"a.b\"\nplugin = \"sub\"\n",
    ))
    .err()
    .expect("no NATS server: the gateway must not start");
    assert!(
        err.stderr.contains("pub/sub ([backend] kind = \"nats\")")
            && err.stderr.contains("cannot connect to NATS at")
            && err.stderr.contains(&url),
        "{err}"
    );
}
