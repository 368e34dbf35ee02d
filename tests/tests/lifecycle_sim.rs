//! The runner lifecycle through the real handlers on the embedded default: the
//! seed incident's acceptance criteria, duplicates, and crash recovery.

use jitr_domain::{ClientToken, Market, RunnerStatus, StreamId, TerminationEvidence};
use jitr_e2e::world::World;
use jitr_handlers::app::outcome::{CrashPoint, HandlerError, Outcome};
use jitr_infra::{Compute, EventStore, LaunchSpec, SimSettings};

fn kinds(events: &[jitr_infra::RecordedEvent]) -> Vec<&'static str> {
    events.iter().map(|r| r.event.kind()).collect()
}

#[tokio::test]
async fn a_queued_job_gets_an_instance_and_a_runner_then_drains_and_completes() {
    let mut world = World::new(SimSettings::default(), 4);
    let outcome = world.queued(1).await.unwrap();
    assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    let instance = world.instance(1).await.unwrap();
    assert_eq!(world.live_instances().await.len(), 1);

    world.advance(30);
    world.lifecycle("in_progress", 1).await;
    assert_eq!(world.status(1).await, RunnerStatus::Running);
    world.advance(300);
    world.lifecycle("completed", 1).await;
    assert_eq!(world.status(1).await, RunnerStatus::Draining);
    // The drain grace passes: the projector owes the termination, compensation does it.
    world.advance(121);
    let compensated = world.project_and_compensate().await;
    assert_eq!(compensated.len(), 1);
    assert_eq!(compensated[0].instance_id, Some(instance));
    assert_eq!(world.status(1).await, RunnerStatus::Completed);
    assert!(world.live_instances().await.is_empty());
    world.assert_no_leak().await;
}

/// Seed criterion (a): the JIT mint fails after RunInstances → the instance is
/// terminated, and the stream reaches `failed` only after `Terminated`.
#[tokio::test]
async fn a_jit_mint_failure_after_run_instances_terminates_the_instance() {
    let mut world = World::new(SimSettings::default(), 4);
    world.github.fail_next_mints(&[422]);
    let outcome = world.queued(1).await.unwrap();
    assert!(
        matches!(&outcome, Outcome::Done(m) if m.contains("termination owed")),
        "{outcome:?}"
    );
    assert_eq!(
        world.status(1).await,
        RunnerStatus::Terminating,
        "not failed yet"
    );
    assert_eq!(world.live_instances().await.len(), 1);

    world.project_and_compensate().await;
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert!(world.live_instances().await.is_empty());
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    assert_eq!(
        kinds(&events),
        [
            "Requested",
            "LaunchIntended",
            "Launched",
            "Failed",
            "TerminationRequested",
            "Terminated"
        ]
    );
    world.assert_no_leak().await;
}

/// Seed criterion (b): jitr-tagged instances whose stream is failed, completed or
/// missing are terminated by one reaper pass.
#[tokio::test]
async fn one_reaper_pass_terminates_instances_of_closed_or_missing_streams() {
    let world = World::new(SimSettings::default(), 4);
    // A stream that failed (JIT mint refused), a completed one, and one never logged.
    let mut world = world;
    world.github.fail_next_mints(&[422]);
    world.queued(10).await.unwrap();
    world.queued(11).await.unwrap();
    world.lifecycle("completed", 11).await;
    world.advance(200);
    world.project_and_compensate().await;
    assert_eq!(world.status(10).await, RunnerStatus::Failed);
    assert_eq!(world.status(11).await, RunnerStatus::Completed);
    // Strays: instances started for these closed streams after they closed (a
    // late RunInstances), and one for a stream the log never saw.
    let stray = |job: u64, launch: u32| {
        let stream = world.stream(job);
        LaunchSpec {
            client_token: ClientToken::derive(&stream, launch),
            stream,
            market: Market::Spot,
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            image: "ami-sim".into(),
            user_data: None,
            settings: Default::default(),
        }
    };
    world.cloud.launch(&stray(10, 7)).await.unwrap();
    world.cloud.launch(&stray(11, 7)).await.unwrap();
    world.cloud.launch(&stray(99, 1)).await.unwrap();
    assert_eq!(world.live_instances().await.len(), 3);
    world.advance(121);
    let report = world.reap().await;
    assert_eq!(report.orphans_terminated.len(), 3, "{report:?}");
    assert!(world.live_instances().await.is_empty());
    world.assert_no_leak().await;
}

/// Seed criterion (d): 16 instances pin a 32-vCPU quota with the incident's
/// status mix; one reaper cycle leaves exactly the 5 legitimate ones, and a new
/// launch succeeds.
#[tokio::test]
async fn one_reaper_cycle_frees_the_quota_the_incident_pinned() {
    // Spot is exhausted (MaxSpotInstanceCountExceeded), on-demand holds 32 vCPUs.
    let settings = SimSettings {
        spot_vcpus: 0,
        ..SimSettings::default()
    };
    let world = World::new(settings, 2);
    for job in 1..=16 {
        let outcome = world.queued(job).await.unwrap();
        assert!(
            matches!(outcome, Outcome::Done(_)),
            "job {job}: {outcome:?}"
        );
    }
    assert_eq!(world.cloud.vcpus_in_use(Market::OnDemand).unwrap(), 32);
    // The 17th job finds the quota full: it waits for capacity.
    let blocked = world.queued(17).await.unwrap();
    assert!(
        matches!(&blocked, Outcome::Done(m) if m.contains("waiting for capacity")),
        "{blocked:?}"
    );

    // 1 running, 4 pending (ready, waiting for their job), 10 failed after launch
    // (their compensation never ran: the bus was down), 1 completed.
    world.lifecycle("in_progress", 1).await;
    for job in 6..=15 {
        let fail = jitr_domain::Command::Fail {
            stage: jitr_domain::FailureStage::Token,
            reason: "runner agent never came up".into(),
        };
        jitr_handlers::app::dispatch::dispatch(
            &*world.store,
            &world.stream(job),
            fail,
            world.now(),
            &jitr_infra::CommandId::new(format!("fail-{job}")),
        )
        .await
        .unwrap();
    }
    world.lifecycle("in_progress", 16).await;
    world.lifecycle("completed", 16).await;
    world.advance(180);

    let report = world.reap().await;
    assert_eq!(report.compensated.len(), 11, "{report:?}");
    let live = world.live_instances().await;
    let mut live_streams: Vec<StreamId> = live.iter().filter_map(|m| m.stream.clone()).collect();
    live_streams.sort();
    let mut legit: Vec<StreamId> = (1..=5).map(|j| world.stream(j)).collect();
    legit.sort();
    assert_eq!(live_streams, legit);
    for job in 6..=15 {
        assert_eq!(world.status(job).await, RunnerStatus::Failed);
    }
    assert_eq!(world.status(16).await, RunnerStatus::Completed);

    world.advance(5);
    assert_eq!(world.cloud.vcpus_in_use(Market::OnDemand).unwrap(), 10);
    let retried = world
        .scaleup
        .handle(&world.message("queued", 17, None), 2, world.now())
        .await
        .unwrap();
    assert!(matches!(retried, Outcome::Done(_)), "{retried:?}");
    assert_eq!(world.status(17).await, RunnerStatus::Ready);
    world.assert_no_leak().await;
}

#[tokio::test]
async fn the_same_job_delivered_five_times_concurrently_gets_one_instance() {
    let world = World::new(SimSettings::default(), 4);
    let message = world.message("queued", 1, None);
    let now = world.now();
    let outcomes = futures_join5(&world, &message, now).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(world.live_instances().await.len(), 1);
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    assert_eq!(
        kinds(&events).iter().filter(|k| **k == "Launched").count(),
        1
    );
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "LaunchIntended")
            .count(),
        1
    );
}

async fn futures_join5(
    world: &World,
    message: &jitr_handlers::app::webhook::JobMessage,
    now: jitr_domain::Timestamp,
) -> Vec<Result<Outcome, HandlerError>> {
    let h = || world.scaleup.handle(message, 1, now);
    let (a, b, c, d, e) = tokio::join!(h(), h(), h(), h(), h());
    vec![a, b, c, d, e]
}

#[tokio::test]
async fn out_of_order_and_unknown_lifecycle_events_are_recorded_or_ignored() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    // completed before in_progress: draining; the late in_progress is ignored.
    world.lifecycle("completed", 1).await;
    assert_eq!(world.status(1).await, RunnerStatus::Draining);
    let late = world.lifecycle("in_progress", 1).await;
    assert!(
        matches!(&late, Outcome::Done(m) if m.contains("ignored")),
        "{late:?}"
    );
    // A runner jitr does not know.
    let unknown = world
        .lifecycle
        .handle(
            &world.message("in_progress", 5, Some("github-hosted-1")),
            world.now(),
        )
        .await
        .unwrap();
    assert!(matches!(&unknown, Outcome::Done(m) if m.contains("not one of jitr's")));
    // A job cancelled while queued: its idle runner is spare capacity, not
    // closed for it (ADR-0017).
    world.queued(2).await.unwrap();
    world
        .lifecycle
        .handle(&world.message("completed", 2, None), world.now())
        .await
        .unwrap();
    assert_eq!(world.status(2).await, RunnerStatus::Ready);
    let head = world.store.head(&world.stream(2)).await.unwrap().unwrap();
    assert_eq!(
        head.state.demand_ended.map(|(_, e)| e),
        Some(jitr_domain::DemandEnding::Cancelled)
    );
}

#[tokio::test]
async fn a_job_taken_by_another_jitr_runner_moves_that_runner() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    world.queued(2).await.unwrap();
    // Job 2 runs on job 1's runner (same labels): the runner that took it moves.
    let runner_of_1 = world.runner_name(1).await.unwrap();
    world
        .lifecycle
        .handle(
            &world.message("in_progress", 2, Some(&runner_of_1)),
            world.now(),
        )
        .await
        .unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Running);
    assert_eq!(world.status(2).await, RunnerStatus::Ready);
}

