//! Tests of the read-model store semantics. The behavioural tests run
//! against both backends: the embedded store and NATS JetStream (each NATS
//! test starts its own `nats-server`; a missing binary fails the test, see
//! `scripts/nats-server`). Tests after those are specific to NATS.

use super::embedded::EmbeddedReadModels;
use super::nats::{NatsReadModels, NatsReadModelsOptions, Op, Record};
use super::*;
use crate::testing::nats_server::NatsServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A scratch directory, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ficus-readmodels-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

/// A store of one kind: the embedded file, or a nats-server and a cache
/// directory per node.
struct Fixture {
    dir: Scratch,
    server: Option<NatsServer>,
}

impl Fixture {
    fn embedded() -> Fixture {
        Fixture {
            dir: scratch(),
            server: None,
        }
    }

    fn nats() -> Fixture {
        Fixture {
            dir: scratch(),
            server: Some(NatsServer::start()),
        }
    }

    fn options(&self, node: &str) -> NatsReadModelsOptions {
        let server = self.server.as_ref().expect("a NATS fixture");
        NatsReadModelsOptions {
            retry_for: Duration::from_secs(20),
            ..NatsReadModelsOptions::new(
                vec![server.url.clone()],
                self.dir.0.join(format!("{node}.redb")),
            )
        }
    }

    /// Open the store (node `a` on NATS); reopening after the last handle
    /// is dropped is a restart.
    async fn open(&self) -> Arc<dyn ReadModels> {
        self.open_node("a").await
    }

    async fn open_node(&self, node: &str) -> Arc<dyn ReadModels> {
        match &self.server {
            None => Arc::new(
                EmbeddedReadModels::open(&self.dir.0.join("readmodels.redb")).expect("open"),
            ),
            Some(_) => Arc::new(
                NatsReadModels::open(self.options(node))
                    .await
                    .expect("open"),
            ),
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn put(key: &str, value: &str) -> Write {
    (key.to_owned(), Some(value.as_bytes().to_vec()))
}

/// Every test must finish within this.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn a_commit_writes_documents_and_checkpoint_together(f: &Fixture) {
    let store = f.open().await;
    let g = store.generations("orders").await.unwrap();
    assert_eq!(
        g,
        Generations {
            active: 1,
            checkpoint: 0,
            building: None
        }
    );
    store
        .commit("orders", 1, vec![put("o/1", "a"), put("o/2", "b")], 3)
        .await
        .unwrap();
    store
        .commit("orders", 1, vec![("o/1".into(), None), put("o/3", "c")], 5)
        .await
        .unwrap();
    assert_eq!(store.get("orders", 1, "o/1").await.unwrap(), None);
    assert_eq!(
        store.get("orders", 1, "o/2").await.unwrap(),
        Some(b"b".to_vec())
    );
    assert_eq!(store.generations("orders").await.unwrap().checkpoint, 5);
    // Another model is separate.
    assert_eq!(store.get("other", 1, "o/2").await.unwrap(), None);
}

async fn a_checkpoint_that_does_not_move_forward_is_refused_and_writes_nothing(f: &Fixture) {
    let store = f.open().await;
    store.commit("m", 1, vec![put("k", "1")], 4).await.unwrap();
    for replay in [4, 2] {
        let err = store
            .commit("m", 1, vec![put("k", "twice")], replay)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadModelError::Stale(_)), "{err}");
    }
    assert_eq!(store.get("m", 1, "k").await.unwrap(), Some(b"1".to_vec()));
}

async fn scan_pages_by_prefix_in_key_order(f: &Fixture) {
    let store = f.open().await;
    let mut writes: Vec<Write> = (0..25).map(|i| put(&format!("a/{i:02}"), "x")).collect();
    writes.push(put("b/1", "y"));
    writes.push(put("a", "z"));
    store.commit("m", 1, writes, 1).await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .scan("m", 1, "a/", after.as_deref(), 10)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().key.clone());
        seen.extend(page.into_iter().map(|d| d.key));
    }
    let want: Vec<String> = (0..25).map(|i| format!("a/{i:02}")).collect();
    assert_eq!(seen, want);
    let all = store.scan("m", 1, "", None, 1000).await.unwrap();
    assert_eq!(all.len(), 27);
    assert_eq!(all[0].key, "a");
}

