//! The runner lifecycle on the AWS adapters against moto (DynamoDB, EC2 behind the
//! fault wrapper, SSM, SQS, EventBridge) and GitHub on wiremock.

use std::sync::Arc;
use std::time::Duration;

use jitr_aws::AwsNames;
use jitr_aws::{DynamoEventStore, Ec2Compute, EventBridgeBus, SqsQueue, SsmSecrets};
use jitr_domain::{Market, RunnerStatus, StreamId, Timestamp};
use jitr_handlers::app::outcome::Outcome;
use jitr_handlers::app::policy::RunnerPolicy;
use jitr_handlers::app::webhook::JobMessage;
use jitr_handlers::app::{App, Ports};
use jitr_handlers::runtime::consumer::drain;
use jitr_infra::{Compute, EventStore, Fault, FaultyCompute, GitHubApp, GitHubAppConfig};
use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = include_str!("../../infra/tests/fixtures/test-app-key.pem");

struct Aws {
    _github: MockServer,
    store: Arc<DynamoEventStore>,
    compute: Arc<FaultyCompute<Ec2Compute>>,
    /// The clock the fault wrapper judges its time windows by: it moves only
    /// when a test moves it, so a window does not depend on how fast moto is.
    fault_clock: jitr_infra::ManualClock,
    app: App,
    /// The deployment's prefix (its SSM parameters are under `/{prefix}`).
    prefix: String,
}

async fn aws() -> Aws {
    let mut policy = RunnerPolicy::default();
    policy.pools[0].spec.image = "ami-03cf127a".into();
    aws_with(policy).await
}

/// The harness with `policy` (pools, bootstrap) instead of the default.
async fn aws_with(policy: RunnerPolicy) -> Aws {
    let config = jitr_e2e::aws::config().await;
    let names = AwsNames::new(jitr_e2e::aws::unique("jitr"));
    jitr_aws::provision(&config, &names, 5).await.unwrap();
    let github = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/app/installations/\d+/access_tokens$"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"token": "ghs_moto", "expires_at": "2099-01-01T00:00:00Z"})),
        )
        .mount(&github)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/broken/actions/runners/generate-jitconfig",
        ))
        // A definitive refusal (a 5xx would be retried, not fail the runner).
        .respond_with(
            ResponseTemplate::new(422).set_body_json(json!({"message": "Validation Failed"})),
        )
        .mount(&github)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "runner": {"id": 9, "name": "jitr"}, "encoded_jit_config": "secret"
        })))
        .mount(&github)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/repos/acme/.*/actions/runners$"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"total_count": 0, "runners": []})),
        )
        .mount(&github)
        .await;
    let app = GitHubApp::new(GitHubAppConfig {
        app_id: "1".into(),
        private_key_pem: KEY.into(),
        api_base: github.uri(),
        max_rate_limit_wait: Duration::from_secs(1),
    })
    .unwrap();
    let store = Arc::new(DynamoEventStore::new(&config, names.events_table()));
    let fault_clock = jitr_infra::ManualClock::new(now());
    let compute = Arc::new(
        FaultyCompute::new(Ec2Compute::new(&config, vec![]).with_deployment(names.prefix()))
            .with_clock(fault_clock.clock()),
    );
    let queue = |name: String| {
        let config = config.clone();
        async move { Arc::new(SqsQueue::find(&config, &name).await.unwrap().unwrap()) }
    };
    let ports = Ports {
        store: store.clone(),
        compute: compute.clone(),
        github: Arc::new(app),
        secrets: Arc::new(SsmSecrets::new(&config, format!("/{}", names.prefix()))),
        scaleup_queue: queue(names.scaleup_queue()).await,
        lifecycle_queue: queue(names.lifecycle_queue()).await,
        compensation_queue: queue(names.compensation_queue()).await,
        ec2_events_queue: queue(names.ec2_events_queue()).await,
        bus: Arc::new(EventBridgeBus::new(&config, names.bus())),
    };
    Aws {
        _github: github,
        store,
        compute,
        fault_clock,
        app: App::new(ports, policy, Vec::new()),
        prefix: names.prefix().to_string(),
    }
}