/// ADR-0014: a full quota is learnt from EC2's refusal, once per market; the
/// job then waits — later deliveries and admission rounds call no
/// RunInstances while jitr holds what the market allowed — and is never given
/// up for capacity.
#[tokio::test]
async fn quota_refusals_are_learnt_once_and_the_job_waits_without_giving_up() {
    let settings = SimSettings {
        spot_vcpus: 0,
        on_demand_vcpus: 0,
        ..SimSettings::default()
    };
    let world = World::new(settings, 4);
    let message = world.message("queued", 1, None);
    let first = world
        .scaleup
        .handle(&message, 1, world.now())
        .await
        .unwrap();
    assert!(
        matches!(&first, Outcome::Done(m) if m.contains("waiting for capacity (quota full (")),
        "{first:?}"
    );
    let learnt = [
        "Requested",
        "LaunchIntended",
        "LaunchRejected",
        "LaunchIntended",
        "LaunchRejected",
    ];
    assert_eq!(
        kinds(&world.store.read_stream(&world.stream(1)).await.unwrap()),
        learnt
    );
    for receives in 2..=20 {
        world.advance(60);
        let again = world
            .scaleup
            .handle(&message, receives, world.now())
            .await
            .unwrap();
        assert!(
            matches!(&again, Outcome::Done(m) if m.contains("waiting")),
            "{again:?}"
        );
        let round = world.scaleup.admit(None, world.now()).await.unwrap();
        assert_eq!((round.report.waiting, round.report.launched), (1, 0));
    }
    // Nineteen minutes later: not failed, and past the learning only one probe
    // per market every five minutes (jitr_domain::PROBE_AFTER_MS): 3 each.
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    let mut probes: std::collections::BTreeMap<Market, Vec<i64>> = Default::default();
    for r in &events[learnt.len()..] {
        if let jitr_domain::RunnerEvent::LaunchIntended { at, market, .. } = &r.event {
            probes.entry(*market).or_default().push(at.0);
        }
    }
    for (market, at) in &probes {
        assert_eq!(at.len(), 3, "{market:?}: {at:?}");
        assert!(
            at.windows(2)
                .all(|w| w[1] - w[0] >= jitr_domain::PROBE_AFTER_MS as i64),
            "{market:?}: {at:?}"
        );
    }
    assert_eq!(probes.len(), 2);
    assert_eq!(world.status(1).await, RunnerStatus::Requested);
    // The audit shows the wait, per pool.
    let report = audit_now(&world).await;
    assert_eq!(report.waiting.len(), 1, "{:?}", report.waiting);
    assert_eq!(report.waiting[0].runners, 1);
    assert_eq!(report.waiting[0].vcpus, 4);
    assert_eq!(report.waiting[0].oldest_wait_ms, 19 * 60_000);
    assert!(jitr_handlers::commands::audit::render(&report).contains("waiting for capacity: pool"));
    world.assert_no_leak().await;
}

/// Crash injection at every step boundary of scale-up and compensation: after a
/// restart and one reaper cycle, no live instance lacks an open stream that owns
/// it, and every closed stream with an instance has its `Terminated`.
#[tokio::test]
async fn crashes_at_every_step_boundary_leave_no_leak() {
    for point in [
        CrashPoint::AfterLaunchIntended,
        CrashPoint::AfterRunInstances,
        CrashPoint::AfterLaunched,
        CrashPoint::AfterJitConfigHandedOver,
        CrashPoint::AfterTokenMinted,
    ] {
        let world = World::new(SimSettings::default(), 4);
        world.scaleup.crash.arm(point);
        let crashed = world.queued(1).await;
        assert!(
            matches!(crashed, Err(HandlerError::Crashed(p)) if p == point),
            "{point:?}"
        );
        let mut world = world.restart();
        world.advance(180);
        world.reap().await;
        world.assert_no_leak().await;
        // The message comes back: the runner is completed, with one instance.
        let again = world
            .scaleup
            .handle(&world.message("queued", 1, None), 2, world.now())
            .await
            .unwrap();
        assert!(matches!(again, Outcome::Done(_)), "{point:?}: {again:?}");
        let events = world.store.read_stream(&world.stream(1)).await.unwrap();
        assert_eq!(
            kinds(&events).iter().filter(|k| **k == "Launched").count(),
            1,
            "{point:?}: {:?}",
            kinds(&events)
        );
        assert_eq!(world.live_instances().await.len(), 1, "{point:?}");
        // Left alone past every deadline, it is still cleaned up.
        world.advance(7 * 3600);
        world.project_and_compensate().await;
        world.reap().await;
        assert!(world.live_instances().await.is_empty(), "{point:?}");
        world.assert_no_leak().await;
    }

    // Compensation crashes after TerminateInstances, before `Terminated`.
    let mut world = World::new(SimSettings::default(), 4);
    world.github.fail_next_mints(&[422]);
    world.queued(1).await.unwrap();
    world
        .compensation
        .crash
        .arm(CrashPoint::AfterTerminateInstances);
    let owed = {
        let mut projector = world.app.projector().await.unwrap();
        projector.catch_up().await.unwrap();
        jitr_projections::CompensationPolicy::new(60_000).due(projector.views(), world.now())
    };
    let crashed = world.compensation.handle(&owed[0], world.now()).await;
    assert!(matches!(crashed, Err(HandlerError::Crashed(_))));
    assert_eq!(world.status(1).await, RunnerStatus::Terminating);
    world = world.restart();
    world.advance(180);
    world.reap().await;
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    world.assert_no_leak().await;
    world.project_and_compensate().await;
    world.assert_no_leak().await;
}

#[tokio::test]
async fn the_rebalancer_heals_a_lost_webhook_and_a_failed_runner() {
    use std::time::Duration;

    let world = World::new(SimSettings::default(), 4);
    let rebalancer = world.app.rebalancer.clone();
    let queue = world.app.ports.scaleup_queue.clone();
    // Job 1 is served; job 2's webhook was lost; job 3's runner failed.
    for job in 1..=3 {
        queued_on_github(&world, job);
    }
    world.queued(1).await.unwrap();
    world.github.fail_next_mints(&[422]);
    world.queued(3).await.unwrap();
    let report = rebalancer.tick(world.now()).await.unwrap();
    assert_eq!(report.queued_jobs, 3);
    let requested: Vec<String> = report.requested.iter().map(|s| s.to_string()).collect();
    assert_eq!(requested, ["acme/widgets#2#1", "acme/widgets#3#2"]);

    // The requests go through scale-up like any queued job.
    for message in queue.receive(10, Duration::ZERO).await.unwrap() {
        let job: jitr_handlers::app::webhook::JobMessage =
            serde_json::from_str(&message.body).unwrap();
        world.scaleup.handle(&job, 1, world.now()).await.unwrap();
    }
    assert_eq!(world.status(2).await, RunnerStatus::Ready);
    let second = StreamId::parse("acme/widgets#3#2").unwrap();
    assert_eq!(
        world.store.head(&second).await.unwrap().unwrap().status,
        RunnerStatus::Ready
    );
    assert!(
        rebalancer
            .tick(world.now())
            .await
            .unwrap()
            .requested
            .is_empty()
    );
}

/// A backstop never stalls on one bad item: with one open runner's head
/// unreadable, the reaper reports it and still compensates the others.
#[tokio::test]
async fn an_unreadable_head_does_not_stop_the_reaper() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    world.github.fail_next_mints(&[422]);
    world.queued(2).await.unwrap();
    assert_eq!(world.status(2).await, RunnerStatus::Terminating);
    world
        .store
        .execute_raw("UPDATE streams SET state = 'not json' WHERE stream = 'acme/widgets#1#1'")
        .await
        .unwrap();
    world.advance(200);
    let report = world.reap().await;
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("acme/widgets#1#1") && e.contains("unreadable")),
        "{report:?}"
    );
    assert_eq!(report.compensated, [world.stream(2)], "{report:?}");
    assert_eq!(world.status(2).await, RunnerStatus::Failed);
    // The audit reports it too.
    let window = jitr_handlers::commands::audit::AuditWindow {
        since: None,
        as_of: world.now(),
        deadline_ms: 60_000,
        orphan_grace_ms: 60_000,
    };
    let audit = jitr_handlers::commands::audit::audit(&*world.store, window, None, false, |_| {})
        .await
        .unwrap();
    assert_eq!(
        audit.unreadable_heads.len(),
        1,
        "{:?}",
        audit.unreadable_heads
    );
    assert_eq!(audit.unreadable_heads[0].0, "acme/widgets#1#1");
}

/// Issue 25 (ADR-0020): an instance whose stream a newer jitr wrote (an event
/// kind and a status this build does not know) may run that jitr's job: it is
/// left running while a runner of any version could live, and nothing is
/// written to its stream. Past the longest a runner lives (max age, drain grace
/// and the reaper's grace) the reaper terminates it all the same.
#[tokio::test]
async fn an_instance_of_a_stream_this_build_cannot_read_is_terminated_past_any_runners_life() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    let stream = world.stream(1);
    let instance = world.instance(1).await.expect("launched");
    let seq = world.store.read_stream(&stream).await.unwrap().len() + 1;
    world
        .store
        .execute_raw(format!(
            "INSERT INTO events (stream, seq, kind, schema, at, body, command_id) \
             VALUES ('{stream}', {seq}, 'hibernated', 1, {}, '{{}}', 'newer-jitr')",
            world.now().0
        ))
        .await
        .unwrap();
    world
        .store
        .execute_raw(format!(
            "UPDATE streams SET status = 'hibernating', version = {seq} WHERE stream = '{stream}'"
        ))
        .await
        .unwrap();
    let written = world.store.last_position().await.unwrap();

    // Past the boot deadline, inside the longest life: left alone, reported.
    world.advance(20 * 60);
    let report = world.reap().await;
    assert!(world.runs(&instance).await, "{report:?}");
    assert!(report.orphans_terminated.is_empty(), "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains(&instance.0) && e.contains("cannot be read here")),
        "{report:?}"
    );

    let policy = &world.policy;
    let longest =
        policy.deadlines.max_age_ms + policy.deadlines.drain_grace_ms + policy.reaper_grace_ms;
    world.advance(longest / 1000);
    let report = world.reap().await;
    assert_eq!(
        report
            .orphans_terminated
            .iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        [&instance],
        "{report:?}"
    );
    assert!(!world.runs(&instance).await);
    assert_eq!(
        world.store.last_position().await.unwrap(),
        written,
        "nothing written to a stream this build cannot read"
    );
}

/// Issue 9, the incident's own path against EC2's eventual consistency: the JIT
/// mint fails a second after launch while EC2 answers NotFound for the instance
/// (and ignores the terminate call). NotFound is no evidence: no `Terminated` is
/// written while the instance runs; once EC2 sees it, it is terminated and only
/// then is the runner `failed`.
#[tokio::test]
async fn not_found_right_after_launch_is_no_evidence_the_instance_is_gone() {
    use jitr_infra::Fault;
    use std::time::Duration;

    let (mut world, ec2) = World::with_faults(SimSettings::default(), 4);
    ec2.inject(Fault::NotFoundAfterLaunch(Duration::from_secs(60)), None);
    world.github.fail_next_mints(&[422]);
    world.queued(1).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Terminating);
    world.advance(1);
    let owed = world.project_and_compensate().await;
    assert_eq!(owed.len(), 1, "the termination was issued");
    assert_eq!(world.status(1).await, RunnerStatus::Terminating);
    assert_eq!(world.live_instances().await.len(), 1, "it still runs");
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|r| r.event.kind()).collect();
    assert!(!kinds.contains(&"Terminated"), "{kinds:?}");
    // EC2 catches up: the next compensation terminates it and confirms.
    world.advance(60);
    world.project_and_compensate().await;
    assert!(world.live_instances().await.is_empty());
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert_eq!(
        world.closed_by(1).await,
        Some(TerminationEvidence::ReportedTerminated),
        "closed on what EC2 reported of that instance"
    );
    world.assert_no_leak().await;
}

