//! The GitHub App client against a wiremock server that checks method, path,
//! headers and body as GitHub documents them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use jitr_infra::{GitHub, GitHubApp, GitHubAppConfig, GitHubError, JitRequest, RunnerScope};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = include_str!("fixtures/test-app-key.pem");
const PUBLIC_KEY: &str = include_str!("fixtures/test-app-key.pub.pem");
const NOW: i64 = 1_800_000_000;
const INSTALLATION: u64 = 42;

/// Accepts only a valid App JWT: RS256 with the App's key, issuer = app id,
/// issued before the client's clock, expiring after it, within 10 minutes.
struct AppJwt(Arc<AtomicI64>);

impl Match for AppJwt {
    fn matches(&self, request: &Request) -> bool {
        let Some(token) = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&["12345"]);
        validation.validate_exp = false;
        let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation) else {
            return false;
        };
        let now = self.0.load(Ordering::SeqCst);
        let (iat, exp) = (data.claims["iat"].as_i64(), data.claims["exp"].as_i64());
        matches!((iat, exp), (Some(iat), Some(exp)) if iat <= now && exp > now && exp - iat <= 600)
    }
}

fn github_headers() -> (
    wiremock::matchers::HeaderExactMatcher,
    wiremock::matchers::HeaderExactMatcher,
) {
    (
        header("accept", "application/vnd.github+json"),
        header("x-github-api-version", "2022-11-28"),
    )
}

struct World {
    server: MockServer,
    clock: Arc<AtomicI64>,
}

impl World {
    async fn new() -> Self {
        World {
            server: MockServer::start().await,
            clock: Arc::new(AtomicI64::new(NOW)),
        }
    }

    fn client_at(&self, base: &str, max_wait: Duration) -> GitHubApp {
        let clock = Arc::clone(&self.clock);
        GitHubApp::new(GitHubAppConfig {
            app_id: "12345".into(),
            private_key_pem: KEY.into(),
            api_base: base.into(),
            max_rate_limit_wait: max_wait,
        })
        .unwrap()
        .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)))
    }

    fn client(&self) -> GitHubApp {
        self.client_at(&self.server.uri(), Duration::from_secs(5))
    }

    /// The installation token endpoint, expecting `times` calls.
    async fn token_endpoint(&self, prefix: &str, token: &str, expires_at: &str, times: u64) {
        let (accept, version) = github_headers();
        Mock::given(method("POST"))
            .and(path(format!(
                "{prefix}/app/installations/{INSTALLATION}/access_tokens"
            )))
            .and(accept)
            .and(version)
            .and(header(
                "user-agent",
                concat!("jitr/", env!("CARGO_PKG_VERSION")),
            ))
            .and(AppJwt(Arc::clone(&self.clock)))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"token": token, "expires_at": expires_at})),
            )
            .expect(times)
            .mount(&self.server)
            .await;
    }
}

fn repo() -> RunnerScope {
    RunnerScope::Repo {
        owner: "acme".into(),
        repo: "widgets".into(),
    }
}

fn jit_request(scope: RunnerScope, group: u64) -> JitRequest {
    JitRequest {
        scope,
        name: "jitr-acme-widgets-42-1".into(),
        runner_group_id: group,
        labels: vec!["self-hosted".into(), "linux".into()],
        work_folder: "_work".into(),
    }
}

fn jit_body(group: u64) -> serde_json::Value {
    json!({
        "name": "jitr-acme-widgets-42-1",
        "runner_group_id": group,
        "labels": ["self-hosted", "linux"],
        "work_folder": "_work",
    })
}

fn jit_created() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "runner": {"id": 23, "name": "jitr-acme-widgets-42-1", "os": "unknown", "status": "offline", "busy": false, "labels": []},
        "encoded_jit_config": "eyJqaXQiOiJ0cnVlIn0="
    }))
}

