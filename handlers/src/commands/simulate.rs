//! `jitr simulate`: deterministic scenarios on the local simulator, driven through
//! the real handlers, queues, store and projector, with a manual clock.
//!
//! GitHub's side is played by the driver: queued jobs arrive as webhooks; a job
//! starts on its runner 30 s after the runner is ready and completes after its
//! duration. `--without-compensation` turns the projector's compensation and the
//! reaper off, to show what the same run leaks without them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Duration;

use std::sync::Arc;

use jitr_domain::{
    ClientToken, InstanceId, Market, RunnerEvent, RunnerStatus, StreamId, Timestamp,
};
use jitr_infra::{
    EventStore, Fault, FaultyCompute, ManualClock, Queue, QueuedJob, RunnerScope, SimGitHub,
    SimSettings,
};
use jitr_projections::accounting::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::app::App;
use crate::app::outcome::CrashPoint;
use crate::app::policy::RunnerPolicy;
use crate::app::webhook::JobMessage;
use crate::commands::audit;
use crate::runtime::consumer::drain;
use crate::runtime::embedded::Embedded;
use crate::runtime::serve::ServeError;

mod workday;
pub use workday::{WarmSetting, WorkdayFigures};

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A release burst against a 32-vCPU quota: spot quota exhausted, on-demand
    /// quota hit, a quarter of the JIT mints failing after launch.
    SeedIncident,
    /// Scale-up and compensation crash at random step boundaries.
    CrashStorm,
    /// A third of the `queued`, of the `in_progress` and of the `completed`
    /// webhooks never arrive: the rebalancer heals lost `queued`, job polls the
    /// others (no running job's runner terminated at its boot deadline, no
    /// finished runner's instance kept until its max age).
    LostWebhooks,
    /// Every webhook delivered five times.
    DuplicateStorm,
    /// EC2 as its documentation says it may behave, all at once: NotFound by id
    /// (and terminate a no-op) for 30 s after each launch; a tag-filtered listing
    /// that omits instances for 90 s after launch and every fifth instance
    /// altogether (no deployment tag); the first instance's termination refused
    /// three times (an IAM deny); three RunInstances answers lost; RunInstances
    /// throttled from 0:30 to 3:30, longer than the consistency window; a quarter
    /// of the JIT mints failing right after launch.
    CloudChaos,
    /// 500 jobs within two minutes from two repositories (400 and 100) on a
    /// 32-vCPU on-demand and 16-vCPU spot quota, jobs of 3–10 minutes: the
    /// capacity queue (ADR-0014) — nothing given up, freed capacity used at
    /// once, repositories served in turn.
    Burst,
    /// 150 jobs over 30 minutes on a pool of three spot types (on demand as
    /// the fallback; 128 spot and 64 on-demand vCPUs), 30 % of spot instances reclaimed by EC2 with its
    /// two-minute warning within 90 s of their launch: a runner warned before
    /// its job started is replaced at once on another type or market; a job
    /// already running is cut (GitHub fails it) and the audit names it.
    SpotStorm,
    /// 15 pushes of 8 jobs over 20 minutes with `cancel-in-progress`, on a
    /// 32-vCPU on-demand and 48-vCPU spot quota: 40 % of the runs are
    /// superseded 20–150 s after their push, their jobs cancelled while queued
    /// or while running; GitHub gives each queued job to any online idle
    /// runner of its pool (online 15–105 s after it is ready, by runner), so
    /// runners take each other's jobs. No job may be killed by jitr, and every
    /// spare runner is retired deregister-first.
    CancelStorm,
    /// A working day of one organisation (Tuesday, Europe/Berlin): a quiet
    /// night with a nightly batch, a morning ramp, ~1.5 jobs a minute through
    /// the day with ten merge bursts of 10–20 jobs, an evening tail. One
    /// organisation pool of on-demand c5.xlarge; instances boot as measured
    /// elsewhere (`docs/simulator.md`). `--warm` says how capacity is kept
    /// warm; the report weighs the wait for a runner against the idle cost.
    Workday,
}

impl Scenario {
    /// The name as typed on the command line (`seed-incident`).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SeedIncident => "seed-incident",
            Scenario::CrashStorm => "crash-storm",
            Scenario::LostWebhooks => "lost-webhooks",
            Scenario::DuplicateStorm => "duplicate-storm",
            Scenario::CloudChaos => "cloud-chaos",
            Scenario::Burst => "burst",
            Scenario::SpotStorm => "spot-storm",
            Scenario::CancelStorm => "cancel-storm",
            Scenario::Workday => "workday",
        }
    }
}

/// A run's figures (`--json` prints exactly this).
#[derive(Clone, Debug, Serialize)]
pub struct SimulationReport {
    /// Scenario.
    pub scenario: Scenario,
    /// Seed.
    pub seed: u64,
    /// Whether compensation and the reaper ran.
    pub compensation: bool,
    /// Jobs in the burst.
    pub jobs: u64,
    /// Jobs that ran to completion on a jitr runner.
    pub jobs_served: u64,
    /// Runners whose instance was orphaned (owed a termination past the grace).
    pub orphans_found: u64,
    /// vCPU-minutes those orphans burned.
    pub orphan_vcpu_minutes: f64,
    /// Peak vCPUs in use per market.
    pub peak_vcpus: BTreeMap<String, u32>,
    /// Launches refused, by error code.
    pub launch_failures_by_code: BTreeMap<String, u64>,
    /// Instances launched, by `pool type market`.
    pub launches_by_pool: BTreeMap<String, u64>,
    /// From owed to `Terminated`.
    pub compensation_latency_ms: Distribution,
    /// After the last job completed, how long until no instance held the quota
    /// (None: never, within the run).
    pub quota_free_after_ms: Option<u64>,
    /// Simulated time the run covered.
    pub simulated_ms: u64,
    /// Instances still alive at the end.
    pub instances_alive_at_end: usize,
    /// The consistency window recorded in each runner's `Requested`.
    pub consistency_window_ms: u64,
    /// `Terminated` (or `StrayTerminated`) events recorded while the simulator
    /// still ran the instance they declare gone (for `Terminated` without an
    /// instance: while an instance of the runner's launch ran). Must be 0.
    pub premature_terminations: u64,
    /// How far the compensating process's clock was off the true time (ms).
    pub compensator_clock_skew_ms: i64,
    /// Runners closed by a `Terminated`, by the evidence recorded in it.
    pub closed_by: BTreeMap<String, u64>,
    /// Stray instances recorded (RunInstances answers their runner could not take).
    pub strays: u64,
    /// Instances the reaper found by id, missing from the listing, and re-tagged.
    pub retagged: u64,
    /// Per-item failures the reaper reported and swept past (e.g. a refused
    /// termination).
    pub sweep_errors: u64,
    /// How often the reaper polled a ready or running runner's job (0: only
    /// before a deadline termination).
    pub job_poll_interval_ms: u64,
    /// Whether job reads were allowed.
    pub job_polls: bool,
    /// `in_progress` and `completed` webhooks that never arrived.
    pub lifecycle_webhooks_lost: u64,
    /// `JobStarted` / `JobCompleted` recorded from a job poll.
    pub lifecycle_from_polls: u64,
    /// Jobs whose runner jitr failed or asked to terminate while the job ran
    /// on it. Must be 0.
    pub jobs_killed_by_jitr: u64,
    /// Jobs GitHub gave to a runner launched for another job.
    pub jobs_served_by_other_runner: u64,
    /// Jobs their user cancelled while queued.
    pub jobs_cancelled_queued: u64,
    /// Jobs their user cancelled while they ran.
    pub jobs_cancelled_running: u64,
    /// Jobs neither served nor cancelled by their user by the end of the run
    /// (killed, cut by a spot reclaim, or never started).
    pub jobs_unserved: u64,
    /// Runners retired as surplus capacity (`Failed` `surplus`): withdrawn
    /// before a launch, or deregistered and terminated.
    pub surplus_runners_retired: u64,
    /// Minutes runners spent registered and idle (from `TokenMinted` to a job,
    /// a failure or a termination).
    pub idle_runner_minutes: f64,
    /// From a job's completion on GitHub to its runner's termination being
    /// issued (to the end of the run when it never was).
    pub idle_after_job_ms: Distribution,
    /// Runners failed (for any reason), and jobs dead-lettered by scale-up.
    pub runners_failed: u64,
    /// Scale-up messages in the dead-letter queue at the end.
    pub scaleup_dead_letters: u64,
    /// The admission rounds (ADR-0014).
    pub admission: crate::app::scaleup::AdmissionStats,
    /// From a job's request to its runner's first launch, per repository.
    pub waited_ms_by_repository: BTreeMap<String, Distribution>,
    /// Events recorded per job (all its runners): mean.
    pub events_per_job_mean: f64,
    /// Events recorded per job: most.
    pub events_per_job_max: u64,
    /// While runners waited for capacity, the mean share of the quota (both
    /// markets) the simulated cloud counted in use, in percent.
    pub utilisation_while_waiting_pct: Option<f64>,
    /// From a `Terminated` of an instance while runners waited to the next
    /// `Launched` (the simulator, like EC2's quota, still counts an instance
    /// while it shuts down: 5 s).
    pub wake_to_launch_ms: Distribution,
    /// From an instance's `terminated` state change (its vCPUs free in the
    /// simulated cloud) while runners waited to the next `Launched`.
    pub cloud_freed_to_launch_ms: Distribution,
    /// EC2's spot interruption warnings for runners' instances, by whether the
    /// job had started (`before-start`, `after-start`), as the log records them.
    pub spot_interruptions: BTreeMap<String, u64>,
    /// Spot interruption warnings by `pool type`.
    pub spot_interruptions_by_pool_type: BTreeMap<String, u64>,
    /// From EC2's warning (before the job started) to the job's next runner's
    /// `Launched`: the event's delivery, jitr's handling, the launch.
    pub relaunch_after_interruption_ms: Distribution,
    /// Jobs whose runner's instance EC2 reclaimed while the job ran on it (GitHub
    /// fails such a job; no runner can save it).
    pub jobs_cut: u64,
    /// Runners failed for a GitHub rate limit. Must be 0: a rate limit is a wait.
    pub runners_failed_for_rate_limit: u64,
    /// GitHub's content-creating requests (mints, removals) as paced per
    /// installation, and the secondary rate limits met.
    pub github: GitHubPacing,
    /// The `workday` scenario's figures: the wait for a runner against the
    /// idle cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workday: Option<WorkdayFigures>,
}

