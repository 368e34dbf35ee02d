use jitr_domain::{
    Command, Deadlines, InstanceId, InstanceSpec, JobRef, Market, RunnerEvent, RunnerState,
    TerminationEvidence, execute,
};
use proptest::prelude::*;

use super::*;

const T0: i64 = 1_777_868_520_000;

fn at(secs: i64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

/// A job of `acme/widgets` (the projections' tests share it).
pub(crate) fn job(id: u64) -> JobRef {
    JobRef {
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id: id,
        run_id: 1,
    }
}

fn stream(id: u64) -> StreamId {
    StreamId::for_job(&job(id), 1).expect("a stream id of a valid repository")
}

/// What a runner goes through in these tests.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// Launched, job ran, completed, terminated.
    Done,
    /// Launched then failed: owes a termination.
    FailedAfterLaunch,
    /// Launched on-demand and running.
    Running,
    /// Completed, still draining.
    Draining,
    /// Never launched, failed.
    FailedEarly,
}

fn history(id: u64, path: Path) -> Vec<RunnerEvent> {
    let mut state = RunnerState::default();
    let mut log = Vec::new();
    let mut step = |state: &mut RunnerState, command: Command, secs: i64| {
        let (next, events) = execute(state, command, at(secs)).expect("accepted");
        *state = next;
        log.extend(events);
    };
    step(
        &mut state,
        Command::Request {
            job: job(id),
            attempt: 1,
            labels: vec!["self-hosted".into()],
            spec: InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami-1".into(),
                pool: None,
                avoid_spot: Vec::new(),
                park: false,
            },
            deadlines: Deadlines::default(),
            installation: None,
            deployment: None,
        },
        0,
    );
    if matches!(path, Path::FailedEarly) {
        step(
            &mut state,
            Command::Fail {
                stage: FailureStage::Launch,
                reason: "quota".into(),
            },
            1,
        );
        return log;
    }
    let market = if matches!(path, Path::Running) {
        Market::OnDemand
    } else {
        Market::Spot
    };
    step(&mut state, Command::IntendLaunch { market }, 1);
    let token = state.pending_launch().cloned().unwrap();
    step(
        &mut state,
        Command::RecordLaunch {
            client_token: token,
            instance_id: InstanceId(format!("i-{id}")),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
        },
        2,
    );
    if matches!(path, Path::FailedAfterLaunch) {
        step(
            &mut state,
            Command::Fail {
                stage: FailureStage::Token,
                reason: "mint failed".into(),
            },
            3,
        );
        return log;
    }
    step(&mut state, Command::StartJob { job: None }, 3);
    if matches!(path, Path::Running) {
        return log;
    }
    step(
        &mut state,
        Command::CompleteJob {
            conclusion: None,
            job: None,
        },
        4,
    );
    if matches!(path, Path::Done) {
        step(
            &mut state,
            Command::ConfirmTerminated {
                instance_id: Some(InstanceId(format!("i-{id}"))),
                evidence: TerminationEvidence::ReportedTerminated,
            },
            5,
        );
    }
    log
}

/// Interleaves several runners' histories into one feed with global positions.
fn feed(runners: &[(u64, Path)]) -> Vec<(u64, StreamId, RunnerEvent)> {
    let histories: Vec<(StreamId, Vec<RunnerEvent>)> = runners
        .iter()
        .map(|(id, path)| (stream(*id), history(*id, *path)))
        .collect();
    let mut out = Vec::new();
    let longest = histories.iter().map(|(_, h)| h.len()).max().unwrap_or(0);
    for i in 0..longest {
        for (s, h) in &histories {
            if let Some(e) = h.get(i) {
                out.push((out.len() as u64 + 1, s.clone(), e.clone()));
            }
        }
    }
    out
}

fn mixed() -> Vec<(u64, Path)> {
    vec![
        (1, Path::Done),
        (2, Path::FailedAfterLaunch),
        (3, Path::Running),
        (4, Path::Draining),
        (5, Path::FailedEarly),
    ]
}

