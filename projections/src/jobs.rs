//! Jobs as read models (ADR-0017): each workflow job the log knows — queued
//! (a runner was launched for it), taken by the runner GitHub gave it to,
//! completed or cancelled — and what jitr did to the runners: spare runners
//! retired, and jobs killed by jitr (a job whose runner jitr failed or asked to
//! terminate while the job ran on it; must be 0 but for the maximum age).
//! Folded event by event, one small record per job and per runner.

use std::collections::{BTreeMap, HashMap};

use jitr_domain::{
    DemandEnding, FailureStage, JobRef, RunnerEvent, StreamId, TerminationReason, Timestamp,
};
use serde::Serialize;

/// A job's identity: owner, repository, job id.
pub type JobKey = (String, String, u64);

fn key_of(job: &JobRef) -> JobKey {
    (job.owner.clone(), job.repo.clone(), job.job_id)
}

/// One job, as the log tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// Runners launched for it (its demand).
    pub launched_for: Vec<StreamId>,
    /// When its first runner was requested (its `queued` reached jitr), and
    /// that runner's pool.
    pub queued: Option<(Timestamp, String)>,
    /// The runner GitHub gave it to, and when it started.
    pub taken_by: Option<(StreamId, Timestamp)>,
    /// When it completed on that runner, and how.
    pub completed: Option<(Timestamp, Option<String>)>,
    /// When its user cancelled it while queued.
    pub cancelled_queued: Option<Timestamp>,
    /// When jitr failed or asked to terminate its runner while it ran, and why.
    pub killed_by_jitr: Option<(Timestamp, String)>,
}

/// What the log says of a runner's jobs.
#[derive(Clone, Debug, Default)]
struct RunnerJobs {
    /// The job it stands for (launched for, or moved to it).
    demand: Option<JobKey>,
    /// The job it was launched for.
    launched_for: Option<JobKey>,
    /// The job running on it.
    running: Option<JobKey>,
    /// When it became ready.
    ready_at: Option<Timestamp>,
    /// Requested for no job, to be warm (ADR-0022).
    warm: bool,
    /// Parked (stopped) since, not yet woken or closed.
    parked_since: Option<Timestamp>,
}

/// Every job of a log, and the spare runners retired.
#[derive(Clone, Debug, Default)]
pub struct JobBook {
    /// By job.
    pub jobs: BTreeMap<JobKey, JobRecord>,
    runners: HashMap<StreamId, RunnerJobs>,
    /// Runners retired as surplus (`Failed` `surplus`).
    pub surplus_retired: u64,
    /// Their minutes registered and idle before retirement, in ms.
    pub surplus_idle_ms: u64,
    /// Warm runners requested (for no job, ADR-0022).
    pub warm_runners: u64,
    /// Runners' time registered and idle before the job they took, in ms.
    pub idle_before_job_ms: u64,
    /// A stopped pool's runners parked, and woken for a job.
    pub parked: u64,
    /// Of them, woken for a job.
    pub woken: u64,
    /// Their instances' minutes stopped (their volumes kept) until woken or
    /// terminated, in ms.
    pub parked_ms: u64,
}

/// The jobs' figures over a log.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JobFigures {
    /// Jobs the log knows (a runner was launched for them, or ran them).
    pub jobs: u64,
    /// Jobs a runner took.
    pub taken: u64,
    /// Jobs GitHub gave to a runner launched for another job.
    pub served_by_other_runner: u64,
    /// Jobs cancelled while queued (no runner took them).
    pub cancelled_queued: u64,
    /// Jobs whose runner jitr failed or asked to terminate while they ran.
    pub killed_by_jitr: u64,
    /// Those jobs: `owner/repo#job_id`, the runner, and why.
    pub killed: Vec<(String, StreamId, String)>,
    /// Spare runners retired (deregistered first, or withdrawn before a launch).
    pub surplus_retired: u64,
    /// Their idle runner-minutes before retirement.
    pub surplus_idle_runner_minutes: f64,
    /// Warm runners requested (for no job, ADR-0022).
    pub warm_runners: u64,
    /// Runner-minutes registered and idle before the job each runner took
    /// (with the spare runners' above: what idle capacity cost).
    pub idle_before_job_runner_minutes: f64,
    /// Jobs taken by a warm runner: they started without waiting for a boot.
    pub warm_hits: u64,
    /// A stopped pool's runners parked (their instances stopped, volumes kept).
    pub parked_runners: u64,
    /// Of them, started for a job.
    pub parked_runners_woken: u64,
    /// Minutes their instances were stopped until woken or terminated (the
    /// volume-minutes they cost; still parked ones are not counted yet).
    pub parked_volume_minutes: f64,
    /// From a job's `queued` reaching jitr to its start, by its pool (ms).
    pub queued_to_started_ms: BTreeMap<String, crate::accounting::Distribution>,
}

