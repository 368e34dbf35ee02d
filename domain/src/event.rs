//! The runner events: the only facts jitr keeps.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientToken, InstallationId, InstanceId, JobRef, Timestamp};

/// Where an instance is bought.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    /// Spot capacity (tried first).
    Spot,
    /// On-demand capacity (the fallback).
    OnDemand,
}

impl Market {
    /// Lower-case name, as in logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        }
    }
}

/// Why RunInstances refused a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LaunchErrorClass {
    /// A vCPU or instance-count quota (`VcpuLimitExceeded`, `MaxSpotInstanceCountExceeded`).
    Quota,
    /// No capacity of that kind (`InsufficientInstanceCapacity`).
    Capacity,
    /// The API throttled the call (`RequestLimitExceeded`).
    Throttled,
    /// The request itself is wrong (bad AMI, subnet, instance type).
    InvalidRequest,
    /// Anything else.
    Unknown,
}

/// The step at which a runner failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureStage {
    /// No instance could be launched.
    Launch,
    /// The JIT runner config could not be minted or handed over.
    Token,
    /// The instance did not pick up its job within the boot timeout.
    Boot,
    /// The request was never launched within the boot timeout.
    Stale,
    /// The runner outlived its maximum age.
    MaxAge,
    /// The spot instance was reclaimed.
    SpotInterrupted,
    /// The instance was found alive with no stream wanting it.
    Orphaned,
    /// Surplus capacity: no queued job of its pool wanted the runner (the job it
    /// was launched for was cancelled, or another runner took it); retired after
    /// GitHub deleted its registration, or before it had one.
    Surplus,
}

impl FailureStage {
    /// Whether the stage fails a runner for being idle (never started, late
    /// to take a job, surplus): it does not apply to a runner that took a job.
    pub fn is_idle_runners(self) -> bool {
        matches!(
            self,
            FailureStage::Boot | FailureStage::Stale | FailureStage::Surplus
        )
    }

    /// Kebab-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureStage::Launch => "launch",
            FailureStage::Token => "token",
            FailureStage::Boot => "boot",
            FailureStage::Stale => "stale",
            FailureStage::MaxAge => "max-age",
            FailureStage::SpotInterrupted => "spot-interrupted",
            FailureStage::Orphaned => "orphaned",
            FailureStage::Surplus => "surplus",
        }
    }
}

/// Why a termination is owed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum TerminationReason {
    /// The runner failed while its instance may be alive.
    Failure {
        /// The failed step.
        stage: FailureStage,
    },
    /// The job completed and the drain grace is over.
    DrainGraceOver,
    /// An operator (or the reaper) asked for it.
    Operator,
}

/// How jitr learnt that a job started or completed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum JobSource {
    /// A `workflow_job` webhook (and every record of older logs).
    #[default]
    Webhook,
    /// GitHub's job, asked for because a webhook may have been lost.
    Poll,
}

impl JobSource {
    /// Whether it is [`JobSource::Webhook`].
    pub fn is_webhook(&self) -> bool {
        *self == JobSource::Webhook
    }

    /// Kebab-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            JobSource::Webhook => "webhook",
            JobSource::Poll => "poll",
        }
    }
}

/// How the job a runner was launched for stopped wanting one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum DemandEnding {
    /// Cancelled while queued (`completed` without a runner name).
    Cancelled,
    /// GitHub gave it to another runner (`in_progress` naming it), of jitr's
    /// or not.
    TakenBy {
        /// That runner's name.
        runner_name: String,
    },
}

impl DemandEnding {
    /// Kebab-case name, as serialised.
    pub fn as_str(&self) -> &'static str {
        match self {
            DemandEnding::Cancelled => "cancelled",
            DemandEnding::TakenBy { .. } => "taken-by-another-runner",
        }
    }
}

/// What a runner's instance is to be: resolved from the job's labels at request time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// e.g. `c5.xlarge`.
    pub instance_type: String,
    /// vCPUs of that type (what the quota counts).
    pub vcpus: u32,
    /// The machine image (AMI id, or a simulator image name).
    pub image: String,
    /// The runner pool it came from (none: requested before pools existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Types whose spot market this runner does not try: an earlier attempt
    /// of the same job was reclaimed there (EC2's interruption warning).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid_spot: Vec<String>,
    /// A stopped pool's runner (ADR-0022): its instance boots once and is
    /// stopped (`Parked`) with no JIT config; started (`Woken`) when a job
    /// wants it, and only then minted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub park: bool,
}

