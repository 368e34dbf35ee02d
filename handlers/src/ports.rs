//! What the runner handlers are given to work with, and what they answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jitr_infra::{
    Compute, ComputeError, EventStore, GitHub, Queue, QueueMessage, RunnerSecrets, StoreError,
};
use thiserror::Error;

use crate::dispatch::DispatchError;

/// The outside world, as ports.
#[derive(Clone)]
pub struct Ports {
    /// The runner event log.
    pub store: Arc<dyn EventStore>,
    /// Instances.
    pub compute: Arc<dyn Compute>,
    /// GitHub.
    pub github: Arc<dyn GitHub>,
    /// Where JIT configs are handed over.
    pub secrets: Arc<dyn RunnerSecrets>,
}

/// What to do with the message a handler was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handled (or nothing to do): acknowledge it.
    Done(String),
    /// Not yet: make it visible again after the delay.
    RetryAfter(Duration, String),
    /// Poison or hopeless: move it to the dead-letter queue with this reason.
    DeadLetter(String),
}

/// A handler could not finish; the message is retried by its queue.
#[derive(Debug, Error)]
pub enum HandlerError {
    /// Recording in the log failed.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The compute provider failed.
    #[error(transparent)]
    Compute(#[from] ComputeError),
    /// A crash injected at a step boundary (tests of crash recovery).
    #[error("crash injected at {0:?}")]
    Crashed(CrashPoint),
}

/// Step boundaries where a crash can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Scale-up: `LaunchIntended` written, RunInstances not called.
    AfterLaunchIntended,
    /// Scale-up: RunInstances returned, `Launched` not written.
    AfterRunInstances,
    /// Scale-up: `Launched` written, no JIT config minted.
    AfterLaunched,
    /// Scale-up: `TokenMinted` written, message not acknowledged.
    AfterTokenMinted,
    /// Compensation: TerminateInstances called, `Terminated` not written.
    AfterTerminateInstances,
}

/// A one-shot crash trigger.
#[derive(Debug, Default)]
pub struct CrashSwitch(Mutex<Option<CrashPoint>>);

impl CrashSwitch {
    /// Arms a crash at `point`.
    pub fn arm(&self, point: CrashPoint) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(point);
    }

    /// Crashes (once) if armed at `point`.
    pub fn check(&self, point: CrashPoint) -> Result<(), HandlerError> {
        let mut armed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *armed == Some(point) {
            *armed = None;
            return Err(HandlerError::Crashed(point));
        }
        Ok(())
    }
}

/// Acts on a handler's outcome for a queued message: done → acknowledged (when
/// `ack_done`; Lambda deletes it itself), retry → made visible again after the
/// back-off, poison → dead-lettered with its reason, error → retried in 5 s.
/// Returns whether the message stays on the queue for another delivery.
pub async fn settle(
    queue: &dyn Queue,
    message: &QueueMessage,
    outcome: Result<Outcome, HandlerError>,
    what: &str,
    ack_done: bool,
) -> bool {
    let (result, stays) = match outcome {
        Ok(Outcome::Done(info)) => {
            tracing::info!(handler = what, id = %message.id, %info, "done");
            let result = if ack_done {
                queue.ack(message).await
            } else {
                Ok(())
            };
            (result, false)
        }
        Ok(Outcome::RetryAfter(delay, info)) => {
            tracing::info!(handler = what, id = %message.id, %info, ?delay, "retry later");
            (queue.retry_later(message, delay).await, true)
        }
        Ok(Outcome::DeadLetter(reason)) => {
            tracing::error!(handler = what, id = %message.id, %reason, "to the dead-letter queue");
            let result = queue.dead_letter(message, &reason).await;
            let stays = result.is_err();
            (result, stays)
        }
        Err(e) => {
            tracing::error!(handler = what, id = %message.id, error = %e, "failed; will retry");
            (
                queue.retry_later(message, Duration::from_secs(5)).await,
                true,
            )
        }
    };
    if let Err(e) = result {
        tracing::error!(handler = what, error = %e, "queue operation failed");
    }
    stays
}
