//! Given / when / then: admission rounds (ADR-0014, ADR-0017). Given the pools,
//! the open runners, the instances shutting down and the capacity ledger; when
//! a round runs and EC2 answers each launch as the test says; then the steps,
//! the ledger and the figures the round leaves.

use jitr_domain::*;

const T0: i64 = 1_780_000_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn job(repo: &str, id: u64) -> JobRef {
    JobRef {
        owner: "acme".into(),
        repo: repo.into(),
        job_id: id,
        run_id: 7,
    }
}

fn stream(repo: &str, id: u64) -> StreamId {
    StreamId::for_job(&job(repo, id), 1).unwrap()
}

fn linux() -> PoolLimits {
    PoolLimits {
        name: "linux".into(),
        max_vcpus: None,
        instance_types: vec!["c5.xlarge".into(), "c5a.xlarge".into()],
        spot: true,
        min_idle: 0,
        stopped: false,
    }
}

fn arm() -> PoolLimits {
    PoolLimits {
        name: "arm".into(),
        max_vcpus: None,
        instance_types: vec!["c7g.xlarge".into()],
        spot: true,
        min_idle: 0,
        stopped: false,
    }
}

/// A runner of `pool` requested at `secs` for job `id` of `repo`.
struct Runner {
    repo: String,
    id: u64,
    events: Vec<RunnerEvent>,
}

impl Runner {
    fn waiting(repo: &str, id: u64, pool: &str, secs: i64) -> Runner {
        Runner {
            repo: repo.into(),
            id,
            events: vec![RunnerEvent::Requested {
                at: at(secs),
                job: job(repo, id),
                attempt: 1,
                labels: vec!["self-hosted".into(), pool.into()],
                spec: InstanceSpec {
                    instance_type: "c5.xlarge".into(),
                    vcpus: 4,
                    image: "ami".into(),
                    pool: Some(pool.into()),
                    avoid_spot: Vec::new(),
                    park: false,
                },
                deadlines: Deadlines::default(),
                installation: None,
                deployment: None,
            }],
        }
    }

    /// Running on an instance of `market` since `secs`.
    fn running(repo: &str, id: u64, pool: &str, market: Market, secs: i64) -> Runner {
        let mut runner = Runner::waiting(repo, id, pool, secs);
        let token = ClientToken::derive(&runner.stream(), 1);
        runner.events.push(RunnerEvent::LaunchIntended {
            at: at(secs),
            client_token: token.clone(),
            market,
        });
        runner.events.push(RunnerEvent::Launched {
            at: at(secs),
            client_token: token,
            instance_id: InstanceId(format!("i-{repo}-{id}")),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            market,
        });
        runner
    }

    fn avoiding_spot_of(mut self, instance_type: &str) -> Runner {
        if let Some(RunnerEvent::Requested { spec, .. }) = self.events.first_mut() {
            spec.avoid_spot.push(instance_type.into());
        }
        self
    }

    fn cancelled(mut self, secs: i64) -> Runner {
        self.events.push(RunnerEvent::DemandEnded {
            at: at(secs),
            ending: DemandEnding::Cancelled,
        });
        self
    }

    fn stream(&self) -> StreamId {
        stream(&self.repo, self.id)
    }

    fn state(&self) -> RunnerState {
        fold(&self.events)
    }
}

/// What is given to a round.
struct Given {
    pools: Vec<PoolLimits>,
    runners: Vec<Runner>,
    shutting_down: Vec<ShuttingDownInstance>,
    ledger: CapacityLedger,
    own: Option<StreamId>,
}

fn given(pools: Vec<PoolLimits>, runners: Vec<Runner>) -> Given {
    Given {
        pools,
        runners,
        shutting_down: Vec::new(),
        ledger: CapacityLedger::default(),
        own: None,
    }
}

/// A round's steps, with the result EC2 gave each launch.
#[derive(Debug, PartialEq, Eq)]
enum Then {
    Withdraw(StreamId),
    Launch(StreamId, Market, &'static str, Answer),
    HandOver(StreamId, u64),
    Fail(StreamId, String),
    Wait(StreamId, String),
}

/// How EC2 answers a launch in the test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    Quota,
    Capacity,
    Invalid,
    NoSpotRole,
    Silent,
    Superseded,
}

