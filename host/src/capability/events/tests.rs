//! Tests of the event store semantics. The behavioural tests run against
//! both backends: the embedded store and NATS JetStream (each NATS test
//! starts its own `nats-server`; a missing binary fails the test, see
//! `scripts/nats-server`). A few tests are specific to one backend.

use super::embedded::EmbeddedEvents;
use super::nats::{NatsEvents, NatsEventsOptions};
use super::*;
use crate::testing::nats_server::NatsServer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn scratch() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ficus-events-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join("events.redb")
}

fn ev(id: &str, ty: &str, data: &str) -> NewEvent {
    NewEvent {
        id: id.into(),
        event_type: ty.into(),
        data: data.as_bytes().to_vec(),
        metadata: Vec::new(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn appends_read_back_in_stream_and_global_order(f: &Fixture) {
    let store = f.store.clone();
    let a = store
        .append(
            "order-1",
            Expected::NoStream,
            vec![ev("a1", "Placed", "{}"), ev("a2", "Paid", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(
        a,
        Appended {
            version: 2,
            position: 2
        }
    );
    let b = store
        .append("order-2", Expected::Any, vec![ev("b1", "Placed", "{}")])
        .await
        .unwrap();
    assert_eq!(
        b,
        Appended {
            version: 1,
            position: 3
        }
    );
    let c = store
        .append(
            "order-1",
            Expected::Exact(2),
            vec![ev("a3", "Shipped", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(
        c,
        Appended {
            version: 3,
            position: 4
        }
    );

    let fwd = store
        .read_stream("order-1", 1, 10, Direction::Forward)
        .await
        .unwrap();
    let versions: Vec<u64> = fwd.iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(fwd[2].event_type, "Shipped");
    assert_eq!(fwd[2].position, 4);
    let back = store
        .read_stream("order-1", 2, 10, Direction::Backward)
        .await
        .unwrap();
    let versions: Vec<u64> = back.iter().map(|e| e.version).collect();
    assert_eq!(versions, [2, 1]);
    let from2 = store
        .read_stream("order-1", 2, 1, Direction::Forward)
        .await
        .unwrap();
    assert_eq!(from2.len(), 1);
    assert_eq!(from2[0].id, "a2");
    assert!(store
        .read_stream("nope", 1, 10, Direction::Forward)
        .await
        .unwrap()
        .is_empty());

    let all = store.read_all(1, 100, &Filter::default()).await.unwrap();
    let order: Vec<(&str, u64)> = all
        .events
        .iter()
        .map(|e| (e.stream.as_str(), e.version))
        .collect();
    assert_eq!(
        order,
        [
            ("order-1", 1),
            ("order-1", 2),
            ("order-2", 1),
            ("order-1", 3)
        ]
    );
    assert_eq!(all.next, 5);
    let shipped = store
        .read_all(
            1,
            100,
            &Filter {
                stream_prefix: None,
                event_types: vec!["Placed".into()],
            },
        )
        .await
        .unwrap();
    assert_eq!(shipped.events.len(), 2);
    let prefix = store
        .read_all(
            1,
            100,
            &Filter {
                stream_prefix: Some("order-2".into()),
                event_types: vec![],
            },
        )
        .await
        .unwrap();
    assert_eq!(prefix.events.len(), 1);
    assert_eq!(store.head().await.unwrap(), 4);
    assert_eq!(store.stream_version("order-1").await.unwrap(), 3);
    assert_eq!(store.stream_version("order-3").await.unwrap(), 0);
}

async fn expected_versions_are_enforced_with_the_actual_version(f: &Fixture) {
    let store = f.store.clone();
    let wrong = |r: Result<Appended, EventsError>| match r {
        Err(EventsError::WrongExpectedVersion { actual, .. }) => actual,
        other => panic!("expected a wrong-expected-version error, got {other:?}"),
    };
    assert_eq!(
        wrong(
            store
                .append("s", Expected::Exists, vec![ev("1", "T", "")])
                .await
        ),
        0
    );
    assert_eq!(
        wrong(
            store
                .append("s", Expected::Exact(1), vec![ev("1", "T", "")])
                .await
        ),
        0
    );
    store
        .append("s", Expected::Exact(0), vec![ev("1", "T", "")])
        .await
        .unwrap();
    assert_eq!(
        wrong(
            store
                .append("s", Expected::NoStream, vec![ev("2", "T", "")])
                .await
        ),
        1
    );
    assert_eq!(
        wrong(
            store
                .append("s", Expected::Exact(0), vec![ev("2", "T", "")])
                .await
        ),
        1
    );
    assert_eq!(
        wrong(
            store
                .append("s", Expected::Exact(5), vec![ev("2", "T", "")])
                .await
        ),
        1
    );
    store
        .append("s", Expected::Exists, vec![ev("2", "T", "")])
        .await
        .unwrap();
    // Failed appends stored nothing.
    assert_eq!(store.head().await.unwrap(), 2);
    let err = store
        .append("s", Expected::Exact(1), vec![ev("3", "T", "")])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "wrong expected version: expected version 1, the stream is at version 2"
    );
}

async fn retried_appends_with_the_same_ids_do_not_duplicate(f: &Fixture) {
    let store = f.store.clone();
    store
        .append("s", Expected::NoStream, vec![ev("x0", "T", "0")])
        .await
        .unwrap();
    let batch = || vec![ev("x1", "T", "1"), ev("x2", "T", "2")];
    let first = store
        .append("s", Expected::Exact(1), batch())
        .await
        .unwrap();
    assert_eq!(
        first,
        Appended {
            version: 3,
            position: 3
        }
    );
    // The same append again (a client retry after a lost reply).
    for _ in 0..3 {
        assert_eq!(
            store
                .append("s", Expected::Exact(1), batch())
                .await
                .unwrap(),
            first
        );
        assert_eq!(
            store.append("s", Expected::Any, batch()).await.unwrap(),
            first
        );
    }
    assert_eq!(store.head().await.unwrap(), 3, "nothing duplicated");
    // The same ids with another expectation is an error.
    match store.append("s", Expected::NoStream, batch()).await {
        Err(EventsError::WrongExpectedVersion { actual: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Part of the ids, or the ids with other content, is an error too.
    for bad in [
        vec![ev("x1", "T", "1")],
        vec![ev("x1", "T", "changed"), ev("x2", "T", "2")],
    ] {
        match store.append("s", Expected::Any, bad.clone()).await {
            Err(EventsError::Invalid(msg)) => assert!(msg.contains("retried append"), "{msg}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // The same ids in another stream is an error.
    assert!(matches!(
        store.append("other", Expected::Any, batch()).await,
        Err(EventsError::Invalid(_))
    ));
    assert_eq!(store.head().await.unwrap(), 3);
    // Reusing ids other than an append's first: the embedded store
    // indexes every id and refuses; the NATS store deduplicates on the
    // first id only (Nats-Msg-Id) and stores such an append (documented
    // in nats.rs).
    let partial = [
        vec![ev("x2", "T", "2"), ev("x3", "T", "3")],
        vec![ev("x4", "T", "4"), ev("x1", "T", "1")],
    ];
    for bad in partial {
        let got = store.append("s", Expected::Any, bad.clone()).await;
        match f.kind {
            Kind::Embedded => match got {
                Err(EventsError::Invalid(msg)) => {
                    assert!(msg.contains("retried append"), "{msg}")
                }
                other => panic!("{bad:?}: {other:?}"),
            },
            Kind::Nats => assert!(got.is_ok(), "{bad:?}: {got:?}"),
        }
    }
}

async fn bad_input_gets_clear_errors(f: &Fixture) {
    let store = f.store.clone();
    let invalid = |r: Result<Appended, EventsError>| match r {
        Err(EventsError::Invalid(m)) => m,
        other => panic!("expected invalid, got {other:?}"),
    };
    assert!(invalid(
        store
            .append("", Expected::Any, vec![ev("1", "T", "")])
            .await
    )
    .contains("1 to 256"));
    assert!(invalid(
        store
            .append("$all", Expected::Any, vec![ev("1", "T", "")])
            .await
    )
    .contains("reserved"));
    assert!(invalid(
        store
            .append("a b", Expected::Any, vec![ev("1", "T", "")])
            .await
    )
    .contains("whitespace"));
    assert!(invalid(store.append("s", Expected::Any, vec![]).await).contains("at least one"));
    assert!(invalid(
        store
            .append("s", Expected::Any, vec![ev("", "T", "")])
            .await
    )
    .contains("events[0].id"));
    assert!(invalid(
        store
            .append("s", Expected::Any, vec![ev("1", "", "")])
            .await
    )
    .contains("events[0].type"));
    assert!(invalid(
        store
            .append("s", Expected::Any, vec![ev("1", "T", ""), ev("1", "T", "")])
            .await
    )
    .contains("appears twice"));
    let big = NewEvent {
        data: vec![0; MAX_EVENT_BYTES + 1],
        ..ev("1", "T", "")
    };
    assert!(matches!(
        store.append("s", Expected::Any, vec![big]).await,
        Err(EventsError::TooLarge(m)) if m.contains("events[0]")
    ));
    let many: Vec<NewEvent> = (0..5)
        .map(|i| NewEvent {
            data: vec![0; MAX_EVENT_BYTES - 10],
            ..ev(&i.to_string(), "T", "")
        })
        .collect();
    assert!(matches!(
        store.append("s", Expected::Any, many).await,
        Err(EventsError::TooLarge(_))
    ));
    assert!(store
        .read_stream("", 1, 1, Direction::Forward)
        .await
        .is_err());
    assert_eq!(store.head().await.unwrap(), 0);
}

async fn a_deleted_stream_takes_no_more_appends(f: &Fixture) {
    let store = f.store.clone();
    store
        .append("s", Expected::Any, vec![ev("1", "T", "")])
        .await
        .unwrap();
    assert!(matches!(
        store.delete_stream("s", Expected::Exact(7)).await,
        Err(EventsError::WrongExpectedVersion { actual: 1, .. })
    ));
    store.delete_stream("s", Expected::Exact(1)).await.unwrap();
    assert_eq!(
        store
            .append("s", Expected::Any, vec![ev("2", "T", "")])
            .await,
        Err(EventsError::StreamDeleted("s".into()))
    );
    // Its events stay in $all.
    assert_eq!(
        store
            .read_all(1, 10, &Filter::default())
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

#[test]
fn events_survive_a_reopen() {
    let path = scratch();
    rt().block_on(async {
        let store = EmbeddedEvents::open(&path).unwrap();
        store
            .append(
                "s",
                Expected::NoStream,
                vec![ev("1", "T", "one"), ev("2", "T", "two")],
            )
            .await
            .unwrap();
    });
    rt().block_on(async {
        let store = EmbeddedEvents::open(&path).unwrap();
        assert_eq!(store.head().await.unwrap(), 2);
        assert_eq!(store.stream_version("s").await.unwrap(), 2);
        // Idempotency survives too.
        assert_eq!(
            store
                .append(
                    "s",
                    Expected::NoStream,
                    vec![ev("1", "T", "one"), ev("2", "T", "two")]
                )
                .await
                .unwrap(),
            Appended {
                version: 2,
                position: 2
            }
        );
        let next = store
            .append("s", Expected::Exact(2), vec![ev("3", "T", "three")])
            .await
            .unwrap();
        assert_eq!(
            next,
            Appended {
                version: 3,
                position: 3
            }
        );
    });
}

#[test]
fn a_second_open_of_the_same_file_says_who_holds_it() {
    let path = scratch();
    let _first = EmbeddedEvents::open(&path).unwrap();
    let Err(err) = EmbeddedEvents::open(&path) else {
        panic!("a second open must fail");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("another ficus process") && msg.contains("events.redb"),
        "{msg}"
    );
}

/// N concurrent appenders with the same expected version: exactly one wins,
/// the others learn the actual version. Repeated over many rounds. On the
/// embedded store the appends of a round land in the same group commit as
/// often as not; on NATS the writers use separate connections (as separate
/// gateway nodes would), so the server's expected-sequence checks decide.
async fn concurrent_appenders_with_the_same_expectation_have_exactly_one_winner(f: &Fixture) {
    const WRITERS: usize = 8;
    let rounds: u64 = if f.kind == Kind::Nats { 25 } else { 40 };
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(f.client().await);
    }
    let started = std::time::Instant::now();
    let mut acknowledged = 0;
    let mut checked = 0;
    for round in 0..rounds {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = stores[w % stores.len()].clone();
                tokio::spawn(async move {
                    store
                        .append(
                            "contended",
                            Expected::Exact(round),
                            vec![ev(&format!("r{round}-w{w}"), "T", "")],
                        )
                        .await
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(a) => {
                    winners += 1;
                    acknowledged += 1;
                    assert_eq!(a.version, round + 1);
                }
                Err(EventsError::WrongExpectedVersion { actual, .. }) => {
                    assert_eq!(actual, round + 1, "the loser sees the winner's version");
                }
                Err(e) => panic!("{e}"),
            }
            checked += 1;
        }
        assert_eq!(winners, 1, "round {round}");
    }
    assert_eq!(f.store.stream_version("contended").await.unwrap(), rounds);
    assert_eq!(f.store.head().await.unwrap(), rounds);
    println!(
        "{:?}: {acknowledged} appends acknowledged, {checked} checked, exactly one winner in each \
         of {rounds} rounds, in {:?}",
        f.kind,
        started.elapsed()
    );
}

async fn a_subscription_catches_up_then_follows_live_appends_through_its_filter(f: &Fixture) {
    let store = f.store.clone();
    for i in 0..5 {
        store
            .append(
                &format!("order-{i}"),
                Expected::Any,
                vec![ev(&format!("o{i}"), "Placed", "")],
            )
            .await
            .unwrap();
        store
            .append(
                &format!("user-{i}"),
                Expected::Any,
                vec![ev(&format!("u{i}"), "Joined", "")],
            )
            .await
            .unwrap();
    }
    let filter = Filter {
        stream_prefix: Some("order-".into()),
        event_types: vec![],
    };
    let mut sub = Subscription::new(store.clone(), 3, filter);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(sub.next().await.unwrap().stream);
    }
    assert_eq!(seen, ["order-1", "order-2", "order-3", "order-4"]);
    // Live: a task appends later.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            store
                .append("user-9", Expected::Any, vec![ev("u9", "Joined", "")])
                .await
                .unwrap();
            store
                .append("order-9", Expected::Any, vec![ev("o9", "Placed", "")])
                .await
                .unwrap();
        })
    };
    let live = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("live event")
        .unwrap();
    assert_eq!((live.stream.as_str(), live.position), ("order-9", 12));
    writer.await.unwrap();
    assert_eq!(sub.cursor(), 13);
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        expected: Expected,
        events: usize,
    },
    Retry {
        of: usize,
    },
}

/// An attempted append: stream, expectation, events, outcome.
type Attempt = (
    usize,
    Expected,
    Vec<NewEvent>,
    Result<Appended, EventsError>,
);

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let expected = prop_oneof![
        Just(Expected::Any),
        Just(Expected::NoStream),
        Just(Expected::Exists),
        (0u64..4).prop_map(Expected::Exact),
    ];
    prop_oneof![
        4 => (0usize..3, expected, 1usize..4).prop_map(|(stream, expected, events)| Op::Append { stream, expected, events }),
        1 => (0usize..64).prop_map(|of| Op::Retry { of }),
    ]
}

/// Random sequences of appends and retries agree with a model of the rules
/// (versions, expectations, idempotency), and `$all` holds every successful
/// event exactly once in order. Each case gets a fresh store.
fn appends_agree_with_the_model(f: &Fixture, runtime: &tokio::runtime::Runtime) {
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            runtime.block_on(async {
                let store = f.fresh().await;
                model_check(&*store, ops).await;
            });
            Ok(())
        })
        .unwrap();
}

async fn model_check(store: &dyn EventStore, ops: Vec<Op>) {
    let mut versions: HashMap<usize, u64> = HashMap::new();
    let mut head = 0u64;
    // Every attempted append: (stream, expected, events, outcome).
    let mut history: Vec<Attempt> = Vec::new();
    let mut next_id = 0;
    for op in ops {
        match op {
            Op::Append {
                stream,
                expected,
                events,
            } => {
                let events: Vec<NewEvent> = (0..events)
                    .map(|_| {
                        next_id += 1;
                        ev(&format!("e{next_id}"), "T", &next_id.to_string())
                    })
                    .collect();
                let version = versions.get(&stream).copied().unwrap_or(0);
                let got = store
                    .append(&format!("s{stream}"), expected, events.clone())
                    .await;
                if expected.allows(version) {
                    let n = events.len() as u64;
                    head += n;
                    versions.insert(stream, version + n);
                    assert_eq!(
                        got.clone().unwrap(),
                        Appended {
                            version: version + n,
                            position: head
                        }
                    );
                } else {
                    assert_eq!(
                        got.clone().unwrap_err(),
                        EventsError::WrongExpectedVersion {
                            expected: expected.describe(),
                            actual: version
                        }
                    );
                }
                history.push((stream, expected, events, got));
            }
            Op::Retry { of } => {
                let Some((stream, expected, events, first)) =
                    history.get(of % history.len().max(1)).cloned()
                else {
                    continue;
                };
                let got = store.append(&format!("s{stream}"), expected, events).await;
                match first {
                    // A retry of a successful append returns the same result.
                    Ok(a) => assert_eq!(got.unwrap(), a),
                    // A retry of a refused one is judged afresh.
                    Err(_) => {
                        let version = versions.get(&stream).copied().unwrap_or(0);
                        if let Ok(a) = got {
                            assert!(expected.allows(version));
                            head = a.position;
                            versions.insert(stream, a.version);
                            let idx = of % history.len();
                            history[idx].3 = Ok(a);
                        }
                    }
                }
            }
        }
    }
    let all = store.read_all(1, 10_000, &Filter::default()).await.unwrap();
    assert_eq!(all.events.len() as u64, head);
    for (i, e) in all.events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1);
    }
    // Each stream reads back gapless, forwards and backwards.
    for (stream, version) in versions {
        let name = format!("s{stream}");
        let fwd = store
            .read_stream(&name, 1, 10_000, Direction::Forward)
            .await
            .unwrap();
        assert_eq!(
            fwd.iter().map(|e| e.version).collect::<Vec<_>>(),
            (1..=version).collect::<Vec<_>>()
        );
        let back = store
            .read_stream(&name, u64::MAX, 2, Direction::Backward)
            .await
            .unwrap();
        assert_eq!(
            back.iter().map(|e| e.version).collect::<Vec<_>>(),
            (1..=version).rev().take(2).collect::<Vec<_>>()
        );
    }
}

/// Stream names with characters NATS subjects forbid (`.`, `*`, `>`) or
/// that look alike once encoded stay separate streams.
async fn stream_names_with_subject_characters_stay_apart(f: &Fixture) {
    let store = f.store.clone();
    let names = [
        "a.b", "a*b", "a>b", "a%2Eb", "a_b", "a-b", "ä.ö", "x.>", "*", ">", "%",
    ];
    for (i, name) in names.iter().enumerate() {
        store
            .append(
                name,
                Expected::NoStream,
                vec![ev(&format!("n{i}"), "T", name)],
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (i, name) in names.iter().enumerate() {
        assert_eq!(store.stream_version(name).await.unwrap(), 1, "{name}");
        let events = store
            .read_stream(name, 1, 10, Direction::Forward)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{name}");
        assert_eq!(events[0].stream, *name);
        assert_eq!(events[0].id, format!("n{i}"));
    }
    assert_eq!(store.head().await.unwrap(), names.len() as u64);
}

/// Which backend a fixture runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embedded,
    Nats,
}

/// A store under test, and what keeps it alive.
struct Fixture {
    kind: Kind,
    store: Arc<dyn EventStore>,
    /// The NATS server (NATS only).
    server: Option<NatsServer>,
    options: Option<NatsEventsOptions>,
}

static NEXT_STREAM: AtomicUsize = AtomicUsize::new(0);

fn nats_options(server: &NatsServer) -> NatsEventsOptions {
    let n = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
    NatsEventsOptions {
        stream: format!("T{n}"),
        subject_prefix: format!("t{n}"),
        retry_for: Duration::from_secs(20),
        ..NatsEventsOptions::new(vec![server.url.clone()])
    }
}

impl Fixture {
    fn embedded() -> Fixture {
        Fixture {
            kind: Kind::Embedded,
            store: Arc::new(EmbeddedEvents::open(&scratch()).unwrap()),
            server: None,
            options: None,
        }
    }

    async fn nats() -> Fixture {
        let server = NatsServer::start();
        let options = nats_options(&server);
        let store = NatsEvents::open(options.clone()).await.unwrap();
        Fixture {
            kind: Kind::Nats,
            store: Arc::new(store),
            server: Some(server),
            options: Some(options),
        }
    }

    /// Another client of the same store: a new connection on NATS (as
    /// another gateway node), the same store when embedded.
    async fn client(&self) -> Arc<dyn EventStore> {
        match &self.options {
            Some(o) => Arc::new(NatsEvents::open(o.clone()).await.unwrap()),
            None => self.store.clone(),
        }
    }

    /// A new, empty store of the same kind.
    async fn fresh(&self) -> Arc<dyn EventStore> {
        match &self.server {
            Some(server) => Arc::new(NatsEvents::open(nats_options(server)).await.unwrap()),
            None => Arc::new(EmbeddedEvents::open(&scratch()).unwrap()),
        }
    }
}

/// Every behavioural test must finish within this.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_embedded {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let runtime = rt();
                    let f = Fixture::embedded();
                    runtime.block_on(async {
                        tokio::time::timeout(TEST_TIMEOUT, super::$name(&f))
                            .await
                            .expect("test timed out");
                    });
                }
            )*

            #[test]
            fn appends_agree_with_the_model() {
                super::appends_agree_with_the_model(&Fixture::embedded(), &rt());
            }
        }

        mod on_nats {
            use super::*;
            $(
                #[test]
                fn $name() {
                    let runtime = rt();
                    let f = runtime.block_on(Fixture::nats());
                    runtime.block_on(async {
                        tokio::time::timeout(TEST_TIMEOUT, super::$name(&f))
                            .await
                            .expect("test timed out");
                    });
                }
            )*

            #[test]
            fn appends_agree_with_the_model() {
                let runtime = rt();
                let f = runtime.block_on(Fixture::nats());
                super::appends_agree_with_the_model(&f, &runtime);
            }
        }
    };
}

on_both_backends!(
    appends_read_back_in_stream_and_global_order,
    expected_versions_are_enforced_with_the_actual_version,
    retried_appends_with_the_same_ids_do_not_duplicate,
    bad_input_gets_clear_errors,
    a_deleted_stream_takes_no_more_appends,
    concurrent_appenders_with_the_same_expectation_have_exactly_one_winner,
    a_subscription_catches_up_then_follows_live_appends_through_its_filter,
    stream_names_with_subject_characters_stay_apart,
);

/// NATS: acknowledged events survive a kill -9 of the server; a new client
/// sees them, and a retry within the duplicate window is still idempotent.
#[test]
fn nats_events_survive_a_server_kill_and_restart() {
    let runtime = rt();
    let mut f = runtime.block_on(Fixture::nats());
    let batch = || vec![ev("1", "T", "one"), ev("2", "T", "two")];
    runtime.block_on(async {
        f.store
            .append("s", Expected::NoStream, batch())
            .await
            .unwrap();
    });
    f.server.as_mut().unwrap().restart();
    runtime.block_on(async {
        let store = f.client().await;
        assert_eq!(store.head().await.unwrap(), 2);
        assert_eq!(store.stream_version("s").await.unwrap(), 2);
        assert_eq!(
            store
                .append("s", Expected::NoStream, batch())
                .await
                .unwrap(),
            Appended {
                version: 2,
                position: 2
            }
        );
        let next = store
            .append("s", Expected::Exact(2), vec![ev("3", "T", "three")])
            .await
            .unwrap();
        assert_eq!(
            next,
            Appended {
                version: 3,
                position: 3
            }
        );
        // The first client reconnects and carries on.
        let again = tokio::time::timeout(
            Duration::from_secs(30),
            f.store
                .append("s", Expected::Exact(3), vec![ev("4", "T", "four")]),
        )
        .await
        .expect("the old client reconnects")
        .unwrap();
        assert_eq!(again.position, 4);
    });
}

/// NATS: a reachable address with nothing listening fails to open with the
/// servers named.
#[test]
fn nats_open_names_the_servers_it_cannot_reach() {
    let port = crate::testing::nats_server::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let err = rt()
        .block_on(NatsEvents::open(NatsEventsOptions::new(vec![url.clone()])))
        .err()
        .expect("no server there");
    assert!(err.to_string().contains(&url), "{err}");
    let err = rt()
        .block_on(NatsEvents::open(NatsEventsOptions {
            replicas: 9,
            ..NatsEventsOptions::new(vec![url])
        }))
        .err()
        .expect("bad replicas");
    assert!(err.to_string().contains("replicas must be 1 to 5"), "{err}");
}

/// NATS, 3-node cluster, stream with 3 replicas: writers connected to
/// different nodes race with the same expected version; exactly one wins
/// each round, and every acknowledged event is read back in order.
#[test]
fn nats_cluster_with_three_replicas_has_exactly_one_winner_per_version() {
    const ROUNDS: u64 = 30;
    const WRITERS: usize = 6;
    let runtime = rt();
    let cluster = NatsServer::cluster(3);
    runtime.block_on(async {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let base = NatsEventsOptions {
                replicas: 3,
                ..nats_options(&cluster[0])
            };
            let mut stores: Vec<Arc<dyn EventStore>> = Vec::new();
            for node in &cluster {
                let options = NatsEventsOptions {
                    servers: vec![node.url.clone()],
                    ..base.clone()
                };
                stores.push(Arc::new(NatsEvents::open(options).await.unwrap()));
            }
            let started = std::time::Instant::now();
            let mut won = 0;
            for round in 0..ROUNDS {
                let tasks: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        let store = stores[w % stores.len()].clone();
                        tokio::spawn(async move {
                            store
                                .append(
                                    "contended",
                                    Expected::Exact(round),
                                    vec![ev(&format!("r{round}-w{w}"), "T", &w.to_string())],
                                )
                                .await
                        })
                    })
                    .collect();
                let mut winners = 0;
                for t in tasks {
                    match t.await.unwrap() {
                        Ok(a) => {
                            winners += 1;
                            assert_eq!(a.version, round + 1);
                        }
                        Err(EventsError::WrongExpectedVersion { actual, .. }) => {
                            assert_eq!(actual, round + 1)
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                assert_eq!(winners, 1, "round {round}");
                won += winners;
            }
            for store in &stores {
                assert_eq!(store.stream_version("contended").await.unwrap(), ROUNDS);
                let all = store.read_all(1, 1000, &Filter::default()).await.unwrap();
                let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
                assert_eq!(positions, (1..=ROUNDS).collect::<Vec<_>>());
            }
            // Retries of round 0 through another node: the winner gets its
            // original result, the losers (whose refused publishes the
            // cluster remembers as "duplicate of sequence 0") are refused.
            let first = stores[0]
                .read_stream("contended", 1, 1, Direction::Forward)
                .await
                .unwrap()
                .remove(0);
            for w in 0..WRITERS {
                let store = &stores[(w + 1) % stores.len()];
                let got = store
                    .append(
                        "contended",
                        Expected::Exact(0),
                        vec![ev(&format!("r0-w{w}"), "T", &w.to_string())],
                    )
                    .await;
                if first.id == format!("r0-w{w}") {
                    assert_eq!(
                        got.unwrap(),
                        Appended {
                            version: 1,
                            position: 1
                        }
                    );
                } else {
                    assert!(
                        matches!(got, Err(EventsError::WrongExpectedVersion { actual, .. }) if actual == ROUNDS),
                        "{got:?}"
                    );
                }
            }
            // Writers on different streams through different nodes: every
            // append succeeds (conflicts on the global order are retried),
            // positions stay unique and gapless.
            let tasks: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let store = stores[w % stores.len()].clone();
                    tokio::spawn(async move {
                        let mut positions = Vec::new();
                        for i in 0..10 {
                            let a = store
                                .append(
                                    &format!("own-{w}"),
                                    Expected::Exact(i * 2),
                                    vec![ev(&format!("own-{w}-{i}"), "T", ""), ev(&format!("own-{w}-{i}b"), "T", "")],
                                )
                                .await
                                .unwrap();
                            assert_eq!(a.version, i * 2 + 2);
                            positions.push(a.position);
                        }
                        positions
                    })
                })
                .collect();
            let mut acked = Vec::new();
            for t in tasks {
                acked.extend(t.await.unwrap());
            }
            acked.sort_unstable();
            acked.dedup();
            assert_eq!(acked.len(), WRITERS * 10, "unique positions");
            let all = stores[2].read_all(1, 1000, &Filter::default()).await.unwrap();
            let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
            let total = ROUNDS + WRITERS as u64 * 20;
            assert_eq!(positions, (1..=total).collect::<Vec<_>>());
            println!(
                "3-node cluster, R3: {won} winners in {ROUNDS} rounds of {WRITERS} writers on 3 \
                 nodes (exactly one per round), {:?}",
                started.elapsed()
            );
        })
        .await
        .expect("test timed out");
    });
}

