//! `jitr init`: creates everything jitr needs in an AWS account (or at an
//! emulator endpoint). Idempotent: a second run finds everything and changes
//! nothing.

use std::fmt;
use std::time::Duration;

use jitr_infra::{Alarms, DynamoEventStore, EventBridgeBus, SdkConfig, SqsQueue, TableSetup};
use serde::Serialize;

/// The names of jitr's AWS resources, derived from one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsNames {
    prefix: String,
}

impl AwsNames {
    /// Names under `prefix` (e.g. `jitr`, or `jitr-staging`).
    pub fn new(prefix: impl Into<String>) -> Self {
        AwsNames {
            prefix: prefix.into(),
        }
    }
    /// The prefix (also the `jitr:deployment` tag of the instances).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The event log table.
    pub fn events_table(&self) -> String {
        format!("{}-events", self.prefix)
    }
    /// The queue of queued jobs awaiting a runner.
    pub fn scaleup_queue(&self) -> String {
        format!("{}-scaleup", self.prefix)
    }
    /// The queue of `in_progress` / `completed` webhooks.
    pub fn lifecycle_queue(&self) -> String {
        format!("{}-lifecycle", self.prefix)
    }
    /// The queue the bus delivers compensation commands to.
    pub fn compensation_queue(&self) -> String {
        format!("{}-compensation", self.prefix)
    }
    /// The command bus.
    pub fn bus(&self) -> String {
        format!("{}-bus", self.prefix)
    }
    /// The rule routing `TerminateRunner` to the compensation queue.
    pub fn terminate_rule(&self) -> String {
        format!("{}-terminate-runner", self.prefix)
    }
    /// Every queue, in order.
    pub fn queues(&self) -> [String; 3] {
        [
            self.scaleup_queue(),
            self.lifecycle_queue(),
            self.compensation_queue(),
        ]
    }
}

/// What `init` did to one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// Created by this run.
    Created,
    /// Found as wanted; left alone.
    Unchanged,
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setup::Created => "created",
            Setup::Unchanged => "exists, unchanged",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Resource {
    /// Kind (`table`, `queue`, `bus`, `alarm`).
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// What happened.
    pub setup: Setup,
}

/// Why `init` stopped; resources made before the failure stay (a re-run resumes).
#[derive(Debug, thiserror::Error)]
#[error("jitr init: {what}: {source}")]
pub struct InitError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn failed(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> InitError {
    InitError {
        what: what.into(),
        source: Box::new(e),
    }
}

/// How many receives before a message is dead-lettered, by default.
pub const DEFAULT_MAX_RECEIVES: u32 = 5;

/// Creates the table, the queues with their DLQs, the bus and its rule, and the
/// DLQ alarms.
pub async fn init(
    config: &SdkConfig,
    names: &AwsNames,
    max_receives: u32,
) -> Result<Vec<Resource>, InitError> {
    let mut report = Vec::new();
    let table = DynamoEventStore::new(config, names.events_table());
    let setup = match table
        .create_table()
        .await
        .map_err(|e| failed("events table", e))?
    {
        TableSetup::Created => Setup::Created,
        TableSetup::Existed => Setup::Unchanged,
    };
    report.push(Resource {
        kind: "table",
        name: names.events_table(),
        setup,
    });
    let alarms = Alarms::new(config);
    let mut compensation = None;
    for (name, visibility) in names.queues().into_iter().zip([60, 30, 60]) {
        let (queue, existed) =
            SqsQueue::ensure(config, &name, max_receives, Duration::from_secs(visibility))
                .await
                .map_err(|e| failed(format!("queue {name}"), e))?;
        let setup = if existed {
            Setup::Unchanged
        } else {
            Setup::Created
        };
        report.push(Resource {
            kind: "queue",
            name: format!(
                "{name} (+ {}, redrive after {max_receives} receives)",
                queue.pair().dlq_name
            ),
            setup,
        });
        let dlq = queue.pair().dlq_name.clone();
        let alarm_existed = alarms
            .ensure_dlq_alarm(&dlq, &[])
            .await
            .map_err(|e| failed(format!("alarm on {dlq}"), e))?;
        report.push(Resource {
            kind: "alarm",
            name: Alarms::dlq_alarm_name(&dlq),
            setup: if alarm_existed {
                Setup::Unchanged
            } else {
                Setup::Created
            },
        });
        if name == names.compensation_queue() {
            compensation = Some(queue);
        }
    }
    let compensation = compensation.expect("the compensation queue is one of the queues");
    let (_, bus) = EventBridgeBus::ensure(
        config,
        &names.bus(),
        &names.terminate_rule(),
        compensation.pair(),
    )
    .await
    .map_err(|e| failed("command bus", e))?;
    report.push(Resource {
        kind: "bus",
        name: format!(
            "{} (rule {} → {})",
            names.bus(),
            names.terminate_rule(),
            names.compensation_queue()
        ),
        setup: if bus.bus_existed {
            Setup::Unchanged
        } else {
            Setup::Created
        },
    });
    Ok(report)
}