/// Issue 9: absence from the tag-filtered list is no evidence. An instance the
/// listing never shows (a missing deployment tag, a lagging index) but that runs
/// is not written off as `Terminated` by the reaper: asked by its id, the cloud
/// says it runs. Once the runner fails, its termination goes by id too.
#[tokio::test]
async fn an_instance_missing_from_the_listing_is_described_by_id_not_written_off() {
    use jitr_infra::Fault;
    use std::time::Duration;

    let (mut world, ec2) = World::with_faults(SimSettings::default(), 4);
    ec2.inject(Fault::ListOmitsRecent(Duration::from_secs(24 * 3600)), None);
    world.queued(1).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    world.advance(200);
    let report = world.reap().await;
    assert!(report.found_gone.is_empty(), "{report:?}");
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    assert!(
        events.iter().all(|r| r.event.kind() != "Terminated"),
        "Terminated written while the instance runs"
    );
    assert_eq!(world.live_instances().await.len(), 1);
    // Its boot deadline passes: failed, and terminated by its id.
    boot_deadline_terminates_it_by_id(&mut world).await;
}

/// Issue 9: no instance id RunInstances returns is ever dropped. RunInstances is
/// throttled and retried for three minutes; meanwhile the job is cancelled and
/// the runner closed on evidence (its client token found nothing a whole
/// consistency window after the intent). When the launch finally answers, the
/// stream cannot take the instance: scale-up records it as a stray and terminates
/// it at once, and compensation confirms it gone. Before, `RecordLaunch` was
/// refused and the instance id lost, the instance running on.
#[tokio::test]
async fn an_instance_returned_after_its_runner_closed_is_recorded_and_terminated() {
    use jitr_infra::Fault;
    use std::time::Duration;

    let (mut world, ec2) = World::with_faults(SimSettings::default(), 4);
    ec2.inject(Fault::SlowLaunch(Duration::from_secs(180)), Some(1));
    let scaleup = world.scaleup.clone();
    let queued = world.message("queued", 1, None);
    let at = world.now();
    let call = tokio::spawn(async move { scaleup.handle(&queued, 1, at).await });
    while world.status(1).await != RunnerStatus::Launching {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The runner is given up while RunInstances retries (a job cancelled no
    // longer closes its runner: the runner is capacity, ADR-0017); past the
    // window, compensation closes the runner: nothing found by its token.
    let give_up = jitr_domain::Command::Fail {
        stage: jitr_domain::FailureStage::Launch,
        reason: "given up while RunInstances retried".into(),
    };
    let id = jitr_infra::CommandId::new("test:give-up");
    jitr_handlers::app::dispatch::dispatch(
        &*world.store,
        &world.stream(1),
        give_up,
        world.now(),
        &id,
    )
    .await
    .unwrap();
    world.advance(150);
    world.project_and_compensate().await;
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert_eq!(
        world.closed_by(1).await,
        Some(TerminationEvidence::TokenFoundNothing)
    );
    // The throttling ends: the instance exists, and its answer arrives.
    world.advance(40);
    call.await.unwrap().unwrap();
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    let stray = events
        .iter()
        .find_map(|r| match &r.event {
            jitr_domain::RunnerEvent::StrayLaunched { instance_id, .. } => {
                Some(instance_id.clone())
            }
            _ => None,
        })
        .expect("the returned instance is in the log");
    assert!(
        world.live_instances().await.is_empty(),
        "the stray was terminated at once"
    );
    let owed = world.project_and_compensate().await;
    assert_eq!(owed.len(), 1, "{owed:?}");
    assert_eq!(owed[0].instance_id.as_ref(), Some(&stray));
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    assert_eq!(head.status, RunnerStatus::Failed);
    assert_eq!(
        head.state.strays[0].gone.map(|(_, e)| e),
        Some(TerminationEvidence::ReportedTerminated)
    );
    assert!(
        world.project_and_compensate().await.is_empty(),
        "nothing owed any more"
    );
    world.assert_no_leak().await;
}

/// Issue 9: an open runner's instance without the deployment tag (the wrapper
/// plays EC2's tag-filtered listing omitting it) is found by its id: the reaper
/// writes its tags again and never writes `Terminated` while it runs; when the
/// runner misses its boot deadline, it is terminated by its id.
#[tokio::test]
async fn an_untagged_instance_is_found_by_id_retagged_then_terminated_when_owed() {
    use jitr_infra::Fault;

    let (mut world, ec2) = World::with_faults(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    let instance = world.instance(1).await.unwrap();
    ec2.inject(Fault::Untagged(instance.clone()), None);
    assert!(ec2.list_managed().await.unwrap().is_empty());
    world.advance(200);
    let report = world.reap().await;
    assert_eq!(
        report.retagged,
        std::slice::from_ref(&instance),
        "{report:?}"
    );
    assert!(report.found_gone.is_empty(), "{report:?}");
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    assert_eq!(ec2.list_managed().await.unwrap().len(), 1, "listed again");
    boot_deadline_terminates_it_by_id(&mut world).await;
}

/// Job 1's runner misses its boot deadline: failed, its instance terminated by
/// id, the stream closed on what EC2 reported, nothing leaked.
async fn boot_deadline_terminates_it_by_id(world: &mut World) {
    world.advance(600);
    world.reap().await;
    world.project_and_compensate().await;
    assert!(world.live_instances().await.is_empty());
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert_eq!(
        world.closed_by(1).await,
        Some(TerminationEvidence::ReportedTerminated)
    );
    world.assert_no_leak().await;
}

/// Issue 10: a transient GitHub answer while minting (502, twice) is asked
/// again with back-off, without failing the runner: one instance, then
/// `TokenMinted`, no `Failed`.
#[tokio::test]
async fn a_transient_mint_error_is_retried_without_failing_the_runner() {
    let world = World::new(SimSettings::default(), 4);
    world.github.fail_next_mints(&[502, 502]);
    let queued = world.message("queued", 1, None);
    for delivery in 1..=2 {
        let outcome = world
            .scaleup
            .handle(&queued, delivery, world.now())
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::RetryAfter(..)), "{outcome:?}");
        assert_eq!(world.status(1).await, RunnerStatus::Booting);
        world.advance(10);
    }
    world.scaleup.handle(&queued, 3, world.now()).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    let kinds = kinds(&events);
    assert_eq!(kinds.iter().filter(|k| **k == "Launched").count(), 1);
    assert!(!kinds.contains(&"Failed"), "{kinds:?}");
    assert_eq!(world.live_instances().await.len(), 1);
}

/// Issue 10: a definitive answer (422) fails the runner at once with GitHub's
/// message, and its instance is terminated.
#[tokio::test]
async fn a_definitive_mint_refusal_fails_the_runner_with_githubs_message() {
    let mut world = World::new(SimSettings::default(), 4);
    world.github.fail_next_mints(&[422]);
    world.queued(1).await.unwrap();
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    let failure = head.state.failure.expect("failed");
    assert_eq!(failure.stage, jitr_domain::FailureStage::Token);
    assert!(failure.reason.contains("422"), "{}", failure.reason);
    world.project_and_compensate().await;
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert!(world.live_instances().await.is_empty());
}

/// Issue 10: runner names are predictable. A `completed` (or `in_progress`)
/// naming one of jitr's runners but coming from another repository — someone
/// registered a runner of that name there — is acknowledged, logged and
/// ignored: the runner stays as it was.
#[tokio::test]
async fn a_lifecycle_event_from_another_repository_does_not_move_the_runner() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    let victim = world.runner_name(1).await.unwrap();
    for action in ["in_progress", "completed"] {
        let mut forged = world.message(action, 77, Some(&victim));
        forged.repo = "attacker".into();
        let outcome = world.lifecycle.handle(&forged, world.now()).await.unwrap();
        assert!(
            matches!(&outcome, Outcome::Done(m) if m.starts_with("ignored") && m.contains("acme/attacker")),
            "{outcome:?}"
        );
        let mut other_owner = world.message(action, 77, Some(&victim));
        other_owner.owner = "mallory".into();
        let outcome = world
            .lifecycle
            .handle(&other_owner, world.now())
            .await
            .unwrap();
        assert!(
            matches!(&outcome, Outcome::Done(m) if m.starts_with("ignored")),
            "{outcome:?}"
        );
        // The runner's own repository, through another installation.
        let mut other_installation = world.message(action, 1, Some(&victim));
        other_installation.installation = 99;
        let outcome = world
            .lifecycle
            .handle(&other_installation, world.now())
            .await
            .unwrap();
        assert!(
            matches!(&outcome, Outcome::Done(m) if m.starts_with("ignored") && m.contains("installation")),
            "{outcome:?}"
        );
    }
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    // The runner's own repository still moves it (any letter case, as GitHub's
    // names are case-insensitive).
    let mut genuine = world.message("in_progress", 1, Some(&victim));
    genuine.repo = "Widgets".into();
    world.lifecycle.handle(&genuine, world.now()).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Running);
}

/// Issue 10: two deployments (say production and staging) serve the same
/// organisation, on one GitHub. Their runner names and launch tokens are scoped
/// to the deployment, so the same job gets two distinct registrations and
/// instances, and neither's registration sweep removes the other's runners; a
/// leftover registration of its own, each still removes.
#[tokio::test]
async fn two_deployments_in_one_organisation_never_sweep_each_others_runners() {
    use jitr_infra::{GitHub, JitRequest, RunnerScope};

    let prod = World::deployed("prod", None);
    let staging = World::deployed("staging", Some(prod.github.clone()));
    prod.queued(1).await.unwrap();
    staging.queued(1).await.unwrap();
    let scope = RunnerScope::Repo {
        owner: "acme".into(),
        repo: "widgets".into(),
    };
    let names = |runners: Vec<jitr_infra::Runner>| {
        let mut names: Vec<String> = runners.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    };
    let registered = names(prod.github.list_runners(1, &scope).await.unwrap());
    assert_eq!(registered.len(), 2, "{registered:?}");
    let prod_name = prod.runner_name(1).await.unwrap();
    let staging_name = staging.runner_name(1).await.unwrap();
    assert_ne!(prod_name, staging_name);
    assert!(prod_name.starts_with(&jitr_domain::runner_name_prefix(Some("prod"))));
    let mut tokens = Vec::new();
    for w in [&prod, &staging] {
        let head = w.store.head(&w.stream(1)).await.unwrap().unwrap();
        tokens.push(head.state.launch.unwrap().client_token);
    }
    assert_ne!(tokens[0], tokens[1], "EC2 idempotency is per account");

    // A leftover registration of prod's (a crash after minting, say).
    let leftover = format!(
        "{}999-1-abcdef",
        jitr_domain::runner_name_prefix(Some("prod"))
    );
    prod.github
        .generate_jit_config(
            1,
            &JitRequest {
                scope: scope.clone(),
                name: leftover.clone(),
                runner_group_id: 1,
                labels: vec!["self-hosted".into()],
                work_folder: "_work".into(),
            },
        )
        .await
        .unwrap();
    staging.advance(200);
    staging.reap().await;
    assert_eq!(
        names(prod.github.list_runners(1, &scope).await.unwrap()).len(),
        3,
        "staging's sweep touches none of prod's"
    );
    prod.advance(200);
    prod.reap().await;
    let left = names(prod.github.list_runners(1, &scope).await.unwrap());
    assert!(
        !left.contains(&leftover),
        "prod removes its own leftover: {left:?}"
    );
    assert!(
        left.contains(&prod_name) && left.contains(&staging_name),
        "{left:?}"
    );
}