/// What the run asked of GitHub's content-creating limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GitHubPacing {
    /// Mints GitHub answered with a secondary rate limit (injected).
    pub secondary_limited_mints: u64,
    /// Requests the pacer deferred to stay under GitHub's windows.
    pub deferred: u64,
    /// Most content-creating requests sent in one minute (GitHub allows 80).
    pub max_per_minute: usize,
    /// Most sent in one hour (GitHub allows 500).
    pub max_per_hour: usize,
}

/// How a run is set up besides its scenario and seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Whether compensation and the reaper run.
    pub compensation: bool,
    /// The consistency window recorded in each runner's `Requested` (0 restores
    /// the behaviour before issue 9: NotFound and an empty token lookup taken as
    /// proof at once).
    pub consistency_window_ms: u64,
    /// The reaper's job poll interval (0: only before deadline terminations).
    pub job_poll_interval_ms: u64,
    /// Whether jitr may read jobs on GitHub at all (false: every read answers
    /// "unknown", the ablation of what a lost webhook cost before job polls).
    pub job_polls: bool,
    /// Runner pools (none: the default pool). The burst's jobs take each pool's
    /// labels in turn, and the simulated region has each pool's image, of the
    /// pool's architecture.
    pub pools: Option<Vec<crate::app::policy::Pool>>,
    /// Instances of a type the simulated region can supply at once.
    pub type_capacity: BTreeMap<String, u32>,
    /// How long after it happens EC2's event reaches jitr.
    pub event_delay_ms: u64,
    /// One JIT mint in this many, drawn at random, meets GitHub's secondary
    /// rate limit (a 403 without `retry-after`).
    pub github_secondary_one_in: Option<u64>,
    /// How far the compensating process's clock (compensation and the
    /// reaper) is off the true time, in ms (positive: fast).
    pub compensator_clock_skew_ms: i64,
    /// How the `workday` scenario's pool keeps capacity warm.
    pub warm: WarmSetting,
}

impl Default for SimOptions {
    /// Compensation on, the default consistency window and job poll interval.
    fn default() -> Self {
        SimOptions {
            compensation: true,
            consistency_window_ms: jitr_domain::DEFAULT_CONSISTENCY_WINDOW_MS,
            job_poll_interval_ms: RunnerPolicy::default().job_poll_interval_ms,
            job_polls: true,
            pools: None,
            type_capacity: BTreeMap::new(),
            event_delay_ms: 0,
            github_secondary_one_in: None,
            compensator_clock_skew_ms: 0,
            warm: WarmSetting::default(),
        }
    }
}

struct Job {
    message: JobMessage,
    duration_ms: u64,
    /// Its `queued` happened (GitHub knows it), and when.
    arrived: bool,
    arrived_at: Timestamp,
    /// When (ms into the run) its user cancels it, if they do.
    cancel_at_ms: Option<u64>,
    /// Cancelled while queued / while it ran.
    cancelled_queued: bool,
    cancelled_running: bool,
    /// It ran on a runner launched for another job.
    on_other_runner: bool,
    /// The runner it ran on was online and idle when it was queued.
    warm_hit: bool,
    started: Option<(String, Timestamp)>,
    /// The instance it runs on, once started.
    instance: Option<InstanceId>,
    /// Its instance was reclaimed (or terminated) while it ran.
    cut: bool,
    completed: bool,
    completed_at: Option<Timestamp>,
    killed: bool,
}

const T0: Timestamp = Timestamp(1_777_868_520_000);
/// A job's `in_progress` and `completed`, for drawing which are lost.
const START: u64 = 1;
const END: u64 = 2;
const STEP_MS: u64 = 1_000;
const LIMIT_MS: u64 = 3 * 3_600_000;
/// The burst runs until its 500 jobs are done, at most this long.
const BURST_LIMIT_MS: u64 = 12 * 3_600_000;

/// Runs `scenario` in `dir` (which keeps the log, cloud and queues afterwards),
/// with the default consistency window.
pub async fn run(
    dir: &Path,
    scenario: Scenario,
    seed: u64,
    compensation: bool,
) -> Result<SimulationReport, ServeError> {
    let options = SimOptions {
        compensation,
        ..SimOptions::default()
    };
    run_with(dir, scenario, seed, options).await
}

