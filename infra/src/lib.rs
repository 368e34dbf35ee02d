//! Ports (traits) and adapters.
//!
//! - [`EventStore`] / [`CheckpointStore`]: the runner event log; [`SqliteEventStore`]
//!   is the embedded adapter (DynamoDB follows with the same conformance suite).
//! - [`CommandBus`]: compensation commands; [`InProcessBus`] in embedded mode.
#![deny(missing_docs, unsafe_code)]

mod bus;
mod event_store;
mod sqlite;

pub use bus::{BusError, CommandBus, InProcessBus};
pub use event_store::{
    AppendOutcome, BoxError, Checkpoint, CheckpointStore, CommandId, EVENT_SCHEMA, EventStore,
    RecordedEvent, StoreError, StreamHead,
};
pub use sqlite::SqliteEventStore;
