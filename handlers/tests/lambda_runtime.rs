//! `jitr lambda <handler>` under the Lambda Runtime API, as AWS runs it: each
//! handler is the real `jitr` process, started as `provided.al2023` starts
//! `bootstrap` (no arguments; the handler setting in `_HANDLER`) with the
//! environment Lambda gives a function (`AWS_LAMBDA_RUNTIME_API` and the
//! function's variables),
//! polling a Runtime API served here on loopback
//! (`/2018-06-01/runtime/invocation/next`, `…/{id}/response`, `…/{id}/error`,
//! `/2018-06-01/runtime/init/error`, as the Lambda Developer Guide's "Using
//! the Lambda runtime API for custom runtimes" documents them). The events
//! have the shapes AWS delivers (SQS batches of messages received from moto,
//! a function URL request, a DynamoDB stream batch, a scheduled event), and
//! the effects are read back from moto. GitHub is a wiremock server.

use std::collections::{HashMap, VecDeque};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use jitr_handlers::app::webhook::{JobMessage, sample_payload, sign};
use jitr_infra::Queue;
use serde_json::{Value, json};

#[path = "support/iam.rs"]
mod iam;
#[path = "support/template.rs"]
mod template;

const SECRET: &str = "lambda-secret";
/// The customer managed key the operator's secrets are encrypted under: the
/// strict case, where the account's IAM policies decide who decrypts (under
/// `aws/ssm`, the key's own policy lets any principal of the account decrypt
/// through SSM).
const SECRETS_KEY: &str =
    "arn:aws:kms:us-east-1:123456789012:key/6f1b2c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b";

/// What the function answered for one invocation.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Response(Value),
    Error(Value),
}

#[derive(Default)]
struct Runtime {
    pending: Mutex<VecDeque<(String, Value)>>,
    answers: Mutex<HashMap<String, Answer>>,
    init_error: Mutex<Option<Value>>,
    changed: tokio::sync::Notify,
}

async fn next(State(rt): State<Arc<Runtime>>) -> impl IntoResponse {
    loop {
        let notified = rt.changed.notified();
        if let Some((id, event)) = rt.pending.lock().unwrap().pop_front() {
            let mut headers = HeaderMap::new();
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            headers.insert(
                "lambda-runtime-aws-request-id",
                HeaderValue::from_str(&id).unwrap(),
            );
            headers.insert(
                "lambda-runtime-deadline-ms",
                HeaderValue::from_str(&deadline.to_string()).unwrap(),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:jitr"),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                HeaderValue::from_static("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"),
            );
            return (StatusCode::OK, headers, event.to_string());
        }
        notified.await;
    }
}

async fn respond(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    rt.answers
        .lock()
        .unwrap()
        .insert(id, Answer::Response(value));
    rt.changed.notify_waiters();
    StatusCode::ACCEPTED
}

async fn error(State(rt): State<Arc<Runtime>>, Path(id): Path<String>, body: String) -> StatusCode {
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    rt.answers.lock().unwrap().insert(id, Answer::Error(value));
    rt.changed.notify_waiters();
    StatusCode::ACCEPTED
}

async fn init_error(State(rt): State<Arc<Runtime>>, body: String) -> StatusCode {
    *rt.init_error.lock().unwrap() = Some(serde_json::from_str(&body).unwrap_or(Value::Null));
    rt.changed.notify_waiters();
    StatusCode::ACCEPTED
}

/// One function: the Runtime API on loopback and the `jitr lambda` process
/// polling it.
struct Function {
    runtime: Arc<Runtime>,
    process: Child,
    handler: &'static str,
    invocations: u32,
}

/// Where each function's process records the AWS operations it calls
/// (`JITR_RECORD_AWS_CALLS`), one file per handler.
fn calls_file(handler: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("jitr-calls-{}-{handler}", std::process::id()))
}