impl JobBook {
    /// Folds one event of `stream`.
    pub fn apply(&mut self, stream: &StreamId, event: &RunnerEvent) {
        let runner = self.runners.entry(stream.clone()).or_default();
        match event {
            RunnerEvent::Requested { job, .. } if job.is_warmth() => {
                // No job: capacity for whichever job GitHub gives it.
                self.warm_runners += u64::from(!runner.warm);
                runner.warm = true;
            }
            RunnerEvent::Requested { job, at, spec, .. } => {
                let key = key_of(job);
                runner.demand = Some(key.clone());
                runner.launched_for = Some(key.clone());
                let record = self.jobs.entry(key).or_default();
                record
                    .queued
                    .get_or_insert_with(|| (*at, spec.pool.clone().unwrap_or_default()));
                if !record.launched_for.contains(stream) {
                    record.launched_for.push(stream.clone());
                }
            }
            RunnerEvent::TokenMinted { at, .. } => {
                runner.ready_at.get_or_insert(*at);
            }
            RunnerEvent::Parked { at, .. } if runner.parked_since.is_none() => {
                self.parked += 1;
                runner.parked_since = Some(*at);
            }
            RunnerEvent::Woken { at, .. } => {
                if let Some(since) = runner.parked_since.take() {
                    self.woken += 1;
                    self.parked_ms += at.millis_since(since);
                }
            }
            RunnerEvent::JobStarted { at, job, .. } => {
                let Some(key) = job.as_ref().map(key_of).or(runner.demand.clone()) else {
                    return;
                };
                if runner.running.is_none() {
                    if let Some(ready) = runner.ready_at {
                        self.idle_before_job_ms += at.millis_since(ready);
                    }
                }
                runner.running = Some(key.clone());
                let record = self.jobs.entry(key).or_default();
                record.taken_by.get_or_insert((stream.clone(), *at));
            }
            RunnerEvent::JobCompleted {
                at,
                job,
                conclusion,
                ..
            } => {
                let key = job
                    .as_ref()
                    .map(key_of)
                    .or(runner.running.clone())
                    .or(runner.demand.clone());
                runner.running = None;
                let Some(key) = key else { return };
                let record = self.jobs.entry(key).or_default();
                record.taken_by.get_or_insert((stream.clone(), *at));
                record.completed.get_or_insert((*at, conclusion.clone()));
            }
            RunnerEvent::DemandMoved { job, .. } => {
                runner.demand = Some(key_of(job));
            }
            RunnerEvent::DemandEnded {
                at,
                ending: DemandEnding::Cancelled,
            } => {
                if let Some(key) = runner.demand.clone() {
                    let record = self.jobs.entry(key).or_default();
                    if record.taken_by.is_none() {
                        record.cancelled_queued.get_or_insert(*at);
                    }
                }
            }
            RunnerEvent::Failed { at, stage, .. } => {
                if *stage == FailureStage::Surplus {
                    self.surplus_retired += 1;
                    if let Some(ready) = runner.ready_at {
                        self.surplus_idle_ms += at.millis_since(ready);
                    }
                }
                if *stage != FailureStage::SpotInterrupted {
                    let why = format!("failed ({})", stage.as_str());
                    Self::kill(&mut self.jobs, runner, *at, why);
                }
            }
            RunnerEvent::TerminationRequested { at, reason, .. } => {
                let by_ec2 = *reason
                    == TerminationReason::Failure {
                        stage: FailureStage::SpotInterrupted,
                    };
                if !by_ec2 {
                    Self::kill(&mut self.jobs, runner, *at, "termination requested".into());
                }
            }
            RunnerEvent::Terminated { at, .. } => {
                // The instance is gone: whatever ran on it ended with it (a
                // cut by EC2 when nothing of jitr's came before).
                runner.running = None;
                if let Some(since) = runner.parked_since.take() {
                    self.parked_ms += at.millis_since(since);
                }
            }
            _ => {}
        }
    }

