//! The runner decider: jitr's whole domain, pure.
//!
//! One event stream per runner attempt. [`decide`] turns a [`Command`] into
//! [`RunnerEvent`]s or a typed [`DomainError`]; [`evolve`] folds events into a
//! [`RunnerState`]; [`resume`] says what is still owed (a `Terminate` after a
//! failure); [`is_terminal`] says whether the stream is closed. No I/O, no clock:
//! every moment is a parameter.
//!
//! The guarantee: a runner is terminal only if no launch was ever intended or a
//! `Terminated` was recorded. `Failed` or `JobCompleted` after a launch gives the
//! non-terminal `Terminating` / `Draining`, and `resume` owes a `Terminate`.
#![deny(missing_docs, unsafe_code)]

mod admission;
mod capacity;
mod command;
mod decide;
mod error;
mod event;
mod ids;
mod launch;
mod resume;
mod state;
mod supply;
mod wait;
mod warm;

pub use admission::{
    AdmissionRound, AdmissionStep, Admitted, LaunchAttempt, LaunchResult, PoolLimits, PoolWaiting,
    RoundReport, ShuttingDownInstance, StillWaiting, UNKNOWN_LAUNCH_LOOK_AGAIN_MS,
};
pub use capacity::{
    Admission, CapacityLedger, FIRST_CAPACITY_PAUSE_MS, FIRST_PAUSE_MS, MAX_PAUSE_MS, MarketQuota,
    PROBE_AFTER_MS, Pause, fair_order,
};
pub use command::{Command, TerminateRunner};
pub use decide::{decide, is_repeat};
pub use error::{DomainError, is_benign_refusal};
pub use event::{
    DEFAULT_CONSISTENCY_WINDOW_MS, DEFAULT_MAX_WAIT_MS, Deadlines, DemandEnding, FailureStage,
    InstanceSpec, JobSource, LaunchErrorClass, Market, RunnerEvent, TerminationEvidence,
    TerminationReason,
};
pub use ids::{
    ClientToken, InstallationId, InstanceId, JobRef, StreamId, Timestamp, WARM_JOB_ID,
    runner_name_prefix,
};
pub use launch::{
    FoundInstance, INTENT_LOOK_AGAIN_MS, InstanceReport, InstanceVerdict, IntentResolution,
    LaunchChoices, NOT_LAUNCHED, NextLaunch, Refusal, evidence_holds, fallback_market,
    judge_instance, market_unusable, next_launch, record_instance, record_launch,
    resolve_pending_launch,
};
pub use resume::{
    MissedDeadline, boot_deadline, deadline_to_confirm, missed_deadline, resume, terminate_runner,
    terminate_strays, termination_owed,
};
pub use state::{
    Failure, Instance, Launch, LaunchOutcome, RunnerRequest, RunnerState, RunnerStatus, Stray,
    evolve, fold, is_terminal,
};
pub use supply::{
    DEFAULT_RETIRE_GRACE_MS, PoolBalance, PoolFloor, Retirement, plan_retirements,
    plan_withdrawals, pool_balances,
};
pub use wait::{MarketBlock, Wait, WaitReason};
pub use warm::{WarmPlan, WarmSchedule, WarmWindow, WindowError, plan_parking, plan_warmth};

/// Runs `decide` and folds its events: the state after the command, and the events.
pub fn execute(
    state: &RunnerState,
    command: Command,
    now: Timestamp,
) -> Result<(RunnerState, Vec<RunnerEvent>), DomainError> {
    let events = decide(state, command, now)?;
    let next = events.iter().fold(state.clone(), evolve);
    Ok((next, events))
}