#[tokio::test]
async fn a_repository_jit_config_is_generated_with_a_cached_installation_token() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_one", "2027-01-15T09:00:00Z", 1)
        .await;
    let (accept, version) = github_headers();
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .and(header("authorization", "Bearer ghs_one"))
        .and(accept)
        .and(version)
        .and(body_json(jit_body(1)))
        .respond_with(jit_created())
        .expect(2)
        .mount(&world.server)
        .await;
    let client = world.client();
    for _ in 0..2 {
        let runner = client
            .generate_jit_config(INSTALLATION, &jit_request(repo(), 1))
            .await
            .unwrap();
        assert_eq!(runner.runner_id, 23);
        assert_eq!(runner.name, "jitr-acme-widgets-42-1");
        assert_eq!(runner.config.expose(), "eyJqaXQiOiJ0cnVlIn0=");
        assert!(!format!("{runner:?}").contains("eyJqaXQ"), "never printed");
    }
}

#[tokio::test]
async fn an_organization_jit_config_names_its_runner_group() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_org", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("POST"))
        .and(path("/orgs/acme/actions/runners/generate-jitconfig"))
        .and(header("authorization", "Bearer ghs_org"))
        .and(body_json(jit_body(7)))
        .respond_with(jit_created())
        .expect(1)
        .mount(&world.server)
        .await;
    let org = RunnerScope::Org { org: "acme".into() };
    world
        .client()
        .generate_jit_config(INSTALLATION, &jit_request(org, 7))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_installation_token_is_renewed_shortly_before_it_expires() {
    let world = World::new().await;
    // NOW is 2027-01-15T08:00:00Z; the token expires 10 minutes later.
    world
        .token_endpoint("", "ghs_short", "2027-01-15T08:10:00Z", 2)
        .await;
    let client = world.client();
    assert_eq!(
        client.installation_token(INSTALLATION).await.unwrap(),
        "ghs_short"
    );
    // 6 minutes left: still cached.
    world.clock.store(NOW + 240, Ordering::SeqCst);
    assert_eq!(
        client.installation_token(INSTALLATION).await.unwrap(),
        "ghs_short"
    );
    // Under 5 minutes left: renewed (the endpoint's second call).
    world.clock.store(NOW + 330, Ordering::SeqCst);
    client.installation_token(INSTALLATION).await.unwrap();
}

#[tokio::test]
async fn runners_are_listed_across_pages_and_deleted() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_list", "2027-01-15T09:00:00Z", 1)
        .await;
    let next = format!(
        "<{}/repos/acme/widgets/actions/runners?per_page=100&page=2>; rel=\"next\", <{}/repos/acme/widgets/actions/runners?per_page=100&page=2>; rel=\"last\"",
        world.server.uri(),
        world.server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "total_count": 2,
            "runners": [{"id": 2, "name": "b", "os": "linux", "status": "offline", "busy": false, "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}]}]
        })))
        .with_priority(1)
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners"))
        .and(query_param("per_page", "100"))
        .and(header("authorization", "Bearer ghs_list"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", next.as_str())
                .set_body_json(json!({
                    "total_count": 2,
                    "runners": [{"id": 1, "name": "a", "os": "linux", "status": "online", "busy": true, "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}, {"id": 9, "name": "linux", "type": "custom"}]}]
                })),
        )
        .with_priority(2)
        .mount(&world.server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/repos/acme/widgets/actions/runners/1"))
        .and(header("authorization", "Bearer ghs_list"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&world.server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/repos/acme/widgets/actions/runners/2"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})))
        .mount(&world.server)
        .await;

    let client = world.client();
    let runners = client.list_runners(INSTALLATION, &repo()).await.unwrap();
    let names: Vec<&str> = runners.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(runners[0].busy);
    assert_eq!(runners[0].labels, ["self-hosted", "linux"]);
    assert!(
        client
            .delete_runner(INSTALLATION, &repo(), 1)
            .await
            .unwrap()
    );
    assert!(
        !client
            .delete_runner(INSTALLATION, &repo(), 2)
            .await
            .unwrap(),
        "already gone"
    );
}

#[tokio::test]
async fn queued_jobs_are_read_per_repository_and_run() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_jobs", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runs"))
        .and(query_param("status", "queued"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "total_count": 1, "workflow_runs": [{"id": 5, "status": "queued"}]
        })))
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runs/5/jobs"))
        .and(query_param("filter", "latest"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "total_count": 2,
            "jobs": [
                {"id": 11, "run_id": 5, "status": "queued", "name": "build", "labels": ["self-hosted", "linux"]},
                {"id": 12, "run_id": 5, "status": "in_progress", "name": "lint", "labels": ["self-hosted"]}
            ]
        })))
        .mount(&world.server)
        .await;
    let client = world.client();
    let runs = client
        .queued_runs(INSTALLATION, "acme", "widgets")
        .await
        .unwrap();
    assert_eq!(runs, [5]);
    let jobs = client
        .queued_jobs(INSTALLATION, "acme", "widgets", 5)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (
            jobs[0].owner.as_str(),
            jobs[0].repo.as_str(),
            jobs[0].job_id,
            jobs[0].run_id
        ),
        ("acme", "widgets", 11, 5)
    );
    assert_eq!(jobs[0].labels, ["self-hosted", "linux"]);
}

