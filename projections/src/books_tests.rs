//! ADR-0023's promise: the books of a snapshot, folded on over a window that
//! starts after it, are the books of a fold of the whole log; and they agree
//! with the ledger that keeps every runner.

use jitr_domain::{
    Command, Deadlines, DemandEnding, FailureStage, InstanceId, InstanceSpec, JobRef, Market,
    RunnerEvent, RunnerState, StreamId, TerminationEvidence, TerminationReason, Timestamp, execute,
};
use proptest::prelude::*;

use crate::accounting::Ledger;
use crate::books::{Books, Window};
use crate::tests::job;

const T0: i64 = 1_777_868_520_000;
const HOUR: i64 = 3_600_000;

/// One step of a runner's life: a command, chosen by number, after a gap.
#[derive(Clone, Debug)]
struct Step {
    what: u8,
    other_job: u64,
    gap_s: i64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..14,
        1u64..12,
        prop_oneof![1i64..120, 120i64..7_200, 7_200i64..40_000],
    )
        .prop_map(|(what, other_job, gap_s)| Step {
            what,
            other_job,
            gap_s,
        })
}

/// A runner's life: whichever of its steps the domain accepts, from `start`.
fn life(id: u64, warm: bool, start: i64, steps: &[Step]) -> (StreamId, Vec<RunnerEvent>) {
    let own = if warm {
        JobRef::warmth("acme", "widgets")
    } else {
        job(id)
    };
    let stream = StreamId::for_job(&own, if warm { id as u32 } else { 1 }).unwrap();
    let mut state = RunnerState::default();
    let mut log = Vec::new();
    let mut t = start;
    let mut apply = |state: &mut RunnerState, command: Command, t: i64| {
        if let Ok((next, events)) = execute(state, command, Timestamp(t)) {
            *state = next;
            log.extend(events);
        }
    };
    apply(
        &mut state,
        Command::Request {
            job: own,
            attempt: if warm { id as u32 } else { 1 },
            labels: vec!["self-hosted".into()],
            spec: InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami-1".into(),
                pool: Some(if id % 2 == 0 { "linux" } else { "large" }.into()),
                avoid_spot: Vec::new(),
                park: false,
            },
            deadlines: Deadlines::default(),
            installation: None,
            deployment: None,
        },
        t,
    );
    for (n, s) in steps.iter().enumerate() {
        t += s.gap_s * 1000;
        let instance = state.instance().map(|i| i.id.clone());
        let command = match s.what {
            0 | 1 => Command::IntendLaunch {
                market: if s.other_job % 2 == 0 {
                    Market::Spot
                } else {
                    Market::OnDemand
                },
            },
            2 | 3 => match (state.pending_launch().cloned(), &state.launch) {
                (Some(token), _) => Command::RecordLaunch {
                    client_token: token,
                    instance_id: InstanceId(format!("i-{id}-{n}")),
                    instance_type: "c5.xlarge".into(),
                    vcpus: 4,
                },
                // A second instance for a settled launch: a stray.
                (None, Some(launch)) => Command::RecordLaunch {
                    client_token: launch.client_token.clone(),
                    instance_id: InstanceId(format!("i-{id}-{n}")),
                    instance_type: "c5.large".into(),
                    vcpus: 2,
                },
                (None, None) => continue,
            },
            4 => Command::RecordToken {
                runner_name: format!("r-{id}"),
                runner_id: Some(id),
            },
            5 => Command::StartJob {
                job: Some(if s.other_job < 4 {
                    job(id)
                } else {
                    job(s.other_job)
                }),
            },
            6 => Command::CompleteJob {
                conclusion: Some("success".into()),
                job: None,
            },
            7 => Command::EndDemand {
                ending: DemandEnding::Cancelled,
            },
            8 => Command::MoveDemand {
                job: job(s.other_job),
            },
            9 => match instance {
                Some(instance_id) => Command::WarnSpotInterruption { instance_id },
                None => continue,
            },
            10 => Command::Fail {
                stage: [
                    FailureStage::Token,
                    FailureStage::Boot,
                    FailureStage::Surplus,
                    FailureStage::SpotInterrupted,
                ][s.other_job as usize % 4],
                reason: "test".into(),
            },
            11 => Command::Terminate {
                reason: TerminationReason::Operator,
            },
            _ => {
                // Confirm the runner's instance gone, or one of its strays.
                let stray = state
                    .strays
                    .iter()
                    .find(|st| st.gone.is_none())
                    .map(|st| st.id.clone());
                Command::ConfirmTerminated {
                    instance_id: if s.other_job % 3 == 0 {
                        stray.or(instance)
                    } else {
                        instance
                    },
                    evidence: TerminationEvidence::ReportedTerminated,
                }
            }
        };
        apply(&mut state, command, t);
    }
    (stream, log)
}

/// A feed: the runners' events ordered by when they were written, each
/// `late` ms after it happened for some (so positions and moments disagree),
/// with global positions from 1.
fn feed(runners: &[(bool, i64, Vec<Step>, Vec<i64>)]) -> Vec<(u64, StreamId, RunnerEvent)> {
    let mut written: Vec<(i64, usize, usize, StreamId, RunnerEvent)> = Vec::new();
    for (r, (warm, start_h, steps, lateness)) in runners.iter().enumerate() {
        let (stream, events) = life(r as u64 + 1, *warm, T0 + start_h * HOUR / 4, steps);
        for (i, e) in events.into_iter().enumerate() {
            let late = lateness.get(i).copied().unwrap_or(0);
            // A stream's events stay in order: written after the previous one.
            let at = e.at().0 + late;
            let at = written
                .iter()
                .filter(|w| w.1 == r)
                .map(|w| w.0)
                .max()
                .map_or(at, |prev| prev.max(at));
            written.push((at, r, i, stream.clone(), e));
        }
    }
    written.sort_by_key(|w| (w.0, w.1, w.2));
    written
        .into_iter()
        .enumerate()
        .map(|(p, (_, _, _, s, e))| (p as u64 + 1, s, e))
        .collect()
}

