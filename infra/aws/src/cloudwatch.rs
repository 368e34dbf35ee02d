//! CloudWatch: the DLQ alarms and their states.

use aws_config::SdkConfig;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, StateValue, Statistic};
use thiserror::Error;

use jitr_infra::{BoxError, DLQ_ALARM_THRESHOLD};

/// CloudWatch failed.
#[derive(Debug, Error)]
#[error("cloudwatch: {0}")]
pub struct AlarmError(#[source] pub BoxError);

fn sdk_error<E: ProvideErrorMetadata>(what: &str, e: &E) -> AlarmError {
    AlarmError(
        format!(
            "{what}: {}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or_default()
        )
        .into(),
    )
}

/// An alarm's name and state.
#[derive(Clone, Debug, PartialEq)]
pub struct AlarmState {
    /// Alarm name.
    pub name: String,
    /// `OK`, `ALARM` or `INSUFFICIENT_DATA`.
    pub state: String,
    /// The queue it watches.
    pub queue: Option<String>,
    /// Its threshold.
    pub threshold: f64,
    /// Whether it notifies at all (`ActionsEnabled`).
    pub actions_enabled: bool,
    /// What it notifies on entering `ALARM` (topic ARNs).
    pub actions: Vec<String>,
}

/// DLQ alarms.
#[derive(Clone)]
pub struct Alarms {
    client: Client,
}

impl Alarms {
    /// A client.
    pub fn new(config: &SdkConfig) -> Self {
        Alarms {
            client: crate::calls::cloudwatch(config),
        }
    }

    /// The alarm name for a dead-letter queue.
    pub fn dlq_alarm_name(queue: &str) -> String {
        format!("{queue}-depth")
    }

    /// Creates or updates the alarm on `queue`'s visible messages
    /// (`ApproximateNumberOfMessagesVisible > 5` for one minute). Returns whether
    /// it existed with this definition already.
    pub async fn ensure_dlq_alarm(
        &self,
        queue: &str,
        actions: &[String],
    ) -> Result<bool, AlarmError> {
        let name = Self::dlq_alarm_name(queue);
        let existing = self.describe(std::slice::from_ref(&name)).await?;
        // An alarm that notifies more than asked (a template deployment's,
        // wired to its topic) is left as it is.
        let unchanged = existing.first().is_some_and(|a| {
            a.queue.as_deref() == Some(queue)
                && a.threshold == DLQ_ALARM_THRESHOLD
                && actions.iter().all(|t| a.actions.contains(t))
        });
        if unchanged {
            return Ok(true);
        }
        self.client
            .put_metric_alarm()
            .alarm_name(&name)
            .alarm_description(format!(
                "jitr: messages are piling up in the dead-letter queue {queue}; \
                 run `jitr doctor` and read their dead-letter reasons"
            ))
            .namespace("AWS/SQS")
            .metric_name("ApproximateNumberOfMessagesVisible")
            .dimensions(Dimension::builder().name("QueueName").value(queue).build())
            .statistic(Statistic::Maximum)
            .period(60)
            .evaluation_periods(1)
            .threshold(DLQ_ALARM_THRESHOLD)
            .comparison_operator(ComparisonOperator::GreaterThanThreshold)
            .treat_missing_data("notBreaching")
            .set_alarm_actions(Some(actions.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error("put alarm", &e))?;
        Ok(false)
    }

    /// The named alarms that exist, with their states.
    pub async fn describe(&self, names: &[String]) -> Result<Vec<AlarmState>, AlarmError> {
        let out = self
            .client
            .describe_alarms()
            .set_alarm_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_error("describe alarms", &e))?;
        Ok(out
            .metric_alarms()
            .iter()
            .map(|a| AlarmState {
                name: a.alarm_name().unwrap_or_default().to_owned(),
                state: a
                    .state_value()
                    .map_or(StateValue::InsufficientData.as_str(), |s| s.as_str())
                    .to_owned(),
                queue: a
                    .dimensions()
                    .iter()
                    .find(|d| d.name() == Some("QueueName"))
                    .and_then(|d| d.value())
                    .map(str::to_owned),
                threshold: a.threshold().unwrap_or_default(),
                actions_enabled: a.actions_enabled().unwrap_or(true),
                actions: a.alarm_actions().to_vec(),
            })
            .collect())
    }
}
