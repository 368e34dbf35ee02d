//! Issue 11: the runner bootstrap, executed. The rendered user-data script runs
//! under bash against stand-ins: an IMDSv2 metadata service (wiremock: a request
//! without the session token is refused, as IMDSv2 does), SSM on moto reached
//! through the AWS CLI as on a real instance, a runner (`run.sh` records its
//! arguments and user) and `poweroff`. Needs root (it creates the runner user)
//! and the AWS CLI (`.ci/run` installs it beside moto).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jitr_handlers::app::bootstrap::Bootstrap;

#[path = "../../handlers/tests/support/iam.rs"]
mod iam;
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "imds-session-token";
const INSTANCE: &str = "i-0b0075724a9b00750";
const RUNNER_USER: &str = "jitr-runner-test";

/// The AWS CLI: `JITR_TEST_AWS_CLI`, else the one `.ci/run` installs.
fn aws_cli() -> PathBuf {
    let cli = std::env::var_os("JITR_TEST_AWS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/jitr-venv/bin/aws")
        });
    assert!(
        cli.exists(),
        "no AWS CLI at {} (pip install awscli into the moto venv, or set JITR_TEST_AWS_CLI)",
        cli.display()
    );
    cli
}

/// IMDSv2 as documented: PUT /latest/api/token with a TTL header gives a token;
/// metadata GETs need it, and are refused (401) without it.
async fn metadata_service() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/latest/api/token"))
        .and(header_exists("x-aws-ec2-metadata-token-ttl-seconds"))
        .respond_with(ResponseTemplate::new(200).set_body_string(TOKEN))
        .mount(&server)
        .await;
    for (item, value) in [("instance-id", INSTANCE), ("placement/region", "us-east-1")] {
        Mock::given(method("GET"))
            .and(path(format!("/latest/meta-data/{item}")))
            .and(header("x-aws-ec2-metadata-token", TOKEN))
            .respond_with(ResponseTemplate::new(200).set_body_string(value))
            .with_priority(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(10)
        .mount(&server)
        .await;
    server
}

/// What one run of the script left behind.
struct Run {
    status: Option<i32>,
    log: String,
    records: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn record(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.records.join(name)).ok()
    }
}

/// Writes the stand-in runner and `poweroff` into `dir`.
fn stand_ins(dir: &Path, runner_exit: i32) -> (PathBuf, PathBuf, PathBuf) {
    let records = dir.join("records");
    let runner = dir.join("actions-runner");
    let bin = dir.join("bin");
    for d in [&records, &runner, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    Command::new("chmod")
        .args(["777", records.to_str().unwrap()])
        .status()
        .unwrap();
    let write_exec = |file: PathBuf, text: String| {
        std::fs::write(&file, text).unwrap();
        Command::new("chmod")
            .args(["755", file.to_str().unwrap()])
            .status()
            .unwrap();
    };
    let r = records.display();
    write_exec(
        runner.join("run.sh"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > {r}/args\nid -un > {r}/user\nexit {runner_exit}\n"
        ),
    );
    write_exec(
        bin.join("poweroff"),
        format!("#!/bin/sh\necho powered-off > {r}/poweroff\n"),
    );
    (records, runner, bin)
}

/// Runs the rendered bootstrap as user data would, with the stand-ins.
async fn boot(
    prefix: &str,
    runner_exit: i32,
    config_after: Option<(Duration, String)>,
    wait_secs: u32,
) -> Run {
    boot_via(
        &jitr_e2e::aws::endpoint(),
        prefix,
        runner_exit,
        config_after,
        wait_secs,
    )
    .await
}

/// The same, the AWS CLI reaching AWS at `endpoint`.
async fn boot_via(
    endpoint: &str,
    prefix: &str,
    runner_exit: i32,
    config_after: Option<(Duration, String)>,
    wait_secs: u32,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (records, runner, bin) = stand_ins(dir.path(), runner_exit);
    let script_file = user_data(dir.path(), prefix, &runner, false);
    if let Some((delay, config)) = config_after {
        let name = format!("{prefix}/{INSTANCE}/jit-config");
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            put_parameter(&name, &config).await;
        });
    }
    let (status, log) = execute(&script_file, dir.path(), &bin, endpoint, wait_secs).await;
    Run {
        status,
        log,
        records,
        _dir: dir,
    }
}

/// Renders the bootstrap into `dir` as the user-data file, the runner in
/// `runner`; `every_boot` as a stopped pool's.
fn user_data(dir: &Path, prefix: &str, runner: &Path, every_boot: bool) -> PathBuf {
    let script = Bootstrap {
        ssm_prefix: prefix.into(),
        runner_dir: runner.display().to_string(),
        runner_user: RUNNER_USER.into(),
        runner_download: None,
        runner_sudo: false,
        every_boot,
    }
    .render();
    let script_file = dir.join("user-data.sh");
    std::fs::write(&script_file, script).unwrap();
    script_file
}

