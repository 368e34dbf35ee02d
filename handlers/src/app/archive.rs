//! Archiving (ADR-0024): closed runners whose stream closed before the
//! retention move from the hot log to the archive, a UTC day at a time.
//!
//! For each day: the day's closed streams are read whole, written as parts
//! of the `events` table (in position order) and of the `runners` table (one
//! row each), and each part is read back and its rows counted. Only when the
//! day's counts match the streams' versions is the day listed in the
//! archive's index (a checkpoint beside the log), and only then does the hot
//! log let the streams go. The books are closed first, and a day is archived
//! only once a snapshot holds all its events, so an audit that starts from a
//! snapshot after the archived days reads no archived event.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use jitr_domain::Timestamp;
use jitr_infra::archive::{
    ArchiveError, ArchiveObjects, ArchivedLog, EVENTS, PartKey, RUNNERS, events_batch, put_checked,
};
use jitr_infra::{
    Checkpoint, CheckpointStore, ClosedStream, EventStore, ExpiringLog, RecordedEvent, StoreError,
};
use jitr_projections::record::RunnerRecord;
use serde::{Deserialize, Serialize};

use crate::app::books::{DAY_MS, SnapshotEntry, close_books, day_name, snapshots};

/// The checkpoint that lists what was archived.
pub const INDEX: &str = "archive/index";

/// How long a closed runner stays in the hot log by default: 90 days.
pub const DEFAULT_RETENTION_MS: u64 = 90 * DAY_MS as u64;

/// The shortest retention: longer than SQS keeps a message (14 days) and
/// GitHub lets a delivery be redelivered (3 days), so that nothing can ask
/// for a stream the hot log has let go.
pub const MIN_RETENTION_MS: u64 = 15 * DAY_MS as u64;

/// Events a part holds at most (its streams are read into memory at once).
const PART_EVENTS: u64 = 250_000;

/// One archived part: the streams of one day, in both tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedPart {
    /// The UTC day its runners closed.
    pub day: String,
    /// The first and last log position of its events.
    pub first: u64,
    /// The last log position.
    pub last: u64,
    /// Runners (rows of `runners`).
    pub runners: u64,
    /// Events (rows of `events`).
    pub events: u64,
}

impl ArchivedPart {
    /// The key of its part of `table`.
    pub fn key(&self, table: &str) -> String {
        PartKey {
            table: table.to_owned(),
            day: self.day.clone(),
            first: self.first,
            last: self.last,
        }
        .key()
    }
}

/// What the archive holds, as its index lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveIndex {
    /// Where the archive is (a directory, `s3://bucket/prefix`).
    pub location: String,
    /// The parts, in the order archived.
    pub parts: Vec<ArchivedPart>,
}

impl ArchiveIndex {
    /// The first part with events after `position`: a read of the hot log
    /// from `position` misses them.
    pub fn after(&self, position: u64) -> Option<&ArchivedPart> {
        self.parts.iter().find(|p| p.last > position)
    }

    /// Events archived.
    pub fn events(&self) -> u64 {
        self.parts.iter().map(|p| p.events).sum()
    }
}

/// Why archiving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveRunError {
    /// The log failed, or refused to let streams go.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive failed, or a part read back short.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A retention shorter than [`MIN_RETENTION_MS`].
    #[error(
        "a retention of {0} days is shorter than the 15 days a message or a redelivered webhook may still name a stream"
    )]
    RetentionTooShort(u64),
    /// A stream read back holds other events than its version says.
    #[error("{stream}: {found} events read, its version is {version}; the day is not archived")]
    StreamShort {
        /// The stream.
        stream: String,
        /// Events read.
        found: u64,
        /// Its version.
        version: u64,
    },
    /// The archive lists this log under another location.
    #[error("this log's archive is {listed}, not {given}")]
    OtherLocation {
        /// Where the index says.
        listed: String,
        /// Where this run writes.
        given: String,
    },
}

