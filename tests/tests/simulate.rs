//! `jitr simulate`: the seed incident with and without compensation, and the
//! audit's reconstruction of the past against the simulator's own record.

use jitr_domain::{InstanceId, Timestamp};
use jitr_handlers::commands::audit;
use jitr_handlers::commands::simulate::{Scenario, SimOptions, run, run_with};
use jitr_infra::{ManualClock, SimCloud, SimSettings, SqliteEventStore};
use jitr_projections::books::Window;

const T0: i64 = 1_777_868_520_000;

#[tokio::test]
async fn the_seed_incident_leaks_nothing_with_compensation_and_leaks_without() {
    let with = tempfile::tempdir().unwrap();
    let report = run(with.path(), Scenario::SeedIncident, 1, true)
        .await
        .unwrap();
    assert_eq!(report.jobs_served, report.jobs, "{report:?}");
    assert_eq!(report.orphans_found, 0, "{report:?}");
    assert_eq!(report.orphan_vcpu_minutes, 0.0);
    assert!(
        report
            .launch_failures_by_code
            .contains_key("MaxSpotInstanceCountExceeded")
    );
    assert!(
        report
            .launch_failures_by_code
            .contains_key("VcpuLimitExceeded")
    );
    assert!(
        report.compensation_latency_ms.count > 0,
        "mint failures were compensated"
    );
    assert!(
        report.quota_free_after_ms.is_some_and(|ms| ms <= 60_000),
        "quota free within one reaper cycle: {report:?}"
    );
    assert_eq!(report.peak_vcpus.get("on-demand"), Some(&32));

    let without = tempfile::tempdir().unwrap();
    let ablation = run(without.path(), Scenario::SeedIncident, 1, false)
        .await
        .unwrap();
    assert!(ablation.orphans_found > 0, "{ablation:?}");
    assert!(ablation.orphan_vcpu_minutes > 0.0);
    assert!(
        ablation.jobs_served < ablation.jobs,
        "the pinned quota starves the release"
    );
}

/// Issue 11: `simulate --config` runs the same pool selection as `serve`: each
/// job goes to the pool its labels select, on that pool's types and market
/// (a type out of capacity → the pool's next type). (The region's refusal of a
/// type whose architecture is not its image's: `infra/tests/sim.rs`.)
#[tokio::test]
async fn the_simulator_follows_the_pools_types_and_architectures() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/pools.example.toml"
    ))
    .unwrap();
    let pools = jitr_handlers::app::pools::parse(&text).unwrap().pools;
    let dir = tempfile::tempdir().unwrap();
    let options = SimOptions {
        pools: Some(pools.clone()),
        type_capacity: [("c7g.xlarge".to_owned(), 2)].into(),
        ..SimOptions::default()
    };
    let report = run_with(dir.path(), Scenario::DuplicateStorm, 1, options)
        .await
        .unwrap();
    assert_eq!(report.jobs_served, report.jobs, "{report:?}");
    assert_eq!(report.instances_alive_at_end, 0);
    let mut launched_per_pool = std::collections::BTreeMap::<&str, u64>::new();
    for (key, count) in &report.launches_by_pool {
        let [pool, instance_type, market] = key.split(' ').collect::<Vec<_>>()[..] else {
            panic!("{key}");
        };
        let pool = pools.iter().find(|p| p.name == pool).expect(key);
        assert!(
            pool.instance_types.iter().any(|t| t == instance_type),
            "{key}: not one of the pool's types"
        );
        if !pool.spot {
            assert_eq!(market, "on-demand", "{key}");
        }
        *launched_per_pool.entry(&pool.name).or_default() += count;
    }
    // 24 jobs, each pool's labels in turn: 8 a pool, each launched at least once.
    assert_eq!(launched_per_pool.len(), 3, "{:?}", report.launches_by_pool);
    assert!(launched_per_pool.values().all(|n| *n >= 8));
    assert!(
        report
            .launches_by_pool
            .keys()
            .any(|k| k.starts_with("linux-arm64 c6g.xlarge")),
        "past c7g.xlarge's capacity the arm64 pool's next type: {:?}",
        report.launches_by_pool
    );
    assert!(
        report
            .launch_failures_by_code
            .contains_key("InsufficientInstanceCapacity")
    );
}

