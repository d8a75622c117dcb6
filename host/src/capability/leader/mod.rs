//! The `leader` capability: plugins observe the leader elections this node
//! takes part in. Only the host campaigns, for the groups named in config.
//!
//! * [`LeaseBackend`] is what an election runs on: campaign, renew, resign
//!   and observe a lease with a term (the fencing token). The embedded
//!   backend ([`file::FileLeases`]) keeps leases in files shared by the
//!   processes of one machine; [`nats::NatsLeases`] keeps them in a NATS
//!   JetStream key-value bucket (campaign = create-if-absent or
//!   compare-and-set on the key's revision, term = stored term + 1).
//! * [`elector::Elector`] runs one election loop per group, publishes this
//!   node's view ([`LeaderView`], read synchronously on the request path),
//!   counts elections and leadership changes, and resigns on shutdown.

pub mod elector;
pub mod file;
pub mod nats;

pub use elector::{Elector, ElectorOptions};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// The lease backend the elections run on, to check a fencing token
    /// against (see [`crate::capability::events::fence`]); `None` when this
    /// process takes part in no election.
    fn leases(&self) -> Option<std::sync::Arc<dyn LeaseBackend>> {
        None
    }
}

/// A lease held by this node: proof of leadership of `group` for `term`
/// until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The election group.
    pub group: String,
    /// The holder (this node).
    pub holder: String,
    /// The term: strictly greater than every earlier term of the group.
    pub term: u64,
    /// Expiry, in milliseconds since the Unix epoch.
    pub expires_ms: u64,
}

/// What the backend holds for a group: the last holder, its term and its
/// expiry (which may be in the past: the group then has no live leader, but
/// the term is kept so that the next one is higher).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderRecord {
    /// The holder's node id.
    pub holder: String,
    /// The holder's term.
    pub term: u64,
    /// Expiry, in milliseconds since the Unix epoch (0 after a resignation).
    pub expires_ms: u64,
}

impl LeaderRecord {
    /// Whether the lease is still valid at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }
}

/// The outcome of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This node now leads the group, with a new (higher) term.
    Elected(Lease),
    /// Another node holds a live lease.
    Held(LeaderRecord),
}

/// A failed backend operation. The election treats it as "unknown": a
/// follower stays follower, a leader keeps trying until its renew deadline.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LeaderError {
    /// The backend cannot answer right now (I/O error, lock held too long,
    /// unreachable cluster).
    #[error("leader election backend unavailable: {0}")]
    Unavailable(String),
    /// The stored record is unreadable.
    #[error("corrupt lease record for group {group:?}: {detail}")]
    Corrupt {
        /// The group.
        group: String,
        /// What is wrong.
        detail: String,
    },
}

/// Where elections run. Every operation is atomic with respect to the other
/// nodes sharing the backend.
#[async_trait::async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// Try to take `group` for `node` for `ttl`: succeeds when there is no
    /// record, the record expired, or it is `node`'s own (a re-election);
    /// the new lease's term is the stored term + 1. Otherwise returns the
    /// live record.
    async fn campaign(
        &self,
        group: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Campaign, LeaderError>;

    /// Extend `lease` by `ttl` from now, if the record is still that lease
    /// (same holder and term). `None` when it was lost (taken by another
    /// node after it expired).
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, LeaderError>;

    /// Give up `lease` now (the record expires, the term is kept) so that
    /// another node can take over without waiting for the TTL. Does nothing
    /// when the lease was already lost.
    async fn resign(&self, lease: &Lease) -> Result<(), LeaderError>;

    /// The group's current record, live or not; `None` when nobody ever led
    /// it.
    async fn observe(&self, group: &str) -> Result<Option<LeaderRecord>, LeaderError>;
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The view of a process that takes part in no election (benchmarks,
/// tools): every group has no leader as far as it knows.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoElections;

impl LeaderView for NoElections {
    fn status(&self, _group: &str) -> Option<Leadership> {
        None
    }
}
