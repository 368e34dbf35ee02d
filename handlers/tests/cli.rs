//! The `jitr` binary's operator contract: output and exit statuses.

use std::process::{Command, Output};

use jitr_domain::{Market, StreamId, Timestamp};
use jitr_infra::SqliteEventStore;

#[path = "support/aws.rs"]
mod aws;
#[path = "support/owed.rs"]
mod owed;

const T0: i64 = 1_777_868_520_000;

fn jitr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(args)
        .output()
        .expect("run jitr")
}

/// A log with one runner that failed after launch and was never compensated.
async fn leaked_log(dir: &std::path::Path) -> StreamId {
    let store = SqliteEventStore::open(dir.join("events.db")).unwrap();
    owed::runner_failed_after_launch(
        &store,
        ("acme", "widgets", 77),
        "i-0leak",
        None,
        Timestamp(T0),
    )
    .await
}

#[tokio::test]
async fn audit_fails_when_a_termination_is_owed_past_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    leaked_log(dir.path()).await;
    let data_dir = dir.path().to_str().unwrap();
    // 30 s after the failure: owed, but within the 60 s deadline.
    let within = jitr(&[
        "audit",
        "--data-dir",
        data_dir,
        "--now",
        "2026-05-04T04:22:30Z",
    ]);
    assert_eq!(within.status.code(), Some(0), "{within:?}");
    // Two minutes after: past the deadline.
    let past = jitr(&[
        "audit",
        "--data-dir",
        data_dir,
        "--json",
        "--now",
        "2026-05-04T04:24:00Z",
    ]);
    assert_eq!(past.status.code(), Some(1), "{past:?}");
    let report: serde_json::Value = serde_json::from_slice(&past.stdout).unwrap();
    assert_eq!(report["owed_past_deadline"], 1);
    assert_eq!(report["owed"][0]["instance_id"], "i-0leak");
    assert_eq!(report["owed"][0]["status"], "terminating");
    assert_eq!(report["by_status"]["terminating"], 1);
    assert_eq!(report["fleet"]["on_demand"]["vcpus"], 4);
}

