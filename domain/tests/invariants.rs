//! Property tests of DESIGN.md's four invariants, over random command sequences that
//! include duplicates, out-of-order lifecycle inputs and resume-driven commands.

use jitr_domain::*;
use proptest::prelude::*;

const T0: i64 = 1_780_000_000_000;

fn job() -> JobRef {
    JobRef {
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id: 9,
        run_id: 3,
    }
}

/// Which token a launch outcome names.
#[derive(Clone, Copy, Debug)]
enum TokenChoice {
    Pending,
    Stale,
}

/// Which instance a command names.
#[derive(Clone, Copy, Debug)]
enum InstanceChoice {
    Current,
    Missing,
    Other,
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    Request(u32),
    Intend(Market),
    Launch(TokenChoice, u8),
    Reject(TokenChoice),
    Token(u8),
    Start,
    Complete,
    Fail(FailureStage),
    Terminate,
    Confirm(InstanceChoice, TerminationEvidence),
    SpotWarning(InstanceChoice),
    /// The job this runner stands for is cancelled, or taken by another.
    EndDemand(bool),
    /// The runner now stands for another job.
    MoveDemand,
    /// GitHub refuses to deregister it: busy.
    Busy,
    /// GitHub gives it another job than its own.
    StartOther,
    Resume,
    RepeatLast,
}

fn op() -> impl Strategy<Value = Op> {
    let token = prop_oneof![3 => Just(TokenChoice::Pending), 1 => Just(TokenChoice::Stale)];
    let instance = prop_oneof![
        3 => Just(InstanceChoice::Current),
        1 => Just(InstanceChoice::Missing),
        1 => Just(InstanceChoice::Other)
    ];
    let stage = prop_oneof![
        Just(FailureStage::Launch),
        Just(FailureStage::Token),
        Just(FailureStage::Boot),
        Just(FailureStage::SpotInterrupted),
        Just(FailureStage::Surplus),
    ];
    let market = prop_oneof![Just(Market::Spot), Just(Market::OnDemand)];
    prop_oneof![
        2 => (1u32..=2).prop_map(Op::Request),
        3 => market.prop_map(Op::Intend),
        3 => (token.clone(), 0u8..2).prop_map(|(t, i)| Op::Launch(t, i)),
        2 => token.prop_map(Op::Reject),
        2 => (0u8..2).prop_map(Op::Token),
        2 => Just(Op::Start),
        2 => Just(Op::Complete),
        1 => stage.prop_map(Op::Fail),
        1 => Just(Op::Terminate),
        1 => instance.clone().prop_map(Op::SpotWarning),
        1 => any::<bool>().prop_map(Op::EndDemand),
        1 => Just(Op::MoveDemand),
        1 => Just(Op::Busy),
        1 => Just(Op::StartOther),
        1 => (instance, prop::sample::select(TerminationEvidence::ALL.to_vec()))
            .prop_map(|(i, e)| Op::Confirm(i, e)),
        2 => Just(Op::Resume),
        2 => Just(Op::RepeatLast),
    ]
}

/// A random history: steps with the seconds elapsed before each.
fn history() -> impl Strategy<Value = Vec<(u16, Op)>> {
    // The first step is nearly always a Request, so most histories get somewhere.
    (
        prop_oneof![9 => Just(Op::Request(1)), 1 => op()],
        prop::collection::vec((0u16..900, op()), 0..40),
    )
        .prop_map(|(first, mut rest)| {
            rest.insert(0, (0, first));
            rest
        })
}

