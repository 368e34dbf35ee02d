//! The embedded default's simulated cloud: EC2's quota, capacity and idempotency
//! behaviour, boot and shutdown, persistence; and the local GitHub stand-in.

use jitr_domain::{ClientToken, JobRef, LaunchErrorClass, Market, StreamId, Timestamp};
use jitr_infra::{
    Compute, GitHub, GitHubError, InstanceState, JitRequest, LaunchFailure, LaunchSpec,
    ManualClock, QueuedJob, RunnerScope, SimCloud, SimGitHub, SimSettings, TerminateOutcome,
};

const T0: Timestamp = Timestamp(1_777_868_520_000);

fn spec(job: u64, market: Market) -> LaunchSpec {
    let stream = StreamId::for_job(
        &JobRef {
            owner: "acme".into(),
            repo: "widgets".into(),
            job_id: job,
            run_id: 1,
        },
        1,
    )
    .expect("a stream id of a valid repository");
    LaunchSpec {
        client_token: ClientToken::derive(&stream, 1),
        stream,
        market,
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
        image: "ami-sim".into(),
        user_data: None,
        settings: Default::default(),
    }
}

fn cloud(dir: &std::path::Path, settings: SimSettings) -> (SimCloud, ManualClock) {
    let clock = ManualClock::new(T0);
    let cloud = SimCloud::open(dir.join("cloud.db"), settings, clock.clock()).unwrap();
    (cloud, clock)
}

/// The state EC2 reports for `instance`, described by its id.
async fn state_of(cloud: &SimCloud, instance: &jitr_domain::InstanceId) -> Option<InstanceState> {
    cloud.describe(instance).await.unwrap().map(|m| m.state)
}

fn refusal(
    outcome: Result<jitr_infra::LaunchedInstance, LaunchFailure>,
) -> (String, LaunchErrorClass) {
    match outcome {
        Err(LaunchFailure::Rejected(e)) => (e.code, e.class),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_vcpu_quota_refuses_launches_until_an_instance_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, clock) = cloud(dir.path(), SimSettings::default());
    let mut launched = Vec::new();
    for job in 0..8 {
        launched.push(cloud.launch(&spec(job, Market::OnDemand)).await.unwrap());
    }
    assert_eq!(cloud.vcpus_in_use(Market::OnDemand).unwrap(), 32);
    assert_eq!(
        refusal(cloud.launch(&spec(8, Market::OnDemand)).await),
        ("VcpuLimitExceeded".into(), LaunchErrorClass::Quota)
    );
    // Spot has its own quota.
    cloud.launch(&spec(9, Market::Spot)).await.unwrap();

    assert_eq!(
        cloud.terminate(&launched[0].instance_id).await.unwrap(),
        TerminateOutcome::Terminating
    );
    // Still counted while shutting down.
    assert_eq!(
        refusal(cloud.launch(&spec(8, Market::OnDemand)).await).1,
        LaunchErrorClass::Quota
    );
    clock.advance(5_000);
    assert_eq!(cloud.vcpus_in_use(Market::OnDemand).unwrap(), 28);
    cloud.launch(&spec(8, Market::OnDemand)).await.unwrap();
    assert_eq!(
        cloud.terminate(&launched[0].instance_id).await.unwrap(),
        TerminateOutcome::AlreadyGone
    );
}

#[tokio::test]
async fn spot_quota_and_capacity_have_their_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SimSettings {
        spot_vcpus: 8,
        spot_capacity: Some(1),
        ..SimSettings::default()
    };
    let (cloud, _) = cloud(dir.path(), settings);
    cloud.launch(&spec(1, Market::Spot)).await.unwrap();
    assert_eq!(
        refusal(cloud.launch(&spec(2, Market::Spot)).await),
        (
            "InsufficientInstanceCapacity".into(),
            LaunchErrorClass::Capacity
        )
    );
    let other_dir = tempfile::tempdir().unwrap();
    let (cloud, _) = self::cloud(
        other_dir.path(),
        SimSettings {
            spot_vcpus: 4,
            ..SimSettings::default()
        },
    );
    cloud.launch(&spec(1, Market::Spot)).await.unwrap();
    assert_eq!(
        refusal(cloud.launch(&spec(2, Market::Spot)).await),
        (
            "MaxSpotInstanceCountExceeded".into(),
            LaunchErrorClass::Quota
        )
    );
}

