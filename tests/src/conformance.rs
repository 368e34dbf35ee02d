//! The event store conformance suite, written once against the port.
//!
//! An adapter runs it with [`crate::event_store_conformance!`], given a [`Backing`]:
//! a fresh, empty log per test, from which any number of independent writers can
//! be opened.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jitr_domain::{
    Command, RunnerEvent, RunnerState, RunnerStatus, StreamId, TerminationEvidence, execute,
};
use jitr_infra::{AppendOutcome, Checkpoint, CheckpointStore, CommandId, EventStore, StoreError};

use crate::fixtures::{at, fail_token, instance, launched, request, run, stream};

/// A fresh log for one test.
pub trait Backing: Send + Sync + 'static {
    /// The adapter under test.
    type Store: EventStore + CheckpointStore + 'static;
    /// Opens another independent writer on this log.
    fn open(&self) -> impl std::future::Future<Output = Self::Store> + Send;
}

fn cmd(id: &str) -> CommandId {
    CommandId::new(id)
}

async fn append_all<S: EventStore>(
    store: &S,
    stream: &StreamId,
    expected: u64,
    events: &[RunnerEvent],
    id: &str,
) -> u64 {
    match store.append(stream, expected, events, &cmd(id)).await {
        Ok(AppendOutcome::Appended { version }) => version,
        other => panic!("append {id} to {stream}: {other:?}"),
    }
}

/// Appended events read back in order, with sequence numbers and a head.
pub async fn appends_and_reads_back<B: Backing>(backing: B) {
    let store = backing.open().await;
    let s = stream(1);
    let (state, events) = launched(1, at(0));
    assert_eq!(append_all(&store, &s, 0, &events, "c1").await, 3);
    let (_, more) = run(&state, [fail_token()], at(5));
    assert_eq!(append_all(&store, &s, 3, &more, "c2").await, 4);

    let read = store.read_stream(&s).await.unwrap();
    let seqs: Vec<u64> = read.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let back: Vec<RunnerEvent> = read.into_iter().map(|r| r.event).collect();
    let mut expected = events.clone();
    expected.extend(more);
    assert_eq!(back, expected);

    let head = store.head(&s).await.unwrap().expect("head");
    assert_eq!(head.version, 4);
    assert_eq!(head.status, RunnerStatus::Terminating);
    assert!(head.open);
    assert_eq!(head.instance_id, Some(instance(1)));
    assert_eq!(head.state.version, 4);
}

/// Unknown streams read as empty; an empty append is refused.
pub async fn unknown_streams_and_empty_appends<B: Backing>(backing: B) {
    let store = backing.open().await;
    assert!(store.read_stream(&stream(9)).await.unwrap().is_empty());
    assert!(store.head(&stream(9)).await.unwrap().is_none());
    assert_eq!(store.last_position().await.unwrap(), 0);
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    let err = store.append(&stream(9), 0, &[], &cmd("e")).await;
    assert!(matches!(err, Err(StoreError::NothingToAppend)), "{err:?}");
}

