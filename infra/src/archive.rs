//! The archive (ADR-0024): closed runners' events, and one row per closed
//! runner, as Parquet files partitioned by the UTC day the runner closed
//! (`events/day=2026-03-01/part-….parquet`, `runners/day=…/…`). A directory on
//! the embedded default, an S3 bucket on AWS; both behind [`ArchiveObjects`].
//!
//! A part's key names the first and last log position it holds, so a reader
//! merges parts with the hot log in position order ([`ArchivedLog`]) without
//! opening a part before the feed reaches it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use bytes::Bytes;
use jitr_domain::{InstanceId, RunnerEvent, StreamId, Timestamp};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::ports::{
    AppendOutcome, Checkpoint, CheckpointStore, CommandId, EVENT_SCHEMA, EventStore, Lease,
    OpenStreams, RecordedEvent, StoreError, StreamHead, decode_event,
};

/// The table of archived events.
pub const EVENTS: &str = "events";
/// The table of closed runners, one row each.
pub const RUNNERS: &str = "runners";

/// Rows decoded at a time from a part while merging.
const READ_BATCH_ROWS: usize = 4096;

/// What went wrong archiving or reading the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The storage under the archive failed.
    #[error("archive storage: {0}")]
    Storage(String),
    /// A part could not be written or read as Parquet.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A batch could not be built.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A part read back does not hold what was written.
    #[error("{key}: holds {found} rows, {expected} were written")]
    CountMismatch {
        /// The part.
        key: String,
        /// Rows written.
        expected: u64,
        /// Rows read back.
        found: u64,
    },
    /// A part's rows are not what the archive writes.
    #[error("{key}: {reason}")]
    Malformed {
        /// The part.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl From<ArchiveError> for StoreError {
    fn from(e: ArchiveError) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// Where the archive's objects are kept.
#[async_trait]
pub trait ArchiveObjects: Send + Sync {
    /// Stores `body` at `key`, whole or not at all.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError>;
    /// The object at `key`.
    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError>;
    /// Every key under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError>;
    /// Where this is, for messages (`/var/lib/jitr/archive`, `s3://…`).
    fn location(&self) -> String;
}

/// An archive in a local directory.
#[derive(Clone, Debug)]
pub struct LocalArchive {
    root: PathBuf,
}

impl LocalArchive {
    /// The archive under `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalArchive { root: root.into() }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> ArchiveError {
    ArchiveError::Storage(format!("{what} {}: {e}", path.display()))
}

#[async_trait]
impl ArchiveObjects for LocalArchive {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError> {
        let path = self.root.join(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| storage("creating", &dir, e))?;
        // Written beside, synced, then renamed: a reader sees all or nothing.
        let staging = dir.join(format!(
            ".{}.partial",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("part")
        ));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&staging)?;
            file.write_all(&body)?;
            file.sync_all()?;
            std::fs::rename(&staging, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| storage("writing", &path, e))
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let path = self.root.join(key);
        std::fs::read(&path)
            .map(Bytes::from)
            .map_err(|e| storage("reading", &path, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let path = entry?.path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                if hidden {
                    continue;
                }
                if path.is_dir() {
                    walk(root, &path, out)?;
                } else if let Ok(relative) = path.strip_prefix(root) {
                    out.push(relative.to_string_lossy().replace('\\', "/"));
                }
            }
            Ok(())
        }
        let mut keys = Vec::new();
        walk(&self.root, &self.root.join(prefix), &mut keys)
            .map_err(|e| storage("listing", &self.root.join(prefix), e))?;
        keys.retain(|k| k.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

/// A part of one table of one day, named by the first and last position of
/// the events it was cut from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartKey {
    /// [`EVENTS`] or [`RUNNERS`].
    pub table: String,
    /// The UTC day its runners closed (`2026-03-01`).
    pub day: String,
    /// The first position.
    pub first: u64,
    /// The last position.
    pub last: u64,
}

impl PartKey {
    /// Its object key.
    pub fn key(&self) -> String {
        format!(
            "{}/day={}/part-{:020}-{:020}.parquet",
            self.table, self.day, self.first, self.last
        )
    }

    /// The part an object key names, if it names one.
    pub fn parse(key: &str) -> Option<PartKey> {
        let (table, rest) = key.split_once("/day=")?;
        let (day, file) = rest.split_once("/part-")?;
        let (first, last) = file.strip_suffix(".parquet")?.split_once('-')?;
        Some(PartKey {
            table: table.to_owned(),
            day: day.to_owned(),
            first: first.parse().ok()?,
            last: last.parse().ok()?,
        })
    }
}

/// Every part of `table`, by first position.
pub async fn parts(
    objects: &dyn ArchiveObjects,
    table: &str,
) -> Result<Vec<PartKey>, ArchiveError> {
    let mut parts: Vec<PartKey> = objects
        .list(&format!("{table}/"))
        .await?
        .iter()
        .filter_map(|k| PartKey::parse(k))
        .filter(|p| p.table == table)
        .collect();
    parts.sort_by_key(|p| (p.first, p.last));
    Ok(parts)
}

/// The schema of [`EVENTS`]: the log's rows as written, the event as its JSON.
pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("position", DataType::Int64, false),
        Field::new("stream", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("schema", DataType::Int32, false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("body", DataType::Utf8, false),
    ]))
}

