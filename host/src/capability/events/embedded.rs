//! The embedded event store, on redb: an ACID, copy-on-write B-tree store
//! in one file (`<data_dir>/events.redb`), durable at every commit.
//!
//! All appends go through one writer thread that takes every append waiting
//! in its queue and applies them in a single write transaction (group
//! commit): N concurrent appenders pay for one fsync, not N. Each append is
//! validated against the state left by the appends before it in the same
//! transaction, so the batch behaves exactly as if the appends ran one by
//! one. Reads use redb's MVCC read transactions and never block the writer.
//!
//! Tables: `events` (global position → event), `streams` (name → version,
//! deleted), `stream_index` ((name, version) → position), `event_ids` (id →
//! position, for idempotent appends) and `head` (the last position).

use super::{
    check_events, check_stream_name, AllPage, Appended, Direction, EventStore, EventsError,
    Expected, Filter, NewEvent, RecordedEvent,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
const STREAMS: TableDefinition<'_, &str, (u64, bool)> = TableDefinition::new("streams");
const STREAM_INDEX: TableDefinition<'_, (&str, u64), u64> = TableDefinition::new("stream_index");
const EVENT_IDS: TableDefinition<'_, &str, u64> = TableDefinition::new("event_ids");
const HEAD: TableDefinition<'_, &str, u64> = TableDefinition::new("head");

/// Most appends applied in one transaction.
const MAX_BATCH: usize = 256;

/// Group-commit counters, for benchmarks and `/metrics`.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: std::sync::atomic::AtomicU64,
    /// Appends (and deletes) applied.
    pub appends: std::sync::atomic::AtomicU64,
}

enum Job {
    Append {
        stream: String,
        expected: Expected,
        events: Vec<NewEvent>,
        reply: tokio::sync::oneshot::Sender<Result<Appended, EventsError>>,
    },
    Delete {
        stream: String,
        expected: Expected,
        reply: tokio::sync::oneshot::Sender<Result<Appended, EventsError>>,
    },
}

/// The embedded event store.
pub struct EmbeddedEvents {
    db: Arc<Database>,
    /// `None` only while dropping.
    jobs: Option<mpsc::SyncSender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    head: tokio::sync::watch::Receiver<u64>,
    stats: Arc<CommitStats>,
    path: PathBuf,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> EventsError {
    EventsError::Unavailable(format!("{what}: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<'a> {
    stream: &'a str,
    version: u64,
    id: &'a str,
    event_type: &'a str,
    #[serde(with = "serde_bytes_compat")]
    data: &'a [u8],
    #[serde(with = "serde_bytes_compat")]
    metadata: &'a [u8],
    recorded_ms: u64,
    /// Its index in the append that stored it, and that append's size: a
    /// retry must match the original append exactly.
    index: u32,
    batch: u32,
}

/// Byte slices as postcard byte strings (length + bytes), not as sequences.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

fn decode(position: u64, bytes: &[u8]) -> Result<RecordedEvent, EventsError> {
    let s: Stored<'_> = postcard::from_bytes(bytes)
        .map_err(|e| unavailable(&format!("event at position {position} is unreadable"), e))?;
    Ok(RecordedEvent {
        stream: s.stream.to_owned(),
        version: s.version,
        position,
        id: s.id.to_owned(),
        event_type: s.event_type.to_owned(),
        data: s.data.to_vec(),
        metadata: s.metadata.to_vec(),
        recorded_ms: s.recorded_ms,
    })
}

impl EmbeddedEvents {
    /// Open (or create) the store at `path`. Fails with a clear message when
    /// another process has it open.
    pub fn open(path: &Path) -> Result<Self, EventsError> {
        let db = crate::storage::open(path).map_err(|e| EventsError::Unavailable(e.to_string()))?;
        let db = Arc::new(db);
        // Create the tables and read the head.
        let head = {
            let txn = db.begin_write().map_err(|e| unavailable("begin", e))?;
            let head = {
                txn.open_table(EVENTS).map_err(|e| unavailable("open", e))?;
                txn.open_table(STREAMS)
                    .map_err(|e| unavailable("open", e))?;
                txn.open_table(STREAM_INDEX)
                    .map_err(|e| unavailable("open", e))?;
                txn.open_table(EVENT_IDS)
                    .map_err(|e| unavailable("open", e))?;
                let t = txn.open_table(HEAD).map_err(|e| unavailable("open", e))?;
                let head = t
                    .get("head")
                    .map_err(|e| unavailable("read head", e))?
                    .map_or(0, |v| v.value());
                head
            };
            txn.commit().map_err(|e| unavailable("commit", e))?;
            head
        };
        let (head_tx, head_rx) = tokio::sync::watch::channel(head);
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(4096);
        let stats = Arc::new(CommitStats::default());
        let writer = {
            let db = db.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("ficus-events-writer".into())
                .spawn(move || writer(db, jobs_rx, head_tx, head, stats))
                .map_err(|e| unavailable("cannot start the writer thread", e))?
        };
        Ok(EmbeddedEvents {
            db,
            jobs: Some(jobs_tx),
            writer: Some(writer),
            head: head_rx,
            stats,
            path: path.to_path_buf(),
        })
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<Appended, EventsError>>) -> Job,
    ) -> Result<Appended, EventsError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let jobs = self
            .jobs
            .clone()
            .ok_or_else(|| EventsError::Unavailable("the event store is closing".into()))?;
        let job = make(tx);
        // The queue is bounded: a full queue blocks this (blocking) send,
        // which is back-pressure on the appenders.
        tokio::task::spawn_blocking(move || jobs.send(job))
            .await
            .map_err(|e| unavailable("append task", e))?
            .map_err(|_| EventsError::Unavailable("the event store writer stopped".into()))?;
        rx.await
            .map_err(|_| EventsError::Unavailable("the event store writer stopped".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, EventsError> + Send + 'static,
    ) -> Result<T, EventsError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(|e| unavailable("begin read", e))?;
            f(&txn)
        })
        .await
        .map_err(|e| unavailable("read task", e))?
    }
}