    fn kill(
        jobs: &mut BTreeMap<JobKey, JobRecord>,
        runner: &RunnerJobs,
        at: Timestamp,
        why: String,
    ) {
        let Some(key) = &runner.running else { return };
        let record = jobs.entry(key.clone()).or_default();
        if record.completed.is_none() {
            record.killed_by_jitr.get_or_insert((at, why));
        }
    }

    /// The figures over every job folded.
    pub fn figures(&self) -> JobFigures {
        let launched_for = |stream: &StreamId| {
            self.runners
                .get(stream)
                .and_then(|r| r.launched_for.clone())
        };
        let mut figures = JobFigures {
            jobs: self.jobs.len() as u64,
            surplus_retired: self.surplus_retired,
            surplus_idle_runner_minutes: (self.surplus_idle_ms as f64 / 60_000.0 * 100.0).round()
                / 100.0,
            warm_runners: self.warm_runners,
            idle_before_job_runner_minutes: (self.idle_before_job_ms as f64 / 60_000.0 * 100.0)
                .round()
                / 100.0,
            parked_runners: self.parked,
            parked_runners_woken: self.woken,
            parked_volume_minutes: (self.parked_ms as f64 / 60_000.0 * 100.0).round() / 100.0,
            ..JobFigures::default()
        };
        let warm = |stream: &StreamId| self.runners.get(stream).is_some_and(|r| r.warm);
        let mut waits: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for record in self.jobs.values() {
            if let (Some((queued, pool)), Some((_, started))) = (&record.queued, &record.taken_by) {
                waits
                    .entry(pool.clone())
                    .or_default()
                    .push(started.millis_since(*queued));
            }
        }
        figures.queued_to_started_ms = waits
            .into_iter()
            .map(|(pool, waits)| (pool, crate::accounting::Distribution::of(waits)))
            .collect();
        for (key, record) in &self.jobs {
            if let Some((runner, _)) = &record.taken_by {
                figures.taken += 1;
                figures.warm_hits += u64::from(warm(runner));
                if launched_for(runner).is_some_and(|d| d != *key) {
                    figures.served_by_other_runner += 1;
                }
            }
            figures.cancelled_queued += u64::from(record.cancelled_queued.is_some());
            if let (Some((_, why)), Some((runner, _))) = (&record.killed_by_jitr, &record.taken_by)
            {
                figures.killed_by_jitr += 1;
                figures.killed.push((
                    format!("{}/{}#{}", key.0, key.1, key.2),
                    runner.clone(),
                    why.clone(),
                ));
            }
        }
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitr_domain::JobSource;

    fn job(id: u64) -> JobRef {
        JobRef {
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id: id,
            run_id: 1,
        }
    }

    fn stream(id: u64) -> StreamId {
        StreamId::for_job(&job(id), 1).unwrap()
    }

    fn requested(id: u64) -> RunnerEvent {
        RunnerEvent::Requested {
            at: Timestamp(0),
            job: job(id),
            attempt: 1,
            labels: vec![],
            spec: jitr_domain::InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami".into(),
                pool: None,
                avoid_spot: vec![],
                park: false,
            },
            deadlines: Default::default(),
            installation: None,
            deployment: None,
        }
    }

