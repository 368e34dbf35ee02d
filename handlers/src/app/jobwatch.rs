//! Job polls: GitHub asked for a runner's job, so that a lost `in_progress`
//! webhook does not get a running job's runner terminated at its boot deadline,
//! and a lost `completed` does not keep a finished runner's instance until its
//! max age. GitHub does not redeliver a failed delivery on its own.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use jitr_domain::{Command, RunnerState, RunnerStatus, StreamId, Timestamp, deadline_to_confirm};
use jitr_infra::CommandId;

use crate::app::Ports;
use crate::app::budget::RequestBudget;
use crate::app::dispatch::{current_state, dispatch};
use crate::app::outcome::HandlerError;
use crate::app::policy::RunnerPolicy;
use crate::app::supply::Supply;

/// What one poll learnt.
#[derive(Clone, Debug)]
pub struct Polled {
    /// The polled runner, after what the poll recorded.
    pub state: RunnerState,
    /// What GitHub said, for people.
    pub answer: String,
    /// Events the poll recorded (on this runner or on the runner that took the
    /// job).
    pub recorded: usize,
}

/// Asks GitHub for jobs and records what it says.
pub struct JobWatch {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
    budget: Arc<RequestBudget>,
    supply: Arc<Supply>,
    /// When each open runner's job was last asked for (this process only: a
    /// restart polls a little early, never late).
    polled: Mutex<HashMap<StreamId, Timestamp>>,
}

impl JobWatch {
    /// A job watch over `ports`.
    pub fn new(
        ports: Ports,
        policy: Arc<RunnerPolicy>,
        budget: Arc<RequestBudget>,
        supply: Arc<Supply>,
    ) -> Self {
        JobWatch {
            ports,
            policy,
            budget,
            supply,
            polled: Mutex::default(),
        }
    }

