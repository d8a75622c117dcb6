//! The embedded broker: the [`Publisher`] of a single gateway process.
//!
//! Each at-least-once subscription (or queue group) has a [`DurableQueue`]:
//! its messages live in the [`DurableStore`], and a bounded *window* of the
//! oldest `max_in_flight` of them is kept in memory for delivery. A message
//! is handed to a worker only when no earlier message of the same subject
//! is pending in the window (per-subject order), and after its backoff
//! delay. Each at-most-once subscription (or queue group) has a
//! [`TransientQueue`]: a bounded channel; a message published while it is
//! full is dropped and counted.
//!
//! Members of a queue group are workers of the same queue, so each message
//! goes to exactly one of them.

use super::delivery::{run_worker, Delivery, Source};
use super::store::{DurableStore, NewMessage, QueueCounts, Stored};
use super::subject::{check_message, matches};
use super::{Header, PubSubError, Publisher, SubscriptionStats};
use crate::capability::Services;
use crate::gateway::grants_of;
use crate::plugin::bindings::subscriber_world::Message;
use crate::plugin::ctx::Capabilities;
use crate::plugin::engine::PluginEngine;
use crate::plugin::subscriber::{SubscriberFactory, SubscriberInstance, SubscriberSpec};
use crate::plugin::PluginError;
use ficus_config::{Config, ConfigError, Delivery as Mode, Subscription};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// File name of the broker's database in `backend.data_dir`.
pub const DB_FILE: &str = "pubsub.redb";

/// Retry settings of a durable queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retry {
    pub(super) max_deliver: u32,
    pub(super) backoff: Duration,
    pub(super) backoff_max: Duration,
}

