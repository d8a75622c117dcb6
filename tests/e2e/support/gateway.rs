//! Configs, `ficus check`, and the `ficus run` process.

use super::{cache_dir, Fixture, Req, TempDir};
use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// The binary under test.
const FICUS: &str = env!("CARGO_BIN_EXE_ficus");

/// How long a gateway may take to print its ready line (the first run compiles every plugin).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Gateway::wait_for_log`] waits for a log entry.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway config under construction. `[server]` listens on OS-chosen loopback ports and
/// uses the suite's shared compile cache; the rest is added table by table.
#[derive(Debug, Clone)]
pub(crate) struct Cfg {
    server: Vec<String>,
    tables: String,
    /// `FICUS_LOG` of the gateway.
    log: String,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg::new()
    }
}

impl Cfg {
    pub(crate) fn new() -> Cfg {
        Cfg {
            server: Vec::new(),
            tables: String::new(),
            log: "info".into(),
        }
    }

    /// Add a line to `[server]`, e.g. `max_request_body_bytes = 1024`.
    pub(crate) fn server(mut self, line: &str) -> Cfg {
        self.server.push(line.to_owned());
        self
    }

    /// Add `[plugins.NAME]` loading `fixture`, followed by `extra` lines (grants, limits…).
    pub(crate) fn plugin(self, name: &str, fixture: Fixture, extra: &str) -> Cfg {
        let source = fixture.path();
        self.plugin_source(name, &source.to_string_lossy(), extra)
    }

    /// Add `[plugins.NAME]` with an arbitrary `source`.
    pub(crate) fn plugin_source(mut self, name: &str, source: &str, extra: &str) -> Cfg {
        let _ = write!(
            self.tables,
            "\n[plugins.{name}]\nsource = {}\n{}",
            toml_string(source),
            block(extra)
        );
        self
    }

    /// Add `[upstreams.NAME]` over `endpoints`, followed by `extra` lines.
    pub(crate) fn upstream(mut self, name: &str, endpoints: &[String], extra: &str) -> Cfg {
        let list: Vec<String> = endpoints.iter().map(|e| toml_string(e.as_str())).collect();
        let _ = write!(
            self.tables,
            "\n[upstreams.{name}]\nendpoints = [{}]\n{}",
            list.join(", "),
            block(extra)
        );
        self
    }

    /// Append TOML as written (typically `[[routes]]` tables).
    pub(crate) fn toml(mut self, text: &str) -> Cfg {
        self.tables.push('\n');
        self.tables.push_str(&block(text));
        self
    }

    /// The complete config text.
    pub(crate) fn render(&self) -> String {
        let mut text =
            String::from("[server]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n");
        let _ = writeln!(
            text,
            "cache_dir = {}",
            toml_string(&cache_dir().to_string_lossy())
        );
        for line in &self.server {
            let _ = writeln!(text, "{line}");
        }
        text.push_str(&self.tables);
        text
    }

    /// Write the config to `dir/gateway.toml`.
    pub(crate) fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, self.render())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Run `ficus check` on this config.
    pub(crate) fn check(&self) -> Checked {
        let dir = TempDir::new("check");
        let file = self.write(dir.path());
        let out = Command::new(FICUS)
            .arg("check")
            .arg("--config")
            .arg(&file)
            .current_dir(dir.path())
            .env("FICUS_LOG", &self.log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {FICUS}: {e}"));
        Checked {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
            text: self.render(),
            file,
            _dir: dir,
        }
    }
}

/// Indent-free block with a trailing newline.
fn block(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line.trim_start());
        out.push('\n');
    }
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    format!("{s:?}")
}

/// What `ficus check` said about a config.
#[derive(Debug)]
pub(crate) struct Checked {
    /// Exit code (`None`: killed by a signal).
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// The config text that was checked.
    pub(crate) text: String,
    /// Where it was written.
    pub(crate) file: PathBuf,
    _dir: TempDir,
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ficus check exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- {} ---\n{}",
            self.code,
            self.stdout,
            self.stderr,
            self.file.display(),
            numbered(&self.text)
        )
    }
}

/// `text` with line numbers, for failure messages about locations.
fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:>3} | {l}\n", i + 1))
        .collect()
}

/// Remove ANSI escape sequences (colours) from log text.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Why a gateway did not come up.
#[derive(Debug)]
pub(crate) struct Exited {
    /// Exit code, when it exited (`None`: timed out or killed by a signal).
    pub(crate) code: Option<i32>,
    pub(crate) stderr: String,
    reason: String,
}

