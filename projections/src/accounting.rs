//! Leak accounting over history: for every runner, when its termination became
//! owed and when its instance was gone, so that an audit can say how many
//! vCPU-minutes were burned by instances nobody wanted, and how fast compensation
//! was. Folded event by event (O(1) per event, one small record per runner).

use std::collections::{BTreeMap, HashMap};

use jitr_domain::{
    FailureStage, Instance, Market, RunnerEvent, RunnerState, RunnerStatus, Stray, StreamId,
    TerminationEvidence, Timestamp, evolve, is_terminal, termination_owed,
};
use serde::Serialize;

/// One runner's account.
#[derive(Clone, Debug, Default)]
pub struct RunnerAccount {
    /// Folded state (up to the accounting horizon).
    pub state: RunnerState,
    /// When the termination became owed, fixed when `Terminated` arrived.
    pub owed_since_at_close: Option<Timestamp>,
    /// When the instance was confirmed gone.
    pub terminated_at: Option<Timestamp>,
}

impl RunnerAccount {
    fn apply(&mut self, event: &RunnerEvent) {
        if let RunnerEvent::Terminated { at, .. } = event {
            if self.terminated_at.is_none() && self.state.instance_may_be_alive() {
                self.owed_since_at_close = termination_owed(&self.state, *at).map(|(t, _)| t);
                self.terminated_at = Some(*at);
            }
        }
        self.state = evolve(std::mem::take(&mut self.state), event);
    }

    /// Since when a termination is (or was) owed, judged at `until`.
    pub fn owed_since(&self, until: Timestamp) -> Option<Timestamp> {
        match self.terminated_at {
            Some(_) => self.owed_since_at_close,
            None => termination_owed(&self.state, until).map(|(t, _)| t),
        }
    }

    /// The end of the instance's life as far as the account knows: `Terminated`,
    /// or `until` while it may still be alive.
    pub fn gone_at(&self, until: Timestamp) -> Option<Timestamp> {
        self.state.launch.as_ref()?;
        match self.terminated_at {
            Some(t) => Some(t),
            None if self.state.instance_may_be_alive() => Some(until),
            None => None,
        }
    }

    /// vCPUs the instance holds (the request's, while the launch is unresolved).
    pub fn vcpus(&self) -> u32 {
        self.state
            .instance()
            .map(|i| i.vcpus)
            .or_else(|| self.state.request.as_ref().map(|r| r.spec.vcpus))
            .unwrap_or(0)
    }
}

/// Accounts of every runner in a log.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// By stream.
    pub runners: HashMap<StreamId, RunnerAccount>,
    /// Events folded.
    pub events: u64,
    /// Events skipped because they happened after the horizon.
    pub after_horizon: u64,
    /// `JobStarted` / `JobCompleted` recorded, by where they were learnt:
    /// `started-webhook`, `started-poll`, `completed-webhook`, `completed-poll`.
    pub lifecycle_sources: BTreeMap<String, u64>,
}

/// Distribution of a duration, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Distribution {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Worst.
    pub max: u64,
}

impl Distribution {
    /// The distribution of `samples`.
    pub fn of(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        let at = |p: f64| -> u64 {
            if samples.is_empty() {
                0
            } else {
                samples[((samples.len() - 1) as f64 * p).round() as usize]
            }
        };
        Distribution {
            count: samples.len() as u64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or(0),
        }
    }
}

/// What a window of history cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LeakFigures {
    /// vCPU-minutes of instances orphaned: owed a termination for longer than the
    /// grace, until gone.
    pub orphan_vcpu_minutes: f64,
    /// vCPU-minutes owed within the grace (compensation at work).
    pub owed_vcpu_minutes: f64,
    /// Runners whose instance was an orphan for some of the window.
    pub orphans: u64,
    /// From owed to `Terminated`, for terminations in the window.
    pub compensation_latency_ms: Distribution,
}

/// vCPUs of one market at one moment, by what they were doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VcpuBands {
    /// Instances some runner wanted.
    pub legitimate: u32,
    /// Instances owed a termination, within the grace (compensation at work).
    pub owed: u32,
    /// Instances owed a termination for longer than the grace: orphans.
    pub orphaned: u32,
}

/// The fleet's vCPUs at one moment, by market.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VcpuSample {
    /// The moment (ms since the epoch).
    pub at_ms: i64,
    /// On-demand.
    pub on_demand: VcpuBands,
    /// Spot.
    pub spot: VcpuBands,
}

