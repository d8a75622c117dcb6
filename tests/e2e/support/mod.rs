//! Helpers shared by every test module: fixture plugins, configs, the gateway process, upstream
//! servers, an HTTP client and small parsers.
//!
//! * [`Cfg`] builds a gateway config (the `[server]` table with OS-chosen loopback ports is
//!   written for you); [`Cfg::check`] runs `ficus check` on it.
//! * [`Gateway`] runs `ficus run` on a config and waits for its "listening" line; its stderr
//!   (the log) is captured and printed when a test fails.
//! * [`Upstream`] is a real HTTP server on loopback that echoes what it received.
//! * [`Req`] / [`Resp`] are a tiny HTTP client (HTTP/1.1 or HTTP/2 prior knowledge).
//! * [`Shared`] holds a module's gateway and upstreams, started once for all its tests.

mod flaky;
mod gateway;
mod http;
mod switch;
mod upstream;

pub(crate) use flaky::{Fault, Flaky};
pub(crate) use gateway::{Cfg, Checked, Gateway, Shared};
pub(crate) use http::{raw_http, Req};
pub(crate) use switch::Switch;
pub(crate) use upstream::{dead_endpoint, BrokenUpstream, Upstream};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The fixture plugins built by `host/build.rs` into [`ficus::WASM_DIR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fixture {
    /// `plugins/headers`: header edits from config.
    Headers,
    /// `plugins/hello`: a `wasi:http` handler.
    Hello,
    /// `plugins/fixtures/probe`: a configurable filter exercising the whole contract. Imports
    /// log, metrics and state, so it must be granted all three.
    Probe,
    /// `plugins/fixtures/loop`: on-request never returns.
    Loop,
    /// `plugins/fixtures/trap`: on-request panics.
    Trap,
    /// `plugins/fixtures/memory-hog`: on-request allocates without bound.
    MemoryHog,
    /// `plugins/fixtures/leaky`: every on-request leaks `leak_kib` KiB and continues.
    Leaky,
    /// `plugins/fixtures/ungranted`: imports `ficus:gateway/state`.
    Ungranted,
    /// `plugins/ambassador`: retries, timeouts, budget, auth headers, access log, metrics.
    /// Needs the grants log, metrics, state and clock.
    Ambassador,
    /// `plugins/circuit-breaker`: the circuit breaker. Needs `state`, `clock`, `metrics`, `log`.
    CircuitBreaker,
}

impl Fixture {
    /// Every fixture; `config::every_built_plugin_is_a_known_fixture` checks that nothing else
    /// is built, so a new plugin cannot land without the suite knowing about it.
    pub(crate) const ALL: [Fixture; 10] = [
        Fixture::Headers,
        Fixture::Hello,
        Fixture::Probe,
        Fixture::Loop,
        Fixture::Trap,
        Fixture::MemoryHog,
        Fixture::Leaky,
        Fixture::Ungranted,
        Fixture::Ambassador,
        Fixture::CircuitBreaker,
    ];

    /// File name in [`ficus::WASM_DIR`].
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            Fixture::Headers => "headers.wasm",
            Fixture::Hello => "hello.wasm",
            Fixture::Probe => "probe.wasm",
            Fixture::Loop => "loop.wasm",
            Fixture::Trap => "trap.wasm",
            Fixture::MemoryHog => "memory-hog.wasm",
            Fixture::Leaky => "leaky.wasm",
            Fixture::Ungranted => "ungranted.wasm",
            Fixture::CircuitBreaker => "circuit-breaker.wasm",
            Fixture::Ambassador => "ambassador.wasm",
        }
    }

    /// Absolute path of the built component; panics with a hint when it is missing.
    pub(crate) fn path(self) -> PathBuf {
        let path = Path::new(ficus::WASM_DIR).join(self.file_name());
        assert!(
            path.is_file(),
            "fixture {} is missing (host/build.rs builds plugins/ into {})",
            path.display(),
            ficus::WASM_DIR
        );
        path
    }
}

/// A process-wide unique name, e.g. for the `x-test-id` header that upstreams count by.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Scratch space under Cargo's per-target temporary directory.
fn scratch_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ficus-e2e")
}

/// The plugin compile cache shared by every gateway of the suite (artifacts are written
/// atomically, so concurrent gateways may share it).
fn cache_dir() -> PathBuf {
    scratch_root().join("cache")
}

/// A directory removed on drop (kept when the test fails, for inspection).
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        let path = scratch_root().join(unique(label));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for inspection)", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Sum of the samples of metric `name` whose labels include every pair of `labels`, in
/// Prometheus text format; `None` when no sample matches.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(rest) = rest.strip_prefix('{') {
            match rest.rsplit_once("} ") {
                Some(split) => split,
                None => continue,
            }
        } else if let Some(value) = rest.strip_prefix(' ') {
            ("", value)
        } else {
            continue; // another metric whose name starts with `name`
        };
        let label_text = format!(",{label_text}");
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!(",{k}=\"{v}\"")))
        {
            let value: f64 = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad sample value in {line:?}"));
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// 1-based line and column (in characters) of the first occurrence of `needle` in `text`.
pub(crate) fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in:\n{text}"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Whether a log entry has the structured field `name` with exactly `value` (written
/// `name=value` or `name="value"` depending on how the gateway recorded it).
pub(crate) fn has_field(entry: &str, name: &str, value: &str) -> bool {
    let key = format!("{name}=");
    entry.match_indices(&key).any(|(at, _)| {
        let starts_word = entry[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace());
        let rest = &entry[at + key.len()..];
        let found = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or_default(),
            None => rest.split_whitespace().next().unwrap_or_default(),
        };
        starts_word && found == value
    })
}