#[test]
fn views_show_statuses_fleet_and_leaks() {
    let mut views = RunnerViews::default();
    for (p, s, e) in feed(&mixed()) {
        views.apply(p, &s, &e);
    }
    // Closed runners are counted, not kept.
    assert_eq!(views.status(&stream(1)), None);
    assert_eq!(views.status(&stream(2)), Some(RunnerStatus::Terminating));
    assert_eq!(views.status(&stream(3)), Some(RunnerStatus::Running));
    assert_eq!(views.status(&stream(4)), Some(RunnerStatus::Draining));
    assert_eq!(views.status(&stream(5)), None);
    assert_eq!(
        views.closed,
        [(RunnerStatus::Completed, 1), (RunnerStatus::Failed, 1)].into()
    );
    assert_eq!(views.closed_count(), 2);
    assert_eq!(views.by_status().values().sum::<u64>(), 5);
    // Metrics' figures: by pool and status, launches, terminations' evidence.
    let by_pool: Vec<(String, RunnerStatus, u64)> = views
        .by_pool_and_status()
        .into_iter()
        .map(|((pool, status), n)| (pool, status, n))
        .collect();
    assert_eq!(
        by_pool,
        vec![
            ("default".into(), RunnerStatus::Running, 1),
            ("default".into(), RunnerStatus::Draining, 1),
            ("default".into(), RunnerStatus::Terminating, 1),
            ("default".into(), RunnerStatus::Completed, 1),
            ("default".into(), RunnerStatus::Failed, 1),
        ]
    );
    assert_eq!(
        views.launched,
        [
            (Market::Spot, [("c5.xlarge".to_owned(), 3)].into()),
            (Market::OnDemand, [("c5.xlarge".to_owned(), 1)].into()),
        ]
        .into()
    );
    assert_eq!(
        views.terminated_by,
        [(TerminationEvidence::ReportedTerminated, 1)].into()
    );
    let fleet = views.fleet();
    assert_eq!(
        fleet.spot,
        MarketUsage {
            instances: 2,
            vcpus: 8
        }
    );
    assert_eq!(
        fleet.on_demand,
        MarketUsage {
            instances: 1,
            vcpus: 4
        }
    );
    // Before the drain grace is over, only the failed runner owes a termination.
    let leaks = views.open_leaks(at(10));
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].stream, stream(2));
    assert_eq!(leaks[0].owed_since, at(3));
    // After it, the draining one too.
    let later = views.open_leaks(at(4 + 120));
    let streams: Vec<_> = later.iter().map(|l| l.stream.clone()).collect();
    assert_eq!(streams, vec![stream(2), stream(4)]);
}

#[test]
fn a_redelivered_feed_changes_nothing() {
    let events = feed(&mixed());
    let mut once = RunnerViews::default();
    for (p, s, e) in &events {
        once.apply(*p, s, e);
    }
    let mut twice = once.clone();
    for (p, s, e) in &events {
        twice.apply(*p, s, e);
    }
    assert_eq!(once, twice);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Folding the feed as the projector receives it — in random pages that
    /// overlap the previous page (an at-least-once feed redelivers), each resumed
    /// from a snapshot round trip — equals one rebuild from scratch.
    #[test]
    fn incremental_with_redelivery_equals_rebuild(
        paths in prop::collection::vec(0usize..5, 1..12),
        pages in prop::collection::vec((1usize..8, 0usize..6), 1..10),
    ) {
        let all = [Path::Done, Path::FailedAfterLaunch, Path::Running, Path::Draining, Path::FailedEarly];
        let runners: Vec<(u64, Path)> =
            paths.iter().enumerate().map(|(i, p)| (i as u64 + 1, all[*p])).collect();
        let events = feed(&runners);
        let mut rebuilt = RunnerViews::default();
        for (p, s, e) in &events {
            rebuilt.apply(*p, s, e);
        }
        let mut incremental = RunnerViews::default();
        let mut next = 0;
        let mut page = pages.iter().cycle();
        while next < events.len() {
            let (len, overlap) = *page.next().unwrap();
            let start = next.saturating_sub(overlap);
            let end = (next + len).min(events.len());
            for (p, s, e) in &events[start..end] {
                incremental.apply(*p, s, e);
            }
            let json = serde_json::to_vec(&incremental).unwrap();
            incremental = serde_json::from_slice(&json).unwrap();
            next = end;
        }
        prop_assert_eq!(incremental, rebuilt);
    }
}

