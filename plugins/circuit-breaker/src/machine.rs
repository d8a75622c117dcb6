//! The circuit breaker's state machine: pure logic with no WebAssembly
//! imports, so it compiles (and is tested) natively as well as in the plugin.
//!
//! * Storage is behind [`Store`] (get + compare-and-set with revisions): the
//!   plugin implements it over the host `state` capability, tests over an
//!   in-memory map. Every change is a read-modify-CAS loop on one serialized
//!   [`Record`] per breaker key, so concurrent instances never lose updates.
//! * Time is behind [`Clock`] (milliseconds): the plugin reads the WASI wall
//!   clock, tests drive a virtual clock.
//!
//! A breaker is `closed` (calls pass and are recorded in a sliding window),
//! `open` (calls are rejected until the wait is over) or `half-open` (a fixed
//! number of probe calls pass; their outcomes close or re-open the breaker).
//! Every transition starts a new *epoch*; a [`Permit`] carries the epoch it
//! was issued in, and an outcome whose permit belongs to an earlier epoch is
//! dropped (it describes a call made under different conditions).
//!
//! The plugin-level modes (dry-run, forced-open, disabled) are decided by the
//! caller; this module is the shared state machine only.

use std::fmt;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and are recorded.
    Closed,
    /// Calls are rejected until the wait in open is over.
    Open,
    /// A limited number of probe calls pass.
    HalfOpen,
}

impl State {
    /// The value of the `circuit_breaker_state` gauge (resilience4j's
    /// numbering: 0 closed, 1 open, 2 half-open; 3 disabled and 4
    /// forced-open are plugin modes).
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
        }
    }

    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }

    fn code(self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }

    fn from_code(code: u8) -> Option<State> {
        match code {
            0 => Some(State::Closed),
            1 => Some(State::Open),
            2 => Some(State::HalfOpen),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the closed state's sliding window is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `sliding_window_size` calls.
    Count,
    /// The calls of the last `sliding_window_size` seconds (one bucket per
    /// second, as in resilience4j).
    Time,
}

/// Largest count-based window (2 bits per call are stored).
pub const MAX_COUNT_WINDOW: u32 = 10_000;
/// Largest time-based window, in seconds (one bucket per second).
pub const MAX_TIME_WINDOW_S: u32 = 600;
/// Largest number of half-open probes.
pub const MAX_HALF_OPEN_CALLS: u32 = 10_000;

/// The numeric settings of a breaker (see the plugin README for each one).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Count- or time-based window.
    pub window: WindowKind,
    /// Calls (count-based) or seconds (time-based).
    pub window_size: u32,
    /// Calls the window must hold before the rates are evaluated.
    pub minimum_calls: u32,
    /// Trip when failures / calls ≥ this (0 < r ≤ 1).
    pub failure_rate_threshold: f64,
    /// Trip when slow calls / calls ≥ this (0 < r ≤ 1).
    pub slow_call_rate_threshold: f64,
    /// A call is slow when its latency is above this.
    pub slow_call_duration_ms: u64,
    /// How long the breaker stays open before half-open.
    pub wait_in_open_ms: u64,
    /// Each consecutive re-opening multiplies the wait by this (≥ 1).
    pub wait_in_open_multiplier: f64,
    /// Cap of the multiplied wait.
    pub max_wait_in_open_ms: u64,
    /// Probe calls let through in half-open.
    pub permitted_calls_in_half_open: u32,
    /// Half-open longer than this re-opens (0: wait for every probe forever).
    pub max_wait_in_half_open_ms: u64,
    /// Expiry of an idle breaker record (0: never).
    pub state_ttl_ms: u64,
}

impl Default for Settings {
    /// resilience4j's defaults (failure rate 50 %, window of 100 calls,
    /// minimum 100 calls, slow calls above 60 s at 100 %, 60 s in open, 10
    /// half-open calls), plus a bounded half-open wait (see the README).
    fn default() -> Self {
        Settings {
            window: WindowKind::Count,
            window_size: 100,
            minimum_calls: 100,
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_duration_ms: 60_000,
            wait_in_open_ms: 60_000,
            wait_in_open_multiplier: 1.0,
            max_wait_in_open_ms: 60_000,
            permitted_calls_in_half_open: 10,
            max_wait_in_half_open_ms: 60_000,
            state_ttl_ms: 3_600_000,
        }
    }
}

fn check_rate(key: &str, value: f64) -> Result<(), String> {
    if !value.is_finite() || value <= 0.0 || value > 1.0 {
        return Err(format!(
            "config.{key}: {value} is not a rate in (0, 1] (write 0.5 for 50 %)"
        ));
    }
    Ok(())
}