/// A runner that was ever owed a termination, and how long it took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwedRecord {
    /// The runner.
    pub stream: StreamId,
    /// Its instance, when known.
    pub instance_id: Option<String>,
    /// Its market, when known.
    pub market: Option<Market>,
    /// Its vCPUs.
    pub vcpus: u32,
    /// When the termination became owed.
    pub owed_since_ms: i64,
    /// When `Terminated` was recorded, if it was.
    pub terminated_ms: Option<i64>,
}

fn overlap(a: (i64, i64), b: (i64, i64)) -> i64 {
    (a.1.min(b.1) - a.0.max(b.0)).max(0)
}

impl Ledger {
    /// Folds one event, unless it happened after `horizon`.
    pub fn apply(&mut self, stream: &StreamId, event: &RunnerEvent, horizon: Option<Timestamp>) {
        if horizon.is_some_and(|h| event.at() > h) {
            self.after_horizon += 1;
            return;
        }
        self.events += 1;
        let learnt = match event {
            RunnerEvent::JobStarted { source, .. } => Some(("started", source)),
            RunnerEvent::JobCompleted { source, .. } => Some(("completed", source)),
            _ => None,
        };
        if let Some((what, source)) = learnt {
            *self
                .lifecycle_sources
                .entry(format!("{what}-{}", source.as_str()))
                .or_default() += 1;
        }
        self.runners.entry(stream.clone()).or_default().apply(event);
    }

    /// Leak figures for `[since, until]`, an instance counting as orphaned from
    /// `grace_ms` after its termination became owed.
    pub fn figures(&self, since: Timestamp, until: Timestamp, grace_ms: u64) -> LeakFigures {
        let window = (since.0, until.0);
        let mut figures = LeakFigures::default();
        let mut latencies = Vec::new();
        for account in self.runners.values() {
            let (Some(owed), Some(gone)) = (account.owed_since(until), account.gone_at(until))
            else {
                continue;
            };
            let orphan_from = owed.plus_ms(grace_ms).0.min(gone.0);
            let vcpus = f64::from(account.vcpus());
            let owed_ms = overlap((owed.0, orphan_from), window);
            let orphan_ms = overlap((orphan_from, gone.0), window);
            figures.owed_vcpu_minutes += vcpus * owed_ms as f64 / 60_000.0;
            figures.orphan_vcpu_minutes += vcpus * orphan_ms as f64 / 60_000.0;
            if orphan_ms > 0 {
                figures.orphans += 1;
            }
            if let Some(t) = account.terminated_at {
                if t >= since && t <= until {
                    latencies.push(t.millis_since(owed));
                }
            }
        }
        figures.compensation_latency_ms = Distribution::of(latencies);
        figures
    }

    /// The fleet's vCPUs at `samples` evenly spaced moments of `[since,
    /// until]`, each instance counted from its launch (its intent while
    /// unresolved) until gone: legitimate, then owed within `grace_ms` of its
    /// termination becoming owed, then orphaned.
    pub fn vcpu_series(
        &self,
        since: Timestamp,
        until: Timestamp,
        samples: usize,
        grace_ms: u64,
    ) -> Vec<VcpuSample> {
        let samples = samples.max(2);
        let span = (until.0 - since.0).max(0);
        let mut series: Vec<VcpuSample> = (0..samples)
            .map(|i| VcpuSample {
                at_ms: since.0 + span * i as i64 / (samples - 1) as i64,
                ..VcpuSample::default()
            })
            .collect();
        for account in self.runners.values() {
            let Some(launch) = account.state.launch.as_ref() else {
                continue;
            };
            // Alive at `until` itself unless `Terminated` came by then.
            let end = match (account.terminated_at, account.gone_at(until)) {
                (Some(t), _) => t.0,
                (None, Some(_)) => until.0 + 1,
                (None, None) => continue,
            };
            let start = account
                .state
                .instance()
                .map_or(launch.intended_at, |i| i.launched_at);
            let market = account.state.instance().map_or(launch.market, |i| i.market);
            let owed = account.owed_since(until);
            let vcpus = account.vcpus();
            for sample in &mut series {
                let t = sample.at_ms;
                if t < start.0 || t >= end {
                    continue;
                }
                let bands = match market {
                    Market::OnDemand => &mut sample.on_demand,
                    Market::Spot => &mut sample.spot,
                };
                match owed {
                    Some(o) if t >= o.plus_ms(grace_ms).0 => bands.orphaned += vcpus,
                    Some(o) if t >= o.0 => bands.owed += vcpus,
                    _ => bands.legitimate += vcpus,
                }
            }
        }
        series
    }

