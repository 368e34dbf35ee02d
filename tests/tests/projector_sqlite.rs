//! The core through the SQLite store and the projector: a failure or a completed job
//! after launch is non-terminal until `Terminated`; compensation is emitted exactly
//! once per debt, and again after a restart only for what is still owed.

use std::sync::Arc;

use jitr_domain::{
    Command, RunnerStatus, StreamId, TerminateRunner, TerminationEvidence, TerminationReason,
    Timestamp,
};
use jitr_e2e::fixtures::{at, fail_token, instance, launched, stream};
use jitr_handlers::app::dispatch::{Dispatched, dispatch};
use jitr_handlers::app::projector::{CHECKPOINT, Projector};
use jitr_infra::{CheckpointStore, CommandId, EventStore, InProcessBus, SqliteEventStore};
use jitr_projections::books::Window;
use tokio::sync::mpsc::UnboundedReceiver;

struct World {
    _dir: tempfile::TempDir,
    store: Arc<SqliteEventStore>,
    bus: InProcessBus,
    published: UnboundedReceiver<TerminateRunner>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteEventStore::open(dir.path().join("events.db")).unwrap());
        let (bus, published) = InProcessBus::new();
        World {
            _dir: dir,
            store,
            bus,
            published,
        }
    }

    /// This world's projector (restarted under the same lease holder id).
    async fn projector(&self) -> Projector {
        self.projector_of("host-a").await
    }

    /// A projector holding (or waiting for) the lease as `holder`.
    async fn projector_of(&self, holder: &str) -> Projector {
        Projector::start(
            self.store.clone(),
            Arc::new(self.bus.clone()),
            60_000,
            holder,
        )
        .await
        .unwrap()
    }

    /// `projector`'s views equal a rebuild of the whole log from scratch.
    async fn assert_rebuilt_equals(&self, projector: &Projector) {
        let rebuilt =
            jitr_handlers::commands::audit::replay(&*self.store, Window::default(), None, |_| {})
                .await
                .unwrap();
        assert_eq!(rebuilt.views(), projector.views());
    }

    /// Runner `job` launched at `at(0)`.
    async fn launch(&self, job: u64) {
        let (_, events) = launched(job, at(0));
        self.store
            .append(
                &stream(job),
                0,
                &events,
                &CommandId::new(format!("launch-{job}")),
            )
            .await
            .unwrap();
    }

    async fn command(&self, job: u64, command: Command, now: Timestamp) -> Dispatched {
        let id = CommandId::new(format!("{job}-{}-{}", command.name(), now.0));
        dispatch(&*self.store, &stream(job), command, now, &id)
            .await
            .unwrap()
    }

    /// What the compensation handler does once the instance is gone.
    async fn terminated(&self, job: u64, now: Timestamp) {
        let confirm = Command::ConfirmTerminated {
            instance_id: Some(instance(job)),
            evidence: TerminationEvidence::ReportedTerminated,
        };
        self.command(job, confirm, now).await;
    }

    fn drain(&mut self) -> Vec<TerminateRunner> {
        let mut out = Vec::new();
        while let Ok(c) = self.published.try_recv() {
            out.push(c);
        }
        out
    }

    async fn status(&self, job: u64) -> RunnerStatus {
        self.store.head(&stream(job)).await.unwrap().unwrap().status
    }
}

fn streams(commands: &[TerminateRunner]) -> Vec<StreamId> {
    commands.iter().map(|c| c.stream.clone()).collect()
}

