//! Operational metrics, each defined once ([`Def`]) and written two ways:
//! as CloudWatch Embedded Metric Format lines (printed to stdout under Lambda,
//! where CloudWatch Logs turns them into metrics without an API call; logged
//! at debug level elsewhere), and into the process's Prometheus families,
//! which `jitr serve` exposes at `GET /metrics` ([`render_prometheus`]).
//!
//! Events of this process (launch attempts, refusals, GitHub requests, …) are
//! counters since the process started. What the log and the queues say (runners
//! by status, owed terminations, depths) is a [`Snapshot`] taken at each scrape
//! — and at each projector pass under Lambda, as EMF.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

use jitr_domain::{Market, Timestamp};
use jitr_infra::emf_line;
use jitr_projections::RunnerViews;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// What a metric is to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`jitr_…_total`).
    Counter,
    /// A level, set each time.
    Gauge,
    /// A distribution of seconds (`jitr_…_seconds`).
    Seconds,
    /// Only goes up, by fractions (`jitr_…_total`: seconds, dollars).
    Sum,
}

/// One metric's definition: its names and labels in both outputs.
#[derive(Debug)]
pub struct Def {
    /// CloudWatch metric name (namespace `jitr`).
    pub emf: &'static str,
    /// Prometheus family name after `jitr_`, before `_total` / `_seconds`.
    pub prom: &'static str,
    /// What it counts or measures.
    pub help: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its labels: the Prometheus name, and the CloudWatch dimension (none:
    /// not a dimension there, so the CloudWatch metric aggregates over it).
    pub labels: &'static [(&'static str, Option<&'static str>)],
}

impl Def {
    fn emf_unit(&self) -> &'static str {
        match self.kind {
            Kind::Seconds => "Seconds",
            _ => "Count",
        }
    }
}

macro_rules! defs {
    ($($(#[$doc:meta])* $id:ident = $emf:literal, $prom:literal, $kind:ident, [$($label:literal $(=> $dim:literal)?),*], $help:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $id: Def = Def {
                emf: $emf,
                prom: $prom,
                help: $help,
                kind: Kind::$kind,
                labels: &[$(($label, defs!(@dim $($dim)?))),*],
            };
        )*
        /// Every metric, in the order `/metrics` lists them.
        pub const ALL: &[&Def] = &[$(&$id),*];
    };
    (@dim) => { None };
    (@dim $dim:literal) => { Some($dim) };
}

