//! Given / when / then: every transition and every refusal of the runner decider.

use jitr_domain::*;

const T0: i64 = 1_780_000_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp(T0 + secs * 1000)
}

fn job() -> JobRef {
    JobRef {
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id: 42,
        run_id: 7,
    }
}

fn stream() -> StreamId {
    StreamId::for_job(&job(), 1).unwrap()
}

fn token(n: u32) -> ClientToken {
    ClientToken::derive(&stream(), n)
}

fn deadlines() -> Deadlines {
    Deadlines {
        boot_timeout_ms: 600_000,
        max_age_ms: 3_600_000,
        drain_grace_ms: 120_000,
        consistency_window_ms: 5_000,
        max_wait_ms: None,
    }
}

fn spec() -> InstanceSpec {
    InstanceSpec {
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
        image: "ami-123".into(),
        pool: None,
        avoid_spot: Vec::new(),
        park: false,
    }
}

fn i1() -> InstanceId {
    InstanceId("i-0001".into())
}

fn request_cmd() -> Command {
    Command::Request {
        job: job(),
        attempt: 1,
        labels: vec!["self-hosted".into(), "linux".into()],
        spec: spec(),
        deadlines: deadlines(),
        installation: None,
        deployment: None,
    }
}

fn requested() -> RunnerEvent {
    RunnerEvent::Requested {
        at: at(0),
        job: job(),
        attempt: 1,
        labels: vec!["self-hosted".into(), "linux".into()],
        spec: spec(),
        deadlines: deadlines(),
        installation: None,
        deployment: None,
    }
}

fn intended(n: u32, market: Market) -> RunnerEvent {
    RunnerEvent::LaunchIntended {
        at: at(1),
        client_token: token(n),
        market,
    }
}

fn rejected(n: u32) -> RunnerEvent {
    RunnerEvent::LaunchRejected {
        at: at(2),
        client_token: token(n),
        code: "MaxSpotInstanceCountExceeded".into(),
        class: LaunchErrorClass::Quota,
    }
}

fn launched() -> RunnerEvent {
    RunnerEvent::Launched {
        at: at(3),
        client_token: token(1),
        instance_id: i1(),
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
        market: Market::Spot,
    }
}

fn minted() -> RunnerEvent {
    RunnerEvent::TokenMinted {
        at: at(4),
        runner_name: "jitr-acme-42-1".into(),
        runner_id: None,
    }
}

fn started() -> RunnerEvent {
    RunnerEvent::JobStarted {
        at: at(5),
        source: Default::default(),
        job: None,
    }
}

fn completed() -> RunnerEvent {
    RunnerEvent::JobCompleted {
        at: at(6),
        conclusion: Some("success".into()),
        source: Default::default(),
        job: None,
    }
}

fn failed(stage: FailureStage) -> RunnerEvent {
    RunnerEvent::Failed {
        at: at(6),
        stage,
        reason: "boom".into(),
    }
}

fn terminated(id: Option<InstanceId>) -> RunnerEvent {
    RunnerEvent::Terminated {
        at: at(7),
        evidence: if id.is_some() {
            TerminationEvidence::ReportedTerminated
        } else {
            TerminationEvidence::TokenFoundNothing
        },
        instance_id: id,
    }
}

/// A history, to which a command is applied.
struct Given(Vec<RunnerEvent>);

fn given(events: impl IntoIterator<Item = RunnerEvent>) -> Given {
    Given(events.into_iter().collect())
}

/// The outcome of a command, to be asserted.
struct Then {
    state: RunnerState,
    outcome: Result<Vec<RunnerEvent>, DomainError>,
}

impl Given {
    fn when(self, command: Command, now: Timestamp) -> Then {
        let state = fold(&self.0);
        let outcome = decide(&state, command, now);
        Then { state, outcome }
    }
}

impl Then {
    fn then(self, expected: impl IntoIterator<Item = RunnerEvent>) -> RunnerState {
        let events = self.outcome.expect("command was refused");
        assert_eq!(events, expected.into_iter().collect::<Vec<_>>());
        events.iter().fold(self.state, evolve)
    }

    fn then_err(self, expected: DomainError) {
        assert_eq!(self.outcome, Err(expected));
    }
}

// ---- transitions ----

#[test]
fn request_opens_the_stream() {
    let s = given([]).when(request_cmd(), at(0)).then([requested()]);
    assert_eq!(s.status(), RunnerStatus::Requested);
    assert_eq!(s.stream_id(), Some(stream()));
}

#[test]
fn a_repeated_request_is_a_no_op() {
    given([requested()]).when(request_cmd(), at(9)).then([]);
}

#[test]
fn intend_launch_derives_the_client_token() {
    let s = given([requested()])
        .when(
            Command::IntendLaunch {
                market: Market::Spot,
            },
            at(1),
        )
        .then([intended(1, Market::Spot)]);
    assert_eq!(s.status(), RunnerStatus::Launching);
    assert!(s.instance_may_be_alive());
}