/// [`run`] with every option.
pub async fn run_with(
    dir: &Path,
    scenario: Scenario,
    seed: u64,
    options: SimOptions,
) -> Result<SimulationReport, ServeError> {
    let SimOptions {
        compensation,
        consistency_window_ms: window_ms,
        job_poll_interval_ms,
        job_polls,
        pools,
        type_capacity,
        event_delay_ms,
        github_secondary_one_in,
        compensator_clock_skew_ms: skew_ms,
        warm,
    } = options;
    let workday = scenario == Scenario::Workday;
    let t0 = if workday { workday::MIDNIGHT } else { T0 };
    let mut rng = StdRng::seed_from_u64(seed);
    let clock = ManualClock::new(t0);
    let now = || clock.now();
    // The compensating process's own clock: off the true time by the skew.
    let compensator_now = || Timestamp(clock.now().0 + skew_ms);
    // The log position at the end of each step, with the step's true time:
    // events carry their writer's clock, these say when they were written.
    let mut written_by: Vec<(u64, Timestamp)> = Vec::new();
    let settings = SimSettings {
        on_demand_vcpus: match scenario {
            Scenario::SpotStorm => 64,
            Scenario::Workday => 256,
            _ => 32,
        },
        spot_vcpus: match scenario {
            Scenario::SeedIncident => 8,
            Scenario::Workday => 0,
            Scenario::Burst => 16,
            Scenario::SpotStorm => 128,
            Scenario::CancelStorm => 48,
            _ => 32,
        },
        event_delay_ms,
        spot_interruptions: (scenario == Scenario::SpotStorm).then_some(
            jitr_infra::SpotInterruptions {
                per_mille: 300,
                warn_within_ms: 90_000,
                seed,
            },
        ),
        spot_capacity: None,
        type_capacity,
        images: pools
            .iter()
            .flatten()
            .map(|p| (p.spec.image.clone(), p.architecture))
            .collect(),
        boot_ms: 20_000,
        shutdown_ms: 5_000,
        boot_times: workday.then(|| jitr_infra::BootTimes::measured(seed)),
    };
    let settings_quota = settings.on_demand_vcpus + settings.spot_vcpus;
    let Embedded {
        store,
        cloud,
        github,
        mut ports,
    } = Embedded::open(dir, settings, clock.clock(), 25)?;
    // The organisation has the runner groups the pools name.
    for group in pools
        .iter()
        .flatten()
        .filter_map(|p| p.runner_group.as_deref())
    {
        github.add_runner_group("acme", group);
    }
    if matches!(scenario, Scenario::SeedIncident | Scenario::CloudChaos) {
        github.fail_mints_at_rate(0.25, seed);
    }
    // GitHub as the App sees it: the stand-in, with the secondary rate limits
    // asked for, behind the pacing every deployment has.
    let limited = github_secondary_one_in.map(|one_in| {
        let faulty = Arc::new(jitr_infra::FaultyGitHub::new(Arc::new(github.clone())));
        faulty.inject(jitr_infra::GitHubFault::SecondaryLimitedMints { one_in, seed });
        faulty
    });
    let paced = Arc::new(jitr_infra::PacedGitHub::new(
        match &limited {
            Some(faulty) => faulty.clone(),
            None => Arc::new(github.clone()),
        },
        clock.clock(),
    ));
    ports.github = paced.clone();
    if !job_polls {
        let blind = jitr_infra::FaultyGitHub::new(ports.github.clone());
        blind.inject(jitr_infra::GitHubFault::JobsUnknown);
        ports.github = Arc::new(blind);
    }
    let chaos = (scenario == Scenario::CloudChaos).then(|| {
        let faulty = Arc::new(FaultyCompute::new(cloud.clone()).with_clock(clock.clock()));
        faulty.inject(Fault::NotFoundAfterLaunch(Duration::from_secs(30)), None);
        faulty.inject(Fault::ListOmitsRecent(Duration::from_secs(90)), None);
        faulty.inject(Fault::LoseLaunchAnswer, Some(3));
        ports.compute = faulty.clone();
        faulty
    });
    let mut chaos_seen: Vec<InstanceId> = Vec::new();
    let (mut retagged, mut sweep_errors) = (0u64, 0u64);
    let scaleup_queue = ports.scaleup_queue.clone();
    let lifecycle_queue = ports.lifecycle_queue.clone();
    let compensation_queue = ports.compensation_queue.clone();
    let mut policy = RunnerPolicy::default();
    policy.deadlines.drain_grace_ms = 30_000;
    policy.deadlines.consistency_window_ms = window_ms;
    policy.job_poll_interval_ms = job_poll_interval_ms;
    if let Some(pools) = pools {
        policy.pools = pools;
    } else if scenario == Scenario::SpotStorm {
        // Three spot types of 4 vCPUs, then on demand.
        for pool in &mut policy.pools {
            pool.instance_types = vec!["c5.xlarge".into(), "c5a.xlarge".into(), "m5.xlarge".into()];
        }
    } else if workday {
        policy.pools = vec![workday::pool(policy.pools[0].clone(), warm)];
    }
    // Each job asks for the labels of a pool in turn.
    let job_labels: Vec<Vec<String>> = policy
        .pools
        .iter()
        .map(|p| {
            std::iter::once(crate::app::policy::SELF_HOSTED.to_owned())
                .chain(p.labels.iter().cloned())
                .collect()
        })
        .collect();
    let app = App::new(ports, policy, Vec::new());
    let mut projector = app.projector().await?;

    // The burst: 24 jobs of 4 vCPUs in the first two minutes; 96 vCPUs wanted
    // against 8 spot and 32 on-demand.
    let day = workday.then(|| workday::arrivals(&mut rng));
    let count = match (&day, scenario) {
        (Some(day), _) => day.len() as u64,
        (_, Scenario::Burst) => 500,
        (_, Scenario::SpotStorm) => 150,
        (_, Scenario::CancelStorm) => 120,
        _ => 24u64,
    };
    let limit_ms = match scenario {
        Scenario::Burst => BURST_LIMIT_MS,
        Scenario::Workday => workday::DAY_MS + 2 * 3_600_000,
        _ => LIMIT_MS,
    };
    let mut jobs: Vec<Job> = (1..=count)
        .map(|n| Job {
            message: JobMessage {
                delivery: format!("sim-{n}"),
                action: "queued".into(),
                installation: 1,
                owner: "acme".into(),
                // The burst: 400 jobs of one repository, 100 of another.
                repo: match &day {
                    Some(day) => day[n as usize - 1].repo.into(),
                    None if scenario == Scenario::Burst && n > 400 => "docs".into(),
                    None => "release".into(),
                },
                job_id: 5_000 + n,
                run_id: 900,
                labels: job_labels[(n as usize - 1) % job_labels.len()].clone(),
                runner_name: None,
                conclusion: None,
                attempt: 1,
                avoid_spot: Vec::new(),
                runner_id: None,
            },
            // Lost `in_progress` webhooks matter for jobs that outlast the
            // 10-minute boot deadline: that scenario's jobs run longer.
            duration_ms: if scenario == Scenario::LostWebhooks {
                rng.random_range(5..=20)
            } else {
                rng.random_range(3..=10)
            } * 60_000,
            arrived: false,
            arrived_at: t0,
            cancel_at_ms: None,
            cancelled_queued: false,
            cancelled_running: false,
            on_other_runner: false,
            warm_hit: false,
            started: None,
            instance: None,
            cut: false,
            completed: false,
            completed_at: None,
            killed: false,
        })
        .collect();
    let arrival_window = if scenario == Scenario::SpotStorm {
        30 * 60_000
    } else {
        120_000
    };
    let arrivals: Vec<u64> = if let Some(day) = &day {
        day.iter().map(|a| a.at_ms).collect()
    } else if scenario == Scenario::CancelStorm {
        cancel_storm(&mut jobs, &mut rng)
    } else {
        jobs.iter()
            .map(|_| rng.random_range(0..arrival_window))
            .collect()
    };
    let mut peak: BTreeMap<String, u32> = BTreeMap::new();
    let mut last_completion: Option<Timestamp> = None;
    let mut quota_free_at: Option<Timestamp> = None;
    let mut elapsed = 0u64;
    let mut lifecycle_lost = 0u64;
    // Which lifecycle webhooks are lost is drawn per job and event, apart from
    // the run's other draws: runs of one seed that take other turns (job
    // polls off, say) lose the same webhooks.
    let mut lose_lifecycle = |job_id: u64, what: u64| {
        let lost = scenario == Scenario::LostWebhooks
            && StdRng::seed_from_u64(seed ^ job_id.rotate_left(16) ^ what).random_bool(1.0 / 3.0);
        lifecycle_lost += u64::from(lost);
        lost
    };
    let quota = settings_quota;
    let (mut waiting_steps, mut utilisation_sum) = (0u64, 0f64);
    let mut cloud_freed: Vec<Timestamp> = Vec::new();
    // When EC2 issued each spot interruption warning.
    let mut ec2_warned: BTreeMap<InstanceId, Timestamp> = BTreeMap::new();
    while elapsed <= limit_ms {
        let t = now();
        if let Some(faulty) = &chaos {
            // RunInstances throttled from 0:30 to 3:30.
            if elapsed == 30_000 {
                faulty.inject(
                    Fault::RejectLaunch {
                        market: None,
                        code: "RequestLimitExceeded".into(),
                    },
                    None,
                );
            }
            if elapsed == 210_000 {
                faulty.clear_matching(|f| matches!(f, Fault::RejectLaunch { .. }));
            }
            // New instances: the first one's termination is refused three times;
            // every fifth one comes without the deployment tag.
            for m in jitr_infra::Compute::list_managed(&cloud).await? {
                if chaos_seen.contains(&m.instance_id) {
                    continue;
                }
                if chaos_seen.is_empty() {
                    faulty.inject(Fault::RefuseTermination(m.instance_id.clone()), Some(3));
                }
                if chaos_seen.len() % 5 == 4 {
                    faulty.inject(Fault::Untagged(m.instance_id.clone()), None);
                }
                chaos_seen.push(m.instance_id);
            }
        }
        // GitHub: queued webhooks arrive (or get lost), possibly several times.
        for (job, arrival) in jobs.iter_mut().zip(&arrivals) {
            if *arrival / STEP_MS != elapsed / STEP_MS {
                continue;
            }
            job.arrived = true;
            job.arrived_at = t;
            github
                .queue_job(&QueuedJob {
                    owner: job.message.owner.clone(),
                    repo: job.message.repo.clone(),
                    job_id: job.message.job_id,
                    run_id: job.message.run_id,
                    labels: job.message.labels.clone(),
                    name: "build".into(),
                })
                .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
            let copies = match scenario {
                Scenario::DuplicateStorm => 5,
                Scenario::LostWebhooks if rng.random_bool(1.0 / 3.0) => 0,
                _ => 1,
            };
            let body = crate::app::scaleup::ScaleUpMessage::Job(job.message.clone()).encode();
            for _ in 0..copies {
                scaleup_queue.publish(&body, None, &[]).await?;
            }
        }
        // jitr: scale-up and lifecycle consumers, one message at a time (a crash
        // storm arms a crash before each scale-up message).
        loop {
            if scenario == Scenario::CrashStorm && rng.random_bool(0.3) {
                let points = [
                    CrashPoint::AfterLaunchIntended,
                    CrashPoint::AfterRunInstances,
                    CrashPoint::AfterLaunched,
                    CrashPoint::AfterTokenMinted,
                ];
                app.scaleup
                    .crash
                    .arm(points[rng.random_range(0..points.len())]);
            }
            if drain(&*scaleup_queue, &*app.scaleup, 1, Duration::ZERO, &now).await? == 0 {
                break;
            }
        }
        while drain(&*lifecycle_queue, &*app.lifecycle, 10, Duration::ZERO, &now).await? > 0 {}
        // GitHub: users cancel (cancel-in-progress: a newer push cancels the
        // older run's queued and running jobs), …
        for job in jobs.iter_mut() {
            let due = job.cancel_at_ms.is_some_and(|c| elapsed >= c);
            if job.completed || !job.arrived || !due {
                continue;
            }
            if job.started.is_some() {
                job.cancelled_running = true;
                let ending = Ending {
                    conclusion: "cancelled",
                    killed_before: Timestamp(t.0 - 1),
                    lost: lose_lifecycle(job.message.job_id, END),
                };
                end_job(job, ending, t, &*store, &*lifecycle_queue, &github).await?;
            } else {
                job.cancelled_queued = true;
                cancel_queued(job, t, &*lifecycle_queue, &github).await?;
            }
            last_completion = Some(t);
        }
        // … jobs start on runners — GitHub gives a queued job to an online,
        // idle runner whose labels match, whichever job the runner was
        // launched for ("Using self-hosted runners in a workflow", routing
        // precedence); the oldest job first (a runner is online 30 s after it
        // is ready) — and complete.
        let online = match scenario {
            Scenario::CancelStorm => Online::Jitter,
            Scenario::Workday => Online::AfterBoot,
            _ => Online::Fixed,
        };
        let mut idle =
            idle_runners(&projector, &*store, &cloud, &github, &app.policy, t, online).await?;
        // GitHub takes a moment to hand a job over: the workday models it
        // (other scenarios hand it over within the step).
        let dispatch_ms = if workday {
            workday::GITHUB_DISPATCH_MS
        } else {
            0
        };
        let mut queued: Vec<usize> = (0..jobs.len())
            .filter(|&i| jobs[i].arrived && jobs[i].started.is_none() && !jobs[i].completed)
            .filter(|&i| t.millis_since(jobs[i].arrived_at) >= dispatch_ms)
            .collect();
        queued.sort_by_key(|&i| (jobs[i].arrived_at, jobs[i].message.job_id));
        for i in queued {
            let message = &jobs[i].message;
            let pool = app
                .policy
                .pool_for(&message.labels)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            // A repository's runners take its jobs; an organisation's, its
            // repositories' jobs.
            let Some(at) = idle.iter().position(|r| {
                r.pool == pool
                    && match &r.scope {
                        RunnerScope::Repo { owner, repo } => {
                            *owner == message.owner && *repo == message.repo
                        }
                        RunnerScope::Org { org } => *org == message.owner,
                    }
            }) else {
                continue;
            };
            let IdleRunner {
                name: runner,
                instance,
                launched_for: own_job,
                online_at,
                ..
            } = idle.remove(at);
            let job = &mut jobs[i];
            let mut m = job.message.clone();
            m.action = "in_progress".into();
            m.delivery = format!("{}-start", m.delivery);
            m.runner_name = Some(runner.clone());
            let lost = lose_lifecycle(m.job_id, START);
            github_moves(&m, lost, &*lifecycle_queue, &github).await?;
            job.on_other_runner = own_job != m.job_id;
            job.warm_hit = online_at <= job.arrived_at;
            job.started = Some((runner, t));
            job.instance = instance;
        }
        for job in jobs.iter_mut() {
            let Some((_, started)) = &job.started else {
                continue;
            };
            if job.completed || t.millis_since(*started) < job.duration_ms {
                continue;
            }
            // Was its runner failed or told to terminate while it ran?
            let lost = lose_lifecycle(job.message.job_id, END);
            let ending = Ending {
                conclusion: "success",
                killed_before: Timestamp(t.0 - 1),
                lost,
            };
            end_job(job, ending, t, &*store, &*lifecycle_queue, &github).await?;
            last_completion = Some(t);
        }
        // jitr: projector and compensation, reaper and rebalancer every minute.
        if compensation {
            projector.tick(t).await?;
            loop {
                if scenario == Scenario::CrashStorm && rng.random_bool(0.3) {
                    app.compensation
                        .crash
                        .arm(CrashPoint::AfterTerminateInstances);
                }
                let drained = drain(
                    &*compensation_queue,
                    &*app.compensation,
                    1,
                    Duration::ZERO,
                    &compensator_now,
                )
                .await?;
                if drained == 0 {
                    break;
                }
            }
        } else {
            projector.catch_up().await?;
        }
        if elapsed % 60_000 == 0 {
            if compensation {
                if let Ok(sweep) = app.reaper.sweep(compensator_now()).await {
                    retagged += sweep.retagged.len() as u64;
                    sweep_errors += sweep.errors.len() as u64;
                }
            }
            let _ = app.rebalancer.tick(t).await;
        }
        // EC2's state-change events for this step, as EventBridge delivers
        // them; a `terminated` asks for an admission round, handled at once.
        // An instance that shuts down under a running job ends the job: GitHub
        // fails it when its runner is lost.
        let before = Timestamp(t.0 - STEP_MS as i64);
        let changes = cloud.state_changes(before, t)?;
        for (instance_id, state, gone_at) in &changes {
            if *state != "shutting-down" {
                continue;
            }
            let Some(job) = jobs
                .iter_mut()
                .find(|j| !j.completed && j.instance.as_ref() == Some(instance_id))
            else {
                continue;
            };
            // Killed by jitr: failed or told to terminate by the time the
            // instance went (a failure recorded after it went is the record of
            // a loss, not its cause).
            job.cut = true;
            let lost = lose_lifecycle(job.message.job_id, END);
            let ending = Ending {
                conclusion: "failure",
                killed_before: *gone_at,
                lost,
            };
            end_job(job, ending, t, &*store, &*lifecycle_queue, &github).await?;
            last_completion = Some(t);
        }
        if compensation {
            for (instance_id, at) in cloud.interruption_warnings(before, t)? {
                ec2_warned.insert(instance_id.clone(), at);
                let event = jitr_infra::Ec2Event::SpotInterruption {
                    instance_id,
                    action: "terminate".into(),
                    at: Some(at),
                };
                if let Err(e) = app.ec2_events.handle(&event, t).await {
                    tracing::warn!(error = %e, "EC2 event not handled");
                }
            }
            for (instance_id, state, at) in changes {
                if state == "terminated" {
                    cloud_freed.push(at);
                }
                let event = jitr_infra::Ec2Event::StateChange {
                    instance_id,
                    state: state.into(),
                    at: Some(at),
                };
                if let Err(e) = app.ec2_events.handle(&event, t).await {
                    tracing::warn!(error = %e, "EC2 event not handled");
                }
            }
            while drain(&*scaleup_queue, &*app.scaleup, 10, Duration::ZERO, &now).await? > 0 {}
        }
        for market in [Market::Spot, Market::OnDemand] {
            let used = cloud.vcpus_in_use(market)?;
            let entry = peak.entry(market.as_str().to_owned()).or_default();
            *entry = (*entry).max(used);
        }
        let all_done = jobs.iter().all(|j| j.completed);
        if all_done && quota_free_at.is_none() {
            let used = cloud.vcpus_in_use(Market::Spot)? + cloud.vcpus_in_use(Market::OnDemand)?;
            if used == 0 {
                quota_free_at = Some(t);
            }
        }
        let waiting = projector
            .views()
            .open
            .values()
            .filter(|s| s.status() == RunnerStatus::Requested && s.failure.is_none())
            .count();
        if waiting > 0 {
            let used = cloud.vcpus_in_use(Market::Spot)? + cloud.vcpus_in_use(Market::OnDemand)?;
            waiting_steps += 1;
            utilisation_sum += f64::from(used) / f64::from(quota.max(1));
        }
        if all_done && (quota_free_at.is_some() || elapsed >= limit_ms) {
            break;
        }
        if all_done
            && !compensation
            && last_completion.is_some_and(|l| t.millis_since(l) > 15 * 60_000)
        {
            break;
        }
        written_by.push((store.last_position().await?, t));
        clock.advance(STEP_MS);
        elapsed += STEP_MS;
    }

    let end = now();
    let replayed = audit::replay(
        &*store,
        jitr_projections::books::Window::everything(end, 60_000),
        Some(end),
        |_| {},
    )
    .await?;
    let figures = replayed.ledger.figures(t0, end, 60_000);
    let mut launch_failures: BTreeMap<String, u64> = BTreeMap::new();
    let lifetimes = cloud.lifetimes()?;
    let mut intents: BTreeMap<StreamId, ClientToken> = BTreeMap::new();
    let mut premature = 0u64;
    let mut strays = 0u64;
    // Whether an instance `pick` chooses ran when the event at `position` was
    // written (by the true clock, whatever its writer's said).
    let ran = |position: u64, pick: &dyn Fn(&jitr_infra::SimLifetime) -> bool| {
        let step = written_by.partition_point(|(head, _)| *head < position);
        let at = written_by.get(step).map_or(end, |(_, t)| *t);
        lifetimes.iter().any(|l| pick(l) && l.ran_at(at))
    };
    let mut from_polls = 0u64;
    let mut pool_of: BTreeMap<StreamId, String> = BTreeMap::new();
    let mut requested_at: BTreeMap<StreamId, Timestamp> = BTreeMap::new();
    let mut first_launch: BTreeMap<StreamId, Timestamp> = BTreeMap::new();
    let mut events_per_job: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let repository = |stream: &StreamId| {
        stream
            .as_str()
            .split('#')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let mut freed_at: Vec<Timestamp> = Vec::new();
    let mut runners_failed = 0u64;
    let mut failed_for_rate_limit = 0u64;
    let mut surplus_retired = 0u64;
    let mut idle_since: BTreeMap<StreamId, Timestamp> = BTreeMap::new();
    let mut idle_until: BTreeMap<StreamId, Timestamp> = BTreeMap::new();
    let mut launches_by_pool: BTreeMap<String, u64> = BTreeMap::new();
    let mut terminations: BTreeMap<StreamId, Timestamp> = BTreeMap::new();
    let mut spot_interruptions: BTreeMap<String, u64> = BTreeMap::new();
    let mut interruptions_by_pool_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut instance_type_of: BTreeMap<StreamId, String> = BTreeMap::new();
    // Warnings before the job started: the job and the attempt that follows.
    let mut relaunch_wanted: Vec<(StreamId, Timestamp)> = Vec::new();
    let mut woken = 0u64;
    let mut after = 0;
    loop {
        let page = store.read_all(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for r in &page {
            *events_per_job
                .entry((repository(&r.stream), r.stream.job_id()))
                .or_default() += 1;
            match &r.event {
                RunnerEvent::Requested { at, .. } => {
                    requested_at.entry(r.stream.clone()).or_insert(*at);
                }
                RunnerEvent::Launched {
                    at, instance_type, ..
                } => {
                    first_launch.entry(r.stream.clone()).or_insert(*at);
                    instance_type_of.insert(r.stream.clone(), instance_type.clone());
                }
                RunnerEvent::SpotInterruptionWarned {
                    at,
                    job_started,
                    instance_id,
                } => {
                    let when = if *job_started {
                        "after-start"
                    } else {
                        "before-start"
                    };
                    *spot_interruptions.entry(when.into()).or_default() += 1;
                    let key = format!(
                        "{} {}",
                        pool_of.get(&r.stream).map_or("-", String::as_str),
                        instance_type_of.get(&r.stream).map_or("-", String::as_str)
                    );
                    *interruptions_by_pool_type.entry(key).or_default() += 1;
                    if !*job_started {
                        let issued = ec2_warned.get(instance_id).copied().unwrap_or(*at);
                        relaunch_wanted.push((r.stream.clone(), issued));
                    }
                }
                RunnerEvent::Terminated {
                    at,
                    instance_id: Some(_),
                    ..
                } => freed_at.push(*at),
                RunnerEvent::Woken { .. } => woken += 1,
                RunnerEvent::Failed { stage, reason, .. } => {
                    runners_failed += 1;
                    failed_for_rate_limit += u64::from(reason.contains("rate limit"));
                    surplus_retired += u64::from(*stage == jitr_domain::FailureStage::Surplus);
                }
                _ => {}
            }
            match &r.event {
                RunnerEvent::TokenMinted { at, .. } => {
                    idle_since.entry(r.stream.clone()).or_insert(*at);
                }
                RunnerEvent::JobStarted { at, .. }
                | RunnerEvent::JobCompleted { at, .. }
                | RunnerEvent::DeregistrationRefused { at, .. }
                | RunnerEvent::Failed { at, .. }
                | RunnerEvent::TerminationRequested { at, .. }
                | RunnerEvent::Terminated { at, .. }
                    if idle_since.contains_key(&r.stream) =>
                {
                    idle_until.entry(r.stream.clone()).or_insert(*at);
                }
                _ => {}
            }
            let early = match &r.event {
                RunnerEvent::LaunchRejected { code, .. } => {
                    *launch_failures.entry(code.clone()).or_default() += 1;
                    false
                }
                RunnerEvent::Requested { spec, .. } => {
                    let pool = spec.pool.clone().unwrap_or_else(|| "-".into());
                    pool_of.insert(r.stream.clone(), pool);
                    false
                }
                RunnerEvent::Launched {
                    instance_type,
                    market,
                    ..
                } => {
                    let pool = pool_of.get(&r.stream).map_or("-", String::as_str);
                    let key = format!("{pool} {instance_type} {}", market.as_str());
                    *launches_by_pool.entry(key).or_default() += 1;
                    false
                }
                RunnerEvent::LaunchIntended { client_token, .. } => {
                    intents.insert(r.stream.clone(), client_token.clone());
                    false
                }
                RunnerEvent::StrayLaunched { .. } => {
                    strays += 1;
                    false
                }
                RunnerEvent::JobStarted { source, .. }
                | RunnerEvent::JobCompleted { source, .. } => {
                    from_polls += u64::from(*source == jitr_domain::JobSource::Poll);
                    false
                }
                RunnerEvent::TerminationRequested { at, .. } => {
                    terminations.entry(r.stream.clone()).or_insert(*at);
                    false
                }
                RunnerEvent::Terminated {
                    instance_id: Some(id),
                    ..
                }
                | RunnerEvent::StrayTerminated {
                    instance_id: id, ..
                } => ran(r.position, &|l| l.instance_id == *id),
                RunnerEvent::Terminated {
                    instance_id: None, ..
                } => {
                    let token = intents.get(&r.stream);
                    ran(r.position, &|l| Some(&l.client_token) == token)
                }
                _ => false,
            };
            premature += u64::from(early);
        }
    }
    let closed_by = audit::closed_by(&replayed.ledger);
    let alive = jitr_infra::Compute::list_managed(&cloud)
        .await?
        .into_iter()
        .filter(|m| m.state.is_live())
        .count();
    let served = jobs
        .iter()
        .filter(|j| j.completed && j.started.is_some() && !j.killed && !j.cut)
        .filter(|j| !j.cancelled_queued && !j.cancelled_running)
        .count() as u64;
    let mut idle = Vec::new();
    for job in jobs.iter().filter(|j| !j.cut) {
        let (Some((runner, _)), Some(done)) = (&job.started, job.completed_at) else {
            continue;
        };
        let Some(stream) = store.stream_of_runner(runner).await? else {
            continue;
        };
        let issued = terminations.get(&stream).copied().unwrap_or(end);
        idle.push(issued.0.saturating_sub(done.0).max(0) as u64);
    }
    let mut waited: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (stream, at) in &requested_at {
        if let Some(launched) = first_launch.get(stream) {
            waited
                .entry(repository(stream))
                .or_default()
                .push(launched.millis_since(*at));
        }
    }
    let mut launches: Vec<Timestamp> = first_launch.values().copied().collect();
    launches.sort();
    let waiting_at = |t: Timestamp| {
        requested_at
            .iter()
            .any(|(s, at)| *at <= t && first_launch.get(s).is_none_or(|l| *l > t))
    };
    let next_launch_after = |freed: &[Timestamp]| -> Vec<u64> {
        freed
            .iter()
            .filter(|t| waiting_at(**t))
            .filter_map(|t| {
                let i = launches.partition_point(|l| l < t);
                launches.get(i).map(|l| l.millis_since(*t))
            })
            .collect()
    };
    let wake = next_launch_after(&freed_at);
    let cloud_wake = next_launch_after(&cloud_freed);
    let per_job: Vec<u64> = events_per_job.values().copied().collect();
    let relaunched: Vec<u64> = relaunch_wanted
        .iter()
        .filter_map(|(stream, warned)| {
            let request = replayed.ledger.runners.get(stream)?.state.request.clone()?;
            let next = StreamId::for_job(&request.job, request.attempt + 1).ok()?;
            // Not relaunched (yet): counted as the whole rest of the run.
            Some(
                first_launch
                    .get(&next)
                    .map_or(end.millis_since(*warned), |l| l.millis_since(*warned)),
            )
        })
        .collect();
    let workday_figures = workday.then(|| {
        let starts: Vec<(Timestamp, Timestamp, bool)> = jobs
            .iter()
            .filter_map(|j| Some((j.arrived_at, j.started.as_ref()?.1, j.warm_hit)))
            .collect();
        let instance_ms: u64 = lifetimes
            .iter()
            .map(|l| l.terminating_at.unwrap_or(end).millis_since(l.launched_at))
            .sum();
        let busy_ms: u64 = jobs
            .iter()
            .filter_map(|j| {
                let started = j.started.as_ref()?.1;
                Some(j.completed_at.unwrap_or(end).millis_since(started))
            })
            .sum();
        let stopped_ms = cloud.stopped_ms(end).unwrap_or(0);
        // A stopped instance costs its volume, not instance time.
        let instance_ms = instance_ms.saturating_sub(stopped_ms);
        workday::figures(warm, &starts, instance_ms, busy_ms, stopped_ms, woken)
    });
    Ok(SimulationReport {
        scenario,
        seed,
        compensation,
        jobs: count,
        jobs_served: served,
        orphans_found: figures.orphans,
        orphan_vcpu_minutes: (figures.orphan_vcpu_minutes * 100.0).round() / 100.0,
        peak_vcpus: peak,
        launch_failures_by_code: launch_failures,
        launches_by_pool,
        compensation_latency_ms: figures.compensation_latency_ms,
        quota_free_after_ms: match (last_completion, quota_free_at) {
            (Some(l), Some(f)) => Some(f.millis_since(l)),
            _ => None,
        },
        simulated_ms: end.millis_since(t0),
        instances_alive_at_end: alive,
        consistency_window_ms: window_ms,
        premature_terminations: premature,
        compensator_clock_skew_ms: skew_ms,
        closed_by,
        strays,
        retagged,
        sweep_errors,
        job_poll_interval_ms,
        job_polls,
        lifecycle_webhooks_lost: lifecycle_lost,
        lifecycle_from_polls: from_polls,
        jobs_killed_by_jitr: jobs.iter().filter(|j| j.killed).count() as u64,
        jobs_served_by_other_runner: jobs.iter().filter(|j| j.on_other_runner).count() as u64,
        jobs_cancelled_queued: jobs.iter().filter(|j| j.cancelled_queued).count() as u64,
        jobs_cancelled_running: jobs
            .iter()
            .filter(|j| j.cancelled_running && !j.killed)
            .count() as u64,
        jobs_unserved: count
            - served
            - jobs
                .iter()
                .filter(|j| j.cancelled_queued || (j.cancelled_running && !j.killed))
                .count() as u64,
        surplus_runners_retired: surplus_retired,
        idle_runner_minutes: {
            let idle_ms: u64 = idle_since
                .iter()
                .map(|(stream, ready)| {
                    idle_until
                        .get(stream)
                        .copied()
                        .unwrap_or(end)
                        .millis_since(*ready)
                })
                .sum();
            (idle_ms as f64 / 60_000.0 * 100.0).round() / 100.0
        },
        idle_after_job_ms: Distribution::of(idle),
        runners_failed,
        scaleup_dead_letters: scaleup_queue.dead_letter_depth().await?,
        admission: app.scaleup.admission_stats(),
        waited_ms_by_repository: waited
            .into_iter()
            .map(|(repo, ms)| (repo, Distribution::of(ms)))
            .collect(),
        events_per_job_mean: if per_job.is_empty() {
            0.0
        } else {
            (per_job.iter().sum::<u64>() as f64 / per_job.len() as f64 * 10.0).round() / 10.0
        },
        events_per_job_max: per_job.iter().copied().max().unwrap_or(0),
        utilisation_while_waiting_pct: (waiting_steps > 0)
            .then(|| (utilisation_sum / waiting_steps as f64 * 1000.0).round() / 10.0),
        wake_to_launch_ms: Distribution::of(wake),
        cloud_freed_to_launch_ms: Distribution::of(cloud_wake),
        spot_interruptions,
        spot_interruptions_by_pool_type: interruptions_by_pool_type,
        relaunch_after_interruption_ms: Distribution::of(relaunched),
        jobs_cut: jobs.iter().filter(|j| j.cut && !j.killed).count() as u64,
        runners_failed_for_rate_limit: failed_for_rate_limit,
        github: {
            let stats = paced.stats();
            GitHubPacing {
                secondary_limited_mints: limited.as_ref().map_or(0, |f| f.limited_mints()),
                deferred: stats.deferred,
                max_per_minute: stats.max_per_minute,
                max_per_hour: stats.max_per_hour,
            }
        },
        workday: workday_figures,
    })
}

/// How a simulated job ends on GitHub.
struct Ending {
    /// `workflow_job.conclusion`.
    conclusion: &'static str,
    /// The job counts as killed when jitr failed its runner or asked for its
    /// termination at or before this moment.
    killed_before: Timestamp,
    /// Its `completed` webhook is lost.
    lost: bool,
}

/// Ends `job` at `t`: its `completed` webhook (unless lost), GitHub's record
/// of it, and whether jitr had killed it.
async fn end_job(
    job: &mut Job,
    ending: Ending,
    t: Timestamp,
    store: &dyn EventStore,
    lifecycle_queue: &dyn Queue,
    github: &SimGitHub,
) -> Result<(), ServeError> {
    let (runner, _) = job.started.clone().expect("an ending job started");
    let mut m = job.message.clone();
    m.action = "completed".into();
    m.delivery = format!("{}-{}", m.delivery, ending.conclusion);
    m.runner_name = Some(runner.clone());
    m.conclusion = Some(ending.conclusion.into());
    if let Some(stream) = store.stream_of_runner(&runner).await? {
        if let Some(head) = store.head(&stream).await? {
            let state = &head.state;
            let cutoff = ending.killed_before;
            job.killed = state.failure.as_ref().is_some_and(|f| f.at <= cutoff)
                || state
                    .termination_requested
                    .is_some_and(|(at, _)| at <= cutoff);
        }
    }
    github_moves(&m, ending.lost, lifecycle_queue, github).await?;
    job.completed = true;
    job.completed_at = Some(t);
    Ok(())
}

/// Its user cancels `job` while it is queued: GitHub's `completed` with no
/// runner and conclusion `cancelled`.
async fn cancel_queued(
    job: &mut Job,
    t: Timestamp,
    lifecycle_queue: &dyn Queue,
    github: &SimGitHub,
) -> Result<(), ServeError> {
    let mut m = job.message.clone();
    m.action = "completed".into();
    m.delivery = format!("{}-cancelled", m.delivery);
    m.conclusion = Some("cancelled".into());
    github_moves(&m, false, lifecycle_queue, github).await?;
    job.completed = true;
    job.completed_at = Some(t);
    Ok(())
}

/// GitHub moves a job as `m` says (`in_progress` or `completed`, on
/// `m.runner_name` when it names one) and sends its webhook, unless `lost`.
async fn github_moves(
    m: &JobMessage,
    lost: bool,
    lifecycle_queue: &dyn Queue,
    github: &SimGitHub,
) -> Result<(), ServeError> {
    if !lost {
        lifecycle_queue
            .publish(&serde_json::to_string(m).expect("json"), None, &[])
            .await?;
    }
    github
        .set_job_status(
            &m.owner,
            &m.repo,
            m.job_id,
            &m.action,
            m.runner_name.as_deref(),
        )
        .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))
}

