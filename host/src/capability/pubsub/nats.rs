//! The NATS pub/sub backend (`[backend] kind = "nats"`): the same
//! [`Publisher`] contract as the embedded [`super::broker::Broker`], on NATS
//! subjects and one JetStream stream that several gateway nodes share.
//! Plugins and WIT do not change.
//!
//! # Mapping
//!
//! - A ficus subject `s` is the NATS subject `ficus.ps.<s>` (prefix
//!   [`DEFAULT_SUBJECT_PREFIX`]); a subscription pattern `p` is
//!   `ficus.ps.<p>` (the ficus grammar is a subset of the NATS one). The
//!   subject grammar and `pubsub.max_message_bytes` are checked as in the
//!   embedded broker; headers travel as NATS headers (names starting with
//!   `Nats-` are refused: JetStream would read them as instructions).
//! - **One JetStream stream** (default [`DEFAULT_STREAM`], file storage,
//!   `backend.replicas` copies) captures `ficus.ps.>` with **interest
//!   retention**: a message is kept until every durable consumer whose
//!   filter matches it has acknowledged it (or terminated it), and a
//!   message that no consumer wants is not kept at all. That is what
//!   at-least-once needs (each subscription gets its own copy, overlapping
//!   patterns are allowed — a work-queue stream forbids them), without a
//!   size or age limit that could drop unacknowledged messages, and without
//!   the stream growing with messages nobody will read.
//! - **at-least-once**: one durable pull consumer per subscription, or per
//!   queue group (`ficus_sub_<name>` / `ficus_queue_<group>`), filter
//!   subject = the pattern, explicit acks, unlimited server-side
//!   redeliveries. The durable name is the same on every node, so a queue
//!   group, or one subscription configured on two nodes, is one shared
//!   consumer: each message goes to one node. A node pulls at most
//!   `max_in_flight` messages into a local window and hands a message to a
//!   worker only when no earlier message of the same subject is in the
//!   window (**per-subject order within a node**, as in the embedded
//!   broker). A failed delivery is retried **on the same node, in its
//!   place** after the configured backoff (`backoff_ms` doubling up to
//!   `backoff_max_ms`), so later messages of its subject wait for it. The
//!   delivery number is JetStream's delivered count plus the failures on
//!   this node: after a crash the local failures are forgotten (the next
//!   node starts from JetStream's count), so across crashes a message can
//!   get more than `max_deliver` deliveries in all. After
//!   the `max_deliver`-th failed delivery the message is published to the
//!   subscription's dead-letter subject (through this backend, so its
//!   subscribers get it, with the `ficus-dead-letter-*` headers), then
//!   terminated. JetStream counts a delivery when a message is pulled
//!   into a node's window, so a message that a stopping node hands back
//!   (or a dead node held) arrives with the next delivery number even if
//!   no plugin saw it. Messages in the window are kept alive with progress acks
//!   (every `ack_wait / 3`), so a message waiting or in hand is not
//!   redelivered elsewhere; if the node dies, they are redelivered after
//!   `ack_wait` ([`NatsPubSubOptions::ack_wait`], default 10 s). A graceful
//!   shutdown negatively acknowledges what it did not handle, so another
//!   node takes it at once.
//! - **at-most-once**: a core NATS queue subscription per subscription (the
//!   queue name is the group, or the subscription's name), so across nodes
//!   each message goes to one member; a local buffer of `max_in_flight`
//!   messages, a message arriving while it is full is dropped and counted.
//! - **publish**: when the subject matches the filter of some durable
//!   consumer of the stream (this node's at-least-once subscriptions, and
//!   the other nodes' consumers as listed every second), the message is
//!   published to JetStream and `publish` returns after the stream's
//!   acknowledgement (stored with `backend.replicas` copies). A message
//!   with no durable interest is a core NATS publish (the stream still
//!   ingests it if a consumer appeared meanwhile, only unconfirmed).
//!   Transient failures (no responders, timeouts, a stream-leader failover)
//!   are retried with backoff for [`NatsPubSubOptions::retry_for`], with a
//!   `Nats-Msg-Id` so that a retried publish is stored once; then the
//!   publish fails with [`PubSubError::Unavailable`].
//!
//! # Differences from the embedded broker
//!
//! - Per-subject order holds within a node. When several nodes share a
//!   consumer, two messages of one subject can be handled at the same time
//!   on two nodes (JetStream hands out messages, not subjects).
//! - `acked`, `redelivered`, `dead_lettered` and `failed` count since this
//!   process started (the embedded broker persists the first three);
//!   `pending` is the consumer's (all nodes): unfetched plus unacknowledged
//!   messages, refreshed every second.
//! - Header order is not kept (NATS headers are a map).
//! - A new subscription gets the messages published after its consumer was
//!   created (on the embedded backend: after it was configured).

use super::broker::{clean_header_value, queue_key, Retry, TransientQueue};
use super::delivery::{run_worker, Delivery, Source};
use super::subject::{check_message, matches};
use super::{Header, PubSubError, Publisher, SubscriptionStats};
use crate::capability::events::nats::safe_with_replicas;
use crate::plugin::bindings::subscriber_world::Message;
use crate::plugin::subscriber::{SubscriberFactory, SubscriberInstance};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, PullConsumer},
    context::PublishErrorKind,
    message::{AckKind, Acker},
};
use async_nats::HeaderMap;
use ficus_config::{Config, Delivery as Mode, Subscription};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Default JetStream stream of pub/sub messages.
pub const DEFAULT_STREAM: &str = "FICUS_PUBSUB";
/// Default NATS subject prefix: ficus subject `s` is `ficus.ps.<s>`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "ficus.ps";

