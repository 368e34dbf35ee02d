//! Jobs as read models (ADR-0017): each workflow job the log knows — queued
//! (a runner was launched for it), taken by the runner GitHub gave it to,
//! completed or cancelled — and what jitr did to the runners: spare runners
//! retired, and jobs killed by jitr (a job whose runner jitr failed or asked to
//! terminate while the job ran on it; must be 0 but for the maximum age).
//!
//! Folded event by event and bounded by what is open (ADR-0023): a runner's
//! record goes when its stream closes, a job's once it has ended and no open
//! runner refers to it; what they add to the figures is tallied then. The
//! figures count what happened in the book's [`Window`].

use std::collections::BTreeMap;

use jitr_domain::{
    DemandEnding, FailureStage, JobRef, RunnerEvent, StreamId, TerminationReason, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::accounting::Distribution;
use crate::books::Window;

/// A job's identity: owner, repository, job id.
pub type JobKey = (String, String, u64);

fn key_of(job: &JobRef) -> JobKey {
    (job.owner.clone(), job.repo.clone(), job.job_id)
}

/// One job, as the log tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// When the log first heard of it (the window counts it by this moment).
    pub first_at: Timestamp,
    /// Runners launched for it (its demand).
    pub launched_for: Vec<StreamId>,
    /// When its first runner was requested (its `queued` reached jitr), and
    /// that runner's pool.
    pub queued: Option<(Timestamp, String)>,
    /// The runner GitHub gave it to, and when it started.
    pub taken_by: Option<(StreamId, Timestamp)>,
    /// That runner was warm (requested for no job).
    pub taken_warm: bool,
    /// That runner was launched for another job.
    pub taken_by_other: bool,
    /// When it completed on that runner, and how.
    pub completed: Option<(Timestamp, Option<String>)>,
    /// When its user cancelled it while queued.
    pub cancelled_queued: Option<Timestamp>,
    /// When jitr failed or asked to terminate its runner while it ran, and why.
    pub killed_by_jitr: Option<(Timestamp, String)>,
    /// Open runners that refer to it (launched for it, standing for it, or
    /// running it).
    open_runners: u32,
    /// When a runner's event last named it.
    last_at: Timestamp,
}

impl JobRecord {
    fn ended_at(&self) -> Option<Timestamp> {
        self.completed
            .as_ref()
            .map(|(at, _)| *at)
            .or(self.cancelled_queued)
    }
}

/// How long after its end a job no open runner refers to is retired. In a
/// log written as it happened, the runners' events that name a job are
/// minutes apart (a queue's delay); in a log whose streams were copied one
/// after the other they may be further apart, and a job retired before
/// another runner's event named it would be counted twice.
pub const RETIRE_AFTER_MS: u64 = 6 * 3_600_000;

/// How long a job that has not ended, and that no open runner refers to, is
/// kept after a runner's event last named it: GitHub fails a job that no
/// runner took within 24 hours.
pub const RETIRE_UNENDED_AFTER_MS: u64 = 30 * 3_600_000;

/// How often (in the log's time) the book looks for jobs to retire.
const RETIRE_EVERY_MS: i64 = 3_600_000;

/// What the log says of an open runner's jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The jobs it refers to.
    refers_to: Vec<JobKey>,
}

/// Jobs retired from the book, as they count in the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RetiredJobs {
    jobs: u64,
    taken: u64,
    warm_hits: u64,
    served_by_other_runner: u64,
    cancelled_queued: u64,
    killed: Vec<(JobKey, StreamId, String)>,
    waits: BTreeMap<String, Vec<u64>>,
}

impl RetiredJobs {
    fn add(&mut self, key: &JobKey, record: &JobRecord) {
        self.jobs += 1;
        if let Some((runner, started)) = &record.taken_by {
            self.taken += 1;
            self.warm_hits += u64::from(record.taken_warm);
            self.served_by_other_runner += u64::from(record.taken_by_other);
            if let Some((queued, pool)) = &record.queued {
                self.waits
                    .entry(pool.clone())
                    .or_default()
                    .push(started.millis_since(*queued));
            }
            if let Some((_, why)) = &record.killed_by_jitr {
                self.killed.push((key.clone(), runner.clone(), why.clone()));
            }
        }
        self.cancelled_queued += u64::from(record.cancelled_queued.is_some());
    }
}

