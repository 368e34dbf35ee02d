//! Property tests of the launch rules every handler shares: the launch plan, the
//! resolution of a pending intent, and what is recorded of an instance.

use jitr_domain::*;
use proptest::prelude::*;

const T0: i64 = 1_780_000_000_000;

fn class() -> impl Strategy<Value = LaunchErrorClass> {
    prop_oneof![
        Just(LaunchErrorClass::Quota),
        Just(LaunchErrorClass::Capacity),
        Just(LaunchErrorClass::Throttled),
        Just(LaunchErrorClass::InvalidRequest),
        Just(LaunchErrorClass::Unknown),
    ]
}

fn market() -> impl Strategy<Value = Market> {
    prop_oneof![Just(Market::Spot), Just(Market::OnDemand)]
}

fn evidence() -> impl Strategy<Value = TerminationEvidence> {
    prop::sample::select(TerminationEvidence::ALL.to_vec())
}

fn refusals() -> impl Strategy<Value = Vec<Refusal>> {
    prop::collection::vec(
        (market(), class()).prop_map(|(market, class)| Refusal {
            market,
            instance_type: 0,
            class,
        }),
        0..4,
    )
}

/// How the runner stands when its pending intent is looked up.
#[derive(Clone, Copy, Debug)]
enum Standing {
    Wanted,
    Failed,
    Completed,
    TerminationAsked,
}

fn standing() -> impl Strategy<Value = Standing> {
    prop_oneof![
        Just(Standing::Wanted),
        Just(Standing::Failed),
        Just(Standing::Completed),
        Just(Standing::TerminationAsked),
    ]
}

/// A runner with a pending launch intent written at `T0 + intended_s` seconds,
/// after `rejected` refused launches, with `vcpus` in its spec.
fn pending(rejected: u32, intended_s: i64, vcpus: u32, standing: Standing) -> RunnerState {
    pending_within(
        DEFAULT_CONSISTENCY_WINDOW_MS,
        rejected,
        intended_s,
        vcpus,
        standing,
    )
}

