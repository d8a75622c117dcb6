//! The gateway-wide key/value store (capability `state`).
//!
//! Keys are namespaced per plugin name and shared by every instance of the
//! plugin (and, on the NATS backend, by every gateway of the cluster). Values
//! carry revisions for optimistic concurrency; counters are atomic; any key can
//! have a time-to-live in milliseconds. Calling any function here makes the
//! component import `ficus:gateway/state`, so the route must grant `"state"`.

use crate::wit::ficus::gateway::state as host;

pub use host::Entry;

/// A failed state operation: `Unavailable(reason)` when the backend cannot
/// serve the request right now, `Invalid(reason)` for invalid arguments (e.g.
/// incrementing a non-integer value), `TooLarge` when the key or value exceeds
/// the configured size limit.
pub use host::Error as StateError;

/// Read a key: its value and revision, or `None` when it does not exist (or
/// expired).
///
/// # Errors
///
/// [`StateError`] from the backend.
pub fn get(key: &str) -> Result<Option<Entry>, StateError> {
    host::get(key)
}

/// Write a key unconditionally and return its new revision. `ttl_ms` sets
/// the key's expiry, or removes it when `None`.
///
/// # Errors
///
/// [`StateError`] from the backend.
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<u64, StateError> {
    host::set(key, value, ttl_ms)
}

/// Write a key only if its current revision is `expected` (`None`: only if the
/// key does not exist). Returns `Some(new revision)` on success and `None`
/// when the condition did not hold (re-read and try again).
///
/// # Errors
///
/// [`StateError`] from the backend.
pub fn compare_and_set(
    key: &str,
    expected: Option<u64>,
    value: &[u8],
    ttl_ms: Option<u64>,
) -> Result<Option<u64>, StateError> {
    host::compare_and_set(key, expected, value, ttl_ms)
}

/// Atomically add `delta` to an integer counter (stored as decimal text) and
/// return the new value. A missing key counts as 0; `ttl_ms` applies only
/// when the key is created, so a counter with a TTL is a fixed window.
///
/// # Errors
///
/// [`StateError::Invalid`] when the stored value is not an integer, or
/// another [`StateError`] from the backend.
pub fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StateError> {
    host::increment(key, delta, ttl_ms)
}

/// Delete a key; returns whether it existed.
///
/// # Errors
///
/// [`StateError`] from the backend.
pub fn delete(key: &str) -> Result<bool, StateError> {
    host::delete(key)
}