impl Settings {
    /// Check every value; the message names the config key.
    pub fn validate(&self) -> Result<(), String> {
        let (max, unit) = match self.window {
            WindowKind::Count => (MAX_COUNT_WINDOW, "calls"),
            WindowKind::Time => (MAX_TIME_WINDOW_S, "seconds"),
        };
        if self.window_size == 0 || self.window_size > max {
            return Err(format!(
                "config.sliding_window_size: {} is out of range: 1..={max} {unit} for this window type",
                self.window_size
            ));
        }
        if self.minimum_calls == 0 {
            return Err("config.minimum_calls: must be at least 1".into());
        }
        check_rate("failure_rate_threshold", self.failure_rate_threshold)?;
        check_rate("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if self.wait_in_open_ms == 0 {
            return Err("config.wait_in_open_ms: must be at least 1".into());
        }
        if !self.wait_in_open_multiplier.is_finite() || self.wait_in_open_multiplier < 1.0 {
            return Err(format!(
                "config.wait_in_open_multiplier: {} must be a number ≥ 1",
                self.wait_in_open_multiplier
            ));
        }
        if self.max_wait_in_open_ms < self.wait_in_open_ms {
            return Err(format!(
                "config.max_wait_in_open_ms: {} is below wait_in_open_ms ({})",
                self.max_wait_in_open_ms, self.wait_in_open_ms
            ));
        }
        if self.permitted_calls_in_half_open == 0
            || self.permitted_calls_in_half_open > MAX_HALF_OPEN_CALLS
        {
            return Err(format!(
                "config.permitted_calls_in_half_open: {} is out of range: 1..={MAX_HALF_OPEN_CALLS}",
                self.permitted_calls_in_half_open
            ));
        }
        Ok(())
    }

    /// Calls needed before a decision: `minimum_calls`, capped at the window
    /// size for a count-based window (as in resilience4j).
    pub fn effective_minimum_calls(&self) -> u32 {
        match self.window {
            WindowKind::Count => self.minimum_calls.min(self.window_size),
            WindowKind::Time => self.minimum_calls,
        }
    }

    /// The wait in open after the `opens`-th consecutive opening (1-based).
    pub fn open_wait_ms(&self, opens: u32) -> u64 {
        if self.wait_in_open_multiplier <= 1.0 || opens <= 1 {
            return self.wait_in_open_ms;
        }
        let exponent = i32::try_from(opens - 1).unwrap_or(i32::MAX);
        let wait = self.wait_in_open_ms as f64 * self.wait_in_open_multiplier.powi(exponent);
        if wait >= self.max_wait_in_open_ms as f64 {
            self.max_wait_in_open_ms
        } else {
            wait as u64
        }
    }

    /// Whether `failures` (or `slow`) out of `calls` reach a threshold.
    fn trips(&self, counts: Counts) -> Option<Reason> {
        if counts.calls == 0 {
            return None;
        }
        if rate(counts.failures, counts.calls) >= self.failure_rate_threshold {
            return Some(Reason::FailureRate(counts));
        }
        if rate(counts.slow, counts.calls) >= self.slow_call_rate_threshold {
            return Some(Reason::SlowCallRate(counts));
        }
        None
    }

    fn expiry(&self, record: &Record) -> Option<u64> {
        if self.state_ttl_ms == 0 {
            return None;
        }
        // An open or half-open record must outlive its waits.
        let floor = record
            .open_wait_ms
            .saturating_add(self.max_wait_in_half_open_ms)
            .saturating_add(60_000);
        Some(self.state_ttl_ms.max(floor))
    }
}

/// `part / whole` as the thresholds compare it.
pub fn rate(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

/// How one call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not a failure, not slow.
    Success,
    /// A failure, not slow.
    Failure,
    /// Not a failure, but slower than the slow-call threshold.
    SlowSuccess,
    /// A failure and slow.
    SlowFailure,
    /// Not counted at all (releases a half-open probe permit).
    Ignored,
}

impl Outcome {
    /// The outcome of a counted call.
    pub fn call(failed: bool, slow: bool) -> Outcome {
        match (failed, slow) {
            (false, false) => Outcome::Success,
            (true, false) => Outcome::Failure,
            (false, true) => Outcome::SlowSuccess,
            (true, true) => Outcome::SlowFailure,
        }
    }