defs! {
    /// RunInstances calls by market, type and outcome (`ok` or the refusal's class).
    LAUNCHES = "Launches", "launches", Counter, ["market" => "Market", "instance_type", "outcome" => "Outcome"],
        "RunInstances calls by market, instance type and outcome (ok, or the refusal's class)";
    /// RunInstances refusals by EC2's error code.
    LAUNCH_REFUSALS = "LaunchRefusals", "launch_refusals", Counter, ["code" => "Code"],
        "RunInstances refusals by EC2 error code";
    /// RunInstances refusals that name the account's or the deployment's
    /// configuration (IAM, the spot service-linked role, the image, a
    /// parameter), not capacity: an operator must act.
    LAUNCH_CONFIGURATION_ERRORS = "LaunchConfigurationErrors", "launch_configuration_errors", Counter, ["code"],
        "RunInstances refusals caused by the configuration (IAM, spot service-linked role, image, parameters), by EC2 error code";
    /// Instances the reaper terminated with no runner owning them.
    ORPHANS_REAPED = "OrphansReaped", "orphans_reaped", Counter, [],
        "Instances the reaper terminated that no runner owned";
    /// Instances RunInstances returned that their runner could not take.
    STRAYS = "StrayInstances", "stray_instances", Counter, [],
        "Instances a launch returned that their runner could not take (terminated)";
    /// From a termination being owed to `Terminated`.
    COMPENSATION_LATENCY = "CompensationLatency", "compensation_latency", Seconds, [],
        "From a runner owing a termination to its compensating TerminateRunner being carried out";
    /// GitHub REST requests of the background services, by service.
    GITHUB_REQUESTS = "GitHubRequests", "github_requests", Counter, ["service" => "Service"],
        "GitHub REST requests sent by the background services";
    /// GitHub requests an installation has left this hour for background work.
    GITHUB_BUDGET_LEFT = "GitHubBudgetLeft", "github_rate_limit_remaining", Gauge, ["installation" => "Installation"],
        "GitHub requests an installation has left this hour for background work";
    /// Jobs polled on GitHub.
    JOB_POLLS = "JobPolls", "job_polls", Counter, [],
        "Jobs asked for on GitHub (GET .../actions/jobs/ID)";
    /// Lifecycle events recorded from a poll: webhooks that were lost.
    HEALED_BY_POLL = "LifecycleEventsFromPolls", "lifecycle_events_from_polls", Counter, [],
        "Lifecycle events recorded from job polls (webhooks that never came)";
    /// Lifecycle events refused (a runner named from a repository it does not
    /// serve, or with another registration's id).
    LIFECYCLE_REFUSED = "LifecycleEventsRefused", "lifecycle_events_refused", Counter, [],
        "Lifecycle events naming a runner from a repository it does not serve, or with another runner id";
    /// Surplus runners retired (withdrawn, or deregistered and terminated), and
    /// those GitHub refused to deregister because they were busy.
    SURPLUS_RUNNERS = "SurplusRunners", "surplus_runners", Counter, ["outcome" => "Outcome"],
        "Surplus runners no queued job wanted: retired (deregistered first), or kept because GitHub said busy";
    /// Transient JIT mint failures asked again.
    MINT_RETRIES = "MintRetries", "mint_retries", Counter, [],
        "JIT config mints that failed transiently and are asked again";
    /// Queued jobs no pool serves.
    JOBS_WITHOUT_POOL = "JobsWithoutPool", "jobs_without_pool", Counter, [],
        "Queued jobs whose labels no runner pool has";
    /// A reader stopped before what a newer jitr wrote (an event kind, an
    /// event or checkpoint schema it does not know).
    NEWER_LOG = "LogFromNewerVersion", "log_from_newer_version", Counter, [],
        "Times a reader stopped before an event or checkpoint a newer jitr wrote (ADR-0019)";
    /// Queued jobs of public repositories left alone (no pool opted in).
    JOBS_FROM_PUBLIC_REPOSITORIES_IGNORED = "PublicRepositoryJobsIgnored", "public_repository_jobs_ignored", Counter, [],
        "Queued jobs of public repositories left alone: no pool serves public repositories";
    /// Queued jobs the rebalancer found without a runner.
    JOBS_WITHOUT_RUNNER = "JobsWithoutRunner", "jobs_without_runner", Counter, [],
        "Queued jobs the rebalancer found without a runner";
    /// Commands the decider refused.
    REFUSED_COMMANDS = "RefusedCommands", "refused_commands", Counter, ["command" => "Command", "refusal" => "Refusal", "benign" => "Benign"],
        "Commands the decider refused, by command, refusal and whether benign";
    /// Open runner heads that could not be read.
    UNREADABLE_HEADS = "UnreadableHeads", "unreadable_heads", Gauge, [],
        "Open runner heads that could not be read at the last sweep";
    /// Runners still waiting for capacity after the last admission round.
    RUNNERS_WAITING = "RunnersWaiting", "runners_waiting", Gauge, ["pool" => "Pool", "reason"],
        "Runners (and queued jobs no pool serves) waiting, by pool and reason: no-pool, pool-budget, quota, capacity, market-unusable, refused, rate-limit, dependency, queued";
    /// A warm pool's floor at the last sweep (ADR-0022).
    WARM_FLOOR = "WarmFloor", "warm_floor", Gauge, ["pool" => "Pool"],
        "Idle runners a warm pool keeps beyond queued jobs, at the last reaper sweep";
    /// Warm runners asked for.
    WARM_RUNNERS_ASKED = "WarmRunnersAsked", "warm_runners_asked", Counter, ["pool" => "Pool"],
        "Warm runners (for no job) asked for to keep a pool's floor";
    /// From a job's `queued` reaching jitr to its start, by pool.
    JOB_START_WAIT = "JobStartWait", "job_start_wait", Seconds, ["pool" => "Pool"],
        "From a job's queued webhook reaching jitr to the job starting on a runner, by pool";
    /// Runners' idle time before the job they took.
    IDLE_RUNNER_SECONDS = "IdleRunnerSecondsBeforeJob", "idle_runner_seconds_before_job", Counter, ["pool" => "Pool"],
        "Seconds runners were registered and idle before the job they took, by pool";
    /// Jobs a warm runner took.
    WARM_HITS = "WarmHits", "warm_hits", Counter, ["pool" => "Pool"],
        "Jobs taken by a warm runner (requested for no job), by pool";
    /// The oldest waiting runner's wait.
    OLDEST_WAIT = "OldestWait", "oldest_wait_seconds", Gauge, ["pool" => "Pool"],
        "The oldest still-waiting runner's wait after the last admission round, seconds";
    /// What jitr knows of each market's vCPU quota.
    VCPU_QUOTA = "VcpuQuota", "vcpu_quota", Gauge, ["market" => "Market", "source" => "Source"],
        "vCPUs jitr may hold in each market: configured in the pool file, or learnt from EC2's refusal";
    /// Runners launched by an admission round.
    RUNNERS_ADMITTED = "RunnersAdmitted", "runners_admitted", Counter, [],
        "Runners launched by admission rounds";
    /// EC2 spot interruption warnings.
    SPOT_INTERRUPTIONS = "SpotInterruptions", "spot_interruptions", Counter, ["pool" => "Pool", "instance_type" => "InstanceType", "outcome" => "Outcome"],
        "EC2 spot interruption warnings, by pool, type and outcome (Relaunched before the job started, Cut after)";
    /// Webhook deliveries refused, by HTTP status.
    WEBHOOKS_REFUSED = "WebhooksRefused", "webhooks_refused", Counter, ["status" => "Status"],
        "Webhook deliveries refused: 401 bad signature, 400 malformed, 413 too large";
    /// Runners by pool and status (from the log).
    RUNNERS = "Runners", "runners", Gauge, ["pool" => "Pool", "status" => "Status"],
        "Runners by pool and status, from the event log";
    /// Instances launched, by market and type (from the log).
    INSTANCES_LAUNCHED = "InstancesLaunched", "instances_launched", Counter, ["market" => "Market", "instance_type" => "InstanceType"],
        "Launched events in the event log, by market and instance type";
    /// Terminations recorded, by evidence (from the log).
    TERMINATIONS = "Terminations", "terminations", Counter, ["evidence" => "Evidence"],
        "Terminated events in the event log, by the evidence they were written on";
    /// Instances that may be alive, by market (from the log).
    INSTANCES = "Instances", "instances", Gauge, ["market" => "Market"],
        "Instances that may be alive, by market (strays apart), from the event log";
    /// Their vCPUs.
    VCPUS = "Vcpus", "vcpus", Gauge, ["market" => "Market"],
        "vCPUs of the instances that may be alive, by market";
    /// Runners owed a termination now.
    OWED_TERMINATIONS = "OwedTerminations", "owed_terminations", Gauge, [],
        "Runners (and stray instances) owed a termination now";
    /// The oldest owed termination's age.
    OLDEST_OWED = "OldestOwedTermination", "oldest_owed_termination_seconds", Gauge, [],
        "Age of the oldest owed termination, seconds (0 when none)";
    /// Log events that could not be read and were skipped.
    SKIPPED_EVENTS = "SkippedEvents", "skipped_events", Counter, [],
        "Event log items that could not be read and were skipped by the projector";
    /// Messages waiting in each queue.
    QUEUE_MESSAGES = "QueueMessages", "queue_messages", Gauge, ["queue" => "Queue"],
        "Messages waiting in each queue";
    /// Messages in each queue's dead-letter queue.
    DEAD_LETTERS = "DeadLetters", "dead_letters", Gauge, ["queue" => "Queue"],
        "Messages in each queue's dead-letter queue (alarm above 5)";
    /// Instance time of the runners that closed while this process folded
    /// the log (ADR-0023).
    INSTANCE_SECONDS = "InstanceSeconds", "instance_seconds", Sum, ["repository", "pool" => "Pool", "instance_type", "market" => "Market"],
        "Instance-seconds (Launched to Terminated, less time parked) of runners that closed since this process started, by repository, pool, instance type and market";
    /// That instance time times the prices `serve --prices` was given.
    COST_USD = "CostUsd", "cost_usd", Sum, ["repository", "pool" => "Pool", "instance_type", "market" => "Market"],
        "USD of the instance time of runners that closed since this process started, at the prices serve was given (types without a price are left out)";
}