fn result(answer: Answer, market: Market) -> LaunchResult {
    let refused = |class, code: &str| LaunchResult::Refused {
        class,
        code: code.into(),
        message: format!("EC2 says {code}"),
    };
    match answer {
        Answer::Ok => LaunchResult::Launched { market, vcpus: 4 },
        Answer::Quota => refused(LaunchErrorClass::Quota, "VcpuLimitExceeded"),
        Answer::Capacity => refused(LaunchErrorClass::Capacity, "InsufficientInstanceCapacity"),
        Answer::Invalid => refused(LaunchErrorClass::InvalidRequest, "InvalidAMIID.NotFound"),
        Answer::NoSpotRole => refused(
            LaunchErrorClass::InvalidRequest,
            "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
        ),
        Answer::Silent => LaunchResult::Unknown,
        Answer::Superseded => LaunchResult::Superseded,
    }
}

fn type_name(name: &str) -> &'static str {
    match name {
        "c5.xlarge" => "c5.xlarge",
        "c5a.xlarge" => "c5a.xlarge",
        "c7g.xlarge" => "c7g.xlarge",
        other => panic!("unexpected type {other}"),
    }
}

/// Runs a round over `given` at `now`, EC2 answering each launch by `ec2`.
fn when_round(
    given: Given,
    now: i64,
    mut ec2: impl FnMut(&StreamId, Market, &str) -> Answer,
) -> (Vec<Then>, CapacityLedger, RoundReport) {
    let states: Vec<RunnerState> = given.runners.iter().map(Runner::state).collect();
    let pools = given.pools.clone();
    let mut round = AdmissionRound::plan(
        &given.pools,
        &states,
        |request| {
            pools
                .iter()
                .find(|p| Some(&p.name) == request.spec.pool.as_ref())
                .cloned()
        },
        &given.shutting_down,
        given.ledger,
        given.own.as_ref(),
        at(now),
    );
    let mut steps = Vec::new();
    while let Some(step) = round.next_step() {
        steps.push(match step {
            AdmissionStep::Withdraw { stream } => Then::Withdraw(stream),
            AdmissionStep::Launch {
                stream,
                market,
                instance_type,
            } => {
                let answer = ec2(&stream, market, &instance_type);
                round.record(result(answer, market));
                Then::Launch(stream, market, type_name(&instance_type), answer)
            }
            AdmissionStep::HandOver { stream, after_ms } => Then::HandOver(stream, after_ms),
            AdmissionStep::Fail { stream, reason } => Then::Fail(stream, reason),
            AdmissionStep::Wait { stream, why } => Then::Wait(stream, why.to_string()),
        });
    }
    let (ledger, report) = round.finish();
    (steps, ledger, report)
}

fn always(answer: Answer) -> impl FnMut(&StreamId, Market, &str) -> Answer {
    move |_, _, _| answer
}

use Answer::*;
use Market::{OnDemand, Spot};

#[test]
fn waiting_runners_launch_on_spot_in_fair_order_and_are_handed_over_to_be_minted() {
    // Given a burst of three jobs in `big` before one in `small`.
    let given = given(
        vec![linux()],
        vec![
            Runner::waiting("big", 1, "linux", 1),
            Runner::waiting("big", 2, "linux", 2),
            Runner::waiting("big", 3, "linux", 3),
            Runner::waiting("small", 4, "linux", 4),
        ],
    );
    // When EC2 launches everything.
    let (steps, _, report) = when_round(given, 10, always(Ok));
    // Then `small` does not wait behind `big`'s burst.
    let order: Vec<_> = steps
        .iter()
        .filter_map(|s| match s {
            Then::Launch(stream, Spot, "c5.xlarge", Ok) => Some(stream.clone()),
            Then::HandOver(_, 0) => None,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        order,
        [
            stream("big", 1),
            stream("small", 4),
            stream("big", 2),
            stream("big", 3)
        ]
    );
    assert_eq!((report.waiting, report.launched), (4, 4));
    assert_eq!(report.still_waiting(), 0);
    assert_eq!(report.wake_at, None);
}

#[test]
fn the_runner_of_the_delivery_running_the_round_is_not_handed_over() {
    let mut given = given(
        vec![linux()],
        vec![
            Runner::waiting("r", 1, "linux", 1),
            Runner::waiting("r", 2, "linux", 2),
        ],
    );
    given.own = Some(stream("r", 2));
    let (steps, _, report) = when_round(given, 10, always(Ok));
    assert_eq!(
        steps,
        [
            Then::Launch(stream("r", 1), Spot, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 1), 0),
            Then::Launch(stream("r", 2), Spot, "c5.xlarge", Ok),
        ]
    );
    assert_eq!(
        report.admitted[&stream("r", 2)],
        Admitted::Launched {
            market: Spot,
            vcpus: 4
        }
    );
}