async fn jit_error(status: u16, message: &str) -> GitHubError {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_err", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"message": message})))
        .mount(&world.server)
        .await;
    world
        .client()
        .generate_jit_config(INSTALLATION, &jit_request(repo(), 1))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn error_statuses_become_typed_errors() {
    assert!(
        matches!(jit_error(404, "Not Found").await, GitHubError::NotFound(m) if m.contains("Not Found"))
    );
    assert!(matches!(
        jit_error(409, "Already exists - A runner with the name jitr-acme-widgets-42-1 already exists.").await,
        GitHubError::RunnerNameExists(m) if m.contains("already exists")
    ));
    assert!(matches!(
        jit_error(422, "Invalid input: object is missing required key: runner_group_id").await,
        GitHubError::Invalid(m) if m.contains("runner_group_id")
    ));
    assert!(matches!(
        jit_error(403, "Resource not accessible by integration").await,
        GitHubError::Forbidden(_)
    ));
}

#[tokio::test]
async fn a_401_drops_the_cached_token_and_retries_once() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_revoked", "2027-01-15T09:00:00Z", 2)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})),
        )
        .expect(2)
        .mount(&world.server)
        .await;
    let err = world
        .client()
        .generate_jit_config(INSTALLATION, &jit_request(repo(), 1))
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::Unauthorized(m) if m.contains("Bad credentials")));
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_5xx", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/repos/acme/widgets/actions/runners/7"))
        .respond_with(ResponseTemplate::new(502).set_body_string("bad gateway"))
        .expect(3)
        .mount(&world.server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/repos/acme/widgets/actions/runners/8"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&world.server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/repos/acme/widgets/actions/runners/8"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&world.server)
        .await;
    let client = world.client();
    let err = client
        .delete_runner(INSTALLATION, &repo(), 7)
        .await
        .unwrap_err();
    assert!(
        matches!(err, GitHubError::Server { status: 502, .. }),
        "{err:?}"
    );
    assert!(
        client
            .delete_runner(INSTALLATION, &repo(), 8)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_a_long_rate_limit_is_reported() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_rl", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"message": "You have exceeded a secondary rate limit"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(jit_created())
        .with_priority(2)
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", (NOW + 3600).to_string().as_str())
                .set_body_json(json!({"message": "API rate limit exceeded"})),
        )
        .expect(1)
        .mount(&world.server)
        .await;
    let client = world.client();
    let started = Instant::now();
    client
        .generate_jit_config(INSTALLATION, &jit_request(repo(), 1))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited out retry-after"
    );
    let err = client
        .list_runners(INSTALLATION, &repo())
        .await
        .unwrap_err();
    match err {
        GitHubError::RateLimited { retry_after } => {
            assert_eq!(retry_after, Duration::from_secs(3600))
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // Until the reset, the client refuses without calling GitHub.
    let again = client
        .list_runners(INSTALLATION, &repo())
        .await
        .unwrap_err();
    assert!(matches!(again, GitHubError::RateLimited { .. }));
}

#[tokio::test]
async fn an_enterprise_server_base_url_prefixes_every_path() {
    let world = World::new().await;
    world
        .token_endpoint("/api/v3", "ghs_ghes", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/api/v3/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .and(header("authorization", "Bearer ghs_ghes"))
        .respond_with(jit_created())
        .expect(1)
        .mount(&world.server)
        .await;
    let client = world.client_at(
        &format!("{}/api/v3/", world.server.uri()),
        Duration::from_secs(5),
    );
    client
        .generate_jit_config(INSTALLATION, &jit_request(repo(), 1))
        .await
        .unwrap();
}

#[test]
fn a_malformed_private_key_is_a_clear_error() {
    let err = GitHubApp::new(GitHubAppConfig {
        app_id: "1".into(),
        private_key_pem: "not a key".into(),
        api_base: "https://api.github.com".into(),
        max_rate_limit_wait: Duration::from_secs(1),
    })
    .err()
    .expect("refused");
    assert!(matches!(err, GitHubError::Key(_)));
}

/// Issue 10: a `Link: rel="next"` naming another host is not followed, so the
/// installation token never reaches it: the list fails naming the URL, and the
/// other server sees no request at all.
#[tokio::test]
async fn a_link_to_another_host_is_refused_and_never_requested() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_list", "2099-01-01T00:00:00Z", 1)
        .await;
    let elsewhere = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"runners": []})))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let next = format!(
        "<{}/repos/acme/widgets/actions/runners?per_page=100&page=2>; rel=\"next\"",
        elsewhere.uri()
    );
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", next.as_str())
                .set_body_json(json!({"total_count": 2, "runners": []})),
        )
        .mount(&world.server)
        .await;
    let err = world
        .client()
        .list_runners(INSTALLATION, &repo())
        .await
        .unwrap_err();
    match &err {
        GitHubError::ForeignLink { url, .. } => assert!(url.starts_with(&elsewhere.uri()), "{err}"),
        other => panic!("expected ForeignLink, got {other:?}"),
    }
    // Dropping `elsewhere` verifies it received nothing (`expect(0)`).
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