/// EC2 refuses an image on a type of another architecture
/// (`InvalidParameterValue`, RunInstances), and jitr's adapters refuse an image
/// of another architecture than the pool's; an image the region does not name
/// launches on any type.
#[tokio::test]
async fn an_image_runs_only_on_types_and_pools_of_its_architecture() {
    use jitr_infra::Architecture;
    let dir = tempfile::tempdir().unwrap();
    let settings = SimSettings {
        images: [
            ("ami-x86".to_owned(), Architecture::X86_64),
            ("ami-arm".to_owned(), Architecture::Arm64),
        ]
        .into(),
        ..SimSettings::default()
    };
    let (cloud, _) = cloud(dir.path(), settings);
    let launch = |job: u64, image: &str, instance_type: &str, pool: Option<Architecture>| {
        let mut launch = spec(job, Market::OnDemand);
        launch.image = image.into();
        launch.instance_type = instance_type.into();
        launch.settings.architecture = pool;
        launch
    };
    cloud
        .launch(&launch(
            1,
            "ami-arm",
            "c7g.xlarge",
            Some(Architecture::Arm64),
        ))
        .await
        .unwrap();
    cloud
        .launch(&launch(
            2,
            "ami-x86",
            "c7i.xlarge",
            Some(Architecture::X86_64),
        ))
        .await
        .unwrap();
    cloud
        .launch(&launch(
            3,
            "ami-sim",
            "c7g.xlarge",
            Some(Architecture::X86_64),
        ))
        .await
        .unwrap();
    let Err(LaunchFailure::Rejected(wrong_type)) = cloud
        .launch(&launch(4, "ami-arm", "c7i.xlarge", None))
        .await
    else {
        panic!("an arm64 image on an x86_64 type launched");
    };
    assert_eq!(wrong_type.code, "InvalidParameterValue");
    assert_eq!(wrong_type.class, LaunchErrorClass::InvalidRequest);
    assert!(
        wrong_type
            .message
            .contains("'x86_64' of the specified instance type")
            && wrong_type.message.contains("'arm64' of the specified AMI"),
        "{}",
        wrong_type.message
    );
    let Err(LaunchFailure::Rejected(wrong_pool)) = cloud
        .launch(&launch(
            5,
            "ami-x86",
            "c7i.xlarge",
            Some(Architecture::Arm64),
        ))
        .await
    else {
        panic!("an x86_64 image launched for an arm64 pool");
    };
    assert_eq!(wrong_pool.code, "InvalidParameterValue");
    assert!(
        wrong_pool.message.contains("ami-x86 is x86_64")
            && wrong_pool.message.contains("pool's architecture is arm64"),
        "{}",
        wrong_pool.message
    );
    assert_eq!(cloud.vcpus_in_use(Market::OnDemand).unwrap(), 12);
}

#[tokio::test]
async fn the_same_client_token_never_starts_a_second_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, _) = cloud(dir.path(), SimSettings::default());
    let first = cloud.launch(&spec(1, Market::Spot)).await.unwrap();
    let again = cloud.launch(&spec(1, Market::Spot)).await.unwrap();
    assert_eq!(first.instance_id, again.instance_id);
    assert_eq!(cloud.list_managed().await.unwrap().len(), 1);
    let mut other = spec(1, Market::Spot);
    other.market = Market::OnDemand;
    assert_eq!(
        refusal(cloud.launch(&other).await).1,
        LaunchErrorClass::InvalidRequest
    );
}