#[test]
fn a_rejected_spot_launch_allows_an_on_demand_intent() {
    let s = given([requested(), intended(1, Market::Spot), rejected(1)])
        .when(
            Command::IntendLaunch {
                market: Market::OnDemand,
            },
            at(1),
        )
        .then([intended(2, Market::OnDemand)]);
    assert_eq!(s.launch_attempts, 2);
}

#[test]
fn launch_rejection_resolves_the_intent() {
    let s = given([requested(), intended(1, Market::Spot)])
        .when(
            Command::RejectLaunch {
                client_token: token(1),
                code: "MaxSpotInstanceCountExceeded".into(),
                class: LaunchErrorClass::Quota,
            },
            at(2),
        )
        .then([rejected(1)]);
    assert_eq!(s.status(), RunnerStatus::Requested);
    assert!(!s.instance_may_be_alive());
}

#[test]
fn record_launch_gives_booting() {
    let s = given([requested(), intended(1, Market::Spot)])
        .when(
            Command::RecordLaunch {
                client_token: token(1),
                instance_id: i1(),
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
            },
            at(3),
        )
        .then([launched()]);
    assert_eq!(s.status(), RunnerStatus::Booting);
    assert_eq!(s.instance().map(|i| i.vcpus), Some(4));
}

#[test]
fn a_repeated_launch_record_is_a_no_op() {
    given([requested(), intended(1, Market::Spot), launched()])
        .when(
            Command::RecordLaunch {
                client_token: token(1),
                instance_id: i1(),
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
            },
            at(3),
        )
        .then([]);
}

#[test]
fn token_minted_gives_ready() {
    let s = given([requested(), intended(1, Market::Spot), launched()])
        .when(
            Command::RecordToken {
                runner_name: "jitr-acme-42-1".into(),
                runner_id: None,
            },
            at(4),
        )
        .then([minted()]);
    assert_eq!(s.status(), RunnerStatus::Ready);
}

#[test]
fn job_started_gives_running() {
    let s = given([requested(), intended(1, Market::Spot), launched(), minted()])
        .when(Command::StartJob { job: None }, at(5))
        .then([started()]);
    assert_eq!(s.status(), RunnerStatus::Running);
}

#[test]
fn job_completed_after_launch_is_draining_not_completed() {
    let s = given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        started(),
    ])
    .when(
        Command::CompleteJob {
            conclusion: Some("success".into()),
            job: None,
        },
        at(6),
    )
    .then([completed()]);
    assert_eq!(s.status(), RunnerStatus::Draining);
    assert!(!is_terminal(&s));
}

#[test]
fn draining_becomes_completed_only_with_terminated() {
    let s = given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        started(),
        completed(),
    ])
    .when(
        Command::ConfirmTerminated {
            instance_id: Some(i1()),
            evidence: TerminationEvidence::ReportedTerminated,
        },
        at(7),
    )
    .then([terminated(Some(i1()))]);
    assert_eq!(s.status(), RunnerStatus::Completed);
    assert!(is_terminal(&s));
}

#[test]
fn failure_after_launch_is_terminating_not_failed() {
    let s = given([requested(), intended(1, Market::Spot), launched()])
        .when(
            Command::Fail {
                stage: FailureStage::Token,
                reason: "boom".into(),
            },
            at(6),
        )
        .then([failed(FailureStage::Token)]);
    assert_eq!(s.status(), RunnerStatus::Terminating);
    assert!(!is_terminal(&s));
    assert_eq!(
        resume(&s, at(6)),
        vec![Command::Terminate {
            reason: TerminationReason::Failure {
                stage: FailureStage::Token
            }
        }]
    );
}

fn warned(job_started: bool) -> RunnerEvent {
    RunnerEvent::SpotInterruptionWarned {
        at: at(6),
        instance_id: i1(),
        job_started,
    }
}

fn warn() -> Command {
    Command::WarnSpotInterruption { instance_id: i1() }
}

#[test]
fn a_spot_warning_before_the_job_started_fails_the_runner_and_owes_its_termination() {
    let s = given([requested(), intended(1, Market::Spot), launched(), minted()])
        .when(warn(), at(6))
        .then([
            warned(false),
            RunnerEvent::Failed {
                at: at(6),
                stage: FailureStage::SpotInterrupted,
                reason: "EC2 will reclaim spot instance i-0001 before the job started".into(),
            },
        ]);
    assert_eq!(s.status(), RunnerStatus::Terminating);
    assert_eq!(s.spot_warned, Some((at(6), false)));
    assert_eq!(
        resume(&s, at(6)),
        vec![Command::Terminate {
            reason: TerminationReason::Failure {
                stage: FailureStage::SpotInterrupted
            }
        }]
    );
    // A second delivery of the warning writes nothing.
    given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        warned(false),
    ])
    .when(warn(), at(9))
    .then([]);
}

