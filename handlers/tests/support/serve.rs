//! `jitr serve` on the embedded default as a process, and the test playing
//! GitHub against it: signed webhooks, and a ready runner given its job.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jitr_domain::{RunnerStatus, StreamId};
use jitr_handlers::app::webhook::{sample_payload, sign};
use jitr_infra::{EventStore, SqliteEventStore};

/// A loopback port nobody listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `jitr serve --data-dir dir --listen 127.0.0.1:port --webhook-secret secret`
/// with `args` after.
pub fn serve(dir: &std::path::Path, port: u16, secret: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--webhook-secret",
            secret,
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jitr serve")
}

/// Waits for `GET /healthz` to answer.
pub async fn wait_until_up(http: &reqwest::Client, url: &str) {
    let started = Instant::now();
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "serve not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts a signed `workflow_job` webhook for `acme/widgets` job `job`;
/// asserts it was accepted.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    action: &str,
    job: u64,
    runner: Option<&str>,
) {
    let labels = vec!["self-hosted".to_string(), "linux".to_string()];
    let body = sample_payload(action, "acme", "widgets", job, &labels, runner);
    let status = http
        .post(format!("{url}/webhook"))
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", format!("{action}-{job}"))
        .header(
            "X-Hub-Signature-256",
            sign(secret.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("webhook delivered")
        .status();
    assert_eq!(status.as_u16(), 202, "{action} {job}");
}

/// The runners (attempts 1 and 2) of job `job`.
pub async fn runners(store: &SqliteEventStore, job: u64) -> Vec<jitr_infra::StreamHead> {
    let mut heads = Vec::new();
    for attempt in 1..=2 {
        let stream = StreamId::parse(&format!("acme/widgets#{job}#{attempt}")).unwrap();
        if let Some(head) = store.head(&stream).await.unwrap() {
            heads.push(head);
        }
    }
    heads
}

/// One job as GitHub sees it.
#[derive(Default)]
pub struct Job {
    started: Option<Instant>,
    /// Its `completed` webhook was sent.
    pub completed: bool,
}

/// Plays GitHub for one pass: a ready runner gets its job; a job that ran for
/// `runs` completes. Returns how many jobs completed so far.
pub async fn github_pass(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    store: &SqliteEventStore,
    jobs: &mut BTreeMap<u64, Job>,
    runs: Duration,
) -> usize {
    for (id, job) in jobs.iter_mut() {
        if job.completed {
            continue;
        }
        let heads = runners(store, *id).await;
        let ready = heads
            .iter()
            .find(|h| matches!(h.status, RunnerStatus::Ready | RunnerStatus::Running));
        let Some(runner) = ready.and_then(|h| h.state.runner_name.clone()) else {
            continue;
        };
        match job.started {
            None => {
                post(http, url, secret, "in_progress", *id, Some(&runner)).await;
                job.started = Some(Instant::now());
            }
            Some(at) if at.elapsed() >= runs => {
                post(http, url, secret, "completed", *id, Some(&runner)).await;
                job.completed = true;
            }
            Some(_) => {}
        }
    }
    jobs.values().filter(|j| j.completed).count()
}

/// Whether every runner of jobs `1..=jobs` is closed.
pub async fn all_closed(store: &SqliteEventStore, jobs: u64) -> usize {
    let mut closed = 0;
    for job in 1..=jobs {
        let heads = runners(store, job).await;
        closed += usize::from(!heads.is_empty() && heads.iter().all(|h| h.status.is_terminal()));
    }
    closed
}

/// Asks `serve` to stop as an operator does (SIGTERM).
pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `jitr audit --json --live` over `dir`: its exit code and its report.
pub fn audit_live(dir: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let audit = Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(["audit", "--json", "--live", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&audit.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&audit.stdout),
            String::from_utf8_lossy(&audit.stderr)
        )
    });
    (audit.status.code(), report)
}
