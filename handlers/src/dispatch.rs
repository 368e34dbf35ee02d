//! Running one command against a runner stream in the log: load, decide, append,
//! and on a conflict reload and decide again.

use jitr_domain::{Command, DomainError, RunnerEvent, RunnerState, StreamId, Timestamp, execute};
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
}

/// Why a command was not applied.
#[derive(Debug, Error)]
pub enum DispatchError {
    /// The decider refused the command.
    #[error("refused: {0}")]
    Refused(#[from] DomainError),
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
        let (next, events) = execute(&state, command.clone(), now)?;
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
