//! Tests of the state machine with an in-memory store and a virtual clock
//! (nothing sleeps): examples of every transition, then property tests
//! against a reference model, then threads racing on one record.

use super::*;
use proptest::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// An in-memory [`Store`] with revisions, like the host's embedded backend.
#[derive(Default)]
struct MemStore {
    map: Mutex<HashMap<String, (Vec<u8>, u64)>>,
    revision: AtomicU64,
    /// Last TTL written.
    ttl: Mutex<Option<u64>>,
    /// Yield between operations, to make threads interleave.
    yield_now: AtomicBool,
    cas_conflicts: AtomicUsize,
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        if self.yield_now.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let map = self.map.lock().unwrap();
        Ok(map.get(key).map(|(value, revision)| Stored {
            value: value.clone(),
            revision: *revision,
        }))
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        if self.yield_now.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let mut map = self.map.lock().unwrap();
        if map.get(key).map(|(_, r)| *r) != expected {
            self.cas_conflicts.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let revision = self.revision.fetch_add(1, Ordering::Relaxed) + 1;
        map.insert(key.to_owned(), (value.to_vec(), revision));
        *self.ttl.lock().unwrap() = ttl_ms;
        Ok(Some(revision))
    }
}

/// A store whose compare-and-set always loses (another writer always wins).
struct LosingStore;

