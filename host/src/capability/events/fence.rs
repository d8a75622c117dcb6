//! Fenced appends: a deposed leader's late writes are refused.
//!
//! A tick plugin runs only on the leader of its election group, and the
//! host hands it the term of that leadership (the fencing token). A leader
//! can be paused (GC, SIGSTOP, a VM migration) past its lease while a call
//! is in progress; when it resumes, another node may lead with a higher
//! term. Every append a tick plugin makes is therefore checked against the
//! lease backend (the same one the election runs on: lease files on one
//! machine, the NATS key-value bucket in a cluster) right before it is
//! written: the group's record must still hold the caller's term, live.
//! Otherwise the append fails with [`EventsError::Fenced`] (the plugin sees
//! `invalid("fenced: …")`) and nothing is stored.
//!
//! What this guarantees: an append by a leader whose term was superseded,
//! or whose lease expired, before the append started is refused. What it
//! does not: the check and the write are two steps on two different
//! stores, so a leader paused for longer than its lease in the
//! microseconds between them can still land that one append. Expected
//! versions close that gap for writers of the same stream: the new
//! leader's writes and the late one cannot both succeed at one version.

use super::EventsError;
use crate::capability::leader::{unix_now_ms, LeaseBackend};

/// The leadership an append is made under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The election group.
    pub group: std::sync::Arc<str>,
    /// The term of the caller's leadership.
    pub term: u64,
}

/// Check that `fence` is still the live leadership of its group in
/// `leases`.
pub async fn check(leases: &dyn LeaseBackend, fence: &Fence) -> Result<(), EventsError> {
    let record = leases
        .observe(&fence.group)
        .await
        .map_err(|e| EventsError::Unavailable(format!("cannot check the fencing token: {e}")))?;
    let refuse = |current: String| {
        metrics::counter!("ficus_events_fenced_total", "group" => fence.group.to_string())
            .increment(1);
        Err(EventsError::Fenced {
            group: fence.group.to_string(),
            term: fence.term,
            current,
        })
    };
    match record {
        Some(r) if r.term == fence.term && r.live_at(unix_now_ms()) => Ok(()),
        Some(r) if r.term == fence.term => {
            refuse(format!("the lease of term {} has expired", r.term))
        }
        Some(r) => refuse(format!(
            "the group is at term {}, held by {}",
            r.term, r.holder
        )),
        None => refuse("the group has no leader".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::leader::file::FileLeases;
    use crate::capability::leader::{Campaign, LeaseBackend};
    use std::time::Duration;

    #[tokio::test]
    async fn a_superseded_or_expired_term_is_refused() {
        let dir = std::env::temp_dir().join(format!(
            "ficus-fence-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let leases = FileLeases::new(&dir, Duration::from_millis(500));
        let fence = |term| Fence {
            group: "g".into(),
            term,
        };
        assert!(matches!(
            check(&leases, &fence(1)).await,
            Err(EventsError::Fenced { .. })
        ));
        let Campaign::Elected(a) = leases
            .campaign("g", "a", Duration::from_secs(60))
            .await
            .unwrap()
        else {
            panic!("a elected")
        };
        check(&leases, &fence(a.term)).await.expect("live term");
        // a gives the group up (the record expires, the term is kept); b takes it.
        leases.resign(&a).await.unwrap();
        let err = check(&leases, &fence(a.term)).await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let Campaign::Elected(b) = leases
            .campaign("g", "b", Duration::from_secs(60))
            .await
            .unwrap()
        else {
            panic!("b elected")
        };
        assert!(b.term > a.term);
        let err = check(&leases, &fence(a.term)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "fenced: term {} of group \"g\" is stale (the group is at term {}, held by b)",
                a.term, b.term
            )
        );
        check(&leases, &fence(b.term)).await.expect("the new term");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
