//! Real `nats-server` processes for tests: a single JetStream node or a
//! 3-node JetStream cluster, on free loopback ports, with their store in a
//! temporary directory, killed (and their directory removed) on drop.
//!
//! The binary is found through `FICUS_NATS_SERVER`, else
//! `target/nats/bin/nats-server` (installed by `scripts/nats-server`), else
//! `PATH`. A missing binary fails the test, it never skips it.
//!
//! This file depends on `std` only: host unit tests use it as
//! `crate::testing::nats_server`, and `tests/e2e` includes the same file with
//! `#[path]`, so there is one copy.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a server (or cluster) may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long, once every node is healthy, the JetStream meta leader may take
/// to see every other node current. A loaded 2-core CI machine once took 25 s.
const PEERS_TIMEOUT: Duration = Duration::from_secs(40);

/// How many times [`NatsServer::cluster`] starts a cluster afresh.
const CLUSTER_ATTEMPTS: usize = 3;
/// Starts of a single node, each on fresh ports, when a port it was given is
/// taken by another process before the server binds it.
const START_ATTEMPTS: usize = 3;

/// Whether a failed start was a port taken in the meantime (see
/// [`free_port`]).
fn port_taken(start_error: &str) -> bool {
    start_error.contains("address already in use")
}

/// What each node of a cluster that did not form says about itself: its
/// routes, its JetStream meta view and the end of its log.
fn cluster_report(servers: &[NatsServer]) -> String {
    let mut out = String::new();
    for s in servers {
        let routes = after(&s.monitor("/routez"), "\"num_routes\":")
            .and_then(|r| r.split(',').next())
            .unwrap_or("?")
            .to_string();
        let meta = after(&s.monitor("/jsz"), "\"meta_cluster\":")
            .map_or("(none)".to_string(), |m| m.chars().take(600).collect());
        let log = s.log();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        out.push_str(&format!(
            "--- {} (client {}, monitor {}): routes {routes}, meta {meta}\n{}\n",
            s.dir.display(),
            s.port,
            s.http_port,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    out
}

/// The part of `text` after the first `key`, if any.
fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_once(key).map(|(_, rest)| rest)
}

/// The `nats-server` binary to run: `FICUS_NATS_SERVER`, else
/// `target/nats/bin/nats-server`, else the one on `PATH`. Panics with what to
/// do when there is none.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FICUS_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FICUS_NATS_SERVER={} is not a file; run scripts/nats-server to install a nats-server",
            path.display()
        );
        return path;
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target/nats/bin/nats-server");
    if local.is_file() {
        return local;
    }
    if let Some(dirs) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&dirs) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "no nats-server found (FICUS_NATS_SERVER, {}, PATH): run scripts/nats-server to install \
         one (the NATS backend's tests need a real server >= 2.10.8)",
        local.display()
    );
}

/// A free loopback port (bound then released: another process may take it
/// in between; the servers started here then start again on fresh ports).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ficus-nats-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("nats scratch dir");
    dir
}

/// One running `nats-server -js`.
pub struct NatsServer {
    child: Option<Child>,
    /// Client URL, `nats://127.0.0.1:<port>`.
    pub url: String,
    /// Client port.
    pub port: u16,
    /// Monitoring port (`/healthz`).
    pub http_port: u16,
    /// Its directory: config, JetStream store and log.
    pub dir: PathBuf,
    /// The name of its cluster (unique per cluster); empty for a single node.
    pub cluster_name: String,
    config: PathBuf,
}