impl Store for LosingStore {
    fn get(&self, _key: &str) -> Result<Option<Stored>, StoreError> {
        Ok(None)
    }
    fn compare_and_set(
        &self,
        _: &str,
        _: Option<u64>,
        _: &[u8],
        _: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

/// A store that is down.
struct DownStore;

impl Store for DownStore {
    fn get(&self, _key: &str) -> Result<Option<Stored>, StoreError> {
        Err(StoreError("unavailable".into()))
    }
    fn compare_and_set(
        &self,
        _: &str,
        _: Option<u64>,
        _: &[u8],
        _: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        Err(StoreError("unavailable".into()))
    }
}

/// A clock the test moves by hand.
struct VirtualClock(AtomicU64);

impl VirtualClock {
    fn at(ms: u64) -> VirtualClock {
        VirtualClock(AtomicU64::new(ms))
    }
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

const KEY: &str = "cb/route/test";
const T0: u64 = 1_700_000_000_000;

fn count_settings(size: u32, min: u32) -> Settings {
    Settings {
        window_size: size,
        minimum_calls: min,
        wait_in_open_ms: 10_000,
        max_wait_in_open_ms: 10_000,
        permitted_calls_in_half_open: 3,
        max_wait_in_half_open_ms: 0,
        ..Settings::default()
    }
}

const S: Outcome = Outcome::Success;
const F: Outcome = Outcome::Failure;
const SS: Outcome = Outcome::SlowSuccess;

/// Acquire and, when permitted, record `outcome`; returns the record result.
fn call<St: Store, C: Clock>(m: &Machine<'_, St, C>, outcome: Outcome) -> Option<Recorded> {
    match m.acquire(KEY).unwrap().decision {
        Decision::Permitted(p) => Some(m.record(KEY, p, outcome).unwrap()),
        Decision::Rejected { .. } => None,
    }
}

fn permit(m: &Machine<'_, impl Store, impl Clock>) -> Permit {
    match m.acquire(KEY).unwrap().decision {
        Decision::Permitted(p) => p,
        d => panic!("expected a permit, got {d:?}"),
    }
}

fn state(m: &Machine<'_, impl Store, impl Clock>) -> State {
    m.snapshot(KEY).unwrap().map_or(State::Closed, |s| s.state)
}

/// Trip a count-based breaker open with failures.
fn trip(m: &Machine<'_, impl Store, impl Clock>, calls: u32) {
    for _ in 0..calls {
        call(m, F);
    }
    assert_eq!(state(m), State::Open);
}

// ---------------------------------------------------------------------------
// Examples.

#[test]
fn defaults_are_resilience4j_s() {
    let d = Settings::default();
    assert_eq!(d.failure_rate_threshold, 0.5);
    assert_eq!(d.window, WindowKind::Count);
    assert_eq!(d.window_size, 100);
    assert_eq!(d.minimum_calls, 100);
    assert_eq!(d.wait_in_open_ms, 60_000);
    assert_eq!(d.permitted_calls_in_half_open, 10);
    assert_eq!(d.slow_call_rate_threshold, 1.0);
    assert_eq!(d.slow_call_duration_ms, 60_000);
    assert_eq!(d.validate(), Ok(()));
    let p = Policy::default();
    assert!(p.failure_statuses.contains(500) && p.failure_statuses.contains(599));
    assert!(!p.failure_statuses.contains(404));
    assert!(ErrorKind::ALL.iter().all(|k| p.counts_error(*k)));
}

#[test]
fn opens_exactly_at_the_failure_rate_threshold() {
    let s = count_settings(10, 10);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for _ in 0..5 {
        call(&m, S);
    }
    for _ in 0..4 {
        call(&m, F);
    }
    assert_eq!(state(&m), State::Closed, "9 calls: below minimum_calls");
    let r = call(&m, F).unwrap();
    let t = r
        .transition
        .expect("the 10th call trips: 5 of 10 failed = 50 %");
    assert_eq!((t.from, t.to), (State::Closed, State::Open));
    assert_eq!(
        t.reason,
        Reason::FailureRate(Counts {
            calls: 10,
            failures: 5,
            slow: 0
        })
    );
    assert_eq!(
        t.to_string(),
        "closed -> open (failure rate 50% (5 of 10 calls))"
    );
}

#[test]
fn below_the_threshold_stays_closed() {
    let s = count_settings(10, 10);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for i in 0..100 {
        // 4 failures in every 10 calls: 40 %.
        call(&m, if i % 10 < 4 { F } else { S });
        assert_eq!(state(&m), State::Closed);
    }
    let snap = m.snapshot(KEY).unwrap().unwrap();
    assert_eq!(snap.window.calls, 10, "the window holds the last 10 calls");
    assert_eq!(snap.window.failures, 4);
}

#[test]
fn minimum_calls_gate_every_decision() {
    let s = count_settings(100, 20);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for _ in 0..19 {
        call(&m, F);
    }
    assert_eq!(state(&m), State::Closed, "19 failures < minimum_calls 20");
    call(&m, F);
    assert_eq!(state(&m), State::Open);
}

#[test]
fn minimum_calls_above_the_count_window_is_capped_at_its_size() {
    let s = count_settings(5, 100);
    assert_eq!(s.effective_minimum_calls(), 5);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 5);
}

#[test]
fn the_count_window_slides() {
    // Window 4, trip at 75 %: F F S S S S F F F -> the last 4 are S F F F.
    let s = Settings {
        failure_rate_threshold: 0.75,
        ..count_settings(4, 4)
    };
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for o in [F, F, S, S, S, S, F, F] {
        call(&m, o);
        assert_eq!(state(&m), State::Closed);
    }
    let snap = m.snapshot(KEY).unwrap().unwrap();
    assert_eq!((snap.window.calls, snap.window.failures), (4, 2));
    let t = call(&m, F).unwrap().transition.unwrap();
    assert_eq!(
        t.reason,
        Reason::FailureRate(Counts {
            calls: 4,
            failures: 3,
            slow: 0
        })
    );
}

#[test]
fn slow_calls_trip_on_the_slow_call_rate() {
    let s = Settings {
        slow_call_rate_threshold: 0.5,
        ..count_settings(4, 4)
    };
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for o in [S, SS, S] {
        call(&m, o);
    }
    let t = call(&m, Outcome::SlowSuccess).unwrap().transition.unwrap();
    assert_eq!(
        t.reason,
        Reason::SlowCallRate(Counts {
            calls: 4,
            failures: 0,
            slow: 2
        })
    );
    assert!(t.to_string().contains("slow-call rate 50%"), "{t}");
}

#[test]
fn open_rejects_until_the_wait_is_over_then_half_opens() {
    let s = count_settings(4, 4);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    let a = m.acquire(KEY).unwrap();
    assert_eq!(
        a.decision,
        Decision::Rejected {
            retry_after_ms: 10_000
        }
    );
    clock.advance(9_999);
    assert_eq!(
        m.acquire(KEY).unwrap().decision,
        Decision::Rejected { retry_after_ms: 1 }
    );
    clock.advance(1);
    let a = m.acquire(KEY).unwrap();
    assert!(matches!(
        a.decision,
        Decision::Permitted(Permit { probe: true, .. })
    ));
    assert_eq!(a.state, State::HalfOpen);
    let t = a.transition.unwrap();
    assert_eq!((t.from, t.to), (State::Open, State::HalfOpen));
    assert_eq!(t.reason, Reason::WaitElapsed { waited_ms: 10_000 });
}

#[test]
fn half_open_lets_exactly_the_permitted_probes_through_and_closes() {
    let s = count_settings(4, 4);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    clock.advance(10_000);
    let probes: Vec<Permit> = (0..3).map(|_| permit(&m)).collect();
    for _ in 0..5 {
        assert_eq!(
            m.acquire(KEY).unwrap().decision,
            Decision::Rejected {
                retry_after_ms: 1000
            },
            "a 4th concurrent probe is rejected"
        );
    }
    assert!(m.record(KEY, probes[0], S).unwrap().transition.is_none());
    assert!(m.record(KEY, probes[1], S).unwrap().transition.is_none());
    // Completed probes do not free their slot: still only 3 per half-open.
    assert!(matches!(
        m.acquire(KEY).unwrap().decision,
        Decision::Rejected { .. }
    ));
    let t = m.record(KEY, probes[2], F).unwrap().transition.unwrap();
    assert_eq!((t.from, t.to), (State::HalfOpen, State::Closed));
    assert_eq!(
        t.reason,
        Reason::ProbesPassed(Counts {
            calls: 3,
            failures: 1,
            slow: 0
        })
    );
    let snap = m.snapshot(KEY).unwrap().unwrap();
    assert_eq!(
        snap.window,
        Counts::default(),
        "closing starts a new window"
    );
    assert_eq!(snap.opens, 0);
}

#[test]
fn failing_probes_reopen_with_backoff() {
    let s = Settings {
        wait_in_open_multiplier: 2.0,
        max_wait_in_open_ms: 35_000,
        ..count_settings(4, 4)
    };
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    let mut waits = Vec::new();
    for _ in 0..4 {
        let snap = m.snapshot(KEY).unwrap().unwrap();
        waits.push(snap.open_wait_ms);
        clock.advance(snap.open_wait_ms);
        let probes: Vec<Permit> = (0..3).map(|_| permit(&m)).collect();
        m.record(KEY, probes[0], F).unwrap();
        m.record(KEY, probes[1], F).unwrap();
        let t = m.record(KEY, probes[2], S).unwrap().transition.unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert!(matches!(t.reason, Reason::ProbesFailed(_)));
    }
    assert_eq!(waits, vec![10_000, 20_000, 35_000, 35_000]);
}

#[test]
fn slow_probes_reopen() {
    let s = Settings {
        slow_call_rate_threshold: 0.6,
        ..count_settings(4, 4)
    };
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    clock.advance(10_000);
    let probes: Vec<Permit> = (0..3).map(|_| permit(&m)).collect();
    m.record(KEY, probes[0], SS).unwrap();
    m.record(KEY, probes[1], SS).unwrap();
    let t = m.record(KEY, probes[2], S).unwrap().transition.unwrap();
    assert_eq!(t.to, State::Open);
    assert!(matches!(t.reason, Reason::ProbesSlow(_)));
}

#[test]
fn an_ignored_probe_releases_its_permit() {
    let s = count_settings(4, 4);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    clock.advance(10_000);
    let probes: Vec<Permit> = (0..3).map(|_| permit(&m)).collect();
    assert!(matches!(
        m.acquire(KEY).unwrap().decision,
        Decision::Rejected { .. }
    ));
    let r = m.record(KEY, probes[0], Outcome::Ignored).unwrap();
    assert!(r.applied && r.transition.is_none());
    let again = permit(&m);
    assert!(again.probe);
    assert_eq!(m.snapshot(KEY).unwrap().unwrap().probes_issued, 3);
}

#[test]
fn half_open_too_long_reopens() {
    let s = Settings {
        max_wait_in_half_open_ms: 5_000,
        ..count_settings(4, 4)
    };
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    clock.advance(10_000);
    let lost = permit(&m); // its response never comes back
    clock.advance(4_999);
    let _ = permit(&m);
    clock.advance(1);
    let a = m.acquire(KEY).unwrap();
    assert_eq!(a.state, State::Open);
    assert_eq!(
        a.transition.unwrap().reason,
        Reason::HalfOpenTimeout { waited_ms: 5_000 }
    );
    // The late probe is stale now.
    let r = m.record(KEY, lost, S).unwrap();
    assert!(!r.applied);
    assert_eq!(r.state, Some(State::Open));
}

#[test]
fn outcomes_of_an_earlier_epoch_are_dropped() {
    let s = count_settings(4, 4);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    let slow_call = permit(&m);
    trip(&m, 4);
    let r = m.record(KEY, slow_call, F).unwrap();
    assert!(!r.applied, "admitted while closed, reported while open");
    // And a closed permit from before the trip is stale after recovery too.
    clock.advance(10_000);
    for p in (0..3).map(|_| permit(&m)).collect::<Vec<_>>() {
        m.record(KEY, p, S).unwrap();
    }
    assert_eq!(state(&m), State::Closed);
    assert!(!m.record(KEY, slow_call, F).unwrap().applied);
    assert_eq!(m.snapshot(KEY).unwrap().unwrap().window.calls, 0);
}

#[test]
fn ignored_outcomes_are_not_recorded_while_closed() {
    let s = count_settings(4, 4);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for _ in 0..10 {
        let r = call(&m, Outcome::Ignored).unwrap();
        assert!(!r.applied);
    }
    assert_eq!(m.snapshot(KEY).unwrap(), None, "nothing was written");
}

#[test]
fn the_time_window_forgets_old_seconds() {
    let s = Settings {
        window: WindowKind::Time,
        window_size: 10,
        minimum_calls: 6,
        ..count_settings(10, 6)
    };
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for _ in 0..5 {
        call(&m, F);
    }
    assert_eq!(m.snapshot(KEY).unwrap().unwrap().window.calls, 5);
    clock.advance(9_999);
    assert_eq!(
        m.snapshot(KEY).unwrap().unwrap().window.calls,
        5,
        "still within 10 s"
    );
    clock.advance(1);
    assert_eq!(m.snapshot(KEY).unwrap().unwrap().window.calls, 0);
    // The five old failures no longer count: 1 failure + 5 successes.
    call(&m, F);
    for _ in 0..5 {
        call(&m, S);
    }
    assert_eq!(state(&m), State::Closed);
    let snap = m.snapshot(KEY).unwrap().unwrap();
    assert_eq!((snap.window.calls, snap.window.failures), (6, 1));
}

#[test]
fn the_time_window_trips_over_several_seconds() {
    let s = Settings {
        window: WindowKind::Time,
        window_size: 5,
        minimum_calls: 4,
        ..count_settings(5, 4)
    };
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    let m = Machine::new(&s, &store, &clock);
    for o in [F, S, F] {
        call(&m, o);
        clock.advance(1_000);
    }
    let t = call(&m, S).unwrap().transition.unwrap();
    assert_eq!(
        t.reason,
        Reason::FailureRate(Counts {
            calls: 4,
            failures: 2,
            slow: 0
        })
    );
}

#[test]
fn a_changed_window_setting_starts_a_new_window() {
    let s = count_settings(10, 10);
    let (store, clock) = (MemStore::default(), VirtualClock::at(T0));
    for _ in 0..8 {
        call(&Machine::new(&s, &store, &clock), F);
    }
    let s2 = count_settings(20, 10);
    let m2 = Machine::new(&s2, &store, &clock);
    assert_eq!(m2.snapshot(KEY).unwrap().unwrap().window.calls, 0);
    call(&m2, F);
    assert_eq!(m2.snapshot(KEY).unwrap().unwrap().window.calls, 1);
}

#[test]
fn records_round_trip_and_garbage_is_replaced() {
    let s = Settings {
        window: WindowKind::Time,
        window_size: 30,
        ..count_settings(30, 5)
    };
    let store = MemStore::default();
    let clock = VirtualClock::at(T0);
    let m = Machine::new(&s, &store, &clock);
    for i in 0..4 {
        call(&m, if i % 2 == 0 { F } else { SS });
        clock.advance(1_500);
    }
    let (bytes, _) = store.map.lock().unwrap()[KEY].clone();
    let record = Record::decode(&bytes).unwrap();
    assert_eq!(record.encode(), bytes);
    assert_eq!(Record::decode(&bytes[..bytes.len() - 1]), None);
    assert_eq!(Record::decode(b"not a record"), None);
    let mut count = Record::new(&count_settings(7, 7), T0);
    count.window.push(T0, F);
    count.window.push(T0, SS);
    assert_eq!(Record::decode(&count.encode()), Some(count));

    store
        .map
        .lock()
        .unwrap()
        .insert(KEY.into(), (b"garbage".to_vec(), 999));
    assert_eq!(m.snapshot(KEY).unwrap(), None);
    call(&m, F);
    assert_eq!(m.snapshot(KEY).unwrap().unwrap().window.calls, 1);
}

#[test]
fn every_write_has_a_ttl_that_outlives_the_waits() {
    let s = Settings {
        state_ttl_ms: 1_000,
        ..count_settings(4, 4)
    };
    let store = MemStore::default();
    let clock = VirtualClock::at(T0);
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    let ttl = store.ttl.lock().unwrap().unwrap();
    assert!(ttl >= 10_000 + 60_000, "{ttl}");
    let never = Settings {
        state_ttl_ms: 0,
        ..count_settings(4, 4)
    };
    let store = MemStore::default();
    call(&Machine::new(&never, &store, &clock), S);
    assert_eq!(*store.ttl.lock().unwrap(), None);
}

#[test]
fn compare_and_set_gives_up_under_endless_contention() {
    let s = count_settings(4, 4);
    let clock = VirtualClock::at(T0);
    let m = Machine::new(&s, &LosingStore, &clock);
    let p = Permit {
        epoch: 0,
        probe: false,
    };
    let err = m.record(KEY, p, F).unwrap_err();
    assert!(err.0.contains("compare-and-set"), "{err}");
    let down = Machine::new(&s, &DownStore, &clock);
    assert_eq!(
        down.acquire(KEY).unwrap_err(),
        StoreError("unavailable".into())
    );
}

#[test]
fn permits_round_trip_through_the_request_context() {
    for p in [
        Permit {
            epoch: 0,
            probe: false,
        },
        Permit {
            epoch: u64::MAX,
            probe: true,
        },
    ] {
        assert_eq!(Permit::decode(&p.encode()), Some(p));
    }
    for bad in ["", "c", "x:1", "c:-1", "p:1:2", "c:"] {
        assert_eq!(Permit::decode(bad), None, "{bad:?}");
    }
    assert_eq!(retry_after_secs(0), 1);
    assert_eq!(retry_after_secs(1), 1);
    assert_eq!(retry_after_secs(1000), 1);
    assert_eq!(retry_after_secs(1001), 2);
    assert_eq!(retry_after_secs(60_000), 60);
}

#[test]
fn classification() {
    let mut p = Policy::new(100);
    let at = |status, error, latency_us, local| Attempt {
        status,
        error,
        latency_us,
        local,
    };
    assert_eq!(p.classify(&at(200, None, 10, false)), S);
    assert_eq!(p.classify(&at(404, None, 10, false)), S);
    assert_eq!(p.classify(&at(500, None, 10, false)), F);
    assert_eq!(
        p.classify(&at(503, None, 100_000, false)),
        F,
        "= threshold: not slow"
    );
    assert_eq!(
        p.classify(&at(503, None, 100_001, false)),
        Outcome::SlowFailure
    );
    assert_eq!(p.classify(&at(200, None, 100_001, false)), SS);
    assert_eq!(
        p.classify(&at(503, None, 10, true)),
        Outcome::Ignored,
        "local"
    );
    assert_eq!(p.classify(&at(504, Some(ErrorKind::Timeout), 10, false)), F);
    p.failure_statuses = StatusSet::from_ranges(vec![(429, 429), (502, 504)]);
    p.ignore_statuses = StatusSet::from_ranges(vec![(503, 503)]);
    p.set_failure_errors(&[ErrorKind::ConnectFailed]);
    assert_eq!(p.classify(&at(429, None, 10, false)), F);
    assert_eq!(p.classify(&at(500, None, 10, false)), S);
    assert_eq!(p.classify(&at(503, None, 10, false)), Outcome::Ignored);
    assert_eq!(
        p.classify(&at(502, Some(ErrorKind::ConnectFailed), 10, false)),
        F
    );
    assert_eq!(
        p.classify(&at(504, Some(ErrorKind::Timeout), 10, false)),
        Outcome::Ignored,
        "unlisted error kinds are ignored"
    );
    assert_eq!(
        p.classify(&at(503, Some(ErrorKind::ConnectFailed), 10, false)),
        F,
        "the error kind decides, not the gateway's status"
    );
}

#[test]
fn status_rules() {
    assert_eq!(StatusSet::parse_rule("5xx"), Ok((500, 599)));
    assert_eq!(StatusSet::parse_rule("4XX"), Ok((400, 499)));
    assert_eq!(StatusSet::parse_rule("503"), Ok((503, 503)));
    assert_eq!(StatusSet::parse_rule("500-504"), Ok((500, 504)));
    for bad in [
        "6xx", "0xx", "5x", "xx", "99", "600", "504-500", "5xx-6xx", "server", "",
    ] {
        let err = StatusSet::parse_rule(bad).unwrap_err();
        assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
    }
    assert!(StatusSet::parse_rule("6xx")
        .unwrap_err()
        .contains("not a status class"));
    assert_eq!(
        ErrorKind::parse("connect-failed"),
        Some(ErrorKind::ConnectFailed)
    );
    assert_eq!(ErrorKind::parse("connect_failed"), None);
    for k in ErrorKind::ALL {
        assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
    }
}

#[test]
fn bad_settings_are_rejected_naming_the_key() {
    let ok = Settings::default();
    let cases: Vec<(Settings, &str)> = vec![
        (
            Settings {
                failure_rate_threshold: -0.1,
                ..ok.clone()
            },
            "config.failure_rate_threshold: -0.1 is not a rate in (0, 1]",
        ),
        (
            Settings {
                failure_rate_threshold: 50.0,
                ..ok.clone()
            },
            "config.failure_rate_threshold: 50 is not a rate in (0, 1]",
        ),
        (
            Settings {
                failure_rate_threshold: 0.0,
                ..ok.clone()
            },
            "config.failure_rate_threshold: 0 is not a rate",
        ),
        (
            Settings {
                slow_call_rate_threshold: 1.01,
                ..ok.clone()
            },
            "config.slow_call_rate_threshold: 1.01 is not a rate",
        ),
        (
            Settings {
                slow_call_rate_threshold: f64::NAN,
                ..ok.clone()
            },
            "config.slow_call_rate_threshold: NaN is not a rate",
        ),
        (
            Settings {
                window_size: 0,
                ..ok.clone()
            },
            "config.sliding_window_size: 0 is out of range: 1..=10000 calls",
        ),
        (
            Settings {
                window: WindowKind::Time,
                window_size: 601,
                ..ok.clone()
            },
            "config.sliding_window_size: 601 is out of range: 1..=600 seconds",
        ),
        (
            Settings {
                minimum_calls: 0,
                ..ok.clone()
            },
            "config.minimum_calls: must be at least 1",
        ),
        (
            Settings {
                wait_in_open_ms: 0,
                max_wait_in_open_ms: 0,
                ..ok.clone()
            },
            "config.wait_in_open_ms: must be at least 1",
        ),
        (
            Settings {
                wait_in_open_multiplier: 0.5,
                ..ok.clone()
            },
            "config.wait_in_open_multiplier: 0.5 must be a number ≥ 1",
        ),
        (
            Settings {
                max_wait_in_open_ms: 10,
                ..ok.clone()
            },
            "config.max_wait_in_open_ms: 10 is below wait_in_open_ms (60000)",
        ),
        (
            Settings {
                permitted_calls_in_half_open: 0,
                ..ok.clone()
            },
            "config.permitted_calls_in_half_open: 0 is out of range",
        ),
    ];
    for (settings, want) in cases {
        let err = settings.validate().unwrap_err();
        assert!(err.starts_with(want), "want {want:?}, got {err:?}");
    }
}

// ---------------------------------------------------------------------------
// The reference model: the specification written as plainly as possible (a
// list of every recorded call, no bit packing, no buckets, no store).

#[derive(Debug, Clone)]
struct Model {
    s: Settings,
    exists: bool,
    state: State,
    epoch: u64,
    since: u64,
    opens: u32,
    open_wait: u64,
    /// Every call recorded in the current closed state: (time, failed, slow).
    calls: Vec<(u64, bool, bool)>,
    issued: u32,
    probes: Counts,
}

impl Model {
    fn new(s: &Settings) -> Model {
        Model {
            s: s.clone(),
            exists: false,
            state: State::Closed,
            epoch: 0,
            since: 0,
            opens: 0,
            open_wait: 0,
            calls: Vec::new(),
            issued: 0,
            probes: Counts::default(),
        }
    }

    fn window(&self, now: u64) -> Counts {
        let in_window: Vec<&(u64, bool, bool)> = match self.s.window {
            WindowKind::Count => {
                let n = self.calls.len();
                let keep = n.min(self.s.window_size as usize);
                self.calls[n - keep..].iter().collect()
            }
            WindowKind::Time => {
                let now_s = now / 1000;
                self.calls
                    .iter()
                    .filter(|(t, _, _)| {
                        let sec = t / 1000;
                        sec <= now_s && now_s - sec < u64::from(self.s.window_size)
                    })
                    .collect()
            }
        };
        Counts {
            calls: in_window.len() as u32,
            failures: in_window.iter().filter(|c| c.1).count() as u32,
            slow: in_window.iter().filter(|c| c.2).count() as u32,
        }
    }

    fn go(&mut self, to: State, now: u64) {
        self.state = to;
        self.epoch += 1;
        self.since = now;
        self.calls.clear();
        self.issued = 0;
        self.probes = Counts::default();
        match to {
            State::Open => {
                self.opens += 1;
                let mut wait = self.s.wait_in_open_ms as f64;
                for _ in 1..self.opens {
                    wait *= self.s.wait_in_open_multiplier;
                }
                self.open_wait = if wait >= self.s.max_wait_in_open_ms as f64 {
                    self.s.max_wait_in_open_ms
                } else {
                    wait as u64
                };
                if self.s.wait_in_open_multiplier <= 1.0 {
                    self.open_wait = self.s.wait_in_open_ms;
                }
            }
            State::Closed => self.opens = 0,
            State::HalfOpen => {}
        }
    }

    fn acquire(&mut self, now: u64) -> Acquired {
        let permitted = |epoch, probe| Decision::Permitted(Permit { epoch, probe });
        let done = |decision, state, transition| Acquired {
            decision,
            state,
            transition,
        };
        if !self.exists {
            return done(permitted(0, false), State::Closed, None);
        }
        let elapsed = now.saturating_sub(self.since);
        match self.state {
            State::Closed => done(permitted(self.epoch, false), State::Closed, None),
            State::Open => {
                if elapsed < self.open_wait {
                    done(
                        Decision::Rejected {
                            retry_after_ms: self.open_wait - elapsed,
                        },
                        State::Open,
                        None,
                    )
                } else {
                    self.go(State::HalfOpen, now);
                    self.issued = 1;
                    done(
                        permitted(self.epoch, true),
                        State::HalfOpen,
                        Some(Transition {
                            from: State::Open,
                            to: State::HalfOpen,
                            reason: Reason::WaitElapsed { waited_ms: elapsed },
                        }),
                    )
                }
            }
            State::HalfOpen => {
                if self.s.max_wait_in_half_open_ms > 0 && elapsed >= self.s.max_wait_in_half_open_ms
                {
                    self.go(State::Open, now);
                    done(
                        Decision::Rejected {
                            retry_after_ms: self.open_wait,
                        },
                        State::Open,
                        Some(Transition {
                            from: State::HalfOpen,
                            to: State::Open,
                            reason: Reason::HalfOpenTimeout { waited_ms: elapsed },
                        }),
                    )
                } else if self.issued < self.s.permitted_calls_in_half_open {
                    self.issued += 1;
                    done(permitted(self.epoch, true), State::HalfOpen, None)
                } else {
                    done(
                        Decision::Rejected {
                            retry_after_ms: 1000,
                        },
                        State::HalfOpen,
                        None,
                    )
                }
            }
        }
    }

    fn record(&mut self, now: u64, permit: Permit, outcome: Outcome) -> Recorded {
        let not_applied = |state| Recorded {
            applied: false,
            state,
            transition: None,
        };
        if !self.exists {
            if permit.epoch == 0 && !permit.probe && outcome != Outcome::Ignored {
                self.exists = true;
                self.since = now;
            } else {
                return not_applied(None);
            }
        }
        if permit.epoch != self.epoch {
            return not_applied(Some(self.state));
        }
        let applied = |state, transition| Recorded {
            applied: true,
            state: Some(state),
            transition,
        };
        match (self.state, permit.probe) {
            (State::Closed, false) => {
                if outcome == Outcome::Ignored {
                    return not_applied(Some(State::Closed));
                }
                self.calls
                    .push((now, outcome.is_failure(), outcome.is_slow()));
                let c = self.window(now);
                if c.calls
                    >= self.s.minimum_calls.min(match self.s.window {
                        WindowKind::Count => self.s.window_size,
                        WindowKind::Time => u32::MAX,
                    })
                {
                    let reason = if rate(c.failures, c.calls) >= self.s.failure_rate_threshold {
                        Some(Reason::FailureRate(c))
                    } else if rate(c.slow, c.calls) >= self.s.slow_call_rate_threshold {
                        Some(Reason::SlowCallRate(c))
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        self.go(State::Open, now);
                        return applied(
                            State::Open,
                            Some(Transition {
                                from: State::Closed,
                                to: State::Open,
                                reason,
                            }),
                        );
                    }
                }
                applied(State::Closed, None)
            }
            (State::HalfOpen, true) => {
                if outcome == Outcome::Ignored {
                    self.issued = self.issued.saturating_sub(1);
                    return applied(State::HalfOpen, None);
                }
                self.probes.calls += 1;
                self.probes.failures += u32::from(outcome.is_failure());
                self.probes.slow += u32::from(outcome.is_slow());
                if self.probes.calls < self.s.permitted_calls_in_half_open {
                    return applied(State::HalfOpen, None);
                }
                let c = self.probes;
                let (to, reason) = if rate(c.failures, c.calls) >= self.s.failure_rate_threshold {
                    (State::Open, Reason::ProbesFailed(c))
                } else if rate(c.slow, c.calls) >= self.s.slow_call_rate_threshold {
                    (State::Open, Reason::ProbesSlow(c))
                } else {
                    (State::Closed, Reason::ProbesPassed(c))
                };
                self.go(to, now);
                applied(
                    to,
                    Some(Transition {
                        from: State::HalfOpen,
                        to,
                        reason,
                    }),
                )
            }
            (state, _) => not_applied(Some(state)),
        }
    }

    fn snapshot(&self, now: u64) -> Option<Snapshot> {
        self.exists.then(|| Snapshot {
            state: self.state,
            epoch: self.epoch,
            since_ms: self.since,
            opens: self.opens,
            open_wait_ms: self.open_wait,
            window: self.window(now),
            probes_issued: self.issued,
            probes: self.probes,
        })
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A request arrives.
    Acquire,
    /// The outstanding permit at this index (modulo) reports.
    Complete(usize, Outcome),
    /// Time passes.
    Advance(u64),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Success),
        3 => Just(Outcome::Failure),
        1 => Just(Outcome::SlowSuccess),
        1 => Just(Outcome::SlowFailure),
        1 => Just(Outcome::Ignored),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => Just(Op::Acquire),
        5 => (any::<usize>(), outcome()).prop_map(|(i, o)| Op::Complete(i, o)),
        1 => prop_oneof![0..50u64, 0..3_000u64, 0..20_000u64].prop_map(Op::Advance),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![Just(WindowKind::Count), Just(WindowKind::Time)],
        1..12u32,
        1..15u32,
        prop_oneof![Just(0.2), Just(0.5), Just(0.75), Just(1.0)],
        prop_oneof![Just(0.3), Just(0.5), Just(1.0)],
        prop_oneof![Just(100u64), Just(1_000), Just(5_000)],
        prop_oneof![Just(1.0), Just(1.5), Just(2.0)],
        1..5u32,
        prop_oneof![Just(0u64), Just(2_000), Just(10_000)],
    )
        .prop_map(
            |(window, size, min, fail, slow, wait, mult, probes, half_wait)| Settings {
                window,
                window_size: size,
                minimum_calls: min,
                failure_rate_threshold: fail,
                slow_call_rate_threshold: slow,
                slow_call_duration_ms: 1_000,
                wait_in_open_ms: wait,
                wait_in_open_multiplier: mult,
                max_wait_in_open_ms: wait * 5,
                permitted_calls_in_half_open: probes,
                max_wait_in_half_open_ms: half_wait,
                state_ttl_ms: 3_600_000,
            },
        )
}

/// Cases of the model-equivalence property (each up to 300 operations).
const MODEL_CASES: u32 = 1024;
/// Cases of the half-open permit property (each up to 400 operations).
const PERMIT_CASES: u32 = 1024;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: MODEL_CASES,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    /// After every operation of a random sequence, the machine (bit-packed
    /// window or buckets, serialized through the store) returns exactly what
    /// the reference model returns, and holds the same counts.
    #[test]
    fn the_machine_equals_the_reference_model(
        s in settings(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        prop_assert_eq!(s.validate(), Ok(()));
        let store = MemStore::default();
        let clock = VirtualClock::at(T0);
        let m = Machine::new(&s, &store, &clock);
        let mut model = Model::new(&s);
        let mut outstanding: Vec<Permit> = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            let now = clock.now_ms();
            match *op {
                Op::Acquire => {
                    let got = m.acquire(KEY).unwrap();
                    let want = model.acquire(now);
                    prop_assert_eq!(got, want, "step {} {:?}", step, op);
                    if let Decision::Permitted(p) = got.decision {
                        outstanding.push(p);
                    }
                }
                Op::Complete(i, o) => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    let p = outstanding.remove(i % outstanding.len());
                    let got = m.record(KEY, p, o).unwrap();
                    let want = model.record(now, p, o);
                    prop_assert_eq!(got, want, "step {} {:?} {:?}", step, op, p);
                }
                Op::Advance(ms) => clock.advance(ms),
            }
            let now = clock.now_ms();
            prop_assert_eq!(m.snapshot(KEY).unwrap(), model.snapshot(now), "after step {} {:?}", step, op);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: PERMIT_CASES,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    /// Whatever the interleaving of requests, outcomes and time, a half-open
    /// breaker never has more than `permitted_calls_in_half_open` probes out
    /// (handed out, not yet reported or released), and never hands out more
    /// than that many in one half-open period unless some were released.
    #[test]
    fn half_open_never_exceeds_the_permitted_probes(
        s in settings(),
        ops in prop::collection::vec(
            prop_oneof![
                8 => Just(Op::Acquire),
                4 => (any::<usize>(), outcome()).prop_map(|(i, o)| Op::Complete(i, o)),
                1 => (0..20_000u64).prop_map(Op::Advance),
            ],
            1..400,
        ),
    ) {
        let store = MemStore::default();
        let clock = VirtualClock::at(T0);
        let m = Machine::new(&s, &store, &clock);
        let mut outstanding: Vec<Permit> = Vec::new();
        // Per half-open epoch: probes handed out, and released (ignored).
        let mut granted: HashMap<u64, (u32, u32)> = HashMap::new();
        for op in &ops {
            match *op {
                Op::Acquire => {
                    if let Decision::Permitted(p) = m.acquire(KEY).unwrap().decision {
                        if p.probe {
                            granted.entry(p.epoch).or_default().0 += 1;
                        }
                        outstanding.push(p);
                    }
                }
                Op::Complete(i, o) => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    let p = outstanding.remove(i % outstanding.len());
                    let r = m.record(KEY, p, o).unwrap();
                    if p.probe && o == Outcome::Ignored && r.applied {
                        granted.entry(p.epoch).or_default().1 += 1;
                    }
                }
                Op::Advance(ms) => clock.advance(ms),
            }
            if let Some(snap) = m.snapshot(KEY).unwrap() {
                if snap.state == State::HalfOpen {
                    let out = outstanding
                        .iter()
                        .filter(|p| p.probe && p.epoch == snap.epoch)
                        .count() as u32;
                    prop_assert!(out <= s.permitted_calls_in_half_open,
                        "{} probes out, {} permitted", out, s.permitted_calls_in_half_open);
                    prop_assert!(snap.probes_issued <= s.permitted_calls_in_half_open);
                    prop_assert!(snap.probes.calls <= snap.probes_issued);
                    prop_assert_eq!(out + snap.probes.calls, snap.probes_issued);
                }
            }
            for (&epoch, &(handed, released)) in &granted {
                prop_assert!(handed - released <= s.permitted_calls_in_half_open,
                    "epoch {}: {} handed out, {} released", epoch, handed, released);
            }
        }
    }
}

