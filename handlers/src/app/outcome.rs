//! What a handler answers: the outcome for its message, or the error that has the
//! message retried; and crash injection at step boundaries, for recovery tests.

use std::sync::Mutex;
use std::time::Duration;

use jitr_infra::{ComputeError, GitHubError, StoreError};
use thiserror::Error;

use crate::app::dispatch::DispatchError;

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
    /// GitHub did not answer (or refused).
    #[error(transparent)]
    GitHub(#[from] GitHubError),
    /// A queue did not take a message.
    #[error(transparent)]
    Queue(#[from] jitr_infra::QueueError),
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
    /// Scale-up: the runner registered and its JIT config handed over,
    /// `TokenMinted` not written.
    AfterJitConfigHandedOver,
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
