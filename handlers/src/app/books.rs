//! Closing the books (ADR-0023): for each UTC day that is over, a snapshot of
//! the audit's books as they stood before the first event of the next day,
//! saved beside the log (its checkpoints: a SQLite row, DynamoDB items in
//! chunks). An audit of a window starts from the last snapshot before it and
//! folds only the events after it.
//!
//! An index checkpoint lists the snapshots; each is saved before the index
//! names it, so a reader never finds an entry without its snapshot.

use jitr_domain::Timestamp;
use jitr_infra::{Checkpoint, CheckpointStore, EventStore, StoreError, UnreadableEvent};
use jitr_projections::books::{BOOKS_SCHEMA, Books, Window};
use serde::{Deserialize, Serialize};

use crate::commands::audit::{FeedItem, read_feed};
use crate::commands::report::rfc3339;

/// The checkpoint that lists the snapshots.
pub const INDEX: &str = "books/index";

/// Unreadable events a snapshot keeps (all are counted in its views).
const UNREADABLE_KEPT: usize = 100;

/// A day, in ms.
pub const DAY_MS: i64 = 86_400_000;

/// One snapshot, as the index lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    /// The UTC day it closes (`2026-12-04`); its checkpoint is `books/{day}`.
    pub day: String,
    /// The last log position folded into it.
    pub position: u64,
    /// The latest moment of any event in it (before the day's end).
    pub last_at: Timestamp,
    /// Open runners in it.
    pub open_runners: u64,
    /// Its size, in bytes.
    pub bytes: u64,
}

impl SnapshotEntry {
    /// Its checkpoint's name.
    pub fn name(&self) -> String {
        format!("books/{}", self.day)
    }
}

/// A snapshot: the books, folded counting nothing, and the first events
/// that could not be read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The books at the snapshot's position.
    pub books: Books,
    /// The first unreadable events before it.
    pub unreadable: Vec<UnreadableEvent>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    snapshots: Vec<SnapshotEntry>,
}

fn corrupt(name: &str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        stream: name.to_owned(),
        position: 0,
        reason: reason.to_string(),
    }
}

/// The UTC day `at` falls in (`2026-12-04`).
pub fn day_name(at: Timestamp) -> String {
    rfc3339(Timestamp(at.0.div_euclid(DAY_MS) * DAY_MS))[..10].to_owned()
}

/// The first moment of the UTC day after the one `at` falls in.
fn day_end(at: Timestamp) -> Timestamp {
    Timestamp((at.0.div_euclid(DAY_MS) + 1) * DAY_MS)
}

async fn load_index<S: CheckpointStore + ?Sized>(store: &S) -> Result<(Index, u64), StoreError> {
    match store.load_checkpoint(INDEX).await? {
        None => Ok((Index::default(), 0)),
        Some(c) => {
            let index = serde_json::from_slice(&c.snapshot).map_err(|e| corrupt(INDEX, e))?;
            Ok((index, c.generation))
        }
    }
}

/// Every snapshot saved, oldest first.
pub async fn snapshots<S: CheckpointStore + ?Sized>(
    store: &S,
) -> Result<Vec<SnapshotEntry>, StoreError> {
    Ok(load_index(store).await?.0.snapshots)
}

/// The snapshot `entry` names; none when it was saved by a build whose books
/// have another shape (the caller folds from an older one, or the first
/// event: slower, the same figures).
async fn load<S: CheckpointStore + ?Sized>(
    store: &S,
    entry: &SnapshotEntry,
) -> Result<Option<Snapshot>, StoreError> {
    #[derive(Deserialize)]
    struct Shape {
        books: BooksShape,
    }
    #[derive(Deserialize)]
    struct BooksShape {
        schema: u32,
    }
    let name = entry.name();
    let saved = store
        .load_checkpoint(&name)
        .await?
        .ok_or_else(|| corrupt(&name, "listed in the index but not saved"))?;
    let shape: Shape = serde_json::from_slice(&saved.snapshot).map_err(|e| corrupt(&name, e))?;
    if shape.books.schema != BOOKS_SCHEMA {
        tracing::warn!(
            snapshot = %name,
            schema = shape.books.schema,
            "a snapshot of books of another shape is not used"
        );
        return Ok(None);
    }
    serde_json::from_slice(&saved.snapshot)
        .map(Some)
        .map_err(|e| corrupt(&name, e))
}