impl fmt::Display for Exited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (exit code {:?})\n--- gateway stderr ---\n{}",
            self.reason, self.code, self.stderr
        )
    }
}

/// A running `ficus run`, killed on drop.
pub(crate) struct Gateway {
    child: Mutex<Child>,
    pid: u32,
    addr: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: TempDir,
}

impl Gateway {
    /// Start a gateway and wait until it listens; panics with its stderr when it does not.
    pub(crate) fn start(cfg: &Cfg) -> Gateway {
        Gateway::try_start(cfg).unwrap_or_else(|e| panic!("the gateway did not start: {e}"))
    }

    /// Start a gateway; `Err` when it exits (or stays silent) instead of listening.
    pub(crate) fn try_start(cfg: &Cfg) -> Result<Gateway, Exited> {
        let dir = TempDir::new("gateway");
        let config = cfg.write(dir.path());
        let mut child = Command::new(FICUS)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("FICUS_LOG", &cfg.log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {FICUS}: {e}"));
        let pid = child.id();
        leftovers::register(pid);

        let log = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let log = log.clone();
            let mut stderr = child.stderr.take().expect("stderr is piped");
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = strip_ansi(&String::from_utf8_lossy(&buf[..n]));
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            })
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ficus listening on ") {
                    let _ = ready_tx.send(line);
                }
            }
        });

        let failed = |mut child: Child, reason: String| {
            let status = wait_timeout(&mut child, Duration::from_secs(10)).or_else(|| {
                let _ = child.kill();
                child.wait().ok()
            });
            leftovers::unregister(pid);
            let _ = stderr_reader.join();
            let stderr = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Exited {
                code: status.and_then(|s| s.code()),
                stderr,
                reason,
            }
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => match parse_ready_line(&line) {
                Some((addr, admin)) => Ok(Gateway {
                    child: Mutex::new(child),
                    pid,
                    addr,
                    admin,
                    log,
                    _dir: dir,
                }),
                None => {
                    let _ = child.kill();
                    Err(failed(child, format!("unexpected ready line {line:?}")))
                }
            },
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                Err(failed(
                    child,
                    format!("no ready line within {START_TIMEOUT:?}"),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(failed(child, "exited before listening".into()))
            }
        }
    }

    /// The proxy listener.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<proxy>/<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request to the proxy listener.
    pub(crate) fn request(&self, method: &str, path: &str) -> Req {
        Req::new(method, self.url(path))
    }

    /// A GET to the proxy listener.
    pub(crate) fn get(&self, path: &str) -> Req {
        self.request("GET", path)
    }

    /// A GET to the admin listener.
    pub(crate) fn admin_get(&self, path: &str) -> Req {
        Req::new("GET", format!("http://{}{path}", self.admin))
    }

    /// A request to the admin listener (e.g. `POST /admin/reload`).
    pub(crate) fn admin_request(&self, method: &str, path: &str) -> Req {
        Req::new(method, format!("http://{}{path}", self.admin))
    }

    /// The process id (for signals and `/proc/PID`).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The config file the gateway runs with; rewriting it reloads the gateway.
    pub(crate) fn config_file(&self) -> PathBuf {
        self._dir.path().join("gateway.toml")
    }

    /// The Prometheus text of `/metrics`.
    pub(crate) async fn metrics(&self) -> String {
        let resp = self.admin_get("/metrics").send().await;
        assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
        resp.text()
    }

    /// Everything the gateway wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The log split into entries: a line starting with a timestamp begins an entry, lines
    /// that do not (a multi-line message such as a panic text) continue it.
    pub(crate) fn log_entries(&self) -> Vec<String> {
        let mut entries: Vec<String> = Vec::new();
        for line in self.stderr().lines() {
            let starts_entry = line.len() > 5
                && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && line.as_bytes()[4] == b'-';
            match entries.last_mut() {
                Some(last) if !starts_entry => {
                    last.push('\n');
                    last.push_str(line);
                }
                _ => entries.push(line.to_owned()),
            }
        }
        entries
    }

    /// Wait (up to 10 s) for a log entry that satisfies `pred`; returns it, or panics with
    /// `what` and the log.
    pub(crate) async fn wait_for_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LOG_TIMEOUT;
        loop {
            if let Some(entry) = self.log_entries().into_iter().find(|e| pred(e)) {
                return entry;
            }
            if Instant::now() > deadline {
                panic!(
                    "no log entry with {what} within {LOG_TIMEOUT:?}\n\
                     --- gateway stderr ---\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        matches!(child.try_wait(), Ok(None))
    }

    /// Send SIGTERM (graceful shutdown).
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM {} failed: {status}", self.pid);
    }

    /// Kill the process with SIGKILL (no shutdown at all) and wait until it is gone.
    pub(crate) async fn kill_9(&self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -KILL {} failed: {status}", self.pid);
        assert!(
            self.wait_exit(Duration::from_secs(10)).await.is_some(),
            "{} still runs 10 s after SIGKILL",
            self.pid
        );
    }

    /// Wait up to `timeout` for the process to exit.
    pub(crate) async fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
                if let Ok(Some(status)) = child.try_wait() {
                    leftovers::unregister(self.pid);
                    return Some(status);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A guard that prints the log written from now on if the test fails. Use it with a
    /// shared gateway (a gateway owned by the test prints its whole log when dropped during
    /// a failure).
    pub(crate) fn watch(&self) -> Watch<'_> {
        Watch {
            gateway: self,
            from: self.stderr().len(),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- gateway {} stderr ---\n{}--- end of gateway stderr ---",
                self.pid,
                self.stderr()
            );
        }
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
        leftovers::unregister(self.pid);
    }
}

