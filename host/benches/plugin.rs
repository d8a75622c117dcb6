//! Plugin request-path benchmarks: what a Wasm filter costs per request.
//!
//! Run with `cargo bench -p ficus --bench plugin` (see `bench/README.md`).
//! Every figure is printed by criterion as usual, then once more in a summary
//! at the end with the ratios against the baselines measured in the same run
//! (absolute numbers drift 15-20 % between runs on shared machines; ratios
//! measured together are what to compare). Benchmarks report, they never
//! fail: the targets are printed next to the figures.
//!
//! | group | what |
//! | --- | --- |
//! | `hook` | a warm `on-request` call on a request with 10 headers: the real WIT (`request` resource, the guest reads headers `a` and `b`), an empty hook, the guest copying all headers with `req.headers()`, and the rejected design where every call receives every header as a `list<tuple<string, list<u8>>>` |
//! | `instantiate` | `FilterPool::instantiate` (new store + pooled instance + `configure`) of the `headers` plugin and the new store + pooled instance alone (no `configure`), against a bare `Store::new` and the gateway's `new_store`; and a fresh instance plus one call |
//! | `polyglot` | the same filter written in Rust, Python and JavaScript (`plugins-polyglot/`): `FilterPool::instantiate` + `configure`, and a warm `on-request` (geo-router reads a header and routes; api-key checks a header and increments a `state` counter). Needs the components built by the e2e suite (`cargo test -p ficus --test e2e polyglot`); skipped with a note otherwise |
//! | `pipeline` | `ficus::pipeline::run` in-process to a loopback upstream started here, with 0 and 1 plugin, and a 1-plugin route whose filter answers directly |
//!
//! Each sample runs the operation `iters` times inside one `block_on` of a
//! multi-thread tokio runtime (`iter_custom`), so the runtime's entry cost is
//! not part of the figures.

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use ficus::pipeline::exchange::RequestState;
use ficus::pipeline::{self, Clusters, Destination, Route, RouteMetrics, Step};
use ficus::plugin::bindings::RequestAction;
use ficus::plugin::ctx::{deadline_passed, new_store, Capabilities};
use ficus::plugin::engine::{EngineOptions, PluginEngine};
use ficus::plugin::filter::{FilterPool, FilterSpec};
use ficus::plugin::linker::filter_linker;
use ficus::plugin::Grants;
use ficus::upstream::{Balance, Cluster};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Host bindings of the rejected "copy every header" design (the guest is
/// `plugins/fixtures/bench-copy`, which declares the same world).
#[allow(unreachable_pub, missing_docs, clippy::all)]
mod copy_world {
    wasmtime::component::bindgen!({
        inline: r#"
            package ficus:bench;

            world copy-headers {
                export on-request: func(headers: list<tuple<string, list<u8>>>) -> u32;
                export noop: func() -> u32;
            }
        "#,
        world: "copy-headers",
        exports: { default: async },
    });
}

/// The same world called synchronously (no fiber), to measure what the
/// async call path costs.
#[allow(unreachable_pub, missing_docs, clippy::all)]
mod copy_world_sync {
    wasmtime::component::bindgen!({
        inline: r#"
            package ficus:bench;

            world copy-headers {
                export on-request: func(headers: list<tuple<string, list<u8>>>) -> u32;
                export noop: func() -> u32;
            }
        "#,
        world: "copy-headers",
    });
}

// ---------------------------------------------------------------- samples

/// Per-iteration times (ns) of every sample, by benchmark id, for the summary.
fn samples() -> &'static Mutex<BTreeMap<String, Vec<f64>>> {
    static SAMPLES: OnceLock<Mutex<BTreeMap<String, Vec<f64>>>> = OnceLock::new();
    SAMPLES.get_or_init(Default::default)
}

/// Iterations run in total, by benchmark id: printed when
/// `FICUS_BENCH_ITERS` is set, to turn a profiler's totals (callgrind under
/// `--profile-time`) into per-iteration figures.
fn iterations() -> &'static Mutex<BTreeMap<String, u64>> {
    static ITERS: OnceLock<Mutex<BTreeMap<String, u64>>> = OnceLock::new();
    ITERS.get_or_init(Default::default)
}

