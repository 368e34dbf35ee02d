//! The event store port: the append contract every log adapter honours.

use std::error::Error as StdError;

use async_trait::async_trait;
use jitr_domain::{InstanceId, RunnerEvent, RunnerState, RunnerStatus, StreamId, Timestamp};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version of the serialised event form written by this build.
pub const EVENT_SCHEMA: u32 = 1;

/// Identifies one command's append, so a retried command writes nothing twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(pub String);

impl CommandId {
    /// A command id from any text (a webhook delivery id, a message id, …).
    pub fn new(id: impl Into<String>) -> Self {
        CommandId(id.into())
    }
}

/// What an accepted append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events were written; the stream is now at `version`.
    Appended {
        /// The stream's version after the append.
        version: u64,
    },
    /// The command id was seen before: nothing was written, and this is the first
    /// append's outcome.
    Duplicate {
        /// The stream the first append wrote to.
        stream: StreamId,
        /// The version the first append produced.
        version: u64,
    },
}

/// One stored event with its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The runner stream.
    pub stream: StreamId,
    /// 1-based sequence number in the stream (the stream's version after it).
    pub seq: u64,
    /// Global position across all streams: strictly increasing in commit order.
    pub position: u64,
    /// The event.
    pub event: RunnerEvent,
}

/// A stream's head: its version and what the log knows of it without a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHead {
    /// The runner stream.
    pub stream: StreamId,
    /// Number of events.
    pub version: u64,
    /// The runner's status at that version.
    pub status: RunnerStatus,
    /// The launched instance, if any.
    pub instance_id: Option<InstanceId>,
    /// Whether the stream is open (not terminal).
    pub open: bool,
    /// When its last event happened.
    pub updated_at: Timestamp,
    /// The folded state at that version.
    pub state: RunnerState,
}

/// A projection's saved progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Last global position folded in.
    pub position: u64,
    /// The projection's serialised read models at that position.
    pub snapshot: Vec<u8>,
    /// How many saves made it (0: never saved). A save names the generation it
    /// replaces, so that two writers can never interleave.
    pub generation: u64,
}

/// Who holds a lease, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holder's id.
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// A boxed backend error.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the event log did not do what was asked.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another writer got there first: reload the stream, decide again, retry.
    #[error(
        "stream {stream} is at version {actual}, not the expected {expected}: reload and decide again"
    )]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// The version the caller decided on.
        expected: u64,
        /// The version found.
        actual: u64,
    },
    /// The log itself refused the write because it breaks an invariant (e.g. a
    /// terminal head without `Terminated` while an instance may be alive).
    #[error("the event log refused the write: {0}")]
    Refused(String),
    /// `append` was called with no events.
    #[error("an append needs at least one event")]
    NothingToAppend,
    /// A stored event could not be read back.
    #[error("stored event at position {position} of stream {stream} cannot be read: {reason}")]
    Corrupt {
        /// The stream, as stored.
        stream: String,
        /// Its global position.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A stored event was written by a newer jitr (an event kind or schema this
    /// build does not know, ADR-0019): its readers stop before it, never skip
    /// it, until this build is replaced.
    #[error(
        "stored event at position {position} of stream {stream} was written by a newer jitr ({what}): upgrade this one to read past it"
    )]
    Newer {
        /// The stream, as stored.
        stream: String,
        /// Its global position.
        position: u64,
        /// What this build does not know.
        what: String,
    },
    /// Another writer saved the checkpoint since it was loaded: reload it.
    #[error(
        "checkpoint {name:?} is at generation {found}, not the expected {expected}: another writer saved it"
    )]
    CheckpointMoved {
        /// The checkpoint.
        name: String,
        /// The generation the save replaces.
        expected: u64,
        /// The generation found.
        found: u64,
    },
    /// The backend failed (I/O, locking, network).
    #[error("event log unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// A read from `position` needs events the log let go to its archive
    /// (ADR-0024): read the log merged with the archive.
    #[error(
        "the events of runners closed on {day} and later (from position {position}) were archived to {location}: read with --archive, or start the window after the archived days"
    )]
    Archived {
        /// The first archived day the read needs.
        day: String,
        /// Its first position.
        position: u64,
        /// Where the archive is.
        location: String,
    },
}

