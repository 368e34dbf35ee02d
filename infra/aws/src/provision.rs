//! Provisioning (`jitr init`): creates everything jitr needs in an AWS account
//! (or at an emulator endpoint). Idempotent: a second run finds everything and
//! changes nothing.

use std::fmt;
use std::time::Duration;

use aws_config::SdkConfig;

use crate::{Alarms, AwsNames, DynamoEventStore, EventBridgeBus, SqsQueue, TableSetup};
use serde::Serialize;

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

/// The queues' visibility timeouts, in the order of `AwsNames::queues`
/// (scale-up, lifecycle, compensation, EC2 events): six times the template's
/// function timeouts.
pub const VISIBILITY_SECS: [u64; 4] = [330, 150, 330, 150];

/// Creates the table, the queues with their DLQs, the bus and its rule, and the
/// DLQ alarms.
pub async fn provision(
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
    let mut ec2_events = None;
    // Six times the template's function timeouts (55, 25, 55, 25 s), as AWS
    // advises for a queue a function consumes.
    for (name, visibility) in names.queues().into_iter().zip(VISIBILITY_SECS) {
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
        } else if name == names.ec2_events_queue() {
            ec2_events = Some(queue);
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
    let ec2_events = ec2_events.expect("the EC2 events queue is one of the queues");
    let existed = crate::eventbridge::ensure_ec2_events_rule(
        config,
        &names.ec2_events_rule(),
        ec2_events.pair(),
    )
    .await
    .map_err(|e| failed("EC2 events rule", e))?;
    report.push(Resource {
        kind: "rule",
        name: format!(
            "{} on the default bus (EC2 state changes, spot interruption warnings → {})",
            names.ec2_events_rule(),
            names.ec2_events_queue()
        ),
        setup: if existed {
            Setup::Unchanged
        } else {
            Setup::Created
        },
    });
    Ok(report)
}