    /// ADR-0022: a warm runner (job 0) is no job of the log; the job it takes
    /// is a warm hit, and the job's own runner, spare, is retired.
    #[test]
    fn a_warm_runner_is_no_job_and_the_job_it_takes_is_a_warm_hit() {
        let warm = StreamId::for_job(&JobRef::warmth("acme", "widgets"), 9).unwrap();
        let warm_requested = match requested(1) {
            RunnerEvent::Requested {
                at,
                labels,
                spec,
                deadlines,
                ..
            } => RunnerEvent::Requested {
                at,
                job: JobRef::warmth("acme", "widgets"),
                attempt: 9,
                labels,
                spec,
                deadlines,
                installation: None,
                deployment: None,
            },
            _ => unreachable!(),
        };
        let mut book = JobBook::default();
        book.apply(&warm, &warm_requested);
        book.apply(&stream(1), &requested(1));
        book.apply(
            &warm,
            &RunnerEvent::JobStarted {
                at: Timestamp(20),
                source: JobSource::Webhook,
                job: Some(job(1)),
            },
        );
        let figures = book.figures();
        assert_eq!(figures.jobs, 1, "job 0 is no job");
        assert_eq!(
            (figures.taken, figures.warm_runners, figures.warm_hits),
            (1, 1, 1)
        );
        assert_eq!(figures.served_by_other_runner, 0);
        let wait = &figures.queued_to_started_ms[""];
        assert_eq!(
            (wait.count, wait.p50),
            (1, 20),
            "queued at 0, started at 20"
        );
    }

    /// Issue 23's scenario: job 2 on job 1's runner, job 1 cancelled while
    /// queued, job 2's own runner retired: one job served by another's
    /// runner, one cancelled, one surplus runner, no job killed. Had jitr
    /// terminated runner 1 for job 1's cancellation, job 2 was killed.
    #[test]
    fn a_job_on_another_jobs_runner_is_served_and_a_kill_is_named() {
        let mut book = JobBook::default();
        let events = [
            (stream(1), requested(1)),
            (stream(2), requested(2)),
            (
                stream(1),
                RunnerEvent::TokenMinted {
                    at: Timestamp(10),
                    runner_name: "r1".into(),
                    runner_id: None,
                },
            ),
            (
                stream(2),
                RunnerEvent::TokenMinted {
                    at: Timestamp(10),
                    runner_name: "r2".into(),
                    runner_id: None,
                },
            ),
            (
                stream(1),
                RunnerEvent::JobStarted {
                    at: Timestamp(20),
                    source: JobSource::Webhook,
                    job: Some(job(2)),
                },
            ),
            (
                stream(1),
                RunnerEvent::DemandEnded {
                    at: Timestamp(30),
                    ending: DemandEnding::Cancelled,
                },
            ),
            (
                stream(2),
                RunnerEvent::Failed {
                    at: Timestamp(60_010),
                    stage: FailureStage::Surplus,
                    reason: "surplus".into(),
                },
            ),
        ];
        for (s, e) in &events {
            book.apply(s, e);
        }
        let figures = book.figures();
        assert_eq!(figures.jobs, 2);
        assert_eq!(figures.served_by_other_runner, 1);
        assert_eq!(figures.cancelled_queued, 1);
        assert_eq!(figures.surplus_retired, 1);
        assert_eq!(figures.surplus_idle_runner_minutes, 1.0);
        // Runner 1 was ready at 10 ms and took job 2 at 20 ms.
        assert_eq!(book.idle_before_job_ms, 10);
        assert_eq!(figures.killed_by_jitr, 0);
        // Today's main: runner 1 terminated for job 1's cancellation.
        book.apply(
            &stream(1),
            &RunnerEvent::TerminationRequested {
                at: Timestamp(40),
                reason: TerminationReason::DrainGraceOver,
                instance_id: None,
            },
        );
        let figures = book.figures();
        assert_eq!(figures.killed_by_jitr, 1);
        assert_eq!(figures.killed[0].0, "acme/widgets#2");
        assert_eq!(figures.killed[0].1, stream(1));
    }
}
