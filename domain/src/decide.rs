//! `decide`: a command against the current state gives new events, or a refusal.

use crate::command::Command;
use crate::error::DomainError;
use crate::event::{FailureStage, JobSource, RunnerEvent};
use crate::ids::{ClientToken, InstanceId, StreamId, Timestamp};
use crate::launch::evidence_holds;
use crate::state::{LaunchOutcome, RunnerState, is_terminal};

/// Decides what `command` means for a runner in `state` at `now`.
///
/// `Ok(vec![])` means the command's effect is already recorded: a true repeat (see
/// [`is_repeat`]), answered so even on a closed stream. Launch outcomes are
/// accepted even after a failure or a completed job: an instance that exists must
/// always be recorded, so that its termination is owed — one the stream cannot
/// take, even on a closed stream, as a stray (and a stray's termination too).
pub fn decide(
    state: &RunnerState,
    command: Command,
    now: Timestamp,
) -> Result<Vec<RunnerEvent>, DomainError> {
    if state.request.is_none() {
        return match command {
            Command::Request {
                job,
                attempt,
                labels,
                spec,
                deadlines,
                installation,
                deployment,
            } => {
                StreamId::for_job(&job, attempt)?;
                Ok(vec![RunnerEvent::Requested {
                    at: now,
                    job,
                    attempt,
                    labels,
                    spec,
                    deadlines,
                    installation,
                    deployment,
                }])
            }
            _ => Err(DomainError::NotRequested),
        };
    };
    if is_repeat(state, &command) {
        return Ok(vec![]);
    }
    // An instance the cloud returned is recorded whatever the stream's status:
    // what the stream cannot take as its instance is a stray, owed a termination.
    if let Command::RecordLaunch {
        client_token,
        instance_id,
        instance_type,
        vcpus,
    } = &command
    {
        if !takes_launch(state, client_token) {
            return Ok(vec![RunnerEvent::StrayLaunched {
                at: now,
                client_token: client_token.clone(),
                instance_id: instance_id.clone(),
                instance_type: instance_type.clone(),
                vcpus: *vcpus,
            }]);
        }
    }
    if let Command::ConfirmTerminated {
        instance_id: Some(id),
        evidence,
    } = &command
    {
        if state.strays.iter().any(|s| s.id == *id) {
            evidence_holds(state, Some(id), *evidence, now).map_err(|why| {
                DomainError::NoEvidence {
                    evidence: *evidence,
                    why,
                }
            })?;
            return Ok(vec![RunnerEvent::StrayTerminated {
                at: now,
                instance_id: id.clone(),
                evidence: *evidence,
            }]);
        }
    }
    if is_terminal(state) {
        return Err(DomainError::Terminal {
            status: state.status(),
        });
    }
    let at = now;
    match command {
        Command::Request { .. } => Err(DomainError::RequestMismatch),
        Command::IntendLaunch { market } => {
            still_wanted(state)?;
            match state.launch.as_ref().map(|l| (&l.client_token, &l.outcome)) {
                Some((token, LaunchOutcome::Pending)) => Err(DomainError::LaunchUnresolved {
                    client_token: token.clone(),
                }),
                Some((_, LaunchOutcome::Launched(instance))) => Err(DomainError::AlreadyLaunched {
                    instance_id: instance.id.clone(),
                }),
                None | Some((_, LaunchOutcome::Rejected { .. })) => {
                    let stream = state.stream_id().ok_or(DomainError::NotRequested)?;
                    Ok(vec![RunnerEvent::LaunchIntended {
                        at,
                        client_token: ClientToken::derive_in(
                            state.request.as_ref().and_then(|r| r.deployment.as_deref()),
                            &stream,
                            state.launch_attempts + 1,
                        ),
                        market,
                    }])
                }
            }
        }
        Command::RecordLaunch {
            client_token,
            instance_id,
            instance_type,
            vcpus,
        } => {
            // The stream takes it (else it was recorded as a stray above).
            let market = pending_intent(state, &client_token)?;
            Ok(vec![RunnerEvent::Launched {
                at,
                client_token,
                instance_id,
                instance_type,
                vcpus,
                market,
            }])
        }
        Command::RejectLaunch {
            client_token,
            code,
            class,
        } => {
            if let Some(instance) = state.instance() {
                return Err(DomainError::AlreadyLaunched {
                    instance_id: instance.id.clone(),
                });
            }
            pending_intent(state, &client_token)?;
            Ok(vec![RunnerEvent::LaunchRejected {
                at,
                client_token,
                code,
                class,
            }])
        }
        Command::RecordToken {
            runner_name,
            runner_id,
        } => {
            still_wanted(state)?;
            if state.termination_requested.is_some() {
                return Err(DomainError::TerminationRequested);
            }
            if state.instance().is_none() {
                return Err(DomainError::NotLaunched);
            }
            match &state.runner_name {
                Some(existing) => Err(DomainError::TokenAlreadyMinted {
                    runner_name: existing.clone(),
                }),
                None => Ok(vec![RunnerEvent::TokenMinted {
                    at,
                    runner_name,
                    runner_id,
                }]),
            }
        }
        Command::StartJob { ref job } | Command::ObserveJobStarted { ref job } => {
            still_wanted(state)?;
            if state.instance().is_none() {
                return Err(DomainError::NotLaunched);
            }
            if let (Some(taken), Some(named)) = (state.job_taken(), job) {
                if taken != named {
                    return Err(DomainError::AnotherJob {
                        taken: taken.job_id,
                        named: named.job_id,
                    });
                }
            }
            Ok(vec![RunnerEvent::JobStarted {
                at,
                source: source_of(&command),
                job: job.clone(),
            }])
        }
        Command::CompleteJob {
            ref conclusion,
            ref job,
        }
        | Command::ObserveJobCompleted {
            ref conclusion,
            ref job,
        } => {
            if state.failure.is_some() {
                return Err(DomainError::AlreadyFailed);
            }
            if let (Some(taken), Some(named)) = (state.job_taken(), job) {
                if taken != named {
                    return Err(DomainError::AnotherJob {
                        taken: taken.job_id,
                        named: named.job_id,
                    });
                }
            }
            Ok(vec![RunnerEvent::JobCompleted {
                at,
                conclusion: conclusion.clone(),
                source: source_of(&command),
                job: job.clone(),
            }])
        }
        Command::EndDemand { ending } => Ok(vec![RunnerEvent::DemandEnded { at, ending }]),
        Command::MoveDemand { job } => {
            if !state.demand_queued() {
                return Err(DomainError::JobTaken);
            }
            Ok(vec![RunnerEvent::DemandMoved { at, job }])
        }
        Command::RefuseDeregistration { reason } => {
            if state.runner_name.is_none() {
                return Err(DomainError::NotRegistered);
            }
            Ok(vec![RunnerEvent::DeregistrationRefused { at, reason }])
        }
        Command::WarnSpotInterruption { instance_id } => {
            same_instance(state, &instance_id)?;
            let job_started = state.job_started_at.is_some();
            let mut events = vec![RunnerEvent::SpotInterruptionWarned {
                at,
                instance_id: instance_id.clone(),
                job_started,
            }];
            if !job_started && state.failure.is_none() && state.job_completed_at.is_none() {
                events.push(RunnerEvent::Failed {
                    at,
                    stage: FailureStage::SpotInterrupted,
                    reason: format!(
                        "EC2 will reclaim spot instance {instance_id} before the job started"
                    ),
                });
            }
            Ok(events)
        }
        Command::Park { instance_id } => {
            still_wanted(state)?;
            if state.termination_requested.is_some() {
                return Err(DomainError::TerminationRequested);
            }
            same_instance(state, &instance_id)?;
            if !state.parks() {
                return Err(DomainError::NotParkable("not a stopped pool's runner"));
            }
            if state.runner_name.is_some() || state.woken_at.is_some() {
                return Err(DomainError::NotParkable("already woken for a job"));
            }
            Ok(vec![RunnerEvent::Parked { at, instance_id }])
        }
        Command::Wake {
            instance_id,
            for_job,
        } => {
            still_wanted(state)?;
            if state.termination_requested.is_some() {
                return Err(DomainError::TerminationRequested);
            }
            same_instance(state, &instance_id)?;
            if state.parked_at.is_none() {
                return Err(DomainError::NotParkable("not parked"));
            }
            Ok(vec![RunnerEvent::Woken {
                at,
                instance_id,
                for_job,
            }])
        }
        Command::Fail { stage, reason } => {
            if state.job_completed_at.is_some() {
                return Err(DomainError::JobAlreadyCompleted);
            }
            if stage.is_idle_runners() && state.took_job() {
                return Err(DomainError::JobTaken);
            }
            Ok(vec![RunnerEvent::Failed { at, stage, reason }])
        }
        Command::Terminate { reason } => {
            if !state.instance_may_be_alive() {
                return Err(DomainError::NoInstance);
            }
            Ok(vec![RunnerEvent::TerminationRequested {
                at,
                reason,
                instance_id: state.instance().map(|i| i.id.clone()),
            }])
        }
        Command::ConfirmTerminated {
            instance_id,
            evidence,
        } => {
            let expected = state.instance().map(|i| i.id.clone());
            if expected != instance_id {
                return Err(DomainError::InstanceMismatch {
                    expected,
                    got: instance_id,
                });
            }
            evidence_holds(state, instance_id.as_ref(), evidence, now)
                .map_err(|why| DomainError::NoEvidence { evidence, why })?;
            Ok(vec![RunnerEvent::Terminated {
                at,
                instance_id,
                evidence,
            }])
        }
    }
}

