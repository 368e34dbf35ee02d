//! Issue 26 on `jitr serve` (the embedded default) as a process, with a pool
//! keeping two runners warm (`min_idle = 2`): with no webhook sent, two
//! runners launch and register, idle. A queued job is taken by one of them;
//! the pool is back at two idle within a boot time (the job's own runner, now
//! spare, is one). Restarted with `min_idle = 0`, the idle runners are retired
//! deregister-first and the busy one keeps its job.

use std::time::{Duration, Instant};

use jitr_domain::{FailureStage, RunnerStatus};
use jitr_infra::{EventStore, SimGitHub, SqliteEventStore, StreamHead};

#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/serve.rs"]
mod support;
use prometheus::parse;
use support::{free_port, post, sigterm, wait_until_up};

const SECRET: &str = "warm-secret";

fn pool_file(dir: &std::path::Path, min_idle: u32) -> std::path::PathBuf {
    let file = dir.join(format!("pools-{min_idle}.toml"));
    std::fs::write(
        &file,
        format!(
            "[[pool]]\nname = \"linux\"\nlabels = [\"linux\", \"x64\"]\n\
             instance_types = [\"c5.xlarge\"]\nvcpus = 4\nimage = \"ami-0123456789abcdef0\"\n\
             warm_for = \"acme/widgets\"\nmin_idle = {min_idle}\n"
        ),
    )
    .unwrap();
    file
}

fn start(dir: &std::path::Path, port: u16, min_idle: u32) -> std::process::Child {
    let config = pool_file(dir, min_idle);
    support::serve(
        dir,
        port,
        SECRET,
        &[
            "--config",
            config.to_str().unwrap(),
            "--sim-boot",
            "1s",
            "--retire-grace",
            "2s",
            "--sweep-interval",
            "1s",
        ],
    )
}

