//! Projection plugins (components exporting `ficus:gateway/projection-hooks`):
//! linking, one configured instance at a time, and applying events with the
//! read-model writes kept in the store's [`ProjectionScope`] until the
//! runner ([`crate::projection`]) commits them with the checkpoint.

use super::bindings::projection_world::{Projection, ProjectionPre, RecordedEvent};
use super::ctx::{
    arm, classify, instantiation_error, new_store, Capabilities, PluginCtx, ProjectionScope,
};
use super::engine::PluginEngine;
use super::linker::{check_imports, filter_linker};
use super::{Grants, Hook, PluginError};
use crate::capability::readmodel::Write;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::Store;

/// What a projection's instances are made from (no store: it is borrowed
/// across awaits, so it must be `Sync`).
#[derive(Clone)]
struct Factory {
    pre: ProjectionPre<PluginCtx>,
    caps: Arc<Capabilities>,
    grants: Grants,
    config_json: String,
    timeout: Duration,
    memory_limit: usize,
    model: Arc<str>,
}

/// A projection's linked plugin, with one configured instance at a time.
pub struct ProjectionPlugin {
    factory: Factory,
    instance: Option<(Store<PluginCtx>, Projection)>,
}

/// Why applying an event failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `on-event` returned `err`.
    #[error("on-event returned an error: {0}")]
    Returned(String),
    /// The call failed (trap, timeout, memory limit) or no instance could
    /// be made.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Settings of a projection plugin.
pub struct ProjectionSettings {
    /// The model it writes (the projection's name).
    pub model: Arc<str>,
    /// The `config` table as JSON.
    pub config_json: String,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Per-instance memory limit.
    pub memory_limit: usize,
    /// Granted capabilities (from config; `projection` is added here).
    pub grants: Grants,
}

impl ProjectionPlugin {
    /// Check the plugin's imports against its grants, link it as a
    /// projection, and instantiate and configure one instance.
    pub async fn new(
        engine: &PluginEngine,
        component: &Component,
        plugin: &str,
        settings: ProjectionSettings,
        caps: Arc<Capabilities>,
    ) -> Result<ProjectionPlugin, PluginError> {
        let grants = Grants {
            projection: true,
            ..settings.grants
        };
        let exports: Vec<String> = component
            .component_type()
            .exports(engine.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
        if !exports
            .iter()
            .any(|e| e.starts_with("ficus:gateway/projection-hooks@"))
        {
            return Err(PluginError::Link(format!(
                "not a projection plugin (expected a component exporting ficus:gateway/projection-hooks@0.1.0; it exports {})",
                if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
            )));
        }
        check_imports(engine.engine(), component, plugin, grants)?;
        let linker = filter_linker(engine.engine(), grants, false)?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link(format!("cannot link: {e:#}")))?;
        let pre = ProjectionPre::new(instance_pre).map_err(|e| {
            PluginError::Link(format!(
                "not a projection plugin (expected a component exporting ficus:gateway/projection-hooks@0.1.0): {e:#}"
            ))
        })?;
        let factory = Factory {
            pre,
            caps,
            grants,
            config_json: settings.config_json,
            timeout: settings.timeout,
            memory_limit: settings.memory_limit,
            model: settings.model,
        };
        let first = factory.instantiate().await?;
        Ok(ProjectionPlugin {
            factory,
            instance: Some(first),
        })
    }

    /// Another plugin like this one, with its own instance (for a rebuild).
    pub async fn sibling(&mut self) -> Result<ProjectionPlugin, PluginError> {
        let factory = self.factory.clone();
        let first = factory.instantiate().await?;
        Ok(ProjectionPlugin {
            factory,
            instance: Some(first),
        })
    }

    /// Start a batch of events written to `generation`.
    pub fn begin(&mut self, generation: u64) -> Batch<'_> {
        Batch {
            plugin: self,
            scope: Some(Box::new(ProjectionScope {
                model: Default::default(),
                generation,
                batch: Default::default(),
                event: Default::default(),
            })),
        }
    }
}

impl Factory {
    async fn instantiate(&self) -> Result<(Store<PluginCtx>, Projection), PluginError> {
        let mut store = new_store(
            self.pre.engine(),
            self.caps.clone(),
            self.grants,
            self.memory_limit,
            self.timeout,
            0,
        );
        arm(&mut store);
        let bindings = match self.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) => return Err(instantiation_error(&mut store, e)),
        };
        arm(&mut store);
        let result = bindings
            .ficus_gateway_projection_hooks()
            .call_configure(&mut store, &self.config_json)
            .await;
        match result {
            Ok(Ok(())) => Ok((store, bindings)),
            Ok(Err(msg)) => Err(PluginError::Rejected(msg)),
            Err(e) => Err(classify(&mut store, Hook::Configure, e)),
        }
    }
}

/// Events applied since [`ProjectionPlugin::begin`], with their writes.
pub struct Batch<'a> {
    plugin: &'a mut ProjectionPlugin,
    scope: Option<Box<ProjectionScope>>,
}

impl Batch<'_> {
    /// Apply one event. On success its writes join the batch; on failure
    /// they are dropped (and so is the instance, if the call failed).
    pub async fn apply(&mut self, event: &RecordedEvent) -> Result<(), ApplyError> {
        if self.plugin.instance.is_none() {
            let fresh = self.plugin.factory.instantiate().await?;
            self.plugin.instance = Some(fresh);
        }
        let (mut store, bindings) = self.plugin.instance.take().expect("made above");
        let mut scope = self.scope.take().expect("a batch always holds its scope");
        scope.model = self.plugin.factory.model.clone();
        store.data_mut().projection = Some(scope);
        arm(&mut store);
        let result = bindings
            .ficus_gateway_projection_hooks()
            .call_on_event(&mut store, event)
            .await;
        let mut scope = store
            .data_mut()
            .projection
            .take()
            .expect("the scope stays in the store during the call");
        let event_writes = std::mem::take(&mut scope.event);
        let outcome = match result {
            Ok(Ok(())) => {
                scope.batch.extend(event_writes);
                self.plugin.instance = Some((store, bindings));
                Ok(())
            }
            Ok(Err(msg)) => {
                self.plugin.instance = Some((store, bindings));
                Err(ApplyError::Returned(msg))
            }
            Err(e) => Err(classify(&mut store, Hook::OnEvent, e).into()),
        };
        self.scope = Some(scope);
        outcome
    }

    /// The writes of the events applied successfully, to commit.
    pub fn into_writes(mut self) -> Vec<Write> {
        self.scope
            .take()
            .map(|s| s.batch.into_iter().collect())
            .unwrap_or_default()
    }
}
