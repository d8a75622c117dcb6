//! Publish throughput and latency of the NATS pub/sub backend
//! ([`NatsBroker`]) against raw `async-nats` in the same run, on a
//! nats-server the example starts on a free loopback port:
//!
//! - at-least-once: `NatsBroker::publish` to a subject with a durable
//!   consumer (JetStream publish, returns after the stream's ack) vs a raw
//!   JetStream publish + ack to an interest stream with one consumer, with
//!   and without a `Nats-Msg-Id` per message (the broker sends one so that
//!   its retries are deduplicated: the like-for-like baseline);
//! - at-most-once: `NatsBroker::publish` to a subject without durable
//!   interest (core publish) vs a raw core publish; both flushed at the end.
//!
//! ```text
//! cargo run --release -p ficus --example pubsub_nats_throughput
//! ```
//!
//! `MESSAGES` (default 20000) sets the JetStream publishes per figure (the
//! core figures use 10x), `PUBLISHERS` (default 32) the concurrent
//! publishers, `ROUNDS` (default 3) how often raw and broker alternate. It
//! prints the ratio of the best runs and the median of the per-round
//! (paired) ratios. Reports, never gates.

#[path = "../src/testing/nats_server.rs"]
mod nats_server;

use async_nats::jetstream;
use ficus::capability::pubsub::nats::{NatsBroker, NatsPubSubOptions};
use ficus::capability::pubsub::Publisher;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 128;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Figure {
    rate: f64,
    p99: Duration,
}

