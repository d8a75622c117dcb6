//! The `state` capability: a gateway-wide key/value store with revisions,
//! compare-and-set, atomic counters and per-key TTL.
//!
//! Plugins reach it through WIT; the host dispatches to a [`StateBackend`].
//! The trait is async and fallible so that a networked backend (NATS
//! JetStream KV, whose revisions and CAS map one-to-one) can be added without
//! changing plugins or WIT.

pub mod embedded;

use std::time::Duration;

/// Largest key accepted, in bytes (after namespacing).
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// A stored value and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision of the last write; strictly increasing across all keys.
    pub revision: u64,
}

/// A failed state operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The backend cannot serve the request right now.
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    /// The arguments are invalid.
    #[error("invalid state operation: {0}")]
    Invalid(String),
    /// Key or value over the size limit.
    #[error("key or value too large")]
    TooLarge,
}

/// A key/value backend. Keys arrive already namespaced by plugin.
#[async_trait::async_trait]
pub trait StateBackend: Send + Sync + 'static {
    /// Read a key.
    async fn get(&self, key: &str) -> Result<Option<Entry>, StateError>;
    /// Write unconditionally; returns the new revision.
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<u64, StateError>;
    /// Write if the current revision is `expected` (`None`: key absent).
    /// Returns the new revision, or `None` if the condition failed.
    async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError>;
    /// Add `delta` to a decimal counter; `ttl` applies when the key is created.
    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StateError>;
    /// Delete a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StateError>;
}

/// Check sizes common to every backend.
pub fn check_sizes(key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
    if key.len() > MAX_KEY_BYTES || value.is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
        return Err(StateError::TooLarge);
    }
    Ok(())
}