/// Issue 12 (ADR-0014): 500 jobs in two minutes on a 48-vCPU quota. Nothing is
/// given up, the quota stays full while jobs wait, a refused market is not
/// asked again by every waiting job (nor while an instance EC2 said is
/// shutting down still counts), and the smaller repository is not starved by
/// the larger one's burst.
#[tokio::test]
async fn a_burst_of_500_jobs_waits_for_capacity_and_is_served_fairly() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), Scenario::Burst, 1, true).await.unwrap();
    assert_eq!(report.jobs, 500);
    assert_eq!(report.jobs_served, 500, "{report:?}");
    assert_eq!(report.runners_failed, 0);
    assert_eq!(report.scaleup_dead_letters, 0);
    assert_eq!(report.orphan_vcpu_minutes, 0.0);
    assert_eq!(report.instances_alive_at_end, 0);
    assert!(
        report.admission.most_refused_per_pool_in_a_round <= 1,
        "one refusal per pool and round at most: {:?}",
        report.admission
    );
    let utilisation = report.utilisation_while_waiting_pct.unwrap();
    assert!(utilisation >= 90.0, "{utilisation} %");
    // Past learning each market's quota once, RunInstances is refused only by
    // the probes past the ceiling: one per market every five quiet minutes.
    let probes = report.simulated_ms / jitr_domain::PROBE_AFTER_MS + 2;
    assert!(
        report.admission.refused <= 2 * probes,
        "{} refusals in {} s: {:?}",
        report.admission.refused,
        report.simulated_ms / 1000,
        report.launch_failures_by_code
    );
    assert!(
        report.events_per_job_max <= 20,
        "{}",
        report.events_per_job_max
    );
    let docs = &report.waited_ms_by_repository["acme/docs"];
    let release = &report.waited_ms_by_repository["acme/release"];
    assert_eq!((docs.count, release.count), (100, 400));
    assert!(
        docs.p50 * 2 < release.p50 && docs.max < release.max,
        "the small repository shares the capacity: docs {docs:?}, release {release:?}"
    );
    burst_cost_is_instance_time_times_prices(dir.path()).await;
}