/// The generated settings do reach half-open (so the property above is not
/// vacuous).
#[test]
fn generated_breakers_reach_half_open() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut reached = 0;
    for _ in 0..200 {
        let s = settings().new_tree(&mut runner).unwrap().current();
        let store = MemStore::default();
        let clock = VirtualClock::at(T0);
        let m = Machine::new(&s, &store, &clock);
        for i in 0..400u64 {
            let a = m.acquire(KEY).unwrap();
            if a.state == State::HalfOpen {
                reached += 1;
                break;
            }
            if let Decision::Permitted(p) = a.decision {
                m.record(KEY, p, if i % 20 == 0 { S } else { F }).unwrap();
            }
            clock.advance(100);
        }
    }
    assert!(
        reached > 120,
        "only {reached} of 200 generated breakers reached half-open"
    );
}

// ---------------------------------------------------------------------------
// Threads racing on one record through compare-and-set.

#[test]
fn concurrent_records_are_never_lost() {
    let s = count_settings(MAX_COUNT_WINDOW, MAX_COUNT_WINDOW);
    let store = MemStore::default();
    store.yield_now.store(true, Ordering::Relaxed);
    let clock = VirtualClock::at(T0);
    const THREADS: usize = 8;
    const EACH: usize = 250;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (s, store, clock) = (&s, &store, &clock);
            scope.spawn(move || {
                let m = Machine::new(s, store, clock);
                for i in 0..EACH {
                    let o = if (t + i) % 4 == 0 { F } else { S };
                    let p = permit(&m);
                    // On a loaded machine a thread can lose MAX_CAS_ATTEMPTS
                    // races in a row; the operation then changed nothing and
                    // is simply retried (as the plugin's caller would see an
                    // error, not a half-applied update).
                    let applied = loop {
                        match m.record(KEY, p, o) {
                            Ok(r) => break r.applied,
                            Err(_) => std::thread::yield_now(),
                        }
                    };
                    assert!(applied);
                }
            });
        }
    });
    let m = Machine::new(&s, &store, &clock);
    let snap = m.snapshot(KEY).unwrap().unwrap();
    assert_eq!(snap.window.calls as usize, THREADS * EACH);
    let failures = (0..THREADS)
        .flat_map(|t| (0..EACH).map(move |i| (t + i) % 4 == 0))
        .filter(|f| *f)
        .count();
    assert_eq!(snap.window.failures as usize, failures);
    assert!(
        store.cas_conflicts.load(Ordering::Relaxed) > 0,
        "the threads never raced: the test proves nothing"
    );
}