/// What one run archived.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveRun {
    /// The snapshots saved first.
    pub snapshots: Vec<SnapshotEntry>,
    /// The parts written, each listed and let go by the hot log.
    pub parts: Vec<ArchivedPart>,
    /// Days left in the hot log because no snapshot holds all their events yet.
    pub deferred_days: Vec<String>,
    /// Whether the run stopped at its time limit with days left to archive
    /// (the next run goes on from there).
    pub stopped_early: bool,
}

/// The archive's index, and its generation.
pub async fn load_index<S: CheckpointStore + ?Sized>(
    store: &S,
) -> Result<(ArchiveIndex, u64), StoreError> {
    match store.load_checkpoint(INDEX).await? {
        None => Ok((ArchiveIndex::default(), 0)),
        Some(c) => {
            let index = serde_json::from_slice(&c.snapshot).map_err(|e| StoreError::Corrupt {
                stream: INDEX.to_owned(),
                position: 0,
                reason: e.to_string(),
            })?;
            Ok((index, c.generation))
        }
    }
}

/// Refuses a read of the feed from `position` when it lacks archived events
/// after it (a hot log alone, not an `ArchivedLog`): the figures would miss
/// them.
pub async fn require_whole_feed<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    position: u64,
) -> Result<(), StoreError> {
    if store.feeds_archive() {
        return Ok(());
    }
    let (index, _) = load_index(store).await?;
    match index.after(position) {
        None => Ok(()),
        Some(part) => Err(StoreError::Archived {
            day: part.day.clone(),
            position: part.first,
            location: index.location.clone(),
        }),
    }
}

/// `hot` merged with its archive in `objects`, once every part the index
/// lists is found there (else a gap would read as a log that ends early).
pub async fn archived_log<S: EventStore + CheckpointStore>(
    hot: S,
    objects: Arc<dyn ArchiveObjects>,
) -> Result<ArchivedLog<S>, StoreError> {
    let log = ArchivedLog::open(hot, objects.clone()).await?;
    let (index, _) = load_index(log.hot()).await?;
    let found: std::collections::HashSet<String> = log.parts().iter().map(PartKey::key).collect();
    if let Some(missing) = index.parts.iter().find(|p| !found.contains(&p.key(EVENTS))) {
        return Err(StoreError::Refused(format!(
            "the archive at {} lacks {}, which its index lists (the log let those events go)",
            objects.location(),
            missing.key(EVENTS)
        )));
    }
    Ok(log)
}

/// The schema of the `runners` table.
pub fn runners_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("stream", DataType::Utf8, false),
        Field::new("repository", DataType::Utf8, true),
        Field::new("pool", DataType::Utf8, false),
        Field::new("job_id", DataType::Int64, true),
        Field::new("instance_id", DataType::Utf8, true),
        Field::new("instance_type", DataType::Utf8, true),
        Field::new("market", DataType::Utf8, true),
        Field::new("vcpus", DataType::Int32, false),
        Field::new("requested_at", ts(), true),
        Field::new("launched_at", ts(), true),
        Field::new("terminated_at", ts(), true),
        Field::new("closed_at", ts(), false),
        Field::new("instance_ms", DataType::Int64, false),
        Field::new("owed_ms", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("failure_stage", DataType::Utf8, true),
        Field::new("closed_by", DataType::Utf8, true),
        Field::new("events", DataType::Int64, false),
    ]))
}