fn int64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `events` (in position order) as one batch of [`events_schema`].
pub fn events_batch(events: &[RecordedEvent]) -> Result<RecordBatch, ArchiveError> {
    let mut position = Int64Builder::with_capacity(events.len());
    let mut stream = StringBuilder::new();
    let mut seq = Int64Builder::with_capacity(events.len());
    let mut kind = StringBuilder::new();
    let mut schema = Int32Builder::with_capacity(events.len());
    let mut at = TimestampMillisecondBuilder::with_capacity(events.len()).with_timezone("UTC");
    let mut body = StringBuilder::new();
    for e in events {
        position.append_value(int64(e.position));
        stream.append_value(e.stream.as_str());
        seq.append_value(int64(e.seq));
        kind.append_value(e.event.kind());
        schema.append_value(EVENT_SCHEMA as i32);
        at.append_value(e.event.at().0);
        body.append_value(serde_json::to_string(&e.event).map_err(|e| {
            ArchiveError::Malformed {
                key: "events".into(),
                reason: e.to_string(),
            }
        })?);
    }
    Ok(RecordBatch::try_new(
        events_schema(),
        vec![
            Arc::new(position.finish()),
            Arc::new(stream.finish()),
            Arc::new(seq.finish()),
            Arc::new(kind.finish()),
            Arc::new(schema.finish()),
            Arc::new(at.finish()),
            Arc::new(body.finish()),
        ],
    )?)
}

/// `batch` as one Parquet file (zstd, row groups of 128 Ki rows).
pub fn parquet_bytes(batch: &RecordBatch) -> Result<Bytes, ArchiveError> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_size(128 * 1024)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

/// The rows a Parquet file holds, from its footer.
pub fn parquet_rows(body: Bytes) -> Result<u64, ArchiveError> {
    let reader = SerializedFileReader::new(body)?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Writes `batch` at `key` and reads it back: the part holds every row or
/// the write is an error.
pub async fn put_checked(
    objects: &dyn ArchiveObjects,
    key: &str,
    batch: &RecordBatch,
) -> Result<u64, ArchiveError> {
    objects.put(key, parquet_bytes(batch)?).await?;
    let found = parquet_rows(objects.get(key).await?)?;
    let expected = batch.num_rows() as u64;
    if found != expected {
        return Err(ArchiveError::CountMismatch {
            key: key.to_owned(),
            expected,
            found,
        });
    }
    Ok(found)
}

/// An archived event row, not yet decoded.
struct ArchivedRow {
    position: u64,
    stream: String,
    seq: u64,
    schema: u32,
    body: String,
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    key: &str,
    name: &str,
) -> Result<&'a T, ArchiveError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArchiveError::Malformed {
            key: key.to_owned(),
            reason: format!("no column {name} of the archive's type"),
        })
}

/// One part being read, its rows after the cursor's start.
struct OpenPart {
    key: String,
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    rows: VecDeque<ArchivedRow>,
    after: u64,
}