#[test]
fn a_spot_warning_after_the_job_started_records_the_cut_and_fails_nothing() {
    let s = given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        started(),
    ])
    .when(warn(), at(6))
    .then([warned(true)]);
    assert_eq!(s.status(), RunnerStatus::Running);
    assert!(s.failure.is_none());
    assert!(resume(&s, at(6)).is_empty());
}

#[test]
fn a_spot_warning_for_another_instance_is_refused() {
    given([requested(), intended(1, Market::Spot), launched()])
        .when(
            Command::WarnSpotInterruption {
                instance_id: InstanceId("i-other".into()),
            },
            at(6),
        )
        .then_err(DomainError::InstanceMismatch {
            expected: Some(i1()),
            got: Some(InstanceId("i-other".into())),
        });
    given([requested()])
        .when(warn(), at(6))
        .then_err(DomainError::InstanceMismatch {
            expected: None,
            got: Some(i1()),
        });
}

#[test]
fn failure_before_any_launch_is_terminal_at_once() {
    let s = given([requested()])
        .when(
            Command::Fail {
                stage: FailureStage::Launch,
                reason: "boom".into(),
            },
            at(6),
        )
        .then([failed(FailureStage::Launch)]);
    assert_eq!(s.status(), RunnerStatus::Failed);
    assert!(resume(&s, at(6)).is_empty());
}

#[test]
fn failure_after_every_launch_was_rejected_is_terminal() {
    let s = given([requested(), intended(1, Market::Spot), rejected(1)])
        .when(
            Command::Fail {
                stage: FailureStage::Launch,
                reason: "boom".into(),
            },
            at(6),
        )
        .then([failed(FailureStage::Launch)]);
    assert_eq!(s.status(), RunnerStatus::Failed);
}

#[test]
fn failure_during_an_unresolved_launch_owes_a_lookup_termination() {
    let s = given([requested(), intended(1, Market::Spot)])
        .when(
            Command::Fail {
                stage: FailureStage::Launch,
                reason: "crashed".into(),
            },
            at(6),
        )
        .then([RunnerEvent::Failed {
            at: at(6),
            stage: FailureStage::Launch,
            reason: "crashed".into(),
        }]);
    assert_eq!(s.status(), RunnerStatus::Terminating);
    let owed = terminate_runner(&s, at(6)).expect("a termination is owed");
    assert_eq!(owed.instance_id, None);
    assert_eq!(owed.client_token, Some(token(1)));
}

#[test]
fn an_unresolved_launch_may_still_be_recorded_after_failure() {
    let s = given([
        requested(),
        intended(1, Market::Spot),
        failed(FailureStage::Boot),
    ])
    .when(
        Command::RecordLaunch {
            client_token: token(1),
            instance_id: i1(),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
        },
        at(3),
    )
    .then([launched()]);
    assert_eq!(s.status(), RunnerStatus::Terminating);
    assert_eq!(s.instance().map(|i| i.id.clone()), Some(i1()));
}

#[test]
fn terminate_records_the_request_once() {
    let base = [
        requested(),
        intended(1, Market::Spot),
        launched(),
        failed(FailureStage::Token),
    ];
    let reason = TerminationReason::Failure {
        stage: FailureStage::Token,
    };
    let s = given(base.clone())
        .when(Command::Terminate { reason }, at(6))
        .then([RunnerEvent::TerminationRequested {
            at: at(6),
            reason,
            instance_id: Some(i1()),
        }]);
    assert_eq!(s.status(), RunnerStatus::Terminating);
    let mut again = base.to_vec();
    again.push(RunnerEvent::TerminationRequested {
        at: at(6),
        reason,
        instance_id: Some(i1()),
    });
    given(again)
        .when(Command::Terminate { reason }, at(8))
        .then([]);
}

#[test]
fn failed_becomes_terminal_with_terminated() {
    let s = given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        failed(FailureStage::Token),
    ])
    .when(
        Command::ConfirmTerminated {
            instance_id: Some(i1()),
            evidence: TerminationEvidence::ReportedTerminated,
        },
        at(7),
    )
    .then([terminated(Some(i1()))]);
    assert_eq!(s.status(), RunnerStatus::Failed);
    assert!(resume(&s, at(99)).is_empty());
}

#[test]
fn an_unresolved_launch_confirmed_never_to_exist_closes_the_stream() {
    let s = given([
        requested(),
        intended(1, Market::Spot),
        failed(FailureStage::Launch),
    ])
    .when(
        Command::ConfirmTerminated {
            instance_id: None,
            evidence: TerminationEvidence::TokenFoundNothing,
        },
        at(7),
    )
    .then([terminated(None)]);
    assert_eq!(s.status(), RunnerStatus::Failed);
}