impl Drop for EmbeddedEvents {
    /// Stop the writer after the queued appends and wait for it, so the
    /// database file is closed when this returns.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: batches queued jobs into one transaction each.
fn writer(
    db: Arc<Database>,
    jobs: mpsc::Receiver<Job>,
    head_tx: tokio::sync::watch::Sender<u64>,
    mut head: u64,
    stats: Arc<CommitStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let before = head;
        let outcome = (|| -> Result<Vec<Result<Appended, EventsError>>, EventsError> {
            let txn = db.begin_write().map_err(|e| unavailable("begin", e))?;
            let mut results = Vec::with_capacity(batch.len());
            {
                let mut tables = Tables {
                    events: txn.open_table(EVENTS).map_err(|e| unavailable("open", e))?,
                    streams: txn
                        .open_table(STREAMS)
                        .map_err(|e| unavailable("open", e))?,
                    index: txn
                        .open_table(STREAM_INDEX)
                        .map_err(|e| unavailable("open", e))?,
                    ids: txn
                        .open_table(EVENT_IDS)
                        .map_err(|e| unavailable("open", e))?,
                };
                for job in &batch {
                    let result = match job {
                        Job::Append {
                            stream,
                            expected,
                            events,
                            ..
                        } => tables.append(&mut head, stream, *expected, events),
                        Job::Delete {
                            stream, expected, ..
                        } => tables.delete(head, stream, *expected),
                    };
                    // A storage error may leave part of an append in the
                    // transaction: abort the whole batch. (Validation
                    // errors happen before anything is written.)
                    if let Err(e @ EventsError::Unavailable(_)) = result {
                        return Err(e);
                    }
                    results.push(result);
                }
                let mut t = txn.open_table(HEAD).map_err(|e| unavailable("open", e))?;
                t.insert("head", head)
                    .map_err(|e| unavailable("write head", e))?;
            }
            txn.commit().map_err(|e| unavailable("commit", e))?;
            Ok(results)
        })();
        stats.commits.fetch_add(1, Relaxed);
        stats.appends.fetch_add(batch.len() as u64, Relaxed);
        ::metrics::histogram!("ficus_events_commit_batch_size").record(batch.len() as f64);
        match outcome {
            Ok(results) => {
                head_tx.send_replace(head);
                for (job, result) in batch.into_iter().zip(results) {
                    let reply = match job {
                        Job::Append { reply, .. } | Job::Delete { reply, .. } => reply,
                    };
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                // Nothing of the batch was stored.
                head = before;
                tracing::error!("event store commit failed: {e}");
                for job in batch {
                    let reply = match job {
                        Job::Append { reply, .. } | Job::Delete { reply, .. } => reply,
                    };
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

struct Tables<'t> {
    events: redb::Table<'t, u64, &'static [u8]>,
    streams: redb::Table<'t, &'static str, (u64, bool)>,
    index: redb::Table<'t, (&'static str, u64), u64>,
    ids: redb::Table<'t, &'static str, u64>,
}

impl Tables<'_> {
    fn stream_state(&self, stream: &str) -> Result<(u64, bool), EventsError> {
        Ok(self
            .streams
            .get(stream)
            .map_err(|e| unavailable("read stream", e))?
            .map_or((0, false), |v| v.value()))
    }

    fn append(
        &mut self,
        head: &mut u64,
        stream: &str,
        expected: Expected,
        events: &[NewEvent],
    ) -> Result<Appended, EventsError> {
        let (version, deleted) = self.stream_state(stream)?;
        // Idempotency: the same ids again are the same append again.
        let mut known = Vec::with_capacity(events.len());
        for e in events {
            let pos = self
                .ids
                .get(e.id.as_str())
                .map_err(|e| unavailable("read ids", e))?
                .map(|v| v.value());
            known.push(pos);
        }
        if known.iter().any(Option::is_some) {
            return self.replay(stream, expected, version, events, &known);
        }
        if deleted {
            return Err(EventsError::StreamDeleted(stream.to_owned()));
        }
        if !expected.allows(version) {
            return Err(EventsError::WrongExpectedVersion {
                expected: expected.describe(),
                actual: version,
            });
        }
        let recorded_ms = now_ms();
        let mut v = version;
        for (index, e) in events.iter().enumerate() {
            *head += 1;
            v += 1;
            let bytes = postcard::to_allocvec(&Stored {
                stream,
                version: v,
                id: &e.id,
                event_type: &e.event_type,
                data: &e.data,
                metadata: &e.metadata,
                recorded_ms,
                index: index as u32,
                batch: events.len() as u32,
            })
            .map_err(|e| unavailable("encode", e))?;
            self.events
                .insert(*head, bytes.as_slice())
                .map_err(|e| unavailable("write event", e))?;
            self.index
                .insert((stream, v), *head)
                .map_err(|e| unavailable("write index", e))?;
            self.ids
                .insert(e.id.as_str(), *head)
                .map_err(|e| unavailable("write ids", e))?;
        }
        self.streams
            .insert(stream, (v, false))
            .map_err(|e| unavailable("write stream", e))?;
        Ok(Appended {
            version: v,
            position: *head,
        })
    }

    /// An append whose ids are (partly) stored already: the original result
    /// when it is exactly the same append, an error otherwise.
    fn replay(
        &self,
        stream: &str,
        expected: Expected,
        current: u64,
        events: &[NewEvent],
        known: &[Option<u64>],
    ) -> Result<Appended, EventsError> {
        let conflict = |i: usize, why: String| {
            Err(EventsError::Invalid(format!(
                "events[{i}].id {:?} {why}; a retried append must resend exactly the events of \
                 the original append",
                events[i].id
            )))
        };
        let Some(first_pos) = known[0] else {
            let i = known.iter().position(Option::is_some).unwrap_or(0);
            return conflict(i, "is already stored by another append".into());
        };
        let mut first_version = 0;
        for (i, (e, pos)) in events.iter().zip(known).enumerate() {
            let Some(pos) = *pos else {
                return conflict(i, "is new but the append's other ids are stored".into());
            };
            if pos != first_pos + i as u64 {
                return conflict(i, "is stored by another append".into());
            }
            let stored = self
                .events
                .get(pos)
                .map_err(|e| unavailable("read event", e))?
                .ok_or_else(|| unavailable("event index", format!("position {pos} missing")))?;
            let raw: Stored<'_> = postcard::from_bytes(stored.value())
                .map_err(|e| unavailable(&format!("event at position {pos} is unreadable"), e))?;
            if raw.index as usize != i || raw.batch as usize != events.len() {
                return conflict(
                    i,
                    format!(
                        "was stored as event {} of an append of {}",
                        raw.index, raw.batch
                    ),
                );
            }
            let stored = decode(pos, stored.value())?;
            if stored.stream != stream || stored.event_type != e.event_type || stored.data != e.data
            {
                return conflict(
                    i,
                    format!(
                        "is stored with other content (stream {:?}, type {:?})",
                        stored.stream, stored.event_type
                    ),
                );
            }
            if i == 0 {
                first_version = stored.version;
            }
        }
        if !expected.allows(first_version - 1) {
            return Err(EventsError::WrongExpectedVersion {
                expected: expected.describe(),
                actual: current,
            });
        }
        Ok(Appended {
            version: first_version + events.len() as u64 - 1,
            position: first_pos + events.len() as u64 - 1,
        })
    }

    fn delete(
        &mut self,
        head: u64,
        stream: &str,
        expected: Expected,
    ) -> Result<Appended, EventsError> {
        let (version, deleted) = self.stream_state(stream)?;
        if deleted {
            return Err(EventsError::StreamDeleted(stream.to_owned()));
        }
        if !expected.allows(version) {
            return Err(EventsError::WrongExpectedVersion {
                expected: expected.describe(),
                actual: version,
            });
        }
        self.streams
            .insert(stream, (version, true))
            .map_err(|e| unavailable("write stream", e))?;
        Ok(Appended {
            version,
            position: head,
        })
    }
}

#[async_trait::async_trait]
impl EventStore for EmbeddedEvents {
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EventsError> {
        check_stream_name(stream)?;
        check_events(&events)?;
        let stream = stream.to_owned();
        self.submit(|reply| Job::Append {
            stream,
            expected,
            events,
            reply,
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
        direction: Direction,
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        check_stream_name(stream)?;
        let stream = stream.to_owned();
        self.read(move |txn| {
            let index = txn
                .open_table(STREAM_INDEX)
                .map_err(|e| unavailable("open", e))?;
            let events = txn.open_table(EVENTS).map_err(|e| unavailable("open", e))?;
            let range = match direction {
                Direction::Forward => {
                    index.range((stream.as_str(), from)..=(stream.as_str(), u64::MAX))
                }
                Direction::Backward => index.range((stream.as_str(), 0)..=(stream.as_str(), from)),
            }
            .map_err(|e| unavailable("read index", e))?;
            let mut out = Vec::new();
            let mut push = |entry: Result<
                (
                    redb::AccessGuard<'_, (&str, u64)>,
                    redb::AccessGuard<'_, u64>,
                ),
                redb::StorageError,
            >|
             -> Result<(), EventsError> {
                let (_, pos) = entry.map_err(|e| unavailable("read index", e))?;
                let pos = pos.value();
                let bytes = events
                    .get(pos)
                    .map_err(|e| unavailable("read event", e))?
                    .ok_or_else(|| unavailable("event index", format!("position {pos} missing")))?;
                out.push(decode(pos, bytes.value())?);
                Ok(())
            };
            match direction {
                Direction::Forward => {
                    for entry in range.take(max) {
                        push(entry)?;
                    }
                }
                Direction::Backward => {
                    for entry in range.rev().take(max) {
                        push(entry)?;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn read_all(
        &self,
        from: u64,
        max: usize,
        filter: &Filter,
    ) -> Result<AllPage, EventsError> {
        let filter = filter.clone();
        let from = from.max(1);
        self.read(move |txn| {
            let events = txn.open_table(EVENTS).map_err(|e| unavailable("open", e))?;
            let mut out = Vec::new();
            let mut next = from;
            // Examine at most this many events per page, so a selective
            // filter cannot make one call scan the whole store.
            let scan_limit = max.saturating_mul(16).max(1024);
            for (scanned, entry) in events
                .range(from..)
                .map_err(|e| unavailable("read events", e))?
                .enumerate()
            {
                if out.len() >= max || scanned >= scan_limit {
                    break;
                }
                let (pos, bytes) = entry.map_err(|e| unavailable("read events", e))?;
                let pos = pos.value();
                let event = decode(pos, bytes.value())?;
                next = pos + 1;
                if filter.matches(&event) {
                    out.push(event);
                }
            }
            Ok(AllPage { events: out, next })
        })
        .await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, EventsError> {
        check_stream_name(stream)?;
        let stream = stream.to_owned();
        self.read(move |txn| {
            let streams = txn
                .open_table(STREAMS)
                .map_err(|e| unavailable("open", e))?;
            Ok(streams
                .get(stream.as_str())
                .map_err(|e| unavailable("read stream", e))?
                .map_or(0, |v| v.value().0))
        })
        .await
    }

    async fn head(&self) -> Result<u64, EventsError> {
        Ok(*self.head.borrow())
    }

    async fn wait_past(&self, position: u64, timeout: Duration) -> Result<u64, EventsError> {
        let mut rx = self.head.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|h| *h > position)).await;
        let head = *rx.borrow();
        Ok(head)
    }

    async fn delete_stream(&self, stream: &str, expected: Expected) -> Result<(), EventsError> {
        check_stream_name(stream)?;
        let stream = stream.to_owned();
        self.submit(|reply| Job::Delete {
            stream,
            expected,
            reply,
        })
        .await
        .map(|_| ())
    }
}
