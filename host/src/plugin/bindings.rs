//! Host-side bindings generated from `wit/gateway.wit`.
//!
//! The `request` and `response` resources are mapped to marker types: the
//! real data lives in the store's [`PluginCtx`](super::ctx::PluginCtx) for
//! the duration of one hook call, so a handle never outlives the call.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "filter",
    path: "../wit",
    imports: {
        "ficus:gateway/state": async | trappable,
        "ficus:gateway/pubsub": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "ficus:gateway/types.request": crate::plugin::ctx::RequestHandle,
        "ficus:gateway/types.response": crate::plugin::ctx::ResponseHandle,
    },
});

pub use self::exports::ficus::gateway::filter_hooks::HookSet;
pub use self::ficus::gateway::types::{
    AttemptInfo, HeaderError, RequestAction, ResponseAction, ResponseSpec, UpstreamError,
    UpstreamTarget,
};