impl NatsServer {
    /// Start a single JetStream node and wait until it is ready.
    pub fn start() -> NatsServer {
        for _ in 1..START_ATTEMPTS {
            let mut server = NatsServer::spawn("n1", None);
            match server.wait_ready(Instant::now() + READY_TIMEOUT) {
                Ok(()) => return server,
                Err(e) if port_taken(&e) => {
                    eprintln!(
                        "nats_server: a port was taken before the server bound it; fresh ports"
                    )
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut server = NatsServer::spawn("n1", None);
        server.ready(Instant::now() + READY_TIMEOUT);
        server
    }

    /// Start `nodes` clustered JetStream nodes (routes on free loopback
    /// ports) and wait until every one is ready and the JetStream meta leader
    /// sees every other node current, so that streams can have `nodes`
    /// replicas. A cluster that does not form in time is torn down, its
    /// nodes' state is printed, and a new one is started on fresh ports (at
    /// most [`CLUSTER_ATTEMPTS`] times; then the test fails with the state).
    pub fn cluster(nodes: usize) -> Vec<NatsServer> {
        // One cluster forms at a time in a process: several forming at once on a 2-core
        // machine can leave a JetStream meta group without placeable peers for 25 s+.
        static FORMING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _forming = FORMING.lock().unwrap_or_else(|p| p.into_inner());
        let mut last_report = String::new();
        for attempt in 1..=CLUSTER_ATTEMPTS {
            let started = Instant::now();
            let (servers, formed) = NatsServer::spawn_cluster(nodes);
            if formed {
                if attempt > 1 || started.elapsed() > Duration::from_secs(10) {
                    eprintln!(
                        "nats_server: {nodes}-node cluster formed in {:?} (attempt {attempt})",
                        started.elapsed()
                    );
                }
                return servers;
            }
            last_report = cluster_report(&servers);
            eprintln!(
                "nats_server: attempt {attempt}: a node did not start (a port taken meanwhile) or \
                 the JetStream meta leader did not report {nodes} current peers within \
                 {PEERS_TIMEOUT:?}; node state:\n{last_report}"
            );
        }
        panic!(
            "nats_server: a {nodes}-node JetStream cluster did not form in {CLUSTER_ATTEMPTS} \
             attempts; the last one:\n{last_report}"
        );
    }

    /// One attempt of [`cluster`](NatsServer::cluster): start the nodes, wait
    /// until each is healthy, then up to [`PEERS_TIMEOUT`] until the meta
    /// leader reports every other node current. Also says whether it did.
    fn spawn_cluster(nodes: usize) -> (Vec<NatsServer>, bool) {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        // A name of its own: a node of another cluster (of this or an earlier test
        // process) that dials a reused route port is refused, not joined.
        let name = format!(
            "ficus-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let route_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut servers: Vec<NatsServer> = route_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let mut server = NatsServer::spawn(
                    &format!("n{}", i + 1),
                    Some(format!(
                        "cluster {{\n  name: {name}\n  listen: 127.0.0.1:{port}\n  routes: [{}]\n}}\n",
                        routes.join(", ")
                    )),
                );
                server.cluster_name = name.clone();
                server
            })
            .collect();
        let deadline = Instant::now() + READY_TIMEOUT;
        for s in &mut servers {
            match s.wait_ready(deadline) {
                Ok(()) => {}
                // Another process took a port between `free_port` and the
                // bind: a failed attempt, retried on fresh ports.
                Err(e) if port_taken(&e) => return (servers, false),
                Err(e) => panic!("{e}"),
            }
        }
        let peers_deadline = Instant::now() + PEERS_TIMEOUT;
        loop {
            if servers.iter().any(|s| s.meta_current_peers() + 1 >= nodes) {
                return (servers, true);
            }
            if Instant::now() >= peers_deadline {
                return (servers, false);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// On the JetStream meta leader: how many other nodes it sees current
    /// (only the leader's `/jsz` lists them; 0 elsewhere, or when the
    /// monitoring endpoint does not answer).
    fn meta_current_peers(&self) -> usize {
        after(&self.monitor("/jsz"), "\"meta_cluster\":")
            .map_or(0, |meta| meta.matches("\"current\":true").count())
    }

    /// `GET path` on the monitoring port, without whitespace (so JSON keys
    /// and values can be found as `"key":value`); "" when it does not answer.
    fn monitor(&self, path: &str) -> String {
        self.http_get(path)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect()
    }

    fn spawn(name: &str, cluster: Option<String>) -> NatsServer {
        let dir = scratch_dir();
        let port = free_port();
        let http_port = free_port();
        let config = dir.join("nats.conf");
        let store = dir.join("js");
        let text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n\
             max_payload: 8MB\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n{}",
            cluster.unwrap_or_default()
        );
        std::fs::write(&config, text).expect("write nats.conf");
        let mut server = NatsServer {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            http_port,
            dir,
            cluster_name: String::new(),
            config,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .expect("nats.log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("nats.log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary().display()));
        self.child = Some(child);
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// Wait until `/healthz` says the server (and JetStream) is ready; the
    /// error says why not, with the server's log.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if self.healthy() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                // Exited already: say why.
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "nats-server exited ({status}) at start; its log:\n{}",
                        self.log()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server on port {} not ready after {READY_TIMEOUT:?}; its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`wait_ready`](NatsServer::wait_ready), failing the test if it is not.
    fn ready(&mut self, deadline: Instant) {
        if let Err(e) = self.wait_ready(deadline) {
            panic!("{e}");
        }
    }

    fn healthy(&self) -> bool {
        let reply = self.http_get("/healthz");
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
    }

    /// `GET path` on the monitoring port: the raw reply ("" when none).
    fn http_get(&self, path: &str) -> String {
        let addr: SocketAddr = ([127, 0, 0, 1], self.http_port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        if s.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }

    /// Kill the server now (SIGKILL), keeping its store for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again (same ports, same store) after [`kill`], and
    /// wait until it is ready.
    ///
    /// [`kill`]: NatsServer::kill
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
        self.ready(Instant::now() + READY_TIMEOUT);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
