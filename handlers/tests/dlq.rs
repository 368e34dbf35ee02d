//! `jitr dlq` on the embedded queues and on SQS (moto): a dead letter is
//! listed with its reason, shown whole, redriven to its queue as it was and
//! processed there once, and purged only with `--yes`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use jitr_domain::RunnerEvent;
use jitr_handlers::app::webhook::JobMessage;
use jitr_infra::{EventStore, LocalQueue, Queue, SqliteEventStore};
use serde_json::Value;

#[path = "support/aws.rs"]
mod aws;
#[path = "support/serve.rs"]
mod support;

const SECRET: &str = "dlq-secret";

fn jitr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(args)
        .output()
        .expect("run jitr")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn queued(job_id: u64) -> String {
    serde_json::to_string(&JobMessage {
        delivery: format!("dlq-{job_id}"),
        action: "queued".into(),
        installation: 1,
        owner: "acme".into(),
        repo: "widgets".into(),
        job_id,
        run_id: 5,
        labels: vec!["self-hosted".into(), "linux".into()],
        runner_name: None,
        conclusion: None,
        attempt: 1,
        avoid_spot: Vec::new(),
        runner_id: None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dead_letters_are_listed_redriven_once_and_purged_on_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let queues = dir.path().join("queues.db");
    // A job whose deliveries all failed (five receives, never deleted: its
    // consumer was broken, say), and a poison message jitr dead-lettered.
    let scaleup = LocalQueue::open(
        &queues,
        "scaleup",
        5,
        Duration::ZERO,
        jitr_infra::system_clock(),
    )
    .unwrap();
    scaleup
        .publish(&queued(1), None, &[("origin", "dlq-test")])
        .await
        .unwrap();
    while scaleup.dead_letter_depth().await.unwrap() == 0 {
        scaleup.receive(10, Duration::ZERO).await.unwrap();
    }
    scaleup.publish("not json", None, &[]).await.unwrap();
    let poison = scaleup.receive(10, Duration::ZERO).await.unwrap();
    scaleup
        .dead_letter(
            &poison[0],
            "malformed workflow_job message: expected value at line 1",
        )
        .await
        .unwrap();

    let listed = jitr(&["dlq", "list", "--data-dir", &data]);
    assert!(listed.status.success(), "{}", text(&listed));
    let out = text(&listed);
    assert!(out.contains("received 5 times without success"), "{out}");
    assert!(out.contains("malformed workflow_job message"), "{out}");
    let rows: Vec<Value> = serde_json::from_slice(
        &jitr(&["dlq", "list", "scaleup", "--json", "--data-dir", &data]).stdout,
    )
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let job = rows
        .iter()
        .find(|r| r["reason"].as_str().unwrap().starts_with("received"))
        .unwrap();
    assert_eq!(job["receive_count"], 5);
    let id = job["id"].as_str().unwrap().to_owned();

    let shown = jitr(&["dlq", "show", "scaleup", &id, "--data-dir", &data]);
    let out = text(&shown);
    assert!(shown.status.success(), "{out}");
    assert!(out.contains("\"job_id\":1"), "{out}");
    assert!(out.contains("attribute:  origin = dlq-test"), "{out}");
    let missing = jitr(&["dlq", "show", "scaleup", "424242", "--data-dir", &data]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));

    // Purge refuses without --yes, and deletes nothing.
    let refused = jitr(&["dlq", "purge", "scaleup", "--data-dir", &data]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused).contains("add --yes"), "{}", text(&refused));
    assert_eq!(scaleup.dead_letter_depth().await.unwrap(), 2);
    let unknown = jitr(&["dlq", "list", "scaleups", "--data-dir", &data]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("one of scaleup, lifecycle"),
        "{}",
        text(&unknown)
    );

    // Redrive the job (only it), then let serve process the queue.
    let moved = jitr(&[
        "dlq",
        "redrive",
        "scaleup",
        "--id",
        &id,
        "--data-dir",
        &data,
    ]);
    assert!(moved.status.success(), "{}", text(&moved));
    assert!(text(&moved).contains("moved 1 dead letters back to scaleup"));
    let again = jitr(&[
        "dlq",
        "redrive",
        "scaleup",
        "--id",
        &id,
        "--data-dir",
        &data,
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert_eq!(scaleup.dead_letter_depth().await.unwrap(), 1);

    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut serve = support::serve(dir.path(), port, SECRET, &["--sim-boot", "1s"]);
    support::wait_until_up(&reqwest::Client::new(), &url).await;
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let started = Instant::now();
    while support::runners(&store, 1).await.is_empty() || scaleup.waiting().await.unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the redriven job was not processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    support::sigterm(&serve);
    serve.wait().unwrap();
    let requested = store
        .read_all(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.stream.job_id() == 1 && matches!(r.event, RunnerEvent::Requested { .. }))
        .count();
    assert_eq!(requested, 1, "the redriven job got one runner");
    assert_eq!(
        scaleup.dead_letter_depth().await.unwrap(),
        1,
        "the poison stays"
    );

    let purged = jitr(&["dlq", "purge", "scaleup", "--yes", "--data-dir", &data]);
    assert!(
        text(&purged).contains("deleted 1 dead letters of scaleup"),
        "{}",
        text(&purged)
    );
    let empty = jitr(&["dlq", "list", "--data-dir", &data]);
    assert!(text(&empty).contains("no dead letters"), "{}", text(&empty));
}

/// `jitr init --prefix prefix` on moto, and its queue `queue`.
#[cfg(feature = "aws")]
async fn initialised(prefix: &str, queue: &str) -> jitr_aws::SqsQueue {
    let init = aws::jitr(prefix, &["init"]);
    assert!(init.status.success(), "{}", text(&init));
    let config = jitr_aws::AwsSettings::emulator(aws::endpoint())
        .load()
        .await;
    jitr_aws::SqsQueue::find(&config, &format!("{prefix}-{queue}"))
        .await
        .unwrap()
        .unwrap()
}

/// The same on SQS: `jitr init`'s queues on moto.
#[cfg(feature = "aws")]
#[tokio::test]
async fn sqs_dead_letters_are_listed_redriven_as_they_were_and_purged_on_confirmation() {
    let prefix = aws::prefix("dlq");
    let aws = |args: &[&str]| {
        let mut with_aws = args.to_vec();
        with_aws.push("--aws");
        aws::jitr(&prefix, &with_aws)
    };
    let lifecycle = initialised(&prefix, "lifecycle").await;
    let body = queued(7);
    lifecycle
        .publish(&body, None, &[("origin", "dlq-test")])
        .await
        .unwrap();
    let received = lifecycle.receive(1, Duration::from_secs(1)).await.unwrap();
    lifecycle
        .dead_letter(&received[0], "GitHub answered 502 five times")
        .await
        .unwrap();

    let listed = aws(&["dlq", "list", "lifecycle"]);
    let out = text(&listed);
    assert!(listed.status.success(), "{out}");
    assert!(out.contains("GitHub answered 502 five times"), "{out}");
    let rows: Vec<Value> =
        serde_json::from_slice(&aws(&["dlq", "list", "lifecycle", "--json"]).stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    let shown = aws(&["dlq", "show", "lifecycle", &id]);
    assert!(text(&shown).contains("\"job_id\":7"), "{}", text(&shown));

    let refused = aws(&["dlq", "purge", "lifecycle"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let moved = aws(&["dlq", "redrive", "lifecycle"]);
    assert!(
        text(&moved).contains("moved 1 dead letters back to lifecycle"),
        "{}",
        text(&moved)
    );
    // Back in its queue once, as it was, without the reason.
    let back = lifecycle.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].body, body);
    assert_eq!(
        back[0].attributes.get("origin").map(String::as_str),
        Some("dlq-test")
    );
    assert!(
        !back[0]
            .attributes
            .contains_key(jitr_infra::DEAD_LETTER_REASON)
    );
    assert!(
        lifecycle
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    let nothing = aws(&["dlq", "redrive", "lifecycle"]);
    assert!(
        text(&nothing).contains("moved 0 dead letters"),
        "{}",
        text(&nothing)
    );

    lifecycle
        .dead_letter(&back[0], "poison again")
        .await
        .unwrap();
    let purged = aws(&["dlq", "purge", "lifecycle", "--yes"]);
    assert!(
        text(&purged).contains("deleted 1 dead letters of lifecycle"),
        "{}",
        text(&purged)
    );
    assert_eq!(lifecycle.dead_letter_depth().await.unwrap(), 0);
}

/// GitHub on wiremock for `serve --aws`: installation tokens and JIT configs
/// for `acme/widgets`; every other read answers empty.
#[cfg(feature = "aws")]
async fn github() -> wiremock::MockServer {
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let github = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/app/installations/\d+/access_tokens$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "token": "ghs_dlq", "expires_at": "2099-01-01T00:00:00Z"
        })))
        .mount(&github)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
            "runner": {"id": 9, "name": "jitr"}, "encoded_jit_config": "secret"
        })))
        .mount(&github)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "total_count": 0, "runners": [], "jobs": [], "workflow_runs": []
        })))
        .mount(&github)
        .await;
    github
}

