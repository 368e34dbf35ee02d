//! `jitr send-webhook`: a signed `workflow_job` delivery, as GitHub would send it,
//! to try `jitr serve`.

use std::process::ExitCode;

use anyhow::Context;

use crate::app::webhook::{sample_payload, sign};

/// `jitr send-webhook` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhook")]
    url: String,
    /// The webhook secret.
    #[arg(long, env = "JITR_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// `queued`, `in_progress` or `completed`.
    #[arg(long, default_value = "queued")]
    action: String,
    /// Repository as owner/name.
    #[arg(long, default_value = "acme/widgets")]
    repo: String,
    /// The workflow job id.
    #[arg(long)]
    job: u64,
    /// Labels (comma separated).
    #[arg(long, default_value = "self-hosted,linux")]
    labels: String,
    /// The runner that took the job (in_progress, completed).
    #[arg(long)]
    runner: Option<String>,
}

/// Posts the delivery and prints the answer; exit 1 unless it was 2xx.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let (owner, name) = args
        .repo
        .split_once('/')
        .context("--repo must be owner/name")?;
    let labels: Vec<String> = args
        .labels
        .split(',')
        .map(|l| l.trim().to_owned())
        .collect();
    let body = sample_payload(
        &args.action,
        owner,
        name,
        args.job,
        &labels,
        args.runner.as_deref(),
    );
    let delivery = format!(
        "jitr-cli-{}-{}-{}",
        args.action,
        args.job,
        std::process::id()
    );
    let response = reqwest::Client::new()
        .post(&args.url)
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", &delivery)
        .header(
            "X-Hub-Signature-256",
            sign(args.secret.as_bytes(), body.as_bytes()),
        )
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("posting to {}", args.url))?;
    let status = response.status();
    println!(
        "{} {}",
        status.as_u16(),
        response.text().await.unwrap_or_default()
    );
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
