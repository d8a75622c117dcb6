//! The `events` capability: an event-sourced store. Streams of events with
//! optimistic concurrency (expected versions), idempotent appends (by event
//! id), one global order across streams (`$all`), and subscriptions that
//! catch up from a position and then follow live appends.
//!
//! Plugins reach it through WIT; the host dispatches to an [`EventStore`].
//! The trait is async and fallible. Two backends implement it:
//! [`embedded::EmbeddedEvents`] (redb, one process) and [`nats::NatsEvents`]
//! (NATS JetStream, shared by several gateway nodes: one stream with subjects
//! `events.<stream>`, one message per append, the expected version check is
//! `Nats-Expected-Last-Subject-Sequence`, idempotency is `Nats-Msg-Id`; see
//! that module for the mapping and where it differs). Plugins and WIT do not
//! see which one runs; the behavioural tests run against both.
//!
//! Numbering: a stream's first event has version 1 (a stream that does not
//! exist is at version 0), and the first event in the store has global
//! position 1.

pub mod embedded;
pub mod fence;
pub mod nats;

use std::time::Duration;

/// Largest event (data + metadata + type + id), in bytes.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Largest append (all its events), in bytes.
pub const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;
/// Most events in one append.
pub const MAX_APPEND_EVENTS: usize = 1000;
/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME: usize = 256;
/// Longest event id or event type, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Caller-chosen unique id (e.g. a UUID); makes retried appends
    /// idempotent.
    pub id: String,
    /// The event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// Free-form metadata (e.g. correlation ids, the writer's leader term).
    pub metadata: Vec<u8>,
}

/// The condition an append puts on the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// No condition.
    Any,
    /// The stream must not exist (version 0).
    NoStream,
    /// The stream must exist (version ≥ 1).
    Exists,
    /// The stream must be exactly at this version (0: does not exist).
    Exact(u64),
}

impl Expected {
    /// Whether a stream at `version` satisfies the condition.
    pub fn allows(self, version: u64) -> bool {
        match self {
            Expected::Any => true,
            Expected::NoStream => version == 0,
            Expected::Exists => version > 0,
            Expected::Exact(v) => version == v,
        }
    }
}

/// The result of a successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append (the last event's version).
    pub version: u64,
    /// The global position of the last appended event.
    pub position: u64,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream: String,
    /// Its version in the stream (1 for the first event).
    pub version: u64,
    /// Its global position (1 for the first event of the store).
    pub position: u64,
    /// The id given at append.
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The metadata.
    pub metadata: Vec<u8>,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub recorded_ms: u64,
}

/// Read direction for [`EventStore::read_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From `from` upwards.
    Forward,
    /// From `from` downwards.
    Backward,
}

/// Which events a subscription or a `$all` read sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only streams whose name starts with this prefix.
    pub stream_prefix: Option<String>,
    /// Only these event types (empty: all).
    pub event_types: Vec<String>,
}

impl Filter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.stream_prefix
            .as_deref()
            .is_none_or(|p| event.stream.starts_with(p))
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
    }
}

/// A page of `$all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllPage {
    /// The events that passed the filter, in global order.
    pub events: Vec<RecordedEvent>,
    /// The global position to read next (one past the last position
    /// examined).
    pub next: u64,
}

/// A failed event store operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EventsError {
    /// The stream is not at the expected version.
    #[error("wrong expected version: expected {expected}, the stream is at version {actual}")]
    WrongExpectedVersion {
        /// What the append expected.
        expected: String,
        /// The stream's current version (0: it does not exist).
        actual: u64,
    },
    /// The stream was deleted; it accepts no more appends.
    #[error("stream {0} is deleted")]
    StreamDeleted(String),
    /// An event or the append is over a size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Malformed arguments (stream name, ids, an idempotency conflict).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The backend cannot serve the request right now.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// A leader-only plugin appended with a term (its fencing token) that
    /// is no longer the group's live leadership: a deposed leader's late
    /// write, refused (see [`fence`]).
    #[error("fenced: term {term} of group {group:?} is stale ({current})")]
    Fenced {
        /// The election group.
        group: String,
        /// The term the append carried.
        term: u64,
        /// What the lease backend holds now.
        current: String,
    },
}

impl Expected {
    fn describe(self) -> String {
        match self {
            Expected::Any => "any".into(),
            Expected::NoStream => "no stream".into(),
            Expected::Exists => "an existing stream".into(),
            Expected::Exact(v) => format!("version {v}"),
        }
    }
}

/// An event store backend.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Append `events` atomically to `stream` if it satisfies `expected`.
    /// Durable when it returns. Re-sending events whose ids are already
    /// stored (the same events, at the same place in the same stream, with
    /// the same expectation) returns the original result and stores nothing.
    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, EventsError>;

    /// Up to `max` events of `stream` starting at version `from` (inclusive)
    /// in `direction`. A missing stream reads as empty.
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
        direction: Direction,
    ) -> Result<Vec<RecordedEvent>, EventsError>;

    /// Up to `max` events from global position `from` (inclusive), in global
    /// order, that pass `filter` (applied by the backend). The page says
    /// where to continue, which may be past events the filter skipped.
    async fn read_all(
        &self,
        from: u64,
        max: usize,
        filter: &Filter,
    ) -> Result<AllPage, EventsError>;

    /// The stream's current version (0: it does not exist).
    async fn stream_version(&self, stream: &str) -> Result<u64, EventsError>;

    /// The global position of the last stored event (0: empty store).
    async fn head(&self) -> Result<u64, EventsError>;

    /// Wait until the head is past `position` or `timeout` passes; returns
    /// the head. Used by subscriptions to follow live appends.
    async fn wait_past(&self, position: u64, timeout: Duration) -> Result<u64, EventsError>;

    /// Delete `stream`: its events stay in `$all`, later appends fail with
    /// [`EventsError::StreamDeleted`].
    async fn delete_stream(&self, stream: &str, expected: Expected) -> Result<(), EventsError>;
}