impl Retry {
    /// The retry settings of subscription `s`.
    pub(super) fn of(s: &Subscription) -> Retry {
        Retry {
            max_deliver: s.max_deliver,
            backoff: Duration::from_millis(s.backoff_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
        }
    }

    /// Delay before delivery `n + 1` after `n` failed ones.
    pub(super) fn delay(&self, failed: u32) -> Duration {
        let factor = 1u32 << failed.saturating_sub(1).min(20);
        self.backoff.saturating_mul(factor).min(self.backoff_max)
    }
}

struct Entry {
    stored: Arc<Stored>,
    in_flight: bool,
    not_before: Option<Instant>,
}

#[derive(Default)]
struct Window {
    entries: BTreeMap<u64, Entry>,
    loaded_to: u64,
    more: bool,
}

/// The durable queue of an at-least-once subscription or queue group.
pub struct DurableQueue {
    key: Arc<str>,
    store: Arc<DurableStore>,
    retry: Retry,
    capacity: usize,
    window: Mutex<Window>,
    wake: watch::Sender<u64>,
    counts: Mutex<QueueCounts>,
    failed: AtomicU64,
}

impl DurableQueue {
    fn wake(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A message was stored in this queue.
    fn stored(&self) {
        self.window.lock().unwrap_or_else(|p| p.into_inner()).more = true;
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending += 1;
        self.wake();
    }

    fn gauge(&self) {
        let pending = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending;
        metrics::gauge!("ficus_pubsub_pending", "queue" => self.key.to_string())
            .set(pending as f64);
    }

    /// Pick the next deliverable message, or say when to look again.
    fn pick(&self) -> Result<Arc<Stored>, Option<Instant>> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.more && w.entries.len() < self.capacity {
            let room = self.capacity - w.entries.len();
            match self.store.load_after(&self.key, w.loaded_to, room) {
                Ok(rows) => {
                    if rows.len() < room {
                        w.more = false;
                    }
                    for row in rows {
                        w.loaded_to = row.sequence;
                        w.entries.insert(
                            row.sequence,
                            Entry {
                                stored: Arc::new(row),
                                in_flight: false,
                                not_before: None,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(queue = %self.key, error = %e, "cannot read the durable queue");
                    return Err(Some(Instant::now() + Duration::from_secs(1)));
                }
            }
        }
        let now = Instant::now();
        let mut busy: HashSet<&str> = HashSet::new();
        let mut chosen = None;
        let mut wake_at: Option<Instant> = None;
        for (seq, e) in &w.entries {
            // An earlier pending message of the subject blocks this one.
            if !busy.insert(e.stored.subject.as_str()) {
                continue;
            }
            if e.in_flight {
                continue;
            }
            match e.not_before {
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
                let e = w.entries.get_mut(&seq).expect("chosen from the window");
                e.in_flight = true;
                Ok(e.stored.clone())
            }
            None => Err(wake_at),
        }
    }

    /// Put a message back for a later attempt.
    fn release(&self, sequence: u64, after: Duration) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = w.entries.get_mut(&sequence) {
            e.in_flight = false;
            e.not_before = Some(Instant::now() + after);
        }
        drop(w);
        self.wake();
    }

    /// A message left the queue (acknowledged or dead-lettered).
    fn remove(&self, sequence: u64) {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .remove(&sequence);
        {
            let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            c.pending = c.pending.saturating_sub(1);
        }
        self.gauge();
        self.wake();
    }
}

/// The in-memory queue of an at-most-once subscription or queue group.
pub struct TransientQueue {
    tx: mpsc::Sender<Message>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    capacity: usize,
    acked: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    name: Arc<str>,
    acks: Arc<watch::Sender<u64>>,
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

/// Subject patterns and the queues they feed.
struct Routing {
    routes: Vec<(String, Target)>,
    store: Option<Arc<DurableStore>>,
    max_message_bytes: usize,
    transient_sequence: AtomicU64,
    /// Messages acknowledged since start (all subscriptions).
    acks: Arc<watch::Sender<u64>>,
}

impl Routing {
    /// Store and fan out a message that passed the checks.
    async fn route(&self, message: NewMessage) -> Result<(), PubSubError> {
        let mut durable = Vec::new();
        let mut transient = Vec::new();
        for (pattern, target) in &self.routes {
            if matches(pattern, &message.subject) {
                match target {
                    Target::Durable(q) => durable.push(q.clone()),
                    Target::Transient(q) => transient.push(q.clone()),
                }
            }
        }
        let message = Arc::new(message);
        if !durable.is_empty() {
            let store = self
                .store
                .as_ref()
                .ok_or_else(|| PubSubError::Unavailable("no durable store".into()))?;
            store
                .publish(
                    durable.iter().map(|q| q.key.clone()).collect(),
                    message.clone(),
                )
                .await?;
            for q in &durable {
                q.stored();
                q.gauge();
            }
        }
        self.fan_out(&message, &transient);
        metrics::counter!("ficus_pubsub_published_total").increment(1);
        Ok(())
    }

    fn fan_out(&self, message: &NewMessage, queues: &[Arc<TransientQueue>]) {
        for q in queues {
            let m = Message {
                subject: message.subject.clone(),
                payload: message.payload.clone(),
                headers: message.headers.clone(),
                sequence: self.transient_sequence.fetch_add(1, Ordering::Relaxed),
                delivery: 1,
            };
            q.offer(m);
        }
    }

    /// Durable queues and transient queues matching `subject`.
    fn targets(&self, subject: &str) -> (Vec<Arc<DurableQueue>>, Vec<Arc<TransientQueue>>) {
        let mut durable = Vec::new();
        let mut transient = Vec::new();
        for (pattern, target) in &self.routes {
            if matches(pattern, subject) {
                match target {
                    Target::Durable(q) => durable.push(q.clone()),
                    Target::Transient(q) => transient.push(q.clone()),
                }
            }
        }
        (durable, transient)
    }
}

/// A worker's view of a durable queue.
struct DurableSource {
    queue: Arc<DurableQueue>,
    routing: Arc<Routing>,
    subscription: Arc<str>,
    dead_letter: String,
}

pub(super) fn clean_header_value(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 512 {
        let mut cut = 512;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
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
                Ok(stored) => {
                    match self
                        .queue
                        .store
                        .deliver(self.queue.key.clone(), stored.sequence)
                        .await
                    {
                        Ok(n) => {
                            if n >= 2 {
                                self.queue
                                    .counts
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .redelivered += 1;
                            }
                            return Some(Delivery {
                                message: Message {
                                    subject: stored.subject.clone(),
                                    payload: stored.payload.clone(),
                                    headers: stored.headers.clone(),
                                    sequence: stored.sequence,
                                    delivery: n,
                                },
                            });
                        }
                        Err(e) => {
                            tracing::error!(queue = %self.queue.key, error = %e, "cannot record a delivery");
                            self.queue.release(stored.sequence, Duration::from_secs(1));
                            continue;
                        }
                    }
                }
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
        match self.queue.store.ack(self.queue.key.clone(), seq).await {
            Ok(()) => {
                self.queue
                    .counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .acked += 1;
                self.queue.remove(seq);
                self.routing.acks.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::error!(queue = %self.queue.key, sequence = seq, error = %e,
                    "cannot record an acknowledgement; the message will be redelivered");
                self.queue.release(seq, Duration::from_secs(1));
            }
        }
    }

    async fn fail(&self, delivery: Delivery, reason: String) {
        self.queue.failed.fetch_add(1, Ordering::Relaxed);
        let m = delivery.message;
        if m.delivery < self.queue.retry.max_deliver {
            self.queue
                .release(m.sequence, self.queue.retry.delay(m.delivery));
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
        let dead = Arc::new(NewMessage {
            subject: self.dead_letter.clone(),
            headers,
            payload: m.payload.clone(),
        });
        let (durable, transient) = self.routing.targets(&dead.subject);
        match self
            .queue
            .store
            .dead_letter(
                self.queue.key.clone(),
                m.sequence,
                durable.iter().map(|q| q.key.clone()).collect(),
                dead.clone(),
            )
            .await
        {
            Ok(_) => {
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
                    .counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .dead_lettered += 1;
                metrics::counter!("ficus_pubsub_dead_lettered_total", "subscription" => self.subscription.to_string())
                    .increment(1);
                self.queue.remove(m.sequence);
                for q in &durable {
                    q.stored();
                    q.gauge();
                }
                self.routing.fan_out(&dead, &transient);
            }
            Err(e) => {
                tracing::error!(queue = %self.queue.key, error = %e, "cannot dead-letter a message; retrying later");
                self.queue.release(m.sequence, self.queue.retry.backoff_max);
            }
        }
    }
}

impl TransientQueue {
    /// An empty queue of `capacity` messages for subscription or group
    /// `name`, counting acknowledgements on `acks`.
    pub(super) fn new(
        name: &str,
        capacity: usize,
        acks: Arc<watch::Sender<u64>>,
    ) -> TransientQueue {
        let (tx, rx) = mpsc::channel(capacity);
        TransientQueue {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            capacity,
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            name: name.into(),
            acks,
        }
    }

    /// Buffer `message`, or drop (and count) it when the buffer is full.
    pub(super) fn offer(&self, message: Message) {
        if self.tx.try_send(message).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("ficus_pubsub_dropped_total", "subscription" => self.name.to_string())
                .increment(1);
        }
    }

    /// Fill the counters of `stats`.
    pub(super) fn stats(&self, stats: &mut SubscriptionStats) {
        stats.pending = (self.capacity - self.tx.capacity()) as u64;
        stats.acked = self.acked.load(Ordering::Relaxed);
        stats.failed = self.failed.load(Ordering::Relaxed);
        stats.dropped = self.dropped.load(Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Source for TransientQueue {
    async fn next(&self, stop: &mut watch::Receiver<bool>) -> Option<Delivery> {
        if *stop.borrow() {
            return None;
        }
        let mut rx = tokio::select! {
            rx = self.rx.lock() => rx,
            _ = stop.changed() => return None,
        };
        tokio::select! {
            m = rx.recv() => m.map(|message| Delivery { message }),
            _ = stop.changed() => None,
        }
    }

    async fn ack(&self, _delivery: Delivery) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.acks.send_modify(|n| *n += 1);
    }

    async fn fail(&self, _delivery: Delivery, _reason: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

struct SubInfo {
    config: Subscription,
    target: Target,
}

/// The embedded broker.
pub struct Broker {
    routing: Arc<Routing>,
    subs: Vec<SubInfo>,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The queue key of a subscription: its queue group's, or its own.
pub(super) fn queue_key(s: &Subscription) -> String {
    match &s.queue {
        Some(q) => format!("queue:{q}"),
        None => format!("sub:{}", s.name),
    }
}

impl Broker {
    /// A broker without subscriptions: publishing checks the message and
    /// delivers it nowhere (benchmarks, `ficus check`).
    pub fn detached(max_message_bytes: usize) -> Broker {
        Broker {
            routing: Arc::new(Routing {
                routes: Vec::new(),
                store: None,
                max_message_bytes,
                transient_sequence: AtomicU64::new(1),
                acks: Arc::new(watch::channel(0).0),
            }),
            subs: Vec::new(),
            stop: watch::channel(false).0,
            workers: Mutex::new(Vec::new()),
        }
    }

    /// The broker of `config`: opens `<backend.data_dir>/pubsub.redb` when
    /// some subscription is at-least-once. Workers start with
    /// [`Broker::start`].
    pub fn open(config: &Config) -> anyhow::Result<Broker> {
        let durable = config
            .subscriptions
            .iter()
            .any(|s| s.delivery == Mode::AtLeastOnce);
        let mut counts: HashMap<String, QueueCounts> = HashMap::new();
        let store = if durable {
            let path = config.resolve(&config.backend.data_dir).join(DB_FILE);
            let db = crate::storage::open(&path)?;
            let store =
                DurableStore::new(db).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            counts = store
                .counts()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(Arc::new(store))
        } else {
            None
        };
        let acks = Arc::new(watch::channel(0).0);
        let mut queues: HashMap<String, Target> = HashMap::new();
        let mut routes = Vec::new();
        let mut subs = Vec::new();
        for s in &config.subscriptions {
            let key = queue_key(s);
            let target = match queues.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let t = match (s.delivery, &store) {
                        (Mode::AtLeastOnce, Some(store)) => {
                            let c = counts.remove(&key).unwrap_or_default();
                            let q = DurableQueue {
                                key: key.as_str().into(),
                                store: store.clone(),
                                retry: Retry::of(s),
                                capacity: s.max_in_flight as usize,
                                window: Mutex::new(Window {
                                    more: true,
                                    ..Window::default()
                                }),
                                wake: watch::channel(0).0,
                                counts: Mutex::new(c),
                                failed: AtomicU64::new(0),
                            };
                            q.gauge();
                            Target::Durable(Arc::new(q))
                        }
                        _ => Target::Transient(Arc::new(TransientQueue::new(
                            s.queue.as_deref().unwrap_or(&s.name),
                            s.max_in_flight as usize,
                            acks.clone(),
                        ))),
                    };
                    queues.insert(key, t.clone());
                    routes.push((s.subject.clone(), t.clone()));
                    t
                }
            };
            subs.push(SubInfo {
                config: s.clone(),
                target,
            });
        }
        for (queue, c) in counts {
            if c.pending > 0 {
                tracing::warn!(
                    queue = %queue,
                    pending = c.pending,
                    "the pub/sub store has pending messages of a queue no subscription uses any more; they are kept"
                );
            }
        }
        Ok(Broker {
            routing: Arc::new(Routing {
                routes,
                store,
                max_message_bytes: config.pubsub.max_message_bytes as usize,
                transient_sequence: AtomicU64::new(1),
                acks,
            }),
            subs,
            stop: watch::channel(false).0,
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Start one worker per subscription, each with the given configured
    /// subscriber (see [`load_subscribers`]), in config order.
    pub fn start(&self, subscribers: Vec<(Arc<SubscriberFactory>, SubscriberInstance)>) {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        for (info, (factory, first)) in self.subs.iter().zip(subscribers) {
            let name: Arc<str> = info.config.name.as_str().into();
            let source: Arc<dyn Source> = match &info.target {
                Target::Durable(q) => Arc::new(DurableSource {
                    queue: q.clone(),
                    routing: self.routing.clone(),
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

    /// The number of messages acknowledged by subscribers since start, to
    /// wait for deliveries (benchmarks, tools).
    pub fn acks(&self) -> watch::Receiver<u64> {
        self.routing.acks.subscribe()
    }

    /// Stop the workers, letting each finish the message in hand (waiting
    /// at most `grace`), then flush and close the store.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let workers: Vec<_> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let all = futures_join(workers);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("subscriber workers did not stop within the grace period");
        }
        if let Some(store) = &self.routing.store {
            store.close();
        }
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

#[async_trait::async_trait]
impl Publisher for Broker {
    async fn publish(
        &self,
        subject: &str,
        payload: Vec<u8>,
        headers: Vec<Header>,
    ) -> Result<(), PubSubError> {
        check_message(subject, &payload, &headers, self.routing.max_message_bytes)?;
        self.routing
            .route(NewMessage {
                subject: subject.to_owned(),
                headers,
                payload,
            })
            .await
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
                        let counts = *q.counts.lock().unwrap_or_else(|p| p.into_inner());
                        st.pending = counts.pending;
                        st.acked = counts.acked;
                        st.redelivered = counts.redelivered;
                        st.dead_lettered = counts.dead_lettered;
                        st.failed = q.failed.load(Ordering::Relaxed);
                        st.dead_letter = Some(c.dead_letter_subject());
                    }
                    Target::Transient(q) => q.stats(&mut st),
                }
                st
            })
            .collect()
    }
}

/// Load, link, instantiate and configure the plugin of every subscription
/// (in config order), or report every error at its key path.
pub async fn load_subscribers(
    config: &Config,
    engine: &PluginEngine,
    services: &Services,
) -> Result<Vec<(Arc<SubscriberFactory>, SubscriberInstance)>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, s) in config.subscriptions.iter().enumerate() {
        let base = format!("subscriptions[{i}]");
        let Some(pc) = config.plugins.get(&s.plugin) else {
            errors.push(config.error_at(
                &format!("{base}.plugin"),
                format!("unknown plugin {:?}", s.plugin),
            ));
            continue;
        };
        let loaded = match engine.load(&config.resolve(&pc.source)) {
            Ok(l) => l,
            Err(e) => {
                errors.push(config.error_at(
                    &format!("{base}.plugin"),
                    format!("plugin \"{}\": {e}", s.plugin),
                ));
                continue;
            }
        };
        let spec = SubscriberSpec {
            plugin: s.plugin.as_str().into(),
            subscription: s.name.as_str().into(),
            config_json: s.config_json(),
            timeout: Duration::from_millis(pc.timeout_ms),
            memory_limit: pc.memory_limit_bytes as usize,
            grants: grants_of(&pc.grants),
        };
        let caps = Arc::new(Capabilities::new(&s.plugin, &s.name, services));
        match SubscriberFactory::new(engine, &loaded.component, spec, caps).await {
            Ok((factory, first)) => out.push((Arc::new(factory), first)),
            Err(e) => {
                let at = match e {
                    PluginError::Rejected(_) => format!("{base}.config"),
                    _ => format!("{base}.plugin"),
                };
                errors.push(config.error_at(
                    &at,
                    format!(
                        "plugin \"{}\" in subscription \"{}\": {e}",
                        s.plugin, s.name
                    ),
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(dir: &std::path::Path, extra: &str) -> Broker {
        let text = format!(
            "[backend]\ndata_dir = {:?}\n[plugins.p]\nsource = \"p.wasm\"\n\
             [[subscriptions]]\nname = \"s\"\nsubject = \"o.*\"\nplugin = \"p\"\n{extra}",
            dir.to_string_lossy()
        );
        let config = ficus_config::parse_str(&text, &dir.join("gateway.toml")).expect("config");
        Broker::open(&config).expect("broker")
    }

    fn source(b: &Broker) -> (DurableSource, Arc<DurableQueue>) {
        let Target::Durable(q) = &b.subs[0].target else {
            panic!("durable")
        };
        (
            DurableSource {
                queue: q.clone(),
                routing: b.routing.clone(),
                subscription: "s".into(),
                dead_letter: "dead.s".into(),
            },
            q.clone(),
        )
    }

    fn temp(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ficus-broker-{label}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[tokio::test]
    async fn per_subject_order_and_a_bounded_window() {
        let dir = temp("order");
        let b = broker(&dir, "max_in_flight = 3\nbackoff_ms = 30\n");
        for (subject, payload) in [
            ("o.a", "a1"),
            ("o.a", "a2"),
            ("o.b", "b1"),
            ("o.c", "c1"),
            ("o.d", "d1"),
        ] {
            b.publish(subject, payload.into(), Vec::new())
                .await
                .expect("publish");
        }
        let (src, q) = source(&b);
        let (_stop_tx, mut stop) = watch::channel(false);
        let first = src.next(&mut stop).await.expect("a1");
        assert_eq!(first.message.payload, b"a1");
        // a2 waits for a1: the next free message is b1 (another subject).
        let second = src.next(&mut stop).await.expect("b1");
        assert_eq!(second.message.payload, b"b1");
        // Only max_in_flight = 3 messages are in memory (a1, a2, b1): c1 is not yet loaded.
        assert_eq!(q.window.lock().unwrap().entries.len(), 3);
        let no_more = tokio::time::timeout(Duration::from_millis(50), src.next(&mut stop)).await;
        assert!(no_more.is_err(), "a2 must wait for a1");
        // a1 fails: it comes back after the backoff, still before a2.
        let t = Instant::now();
        src.fail(first, "no".into()).await;
        let retry = src.next(&mut stop).await.expect("a1 again");
        assert_eq!(
            (retry.message.payload.as_slice(), retry.message.delivery),
            (&b"a1"[..], 2)
        );
        assert!(
            t.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t.elapsed()
        );
        src.ack(retry).await;
        src.ack(second).await;
        // The window refills from disk in order.
        let mut rest = Vec::new();
        for _ in 0..3 {
            let d = src.next(&mut stop).await.expect("more");
            rest.push(String::from_utf8(d.message.payload.clone()).unwrap());
            src.ack(d).await;
        }
        assert_eq!(rest, vec!["a2", "c1", "d1"]);
        let stats = b.subscriptions();
        assert_eq!(
            (stats[0].acked, stats[0].pending, stats[0].redelivered),
            (5, 0, 1)
        );
        b.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn publish_checks_subject_and_size() {
        let dir = temp("checks");
        let b = broker(&dir, "[pubsub]\nmax_message_bytes = 8\n");
        assert!(matches!(
            b.publish("o.*", Vec::new(), Vec::new()).await,
            Err(PubSubError::Invalid(_))
        ));
        assert_eq!(
            b.publish("o.a", vec![0; 9], Vec::new()).await,
            Err(PubSubError::TooLarge)
        );
        assert_eq!(
            b.publish("nobody.listens", vec![0; 8], Vec::new()).await,
            Ok(())
        );
        assert_eq!(b.subscriptions()[0].pending, 0);
        b.shutdown(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retry {
            max_deliver: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
        };
        let ms: Vec<u128> = (1..=6).map(|n| r.delay(n).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(r.delay(10_000).as_millis(), 1000);
    }
}