type Labels = Vec<(String, String)>;

/// The process's Prometheus families, one per [`Def`].
#[derive(Clone, Debug)]
enum Series {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>),
    Seconds(Family<Labels, Histogram>),
    Sum(Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>),
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ])
}

static SERIES: LazyLock<Mutex<BTreeMap<&'static str, Series>>> = LazyLock::new(|| {
    let mut all = BTreeMap::new();
    for def in ALL {
        let series = match def.kind {
            Kind::Counter => Series::Counter(Family::default()),
            Kind::Gauge => Series::Gauge(Family::default()),
            Kind::Sum => Series::Sum(Family::default()),
            Kind::Seconds => {
                Series::Seconds(Family::new_with_constructor(latency_buckets as fn() -> _))
            }
        };
        // A metric without labels is shown from the start, at zero.
        if def.labels.is_empty() {
            match &series {
                Series::Counter(f) => drop(f.get_or_create(&Vec::new())),
                Series::Gauge(f) => drop(f.get_or_create(&Vec::new())),
                Series::Seconds(f) => drop(f.get_or_create(&Vec::new())),
                Series::Sum(f) => drop(f.get_or_create(&Vec::new())),
            }
        }
        all.insert(def.prom, series);
    }
    Mutex::new(all)
});

fn series(def: &Def) -> Series {
    SERIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(def.prom)
        .cloned()
        .expect("every Def has its series")
}

fn labels(def: &Def, values: &[&str]) -> Labels {
    def.labels
        .iter()
        .zip(values)
        .map(|((name, _), v)| ((*name).to_owned(), (*v).to_owned()))
        .collect()
}