#[tokio::test]
async fn instances_boot_shut_down_and_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, clock) = cloud(dir.path(), SimSettings::default());
    let launched = cloud.launch(&spec(1, Market::Spot)).await.unwrap();
    let seen = cloud
        .describe(&launched.instance_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.state, InstanceState::Pending);
    assert_eq!(seen.stream, Some(spec(1, Market::Spot).stream));
    clock.advance(20_000);
    let seen = cloud
        .describe(&launched.instance_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.state, InstanceState::Running);

    // A new process on the same data directory sees the same cloud.
    let reopened = SimCloud::open(
        dir.path().join("cloud.db"),
        SimSettings::default(),
        clock.clock(),
    )
    .unwrap();
    let found = reopened
        .find_by_client_token(&spec(1, Market::Spot).client_token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.instance_id, launched.instance_id);
    let second = reopened.launch(&spec(2, Market::Spot)).await.unwrap();
    assert_ne!(
        second.instance_id, launched.instance_id,
        "ids are not reused"
    );

    reopened.terminate(&launched.instance_id).await.unwrap();
    assert_eq!(
        state_of(&reopened, &launched.instance_id).await.unwrap(),
        InstanceState::ShuttingDown
    );
    clock.advance(5_000);
    // Described by id, a terminated instance is reported terminated, as EC2 does
    // for about an hour (NotFound is for ids EC2 does not know).
    assert_eq!(
        reopened
            .describe(&launched.instance_id)
            .await
            .unwrap()
            .map(|m| m.state),
        Some(InstanceState::Terminated)
    );
    assert!(reopened.interrupt(&second.instance_id).unwrap());
    assert_eq!(reopened.list_managed().await.unwrap(), vec![]);
}

fn jit(name: &str) -> JitRequest {
    JitRequest {
        scope: RunnerScope::Repo {
            owner: "acme".into(),
            repo: "widgets".into(),
        },
        name: name.into(),
        runner_group_id: 1,
        labels: vec!["self-hosted".into()],
        work_folder: "_work".into(),
    }
}