/// The runner event log.
///
/// Contract (the conformance suite in `jitr-e2e` checks every adapter against it):
/// - `append` writes all events or none. It succeeds only when the stream is at
///   `expected_version` (0 for a new stream), else [`StoreError::Conflict`].
/// - A `command_id` seen before returns [`AppendOutcome::Duplicate`] with the first
///   outcome and writes nothing, whatever the expected version.
/// - Global positions strictly increase in commit order: a reader that has seen
///   position `p` never later sees a new event below `p`.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` if it is at `expected_version`.
    async fn append(
        &self,
        stream: &StreamId,
        expected_version: u64,
        events: &[RunnerEvent],
        command_id: &CommandId,
    ) -> Result<AppendOutcome, StoreError>;

    /// Every event of one stream, in order (empty for an unknown stream).
    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events with a global position above `after`, in position order.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The head of one stream.
    async fn head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError>;

    /// The stream whose runner launched `instance`.
    async fn stream_of_instance(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<StreamId>, StoreError>;

    /// The stream whose runner registered under `runner_name` (from `TokenMinted`).
    async fn stream_of_runner(&self, runner_name: &str) -> Result<Option<StreamId>, StoreError>;

    /// Heads of all open (non-terminal) streams, without reading history. A head
    /// that cannot be read is reported in [`OpenStreams::unreadable`], never fatal:
    /// the backstops that read this list must not stall on one bad item.
    async fn open_streams(&self) -> Result<OpenStreams, StoreError>;

    /// The global position of the newest event (0 for an empty log).
    async fn last_position(&self) -> Result<u64, StoreError>;

    /// The feed after `after` as far as it is stored, gaps included: where
    /// [`Self::read_all`] stops before a position not yet visible (DynamoDB's
    /// index), this reads past it. For a reader that fills the gaps left by
    /// archived events from the archive (ADR-0024).
    async fn read_all_with_gaps(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all(after, limit).await
    }

    /// Whether the feed holds the archived events too (an `ArchivedLog`,
    /// ADR-0024); a hot log's feed lacks what was archived.
    fn feeds_archive(&self) -> bool {
        false
    }
}

/// Where projections keep their progress.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint saved under `name`.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError>;

    /// Replaces the checkpoint under `name` if it is still at
    /// `checkpoint.generation` (0: none saved), atomically: a reader sees the old
    /// checkpoint or the new one, never a mix. Returns the new generation;
    /// [`StoreError::CheckpointMoved`] when another writer saved in between.
    async fn save_checkpoint(&self, name: &str, checkpoint: &Checkpoint)
    -> Result<u64, StoreError>;

    /// Takes the lease `name` for `holder` until `now + ttl_ms` if it is free,
    /// lapsed at `now`, or already `holder`'s (a renewal). Returns the lease as it
    /// stands: another holder's when it is taken.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError>;

    /// Gives the lease up if `holder` has it (so that a restart takes it at once).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// The open streams' heads, and those that could not be read.
#[derive(Clone, Debug, Default)]
pub struct OpenStreams {
    /// The heads, in stream order.
    pub heads: Vec<StreamHead>,
    /// Open heads that could not be read: skipped, and reported here.
    pub unreadable: Vec<UnreadableHead>,
}

/// An open head that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableHead {
    /// Its key in the store (the stream id as stored).
    pub key: String,
    /// Why it could not be read.
    pub reason: String,
}

impl OpenStreams {
    /// Sorts `results` (key, head or error) into heads and unreadable heads,
    /// logging each unreadable one with its key.
    pub fn collect(
        results: impl IntoIterator<Item = (String, Result<StreamHead, StoreError>)>,
    ) -> Self {
        let mut open = OpenStreams::default();
        for (key, result) in results {
            match result {
                Ok(head) => open.heads.push(head),
                Err(e) => {
                    tracing::error!(stream = %key, error = %e, "unreadable open head skipped");
                    open.unreadable.push(UnreadableHead {
                        key,
                        reason: e.to_string(),
                    });
                }
            }
        }
        open
    }
}

/// A stored event that could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableEvent {
    /// Its global position.
    pub position: u64,
    /// Its stream, as stored.
    pub stream: String,
    /// Why it could not be read.
    pub reason: String,
}

/// One page of the global feed, with the events that could not be read set
/// aside instead of stopping the reader.
#[derive(Clone, Debug, Default)]
pub struct FeedPage {
    /// The events read, in position order.
    pub events: Vec<RecordedEvent>,
    /// Events skipped because they could not be read.
    pub unreadable: Vec<UnreadableEvent>,
    /// The last position this page covers (read or skipped); `None` at the end
    /// of the feed (or when a newer jitr's event stands first).
    pub last: Option<u64>,
    /// An event a newer jitr wrote, where the page stops: nothing past it is
    /// read until this build is replaced.
    pub newer: Option<UnreadableEvent>,
}

