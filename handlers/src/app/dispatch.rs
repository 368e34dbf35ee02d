//! Running one command against a runner stream in the log: load, decide, append,
//! and on a conflict reload and decide again.

use jitr_domain::{
    Command, DomainError, RunnerEvent, RunnerState, StreamId, Timestamp, execute, is_benign_refusal,
};
use jitr_infra::{AppendOutcome, CommandId, EventStore, StoreError};
use thiserror::Error;

/// How many times a command is re-decided after losing a race on the stream.
pub const MAX_CONFLICT_RETRIES: u32 = 8;

/// What a dispatched command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dispatched {
    /// New events were appended; the runner is now in `state`.
    Appended {
        /// The state after the events.
        state: RunnerState,
        /// The events written.
        events: Vec<RunnerEvent>,
    },
    /// The command's effect was already recorded; nothing was written.
    Unchanged {
        /// The current state.
        state: RunnerState,
    },
    /// The command id was seen before; nothing was written.
    Duplicate,
    /// The decider refused the command only because the runner moved on before it
    /// arrived ([`jitr_domain::is_benign_refusal`]); nothing was written. Logged and
    /// counted like every refusal.
    MovedOn {
        /// The current state.
        state: RunnerState,
        /// The refusal.
        refusal: DomainError,
    },
}

/// Why a command was not applied.
#[derive(Debug, Error)]
pub enum DispatchError {
    /// The decider refused the command for a reason that is not benign: a bug or
    /// a broken input, never to be ignored.
    #[error("{command} refused on {stream}: {error}")]
    Refused {
        /// The command's name.
        command: &'static str,
        /// The stream.
        stream: StreamId,
        /// The refusal.
        #[source]
        error: DomainError,
    },
    /// The log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other writers kept winning the race on this stream.
    #[error("gave up on {stream} after {attempts} conflicting writes")]
    Contended {
        /// The stream.
        stream: StreamId,
        /// Attempts made.
        attempts: u32,
    },
}

/// Decides `command` against the stream's current head and appends the result.
pub async fn dispatch<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    command: Command,
    now: Timestamp,
    command_id: &CommandId,
) -> Result<Dispatched, DispatchError> {
    for _ in 0..MAX_CONFLICT_RETRIES {
        let (version, state) = match store.head(stream).await? {
            Some(head) => (head.version, head.state),
            None => (0, RunnerState::default()),
        };
        let (next, events) = match execute(&state, command.clone(), now) {
            Ok(decided) => decided,
            Err(refusal) => return refused(stream, &command, state, refusal, now),
        };
        if events.is_empty() {
            return Ok(Dispatched::Unchanged { state });
        }
        match store.append(stream, version, &events, command_id).await {
            Ok(AppendOutcome::Appended { .. }) => {
                return Ok(Dispatched::Appended {
                    state: next,
                    events,
                });
            }
            Ok(AppendOutcome::Duplicate { .. }) => return Ok(Dispatched::Duplicate),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DispatchError::Contended {
        stream: stream.clone(),
        attempts: MAX_CONFLICT_RETRIES,
    })
}

/// Logs and counts a refusal; a benign one is [`Dispatched::MovedOn`], any other
/// an error.
fn refused(
    stream: &StreamId,
    command: &Command,
    state: RunnerState,
    refusal: DomainError,
    now: Timestamp,
) -> Result<Dispatched, DispatchError> {
    let benign = is_benign_refusal(command, &refusal);
    crate::app::metrics::refusal(now, command.name(), refusal.code(), benign);
    if benign {
        tracing::info!(%stream, command = command.name(), refusal = refusal.code(), reason = %refusal, "runner moved on; command moot");
        return Ok(Dispatched::MovedOn { state, refusal });
    }
    tracing::error!(%stream, command = command.name(), refusal = refusal.code(), reason = %refusal, "command refused");
    Err(DispatchError::Refused {
        command: command.name(),
        stream: stream.clone(),
        error: refusal,
    })
}

/// The runner's current state (the initial state for a stream not yet written).
pub async fn current_state<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
) -> Result<RunnerState, StoreError> {
    Ok(store
        .head(stream)
        .await?
        .map(|h| h.state)
        .unwrap_or_default())
}
