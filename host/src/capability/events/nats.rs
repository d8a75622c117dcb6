//! The NATS JetStream event store (`[backend] kind = "nats"`): the same
//! [`EventStore`] contract as the embedded store, on a JetStream stream that
//! several gateway nodes share.
//!
//! # Mapping
//!
//! - One JetStream stream (default `FICUS_EVENTS`, file storage,
//!   `replicas` copies, deletes and purges denied) with subjects
//!   `<prefix>.>` (prefix `events`).
//! - An event stream `s` is the subject `events.<token(s)>`. The token keeps
//!   ASCII letters, digits, `-` and `_` and writes every other byte as `%XX`
//!   (upper-case hex), so `.`, `*`, `>` and non-ASCII names are safe and two
//!   names never share a subject. (`$`-prefixed names and whitespace are
//!   refused earlier by [`check_stream_name`].)
//! - **One message per append** carries all its events (postcard-encoded),
//!   so a multi-event append is atomic (JetStream has no atomic multi-message
//!   publish before 2.12). The message also records the stream's version
//!   after the append and the store's head (global position of its last
//!   event): an append of `n` events at head `h` holds positions
//!   `h-n+1 ..= h`, versions likewise. Positions are therefore gapless and
//!   totally ordered exactly as in the embedded store, but they are *not*
//!   JetStream sequences (a message is one sequence, an append may be many
//!   events); reads find the message holding a position or a version by a
//!   binary search over sequences (`next_by_subj` message gets).
//! - Consistency: every append and delete is published with
//!   `Nats-Expected-Last-Subject-Sequence` (the stream's last message, so its
//!   version cannot change under the writer) **and**
//!   `Nats-Expected-Last-Sequence` (the store's last message, so the head
//!   cannot either). A conflict (JetStream error 10071) re-reads and
//!   re-checks: when the event stream moved, the append fails with
//!   [`EventsError::WrongExpectedVersion`] and the actual version; when only
//!   another stream moved, it is retried. Global ordering costs throughput:
//!   appends are serialised (one in flight per process, behind a mutex, and
//!   optimistic retries across processes). The stream's first message is a
//!   marker written at creation, because JetStream ignores an expected last
//!   sequence of 0.
//! - Reads go to the stream leader (message get API, not direct get), so a
//!   read after an acknowledged append sees it.
//! - Idempotency: the append's message carries `Nats-Msg-Id` = its first
//!   event's id. Within the stream's duplicate window (default 2 minutes,
//!   [`NatsEventsOptions::duplicate_window`]) a retried append (same first
//!   id) is not stored again: the store reads the original message and
//!   returns the original result when the append is the same (same stream,
//!   ids, types and data), [`EventsError::Invalid`] otherwise (the ids
//!   belong to another append), or a wrong-expected-version error when the
//!   retry's expectation does not fit. A retry whose expectation fails at
//!   the moment of the retry asks the duplicate window with a publish that
//!   cannot be stored (expected last sequence `u64::MAX`). **After the
//!   window** a retry is judged afresh: with an exact expected version it
//!   fails with a wrong-expected-version error (nothing duplicated), with
//!   `Any` it is stored again. Ids of an append other than the first are not
//!   indexed: an append reusing them is not detected (the embedded store
//!   detects it).
//! - `delete_stream` appends a tombstone message to the stream's subject
//!   (no events, checked like an append); its events stay in `$all`.
//! - `wait_past` polls the head, woken early by a core NATS subscription to
//!   the stream's subjects.
//! - Transient failures (no responders, timeouts, "cluster not available"
//!   during a stream-leader failover, which lasts about 5 to 10 s in a
//!   3-node cluster) are retried with backoff for [`NatsEventsOptions::retry_for`]
//!   (default 15 s), then reported as [`EventsError::Unavailable`]. A
//!   publish retried after a timeout carries the same `Nats-Msg-Id`, so an
//!   append the server stored but did not acknowledge is not duplicated.
//! - The server version is checked at connect: replicas > 1 need
//!   nats-server >= 2.10.8 (older servers can let several writers pass the
//!   same expected-sequence check in a cluster).
//! - Messages can be up to `max_payload` (1 MB by default): appends near
//!   [`super::MAX_APPEND_BYTES`] need a server `max_payload` of 8 MB, or they
//!   fail with [`EventsError::TooLarge`].

