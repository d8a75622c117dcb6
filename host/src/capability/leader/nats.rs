//! Leases on a NATS JetStream key-value bucket (default `FICUS_LEADER`), for
//! gateway nodes on several machines: one key per group holding a JSON
//! [`LeaderRecord`].
//!
//! Every change is a compare-and-set on the key's revision (`create` when
//! the key is absent, `update` with the revision read otherwise), so of two
//! nodes campaigning on the same record exactly one succeeds. The term is
//! the stored term + 1 at each election: with the compare-and-set it
//! strictly increases and is never reused, so it is the fencing token. Keys
//! are never deleted (a resignation writes an expiry of 0), so terms survive
//! restarts.
//!
//! Expiry is the record's `expires_ms` read against the local wall clock
//! (nats-server before 2.11 has no per-key TTL and no expiry notification):
//! nodes need clocks in sync (NTP) to well under the lease TTL minus the
//! renew deadline. `ficus run` uses it with `[backend] kind = "nats"`
//! (`app::elector_to_run`).

use super::{Campaign, LeaderError, LeaderRecord, Lease, LeaseBackend};
use async_nats::jetstream::{self, kv};
use std::time::Duration;

/// Default bucket name.
pub const DEFAULT_BUCKET: &str = "FICUS_LEADER";

