//! Tick plugins (components exporting `ficus:gateway/tick-hooks`) and their
//! scheduler: cluster-wide cron.
//!
//! Every node builds every `[[ticks]]` entry at start (so a bad plugin or
//! config fails there and in `ficus check`), and runs one scheduler task per
//! tick. At each `every` the task asks the elector whether this node holds
//! a valid lease for the tick's group, right before the call; only then does
//! `on-tick` run, with the group, the term (fencing token) and the time the
//! tick was due. A tick never overlaps itself: the task awaits the call
//! before waiting for the next interval, and intervals missed meanwhile are
//! skipped. An `err`, trap, timeout or memory failure is logged and counted
//! in `ficus_tick_total{tick,result}`; a failed instance is replaced and the
//! next tick runs as usual.

use super::bindings::tick_world::{Tick, TickInfo, TickPre};
use super::ctx::{arm, classify, instantiation_error, new_store, Capabilities, PluginCtx};
use super::engine::PluginEngine;
use super::linker::{check_imports, filter_linker};
use super::{Grants, Hook, PluginError};
use crate::capability::events::fence::Fence;
use crate::capability::leader::{unix_now_ms, Elector};
use crate::capability::Services;
use crate::gateway::grants_of;
use ficus_config::{Config, ConfigErrors};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use wasmtime::component::Component;
use wasmtime::Store;

/// One `[[ticks]]` entry, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TickSpec {
    /// Tick name.
    pub name: Arc<str>,
    /// Plugin name (`[plugins.NAME]`).
    pub plugin: Arc<str>,
    /// Election group whose leader runs it.
    pub group: String,
    /// Interval.
    pub every: Duration,
    /// The tick's `config`, as JSON text.
    pub config_json: String,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Per-instance memory limit.
    pub memory_limit: usize,
    /// Granted capabilities.
    pub grants: Grants,
}

/// What a tick's instances are made from.
struct Factory {
    spec: TickSpec,
    pre: TickPre<PluginCtx>,
    caps: Arc<Capabilities>,
}

/// A tick's linked plugin, with one configured instance at a time.
pub struct TickRunner {
    factory: Factory,
    instance: Option<(Store<PluginCtx>, Tick)>,
}

/// Why a tick run failed.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    /// `on-tick` returned `err`.
    #[error("on-tick returned an error: {0}")]
    Returned(String),
    /// The call failed (trap, timeout, memory limit) or no instance could
    /// be made.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

impl TickError {
    /// The `result` label of `ficus_tick_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            TickError::Returned(_) => "error",
            TickError::Plugin(e) => e.kind(),
        }
    }
}

impl TickRunner {
    /// Check the plugin's imports against its grants, link it as a tick
    /// plugin, and instantiate and configure one instance.
    pub async fn new(
        engine: &PluginEngine,
        component: &Component,
        spec: TickSpec,
        caps: Arc<Capabilities>,
    ) -> Result<TickRunner, PluginError> {
        check_imports(engine.engine(), component, &spec.plugin, spec.grants)?;
        let linker = filter_linker(engine.engine(), spec.grants, false)?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link(format!("cannot link: {e:#}")))?;
        let pre = TickPre::new(instance_pre).map_err(|e| {
            PluginError::Link(format!(
                "not a tick plugin (expected a component exporting ficus:gateway/tick-hooks@0.1.0): {e:#}"
            ))
        })?;
        let factory = Factory { spec, pre, caps };
        let first = factory.instantiate().await?;
        Ok(TickRunner {
            factory,
            instance: Some(first),
        })
    }

    /// The spec.
    pub fn spec(&self) -> &TickSpec {
        &self.factory.spec
    }

    /// Make a configured instance if there is none (the last call failed),
    /// so that [`TickRunner::run`] only calls.
    pub async fn prepare(&mut self) -> Result<(), PluginError> {
        if self.instance.is_none() {
            self.instance = Some(self.factory.instantiate().await?);
        }
        Ok(())
    }

    /// Call `on-tick` (making a fresh instance first if the last one
    /// failed). A failed call drops the instance.
    pub async fn run(&mut self, info: &TickInfo) -> Result<(), TickError> {
        self.prepare().await?;
        let (mut store, bindings) = self.instance.take().expect("prepared above");
        arm(&mut store);
        store.data_mut().fence = Some(Fence {
            group: info.group.as_str().into(),
            term: info.term,
        });
        let result = bindings
            .ficus_gateway_tick_hooks()
            .call_on_tick(&mut store, info)
            .await;
        store.data_mut().fence = None;
        match result {
            Ok(returned) => {
                self.instance = Some((store, bindings));
                returned.map_err(TickError::Returned)
            }
            Err(e) => Err(classify(&mut store, Hook::OnTick, e).into()),
        }
    }
}

