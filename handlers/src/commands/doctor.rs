//! `jitr doctor`: what an operator checks first — dead-letter queues, alarms,
//! instances against open runners, configuration — in plain words.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use jitr_domain::{InstanceId, Timestamp};
use jitr_infra::{Compute, DLQ_ALARM_THRESHOLD, EventStore, Queue};
use serde::Serialize;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Needs an operator.
    Warn,
    /// The check itself failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Error => "FAIL",
        })
    }
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// What was checked.
    pub check: String,
    /// What was found, and what to do.
    pub detail: String,
}

/// Every finding.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DoctorReport {
    /// In the order checked.
    pub findings: Vec<Finding>,
}

impl DoctorReport {
    fn push(&mut self, level: Level, check: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding {
            level,
            check: check.into(),
            detail: detail.into(),
        });
    }

    /// The worst level found.
    pub fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Exit status: 0 all fine, 1 a warning, 2 a check failed.
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Level::Ok => 0,
            Level::Warn => 1,
            Level::Error => 2,
        }
    }

    /// Checks a queue's dead-letter depth (warns above the alarm threshold,
    /// with the latest reasons, naming `inspect`, the command that lists them).
    pub async fn dead_letters(&mut self, name: &str, queue: &dyn Queue, inspect: &str) {
        match queue.dead_letter_depth().await {
            Ok(depth) if depth as f64 > DLQ_ALARM_THRESHOLD => {
                let reasons = queue.dead_letter_reasons(3).await.unwrap_or_default();
                let mut detail = format!(
                    "{depth} messages in the dead-letter queue of {name} (more than {DLQ_ALARM_THRESHOLD}): {}",
                    dead_letters_mean(name)
                );
                if !reasons.is_empty() {
                    detail.push_str(&format!("; latest reasons: {}", reasons.join(" | ")));
                }
                detail.push_str(&format!(
                    "; see them with `{inspect}`, redrive once fixed (docs/runbook.md)"
                ));
                self.push(Level::Warn, format!("dead letters: {name}"), detail);
            }
            Ok(depth) => self.push(
                Level::Ok,
                format!("dead letters: {name}"),
                format!("{depth} messages"),
            ),
            Err(e) => self.push(Level::Error, format!("dead letters: {name}"), e.to_string()),
        }
    }

    /// Checks alarm states (present, and not in `ALARM`).
    #[cfg(feature = "aws")]
    pub fn alarms(&mut self, expected: &[String], states: &[jitr_aws::AlarmState]) {
        for name in expected {
            match states.iter().find(|s| &s.name == name) {
                None => self.push(
                    Level::Warn,
                    format!("alarm {name}"),
                    "missing: run `jitr init` to create it",
                ),
                Some(s) if s.state == "ALARM" => {
                    self.push(Level::Warn, format!("alarm {name}"), "in ALARM")
                }
                Some(s) => self.push(Level::Ok, format!("alarm {name}"), s.state.clone()),
            }
        }
    }

    /// Compares the instances the cloud runs with the open runners of the log.
    pub async fn drift(
        &mut self,
        store: &dyn EventStore,
        compute: &dyn Compute,
        now: Timestamp,
        grace_ms: u64,
    ) {
        let (instances, open) = match (compute.list_managed().await, store.open_streams().await) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) => {
                return self.push(Level::Error, "drift", format!("listing instances: {e}"));
            }
            (_, Err(e)) => {
                return self.push(Level::Error, "drift", format!("reading open runners: {e}"));
            }
        };
        if !open.unreadable.is_empty() {
            let keys: Vec<&str> = open.unreadable.iter().map(|u| u.key.as_str()).collect();
            self.push(
                Level::Warn,
                "unreadable runners",
                format!(
                    "{} open runner heads cannot be read and are skipped by the reaper: {}",
                    keys.len(),
                    keys.join(", ")
                ),
            );
        }
        let open = open.heads;
        let owned: HashSet<InstanceId> =
            open.iter().filter_map(|h| h.instance_id.clone()).collect();
        let live: Vec<_> = instances.iter().filter(|i| i.state.is_live()).collect();
        let strays: Vec<String> = live
            .iter()
            .filter(|i| {
                !owned.contains(&i.instance_id) && now.millis_since(i.launched_at) >= grace_ms
            })
            .map(|i| i.instance_id.to_string())
            .collect();
        let live_ids: HashSet<&InstanceId> = live.iter().map(|i| &i.instance_id).collect();
        let vanished: Vec<String> = open
            .iter()
            .filter(|h| h.state.instance_may_be_alive())
            .filter_map(|h| h.state.instance())
            .filter(|i| !live_ids.contains(&i.id) && now.millis_since(i.launched_at) >= grace_ms)
            .map(|i| i.id.to_string())
            .collect();
        if strays.is_empty() && vanished.is_empty() {
            self.push(
                Level::Ok,
                "drift",
                format!(
                    "{} live instances, {} open runners, all accounted for",
                    live.len(),
                    open.len()
                ),
            );
        }
        if !strays.is_empty() {
            self.push(
                Level::Warn,
                "drift",
                format!(
                    "{} instances run with no open runner (the reaper terminates them on its next sweep): {}",
                    strays.len(),
                    strays.join(", ")
                ),
            );
        }
        if !vanished.is_empty() {
            self.push(
                Level::Warn,
                "drift",
                format!(
                    "{} open runners' instances are gone without Terminated (the reaper records it): {}",
                    vanished.len(),
                    vanished.join(", ")
                ),
            );
        }
    }

    /// Records a configuration finding.
    pub fn config(&mut self, level: Level, detail: impl Into<String>) {
        self.push(level, "configuration", detail);
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!("{}  {:<34} {}\n", f.level, f.check, f.detail));
        }
        out
    }
}