fn record(id: &str, iters: u64, elapsed: Duration) -> Duration {
    *iterations()
        .lock()
        .unwrap()
        .entry(id.to_owned())
        .or_default() += iters;
    let per_iter = elapsed.as_nanos() as f64 / iters.max(1) as f64;
    samples()
        .lock()
        .unwrap()
        .entry(id.to_owned())
        .or_default()
        .push(per_iter);
    elapsed
}

/// Median ns/iteration over the measured samples of `id` (criterion calls
/// the routine for its warm-up first; the last `SAMPLE_SIZE` calls are the
/// samples).
fn median(id: &str) -> Option<f64> {
    let all = samples().lock().unwrap();
    let v = all.get(id)?;
    let mut last: Vec<f64> = v[v.len().saturating_sub(SAMPLE_SIZE)..].to_vec();
    if last.is_empty() {
        return None;
    }
    last.sort_by(f64::total_cmp);
    Some(last[last.len() / 2])
}

const SAMPLE_SIZE: usize = 30;

// ---------------------------------------------------------------- setup

struct Env {
    rt: Runtime,
    engine: PluginEngine,
    caps: Arc<Capabilities>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // The gateway's metrics recorder, so the pipeline records its metrics
        // as the real binary does.
        ficus::capability::metrics::install();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Precompiled artifacts on disk, as the gateway keeps them: a second
        // run starts in seconds instead of recompiling the Python and
        // JavaScript components (over 45 s on 2 cores).
        let engine = PluginEngine::new(&EngineOptions {
            cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-plugin-cache")),
            // `FICUS_BENCH_MAX_INSTANCES` lowers the pool's address-space
            // reservation, which valgrind cannot make at the default size
            // (profiling a bench under callgrind).
            max_instances: std::env::var("FICUS_BENCH_MAX_INSTANCES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000),
        })
        .expect("plugin engine");
        let caps = Arc::new(Capabilities::new(
            "bench",
            "bench",
            &ficus::app::services_in_process(),
        ));
        Env { rt, engine, caps }
    })
}

/// A plugin built by `host/build.rs`, through the engine's compile cache,
/// with the SHA-256 of its bytes.
fn component(name: &str) -> (wasmtime::component::Component, [u8; 32]) {
    let path = Path::new(ficus::WASM_DIR).join(format!("{name}.wasm"));
    let loaded = env()
        .engine
        .load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (loaded.component, loaded.hash)
}

fn spec(
    plugin: &str,
    hash: [u8; 32],
    config_json: &str,
    grants: Grants,
    fresh: bool,
    sync_calls: bool,
) -> FilterSpec {
    FilterSpec {
        component: hash,
        plugin: plugin.into(),
        route: "bench".into(),
        position: 0,
        config_json: config_json.to_owned(),
        // Generous: on a loaded machine a descheduled thread must not turn
        // into a deadline failure. The value does not change the cost.
        timeout: Duration::from_secs(5),
        memory_limit: 16 << 20,
        pool_size: 4,
        fresh,
        grants,
        sync_calls,
    }
}

fn pool(plugin: &str, config_json: &str, grants: Grants, fresh: bool) -> Arc<FilterPool> {
    pool_calling(plugin, config_json, grants, fresh, false)
}

/// A pool whose hooks are called synchronously (`calls = "sync"`).
fn sync_pool(plugin: &str, config_json: &str) -> Arc<FilterPool> {
    pool_calling(plugin, config_json, Grants::default(), false, true)
}

fn pool_calling(
    plugin: &str,
    config_json: &str,
    grants: Grants,
    fresh: bool,
    sync_calls: bool,
) -> Arc<FilterPool> {
    let env = env();
    let (component, hash) = component(plugin);
    let pool = env
        .rt
        .block_on(FilterPool::new(
            &env.engine,
            &component,
            spec(plugin, hash, config_json, grants, fresh, sync_calls),
            env.caps.clone(),
        ))
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    Arc::new(pool)
}

/// The benchmark request's 10 headers; the filters read `a` and `b`.
fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-GB,en;q=0.7"),
        (
            "cookie",
            "session=6f1c2a9e0b7d4e3f8a1b2c3d4e5f6a7b; theme=dark",
        ),
        ("x-request-id", "3c9d6f0a-8e4b-4b1f-9a2e-7d5c1b0e4f6a"),
        ("x-forwarded-for", "127.0.0.1"),
        ("a", "alpha-0123456789"),
        ("b", "bravo-0123456789"),
    ] {
        h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    h
}