#[tokio::test]
async fn failure_after_launch_is_terminating_until_terminated() {
    let mut world = World::new();
    let mut projector = world.projector().await;
    world.launch(1).await;
    world.command(1, fail_token(), at(5)).await;

    projector.tick(at(6)).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Terminating);
    assert_eq!(
        projector.views().status(&stream(1)),
        Some(RunnerStatus::Terminating)
    );
    // Ticks within the re-emit interval publish nothing more.
    projector.tick(at(20)).await.unwrap();
    projector.tick(at(30)).await.unwrap();
    let published = world.drain();
    assert_eq!(published.len(), 1, "{published:?}");
    let owed = &published[0];
    assert_eq!(owed.stream, stream(1));
    assert_eq!(owed.instance_id, Some(instance(1)));
    assert_eq!(owed.owed_since, at(5));
    // The log records that a compensation was issued.
    let kinds: Vec<&str> = world
        .store
        .read_stream(&stream(1))
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            "Requested",
            "LaunchIntended",
            "Launched",
            "Failed",
            "TerminationRequested"
        ]
    );

    world.terminated(1, at(31)).await;
    projector.tick(at(200)).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert_eq!(projector.views().status(&stream(1)), None, "closed");
    assert_eq!(
        projector.views().closed.get(&RunnerStatus::Failed),
        Some(&1)
    );
    assert!(projector.views().open_leaks(at(200)).is_empty());
    assert!(world.drain().is_empty());
}

#[tokio::test]
async fn completed_job_drains_then_completes_with_terminated() {
    let mut world = World::new();
    let mut projector = world.projector().await;
    world.launch(2).await;
    world
        .command(2, Command::StartJob { job: None }, at(10))
        .await;
    world
        .command(
            2,
            Command::CompleteJob {
                conclusion: Some("success".into()),
                job: None,
            },
            at(100),
        )
        .await;

    projector.tick(at(101)).await.unwrap();
    assert_eq!(world.status(2).await, RunnerStatus::Draining);
    assert!(
        world.drain().is_empty(),
        "nothing owed within the drain grace"
    );

    projector.tick(at(100 + 120)).await.unwrap();
    let published = world.drain();
    assert_eq!(streams(&published), vec![stream(2)]);
    assert_eq!(published[0].reason, TerminationReason::DrainGraceOver);
    assert_eq!(world.status(2).await, RunnerStatus::Draining);

    world.terminated(2, at(225)).await;
    projector.tick(at(400)).await.unwrap();
    assert_eq!(world.status(2).await, RunnerStatus::Completed);
    assert!(world.drain().is_empty());
}

#[tokio::test]
async fn a_restarted_projector_re_emits_what_is_still_owed_and_nothing_else() {
    let mut world = World::new();
    let mut first = world.projector().await;
    // Runner 1 fails and is compensated before the crash.
    world.launch(1).await;
    world.command(1, fail_token(), at(5)).await;
    first.tick(at(6)).await.unwrap();
    assert_eq!(streams(&world.drain()), vec![stream(1)]);
    world.terminated(1, at(7)).await;
    // Runners 3, 4 fail; the projector publishes both and then crashes.
    for job in [3, 4] {
        world.launch(job).await;
        world.command(job, fail_token(), at(8)).await;
    }
    first.tick(at(9)).await.unwrap();
    assert_eq!(streams(&world.drain()), vec![stream(3), stream(4)]);
    // Runner 5 fails while the projector is down; runner 3's instance is confirmed
    // gone meanwhile; runner 6 runs normally.
    drop(first);
    world.launch(5).await;
    world.command(5, fail_token(), at(10)).await;
    world.terminated(3, at(11)).await;
    world.launch(6).await;
    world
        .command(6, Command::StartJob { job: None }, at(12))
        .await;

    let mut second = world.projector().await;
    let emitted = second.tick(at(13)).await.unwrap();
    assert_eq!(streams(&emitted), vec![stream(4), stream(5)]);
    assert_eq!(streams(&world.drain()), vec![stream(4), stream(5)]);
    assert_eq!(
        second.views().closed.get(&RunnerStatus::Failed),
        Some(&2),
        "runners 1 and 3"
    );
    assert_eq!(
        second.views().status(&stream(6)),
        Some(RunnerStatus::Running)
    );

    // Its views, resumed from the checkpoint, equal a rebuild from scratch.
    second.catch_up().await.unwrap();
    world.assert_rebuilt_equals(&second).await;
}

