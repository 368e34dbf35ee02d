//! What can be asked of a runner, and the compensation message the bus carries.

use serde::{Deserialize, Serialize};

use crate::event::{
    Deadlines, DemandEnding, FailureStage, InstanceSpec, LaunchErrorClass, Market,
    TerminationEvidence, TerminationReason,
};
use crate::ids::{ClientToken, InstallationId, InstanceId, JobRef, StreamId, Timestamp};

/// A request to change a runner. [`crate::decide`] turns it into events or refuses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command")]
#[allow(
    clippy::large_enum_variant,
    reason = "one Request per runner: boxing it buys nothing measurable"
)]
pub enum Command {
    /// Open the stream for a queued job (a repeat is a no-op).
    Request {
        /// The job.
        job: JobRef,
        /// The runner attempt (from 1).
        attempt: u32,
        /// Its labels.
        labels: Vec<String>,
        /// The resolved instance spec.
        spec: InstanceSpec,
        /// The runner's deadlines.
        deadlines: Deadlines,
        /// The App installation the job came through.
        installation: Option<InstallationId>,
        /// The deployment that serves it.
        deployment: Option<String>,
    },
    /// Record the intent to launch, before calling RunInstances.
    IntendLaunch {
        /// Spot or on-demand.
        market: Market,
    },
    /// RunInstances returned (or a client token found) an instance. For the
    /// pending intent it is the runner's instance (`Launched`); when the stream
    /// cannot take it (the intent was settled, another instance is recorded, the
    /// stream is closed) it is recorded as a stray (`StrayLaunched`), owed a
    /// termination: no instance RunInstances returned is ever dropped.
    RecordLaunch {
        /// The intent's token.
        client_token: ClientToken,
        /// The instance.
        instance_id: InstanceId,
        /// Its type.
        instance_type: String,
        /// Its vCPUs.
        vcpus: u32,
    },
    /// RunInstances refused the pending intent.
    RejectLaunch {
        /// The intent's token.
        client_token: ClientToken,
        /// Provider error code.
        code: String,
        /// Its class.
        class: LaunchErrorClass,
    },
    /// The JIT config was handed to the instance.
    RecordToken {
        /// The runner's registered name.
        runner_name: String,
        /// GitHub's id of the runner (`generate-jitconfig`'s `runner.id`).
        runner_id: Option<u64>,
    },
    /// `workflow_job` `in_progress` naming this runner: GitHub gave it `job`.
    StartJob {
        /// The job GitHub assigned (None: the runner's own, as older callers say).
        job: Option<JobRef>,
    },
    /// `workflow_job` `completed` for the job this runner ran. Refused for a
    /// runner that started another job.
    CompleteJob {
        /// `workflow_job.conclusion`.
        conclusion: Option<String>,
        /// The job (None: the runner's own).
        job: Option<JobRef>,
    },
    /// GitHub, asked for the job, says this runner has it in progress (its
    /// `in_progress` webhook may have been lost).
    ObserveJobStarted {
        /// The job GitHub assigned.
        job: Option<JobRef>,
    },
    /// GitHub, asked for the job, says it completed on this runner (its
    /// `completed` webhook may have been lost).
    ObserveJobCompleted {
        /// Its conclusion.
        conclusion: Option<String>,
        /// The job.
        job: Option<JobRef>,
    },
    /// The job the runner was launched for no longer wants a runner (cancelled
    /// while queued, or taken by another runner).
    EndDemand {
        /// How.
        ending: DemandEnding,
    },
    /// The runner now stands for `job` (its own was taken by a runner that
    /// stood for `job`).
    MoveDemand {
        /// The job.
        job: JobRef,
    },
    /// GitHub refused to delete the runner's registration: it is busy.
    RefuseDeregistration {
        /// GitHub's answer.
        reason: String,
    },
    /// EC2 warned that the runner's spot instance will be reclaimed: recorded
    /// once; before the job started the runner fails (`spot-interrupted`).
    WarnSpotInterruption {
        /// The instance named by the warning.
        instance_id: InstanceId,
    },
    /// Record that the runner's instance is stopped (EC2 says so), with no
    /// JIT config: a stopped pool's runner parked for a job (ADR-0022).
    Park {
        /// The stopped instance.
        instance_id: InstanceId,
    },
    /// Record that EC2 accepted the start of the parked instance.
    Wake {
        /// The started instance.
        instance_id: InstanceId,
        /// The queued job it was woken for.
        for_job: Option<JobRef>,
    },
    /// Record a failure.
    Fail {
        /// At which step.
        stage: FailureStage,
        /// Why.
        reason: String,
    },
    /// Issue the termination of the runner's instance.
    Terminate {
        /// Why.
        reason: TerminationReason,
    },
    /// The instance is gone (or, with `None`, never existed), on `evidence`. Naming
    /// a stray instance confirms that stray gone (`StrayTerminated`).
    ConfirmTerminated {
        /// The instance confirmed gone.
        instance_id: Option<InstanceId>,
        /// What proves it (see [`crate::launch::evidence_holds`]).
        evidence: TerminationEvidence,
    },
}

impl Command {
    /// The command's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Request { .. } => "Request",
            Command::IntendLaunch { .. } => "IntendLaunch",
            Command::RecordLaunch { .. } => "RecordLaunch",
            Command::RejectLaunch { .. } => "RejectLaunch",
            Command::RecordToken { .. } => "RecordToken",
            Command::StartJob { .. } => "StartJob",
            Command::CompleteJob { .. } => "CompleteJob",
            Command::ObserveJobStarted { .. } => "ObserveJobStarted",
            Command::ObserveJobCompleted { .. } => "ObserveJobCompleted",
            Command::EndDemand { .. } => "EndDemand",
            Command::MoveDemand { .. } => "MoveDemand",
            Command::RefuseDeregistration { .. } => "RefuseDeregistration",
            Command::WarnSpotInterruption { .. } => "WarnSpotInterruption",
            Command::Park { .. } => "Park",
            Command::Wake { .. } => "Wake",
            Command::Fail { .. } => "Fail",
            Command::Terminate { .. } => "Terminate",
            Command::ConfirmTerminated { .. } => "ConfirmTerminated",
        }
    }
}

/// The compensation command put on the bus for a runner owed a termination.
///
/// `instance_id` is `None` while the launch intent is unresolved: the handler then
/// looks the instance up by `client_token`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateRunner {
    /// The runner.
    pub stream: StreamId,
    /// Its instance, when known.
    pub instance_id: Option<InstanceId>,
    /// The token of the launch that may have started it.
    pub client_token: Option<ClientToken>,
    /// Why.
    pub reason: TerminationReason,
    /// Since when the termination is owed.
    pub owed_since: Timestamp,
}