fn request(headers: HeaderMap) -> Box<RequestState> {
    Box::new(RequestState {
        method: Method::GET,
        uri: Uri::from_static("/bench/items?page=2"),
        headers,
        scheme: "http",
        client_addr: SocketAddr::from(([127, 0, 0, 1], 40_000)),
        client_ip: ficus::pipeline::exchange::client_ip_value(SocketAddr::from((
            [127, 0, 0, 1],
            40_000,
        ))),
        route: "bench".into(),
        body: Bytes::new(),
        body_exposed: false,
        attempt_timeout: None,
        max_attempts: 1,
        context: Vec::new(),
        mirror: None,
    })
}

// ---------------------------------------------------------------- hook

/// Store data for the "copy" design: WASI (the Rust guest imports it, as
/// every Ficus filter built for wasip2 does) and the call's deadline, like
/// the gateway's `PluginCtx`.
struct CopyCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    call_deadline: Option<Instant>,
}

/// The gateway's deadline rule (`ficus::plugin::ctx::deadline_passed`): the
/// first epoch tick of a call starts its clock, so arming a call reads none.
fn deadline_tick(
    mut ctx: wasmtime::StoreContextMut<'_, CopyCtx>,
    timeout: Duration,
    go_on: UpdateDeadline,
) -> UpdateDeadline {
    if deadline_passed(&mut ctx.data_mut().call_deadline, timeout) {
        UpdateDeadline::Interrupt
    } else {
        go_on
    }
}

impl WasiView for CopyCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn warm_on_request(c: &mut Criterion, id: &str, pool: Arc<FilterPool>) {
    let env = env();
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut req = request(headers());
                let mut slot = None;
                let start = Instant::now();
                for _ in 0..iters {
                    let (back, result) = pool.on_request(&mut slot, req).await;
                    req = back;
                    match result {
                        Ok(RequestAction::Continue) => {}
                        other => panic!("{id}: unexpected hook result {other:?}"),
                    }
                }
                record(id, iters, start.elapsed())
            })
        })
    });
}

/// Like [`warm_on_request`], for plugins that answer `route(...)` (or any
/// non-error action).
fn warm_on_request_routing(c: &mut Criterion, id: &str, pool: Arc<FilterPool>) {
    let env = env();
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut req = request(headers());
                let mut slot = None;
                let start = Instant::now();
                for _ in 0..iters {
                    let (back, result) = pool.on_request(&mut slot, req).await;
                    req = back;
                    if let Err(e) = result {
                        panic!("{id}: hook failed: {e}");
                    }
                }
                record(id, iters, start.elapsed())
            })
        })
    });
}