#[tokio::test]
async fn a_deadline_missed_without_any_event_is_failed_and_compensated() {
    let mut world = World::new();
    let mut projector = world.projector().await;
    world.launch(7).await;
    // No token, no job: the boot timeout (10 min from the launch intent) passes.
    projector.tick(at(599)).await.unwrap();
    assert!(world.drain().is_empty());
    projector.tick(at(601)).await.unwrap();
    let published = world.drain();
    assert_eq!(streams(&published), vec![stream(7)]);
    let kinds: Vec<&str> = world
        .store
        .read_stream(&stream(7))
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(&kinds[3..], ["Failed", "TerminationRequested"], "{kinds:?}");
    assert_eq!(world.status(7).await, RunnerStatus::Terminating);
}

/// Three runners launched, then runner 2's second event (position 5)
/// rewritten with `set` (an SQL `SET` list).
async fn three_runners_with_event_5(set: &str) -> World {
    let world = World::new();
    for job in 1..=3 {
        world.launch(job).await;
    }
    world
        .store
        .execute_raw(format!("UPDATE events SET {set} WHERE position = 5"))
        .await
        .unwrap();
    world
}

/// One unreadable event (a bug, a hand edit) never stalls the projector or the
/// audit: it is skipped, counted and reported with its position; the runners
/// around it are folded.
#[tokio::test]
async fn an_unreadable_event_is_skipped_and_reported() {
    // Runner 2's second event (position 5) can no longer be decoded: a known
    // kind without its fields (an unknown kind is a newer jitr's, below).
    let world = three_runners_with_event_5("body = '{\"type\":\"Launched\"}'").await;
    let mut projector = world.projector().await;
    assert_eq!(projector.catch_up().await.unwrap(), 9);
    assert_eq!(projector.views().position, 9);
    assert_eq!(projector.views().skipped, [5]);
    for job in [1, 3] {
        assert!(projector.views().open.contains_key(&stream(job)), "{job}");
    }
    let replay =
        jitr_handlers::commands::audit::replay(&*world.store, Window::default(), None, |_| {})
            .await
            .unwrap();
    let positions: Vec<u64> = replay.unreadable.iter().map(|u| u.position).collect();
    assert_eq!(positions, [5]);
    assert_eq!(replay.unreadable[0].stream, stream(2).to_string());
    assert_eq!(replay.books.events, 8);
}

