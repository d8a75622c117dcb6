//! Hot reload: rebuild a gateway generation off the request path and swap
//! it in atomically, or change nothing.
//!
//! Triggers: a debounced file watcher on the config file and every plugin
//! file it names, `POST /admin/reload`, and SIGHUP. A reload validates the
//! config, loads plugins through the compile cache, instantiates and
//! configures every new or changed pipeline step; only if all of it
//! succeeds is the new generation stored in the `ArcSwap`. Requests in
//! flight keep the generation they started with (they hold an `Arc` of it)
//! and it is dropped when the last one finishes. Unchanged steps, handlers
//! and clusters are carried over with their warm instances and connection
//! pools (see [`Gateway::build`]).

use crate::capability::Services;
use crate::gateway::{BuildStats, Gateway};
use crate::plugin::engine::PluginEngine;
use arc_swap::ArcSwap;
use ficus_config::Config;
use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The file watcher saw the config or a plugin file change.
    Watch,
    /// `POST /admin/reload`.
    Admin,
    /// SIGHUP.
    Signal,
}

/// The outcome of the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// What started it.
    pub trigger: Trigger,
    /// When it finished (Unix milliseconds).
    pub finished_unix_ms: u64,
    /// How long it took.
    pub duration_ms: f64,
    /// Whether a new generation was swapped in.
    pub ok: bool,
    /// The errors, one per line, when it failed.
    pub error: Option<String>,
    /// What was reused and built.
    pub stats: Option<BuildStats>,
}

/// Reload state shown at `/admin/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// Number of the serving generation (1 = the one built at start).
    pub generation: u64,
    /// When the serving generation was loaded (Unix milliseconds).
    pub loaded_unix_ms: u64,
    /// Successful reloads since start.
    pub reloads_ok: u64,
    /// Failed reloads since start.
    pub reloads_failed: u64,
    /// The last reload attempt, if any.
    pub last_reload: Option<ReloadOutcome>,
    /// The last failed reload's error, if any.
    pub last_error: Option<String>,
}

/// Settings that take effect only at start (listeners, engine, backend).
#[derive(Debug, Clone, PartialEq)]
struct Fixed(Vec<(&'static str, String)>);

impl Fixed {
    fn of(c: &Config) -> Fixed {
        let s = &c.server;
        Fixed(vec![
            ("server.listen", s.listen.to_string()),
            ("server.admin", s.admin.to_string()),
            (
                "server.admin_token",
                if s.admin_token.is_some() {
                    "(set)".into()
                } else {
                    "(unset)".into()
                },
            ),
            ("server.max_header_bytes", s.max_header_bytes.to_string()),
            ("server.max_headers", s.max_headers.to_string()),
            ("server.http2", s.http2.to_string()),
            ("server.shutdown_grace_ms", s.shutdown_grace_ms.to_string()),
            (
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms.to_string(),
            ),
            (
                "server.cache_dir",
                c.resolve(&s.cache_dir).display().to_string(),
            ),
            (
                "server.max_plugin_instances",
                s.max_plugin_instances.to_string(),
            ),
            ("backend.kind", c.backend.kind.as_str().to_string()),
            ("backend.servers", c.backend.servers.join(", ")),
            (
                "backend.credentials",
                c.backend
                    .credentials
                    .as_ref()
                    .map(|p| c.resolve(p).display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "backend.events_stream",
                c.backend.events_stream().to_string(),
            ),
            (
                "backend.readmodels_stream",
                c.backend.readmodels_stream().to_string(),
            ),
            ("backend.replicas", c.backend.replicas().to_string()),
            (
                "backend.data_dir",
                c.resolve(&c.backend.data_dir).display().to_string(),
            ),
            (
                "pubsub.max_message_bytes",
                c.pubsub.max_message_bytes.to_string(),
            ),
            // Subscriptions own durable queues and running workers: changing
            // them (or adding/removing one) needs a restart.
            (
                "subscriptions",
                serde_json::to_string(&c.subscriptions).unwrap_or_default(),
            ),
            // The elector and the tick schedulers start with the process:
            // election settings, ticks and the plugins ticks run (settings
            // and file contents) need a restart.
            (
                "leader",
                serde_json::to_string(&c.leader).unwrap_or_default(),
            ),
            ("ticks", ticks_fingerprint(c)),
            // Projections run from start to stop, and so do their plugins.
            ("projections", projections_fingerprint(c)),
        ])
    }

    /// Describe what changed, if anything.
    fn changes(&self, new: &Fixed) -> Vec<String> {
        self.0
            .iter()
            .zip(&new.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, b)| format!("{} changed from {} to {}", a.0, a.1, b.1))
            .collect()
    }
}

/// The settings and a hash of the file of each named plugin, as text to
/// compare.
fn plugins_fingerprint<'a>(
    c: &'a Config,
    names: impl Iterator<Item = &'a str>,
) -> std::collections::BTreeMap<&'a str, (String, String)> {
    use sha2::{Digest, Sha256};
    names
        .filter_map(|n| c.plugins.get_key_value(n))
        .map(|(name, p)| {
            let file = std::fs::read(c.resolve(&p.source))
                .map(|bytes| hex::encode(Sha256::digest(bytes)))
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            let settings = serde_json::to_string(p).unwrap_or_default();
            (name.as_str(), (settings, file))
        })
        .collect()
}

