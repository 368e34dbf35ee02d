//! Issue 10: a GitHub App has many installations. Every GitHub call made for a
//! runner uses the installation its job came through — the REST client against
//! wiremock, the log, handlers and cloud on the embedded default.

use std::sync::Arc;
use std::time::Duration;

use jitr_domain::RunnerStatus;
use jitr_e2e::world::World;
use jitr_infra::{EventStore, GitHubApp, GitHubAppConfig, SimSettings};
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = include_str!("../../infra/tests/fixtures/test-app-key.pem");

/// Two installations: `acme` through 11 (token `ghs_11`), `other` through 22
/// (`ghs_22`). Each repository's endpoints answer only that installation's
/// token; the default installation (1) has no token endpoint at all.
async fn github() -> MockServer {
    let server = MockServer::start().await;
    for (installation, owner, repo, runner_id, job) in [
        (11, "acme", "widgets", 5u64, 1u64),
        (22, "other", "gadgets", 6, 2),
    ] {
        let name = jitr_domain::StreamId::parse(&format!("{owner}/{repo}#{job}#1"))
            .unwrap()
            .runner_name();
        let token = format!("ghs_{installation}");
        let bearer = format!("Bearer {token}");
        Mock::given(method("POST"))
            .and(path(format!(
                "/app/installations/{installation}/access_tokens"
            )))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"token": token, "expires_at": "2099-01-01T00:00:00Z"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(format!(
                "/repos/{owner}/{repo}/actions/runners/generate-jitconfig"
            )))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "runner": {"id": runner_id, "name": "from-request"},
                "encoded_jit_config": "secret"
            })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/repos/{owner}/{repo}/actions/runners")))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "total_count": 1,
                "runners": [{"id": runner_id, "name": name, "os": "linux",
                    "status": "offline", "busy": false, "labels": []}]
            })))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/repos/{owner}/{repo}/actions/jobs/{job}")))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": job, "run_id": 1000 + job, "status": "in_progress",
                "conclusion": null, "runner_name": name, "labels": ["self-hosted"]
            })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path(format!(
                "/repos/{owner}/{repo}/actions/runners/{runner_id}"
            )))
            .and(header("authorization", bearer.as_str()))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
    }
    server
}

#[tokio::test]
async fn every_call_for_a_runner_uses_its_own_installation() {
    let server = github().await;
    let client = GitHubApp::new(GitHubAppConfig {
        app_id: "1".into(),
        private_key_pem: KEY.into(),
        api_base: server.uri(),
        max_rate_limit_wait: Duration::from_secs(1),
    })
    .unwrap();
    let mut world = World::with_github(SimSettings::default(), 4, Arc::new(client));
    assert_eq!(
        world.policy.installation_id, 1,
        "the default is never asked"
    );
    let jobs = [
        (1u64, 11u64, "acme", "widgets"),
        (2, 22, "other", "gadgets"),
    ];
    for (job, installation, owner, repo) in jobs {
        let mut queued = world.message("queued", job, None);
        (queued.installation, queued.owner, queued.repo) =
            (installation, owner.into(), repo.into());
        world.scaleup.handle(&queued, 1, world.now()).await.unwrap();
    }
    // Both `in_progress` webhooks are lost: a job poll finds each job running on
    // its runner. Both jobs complete; past the drain grace compensation terminates the
    // instances and removes the registrations.
    for (job, installation, owner, repo) in jobs {
        let stream = jitr_domain::StreamId::parse(&format!("{owner}/{repo}#{job}#1")).unwrap();
        let head = world.store.head(&stream).await.unwrap().unwrap();
        assert_eq!(head.status, RunnerStatus::Ready, "{stream}");
        assert_eq!(
            head.state.request.as_ref().unwrap().installation,
            Some(jitr_domain::InstallationId(installation))
        );
        let polled = world.app.jobs.poll(&head.state, world.now()).await.unwrap();
        assert_eq!(polled.recorded, 1, "{}", polled.answer);
        assert_eq!(polled.state.status(), RunnerStatus::Running, "{stream}");
        let mut completed = world.message("completed", job, head.state.runner_name.as_deref());
        (completed.installation, completed.owner, completed.repo) =
            (installation, owner.into(), repo.into());
        world
            .lifecycle
            .handle(&completed, world.now())
            .await
            .unwrap();
    }
    world.advance(200);
    world.project_and_compensate().await;
    assert!(world.live_instances().await.is_empty());

    let requests = server.received_requests().await.unwrap();
    let (mut deletes, mut polls) = (Vec::new(), Vec::new());
    for request in &requests {
        let url = request.url.path().to_owned();
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if url.starts_with("/app/installations/") {
            assert!(
                url == "/app/installations/11/access_tokens"
                    || url == "/app/installations/22/access_tokens",
                "token for an installation no runner came through: {url}"
            );
            continue;
        }
        let expected = if url.starts_with("/repos/acme/") {
            "Bearer ghs_11"
        } else {
            assert!(url.starts_with("/repos/other/"), "{url}");
            "Bearer ghs_22"
        };
        assert_eq!(auth, expected, "{} {url}", request.method);
        if request.method.as_str() == "DELETE" {
            deletes.push(url);
        } else if url.contains("/actions/jobs/") {
            polls.push(url);
        }
    }
    polls.sort();
    assert_eq!(
        polls,
        [
            "/repos/acme/widgets/actions/jobs/1",
            "/repos/other/gadgets/actions/jobs/2"
        ]
    );
    deletes.sort();
    assert_eq!(
        deletes,
        [
            "/repos/acme/widgets/actions/runners/5",
            "/repos/other/gadgets/actions/runners/6"
        ]
    );
}