/// Issue 25 (ADR-0019): an event kind this build does not know was written by
/// a newer jitr (a rolling update, a rollback). The projector folds what is
/// before it, checkpoints there and stops with a clear error — never skips it,
/// never checkpoints past it — and so does every restart; the audit refuses to
/// judge past it. Once the reader knows the kind (the newer binary), it goes on.
#[tokio::test]
async fn an_event_of_a_newer_jitr_stops_the_projector_before_it_never_past() {
    let world = three_runners_with_event_5(
        "kind = 'RunnerHibernated', \
         body = '{\"type\":\"RunnerHibernated\",\"at\":1,\"until\":2}'",
    )
    .await;
    for _restart in 0..2 {
        let mut projector = world.projector().await;
        match projector.catch_up().await {
            Err(jitr_handlers::app::projector::ProjectorError::NewerLog {
                position, what, ..
            }) => {
                assert_eq!(position, 5);
                assert!(what.contains("RunnerHibernated"), "{what}");
            }
            other => panic!("expected a stop before position 5: {other:?}"),
        }
        assert_eq!(projector.views().position, 4, "folded up to it");
        assert!(projector.views().skipped.is_empty(), "never skipped");
        let saved = world
            .store
            .load_checkpoint(CHECKPOINT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(saved.position, 4, "never checkpointed past it");
    }
    match jitr_handlers::commands::audit::replay(&*world.store, Window::default(), None, |_| {})
        .await
    {
        Err(jitr_infra::StoreError::Newer { position: 5, .. }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the audit judged past a newer event"),
    }
    // A field this build does not know is ignored: additive change is free.
    world
        .store
        .execute_raw(
            "UPDATE events SET kind = 'Launched', body = json_set(body, '$.hibernates', 1) \
             WHERE position = 6",
        )
        .await
        .unwrap();
    // The reader that knows the kind (here: the event as this build writes it).
    world
        .store
        .execute_raw("UPDATE events SET kind = (SELECT kind FROM events WHERE position = 2), body = (SELECT body FROM events WHERE position = 2) WHERE position = 5")
        .await
        .unwrap();
    let mut projector = world.projector().await;
    projector.catch_up().await.unwrap();
    assert_eq!(projector.views().position, 9);
}

/// A checkpoint saved by a newer jitr (its views' schema is past this build's)
/// is neither read as this build's views nor rebuilt over: the projector does
/// not start, and says why.
#[tokio::test]
async fn a_checkpoint_of_a_newer_jitr_is_neither_read_nor_replaced() {
    let world = World::new();
    world.launch(1).await;
    let newer = jitr_infra::Checkpoint {
        position: 3,
        snapshot: br#"{"schema": 99, "position": 3, "open": "a newer shape"}"#.to_vec(),
        generation: 0,
    };
    world
        .store
        .save_checkpoint(CHECKPOINT, &newer)
        .await
        .unwrap();
    let started = Projector::start(
        world.store.clone(),
        Arc::new(world.bus.clone()),
        60_000,
        "a",
    )
    .await;
    match started {
        Err(jitr_handlers::app::projector::ProjectorError::NewerCheckpoint { found: 99 }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("started on a newer checkpoint"),
    }
    let kept = world
        .store
        .load_checkpoint(CHECKPOINT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kept.snapshot, newer.snapshot,
        "left as the newer jitr saved it"
    );
}

/// Issue 9: two projectors started on one log. One holds the lease and writes;
/// the other does nothing (no fold, no emission, no save) while it is held. The
/// checkpoint stays readable throughout. When the first stops cleanly (gives the
/// lease up) the second takes over at once, from the first's checkpoint; when a
/// holder dies without giving it up, the other takes over once it lapses.
#[tokio::test]
async fn two_projectors_on_one_log_one_writes_the_other_waits() {
    let mut world = World::new();
    let mut a = world.projector_of("host-a").await;
    let mut b = world.projector_of("host-b").await;
    world.launch(1).await;
    world.command(1, fail_token(), at(5)).await;
    assert_eq!(streams(&a.tick(at(6)).await.unwrap()), vec![stream(1)]);
    assert!(a.is_leader());
    assert!(b.tick(at(7)).await.unwrap().is_empty());
    assert!(!b.is_leader());
    assert_eq!(b.views().position, 0, "the waiting projector folds nothing");
    assert_eq!(streams(&world.drain()), vec![stream(1)], "emitted once");
    let saved = world
        .store
        .load_checkpoint(CHECKPOINT)
        .await
        .unwrap()
        .unwrap();
    let views: jitr_projections::RunnerViews = serde_json::from_slice(&saved.snapshot).unwrap();
    assert_eq!(views.position, a.views().position);

    // A stops cleanly: B takes over at once, resuming from A's checkpoint.
    world.launch(2).await;
    world.command(2, fail_token(), at(8)).await;
    a.release().await.unwrap();
    let emitted = b.tick(at(9)).await.unwrap();
    assert!(b.is_leader());
    assert_eq!(
        streams(&emitted),
        vec![stream(1), stream(2)],
        "B re-emits what is owed"
    );
    assert!(a.tick(at(10)).await.unwrap().is_empty(), "A now waits");

    // B dies without giving the lease up: A takes over once it lapses.
    drop(b);
    assert!(a.tick(at(20)).await.unwrap().is_empty());
    let lapsed = at(9).plus_ms(jitr_handlers::app::projector::LEASE_TTL_MS);
    assert!(!a.tick(lapsed).await.unwrap().is_empty());
    assert!(a.is_leader());
    world.assert_rebuilt_equals(&a).await;
}

/// A projector whose checkpoint another writer moved on (its lease lapsed
/// mid-catch-up) does not overwrite it: its save is refused and it resumes from
/// the newer checkpoint.
#[tokio::test]
async fn a_stale_writer_never_overwrites_a_newer_checkpoint() {
    let world = World::new();
    let mut a = world.projector_of("host-a").await;
    world.launch(1).await;
    a.catch_up().await.unwrap();
    let mut b = world.projector_of("host-a").await;
    world.launch(2).await;
    b.catch_up().await.unwrap();
    world.launch(3).await;
    // A's save names generation 1; B saved generation 2 meanwhile.
    a.catch_up().await.unwrap();
    let saved = world
        .store
        .load_checkpoint(CHECKPOINT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(saved.generation, 2, "A's stale save was refused");
    assert_eq!(a.views(), b.views(), "A resumed from B's checkpoint");
    a.catch_up().await.unwrap();
    assert_eq!(a.views().open.len(), 3);
}

/// Issue 25: a catch-up longer than its invocation (a backlog, a rebuild after
/// a schema bump) saves as it goes and stops before the deadline; the next
/// tick — a projector started afresh, as the next Lambda invocation is — goes
/// on from there instead of starting over. 200,000 events, ticks boxed to a
/// third of a second of folding.
#[tokio::test]
async fn a_long_catch_up_saves_as_it_goes_and_the_next_tick_goes_on_from_there() {
    use jitr_handlers::app::projector::STOP_BEFORE_DEADLINE;
    use std::time::{Duration, Instant};
    let world = World::new();
    world.launch(1).await;
    world.command(1, fail_token(), at(5)).await;
    world.terminated(1, at(6)).await;
    let per_runner = world.store.read_stream(&stream(1)).await.unwrap().len() as u64;
    let copies = 200_000 / per_runner + 1;
    let copy = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {copies}) \
             INSERT INTO events (stream, seq, kind, schema, at, body, command_id) \
             SELECT 'acme/widgets#' || (1000000 + n.i) || '#1', e.seq, e.kind, e.schema, e.at, \
                    e.body, e.command_id || '-' || n.i \
             FROM n JOIN (SELECT * FROM events WHERE stream = '{}') e ORDER BY n.i, e.seq",
        stream(1)
    );
    world.store.execute_raw(copy).await.unwrap();
    let total = per_runner * (copies + 1);
    assert!(total >= 200_000);
    let boxed = || Instant::now() + STOP_BEFORE_DEADLINE + Duration::from_millis(300);
    let mut first = world.projector().await;
    jitr_infra::deadline::within(boxed(), first.tick(at(10)))
        .await
        .unwrap();
    let reached = first.views().position;
    assert!(
        reached > 0 && reached < total,
        "the first tick folded {reached} of {total} and stopped"
    );
    let saved = world
        .store
        .load_checkpoint(CHECKPOINT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(saved.position, reached, "saved where it stopped");
    drop(first);
    let mut ticks = 1;
    let mut position = reached;
    while position < total {
        let mut next = world.projector().await;
        assert_eq!(
            next.views().position,
            position,
            "goes on from the checkpoint"
        );
        jitr_infra::deadline::within(boxed(), next.tick(at(10)))
            .await
            .unwrap();
        assert!(next.views().position > position, "every tick advances");
        position = next.views().position;
        ticks += 1;
        assert!(ticks < 500, "{position} of {total} after {ticks} ticks");
        if position == total {
            world.assert_rebuilt_equals(&next).await;
        }
    }
    assert!(ticks >= 2, "{ticks}");
}