/// Records `value` of `def` with label `values` (in `def.labels`' order): adds
/// to a counter, sets a gauge, observes seconds; and emits it as EMF.
pub fn record(at: Timestamp, def: &Def, value: f64, values: &[&str]) {
    let set = labels(def, values);
    match series(def) {
        Series::Counter(family) => {
            family
                .get_or_create(&set)
                .inc_by(value.max(0.0).round() as u64);
        }
        Series::Gauge(family) => {
            family.get_or_create(&set).set(value);
        }
        Series::Seconds(family) => family.get_or_create(&set).observe(value),
        Series::Sum(family) => {
            family.get_or_create(&set).inc_by(value.max(0.0));
        }
    }
    let dimensions: Vec<(&str, &str)> = def
        .labels
        .iter()
        .zip(values)
        .filter_map(|((_, dim), v)| dim.map(|d| (d, *v)))
        .collect();
    emit_emf(at, &dimensions, &[(def.emf, value, def.emf_unit())]);
}

fn emit_emf(at: Timestamp, dimensions: &[(&str, &str)], metrics: &[(&str, f64, &str)]) {
    let line = emf_line(at, dimensions, metrics);
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        println!("{line}");
    } else {
        tracing::debug!(target: "jitr::metrics", "{line}");
    }
}

/// The prices `jitr serve --prices` was given ([`COST_USD`]).
static PRICES: std::sync::OnceLock<crate::commands::cost::Prices> = std::sync::OnceLock::new();

/// Prices the instance time [`runner_closed`] records from now on (once per
/// process; a second call changes nothing and says so).
pub fn set_prices(prices: crate::commands::cost::Prices) -> bool {
    PRICES.set(prices).is_ok()
}

/// Records the instance time (and its cost, where priced) of a runner the
/// projector saw close at `at`; a close before `since` (this process's
/// start: a replay of older history) is left out, so the counters hold what
/// happened while the process ran.
pub fn runner_closed(at: Timestamp, since: Timestamp, state: &jitr_domain::RunnerState) {
    if at < since {
        return;
    }
    let end = state.terminated_at.unwrap_or(at);
    let Some((key, ms)) = jitr_projections::books::instance_time(
        state,
        &jitr_projections::books::Window::default(),
        end,
    ) else {
        return;
    };
    if ms == 0 {
        return;
    }
    let seconds = ms as f64 / 1000.0;
    let hourly = PRICES
        .get()
        .and_then(|p| p.hourly(key.market, &key.instance_type));
    {
        let mut repositories = CLOSED_BY_REPOSITORY
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let line = repositories.entry(key.repository.clone()).or_default();
        line.seconds += seconds;
        match hourly {
            Some(hourly) => line.usd += seconds / 3600.0 * hourly,
            None => line.unpriced_seconds += seconds,
        }
    }
    let values = [
        key.repository.as_str(),
        key.pool.as_str(),
        key.instance_type.as_str(),
        key.market.as_str(),
    ];
    record(at, &INSTANCE_SECONDS, seconds, &values);
    if let Some(hourly) = hourly {
        record(at, &COST_USD, seconds / 3600.0 * hourly, &values);
    }
}

/// One repository's runners closed since the process started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepositoryCost {
    /// Instance-seconds.
    pub seconds: f64,
    /// USD of those with a price.
    pub usd: f64,
    /// Instance-seconds without a price.
    pub unpriced_seconds: f64,
}

static CLOSED_BY_REPOSITORY: LazyLock<Mutex<BTreeMap<String, RepositoryCost>>> =
    LazyLock::new(Mutex::default);

/// Instance time and cost of the runners closed since the process started,
/// by repository (the fleet page's bars), and whether prices were given.
pub fn closed_by_repository() -> (BTreeMap<String, RepositoryCost>, bool) {
    (
        CLOSED_BY_REPOSITORY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        PRICES.get().is_some(),
    )
}

/// The owed terminations among the open runners as the reaper read them, as
/// EMF (the projector's snapshot gives the same figures, strays included, on
/// each batch; the alarm on the promise reads the larger).
pub fn owed_terminations(at: Timestamp, owed: usize, oldest_ms: u64) {
    emit_emf(
        at,
        &[],
        &[
            (
                OWED_TERMINATIONS.emf,
                owed as f64,
                OWED_TERMINATIONS.emf_unit(),
            ),
            (
                OLDEST_OWED.emf,
                oldest_ms as f64 / 1000.0,
                OLDEST_OWED.emf_unit(),
            ),
        ],
    );
}

/// A RunInstances call's outcome, by market and type (`ok` when it succeeded,
/// else the refusal's class, with EC2's code counted apart).
pub fn launch(at: Timestamp, market: &str, instance_type: &str, outcome: &str, code: Option<&str>) {
    record(at, &LAUNCHES, 1.0, &[market, instance_type, outcome]);
    if let Some(code) = code {
        record(at, &LAUNCH_REFUSALS, 1.0, &[code]);
    }
}

