//! The fleet page and a runner's timeline page of a running `jitr serve`,
//! loaded in a real browser: headless Chromium (Debian's package; `.ci/run`
//! installs it, `JITR_TEST_CHROMIUM` may name another); the pages carry no
//! script and forbid any (Content-Security-Policy), so they work with scripts off.
//! Asserted on the DOM it rendered (`--dump-dom`); screenshots are saved
//! under the target directory (`screenshots/`) as CI artifacts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jitr_domain::{StreamId, Timestamp};
use jitr_infra::{LocalQueue, Queue, SqliteEventStore};

#[path = "support/serve.rs"]
mod support;
use support::Job;
#[path = "support/browser.rs"]
mod browser;
#[path = "support/owed.rs"]
mod owed;
use browser::{browse, screenshots};

const SECRET: &str = "page-secret";

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

/// A runner whose instance was launched a moment ago and whose token mint
/// failed: it is owed a termination, and EC2's NotFound for its instance
/// proves nothing for two minutes, so it stays owed while the test looks.
async fn owed_runner(store: &SqliteEventStore) -> StreamId {
    owed::runner_failed_after_launch(
        store,
        ("acme", "gadgets", 900),
        "i-0owed",
        Some("default"),
        now(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_and_a_timeline_render_in_a_browser_without_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let owed = owed_runner(&store).await;
    // A poison message in the scale-up dead-letter queue.
    let scaleup = LocalQueue::open(
        dir.path().join("queues.db"),
        "scaleup",
        5,
        Duration::from_secs(60),
        jitr_infra::system_clock(),
    )
    .unwrap();
    scaleup.publish("not json", None, &[]).await.unwrap();
    let poison = scaleup.receive(1, Duration::ZERO).await.unwrap();
    scaleup
        .dead_letter(&poison[0], "malformed workflow_job message <b>not json</b>")
        .await
        .unwrap();

    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // The on-demand quota is configured; spot's is left to be learnt.
    let pools = dir.path().join("pools.toml");
    std::fs::write(
        &pools,
        "[[pool]]\nname = \"default\"\nlabels = [\"linux\"]\n\
         instance_types = [\"c5.xlarge\"]\nvcpus = 4\nimage = \"ami-jitr-runner\"\n\n\
         [quotas]\non_demand_vcpus = 64\n",
    )
    .unwrap();
    let mut serve = support::serve(
        dir.path(),
        port,
        SECRET,
        &["--sim-boot", "1s", "--config", pools.to_str().unwrap()],
    );
    support::wait_until_up(&http, &url).await;
    for job in 1..=3 {
        support::post(&http, &url, SECRET, "queued", job, None).await;
    }
    // GitHub gives jobs 1–3 to their runners; none completes while we look.
    let mut jobs: BTreeMap<u64, Job> = (1..=3).map(|j| (j, Job::default())).collect();
    let started = Instant::now();
    loop {
        support::github_pass(
            &http,
            &url,
            SECRET,
            &store,
            &mut jobs,
            Duration::from_secs(3600),
        )
        .await;
        let page = http
            .get(format!("{url}/?status=running"))
            .send()
            .await
            .unwrap();
        let text = page.text().await.unwrap();
        if text.matches("class=\"runner\"").count() == 3 && text.contains(&owed.to_string()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let page = http.get(format!("{url}/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'none'") || csp.starts_with("default-src 'none'"),
        "{csp}"
    );
    let dom = browse(&format!("{url}/"), "--dump-dom");
    assert!(!dom.contains("<script"), "no script on the page");
    // The owed-terminations table names the runner, linked to its timeline.
    let owed_table = dom
        .split("id=\"owed-terminations\"")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap_or_else(|| panic!("no owed-terminations table:\n{dom}"));
    assert!(owed_table.contains(&owed.to_string()), "{owed_table}");
    assert!(owed_table.contains("i-0owed"), "{owed_table}");
    let href = jitr_handlers::runtime::page::runner_href(&owed.to_string());
    assert!(owed_table.contains(&href), "{owed_table}");
    // Each market against its quota as jitr knows it.
    let markets = dom
        .split("id=\"markets\"")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap();
    assert!(
        markets.contains("<td>64 (configured)</td>"),
        "on-demand:\n{markets}"
    );
    assert!(
        markets.contains("<td>not known yet (no refusal seen)</td>"),
        "spot:\n{markets}"
    );
    // Every runner row, and the dead letters with their reason, escaped.
    assert_eq!(
        dom.matches("class=\"runner\"").count(),
        4,
        "3 running + the owed one"
    );
    let queues = dom.split("id=\"dead-letter-queues\"").nth(1).unwrap();
    assert!(
        queues.contains("malformed workflow_job message &lt;b&gt;not json&lt;/b&gt;"),
        "{queues}"
    );
    assert!(!dom.contains(SECRET), "no secret on the page");
    // No runner with an instance closed yet: no bars.
    assert!(dom.contains("id=\"repositories-none\""), "{dom}");

    // The filter, as a form submits it.
    let running = browse(&format!("{url}/?status=running&pool="), "--dump-dom");
    assert_eq!(running.matches("class=\"runner\"").count(), 3);
    assert!(
        running.contains("<option value=\"running\" selected"),
        "the filter shows"
    );

    // The owed runner's timeline: the same events as `jitr history`.
    let timeline = browse(&format!("{url}{href}"), "--dump-dom");
    for kind in ["Requested", "LaunchIntended", "Launched", "Failed"] {
        assert!(
            timeline.contains(&format!("<td>{kind}</td>")),
            "{kind}:\n{timeline}"
        );
    }
    assert!(timeline.contains("i-0owed"));
    let missing = http
        .get(format!("{url}/runners/acme%2Fnone%231%231"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);

    let shots = screenshots();
    for (name, path) in [("fleet.png", "/".to_owned()), ("runner.png", href.clone())] {
        let file = shots.join(name);
        let _ = std::fs::remove_file(&file);
        browse(
            &format!("{url}{path}"),
            &format!("--screenshot={}", file.display()),
        );
        let png = std::fs::read(&file).expect("the screenshot was written");
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        eprintln!("screenshot {} ({} bytes)", file.display(), png.len());
    }
    support::sigterm(&serve);
    serve.wait().unwrap();
}
