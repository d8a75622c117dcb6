//! Projections: each `[[projections]]` entry folds the event store into the
//! read model named after it, on the leader of its election group only.
//!
//! One task per projection. While this node leads the group, the task reads
//! the events past the model's checkpoint (a catch-up [`Subscription`] that
//! then follows live appends), hands each to the plugin's `on-event`, and
//! commits a batch's read-model writes **together with the checkpoint** (the
//! global position of the batch's last event) in one transaction. After a
//! crash it resumes from the committed checkpoint: no event is applied twice
//! or skipped. An event whose `on-event` fails stops the projection at that
//! event (the events before it in the batch are committed) and is retried
//! with doubling backoff; `/admin/projections` shows the error.
//!
//! When the task gains leadership it calls [`ReadModels::sync`] before
//! reading the checkpoints: on a shared backend (NATS) that waits until this
//! node's copy of the read models reflects every write made so far, and
//! makes this node the model's writer. A commit refused as stale (another
//! node wrote the model meanwhile) makes the task reload the checkpoints,
//! and sync again, before it goes on.
//!
//! **Rebuild** (`POST /admin/projections/{name}/rebuild`) starts a new
//! generation of the model, empty, and replays every event into it from
//! position 1 with a second instance of the plugin, while the active
//! generation keeps answering queries *and* keeps following live events.
//! When the new generation has caught up with the head, it becomes the
//! active one in one transaction (the old one is dropped) and carries on
//! live. A rebuild interrupted by a crash resumes from its own checkpoint.