#[tokio::test]
async fn the_github_stand_in_registers_runners_and_queues_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let github = SimGitHub::open(dir.path().join("cloud.db")).unwrap();
    let runner = github.generate_jit_config(1, &jit("r1")).await.unwrap();
    assert!(matches!(
        github.generate_jit_config(1, &jit("r1")).await,
        Err(GitHubError::RunnerNameExists(_))
    ));
    github.fail_next_mints(&[500]);
    assert!(matches!(
        github.generate_jit_config(1, &jit("r2")).await,
        Err(GitHubError::Server { status: 500, .. })
    ));
    github.generate_jit_config(1, &jit("r2")).await.unwrap();
    let scope = jit("x").scope;
    let names: Vec<String> = github
        .list_runners(1, &scope)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["r1", "r2"]);
    assert!(
        github
            .delete_runner(1, &scope, runner.runner_id)
            .await
            .unwrap()
    );
    assert!(
        !github
            .delete_runner(1, &scope, runner.runner_id)
            .await
            .unwrap()
    );

    let job = QueuedJob {
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id: 11,
        run_id: 5,
        labels: vec!["self-hosted".into(), "linux".into()],
        name: "build".into(),
    };
    github.queue_job(&job).unwrap();
    assert_eq!(github.queued_runs(1, "acme", "widgets").await.unwrap(), [5]);
    assert!(
        github
            .queued_runs(1, "acme", "other")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        github.queued_jobs(1, "acme", "widgets", 5).await.unwrap(),
        vec![job]
    );
    let state = |status: &str, runner: Option<&str>| jitr_infra::JobState {
        status: status.into(),
        conclusion: None,
        runner_name: runner.map(str::to_owned),
    };
    assert_eq!(
        github.get_job(1, "acme", "widgets", 11).await.unwrap(),
        Some(state("queued", None))
    );
    github
        .set_job_status(
            "acme",
            "widgets",
            11,
            "in_progress",
            Some("jitr-11-1-abcdef"),
        )
        .unwrap();
    assert!(
        github
            .queued_runs(1, "acme", "widgets")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        github
            .queued_jobs(1, "acme", "widgets", 5)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        github.get_job(1, "acme", "widgets", 11).await.unwrap(),
        Some(state("in_progress", Some("jitr-11-1-abcdef")))
    );
    assert_eq!(
        github.get_job(1, "acme", "widgets", 12).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn the_local_queue_redrives_dead_letters_and_backs_off_like_sqs() {
    use jitr_infra::{LocalQueue, Queue};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let queue = LocalQueue::open(
        dir.path().join("queues.db"),
        "scaleup",
        2,
        Duration::from_secs(30),
        clock.clock(),
    )
    .unwrap();
    queue
        .publish("job-1", None, &[("delivery", "d1")])
        .await
        .unwrap();
    for expected in 1..=2 {
        let got = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].receive_count, expected);
        assert_eq!(
            got[0].attributes.get("delivery").map(String::as_str),
            Some("d1")
        );
        assert!(
            queue.receive(10, Duration::ZERO).await.unwrap().is_empty(),
            "invisible"
        );
        clock.advance(30_000);
    }
    assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(queue.dead_letter_depth().await.unwrap(), 1);
    assert!(
        queue.dead_letters().unwrap()[0]
            .1
            .contains("received 2 times")
    );

    queue.publish("poison", None, &[]).await.unwrap();
    let got = queue.receive(1, Duration::ZERO).await.unwrap();
    queue
        .dead_letter(&got[0], "malformed payload")
        .await
        .unwrap();
    assert_eq!(queue.dead_letter_depth().await.unwrap(), 2);

    queue
        .publish("quota", Some(Duration::from_secs(5)), &[])
        .await
        .unwrap();
    assert!(
        queue.receive(1, Duration::ZERO).await.unwrap().is_empty(),
        "delayed"
    );
    clock.advance(5_000);
    let got = queue.receive(1, Duration::ZERO).await.unwrap();
    queue
        .retry_later(&got[0], Duration::from_secs(60))
        .await
        .unwrap();
    clock.advance(59_000);
    assert!(queue.receive(1, Duration::ZERO).await.unwrap().is_empty());
    clock.advance(1_000);
    let got = queue.receive(1, Duration::ZERO).await.unwrap();
    queue.ack(&got[0]).await.unwrap();
    assert_eq!(queue.depth().unwrap(), 0);
}

/// The fault wrapper plays EC2's eventual consistency: right after launch, the
/// instance is NotFound by id and a terminate call does nothing, though it runs;
/// after the window, both see it.
#[tokio::test]
async fn not_found_after_launch_hides_a_running_instance_for_the_window() {
    use jitr_infra::{Fault, FaultyCompute};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let (cloud, clock) = cloud(dir.path(), SimSettings::default());
    let ec2 = FaultyCompute::new(cloud.clone()).with_clock(clock.clock());
    ec2.inject(Fault::NotFoundAfterLaunch(Duration::from_secs(60)), None);
    let launched = ec2.launch(&spec(1, Market::OnDemand)).await.unwrap();
    let id = launched.instance_id;
    clock.advance(1_000);
    assert_eq!(ec2.describe(&id).await.unwrap(), None);
    assert_eq!(
        ec2.terminate(&id).await.unwrap(),
        TerminateOutcome::AlreadyGone
    );
    // NotFound was no evidence: the instance runs on.
    let seen = cloud.describe(&id).await.unwrap().expect("it exists");
    assert!(seen.state.is_live(), "{seen:?}");
    clock.advance(60_000);
    assert!(ec2.describe(&id).await.unwrap().is_some());
    assert_eq!(
        ec2.terminate(&id).await.unwrap(),
        TerminateOutcome::Terminating
    );
    assert!(
        !cloud
            .describe(&id)
            .await
            .unwrap()
            .is_some_and(|m| m.state.is_live())
    );
}