#[tokio::test]
async fn history_finds_a_runner_by_stream_or_instance_and_exits_2_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let stream = leaked_log(dir.path()).await;
    let data_dir = dir.path().to_str().unwrap();
    for key in [stream.as_str(), "i-0leak", "77"] {
        let out = jitr(&["history", "--data-dir", data_dir, key]);
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.starts_with("acme/widgets#77#1  terminating  i-0leak"),
            "{text}"
        );
        assert!(
            text.contains("Failed") && text.contains("token: mint failed"),
            "{text}"
        );
    }
    let json = jitr(&["history", "--data-dir", data_dir, "--json", "i-0leak"]);
    let timeline: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(timeline["events"].as_array().unwrap().len(), 4);
    assert_eq!(timeline["events"][2]["event"]["type"], "Launched");

    let missing = jitr(&["history", "--data-dir", data_dir, "i-nothing"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no runner matches"));
}

#[test]
fn a_missing_log_is_a_clear_error_not_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = jitr(&["audit", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no jitr log at"));
    assert!(!dir.path().join("events.db").exists());
    // The archive's report adds the log's closed runners: without a log it
    // says how to read the archive alone.
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, "[on-demand]\n\"c5.xlarge\" = 0.17\n").unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let out = jitr(&[
        "archive",
        "report",
        "--data-dir",
        data_dir,
        "--prices",
        prices.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no jitr log at") && said.contains("--archive-only"),
        "{said}"
    );
    assert!(!dir.path().join("events.db").exists());
}

#[test]
fn the_demo_compensates_everything_it_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let out = jitr(&["demo", "--data-dir", data_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("no runner is owed a termination"), "{text}");
    let audit = jitr(&["audit", "--data-dir", data_dir.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    // Every stream the demo closed says on what evidence: its launched instances
    // were reported terminated, its unresolved launch found nothing.
    assert_eq!(report["closed_by"]["reported-terminated"], 2, "{report}");
    assert_eq!(report["closed_by"]["token-found-nothing"], 1, "{report}");
    assert_eq!(
        report["closed_by"].as_object().unwrap().len(),
        2,
        "{report}"
    );
    let again = jitr(&["demo", "--data-dir", data_dir.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a second demo must not mix logs"
    );
}

/// The files of a directory and their bytes.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Sets or clears the immutable attribute (even root cannot write such a file or
/// create one in such a directory): read-only media, as far as a test can get.
fn immutable(paths: &[&std::path::Path], on: bool) -> bool {
    paths.iter().all(|p| {
        Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(p)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn audit_and_history_read_the_log_without_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    assert_eq!(jitr(&["demo", "--data-dir", data]).status.code(), Some(0));
    let before = snapshot(&data_dir);
    assert_eq!(before.len(), 1, "a closed log is one file");
    // On writable media: the log's bytes stay as they were (nothing migrated, no
    // journal switch). SQLite may add its WAL index beside it, as every reader of
    // a log `serve` may be writing does; the write-ahead log itself stays empty.
    let audit = jitr(&["audit", "--data-dir", data]);
    assert_eq!(audit.status.code(), Some(0), "{audit:?}");
    let history = jitr(&["history", "--data-dir", data, "acme/widgets#1#1"]);
    assert_eq!(history.status.code(), Some(0), "{history:?}");
    let after = snapshot(&data_dir);
    assert!(after.contains(&before[0]), "reading changed events.db");
    for (name, bytes) in &after {
        match name.as_str() {
            "events.db" | "events.db-shm" => {}
            "events.db-wal" => assert!(bytes.is_empty(), "a reader wrote to the WAL"),
            other => panic!("reading created {other}"),
        }
    }
    // On read-only media (a copy of the log alone, file and directory immutable).
    for index in ["events.db-shm", "events.db-wal"] {
        let _ = std::fs::remove_file(data_dir.join(index));
    }
    let log = data_dir.join("events.db");
    if !immutable(&[&log, &data_dir], true) {
        eprintln!("chattr +i is not available here: the read-only media case was not run");
        return;
    }
    let audit = jitr(&["audit", "--data-dir", data]);
    let history = jitr(&["history", "--data-dir", data, "acme/widgets#1#1"]);
    assert!(immutable(&[&log, &data_dir], false));
    assert_eq!(audit.status.code(), Some(0), "{audit:?}");
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("runners"),
        "{audit:?}"
    );
    assert_eq!(history.status.code(), Some(0), "{history:?}");
    assert!(snapshot(&data_dir) == before);
}

#[cfg(feature = "aws")]
#[test]
fn init_twice_against_the_emulator_changes_nothing_the_second_time() {
    let prefix = aws::prefix("init");
    let run = || aws::jitr(&prefix, &["init", "--json"]);
    let first = run();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let kinds: Vec<&str> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "table", "queue", "alarm", "queue", "alarm", "queue", "alarm", "queue", "alarm", "bus",
            "rule"
        ]
    );
    assert!(
        first
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["setup"] == "created")
    );

    let second = run();
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    let second: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert!(
        second
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["setup"] == "unchanged"),
        "{second:#}"
    );
}

async fn dead_letter(queue: &dyn jitr_infra::Queue, n: usize) {
    for i in 0..n {
        queue.publish(&format!("job {i}"), None, &[]).await.unwrap();
        let got = queue
            .receive(1, std::time::Duration::from_secs(1))
            .await
            .unwrap();
        queue
            .dead_letter(&got[0], "malformed workflow_job payload")
            .await
            .unwrap();
    }
}

/// Seed criterion (c), embedded: a DLQ holding 6 messages makes doctor warn and
/// exit non-zero; 5 is still fine.
#[tokio::test]
async fn doctor_warns_about_a_dead_letter_queue_above_five() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    assert_eq!(
        jitr(&["demo", "--data-dir", data_dir]).status.code(),
        Some(0)
    );
    let queue = jitr_infra::LocalQueue::open(
        dir.path().join("queues.db"),
        "scaleup",
        10,
        std::time::Duration::from_secs(60),
        jitr_infra::system_clock(),
    )
    .unwrap();
    dead_letter(&queue, 5).await;
    let fine = jitr(&["doctor", "--data-dir", data_dir]);
    assert_eq!(
        fine.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fine.stdout)
    );
    dead_letter(&queue, 1).await;
    let warned = jitr(&["doctor", "--data-dir", data_dir]);
    let text = String::from_utf8_lossy(&warned.stdout);
    assert_eq!(warned.status.code(), Some(1), "{text}");
    assert!(
        text.contains("WARN") && text.contains("6 messages in the dead-letter queue of scaleup"),
        "{text}"
    );
    assert!(text.contains("malformed workflow_job payload"), "{text}");
    // Every queue's dead letters are checked, EC2's events' too.
    let ec2_events = jitr_infra::LocalQueue::open(
        dir.path().join("queues.db"),
        "ec2-events",
        10,
        std::time::Duration::from_secs(60),
        jitr_infra::system_clock(),
    )
    .unwrap();
    dead_letter(&ec2_events, 6).await;
    let text =
        String::from_utf8_lossy(&jitr(&["doctor", "--data-dir", data_dir]).stdout).into_owned();
    assert!(
        text.contains(
            "6 messages in the dead-letter queue of ec2-events (more than 5): EC2 state changes not recorded"
        ),
        "{text}"
    );
}

