//! The `leader` capability: plugins observe the leader elections this node
//! takes part in. Only the host campaigns, for the groups named in config.

/// A group's current leadership as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Leadership {
    /// The leader node's id.
    pub leader_id: String,
    /// Fencing token: strictly increases with every new leadership.
    pub term: u64,
    /// Whether this node is the leader and its lease is valid.
    pub is_self: bool,
    /// When the lease expires, in milliseconds since the Unix epoch.
    pub lease_expires_ms: u64,
}

/// Read access to this node's view of its election groups. Reads are
/// synchronous and cheap: the election runs in the background and publishes
/// its view.
pub trait LeaderView: Send + Sync + 'static {
    /// The group's leadership, or `None` when the group has no live leader
    /// or this node does not take part in it.
    fn status(&self, group: &str) -> Option<Leadership>;
}
