//! The deployment template's roles refuse what they must, as AWS evaluates
//! them (`@cloud-copilot/iam-simulate`, through `support/iam.rs`): the
//! boundaries the grants are written for — another deployment's instances, an
//! untagged launch, another role passed, a secret a function does not need,
//! another instance's JIT config — each checked beside the request it bounds,
//! which is allowed. The requests each handler really makes are evaluated by
//! the Runtime-API test (`lambda_runtime.rs`) and the bootstrap's by
//! `tests/tests/bootstrap.rs`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

#[path = "support/iam.rs"]
mod iam;

const PREFIX: &str = "jitr-prod";

fn request(role: &str, action: &str, resource: &str, context: &[(&str, Value)]) -> iam::Request {
    iam::Request {
        role: role.to_owned(),
        action: action.to_owned(),
        resource: resource.to_owned(),
        context: context
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        resource_policy: None,
        call: "constructed".into(),
    }
}

fn arn(service: &str, resource: &str) -> String {
    format!("arn:aws:{service}:us-east-1:123456789012:{resource}")
}

/// A customer managed key under KMS's default key policy: IAM decides.
fn under_customer_key(mut r: iam::Request) -> iam::Request {
    r.resource_policy = Some(json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "kms:*", "Resource": "*"}]
    }));
    r
}

fn decrypt(role: &str, parameter: &str) -> iam::Request {
    under_customer_key(request(
        role,
        "kms:Decrypt",
        &arn("kms", "key/6f1b2c1e-3a4d-4e5f-8a9b-0c1d2e3f4a5b"),
        &[
            ("kms:ViaService", json!("ssm.us-east-1.amazonaws.com")),
            ("kms:CallerAccount", json!("123456789012")),
            (
                "kms:EncryptionContext:PARAMETER_ARN",
                json!(iam::parameter_arn(parameter)),
            ),
        ],
    ))
}

#[test]
fn each_role_is_refused_what_its_grants_bound_and_allowed_what_they_grant() {
    let own = json!(PREFIX);
    let other = json!("jitr-staging");
    let instance = arn("ec2", "instance/i-0a1b2c3d4e5f60718");
    let launch = |tag: &Value| {
        request(
            "ScaleupRole",
            "ec2:RunInstances",
            &arn("ec2", "instance/*"),
            &[
                ("aws:RequestTag/jitr:deployment", tag.clone()),
                ("aws:TagKeys", json!(["jitr:deployment"])),
            ],
        )
    };
    let runner_role = format!("arn:aws:iam::123456789012:role/{PREFIX}-runner");
    let pass = |role: &str| {
        request(
            "ScaleupRole",
            "iam:PassRole",
            role,
            &[("iam:PassedToService", json!("ec2.amazonaws.com"))],
        )
    };
    let jit = |instance: &str| format!("/{PREFIX}/runners/{instance}/jit-config");
    let runner_reads = |parameter_of: &str, caller: &str| {
        request(
            "RunnerRole",
            "ssm:GetParameter",
            &iam::parameter_arn(&jit(parameter_of)),
            &[
                (
                    "ssm:resourceTag/jitr:instance-arn",
                    json!(arn("ec2", &format!("instance/{parameter_of}"))),
                ),
                (
                    "ec2:SourceInstanceARN",
                    json!(arn("ec2", &format!("instance/{caller}"))),
                ),
            ],
        )
    };
    let on_instance = |role: &str, action: &str, tag: &Value| {
        request(
            role,
            action,
            &instance,
            &[("aws:ResourceTag/jitr:deployment", tag.clone())],
        )
    };
    let terminate = |role: &str, tag: &Value| on_instance(role, "ec2:TerminateInstances", tag);
    let webhook_secret = format!("/{PREFIX}/webhook-secret");
    let app_key = format!("/{PREFIX}/github-app-key");
    let read =
        |role: &str, name: &str| request(role, "ssm:GetParameter", &iam::parameter_arn(name), &[]);
    // (request, allowed as AWS evaluates it)
    let cases = [
        (launch(&own), true),
        (launch(&other), false),
        (pass(&runner_role), true),
        (pass("arn:aws:iam::123456789012:role/Administrator"), false),
        (terminate("CompensateRole", &own), true),
        (terminate("CompensateRole", &other), false),
        (terminate("ReaperRole", &other), false),
        (terminate("ScaleupRole", &own), false),
        // A stopped pool (ADR-0022): scale-up starts, the reaper stops, and
        // only this deployment's instances.
        (on_instance("ScaleupRole", "ec2:StartInstances", &own), true),
        (
            on_instance("ScaleupRole", "ec2:StartInstances", &other),
            false,
        ),
        (on_instance("ScaleupRole", "ec2:StopInstances", &own), false),
        (on_instance("ReaperRole", "ec2:StopInstances", &own), true),
        (
            on_instance("ReaperRole", "ec2:StopInstances", &other),
            false,
        ),
        (on_instance("ReaperRole", "ec2:StartInstances", &own), false),
        (read("WebhookRole", &webhook_secret), true),
        (decrypt("WebhookRole", &webhook_secret), true),
        (read("WebhookRole", &app_key), false),
        (decrypt("WebhookRole", &app_key), false),
        (read("ProjectorRole", &app_key), false),
        (read("ScaleupRole", &app_key), true),
        (decrypt("ScaleupRole", &app_key), true),
        (decrypt("ScaleupRole", &webhook_secret), false),
        (
            runner_reads("i-0a1b2c3d4e5f60718", "i-0a1b2c3d4e5f60718"),
            true,
        ),
        (
            runner_reads("i-0ffffffffffffffff", "i-0a1b2c3d4e5f60718"),
            false,
        ),
        (
            request(
                "ScaleupRole",
                "ssm:GetParameter",
                &iam::parameter_arn(&jit("i-0a1b2c3d4e5f60718")),
                &[],
            ),
            true,
        ),
        (
            request(
                "ScaleupRole",
                "ssm:PutParameter",
                &iam::parameter_arn("/jitr-staging/runners/i-0a1b2c3d4e5f60718/jit-config"),
                &[],
            ),
            false,
        ),
    ];
    let stack = [
        ("Prefix", PREFIX),
        ("GitHubAppId", "1"),
        ("CodeBucket", "jitr-code"),
        ("CodeKey", "jitr.zip"),
        ("WebhookSecretParameter", webhook_secret.as_str()),
        ("GitHubKeyParameter", app_key.as_str()),
        ("VpcId", "vpc-0a1b2c3d"),
        ("Subnets", "subnet-0a1b2c3d"),
        ("AlarmEmail", "ops@example.com"),
    ];
    let attributes = [
        ("RunnerSecurityGroup.GroupId", "sg-0a1b2c3d"),
        (
            "EventsTable.StreamArn",
            "arn:aws:dynamodb:us-east-1:123456789012:table/jitr-prod-events/stream/2026-11-29T00:00:00.000",
        ),
    ];
    let requests: Vec<iam::Request> = cases.iter().map(|(r, _)| r.clone()).collect();
    let verdicts = iam::evaluate(&stack, &attributes, &requests);
    let wrong: Vec<String> = verdicts
        .iter()
        .zip(&cases)
        .filter(|(v, (_, allowed))| v.allowed() != *allowed || !v.ignored.is_empty())
        .map(|(v, (_, allowed))| {
            format!(
                "expected allowed={allowed}: {v} (ignored keys {:?})",
                v.ignored
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
