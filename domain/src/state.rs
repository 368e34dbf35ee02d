//! A runner's state, folded from its events.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{
    Deadlines, DemandEnding, FailureStage, InstanceSpec, LaunchErrorClass, Market, RunnerEvent,
    TerminationEvidence, TerminationReason,
};
use crate::ids::{ClientToken, InstallationId, InstanceId, JobRef, StreamId, Timestamp};

/// What the request said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRequest {
    /// When the job was requested.
    pub at: Timestamp,
    /// The job.
    pub job: JobRef,
    /// The runner attempt for that job (from 1).
    pub attempt: u32,
    /// Its labels.
    pub labels: Vec<String>,
    /// The instance to launch.
    pub spec: InstanceSpec,
    /// The runner's deadlines.
    pub deadlines: Deadlines,
    /// The App installation the job came through (None in older logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation: Option<InstallationId>,
    /// The deployment that serves it (None: no named deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// A launched instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its id.
    pub id: InstanceId,
    /// Its type.
    pub instance_type: String,
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its market.
    pub market: Market,
    /// When RunInstances returned it.
    pub launched_at: Timestamp,
}

/// An instance RunInstances returned that the stream could not take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stray {
    /// The launch's token.
    pub client_token: ClientToken,
    /// Its id.
    pub id: InstanceId,
    /// Its type.
    pub instance_type: String,
    /// Its vCPUs.
    pub vcpus: u32,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// When it was confirmed gone, and on what evidence.
    pub gone: Option<(Timestamp, TerminationEvidence)>,
}

impl Stray {
    /// The stray a `StrayLaunched` records, not yet gone; none for any other
    /// event.
    pub fn launched(event: &RunnerEvent) -> Option<Stray> {
        match event {
            RunnerEvent::StrayLaunched {
                at,
                client_token,
                instance_id,
                instance_type,
                vcpus,
            } => Some(Stray {
                client_token: client_token.clone(),
                id: instance_id.clone(),
                instance_type: instance_type.clone(),
                vcpus: *vcpus,
                recorded_at: *at,
                gone: None,
            }),
            _ => None,
        }
    }
}

/// How the latest launch intent was resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum LaunchOutcome {
    /// Not yet: an instance may or may not exist.
    Pending,
    /// Refused: no instance exists for this intent.
    Rejected {
        /// Provider error code.
        code: String,
        /// Its class.
        class: LaunchErrorClass,
    },
    /// An instance exists.
    Launched(Instance),
}

/// The latest launch intent of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// Its idempotency token.
    pub client_token: ClientToken,
    /// Spot or on-demand.
    pub market: Market,
    /// When it was written.
    pub intended_at: Timestamp,
    /// How it was resolved.
    pub outcome: LaunchOutcome,
}

/// The failure recorded on a runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// When.
    pub at: Timestamp,
    /// At which step.
    pub stage: FailureStage,
    /// Why.
    pub reason: String,
}

/// A runner's status. `Draining` and `Terminating` are the non-terminal states of a
/// runner that is done but whose instance may still be alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerStatus {
    /// No event yet.
    Unrequested,
    /// Waiting for a launch (none intended, or the last one was rejected).
    Requested,
    /// A launch intent is unresolved: an instance may exist.
    Launching,
    /// The instance exists; no JIT config handed over yet.
    Booting,
    /// JIT config handed over; waiting for the job to start.
    Ready,
    /// The job runs.
    Running,
    /// The job completed; the instance may still be alive (also once its
    /// termination was issued).
    Draining,
    /// Failed, or asked to terminate before its job completed; the instance may
    /// still be alive.
    Terminating,
    /// Terminal: the job completed and no instance is alive.
    Completed,
    /// Terminal: the runner failed (or was terminated) and no instance is alive.
    Failed,
}

impl RunnerStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunnerStatus; 10] = [
        RunnerStatus::Unrequested,
        RunnerStatus::Requested,
        RunnerStatus::Launching,
        RunnerStatus::Booting,
        RunnerStatus::Ready,
        RunnerStatus::Running,
        RunnerStatus::Draining,
        RunnerStatus::Terminating,
        RunnerStatus::Completed,
        RunnerStatus::Failed,
    ];

    /// Kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerStatus::Unrequested => "unrequested",
            RunnerStatus::Requested => "requested",
            RunnerStatus::Launching => "launching",
            RunnerStatus::Booting => "booting",
            RunnerStatus::Ready => "ready",
            RunnerStatus::Running => "running",
            RunnerStatus::Draining => "draining",
            RunnerStatus::Terminating => "terminating",
            RunnerStatus::Completed => "completed",
            RunnerStatus::Failed => "failed",
        }
    }

    /// Whether this status closes the stream.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunnerStatus::Completed | RunnerStatus::Failed)
    }
}

