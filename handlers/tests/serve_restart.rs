//! Issue 12 on `jitr serve` (the embedded default) as a process: a burst of
//! jobs larger than the simulated quota, the process killed with SIGKILL in
//! the middle and started again on the same data directory. Every job is
//! served afterwards, no runner is failed or dead-lettered, and
//! `jitr audit --live` finds the cloud running exactly what the log says.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jitr_domain::{RunnerEvent, RunnerStatus, StreamId};
use jitr_handlers::app::webhook::{sample_payload, sign};
use jitr_infra::{EventStore, Queue, SqliteEventStore};

const SECRET: &str = "restart-secret";
const JOBS: u64 = 40;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `jitr serve` on `dir`: 40 on-demand and 16 spot vCPUs (fourteen 4-vCPU
/// runners at once, the measured setting), a one-second boot, the
/// reaper every 5 s.
fn serve(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--webhook-secret",
            SECRET,
            "--on-demand-vcpus",
            "40",
            "--spot-vcpus",
            "16",
            "--sim-boot",
            "1s",
            "--drain-grace",
            "1s",
            "--sweep-interval",
            "5s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jitr serve")
}

async fn wait_until_up(http: &reqwest::Client, url: &str) {
    let started = Instant::now();
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "serve not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(http: &reqwest::Client, url: &str, action: &str, job: u64, runner: Option<&str>) {
    let labels = vec!["self-hosted".to_string(), "linux".to_string()];
    let body = sample_payload(action, "acme", "widgets", job, &labels, runner);
    let status = http
        .post(format!("{url}/webhook"))
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", format!("{action}-{job}"))
        .header(
            "X-Hub-Signature-256",
            sign(SECRET.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("webhook delivered")
        .status();
    assert_eq!(status.as_u16(), 202, "{action} {job}");
}

/// Each job's runners, by attempt.
async fn runners(store: &SqliteEventStore, job: u64) -> Vec<jitr_infra::StreamHead> {
    let mut heads = Vec::new();
    for attempt in 1..=2 {
        let stream = StreamId::parse(&format!("acme/widgets#{job}#{attempt}")).unwrap();
        if let Some(head) = store.head(&stream).await.unwrap() {
            heads.push(head);
        }
    }
    heads
}

#[derive(Default)]
struct Job {
    started: Option<Instant>,
    completed: bool,
}

/// Plays GitHub for one pass: a ready runner gets its job; a job that ran for
/// two seconds completes. Returns how many jobs completed so far.
async fn github_pass(
    http: &reqwest::Client,
    url: &str,
    store: &SqliteEventStore,
    jobs: &mut BTreeMap<u64, Job>,
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
                post(http, url, "in_progress", *id, Some(&runner)).await;
                job.started = Some(Instant::now());
            }
            Some(at) if at.elapsed() >= Duration::from_secs(2) => {
                post(http, url, "completed", *id, Some(&runner)).await;
                job.completed = true;
            }
            Some(_) => {}
        }
    }
    jobs.values().filter(|j| j.completed).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_survives_kill_9_and_every_job_is_served_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut child = serve(dir.path(), port);
    wait_until_up(&http, &url).await;
    for job in 1..=JOBS {
        post(&http, &url, "queued", job, None).await;
    }
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let mut jobs: BTreeMap<u64, Job> = (1..=JOBS).map(|j| (j, Job::default())).collect();

    // Mid-burst: a third of the jobs done, the rest running or waiting.
    let started = Instant::now();
    let mut waiting_at_kill = 0;
    loop {
        let done = github_pass(&http, &url, &store, &mut jobs).await;
        if done >= JOBS as usize / 3 {
            for job in 1..=JOBS {
                waiting_at_kill += runners(&store, job)
                    .await
                    .iter()
                    .filter(|h| h.status == RunnerStatus::Requested)
                    .count();
            }
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "burst stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(waiting_at_kill > 0, "runners wait for capacity at the kill");
    eprintln!(
        "killed at {:.1} s: {} jobs done, {waiting_at_kill} runners waiting for capacity",
        started.elapsed().as_secs_f64(),
        jobs.values().filter(|j| j.completed).count()
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let mut child = serve(dir.path(), port);
    wait_until_up(&http, &url).await;
    let restarted = Instant::now();
    loop {
        let done = github_pass(&http, &url, &store, &mut jobs).await;
        let mut closed = 0;
        for job in 1..=JOBS {
            let heads = runners(&store, job).await;
            closed +=
                usize::from(!heads.is_empty() && heads.iter().all(|h| h.status.is_terminal()));
        }
        if done == JOBS as usize && closed == JOBS as usize {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(180),
            "after the restart: {done} jobs done, {closed} runners closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "after the restart: every job served and every runner closed in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    sigterm(&child);
    child.wait().unwrap();

    // No runner failed, one runner per job, nothing dead-lettered.
    let mut failed = Vec::new();
    let mut per_job: BTreeMap<u64, usize> = BTreeMap::new();
    for record in store.read_all(0, 1_000_000).await.unwrap() {
        match record.event {
            RunnerEvent::Failed { reason, .. } => failed.push((record.stream, reason)),
            RunnerEvent::Requested { .. } => {
                *per_job.entry(record.stream.job_id()).or_default() += 1
            }
            _ => {}
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    assert!(per_job.values().all(|n| *n == 1), "{per_job:?}");
    for name in ["scaleup", "lifecycle", "compensation", "ec2-events"] {
        let queue = jitr_infra::LocalQueue::open(
            dir.path().join("queues.db"),
            name,
            10,
            Duration::from_secs(60),
            jitr_infra::system_clock(),
        )
        .unwrap();
        assert_eq!(queue.dead_letter_depth().await.unwrap(), 0, "{name}");
    }

    // The audit against the simulated cloud: clean.
    let audit = Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(["audit", "--live", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(
        out.contains("live check: the cloud runs exactly what the log says"),
        "{out}"
    );
}

/// Asks `serve` to stop as an operator does (SIGTERM).
fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
