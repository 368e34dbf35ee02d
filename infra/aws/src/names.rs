//! The names of one deployment's AWS resources.

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
    /// The queue EC2's own events reach (state changes, spot interruption
    /// warnings).
    pub fn ec2_events_queue(&self) -> String {
        format!("{}-ec2-events", self.prefix)
    }
    /// The rule on the account's default bus routing EC2's events to
    /// [`AwsNames::ec2_events_queue`].
    pub fn ec2_events_rule(&self) -> String {
        format!("{}-ec2-events", self.prefix)
    }
    /// The Lambda function running `handler` (one of `jitr lambda`'s).
    pub fn function(&self, handler: &str) -> String {
        format!("{}-{handler}", self.prefix)
    }
    /// The schedule rule (default bus) invoking `handler` every minute
    /// (`reaper`, `rebalancer`).
    pub fn schedule_rule(&self, handler: &str) -> String {
        format!("{}-{handler}", self.prefix)
    }
    /// The SNS topic every alarm notifies.
    pub fn alarm_topic(&self) -> String {
        format!("{}-alarms", self.prefix)
    }
    /// The alarm on instances the reaper terminated with no runner owning them.
    pub fn orphans_alarm(&self) -> String {
        format!("{}-orphans-reaped", self.prefix)
    }
    /// The runner instances' role, and their instance profile (same name).
    pub fn runner_role(&self) -> String {
        format!("{}-runner", self.prefix)
    }
    /// Every queue, in order.
    pub fn queues(&self) -> [String; 4] {
        [
            self.scaleup_queue(),
            self.lifecycle_queue(),
            self.compensation_queue(),
            self.ec2_events_queue(),
        ]
    }
}