/// On SQS through `jitr serve --aws`: the fleet page shows a dead letter's
/// reason and reading it hides nothing (a list right after still finds the
/// message); redriven, the job is processed once — one runner, nothing left in
/// the queue or its dead-letter queue.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_aws_shows_an_sqs_dead_letter_and_processes_it_once_redriven() {
    use jitr_infra::EventStore;
    let prefix = aws::prefix("dlq-serve");
    let scaleup = initialised(&prefix, "scaleup").await;
    let config = jitr_aws::AwsSettings::emulator(aws::endpoint())
        .load()
        .await;
    scaleup.publish(&queued(8), None, &[]).await.unwrap();
    let received = scaleup.receive(1, Duration::from_secs(1)).await.unwrap();
    scaleup
        .dead_letter(&received[0], "GitHub answered 502 <i>five</i> times")
        .await
        .unwrap();

    let github = github().await;
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let mut serve = aws::jitr_at(&prefix, &["serve", "--aws", "--listen", &listen])
        .env("JITR_WEBHOOK_SECRET", SECRET)
        .env("JITR_GITHUB_APP_ID", "1")
        .env(
            "JITR_GITHUB_PRIVATE_KEY_FILE",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../infra/tests/fixtures/test-app-key.pem"
            ),
        )
        .env("JITR_GITHUB_API", github.uri())
        .env("JITR_IMAGE", "ami-03cf127a")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    support::wait_until_up(&http, &url).await;
    for _ in 0..2 {
        let page = http.get(format!("{url}/")).send().await.unwrap();
        assert_eq!(page.status().as_u16(), 200);
        let html = page.text().await.unwrap();
        let queues = html
            .split("id=\"dead-letter-queues\"")
            .nth(1)
            .unwrap_or_else(|| panic!("no dead-letter table:\n{html}"));
        // The reason as text: its markup escaped.
        let unescaped = queues
            .replace("&#60;", "<")
            .replace("&#62;", ">")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
        assert!(
            unescaped.contains("GitHub answered 502 <i>five</i> times") && !queues.contains("<i>"),
            "{queues}"
        );
        // Still visible to the next reader: the page hid nothing.
        let listed = aws::jitr(&prefix, &["dlq", "list", "scaleup", "--aws", "--json"]);
        let rows: Vec<Value> =
            serde_json::from_slice(&listed.stdout).unwrap_or_else(|_| panic!("{}", text(&listed)));
        assert_eq!(rows.len(), 1, "{rows:?}");
    }

    // Redriven, serve's scale-up consumer gives the job one runner.
    let moved = aws::jitr(&prefix, &["dlq", "redrive", "scaleup", "--aws"]);
    assert!(
        text(&moved).contains("moved 1 dead letters back to scaleup"),
        "{}",
        text(&moved)
    );
    let store =
        jitr_aws::DynamoEventStore::new(&config, jitr_aws::AwsNames::new(&prefix).events_table());
    let job_events = || async {
        store
            .read_all(0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.stream.job_id() == 8)
            .map(|r| r.event.kind())
            .collect::<Vec<_>>()
    };
    let count = |events: &[&str], kind: &str| events.iter().filter(|k| **k == kind).count();
    let started = Instant::now();
    while count(&job_events().await, "TokenMinted") == 0 || scaleup.waiting().await.unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the redriven job was not processed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    support::sigterm(&serve);
    serve.wait().unwrap();
    let events = job_events().await;
    for kind in ["Requested", "Launched", "TokenMinted"] {
        assert_eq!(count(&events, kind), 1, "{kind} once: {events:?}");
    }
    assert_eq!(scaleup.dead_letter_depth().await.unwrap(), 0);
    assert_eq!(scaleup.waiting().await.unwrap(), 0);
}