fn queued(repo: &str, job_id: u64) -> JobMessage {
    JobMessage {
        delivery: format!("d-{repo}-{job_id}"),
        action: "queued".into(),
        installation: 1,
        owner: "acme".into(),
        repo: repo.into(),
        job_id,
        run_id: 1,
        labels: vec!["self-hosted".into()],
        runner_name: None,
        conclusion: None,
        attempt: 1,
        avoid_spot: Vec::new(),
        runner_id: None,
    }
}

fn now() -> Timestamp {
    jitr_handlers::runtime::now()
}

async fn live(aws: &Aws) -> Vec<jitr_infra::ManagedInstance> {
    aws.compute
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.state.is_live())
        .collect()
}

/// Drains the compensation queue (as `jitr serve --aws`'s consumer loop does)
/// until a delivery arrives from EventBridge, at most ten tries; how many.
async fn compensate(aws: &Aws) -> usize {
    let queue = aws.app.ports.compensation_queue.clone();
    for _ in 0..10 {
        let delivered = drain(
            &*queue,
            &*aws.app.compensation,
            10,
            Duration::from_secs(1),
            &now,
        )
        .await
        .unwrap();
        if delivered > 0 {
            return delivered;
        }
    }
    0
}

/// Seed criterion (a) on AWS: the JIT mint fails after RunInstances; the
/// projector's TerminateRunner travels EventBridge → SQS to compensation, which
/// terminates the EC2 instance; only then is the runner `failed`.
#[tokio::test]
async fn a_mint_failure_is_compensated_through_eventbridge_and_ec2() {
    let aws = aws().await;
    let outcome = aws
        .app
        .scaleup
        .handle(&queued("broken", 1), 1, now())
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Done(m) if m.contains("termination owed")),
        "{outcome:?}"
    );
    let stream = StreamId::parse("acme/broken#1#1").unwrap();
    let head = aws.store.head(&stream).await.unwrap().unwrap();
    assert_eq!(head.status, RunnerStatus::Terminating);
    assert_eq!(live(&aws).await.len(), 1);

    let mut projector = aws.app.projector().await.unwrap();
    let published = projector.tick(now()).await.unwrap();
    assert_eq!(published.len(), 1);
    // EventBridge's rule delivers it to the compensation queue; the consumer loop
    // (as `jitr serve --aws` runs it) terminates the instance.
    let delivered = compensate(&aws).await;
    assert_eq!(
        delivered, 1,
        "TerminateRunner reached the compensation queue"
    );

    assert!(live(&aws).await.is_empty());
    let head = aws.store.head(&stream).await.unwrap().unwrap();
    assert_eq!(head.status, RunnerStatus::Failed);
    let kinds: Vec<&str> = aws
        .store
        .read_stream(&stream)
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["TerminationRequested", "Terminated"]
    );
}