/// Check a stream name: 1 to [`MAX_STREAM_NAME`] bytes, no control
/// characters, and not starting with `$` (reserved, e.g. `$all`).
pub fn check_stream_name(stream: &str) -> Result<(), EventsError> {
    if stream.is_empty() || stream.len() > MAX_STREAM_NAME {
        return Err(EventsError::Invalid(format!(
            "stream name must be 1 to {MAX_STREAM_NAME} bytes, got {}",
            stream.len()
        )));
    }
    if stream.starts_with('$') {
        return Err(EventsError::Invalid(format!(
            "stream name {stream:?}: names starting with `$` are reserved"
        )));
    }
    if stream.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(EventsError::Invalid(format!(
            "stream name {stream:?} contains whitespace or control characters"
        )));
    }
    Ok(())
}

/// Check an append's events: count, ids, types and sizes.
pub fn check_events(events: &[NewEvent]) -> Result<(), EventsError> {
    if events.is_empty() {
        return Err(EventsError::Invalid(
            "an append needs at least one event".into(),
        ));
    }
    if events.len() > MAX_APPEND_EVENTS {
        return Err(EventsError::TooLarge(format!(
            "{} events in one append, at most {MAX_APPEND_EVENTS}",
            events.len()
        )));
    }
    let mut total = 0usize;
    let mut seen = std::collections::HashSet::new();
    for (i, e) in events.iter().enumerate() {
        if e.id.is_empty() || e.id.len() > MAX_ID_BYTES {
            return Err(EventsError::Invalid(format!(
                "events[{i}].id must be 1 to {MAX_ID_BYTES} bytes"
            )));
        }
        if !seen.insert(e.id.as_str()) {
            return Err(EventsError::Invalid(format!(
                "events[{i}].id {:?} appears twice in one append",
                e.id
            )));
        }
        if e.event_type.is_empty() || e.event_type.len() > MAX_ID_BYTES {
            return Err(EventsError::Invalid(format!(
                "events[{i}].type must be 1 to {MAX_ID_BYTES} bytes"
            )));
        }
        let size = e.id.len() + e.event_type.len() + e.data.len() + e.metadata.len();
        if size > MAX_EVENT_BYTES {
            return Err(EventsError::TooLarge(format!(
                "events[{i}] is {size} bytes, at most {MAX_EVENT_BYTES}"
            )));
        }
        total += size;
    }
    if total > MAX_APPEND_BYTES {
        return Err(EventsError::TooLarge(format!(
            "the append is {total} bytes, at most {MAX_APPEND_BYTES}"
        )));
    }
    Ok(())
}

/// A catch-up subscription: yields every event past a position that passes
/// a filter, first the stored ones, then live appends as they happen.
pub struct Subscription<S: EventStore + ?Sized> {
    store: std::sync::Arc<S>,
    filter: Filter,
    /// Next global position to read.
    next: u64,
    buffer: std::collections::VecDeque<RecordedEvent>,
    page: usize,
}

impl<S: EventStore + ?Sized> Subscription<S> {
    /// Subscribe from global position `from` (inclusive; 1 = the beginning).
    pub fn new(store: std::sync::Arc<S>, from: u64, filter: Filter) -> Self {
        Subscription {
            store,
            filter,
            next: from.max(1),
            buffer: Default::default(),
            page: 512,
        }
    }

    /// The next global position this subscription will look at.
    pub fn cursor(&self) -> u64 {
        self.next
    }

    /// Up to `max` stored events past the cursor, without waiting for live
    /// appends (empty: caught up with the head as it was just read).
    pub async fn ready(&mut self, max: usize) -> Result<Vec<RecordedEvent>, EventsError> {
        while self.buffer.is_empty() {
            let head = self.store.head().await?;
            if head < self.next {
                break;
            }
            let page = self
                .store
                .read_all(self.next, self.page.max(max), &self.filter)
                .await?;
            // A page of skipped events still moves the cursor.
            self.next = page.next.max(self.next + 1);
            self.buffer.extend(page.events);
        }
        let n = max.min(self.buffer.len());
        Ok(self.buffer.drain(..n).collect())
    }

    /// Whether events are buffered (read but not handed out yet).
    pub fn has_buffered(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// The next event, waiting for a live append when caught up.
    pub async fn next(&mut self) -> Result<RecordedEvent, EventsError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Ok(e);
            }
            let head = self.store.head().await?;
            if head >= self.next {
                let page = self
                    .store
                    .read_all(self.next, self.page, &self.filter)
                    .await?;
                self.next = page.next.max(self.next);
                self.buffer.extend(page.events);
                continue;
            }
            self.store
                .wait_past(self.next - 1, Duration::from_secs(1))
                .await?;
        }
    }
}

#[cfg(test)]
mod tests;