    /// Counted as a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure | Outcome::SlowFailure)
    }

    /// Counted as slow.
    pub fn is_slow(self) -> bool {
        matches!(self, Outcome::SlowSuccess | Outcome::SlowFailure)
    }

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::SlowSuccess => "slow_success",
            Outcome::SlowFailure => "slow_failure",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Why an upstream attempt produced no response (mirrors the WIT
/// `upstream-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `connect-failed`
    ConnectFailed,
    /// `connect-timeout`
    ConnectTimeout,
    /// `timeout`
    Timeout,
    /// `reset`
    Reset,
    /// `protocol`
    Protocol,
    /// `no-endpoint`
    NoEndpoint,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::ConnectFailed,
        ErrorKind::ConnectTimeout,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::NoEndpoint,
    ];

    /// The WIT (and config) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectFailed => "connect-failed",
            ErrorKind::ConnectTimeout => "connect-timeout",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::NoEndpoint => "no-endpoint",
        }
    }

    /// Parse a config name.
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of HTTP statuses: classes (`5xx`), codes (`503`) and ranges
/// (`500-504`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
}

impl StatusSet {
    /// Parse one rule: `"1xx"`..`"5xx"` (case-insensitive), `"503"`, or
    /// `"500-504"`.
    pub fn parse_rule(rule: &str) -> Result<(u16, u16), String> {
        let rule = rule.trim();
        let code = |s: &str| -> Option<u16> {
            let n: u16 = s.trim().parse().ok()?;
            (100..=599).contains(&n).then_some(n)
        };
        let bytes = rule.as_bytes();
        if bytes.len() == 3 && bytes[1..].eq_ignore_ascii_case(b"xx") {
            return match bytes[0] {
                b @ b'1'..=b'5' => {
                    let class = u16::from(b - b'0') * 100;
                    Ok((class, class + 99))
                }
                _ => Err(format!(
                    "{rule:?} is not a status class: expected one of 1xx, 2xx, 3xx, 4xx, 5xx"
                )),
            };
        }
        if let Some((lo, hi)) = rule.split_once('-') {
            return match (code(lo), code(hi)) {
                (Some(lo), Some(hi)) if lo <= hi => Ok((lo, hi)),
                _ => Err(format!(
                    "{rule:?} is not a status range: expected LOW-HIGH with 100 <= LOW <= HIGH <= 599"
                )),
            };
        }
        code(rule).map(|c| (c, c)).ok_or_else(|| {
            format!(
                "{rule:?} is not a status: expected a class (1xx..5xx), a code (100..=599) or a range (500-504)"
            )
        })
    }

    /// Add a range.
    pub fn push(&mut self, range: (u16, u16)) {
        self.ranges.push(range);
    }

    /// A set from ranges.
    pub fn from_ranges(ranges: Vec<(u16, u16)>) -> StatusSet {
        StatusSet { ranges }
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Which attempts count as failures, which are ignored, and which are slow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Statuses recorded as failures (default `5xx`).
    pub failure_statuses: StatusSet,
    /// Statuses not recorded at all; wins over `failure_statuses`.
    pub ignore_statuses: StatusSet,
    /// Upstream errors recorded as failures; the other kinds are ignored.
    failure_errors: u8,
    /// Latency above which a call is slow.
    pub slow_call_duration_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(60_000)
    }
}

impl Policy {
    /// The default classification (`5xx` and every upstream error are
    /// failures, nothing is ignored) with this slow-call duration.
    pub fn new(slow_call_duration_ms: u64) -> Policy {
        Policy {
            failure_statuses: StatusSet::from_ranges(vec![(500, 599)]),
            ignore_statuses: StatusSet::default(),
            failure_errors: ErrorKind::ALL.iter().fold(0, |m, k| m | k.bit()),
            slow_call_duration_ms,
        }
    }

    /// Replace the upstream errors recorded as failures.
    pub fn set_failure_errors(&mut self, kinds: &[ErrorKind]) {
        self.failure_errors = kinds.iter().fold(0, |m, k| m | k.bit());
    }

    /// Whether an upstream error kind is recorded as a failure.
    pub fn counts_error(&self, kind: ErrorKind) -> bool {
        self.failure_errors & kind.bit() != 0
    }

    /// Classify one attempt.
    ///
    /// * a local response (a plugin's or a handler's, no upstream call) is
    ///   ignored;
    /// * an upstream error is a failure if its kind is listed, else ignored;
    /// * a status in `ignore_statuses` is ignored, one in `failure_statuses`
    ///   is a failure, any other is a success;
    /// * a counted call is also slow when its latency is above the slow-call
    ///   duration.
    pub fn classify(&self, attempt: &Attempt) -> Outcome {
        if attempt.local {
            return Outcome::Ignored;
        }
        let slow = attempt.latency_us > self.slow_call_duration_ms.saturating_mul(1000);
        let failed = match attempt.error {
            Some(kind) if self.counts_error(kind) => true,
            Some(_) => return Outcome::Ignored,
            None if self.ignore_statuses.contains(attempt.status) => return Outcome::Ignored,
            None => self.failure_statuses.contains(attempt.status),
        };
        Outcome::call(failed, slow)
    }
}