    /// Every runner that was owed a termination up to `until`, in the order
    /// the debts began.
    pub fn owed_records(&self, until: Timestamp) -> Vec<OwedRecord> {
        let mut records: Vec<OwedRecord> = self
            .runners
            .iter()
            .filter(|(_, a)| a.gone_at(until).is_some())
            .filter_map(|(stream, a)| {
                let owed = a.owed_since(until)?;
                Some(OwedRecord {
                    stream: stream.clone(),
                    instance_id: a.state.instance().map(|i| i.id.0.clone()),
                    market: a
                        .state
                        .instance()
                        .map(|i| i.market)
                        .or_else(|| a.state.launch.as_ref().map(|l| l.market)),
                    vcpus: a.vcpus(),
                    owed_since_ms: owed.0,
                    terminated_ms: a.terminated_at.map(|t| t.0),
                })
            })
            .collect();
        records.sort_by(|a, b| (a.owed_since_ms, &a.stream).cmp(&(b.owed_since_ms, &b.stream)));
        records
    }

    /// Runners by status at the horizon.
    pub fn by_status(&self) -> HashMap<RunnerStatus, u64> {
        let mut counts = HashMap::new();
        for a in self.runners.values() {
            *counts.entry(a.state.status()).or_insert(0) += 1;
        }
        counts
    }

