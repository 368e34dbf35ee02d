//! EC2's own events, as EventBridge delivers them ("EC2 Instance State-change
//! Notification", "EC2 Spot Instance Interruption Warning"; Amazon EC2 User
//! Guide, "State change events for Amazon EC2 instances" and "Spot Instance
//! interruption notices"): decoded from the EventBridge envelope an SQS target
//! receives, and written in the same shape by the simulator.

use jitr_domain::{InstanceId, Timestamp};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The `source` of EC2's events.
pub const EC2_SOURCE: &str = "aws.ec2";
/// The `detail-type` of a state change.
pub const STATE_CHANGE: &str = "EC2 Instance State-change Notification";
/// The `detail-type` of a spot interruption warning.
pub const SPOT_INTERRUPTION: &str = "EC2 Spot Instance Interruption Warning";

/// One of EC2's events about an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ec2Event {
    /// The instance entered `state` (`pending`, `running`, `stopping`,
    /// `stopped`, `shutting-down`, `terminated`).
    StateChange {
        /// The instance.
        instance_id: InstanceId,
        /// Its new state, as EC2 names it.
        state: String,
        /// When (the envelope's `time`).
        at: Option<Timestamp>,
    },
    /// The spot instance will be reclaimed in two minutes.
    SpotInterruption {
        /// The instance.
        instance_id: InstanceId,
        /// `terminate`, `stop` or `hibernate`.
        action: String,
        /// When (the envelope's `time`).
        at: Option<Timestamp>,
    },
    /// Another event of the `aws.ec2` source, or another source's.
    Other {
        /// Its `source`.
        source: String,
        /// Its `detail-type`.
        detail_type: String,
    },
}

/// An event that is not an EventBridge envelope, or whose detail lacks what
/// its type has.
#[derive(Debug, Error)]
#[error("not an EC2 event: {0}")]
pub struct Ec2EventError(String);

#[derive(Deserialize, Serialize)]
struct Envelope {
    #[serde(default)]
    version: String,
    #[serde(default)]
    id: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    source: String,
    #[serde(default)]
    account: String,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    region: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    detail: serde_json::Value,
}

#[derive(Deserialize, Serialize)]
struct StateDetail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    state: String,
}

#[derive(Deserialize, Serialize)]
struct InterruptionDetail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    #[serde(rename = "instance-action")]
    instance_action: String,
}

fn parse_time(text: &str) -> Option<Timestamp> {
    let at = humantime::parse_rfc3339(text).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(Timestamp(i64::try_from(ms).ok()?))
}

/// Decodes an EventBridge envelope (an SQS target's message body, or a Lambda
/// event).
pub fn decode_ec2_event(body: &str) -> Result<Ec2Event, Ec2EventError> {
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| Ec2EventError(e.to_string()))?;
    let at = envelope.time.as_deref().and_then(parse_time);
    if envelope.source != EC2_SOURCE {
        return Ok(Ec2Event::Other {
            source: envelope.source,
            detail_type: envelope.detail_type,
        });
    }
    match envelope.detail_type.as_str() {
        STATE_CHANGE => {
            let detail: StateDetail = serde_json::from_value(envelope.detail)
                .map_err(|e| Ec2EventError(format!("{STATE_CHANGE}: {e}")))?;
            Ok(Ec2Event::StateChange {
                instance_id: InstanceId(detail.instance_id),
                state: detail.state,
                at,
            })
        }
        SPOT_INTERRUPTION => {
            let detail: InterruptionDetail = serde_json::from_value(envelope.detail)
                .map_err(|e| Ec2EventError(format!("{SPOT_INTERRUPTION}: {e}")))?;
            Ok(Ec2Event::SpotInterruption {
                instance_id: InstanceId(detail.instance_id),
                action: detail.instance_action,
                at,
            })
        }
        _ => Ok(Ec2Event::Other {
            source: envelope.source,
            detail_type: envelope.detail_type,
        }),
    }
}