#[test]
fn a_first_quota_refusal_teaches_the_ceiling_and_the_runner_falls_back_on_demand() {
    // Given 8 spot vCPUs held and a spot quota nobody has told jitr.
    let given = given(
        vec![linux()],
        vec![
            Runner::running("r", 1, "linux", Spot, 0),
            Runner::running("r", 2, "linux", Spot, 0),
            Runner::waiting("r", 3, "linux", 5),
            Runner::waiting("r", 4, "linux", 6),
        ],
    );
    // When EC2 refuses spot for quota.
    let (steps, ledger, report) = when_round(given, 10, |_, market, _| match market {
        Spot => Quota,
        OnDemand => Ok,
    });
    // Then the ceiling is what jitr held; the runner goes on demand in the
    // same round, and the next never calls spot.
    assert_eq!(
        steps,
        [
            Then::Launch(stream("r", 3), Spot, "c5.xlarge", Quota),
            Then::Launch(stream("r", 3), OnDemand, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 3), 0),
            Then::Launch(stream("r", 4), OnDemand, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 4), 0),
        ]
    );
    assert_eq!(ledger.markets[&Spot].ceiling, Some(8));
    assert_eq!(ledger.markets[&OnDemand].ceiling, None);
    assert_eq!(report.refused["linux"], 1);
    assert_eq!(
        report.attempts[0],
        LaunchAttempt {
            market: Spot,
            instance_type: "c5.xlarge".into(),
            result: "quota".into(),
            code: Some("VcpuLimitExceeded".into()),
        }
    );
}

#[test]
fn no_capacity_of_any_type_anywhere_the_pool_waits_whole_and_its_markets_pause() {
    // Given two linux runners and one arm runner.
    let given = given(
        vec![linux(), arm()],
        vec![
            Runner::waiting("r", 1, "linux", 1),
            Runner::waiting("r", 2, "linux", 2),
            Runner::waiting("s", 3, "arm", 3),
        ],
    );
    // When EC2 has no capacity of linux's types, and arm's launches.
    let (steps, ledger, report) = when_round(given, 10, |_, _, instance_type| {
        if instance_type == "c7g.xlarge" {
            Ok
        } else {
            Capacity
        }
    });
    // Then every type on every market is tried once, for the first runner
    // only; the pool waits whole; arm is served.
    let why = "no capacity (spot, on-demand: InsufficientInstanceCapacity on every type)";
    assert_eq!(
        steps,
        [
            Then::Launch(stream("r", 1), Spot, "c5.xlarge", Capacity),
            Then::Launch(stream("r", 1), Spot, "c5a.xlarge", Capacity),
            Then::Launch(stream("r", 1), OnDemand, "c5.xlarge", Capacity),
            Then::Launch(stream("r", 1), OnDemand, "c5a.xlarge", Capacity),
            Then::Wait(stream("r", 1), format!("{why}; 0 ahead")),
            Then::Launch(stream("s", 3), Spot, "c7g.xlarge", Ok),
            Then::HandOver(stream("s", 3), 0),
            Then::Wait(stream("r", 2), format!("{why}; 2 ahead")),
        ]
    );
    // Capacity is the pool's, not the market's quota: linux pauses 15 s on
    // both markets, arm and the quotas are untouched.
    for market in [Spot, OnDemand] {
        let pause = ledger.pools[&("linux".to_owned(), market)];
        assert_eq!(pause.until, Some(at(10).plus_ms(FIRST_CAPACITY_PAUSE_MS)));
        assert_eq!(ledger.admits("arm", market, 0, 4, at(11)), Admission::Fits);
    }
    assert_eq!(report.pools["linux"].runners, 2);
    assert_eq!(report.pools["linux"].oldest_ms, 9_000);
    assert_eq!(report.pools["arm"].runners, 0);
    assert_eq!(
        report.wake_at,
        Some(at(10).plus_ms(FIRST_CAPACITY_PAUSE_MS))
    );
}