/// A stale expected version is a conflict and writes nothing.
pub async fn stale_version_conflicts<B: Backing>(backing: B) {
    let store = backing.open().await;
    let s = stream(2);
    let (_, events) = launched(2, at(0));
    append_all(&store, &s, 0, &events, "c1").await;
    for expected in [0, 2, 4] {
        let err = store.append(&s, expected, &events[..1], &cmd("c2")).await;
        match err {
            Err(StoreError::Conflict {
                expected: e,
                actual,
                ..
            }) => assert_eq!((e, actual), (expected, 3)),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(store.read_stream(&s).await.unwrap().len(), 3);
}

/// A repeated command id returns the first outcome and writes nothing.
pub async fn repeated_command_id_is_duplicate<B: Backing>(backing: B) {
    let store = backing.open().await;
    let s = stream(3);
    let (state, events) = launched(3, at(0));
    append_all(&store, &s, 0, &events, "delivery-1").await;
    let before = store.last_position().await.unwrap();
    // Same command again, at the same or at the current expected version.
    for expected in [0, 3] {
        let again = store
            .append(&s, expected, &events, &cmd("delivery-1"))
            .await
            .unwrap();
        assert_eq!(
            again,
            AppendOutcome::Duplicate {
                stream: s.clone(),
                version: 3
            }
        );
    }
    assert_eq!(store.read_stream(&s).await.unwrap().len(), 3);
    assert_eq!(store.last_position().await.unwrap(), before);
    // A new command id still appends.
    let (_, more) = run(&state, [fail_token()], at(1));
    assert_eq!(append_all(&store, &s, 3, &more, "delivery-2").await, 4);
}

/// Two writers at the same expected version: exactly one wins.
pub async fn concurrent_writers_one_wins<B: Backing>(backing: B) {
    let backing = Arc::new(backing);
    let first = backing.open().await;
    let s = stream(4);
    let (state, events) = launched(4, at(0));
    append_all(&first, &s, 0, &events, "c0").await;

    let writers = 8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = backing.open().await;
        let s = s.clone();
        let (_, more) = run(
            &state,
            [Command::Fail {
                stage: jitr_domain::FailureStage::Boot,
                reason: format!("writer {w}"),
            }],
            at(1),
        );
        tasks.push(tokio::spawn(async move {
            store.append(&s, 3, &more, &cmd(&format!("w{w}"))).await
        }));
    }
    let mut won = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(AppendOutcome::Appended { version: 4 }) => won += 1,
            Err(StoreError::Conflict { actual: 4, .. }) => conflicts += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((won, conflicts), (1, writers - 1));
    assert_eq!(first.read_stream(&s).await.unwrap().len(), 4);
}

/// Concurrent appends to different streams all land, each once, with unique
/// increasing positions.
pub async fn concurrent_streams_all_land<B: Backing>(backing: B) {
    let backing = Arc::new(backing);
    let mut tasks = Vec::new();
    for job in 10..26u64 {
        let store = backing.open().await;
        tasks.push(tokio::spawn(async move {
            let s = stream(job);
            let (state, events) = launched(job, at(0));
            append_all(&store, &s, 0, &events, &format!("a{job}")).await;
            let (_, more) = run(&state, [Command::StartJob { job: None }], at(1));
            append_all(&store, &s, 3, &more, &format!("b{job}")).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let store = backing.open().await;
    let all = store.read_all(0, 1000).await.unwrap();
    assert_eq!(all.len(), 16 * 4);
    let positions: Vec<u64> = all.iter().map(|r| r.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let mut per_stream: BTreeMap<StreamId, Vec<u64>> = BTreeMap::new();
    for r in &all {
        per_stream.entry(r.stream.clone()).or_default().push(r.seq);
    }
    assert_eq!(per_stream.len(), 16);
    assert!(per_stream.values().all(|seqs| seqs == &vec![1, 2, 3, 4]));
}

/// `read_all` pages through the whole log in position order, each event once.
pub async fn read_all_pages_in_order<B: Backing>(backing: B) {
    let store = backing.open().await;
    let mut written = 0;
    for round in 0..3u64 {
        for job in 30..34u64 {
            let s = stream(job);
            let events = if round == 0 {
                launched(job, at(0)).1
            } else {
                let head = store.head(&s).await.unwrap().unwrap();
                let command = if round == 1 {
                    Command::StartJob { job: None }
                } else {
                    Command::CompleteJob {
                        conclusion: None,
                        job: None,
                    }
                };
                execute(&head.state, command, at(round as i64)).unwrap().1
            };
            let expected = store.head(&s).await.unwrap().map_or(0, |h| h.version);
            append_all(&store, &s, expected, &events, &format!("{job}-{round}")).await;
            written += events.len();
        }
    }
    let mut after = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.read_all(after, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        pages += 1;
        after = page.last().unwrap().position;
        seen.extend(page);
    }
    assert_eq!(seen.len(), written);
    assert!(pages >= 3, "only {pages} pages");
    assert_eq!(store.last_position().await.unwrap(), after);
    let unique: BTreeSet<(StreamId, u64)> =
        seen.iter().map(|r| (r.stream.clone(), r.seq)).collect();
    assert_eq!(unique.len(), written);
    // Within a stream, the feed keeps the stream's order.
    for job in 30..34u64 {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|r| r.stream == stream(job))
            .map(|r| r.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]));
    }
}

/// Heads know open streams and instance ids without reading history.
pub async fn heads_index_open_streams_and_instances<B: Backing>(backing: B) {
    let store = backing.open().await;
    // 40: launched then failed (terminating, open); 41: failed before launch (closed);
    // 42: launched, completed, terminated (closed).
    let (state, mut events) = launched(40, at(0));
    events.extend(run(&state, [fail_token()], at(1)).1);
    append_all(&store, &stream(40), 0, &events, "40").await;

    let (_, events) = run(
        &RunnerState::default(),
        [
            request(41),
            Command::Fail {
                stage: jitr_domain::FailureStage::Launch,
                reason: "no capacity anywhere".into(),
            },
        ],
        at(0),
    );
    append_all(&store, &stream(41), 0, &events, "41").await;

    let (state, mut events) = launched(42, at(0));
    events.extend(
        run(
            &state,
            [
                Command::CompleteJob {
                    conclusion: None,
                    job: None,
                },
                Command::ConfirmTerminated {
                    instance_id: Some(instance(42)),
                    evidence: TerminationEvidence::ReportedTerminated,
                },
            ],
            at(3),
        )
        .1,
    );
    append_all(&store, &stream(42), 0, &events, "42").await;

    let open: Vec<StreamId> = store
        .open_streams()
        .await
        .unwrap()
        .heads
        .into_iter()
        .map(|h| h.stream)
        .collect();
    assert_eq!(open, vec![stream(40)]);
    assert_eq!(
        store.stream_of_instance(&instance(40)).await.unwrap(),
        Some(stream(40))
    );
    assert_eq!(
        store.stream_of_instance(&instance(42)).await.unwrap(),
        Some(stream(42))
    );
    assert_eq!(store.stream_of_instance(&instance(41)).await.unwrap(), None);
    // Runner names registered by TokenMinted are indexed too.
    let (state, mut events) = launched(43, at(0));
    events.extend(
        run(
            &state,
            [Command::RecordToken {
                runner_name: "jitr-runner-43".into(),
                runner_id: None,
            }],
            at(1),
        )
        .1,
    );
    append_all(&store, &stream(43), 0, &events, "43").await;
    assert_eq!(
        store.stream_of_runner("jitr-runner-43").await.unwrap(),
        Some(stream(43))
    );
    assert_eq!(store.stream_of_runner("someone-else").await.unwrap(), None);
    let closed = store.head(&stream(42)).await.unwrap().unwrap();
    assert_eq!(closed.status, RunnerStatus::Completed);
    assert!(!closed.open);
    let failed = store.head(&stream(41)).await.unwrap().unwrap();
    assert_eq!(failed.status, RunnerStatus::Failed);
}

/// Checkpoints save, replace and load back; each save names the generation it
/// replaces.
pub async fn checkpoints_round_trip<B: Backing>(backing: B) {
    let store = backing.open().await;
    assert_eq!(store.load_checkpoint("runners").await.unwrap(), None);
    let first = Checkpoint {
        position: 7,
        snapshot: b"{\"a\":1}".to_vec(),
        generation: 0,
    };
    assert_eq!(store.save_checkpoint("runners", &first).await.unwrap(), 1);
    let second = Checkpoint {
        position: 9,
        snapshot: vec![0, 1, 2, 255],
        generation: 1,
    };
    assert_eq!(store.save_checkpoint("runners", &second).await.unwrap(), 2);
    let other = backing.open().await;
    assert_eq!(
        other.load_checkpoint("runners").await.unwrap(),
        Some(Checkpoint {
            generation: 2,
            ..second
        })
    );
    assert_eq!(other.load_checkpoint("fleet").await.unwrap(), None);
}

/// Two writers that loaded the same checkpoint save concurrently: exactly one
/// wins, the other is told the checkpoint moved, and what loads is the
/// winner's whole snapshot (never a mix), even for snapshots of many chunks.
pub async fn concurrent_checkpoint_saves_one_wins<B: Backing>(backing: B) {
    let store = Arc::new(backing.open().await);
    let base = Checkpoint {
        position: 1,
        snapshot: vec![b'x'; 10],
        generation: 0,
    };
    store.save_checkpoint("views", &base).await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..4u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let checkpoint = Checkpoint {
                position: 100 + u64::from(writer),
                // Over DynamoDB's 400 KB item limit: several chunks.
                snapshot: vec![b'a' + writer; 700 * 1024],
                generation: 1,
            };
            store.save_checkpoint("views", &checkpoint).await
        }));
    }
    let mut won = Vec::new();
    for (writer, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(generation) => won.push((writer as u8, generation)),
            Err(StoreError::CheckpointMoved { expected: 1, .. }) => {}
            Err(e) => panic!("writer {writer}: {e}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let (writer, generation) = won[0];
    let loaded = store.load_checkpoint("views").await.unwrap().unwrap();
    assert_eq!(loaded.generation, generation);
    assert_eq!(loaded.position, 100 + u64::from(writer));
    assert!(loaded.snapshot.len() == 700 * 1024);
    assert!(
        loaded.snapshot.iter().all(|b| *b == b'a' + writer),
        "a mixed snapshot"
    );
}

/// One lease holder at a time: another holder gets the current lease back
/// until it lapses or is released; the holder renews it.
pub async fn one_lease_holder_at_a_time<B: Backing>(backing: B) {
    let store = backing.open().await;
    let t = at(0);
    let a = store
        .acquire_lease("projector", "a", t, 30_000)
        .await
        .unwrap();
    assert_eq!((a.holder.as_str(), a.expires_at), ("a", t.plus_ms(30_000)));
    let b = store
        .acquire_lease("projector", "b", t.plus_ms(10_000), 30_000)
        .await
        .unwrap();
    assert_eq!(b.holder, "a", "b waits while a holds it");
    let renewed = store
        .acquire_lease("projector", "a", t.plus_ms(20_000), 30_000)
        .await
        .unwrap();
    assert_eq!(renewed.expires_at, t.plus_ms(50_000));
    let lapsed = store
        .acquire_lease("projector", "b", t.plus_ms(50_000), 30_000)
        .await
        .unwrap();
    assert_eq!(lapsed.holder, "b", "a lapsed lease is taken");
    store.release_lease("projector", "a").await.unwrap();
    let still = store
        .acquire_lease("projector", "a", t.plus_ms(51_000), 30_000)
        .await
        .unwrap();
    assert_eq!(still.holder, "b", "only the holder releases");
    store.release_lease("projector", "b").await.unwrap();
    let taken = store
        .acquire_lease("projector", "a", t.plus_ms(52_000), 30_000)
        .await
        .unwrap();
    assert_eq!(taken.holder, "a", "a released lease is taken at once");
}

/// Generates one `#[tokio::test]` per conformance case for a backing.
///
/// `$backing` is an expression giving a fresh [`Backing`] (evaluated per test).
#[macro_export]
macro_rules! event_store_conformance {
    ($backing:expr) => {
        $crate::event_store_conformance!(@cases $backing;
            appends_and_reads_back,
            unknown_streams_and_empty_appends,
            stale_version_conflicts,
            repeated_command_id_is_duplicate,
            concurrent_writers_one_wins,
            concurrent_streams_all_land,
            read_all_pages_in_order,
            heads_index_open_streams_and_instances,
            checkpoints_round_trip,
            concurrent_checkpoint_saves_one_wins,
            one_lease_holder_at_a_time,
        );
    };
    (@cases $backing:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case($backing).await;
            }
        )*
    };
}
