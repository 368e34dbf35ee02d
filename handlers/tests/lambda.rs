//! The Lambda adapters: SQS partial batch failures and the function-URL webhook.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::lambda_function_urls::LambdaFunctionUrlRequest;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use jitr_domain::Timestamp;
use jitr_handlers::app::outcome::{CrashPoint, HandlerError, Outcome};
use jitr_handlers::app::policy::RunnerPolicy;
use jitr_handlers::app::webhook::{Webhook, sample_payload, sign};
use jitr_handlers::runtime::consumer::Consumer;
use jitr_handlers::runtime::lambda::process_batch;
use jitr_infra::{LocalQueue, ManualClock, Queue, QueueMessage};

/// A consumer whose outcome is the message's body.
struct ByBody;

#[async_trait::async_trait]
impl Consumer for ByBody {
    fn name(&self) -> &'static str {
        "by-body"
    }
    async fn consume(&self, m: &QueueMessage, _now: Timestamp) -> Result<Outcome, HandlerError> {
        match m.body.as_str() {
            "ok" => Ok(Outcome::Done("fine".into())),
            "retry" => Ok(Outcome::RetryAfter(Duration::from_secs(60), "quota".into())),
            "poison" => Ok(Outcome::DeadLetter("malformed".into())),
            _ => Err(HandlerError::Crashed(CrashPoint::AfterLaunched)),
        }
    }
}
use serde_json::json;

fn queue(dir: &std::path::Path, clock: &ManualClock) -> LocalQueue {
    LocalQueue::open(
        dir.join("q.db"),
        "scaleup",
        5,
        Duration::from_secs(30),
        clock.clock(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_batch_reports_only_the_messages_to_retry_and_dead_letters_poison() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(jitr_domain::Timestamp(1_700_000_000_000));
    let q = queue(dir.path(), &clock);
    let received = {
        for body in ["ok", "retry", "poison", "crash"] {
            q.publish(body, None, &[]).await.unwrap();
        }
        q.receive(10, Duration::ZERO).await.unwrap()
    };
    let records = records(&received);
    let now = || Timestamp(1_700_000_000_000);
    let response = process_batch(&q, &records, &ByBody, &now).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // Only the failure is retried in place; the handler that waits is done
    // with this receipt (ADR-0018: a wait spends no receive).
    assert_eq!(failed, [records[3].message_id.as_deref().unwrap()]);
    assert_eq!(
        q.dead_letters().unwrap(),
        vec![("poison".to_string(), "malformed".to_string())]
    );
    // Lambda deletes the records not reported failed.
    for message in &received {
        if !failed.contains(&message.id.as_str()) && message.body != "poison" {
            q.ack(message).await.unwrap();
        }
    }
    // The crash comes back after the visibility timeout; the wait, as a
    // fresh message, after its own delay, counted as a wait.
    clock.advance(30_000);
    let visible = q.receive(10, Duration::ZERO).await.unwrap();
    let bodies: Vec<&str> = visible.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["crash"]);
    clock.advance(30_000);
    let visible = q.receive(10, Duration::ZERO).await.unwrap();
    let waited = visible
        .iter()
        .find(|m| m.body == "retry")
        .expect("sent again");
    assert_eq!((waited.receive_count, waited.waits()), (1, 1));
    assert_eq!(waited.deliveries(), 2);
}

/// SQS records as Lambda delivers them, for messages received from a queue.
fn records(received: &[QueueMessage]) -> Vec<SqsMessage> {
    let records: Vec<serde_json::Value> = received
        .iter()
        .map(|m| {
            json!({
                "messageId": m.id,
                "receiptHandle": m.receipt,
                "body": m.body,
                "attributes": { "ApproximateReceiveCount": m.receive_count.to_string() },
                "messageAttributes": {},
                "eventSource": "aws:sqs",
            })
        })
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
    event.records
}

#[tokio::test]
async fn the_function_url_webhook_verifies_and_enqueues() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(jitr_domain::Timestamp(1_700_000_000_000));
    let scaleup: Arc<dyn Queue> = Arc::new(queue(dir.path(), &clock));
    let lifecycle: Arc<dyn Queue> = Arc::new(
        LocalQueue::open(
            dir.path().join("q.db"),
            "lifecycle",
            5,
            Duration::from_secs(30),
            clock.clock(),
        )
        .unwrap(),
    );
    let hook = Webhook::new(
        "s",
        1 << 20,
        Arc::new(RunnerPolicy::default()),
        scaleup.clone(),
        lifecycle,
    );
    let body = sample_payload(
        "queued",
        "acme",
        "widgets",
        5,
        &["self-hosted".to_string()],
        None,
    );
    let request = |signature: String, base64: bool| -> LambdaFunctionUrlRequest {
        let encoded = if base64 {
            aws_smithy_types::base64::encode(body.as_bytes())
        } else {
            body.clone()
        };
        serde_json::from_value(json!({
            "version": "2.0",
            "rawPath": "/",
            "headers": {
                "x-github-event": "workflow_job",
                "x-github-delivery": format!("d-{base64}-{}", signature.len()),
                "x-hub-signature-256": signature,
            },
            "requestContext": { "timeEpoch": 0, "http": { "method": "POST", "path": "/" } },
            "body": encoded,
            "isBase64Encoded": base64,
        }))
        .unwrap()
    };
    let ok =
        jitr_handlers::runtime::lambda::webhook(&hook, request(sign(b"s", body.as_bytes()), true))
            .await;
    assert_eq!(ok.status_code, 202, "{:?}", ok.body);
    let bad =
        jitr_handlers::runtime::lambda::webhook(&hook, request(sign(b"x", body.as_bytes()), false))
            .await;
    assert_eq!(bad.status_code, 401);
    assert_eq!(scaleup.receive(10, Duration::ZERO).await.unwrap().len(), 1);
}
