//! Issue 23 on `jitr serve` (the embedded default) as a process: jobs 1 and 2
//! queued and both runners ready; GitHub gives job 2 to the runner launched for
//! job 1; job 1 is cancelled while queued. Job 2's runner keeps running — past
//! its boot deadline — until job 2 completes, then closes; the spare runner is
//! retired deregister-first; nothing leaks and nothing is owed.

use std::time::{Duration, Instant};

use jitr_domain::{FailureStage, RunnerStatus, StreamId};
use jitr_infra::{EventStore, SimGitHub, SqliteEventStore};

#[path = "support/serve.rs"]
mod support;
use support::{free_port, post, sigterm, wait_until_up};

const SECRET: &str = "cancel-secret";

async fn head(store: &SqliteEventStore, job: u64) -> Option<jitr_infra::StreamHead> {
    let stream = StreamId::parse(&format!("acme/widgets#{job}#1")).unwrap();
    store.head(&stream).await.unwrap()
}

/// Waits (up to 30 s) until `check` holds for job `job`'s runner.
async fn wait_for(
    store: &SqliteEventStore,
    job: u64,
    what: &str,
    check: impl Fn(&jitr_infra::StreamHead) -> bool,
) -> jitr_infra::StreamHead {
    let started = Instant::now();
    loop {
        if let Some(h) = head(store, job).await.filter(|h| check(h)) {
            return h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "job {job}'s runner never {what}: {:?}",
            head(store, job).await.map(|h| h.status)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_jobs_runner_running_another_job_is_never_terminated_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = support::serve(
        dir.path(),
        port,
        SECRET,
        &[
            "--sim-boot",
            "1s",
            "--boot-timeout",
            "6s",
            "--drain-grace",
            "1s",
            "--retire-grace",
            "2s",
            "--sweep-interval",
            "1s",
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until_up(&http, &url).await;
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    // GitHub's side: the stand-in serve registers runners in.
    let github = SimGitHub::open(dir.path().join("cloud.db")).unwrap();

    post(&http, &url, SECRET, "queued", 1, None).await;
    post(&http, &url, SECRET, "queued", 2, None).await;
    let ready = |h: &jitr_infra::StreamHead| h.status == RunnerStatus::Ready;
    let runner_1 = wait_for(&store, 1, "got ready", ready).await;
    let runner_1 = runner_1.state.runner_name.unwrap();
    let runner_2 = wait_for(&store, 2, "got ready", ready).await;
    let runner_2 = runner_2.state.runner_name.unwrap();

    // GitHub gives job 2 to the runner launched for job 1…
    github
        .set_job_status("acme", "widgets", 2, "in_progress", Some(&runner_1))
        .unwrap();
    post(&http, &url, SECRET, "in_progress", 2, Some(&runner_1)).await;
    wait_for(&store, 1, "ran job 2", |h| {
        h.status == RunnerStatus::Running
            && h.state.assigned_job.as_ref().map(|j| j.job_id) == Some(2)
    })
    .await;
    // …then job 1 is cancelled while queued.
    github
        .set_job_status("acme", "widgets", 1, "completed", None)
        .unwrap();
    post(&http, &url, SECRET, "completed", 1, None).await;

    // The spare runner (launched for job 2) is retired deregister-first.
    let spare = wait_for(&store, 2, "was retired", |h| h.status.is_terminal()).await;
    assert_eq!(spare.status, RunnerStatus::Failed);
    assert_eq!(
        spare.state.failure.map(|f| f.stage),
        Some(FailureStage::Surplus)
    );
    assert!(!github.is_registered(&runner_2), "deregistered");

    // Job 2 runs past its runner's 6-second boot deadline: it keeps running.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let running = head(&store, 1).await.unwrap();
    assert_eq!(running.status, RunnerStatus::Running, "{:?}", running.state);
    assert!(running.state.termination_requested.is_none());

    // Job 2 completes on it: it drains and closes.
    github
        .set_job_status("acme", "widgets", 2, "completed", Some(&runner_1))
        .unwrap();
    post(&http, &url, SECRET, "completed", 2, Some(&runner_1)).await;
    let closed = wait_for(&store, 1, "closed", |h| h.status.is_terminal()).await;
    assert_eq!(closed.status, RunnerStatus::Completed);

    sigterm(&child);
    child.wait().unwrap();
    // Nothing owed, nothing leaked, no job killed.
    let (code, report) = support::audit_live(dir.path());
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["jobs"]["killed_by_jitr"], 0, "{report:#}");
    assert_eq!(report["jobs"]["served_by_other_runner"], 1, "{report:#}");
    assert_eq!(report["jobs"]["cancelled_queued"], 1, "{report:#}");
    assert_eq!(report["jobs"]["surplus_retired"], 1, "{report:#}");
}
