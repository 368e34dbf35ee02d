//! Why a job waits, and a runner's boot log (issue 28), on `serve` over the
//! embedded default, in process:
//!
//! - one test per waiting reason (quota, no pool, capacity, GitHub's rate
//!   limit): the reason on the fleet page as headless Chromium rendered it
//!   (`--dump-dom`) and in `jitr_runners_waiting{pool,reason}` as the
//!   Prometheus project's parser reads `/metrics`;
//! - a runner failed at each stage (launch, token, boot): its JIT config is
//!   in no console output, log line, page, metric or event jitr produced, and
//!   `jitr logs` prints the console of the one that failed at boot.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jitr_domain::{FailureStage, Market, RunnerEvent};
use jitr_handlers::app::App;
use jitr_handlers::app::policy::RunnerPolicy;
use jitr_handlers::app::webhook::{sample_payload, sign};
use jitr_handlers::runtime::embedded::Embedded;
use jitr_handlers::runtime::serve::{self, Cadence};
use jitr_infra::{
    Compute, EventStore, FaultyGitHub, GitHubFault, SimSettings, SqliteEventStore, system_clock,
};

#[path = "support/aws.rs"]
mod aws;
#[path = "support/browser.rs"]
mod browser;
#[path = "support/owed.rs"]
mod owed;
#[path = "support/prometheus.rs"]
mod prometheus;

const SECRET: &str = "see-why-secret";

/// Every log line of this test process, at debug level.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        lines
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Server {
    url: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    compute: Arc<dyn Compute>,
    github: jitr_infra::SimGitHub,
    stop: tokio::sync::watch::Sender<bool>,
}

/// `serve` on a new data directory with `settings`, `policy` (tweaked), and
/// GitHub's JIT mints secondary-rate-limited when `rate_limited`.
async fn start(
    settings: SimSettings,
    tweak: impl FnOnce(&mut RunnerPolicy),
    rate_limited: bool,
) -> Server {
    captured();
    let dir = tempfile::tempdir().unwrap();
    let mut embedded = Embedded::open(dir.path(), settings, system_clock(), 10).unwrap();
    if rate_limited {
        let faulty = FaultyGitHub::new(embedded.ports.github.clone());
        faulty.inject(GitHubFault::SecondaryLimitedMints { one_in: 1, seed: 7 });
        embedded.ports.github = Arc::new(faulty);
    }
    let mut policy = RunnerPolicy::default();
    policy.deadlines.drain_grace_ms = 500;
    tweak(&mut policy);
    let compute = embedded.ports.compute.clone();
    let github = embedded.github.clone();
    let app = App::new(embedded.ports, policy, SECRET.as_bytes().to_vec());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let cadence = Cadence {
        projector: Duration::from_millis(50),
        sweep: Duration::from_millis(500),
    };
    tokio::spawn(serve::run(app, cadence, listener, stopped));
    Server {
        url,
        dir,
        http: reqwest::Client::new(),
        compute,
        github,
        stop,
    }
}