/// Runs `script` as root at boot, with the stand-ins of `bin` on the path, the
/// per-boot scripts in `dir/per-boot`: its exit status and its log.
async fn execute(
    script: &Path,
    dir: &Path,
    bin: &Path,
    endpoint: &str,
    wait_secs: u32,
) -> (Option<i32>, String) {
    let imds = metadata_service().await;
    let cli_dir = aws_cli().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.display(),
        cli_dir.display()
    );
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(script)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("JITR_PER_BOOT_DIR", dir.join("per-boot"))
        .env("JITR_IMDS_ENDPOINT", imds.uri())
        .env("JITR_POWEROFF", bin.join("poweroff"))
        .env("JITR_CONFIG_POLL_SECS", "1")
        .env("JITR_CONFIG_WAIT_SECS", wait_secs.to_string())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    let out = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("the bootstrap finishes")
        .unwrap();
    // Every metadata read carried the session token.
    for request in imds.received_requests().await.unwrap() {
        if request.method.as_str() == "GET" {
            assert_eq!(
                request
                    .headers
                    .get("x-aws-ec2-metadata-token")
                    .and_then(|v| v.to_str().ok()),
                Some(TOKEN),
                "{}",
                request.url
            );
        }
    }
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn put_parameter(name: &str, value: &str) {
    let config = jitr_e2e::aws::config().await;
    aws_sdk_ssm::Client::new(&config)
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
}

async fn parameter_exists(name: &str) -> bool {
    let config = jitr_e2e::aws::config().await;
    aws_sdk_ssm::Client::new(&config)
        .get_parameter()
        .name(name)
        .send()
        .await
        .is_ok()
}

fn require_root() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the bootstrap test creates a user: run it as root (as CI does)"
    );
}

#[tokio::test]
async fn the_bootstrap_starts_the_runner_with_its_jit_config_and_powers_off() {
    require_root();
    // IMDSv2 refuses a metadata read without the token.
    let imds = metadata_service().await;
    let bare = reqwest::get(format!("{}/latest/meta-data/instance-id", imds.uri()))
        .await
        .unwrap();
    assert_eq!(bare.status().as_u16(), 401);

    // The parameter appears only after a few seconds (the mint follows the launch).
    let prefix = format!("/{}", jitr_e2e::aws::unique("bootstrap"));
    let config = "eyJqaXQiOiJjb25maWcifQ==".to_owned();
    let run = boot(
        &prefix,
        0,
        Some((Duration::from_secs(3), config.clone())),
        30,
    )
    .await;
    assert_eq!(run.status, Some(0), "{}", run.log);
    assert_eq!(
        run.record("args").as_deref(),
        Some(format!("--jitconfig\n{config}\n").as_str()),
        "{}",
        run.log
    );
    assert_eq!(
        run.record("user").as_deref().map(str::trim),
        Some(RUNNER_USER)
    );
    assert!(run.record("poweroff").is_some(), "{}", run.log);
    assert!(run.log.contains("JIT config not there yet"), "{}", run.log);
    assert!(
        !parameter_exists(&format!("{prefix}/{INSTANCE}/jit-config")).await,
        "the script deletes the parameter"
    );
}