/// The ticks and, for each plugin a tick runs, its settings and a hash of
/// its file, as text to compare.
fn ticks_fingerprint(c: &Config) -> String {
    let plugins = plugins_fingerprint(c, c.ticks.iter().map(|t| t.plugin.as_str()));
    serde_json::json!({ "ticks": c.ticks, "plugins": plugins }).to_string()
}

/// The projections and their plugins, as [`ticks_fingerprint`].
fn projections_fingerprint(c: &Config) -> String {
    let plugins = plugins_fingerprint(c, c.projections.iter().map(|p| p.plugin.as_str()));
    serde_json::json!({ "projections": c.projections, "plugins": plugins }).to_string()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Owns the serving generation and performs reloads.
pub struct Reloader {
    config_path: PathBuf,
    engine: Arc<PluginEngine>,
    services: Services,
    gateway: Arc<ArcSwap<Gateway>>,
    fixed: Fixed,
    status: Mutex<ReloadStatus>,
    watched: Mutex<HashSet<PathBuf>>,
    watcher: Mutex<Option<Watching>>,
    serial: tokio::sync::Mutex<()>,
}

/// The file watcher and the directories it watches.
struct Watching {
    watcher: notify::RecommendedWatcher,
    dirs: HashSet<PathBuf>,
}

impl Watching {
    /// Watch the parent directory of every path not yet covered. Directories
    /// rather than files: editors and deploy tools replace files by
    /// renaming, which a watch on the file itself would lose.
    fn cover(&mut self, paths: &HashSet<PathBuf>) {
        for path in paths {
            let Some(dir) = path.parent() else { continue };
            if self.dirs.contains(dir) {
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir.to_path_buf());
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch for changes: {e}"),
            }
        }
    }
}

impl Reloader {
    /// Wrap the generation built at start from `config`.
    pub fn new(
        config: &Config,
        config_path: &Path,
        engine: Arc<PluginEngine>,
        services: Services,
        gateway: Gateway,
    ) -> Reloader {
        let reloader = Reloader {
            config_path: config_path.to_path_buf(),
            engine,
            services,
            gateway: Arc::new(ArcSwap::from_pointee(gateway)),
            fixed: Fixed::of(config),
            status: Mutex::new(ReloadStatus {
                generation: 1,
                loaded_unix_ms: unix_ms(SystemTime::now()),
                reloads_ok: 0,
                reloads_failed: 0,
                last_reload: None,
                last_error: None,
            }),
            watched: Mutex::new(HashSet::new()),
            watcher: Mutex::new(None),
            serial: tokio::sync::Mutex::new(()),
        };
        reloader.set_watched(config);
        reloader
    }

    /// The serving generation (swapped atomically by reloads).
    pub fn gateway(&self) -> Arc<ArcSwap<Gateway>> {
        self.gateway.clone()
    }