/// What happened to runners in the window, counted as it happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RunnerTally {
    surplus_retired: u64,
    surplus_idle_ms: u64,
    warm_runners: u64,
    idle_before_job_ms: u64,
    parked: u64,
    woken: u64,
    parked_ms: u64,
}

/// The open jobs and runners of a log, and what the closed ones added to the
/// window's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobBook {
    /// Open jobs, by job.
    #[serde(with = "as_pairs")]
    pub jobs: BTreeMap<JobKey, JobRecord>,
    runners: BTreeMap<StreamId, RunnerJobs>,
    window: Window,
    tally: RunnerTally,
    retired: RetiredJobs,
    /// The latest moment of any event folded.
    latest: Option<Timestamp>,
}

/// The jobs' figures over a window of the log.
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
    pub queued_to_started_ms: BTreeMap<String, Distribution>,
}

/// A map whose keys are not strings, saved as a list of pairs.
pub(crate) mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

fn minutes(ms: u64) -> f64 {
    (ms as f64 / 60_000.0 * 100.0).round() / 100.0
}

impl JobBook {
    /// An empty book whose figures count what happens in `window`.
    pub fn new(window: Window) -> Self {
        JobBook {
            window,
            ..JobBook::default()
        }
    }

    /// Counts from now on what happens in `window`, from nothing: the open
    /// jobs and runners stay (a snapshot's, ADR-0023).
    pub fn open_window(&mut self, window: Window) {
        self.window = window;
        self.tally = RunnerTally::default();
        self.retired = RetiredJobs::default();
    }

    /// Runner-time registered and idle before the job each runner took, in
    /// the window, in ms.
    pub fn idle_before_job_ms(&self) -> u64 {
        self.tally.idle_before_job_ms
    }

