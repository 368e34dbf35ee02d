//! Given / when / then: runners are capacity, GitHub assigns the jobs
//! (ADR-0017) — the job a runner took, the demand it stands for, and which
//! surplus runners the planner retires.

use jitr_domain::*;

const T0: i64 = 1_780_000_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn job(id: u64) -> JobRef {
    JobRef {
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id: id,
        run_id: 7,
    }
}

fn stream(id: u64) -> StreamId {
    StreamId::for_job(&job(id), 1).unwrap()
}

/// A runner launched for job `id` in `pool`, given `events` after its request.
struct Runner {
    events: Vec<RunnerEvent>,
}

impl Runner {
    fn for_job(id: u64, pool: &str) -> Runner {
        Runner {
            events: vec![RunnerEvent::Requested {
                at: at(0),
                job: job(id),
                attempt: 1,
                labels: vec!["self-hosted".into()],
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

    fn then(mut self, event: RunnerEvent) -> Runner {
        self.events.push(event);
        self
    }

    /// Launched at `secs` (intent and instance), registered (ready) at `ready`.
    fn ready(self, id: u64, secs: i64, ready: i64) -> Runner {
        let token = ClientToken::derive(&stream(id), 1);
        self.then(RunnerEvent::LaunchIntended {
            at: at(secs),
            client_token: token.clone(),
            market: Market::Spot,
        })
        .then(RunnerEvent::Launched {
            at: at(secs),
            client_token: token,
            instance_id: InstanceId(format!("i-{id}")),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            market: Market::Spot,
        })
        .then(RunnerEvent::TokenMinted {
            at: at(ready),
            runner_name: format!("jitr-{id}"),
            runner_id: None,
        })
    }

    fn state(&self) -> RunnerState {
        fold(&self.events)
    }
}

fn started(secs: i64, id: u64) -> RunnerEvent {
    RunnerEvent::JobStarted {
        at: at(secs),
        source: JobSource::Webhook,
        job: Some(job(id)),
    }
}

fn cancelled(secs: i64) -> RunnerEvent {
    RunnerEvent::DemandEnded {
        at: at(secs),
        ending: DemandEnding::Cancelled,
    }
}

#[track_caller]
fn given_when_then(
    given: &Runner,
    when: Command,
    now: i64,
    then: Result<Vec<RunnerEvent>, DomainError>,
) {
    let decided = decide(&given.state(), when.clone(), at(now));
    assert_eq!(decided, then, "when {when:?}");
}

#[track_caller]
fn plan(runners: &[&Runner], now: i64) -> Vec<Retirement> {
    let states: Vec<RunnerState> = runners.iter().map(|r| r.state()).collect();
    plan_retirements(&states, at(now), |_| PoolFloor::default())
}

#[test]
fn the_start_records_the_job_github_gave_which_need_not_be_the_runners_own() {
    let r1 = Runner::for_job(1, "linux").ready(1, 1, 2);
    given_when_then(
        &r1,
        Command::StartJob { job: Some(job(2)) },
        5,
        Ok(vec![started(5, 2)]),
    );
    let running = r1.then(started(5, 2));
    let s = running.state();
    assert_eq!(s.status(), RunnerStatus::Running);
    assert_eq!(s.job_taken(), Some(&job(2)));
    assert!(!s.demand_queued(), "one runner, one job: its demand is met");
}

#[test]
fn a_completed_for_a_job_the_runner_did_not_take_is_refused_and_benign() {
    let running = Runner::for_job(1, "linux")
        .ready(1, 1, 2)
        .then(started(5, 2));
    let when = Command::CompleteJob {
        conclusion: Some("cancelled".into()),
        job: Some(job(1)),
    };
    let refusal = DomainError::AnotherJob { taken: 2, named: 1 };
    given_when_then(&running, when.clone(), 6, Err(refusal.clone()));
    assert!(is_benign_refusal(&when, &refusal));
    // The job it took completes it.
    given_when_then(
        &running,
        Command::CompleteJob {
            conclusion: Some("success".into()),
            job: Some(job(2)),
        },
        9,
        Ok(vec![RunnerEvent::JobCompleted {
            at: at(9),
            conclusion: Some("success".into()),
            source: JobSource::Webhook,
            job: Some(job(2)),
        }]),
    );
}

#[test]
fn an_idle_runners_failure_is_refused_once_it_took_a_job_or_github_says_busy() {
    let ready = Runner::for_job(1, "linux").ready(1, 1, 2);
    for took in [
        started(5, 2),
        RunnerEvent::DeregistrationRefused {
            at: at(5),
            reason: "busy".into(),
        },
    ] {
        let given = Runner {
            events: ready.events.clone(),
        }
        .then(took);
        for stage in [
            FailureStage::Boot,
            FailureStage::Stale,
            FailureStage::Surplus,
        ] {
            let when = Command::Fail {
                stage,
                reason: "idle".into(),
            };
            given_when_then(&given, when.clone(), 700, Err(DomainError::JobTaken));
            assert!(is_benign_refusal(&when, &DomainError::JobTaken));
        }
        assert_eq!(missed_deadline(&given.state(), at(700)), None);
        assert_eq!(given.state().status(), RunnerStatus::Running);
    }
}

#[test]
fn a_cancelled_jobs_runner_stays_capacity_and_its_demand_moves_when_jobs_swap() {
    let ready = Runner::for_job(1, "linux").ready(1, 1, 2);
    given_when_then(
        &ready,
        Command::EndDemand {
            ending: DemandEnding::Cancelled,
        },
        5,
        Ok(vec![cancelled(5)]),
    );
    let spare = Runner {
        events: ready.events.clone(),
    }
    .then(cancelled(5));
    assert_eq!(spare.state().status(), RunnerStatus::Ready, "not closed");
    assert!(!spare.state().demand_queued());
    assert!(spare.state().is_untaken_capacity());
    // Another runner took job 1's job: job 1's runner now stands for that
    // runner's job 3.
    given_when_then(
        &ready,
        Command::MoveDemand { job: job(3) },
        5,
        Ok(vec![RunnerEvent::DemandMoved {
            at: at(5),
            job: job(3),
        }]),
    );
    let moved = ready.then(RunnerEvent::DemandMoved {
        at: at(5),
        job: job(3),
    });
    assert_eq!(moved.state().demand_job(), Some(&job(3)));
    assert!(moved.state().demand_queued());
    given_when_then(&moved, Command::MoveDemand { job: job(3) }, 6, Ok(vec![]));
}

#[test]
fn without_surplus_nothing_retires() {
    // Job 2 ran on job 1's runner; job 2's runner stands for job 1.
    let r1 = Runner::for_job(1, "linux")
        .ready(1, 1, 2)
        .then(started(5, 2));
    let r2 = Runner::for_job(2, "linux")
        .ready(2, 1, 2)
        .then(RunnerEvent::DemandMoved {
            at: at(5),
            job: job(1),
        });
    assert_eq!(plan(&[&r1, &r2], 600), vec![]);
    let balance = pool_balances([&r1.state(), &r2.state()]);
    assert_eq!(
        balance["linux"],
        PoolBalance {
            demand: 1,
            supply: 1,
            parked: 0,
        }
    );
}

#[test]
fn a_spare_ready_runner_retires_after_the_grace_deregister_first() {
    let r1 = Runner::for_job(1, "linux")
        .ready(1, 1, 2)
        .then(started(5, 2));
    let r2 = Runner::for_job(2, "linux")
        .ready(2, 1, 30)
        .then(cancelled(40));
    assert_eq!(plan(&[&r1, &r2], 60), vec![], "within the grace");
    assert_eq!(
        plan(&[&r1, &r2], 90),
        vec![Retirement::Deregister {
            stream: stream(2),
            runner_name: "jitr-2".into(),
        }]
    );
}

#[test]
fn a_spare_waiting_runner_is_withdrawn_at_once_and_pools_are_apart() {
    // Pool linux: job 1 waits for capacity and is cancelled; job 3's runner is
    // ready, its job still queued.
    let r1 = Runner::for_job(1, "linux").then(cancelled(5));
    let r3 = Runner::for_job(3, "linux").ready(3, 1, 2);
    // Pool gpu: a spare runner still launching is left to become ready.
    let launching = {
        let token = ClientToken::derive(&stream(4), 1);
        Runner::for_job(4, "gpu")
            .then(RunnerEvent::LaunchIntended {
                at: at(1),
                client_token: token,
                market: Market::OnDemand,
            })
            .then(cancelled(5))
    };
    assert_eq!(
        plan(&[&r1, &r3, &launching], 6),
        vec![Retirement::Withdraw { stream: stream(1) }]
    );
}

#[test]
fn a_runner_standing_for_a_queued_job_never_retires() {
    // Job 1's runner is spare and ready; job 3 waits for capacity. Supply 2,
    // demand 1: the spare one retires, never job 3's (its demand would go
    // with it); GitHub gives job 3 to the spare one if it is online first.
    let r1 = Runner::for_job(1, "linux")
        .ready(1, 1, 2)
        .then(cancelled(5));
    let r3 = Runner::for_job(3, "linux");
    assert_eq!(
        plan(&[&r1, &r3], 120),
        vec![Retirement::Deregister {
            stream: stream(1),
            runner_name: "jitr-1".into(),
        }]
    );
}

#[test]
fn the_youngest_spare_ready_runners_retire_first_one_per_unit_of_surplus() {
    let old = Runner::for_job(1, "linux")
        .ready(1, 1, 10)
        .then(cancelled(100));
    let young = Runner::for_job(2, "linux")
        .ready(2, 1, 50)
        .then(cancelled(100));
    let wanted = Runner::for_job(3, "linux").ready(3, 1, 20);
    // Demand 1 (job 3), supply 3: the two spare ones retire, the youngest
    // first; job 3's stays.
    assert_eq!(
        plan(&[&old, &young, &wanted], 200),
        vec![
            Retirement::Deregister {
                stream: stream(2),
                runner_name: "jitr-2".into(),
            },
            Retirement::Deregister {
                stream: stream(1),
                runner_name: "jitr-1".into(),
            },
        ]
    );
}

/// ADR-0022: a warm pool keeps its floor of idle runners. Three ready runners
/// whose jobs were cancelled, floor 2: one retires. A pool's own idle grace
/// (`max_idle_minutes`) holds the surplus until it has passed.
#[test]
fn a_warm_pool_retires_only_what_is_beyond_its_floor_after_its_idle_grace() {
    let idle = |id: u64| {
        Runner::for_job(id, "warm")
            .ready(id, 1, 2)
            .then(cancelled(3))
    };
    let (a, b, c) = (idle(1), idle(2), idle(3));
    let states: Vec<RunnerState> = [&a, &b, &c].iter().map(|r| r.state()).collect();
    let floor = |grace_s: u64| {
        move |pool: &str| PoolFloor {
            min_idle: if pool == "warm" { 2 } else { 0 },
            idle_grace_ms: grace_s * 1000,
            stopped: false,
        }
    };
    let retired = plan_retirements(&states, at(600), floor(60));
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert!(matches!(retired[0], Retirement::Deregister { .. }));
    assert!(plan_retirements(&states, at(600), floor(1800)).is_empty());
    assert_eq!(plan_retirements(&states, at(1803), floor(1800)).len(), 1);
    // Without the floor all three are surplus.
    assert_eq!(plan(&[&a, &b, &c], 600).len(), 3);
}

/// ADR-0022: a warm runner is requested for no job (job 0). It is supply,
/// never demand; once registered it has no job-start deadline, only its max
/// age; the job GitHub gives it is recorded as any runner's.
#[test]
fn a_warm_runner_is_supply_without_demand_and_waits_for_any_job() {
    let warm_job = JobRef::warmth("acme", "widgets");
    let stream = StreamId::for_job(&warm_job, 7).unwrap();
    assert_eq!(stream.as_str(), "acme/widgets#0#7");
    let mut warm = Runner::for_job(0, "warm");
    if let RunnerEvent::Requested { attempt, .. } = &mut warm.events[0] {
        *attempt = 7;
    }
    let token = ClientToken::derive(&stream, 1);
    let warm = warm
        .then(RunnerEvent::LaunchIntended {
            at: at(1),
            client_token: token.clone(),
            market: Market::Spot,
        })
        .then(RunnerEvent::Launched {
            at: at(1),
            client_token: token,
            instance_id: InstanceId("i-warm".into()),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            market: Market::Spot,
        })
        .then(RunnerEvent::TokenMinted {
            at: at(30),
            runner_name: stream.runner_name(),
            runner_id: Some(9),
        });
    let s = warm.state();
    assert!(s.is_warm());
    assert!(!s.demand_queued());
    assert!(s.is_untaken_capacity());
    let balance = &pool_balances([&s])["warm"];
    assert_eq!((balance.demand, balance.supply), (0, 1));
    // An hour idle: no boot deadline; past the max age (6 h): retired.
    assert!(resume(&s, at(3_600)).is_empty());
    let aged = resume(&s, at(6 * 3_600 + 1));
    assert!(
        matches!(
            &aged[0],
            Command::Fail {
                stage: FailureStage::MaxAge,
                ..
            }
        ),
        "{aged:?}"
    );
    // A job taken: it runs as any runner does.
    let running = warm.then(started(60, 42)).state();
    assert_eq!(running.status(), RunnerStatus::Running);
    assert_eq!(running.job_taken(), Some(&job(42)));
    // A job's own runner whose job has not started keeps its boot deadline …
    let cold = Runner::for_job(5, "warm").ready(5, 1, 2);
    assert!(!resume(&cold.state(), at(3_600)).is_empty());
    // … until the job goes elsewhere: then it is spare capacity, as a warm one
    // (it counts toward the floor), bounded by its max age.
    let spare = cold.then(cancelled(3)).state();
    assert!(resume(&spare, at(3_600)).is_empty());
    assert!(!resume(&spare, at(6 * 3_600 + 1)).is_empty());
}
