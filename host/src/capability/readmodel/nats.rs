//! Read models on NATS JetStream (`[backend] kind = "nats"`): several gateway
//! nodes share the query side, and a projection that moves to another node
//! resumes from its checkpoint.
//!
//! # Design
//!
//! - **The log is the source of truth.** One JetStream stream (default
//!   `FICUS_READMODELS`, file storage, `replicas` copies, deletes denied)
//!   with subjects `rm.<token(model)>` ([`subject_token`] as for event
//!   streams) holds every operation on every model, in order: *commit*
//!   (generation, writes, checkpoint), *begin-rebuild* and *activate*
//!   (generation). The log keeps every operation (no retention limit);
//!   compacting it into snapshots is future work, so its size grows with
//!   the number of writes, as the event store does. The subjects are
//!   `rm.>` whatever the stream's name, so one NATS account holds one
//!   read-model stream (JetStream refuses a second stream with overlapping
//!   subjects, error 10065), as for the event store's `events.>`.
//! - **Every node materialises the log** into a local redb cache
//!   (`<data_dir>/readmodels-nats.redb`, the [`EmbeddedReadModels`] format)
//!   with an ordered consumer on `rm.>`. `get`/`scan`/`generations` read the
//!   cache, so queries are local on every node (and eventually consistent
//!   on nodes that do not write: they lag the log by the consumer's
//!   delivery time). The cache is **rebuilt from the log when the store
//!   opens** (the file is emptied first): simple and always right, at the
//!   cost of replaying the whole log at start; persisting the applied
//!   sequence to resume is future work. Opening returns once the cache has
//!   caught up with the log's last sequence at open time.
//! - **A commit is one operation**: a batch's documents and its checkpoint
//!   are applied in one cache transaction when the operation arrives, on
//!   every node. An operation larger than the server's `max_payload` is
//!   split into *part* messages followed by the commit message, published
//!   as one chain (see below); parts are only buffered, and applied with
//!   the commit message, atomically. Parts of a writer that died before its
//!   commit message are dropped when the model's next operation arrives.
//! - **Fencing**: every message is published with
//!   `Nats-Expected-Last-Subject-Sequence` = the model's last sequence *this
//!   writer* knows (taken at [`ReadModels::sync`] when it becomes the
//!   writer — the runner calls it when it gains leadership — then advanced
//!   by its own writes only). If any other node wrote the model since,
//!   JetStream refuses the publish (error 10071) and the operation fails
//!   with [`ReadModelError::Stale`]: a deposed leader that still runs its
//!   projection cannot write, even when its batch would otherwise look
//!   valid. The runner then re-syncs (reloads the checkpoint from the log)
//!   if it still leads.
//! - Operations are checked (generation written, checkpoint moving forward)
//!   against the cache at the writer's sequence, which is the state every
//!   node reaches when applying the operation: the check decided by the
//!   writer holds everywhere. Application re-checks and skips (with a
//!   warning) anything that would not apply, identically on every node.
//! - `commit`, `begin_rebuild` and `activate` return once the operation is
//!   acknowledged by JetStream (stored on a majority of replicas) **and**
//!   applied to the local cache, so the writer reads its own writes.
//! - Transient failures (no responders, timeouts, stream-leader failover)
//!   are retried with backoff for [`NatsReadModelsOptions::retry_for`], with
//!   the same `Nats-Msg-Id`, so a retried publish is not stored twice
//!   within the stream's duplicate window.
//!
//! # Guarantee
//!
//! With projections run by the leader of their group: every event is
//! applied to the active read model exactly once in the log, across leader
//! changes and kill -9 of the leader (the checkpoint travels in the same
//! message as the documents, and a writer whose view is not the log's last
//! operation on the model is refused), and every node converges to the same
//! documents. Reads on a node other than the writer may lag.

use super::embedded::EmbeddedReadModels;
use super::{check_key, check_value, Document, Generations, ReadModelError, ReadModels, Write};
use crate::capability::events::nats::{safe_with_replicas, subject_token, NatsOpenError};
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Default JetStream stream name of the read-model log.
pub const DEFAULT_STREAM: &str = "FICUS_READMODELS";
/// Subject prefix: model `m` is the subject `rm.<token(m)>`.
pub const SUBJECT_PREFIX: &str = "rm";
/// Room left in a message for the headers and the operation's fields.
const MESSAGE_OVERHEAD: usize = 16 * 1024;
const MSG_ID: &str = "Nats-Msg-Id";
const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