impl fmt::Display for RunnerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the decider knows of one runner. Built only by [`evolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerState {
    /// Number of events folded in (the stream's version).
    pub version: u64,
    /// The request, once made.
    pub request: Option<RunnerRequest>,
    /// Launch intents written so far.
    pub launch_attempts: u32,
    /// When the first launch was intended.
    pub first_intent_at: Option<Timestamp>,
    /// The latest launch intent.
    pub launch: Option<Launch>,
    /// The runner's name, once its JIT config was minted.
    pub runner_name: Option<String>,
    /// GitHub's id of its registration, where the log recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<u64>,
    /// When the job started.
    pub job_started_at: Option<Timestamp>,
    /// When the job completed.
    pub job_completed_at: Option<Timestamp>,
    /// The job's conclusion.
    pub conclusion: Option<String>,
    /// The failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// When a termination was first issued, and why.
    pub termination_requested: Option<(Timestamp, TerminationReason)>,
    /// When the instance was confirmed gone.
    pub terminated_at: Option<Timestamp>,
    /// What proved it.
    pub terminated_by: Option<TerminationEvidence>,
    /// Instances returned for launches the stream could not take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strays: Vec<Stray>,
    /// EC2's spot interruption warning for the runner's instance: when, and
    /// whether the job had started (so the job was cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_warned: Option<(Timestamp, bool)>,
    /// The job GitHub gave the runner, once one started or completed on it
    /// (None with a start recorded: an older log, the runner's own job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_job: Option<JobRef>,
    /// When the JIT config was handed over (the runner could take a job from
    /// then on).
    #[serde(default)]
    pub ready_at: Option<Timestamp>,
    /// The job the runner stands for, when another than the one it was
    /// launched for (moved to it, `DemandMoved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand_moved_to: Option<JobRef>,
    /// When and how the job the runner stands for stopped wanting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand_ended: Option<(Timestamp, DemandEnding)>,
    /// When GitHub refused to delete the registration: the runner is busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_since: Option<Timestamp>,
    /// When its instance was found stopped with no JIT config (a stopped
    /// pool's runner, ADR-0022).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_at: Option<Timestamp>,
    /// When its parked instance was started for a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woken_at: Option<Timestamp>,
}