/// Where and how the NATS pub/sub backend works.
#[derive(Debug, Clone)]
pub struct NatsPubSubOptions {
    /// Server URLs (`nats://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT + nkey seed), if the servers need one.
    pub credentials: Option<PathBuf>,
    /// JetStream stream name.
    pub stream: String,
    /// Subject prefix (see the module docs).
    pub subject_prefix: String,
    /// Copies of the stream (1, or 3/5 in a cluster).
    pub replicas: usize,
    /// How long `publish` retries transient failures.
    pub retry_for: Duration,
    /// How long the server waits for an acknowledgement before it
    /// redelivers a message (to any node). Messages held by a live node are
    /// kept alive with progress acks, so this bounds the redelivery delay
    /// after a node dies.
    pub ack_wait: Duration,
}

impl NatsPubSubOptions {
    /// The defaults for `servers`.
    pub fn new(servers: Vec<String>) -> Self {
        NatsPubSubOptions {
            servers,
            credentials: None,
            stream: DEFAULT_STREAM.into(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.into(),
            replicas: 1,
            retry_for: Duration::from_secs(15),
            ack_wait: Duration::from_secs(10),
        }
    }

    /// The options of `config`'s `[backend]` (kind `nats`).
    pub fn from_config(config: &Config) -> Self {
        let backend = &config.backend;
        NatsPubSubOptions {
            credentials: backend.credentials.as_ref().map(|c| config.resolve(c)),
            replicas: usize::from(backend.replicas()),
            ..NatsPubSubOptions::new(backend.servers.clone())
        }
    }
}

/// Why the NATS pub/sub backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NatsPubSubError {
    /// The options are unusable.
    #[error("{0}")]
    Options(String),
    /// No connection: an unreadable credentials file, a malformed address
    /// or no server reachable.
    #[error(transparent)]
    Connect(#[from] crate::capability::nats::ConnectError),
    /// A core NATS subscription (at-most-once) could not be made.
    #[error("cannot connect to NATS at {servers}: subscribe: {error}")]
    Subscribe {
        /// The servers of the connection.
        servers: String,
        /// Why.
        error: String,
    },
    /// The server is too old for the options.
    #[error(
        "nats-server {version} is too old for replicas = {replicas}: replicated streams need \
         nats-server >= 2.10.8; upgrade the servers or use replicas = 1"
    )]
    ServerTooOld {
        /// The server's version.
        version: String,
        /// The replicas asked for.
        replicas: usize,
    },
    /// The JetStream stream or a consumer could not be created.
    #[error("JetStream {what}: {error}")]
    JetStream {
        /// The stream or consumer.
        what: String,
        /// Why.
        error: String,
    },
}

/// JetStream error codes that mean "try again shortly".
fn transient_code(code: u64) -> bool {
    // 10006 cluster not active, 10007 not assigned, 10008 not available,
    // 10009 not leader, 10023 insufficient resources (peer catching up).
    matches!(code, 10006..=10009 | 10023)
}

/// Publishing, shared by the broker and its dead-letter path.
struct Core {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    max_message_bytes: usize,
    retry_for: Duration,
    /// Patterns (ficus form) of this node's at-least-once subscriptions.
    local_durable: Vec<String>,
    /// Patterns (ficus form) of every durable consumer of the stream, as
    /// last listed (read on every publish, without a lock).
    remote_durable: arc_swap::ArcSwap<Vec<String>>,
    /// Acknowledged messages since start (all subscriptions).
    acks: Arc<watch::Sender<u64>>,
    /// Messages handed to at-most-once queues since start (their sequence).
    transient_sequence: AtomicU64,
}

impl Core {
    fn nats_subject(&self, subject: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + 1 + subject.len());
        s.push_str(&self.prefix);
        s.push('.');
        s.push_str(subject);
        s
    }

    fn durable_interest(&self, subject: &str) -> bool {
        self.local_durable.iter().any(|p| matches(p, subject))
            || self
                .remote_durable
                .load()
                .iter()
                .any(|p| matches(p, subject))
    }

    async fn publish(
        &self,
        subject: &str,
        payload: Vec<u8>,
        headers: &[Header],
    ) -> Result<(), PubSubError> {
        let nats_subject = self.nats_subject(subject);
        let header_map = || {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(name.as_str(), value.as_str());
            }
            map
        };
        let payload = bytes::Bytes::from(payload);
        if !self.durable_interest(subject) {
            let r = if headers.is_empty() {
                self.client.publish(nats_subject, payload).await
            } else {
                self.client
                    .publish_with_headers(nats_subject, header_map(), payload)
                    .await
            };
            return r.map_err(|e| PubSubError::Unavailable(format!("NATS publish: {e}")));
        }
        let mut map = header_map();
        map.insert(
            "Nats-Msg-Id",
            format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)).as_str(),
        );
        let started = Instant::now();
        let mut nap = Duration::from_millis(20);
        loop {
            let why = match self
                .js
                .publish_with_headers(nats_subject.clone(), map.clone(), payload.clone())
                .await
            {
                Ok(ack) => match ack.await {
                    Ok(_) => return Ok(()),
                    Err(e) => classify(e)?,
                },
                Err(e) => classify(e)?,
            };
            if started.elapsed() >= self.retry_for {
                return Err(PubSubError::Unavailable(format!(
                    "JetStream publish to {nats_subject}: {why} (retried for {:?})",
                    self.retry_for
                )));
            }
            tracing::debug!("JetStream publish: {why}; retrying in {nap:?}");
            tokio::time::sleep(nap + Duration::from_millis(fastrand::u64(0..10))).await;
            nap = (nap * 2).min(Duration::from_millis(500));
        }
    }
}

/// A publish error: `Ok(why)` when worth retrying, else the final error.
fn classify(e: jetstream::context::PublishError) -> Result<String, PubSubError> {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Err(PubSubError::TooLarge),
        PublishErrorKind::Other => {
            let code = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|j| j.error_code().0);
            match code {
                // Larger than the stream's max_msg_size.
                Some(10054) => Err(PubSubError::TooLarge),
                Some(c) if !transient_code(c) => {
                    Err(PubSubError::Unavailable(format!("JetStream publish: {e}")))
                }
                _ => Ok(e.to_string()),
            }
        }
        _ => Ok(e.to_string()),
    }
}