/// See [`Gateway::watch`].
pub(crate) struct Watch<'a> {
    gateway: &'a Gateway,
    from: usize,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.gateway.stderr();
            let since = log.get(self.from..).unwrap_or(&log);
            eprintln!(
                "--- gateway {} stderr during this test (shared gateway: other tests' lines \
                 too) ---\n{since}--- end of gateway stderr ---",
                self.gateway.pid
            );
        }
    }
}

/// `ficus listening on http://A admin http://B` → (A, B).
fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["ficus", "listening", "on", proxy, "admin", admin] => Some((
            proxy.strip_prefix("http://")?.parse().ok()?,
            admin.strip_prefix("http://")?.parse().ok()?,
        )),
        _ => None,
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Something a module starts once and shares between its tests (a gateway and its
/// upstreams). It lives until the test binary exits; gateways still running then are killed
/// by an exit hook. A failed start is remembered, so later tests fail fast with its message.
pub(crate) struct Shared<T> {
    cell: OnceLock<Result<T, String>>,
    init: fn() -> T,
}

impl<T: Send + Sync> Shared<T> {
    pub(crate) const fn new(init: fn() -> T) -> Shared<T> {
        Shared {
            cell: OnceLock::new(),
            init,
        }
    }

    pub(crate) fn get(&'static self) -> &'static T {
        let result = self.cell.get_or_init(|| {
            std::panic::catch_unwind(AssertUnwindSafe(self.init)).map_err(|payload| {
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(non-string panic)".into())
            })
        });
        match result {
            Ok(value) => value,
            Err(message) => panic!("this module's shared gateway failed to start: {message}"),
        }
    }
}

/// Gateways that are still running when the test binary exits (shared ones are never
/// dropped) are killed by an `atexit` hook, by process id.
mod leftovers {
    use super::{Mutex, Once};
    use std::os::raw::c_int;

    static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    static HOOK: Once = Once::new();
    const SIGKILL: c_int = 9;

    extern "C" {
        fn atexit(callback: extern "C" fn()) -> c_int;
        fn kill(pid: c_int, signal: c_int) -> c_int;
    }

    extern "C" fn kill_leftovers() {
        if let Ok(pids) = PIDS.try_lock() {
            for &pid in pids.iter() {
                if let Ok(pid) = c_int::try_from(pid) {
                    // SAFETY: kill(2) with a process id of a child this process spawned and
                    // has not reaped (it is unregistered when reaped), so the id is not reused.
                    unsafe { kill(pid, SIGKILL) };
                }
            }
        }
    }

    pub(super) fn register(pid: u32) {
        HOOK.call_once(|| {
            // SAFETY: registers a plain `extern "C" fn()` that only reads a static.
            unsafe { atexit(kill_leftovers) };
        });
        PIDS.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
    }

    pub(super) fn unregister(pid: u32) {
        PIDS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&p| p != pid);
    }
}