use super::{
    check_events, check_stream_name, AllPage, Appended, Direction, EventStore, EventsError,
    Expected, Filter, NewEvent, RecordedEvent,
};
use async_nats::jetstream::{self, context::PublishErrorKind, stream::RawMessageErrorKind};
use async_nats::HeaderMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default JetStream stream name.
pub const DEFAULT_STREAM: &str = "FICUS_EVENTS";
/// Default subject prefix (`events.<stream>`).
pub const DEFAULT_SUBJECT_PREFIX: &str = "events";
/// How long an append waits for JetStream's acknowledgement before it is
/// retried (within `retry_for`).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The oldest nats-server version safe with replicas > 1.
pub const MIN_REPLICATED_VERSION: (u64, u64, u64) = (2, 10, 8);

/// Subject token of the stream's first message (never produced by
/// [`subject_token`], whose `%` is always followed by two hex digits).
const GENESIS_TOKEN: &str = "%genesis";
const MSG_ID: &str = "Nats-Msg-Id";
/// How many versions back a retry looks for its append when a clustered
/// server answers "duplicate of sequence 0".
const FIND_WINDOW: u64 = 256;
const EXPECTED_LAST_SEQ: &str = "Nats-Expected-Last-Sequence";
const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";

/// Where and how the NATS backend stores events.
#[derive(Debug, Clone)]
pub struct NatsEventsOptions {
    /// Server URLs (`nats://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT + nkey seed), if the servers need one.
    pub credentials: Option<PathBuf>,
    /// JetStream stream name.
    pub stream: String,
    /// Subject prefix: stream `s` is the subject `<prefix>.<token(s)>`.
    pub subject_prefix: String,
    /// Copies of the stream (1, or 3/5 in a cluster).
    pub replicas: usize,
    /// The stream's duplicate window (idempotent retries), when it creates
    /// the stream.
    pub duplicate_window: Duration,
    /// How long an operation retries transient failures before it fails
    /// with [`EventsError::Unavailable`].
    pub retry_for: Duration,
}

impl NatsEventsOptions {
    /// Options with the defaults for `servers`.
    pub fn new(servers: Vec<String>) -> Self {
        NatsEventsOptions {
            servers,
            credentials: None,
            stream: DEFAULT_STREAM.into(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            retry_for: Duration::from_secs(15),
        }
    }
}

/// Why the NATS event store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NatsOpenError {
    /// The options are unusable.
    #[error("{0}")]
    Options(String),
    /// No connection: an unreadable credentials file, a malformed address
    /// or no server reachable.
    #[error(transparent)]
    Connect(#[from] crate::capability::nats::ConnectError),
    /// The server is too old for the options.
    #[error(
        "nats-server {version} is too old for replicas = {replicas}: replicated event streams \
         need nats-server >= 2.10.8 (older servers can let two writers pass the same expected \
         version check); upgrade the servers or use replicas = 1"
    )]
    ServerTooOld {
        /// The server's version.
        version: String,
        /// The replicas asked for.
        replicas: usize,
    },
    /// The JetStream stream could not be created or used.
    #[error("JetStream stream {stream}: {error}")]
    Stream {
        /// The stream name.
        stream: String,
        /// Why.
        error: String,
    },
}

/// The subject token of event stream `stream` (see the module docs).
pub fn subject_token(stream: &str) -> String {
    let mut out = String::with_capacity(stream.len());
    for b in stream.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parse `major.minor.patch` (anything after a `-` ignored).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Whether a nats-server of version `version` (e.g. `2.10.27`) is safe with
/// replicas > 1 (>= 2.10.8).
pub fn safe_with_replicas(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= MIN_REPLICATED_VERSION)
}

/// One stored message: an append (events), a tombstone or the marker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    stream: String,
    /// The stream's version after this message.
    version: u64,
    /// The store's head (last global position) after this message.
    head: u64,
    deleted: bool,
    recorded_ms: u64,
    events: Vec<StoredEvent>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredEvent {
    id: String,
    event_type: String,
    data: Vec<u8>,
    metadata: Vec<u8>,
}