#[test]
fn a_job_cancelled_before_launch_completes_at_once() {
    let s = given([requested()])
        .when(
            Command::CompleteJob {
                conclusion: None,
                job: None,
            },
            at(6),
        )
        .then([RunnerEvent::JobCompleted {
            at: at(6),
            conclusion: None,
            source: Default::default(),
            job: None,
        }]);
    assert_eq!(s.status(), RunnerStatus::Completed);
}

#[test]
fn completed_before_in_progress_drains() {
    let s = given([requested(), intended(1, Market::Spot), launched(), minted()])
        .when(
            Command::CompleteJob {
                conclusion: Some("success".into()),
                job: None,
            },
            at(6),
        )
        .then([completed()]);
    assert_eq!(s.status(), RunnerStatus::Draining);
}

#[test]
fn duplicate_lifecycle_inputs_are_no_ops() {
    let running = [
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        started(),
    ];
    given(running.clone())
        .when(Command::StartJob { job: None }, at(9))
        .then([]);
    let mut done = running.to_vec();
    done.push(completed());
    given(done)
        .when(
            Command::CompleteJob {
                conclusion: None,
                job: None,
            },
            at(9),
        )
        .then([]);
    given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        failed(FailureStage::Boot),
    ])
    .when(
        Command::Fail {
            stage: FailureStage::MaxAge,
            reason: "again".into(),
        },
        at(9),
    )
    .then([]);
}

// ---- refusals ----

#[test]
fn a_command_before_request_is_refused() {
    given([])
        .when(Command::StartJob { job: None }, at(1))
        .then_err(DomainError::NotRequested);
}

#[test]
fn a_request_for_another_attempt_is_refused() {
    given([requested()])
        .when(
            Command::Request {
                job: job(),
                attempt: 2,
                labels: vec![],
                spec: spec(),
                deadlines: deadlines(),
                installation: None,
                deployment: None,
            },
            at(1),
        )
        .then_err(DomainError::RequestMismatch);
}

fn stray(n: u32, id: &str, secs: i64) -> RunnerEvent {
    RunnerEvent::StrayLaunched {
        at: at(secs),
        client_token: token(n),
        instance_id: InstanceId(id.into()),
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
    }
}

fn record(n: u32, id: &str) -> Command {
    Command::RecordLaunch {
        client_token: token(n),
        instance_id: InstanceId(id.into()),
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
    }
}

#[test]
fn an_instance_without_a_pending_intent_is_recorded_as_a_stray() {
    let s = given([requested()])
        .when(record(1, "i-0001"), at(3))
        .then([stray(1, "i-0001", 3)]);
    assert_eq!(s.instance(), None, "a stray is not the runner's instance");
    assert_eq!(s.live_strays().count(), 1);
    assert_eq!(
        terminate_strays(&s)[0].instance_id,
        Some(InstanceId("i-0001".into()))
    );
}

#[test]
fn rejected_without_launch_intended_is_refused() {
    given([requested()])
        .when(
            Command::RejectLaunch {
                client_token: token(1),
                code: "X".into(),
                class: LaunchErrorClass::Unknown,
            },
            at(3),
        )
        .then_err(DomainError::NoLaunchIntended);
}

#[test]
fn an_instance_of_another_intent_is_a_stray_and_the_pending_intent_stays() {
    let s = given([requested(), intended(1, Market::Spot)])
        .when(record(7, "i-0001"), at(3))
        .then([stray(7, "i-0001", 3)]);
    assert_eq!(s.pending_launch(), Some(&token(1)));
    assert_eq!(s.status(), RunnerStatus::Launching);
}

#[test]
fn a_second_launch_intended_while_one_is_unresolved_is_refused() {
    given([requested(), intended(1, Market::Spot)])
        .when(
            Command::IntendLaunch {
                market: Market::OnDemand,
            },
            at(2),
        )
        .then_err(DomainError::LaunchUnresolved {
            client_token: token(1),
        });
}

#[test]
fn a_launch_intent_after_an_instance_exists_is_refused() {
    given([requested(), intended(1, Market::Spot), launched()])
        .when(
            Command::IntendLaunch {
                market: Market::OnDemand,
            },
            at(4),
        )
        .then_err(DomainError::AlreadyLaunched { instance_id: i1() });
}

#[test]
fn a_second_instance_is_a_stray_never_the_runners() {
    let s = given([requested(), intended(1, Market::Spot), launched()])
        .when(record(1, "i-0002"), at(4))
        .then([stray(1, "i-0002", 4)]);
    assert_eq!(s.instance().map(|i| &i.id), Some(&i1()));
    // Recording it again is a repeat.
    given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        stray(1, "i-0002", 4),
    ])
    .when(record(1, "i-0002"), at(5))
    .then([]);
    given([requested(), intended(1, Market::Spot), launched()])
        .when(
            Command::RejectLaunch {
                client_token: token(1),
                code: "X".into(),
                class: LaunchErrorClass::Unknown,
            },
            at(4),
        )
        .then_err(DomainError::AlreadyLaunched { instance_id: i1() });
}