impl Function {
    async fn start(handler: &'static str, env: &[(String, String)]) -> Function {
        // Of the deployment's variables, those the template gives this
        // function (secrets by need: ADR-0018).
        let given = template::variables_of(handler);
        let mut env: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| !k.starts_with("JITR_") || given.contains(k))
            .cloned()
            .collect();
        if given.contains("JITR_GITHUB_WITHOUT_KEY") {
            env.push(("JITR_GITHUB_WITHOUT_KEY".into(), "1".into()));
        }
        let runtime = Arc::new(Runtime::default());
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(runtime.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // As provided.al2023 starts `bootstrap`: no arguments, the function's
        // handler setting in `_HANDLER`.
        let process = Command::new(env!("CARGO_BIN_EXE_jitr"))
            .env("_HANDLER", handler)
            .env("JITR_RECORD_AWS_CALLS", calls_file(handler))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_LAMBDA_RUNTIME_API", api)
            .env("AWS_LAMBDA_FUNCTION_NAME", format!("jitr-{handler}"))
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/jitr-{handler}"),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/29/[$LATEST]0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start jitr lambda");
        Function {
            runtime,
            process,
            handler,
            invocations: 0,
        }
    }

    /// Invokes the function with `event` and waits for its answer.
    async fn invoke(&mut self, event: Value) -> Answer {
        self.invocations += 1;
        let id = format!("{}-{}", self.handler, self.invocations);
        self.runtime
            .pending
            .lock()
            .unwrap()
            .push_back((id.clone(), event));
        self.runtime.changed.notify_waiters();
        let started = Instant::now();
        loop {
            let notified = self.runtime.changed.notified();
            if let Some(answer) = self.runtime.answers.lock().unwrap().remove(&id) {
                return answer;
            }
            if let Some(init) = self.runtime.init_error.lock().unwrap().clone() {
                panic!("{}: init error {init}", self.handler);
            }
            if let Ok(Some(status)) = self.process.try_wait() {
                let mut stderr = String::new();
                use std::io::Read;
                let _ = self
                    .process
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr);
                panic!("{}: exited {status}: {stderr}", self.handler);
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}: no answer",
                self.handler
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The deployment the functions share: `jitr init` on moto, and wiremock as
/// GitHub (an installation token; every JIT mint answered 500).
struct Deployment {
    env: Vec<(String, String)>,
    config: jitr_aws::SdkConfig,
    names: jitr_aws::AwsNames,
    /// The stack's parameters, as the template would be deployed for it.
    stack: Vec<(String, String)>,
    /// Values the template cannot name itself (physical ids).
    attributes: Vec<(String, String)>,
    /// What AWS knows of the resources made here, for the IAM evaluation.
    facts: iam::Facts,
    _github: wiremock::MockServer,
}

impl Deployment {
    async fn new() -> Deployment {
        use wiremock::matchers::{method, path, path_regex};
        use wiremock::{Mock, ResponseTemplate};
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .expect("AWS_ENDPOINT_URL must point at moto: run `bash .ci/run`");
        let prefix = format!("jitr-rt-{}", std::process::id());
        let init = Command::new(env!("CARGO_BIN_EXE_jitr"))
            .args(["init", "--prefix", &prefix, "--endpoint", &endpoint])
            .args(["--region", "us-east-1"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .expect("run jitr init");
        assert!(init.status.success(), "{init:?}");
        let github = wiremock::MockServer::start().await;
        Mock::given(method("POST"))
            .and(path_regex(r"^/app/installations/\d+/access_tokens$"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "token": "ghs_runtime",
                "expires_at": "2099-01-01T00:00:00Z"
            })))
            .mount(&github)
            .await;
        Mock::given(method("POST"))
            .and(path(
                "/repos/acme/widgets/actions/runners/generate-jitconfig",
            ))
            .respond_with(ResponseTemplate::new(500).set_body_string("unavailable"))
            .mount(&github)
            .await;
        // A definitive refusal: the launched runner fails, owed its termination.
        Mock::given(method("POST"))
            .and(path(
                "/repos/acme/refused/actions/runners/generate-jitconfig",
            ))
            .respond_with(
                ResponseTemplate::new(422).set_body_json(json!({"message": "Validation Failed"})),
            )
            .mount(&github)
            .await;
        Mock::given(method("POST"))
            .and(path(
                "/repos/acme/gadgets/actions/runners/generate-jitconfig",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "runner": {"id": 41, "name": "jitr-gadgets"},
                "encoded_jit_config": "c2VjcmV0LWppdC1jb25maWc="
            })))
            .mount(&github)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "total_count": 0, "repositories": [], "runners": [], "jobs": [],
                "workflow_runs": [], "runner_groups": []
            })))
            .mount(&github)
            .await;
        // The secrets as the deployment keeps them: SSM SecureStrings, read
        // by each function at its start; the environment only names them.
        let config = jitr_aws::AwsSettings {
            endpoint: Some(endpoint.clone()),
            region: Some("us-east-1".into()),
            static_credentials: None,
        }
        .load()
        .await;
        let ssm = aws_sdk_ssm::Client::new(&config);
        let key = include_str!("../../infra/tests/fixtures/test-app-key.pem");
        let secret_parameter = format!("/{prefix}/webhook-secret");
        let key_parameter = format!("/{prefix}/github-app-key");
        let mut facts = iam::Facts::default();
        for (name, value) in [(&secret_parameter, SECRET), (&key_parameter, key)] {
            ssm.put_parameter()
                .name(name)
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .key_id(SECRETS_KEY)
                .send()
                .await
                .unwrap();
            facts.parameters.insert(
                name.clone(),
                iam::Parameter {
                    key: Some(SECRETS_KEY.into()),
                    tags: Default::default(),
                },
            );
        }
        // What the stack creates beside the tables and queues `jitr init`
        // makes: the runners' network, their role and instance profile.
        let ec2 = aws_sdk_ec2::Client::new(&config);
        let vpc = ec2
            .create_vpc()
            .cidr_block("10.61.0.0/16")
            .send()
            .await
            .unwrap()
            .vpc
            .and_then(|v| v.vpc_id)
            .unwrap();
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block("10.61.1.0/24")
            .send()
            .await
            .unwrap()
            .subnet
            .and_then(|s| s.subnet_id)
            .unwrap();
        let group = ec2
            .create_security_group()
            .group_name(format!("{prefix}-runner"))
            .description("jitr runner instances")
            .vpc_id(&vpc)
            .send()
            .await
            .unwrap()
            .group_id
            .unwrap();
        let iam_client = aws_sdk_iam::Client::new(&config);
        let runner_role = iam_client
            .create_role()
            .role_name(format!("{prefix}-runner"))
            .assume_role_policy_document(
                json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap()
            .role
            .unwrap()
            .arn;
        let profile = iam_client
            .create_instance_profile()
            .instance_profile_name(format!("{prefix}-runner"))
            .send()
            .await
            .unwrap()
            .instance_profile
            .unwrap()
            .arn;
        iam_client
            .add_role_to_instance_profile()
            .instance_profile_name(format!("{prefix}-runner"))
            .role_name(format!("{prefix}-runner"))
            .send()
            .await
            .unwrap();
        facts.profiles.insert(profile.clone(), runner_role);
        // The archive's bucket (ADR-0024).
        let bucket = format!("{prefix}-archive");
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        )
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
        facts.archive_bucket = Some(bucket.clone());
        let ssm_prefix = format!("/{prefix}/runners");
        let env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("JITR_PREFIX", prefix.as_str()),
            ("JITR_WEBHOOK_SECRET_PARAMETER", secret_parameter.as_str()),
            ("JITR_GITHUB_APP_ID", "1"),
            ("JITR_GITHUB_PRIVATE_KEY_PARAMETER", key_parameter.as_str()),
            ("JITR_GITHUB_API", github.uri().as_str()),
            ("JITR_IMAGE", "ami-03cf127a"),
            // As the template sets them.
            ("JITR_SSM_PREFIX", ssm_prefix.as_str()),
            ("JITR_INSTANCE_PROFILE", profile.as_str()),
            ("JITR_SUBNETS", subnet.as_str()),
            ("JITR_SECURITY_GROUPS", group.as_str()),
            ("JITR_ARCHIVE_BUCKET", bucket.as_str()),
            ("JITR_ARCHIVE_RETENTION_DAYS", "15"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let stack = [
            ("Prefix", prefix.as_str()),
            ("GitHubAppId", "1"),
            ("CodeBucket", "jitr-code"),
            ("CodeKey", "jitr.zip"),
            ("WebhookSecretParameter", secret_parameter.as_str()),
            ("GitHubKeyParameter", key_parameter.as_str()),
            ("RunnerImage", "ami-03cf127a"),
            ("VpcId", vpc.as_str()),
            ("Subnets", subnet.as_str()),
            ("AlarmEmail", "ops@example.com"),
            ("ArchiveRetentionDays", "15"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let names = jitr_aws::AwsNames::new(prefix);
        let attributes = vec![
            ("RunnerSecurityGroup.GroupId".to_owned(), group),
            (
                "ArchiveBucket.Arn".to_owned(),
                format!("arn:aws:s3:::{bucket}"),
            ),
            (
                "EventsTable.StreamArn".to_owned(),
                format!(
                    "arn:aws:dynamodb:us-east-1:123456789012:table/{}/stream/2026-11-29T00:00:00.000",
                    names.events_table()
                ),
            ),
        ];
        Deployment {
            env,
            config,
            names,
            stack,
            attributes,
            facts,
            _github: github,
        }
    }

    async fn queue(&self, name: &str) -> jitr_aws::SqsQueue {
        jitr_aws::SqsQueue::find(&self.config, name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} exists after jitr init"))
    }

    /// Publishes `bodies` to `queue` and receives them as Lambda's event
    /// source mapping does: an SQS event of the messages, with their receipt
    /// handles and receive counts.
    async fn sqs_batch(
        &self,
        queue: &jitr_aws::SqsQueue,
        bodies: &[String],
    ) -> (Value, Vec<String>) {
        for body in bodies {
            queue.publish(body, None, &[]).await.unwrap();
        }
        let mut received = Vec::new();
        let started = Instant::now();
        while received.len() < bodies.len() {
            received.extend(queue.receive(10, Duration::from_secs(1)).await.unwrap());
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "messages not received"
            );
        }
        let ids: Vec<String> = received.iter().map(|m| m.id.clone()).collect();
        let records: Vec<Value> = received
            .iter()
            .map(|m| {
                json!({
                    "messageId": m.id,
                    "receiptHandle": m.receipt,
                    "body": m.body,
                    "attributes": {
                        "ApproximateReceiveCount": m.receive_count.to_string(),
                        "SentTimestamp": "1764450000000",
                        "SenderId": "AIDAEXAMPLE",
                        "ApproximateFirstReceiveTimestamp": "1764450000001"
                    },
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": queue.pair().arn,
                    "awsRegion": "us-east-1"
                })
            })
            .collect();
        (json!({ "Records": records }), ids)
    }
}

