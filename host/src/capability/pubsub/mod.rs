//! The `pubsub` capability: plugins publish messages to subjects; the host
//! delivers them to the subscriber plugins named in config.
//!
//! Plugins reach it through WIT; the host dispatches to a [`Publisher`]. The
//! trait is async and fallible so that a networked backend (NATS core for
//! at-most-once, JetStream for at-least-once) can be added without changing
//! plugins or WIT.
//!
//! The embedded backend is split in three parts:
//! * [`broker`]: the [`Publisher`]: validates a message, matches it against
//!   the subscriptions and hands it to their queues;
//! * [`store`]: the durable queues of at-least-once subscriptions in the
//!   embedded storage engine (redb), written by one thread with group commit;
//! * [`delivery`]: the workers that take a message from a
//!   [`delivery::Source`], call the subscriber plugin and acknowledge or
//!   reject it. They know nothing of the storage, so a JetStream consumer
//!   can be another `Source`.
//!
//! With `[backend] kind = "nats"`, [`nats::NatsBroker`] is the backend:
//! core NATS for at-most-once, JetStream for at-least-once (see its module
//! docs). [`Backend`] is what `ficus run` holds: either broker, with one
//! lifecycle (open, start, shutdown).

pub mod broker;
pub mod delivery;
pub mod nats;
pub mod store;
pub mod subject;

use crate::plugin::subscriber::{SubscriberFactory, SubscriberInstance};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// The pub/sub backend of a running gateway, chosen by `backend.kind`.
#[derive(Clone)]
pub enum Backend {
    /// The embedded broker (`kind = "embedded"`).
    Embedded(Arc<broker::Broker>),
    /// The NATS broker (`kind = "nats"`).
    Nats(Arc<nats::NatsBroker>),
}

impl Backend {
    /// Open the backend `config` asks for. Nothing is delivered until
    /// [`Backend::start`].
    pub async fn open(config: &ficus_config::Config) -> anyhow::Result<Backend> {
        match config.backend.kind {
            ficus_config::BackendKind::Embedded => {
                Ok(Backend::Embedded(Arc::new(broker::Broker::open(config)?)))
            }
            ficus_config::BackendKind::Nats => {
                let b = nats::NatsBroker::open(config)
                    .await
                    .map_err(|e| anyhow::anyhow!("pub/sub ([backend] kind = \"nats\"): {e}"))?;
                tracing::info!(
                    servers = %config.backend.servers.join(", "),
                    stream = nats::DEFAULT_STREAM,
                    server_version = b.server_version(),
                    "pub/sub on NATS"
                );
                Ok(Backend::Nats(Arc::new(b)))
            }
        }
    }

    /// The publisher plugins and `/admin/subscriptions` use.
    pub fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Backend::Embedded(b) => b.clone(),
            Backend::Nats(b) => b.clone(),
        }
    }

    /// Start delivering to the loaded subscribers (config order).
    pub fn start(&self, subscribers: Vec<(Arc<SubscriberFactory>, SubscriberInstance)>) {
        match self {
            Backend::Embedded(b) => b.start(subscribers),
            Backend::Nats(b) => b.start(subscribers),
        }
    }

    /// Stop delivering; the message in hand is finished within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        match self {
            Backend::Embedded(b) => b.shutdown(grace).await,
            Backend::Nats(b) => b.shutdown(grace).await,
        }
    }
}

/// A message header: name and value.
pub type Header = (String, String);

/// A failed publish.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PubSubError {
    /// The backend cannot accept the message right now; nothing was stored.
    #[error("pub/sub backend unavailable: {0}")]
    Unavailable(String),
    /// The subject or a header is malformed.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The message exceeds the size limit.
    #[error("message too large")]
    TooLarge,
}

/// What `/admin/subscriptions` shows for one subscription. Counters of a
/// queue group's durable queue (`pending`, `acked`, `redelivered`,
/// `dead_lettered`) are the group's, shared by its members.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// Subscription name.
    pub name: String,
    /// Subject pattern.
    pub subject: String,
    /// Subscriber plugin.
    pub plugin: String,
    /// Queue group, if any.
    pub queue: Option<String>,
    /// `at-least-once` or `at-most-once`.
    pub delivery: &'static str,
    /// Messages stored or buffered and not yet acknowledged or dropped.
    pub pending: u64,
    /// Messages acknowledged by `on-message` (at-least-once: persisted).
    pub acked: u64,
    /// Deliveries after the first one of a message (persisted; a message
    /// delivered again after a crash counts here).
    pub redelivered: u64,
    /// Messages sent to the dead-letter subject after `max_deliver` failures
    /// (persisted).
    pub dead_lettered: u64,
    /// Failed deliveries (`err`, trap, timeout) since start.
    pub failed: u64,
    /// At-most-once: messages dropped because the buffer was full, since
    /// start.
    pub dropped: u64,
    /// Dead-letter subject (at-least-once).
    pub dead_letter: Option<String>,
}

/// Publishes messages.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publish `payload` to `subject`. Returns once every at-least-once
    /// subscription matching the subject has stored the message durably.
    async fn publish(
        &self,
        subject: &str,
        payload: Vec<u8>,
        headers: Vec<Header>,
    ) -> Result<(), PubSubError>;

    /// The subscriptions this backend delivers to, with their counters.
    fn subscriptions(&self) -> Vec<SubscriptionStats> {
        Vec::new()
    }
}