/// Issue 27: `jitr cost` over the burst's log equals the instance time read
/// off the events here (each runner's `Launched` to its `Terminated`) times
/// the prices, by repository and in all.
async fn burst_cost_is_instance_time_times_prices(dir: &std::path::Path) {
    use jitr_domain::{Market, RunnerEvent};
    use jitr_handlers::commands::cost::{GroupBy, Prices, price, usage};
    use jitr_infra::EventStore;
    use std::collections::BTreeMap;

    let store = SqliteEventStore::open(dir.join("events.db")).unwrap();
    let events = store.read_all(0, 1_000_000).await.unwrap();
    let mut prices = Prices::default();
    let mut launched: BTreeMap<jitr_domain::StreamId, (String, String, Market, i64)> =
        BTreeMap::new();
    let mut repository = BTreeMap::new();
    let mut expected: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for r in &events {
        match &r.event {
            RunnerEvent::Requested { job, .. } => {
                repository.insert(r.stream.clone(), format!("{}/{}", job.owner, job.repo));
            }
            RunnerEvent::Launched {
                at,
                instance_type,
                market,
                ..
            } => {
                let repo = repository[&r.stream].clone();
                launched.insert(
                    r.stream.clone(),
                    (repo, instance_type.clone(), *market, at.0),
                );
                let hourly = 0.1 + instance_type.len() as f64 / 100.0;
                match market {
                    Market::OnDemand => prices.on_demand.insert(instance_type.clone(), hourly),
                    Market::Spot => prices.spot.insert(instance_type.clone(), hourly / 3.0),
                };
            }
            RunnerEvent::Terminated { at, .. } => {
                if let Some((repo, instance_type, market, from)) = launched.remove(&r.stream) {
                    let seconds = (at.0 - from) as f64 / 1000.0;
                    let hourly = prices.hourly(market, &instance_type).unwrap();
                    let line = expected.entry(repo).or_default();
                    line.0 += seconds;
                    line.1 += seconds / 3600.0 * hourly;
                }
            }
            _ => {}
        }
    }
    assert!(launched.is_empty(), "every instance terminated");
    let until = events.iter().map(|r| r.event.at()).max().unwrap();
    let window = jitr_projections::books::Window::everything(until, 60_000);
    let (usage, _) = usage(&store, window, |_| {}).await.unwrap();
    let report = price(
        &usage,
        &prices,
        GroupBy::Repo,
        (String::new(), String::new()),
    );
    assert!(report.unpriced.is_empty(), "{:?}", report.unpriced);
    assert_eq!(report.lines.len(), expected.len());
    for line in &report.lines {
        let (seconds, usd) = expected[&line.group];
        assert!((line.instance_seconds - seconds).abs() < 1e-6, "{line:?}");
        assert!((line.usd - usd).abs() < 1e-9, "{line:?} against {usd}");
    }
    let total: f64 = expected.values().map(|(_, usd)| usd).sum();
    assert!(total > 1.0, "{total}");
    assert!((report.total.usd - total).abs() < 1e-9);
}

/// Issue 12, spot interruptions: EC2 reclaims 30 % of spot instances with its
/// two-minute warning, delivered 2 s late. Every runner warned before its job
/// started is replaced within 10 s of EC2's warning, on another type or on
/// demand; every job runs on
/// exactly one runner; the jobs EC2 cut mid-run are the ones the log records
/// as cut; nothing leaks and jitr kills no job.
#[tokio::test]
async fn a_spot_storm_relaunches_warned_runners_at_once_and_records_the_cut_jobs() {
    let dir = tempfile::tempdir().unwrap();
    // EC2's events reach jitr 2 s after they happen (EventBridge: "within
    // seconds").
    let options = jitr_handlers::commands::simulate::SimOptions {
        event_delay_ms: 2_000,
        ..Default::default()
    };
    let report =
        jitr_handlers::commands::simulate::run_with(dir.path(), Scenario::SpotStorm, 1, options)
            .await
            .unwrap();
    let before = report
        .spot_interruptions
        .get("before-start")
        .copied()
        .unwrap_or(0);
    let after = report
        .spot_interruptions
        .get("after-start")
        .copied()
        .unwrap_or(0);
    assert!(before >= 5 && after >= 5, "{report:?}");
    assert_eq!(report.relaunch_after_interruption_ms.count, before);
    assert!(
        report.relaunch_after_interruption_ms.p99 <= 10_000,
        "{:?}",
        report.relaunch_after_interruption_ms
    );
    // A job warned about may still complete within the warning's two
    // minutes: cut are at most the warned.
    assert!(
        report.jobs_cut <= after && report.jobs_cut > 0,
        "{report:?}"
    );
    assert_eq!(report.jobs_killed_by_jitr, 0, "{report:?}");
    assert_eq!(
        report.jobs_served + report.jobs_cut,
        report.jobs,
        "{report:?}"
    );
    // The only failures are the warned runners, replaced.
    assert_eq!(report.runners_failed, before, "{report:?}");
    assert_eq!(report.scaleup_dead_letters, 0);
    assert_eq!(report.orphan_vcpu_minutes, 0.0);
    assert_eq!(report.instances_alive_at_end, 0);
    assert_eq!(report.premature_terminations, 0);
    // A replacement avoided the reclaimed spot market: some launched on the
    // pool's other types or on demand.
    let elsewhere: u64 = report
        .launches_by_pool
        .iter()
        .filter(|(k, _)| !k.ends_with("c5.xlarge spot"))
        .map(|(_, v)| v)
        .sum();
    assert!(elsewhere >= before, "{:?}", report.launches_by_pool);
    // Exactly one runner took each job.
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let mut started: std::collections::BTreeMap<u64, u32> = Default::default();
    for r in jitr_infra::EventStore::read_all(&store, 0, 1_000_000)
        .await
        .unwrap()
    {
        if let jitr_domain::RunnerEvent::JobStarted { .. } = r.event {
            *started.entry(r.stream.job_id()).or_default() += 1;
        }
    }
    assert_eq!(started.len() as u64, report.jobs);
    assert!(started.values().all(|n| *n == 1), "{started:?}");
}