impl Record {
    /// Its events as recorded, first position and version derived from the
    /// head and version after it.
    fn recorded(&self) -> impl Iterator<Item = RecordedEvent> + '_ {
        let n = self.events.len() as u64;
        self.events
            .iter()
            .enumerate()
            .map(move |(i, e)| RecordedEvent {
                stream: self.stream.clone(),
                version: self.version - n + 1 + i as u64,
                position: self.head - n + 1 + i as u64,
                id: e.id.clone(),
                event_type: e.event_type.clone(),
                data: e.data.clone(),
                metadata: e.metadata.clone(),
                recorded_ms: self.recorded_ms,
            })
    }
}

/// The last message of the store.
#[derive(Debug, Clone, Copy)]
struct Tail {
    seq: u64,
    head: u64,
}

/// What this process's writes know, so that an uncontended append costs one
/// round trip (the publish). Stale entries are harmless: the expected
/// sequences of the publish fail (error 10071) and the entry is re-read; a
/// refusal is only ever decided on a fresh read.
#[derive(Default)]
struct WriteCache {
    tail: Option<Tail>,
    /// Subject → (its last sequence, the stream's version, deleted).
    streams: std::collections::HashMap<String, (u64, u64, bool)>,
}

/// Most event streams [`WriteCache`] remembers.
const CACHED_STREAMS: usize = 10_000;

/// How one attempt failed.
enum Failure {
    /// Worth retrying (failover, timeout, no responders).
    Transient(String),
    /// Final.
    Fatal(EventsError),
}

impl From<EventsError> for Failure {
    fn from(e: EventsError) -> Self {
        Failure::Fatal(e)
    }
}

/// What a publish did.
enum Published {
    Stored(u64),
    Duplicate(u64),
    /// An expected sequence did not hold (error 10071).
    Conflict,
}

/// What one attempt of an append decided.
enum Step {
    Done(Appended),
    Replay(u64),
    Refused(EventsError),
    Conflict,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// JetStream error codes that mean "try again shortly".
fn transient_code(code: u64) -> bool {
    // 10006 cluster not active, 10007 not assigned, 10008 not available,
    // 10009 not leader, 10023 insufficient resources (peer catching up).
    matches!(code, 10006..=10009 | 10023)
}

/// The NATS JetStream event store.
pub struct NatsEvents {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    prefix: String,
    retry_for: Duration,
    server_version: String,
    /// Serialises this process's writes (appends are globally ordered
    /// anyway) and caches the store's last message.
    write: tokio::sync::Mutex<WriteCache>,
    /// Where the last `$all` page stopped: (next position, sequence to
    /// resume at), so that a following subscription page needs no search.
    resume: std::sync::Mutex<Option<(u64, u64)>>,
}

impl NatsEvents {
    /// Connect, check the server, and create the JetStream stream if it does
    /// not exist (an existing stream is used as it is).
    pub async fn open(options: NatsEventsOptions) -> Result<NatsEvents, NatsOpenError> {
        crate::capability::nats::check_stream_options(
            &options.servers,
            options.replicas,
            &options.stream,
        )
        .map_err(NatsOpenError::Options)?;
        let client = crate::capability::nats::connect(
            "ficus",
            &options.servers,
            options.credentials.as_deref(),
            crate::capability::nats::Initial::Required,
        )
        .await?;

        let info = client.server_info();
        let server_version = info.version;
        if info.max_payload < super::MAX_APPEND_BYTES + 64 * 1024 {
            tracing::warn!(
                "the NATS server's max_payload is {} bytes: appends larger than that fail as too \
                 large (the event store allows {} bytes; set max_payload: 8MB on the servers)",
                info.max_payload,
                super::MAX_APPEND_BYTES
            );
        }
        if options.replicas > 1 && !safe_with_replicas(&server_version) {
            return Err(NatsOpenError::ServerTooOld {
                version: server_version,
                replicas: options.replicas,
            });
        }
        let js = jetstream::new(client.clone());
        let prefix = options.subject_prefix.clone();
        let config = jetstream::stream::Config {
            name: options.stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: options.replicas,
            duplicate_window: options.duplicate_window,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            deny_delete: true,
            deny_purge: true,
            description: Some("Ficus event store (one message per append)".into()),
            ..Default::default()
        };
        let stream_err = |error: String| NatsOpenError::Stream {
            stream: options.stream.clone(),
            error,
        };
        // The JetStream meta leader may still be electing (cluster start).
        let deadline = Instant::now() + options.retry_for;
        let stream = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("creating the JetStream stream: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(stream_err(e.to_string())),
            }
        };
        // From here on, a request that gets no answer within ACK_TIMEOUT is
        // retried (appends with the same `Nats-Msg-Id`, so at most one is
        // stored): a publish in flight to a stream leader that died waits
        // for this, not for the client's 5 s request timeout.
        let mut js = js;
        js.set_timeout(ACK_TIMEOUT);
        let store = NatsEvents {
            client,
            js,
            stream,
            prefix,
            retry_for: options.retry_for,
            server_version,
            write: tokio::sync::Mutex::new(WriteCache::default()),
            resume: std::sync::Mutex::new(None),
        };
        store
            .write_genesis()
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        Ok(store)
    }