use crate::capability::events::{EventStore, Filter, RecordedEvent, Subscription};
use crate::capability::leader::Elector;
use crate::capability::readmodel::{ReadModelError, ReadModels};
use crate::capability::Services;
use crate::gateway::grants_of;
use crate::lock;
use crate::plugin::bindings::projection_world::RecordedEvent as WitEvent;
use crate::plugin::ctx::Capabilities;
use crate::plugin::engine::PluginEngine;
use crate::plugin::projection::{ProjectionPlugin, ProjectionSettings};
use crate::plugin::PluginError;
use ficus_config::{Config, ConfigErrors};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// One `[[projections]]` entry, resolved.
#[derive(Debug, Clone)]
pub struct ProjectionSpec {
    /// Projection (and model) name.
    pub name: Arc<str>,
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Election group whose leader runs it.
    pub group: String,
    /// Which events it sees.
    pub filter: Filter,
    /// Most events per transaction.
    pub batch: usize,
    /// First retry delay of a failing event.
    pub retry: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// A projection ready to run: its spec and linked plugin.
pub struct Prepared {
    spec: ProjectionSpec,
    plugin: ProjectionPlugin,
}

/// Build every `[[projections]]` entry of `config`: link, instantiate and
/// configure its plugin. Errors are located at `projections[i].plugin` or
/// `projections[i].config`.
pub async fn build_projections(
    config: &Config,
    engine: &PluginEngine,
    services: &Services,
) -> Result<Vec<Prepared>, ConfigErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, p) in config.projections.iter().enumerate() {
        let Some(pc) = config.plugins.get(&p.plugin) else {
            continue; // reported by validation
        };
        let Ok(loaded) = engine.load(&config.resolve(&pc.source)) else {
            continue; // reported by Gateway::build
        };
        let caps = Arc::new(Capabilities::new(
            &p.plugin,
            &format!("projection:{}", p.name),
            services,
        ));
        let settings = ProjectionSettings {
            model: p.name.as_str().into(),
            config_json: p.config_json(),
            timeout: Duration::from_millis(pc.timeout_ms),
            memory_limit: pc.memory_limit_bytes as usize,
            grants: grants_of(&pc.grants),
        };
        match ProjectionPlugin::new(engine, &loaded.component, &p.plugin, settings, caps).await {
            Ok(plugin) => out.push(Prepared {
                spec: ProjectionSpec {
                    name: p.name.as_str().into(),
                    plugin: p.plugin.as_str().into(),
                    group: p.group.clone(),
                    filter: Filter {
                        stream_prefix: p.stream_prefix.clone(),
                        event_types: p.event_types.clone(),
                    },
                    batch: p.batch as usize,
                    retry: Duration::from_millis(p.retry_ms),
                    retry_max: Duration::from_millis(p.retry_max_ms),
                },
                plugin,
            }),
            Err(e) => {
                let at = match e {
                    PluginError::Rejected(_) => format!("projections[{i}].config"),
                    _ => format!("projections[{i}].plugin"),
                };
                errors.push(config.error_at(
                    &at,
                    format!("plugin \"{}\" in projection \"{}\": {e}", p.plugin, p.name),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// What `/admin/projections` shows of one projection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionStatus {
    /// Projection (and model) name.
    pub name: String,
    /// Plugin name.
    pub plugin: String,
    /// Election group.
    pub group: String,
    /// `starting`, `running` (leader, applying or caught up), `stalled`
    /// (an event keeps failing), or `standby` (another node leads).
    pub state: &'static str,
    /// Active generation of the model.
    pub generation: u64,
    /// Global position of the last event committed into the active model.
    pub checkpoint: u64,
    /// The event store's head when last looked at.
    pub head: u64,
    /// Events applied by this process since it started.
    pub applied: u64,
    /// The last failure, if the projection is stalled.
    pub last_error: Option<String>,
    /// A rebuild in progress.
    pub rebuild: Option<RebuildStatus>,
    /// The last rebuild this process finished.
    pub last_rebuild: Option<RebuildStatus>,
}

/// A rebuild's progress.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildStatus {
    /// The generation being built.
    pub generation: u64,
    /// Its checkpoint.
    pub checkpoint: u64,
    /// Events applied into it.
    pub applied: u64,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How long it has run (or took), in milliseconds.
    pub elapsed_ms: u64,
    /// Events applied per second.
    pub events_per_sec: f64,
    /// The last failure, if it is stalled.
    pub last_error: Option<String>,
}

/// Why a rebuild could not start.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No such projection.
    #[error("unknown projection {name:?} (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The configured ones.
        known: String,
    },
    /// One is already running.
    #[error("projection {0:?} is already rebuilding (see GET /admin/projections)")]
    Running(String),
    /// This node does not lead the projection's group.
    #[error("this node does not lead group {group:?}, which runs projection {name:?}: send the rebuild to the leader (GET /admin/leader)")]
    NotLeader {
        /// Projection.
        name: String,
        /// Its group.
        group: String,
    },
    /// The read-model store failed.
    #[error("{0}")]
    Store(#[from] ReadModelError),
    /// The projection's task has stopped.
    #[error("projection {0:?} is shutting down")]
    Stopped(String),
}

enum Command {
    Rebuild(oneshot::Sender<Result<u64, RebuildError>>),
}

struct Handle {
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<ProjectionStatus>>,
}

/// The running projections of this process.
pub struct Projections {
    handles: BTreeMap<String, Handle>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Projections {
    /// Start one task per projection.
    pub fn start(
        prepared: Vec<Prepared>,
        elector: Arc<Elector>,
        events: Arc<dyn EventStore>,
        models: Arc<dyn ReadModels>,
    ) -> Projections {
        let (stop, _) = watch::channel(false);
        let mut handles = BTreeMap::new();
        let mut tasks = Vec::new();
        for p in prepared {
            let status = Arc::new(Mutex::new(ProjectionStatus {
                name: p.spec.name.to_string(),
                plugin: p.spec.plugin.to_string(),
                group: p.spec.group.clone(),
                state: "starting",
                generation: 0,
                checkpoint: 0,
                head: 0,
                applied: 0,
                last_error: None,
                rebuild: None,
                last_rebuild: None,
            }));
            let (tx, rx) = mpsc::channel(8);
            handles.insert(
                p.spec.name.to_string(),
                Handle {
                    commands: tx,
                    status: status.clone(),
                },
            );
            let runner = Runner {
                live: Worker::new(p.plugin, &p.spec, events.clone(), 1, 0),
                spec: p.spec,
                rebuild: None,
                events: events.clone(),
                models: models.clone(),
                elector: elector.clone(),
                status,
                leading: false,
                last_rebuild: None,
            };
            tasks.push(tokio::spawn(runner.run(rx, stop.subscribe())));
        }
        Projections {
            handles,
            stop,
            tasks: Mutex::new(tasks),
        }
    }

    /// No projections (nothing configured).
    pub fn none() -> Projections {
        let (stop, _) = watch::channel(false);
        Projections {
            handles: BTreeMap::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The status of every projection, by name.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        self.handles
            .values()
            .map(|h| lock(&h.status).clone())
            .collect()
    }

    /// Start rebuilding `name`; returns the generation being built.
    pub async fn rebuild(&self, name: &str) -> Result<u64, RebuildError> {
        let Some(handle) = self.handles.get(name) else {
            return Err(RebuildError::Unknown {
                name: name.to_owned(),
                known: if self.handles.is_empty() {
                    "none: no [[projections]] are configured".to_owned()
                } else {
                    self.handles.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        };
        let (tx, rx) = oneshot::channel();
        handle
            .commands
            .send(Command::Rebuild(tx))
            .await
            .map_err(|_| RebuildError::Stopped(name.to_owned()))?;
        rx.await
            .map_err(|_| RebuildError::Stopped(name.to_owned()))?
    }

    /// Stop every projection after the batch in hand is committed.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn to_wit(e: RecordedEvent) -> WitEvent {
    WitEvent {
        stream_id: e.stream,
        version: e.version,
        position: e.position,
        id: e.id,
        event_type: e.event_type,
        data: e.data,
        metadata: e.metadata,
        recorded_ms: e.recorded_ms,
    }
}

/// Applies events to one generation of the model.
struct Worker {
    plugin: ProjectionPlugin,
    generation: u64,
    /// Last committed position.
    checkpoint: u64,
    sub: Subscription<dyn EventStore>,
    filter: Filter,
    /// When a failed event may be retried, and the next delay.
    retry: Option<(Instant, Duration)>,
    last_error: Option<String>,
    /// The last commit was refused as stale: the model moved under this
    /// writer (another node wrote it), so the runner reloads it.
    stale: bool,
    applied: u64,
    started: Instant,
    started_ms: u64,
}

/// What one step did.
enum Step {
    /// Applied (or tried to apply) events.
    Worked,
    /// Nothing to do now; retry a failure at this instant, if any.
    Idle(Option<Instant>),
}

impl Worker {
    fn new(
        plugin: ProjectionPlugin,
        spec: &ProjectionSpec,
        events: Arc<dyn EventStore>,
        generation: u64,
        checkpoint: u64,
    ) -> Worker {
        Worker {
            plugin,
            generation,
            checkpoint,
            sub: Subscription::new(events, checkpoint + 1, spec.filter.clone()),
            filter: spec.filter.clone(),
            retry: None,
            last_error: None,
            stale: false,
            applied: 0,
            started: Instant::now(),
            started_ms: now_ms(),
        }
    }

    /// Forget buffered events and read again after the checkpoint.
    fn reset(&mut self, events: &Arc<dyn EventStore>, generation: u64, checkpoint: u64) {
        self.generation = generation;
        self.checkpoint = checkpoint;
        self.sub = Subscription::new(events.clone(), checkpoint + 1, self.filter.clone());
    }

    fn fail(&mut self, spec: &ProjectionSpec, events: &Arc<dyn EventStore>, error: String) {
        let delay = self.retry.map_or(spec.retry, |(_, d)| d);
        tracing::warn!(projection = %spec.name, plugin = %spec.plugin, generation = self.generation,
            retry_in_ms = delay.as_millis() as u64, "projection stalled: {error}");
        self.last_error = Some(error);
        self.retry = Some((Instant::now() + delay, (delay * 2).min(spec.retry_max)));
        // Events read after the failed one are read again after it.
        let (g, c) = (self.generation, self.checkpoint);
        self.reset(events, g, c);
    }

    async fn step(
        &mut self,
        spec: &ProjectionSpec,
        events: &Arc<dyn EventStore>,
        models: &Arc<dyn ReadModels>,
    ) -> Step {
        if let Some((at, _)) = self.retry {
            if Instant::now() < at {
                return Step::Idle(Some(at));
            }
        }
        let batch = match self.sub.ready(spec.batch).await {
            Ok(b) => b,
            Err(e) => {
                self.fail(spec, events, format!("reading events: {e}"));
                return Step::Worked;
            }
        };
        if batch.is_empty() {
            return Step::Idle(None);
        }
        let mut applying = self.plugin.begin(self.generation);
        let mut last_ok = None;
        let mut applied = 0u64;
        let mut failed = None;
        for event in batch.into_iter().map(to_wit) {
            match applying.apply(&event).await {
                Ok(()) => {
                    last_ok = Some(event.position);
                    applied += 1;
                }
                Err(e) => {
                    failed = Some(format!(
                        "event {} (stream {}, version {}, type {}) at position {}: {e}",
                        event.id, event.stream_id, event.version, event.event_type, event.position
                    ));
                    break;
                }
            }
        }
        let writes = applying.into_writes();
        let count = |result: &'static str, n: u64| {
            ::metrics::counter!("ficus_projection_events_total",
                "projection" => spec.name.to_string(), "result" => result)
            .increment(n);
        };
        if let Some(position) = last_ok {
            let n = applied;
            match models
                .commit(&spec.name, self.generation, writes, position)
                .await
            {
                Ok(()) => {
                    self.checkpoint = position;
                    self.applied += n;
                    count("ok", n);
                }
                Err(e) => {
                    count("commit_failed", n);
                    self.stale = matches!(e, ReadModelError::Stale(_));
                    self.fail(spec, events, format!("committing the read model: {e}"));
                    return Step::Worked;
                }
            }
        }
        match failed {
            Some(error) => {
                count("failed", 1);
                self.fail(spec, events, error);
            }
            None => {
                self.retry = None;
                self.last_error = None;
            }
        }
        Step::Worked
    }

    /// Whether every stored event has been applied (nothing buffered, the
    /// cursor past `head`, no failure pending).
    fn caught_up(&self, head: u64) -> bool {
        self.retry.is_none() && !self.sub.has_buffered() && self.sub.cursor() > head
    }

    fn rebuild_status(&self) -> RebuildStatus {
        let elapsed = self.started.elapsed();
        RebuildStatus {
            generation: self.generation,
            checkpoint: self.checkpoint,
            applied: self.applied,
            started_ms: self.started_ms,
            elapsed_ms: elapsed.as_millis() as u64,
            events_per_sec: if elapsed.as_secs_f64() > 0.0 {
                self.applied as f64 / elapsed.as_secs_f64()
            } else {
                0.0
            },
            last_error: self.last_error.clone(),
        }
    }
}

struct Runner {
    spec: ProjectionSpec,
    live: Worker,
    rebuild: Option<Worker>,
    events: Arc<dyn EventStore>,
    models: Arc<dyn ReadModels>,
    elector: Arc<Elector>,
    status: Arc<Mutex<ProjectionStatus>>,
    leading: bool,
    last_rebuild: Option<RebuildStatus>,
}

impl Runner {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            if self.elector.term_if_leader(&self.spec.group).is_none() {
                self.leading = false;
                self.publish("standby", 0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => {}
                    Some(cmd) = commands.recv() => self.command(cmd).await,
                }
                continue;
            }
            if !self.leading {
                // Another node may have advanced the model while this one
                // did not lead: start again from what is committed.
                if let Err(e) = self.resume().await {
                    tracing::warn!(projection = %self.spec.name, "cannot read the read model's checkpoints: {e}");
                    self.publish("stalled", 0);
                    tokio::select! {
                        _ = tokio::time::sleep(self.spec.retry) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                self.leading = true;
            }
            let mut worked = false;
            let mut wake: Option<Instant> = None;
            let head = self.events.head().await.unwrap_or(0);
            if let Some(rebuild) = self.rebuild.as_mut() {
                match rebuild.step(&self.spec, &self.events, &self.models).await {
                    Step::Worked => worked = true,
                    Step::Idle(at) => wake = at,
                }
                if rebuild.caught_up(head) {
                    self.switch().await;
                }
            }
            match self.live.step(&self.spec, &self.events, &self.models).await {
                Step::Worked => worked = true,
                Step::Idle(at) => wake = wake.into_iter().chain(at).min(),
            }
            let stale = self.live.stale || self.rebuild.as_ref().is_some_and(|r| r.stale);
            if stale {
                // Another node wrote the model: reload the checkpoints (and
                // take over again as its writer, if this node still leads).
                self.live.stale = false;
                if let Some(r) = self.rebuild.as_mut() {
                    r.stale = false;
                }
                self.leading = false;
            }
            let state = if self.live.last_error.is_some() {
                "stalled"
            } else {
                "running"
            };
            self.publish(state, head);
            if worked {
                continue;
            }
            let until = wake.map_or(Duration::from_secs(1), |at| {
                at.saturating_duration_since(Instant::now())
            });
            let after = self.rebuild.as_ref().map_or(self.live.sub.cursor(), |r| {
                r.sub.cursor().min(self.live.sub.cursor())
            });
            let events = self.events.clone();
            tokio::select! {
                _ = events.wait_past(after.saturating_sub(1), until) => {}
                _ = tokio::time::sleep(until) => {}
                _ = stop.changed() => {}
                Some(cmd) = commands.recv() => self.command(cmd).await,
            }
        }
        self.publish("stopped", 0);
    }

    /// Load the committed checkpoints (and an unfinished rebuild).
    async fn resume(&mut self) -> Result<(), ReadModelError> {
        self.models.sync(&self.spec.name).await?;
        let g = self.models.generations(&self.spec.name).await?;
        self.live.reset(&self.events, g.active, g.checkpoint);
        match g.building {
            Some((generation, checkpoint)) => match self.rebuild.as_mut() {
                Some(r) => r.reset(&self.events, generation, checkpoint),
                None => match self.live.plugin.sibling().await {
                    Ok(plugin) => {
                        tracing::info!(projection = %self.spec.name, generation, checkpoint,
                            "resuming an unfinished rebuild");
                        self.rebuild = Some(Worker::new(
                            plugin,
                            &self.spec,
                            self.events.clone(),
                            generation,
                            checkpoint,
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(projection = %self.spec.name, "cannot resume the rebuild: {e}")
                    }
                },
            },
            None => self.rebuild = None,
        }
        Ok(())
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Rebuild(reply) => {
                let _ = reply.send(self.start_rebuild().await);
            }
        }
    }

    async fn start_rebuild(&mut self) -> Result<u64, RebuildError> {
        if self.rebuild.is_some() {
            return Err(RebuildError::Running(self.spec.name.to_string()));
        }
        if self.elector.term_if_leader(&self.spec.group).is_none() {
            return Err(RebuildError::NotLeader {
                name: self.spec.name.to_string(),
                group: self.spec.group.clone(),
            });
        }
        let plugin = self.live.plugin.sibling().await.map_err(|e| {
            RebuildError::Store(ReadModelError::Unavailable(format!(
                "cannot make a plugin instance for the rebuild: {e}"
            )))
        })?;
        let generation = self.models.begin_rebuild(&self.spec.name).await?;
        tracing::info!(projection = %self.spec.name, generation, "rebuild started");
        self.rebuild = Some(Worker::new(
            plugin,
            &self.spec,
            self.events.clone(),
            generation,
            0,
        ));
        Ok(generation)
    }

    /// The rebuilt generation has caught up: make it the active one.
    async fn switch(&mut self) {
        let Some(rebuild) = self.rebuild.take() else {
            return;
        };
        match self
            .models
            .activate(&self.spec.name, rebuild.generation)
            .await
        {
            Ok(()) => {
                let status = rebuild.rebuild_status();
                tracing::info!(projection = %self.spec.name, generation = status.generation,
                    events = status.applied, ms = status.elapsed_ms,
                    events_per_sec = status.events_per_sec as u64, "rebuild finished: the new generation is active");
                self.last_rebuild = Some(status);
                let applied = self.live.applied;
                self.live = rebuild;
                self.live.applied += applied;
            }
            Err(e) => {
                tracing::warn!(projection = %self.spec.name, "cannot activate the rebuilt model: {e}");
                self.rebuild = Some(rebuild);
            }
        }
    }

    fn publish(&self, state: &'static str, head: u64) {
        let mut s = lock(&self.status);
        s.state = state;
        s.generation = self.live.generation;
        s.checkpoint = self.live.checkpoint;
        if head > 0 {
            s.head = head;
        }
        s.applied = self.live.applied;
        s.last_error = self.live.last_error.clone();
        s.rebuild = self.rebuild.as_ref().map(Worker::rebuild_status);
        s.last_rebuild = self.last_rebuild.clone();
        ::metrics::gauge!("ficus_projection_checkpoint", "projection" => self.spec.name.to_string())
            .set(self.live.checkpoint as f64);
    }
}