impl OpenPart {
    /// The next row, reading a batch when the last is used up.
    fn peek(&mut self) -> Result<Option<u64>, ArchiveError> {
        while self.rows.is_empty() {
            let Some(batch) = self.batches.next() else {
                return Ok(None);
            };
            let batch = batch?;
            let key = self.key.as_str();
            let position = column::<Int64Array>(&batch, key, "position")?;
            let stream = column::<StringArray>(&batch, key, "stream")?;
            let seq = column::<Int64Array>(&batch, key, "seq")?;
            let schema = column::<Int32Array>(&batch, key, "schema")?;
            let body = column::<StringArray>(&batch, key, "body")?;
            for i in 0..batch.num_rows() {
                let p = position.value(i).max(0) as u64;
                if p <= self.after {
                    continue;
                }
                self.rows.push_back(ArchivedRow {
                    position: p,
                    stream: stream.value(i).to_owned(),
                    seq: seq.value(i).max(0) as u64,
                    schema: schema.value(i).max(0) as u32,
                    body: body.value(i).to_owned(),
                });
            }
        }
        Ok(self.rows.front().map(|r| r.position))
    }
}

/// The archive's events after a position, in position order: parts are
/// opened as the feed reaches their first position and merged.
struct ArchiveCursor {
    /// The last position handed out.
    after: u64,
    pending: VecDeque<PartKey>,
    open: Vec<OpenPart>,
}

impl ArchiveCursor {
    fn new(parts: &[PartKey], after: u64) -> Self {
        ArchiveCursor {
            after,
            pending: parts.iter().filter(|p| p.last > after).cloned().collect(),
            open: Vec::new(),
        }
    }

    async fn open_next(&mut self, objects: &dyn ArchiveObjects) -> Result<(), ArchiveError> {
        if let Some(part) = self.pending.pop_front() {
            let key = part.key();
            let body = objects.get(&key).await?;
            let batches = ParquetRecordBatchReaderBuilder::try_new(body)?
                .with_batch_size(READ_BATCH_ROWS)
                .build()?;
            self.open.push(OpenPart {
                key,
                batches,
                rows: VecDeque::new(),
                after: self.after,
            });
        }
        Ok(())
    }

    /// The position of the next row, without taking it.
    async fn peek(&mut self, objects: &dyn ArchiveObjects) -> Result<Option<u64>, ArchiveError> {
        loop {
            let mut smallest: Option<u64> = None;
            let mut i = 0;
            while i < self.open.len() {
                match self.open[i].peek()? {
                    Some(p) => {
                        smallest = Some(smallest.map_or(p, |s| s.min(p)));
                        i += 1;
                    }
                    None => {
                        self.open.swap_remove(i);
                    }
                }
            }
            // A part not yet open may hold an earlier row than any open one.
            match (self.pending.front(), smallest) {
                (Some(next), Some(s)) if next.first <= s => self.open_next(objects).await?,
                (Some(_), None) => self.open_next(objects).await?,
                _ => return Ok(smallest),
            }
        }
    }

    /// Takes the row at `position` (which [`Self::peek`] gave).
    fn take(&mut self, position: u64) -> Option<ArchivedRow> {
        let part = self
            .open
            .iter_mut()
            .find(|p| p.rows.front().is_some_and(|r| r.position == position))?;
        let row = part.rows.pop_front();
        self.after = position;
        row
    }
}

/// A hot log read together with its archive: the feed merges both in
/// position order (an event in both, whose hot copy awaits expiry, is read
/// once); everything else is the hot log's.
pub struct ArchivedLog<S> {
    hot: S,
    /// None: the hot log alone.
    objects: Option<Arc<dyn ArchiveObjects>>,
    parts: Vec<PartKey>,
    cursor: tokio::sync::Mutex<Option<ArchiveCursor>>,
    archived_events: AtomicU64,
}

impl<S: EventStore> ArchivedLog<S> {
    /// `hot` merged with the archive in `objects`.
    pub async fn open(hot: S, objects: Arc<dyn ArchiveObjects>) -> Result<Self, ArchiveError> {
        let parts = parts(objects.as_ref(), EVENTS).await?;
        Ok(ArchivedLog {
            hot,
            objects: Some(objects),
            parts,
            cursor: tokio::sync::Mutex::new(None),
            archived_events: AtomicU64::new(0),
        })
    }

    /// `hot` alone, as the same type: its feed lacks what was archived.
    pub fn hot_only(hot: S) -> Self {
        ArchivedLog {
            hot,
            objects: None,
            parts: Vec::new(),
            cursor: tokio::sync::Mutex::new(None),
            archived_events: AtomicU64::new(0),
        }
    }

    /// The parts of the archive's events.
    pub fn parts(&self) -> &[PartKey] {
        &self.parts
    }