#[tokio::test]
async fn the_other_scenarios_serve_every_job_without_orphans() {
    for scenario in [
        Scenario::CrashStorm,
        Scenario::LostWebhooks,
        Scenario::DuplicateStorm,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let report = run(dir.path(), scenario, 7, true).await.unwrap();
        assert_eq!(report.jobs_served, report.jobs, "{scenario:?}: {report:?}");
        assert_eq!(report.orphan_vcpu_minutes, 0.0, "{scenario:?}: {report:?}");
        assert_eq!(report.instances_alive_at_end, 0, "{scenario:?}");
    }
}

/// Issue 10: a third of the `in_progress` and `completed` webhooks are lost
/// (besides a third of the `queued`). Job polls keep every running job's runner
/// past its boot deadline and terminate a finished runner's instance within the
/// drain grace and one poll interval; without job reads, finished runners idle
/// until the run ends, but no running job is killed at its runner's boot
/// deadline either: the runner is deregistered first, and GitHub refuses to
/// delete a busy runner (ADR-0017; before, 5 of 24 jobs were killed).
#[tokio::test]
async fn lost_lifecycle_webhooks_kill_no_job_and_keep_no_idle_instance() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), Scenario::LostWebhooks, 1, true)
        .await
        .unwrap();
    assert!(report.lifecycle_webhooks_lost > 0, "{report:?}");
    assert!(report.lifecycle_from_polls > 0, "{report:?}");
    assert_eq!(report.jobs_killed_by_jitr, 0, "{report:?}");
    assert_eq!(report.jobs_served, report.jobs, "{report:?}");
    let drain_grace_ms = 30_000;
    assert!(
        report.idle_after_job_ms.max <= drain_grace_ms + report.job_poll_interval_ms,
        "{report:?}"
    );
    assert_eq!(report.instances_alive_at_end, 0, "{report:?}");
    // The audit tells the polls from the webhooks.
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let replayed = audit::replay(&store, Window::default(), None, |_| {})
        .await
        .unwrap();
    let sources = &replayed.ledger.lifecycle_sources;
    let count = |k: &str| sources.get(k).copied().unwrap_or(0);
    assert_eq!(
        count("started-poll") + count("completed-poll"),
        report.lifecycle_from_polls,
        "{sources:?}"
    );
    assert!(count("started-webhook") > 0 && count("completed-webhook") > 0);
    assert_eq!(count("completed-webhook") + count("completed-poll"), 24);

    let blind = tempfile::tempdir().unwrap();
    let options = SimOptions {
        job_polls: false,
        ..SimOptions::default()
    };
    let ablation = run_with(blind.path(), Scenario::LostWebhooks, 1, options)
        .await
        .unwrap();
    assert_eq!(
        ablation.lifecycle_webhooks_lost,
        report.lifecycle_webhooks_lost
    );
    assert_eq!(ablation.jobs_killed_by_jitr, 0, "{ablation:?}");
    assert!(ablation.idle_after_job_ms.max > 3_600_000, "{ablation:?}");
}

