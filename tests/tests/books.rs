//! Closing the books (ADR-0023): daily snapshots beside the log, and an audit
//! of a window that starts from the last one before it and gives what a
//! replay of the whole log gives; on SQLite and on DynamoDB (moto).

use jitr_aws::DynamoEventStore;
use jitr_domain::{RunnerEvent, StreamId, Timestamp};
use jitr_handlers::app::books::{close_books, snapshots};
use jitr_handlers::commands::audit::{self, AuditReport, AuditWindow};
use jitr_handlers::commands::bench::{failed_late, lifecycle};
use jitr_infra::{CheckpointStore, CommandId, EventStore, SqliteEventStore};

/// 2026-05-04T00:00:00Z.
const DAY0: i64 = 1_777_852_800_000;
const DAY: i64 = 86_400_000;
/// Runners' lives, and one runner's last event written late.
type History = (
    Vec<(StreamId, Vec<RunnerEvent>)>,
    (StreamId, Vec<RunnerEvent>),
);

/// Three days and 16 hours of runners, one every `every_min` minutes (one in
/// eight failed after launch and terminated late); the last event of the
/// runner that starts 26 hours in (on day 1) is written only at the end: a
/// late event.
fn history(every_min: i64) -> History {
    let mut lives = Vec::new();
    let mut late = None;
    let late_one = 25 * 60 / every_min;
    for job in 0..(3 * 24 + 15) * 60 / every_min {
        let job = job as u64;
        let start = Timestamp(DAY0 + 3_600_000 + job as i64 * every_min * 60_000);
        let (stream, mut events) = if job % 8 == 7 {
            failed_late(job, start)
        } else {
            lifecycle(job, start)
        };
        if job as i64 == late_one {
            assert_ne!(job % 8, 7, "a whole life");
            let last = events.pop().expect("a whole life");
            late = Some((stream.clone(), vec![last]));
        }
        lives.push((stream, events));
    }
    (lives, late.expect("a late runner"))
}

fn window(since: Timestamp, as_of: Timestamp) -> AuditWindow {
    AuditWindow {
        since: Some(since),
        as_of,
        deadline_ms: 60_000,
        orphan_grace_ms: 60_000,
    }
}

/// The audit from the last snapshot before `since` and from the first event
/// agree; the one from a snapshot says which.
async fn assert_same_from_snapshot<S: EventStore + CheckpointStore>(
    store: &S,
    since: Timestamp,
    as_of: Timestamp,
    snapshot_day: &str,
) -> AuditReport {
    let from_snapshot = audit::audit(store, window(since, as_of), None, true, |_| {})
        .await
        .unwrap();
    let full = audit::audit(store, window(since, as_of), None, false, |_| {})
        .await
        .unwrap();
    assert_eq!(
        from_snapshot.snapshot.as_ref().map(|s| s.day.as_str()),
        Some(snapshot_day)
    );
    assert!(full.snapshot.is_none());
    let mut a = serde_json::to_value(&from_snapshot).unwrap();
    let b = serde_json::to_value(&full).unwrap();
    a["snapshot"] = serde_json::Value::Null;
    assert_eq!(a, b, "since {since:?}");
    from_snapshot
}

/// Appends each life as one append, stream after stream.
async fn write_lives<S: EventStore>(store: &S, lives: &[(StreamId, Vec<RunnerEvent>)]) {
    for (stream, events) in lives {
        store
            .append(stream, 0, events, &CommandId::new(stream.to_string()))
            .await
            .unwrap();
    }
}

/// Closes the books day by day and audits windows from their snapshots;
/// the late runner's termination is still owed.
async fn closes_and_audits<S: EventStore + CheckpointStore>(store: &S) {
    let end = Timestamp(DAY0 + 4 * DAY + 3_600_000);
    // Nothing is closed while its day is not over.
    let saved = close_books(store, Timestamp(DAY0 + 3_600_000), |_| {})
        .await
        .unwrap();
    assert!(saved.is_empty(), "{saved:?}");
    let saved = close_books(store, end, |_| {}).await.unwrap();
    let days: Vec<&str> = saved.iter().map(|e| e.day.as_str()).collect();
    assert_eq!(
        days,
        ["2026-05-04", "2026-05-05", "2026-05-06", "2026-05-07"]
    );
    for (n, e) in saved.iter().enumerate() {
        assert!(e.last_at.0 < DAY0 + (n as i64 + 1) * DAY, "{e:?}");
        assert!(e.bytes > 0);
    }
    // Closing again saves nothing more.
    assert!(close_books(store, end, |_| {}).await.unwrap().is_empty());
    assert_eq!(snapshots(store).await.unwrap(), saved);

    for (since, day) in [
        (Timestamp(DAY0 + DAY), "2026-05-04"),
        (Timestamp(DAY0 + 2 * DAY), "2026-05-05"),
        (Timestamp(DAY0 + 2 * DAY + 7 * 3_600_000), "2026-05-05"),
        (Timestamp(DAY0 + 3 * DAY), "2026-05-06"),
    ] {
        let report = assert_same_from_snapshot(store, since, end, day).await;
        assert!(report.jobs.jobs > 0 || since.0 >= DAY0 + 3 * DAY);
        assert_eq!(report.owed_past_deadline, 1);
    }
}

#[tokio::test]
async fn an_audit_from_the_last_snapshot_is_the_whole_replays_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let (lives, (late_stream, late)) = history(10);
    write_lives(&store, &lives).await;
    // Day 1's late runner is still owed its termination: the audits say so.
    closes_and_audits(&store).await;
    // Its `Terminated` comes late, after every snapshot: the window's fold
    // reads it, and both audits agree again.
    let version = lives[150].1.len() as u64;
    assert_eq!(lives[150].0, late_stream);
    store
        .append(&late_stream, version, &late, &CommandId::new("late"))
        .await
        .unwrap();
    let end = Timestamp(DAY0 + 4 * DAY + 3_600_000);
    let report =
        assert_same_from_snapshot(&store, Timestamp(DAY0 + 2 * DAY), end, "2026-05-05").await;
    assert_eq!(report.owed_past_deadline, 0);
    assert!(report.leaks.compensation_latency_ms.count > 0);
}

#[tokio::test]
async fn an_audit_from_the_last_snapshot_is_the_whole_replays_on_dynamodb() {
    let config = jitr_e2e::aws::config().await;
    let store = DynamoEventStore::new(&config, jitr_e2e::aws::unique("jitr-books"));
    store.create_table().await.unwrap();
    // moto copies its table at every transaction: fewer runners.
    let (lives, _) = history(60);
    // Stream by stream: the feed's order is not the moments' order.
    write_lives(&store, &lives).await;
    closes_and_audits(&store).await;
}