/// Issue 10: asking GitHub for one job (to heal a lost lifecycle webhook): the
/// documented path with the installation's token; 404 is "unknown", not an
/// error.
#[tokio::test]
async fn a_job_is_read_with_the_installation_token_and_404_is_none() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_jobs", "2099-01-01T00:00:00Z", 1)
        .await;
    let (accept, version) = github_headers();
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/jobs/42"))
        .and(header("authorization", "Bearer ghs_jobs"))
        .and(accept)
        .and(version)
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 42, "run_id": 7, "status": "in_progress", "conclusion": null,
            "runner_name": "jitr-42-1-abcdef", "runner_id": 9, "labels": ["self-hosted"]
        })))
        .expect(1)
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/jobs/43"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})))
        .mount(&world.server)
        .await;
    let client = world.client();
    let job = client
        .get_job(INSTALLATION, "acme", "widgets", 42)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, "in_progress");
    assert_eq!(job.conclusion, None);
    assert_eq!(job.runner_name.as_deref(), Some("jitr-42-1-abcdef"));
    assert_eq!(
        client
            .get_job(INSTALLATION, "acme", "widgets", 43)
            .await
            .unwrap(),
        None
    );
}

/// Issue 10: what each installation's token spent and GitHub's rate-limit
/// headers are kept per installation (`GitHub::usage`), and one installation's
/// exhausted limit does not pause another's requests.
#[tokio::test]
async fn rate_limits_are_kept_per_installation() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_42", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("POST"))
        .and(path("/app/installations/43/access_tokens"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"token": "ghs_43", "expires_at": "2027-01-15T09:00:00Z"})),
        )
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/jobs/1"))
        .and(header("authorization", "Bearer ghs_42"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-ratelimit-limit", "5000")
                .insert_header("x-ratelimit-remaining", "4321")
                .insert_header("x-ratelimit-reset", (NOW + 1800).to_string().as_str())
                .set_body_json(
                    json!({"id": 1, "status": "queued", "conclusion": null, "runner_name": null}),
                ),
        )
        .expect(2)
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/other/gadgets/actions/jobs/2"))
        .and(header("authorization", "Bearer ghs_43"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-limit", "5000")
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", (NOW + 3600).to_string().as_str())
                .set_body_json(json!({"message": "API rate limit exceeded"})),
        )
        .expect(1)
        .mount(&world.server)
        .await;
    let client = world.client_at(&world.server.uri(), Duration::from_secs(1));
    client
        .get_job(INSTALLATION, "acme", "widgets", 1)
        .await
        .unwrap();
    let usage = client.usage(INSTALLATION);
    assert_eq!(
        (usage.sent, usage.limit, usage.remaining, usage.reset_at),
        (1, Some(5000), Some(4321), Some(NOW + 1800))
    );
    let limited = client.get_job(43, "other", "gadgets", 2).await.unwrap_err();
    assert!(
        matches!(limited, GitHubError::RateLimited { .. }),
        "{limited:?}"
    );
    assert_eq!(client.usage(43).remaining, Some(0));
    // Installation 42's requests go on.
    client
        .get_job(INSTALLATION, "acme", "widgets", 1)
        .await
        .unwrap();
    assert_eq!(client.usage(INSTALLATION).sent, 2);
    // Installation 43 waits for its reset without asking GitHub again.
    let again = client.get_job(43, "other", "gadgets", 2).await.unwrap_err();
    assert!(matches!(again, GitHubError::RateLimited { .. }));
    assert_eq!(client.usage(43).sent, 1);
}

/// Issue 11: an organisation's runner groups, for a pool's group by name.
#[tokio::test]
async fn runner_groups_are_listed_with_their_ids() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_groups", "2027-01-15T09:00:00Z", 1)
        .await;
    let (accept, version) = github_headers();
    Mock::given(method("GET"))
        .and(path("/orgs/acme/actions/runner-groups"))
        .and(query_param("per_page", "100"))
        .and(header("authorization", "Bearer ghs_groups"))
        .and(accept)
        .and(version)
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "total_count": 2,
            "runner_groups": [
                {"id": 1, "name": "Default", "visibility": "all", "default": true},
                {"id": 7, "name": "builders", "visibility": "selected", "default": false}
            ]
        })))
        .expect(1)
        .mount(&world.server)
        .await;
    let groups = world
        .client()
        .runner_groups(INSTALLATION, "acme")
        .await
        .unwrap();
    let names: Vec<(u64, &str)> = groups.iter().map(|g| (g.id, g.name.as_str())).collect();
    assert_eq!(names, [(1, "Default"), (7, "builders")]);
}

