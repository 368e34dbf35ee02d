//! The deployment template's environment and the AWS wiring agree: every
//! variable the template gives a function is one the wiring reads, every one
//! the wiring needs is given to every function, and no function is given a
//! secret itself (only the name of the SSM parameter holding it).

use std::collections::BTreeSet;

#[path = "support/template.rs"]
mod template;

use template::{function_environments, functions_by_handler, role_actions, role_of};
const WIRING: [&str; 3] = [
    include_str!("../src/runtime/aws.rs"),
    include_str!("../src/runtime/lambda.rs"),
    include_str!("../src/main.rs"),
];

/// `"JITR_…"` string literals in code (not comments).
fn read_by_the_wiring() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for source in WIRING {
        for line in source.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for piece in code.split('"').skip(1).step_by(2) {
                if piece.starts_with("JITR_")
                    && piece
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
                    names.insert(piece.to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn every_variable_the_template_passes_is_read_and_every_needed_one_passed() {
    let read = read_by_the_wiring();
    let functions = function_environments();
    assert_eq!(
        functions.len(),
        jitr_handlers::runtime::LAMBDA_HANDLERS.len(),
        "one function per handler: {functions:?}"
    );
    let needed = [
        "JITR_PREFIX",
        "JITR_GITHUB_APP_ID",
        "JITR_SSM_PREFIX",
        "JITR_INSTANCE_PROFILE",
        "JITR_SECURITY_GROUPS",
        "JITR_SUBNETS",
    ];
    for (function, vars) in &functions {
        for var in vars {
            assert!(
                read.contains(var),
                "{function} is given {var}, which the wiring never reads"
            );
        }
        // The archiver is wired from the log and its bucket alone (no App).
        let needs: &[&str] = if function == "ArchiverFunction" {
            &["JITR_PREFIX", "JITR_ARCHIVE_BUCKET"]
        } else {
            &needed
        };
        for var in needs {
            assert!(vars.contains(*var), "{function} lacks {var}");
        }
        // Secrets by name only.
        for secret in ["JITR_WEBHOOK_SECRET", "JITR_GITHUB_PRIVATE_KEY"] {
            assert!(
                !vars.contains(secret),
                "{function} is given {secret} in clear"
            );
        }
    }
}

/// Operations the AWS adapters call (`.operation_name()` ... `.send()`), as
/// IAM action names without their service (`GetItem`).
fn adapter_operations() -> BTreeSet<String> {
    let sources = [
        include_str!("../../infra/aws/src/dynamodb.rs"),
        include_str!("../../infra/aws/src/ec2.rs"),
        include_str!("../../infra/aws/src/sqs.rs"),
        include_str!("../../infra/aws/src/ssm.rs"),
        include_str!("../../infra/aws/src/eventbridge.rs"),
        include_str!("../../infra/aws/src/s3.rs"),
    ];
    let mut ops = BTreeSet::new();
    for source in sources {
        for piece in source.split('.').skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !piece[name.len()..].starts_with("()") || name.is_empty() {
                continue;
            }
            let pascal: String = name
                .split('_')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            ops.insert(pascal);
        }
    }
    ops
}

/// Actions a role needs that no adapter call names: what AWS authorises
/// alongside a call (tags at launch, the instance profile's role, the
/// SecureString's key, the items of a transaction) and what Lambda's own
/// pollers and log agent call with the function's role.
const IMPLICIT: [(&str, &str); 14] = [
    ("s3:ListBucket", "ListObjectsV2"),
    ("ec2:CreateTags", "RunInstances with TagSpecifications"),
    (
        "iam:PassRole",
        "RunInstances with the runner's instance profile",
    ),
    ("kms:Decrypt", "GetParameter of a SecureString"),
    ("dynamodb:UpdateItem", "TransactWriteItems"),
    ("dynamodb:ConditionCheckItem", "TransactWriteItems"),
    ("dynamodb:DescribeStream", "the stream event source mapping"),
    ("dynamodb:GetRecords", "the stream event source mapping"),
    (
        "dynamodb:GetShardIterator",
        "the stream event source mapping",
    ),
    ("dynamodb:ListStreams", "the stream event source mapping"),
    ("sqs:ReceiveMessage", "the SQS event source mapping"),
    ("logs:CreateLogStream", "Lambda's log agent"),
    ("logs:PutLogEvents", "Lambda's log agent"),
    ("ssm:AddTagsToResource", "PutParameter with tags"),
];

#[test]
fn no_role_allows_an_operation_nobody_calls() {
    let called = adapter_operations();
    for (handler, _) in functions_by_handler() {
        let role = role_of(&handler);
        for action in role_actions(&role) {
            let op = action.split_once(':').map_or("", |(_, op)| op);
            assert!(
                called.contains(op) || IMPLICIT.iter().any(|(a, _)| *a == action),
                "{role} ({handler}) allows {action}, which no adapter calls"
            );
        }
    }
    // The runner role too (the bootstrap's calls are checked in its own test).
    assert!(
        role_actions("RunnerRole")
            .iter()
            .all(|a| a.starts_with("ssm:") || a == "kms:Decrypt")
    );
}

/// Secrets by need (ADR-0018): only the webhook reads the webhook secret;
/// only the functions that call GitHub read and decrypt the App's key, and
/// the others say they hold none. Each role grants exactly that.
#[test]
fn each_function_reads_only_the_secrets_it_needs() {
    let key_policy = template::resource("GitHubKeyPolicy");
    let secret_policy = template::resource("WebhookSecretPolicy");
    assert!(key_policy.contains("parameter${GitHubKeyParameter}"));
    assert!(!key_policy.contains("WebhookSecretParameter"));
    assert!(secret_policy.contains("parameter${WebhookSecretParameter}"));
    assert!(!secret_policy.contains("GitHubKeyParameter"));
    // Decryption only of that parameter, only through SSM.
    for policy in [&key_policy, &secret_policy] {
        assert!(
            policy.contains("kms:EncryptionContext:PARAMETER_ARN"),
            "{policy}"
        );
        assert!(policy.contains("kms:ViaService"), "{policy}");
    }
    let startup = template::resource("StartupPolicy");
    for secret in ["GitHubKeyParameter", "WebhookSecretParameter"] {
        assert!(
            !startup.contains(secret),
            "every function may read {secret}"
        );
    }
    for (handler, _) in functions_by_handler() {
        let vars = template::variables_of(&handler);
        let role = template::resource(&role_of(&handler));
        let calls_github = !matches!(handler.as_str(), "webhook" | "projector" | "archiver");
        // The archiver is not wired with the App at all: nothing to say.
        let wired_with_app = handler != "archiver";
        assert_eq!(
            vars.contains("JITR_GITHUB_PRIVATE_KEY_PARAMETER"),
            calls_github,
            "{handler}: the App key"
        );
        assert_eq!(
            vars.contains("JITR_GITHUB_WITHOUT_KEY"),
            wired_with_app && !calls_github,
            "{handler}: says it holds no key"
        );
        assert_eq!(role.contains("GitHubKeyPolicy"), calls_github, "{handler}");
        let webhook = handler == "webhook";
        assert_eq!(
            vars.contains("JITR_WEBHOOK_SECRET_PARAMETER"),
            webhook,
            "{handler}: the webhook secret"
        );
        assert_eq!(role.contains("WebhookSecretPolicy"), webhook, "{handler}");
    }
}

/// Alarms on the promise (ADR-0018): a termination owed for more than ten
/// minutes, on the figure jitr emits; every function's errors and throttles;
/// the projector falling behind its stream. Each notifies the alarm topic.
#[test]
fn the_promise_and_every_function_are_alarmed() {
    use jitr_handlers::app::metrics::{OLDEST_OWED, OWED_TERMINATIONS};
    let owed = template::resource("OwedTerminationAlarm");
    assert!(
        owed.contains(&format!("MetricName: {}", OLDEST_OWED.emf)),
        "{owed}"
    );
    assert!(owed.contains("Namespace: jitr") && owed.contains("Threshold: 600"));
    assert_eq!(OWED_TERMINATIONS.emf, "OwedTerminations");
    let behind = template::resource("ProjectorIteratorAgeAlarm");
    assert!(behind.contains("MetricName: IteratorAge"));
    assert!(behind.contains("Value: !Ref ProjectorFunction"));
    let mut alarms = vec![owed, behind];
    for (handler, function) in functions_by_handler() {
        let logical = function.trim_end_matches("Function");
        let alarm = template::resource(&format!("{logical}FailingAlarm"));
        for metric in ["MetricName: Errors", "MetricName: Throttles"] {
            assert!(alarm.contains(metric), "{handler}: {metric}");
        }
        assert!(
            alarm.contains(&format!("Value: !Ref {function}")),
            "{handler}: its own function"
        );
        alarms.push(alarm);
    }
    for alarm in alarms {
        assert!(alarm.contains("AlarmActions: [!Ref AlarmTopic]"), "{alarm}");
    }
    let count = template::TEMPLATE
        .matches("Type: AWS::CloudWatch::Alarm")
        .count();
    let deploy = include_str!("../../docs/deploy.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        deploy.contains(&format!("{count} CloudWatch alarms")),
        "docs/deploy.md counts the template's {count} alarms"
    );
}

/// The runner image recipe (`infra/image/template.yaml`) builds with exactly
/// the install script CI runs in a Debian chroot (`infra/image/check.sh`).
#[test]
fn the_image_recipe_embeds_the_install_script_ci_runs() {
    let template = include_str!("../../infra/image/template.yaml");
    let script = include_str!("../../infra/image/install-runner.sh");
    let marker = "                    - |\n";
    let start = template.find(marker).expect("the component's command") + marker.len();
    let end = start
        + template[start..]
            .find("\n  RunnerRecipe:")
            .expect("the recipe after the component");
    let embedded: String = template[start..end]
        .lines()
        .map(|l| l.strip_prefix(&" ".repeat(22)).unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        embedded.trim_end(),
        script.trim_end(),
        "infra/image/template.yaml embeds another script than infra/image/install-runner.sh"
    );
    assert!(script.contains("RUNNER_SHA256_X64=") && script.contains("RUNNER_SHA256_ARM64="));
    assert!(template.contains("/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/"));
}

/// Every resource of a type CloudFormation tags carries the deployment's tag
/// (the stack's own tags, `cloudformation deploy --tags`, come on top).
#[test]
fn every_taggable_resource_is_tagged_with_the_deployment() {
    const TAGGABLE: [&str; 12] = [
        "AWS::Athena::WorkGroup",
        "AWS::CloudWatch::Alarm",
        "AWS::DynamoDB::Table",
        "AWS::EC2::SecurityGroup",
        "AWS::Events::EventBus",
        "AWS::IAM::Role",
        "AWS::Lambda::Function",
        "AWS::Lambda::EventSourceMapping",
        "AWS::Logs::LogGroup",
        "AWS::S3::Bucket",
        "AWS::SNS::Topic",
        "AWS::SQS::Queue",
    ];
    let lines: Vec<&str> = template::TEMPLATE.lines().collect();
    let mut tagged = 0;
    for pair in lines.windows(2) {
        let (header, kind) = (pair[0], pair[1].trim());
        let Some(kind) = kind.strip_prefix("Type: ") else {
            continue;
        };
        if !header.starts_with("  ") || header.starts_with("   ") || !TAGGABLE.contains(&kind) {
            continue;
        }
        let id = header.trim().trim_end_matches(':');
        let block = template::resource(id);
        assert!(
            block.contains(r#"Tags: [{ Key: "jitr:deployment", Value: !Ref Prefix }]"#),
            "{id} ({kind}) has no jitr:deployment tag"
        );
        tagged += 1;
    }
    assert!(tagged >= 58, "{tagged} tagged resources");
}

/// Athena's tables (ADR-0024) read the columns the archiver writes, in its
/// order, with Athena's types, partitioned by `day` as the parts are.
#[test]
fn the_archive_tables_read_what_the_archiver_writes() {
    use arrow_schema::DataType;
    let athena = |t: &DataType| match t {
        DataType::Int64 => "bigint",
        DataType::Int32 => "int",
        DataType::Utf8 => "string",
        DataType::Timestamp(_, _) => "timestamp",
        other => panic!("no Athena type for {other}"),
    };
    for (logical, schema, table) in [
        (
            "ArchiveEventsTable",
            jitr_infra::archive::events_schema(),
            jitr_infra::archive::EVENTS,
        ),
        (
            "ArchiveRunnersTable",
            jitr_handlers::app::archive::runners_schema(),
            jitr_infra::archive::RUNNERS,
        ),
    ] {
        let block = template::resource(logical);
        let columns: Vec<(String, String)> = block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- { Name: "))
            .filter_map(|rest| {
                let (name, kind) = rest.strip_suffix(" }")?.split_once(", Type: ")?;
                Some((name.to_owned(), kind.to_owned()))
            })
            .collect();
        let written: Vec<(String, String)> = schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), athena(f.data_type()).to_owned()))
            .collect();
        assert_eq!(columns, written, "{logical}");
        assert!(block.contains(&format!("Name: {table}\n")), "{logical}");
        assert!(block.contains("PartitionKeys: [{ Name: day, Type: string }]"));
        assert!(
            block.contains(&format!("/{table}/day=${{!day}}")),
            "{logical}"
        );
    }
}