#[test]
fn a_launch_intent_after_failure_is_refused() {
    given([requested(), failed(FailureStage::Launch)])
        .when(
            Command::IntendLaunch {
                market: Market::Spot,
            },
            at(8),
        )
        .then_err(DomainError::Terminal {
            status: RunnerStatus::Failed,
        });
    given([
        requested(),
        intended(1, Market::Spot),
        rejected(1),
        RunnerEvent::JobCompleted {
            at: at(5),
            conclusion: None,
            source: Default::default(),
            job: None,
        },
    ])
    .when(
        Command::IntendLaunch {
            market: Market::Spot,
        },
        at(8),
    )
    .then_err(DomainError::Terminal {
        status: RunnerStatus::Completed,
    });
}

#[test]
fn work_after_failure_is_refused() {
    let failing = [
        requested(),
        intended(1, Market::Spot),
        launched(),
        failed(FailureStage::Boot),
    ];
    given(failing.clone())
        .when(
            Command::RecordToken {
                runner_name: "r".into(),
                runner_id: None,
            },
            at(8),
        )
        .then_err(DomainError::AlreadyFailed);
    given(failing.clone())
        .when(Command::StartJob { job: None }, at(8))
        .then_err(DomainError::AlreadyFailed);
    given(failing)
        .when(
            Command::CompleteJob {
                conclusion: None,
                job: None,
            },
            at(8),
        )
        .then_err(DomainError::AlreadyFailed);
}

#[test]
fn in_progress_after_completed_is_refused() {
    given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        completed(),
    ])
    .when(Command::StartJob { job: None }, at(8))
    .then_err(DomainError::JobAlreadyCompleted);
}

#[test]
fn fail_after_completed_is_refused() {
    given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        completed(),
    ])
    .when(
        Command::Fail {
            stage: FailureStage::Boot,
            reason: "late".into(),
        },
        at(8),
    )
    .then_err(DomainError::JobAlreadyCompleted);
}

#[test]
fn a_token_without_an_instance_is_refused() {
    given([requested(), intended(1, Market::Spot)])
        .when(
            Command::RecordToken {
                runner_name: "r".into(),
                runner_id: None,
            },
            at(8),
        )
        .then_err(DomainError::NotLaunched);
    given([requested()])
        .when(Command::StartJob { job: None }, at(8))
        .then_err(DomainError::NotLaunched);
}

#[test]
fn a_second_token_name_is_refused() {
    given([requested(), intended(1, Market::Spot), launched(), minted()])
        .when(
            Command::RecordToken {
                runner_name: "other".into(),
                runner_id: None,
            },
            at(8),
        )
        .then_err(DomainError::TokenAlreadyMinted {
            runner_name: "jitr-acme-42-1".into(),
        });
}

#[test]
fn a_token_after_a_termination_request_is_refused() {
    given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        RunnerEvent::TerminationRequested {
            at: at(4),
            reason: TerminationReason::Operator,
            instance_id: Some(i1()),
        },
    ])
    .when(
        Command::RecordToken {
            runner_name: "r".into(),
            runner_id: None,
        },
        at(8),
    )
    .then_err(DomainError::TerminationRequested);
}

#[test]
fn terminate_without_an_instance_is_refused() {
    given([requested(), intended(1, Market::Spot), rejected(1)])
        .when(
            Command::Terminate {
                reason: TerminationReason::Operator,
            },
            at(8),
        )
        .then_err(DomainError::NoInstance);
}

#[test]
fn terminated_for_another_instance_is_refused() {
    given([
        requested(),
        intended(1, Market::Spot),
        launched(),
        failed(FailureStage::Boot),
    ])
    .when(
        Command::ConfirmTerminated {
            instance_id: Some(InstanceId("i-9999".into())),
            evidence: TerminationEvidence::ReportedTerminated,
        },
        at(8),
    )
    .then_err(DomainError::InstanceMismatch {
        expected: Some(i1()),
        got: Some(InstanceId("i-9999".into())),
    });
}

#[test]
fn terminated_without_the_instance_id_is_refused_once_launched() {
    given([requested(), intended(1, Market::Spot), launched()])
        .when(
            Command::ConfirmTerminated {
                instance_id: None,
                evidence: TerminationEvidence::TokenFoundNothing,
            },
            at(8),
        )
        .then_err(DomainError::InstanceMismatch {
            expected: Some(i1()),
            got: None,
        });
}

#[test]
fn an_unrecorded_instance_cannot_be_confirmed_terminated() {
    given([requested(), intended(1, Market::Spot)])
        .when(
            Command::ConfirmTerminated {
                instance_id: Some(i1()),
                evidence: TerminationEvidence::ReportedTerminated,
            },
            at(8),
        )
        .then_err(DomainError::InstanceMismatch {
            expected: None,
            got: Some(i1()),
        });
}

