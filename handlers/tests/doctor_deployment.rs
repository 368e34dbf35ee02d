//! `jitr doctor --aws` on a deployment shaped as `infra/deploy/template.yaml`
//! makes it, on moto: the resources `jitr init` creates, plus the eight
//! functions, their mappings, the webhook's URL, the schedules, the alarms'
//! notifications and the runner role, made here through the SDK (moto's
//! CloudFormation cannot create the template: it fails on the function URL's
//! output and on the bus reference). The deployment is first whole — doctor
//! passes — then broken the ways an operator meets, and doctor names each.

use std::process::Command;

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Environment, FunctionCode, FunctionResponseType, FunctionUrlAuthType};

/// An empty zip archive (its end-of-central-directory record only): moto
/// stores the code without running it.
const EMPTY_ZIP: [u8; 22] = [
    0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn trust(service: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"Service":"{service}"}},"Action":"sts:AssumeRole"}}]}}"#
    )
}

struct Doctor {
    endpoint: String,
    prefix: String,
}

impl Doctor {
    fn run(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_jitr"))
            .args(args)
            .args([
                "--prefix",
                &self.prefix,
                "--endpoint",
                &self.endpoint,
                "--region",
                "us-east-1",
            ])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("JITR_WEBHOOK_SECRET_PARAMETER", "/jitr/webhook-secret")
            .env_remove("JITR_WEBHOOK_SECRET")
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

/// The finding lines whose check column starts with `check`.
fn lines<'a>(text: &'a str, check: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.get(6..).is_some_and(|rest| rest.starts_with(check)))
        .collect()
}