/// An admission round: runners still waiting for capacity after it, and how
/// many it launched.
pub fn capacity_round(at: Timestamp, waiting: usize, launched: usize) {
    emit_emf(at, &[], &[("RunnersWaiting", waiting as f64, "Count")]);
    record(at, &RUNNERS_ADMITTED, launched as f64, &[]);
}

/// The vCPU ceiling jitr knows for `market`, `configured` or `learnt`.
pub fn vcpu_quota(at: Timestamp, market: Market, source: &str, vcpus: u32) {
    record(
        at,
        &VCPU_QUOTA,
        f64::from(vcpus),
        &[market.as_str(), source],
    );
}

/// Runners of `pool` waiting for capacity at an admission round, and the
/// oldest one's wait.
pub fn pool_waiting(at: Timestamp, pool: &str, waiting: usize, oldest_ms: u64) {
    // CloudWatch counts a pool's waiting runners whatever the reason;
    // `/metrics` has them by reason ([`Snapshot::waiting`]).
    emit_emf(
        at,
        &[("Pool", pool)],
        &[(RUNNERS_WAITING.emf, waiting as f64, "Count")],
    );
    record(at, &OLDEST_WAIT, oldest_ms as f64 / 1000.0, &[pool]);
}

/// How long GitHub keeps a job queued that no runner takes.
const QUEUED_AT_MOST_MS: u64 = 24 * 3_600_000;

/// A job: owner, repository, job id.
type JobKey = (String, String, u64);

/// Queued jobs no pool serves.
static UNSERVED: LazyLock<Mutex<BTreeMap<JobKey, UnservedJob>>> = LazyLock::new(Mutex::default);

/// A queued job no pool serves: it waits (on GitHub) until a runner of its
/// labels appears, or it is cancelled.
pub fn job_unserved(job: &jitr_domain::JobRef, labels: &[String], at: Timestamp) {
    let mut unserved = UNSERVED.lock().unwrap_or_else(|p| p.into_inner());
    unserved.retain(|_, j| at.millis_since(j.since) < QUEUED_AT_MOST_MS);
    unserved.insert(
        (job.owner.clone(), job.repo.clone(), job.job_id),
        UnservedJob {
            repository: format!("{}/{}", job.owner, job.repo),
            job_id: job.job_id,
            labels: labels.to_vec(),
            since: at,
        },
    );
}

/// A job left GitHub's queue (started or completed, cancelled included).
pub fn job_left_queue(job: &jitr_domain::JobRef) {
    UNSERVED.lock().unwrap_or_else(|p| p.into_inner()).remove(&(
        job.owner.clone(),
        job.repo.clone(),
        job.job_id,
    ));
}

/// A queued job no pool serves, still queued as far as this process heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnservedJob {
    /// `owner/repo`.
    pub repository: String,
    /// GitHub's job id.
    pub job_id: u64,
    /// Its labels.
    pub labels: Vec<String>,
    /// When its `queued` came.
    pub since: Timestamp,
}

/// The queued jobs no pool serves, oldest first, at `now` (GitHub fails a
/// job queued for a day).
pub fn unserved_jobs(now: Timestamp) -> Vec<UnservedJob> {
    let unserved = UNSERVED.lock().unwrap_or_else(|p| p.into_inner());
    let mut jobs: Vec<UnservedJob> = unserved
        .values()
        .filter(|j| now.millis_since(j.since) < QUEUED_AT_MOST_MS)
        .cloned()
        .collect();
    jobs.sort_by_key(|j| (j.since, j.job_id));
    jobs
}

/// EC2's spot interruption warning for a runner's instance, by pool, type and
/// whether the job had started (`Cut`) or was relaunched (`Relaunched`).
pub fn spot_interruption(at: Timestamp, pool: &str, instance_type: &str, job_started: bool) {
    let outcome = if job_started { "Cut" } else { "Relaunched" };
    record(
        at,
        &SPOT_INTERRUPTIONS,
        1.0,
        &[pool, instance_type, outcome],
    );
}

/// EC2 refused a launch for the configuration (`code`).
pub fn launch_configuration_error(at: Timestamp, code: &str) {
    record(at, &LAUNCH_CONFIGURATION_ERRORS, 1.0, &[code]);
}

/// Instances the reaper found with no stream wanting them.
pub fn orphans_reaped(at: Timestamp, count: usize) {
    record(at, &ORPHANS_REAPED, count as f64, &[]);
}

/// An instance RunInstances returned that its runner could not take (recorded
/// as a stray and terminated).
pub fn stray(at: Timestamp) {
    record(at, &STRAYS, 1.0, &[]);
}

/// A lifecycle event refused: it named one of jitr's runners from a repository
/// (or organisation) that runner does not serve.
pub fn lifecycle_refused(at: Timestamp) {
    record(at, &LIFECYCLE_REFUSED, 1.0, &[]);
}