#[test]
fn any_command_after_terminal_is_refused_but_true_repeats() {
    let closed = [
        requested(),
        intended(1, Market::Spot),
        launched(),
        completed(),
        terminated(Some(i1())),
    ];
    let refused = [
        Command::IntendLaunch {
            market: Market::Spot,
        },
        Command::RejectLaunch {
            client_token: token(1),
            code: "X".into(),
            class: LaunchErrorClass::Unknown,
        },
        Command::RecordToken {
            runner_name: "r".into(),
            runner_id: None,
        },
        Command::StartJob { job: None },
        Command::Fail {
            stage: FailureStage::Boot,
            reason: "x".into(),
        },
        Command::Terminate {
            reason: TerminationReason::Operator,
        },
        Command::ConfirmTerminated {
            instance_id: None,
            evidence: TerminationEvidence::TokenFoundNothing,
        },
    ];
    for command in refused {
        given(closed.clone())
            .when(command, at(9))
            .then_err(DomainError::Terminal {
                status: RunnerStatus::Completed,
            });
    }
    // What is already recorded is answered as a repeat, even on a closed stream.
    let repeats = [
        request_cmd(),
        Command::RecordLaunch {
            client_token: token(1),
            instance_id: i1(),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
        },
        Command::CompleteJob {
            conclusion: None,
            job: None,
        },
        Command::ConfirmTerminated {
            instance_id: Some(i1()),
            evidence: TerminationEvidence::ReportedTerminated,
        },
    ];
    for command in repeats {
        given(closed.clone()).when(command, at(9)).then([]);
    }
}

#[test]
fn a_repeated_rejection_and_confirmation_write_nothing() {
    given([requested(), intended(1, Market::Spot), rejected(1)])
        .when(
            Command::RejectLaunch {
                client_token: token(1),
                code: "InsufficientInstanceCapacity".into(),
                class: LaunchErrorClass::Capacity,
            },
            at(5),
        )
        .then([]);
    given([
        requested(),
        intended(1, Market::Spot),
        failed(FailureStage::Launch),
        terminated(None),
    ])
    .when(
        Command::ConfirmTerminated {
            instance_id: None,
            evidence: TerminationEvidence::TokenFoundNothing,
        },
        at(9),
    )
    .then([]);
}

#[test]
fn benign_refusals_are_only_those_of_a_runner_that_moved_on() {
    let terminal = DomainError::Terminal {
        status: RunnerStatus::Failed,
    };
    assert!(is_benign_refusal(
        &Command::StartJob { job: None },
        &terminal
    ));
    assert!(is_benign_refusal(
        &Command::Terminate {
            reason: TerminationReason::Operator
        },
        &DomainError::NoInstance
    ));
    assert!(is_benign_refusal(
        &Command::IntendLaunch {
            market: Market::Spot
        },
        &DomainError::LaunchUnresolved {
            client_token: token(1)
        }
    ));
    let record = Command::RecordLaunch {
        client_token: token(1),
        instance_id: i1(),
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
    };
    // An instance found for a closed runner, or a second instance: never benign.
    assert!(!is_benign_refusal(&record, &terminal));
    assert!(!is_benign_refusal(
        &record,
        &DomainError::AlreadyLaunched { instance_id: i1() }
    ));
    assert!(!is_benign_refusal(
        &Command::ConfirmTerminated {
            instance_id: None,
            evidence: TerminationEvidence::TokenFoundNothing,
        },
        &DomainError::InstanceMismatch {
            expected: Some(i1()),
            got: None
        }
    ));
}

// ---- deadlines (resume) ----

#[test]
fn a_runner_that_never_starts_its_job_misses_the_boot_timeout() {
    let s = fold(&[requested(), intended(1, Market::Spot), launched(), minted()]);
    assert!(resume(&s, at(600)).is_empty());
    assert_eq!(
        resume(&s, at(601)),
        vec![
            Command::Fail {
                stage: FailureStage::Boot,
                reason: "boot deadline passed".into()
            },
            Command::Terminate {
                reason: TerminationReason::Failure {
                    stage: FailureStage::Boot
                }
            }
        ]
    );
    let (owed_since, _) = termination_owed(&s, at(700)).expect("owed");
    assert_eq!(owed_since, at(601));
}

#[test]
fn a_request_never_launched_goes_stale_and_closes() {
    let s = fold(&[requested()]);
    let owed = resume(&s, at(600));
    assert_eq!(
        owed,
        vec![Command::Fail {
            stage: FailureStage::Stale,
            reason: "stale deadline passed".into()
        }]
    );
}

#[test]
fn a_running_job_is_failed_at_max_age() {
    let s = fold(&[
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        started(),
    ]);
    assert!(resume(&s, at(3599)).is_empty());
    assert_eq!(
        resume(&s, at(3600))[0],
        Command::Fail {
            stage: FailureStage::MaxAge,
            reason: "max-age deadline passed".into()
        }
    );
}