/// Issue 11: a job's pool, chosen by its labels from a configuration file,
/// decides what EC2 launches — the pool's first type, its image, subnet,
/// security group, instance profile, IMDSv2 required, terminate on shutdown —
/// and the user data is the pool's rendered bootstrap. A pool whose image has
/// another architecture than the pool says launches nothing and fails its
/// runner with a message naming both.
#[tokio::test]
async fn a_pools_job_launches_with_the_pools_settings_and_bootstrap() {
    let config = jitr_e2e::aws::config().await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let (vpc, subnet) = jitr_e2e::aws::create_vpc_with_subnet(&ec2).await;
    let group = ec2
        .create_security_group()
        .group_name(jitr_e2e::aws::unique("jitr-pool"))
        .description("runner instances: egress only")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_owned();
    jitr_e2e::aws::create_instance_profile("jitr-pool-runner").await;
    // moto's x86_64 and arm64 images.
    let text = format!(
        r#"
[defaults]
instance_profile = "jitr-pool-runner"
subnets = ["{subnet}"]
security_groups = ["{group}"]

[[pool]]
name = "linux-x64"
labels = ["linux", "x64"]
instance_types = ["m5.large", "c5.large"]
vcpus = 2
image = "ami-03cf127a"

[[pool]]
name = "linux-arm64"
labels = ["linux", "arm64"]
architecture = "arm64"
instance_types = ["c7g.large"]
vcpus = 2
image = "ami-0e9271c829888680e"
runner_dir = "/opt/runner-arm64"

[[pool]]
name = "mislabelled"
labels = ["linux", "arm64", "gpu"]
architecture = "arm64"
instance_types = ["g5g.xlarge"]
vcpus = 4
image = "ami-03cf127a"
"#
    );
    let pools = jitr_handlers::app::pools::parse(&text).unwrap();
    let bootstrap = jitr_handlers::app::bootstrap::Bootstrap {
        ssm_prefix: "/jitr-test/runners".into(),
        ..Default::default()
    };
    let aws = aws_with(RunnerPolicy {
        pools: pools.pools.clone(),
        bootstrap: Some(bootstrap.clone()),
        ..RunnerPolicy::default()
    })
    .await;

    let job = |id: u64, labels: &[&str]| {
        let mut message = queued("widgets", id);
        message.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        message
    };
    for (id, labels, pool, instance_type, image) in [
        (
            31,
            &["self-hosted", "linux", "x64"][..],
            &pools.pools[0],
            "m5.large",
            "ami-03cf127a",
        ),
        (
            32,
            &["self-hosted", "linux", "arm64"][..],
            &pools.pools[1],
            "c7g.large",
            "ami-0e9271c829888680e",
        ),
    ] {
        let outcome = aws
            .app
            .scaleup
            .handle(&job(id, labels), 1, now())
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
        let stream = StreamId::parse(&format!("acme/widgets#{id}#1")).unwrap();
        let instance = aws
            .store
            .head(&stream)
            .await
            .unwrap()
            .and_then(|h| h.instance_id)
            .expect("an instance");
        let view = jitr_e2e::aws::describe_launched(&ec2, &instance.0).await;
        let launched = &view.instance;
        assert_eq!(
            launched.instance_type().map(|t| t.as_str()),
            Some(instance_type)
        );
        assert_eq!(launched.image_id(), Some(image));
        assert_eq!(launched.subnet_id(), Some(subnet.as_str()));
        assert!(view.in_group(&group), "{:?}", launched.security_groups());
        assert!(
            view.profile_arn().ends_with("/jitr-pool-runner"),
            "{}",
            view.profile_arn()
        );
        assert!(view.requires_imdsv2());
        assert_eq!(view.shutdown_behavior.as_deref(), Some("terminate"));
        // Cost allocation tags: the pool and the repository.
        let tag = |key: &str| {
            launched
                .tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
        };
        assert_eq!(tag("jitr:pool"), Some(pool.name.as_str()));
        assert_eq!(tag("jitr:repository"), Some("acme/widgets"));
        let script = view.user_data.expect("user data");
        assert_eq!(script, bootstrap.for_pool(pool).render(), "{}", pool.name);
        if pool.name == "linux-arm64" {
            assert!(script.contains("/opt/runner-arm64"));
        }
    }

    let before = live(&aws).await.len();
    let outcome = aws
        .app
        .scaleup
        .handle(
            &job(33, &["self-hosted", "linux", "arm64", "gpu"]),
            1,
            now(),
        )
        .await
        .unwrap();
    let Outcome::DeadLetter(reason) = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        reason.contains("x86_64") && reason.contains("arm64"),
        "{reason}"
    );
    assert_eq!(live(&aws).await.len(), before, "nothing launched");
    let stream = StreamId::parse("acme/widgets#33#1").unwrap();
    assert_eq!(
        aws.store.head(&stream).await.unwrap().unwrap().status,
        RunnerStatus::Failed
    );
}

/// Five concurrent deliveries of one job on DynamoDB: one instance (moto itself
/// would happily start five for one client token), on-demand after spot's quota.
#[tokio::test]
async fn five_concurrent_deliveries_on_dynamodb_start_one_instance() {
    let aws = aws().await;
    aws.compute.inject(
        Fault::RejectLaunch {
            market: Some(Market::Spot),
            code: "MaxSpotInstanceCountExceeded".into(),
        },
        None,
    );
    let scaleup = aws.app.scaleup.clone();
    let message = queued("widgets", 7);
    let at = now();
    let h = || scaleup.handle(&message, 1, at);
    let (a, b, c, d, e) = tokio::join!(h(), h(), h(), h(), h());
    for outcome in [a, b, c, d, e] {
        outcome.unwrap();
    }
    let instances = live(&aws).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].market, Market::OnDemand);
    let stream = StreamId::parse("acme/widgets#7#1").unwrap();
    let events = aws.store.read_stream(&stream).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|r| r.event.kind() == "Launched")
            .count(),
        1
    );
    // Whichever deliveries were still waiting for the launch finish the runner.
    scaleup.handle(&message, 2, now()).await.unwrap();
    assert_eq!(
        aws.store.head(&stream).await.unwrap().unwrap().status,
        RunnerStatus::Ready
    );
}