/// An idle runner GitHub may give a job.
struct IdleRunner {
    /// Since when it is online.
    online_at: Timestamp,
    /// Its name.
    name: String,
    /// Its instance.
    instance: Option<InstanceId>,
    /// The job it was launched for.
    launched_for: u64,
    /// Its pool.
    pool: String,
    /// Where it is registered.
    scope: RunnerScope,
}

/// When a runner is online, counted from the handover of its JIT config.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Online {
    /// 30 s after it.
    Fixed,
    /// 15–105 s after it, by runner (the runner's start varies with the image,
    /// its caches and the network), so that runners come online out of launch
    /// order.
    Jitter,
    /// [`workday::RUNNER_START_MS`] after both the handover and its instance's
    /// boot (drawn by the simulator).
    AfterBoot,
}

/// How long after its JIT config is handed over a runner is online, for
/// [`Online::Fixed`] and [`Online::Jitter`].
fn online_after_ms(runner: &str, jitter: bool) -> u64 {
    if !jitter {
        return 30_000;
    }
    let spread = runner
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    15_000 + spread % 90_000
}

/// jitr's runners that GitHub sees online and idle, the longest idle first:
/// handed their JIT config a while ago (the runner has started and connected),
/// on an instance that runs, registered and not busy — whatever jitr's log says
/// of them (GitHub does not know it: a runner jitr is about to terminate takes
/// a job all the same while it is registered and idle).
async fn idle_runners(
    projector: &crate::app::projector::Projector,
    store: &dyn EventStore,
    cloud: &jitr_infra::SimCloud,
    github: &SimGitHub,
    policy: &RunnerPolicy,
    t: Timestamp,
    online: Online,
) -> Result<Vec<IdleRunner>, ServeError> {
    let mut idle = Vec::new();
    // The projector's views (a step behind) say which runners may have a
    // registration: only those are read.
    let candidates: Vec<StreamId> = projector
        .views()
        .open
        .iter()
        .filter(|(_, s)| s.instance_may_be_alive() && s.launch.is_some())
        .map(|(stream, _)| stream.clone())
        .collect();
    for stream in candidates {
        let Some(head) = store.head(&stream).await? else {
            continue;
        };
        let state = &head.state;
        let (Some(ready_at), Some(name), Some(request)) = (
            state.ready_at,
            state.runner_name.clone(),
            state.request.as_ref(),
        ) else {
            continue;
        };
        let Some(instance) = head.instance_id.as_ref() else {
            continue;
        };
        let online_at = match online {
            Online::AfterBoot => {
                let booted = cloud.running_at(instance)?.unwrap_or(ready_at);
                ready_at.max(booted).plus_ms(workday::RUNNER_START_MS)
            }
            _ => ready_at.plus_ms(online_after_ms(&name, online == Online::Jitter)),
        };
        if t < online_at || !github.is_idle(&name) {
            continue;
        }
        let runs = jitr_infra::Compute::describe(cloud, instance)
            .await?
            .is_some_and(|m| m.state.is_live());
        if !runs {
            continue;
        }
        idle.push(IdleRunner {
            online_at,
            name,
            instance: head.instance_id.clone(),
            launched_for: stream.job_id(),
            pool: request.spec.pool.clone().unwrap_or_default(),
            scope: policy.scope_of(request),
        });
    }
    idle.sort_by(|a, b| (a.online_at, &a.name).cmp(&(b.online_at, &b.name)));
    Ok(idle)
}