    /// The hot log.
    pub fn hot(&self) -> &S {
        &self.hot
    }

    /// Events read from the archive so far (not from the hot log).
    pub fn archived_events(&self) -> u64 {
        self.archived_events.load(Ordering::Relaxed)
    }
}

fn decoded(row: ArchivedRow) -> Result<RecordedEvent, StoreError> {
    let event = decode_event(&row.stream, row.position, row.schema, &row.body)?;
    let stream = StreamId::parse(&row.stream).map_err(|e| StoreError::Corrupt {
        stream: row.stream.clone(),
        position: row.position,
        reason: e.to_string(),
    })?;
    Ok(RecordedEvent {
        stream,
        seq: row.seq,
        position: row.position,
        event,
    })
}

#[async_trait]
impl<S: EventStore> EventStore for ArchivedLog<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected_version: u64,
        events: &[RunnerEvent],
        command_id: &CommandId,
    ) -> Result<AppendOutcome, StoreError> {
        self.hot
            .append(stream, expected_version, events, command_id)
            .await
    }

    async fn read_stream(&self, stream: &StreamId) -> Result<Vec<RecordedEvent>, StoreError> {
        self.hot.read_stream(stream).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let Some(objects) = self.objects.as_deref() else {
            return self.hot.read_all(after, limit).await;
        };
        // Gaps in the hot log are archived events, or (DynamoDB) events not
        // yet visible: the merge fills the first and stops before the second.
        let hot = self.hot.read_all_with_gaps(after, limit).await?;
        // A full hot page ends where the next one starts: archived rows past
        // it wait for that page.
        let bound = if hot.len() >= limit {
            hot.last().map_or(u64::MAX, |e| e.position)
        } else {
            u64::MAX
        };
        let mut guard = self.cursor.lock().await;
        let cursor = match guard.take() {
            Some(c) if c.after == after => guard.insert(c),
            _ => guard.insert(ArchiveCursor::new(&self.parts, after)),
        };
        let mut out = Vec::with_capacity(limit.min(10_000));
        let mut hot = hot.into_iter().peekable();
        while out.len() < limit {
            let archived = match cursor.peek(objects).await {
                Ok(p) => p.filter(|p| *p <= bound),
                Err(e) => {
                    *guard = None;
                    return Err(e.into());
                }
            };
            let next_hot = hot.peek().map(|e| e.position);
            let event = match (archived, next_hot) {
                (Some(a), Some(h)) if h <= a => {
                    if a == h {
                        cursor.take(a);
                    }
                    hot.next()
                }
                (Some(a), _) => match cursor.take(a).map(decoded) {
                    Some(Ok(event)) => {
                        self.archived_events.fetch_add(1, Ordering::Relaxed);
                        Some(event)
                    }
                    Some(Err(e)) => {
                        *guard = None;
                        return Err(e);
                    }
                    None => None,
                },
                (None, Some(_)) => hot.next(),
                (None, None) => None,
            };
            let Some(event) = event else { break };
            if event.position != after + 1 + out.len() as u64 {
                // Neither the hot log nor the archive has the position before
                // it yet: read again from here later.
                *guard = None;
                break;
            }
            cursor.after = event.position;
            out.push(event);
        }
        Ok(out)
    }

    async fn head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        self.hot.head(stream).await
    }

    async fn stream_of_instance(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<StreamId>, StoreError> {
        self.hot.stream_of_instance(instance).await
    }

    async fn stream_of_runner(&self, runner_name: &str) -> Result<Option<StreamId>, StoreError> {
        self.hot.stream_of_runner(runner_name).await
    }

    async fn open_streams(&self) -> Result<OpenStreams, StoreError> {
        self.hot.open_streams().await
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        let archived = self.parts.iter().map(|p| p.last).max().unwrap_or(0);
        Ok(self.hot.last_position().await?.max(archived))
    }

    fn feeds_archive(&self) -> bool {
        self.objects.is_some()
    }
}

#[async_trait]
impl<S: EventStore + CheckpointStore> CheckpointStore for ArchivedLog<S> {
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.hot.load_checkpoint(name).await
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        checkpoint: &Checkpoint,
    ) -> Result<u64, StoreError> {
        self.hot.save_checkpoint(name, checkpoint).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        self.hot.acquire_lease(name, holder, now, ttl_ms).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.hot.release_lease(name, holder).await
    }
}