    fn polled(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Timestamp>> {
        self.polled.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn observe(
        &self,
        stream: &StreamId,
        command: Command,
        now: Timestamp,
    ) -> Result<bool, HandlerError> {
        let id = CommandId::new(format!("poll:{stream}:{}", command.name()));
        let dispatched = dispatch(&*self.ports.store, stream, command, now, &id).await?;
        Ok(matches!(
            dispatched,
            crate::app::dispatch::Dispatched::Appended { .. }
        ))
    }

    /// Asks GitHub for the job of the runner in `state`
    /// (`GET /repos/{owner}/{repo}/actions/jobs/{job_id}`, with the runner's
    /// installation) and records what it says, as a webhook would have:
    /// `in_progress` or `completed` on one of jitr's runners moves that runner
    /// (authorised as a lifecycle event is); a job another runner took, or one
    /// completed before any runner took it (cancelled), ends this runner's
    /// demand — never this runner. `queued` records nothing.
    pub async fn poll(&self, state: &RunnerState, now: Timestamp) -> Result<Polled, HandlerError> {
        let (Some(stream), Some(request)) = (state.stream_id(), state.request.as_ref()) else {
            return Ok(Polled {
                state: state.clone(),
                answer: "no request".into(),
                recorded: 0,
            });
        };
        if state.busy_since.is_some() && state.job_taken().is_none() {
            return self
                .busy_on_an_unknown_job(state, &stream, request, now)
                .await;
        }
        // The job the runner took, when known (it need not be the one it was
        // launched for); else the one it stands for.
        let job = state
            .job_taken()
            .or(state.demand_job())
            .unwrap_or(&request.job);
        let installation = self.policy.installation_for(state);
        self.polled().insert(stream.clone(), now);
        crate::app::metrics::job_poll(now);
        let found = self
            .ports
            .github
            .get_job(installation, &job.owner, &job.repo, job.job_id)
            .await?;
        let Some(found) = found else {
            return Ok(Polled {
                state: state.clone(),
                answer: format!("job {} unknown to GitHub", job.job_id),
                recorded: 0,
            });
        };
        let answer = match &found.runner_name {
            Some(name) => format!("job {} {} on {name}", job.job_id, found.status),
            None => format!("job {} {}", job.job_id, found.status),
        };
        let started = matches!(found.status.as_str(), "in_progress" | "completed");
        let completed = found.status == "completed";
        let mut recorded = 0;
        // Where the poll's news belongs: the runner GitHub names (jobs are not
        // bound to the runner minted for them). This runner's own job, taken by
        // another runner or cancelled while queued, no longer waits: this
        // runner is capacity for the pool's other jobs (ADR-0017).
        let target = match &found.runner_name {
            Some(name) if state.runner_name.as_deref() == Some(name.as_str()) => {
                Some(stream.clone())
            }
            Some(name) if started => self.ports.store.stream_of_runner(name).await?,
            _ => None,
        };
        let taken = found.runner_name.as_deref().filter(|_| started);
        if let Some(target) = &target {
            let target_state = current_state(&*self.ports.store, target).await?;
            if let Some(why) =
                self.policy
                    .refuses_event(&target_state, &job.owner, &job.repo, installation)
            {
                tracing::warn!(%stream, runner = %target, reason = %why, "job poll names a runner it may not move");
                crate::app::metrics::lifecycle_refused(now);
            } else {
                let mut healed = 0;
                if target_state.job_started_at.is_none() {
                    let start = Command::ObserveJobStarted {
                        job: Some(job.clone()),
                    };
                    healed += usize::from(self.observe(target, start, now).await?);
                }
                if completed {
                    let complete = Command::ObserveJobCompleted {
                        conclusion: found.conclusion.clone(),
                        job: Some(job.clone()),
                    };
                    healed += usize::from(self.observe(target, complete, now).await?);
                }
                if healed > 0 {
                    tracing::warn!(runner = %target, %answer, "a lifecycle webhook was lost: recorded from a job poll");
                    crate::app::metrics::healed_by_poll(now, healed);
                }
                recorded += healed;
            }
        }
        // The runners standing for the job learn it was taken (they swap with
        // the taker, or are spare) or cancelled while queued.
        let demand = match taken {
            Some(name) => {
                self.supply
                    .job_taken(job, target.as_ref(), name, now)
                    .await?
            }
            None if completed => self.supply.job_cancelled(job, now).await?,
            None => Vec::new(),
        };
        recorded += demand.len();
        let state = if recorded > 0 {
            current_state(&*self.ports.store, &stream).await?
        } else {
            state.clone()
        };
        Ok(Polled {
            state,
            answer,
            recorded,
        })
    }

    /// A runner GitHub refused to deregister as busy, whose job jitr never
    /// heard of (its `in_progress` was lost, and it ran a job no runner of
    /// jitr's stood for): GitHub removes a JIT runner's registration once its
    /// one job is over, so a registration gone means the job ended.
    async fn busy_on_an_unknown_job(
        &self,
        state: &RunnerState,
        stream: &StreamId,
        request: &jitr_domain::RunnerRequest,
        now: Timestamp,
    ) -> Result<Polled, HandlerError> {
        let installation = self.policy.installation_for(state);
        let scope = self.policy.scope_of(request);
        let name = state.runner_name.clone().unwrap_or_default();
        self.polled().insert(stream.clone(), now);
        let registered = self
            .ports
            .github
            .registration(installation, &scope, state.runner_id, &name)
            .await?
            .is_some();
        if registered {
            return Ok(Polled {
                state: state.clone(),
                answer: format!(
                    "runner {name} still registered, busy on a job jitr did not hear of"
                ),
                recorded: 0,
            });
        }
        let done = Command::ObserveJobCompleted {
            conclusion: None,
            job: None,
        };
        let recorded = usize::from(self.observe(stream, done, now).await?);
        if recorded > 0 {
            tracing::warn!(%stream, runner = %name, "a busy runner's registration is gone: its job ended");
            crate::app::metrics::healed_by_poll(now, recorded);
        }
        Ok(Polled {
            state: current_state(&*self.ports.store, stream).await?,
            answer: format!("runner {name} was busy and is no longer registered: its job ended"),
            recorded,
        })
    }

    /// Before a boot-deadline or max-age termination, asks GitHub whether the
    /// job runs (or ran) on the runner. Returns the runner as it is afterwards:
    /// its deadline is lifted if the job started on it, and a completed job
    /// owes the drain grace's termination instead. Without a missed deadline,
    /// or without a runner registered (nothing could have taken the job), GitHub
    /// is not asked. When GitHub does not answer, the error is returned while the
    /// deadline passed less than [`RunnerPolicy::job_poll_patience_ms`] ago (ask
    /// again later); after that the deadline stands unasked.
    pub async fn before_deadline(
        &self,
        state: RunnerState,
        now: Timestamp,
    ) -> Result<RunnerState, HandlerError> {
        let Some(missed) = deadline_to_confirm(&state, now) else {
            return Ok(state);
        };
        match self.poll(&state, now).await {
            Ok(polled) => {
                tracing::info!(stream = ?state.stream_id(), deadline = missed.stage.as_str(), answer = %polled.answer, "job polled before a deadline termination");
                Ok(polled.state)
            }
            Err(e) if now.millis_since(missed.at) < self.policy.job_poll_patience_ms => Err(e),
            Err(e) => {
                tracing::warn!(stream = ?state.stream_id(), error = %e, "GitHub did not answer the job poll; the deadline stands");
                Ok(state)
            }
        }
    }

    /// Whether the runner's job is due for a periodic poll at `now`: waiting
    /// for capacity, ready or running, and not asked for within the poll
    /// interval (counted from the request, the launch, or the job's start,
    /// before the first poll). Draining runners are not polled: their job is
    /// known to be over.
    pub fn due(&self, state: &RunnerState, now: Timestamp) -> bool {
        let interval = self.policy.job_poll_interval_ms;
        let Some(stream) = state.stream_id() else {
            return false;
        };
        // A warm runner that took no job stands for none: there is no job to
        // read (its lost `in_progress` shows when GitHub refuses to deregister
        // it as busy, ADR-0022).
        if state.is_warm() && !state.took_job() {
            return false;
        }
        let since = match state.status() {
            RunnerStatus::Requested if state.failure.is_none() => {
                state.request.as_ref().map(|r| r.at)
            }
            RunnerStatus::Ready => state.first_intent_at,
            RunnerStatus::Running => state.job_started_at.or(state.busy_since),
            _ => return false,
        };
        let last = self.polled().get(&stream).copied().or(since);
        interval > 0 && last.is_none_or(|l| now.millis_since(l) >= interval)
    }

    /// A periodic poll ([`JobWatch::poll`]) within the background request
    /// budget; `None` when the budget has no request left (the runner stays due).
    pub async fn poll_within_budget(
        &self,
        state: &RunnerState,
        now: Timestamp,
    ) -> Option<Result<Polled, HandlerError>> {
        let installation = self.policy.installation_for(state);
        self.budget
            .spend(installation, now, self.poll(state, now))
            .await
    }

    /// Forgets the poll times of runners not in `open` (closed since).
    pub fn retain(&self, open: &HashSet<StreamId>) {
        self.polled().retain(|s, _| open.contains(s));
    }
}
