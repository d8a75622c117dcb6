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

/// Bindings of the `subscriber` world: the host interfaces are the filter
/// world's (so [`PluginCtx`](super::ctx::PluginCtx)'s implementations and
/// the capability linker serve both), the export is `subscriber-hooks`.
pub mod subscriber_world {
    wasmtime::component::bindgen!({
        world: "subscriber",
        path: "../wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "ficus:gateway/log": super::ficus::gateway::log,
            "ficus:gateway/metrics": super::ficus::gateway::metrics,
            "ficus:gateway/state": super::ficus::gateway::state,
            "ficus:gateway/pubsub": super::ficus::gateway::pubsub,
            "ficus:gateway/leader": super::ficus::gateway::leader,
        },
    });

    pub use self::ficus::gateway::background_types::Message;
}

/// Bindings of the `tick` world: the host interfaces are the filter world's
/// and `events` the handler world's (so [`PluginCtx`](super::ctx::PluginCtx)'s
/// implementations and the capability linker serve all), the export is
/// `tick-hooks`.
pub mod tick_world {
    wasmtime::component::bindgen!({
        world: "tick",
        path: "../wit",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "ficus:gateway/log": super::ficus::gateway::log,
            "ficus:gateway/metrics": super::ficus::gateway::metrics,
            "ficus:gateway/state": super::ficus::gateway::state,
            "ficus:gateway/pubsub": super::ficus::gateway::pubsub,
            "ficus:gateway/leader": super::ficus::gateway::leader,
            "ficus:gateway/background-types": super::handler_world::ficus::gateway::background_types,
            "ficus:gateway/events": super::handler_world::ficus::gateway::events,
        },
    });

    pub use super::handler_world::ficus::gateway::background_types::TickInfo;
}

/// Bindings of the `handler` world: the Ficus interfaces a `wasi:http`
/// handler may import. The shared ones are the filter world's; `events` and
/// `read-model` are generated here.
pub mod handler_world {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit",
        imports: {
            "ficus:gateway/events": async | trappable,
            "ficus:gateway/read-model": async | trappable,
            default: trappable,
        },
        with: {
            "ficus:gateway/log": super::ficus::gateway::log,
            "ficus:gateway/metrics": super::ficus::gateway::metrics,
            "ficus:gateway/state": super::ficus::gateway::state,
            "ficus:gateway/pubsub": super::ficus::gateway::pubsub,
            "ficus:gateway/leader": super::ficus::gateway::leader,
        },
    });
}

/// Bindings of the `projection` world: `read-model` is the handler world's
/// (one host implementation serves query handlers and projections),
/// `read-model-write` and the export `projection-hooks` are generated here.
pub mod projection_world {
    wasmtime::component::bindgen!({
        world: "projection",
        path: "../wit",
        imports: {
            "ficus:gateway/read-model-write": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "ficus:gateway/log": super::ficus::gateway::log,
            "ficus:gateway/metrics": super::ficus::gateway::metrics,
            "ficus:gateway/background-types": super::handler_world::ficus::gateway::background_types,
            "ficus:gateway/read-model": super::handler_world::ficus::gateway::read_model,
        },
    });

    pub use super::handler_world::ficus::gateway::background_types::RecordedEvent;
}
