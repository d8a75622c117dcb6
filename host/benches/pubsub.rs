//! Pub/sub figures, in process, with the real broker, store and subscriber
//! plugin (`plugins/fixtures/subscriber`):
//!
//! * publish → `on-message` returned → acknowledged latency, p50/p99, for an
//!   at-most-once subscription (in-memory) and an at-least-once one (three
//!   commits per message: store, delivery count, ack);
//! * durable publish throughput (messages/s; each publish returns after its
//!   commit), one publisher at a time and 8 concurrent publishers (whose
//!   writes share commits).
//!
//! Run: `cargo bench -p ficus --bench pubsub` (`PUBSUB_BENCH_N` sets the
//! number of messages per measurement, default 2000). It reports; it never
//! gates. The store lives in a temporary directory under the system temp
//! dir: the durable figures depend on that file system's fsync.

use ficus::app::services_in_process;
use ficus::capability::pubsub::broker::{load_subscribers, Broker};
use ficus::capability::pubsub::Publisher;
use ficus::capability::Services;
use ficus::plugin::engine::{EngineOptions, PluginEngine};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ficus-bench-{label}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn config(dir: &Path, subscriptions: &str) -> ficus_config::Config {
    let sub = Path::new(ficus::WASM_DIR).join("subscriber.wasm");
    assert!(
        sub.is_file(),
        "{} is missing: build the host once (host/build.rs builds the plugins)",
        sub.display()
    );
    let text = format!(
        "[backend]\ndata_dir = {:?}\n[plugins.sub]\nsource = {:?}\ngrants = [\"log\"]\n{subscriptions}",
        dir.join("data").to_string_lossy(),
        sub.to_string_lossy()
    );
    ficus_config::parse_str(&text, &dir.join("gateway.toml")).unwrap_or_else(|e| panic!("{e}"))
}

async fn broker(engine: &PluginEngine, config: &ficus_config::Config, start: bool) -> Arc<Broker> {
    let broker = Arc::new(Broker::open(config).expect("broker"));
    let services = Services {
        pubsub: broker.clone(),
        ..services_in_process()
    };
    if start {
        let subscribers = load_subscribers(config, engine, &services)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        broker.start(subscribers);
    }
    broker
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn latency(engine: &PluginEngine, mode: &str, n: usize) {
    let dir = temp_dir("latency");
    let config = config(
        &dir,
        &format!(
            "[[subscriptions]]\nname = \"s\"\nsubject = \"bench.*\"\nplugin = \"sub\"\ndelivery = \"{mode}\"\n"
        ),
    );
    let broker = broker(engine, &config, true).await;
    let mut acks = broker.acks();
    let mut samples = Vec::with_capacity(n);
    // Warm up the instance and the store.
    for i in 0..(n / 10).max(10) + n {
        let seen = *acks.borrow_and_update();
        let started = Instant::now();
        broker
            .publish("bench.x", format!("{i}").into_bytes(), Vec::new())
            .await
            .expect("publish");
        while *acks.borrow_and_update() == seen {
            acks.changed().await.expect("broker alive");
        }
        if i >= (n / 10).max(10) {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    println!(
        "publish -> on-message -> ack, {mode:<13} n={n}: p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs",
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples[samples.len() - 1].as_secs_f64() * 1e6,
    );
    broker.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn throughput(engine: &PluginEngine, publishers: usize, n: usize) {
    let dir = temp_dir("throughput");
    let config = config(
        &dir,
        "[[subscriptions]]\nname = \"s\"\nsubject = \"bench.*\"\nplugin = \"sub\"\n",
    );
    // No workers: measure the publish path alone.
    let broker = broker(engine, &config, false).await;
    let payload = vec![b'x'; 256];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let broker = broker.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / publishers {
                broker
                    .publish(&format!("bench.p{p}"), payload.clone(), Vec::new())
                    .await
                    .expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let elapsed = started.elapsed();
    let total = (n / publishers) * publishers;
    println!(
        "durable publish, 256 B, {publishers} publisher(s), n={total}: {:>9.0} msg/s ({:.1} µs per publish call)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / (total / publishers) as f64
    );
    let stats = broker.subscriptions();
    assert_eq!(stats[0].pending, total as u64, "every message stored");
    broker.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once
    // with few messages as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("PUBSUB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 50 } else { 2000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let engine = PluginEngine::new(&EngineOptions {
        cache_dir: None,
        max_instances: 100,
    })
    .expect("engine");
    rt.block_on(async {
        latency(&engine, "at-most-once", n).await;
        latency(&engine, "at-least-once", n).await;
        throughput(&engine, 1, n).await;
        throughput(&engine, 8, n).await;
    });
}
