//! The command bus port: where compensation commands go (EventBridge in AWS), and
//! the envelope they travel in.

use async_trait::async_trait;
use jitr_domain::TerminateRunner;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The bus did not take a command.
#[derive(Debug, Error)]
pub enum BusError {
    /// Nobody consumes the bus any more.
    #[error("the command bus is closed: no consumer is running")]
    Closed,
    /// The backend failed.
    #[error("command bus unavailable: {0}")]
    Unavailable(#[source] super::BoxError),
}

/// Carries compensation commands to the compensation handler, at least once.
#[async_trait]
pub trait CommandBus: Send + Sync {
    /// Puts the commands on the bus.
    async fn publish(&self, commands: &[TerminateRunner]) -> Result<(), BusError>;
}

/// The `source` of jitr's events on the bus.
pub const EVENT_SOURCE: &str = "jitr";
/// The `detail-type` of a compensation command.
pub const TERMINATE_RUNNER: &str = "TerminateRunner";

/// A compensation command's envelope, as EventBridge delivers an event to a
/// target (an SQS body or a Lambda event): `source`, `detail-type` and the command
/// as `detail`. Every bus writes this shape, so one decoder reads them all.
/// (`account` and EventBridge's other fields are optional: an emulator may leave
/// them out.)
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    #[serde(rename = "detail-type")]
    detail_type: String,
    source: String,
    detail: serde_json::Value,
}

fn bus_error(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}").into())
}

/// The envelope of `command`, as a message body.
pub fn encode_terminate_runner(command: &TerminateRunner) -> Result<String, BusError> {
    let envelope = Envelope {
        detail_type: TERMINATE_RUNNER.into(),
        source: EVENT_SOURCE.into(),
        detail: serde_json::to_value(command).map_err(|e| bus_error("encode", e))?,
    };
    serde_json::to_string(&envelope).map_err(|e| bus_error("encode", e))
}

/// Decodes a `TerminateRunner` from its envelope (an SQS target's message body or
/// a Lambda event).
pub fn decode_terminate_runner(body: &str) -> Result<TerminateRunner, BusError> {
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| bus_error("not an EventBridge envelope", e))?;
    if envelope.source != EVENT_SOURCE || envelope.detail_type != TERMINATE_RUNNER {
        return Err(bus_error(
            "unexpected event",
            format!("{} / {}", envelope.source, envelope.detail_type),
        ));
    }
    serde_json::from_value(envelope.detail).map_err(|e| bus_error("TerminateRunner detail", e))
}