#[test]
fn a_draining_runner_is_owed_a_termination_after_the_drain_grace() {
    let s = fold(&[
        requested(),
        intended(1, Market::Spot),
        launched(),
        minted(),
        started(),
        completed(),
    ]);
    assert!(resume(&s, at(6 + 119)).is_empty());
    assert_eq!(
        resume(&s, at(6 + 120)),
        vec![Command::Terminate {
            reason: TerminationReason::DrainGraceOver
        }]
    );
    let owed = terminate_runner(&s, at(200)).expect("owed");
    assert_eq!(owed.owed_since, at(126));
    assert_eq!(owed.instance_id, Some(i1()));
    assert_eq!(owed.stream, stream());
}

#[test]
fn events_round_trip_through_json() {
    let history = [
        requested(),
        intended(1, Market::Spot),
        rejected(1),
        intended(2, Market::OnDemand),
        launched(),
        minted(),
        started(),
        completed(),
        RunnerEvent::TerminationRequested {
            at: at(7),
            reason: TerminationReason::DrainGraceOver,
            instance_id: Some(i1()),
        },
        terminated(Some(i1())),
    ];
    for event in &history {
        let json = serde_json::to_string(event).unwrap();
        let back: RunnerEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, event, "{json}");
    }
}

/// A head's state leaves out its empty fields (ADR-0020: a smaller head, the
/// same state), and the state an older build wrote with them as `null` reads
/// the same.
#[test]
fn a_state_is_written_without_its_empty_fields_and_read_either_way() {
    let state = fold(&[requested(), intended(1, Market::Spot), launched(), minted()]);
    let json = serde_json::to_value(&state).unwrap();
    for empty in [
        "failure",
        "strays",
        "spot_warned",
        "assigned_job",
        "demand_moved_to",
        "demand_ended",
        "busy_since",
    ] {
        assert!(json.get(empty).is_none(), "{empty} written: {json}");
    }
    assert!(json["request"].get("installation").is_none(), "{json}");
    assert_eq!(
        serde_json::from_value::<RunnerState>(json.clone()).unwrap(),
        state
    );
    let mut older = json;
    for empty in [
        "failure",
        "spot_warned",
        "assigned_job",
        "demand_moved_to",
        "demand_ended",
        "busy_since",
    ] {
        older[empty] = serde_json::Value::Null;
    }
    older["strays"] = serde_json::json!([]);
    older["request"]["installation"] = serde_json::Value::Null;
    older["request"]["deployment"] = serde_json::Value::Null;
    assert_eq!(serde_json::from_value::<RunnerState>(older).unwrap(), state);
}

#[test]
fn a_request_for_a_repository_github_cannot_name_is_refused() {
    let Command::Request {
        job,
        attempt,
        labels,
        spec,
        deadlines,
        ..
    } = request_cmd()
    else {
        unreachable!()
    };
    let odd = JobRef {
        repo: "wid gets".into(),
        ..job
    };
    let outcome = decide(
        &RunnerState::default(),
        Command::Request {
            job: odd,
            attempt,
            labels,
            spec,
            deadlines,
            installation: None,
            deployment: None,
        },
        at(0),
    );
    assert!(
        matches!(outcome, Err(DomainError::InvalidStreamId(_))),
        "{outcome:?}"
    );
}

// ---- strays ----

/// Issue 9: an instance RunInstances returns after its stream closed (the intent
/// was settled as never launched while the call was retrying) is recorded, not
/// dropped; the stream stays closed for its own instance, and the stray's
/// termination is confirmed only on evidence about that stray.
#[test]
fn an_instance_returned_after_the_stream_closed_is_a_stray_owed_a_termination() {
    let closed = [
        requested(),
        intended(1, Market::Spot),
        failed(FailureStage::Launch),
        terminated(None),
    ];
    let s = given(closed.clone())
        .when(record(1, "i-late"), at(8))
        .then([stray(1, "i-late", 8)]);
    assert!(is_terminal(&s));
    let owed = terminate_strays(&s);
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].owed_since, at(8));
    let with_stray: Vec<RunnerEvent> = closed
        .iter()
        .cloned()
        .chain([stray(1, "i-late", 8)])
        .collect();
    let late = || InstanceId("i-late".into());
    // NotFound 2 s after it was recorded proves nothing (window: 5 s).
    given(with_stray.clone())
        .when(
            Command::ConfirmTerminated {
                instance_id: Some(late()),
                evidence: TerminationEvidence::NotFoundAfterWindow,
            },
            at(10),
        )
        .then_err(DomainError::NoEvidence {
            evidence: TerminationEvidence::NotFoundAfterWindow,
            why: "NotFound inside the consistency window means unknown",
        });
    let s = given(with_stray.clone())
        .when(
            Command::ConfirmTerminated {
                instance_id: Some(late()),
                evidence: TerminationEvidence::ReportedTerminated,
            },
            at(10),
        )
        .then([RunnerEvent::StrayTerminated {
            at: at(10),
            instance_id: late(),
            evidence: TerminationEvidence::ReportedTerminated,
        }]);
    assert!(terminate_strays(&s).is_empty());
    assert!(is_terminal(&s));
}

