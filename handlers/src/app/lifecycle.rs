//! Lifecycle: `in_progress` and `completed` webhooks move the runner GitHub
//! names, whichever job it was launched for; the job's own runners learn that
//! their job no longer waits (taken by another runner, or cancelled while
//! queued) and become capacity for the pool's other jobs. Events for runners
//! jitr does not know, or that arrive out of order, are acknowledged with a
//! reason, never a crash.

use std::sync::Arc;

use jitr_domain::{Command, JobRef, StreamId, Timestamp};
use jitr_infra::CommandId;

use crate::app::Ports;
use crate::app::dispatch::{Dispatched, dispatch};
use crate::app::outcome::{HandlerError, Outcome};
use crate::app::policy::RunnerPolicy;
use crate::app::supply::Supply;
use crate::app::webhook::JobMessage;

/// The lifecycle handler.
pub struct Lifecycle {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
    supply: Arc<Supply>,
}

impl Lifecycle {
    /// A handler over `ports`; surplus runners are withdrawn through `supply`.
    pub fn new(ports: Ports, policy: Arc<RunnerPolicy>, supply: Arc<Supply>) -> Self {
        Lifecycle {
            ports,
            policy,
            supply,
        }
    }

    async fn apply(
        &self,
        stream: &StreamId,
        command: Command,
        job: &JobMessage,
        now: Timestamp,
    ) -> Result<String, HandlerError> {
        let name = command.name();
        let id = CommandId::new(format!("lifecycle:{}:{stream}:{name}", job.delivery));
        Ok(
            match dispatch(&*self.ports.store, stream, command, now, &id).await? {
                Dispatched::Appended { state, events } => {
                    if events
                        .iter()
                        .any(|e| matches!(e, jitr_domain::RunnerEvent::JobStarted { .. }))
                    {
                        self.job_started_metrics(&state, job, now).await;
                    }
                    format!("{stream}: {name}, now {}", state.status())
                }
                Dispatched::MovedOn { refusal, .. } => {
                    format!("{stream}: {name} ignored: {refusal}")
                }
                Dispatched::Unchanged { .. } | Dispatched::Duplicate => {
                    format!("{stream}: {name} already recorded")
                }
            },
        )
    }

    /// A job started on the runner in `state` (ADR-0022): the time the job
    /// waited since jitr heard it was queued (its first runner's request), the
    /// runner's idle time before it, and whether it was a warm runner's.
    async fn job_started_metrics(
        &self,
        state: &jitr_domain::RunnerState,
        job: &JobMessage,
        now: Timestamp,
    ) {
        let pool = state
            .request
            .as_ref()
            .and_then(|r| r.spec.pool.clone())
            .unwrap_or_default();
        let job_ref = JobRef {
            owner: job.owner.clone(),
            repo: job.repo.clone(),
            job_id: job.job_id,
            run_id: job.run_id,
        };
        let queued_at = match StreamId::for_job(&job_ref, 1) {
            Ok(first) => crate::app::dispatch::current_state(&*self.ports.store, &first)
                .await
                .ok()
                .and_then(|s| s.request.map(|r| r.at)),
            Err(_) => None,
        };
        crate::app::metrics::job_started(
            now,
            &pool,
            queued_at.map(|q| now.millis_since(q)),
            state.ready_at.map(|ready| now.millis_since(ready)),
            state.is_warm(),
        );
    }

    /// The stream of the runner GitHub named, if it is one of jitr's and the
    /// event may move it.
    async fn named_runner(
        &self,
        name: &str,
        job: &JobMessage,
        now: Timestamp,
    ) -> Result<Result<StreamId, String>, HandlerError> {
        let Some(stream) = self.ports.store.stream_of_runner(name).await? else {
            return Ok(Err(format!("runner {name:?} is not one of jitr's")));
        };
        let state = crate::app::dispatch::current_state(&*self.ports.store, &stream).await?;
        if let Some(why) =
            self.policy
                .refuses_event(&state, &job.owner, &job.repo, job.installation)
        {
            tracing::warn!(%stream, runner = %name, owner = %job.owner, repo = %job.repo, reason = %why, "lifecycle event refused");
            crate::app::metrics::lifecycle_refused(now);
            return Ok(Err(format!("{} for runner {name:?}: {why}", job.action)));
        }
        // A name can be taken by anyone who may register a runner in the
        // scope; the id GitHub gave jitr's registration cannot.
        if let (Some(named), Some(ours)) = (job.runner_id, state.runner_id) {
            if named != ours {
                tracing::warn!(%stream, runner = %name, named, ours, "lifecycle event for another registration under jitr's runner name refused");
                crate::app::metrics::lifecycle_refused(now);
                return Ok(Err(format!(
                    "{} for runner {name:?}: GitHub names runner id {named}, jitr registered {name:?} as {ours}",
                    job.action
                )));
            }
        }
        Ok(Ok(stream))
    }

    /// Handles one `in_progress` or `completed` job event.
    pub async fn handle(&self, job: &JobMessage, now: Timestamp) -> Result<Outcome, HandlerError> {
        let job_ref = JobRef {
            owner: job.owner.clone(),
            repo: job.repo.clone(),
            job_id: job.job_id,
            run_id: job.run_id,
        };
        let command = match job.action.as_str() {
            "in_progress" => Command::StartJob {
                job: Some(job_ref.clone()),
            },
            "completed" => Command::CompleteJob {
                conclusion: job.conclusion.clone(),
                job: Some(job_ref.clone()),
            },
            other => return Ok(Outcome::Done(format!("ignored: action {other}"))),
        };
        let mut outcomes = Vec::new();
        let ending = match &job.runner_name {
            Some(name) => {
                let taker = match self.named_runner(name, job, now).await? {
                    Ok(stream) => {
                        outcomes.push(self.apply(&stream, command, job, now).await?);
                        Some(stream)
                    }
                    Err(why) => {
                        outcomes.push(format!("ignored: {why}"));
                        None
                    }
                };
                // The runners standing for the job swap with the taker, or
                // are spare (also on `completed`: its `in_progress` may have
                // been lost).
                outcomes.extend(
                    self.supply
                        .job_taken(&job_ref, taker.as_ref(), name, now)
                        .await?,
                );
                taker.is_none()
            }
            None if job.action == "completed" => {
                // Completed before any runner took it: cancelled while queued.
                // The runners standing for it are capacity now, never closed
                // for it.
                let ended = self.supply.job_cancelled(&job_ref, now).await?;
                if ended.is_empty() {
                    outcomes.push(format!("ignored: job {} has no jitr runner", job.job_id));
                }
                outcomes.extend(ended);
                true
            }
            None => {
                return Ok(Outcome::Done(
                    "ignored: in_progress without a runner name".into(),
                ));
            }
        };
        if ending {
            // A runner with nothing launched that no queued job wants is
            // withdrawn at once, before an admission round launches it.
            let withdrawn = self.supply.withdraw_surplus(now).await?;
            if !withdrawn.is_empty() {
                outcomes.push(format!("withdrew {} surplus runner(s)", withdrawn.len()));
            }
        }
        Ok(Outcome::Done(outcomes.join("; ")))
    }
}