#[tokio::test]
async fn the_instance_powers_off_when_the_runner_fails_or_no_config_comes() {
    require_root();
    let prefix = format!("/{}", jitr_e2e::aws::unique("bootstrap"));
    put_parameter(&format!("{prefix}/{INSTANCE}/jit-config"), "c2VjcmV0").await;
    let run = boot(&prefix, 3, None, 30).await;
    assert_eq!(run.status, Some(3), "{}", run.log);
    assert!(run.record("args").is_some(), "{}", run.log);
    assert!(run.record("poweroff").is_some(), "{}", run.log);
    assert!(run.log.contains("the runner exited with 3"), "{}", run.log);

    // No parameter at all: the script gives up after its wait, and powers off.
    let prefix = format!("/{}", jitr_e2e::aws::unique("bootstrap-none"));
    let started = std::time::Instant::now();
    let run = boot(&prefix, 0, None, 3).await;
    assert_eq!(run.status, Some(1), "{}", run.log);
    assert!(run.record("args").is_none(), "the runner never started");
    assert!(run.record("poweroff").is_some(), "{}", run.log);
    assert!(run.log.contains("no JIT config after"), "{}", run.log);
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Issue 26 (ADR-0022): a stopped pool's instance. At its first boot no JIT
/// config is written (jitr stops it once booted); the script installs itself
/// among cloud-init's per-boot scripts. At the start that follows, that copy
/// runs, reads the fresh JIT config jitr wrote, and starts the runner with it.
#[tokio::test]
async fn a_stopped_pools_bootstrap_runs_again_at_every_start() {
    require_root();
    let prefix = format!("/{}", jitr_e2e::aws::unique("bootstrap-stopped"));
    let dir = tempfile::tempdir().unwrap();
    let (records, runner, bin) = stand_ins(dir.path(), 0);
    let endpoint = jitr_e2e::aws::endpoint();
    let first_boot = user_data(dir.path(), &prefix, &runner, true);
    // First boot: nothing to run yet (here it gives up; jitr stops it first).
    let (status, log) = execute(&first_boot, dir.path(), &bin, &endpoint, 2).await;
    assert_eq!(status, Some(1), "{log}");
    assert!(log.contains("installed in"), "{log}");
    assert!(
        !records.join("args").exists(),
        "no runner at the first boot"
    );
    let per_boot = dir.path().join("per-boot/jitr-bootstrap.sh");
    let installed = std::fs::read_to_string(&per_boot).expect("installed per boot");
    assert!(installed.contains("JITR_EVERY_BOOT='1'"));
    // The start: jitr wrote a fresh config; the per-boot copy runs it.
    let config = "c3RvcHBlZC1wb29s".to_owned();
    put_parameter(&format!("{prefix}/{INSTANCE}/jit-config"), &config).await;
    let (status, log) = execute(&per_boot, dir.path(), &bin, &endpoint, 10).await;
    assert_eq!(status, Some(0), "{log}");
    assert!(!log.contains("installed in"), "already per boot: {log}");
    assert_eq!(
        std::fs::read_to_string(records.join("args"))
            .ok()
            .as_deref(),
        Some(format!("--jitconfig\n{config}\n").as_str()),
        "{log}"
    );
    // A first boot's script of a pool that is not stopped installs nothing.
    let plain_dir = tempfile::tempdir().unwrap();
    let (_, plain_runner, plain_bin) = stand_ins(plain_dir.path(), 0);
    let plain = user_data(plain_dir.path(), &prefix, &plain_runner, false);
    let (_, log) = execute(&plain, plain_dir.path(), &plain_bin, &endpoint, 1).await;
    assert!(!plain_dir.path().join("per-boot").exists(), "{log}");
}

/// The runner instance's documented policy (`docs/runner-instance-policy.json`,
/// for the deployment template) allows exactly the SSM calls the bootstrap
/// makes, on the parameters the adapter writes, and only where the parameter's
/// instance-ARN tag — written by the SSM adapter — is the calling instance's
/// (`${ec2:SourceInstanceARN}`). IAM's evaluation itself is not run here: no
/// emulator evaluates policy conditions.
#[test]
fn the_instance_policy_allows_only_what_the_bootstrap_calls_on_its_own_parameter() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/runner-instance-policy.json"
    ))
    .unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let ssm = statements
        .iter()
        .find(|s| s["Action"].to_string().contains("ssm:"))
        .expect("an SSM statement");
    let mut allowed: Vec<String> = ssm["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    allowed.sort();
    // `aws ssm get-parameter` → ssm:GetParameter, as the script calls them.
    let script = Bootstrap::default().render();
    let mut called: Vec<String> = script
        .split("aws ssm ")
        .skip(1)
        .map(|rest| {
            let verb = rest.split_whitespace().next().unwrap();
            let action: String = verb
                .split('-')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            format!("ssm:{action}")
        })
        .collect();
    called.sort();
    called.dedup();
    assert_eq!(allowed, called);
    assert!(
        ssm["Resource"]
            .as_str()
            .unwrap()
            .ends_with(":parameter/PREFIX/*/jit-config"),
        "{}",
        ssm["Resource"]
    );
    assert!(script.contains("$JITR_SSM_PREFIX/$instance_id/jit-config"));
    let condition = &ssm["Condition"]["StringEquals"];
    assert_eq!(
        condition[format!("ssm:resourceTag/{}", jitr_aws::TAG_INSTANCE_ARN)],
        "${ec2:SourceInstanceARN}"
    );
    assert!(!text.contains("\"*\""), "no wildcard action or resource");

    // The deployment template's runner role grants the same, on the JIT-config
    // parameters of the prefix its functions hand them over under.
    let template = include_str!("../../infra/deploy/template.yaml");
    let role: String = template
        .lines()
        .skip_while(|l| *l != "  RunnerRole:")
        .skip(1)
        .take_while(|l| l.starts_with("   "))
        .collect::<Vec<_>>()
        .join("\n");
    let actions = format!("Action: [{}]", called.join(", "));
    assert!(role.contains(&actions), "{actions} in {role}");
    assert!(
        role.contains("parameter/${Prefix}/runners/*/jit-config"),
        "{role}"
    );
    assert!(
        role.contains(&format!(
            "ssm:resourceTag/{}: ${{ec2:SourceInstanceARN}}",
            jitr_aws::TAG_INSTANCE_ARN
        )),
        "{role}"
    );
    assert!(role.contains("kms:ViaService: !Sub ssm.${AWS::Region}.amazonaws.com"));
    assert!(template.contains("JITR_SSM_PREFIX: !Sub /${Prefix}/runners"));
}

