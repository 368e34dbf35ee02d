//! Lifecycle: `in_progress` and `completed` webhooks move the runner that took the
//! job. Events for runners jitr does not know, or that arrive out of order, are
//! acknowledged with a reason, never a crash.

use std::sync::Arc;

use jitr_domain::{Command, JobRef, StreamId, Timestamp};
use jitr_infra::CommandId;

use crate::app::Ports;
use crate::app::dispatch::{Dispatched, dispatch};
use crate::app::outcome::{HandlerError, Outcome};
use crate::app::policy::RunnerPolicy;
use crate::app::webhook::JobMessage;

/// Runner attempts looked at for a job cancelled before any runner took it.
const MAX_ATTEMPTS_LOOKED_UP: u32 = 8;

/// The lifecycle handler.
pub struct Lifecycle {
    ports: Ports,
    policy: Arc<RunnerPolicy>,
}

impl Lifecycle {
    /// A handler over `ports`.
    pub fn new(ports: Ports, policy: Arc<RunnerPolicy>) -> Self {
        Lifecycle { ports, policy }
    }

    async fn apply(
        &self,
        stream: &StreamId,
        command: Command,
        job: &JobMessage,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        let name = command.name();
        let id = CommandId::new(format!("lifecycle:{}:{stream}", job.delivery));
        match dispatch(&*self.ports.store, stream, command, now, &id).await {
            Ok(Dispatched::Appended { state, .. }) => Ok(Outcome::Done(format!(
                "{stream}: {name}, now {}",
                state.status()
            ))),
            Ok(Dispatched::MovedOn { refusal, .. }) => Ok(Outcome::Done(format!(
                "{stream}: {name} ignored: {refusal}"
            ))),
            Ok(Dispatched::Unchanged { .. } | Dispatched::Duplicate) => {
                Ok(Outcome::Done(format!("{stream}: {name} already recorded")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Handles one `in_progress` or `completed` job event.
    pub async fn handle(&self, job: &JobMessage, now: Timestamp) -> Result<Outcome, HandlerError> {
        let command = match job.action.as_str() {
            "in_progress" => Command::StartJob,
            "completed" => Command::CompleteJob {
                conclusion: job.conclusion.clone(),
            },
            other => return Ok(Outcome::Done(format!("ignored: action {other}"))),
        };
        if let Some(name) = &job.runner_name {
            let Some(stream) = self.ports.store.stream_of_runner(name).await? else {
                return Ok(Outcome::Done(format!(
                    "ignored: runner {name:?} is not one of jitr's"
                )));
            };
            let state = crate::app::dispatch::current_state(&*self.ports.store, &stream).await?;
            if let Some(why) =
                self.policy
                    .refuses_event(&state, &job.owner, &job.repo, job.installation)
            {
                tracing::warn!(%stream, runner = %name, owner = %job.owner, repo = %job.repo, reason = %why, "lifecycle event refused");
                crate::app::metrics::lifecycle_refused(now);
                return Ok(Outcome::Done(format!(
                    "ignored: {} for runner {name:?}: {why}",
                    job.action
                )));
            }
            return self.apply(&stream, command, job, now).await;
        }
        if !matches!(command, Command::CompleteJob { .. }) {
            return Ok(Outcome::Done(
                "ignored: in_progress without a runner name".into(),
            ));
        }
        // Completed before any runner took it (cancelled): close the job's own
        // runners, whose instances nobody needs any more.
        let job_ref = JobRef {
            owner: job.owner.clone(),
            repo: job.repo.clone(),
            job_id: job.job_id,
            run_id: job.run_id,
        };
        let mut outcomes = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS_LOOKED_UP {
            let Ok(stream) = StreamId::for_job(&job_ref, attempt) else {
                break;
            };
            if self.ports.store.head(&stream).await?.is_none() {
                break;
            }
            if let Outcome::Done(what) = self.apply(&stream, command.clone(), job, now).await? {
                outcomes.push(what);
            }
        }
        if outcomes.is_empty() {
            return Ok(Outcome::Done(format!(
                "ignored: job {} has no jitr runner",
                job.job_id
            )));
        }
        Ok(Outcome::Done(outcomes.join("; ")))
    }
}