#[test]
fn compensation_is_emitted_once_then_again_only_when_due() {
    let mut views = RunnerViews::default();
    for (p, s, e) in feed(&mixed()) {
        views.apply(p, &s, &e);
    }
    let mut policy = CompensationPolicy::new(60_000);
    let first = policy.due(&views, at(10));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].stream, stream(2));
    assert_eq!(first[0].instance_id, Some(InstanceId("i-2".into())));
    assert!(policy.due(&views, at(20)).is_empty());
    // Still owed a minute later: emitted again (at-least-once).
    assert_eq!(policy.due(&views, at(70)).len(), 1);
    // A restarted policy re-emits everything still owed.
    let mut restarted = CompensationPolicy::new(60_000);
    assert_eq!(restarted.due(&views, at(71)).len(), 1);
}

#[test]
fn nothing_is_emitted_for_a_terminated_runner() {
    let mut views = RunnerViews::default();
    let mut events = feed(&[(2, Path::FailedAfterLaunch)]);
    let next = events.len() as u64 + 1;
    events.push((
        next,
        stream(2),
        RunnerEvent::Terminated {
            at: at(9),
            instance_id: Some(InstanceId("i-2".into())),
            evidence: TerminationEvidence::ReportedTerminated,
        },
    ));
    for (p, s, e) in &events {
        views.apply(*p, s, e);
    }
    assert_eq!(views.status(&stream(2)), None, "closed");
    assert_eq!(views.closed.get(&RunnerStatus::Failed), Some(&1));
    assert!(CompensationPolicy::new(0).due(&views, at(99)).is_empty());
    assert!(views.open_leaks(at(99)).is_empty());
}

/// The views do not grow with history: a thousand closed runners leave only
/// their counts, and an event for a closed stream is counted, not folded.
#[test]
fn closed_runners_are_counted_not_kept() {
    let mut views = RunnerViews::default();
    let runners: Vec<(u64, Path)> = (1..=1000).map(|n| (n, Path::Done)).collect();
    let events = feed(&runners);
    for (p, s, e) in &events {
        views.apply(*p, s, e);
    }
    assert!(views.open.is_empty());
    assert_eq!(views.closed_count(), 1000);
    let small = serde_json::to_vec(&views).unwrap().len();
    // Counts by pool, status, market, type and evidence: bounded by those,
    // not by the number of runners.
    assert!(small < 400, "{small} bytes for 1000 closed runners");
    views.apply(
        events.len() as u64 + 1,
        &stream(7),
        &RunnerEvent::JobStarted {
            at: at(99),
            source: Default::default(),
            job: None,
        },
    );
    assert_eq!(views.after_close, 1);
    assert!(views.open.is_empty());
}

/// The audit's chart: each instance in its market's band at each moment —
/// legitimate, owed within the grace, orphaned — and nothing once gone.
#[test]
fn the_vcpu_series_puts_each_instance_in_its_band() {
    use crate::accounting::{Ledger, VcpuBands};
    let mut ledger = Ledger::default();
    for (_, s, e) in feed(&mixed()) {
        ledger.apply(&s, &e, None);
    }
    // One sample a second from 0 to 200 s.
    let series = ledger.vcpu_series(at(0), at(200), 201, 60_000);
    let bands = |secs: usize| (series[secs].on_demand, series[secs].spot);
    let b = |legitimate, owed, orphaned| VcpuBands {
        legitimate,
        owed,
        orphaned,
    };
    // Before the launches at 2 s: nothing.
    assert_eq!(bands(1), (b(0, 0, 0), b(0, 0, 0)));
    // 10 s: the on-demand runner runs; on spot the draining one is wanted,
    // the one that failed at 3 s is owed (grace 60 s), the done one is gone.
    assert_eq!(bands(10), (b(4, 0, 0), b(4, 4, 0)));
    // 100 s: the failed one is an orphan.
    assert_eq!(bands(100), (b(4, 0, 0), b(4, 0, 4)));
    // 150 s: the draining one's grace ended at 124 s: owed.
    assert_eq!(bands(150), (b(4, 0, 0), b(0, 4, 4)));
    // 190 s: both orphans.
    assert_eq!(bands(190), (b(4, 0, 0), b(0, 0, 8)));
    let owed = ledger.owed_records(at(200));
    let streams: Vec<_> = owed.iter().map(|o| o.stream.clone()).collect();
    assert_eq!(streams, vec![stream(2), stream(4)]);
    assert!(owed.iter().all(|o| o.terminated_ms.is_none()));
}