/// A backstop never stalls on one bad item: one orphan whose termination EC2
/// refuses every time (termination protection, an IAM deny) is reported, and every
/// other orphan of the same sweep is still terminated.
#[tokio::test]
async fn one_instance_that_cannot_be_terminated_does_not_stop_the_sweep() {
    use jitr_domain::ClientToken;
    use jitr_infra::LaunchSpec;

    let aws = aws().await;
    let mut strays = Vec::new();
    for job in 1..=3u64 {
        let stream = StreamId::parse(&format!("acme/strays#{job}#1")).unwrap();
        let launched = aws
            .compute
            .inner()
            .launch(&LaunchSpec {
                client_token: ClientToken::derive(&stream, 1),
                stream,
                market: Market::OnDemand,
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami-03cf127a".into(),
                user_data: None,
                settings: Default::default(),
            })
            .await
            .unwrap();
        strays.push(launched.instance_id);
    }
    aws.compute
        .inject(Fault::RefuseTermination(strays[0].clone()), None);
    // Past the reaper's grace for instances just launched, on EC2's clock.
    let grace = aws.app.policy.reaper_grace_ms + 60_000;
    aws.compute.move_cloud_clock(Duration::from_millis(grace));
    let later = now().plus_ms(grace);
    let report = aws.app.reaper.sweep(later).await.unwrap();
    let mut terminated: Vec<_> = report
        .orphans_terminated
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    terminated.sort();
    let mut others = strays[1..].to_vec();
    others.sort();
    assert_eq!(terminated, others, "{report:?}");
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains(&strays[0].0), "{report:?}");
    let live: Vec<_> = live(&aws)
        .await
        .into_iter()
        .map(|m| m.instance_id)
        .collect();
    assert_eq!(live, [strays[0].clone()]);
}

/// Issue 9 on moto: an open runner's instance carrying another deployment's tag
/// (a renamed `JITR_PREFIX`) is missing from the tag-filtered listing. The reaper
/// asks EC2 by its id, never writes it off, writes its tags again (so it is
/// listed), and once the runner misses its boot deadline terminates it by id;
/// `Terminated` then records what EC2 reported.
#[tokio::test]
async fn an_instance_under_another_deployment_tag_is_found_by_id_and_retagged() {
    let aws = aws().await;
    let started = now();
    aws.app
        .scaleup
        .handle(&queued("widgets", 31), 1, started)
        .await
        .unwrap();
    let stream = StreamId::parse("acme/widgets#31#1").unwrap();
    let head = aws.store.head(&stream).await.unwrap().unwrap();
    assert_eq!(head.status, RunnerStatus::Ready);
    let instance = head.instance_id.clone().unwrap();
    let token = head.state.launch.as_ref().unwrap().client_token.clone();
    // The instance now says it belongs to another deployment.
    let config = jitr_e2e::aws::config().await;
    Ec2Compute::new(&config, vec![])
        .with_deployment("jitr-old-prefix")
        .retag(&instance, &stream, &token)
        .await
        .unwrap();
    assert!(live(&aws).await.iter().all(|m| m.instance_id != instance));

    // Time passes on EC2's clock as on the sweep's.
    let grace = aws.app.policy.reaper_grace_ms + 60_000;
    aws.compute.move_cloud_clock(Duration::from_millis(grace));
    let within_boot = started.plus_ms(grace);
    let report = aws.app.reaper.sweep(within_boot).await.unwrap();
    assert!(report.found_gone.is_empty(), "{report:?}");
    assert_eq!(
        report.retagged,
        std::slice::from_ref(&instance),
        "{report:?}"
    );
    assert_eq!(
        aws.store.head(&stream).await.unwrap().unwrap().status,
        RunnerStatus::Ready,
        "no Terminated while it runs"
    );
    assert!(
        live(&aws).await.iter().any(|m| m.instance_id == instance),
        "listed again under this deployment's tag"
    );

    let boot = aws.app.policy.deadlines.boot_timeout_ms + 60_000;
    aws.compute
        .move_cloud_clock(Duration::from_millis(boot - grace));
    let past_boot = started.plus_ms(boot);
    let report = aws.app.reaper.sweep(past_boot).await.unwrap();
    assert_eq!(
        report.compensated,
        std::slice::from_ref(&stream),
        "{report:?}"
    );
    assert!(live(&aws).await.iter().all(|m| m.instance_id != instance));
    let head = aws.store.head(&stream).await.unwrap().unwrap();
    assert_eq!(head.status, RunnerStatus::Failed);
    assert_eq!(
        head.state.terminated_by,
        Some(jitr_domain::TerminationEvidence::ReportedTerminated)
    );
}

