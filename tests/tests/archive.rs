//! The archive (ADR-0024): closed runners past the retention move from the
//! hot log to Parquet parts, counted before the log lets them go; an audit of
//! archive + hot tail gives what a replay of the whole log gave, and the
//! embedded engine's report gives each archived runner's instance time and
//! orphan time as the raw events do. On AWS: S3 and DynamoDB's TTL (moto).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use jitr_aws::{DynamoEventStore, S3Archive, TTL_ATTRIBUTE};
use jitr_domain::{RunnerEvent, StreamId, Timestamp};
use jitr_handlers::app::archive::{ArchiveRunError, archive, archived_log, load_index};
use jitr_handlers::commands::archive::{hot_runners, report};
use jitr_handlers::commands::audit::{self, AuditWindow};
use jitr_handlers::commands::bench_history::synthetic_life;
use jitr_handlers::commands::cost::Prices;
use jitr_infra::archive::{ArchiveError, ArchiveObjects, ArchivedLog, LocalArchive, parquet_bytes};
use jitr_infra::{CommandId, EventStore, ExpiringLog, SqliteEventStore, StoreError};

/// 2026-03-01T00:00:00Z.
const DAY0: i64 = 1_772_323_200_000;
const DAY: i64 = 86_400_000;
const DAYS: i64 = 40;
const GRACE_MS: u64 = 60_000;

/// A runner every 25 minutes for 40 days; one more, requested on day 0,
/// whose last event comes on the last day (it closes late, so stays hot).
fn lives() -> Vec<(StreamId, Vec<RunnerEvent>)> {
    let every = 25 * 60_000;
    (0..(DAYS * DAY / every) as u64)
        .map(|n| synthetic_life(n, Timestamp(DAY0 + 60_000 + n as i64 * every)))
        .collect()
}

fn window(since: Option<Timestamp>, as_of: Timestamp) -> AuditWindow {
    AuditWindow {
        since,
        as_of,
        deadline_ms: 60_000,
        orphan_grace_ms: GRACE_MS,
    }
}

async fn write(store: &SqliteEventStore, lives: &[(StreamId, Vec<RunnerEvent>)]) {
    for (stream, events) in lives {
        store
            .append(stream, 0, events, &CommandId::new(stream.to_string()))
            .await
            .unwrap();
    }
}

fn json(report: &audit::AuditReport) -> serde_json::Value {
    serde_json::to_value(report).unwrap()
}

fn at_of(events: &[RunnerEvent], kind: &str) -> Option<i64> {
    events.iter().find(|e| e.kind() == kind).map(|e| e.at().0)
}

/// Per repository, from the raw events: instance ms (`Launched` to
/// `Terminated`) and orphan vCPU-ms (a failure after launch, or a
/// termination asked for, owes the termination from then on; past the grace
/// it is orphaned).
fn expected(lives: &[&(StreamId, Vec<RunnerEvent>)]) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, events) in lives {
        let (repository, vcpus) = match &events[0] {
            RunnerEvent::Requested { job, spec, .. } => {
                (format!("{}/{}", job.owner, job.repo), u64::from(spec.vcpus))
            }
            other => panic!("a life starts with its request: {other:?}"),
        };
        let line = out.entry(repository).or_default();
        let (Some(launched), Some(terminated)) =
            (at_of(events, "Launched"), at_of(events, "Terminated"))
        else {
            continue;
        };
        line.0 += (terminated - launched) as u64;
        let failed = at_of(events, "Failed").filter(|f| *f > launched);
        let asked = at_of(events, "TerminationRequested");
        if let Some(owed) = failed.into_iter().chain(asked).min() {
            line.1 += vcpus * ((terminated - owed) as u64).saturating_sub(GRACE_MS);
        }
    }
    out
}

/// An archive whose objects read back one row short: the count check must
/// catch it before the log lets anything go.
struct ShortReads(LocalArchive);

#[async_trait]
impl ArchiveObjects for ShortReads {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ArchiveError> {
        self.0.put(key, body).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let body = self.0.get(key).await?;
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(body)?.build()?;
        let batch = reader.next().expect("a batch")?;
        parquet_bytes(&batch.slice(0, batch.num_rows() - 1))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        self.0.list(prefix).await
    }

    fn location(&self) -> String {
        self.0.location()
    }
}

