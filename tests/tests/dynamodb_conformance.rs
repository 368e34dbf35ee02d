//! The event store conformance suite against the DynamoDB adapter on moto, with a
//! forced page size of 2 so every read crosses pages; plus the database-level
//! refusal of a closed head whose instance may be alive.

use aws_sdk_dynamodb::types::AttributeValue;
use jitr_aws::{DynamoEventStore, HeadWrite, SdkConfig, TableSetup};
use jitr_e2e::conformance::Backing;
use jitr_e2e::event_store_conformance;
use jitr_e2e::fixtures::{at, launched, stream};
use jitr_infra::{CommandId, EventStore, StoreError};

/// A fresh table on the emulator.
struct DynamoBacking {
    config: SdkConfig,
    table: String,
}

impl DynamoBacking {
    async fn new() -> Self {
        let config = jitr_e2e::aws::config().await;
        let table = jitr_e2e::aws::unique("jitr-events");
        let store = DynamoEventStore::new(&config, &table);
        assert_eq!(store.create_table().await.unwrap(), TableSetup::Created);
        assert_eq!(store.create_table().await.unwrap(), TableSetup::Existed);
        DynamoBacking { config, table }
    }
}

impl Backing for DynamoBacking {
    type Store = DynamoEventStore;
    async fn open(&self) -> DynamoEventStore {
        DynamoEventStore::new(&self.config, &self.table).with_page_size(2)
    }
}

event_store_conformance!(DynamoBacking::new().await);

/// The stored `status` and whether `open_flag` is set, read with a raw GetItem.
async fn stored_head(backing: &DynamoBacking, job: u64) -> (String, bool) {
    let item = aws_sdk_dynamodb::Client::new(&backing.config)
        .get_item()
        .table_name(&backing.table)
        .key("pk", AttributeValue::S(stream(job).to_string()))
        .key("sk", AttributeValue::S("HEAD".into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("a head");
    let status = item["status"].as_s().unwrap().clone();
    (status, item.contains_key("open_flag"))
}

#[tokio::test]
async fn the_database_refuses_a_closed_head_with_a_live_instance() {
    let backing = DynamoBacking::new().await;
    let store = backing.open().await;
    let (_, events) = launched(1, at(0));
    store
        .append(&stream(1), 0, &events, &CommandId::new("c1"))
        .await
        .unwrap();
    let head = store.head(&stream(1)).await.unwrap().unwrap();
    let instance = head.instance_id.clone().expect("launched").0;
    // Bypass the domain and the adapter's own check: close the stream with its
    // instance alive, claiming what a buggy writer might claim.
    let closing = HeadWrite {
        expected: 3,
        version: 3,
        status: "failed".into(),
        instance_id: Some(instance.clone()),
        runner_name: None,
        instance_possible: true,
        terminated: false,
        terminated_instance: None,
        open: false,
        updated_at: at(9).0,
        state: serde_json::to_string(&head.state).unwrap(),
    };
    let lies = [
        // No Terminated at all.
        closing.clone(),
        // "No instance was ever possible", while the stored head records one.
        HeadWrite {
            instance_possible: false,
            ..closing.clone()
        },
        // "Terminated", naming no instance or another one.
        HeadWrite {
            terminated: true,
            ..closing.clone()
        },
        HeadWrite {
            terminated: true,
            terminated_instance: Some("i-other".into()),
            ..closing.clone()
        },
    ];
    for lie in lies {
        let refused = store.put_head_unchecked(&stream(1), &lie).await;
        assert!(
            matches!(refused, Err(StoreError::Refused(_))),
            "{lie:?}: {refused:?}"
        );
        // What is stored is unchanged (read raw, not recomputed from the state).
        assert_eq!(
            stored_head(&backing, 1).await,
            ("booting".to_string(), true)
        );
        assert!(store.head(&stream(1)).await.unwrap().unwrap().open);
    }
    // Closing with Terminated for the recorded instance is accepted by the database.
    let terminated = HeadWrite {
        terminated: true,
        terminated_instance: Some(instance),
        ..closing
    };
    store
        .put_head_unchecked(&stream(1), &terminated)
        .await
        .unwrap();
    assert_eq!(
        stored_head(&backing, 1).await,
        ("failed".to_string(), false)
    );
}

#[tokio::test]
async fn an_unreadable_open_head_is_reported_not_fatal() {
    let backing = DynamoBacking::new().await;
    let store = backing.open().await;
    for job in [1, 2] {
        let (_, events) = launched(job, at(0));
        store
            .append(&stream(job), 0, &events, &CommandId::new(format!("c{job}")))
            .await
            .unwrap();
    }
    // An open head whose state cannot be read (a bug, a hand edit).
    let corrupt = HeadWrite {
        expected: 3,
        version: 4,
        status: "booting".into(),
        instance_id: None,
        runner_name: None,
        instance_possible: true,
        terminated: false,
        terminated_instance: None,
        open: true,
        updated_at: at(1).0,
        state: "not json".into(),
    };
    store
        .put_head_unchecked(&stream(1), &corrupt)
        .await
        .unwrap();
    let open = store.open_streams().await.unwrap();
    let heads: Vec<_> = open.heads.iter().map(|h| h.stream.clone()).collect();
    assert_eq!(heads, [stream(2)]);
    assert_eq!(open.unreadable.len(), 1);
    assert_eq!(open.unreadable[0].key, stream(1).to_string());
}

#[tokio::test]
async fn appends_nudge_the_projector_through_dynamodb_streams() {
    let backing = DynamoBacking::new().await;
    let store = backing.open().await;
    let mut nudges = jitr_aws::LogNudges::open(&backing.config, &backing.table)
        .await
        .unwrap();
    assert_eq!(nudges.poll().await.unwrap(), 0, "nothing happened yet");
    let (_, events) = launched(5, at(0));
    store
        .append(&stream(5), 0, &events, &CommandId::new("n1"))
        .await
        .unwrap();
    let mut seen = 0;
    for _ in 0..20 {
        seen += nudges.poll().await.unwrap();
        if seen > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen > 0, "the append produced change records");
    // The nudge sends the projector to the feed, which has the events.
    let feed = store.read_all(0, 100).await.unwrap();
    assert_eq!(feed.len(), 3);
}
