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

#[cfg(test)]
mod tests {
    use jitr_domain::{StreamId, TerminationReason, Timestamp};

    use super::*;

    fn command() -> TerminateRunner {
        TerminateRunner {
            stream: StreamId::parse("acme/widgets#1#1").unwrap(),
            instance_id: None,
            client_token: None,
            reason: TerminationReason::Operator,
            owed_since: Timestamp(1_700_000_000_000),
        }
    }

    #[test]
    fn what_a_bus_writes_decodes_back() {
        let body = encode_terminate_runner(&command()).unwrap();
        assert_eq!(decode_terminate_runner(&body).unwrap(), command());
    }

    #[test]
    fn an_event_as_eventbridge_delivers_it_decodes() {
        let delivered = serde_json::json!({
            "version": "0", "id": "6a7e8feb", "detail-type": TERMINATE_RUNNER,
            "source": EVENT_SOURCE, "account": "111122223333", "time": "2026-11-29T10:00:00Z",
            "region": "us-east-1", "resources": [],
            "detail": serde_json::to_value(command()).unwrap(),
        });
        assert_eq!(
            decode_terminate_runner(&delivered.to_string()).unwrap(),
            command()
        );
    }

    #[test]
    fn another_source_or_a_malformed_body_is_refused() {
        let other = serde_json::json!({
            "detail-type": TERMINATE_RUNNER, "source": "aws.ec2",
            "detail": serde_json::to_value(command()).unwrap(),
        });
        assert!(decode_terminate_runner(&other.to_string()).is_err());
        assert!(decode_terminate_runner("{\"x\":1}").is_err());
        assert!(decode_terminate_runner("not json").is_err());
    }
}
