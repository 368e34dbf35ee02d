//! `jitr history`: the timeline of one runner.

use std::process::ExitCode;

use jitr_domain::{InstanceId, RunnerEvent, RunnerStatus, StreamId, fold};
use jitr_infra::{EventStore, StoreError};
use serde::Serialize;

use crate::commands::report::{describe, rfc3339};

/// One runner's life, as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    /// The runner.
    pub stream: StreamId,
    /// Its status now.
    pub status: RunnerStatus,
    /// Its instance, if one was launched.
    pub instance_id: Option<InstanceId>,
    /// Every event, in order.
    pub events: Vec<TimelineEntry>,
}

/// One event of a timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    /// Sequence in the stream.
    pub seq: u64,
    /// Global position in the log.
    pub position: u64,
    /// When, RFC 3339.
    pub at: String,
    /// The event as stored.
    pub event: RunnerEvent,
}

/// Whether `event` says its runner ran job `job_id`.
fn ran_job(event: &RunnerEvent, job_id: u64) -> bool {
    matches!(
        event,
        RunnerEvent::JobStarted { job: Some(j), .. } | RunnerEvent::JobCompleted { job: Some(j), .. }
            if j.job_id == job_id
    )
}

/// The timelines of the runners named by `key`: a stream id (one runner), an
/// instance id (its runner), or a workflow job id (every runner attempt
/// launched for that job, and the runner that ran it, found by reading the
/// log's feed). Empty when nothing matches.
pub async fn timelines<S: EventStore + ?Sized>(
    store: &S,
    key: &str,
) -> Result<Vec<Timeline>, StoreError> {
    let streams: Vec<StreamId> = if let Ok(stream) = StreamId::parse(key) {
        vec![stream]
    } else if let Ok(job_id) = key.parse::<u64>() {
        let mut found = std::collections::BTreeSet::new();
        let mut after = 0;
        loop {
            let page = store
                .read_all(after, crate::app::projector::FEED_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            // The runners launched for the job, and the runner GitHub gave it
            // (which may have been launched for another job).
            found.extend(
                page.into_iter()
                    .filter(|r| r.stream.job_id() == job_id || ran_job(&r.event, job_id))
                    .map(|r| r.stream),
            );
        }
        found.into_iter().collect()
    } else {
        store
            .stream_of_instance(&InstanceId(key.to_owned()))
            .await?
            .into_iter()
            .collect()
    };
    let mut out = Vec::new();
    for stream in streams {
        let recorded = store.read_stream(&stream).await?;
        if recorded.is_empty() {
            continue;
        }
        let state = fold(recorded.iter().map(|r| &r.event));
        out.push(Timeline {
            stream,
            status: state.status(),
            instance_id: state.instance().map(|i| i.id.clone()),
            events: recorded
                .into_iter()
                .map(|r| TimelineEntry {
                    seq: r.seq,
                    position: r.position,
                    at: rfc3339(r.event.at()),
                    event: r.event,
                })
                .collect(),
        });
    }
    Ok(out)
}

/// The timeline as text for people.
pub fn render(timeline: &Timeline) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let instance = timeline
        .instance_id
        .as_ref()
        .map_or_else(|| "no instance".to_string(), |i| i.to_string());
    let _ = writeln!(
        out,
        "{}  {}  {}",
        timeline.stream, timeline.status, instance
    );
    let start = timeline.events.first().map(|e| e.event.at());
    for e in &timeline.events {
        let offset = start.map_or(0, |s| e.event.at().millis_since(s));
        let _ = writeln!(
            out,
            "  {:>3}  {}  +{:<9} {:<21} {}",
            e.seq,
            e.at,
            format!("{:.1}s", offset as f64 / 1000.0),
            e.event.kind(),
            describe(&e.event)
        );
    }
    out
}

/// `jitr history` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// A stream id, an instance id or a job id.
    key: String,
}

/// Prints the timelines matching the key; exit 2 when nothing matches.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(&args.data.path)?;
    let key = &args.key;
    let timelines = timelines(&store, key).await?;
    if timelines.is_empty() {
        eprintln!(
            "jitr: no runner matches {key:?} in {}: give a stream id \
             (owner/repo#job_id#attempt), an instance id or a job id; `jitr audit` lists runners",
            args.data.path.join(super::LOG_FILE).display()
        );
        return Ok(ExitCode::from(2));
    }
    if args.json {
        // One runner: its timeline; a job with several attempts: a list.
        match timelines.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            many => println!("{}", serde_json::to_string_pretty(many)?),
        }
    } else {
        for timeline in &timelines {
            print!("{}", render(timeline));
        }
    }
    Ok(ExitCode::SUCCESS)
}