/// The latest snapshot all of whose events happened before `before`.
pub async fn latest_before<S: CheckpointStore + ?Sized>(
    store: &S,
    before: Timestamp,
) -> Result<Option<(SnapshotEntry, Snapshot)>, StoreError> {
    for entry in snapshots(store).await?.into_iter().rev() {
        if entry.last_at >= before {
            continue;
        }
        if let Some(snapshot) = load(store, &entry).await? {
            return Ok(Some((entry, snapshot)));
        }
    }
    Ok(None)
}

/// Saves a snapshot of the books for every UTC day that is over at `now` and
/// has none yet, folding on from the latest one; returns those saved.
/// `progress` hears each page's last position. Another writer saving the
/// index at the same time makes this one fail with
/// [`StoreError::CheckpointMoved`]; what it saved is then unlisted, harmless.
pub async fn close_books<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    now: Timestamp,
    progress: impl FnMut(u64),
) -> Result<Vec<SnapshotEntry>, StoreError> {
    let (mut index, generation) = load_index(store).await?;
    // Yesterday closed already: no day after it is over.
    let today = day_name(now);
    let yesterday = day_name(Timestamp(now.0 - DAY_MS));
    if index
        .snapshots
        .last()
        .is_some_and(|e| e.day >= yesterday && e.day < today)
    {
        return Ok(Vec::new());
    }
    let latest = match index.snapshots.last() {
        Some(entry) => load(store, entry).await?,
        None => None,
    };
    let mut snapshot = latest.unwrap_or_else(|| Snapshot {
        books: Books::new(Window::none()),
        unreadable: Vec::new(),
    });
    let mut closed: Vec<(SnapshotEntry, Vec<u8>)> = Vec::new();
    let close = |snapshot: &Snapshot, closed: &mut Vec<(SnapshotEntry, Vec<u8>)>| {
        let Some((_, last_at)) = snapshot.books.covers else {
            return;
        };
        let day = day_name(last_at);
        let done = |d: &str| {
            index.snapshots.last().is_some_and(|e| e.day.as_str() >= d)
                || closed.last().is_some_and(|(e, _)| e.day.as_str() >= d)
        };
        if done(&day) {
            return;
        }
        let body = serde_json::to_vec(snapshot).expect("books serialise");
        closed.push((
            SnapshotEntry {
                day,
                position: snapshot.books.position,
                last_at,
                open_runners: snapshot.books.views.open.len() as u64,
                bytes: body.len() as u64,
            },
            body,
        ));
    };
    let from = snapshot.books.position;
    read_feed(
        store,
        from,
        |item| match item {
            FeedItem::Event(r) => {
                // The first event of a later day closes the day before it.
                if let Some((_, last_at)) = snapshot.books.covers {
                    let end = day_end(last_at);
                    if r.event.at() >= end && end <= now {
                        close(&snapshot, &mut closed);
                    }
                }
                snapshot.books.fold(r.position, &r.stream, &r.event, None);
            }
            FeedItem::Unreadable(u) => {
                if snapshot.unreadable.len() < UNREADABLE_KEPT {
                    snapshot.unreadable.push(u);
                }
            }
        },
        progress,
    )
    .await?;
    if let Some((_, last_at)) = snapshot.books.covers {
        if day_end(last_at) <= now {
            close(&snapshot, &mut closed);
        }
    }
    if closed.is_empty() {
        return Ok(Vec::new());
    }
    for (entry, body) in &closed {
        store
            .save_checkpoint(
                &entry.name(),
                &Checkpoint {
                    position: entry.position,
                    snapshot: body.clone(),
                    generation: store
                        .load_checkpoint(&entry.name())
                        .await?
                        .map_or(0, |c| c.generation),
                },
            )
            .await?;
    }
    let saved: Vec<SnapshotEntry> = closed.into_iter().map(|(e, _)| e).collect();
    index.snapshots.extend(saved.iter().cloned());
    let body = serde_json::to_vec(&index).expect("index serialises");
    let position = saved.last().map_or(0, |e| e.position);
    store
        .save_checkpoint(
            INDEX,
            &Checkpoint {
                position,
                snapshot: body,
                generation,
            },
        )
        .await?;
    Ok(saved)
}
