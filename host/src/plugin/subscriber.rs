//! Subscriber plugin instances: components exporting
//! `ficus:gateway/subscriber-hooks`, called by the pub/sub delivery workers.
//!
//! A [`SubscriberFactory`] is built once per subscription (checking grants,
//! linking, and instantiating + configuring one instance so that a bad
//! plugin or config fails at load time and in `ficus check`). Each delivery
//! worker owns one [`SubscriberInstance`] and calls it one message at a
//! time; an instance whose call failed (trap, timeout, memory limit) is
//! dropped by the worker and a fresh one is made from the factory.

use super::bindings::subscriber_world::{Message, Subscriber, SubscriberPre};
use super::ctx::{arm, classify, instantiation_error, new_store, Capabilities, PluginCtx};
use super::engine::PluginEngine;
use super::linker::{check_imports, filter_linker};
use super::{Grants, Hook, PluginError};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::Store;

/// What a subscription's plugin instances are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberSpec {
    /// Plugin name (`[plugins.NAME]`).
    pub plugin: Arc<str>,
    /// Subscription name (labels logs and metrics like a route name).
    pub subscription: Arc<str>,
    /// The subscription's `config`, as JSON text.
    pub config_json: String,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Per-instance memory limit.
    pub memory_limit: usize,
    /// Granted capabilities.
    pub grants: Grants,
}

/// Makes configured instances of one subscription's plugin.
pub struct SubscriberFactory {
    spec: SubscriberSpec,
    pre: SubscriberPre<PluginCtx>,
    caps: Arc<Capabilities>,
}

/// One configured instance and its store.
pub struct SubscriberInstance {
    store: Store<PluginCtx>,
    bindings: Subscriber,
}

impl SubscriberFactory {
    /// Check the plugin's imports against its grants, link it as a
    /// subscriber, and instantiate and configure one instance (returned, so
    /// a worker can use it).
    pub async fn new(
        engine: &PluginEngine,
        component: &Component,
        spec: SubscriberSpec,
        caps: Arc<Capabilities>,
    ) -> Result<(Self, SubscriberInstance), PluginError> {
        check_imports(engine.engine(), component, &spec.plugin, spec.grants)?;
        let linker = filter_linker(engine.engine(), spec.grants, false)?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link(format!("cannot link: {e:#}")))?;
        let pre = SubscriberPre::new(instance_pre).map_err(|e| {
            PluginError::Link(format!(
                "not a subscriber plugin (expected a component exporting ficus:gateway/subscriber-hooks@0.1.0): {e:#}"
            ))
        })?;
        let factory = SubscriberFactory { spec, pre, caps };
        let first = factory.instantiate().await?;
        Ok((factory, first))
    }

    /// The spec.
    pub fn spec(&self) -> &SubscriberSpec {
        &self.spec
    }

    /// Create and configure a new instance.
    pub async fn instantiate(&self) -> Result<SubscriberInstance, PluginError> {
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
            .ficus_gateway_subscriber_hooks()
            .call_configure(&mut store, &self.spec.config_json)
            .await;
        match result {
            Ok(Ok(())) => Ok(SubscriberInstance { store, bindings }),
            Ok(Err(msg)) => Err(PluginError::Rejected(msg)),
            Err(e) => Err(classify(&mut store, Hook::Configure, e)),
        }
    }
}

impl SubscriberInstance {
    /// Call `on-message`. The outer error is a failed call (the instance
    /// must then be dropped); the inner one is the plugin's own `err`.
    pub async fn on_message(&mut self, msg: &Message) -> Result<Result<(), String>, PluginError> {
        arm(&mut self.store);
        let result = self
            .bindings
            .ficus_gateway_subscriber_hooks()
            .call_on_message(&mut self.store, msg)
            .await;
        result.map_err(|e| classify(&mut self.store, Hook::OnMessage, e))
    }
}