/// What the breaker needs to know about one upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The response status (the gateway's 502/503/504 when `error` is set).
    pub status: u16,
    /// Why the upstream produced no response, if it did not.
    pub error: Option<ErrorKind>,
    /// Time to the response head or the failure.
    pub latency_us: u64,
    /// Produced locally, not by an upstream.
    pub local: bool,
}

/// A stored value and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The bytes.
    pub value: Vec<u8>,
    /// Revision for compare-and-set.
    pub revision: u64,
}

/// A failed store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key/value store holding breaker records (host `state` in the plugin).
pub trait Store {
    /// Read a key.
    fn get(&self, key: &str) -> Result<Option<Stored>, StoreError>;
    /// Write `value` if the key's revision is `expected` (`None`: absent);
    /// `Ok(None)` when the condition did not hold.
    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Option<u64>, StoreError>;
}

/// Milliseconds since some fixed origin (the Unix epoch in the plugin).
pub trait Clock {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// Calls, failures and slow calls of a window (or of the half-open probes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Recorded calls.
    pub calls: u32,
    /// Of which failures.
    pub failures: u32,
    /// Of which slow.
    pub slow: u32,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        self.calls += 1;
        self.failures += u32::from(outcome.is_failure());
        self.slow += u32::from(outcome.is_slow());
    }
}

/// Why a transition happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Closed → open: the failure rate reached the threshold.
    FailureRate(Counts),
    /// Closed → open: the slow-call rate reached the threshold.
    SlowCallRate(Counts),
    /// Open → half-open: the wait in open is over.
    WaitElapsed {
        /// How long it was open.
        waited_ms: u64,
    },
    /// Half-open → closed: the probes' rates stayed below the thresholds.
    ProbesPassed(Counts),
    /// Half-open → open: the probes' failure rate reached the threshold.
    ProbesFailed(Counts),
    /// Half-open → open: the probes' slow-call rate reached the threshold.
    ProbesSlow(Counts),
    /// Half-open → open: `max_wait_in_half_open_ms` passed before every
    /// probe reported back.
    HalfOpenTimeout {
        /// How long it was half-open.
        waited_ms: u64,
    },
}

fn percent(part: u32, whole: u32) -> f64 {
    (rate(part, whole) * 1000.0).round() / 10.0
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::FailureRate(c) => write!(
                f,
                "failure rate {}% ({} of {} calls)",
                percent(c.failures, c.calls),
                c.failures,
                c.calls
            ),
            Reason::SlowCallRate(c) => write!(
                f,
                "slow-call rate {}% ({} of {} calls)",
                percent(c.slow, c.calls),
                c.slow,
                c.calls
            ),
            Reason::WaitElapsed { waited_ms } => write!(f, "open for {waited_ms} ms"),
            Reason::ProbesPassed(c) => write!(
                f,
                "{} probe calls: {} failed, {} slow",
                c.calls, c.failures, c.slow
            ),
            Reason::ProbesFailed(c) => write!(
                f,
                "probe failure rate {}% ({} of {} calls)",
                percent(c.failures, c.calls),
                c.failures,
                c.calls
            ),
            Reason::ProbesSlow(c) => write!(
                f,
                "probe slow-call rate {}% ({} of {} calls)",
                percent(c.slow, c.calls),
                c.slow,
                c.calls
            ),
            Reason::HalfOpenTimeout { waited_ms } => write!(
                f,
                "half-open for {waited_ms} ms without every probe reporting back"
            ),
        }
    }
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: State,
    /// After.
    pub to: State,
    /// Why.
    pub reason: Reason,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} ({})", self.from, self.to, self.reason)
    }
}

/// The right to make one call: the epoch it was issued in and whether it is
/// a half-open probe. Carried from `on-request` to `on-response` in the
/// request context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permit {
    /// Epoch of the state that issued it.
    pub epoch: u64,
    /// A half-open probe (else a closed-state call).
    pub probe: bool,
}

impl Permit {
    /// `c:<epoch>` or `p:<epoch>`.
    pub fn encode(self) -> String {
        format!("{}:{}", if self.probe { 'p' } else { 'c' }, self.epoch)
    }