async fn a_rebuild_builds_beside_the_active_generation_then_replaces_it(f: &Fixture) {
    let store = f.open().await;
    store
        .commit("m", 1, vec![put("old", "1")], 10)
        .await
        .unwrap();
    let next = store.begin_rebuild("m").await.unwrap();
    assert_eq!(next, 2);
    store
        .commit("m", 2, vec![put("new", "2")], 4)
        .await
        .unwrap();
    // The active generation still answers and still takes live writes.
    store
        .commit("m", 1, vec![put("old2", "1")], 11)
        .await
        .unwrap();
    let g = store.generations("m").await.unwrap();
    assert_eq!((g.active, g.checkpoint, g.building), (1, 11, Some((2, 4))));
    assert_eq!(store.get("m", 1, "old").await.unwrap(), Some(b"1".to_vec()));
    store.activate("m", 2).await.unwrap();
    let g = store.generations("m").await.unwrap();
    assert_eq!((g.active, g.checkpoint, g.building), (2, 4, None));
    assert_eq!(
        store.get("m", 1, "old").await.unwrap(),
        None,
        "old generation dropped"
    );
    assert_eq!(store.get("m", 2, "new").await.unwrap(), Some(b"2".to_vec()));
    // The replaced generation takes no more writes.
    let err = store
        .commit("m", 1, vec![put("x", "1")], 12)
        .await
        .unwrap_err();
    assert!(matches!(err, ReadModelError::Stale(_)), "{err}");
    // Activating a generation that is not being built is refused.
    assert!(store.activate("m", 3).await.is_err());
    // A rebuild started again drops the unfinished one.
    assert_eq!(store.begin_rebuild("m").await.unwrap(), 3);
    store
        .commit("m", 3, vec![put("half", "1")], 2)
        .await
        .unwrap();
    assert_eq!(store.begin_rebuild("m").await.unwrap(), 4);
    assert_eq!(store.get("m", 3, "half").await.unwrap(), None);
}

async fn everything_committed_survives_a_reopen(f: &Fixture) {
    {
        let store = f.open().await;
        store.commit("m", 1, vec![put("k", "v")], 7).await.unwrap();
        store.begin_rebuild("m").await.unwrap();
    }
    let store = f.open().await;
    let g = store.generations("m").await.unwrap();
    assert_eq!((g.active, g.checkpoint, g.building), (1, 7, Some((2, 0))));
    assert_eq!(store.get("m", 1, "k").await.unwrap(), Some(b"v".to_vec()));
}

async fn bad_keys_and_oversized_documents_are_refused_with_the_reason(f: &Fixture) {
    let store = f.open().await;
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    for key in ["", long.as_str(), "a\nb"] {
        let err = store
            .commit("m", 1, vec![put(key, "v")], 1)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadModelError::Invalid(_)), "{err}");
    }
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    let err = store
        .commit("m", 1, vec![("k".into(), Some(big))], 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert_eq!(store.generations("m").await.unwrap().checkpoint, 0);
}

async fn the_service_names_unknown_models(f: &Fixture) {
    let service = ReadModelService {
        store: f.open().await,
        models: ["orders".to_owned()].into(),
    };
    let err = service.get("nope", "k").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown read model \"nope\" (known: orders)"),
        "{err}"
    );
    assert_eq!(service.get("orders", "k").await.unwrap(), None);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_embedded {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let f = Fixture::embedded();
                    rt().block_on(async {
                        tokio::time::timeout(TEST_TIMEOUT, super::$name(&f))
                            .await
                            .expect("test timed out");
                    });
                }
            )*
        }

        mod on_nats {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let f = Fixture::nats();
                    rt().block_on(async {
                        tokio::time::timeout(TEST_TIMEOUT, super::$name(&f))
                            .await
                            .expect("test timed out");
                    });
                }
            )*
        }
    };
}

on_both_backends!(
    a_commit_writes_documents_and_checkpoint_together,
    a_checkpoint_that_does_not_move_forward_is_refused_and_writes_nothing,
    scan_pages_by_prefix_in_key_order,
    a_rebuild_builds_beside_the_active_generation_then_replaces_it,
    everything_committed_survives_a_reopen,
    bad_keys_and_oversized_documents_are_refused_with_the_reason,
    the_service_names_unknown_models,
);

/// Poll `store` until `model`'s generations are `want` (another node's
/// writes arrive through its log consumer).
async fn until_generations(store: &Arc<dyn ReadModels>, model: &str, want: Generations) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = store.generations(model).await.unwrap();
        if g == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {g:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn gens(active: u64, checkpoint: u64, building: Option<(u64, u64)>) -> Generations {
    Generations {
        active,
        checkpoint,
        building,
    }
}

fn nats_test<F: std::future::Future<Output = ()>>(body: impl FnOnce(Fixture) -> F) {
    let f = Fixture::nats();
    rt().block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, body(f))
            .await
            .expect("test timed out");
    });
}