impl RunnerState {
    /// The stream this state belongs to, once requested.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.request
            .as_ref()
            .and_then(|r| StreamId::for_job(&r.job, r.attempt).ok())
    }

    /// The launched instance, if the latest intent produced one.
    pub fn instance(&self) -> Option<&Instance> {
        match &self.launch {
            Some(Launch {
                outcome: LaunchOutcome::Launched(instance),
                ..
            }) => Some(instance),
            _ => None,
        }
    }

    /// Whether an instance may be alive: a launch intent that was not rejected, and
    /// no `Terminated` yet.
    pub fn instance_may_be_alive(&self) -> bool {
        self.terminated_at.is_none()
            && matches!(
                &self.launch,
                Some(Launch {
                    outcome: LaunchOutcome::Pending | LaunchOutcome::Launched(_),
                    ..
                })
            )
    }

    /// Whether the runner still wants an instance: requested, not closed, not
    /// failed, its job not completed and no termination asked for.
    pub fn wants_instance(&self) -> bool {
        self.request.is_some()
            && !is_terminal(self)
            && self.failure.is_none()
            && self.job_completed_at.is_none()
            && self.termination_requested.is_none()
    }

    /// The name the runner registers with GitHub (scoped to its deployment).
    pub fn runner_name_to_register(&self) -> Option<String> {
        let request = self.request.as_ref()?;
        Some(
            self.stream_id()?
                .runner_name_in(request.deployment.as_deref()),
        )
    }

    /// Stray instances not yet confirmed gone.
    pub fn live_strays(&self) -> impl Iterator<Item = &Stray> {
        self.strays.iter().filter(|s| s.gone.is_none())
    }

    /// The consistency window recorded in the runner's `Requested` (the default
    /// before it is requested).
    pub fn consistency_window_ms(&self) -> u64 {
        self.request
            .as_ref()
            .map_or(crate::event::DEFAULT_CONSISTENCY_WINDOW_MS, |r| {
                r.deadlines.consistency_window_ms
            })
    }

    /// The token of the pending launch intent, if one is unresolved.
    pub fn pending_launch(&self) -> Option<&ClientToken> {
        match &self.launch {
            Some(Launch {
                client_token,
                outcome: LaunchOutcome::Pending,
                ..
            }) => Some(client_token),
            _ => None,
        }
    }

    /// Whether the runner has taken a job: one started or completed on it, or
    /// GitHub refused to deregister it as busy. Such a runner is not idle.
    pub fn took_job(&self) -> bool {
        self.job_started_at.is_some()
            || self.job_completed_at.is_some()
            || self.busy_since.is_some()
    }

    /// The job the runner took, when known: the one GitHub named, else (an
    /// older log, a start recorded without a job) the runner's own.
    pub fn job_taken(&self) -> Option<&JobRef> {
        if self.job_started_at.is_none() && self.job_completed_at.is_none() {
            return None;
        }
        self.assigned_job
            .as_ref()
            .or(self.request.as_ref().map(|r| &r.job))
    }

    /// The job the runner stands for: the one it was launched for, or the one
    /// moved to it; none for a warm runner (ADR-0022), which stands for no job.
    pub fn demand_job(&self) -> Option<&JobRef> {
        self.demand_moved_to.as_ref().or(self
            .request
            .as_ref()
            .map(|r| &r.job)
            .filter(|job| !job.is_warmth()))
    }

    /// Whether it was requested for no job, to be warm capacity (ADR-0022).
    pub fn is_warm(&self) -> bool {
        self.request.as_ref().is_some_and(|r| r.job.is_warmth())
    }

    /// Whether the runner stands for a job that still waits: open, its demand
    /// neither ended (cancelled, taken) nor met (it took a job — started,
    /// completed, or busy on GitHub: one runner, one job).
    pub fn demand_queued(&self) -> bool {
        self.demand_job().is_some()
            && !is_terminal(self)
            && self.demand_ended.is_none()
            && !self.took_job()
    }

    /// Whether the runner is capacity that no job has taken yet: open, wanted,
    /// and neither started, completed nor busy (waiting for capacity,
    /// launching, booting or ready).
    pub fn is_untaken_capacity(&self) -> bool {
        self.wants_instance() && !self.took_job() && !self.is_parking()
    }

    /// Whether the runner is a stopped pool's: parked until a job wants it.
    pub fn parks(&self) -> bool {
        self.request.as_ref().is_some_and(|r| r.spec.park)
    }

    /// Whether the runner is a stopped pool's not yet woken (launching,
    /// booting to be stopped, or parked): kept for a job, but no job can run
    /// on it until it is started.
    pub fn is_parking(&self) -> bool {
        self.parks() && self.woken_at.is_none() && self.wants_instance()
    }

    /// The runner's status.
    pub fn status(&self) -> RunnerStatus {
        if self.request.is_none() {
            return RunnerStatus::Unrequested;
        }
        if is_terminal(self) {
            return if self.job_completed_at.is_some() {
                RunnerStatus::Completed
            } else {
                RunnerStatus::Failed
            };
        }
        if self.failure.is_some() {
            return RunnerStatus::Terminating;
        }
        if self.job_completed_at.is_some() {
            return RunnerStatus::Draining;
        }
        if self.termination_requested.is_some() {
            return RunnerStatus::Terminating;
        }
        if self.job_started_at.is_some() || self.busy_since.is_some() {
            return RunnerStatus::Running;
        }
        if self.runner_name.is_some() {
            return RunnerStatus::Ready;
        }
        match self.launch.as_ref().map(|l| &l.outcome) {
            Some(LaunchOutcome::Pending) => RunnerStatus::Launching,
            Some(LaunchOutcome::Launched(_)) => RunnerStatus::Booting,
            None | Some(LaunchOutcome::Rejected { .. }) => RunnerStatus::Requested,
        }
    }
}

/// Whether the runner is closed: requested, and either its instance is confirmed
/// gone, or it is failed/completed with no instance that may be alive.
pub fn is_terminal(state: &RunnerState) -> bool {
    state.request.is_some()
        && (state.terminated_at.is_some()
            || ((state.failure.is_some() || state.job_completed_at.is_some())
                && !state.instance_may_be_alive()))
}

