//! The embedded election backend: leases in files under
//! `<backend.data_dir>/leader/`, shared by the `ficus` processes of one
//! machine. No network, nothing to install.
//!
//! Per group, `<group>.lock` is an OS file lock (`flock`) held only for the
//! few microseconds it takes to read and rewrite `<group>.lease`, the lease
//! record (JSON: holder, term, expiry in Unix milliseconds). The record is
//! replaced atomically (temporary file + rename), so a reader never sees a
//! partial one and a process killed at any point leaves a valid record. The
//! term lives in the record and only ever increases: a resignation or an
//! expiry keeps it, and the next holder gets term + 1. A new term is synced
//! to disk before the campaign returns, so a machine crash cannot hand out a
//! term twice.
//!
//! The lock is taken with `try_lock` in a bounded loop, never a blocking
//! `lock`: a process stopped (SIGSTOP) while holding it must not stall the
//! others forever; they report the backend unavailable for that round.

use super::{Campaign, LeaderError, LeaderRecord, Lease, LeaseBackend};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Leases in files under one directory.
#[derive(Debug, Clone)]
pub struct FileLeases {
    dir: PathBuf,
    lock_timeout: Duration,
}

/// The group's lock, released on drop (closing the file releases `flock`).
struct Locked(#[allow(dead_code)] File);

impl FileLeases {
    /// Leases under `dir` (created on first use). A lock held by another
    /// process for longer than `lock_timeout` makes an operation fail with
    /// [`LeaderError::Unavailable`].
    pub fn new(dir: &Path, lock_timeout: Duration) -> FileLeases {
        FileLeases {
            dir: dir.to_path_buf(),
            lock_timeout,
        }
    }

    /// The directory holding the lease files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lease_path(&self, group: &str) -> PathBuf {
        self.dir.join(format!("{group}.lease"))
    }

    fn lock(&self, group: &str) -> Result<Locked, LeaderError> {
        let path = self.dir.join(format!("{group}.lock"));
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(|e| {
                    LeaderError::Unavailable(format!("cannot create {}: {e}", self.dir.display()))
                })?;
                open()
            }
            other => other,
        }
        .map_err(|e| LeaderError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let deadline = Instant::now() + self.lock_timeout;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Locked(file)),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(LeaderError::Unavailable(format!(
                        "{} stayed locked for {} ms",
                        path.display(),
                        self.lock_timeout.as_millis()
                    )))
                }
                Err(TryLockError::Error(e)) => {
                    return Err(LeaderError::Unavailable(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    }

    /// Read the record (the caller holds the group's lock, or accepts a
    /// snapshot: the record is always replaced atomically).
    fn read(&self, group: &str) -> Result<Option<LeaderRecord>, LeaderError> {
        let path = self.lease_path(group);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| LeaderError::Corrupt {
                        group: group.to_owned(),
                        detail: format!("{}: {e}", path.display()),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LeaderError::Unavailable(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Replace the record atomically; `durable` syncs it to disk first.
    fn write(&self, group: &str, record: &LeaderRecord, durable: bool) -> Result<(), LeaderError> {
        let path = self.lease_path(group);
        let tmp = self
            .dir
            .join(format!("{group}.lease.tmp-{}", std::process::id()));
        let io = |what: &str, e: std::io::Error| {
            LeaderError::Unavailable(format!("cannot {what} {}: {e}", tmp.display()))
        };
        let bytes = serde_json::to_vec(record).expect("a lease record always serialises");
        let mut file = File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(&bytes).map_err(|e| io("write", e))?;
        if durable {
            file.sync_all().map_err(|e| io("sync", e))?;
        }
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))
    }

    /// [`LeaseBackend::campaign`], blocking.
    pub fn campaign_blocking(
        &self,
        group: &str,
        node: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Campaign, LeaderError> {
        let _lock = self.lock(group)?;
        let current = self.read(group)?;
        let term = match &current {
            Some(r) if r.live_at(now_ms) && r.holder != node => {
                return Ok(Campaign::Held(r.clone()));
            }
            Some(r) => r.term + 1,
            None => 1,
        };
        let record = LeaderRecord {
            holder: node.to_owned(),
            term,
            expires_ms: now_ms + ttl.as_millis() as u64,
        };
        self.write(group, &record, true)?;
        Ok(Campaign::Elected(Lease {
            group: group.to_owned(),
            holder: record.holder,
            term,
            expires_ms: record.expires_ms,
        }))
    }

    /// [`LeaseBackend::renew`], blocking.
    pub fn renew_blocking(
        &self,
        lease: &Lease,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Option<Lease>, LeaderError> {
        let _lock = self.lock(&lease.group)?;
        match self.read(&lease.group)? {
            Some(r) if r.holder == lease.holder && r.term == lease.term => {
                let record = LeaderRecord {
                    expires_ms: now_ms + ttl.as_millis() as u64,
                    ..r
                };
                self.write(&lease.group, &record, false)?;
                Ok(Some(Lease {
                    expires_ms: record.expires_ms,
                    ..lease.clone()
                }))
            }
            _ => Ok(None),
        }
    }

    /// [`LeaseBackend::resign`], blocking.
    pub fn resign_blocking(&self, lease: &Lease) -> Result<(), LeaderError> {
        let _lock = self.lock(&lease.group)?;
        match self.read(&lease.group)? {
            Some(r) if r.holder == lease.holder && r.term == lease.term => {
                let record = LeaderRecord { expires_ms: 0, ..r };
                self.write(&lease.group, &record, false)
            }
            _ => Ok(()),
        }
    }

    /// [`LeaseBackend::observe`], blocking.
    pub fn observe_blocking(&self, group: &str) -> Result<Option<LeaderRecord>, LeaderError> {
        self.read(group)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LeaderError> + Send + 'static,
) -> Result<T, LeaderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LeaderError::Unavailable(format!("lease file task failed: {e}")))?
}

#[async_trait::async_trait]
impl LeaseBackend for FileLeases {
    async fn campaign(
        &self,
        group: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Campaign, LeaderError> {
        let (this, group, node) = (self.clone(), group.to_owned(), node.to_owned());
        blocking(move || this.campaign_blocking(&group, &node, ttl, super::unix_now_ms())).await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, LeaderError> {
        let (this, lease) = (self.clone(), lease.clone());
        blocking(move || this.renew_blocking(&lease, ttl, super::unix_now_ms())).await
    }

    async fn resign(&self, lease: &Lease) -> Result<(), LeaderError> {
        let (this, lease) = (self.clone(), lease.clone());
        blocking(move || this.resign_blocking(&lease)).await
    }

    async fn observe(&self, group: &str) -> Result<Option<LeaderRecord>, LeaderError> {
        let (this, group) = (self.clone(), group.to_owned());
        blocking(move || this.observe_blocking(&group)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(1000);

    fn dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ficus-leases-{label}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn leases(dir: &Path) -> FileLeases {
        FileLeases::new(dir, Duration::from_millis(200))
    }

    fn elected(c: Campaign) -> Lease {
        match c {
            Campaign::Elected(lease) => lease,
            Campaign::Held(r) => panic!("expected to be elected, {r:?} holds the lease"),
        }
    }

    #[test]
    fn term_strictly_increases_across_holders() {
        let d = dir("terms");
        let (a, b) = (leases(&d), leases(&d));
        let first = elected(a.campaign_blocking("g", "a", TTL, 10_000).unwrap());
        assert_eq!(first.term, 1);
        // b cannot take a live lease, and learns who holds it.
        match b.campaign_blocking("g", "b", TTL, 10_500).unwrap() {
            Campaign::Held(r) => {
                assert_eq!((r.holder.as_str(), r.term), ("a", 1));
                assert_eq!(r.expires_ms, 11_000);
            }
            other => panic!("b took a live lease: {other:?}"),
        }
        let mut last = first.term;
        // Holders alternate through expiries and resignations; terms only grow.
        let mut now = 11_000;
        for (i, node) in ["b", "a", "b", "c"].into_iter().enumerate() {
            let lease = elected(b.campaign_blocking("g", node, TTL, now).unwrap());
            assert!(lease.term > last, "term {} after {last}", lease.term);
            last = lease.term;
            if i % 2 == 0 {
                a.resign_blocking(&lease).unwrap();
                let r = a.observe_blocking("g").unwrap().unwrap();
                assert_eq!(
                    (r.term, r.expires_ms),
                    (lease.term, 0),
                    "resign keeps the term"
                );
            } else {
                now += TTL.as_millis() as u64;
            }
        }
        assert_eq!(last, 5);
        // The term survives a new backend instance (a restarted process).
        let fresh = leases(&d);
        assert_eq!(fresh.observe_blocking("g").unwrap().unwrap().term, 5);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn expired_lease_can_be_taken_and_stale_holder_cannot_renew() {
        let d = dir("expiry");
        let (a, b) = (leases(&d), leases(&d));
        let old = elected(a.campaign_blocking("g", "a", TTL, 1_000).unwrap());
        let renewed = a
            .renew_blocking(&old, TTL, 1_500)
            .unwrap()
            .expect("still ours");
        assert_eq!(renewed.expires_ms, 2_500);
        assert_eq!(renewed.term, old.term);
        // Not expired yet at 2 499.
        assert!(matches!(
            b.campaign_blocking("g", "b", TTL, 2_499).unwrap(),
            Campaign::Held(_)
        ));
        let new = elected(b.campaign_blocking("g", "b", TTL, 2_500).unwrap());
        assert_eq!(new.term, old.term + 1);
        // The stale holder's renew and resign fail and change nothing.
        assert_eq!(a.renew_blocking(&renewed, TTL, 2_600).unwrap(), None);
        a.resign_blocking(&renewed).unwrap();
        let r = b.observe_blocking("g").unwrap().unwrap();
        assert_eq!((r.holder.as_str(), r.term, r.expires_ms), ("b", 2, 3_500));
        // Groups are independent.
        assert_eq!(
            elected(a.campaign_blocking("h", "a", TTL, 2_600).unwrap()).term,
            1
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn held_lock_times_out_and_corrupt_record_is_reported() {
        let d = dir("lock");
        let a = leases(&d);
        let held = a.lock("g").unwrap();
        let started = Instant::now();
        let e = a.campaign_blocking("g", "a", TTL, 0).unwrap_err();
        assert!(
            matches!(e, LeaderError::Unavailable(ref m) if m.contains("stayed locked")),
            "{e}"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(held);
        std::fs::write(d.join("g.lease"), b"{not json").unwrap();
        let e = a.campaign_blocking("g", "a", TTL, 0).unwrap_err();
        assert!(matches!(e, LeaderError::Corrupt { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn async_api_runs_the_same_operations() {
        let d = dir("async");
        let backend: Box<dyn LeaseBackend> = Box::new(leases(&d));
        assert_eq!(backend.observe("g").await.unwrap(), None);
        let lease = elected(backend.campaign("g", "a", TTL).await.unwrap());
        let renewed = backend.renew(&lease, TTL).await.unwrap().expect("ours");
        assert!(renewed.expires_ms >= lease.expires_ms);
        backend.resign(&renewed).await.unwrap();
        let r = backend.observe("g").await.unwrap().unwrap();
        assert_eq!((r.term, r.expires_ms), (1, 0));
        let _ = std::fs::remove_dir_all(&d);
    }
}