fn command_for(op: &Op, state: &RunnerState, now: Timestamp) -> Vec<Command> {
    let token = |choice: TokenChoice| match (choice, state.pending_launch()) {
        (TokenChoice::Pending, Some(t)) => t.clone(),
        _ => ClientToken("jitr-stale".into()),
    };
    match op {
        Op::Request(attempt) => vec![Command::Request {
            job: job(),
            attempt: *attempt,
            labels: vec!["self-hosted".into()],
            spec: InstanceSpec {
                instance_type: "m5.large".into(),
                vcpus: 2,
                image: "ami-1".into(),
                pool: None,
                avoid_spot: Vec::new(),
                park: false,
            },
            deadlines: Deadlines {
                boot_timeout_ms: 300_000,
                max_age_ms: 3_600_000,
                drain_grace_ms: 60_000,
                consistency_window_ms: 120_000,
                // Both deadline rules: waiting for capacity, and the old one.
                max_wait_ms: (attempt % 2 == 0).then_some(7_200_000),
            },
            installation: None,
            deployment: None,
        }],
        Op::Intend(market) => vec![Command::IntendLaunch { market: *market }],
        Op::Launch(choice, n) => vec![Command::RecordLaunch {
            client_token: token(*choice),
            instance_id: InstanceId(format!("i-{n}")),
            instance_type: "m5.large".into(),
            vcpus: 2,
        }],
        Op::Reject(choice) => vec![Command::RejectLaunch {
            client_token: token(*choice),
            code: "InsufficientInstanceCapacity".into(),
            class: LaunchErrorClass::Capacity,
        }],
        Op::Token(n) => vec![Command::RecordToken {
            runner_name: format!("runner-{n}"),
            runner_id: None,
        }],
        Op::Start => vec![Command::StartJob { job: None }],
        Op::Complete => vec![Command::CompleteJob {
            conclusion: Some("success".into()),
            job: None,
        }],
        Op::Fail(stage) => vec![Command::Fail {
            stage: *stage,
            reason: "random".into(),
        }],
        Op::Terminate => vec![Command::Terminate {
            reason: TerminationReason::Operator,
        }],
        Op::Confirm(choice, evidence) => vec![Command::ConfirmTerminated {
            evidence: *evidence,
            instance_id: match choice {
                InstanceChoice::Current => state.instance().map(|i| i.id.clone()),
                InstanceChoice::Missing => None,
                InstanceChoice::Other => Some(InstanceId("i-other".into())),
            },
        }],
        Op::SpotWarning(choice) => vec![Command::WarnSpotInterruption {
            instance_id: match choice {
                InstanceChoice::Current => state
                    .instance()
                    .map_or_else(|| InstanceId("i-none".into()), |i| i.id.clone()),
                _ => InstanceId("i-other".into()),
            },
        }],
        Op::EndDemand(cancelled) => vec![Command::EndDemand {
            ending: if *cancelled {
                DemandEnding::Cancelled
            } else {
                DemandEnding::TakenBy {
                    runner_name: "someone".into(),
                }
            },
        }],
        Op::MoveDemand => vec![Command::MoveDemand {
            job: JobRef {
                job_id: 43,
                ..job()
            },
        }],
        Op::Busy => vec![Command::RefuseDeregistration {
            reason: "busy".into(),
        }],
        Op::StartOther => vec![Command::StartJob {
            job: Some(JobRef {
                job_id: 44,
                ..job()
            }),
        }],
        Op::Resume => resume(state, now),
        Op::RepeatLast => vec![],
    }
}

/// Runs a history through the decider; returns every step's state and the log.
struct Run {
    log: Vec<RunnerEvent>,
    state: RunnerState,
    /// Commands applied twice in a row whose second application wrote events.
    non_idempotent: Vec<String>,
    /// States seen after each accepted step.
    states: Vec<RunnerState>,
}