impl Server {
    /// Posts a signed `workflow_job` webhook for `acme/widgets` job `job`
    /// with `labels`.
    async fn job(&self, action: &str, job: u64, labels: &[&str]) {
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        let body = sample_payload(action, "acme", "widgets", job, &labels, None);
        let status = self
            .http
            .post(format!("{}/webhook", self.url))
            .header("X-GitHub-Event", "workflow_job")
            .header("X-GitHub-Delivery", format!("{action}-{job}"))
            .header(
                "X-Hub-Signature-256",
                sign(SECRET.as_bytes(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{action} {job}: {status}");
    }

    async fn get(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the fleet page says `text`.
    async fn page_says(&self, text: &str) -> String {
        let started = Instant::now();
        loop {
            let page = self.get("/").await;
            if page.contains(text) {
                return page;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the page never said {text:?}:\n{page}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn store(&self) -> SqliteEventStore {
        SqliteEventStore::open(self.dir.path().join("events.db")).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

const LINUX: &[&str] = &["self-hosted", "linux"];

/// The waiting rows of the page as Chromium rendered it: (reason kind, text).
fn waiting_rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr class=\"waiting\" data-reason=\"")
        .skip(1)
        .map(|row| {
            let kind = row.split('"').next().unwrap().to_owned();
            let text = row
                .split("<td>")
                .find(|cell| cell.starts_with("waiting: "))
                .map(|cell| cell.split("</td>").next().unwrap().to_owned())
                .unwrap_or_default();
            (kind, text)
        })
        .collect()
}

/// `jitr_runners_waiting{pool, reason}` as parsed from `/metrics`.
async fn waiting_metric(server: &Server, pool: &str, reason: &str) -> f64 {
    let families = prometheus::parse(&server.get("/metrics").await);
    families
        .get("jitr_runners_waiting")
        .map(|f| {
            assert_eq!(f.kind, "gauge");
            f.samples
                .iter()
                .filter(|(_, labels, _)| {
                    labels.get("pool").map(String::as_str) == Some(pool)
                        && labels.get("reason").map(String::as_str) == Some(reason)
                })
                .map(|(_, _, v)| *v)
                .sum()
        })
        .unwrap_or(0.0)
}

/// Checks one reason end to end: the page's DOM in Chromium has a waiting
/// row of `kind` saying `says`, the runners table shows `waiting: …`, and
/// `/metrics` counts `count` for (`pool`, `kind`).
async fn check_reason(server: &Server, kind: &str, says: &str, pool: &str, count: f64) {
    server.page_says(says).await;
    let dom = browser::browse(&format!("{}/", server.url), "--dump-dom");
    let rows = waiting_rows(&dom);
    assert!(
        rows.iter()
            .any(|(k, text)| k == kind && text.contains(says)),
        "no {kind} row saying {says:?} in {rows:?}"
    );
    assert_eq!(waiting_metric(server, pool, kind).await, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_the_quota_says_which_market_is_full() {
    // 4 on-demand vCPUs, no spot, both configured: one 4-vCPU runner fits.
    let server = start(
        SimSettings {
            on_demand_vcpus: 4,
            spot_vcpus: 0,
            ..SimSettings::default()
        },
        |p| p.quotas = vec![(Market::OnDemand, 4), (Market::Spot, 0)],
        false,
    )
    .await;
    server.job("queued", 1, LINUX).await;
    server.job("queued", 2, LINUX).await;
    server.job("queued", 3, LINUX).await;
    check_reason(
        &server,
        "quota",
        "waiting: quota full (spot 0/0, on-demand 4/4)",
        "default",
        2.0,
    )
    .await;
    // The runners table says it too.
    let page = server.get("/").await;
    assert!(
        page.contains("<td>default</td><td>waiting: quota full (spot 0/0, on-demand 4/4)</td>"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_pool_serves_waits_until_it_leaves_the_queue() {
    let server = start(SimSettings::default(), |_| {}, false).await;
    server.job("queued", 7, &["self-hosted", "gpu"]).await;
    check_reason(
        &server,
        "no-pool",
        "waiting: no pool serves labels [self-hosted, gpu]",
        "-",
        1.0,
    )
    .await;
    // Cancelled: it left the queue, and waits no more.
    server.job("completed", 7, &["self-hosted", "gpu"]).await;
    server.page_says("Nothing waits.").await;
    assert_eq!(waiting_metric(&server, "-", "no-pool").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_capacity_of_any_type_says_so() {
    let server = start(
        SimSettings {
            type_capacity: [("c5.xlarge".to_owned(), 0)].into(),
            ..SimSettings::default()
        },
        |_| {},
        false,
    )
    .await;
    server.job("queued", 1, LINUX).await;
    check_reason(
        &server,
        "capacity",
        "waiting: no capacity (spot, on-demand: InsufficientInstanceCapacity on every type)",
        "default",
        1.0,
    )
    .await;
    // The audit, from the log alone, gives the refusal its log records.
    let audit = std::process::Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(["audit", "--data-dir"])
        .arg(server.dir.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&audit.stdout);
    assert!(
        printed.contains("1 waiting: capacity: InsufficientInstanceCapacity on on-demand"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_held_back_by_githubs_rate_limit_says_so() {
    let server = start(SimSettings::default(), |_| {}, true).await;
    server.job("queued", 1, LINUX).await;
    check_reason(
        &server,
        "rate-limit",
        "waiting: rate-limited by GitHub (the JIT config; until ",
        "default",
        1.0,
    )
    .await;
}

/// Everything jitr wrote or answered about `server`'s runners: the log's
/// events, every page, `/metrics`, each instance's console.
async fn everything_jitr_produced(server: &Server) -> String {
    let mut all = String::new();
    let events = server.store().read_all(0, 100_000).await.unwrap();
    for record in &events {
        all.push_str(&serde_json::to_string(&record.event).unwrap());
        all.push('\n');
    }
    all.push_str(&server.get("/").await);
    all.push_str(&server.get("/metrics").await);
    let streams: std::collections::BTreeSet<_> = events.iter().map(|r| r.stream.clone()).collect();
    for stream in streams {
        all.push_str(
            &server
                .get(&jitr_handlers::runtime::page::runner_href(stream.as_str()))
                .await,
        );
    }
    for instance in events.iter().filter_map(|r| match &r.event {
        RunnerEvent::Launched { instance_id, .. } => Some(instance_id.clone()),
        _ => None,
    }) {
        if let Some(console) = server.compute.console_output(&instance).await.unwrap() {
            all.push_str(&console.text);
        }
    }
    all
}

/// Waits until the log has a `Failed` of `stage` and, when `terminated`, the
/// runner's `Terminated`.
async fn failed_at(server: &Server, stage: FailureStage, terminated: bool) {
    let started = Instant::now();
    loop {
        let events = server.store().read_all(0, 100_000).await.unwrap();
        let failed = events
            .iter()
            .any(|r| matches!(&r.event, RunnerEvent::Failed { stage: s, .. } if *s == stage));
        let gone = events
            .iter()
            .any(|r| matches!(r.event, RunnerEvent::Terminated { .. }));
        if failed && (gone || !terminated) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no {stage:?} failure: {:?}",
            events.iter().map(|r| r.event.kind()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jit_config_appears_nowhere_for_a_runner_failed_at_each_stage() {
    let fast = SimSettings {
        boot_ms: 200,
        shutdown_ms: 200,
        ..SimSettings::default()
    };
    // Launch: EC2 refuses the image; nothing is minted.
    let launch = start(
        fast.clone(),
        |p| p.pools[0].spec.image = String::new(),
        false,
    )
    .await;
    launch.job("queued", 1, LINUX).await;
    failed_at(&launch, FailureStage::Launch, false).await;
    // Token: the instance runs, GitHub refuses the mint for good.
    let token = start(fast.clone(), |_| {}, false).await;
    token.github.fail_next_mints(&[422]);
    token.job("queued", 2, LINUX).await;
    failed_at(&token, FailureStage::Token, true).await;
    // Boot: minted and handed over, the job never starts.
    let boot = start(fast, |p| p.deadlines.boot_timeout_ms = 2_000, false).await;
    boot.job("queued", 3, LINUX).await;
    failed_at(&boot, FailureStage::Boot, true).await;

    // Only the boot stage's runner had a config minted and handed over.
    let boot_events = boot.store().read_all(0, 100_000).await.unwrap();
    assert!(
        boot_events
            .iter()
            .any(|r| matches!(r.event, RunnerEvent::TokenMinted { .. }))
    );
    let mut produced = String::new();
    for server in [&launch, &token, &boot] {
        produced.push_str(&everything_jitr_produced(server).await);
    }
    // The boot failure's console says what the bootstrap did with its config.
    assert!(
        produced.contains("jitr-bootstrap: JIT config read ("),
        "{produced}"
    );
    let logs = std::process::Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(["logs", "--data-dir"])
        .arg(boot.dir.path())
        .arg("3")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(
        logs.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(
        printed.contains("== acme/widgets#3#1 (failed)"),
        "{printed}"
    );
    assert!(
        printed.contains("jitr-bootstrap: JIT config read ("),
        "{printed}"
    );
    assert!(printed.contains("reboot: Power down"), "{printed}");
    produced.push_str(&printed);
    // The token stage's instance was terminated before it booted.
    let token_logs = std::process::Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(["logs", "--data-dir"])
        .arg(token.dir.path())
        .arg("2")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&token_logs.stdout).into_owned();
    assert!(
        printed.contains("== acme/widgets#2#1 (failed), instance "),
        "{printed}"
    );
    assert!(printed.contains("reboot: Power down"), "{printed}");
    produced.push_str(&printed);
    produced.push_str(&String::from_utf8_lossy(&captured().lock().unwrap()));

    // Every config the simulated GitHub mints starts so (`sim-jit-ID-NAME`).
    assert!(!produced.contains("sim-jit-"), "a JIT config leaked");
}

/// On moto: `jitr logs --aws` finds the runner's instance in the DynamoDB
/// log and prints what EC2's GetConsoleOutput answers for it (moto's canned
/// console); an instance EC2 does not know has none.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitr_logs_prints_get_console_output_of_the_runners_instance_on_moto() {
    let prefix = aws::prefix("logs");
    let init = aws::jitr(&prefix, &["init"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let config = jitr_aws::AwsSettings::emulator(aws::endpoint())
        .load()
        .await;
    let ec2 = jitr_aws::Ec2Compute::new(&config, vec![]);
    let stream = jitr_domain::StreamId::parse("acme/widgets#41#1").unwrap();
    let launched = ec2
        .launch(&jitr_infra::LaunchSpec {
            stream: stream.clone(),
            client_token: jitr_domain::ClientToken::derive(&stream, 1),
            market: Market::OnDemand,
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            image: "ami-03cf127a".into(),
            user_data: None,
            settings: Default::default(),
        })
        .await
        .unwrap();
    let console = ec2
        .console_output(&launched.instance_id)
        .await
        .unwrap()
        .expect("moto has a console for its instance");
    assert_eq!(console.instance_id, launched.instance_id);
    assert!(
        console.text.starts_with("Linux version 2.6.16-xenU"),
        "{}",
        console.text
    );
    let store =
        jitr_aws::DynamoEventStore::new(&config, jitr_aws::AwsNames::new(&prefix).events_table());
    owed::runner_failed_after_launch(
        &store,
        ("acme", "widgets", 41),
        &launched.instance_id.0,
        Some("default"),
        jitr_domain::Timestamp(1_800_000_000_000),
    )
    .await;
    for key in ["acme/widgets#41#1", &launched.instance_id.0, "41"] {
        let out = aws::jitr(&prefix, &["logs", "--aws", key]);
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            printed.starts_with(&format!(
                "== acme/widgets#41#1 (terminating), instance {}\n",
                launched.instance_id
            )),
            "{printed}"
        );
        assert!(printed.contains("Linux version 2.6.16-xenU"), "{printed}");
        assert!(
            printed.contains("Kernel command line: root=/dev/sda1"),
            "{printed}"
        );
    }
    // --tail keeps the last lines; an unknown runner exits 2.
    let tail = aws::jitr(&prefix, &["logs", "--aws", "--tail", "1", "41"]);
    assert_eq!(
        String::from_utf8_lossy(&tail.stdout),
        format!(
            "== acme/widgets#41#1 (terminating), instance {}\nEnabling fast FPU save and restore... done.\n",
            launched.instance_id
        )
    );
    let unknown = aws::jitr(&prefix, &["logs", "--aws", "acme/widgets#99#1"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_eq!(
        ec2.console_output(&jitr_domain::InstanceId("i-0000000000000dead".into()))
            .await
            .unwrap(),
        None
    );
}