/// Where and how the NATS backend keeps read models.
#[derive(Debug, Clone)]
pub struct NatsReadModelsOptions {
    /// Server URLs (`nats://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// A NATS credentials file, if the servers need one.
    pub credentials: Option<PathBuf>,
    /// JetStream stream name of the log.
    pub stream: String,
    /// Copies of the stream (1, or 3/5 in a cluster).
    pub replicas: usize,
    /// The local cache file (emptied and rebuilt from the log at open).
    pub cache: PathBuf,
    /// How long an operation retries transient failures.
    pub retry_for: Duration,
    /// Largest message to publish; `None`: the server's `max_payload`.
    /// Larger commits are split into parts.
    pub max_message_bytes: Option<usize>,
}

impl NatsReadModelsOptions {
    /// Options with the defaults for `servers`, caching in `cache`.
    pub fn new(servers: Vec<String>, cache: PathBuf) -> Self {
        NatsReadModelsOptions {
            servers,
            credentials: None,
            stream: DEFAULT_STREAM.into(),
            replicas: 1,
            cache,
            retry_for: Duration::from_secs(15),
            max_message_bytes: None,
        }
    }
}

/// One operation of the log.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Op {
    /// A piece of a commit's encoded writes, applied with the commit.
    Part {
        id: u64,
        chunk: Vec<u8>,
    },
    /// The writes (the parts before it, then `chunk`) and the checkpoint.
    Commit {
        generation: u64,
        checkpoint: u64,
        id: u64,
        parts: u32,
        chunk: Vec<u8>,
    },
    BeginRebuild,
    Activate {
        generation: u64,
    },
}

/// One message: the model and the operation.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Record {
    pub(super) model: String,
    pub(super) op: Op,
}

/// What the cache has applied.
#[derive(Default)]
struct Applied {
    /// Model → the sequence of its last operation applied.
    models: HashMap<String, u64>,
}

/// Read models on NATS JetStream, cached locally.
pub struct NatsReadModels {
    cache: Arc<EmbeddedReadModels>,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    retry_for: Duration,
    chunk: usize,
    server_version: String,
    /// The stream sequence the cache has applied up to.
    applied: watch::Receiver<u64>,
    last_of: Arc<Mutex<Applied>>,
    /// Model → the sequence of the last operation this writer knows of
    /// (its fencing token); one write at a time in this process.
    writer: tokio::sync::Mutex<HashMap<String, u64>>,
    applier: tokio::task::JoinHandle<()>,
}

impl Drop for NatsReadModels {
    fn drop(&mut self) {
        self.applier.abort();
    }
}

fn unavailable(e: impl std::fmt::Display) -> ReadModelError {
    ReadModelError::Unavailable(e.to_string())
}