#[test]
fn nats_two_nodes_see_each_others_commits_and_rebuilds() {
    nats_test(|f| async move {
        let a = f.open_node("a").await;
        let b = f.open_node("b").await;
        a.sync("m").await.unwrap();
        a.commit("m", 1, vec![put("k", "from a")], 3).await.unwrap();
        // The writer reads its own write at once.
        assert_eq!(a.get("m", 1, "k").await.unwrap(), Some(b"from a".to_vec()));
        until_generations(&b, "m", gens(1, 3, None)).await;
        assert_eq!(b.get("m", 1, "k").await.unwrap(), Some(b"from a".to_vec()));
        // b takes over as the writer.
        b.sync("m").await.unwrap();
        b.commit("m", 1, vec![put("k", "from b"), put("j", "1")], 5)
            .await
            .unwrap();
        assert_eq!(b.begin_rebuild("m").await.unwrap(), 2);
        b.commit("m", 2, vec![put("n", "new")], 5).await.unwrap();
        until_generations(&a, "m", gens(1, 5, Some((2, 5)))).await;
        assert_eq!(a.get("m", 1, "k").await.unwrap(), Some(b"from b".to_vec()));
        b.activate("m", 2).await.unwrap();
        until_generations(&a, "m", gens(2, 5, None)).await;
        assert_eq!(a.get("m", 2, "n").await.unwrap(), Some(b"new".to_vec()));
        assert_eq!(a.get("m", 1, "k").await.unwrap(), None);
        let docs = a.scan("m", 2, "", None, 10).await.unwrap();
        assert_eq!(docs, b.scan("m", 2, "", None, 10).await.unwrap());
    });
}

#[test]
fn nats_a_stale_writer_is_refused_even_with_a_checkpoint_ahead() {
    nats_test(|f| async move {
        let a = f.open_node("a").await;
        let b = f.open_node("b").await;
        a.sync("m").await.unwrap();
        a.commit("m", 1, vec![put("k", "a1")], 1).await.unwrap();
        // b becomes the writer (a new leader) and commits events 2..=5.
        b.sync("m").await.unwrap();
        b.commit("m", 1, vec![put("k", "b5")], 5).await.unwrap();
        until_generations(&a, "m", gens(1, 5, None)).await;
        // a, deposed but unaware, commits a batch that ends past b's
        // checkpoint: it would double-apply events 2..=5, and is refused.
        for checkpoint in [3, 9] {
            let err = a
                .commit("m", 1, vec![put("k", "a-stale")], checkpoint)
                .await
                .unwrap_err();
            assert!(matches!(err, ReadModelError::Stale(_)), "{err}");
        }
        let err = a.begin_rebuild("m").await.unwrap_err();
        assert!(matches!(err, ReadModelError::Stale(_)), "{err}");
        // Nothing of a's reached the log: both nodes agree on b's state.
        b.commit("m", 1, vec![put("j", "b6")], 6).await.unwrap();
        until_generations(&a, "m", gens(1, 6, None)).await;
        for node in [&a, &b] {
            assert_eq!(node.get("m", 1, "k").await.unwrap(), Some(b"b5".to_vec()));
        }
        // b is now the stale one once a syncs again (a takes over).
        a.sync("m").await.unwrap();
        a.commit("m", 1, vec![put("k", "a7")], 7).await.unwrap();
        let err = b.commit("m", 1, vec![put("k", "b8")], 8).await.unwrap_err();
        assert!(matches!(err, ReadModelError::Stale(_)), "{err}");
        // Another model is fenced separately.
        b.commit("other", 1, vec![put("k", "b")], 1).await.unwrap();
    });
}

#[test]
fn nats_a_restart_rebuilds_the_cache_from_the_log_and_writes_again() {
    nats_test(|f| async move {
        {
            let a = f.open_node("a").await;
            a.sync("m").await.unwrap();
            for i in 1..=20u64 {
                a.commit("m", 1, vec![put(&format!("k{i:02}"), "v")], i * 2)
                    .await
                    .unwrap();
            }
            a.commit("m", 1, vec![("k01".into(), None)], 41)
                .await
                .unwrap();
            a.begin_rebuild("m").await.unwrap();
            a.commit("m", 2, vec![put("x", "y")], 10).await.unwrap();
        }
        // The cache file is there; a stale one must not be trusted: the
        // restart rebuilds it from the log.
        let a = f.open_node("a").await;
        assert_eq!(
            a.generations("m").await.unwrap(),
            gens(1, 41, Some((2, 10)))
        );
        let docs = a.scan("m", 1, "", None, 100).await.unwrap();
        assert_eq!(docs.len(), 19);
        assert_eq!(docs[0].key, "k02");
        // Without an explicit sync the first write takes the log's state.
        a.commit("m", 1, vec![put("k99", "v")], 42).await.unwrap();
        // A node started later has the same state.
        let c = f.open_node("c").await;
        assert_eq!(
            c.generations("m").await.unwrap(),
            gens(1, 42, Some((2, 10)))
        );
        assert_eq!(c.scan("m", 1, "", None, 100).await.unwrap().len(), 20);
    });
}