/// The runner's deadlines, fixed when it is requested so that a replay needs no
/// configuration to know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    /// From the first launch intent (or the request, while nothing was launched) to
    /// the job starting.
    pub boot_timeout_ms: u64,
    /// From the request to the instance being gone, whatever happens.
    pub max_age_ms: u64,
    /// After the job completed, how long the instance may take to shut itself down.
    pub drain_grace_ms: u64,
    /// How long after a launch EC2 may still answer NotFound for an instance that
    /// exists (EC2's API is eventually consistent). Logs written before it was
    /// recorded read the default.
    #[serde(default = "default_consistency_window_ms")]
    pub consistency_window_ms: u64,
    /// How long a runner may wait for capacity, from its request, before it is
    /// given up (ADR-0014). With it, the boot and max-age deadlines count from
    /// the current launch, not from the first. Logs written before the capacity
    /// queue lack it: their runners keep the old deadlines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
}

/// How long a job may wait for capacity by default: 24 hours, as long as GitHub
/// keeps a job queued.
pub const DEFAULT_MAX_WAIT_MS: u64 = 24 * 3_600_000;

/// The default consistency window: 2 minutes.
pub const DEFAULT_CONSISTENCY_WINDOW_MS: u64 = 120_000;

fn default_consistency_window_ms() -> u64 {
    DEFAULT_CONSISTENCY_WINDOW_MS
}

impl Default for Deadlines {
    /// 10 minutes to boot, 6 hours of age, 2 minutes of drain grace, a 2-minute
    /// consistency window, 24 hours of waiting for capacity.
    fn default() -> Self {
        Deadlines {
            boot_timeout_ms: 10 * 60_000,
            max_age_ms: 6 * 3_600_000,
            drain_grace_ms: 2 * 60_000,
            consistency_window_ms: DEFAULT_CONSISTENCY_WINDOW_MS,
            max_wait_ms: Some(DEFAULT_MAX_WAIT_MS),
        }
    }
}

/// The evidence on which a `Terminated` was written: what the cloud said of that
/// instance, or of that launch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum TerminationEvidence {
    /// Described by its id, EC2 reported the instance `shutting-down` or
    /// `terminated`.
    ReportedTerminated,
    /// EC2 answered NotFound for the instance id after the consistency window.
    NotFoundAfterWindow,
    /// The launch intent's client token found no instance after the consistency
    /// window: nothing was launched.
    TokenFoundNothing,
    /// No launch was pending: every launch intent was refused by RunInstances.
    NothingLaunched,
    /// EC2's own "EC2 Instance State-change Notification" said the instance
    /// was `shutting-down` or `terminated` (delivered by EventBridge).
    StateChange,
    /// Written before evidence was recorded (older logs).
    #[default]
    Unrecorded,
}

impl TerminationEvidence {
    /// Every kind, in this order in reports.
    pub const ALL: [TerminationEvidence; 6] = [
        TerminationEvidence::ReportedTerminated,
        TerminationEvidence::NotFoundAfterWindow,
        TerminationEvidence::TokenFoundNothing,
        TerminationEvidence::NothingLaunched,
        TerminationEvidence::StateChange,
        TerminationEvidence::Unrecorded,
    ];

    /// Kebab-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationEvidence::ReportedTerminated => "reported-terminated",
            TerminationEvidence::NotFoundAfterWindow => "not-found-after-window",
            TerminationEvidence::TokenFoundNothing => "token-found-nothing",
            TerminationEvidence::NothingLaunched => "nothing-launched",
            TerminationEvidence::StateChange => "state-change",
            TerminationEvidence::Unrecorded => "unrecorded",
        }
    }
}

