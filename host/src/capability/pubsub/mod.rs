//! The `pubsub` capability: plugins publish messages to subjects; the host
//! delivers them to the subscriber plugins named in config.
//!
//! Plugins reach it through WIT; the host dispatches to a [`Publisher`]. The
//! trait is async and fallible so that a networked backend (NATS core for
//! at-most-once, JetStream for at-least-once) can be added without changing
//! plugins or WIT.

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
}