#[tokio::test]
async fn archive_and_hot_tail_audit_as_the_whole_log_did() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let lives = lives();
    // One runner closes late: its first events on day 0, its last on day 39.
    let (late_stream, late_events) = lives[7].clone();
    let late_cut = late_events.len() - 1;
    let mut written = lives.clone();
    written[7].1.truncate(late_cut);
    write(&store, &written).await;
    let end = Timestamp(DAY0 + DAYS * DAY);
    let mut late_last = late_events[late_cut].clone();
    match &mut late_last {
        RunnerEvent::Terminated { at, .. } => *at = Timestamp(end.0 - DAY + 3_600_000),
        other => panic!("a life ends with its termination: {other:?}"),
    }
    store
        .append(
            &late_stream,
            late_cut as u64,
            std::slice::from_ref(&late_last),
            &CommandId::new("late"),
        )
        .await
        .unwrap();
    let total = store.last_position().await.unwrap();
    let before = audit::audit(&store, window(None, end), None, false, |_| {})
        .await
        .unwrap();
    assert!(before.leaks.orphans > 0, "the history has orphans");
    let mid = Timestamp(DAY0 + 10 * DAY);
    let before_mid = audit::audit(&store, window(Some(mid), end), None, false, |_| {})
        .await
        .unwrap();

    // The count check: a part that reads back short stops the run, and the
    // log lets nothing go.
    let short = ShortReads(LocalArchive::new(dir.path().join("short")));
    let refused = archive(&store, &short, end, 15 * DAY as u64, None, |_| {}).await;
    assert!(
        matches!(
            refused,
            Err(ArchiveRunError::Archive(ArchiveError::CountMismatch { .. }))
        ),
        "{refused:?}"
    );
    assert_eq!(load_index(&store).await.unwrap().0.parts, vec![]);
    assert_eq!(
        json(
            &audit::audit(&store, window(None, end), None, false, |_| {})
                .await
                .unwrap()
        ),
        json(&before),
        "nothing was let go"
    );

    // Archived with a 15-day retention: days 0..24 move, the rest stays hot.
    let objects = LocalArchive::new(dir.path().join("archive"));
    let run = archive(&store, &objects, end, 15 * DAY as u64, None, |_| {})
        .await
        .unwrap();
    let cutoff = Timestamp(end.0 - 15 * DAY);
    let archived_lives: Vec<_> = lives
        .iter()
        .filter(|(s, e)| e.last().unwrap().at() < cutoff && *s != late_stream)
        .collect();
    let archived_events: u64 = archived_lives.iter().map(|(_, e)| e.len() as u64).sum();
    assert_eq!(
        run.parts.iter().map(|p| p.events).sum::<u64>(),
        archived_events
    );
    assert_eq!(
        run.parts.iter().map(|p| p.runners).sum::<u64>(),
        archived_lives.len() as u64
    );
    let days: std::collections::BTreeSet<&str> = run.parts.iter().map(|p| p.day.as_str()).collect();
    assert_eq!(days.len(), 25, "{days:?}");
    assert!(run.deferred_days.is_empty());
    let hot: u64 = store
        .read_all(0, 1_000_000)
        .await
        .unwrap()
        .len()
        .try_into()
        .unwrap();
    assert_eq!(hot + archived_events, total, "the log let the archived go");
    assert!(store.head(&late_stream).await.unwrap().is_some());
    assert_eq!(store.last_position().await.unwrap(), total);
    // A second run finds nothing more to archive.
    let again = archive(&store, &objects, end, 15 * DAY as u64, None, |_| {})
        .await
        .unwrap();
    assert!(again.parts.is_empty(), "{:?}", again.parts);

    // The hot log alone refuses a window that reaches into the archive…
    match audit::audit(&store, window(None, end), None, false, |_| {}).await {
        Err(StoreError::Archived { day, .. }) => assert_eq!(day, "2026-03-01"),
        other => panic!("{other:?}"),
    }
    // …and answers one that starts after it, from a snapshot.
    let recent = Timestamp(end.0 - 5 * DAY);
    let hot_recent = audit::audit(&store, window(Some(recent), end), None, true, |_| {})
        .await
        .unwrap();
    let mut whole_recent =
        audit::audit(&store, window(Some(recent), end), None, false, |_| {}).await;
    assert!(matches!(whole_recent, Err(StoreError::Archived { .. })));

    // Archive + hot tail: the whole replay's figures, from the first event
    // and from a snapshot inside the archived days.
    let objects: Arc<dyn ArchiveObjects> = Arc::new(objects);
    let merged = ArchivedLog::open(store.clone(), objects.clone())
        .await
        .unwrap();
    let after = audit::audit(&merged, window(None, end), None, false, |_| {})
        .await
        .unwrap();
    assert_eq!(json(&after), json(&before));
    assert_eq!(merged.archived_events(), archived_events);
    let merged = ArchivedLog::open(store.clone(), objects.clone())
        .await
        .unwrap();
    let mut after_mid = audit::audit(&merged, window(Some(mid), end), None, true, |_| {})
        .await
        .unwrap();
    assert_eq!(
        after_mid.snapshot.take().map(|s| s.day),
        Some("2026-03-10".to_owned())
    );
    assert_eq!(json(&after_mid), json(&before_mid));
    whole_recent = audit::audit(&merged, window(Some(recent), end), None, false, |_| {}).await;
    let mut hot_recent = hot_recent;
    hot_recent.snapshot = None;
    assert_eq!(json(&whole_recent.unwrap()), json(&hot_recent));

    // The engine's report over the archived runners: instance time and
    // orphan time per repository, as the raw events give them.
    let report = report(
        &dir.path().join("archive"),
        &Prices::default(),
        None,
        None,
        GRACE_MS,
        None,
    )
    .await
    .unwrap();
    let found: BTreeMap<String, (u64, u64)> = report
        .iter()
        .map(|l| (l.repository.clone(), (l.instance_ms, l.orphan_vcpu_ms)))
        .collect();
    let want = expected(&archived_lives);
    assert_eq!(found, want);
    assert!(
        want.values().map(|v| v.1).sum::<u64>() > 0,
        "orphans archived"
    );
    assert_eq!(
        report.iter().map(|l| l.runners).sum::<u64>(),
        archived_lives.len() as u64
    );

    // With the log's closed runners not archived yet: every closed runner.
    let mut whole = lives.clone();
    whole[7].1.truncate(late_cut);
    whole[7].1.push(late_last.clone());
    let closed: Vec<_> = whole
        .iter()
        .filter(|(_, e)| jitr_domain::is_terminal(&jitr_domain::fold(e)))
        .collect();
    let hot = hot_runners(&store, |_| {}).await.unwrap();
    let from_log: usize = hot.iter().map(|b| b.num_rows()).sum();
    assert_eq!(from_log + archived_lives.len(), closed.len());
    let all = jitr_handlers::commands::archive::report(
        &dir.path().join("archive"),
        &Prices::default(),
        None,
        None,
        GRACE_MS,
        Some(hot),
    )
    .await
    .unwrap();
    let found: BTreeMap<String, (u64, u64)> = all
        .iter()
        .map(|l| (l.repository.clone(), (l.instance_ms, l.orphan_vcpu_ms)))
        .collect();
    assert_eq!(found, expected(&closed));
    assert_eq!(
        all.iter().map(|l| l.runners).sum::<u64>(),
        closed.len() as u64
    );

    // An archive that lost a part its index lists is refused, not read as
    // a log that ends early.
    let part = &run.parts[run.parts.len() / 2];
    let path = dir.path().join("archive").join(part.key("events"));
    let aside = dir.path().join("aside.parquet");
    std::fs::rename(&path, &aside).unwrap();
    match archived_log(store.clone(), objects.clone()).await {
        Err(StoreError::Refused(why)) => assert!(why.contains(&part.key("events")), "{why}"),
        Ok(_) => panic!("an archive without {} was read", part.key("events")),
        Err(other) => panic!("{other:?}"),
    }
    std::fs::rename(&aside, &path).unwrap();
    assert!(archived_log(store.clone(), objects.clone()).await.is_ok());
}