fn bench_hook(c: &mut Criterion) {
    let env = env();
    let none = Grants::default();

    warm_on_request(
        c,
        "hook/resource_read2",
        pool("bench-read", "{}", none, false),
    );
    // The shard router's per-request cost (issue 4): key from header `a`,
    // 100 shards placed with Maglev (table 65537, built in configure).
    let shards: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"id":"s{i}","cluster":"c{i}"}}"#))
        .collect();
    let shard_config = format!(
        r#"{{"key":[{{"header":"a"}}],"shard_header":"","shards":[{}]}}"#,
        shards.join(",")
    );
    let state = Grants {
        state: true,
        ..Grants::default()
    };
    warm_on_request_routing(
        c,
        "hook/shard_router_maglev_100",
        pool("shard-router", &shard_config, state, false),
    );
    warm_on_request(
        c,
        "hook/resource_empty",
        pool("bench-read", r#"{"names":[]}"#, none, false),
    );
    warm_on_request(
        c,
        "hook/resource_headers_copy_all",
        pool(
            "bench-read",
            r#"{"names":["a","b"],"copy_all":true}"#,
            none,
            false,
        ),
    );
    warm_on_request(
        c,
        "hook/headers_plugin_set1",
        pool(
            "headers",
            r#"{"request":{"set":{"x-bench":"1"}}}"#,
            none,
            false,
        ),
    );
    // The same hooks with `calls = "sync"` (no fiber).
    warm_on_request(c, "hook/resource_read2_sync", sync_pool("bench-read", "{}"));
    warm_on_request(
        c,
        "hook/resource_empty_sync",
        sync_pool("bench-read", r#"{"names":[]}"#),
    );
    warm_on_request(
        c,
        "hook/headers_plugin_set1_sync",
        sync_pool("headers", r#"{"request":{"set":{"x-bench":"1"}}}"#),
    );

    // The rejected design: every call copies every header into the guest.
    let (component, _) = component("bench-copy");
    let mut linker: Linker<CopyCtx> = Linker::new(env.engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("link wasi");
    let pre = copy_world::CopyHeadersPre::new(linker.instantiate_pre(&component).expect("pre"))
        .expect("copy-headers world");
    let timeout = Duration::from_secs(5);
    let mut store = Store::new(
        env.engine.engine(),
        CopyCtx {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            call_deadline: None,
        },
    );
    store.epoch_deadline_callback(move |ctx| {
        Ok(deadline_tick(ctx, timeout, UpdateDeadline::Yield(1)))
    });
    store.set_epoch_deadline(1);
    let bindings = env
        .rt
        .block_on(pre.instantiate_async(&mut store))
        .expect("instantiate bench-copy");
    let store = Mutex::new(store);
    let id = "hook/copy_design_read2";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut store = store.lock().unwrap();
            env.rt.block_on(async {
                let req = request(headers());
                let start = Instant::now();
                for _ in 0..iters {
                    // What the host of this design does per call: copy the
                    // header map out, arm the deadline, call.
                    let list: Vec<(String, Vec<u8>)> = req
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                        .collect();
                    store.data_mut().call_deadline = None;
                    store.set_epoch_deadline(1);
                    let seen = bindings
                        .call_on_request(&mut *store, &list)
                        .await
                        .expect("call");
                    assert_eq!(seen, 32);
                }
                record(id, iters, start.elapsed())
            })
        })
    });

    // The floor: wasmtime's own cost of calling an export that does nothing,
    // async (on a fiber, as Ficus calls hooks) and sync.
    let id = "hook/wasmtime_noop_call_async";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let mut store = store.lock().unwrap();
            env.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    store.data_mut().call_deadline = None;
                    store.set_epoch_deadline(1);
                    black_box(bindings.call_noop(&mut *store).await.expect("call"));
                }
                record(id, iters, start.elapsed())
            })
        })
    });

    let mut sync_linker: Linker<CopyCtx> = Linker::new(env.engine.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut sync_linker).expect("link wasi");
    let sync_pre =
        copy_world_sync::CopyHeadersPre::new(sync_linker.instantiate_pre(&component).expect("pre"))
            .expect("copy-headers world");
    let mut sync_store = Store::new(
        env.engine.engine(),
        CopyCtx {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            call_deadline: None,
        },
    );
    // A sync call cannot yield: keep running until the deadline.
    sync_store.epoch_deadline_callback(move |ctx| {
        Ok(deadline_tick(ctx, timeout, UpdateDeadline::Continue(1)))
    });
    sync_store.set_epoch_deadline(1);
    let sync_bindings = sync_pre
        .instantiate(&mut sync_store)
        .expect("instantiate bench-copy (sync)");
    let id = "hook/wasmtime_noop_call_sync";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                sync_store.data_mut().call_deadline = None;
                sync_store.set_epoch_deadline(1);
                black_box(sync_bindings.call_noop(&mut sync_store).expect("call"));
            }
            record(id, iters, start.elapsed())
        })
    });
    let id = "hook/copy_design_read2_sync";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let req = request(headers());
            let start = Instant::now();
            for _ in 0..iters {
                let list: Vec<(String, Vec<u8>)> = req
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                    .collect();
                sync_store.data_mut().call_deadline = None;
                sync_store.set_epoch_deadline(1);
                let seen = sync_bindings
                    .call_on_request(&mut sync_store, &list)
                    .expect("call");
                assert_eq!(seen, 32);
            }
            record(id, iters, start.elapsed())
        })
    });
}

// ---------------------------------------------------------------- polyglot

/// The polyglot examples as `tests/e2e/polyglot.rs` builds them:
/// (component file, language, config, memory limit).
const POLYGLOT: [(&str, &str, &str, usize); 4] = [
    (
        "geo-router-rust",
        "rust",
        r#"{"header":"a","routes":{"alpha-0123456789":"eu"}}"#,
        16 << 20,
    ),
    (
        "geo-router-js",
        "js",
        r#"{"header":"a","routes":{"alpha-0123456789":"eu"}}"#,
        16 << 20,
    ),
    (
        "api-key-rust",
        "rust",
        r#"{"header":"a","keys":["alpha-0123456789"]}"#,
        16 << 20,
    ),
    (
        "api-key-python",
        "python",
        r#"{"header":"a","keys":["alpha-0123456789"]}"#,
        64 << 20,
    ),
];