/// A warm pool's floor now, and the warm runners asked for to keep it.
pub fn warm_floor(at: Timestamp, pool: &str, floor: usize, asked: usize) {
    record(at, &WARM_FLOOR, floor as f64, &[pool]);
    if asked > 0 {
        record(at, &WARM_RUNNERS_ASKED, asked as f64, &[pool]);
    }
}

/// Job starts this process saw, by pool (for the fleet page).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobStarts {
    /// Jobs started.
    pub jobs: u64,
    /// Their waits since jitr heard them queued (the latest
    /// [`RECENT_STARTS`] of them), ms.
    pub recent_waits_ms: std::collections::VecDeque<u64>,
    /// Those taken by a warm runner.
    pub warm_hits: u64,
    /// Runners' idle time before the jobs they took, ms.
    pub idle_ms: u64,
}

/// How many recent waits a pool keeps for the fleet page's percentiles.
pub const RECENT_STARTS: usize = 1_000;

static STARTS: LazyLock<Mutex<BTreeMap<String, JobStarts>>> = LazyLock::new(Mutex::default);

/// The job starts this process saw, by pool.
pub fn job_starts() -> BTreeMap<String, JobStarts> {
    STARTS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A job started: how long it waited since jitr heard it queued, how long its
/// runner was idle before, whether the runner was a warm one.
pub fn job_started(
    at: Timestamp,
    pool: &str,
    waited_ms: Option<u64>,
    idle_ms: Option<u64>,
    warm: bool,
) {
    {
        let mut starts = STARTS.lock().unwrap_or_else(|p| p.into_inner());
        let entry = starts.entry(pool.to_owned()).or_default();
        entry.jobs += 1;
        entry.warm_hits += u64::from(warm);
        entry.idle_ms += idle_ms.unwrap_or(0);
        if let Some(ms) = waited_ms {
            if entry.recent_waits_ms.len() == RECENT_STARTS {
                entry.recent_waits_ms.pop_front();
            }
            entry.recent_waits_ms.push_back(ms);
        }
    }
    if let Some(ms) = waited_ms {
        record(at, &JOB_START_WAIT, ms as f64 / 1000.0, &[pool]);
    }
    if let Some(ms) = idle_ms {
        record(at, &IDLE_RUNNER_SECONDS, (ms / 1000) as f64, &[pool]);
    }
    if warm {
        record(at, &WARM_HITS, 1.0, &[pool]);
    }
}

/// Surplus runners retired, and kept because GitHub refused to deregister them.
pub fn surplus_retired(at: Timestamp, retired: usize, kept_busy: usize) {
    if retired > 0 {
        record(at, &SURPLUS_RUNNERS, retired as f64, &["retired"]);
    }
    if kept_busy > 0 {
        record(at, &SURPLUS_RUNNERS, kept_busy as f64, &["kept-busy"]);
    }
}

/// A JIT mint that failed transiently and will be asked again.
pub fn mint_retry(at: Timestamp) {
    record(at, &MINT_RETRIES, 1.0, &[]);
}

/// From a termination being owed to `Terminated`.
pub fn compensation_latency(at: Timestamp, ms: u64) {
    record(at, &COMPENSATION_LATENCY, ms as f64 / 1000.0, &[]);
}

/// Queued jobs found without a runner by the rebalancer.
pub fn drift(at: Timestamp, jobs_without_runner: usize) {
    record(at, &JOBS_WITHOUT_RUNNER, jobs_without_runner as f64, &[]);
}

/// A command the decider refused, by command, refusal and whether it was benign.
pub fn refusal(at: Timestamp, command: &str, refusal: &str, benign: bool) {
    let benign = if benign { "true" } else { "false" };
    record(at, &REFUSED_COMMANDS, 1.0, &[command, refusal, benign]);
}

/// Open runner heads that could not be read (skipped by the backstops).
pub fn unreadable_heads(at: Timestamp, count: usize) {
    record(at, &UNREADABLE_HEADS, count as f64, &[]);
}

/// A job asked for on GitHub (`GET …/actions/jobs/{job_id}`).
pub fn job_poll(at: Timestamp) {
    record(at, &JOB_POLLS, 1.0, &[]);
}

/// Lifecycle events recorded from a job poll: webhooks that were lost.
pub fn healed_by_poll(at: Timestamp, events: usize) {
    record(at, &HEALED_BY_POLL, events as f64, &[]);
}

/// GitHub requests a background service (`rebalancer`, `reaper`) sent in one pass.
pub fn github_requests(at: Timestamp, service: &str, requests: u64) {
    record(at, &GITHUB_REQUESTS, requests as f64, &[service]);
}

/// Background GitHub requests an installation has left this hour.
pub fn github_budget_left(at: Timestamp, installation: u64, left: u64) {
    let installation = installation.to_string();
    record(at, &GITHUB_BUDGET_LEFT, left as f64, &[&installation]);
}

/// A queued job no runner pool serves (its labels are not all any pool's).
pub fn no_pool(at: Timestamp) {
    record(at, &JOBS_WITHOUT_POOL, 1.0, &[]);
}

/// A reader stopped before what a newer jitr wrote (timestamped now: the
/// readers that stop have no clock of their own).
pub fn newer_log() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    record(Timestamp(now), &NEWER_LOG, 1.0, &[]);
}