/// Seed criterion (c), on AWS (moto): the same through SQS, with the alarms that
/// `jitr init` created.
#[cfg(feature = "aws")]
#[tokio::test]
async fn doctor_warns_about_an_sqs_dead_letter_queue_above_five() {
    let endpoint = aws::endpoint();
    let prefix = aws::prefix("doctor");
    let aws = |args: &[&str]| {
        aws::jitr_at(&prefix, args)
            .env("JITR_WEBHOOK_SECRET", "set")
            .output()
            .unwrap()
    };
    assert_eq!(aws(&["init"]).status.code(), Some(0));
    let healthy = aws(&["doctor", "--aws"]);
    assert_eq!(
        healthy.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    let config = jitr_aws::AwsSettings::emulator(&endpoint).load().await;
    let queue = jitr_aws::SqsQueue::find(&config, &format!("{prefix}-scaleup"))
        .await
        .unwrap()
        .unwrap();
    dead_letter(&queue, 6).await;
    let warned = aws(&["doctor", "--aws"]);
    let text = String::from_utf8_lossy(&warned.stdout);
    assert_eq!(warned.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "6 messages in the dead-letter queue of {prefix}-scaleup"
        )),
        "{text}"
    );
    assert!(text.contains("malformed workflow_job payload"), "{text}");
}