fn polyglot_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("polyglot/examples")
}

fn bench_polyglot(c: &mut Criterion) {
    let env = env();
    let dir = polyglot_dir();
    for (name, _, config, memory) in POLYGLOT {
        let path = dir.join(format!("{name}.wasm"));
        if !path.is_file() {
            println!(
                "polyglot/{name}: skipped, {} is not built (run `cargo test -p ficus --test e2e polyglot` first)",
                path.display()
            );
            continue;
        }
        let loaded = env
            .engine
            .load(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let grants = Grants {
            state: name.starts_with("api-key"),
            ..Grants::default()
        };
        let mut spec = spec(name, loaded.hash, config, grants, false, false);
        spec.memory_limit = memory;
        let pool = Arc::new(
            env.rt
                .block_on(FilterPool::new(
                    &env.engine,
                    &loaded.component,
                    spec,
                    env.caps.clone(),
                ))
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
        let id = format!("polyglot/instantiate_{name}");
        c.bench_function(&id, |b| {
            b.iter_custom(|iters| {
                env.rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(pool.instantiate().await.expect("instantiate"));
                    }
                    record(&id, iters, start.elapsed())
                })
            })
        });
        let id = format!("polyglot/hook_{name}");
        let key = HeaderValue::from_static("alpha-0123456789");
        c.bench_function(&id, |b| {
            b.iter_custom(|iters| {
                env.rt.block_on(async {
                    let mut req = request(headers());
                    let mut slot = None;
                    let start = Instant::now();
                    for _ in 0..iters {
                        // api-key removes the key header: put it back (the
                        // same few ns for every language).
                        req.headers
                            .insert(HeaderName::from_static("a"), key.clone());
                        let (back, result) = pool.on_request(&mut slot, req).await;
                        req = back;
                        match result {
                            Ok(RequestAction::Respond(_)) | Err(_) => {
                                panic!("{name}: the request should pass: {result:?}")
                            }
                            Ok(_) => {}
                        }
                    }
                    record(&id, iters, start.elapsed())
                })
            })
        });
    }
}

// ---------------------------------------------------------------- instantiate

/// Run `make` `iters` times, timing what it makes and then its drop (the
/// pooling allocator resetting the slots: memory, tables, fiber stack) apart:
/// the drop is recorded under `drop_id`, the making under `id` and returned
/// to criterion.
async fn time_apart<T, F: std::future::Future<Output = T>>(
    id: &str,
    drop_id: &str,
    iters: u64,
    mut make: impl FnMut() -> F,
    mut dispose: impl FnMut(T),
) -> Duration {
    let (mut made, mut dropped) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..iters {
        let start = Instant::now();
        let live = black_box(make().await);
        made += start.elapsed();
        let start = Instant::now();
        dispose(live);
        dropped += start.elapsed();
    }
    record(drop_id, iters, dropped);
    record(id, iters, made)
}

