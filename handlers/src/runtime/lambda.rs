//! `jitr lambda <handler>`: the same handlers behind the AWS Lambda runtime.
//!
//! The SQS-driven handlers (scale-up, lifecycle, compensation: EventBridge's rule
//! targets the compensation queue) report partial batch failures
//! (`ReportBatchItemFailures`): a message to retry is given its back-off as
//! visibility and reported failed; a poison message is moved to the DLQ with its
//! reason and reported done. Every handler comes from one [`crate::app::App`].

use std::sync::Arc;

use aws_lambda_events::event::lambda_function_urls::{
    LambdaFunctionUrlRequest, LambdaFunctionUrlResponse,
};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use jitr_aws::AwsSettings;
use jitr_domain::Timestamp;
use jitr_infra::{Queue, QueueMessage};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};
use tracing::Instrument;

use super::now;
use crate::app::webhook::{Delivery, Webhook};
use crate::runtime::consumer::{Consumer, settle};

fn message(record: &SqsMessage) -> QueueMessage {
    QueueMessage {
        id: record.message_id.clone().unwrap_or_default(),
        receipt: record.receipt_handle.clone().unwrap_or_default(),
        body: record.body.clone().unwrap_or_default(),
        receive_count: record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        attributes: record
            .message_attributes
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.string_value.clone()?)))
            .collect(),
    }
}

/// Runs `consumer` on every record of an SQS batch, each in its own span, and
/// reports the records to retry (`ReportBatchItemFailures`). Records are decoded
/// one by one, not as a typed batch: a malformed body is one poison message, moved
/// to the DLQ with its reason, not a failed batch.
pub async fn process_batch(
    queue: &dyn Queue,
    records: &[SqsMessage],
    consumer: &dyn Consumer,
    now: &(dyn Fn() -> Timestamp + Send + Sync),
) -> SqsBatchResponse {
    let mut failures = Vec::new();
    for record in records {
        let message = message(record);
        let span = tracing::info_span!("message", handler = consumer.name(), id = %message.id, receives = message.receive_count);
        let stays = async {
            let outcome = consumer.consume(&message, now()).await;
            settle(queue, &message, outcome, consumer.name(), false).await
        }
        .instrument(span)
        .await;
        if stays {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = message.id;
            failures.push(failure);
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures;
    response
}

/// Serves a Lambda function URL (or API Gateway v2) request with the webhook.
pub async fn webhook(
    hook: &Webhook,
    request: LambdaFunctionUrlRequest,
) -> LambdaFunctionUrlResponse {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let body = request.body.clone().unwrap_or_default();
    let bytes = if request.is_base64_encoded {
        match aws_smithy_types::base64::decode(&body) {
            Ok(b) => b,
            Err(_) => return response(400, "body is not valid base64".into()),
        }
    } else {
        body.into_bytes()
    };
    let reply = hook.handle(Delivery::from_headers(header), &bytes).await;
    response(reply.status, reply.body)
}

fn response(status: u16, body: String) -> LambdaFunctionUrlResponse {
    let mut r = LambdaFunctionUrlResponse::default();
    r.status_code = i64::from(status);
    r.body = Some(body);
    r
}

/// Runs `work` with the invocation's deadline as its task's: an adapter that
/// would wait (a GitHub rate limit) past it hands the wait back instead.
async fn within_deadline<F: std::future::Future>(deadline_ms: u64, work: F) -> F::Output {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let left = std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    jitr_infra::deadline::within(std::time::Instant::now() + left, work).await
}

/// Runs `handler` under the Lambda runtime, wired from the environment (see
/// [`crate::runtime::aws`]). Logs are JSON lines.
pub async fn run(handler: &str) -> Result<(), LambdaError> {
    let prefix = std::env::var("JITR_PREFIX").unwrap_or_else(|_| "jitr".into());
    if handler == "archiver" {
        return archiver(&prefix).await;
    }
    let wired = super::aws::from_env(AwsSettings::default(), &prefix).await?;
    let mut app = wired.app;
    if let Ok(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        // Every container of one function is the same projector: a container that
        // replaces a frozen or recycled one takes the lease over at once (the
        // checkpoint's generation fence still keeps two live ones apart).
        app.holder = format!("lambda:{function}");
    }
    match handler {
        "webhook" => {
            if !wired.has_webhook_secret {
                return Err(LambdaError::Setup(
                    "JITR_WEBHOOK_SECRET_PARAMETER (or JITR_WEBHOOK_SECRET) is not set: the webhook cannot verify deliveries".into(),
                ));
            }
            let hook = app.webhook.clone();
            lambda_runtime::run(service_fn(
                move |event: LambdaEvent<LambdaFunctionUrlRequest>| {
                    let hook = hook.clone();
                    within_deadline(event.context.deadline, async move {
                        Ok::<_, lambda_runtime::Error>(webhook(&hook, event.payload).await)
                    })
                },
            ))
            .await
        }
        "scaleup" | "lifecycle" | "compensate" | "ec2-events" => {
            let (queue, consumer): (Arc<dyn Queue>, Arc<dyn Consumer>) = match handler {
                "scaleup" => (app.ports.scaleup_queue.clone(), app.scaleup.clone()),
                "lifecycle" => (app.ports.lifecycle_queue.clone(), app.lifecycle.clone()),
                "ec2-events" => (app.ports.ec2_events_queue.clone(), app.ec2_events.clone()),
                _ => (
                    app.ports.compensation_queue.clone(),
                    app.compensation.clone(),
                ),
            };
            lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
                let (queue, consumer) = (queue.clone(), consumer.clone());
                within_deadline(event.context.deadline, async move {
                    Ok::<_, lambda_runtime::Error>(
                        process_batch(&*queue, &event.payload.records, &*consumer, &now).await,
                    )
                })
            }))
            .await
        }
        "projector" => {
            let projector = Arc::new(tokio::sync::Mutex::new(
                app.projector()
                    .await
                    .map_err(|e| LambdaError::Setup(format!("projector: {e}")))?
                    .counting_closed_since(now()),
            ));
            lambda_runtime::run(service_fn(move |nudge: LambdaEvent<Value>| {
                let projector = projector.clone();
                within_deadline(nudge.context.deadline, async move {
                    // Each stream record is a nudge: read the feed from the checkpoint.
                    let mut projector = projector.lock().await;
                    let at = now();
                    let published = projector.tick(at).await?;
                    // The log's figures (owed terminations, the fleet) as EMF;
                    // queue depths are SQS's own CloudWatch metrics.
                    crate::app::metrics::Snapshot::of_views(projector.views(), at).emit(at);
                    Ok::<_, lambda_runtime::Error>(json!({ "published": published.len() }))
                })
            }))
            .await
        }
        "reaper" => {
            let reaper = app.reaper.clone();
            lambda_runtime::run(service_fn(move |tick: LambdaEvent<Value>| {
                let reaper = reaper.clone();
                within_deadline(tick.context.deadline, async move {
                    Ok::<_, lambda_runtime::Error>(serde_json::to_value(reaper.sweep(now()).await?)?)
                })
            }))
            .await
        }
        "rebalancer" => {
            let rebalancer = app.rebalancer.clone();
            lambda_runtime::run(service_fn(move |tick: LambdaEvent<Value>| {
                let rebalancer = rebalancer.clone();
                within_deadline(tick.context.deadline, async move {
                    Ok::<_, lambda_runtime::Error>(serde_json::to_value(rebalancer.tick(now()).await?)?)
                })
            }))
            .await
        }
        other => {
            return Err(LambdaError::Setup(format!(
                "unknown handler {other:?}: one of {}",
                super::LAMBDA_HANDLERS.join(", ")
            )));
        }
    }
    .map_err(|e| LambdaError::Runtime(e.to_string()))
}