/// What dead letters of queue `name` (short, or with its deployment prefix)
/// mean for the fleet (as docs/runbook.md's alarms table says).
fn dead_letters_mean(name: &str) -> &'static str {
    if name.ends_with("scaleup") {
        "jobs are not being served"
    } else if name.ends_with("lifecycle") {
        "job starts and completions not recorded: runners may stay up until their deadline"
    } else if name.ends_with("compensation") {
        "terminate commands failed: instances are owed a termination"
    } else if name.ends_with("ec2-events") {
        "EC2 state changes not recorded: closing runners falls back to the reaper"
    } else {
        "messages not processed"
    }
}

/// `jitr doctor` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    place: super::Place,
}

/// Runs the checks and prints the findings; exit 0 fine, 1 warning, 2 error.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let report = if args.place.aws {
        #[cfg(feature = "aws")]
        {
            check_aws(&args.place.target).await
        }
        #[cfg(not(feature = "aws"))]
        return Err(super::without_aws());
    } else {
        check_embedded(&args.place.data.path).await
    };
    if args.place.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::from(report.exit_code()))
}

async fn check_embedded(data_dir: &Path) -> DoctorReport {
    let mut report = DoctorReport::default();
    if !data_dir.join(super::LOG_FILE).is_file() {
        report.config(
            Level::Error,
            format!(
                "no jitr log in {}: point --data-dir at a jitr data directory",
                data_dir.display()
            ),
        );
        return report;
    }
    let clock = jitr_infra::system_clock();
    let queues = data_dir.join("queues.db");
    if queues.is_file() {
        for name in crate::app::QUEUE_NAMES {
            match jitr_infra::LocalQueue::open(
                &queues,
                name,
                10,
                Duration::from_secs(60),
                clock.clone(),
            ) {
                Ok(queue) => {
                    let inspect = format!("jitr dlq list {name} --data-dir {}", data_dir.display());
                    report.dead_letters(name, &queue, &inspect).await;
                }
                Err(e) => report.config(Level::Error, format!("queue {name}: {e}")),
            }
        }
    } else {
        report.config(Level::Ok, "no local queues yet (jitr serve creates them)");
    }
    let cloud = data_dir.join("cloud.db");
    match (
        jitr_infra::SqliteEventStore::open_read_only(data_dir.join(super::LOG_FILE)),
        cloud.is_file(),
    ) {
        (Ok(store), true) => {
            match jitr_infra::SimCloud::open(&cloud, jitr_infra::SimSettings::default(), clock) {
                Ok(sim) => {
                    report
                        .drift(&store, &sim, crate::runtime::now(), 120_000)
                        .await
                }
                Err(e) => report.config(Level::Error, format!("simulated cloud: {e}")),
            }
        }
        (Ok(_), false) => {
            report.config(Level::Ok, "no simulated cloud yet (jitr serve creates it)")
        }
        (Err(e), _) => report.config(Level::Error, format!("event log: {e}")),
    }
    report
}

