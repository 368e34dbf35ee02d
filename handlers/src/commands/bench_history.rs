//! `jitr bench --history`: a year of synthetic history at scale (ADR-0023).
//! Writes it with the bulk writer, closes the books day by day, and measures
//! the writer, the replay into the runner views and the snapshots; prints the
//! audit commands to time on it.

use std::path::Path;
use std::time::{Duration, Instant};

use jitr_domain::{
    Command, Deadlines, FailureStage, InstanceId, InstanceSpec, JobRef, Market, RunnerEvent,
    RunnerState, StreamId, TerminationEvidence, TerminationReason, Timestamp, execute,
};
use jitr_infra::archive::LocalArchive;
use jitr_infra::{CommandId, EncodedAppend, EventStore, SqliteEventStore, StoreError};
use jitr_projections::RunnerViews;
use serde::Serialize;

use crate::app::archive::archive;
use crate::app::books::{close_books, snapshots};
use crate::commands::audit::{FeedItem, read_feed};

/// 2026-01-01T00:00:00Z: the synthetic year's first day.
pub const YEAR_START: Timestamp = Timestamp(1_767_225_600_000);
const DAY_MS: u64 = 86_400_000;
/// Repositories the runners' jobs come from.
pub const REPOSITORIES: u64 = 40;
/// Streams written per transaction.
const BATCH: usize = 16_000;

/// A pool of the synthetic fleet: name, instance type, vCPUs.
const POOLS: [(&str, &str, u32); 3] = [
    ("linux", "c5.xlarge", 4),
    ("large", "c5.4xlarge", 16),
    ("arm", "c7g.xlarge", 4),
];

/// A small deterministic generator (splitmix64), so a history is the same
/// on every machine.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The `n`th runner's life, started at `start`: most run their job and are
/// terminated; one in twelve fails after launch and is compensated 90 s later;
/// one in twenty fails before any launch (quota).
pub fn synthetic_life(n: u64, start: Timestamp) -> (StreamId, Vec<RunnerEvent>) {
    let r = mix(n);
    let (pool, instance_type, vcpus) = POOLS[match r % 10 {
        0..=5 => 0,
        6 | 7 => 1,
        _ => 2,
    }];
    let job = JobRef {
        owner: "acme".into(),
        repo: format!("repo-{:02}", (r >> 8) % REPOSITORIES),
        job_id: 10_000_000_000 + n,
        run_id: 1_000_000_000 + n / 4,
    };
    let stream = StreamId::for_job(&job, 1).expect("a valid repository");
    let mut state = RunnerState::default();
    let mut log = Vec::with_capacity(8);
    let mut t = start.0;
    let mut step = |state: &mut RunnerState, command: Command, after_ms: u64| {
        t += after_ms as i64;
        let (next, events) = execute(state, command, Timestamp(t)).expect("a valid synthetic life");
        *state = next;
        log.extend(events);
    };
    step(
        &mut state,
        Command::Request {
            job,
            attempt: 1,
            labels: vec!["self-hosted".into(), pool.into()],
            spec: InstanceSpec {
                instance_type: instance_type.into(),
                vcpus,
                image: "ami-0123456789abcdef0".into(),
                pool: Some(pool.into()),
                avoid_spot: Vec::new(),
                park: false,
            },
            deadlines: Deadlines::default(),
            installation: None,
            deployment: None,
        },
        0,
    );
    if (r >> 16) % 20 == 0 {
        step(
            &mut state,
            Command::Fail {
                stage: FailureStage::Launch,
                reason: "VcpuLimitExceeded".into(),
            },
            1_000,
        );
        return (stream, log);
    }
    let market = if (r >> 24) % 10 < 6 {
        Market::Spot
    } else {
        Market::OnDemand
    };
    step(&mut state, Command::IntendLaunch { market }, 500);
    let client_token = state.pending_launch().cloned().expect("pending");
    let instance_id = InstanceId(format!("i-{:017x}", r >> 4));
    step(
        &mut state,
        Command::RecordLaunch {
            client_token,
            instance_id: instance_id.clone(),
            instance_type: instance_type.into(),
            vcpus,
        },
        1_500,
    );
    if (r >> 32) % 12 == 0 {
        step(
            &mut state,
            Command::Fail {
                stage: FailureStage::Token,
                reason: "mint failed".into(),
            },
            20_000,
        );
        step(
            &mut state,
            Command::ConfirmTerminated {
                instance_id: Some(instance_id),
                evidence: TerminationEvidence::ReportedTerminated,
            },
            90_000,
        );
        return (stream, log);
    }
    step(
        &mut state,
        Command::RecordToken {
            runner_name: format!("jitr-{n}"),
            runner_id: Some(n),
        },
        35_000,
    );
    step(&mut state, Command::StartJob { job: None }, 5_000);
    step(
        &mut state,
        Command::CompleteJob {
            conclusion: Some("success".into()),
            job: None,
        },
        60_000 + (r >> 40) % 1_800_000,
    );
    step(
        &mut state,
        Command::Terminate {
            reason: TerminationReason::DrainGraceOver,
        },
        120_000,
    );
    step(
        &mut state,
        Command::ConfirmTerminated {
            instance_id: Some(instance_id),
            evidence: TerminationEvidence::ReportedTerminated,
        },
        5_000,
    );
    (stream, log)
}