#[test]
fn replicas_need_nats_server_2_10_8() {
    use super::nats::safe_with_replicas;
    for ok in ["2.10.8", "2.10.27", "2.11.0", "v2.12.1", "3.0.0-beta"] {
        assert!(safe_with_replicas(ok), "{ok}");
    }
    for old in ["2.9.10", "2.9.21", "2.10.7", "2.10", "1.4.1", "", "junk"] {
        assert!(!safe_with_replicas(old), "{old}");
    }
}

#[test]
fn subject_tokens_are_safe_and_distinct() {
    use super::nats::subject_token;
    assert_eq!(subject_token("order-1_a"), "order-1_a");
    assert_eq!(subject_token("a.b"), "a%2Eb");
    assert_eq!(subject_token("a%2Eb"), "a%252Eb");
    assert_eq!(subject_token("*>"), "%2A%3E");
    assert_eq!(subject_token("ä"), "%C3%A4");
}

/// NATS, 3-node cluster, R3: kill -9 the stream leader's node while a writer appends
/// through a client that knows every node. Appends during the failover gap
/// are retried within the bound (or fail as unavailable, never half-done);
/// afterwards every acknowledged event is there exactly once, in order.
#[test]
fn nats_cluster_keeps_acknowledged_events_across_a_node_kill() {
    let runtime = rt();
    let mut cluster = NatsServer::cluster(3);
    let urls: Vec<String> = cluster.iter().map(|s| s.url.clone()).collect();
    let options = NatsEventsOptions {
        replicas: 3,
        servers: urls,
        ..nats_options(&cluster[0])
    };
    let store: Arc<dyn EventStore> =
        Arc::new(runtime.block_on(NatsEvents::open(options.clone())).unwrap());
    let writer = {
        let store = store.clone();
        runtime.spawn(async move {
            let mut acked = Vec::new();
            let mut unavailable = 0;
            let mut version = 0;
            let started = std::time::Instant::now();
            let mut slowest = Duration::ZERO;
            for i in 0..300u64 {
                let t0 = std::time::Instant::now();
                match store
                    .append(
                        "s",
                        Expected::Exact(version),
                        vec![ev(&format!("k{i}"), "T", "")],
                    )
                    .await
                {
                    Ok(a) => {
                        version = a.version;
                        acked.push(a);
                    }
                    Err(EventsError::Unavailable(_)) => {
                        unavailable += 1;
                        version = store.stream_version("s").await.unwrap_or(version);
                    }
                    Err(e) => panic!("append {i}: {e}"),
                }
                slowest = slowest.max(t0.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, unavailable, slowest, started.elapsed())
        })
    };
    // Kill the stream's leader.
    let leader = runtime.block_on(async {
        let client = async_nats::connect(&cluster[1].url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let info = js
            .get_stream(&options.stream)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        info.cluster
            .and_then(|c| c.leader)
            .expect("a stream leader")
    });
    let index: usize = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    std::thread::sleep(Duration::from_millis(400));
    cluster[index].kill();
    let (acked, unavailable, slowest, took) = runtime
        .block_on(async { tokio::time::timeout(TEST_TIMEOUT, writer).await })
        .expect("writer timed out")
        .unwrap();
    runtime.block_on(async {
        let events = store
            .read_stream("s", 1, 10_000, Direction::Forward)
            .await
            .unwrap();
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), events.len(), "no duplicates");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1);
        }
        for a in &acked {
            assert_eq!(events[a.version as usize - 1].position, a.position);
        }
        println!(
            "stream leader {leader} killed in an R3 cluster: {} appends acknowledged, {unavailable} unavailable, \
             {} stored, slowest append {slowest:?}, {took:?} in all",
            acked.len(),
            events.len()
        );
    });
}
