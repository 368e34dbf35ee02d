//! Every refusal of the decider, typed.

use thiserror::Error;

use crate::event::TerminationEvidence;
use crate::ids::{ClientToken, InstanceId};
use crate::state::RunnerStatus;

/// Why the decider refused a command (or an id could not be parsed).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DomainError {
    /// Not of the form `{owner}/{repo}#{job_id}#{attempt}`.
    #[error("invalid stream id {0:?}: expected {{owner}}/{{repo}}#{{job_id}}#{{attempt}}")]
    InvalidStreamId(String),
    /// Only `Request` may open a stream.
    #[error("the runner was never requested; only Request may open a stream")]
    NotRequested,
    /// A `Request` for another job or attempt on an existing stream.
    #[error("the stream was requested for another job or attempt")]
    RequestMismatch,
    /// The stream is closed.
    #[error("the runner is {status}: a closed stream takes no command")]
    Terminal {
        /// Its terminal status.
        status: RunnerStatus,
    },
    /// The runner failed; only launch resolution and termination remain.
    #[error("the runner has failed; only launch resolution and termination are accepted")]
    AlreadyFailed,
    /// The job completed; only launch resolution and termination remain.
    #[error("the job has completed; only launch resolution and termination are accepted")]
    JobAlreadyCompleted,
    /// A termination was issued: no token may be handed to the instance.
    #[error("a termination was requested for this runner")]
    TerminationRequested,
    /// A previous launch intent is unresolved (it may have started an instance).
    #[error("launch {client_token} is unresolved; resolve it before another launch")]
    LaunchUnresolved {
        /// Its token.
        client_token: ClientToken,
    },
    /// The stream already has its one instance.
    #[error("the runner already has instance {instance_id}")]
    AlreadyLaunched {
        /// The instance.
        instance_id: InstanceId,
    },
    /// A launch outcome without a pending intent.
    #[error("no launch intent is pending")]
    NoLaunchIntended,
    /// A launch outcome for another intent.
    #[error("launch outcome for token {got}, but the pending intent is {expected}")]
    ClientTokenMismatch {
        /// The pending intent's token.
        expected: ClientToken,
        /// The token given.
        got: ClientToken,
    },
    /// The command needs a launched instance.
    #[error("the runner has no launched instance")]
    NotLaunched,
    /// The JIT config was already minted under another name.
    #[error("a JIT config was already minted for runner {runner_name}")]
    TokenAlreadyMinted {
        /// The existing runner name.
        runner_name: String,
    },
    /// Nothing can be alive, so there is nothing to terminate.
    #[error("no instance may be alive for this runner")]
    NoInstance,
    /// A termination confirmation for another instance.
    #[error("termination confirmed for {got:?}, but the runner's instance is {expected:?}")]
    InstanceMismatch {
        /// The runner's instance (None: none recorded).
        expected: Option<InstanceId>,
        /// The instance given.
        got: Option<InstanceId>,
    },
    /// The runner took another job than the one named.
    #[error("the runner runs job {taken}, not job {named}")]
    AnotherJob {
        /// The job it took.
        taken: u64,
        /// The job named.
        named: u64,
    },
    /// The runner took a job (or GitHub says it is busy): it is not idle, so
    /// an idle runner's deadline or retirement does not apply.
    #[error("the runner has taken a job: it is not idle")]
    JobTaken,
    /// The runner has no GitHub registration.
    #[error("the runner has no GitHub registration")]
    NotRegistered,
    /// Park or wake asked of a runner that cannot be parked or woken: not a
    /// stopped pool's, already registered, or not parked.
    #[error("the runner cannot be parked or woken: {0}")]
    NotParkable(&'static str),
    /// A termination confirmed on evidence that does not prove it.
    #[error("{evidence:?} is no evidence here: {why}")]
    NoEvidence {
        /// The evidence given.
        evidence: TerminationEvidence,
        /// Why it proves nothing.
        why: &'static str,
    },
}

impl DomainError {
    /// A stable name for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::InvalidStreamId(_) => "InvalidStreamId",
            DomainError::NotRequested => "NotRequested",
            DomainError::NotParkable(_) => "NotParkable",
            DomainError::RequestMismatch => "RequestMismatch",
            DomainError::Terminal { .. } => "Terminal",
            DomainError::AlreadyFailed => "AlreadyFailed",
            DomainError::JobAlreadyCompleted => "JobAlreadyCompleted",
            DomainError::TerminationRequested => "TerminationRequested",
            DomainError::LaunchUnresolved { .. } => "LaunchUnresolved",
            DomainError::AlreadyLaunched { .. } => "AlreadyLaunched",
            DomainError::NoLaunchIntended => "NoLaunchIntended",
            DomainError::ClientTokenMismatch { .. } => "ClientTokenMismatch",
            DomainError::NotLaunched => "NotLaunched",
            DomainError::TokenAlreadyMinted { .. } => "TokenAlreadyMinted",
            DomainError::NoInstance => "NoInstance",
            DomainError::InstanceMismatch { .. } => "InstanceMismatch",
            DomainError::NoEvidence { .. } => "NoEvidence",
            DomainError::AnotherJob { .. } => "AnotherJob",
            DomainError::JobTaken => "JobTaken",
            DomainError::NotRegistered => "NotRegistered",
        }
    }
}

/// Whether refusing `command` with `error` only means that the runner moved on
/// before the command arrived, so that the command's purpose is moot:
///
/// - the runner is closed, failed, or its job completed (any command but
///   `RecordLaunch`: an instance found for a closed runner is a leak to report);
/// - a termination was asked for before the JIT config was recorded;
/// - another delivery of the job intended or made the launch first (`IntendLaunch`);
/// - nothing may be alive to terminate (`Terminate`);
/// - an idle runner's failure, a refused deregistration or a moved demand for
///   a runner that has taken a job meanwhile (`Fail`, `RefuseDeregistration`,
///   `MoveDemand`);
/// - a `completed` for a job the runner did not run (`CompleteJob`).
///
/// Every other refusal is a bug or a broken input (another instance, another
/// token, another job on the stream) and must be reported, never ignored.
pub fn is_benign_refusal(command: &crate::Command, error: &DomainError) -> bool {
    use crate::Command;
    match error {
        DomainError::Terminal { .. }
        | DomainError::AlreadyFailed
        | DomainError::JobAlreadyCompleted => !matches!(command, Command::RecordLaunch { .. }),
        DomainError::TerminationRequested => matches!(command, Command::RecordToken { .. }),
        DomainError::LaunchUnresolved { .. } | DomainError::AlreadyLaunched { .. } => {
            matches!(command, Command::IntendLaunch { .. })
        }
        DomainError::NoInstance => matches!(command, Command::Terminate { .. }),
        DomainError::JobTaken => matches!(
            command,
            Command::Fail { .. }
                | Command::RefuseDeregistration { .. }
                | Command::MoveDemand { .. }
        ),
        DomainError::AnotherJob { .. } => matches!(
            command,
            Command::CompleteJob { .. } | Command::ObserveJobCompleted { .. }
        ),
        _ => false,
    }
}
