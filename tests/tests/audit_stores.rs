//! The audit gives the same report over DynamoDB (on moto) and over SQLite for
//! the same events.

use std::collections::BTreeMap;

use jitr_aws::DynamoEventStore;
use jitr_domain::{RunnerEvent, StreamId, Timestamp};
use jitr_handlers::commands::audit::{self, AuditWindow};
use jitr_handlers::commands::simulate::{Scenario, run};
use jitr_infra::{CommandId, EventStore, SqliteEventStore};

#[tokio::test]
async fn the_same_events_give_the_same_audit_on_dynamodb_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let simulated = run(dir.path(), Scenario::SeedIncident, 2, true)
        .await
        .unwrap();
    let sqlite = SqliteEventStore::open(dir.path().join("events.db")).unwrap();

    // Copy the log into a fresh DynamoDB table, stream by stream.
    let config = jitr_e2e::aws::config().await;
    let dynamo = DynamoEventStore::new(&config, jitr_e2e::aws::unique("jitr-audit"));
    dynamo.create_table().await.unwrap();
    let mut streams: BTreeMap<StreamId, Vec<RunnerEvent>> = BTreeMap::new();
    for r in sqlite.read_all(0, 1_000_000).await.unwrap() {
        streams.entry(r.stream).or_default().push(r.event);
    }
    for (stream, events) in &streams {
        for (i, chunk) in events.chunks(90).enumerate() {
            dynamo
                .append(
                    stream,
                    (i * 90) as u64,
                    chunk,
                    &CommandId::new(format!("copy:{stream}:{i}")),
                )
                .await
                .unwrap();
        }
    }

    let end = Timestamp(1_777_868_520_000 + simulated.simulated_ms as i64);
    for as_of in [Timestamp(end.0 - 600_000), end] {
        let window = AuditWindow {
            since: None,
            as_of,
            deadline_ms: 60_000,
            orphan_grace_ms: 60_000,
        };
        let on_sqlite = audit::audit(&sqlite, window, Some(as_of), false, |_| {})
            .await
            .unwrap();
        let on_dynamo = audit::audit(&dynamo, window, Some(as_of), false, |_| {})
            .await
            .unwrap();
        assert!(on_sqlite.events > 100);
        assert_eq!(
            serde_json::to_value(&on_sqlite).unwrap(),
            serde_json::to_value(&on_dynamo).unwrap()
        );
    }
}