fn bench_instantiate(c: &mut Criterion) {
    let env = env();
    let engine = env.engine.engine();

    let id = "instantiate/store_new_bare";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(Store::new(engine, ()));
            }
            record(id, iters, start.elapsed())
        })
    });

    let id = "instantiate/new_store_plugin_ctx";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(new_store(
                    engine,
                    env.caps.clone(),
                    Grants::default(),
                    16 << 20,
                    Duration::from_millis(100),
                    0,
                ));
            }
            record(id, iters, start.elapsed())
        })
    });

    // wasmtime's part alone: a new store and a pooled instance of the same
    // pre-linked component, without the guest's `configure`.
    let (headers_component, _) = component("headers");
    let headers_pre = filter_linker(engine, Grants::default(), false)
        .expect("filter linker")
        .instantiate_pre(&headers_component)
        .expect("link headers");
    let id = "instantiate/instance_only";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(time_apart(
                id,
                "instantiate/instance_only_drop",
                iters,
                || async {
                    let mut store = new_store(
                        engine,
                        env.caps.clone(),
                        Grants::default(),
                        16 << 20,
                        Duration::from_secs(5),
                        0,
                    );
                    store.set_epoch_deadline(1_000);
                    let instance = headers_pre
                        .instantiate_async(&mut store)
                        .await
                        .expect("instantiate");
                    (instance, store)
                },
                drop,
            ))
        })
    });

    let headers_pool = pool(
        "headers",
        r#"{"request":{"set":{"x-bench":"1"}}}"#,
        Grants::default(),
        false,
    );
    // `filter_pool_instantiate` disposes of each instance as `fresh` mode
    // and failed calls do: the pool takes the store data back for the next
    // one (`FilterPool::discard`). `_new_ctx` drops it outright, so every
    // store is built anew.
    for (id, drop_id, reuse) in [
        (
            "instantiate/filter_pool_instantiate",
            "instantiate/filter_pool_drop",
            true,
        ),
        (
            "instantiate/filter_pool_instantiate_new_ctx",
            "instantiate/filter_pool_drop_new_ctx",
            false,
        ),
    ] {
        c.bench_function(id, |b| {
            b.iter_custom(|iters| {
                env.rt.block_on(time_apart(
                    id,
                    drop_id,
                    iters,
                    || async { headers_pool.instantiate().await.expect("instantiate") },
                    |(instance, _hooks)| {
                        if reuse {
                            headers_pool.discard(instance);
                        }
                    },
                ))
            })
        });
    }

    let fresh = pool("bench-read", "{}", Grants::default(), true);
    let id = "instantiate/fresh_instance_plus_call";
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            env.rt.block_on(async {
                let mut req = request(headers());
                let start = Instant::now();
                for _ in 0..iters {
                    let mut slot = None;
                    let (back, result) = fresh.on_request(&mut slot, req).await;
                    req = back;
                    match result {
                        Ok(RequestAction::Continue) => {}
                        other => panic!("{id}: unexpected hook result {other:?}"),
                    }
                    // As the pipeline does at the end of a request.
                    if let Some(instance) = slot.take() {
                        fresh.discard(instance);
                    }
                }
                record(id, iters, start.elapsed())
            })
        })
    });
}

// ---------------------------------------------------------------- pipeline

/// A loopback HTTP/1 upstream answering every request with a 2-byte body.
fn start_upstream(rt: &Runtime) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    })
}

fn route(name: &str, steps: Vec<Step>, cluster: &Arc<Cluster>) -> Route {
    Route {
        name: name.into(),
        steps,
        destination: Destination::Upstream(cluster.clone()),
        max_attempts: 1,
        plugin_body: false,
        max_response_body: 8 << 20,
        metrics: RouteMetrics::new(name),
    }
}

fn bench_pipeline(c: &mut Criterion) {
    pipeline_group(c, &env().rt, "pipeline");
    // The same on a current-thread runtime: client, gateway pipeline and
    // upstream share one thread, so no cross-thread wake-ups blur the
    // difference the plugin makes (the figure is then the CPU cost of the
    // whole exchange, both ends included).
    let rt1 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    pipeline_group(c, &rt1, "pipeline_1thread");
}

fn pipeline_group(c: &mut Criterion, rt: &Runtime, group: &str) {
    let upstream = start_upstream(rt);
    let cluster = Arc::new(
        Cluster::new(
            "app",
            &[upstream.to_string()],
            Balance::RoundRobin,
            Duration::from_secs(1),
            Duration::from_secs(15),
        )
        .expect("cluster"),
    );
    let mut clusters: Clusters = Clusters::new();
    clusters.insert("app".into(), cluster.clone());

    let step = |pool: Arc<FilterPool>| Step {
        pool,
        fail_open: false,
        canary: None,
    };
    let probe_grants = Grants {
        log: true,
        metrics: true,
        state: true,
        clock: false,
        ..Grants::default()
    };
    let routes = [
        ("upstream_0_plugins", route("zero", vec![], &cluster), 200),
        (
            "upstream_1_plugin",
            route(
                "one",
                vec![step(pool(
                    "headers",
                    r#"{"request":{"set":{"x-bench":"1"}}}"#,
                    Grants::default(),
                    false,
                ))],
                &cluster,
            ),
            200,
        ),
        (
            "upstream_1_plugin_empty_hook",
            route(
                "one-empty",
                vec![step(pool(
                    "bench-read",
                    r#"{"names":[]}"#,
                    Grants::default(),
                    false,
                ))],
                &cluster,
            ),
            200,
        ),
        (
            "short_circuit_1_plugin",
            route(
                "short",
                vec![step(pool(
                    "probe",
                    r#"{"respond_if_header":"a","respond_status":200,"hooks":["on-request"]}"#,
                    probe_grants,
                    false,
                ))],
                &cluster,
            ),
            200,
        ),
    ];
    let template = headers();
    for (name, route, status) in &routes {
        let id = format!("{group}/{name}");
        let id = id.as_str();
        c.bench_function(id, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let resp = pipeline::run(
                            route,
                            &clusters,
                            request(template.clone()),
                            Instant::now(),
                        )
                        .await;
                        assert_eq!(resp.status().as_u16(), *status);
                        black_box(resp.into_body().collect().await.expect("body").to_bytes());
                    }
                    record(id, iters, start.elapsed())
                })
            })
        });
    }
}

