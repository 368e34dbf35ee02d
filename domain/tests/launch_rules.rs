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

fn refusals() -> impl Strategy<Value = Vec<Refusal>> {
    prop::collection::vec(
        (market(), class()).prop_map(|(market, class)| Refusal { market, class }),
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
            },
            deadlines: Deadlines::default(),
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
        Standing::Completed => Command::CompleteJob { conclusion: None },
        Standing::TerminationAsked => Command::Terminate {
            reason: TerminationReason::Operator,
        },
    };
    step(&state, then, intended)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Spot first; on-demand only after spot was refused for quota or capacity; no
    /// market twice in one delivery; a wrong request fails the runner; otherwise back
    /// off (15 s to 5 min, never shorter for a later delivery) until the last delivery.
    #[test]
    fn the_launch_plan(refused in refusals(), delivery in 1u32..12, max in 1u32..12) {
        let next = next_launch(&refused, delivery, max);
        match (refused.last(), next) {
            (None, n) => prop_assert_eq!(n, NextLaunch::Try(Market::Spot)),
            (Some(last), NextLaunch::Try(m)) => {
                prop_assert_eq!(m, Market::OnDemand);
                prop_assert_eq!(last.market, Market::Spot);
                prop_assert!(matches!(last.class, LaunchErrorClass::Quota | LaunchErrorClass::Capacity));
                prop_assert!(refused.iter().all(|r| r.market != m));
            }
            (Some(last), NextLaunch::Fail) => {
                prop_assert_eq!(last.class, LaunchErrorClass::InvalidRequest);
            }
            (Some(last), NextLaunch::GiveUp) => {
                prop_assert!(delivery >= max);
                prop_assert_ne!(last.class, LaunchErrorClass::InvalidRequest);
            }
            (Some(last), NextLaunch::BackOff { after_ms }) => {
                prop_assert!(delivery < max);
                prop_assert_ne!(last.class, LaunchErrorClass::InvalidRequest);
                prop_assert!((15_000..=MAX_LAUNCH_BACKOFF_MS).contains(&after_ms));
                prop_assert!(launch_backoff_ms(delivery + 1) >= after_ms);
            }
        }
    }

    /// A pending intent is resolved by its token: a found instance is recorded for
    /// the pending token; absence means nothing until the settle window has passed;
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
        age_ms in 0u64..120_000,
    ) {
        let state = pending(rejected, intended_s, vcpus, standing);
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
                prop_assert!(age_ms < INTENT_SETTLE_MS);
                prop_assert!(after_ms > 0 && age_ms + after_ms <= INTENT_SETTLE_MS);
            }
            (None, IntentResolution::NeverLaunched(command)) => {
                prop_assert!(age_ms >= INTENT_SETTLE_MS);
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
