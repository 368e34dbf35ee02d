//! The EC2 adapter against moto: client token and tags on launch, paginated
//! listing by tag, idempotent terminate; quota/capacity errors (which moto cannot
//! produce) injected by the fault wrapper around the real adapter.

use jitr_aws::Ec2Compute;
use jitr_domain::{
    ClientToken, InstanceId, JobRef, LaunchErrorClass, Market, StreamId, fallback_market,
};
use jitr_infra::{
    Compute, Fault, FaultyCompute, InstanceState, LaunchFailure, LaunchSpec, TerminateOutcome,
};

const AMI: &str = "ami-03cf127a";

/// A stream no other test uses.
fn stream(job: u64) -> StreamId {
    let owner = jitr_e2e::aws::unique("ec2");
    StreamId::for_job(
        &JobRef {
            owner,
            repo: "widgets".into(),
            job_id: job,
            run_id: 1,
        },
        1,
    )
    .expect("a stream id of a valid repository")
}

fn spec(stream: &StreamId, market: Market) -> LaunchSpec {
    LaunchSpec {
        stream: stream.clone(),
        client_token: ClientToken::derive(stream, 1),
        market,
        instance_type: "c5.xlarge".into(),
        vcpus: 4,
        image: AMI.into(),
        user_data: Some("#!/bin/sh\necho jitr\n".into()),
        settings: Default::default(),
    }
}

async fn ec2() -> Ec2Compute {
    Ec2Compute::new(&jitr_e2e::aws::config().await, vec![])
}

#[tokio::test]
async fn launch_sends_the_client_token_and_tags() {
    let ec2 = ec2().await;
    let s = stream(1);
    let launched = ec2.launch(&spec(&s, Market::Spot)).await.unwrap();
    assert!(launched.instance_id.0.starts_with("i-"));
    assert_eq!(launched.market, Market::Spot);
    assert_eq!(launched.vcpus, 4);

    let listed = ec2.list_managed().await.unwrap();
    let mine = listed
        .iter()
        .find(|m| m.instance_id == launched.instance_id)
        .expect("the instance is listed by its managed-by tag");
    assert_eq!(mine.stream.as_ref(), Some(&s));
    assert_eq!(mine.client_token, Some(ClientToken::derive(&s, 1)));
    assert_eq!(mine.market, Market::Spot);
    assert!(matches!(
        mine.state,
        InstanceState::Pending | InstanceState::Running
    ));
    assert!(mine.launched_at.0 > 0);

    let found = ec2
        .find_by_client_token(&ClientToken::derive(&s, 1))
        .await
        .unwrap()
        .expect("found by client token");
    assert_eq!(found.instance_id, launched.instance_id);
    assert!(
        ec2.find_by_client_token(&ClientToken::derive(&s, 2))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn listing_paginates_and_leaves_out_terminated_instances() {
    let ec2 = ec2().await.with_page_size(5);
    let mut mine = Vec::new();
    for job in 0..7 {
        let s = stream(job);
        mine.push(
            ec2.launch(&spec(&s, Market::OnDemand))
                .await
                .unwrap()
                .instance_id,
        );
    }
    let listed: Vec<InstanceId> = ec2
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.instance_id)
        .collect();
    assert!(
        mine.iter().all(|id| listed.contains(id)),
        "7 across pages of 5"
    );

    assert_eq!(
        ec2.terminate(&mine[0]).await.unwrap(),
        TerminateOutcome::Terminating
    );
    let listed: Vec<InstanceId> = ec2
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.state != InstanceState::ShuttingDown)
        .map(|m| m.instance_id)
        .collect();
    assert!(!listed.contains(&mine[0]));
    assert!(mine[1..].iter().all(|id| listed.contains(id)));
}