fn job(job_id: u64, labels: &[&str]) -> String {
    job_in("widgets", job_id, labels)
}

fn job_in(repo: &str, job_id: u64, labels: &[&str]) -> String {
    serde_json::to_string(&JobMessage {
        delivery: format!("runtime-{job_id}"),
        action: "queued".into(),
        installation: 1,
        owner: "acme".into(),
        repo: repo.into(),
        job_id,
        run_id: 77,
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        runner_name: None,
        conclusion: None,
        attempt: 1,
        avoid_spot: Vec::new(),
        runner_id: None,
    })
    .unwrap()
}

fn failed_ids(answer: &Answer) -> Vec<String> {
    let Answer::Response(body) = answer else {
        panic!("an error: {answer:?}");
    };
    body["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("not an SQS batch response: {body}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_answers_the_runtime_api_with_aws_event_shapes() {
    let deployment = Deployment::new().await;
    let env = &deployment.env;
    let names = &deployment.names;

    // Runners that closed 60 days ago, first in the log, for the archiver.
    let log = jitr_aws::DynamoEventStore::new(&deployment.config, names.events_table());
    let old = jitr_handlers::runtime::now().0 - 60 * 86_400_000;
    for n in 0..3 {
        let (stream, events) = jitr_handlers::commands::bench_history::synthetic_life(
            n,
            jitr_domain::Timestamp(old + n as i64 * 3_600_000),
        );
        jitr_infra::EventStore::append(
            &log,
            &stream,
            0,
            &events,
            &jitr_infra::CommandId::new(format!("archived-{n}")),
        )
        .await
        .unwrap();
    }

    // webhook: a function URL request; a bad signature is 401, a good one
    // 202 and the job on the scale-up queue.
    let mut webhook = Function::start("webhook", env).await;
    let body = sample_payload(
        "queued",
        "acme",
        "widgets",
        9,
        &["self-hosted".into()],
        None,
    );
    let request = |signature: String, delivery: &str| {
        json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/",
            "rawQueryString": "",
            "headers": {
                "content-type": "application/json",
                "x-github-event": "workflow_job",
                "x-github-delivery": delivery,
                "x-hub-signature-256": signature,
            },
            "requestContext": {
                "accountId": "anonymous",
                "apiId": "jitrurl",
                "domainName": "jitrurl.lambda-url.us-east-1.on.aws",
                "domainPrefix": "jitrurl",
                "requestId": delivery,
                "routeKey": "$default",
                "stage": "$default",
                "time": "29/Nov/2026:21:00:00 +0000",
                "timeEpoch": 1764450000000u64,
                "http": {
                    "method": "POST", "path": "/", "protocol": "HTTP/1.1",
                    "sourceIp": "192.30.252.1", "userAgent": "GitHub-Hookshot/abc"
                }
            },
            "body": body,
            "isBase64Encoded": false
        })
    };
    let bad = webhook
        .invoke(request(sign(b"not-the-secret", body.as_bytes()), "d-bad"))
        .await;
    assert!(
        matches!(&bad, Answer::Response(r) if r["statusCode"] == 401),
        "{bad:?}"
    );
    let good = webhook
        .invoke(request(sign(SECRET.as_bytes(), body.as_bytes()), "d-good"))
        .await;
    assert!(
        matches!(&good, Answer::Response(r) if r["statusCode"] == 202),
        "{good:?}"
    );
    let scaleup_queue = deployment.queue(&names.scaleup_queue()).await;
    let queued = scaleup_queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "the verified job is queued");
    scaleup_queue.ack(&queued[0]).await.unwrap();
    drop(webhook);

    // scaleup: a batch with a job that launches on moto and whose JIT mint
    // GitHub refuses with a 500 (a wait: sent again delayed, this receipt
    // reported done — ADR-0018), a poison message (moved to the DLQ,
    // reported done) and a job no pool serves (done).
    let mut scaleup = Function::start("scaleup", env).await;
    // And a job whose JIT config GitHub mints (handed over in SSM), and one
    // whose mint GitHub refuses (the runner fails, owed its termination).
    let bodies = [
        job(1, &["self-hosted", "linux", "x64"]),
        "{not json".to_owned(),
        job(2, &["self-hosted", "windows"]),
        job_in("gadgets", 4, &["self-hosted", "linux", "x64"]),
        job_in("refused", 5, &["self-hosted", "linux", "x64"]),
    ];
    let (event, ids) = deployment.sqs_batch(&scaleup_queue, &bodies).await;
    let answer = scaleup.invoke(event).await;
    assert!(failed_ids(&answer).is_empty(), "{answer:?}");
    assert_eq!(ids.len(), 5);
    let store = jitr_aws::DynamoEventStore::new(&deployment.config, names.events_table());
    let served = jitr_domain::StreamId::parse("acme/gadgets#4#1").unwrap();
    let served_runner = jitr_infra::EventStore::head(&store, &served)
        .await
        .unwrap()
        .expect("scale-up opened the runner")
        .state
        .runner_name
        .expect("its JIT config was handed over");
    assert_eq!(scaleup_queue.dead_letter_depth().await.unwrap(), 1);
    // The waiting job comes back as a fresh message once its back-off
    // (5 s) is over, counted as one wait.
    let mut again = Vec::new();
    for _ in 0..10 {
        again = scaleup_queue
            .receive(10, Duration::from_secs(2))
            .await
            .unwrap();
        if !again.is_empty() {
            break;
        }
    }
    let waited = again
        .iter()
        .find(|m| m.body.contains("\"job_id\":1"))
        .unwrap_or_else(|| panic!("the job is sent again: {again:?}"));
    assert_eq!((waited.receive_count, waited.waits()), (1, 1));
    scaleup_queue.ack(waited).await.unwrap();
    drop(scaleup);

    // lifecycle: a poison message and a completed event for no jitr runner.
    let lifecycle_queue = deployment.queue(&names.lifecycle_queue()).await;
    let mut lifecycle = Function::start("lifecycle", env).await;
    let mut completed: JobMessage = serde_json::from_str(&job(3, &["self-hosted"])).unwrap();
    completed.action = "completed".into();
    completed.runner_name = Some("someone-elses-runner".into());
    // And the served job's completion: its runner is owed a termination.
    let mut served_done: JobMessage =
        serde_json::from_str(&job_in("gadgets", 4, &["self-hosted", "linux", "x64"])).unwrap();
    served_done.action = "completed".into();
    served_done.conclusion = Some("success".into());
    served_done.runner_name = Some(served_runner.clone());
    let (event, _) = deployment
        .sqs_batch(
            &lifecycle_queue,
            &[
                serde_json::to_string(&completed).unwrap(),
                "[]".to_owned(),
                serde_json::to_string(&served_done).unwrap(),
            ],
        )
        .await;
    let answer = lifecycle.invoke(event).await;
    assert_eq!(failed_ids(&answer), Vec::<String>::new());
    assert_eq!(lifecycle_queue.dead_letter_depth().await.unwrap(), 1);
    drop(lifecycle);

    // projector: a DynamoDB stream batch is a nudge to fold the log; the
    // runner whose mint GitHub answered 500 is booting, nothing owed; the one
    // whose mint GitHub refused is owed its termination: published to
    // EventBridge.
    let mut projector = Function::start("projector", env).await;
    let stream_batch = json!({
        "Records": [{
            "eventID": "1", "eventName": "INSERT", "eventVersion": "1.1",
            "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
            "dynamodb": {
                "ApproximateCreationDateTime": 1764450000.0,
                "Keys": { "pk": { "S": "acme/widgets#1#1" } },
                "SequenceNumber": "100", "SizeBytes": 64, "StreamViewType": "NEW_IMAGE"
            },
            "eventSourceARN": format!("arn:aws:dynamodb:us-east-1:123456789012:table/{}/stream/2026-11-29T00:00:00.000", names.events_table())
        }]
    });
    let answer = projector.invoke(stream_batch).await;
    assert!(
        matches!(&answer, Answer::Response(r) if r["published"] == 1),
        "{answer:?}"
    );
    drop(projector);

    // compensate: EventBridge's rule delivers the terminate command to SQS
    // wrapped in its envelope; for the launched runner it terminates the
    // instance on moto.
    let compensation_queue = deployment.queue(&names.compensation_queue()).await;
    let stream = jitr_domain::StreamId::parse("acme/widgets#1#1").unwrap();
    let state = jitr_infra::EventStore::head(&store, &stream)
        .await
        .unwrap()
        .expect("scale-up opened the runner")
        .state;
    let instance = state.instance().cloned().expect("launched on moto");
    let owed = jitr_domain::TerminateRunner {
        stream: stream.clone(),
        instance_id: Some(instance.id.clone()),
        client_token: state.launch.as_ref().map(|l| l.client_token.clone()),
        reason: jitr_domain::TerminationReason::Operator,
        owed_since: jitr_domain::Timestamp(1_764_450_000_000),
    };
    let envelope = jitr_infra::encode_terminate_runner(&owed).unwrap();
    let mut compensate = Function::start("compensate", env).await;
    let (event, _) = deployment.sqs_batch(&compensation_queue, &[envelope]).await;
    let answer = compensate.invoke(event).await;
    assert!(matches!(answer, Answer::Response(_)), "{answer:?}");
    let ec2 = jitr_aws::Ec2Compute::new(&deployment.config, vec![]);
    let after = jitr_infra::Compute::describe(&ec2, &instance.id)
        .await
        .unwrap()
        .expect("moto knows it");
    assert!(!after.state.is_live(), "terminated: {after:?}");
    assert!(
        jitr_infra::EventStore::head(&store, &stream)
            .await
            .unwrap()
            .unwrap()
            .status
            .is_terminal(),
        "closed on EC2's word"
    );
    drop(compensate);

    // ec2-events: EC2's state change, through SQS: a jitr instance of this
    // deployment running with no runner owning it is terminated at once.
    let unowned_stream = jitr_domain::StreamId::parse("acme/widgets#99#1").unwrap();
    let deployed =
        jitr_aws::Ec2Compute::new(&deployment.config, vec![]).with_deployment(names.prefix());
    let unowned = jitr_infra::Compute::launch(
        &deployed,
        &jitr_infra::LaunchSpec {
            client_token: jitr_domain::ClientToken::derive(&unowned_stream, 1),
            stream: unowned_stream,
            market: jitr_domain::Market::OnDemand,
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            image: "ami-03cf127a".into(),
            user_data: None,
            settings: Default::default(),
        },
    )
    .await
    .unwrap();
    let events_queue = deployment.queue(&names.ec2_events_queue()).await;
    let mut ec2_events = Function::start("ec2-events", env).await;
    let change = jitr_infra::encode_state_change(
        &unowned.instance_id,
        "running",
        jitr_domain::Timestamp(1_764_450_001_000),
        "us-east-1",
        "123456789012",
    );
    let (event, _) = deployment.sqs_batch(&events_queue, &[change]).await;
    let answer = ec2_events.invoke(event).await;
    assert_eq!(failed_ids(&answer), Vec::<String>::new());
    let gone = jitr_infra::Compute::describe(&deployed, &unowned.instance_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!gone.state.is_live(), "terminated by one event: {gone:?}");
    drop(ec2_events);

    // reaper and rebalancer: EventBridge Scheduler's scheduled event.
    let scheduled = json!({
        "version": "0", "id": "89d1a02d-5ec7-412e-82f5-13505f849b41",
        "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-29T21:01:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/jitr-reaper"],
        "detail": {}
    });
    // Each answers its report: the reaper's sweep, the rebalancer's pass.
    for (handler, field) in [("reaper", "instances_seen"), ("rebalancer", "queued_jobs")] {
        let mut function = Function::start(handler, env).await;
        let answer = function.invoke(scheduled.clone()).await;
        assert!(
            matches!(&answer, Answer::Response(r)
                if r.get(field).is_some() && r["errors"] == json!([])),
            "{handler}: {answer:?}"
        );
    }

    // archiver: the runners closed 60 days ago move to the bucket, counted,
    // then their items get their TTL (ADR-0024).
    let mut archiver = Function::start("archiver", env).await;
    let answer = archiver.invoke(scheduled.clone()).await;
    assert!(
        matches!(&answer, Answer::Response(r)
            if r["parts"].as_array().is_some_and(|p| !p.is_empty())
                && r["stopped_early"] == json!(false)),
        "archiver: {answer:?}"
    );

    // Every AWS request each function made (recorded by the SDK clients'
    // interceptor), as AWS authorises it, is allowed by its role in the
    // deployment template (ADR-0018).
    let mut facts = deployment.facts.clone();
    let mut requests = Vec::new();
    for handler in [
        "webhook",
        "scaleup",
        "lifecycle",
        "projector",
        "compensate",
        "ec2-events",
        "reaper",
        "rebalancer",
        "archiver",
    ] {
        let recorded = std::fs::read_to_string(calls_file(handler))
            .unwrap_or_else(|e| panic!("{handler} recorded no AWS call: {e}"));
        let _ = std::fs::remove_file(calls_file(handler));
        let calls = iam::Call::read_all(&recorded);
        facts
            .instance_tags
            .extend(instance_tags(&deployment.config, &calls).await);
        requests.extend(iam::requests_of(
            &template::role_of(handler),
            &calls,
            &mut facts,
        ));
    }
    let covered: std::collections::BTreeSet<&str> =
        requests.iter().map(|r| r.action.as_str()).collect();
    for action in [
        "ssm:PutParameter",
        "ssm:AddTagsToResource",
        "kms:Decrypt",
        "kms:Encrypt",
        "ec2:RunInstances",
        "iam:PassRole",
        "ec2:TerminateInstances",
        "events:PutEvents",
        "dynamodb:UpdateItem",
        "s3:PutObject",
        "s3:GetObject",
    ] {
        assert!(
            covered.contains(action),
            "the run made no {action} request: {covered:?}"
        );
    }
    fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
    let verdicts = iam::evaluate(
        &pairs(&deployment.stack),
        &pairs(&deployment.attributes),
        &requests,
    );
    iam::assert_all_allowed(&verdicts);
    let roles: std::collections::BTreeSet<&str> =
        requests.iter().map(|r| r.role.as_str()).collect();
    eprintln!(
        "IAM: {} requests ({} distinct actions) of {} roles, all allowed as AWS evaluates them",
        requests.len(),
        covered.len(),
        roles.len()
    );
}

/// The tags of every instance `calls` act on, as EC2 keeps them.
async fn instance_tags(
    config: &jitr_aws::SdkConfig,
    calls: &[iam::Call],
) -> std::collections::HashMap<String, std::collections::BTreeMap<String, String>> {
    let ids: std::collections::BTreeSet<String> = calls
        .iter()
        .filter(|c| c.service == "EC2" && !c.operation.starts_with("Describe"))
        .flat_map(|c| {
            c.body
                .as_deref()
                .unwrap_or_default()
                .split('&')
                .filter(|p| p.starts_with("InstanceId.") || p.starts_with("ResourceId."))
                .filter_map(|p| p.split_once('=').map(|(_, v)| v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    if ids.is_empty() {
        return Default::default();
    }
    let out = aws_sdk_ec2::Client::new(config)
        .describe_instances()
        .set_instance_ids(Some(ids.into_iter().collect()))
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let tags = i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect();
            (i.instance_id().unwrap_or_default().to_owned(), tags)
        })
        .collect()
}
