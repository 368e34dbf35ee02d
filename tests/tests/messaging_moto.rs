//! SQS (redrive to the DLQ, poison messages with a reason, visibility back-off),
//! EventBridge → rule → SQS delivery, SSM JIT config hand-over, and the CloudWatch
//! DLQ alarm, all against moto.

use std::time::Duration;

use jitr_aws::{Alarms, EventBridgeBus, SqsQueue, SsmSecrets};
use jitr_domain::{
    ClientToken, FailureStage, InstanceId, StreamId, TerminateRunner, TerminationReason,
};
use jitr_e2e::aws::{config, unique};
use jitr_e2e::fixtures::at;
use jitr_infra::{
    CommandBus, DEAD_LETTER_REASON, JitConfig, Queue, RunnerSecrets, decode_terminate_runner,
};

#[tokio::test]
async fn a_message_received_too_often_is_redriven_to_the_dlq() {
    let config = config().await;
    let (queue, existed) = SqsQueue::ensure(&config, &unique("scaleup"), 2, Duration::ZERO)
        .await
        .unwrap();
    assert!(!existed);
    queue.publish(r#"{"job":1}"#, None, &[]).await.unwrap();
    for expected in 1..=2 {
        let got = queue.receive(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].receive_count, expected);
    }
    // The third receive exceeds maxReceiveCount = 2: the message moves to the DLQ.
    assert!(
        queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(queue.dead_letter_depth().await.unwrap(), 1);
    let dead = queue
        .receive_dead_letters(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(dead[0].body, r#"{"job":1}"#);
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dlq_with_its_reason() {
    let config = config().await;
    let (queue, _) = SqsQueue::ensure(&config, &unique("lifecycle"), 5, Duration::from_secs(30))
        .await
        .unwrap();
    queue
        .publish("not json", None, &[("delivery", "d-1")])
        .await
        .unwrap();
    let got = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        got[0].attributes.get("delivery").map(String::as_str),
        Some("d-1")
    );
    let reason = "malformed workflow_job payload: expected value at line 1 column 1";
    queue.dead_letter(&got[0], reason).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);
    let dead = queue
        .receive_dead_letters(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, "not json");
    assert_eq!(
        dead[0]
            .attributes
            .get(DEAD_LETTER_REASON)
            .map(String::as_str),
        Some(reason)
    );
    assert_eq!(
        dead[0].attributes.get("delivery").map(String::as_str),
        Some("d-1")
    );
}

#[tokio::test]
async fn retry_later_hides_the_message_for_the_back_off() {
    let config = config().await;
    let (queue, _) = SqsQueue::ensure(&config, &unique("backoff"), 5, Duration::from_secs(30))
        .await
        .unwrap();
    queue.publish("quota", None, &[]).await.unwrap();
    let got = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    queue
        .retry_later(&got[0], Duration::from_secs(2))
        .await
        .unwrap();
    assert!(queue.receive(1, Duration::ZERO).await.unwrap().is_empty());
    let again = queue.receive(1, Duration::from_secs(4)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].receive_count, 2);
    queue.ack(&again[0]).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);
    // A delayed publish is invisible at first.
    queue
        .publish("later", Some(Duration::from_secs(2)), &[])
        .await
        .unwrap();
    assert!(queue.receive(1, Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test]
async fn terminate_runner_commands_travel_from_eventbridge_to_the_queue() {
    let config = config().await;
    let (queue, _) = SqsQueue::ensure(&config, &unique("compensation"), 5, Duration::from_secs(30))
        .await
        .unwrap();
    let bus_name = unique("jitr-bus");
    let (bus, setup) = EventBridgeBus::ensure(&config, &bus_name, "jitr-terminate", queue.pair())
        .await
        .unwrap();
    assert!(!setup.bus_existed);
    assert!(setup.rule_arn.contains("jitr-terminate"));
    let (_, again) = EventBridgeBus::ensure(&config, &bus_name, "jitr-terminate", queue.pair())
        .await
        .unwrap();
    assert!(again.bus_existed);

    let stream = StreamId::parse("acme/widgets#42#1").unwrap();
    let command = TerminateRunner {
        stream: stream.clone(),
        instance_id: Some(InstanceId("i-0abc".into())),
        client_token: Some(ClientToken::derive(&stream, 1)),
        reason: TerminationReason::Failure {
            stage: FailureStage::Token,
        },
        owed_since: at(5),
    };
    bus.publish(std::slice::from_ref(&command)).await.unwrap();
    let mut received = Vec::new();
    for _ in 0..5 {
        received = queue.receive(10, Duration::from_secs(2)).await.unwrap();
        if !received.is_empty() {
            break;
        }
    }
    assert_eq!(received.len(), 1, "delivered through the rule's SQS target");
    assert_eq!(decode_terminate_runner(&received[0].body).unwrap(), command);
    assert!(
        decode_terminate_runner(r#"{"source":"other","detail-type":"x","detail":{}}"#).is_err()
    );
}

#[tokio::test]
async fn the_jit_config_is_a_secure_string_deleted_at_termination() {
    let config = config().await;
    let prefix = format!("/{}", unique("jitr"));
    let secrets = SsmSecrets::new(&config, &prefix);
    let instance = InstanceId("i-0123456789abcdef0".into());
    let jit = JitConfig::new("eyJzZWNyZXQiOiJ0b2tlbiJ9");
    assert!(
        !format!("{jit:?}").contains("eyJ"),
        "Debug must not leak the secret"
    );
    let name = secrets.put_jit_config(&instance, &jit).await.unwrap();
    assert_eq!(name, format!("{prefix}/i-0123456789abcdef0/jit-config"));

    let ssm = aws_sdk_ssm::Client::new(&config);
    let stored = ssm
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    let parameter = stored.parameter().unwrap();
    assert_eq!(parameter.value(), Some(jit.expose()));
    assert_eq!(parameter.r#type().map(|t| t.as_str()), Some("SecureString"));

    let tags = ssm
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(&name)
        .send()
        .await
        .unwrap();
    assert!(
        tags.tag_list()
            .iter()
            .any(|t| t.key() == "jitr:instance-id" && t.value() == instance.0),
        "{:?}",
        tags.tag_list()
    );
    // The instance's ARN, as the instance role's policy compares it with
    // `${ec2:SourceInstanceARN}`: the account is the parameter's.
    let account = parameter
        .arn()
        .unwrap()
        .split(':')
        .nth(4)
        .unwrap()
        .to_owned();
    let instance_arn = format!("arn:aws:ec2:us-east-1:{account}:instance/{}", instance.0);
    assert!(
        tags.tag_list()
            .iter()
            .any(|t| t.key() == jitr_aws::TAG_INSTANCE_ARN && t.value() == instance_arn),
        "{:?}",
        tags.tag_list()
    );
    // A second instance's parameter is tagged in its first write.
    let other = InstanceId("i-0fedcba9876543210".into());
    let other_name = secrets.put_jit_config(&other, &jit).await.unwrap();
    let other_tags = ssm
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(&other_name)
        .send()
        .await
        .unwrap();
    assert!(
        other_tags
            .tag_list()
            .iter()
            .any(|t| t.key() == jitr_aws::TAG_INSTANCE_ARN
                && t.value() == format!("arn:aws:ec2:us-east-1:{account}:instance/{}", other.0)),
        "{:?}",
        other_tags.tag_list()
    );
    secrets.delete_jit_config(&other).await.unwrap();

    secrets.delete_jit_config(&instance).await.unwrap();
    secrets.delete_jit_config(&instance).await.unwrap();
    assert!(ssm.get_parameter().name(&name).send().await.is_err());
}

/// Issue 11: real JIT configs are around 4 KB and the Standard tier refuses
/// values over 4,096 characters (moto does not; `TierLimits` plays AWS's check
/// around the real client). A 6 KB config goes to the Advanced tier and round-
/// trips, also when written twice; a Standard-tier write of it is refused.
#[tokio::test]
async fn a_6_kb_jit_config_goes_to_the_advanced_tier() {
    use aws_sdk_ssm::types::{ParameterStringFilter, ParameterTier, ParameterType};
    let config = config().await;
    let prefix = format!("/{}", unique("jitr"));
    let secrets = SsmSecrets::with_tier_limits(&config, &prefix);
    let instance = InstanceId("i-0a6b000000000c6kb".into());
    let big = JitConfig::new("x".repeat(6 * 1024));
    let name = secrets.put_jit_config(&instance, &big).await.unwrap();
    // A redelivered mint writes it again.
    secrets.put_jit_config(&instance, &big).await.unwrap();

    let ssm = aws_sdk_ssm::Client::new(&config);
    let stored = ssm
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.parameter().unwrap().value(), Some(big.expose()));
    let described = ssm
        .describe_parameters()
        .parameter_filters(
            ParameterStringFilter::builder()
                .key("Name")
                .values(&name)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.parameters()[0].tier(),
        Some(&ParameterTier::Advanced)
    );

    // What AWS answers a Standard-tier write of it.
    let limited = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&config)
            .interceptor(jitr_aws::TierLimits)
            .build(),
    );
    let refused = limited
        .put_parameter()
        .name(format!("{prefix}/standard"))
        .value(big.expose())
        .r#type(ParameterType::SecureString)
        .tier(ParameterTier::Standard)
        .send()
        .await
        .unwrap_err();
    let text = aws_sdk_ssm::error::DisplayErrorContext(&refused).to_string();
    assert!(text.contains("4096"), "{text}");
    assert!(
        ssm.get_parameter()
            .name(format!("{prefix}/standard"))
            .send()
            .await
            .is_err()
    );
    secrets.delete_jit_config(&instance).await.unwrap();
}

#[tokio::test]
async fn the_dlq_alarm_is_defined_once() {
    let config = config().await;
    let alarms = Alarms::new(&config);
    let queue = unique("scaleup-dlq");
    assert!(!alarms.ensure_dlq_alarm(&queue, &[]).await.unwrap());
    assert!(
        alarms.ensure_dlq_alarm(&queue, &[]).await.unwrap(),
        "second run changes nothing"
    );
    let states = alarms
        .describe(&[Alarms::dlq_alarm_name(&queue)])
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].queue.as_deref(), Some(queue.as_str()));
    assert_eq!(states[0].threshold, 5.0);
}

