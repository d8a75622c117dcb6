//! Leader elections as this gateway node sees them (capability `leader`).
//!
//! Plugins observe elections; only the host campaigns, for the groups named
//! in its config (`[leader] groups` and the groups of `[[ticks]]`). Calling
//! [`status`] makes the component import `ficus:gateway/leader`, so the
//! plugin must be granted `"leader"`.

use crate::wit::ficus::gateway::leader as host;

/// A group's leadership: the leader's node id, its term (a fencing token
/// that strictly increases with every new leadership: tag writes with it so
/// a deposed leader's late writes can be rejected), whether this node is
/// the leader, and when the lease expires (Unix milliseconds).
pub use host::Leadership;

/// The group's current leadership, or `None` when the group has no live
/// leader or this node does not take part in it.
///
/// ```rust,no_run
/// if let Some(l) = ficus_sdk::leader::status("default") {
///     if l.is_self {
///         // Only the leader does this; tag the write with l.term.
///     }
/// }
/// ```
pub fn status(group: &str) -> Option<Leadership> {
    host::status(group)
}