/// Reads a stored event's body as this build understands it (ADR-0019): a
/// newer schema or an event kind this build does not know is
/// [`StoreError::Newer`] (never skipped); anything else unreadable is
/// [`StoreError::Corrupt`]. Fields this build does not know are ignored.
pub fn decode_event(
    stream: &str,
    position: u64,
    schema: u32,
    body: &str,
) -> Result<RunnerEvent, StoreError> {
    let newer = |what: String| StoreError::Newer {
        stream: stream.to_owned(),
        position,
        what,
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        stream: stream.to_owned(),
        position,
        reason,
    };
    if schema > EVENT_SCHEMA {
        return Err(newer(format!(
            "event schema {schema}; this build reads schema {EVENT_SCHEMA}"
        )));
    }
    if schema < EVENT_SCHEMA {
        return Err(corrupt(format!(
            "event schema {schema}; this build reads schema {EVENT_SCHEMA}"
        )));
    }
    // The common case at once; what fails is parsed again to say why.
    if let Ok(event) = serde_json::from_str::<RunnerEvent>(body) {
        return Ok(event);
    }
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_value(value.clone()).map_err(|e| {
        let kind = value.get("type").and_then(|t| t.as_str());
        match kind {
            Some(kind) if e.to_string().starts_with("unknown variant") => {
                newer(format!("event kind {kind}"))
            }
            _ => corrupt(e.to_string()),
        }
    })
}

/// Reads up to `limit` events after position `after`, like
/// [`EventStore::read_all`], but an event that cannot be read is set aside (and
/// logged with its position) rather than failing the page: the events before it
/// are returned, and the next page starts after it. Readers that must never stall
/// (the projector, the audit) read the feed with this.
pub async fn read_feed_page<S: EventStore + ?Sized>(
    store: &S,
    after: u64,
    limit: usize,
) -> Result<FeedPage, StoreError> {
    let (position, stream, reason) = match store.read_all(after, limit).await {
        Ok(events) => {
            return Ok(FeedPage {
                last: events.last().map(|e| e.position),
                events,
                unreadable: Vec::new(),
                newer: None,
            });
        }
        Err(StoreError::Corrupt {
            position,
            stream,
            reason,
        }) if position > after => (position, stream, reason),
        Err(StoreError::Newer {
            position,
            stream,
            what,
        }) if position > after => {
            tracing::error!(position, stream = %stream, %what, "event of a newer jitr: reading stops before it");
            let events = events_before(store, after, position).await?;
            return Ok(FeedPage {
                last: events.last().map(|e| e.position),
                events,
                unreadable: Vec::new(),
                newer: Some(UnreadableEvent {
                    position,
                    stream,
                    reason: what,
                }),
            });
        }
        Err(e) => return Err(e),
    };
    tracing::error!(position, stream = %stream, reason = %reason, "unreadable event skipped");
    let events = events_before(store, after, position).await?;
    Ok(FeedPage {
        events,
        unreadable: vec![UnreadableEvent {
            position,
            stream,
            reason,
        }],
        last: Some(position),
        newer: None,
    })
}

/// The events after `after` and before the unreadable one at `position`, one
/// at a time (a rare path).
async fn events_before<S: EventStore + ?Sized>(
    store: &S,
    after: u64,
    position: u64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::new();
    let mut cursor = after;
    while cursor < position {
        match store.read_all(cursor, 1).await {
            Ok(mut one) => match one.pop() {
                Some(event) if event.position < position => {
                    cursor = event.position;
                    events.push(event);
                }
                _ => break,
            },
            Err(
                StoreError::Corrupt { position: p, .. } | StoreError::Newer { position: p, .. },
            ) if p == position => break,
            Err(e) => return Err(e),
        }
    }
    Ok(events)
}

/// The runner log as the application uses it: events and projection checkpoints.
pub trait RunnerLog: EventStore + CheckpointStore {}

impl<T: EventStore + CheckpointStore + ?Sized> RunnerLog for T {}

/// A closed stream, as the archiver finds it (ADR-0024).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedStream {
    /// The stream.
    pub stream: StreamId,
    /// Its version: the events it holds.
    pub version: u64,
    /// When its last event happened.
    pub closed_at: Timestamp,
}

/// A hot log whose closed streams move to the archive (ADR-0024).
#[async_trait]
pub trait ExpiringLog: EventStore {
    /// Closed streams whose last event happened before `before`, oldest first.
    async fn closed_before(&self, before: Timestamp) -> Result<Vec<ClosedStream>, StoreError>;

    /// The events of each of `streams`, in their order (in one read where
    /// the log can).
    async fn read_closed(
        &self,
        streams: &[ClosedStream],
    ) -> Result<Vec<Vec<RecordedEvent>>, StoreError> {
        let mut read = Vec::with_capacity(streams.len());
        for closed in streams {
            read.push(self.read_stream(&closed.stream).await?);
        }
        Ok(read)
    }

    /// Lets `streams` go, which the archive holds: their events, heads and
    /// command ids leave the hot log (SQLite at once; DynamoDB by TTL, after
    /// `now`). All or nothing: refused unless each stream is closed, at the
    /// version given, with that many events. Returns the events let go.
    async fn expire(&self, streams: &[ClosedStream], now: Timestamp) -> Result<u64, StoreError>;
}
