//! SQS as the queue port: scale-up and lifecycle queues with dead-letter queues.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};

use jitr_infra::{DEAD_LETTER_REASON, DeadLetter, Queue, QueueError, QueueMessage};

/// How long a dead-letter pass (list, redrive, purge) hides what it received:
/// longer than any pass runs, so nothing reappears during one.
const PASS_VISIBILITY: Duration = Duration::from_secs(15 * 60);
/// How long one pass may run; the rest is left for the next (a clear bound on
/// a large queue).
const PASS_LIMIT: Duration = Duration::from_secs(10 * 60);

/// Names and URLs of one queue and its DLQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePair {
    /// Main queue URL.
    pub url: String,
    /// Main queue ARN.
    pub arn: String,
    /// Dead-letter queue URL.
    pub dlq_url: String,
    /// Dead-letter queue name.
    pub dlq_name: String,
}

/// An SQS queue and its DLQ.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    pair: QueuePair,
}

fn err(queue: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError {
        queue: queue.to_owned(),
        source: e.to_string().into(),
    }
}

fn sdk_err<E: ProvideErrorMetadata>(queue: &str, e: &E) -> QueueError {
    err(
        queue,
        format!(
            "{}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or_default()
        ),
    )
}

impl SqsQueue {
    /// Creates (or finds) `name` and `name-dlq`, with a redrive after
    /// `max_receive_count` receives and `visibility` as the default visibility.
    pub async fn ensure(
        config: &SdkConfig,
        name: &str,
        max_receive_count: u32,
        visibility: Duration,
    ) -> Result<(SqsQueue, bool), QueueError> {
        let client = crate::calls::sqs(config);
        let dlq_name = format!("{name}-dlq");
        let existed = Self::queue_url(&client, name).await?.is_some();
        let dlq_url = client
            .create_queue()
            .queue_name(&dlq_name)
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send()
            .await
            .map_err(|e| sdk_err(&dlq_name, &e))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let dlq_arn = Self::arn(&client, &dlq_url, &dlq_name).await?;
        let redrive = format!(
            r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receive_count}"}}"#
        );
        let url = client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility.as_secs().to_string(),
            )
            .send()
            .await
            .map_err(|e| sdk_err(name, &e))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let arn = Self::arn(&client, &url, name).await?;
        Ok((
            SqsQueue {
                client,
                pair: QueuePair {
                    url,
                    arn,
                    dlq_url,
                    dlq_name,
                },
            },
            existed,
        ))
    }

    /// The existing queue `name` and its `name-dlq`; `None` when either is missing.
    pub async fn find(config: &SdkConfig, name: &str) -> Result<Option<SqsQueue>, QueueError> {
        let client = crate::calls::sqs(config);
        let dlq_name = format!("{name}-dlq");
        let (Some(url), Some(dlq_url)) = (
            Self::queue_url(&client, name).await?,
            Self::queue_url(&client, &dlq_name).await?,
        ) else {
            return Ok(None);
        };
        let arn = Self::arn(&client, &url, name).await?;
        Ok(Some(SqsQueue {
            client,
            pair: QueuePair {
                url,
                arn,
                dlq_url,
                dlq_name,
            },
        }))
    }

    /// The queue's visibility timeout, seconds (`None`: SQS did not say).
    pub async fn visibility_timeout(&self) -> Result<Option<u64>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.pair.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| sdk_err(&self.pair.url, &e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.parse().ok()))
    }

    /// The URL of queue `name`; `None` when it does not exist.
    async fn queue_url(client: &Client, name: &str) -> Result<Option<String>, QueueError> {
        match client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url().map(str::to_owned)),
            Err(e)
                if matches!(
                    e.code(),
                    Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_err(name, &e)),
        }
    }

    /// An existing queue pair.
    pub fn from_pair(config: &SdkConfig, pair: QueuePair) -> Self {
        SqsQueue {
            client: crate::calls::sqs(config),
            pair,
        }
    }

    /// The queue pair.
    pub fn pair(&self) -> &QueuePair {
        &self.pair
    }

    async fn arn(client: &Client, url: &str, name: &str) -> Result<String, QueueError> {
        let out = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sdk_err(name, &e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| err(name, "no QueueArn attribute"))
    }

    async fn send(
        &self,
        url: &str,
        body: &str,
        delay: Option<Duration>,
        attributes: &[(&str, &str)],
    ) -> Result<String, QueueError> {
        let mut req = self.client.send_message().queue_url(url).message_body(body);
        if let Some(delay) = delay {
            req = req.delay_seconds(i32::try_from(delay.as_secs().min(900)).unwrap_or(900));
        }
        for (k, v) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*v)
                .build()
                .map_err(|e| err(url, e))?;
            req = req.message_attributes(*k, value);
        }
        let out = req.send().await.map_err(|e| sdk_err(url, &e))?;
        Ok(out.message_id().unwrap_or_default().to_owned())
    }

    /// Messages visible in the main queue.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        self.count(&self.pair.url).await
    }

    async fn count(&self, url: &str) -> Result<u64, QueueError> {
        self.count_of(url, &[QueueAttributeName::ApproximateNumberOfMessages])
            .await
    }

    /// The sum of the approximate counts `names` of `url`.
    async fn count_of(&self, url: &str, names: &[QueueAttributeName]) -> Result<u64, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| sdk_err(url, &e))?;
        Ok(names
            .iter()
            .filter_map(|name| out.attributes().and_then(|a| a.get(name)))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum())
    }

    /// Makes a received message of `url` visible again at once.
    async fn release(&self, url: &str, receipt: &str) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| sdk_err(url, &e))?;
        Ok(())
    }

    /// Deletes a received message of `url`.
    async fn delete(&self, url: &str, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sdk_err(url, &e))?;
        Ok(())
    }

    /// Every message of the dead-letter queue, each hidden for a minute (SQS
    /// cannot list without receiving): pages of ten until a long poll of one
    /// second finds nothing more, or `max`.
    /// One page of a dead-letter pass: up to 10, hidden for [`PASS_VISIBILITY`]
    /// (a 1-s long poll: a short poll may answer empty while messages wait).
    async fn dead_page(&self) -> Result<Vec<QueueMessage>, QueueError> {
        self.receive_hidden(
            &self.pair.dlq_url,
            10,
            Duration::from_secs(1),
            Some(PASS_VISIBILITY),
        )
        .await
    }

    /// Receives up to `max` dead letters (each once), hidden for
    /// [`PASS_VISIBILITY`] so that none comes back while the pass runs; a pass
    /// ends at `max`, at an empty receive, or after [`PASS_LIMIT`].
    async fn receive_all_dead(&self, max: usize) -> Result<Vec<QueueMessage>, QueueError> {
        let started = std::time::Instant::now();
        let mut all: Vec<QueueMessage> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while all.len() < max {
            if started.elapsed() > PASS_LIMIT {
                tracing::warn!(
                    read = all.len(),
                    "dead-letter pass stopped at its time limit"
                );
                break;
            }
            let page = self.dead_page().await?;
            if page.is_empty() {
                break;
            }
            for message in page {
                if seen.insert(message.id.clone()) {
                    all.push(message);
                }
            }
        }
        Ok(all)
    }

    /// Receives from the dead-letter queue (for inspection and tests).
    pub async fn receive_dead_letters(
        &self,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        self.receive_from(&self.pair.dlq_url, max, wait).await
    }

    async fn receive_from(
        &self,
        url: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        self.receive_hidden(url, max, wait, None).await
    }

    /// Receives, hiding what it got for `visibility` (the queue's default
    /// when none).
    async fn receive_hidden(
        &self,
        url: &str,
        max: u32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .set_visibility_timeout(visibility.map(|v| i32::try_from(v.as_secs()).unwrap_or(60)))
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sdk_err(url, &e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| QueueMessage {
                id: m.message_id().unwrap_or_default().to_owned(),
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                attributes: m
                    .message_attributes()
                    .map(|attrs| {
                        attrs
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect())
    }
}

/// Why a dead letter is there: jitr's reason attribute (taken out), or SQS's
/// redrive policy moved it.
fn reason_of(attributes: &mut std::collections::HashMap<String, String>) -> String {
    attributes.remove(DEAD_LETTER_REASON).unwrap_or_else(|| {
        "moved by SQS's redrive policy: received maxReceiveCount times without being deleted"
            .to_owned()
    })
}

#[async_trait]
impl Queue for SqsQueue {
    async fn publish(
        &self,
        body: &str,
        delay: Option<Duration>,
        attributes: &[(&str, &str)],
    ) -> Result<String, QueueError> {
        self.send(&self.pair.url, body, delay, attributes).await
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<QueueMessage>, QueueError> {
        self.receive_from(&self.pair.url, max, wait).await
    }

    async fn ack(&self, message: &QueueMessage) -> Result<(), QueueError> {
        self.delete(&self.pair.url, &message.receipt).await
    }

    async fn retry_later(&self, message: &QueueMessage, after: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.pair.url)
            .receipt_handle(&message.receipt)
            .visibility_timeout(i32::try_from(after.as_secs().min(43_200)).unwrap_or(43_200))
            .send()
            .await
            .map_err(|e| sdk_err(&self.pair.url, &e))?;
        Ok(())
    }

    async fn dead_letter(&self, message: &QueueMessage, reason: &str) -> Result<(), QueueError> {
        let mut attributes = message.attributes_but(DEAD_LETTER_REASON);
        attributes.push((DEAD_LETTER_REASON, reason));
        self.send(&self.pair.dlq_url, &message.body, None, &attributes)
            .await?;
        self.ack(message).await
    }

    async fn dead_letter_depth(&self) -> Result<u64, QueueError> {
        // Nothing consumes a dead-letter queue: a message not visible is one a
        // list or a redrive is holding, still a dead letter.
        self.count_of(
            &self.pair.dlq_url,
            &[
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ],
        )
        .await
    }

    async fn waiting(&self) -> Result<u64, QueueError> {
        self.depth().await
    }

    async fn list_dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let received = self.receive_all_dead(max).await?;
        for message in &received {
            self.release(&self.pair.dlq_url, &message.receipt).await?;
        }
        Ok(received
            .into_iter()
            .take(max)
            .map(|mut m| {
                let reason = reason_of(&mut m.attributes);
                DeadLetter {
                    id: m.id,
                    body: m.body,
                    reason,
                    receive_count: m.receive_count,
                    attributes: m.attributes,
                }
            })
            .collect())
    }

    async fn dead_letter_reasons(&self, max: usize) -> Result<Vec<String>, QueueError> {
        // No visibility timeout: nothing is hidden from a redrive or a list
        // running meanwhile; each message returned counts one receive. A long
        // poll (1 s, returning as soon as one is found): a short poll asks only
        // some of SQS's servers and may answer empty while messages wait (SQS
        // Developer Guide, "Amazon SQS short and long polling").
        let sample = self
            .receive_hidden(
                &self.pair.dlq_url,
                u32::try_from(max).unwrap_or(10),
                Duration::from_secs(1),
                Some(Duration::ZERO),
            )
            .await?;
        Ok(sample
            .into_iter()
            .take(max)
            .map(|mut m| reason_of(&mut m.attributes))
            .collect())
    }

    async fn redrive(&self, ids: Option<&[String]>) -> Result<u64, QueueError> {
        // Page by page: each message is sent back and deleted from the
        // dead-letter queue before the next receive, so none is hidden long
        // and none is sent twice (at least once only across a crash between
        // the send and the delete). Those not asked for stay hidden until the
        // pass ends, so they are not received again meanwhile.
        let started = std::time::Instant::now();
        let mut held = Vec::new();
        let mut moved = 0u64;
        let wanted = ids.map(<[String]>::len);
        while wanted.is_none_or(|w| moved < w as u64) {
            if started.elapsed() > PASS_LIMIT {
                tracing::warn!(
                    moved,
                    "redrive stopped at its time limit: run it again for the rest"
                );
                break;
            }
            let page = self.dead_page().await?;
            if page.is_empty() {
                break;
            }
            for message in page {
                if ids.is_some_and(|ids| !ids.contains(&message.id)) {
                    held.push(message.receipt);
                    continue;
                }
                let attributes = message.attributes_but(DEAD_LETTER_REASON);
                self.send(&self.pair.url, &message.body, None, &attributes)
                    .await?;
                self.delete(&self.pair.dlq_url, &message.receipt).await?;
                moved += 1;
            }
        }
        for receipt in &held {
            self.release(&self.pair.dlq_url, receipt).await?;
        }
        Ok(moved)
    }

    async fn purge_dead_letters(&self) -> Result<u64, QueueError> {
        // Message by message rather than PurgeQueue: the count is exact and a
        // second purge within 60 s is not refused. Page by page, each deleted
        // before the next receive; bounded by [`PASS_LIMIT`].
        let started = std::time::Instant::now();
        let mut purged = 0u64;
        while started.elapsed() <= PASS_LIMIT {
            let page = self.dead_page().await?;
            if page.is_empty() {
                return Ok(purged);
            }
            for message in &page {
                self.delete(&self.pair.dlq_url, &message.receipt).await?;
                purged += 1;
            }
        }
        tracing::warn!(
            purged,
            "purge stopped at its time limit: run it again for the rest"
        );
        Ok(purged)
    }
}