/// The envelope EventBridge delivers for a state change of `instance_id` to
/// `state` at `at` (what the simulator publishes).
pub fn encode_state_change(
    instance_id: &InstanceId,
    state: &str,
    at: Timestamp,
    region: &str,
    account: &str,
) -> String {
    let detail = StateDetail {
        instance_id: instance_id.0.clone(),
        state: state.to_owned(),
    };
    envelope(
        STATE_CHANGE,
        instance_id,
        at,
        region,
        account,
        serde_json::to_value(detail).expect("serialisable"),
    )
}

/// The envelope of a spot interruption warning for `instance_id`.
pub fn encode_spot_interruption(
    instance_id: &InstanceId,
    at: Timestamp,
    region: &str,
    account: &str,
) -> String {
    let detail = InterruptionDetail {
        instance_id: instance_id.0.clone(),
        instance_action: "terminate".into(),
    };
    envelope(
        SPOT_INTERRUPTION,
        instance_id,
        at,
        region,
        account,
        serde_json::to_value(detail).expect("serialisable"),
    )
}

fn envelope(
    detail_type: &str,
    instance_id: &InstanceId,
    at: Timestamp,
    region: &str,
    account: &str,
    detail: serde_json::Value,
) -> String {
    let time = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at.0).unwrap_or(0)),
    )
    .to_string();
    let envelope = Envelope {
        version: "0".into(),
        id: format!("{}-{}-{}", instance_id.0, at.0, detail_type.len()),
        detail_type: detail_type.into(),
        source: EC2_SOURCE.into(),
        account: account.into(),
        time: Some(time),
        region: region.into(),
        resources: vec![format!(
            "arn:aws:ec2:{region}:{account}:instance/{}",
            instance_id.0
        )],
        detail,
    };
    serde_json::to_string(&envelope).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMINATED: &str =
        include_str!("../../../tests/fixtures/ec2-events/state-change-terminated.json");
    const INTERRUPTION: &str =
        include_str!("../../../tests/fixtures/ec2-events/spot-interruption.json");

    #[test]
    fn the_documented_shapes_decode() {
        assert_eq!(
            decode_ec2_event(TERMINATED).unwrap(),
            Ec2Event::StateChange {
                instance_id: InstanceId("i-abcd1111".into()),
                state: "terminated".into(),
                at: Some(Timestamp(1_795_987_794_000)),
            }
        );
        assert!(matches!(
            decode_ec2_event(INTERRUPTION).unwrap(),
            Ec2Event::SpotInterruption { instance_id, action, .. }
                if instance_id.0 == "i-1234567890abcdef0" && action == "terminate"
        ));
        let other = TERMINATED.replace("aws.ec2", "aws.s3");
        assert!(matches!(
            decode_ec2_event(&other).unwrap(),
            Ec2Event::Other { source, .. } if source == "aws.s3"
        ));
        assert!(decode_ec2_event("{\"detail-type\": 1}").is_err());
        let no_state = TERMINATED.replace("\"state\"", "\"status\"");
        assert!(decode_ec2_event(&no_state).is_err());
    }

    #[test]
    fn what_the_simulator_writes_decodes_back() {
        let id = InstanceId("i-0000000000000002a".into());
        let at = Timestamp(1_795_987_794_000);
        let body = encode_state_change(&id, "shutting-down", at, "us-east-1", "123456789012");
        assert_eq!(
            decode_ec2_event(&body).unwrap(),
            Ec2Event::StateChange {
                instance_id: id.clone(),
                state: "shutting-down".into(),
                at: Some(at),
            }
        );
        let body = encode_spot_interruption(&id, at, "us-east-1", "123456789012");
        assert!(matches!(
            decode_ec2_event(&body).unwrap(),
            Ec2Event::SpotInterruption { instance_id, .. } if instance_id == id
        ));
    }
}
