//! The embedded state backend: an in-process moka cache with per-entry TTL.
//! Shared by every worker thread and plugin instance of one gateway process.

use super::{check_sizes, Entry, StateBackend, StateError};
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use moka::Expiry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Stored {
    value: std::sync::Arc<[u8]>,
    revision: u64,
    expires_at: Option<Instant>,
}

impl Stored {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

struct PerEntryTtl;

impl Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _k: &String, v: &Stored, now: Instant) -> Option<Duration> {
        v.expires_at.map(|t| t.saturating_duration_since(now))
    }
    fn expire_after_update(
        &self,
        _k: &String,
        v: &Stored,
        now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        v.expires_at.map(|t| t.saturating_duration_since(now))
    }
}

/// In-process key/value store.
pub struct EmbeddedState {
    cache: Cache<String, Stored>,
    revision: AtomicU64,
}

impl EmbeddedState {
    /// A store holding at most `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Stored| {
                u32::try_from(k.len() + v.value.len() + 64).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        EmbeddedState {
            cache,
            revision: AtomicU64::new(0),
        }
    }

    fn next_revision(&self) -> u64 {
        self.revision.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn stored(&self, value: &[u8], ttl: Option<Duration>) -> Stored {
        Stored {
            value: value.into(),
            revision: self.next_revision(),
            expires_at: ttl.map(|d| Instant::now() + d),
        }
    }
}

impl Default for EmbeddedState {
    fn default() -> Self {
        Self::new(64 * 1024 * 1024)
    }
}

#[async_trait::async_trait]
impl StateBackend for EmbeddedState {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        check_sizes(key, None)?;
        let now = Instant::now();
        Ok(self.cache.get(key).filter(|s| s.live(now)).map(|s| Entry {
            value: s.value.to_vec(),
            revision: s.revision,
        }))
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<u64, StateError> {
        check_sizes(key, Some(&value))?;
        let stored = self.stored(&value, ttl);
        let rev = stored.revision;
        self.cache.insert(key.to_owned(), stored);
        Ok(rev)
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>, StateError> {
        check_sizes(key, Some(&value))?;
        let now = Instant::now();
        let mut new_rev = None;
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            let current_rev = current
                .map(|e| e.into_value())
                .filter(|s| s.live(now))
                .map(|s| s.revision);
            if current_rev == expected {
                let stored = self.stored(&value, ttl);
                new_rev = Some(stored.revision);
                Op::Put(stored)
            } else {
                Op::Nop
            }
        });
        Ok(new_rev)
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StateError> {
        check_sizes(key, None)?;
        let now = Instant::now();
        let mut outcome: Result<i64, StateError> = Ok(0);
        let result = self.cache.entry_by_ref(key).and_compute_with(|current| {
            let current = current.map(|e| e.into_value()).filter(|s| s.live(now));
            let (base, expires_at) = match &current {
                None => (0i64, ttl.map(|d| now + d)),
                Some(s) => {
                    let parsed = std::str::from_utf8(&s.value)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok());
                    match parsed {
                        Some(n) => (n, s.expires_at),
                        None => {
                            outcome =
                                Err(StateError::Invalid("value is not a decimal integer".into()));
                            return Op::Nop;
                        }
                    }
                }
            };
            let Some(next) = base.checked_add(delta) else {
                outcome = Err(StateError::Invalid("counter overflow".into()));
                return Op::Nop;
            };
            outcome = Ok(next);
            Op::Put(Stored {
                value: next.to_string().into_bytes().into(),
                revision: self.next_revision(),
                expires_at,
            })
        });
        drop(result);
        outcome
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        check_sizes(key, None)?;
        let now = Instant::now();
        let removed = self
            .cache
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(_) => Op::Remove,
                None => Op::Nop,
            });
        Ok(matches!(removed, CompResult::Removed(e) if e.value().live(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn set_get_and_revisions_increase() {
        block(async {
            let s = EmbeddedState::default();
            assert_eq!(s.get("a").await.unwrap(), None);
            let r1 = s.set("a", b"1".to_vec(), None).await.unwrap();
            let r2 = s.set("b", b"2".to_vec(), None).await.unwrap();
            assert!(r2 > r1);
            assert_eq!(s.get("a").await.unwrap().unwrap().value, b"1");
        });
    }

    #[test]
    fn compare_and_set_checks_revision() {
        block(async {
            let s = EmbeddedState::default();
            let r1 = s
                .compare_and_set("k", None, b"x".to_vec(), None)
                .await
                .unwrap()
                .unwrap();
            // Key exists now: "absent" precondition fails.
            assert_eq!(
                s.compare_and_set("k", None, b"y".to_vec(), None)
                    .await
                    .unwrap(),
                None
            );
            // Wrong revision fails, right one succeeds.
            assert_eq!(
                s.compare_and_set("k", Some(r1 + 100), b"y".to_vec(), None)
                    .await
                    .unwrap(),
                None
            );
            let r2 = s
                .compare_and_set("k", Some(r1), b"y".to_vec(), None)
                .await
                .unwrap()
                .unwrap();
            assert!(r2 > r1);
            assert_eq!(s.get("k").await.unwrap().unwrap().value, b"y");
        });
    }

    #[test]
    fn increment_counts_and_rejects_non_integers() {
        block(async {
            let s = EmbeddedState::default();
            assert_eq!(s.increment("c", 2, None).await.unwrap(), 2);
            assert_eq!(s.increment("c", -5, None).await.unwrap(), -3);
            s.set("t", b"text".to_vec(), None).await.unwrap();
            assert!(matches!(
                s.increment("t", 1, None).await,
                Err(StateError::Invalid(_))
            ));
            s.set("max", i64::MAX.to_string().into_bytes(), None)
                .await
                .unwrap();
            assert!(matches!(
                s.increment("max", 1, None).await,
                Err(StateError::Invalid(_))
            ));
        });
    }

    #[test]
    fn concurrent_increments_are_atomic() {
        let s = std::sync::Arc::new(EmbeddedState::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    block(async {
                        for _ in 0..1000 {
                            s.increment("n", 1, None).await.unwrap();
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        block(async { assert_eq!(s.increment("n", 0, None).await.unwrap(), 4000) });
    }

    #[test]
    fn ttl_expires_and_delete_reports_existence() {
        block(async {
            let s = EmbeddedState::default();
            s.set("e", b"v".to_vec(), Some(Duration::from_millis(30)))
                .await
                .unwrap();
            assert!(s.get("e").await.unwrap().is_some());
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(s.get("e").await.unwrap().is_none());
            s.set("d", b"v".to_vec(), None).await.unwrap();
            assert!(s.delete("d").await.unwrap());
            assert!(!s.delete("d").await.unwrap());
        });
    }

    #[test]
    fn sizes_are_limited() {
        block(async {
            let s = EmbeddedState::default();
            let big = vec![0u8; super::super::MAX_VALUE_BYTES + 1];
            assert_eq!(s.set("k", big, None).await, Err(StateError::TooLarge));
            let long_key = "k".repeat(super::super::MAX_KEY_BYTES + 1);
            assert_eq!(s.get(&long_key).await, Err(StateError::TooLarge));
        });
    }
}