/// Issue 11: `JITR_CONFIG` names the pool file by its path, or — for Lambda
/// functions, which have no files of the operator's — an SSM parameter.
#[tokio::test]
async fn the_pool_configuration_is_read_from_a_file_or_an_ssm_parameter() {
    use jitr_handlers::runtime::aws::pool_config_text;
    let config = config().await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/pools.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    assert_eq!(pool_config_text(&config, example).await.unwrap(), text);

    let name = format!("/{}/pools", unique("jitr"));
    aws_sdk_ssm::Client::new(&config)
        .put_parameter()
        .name(&name)
        .value(&text)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    assert_eq!(pool_config_text(&config, &name).await.unwrap(), text);
    assert_eq!(
        pool_config_text(&config, &format!("ssm:{name}"))
            .await
            .unwrap(),
        text
    );
    let missing = pool_config_text(&config, &format!("{name}-missing"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("JITR_CONFIG") && missing.contains("ParameterNotFound"),
        "{missing}"
    );
    let relative = pool_config_text(&config, "pools.toml")
        .await
        .unwrap_err()
        .to_string();
    assert!(relative.contains("no such file"), "{relative}");
}

/// Issue 12: `jitr init` routes EC2's own events to jitr: a rule on the
/// account's default bus matching both EC2 event types, whose target is the
/// deployment's EC2-events queue; a second run finds it unchanged.
#[tokio::test]
async fn init_routes_ec2_state_changes_and_spot_warnings_to_the_ec2_events_queue() {
    let config = jitr_e2e::aws::config().await;
    let names = jitr_aws::AwsNames::new(jitr_e2e::aws::unique("jitr-ev"));
    let first = jitr_aws::provision(&config, &names, 5).await.unwrap();
    let rule = first
        .iter()
        .find(|r| r.kind == "rule")
        .expect("the EC2 events rule is reported");
    assert_eq!(rule.setup, jitr_aws::Setup::Created, "{rule:?}");

    let events = aws_sdk_eventbridge::Client::new(&config);
    let described = events
        .describe_rule()
        .name(names.ec2_events_rule())
        .send()
        .await
        .unwrap();
    assert_eq!(described.event_bus_name(), Some("default"));
    let pattern: serde_json::Value =
        serde_json::from_str(described.event_pattern().unwrap()).unwrap();
    assert_eq!(pattern["source"], serde_json::json!(["aws.ec2"]));
    assert_eq!(
        pattern["detail-type"],
        serde_json::json!([
            "EC2 Instance State-change Notification",
            "EC2 Spot Instance Interruption Warning"
        ])
    );
    let targets = events
        .list_targets_by_rule()
        .rule(names.ec2_events_rule())
        .send()
        .await
        .unwrap();
    let queue = jitr_aws::SqsQueue::find(&config, &names.ec2_events_queue())
        .await
        .unwrap()
        .expect("the EC2 events queue exists");
    let arns: Vec<&str> = targets.targets().iter().map(|t| t.arn()).collect();
    assert_eq!(arns, [queue.pair().arn.as_str()]);

    let second = jitr_aws::provision(&config, &names, 5).await.unwrap();
    assert!(
        second.iter().all(|r| r.setup == jitr_aws::Setup::Unchanged),
        "{second:?}"
    );
}

/// A handler that waits (`RetryAfter`) ten times, then is done, and notes
/// the deliveries it saw.
struct WaitsTenTimes(std::sync::Mutex<Vec<u32>>);

#[async_trait::async_trait]
impl jitr_handlers::runtime::consumer::Consumer for WaitsTenTimes {
    fn name(&self) -> &'static str {
        "waits-ten-times"
    }
    async fn consume(
        &self,
        message: &jitr_infra::QueueMessage,
        _now: jitr_domain::Timestamp,
    ) -> Result<jitr_handlers::app::outcome::Outcome, jitr_handlers::app::outcome::HandlerError>
    {
        use jitr_handlers::app::outcome::Outcome;
        let mut seen = self.0.lock().unwrap();
        seen.push(message.deliveries());
        Ok(if seen.len() <= 10 {
            Outcome::RetryAfter(Duration::ZERO, "not yet".into())
        } else {
            Outcome::Done("served".into())
        })
    }
}