fn run(history: &[(u16, Op)]) -> Run {
    let mut now = Timestamp(T0);
    let mut state = RunnerState::default();
    let mut log = Vec::new();
    let mut states = Vec::new();
    let mut non_idempotent = Vec::new();
    let mut last: Vec<Command> = Vec::new();
    for (elapsed, op) in history {
        now = now.plus_ms(u64::from(*elapsed) * 1000);
        let commands = match op {
            Op::RepeatLast => last.clone(),
            _ => command_for(op, &state, now),
        };
        for command in &commands {
            if let Ok((next, events)) = execute(&state, command.clone(), now) {
                if events.is_empty() {
                    continue;
                }
                log.extend(events.iter().cloned());
                state = next;
                states.push(state.clone());
                // Invariant 4: the same input delivered again writes nothing.
                if let Ok(again) = decide(&state, command.clone(), now) {
                    if !again.is_empty() {
                        non_idempotent.push(format!("{command:?} -> {again:?}"));
                    }
                }
            }
        }
        last = commands;
    }
    Run {
        log,
        state,
        non_idempotent,
        states,
    }
}

/// What a log says, read without the decider's `evolve`: the facts, then the
/// status rules of DESIGN.md.
struct Expected {
    status: RunnerStatus,
    terminal: bool,
    instance: Option<InstanceId>,
    may_be_alive: bool,
}

impl Expected {
    fn read(log: &[RunnerEvent]) -> Expected {
        enum Latest {
            None,
            Pending,
            Rejected,
            Launched(InstanceId),
        }
        let mut latest = Latest::None;
        for event in log {
            match (event, &latest) {
                (RunnerEvent::LaunchIntended { .. }, _) => latest = Latest::Pending,
                (RunnerEvent::LaunchRejected { .. }, Latest::Pending) => latest = Latest::Rejected,
                (RunnerEvent::Launched { instance_id, .. }, Latest::Pending) => {
                    latest = Latest::Launched(instance_id.clone())
                }
                _ => {}
            }
        }
        let has = |kind: &str| count(log, kind) > 0;
        let requested = has("Requested");
        let terminated = has("Terminated");
        let (failed, completed) = (has("Failed"), has("JobCompleted"));
        let may_be_alive = !terminated && matches!(latest, Latest::Pending | Latest::Launched(_));
        let terminal = requested && (terminated || ((failed || completed) && !may_be_alive));
        let status = if !requested {
            RunnerStatus::Unrequested
        } else if terminal && completed {
            RunnerStatus::Completed
        } else if terminal {
            RunnerStatus::Failed
        } else if failed {
            RunnerStatus::Terminating
        } else if completed {
            RunnerStatus::Draining
        } else if has("TerminationRequested") {
            RunnerStatus::Terminating
        } else if has("JobStarted") || has("DeregistrationRefused") {
            // GitHub refusing to delete it as busy: it runs a job (ADR-0017).
            RunnerStatus::Running
        } else if has("TokenMinted") {
            RunnerStatus::Ready
        } else {
            match latest {
                Latest::Pending => RunnerStatus::Launching,
                Latest::Launched(_) => RunnerStatus::Booting,
                Latest::None | Latest::Rejected => RunnerStatus::Requested,
            }
        };
        let instance = match latest {
            Latest::Launched(id) => Some(id),
            _ => None,
        };
        Expected {
            status,
            terminal,
            instance,
            may_be_alive,
        }
    }
}

fn count(log: &[RunnerEvent], kind: &str) -> usize {
    log.iter().filter(|e| e.kind() == kind).count()
}