    /// Failed runners by failure stage.
    pub fn failures(&self) -> HashMap<FailureStage, u64> {
        let mut counts = HashMap::new();
        for a in self.runners.values() {
            if let Some(f) = &a.state.failure {
                *counts.entry(f.stage).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Runners closed by a `Terminated`, by the evidence recorded in it.
    pub fn closed_by(&self) -> HashMap<TerminationEvidence, u64> {
        let mut counts = HashMap::new();
        for a in self.runners.values() {
            if let Some(evidence) = a.state.terminated_by {
                *counts.entry(evidence).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Every spot interruption warning recorded up to the horizon: the runner,
    /// its instance, when, and whether the job had started on it (cut).
    pub fn spot_interruptions(&self) -> Vec<(StreamId, Option<Instance>, Timestamp, bool)> {
        let mut warned: Vec<_> = self
            .runners
            .iter()
            .filter_map(|(stream, a)| {
                let (at, started) = a.state.spot_warned?;
                Some((stream.clone(), a.state.instance().cloned(), at, started))
            })
            .collect();
        warned.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        warned
    }

    /// Every stray instance recorded up to the horizon, with its runner.
    pub fn strays(&self) -> Vec<(StreamId, Stray)> {
        let mut strays: Vec<(StreamId, Stray)> = self
            .runners
            .iter()
            .flat_map(|(stream, a)| a.state.strays.iter().map(|s| (stream.clone(), s.clone())))
            .collect();
        strays.sort_by(|a, b| (a.1.recorded_at, &a.1.id).cmp(&(b.1.recorded_at, &b.1.id)));
        strays
    }

    /// Instances that may be alive at the horizon, and their vCPUs, per market.
    pub fn live(&self) -> Vec<(StreamId, Option<String>, Market, u32)> {
        let mut live: Vec<_> = self
            .runners
            .iter()
            .filter(|(_, a)| a.state.instance_may_be_alive() && !is_terminal(&a.state))
            .filter_map(|(s, a)| {
                let market = a
                    .state
                    .instance()
                    .map(|i| i.market)
                    .or_else(|| a.state.launch.as_ref().map(|l| l.market))?;
                Some((
                    s.clone(),
                    a.state.instance().map(|i| i.id.0.clone()),
                    market,
                    a.vcpus(),
                ))
            })
            .collect();
        live.sort();
        live
    }
}

#[cfg(test)]
mod tests {
    use jitr_domain::{
        Command, Deadlines, FailureStage, InstanceId, InstanceSpec, JobRef, Market, RunnerState,
        TerminationEvidence, execute,
    };

    use super::*;

    const T0: i64 = 1_777_868_520_000;

    fn at(secs: i64) -> Timestamp {
        Timestamp(T0 + secs * 1000)
    }

    /// A runner launched at 0 s; then `then` at the given seconds.
    fn runner(id: u64, then: &[(i64, Command)]) -> (StreamId, Vec<RunnerEvent>) {
        let job = JobRef {
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id: id,
            run_id: 1,
        };
        let mut state = RunnerState::default();
        let mut log = Vec::new();
        let mut step = |state: &mut RunnerState, command: Command, secs: i64| {
            let (next, events) = execute(state, command, at(secs)).unwrap();
            *state = next;
            log.extend(events);
        };
        step(
            &mut state,
            Command::Request {
                job: job.clone(),
                attempt: 1,
                labels: vec![],
                spec: InstanceSpec {
                    instance_type: "c5.xlarge".into(),
                    vcpus: 4,
                    image: "ami".into(),
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
        step(
            &mut state,
            Command::IntendLaunch {
                market: Market::Spot,
            },
            0,
        );
        let token = state.pending_launch().cloned().unwrap();
        step(
            &mut state,
            Command::RecordLaunch {
                client_token: token,
                instance_id: InstanceId(format!("i-{id}")),
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
            },
            0,
        );
        for (secs, command) in then {
            step(&mut state, command.clone(), *secs);
        }
        (
            StreamId::for_job(&job, 1).expect("a stream id of a valid repository"),
            log,
        )
    }

    fn ledger(runners: &[(StreamId, Vec<RunnerEvent>)], horizon: Option<Timestamp>) -> Ledger {
        let mut ledger = Ledger::default();
        for (stream, events) in runners {
            for e in events {
                ledger.apply(stream, e, horizon);
            }
        }
        ledger
    }

    fn fail(secs: i64) -> (i64, Command) {
        (
            secs,
            Command::Fail {
                stage: FailureStage::Token,
                reason: "x".into(),
            },
        )
    }

    fn terminated(secs: i64, id: u64) -> (i64, Command) {
        (
            secs,
            Command::ConfirmTerminated {
                instance_id: Some(InstanceId(format!("i-{id}"))),
                evidence: TerminationEvidence::ReportedTerminated,
            },
        )
    }

    #[test]
    fn owed_then_orphaned_vcpu_minutes_and_compensation_latency() {
        let runners = [
            // Failed at 10 s, terminated at 130 s: owed 10–70 s, orphaned 70–130 s.
            runner(1, &[fail(10), terminated(130, 1)]),
            // Completed at 20 s and never terminated: owed from 140 s (drain grace).
            runner(
                2,
                &[(
                    20,
                    Command::CompleteJob {
                        conclusion: None,
                        job: None,
                    },
                )],
            ),
            // Healthy, running: nothing owed.
            runner(3, &[(5, Command::StartJob { job: None })]),
        ];
        let ledger = ledger(&runners, None);
        let figures = ledger.figures(at(0), at(300), 60_000);
        // 4 vCPU × (1 min + 1 min) owed, 4 vCPU × (1 min + 100 s) orphaned.
        assert!(
            (figures.owed_vcpu_minutes - 8.0).abs() < 1e-9,
            "{figures:?}"
        );
        assert!((figures.orphan_vcpu_minutes - (4.0 + 4.0 * 100.0 / 60.0)).abs() < 1e-9);
        assert_eq!(figures.orphans, 2);
        assert_eq!(figures.compensation_latency_ms.count, 1);
        assert_eq!(figures.compensation_latency_ms.max, 120_000);

        // A window clips the figures.
        let clipped = ledger.figures(at(100), at(130), 60_000);
        assert!(
            (clipped.orphan_vcpu_minutes - 4.0 * 30.0 / 60.0).abs() < 1e-9,
            "{clipped:?}"
        );
    }

    #[test]
    fn a_horizon_rebuilds_the_past() {
        let runners = [runner(1, &[fail(10), terminated(130, 1)])];
        let before = ledger(&runners, Some(at(100)));
        assert_eq!(before.live().len(), 1, "still alive at 100 s");
        assert_eq!(before.after_horizon, 1);
        let after = ledger(&runners, Some(at(200)));
        assert!(after.live().is_empty());
        assert_eq!(after.failures().get(&FailureStage::Token), Some(&1));
    }

    #[test]
    fn distributions_take_percentiles() {
        let d = Distribution::of((1..=100).collect());
        assert_eq!(
            (d.count, d.p50, d.p90, d.p99, d.max),
            (100, 51, 90, 99, 100)
        );
        assert_eq!(Distribution::of(vec![]), Distribution::default());
    }
}