/// One fact in a runner's life. Every event carries the moment it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
#[allow(
    clippy::large_enum_variant,
    reason = "one Requested per runner: boxing it buys nothing measurable"
)]
pub enum RunnerEvent {
    /// A queued job wants a runner.
    Requested {
        /// When.
        at: Timestamp,
        /// The job.
        job: JobRef,
        /// The runner attempt for that job (from 1; the rebalancer opens new ones).
        attempt: u32,
        /// The job's `runs-on` labels.
        labels: Vec<String>,
        /// The instance to launch.
        spec: InstanceSpec,
        /// The runner's deadlines.
        deadlines: Deadlines,
        /// The App installation the job came through (absent in logs written
        /// before it was recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        installation: Option<InstallationId>,
        /// The deployment that serves it, which scopes its runner name and launch
        /// tokens (absent: no named deployment, or an older log).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment: Option<String>,
    },
    /// Written *before* RunInstances: the instance may exist from here on.
    LaunchIntended {
        /// When.
        at: Timestamp,
        /// The RunInstances idempotency token.
        client_token: ClientToken,
        /// Spot or on-demand.
        market: Market,
    },
    /// RunInstances answered with an error: no instance exists for that intent.
    LaunchRejected {
        /// When.
        at: Timestamp,
        /// The intent's token.
        client_token: ClientToken,
        /// The provider's error code (e.g. `VcpuLimitExceeded`).
        code: String,
        /// Its class.
        class: LaunchErrorClass,
    },
    /// RunInstances returned an instance.
    Launched {
        /// When.
        at: Timestamp,
        /// The intent's token.
        client_token: ClientToken,
        /// The instance.
        instance_id: InstanceId,
        /// Its type.
        instance_type: String,
        /// Its vCPUs.
        vcpus: u32,
        /// Its market.
        market: Market,
    },
    /// A JIT runner config was minted and handed to the instance (the config itself
    /// is a secret and never part of the log).
    TokenMinted {
        /// When.
        at: Timestamp,
        /// The runner's registered name.
        runner_name: String,
        /// GitHub's id of the registration (`generate-jitconfig`'s
        /// `runner.id`): it is looked up and removed by it. Absent in logs
        /// written before issue 25.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runner_id: Option<u64>,
    },
    /// GitHub gave this runner a job and it started (`workflow_job`
    /// `in_progress` naming the runner).
    JobStarted {
        /// When.
        at: Timestamp,
        /// Who said so.
        #[serde(default, skip_serializing_if = "JobSource::is_webhook")]
        source: JobSource,
        /// The job GitHub assigned, which need not be the one the runner was
        /// launched for (absent in older logs: that one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobRef>,
    },
    /// The runner's job completed (`workflow_job` `completed`).
    JobCompleted {
        /// When.
        at: Timestamp,
        /// `workflow_job.conclusion`, when given.
        conclusion: Option<String>,
        /// Who said so.
        #[serde(default, skip_serializing_if = "JobSource::is_webhook")]
        source: JobSource,
        /// The job that completed (absent in older logs: the runner's own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobRef>,
    },
    /// The job this runner stands for (the one it was launched for, or one
    /// moved to it) no longer wants a runner: it was cancelled while queued, or
    /// a runner standing for no job took it. The runner itself is unchanged: it
    /// is capacity, and may take another queued job of its pool.
    DemandEnded {
        /// When.
        at: Timestamp,
        /// How.
        ending: DemandEnding,
    },
    /// GitHub gave the job this runner stood for to a runner that stood for
    /// `job`: the two swapped, and this runner now stands for `job` (still
    /// queued). Jobs of a pool are interchangeable for its runners.
    DemandMoved {
        /// When.
        at: Timestamp,
        /// The job this runner now stands for.
        job: JobRef,
    },
    /// GitHub refused to delete the runner's registration because the runner
    /// is busy: evidence that it took a job, whichever. It is kept.
    DeregistrationRefused {
        /// When.
        at: Timestamp,
        /// GitHub's answer.
        reason: String,
    },
    /// The runner's instance is stopped, as EC2 says (evidence), with no JIT
    /// config: a stopped pool keeps it for a job (ADR-0022). Its vCPUs count
    /// against no quota; its volume is kept.
    Parked {
        /// When.
        at: Timestamp,
        /// The stopped instance.
        instance_id: InstanceId,
    },
    /// EC2 accepted the start of the parked instance: it boots again, and its
    /// JIT config is minted next.
    Woken {
        /// When.
        at: Timestamp,
        /// The started instance.
        instance_id: InstanceId,
        /// The queued job it was woken for: the runner stands for it from now
        /// on (the job's own runner stands aside, `DemandEnded`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_job: Option<JobRef>,
    },
    /// The runner failed.
    Failed {
        /// When.
        at: Timestamp,
        /// At which step.
        stage: FailureStage,
        /// Human-readable reason.
        reason: String,
    },
    /// A termination was issued (compensation or reaper).
    TerminationRequested {
        /// When.
        at: Timestamp,
        /// Why.
        reason: TerminationReason,
        /// The instance, when one is known.
        instance_id: Option<InstanceId>,
    },
    /// RunInstances returned an instance that the stream could not take as its
    /// instance: its intent was already settled (rejected as never launched, or the
    /// stream closed), or the stream has another instance. It is terminated at
    /// once; the log keeps it so that its termination is owed and audited.
    StrayLaunched {
        /// When.
        at: Timestamp,
        /// The token of the launch that started it.
        client_token: ClientToken,
        /// The instance.
        instance_id: InstanceId,
        /// Its type.
        instance_type: String,
        /// Its vCPUs.
        vcpus: u32,
    },
    /// EC2 warned that the runner's spot instance will be reclaimed ("EC2 Spot
    /// Instance Interruption Warning", two minutes ahead). Before the job
    /// started a `Failed` (`spot-interrupted`) follows and the job gets a new
    /// attempt; after, the job is cut and this records it.
    SpotInterruptionWarned {
        /// When the warning was handled.
        at: Timestamp,
        /// The instance to be reclaimed.
        instance_id: InstanceId,
        /// Whether the job had started on it.
        job_started: bool,
    },
    /// A stray instance is confirmed gone.
    StrayTerminated {
        /// When.
        at: Timestamp,
        /// The stray instance.
        instance_id: InstanceId,
        /// What proved it.
        evidence: TerminationEvidence,
    },
    /// The instance is confirmed gone, or (`instance_id: None`) confirmed never to
    /// have existed.
    Terminated {
        /// When.
        at: Timestamp,
        /// The instance that is gone.
        instance_id: Option<InstanceId>,
        /// What proved it.
        #[serde(default)]
        evidence: TerminationEvidence,
    },
}

