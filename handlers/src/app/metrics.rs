//! Operational metrics as CloudWatch Embedded Metric Format lines: printed to
//! stdout under Lambda (CloudWatch Logs turns them into metrics, no API call),
//! logged at debug level elsewhere.

use jitr_domain::Timestamp;
use jitr_infra::emf_line;

/// Emits one metric with its dimensions.
pub fn emit(at: Timestamp, name: &str, value: f64, unit: &str, dimensions: &[(&str, &str)]) {
    emit_all(at, dimensions, &[(name, value, unit)]);
}

/// Emits several metrics sharing their dimensions, in one line.
pub fn emit_all(at: Timestamp, dimensions: &[(&str, &str)], metrics: &[(&str, f64, &str)]) {
    let line = emf_line(at, dimensions, metrics);
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        println!("{line}");
    } else {
        tracing::debug!(target: "jitr::metrics", "{line}");
    }
}

/// A launch's outcome, by market and error class (`ok` when it succeeded).
pub fn launch(at: Timestamp, market: &str, outcome: &str) {
    emit(
        at,
        "Launches",
        1.0,
        "Count",
        &[("Market", market), ("Outcome", outcome)],
    );
}

/// An admission round: runners waiting for capacity when it began, and how
/// many it launched.
pub fn capacity_round(at: Timestamp, waiting: usize, launched: usize) {
    emit(at, "RunnersWaiting", waiting as f64, "Count", &[]);
    emit(at, "RunnersAdmitted", launched as f64, "Count", &[]);
}

/// Runners of `pool` waiting for capacity at an admission round, and the
/// oldest one's wait.
pub fn pool_waiting(at: Timestamp, pool: &str, waiting: usize, oldest_ms: u64) {
    emit_all(
        at,
        &[("Pool", pool)],
        &[
            ("RunnersWaiting", waiting as f64, "Count"),
            ("OldestWait", oldest_ms as f64 / 1000.0, "Seconds"),
        ],
    );
}

/// EC2's spot interruption warning for a runner's instance, by pool, type and
/// whether the job had started (`Cut`) or was relaunched (`Relaunched`).
pub fn spot_interruption(at: Timestamp, pool: &str, instance_type: &str, job_started: bool) {
    emit(
        at,
        "SpotInterruptions",
        1.0,
        "Count",
        &[
            ("Pool", pool),
            ("InstanceType", instance_type),
            ("Outcome", if job_started { "Cut" } else { "Relaunched" }),
        ],
    );
}

/// Instances the reaper found with no stream wanting them.
pub fn orphans_reaped(at: Timestamp, count: usize) {
    emit(at, "OrphansReaped", count as f64, "Count", &[]);
}

/// An instance RunInstances returned that its runner could not take (recorded
/// as a stray and terminated).
pub fn stray(at: Timestamp) {
    emit(at, "StrayInstances", 1.0, "Count", &[]);
}

/// A lifecycle event refused: it named one of jitr's runners from a repository
/// (or organisation) that runner does not serve.
pub fn lifecycle_refused(at: Timestamp) {
    emit(at, "LifecycleEventsRefused", 1.0, "Count", &[]);
}

/// A JIT mint that failed transiently and will be asked again.
pub fn mint_retry(at: Timestamp) {
    emit(at, "MintRetries", 1.0, "Count", &[]);
}

/// From a termination being owed to `Terminated`.
pub fn compensation_latency(at: Timestamp, ms: u64) {
    emit(at, "CompensationLatency", ms as f64, "Milliseconds", &[]);
}

/// Queued jobs found without a runner by the rebalancer.
pub fn drift(at: Timestamp, jobs_without_runner: usize) {
    emit(
        at,
        "JobsWithoutRunner",
        jobs_without_runner as f64,
        "Count",
        &[],
    );
}

/// A command the decider refused, by command, refusal and whether it was benign.
pub fn refusal(at: Timestamp, command: &str, refusal: &str, benign: bool) {
    emit(
        at,
        "RefusedCommands",
        1.0,
        "Count",
        &[
            ("Command", command),
            ("Refusal", refusal),
            ("Benign", if benign { "true" } else { "false" }),
        ],
    );
}

/// Open runner heads that could not be read (skipped by the backstops).
pub fn unreadable_heads(at: Timestamp, count: usize) {
    emit(at, "UnreadableHeads", count as f64, "Count", &[]);
}

/// A job asked for on GitHub (`GET …/actions/jobs/{job_id}`).
pub fn job_poll(at: Timestamp) {
    emit(at, "JobPolls", 1.0, "Count", &[]);
}

/// Lifecycle events recorded from a job poll: webhooks that were lost.
pub fn healed_by_poll(at: Timestamp, events: usize) {
    emit(at, "LifecycleEventsFromPolls", events as f64, "Count", &[]);
}

/// GitHub requests a background service (`rebalancer`, `reaper`) sent in one pass.
pub fn github_requests(at: Timestamp, service: &str, requests: u64) {
    emit(
        at,
        "GitHubRequests",
        requests as f64,
        "Count",
        &[("Service", service)],
    );
}

/// Background GitHub requests an installation has left this hour.
pub fn github_budget_left(at: Timestamp, installation: u64, left: u64) {
    let installation = installation.to_string();
    emit(
        at,
        "GitHubBudgetLeft",
        left as f64,
        "Count",
        &[("Installation", &installation)],
    );
}

/// A queued job no runner pool serves (its labels are not all any pool's).
pub fn no_pool(at: Timestamp) {
    emit(at, "JobsWithoutPool", 1.0, "Count", &[]);
}
