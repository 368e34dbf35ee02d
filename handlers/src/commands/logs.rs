//! `jitr logs RUNNER`: what a runner's instance wrote to its console (EC2
//! `GetConsoleOutput`, the latest; the simulator's stand-in console on the
//! embedded default). jitr's bootstrap logs every step there — no JIT config
//! yet, the config read (its length, never its text), the runner started, the
//! power-off — so a runner that failed at boot says why.

use std::process::ExitCode;

use jitr_infra::{Compute, EventStore};

use super::history::{Timeline, timelines};

/// `jitr logs` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// Read the AWS deployment (DynamoDB log, EC2) instead of a data directory.
    #[arg(long)]
    aws: bool,
    #[command(flatten)]
    target: super::AwsTarget,
    /// Only the last N lines of each console.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// A stream id, an instance id or a job id (as `jitr history` takes).
    key: String,
}

/// Prints the console of each runner matching the key; exit 2 when nothing
/// matches.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    if args.aws {
        #[cfg(feature = "aws")]
        {
            let config = args.target.settings().load().await;
            let names = jitr_aws::AwsNames::new(args.target.prefix.clone());
            let store = jitr_aws::DynamoEventStore::new(&config, names.events_table());
            let compute =
                jitr_aws::Ec2Compute::new(&config, vec![]).with_deployment(names.prefix());
            return print_logs(&store, &compute, &args.key, args.tail, "the events table").await;
        }
        #[cfg(not(feature = "aws"))]
        return Err(super::without_aws());
    }
    let store = super::open_existing(&args.data.path)?;
    let sim = super::open_sim_cloud(&args.data.path, "jitr logs")?;
    let log = args.data.path.join(super::LOG_FILE);
    print_logs(
        &store,
        &sim,
        &args.key,
        args.tail,
        &log.display().to_string(),
    )
    .await
}

async fn print_logs<S: EventStore + ?Sized>(
    store: &S,
    compute: &dyn Compute,
    key: &str,
    tail: Option<usize>,
    log: &str,
) -> anyhow::Result<ExitCode> {
    let found = timelines(store, key).await?;
    if found.is_empty() {
        eprintln!(
            "jitr: no runner matches {key:?} in {log}: give a stream id \
             (owner/repo#job_id#attempt), an instance id or a job id; `jitr audit` lists runners"
        );
        return Ok(ExitCode::from(2));
    }
    for timeline in &found {
        print!("{}", console_of(compute, timeline, tail).await?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One runner's console as `jitr logs` prints it: a heading, then the text
/// (its last `tail` lines when given).
pub async fn console_of(
    compute: &dyn Compute,
    timeline: &Timeline,
    tail: Option<usize>,
) -> anyhow::Result<String> {
    let mut out = format!("== {} ({})", timeline.stream, timeline.status);
    let Some(instance) = &timeline.instance_id else {
        out.push_str(": no instance was launched, so there is no console to read\n");
        return Ok(out);
    };
    out.push_str(&format!(", instance {instance}\n"));
    match compute.console_output(instance).await? {
        Some(console) => {
            let text = match tail {
                Some(n) => console.tail(n) + "\n",
                None => console.text,
            };
            out.push_str(&text);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        None => out.push_str(&format!(
            "(no console output for {instance}: EC2 captures it after the instance boots, \
             and keeps it only for a while after termination)\n"
        )),
    }
    Ok(out)
}
