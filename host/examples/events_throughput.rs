//! Durable append throughput and latency of the embedded event store, with
//! one writer and with 8 concurrent writers, and the catch-up read rate of a
//! subscription, against a baseline measured in the same run: one redb write
//! transaction with one insert and a durable commit (what an append would
//! cost without group commit).
//!
//! Run: `cargo run --release -p ficus --example events_throughput`
//! (`EVENTS=4000` to change the number of appends per scenario). Reports,
//! never gates.

use ficus::capability::events::embedded::EmbeddedEvents;
use ficus::capability::events::{EventStore, Expected, Filter, NewEvent, Subscription};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn event(i: usize) -> NewEvent {
    NewEvent {
        id: format!("evt-{i}"),
        event_type: "OrderPlaced".into(),
        data: format!(r#"{{"order":{i},"total":4200,"currency":"EUR"}}"#).into_bytes(),
        metadata: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn report(label: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>, commits: u64) {
    lat.sort();
    println!(
        "{label:<34} {:>8.0} events/s   p50 {:>7.2} ms   p99 {:>7.2} ms   {:>5} commits, {:>5.1} appends per commit",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        commits,
        n as f64 / commits.max(1) as f64,
    );
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ficus-events-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn main() {
    let n: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    println!("embedded event store (redb), {n} appends of one ~60-byte event per scenario");

    // Baseline: one durable redb transaction per event, no group commit.
    let base_path = scratch("baseline.redb");
    let db = redb::Database::create(&base_path).expect("baseline db");
    let table: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("t");
    let payload = event(0).data;
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n as u64 {
        let t0 = Instant::now();
        let txn = db.begin_write().expect("begin");
        txn.open_table(table)
            .expect("table")
            .insert(i, payload.as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        lat.push(t0.elapsed());
    }
    let base = start.elapsed();
    report("baseline: redb txn per event", n, base, lat, n as u64);
    drop(db);

    // One writer, sequential appends to one stream with exact versions.
    let store = Arc::new(EmbeddedEvents::open(&scratch("single.redb")).expect("open"));
    let (single, lat) = rt.block_on(async {
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let t0 = Instant::now();
            store
                .append("order-1", Expected::Exact(i as u64), vec![event(i)])
                .await
                .expect("append");
            lat.push(t0.elapsed());
        }
        (start.elapsed(), lat)
    });
    let commits = store.stats().commits.load(Ordering::Relaxed);
    report("1 writer", n, single, lat, commits);

    // 8 concurrent writers, each on its own stream.
    let store8 = Arc::new(EmbeddedEvents::open(&scratch("eight.redb")).expect("open"));
    let (eight, lat) = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let store = store8.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in (w..n).step_by(8) {
                        let t0 = Instant::now();
                        store
                            .append(&format!("order-{w}"), Expected::Any, vec![event(i)])
                            .await
                            .expect("append");
                        lat.push(t0.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("writer"));
        }
        (start.elapsed(), all)
    });
    let commits = store8.stats().commits.load(Ordering::Relaxed);
    report("8 concurrent writers", n, eight, lat, commits);

    // Catch-up: a subscription reading everything from position 1.
    let read = rt.block_on(async {
        let mut sub = Subscription::new(store8.clone(), 1, Filter::default());
        let start = Instant::now();
        for _ in 0..n {
            sub.next().await.expect("event");
        }
        start.elapsed()
    });
    println!(
        "{:<34} {:>8.0} events/s",
        "subscription catch-up read",
        n as f64 / read.as_secs_f64()
    );
    println!(
        "ratios: 1 writer = {:.2}x the baseline's rate, 8 writers = {:.2}x",
        base.as_secs_f64() / single.as_secs_f64(),
        base.as_secs_f64() / eight.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(base_path.parent().expect("dir"));
}
