//! Trust by default (issue 25): a public repository's queued job — a fork's
//! pull request among them, which runs arbitrary code on the runner inside the
//! VPC — is left alone unless a pool or the deployment opts in; an
//! allow-list can deny every repository not on it, even when it is empty.
//! The payloads are GitHub's `workflow_job` shape (`repository.private`,
//! `repository.visibility`), signed as GitHub signs them.

use std::sync::Arc;
use std::time::Duration;

use jitr_handlers::app::policy::RunnerPolicy;
use jitr_handlers::app::webhook::{Delivery, Reply, Webhook, sample_payload, sign};
use jitr_infra::{LocalQueue, ManualClock, Queue};
use serde_json::Value;

const SECRET: &[u8] = b"trust";

struct Hook {
    webhook: Webhook,
    scaleup: Arc<dyn Queue>,
    _dir: tempfile::TempDir,
}

fn hook(policy: RunnerPolicy) -> Hook {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(jitr_domain::Timestamp(1_700_000_000_000));
    let queue = |name: &str| -> Arc<dyn Queue> {
        Arc::new(
            LocalQueue::open(
                dir.path().join("q.db"),
                name,
                5,
                Duration::from_secs(30),
                clock.clock(),
            )
            .unwrap(),
        )
    };
    let scaleup = queue("scaleup");
    let webhook = Webhook::new(
        "trust",
        1 << 20,
        Arc::new(policy),
        scaleup.clone(),
        queue("lifecycle"),
    );
    Hook {
        webhook,
        scaleup,
        _dir: dir,
    }
}

/// GitHub's `queued` delivery for a job of `owner/repo`, with the repository's
/// visibility as GitHub sends it.
fn queued(repo: &str, job_id: u64, visibility: &str) -> String {
    let mut payload: Value = serde_json::from_str(&sample_payload(
        "queued",
        "acme",
        repo,
        job_id,
        &["self-hosted".into(), "linux".into(), "x64".into()],
        None,
    ))
    .unwrap();
    payload["repository"]["private"] = Value::Bool(visibility != "public");
    payload["repository"]["visibility"] = Value::String(visibility.into());
    payload.to_string()
}

async fn deliver(hook: &Hook, body: &str, id: &str) -> Reply {
    let signature = sign(SECRET, body.as_bytes());
    hook.webhook
        .handle(
            Delivery {
                event: Some("workflow_job"),
                id: Some(id),
                signature: Some(&signature),
            },
            body.as_bytes(),
        )
        .await
}

async fn queued_jobs(hook: &Hook) -> usize {
    hook.scaleup
        .receive(10, Duration::ZERO)
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_public_repositorys_job_is_left_alone_unless_opted_in() {
    // By default: the private repository's job is queued, the public one's not.
    let plain = hook(RunnerPolicy::default());
    let private = deliver(&plain, &queued("widgets", 1, "private"), "d-1").await;
    assert_eq!(private.status, 202, "{}", private.body);
    let public = deliver(&plain, &queued("website", 2, "public"), "d-2").await;
    assert_eq!(public.status, 200, "{}", public.body);
    assert!(
        public.body.contains("acme/website is public"),
        "{}",
        public.body
    );
    assert_eq!(queued_jobs(&plain).await, 1);
    // `repository.private: false` alone (no visibility) is public too.
    let mut bare: Value = serde_json::from_str(&queued("website", 3, "public")).unwrap();
    bare["repository"]
        .as_object_mut()
        .unwrap()
        .remove("visibility");
    let reply = deliver(&plain, &bare.to_string(), "d-3").await;
    assert!(reply.body.contains("is public"), "{}", reply.body);

    // A pool that opts in serves public repositories' jobs.
    let mut pool_opted = RunnerPolicy::default();
    pool_opted.pools[0].public_repositories = true;
    let opted = hook(pool_opted);
    let reply = deliver(&opted, &queued("website", 2, "public"), "d-4").await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(queued_jobs(&opted).await, 1);

    // So does a deployment that opts in for every pool.
    let deployment = hook(RunnerPolicy {
        public_repositories: true,
        ..RunnerPolicy::default()
    });
    let reply = deliver(&deployment, &queued("website", 2, "public"), "d-5").await;
    assert_eq!(reply.status, 202, "{}", reply.body);
}

#[tokio::test]
async fn an_allowlist_only_deployment_serves_no_repository_off_its_list() {
    let only = hook(RunnerPolicy {
        allowlist_only: true,
        ..RunnerPolicy::default()
    });
    let reply = deliver(&only, &queued("widgets", 1, "private"), "d-1").await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("allow-list is empty"), "{}", reply.body);
    assert_eq!(queued_jobs(&only).await, 0);

    let listed = hook(RunnerPolicy {
        allowlist_only: true,
        allowlist: vec!["acme/widgets".into()],
        ..RunnerPolicy::default()
    });
    assert_eq!(
        deliver(&listed, &queued("widgets", 1, "private"), "d-2")
            .await
            .status,
        202
    );
    let off = deliver(&listed, &queued("gadgets", 2, "private"), "d-3").await;
    assert!(off.body.contains("not in the allowlist"), "{}", off.body);
    assert_eq!(queued_jobs(&listed).await, 1);
}