/// Compensates the runner as the handlers would, far in the future: apply what
/// `resume` owes, and confirm each owed termination as the cloud would.
fn settle(mut state: RunnerState, mut log: Vec<RunnerEvent>) -> (RunnerState, Vec<RunnerEvent>) {
    let now = Timestamp(T0 + 10 * 86_400_000);
    for _ in 0..4 {
        for command in resume(&state, now) {
            let terminate = matches!(command, Command::Terminate { .. });
            if let Ok((next, events)) = execute(&state, command, now) {
                log.extend(events);
                state = next;
            }
            if terminate {
                let evidence = if state.instance().is_some() {
                    TerminationEvidence::ReportedTerminated
                } else if state.pending_launch().is_some() {
                    TerminationEvidence::TokenFoundNothing
                } else {
                    TerminationEvidence::NothingLaunched
                };
                let confirm = Command::ConfirmTerminated {
                    instance_id: state.instance().map(|i| i.id.clone()),
                    evidence,
                };
                let (next, events) = execute(&state, confirm, now).expect("confirm is accepted");
                log.extend(events);
                state = next;
            }
        }
    }
    (state, log)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Invariant 1: terminal ⇒ no instance may be alive (every `LaunchIntended` was
    /// answered by a `LaunchRejected`, or a `Terminated` was written), judged from
    /// the log itself; and a failure or completion
    /// after a launch without `Terminated` is `Terminating` / `Draining`, owing a
    /// termination.
    #[test]
    fn terminal_implies_no_live_instance(history in history()) {
        let Run { log, state, states, .. } = run(&history);
        for (i, s) in states.iter().enumerate() {
            let prefix = &log[..s.version as usize];
            if is_terminal(s) {
                let unrejected = count(prefix, "LaunchIntended") - count(prefix, "LaunchRejected");
                prop_assert!(
                    unrejected == 0 || count(prefix, "Terminated") == 1,
                    "terminal at step {i} with a possibly live instance: {prefix:?}"
                );
            }
            if count(prefix, "Launched") == 1 && count(prefix, "Terminated") == 0 {
                prop_assert!(!is_terminal(s));
                if s.failure.is_some() || s.job_completed_at.is_some() {
                    prop_assert!(matches!(
                        s.status(),
                        RunnerStatus::Terminating | RunnerStatus::Draining
                    ));
                }
            }
        }
        // Whatever happened, settling what resume owes closes the stream.
        if state.request.is_some() {
            let (settled, settled_log) = settle(state, log);
            prop_assert!(is_terminal(&settled), "not closed after settling: {settled_log:?}");
            prop_assert!(
                count(&settled_log, "Launched") == 0 || count(&settled_log, "Terminated") == 1
            );
        }
    }

    /// Invariant 2: at most one instance per stream; a `Launched` only for the
    /// pending intent; a new `LaunchIntended` only once the previous one was rejected.
    #[test]
    fn at_most_one_instance_per_stream(history in history()) {
        let Run { log, .. } = run(&history);
        prop_assert!(count(&log, "Launched") <= 1);
        let mut pending: Option<ClientToken> = None;
        let mut launched = false;
        for event in &log {
            match event {
                RunnerEvent::LaunchIntended { client_token, .. } => {
                    prop_assert!(pending.is_none(), "intent while one is unresolved");
                    prop_assert!(!launched, "intent after an instance exists");
                    pending = Some(client_token.clone());
                }
                RunnerEvent::Launched { client_token, .. } => {
                    prop_assert_eq!(pending.take(), Some(client_token.clone()));
                    launched = true;
                }
                RunnerEvent::LaunchRejected { client_token, .. } => {
                    prop_assert_eq!(pending.take(), Some(client_token.clone()));
                }
                _ => {}
            }
        }
    }

    /// Invariant 3: replaying the log, also after a round trip through the
    /// serialised form, gives the state that an expectation written without
    /// `evolve` reads straight off the log.
    #[test]
    fn replay_agrees_with_the_log_read_independently(history in history()) {
        let Run { log, .. } = run(&history);
        let json = serde_json::to_string(&log).unwrap();
        let back: Vec<RunnerEvent> = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &log);
        let replayed = fold(&back);
        let expected = Expected::read(&log);
        prop_assert_eq!(replayed.status(), expected.status, "{:?}", log);
        prop_assert_eq!(is_terminal(&replayed), expected.terminal);
        prop_assert_eq!(replayed.instance().map(|i| i.id.clone()), expected.instance);
        prop_assert_eq!(replayed.instance_may_be_alive(), expected.may_be_alive);
        prop_assert_eq!(replayed.version as usize, log.len());
    }

    /// Invariant 4: duplicate and out-of-order inputs never produce a second
    /// instance or lose a `Terminated`: every command is idempotent, nothing follows
    /// `Terminated`, and a closed stream stays closed.
    #[test]
    fn duplicates_and_reordering_are_harmless(history in history()) {
        let Run { log, non_idempotent, states, .. } = run(&history);
        prop_assert!(non_idempotent.is_empty(), "{non_idempotent:?}");
        prop_assert!(count(&log, "Launched") <= 1);
        // After `Terminated`, only stray instances may still be recorded (and
        // confirmed gone): the log must hold every instance the cloud returned.
        let stray = |e: &RunnerEvent| e.kind().starts_with("Stray");
        if let Some(pos) = log.iter().position(|e| e.kind() == "Terminated") {
            prop_assert!(log[pos + 1..].iter().all(stray), "events after Terminated: {:?}", log);
        }
        if let Some(first_terminal) = states.iter().position(is_terminal) {
            prop_assert!(states[first_terminal..].iter().all(is_terminal));
            let core = |s: &RunnerState| RunnerState { version: 0, strays: Vec::new(), ..s.clone() };
            let closed = core(&states[first_terminal]);
            prop_assert!(
                states[first_terminal..].iter().all(|s| core(s) == closed),
                "a closed stream took a command"
            );
        }
    }

    /// Invariant 1, against an eventually consistent cloud: every `Terminated`
    /// carries recorded evidence, and NotFound-based evidence is never written
    /// inside the consistency window (of the launch, or of the pending intent).
    #[test]
    fn terminated_is_written_only_on_evidence(history in history()) {
        let Run { log, .. } = run(&history);
        let window = 120_000;
        let mut launched_at = None;
        let mut intended_at = None;
        for event in &log {
            match event {
                RunnerEvent::LaunchIntended { at, .. } => intended_at = Some(*at),
                RunnerEvent::Launched { at, .. } => launched_at = Some(*at),
                RunnerEvent::StrayTerminated { evidence, .. } => {
                    prop_assert_ne!(*evidence, TerminationEvidence::Unrecorded);
                }
                RunnerEvent::Terminated { at, instance_id, evidence } => {
                    prop_assert_ne!(*evidence, TerminationEvidence::Unrecorded);
                    match evidence {
                        TerminationEvidence::NotFoundAfterWindow => {
                            let since = launched_at.expect("a launched instance");
                            prop_assert!(instance_id.is_some());
                            prop_assert!(at.millis_since(since) >= window, "{log:?}");
                        }
                        TerminationEvidence::TokenFoundNothing => {
                            let since = intended_at.expect("an intent");
                            prop_assert!(instance_id.is_none());
                            prop_assert!(at.millis_since(since) >= window, "{log:?}");
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }

    /// ADR-0017: a runner that took a job — one started or completed on it,
    /// or GitHub's refusal to deregister it as busy — is never failed for being
    /// idle (boot, stale, surplus), and one runner takes at most one job.
    #[test]
    fn a_runner_that_took_a_job_is_never_failed_for_being_idle(history in history()) {
        let Run { log, .. } = run(&history);
        let mut took: Option<Option<JobRef>> = None;
        for event in &log {
            match event {
                RunnerEvent::JobStarted { job, .. } | RunnerEvent::JobCompleted { job, .. } => {
                    if let (Some(Some(first)), Some(now)) = (&took, job) {
                        prop_assert_eq!(first, now, "two jobs on one runner: {:?}", log);
                    }
                    if !matches!(took, Some(Some(_))) {
                        took = Some(job.clone());
                    }
                }
                RunnerEvent::DeregistrationRefused { .. } => {
                    took.get_or_insert(None);
                }
                RunnerEvent::Failed { stage, .. } => {
                    prop_assert!(
                        !(stage.is_idle_runners() && took.is_some()),
                        "{stage:?} after a job was taken: {log:?}"
                    );
                }
                _ => {}
            }
        }
    }
}