impl Factory {
    async fn instantiate(&self) -> Result<(Store<PluginCtx>, Tick), PluginError> {
        let mut store = new_store(
            self.pre.engine(),
            self.caps.clone(),
            self.spec.grants,
            self.spec.memory_limit,
            self.spec.timeout,
            0,
        );
        arm(&mut store);
        let bindings = match self.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) => return Err(instantiation_error(&mut store, e)),
        };
        arm(&mut store);
        let result = bindings
            .ficus_gateway_tick_hooks()
            .call_configure(&mut store, &self.spec.config_json)
            .await;
        match result {
            Ok(Ok(())) => Ok((store, bindings)),
            Ok(Err(msg)) => Err(PluginError::Rejected(msg)),
            Err(e) => Err(classify(&mut store, Hook::Configure, e)),
        }
    }
}

/// Build every `[[ticks]]` entry of `config`: link, instantiate and
/// configure its plugin. Errors are located at `ticks[i].plugin` (the
/// plugin is not a tick plugin, or imports what it is not granted) or
/// `ticks[i].config` (its `configure` rejected the config). A plugin whose
/// file does not load is skipped here: `Gateway::build` reports it at
/// `plugins.NAME.source`.
pub async fn build_ticks(
    config: &Config,
    engine: &PluginEngine,
    services: &Services,
) -> Result<Vec<TickRunner>, ConfigErrors> {
    let mut runners = Vec::new();
    let mut errors = Vec::new();
    for (i, tick) in config.ticks.iter().enumerate() {
        let Some(pc) = config.plugins.get(&tick.plugin) else {
            continue; // reported by validation
        };
        let Ok(loaded) = engine.load(&config.resolve(&pc.source)) else {
            continue; // reported by Gateway::build
        };
        let spec = TickSpec {
            name: tick.name.as_str().into(),
            plugin: tick.plugin.as_str().into(),
            group: tick.group.clone(),
            every: tick.every.0,
            config_json: tick.config_json(),
            timeout: Duration::from_millis(pc.timeout_ms),
            memory_limit: pc.memory_limit_bytes as usize,
            grants: grants_of(&pc.grants),
        };
        let caps = Arc::new(Capabilities::new(
            &tick.plugin,
            &format!("tick:{}", tick.name),
            services,
        ));
        match TickRunner::new(engine, &loaded.component, spec, caps).await {
            Ok(runner) => runners.push(runner),
            Err(e) => {
                let at = match e {
                    PluginError::Rejected(_) => format!("ticks[{i}].config"),
                    _ => format!("ticks[{i}].plugin"),
                };
                errors.push(config.error_at(
                    &at,
                    format!("plugin \"{}\" in tick \"{}\": {e}", tick.plugin, tick.name),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(runners)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The running schedulers of every tick.
pub struct Scheduler {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Scheduler {
    /// Start one scheduler task per tick.
    pub fn start(runners: Vec<TickRunner>, elector: Arc<Elector>) -> Scheduler {
        let (stop, _) = watch::channel(false);
        let tasks = runners
            .into_iter()
            .map(|runner| tokio::spawn(schedule(runner, elector.clone(), stop.subscribe())))
            .collect();
        Scheduler {
            stop,
            tasks: Mutex::new(tasks),
        }
    }

    /// Stop scheduling; waits for ticks running now to finish (each is
    /// bounded by its plugin's deadline).
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

async fn schedule(mut runner: TickRunner, elector: Arc<Elector>, mut stop: watch::Receiver<bool>) {
    let spec = runner.spec().clone();
    let count = |result: &'static str| {
        ::metrics::counter!("ficus_tick_total", "tick" => spec.name.to_string(), "result" => result)
            .increment(1);
    };
    let first = tokio::time::Instant::now() + spec.every;
    let mut interval = tokio::time::interval_at(first, spec.every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let due = tokio::select! {
            due = interval.tick() => due,
            _ = stop.wait_for(|s| *s) => break,
        };
        if let Err(e) = runner.prepare().await {
            count(e.kind());
            tracing::warn!(tick = %spec.name, plugin = %spec.plugin, "cannot make a tick instance: {e}");
            continue;
        }
        // Checked right before the call: a paused or deposed leader skips.
        let Some(term) = elector.term_if_leader(&spec.group) else {
            count("not_leader");
            continue;
        };
        let late = tokio::time::Instant::now().saturating_duration_since(due);
        let info = TickInfo {
            group: spec.group.clone(),
            term,
            scheduled_ms: unix_now_ms().saturating_sub(late.as_millis() as u64),
        };
        match runner.run(&info).await {
            Ok(()) => count("ok"),
            Err(e) => {
                count(e.kind());
                tracing::warn!(tick = %spec.name, plugin = %spec.plugin, group = %spec.group, term, "tick failed: {e}");
            }
        }
    }
}