/// GitHub's view of job `job_id` of `acme/widgets`, queued.
fn queued_on_github(world: &World, job_id: u64) {
    world
        .github
        .queue_job(&jitr_infra::QueuedJob {
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id,
            run_id: 1000 + job_id,
            labels: vec!["self-hosted".into(), "linux".into()],
            name: "build".into(),
        })
        .unwrap();
}

fn polled_events(events: &[jitr_infra::RecordedEvent]) -> Vec<&'static str> {
    use jitr_domain::{JobSource, RunnerEvent};
    events
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                RunnerEvent::JobStarted {
                    source: JobSource::Poll,
                    ..
                } | RunnerEvent::JobCompleted {
                    source: JobSource::Poll,
                    ..
                }
            )
        })
        .map(|r| r.event.kind())
        .collect()
}

/// Issue 10: GitHub does not redeliver a lost webhook. With `in_progress` lost,
/// the job runs on its runner past the boot deadline: compensation asks GitHub
/// before terminating, records `JobStarted` from the poll and terminates
/// nothing. With `completed` lost too, the reaper's periodic poll finds the job
/// over and the instance goes within drain grace + one poll interval (+ the
/// sweep period), not at the 6-hour max age.
#[tokio::test]
async fn lost_lifecycle_webhooks_are_healed_from_the_job_on_github() {
    let mut world = World::new(SimSettings::default(), 4);
    queued_on_github(&world, 1);
    world.queued(1).await.unwrap();
    let name = world.runner_name(1).await.unwrap();
    let instance = world.instance(1).await.unwrap();
    world.advance(30);
    world
        .github
        .set_job_status("acme", "widgets", 1, "in_progress", Some(&name))
        .unwrap();
    // No `in_progress` webhook. The boot deadline passes.
    world.advance(600);
    let owed = world.project_and_compensate().await;
    assert_eq!(owed.len(), 1, "the boot deadline owed a termination");
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    assert_eq!(
        world.status(1).await,
        RunnerStatus::Running,
        "{:?}",
        events.iter().map(|r| &r.event).collect::<Vec<_>>()
    );
    assert!(world.runs(&instance).await);
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    assert_eq!(polled_events(&events), ["JobStarted"]);
    assert!(
        !kinds(&events)
            .iter()
            .any(|k| *k == "Failed" || *k == "TerminationRequested"),
        "{:?}",
        kinds(&events)
    );

    // The job completes on GitHub; no `completed` webhook either.
    world.advance(200);
    world
        .github
        .set_job_status("acme", "widgets", 1, "completed", None)
        .unwrap();
    let completed_at = world.now();
    let policy = world.policy.clone();
    let bound_ms = policy.deadlines.drain_grace_ms + policy.job_poll_interval_ms + 60_000;
    while world.status(1).await != RunnerStatus::Completed {
        world.advance(60);
        world.reap().await;
        world.project_and_compensate().await;
        let waited = world.now().millis_since(completed_at);
        assert!(
            waited <= bound_ms,
            "still {} after {waited} ms",
            world.status(1).await
        );
    }
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    assert_eq!(polled_events(&events), ["JobStarted", "JobCompleted"]);
    assert!(world.live_instances().await.is_empty());
    world.assert_no_leak().await;
}

/// A job GitHub still lists as queued does not hold the boot deadline: the
/// runner is failed and its instance terminated. While GitHub does not answer
/// the poll, the termination waits (up to the policy's patience), then goes.
#[tokio::test]
async fn the_boot_deadline_stands_when_github_says_queued_or_stays_silent() {
    let mut world = World::new(SimSettings::default(), 4);
    queued_on_github(&world, 1);
    world.queued(1).await.unwrap();
    world.advance(601);
    world.project_and_compensate().await;
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert!(world.live_instances().await.is_empty());

    // Job 2: GitHub answers 502 to every poll for a while.
    queued_on_github(&world, 2);
    world.queued(2).await.unwrap();
    let instance = world.instance(2).await.unwrap();
    world.github.fail_next_job_polls(&[502; 100]);
    world.advance(601);
    let head = world.store.head(&world.stream(2)).await.unwrap().unwrap();
    let command = jitr_domain::terminate_runner(&head.state, world.now()).unwrap();
    let outcome = world
        .compensation
        .handle(&command, world.now())
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::RetryAfter(_, why) if why.contains("GitHub")),
        "{outcome:?}"
    );
    assert!(world.runs(&instance).await);
    world.advance(world.policy.job_poll_patience_ms / 1000);
    let outcome = world
        .compensation
        .handle(&command, world.now())
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
    assert_eq!(world.status(2).await, RunnerStatus::Failed);
    world.assert_no_leak().await;
}

/// Issue 11: a pool lists instance types in order of preference. No capacity for
/// the first on spot → the second on spot; none for either on spot → the first
/// on demand. A pool without spot launches on demand from the start.
#[tokio::test]
async fn capacity_refusals_try_the_pools_next_type_then_on_demand() {
    use jitr_infra::{Fault, FaultyCompute};
    use std::sync::Arc;

    let (world, faulty) = world_with_pool(true);
    faulty.inject(
        Fault::NoCapacityFor {
            instance_type: "c7i.xlarge".into(),
            market: Some(Market::Spot),
        },
        None,
    );
    world.queued(1).await.unwrap();
    assert_eq!(
        launched(&world, 1).await,
        ("c6i.xlarge".to_owned(), Market::Spot)
    );
    faulty.inject(
        Fault::NoCapacityFor {
            instance_type: "c6i.xlarge".into(),
            market: Some(Market::Spot),
        },
        None,
    );
    world.queued(2).await.unwrap();
    assert_eq!(
        launched(&world, 2).await,
        ("c7i.xlarge".to_owned(), Market::OnDemand)
    );

    let (world, _) = world_with_pool(false);
    world.queued(1).await.unwrap();
    assert_eq!(
        launched(&world, 1).await,
        ("c7i.xlarge".to_owned(), Market::OnDemand)
    );

    /// The type and market of job `job`'s launch.
    async fn launched(world: &World, job: u64) -> (String, Market) {
        let events = world.store.read_stream(&world.stream(job)).await.unwrap();
        events
            .iter()
            .find_map(|r| match &r.event {
                jitr_domain::RunnerEvent::Launched {
                    instance_type,
                    market,
                    ..
                } => Some((instance_type.clone(), *market)),
                _ => None,
            })
            .expect("launched")
    }

    /// A world whose one pool lists c7i.xlarge then c6i.xlarge, on EC2 behind
    /// the fault wrapper.
    fn world_with_pool(spot: bool) -> (World, Arc<FaultyCompute<jitr_infra::SimCloud>>) {
        World::with_faulty_policy(|policy| {
            let pool = &mut policy.pools[0];
            pool.instance_types = vec!["c7i.xlarge".into(), "c6i.xlarge".into()];
            pool.spec.instance_type = "c7i.xlarge".into();
            pool.spot = spot;
        })
    }
}

/// Issue 11: a pool may register its runners in the job's organisation, in a
/// runner group named in the configuration: the name is resolved to its id
/// through GitHub once, and a name the organisation lacks fails the runner with
/// the groups it has, before any instance is launched.
#[tokio::test]
async fn an_organisation_pool_registers_its_runners_in_its_group_by_name() {
    use jitr_handlers::app::policy::PoolScope;
    use jitr_infra::{GitHub, RunnerScope};

    let in_group = |group: &'static str| {
        World::with_policy(move |policy| {
            policy.pools[0].scope = Some(PoolScope::Organization);
            policy.pools[0].runner_group = Some(group.into());
        })
    };
    let world = in_group("builders");
    let id = world.github.add_runner_group("acme", "builders");
    world.queued(1).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    let sent = world.github.usage(1).sent;
    world.queued(2).await.unwrap();
    assert_eq!(
        world.github.usage(1).sent - sent,
        1,
        "the group id is asked once, then only minted"
    );
    for request in world.github.jit_requests() {
        assert_eq!(request.scope, RunnerScope::Org { org: "acme".into() });
        assert_eq!(request.runner_group_id, id);
    }
    // The registration is the organisation's: compensation removes it there.
    let runners = world
        .github
        .list_runners(1, &RunnerScope::Org { org: "acme".into() })
        .await
        .unwrap();
    assert_eq!(runners.len(), 2);

    let mut world = in_group("nope");
    world.queued(1).await.unwrap();
    world.project_and_compensate().await;
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    let failed = events.iter().find_map(|r| match &r.event {
        jitr_domain::RunnerEvent::Failed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        failed
            .as_deref()
            .is_some_and(|r| r.contains("\"nope\" does not exist in acme")),
        "{failed:?}"
    );
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert!(
        !events.iter().any(|r| r.event.kind() == "LaunchIntended"),
        "no instance is launched for a group the organisation lacks"
    );
    world.assert_no_leak().await;
}

/// Issue 11: a pool's vCPU budget. Past it a job waits — no RunInstances, no
/// refusal recorded — and launches once a runner of the pool is gone: the
/// projector, folding the `Terminated`, asks for an admission round
/// (ADR-0014), which launches it and hands it back to be minted.
#[tokio::test]
async fn a_pool_at_its_vcpu_budget_waits_without_calling_run_instances() {
    let mut world = World::with_policy(|policy| policy.pools[0].max_vcpus = Some(8));
    world.queued(1).await.unwrap();
    world.queued(2).await.unwrap();
    let third = world.queued(3).await.unwrap();
    assert!(
        matches!(&third, Outcome::Done(why) if why.contains("vCPU budget (8/8)")),
        "{third:?}"
    );
    assert_eq!(world.status(3).await, RunnerStatus::Requested);
    let events = world.store.read_stream(&world.stream(3)).await.unwrap();
    assert_eq!(kinds(&events), ["Requested"]);
    assert_eq!(world.live_instances().await.len(), 2);

    // Job 1 runs and completes; past the drain grace its instance goes.
    world.lifecycle("in_progress", 1).await;
    world.lifecycle("completed", 1).await;
    world.advance(121);
    world.project_and_compensate().await;
    assert_eq!(world.status(1).await, RunnerStatus::Completed);
    assert_eq!(world.status(3).await, RunnerStatus::Requested);
    assert!(world.drain_scaleup().await >= 2, "a round, then the mint");
    assert_eq!(world.status(3).await, RunnerStatus::Ready);
    world.assert_no_leak().await;
}