#[test]
fn a_pool_at_its_vcpu_budget_waits_without_calling_ec2() {
    let mut pool = linux();
    pool.max_vcpus = Some(8);
    let given = given(
        vec![pool],
        vec![
            Runner::running("r", 1, "linux", OnDemand, 0),
            Runner::running("r", 2, "linux", Spot, 0),
            Runner::waiting("r", 3, "linux", 5),
            Runner::waiting("r", 4, "linux", 6),
        ],
    );
    let (steps, _, report) = when_round(given, 10, |s, m, t| panic!("launched {s} {m:?} {t}"));
    let why = "pool linux at its vCPU budget (8/8)";
    assert_eq!(
        steps,
        [
            Then::Wait(stream("r", 3), format!("{why}; 0 ahead")),
            Then::Wait(stream("r", 4), format!("{why}; 1 ahead")),
        ]
    );
    assert_eq!(report.still_waiting(), 2);
}

#[test]
fn a_known_full_market_is_not_called_and_a_full_account_waits_until_a_pause_ends() {
    // Given both quotas known (configured) and held to the last vCPU.
    let mut given = given(
        vec![linux()],
        vec![
            Runner::running("r", 1, "linux", Spot, 0),
            Runner::running("r", 2, "linux", OnDemand, 0),
            Runner::waiting("r", 3, "linux", 5),
        ],
    );
    given.ledger = CapacityLedger::with_ceilings([(Spot, 4), (OnDemand, 4)]);
    let (steps, _, report) = when_round(given, 10, |s, m, t| panic!("launched {s} {m:?} {t}"));
    assert_eq!(
        steps,
        [Then::Wait(
            stream("r", 3),
            "quota full (spot 4/4, on-demand 4/4); 0 ahead".into()
        )]
    );
    // Nothing pauses: the round that frees capacity wakes it.
    assert_eq!(report.wake_at, None);
    // The runner still waits, with its reason as a kind metrics count by.
    let [still] = report.still_waiting.as_slice() else {
        panic!("{:?}", report.still_waiting)
    };
    assert_eq!(still.stream, stream("r", 3));
    assert_eq!(still.reason.as_ref().map(|r| r.kind()), Some("quota"));
}

#[test]
fn instances_shutting_down_hold_their_vcpus_unless_a_runner_still_holds_them() {
    let mut given = given(
        vec![linux()],
        vec![
            Runner::running("r", 1, "linux", OnDemand, 0),
            Runner::waiting("r", 2, "linux", 5),
        ],
    );
    given.ledger = CapacityLedger::with_ceilings([(Spot, 0), (OnDemand, 8)]);
    let shutting = |id: &str| ShuttingDownInstance {
        instance_id: InstanceId(id.into()),
        market: OnDemand,
        pool: Some("linux".into()),
        vcpus: 4,
    };
    // The runner's own instance is not counted twice.
    given.shutting_down = vec![shutting("i-r-1")];
    let (steps, _, _) = when_round(given, 10, always(Ok));
    assert!(
        matches!(steps[0], Then::Launch(_, OnDemand, _, Ok)),
        "{steps:?}"
    );
    // Another instance still shutting down fills the quota.
    let mut again = self::given(
        vec![linux()],
        vec![
            Runner::running("r", 1, "linux", OnDemand, 0),
            Runner::waiting("r", 2, "linux", 5),
        ],
    );
    again.ledger = CapacityLedger::with_ceilings([(Spot, 0), (OnDemand, 8)]);
    again.shutting_down = vec![shutting("i-gone")];
    let (steps, _, _) = when_round(again, 10, always(Ok));
    // 4 held by the runner, 4 by the instance shutting down: 8 of 8.
    assert_eq!(
        steps,
        [Then::Wait(
            stream("r", 2),
            "quota full (spot 0/0, on-demand 8/8); 0 ahead".into()
        )]
    );
}