#[tokio::test]
async fn audit_live_lists_instances_the_log_does_not_know() {
    use jitr_infra::Compute;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("sim");
    let data = data_dir.to_str().unwrap();
    let sim = jitr(&[
        "simulate",
        "--scenario",
        "duplicate-storm",
        "--seed",
        "3",
        "--data-dir",
        data,
    ]);
    assert_eq!(sim.status.code(), Some(0), "{sim:?}");
    let clean = jitr(&["audit", "--data-dir", data, "--live", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(clean.status.code(), Some(0), "{report:#}");
    assert_eq!(
        report["live_check"]["unknown_instances"],
        serde_json::json!([])
    );

    // An instance started behind jitr's back (a stray RunInstances).
    let cloud = jitr_infra::SimCloud::open(
        data_dir.join("cloud.db"),
        jitr_infra::SimSettings::default(),
        jitr_infra::system_clock(),
    )
    .unwrap();
    let stream = StreamId::parse("acme/ghost#1#1").unwrap();
    let stray = cloud
        .launch(&jitr_infra::LaunchSpec {
            client_token: jitr_domain::ClientToken::derive(&stream, 1),
            stream,
            market: Market::Spot,
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
            image: "ami".into(),
            user_data: None,
            settings: Default::default(),
        })
        .await
        .unwrap();
    // Judge a moment well after the launch grace.
    let later = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(600),
    )
    .to_string();
    let leaked = jitr(&[
        "audit",
        "--data-dir",
        data,
        "--live",
        "--json",
        "--now",
        &later,
    ]);
    let report: serde_json::Value = serde_json::from_slice(&leaked.stdout).unwrap();
    assert_eq!(leaked.status.code(), Some(1), "{report:#}");
    assert_eq!(
        report["live_check"]["unknown_instances"],
        serde_json::json!([stray.instance_id.0])
    );
}

/// A build without the `aws` feature (the README's quick start) says how to get
/// AWS support instead of failing obscurely.
#[cfg(not(feature = "aws"))]
#[test]
fn aws_commands_in_an_embedded_build_say_how_to_get_aws_support() {
    for args in [
        &["serve", "--aws"][..],
        &["audit", "--aws"],
        &["doctor", "--aws"],
        &["init"],
        &["lambda", "scaleup"],
    ] {
        let out = jitr(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("built without AWS support") && stderr.contains("--features aws"),
            "{args:?}: {stderr}"
        );
    }
}

/// Issue 11: `jitr config check` passes the example pool file and names the
/// line and problem of a broken one (exit 2).
#[test]
fn config_check_passes_the_example_and_names_the_line_of_a_mistake() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/pools.example.toml");
    let out = jitr(&["config", "check", example]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 pools, valid"), "{text}");
    assert!(text.contains("linux-arm64"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("pools.toml");
    let original = std::fs::read_to_string(example).unwrap();
    let mistaken = original.replacen("vcpus = 16", "vcpus = 16\nmemory = 32", 1);
    std::fs::write(&broken, &mistaken).unwrap();
    let out = jitr(&["config", "check", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = mistaken
        .lines()
        .position(|l| l.starts_with("memory"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("pools.toml:{line}:")) && err.contains("unknown field `memory`"),
        "{err}"
    );
}

/// Issue 24: `jitr config check --aws` refuses a pool that would launch
/// without an instance profile (its runners could not read their JIT config),
/// unless the deployment gives one (`JITR_INSTANCE_PROFILE`, as the template
/// does).
#[test]
fn config_check_for_aws_refuses_a_pool_without_an_instance_profile() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/pools.example.toml");
    let check = |file: &str, stack_profile: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jitr"));
        command.args(["config", "check", "--aws", file]);
        command.env_remove("JITR_INSTANCE_PROFILE");
        if let Some(profile) = stack_profile {
            command.env("JITR_INSTANCE_PROFILE", profile);
        }
        command.output().expect("run jitr")
    };
    let out = check(example, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("pools.toml");
    let original = std::fs::read_to_string(example).unwrap();
    let without: String = original
        .lines()
        .filter(|l| !l.trim_start().starts_with("instance_profile"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&bare, &without).unwrap();
    let out = check(bare.to_str().unwrap(), None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("linux-arm64") && err.contains("cannot read their JIT config"),
        "{err}"
    );
    // Without --aws the file is still valid; with the stack's profile too.
    let out = jitr(&["config", "check", bare.to_str().unwrap()]);
    assert!(out.status.success());
    let out = check(bare.to_str().unwrap(), Some("jitr-runner"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 11: `jitr bootstrap-script --config FILE --pool NAME` prints the user
/// data that pool's instances get; an unknown pool is named with the ones there
/// are (exit 2).
#[test]
fn bootstrap_script_prints_a_pools_user_data() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/pools.example.toml");
    let out = jitr(&[
        "bootstrap-script",
        "--config",
        example,
        "--pool",
        "linux-arm64",
    ]);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(script.starts_with("#!/bin/bash\n"), "{script}");
    assert!(
        script.contains("JITR_RUNNER_DIR='/opt/actions-runner-arm64'"),
        "{script}"
    );
    let out = jitr(&["bootstrap-script", "--config", example, "--pool", "gpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pool \"gpu\" (it has: linux-arm64"));
}

/// `jitr package` writes a zip whose one entry, `bootstrap`, is the binary
/// (mode 755, an ELF for the host's architecture), read back by Python's
/// `zipfile` (an independent reader); another architecture is refused.
#[test]
fn package_writes_a_zip_whose_bootstrap_is_the_binary_for_its_architecture() {
    let (arch, machine, other) = match std::env::consts::ARCH {
        "x86_64" => ("x86_64", 0x3Eu16, "arm64"),
        "aarch64" => ("arm64", 0xB7, "x86_64"),
        host => panic!("no Lambda architecture for {host}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("jitr-lambda.zip");
    // A host program whose glibc symbols Lambda's runtime has (Debian 12's
    // `env`: up to 2.34). The host's own jitr build may need more (DataFusion
    // links `hypot@GLIBC_2.35`): deployments build it against 2.34 (zigbuild,
    // docs/deploy.md), which this host cannot do.
    let binary = "/usr/bin/env";
    let zip_arg = zip.to_str().unwrap();
    let out = jitr(&[
        "package", "--binary", binary, "--arch", arch, "--out", zip_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("aws cloudformation deploy"), "{printed}");
    assert!(
        printed.contains(&format!("Architecture={arch}")),
        "{printed}"
    );
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             z = zipfile.ZipFile(sys.argv[1])\n\
             assert z.testzip() is None\n\
             (info,) = z.infolist()\n\
             data = z.read(info)\n\
             print(info.filename, oct(info.external_attr >> 16), len(data), \
                   int.from_bytes(data[18:20], 'little'), data == open(sys.argv[2], 'rb').read())",
            zip_arg,
            binary,
        ])
        .output()
        .expect("python3 (the CI installs it for moto)");
    assert!(check.status.success(), "{check:?}");
    let read = String::from_utf8_lossy(&check.stdout);
    let size = std::fs::metadata(binary).unwrap().len();
    assert_eq!(
        read.trim(),
        format!("bootstrap 0o100755 {size} {machine} True")
    );
    let refused = jitr(&[
        "package", "--binary", binary, "--arch", other, "--out", zip_arg,
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&format!("built for {arch}, not {other}")),
        "{said}"
    );
}

/// `jitr prices` reuses a prices file that is young enough and prices every
/// type asked for, without asking AWS; one that lacks a type is written
/// again from AWS, and a failure there leaves the file as it was.
#[test]
fn prices_reuses_a_fresh_file_and_asks_aws_only_for_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.toml");
    let text = "[on-demand]\n\"c5.xlarge\" = 0.17\n\n[spot]\n\"c5.xlarge\" = 0.07\n";
    std::fs::write(&file, text).unwrap();
    let out = file.to_str().unwrap();
    // Nothing answers on this endpoint: a request to it would fail.
    let nowhere = ["--endpoint", "http://127.0.0.1:9", "--region", "us-east-1"];
    let mut args = vec!["prices", "--out", out, "--instance-type", "c5.xlarge"];
    args.extend(nowhere);
    let reused = jitr(&args);
    assert!(
        reused.status.success(),
        "{}",
        String::from_utf8_lossy(&reused.stderr)
    );
    assert!(String::from_utf8_lossy(&reused.stderr).contains("reused"));
    assert!(String::from_utf8_lossy(&reused.stdout).contains("\"c5.xlarge\" = 0.17"));

    let mut args = vec!["prices", "--out", out, "--instance-type", "m5.large"];
    args.extend(nowhere);
    let asked = jitr(&args);
    assert!(!asked.status.success());
    // (A build without AWS support says so instead.)
    let why = String::from_utf8_lossy(&asked.stderr);
    assert!(
        why.contains("Price List") || why.contains("without AWS support"),
        "{why}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    let stale = jitr(
        &[
            "prices",
            "--out",
            out,
            "--instance-type",
            "c5.xlarge",
            "--max-age",
            "0s",
        ]
        .into_iter()
        .chain(nowhere)
        .collect::<Vec<_>>(),
    );
    assert!(
        !stale.status.success(),
        "a file older than --max-age is not reused"
    );
}