/// JetStream error codes that mean "try again shortly".
fn transient_code(code: u64) -> bool {
    matches!(code, 10006..=10009 | 10023)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NatsReadModels {
    /// Connect, create the log stream if it does not exist, empty the
    /// cache and replay the log into it; returns once the cache has caught
    /// up with the log.
    pub async fn open(options: NatsReadModelsOptions) -> Result<NatsReadModels, NatsOpenError> {
        crate::capability::nats::check_stream_options(
            &options.servers,
            options.replicas,
            &options.stream,
        )
        .map_err(NatsOpenError::Options)?;
        let client = crate::capability::nats::connect(
            "ficus-readmodels",
            &options.servers,
            options.credentials.as_deref(),
            crate::capability::nats::Initial::Required,
        )
        .await?;

        let info = client.server_info();
        if options.replicas > 1 && !safe_with_replicas(&info.version) {
            return Err(NatsOpenError::ServerTooOld {
                version: info.version,
                replicas: options.replicas,
            });
        }
        let limit = options
            .max_message_bytes
            .map_or(info.max_payload, |m| m.min(info.max_payload));
        let chunk = limit.saturating_sub(MESSAGE_OVERHEAD).max(1024);
        let js = jetstream::new(client);
        let config = jetstream::stream::Config {
            name: options.stream.clone(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: options.replicas,
            duplicate_window: Duration::from_secs(120),
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            deny_delete: true,
            description: Some("Ficus read models (a log of operations per model)".into()),
            ..Default::default()
        };
        let stream_err = |error: String| NatsOpenError::Stream {
            stream: options.stream.clone(),
            error,
        };
        let deadline = Instant::now() + options.retry_for;
        let stream = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("creating the read-model stream: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(stream_err(e.to_string())),
            }
        };
        let cache_err = |e: String| {
            NatsOpenError::Options(format!(
                "the read-model cache {}: {e}",
                options.cache.display()
            ))
        };
        match std::fs::remove_file(&options.cache) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(cache_err(e.to_string())),
        }
        let cache = Arc::new(
            EmbeddedReadModels::open(&options.cache).map_err(|e| cache_err(e.to_string()))?,
        );
        let (applied_tx, applied) = watch::channel(0u64);
        let last_of = Arc::new(Mutex::new(Applied::default()));
        let applier = tokio::spawn(apply_log(
            stream.clone(),
            cache.clone(),
            applied_tx,
            last_of.clone(),
        ));
        let store = NatsReadModels {
            cache,
            js,
            stream,
            retry_for: options.retry_for,
            chunk,
            server_version: info.version,
            applied,
            last_of,
            writer: tokio::sync::Mutex::new(HashMap::new()),
            applier,
        };
        let started = Instant::now();
        store
            .catch_up()
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        tracing::info!(
            stream = %options.stream,
            applied = *store.applied.borrow(),
            ms = started.elapsed().as_millis() as u64,
            "read-model cache rebuilt from the log"
        );
        Ok(store)
    }

    /// The version of the server this process is connected to.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The stream sequence the local cache has applied up to.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Wait until the cache has applied every operation stored now.
    pub async fn catch_up(&self) -> Result<(), ReadModelError> {
        let last = self
            .retrying("reading the log's last sequence", || async {
                match self.stream.get_info().await {
                    Ok(info) => Ok(info.state.last_sequence),
                    Err(e) => Err(Err(format!("stream info: {e}"))),
                }
            })
            .await?;
        self.wait_applied(last).await
    }

    async fn wait_applied(&self, seq: u64) -> Result<(), ReadModelError> {
        let mut rx = self.applied.clone();
        rx.wait_for(|a| *a >= seq)
            .await
            .map(|_| ())
            .map_err(|_| unavailable("the read-model log consumer has stopped"))
    }

    /// Run `attempt` until it succeeds, fails for good (`Err(Ok(e))`), or
    /// transient failures (`Err(Err(why))`) have lasted `retry_for`.
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ReadModelError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Result<ReadModelError, String>>>,
    {
        let started = Instant::now();
        let mut nap = Duration::from_millis(20);
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Ok(e)) => return Err(e),
                Err(Err(why)) => {
                    if started.elapsed() >= self.retry_for {
                        return Err(ReadModelError::Unavailable(format!(
                            "{what}: {why} (retried for {:?})",
                            self.retry_for
                        )));
                    }
                    tracing::debug!("{what}: {why}; retrying in {nap:?}");
                    tokio::time::sleep(nap + Duration::from_millis(fastrand::u64(0..10))).await;
                    nap = (nap * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Publish one message expecting `expected` as the subject's last
    /// sequence; returns its sequence.
    async fn publish(
        &self,
        subject: &str,
        expected: u64,
        record: &Record,
    ) -> Result<u64, ReadModelError> {
        let payload: bytes::Bytes = postcard::to_allocvec(record)
            .map_err(|e| unavailable(format!("encode: {e}")))?
            .into();
        let msg_id = format!(
            "{}-{:016x}",
            subject_token(&record.model),
            fastrand::u64(..)
        );
        self.retrying("writing the read-model log", || {
            let mut headers = HeaderMap::new();
            headers.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string().as_str());
            headers.insert(MSG_ID, msg_id.as_str());
            let payload = payload.clone();
            async move {
                let classify = |e: jetstream::context::PublishError| match e.kind() {
                    PublishErrorKind::WrongLastSequence => Ok(ReadModelError::Stale(format!(
                        "read model {:?} was written by another node since this one last did \
                         (it no longer leads the projection, or has not synced yet)",
                        record.model
                    ))),
                    PublishErrorKind::MaxPayloadExceeded => Ok(ReadModelError::Invalid(format!(
                        "message larger than the NATS server's max_payload: {e}"
                    ))),
                    PublishErrorKind::Other => {
                        let code = std::error::Error::source(&e)
                            .and_then(|s| s.downcast_ref::<jetstream::Error>())
                            .map(|j| j.error_code().0);
                        match code {
                            Some(c) if !transient_code(c) => {
                                Ok(unavailable(format!("publish: {e}")))
                            }
                            _ => Err(format!("publish: {e}")),
                        }
                    }
                    _ => Err(format!("publish: {e}")),
                };
                let ack = self
                    .js
                    .publish_with_headers(subject.to_owned(), headers, payload)
                    .await
                    .map_err(classify)?
                    .await
                    .map_err(classify)?;
                if ack.duplicate && ack.sequence == 0 {
                    // A clustered server that refused the first attempt
                    // remembers its id: nothing was stored.
                    return Err(Ok(ReadModelError::Stale(format!(
                        "read model {:?}: a retried write was refused",
                        record.model
                    ))));
                }
                Ok(ack.sequence)
            }
        })
        .await
    }

    /// Write `model` under the fencing token: `plan` sees the model as of
    /// this writer's last known operation and returns the operations to
    /// publish (in one chain) and the result.
    async fn write<T>(
        &self,
        model: &str,
        plan: impl FnOnce(Generations) -> Result<(Vec<Op>, T), ReadModelError>,
    ) -> Result<T, ReadModelError> {
        let mut writer = self.writer.lock().await;
        let token = match writer.get(model) {
            Some(t) => *t,
            None => {
                self.catch_up().await?;
                let t = self.last_applied(model);
                writer.insert(model.to_owned(), t);
                t
            }
        };
        self.wait_applied(token).await?;
        if self.last_applied(model) != token {
            return Err(ReadModelError::Stale(format!(
                "read model {model:?} was written by another node since this one last did \
                 (it no longer leads the projection, or has not synced yet)"
            )));
        }
        let g = self.cache.generations(model).await?;
        let (ops, out) = plan(g)?;
        let subject = format!("{SUBJECT_PREFIX}.{}", subject_token(model));
        let mut expected = token;
        for op in ops {
            let record = Record {
                model: model.to_owned(),
                op,
            };
            match self.publish(&subject, expected, &record).await {
                Ok(seq) => expected = seq,
                Err(e) => {
                    if expected != token {
                        // Parts were stored: later writes chain after them
                        // (they are dropped when the next operation comes).
                        writer.insert(model.to_owned(), expected);
                    }
                    return Err(e);
                }
            }
        }
        writer.insert(model.to_owned(), expected);
        drop(writer);
        self.wait_applied(expected).await?;
        Ok(out)
    }

    fn last_applied(&self, model: &str) -> u64 {
        lock(&self.last_of).models.get(model).copied().unwrap_or(0)
    }
}

/// Check generation and checkpoint as the embedded store does.
fn check_commit(
    model: &str,
    g: &Generations,
    generation: u64,
    checkpoint: u64,
) -> Result<(), ReadModelError> {
    let current = if g.active == generation {
        g.checkpoint
    } else if let Some((_, c)) = g.building.filter(|(b, _)| *b == generation) {
        c
    } else {
        return Err(ReadModelError::Stale(format!(
            "generation {generation} of read model {model:?} is no longer written \
             (active {}, building {:?})",
            g.active,
            g.building.map(|b| b.0)
        )));
    };
    if checkpoint <= current {
        return Err(ReadModelError::Stale(format!(
            "checkpoint {checkpoint} of read model {model:?} generation {generation} is not \
             past the stored {current}"
        )));
    }
    Ok(())
}

/// Materialise the log into `cache`, from its first message, following new
/// ones; recreates the consumer after errors.
async fn apply_log(
    stream: jetstream::stream::Stream,
    cache: Arc<EmbeddedReadModels>,
    applied: watch::Sender<u64>,
    last_of: Arc<Mutex<Applied>>,
) {
    use futures_util::StreamExt;
    let mut next = 1u64;
    // Model → (commit id, parts seen, bytes so far).
    let mut pending: HashMap<String, (u64, u32, Vec<u8>)> = HashMap::new();
    loop {
        let config = jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{SUBJECT_PREFIX}.>"),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(c) => c.messages().await,
            Err(e) => {
                tracing::debug!("read-model log consumer: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("read-model log consumer: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!("read-model log consumer: {e}; recreating it");
                    break;
                }
            };
            let Ok(seq) = message.info().map(|i| i.stream_sequence) else {
                continue;
            };
            if seq < next {
                continue;
            }
            match postcard::from_bytes::<Record>(&message.payload) {
                Ok(record) => {
                    apply(&cache, &mut pending, seq, &record).await;
                    lock(&last_of).models.insert(record.model, seq);
                }
                Err(e) => {
                    tracing::warn!(seq, "read-model log: not a ficus operation, skipped: {e}")
                }
            }
            next = seq + 1;
            applied.send_replace(seq);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Apply one operation to the cache; operations that do not apply are
/// skipped (the same way on every node). A failing cache is retried.
async fn apply(
    cache: &EmbeddedReadModels,
    pending: &mut HashMap<String, (u64, u32, Vec<u8>)>,
    seq: u64,
    record: &Record,
) {
    let model = record.model.as_str();
    let mut nap = Duration::from_millis(50);
    let result = loop {
        let result = match &record.op {
            Op::Part { id, chunk } => {
                let entry = pending
                    .entry(model.to_owned())
                    .or_insert_with(|| (*id, 0, Vec::new()));
                if entry.0 != *id {
                    *entry = (*id, 0, Vec::new());
                }
                entry.1 += 1;
                entry.2.extend_from_slice(chunk);
                return;
            }
            Op::Commit {
                generation,
                checkpoint,
                id,
                parts,
                chunk,
            } => {
                let bytes = if *parts == 0 {
                    Ok(chunk.clone())
                } else {
                    match pending.get(model) {
                        Some((pid, n, bytes)) if pid == id && n == parts => {
                            let mut all = bytes.clone();
                            all.extend_from_slice(chunk);
                            Ok(all)
                        }
                        _ => Err(ReadModelError::Invalid(format!(
                            "commit {id:016x} lacks some of its {parts} parts"
                        ))),
                    }
                };
                match bytes.and_then(|b| {
                    postcard::from_bytes::<Vec<Write>>(&b)
                        .map_err(|e| ReadModelError::Invalid(format!("decode: {e}")))
                }) {
                    Ok(writes) => cache.commit(model, *generation, writes, *checkpoint).await,
                    Err(e) => Err(e),
                }
            }
            Op::BeginRebuild => cache.begin_rebuild(model).await.map(|_| ()),
            Op::Activate { generation } => cache.activate(model, *generation).await,
        };
        match result {
            Err(ReadModelError::Unavailable(e)) => {
                tracing::error!(seq, model, "the read-model cache failed, retrying: {e}");
                tokio::time::sleep(nap).await;
                nap = (nap * 2).min(Duration::from_secs(5));
            }
            other => break other,
        }
    };
    pending.remove(model);
    if let Err(e) = result {
        tracing::warn!(seq, model, "read-model log: operation skipped: {e}");
    }
}

#[async_trait::async_trait]
impl ReadModels for NatsReadModels {
    async fn get(
        &self,
        model: &str,
        generation: u64,
        key: &str,
    ) -> Result<Option<Vec<u8>>, ReadModelError> {
        self.cache.get(model, generation, key).await
    }

    async fn scan(
        &self,
        model: &str,
        generation: u64,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<Document>, ReadModelError> {
        self.cache
            .scan(model, generation, prefix, start_after, max)
            .await
    }

    async fn generations(&self, model: &str) -> Result<Generations, ReadModelError> {
        self.cache.generations(model).await
    }

    async fn commit(
        &self,
        model: &str,
        generation: u64,
        writes: Vec<Write>,
        checkpoint: u64,
    ) -> Result<(), ReadModelError> {
        for (key, value) in &writes {
            check_key(key)?;
            if let Some(v) = value {
                check_value(key, v)?;
            }
        }
        let bytes =
            postcard::to_allocvec(&writes).map_err(|e| unavailable(format!("encode: {e}")))?;
        drop(writes);
        let chunk = self.chunk;
        self.write(model, move |g| {
            check_commit(model, &g, generation, checkpoint)?;
            let id = fastrand::u64(..);
            let mut pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
            let last = pieces.pop().unwrap_or(&[]).to_vec();
            let parts = u32::try_from(pieces.len())
                .map_err(|_| ReadModelError::Invalid("commit too large".into()))?;
            let mut ops: Vec<Op> = pieces
                .into_iter()
                .map(|c| Op::Part {
                    id,
                    chunk: c.to_vec(),
                })
                .collect();
            ops.push(Op::Commit {
                generation,
                checkpoint,
                id,
                parts,
                chunk: last,
            });
            Ok((ops, ()))
        })
        .await
    }

    async fn begin_rebuild(&self, model: &str) -> Result<u64, ReadModelError> {
        self.write(model, |g| {
            let next = g.active.max(g.building.map_or(0, |b| b.0)) + 1;
            Ok((vec![Op::BeginRebuild], next))
        })
        .await
    }

    async fn activate(&self, model: &str, generation: u64) -> Result<(), ReadModelError> {
        self.write(model, |g| {
            if g.building.map(|b| b.0) != Some(generation) {
                return Err(ReadModelError::Stale(format!(
                    "generation {generation} of read model {model:?} is not being built"
                )));
            }
            Ok((vec![Op::Activate { generation }], ()))
        })
        .await
    }

    async fn sync(&self, model: &str) -> Result<(), ReadModelError> {
        let mut writer = self.writer.lock().await;
        self.catch_up().await?;
        writer.insert(model.to_owned(), self.last_applied(model));
        Ok(())
    }
}