/// A proxy in front of moto that records each AWS JSON-protocol request the
/// CLI makes (`X-Amz-Target`) as the SDK clients' recorder does.
async fn recording_proxy(target: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let client = reqwest::Client::new();
    let forward = move |request: axum::extract::Request| {
        let (client, target, recorded) = (client.clone(), target.clone(), recorded.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let amz_target = parts
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if let Some((service, operation)) = amz_target.split_once('.') {
                let service = match service {
                    "AmazonSSM" => "SSM",
                    other => other,
                };
                recorded.lock().unwrap().push(
                    serde_json::json!({
                        "service": service,
                        "operation": operation,
                        "uri": parts.uri.to_string(),
                        "body": String::from_utf8_lossy(&body),
                    })
                    .to_string(),
                );
            }
            let mut forwarded =
                client.request(parts.method.clone(), format!("{target}{}", parts.uri));
            for (name, value) in &parts.headers {
                if name != "host" && name != "content-length" {
                    forwarded = forwarded.header(name, value);
                }
            }
            let answer = forwarded.body(body).send().await.unwrap();
            let status = answer.status();
            let content_type = answer.headers().get("content-type").cloned();
            let bytes = answer.bytes().await.unwrap();
            let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
            *response.status_mut() = status;
            if let Some(ct) = content_type {
                response.headers_mut().insert("content-type", ct);
            }
            response
        }
    };
    let app = axum::Router::new().fallback(forward);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, calls)
}

/// The template's runner role, as AWS evaluates it (`@cloud-copilot/iam-simulate`,
/// `handlers/tests/support/iam.rs`), on what the bootstrap really called: its
/// own JIT config — written and tagged by the SSM adapter as scale-up writes
/// it — read and deleted, allowed; the same calls from another instance,
/// denied.
#[tokio::test]
async fn the_runner_role_lets_the_bootstrap_read_and_delete_its_own_config_only() {
    require_root();
    let stack_prefix = jitr_e2e::aws::unique("runner-iam");
    let ssm_prefix = format!("/{stack_prefix}/runners");
    let config = jitr_e2e::aws::config().await;
    let secrets = jitr_aws::SsmSecrets::new(&config, ssm_prefix.clone());
    let name = jitr_infra::RunnerSecrets::put_jit_config(
        &secrets,
        &jitr_domain::InstanceId(INSTANCE.into()),
        &jitr_infra::JitConfig::new("c2VjcmV0"),
    )
    .await
    .unwrap();
    let tags = aws_sdk_ssm::Client::new(&config)
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(&name)
        .send()
        .await
        .unwrap()
        .tag_list
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.value))
        .collect();
    let (proxy, calls) = recording_proxy(jitr_e2e::aws::endpoint()).await;
    let run = boot_via(&proxy, &ssm_prefix, 0, None, 30).await;
    assert_eq!(run.status, Some(0), "{}", run.log);
    assert!(!parameter_exists(&name).await, "the script deletes it");
    let recorded = calls.lock().unwrap().join("\n");
    let calls = iam::Call::read_all(&recorded);
    let operations: Vec<&str> = calls.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(
        operations,
        ["GetParameter", "DeleteParameter"],
        "{recorded}"
    );

    let facts_from = |caller: &str| iam::Facts {
        parameters: [(
            name.clone(),
            iam::Parameter {
                key: Some("alias/aws/ssm".into()),
                tags: std::collections::BTreeMap::clone(&tags),
            },
        )]
        .into(),
        source_instance: Some(format!(
            "arn:aws:ec2:us-east-1:123456789012:instance/{caller}"
        )),
        ..Default::default()
    };
    let stack = [("Prefix", stack_prefix.as_str())];
    let own = iam::requests_of("RunnerRole", &calls, &mut facts_from(INSTANCE));
    let verdicts = iam::evaluate(&stack, &[], &own);
    iam::assert_all_allowed(&verdicts);
    let others = iam::requests_of("RunnerRole", &calls, &mut facts_from("i-0ffffffffffffffff"));
    let verdicts = iam::evaluate(&stack, &[], &others);
    let ssm: Vec<&iam::Verdict> = verdicts
        .iter()
        .filter(|v| v.request.action.starts_with("ssm:"))
        .collect();
    assert_eq!(ssm.len(), 2);
    for verdict in ssm {
        assert!(!verdict.allowed(), "another instance: {verdict}");
    }
}