/// What the history benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryReport {
    /// Events written.
    pub events: u64,
    /// Runners written.
    pub runners: u64,
    /// Days of history.
    pub days: u64,
    /// The writer: lives generated and written, events/s.
    pub writer_events_per_sec: f64,
    /// The log's size on disk, bytes per event.
    pub bytes_per_event: f64,
    /// Of the writer's time, seconds spent finishing the import (syncing
    /// the file, building the heads' indexes).
    pub finish_import_secs: f64,
    /// Replay from SQLite into the runner views, events/s.
    pub replay_events_per_sec: f64,
    /// Closing the books of every day (one pass over the log), events/s.
    pub close_books_events_per_sec: f64,
    /// Snapshots saved.
    pub snapshots: u64,
    /// The largest snapshot, bytes.
    pub largest_snapshot_bytes: u64,
    /// The last day's first moment (for `audit --since`), RFC 3339.
    pub last_day: String,
    /// The archive, when the history was archived as it was written.
    pub archive: Option<ArchiveFigures>,
}

/// What archiving during the write measured (ADR-0024).
#[derive(Clone, Debug, Serialize)]
pub struct ArchiveFigures {
    /// Days between archiver runs.
    pub every_days: u64,
    /// Retention, days.
    pub retention_days: u64,
    /// Events moved to the archive (and deleted from the log).
    pub events: u64,
    /// Parts written per table.
    pub parts: u64,
    /// Archiver runs (each closes the books first, then archives).
    pub runs: u64,
    /// Events archived per second of the runs.
    pub events_per_sec: f64,
    /// The archive's size, bytes per archived event (both tables).
    pub bytes_per_event: f64,
    /// Events left in the log.
    pub hot_events: u64,
}

/// What the generator hands the writer.
enum Piece {
    /// Lives to write.
    Lives(Vec<EncodedAppend>),
    /// Every life of this day (from 0) has been handed over.
    DayOver(u64),
}