fn int64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `records` as one batch of [`runners_schema`].
pub fn runners_batch(records: &[RunnerRecord]) -> Result<RecordBatch, ArchiveError> {
    let text = |f: fn(&RunnerRecord) -> Option<&str>| -> ArrayRef {
        Arc::new(records.iter().map(f).collect::<StringArray>())
    };
    let number = |f: fn(&RunnerRecord) -> Option<u64>| -> ArrayRef {
        Arc::new(
            records
                .iter()
                .map(|r| f(r).map(int64))
                .collect::<Int64Array>(),
        )
    };
    let moment = |f: fn(&RunnerRecord) -> Option<Timestamp>| -> ArrayRef {
        Arc::new(
            records
                .iter()
                .map(|r| f(r).map(|t| t.0))
                .collect::<TimestampMillisecondArray>()
                .with_timezone("UTC"),
        )
    };
    let vcpus: Int32Array = records
        .iter()
        .map(|r| Some(i32::try_from(r.vcpus).unwrap_or(i32::MAX)))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        text(|r| Some(r.stream.as_str())),
        text(|r| r.repository.as_deref()),
        text(|r| Some(r.pool.as_str())),
        number(|r| r.job_id),
        text(|r| r.instance_id.as_deref()),
        text(|r| r.instance_type.as_deref()),
        text(|r| r.market),
        Arc::new(vcpus),
        moment(|r| r.requested_at),
        moment(|r| r.launched_at),
        moment(|r| r.terminated_at),
        moment(|r| Some(r.closed_at)),
        number(|r| Some(r.instance_ms)),
        number(|r| r.owed_ms),
        text(|r| Some(r.status)),
        text(|r| r.failure_stage),
        text(|r| r.closed_by),
        number(|r| Some(r.events)),
    ];
    Ok(RecordBatch::try_new(runners_schema(), columns)?)
}

/// Archives every day whose runners all closed `retention_ms` before `now`
/// (whole UTC days), closing the books first; starts no part after
/// `stop_after` (a Lambda's deadline); `progress` hears the events archived
/// so far.
pub async fn archive<S: ExpiringLog + CheckpointStore + ?Sized>(
    store: &S,
    objects: &dyn ArchiveObjects,
    now: Timestamp,
    retention_ms: u64,
    stop_after: Option<std::time::Instant>,
    mut progress: impl FnMut(u64),
) -> Result<ArchiveRun, ArchiveRunError> {
    if retention_ms < MIN_RETENTION_MS {
        return Err(ArchiveRunError::RetentionTooShort(
            retention_ms / DAY_MS as u64,
        ));
    }
    let mut run = ArchiveRun {
        snapshots: close_books(store, now, |_| {}).await?,
        ..ArchiveRun::default()
    };
    let held = snapshots(store).await?.last().map_or(0, |s| s.position);
    let cutoff = Timestamp((now.0.saturating_sub(int64(retention_ms))).div_euclid(DAY_MS) * DAY_MS);
    let closed = store.closed_before(cutoff).await?;
    let mut days: Vec<(String, Vec<ClosedStream>)> = Vec::new();
    for stream in closed {
        let day = day_name(stream.closed_at);
        match days.last_mut() {
            Some((d, streams)) if *d == day => streams.push(stream),
            _ => days.push((day, vec![stream])),
        }
    }
    let mut archived = 0;
    for (day, streams) in days {
        if past(stop_after) {
            run.stopped_early = true;
            break;
        }
        match archive_day(store, objects, &day, &streams, held, now, stop_after).await? {
            DayRun::Archived(parts) => {
                archived += parts.iter().map(|p| p.events).sum::<u64>();
                run.parts.extend(parts);
            }
            DayRun::Stopped(parts) => {
                run.parts.extend(parts);
                run.stopped_early = true;
                break;
            }
            DayRun::Deferred(parts) => {
                archived += parts.iter().map(|p| p.events).sum::<u64>();
                run.parts.extend(parts);
                run.deferred_days.push(day);
            }
        }
        progress(archived);
    }
    Ok(run)
}

/// Whether the time limit has passed.
fn past(stop_after: Option<std::time::Instant>) -> bool {
    stop_after.is_some_and(|t| std::time::Instant::now() >= t)
}