    fn record<'a>(
        jobs: &'a mut BTreeMap<JobKey, JobRecord>,
        runner: &mut RunnerJobs,
        key: &JobKey,
        at: Timestamp,
    ) -> &'a mut JobRecord {
        let record = jobs.entry(key.clone()).or_insert_with(|| JobRecord {
            first_at: at,
            launched_for: Vec::new(),
            queued: None,
            taken_by: None,
            taken_warm: false,
            taken_by_other: false,
            completed: None,
            cancelled_queued: None,
            killed_by_jitr: None,
            open_runners: 0,
            last_at: at,
        });
        record.last_at = record.last_at.max(at);
        if !runner.refers_to.contains(key) {
            runner.refers_to.push(key.clone());
            record.open_runners += 1;
        }
        record
    }

    /// Folds one event of `stream`.
    pub fn apply(&mut self, stream: &StreamId, event: &RunnerEvent) {
        let at = event.at();
        let hour = |t: Timestamp| t.0.div_euclid(RETIRE_EVERY_MS);
        if self.latest.is_none_or(|l| hour(at) > hour(l)) {
            self.latest = Some(at);
            self.retire_ended(at);
        }
        let counts = self.window.holds(at);
        let tally = &mut self.tally;
        let runner = self.runners.entry(stream.clone()).or_default();
        match event {
            RunnerEvent::Requested { job, .. } if job.is_warmth() => {
                // No job: capacity for whichever job GitHub gives it.
                tally.warm_runners += u64::from(!runner.warm && counts);
                runner.warm = true;
            }
            RunnerEvent::Requested { job, spec, .. } => {
                let key = key_of(job);
                runner.demand = Some(key.clone());
                runner.launched_for = Some(key.clone());
                let record = Self::record(&mut self.jobs, runner, &key, at);
                record
                    .queued
                    .get_or_insert_with(|| (at, spec.pool.clone().unwrap_or_default()));
                if !record.launched_for.contains(stream) {
                    record.launched_for.push(stream.clone());
                }
            }
            RunnerEvent::TokenMinted { .. } => {
                runner.ready_at.get_or_insert(at);
            }
            RunnerEvent::Parked { .. } if runner.parked_since.is_none() => {
                tally.parked += u64::from(counts);
                runner.parked_since = Some(at);
            }
            RunnerEvent::Woken { .. } => {
                if let Some(since) = runner.parked_since.take() {
                    if counts {
                        tally.woken += 1;
                        tally.parked_ms += at.millis_since(since);
                    }
                }
            }
            RunnerEvent::JobStarted { job, .. } => {
                let Some(key) = job.as_ref().map(key_of).or(runner.demand.clone()) else {
                    return;
                };
                if runner.running.is_none() && counts {
                    if let Some(ready) = runner.ready_at {
                        tally.idle_before_job_ms += at.millis_since(ready);
                    }
                }
                runner.running = Some(key.clone());
                Self::take(&mut self.jobs, runner, stream, &key, at);
            }
            RunnerEvent::JobCompleted {
                job, conclusion, ..
            } => {
                let key = job
                    .as_ref()
                    .map(key_of)
                    .or(runner.running.clone())
                    .or(runner.demand.clone());
                runner.running = None;
                let Some(key) = key else { return };
                let record = Self::take(&mut self.jobs, runner, stream, &key, at);
                record.completed.get_or_insert((at, conclusion.clone()));
            }
            RunnerEvent::DemandMoved { job, .. } => {
                let key = key_of(job);
                Self::record(&mut self.jobs, runner, &key, at);
                runner.demand = Some(key);
            }
            RunnerEvent::DemandEnded {
                ending: DemandEnding::Cancelled,
                ..
            } => {
                if let Some(key) = runner.demand.clone() {
                    let record = Self::record(&mut self.jobs, runner, &key, at);
                    if record.taken_by.is_none() {
                        record.cancelled_queued.get_or_insert(at);
                    }
                }
            }
            RunnerEvent::Failed { stage, .. } => {
                if *stage == FailureStage::Surplus && counts {
                    tally.surplus_retired += 1;
                    if let Some(ready) = runner.ready_at {
                        tally.surplus_idle_ms += at.millis_since(ready);
                    }
                }
                if *stage != FailureStage::SpotInterrupted {
                    let why = format!("failed ({})", stage.as_str());
                    Self::kill(&mut self.jobs, runner, at, why);
                }
            }
            RunnerEvent::TerminationRequested { reason, .. } => {
                let by_ec2 = *reason
                    == TerminationReason::Failure {
                        stage: FailureStage::SpotInterrupted,
                    };
                if !by_ec2 {
                    Self::kill(&mut self.jobs, runner, at, "termination requested".into());
                }
            }
            RunnerEvent::Terminated { .. } => {
                // The instance is gone: whatever ran on it ended with it (a
                // cut by EC2 when nothing of jitr's came before).
                runner.running = None;
                if let Some(since) = runner.parked_since.take() {
                    if counts {
                        tally.parked_ms += at.millis_since(since);
                    }
                }
            }
            _ => {}
        }
    }

    /// Records that `stream` took `key` (the first runner to do so keeps it).
    fn take<'a>(
        jobs: &'a mut BTreeMap<JobKey, JobRecord>,
        runner: &mut RunnerJobs,
        stream: &StreamId,
        key: &JobKey,
        at: Timestamp,
    ) -> &'a mut JobRecord {
        let warm = runner.warm;
        let other = runner.launched_for.as_ref().is_some_and(|d| d != key);
        let record = Self::record(jobs, runner, key, at);
        if record.taken_by.is_none() {
            record.taken_by = Some((stream.clone(), at));
            record.taken_warm = warm;
            record.taken_by_other = other;
        }
        record
    }

    fn kill(
        jobs: &mut BTreeMap<JobKey, JobRecord>,
        runner: &RunnerJobs,
        at: Timestamp,
        why: String,
    ) {
        let Some(key) = &runner.running else { return };
        let Some(record) = jobs.get_mut(key) else {
            return;
        };
        if record.completed.is_none() {
            record.killed_by_jitr.get_or_insert((at, why));
        }
    }

    /// Forgets the closed runner `stream`: the jobs it referred to may retire.
    pub fn runner_closed(&mut self, stream: &StreamId) {
        let Some(runner) = self.runners.remove(stream) else {
            return;
        };
        for key in runner.refers_to {
            if let Some(record) = self.jobs.get_mut(&key) {
                record.open_runners = record.open_runners.saturating_sub(1);
            }
        }
    }

    /// Retires the jobs no open runner refers to that ended
    /// [`RETIRE_AFTER_MS`] before `now`, or were last named
    /// [`RETIRE_UNENDED_AFTER_MS`] before it without ending: what they add to
    /// the window is tallied.
    fn retire_ended(&mut self, now: Timestamp) {
        let ago = |ms: u64| Timestamp(now.0.saturating_sub(ms as i64));
        let (ended_before, named_before) = (ago(RETIRE_AFTER_MS), ago(RETIRE_UNENDED_AFTER_MS));
        let done: Vec<JobKey> = self
            .jobs
            .iter()
            .filter(|(_, r)| {
                r.open_runners == 0
                    && match r.ended_at() {
                        Some(end) => end <= ended_before,
                        None => r.last_at <= named_before,
                    }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            let record = self.jobs.remove(&key).expect("present");
            if self.window.holds(record.first_at) {
                self.retired.add(&key, &record);
            }
        }
    }

    /// Open runners and jobs the book holds.
    pub fn open(&self) -> (usize, usize) {
        (self.runners.len(), self.jobs.len())
    }

    /// The figures over the window: the retired jobs' and the open ones'.
    pub fn figures(&self) -> JobFigures {
        let mut all = self.retired.clone();
        for (key, record) in &self.jobs {
            if self.window.holds(record.first_at) {
                all.add(key, record);
            }
        }
        all.killed.sort();
        let t = &self.tally;
        JobFigures {
            jobs: all.jobs,
            taken: all.taken,
            served_by_other_runner: all.served_by_other_runner,
            cancelled_queued: all.cancelled_queued,
            killed_by_jitr: all.killed.len() as u64,
            killed: all
                .killed
                .into_iter()
                .map(|(key, runner, why)| (format!("{}/{}#{}", key.0, key.1, key.2), runner, why))
                .collect(),
            surplus_retired: t.surplus_retired,
            surplus_idle_runner_minutes: minutes(t.surplus_idle_ms),
            warm_runners: t.warm_runners,
            idle_before_job_runner_minutes: minutes(t.idle_before_job_ms),
            warm_hits: all.warm_hits,
            parked_runners: t.parked,
            parked_runners_woken: t.woken,
            parked_volume_minutes: minutes(t.parked_ms),
            queued_to_started_ms: all
                .waits
                .into_iter()
                .map(|(pool, waits)| (pool, Distribution::of(waits)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::job;
    use jitr_domain::JobSource;

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
        assert_eq!(book.idle_before_job_ms(), 10);
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

    /// ADR-0023: the book holds open jobs only. A job that ended, or that
    /// never ended and that nothing names any more, is retired once the log
    /// has moved on, and still counts in the figures.
    #[test]
    fn retired_jobs_leave_the_book_and_stay_in_the_figures() {
        let mut book = JobBook::default();
        let failed = RunnerEvent::Failed {
            at: Timestamp(1_000),
            stage: FailureStage::Launch,
            reason: "quota".into(),
        };
        book.apply(&stream(1), &requested(1));
        book.apply(&stream(1), &failed);
        book.runner_closed(&stream(1));
        book.apply(&stream(2), &requested(2));
        assert_eq!(book.open(), (1, 2), "runner 2; jobs 1 and 2");
        let later = RunnerEvent::TokenMinted {
            at: Timestamp(RETIRE_UNENDED_AFTER_MS as i64 + 3_600_000),
            runner_name: "r2".into(),
            runner_id: None,
        };
        book.apply(&stream(2), &later);
        assert_eq!(book.open(), (1, 1), "job 1 retired, job 2 open");
        let figures = book.figures();
        assert_eq!(figures.jobs, 2);
        assert_eq!(figures.taken, 0);
    }
}