fn runners() -> impl Strategy<Value = Vec<(bool, i64, Vec<Step>, Vec<i64>)>> {
    prop::collection::vec(
        (
            prop::bool::weighted(0.15),
            0i64..200,
            prop::collection::vec(step(), 0..14),
            prop::collection::vec(prop_oneof![Just(0i64), 0i64..600_000], 0..16),
        ),
        1..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Snapshot at any position, saved and read back, then the window's
    /// events (with a redelivered page): the same books as one fold of the
    /// whole log counting the same window.
    #[test]
    fn a_snapshot_folded_on_is_the_whole_fold(
        runners in runners(),
        cut in 0.0f64..1.0,
        since_after_h in 0i64..6,
        until_h in prop::option::of(0i64..80),
        grace_s in prop_oneof![Just(60u64), 0u64..7_200],
        redeliver in 0usize..50,
        horizon in prop::bool::ANY,
    ) {
        let feed = feed(&runners);
        let cut = (feed.len() as f64 * cut) as usize;
        let snapshot_last = feed[..cut].iter().map(|(_, _, e)| e.at()).max();
        let since = Timestamp(snapshot_last.map_or(T0, |t| t.0 + 1) + since_after_h * HOUR);
        let until = match until_h {
            Some(h) => Timestamp(since.0 + h * HOUR),
            None => Timestamp(T0 + 1_000 * HOUR),
        };
        let window = Window { since, until, grace_ms: grace_s * 1000 };
        let horizon = horizon.then_some(until);

        let mut whole = Books::new(window);
        for (p, s, e) in &feed {
            whole.fold(*p, s, e, horizon);
        }

        let mut books = Books::new(Window::none());
        for (p, s, e) in &feed[..cut] {
            books.fold(*p, s, e, None);
        }
        let saved = serde_json::to_string(&books).unwrap();
        let mut books: Books = serde_json::from_str(&saved).unwrap();
        books.open_window(window);
        // The feed redelivers a page that straddles the snapshot.
        let again = cut.saturating_sub(redeliver);
        for (p, s, e) in feed[again..].iter().chain(&feed[again..]) {
            books.fold(*p, s, e, horizon);
        }
        prop_assert_eq!(&books, &whole);
        prop_assert_eq!(books.leak_figures(), whole.leak_figures());
        prop_assert_eq!(books.jobs.figures(), whole.jobs.figures());
    }

    /// The books hold only what is open, yet give the leak figures, failures,
    /// strays and spot warnings of the ledger that keeps every runner.
    #[test]
    fn the_books_agree_with_the_ledger_of_every_runner(
        runners in runners(),
        since_h in prop::option::of(0i64..40),
        grace_s in prop_oneof![Just(60u64), 0u64..7_200],
    ) {
        let feed = feed(&runners);
        let until = feed.iter().map(|(_, _, e)| e.at()).max().unwrap_or(Timestamp(T0));
        let since = since_h.map_or(Timestamp(i64::MIN), |h| Timestamp(T0 + h * HOUR));
        let window = Window { since, until, grace_ms: grace_s * 1000 };
        let mut books = Books::new(window);
        let mut ledger = Ledger::default();
        for (p, s, e) in &feed {
            books.fold(*p, s, e, None);
            ledger.apply(s, e, None);
        }
        let first = feed.iter().map(|(_, _, e)| e.at()).min().unwrap_or(Timestamp(T0));
        let expected = ledger.figures(since.max(first), until, window.grace_ms);
        let got = books.leak_figures();
        prop_assert!((got.orphan_vcpu_minutes - expected.orphan_vcpu_minutes).abs() < 1e-6);
        prop_assert!((got.owed_vcpu_minutes - expected.owed_vcpu_minutes).abs() < 1e-6);
        prop_assert_eq!(got.orphans, expected.orphans);
        prop_assert_eq!(&got.compensation_latency_ms, &expected.compensation_latency_ms);
        if since_h.is_none() {
            let failures: std::collections::BTreeMap<String, u64> = ledger
                .failures()
                .into_iter()
                .map(|(stage, n)| (stage.as_str().to_owned(), n))
                .collect();
            prop_assert_eq!(books.failures(), &failures);
            let strays: Vec<_> = books.strays().into_iter().map(|r| (r.stream, r.stray)).collect();
            prop_assert_eq!(strays, ledger.strays());
            let warned: Vec<_> = books
                .spot_warnings()
                .into_iter()
                .map(|w| (w.stream, w.at, w.job_cut))
                .collect();
            let expected: Vec<_> = ledger
                .spot_interruptions()
                .into_iter()
                .map(|(s, _, at, cut)| (s, at, cut))
                .collect();
            prop_assert_eq!(warned, expected);
            let mut live = books.live();
            live.sort();
            prop_assert_eq!(live, ledger.live());
        }
    }
}