    /// The version of the server this process is connected to.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The NATS connection state (for `/admin`).
    pub fn connection_state(&self) -> String {
        self.client.connection_state().to_string()
    }

    fn subject(&self, stream: &str) -> String {
        format!("{}.{}", self.prefix, subject_token(stream))
    }

    fn all_subjects(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The stream's first message, so that every append can carry a
    /// non-zero expected last sequence.
    async fn write_genesis(&self) -> Result<(), EventsError> {
        self.retrying("initialising the stream", || async {
            if self.last_seq().await? > 0 {
                return Ok(());
            }
            let record = Record {
                stream: String::new(),
                version: 0,
                head: 0,
                deleted: false,
                recorded_ms: now_ms(),
                events: Vec::new(),
            };
            let mut headers = HeaderMap::new();
            headers.insert(EXPECTED_LAST_SUBJECT_SEQ, "0");
            headers.insert(MSG_ID, "ficus-genesis");
            let subject = format!("{}.{GENESIS_TOKEN}", self.prefix);
            // Another node may write it first: a conflict is fine.
            self.publish(subject, headers, &record).await.map(|_| ())
        })
        .await
    }

    /// Run `attempt` until it succeeds, fails for good, or transient
    /// failures have lasted `retry_for`.
    async fn retrying<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, EventsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let mut nap = Duration::from_millis(20);
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(why)) => {
                    if started.elapsed() >= self.retry_for {
                        return Err(EventsError::Unavailable(format!(
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

    fn decode(seq: u64, payload: &[u8]) -> Result<Record, Failure> {
        postcard::from_bytes(payload).map_err(|e| {
            Failure::Fatal(EventsError::Unavailable(format!(
                "JetStream message {seq} is not a ficus event record: {e}"
            )))
        })
    }

    async fn get(
        &self,
        request: jetstream::stream::RawMessageBuilder<jetstream::stream::WithHeaders>,
    ) -> Result<Option<(u64, Record)>, Failure> {
        match request.send().await {
            Ok(m) => Ok(Some((m.sequence, Self::decode(m.sequence, &m.payload)?))),
            Err(e) => match e.kind() {
                RawMessageErrorKind::NoMessageFound => Ok(None),
                RawMessageErrorKind::InvalidSubject => Err(Failure::Fatal(EventsError::Invalid(
                    format!("invalid subject: {e}"),
                ))),
                RawMessageErrorKind::JetStream(j) if !transient_code(j.error_code().0) => Err(
                    Failure::Fatal(EventsError::Unavailable(format!("reading events: {e}"))),
                ),
                _ => Err(Failure::Transient(format!("reading events: {e}"))),
            },
        }
    }

    /// The message at `seq`.
    async fn get_seq(&self, seq: u64) -> Result<Option<(u64, Record)>, Failure> {
        self.get(self.stream.raw_message_builder().sequence(seq))
            .await
    }

    /// The last message on `subject`.
    async fn last_of(&self, subject: &str) -> Result<Option<(u64, Record)>, Failure> {
        self.get(self.stream.raw_message_builder().last_by_subject(subject))
            .await
    }

    /// The first message matching `filter` at or after sequence `seq`.
    async fn next_of(&self, filter: &str, seq: u64) -> Result<Option<(u64, Record)>, Failure> {
        self.get(
            self.stream
                .raw_message_builder()
                .sequence(seq.max(1))
                .next_by_subject(filter),
        )
        .await
    }

    /// The stream's last sequence.
    async fn last_seq(&self) -> Result<u64, Failure> {
        match self.stream.get_info().await {
            Ok(info) => Ok(info.state.last_sequence),
            Err(e) => Err(Failure::Transient(format!("stream info: {e}"))),
        }
    }

    async fn tail(&self) -> Result<Tail, Failure> {
        let seq = self.last_seq().await?;
        if seq == 0 {
            return Ok(Tail { seq: 0, head: 0 });
        }
        match self.get_seq(seq).await? {
            Some((seq, r)) => Ok(Tail { seq, head: r.head }),
            None => Err(Failure::Transient(format!("message {seq} not found yet"))),
        }
    }

    /// The first message matching `filter` whose `key` is at least `target`
    /// (keys never decrease along the sequence): a binary search over
    /// sequences, O(log n) message gets.
    async fn seek(
        &self,
        filter: &str,
        target: u64,
        key: fn(&Record) -> u64,
    ) -> Result<Option<(u64, Record)>, Failure> {
        let (mut lo, mut hi) = (1u64, self.last_seq().await? + 1);
        let mut best = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.next_of(filter, mid).await? {
                Some((seq, r)) if key(&r) >= target => {
                    hi = mid;
                    best = Some((seq, r));
                }
                Some((seq, _)) => lo = seq + 1,
                None => {
                    hi = mid;
                    best = None;
                }
            }
        }
        Ok(best)
    }

    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        record: &Record,
    ) -> Result<Published, Failure> {
        let payload = postcard::to_allocvec(record)
            .map_err(|e| EventsError::Unavailable(format!("encode: {e}")))?;
        self.publish_raw(subject, headers, payload.into()).await
    }

    async fn publish_raw(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<Published, Failure> {
        let classify = |e: jetstream::context::PublishError| -> Result<Published, Failure> {
            match e.kind() {
                PublishErrorKind::WrongLastSequence => Ok(Published::Conflict),
                PublishErrorKind::MaxPayloadExceeded => Err(Failure::Fatal(EventsError::TooLarge(
                    format!("the append is larger than the NATS server's max_payload ({e})"),
                ))),
                PublishErrorKind::Other => {
                    let code = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<jetstream::Error>())
                        .map(|j| j.error_code().0);
                    match code {
                        // Message larger than the stream's max_msg_size.
                        Some(10054) => Err(Failure::Fatal(EventsError::TooLarge(e.to_string()))),
                        Some(c) if !transient_code(c) => Err(Failure::Fatal(
                            EventsError::Unavailable(format!("publish: {e}")),
                        )),
                        _ => Err(Failure::Transient(format!("publish: {e}"))),
                    }
                }
                _ => Err(Failure::Transient(format!("publish: {e}"))),
            }
        };
        let ack = match self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
        {
            Ok(ack) => ack,
            Err(e) => return classify(e),
        };
        match ack.await {
            Ok(ack) if ack.duplicate => Ok(Published::Duplicate(ack.sequence)),
            Ok(ack) => Ok(Published::Stored(ack.sequence)),
            Err(e) => classify(e),
        }
    }

    /// One attempt of an append, under the write lock.
    async fn try_append(
        &self,
        cache: &mut WriteCache,
        msg_id: &mut String,
        subject: &str,
        stream: &str,
        expected: Expected,
        events: &[NewEvent],
    ) -> Result<Step, Failure> {
        let tail = match cache.tail {
            Some(t) => t,
            None => self.tail().await?,
        };
        let cached = cache.streams.get(subject).copied();
        let (subject_seq, version, deleted) = match cached {
            Some(state) => state,
            None => self
                .last_of(subject)
                .await?
                .map_or((0, 0, false), |(seq, r)| (seq, r.version, r.deleted)),
        };
        if cached.is_some() && (deleted || !expected.allows(version)) {
            // Decide refusals on a fresh read only.
            cache.streams.remove(subject);
            return Ok(Step::Conflict);
        }
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID, msg_id.as_str());
        if deleted || !expected.allows(version) {
            // Refused, unless it is a retry of a stored append: ask the
            // duplicate window with a publish that cannot be stored.
            headers.insert(EXPECTED_LAST_SEQ, u64::MAX.to_string().as_str());
            return match self
                .publish_raw(subject.to_owned(), headers, bytes::Bytes::new())
                .await?
            {
                Published::Duplicate(0) => {
                    match self.find_append(subject, version, events).await? {
                        Some(seq) => Ok(Step::Replay(seq)),
                        None => Ok(Step::Refused(if deleted {
                            EventsError::StreamDeleted(stream.to_owned())
                        } else {
                            EventsError::WrongExpectedVersion {
                                expected: expected.describe(),
                                actual: version,
                            }
                        })),
                    }
                }
                Published::Duplicate(seq) => Ok(Step::Replay(seq)),
                Published::Conflict => Ok(Step::Refused(if deleted {
                    EventsError::StreamDeleted(stream.to_owned())
                } else {
                    EventsError::WrongExpectedVersion {
                        expected: expected.describe(),
                        actual: version,
                    }
                })),
                Published::Stored(seq) => Err(Failure::Fatal(EventsError::Unavailable(format!(
                    "the server stored a message that expected sequence u64::MAX (sequence {seq})"
                )))),
            };
        }
        let n = events.len() as u64;
        let record = Record {
            stream: stream.to_owned(),
            version: version + n,
            head: tail.head + n,
            deleted: false,
            recorded_ms: now_ms(),
            events: events
                .iter()
                .map(|e| StoredEvent {
                    id: e.id.clone(),
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                    metadata: e.metadata.clone(),
                })
                .collect(),
        };
        headers.insert(EXPECTED_LAST_SUBJECT_SEQ, subject_seq.to_string().as_str());
        headers.insert(EXPECTED_LAST_SEQ, tail.seq.to_string().as_str());
        match self.publish(subject.to_owned(), headers, &record).await {
            Ok(Published::Stored(seq)) => {
                cache.tail = Some(Tail {
                    seq,
                    head: record.head,
                });
                if cache.streams.len() >= CACHED_STREAMS {
                    cache.streams.clear();
                }
                cache
                    .streams
                    .insert(subject.to_owned(), (seq, record.version, false));
                Ok(Step::Done(Appended {
                    version: record.version,
                    position: record.head,
                }))
            }
            Ok(Published::Duplicate(0)) => {
                // Clustered servers remember a Msg-Id when they propose a
                // message, before its expected sequences are checked, and
                // answer "duplicate of sequence 0" for an id whose message
                // was refused: find the append if it was stored, else store
                // it under another Msg-Id (a later retry finds it here).
                cache.tail = None;
                cache.streams.remove(subject);
                match self.find_append(subject, version, events).await? {
                    Some(seq) => Ok(Step::Replay(seq)),
                    None => {
                        *msg_id = format!("{}#{:016x}", events[0].id, fastrand::u64(..));
                        Ok(Step::Conflict)
                    }
                }
            }
            Ok(Published::Duplicate(seq)) => Ok(Step::Replay(seq)),
            Ok(Published::Conflict) => {
                cache.tail = None;
                cache.streams.remove(subject);
                Ok(Step::Conflict)
            }
            Err(e) => {
                cache.tail = None;
                cache.streams.remove(subject);
                Err(e)
            }
        }
    }

    /// The message of `subject` holding an append whose first event is
    /// `events[0]`, among the last [`FIND_WINDOW`] versions before
    /// `version` (the stream's current version).
    async fn find_append(
        &self,
        subject: &str,
        version: u64,
        events: &[NewEvent],
    ) -> Result<Option<u64>, Failure> {
        let mut cursor = self
            .seek(subject, version.saturating_sub(FIND_WINDOW).max(1), |r| {
                r.version
            })
            .await?;
        while let Some((seq, record)) = cursor {
            if record.events.first().is_some_and(|e| e.id == events[0].id) {
                return Ok(Some(seq));
            }
            cursor = self.next_of(subject, seq + 1).await?;
        }
        Ok(None)
    }

    /// The result of an append whose first id the duplicate window knows
    /// (the message at `seq`): the original result if it is the same append.
    async fn replay(
        &self,
        seq: u64,
        stream: &str,
        expected: Expected,
        events: &[NewEvent],
    ) -> Result<Appended, EventsError> {
        let stored = self
            .retrying("reading the original append", || self.get_seq(seq))
            .await?
            .ok_or_else(|| EventsError::Unavailable(format!("message {seq} is gone")))?
            .1;
        let conflict = |i: usize, why: String| {
            Err(EventsError::Invalid(format!(
                "events[{i}].id {:?} {why}; a retried append must resend exactly the events of \
                 the original append",
                events[i].id
            )))
        };
        if stored.events.len() != events.len() {
            return conflict(
                0,
                format!(
                    "was stored as event 0 of an append of {}",
                    stored.events.len()
                ),
            );
        }
        for (i, (e, s)) in events.iter().zip(&stored.events).enumerate() {
            if e.id != s.id {
                return conflict(i, "is not the id stored at this place".into());
            }
            if stored.stream != stream || e.event_type != s.event_type || e.data != s.data {
                return conflict(
                    i,
                    format!(
                        "is stored with other content (stream {:?}, type {:?})",
                        stored.stream, s.event_type
                    ),
                );
            }
        }
        let first_version = stored.version - events.len() as u64 + 1;
        if !expected.allows(first_version - 1) {
            return Err(EventsError::WrongExpectedVersion {
                expected: expected.describe(),
                actual: self.stream_version(stream).await?,
            });
        }
        Ok(Appended {
            version: stored.version,
            position: stored.head,
        })
    }
}

#[async_trait::async_trait]
impl EventStore for NatsEvents {
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EventsError> {
        check_stream_name(stream)?;
        check_events(&events)?;
        let subject = self.subject(stream);
        let started = Instant::now();
        let mut conflicts = 0u32;
        let mut nap = Duration::from_millis(20);
        let mut msg_id = events[0].id.clone();
        let mut tail = self.write.lock().await;
        let step = loop {
            match self
                .try_append(&mut tail, &mut msg_id, &subject, stream, expected, &events)
                .await
            {
                Ok(Step::Conflict) => {
                    conflicts += 1;
                    if started.elapsed() > self.retry_for {
                        return Err(EventsError::Unavailable(format!(
                            "appending to {stream}: {conflicts} conflicting writes from other \
                             processes in {:?}",
                            self.retry_for
                        )));
                    }
                    if conflicts > 2 {
                        tokio::time::sleep(Duration::from_micros(
                            fastrand::u64(0..1000) * u64::from(conflicts.min(20)),
                        ))
                        .await;
                    }
                }
                Ok(other) => break other,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(why)) => {
                    if started.elapsed() >= self.retry_for {
                        return Err(EventsError::Unavailable(format!(
                            "appending to {stream}: {why} (retried for {:?})",
                            self.retry_for
                        )));
                    }
                    tracing::debug!("appending: {why}; retrying in {nap:?}");
                    tokio::time::sleep(nap + Duration::from_millis(fastrand::u64(0..10))).await;
                    nap = (nap * 2).min(Duration::from_millis(500));
                }
            }
        };
        drop(tail);
        match step {
            Step::Done(a) => Ok(a),
            Step::Replay(seq) => self.replay(seq, stream, expected, &events).await,
            Step::Refused(e) => Err(e),
            Step::Conflict => unreachable!("conflicts loop"),
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
        direction: Direction,
    ) -> Result<Vec<RecordedEvent>, EventsError> {
        check_stream_name(stream)?;
        let subject = self.subject(stream);
        if max == 0 {
            return Ok(Vec::new());
        }
        self.retrying("reading a stream", || async {
            // Versions wanted: [lo, hi].
            let (lo, hi) = match direction {
                Direction::Forward => (from.max(1), u64::MAX),
                Direction::Backward => {
                    let current = self.last_of(&subject).await?.map_or(0, |(_, r)| r.version);
                    let hi = from.min(current);
                    if hi == 0 {
                        return Ok(Vec::new());
                    }
                    (hi.saturating_sub(max as u64 - 1).max(1), hi)
                }
            };
            let mut out = Vec::new();
            let mut cursor = self.seek(&subject, lo, |r| r.version).await?;
            'messages: while let Some((seq, record)) = cursor {
                for e in record.recorded() {
                    if e.version > hi || out.len() >= max {
                        break 'messages;
                    }
                    if e.version >= lo {
                        out.push(e);
                    }
                }
                cursor = self.next_of(&subject, seq + 1).await?;
            }
            if direction == Direction::Backward {
                out.reverse();
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
        let from = from.max(1);
        let all = self.all_subjects();
        let scan_limit = max.saturating_mul(16).max(1024);
        self.retrying("reading $all", || async {
            let mut out = Vec::new();
            let mut next = from;
            if max == 0 {
                return Ok(AllPage { events: out, next });
            }
            let hint = *self.resume.lock().expect("resume hint");
            let mut cursor = match hint {
                Some((pos, seq)) if pos == from => self.next_of(&all, seq).await?,
                _ => self.seek(&all, from, |r| r.head).await?,
            };
            let mut scanned = 0usize;
            let mut resume_seq = None;
            while let Some((seq, record)) = cursor {
                let n = record.events.len();
                let mut taken = 0;
                for e in record.recorded() {
                    if out.len() >= max || scanned >= scan_limit {
                        break;
                    }
                    taken += 1;
                    if e.position < from {
                        continue;
                    }
                    scanned += 1;
                    next = e.position + 1;
                    if filter.matches(&e) {
                        out.push(e);
                    }
                }
                if taken < n {
                    resume_seq = Some(seq);
                    break;
                }
                resume_seq = Some(seq + 1);
                if out.len() >= max || scanned >= scan_limit {
                    break;
                }
                cursor = self.next_of(&all, seq + 1).await?;
            }
            if let Some(seq) = resume_seq {
                *self.resume.lock().expect("resume hint") = Some((next, seq));
            }
            Ok(AllPage { events: out, next })
        })
        .await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, EventsError> {
        check_stream_name(stream)?;
        let subject = self.subject(stream);
        self.retrying("reading a stream's version", || async {
            Ok(self.last_of(&subject).await?.map_or(0, |(_, r)| r.version))
        })
        .await
    }

    async fn head(&self) -> Result<u64, EventsError> {
        self.retrying("reading the head", || async { Ok(self.tail().await?.head) })
            .await
    }

    async fn wait_past(&self, position: u64, timeout: Duration) -> Result<u64, EventsError> {
        use futures_util::StreamExt;
        let deadline = Instant::now() + timeout;
        // Woken by any publish to the store's subjects; polls anyway.
        let mut wake = self.client.subscribe(self.all_subjects()).await.ok();
        loop {
            let head = self.head().await?;
            let now = Instant::now();
            if head > position || now >= deadline {
                return Ok(head);
            }
            let nap = (deadline - now).min(Duration::from_millis(250));
            match &mut wake {
                Some(sub) => {
                    let _ = tokio::time::timeout(nap, sub.next()).await;
                }
                None => tokio::time::sleep(nap).await,
            }
        }
    }

    async fn delete_stream(&self, stream: &str, expected: Expected) -> Result<(), EventsError> {
        check_stream_name(stream)?;
        let subject = self.subject(stream);
        let started = Instant::now();
        let mut cache = self.write.lock().await;
        loop {
            let cached = cache.tail;
            cache.streams.remove(&subject);
            let outcome = self
                .retrying("deleting a stream", || async {
                    let tail = match cached {
                        Some(t) => t,
                        None => self.tail().await?,
                    };
                    let (subject_seq, version, deleted) = self
                        .last_of(&subject)
                        .await?
                        .map_or((0, 0, false), |(seq, r)| (seq, r.version, r.deleted));
                    if deleted {
                        return Err(Failure::Fatal(EventsError::StreamDeleted(
                            stream.to_owned(),
                        )));
                    }
                    if !expected.allows(version) {
                        return Err(Failure::Fatal(EventsError::WrongExpectedVersion {
                            expected: expected.describe(),
                            actual: version,
                        }));
                    }
                    let record = Record {
                        stream: stream.to_owned(),
                        version,
                        head: tail.head,
                        deleted: true,
                        recorded_ms: now_ms(),
                        events: Vec::new(),
                    };
                    let mut headers = HeaderMap::new();
                    headers.insert(EXPECTED_LAST_SUBJECT_SEQ, subject_seq.to_string().as_str());
                    headers.insert(EXPECTED_LAST_SEQ, tail.seq.to_string().as_str());
                    Ok((self.publish(subject.clone(), headers, &record).await?, tail))
                })
                .await;
            match outcome {
                Ok((Published::Stored(seq), tail)) => {
                    cache.tail = Some(Tail {
                        seq,
                        head: tail.head,
                    });
                    return Ok(());
                }
                Ok((Published::Duplicate(_), _)) => return Ok(()),
                Ok((Published::Conflict, _)) => {
                    cache.tail = None;
                    if started.elapsed() > self.retry_for {
                        return Err(EventsError::Unavailable(format!(
                            "deleting {stream}: too many conflicting writes"
                        )));
                    }
                }
                Err(e) => {
                    cache.tail = None;
                    return Err(e);
                }
            }
        }
    }
}