/// A day's runners past the retention are archived this many days after it.
const BENCH_RETENTION_DAYS: u64 = 90;

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_bytes(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Writes about `events` events of history over `days` days into a new log
/// in `dir`, then measures it; with `archive_every`, every that many days the
/// days past a 90-day retention move to `dir/archive` as the write goes on
/// (ADR-0024). `progress` hears what it does.
pub async fn run(
    dir: &Path,
    events: u64,
    days: u64,
    archive_every: Option<u64>,
    mut progress: impl FnMut(String),
) -> Result<HistoryReport, StoreError> {
    let path = dir.join(super::LOG_FILE);
    let store = SqliteEventStore::open(&path)?;
    // Runners a day for the events asked, from the lives' mean length (a
    // sample of the same generator), so the history reaches `events`.
    let sample = 10_000;
    let mean = (0..sample)
        .map(|n| synthetic_life(n, YEAR_START).1.len() as f64)
        .sum::<f64>()
        / sample as f64;
    // 0.2 % over: the writer stops at `events`, minutes before the last
    // day's end, rather than short of it.
    let per_day = (events as f64 * 1.002 / mean / days as f64).ceil().max(1.0) as u64;
    let spacing = DAY_MS / per_day;
    let started = Instant::now();
    // One thread generates and encodes lives, this one writes them.
    // A new log, written as a bulk import (ADR-0023).
    store.begin_import()?;
    let (sender, batches) = std::sync::mpsc::sync_channel::<Piece>(4);
    let marks_days = archive_every.is_some();
    let generator = std::thread::spawn(move || -> Result<(), StoreError> {
        let (mut planned, mut n) = (0u64, 0u64);
        let mut batch = Vec::with_capacity(BATCH);
        'days: for day in 0..days {
            if marks_days && day > 0 {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if (!full.is_empty() && sender.send(Piece::Lives(full)).is_err())
                    || sender.send(Piece::DayOver(day - 1)).is_err()
                {
                    return Ok(());
                }
            }
            for i in 0..per_day {
                if planned >= events {
                    break 'days;
                }
                let start = YEAR_START.plus_ms(day * DAY_MS + i * spacing + mix(n) % spacing);
                let (stream, life) = synthetic_life(n, start);
                planned += life.len() as u64;
                batch.push(EncodedAppend::new(
                    &stream,
                    0,
                    RunnerState::default(),
                    &life,
                    &CommandId::new(format!("bench:{n}")),
                )?);
                n += 1;
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if sender.send(Piece::Lives(full)).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        if !batch.is_empty() {
            let _ = sender.send(Piece::Lives(batch));
        }
        Ok(())
    });
    let (mut written, mut runners) = (0u64, 0u64);
    let mut reported = 0u64;
    let objects = LocalArchive::new(dir.join("archive"));
    let mut archiving = Duration::ZERO;
    let (mut archived, mut parts, mut runs) = (0u64, 0u64, 0u64);
    for piece in batches {
        let batch = match piece {
            Piece::Lives(batch) => batch,
            Piece::DayOver(day) => {
                let every = archive_every.unwrap_or(u64::MAX).max(1);
                if (day + 1) % every == 0 && day + 1 > BENCH_RETENTION_DAYS {
                    let at = Instant::now();
                    let now = YEAR_START.plus_ms((day + 1) * DAY_MS);
                    let run = archive(
                        &store,
                        &objects,
                        now,
                        BENCH_RETENTION_DAYS * DAY_MS,
                        None,
                        |_| {},
                    )
                    .await
                    .map_err(|e| StoreError::Refused(format!("archiving: {e}")))?;
                    archiving += at.elapsed();
                    archived += run.parts.iter().map(|p| p.events).sum::<u64>();
                    parts += run.parts.len() as u64;
                    runs += 1;
                    progress(format!(
                        "archive: day {}, {archived} events archived, {:.0} events/s",
                        day + 1,
                        per_sec(archived, archiving)
                    ));
                }
                continue;
            }
        };
        written += store.import_new_streams(&batch)?;
        runners += batch.len() as u64;
        // Freed on another thread: the writing thread only writes.
        std::thread::spawn(move || drop(batch));
        if written / 10_000_000 > reported {
            reported = written / 10_000_000;
            progress(format!(
                "writer: {written} events, {:.0} events/s",
                per_sec(written, started.elapsed().saturating_sub(archiving))
            ));
        }
    }
    generator
        .join()
        .map_err(|_| StoreError::Refused("the generator panicked".into()))??;
    let finishing = Instant::now();
    store.finish_import()?;
    let finish_import_secs = finishing.elapsed().as_secs_f64();
    let writer = per_sec(written, started.elapsed().saturating_sub(archiving));
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.join(format!("{}-wal", super::LOG_FILE)))
            .map(|m| m.len())
            .unwrap_or(0);

    progress("replay: the log into the runner views".into());
    let started = Instant::now();
    let mut views = RunnerViews::default();
    let mut replayed = 0u64;
    read_feed(
        &store,
        0,
        |item| {
            if let FeedItem::Event(r) = item {
                views.apply(r.position, &r.stream, &r.event);
                replayed += 1;
            }
        },
        |_| {},
    )
    .await?;
    let replay = per_sec(replayed, started.elapsed());

    progress("closing the books of the days left".into());
    let started = Instant::now();
    let end = YEAR_START.plus_ms(days * DAY_MS);
    // The archiver's runs closed the books up to their last day already.
    let from = snapshots(&store).await?.last().map_or(0, |e| e.position);
    let saved = close_books(&store, end, |_| {}).await?;
    let close = per_sec(
        store.last_position().await?.saturating_sub(from),
        started.elapsed(),
    );
    let last_day = YEAR_START.plus_ms((days - 1) * DAY_MS);
    Ok(HistoryReport {
        events: written,
        runners,
        days,
        writer_events_per_sec: writer,
        bytes_per_event: bytes as f64 / written.max(1) as f64,
        finish_import_secs,
        replay_events_per_sec: replay,
        close_books_events_per_sec: close,
        snapshots: saved.len() as u64,
        largest_snapshot_bytes: saved.iter().map(|e| e.bytes).max().unwrap_or(0),
        last_day: super::report::rfc3339(last_day),
        archive: archive_every.map(|every| ArchiveFigures {
            every_days: every,
            retention_days: BENCH_RETENTION_DAYS,
            events: archived,
            parts,
            runs,
            events_per_sec: per_sec(archived, archiving),
            bytes_per_event: dir_bytes(&dir.join("archive")) as f64 / archived.max(1) as f64,
            hot_events: replayed,
        }),
    })
}

/// The report for people, with the commands that time the audits on it.
pub fn render(r: &HistoryReport, dir: &Path) -> String {
    format!(
        "history: {} events, {} runners over {} days\n\
         writer (generate + bulk write)   {:>12.0} events/s, {:.0} bytes/event on disk, \
         {:.1} s of it to sync and index\n\
         replay SQLite → runner views     {:>12.0} events/s\n\
         close the books (every day)      {:>12.0} events/s, {} snapshots, the largest {} bytes\n\
         {archive}\
         time the audits with:\n  \
         /usr/bin/time -f \"%e s, %M KB\" jitr audit --data-dir {dir} --since {day} --now {day_end}\n  \
         /usr/bin/time -f \"%e s, %M KB\" jitr audit --data-dir {dir} --since {day} --now {day_end} --full{archive_flag}\n",
        r.events,
        r.runners,
        r.days,
        r.writer_events_per_sec,
        r.bytes_per_event,
        r.finish_import_secs,
        r.replay_events_per_sec,
        r.close_books_events_per_sec,
        r.snapshots,
        r.largest_snapshot_bytes,
        dir = dir.display(),
        day = r.last_day,
        day_end = super::report::rfc3339(Timestamp(YEAR_START.0 + (r.days * DAY_MS) as i64)),
        archive = r.archive.as_ref().map_or(String::new(), |a| format!(
            "archive every {} days, {}-day retention: {} events in {} parts over {} runs, \
             {:.0} events/s, {:.1} bytes/event; {} events left in the log\n  \
             /usr/bin/time -f \"%e s, %M KB\" jitr archive report --data-dir {dir} --prices PRICES.toml\n",
            a.every_days,
            a.retention_days,
            a.events,
            a.parts,
            a.runs,
            a.events_per_sec,
            a.bytes_per_event,
            a.hot_events,
            dir = dir.display(),
        )),
        archive_flag = if r.archive.is_some() { " --archive" } else { "" },
    )
}