#[test]
fn a_wrong_request_fails_the_runner_in_ec2s_words_and_the_pool_goes_on() {
    let given = given(
        vec![linux()],
        vec![
            Runner::waiting("r", 1, "linux", 1),
            Runner::waiting("r", 2, "linux", 2),
        ],
    );
    let mut first = true;
    let (steps, _, report) = when_round(given, 10, |_, _, _| {
        if std::mem::replace(&mut first, false) {
            Invalid
        } else {
            Ok
        }
    });
    let reason = "launch refused: InvalidAMIID.NotFound: EC2 says InvalidAMIID.NotFound";
    assert_eq!(
        steps,
        [
            Then::Launch(stream("r", 1), Spot, "c5.xlarge", Invalid),
            Then::Fail(stream("r", 1), reason.into()),
            Then::Launch(stream("r", 2), Spot, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 2), 0),
        ]
    );
    assert_eq!(
        report.admitted[&stream("r", 1)],
        Admitted::Failed(reason.into())
    );
    assert_eq!(report.still_waiting(), 0);
}

#[test]
fn a_launch_without_an_answer_is_resolved_by_its_own_delivery_never_launched_again() {
    let given = given(
        vec![linux()],
        vec![
            Runner::waiting("r", 1, "linux", 1),
            Runner::waiting("r", 2, "linux", 2),
        ],
    );
    let (steps, _, report) = when_round(given, 10, |s, _, _| {
        if *s == stream("r", 1) {
            Silent
        } else {
            Superseded
        }
    });
    assert_eq!(
        steps,
        [
            Then::Launch(stream("r", 1), Spot, "c5.xlarge", Silent),
            Then::HandOver(stream("r", 1), UNKNOWN_LAUNCH_LOOK_AGAIN_MS),
            Then::Launch(stream("r", 2), Spot, "c5.xlarge", Superseded),
        ]
    );
    assert_eq!(report.launched, 0);
    assert_eq!(report.admitted[&stream("r", 2)], Admitted::Superseded);
    assert_eq!(report.still_waiting(), 0);
}

#[test]
fn a_spare_runner_is_withdrawn_never_launched() {
    // Given job 1 cancelled while its runner waited, job 2 still queued.
    let given = given(
        vec![linux()],
        vec![
            Runner::waiting("r", 1, "linux", 1).cancelled(3),
            Runner::waiting("r", 2, "linux", 2),
        ],
    );
    let (steps, _, report) = when_round(given, 10, always(Ok));
    assert_eq!(
        steps,
        [
            Then::Withdraw(stream("r", 1)),
            Then::Launch(stream("r", 2), Spot, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 2), 0),
        ]
    );
    assert_eq!((report.waiting, report.withdrawn), (1, 1));
    assert_eq!(report.admitted[&stream("r", 1)], Admitted::Withdrawn);
}

#[test]
fn a_spot_market_an_attempt_was_reclaimed_from_is_skipped() {
    let given = given(
        vec![linux()],
        vec![Runner::waiting("r", 1, "linux", 1).avoiding_spot_of("c5.xlarge")],
    );
    let (steps, _, _) = when_round(given, 10, always(Ok));
    assert_eq!(
        steps[0],
        Then::Launch(stream("r", 1), Spot, "c5a.xlarge", Ok)
    );
}