/// The cancel storm's pushes: 15 pushes of 8 jobs over 20 minutes, each
/// job queued within 3 s of its push. 40 % of the pushes are superseded by a
/// newer push to their branch 20–150 s later, and `cancel-in-progress`
/// cancels every job of the superseded run still queued or running
/// ("Control the concurrency of workflows and jobs": a pending or running job
/// of the group is cancelled). Returns each job's arrival (ms into the run)
/// and sets its cancellation.
fn cancel_storm(jobs: &mut [Job], rng: &mut StdRng) -> Vec<u64> {
    let per_push = 8;
    let mut arrivals = Vec::with_capacity(jobs.len());
    for (push, run) in jobs.chunks_mut(per_push).enumerate() {
        let at = rng.random_range(0..20 * 60_000u64);
        let superseded = rng
            .random_bool(0.4)
            .then(|| at + rng.random_range(20_000..150_000));
        for job in run.iter_mut() {
            job.message.run_id = 900 + push as u64;
            job.cancel_at_ms = superseded;
            arrivals.push(at + rng.random_range(0..3_000));
        }
    }
    arrivals
}

/// The report for people.
pub fn render(r: &SimulationReport) -> String {
    let c = &r.compensation_latency_ms;
    let failures: Vec<String> = r
        .launch_failures_by_code
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let peaks: Vec<String> = r
        .peak_vcpus
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let mut out = format!(
        "scenario {} (seed {}), compensation {}\n\
         jobs served            {}/{}\n\
         orphans found          {}\n\
         orphan vCPU-minutes    {:.2}\n\
         peak vCPUs             {}\n\
         launch refusals        {}\n\
         launches               {}\n\
         compensation latency   {} terminations, p50 {} ms, p99 {} ms, max {} ms\n\
         quota free again       {}\n\
         instances alive at end {}\n\
         premature terminations {} (consistency window {} s, compensator's clock {:+} s)\n\
         closed on evidence     {}\n\
         stray instances        {}\n\
         reaper                 {} re-tagged, {} item errors swept past\n\
         lifecycle webhooks     {} lost, {} events recorded from job polls ({})\n\
         jobs killed by jitr    {}\n\
         jobs and runners       {} served by another job's runner, {} cancelled queued, {} cancelled running, {} unserved; {} surplus runners retired, {:.1} idle runner-minutes\n\
         job done → terminate   p50 {} s, max {} s\n\
         failed / dead-lettered {} runners failed, {} scale-up dead letters\n\
         admission rounds       {} rounds, {} launched, {} refused (at most {} for one pool in one round)\n\
         waited for capacity    {}\n\
         events per job         mean {}, max {}\n\
         quota in use (waiting) {}\n\
         freed → next launch    {} frees, p50 {} ms, p99 {} ms, max {} ms (from Terminated); {} frees, p50 {} ms, p99 {} ms, max {} ms (from EC2's terminated)\n\
         spot interruptions     {}; jobs cut {}; warned → relaunched p50 {} ms, p99 {} ms, max {} ms ({} relaunches)\n\
         GitHub content         {} secondary rate limits met, {} deferred; most {}/min (80 allowed), {}/h (500 allowed); runners failed for a rate limit {}\n\
         simulated time         {} s\n",
        r.scenario.name(),
        r.seed,
        if r.compensation {
            "on"
        } else {
            "OFF (ablation)"
        },
        r.jobs_served,
        r.jobs,
        r.orphans_found,
        r.orphan_vcpu_minutes,
        peaks.join(", "),
        if failures.is_empty() {
            "none".into()
        } else {
            failures.join(", ")
        },
        r.launches_by_pool
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        c.count,
        c.p50,
        c.p99,
        c.max,
        r.quota_free_after_ms
            .map_or("never, within the run".into(), |ms| format!(
                "{} s after the last job",
                ms / 1000
            )),
        r.instances_alive_at_end,
        r.premature_terminations,
        r.consistency_window_ms / 1000,
        r.compensator_clock_skew_ms / 1000,
        r.closed_by
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.strays,
        r.retagged,
        r.sweep_errors,
        r.lifecycle_webhooks_lost,
        r.lifecycle_from_polls,
        match (r.job_polls, r.job_poll_interval_ms / 1000) {
            (false, _) => "job reads OFF (ablation)".to_owned(),
            (true, 0) => "only before deadline terminations".to_owned(),
            (true, s) => format!("every {s} s and before deadline terminations"),
        },
        r.jobs_killed_by_jitr,
        r.jobs_served_by_other_runner,
        r.jobs_cancelled_queued,
        r.jobs_cancelled_running,
        r.jobs_unserved,
        r.surplus_runners_retired,
        r.idle_runner_minutes,
        r.idle_after_job_ms.p50 / 1000,
        r.idle_after_job_ms.max / 1000,
        r.runners_failed,
        r.scaleup_dead_letters,
        r.admission.rounds,
        r.admission.launched,
        r.admission.refused,
        r.admission.most_refused_per_pool_in_a_round,
        r.waited_ms_by_repository
            .iter()
            .map(|(repo, d)| format!(
                "{repo}: {} jobs, p50 {} s, p90 {} s, max {} s",
                d.count,
                d.p50 / 1000,
                d.p90 / 1000,
                d.max / 1000
            ))
            .collect::<Vec<_>>()
            .join("; "),
        r.events_per_job_mean,
        r.events_per_job_max,
        r.utilisation_while_waiting_pct
            .map_or("no job waited".into(), |p| format!("{p} %")),
        r.wake_to_launch_ms.count,
        r.wake_to_launch_ms.p50,
        r.wake_to_launch_ms.p99,
        r.wake_to_launch_ms.max,
        r.cloud_freed_to_launch_ms.count,
        r.cloud_freed_to_launch_ms.p50,
        r.cloud_freed_to_launch_ms.p99,
        r.cloud_freed_to_launch_ms.max,
        if r.spot_interruptions.is_empty() {
            "none".to_owned()
        } else {
            r.spot_interruptions
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        r.jobs_cut,
        r.relaunch_after_interruption_ms.p50,
        r.relaunch_after_interruption_ms.p99,
        r.relaunch_after_interruption_ms.max,
        r.relaunch_after_interruption_ms.count,
        r.github.secondary_limited_mints,
        r.github.deferred,
        r.github.max_per_minute,
        r.github.max_per_hour,
        r.runners_failed_for_rate_limit,
        r.simulated_ms / 1000,
    );
    if let Some(w) = &r.workday {
        let d = |d: &Distribution| {
            format!(
                "{} jobs, p50 {:.1} s, p99 {:.1} s, max {:.1} s",
                d.count,
                d.p50 as f64 / 1000.0,
                d.p99 as f64 / 1000.0,
                d.max as f64 / 1000.0
            )
        };
        out.push_str(&format!(
            "warm pool              {:?} ({} idle in working hours)\n\
             queued → started       {}\n\
             \x20 in working hours     {}\n\
             \x20 outside them         {}\n\
             warm hits              {} ({:.1} %); {} parked runners woken\n\
             instance-minutes       {:.1} idle, {:.1} busy; {:.1} stopped volume-minutes\n\
             idle cost              ${:.2}\n",
            w.warm,
            w.window_min_idle,
            d(&w.queued_to_started_ms),
            d(&w.queued_to_started_in_window_ms),
            d(&w.queued_to_started_outside_window_ms),
            w.warm_hits,
            w.warm_hit_ratio * 100.0,
            w.parked_runners_woken,
            w.idle_instance_minutes,
            w.busy_instance_minutes,
            w.stopped_volume_minutes,
            w.idle_cost_usd,
        ));
    }
    out
}

/// `jitr simulate` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Turn compensation and the reaper off (what would leak without them).
    #[arg(long)]
    without_compensation: bool,
    /// The consistency window recorded in each runner's `Requested`; `0s`
    /// restores the behaviour before issue 9 (NotFound taken as proof at once).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    consistency_window: Duration,
    /// How often the reaper asks GitHub for a ready or running runner's job;
    /// `0s`: only before a boot-deadline or max-age termination.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    job_poll_interval: Duration,
    /// Every job read answers "unknown" (what lost webhooks cost without polls).
    #[arg(long)]
    without_job_polls: bool,
    /// Runner pools (TOML, see `docs/pools.example.toml`): the burst's jobs take
    /// each pool's labels in turn; the simulated region has each pool's image,
    /// of the pool's architecture, and refuses a type of another.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `TYPE=N`: past N instances of a type the simulator answers
    /// InsufficientInstanceCapacity (repeatable).
    #[arg(long = "type-capacity", value_parser = super::serve::type_capacity)]
    type_capacity: Vec<(String, u32)>,
    /// How long after a state change or spot interruption warning EC2's event
    /// reaches jitr (EventBridge delivers within seconds).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    event_delay: Duration,
    /// One JIT mint in N (drawn from the seed) meets GitHub's secondary rate
    /// limit (its documented 403 without `retry-after`).
    #[arg(long, value_name = "N")]
    github_secondary_limits: Option<u64>,
    /// How the `workday` scenario's pool keeps capacity warm.
    #[arg(long, value_enum, default_value_t = WarmSetting::Schedule)]
    warm: WarmSetting,
    /// Seconds the compensating process's clock (compensation and the
    /// reaper) is off the true time: positive fast, negative slow.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    compensator_clock_skew: i64,
    /// Keep the simulated log here (for `jitr audit` / `history`); default: a
    /// scratch directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the scenario and prints its report.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            if d.join(super::LOG_FILE).exists() {
                anyhow::bail!(
                    "{} already holds a log: simulate into an empty --data-dir",
                    d.display()
                );
            }
            d.clone()
        }
        None => scratch.path().to_path_buf(),
    };
    let options = SimOptions {
        compensation: !args.without_compensation,
        consistency_window_ms: args.consistency_window.as_millis() as u64,
        job_poll_interval_ms: args.job_poll_interval.as_millis() as u64,
        job_polls: !args.without_job_polls,
        pools: match &args.config {
            Some(file) => {
                let config = super::config::load(file)?;
                for warning in &config.warnings {
                    eprintln!("jitr simulate: {}: warning: {warning}", file.display());
                }
                Some(config.pools)
            }
            None => None,
        },
        type_capacity: args.type_capacity.iter().cloned().collect(),
        event_delay_ms: args.event_delay.as_millis() as u64,
        github_secondary_one_in: args.github_secondary_limits,
        compensator_clock_skew_ms: args.compensator_clock_skew * 1000,
        warm: args.warm,
    };
    let report = run_with(&dir, args.scenario, args.seed, options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