/// A queued job of a public repository left alone (no pool opted in).
pub fn public_ignored(at: Timestamp) {
    record(at, &JOBS_FROM_PUBLIC_REPOSITORIES_IGNORED, 1.0, &[]);
}

/// A webhook delivery refused with HTTP `status` (401, 400, 413).
pub fn webhook_refused(at: Timestamp, status: u16) {
    record(at, &WEBHOOKS_REFUSED, 1.0, &[&status.to_string()]);
}

/// What the log and the queues say at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Runners by (pool, status).
    pub runners: Vec<(String, String, u64)>,
    /// `Launched` events by (market, type).
    pub launched: Vec<(String, String, u64)>,
    /// `Terminated` events by evidence.
    pub terminations: Vec<(String, u64)>,
    /// Instances and vCPUs that may be alive by market (`spot`, `on-demand`,
    /// `stray`).
    pub fleet: Vec<(String, u64, u64)>,
    /// Runners owed a termination.
    pub owed: u64,
    /// The oldest owed termination's age, seconds.
    pub oldest_owed_seconds: f64,
    /// Skipped log events.
    pub skipped_events: u64,
    /// Per queue: (name, waiting, dead letters); a queue that could not be
    /// read is left out.
    pub queues: Vec<(String, u64, u64)>,
    /// Runners (and queued jobs no pool serves) waiting, by (pool, reason).
    pub waiting: Vec<(String, String, u64)>,
}

impl Snapshot {
    /// The figures of the runner views at `now`.
    pub fn of_views(views: &RunnerViews, now: Timestamp) -> Self {
        let leaks = views.open_leaks(now);
        let fleet = views.fleet();
        Snapshot {
            runners: views
                .by_pool_and_status()
                .into_iter()
                .map(|((pool, status), n)| (pool, status.as_str().to_owned(), n))
                .collect(),
            launched: views
                .launched
                .iter()
                .flat_map(|(market, types)| {
                    types
                        .iter()
                        .map(move |(t, n)| (market.as_str().to_owned(), t.clone(), *n))
                })
                .collect(),
            terminations: views
                .terminated_by
                .iter()
                .map(|(evidence, n)| (evidence.as_str().to_owned(), *n))
                .collect(),
            fleet: [
                ("spot", fleet.spot),
                ("on-demand", fleet.on_demand),
                ("stray", fleet.strays),
            ]
            .into_iter()
            .map(|(m, u)| (m.to_owned(), u64::from(u.instances), u64::from(u.vcpus)))
            .collect(),
            owed: leaks.len() as u64,
            oldest_owed_seconds: leaks
                .iter()
                .map(|l| now.millis_since(l.owed_since))
                .max()
                .map_or(0.0, |ms| ms as f64 / 1000.0),
            skipped_events: views.skipped_count,
            queues: Vec::new(),
            waiting: Vec::new(),
        }
    }

    /// Emits the snapshot as EMF (the projector does under Lambda).
    pub fn emit(&self, at: Timestamp) {
        let gauges: [(&Def, f64); 2] = [
            (&OWED_TERMINATIONS, self.owed as f64),
            (&OLDEST_OWED, self.oldest_owed_seconds),
        ];
        for (def, value) in gauges {
            emit_emf(at, &[], &[(def.emf, value, def.emf_unit())]);
        }
        for (market, instances, vcpus) in &self.fleet {
            emit_emf(
                at,
                &[("Market", market)],
                &[
                    (INSTANCES.emf, *instances as f64, "Count"),
                    (VCPUS.emf, *vcpus as f64, "Count"),
                ],
            );
        }
        for (queue, waiting, dead) in &self.queues {
            emit_emf(
                at,
                &[("Queue", queue)],
                &[
                    (QUEUE_MESSAGES.emf, *waiting as f64, "Count"),
                    (DEAD_LETTERS.emf, *dead as f64, "Count"),
                ],
            );
        }
    }
}