#[test]
fn nats_commits_larger_than_a_message_are_split_and_applied_atomically() {
    nats_test(|f| async move {
        let small = NatsReadModelsOptions {
            max_message_bytes: Some(64 * 1024),
            ..f.options("a")
        };
        let a = NatsReadModels::open(small).await.unwrap();
        let b = f.open_node("b").await;
        a.sync("m").await.unwrap();
        let doc = |i: usize| (format!("d{i:03}"), Some(vec![i as u8; 20_000]));
        a.commit("m", 1, (0..40).map(doc).collect(), 7)
            .await
            .unwrap();
        // 800 kB in 64 kB messages: many parts, then the commit.
        assert!(a.applied() >= 15, "only {} messages", a.applied());
        until_generations(&b, "m", gens(1, 7, None)).await;
        let docs = b.scan("m", 1, "", None, 100).await.unwrap();
        assert_eq!(docs.len(), 40);
        assert!(docs
            .iter()
            .enumerate()
            .all(|(i, d)| d.value == vec![i as u8; 20_000]));
        // Over the server's own max_payload (8 MB in the test servers):
        // 10 documents of 1 MiB, with the default message size.
        let big: Vec<Write> = (0..10)
            .map(|i| (format!("big{i}"), Some(vec![i as u8; MAX_VALUE_BYTES])))
            .collect();
        let b_writer = f.open_node("c").await;
        b_writer.sync("m").await.unwrap();
        b_writer.commit("m", 1, big, 8).await.unwrap();
        until_generations(&b, "m", gens(1, 8, None)).await;
        assert_eq!(
            b.get("m", 1, "big9").await.unwrap().map(|v| v.len()),
            Some(MAX_VALUE_BYTES)
        );
    });
}

#[test]
fn nats_parts_of_a_writer_that_died_before_its_commit_are_never_applied() {
    nats_test(|f| async move {
        let a = f.open_node("a").await;
        a.sync("m").await.unwrap();
        a.commit("m", 1, vec![put("k", "1")], 1).await.unwrap();
        // A writer publishes the first part of a commit, then dies.
        let url = f.server.as_ref().unwrap().url.clone();
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let writes: Vec<Write> = vec![put("k", "half")];
        let bytes = postcard::to_allocvec(&writes).unwrap();
        let part = Record {
            model: "m".into(),
            op: Op::Part {
                id: 42,
                chunk: bytes,
            },
        };
        js.publish("rm.m", postcard::to_allocvec(&part).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
        let b = f.open_node("b").await;
        assert_eq!(b.generations("m").await.unwrap(), gens(1, 1, None));
        assert_eq!(b.get("m", 1, "k").await.unwrap(), Some(b"1".to_vec()));
        // The next writer syncs past the orphan part and commits; the part
        // is dropped everywhere, never applied.
        b.sync("m").await.unwrap();
        b.commit("m", 1, vec![put("j", "2")], 2).await.unwrap();
        until_generations(&a, "m", gens(1, 2, None)).await;
        for node in [&a, &b] {
            assert_eq!(node.get("m", 1, "k").await.unwrap(), Some(b"1".to_vec()));
            assert_eq!(node.get("m", 1, "j").await.unwrap(), Some(b"2".to_vec()));
        }
    });
}

#[test]
fn nats_an_unreachable_server_is_a_clear_error() {
    let dir = scratch();
    let port = crate::testing::nats_server::free_port();
    let options = NatsReadModelsOptions::new(
        vec![format!("nats://127.0.0.1:{port}")],
        dir.0.join("c.redb"),
    );
    let err = rt()
        .block_on(NatsReadModels::open(options))
        .err()
        .expect("no server");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot connect to NATS at nats://127.0.0.1:{port}"
        )),
        "{text}"
    );
    let err = rt()
        .block_on(NatsReadModels::open(NatsReadModelsOptions::new(
            Vec::new(),
            dir.0.join("c.redb"),
        )))
        .err()
        .expect("no servers");
    assert_eq!(err.to_string(), "no NATS servers given");
}