#[tokio::test]
async fn a_deployment_lists_only_its_own_instances() {
    let config = jitr_e2e::aws::config().await;
    let a = jitr_e2e::aws::unique("deploy-a");
    let mine = Ec2Compute::new(&config, vec![]).with_deployment(&a);
    let other = Ec2Compute::new(&config, vec![]).with_deployment(jitr_e2e::aws::unique("deploy-b"));
    let launched = mine.launch(&spec(&stream(1), Market::Spot)).await.unwrap();
    other.launch(&spec(&stream(2), Market::Spot)).await.unwrap();
    let listed: Vec<InstanceId> = mine
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.instance_id)
        .collect();
    assert_eq!(listed, vec![launched.instance_id.clone()]);
    // Described by id with the listing's filters: its own, not the other's.
    let own = mine.describe_managed(&launched.instance_id).await.unwrap();
    assert_eq!(own.map(|m| m.instance_id), Some(launched.instance_id));
    let theirs = other
        .list_managed()
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .instance_id;
    assert!(mine.describe_managed(&theirs).await.unwrap().is_none());
    assert!(
        mine.describe_managed(&InstanceId("i-0123456789abcdef0".into()))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn terminate_is_idempotent_and_unknown_ids_are_already_gone() {
    let ec2 = ec2().await;
    let launched = ec2
        .launch(&spec(&stream(1), Market::OnDemand))
        .await
        .unwrap();
    ec2.terminate(&launched.instance_id).await.unwrap();
    // Twice is fine: still terminating, or already gone.
    ec2.terminate(&launched.instance_id).await.unwrap();
    // Described by id, a terminated instance is reported terminated (not NotFound).
    let seen = ec2.describe(&launched.instance_id).await.unwrap();
    assert!(seen.is_some_and(|m| !m.state.is_live()));
    assert_eq!(
        ec2.terminate(&InstanceId("i-0123456789abcdef0".into()))
            .await
            .unwrap(),
        TerminateOutcome::AlreadyGone
    );
}

#[tokio::test]
async fn injected_spot_quota_errors_drive_the_on_demand_fallback() {
    let compute = FaultyCompute::new(ec2().await);
    compute.inject(
        Fault::RejectLaunch {
            market: Some(Market::Spot),
            code: "MaxSpotInstanceCountExceeded".into(),
        },
        Some(1),
    );
    let s = stream(1);
    let refused = match compute.launch(&spec(&s, Market::Spot)).await {
        Err(LaunchFailure::Rejected(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused.class, LaunchErrorClass::Quota);
    let next = fallback_market(Market::Spot, refused.class).expect("falls back");
    assert_eq!(next, Market::OnDemand);
    let mut on_demand = spec(&s, next);
    on_demand.client_token = ClientToken::derive(&s, 2);
    let launched = compute.launch(&on_demand).await.unwrap();
    assert_eq!(launched.market, Market::OnDemand);
    let seen = compute
        .inner()
        .describe(&launched.instance_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.market, Market::OnDemand, "not launched as spot");

    // On-demand quota: classified, and nothing left to fall back to.
    compute.inject(
        Fault::RejectLaunch {
            market: None,
            code: "VcpuLimitExceeded".into(),
        },
        Some(1),
    );
    let refused = match compute.launch(&spec(&stream(2), Market::OnDemand)).await {
        Err(LaunchFailure::Rejected(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        (refused.code.as_str(), refused.class),
        ("VcpuLimitExceeded", LaunchErrorClass::Quota)
    );
    assert_eq!(fallback_market(Market::OnDemand, refused.class), None);
}

#[tokio::test]
async fn a_lost_launch_answer_leaves_an_instance_found_by_its_token() {
    let compute = FaultyCompute::new(ec2().await);
    compute.inject(Fault::LoseLaunchAnswer, Some(1));
    let s = stream(1);
    let outcome = compute.launch(&spec(&s, Market::Spot)).await;
    assert!(
        matches!(outcome, Err(LaunchFailure::Unknown(_))),
        "{outcome:?}"
    );
    let found = compute
        .find_by_client_token(&ClientToken::derive(&s, 1))
        .await
        .unwrap()
        .expect("the instance exists although the answer was lost");
    assert_eq!(found.stream, Some(s));
    compute.inject(Fault::ThrottleTerminate, Some(1));
    assert!(compute.terminate(&found.instance_id).await.is_err());
    assert_eq!(
        compute.terminate(&found.instance_id).await.unwrap(),
        TerminateOutcome::Terminating
    );
}

#[tokio::test]
async fn launches_spread_over_subnets_and_a_retry_keeps_its_subnet() {
    let ec2 = Ec2Compute::new(
        &jitr_e2e::aws::config().await,
        vec!["subnet-a".into(), "subnet-b".into(), "subnet-c".into()],
    );
    let s = stream(1);
    let mut used = std::collections::BTreeSet::new();
    for launch in 1..=60 {
        let token = ClientToken::derive(&s, launch);
        let subnet = ec2.subnet_for(&token).unwrap();
        assert_eq!(
            ec2.subnet_for(&token),
            Some(subnet),
            "same token, same subnet"
        );
        used.insert(subnet.to_owned());
    }
    assert_eq!(used.len(), 3);
    assert_eq!(
        Ec2Compute::new(&jitr_e2e::aws::config().await, vec![])
            .subnet_for(&ClientToken::derive(&s, 1)),
        None
    );
}

/// Issue 11: every runner instance requires IMDSv2 tokens and terminates when it
/// shuts itself down (EC2's default is to stop, keeping its volume); the pool's
/// instance profile, security groups, hop limit, root volume (gp3, encrypted)
/// and tags reach RunInstances, the tags on the volume too.
#[tokio::test]
async fn a_launch_requires_imdsv2_terminates_on_shutdown_and_carries_its_settings() {
    let config = jitr_e2e::aws::config().await;
    let client = aws_sdk_ec2::Client::new(&config);
    let group = client
        .create_security_group()
        .group_name(jitr_e2e::aws::unique("jitr-runner"))
        .description("runner instances: egress only")
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_owned();
    jitr_e2e::aws::create_instance_profile("jitr-runner").await;
    let s = stream(40);
    let mut launch = spec(&s, Market::OnDemand);
    launch.settings = jitr_infra::LaunchSettings {
        instance_profile: Some("jitr-runner".into()),
        security_groups: vec![group.clone()],
        subnets: Vec::new(),
        metadata_hop_limit: 2,
        root_volume_gib: Some(64),
        tags: [("team".to_owned(), "ci".to_owned())].into(),
        architecture: None,
        public_ip: false,
    };
    let script = jitr_handlers::app::bootstrap::Bootstrap::default().render();
    launch.user_data = Some(script.clone());
    let launched = ec2().await.launch(&launch).await.unwrap();
    let id = launched.instance_id.0.clone();

    let view = jitr_e2e::aws::describe_launched(&client, &id).await;
    let instance = &view.instance;
    assert!(view.requires_imdsv2());
    assert_eq!(
        instance
            .metadata_options()
            .and_then(|m| m.http_put_response_hop_limit()),
        Some(2)
    );
    assert!(view.in_group(&group), "{:?}", instance.security_groups());
    assert!(
        view.profile_arn().ends_with("/jitr-runner"),
        "{}",
        view.profile_arn()
    );
    let tag = |tags: &[aws_sdk_ec2::types::Tag], key: &str| {
        tags.iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_owned)
    };
    assert_eq!(tag(instance.tags(), "team").as_deref(), Some("ci"));
    assert_eq!(view.shutdown_behavior.as_deref(), Some("terminate"));
    assert_eq!(view.user_data.as_deref(), Some(script.as_str()));

    let root = instance.root_device_name().expect("a root device");
    let volume_id = instance
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root))
        .and_then(|m| m.ebs())
        .and_then(|e| e.volume_id())
        .expect("the root volume")
        .to_owned();
    let volumes = client
        .describe_volumes()
        .volume_ids(&volume_id)
        .send()
        .await
        .unwrap();
    let volume = &volumes.volumes()[0];
    assert_eq!(volume.size(), Some(64));
    assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(volume.encrypted(), Some(true));
    assert_eq!(
        tag(volume.tags(), jitr_infra::TAG_RUNNER).as_deref(),
        Some(s.as_str())
    );
}

/// Issue 11: a pool's image may be an SSM parameter (`/aws/service/…`, or EC2's
/// `resolve:ssm:` form): it is resolved to the AMI id at launch, also for the
/// root volume's device; a missing parameter is a refused request naming it.
#[tokio::test]
async fn an_image_named_by_an_ssm_parameter_is_resolved_at_launch() {
    let config = jitr_e2e::aws::config().await;
    let name = format!("/{}/runner-ami", jitr_e2e::aws::unique("images"));
    aws_sdk_ssm::Client::new(&config)
        .put_parameter()
        .name(&name)
        .value(AMI)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let ec2 = ec2().await;
    for (job, image) in [(50, name.clone()), (51, format!("resolve:ssm:{name}"))] {
        let s = stream(job);
        let mut launch = spec(&s, Market::OnDemand);
        launch.image = image;
        launch.settings.root_volume_gib = Some(30);
        let launched = ec2.launch(&launch).await.unwrap();
        let described = aws_sdk_ec2::Client::new(&config)
            .describe_instances()
            .instance_ids(&launched.instance_id.0)
            .send()
            .await
            .unwrap();
        assert_eq!(
            described.reservations()[0].instances()[0].image_id(),
            Some(AMI)
        );
    }
    let s = stream(52);
    let mut launch = spec(&s, Market::OnDemand);
    launch.image = format!("{name}-missing");
    match ec2.launch(&launch).await {
        Err(LaunchFailure::Rejected(e)) => {
            assert_eq!(e.class, LaunchErrorClass::InvalidRequest);
            assert!(e.message.contains("-missing"), "{e:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(jitr_aws::image_parameter("ami-1"), None);
}

/// A proxy in front of moto that forwards every request and answers each
/// RunInstances it forwarded with EC2's `500 InternalError`: the launch
/// happened, the answer is an error. Returns its endpoint and how many
/// RunInstances reached moto.
async fn proxy_failing_run_instances() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let moto = jitr_e2e::aws::endpoint();
    let launches = Arc::new(AtomicUsize::new(0));
    let counted = launches.clone();
    let client = reqwest::Client::new();
    let forward = move |request: axum::extract::Request| {
        let (moto, counted, client) = (moto.clone(), counted.clone(), client.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 16 << 20).await.unwrap();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut upstream = client.request(parts.method.clone(), format!("{moto}{path}"));
            for (name, value) in &parts.headers {
                if name != "host" && name != "content-length" {
                    upstream = upstream.header(name, value);
                }
            }
            let answer = upstream.body(body.clone()).send().await.unwrap();
            let run_instances = String::from_utf8_lossy(&body).contains("Action=RunInstances");
            if run_instances {
                counted.fetch_add(1, Ordering::SeqCst);
                let error = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                    <Response><Errors><Error><Code>InternalError</Code>\
                    <Message>An internal error has occurred.</Message></Error></Errors>\
                    <RequestID>0f2d9c6e-proxy</RequestID></Response>";
                return axum::response::Response::builder()
                    .status(500)
                    .header("content-type", "text/xml")
                    .body(axum::body::Body::from(error))
                    .unwrap();
            }
            let status = answer.status();
            let headers = answer.headers().clone();
            let bytes = answer.bytes().await.unwrap();
            let mut response = axum::response::Response::builder().status(status);
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    response = response.header(name, value);
                }
            }
            response.body(axum::body::Body::from(bytes)).unwrap()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(forward))
            .await
            .unwrap();
    });
    (format!("http://{address}"), launches)
}