/// The archiver (ADR-0024), on a schedule: closes the books, then archives
/// the days past the retention to `JITR_ARCHIVE_BUCKET` (retention
/// `JITR_ARCHIVE_RETENTION_DAYS`, default 90), starting no part in the last
/// minute (a quarter, of a short one) before the invocation's deadline; the
/// next invocation goes on. It
/// needs no GitHub App key: only the log and the bucket.
async fn archiver(prefix: &str) -> Result<(), LambdaError> {
    use crate::app::archive::{DEFAULT_RETENTION_MS, archive};
    let bucket = std::env::var("JITR_ARCHIVE_BUCKET").map_err(|_| {
        LambdaError::Setup(
            "JITR_ARCHIVE_BUCKET is not set: the archiver has nowhere to write".into(),
        )
    })?;
    let retention_ms = match std::env::var("JITR_ARCHIVE_RETENTION_DAYS") {
        Ok(days) => days.parse::<u64>().map(|d| d * 86_400_000).map_err(|e| {
            LambdaError::Setup(format!("JITR_ARCHIVE_RETENTION_DAYS={days:?}: {e}"))
        })?,
        Err(_) => DEFAULT_RETENTION_MS,
    };
    let config = AwsSettings::default().load().await;
    let names = jitr_aws::AwsNames::new(prefix.to_owned());
    let store = Arc::new(jitr_aws::DynamoEventStore::new(
        &config,
        names.events_table(),
    ));
    let objects = Arc::new(jitr_aws::S3Archive::new(&config, bucket, ""));
    lambda_runtime::run(service_fn(move |tick: LambdaEvent<Value>| {
        let (store, objects) = (store.clone(), objects.clone());
        async move {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            // The last minute (a quarter, of a short invocation) is kept for
            // the part in flight.
            let time_left = tick.context.deadline.saturating_sub(now_ms);
            let left = std::time::Duration::from_millis(
                time_left.saturating_sub(60_000.min(time_left / 4)),
            );
            let stop_after = std::time::Instant::now() + left;
            let run = archive(
                &*store,
                &*objects,
                now(),
                retention_ms,
                Some(stop_after),
                |_| {},
            )
            .await?;
            tracing::info!(
                parts = run.parts.len(),
                events = run.parts.iter().map(|p| p.events).sum::<u64>(),
                snapshots = run.snapshots.len(),
                deferred = run.deferred_days.len(),
                stopped_early = run.stopped_early,
                "archived"
            );
            Ok::<_, lambda_runtime::Error>(serde_json::to_value(&run)?)
        }
    }))
    .await
    .map_err(|e| LambdaError::Runtime(e.to_string()))
}

/// Why `jitr lambda` stopped.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// The deployment could not be wired.
    #[error(transparent)]
    Wiring(#[from] super::aws::SetupError),
    /// Something else in the set-up.
    #[error("{0}")]
    Setup(String),
    /// The Lambda runtime failed.
    #[error("lambda runtime: {0}")]
    Runtime(String),
}