/// [`pending`], for a runner whose consistency window is `window_ms`.
fn pending_within(
    window_ms: u64,
    rejected: u32,
    intended_s: i64,
    vcpus: u32,
    standing: Standing,
) -> RunnerState {
    let job = JobRef {
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id: 7,
        run_id: 1,
    };
    let at = Timestamp(T0);
    let step = |state: &RunnerState, command: Command, now: Timestamp| {
        execute(state, command, now).expect("a valid history").0
    };
    let mut state = step(
        &RunnerState::default(),
        Command::Request {
            job,
            attempt: 1,
            labels: vec!["self-hosted".into()],
            spec: InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus,
                image: "ami-1".into(),
                pool: None,
                avoid_spot: Vec::new(),
                park: false,
            },
            deadlines: Deadlines {
                consistency_window_ms: window_ms,
                ..Deadlines::default()
            },
            installation: None,
            deployment: None,
        },
        at,
    );
    for _ in 0..rejected {
        state = step(
            &state,
            Command::IntendLaunch {
                market: Market::Spot,
            },
            at,
        );
        let token = state.pending_launch().cloned().expect("pending");
        state = step(
            &state,
            Command::RejectLaunch {
                client_token: token,
                code: "InsufficientInstanceCapacity".into(),
                class: LaunchErrorClass::Capacity,
            },
            at,
        );
    }
    let intended = Timestamp(T0 + intended_s * 1000);
    state = step(
        &state,
        Command::IntendLaunch {
            market: Market::OnDemand,
        },
        intended,
    );
    let then = match standing {
        Standing::Wanted => return state,
        Standing::Failed => Command::Fail {
            stage: FailureStage::Token,
            reason: "x".into(),
        },
        Standing::Completed => Command::CompleteJob {
            conclusion: None,
            job: None,
        },
        Standing::TerminationAsked => Command::Terminate {
            reason: TerminationReason::Operator,
        },
    };
    step(&state, then, intended)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Spot first; another market only after a quota or capacity refusal (or a
    /// market known full, passed as refused); no market twice in one round; a
    /// wrong request fails the runner; anything else waits — a runner is never
    /// given up for capacity (ADR-0014).
    #[test]
    fn the_launch_plan(refused in refusals()) {
        let next = next_launch(&refused, LaunchChoices::default());
        match (refused.last(), next) {
            (None, n) => prop_assert_eq!(n, NextLaunch::Try { market: Market::Spot, instance_type: 0 }),
            (Some(last), NextLaunch::Try { market: m, instance_type }) => {
                prop_assert_eq!(instance_type, 0);
                prop_assert!(matches!(last.class, LaunchErrorClass::Quota | LaunchErrorClass::Capacity));
                prop_assert!(refused.iter().all(|r| r.market != m));
                // Spot is tried whenever it was not refused.
                prop_assert!(m == Market::Spot || refused.iter().any(|r| r.market == Market::Spot));
            }
            (Some(last), NextLaunch::Fail) => {
                prop_assert_eq!(last.class, LaunchErrorClass::InvalidRequest);
            }
            (Some(last), NextLaunch::Wait) => {
                prop_assert_ne!(last.class, LaunchErrorClass::InvalidRequest);
                let capacity = matches!(last.class, LaunchErrorClass::Quota | LaunchErrorClass::Capacity);
                let both = [Market::Spot, Market::OnDemand]
                    .iter()
                    .all(|m| refused.iter().any(|r| r.market == *m));
                prop_assert!(!capacity || both);
            }
        }
    }

    /// A pending intent is resolved by its token: a found instance is recorded for
    /// the pending token; absence means nothing until the runner's consistency
    /// window has passed;
    /// after it, the runner is never left stuck: it may launch again if it still
    /// wants an instance, and is closed otherwise. Every resolution is accepted by
    /// the decider.
    #[test]
    fn a_pending_intent_is_resolved_by_its_token(
        rejected in 0u32..3,
        intended_s in 0i64..600,
        vcpus in 1u32..64,
        standing in standing(),
        found in prop::option::of((0u8..3, prop::option::of(0u32..96))),
        window_ms in 0u64..300_000,
        age_ms in 0u64..400_000,
    ) {
        let state = pending_within(window_ms, rejected, intended_s, vcpus, standing);
        let token = state.pending_launch().cloned().expect("pending");
        let intended = state.launch.as_ref().unwrap().intended_at;
        let now = intended.plus_ms(age_ms);
        let found = found.map(|(n, reported)| FoundInstance {
            instance_id: InstanceId(format!("i-{n}")),
            instance_type: (n > 0).then(|| "m5.large".to_string()),
            vcpus: reported,
        });
        let resolution = resolve_pending_launch(&state, found.clone(), now).expect("pending");
        match (found, resolution) {
            (Some(f), IntentResolution::Launched(command)) => {
                let Command::RecordLaunch { client_token, instance_id, vcpus: recorded, .. } = &command else {
                    panic!("not a RecordLaunch: {command:?}");
                };
                prop_assert_eq!(client_token, &token);
                prop_assert_eq!(instance_id, &f.instance_id);
                prop_assert_eq!(*recorded, f.vcpus.filter(|v| *v > 0).unwrap_or(vcpus));
                let (after, _) = execute(&state, command, now).expect("accepted");
                prop_assert_eq!(after.instance().map(|i| &i.id), Some(&f.instance_id));
            }
            (None, IntentResolution::LookAgain { after_ms }) => {
                prop_assert!(age_ms < window_ms);
                prop_assert!(after_ms > 0 && age_ms + after_ms <= window_ms);
            }
            (None, IntentResolution::NeverLaunched(command)) => {
                prop_assert!(age_ms >= window_ms);
                let (after, _) = execute(&state, command, now).expect("accepted");
                prop_assert!(!after.instance_may_be_alive());
                if state.wants_instance() {
                    let again = Command::IntendLaunch { market: Market::Spot };
                    prop_assert!(execute(&after, again, now).is_ok(), "cannot launch again");
                } else {
                    prop_assert!(is_terminal(&after), "left open: {after:?}");
                }
            }
            (found, other) => prop_assert!(false, "found {found:?} resolved as {other:?}"),
        }
    }

    /// `Terminated` about a launched instance is written only on evidence about
    /// that instance: EC2 reporting it shutting down or terminated, or NotFound
    /// once the consistency window has passed. NotFound inside the window is
    /// "unknown" and closes nothing; what the judge calls gone, the decider
    /// accepts, and the stream records which evidence closed it.
    #[test]
    fn an_instance_is_terminated_only_on_evidence(
        window_ms in 0u64..300_000,
        launched_s in 0i64..60,
        age_ms in 0u64..400_000,
        report in prop_oneof![
            Just(InstanceReport::Live),
            Just(InstanceReport::Terminated),
            Just(InstanceReport::NotFound),
        ],
        evidence in evidence(),
        named in prop_oneof![Just(Some("i-1")), Just(Some("i-2")), Just(None)],
    ) {
        let state = pending_within(window_ms, 0, 0, 4, Standing::Wanted);
        let token = state.pending_launch().cloned().unwrap();
        let launched_at = Timestamp(T0 + launched_s * 1000);
        let record = Command::RecordLaunch {
            client_token: token,
            instance_id: InstanceId("i-1".into()),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
        };
        let (state, _) = execute(&state, record, launched_at).unwrap();
        let fail = Command::Fail { stage: FailureStage::Token, reason: "mint failed".into() };
        let (state, _) = execute(&state, fail, launched_at).unwrap();
        let now = launched_at.plus_ms(age_ms);
        let verdict = judge_instance(report, launched_at, window_ms, now);
        match (report, verdict) {
            (InstanceReport::Live, InstanceVerdict::Alive) => {}
            (InstanceReport::Terminated, InstanceVerdict::Gone(TerminationEvidence::ReportedTerminated)) => {}
            (InstanceReport::NotFound, InstanceVerdict::Gone(TerminationEvidence::NotFoundAfterWindow)) => {
                prop_assert!(age_ms >= window_ms);
            }
            (InstanceReport::NotFound, InstanceVerdict::Unknown) => prop_assert!(age_ms < window_ms),
            (r, v) => prop_assert!(false, "{r:?} judged {v:?}"),
        }
        if let InstanceVerdict::Gone(evidence) = verdict {
            let confirm = Command::ConfirmTerminated { instance_id: Some(InstanceId("i-1".into())), evidence };
            let (after, events) = execute(&state, confirm, now).expect("the judge's evidence is accepted");
            prop_assert!(is_terminal(&after));
            prop_assert_eq!(after.terminated_by, Some(evidence));
            let recorded = matches!(&events[..], [RunnerEvent::Terminated { evidence: e, .. }] if *e == evidence);
            prop_assert!(recorded, "{:?}", events);
        }
        let instance_id = named.map(|n| InstanceId(n.into()));
        let accepted = execute(
            &state,
            Command::ConfirmTerminated { instance_id: instance_id.clone(), evidence },
            now,
        ).is_ok();
        let should = instance_id.as_ref().is_some_and(|i| i.0 == "i-1")
            && match evidence {
                TerminationEvidence::ReportedTerminated | TerminationEvidence::StateChange => true,
                TerminationEvidence::NotFoundAfterWindow => age_ms >= window_ms,
                _ => false,
            };
        prop_assert_eq!(accepted, should, "{:?} on {:?} at age {} ms, window {} ms", evidence, instance_id, age_ms, window_ms);
    }

    /// A runner whose launch is unresolved closes without an instance only when
    /// its client token found nothing a whole consistency window after the intent;
    /// "nothing launched" is accepted only when no launch is pending.
    #[test]
    fn an_unresolved_launch_closes_only_after_the_window(
        window_ms in 0u64..300_000,
        age_ms in 0u64..400_000,
        evidence in evidence(),
        rejected_last in any::<bool>(),
    ) {
        let mut state = pending_within(window_ms, 1, 0, 4, Standing::Failed);
        let intended = state.launch.as_ref().unwrap().intended_at;
        if rejected_last {
            let token = state.pending_launch().cloned().unwrap();
            let reject = Command::RejectLaunch { client_token: token, code: "VcpuLimitExceeded".into(), class: LaunchErrorClass::Quota };
            state = execute(&state, reject, intended).unwrap().0;
            // Failed with every launch refused: closed, nothing owed.
            prop_assert!(is_terminal(&state));
            return Ok(());
        }
        let now = intended.plus_ms(age_ms);
        let accepted = execute(&state, Command::ConfirmTerminated { instance_id: None, evidence }, now);
        let should = evidence == TerminationEvidence::TokenFoundNothing && age_ms >= window_ms;
        prop_assert_eq!(accepted.is_ok(), should, "{:?} at age {} ms, window {} ms: {:?}", evidence, age_ms, window_ms, accepted);
        if let Err(e) = accepted {
            prop_assert!(matches!(e, DomainError::NoEvidence { .. }), "{e:?}");
        }
    }

    /// What is recorded of an instance depends only on what the cloud reported and
    /// the runner's own request: the same instance is recorded the same way by
    /// whichever handler finds it.
    #[test]
    fn the_recorded_instance_has_one_rule(
        vcpus in 1u32..64,
        reported_vcpus in prop::option::of(0u32..96),
        reported_type in prop::option::of(prop_oneof![Just(String::new()), Just("m5.large".to_string())]),
    ) {
        let state = pending(0, 0, vcpus, Standing::Wanted);
        let found = FoundInstance {
            instance_id: InstanceId("i-1".into()),
            instance_type: reported_type.clone(),
            vcpus: reported_vcpus,
        };
        let Some(Command::RecordLaunch { instance_type, vcpus: recorded, .. }) = record_launch(&state, found) else {
            panic!("no RecordLaunch for a pending intent");
        };
        prop_assert!(recorded > 0);
        prop_assert_eq!(recorded, reported_vcpus.filter(|v| *v > 0).unwrap_or(vcpus));
        let expected_type = reported_type.filter(|t| !t.is_empty()).unwrap_or_else(|| "c5.xlarge".into());
        prop_assert_eq!(instance_type, expected_type);
    }
}

#[test]
fn nothing_is_resolved_without_a_pending_intent() {
    let state = pending(0, 0, 4, Standing::Wanted);
    let token = state.pending_launch().cloned().unwrap();
    let (rejected, _) = execute(
        &state,
        Command::RejectLaunch {
            client_token: token,
            code: "X".into(),
            class: LaunchErrorClass::Unknown,
        },
        Timestamp(T0),
    )
    .unwrap();
    assert_eq!(resolve_pending_launch(&rejected, None, Timestamp(T0)), None);
    let found = FoundInstance {
        instance_id: InstanceId("i-1".into()),
        instance_type: None,
        vcpus: None,
    };
    assert_eq!(record_launch(&rejected, found), None);
}
