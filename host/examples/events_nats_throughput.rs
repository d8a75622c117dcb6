//! Append throughput and latency of the NATS JetStream event store against
//! raw `async-nats` figures measured in the same run on the same server:
//! a JetStream publish with ack (no expectations) and a publish with
//! `Nats-Expected-Last-Subject-Sequence` chained on the previous ack (the
//! least an optimistic-concurrency append costs), and a publish with the
//! same headers as an append (`Nats-Msg-Id` and both expected sequences) and
//! a payload of an encoded record's size (like for like).
//!
//! Needs a running nats-server with JetStream:
//!
//! ```text
//! target/nats/bin/nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/js &
//! NATS_URL=nats://127.0.0.1:4222 cargo run -p ficus --example events_nats_throughput
//! ```
//!
//! `EVENTS=2000` sets the appends per scenario, `REPLICAS=3` the stream's
//! replicas (against a 3-node cluster). Reports, never gates.

use async_nats::jetstream;
use ficus::capability::events::nats::{NatsEvents, NatsEventsOptions};
use ficus::capability::events::{EventStore, Expected, Filter, NewEvent, Subscription};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn event(i: usize) -> NewEvent {
    NewEvent {
        id: format!("evt-{i}-{}", std::process::id()),
        event_type: "OrderPlaced".into(),
        data: format!(r#"{{"order":{i},"total":4200,"currency":"EUR"}}"#).into_bytes(),
        metadata: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn report(label: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>) -> f64 {
    lat.sort();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{label:<44} {rate:>8.0} appends/s   p50 {:>6.3} ms   p99 {:>6.3} ms",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );
    rate
}

fn main() {
    let Ok(url) = std::env::var("NATS_URL") else {
        eprintln!("set NATS_URL to a nats-server with JetStream (see the doc comment)");
        std::process::exit(2);
    };
    let n: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let replicas: usize = std::env::var("REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tag = format!("B{}", std::process::id());
    rt.block_on(async {
        let client = async_nats::connect(&url).await.expect("connect");
        println!(
            "nats-server {}, {n} appends of one ~60-byte event per scenario, replicas {replicas}",
            client.server_info().version
        );
        let js = jetstream::new(client);
        let raw_stream = format!("RAW{tag}");
        js.create_stream(jetstream::stream::Config {
            name: raw_stream.clone(),
            subjects: vec![format!("raw{tag}.>")],
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .expect("raw stream");
        let payload = event(0).data;

        // Raw: publish + ack, no expectations.
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            js.publish(format!("raw{tag}.a"), payload.clone().into())
                .await
                .expect("publish")
                .await
                .expect("ack");
            lat.push(t0.elapsed());
        }
        let raw = report("raw async-nats: publish + ack", n, start.elapsed(), lat);

        // Raw: chained expected last subject sequence.
        let mut lat = Vec::with_capacity(n);
        let mut last = 0u64;
        let start = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            let mut h = async_nats::HeaderMap::new();
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last.to_string().as_str(),
            );
            last = js
                .publish_with_headers(format!("raw{tag}.b"), h, payload.clone().into())
                .await
                .expect("publish")
                .await
                .expect("ack")
                .sequence;
            lat.push(t0.elapsed());
        }
        let raw_cas = report(
            "raw async-nats: publish + ack, expected seq",
            n,
            start.elapsed(),
            lat,
        );

        // Raw with what an append sends: a Nats-Msg-Id (idempotent
        // retries), the expected last subject sequence and the expected last
        // stream sequence (gapless positions), and a payload of the size of
        // an encoded record (the event plus its id, type, stream and
        // counters, ~100 bytes): the like-for-like baseline.
        let record_like = vec![b'r'; payload.len() + 40];
        let mut lat = Vec::with_capacity(n);
        let mut last_subject = 0u64;
        let mut last_stream = js
            .get_stream(&raw_stream)
            .await
            .expect("raw stream")
            .info()
            .await
            .expect("raw stream info")
            .state
            .last_sequence;
        let start = Instant::now();
        for i in 0..n {
            let t0 = Instant::now();
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("raw-{tag}-{i}").as_str());
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last_subject.to_string().as_str(),
            );
            h.insert(
                "Nats-Expected-Last-Sequence",
                last_stream.to_string().as_str(),
            );
            let seq = js
                .publish_with_headers(format!("raw{tag}.c"), h, record_like.clone().into())
                .await
                .expect("publish")
                .await
                .expect("ack")
                .sequence;
            (last_subject, last_stream) = (seq, seq);
            lat.push(t0.elapsed());
        }
        let raw_like = report(
            "raw async-nats: same headers and payload size",
            n,
            start.elapsed(),
            lat,
        );

        let options = NatsEventsOptions {
            stream: format!("EV{tag}"),
            subject_prefix: format!("ev{tag}"),
            replicas,
            ..NatsEventsOptions::new(vec![url.clone()])
        };
        let store = Arc::new(NatsEvents::open(options.clone()).await.expect("open"));

        // One writer, one stream, exact expected versions.
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
        let one = report(
            "NatsEvents: 1 writer, exact versions",
            n,
            start.elapsed(),
            lat,
        );

        // 8 writers on their own streams, on 2 connections (2 "nodes").
        let other = Arc::new(NatsEvents::open(options).await.expect("open"));
        let start = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let store = if w % 2 == 0 {
                    store.clone()
                } else {
                    other.clone()
                };
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in (w..n).step_by(8) {
                        let t0 = Instant::now();
                        store
                            .append(&format!("order-w{w}"), Expected::Any, vec![event(n + i)])
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
        report(
            "NatsEvents: 8 writers on 2 connections",
            n,
            start.elapsed(),
            all,
        );

        // Catch-up read of everything.
        let mut sub = Subscription::new(store.clone(), 1, Filter::default());
        let start = Instant::now();
        for _ in 0..2 * n {
            sub.next().await.expect("event");
        }
        let read = start.elapsed();
        println!(
            "{:<44} {:>8.0} events/s",
            "NatsEvents: catch-up subscription read",
            (2 * n) as f64 / read.as_secs_f64()
        );
        println!(
            "1 writer vs raw publish + ack: {:.2}x; vs raw with expected seq: {:.2}x; \
             vs raw with the same headers and payload size: {:.2}x",
            one / raw,
            one / raw_cas,
            one / raw_like
        );
        let _ = js.delete_stream(&raw_stream).await;
    });
}
