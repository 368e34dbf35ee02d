//! Lifecycle: `in_progress` and `completed` webhooks move the runner that took the
//! job. Events for runners jitr does not know, or that arrive out of order, are
//! acknowledged with a reason, never a crash.

use jitr_domain::{Command, JobRef, StreamId, Timestamp};
use jitr_infra::CommandId;

use crate::app::Ports;
use crate::app::dispatch::{Dispatched, dispatch};
use crate::app::outcome::{HandlerError, Outcome};
use crate::app::webhook::JobMessage;

/// Runner attempts looked at for a job cancelled before any runner took it.
const MAX_ATTEMPTS_LOOKED_UP: u32 = 8;

/// The lifecycle handler.
pub struct Lifecycle {
    ports: Ports,
}

impl Lifecycle {
    /// A handler over `ports`.
    pub fn new(ports: Ports) -> Self {
        Lifecycle { ports }
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
            return match self.ports.store.stream_of_runner(name).await? {
                Some(stream) => self.apply(&stream, command, job, now).await,
                None => Ok(Outcome::Done(format!(
                    "ignored: runner {name:?} is not one of jitr's"
                ))),
            };
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