    /// Parse [`Permit::encode`]'s text.
    pub fn decode(text: &str) -> Option<Permit> {
        let (kind, epoch) = text.split_once(':')?;
        let probe = match kind {
            "p" => true,
            "c" => false,
            _ => return None,
        };
        Some(Permit {
            epoch: epoch.parse().ok()?,
            probe,
        })
    }
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; report the outcome with this permit.
    Permitted(Permit),
    /// Rejected; the client may retry after this long.
    Rejected {
        /// Time until the breaker may let calls through again.
        retry_after_ms: u64,
    },
}

/// The result of [`Machine::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// Go ahead or not.
    pub decision: Decision,
    /// The state after the call.
    pub state: State,
    /// The transition this call made, if any.
    pub transition: Option<Transition>,
}

/// The result of [`Machine::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// False when the permit was stale (the outcome was dropped) or the
    /// outcome was ignored outside half-open.
    pub applied: bool,
    /// The state after the call (`None`: no record exists).
    pub state: Option<State>,
    /// The transition this call made, if any.
    pub transition: Option<Transition>,
}

/// A read-only view of a breaker, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// State.
    pub state: State,
    /// Epoch (one per state change).
    pub epoch: u64,
    /// When the current state began.
    pub since_ms: u64,
    /// Consecutive openings without closing.
    pub opens: u32,
    /// Wait of the current (or last) open state.
    pub open_wait_ms: u64,
    /// The closed-state window at `now` (empty unless closed).
    pub window: Counts,
    /// Half-open permits handed out and not released.
    pub probes_issued: u32,
    /// Half-open probe outcomes.
    pub probes: Counts,
}

// ---------------------------------------------------------------------------
// The stored record.

const FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
struct CountWindow {
    size: u32,
    len: u32,
    /// Next slot to write; when full, also the oldest entry.
    head: u32,
    failures: u32,
    slow: u32,
    /// 2 bits per slot: bit 0 failure, bit 1 slow.
    bits: Vec<u8>,
}

impl CountWindow {
    fn new(size: u32) -> CountWindow {
        CountWindow {
            size,
            len: 0,
            head: 0,
            failures: 0,
            slow: 0,
            bits: vec![0; (size as usize).div_ceil(4)],
        }
    }

    fn slot(&self, i: u32) -> u8 {
        let i = i as usize;
        (self.bits[i / 4] >> ((i % 4) * 2)) & 0b11
    }

    fn set_slot(&mut self, i: u32, v: u8) {
        let i = i as usize;
        let shift = (i % 4) * 2;
        self.bits[i / 4] = (self.bits[i / 4] & !(0b11 << shift)) | ((v & 0b11) << shift);
    }

    fn push(&mut self, outcome: Outcome) {
        if self.len == self.size {
            let old = self.slot(self.head);
            self.failures -= u32::from(old & 1);
            self.slow -= u32::from(old >> 1);
        } else {
            self.len += 1;
        }
        let v = u8::from(outcome.is_failure()) | (u8::from(outcome.is_slow()) << 1);
        self.set_slot(self.head, v);
        self.failures += u32::from(outcome.is_failure());
        self.slow += u32::from(outcome.is_slow());
        self.head = (self.head + 1) % self.size;
    }

    fn counts(&self) -> Counts {
        Counts {
            calls: self.len,
            failures: self.failures,
            slow: self.slow,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    sec: u64,
    counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TimeWindow {
    size_s: u32,
    /// Non-empty buckets inside the window, oldest first.
    buckets: Vec<Bucket>,
}

impl TimeWindow {
    fn live(&self, b: &Bucket, now_s: u64) -> bool {
        b.sec <= now_s && b.sec + u64::from(self.size_s) > now_s
    }

    fn prune(&mut self, now_s: u64) {
        let size = u64::from(self.size_s);
        self.buckets
            .retain(|b| b.sec <= now_s && b.sec + size > now_s);
    }

    fn push(&mut self, now_s: u64, outcome: Outcome) {
        self.prune(now_s);
        match self.buckets.last_mut() {
            Some(b) if b.sec == now_s => b.counts.add(outcome),
            _ => {
                let mut counts = Counts::default();
                counts.add(outcome);
                self.buckets.push(Bucket { sec: now_s, counts });
            }
        }
    }

    fn counts(&self, now_s: u64) -> Counts {
        let mut total = Counts::default();
        for b in self.buckets.iter().filter(|b| self.live(b, now_s)) {
            total.calls += b.counts.calls;
            total.failures += b.counts.failures;
            total.slow += b.counts.slow;
        }
        total
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    fn new(settings: &Settings) -> Window {
        match settings.window {
            WindowKind::Count => Window::Count(CountWindow::new(settings.window_size)),
            WindowKind::Time => Window::Time(TimeWindow {
                size_s: settings.window_size,
                buckets: Vec::new(),
            }),
        }
    }

    fn matches(&self, settings: &Settings) -> bool {
        match self {
            Window::Count(w) => {
                settings.window == WindowKind::Count && w.size == settings.window_size
            }
            Window::Time(w) => {
                settings.window == WindowKind::Time && w.size_s == settings.window_size
            }
        }
    }

    fn push(&mut self, now_ms: u64, outcome: Outcome) {
        match self {
            Window::Count(w) => w.push(outcome),
            Window::Time(w) => w.push(now_ms / 1000, outcome),
        }
    }

    fn counts(&self, now_ms: u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now_ms / 1000),
        }
    }
}

/// One breaker's shared state, serialized into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    state: State,
    epoch: u64,
    since_ms: u64,
    opens: u32,
    open_wait_ms: u64,
    probes_issued: u32,
    probes: Counts,
    window: Window,
}

impl Record {
    fn new(settings: &Settings, now_ms: u64) -> Record {
        Record {
            state: State::Closed,
            epoch: 0,
            since_ms: now_ms,
            opens: 0,
            open_wait_ms: 0,
            probes_issued: 0,
            probes: Counts::default(),
            window: Window::new(settings),
        }
    }