/// Issue 11: the simulator plays EC2's per-type capacity, so the embedded default
/// exercises the pools' type order as AWS would: with room for one c7i.xlarge,
/// the second job's runner gets the pool's next type, on spot.
#[tokio::test]
async fn the_simulators_type_capacity_sends_a_pool_to_its_next_type() {
    let settings = SimSettings {
        type_capacity: [("c7i.xlarge".to_owned(), 1)].into(),
        ..SimSettings::default()
    };
    let world = World::with_settings_and_policy(settings, |policy| {
        let pool = &mut policy.pools[0];
        pool.instance_types = vec!["c7i.xlarge".into(), "c6i.xlarge".into()];
        pool.spec.instance_type = "c7i.xlarge".into();
    });
    world.queued(1).await.unwrap();
    world.queued(2).await.unwrap();
    let mut types: Vec<String> = world
        .live_instances()
        .await
        .into_iter()
        .map(|m| format!("{} {}", m.instance_type, m.market.as_str()))
        .collect();
    types.sort();
    assert_eq!(types, ["c6i.xlarge spot", "c7i.xlarge spot"]);
    let events = world.store.read_stream(&world.stream(2)).await.unwrap();
    assert!(
        kinds(&events).contains(&"LaunchRejected"),
        "{:?}",
        kinds(&events)
    );
}

/// Tells the EC2-events handler that `instance` entered `state`, now.
async fn tell(world: &World, instance: &jitr_domain::InstanceId, state: &str) -> Outcome {
    let event = jitr_infra::Ec2Event::StateChange {
        instance_id: instance.clone(),
        state: state.into(),
        at: Some(world.now()),
    };
    world
        .app
        .ec2_events
        .handle(&event, world.now())
        .await
        .unwrap()
}

/// Issue 12: EC2's state-change events are evidence. The instance of a
/// completed job shuts itself down (the bootstrap powers off): its
/// `shutting-down` event closes the runner at once, with evidence
/// `state-change`, without compensation or a reaper pass; its `terminated`
/// event asks for an admission round. A jitr instance that reaches `running`
/// with no runner owning it is terminated by that one event.
#[tokio::test]
async fn ec2_state_changes_close_runners_and_terminate_unowned_instances() {
    use jitr_infra::{Compute, Ec2Event, TerminateOutcome};
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    world.lifecycle("in_progress", 1).await;
    world.lifecycle("completed", 1).await;
    assert_eq!(world.status(1).await, RunnerStatus::Draining);
    let instance = world.instance(1).await.unwrap();
    world.advance(30);
    // The runner exits and the instance powers itself off.
    let before = jitr_domain::Timestamp(world.now().0 - 1);
    assert_eq!(
        world.cloud.terminate(&instance).await.unwrap(),
        TerminateOutcome::Terminating
    );
    world.advance(1);
    let changes = world.cloud.state_changes(before, world.now()).unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!((&changes[0].0, changes[0].1), (&instance, "shutting-down"));
    let event = Ec2Event::StateChange {
        instance_id: instance.clone(),
        state: "shutting-down".into(),
        at: Some(changes[0].2),
    };
    let outcome = world
        .app
        .ec2_events
        .handle(&event, world.now())
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Done(m) if m.contains("recorded")),
        "{outcome:?}"
    );
    assert_eq!(world.status(1).await, RunnerStatus::Completed);
    assert_eq!(
        world.closed_by(1).await,
        Some(jitr_domain::TerminationEvidence::StateChange)
    );
    // Told again (EventBridge delivers at least once): nothing more.
    let again = world
        .app
        .ec2_events
        .handle(&event, world.now())
        .await
        .unwrap();
    assert!(
        matches!(&again, Outcome::Done(m) if m.contains("already")),
        "{again:?}"
    );

    // `terminated` (5 s later in the simulator): an admission round is asked for.
    let before = world.now();
    world.advance(5);
    let changes = world.cloud.state_changes(before, world.now()).unwrap();
    assert_eq!(changes[0].1, "terminated");
    let terminated = Ec2Event::StateChange {
        instance_id: instance.clone(),
        state: "terminated".into(),
        at: Some(changes[0].2),
    };
    world
        .app
        .ec2_events
        .handle(&terminated, world.now())
        .await
        .unwrap();
    let asked = world
        .app
        .ports
        .scaleup_queue
        .receive(10, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(
        asked.iter().any(|m| {
            use jitr_handlers::app::scaleup::{INSTANCE_TERMINATED, ScaleUpMessage};
            matches!(
                ScaleUpMessage::decode(&m.body),
                Ok(ScaleUpMessage::Admit { admit }) if admit == INSTANCE_TERMINATED
            )
        }),
        "{asked:?}"
    );

    // An instance tagged for a runner the log never saw, running: one event
    // terminates it (no reaper grace).
    let stream = world.stream(99);
    let unowned = world
        .cloud
        .launch(&LaunchSpec {
            client_token: ClientToken::derive(&stream, 1),
            stream,
            market: Market::Spot,
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            image: "ami-sim".into(),
            user_data: None,
            settings: Default::default(),
        })
        .await
        .unwrap();
    let outcome = tell(&world, &unowned.instance_id, "running").await;
    assert!(
        matches!(&outcome, Outcome::Done(m) if m.contains("terminated")),
        "{outcome:?}"
    );
    assert!(!world.runs(&unowned.instance_id).await);
    // The runner's own instance, running, is left alone.
    world.queued(2).await.unwrap();
    let own = world.instance(2).await.unwrap();
    let outcome = tell(&world, &own, "running").await;
    assert!(
        matches!(&outcome, Outcome::Done(m) if m.contains("owned")),
        "{outcome:?}"
    );
    assert!(world.runs(&own).await);
    world.assert_no_leak().await;
}

/// EventBridge does not keep EC2's events in order: a `shutting-down`
/// delivered after the instance's `terminated` must not count its vCPUs again,
/// or a waiting runner would wait for nothing.
#[tokio::test]
async fn a_late_shutting_down_after_terminated_does_not_hold_capacity() {
    use jitr_infra::Compute;
    let settings = SimSettings {
        spot_vcpus: 0,
        on_demand_vcpus: 4,
        ..SimSettings::default()
    };
    let world = World::new(settings, 4);
    world.queued(1).await.unwrap();
    // The second job learns the quota (on-demand refused at 4 held) and waits.
    let waiting = world.queued(2).await.unwrap();
    assert!(
        matches!(&waiting, Outcome::Done(m) if m.contains("waiting for capacity")),
        "{waiting:?}"
    );
    world.lifecycle("in_progress", 1).await;
    world.lifecycle("completed", 1).await;
    let instance = world.instance(1).await.unwrap();
    world.cloud.terminate(&instance).await.unwrap();
    world.advance(10);
    // Reversed: `terminated` first, `shutting-down` after it.
    assert!(matches!(
        tell(&world, &instance, "terminated").await,
        Outcome::Done(_)
    ));
    assert!(matches!(
        tell(&world, &instance, "shutting-down").await,
        Outcome::Done(_)
    ));
    assert_eq!(world.status(1).await, RunnerStatus::Completed);
    world.drain_scaleup().await;
    assert_eq!(world.status(2).await, RunnerStatus::Ready);
    world.assert_no_leak().await;
}

/// EC2's "EC2 Spot Instance Interruption Warning" (the shape AWS documents,
/// from `tests/fixtures/ec2-events/spot-interruption.json`). Before the job
/// started: the runner fails `spot-interrupted`, its instance is terminated
/// at once, the job's next attempt is requested at once and launches away from
/// that type's spot market; exactly one runner takes the job. After the job
/// started: the cut is recorded, nothing is relaunched.
#[tokio::test]
async fn a_spot_interruption_before_the_job_started_relaunches_and_after_it_is_recorded() {
    use jitr_domain::{FailureStage, RunnerEvent};
    use jitr_infra::{Ec2Event, decode_ec2_event};
    let world = World::new(SimSettings::default(), 4);
    let warning = |instance: &jitr_domain::InstanceId| {
        let fixture = include_str!("../fixtures/ec2-events/spot-interruption.json");
        let body = fixture.replace("i-1234567890abcdef0", &instance.0);
        let event = decode_ec2_event(&body).unwrap();
        assert!(
            matches!(&event, Ec2Event::SpotInterruption { instance_id, .. } if instance_id == instance)
        );
        event
    };
    let head = |stream: StreamId| {
        let store = world.store.clone();
        async move { store.head(&stream).await.unwrap().unwrap() }
    };
    let attempt =
        |job_id: u64, n: u32| StreamId::for_job(&jitr_e2e::fixtures::job(job_id), n).unwrap();

    world.queued(1).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Ready);
    let first = head(attempt(1, 1)).await.state.instance().cloned().unwrap();
    assert_eq!(first.market, Market::Spot);
    let outcome = world
        .app
        .ec2_events
        .handle(&warning(&first.id), world.now())
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Done(m) if m.contains("next attempt requested")),
        "{outcome:?}"
    );
    let old = head(attempt(1, 1)).await.state;
    assert_eq!(
        old.failure.as_ref().map(|f| f.stage),
        Some(FailureStage::SpotInterrupted)
    );
    assert_eq!(old.spot_warned.map(|(_, started)| started), Some(false));
    assert!(
        !world.runs(&first.id).await,
        "the warned instance is terminated at once"
    );
    // Delivered again: nothing more (no third attempt).
    let again = world
        .app
        .ec2_events
        .handle(&warning(&first.id), world.now())
        .await
        .unwrap();
    assert!(
        matches!(&again, Outcome::Done(m) if !m.contains("next attempt")),
        "{again:?}"
    );

    // The next attempt: launched at once, on demand (the pool's only type's
    // spot market is avoided), and minted.
    let handled = world.drain_scaleup().await;
    assert!(handled >= 1, "{handled}");
    let second = head(attempt(1, 2)).await.state;
    let instance = second
        .instance()
        .cloned()
        .expect("the next attempt launched");
    assert_eq!(instance.market, Market::OnDemand);
    assert_eq!(
        second.request.as_ref().unwrap().spec.avoid_spot,
        ["c5.xlarge"]
    );
    assert_eq!(second.status(), RunnerStatus::Ready);
    assert!(
        world.store.head(&attempt(1, 3)).await.unwrap().is_none(),
        "exactly one new attempt"
    );
    // GitHub gives the job to the new runner: only it starts.
    let name = second.runner_name.clone().unwrap();
    world
        .lifecycle
        .handle(&world.message("in_progress", 1, Some(&name)), world.now())
        .await
        .unwrap();
    assert_eq!(head(attempt(1, 2)).await.status, RunnerStatus::Running);
    let started: Vec<_> = world
        .store
        .read_all(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.event, RunnerEvent::JobStarted { .. }))
        .map(|r| r.stream)
        .collect();
    assert_eq!(started, [attempt(1, 2)]);

    // After the job started: recorded, nothing relaunched.
    world.queued(2).await.unwrap();
    world.lifecycle("in_progress", 2).await;
    let running = world.instance(2).await.unwrap();
    let cut = world
        .app
        .ec2_events
        .handle(&warning(&running), world.now())
        .await
        .unwrap();
    assert!(
        matches!(&cut, Outcome::Done(m) if m.contains("cut")),
        "{cut:?}"
    );
    let state = head(attempt(2, 1)).await.state;
    assert_eq!(state.spot_warned.map(|(_, started)| started), Some(true));
    assert!(state.failure.is_none());
    assert_eq!(state.status(), RunnerStatus::Running);
    assert!(world.runs(&running).await, "EC2 reclaims it, not jitr");
    assert_eq!(world.drain_scaleup().await, 0, "no new attempt");
    assert!(world.store.head(&attempt(2, 2)).await.unwrap().is_none());
    world.assert_no_leak().await;

    // The job started on GitHub but its `in_progress` webhook has not arrived:
    // GitHub is asked first, and the job is recorded cut, not relaunched.
    world.queued(3).await.unwrap();
    let name = world.runner_name(3).await.unwrap();
    world
        .github
        .queue_job(&jitr_infra::QueuedJob {
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id: 3,
            run_id: 1003,
            labels: vec!["self-hosted".into(), "linux".into()],
            name: "build".into(),
        })
        .unwrap();
    world
        .github
        .set_job_status("acme", "widgets", 3, "in_progress", Some(&name))
        .unwrap();
    let third = world.instance(3).await.unwrap();
    let late = world
        .app
        .ec2_events
        .handle(&warning(&third), world.now())
        .await
        .unwrap();
    assert!(
        matches!(&late, Outcome::Done(m) if m.contains("cut")),
        "{late:?}"
    );
    let state = head(attempt(3, 1)).await.state;
    assert_eq!(state.spot_warned.map(|(_, started)| started), Some(true));
    assert!(state.job_started_at.is_some() && state.failure.is_none());
    assert!(world.runs(&third).await);
    assert_eq!(world.drain_scaleup().await, 0, "no new attempt");

    // The audit names the cut job and the replaced runner.
    let report = audit_now(&world).await;
    let seen: Vec<(StreamId, bool)> = report
        .spot_interruptions
        .iter()
        .map(|s| (s.stream.clone(), s.job_cut))
        .collect();
    assert_eq!(
        seen,
        [
            (attempt(1, 1), false),
            (attempt(2, 1), true),
            (attempt(3, 1), true)
        ]
    );
    let table = jitr_handlers::commands::audit::render(&report);
    assert!(
        table.contains("spot interruptions: 3 (1 before the job started, relaunched; 2 jobs cut)"),
        "{table}"
    );
    assert!(
        table.contains(&format!("cut: {} on {running}", attempt(2, 1))),
        "{table}"
    );
}

