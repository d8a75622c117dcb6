//! Publishing messages (capability `pubsub`).
//!
//! Subjects are dot-separated tokens of `[A-Za-z0-9_-]` (`orders.placed`);
//! wildcards belong to subscriptions, not to `publish`. Who receives a
//! message is decided by the gateway config (`[[subscriptions]]`), not by
//! the publisher. Calling [`publish`] makes the component import
//! `ficus:gateway/pubsub`, so the plugin must be granted `"pubsub"`.

use crate::wit::ficus::gateway::pubsub as host;

/// A failed publish: `Unavailable(reason)` when the backend cannot store the
/// message right now (nothing was stored), `Invalid(reason)` for a malformed
/// subject or header, `TooLarge` when payload plus headers exceed
/// `pubsub.max_message_bytes`.
pub use host::Error as PubSubError;

/// Publish `payload` to `subject` with `headers` (name, value). Returns once
/// every at-least-once subscription matching the subject has stored the
/// message durably; at-most-once subscribers get it in the background.
/// Publishing to a subject nobody subscribes to succeeds and does nothing.
///
/// ```rust,no_run
/// # fn demo() -> Result<(), ficus_sdk::pubsub::PubSubError> {
/// ficus_sdk::pubsub::publish("orders.placed", br#"{"id":42}"#, &[("content-type", "application/json")])?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`PubSubError`] from the host.
pub fn publish(subject: &str, payload: &[u8], headers: &[(&str, &str)]) -> Result<(), PubSubError> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    host::publish(subject, payload, &headers)
}
