//! The election loop: one task per group this node campaigns for, and the
//! node's view of every group, read synchronously by plugins
//! ([`LeaderView`]), ticks and `/admin/leader`.
//!
//! Timing follows Kubernetes' leader election. A follower tries to take the
//! lease every `retry_period`. A leader renews it every `retry_period`; its
//! leadership is valid locally until `renew_deadline` after the start of its
//! last successful renewal, measured on the monotonic clock. Because
//! `renew_deadline < lease_ttl`, a leader that cannot renew (backend
//! unavailable, process stopped) stops acting as leader before its lease
//! expires and another node may take it. After a pause (SIGSTOP, a long GC
//! in the host, a frozen VM) the first thing a reader sees is that the
//! deadline passed, before the loop has run again: [`LeaderView::status`]
//! checks the clock on every call.

use super::{unix_now_ms, Campaign, LeaderRecord, LeaderView, Leadership, Lease, LeaseBackend};
use ficus_config::Config;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Election settings of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectorOptions {
    /// This node's id.
    pub node_id: String,
    /// Lease time-to-live.
    pub lease_ttl: Duration,
    /// Longest time a leader acts without a successful renewal.
    pub renew_deadline: Duration,
    /// Interval of renewals and of campaigns.
    pub retry_period: Duration,
    /// The groups to campaign for.
    pub groups: Vec<String>,
}

impl ElectorOptions {
    /// The settings of `[leader]` (and the groups of `[[ticks]]`).
    pub fn from_config(config: &Config) -> ElectorOptions {
        let l = &config.leader;
        ElectorOptions {
            node_id: l.node_id.clone().unwrap_or_else(default_node_id),
            lease_ttl: Duration::from_millis(l.lease_ttl_ms),
            renew_deadline: Duration::from_millis(l.renew_deadline_ms),
            retry_period: Duration::from_millis(l.retry_period_ms),
            groups: config.leader_groups().into_iter().collect(),
        }
    }
}

/// `<hostname>-<pid>`: unique among the processes of one machine, and
/// different after a restart (a restarted node is a new candidate).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ficus".to_owned());
    format!("{host}-{}", std::process::id())
}

/// This node's knowledge of one group.
#[derive(Debug, Default)]
struct GroupView {
    /// The last record seen in the backend (from a campaign, renewal or
    /// observation).
    record: Option<LeaderRecord>,
    /// Our lease, while we lead.
    lease: Option<Lease>,
    /// Our leadership is valid until then (start of the last successful
    /// renewal + renew deadline).
    valid_until: Option<Instant>,
    /// The term of our latest leadership, kept after we lose it.
    last_term: Option<u64>,
}

impl GroupView {
    fn leads(&self, now: Instant) -> Option<&Lease> {
        match (&self.lease, self.valid_until) {
            (Some(lease), Some(until)) if now < until => Some(lease),
            _ => None,
        }
    }
}

struct Group {
    name: String,
    view: RwLock<GroupView>,
}

impl Group {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, GroupView> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, GroupView> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What `/admin/leader` shows for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    /// `leader` when this node holds a valid lease, else `follower`.
    pub role: &'static str,
    /// The live leader's id, if any.
    pub leader_id: Option<String>,
    /// The latest term this node knows of (live leader or not).
    pub term: Option<u64>,
    /// When the live leader's lease expires (Unix milliseconds).
    pub lease_expires_ms: Option<u64>,
    /// The term of this node's latest leadership, if it ever led.
    pub last_term: Option<u64>,
    /// This node led with `last_term` and no longer does, and a higher term
    /// exists: anything it did as leader is fenced off.
    pub stale: bool,
}

/// What `/admin/leader` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElectorStatus {
    /// This node's id.
    pub node_id: String,
    /// [`ElectorOptions::lease_ttl`], in milliseconds.
    pub lease_ttl_ms: u64,
    /// [`ElectorOptions::renew_deadline`], in milliseconds.
    pub renew_deadline_ms: u64,
    /// [`ElectorOptions::retry_period`], in milliseconds.
    pub retry_period_ms: u64,
    /// Each group this node campaigns for.
    pub groups: BTreeMap<String, GroupStatus>,
}