/// Quotas from the pool file's `[quotas]`: admission rounds know them from
/// the start, so a job past them waits without a single RunInstances refusal;
/// without them the first job past each quota learns it from EC2's refusal.
#[tokio::test]
async fn configured_quotas_spare_the_refusals_that_would_learn_them() {
    use jitr_domain::RunnerEvent;
    let settings = SimSettings {
        spot_vcpus: 8,
        on_demand_vcpus: 8,
        ..SimSettings::default()
    };
    for configured in [true, false] {
        let world = World::with_settings_and_policy(settings.clone(), |policy| {
            if configured {
                policy.quotas = vec![(Market::Spot, 8), (Market::OnDemand, 8)];
            }
        });
        for job in 1..=5 {
            world.queued(job).await.unwrap();
        }
        for job in 1..=4 {
            assert_eq!(world.status(job).await, RunnerStatus::Ready, "job {job}");
        }
        assert_eq!(world.status(5).await, RunnerStatus::Requested);
        let refused = world
            .store
            .read_all(0, 1_000_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| matches!(r.event, RunnerEvent::LaunchRejected { .. }))
            .count();
        if configured {
            assert_eq!(refused, 0, "the configured quotas are known");
        } else {
            assert_eq!(refused, 2, "each market's quota learnt once");
        }
    }
}

/// GitHub as it is, on a World: the job goes to the runner GitHub names.
async fn github_starts(world: &World, job_id: u64, runner: &str) {
    world
        .github
        .set_job_status("acme", "widgets", job_id, "in_progress", Some(runner))
        .unwrap();
    world
        .lifecycle
        .handle(
            &world.message("in_progress", job_id, Some(runner)),
            world.now(),
        )
        .await
        .unwrap();
}

/// Cancelled while queued: `completed` with no runner.
async fn github_cancels_queued(world: &World, job_id: u64) {
    world
        .github
        .set_job_status("acme", "widgets", job_id, "completed", None)
        .unwrap();
    let mut message = world.message("completed", job_id, None);
    message.conclusion = Some("cancelled".into());
    world.lifecycle.handle(&message, world.now()).await.unwrap();
}

/// Issue 23's scenario: jobs 1 and 2 queued, both runners ready; GitHub gives
/// job 2 to the runner launched for job 1, then job 1 is cancelled while
/// queued. Job 2's runner keeps running (past its boot deadline) until job 2
/// completes; the spare runner (launched for job 2, which runner 1 took) is
/// retired deregister-first; nothing leaks. Before, jitr terminated the runner
/// that ran job 2.
#[tokio::test]
async fn a_runner_running_another_jobs_job_outlives_its_own_jobs_cancellation() {
    let mut world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    world.queued(2).await.unwrap();
    let runner_1 = world.runner_name(1).await.unwrap();
    let runner_2 = world.runner_name(2).await.unwrap();
    github_starts(&world, 2, &runner_1).await;
    github_cancels_queued(&world, 1).await;
    assert_eq!(world.status(1).await, RunnerStatus::Running);
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    assert_eq!(head.state.assigned_job.map(|j| j.job_id), Some(2));
    assert_eq!(world.status(2).await, RunnerStatus::Ready);
    // Within the grace the spare runner is kept (an `in_progress` may be on
    // its way); after it, it is deregistered, then failed as surplus.
    let early = world.reap().await;
    assert!(early.surplus.retired.is_empty(), "{early:?}");
    world.advance(61);
    let swept = world.reap().await;
    assert_eq!(swept.surplus.retired, vec![world.stream(2)], "{swept:?}");
    assert!(!world.github.is_registered(&runner_2), "deregistered first");
    assert!(world.github.is_registered(&runner_1));
    world.project_and_compensate().await;
    assert_eq!(world.status(2).await, RunnerStatus::Failed);
    let head = world.store.head(&world.stream(2)).await.unwrap().unwrap();
    assert_eq!(
        head.state.failure.map(|f| f.stage),
        Some(jitr_domain::FailureStage::Surplus)
    );
    // Job 2 runs past runner 1's boot deadline: nothing is owed for it.
    for _ in 0..12 {
        world.advance(60);
        world.reap().await;
        let owed = world.project_and_compensate().await;
        assert!(owed.is_empty(), "{owed:?}");
    }
    let instance_1 = world.instance(1).await.unwrap();
    assert!(world.runs(&instance_1).await, "job 2's runner still runs");
    assert_eq!(world.status(1).await, RunnerStatus::Running);
    // Job 2 completes on runner 1: it drains and closes.
    world
        .github
        .set_job_status("acme", "widgets", 2, "completed", Some(&runner_1))
        .unwrap();
    world
        .lifecycle
        .handle(&world.message("completed", 2, Some(&runner_1)), world.now())
        .await
        .unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Draining);
    world.advance(200);
    world.project_and_compensate().await;
    assert_eq!(world.status(1).await, RunnerStatus::Completed);
    world.assert_no_leak().await;
}

/// A `completed` never applies to a runner that started another job.
#[tokio::test]
async fn a_completed_job_closes_only_the_runner_that_ran_it() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    world.queued(2).await.unwrap();
    let runner_1 = world.runner_name(1).await.unwrap();
    github_starts(&world, 2, &runner_1).await;
    // A `completed` for job 1 naming runner 1 (a confused or forged delivery):
    // runner 1 runs job 2, so it is ignored.
    let wrong = world
        .lifecycle
        .handle(&world.message("completed", 1, Some(&runner_1)), world.now())
        .await
        .unwrap();
    assert!(
        matches!(&wrong, Outcome::Done(m) if m.contains("runs job 2")),
        "{wrong:?}"
    );
    assert_eq!(world.status(1).await, RunnerStatus::Running);
}

/// A surplus runner GitHub refuses to deregister because it is busy (it took
/// a job whose `in_progress` has not arrived) is kept, the refusal recorded,
/// and its boot deadline no longer applies; a GitHub error other than busy is
/// retried, never read as idle.
#[tokio::test]
async fn a_surplus_runner_github_says_is_busy_is_kept() {
    let (mut world, faulty) = World::with_faulty_github();
    world.queued(1).await.unwrap();
    world.queued(2).await.unwrap();
    let runner_1 = world.runner_name(1).await.unwrap();
    let runner_2 = world.runner_name(2).await.unwrap();
    github_cancels_queued(&world, 1).await;
    github_cancels_queued(&world, 2).await;
    // GitHub gave runner 1 a job of another workflow; its webhook is late.
    world
        .github
        .set_job_status("acme", "widgets", 77, "in_progress", Some(&runner_1))
        .unwrap();
    world.advance(61);
    faulty.inject(jitr_infra::GitHubFault::DeletionsFail);
    let failing = world.reap().await;
    assert_eq!(
        failing.surplus.kept_busy,
        vec![world.stream(1)],
        "{failing:?}"
    );
    assert!(failing.surplus.retired.is_empty(), "{failing:?}");
    assert!(
        failing.errors.iter().any(|e| e.contains("502")),
        "{failing:?}"
    );
    assert_eq!(
        world.status(2).await,
        RunnerStatus::Ready,
        "not taken for idle"
    );
    assert!(world.github.is_registered(&runner_2));
    faulty.clear();
    let swept = world.reap().await;
    assert_eq!(swept.surplus.retired, vec![world.stream(2)], "{swept:?}");
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    assert!(head.state.busy_since.is_some());
    assert_eq!(head.status, RunnerStatus::Running);
    // Its boot deadline passes: it is kept.
    world.advance(700);
    world.reap().await;
    world.project_and_compensate().await;
    assert_eq!(world.status(1).await, RunnerStatus::Running);
    assert!(world.runs(&world.instance(1).await.unwrap()).await);
}

/// A boot-deadline termination for a runner whose job started meanwhile —
/// handled late, delivered twice, or redriven from the dead-letter queue — is
/// moot: nothing is recorded and the instance runs on.
#[tokio::test]
async fn a_terminate_runner_for_a_runner_that_took_a_job_since_is_moot() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    world.advance(11 * 60);
    let state = world
        .store
        .head(&world.stream(1))
        .await
        .unwrap()
        .unwrap()
        .state;
    let owed = jitr_domain::terminate_runner(&state, world.now()).expect("boot deadline");
    // The late `in_progress` arrives before the command is carried out.
    let runner = world.runner_name(1).await.unwrap();
    github_starts(&world, 1, &runner).await;
    for delivery in 0..3 {
        let outcome = world.compensation.handle(&owed, world.now()).await.unwrap();
        assert!(
            matches!(&outcome, Outcome::Done(m) if m.contains("moot")),
            "delivery {delivery}: {outcome:?}"
        );
    }
    assert_eq!(world.status(1).await, RunnerStatus::Running);
    let kinds: Vec<&str> = world
        .store
        .read_stream(&world.stream(1))
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect::<Vec<_>>();
    assert!(
        !kinds.contains(&"Failed") && !kinds.contains(&"TerminationRequested"),
        "{kinds:?}"
    );
    assert!(world.runs(&world.instance(1).await.unwrap()).await);
}