/// What became of one day.
enum DayRun {
    /// All its streams are archived, in these parts.
    Archived(Vec<ArchivedPart>),
    /// The time limit came first: these parts are archived, the rest waits.
    Stopped(Vec<ArchivedPart>),
    /// No snapshot holds all the events of its streams after these parts
    /// (archived already) yet: the rest waits.
    Deferred(Vec<ArchivedPart>),
}

/// Archives one day's closed streams, unless a snapshot does not hold all
/// their events yet (position `held`).
async fn archive_day<S: ExpiringLog + CheckpointStore + ?Sized>(
    store: &S,
    objects: &dyn ArchiveObjects,
    day: &str,
    streams: &[ClosedStream],
    held: u64,
    now: Timestamp,
    stop_after: Option<std::time::Instant>,
) -> Result<DayRun, ArchiveRunError> {
    let mut parts = Vec::new();
    let mut chunk: Vec<ClosedStream> = Vec::new();
    let mut chunk_events = 0;
    let mut chunks = Vec::new();
    for stream in streams {
        if !chunk.is_empty() && chunk_events + stream.version > PART_EVENTS {
            chunks.push(std::mem::take(&mut chunk));
            chunk_events = 0;
        }
        chunk_events += stream.version;
        chunk.push(stream.clone());
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    for chunk in chunks {
        if past(stop_after) {
            return Ok(DayRun::Stopped(parts));
        }
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut records = Vec::with_capacity(chunk.len());
        let lives = store.read_closed(&chunk).await?;
        for (closed, read) in chunk.iter().zip(lives) {
            if read.len() as u64 != closed.version {
                return Err(ArchiveRunError::StreamShort {
                    stream: closed.stream.to_string(),
                    found: read.len() as u64,
                    version: closed.version,
                });
            }
            if let Some(record) = RunnerRecord::of(&closed.stream, read.iter().map(|r| &r.event)) {
                records.push(record);
            }
            events.extend(read);
        }
        events.sort_by_key(|e| e.position);
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            continue;
        };
        if last.position > held {
            return Ok(DayRun::Deferred(parts));
        }
        let part = ArchivedPart {
            day: day.to_owned(),
            first: first.position,
            last: last.position,
            runners: records.len() as u64,
            events: events.len() as u64,
        };
        let written = put_checked(objects, &part.key(EVENTS), &events_batch(&events)?).await?;
        let rows = put_checked(objects, &part.key(RUNNERS), &runners_batch(&records)?).await?;
        drop(events);
        // Counted: the part holds every event of its streams' versions.
        let versions: u64 = chunk.iter().map(|c| c.version).sum();
        if written != versions || rows != part.runners {
            return Err(ArchiveError::CountMismatch {
                key: part.key(EVENTS),
                expected: versions,
                found: written,
            }
            .into());
        }
        list(store, objects, &part).await?;
        let let_go = store.expire(&chunk, now).await?;
        if let_go != versions {
            return Err(StoreError::Refused(format!(
                "{}: the hot log let {let_go} events go, {versions} were archived",
                part.key(EVENTS)
            ))
            .into());
        }
        parts.push(part);
    }
    Ok(DayRun::Archived(parts))
}

/// Lists `part` in the archive's index (before the hot log lets it go).
async fn list<S: CheckpointStore + ?Sized>(
    store: &S,
    objects: &dyn ArchiveObjects,
    part: &ArchivedPart,
) -> Result<(), ArchiveRunError> {
    let (mut index, generation) = load_index(store).await?;
    let location = objects.location();
    if index.location.is_empty() {
        index.location = location;
    } else if index.location != location {
        return Err(ArchiveRunError::OtherLocation {
            listed: index.location,
            given: location,
        });
    }
    index.parts.retain(|p| p != part);
    index.parts.push(part.clone());
    let body = serde_json::to_vec(&index).expect("the index serialises");
    store
        .save_checkpoint(
            INDEX,
            &Checkpoint {
                position: part.last,
                snapshot: body,
                generation,
            },
        )
        .await?;
    Ok(())
}
