//! Issue 12 on `jitr serve` (the embedded default) as a process: a burst of
//! jobs larger than the simulated quota, the process killed with SIGKILL in
//! the middle and started again on the same data directory. Every job is
//! served afterwards, no runner is failed or dead-lettered, and
//! `jitr audit --live` finds the cloud running exactly what the log says.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use jitr_domain::{RunnerEvent, RunnerStatus};
use jitr_infra::{EventStore, Queue, SqliteEventStore};

#[path = "support/serve.rs"]
mod support;
use support::{Job, free_port, runners, sigterm, wait_until_up};

const SECRET: &str = "restart-secret";
const JOBS: u64 = 40;

/// `jitr serve` on `dir`: 40 on-demand and 16 spot vCPUs (fourteen 4-vCPU
/// runners at once, the measured setting), a one-second boot, the
/// reaper every 5 s.
fn serve(dir: &std::path::Path, port: u16) -> Child {
    support::serve(
        dir,
        port,
        SECRET,
        &[
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
        ],
    )
}

async fn github_pass(
    http: &reqwest::Client,
    url: &str,
    store: &SqliteEventStore,
    jobs: &mut BTreeMap<u64, Job>,
) -> usize {
    support::github_pass(http, url, SECRET, store, jobs, Duration::from_secs(2)).await
}

async fn post(http: &reqwest::Client, url: &str, action: &str, job: u64, runner: Option<&str>) {
    support::post(http, url, SECRET, action, job, runner).await
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
        let closed = support::all_closed(&store, JOBS).await;
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