/// A message in a durable queue's window.
struct Held {
    /// The message; its `delivery` is JetStream's delivered count.
    message: Message,
    acker: Arc<Acker>,
    in_flight: bool,
    /// Failed deliveries on this node since it was pulled.
    failures: u32,
    /// Not before this (backoff after a failure).
    not_before: Option<Instant>,
}

/// Counters of a durable queue since start.
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
    failed: AtomicU64,
    /// num_pending + num_ack_pending of the consumer, as last read.
    pending: AtomicU64,
}

/// The JetStream consumer of an at-least-once subscription or queue group
/// on this node, with its local window.
struct DurableQueue {
    durable: String,
    consumer: PullConsumer,
    retry: Retry,
    capacity: usize,
    ack_wait: Duration,
    window: Mutex<BTreeMap<u64, Held>>,
    wake: watch::Sender<u64>,
    counters: Counters,
}

impl DurableQueue {
    fn wake(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Held>> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a message fetched from the consumer into the window.
    fn insert(&self, core: &Core, m: jetstream::Message) {
        let (seq, delivered) = match m.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(e) => {
                tracing::warn!(consumer = %self.durable, error = %e, "a JetStream message without ack info");
                return;
            }
        };
        let (m, acker) = m.split();
        let subject = m
            .subject
            .as_str()
            .strip_prefix(core.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(m.subject.as_str())
            .to_owned();
        let mut headers = Vec::new();
        if let Some(map) = &m.headers {
            for (name, values) in map.iter() {
                let name: &str = name.as_ref();
                if name.starts_with("Nats-") {
                    continue;
                }
                for v in values {
                    headers.push((name.to_owned(), v.as_str().to_owned()));
                }
            }
        }
        let message = Message {
            subject,
            payload: m.payload.to_vec(),
            headers,
            sequence: seq,
            delivery: delivered,
        };
        let mut w = self.lock();
        match w.get_mut(&seq) {
            Some(held) => {
                // A redelivery of a message this node already holds (a
                // progress ack came too late): the new acker is the valid one.
                held.message.delivery = delivered;
                held.acker = Arc::new(acker);
            }
            None => {
                w.insert(
                    seq,
                    Held {
                        message,
                        acker: Arc::new(acker),
                        in_flight: false,
                        failures: 0,
                        not_before: None,
                    },
                );
            }
        }
        drop(w);
        self.wake();
    }

    /// The next deliverable message, or when to look again.
    fn pick(&self) -> Result<Message, Option<Instant>> {
        let now = Instant::now();
        let mut w = self.lock();
        let mut busy: HashSet<&str> = HashSet::new();
        let mut chosen = None;
        let mut wake_at: Option<Instant> = None;
        for (seq, h) in w.iter() {
            // An earlier held message of the subject blocks this one.
            if !busy.insert(h.message.subject.as_str()) {
                continue;
            }
            if h.in_flight {
                continue;
            }
            match h.not_before {
                Some(t) if t > now => {
                    wake_at = Some(wake_at.map_or(t, |w: Instant| w.min(t)));
                }
                _ => {
                    chosen = Some(*seq);
                    break;
                }
            }
        }
        match chosen {
            Some(seq) => {
                let h = w.get_mut(&seq).expect("chosen from the window");
                h.in_flight = true;
                let mut m = h.message.clone();
                m.delivery = m.delivery.saturating_add(h.failures);
                if m.delivery >= 2 {
                    self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(m)
            }
            None => Err(wake_at),
        }
    }

    fn acker(&self, seq: u64) -> Option<Arc<Acker>> {
        self.lock().get(&seq).map(|h| h.acker.clone())
    }

    fn remove(&self, seq: u64) {
        self.lock().remove(&seq);
        self.wake();
    }

    /// Keep the message for a local retry after `after`, in its place.
    fn retry_later(&self, seq: u64, after: Duration) {
        if let Some(h) = self.lock().get_mut(&seq) {
            h.in_flight = false;
            h.failures += 1;
            h.not_before = Some(Instant::now() + after);
        }
        self.wake();
    }

    /// Pull messages into the window until `stop`.
    async fn fetch(self: Arc<Self>, core: Arc<Core>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let mut wake = self.wake.subscribe();
            wake.borrow_and_update();
            let room = self.capacity.saturating_sub(self.lock().len());
            if room == 0 {
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let batch = self
                .consumer
                .batch()
                .max_messages(room)
                .expires(Duration::from_secs(5))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(consumer = %self.durable, error = %e, "cannot pull messages; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    m = batch.next() => m,
                    _ = stop.changed() => return,
                };
                match next {
                    Some(Ok(m)) => self.insert(&core, m),
                    Some(Err(e)) => {
                        tracing::debug!(consumer = %self.durable, error = %e, "pull ended");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// Keep the window's messages from being redelivered elsewhere, and
    /// refresh nothing else; runs until `stop`.
    async fn keep_alive(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let every = (self.ack_wait / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let ackers: Vec<Arc<Acker>> = self.lock().values().map(|h| h.acker.clone()).collect();
            for a in ackers {
                let _ = a.ack_with(AckKind::Progress).await;
            }
        }
    }

    /// Hand back what this node holds and did not handle (shutdown).
    async fn release_all(&self) {
        let ackers: Vec<Arc<Acker>> = std::mem::take(&mut *self.lock())
            .into_values()
            .map(|h| h.acker)
            .collect();
        for a in ackers {
            let _ = a.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// A worker's view of a durable queue.
struct DurableSource {
    queue: Arc<DurableQueue>,
    core: Arc<Core>,
    subscription: Arc<str>,
    dead_letter: String,
}

#[async_trait::async_trait]
impl Source for DurableSource {
    async fn next(&self, stop: &mut watch::Receiver<bool>) -> Option<Delivery> {
        loop {
            if *stop.borrow() {
                return None;
            }
            let mut wake = self.queue.wake.subscribe();
            wake.borrow_and_update();
            match self.queue.pick() {
                Ok(message) => return Some(Delivery { message }),
                Err(wake_at) => {
                    let sleep = async {
                        match wake_at {
                            Some(t) => tokio::time::sleep_until(t.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = wake.changed() => {}
                        _ = sleep => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    async fn ack(&self, delivery: Delivery) {
        let seq = delivery.message.sequence;
        if let Some(a) = self.queue.acker(seq) {
            if let Err(e) = a.ack().await {
                tracing::warn!(consumer = %self.queue.durable, sequence = seq, error = %e,
                    "cannot acknowledge; the message will be redelivered");
            }
        }
        self.queue.counters.acked.fetch_add(1, Ordering::Relaxed);
        self.queue.remove(seq);
        self.core.acks.send_modify(|n| *n += 1);
    }

    async fn fail(&self, delivery: Delivery, reason: String) {
        self.queue.counters.failed.fetch_add(1, Ordering::Relaxed);
        let m = delivery.message;
        let Some(acker) = self.queue.acker(m.sequence) else {
            self.queue.remove(m.sequence);
            return;
        };
        let retry = self.queue.retry;
        if m.delivery < retry.max_deliver {
            // Retried here, in its place: later messages of its subject
            // wait, and the keep-alive stops a redelivery elsewhere.
            self.queue.retry_later(m.sequence, retry.delay(m.delivery));
            return;
        }
        let mut headers = m.headers.clone();
        headers.push((
            "ficus-dead-letter-subscription".into(),
            self.subscription.to_string(),
        ));
        headers.push(("ficus-dead-letter-subject".into(), m.subject.clone()));
        headers.push((
            "ficus-dead-letter-reason".into(),
            clean_header_value(&reason),
        ));
        match self
            .core
            .publish(&self.dead_letter, m.payload.clone(), &headers)
            .await
        {
            Ok(()) => {
                let _ = acker.ack_with(AckKind::Term).await;
                tracing::warn!(
                    subscription = %self.subscription,
                    subject = %m.subject,
                    sequence = m.sequence,
                    deliveries = m.delivery,
                    dead_letter = %self.dead_letter,
                    reason = %reason,
                    "message dead-lettered"
                );
                self.queue
                    .counters
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ficus_pubsub_dead_lettered_total", "subscription" => self.subscription.to_string())
                    .increment(1);
                self.queue.remove(m.sequence);
            }
            Err(e) => {
                tracing::error!(consumer = %self.queue.durable, error = %e, "cannot dead-letter a message; retrying later");
                self.queue.retry_later(m.sequence, retry.backoff_max);
            }
        }
    }
}

enum Target {
    Durable(Arc<DurableQueue>),
    Transient(Arc<TransientQueue>),
}

impl Clone for Target {
    fn clone(&self) -> Self {
        match self {
            Target::Durable(q) => Target::Durable(q.clone()),
            Target::Transient(q) => Target::Transient(q.clone()),
        }
    }
}

struct SubInfo {
    config: Subscription,
    target: Target,
    /// The first subscription of its queue runs the queue's tasks.
    first_of_queue: bool,
}

/// The NATS pub/sub backend (see the module docs).
pub struct NatsBroker {
    core: Arc<Core>,
    stream: jetstream::stream::Stream,
    subs: Vec<SubInfo>,
    /// Core NATS subscriptions of the at-most-once queues, until `start`.
    core_subs: Mutex<Vec<(async_nats::Subscriber, Arc<TransientQueue>)>>,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    server_version: String,
    /// `ficus_pubsub_published_total`, registered once.
    published: metrics::Counter,
}

/// The durable consumer name of subscription `s`.
pub fn durable_name(s: &Subscription) -> String {
    match &s.queue {
        Some(q) => format!("ficus_queue_{q}"),
        None => format!("ficus_sub_{}", s.name),
    }
}

impl NatsBroker {
    /// The broker of `config` on `[backend] kind = "nats"` with the default
    /// stream, prefix and timings.
    pub async fn open(config: &Config) -> Result<NatsBroker, NatsPubSubError> {
        Self::open_with(config, NatsPubSubOptions::from_config(config)).await
    }

    /// Connect, check the server, create the stream if it does not exist
    /// and the durable consumers of `config`'s at-least-once subscriptions
    /// (or update them to the config), and subscribe the at-most-once ones.
    /// Workers start with [`NatsBroker::start`].
    pub async fn open_with(
        config: &Config,
        options: NatsPubSubOptions,
    ) -> Result<NatsBroker, NatsPubSubError> {
        if options.servers.is_empty() {
            return Err(NatsPubSubError::Options("no NATS servers given".into()));
        }
        let servers = options.servers.join(", ");
        let client = crate::capability::nats::connect(
            "ficus-pubsub",
            &options.servers,
            options.credentials.as_deref(),
            crate::capability::nats::Initial::Required,
        )
        .await?;
        let server_version = client.server_info().version;
        if options.replicas > 1 && !safe_with_replicas(&server_version) {
            return Err(NatsPubSubError::ServerTooOld {
                version: server_version,
                replicas: options.replicas,
            });
        }
        let js = jetstream::new(client.clone());
        let prefix = options.subject_prefix.clone();
        let stream_config = jetstream::stream::Config {
            name: options.stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            retention: jetstream::stream::RetentionPolicy::Interest,
            storage: jetstream::stream::StorageType::File,
            num_replicas: options.replicas,
            description: Some("Ficus pub/sub (at-least-once subscriptions)".into()),
            ..Default::default()
        };
        let js_err = |what: String, error: String| NatsPubSubError::JetStream { what, error };
        let deadline = Instant::now() + options.retry_for;
        // The JetStream meta leader may still be electing (cluster start).
        let stream = loop {
            match js.get_or_create_stream(stream_config.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("creating the pub/sub stream: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(js_err(format!("stream {}", options.stream), e.to_string())),
            }
        };
        let acks = Arc::new(watch::channel(0).0);
        let core = Arc::new(Core {
            client: client.clone(),
            js,
            prefix: prefix.clone(),
            max_message_bytes: config.pubsub.max_message_bytes as usize,
            retry_for: options.retry_for,
            local_durable: config
                .subscriptions
                .iter()
                .filter(|s| s.delivery == Mode::AtLeastOnce)
                .map(|s| s.subject.clone())
                .collect(),
            remote_durable: arc_swap::ArcSwap::from_pointee(Vec::new()),
            acks: acks.clone(),
            transient_sequence: AtomicU64::new(1),
        });
        let mut queues: HashMap<String, Target> = HashMap::new();
        let mut subs = Vec::new();
        let mut core_subs = Vec::new();
        for s in &config.subscriptions {
            let key = queue_key(s);
            if let Some(t) = queues.get(&key) {
                subs.push(SubInfo {
                    config: s.clone(),
                    target: t.clone(),
                    first_of_queue: false,
                });
                continue;
            }
            let target = match s.delivery {
                Mode::AtLeastOnce => {
                    let durable = durable_name(s);
                    let consumer_config = pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: format!("{prefix}.{}", s.subject),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: options.ack_wait,
                        max_deliver: -1,
                        max_ack_pending: -1,
                        description: Some(format!("ficus subscription {}", s.name)),
                        ..Default::default()
                    };
                    let mut attempt = 0;
                    let consumer: PullConsumer = loop {
                        match stream.create_consumer(consumer_config.clone()).await {
                            Ok(c) => break c,
                            Err(e) if Instant::now() < deadline && attempt < 50 => {
                                attempt += 1;
                                tracing::debug!("creating consumer {durable}: {e}; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(e) => {
                                return Err(js_err(format!("consumer {durable}"), e.to_string()))
                            }
                        }
                    };
                    Target::Durable(Arc::new(DurableQueue {
                        durable,
                        consumer,
                        retry: Retry::of(s),
                        capacity: s.max_in_flight as usize,
                        ack_wait: options.ack_wait,
                        window: Mutex::new(BTreeMap::new()),
                        wake: watch::channel(0).0,
                        counters: Counters::default(),
                    }))
                }
                Mode::AtMostOnce => {
                    let group = s.queue.as_deref().unwrap_or(&s.name);
                    let q = Arc::new(TransientQueue::new(
                        group,
                        s.max_in_flight as usize,
                        acks.clone(),
                    ));
                    let sub = client
                        .queue_subscribe(format!("{prefix}.{}", s.subject), group.to_owned())
                        .await
                        .map_err(|e| NatsPubSubError::Subscribe {
                            servers: servers.clone(),
                            error: e.to_string(),
                        })?;
                    core_subs.push((sub, q.clone()));
                    Target::Transient(q)
                }
            };
            queues.insert(key, target.clone());
            subs.push(SubInfo {
                config: s.clone(),
                target,
                first_of_queue: true,
            });
        }
        let broker = NatsBroker {
            core,
            stream,
            subs,
            core_subs: Mutex::new(core_subs),
            stop: watch::channel(false).0,
            workers: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            server_version,
            published: metrics::counter!("ficus_pubsub_published_total"),
        };
        broker.refresh().await;
        let watcher = tokio::spawn(Self::watch_consumers(
            broker.core.clone(),
            broker.stream.clone(),
            broker.durable_queues(),
            broker.stop.subscribe(),
        ));
        broker
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(watcher);
        Ok(broker)
    }

    fn durable_queues(&self) -> Vec<Arc<DurableQueue>> {
        self.subs
            .iter()
            .filter(|s| s.first_of_queue)
            .filter_map(|s| match &s.target {
                Target::Durable(q) => Some(q.clone()),
                Target::Transient(_) => None,
            })
            .collect()
    }

    /// The version of the server this process is connected to.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// List the stream's consumers once: durable interest and pending counts.
    async fn refresh(&self) {
        Self::list_consumers(&self.core, &self.stream, &self.durable_queues()).await;
    }

    async fn list_consumers(
        core: &Core,
        stream: &jetstream::stream::Stream,
        queues: &[Arc<DurableQueue>],
    ) {
        let mut consumers = stream.consumers();
        let mut patterns = Vec::new();
        let strip = |f: &str| {
            f.strip_prefix(core.prefix.as_str())
                .and_then(|s| s.strip_prefix('.'))
                .map(str::to_owned)
        };
        while let Some(info) = consumers.next().await {
            let info = match info {
                Ok(i) => i,
                Err(e) => {
                    tracing::debug!("listing the pub/sub consumers: {e}");
                    return;
                }
            };
            patterns.extend(strip(&info.config.filter_subject));
            patterns.extend(info.config.filter_subjects.iter().filter_map(|f| strip(f)));
            if let Some(q) = queues.iter().find(|q| q.durable == info.name) {
                q.counters.pending.store(
                    info.num_pending + info.num_ack_pending as u64,
                    Ordering::Relaxed,
                );
            }
        }
        core.remote_durable.store(Arc::new(patterns));
    }

    async fn watch_consumers(
        core: Arc<Core>,
        stream: jetstream::stream::Stream,
        queues: Vec<Arc<DurableQueue>>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            Self::list_consumers(&core, &stream, &queues).await;
        }
    }

    /// Start one worker per subscription with the given configured
    /// subscribers (see [`super::broker::load_subscribers`]), in config
    /// order, and each queue's pulling and forwarding tasks.
    pub fn start(&self, subscribers: Vec<(Arc<SubscriberFactory>, SubscriberInstance)>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for q in self.durable_queues() {
            tasks.push(tokio::spawn(
                q.clone().fetch(self.core.clone(), self.stop.subscribe()),
            ));
            tasks.push(tokio::spawn(q.keep_alive(self.stop.subscribe())));
        }
        let core_subs =
            std::mem::take(&mut *self.core_subs.lock().unwrap_or_else(|p| p.into_inner()));
        for (sub, q) in core_subs {
            tasks.push(tokio::spawn(forward(
                self.core.clone(),
                sub,
                q,
                self.stop.subscribe(),
            )));
        }
        drop(tasks);
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for (info, (factory, first)) in self.subs.iter().zip(subscribers) {
            let name: Arc<str> = info.config.name.as_str().into();
            let source: Arc<dyn Source> = match &info.target {
                Target::Durable(q) => Arc::new(DurableSource {
                    queue: q.clone(),
                    core: self.core.clone(),
                    subscription: name.clone(),
                    dead_letter: info.config.dead_letter_subject(),
                }),
                Target::Transient(q) => q.clone(),
            };
            workers.push(tokio::spawn(run_worker(
                name,
                source,
                factory,
                Some(first),
                self.stop.subscribe(),
            )));
        }
    }

    /// The number of messages acknowledged by subscribers since start.
    pub fn acks(&self) -> watch::Receiver<u64> {
        self.core.acks.subscribe()
    }

    /// Stop the workers, letting each finish the message in hand (waiting
    /// at most `grace`), hand back the messages this node holds, and flush
    /// the connection.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let workers: Vec<_> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let all = async {
            for w in workers {
                let _ = w.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("subscriber workers did not stop within the grace period");
        }
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            t.abort();
        }
        for q in self.durable_queues() {
            q.release_all().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.core.client.flush()).await;
    }
}

/// Move the messages of a core subscription into an at-most-once queue.
async fn forward(
    core: Arc<Core>,
    mut sub: async_nats::Subscriber,
    queue: Arc<TransientQueue>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let m = tokio::select! {
            m = sub.next() => m,
            _ = stop.changed() => break,
        };
        let Some(m) = m else { break };
        let subject = m
            .subject
            .as_str()
            .strip_prefix(core.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(m.subject.as_str())
            .to_owned();
        let mut headers = Vec::new();
        if let Some(map) = &m.headers {
            for (name, values) in map.iter() {
                let name: &str = name.as_ref();
                if name.starts_with("Nats-") {
                    continue;
                }
                for v in values {
                    headers.push((name.to_owned(), v.as_str().to_owned()));
                }
            }
        }
        queue.offer(Message {
            subject,
            payload: m.payload.to_vec(),
            headers,
            sequence: core.transient_sequence.fetch_add(1, Ordering::Relaxed),
            delivery: 1,
        });
    }
    let _ = sub.unsubscribe().await;
}

#[async_trait::async_trait]
impl Publisher for NatsBroker {
    async fn publish(
        &self,
        subject: &str,
        payload: Vec<u8>,
        headers: Vec<Header>,
    ) -> Result<(), PubSubError> {
        check_message(subject, &payload, &headers, self.core.max_message_bytes)?;
        if let Some((name, _)) = headers
            .iter()
            .find(|(n, _)| n.len() >= 5 && n[..5].eq_ignore_ascii_case("nats-"))
        {
            return Err(PubSubError::Invalid(format!(
                "header name {name:?}: names starting with \"Nats-\" are reserved by the NATS backend"
            )));
        }
        let r = self.core.publish(subject, payload, &headers).await;
        if r.is_ok() {
            self.published.increment(1);
        }
        r
    }

    fn subscriptions(&self) -> Vec<SubscriptionStats> {
        self.subs
            .iter()
            .map(|s| {
                let c = &s.config;
                let mut st = SubscriptionStats {
                    name: c.name.clone(),
                    subject: c.subject.clone(),
                    plugin: c.plugin.clone(),
                    queue: c.queue.clone(),
                    delivery: c.delivery.as_str(),
                    ..SubscriptionStats::default()
                };
                match &s.target {
                    Target::Durable(q) => {
                        let n = &q.counters;
                        st.pending = n.pending.load(Ordering::Relaxed);
                        st.acked = n.acked.load(Ordering::Relaxed);
                        st.redelivered = n.redelivered.load(Ordering::Relaxed);
                        st.dead_lettered = n.dead_lettered.load(Ordering::Relaxed);
                        st.failed = n.failed.load(Ordering::Relaxed);
                        st.dead_letter = Some(c.dead_letter_subject());
                    }
                    Target::Transient(q) => q.stats(&mut st),
                }
                st
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::nats_server::NatsServer;

    const WAIT: Duration = Duration::from_secs(10);

    fn config(url: &str, subscriptions: &str) -> Config {
        let dir = std::env::temp_dir();
        let text = format!(
            "[backend]\nkind = \"nats\"\nservers = [{url:?}]\n\
             [pubsub]\nmax_message_bytes = 64\n\
             [plugins.p]\nsource = \"p.wasm\"\n{subscriptions}"
        );
        ficus_config::parse_str(&text, &dir.join("gateway.toml")).expect("config")
    }

    fn sub(name: &str, subject: &str, extra: &str) -> String {
        format!(
            "[[subscriptions]]\nname = {name:?}\nsubject = {subject:?}\nplugin = \"p\"\n{extra}\n"
        )
    }

    async fn open(url: &str, subscriptions: &str) -> NatsBroker {
        let options = NatsPubSubOptions {
            ack_wait: Duration::from_secs(2),
            ..NatsPubSubOptions::new(vec![url.to_owned()])
        };
        NatsBroker::open_with(&config(url, subscriptions), options)
            .await
            .expect("open the NATS broker")
    }

    /// The source of subscription `i`, with its queue's pulling task
    /// running (what `start` does, without plugins).
    fn source(b: &NatsBroker, i: usize) -> Arc<dyn Source> {
        let info = &b.subs[i];
        match &info.target {
            Target::Durable(q) => {
                if info.first_of_queue {
                    b.tasks.lock().unwrap().push(tokio::spawn(
                        q.clone().fetch(b.core.clone(), b.stop.subscribe()),
                    ));
                    b.tasks
                        .lock()
                        .unwrap()
                        .push(tokio::spawn(q.clone().keep_alive(b.stop.subscribe())));
                }
                Arc::new(DurableSource {
                    queue: q.clone(),
                    core: b.core.clone(),
                    subscription: info.config.name.as_str().into(),
                    dead_letter: info.config.dead_letter_subject(),
                })
            }
            Target::Transient(q) => {
                let subs = std::mem::take(&mut *b.core_subs.lock().unwrap());
                for (s, tq) in subs {
                    b.tasks.lock().unwrap().push(tokio::spawn(forward(
                        b.core.clone(),
                        s,
                        tq,
                        b.stop.subscribe(),
                    )));
                }
                q.clone()
            }
        }
    }

    async fn next(src: &Arc<dyn Source>) -> Message {
        let (_tx, mut stop) = watch::channel(false);
        tokio::time::timeout(WAIT, src.next(&mut stop))
            .await
            .expect("a message in time")
            .expect("a message")
            .message
    }

    async fn nothing_within(src: &Arc<dyn Source>, wait: Duration) -> bool {
        let (_tx, mut stop) = watch::channel(false);
        tokio::time::timeout(wait, src.next(&mut stop))
            .await
            .is_err()
    }

    fn text(m: &Message) -> String {
        String::from_utf8(m.payload.clone()).unwrap()
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_and_delivers_with_headers_and_counts() {
        let server = NatsServer::start();
        let b = open(&server.url, &sub("s", "o.*", "")).await;
        let src = source(&b, 0);
        b.publish("o.a", b"one".to_vec(), vec![("k".into(), "v".into())])
            .await
            .expect("publish");
        let m = next(&src).await;
        assert_eq!(
            (m.subject.as_str(), text(&m).as_str(), m.delivery),
            ("o.a", "one", 1)
        );
        assert_eq!(m.headers, vec![("k".to_string(), "v".to_string())]);
        // Not matching the pattern: not delivered.
        b.publish("x.a", b"no".to_vec(), Vec::new()).await.unwrap();
        src.ack(Delivery { message: m }).await;
        assert!(nothing_within(&src, Duration::from_millis(300)).await);
        let stats = b.subscriptions();
        assert_eq!((stats[0].acked, stats[0].delivery), (1, "at-least-once"));
        eventually("pending back to 0", || b.subscriptions()[0].pending == 0).await;
        b.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_group_on_two_nodes_delivers_each_message_once() {
        let server = NatsServer::start();
        let subs = format!(
            "{}{}",
            sub("w", "jobs.*", "queue = \"g\""),
            sub(
                "fast",
                "tick.*",
                "queue = \"t\"\ndelivery = \"at-most-once\""
            )
        );
        let a = open(&server.url, &subs).await;
        let b = open(&server.url, &subs).await;
        let sources = [source(&a, 0), source(&b, 0)];
        let fast = [source(&a, 1), source(&b, 1)];
        for i in 0..20 {
            a.publish(
                &format!("jobs.j{}", i % 5),
                format!("{i}").into_bytes(),
                Vec::new(),
            )
            .await
            .unwrap();
            b.publish("tick.t", format!("{i}").into_bytes(), Vec::new())
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut per_node = [0, 0];
        let deadline = Instant::now() + WAIT;
        while seen.len() < 20 {
            assert!(Instant::now() < deadline, "only {seen:?} within {WAIT:?}");
            for (n, src) in sources.iter().enumerate() {
                let (_tx, mut stop) = watch::channel(false);
                if let Ok(Some(d)) =
                    tokio::time::timeout(Duration::from_millis(100), src.next(&mut stop)).await
                {
                    seen.push(text(&d.message));
                    per_node[n] += 1;
                    src.ack(d).await;
                }
            }
        }
        seen.sort_by_key(|s| s.parse::<u32>().unwrap());
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(seen, want, "each message exactly once across the group");
        for src in &sources {
            assert!(nothing_within(src, Duration::from_millis(300)).await);
        }
        // At-most-once queue group: 20 messages split between the nodes.
        let mut fast_seen = 0;
        for src in &fast {
            while !nothing_within(src, Duration::from_millis(300)).await {
                fast_seen += 1;
            }
        }
        // (`nothing_within` takes a message when it returns false.)
        let buffered: u64 = [&a, &b].iter().map(|x| x.subscriptions()[1].dropped).sum();
        assert_eq!(buffered, 0);
        assert_eq!(fast_seen, 20, "each at-most-once message to one member");
        eprintln!("queue group split: {per_node:?}");
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_are_retried_in_subject_order_then_dead_lettered() {
        let server = NatsServer::start();
        let subs = format!(
            "{}{}",
            sub(
                "s",
                "o.*",
                "max_deliver = 2\nbackoff_ms = 200\nmax_in_flight = 1"
            ),
            sub("dl", "dead.s", "")
        );
        let b = open(&server.url, &subs).await;
        let src = source(&b, 0);
        let dl = source(&b, 1);
        for p in ["a1", "a2"] {
            b.publish("o.a", p.as_bytes().to_vec(), vec![("h".into(), p.into())])
                .await
                .unwrap();
        }
        let first = next(&src).await;
        assert_eq!((text(&first).as_str(), first.delivery), ("a1", 1));
        let t = Instant::now();
        src.fail(Delivery { message: first }, "boom".into()).await;
        // a2 waits for a1's redelivery, after the backoff.
        let again = next(&src).await;
        // A window of one: a2 is not even pulled while a1 is retried.
        let Target::Durable(q) = &b.subs[0].target else {
            panic!("durable")
        };
        assert_eq!(q.lock().len(), 1);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "retried locally after the backoff, not after ack_wait: {:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() >= Duration::from_millis(180),
            "{:?}",
            t.elapsed()
        );
        assert_eq!((text(&again).as_str(), again.delivery), ("a1", 2));
        src.fail(Delivery { message: again }, "boom\nagain".into())
            .await;
        let dead = next(&dl).await;
        assert_eq!(
            (dead.subject.as_str(), text(&dead).as_str()),
            ("dead.s", "a1")
        );
        let h: HashMap<_, _> = dead.headers.iter().cloned().collect();
        assert_eq!(h["ficus-dead-letter-subscription"], "s");
        assert_eq!(h["ficus-dead-letter-subject"], "o.a");
        assert_eq!(h["ficus-dead-letter-reason"], "boom again");
        assert_eq!(h["h"], "a1");
        dl.ack(Delivery { message: dead }).await;
        let second = next(&src).await;
        assert_eq!((text(&second).as_str(), second.delivery), ("a2", 1));
        src.ack(Delivery { message: second }).await;
        let st = b.subscriptions();
        assert_eq!(
            (
                st[0].acked,
                st[0].failed,
                st[0].redelivered,
                st[0].dead_lettered
            ),
            (1, 2, 1, 1)
        );
        // Terminated and acked: nothing is left in the interest stream.
        eventually("the stream is empty", || {
            b.subscriptions().iter().all(|s| s.pending == 0)
        })
        .await;
        let mut stream = b.stream.clone();
        let deadline = Instant::now() + WAIT;
        loop {
            let messages = stream.info().await.unwrap().state.messages;
            if messages == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "interest retention keeps {messages} acknowledged messages"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        b.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_once_drops_what_the_buffer_cannot_hold() {
        let server = NatsServer::start();
        let b = open(
            &server.url,
            &sub("f", "m.>", "delivery = \"at-most-once\"\nmax_in_flight = 2"),
        )
        .await;
        let src = source(&b, 0);
        for i in 0..10 {
            b.publish("m.x.y", format!("{i}").into_bytes(), Vec::new())
                .await
                .unwrap();
        }
        eventually("8 dropped", || b.subscriptions()[0].dropped == 8).await;
        let st = &b.subscriptions()[0];
        assert_eq!((st.pending, st.delivery), (2, "at-most-once"));
        let m = next(&src).await;
        assert_eq!((text(&m).as_str(), m.subject.as_str()), ("0", "m.x.y"));
        b.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undelivered_messages_survive_a_restart() {
        let server = NatsServer::start();
        let subs = sub("s", "o.*", "");
        let b = open(&server.url, &subs).await;
        for i in 0..3 {
            b.publish("o.a", format!("m{i}").into_bytes(), Vec::new())
                .await
                .unwrap();
        }
        // One is in hand when the node stops: handed back, not lost.
        let src = source(&b, 0);
        let _in_hand = next(&src).await;
        b.shutdown(Duration::from_secs(1)).await;
        drop(b);
        // Published while no node runs: the durable consumer keeps interest.
        let publisher = open(&server.url, "").await;
        publisher
            .publish("o.b", b"m3".to_vec(), Vec::new())
            .await
            .unwrap();
        let b = open(&server.url, &subs).await;
        let src = source(&b, 0);
        let mut got = Vec::new();
        for _ in 0..4 {
            let m = next(&src).await;
            got.push((text(&m), m.delivery));
            src.ack(Delivery { message: m }).await;
        }
        got.sort();
        // m0 was in hand, m1 and m2 in the stopped node's window: all three
        // were handed back, so this is at least their second delivery (more
        // if a progress ack came late on a loaded machine). m3 was
        // published while no subscriber ran.
        let payloads: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(payloads, vec!["m0", "m1", "m2", "m3"], "{got:?}");
        assert!(got[..3].iter().all(|(_, d)| *d >= 2), "{got:?}");
        assert_eq!(got[3].1, 1, "{got:?}");
        b.shutdown(Duration::from_secs(1)).await;
        publisher.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_messages_are_refused_and_an_unreachable_server_is_reported() {
        let server = NatsServer::start();
        let b = open(&server.url, &sub("s", "o.*", "")).await;
        assert!(matches!(
            b.publish("o.*", Vec::new(), Vec::new()).await,
            Err(PubSubError::Invalid(_))
        ));
        assert_eq!(
            b.publish("o.a", vec![0; 65], Vec::new()).await,
            Err(PubSubError::TooLarge)
        );
        assert!(matches!(
            b.publish("o.a", Vec::new(), vec![("Nats-Msg-Id".into(), "x".into())]).await,
            Err(PubSubError::Invalid(m)) if m.contains("reserved")
        ));
        b.shutdown(Duration::from_secs(1)).await;
        let port = crate::testing::nats_server::free_port();
        let url = format!("nats://127.0.0.1:{port}");
        let err = NatsBroker::open(&config(&url, &sub("s", "o.*", "")))
            .await
            .err()
            .expect("no server there");
        let text = err.to_string();
        assert!(
            text.contains("cannot connect to NATS at") && text.contains(&url),
            "{text}"
        );
    }

    #[test]
    fn durable_names_follow_the_queue_group() {
        let mut s = Subscription::new("audit", "o.>", "p");
        assert_eq!(durable_name(&s), "ficus_sub_audit");
        s.queue = Some("workers".into());
        assert_eq!(durable_name(&s), "ficus_queue_workers");
    }
}