/// A boot-deadline termination of an idle registered runner deregisters it
/// first: GitHub refusing (busy: it took a job, webhook and poll say nothing
/// yet) keeps it.
#[tokio::test]
async fn a_boot_deadline_deregisters_first_and_keeps_a_busy_runner() {
    let mut world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    let runner = world.runner_name(1).await.unwrap();
    // GitHub gave it a job of another run; nothing told jitr.
    world
        .github
        .set_job_status("acme", "widgets", 99, "in_progress", Some(&runner))
        .unwrap();
    world.advance(11 * 60);
    world.project_and_compensate().await;
    world.reap().await;
    world.project_and_compensate().await;
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    assert!(head.state.failure.is_none(), "{:?}", head.state.failure);
    assert!(head.state.busy_since.is_some());
    assert!(world.runs(&world.instance(1).await.unwrap()).await);
}

/// The registration sweep never deletes the registration of an open runner,
/// whatever its state: one registered and handed its JIT config, whose
/// `TokenMinted` a crash kept from the log (the name index does not know it
/// yet), keeps its registration and can connect.
#[tokio::test]
async fn the_registration_sweep_keeps_a_runner_minted_before_its_record() {
    let world = World::new(SimSettings::default(), 4);
    world
        .scaleup
        .crash
        .arm(CrashPoint::AfterJitConfigHandedOver);
    let crashed = world.queued(1).await;
    assert!(
        matches!(crashed, Err(HandlerError::Crashed(_))),
        "{crashed:?}"
    );
    let name = world.stream(1).runner_name();
    assert!(world.github.is_registered(&name));
    assert_eq!(world.store.stream_of_runner(&name).await.unwrap(), None);
    world.advance(30);
    let report = world.reap().await;
    assert_eq!(report.registrations_removed, 0, "{report:?}");
    assert!(
        world.github.is_registered(&name),
        "the registration was kept"
    );
}

/// A job taken by a runner not of jitr's (another pool, another autoscaler)
/// while its own runner waits for capacity: that runner is withdrawn — closed
/// with nothing launched — and no admission round launches it.
#[tokio::test]
async fn a_waiting_runner_whose_job_another_runner_took_is_withdrawn_unlaunched() {
    let settings = SimSettings {
        spot_vcpus: 0,
        on_demand_vcpus: 0,
        ..SimSettings::default()
    };
    let world = World::new(settings, 4);
    world.queued(1).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Requested);
    world
        .lifecycle
        .handle(
            &world.message("in_progress", 1, Some("someone-elses-runner")),
            world.now(),
        )
        .await
        .unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    assert_eq!(
        head.state.failure.map(|f| f.stage),
        Some(jitr_domain::FailureStage::Surplus)
    );
    let round = world.scaleup.admit(None, world.now()).await.unwrap();
    assert_eq!((round.report.waiting, round.report.launched), (0, 0));
    assert!(world.live_instances().await.is_empty());
}

/// A spare runner still waiting for capacity — its job cancelled, but the
/// withdrawal that should follow never ran (a crash between the two) — is
/// withdrawn by the next admission round (ADR-0017), never launched.
#[tokio::test]
async fn an_admission_round_withdraws_a_spare_waiting_runner() {
    let settings = SimSettings {
        spot_vcpus: 0,
        on_demand_vcpus: 0,
        ..SimSettings::default()
    };
    let world = World::new(settings, 4);
    world.queued(1).await.unwrap();
    world.queued(2).await.unwrap();
    jitr_handlers::app::dispatch::dispatch(
        &*world.store,
        &world.stream(1),
        jitr_domain::Command::EndDemand {
            ending: jitr_domain::DemandEnding::Cancelled,
        },
        world.now(),
        &jitr_infra::CommandId::new("test:cancelled"),
    )
    .await
    .unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Requested);
    let intents = |events: &[jitr_infra::RecordedEvent]| {
        kinds(events)
            .iter()
            .filter(|k| **k == "LaunchIntended")
            .count()
    };
    let before = intents(&world.store.read_stream(&world.stream(1)).await.unwrap());
    world.advance(5);
    let round = world.scaleup.admit(None, world.now()).await.unwrap();
    assert_eq!(
        (
            round.report.withdrawn,
            round.report.waiting,
            round.report.launched
        ),
        (1, 1, 0),
        "{round:?}"
    );
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Failed);
    assert_eq!(
        head.state.failure.as_ref().map(|f| f.stage),
        Some(jitr_domain::FailureStage::Surplus)
    );
    let after = intents(&world.store.read_stream(&world.stream(1)).await.unwrap());
    assert_eq!(before, after, "no launch tried for it");
    assert!(head.state.instance().is_none());
    // The runner standing for job 2 still waits.
    assert_eq!(world.status(2).await, RunnerStatus::Requested);
    assert!(world.live_instances().await.is_empty());
}

/// Issue 24: the reaper's sweep, once a minute, counts the terminations owed
/// and how long the oldest has been owed (the figure the CloudWatch alarm on
/// the promise reads, also when the log is quiet and the projector idle).
#[tokio::test]
async fn the_reaper_reports_how_long_the_oldest_termination_has_been_owed() {
    let world = World::new(SimSettings::default(), 4);
    let quiet = world.reap().await;
    assert_eq!((quiet.owed_terminations, quiet.oldest_owed_ms), (0, 0));
    world.github.fail_next_mints(&[422]);
    world.queued(1).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Terminating);
    // Nothing compensates it (no projector ran): 11 minutes later.
    world.advance(660);
    let late = world.reap().await;
    assert_eq!(late.owed_terminations, 1, "{late:?}");
    assert_eq!(late.oldest_owed_ms, 660_000);
}

/// Issue 24: an account without the EC2 Spot service-linked role refuses
/// every spot launch (`AuthFailure.ServiceLinkedRoleCreationNotPermitted`).
/// The runner is launched on demand in the same delivery — not failed, not
/// left waiting — and the next job does not try spot again.
#[tokio::test]
async fn without_the_spot_service_linked_role_runners_launch_on_demand() {
    let (world, ec2) = World::with_faults(SimSettings::default(), 4);
    ec2.inject(
        jitr_infra::Fault::RejectLaunch {
            market: Some(Market::Spot),
            code: "AuthFailure.ServiceLinkedRoleCreationNotPermitted".into(),
        },
        None,
    );
    for job in [1, 2] {
        world.queued(job).await.unwrap();
        assert_eq!(world.status(job).await, RunnerStatus::Ready, "job {job}");
    }
    let events = world.store.read_stream(&world.stream(1)).await.unwrap();
    assert_eq!(
        kinds(&events)[..6],
        [
            "Requested",
            "LaunchIntended",
            "LaunchRejected",
            "LaunchIntended",
            "Launched",
            "TokenMinted"
        ]
    );
    let markets: Vec<Market> = events
        .iter()
        .filter_map(|r| match &r.event {
            jitr_domain::RunnerEvent::LaunchIntended { market, .. } => Some(*market),
            _ => None,
        })
        .collect();
    assert_eq!(markets, [Market::Spot, Market::OnDemand]);
    let second = world.store.read_stream(&world.stream(2)).await.unwrap();
    assert_eq!(
        kinds(&second)
            .iter()
            .filter(|k| **k == "LaunchIntended")
            .count(),
        1,
        "the second job goes on demand at once"
    );
}

/// Registers runners named `names` in `acme/widgets`, as someone else would.
async fn register_in_widgets(world: &World, names: impl Iterator<Item = String>) {
    use jitr_infra::{GitHub, JitRequest, RunnerScope};
    let scope = RunnerScope::Repo {
        owner: "acme".into(),
        repo: "widgets".into(),
    };
    for name in names {
        let request = JitRequest {
            scope: scope.clone(),
            name,
            runner_group_id: 1,
            labels: vec!["self-hosted".into()],
            work_folder: "_work".into(),
        };
        world.github.generate_jit_config(1, &request).await.unwrap();
    }
}

/// Issue 25: a runner's registration is looked up and removed by the id
/// GitHub gave it, never by walking the scope's listing. With 3,000 runners
/// registered in the repository (30 pages of GitHub's listing), the
/// compensation after a job spends at most 2 requests.
#[tokio::test]
async fn a_compensation_spends_at_most_two_github_requests_among_3000_runners() {
    use jitr_infra::GitHub;
    let mut world = World::new(SimSettings::default(), 4);
    register_in_widgets(&world, (0..3_000).map(|n| format!("someone-elses-{n}"))).await;
    world.queued(1).await.unwrap();
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    assert!(head.state.runner_id.is_some(), "the id GitHub gave is kept");
    world.advance(30);
    world.lifecycle("in_progress", 1).await;
    world.advance(300);
    world.lifecycle("completed", 1).await;
    world.advance(121);
    let before = world.github.usage(1).sent;
    let compensated = world.project_and_compensate().await;
    assert_eq!(compensated.len(), 1);
    let spent = world.github.usage(1).sent - before;
    assert!(spent <= 2, "{spent} GitHub requests for one compensation");
    assert!(
        !world.github.is_registered(&head.state.runner_name.unwrap()),
        "the registration is removed"
    );
    world.assert_no_leak().await;
}

/// Issue 25: the registration sweep pages GitHub's listing within the
/// background request budget and resumes where it stopped. 3,000 registrations
/// in the repository's scope (30 pages): 250 stale ones named by jitr, whose
/// streams the log does not know, among 2,750 of someone else's. Each sweep
/// reads at most 5 pages; the next goes on from the page after, in a new
/// process too; with the budget spent it reads nothing and loses nothing.
/// (Before: every sweep read all 30 pages.)
#[tokio::test]
async fn the_registration_sweep_pages_within_the_budget_and_resumes_where_it_stopped() {
    use jitr_infra::GitHub;
    let mut world = World::new(SimSettings::default(), 4);
    let stale = |n: usize| n % 12 == 0;
    let name = |n: usize| {
        if stale(n) {
            format!("{}{}-1", jitr_domain::runner_name_prefix(None), 900_000 + n)
        } else {
            format!("someone-elses-{n}")
        }
    };
    register_in_widgets(&world, (0..3_000).map(name)).await;
    // An open runner of the scope, running its job: the scope is swept.
    queued_on_github(&world, 1);
    world.queued(1).await.unwrap();
    let runner = world.runner_name(1).await.unwrap();
    github_starts(&world, 1, &runner).await;
    let remaining = |world: &World| {
        (0..3_000)
            .filter(|n| world.github.is_registered(&name(*n)))
            .count()
    };
    // One sweep: the pages it read (every request but removals and job
    // polls) and the registrations it removed.
    async fn sweep(world: &World) -> (u64, usize) {
        let before = world.github.usage(1).sent;
        world.advance(60);
        let report = world.reap().await;
        let spent = world.github.usage(1).sent - before;
        assert_eq!(
            spent,
            (report.registration_pages + report.registrations_removed + report.jobs_polled) as u64,
            "{report:?}"
        );
        (
            report.registration_pages as u64,
            report.registrations_removed,
        )
    }

    // Pages 1–5: the stale among the first 500 registrations (42, less those
    // the sweep's own removals moved to an earlier page it had read).
    let (pages, removed) = sweep(&world).await;
    assert_eq!(pages, 5);
    assert!((38..=42).contains(&removed), "{removed}");
    // A new process goes on from page 6 (a sweep from page 1 would find the
    // 4 stale ones the removals moved into page 5).
    world = world.restart();
    let (pages, removed) = sweep(&world).await;
    assert_eq!(pages, 5);
    assert!(removed >= 40, "went on from page 6: {removed} removed");

    // The budget spent: nothing read, nothing lost; the next hour goes on.
    world.app.budget.charge(1, world.now(), 10_000);
    let report = {
        world.advance(60);
        world.reap().await
    };
    assert_eq!(report.registration_pages, 0, "{report:?}");
    assert_eq!(report.registration_scopes_deferred, 1, "{report:?}");
    world.advance(3_600);

    // Passes go on, 5 pages a sweep, until every stale registration is gone
    // and no one else's.
    let mut sweeps = 0;
    while remaining(&world) > 2_750 {
        let (pages, _) = sweep(&world).await;
        assert!(pages <= 5);
        sweeps += 1;
        assert!(sweeps <= 12, "{} stale left", remaining(&world) - 2_750);
    }
    assert_eq!(remaining(&world), 2_750);
    assert!(world.github.is_registered(&runner));
    assert_eq!(world.status(1).await, RunnerStatus::Running);
}