/// Folds one event into the state. Total: an event the decider would never have
/// produced is still folded deterministically, never a panic.
pub fn evolve(mut state: RunnerState, event: &RunnerEvent) -> RunnerState {
    state.version += 1;
    match event {
        RunnerEvent::Requested {
            at,
            job,
            attempt,
            labels,
            spec,
            deadlines,
            installation,
            deployment,
        } => {
            if state.request.is_none() {
                state.request = Some(RunnerRequest {
                    at: *at,
                    job: job.clone(),
                    attempt: *attempt,
                    labels: labels.clone(),
                    spec: spec.clone(),
                    deadlines: *deadlines,
                    installation: *installation,
                    deployment: deployment.clone(),
                });
            }
        }
        RunnerEvent::LaunchIntended {
            at,
            client_token,
            market,
        } => {
            state.launch_attempts += 1;
            state.first_intent_at.get_or_insert(*at);
            state.launch = Some(Launch {
                client_token: client_token.clone(),
                market: *market,
                intended_at: *at,
                outcome: LaunchOutcome::Pending,
            });
        }
        RunnerEvent::LaunchRejected { code, class, .. } => {
            if let Some(launch) = state.launch.as_mut() {
                launch.outcome = LaunchOutcome::Rejected {
                    code: code.clone(),
                    class: *class,
                };
            }
        }
        RunnerEvent::Launched {
            at,
            instance_id,
            instance_type,
            vcpus,
            market,
            ..
        } => {
            if let Some(launch) = state.launch.as_mut() {
                launch.outcome = LaunchOutcome::Launched(Instance {
                    id: instance_id.clone(),
                    instance_type: instance_type.clone(),
                    vcpus: *vcpus,
                    market: *market,
                    launched_at: *at,
                });
            }
        }
        RunnerEvent::TokenMinted {
            at,
            runner_name,
            runner_id,
        } => {
            state.runner_name = Some(runner_name.clone());
            state.runner_id = *runner_id;
            state.ready_at.get_or_insert(*at);
        }
        RunnerEvent::JobStarted { at, job, .. } => {
            state.job_started_at.get_or_insert(*at);
            if state.assigned_job.is_none() {
                state.assigned_job.clone_from(job);
            }
        }
        RunnerEvent::JobCompleted {
            at,
            conclusion,
            job,
            ..
        } => {
            state.job_completed_at.get_or_insert(*at);
            state.conclusion.clone_from(conclusion);
            if state.assigned_job.is_none() {
                state.assigned_job.clone_from(job);
            }
        }
        RunnerEvent::DemandMoved { job, .. } => {
            state.demand_moved_to = Some(job.clone());
        }
        RunnerEvent::DemandEnded { at, ending } => {
            state.demand_ended.get_or_insert((*at, ending.clone()));
        }
        RunnerEvent::DeregistrationRefused { at, .. } => {
            state.busy_since.get_or_insert(*at);
        }
        RunnerEvent::Parked { at, .. } => {
            state.parked_at.get_or_insert(*at);
        }
        RunnerEvent::Woken { at, for_job, .. } => {
            if state.woken_at.is_none() {
                state.woken_at = Some(*at);
                if for_job.is_some() {
                    state.demand_moved_to.clone_from(for_job);
                }
            }
        }
        RunnerEvent::Failed { at, stage, reason } => {
            state.failure.get_or_insert_with(|| Failure {
                at: *at,
                stage: *stage,
                reason: reason.clone(),
            });
        }
        RunnerEvent::TerminationRequested { at, reason, .. } => {
            state.termination_requested.get_or_insert((*at, *reason));
        }
        RunnerEvent::StrayLaunched { instance_id, .. } => {
            if !state.strays.iter().any(|s| s.id == *instance_id) {
                state.strays.extend(Stray::launched(event));
            }
        }
        RunnerEvent::SpotInterruptionWarned {
            at, job_started, ..
        } => {
            state.spot_warned.get_or_insert((*at, *job_started));
        }
        RunnerEvent::StrayTerminated {
            at,
            instance_id,
            evidence,
        } => {
            if let Some(stray) = state.strays.iter_mut().find(|s| s.id == *instance_id) {
                stray.gone.get_or_insert((*at, *evidence));
            }
        }
        RunnerEvent::Terminated { at, evidence, .. } => {
            if state.terminated_at.is_none() {
                state.terminated_at = Some(*at);
                state.terminated_by = Some(*evidence);
            }
        }
    }
    state
}

/// Folds a whole history from the initial state.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a RunnerEvent>) -> RunnerState {
    events.into_iter().fold(RunnerState::default(), evolve)
}
