//! `jitr snapshot`: closes the books (ADR-0023). Saves a snapshot of the
//! audit's books for every UTC day that is over and has none, beside the log;
//! `jitr audit --since` starts from the last one before its window.

use std::process::ExitCode;

use jitr_domain::Timestamp;
use jitr_infra::{CheckpointStore, EventStore, SqliteEventStore};

use crate::app::books::{SnapshotEntry, close_books, snapshots};

/// `jitr snapshot` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// Close the books of the AWS deployment (DynamoDB log) instead.
    #[arg(long)]
    aws: bool,
    #[command(flatten)]
    target: super::AwsTarget,
    /// Close the days that are over at this moment (RFC 3339) instead of now.
    #[arg(long, value_parser = super::parse_moment)]
    now: Option<Timestamp>,
    /// Only list the snapshots saved.
    #[arg(long)]
    list: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Closes the books (or lists the snapshots) and prints them.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(crate::runtime::now);
    if args.aws {
        #[cfg(feature = "aws")]
        {
            let config = args.target.settings().load().await;
            let names = jitr_aws::AwsNames::new(args.target.prefix);
            let store = jitr_aws::DynamoEventStore::new(&config, names.events_table());
            return run(&store, now, args.list, args.json).await;
        }
        #[cfg(not(feature = "aws"))]
        return Err(super::without_aws());
    }
    let path = args.data.path.join(super::LOG_FILE);
    if !path.is_file() {
        anyhow::bail!("no jitr log at {}", path.display());
    }
    let store = SqliteEventStore::open(&path)?;
    run(&store, now, args.list, args.json).await
}

async fn run<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    now: Timestamp,
    list: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let shown = if list {
        snapshots(store).await?
    } else {
        let total = store.last_position().await?;
        let bar = super::progress_bar(total, json);
        let saved = close_books(store, now, |p| bar.set_position(p)).await?;
        bar.finish_and_clear();
        saved
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else if shown.is_empty() {
        println!(
            "{}",
            if list {
                "no snapshot saved"
            } else {
                "the books are closed up to the last day that is over: nothing to save"
            }
        );
    } else {
        for e in &shown {
            println!("{}", render(e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn render(e: &SnapshotEntry) -> String {
    format!(
        "books/{}  position {:>12}  last event {}  {} open runners  {} bytes",
        e.day,
        e.position,
        super::report::rfc3339(e.last_at),
        e.open_runners,
        e.bytes
    )
}