/// Whether `command`'s effect is already recorded in `state`, so that it writes
/// nothing. These are the idempotent commands and what makes each a repeat:
///
/// | command | a repeat when |
/// |---|---|
/// | `Request` | the stream was requested for the same job and attempt |
/// | `RecordLaunch` | the same instance is recorded (as the runner's, or as a stray) |
/// | `RejectLaunch` | the latest intent, with the same token, was rejected |
/// | `RecordToken` | the same runner name is recorded |
/// | `StartJob` / `CompleteJob` (and their `Observe…` forms) | the job's start / completion is recorded, whatever its source, for the same job (or none named) |
/// | `EndDemand` | the demand's end is recorded |
/// | `MoveDemand` | the runner stands for that job already |
/// | `RefuseDeregistration` | the runner is known busy (refused before, or its job started) |
/// | `WarnSpotInterruption` | a warning is recorded |
/// | `Park` | the runner is parked (or was woken since) |
/// | `Wake` | the runner was woken |
/// | `Fail` | a failure is recorded (the first one stands) |
/// | `Terminate` | a termination was requested |
/// | `ConfirmTerminated` | `Terminated` is recorded for the same instance (or none), or the named stray is confirmed gone |
///
/// `IntendLaunch` is never a repeat: each one is a new launch.
pub fn is_repeat(state: &RunnerState, command: &Command) -> bool {
    let Some(request) = &state.request else {
        return false;
    };
    match command {
        Command::Request { job, attempt, .. } => *job == request.job && *attempt == request.attempt,
        Command::IntendLaunch { .. } => false,
        Command::RecordLaunch { instance_id, .. } => {
            state.instance().is_some_and(|i| i.id == *instance_id)
                || state.strays.iter().any(|s| s.id == *instance_id)
        }
        Command::RejectLaunch { client_token, .. } => matches!(
            &state.launch,
            Some(launch) if launch.client_token == *client_token
                && matches!(launch.outcome, LaunchOutcome::Rejected { .. })
        ),
        Command::RecordToken { runner_name, .. } => state.runner_name.as_ref() == Some(runner_name),
        Command::StartJob { job } | Command::ObserveJobStarted { job } => {
            state.job_started_at.is_some() && same_job(state, job.as_ref())
        }
        Command::CompleteJob { job, .. } | Command::ObserveJobCompleted { job, .. } => {
            state.job_completed_at.is_some() && same_job(state, job.as_ref())
        }
        Command::EndDemand { .. } => state.demand_ended.is_some(),
        Command::MoveDemand { job } => state.demand_job() == Some(job),
        Command::RefuseDeregistration { .. } => {
            state.busy_since.is_some() || state.job_started_at.is_some()
        }
        Command::WarnSpotInterruption { .. } => state.spot_warned.is_some(),
        Command::Park { .. } => state.parked_at.is_some(),
        Command::Wake { .. } => state.woken_at.is_some(),
        Command::Fail { .. } => state.failure.is_some(),
        Command::Terminate { .. } => state.termination_requested.is_some(),
        Command::ConfirmTerminated { instance_id, .. } => {
            let stray_gone = instance_id
                .as_ref()
                .is_some_and(|id| state.strays.iter().any(|s| s.id == *id && s.gone.is_some()));
            stray_gone
                || (state.terminated_at.is_some()
                    && state.instance().map(|i| &i.id) == instance_id.as_ref())
        }
    }
}