/// Runs this node's elections and publishes its view of them.
pub struct Elector {
    options: ElectorOptions,
    backend: Arc<dyn LeaseBackend>,
    groups: BTreeMap<String, Arc<Group>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Elector {
    /// An elector for `options.groups` on `backend`; nothing runs until
    /// [`Elector::start`].
    pub fn new(options: ElectorOptions, backend: Arc<dyn LeaseBackend>) -> Elector {
        let groups = options
            .groups
            .iter()
            .map(|name| {
                let group = Group {
                    name: name.clone(),
                    view: RwLock::new(GroupView::default()),
                };
                (name.clone(), Arc::new(group))
            })
            .collect();
        Elector {
            options,
            backend,
            groups,
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.options.node_id
    }

    /// Campaign once for every group (so a node alone is leader as soon as
    /// this returns), then keep campaigning and renewing in the background
    /// until [`Elector::shutdown`].
    pub async fn start(self: &Arc<Self>) {
        for group in self.groups.values() {
            ::metrics::gauge!("ficus_leader_is_leader", "group" => group.name.clone()).set(0.0);
            ::metrics::counter!("ficus_leader_elections_total", "group" => group.name.clone())
                .absolute(0);
            ::metrics::counter!("ficus_leader_changes_total", "group" => group.name.clone())
                .absolute(0);
            self.round(group).await;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for group in self.groups.values() {
            let (this, group) = (self.clone(), group.clone());
            let stop = self.stop.subscribe();
            tasks.push(tokio::spawn(
                async move { this.run_group(group, stop).await },
            ));
        }
    }

    /// Stop campaigning and resign every lease this node holds, so that
    /// another node takes over within about one retry period instead of a
    /// lease TTL. Waits for the resignations (at most one retry period
    /// each).
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The term of this node's leadership of `group`, if it currently holds
    /// a valid lease (checked against the clock now).
    pub fn term_if_leader(&self, group: &str) -> Option<u64> {
        let g = self.groups.get(group)?;
        let view = g.read();
        view.leads(Instant::now()).map(|l| l.term)
    }

    /// Every group's state, for `/admin/leader`.
    pub fn status_all(&self) -> ElectorStatus {
        let now = Instant::now();
        let now_ms = unix_now_ms();
        let groups = self
            .groups
            .iter()
            .map(|(name, g)| {
                let view = g.read();
                let leads = view.leads(now).cloned();
                let live = view.record.as_ref().filter(|r| r.live_at(now_ms));
                let term = view.record.as_ref().map(|r| r.term);
                let status = GroupStatus {
                    role: if leads.is_some() {
                        "leader"
                    } else {
                        "follower"
                    },
                    leader_id: match &leads {
                        Some(l) => Some(l.holder.clone()),
                        None => live.map(|r| r.holder.clone()),
                    },
                    term,
                    lease_expires_ms: match &leads {
                        Some(l) => Some(l.expires_ms),
                        None => live.map(|r| r.expires_ms),
                    },
                    last_term: view.last_term,
                    stale: leads.is_none()
                        && matches!((view.last_term, term), (Some(mine), Some(t)) if t > mine),
                };
                (name.clone(), status)
            })
            .collect();
        ElectorStatus {
            node_id: self.options.node_id.clone(),
            lease_ttl_ms: self.options.lease_ttl.as_millis() as u64,
            renew_deadline_ms: self.options.renew_deadline.as_millis() as u64,
            retry_period_ms: self.options.retry_period.as_millis() as u64,
            groups,
        }
    }

    async fn run_group(self: Arc<Self>, group: Arc<Group>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.retry_period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            self.round(&group).await;
        }
        let lease = {
            let mut view = group.write();
            view.valid_until = None;
            view.lease.take()
        };
        self.set_leader_gauge(&group, false);
        if let Some(lease) = lease {
            match self.backend.resign(&lease).await {
                Ok(()) => {
                    tracing::info!(group = %group.name, term = lease.term, "resigned leadership")
                }
                Err(e) => {
                    tracing::warn!(group = %group.name, "cannot resign (the lease will expire): {e}")
                }
            }
        }
    }

    /// One step of the election: renew if leading, else campaign.
    async fn round(&self, group: &Group) {
        let started = Instant::now();
        let lease = {
            let view = group.read();
            match (&view.lease, view.valid_until) {
                (Some(lease), Some(until)) => Some((lease.clone(), until)),
                _ => None,
            }
        };
        if let Some((lease, until)) = lease {
            if started >= until {
                tracing::warn!(
                    group = %group.name,
                    term = lease.term,
                    "could not renew the lease within the renew deadline: stepping down"
                );
                self.step_down(group);
            } else {
                match self.backend.renew(&lease, self.options.lease_ttl).await {
                    Ok(Some(renewed)) => {
                        let mut view = group.write();
                        view.record = Some(LeaderRecord {
                            holder: renewed.holder.clone(),
                            term: renewed.term,
                            expires_ms: renewed.expires_ms,
                        });
                        view.lease = Some(renewed);
                        view.valid_until = Some(started + self.options.renew_deadline);
                        return;
                    }
                    Ok(None) => {
                        tracing::warn!(group = %group.name, term = lease.term, "lost the lease to another node");
                        self.step_down(group);
                        match self.backend.observe(&group.name).await {
                            Ok(record) => self.observed(group, record),
                            Err(e) => tracing::warn!(group = %group.name, "{e}"),
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(group = %group.name, "cannot renew the lease (will retry until the renew deadline): {e}");
                        return;
                    }
                }
            }
        }
        match self
            .backend
            .campaign(&group.name, &self.options.node_id, self.options.lease_ttl)
            .await
        {
            Ok(Campaign::Elected(lease)) => {
                tracing::info!(group = %group.name, term = lease.term, node = %lease.holder, "elected leader");
                ::metrics::counter!("ficus_leader_elections_total", "group" => group.name.clone())
                    .increment(1);
                self.observed(
                    group,
                    Some(LeaderRecord {
                        holder: lease.holder.clone(),
                        term: lease.term,
                        expires_ms: lease.expires_ms,
                    }),
                );
                {
                    let mut view = group.write();
                    view.last_term = Some(lease.term);
                    view.lease = Some(lease);
                    view.valid_until = Some(started + self.options.renew_deadline);
                }
                self.set_leader_gauge(group, true);
            }
            Ok(Campaign::Held(record)) => self.observed(group, Some(record)),
            Err(e) => tracing::warn!(group = %group.name, "campaign failed: {e}"),
        }
    }

    fn step_down(&self, group: &Group) {
        {
            let mut view = group.write();
            view.lease = None;
            view.valid_until = None;
        }
        self.set_leader_gauge(group, false);
    }

    /// Record what the backend holds, counting a change of leader.
    fn observed(&self, group: &Group, record: Option<LeaderRecord>) {
        let mut view = group.write();
        let key = |r: &Option<LeaderRecord>| r.as_ref().map(|r| (r.holder.clone(), r.term));
        if record.is_some() && key(&view.record) != key(&record) {
            if let Some(r) = &record {
                tracing::info!(group = %group.name, leader = %r.holder, term = r.term, "leader observed");
            }
            ::metrics::counter!("ficus_leader_changes_total", "group" => group.name.clone())
                .increment(1);
        }
        if record.is_some() {
            view.record = record;
        }
    }

    fn set_leader_gauge(&self, group: &Group, leader: bool) {
        ::metrics::gauge!("ficus_leader_is_leader", "group" => group.name.clone()).set(if leader {
            1.0
        } else {
            0.0
        });
    }
}

impl LeaderView for Elector {
    fn status(&self, group: &str) -> Option<Leadership> {
        let g = self.groups.get(group)?;
        let view = g.read();
        if let Some(lease) = view.leads(Instant::now()) {
            return Some(Leadership {
                leader_id: lease.holder.clone(),
                term: lease.term,
                is_self: true,
                lease_expires_ms: lease.expires_ms,
            });
        }
        let record = view.record.as_ref().filter(|r| r.live_at(unix_now_ms()))?;
        Some(Leadership {
            leader_id: record.holder.clone(),
            term: record.term,
            is_self: false,
            lease_expires_ms: record.expires_ms,
        })
    }

    fn leases(&self) -> Option<Arc<dyn LeaseBackend>> {
        Some(self.backend.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::file::FileLeases;
    use super::*;

    fn options(node: &str) -> ElectorOptions {
        ElectorOptions {
            node_id: node.into(),
            // Generous: a loaded test machine must not miss renewals.
            lease_ttl: Duration::from_millis(3000),
            renew_deadline: Duration::from_millis(2000),
            retry_period: Duration::from_millis(100),
            groups: vec!["g".into()],
        }
    }

    fn backend(dir: &std::path::Path) -> Arc<dyn LeaseBackend> {
        Arc::new(FileLeases::new(dir, Duration::from_millis(100)))
    }

    #[tokio::test]
    async fn one_leader_and_fast_handover_on_shutdown() {
        let dir = std::env::temp_dir().join(format!("ficus-elector-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Arc::new(Elector::new(options("a"), backend(&dir)));
        let b = Arc::new(Elector::new(options("b"), backend(&dir)));
        a.start().await;
        b.start().await;
        // A alone at start: leader at once; b sees a.
        let sa = a.status("g").expect("a leads");
        assert!(sa.is_self);
        assert_eq!((sa.leader_id.as_str(), sa.term), ("a", 1));
        let sb = b.status("g").expect("b sees a");
        assert!(!sb.is_self);
        assert_eq!((sb.leader_id.as_str(), sb.term), ("a", 1));
        assert_eq!(b.term_if_leader("g"), None);
        assert_eq!(a.status("other"), None);
        // Leadership survives several renewals.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(a.term_if_leader("g"), Some(1));
        // Shutdown resigns: b takes over within about a retry period.
        let started = Instant::now();
        a.shutdown().await;
        assert_eq!(a.term_if_leader("g"), None);
        loop {
            if let Some(term) = b.term_if_leader("g") {
                assert_eq!(term, 2);
                break;
            }
            // Far below the 3 s TTL: the lease was resigned, not expired.
            assert!(
                started.elapsed() < Duration::from_millis(1000),
                "no handover"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = a.status_all();
        assert_eq!(status.groups["g"].role, "follower");
        assert_eq!(status.groups["g"].last_term, Some(1));
        let status = b.status_all();
        assert_eq!(status.groups["g"].role, "leader");
        assert_eq!(status.groups["g"].leader_id.as_deref(), Some("b"));
        b.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A paused leader (here: its single-threaded runtime blocked, as a
    /// stopped process would be) no longer claims leadership once its renew
    /// deadline has passed, before its election loop has run again; when
    /// the loop runs, it steps down and a re-election gives a new term.
    #[tokio::test]
    async fn a_paused_leader_stops_acting_before_its_loop_runs_again() {
        let dir = std::env::temp_dir().join(format!("ficus-elector-pause-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A long lease: it outlives the pause, only the renew deadline passes.
        let options = ElectorOptions {
            lease_ttl: Duration::from_secs(5),
            renew_deadline: Duration::from_millis(400),
            ..options("a")
        };
        let a = Arc::new(Elector::new(options, backend(&dir)));
        a.start().await;
        assert_eq!(a.term_if_leader("g"), Some(1));
        std::thread::sleep(Duration::from_millis(450));
        assert_eq!(a.term_if_leader("g"), None);
        let s = a.status("g").expect("the lease itself has not expired yet");
        assert!(!s.is_self, "{s:?}");
        assert_eq!(a.status_all().groups["g"].role, "follower");
        let started = Instant::now();
        while a.term_if_leader("g") != Some(2) {
            assert!(started.elapsed() < Duration::from_secs(2), "not re-elected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