// ---- jobs observed on GitHub ----

/// A start or completion learnt by asking GitHub (a lost webhook healed) is
/// recorded as such, and is the same fact as the webhook's: whichever comes
/// second is a repeat.
#[test]
fn a_job_observed_on_github_is_recorded_with_its_source() {
    let ready = || vec![requested(), intended(1, Market::Spot), launched(), minted()];
    let running = || [ready(), vec![started()]].concat();
    let s = given(ready())
        .when(Command::ObserveJobStarted { job: None }, at(5))
        .then([RunnerEvent::JobStarted {
            at: at(5),
            source: JobSource::Poll,
            job: None,
        }]);
    assert_eq!(s.status(), RunnerStatus::Running);
    given(running())
        .when(Command::ObserveJobStarted { job: None }, at(6))
        .then([]);
    let s = given(running())
        .when(
            Command::ObserveJobCompleted {
                conclusion: Some("success".into()),
                job: None,
            },
            at(9),
        )
        .then([RunnerEvent::JobCompleted {
            at: at(9),
            conclusion: Some("success".into()),
            source: JobSource::Poll,
            job: None,
        }]);
    assert_eq!(s.status(), RunnerStatus::Draining);
    given(running())
        .when(
            Command::CompleteJob {
                conclusion: None,
                job: None,
            },
            at(9),
        )
        .then([RunnerEvent::JobCompleted {
            at: at(9),
            conclusion: None,
            source: JobSource::Webhook,
            job: None,
        }]);
}

// ---- waiting for capacity (ADR-0014) ----

/// A runner that may wait for capacity: 1 hour of wait, 10 minutes to boot, 1
/// hour of age.
fn waiting_request() -> RunnerEvent {
    let RunnerEvent::Requested {
        at,
        job,
        attempt,
        labels,
        spec,
        installation,
        deployment,
        ..
    } = requested()
    else {
        unreachable!()
    };
    RunnerEvent::Requested {
        at,
        job,
        attempt,
        labels,
        spec,
        deadlines: Deadlines {
            max_wait_ms: Some(3_600_000),
            ..deadlines()
        },
        installation,
        deployment,
    }
}

#[test]
fn a_runner_waiting_for_capacity_is_stale_only_past_its_wait_limit() {
    // Requested at 0, a spot intent refused at 1–2: nothing alive, waiting.
    let state = fold(&[waiting_request(), intended(1, Market::Spot), rejected(1)]);
    // Past the 10-minute boot timeout, it still waits.
    assert_eq!(missed_deadline(&state, at(3_000)), None);
    assert_eq!(
        missed_deadline(&state, at(3_600)),
        Some(MissedDeadline {
            stage: FailureStage::Stale,
            at: at(3_600)
        })
    );
    // The old rule (no wait limit): stale at the boot timeout.
    let old = fold(&[requested(), intended(1, Market::Spot), rejected(1)]);
    assert_eq!(
        missed_deadline(&old, at(600)).map(|m| m.stage),
        Some(FailureStage::Stale)
    );
}

#[test]
fn a_runner_launched_after_waiting_boots_and_ages_from_its_launch() {
    let late = |secs: i64| at(secs);
    let events = [
        waiting_request(),
        intended(1, Market::Spot),
        rejected(1),
        // Launched 50 minutes after its request.
        RunnerEvent::LaunchIntended {
            at: late(3_000),
            client_token: token(2),
            market: Market::OnDemand,
        },
        RunnerEvent::Launched {
            at: late(3_001),
            client_token: token(2),
            instance_id: i1(),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            market: Market::OnDemand,
        },
    ];
    let state = fold(&events);
    // Not failed at once for the first intent's boot timeout, nor for the wait
    // limit (an instance runs): boot deadline 10 minutes after this launch.
    assert_eq!(missed_deadline(&state, late(3_599)), None);
    assert_eq!(boot_deadline(&state), Some(late(3_600)));
    assert_eq!(
        missed_deadline(&state, late(3_600)).map(|m| m.stage),
        Some(FailureStage::Boot)
    );
    // Its job started: the max age counts an hour from the launch, not the request.
    let mut running = events.to_vec();
    running.push(RunnerEvent::TokenMinted {
        at: late(3_010),
        runner_name: "jitr-acme-42-1".into(),
        runner_id: None,
    });
    running.push(RunnerEvent::JobStarted {
        at: late(3_050),
        source: Default::default(),
        job: None,
    });
    let state = fold(&running);
    assert_eq!(missed_deadline(&state, late(6_000)), None);
    assert_eq!(
        missed_deadline(&state, late(6_600)),
        Some(MissedDeadline {
            stage: FailureStage::MaxAge,
            at: late(6_600)
        })
    );
}