/// Issue 25: a lifecycle event is authorised by the runner id GitHub sends
/// (`workflow_job.runner_id`), not only by jitr's predictable runner name: a
/// runner registered under jitr's name by someone else has another id, and an
/// event naming it does not move jitr's runner.
#[tokio::test]
async fn a_lifecycle_event_naming_another_registration_under_jitrs_name_is_refused() {
    let world = World::new(SimSettings::default(), 4);
    world.queued(1).await.unwrap();
    let head = world.store.head(&world.stream(1)).await.unwrap().unwrap();
    let (name, ours) = (
        head.state.runner_name.clone().unwrap(),
        head.state.runner_id.unwrap(),
    );
    let mut impostor = world.message("in_progress", 1, Some(&name));
    impostor.runner_id = Some(ours + 1000);
    let outcome = world
        .lifecycle
        .handle(&impostor, world.now())
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Done(m) if m.contains(&format!("jitr registered {name:?} as {ours}"))),
        "{outcome:?}"
    );
    assert_eq!(world.status(1).await, RunnerStatus::Ready, "not moved");
    let mut genuine = world.message("in_progress", 1, Some(&name));
    genuine.runner_id = Some(ours);
    world.lifecycle.handle(&genuine, world.now()).await.unwrap();
    assert_eq!(world.status(1).await, RunnerStatus::Running);
}

/// Issue 26 (ADR-0022): a pool keeping two runners warm. With no webhook, one
/// sweep asks for two runners of no job; they launch and register, idle. A
/// queued job taken by one of them leaves two idle runners (the other warm one
/// and the job's own, now spare): nothing more is launched. Lowering the floor
/// to 0 retires the surplus deregister-first; the busy one is kept.
#[tokio::test]
async fn a_warm_pool_keeps_its_idle_runners_and_retires_them_when_the_floor_drops() {
    use jitr_handlers::app::policy::Warmth;
    let world = World::with_policy(|policy| {
        policy.pools[0].warm = Warmth {
            schedule: jitr_domain::WarmSchedule {
                min_idle: 2,
                windows: Vec::new(),
            },
            max_idle_ms: None,
            warm_for: Some(("acme".into(), "widgets".into())),
            stopped: false,
        };
    });
    let report = world.reap().await;
    assert_eq!(report.warm_asked.len(), 2, "{report:?}");
    world.drain_scaleup().await;
    let mut warm = Vec::new();
    for stream in &report.warm_asked {
        let head = world.store.head(stream).await.unwrap().expect("requested");
        assert!(head.state.is_warm());
        assert_eq!(head.status, RunnerStatus::Ready, "{stream}");
        let name = head.state.runner_name.clone().expect("registered");
        assert!(world.github.is_registered(&name));
        warm.push((stream.clone(), name));
    }
    assert_eq!(world.live_instances().await.len(), 2);
    world.advance(60);
    assert!(world.reap().await.warm_asked.is_empty(), "the floor holds");

    // A job: its own runner launches; GitHub gives the job to a warm one.
    queued_on_github(&world, 1);
    world.queued(1).await.unwrap();
    github_starts(&world, 1, &warm[0].1).await;
    let taker = world.store.head(&warm[0].0).await.unwrap().unwrap();
    assert_eq!(taker.status, RunnerStatus::Running);
    world.advance(60);
    let report = world.reap().await;
    assert!(report.warm_asked.is_empty(), "two idle already: {report:?}");
    assert!(report.surplus.retired.is_empty(), "{report:?}");
    assert_eq!(world.live_instances().await.len(), 3);

    // The floor lowered to 0: the two idle ones are surplus.
    let world = world.restart_with(|policy| {
        policy.pools[0].warm.schedule.min_idle = 0;
    });
    world.advance(120);
    let report = world.reap().await;
    assert_eq!(report.surplus.retired.len(), 2, "{report:?}");
    assert!(!report.surplus.retired.contains(&warm[0].0));
    assert!(
        !world.github.is_registered(&warm[1].1),
        "deregistered first"
    );
    assert_eq!(
        world.store.head(&warm[0].0).await.unwrap().unwrap().status,
        RunnerStatus::Running
    );
}

/// Issue 26 (ADR-0022): a stopped pool. One sweep asks for a runner of no job;
/// it launches and is not minted. Once it has run for the preparation time the
/// reaper stops it, and records `Parked` when EC2 says it is stopped (its vCPUs
/// free). A queued job wakes it: EC2 starts it, it stands for the job and is
/// minted; the job's own runner stands aside with nothing launched. The floor
/// asks for a new parked runner. It runs the job and is terminated as any
/// runner is.
#[tokio::test]
async fn a_stopped_pool_parks_a_booted_runner_and_wakes_it_for_a_job() {
    use jitr_handlers::app::policy::Warmth;
    use jitr_handlers::app::supply::PREPARE_MS;
    let world = World::with_policy(|policy| {
        policy.pools[0].warm = Warmth {
            schedule: jitr_domain::WarmSchedule {
                min_idle: 1,
                windows: Vec::new(),
            },
            max_idle_ms: None,
            warm_for: Some(("acme".into(), "widgets".into())),
            stopped: true,
        };
    });
    let report = world.reap().await;
    assert_eq!(report.warm_asked.len(), 1, "{report:?}");
    let parked = report.warm_asked[0].clone();
    world.drain_scaleup().await;
    let head = world.store.head(&parked).await.unwrap().unwrap();
    assert!(head.state.is_parking(), "{:?}", head.state);
    assert_eq!(head.status, RunnerStatus::Booting, "launched, not minted");
    let instance = head.instance_id.clone().expect("launched");
    assert!(!world.github.is_registered(&parked.runner_name()));
    // Booting: left to finish its first boot; the floor counts it.
    world.advance(30);
    let report = world.reap().await;
    assert!(
        report.stopping.is_empty() && report.warm_asked.is_empty(),
        "{report:?}"
    );
    world.advance(PREPARE_MS / 1000);
    assert_eq!(world.reap().await.stopping, vec![parked.clone()]);
    world.advance(10);
    let report = world.reap().await;
    assert_eq!(report.parked, vec![parked.clone()], "{report:?}");
    assert!(report.warm_asked.is_empty(), "the floor holds: {report:?}");
    assert_eq!(
        world.cloud.vcpus_in_use(jitr_domain::Market::Spot).unwrap(),
        0
    );
    assert_eq!(
        world
            .cloud
            .vcpus_in_use(jitr_domain::Market::OnDemand)
            .unwrap(),
        0
    );
    // Parked for hours: no deadline but its max age.
    world.advance(3 * 3600);
    let report = world.reap().await;
    assert!(report.surplus.withdrawn.is_empty(), "{report:?}");
    assert_eq!(
        world
            .store
            .head(&parked)
            .await
            .unwrap()
            .unwrap()
            .state
            .failure,
        None
    );

    // A job wakes it; the job's own runner stands aside, nothing launched.
    queued_on_github(&world, 1);
    world.queued(1).await.unwrap();
    world.drain_scaleup().await;
    let woken = world.store.head(&parked).await.unwrap().unwrap();
    assert!(woken.state.woken_at.is_some());
    assert_eq!(woken.status, RunnerStatus::Ready, "minted after the start");
    assert_eq!(woken.state.demand_job().map(|j| j.job_id), Some(1));
    assert!(world.runs(&instance).await, "started again");
    assert_eq!(world.status(1).await, RunnerStatus::Failed, "stood aside");
    assert!(world.instance(1).await.is_none(), "nothing launched for it");
    let name = woken.state.runner_name.clone().unwrap();
    assert!(world.github.is_registered(&name));
    // The floor asks for another parked runner.
    world.advance(60);
    assert_eq!(world.reap().await.warm_asked.len(), 1);

    // The job runs on it and completes; its instance is terminated.
    github_starts(&world, 1, &name).await;
    assert_eq!(
        world.store.head(&parked).await.unwrap().unwrap().status,
        RunnerStatus::Running
    );
}

/// Issue 26 (ADR-0022): a stopped instance is still an instance. One that no
/// open stream owns (a stream the log never saw, stopped by hand) holds no
/// vCPU quota, but it is a leak all the same: the reaper terminates it.
#[tokio::test]
async fn a_stopped_instance_no_stream_owns_is_terminated_as_a_leak() {
    let world = World::new(SimSettings::default(), 2);
    let stream = world.stream(99);
    let spec = LaunchSpec {
        client_token: ClientToken::derive(&stream, 1),
        stream,
        market: Market::OnDemand,
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
        image: "ami-sim".into(),
        user_data: None,
        settings: Default::default(),
    };
    let instance = world.cloud.launch(&spec).await.unwrap().instance_id;
    world.advance(30);
    world.cloud.stop(&instance).await.unwrap();
    world.advance(10);
    let listed = world.live_instances().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, jitr_infra::InstanceState::Stopped);
    assert_eq!(world.cloud.vcpus_in_use(Market::OnDemand).unwrap(), 0);
    world.advance(121);
    let report = world.reap().await;
    let terminated: Vec<_> = report.orphans_terminated.iter().map(|(id, _)| id).collect();
    assert_eq!(terminated, vec![&instance], "{report:?}");
    assert!(world.live_instances().await.is_empty());
}

/// The audit of the whole log as of the world's clock.
async fn audit_now(world: &World) -> jitr_handlers::commands::audit::AuditReport {
    use jitr_handlers::commands::audit;
    let window = audit::AuditWindow {
        since: None,
        as_of: world.now(),
        deadline_ms: 60_000,
        orphan_grace_ms: 60_000,
    };
    audit::audit(&*world.store, window, Some(world.now()), false, |_| {})
        .await
        .unwrap()
}