/// Waits (up to 30 s) until the open runners satisfy `check`.
async fn wait_for(
    store: &SqliteEventStore,
    what: &str,
    check: impl Fn(&[StreamHead]) -> bool,
) -> Vec<StreamHead> {
    let started = Instant::now();
    loop {
        let open = store.open_streams().await.unwrap().heads;
        if check(&open) {
            return open;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never {what}: {:?}",
            open.iter()
                .map(|h| (h.stream.to_string(), h.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The body of a GET of `url`.
async fn body(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// `/metrics`, and its families as the Prometheus project's parser reads them.
async fn metrics(
    http: &reqwest::Client,
    url: &str,
) -> (
    String,
    std::collections::BTreeMap<String, prometheus::Family>,
) {
    let text = body(http, &format!("{url}/metrics")).await;
    let families = parse(&text);
    (text, families)
}

fn idle(open: &[StreamHead]) -> Vec<&StreamHead> {
    open.iter()
        .filter(|h| h.status == RunnerStatus::Ready && !h.state.took_job())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_serves_a_job_at_once_and_keeps_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port, 2);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until_up(&http, &url).await;
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let github = SimGitHub::open(dir.path().join("cloud.db")).unwrap();

    // No webhook: two warm runners, registered and idle.
    let open = wait_for(&store, "two warm runners idle", |open| {
        idle(open).len() == 2 && open.iter().all(|h| h.state.is_warm())
    })
    .await;
    // `/metrics` (parsed as Prometheus text): the floor and the runners asked.
    let (text, families) = metrics(&http, &url).await;
    let sample = |family: &str| {
        families[family]
            .samples
            .iter()
            .find(|(_, labels, _)| labels.get("pool").map(String::as_str) == Some("linux"))
            .map(|(_, _, value)| *value)
    };
    assert_eq!(families["jitr_warm_floor"].kind, "gauge");
    assert_eq!(sample("jitr_warm_floor"), Some(2.0), "{text}");
    assert_eq!(sample("jitr_warm_runners_asked"), Some(2.0), "{text}");
    let names: Vec<String> = open
        .iter()
        .map(|h| h.state.runner_name.clone().unwrap())
        .collect();
    assert!(names.iter().all(|n| github.is_registered(n)));

    // A queued job, taken by a warm runner at once.
    post(&http, &url, SECRET, "queued", 1, None).await;
    github
        .set_job_status("acme", "widgets", 1, "in_progress", Some(&names[0]))
        .unwrap();
    post(&http, &url, SECRET, "in_progress", 1, Some(&names[0])).await;
    let busy = wait_for(&store, "the warm runner running job 1", |open| {
        open.iter().any(|h| {
            h.state.runner_name.as_deref() == Some(&names[0]) && h.status == RunnerStatus::Running
        })
    })
    .await;
    let taker = busy
        .iter()
        .find(|h| h.state.runner_name.as_deref() == Some(&names[0]))
        .unwrap()
        .stream
        .clone();
    // `/metrics`: one warm hit, and the job's wait for a runner observed.
    let (text, families) = metrics(&http, &url).await;
    let linux = |family: &str, sample: &str| {
        families
            .get(family)
            .unwrap_or_else(|| panic!("{family} in {:?}", families.keys()))
            .samples
            .iter()
            .find(|(name, labels, _)| {
                name == sample && labels.get("pool").map(String::as_str) == Some("linux")
            })
            .map(|(_, _, value)| *value)
    };
    assert_eq!(
        linux("jitr_warm_hits", "jitr_warm_hits_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(families["jitr_job_start_wait_seconds"].kind, "histogram");
    assert_eq!(
        linux(
            "jitr_job_start_wait_seconds",
            "jitr_job_start_wait_seconds_count"
        ),
        Some(1.0),
        "{text}"
    );
    let waited = linux(
        "jitr_job_start_wait_seconds",
        "jitr_job_start_wait_seconds_sum",
    )
    .unwrap();
    assert!(waited <= 5.0, "no boot: {waited} s");
    assert!(
        linux(
            "jitr_idle_runner_seconds_before_job",
            "jitr_idle_runner_seconds_before_job_total"
        )
        .is_some()
    );
    // The fleet page: the pool's job starts, one of them a warm hit.
    let page = body(&http, &format!("{url}/")).await;
    let starts = &page[page
        .find("<table id=\"starts\">")
        .expect("the job starts table")..];
    let row = &starts[starts.find("<tr><td>linux</td>").expect("linux's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    let cells: Vec<&str> = row
        .split("<td")
        .skip(1)
        .map(|c| c[c.find('>').unwrap() + 1..c.find("</td>").unwrap()].trim())
        .collect();
    assert_eq!(cells[1], "1", "one job started: {row}");
    assert_eq!(cells[4], "1", "a warm hit: {row}");
    assert!(cells[2].ends_with(" s") && cells[2] != "—", "{row}");
    // Back at two idle within a boot time: the other warm runner and the
    // job's own, spare now.
    wait_for(&store, "two idle again", |open| idle(open).len() == 2).await;
    sigterm(&child);
    child.wait().unwrap();

    // The floor lowered to 0: the idle runners retire, deregistered first.
    child = start(dir.path(), port, 0);
    wait_until_up(&http, &url).await;
    let open = wait_for(&store, "the idle runners retired and closed", |open| {
        open.len() == 1
    })
    .await;
    assert_eq!(open[0].stream, taker);
    assert_eq!(open[0].status, RunnerStatus::Running);
    assert!(!github.is_registered(&names[1]), "deregistered first");
    let retired = store
        .read_all(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            matches!(
                &r.event,
                jitr_domain::RunnerEvent::Failed {
                    stage: FailureStage::Surplus,
                    ..
                }
            )
        })
        .count();
    assert_eq!(retired, 2);
    sigterm(&child);
    child.wait().unwrap();

    // The audit: one job, taken by a warm runner; nothing owed or leaked.
    let (code, report) = support::audit_live(dir.path());
    assert_eq!(code, Some(0), "{report:#}");
    let jobs = &report["jobs"];
    assert_eq!(jobs["jobs"], 1, "job 0 is no job: {report:#}");
    assert_eq!(jobs["warm_hits"], 1, "{report:#}");
    assert_eq!(jobs["warm_runners"], 2, "{report:#}");
    assert_eq!(jobs["killed_by_jitr"], 0, "{report:#}");
    assert_eq!(jobs["surplus_retired"], 2, "{report:#}");
    // The audit reports the runners' idle time before their jobs (here under
    // a second: the job was posted as soon as the runners were idle).
    assert!(
        jobs["idle_before_job_runner_minutes"]
            .as_f64()
            .is_some_and(|m| m < 1.0),
        "{report:#}"
    );
    // The job started on a warm runner as soon as GitHub gave it: no boot.
    let wait = &jobs["queued_to_started_ms"]["linux"];
    assert_eq!(wait["count"], 1, "{report:#}");
    assert!(wait["p50"].as_u64().unwrap() <= 5_000, "{report:#}");
}
