//! Projection catch-up rate: how fast the `orders` demo projection
//! (plugins/orders/orders-projection, a real Wasm component) folds a backlog
//! of stored events into its read model, for several `batch` sizes (events
//! per read-model transaction), against two baselines measured in the same
//! run: `batch = 1` (one durable commit per event) and the raw catch-up read
//! rate of a subscription over the same backlog (no plugin, no writes).
//! Then the same catch-up with the read models on NATS JetStream
//! (`NatsReadModels`, a nats-server started here; the events stay in the
//! embedded store so that only the read-model backend differs), for
//! `batch` = 16 and 256, against the embedded figures of the same run.
//!
//! Run: `cargo run --release -p ficus --example projection_catchup`
//! (`EVENTS=20000` to change the backlog). Reports, never gates.

use ficus::app::{elector_for, events_for, read_models_for};
use ficus::capability::events::{EventStore, Expected, Filter, NewEvent, Subscription};
use ficus::capability::readmodel::nats::{NatsReadModels, NatsReadModelsOptions};
use ficus::capability::readmodel::{ReadModelService, ReadModels};
use ficus::capability::Services;
use ficus::projection::{build_projections, Projections};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(dir: &Path, batch: usize) -> ficus_config::Config {
    let text = format!(
        "[backend]\ndata_dir = {:?}\n\n\
         [plugins.orders-projection]\nsource = {:?}\ngrants = [\"log\"]\n\n\
         [[projections]]\nname = \"orders\"\nplugin = \"orders-projection\"\n\
         stream_prefix = \"order-\"\nbatch = {batch}\n",
        dir.to_string_lossy(),
        Path::new(ficus::WASM_DIR)
            .join("orders-projection.wasm")
            .to_string_lossy(),
    );
    ficus_config::parse_str(&text, &dir.join("bench.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ficus-projection-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn fill(events: &Arc<dyn EventStore>, n: usize) {
    let writers = 8;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let events = events.clone();
            tokio::spawn(async move {
                for order in (w..n / 2).step_by(writers) {
                    let stream = format!("order-{order}");
                    let placed = NewEvent {
                        id: format!("{stream}-1"),
                        event_type: "OrderPlaced".into(),
                        data: br#"{"customer":"c1","total":4200}"#.to_vec(),
                        metadata: Vec::new(),
                    };
                    let paid = NewEvent {
                        id: format!("{stream}-2"),
                        event_type: "OrderPaid".into(),
                        data: br#"{"amount":4200}"#.to_vec(),
                        metadata: Vec::new(),
                    };
                    events
                        .append(&stream, Expected::NoStream, vec![placed])
                        .await
                        .expect("append");
                    events
                        .append(&stream, Expected::Exact(1), vec![paid])
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
}

#[path = "../src/testing/nats_server.rs"]
mod nats_server;

/// Run the projection over the whole backlog with `batch`; events/s until
/// the checkpoint reaches `target`. `nats`: the read models on this store
/// instead of the embedded one.
async fn run(
    dir: &Path,
    batch: usize,
    target: u64,
    nats: Option<Arc<dyn ReadModels>>,
) -> (f64, u64) {
    let _ = std::fs::remove_file(dir.join("readmodels.redb"));
    let config = config(dir, batch);
    let engine = ficus::plugin::engine::PluginEngine::new(&Default::default()).expect("engine");
    let elector = elector_for(&config);
    let events = events_for(&config).await.expect("events").expect("opened");
    let models = match nats {
        Some(store) => Arc::new(ReadModelService {
            store,
            models: ["orders".to_owned()].into(),
        }),
        None => read_models_for(&config)
            .await
            .expect("models")
            .expect("opened"),
    };
    let services = Services {
        leader: elector.clone(),
        events: Some(events.clone()),
        read_models: Some(models.clone()),
        ..ficus::app::services_in_process()
    };
    let prepared = build_projections(&config, &engine, &services)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    elector.start().await;
    let start = Instant::now();
    let projections = Projections::start(prepared, elector.clone(), events, models.store.clone());
    loop {
        let status = projections.status();
        if status[0].checkpoint >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let applied = projections.status()[0].checkpoint;
    projections.shutdown().await;
    elector.shutdown().await;
    (applied as f64 / elapsed.as_secs_f64(), applied)
}

fn main() {
    let n: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = scratch();
        let events = events_for(&config(&dir, 1))
            .await
            .expect("events")
            .expect("opened");
        let filled = Instant::now();
        fill(&events, n).await;
        let head = events.head().await.expect("head");
        println!(
            "backlog: {head} events (OrderPlaced + OrderPaid for {} orders), written in {:.1} s",
            n / 2,
            filled.elapsed().as_secs_f64()
        );
        // Raw read rate of the same backlog.
        let start = Instant::now();
        let mut sub = Subscription::new(events.clone(), 1, Filter::default());
        let mut read = 0u64;
        while read < head {
            read += sub.ready(512).await.expect("read").len() as u64;
        }
        let raw = read as f64 / start.elapsed().as_secs_f64();
        println!("raw subscription catch-up (no plugin, no writes): {raw:>9.0} events/s");
        drop(sub);
        drop(events); // the projections reopen the store

        // batch = 1 is slow (one fsync per event): measure it on a prefix.
        let (one, _) = run(&dir, 1, head.min(2000), None).await;
        println!("projection, batch = 1 (baseline)   : {one:>9.0} events/s (first {} events)", head.min(2000));
        let mut embedded = std::collections::BTreeMap::new();
        for batch in [16, 256, 1024] {
            let (rate, applied) = run(&dir, batch, head, None).await;
            embedded.insert(batch, rate);
            println!(
                "projection, batch = {batch:<4}           : {rate:>9.0} events/s ({applied} events)  {:>5.1}x batch=1  {:.2}x raw read",
                rate / one,
                rate / raw
            );
        }
        // The same with the read models on NATS JetStream (one local
        // nats-server, R1): each batch is one JetStream message, acked and
        // applied to the local cache before the next.
        for (i, batch) in [16, 256].into_iter().enumerate() {
            // A server per run: read-model streams share the subjects rm.>.
            let server = nats_server::NatsServer::start();
            let options = NatsReadModelsOptions::new(
                vec![server.url.clone()],
                dir.join(format!("readmodels-nats-{i}.redb")),
            );
            let store: Arc<dyn ReadModels> =
                Arc::new(NatsReadModels::open(options).await.expect("NATS read models"));
            let (rate, applied) = run(&dir, batch, head, Some(store)).await;
            println!(
                "projection on NATS read models, batch = {batch:<4}: {rate:>9.0} events/s ({applied} events)  {:.2}x embedded (same batch)",
                rate / embedded[&batch]
            );
            drop(server);
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
