//! `jitr serve` on the embedded default, over HTTP: signed webhooks in, runners out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jitr_domain::{RunnerStatus, StreamId};
use jitr_handlers::app::policy::RunnerPolicy;
use jitr_handlers::app::webhook::{sample_payload, sign};
use jitr_handlers::runtime::serve::{self, Cadence};
use jitr_infra::{CheckpointStore, EventStore, SimSettings, SqliteEventStore};

const SECRET: &str = "it-is-a-secret";

struct Server {
    url: String,
    dir: Arc<tempfile::TempDir>,
    /// Its projector's lease holder id.
    holder: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), serve::ServeError>>,
    http: reqwest::Client,
}

async fn start() -> Server {
    start_in(Arc::new(tempfile::tempdir().unwrap())).await
}

/// A server on `dir` (which another server may share).
async fn start_in(dir: Arc<tempfile::TempDir>) -> Server {
    let mut policy = RunnerPolicy::default();
    policy.deadlines.drain_grace_ms = 500;
    let app = serve::embedded(
        dir.path(),
        policy,
        SimSettings::default(),
        SECRET.as_bytes().to_vec(),
    )
    .unwrap();
    let cadence = Cadence {
        projector: Duration::from_millis(50),
        sweep: Duration::from_secs(3600),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let holder = app.holder.clone();
    let task = tokio::spawn(serve::run(app, cadence, listener, stopped));
    Server {
        url,
        dir,
        holder,
        stop,
        task,
        http: reqwest::Client::new(),
    }
}

impl Server {
    async fn post(
        &self,
        event: &str,
        delivery: &str,
        body: &str,
        signature: Option<String>,
    ) -> (u16, String) {
        let mut request = self
            .http
            .post(format!("{}/webhook", self.url))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn job(&self, action: &str, job: u64, runner: Option<&str>) -> (u16, String) {
        let labels = vec!["self-hosted".to_string(), "linux".to_string()];
        let body = sample_payload(action, "acme", "widgets", job, &labels, runner);
        let delivery = format!("{action}-{job}");
        self.post(
            "workflow_job",
            &delivery,
            &body,
            Some(sign(SECRET.as_bytes(), body.as_bytes())),
        )
        .await
    }

    fn store(&self) -> SqliteEventStore {
        SqliteEventStore::open(self.dir.path().join("events.db")).unwrap()
    }

    /// Waits (up to `limit`) until the runner of `job` satisfies `done`.
    async fn wait_for(
        &self,
        job: u64,
        limit: Duration,
        done: impl Fn(&jitr_infra::StreamHead) -> bool,
    ) -> Duration {
        let stream = StreamId::parse(&format!("acme/widgets#{job}#1")).unwrap();
        let store = self.store();
        let started = Instant::now();
        loop {
            if let Some(head) = store.head(&stream).await.unwrap() {
                if done(&head) {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < limit,
                "runner of job {job} not there within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("graceful shutdown")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_queued_webhook_gets_a_runner_within_two_seconds_and_completed_terminates_it() {
    let server = start().await;
    let health = server
        .http
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let (status, body) = server.job("queued", 42, None).await;
    assert_eq!((status, body.as_str()), (202, "queued job 42 enqueued"));
    let took = server
        .wait_for(42, Duration::from_secs(2), |h| {
            h.state.runner_name.is_some()
        })
        .await;
    assert!(took < Duration::from_secs(2), "TokenMinted after {took:?}");
    let head = server
        .store()
        .head(&StreamId::parse("acme/widgets#42#1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(head.instance_id.as_ref().unwrap().0.starts_with("sim-"));
    let runner = head.state.runner_name.clone().unwrap();

    assert_eq!(server.job("in_progress", 42, Some(&runner)).await.0, 202);
    assert_eq!(server.job("completed", 42, Some(&runner)).await.0, 202);
    server
        .wait_for(42, Duration::from_secs(5), |h| {
            h.status == RunnerStatus::Completed
        })
        .await;
    let events = server.store().read_stream(&head.stream).await.unwrap();
    assert_eq!(events.last().unwrap().event.kind(), "Terminated");
    server.shutdown().await;
}

/// Issue 12: `serve` hears the simulated EC2's state changes as EventBridge
/// would deliver EC2's: an instance that goes away by itself (here terminated
/// behind jitr's back) is recorded gone within seconds, on the evidence of the
/// `shutting-down` event — the reaper does not run (hourly sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_gone_behind_jitrs_back_is_recorded_from_ec2s_event() {
    use jitr_infra::Compute;
    let server = start().await;
    assert_eq!(server.job("queued", 7, None).await.0, 202);
    server
        .wait_for(7, Duration::from_secs(2), |h| h.state.runner_name.is_some())
        .await;
    let stream = StreamId::parse("acme/widgets#7#1").unwrap();
    let instance = server
        .store()
        .head(&stream)
        .await
        .unwrap()
        .unwrap()
        .instance_id
        .unwrap();
    let cloud = jitr_infra::SimCloud::open(
        server.dir.path().join("cloud.db"),
        SimSettings::default(),
        jitr_infra::system_clock(),
    )
    .unwrap();
    cloud.terminate(&instance).await.unwrap();
    server
        .wait_for(7, Duration::from_secs(5), |h| {
            h.state.terminated_by == Some(jitr_domain::TerminationEvidence::StateChange)
        })
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_status_codes() {
    let server = start().await;
    let labels = vec!["self-hosted".to_string()];
    let body = sample_payload("queued", "acme", "widgets", 1, &labels, None);
    // Missing and bad signatures.
    assert_eq!(server.post("workflow_job", "d1", &body, None).await.0, 401);
    assert_eq!(
        server
            .post(
                "workflow_job",
                "d2",
                &body,
                Some(sign(b"wrong", body.as_bytes()))
            )
            .await
            .0,
        401
    );
    // Signed but malformed.
    let bad = r#"{"action":"queued","workflow_job":{}}"#;
    let (status, text) = server
        .post(
            "workflow_job",
            "d3",
            bad,
            Some(sign(SECRET.as_bytes(), bad.as_bytes())),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("malformed"));
    // Signed, well formed, but a repository name GitHub never gives: a stream id
    // could not be parsed back, so it is refused here, not deep in a backstop.
    let odd = sample_payload("queued", "acme", "wid#gets", 9, &labels, None);
    let (status, text) = server
        .post(
            "workflow_job",
            "d3b",
            &odd,
            Some(sign(SECRET.as_bytes(), odd.as_bytes())),
        )
        .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("wid#gets"), "{text}");
    // Oversized: refused unread, and the connection is closed (its unread
    // body cannot be followed by another request), so that no client reuses
    // it — a reused one failed the next delivery with a broken pipe.
    let huge = "x".repeat(2 * 1024 * 1024);
    let oversized = reqwest::Client::new()
        .post(format!("{}/webhook", server.url))
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", "d4")
        .header(
            "X-Hub-Signature-256",
            sign(SECRET.as_bytes(), huge.as_bytes()),
        )
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status().as_u16(), 413);
    assert_eq!(
        oversized.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    // Ignored: other events, other labels, waiting.
    let ping = "{}";
    assert_eq!(
        server
            .post(
                "ping",
                "d5",
                ping,
                Some(sign(SECRET.as_bytes(), ping.as_bytes()))
            )
            .await
            .0,
        200
    );
    let hosted = sample_payload(
        "queued",
        "acme",
        "widgets",
        2,
        &["ubuntu-latest".to_string()],
        None,
    );
    let (status, text) = server
        .post(
            "workflow_job",
            "d6",
            &hosted,
            Some(sign(SECRET.as_bytes(), hosted.as_bytes())),
        )
        .await;
    assert_eq!(status, 200);
    assert!(text.starts_with("ignored: no pool serves"), "{text}");
    // A redelivery of the same delivery id is a duplicate.
    assert_eq!(
        server
            .post(
                "workflow_job",
                "d7",
                &body,
                Some(sign(SECRET.as_bytes(), body.as_bytes()))
            )
            .await
            .0,
        202
    );
    let (status, text) = server
        .post(
            "workflow_job",
            "d7",
            &body,
            Some(sign(SECRET.as_bytes(), body.as_bytes())),
        )
        .await;
    assert_eq!((status, text.contains("duplicate")), (200, true));
    server.shutdown().await;
}

/// Who holds the projector's lease now (a probe that takes a free lease takes
/// it for no time at all).
async fn lease_holder(store: &SqliteEventStore) -> String {
    let now = jitr_handlers::runtime::now();
    store
        .acquire_lease(jitr_handlers::app::projector::LEASE, "probe", now, 0)
        .await
        .unwrap()
        .holder
}

/// Waits until `holder` holds the projector's lease.
async fn wait_for_lease(store: &SqliteEventStore, holder: &str) {
    let started = Instant::now();
    while lease_holder(store).await != holder {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{holder} never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 9: two `serve` on one data directory. One projector holds the lease;
/// runners are served and compensated all the same; the checkpoint stays
/// readable. When the holder stops, the other takes the lease over at once; a
/// restarted `serve` starts cleanly and takes it in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serves_on_one_log_share_it_and_restart_cleanly() {
    let a = start().await;
    let b = start_in(a.dir.clone()).await;
    let store = a.store();
    let first = {
        let started = Instant::now();
        loop {
            let holder = lease_holder(&store).await;
            if holder == a.holder || holder == b.holder {
                break holder;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no projector took the lease"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (leader, follower) = if first == a.holder { (a, b) } else { (b, a) };

    assert_eq!(leader.job("queued", 51, None).await.0, 202);
    leader
        .wait_for(51, Duration::from_secs(5), |h| {
            h.state.runner_name.is_some()
        })
        .await;
    let runner = leader
        .store()
        .head(&StreamId::parse("acme/widgets#51#1").unwrap())
        .await
        .unwrap()
        .unwrap()
        .state
        .runner_name
        .unwrap();
    assert_eq!(follower.job("completed", 51, Some(&runner)).await.0, 202);
    leader
        .wait_for(51, Duration::from_secs(5), |h| {
            h.status == RunnerStatus::Completed
        })
        .await;
    assert_eq!(
        lease_holder(&store).await,
        leader.holder,
        "one writer throughout"
    );

    let dir = leader.dir.clone();
    leader.shutdown().await;
    wait_for_lease(&store, &follower.holder).await;
    // The new writer catches up from the leader's checkpoint (which may predate
    // the leader's last events) within a tick or two, and saves its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let checkpoint = store
            .load_checkpoint(jitr_handlers::app::projector::CHECKPOINT)
            .await
            .unwrap()
            .expect("a checkpoint");
        let views: jitr_projections::RunnerViews =
            serde_json::from_slice(&checkpoint.snapshot).unwrap();
        if views.closed_count() >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new writer never saved the closed runner: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    follower.shutdown().await;
    let restarted = start_in(dir).await;
    wait_for_lease(&store, &restarted.holder).await;
    assert_eq!(restarted.job("queued", 52, None).await.0, 202);
    restarted
        .wait_for(52, Duration::from_secs(5), |h| {
            h.state.runner_name.is_some()
        })
        .await;
    restarted.shutdown().await;
}

/// Issue 10: in `serve` the reaper and the rebalancer run apart, so a rebalancer
/// stuck on GitHub never holds the reaper back: an orphan that appears while it
/// is stuck is still reaped; and a stop does not wait for the stuck call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_rebalancer_does_not_hold_the_reaper_back() {
    use jitr_infra::{Compute, LaunchSpec};

    let dir = tempfile::tempdir().unwrap();
    let mut embedded = jitr_handlers::runtime::embedded::Embedded::open(
        dir.path(),
        SimSettings::default(),
        jitr_infra::system_clock(),
        10,
    )
    .unwrap();
    let stuck = jitr_infra::FaultyGitHub::new(Arc::new(embedded.github.clone()));
    stuck.inject(jitr_infra::GitHubFault::ListingsHang);
    embedded.ports.github = Arc::new(stuck);
    let cloud = embedded.cloud.clone();
    let policy = RunnerPolicy {
        reaper_grace_ms: 0,
        ..RunnerPolicy::default()
    };
    let app = jitr_handlers::app::App::new(embedded.ports, policy, SECRET.as_bytes().to_vec());
    let cadence = Cadence {
        projector: Duration::from_millis(50),
        sweep: Duration::from_millis(100),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve::run(app, cadence, listener, stopped));
    // Let the first sweeps run: the rebalancer is now stuck on GitHub.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An instance of a runner the log never heard of.
    let stream = StreamId::parse("acme/widgets#404#1").unwrap();
    let orphan = cloud
        .launch(&LaunchSpec {
            client_token: jitr_domain::ClientToken::derive(&stream, 1),
            stream,
            market: jitr_domain::Market::OnDemand,
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            image: "ami-sim".into(),
            user_data: None,
            settings: Default::default(),
        })
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let seen = cloud.describe(&orphan.instance_id).await.unwrap().unwrap();
        if !seen.state.is_live() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the orphan was not reaped while the rebalancer was stuck"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("graceful shutdown")
        .unwrap()
        .unwrap();
}