fn report(label: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>) -> Figure {
    lat.sort();
    let rate = n as f64 / elapsed.as_secs_f64();
    let p99 = percentile(&lat, 0.99);
    println!(
        "{label:<44} {rate:>9.0} msg/s   p50 {:>7.3} ms   p99 {:>7.3} ms",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
    Figure { rate, p99 }
}

/// Run `n` calls of `op` from `publishers` concurrent tasks; per-call
/// latencies and the wall time.
async fn run<F, Fut>(n: usize, publishers: usize, op: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = p;
            while i < n {
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
                i += publishers;
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.expect("publisher task"));
    }
    (started.elapsed(), all)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("MESSAGES", 20_000);
    let publishers = env("PUBLISHERS", 32);
    let server = nats_server::NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let url = server.url.clone();
        let text = format!(
            "[backend]\nkind = \"nats\"\nservers = [{url:?}]\n\
             [plugins.p]\nsource = \"p.wasm\"\n\
             [[subscriptions]]\nname = \"durable\"\nsubject = \"bench.alo\"\nplugin = \"p\"\n"
        );
        let config = ficus_config::parse_str(&text, &std::env::temp_dir().join("bench.toml"))
            .expect("config");
        let broker = Arc::new(
            NatsBroker::open_with(&config, NatsPubSubOptions::new(vec![url.clone()]))
                .await
                .expect("NatsBroker"),
        );
        // Raw: an interest stream with one durable consumer, like the broker's.
        let client = async_nats::connect(&url).await.expect("connect");
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: "RAW".into(),
                subjects: vec!["raw.>".into()],
                retention: jetstream::stream::RetentionPolicy::Interest,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("raw stream");
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("raw consumer");
        let payload = vec![b'x'; PAYLOAD];
        println!(
            "nats-server {} on loopback, {n} JetStream publishes per figure, {publishers} \
             concurrent publishers, {PAYLOAD}-byte payloads",
            broker.server_version()
        );

        // Warm-up.
        for _ in 0..200 {
            broker
                .publish("bench.alo", payload.clone(), Vec::new())
                .await
                .expect("publish");
            js.publish("raw.alo", payload.clone().into())
                .await
                .expect("raw")
                .await
                .expect("raw ack");
        }

        // Alternate raw and broker ROUNDS times; keep each one's best run
        // and the per-round (paired) ratios, whose median is steadier than
        // best-of on a shared machine.
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3)
            .max(1);
        let mut raw_js: Option<Figure> = None;
        let mut raw_id_js: Option<Figure> = None;
        let mut ours_js: Option<Figure> = None;
        let mut js_ratios = Vec::new();
        let mut js_id_ratios = Vec::new();
        for round in 0..rounds {
            let (js2, p) = (js.clone(), payload.clone());
            let (t, lat) = run(n, publishers, move |_| {
                let (js, p) = (js2.clone(), p.clone());
                async move {
                    js.publish("raw.alo", p.into())
                        .await
                        .expect("raw publish")
                        .await
                        .expect("raw ack");
                }
            })
            .await;
            let f = report(
                &format!("raw JetStream publish+ack (run {})", round + 1),
                n,
                t,
                lat,
            );
            let raw_rate = f.rate;
            if raw_js.as_ref().is_none_or(|b| f.rate > b.rate) {
                raw_js = Some(f);
            }
            // The same with a Nats-Msg-Id per message, as the broker sends
            // for idempotent retries: the like-for-like baseline.
            let (js2, p) = (js.clone(), payload.clone());
            let (t, lat) = run(n, publishers, move |_| {
                let (js, p) = (js2.clone(), p.clone());
                async move {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(
                        "Nats-Msg-Id",
                        format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)).as_str(),
                    );
                    js.publish_with_headers("raw.alo", h, p.into())
                        .await
                        .expect("raw publish")
                        .await
                        .expect("raw ack");
                }
            })
            .await;
            let f = report(
                &format!("raw JetStream publish+ack, Msg-Id (run {})", round + 1),
                n,
                t,
                lat,
            );
            let raw_id_rate = f.rate;
            if raw_id_js.as_ref().is_none_or(|b| f.rate > b.rate) {
                raw_id_js = Some(f);
            }
            let (b2, p) = (broker.clone(), payload.clone());
            let (t, lat) = run(n, publishers, move |_| {
                let (b, p) = (b2.clone(), p.clone());
                async move {
                    b.publish("bench.alo", p, Vec::new())
                        .await
                        .expect("broker publish");
                }
            })
            .await;
            let f = report(
                &format!("NatsBroker at-least-once (run {})", round + 1),
                n,
                t,
                lat,
            );
            js_ratios.push(f.rate / raw_rate);
            js_id_ratios.push(f.rate / raw_id_rate);
            if ours_js.as_ref().is_none_or(|b| f.rate > b.rate) {
                ours_js = Some(f);
            }
        }

        let core_n = n * 10;
        let mut raw_core: Option<Figure> = None;
        let mut ours_core: Option<Figure> = None;
        let mut core_ratios = Vec::new();
        for round in 0..rounds {
            let (c2, p) = (client.clone(), payload.clone());
            let (t, lat) = run(core_n, publishers, move |_| {
                let (c, p) = (c2.clone(), p.clone());
                async move {
                    c.publish("raw.amo.core", p.into())
                        .await
                        .expect("raw core publish");
                }
            })
            .await;
            client.flush().await.expect("flush");
            let f = report(
                &format!("raw core publish (run {})", round + 1),
                core_n,
                t,
                lat,
            );
            let raw_rate = f.rate;
            if raw_core.as_ref().is_none_or(|b| f.rate > b.rate) {
                raw_core = Some(f);
            }
            let (b2, p) = (broker.clone(), payload.clone());
            let (t, lat) = run(core_n, publishers, move |_| {
                let (b, p) = (b2.clone(), p.clone());
                async move {
                    b.publish("bench.amo", p, Vec::new())
                        .await
                        .expect("broker core publish");
                }
            })
            .await;
            let f = report(
                &format!("NatsBroker at-most-once (run {})", round + 1),
                core_n,
                t,
                lat,
            );
            core_ratios.push(f.rate / raw_rate);
            if ours_core.as_ref().is_none_or(|b| f.rate > b.rate) {
                ours_core = Some(f);
            }
        }
        let ratio = |ours: &Option<Figure>, raw: &Option<Figure>| {
            let (o, r) = (ours.as_ref().unwrap(), raw.as_ref().unwrap());
            (o.rate / r.rate, o.p99.as_secs_f64() / r.p99.as_secs_f64())
        };
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (js_rate, js_p99) = ratio(&ours_js, &raw_js);
        let (js_id_rate, js_id_p99) = ratio(&ours_js, &raw_id_js);
        let (core_rate, core_p99) = ratio(&ours_core, &raw_core);
        println!("target: NatsBroker rate >= 0.8x raw; best runs, then the median of {rounds} paired rounds");
        println!(
            "at-least-once: NatsBroker / raw JetStream         = {js_rate:.2}x rate, {js_p99:.2}x p99; \
             median {:.2}x",
            median(js_ratios)
        );
        println!(
            "at-least-once: NatsBroker / raw JetStream, Msg-Id = {js_id_rate:.2}x rate, {js_id_p99:.2}x p99; \
             median {:.2}x",
            median(js_id_ratios)
        );
        println!(
            "at-most-once:  NatsBroker / raw core              = {core_rate:.2}x rate, {core_p99:.2}x p99; \
             median {:.2}x",
            median(core_ratios)
        );
        broker.shutdown(Duration::from_secs(1)).await;
    });
}