/// Issue 24: on SQS every receive counts toward `maxReceiveCount`, and a
/// handler's wait (a mint back-off after a GitHub 502, an evidence window)
/// must not spend them: the message is sent again delayed, with its
/// attributes, and the receipt deleted. Ten waits on a queue that
/// dead-letters after five receives: served, nothing dead-lettered.
#[tokio::test]
async fn waiting_ten_times_spends_no_receive_and_never_reaches_the_dlq() {
    let config = config().await;
    let (queue, _) = SqsQueue::ensure(&config, &unique("scaleup"), 5, Duration::from_secs(30))
        .await
        .unwrap();
    queue
        .publish(r#"{"job":1}"#, None, &[("delivery", "d-1")])
        .await
        .unwrap();
    let handler = WaitsTenTimes(Default::default());
    let now = || at(0);
    for _ in 0..40 {
        jitr_handlers::runtime::consumer::drain(
            &queue,
            &handler,
            10,
            Duration::from_millis(200),
            &now,
        )
        .await
        .unwrap();
        if handler.0.lock().unwrap().len() == 11 {
            break;
        }
    }
    let seen = handler.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        (1..=11).collect::<Vec<u32>>(),
        "each delivery counted once"
    );
    assert_eq!(queue.dead_letter_depth().await.unwrap(), 0);
    assert_eq!(queue.waiting().await.unwrap(), 0, "done: nothing left");
}

