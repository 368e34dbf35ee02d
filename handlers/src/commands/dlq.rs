//! `jitr dlq list | show | redrive | purge`: the dead-letter queues of the
//! scale-up, lifecycle, compensation and EC2-events queues, on the embedded
//! default or on AWS — each message's reason and receive count, back to its
//! queue after a fix (body and attributes kept), or deleted on confirmation.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use jitr_infra::{DeadLetter, Queue};
use serde::Serialize;

use super::Place;
use crate::app::QUEUE_NAMES as QUEUES;

/// `jitr dlq` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// List dead letters with their reason and receive count (every queue, or
    /// QUEUE's).
    List {
        /// scaleup, lifecycle, compensation or ec2-events.
        queue: Option<String>,
        /// At most this many per queue.
        #[arg(long, default_value_t = 50)]
        max: usize,
        /// Where the queues are.
        #[command(flatten)]
        place: Place,
    },
    /// Print one dead letter whole: reason, receive count, attributes, body.
    Show {
        /// scaleup, lifecycle, compensation or ec2-events.
        queue: String,
        /// The message id `list` printed.
        id: String,
        /// Where the queues are.
        #[command(flatten)]
        place: Place,
    },
    /// Move dead letters back to their queue, as they were (all, or --id's),
    /// once what made them fail is fixed.
    Redrive {
        /// scaleup, lifecycle, compensation or ec2-events.
        queue: String,
        /// Only these message ids (repeatable); all when none.
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Where the queues are.
        #[command(flatten)]
        place: Place,
    },
    /// Delete every dead letter of QUEUE. Refused without --yes.
    Purge {
        /// scaleup, lifecycle, compensation or ec2-events.
        queue: String,
        /// Yes, delete them: they are gone for good.
        #[arg(long)]
        yes: bool,
        /// Where the queues are.
        #[command(flatten)]
        place: Place,
    },
}

#[derive(Serialize)]
struct Listed<'a> {
    queue: &'a str,
    id: &'a str,
    reason: &'a str,
    receive_count: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<&'a std::collections::HashMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
}

fn checked(queue: &str) -> anyhow::Result<&str> {
    QUEUES
        .iter()
        .copied()
        .find(|q| *q == queue)
        .ok_or_else(|| anyhow::anyhow!("no queue {queue:?}: one of {}", QUEUES.join(", ")))
}

/// Opens queue `name` where `place` says.
async fn open(place: &Place, name: &str) -> anyhow::Result<Arc<dyn Queue>> {
    if place.aws {
        #[cfg(feature = "aws")]
        {
            let config = place.target.settings().load().await;
            let full = format!("{}-{name}", place.target.prefix);
            let queue = anyhow::Context::with_context(
                jitr_aws::SqsQueue::find(&config, &full).await?,
                || format!("no queue {full} (or its DLQ): run `jitr init`"),
            )?;
            return Ok(Arc::new(queue));
        }
        #[cfg(not(feature = "aws"))]
        return Err(super::without_aws());
    }
    let path = place.data.path.join("queues.db");
    if !path.is_file() {
        bail!(
            "no queues at {}: point --data-dir at the directory `jitr serve` uses",
            path.display()
        );
    }
    let queue = jitr_infra::LocalQueue::open(
        &path,
        name,
        jitr_infra::DEFAULT_MAX_RECEIVES,
        Duration::from_secs(60),
        jitr_infra::system_clock(),
    )?;
    Ok(Arc::new(queue))
}

fn one_line(text: &str, width: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > width {
        format!("{}…", flat.chars().take(width - 1).collect::<String>())
    } else {
        flat
    }
}

/// Runs a `jitr dlq` subcommand; exit 0 done, 2 refused or failed.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    match args {
        Args::List { queue, max, place } => {
            let names: Vec<&str> = match &queue {
                Some(q) => vec![checked(q)?],
                None => QUEUES.to_vec(),
            };
            let mut listed: Vec<(&str, DeadLetter)> = Vec::new();
            for name in names {
                for letter in open(&place, name).await?.list_dead_letters(max).await? {
                    listed.push((name, letter));
                }
            }
            if place.json {
                let rows: Vec<Listed> = listed
                    .iter()
                    .map(|(q, l)| Listed {
                        queue: q,
                        id: &l.id,
                        reason: &l.reason,
                        receive_count: l.receive_count,
                        attributes: None,
                        body: None,
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if listed.is_empty() {
                println!("no dead letters");
            } else {
                println!("{:<13} {:<38} {:>8}  reason", "queue", "id", "receives");
                for (q, l) in &listed {
                    println!(
                        "{q:<13} {:<38} {:>8}  {}",
                        l.id,
                        l.receive_count,
                        one_line(&l.reason, 100)
                    );
                }
                println!(
                    "\n`jitr dlq show QUEUE ID` prints one whole; `jitr dlq redrive QUEUE` moves them back once fixed"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Args::Show { queue, id, place } => {
            let name = checked(&queue)?;
            let letters = open(&place, name)
                .await?
                .list_dead_letters(usize::MAX)
                .await?;
            let Some(letter) = letters.iter().find(|l| l.id == id) else {
                eprintln!("no dead letter {id} in {name}: `jitr dlq list {name}` lists them");
                return Ok(ExitCode::from(2));
            };
            if place.json {
                let row = Listed {
                    queue: name,
                    id: &letter.id,
                    reason: &letter.reason,
                    receive_count: letter.receive_count,
                    attributes: Some(&letter.attributes),
                    body: Some(&letter.body),
                };
                println!("{}", serde_json::to_string_pretty(&row)?);
            } else {
                println!("queue:      {name}");
                println!("id:         {}", letter.id);
                println!("reason:     {}", letter.reason);
                println!("receives:   {}", letter.receive_count);
                let mut attributes: Vec<_> = letter.attributes.iter().collect();
                attributes.sort();
                for (k, v) in attributes {
                    println!("attribute:  {k} = {v}");
                }
                println!("body:\n{}", letter.body);
            }
            Ok(ExitCode::SUCCESS)
        }
        Args::Redrive { queue, ids, place } => {
            let name = checked(&queue)?;
            let ids = (!ids.is_empty()).then_some(ids);
            let moved = open(&place, name).await?.redrive(ids.as_deref()).await?;
            if let Some(ids) = &ids
                && (moved as usize) < ids.len()
            {
                println!(
                    "moved {moved} of the {} named dead letters back to {name}: the others are not in its dead-letter queue",
                    ids.len()
                );
                return Ok(ExitCode::from(2));
            }
            println!("moved {moved} dead letters back to {name}");
            Ok(ExitCode::SUCCESS)
        }
        Args::Purge { queue, yes, place } => {
            let name = checked(&queue)?;
            if !yes {
                eprintln!(
                    "refused: purging deletes every dead letter of {name} for good; \
                     look at them first (`jitr dlq list {name}`), then add --yes"
                );
                return Ok(ExitCode::from(2));
            }
            let purged = open(&place, name).await?.purge_dead_letters().await?;
            println!("deleted {purged} dead letters of {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
