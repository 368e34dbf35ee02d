//! The one queue-consumer loop: receive → handle → settle. `jitr serve` runs it
//! per queue, `jitr simulate` steps it with its manual clock, and the Lambda SQS
//! adapter settles each record of a batch with the same [`settle`].

use std::time::Duration;

use async_trait::async_trait;
use jitr_domain::Timestamp;
use jitr_infra::{MAX_WAITS, Queue, QueueError, QueueMessage, decode_terminate_runner, send_again};
use tracing::Instrument;

use crate::app::compensation::Compensation;
use crate::app::lifecycle::Lifecycle;
use crate::app::outcome::{HandlerError, Outcome};
use crate::app::scaleup::ScaleUp;
use crate::app::webhook::JobMessage;

/// A handler of one queue's messages.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// The handler's name, for logs.
    fn name(&self) -> &'static str;
    /// Handles one message at `now`; an undecodable body is dead-lettered.
    async fn consume(
        &self,
        message: &QueueMessage,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError>;
}

fn job(message: &QueueMessage) -> Result<JobMessage, Outcome> {
    serde_json::from_str(&message.body)
        .map_err(|e| Outcome::DeadLetter(format!("undecodable job message: {e}")))
}

#[async_trait]
impl Consumer for ScaleUp {
    fn name(&self) -> &'static str {
        "scale-up"
    }
    async fn consume(
        &self,
        message: &QueueMessage,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        use crate::app::scaleup::{INSTANCE_TERMINATED, ScaleUpMessage};
        match ScaleUpMessage::decode(&message.body) {
            Ok(ScaleUpMessage::Admit { admit: why }) => {
                if why == INSTANCE_TERMINATED {
                    self.capacity_freed().await;
                }
                let round = self.admit(None, now).await?;
                Ok(Outcome::Done(format!(
                    "admission round ({why}): {} of {} waiting launched",
                    round.report.launched, round.report.waiting
                )))
            }
            Ok(ScaleUpMessage::Job(job)) => self.handle(&job, message.deliveries(), now).await,
            Err(e) => Ok(Outcome::DeadLetter(format!(
                "undecodable scale-up message: {e}"
            ))),
        }
    }
}

#[async_trait]
impl Consumer for Lifecycle {
    fn name(&self) -> &'static str {
        "lifecycle"
    }
    async fn consume(
        &self,
        message: &QueueMessage,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        match job(message) {
            Ok(job) => self.handle(&job, now).await,
            Err(poison) => Ok(poison),
        }
    }
}

#[async_trait]
impl Consumer for Compensation {
    fn name(&self) -> &'static str {
        "compensation"
    }
    async fn consume(
        &self,
        message: &QueueMessage,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        match decode_terminate_runner(&message.body) {
            Ok(command) => self.handle(&command, now).await,
            Err(e) => Ok(Outcome::DeadLetter(e.to_string())),
        }
    }
}

#[async_trait]
impl Consumer for crate::app::ec2events::Ec2Events {
    fn name(&self) -> &'static str {
        "ec2-events"
    }
    async fn consume(
        &self,
        message: &QueueMessage,
        now: Timestamp,
    ) -> Result<Outcome, HandlerError> {
        match jitr_infra::decode_ec2_event(&message.body) {
            Ok(event) => self.handle(&event, now).await,
            Err(e) => Ok(Outcome::DeadLetter(e.to_string())),
        }
    }
}

/// Receives up to `max` messages (waiting up to `wait`), handles each in its own
/// span at the moment `now` gives, and settles it. Returns how many were received.
pub async fn drain(
    queue: &dyn Queue,
    consumer: &dyn Consumer,
    max: u32,
    wait: Duration,
    now: &(dyn Fn() -> Timestamp + Send + Sync),
) -> Result<usize, QueueError> {
    let messages = queue.receive(max, wait).await?;
    for message in &messages {
        let span = tracing::info_span!("message", handler = consumer.name(), id = %message.id, receives = message.receive_count);
        async {
            let outcome = consumer.consume(message, now()).await;
            settle(queue, message, outcome, consumer.name(), true).await;
        }
        .instrument(span)
        .await;
    }
    Ok(messages.len())
}

/// Acts on a handler's outcome for a queued message: done → acknowledged (when
/// `ack_done`; Lambda deletes it itself), retry → made visible again after the
/// back-off, poison → dead-lettered with its reason, error → retried in 5 s.
/// Returns whether the message stays on the queue for another delivery.
pub async fn settle(
    queue: &dyn Queue,
    message: &QueueMessage,
    outcome: Result<Outcome, HandlerError>,
    what: &str,
    ack_done: bool,
) -> bool {
    let (result, stays) = match outcome {
        Ok(Outcome::Done(info)) => {
            tracing::info!(handler = what, id = %message.id, %info, "done");
            let result = if ack_done {
                queue.ack(message).await
            } else {
                Ok(())
            };
            (result, false)
        }
        // A wait is not a failure: the message is sent again, delayed, and
        // this receipt deleted, so that waiting spends none of the receives
        // after which the queue dead-letters a failing message (ADR-0018).
        // Past MAX_WAITS, or when sending fails, it spends one.
        Ok(Outcome::RetryAfter(delay, info)) if message.waits() < MAX_WAITS => {
            tracing::info!(handler = what, id = %message.id, %info, ?delay, waits = message.waits(), "waiting");
            match send_again(queue, message, delay).await {
                Ok(()) if ack_done => (queue.ack(message).await, false),
                Ok(()) => (Ok(()), false),
                Err(e) => {
                    tracing::warn!(handler = what, error = %e, "not sent again: retried in place");
                    (queue.retry_later(message, delay).await, true)
                }
            }
        }
        Ok(Outcome::RetryAfter(delay, info)) => {
            tracing::warn!(handler = what, id = %message.id, %info, ?delay, "waited {MAX_WAITS} times: retry later");
            (queue.retry_later(message, delay).await, true)
        }
        Ok(Outcome::DeadLetter(reason)) => {
            tracing::error!(handler = what, id = %message.id, %reason, "to the dead-letter queue");
            let result = queue.dead_letter(message, &reason).await;
            let stays = result.is_err();
            (result, stays)
        }
        Err(e) => {
            tracing::error!(handler = what, id = %message.id, error = %e, "failed; will retry");
            (
                queue.retry_later(message, Duration::from_secs(5)).await,
                true,
            )
        }
    };
    if let Err(e) = result {
        tracing::error!(handler = what, error = %e, "queue operation failed");
    }
    stays
}
