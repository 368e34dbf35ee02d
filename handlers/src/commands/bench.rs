//! `jitr bench`: the core's throughput and latency figures, printed.
//!
//! Run it in release mode: `cargo run --release -p jitr-handlers -- bench`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use jitr_domain::{
    Command, Deadlines, InstanceId, InstanceSpec, JobRef, Market, RunnerEvent, RunnerState,
    StreamId, TerminationEvidence, TerminationReason, Timestamp, execute, fold,
};

use jitr_infra::{CommandId, EventStore, SqliteEventStore, StoreError};
use serde::Serialize;

use crate::commands::audit::replay;
use jitr_projections::books::Window;

/// Sizes of one benchmark run.
#[derive(Clone, Copy, Debug)]
pub struct BenchSizes {
    /// Events folded in memory.
    pub fold_events: u64,
    /// Events written to SQLite and replayed.
    pub replay_events: u64,
    /// Single appends timed.
    pub appends: u64,
}

/// The figures.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Events folded in memory by `evolve`.
    pub fold_events: u64,
    /// `evolve` throughput, events/s.
    pub fold_events_per_sec: f64,
    /// Projection (`RunnerViews::apply`) throughput in memory, events/s.
    pub views_events_per_sec: f64,
    /// Events in the SQLite log replayed.
    pub replay_events: u64,
    /// Replay from SQLite into the runner views, events/s.
    pub replay_events_per_sec: f64,
    /// Single appends timed.
    pub appends: u64,
    /// Append latency median, µs.
    pub append_p50_us: f64,
    /// Append latency 99th percentile, µs.
    pub append_p99_us: f64,
    /// Append latency max, µs.
    pub append_max_us: f64,
}