/// Issue 24: EC2 launched the instance but answered `InternalError` (a server
/// error). That is not "nothing launched": the outcome is unknown and the
/// instance is found by its client token. One attempt only — an SDK retry
/// would launch again on a server that ignores the token (moto; EC2 honours
/// it, but a retry ending in a throttle would then hide the first launch).
#[tokio::test]
async fn a_server_error_after_the_launch_leaves_it_unknown_and_found_by_its_token() {
    let (proxy, launches) = proxy_failing_run_instances().await;
    let through_proxy =
        Ec2Compute::new(&jitr_aws::AwsSettings::emulator(proxy).load().await, vec![]);
    let s = stream(1);
    let outcome = through_proxy.launch(&spec(&s, Market::OnDemand)).await;
    assert!(
        matches!(outcome, Err(LaunchFailure::Unknown(_))),
        "a server error is no proof that nothing was launched: {outcome:?}"
    );
    assert_eq!(
        launches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "RunInstances is sent once"
    );
    let found = ec2()
        .await
        .find_by_client_token(&ClientToken::derive(&s, 1))
        .await
        .unwrap()
        .expect("the instance EC2 launched is found by its token");
    assert_eq!(found.stream, Some(s));
}

/// Issue 24: a pool's `public_ip` decides the runner's public address,
/// whatever its subnet's default: off by default (the subnet's routes, a NAT
/// gateway, reach GitHub), on when asked.
#[tokio::test]
async fn a_public_ip_is_given_only_when_the_pool_asks_whatever_the_subnet_says() {
    let config = jitr_e2e::aws::config().await;
    let client = aws_sdk_ec2::Client::new(&config);
    let (_, subnet) = jitr_e2e::aws::create_vpc_with_subnet(&client).await;
    client
        .modify_subnet_attribute()
        .subnet_id(&subnet)
        .map_public_ip_on_launch(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let ec2 = Ec2Compute::new(&config, vec![subnet.clone()]);
    let mut public = Vec::new();
    for (job, asked) in [(50, false), (51, true)] {
        let mut launch = spec(&stream(job), Market::OnDemand);
        launch.settings.public_ip = asked;
        let id = ec2.launch(&launch).await.unwrap().instance_id.0;
        let view = jitr_e2e::aws::describe_launched(&client, &id).await;
        assert_eq!(view.instance.subnet_id(), Some(subnet.as_str()));
        public.push(view.instance.public_ip_address().is_some());
    }
    assert_eq!(public, [false, true], "public address only when asked");
}

/// Issue 25: the adapter reads EC2's time from its answers' `Date`, not from
/// this host's clock. An endpoint answering DescribeInstances with a `Date`
/// an hour ahead of this host moves the adapter's `cloud_time` an hour ahead.
/// (The clock is process-wide; no other test of this file reads it.)
#[tokio::test]
async fn the_cloud_time_is_read_from_the_answers_date() {
    use aws_smithy_types::DateTime;
    use aws_smithy_types::date_time::Format;
    const HOUR_MS: i64 = 3_600_000;
    let ahead = || {
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(3_600);
        DateTime::from(at).fmt(Format::HttpDate).unwrap()
    };
    let answer = move || async move {
        axum::response::Response::builder()
            .status(200)
            .header("content-type", "text/xml")
            .header("date", ahead())
            .body(axum::body::Body::from(
                "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                 <requestId>clock</requestId><reservationSet/></DescribeInstancesResponse>",
            ))
            .unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(answer))
            .await
            .unwrap();
    });
    let ec2 = Ec2Compute::new(
        &jitr_aws::AwsSettings::emulator(format!("http://{address}"))
            .load()
            .await,
        vec![],
    );
    let described = ec2.describe(&InstanceId("i-0clock".into())).await.unwrap();
    assert_eq!(described, None);
    let host = jitr_domain::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    );
    let cloud = ec2.cloud_time().expect("EC2 has answered");
    let ahead_ms = cloud.0 - host.0;
    assert!(
        (HOUR_MS - 2_000..=HOUR_MS + 1_000).contains(&ahead_ms),
        "EC2's clock is an hour ahead of this host's: {ahead_ms} ms"
    );
}