/// Issue 9: against EC2 as documented (NotFound after launch, a lagging and
/// tag-filtered listing, untagged instances, a refused termination, lost launch
/// answers, throttling past the consistency window), every job is served,
/// nothing is orphaned and no `Terminated` is written while the instance runs.
/// With the window at 0 — NotFound taken as proof at once, as before — runners
/// are closed while their instances run.
#[tokio::test]
async fn cloud_chaos_serves_every_job_and_never_closes_a_runner_early() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), Scenario::CloudChaos, 1, true)
        .await
        .unwrap();
    assert_eq!(report.jobs_served, report.jobs, "{report:?}");
    assert_eq!(report.orphan_vcpu_minutes, 0.0, "{report:?}");
    assert_eq!(report.premature_terminations, 0, "{report:?}");
    assert_eq!(report.instances_alive_at_end, 0, "{report:?}");
    assert!(
        report.retagged > 0,
        "untagged instances found by id: {report:?}"
    );
    assert!(
        report
            .launch_failures_by_code
            .contains_key("RequestLimitExceeded"),
        "{report:?}"
    );
    assert!(!report.closed_by.contains_key("unrecorded"), "{report:?}");

    let old = tempfile::tempdir().unwrap();
    let trusting = run_with(
        old.path(),
        Scenario::CloudChaos,
        1,
        SimOptions {
            consistency_window_ms: 0,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(trusting.premature_terminations > 0, "{trusting:?}");
}

/// Issue 25: a compensating process whose clock is three minutes fast (or
/// slow) judges the consistency window on EC2's clock, not its own: NotFound
/// right after a launch stays "unknown", and no runner is closed while its
/// instance runs. (On the host's clock a fast one took NotFound 30 s after a
/// launch for NotFound after a two-minute window.)
#[tokio::test]
async fn cloud_chaos_with_a_skewed_compensating_clock_never_closes_a_runner_early() {
    for skew_ms in [180_000, -180_000] {
        let dir = tempfile::tempdir().unwrap();
        let report = run_with(
            dir.path(),
            Scenario::CloudChaos,
            1,
            SimOptions {
                compensator_clock_skew_ms: skew_ms,
                ..SimOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(report.compensator_clock_skew_ms, skew_ms);
        assert_eq!(report.premature_terminations, 0, "{skew_ms}: {report:?}");
        assert_eq!(report.jobs_served, report.jobs, "{skew_ms}: {report:?}");
        assert_eq!(report.orphan_vcpu_minutes, 0.0, "{skew_ms}: {report:?}");
        assert_eq!(report.instances_alive_at_end, 0, "{skew_ms}: {report:?}");
    }
}

#[tokio::test]
async fn audit_as_of_matches_the_simulators_record_of_live_instances() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), Scenario::SeedIncident, 3, true)
        .await
        .unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let cloud = SimCloud::open(
        dir.path().join("cloud.db"),
        SimSettings::default(),
        ManualClock::new(Timestamp(T0)).clock(),
    )
    .unwrap();
    for secs in [90.5, 400.5, 800.5] {
        let at = Timestamp(T0 + (secs * 1000.0) as i64);
        let replayed = audit::replay(&store, Window::default(), Some(at), |_| {})
            .await
            .unwrap();
        let mut from_log: Vec<InstanceId> = replayed
            .ledger
            .live()
            .into_iter()
            .filter_map(|(_, id, _, _)| id.map(InstanceId))
            .collect();
        from_log.sort();
        let mut from_cloud = cloud.alive_at(at).unwrap();
        from_cloud.sort();
        assert!(!from_cloud.is_empty(), "instances were running at {secs} s");
        assert_eq!(from_log, from_cloud, "at {secs} s");
    }
}

