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

    /// Checks a queue's dead-letter depth (warns above the alarm threshold).
    pub async fn dead_letters(&mut self, name: &str, queue: &dyn Queue, reasons: &[String]) {
        match queue.dead_letter_depth().await {
            Ok(depth) if depth as f64 > DLQ_ALARM_THRESHOLD => {
                let mut detail = format!(
                    "{depth} messages in the dead-letter queue of {name} (more than {DLQ_ALARM_THRESHOLD}): jobs are not being served"
                );
                if !reasons.is_empty() {
                    detail.push_str(&format!("; latest reasons: {}", reasons.join(" | ")));
                }
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

/// `jitr doctor` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// Check the AWS deployment instead.
    #[arg(long)]
    aws: bool,
    #[command(flatten)]
    target: super::AwsTarget,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the checks and prints the findings; exit 0 fine, 1 warning, 2 error.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let report = if args.aws {
        #[cfg(feature = "aws")]
        {
            check_aws(&args.target).await
        }
        #[cfg(not(feature = "aws"))]
        return Err(super::without_aws());
    } else {
        check_embedded(&args.data.path).await
    };
    if args.json {
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
        for name in ["scaleup", "lifecycle", "compensation"] {
            match jitr_infra::LocalQueue::open(
                &queues,
                name,
                10,
                Duration::from_secs(60),
                clock.clone(),
            ) {
                Ok(queue) => {
                    let reasons: Vec<String> = queue
                        .dead_letters()
                        .unwrap_or_default()
                        .into_iter()
                        .rev()
                        .take(3)
                        .map(|(_, reason)| reason)
                        .collect();
                    report.dead_letters(name, &queue, &reasons).await;
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
    for name in names.queues() {
        match jitr_aws::SqsQueue::find(&config, &name).await {
            Ok(Some(queue)) => {
                alarm_names.push(jitr_aws::Alarms::dlq_alarm_name(&queue.pair().dlq_name));
                report.dead_letters(&name, &queue, &[]).await;
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