    /// A snapshot of the reload state.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_watched(&self, config: &Config) {
        let mut set = HashSet::new();
        set.insert(normalise(&self.config_path));
        for p in config.plugins.values() {
            set.insert(normalise(&config.resolve(&p.source)));
            if let Some(canary) = &p.canary {
                set.insert(normalise(&config.resolve(&canary.source)));
            }
        }
        if let Some(w) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            w.cover(&set);
        }
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = set;
    }

    fn watched(&self) -> HashSet<PathBuf> {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reload now. Reloads are serialised; on failure nothing changes and
    /// the error (every problem found, one per line) is returned, logged
    /// and recorded for `/admin/status`.
    pub async fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let _serial = self.serial.lock().await;
        let started = Instant::now();
        let result = self.try_reload().await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match result {
            Ok(stats) => {
                status.generation += 1;
                status.loaded_unix_ms = unix_ms(SystemTime::now());
                status.reloads_ok += 1;
                tracing::info!(
                    ?trigger,
                    generation = status.generation,
                    duration_ms,
                    steps_reused = stats.steps_reused,
                    steps_built = stats.steps_built,
                    compiled = stats.compiled,
                    "reloaded"
                );
                metrics::counter!("ficus_reloads_total", "result" => "ok").increment(1);
                ReloadOutcome {
                    trigger,
                    finished_unix_ms: unix_ms(SystemTime::now()),
                    duration_ms,
                    ok: true,
                    error: None,
                    stats: Some(stats),
                }
            }
            Err(error) => {
                status.reloads_failed += 1;
                status.last_error = Some(error.clone());
                tracing::error!(
                    ?trigger,
                    "reload failed; the previous generation keeps serving:\n{error}"
                );
                metrics::counter!("ficus_reloads_total", "result" => "error").increment(1);
                ReloadOutcome {
                    trigger,
                    finished_unix_ms: unix_ms(SystemTime::now()),
                    duration_ms,
                    ok: false,
                    error: Some(error),
                    stats: None,
                }
            }
        };
        metrics::gauge!("ficus_generation").set(status.generation as f64);
        status.last_reload = Some(outcome.clone());
        outcome
    }

    async fn try_reload(&self) -> Result<BuildStats, String> {
        let config = ficus_config::load(&self.config_path).map_err(|e| e.to_string())?;
        let changes = self.fixed.changes(&Fixed::of(&config));
        if !changes.is_empty() {
            return Err(format!(
                "{}: {}; these settings apply only at start: restart ficus to change them",
                self.config_path.display(),
                changes.join(", ")
            ));
        }
        let current = self.gateway.load_full();
        let (gateway, stats) =
            Gateway::build(&config, &self.engine, &self.services, Some(&current))
                .await
                .map_err(|e| e.to_string())?;
        self.gateway.store(Arc::new(gateway));
        self.set_watched(&config);
        Ok(stats)
    }

    /// Watch the config file and plugin files (and, after each reload, the
    /// files the new config names); reload, debounced, when one of them
    /// changes. The watcher lives as long as the reloader.
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for path in event.paths {
                    let _ = tx.send(path);
                }
            }
        })?;
        let mut watching = Watching {
            watcher,
            dirs: HashSet::new(),
        };
        watching.cover(&self.watched());
        *self.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watching);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut paths = vec![first];
                // Debounce: collect the burst of events of one save/deploy.
                let until = tokio::time::Instant::now() + Duration::from_millis(30);
                while let Ok(Some(p)) = tokio::time::timeout_at(until, rx.recv()).await {
                    paths.push(p);
                }
                let Some(me) = me.upgrade() else { break };
                let watched = me.watched();
                if paths.iter().any(|p| watched.contains(&normalise(p))) {
                    me.reload(Trigger::Watch).await;
                }
            }
        });
        Ok(())
    }
}

/// An absolute, lexically normalised path (files may not exist yet, so no
/// canonicalisation of the file itself; the directory is canonicalised).
fn normalise(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => match dir.canonicalize() {
            Ok(dir) => dir.join(name),
            Err(_) => abs,
        },
        _ => abs,
    }
}