/// Issue 23: pushes with `cancel-in-progress` — jobs cancelled while queued
/// and while running, runners taking each other's jobs as GitHub assigns
/// them. jitr kills no job, leaks nothing, closes nothing early, and every
/// job is served or cancelled by its user; spare runners are retired. The
/// audit, from the log alone, counts what the simulator saw.
#[tokio::test]
async fn a_cancel_storm_kills_no_job_and_retires_the_spare_runners() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path(), Scenario::CancelStorm, 1, true)
        .await
        .unwrap();
    assert_eq!(report.jobs_killed_by_jitr, 0, "{report:?}");
    assert_eq!(report.orphan_vcpu_minutes, 0.0, "{report:?}");
    assert_eq!(report.premature_terminations, 0, "{report:?}");
    assert_eq!(report.instances_alive_at_end, 0, "{report:?}");
    assert_eq!(report.jobs_unserved, 0, "{report:?}");
    assert_eq!(
        report.jobs_served + report.jobs_cancelled_queued + report.jobs_cancelled_running,
        report.jobs,
        "{report:?}"
    );
    assert!(
        report.jobs_cancelled_queued >= report.jobs / 4,
        "{report:?}"
    );
    assert!(report.jobs_cancelled_running > 0, "{report:?}");
    assert!(report.jobs_served_by_other_runner > 0, "{report:?}");
    assert!(report.surplus_runners_retired > 0, "{report:?}");
    assert_eq!(report.scaleup_dead_letters, 0, "{report:?}");
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let replayed = audit::replay(&store, Window::default(), None, |_| {})
        .await
        .unwrap();
    let jobs = replayed.books.jobs.figures();
    assert_eq!(jobs.killed_by_jitr, 0, "{jobs:?}");
    assert_eq!(
        jobs.served_by_other_runner, report.jobs_served_by_other_runner,
        "{jobs:?}"
    );
    assert_eq!(
        jobs.cancelled_queued, report.jobs_cancelled_queued,
        "{jobs:?}"
    );
    assert_eq!(jobs.surplus_retired, report.surplus_runners_retired);
}

/// Issue 25: GitHub answers a third of the JIT mints with its secondary rate
/// limit (the documented 403 without `retry-after`). A rate limit is a wait,
/// never a failure: every job is served, no runner fails for it, and the
/// content-creating requests stay within GitHub's documented budget (80 a
/// minute, 500 an hour per installation).
#[tokio::test]
async fn a_burst_meeting_secondary_rate_limits_serves_every_job_within_githubs_budget() {
    let dir = tempfile::tempdir().unwrap();
    let options = jitr_handlers::commands::simulate::SimOptions {
        github_secondary_one_in: Some(3),
        ..Default::default()
    };
    let report =
        jitr_handlers::commands::simulate::run_with(dir.path(), Scenario::Burst, 1, options)
            .await
            .unwrap();
    assert_eq!(report.jobs_served, 500, "{report:?}");
    let github = &report.github;
    assert!(
        github.secondary_limited_mints >= 150,
        "a third of the mints met the limit: {github:?}"
    );
    assert_eq!(report.runners_failed_for_rate_limit, 0);
    assert_eq!(report.scaleup_dead_letters, 0);
    assert_eq!(report.jobs_killed_by_jitr, 0);
    assert_eq!(report.orphan_vcpu_minutes, 0.0);
    assert_eq!(report.premature_terminations, 0);
    assert!(
        github.max_per_minute <= jitr_infra::CONTENT_PER_MINUTE
            && github.max_per_hour <= jitr_infra::CONTENT_PER_HOUR,
        "{github:?}"
    );
}