/// Leases in a JetStream key-value bucket.
pub struct NatsLeases {
    kv: kv::Store,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LeaderError {
    LeaderError::Unavailable(format!("{what}: {e}"))
}

/// The bucket key of `group`: letters, digits, `-` and `_` kept, every other
/// byte written `=XX` (KV keys allow `[-/_=.a-zA-Z0-9]`).
pub fn group_key(group: &str) -> String {
    let mut out = String::with_capacity(group.len());
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

impl NatsLeases {
    /// Use (or create) the bucket `bucket` with `replicas` copies.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
    ) -> Result<NatsLeases, LeaderError> {
        let js = jetstream::new(client);
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    description: "Ficus leader leases".into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&format!("creating the KV bucket {bucket}"), e))?,
        };
        Ok(NatsLeases { kv })
    }

    /// The group's record and the key's revision.
    async fn read(&self, group: &str) -> Result<Option<(LeaderRecord, u64)>, LeaderError> {
        let entry = self
            .kv
            .entry(group_key(group))
            .await
            .map_err(|e| unavailable("reading a lease", e))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record: LeaderRecord =
            serde_json::from_slice(&entry.value).map_err(|e| LeaderError::Corrupt {
                group: group.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Some((record, entry.revision)))
    }

    /// Write `record` if the key is still at `revision` (`None`: absent).
    /// `false` when another node changed it first.
    async fn write(
        &self,
        group: &str,
        record: &LeaderRecord,
        revision: Option<u64>,
    ) -> Result<bool, LeaderError> {
        let value: bytes::Bytes = serde_json::to_vec(record)
            .map_err(|e| unavailable("encoding a lease", e))?
            .into();
        let key = group_key(group);
        match revision {
            None => match self.kv.create(&key, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(unavailable("writing a lease", e)),
            },
            Some(rev) => match self.kv.update(&key, value, rev).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(unavailable("writing a lease", e)),
            },
        }
    }

    /// [`LeaseBackend::campaign`] at wall-clock time `now_ms`.
    pub async fn campaign_at(
        &self,
        group: &str,
        node: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Campaign, LeaderError> {
        let current = self.read(group).await?;
        let (term, revision) = match &current {
            Some((r, _)) if r.live_at(now_ms) && r.holder != node => {
                return Ok(Campaign::Held(r.clone()));
            }
            Some((r, rev)) => (r.term + 1, Some(*rev)),
            None => (1, None),
        };
        let record = LeaderRecord {
            holder: node.to_owned(),
            term,
            expires_ms: now_ms + ttl.as_millis() as u64,
        };
        if self.write(group, &record, revision).await? {
            return Ok(Campaign::Elected(Lease {
                group: group.to_owned(),
                holder: record.holder,
                term,
                expires_ms: record.expires_ms,
            }));
        }
        // Another node won the race: report what it wrote.
        match self.read(group).await? {
            Some((r, _)) => Ok(Campaign::Held(r)),
            None => Err(LeaderError::Unavailable(
                "a lease changed under a campaign and vanished".into(),
            )),
        }
    }

    /// [`LeaseBackend::renew`] at wall-clock time `now_ms`.
    pub async fn renew_at(
        &self,
        lease: &Lease,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Option<Lease>, LeaderError> {
        match self.read(&lease.group).await? {
            Some((r, rev)) if r.holder == lease.holder && r.term == lease.term => {
                let record = LeaderRecord {
                    expires_ms: now_ms + ttl.as_millis() as u64,
                    ..r
                };
                if !self.write(&lease.group, &record, Some(rev)).await? {
                    return Ok(None);
                }
                Ok(Some(Lease {
                    expires_ms: record.expires_ms,
                    ..lease.clone()
                }))
            }
            _ => Ok(None),
        }
    }
}

#[async_trait::async_trait]
impl LeaseBackend for NatsLeases {
    async fn campaign(
        &self,
        group: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Campaign, LeaderError> {
        self.campaign_at(group, node, ttl, super::unix_now_ms())
            .await
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, LeaderError> {
        self.renew_at(lease, ttl, super::unix_now_ms()).await
    }

    async fn resign(&self, lease: &Lease) -> Result<(), LeaderError> {
        if let Some((r, rev)) = self.read(&lease.group).await? {
            if r.holder == lease.holder && r.term == lease.term {
                let record = LeaderRecord { expires_ms: 0, ..r };
                // Lost a race: the lease is not ours any more anyway.
                let _ = self.write(&lease.group, &record, Some(rev)).await?;
            }
        }
        Ok(())
    }

    async fn observe(&self, group: &str) -> Result<Option<LeaderRecord>, LeaderError> {
        Ok(self.read(group).await?.map(|(r, _)| r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::nats_server::NatsServer;

    const TTL: Duration = Duration::from_millis(1000);

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }

    async fn leases(server: &NatsServer) -> NatsLeases {
        let client = async_nats::connect(&server.url).await.unwrap();
        NatsLeases::open(client, DEFAULT_BUCKET, 1).await.unwrap()
    }

    fn elected(c: Campaign) -> Lease {
        match c {
            Campaign::Elected(l) => l,
            Campaign::Held(r) => panic!("expected to be elected, held by {r:?}"),
        }
    }

    /// The file backend's term and expiry rules, on NATS KV.
    #[test]
    fn terms_increase_expired_leases_are_taken_and_stale_holders_cannot_renew() {
        let server = NatsServer::start();
        rt().block_on(async {
            let (a, b) = (leases(&server).await, leases(&server).await);
            let old = elected(a.campaign_at("g.1", "a", TTL, 1_000).await.unwrap());
            assert_eq!(old.term, 1);
            let renewed = a.renew_at(&old, TTL, 1_500).await.unwrap().expect("ours");
            assert_eq!((renewed.expires_ms, renewed.term), (2_500, 1));
            match b.campaign_at("g.1", "b", TTL, 2_499).await.unwrap() {
                Campaign::Held(r) => assert_eq!((r.holder.as_str(), r.term), ("a", 1)),
                other => panic!("b took a live lease: {other:?}"),
            }
            let new = elected(b.campaign_at("g.1", "b", TTL, 2_500).await.unwrap());
            assert_eq!(new.term, 2);
            assert_eq!(a.renew_at(&renewed, TTL, 2_600).await.unwrap(), None);
            a.resign(&renewed).await.unwrap();
            let r = b.observe("g.1").await.unwrap().unwrap();
            assert_eq!((r.holder.as_str(), r.term, r.expires_ms), ("b", 2, 3_500));
            b.resign(&new).await.unwrap();
            let r = a.observe("g.1").await.unwrap().unwrap();
            assert_eq!((r.term, r.expires_ms), (2, 0), "resign keeps the term");
            let again = elected(a.campaign_at("g.1", "a", TTL, 2_700).await.unwrap());
            assert_eq!(again.term, 3);
            // Groups are independent; the term survives a new client.
            assert_eq!(
                elected(a.campaign_at("h", "a", TTL, 2_700).await.unwrap()).term,
                1
            );
            let fresh = leases(&server).await;
            assert_eq!(fresh.observe("g.1").await.unwrap().unwrap().term, 3);
            assert_eq!(fresh.observe("nobody").await.unwrap(), None);
        });
    }

    /// Nodes campaigning at once on an expired lease: exactly one wins each
    /// round, and terms go up by one per round.
    #[test]
    fn concurrent_campaigns_elect_exactly_one_node() {
        let server = NatsServer::start();
        rt().block_on(async {
            let mut nodes = Vec::new();
            for _ in 0..4 {
                nodes.push(std::sync::Arc::new(leases(&server).await));
            }
            for round in 0..20u64 {
                let now = 10_000 + round * 2 * TTL.as_millis() as u64;
                let tasks: Vec<_> = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let n = n.clone();
                        tokio::spawn(async move {
                            n.campaign_at("race", &format!("n{i}"), TTL, now).await
                        })
                    })
                    .collect();
                let mut won = Vec::new();
                for t in tasks {
                    if let Campaign::Elected(l) = t.await.unwrap().unwrap() {
                        won.push(l);
                    }
                }
                assert_eq!(won.len(), 1, "round {round}: {won:?}");
                assert_eq!(won[0].term, round + 1);
            }
        });
    }

    #[test]
    fn group_keys_are_valid_kv_keys() {
        assert_eq!(group_key("default"), "default");
        assert_eq!(group_key("a.b c"), "a=2Eb=20c");
        assert_eq!(group_key("é"), "=C3=A9");
    }
}