/// GitHub's reply to a burst of content-creating requests, as its REST
/// documentation ("Rate limits for the REST API": secondary rate limits) shows
/// it: 403, no `retry-after`, no exhausted primary limit.
fn secondary_limit() -> ResponseTemplate {
    ResponseTemplate::new(403).set_body_json(json!({
        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
    }))
}

#[tokio::test]
async fn a_secondary_rate_limit_without_retry_after_is_a_wait_that_grows() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_2nd", "2027-01-15T09:00:00Z", 1)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(secondary_limit())
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .mount(&world.server)
        .await;
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(jit_created())
        .with_priority(2)
        .mount(&world.server)
        .await;
    let client = world.client();
    let request = jit_request(repo(), 1);
    let mint = || client.generate_jit_config(INSTALLATION, &request);
    // GitHub: wait at least a minute, then exponentially longer.
    match mint().await.unwrap_err() {
        GitHubError::RateLimited { retry_after } => {
            assert_eq!(retry_after, Duration::from_secs(60))
        }
        other => panic!("a secondary rate limit is not definitive: {other:?}"),
    }
    // Meanwhile the installation's requests wait without reaching GitHub.
    assert!(matches!(
        mint().await.unwrap_err(),
        GitHubError::RateLimited { .. }
    ));
    world.clock.fetch_add(61, Ordering::SeqCst);
    match mint().await.unwrap_err() {
        GitHubError::RateLimited { retry_after } => {
            assert_eq!(retry_after, Duration::from_secs(120))
        }
        other => panic!("{other:?}"),
    }
    world.clock.fetch_add(121, Ordering::SeqCst);
    mint().await.unwrap();
}

