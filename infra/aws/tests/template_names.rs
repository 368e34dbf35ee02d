//! The deployment template (`infra/deploy/template.yaml`) and `jitr init` create
//! the same names: every name `AwsNames` derives from a prefix (the table, the
//! queues and their dead-letter queues, the buses' rules, the DLQ alarms) is
//! the template's, with `${Prefix}` for the prefix.

use jitr_aws::{Alarms, AwsNames};

const TEMPLATE: &str = include_str!("../../deploy/template.yaml");

/// The values the template gives with `!Sub` (names are all built that way).
fn substituted_names() -> Vec<&'static str> {
    TEMPLATE
        .lines()
        .filter_map(|line| line.split_once(": !Sub ").map(|(_, v)| v.trim()))
        .collect()
}

/// The lines of resource `logical_id` (to the next resource).
fn resource(logical_id: &str) -> String {
    let header = format!("  {logical_id}:");
    let mut lines = TEMPLATE.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "{logical_id} in the template");
    lines
        .take_while(|l| l.starts_with("   ") || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_template_names_every_resource_as_jitr_init_does() {
    let names = AwsNames::new("${Prefix}");
    let subs = substituted_names();
    let mut expected = vec![
        names.events_table(),
        names.bus(),
        names.terminate_rule(),
        names.ec2_events_rule(),
    ];
    for queue in names.queues() {
        let dlq = format!("{queue}-dlq");
        expected.push(Alarms::dlq_alarm_name(&dlq));
        expected.push(queue);
        expected.push(dlq);
    }
    for name in &expected {
        assert!(
            subs.contains(&name.as_str()),
            "the template has no resource named {name}"
        );
    }
    // Each queue's redrive goes to its own dead-letter queue, and the EC2
    // events and terminate rules target the queues init routes them to.
    for (queue, dlq) in [
        ("ScaleupQueue", "ScaleupDlq"),
        ("LifecycleQueue", "LifecycleDlq"),
        ("CompensationQueue", "CompensationDlq"),
        ("Ec2EventsQueue", "Ec2EventsDlq"),
    ] {
        let block = resource(queue);
        assert!(
            block.contains(&format!("deadLetterTargetArn: !GetAtt {dlq}.Arn")),
            "{queue}: {block}"
        );
    }
}

/// What `jitr doctor --aws` looks for in a template deployment has the
/// template's names: each function (named for the handler it runs), the
/// schedules and their targets, the alarm topic every alarm notifies, the
/// runner role and its instance profile.
#[test]
fn the_template_names_what_doctor_looks_for() {
    let names = AwsNames::new("${Prefix}");
    let subs = substituted_names();
    let functions: Vec<(String, String)> = TEMPLATE
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.ends_with("Function:"))
        .map(|l| l.trim().trim_end_matches(':').to_owned())
        .map(|id| {
            let block = resource(&id);
            let handler = block
                .lines()
                .find_map(|l| l.trim().strip_prefix("Handler: "))
                .unwrap_or_else(|| panic!("{id} has a Handler"))
                .to_owned();
            (id, handler)
        })
        .collect();
    assert_eq!(functions.len(), 9, "{functions:?}");
    for (id, handler) in &functions {
        assert!(
            resource(id).contains(&format!("FunctionName: !Sub {}", names.function(handler))),
            "{id} runs {handler} under another name"
        );
    }
    for (handler, rule) in [
        ("reaper", "ReaperSchedule"),
        ("rebalancer", "RebalancerSchedule"),
        ("archiver", "ArchiverSchedule"),
    ] {
        let block = resource(rule);
        let function = &functions.iter().find(|(_, h)| h == handler).unwrap().0;
        assert!(
            block.contains(&format!("Name: !Sub {}", names.schedule_rule(handler)))
                && block.contains("State: ENABLED")
                && block.contains(&format!("Arn: !GetAtt {function}.Arn")),
            "{rule}: {block}"
        );
    }
    for name in [
        names.alarm_topic(),
        names.orphans_alarm(),
        names.runner_role(),
    ] {
        assert!(subs.contains(&name.as_str()), "no resource named {name}");
    }
    assert!(resource("RunnerProfile").contains(&format!(
        "InstanceProfileName: !Sub {}",
        names.runner_role()
    )));
    let alarms: Vec<&str> = TEMPLATE
        .lines()
        .filter(|l| l.trim() == "Type: AWS::CloudWatch::Alarm")
        .collect();
    let notifying = TEMPLATE
        .lines()
        .filter(|l| l.trim() == "AlarmActions: [!Ref AlarmTopic]")
        .count();
    // Four dead-letter queues, orphans reaped, launch configuration errors,
    // a log from a newer version, the owed termination, the projector behind,
    // and each of 9 functions.
    assert_eq!(alarms.len(), 18);
    assert_eq!(notifying, alarms.len(), "every alarm notifies the topic");
}

/// Each queue's visibility timeout is six times its function's timeout (AWS's
/// advice for a queue a function consumes) and what `jitr init` creates.
#[test]
fn queue_visibility_is_six_times_the_function_timeout_and_inits_own() {
    let number = |block: &str, key: &str| -> u64 {
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix(key)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {block}"))
    };
    for (i, (queue, function)) in [
        ("ScaleupQueue", "ScaleupFunction"),
        ("LifecycleQueue", "LifecycleFunction"),
        ("CompensationQueue", "CompensateFunction"),
        ("Ec2EventsQueue", "Ec2EventsFunction"),
    ]
    .into_iter()
    .enumerate()
    {
        let visibility = number(&resource(queue), "VisibilityTimeout:");
        let timeout = number(&resource(function), "Timeout:");
        assert!(
            visibility >= 6 * timeout,
            "{queue}: {visibility} < 6 x {timeout}"
        );
        assert_eq!(
            visibility,
            jitr_aws::VISIBILITY_SECS[i],
            "{queue}: jitr init"
        );
    }
}