#[test]
fn past_a_learnt_ceiling_one_probe_after_five_quiet_minutes() {
    // Given spot learnt full at 4 vCPUs five minutes ago, on demand open.
    let mut ledger = CapacityLedger::default();
    ledger.quota_refused(Spot, 4, at(10));
    let runners = || {
        vec![
            Runner::running("r", 1, "linux", Spot, 0),
            Runner::waiting("r", 2, "linux", 5),
            Runner::waiting("r", 3, "linux", 6),
        ]
    };
    // Before the five minutes: on demand, no spot call.
    let mut early = given(vec![linux()], runners());
    early.ledger = ledger.clone();
    let (steps, _, _) = when_round(early, 300, always(Ok));
    assert!(
        steps
            .iter()
            .all(|s| !matches!(s, Then::Launch(_, Spot, ..))),
        "{steps:?}"
    );
    // After: one probe; refused, the ceiling stays and the next runner does
    // not probe again.
    let mut late = given(vec![linux()], runners());
    late.ledger = ledger;
    let (steps, ledger, _) = when_round(late, 310, |_, market, _| match market {
        Spot => Quota,
        OnDemand => Ok,
    });
    assert_eq!(
        steps,
        [
            Then::Launch(stream("r", 2), Spot, "c5.xlarge", Quota),
            Then::Launch(stream("r", 2), OnDemand, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 2), 0),
            Then::Launch(stream("r", 3), OnDemand, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 3), 0),
        ]
    );
    assert_eq!(ledger.markets[&Spot].ceiling, Some(4));
    assert_eq!(ledger.markets[&Spot].last_refusal, Some(at(310)));
}

#[test]
fn a_round_stopped_early_leaves_the_rest_waiting() {
    let given = given(
        vec![linux()],
        vec![
            Runner::waiting("r", 1, "linux", 1),
            Runner::waiting("r", 2, "linux", 2),
        ],
    );
    let states: Vec<RunnerState> = given.runners.iter().map(Runner::state).collect();
    let mut round = AdmissionRound::plan(
        &given.pools,
        &states,
        |_| Some(linux()),
        &[],
        CapacityLedger::default(),
        None,
        at(10),
    );
    assert!(matches!(
        round.next_step(),
        Some(AdmissionStep::Launch { .. })
    ));
    // The executor failed before it learnt the launch's outcome.
    let (_, report) = round.finish();
    assert_eq!(report.admitted[&stream("r", 1)], Admitted::Unknown);
    assert_eq!(report.pools["linux"].runners, 1);
    assert_eq!(report.launched, 0);
}

#[test]
fn spot_refused_for_a_missing_service_linked_role_falls_back_on_demand_and_is_not_retried_for_a_while()
 {
    // Given an account whose spot service-linked role is missing.
    let runners = |first: i64| {
        vec![
            Runner::waiting("r", 1, "linux", first),
            Runner::waiting("r", 2, "linux", first + 1),
        ]
    };
    let ec2 = |_: &StreamId, market: Market, _: &str| match market {
        Spot => NoSpotRole,
        OnDemand => Ok,
    };
    let (steps, ledger, _) = when_round(given(vec![linux()], runners(1)), 10, ec2);
    // Then the first runner goes on demand in the same round (no other spot
    // type tried: the market, not the type, is refused), the second never
    // calls spot; nobody fails or waits.
    assert_eq!(
        steps,
        [
            Then::Launch(stream("r", 1), Spot, "c5.xlarge", NoSpotRole),
            Then::Launch(stream("r", 1), OnDemand, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 1), 0),
            Then::Launch(stream("r", 2), OnDemand, "c5.xlarge", Ok),
            Then::HandOver(stream("r", 2), 0),
        ]
    );
    // Four minutes later, still on demand; after five, spot is tried again
    // (the operator may have created the role), and a spot launch reopens it.
    let mut later = given(vec![linux()], vec![Runner::waiting("s", 3, "linux", 200)]);
    later.ledger = ledger.clone();
    let (steps, _, _) = when_round(later, 250, always(Ok));
    assert_eq!(
        steps[0],
        Then::Launch(stream("s", 3), OnDemand, "c5.xlarge", Ok)
    );
    let mut fixed = given(vec![linux()], vec![Runner::waiting("s", 4, "linux", 300)]);
    fixed.ledger = ledger;
    let (steps, ledger, _) = when_round(fixed, 310, always(Ok));
    assert_eq!(
        steps[0],
        Then::Launch(stream("s", 4), Spot, "c5.xlarge", Ok)
    );
    assert!(ledger.unusable.is_empty());
}