#[cfg(feature = "aws")]
async fn check_aws(target: &super::AwsTarget) -> DoctorReport {
    let mut report = DoctorReport::default();
    let config = target.settings().load().await;
    let names = jitr_aws::AwsNames::new(target.prefix.clone());
    let mut alarm_names = Vec::new();
    let mut queue_arns = std::collections::BTreeMap::new();
    let mut visibility = std::collections::BTreeMap::new();
    for name in names.queues() {
        match jitr_aws::SqsQueue::find(&config, &name).await {
            Ok(Some(queue)) => {
                queue_arns.insert(name.clone(), queue.pair().arn.clone());
                if let Ok(Some(secs)) = queue.visibility_timeout().await {
                    visibility.insert(name.clone(), secs);
                }
                alarm_names.push(jitr_aws::Alarms::dlq_alarm_name(&queue.pair().dlq_name));
                let short = name
                    .strip_prefix(&format!("{}-", names.prefix()))
                    .unwrap_or(&name);
                let inspect = format!("jitr dlq list {short} --aws --prefix {}", names.prefix());
                report.dead_letters(&name, &queue, &inspect).await;
            }
            Ok(None) => report.config(
                Level::Warn,
                format!("queue {name} or its DLQ is missing: run `jitr init`"),
            ),
            Err(e) => report.config(Level::Error, format!("queue {name}: {e}")),
        }
    }
    match jitr_aws::Alarms::new(&config).describe(&alarm_names).await {
        Ok(states) => report.alarms(&alarm_names, &states),
        Err(e) => report.config(Level::Error, format!("alarms: {e}")),
    }
    check_lambda_deployment(&mut report, &config, &names, &queue_arns, &visibility).await;
    let store = jitr_aws::DynamoEventStore::new(&config, names.events_table());
    let compute = jitr_aws::Ec2Compute::new(&config, vec![]).with_deployment(names.prefix());
    report
        .drift(&store, &compute, crate::runtime::now(), 120_000)
        .await;
    let set = |name: &str| std::env::var(name).is_ok_and(|s| !s.is_empty());
    if !set("JITR_WEBHOOK_SECRET_PARAMETER") && !set("JITR_WEBHOOK_SECRET") {
        report.config(
            Level::Warn,
            "neither JITR_WEBHOOK_SECRET_PARAMETER nor JITR_WEBHOOK_SECRET is set: the webhook handler cannot verify deliveries",
        );
    }
    report
}

/// Which queue (by [`jitr_aws::AwsNames`]) invokes each queue-driven function.
#[cfg(feature = "aws")]
fn queue_of(names: &jitr_aws::AwsNames, handler: &str) -> Option<String> {
    match handler {
        "scaleup" => Some(names.scaleup_queue()),
        "lifecycle" => Some(names.lifecycle_queue()),
        "compensate" => Some(names.compensation_queue()),
        "ec2-events" => Some(names.ec2_events_queue()),
        _ => None,
    }
}