/// This process's metrics and `snapshot` in the OpenMetrics 1.0 text format
/// (Prometheus's exposition format; it scrapes it natively).
pub fn render_prometheus(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("jitr");
    let all = SERIES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for def in ALL {
        let name = def.prom.trim_end_matches("_seconds");
        match (all.get(def.prom), def.kind) {
            (_, Kind::Gauge) if is_snapshot(def) => {
                let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
                fill_gauge(def, snapshot, &family);
                register(&mut registry, def, name, family);
            }
            (_, Kind::Counter) if is_snapshot(def) => {
                let family = Family::<Labels, Counter>::default();
                fill_counter(def, snapshot, &family);
                registry.register(name, def.help, family);
            }
            (Some(Series::Counter(f)), _) => registry.register(name, def.help, f.clone()),
            (Some(Series::Sum(f)), _) if def.prom.ends_with("_seconds") => {
                registry.register_with_unit(name, def.help, Unit::Seconds, f.clone());
            }
            (Some(Series::Sum(f)), _) => registry.register(name, def.help, f.clone()),
            (Some(Series::Gauge(f)), _) => register(&mut registry, def, name, f.clone()),
            (Some(Series::Seconds(f)), _) => {
                registry.register_with_unit(name, def.help, Unit::Seconds, f.clone());
            }
            (None, _) => {}
        }
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

fn register(
    registry: &mut Registry,
    def: &Def,
    name: &str,
    family: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
) {
    if def.prom.ends_with("_seconds") {
        registry.register_with_unit(name, def.help, Unit::Seconds, family);
    } else {
        registry.register(name, def.help, family);
    }
}

fn is_snapshot(def: &Def) -> bool {
    [
        RUNNERS.prom,
        INSTANCES_LAUNCHED.prom,
        TERMINATIONS.prom,
        INSTANCES.prom,
        VCPUS.prom,
        OWED_TERMINATIONS.prom,
        OLDEST_OWED.prom,
        SKIPPED_EVENTS.prom,
        QUEUE_MESSAGES.prom,
        DEAD_LETTERS.prom,
        RUNNERS_WAITING.prom,
    ]
    .contains(&def.prom)
}

fn fill_gauge(
    def: &Def,
    s: &Snapshot,
    family: &Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
) {
    let set = |values: &[&str], v: f64| {
        family.get_or_create(&labels(def, values)).set(v);
    };
    match def.prom {
        "runners" => s
            .runners
            .iter()
            .for_each(|(pool, status, n)| set(&[pool, status], *n as f64)),
        "instances" => s
            .fleet
            .iter()
            .for_each(|(m, instances, _)| set(&[m], *instances as f64)),
        "vcpus" => s
            .fleet
            .iter()
            .for_each(|(m, _, vcpus)| set(&[m], *vcpus as f64)),
        "owed_terminations" => set(&[], s.owed as f64),
        "oldest_owed_termination_seconds" => set(&[], s.oldest_owed_seconds),
        "queue_messages" => s
            .queues
            .iter()
            .for_each(|(q, waiting, _)| set(&[q], *waiting as f64)),
        "dead_letters" => s
            .queues
            .iter()
            .for_each(|(q, _, dead)| set(&[q], *dead as f64)),
        "runners_waiting" => s
            .waiting
            .iter()
            .for_each(|(pool, reason, n)| set(&[pool, reason], *n as f64)),
        _ => {}
    }
}

fn fill_counter(def: &Def, s: &Snapshot, family: &Family<Labels, Counter>) {
    let set = |values: &[&str], n: u64| {
        family.get_or_create(&labels(def, values)).inc_by(n);
    };
    match def.prom {
        "instances_launched" => s.launched.iter().for_each(|(m, t, n)| set(&[m, t], *n)),
        "terminations" => s.terminations.iter().for_each(|(e, n)| set(&[e], *n)),
        "skipped_events" => set(&[], s.skipped_events),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_is_exposed_under_its_name_and_type() {
        let mut prom: Vec<&str> = ALL.iter().map(|d| d.prom).collect();
        prom.sort_unstable();
        prom.dedup();
        assert_eq!(prom.len(), ALL.len(), "Prometheus names are distinct");
        for def in ALL
            .iter()
            .filter(|d| !d.labels.is_empty() && !is_snapshot(d))
        {
            let values = vec!["test"; def.labels.len()];
            record(Timestamp(0), def, 1.0, &values);
        }
        let snapshot = Snapshot {
            runners: vec![("default".into(), "running".into(), 1)],
            launched: vec![("spot".into(), "c5.xlarge".into(), 1)],
            terminations: vec![("state-change".into(), 1)],
            fleet: vec![("spot".into(), 1, 4)],
            queues: vec![("scaleup".into(), 0, 0)],
            waiting: vec![("linux".into(), "quota".into(), 2)],
            ..Snapshot::default()
        };
        let text = render_prometheus(&snapshot);
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        for def in ALL {
            let kind = match def.kind {
                Kind::Counter | Kind::Sum => "counter",
                Kind::Gauge => "gauge",
                Kind::Seconds => "histogram",
            };
            let family = match def.kind {
                Kind::Seconds => format!("jitr_{}_seconds", def.prom),
                _ => format!("jitr_{}", def.prom),
            };
            assert!(
                text.contains(&format!("# TYPE {family} {kind}")),
                "{family} {kind} in\n{text}"
            );
        }
    }
}
