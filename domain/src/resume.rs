//! `resume`: what is still owed to a runner at a given moment.

use crate::command::{Command, TerminateRunner};
use crate::event::{FailureStage, TerminationReason};
use crate::ids::Timestamp;
use crate::state::{RunnerState, is_terminal};

/// A deadline of the runner that has passed while no failure was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissedDeadline {
    /// The failure it stands for.
    pub stage: FailureStage,
    /// When it passed.
    pub at: Timestamp,
}

/// The first deadline the runner has missed at `now`, if any (and not yet recorded
/// as a failure). Completed jobs only have the drain grace, which owes a termination
/// rather than a failure.
pub fn missed_deadline(state: &RunnerState, now: Timestamp) -> Option<MissedDeadline> {
    let request = state.request.as_ref()?;
    if is_terminal(state) || state.failure.is_some() || state.job_completed_at.is_some() {
        return None;
    }
    let d = request.deadlines;
    let max_age = match d.max_wait_ms {
        // A woken runner's life starts again at its start: a job it takes
        // gets the whole max age, however long it was parked.
        _ if state.woken_at.is_some() => state.woken_at.map(|w| w.plus_ms(d.max_age_ms)),
        // Waiting is not age: the instance's age counts from its launch.
        Some(_) => state
            .launch
            .as_ref()
            .filter(|_| state.instance_may_be_alive())
            .map(|l| l.intended_at.plus_ms(d.max_age_ms)),
        None => Some(request.at.plus_ms(d.max_age_ms)),
    };
    if let Some(max_age) = max_age.filter(|at| now >= *at) {
        return Some(MissedDeadline {
            stage: FailureStage::MaxAge,
            at: max_age,
        });
    }
    if state.took_job() {
        return None;
    }
    // A registered runner that stands for no job waits for whichever job
    // GitHub gives it: a warm one, or a spare one whose job another runner
    // took or its user cancelled. Its max age bounds it, and the reaper retires
    // it beyond its pool's floor (ADR-0022).
    let stands_for_no_job = state.is_warm() || state.demand_ended.is_some();
    if stands_for_no_job && state.runner_name.is_some() {
        return None;
    }
    // A parked runner waits, stopped, for a job to wake it: its max age bounds
    // it. Until it is parked it has the boot deadline to be.
    if state.is_parking() && state.parked_at.is_some() {
        return None;
    }
    let stage = if state.instance_may_be_alive() {
        FailureStage::Boot
    } else {
        FailureStage::Stale
    };
    let boot = boot_deadline(state)?;
    (now >= boot).then_some(MissedDeadline { stage, at: boot })
}

/// The missed deadline jitr asks GitHub about before acting on it: a boot or
/// max-age deadline of a runner whose JIT config was minted (so its job may have
/// started, or ended, without jitr hearing) and whose termination was not yet
/// issued. A lost `in_progress` or `completed` webhook must not decide it.
pub fn deadline_to_confirm(state: &RunnerState, now: Timestamp) -> Option<MissedDeadline> {
    let missed = missed_deadline(state, now)?;
    let asked = matches!(missed.stage, FailureStage::Boot | FailureStage::MaxAge);
    (asked && state.runner_name.is_some() && state.termination_requested.is_none())
        .then_some(missed)
}

/// When the runner's job must have started: the boot timeout after its first
/// launch intent (or, while nothing may be alive, after its request). A runner
/// that may wait for capacity (`max_wait_ms`) has, while nothing may be alive,
/// until its request plus the wait limit, and once launched the boot timeout
/// after its current launch intent.
pub fn boot_deadline(state: &RunnerState) -> Option<Timestamp> {
    let request = state.request.as_ref()?;
    let d = request.deadlines;
    let alive = state.instance_may_be_alive();
    if let Some(woken) = state.woken_at {
        return Some(woken.plus_ms(d.boot_timeout_ms));
    }
    Some(match (d.max_wait_ms, alive) {
        (Some(wait), false) => request.at.plus_ms(wait),
        (Some(_), true) => state
            .launch
            .as_ref()
            .map_or(request.at, |l| l.intended_at)
            .plus_ms(d.boot_timeout_ms),
        (None, true) => state
            .first_intent_at
            .unwrap_or(request.at)
            .plus_ms(d.boot_timeout_ms),
        (None, false) => request.at.plus_ms(d.boot_timeout_ms),
    })
}

/// Since when a termination is owed at `now`, and why; `None` when none is.
///
/// A termination is owed while an instance may be alive and the runner has failed,
/// has missed a deadline, was asked to terminate, or completed its job more than the
/// drain grace ago.
pub fn termination_owed(
    state: &RunnerState,
    now: Timestamp,
) -> Option<(Timestamp, TerminationReason)> {
    let request = state.request.as_ref()?;
    if !state.instance_may_be_alive() {
        return None;
    }
    let mut owed: Vec<(Timestamp, TerminationReason)> = Vec::new();
    if let Some(failure) = &state.failure {
        owed.push((
            failure.at,
            TerminationReason::Failure {
                stage: failure.stage,
            },
        ));
    } else if let Some(missed) = missed_deadline(state, now) {
        owed.push((
            missed.at,
            TerminationReason::Failure {
                stage: missed.stage,
            },
        ));
    }
    if let Some(requested) = state.termination_requested {
        owed.push(requested);
    }
    if let Some(completed) = state.job_completed_at {
        let grace_over = completed.plus_ms(request.deadlines.drain_grace_ms);
        if now >= grace_over {
            owed.push((grace_over, TerminationReason::DrainGraceOver));
        }
    }
    owed.into_iter().min_by_key(|(at, _)| *at)
}

/// The commands still owed to the runner at `now`, in order: a `Fail` for a missed
/// deadline, then a `Terminate` while an instance may be alive that nobody wants.
///
/// After a crash, running these (and confirming the termination) is what brings the
/// runner to a terminal status.
pub fn resume(state: &RunnerState, now: Timestamp) -> Vec<Command> {
    if state.request.is_none() || is_terminal(state) {
        return Vec::new();
    }
    let mut owed = Vec::new();
    if let Some(missed) = missed_deadline(state, now) {
        owed.push(Command::Fail {
            stage: missed.stage,
            reason: format!("{} deadline passed", missed.stage.as_str()),
        });
    }
    if let Some((_, reason)) = termination_owed(state, now) {
        owed.push(Command::Terminate { reason });
    }
    owed
}

/// The compensation message for a runner owed a termination at `now`.
pub fn terminate_runner(state: &RunnerState, now: Timestamp) -> Option<TerminateRunner> {
    let (owed_since, reason) = termination_owed(state, now)?;
    Some(TerminateRunner {
        stream: state.stream_id()?,
        instance_id: state.instance().map(|i| i.id.clone()),
        client_token: state.launch.as_ref().map(|l| l.client_token.clone()),
        reason,
        owed_since,
    })
}

/// The compensation messages for the runner's stray instances not yet confirmed
/// gone: each is owed a termination since it was recorded.
pub fn terminate_strays(state: &RunnerState) -> Vec<TerminateRunner> {
    let Some(stream) = state.stream_id() else {
        return Vec::new();
    };
    state
        .live_strays()
        .map(|stray| TerminateRunner {
            stream: stream.clone(),
            instance_id: Some(stray.id.clone()),
            client_token: Some(stray.client_token.clone()),
            reason: TerminationReason::Failure {
                stage: FailureStage::Orphaned,
            },
            owed_since: stray.recorded_at,
        })
        .collect()
}