impl RunnerEvent {
    /// When the event happened.
    pub fn at(&self) -> Timestamp {
        match self {
            RunnerEvent::Requested { at, .. }
            | RunnerEvent::LaunchIntended { at, .. }
            | RunnerEvent::LaunchRejected { at, .. }
            | RunnerEvent::Launched { at, .. }
            | RunnerEvent::TokenMinted { at, .. }
            | RunnerEvent::JobStarted { at, .. }
            | RunnerEvent::JobCompleted { at, .. }
            | RunnerEvent::DemandEnded { at, .. }
            | RunnerEvent::DemandMoved { at, .. }
            | RunnerEvent::DeregistrationRefused { at, .. }
            | RunnerEvent::Parked { at, .. }
            | RunnerEvent::Woken { at, .. }
            | RunnerEvent::Failed { at, .. }
            | RunnerEvent::TerminationRequested { at, .. }
            | RunnerEvent::StrayLaunched { at, .. }
            | RunnerEvent::SpotInterruptionWarned { at, .. }
            | RunnerEvent::StrayTerminated { at, .. }
            | RunnerEvent::Terminated { at, .. } => *at,
        }
    }

    /// The event's type name, as serialised.
    pub fn kind(&self) -> &'static str {
        match self {
            RunnerEvent::Requested { .. } => "Requested",
            RunnerEvent::LaunchIntended { .. } => "LaunchIntended",
            RunnerEvent::LaunchRejected { .. } => "LaunchRejected",
            RunnerEvent::Launched { .. } => "Launched",
            RunnerEvent::TokenMinted { .. } => "TokenMinted",
            RunnerEvent::JobStarted { .. } => "JobStarted",
            RunnerEvent::JobCompleted { .. } => "JobCompleted",
            RunnerEvent::DemandEnded { .. } => "DemandEnded",
            RunnerEvent::DemandMoved { .. } => "DemandMoved",
            RunnerEvent::DeregistrationRefused { .. } => "DeregistrationRefused",
            RunnerEvent::Parked { .. } => "Parked",
            RunnerEvent::Woken { .. } => "Woken",
            RunnerEvent::Failed { .. } => "Failed",
            RunnerEvent::TerminationRequested { .. } => "TerminationRequested",
            RunnerEvent::StrayLaunched { .. } => "StrayLaunched",
            RunnerEvent::SpotInterruptionWarned { .. } => "SpotInterruptionWarned",
            RunnerEvent::StrayTerminated { .. } => "StrayTerminated",
            RunnerEvent::Terminated { .. } => "Terminated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs written before evidence and the consistency window were recorded
    /// still read: the evidence as `unrecorded`, the window as the default.
    #[test]
    fn events_of_older_logs_read_with_defaults() {
        let terminated: RunnerEvent =
            serde_json::from_str(r#"{"type":"Terminated","at":1,"instance_id":"i-1"}"#).unwrap();
        assert!(matches!(
            terminated,
            RunnerEvent::Terminated {
                evidence: TerminationEvidence::Unrecorded,
                ..
            }
        ));
        let deadlines: Deadlines =
            serde_json::from_str(r#"{"boot_timeout_ms":1,"max_age_ms":2,"drain_grace_ms":3}"#)
                .unwrap();
        assert_eq!(
            deadlines.consistency_window_ms,
            DEFAULT_CONSISTENCY_WINDOW_MS
        );
        let started: RunnerEvent = serde_json::from_str(r#"{"type":"JobStarted","at":1}"#).unwrap();
        assert_eq!(
            started,
            RunnerEvent::JobStarted {
                at: Timestamp(1),
                source: JobSource::Webhook,
                job: None,
            }
        );
    }

    /// A webhook's record is written as before; a poll's says so.
    #[test]
    fn a_jobs_source_is_written_only_when_it_is_a_poll() {
        let webhook = RunnerEvent::JobStarted {
            at: Timestamp(1),
            source: JobSource::Webhook,
            job: None,
        };
        assert_eq!(
            serde_json::to_string(&webhook).unwrap(),
            r#"{"type":"JobStarted","at":1}"#
        );
        let poll = RunnerEvent::JobStarted {
            at: Timestamp(1),
            source: JobSource::Poll,
            job: None,
        };
        assert_eq!(
            serde_json::to_string(&poll).unwrap(),
            r#"{"type":"JobStarted","at":1,"source":"poll"}"#
        );
    }
}
