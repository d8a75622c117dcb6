//! Capability-based linking: a plugin gets only the host interfaces its
//! config grants. Imports are checked before linking so that an ungranted
//! import fails with a message naming the interface and the missing grant.

use super::bindings::ficus::gateway::{leader, log, metrics, pubsub, state, types};
use super::ctx::PluginCtx;
use super::{Grants, PluginError};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::Engine;

/// The Ficus interfaces and the grant each needs (`None`: always linked).
const FICUS_INTERFACES: [(&str, Option<&str>); 10] = [
    ("types", None),
    ("background-types", None),
    ("log", Some("log")),
    ("metrics", Some("metrics")),
    ("state", Some("state")),
    ("pubsub", Some("pubsub")),
    ("leader", Some("leader")),
    ("events", Some("events")),
    ("read-model", Some("read-model")),
    // Only projections write read models; no grant links it elsewhere.
    ("read-model-write", Some("projection")),
];

/// Reject a component that imports a Ficus interface it was not granted, or
/// one this host does not know.
pub fn check_imports(
    engine: &Engine,
    component: &Component,
    plugin: &str,
    grants: Grants,
) -> Result<(), PluginError> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        let Some(rest) = name.strip_prefix("ficus:gateway/") else {
            continue;
        };
        let iface = rest.split('@').next().unwrap_or(rest);
        let Some((_, grant)) = FICUS_INTERFACES.iter().find(|(n, _)| *n == iface) else {
            return Err(PluginError::Link(format!(
                "imports unknown Ficus interface {name} (this host provides ficus:gateway/{{types,background-types,log,metrics,state,pubsub,leader,events,read-model,read-model-write}}@0.1.0)"
            )));
        };
        if iface == "read-model-write" && !grants.projection {
            return Err(PluginError::Link(format!(
                "imports {name}: only projections (`[[projections]]` entries) write read models; a query handler imports ficus:gateway/read-model (grant \"read-model\")"
            )));
        }
        let allowed = match grant {
            None => true,
            Some("log") => grants.log,
            Some("metrics") => grants.metrics,
            Some("state") => grants.state,
            Some("pubsub") => grants.pubsub,
            Some("leader") => grants.leader,
            Some("events") => grants.events,
            Some("read-model") => grants.read_model || grants.projection,
            Some("projection") => grants.projection,
            Some(_) => false,
        };
        if !allowed {
            return Err(PluginError::Ungranted {
                plugin: plugin.to_owned(),
                interface: name.to_owned(),
                grant: grant.unwrap_or_default().to_owned(),
                granted: grants.to_string(),
            });
        }
    }
    Ok(())
}

/// Reject, for a plugin called synchronously, a component that imports a
/// WASI interface the asynchronous linker provides and the synchronous one
/// does not ([`sync_wasi`](super::sync_wasi)): `wasi:filesystem` and
/// `wasi:sockets`. (Any other unknown import fails at linking in both
/// modes, with the linker's message.)
pub fn check_sync_imports(engine: &Engine, component: &Component) -> Result<(), PluginError> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        if super::sync_wasi::ASYNC_ONLY_WASI_PACKAGES
            .iter()
            .any(|p| name.starts_with(p))
        {
            return Err(PluginError::Link(format!(
                "imports {name}, which plugins with calls = \"sync\" do not get (only \
                 wasi:cli, wasi:clocks, wasi:io and wasi:random, whose functions never wait); \
                 use calls = \"async\""
            )));
        }
    }
    Ok(())
}

/// A linker for filter plugins with exactly the granted interfaces. With
/// `sync`, every host function is synchronous (see
/// [`sync_wasi`](super::sync_wasi)) so the hooks can be called without a
/// fiber; grants whose functions wait are refused.
pub fn filter_linker(
    engine: &Engine,
    grants: Grants,
    sync: bool,
) -> Result<Linker<PluginCtx>, PluginError> {
    let link = |e: wasmtime::Error| PluginError::Engine(format!("linking host interfaces: {e:#}"));
    let mut linker = Linker::new(engine);
    if sync {
        let waiting = grants.waiting();
        if !waiting.is_empty() {
            return Err(PluginError::Link(format!(
                "calls = \"sync\" cannot be combined with the grants {} (their host functions \
                 wait); use calls = \"async\"",
                waiting.join(", ")
            )));
        }
        super::sync_wasi::add_to_linker(&mut linker).map_err(link)?;
    } else {
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    }
    types::add_to_linker::<_, HasSelf<PluginCtx>>(&mut linker, |c| c).map_err(link)?;
    if grants.log {
        log::add_to_linker::<_, HasSelf<PluginCtx>>(&mut linker, |c| c).map_err(link)?;
    }
    if grants.metrics {
        metrics::add_to_linker::<_, HasSelf<PluginCtx>>(&mut linker, |c| c).map_err(link)?;
    }
    if grants.state {
        state::add_to_linker::<_, HasSelf<PluginCtx>>(&mut linker, |c| c).map_err(link)?;
    }
    if grants.pubsub {
        pubsub::add_to_linker::<_, HasSelf<PluginCtx>>(&mut linker, |c| c).map_err(link)?;
    }
    if grants.leader {
        leader::add_to_linker::<_, HasSelf<PluginCtx>>(&mut linker, |c| c).map_err(link)?;
    }
    if grants.events {
        super::bindings::handler_world::ficus::gateway::events::add_to_linker::<
            _,
            HasSelf<PluginCtx>,
        >(&mut linker, |c| c)
        .map_err(link)?;
    }
    if grants.read_model || grants.projection {
        super::bindings::handler_world::ficus::gateway::read_model::add_to_linker::<
            _,
            HasSelf<PluginCtx>,
        >(&mut linker, |c| c)
        .map_err(link)?;
    }
    if grants.projection {
        super::bindings::projection_world::ficus::gateway::read_model_write::add_to_linker::<
            _,
            HasSelf<PluginCtx>,
        >(&mut linker, |c| c)
        .map_err(link)?;
    }
    Ok(linker)
}