    fn enter(&mut self, state: State, settings: &Settings, now_ms: u64) {
        self.state = state;
        self.epoch = self.epoch.wrapping_add(1);
        self.since_ms = now_ms;
        self.probes_issued = 0;
        self.probes = Counts::default();
        self.window = Window::new(settings);
        match state {
            State::Open => {
                self.opens = self.opens.saturating_add(1);
                self.open_wait_ms = settings.open_wait_ms(self.opens);
            }
            State::Closed => self.opens = 0,
            State::HalfOpen => {}
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT_VERSION);
        out.push(self.state.code());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.since_ms.to_le_bytes());
        out.extend_from_slice(&self.opens.to_le_bytes());
        out.extend_from_slice(&self.open_wait_ms.to_le_bytes());
        out.extend_from_slice(&self.probes_issued.to_le_bytes());
        put_counts(&mut out, self.probes);
        match &self.window {
            Window::Count(w) => {
                out.push(0);
                for n in [w.size, w.len, w.head, w.failures, w.slow] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                out.extend_from_slice(&w.bits);
            }
            Window::Time(w) => {
                out.push(1);
                out.extend_from_slice(&w.size_s.to_le_bytes());
                let n = u32::try_from(w.buckets.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&n.to_le_bytes());
                for b in &w.buckets {
                    out.extend_from_slice(&b.sec.to_le_bytes());
                    put_counts(&mut out, b.counts);
                }
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Record> {
        let mut r = Reader(bytes);
        if r.u8()? != FORMAT_VERSION {
            return None;
        }
        let state = State::from_code(r.u8()?)?;
        let epoch = r.u64()?;
        let since_ms = r.u64()?;
        let opens = r.u32()?;
        let open_wait_ms = r.u64()?;
        let probes_issued = r.u32()?;
        let probes = r.counts()?;
        let window = match r.u8()? {
            0 => {
                let (size, len, head, failures, slow) =
                    (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?);
                if size == 0 || size > MAX_COUNT_WINDOW || len > size || head >= size {
                    return None;
                }
                let bits = r.take((size as usize).div_ceil(4))?.to_vec();
                Window::Count(CountWindow {
                    size,
                    len,
                    head,
                    failures,
                    slow,
                    bits,
                })
            }
            1 => {
                let size_s = r.u32()?;
                let n = r.u32()? as usize;
                if size_s == 0 || n > MAX_TIME_WINDOW_S as usize {
                    return None;
                }
                let mut buckets = Vec::with_capacity(n);
                for _ in 0..n {
                    buckets.push(Bucket {
                        sec: r.u64()?,
                        counts: r.counts()?,
                    });
                }
                Window::Time(TimeWindow { size_s, buckets })
            }
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(Record {
            state,
            epoch,
            since_ms,
            opens,
            open_wait_ms,
            probes_issued,
            probes,
            window,
        })
    }
}

fn put_counts(out: &mut Vec<u8>, c: Counts) {
    for n in [c.calls, c.failures, c.slow] {
        out.extend_from_slice(&n.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn counts(&mut self) -> Option<Counts> {
        Some(Counts {
            calls: self.u32()?,
            failures: self.u32()?,
            slow: self.u32()?,
        })
    }
}

// ---------------------------------------------------------------------------
// The machine.

/// Compare-and-set attempts before an operation gives up.
pub const MAX_CAS_ATTEMPTS: usize = 100;

/// What an update closure decided.
enum Change<T> {
    /// Leave the record as it is.
    Keep(T),
    /// Write this record.
    Write(Record, T),
}

/// The breaker operations over a store and a clock.
pub struct Machine<'a, S: Store, C: Clock> {
    settings: &'a Settings,
    store: &'a S,
    clock: &'a C,
}

impl<'a, S: Store, C: Clock> Machine<'a, S, C> {
    /// A machine with these settings, store and clock.
    pub fn new(settings: &'a Settings, store: &'a S, clock: &'a C) -> Self {
        Machine {
            settings,
            store,
            clock,
        }
    }

    /// Read-modify-write `key` with compare-and-set until it holds. A value
    /// that does not decode (another format version, garbage) reads as no
    /// record and is overwritten.
    fn update<T>(
        &self,
        key: &str,
        mut f: impl FnMut(Option<Record>, u64) -> Change<T>,
    ) -> Result<T, StoreError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let stored = self.store.get(key)?;
            let revision = stored.as_ref().map(|s| s.revision);
            let record = stored.and_then(|s| Record::decode(&s.value));
            let now = self.clock.now_ms();
            match f(record, now) {
                Change::Keep(t) => return Ok(t),
                Change::Write(record, t) => {
                    let ttl = self.settings.expiry(&record);
                    if self
                        .store
                        .compare_and_set(key, revision, &record.encode(), ttl)?
                        .is_some()
                    {
                        return Ok(t);
                    }
                }
            }
        }
        Err(StoreError(format!(
            "gave up after {MAX_CAS_ATTEMPTS} compare-and-set conflicts on {key:?}"
        )))
    }

    /// Ask to make a call. Closed: permitted without a write. Open: rejected
    /// until the wait is over, then the first caller moves the breaker to
    /// half-open and takes the first probe. Half-open: permitted while fewer
    /// than `permitted_calls_in_half_open` probes are out, else rejected; past
    /// `max_wait_in_half_open_ms` the breaker re-opens.
    pub fn acquire(&self, key: &str) -> Result<Acquired, StoreError> {
        let s = self.settings;
        self.update(key, |record, now| {
            let Some(mut r) = record else {
                return Change::Keep(Acquired {
                    decision: Decision::Permitted(Permit {
                        epoch: 0,
                        probe: false,
                    }),
                    state: State::Closed,
                    transition: None,
                });
            };
            let elapsed = now.saturating_sub(r.since_ms);
            match r.state {
                State::Closed => Change::Keep(Acquired {
                    decision: Decision::Permitted(Permit {
                        epoch: r.epoch,
                        probe: false,
                    }),
                    state: State::Closed,
                    transition: None,
                }),
                State::Open if elapsed < r.open_wait_ms => Change::Keep(Acquired {
                    decision: Decision::Rejected {
                        retry_after_ms: r.open_wait_ms - elapsed,
                    },
                    state: State::Open,
                    transition: None,
                }),
                State::Open => {
                    r.enter(State::HalfOpen, s, now);
                    r.probes_issued = 1;
                    let permit = Permit {
                        epoch: r.epoch,
                        probe: true,
                    };
                    Change::Write(
                        r,
                        Acquired {
                            decision: Decision::Permitted(permit),
                            state: State::HalfOpen,
                            transition: Some(Transition {
                                from: State::Open,
                                to: State::HalfOpen,
                                reason: Reason::WaitElapsed { waited_ms: elapsed },
                            }),
                        },
                    )
                }
                State::HalfOpen
                    if s.max_wait_in_half_open_ms > 0 && elapsed >= s.max_wait_in_half_open_ms =>
                {
                    r.enter(State::Open, s, now);
                    let retry_after_ms = r.open_wait_ms;
                    Change::Write(
                        r,
                        Acquired {
                            decision: Decision::Rejected { retry_after_ms },
                            state: State::Open,
                            transition: Some(Transition {
                                from: State::HalfOpen,
                                to: State::Open,
                                reason: Reason::HalfOpenTimeout { waited_ms: elapsed },
                            }),
                        },
                    )
                }
                State::HalfOpen if r.probes_issued < s.permitted_calls_in_half_open => {
                    r.probes_issued += 1;
                    let permit = Permit {
                        epoch: r.epoch,
                        probe: true,
                    };
                    Change::Write(
                        r,
                        Acquired {
                            decision: Decision::Permitted(permit),
                            state: State::HalfOpen,
                            transition: None,
                        },
                    )
                }
                State::HalfOpen => Change::Keep(Acquired {
                    decision: Decision::Rejected {
                        retry_after_ms: 1000,
                    },
                    state: State::HalfOpen,
                    transition: None,
                }),
            }
        })
    }

    /// Report the outcome of a permitted call.
    ///
    /// * A permit from an earlier epoch is stale: dropped.
    /// * Closed: a counted outcome goes into the window; once the window holds
    ///   the minimum number of calls, a failure or slow-call rate at or above
    ///   its threshold opens the breaker. An ignored outcome changes nothing.
    /// * Half-open: an ignored outcome releases the probe permit; a counted one
    ///   is added to the probes, and when every permitted probe has reported,
    ///   the breaker re-opens (a rate at or above its threshold) or closes.
    pub fn record(
        &self,
        key: &str,
        permit: Permit,
        outcome: Outcome,
    ) -> Result<Recorded, StoreError> {
        let s = self.settings;
        self.update(key, |record, now| {
            let mut r = match record {
                Some(r) => r,
                None if permit.epoch == 0 && !permit.probe && outcome != Outcome::Ignored => {
                    Record::new(s, now)
                }
                None => {
                    return Change::Keep(Recorded {
                        applied: false,
                        state: None,
                        transition: None,
                    })
                }
            };
            let keep = |r: &Record, applied| {
                Change::Keep(Recorded {
                    applied,
                    state: Some(r.state),
                    transition: None,
                })
            };
            if r.epoch != permit.epoch {
                return keep(&r, false);
            }
            match (r.state, permit.probe) {
                (State::Closed, false) => {
                    if outcome == Outcome::Ignored {
                        return keep(&r, false);
                    }
                    if !r.window.matches(s) {
                        r.window = Window::new(s);
                    }
                    r.window.push(now, outcome);
                    let counts = r.window.counts(now);
                    let reason = if counts.calls >= s.effective_minimum_calls() {
                        s.trips(counts)
                    } else {
                        None
                    };
                    let transition = reason.map(|reason| {
                        r.enter(State::Open, s, now);
                        Transition {
                            from: State::Closed,
                            to: State::Open,
                            reason,
                        }
                    });
                    let state = r.state;
                    Change::Write(
                        r,
                        Recorded {
                            applied: true,
                            state: Some(state),
                            transition,
                        },
                    )
                }
                (State::HalfOpen, true) => {
                    if outcome == Outcome::Ignored {
                        r.probes_issued = r.probes_issued.saturating_sub(1);
                        return Change::Write(
                            r,
                            Recorded {
                                applied: true,
                                state: Some(State::HalfOpen),
                                transition: None,
                            },
                        );
                    }
                    r.probes.add(outcome);
                    let mut transition = None;
                    if r.probes.calls >= s.permitted_calls_in_half_open {
                        let c = r.probes;
                        let (to, reason) = if rate(c.failures, c.calls) >= s.failure_rate_threshold
                        {
                            (State::Open, Reason::ProbesFailed(c))
                        } else if rate(c.slow, c.calls) >= s.slow_call_rate_threshold {
                            (State::Open, Reason::ProbesSlow(c))
                        } else {
                            (State::Closed, Reason::ProbesPassed(c))
                        };
                        r.enter(to, s, now);
                        transition = Some(Transition {
                            from: State::HalfOpen,
                            to,
                            reason,
                        });
                    }
                    let state = r.state;
                    Change::Write(
                        r,
                        Recorded {
                            applied: true,
                            state: Some(state),
                            transition,
                        },
                    )
                }
                _ => keep(&r, false),
            }
        })
    }

    /// The breaker as stored (`None`: no record, i.e. closed and empty).
    pub fn snapshot(&self, key: &str) -> Result<Option<Snapshot>, StoreError> {
        let now = self.clock.now_ms();
        let record = self.store.get(key)?.and_then(|s| Record::decode(&s.value));
        Ok(record.map(|r| Snapshot {
            state: r.state,
            epoch: r.epoch,
            since_ms: r.since_ms,
            opens: r.opens,
            open_wait_ms: r.open_wait_ms,
            window: if r.window.matches(self.settings) {
                r.window.counts(now)
            } else {
                Counts::default()
            },
            probes_issued: r.probes_issued,
            probes: r.probes,
        }))
    }
}

/// Round a wait up to whole seconds for `Retry-After` (at least 1).
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

// Unit and property tests. The plugins workspace is built only for wasm32, so
// they run natively from the root workspace: tests/e2e/breaker.rs includes
// this file with `#[path]` (`cargo test -p ficus --test e2e breaker`).
#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