/// Whether `named` is the job the runner took (or no job is named).
fn same_job(state: &RunnerState, named: Option<&crate::ids::JobRef>) -> bool {
    named.is_none_or(|named| state.job_taken().is_none_or(|taken| taken == named))
}

/// Whether the stream takes an instance launched with `client_token` as its own:
/// open, without an instance, and that token's intent pending.
fn takes_launch(state: &RunnerState, client_token: &ClientToken) -> bool {
    !is_terminal(state)
        && state.instance().is_none()
        && state.pending_launch() == Some(client_token)
}

/// Where a job's start or completion was learnt.
fn source_of(command: &Command) -> JobSource {
    match command {
        Command::ObserveJobStarted { .. } | Command::ObserveJobCompleted { .. } => JobSource::Poll,
        _ => JobSource::Webhook,
    }
}

/// Refuses work for a runner that has failed or whose job is over.
/// The runner's instance is `instance_id`.
fn same_instance(state: &RunnerState, instance_id: &InstanceId) -> Result<(), DomainError> {
    let expected = state.instance().map(|i| i.id.clone());
    if expected.as_ref() != Some(instance_id) {
        return Err(DomainError::InstanceMismatch {
            expected,
            got: Some(instance_id.clone()),
        });
    }
    Ok(())
}

fn still_wanted(state: &RunnerState) -> Result<(), DomainError> {
    if state.failure.is_some() {
        return Err(DomainError::AlreadyFailed);
    }
    if state.job_completed_at.is_some() {
        return Err(DomainError::JobAlreadyCompleted);
    }
    Ok(())
}

/// The market of the pending intent with this token.
fn pending_intent(
    state: &RunnerState,
    client_token: &ClientToken,
) -> Result<crate::event::Market, DomainError> {
    match &state.launch {
        Some(launch) if launch.outcome == LaunchOutcome::Pending => {
            if launch.client_token == *client_token {
                Ok(launch.market)
            } else {
                Err(DomainError::ClientTokenMismatch {
                    expected: launch.client_token.clone(),
                    got: client_token.clone(),
                })
            }
        }
        _ => Err(DomainError::NoLaunchIntended),
    }
}
