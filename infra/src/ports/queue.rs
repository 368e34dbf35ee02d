//! The queue port: scale-up, lifecycle and compensation work queues, each with a
//! dead-letter queue.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use super::BoxError;

/// A dead-letter queue holding more than this many messages is alarming (the
/// CloudWatch alarm on AWS, `jitr doctor` everywhere).
pub const DLQ_ALARM_THRESHOLD: f64 = 5.0;

/// Receives of a message before its queue moves it to the dead-letter queue.
pub const DEFAULT_MAX_RECEIVES: u32 = 5;

/// Message attribute carrying why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "jitr-dead-letter-reason";

/// Message attribute counting the waits a message was sent again for
/// ([`send_again`]): a handler that must wait (a back-off, an evidence
/// window) does not spend one of the receives that send a failing message to
/// its dead-letter queue.
pub const WAITS: &str = "jitr-waits";

/// The most waits a message is sent again for; past them a wait is a retry
/// that spends a receive, so nothing waits forever unseen.
pub const MAX_WAITS: u32 = 200;

/// The longest delay a queue takes for a message (SQS: 15 minutes).
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    /// The queue's message id.
    pub id: String,
    /// Handle to ack or delay this receipt.
    pub receipt: String,
    /// The body.
    pub body: String,
    /// How many times it has been received (1 on first delivery).
    pub receive_count: u32,
    /// String message attributes.
    pub attributes: HashMap<String, String>,
}

impl QueueMessage {
    /// How many times it was sent again to wait ([`WAITS`]).
    pub fn waits(&self) -> u32 {
        self.attributes
            .get(WAITS)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    }

    /// Its attributes, `key` left out (to be set anew, or dropped).
    pub fn attributes_but(&self, key: &str) -> Vec<(&str, &str)> {
        self.attributes
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// How many times its work was handed to a handler: its receives and the
    /// receives of the copies it was sent again as.
    pub fn deliveries(&self) -> u32 {
        self.receive_count.saturating_add(self.waits())
    }
}

/// Sends `message` again, visible after `after` (at most [`MAX_DELAY`]), with
/// its attributes and one more [`WAITS`]: a fresh message with a fresh receive
/// count. The caller then deletes this receipt.
pub async fn send_again(
    queue: &dyn Queue,
    message: &QueueMessage,
    after: Duration,
) -> Result<(), QueueError> {
    let waits = (message.waits() + 1).to_string();
    let mut attributes = message.attributes_but(WAITS);
    attributes.push((WAITS, &waits));
    queue
        .publish(&message.body, Some(after.min(MAX_DELAY)), &attributes)
        .await
        .map(|_| ())
}

/// A message in a dead-letter queue, as an operator inspects it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter queue (what `redrive` takes).
    pub id: String,
    /// The body, as it was published.
    pub body: String,
    /// Why it was dead-lettered: jitr's reason, or the queue's own redrive
    /// after too many receives.
    pub reason: String,
    /// Receives so far (SQS: including inspections, which are receives).
    pub receive_count: u32,
    /// Its message attributes, the reason's aside.
    pub attributes: HashMap<String, String>,
}

/// The queue failed.
#[derive(Debug, Error)]
#[error("queue {queue}: {source}")]
pub struct QueueError {
    /// The queue.
    pub queue: String,
    /// What failed.
    #[source]
    pub source: BoxError,
}

/// A work queue with a dead-letter queue.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends `body`, visible after `delay`; returns the message id.
    async fn publish(
        &self,
        body: &str,
        delay: Option<Duration>,
        attributes: &[(&str, &str)],
    ) -> Result<String, QueueError>;
    /// Long-polls up to `max` messages, waiting up to `wait`.
    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<QueueMessage>, QueueError>;
    /// Done with a message: delete it.
    async fn ack(&self, message: &QueueMessage) -> Result<(), QueueError>;
    /// Make the message visible again after `after` (back-off instead of a hot loop).
    async fn retry_later(&self, message: &QueueMessage, after: Duration) -> Result<(), QueueError>;
    /// A poison message: put it on the DLQ with `reason`, then delete it here.
    async fn dead_letter(&self, message: &QueueMessage, reason: &str) -> Result<(), QueueError>;
    /// Messages in the dead-letter queue (SQS: approximately, those a list or
    /// a redrive holds included).
    async fn dead_letter_depth(&self) -> Result<u64, QueueError>;
    /// Messages waiting in the queue itself (SQS: approximately, visible ones).
    async fn waiting(&self) -> Result<u64, QueueError>;
    /// Up to `max` dead letters, oldest first where the queue keeps an order,
    /// left in place.
    async fn list_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError>;
    /// Moves dead letters back to the queue — those with `ids`, or all — with
    /// their bodies and attributes (the reason aside) and a fresh receive
    /// count. Returns how many moved.
    async fn redrive(&self, ids: Option<&[String]>) -> Result<u64, QueueError>;
    /// Deletes every dead letter. Returns how many there were.
    async fn purge_dead_letters(&self) -> Result<u64, QueueError>;
    /// The reasons of up to `max` dead letters, newest first where the queue
    /// keeps an order, hiding none (pages that refresh read these). SQS
    /// returns a sample and counts a receive on each message it returns.
    async fn dead_letter_reasons(&self, max: usize) -> Result<Vec<String>, QueueError>;
}