/// Issue 9 on moto, with the wrapper playing EC2's eventual consistency (moto is
/// consistent at once): the JIT mint fails right after RunInstances while EC2
/// answers NotFound for the instance (and ignores the terminate call). No
/// `Terminated` is written while it runs; once EC2 sees it, compensation
/// terminates it and the runner closes on what EC2 reported.
#[tokio::test]
async fn not_found_right_after_launch_is_no_evidence_on_ec2() {
    let aws = aws().await;
    aws.compute
        .inject(Fault::NotFoundAfterLaunch(Duration::from_secs(3)), None);
    aws.app
        .scaleup
        .handle(&queued("broken", 41), 1, now())
        .await
        .unwrap();
    let stream = StreamId::parse("acme/broken#41#1").unwrap();
    let mut projector = aws.app.projector().await.unwrap();
    let owed = projector.tick(now()).await.unwrap();
    let command = owed.iter().find(|c| c.stream == stream).expect("owed");
    let first = aws.app.compensation.handle(command, now()).await.unwrap();
    assert!(matches!(first, Outcome::RetryAfter(..)), "{first:?}");
    let head = aws.store.head(&stream).await.unwrap().unwrap();
    assert_eq!(
        head.status,
        RunnerStatus::Terminating,
        "no Terminated on NotFound"
    );
    assert_eq!(live(&aws).await.len(), 1, "it still runs");

    aws.fault_clock.advance(4_000);
    let second = aws.app.compensation.handle(command, now()).await.unwrap();
    assert!(matches!(second, Outcome::Done(_)), "{second:?}");
    assert!(live(&aws).await.is_empty());
    let head = aws.store.head(&stream).await.unwrap().unwrap();
    assert_eq!(head.status, RunnerStatus::Failed);
    assert_eq!(
        head.state.terminated_by,
        Some(jitr_domain::TerminationEvidence::ReportedTerminated)
    );
}

