//! EventBridge as the command bus: `TerminateRunner` put on a bus; a rule routes it
//! to the compensation handler (an SQS queue target, or a Lambda).

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, RuleState, Target};
use jitr_domain::TerminateRunner;
use jitr_infra::{BusError, CommandBus, EVENT_SOURCE, TERMINATE_RUNNER};

use crate::sqs::QueuePair;

fn bus_error(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}").into())
}

fn sdk_error<E: ProvideErrorMetadata>(what: &str, e: &E) -> BusError {
    bus_error(
        what,
        format!(
            "{}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or_default()
        ),
    )
}

/// Puts commands on an EventBridge bus.
#[derive(Clone)]
pub struct EventBridgeBus {
    client: Client,
    bus: String,
}

/// What `ensure` found or made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusSetup {
    /// The bus existed before.
    pub bus_existed: bool,
    /// The rule's ARN.
    pub rule_arn: String,
}

impl EventBridgeBus {
    /// A bus client for `bus`.
    pub fn new(config: &SdkConfig, bus: impl Into<String>) -> Self {
        EventBridgeBus {
            client: crate::calls::eventbridge(config),
            bus: bus.into(),
        }
    }

    /// Creates the bus (unless it exists) and a rule `rule` routing
    /// `TerminateRunner` commands to the queue `target`, with the queue policy
    /// that lets EventBridge deliver to it.
    pub async fn ensure(
        config: &SdkConfig,
        bus: &str,
        rule: &str,
        target: &QueuePair,
    ) -> Result<(EventBridgeBus, BusSetup), BusError> {
        let this = EventBridgeBus::new(config, bus);
        let bus_existed = match this.client.create_event_bus().name(bus).send().await {
            Ok(_) => false,
            Err(e) if e.code() == Some("ResourceAlreadyExistsException") => true,
            Err(e) => return Err(sdk_error("create bus", &e)),
        };
        let pattern =
            format!(r#"{{"source":["{EVENT_SOURCE}"],"detail-type":["{TERMINATE_RUNNER}"]}}"#);
        let rule_arn = route(
            config,
            &this.client,
            bus,
            rule,
            &pattern,
            "jitr compensation commands to the compensation handler",
            ("compensation-queue", target),
        )
        .await?;
        Ok((
            this,
            BusSetup {
                bus_existed,
                rule_arn,
            },
        ))
    }
}

/// Creates (or updates) the rule `rule` on the account's default bus that
/// routes EC2's state-change and spot interruption events to `target`, with the
/// queue policy that lets EventBridge deliver them. Returns whether the rule
/// existed before.
pub async fn ensure_ec2_events_rule(
    config: &SdkConfig,
    rule: &str,
    target: &QueuePair,
) -> Result<bool, BusError> {
    let client = crate::calls::eventbridge(config);
    let existed = match client.describe_rule().name(rule).send().await {
        Ok(_) => true,
        Err(e) if e.code() == Some("ResourceNotFoundException") => false,
        Err(e) => return Err(sdk_error("describe rule", &e)),
    };
    let pattern = serde_json::json!({
        "source": [jitr_infra::EC2_SOURCE],
        "detail-type": [jitr_infra::STATE_CHANGE, jitr_infra::SPOT_INTERRUPTION],
    })
    .to_string();
    route(
        config,
        &client,
        "default",
        rule,
        &pattern,
        "EC2 state changes and spot interruption warnings to jitr",
        ("ec2-events-queue", target),
    )
    .await?;
    Ok(existed)
}

/// Puts rule `rule` (matching `pattern`) on `bus` with the queue `target` as its
/// target, and the queue policy allowing that rule to send to it.
async fn route(
    config: &SdkConfig,
    client: &Client,
    bus: &str,
    rule: &str,
    pattern: &str,
    description: &str,
    (target_id, target): (&str, &QueuePair),
) -> Result<String, BusError> {
    let rule_arn = client
        .put_rule()
        .name(rule)
        .event_bus_name(bus)
        .event_pattern(pattern)
        .state(RuleState::Enabled)
        .description(description)
        .send()
        .await
        .map_err(|e| sdk_error("put rule", &e))?
        .rule_arn()
        .unwrap_or_default()
        .to_owned();
    let target_entry = Target::builder()
        .id(target_id)
        .arn(&target.arn)
        .build()
        .map_err(|e| bus_error("target", e))?;
    let out = client
        .put_targets()
        .rule(rule)
        .event_bus_name(bus)
        .targets(target_entry)
        .send()
        .await
        .map_err(|e| sdk_error("put targets", &e))?;
    if out.failed_entry_count() > 0 {
        return Err(bus_error(
            "put targets",
            format!("{:?}", out.failed_entries()),
        ));
    }
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"jitr-eventbridge","Effect":"Allow","Principal":{{"Service":"events.amazonaws.com"}},"Action":"sqs:SendMessage","Resource":"{}","Condition":{{"ArnEquals":{{"aws:SourceArn":"{rule_arn}"}}}}}}]}}"#,
        target.arn
    );
    crate::calls::sqs(config)
        .set_queue_attributes()
        .queue_url(&target.url)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::Policy, policy)
        .send()
        .await
        .map_err(|e| sdk_error("queue policy", &e))?;
    Ok(rule_arn)
}

#[async_trait]
impl CommandBus for EventBridgeBus {
    async fn publish(&self, commands: &[TerminateRunner]) -> Result<(), BusError> {
        for batch in commands.chunks(10) {
            let mut entries = Vec::with_capacity(batch.len());
            for command in batch {
                let detail = serde_json::to_string(command).map_err(|e| bus_error("encode", e))?;
                entries.push(
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(EVENT_SOURCE)
                        .detail_type(TERMINATE_RUNNER)
                        .detail(detail)
                        .build(),
                );
            }
            let out = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error("put events", &e))?;
            if out.failed_entry_count() > 0 {
                let codes: Vec<&str> = out
                    .entries()
                    .iter()
                    .filter_map(|e| e.error_code())
                    .collect();
                return Err(bus_error(
                    "put events",
                    format!("{} entries failed: {codes:?}", out.failed_entry_count()),
                ));
            }
        }
        Ok(())
    }
}
