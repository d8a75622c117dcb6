//! Durable queues of at-least-once subscriptions, in redb.
//!
//! Every durable *queue* (one per at-least-once subscription, or one per
//! queue group) has its pending messages keyed by `(queue, sequence)`. The
//! sequence is global and increasing, so a queue read in key order is in
//! publish order. Tables:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `messages` | `(queue, sequence)` | `(subject, headers as JSON, payload)` |
//! | `deliveries` | `(queue, sequence)` | deliveries so far |
//! | `counters` | `(queue, name)` | `acked`, `redelivered`, `dead_lettered` |
//! | `meta` | `"next_sequence"` | the next sequence number |
//!
//! All writes go through one thread that commits whatever is queued in one
//! write transaction (group commit): concurrent publishers share an fsync.
//! A publish returns only after its commit, so a stored message survives a
//! crash. A delivery's count is committed before the plugin is called, so a
//! message delivered just before a crash is redelivered with a higher count
//! and shows up as `redelivered`.

use super::{Header, PubSubError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use tokio::sync::oneshot;

/// `(queue, sequence)`.
type MessageKey = (&'static str, u64);
/// `(subject, headers as JSON, payload)`.
type MessageRow = (&'static str, &'static [u8], &'static [u8]);

const MESSAGES: TableDefinition<'_, MessageKey, MessageRow> = TableDefinition::new("messages");
const DELIVERIES: TableDefinition<'_, (&str, u64), u32> = TableDefinition::new("deliveries");
const COUNTERS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("counters");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 4096;

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Sequence number (global, increasing).
    pub sequence: u64,
    /// Concrete subject.
    pub subject: String,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// Payload.
    pub payload: Vec<u8>,
    /// Deliveries so far (0 if never delivered).
    pub deliveries: u32,
}

/// Persisted counters and the pending count of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Stored messages.
    pub pending: u64,
    /// Acknowledged messages.
    pub acked: u64,
    /// Deliveries after the first of a message.
    pub redelivered: u64,
    /// Messages moved to the dead-letter subject.
    pub dead_lettered: u64,
}

/// A message to store in some queues.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Concrete subject.
    pub subject: String,
    /// Headers.
    pub headers: Vec<Header>,
    /// Payload.
    pub payload: Vec<u8>,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Op {
    /// Store `message` in each queue; reply with its sequence.
    Publish {
        queues: Vec<Arc<str>>,
        message: Arc<NewMessage>,
        reply: Reply<u64>,
    },
    /// Count one more delivery; reply with the new count.
    Deliver {
        queue: Arc<str>,
        sequence: u64,
        reply: Reply<u32>,
    },
    /// Remove the message (acknowledged).
    Ack {
        queue: Arc<str>,
        sequence: u64,
        reply: Reply<()>,
    },
    /// Remove the message and store `message` (the dead letter) in
    /// `queues`; reply with the dead letter's sequence.
    DeadLetter {
        queue: Arc<str>,
        sequence: u64,
        queues: Vec<Arc<str>>,
        message: Arc<NewMessage>,
        reply: Reply<u64>,
    },
}

/// Reply to send after the commit.
enum Done {
    Seq(Reply<u64>, u64),
    Count(Reply<u32>, u32),
    Unit(Reply<()>),
}

impl Op {
    fn fail(self, e: &str) {
        let e = e.to_owned();
        match self {
            Op::Publish { reply, .. } | Op::DeadLetter { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Op::Deliver { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Op::Ack { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// The durable queues.
pub struct DurableStore {
    db: Arc<Database>,
    ops: std::sync::Mutex<Option<std_mpsc::Sender<Op>>>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn storage<E: std::fmt::Display>(e: E) -> String {
    format!("storage: {e}")
}

impl DurableStore {
    /// Use `db` (see [`crate::storage::open`]), creating the tables, and
    /// start the writer thread.
    pub fn new(db: Database) -> Result<DurableStore, String> {
        let db = Arc::new(db);
        let next = {
            let txn = db.begin_write().map_err(storage)?;
            let next = {
                txn.open_table(MESSAGES).map_err(storage)?;
                txn.open_table(DELIVERIES).map_err(storage)?;
                txn.open_table(COUNTERS).map_err(storage)?;
                let meta = txn.open_table(META).map_err(storage)?;
                let next = meta
                    .get("next_sequence")
                    .map_err(storage)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                next
            };
            txn.commit().map_err(storage)?;
            next
        };
        let (tx, rx) = std_mpsc::channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("ficus-pubsub-store".into())
            .spawn(move || writer_loop(&writer_db, rx, next))
            .map_err(|e| format!("cannot start the store writer: {e}"))?;
        Ok(DurableStore {
            db,
            ops: std::sync::Mutex::new(Some(tx)),
            writer: std::sync::Mutex::new(Some(writer)),
        })
    }

    async fn submit<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, String> {
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            let Some(tx) = guard.as_ref() else {
                return Err("the store is closed".into());
            };
            tx.send(op(reply))
                .map_err(|_| "the store writer stopped".to_string())?;
        }
        rx.await
            .map_err(|_| "the store writer stopped".to_string())?
    }

    /// Store a message in `queues` (durable when this returns); its
    /// sequence.
    pub async fn publish(
        &self,
        queues: Vec<Arc<str>>,
        message: Arc<NewMessage>,
    ) -> Result<u64, PubSubError> {
        self.submit(|reply| Op::Publish {
            queues,
            message,
            reply,
        })
        .await
        .map_err(PubSubError::Unavailable)
    }

    /// Count (durably) one more delivery of a message; the new count.
    pub async fn deliver(&self, queue: Arc<str>, sequence: u64) -> Result<u32, String> {
        self.submit(|reply| Op::Deliver {
            queue,
            sequence,
            reply,
        })
        .await
    }

    /// Remove an acknowledged message.
    pub async fn ack(&self, queue: Arc<str>, sequence: u64) -> Result<(), String> {
        self.submit(|reply| Op::Ack {
            queue,
            sequence,
            reply,
        })
        .await
    }

    /// Remove a message and store its dead letter in `queues`, atomically.
    pub async fn dead_letter(
        &self,
        queue: Arc<str>,
        sequence: u64,
        queues: Vec<Arc<str>>,
        message: Arc<NewMessage>,
    ) -> Result<u64, String> {
        self.submit(|reply| Op::DeadLetter {
            queue,
            sequence,
            queues,
            message,
            reply,
        })
        .await
    }

    /// Up to `limit` pending messages of `queue` with a sequence above
    /// `after`, in order.
    pub fn load_after(&self, queue: &str, after: u64, limit: usize) -> Result<Vec<Stored>, String> {
        let txn = self.db.begin_read().map_err(storage)?;
        let messages = txn.open_table(MESSAGES).map_err(storage)?;
        let deliveries = txn.open_table(DELIVERIES).map_err(storage)?;
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        for row in messages
            .range((queue, after + 1)..=(queue, u64::MAX))
            .map_err(storage)?
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(storage)?;
            let (_, sequence) = k.value();
            let (subject, headers, payload) = v.value();
            let headers: Vec<Header> = serde_json::from_slice(headers).unwrap_or_default();
            let n = deliveries
                .get((queue, sequence))
                .map_err(storage)?
                .map(|g| g.value())
                .unwrap_or(0);
            out.push(Stored {
                sequence,
                subject: subject.to_owned(),
                headers,
                payload: payload.to_vec(),
                deliveries: n,
            });
        }
        Ok(out)
    }

    /// The counters and pending count of every queue in the file (including
    /// queues no longer configured).
    pub fn counts(&self) -> Result<HashMap<String, QueueCounts>, String> {
        let txn = self.db.begin_read().map_err(storage)?;
        let messages = txn.open_table(MESSAGES).map_err(storage)?;
        let counters = txn.open_table(COUNTERS).map_err(storage)?;
        let mut out: HashMap<String, QueueCounts> = HashMap::new();
        for row in messages.iter().map_err(storage)? {
            let (k, _) = row.map_err(storage)?;
            out.entry(k.value().0.to_owned()).or_default().pending += 1;
        }
        for row in counters.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let (queue, name) = k.value();
            let c = out.entry(queue.to_owned()).or_default();
            match name {
                "acked" => c.acked = v.value(),
                "redelivered" => c.redelivered = v.value(),
                "dead_lettered" => c.dead_lettered = v.value(),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Stop the writer after the queued operations are committed.
    pub fn close(&self) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn bump(
    counters: &mut redb::Table<'_, (&'static str, &'static str), u64>,
    queue: &str,
    name: &str,
) -> Result<(), redb::StorageError> {
    let now = counters.get((queue, name))?.map(|g| g.value()).unwrap_or(0);
    counters.insert((queue, name), now + 1)?;
    Ok(())
}

fn store_message(
    messages: &mut redb::Table<'_, MessageKey, MessageRow>,
    queues: &[Arc<str>],
    message: &NewMessage,
    next: &mut u64,
) -> Result<u64, String> {
    let sequence = *next;
    *next += 1;
    let headers = serde_json::to_vec(&message.headers).map_err(storage)?;
    for q in queues {
        messages
            .insert(
                (&**q, sequence),
                (
                    message.subject.as_str(),
                    headers.as_slice(),
                    message.payload.as_slice(),
                ),
            )
            .map_err(storage)?;
    }
    Ok(sequence)
}

fn writer_loop(db: &Database, rx: std_mpsc::Receiver<Op>, mut next: u64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let start_next = next;
        match apply(db, &mut batch, &mut next) {
            Ok(done) => {
                for d in done {
                    match d {
                        Done::Seq(r, s) => {
                            let _ = r.send(Ok(s));
                        }
                        Done::Count(r, n) => {
                            let _ = r.send(Ok(n));
                        }
                        Done::Unit(r) => {
                            let _ = r.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                next = start_next;
                tracing::error!(error = %e, "pub/sub store: commit failed");
                for op in batch {
                    op.fail(&e);
                }
            }
        }
    }
}

/// Apply `batch` in one write transaction. On success the ops are consumed
/// into replies; on failure `batch` is left intact for error replies.
fn apply(db: &Database, batch: &mut Vec<Op>, next: &mut u64) -> Result<Vec<Done>, String> {
    let txn = db.begin_write().map_err(storage)?;
    // Validate and write everything first; the ops are consumed only once
    // the commit succeeded.
    let mut results: Vec<u64> = Vec::with_capacity(batch.len());
    {
        let mut messages = txn.open_table(MESSAGES).map_err(storage)?;
        let mut deliveries = txn.open_table(DELIVERIES).map_err(storage)?;
        let mut counters = txn.open_table(COUNTERS).map_err(storage)?;
        let mut meta = txn.open_table(META).map_err(storage)?;
        for op in batch.iter() {
            let r = match op {
                Op::Publish {
                    queues, message, ..
                } => store_message(&mut messages, queues, message, next)?,
                Op::Deliver {
                    queue, sequence, ..
                } => {
                    let n = deliveries
                        .get((&**queue, *sequence))
                        .map_err(storage)?
                        .map(|g| g.value())
                        .unwrap_or(0)
                        + 1;
                    deliveries
                        .insert((&**queue, *sequence), n)
                        .map_err(storage)?;
                    if n >= 2 {
                        bump(&mut counters, queue, "redelivered").map_err(storage)?;
                    }
                    u64::from(n)
                }
                Op::Ack {
                    queue, sequence, ..
                } => {
                    let existed = messages
                        .remove((&**queue, *sequence))
                        .map_err(storage)?
                        .is_some();
                    deliveries.remove((&**queue, *sequence)).map_err(storage)?;
                    if existed {
                        bump(&mut counters, queue, "acked").map_err(storage)?;
                    }
                    0
                }
                Op::DeadLetter {
                    queue,
                    sequence,
                    queues,
                    message,
                    ..
                } => {
                    let existed = messages
                        .remove((&**queue, *sequence))
                        .map_err(storage)?
                        .is_some();
                    deliveries.remove((&**queue, *sequence)).map_err(storage)?;
                    if existed {
                        bump(&mut counters, queue, "dead_lettered").map_err(storage)?;
                    }
                    store_message(&mut messages, queues, message, next)?
                }
            };
            results.push(r);
        }
        meta.insert("next_sequence", *next).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    let mut done = Vec::with_capacity(batch.len());
    for (op, r) in batch.drain(..).zip(results) {
        done.push(match op {
            Op::Publish { reply, .. } | Op::DeadLetter { reply, .. } => Done::Seq(reply, r),
            Op::Deliver { reply, .. } => Done::Count(reply, r as u32),
            Op::Ack { reply, .. } => Done::Unit(reply),
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ficus-store-{label}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("pubsub.redb")
    }

    fn msg(subject: &str, payload: &str) -> Arc<NewMessage> {
        Arc::new(NewMessage {
            subject: subject.into(),
            headers: vec![("k".into(), "v".into())],
            payload: payload.as_bytes().to_vec(),
        })
    }

    #[tokio::test]
    async fn messages_counts_and_dead_letters_survive_reopening() {
        let path = temp("reopen");
        let q: Arc<str> = "sub:a".into();
        let dlq: Arc<str> = "sub:dead".into();
        {
            let store = DurableStore::new(crate::storage::open(&path).unwrap()).unwrap();
            let s1 = store
                .publish(vec![q.clone()], msg("o.1", "one"))
                .await
                .unwrap();
            let s2 = store
                .publish(vec![q.clone()], msg("o.2", "two"))
                .await
                .unwrap();
            let s3 = store
                .publish(vec![q.clone()], msg("o.3", "three"))
                .await
                .unwrap();
            assert!(s1 < s2 && s2 < s3);
            assert_eq!(store.deliver(q.clone(), s1).await.unwrap(), 1);
            store.ack(q.clone(), s1).await.unwrap();
            assert_eq!(store.deliver(q.clone(), s2).await.unwrap(), 1);
            assert_eq!(store.deliver(q.clone(), s2).await.unwrap(), 2);
            store
                .dead_letter(q.clone(), s2, vec![dlq.clone()], msg("dead.a", "two"))
                .await
                .unwrap();
            assert_eq!(store.deliver(q.clone(), s3).await.unwrap(), 1);
            store.close();
        }
        let store = DurableStore::new(crate::storage::open(&path).unwrap()).unwrap();
        let pending = store.load_after(&q, 0, 10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].subject, "o.3");
        assert_eq!(pending[0].payload, b"three");
        assert_eq!(pending[0].headers, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(pending[0].deliveries, 1, "the delivery count is persisted");
        let counts = store.counts().unwrap();
        assert_eq!(
            counts[&*q],
            QueueCounts {
                pending: 1,
                acked: 1,
                redelivered: 1,
                dead_lettered: 1
            }
        );
        assert_eq!(counts[&*dlq].pending, 1);
        let dead = store.load_after(&dlq, 0, 10).unwrap();
        assert_eq!(dead[0].subject, "dead.a");
        // New sequences continue after the old ones.
        let s4 = store
            .publish(vec![q.clone()], msg("o.4", "four"))
            .await
            .unwrap();
        assert!(s4 > dead[0].sequence);
        assert_eq!(
            store.load_after(&q, pending[0].sequence, 10).unwrap().len(),
            1
        );
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn concurrent_publishes_share_commits_and_all_land() {
        let path = temp("group");
        let store = Arc::new(DurableStore::new(crate::storage::open(&path).unwrap()).unwrap());
        let q: Arc<str> = "sub:a".into();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    store
                        .publish(vec![q.clone()], msg("x", &format!("{t}-{i}")))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.load_after(&q, 0, 1000).unwrap().len(), 200);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
