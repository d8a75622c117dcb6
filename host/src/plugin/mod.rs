//! Running Wasm components: the engine and compile cache, the sandbox, the
//! capability linker, pooled filter instances, and `wasi:http` handlers.

pub mod bindings;
pub mod ctx;
pub mod engine;
pub mod filter;
pub mod handler;
pub mod linker;
pub mod projection;
pub mod sandbox;
pub mod subscriber;
pub mod sync_wasi;
pub mod tick;

use std::fmt;

/// The capabilities a plugin's config can grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// `ficus:gateway/log`.
    pub log: bool,
    /// `ficus:gateway/metrics`.
    pub metrics: bool,
    /// `ficus:gateway/state`.
    pub state: bool,
    /// `ficus:gateway/pubsub`.
    pub pubsub: bool,
    /// `ficus:gateway/leader`.
    pub leader: bool,
    /// `ficus:gateway/events`.
    pub events: bool,
    /// `ficus:gateway/read-model`.
    pub read_model: bool,
    /// Real wall and monotonic clocks (otherwise frozen at zero).
    pub clock: bool,
    /// `ficus:gateway/read-model-write` and reading its own model: set by
    /// the host for projection plugins only (there is no such config
    /// grant).
    pub projection: bool,
}

impl Grants {
    /// The granted interfaces whose host functions wait (on a backend or
    /// the event store), so that a plugin with them cannot be called
    /// synchronously: config validation refuses them by
    /// [`ficus_config::Grant::waits`]; this is the linker's own guard, for
    /// specs built in code (plus `projection`, which no config grants).
    pub fn waiting(&self) -> Vec<&'static str> {
        [
            (self.state, "state"),
            (self.pubsub, "pubsub"),
            (self.events, "events"),
            (self.read_model, "read-model"),
            (self.projection, "projection"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect()
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.log, "log"),
            (self.metrics, "metrics"),
            (self.state, "state"),
            (self.pubsub, "pubsub"),
            (self.leader, "leader"),
            (self.events, "events"),
            (self.read_model, "read-model"),
            (self.clock, "clock"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// Which hook of a plugin was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Instantiation and `configure`.
    Configure,
    /// `on-request`.
    OnRequest,
    /// `on-response`.
    OnResponse,
    /// A `wasi:http` handler's `handle`.
    Handle,
    /// A subscriber's `on-message`.
    OnMessage,
    /// A tick's `on-tick`.
    OnTick,
    /// A projection's `on-event`.
    OnEvent,
}

impl Hook {
    /// The WIT name of the hook.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Configure => "configure",
            Hook::OnRequest => "on-request",
            Hook::OnResponse => "on-response",
            Hook::Handle => "handle",
            Hook::OnMessage => "on-message",
            Hook::OnTick => "on-tick",
            Hook::OnEvent => "on-event",
        }
    }
}

/// Errors from loading or running a plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be created.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The component could not be read or compiled.
    #[error("{0}")]
    Load(String),
    /// The component imports a host interface its config does not grant.
    #[error("imports {interface} which is not granted (grants: {granted}); add \"{grant}\" to plugins.{plugin}.grants")]
    Ungranted {
        /// Plugin name.
        plugin: String,
        /// The imported interface.
        interface: String,
        /// The grant that would allow it.
        grant: String,
        /// What is granted.
        granted: String,
    },
    /// The component is not of the kind its use requires, or imports
    /// something the host does not provide.
    #[error("{0}")]
    Link(String),
    /// The plugin's configure step rejected its config.
    #[error("configure rejected the config: {0}")]
    Rejected(String),
    /// The call ran past its deadline.
    #[error("{hook} exceeded its {timeout_ms} ms deadline")]
    Timeout {
        /// Hook that was running.
        hook: &'static str,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The instance tried to grow its memory past the limit.
    #[error("{hook} exceeded the memory limit: {detail}")]
    MemoryLimit {
        /// Hook that was running.
        hook: &'static str,
        /// What the limiter said.
        detail: String,
    },
    /// The guest trapped (panic, unreachable, ...).
    #[error("{hook} trapped: {message}{}", if output.is_empty() { String::new() } else { format!(" (guest output: {output})") })]
    Trap {
        /// Hook that was running.
        hook: &'static str,
        /// The trap.
        message: String,
        /// Captured guest stdout/stderr (e.g. the panic message).
        output: String,
    },
    /// No instance could be created (pooling allocator full).
    #[error("no plugin instance available: {0}")]
    Capacity(String),
}

impl PluginError {
    /// A short machine-readable kind, used as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Engine(_) => "engine",
            PluginError::Load(_) => "load",
            PluginError::Ungranted { .. } => "ungranted",
            PluginError::Link(_) => "link",
            PluginError::Rejected(_) => "rejected",
            PluginError::Timeout { .. } => "timeout",
            PluginError::MemoryLimit { .. } => "memory",
            PluginError::Trap { .. } => "trap",
            PluginError::Capacity(_) => "capacity",
        }
    }
}