#[test]
fn concurrent_requests_in_half_open_get_exactly_the_permitted_probes() {
    let s = Settings {
        permitted_calls_in_half_open: 5,
        ..count_settings(4, 4)
    };
    let store = MemStore::default();
    let clock = VirtualClock::at(T0);
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    clock.advance(10_000);
    store.yield_now.store(true, Ordering::Relaxed);
    let permitted = AtomicUsize::new(0);
    let transitions = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let (s, store, clock, permitted, transitions) =
                (&s, &store, &clock, &permitted, &transitions);
            scope.spawn(move || {
                let m = Machine::new(s, store, clock);
                for _ in 0..50 {
                    let a = m.acquire(KEY).unwrap();
                    if a.transition.is_some() {
                        transitions.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Decision::Permitted(p) = a.decision {
                        assert!(p.probe);
                        permitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(permitted.load(Ordering::Relaxed), 5);
    assert_eq!(
        transitions.load(Ordering::Relaxed),
        1,
        "exactly one caller moves open -> half-open"
    );
}

#[test]
fn concurrent_probes_close_the_breaker_exactly_once() {
    let s = Settings {
        permitted_calls_in_half_open: 8,
        ..count_settings(4, 4)
    };
    let store = MemStore::default();
    let clock = VirtualClock::at(T0);
    let m = Machine::new(&s, &store, &clock);
    trip(&m, 4);
    clock.advance(10_000);
    let probes: Vec<Permit> = (0..8).map(|_| permit(&m)).collect();
    store.yield_now.store(true, Ordering::Relaxed);
    let closes = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for p in &probes {
            let (s, store, clock, closes) = (&s, &store, &clock, &closes);
            scope.spawn(move || {
                let m = Machine::new(s, store, clock);
                let r = m.record(KEY, *p, S).unwrap();
                assert!(r.applied);
                if r.transition.is_some() {
                    closes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(closes.load(Ordering::Relaxed), 1);
    assert_eq!(state(&m), State::Closed);
}

// A queue-based cross-check of the count window alone, over long sequences.
proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_count_window_keeps_the_last_n_outcomes(
        size in 1..200u32,
        outcomes in prop::collection::vec(
            prop_oneof![Just(S), Just(F), Just(SS), Just(Outcome::SlowFailure)],
            0..1000,
        ),
    ) {
        let mut w = CountWindow::new(size);
        let mut q: VecDeque<Outcome> = VecDeque::new();
        for o in outcomes {
            w.push(o);
            q.push_back(o);
            if q.len() > size as usize {
                q.pop_front();
            }
            let want = Counts {
                calls: q.len() as u32,
                failures: q.iter().filter(|o| o.is_failure()).count() as u32,
                slow: q.iter().filter(|o| o.is_slow()).count() as u32,
            };
            prop_assert_eq!(w.counts(), want);
        }
        let record = Record {
            window: Window::Count(w),
            ..Record::new(&count_settings(size, 1), T0)
        };
        prop_assert_eq!(Record::decode(&record.encode()), Some(record));
    }
}
