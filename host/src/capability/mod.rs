//! Host capabilities that plugins import through WIT (`log`, `metrics`,
//! `state`, `pubsub`, `leader`). Each capability is linked only into plugins
//! whose config grants it; see [`crate::plugin::linker`].

pub mod events;
pub mod leader;
pub mod log;
pub mod metrics;
pub mod nats;
pub mod pubsub;
pub mod readmodel;
pub mod state;

use std::sync::Arc;

/// The stateful capabilities of one gateway process, shared by every
/// generation of the gateway (a reload keeps them).
#[derive(Clone)]
pub struct Services {
    /// Key/value state.
    pub state: Arc<dyn state::StateBackend>,
    /// Publishing to subjects.
    pub pubsub: Arc<dyn pubsub::Publisher>,
    /// This node's view of the leader elections it takes part in.
    pub leader: Arc<dyn leader::LeaderView>,
    /// The event store, opened when some plugin is granted `events`.
    pub events: Option<Arc<dyn events::EventStore>>,
    /// The read models, opened when some projection is configured or some
    /// plugin is granted `read-model`.
    pub read_models: Option<Arc<readmodel::ReadModelService>>,
}
