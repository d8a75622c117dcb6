//! Prometheus metrics through the host (capability `metrics`).
//!
//! The host exports them at the admin listener's `/metrics`, adding `plugin`
//! and `route` labels. Calling any function here makes the component import
//! `ficus:gateway/metrics`, so the route must grant `"metrics"`.
//!
//! Names must match `[a-zA-Z_:][a-zA-Z0-9_:]*` and must not start with
//! `ficus_`; label names follow the same rule without `:`. Invalid names are
//! reported as `Err` (never a trap).

use crate::wit::ficus::gateway::metrics as host;

fn owned(labels: &[(&str, &str)]) -> Vec<host::Label> {
    labels
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// Add `value` to a monotonically increasing counter.
///
/// # Errors
///
/// The host's message when the name or a label is invalid.
pub fn counter_add(name: &str, value: u64, labels: &[(&str, &str)]) -> Result<(), String> {
    host::counter_add(name, value, &owned(labels))
}

/// Set a gauge to `value`.
///
/// # Errors
///
/// The host's message when the name or a label is invalid.
pub fn gauge_set(name: &str, value: f64, labels: &[(&str, &str)]) -> Result<(), String> {
    host::gauge_set(name, value, &owned(labels))
}

/// Record one observation in a histogram (e.g. a latency in seconds).
///
/// # Errors
///
/// The host's message when the name or a label is invalid.
pub fn histogram_observe(name: &str, value: f64, labels: &[(&str, &str)]) -> Result<(), String> {
    host::histogram_observe(name, value, &owned(labels))
}