#[tokio::test]
async fn a_rate_limit_is_never_waited_out_past_the_callers_deadline() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_dl", "2027-01-15T09:00:00Z", 1)
        .await;
    // A 429 without any header: GitHub documents it as a rate limit.
    Mock::given(method("POST"))
        .and(path(
            "/repos/acme/widgets/actions/runners/generate-jitconfig",
        ))
        .respond_with(ResponseTemplate::new(429))
        .mount(&world.server)
        .await;
    // The client may wait up to two minutes, but the Lambda invocation has 10 s.
    let client = world.client_at(&world.server.uri(), Duration::from_secs(120));
    let started = Instant::now();
    let err = jitr_infra::deadline::within(
        Instant::now() + Duration::from_secs(10),
        client.generate_jit_config(INSTALLATION, &jit_request(repo(), 1)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, GitHubError::RateLimited { retry_after } if retry_after >= Duration::from_secs(60)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_runner_is_read_by_its_id_in_one_request_each() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_id", "2027-01-15T09:00:00Z", 1)
        .await;
    let (accept, version) = github_headers();
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners/23"))
        .and(accept)
        .and(version)
        .and(header("authorization", "Bearer ghs_id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 23, "name": "jitr-42-1-abc", "os": "linux", "status": "online",
            "busy": true, "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}]
        })))
        .expect(2)
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners/24"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})))
        .expect(1)
        .mount(&world.server)
        .await;
    let client = world.client();
    let runner = client
        .get_runner(INSTALLATION, &repo(), 23)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!((runner.id, runner.busy), (23, true));
    assert_eq!(runner.name, "jitr-42-1-abc");
    assert!(
        client
            .get_runner(INSTALLATION, &repo(), 24)
            .await
            .unwrap()
            .is_none()
    );
    // By id and name: another runner under the id is not this one.
    assert!(
        client
            .registration(INSTALLATION, &repo(), Some(23), "jitr-42-1-abc")
            .await
            .unwrap()
            .is_some()
    );
}

/// One page of a scope's runners is one request (`per_page=100&page=N`, as
/// GitHub documents "List self-hosted runners for a repository"); GitHub's
/// `Link: rel="next"` says whether another page follows.
#[tokio::test]
async fn one_page_of_runners_is_one_request_and_says_whether_more_follow() {
    let world = World::new().await;
    world
        .token_endpoint("", "ghs_page", "2027-01-15T09:00:00Z", 1)
        .await;
    let runner = |id: u64| {
        json!({"id": id, "name": format!("r{id}"), "os": "linux", "status": "online", "busy": false,
               "labels": [{"id": 1, "name": "self-hosted", "type": "read-only"}]})
    };
    let next = format!(
        "<{}/repos/acme/widgets/actions/runners?per_page=100&page=4>; rel=\"next\"",
        world.server.uri()
    );
    let (accept, version) = github_headers();
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners"))
        .and(query_param("per_page", "100"))
        .and(query_param("page", "3"))
        .and(accept)
        .and(version)
        .and(header("authorization", "Bearer ghs_page"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("link", next.as_str())
                .set_body_json(json!({"total_count": 350, "runners": [runner(301), runner(302)]})),
        )
        .expect(1)
        .mount(&world.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/actions/runners"))
        .and(query_param("page", "4"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"total_count": 350, "runners": [runner(401)]})),
        )
        .expect(1)
        .mount(&world.server)
        .await;
    let client = world.client();
    let third = client.runners_page(INSTALLATION, &repo(), 3).await.unwrap();
    assert_eq!(
        third.runners.iter().map(|r| r.id).collect::<Vec<_>>(),
        [301, 302]
    );
    assert!(third.more);
    let last = client.runners_page(INSTALLATION, &repo(), 4).await.unwrap();
    assert_eq!(last.runners.len(), 1);
    assert!(!last.more);
}
