//! The event store conformance suite against the SQLite adapter, plus the
//! database-level refusal of a terminal head while an instance may be alive.

use jitr_e2e::conformance::Backing;
use jitr_e2e::event_store_conformance;
use jitr_e2e::fixtures::{at, launched, stream};
use jitr_infra::{CommandId, EventStore, SqliteEventStore, StoreError};
use tempfile::TempDir;

/// A temporary directory holding one SQLite log file.
struct SqliteBacking {
    dir: TempDir,
}

impl SqliteBacking {
    fn new() -> Self {
        SqliteBacking {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl Backing for SqliteBacking {
    type Store = SqliteEventStore;
    async fn open(&self) -> SqliteEventStore {
        SqliteEventStore::open(self.dir.path().join("events.db")).expect("open log")
    }
}

event_store_conformance!(SqliteBacking::new());

#[tokio::test]
async fn the_database_refuses_a_closed_head_with_a_live_instance() {
    let backing = SqliteBacking::new();
    let store = backing.open().await;
    let (_, events) = launched(1, at(0));
    store
        .append(&stream(1), 0, &events, &CommandId::new("c1"))
        .await
        .unwrap();
    // Bypass the domain: close the stream without a Terminated.
    let err = store
        .execute_raw("UPDATE streams SET open = 0, status = 'failed'")
        .await;
    assert!(matches!(err, Err(StoreError::Refused(_))), "{err:?}");
    let head = store.head(&stream(1)).await.unwrap().unwrap();
    assert!(head.open);
    // A terminal status on an open head is refused too.
    let err = store
        .execute_raw("UPDATE streams SET status = 'completed'")
        .await;
    assert!(matches!(err, Err(StoreError::Refused(_))), "{err:?}");
}

#[tokio::test]
async fn an_unreadable_open_head_is_reported_not_fatal() {
    let backing = SqliteBacking::new();
    let store = backing.open().await;
    for job in [1, 2] {
        let (_, events) = launched(job, at(0));
        store
            .append(&stream(job), 0, &events, &CommandId::new(format!("c{job}")))
            .await
            .unwrap();
    }
    store
        .execute_raw("UPDATE streams SET state = 'not json' WHERE stream = 'acme/widgets#1#1'")
        .await
        .unwrap();
    let open = store.open_streams().await.unwrap();
    let heads: Vec<_> = open.heads.iter().map(|h| h.stream.clone()).collect();
    assert_eq!(heads, [stream(2)]);
    assert_eq!(open.unreadable.len(), 1);
    assert_eq!(open.unreadable[0].key, "acme/widgets#1#1");
}

/// A log written before checkpoints were fenced gains the generation column
/// when a writer opens it: its checkpoint loads as generation 1 and the next
/// save replaces it.
#[tokio::test]
async fn an_older_checkpoint_table_is_migrated() {
    use jitr_infra::{Checkpoint, CheckpointStore};

    let backing = SqliteBacking::new();
    let path = backing.dir.path().join("events.db");
    {
        let store = backing.open().await;
        store.execute_raw("DROP TABLE checkpoints").await.unwrap();
        store
            .execute_raw(
                "CREATE TABLE checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL, snapshot BLOB NOT NULL) WITHOUT ROWID",
            )
            .await
            .unwrap();
        store
            .execute_raw("INSERT INTO checkpoints VALUES ('views', 5, x'7b7d')")
            .await
            .unwrap();
    }
    let store = SqliteEventStore::open(&path).unwrap();
    let loaded = store.load_checkpoint("views").await.unwrap().unwrap();
    assert_eq!((loaded.position, loaded.generation), (5, 1));
    let next = Checkpoint {
        position: 6,
        ..loaded
    };
    assert_eq!(store.save_checkpoint("views", &next).await.unwrap(), 2);
}

/// The bulk writer (ADR-0023) writes what appends write: the same feed, heads
/// and command records; a stream that exists refuses the whole batch.
#[tokio::test]
async fn the_bulk_writer_writes_what_appends_write() {
    use jitr_domain::RunnerState;
    use jitr_infra::EncodedAppend;
    let life = |job: u64| (stream(job), launched(job, at(job as i64)).1);
    let lives: Vec<_> = (1..=3).map(life).collect();
    let by_append = SqliteBacking::new();
    let appended = by_append.open().await;
    for (i, (s, events)) in lives.iter().enumerate() {
        appended
            .append(s, 0, events, &CommandId::new(format!("c{i}")))
            .await
            .unwrap();
    }
    let by_import = SqliteBacking::new();
    let imported = by_import.open().await;
    let encoded = |lives: &[(jitr_domain::StreamId, Vec<jitr_domain::RunnerEvent>)]| {
        lives
            .iter()
            .enumerate()
            .map(|(i, (s, events))| {
                EncodedAppend::new(
                    s,
                    0,
                    RunnerState::default(),
                    events,
                    &CommandId::new(format!("c{i}")),
                )
                .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let written = imported.import_new_streams(&encoded(&lives)).unwrap();
    assert_eq!(
        written,
        lives.iter().map(|(_, e)| e.len() as u64).sum::<u64>()
    );
    assert_eq!(
        imported.read_all(0, 100).await.unwrap(),
        appended.read_all(0, 100).await.unwrap()
    );
    for (s, _) in &lives {
        assert_eq!(
            imported.head(s).await.unwrap(),
            appended.head(s).await.unwrap()
        );
    }
    // The command ids were recorded: a retried append is a duplicate.
    let (s, events) = &lives[0];
    let again = imported
        .append(s, 0, events, &CommandId::new("c0"))
        .await
        .unwrap();
    assert!(
        matches!(again, jitr_infra::AppendOutcome::Duplicate { .. }),
        "{again:?}"
    );
    // A batch naming an existing stream writes nothing.
    let fresh = life(9);
    let mut batch = encoded(std::slice::from_ref(&fresh));
    batch.extend(encoded(&lives[1..2]));
    let before = imported.last_position().await.unwrap();
    let refused = imported.import_new_streams(&batch);
    assert!(
        matches!(refused, Err(StoreError::Refused(_))),
        "{refused:?}"
    );
    assert_eq!(imported.last_position().await.unwrap(), before);
    assert!(imported.head(&fresh.0).await.unwrap().is_none());
}

/// A bulk import (ADR-0023) writes without a journal: until it finishes the
/// log is refused by any `open`, a refused batch ends it for good, and a
/// finished one is the log appends would have written, indexes included.
#[tokio::test]
async fn a_bulk_import_is_finished_or_refused() {
    use jitr_domain::RunnerState;
    use jitr_infra::EncodedAppend;
    let life = |job: u64| (stream(job), launched(job, at(job as i64)).1);
    let encoded = |lives: &[(jitr_domain::StreamId, Vec<jitr_domain::RunnerEvent>)]| {
        lives
            .iter()
            .map(|(s, events)| {
                EncodedAppend::new(
                    s,
                    0,
                    RunnerState::default(),
                    events,
                    &CommandId::new(s.to_string()),
                )
                .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let unfinished = |opened: Result<SqliteEventStore, StoreError>| match opened {
        Err(StoreError::Refused(why)) => assert!(why.contains("did not finish"), "{why}"),
        Ok(_) => panic!("an unfinished import was opened"),
        Err(other) => panic!("{other:?}"),
    };
    let lives: Vec<_> = (1..=4).map(life).collect();

    let by_append = SqliteBacking::new();
    let appended = by_append.open().await;
    for (s, events) in &lives {
        appended
            .append(s, 0, events, &CommandId::new(s.to_string()))
            .await
            .unwrap();
    }
    // Only into a new log.
    assert!(matches!(
        appended.begin_import(),
        Err(StoreError::Refused(_))
    ));

    let backing = SqliteBacking::new();
    let path = backing.dir.path().join("events.db");
    let imported = backing.open().await;
    imported.begin_import().unwrap();
    imported.import_new_streams(&encoded(&lives[..2])).unwrap();
    unfinished(SqliteEventStore::open(&path));
    unfinished(SqliteEventStore::open_read_only(&path));
    imported.import_new_streams(&encoded(&lives[2..])).unwrap();
    imported.finish_import().unwrap();
    drop(imported);
    let reopened = SqliteEventStore::open_read_only(&path).unwrap();
    assert_eq!(
        reopened.read_all(0, 100).await.unwrap(),
        appended.read_all(0, 100).await.unwrap()
    );
    let instance = jitr_domain::fold(&lives[3].1)
        .instance()
        .unwrap()
        .id
        .clone();
    assert_eq!(
        reopened.stream_of_instance(&instance).await.unwrap(),
        Some(lives[3].0.clone())
    );
    let reopened = SqliteEventStore::open(&path).unwrap();
    for (s, _) in &lives {
        assert_eq!(
            reopened.head(s).await.unwrap(),
            appended.head(s).await.unwrap()
        );
    }

    // A batch the import refuses ends it: the log stays unfinished.
    let backing = SqliteBacking::new();
    let path = backing.dir.path().join("events.db");
    let failed = backing.open().await;
    failed.begin_import().unwrap();
    failed.import_new_streams(&encoded(&lives[..2])).unwrap();
    assert!(failed.import_new_streams(&encoded(&lives[1..3])).is_err());
    assert!(matches!(
        failed.import_new_streams(&encoded(&lives[3..])),
        Err(StoreError::Refused(_))
    ));
    assert!(matches!(
        failed.finish_import(),
        Err(StoreError::Refused(_))
    ));
    drop(failed);
    unfinished(SqliteEventStore::open(&path));
}