/// A whole runner life, eight events, as the decider writes it.
pub fn lifecycle(job_id: u64, start: Timestamp) -> (StreamId, Vec<RunnerEvent>) {
    let job = JobRef {
        owner: "bench".into(),
        repo: "fleet".into(),
        job_id,
        run_id: job_id / 8,
    };
    let stream = StreamId::for_job(&job, 1).expect("a stream id of a valid repository");
    let mut state = RunnerState::default();
    let mut log = Vec::with_capacity(8);
    let mut step = |state: &mut RunnerState, command: Command, secs: u64| {
        let (next, events) = execute(state, command, start.plus_ms(secs * 1000))
            .expect("the bench lifecycle is valid");
        *state = next;
        log.extend(events);
    };
    step(
        &mut state,
        Command::Request {
            job,
            attempt: 1,
            labels: vec!["self-hosted".into(), "linux".into()],
            spec: InstanceSpec {
                instance_type: "c5.xlarge".into(),
                vcpus: 4,
                image: "ami-bench".into(),
                pool: None,
                avoid_spot: Vec::new(),
                park: false,
            },
            deadlines: Deadlines::default(),
            installation: None,
            deployment: None,
        },
        0,
    );
    step(
        &mut state,
        Command::IntendLaunch {
            market: Market::Spot,
        },
        1,
    );
    let client_token = state.pending_launch().cloned().expect("pending");
    let instance_id = InstanceId(format!("i-{job_id:017x}"));
    step(
        &mut state,
        Command::RecordLaunch {
            client_token,
            instance_id: instance_id.clone(),
            instance_type: "c5.xlarge".into(),
            vcpus: 4,
        },
        3,
    );
    step(
        &mut state,
        Command::RecordToken {
            runner_name: format!("jitr-bench-{job_id}"),
            runner_id: None,
        },
        5,
    );
    step(&mut state, Command::StartJob { job: None }, 40);
    step(
        &mut state,
        Command::CompleteJob {
            conclusion: Some("success".into()),
            job: None,
        },
        400,
    );
    step(
        &mut state,
        Command::Terminate {
            reason: TerminationReason::DrainGraceOver,
        },
        520,
    );
    step(
        &mut state,
        Command::ConfirmTerminated {
            instance_id: Some(instance_id),
            evidence: TerminationEvidence::ReportedTerminated,
        },
        525,
    );
    (stream, log)
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Runs the benchmarks in `dir` (a scratch directory for the SQLite logs).
pub async fn run(
    dir: &std::path::Path,
    sizes: BenchSizes,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, StoreError> {
    let t0 = Timestamp(1_777_868_520_000);

    progress("fold: generating histories");
    let histories: Vec<(StreamId, Vec<RunnerEvent>)> = (0..sizes.fold_events.div_ceil(8))
        .map(|j| lifecycle(j, t0.plus_ms(j)))
        .collect();
    let fold_events: u64 = histories.iter().map(|(_, h)| h.len() as u64).sum();
    progress("fold: evolve");
    let start = Instant::now();
    let mut closed = 0u64;
    for (_, history) in &histories {
        closed += u64::from(fold(history).terminated_at.is_some());
    }
    let fold_elapsed = start.elapsed();
    assert_eq!(closed, histories.len() as u64, "every bench runner closes");
    progress("fold: runner views");
    let start = Instant::now();
    let mut views = jitr_projections::RunnerViews::default();
    let mut position = 0;
    for (stream, history) in &histories {
        for event in history {
            position += 1;
            views.apply(position, stream, event);
        }
    }
    let views_elapsed = start.elapsed();
    drop(histories);

    progress("append: timing single appends");
    let store = SqliteEventStore::open(dir.join("append-bench.db"))?;
    let mut latencies = Vec::with_capacity(sizes.appends as usize);
    let mut job = 0u64;
    'outer: loop {
        let (stream, history) = lifecycle(job, t0);
        for (i, event) in history.iter().enumerate() {
            if latencies.len() as u64 >= sizes.appends {
                break 'outer;
            }
            let id = CommandId::new(format!("{stream}:{i}"));
            let start = Instant::now();
            store
                .append(&stream, i as u64, std::slice::from_ref(event), &id)
                .await?;
            latencies.push(start.elapsed());
        }
        job += 1;
    }
    latencies.sort();

    progress("replay: writing the log");
    let store = SqliteEventStore::open(dir.join("replay-bench.db"))?;
    let mut written = 0u64;
    let mut job = 0u64;
    while written < sizes.replay_events {
        let (stream, history) = lifecycle(job, t0.plus_ms(job));
        store
            .append(&stream, 0, &history, &CommandId::new(stream.to_string()))
            .await?;
        written += history.len() as u64;
        job += 1;
    }
    progress("replay: reading it back into the views");
    let start = Instant::now();
    let replayed = replay(&store, Window::default(), None, |_| {})
        .await?
        .books
        .events;
    let replay_elapsed = start.elapsed();

    Ok(BenchReport {
        fold_events,
        fold_events_per_sec: per_sec(fold_events, fold_elapsed),
        views_events_per_sec: per_sec(fold_events, views_elapsed),
        replay_events: replayed,
        replay_events_per_sec: per_sec(replayed, replay_elapsed),
        appends: latencies.len() as u64,
        append_p50_us: percentile(&latencies, 0.50),
        append_p99_us: percentile(&latencies, 0.99),
        append_max_us: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
    })
}

/// The figures as text.
pub fn render(r: &BenchReport) -> String {
    format!(
        "fold (evolve, in memory)   {:>10} events  {:>12.0} events/s\n\
         runner views (in memory)   {:>10} events  {:>12.0} events/s\n\
         replay from SQLite → views {:>10} events  {:>12.0} events/s\n\
         SQLite append (1 event)    {:>10} appends p50 {:.0} µs  p99 {:.0} µs  max {:.0} µs\n",
        r.fold_events,
        r.fold_events_per_sec,
        r.fold_events,
        r.views_events_per_sec,
        r.replay_events,
        r.replay_events_per_sec,
        r.appends,
        r.append_p50_us,
        r.append_p99_us,
        r.append_max_us
    )
}

/// The leak window measured in `serve` on the simulator.
#[derive(Clone, Debug, Serialize)]
pub struct LeakWindowReport {
    /// Runners failed after launch.
    pub runners: usize,
    /// Failure recorded → `Terminated` recorded, median, ms.
    pub p50_ms: u64,
    /// 99th percentile, ms.
    pub p99_ms: u64,
    /// Worst, ms.
    pub max_ms: u64,
    /// Signed `queued` webhook → `TokenMinted`, median, ms.
    pub webhook_to_token_p50_ms: u64,
}

fn percentile_ms(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `jitr serve` (embedded) in this process, sends `runners` signed `queued`
/// webhooks, fails every runner once it is ready (a `Failed` written to the log,
/// as any handler would), and measures how long each instance stays owed a
/// termination: from `Failed` to `Terminated`, both as recorded in the log.
pub async fn leak_window(
    dir: &std::path::Path,
    runners: usize,
) -> Result<LeakWindowReport, crate::runtime::serve::ServeError> {
    use crate::app::dispatch::dispatch;
    use crate::app::webhook::{sample_payload, sign};
    use crate::runtime::serve::{self, Cadence};
    use jitr_domain::{FailureStage, RunnerStatus};
    use jitr_infra::SimSettings;

    let secret = b"bench-secret".to_vec();
    let settings = SimSettings {
        on_demand_vcpus: 4 * runners as u32 + 4,
        spot_vcpus: 4 * runners as u32 + 4,
        ..SimSettings::default()
    };
    let app = serve::embedded(
        dir,
        crate::app::policy::RunnerPolicy::default(),
        settings,
        secret.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhook", listener.local_addr()?);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve::run(app, Cadence::default(), listener, stop));
    let store = SqliteEventStore::open(dir.join("events.db"))?;
    let http = reqwest::Client::new();
    let labels = vec!["self-hosted".to_string(), "linux".to_string()];
    let mut to_token = Vec::new();
    let mut streams = Vec::new();
    for job in 1..=runners as u64 {
        let body = sample_payload("queued", "bench", "fleet", job, &labels, None);
        let sent = Instant::now();
        let _ = http
            .post(&url)
            .header("X-GitHub-Event", "workflow_job")
            .header("X-GitHub-Delivery", format!("bench-{job}"))
            .header("X-Hub-Signature-256", sign(&secret, body.as_bytes()))
            .body(body)
            .send()
            .await;
        let stream = StreamId::parse(&format!("bench/fleet#{job}#1")).expect("valid");
        loop {
            if store
                .head(&stream)
                .await?
                .is_some_and(|h| h.status == RunnerStatus::Ready)
            {
                break;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        to_token.push(sent.elapsed().as_millis() as u64);
        streams.push(stream);
    }
    for (i, stream) in streams.iter().enumerate() {
        let fail = Command::Fail {
            stage: FailureStage::Boot,
            reason: "bench: runner agent did not come up".into(),
        };
        let _ = dispatch(
            &store,
            stream,
            fail,
            crate::runtime::now(),
            &CommandId::new(format!("bench-fail-{i}")),
        )
        .await;
        // Spread the failures over the projector's ticks.
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut windows = Vec::new();
    for stream in &streams {
        loop {
            let events = store.read_stream(stream).await?;
            let failed = events
                .iter()
                .find(|r| r.event.kind() == "Failed")
                .map(|r| r.event.at());
            let terminated = events
                .iter()
                .find(|r| r.event.kind() == "Terminated")
                .map(|r| r.event.at());
            if let (Some(f), Some(t)) = (failed, terminated) {
                windows.push(t.millis_since(f));
                break;
            }
            if Instant::now() > deadline {
                windows.push(u64::MAX);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    windows.sort_unstable();
    to_token.sort_unstable();
    Ok(LeakWindowReport {
        runners,
        p50_ms: percentile_ms(&windows, 0.5),
        p99_ms: percentile_ms(&windows, 0.99),
        max_ms: windows.last().copied().unwrap_or(0),
        webhook_to_token_p50_ms: percentile_ms(&to_token, 0.5),
    })
}

/// Writes a log of about `events` events for audit benchmarks: whole runner
/// lives, one in eight failed after launch and compensated late (so the audit
/// has leak figures to compute).
pub async fn write_history(dir: &std::path::Path, events: u64) -> Result<u64, StoreError> {
    let store = SqliteEventStore::open(dir.join("events.db"))?;
    let t0 = Timestamp(1_777_868_520_000);
    let mut written = 0u64;
    let mut job = 0u64;
    while written < events {
        let start = t0.plus_ms(job * 7_000);
        let (stream, history) = if job % 8 == 7 {
            failed_late(job, start)
        } else {
            lifecycle(job, start)
        };
        store
            .append(&stream, 0, &history, &CommandId::new(stream.to_string()))
            .await?;
        written += history.len() as u64;
        job += 1;
    }
    Ok(written)
}

/// A runner that failed after launch and was terminated 90 s later.
pub fn failed_late(job_id: u64, start: Timestamp) -> (StreamId, Vec<RunnerEvent>) {
    let (stream, mut history) = lifecycle(job_id, start);
    history.truncate(3);
    let mut state = fold(&history);
    for (secs, command) in [
        (
            20,
            Command::Fail {
                stage: jitr_domain::FailureStage::Token,
                reason: "bench".into(),
            },
        ),
        (
            110,
            Command::ConfirmTerminated {
                instance_id: state.instance().map(|i| i.id.clone()),
                evidence: TerminationEvidence::ReportedTerminated,
            },
        ),
    ] {
        let (next, events) =
            execute(&state, command, start.plus_ms(secs * 1000)).expect("valid bench history");
        state = next;
        history.extend(events);
    }
    (stream, history)
}

/// Reaper sweep cost as history grows at a constant number of live runners.
#[derive(Clone, Debug, Serialize)]
pub struct ReaperScaling {
    /// Live runners during every sweep.
    pub live_runners: usize,
    /// (closed runners in the log, median sweep time in µs).
    pub sweeps: Vec<(u64, f64)>,
    /// Largest median over smallest median.
    pub worst_ratio: f64,
}

/// Measures the reaper's sweep with `live` live runners on the simulator while
/// the log's history of closed runners grows through `histories`.
pub async fn reaper_scaling(
    dir: &std::path::Path,
    live: usize,
    histories: &[u64],
) -> Result<ReaperScaling, crate::runtime::serve::ServeError> {
    use crate::app::App;
    use crate::app::policy::RunnerPolicy;
    use crate::runtime::embedded::Embedded;
    use jitr_infra::{ManualClock, SimSettings};

    let t0 = Timestamp(1_777_868_520_000);
    let clock = ManualClock::new(t0);
    let settings = SimSettings {
        on_demand_vcpus: 4 * live as u32 + 4,
        spot_vcpus: 4 * live as u32 + 4,
        ..SimSettings::default()
    };
    let Embedded { store, ports, .. } = Embedded::open(dir, settings, clock.clock(), 10)?;
    let app = App::new(ports, RunnerPolicy::default(), Vec::new());
    for n in 0..live as u64 {
        let job = crate::app::webhook::JobMessage {
            delivery: format!("live-{n}"),
            action: "queued".into(),
            installation: 1,
            owner: "bench".into(),
            repo: "live".into(),
            job_id: 1_000_000_000 + n,
            run_id: 1,
            labels: vec!["self-hosted".into()],
            runner_name: None,
            conclusion: None,
            attempt: 1,
            avoid_spot: Vec::new(),
            runner_id: None,
        };
        app.scaleup
            .handle(&job, 1, clock.now())
            .await
            .map_err(|e| {
                crate::runtime::serve::ServeError::Io(std::io::Error::other(e.to_string()))
            })?;
    }
    clock.advance(180_000);
    let mut closed = 0u64;
    let mut sweeps = Vec::new();
    for &target in histories {
        while closed < target {
            let (stream, history) = lifecycle(closed, t0);
            store
                .append(&stream, 0, &history, &CommandId::new(stream.to_string()))
                .await?;
            closed += 1;
        }
        let mut times = Vec::new();
        for _ in 0..15 {
            let start = Instant::now();
            let report = app.reaper.sweep(clock.now()).await.map_err(|e| {
                crate::runtime::serve::ServeError::Io(std::io::Error::other(e.to_string()))
            })?;
            times.push(start.elapsed());
            assert_eq!(report.instances_seen, live, "the live fleet stays the same");
        }
        times.sort();
        sweeps.push((closed, times[times.len() / 2].as_secs_f64() * 1e6));
    }
    let medians: Vec<f64> = sweeps.iter().map(|(_, m)| *m).collect();
    let min = medians.iter().copied().fold(f64::INFINITY, f64::min);
    let max = medians.iter().copied().fold(0.0, f64::max);
    Ok(ReaperScaling {
        live_runners: live,
        sweeps,
        worst_ratio: max / min.max(1e-9),
    })
}

/// The projector's checkpoint at one size of history.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointPoint {
    /// Closed runners folded.
    pub closed_runners: u64,
    /// Bytes of the saved snapshot.
    pub snapshot_bytes: usize,
    /// Median time to serialise the views, µs.
    pub serialise_us: f64,
    /// Median time of one fenced save to SQLite, µs.
    pub save_us: f64,
}

/// Checkpoint size and save cost as history grows at a constant number of open
/// runners.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointScaling {
    /// Open runners at every point.
    pub open_runners: u64,
    /// One point per size of history.
    pub points: Vec<CheckpointPoint>,
    /// Largest snapshot over smallest.
    pub size_ratio: f64,
    /// Largest median save (serialise + write) over smallest.
    pub save_ratio: f64,
}

/// Measures the projector's checkpoint with `open` open runners while the
/// history of closed runners folded grows through `histories`.
pub async fn checkpoint_scaling(
    dir: &std::path::Path,
    open: u64,
    histories: &[u64],
) -> Result<CheckpointScaling, StoreError> {
    use jitr_infra::{Checkpoint, CheckpointStore};
    use jitr_projections::RunnerViews;

    let t0 = Timestamp(1_777_868_520_000);
    let store = SqliteEventStore::open(dir.join("checkpoint-bench.db"))?;
    let mut views = RunnerViews::default();
    let fold = |views: &mut RunnerViews, stream: &StreamId, events: &[RunnerEvent]| {
        for event in events {
            let next = views.position + 1;
            views.apply(next, stream, event);
        }
    };
    for n in 0..open {
        // The first five events: requested, launched, minted, running.
        let (stream, history) = lifecycle(10_000_000 + n, t0);
        fold(&mut views, &stream, &history[..5]);
    }
    // The first saves into a fresh database grow its file and write-ahead log
    // until SQLite checkpoints it: 200 unmeasured saves reach the steady state.
    let mut generation = 0u64;
    let warm = serde_json::to_vec(&views).expect("views serialise");
    for _ in 0..200 {
        let checkpoint = Checkpoint {
            position: views.position,
            snapshot: warm.clone(),
            generation,
        };
        generation = store.save_checkpoint("bench", &checkpoint).await?;
    }
    // Views at each size of history, then saves interleaved round by round, so
    // that the machine's drift weighs on every size alike.
    let mut closed = 0u64;
    let mut sized: Vec<(u64, RunnerViews)> = Vec::new();
    for &target in histories {
        while closed < target {
            let (stream, history) = lifecycle(closed, t0);
            fold(&mut views, &stream, &history);
            closed += 1;
        }
        assert_eq!(views.open.len() as u64, open, "the open runners stay open");
        sized.push((closed, views.clone()));
    }
    let mut samples: Vec<(Vec<Duration>, Vec<Duration>, usize)> =
        vec![(Vec::new(), Vec::new(), 0); sized.len()];
    for _ in 0..101 {
        for ((_, views), (serialise, save, bytes)) in sized.iter().zip(samples.iter_mut()) {
            let start = Instant::now();
            let snapshot = serde_json::to_vec(views).expect("views serialise");
            serialise.push(start.elapsed());
            *bytes = snapshot.len();
            let checkpoint = Checkpoint {
                position: views.position,
                snapshot,
                generation,
            };
            let start = Instant::now();
            generation = store.save_checkpoint("bench", &checkpoint).await?;
            save.push(start.elapsed());
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e6
    };
    let points: Vec<CheckpointPoint> = sized
        .iter()
        .zip(samples)
        .map(|((closed, _), (serialise, save, bytes))| CheckpointPoint {
            closed_runners: *closed,
            snapshot_bytes: bytes,
            serialise_us: median(serialise),
            save_us: median(save),
        })
        .collect();
    let ratio = |values: Vec<f64>| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        max / min.max(1e-9)
    };
    Ok(CheckpointScaling {
        open_runners: open,
        size_ratio: ratio(points.iter().map(|p| p.snapshot_bytes as f64).collect()),
        save_ratio: ratio(points.iter().map(|p| p.serialise_us + p.save_us).collect()),
        points,
    })
}

/// `jitr bench` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Events to fold in memory.
    #[arg(long, default_value_t = 1_000_000)]
    fold_events: u64,
    /// Events to write to SQLite and replay.
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: u64,
    /// Single-event appends to time.
    #[arg(long, default_value_t = 20_000)]
    appends: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Measure the leak window in `serve` instead: this many runners fail
    /// after launch; prints failure → Terminated p50/p99.
    #[arg(long)]
    leak_window: Option<usize>,
    /// Write a log of --events events into this data directory (for timing
    /// `jitr audit` on it), instead of benchmarking.
    #[arg(long)]
    write_history: Option<PathBuf>,
    /// Events for --write-history and --history.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Write a year of synthetic history (--events events over --days days,
    /// 40 repositories, three pools) into this new data directory with the
    /// bulk writer, close its books, and measure the writer, the replay and
    /// the snapshots (ADR-0023).
    #[arg(long, value_name = "DIR")]
    history: Option<PathBuf>,
    /// Days of history for --history.
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// With --history: archive every this many days as the history is
    /// written (90-day retention, DIR/archive, ADR-0024), so the log holds
    /// only the last months.
    #[arg(long, value_name = "DAYS", requires = "history")]
    archive_every: Option<u64>,
    /// Measure the reaper's sweep at 50 live runners as the history of closed
    /// runners grows 1× → 10× → 100× (from 1,000).
    #[arg(long)]
    reaper: bool,
    /// Measure the projector's checkpoint (size, serialise and save time) at 100
    /// open runners as the history of closed runners grows 1,000 → 10,000 →
    /// 100,000.
    #[arg(long)]
    checkpoint: bool,
    /// Measure the fleet page (issue 28): this many runner lives spread over
    /// its 6-hour window are folded with the live series, then the page is
    /// rendered 21 times; prints its size and the median render time.
    #[arg(long, value_name = "RUNNERS")]
    fleet_page: Option<u64>,
}

/// What `jitr bench --fleet-page` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FleetPageReport {
    /// Runner lives in the window.
    pub runners: u64,
    /// Events folded.
    pub events: u64,
    /// Folding them with the series, ms.
    pub fold_ms: f64,
    /// Runners open at the window's end (rows of the runners table).
    pub open_runners: usize,
    /// The page's size, bytes.
    pub page_bytes: usize,
    /// Of which the charts' SVG.
    pub chart_bytes: usize,
    /// Render time (views to HTML), median of 21, ms.
    pub render_median_ms: f64,
    /// The slowest render, ms.
    pub render_max_ms: f64,
}

/// `runners` lives of [`lifecycle`] (9 minutes each) started evenly over six
/// hours and folded with the live series up to the window's end; the fleet
/// page of those six hours rendered.
pub fn fleet_page(runners: u64) -> FleetPageReport {
    use askama::Template;
    use jitr_projections::series::{FleetSeries, apply_with_series};
    let t0 = Timestamp(1_800_000_000_000);
    let window_ms = 6 * 3_600_000u64;
    let mut events: Vec<(StreamId, RunnerEvent)> = Vec::new();
    for i in 0..runners {
        let (stream, log) = lifecycle(i + 1, t0.plus_ms(i * window_ms / runners.max(1)));
        events.extend(log.into_iter().map(|e| (stream.clone(), e)));
    }
    // The page's moment: the window's end, with the last lives still open.
    let now = t0.plus_ms(window_ms);
    events.retain(|(_, e)| e.at() <= now);
    events.sort_by_key(|(_, e)| e.at());
    let started = Instant::now();
    let mut views = jitr_projections::RunnerViews::default();
    let mut series = FleetSeries::default();
    for (position, (stream, event)) in events.iter().enumerate() {
        apply_with_series(&mut views, &mut series, position as u64 + 1, stream, event);
    }
    let fold_ms = started.elapsed().as_secs_f64() * 1000.0;
    let render = || {
        crate::runtime::page::FleetPage::of(
            &views,
            now,
            crate::runtime::page::Known {
                quotas: crate::runtime::page::Quotas {
                    known: Default::default(),
                    configured: vec![(Market::Spot, 2048), (Market::OnDemand, 256)],
                },
                pool_names: vec!["default".into()],
                queues: Vec::new(),
                waiting: Vec::new(),
                series: Some(&series),
            },
            crate::runtime::page::Filter {
                hours: Some(6),
                ..Default::default()
            },
        )
        .render()
        .expect("the page renders")
    };
    let page = render();
    let chart_bytes = page
        .match_indices("<svg id=\"chart-")
        .map(|(start, _)| {
            page[start..]
                .find("</svg>")
                .map_or(0, |end| end + "</svg>".len())
        })
        .sum();
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(render());
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    FleetPageReport {
        runners,
        events: events.len() as u64,
        fold_ms,
        open_runners: views.open.len(),
        page_bytes: page.len(),
        chart_bytes,
        render_median_ms: times[times.len() / 2],
        render_max_ms: times[times.len() - 1],
    }
}

/// Runs the benchmark asked for and prints its figures.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    if let Some(dir) = args.write_history {
        std::fs::create_dir_all(&dir)?;
        if dir.join(super::LOG_FILE).exists() {
            anyhow::bail!("{} already holds a log", dir.display());
        }
        let written = write_history(&dir, args.events).await?;
        println!(
            "wrote {written} events to {}",
            dir.join(super::LOG_FILE).display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = args.history {
        std::fs::create_dir_all(&dir)?;
        if dir.join(super::LOG_FILE).exists() {
            anyhow::bail!("{} already holds a log", dir.display());
        }
        if cfg!(debug_assertions) {
            eprintln!(
                "warning: a debug build; use `cargo run --release -p jitr-handlers -- bench`"
            );
        }
        let report = super::bench_history::run(
            &dir,
            args.events,
            args.days.max(1),
            args.archive_every,
            |stage| eprintln!("bench: {stage}"),
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", super::bench_history::render(&report, &dir));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(runners) = args.fleet_page {
        let report = fleet_page(runners);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "fleet page, {} runners ({} events) in its 6-hour window: folded with the series in {:.0} ms; \
                 {} open runners listed; page {} bytes (charts {} bytes); render median {:.2} ms, max {:.2} ms (21 renders)",
                report.runners,
                report.events,
                report.fold_ms,
                report.open_runners,
                report.page_bytes,
                report.chart_bytes,
                report.render_median_ms,
                report.render_max_ms
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    if args.reaper {
        let report = reaper_scaling(scratch.path(), 50, &[1_000, 10_000, 100_000]).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for (closed, median) in &report.sweeps {
                println!(
                    "reaper sweep, {} live runners, {closed:>7} closed in the log: median {median:.0} µs",
                    report.live_runners
                );
            }
            println!("worst / best median: {:.2}", report.worst_ratio);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.checkpoint {
        let report = checkpoint_scaling(scratch.path(), 100, &[1_000, 10_000, 100_000]).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for p in &report.points {
                println!(
                    "checkpoint, {} open runners, {:>7} closed folded: {} bytes, serialise {:.0} µs, save {:.0} µs (medians of 101)",
                    report.open_runners,
                    p.closed_runners,
                    p.snapshot_bytes,
                    p.serialise_us,
                    p.save_us
                );
            }
            println!(
                "largest / smallest: size {:.2}, serialise + save {:.2}",
                report.size_ratio, report.save_ratio
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(runners) = args.leak_window {
        let report = leak_window(scratch.path(), runners).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "leak window (Failed -> Terminated) over {} runners: p50 {} ms, p99 {} ms, max {} ms; webhook -> TokenMinted p50 {} ms",
                report.runners,
                report.p50_ms,
                report.p99_ms,
                report.max_ms,
                report.webhook_to_token_p50_ms
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; use `cargo run --release -p jitr-handlers -- bench`");
    }
    let sizes = BenchSizes {
        fold_events: args.fold_events,
        replay_events: args.replay_events,
        appends: args.appends,
    };
    let report = run(scratch.path(), sizes, |stage| eprintln!("bench: {stage}")).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
