//! Routes served by a Wasm component implementing the standard
//! `wasi:http/incoming-handler` (the `wasi:http/proxy` world), through
//! wasmtime-wasi-http. Each request gets a fresh instance from the pooling
//! allocator (the `wasi:http` p2 contract is one request per instance).
//! Outgoing HTTP from handlers is denied.

use super::ctx::PluginCtx;
use super::ctx::{arm, classify, new_store, Capabilities};
use super::engine::PluginEngine;
use super::linker::{check_imports, filter_linker};
use super::{Grants, Hook, PluginError};
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

/// Limits for a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSpec {
    /// SHA-256 of the component.
    pub component: [u8; 32],
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Deadline for the guest's execution per request.
    pub timeout: Duration,
    /// Per-instance memory limit.
    pub memory_limit: usize,
    /// Granted capabilities.
    pub grants: Grants,
}

/// A pre-linked `wasi:http` handler.
pub struct Handler {
    spec: HandlerSpec,
    pre: ProxyPre<PluginCtx>,
    caps: Arc<Capabilities>,
}

impl Handler {
    /// Check and link the component, and instantiate it once to surface
    /// instantiation errors at load time.
    pub async fn new(
        engine: &PluginEngine,
        component: &Component,
        spec: HandlerSpec,
        caps: Arc<Capabilities>,
    ) -> Result<Self, PluginError> {
        check_imports(engine.engine(), component, &spec.plugin, spec.grants)?;
        let mut linker = filter_linker(engine.engine(), spec.grants, false)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(format!("linking wasi:http: {e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link(format!("cannot link: {e:#}")))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| {
            PluginError::Link(format!(
                "not a wasi:http handler (expected a component exporting wasi:http/incoming-handler@0.2.x): {e:#}"
            ))
        })?;
        let handler = Handler { spec, pre, caps };
        let mut store = handler.store();
        arm(&mut store);
        if let Err(e) = handler.pre.instantiate_async(&mut store).await {
            return Err(classify(&mut store, Hook::Configure, e));
        }
        Ok(handler)
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &HandlerSpec {
        &self.spec
    }

    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        &self.spec.plugin
    }

    fn store(&self) -> wasmtime::Store<PluginCtx> {
        new_store(
            self.pre.engine(),
            self.caps.clone(),
            self.spec.grants,
            self.spec.memory_limit,
            self.spec.timeout,
            0,
        )
    }

    /// Serve one request.
    pub async fn handle(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<HyperOutgoingBody>, PluginError> {
        let mut store = self.store();
        let internal = |e: wasmtime::Error| PluginError::Trap {
            hook: Hook::Handle.as_str(),
            message: format!("{e:#}"),
            output: String::new(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)
            .map_err(internal)?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(tx)
            .map_err(internal)?;
        let pre = self.pre.clone();
        // The guest runs in its own task so it can keep writing the body
        // after it has sent the response head.
        let task = tokio::spawn(async move {
            arm(&mut store);
            let proxy = match pre.instantiate_async(&mut store).await {
                Ok(p) => p,
                Err(e) => return Err(classify(&mut store, Hook::Handle, e)),
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, out)
                .await
                .map_err(|e| classify(&mut store, Hook::Handle, e))
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(PluginError::Trap {
                hook: Hook::Handle.as_str(),
                message: format!("handler answered with error {code:?}"),
                output: String::new(),
            }),
            Err(_) => Err(match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => PluginError::Trap {
                    hook: Hook::Handle.as_str(),
                    message: "handler returned without setting a response".into(),
                    output: String::new(),
                },
                Err(join) => PluginError::Trap {
                    hook: Hook::Handle.as_str(),
                    message: format!("handler task failed: {join}"),
                    output: String::new(),
                },
            }),
        }
    }
}