/// Issue 25: the dead-letter tools in passes that hide nothing long and send
/// nothing twice. 30 dead letters: a redrive of 10 of them by id moves exactly
/// those (the 20 others held out of sight during the pass, then back); a
/// redrive of the rest moves each once; a purge of an empty queue is 0.
#[tokio::test]
async fn dead_letters_are_redriven_once_each_page_by_page() {
    let config = config().await;
    let (queue, _) = SqsQueue::ensure(&config, &unique("dlq-pass"), 5, Duration::from_secs(30))
        .await
        .unwrap();
    for n in 0..30 {
        queue.publish(&format!("m-{n}"), None, &[]).await.unwrap();
    }
    let mut dead = 0;
    while dead < 30 {
        for message in queue.receive(10, Duration::from_secs(1)).await.unwrap() {
            queue.dead_letter(&message, "poison").await.unwrap();
            dead += 1;
        }
    }
    let letters = queue.list_dead_letters(100).await.unwrap();
    assert_eq!(letters.len(), 30, "each listed once");
    let chosen: Vec<String> = letters.iter().take(10).map(|l| l.id.clone()).collect();
    let chosen_bodies: std::collections::BTreeSet<String> =
        letters.iter().take(10).map(|l| l.body.clone()).collect();

    let drain = |queue: &SqsQueue| {
        let queue = queue.clone();
        async move {
            let mut bodies = Vec::new();
            loop {
                let page = queue.receive(10, Duration::from_secs(1)).await.unwrap();
                if page.is_empty() {
                    return bodies;
                }
                for m in page {
                    queue.ack(&m).await.unwrap();
                    bodies.push(m.body);
                }
            }
        }
    };
    assert_eq!(queue.redrive(Some(&chosen)).await.unwrap(), 10);
    let moved = drain(&queue).await;
    assert_eq!(moved.len(), 10, "{moved:?}");
    assert_eq!(
        moved
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        chosen_bodies
    );
    assert_eq!(
        queue.dead_letter_depth().await.unwrap(),
        20,
        "the rest back in sight"
    );
    assert_eq!(queue.redrive(None).await.unwrap(), 20);
    let rest = drain(&queue).await;
    let all: std::collections::BTreeSet<String> = moved.iter().chain(&rest).cloned().collect();
    assert_eq!((rest.len(), all.len()), (20, 30), "each message once");
    assert_eq!(queue.dead_letter_depth().await.unwrap(), 0);
    assert_eq!(queue.purge_dead_letters().await.unwrap(), 0);
}