/// Every item of `table` that has the TTL attribute, as `(pk, sk)`.
async fn expiring_items(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .filter_expression("attribute_exists(#t)")
            .expression_attribute_names("#t", TTL_ATTRIBUTE)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in out.items() {
            let key = |k: &str| item[k].as_s().unwrap().clone();
            found.push((key("pk"), key("sk")));
        }
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    found.sort();
    found
}

/// On AWS: the archive in S3 (moto), the hot log on DynamoDB. The count
/// check comes first; only then do the archived streams' items get their
/// TTL, and an audit through the archive gives the whole log's figures both
/// before DynamoDB deletes them and after (moto does not expire items: the
/// test deletes what TTL would, as AWS documents it).
#[tokio::test]
async fn on_s3_and_dynamodb_expiry_waits_for_the_count_and_the_audit_is_the_whole_logs() {
    let config = jitr_e2e::aws::config().await;
    let table = jitr_e2e::aws::unique("jitr-archive");
    let store = DynamoEventStore::new(&config, table.clone());
    store.create_table().await.unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let bucket = jitr_e2e::aws::unique("jitr-archive").to_lowercase();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    // moto copies its table at every transaction: a runner every 8 hours.
    let every = 8 * 3_600_000;
    let lives: Vec<_> = (0..(30 * DAY / every) as u64)
        .map(|n| synthetic_life(n, Timestamp(DAY0 + 60_000 + n as i64 * every)))
        .collect();
    for (stream, events) in &lives {
        store
            .append(stream, 0, events, &CommandId::new(stream.to_string()))
            .await
            .unwrap();
    }
    let end = Timestamp(DAY0 + 30 * DAY);
    let before = audit::audit(&store, window(None, end), None, false, |_| {})
        .await
        .unwrap();

    let scratch = tempfile::tempdir().unwrap();
    let short = ShortReads(LocalArchive::new(scratch.path()));
    let refused = archive(&store, &short, end, 15 * DAY as u64, None, |_| {}).await;
    assert!(refused.is_err(), "{refused:?}");
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    assert_eq!(
        expiring_items(&dynamo, &table).await,
        vec![],
        "nothing expires"
    );

    let objects = S3Archive::new(&config, &bucket, "history");
    let run = archive(&store, &objects, end, 15 * DAY as u64, None, |_| {})
        .await
        .unwrap();
    let cutoff = Timestamp(end.0 - 15 * DAY);
    let archived: Vec<_> = lives
        .iter()
        .filter(|(_, e)| e.last().unwrap().at() < cutoff)
        .collect();
    assert!(!archived.is_empty() && archived.len() < lives.len());
    assert_eq!(
        run.parts.iter().map(|p| p.runners).sum::<u64>(),
        archived.len() as u64
    );
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("history/events/day=")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), run.parts.len());
    // Each archived stream's events, command ids and head carry the TTL, and
    // nothing else does.
    let mut want: Vec<(String, String)> = Vec::new();
    for (stream, events) in &archived {
        want.push((stream.to_string(), "HEAD".into()));
        want.push((format!("#cmd#{stream}"), "CMD".into()));
        for seq in 1..=events.len() {
            want.push((stream.to_string(), format!("EV#{seq:012}")));
        }
    }
    want.sort();
    assert_eq!(expiring_items(&dynamo, &table).await, want);
    assert!(
        store.closed_before(end).await.unwrap().len() == lives.len() - archived.len(),
        "archived heads left the closed index"
    );

    let objects: Arc<dyn ArchiveObjects> = Arc::new(objects);
    // Before DynamoDB deletes them, the feed through the archive reads each
    // event once.
    let merged = archived_log(store.clone(), objects.clone()).await.unwrap();
    let through = audit::audit(&merged, window(None, end), None, false, |_| {})
        .await
        .unwrap();
    assert_eq!(json(&through), json(&before));
    // DynamoDB's TTL deletes the expired items.
    for (pk, sk) in &want {
        dynamo
            .delete_item()
            .table_name(&table)
            .key("pk", AttributeValue::S(pk.clone()))
            .key("sk", AttributeValue::S(sk.clone()))
            .send()
            .await
            .unwrap();
    }
    match audit::audit(&store, window(None, end), None, false, |_| {}).await {
        Err(StoreError::Archived { .. }) => {}
        other => panic!("the hot log alone is refused: {other:?}"),
    }
    let merged = archived_log(store.clone(), objects.clone()).await.unwrap();
    let after = audit::audit(&merged, window(None, end), None, false, |_| {})
        .await
        .unwrap();
    assert_eq!(json(&after), json(&before));
    assert_eq!(
        merged.archived_events(),
        archived.iter().map(|(_, e)| e.len() as u64).sum::<u64>()
    );
}