/// The fault wrapper's tag-filtered listing omits recent instances, as EC2's
/// may: absence from a list is no evidence that an instance is gone.
#[tokio::test]
async fn the_listing_can_omit_recent_instances() {
    use jitr_infra::{Fault, FaultyCompute};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let (cloud, clock) = cloud(dir.path(), SimSettings::default());
    let ec2 = FaultyCompute::new(cloud.clone()).with_clock(clock.clock());
    ec2.inject(Fault::ListOmitsRecent(Duration::from_secs(30)), None);
    let old = ec2.launch(&spec(1, Market::OnDemand)).await.unwrap();
    clock.advance(40_000);
    let young = ec2.launch(&spec(2, Market::OnDemand)).await.unwrap();
    let listed: Vec<_> = ec2
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.instance_id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&old.instance_id));
    assert!(ec2.describe(&young.instance_id).await.unwrap().is_some());
    ec2.clear();
    assert_eq!(ec2.list_managed().await.unwrap().len(), 2);
}

/// EC2 reclaims a share of spot instances: its warning two minutes before
/// (as the EC2 User Guide's "Spot Instance interruption notices" says), then
/// `shutting-down` and `terminated`; never an on-demand instance, and no
/// warning for an instance terminated before it.
#[tokio::test]
async fn spot_instances_are_warned_two_minutes_before_ec2_reclaims_them() {
    let dir = tempfile::tempdir().unwrap();
    let settings = SimSettings {
        spot_interruptions: Some(jitr_infra::SpotInterruptions {
            per_mille: 1000,
            warn_within_ms: 1,
            seed: 1,
        }),
        ..SimSettings::default()
    };
    let (cloud, clock) = cloud(dir.path(), settings);
    let spot = cloud.launch(&spec(1, Market::Spot)).await.unwrap();
    let on_demand = cloud.launch(&spec(2, Market::OnDemand)).await.unwrap();
    let early = cloud.launch(&spec(3, Market::Spot)).await.unwrap();
    let before = Timestamp(T0.0 - 1);
    let warnings = cloud.interruption_warnings(before, T0).unwrap();
    let warned: Vec<_> = warnings.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        warned,
        [spot.instance_id.clone(), early.instance_id.clone()]
    );
    assert!(warnings.iter().all(|(_, at)| *at == T0));
    assert_eq!(
        state_of(&cloud, &spot.instance_id).await.unwrap(),
        InstanceState::Pending
    );
    // Running until the notice is over, then reclaimed.
    clock.advance(jitr_infra::SPOT_NOTICE_MS - 1);
    assert_eq!(
        state_of(&cloud, &spot.instance_id).await.unwrap(),
        InstanceState::Running
    );
    clock.advance(1);
    assert_eq!(
        state_of(&cloud, &spot.instance_id).await.unwrap(),
        InstanceState::ShuttingDown
    );
    let reclaimed = Timestamp(T0.0 + jitr_infra::SPOT_NOTICE_MS as i64);
    let changes = cloud.state_changes(T0, reclaimed).unwrap();
    assert!(
        changes.contains(&(spot.instance_id.clone(), "shutting-down", reclaimed)),
        "{changes:?}"
    );
    assert_eq!(
        state_of(&cloud, &on_demand.instance_id).await.unwrap(),
        InstanceState::Running
    );

    // An instance terminated before its warning gets none.
    let dir = tempfile::tempdir().unwrap();
    let settings = SimSettings {
        spot_interruptions: Some(jitr_infra::SpotInterruptions {
            per_mille: 1000,
            warn_within_ms: 60_000,
            seed: 1,
        }),
        ..SimSettings::default()
    };
    let (cloud, _clock) = self::cloud(dir.path(), settings);
    let spot = cloud.launch(&spec(1, Market::Spot)).await.unwrap();
    let minute = Timestamp(T0.0 + 60_000);
    let all = cloud.interruption_warnings(before, minute).unwrap();
    assert_eq!(all.len(), 1, "within the minute: {all:?}");
    assert!(all[0].1 > T0, "seed 1 warns after the launch: {all:?}");
    cloud.terminate(&spot.instance_id).await.unwrap();
    assert_eq!(cloud.interruption_warnings(before, minute).unwrap(), []);
}
