//! `jitr lambda <handler>`: the same handlers behind the AWS Lambda runtime.
//!
//! SQS-driven handlers report partial batch failures (`ReportBatchItemFailures`):
//! a message to retry is given its back-off as visibility and reported failed; a
//! poison message is moved to the DLQ with its reason and reported done.

use std::future::Future;

use aws_lambda_events::event::lambda_function_urls::{
    LambdaFunctionUrlRequest, LambdaFunctionUrlResponse,
};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsMessage};
use jitr_infra::{Queue, QueueMessage};
use serde_json::Value;

use crate::ports::{HandlerError, Outcome, settle};
use crate::webhook::{Delivery, Webhook};

/// The Lambda handlers `jitr lambda` can run.
pub const HANDLERS: [&str; 7] = [
    "webhook",
    "scaleup",
    "lifecycle",
    "projector",
    "compensate",
    "reaper",
    "rebalancer",
];

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

/// Runs `handle` on every record of an SQS batch and reports which failed.
pub async fn process_batch<F, Fut>(
    queue: &dyn Queue,
    records: &[SqsMessage],
    handle: F,
) -> SqsBatchResponse
where
    F: Fn(QueueMessage) -> Fut,
    Fut: Future<Output = Result<Outcome, HandlerError>>,
{
    let mut failures = Vec::new();
    for record in records {
        let message = message(record);
        let outcome = handle(message.clone()).await;
        if settle(queue, &message, outcome, "lambda", false).await {
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
    let reply = hook
        .handle(
            Delivery {
                event: header("x-github-event"),
                id: header("x-github-delivery"),
                signature: header("x-hub-signature-256"),
            },
            &bytes,
        )
        .await;
    response(reply.status, reply.body)
}

fn response(status: u16, body: String) -> LambdaFunctionUrlResponse {
    let mut r = LambdaFunctionUrlResponse::default();
    r.status_code = i64::from(status);
    r.body = Some(body);
    r
}

/// The EventBridge envelopes in a compensation invocation: the event itself, or
/// the bodies of an SQS batch fed by the rule.
pub fn compensation_bodies(event: &Value) -> Vec<(Option<SqsMessage>, String)> {
    match event.get("Records").and_then(Value::as_array) {
        Some(records) => records
            .iter()
            .filter_map(|r| serde_json::from_value::<SqsMessage>(r.clone()).ok())
            .map(|m| {
                let body = m.body.clone().unwrap_or_default();
                (Some(m), body)
            })
            .collect(),
        None => vec![(None, event.to_string())],
    }
}

/// Whether a handler name is one `jitr lambda` knows.
pub fn known(handler: &str) -> bool {
    HANDLERS.contains(&handler)
}