/// Issue 26 (ADR-0022): a stopped pool on moto's EC2 and SSM. The warm runner
/// is launched and not minted; after its preparation time the reaper stops it
/// and records it `Parked` once EC2 says `stopped`; a queued job starts it
/// (EC2 `running` again), it is given a fresh JIT config in SSM for that
/// instance, and after its job it is terminated on EC2's evidence.
#[tokio::test]
async fn a_stopped_pools_runner_is_launched_stopped_started_minted_and_terminated_on_ec2() {
    use jitr_handlers::app::policy::Warmth;
    use jitr_infra::InstanceState;
    let mut policy = RunnerPolicy::default();
    policy.pools[0].spec.image = "ami-03cf127a".into();
    policy.pools[0].spot = false;
    policy.deadlines.drain_grace_ms = 0;
    policy.pools[0].warm = Warmth {
        schedule: jitr_domain::WarmSchedule {
            min_idle: 1,
            windows: Vec::new(),
        },
        max_idle_ms: None,
        warm_for: Some(("acme".into(), "widgets".into())),
        stopped: true,
    };
    let aws = aws_with(policy).await;
    let scaleup = aws.app.ports.scaleup_queue.clone();
    let drain_scaleup = || async {
        let mut handled = 0;
        for _ in 0..5 {
            handled += drain(
                &*scaleup,
                &*aws.app.scaleup,
                10,
                Duration::from_secs(1),
                &now,
            )
            .await
            .unwrap();
        }
        handled
    };

    let report = aws.app.reaper.sweep(now()).await.unwrap();
    assert_eq!(report.warm_asked.len(), 1, "{report:?}");
    let warm = report.warm_asked[0].clone();
    assert!(drain_scaleup().await >= 1);
    let head = aws.store.head(&warm).await.unwrap().unwrap();
    assert!(head.state.is_parking(), "{:?}", head.state);
    assert!(
        head.state.runner_name.is_none(),
        "not minted before it is parked"
    );
    let instance = head.instance_id.clone().expect("launched on EC2");

    // Its first boot done (EC2's clock moved past the preparation time): the
    // reaper stops it, then records it parked on EC2's word.
    let prepare = Duration::from_millis(jitr_handlers::app::supply::PREPARE_MS + 10_000);
    aws.compute.move_cloud_clock(prepare);
    let later = Timestamp(now().0 + prepare.as_millis() as i64);
    let report = aws.app.reaper.sweep(later).await.unwrap();
    assert_eq!(report.stopping, vec![warm.clone()], "{report:?}");
    let state = |m: Option<jitr_infra::ManagedInstance>| m.map(|m| m.state);
    let stopped = state(aws.compute.describe(&instance).await.unwrap());
    assert!(
        matches!(
            stopped,
            Some(InstanceState::Stopping | InstanceState::Stopped)
        ),
        "{stopped:?}"
    );
    let mut parked = false;
    for _ in 0..5 {
        let report = aws.app.reaper.sweep(later).await.unwrap();
        if report.parked.contains(&warm) {
            parked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(parked, "Parked recorded once EC2 said stopped");

    // A queued job starts it; it stands for the job and is minted.
    let outcome = aws
        .app
        .scaleup
        .handle(&queued("widgets", 1), 1, later)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
    drain_scaleup().await;
    let woken = aws.store.head(&warm).await.unwrap().unwrap();
    assert!(woken.state.woken_at.is_some(), "{:?}", woken.state);
    assert_eq!(woken.status, RunnerStatus::Ready, "minted after the start");
    let started = state(aws.compute.describe(&instance).await.unwrap());
    assert!(
        matches!(
            started,
            Some(InstanceState::Pending | InstanceState::Running)
        ),
        "{started:?}"
    );
    let config = jitr_e2e::aws::config().await;
    let parameter = aws_sdk_ssm::Client::new(&config)
        .get_parameter()
        .name(format!("/{}/{}/jit-config", aws.prefix, instance.0))
        .with_decryption(true)
        .send()
        .await
        .expect("a fresh JIT config for the started instance");
    assert_eq!(
        parameter.parameter().and_then(|p| p.value()),
        Some("secret")
    );
    let own = StreamId::parse("acme/widgets#1#1").unwrap();
    let own = aws.store.head(&own).await.unwrap().unwrap();
    assert!(
        own.instance_id.is_none(),
        "the job's own runner launched nothing"
    );

    // The job runs on it and completes: its instance is terminated.
    let name = woken.state.runner_name.clone().unwrap();
    for (action, conclusion) in [("in_progress", None), ("completed", Some("success"))] {
        let mut message = queued("widgets", 1);
        message.action = action.into();
        message.runner_name = Some(name.clone());
        message.conclusion = conclusion.map(str::to_owned);
        aws.app.lifecycle.handle(&message, later).await.unwrap();
    }
    let mut projector = aws.app.projector().await.unwrap();
    projector.tick(Timestamp(later.0 + 1_000)).await.unwrap();
    compensate(&aws).await;
    let gone = state(aws.compute.describe(&instance).await.unwrap());
    assert!(
        matches!(
            gone,
            None | Some(InstanceState::ShuttingDown | InstanceState::Terminated)
        ),
        "{gone:?}"
    );
    let kinds: Vec<&str> = aws
        .store
        .read_stream(&warm)
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    for kind in [
        "Launched",
        "Parked",
        "Woken",
        "TokenMinted",
        "JobCompleted",
        "TerminationRequested",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
}