#[tokio::test]
async fn doctor_checks_a_template_deployment_and_names_what_is_missing() {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL must point at moto: run `bash .ci/run`");
    let prefix = format!("jitr-dd-{}", std::process::id());
    let doctor = Doctor {
        endpoint: endpoint.clone(),
        prefix: prefix.clone(),
    };
    let names = jitr_aws::AwsNames::new(&prefix);
    let (code, text) = doctor.run(&["init"]);
    assert_eq!(code, Some(0), "{text}");

    // Before any function: `init` + `serve --aws` is not a template deployment.
    let (code, text) = doctor.run(&["doctor", "--aws"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("not a template deployment"), "{text}");

    let config = jitr_aws::AwsSettings::emulator(&endpoint).load().await;
    let iam = jitr_aws::calls::iam(&config);
    let lambda = jitr_aws::calls::lambda(&config);
    let events = jitr_aws::calls::eventbridge(&config);
    let cloudwatch = jitr_aws::calls::cloudwatch(&config);

    // The runner role and profile, and the functions' roles: the scale-up
    // role may pass the runner role to EC2 only (the template's statement).
    let runner = names.runner_role();
    let runner_arn = iam
        .create_role()
        .role_name(&runner)
        .assume_role_policy_document(trust("ec2.amazonaws.com"))
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .arn()
        .to_owned();
    let profile_arn = iam
        .create_instance_profile()
        .instance_profile_name(&runner)
        .send()
        .await
        .unwrap()
        .instance_profile()
        .unwrap()
        .arn()
        .to_owned();
    iam.add_role_to_instance_profile()
        .instance_profile_name(&runner)
        .role_name(&runner)
        .send()
        .await
        .unwrap();
    let scaleup_role = format!("{prefix}-scaleup");
    let mut role_arns = std::collections::HashMap::new();
    for role in [scaleup_role.clone(), format!("{prefix}-functions")] {
        let arn = iam
            .create_role()
            .role_name(&role)
            .assume_role_policy_document(trust("lambda.amazonaws.com"))
            .send()
            .await
            .unwrap()
            .role()
            .unwrap()
            .arn()
            .to_owned();
        role_arns.insert(role, arn);
    }
    let pass_runner_role = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"PassOnlyTheRunnerRole","Effect":"Allow","Action":"iam:PassRole","Resource":"{runner_arn}","Condition":{{"StringEquals":{{"iam:PassedToService":"ec2.amazonaws.com"}}}}}}]}}"#
    );
    iam.put_role_policy()
        .role_name(&scaleup_role)
        .policy_name("scaleup")
        .policy_document(&pass_runner_role)
        .send()
        .await
        .unwrap();

    // The eight functions, as the template configures them.
    let mut function_arns = std::collections::HashMap::new();
    for handler in jitr_handlers::runtime::LAMBDA_HANDLERS {
        let role = if handler == "scaleup" {
            &role_arns[&scaleup_role]
        } else {
            &role_arns[&format!("{prefix}-functions")]
        };
        let environment = Environment::builder()
            .variables("JITR_PREFIX", &prefix)
            .variables("JITR_GITHUB_APP_ID", "1")
            .variables("JITR_IMAGE", "ami-12c6146b")
            .variables("JITR_INSTANCE_PROFILE", &profile_arn)
            .variables("JITR_WEBHOOK_SECRET_PARAMETER", "/jitr/webhook-secret")
            .build();
        let created = lambda
            .create_function()
            .function_name(names.function(handler))
            .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
            .handler(handler)
            .role(role)
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(EMPTY_ZIP))
                    .build(),
            )
            .environment(environment)
            .send()
            .await
            .unwrap();
        function_arns.insert(handler, created.function_arn().unwrap().to_owned());
    }

    // What invokes them: the four queues, the table's stream, the URL, the
    // schedules.
    let mut scaleup_mapping = None;
    for (handler, queue) in [
        ("scaleup", names.scaleup_queue()),
        ("lifecycle", names.lifecycle_queue()),
        ("compensate", names.compensation_queue()),
        ("ec2-events", names.ec2_events_queue()),
    ] {
        let arn = jitr_aws::SqsQueue::find(&config, &queue)
            .await
            .unwrap()
            .unwrap()
            .pair()
            .arn
            .clone();
        let mapping = lambda
            .create_event_source_mapping()
            .function_name(names.function(handler))
            .event_source_arn(arn)
            .batch_size(10)
            .function_response_types(FunctionResponseType::ReportBatchItemFailures)
            // As the template bounds them.
            .scaling_config(
                aws_sdk_lambda::types::ScalingConfig::builder()
                    .maximum_concurrency(if handler == "scaleup" { 10 } else { 5 })
                    .build(),
            )
            .send()
            .await
            .unwrap();
        if handler == "scaleup" {
            scaleup_mapping = mapping.uuid().map(str::to_owned);
        }
    }
    let stream = jitr_aws::Deployment::new(&config)
        .table_stream(&names.events_table())
        .await
        .unwrap()
        .expect("init gives the event table a stream");
    lambda
        .create_event_source_mapping()
        .function_name(names.function("projector"))
        .event_source_arn(&stream)
        .starting_position(aws_sdk_lambda::types::EventSourcePosition::Latest)
        .batch_size(100)
        .send()
        .await
        .unwrap();
    lambda
        .create_function_url_config()
        .function_name(names.function("webhook"))
        .auth_type(FunctionUrlAuthType::None)
        .send()
        .await
        .unwrap();
    for (handler, rate) in [
        ("reaper", "rate(1 minute)"),
        ("rebalancer", "rate(1 minute)"),
        ("archiver", "rate(1 hour)"),
    ] {
        let rule = names.schedule_rule(handler);
        events
            .put_rule()
            .name(&rule)
            .schedule_expression(rate)
            .state(aws_sdk_eventbridge::types::RuleState::Enabled)
            .send()
            .await
            .unwrap();
        events
            .put_targets()
            .rule(&rule)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id(handler)
                    .arn(&function_arns[handler])
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    // Every alarm notifies the topic: init's DLQ alarms, and the orphans alarm.
    let topic = format!("arn:aws:sns:us-east-1:123456789012:{}", names.alarm_topic());
    let alarms = jitr_aws::Alarms::new(&config);
    for queue in names.queues() {
        alarms
            .ensure_dlq_alarm(&format!("{queue}-dlq"), std::slice::from_ref(&topic))
            .await
            .unwrap();
    }
    let orphans_alarm = |actions: Vec<String>| {
        cloudwatch
            .put_metric_alarm()
            .alarm_name(names.orphans_alarm())
            .namespace("jitr")
            .metric_name("OrphansReaped")
            .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
            .period(300)
            .evaluation_periods(1)
            .threshold(0.0)
            .comparison_operator(
                aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
            )
            .set_alarm_actions(Some(actions))
            .send()
    };
    orphans_alarm(vec![topic.clone()]).await.unwrap();

    // The account's EC2 Spot service-linked role, as AWS names it (moto's
    // CreateServiceLinkedRole names it AWSServiceRoleForspot: a plain role
    // stands for it).
    let spot_role = jitr_aws::SPOT_SERVICE_LINKED_ROLE;
    let created = iam
        .create_role()
        .role_name(spot_role)
        .path("/aws-service-role/spot.amazonaws.com/")
        .assume_role_policy_document(trust("spot.amazonaws.com"))
        .send()
        .await;
    if let Err(e) = created {
        assert_eq!(
            aws_sdk_iam_code(&e).as_deref(),
            Some("EntityAlreadyExists"),
            "{e:?}"
        );
    }

    let (code, text) = doctor.run(&["doctor", "--aws"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("9 of 9 present, active, each running its own handler"),
        "{text}"
    );
    assert!(
        lines(&text, "spot service-linked role")[0].starts_with("ok"),
        "{text}"
    );
    for handler in [
        "scaleup",
        "lifecycle",
        "compensate",
        "ec2-events",
        "projector",
    ] {
        let found = lines(&text, &format!("mapping {}", names.function(handler)));
        assert!(
            found.len() == 1 && found[0].starts_with("ok") && found[0].contains("enabled from"),
            "{handler}: {text}"
        );
    }
    assert!(
        lines(&text, "webhook URL")[0].contains(".lambda-url.us-east-1.on.aws"),
        "{text}"
    );
    assert!(text.contains(&format!("5 alarms notify {topic}")), "{text}");
    assert!(
        lines(&text, "image of pool default")[0].starts_with("ok")
            && text.contains("ami-12c6146b, x86_64"),
        "{text}"
    );
    // (Other tests' functions on the same moto may hold reservations.)
    let concurrency = lines(&text, "Lambda concurrency")[0];
    assert!(
        concurrency.starts_with("ok")
            && concurrency.contains("quota 1000 (")
            && concurrency.contains("jitr may use 29 at once; reserved: none"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{runner_arn} passable to EC2 by {scaleup_role} (pools default)"
        )),
        "{text}"
    );

    // Broken as an operator meets it.
    lambda
        .update_event_source_mapping()
        .uuid(scaleup_mapping.unwrap())
        .enabled(false)
        .send()
        .await
        .unwrap();
    events
        .disable_rule()
        .name(names.schedule_rule("reaper"))
        .send()
        .await
        .unwrap();
    lambda
        .delete_function()
        .function_name(names.function("rebalancer"))
        .send()
        .await
        .unwrap();
    lambda
        .update_function_configuration()
        .function_name(names.function("lifecycle"))
        .handler("webhook")
        .send()
        .await
        .unwrap();
    iam.delete_role_policy()
        .role_name(&scaleup_role)
        .policy_name("scaleup")
        .send()
        .await
        .unwrap();
    orphans_alarm(vec![]).await.unwrap();
    iam.delete_role().role_name(spot_role).send().await.unwrap();
    let scaleup_now = jitr_aws::Deployment::new(&config)
        .function(&names.function("scaleup"))
        .await
        .unwrap()
        .unwrap();
    let mut moved = Environment::builder();
    for (k, v) in &scaleup_now.environment {
        let v = if k == "JITR_IMAGE" {
            "ami-0000000000000dead"
        } else {
            v
        };
        moved = moved.variables(k, v);
    }
    lambda
        .update_function_configuration()
        .function_name(names.function("scaleup"))
        .timeout(60)
        .environment(moved.build())
        .send()
        .await
        .unwrap();
    lambda
        .put_function_concurrency()
        .function_name(names.function("scaleup"))
        .reserved_concurrent_executions(2)
        .send()
        .await
        .unwrap();

    let (code, text) = doctor.run(&["doctor", "--aws"]);
    assert_eq!(code, Some(1), "{text}");
    let warned = |check: &str, says: &str| {
        assert!(
            lines(&text, check)
                .iter()
                .any(|l| l.starts_with("WARN") && l.contains(says)),
            "{check}: {says}\n{text}"
        );
    };
    warned(
        &format!("mapping {}", names.function("scaleup")),
        "Disabled from",
    );
    warned(
        &format!("schedule {}", names.schedule_rule("reaper")),
        "DISABLED: the reaper does not run",
    );
    warned(
        "functions",
        &format!("missing: {}", names.function("rebalancer")),
    );
    warned(
        &format!("function {}", names.function("lifecycle")),
        "its Handler is \"webhook\"",
    );
    warned(
        &format!("runner role ({runner})"),
        &format!("{scaleup_role} may not pass {runner_arn} to EC2 (iam:PassRole)"),
    );
    warned(
        "alarm notifications",
        &format!("{} (does not notify the topic)", names.orphans_alarm()),
    );
    warned(
        &format!("queue {}", names.scaleup_queue()),
        &format!(
            "visibility timeout 330 s is under six times {}'s timeout (60 s)",
            names.function("scaleup")
        ),
    );
    warned("image of pool default", "InvalidAMIID.NotFound");
    warned(
        "Lambda concurrency",
        &format!(
            "{} reserves 2 but its queue's mapping invokes up to 10 at once",
            names.function("scaleup")
        ),
    );
    warned(
        "spot service-linked role",
        "create-service-linked-role --aws-service-name spot.amazonaws.com",
    );
    // What still holds is still said to hold.
    assert!(text.contains("7 of 9 present"), "{text}");
    assert!(
        lines(&text, &format!("mapping {}", names.function("projector")))[0].starts_with("ok"),
        "{text}"
    );
}

/// The error code of an IAM call's failure.
fn aws_sdk_iam_code<E: aws_sdk_iam::error::ProvideErrorMetadata>(e: &E) -> Option<String> {
    e.code().map(str::to_owned)
}
