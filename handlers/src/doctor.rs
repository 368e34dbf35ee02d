//! `jitr doctor`: what an operator checks first — dead-letter queues, alarms,
//! instances against open runners, configuration — in plain words.

use std::collections::HashSet;
use std::fmt;

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