// ---------------------------------------------------------------- summary

fn fmt_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:8.1} µs", ns / 1000.0)
    } else {
        format!("{:8.0} ns", ns)
    }
}

fn summary() {
    let m = |id: &str| median(id);
    let line = |label: &str, id: &str, note: String| match m(id) {
        Some(ns) => println!("  {label:<48} {}  {note}", fmt_ns(ns)),
        None => println!("  {label:<48} (not run)"),
    };
    let ratio = |a: &str, b: &str| match (m(a), m(b)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".to_owned(),
    };
    let target = |id: &str, limit_ns: f64| match m(id) {
        Some(ns) if ns <= limit_ns => format!("target <= {} [met]", fmt_ns(limit_ns).trim()),
        Some(_) => format!("target <= {} [MISSED]", fmt_ns(limit_ns).trim()),
        None => String::new(),
    };

    println!();
    println!("==== Ficus plugin benchmarks: summary (median time per operation, this run) ====");
    println!("warm on-request hook, request with 10 headers:");
    line(
        "shard router, Maglev, 100 shards, key from a header",
        "hook/shard_router_maglev_100",
        String::new(),
    );
    line(
        "resource WIT, guest reads headers a, b",
        "hook/resource_read2",
        target("hook/resource_read2", 1_000.0),
    );
    line(
        "resource WIT, empty hook (fixed call cost)",
        "hook/resource_empty",
        String::new(),
    );
    line(
        "resource WIT, guest copies all via headers()",
        "hook/resource_headers_copy_all",
        format!(
            "= {} of read-two",
            ratio("hook/resource_headers_copy_all", "hook/resource_read2")
        ),
    );
    line(
        "copy design, all headers as a list param",
        "hook/copy_design_read2",
        format!(
            "copy/resource = {}",
            ratio("hook/copy_design_read2", "hook/resource_read2")
        ),
    );
    line(
        "copy design, called sync (no fiber)",
        "hook/copy_design_read2_sync",
        format!(
            "copy-sync/resource = {}",
            ratio("hook/copy_design_read2_sync", "hook/resource_read2")
        ),
    );
    line(
        "headers plugin, sets one request header",
        "hook/headers_plugin_set1",
        String::new(),
    );
    line(
        "calls = \"sync\": reads headers a, b",
        "hook/resource_read2_sync",
        format!(
            "= {} of async; {}",
            ratio("hook/resource_read2_sync", "hook/resource_read2"),
            target("hook/resource_read2_sync", 1_000.0)
        ),
    );
    line(
        "calls = \"sync\": empty hook",
        "hook/resource_empty_sync",
        format!(
            "= {} of async",
            ratio("hook/resource_empty_sync", "hook/resource_empty")
        ),
    );
    line(
        "calls = \"sync\": headers plugin, sets one header",
        "hook/headers_plugin_set1_sync",
        format!(
            "= {} of async",
            ratio("hook/headers_plugin_set1_sync", "hook/headers_plugin_set1")
        ),
    );
    line(
        "wasmtime floor: empty export, async call",
        "hook/wasmtime_noop_call_async",
        String::new(),
    );
    line(
        "wasmtime floor: empty export, sync call",
        "hook/wasmtime_noop_call_sync",
        format!(
            "= {} of async",
            ratio(
                "hook/wasmtime_noop_call_sync",
                "hook/wasmtime_noop_call_async"
            )
        ),
    );
    if let (Some(e), Some(a)) = (m("hook/resource_empty"), m("hook/wasmtime_noop_call_async")) {
        println!("  => Ficus adds {:.0} ns per hook call over wasmtime's async floor (pool, lending, resource borrow, SDK)", e - a);
    }
    if let (Some(r), Some(e)) = (m("hook/resource_read2"), m("hook/resource_empty")) {
        println!(
            "  => reading two headers adds {:.0} ns over the empty hook ({:.0} ns per header)",
            r - e,
            (r - e) / 2.0
        );
    }
    println!("instantiation:");
    line(
        "Store::new(engine, ()) (bare baseline)",
        "instantiate/store_new_bare",
        String::new(),
    );
    line(
        "new_store (PluginCtx: WASI ctx, limiter, epoch)",
        "instantiate/new_store_plugin_ctx",
        format!(
            "= {} of bare",
            ratio(
                "instantiate/new_store_plugin_ctx",
                "instantiate/store_new_bare"
            )
        ),
    );
    line(
        "new_store + pooled instance (headers), no configure",
        "instantiate/instance_only",
        format!(
            "{}; = {} of bare Store::new",
            target("instantiate/instance_only", 10_000.0),
            ratio("instantiate/instance_only", "instantiate/store_new_bare")
        ),
    );
    line(
        "FilterPool::instantiate (headers) + configure",
        "instantiate/filter_pool_instantiate",
        format!(
            "{}; = {} of bare Store::new",
            target("instantiate/filter_pool_instantiate", 10_000.0),
            ratio(
                "instantiate/filter_pool_instantiate",
                "instantiate/store_new_bare"
            )
        ) + &format!(
            "; store data reused = {} of built anew",
            ratio(
                "instantiate/filter_pool_instantiate",
                "instantiate/filter_pool_instantiate_new_ctx"
            )
        ),
    );
    line(
        "  the same with every store built anew (instance dropped outright)",
        "instantiate/filter_pool_instantiate_new_ctx",
        String::new(),
    );
    line(
        "  then discarding it (slot reset: memory, tables, stack)",
        "instantiate/filter_pool_drop",
        format!(
            "(without configure: {})",
            m("instantiate/instance_only_drop")
                .map_or("n/a".into(), |ns| fmt_ns(ns).trim().to_owned())
        ),
    );
    line(
        "fresh instance + on-request (bench-read)",
        "instantiate/fresh_instance_plus_call",
        format!(
            "= {} of a warm call",
            ratio(
                "instantiate/fresh_instance_plus_call",
                "hook/resource_read2"
            )
        ),
    );
    println!("the same filter per language (plugins-polyglot; ratios against the Rust build):");
    for (name, lang, _, _) in POLYGLOT {
        let twin = format!("{}-rust", name.rsplit_once('-').map_or(name, |(a, _)| a));
        for (kind, what) in [
            ("instantiate", "instantiate + configure"),
            ("hook", "warm on-request"),
        ] {
            let id = format!("polyglot/{kind}_{name}");
            let rust = format!("polyglot/{kind}_{twin}");
            let note = if lang == "rust" {
                String::new()
            } else {
                format!("= {} of Rust", ratio(&id, &rust))
            };
            line(&format!("{name} ({lang}): {what}"), &id, note);
        }
    }
    for (group, title) in [
        ("pipeline", "pipeline::run in-process, multi-thread runtime (loopback upstream, 2-byte body, sequential):"),
        ("pipeline_1thread", "the same on a current-thread runtime (client, pipeline and upstream on one thread):"),
    ] {
        let zero = format!("{group}/upstream_0_plugins");
        let one = format!("{group}/upstream_1_plugin");
        println!("{title}");
        line("0 plugins", &zero, String::new());
        line(
            "1 plugin (headers sets one request header)",
            &one,
            match (m(&one), m(&zero)) {
                (Some(o), Some(z)) => format!("= {} of 0 plugins (+{:.2} µs)", ratio(&one, &zero), (o - z) / 1000.0),
                _ => String::new(),
            },
        );
        let empty = format!("{group}/upstream_1_plugin_empty_hook");
        line(
            "1 plugin with an empty hook (bench-read)",
            &empty,
            format!("= {} of 0 plugins", ratio(&empty, &zero)),
        );
        line("1 plugin that responds itself (no upstream)", &format!("{group}/short_circuit_1_plugin"), String::new());
    }
    println!("================================================================================");
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_hook, bench_instantiate, bench_polyglot, bench_pipeline
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
    if std::env::var_os("FICUS_BENCH_ITERS").is_some() {
        for (id, n) in iterations().lock().unwrap().iter() {
            println!("iterations {id}: {n}");
        }
    }
}
