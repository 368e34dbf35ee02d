//! `GET /metrics` of a running `jitr serve`, after a few jobs, parsed by the
//! Prometheus project's own parser of its text format, OpenMetrics 1.0
//! (`prometheus_client.openmetrics.parser`, PyPI; `.ci/run` installs it and names its Python in `JITR_TEST_PYTHON`):
//! the families exist with their types, and their counts are the log's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jitr_domain::{Market, RunnerEvent};
use jitr_infra::{EventStore, SqliteEventStore};

#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/serve.rs"]
mod support;
use prometheus::{Family, parse};
use support::{Job, free_port, sigterm, wait_until_up};

const SECRET: &str = "metrics-secret";
const JOBS: u64 = 6;

/// The sum of `family`'s samples named `sample` whose labels include `with`.
fn sum(
    families: &BTreeMap<String, Family>,
    family: &str,
    sample: &str,
    with: &[(&str, &str)],
) -> f64 {
    families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"))
        .samples
        .iter()
        .filter(|(name, labels, _)| {
            name == sample
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_count_what_the_log_says() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "[on-demand]\n\"c5.xlarge\" = 0.17\n[spot]\n\"c5.xlarge\" = 0.068\n",
    )
    .unwrap();
    let hourly = |market: &str| if market == "spot" { 0.068 } else { 0.17 };
    // 8 on-demand and 8 spot vCPUs: four 4-vCPU runners at once, so the
    // quota refuses some launches and jobs wait.
    let mut child = support::serve(
        dir.path(),
        port,
        SECRET,
        &[
            "--on-demand-vcpus",
            "8",
            "--spot-vcpus",
            "8",
            "--sim-boot",
            "1s",
            "--drain-grace",
            "1s",
            "--sweep-interval",
            "2s",
            "--prices",
            prices.to_str().unwrap(),
        ],
    );
    wait_until_up(&http, &url).await;
    for job in 1..=JOBS {
        support::post(&http, &url, SECRET, "queued", job, None).await;
    }
    // A delivery with a bad signature: refused, and counted.
    let refused = http
        .post(format!("{url}/webhook"))
        .header("X-GitHub-Event", "workflow_job")
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let mut jobs: BTreeMap<u64, Job> = (1..=JOBS).map(|j| (j, Job::default())).collect();
    let started = Instant::now();
    loop {
        let done = support::github_pass(
            &http,
            &url,
            SECRET,
            &store,
            &mut jobs,
            Duration::from_millis(500),
        )
        .await;
        if done == JOBS as usize && support::all_closed(&store, JOBS).await == JOBS as usize {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "jobs stalled: {done} done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // What the log says.
    let mut launched: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut terminated: BTreeMap<String, f64> = BTreeMap::new();
    // Instance time by (repository, market): each runner's Launched to its
    // Terminated.
    let mut repository_of = BTreeMap::new();
    let mut launch_of = BTreeMap::new();
    let mut instance_seconds: BTreeMap<(String, String), f64> = BTreeMap::new();
    for record in store.read_all(0, 1_000_000).await.unwrap() {
        match record.event {
            RunnerEvent::Requested { ref job, .. } => {
                repository_of.insert(record.stream.clone(), format!("{}/{}", job.owner, job.repo));
            }
            RunnerEvent::Launched {
                market,
                instance_type,
                at,
                ..
            } => {
                let market = match market {
                    Market::Spot => "spot",
                    Market::OnDemand => "on-demand",
                };
                *launched.entry((market.into(), instance_type)).or_default() += 1.0;
                launch_of.insert(record.stream.clone(), (market, at));
            }
            RunnerEvent::Terminated { evidence, at, .. } => {
                *terminated.entry(evidence.as_str().into()).or_default() += 1.0;
                if let Some((market, launched_at)) = launch_of.get(&record.stream) {
                    *instance_seconds
                        .entry((repository_of[&record.stream].clone(), (*market).into()))
                        .or_default() += at.millis_since(*launched_at) as f64 / 1000.0;
                }
            }
            _ => {}
        }
    }
    assert!(!instance_seconds.is_empty());
    assert!(!launched.is_empty() && !terminated.is_empty());

    // The projector folds the log within its tick: scrape until it shows
    // every runner closed.
    let scraped = Instant::now();
    let (response, families) = loop {
        let response = http.get(format!("{url}/metrics")).send().await.unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let text = response.text().await.unwrap();
        let families = parse(&text);
        if sum(
            &families,
            "jitr_runners",
            "jitr_runners",
            &[("status", "completed")],
        ) == JOBS as f64
        {
            break ((content_type, text), families);
        }
        assert!(scraped.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The fleet page's bars: the same figures by repository.
    let page = http
        .get(format!("{url}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        // Askama writes `/` as an entity.
        .replace("&#x2f;", "/")
        .replace("&#47;", "/");
    sigterm(&child);
    child.wait().unwrap();
    assert!(page.contains("<svg id=\"chart-repositories\""), "{page}");
    let mut by_repository: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for ((repository, market), seconds) in &instance_seconds {
        let line = by_repository.entry(repository).or_default();
        line.0 += seconds / 3600.0;
        line.1 += seconds / 3600.0 * hourly(market);
    }
    for (repository, (hours, usd)) in &by_repository {
        let row = format!(
            "<tr class=\"repository\"><td>{repository}</td><td class=\"n\">{hours:.2}</td><td class=\"n\">{usd:.2}</td></tr>"
        );
        assert!(page.contains(&row), "{row} in\n{page}");
    }
    assert_eq!(
        page.matches("<tr class=\"repository\">").count(),
        by_repository.len()
    );
    let (content_type, text) = response;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );

    for (family, kind) in [
        ("jitr_runners", "gauge"),
        ("jitr_launches", "counter"),
        ("jitr_launch_refusals", "counter"),
        ("jitr_instances_launched", "counter"),
        ("jitr_terminations", "counter"),
        ("jitr_owed_terminations", "gauge"),
        ("jitr_oldest_owed_termination_seconds", "gauge"),
        ("jitr_orphans_reaped", "counter"),
        ("jitr_compensation_latency_seconds", "histogram"),
        ("jitr_queue_messages", "gauge"),
        ("jitr_dead_letters", "gauge"),
        ("jitr_github_requests", "counter"),
        ("jitr_github_rate_limit_remaining", "gauge"),
        ("jitr_skipped_events", "counter"),
        ("jitr_webhooks_refused", "counter"),
        ("jitr_instances", "gauge"),
        ("jitr_vcpus", "gauge"),
        ("jitr_vcpu_quota", "gauge"),
        ("jitr_instance_seconds", "counter"),
        ("jitr_cost_usd", "counter"),
    ] {
        let found = families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family} in\n{text}"));
        assert_eq!(found.kind, kind, "{family}");
    }

    // Counts are the log's.
    for ((market, instance_type), n) in &launched {
        let with = [
            ("market", market.as_str()),
            ("instance_type", instance_type.as_str()),
        ];
        assert_eq!(
            sum(
                &families,
                "jitr_instances_launched",
                "jitr_instances_launched_total",
                &with
            ),
            *n,
            "{market} {instance_type}"
        );
        // This process made every launch: its RunInstances successes are them.
        assert_eq!(
            sum(
                &families,
                "jitr_launches",
                "jitr_launches_total",
                &[with[0], with[1], ("outcome", "ok")]
            ),
            *n
        );
    }
    for (evidence, n) in &terminated {
        assert_eq!(
            sum(
                &families,
                "jitr_terminations",
                "jitr_terminations_total",
                &[("evidence", evidence)]
            ),
            *n,
            "{evidence}"
        );
    }
    // Instance time and its cost: the log's, at the prices serve was given.
    for ((repository, market), seconds) in &instance_seconds {
        let with = [
            ("repository", repository.as_str()),
            ("pool", "default"),
            ("instance_type", "c5.xlarge"),
            ("market", market.as_str()),
        ];
        let found = sum(
            &families,
            "jitr_instance_seconds",
            "jitr_instance_seconds_total",
            &with,
        );
        assert!(
            (found - seconds).abs() < 1e-6,
            "{with:?}: {found} vs {seconds}"
        );
        let usd = sum(&families, "jitr_cost_usd", "jitr_cost_usd_total", &with);
        let want = seconds / 3600.0 * hourly(market);
        assert!((usd - want).abs() < 1e-9, "{with:?}: ${usd} vs ${want}");
    }
    assert_eq!(
        families["jitr_cost_usd"].samples.len(),
        instance_seconds.len(),
        "{text}"
    );
    let runners: f64 = sum(&families, "jitr_runners", "jitr_runners", &[]);
    assert_eq!(runners, JOBS as f64, "one runner per job, all closed");
    assert_eq!(
        sum(
            &families,
            "jitr_runners",
            "jitr_runners",
            &[("pool", "default"), ("status", "completed")]
        ),
        JOBS as f64
    );
    // Refusals: every refused RunInstances has its EC2 code.
    let all_launches = sum(&families, "jitr_launches", "jitr_launches_total", &[]);
    let ok = sum(
        &families,
        "jitr_launches",
        "jitr_launches_total",
        &[("outcome", "ok")],
    );
    let refusals = sum(
        &families,
        "jitr_launch_refusals",
        "jitr_launch_refusals_total",
        &[],
    );
    assert!(refusals > 0.0, "the quota refused some launches:\n{text}");
    assert_eq!(all_launches - ok, refusals);
    // A market whose quota refused a launch has its ceiling learnt: the 8
    // vCPUs jitr held there when EC2 refused.
    let mut learnt = 0;
    for (market, code) in [
        ("on-demand", "VcpuLimitExceeded"),
        ("spot", "MaxSpotInstanceCountExceeded"),
    ] {
        let refused = sum(
            &families,
            "jitr_launch_refusals",
            "jitr_launch_refusals_total",
            &[("code", code)],
        );
        if refused > 0.0 {
            assert_eq!(
                sum(
                    &families,
                    "jitr_vcpu_quota",
                    "jitr_vcpu_quota",
                    &[("market", market), ("source", "learnt")]
                ),
                8.0,
                "{market}:\n{text}"
            );
            learnt += 1;
        }
    }
    assert!(learnt > 0, "a quota refusal taught a ceiling:\n{text}");
    // The shipped alerting rules read samples this scrape has.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/prometheus/alerts.yml"
    ))
    .unwrap();
    let samples: std::collections::BTreeSet<&str> = families
        .values()
        .flat_map(|f| f.samples.iter().map(|(name, _, _)| name.as_str()))
        .collect();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("jitr_") {
            assert!(samples.contains(word), "alerts.yml reads {word}:\n{text}");
        }
    }
    // Jobs waited for capacity; with every one served, none waits now: no
    // (pool, reason) of jitr_runners_waiting counts one (a family without
    // series is not written at all).
    assert!(
        families
            .get("jitr_runners_waiting")
            .is_none_or(|f| f.samples.iter().all(|(_, _, v)| *v == 0.0)),
        "jitr_runners_waiting:\n{text}"
    );
    let family = "jitr_oldest_wait_seconds";
    assert!(
        families[family]
            .samples
            .iter()
            .any(|(_, labels, _)| labels.get("pool").map(String::as_str) == Some("default")),
        "{family} has pool default:\n{text}"
    );
    assert_eq!(
        sum(&families, family, family, &[("pool", "default")]),
        0.0,
        "{family}:\n{text}"
    );
    assert_eq!(
        sum(
            &families,
            "jitr_webhooks_refused",
            "jitr_webhooks_refused_total",
            &[("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &families,
            "jitr_owed_terminations",
            "jitr_owed_terminations",
            &[]
        ),
        0.0
    );
    for queue in ["scaleup", "lifecycle", "compensation", "ec2-events"] {
        assert_eq!(
            sum(
                &families,
                "jitr_dead_letters",
                "jitr_dead_letters",
                &[("queue", queue)]
            ),
            0.0,
            "{queue}"
        );
        assert!(
            families["jitr_queue_messages"]
                .samples
                .iter()
                .any(|(_, labels, _)| labels.get("queue").map(String::as_str) == Some(queue)),
            "{queue} depth"
        );
    }
}