/// Issue 26: a working day with runners kept warm in working hours. A job
/// queued while the schedule holds starts within GitHub's hand-over (p50 ≤ 5 s,
/// as the issue asks), where a cold boot costs most of a minute; nothing is
/// killed, leaked or closed early, and the idle cost is reported.
#[tokio::test]
async fn a_workday_with_a_warm_schedule_starts_jobs_in_seconds_in_working_hours() {
    use jitr_handlers::commands::simulate::WarmSetting;
    let dir = tempfile::tempdir().unwrap();
    let options = SimOptions {
        warm: WarmSetting::Schedule,
        ..SimOptions::default()
    };
    let report = run_with(dir.path(), Scenario::Workday, 1, options)
        .await
        .unwrap();
    let day = report.workday.clone().expect("workday figures");
    assert!(report.jobs > 900, "{}", report.jobs);
    assert_eq!(report.jobs_served, report.jobs, "{report:?}");
    assert_eq!(report.jobs_killed_by_jitr, 0);
    assert_eq!(report.orphan_vcpu_minutes, 0.0);
    assert_eq!(report.premature_terminations, 0);
    assert_eq!(report.instances_alive_at_end, 0);
    let in_hours = &day.queued_to_started_in_window_ms;
    assert!(in_hours.count > 800, "{day:?}");
    assert!(in_hours.p50 <= 5_000, "{day:?}");
    // Outside working hours nothing is kept warm: a job waits for a boot.
    assert!(
        day.queued_to_started_outside_window_ms.p50 >= 20_000,
        "{day:?}"
    );
    assert!(day.warm_hit_ratio > 0.8, "{day:?}");
    assert!(day.idle_instance_minutes > 0.0 && day.idle_cost_usd > 0.0);
    // A spare runner kept for the floor is capacity, not a runner that missed
    // its job: none fails its boot deadline.
    assert_eq!(
        report.runners_failed, report.surplus_runners_retired,
        "{report:?}"
    );
}

/// Issue 26: the same day with a stopped pool (`warm_state = "stopped"`): its
/// instances booted once and stopped in working hours, started for jobs. Its
/// volumes are the idle cost it keeps; nothing is killed, leaked or closed
/// early, and no parked instance outlives the day.
#[tokio::test]
async fn a_workday_with_a_stopped_pool_wakes_parked_runners_and_leaks_none() {
    use jitr_handlers::commands::simulate::WarmSetting;
    let dir = tempfile::tempdir().unwrap();
    let options = SimOptions {
        warm: WarmSetting::Stopped,
        ..SimOptions::default()
    };
    let report = run_with(dir.path(), Scenario::Workday, 1, options)
        .await
        .unwrap();
    let day = report.workday.clone().expect("workday figures");
    assert_eq!(report.jobs_served, report.jobs, "{report:?}");
    assert_eq!(report.jobs_killed_by_jitr, 0);
    assert_eq!(report.orphan_vcpu_minutes, 0.0);
    assert_eq!(report.premature_terminations, 0);
    assert_eq!(report.instances_alive_at_end, 0, "parked ones retired too");
    assert!(day.parked_runners_woken > 500, "{day:?}");
    assert!(day.stopped_volume_minutes > 0.0, "{day:?}");
    // A woken runner starts its job after a start from stopped, not a boot.
    assert!(day.queued_to_started_in_window_ms.p50 <= 20_000, "{day:?}");
    // The audit, from the log alone, counts the parked runners and their
    // stopped minutes as the simulator saw them.
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let jobs = audit::replay(&store, Window::default(), None, |_| {})
        .await
        .unwrap()
        .books
        .jobs
        .figures();
    assert_eq!(jobs.parked_runners_woken, day.parked_runners_woken);
    assert!(jobs.parked_runners >= jobs.parked_runners_woken);
    assert_eq!(jobs.killed_by_jitr, 0);
    // The log counts from `Parked`, recorded at the reaper's sweep after the
    // stop (each sweep a minute apart): never more than the simulator saw
    // stopped, and short of it by at most a sweep per parked runner.
    let stopped = day.stopped_volume_minutes;
    let logged = jobs.parked_volume_minutes;
    assert!(
        logged > 0.0 && logged <= stopped,
        "{logged} against {stopped}"
    );
    assert!(
        stopped - logged <= jobs.parked_runners as f64 * 1.0 + 0.01,
        "the log's parked minutes {logged} against the simulator's stopped minutes {stopped}"
    );
}