/// The checks of a deployment made from `infra/deploy/template.yaml`: each
/// function present and running its own handler, what invokes it enabled, the
/// alarms wired to the topic, the runner role passable. Skipped, and said so,
/// when no function exists (`jitr init` + `jitr serve --aws`).
#[cfg(feature = "aws")]
async fn check_lambda_deployment(
    report: &mut DoctorReport,
    config: &jitr_aws::SdkConfig,
    names: &jitr_aws::AwsNames,
    queue_arns: &std::collections::BTreeMap<String, String>,
    visibility: &std::collections::BTreeMap<String, u64>,
) {
    use crate::runtime::LAMBDA_HANDLERS;
    let deployment = jitr_aws::Deployment::new(config);
    let mut functions = std::collections::BTreeMap::new();
    let mut missing = Vec::new();
    for handler in LAMBDA_HANDLERS {
        let name = names.function(handler);
        match deployment.function(&name).await {
            Ok(Some(function)) => {
                functions.insert(handler, function);
            }
            Ok(None) => missing.push(name),
            Err(e) => return report.push(Level::Error, "functions", e.to_string()),
        }
    }
    if functions.is_empty() {
        return report.push(
            Level::Ok,
            "functions",
            format!(
                "no function named {}-<handler>: not a template deployment (jitr init with jitr serve --aws); function checks skipped",
                names.prefix()
            ),
        );
    }
    if !missing.is_empty() {
        report.push(
            Level::Warn,
            "functions",
            format!(
                "missing: {}: deploy infra/deploy/template.yaml again (docs/deploy.md)",
                missing.join(", ")
            ),
        );
    }
    let mut sound = 0;
    for (handler, function) in &functions {
        let name = names.function(handler);
        let mut problems = Vec::new();
        if function.handler.as_deref() != Some(handler) {
            problems.push(format!(
                "its Handler is {:?}, so the bootstrap runs that instead of {handler}",
                function.handler.as_deref().unwrap_or("")
            ));
        }
        if function.runtime.as_deref() != Some("provided.al2023") {
            problems.push(format!(
                "runtime {}, the package needs provided.al2023",
                function.runtime.as_deref().unwrap_or("none")
            ));
        }
        if let Some(state) = function.state.as_deref().filter(|s| *s != "Active") {
            problems.push(format!(
                "state {state}{}",
                function
                    .state_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        if function.last_update_status.as_deref() == Some("Failed") {
            problems.push("its last update failed".into());
        }
        if problems.is_empty() {
            sound += 1;
        } else {
            report.push(Level::Warn, format!("function {name}"), problems.join("; "));
        }
    }
    if sound > 0 {
        report.push(
            Level::Ok,
            "functions",
            format!(
                "{sound} of {} present, active, each running its own handler",
                LAMBDA_HANDLERS.len()
            ),
        );
    }
    check_invocations(
        report,
        &deployment,
        names,
        &functions,
        queue_arns,
        visibility,
    )
    .await;
    check_concurrency(report, &deployment, names, &functions).await;
    if let Some(webhook) = functions.get("webhook") {
        check_alarm_wiring(report, config, names, &webhook.arn).await;
    }
    match functions.get("scaleup") {
        Some(scaleup) => check_runner_roles(report, config, &deployment, names, scaleup).await,
        None => report.push(
            Level::Warn,
            "runner role",
            "not checked: the scale-up function is missing",
        ),
    }
}

/// Invocations jitr's functions may run at once besides the SQS mappings'
/// bounds: the projector's stream shard, the reaper's and the rebalancer's
/// schedules, and the webhook's deliveries (at least one).
#[cfg(feature = "aws")]
const UNMAPPED_CONCURRENCY: i32 = 4;

/// Lambda's concurrency against what jitr's functions may use at once: the
/// account's quota (a throttled SQS invocation returns its messages, which
/// spends their receives), and each reservation against its mapping's bound.
#[cfg(feature = "aws")]
async fn check_concurrency(
    report: &mut DoctorReport,
    deployment: &jitr_aws::Deployment,
    names: &jitr_aws::AwsNames,
    functions: &std::collections::BTreeMap<&str, jitr_aws::Function>,
) {
    let check = "Lambda concurrency";
    let account = match deployment.account_concurrency().await {
        Ok(account) => account,
        Err(e) => return report.push(Level::Warn, check, format!("not checked: {e}")),
    };
    let mut demand = UNMAPPED_CONCURRENCY;
    let mut unbounded = Vec::new();
    let mut reserved = Vec::new();
    let mut problems = Vec::new();
    for handler in functions.keys() {
        let name = names.function(handler);
        let bound = match queue_of(names, handler) {
            None => None,
            Some(_) => match deployment.mappings(&name).await {
                Ok(mappings) => {
                    let bound = mappings.iter().find_map(|m| m.maximum_concurrency);
                    match bound {
                        Some(b) => demand += b,
                        None if !mappings.is_empty() => unbounded.push(name.clone()),
                        None => {}
                    }
                    bound
                }
                Err(e) => return report.push(Level::Warn, check, format!("not checked: {e}")),
            },
        };
        match deployment.reserved_concurrency(&name).await {
            Ok(Some(r)) => {
                reserved.push(format!("{name} {r}"));
                if let Some(b) = bound.filter(|b| r < *b) {
                    problems.push(format!(
                        "{name} reserves {r} but its queue's mapping invokes up to {b} at once: \
                         the rest are throttled and their messages come back, spending receives \
                         (reserve at least {b}, or none)"
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => return report.push(Level::Warn, check, format!("not checked: {e}")),
        }
    }
    if account.limit < demand {
        problems.push(format!(
            "the account's quota is {} concurrent executions, and jitr's functions may use {demand} \
             at once: throttled invocations return their messages, spending receives; ask for more \
             (Service Quotas: AWS Lambda, Concurrent executions)",
            account.limit
        ));
    }
    if !unbounded.is_empty() {
        problems.push(format!(
            "{}: no MaximumConcurrency on the mapping, so a burst may take the account's whole quota",
            unbounded.join(", ")
        ));
    }
    if problems.is_empty() {
        report.push(
            Level::Ok,
            check,
            format!(
                "quota {} ({} unreserved); jitr may use {demand} at once; reserved: {}",
                account.limit,
                account.unreserved,
                if reserved.is_empty() {
                    "none".to_owned()
                } else {
                    reserved.join(", ")
                }
            ),
        );
    } else {
        report.push(Level::Warn, check, problems.join("; "));
    }
}

/// Queues and the stream invoke their functions through enabled mappings that
/// report batch item failures; the schedules invoke the reaper and the
/// rebalancer; the webhook has its URL.
#[cfg(feature = "aws")]
async fn check_invocations(
    report: &mut DoctorReport,
    deployment: &jitr_aws::Deployment,
    names: &jitr_aws::AwsNames,
    functions: &std::collections::BTreeMap<&str, jitr_aws::Function>,
    queue_arns: &std::collections::BTreeMap<String, String>,
    visibility: &std::collections::BTreeMap<String, u64>,
) {
    let stream = match deployment.table_stream(&names.events_table()).await {
        Ok(stream) => stream,
        Err(e) => {
            report.push(Level::Error, "event log stream", e.to_string());
            None
        }
    };
    for handler in functions.keys() {
        let name = names.function(handler);
        let (source, sqs) = match (*handler, queue_of(names, handler)) {
            (_, Some(queue)) => (queue_arns.get(&queue).cloned(), true),
            ("projector", None) => (stream.clone(), false),
            _ => continue,
        };
        let Some(source) = source else {
            report.push(
                Level::Warn,
                format!("mapping {name}"),
                "its source (queue or table stream) is missing",
            );
            continue;
        };
        let check = format!("mapping {name}");
        match deployment.mappings(&name).await {
            Err(e) => report.push(Level::Error, check, e.to_string()),
            Ok(mappings) => match mappings.iter().find(|m| m.source_arn == source) {
                None => report.push(
                    Level::Warn,
                    check,
                    format!("nothing invokes it from {source}: its messages wait unprocessed"),
                ),
                Some(m) if m.state != "Enabled" => report.push(
                    Level::Warn,
                    check,
                    format!(
                        "{} from {source}: nothing is processed until it is enabled (aws lambda update-event-source-mapping --enabled)",
                        m.state
                    ),
                ),
                Some(m) if sqs && !m.reports_batch_item_failures => report.push(
                    Level::Warn,
                    check,
                    "without ReportBatchItemFailures: one failing message retries its whole batch",
                ),
                Some(_) => report.push(Level::Ok, check, format!("enabled from {source}")),
            },
        }
        // AWS advises a queue's visibility timeout of at least six times its
        // function's timeout: shorter, a message whose handler runs long (or
        // waits for a throttled function) is delivered again meanwhile.
        let queue = queue_of(names, handler);
        let shown = queue.as_ref().and_then(|q| visibility.get(q));
        let timeout = functions[handler]
            .timeout_secs
            .and_then(|t| u64::try_from(t).ok());
        if let (Some(queue), Some(&shown), Some(timeout)) = (queue, shown, timeout) {
            if shown < 6 * timeout {
                report.push(
                    Level::Warn,
                    format!("queue {queue}"),
                    format!(
                        "visibility timeout {shown} s is under six times {name}'s timeout ({timeout} s): \
                         a long run is delivered twice; set it to {} s or more",
                        6 * timeout
                    ),
                );
            }
        }
    }
    for handler in ["reaper", "rebalancer", "archiver"] {
        let Some(function) = functions.get(handler) else {
            continue;
        };
        let rule = names.schedule_rule(handler);
        let check = format!("schedule {rule}");
        match deployment.rule(&rule).await {
            Err(e) => report.push(Level::Error, check, e.to_string()),
            Ok(None) => report.push(
                Level::Warn,
                check,
                format!("missing: nothing runs the {handler}"),
            ),
            Ok(Some(r)) if r.state != "ENABLED" => report.push(
                Level::Warn,
                check,
                format!(
                    "{}: the {handler} does not run (aws events enable-rule --name {rule})",
                    r.state
                ),
            ),
            Ok(Some(r)) if !r.targets.contains(&function.arn) => report.push(
                Level::Warn,
                check,
                format!(
                    "does not target {}: the {handler} does not run",
                    function.arn
                ),
            ),
            Ok(Some(r)) => report.push(
                Level::Ok,
                check,
                format!(
                    "enabled, {}",
                    r.schedule.as_deref().unwrap_or("on an event pattern")
                ),
            ),
        }
    }
    if functions.contains_key("webhook") {
        let name = names.function("webhook");
        match deployment.function_url(&name).await {
            Err(e) => report.push(Level::Error, "webhook URL", e.to_string()),
            Ok(None) => report.push(
                Level::Warn,
                "webhook URL",
                format!("{name} has no function URL: GitHub cannot deliver webhooks"),
            ),
            Ok(Some(url)) if url.auth_type != "NONE" => report.push(
                Level::Warn,
                "webhook URL",
                format!(
                    "{} requires {}: GitHub cannot sign with SigV4, every delivery is refused",
                    url.url, url.auth_type
                ),
            ),
            Ok(Some(url)) => report.push(
                Level::Ok,
                "webhook URL",
                format!("{} (the App's webhook URL)", url.url),
            ),
        }
    }
}

/// Every alarm of the deployment notifies its topic.
#[cfg(feature = "aws")]
async fn check_alarm_wiring(
    report: &mut DoctorReport,
    config: &jitr_aws::SdkConfig,
    names: &jitr_aws::AwsNames,
    function_arn: &str,
) {
    let Some((partition, region, account)) = jitr_aws::arn_scope(function_arn) else {
        return report.push(
            Level::Error,
            "alarm notifications",
            format!("cannot read the account from {function_arn}"),
        );
    };
    let topic = format!(
        "arn:{partition}:sns:{region}:{account}:{}",
        names.alarm_topic()
    );
    let mut expected: Vec<String> = names
        .queues()
        .iter()
        .map(|q| jitr_aws::Alarms::dlq_alarm_name(&format!("{q}-dlq")))
        .collect();
    expected.push(names.orphans_alarm());
    let alarms = match jitr_aws::Alarms::new(config).describe(&expected).await {
        Ok(alarms) => alarms,
        Err(e) => return report.push(Level::Error, "alarm notifications", e.to_string()),
    };
    let mut silent = Vec::new();
    for name in &expected {
        match alarms.iter().find(|a| &a.name == name) {
            Some(a) if a.actions_enabled && a.actions.contains(&topic) => {}
            Some(a) if !a.actions_enabled => silent.push(format!("{name} (actions disabled)")),
            Some(_) => silent.push(format!("{name} (does not notify the topic)")),
            None => silent.push(format!("{name} (missing)")),
        }
    }
    if silent.is_empty() {
        report.push(
            Level::Ok,
            "alarm notifications",
            format!(
                "{} alarms notify {topic} (confirm its e-mail subscription)",
                expected.len()
            ),
        );
    } else {
        report.push(
            Level::Warn,
            "alarm notifications",
            format!("nobody is told when these fire: {}", silent.join(", ")),
        );
    }
}

/// A pool that uses spot needs the account's EC2 Spot service-linked role:
/// without it EC2 refuses every spot launch
/// (`AuthFailure.ServiceLinkedRoleCreationNotPermitted`) and jitr launches on
/// demand (ADR-0018).
#[cfg(feature = "aws")]
async fn check_spot_role(
    report: &mut DoctorReport,
    deployment: &jitr_aws::Deployment,
    policy: &crate::app::policy::RunnerPolicy,
) {
    let spot: Vec<&str> = policy
        .pools
        .iter()
        .filter(|p| p.spot)
        .map(|p| p.name.as_str())
        .collect();
    if spot.is_empty() {
        return;
    }
    let role = jitr_aws::SPOT_SERVICE_LINKED_ROLE;
    let check = "spot service-linked role";
    match deployment.role_exists(role).await {
        Ok(true) => report.push(
            Level::Ok,
            check,
            format!("{role} exists (pools {})", spot.join(", ")),
        ),
        Ok(false) => report.push(
            Level::Warn,
            check,
            format!(
                "pools {} use spot, but the account has no {role}: EC2 refuses every spot launch \
                 (AuthFailure.ServiceLinkedRoleCreationNotPermitted) and jitr launches on demand; \
                 create it once per account: deploy with CreateSpotServiceLinkedRole=true, or \
                 aws iam create-service-linked-role --aws-service-name spot.amazonaws.com",
                spot.join(", ")
            ),
        ),
        Err(e) => report.push(Level::Warn, check, format!("not checked: {e}")),
    }
}

/// Each pool's image exists (a parameter path resolved as the function
/// resolves it) and is of the pool's architecture: otherwise each of its
/// launches fails before RunInstances.
#[cfg(feature = "aws")]
async fn check_images(
    report: &mut DoctorReport,
    config: &jitr_aws::SdkConfig,
    policy: &crate::app::policy::RunnerPolicy,
) {
    let ec2 = jitr_aws::Ec2Compute::new(config, Vec::new());
    for pool in &policy.pools {
        let check = format!("image of pool {}", pool.name);
        let image = &pool.spec.image;
        match ec2.check_image(image, pool.architecture).await {
            Ok(ami) if ami == *image => report.push(
                Level::Ok,
                check,
                format!("{ami}, {}", pool.architecture.as_str()),
            ),
            Ok(ami) => report.push(
                Level::Ok,
                check,
                format!("{image} is {ami}, {}", pool.architecture.as_str()),
            ),
            Err(e) => report.push(
                Level::Warn,
                check,
                format!("{e}: every launch of the pool fails (build one: docs/deploy.md, step 3)"),
            ),
        }
    }
}

/// The profiles the scale-up function launches runners with exist, hold a role
/// EC2 may assume, and the function's role may pass that role to EC2. The
/// function's own configuration is read as it reads it at its cold start.
#[cfg(feature = "aws")]
async fn check_runner_roles(
    report: &mut DoctorReport,
    config: &jitr_aws::SdkConfig,
    deployment: &jitr_aws::Deployment,
    names: &jitr_aws::AwsNames,
    scaleup: &jitr_aws::Function,
) {
    use jitr_aws::iam_policy::{Decision, decide};
    let function = names.function("scaleup");
    let env = &scaleup.environment;
    let pools = match env.get("JITR_CONFIG") {
        None => None,
        Some(source) => match crate::runtime::aws::pool_config_text(config, source).await {
            Ok(text) => Some((source.clone(), text)),
            Err(e) => {
                return report.push(
                    Level::Warn,
                    format!("configuration of {function}"),
                    format!("{e}: the function fails at its cold start"),
                );
            }
        },
    };
    let policy = match crate::runtime::aws::policy_from(pools, |k| env.get(k).cloned()) {
        Ok(policy) => policy,
        Err(e) => {
            return report.push(
                Level::Warn,
                format!("configuration of {function}"),
                format!("{e}: the function fails at its cold start"),
            );
        }
    };
    check_spot_role(report, deployment, &policy).await;
    check_images(report, config, &policy).await;
    let mut profiles: Vec<(String, Vec<String>)> = Vec::new();
    for pool in &policy.pools {
        match &pool.launch.instance_profile {
            None => report.push(
                Level::Warn,
                "runner role",
                format!(
                    "pool {} launches without an instance profile: its runners cannot read their JIT config",
                    pool.name
                ),
            ),
            Some(p) => match profiles.iter_mut().find(|(q, _)| q == p) {
                Some((_, pools)) => pools.push(pool.name.clone()),
                None => profiles.push((p.clone(), vec![pool.name.clone()])),
            },
        }
    }
    if profiles.is_empty() {
        return;
    }
    let scaleup_role = jitr_aws::arn_name(&scaleup.role).to_owned();
    let documents = match deployment.role_policies(&scaleup_role).await {
        Ok(documents) => documents,
        Err(e) => return report.push(Level::Error, "runner role", e.to_string()),
    };
    for (profile, pools) in profiles {
        let profile_name = jitr_aws::arn_name(&profile);
        let check = format!("runner role ({profile_name})");
        let roles = match deployment.instance_profile(profile_name).await {
            Err(e) => {
                report.push(Level::Error, check, e.to_string());
                continue;
            }
            Ok(None) => {
                report.push(
                    Level::Warn,
                    check,
                    format!(
                        "instance profile {profile} (pools {}) does not exist: every launch fails",
                        pools.join(", ")
                    ),
                );
                continue;
            }
            Ok(Some(roles)) => roles,
        };
        let Some(role) = roles.first() else {
            report.push(
                Level::Warn,
                check,
                format!(
                    "instance profile {profile} holds no role: runners cannot read their JIT config"
                ),
            );
            continue;
        };
        let mut problems = Vec::new();
        if !role
            .trust
            .as_ref()
            .is_some_and(|t| t.trusts_service("ec2.amazonaws.com"))
        {
            problems.push(format!(
                "{} does not let ec2.amazonaws.com assume it",
                role.arn
            ));
        }
        match decide(
            &documents,
            "iam:PassRole",
            &role.arn,
            &[("iam:PassedToService", "ec2.amazonaws.com")],
        ) {
            Decision::Allowed => {}
            Decision::Denied(source) => problems.push(format!(
                "{scaleup_role} is denied iam:PassRole of {} by its {source}: every launch fails",
                role.arn
            )),
            Decision::NotAllowed => problems.push(format!(
                "{scaleup_role} may not pass {} to EC2 (iam:PassRole): every launch fails with UnauthorizedOperation",
                role.arn
            )),
            Decision::Conditional(why) => problems.push(format!(
                "{scaleup_role} may pass {} only under conditions doctor cannot judge ({why})",
                role.arn
            )),
        }
        if problems.is_empty() {
            report.push(
                Level::Ok,
                check,
                format!(
                    "{} passable to EC2 by {scaleup_role} (pools {})",
                    role.arn,
                    pools.join(", ")
                ),
            );
        } else {
            report.push(Level::Warn, check, problems.join("; "));
        }
    }
}
