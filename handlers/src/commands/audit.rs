//! `jitr audit`: replays the whole log and reports runners by status, the fleet,
//! and every runner owed a termination.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use jitr_domain::{InstanceId, Market, RunnerStatus, StreamId, TerminationReason, Timestamp};
use jitr_infra::{CheckpointStore, EventStore, StoreError, UnreadableEvent, read_feed_page};
use jitr_projections::accounting::{LeakFigures, Ledger};
use jitr_projections::books::{Books, StrayRecord, Window};
use jitr_projections::jobs::JobFigures;
use jitr_projections::{Fleet, RunnerViews};
use serde::Serialize;

use crate::app::books::{self, SnapshotEntry};
use crate::app::projector::FEED_PAGE;
use crate::commands::report::{reason, rfc3339, span};

/// How long a termination may stay owed before the audit fails (one reaper cycle).
pub const DEFAULT_DEADLINE_MS: u64 = 60_000;

/// The audit report (`--json` prints exactly this; `schema` versions its shape).
#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    /// Version of this report's shape.
    pub schema: u32,
    /// The moment judged, RFC 3339.
    pub as_of: String,
    /// The moment judged, ms since the epoch.
    pub as_of_ms: i64,
    /// Events replayed.
    pub events: u64,
    /// Runner streams in the log.
    pub runners: u64,
    /// Runners per status.
    pub by_status: BTreeMap<RunnerStatus, u64>,
    /// Instances that may be alive, per market.
    pub fleet: Fleet,
    /// Runners owed a termination, oldest debt first.
    pub owed: Vec<OwedTermination>,
    /// How many of them are owed for longer than `deadline_ms`.
    pub owed_past_deadline: u64,
    /// The allowed compensation time.
    pub deadline_ms: u64,
    /// Events found after their stream had closed (should be 0).
    pub events_after_close: u64,
    /// Events that could not be read and were skipped (should be none): their
    /// position, stream and why.
    pub unreadable_events: Vec<UnreadableEvent>,
    /// Open runners whose stored head could not be read (the reaper and the
    /// rebalancer skip them): their key and why. Should be none.
    pub unreadable_heads: Vec<(String, String)>,
    /// The history the log holds: first and last event, RFC 3339 (empty log: none).
    pub log_covers: Option<(String, String)>,
    /// The window the leak figures cover, RFC 3339.
    pub window: (String, String),
    /// An instance counts as orphaned this long after its termination became owed.
    pub orphan_grace_ms: u64,
    /// What the window cost: orphan and owed vCPU-minutes, compensation latency.
    pub leaks: LeakFigures,
    /// Runners failed in the window, by failure stage.
    pub failures: BTreeMap<String, u64>,
    /// Runners closed by a `Terminated` in the window, by the evidence that closed them:
    /// `reported-terminated` (EC2 described the instance shutting down or
    /// terminated), `not-found-after-window`, `token-found-nothing`,
    /// `nothing-launched`, and `unrecorded` (written before evidence was kept).
    pub closed_by: BTreeMap<String, u64>,
    /// Jobs started and completed in the window, by where jitr learnt it: `webhook`, or `poll`
    /// (GitHub asked because the webhook was lost), e.g. `started-poll`.
    pub lifecycle_sources: BTreeMap<String, u64>,
    /// Runners waiting for capacity at `as_of`, per pool (ADR-0014).
    pub waiting: Vec<WaitingPool>,
    /// EC2's spot interruption warnings in the window: which jobs
    /// were cut, which runners were replaced before their job started.
    pub spot_interruptions: Vec<SpotInterruption>,
    /// Instances that may be alive at `as_of`, per the log.
    pub live_instances: Vec<LiveInstance>,
    /// Instances RunInstances returned that their runner could not take, alive
    /// in the window, and whether each was confirmed gone (a live one is also
    /// in `owed`).
    pub strays: Vec<StrayInstance>,
    /// The log checked against the cloud (`--live`).
    pub live_check: Option<LiveCheck>,
    /// Jobs first seen in the window (ADR-0017): served by another job's
    /// runner, cancelled while queued, killed by jitr (must be 0), spare
    /// runners retired.
    pub jobs: JobFigures,
    /// The snapshot the audit started from (ADR-0023); none: the first event.
    pub snapshot: Option<SnapshotEntry>,
}

/// A runner whose spot instance EC2 warned it would reclaim.
#[derive(Clone, Debug, Serialize)]
pub struct SpotInterruption {
    /// The runner.
    pub stream: StreamId,
    /// Its instance.
    pub instance_id: Option<InstanceId>,
    /// The instance's type.
    pub instance_type: Option<String>,
    /// When the warning was recorded (RFC 3339).
    pub at: String,
    /// Whether the job had started on it: the job was cut. Otherwise the
    /// runner was failed and the job given a new attempt.
    pub job_cut: bool,
}

/// The runners of one pool waiting for capacity.
#[derive(Clone, Debug, Serialize)]
pub struct WaitingPool {
    /// The pool (`-` for runners requested before pools were recorded).
    pub pool: String,
    /// Runners waiting.
    pub runners: u64,
    /// vCPUs they ask for.
    pub vcpus: u64,
    /// How long the oldest has waited, in ms.
    pub oldest_wait_ms: u64,
    /// Runners by why they wait, as the log tells it: the last refusal of
    /// their last launch (`quota: VcpuLimitExceeded on on-demand`), or none
    /// (`not launched yet`: the admission round's reason — a quota known
    /// full, the pool's budget — is on the fleet page and in `/metrics`).
    pub reasons: BTreeMap<String, u64>,
}

/// Why a waiting runner waits, as its log tells it.
fn wait_in_log(state: &jitr_domain::RunnerState) -> String {
    match state.launch.as_ref() {
        Some(jitr_domain::Launch {
            market,
            outcome: jitr_domain::LaunchOutcome::Rejected { code, class },
            ..
        }) => {
            let kind = match class {
                jitr_domain::LaunchErrorClass::Quota => "quota",
                jitr_domain::LaunchErrorClass::Capacity => "capacity",
                _ => "refused",
            };
            format!("{kind}: {code} on {}", market.as_str())
        }
        _ => "not launched yet".to_owned(),
    }
}

/// The log against what the cloud runs now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveCheck {
    /// Instances tagged by jitr that no open runner owns (leaks the log cannot see).
    pub unknown_instances: Vec<String>,
    /// Runners whose instance is gone although no `Terminated` was recorded.
    pub gone_without_terminated: Vec<StreamId>,
}

/// Compares the log's live instances with the cloud's. Instances launched less
/// than `grace_ms` ago are left out (their `Launched` may not be written yet).
pub fn cross_check(
    report: &AuditReport,
    cloud: &[jitr_infra::ManagedInstance],
    now: Timestamp,
    grace_ms: u64,
) -> LiveCheck {
    use std::collections::HashSet;
    let cloud_live: Vec<&jitr_infra::ManagedInstance> =
        cloud.iter().filter(|m| m.state.is_live()).collect();
    let log_ids: HashSet<&str> = report
        .live_instances
        .iter()
        .filter_map(|l| l.instance_id.as_deref())
        .chain(
            report
                .strays
                .iter()
                .filter(|s| s.gone.is_none())
                .map(|s| s.instance_id.0.as_str()),
        )
        .collect();
    let cloud_ids: HashSet<&str> = cloud_live
        .iter()
        .map(|m| m.instance_id.0.as_str())
        .collect();
    let mut unknown: Vec<String> = cloud_live
        .iter()
        .filter(|m| !log_ids.contains(m.instance_id.0.as_str()))
        .filter(|m| now.millis_since(m.launched_at) >= grace_ms)
        .map(|m| m.instance_id.0.clone())
        .collect();
    unknown.sort();
    let gone = report
        .live_instances
        .iter()
        .filter(|l| {
            l.instance_id
                .as_deref()
                .is_some_and(|id| !cloud_ids.contains(id))
        })
        .map(|l| l.stream.clone())
        .collect();
    LiveCheck {
        unknown_instances: unknown,
        gone_without_terminated: gone,
    }
}

/// A stray instance, as the log records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StrayInstance {
    /// The runner whose launch started it.
    pub stream: StreamId,
    /// The instance.
    pub instance_id: InstanceId,
    /// Its vCPUs.
    pub vcpus: u32,
    /// When it was recorded, RFC 3339.
    pub recorded_at: String,
    /// When it was confirmed gone, RFC 3339, and on what evidence.
    pub gone: Option<(String, String)>,
}

/// An instance the log says may be alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LiveInstance {
    /// The runner.
    pub stream: StreamId,
    /// The instance (none while its launch is unresolved).
    pub instance_id: Option<String>,
    /// Its market.
    pub market: Market,
    /// Its vCPUs.
    pub vcpus: u32,
}

/// What an audit judges.
#[derive(Clone, Copy, Debug)]
pub struct AuditWindow {
    /// Start of the leak figures' window (None: the first event).
    pub since: Option<Timestamp>,
    /// The moment judged: the end of the window, and the horizon of the replay
    /// (events after it are not folded, which rebuilds the fleet as it was).
    pub as_of: Timestamp,
    /// How long a termination may stay owed before the audit fails.
    pub deadline_ms: u64,
    /// How long after being owed an instance counts as orphaned.
    pub orphan_grace_ms: u64,
}

/// A runner whose instance may be alive although nobody wants it.
#[derive(Clone, Debug, Serialize)]
pub struct OwedTermination {
    /// The runner.
    pub stream: StreamId,
    /// Its status.
    pub status: RunnerStatus,
    /// Its instance, when known (else it is looked up by client token).
    pub instance_id: Option<InstanceId>,
    /// Its vCPUs, when known.
    pub vcpus: Option<u32>,
    /// Why it is owed.
    pub reason: TerminationReason,
    /// Since when, RFC 3339.
    pub owed_since: String,
    /// For how long, in ms.
    pub owed_for_ms: u64,
    /// Whether a termination was already issued.
    pub termination_requested: bool,
    /// Owed for longer than the deadline.
    pub past_deadline: bool,
    /// The instance is a stray of the runner (ADR-0007), not its own.
    pub stray: bool,
}

impl AuditReport {
    /// Whether an instance is owed a termination past the deadline, or (with
    /// `--live`) runs unknown to the log.
    pub fn failed(&self) -> bool {
        self.owed_past_deadline > 0
            || self
                .live_check
                .as_ref()
                .is_some_and(|c| !c.unknown_instances.is_empty())
    }
}

/// A replayed log: the audit's books, the leak ledger of every runner (for
/// the HTML report's history), and the events that could not be read.
pub struct Replay {
    /// The audit's books at the horizon.
    pub books: Books,
    /// Every runner's account at the horizon.
    pub ledger: Ledger,
    /// Events that could not be read, skipped.
    pub unreadable: Vec<UnreadableEvent>,
}

impl Replay {
    /// Runner views at the horizon.
    pub fn views(&self) -> &RunnerViews {
        &self.books.views
    }
}

/// One item of the feed: an event, or one that could not be read.
pub enum FeedItem<'a> {
    /// An event.
    Event(&'a jitr_infra::RecordedEvent),
    /// An event that could not be read, skipped.
    Unreadable(UnreadableEvent),
}

/// Reads the feed after `after` page by page, handing each item to `fold` in
/// position order; `progress` hears each page's last position. Stops with
/// [`StoreError::Newer`] at an event of a newer jitr.
pub async fn read_feed<S: EventStore + ?Sized>(
    store: &S,
    after: u64,
    mut fold: impl FnMut(FeedItem<'_>),
    mut progress: impl FnMut(u64),
) -> Result<(), StoreError> {
    use std::future::Future as _;
    use std::task::{Context, Poll, Waker};

    let mut page = read_feed_page(store, after, FEED_PAGE).await?;
    loop {
        // The next page is asked for before this one is folded: a store
        // that reads on another thread (SQLite's blocking pool) reads it
        // while this thread folds.
        let mut next = page
            .last
            .filter(|_| page.newer.is_none())
            .map(|last| Box::pin(read_feed_page(store, last, FEED_PAGE)));
        let early = next.as_mut().and_then(|next| {
            match next.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(read) => Some(read),
                Poll::Pending => None,
            }
        });
        let mut unreadable = page.unreadable.into_iter().peekable();
        for r in &page.events {
            while let Some(u) = unreadable.next_if(|u| u.position < r.position) {
                fold(FeedItem::Unreadable(u));
            }
            fold(FeedItem::Event(r));
        }
        unreadable.for_each(|u| fold(FeedItem::Unreadable(u)));
        if let Some(newer) = page.newer {
            // What a newer jitr wrote cannot be judged here: an audit that
            // skipped it would call its runners leaks, or miss them.
            return Err(StoreError::Newer {
                stream: newer.stream,
                position: newer.position,
                what: newer.reason,
            });
        }
        let (Some(last), Some(next)) = (page.last, next) else {
            break;
        };
        progress(last);
        page = match early {
            Some(read) => read?,
            None => next.await?,
        };
    }
    Ok(())
}

/// Replays the whole log up to `horizon` (None: everything) into books
/// counting `window`, and every runner's account; `progress` hears each
/// page's last position.
pub async fn replay<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    window: Window,
    horizon: Option<Timestamp>,
    progress: impl FnMut(u64),
) -> Result<Replay, StoreError> {
    let mut books = Books::new(window);
    let mut ledger = Ledger::default();
    let mut unreadable = Vec::new();
    crate::app::archive::require_whole_feed(store, 0).await?;
    read_feed(
        store,
        0,
        |item| match item {
            FeedItem::Event(r) => {
                books.fold(r.position, &r.stream, &r.event, horizon);
                ledger.apply(&r.stream, &r.event, horizon);
            }
            FeedItem::Unreadable(u) => {
                books.pass_over(u.position);
                unreadable.push(u);
            }
        },
        progress,
    )
    .await?;
    Ok(Replay {
        books,
        ledger,
        unreadable,
    })
}

/// Runners closed by a `Terminated`, per kind of evidence (by its name).
pub fn closed_by(ledger: &Ledger) -> BTreeMap<String, u64> {
    ledger
        .closed_by()
        .into_iter()
        .map(|(evidence, n)| (evidence.as_str().to_owned(), n))
        .collect()
}

impl AuditWindow {
    /// What the books count for this window: from `since` (else the
    /// beginning) to `as_of`.
    pub fn books_window(&self) -> Window {
        Window {
            since: self.since.unwrap_or(Timestamp(i64::MIN)),
            until: self.as_of,
            grace_ms: self.orphan_grace_ms,
        }
    }
}

/// Judges `books`, folded for `window` (see [`AuditWindow::books_window`]).
pub fn judge(books: &Books, unreadable: &[UnreadableEvent], window: AuditWindow) -> AuditReport {
    debug_assert_eq!(books.window(), window.books_window());
    let now = window.as_of;
    let views = &books.views;
    let owed: Vec<OwedTermination> = views
        .open_leaks(now)
        .into_iter()
        .map(|leak| {
            let owed_for_ms = now.millis_since(leak.owed_since);
            OwedTermination {
                stream: leak.stream,
                status: leak.status,
                instance_id: leak.instance_id,
                vcpus: leak.vcpus,
                reason: leak.reason,
                owed_since: rfc3339(leak.owed_since),
                owed_for_ms,
                termination_requested: leak.termination_requested,
                past_deadline: owed_for_ms > window.deadline_ms,
                stray: leak.stray,
            }
        })
        .collect();
    let since = window
        .since
        .or(books.covers.map(|(first, _)| first))
        .unwrap_or(now);
    let strays = books
        .strays()
        .into_iter()
        .map(|StrayRecord { stream, stray }| StrayInstance {
            stream,
            instance_id: stray.id,
            vcpus: stray.vcpus,
            recorded_at: rfc3339(stray.recorded_at),
            gone: stray
                .gone
                .map(|(at, evidence)| (rfc3339(at), evidence.as_str().to_owned())),
        })
        .collect();
    let live_instances = books
        .live()
        .into_iter()
        .map(|(stream, instance_id, market, vcpus)| LiveInstance {
            stream,
            instance_id,
            market,
            vcpus,
        })
        .collect();
    let mut waiting: BTreeMap<String, WaitingPool> = BTreeMap::new();
    for state in views.open.values() {
        let Some(request) = state.request.as_ref() else {
            continue;
        };
        if state.status() != RunnerStatus::Requested || state.failure.is_some() {
            continue;
        }
        let pool = request.spec.pool.clone().unwrap_or_else(|| "-".into());
        let entry = waiting.entry(pool.clone()).or_insert(WaitingPool {
            pool,
            runners: 0,
            vcpus: 0,
            oldest_wait_ms: 0,
            reasons: BTreeMap::new(),
        });
        *entry.reasons.entry(wait_in_log(state)).or_default() += 1;
        entry.runners += 1;
        entry.vcpus += u64::from(request.spec.vcpus);
        entry.oldest_wait_ms = entry.oldest_wait_ms.max(now.millis_since(request.at));
    }
    let spot_interruptions = books
        .spot_warnings()
        .into_iter()
        .map(|w| SpotInterruption {
            stream: w.stream,
            instance_id: w.instance.as_ref().map(|(id, _)| id.clone()),
            instance_type: w.instance.map(|(_, t)| t),
            at: rfc3339(w.at),
            job_cut: w.job_cut,
        })
        .collect();
    AuditReport {
        schema: 9,
        as_of: rfc3339(now),
        as_of_ms: now.0,
        events: books.events,
        runners: views.open.len() as u64 + views.closed_count(),
        by_status: views.by_status(),
        fleet: views.fleet(),
        owed_past_deadline: owed.iter().filter(|o| o.past_deadline).count() as u64,
        owed,
        deadline_ms: window.deadline_ms,
        events_after_close: views.after_close,
        unreadable_events: unreadable.to_vec(),
        unreadable_heads: Vec::new(),
        log_covers: books.covers.map(|(a, b)| (rfc3339(a), rfc3339(b))),
        window: (rfc3339(since), rfc3339(now)),
        orphan_grace_ms: window.orphan_grace_ms,
        leaks: books.leak_figures(),
        failures: books.failures().clone(),
        closed_by: books.closed_by().clone(),
        lifecycle_sources: books.lifecycle_sources().clone(),
        waiting: waiting.into_values().collect(),
        spot_interruptions,
        live_instances,
        strays,
        live_check: None,
        jobs: books.jobs.figures(),
        snapshot: None,
    }
}

/// The report as a table for people.
pub fn render(report: &AuditReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "jitr audit as of {}: {} runners, {} events",
        report.as_of, report.runners, report.events
    );
    if let Some(snapshot) = &report.snapshot {
        let _ = writeln!(
            out,
            "from the snapshot of {} (position {}, {} open runners): the events after it were read",
            snapshot.day, snapshot.position, snapshot.open_runners
        );
    }
    let _ = writeln!(out, "\nrunners by status");
    for (status, n) in &report.by_status {
        let note = match status {
            RunnerStatus::Draining | RunnerStatus::Terminating => "  (instance may be alive)",
            _ => "",
        };
        let _ = writeln!(out, "  {:<12} {n:>8}{note}", status.as_str());
    }
    let f = &report.fleet;
    let _ = writeln!(
        out,
        "\nfleet (instances that may be alive)\n  spot       {:>4} instances {:>5} vCPU\n  on-demand  {:>4} instances {:>5} vCPU\n  unresolved launches {}",
        f.spot.instances,
        f.spot.vcpus,
        f.on_demand.instances,
        f.on_demand.vcpus,
        f.unresolved_launches
    );
    if report.owed.is_empty() {
        let _ = writeln!(out, "\nno runner is owed a termination");
    } else {
        let _ = writeln!(
            out,
            "\nowed a termination ({}, {} past the {} deadline)",
            report.owed.len(),
            report.owed_past_deadline,
            span(report.deadline_ms)
        );
        for o in &report.owed {
            let instance = o
                .instance_id
                .as_ref()
                .map_or_else(|| "(unresolved launch)".to_string(), |i| i.to_string());
            let _ = writeln!(
                out,
                "  {}{} {} {} — {}, owed {} since {}{}",
                if o.past_deadline { "!" } else { " " },
                o.stream,
                o.status,
                instance,
                reason(&o.reason),
                span(o.owed_for_ms),
                o.owed_since,
                if o.termination_requested {
                    ", termination issued"
                } else {
                    ""
                }
            );
        }
    }
    let l = &report.leaks;
    let c = &l.compensation_latency_ms;
    let _ = writeln!(
        out,
        "\nleaks {} .. {}\n  orphan vCPU-minutes {:.1} ({} runners; orphaned {} after owed)\n  owed vCPU-minutes within the grace {:.1}\n  compensation latency: {} terminations, p50 {} p90 {} p99 {} max {}",
        report.window.0,
        report.window.1,
        l.orphan_vcpu_minutes,
        l.orphans,
        span(report.orphan_grace_ms),
        l.owed_vcpu_minutes,
        c.count,
        span(c.p50),
        span(c.p90),
        span(c.p99),
        span(c.max)
    );
    if !report.failures.is_empty() {
        let failures: Vec<String> = report
            .failures
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "  failures by stage: {}", failures.join(", "));
    }
    let j = &report.jobs;
    let _ = writeln!(
        out,
        "\njobs {}: {} taken by a runner, {} of them by a runner launched for another job, {} by a warm runner ({} warm runners launched); {} cancelled while queued\n  spare runners retired (deregistered first): {}, idle {:.1} runner-minutes before\n  jobs killed by jitr (runner failed or terminated while the job ran): {}",
        j.jobs,
        j.taken,
        j.served_by_other_runner,
        j.warm_hits,
        j.warm_runners,
        j.cancelled_queued,
        j.surplus_retired,
        j.surplus_idle_runner_minutes,
        j.killed_by_jitr
    );
    let _ = writeln!(
        out,
        "  runners idle before the job they took: {:.1} runner-minutes",
        j.idle_before_job_runner_minutes
    );
    if j.parked_runners > 0 {
        let _ = writeln!(
            out,
            "  stopped pools: {} runners parked, {} woken for a job, {:.1} volume-minutes stopped",
            j.parked_runners, j.parked_runners_woken, j.parked_volume_minutes
        );
    }
    for (pool, wait) in &j.queued_to_started_ms {
        let _ = writeln!(
            out,
            "  queued → started, pool {}: {} jobs, p50 {:.1} s, p99 {:.1} s, max {:.1} s",
            if pool.is_empty() { "-" } else { pool },
            wait.count,
            wait.p50 as f64 / 1000.0,
            wait.p99 as f64 / 1000.0,
            wait.max as f64 / 1000.0
        );
    }
    for (job, runner, why) in &j.killed {
        let _ = writeln!(out, "  ! job {job} on {runner}: {why}");
    }
    if !report.strays.is_empty() {
        let live = report.strays.iter().filter(|s| s.gone.is_none()).count();
        let _ = writeln!(
            out,
            "  stray instances (returned for a launch their runner could not take): {} ({live} not yet confirmed gone)",
            report.strays.len()
        );
    }
    if !report.closed_by.is_empty() {
        let closed: Vec<String> = report
            .closed_by
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "  closed on evidence: {}", closed.join(", "));
    }
    let polled: u64 = report
        .lifecycle_sources
        .iter()
        .filter(|(k, _)| k.ends_with("-poll"))
        .map(|(_, v)| v)
        .sum();
    if !report.lifecycle_sources.is_empty() {
        let sources: Vec<String> = report
            .lifecycle_sources
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "  job starts and completions learnt: {} ({polled} from job polls: webhooks lost)",
            sources.join(", ")
        );
    }
    for pool in &report.waiting {
        let _ = writeln!(
            out,
            "  waiting for capacity: pool {} — {} runners ({} vCPUs), the oldest for {} s",
            pool.pool,
            pool.runners,
            pool.vcpus,
            pool.oldest_wait_ms / 1000
        );
        for (reason, n) in &pool.reasons {
            let _ = writeln!(out, "    {n} waiting: {reason}");
        }
    }
    if !report.spot_interruptions.is_empty() {
        let cut: Vec<&SpotInterruption> = report
            .spot_interruptions
            .iter()
            .filter(|s| s.job_cut)
            .collect();
        let _ = writeln!(
            out,
            "  spot interruptions: {} ({} before the job started, relaunched; {} jobs cut)",
            report.spot_interruptions.len(),
            report.spot_interruptions.len() - cut.len(),
            cut.len()
        );
        for s in cut {
            let _ = writeln!(
                out,
                "    cut: {} on {} at {}",
                s.stream,
                s.instance_id.as_ref().map_or("-", |i| i.0.as_str()),
                s.at
            );
        }
    }
    if let Some(check) = &report.live_check {
        if check.unknown_instances.is_empty() && check.gone_without_terminated.is_empty() {
            let _ = writeln!(
                out,
                "\nlive check: the cloud runs exactly what the log says"
            );
        } else {
            let _ = writeln!(
                out,
                "\nlive check: {} instances unknown to the log: {}\n            {} runners whose instance is gone without Terminated: {}",
                check.unknown_instances.len(),
                check.unknown_instances.join(", "),
                check.gone_without_terminated.len(),
                check
                    .gone_without_terminated
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if let Some((first, last)) = &report.log_covers {
        let _ = writeln!(
            out,
            "\nthe log covers {first} .. {last} (history is never deleted)"
        );
    }
    for e in &report.unreadable_events {
        let _ = writeln!(
            out,
            "\nwarning: the event at position {} of {} cannot be read and was skipped: {}",
            e.position, e.stream, e.reason
        );
    }
    for (key, reason) in &report.unreadable_heads {
        let _ = writeln!(
            out,
            "\nwarning: the head of open runner {key} cannot be read (the reaper skips it): {reason}"
        );
    }
    if report.events_after_close > 0 {
        let _ = writeln!(
            out,
            "\nwarning: {} events arrived after their stream closed",
            report.events_after_close
        );
    }
    out
}

/// `jitr audit` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// Print JSON (the shape is `AuditReport`, versioned by its `schema` field).
    #[arg(long)]
    json: bool,
    /// Judge the log as of this moment (RFC 3339) instead of now.
    #[arg(long, value_parser = super::parse_moment)]
    now: Option<Timestamp>,
    /// How long a termination may stay owed before the audit fails.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Start of the window the figures cover (RFC 3339; default: the first
    /// event). The audit starts from the last snapshot before it (`jitr
    /// snapshot`, ADR-0023) and reads only the events after that.
    #[arg(long, value_parser = super::parse_moment)]
    since: Option<Timestamp>,
    /// Replay from the first event even when a snapshot would do.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    archive: super::ArchiveChoice,
    /// End of the window (RFC 3339; default: now).
    #[arg(long, value_parser = super::parse_moment, conflicts_with = "as_of")]
    until: Option<Timestamp>,
    /// Rebuild everything as it was at this moment (RFC 3339): live instances,
    /// vCPUs per market, statuses.
    #[arg(long, value_parser = super::parse_moment)]
    as_of: Option<Timestamp>,
    /// An instance counts as orphaned this long after its termination became owed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    orphan_grace: Duration,
    /// Also check the log against the instances the cloud runs now (the
    /// simulator in the data directory, or EC2 with --aws).
    #[arg(long)]
    live: bool,
    /// Audit the AWS deployment (DynamoDB log, EC2) instead of a data directory.
    #[arg(long)]
    aws: bool,
    #[command(flatten)]
    target: super::AwsTarget,
    /// Also write the report as one self-contained HTML file: vCPUs over time
    /// per market (legitimate / owed / orphaned, the quota as a line),
    /// failures by stage, every runner ever owed a termination. The chart
    /// spans the window: to --until (or --as-of, --now), else to now, or to the
    /// last event when that was more than a day ago.
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
    /// The on-demand vCPU quota, drawn as a line in the HTML report.
    #[arg(long, value_name = "VCPUS")]
    on_demand_quota: Option<u32>,
    /// The spot vCPU quota, drawn as a line in the HTML report.
    #[arg(long, value_name = "VCPUS")]
    spot_quota: Option<u32>,
    /// The pool file whose `[quotas]` give the lines of the HTML report where
    /// --on-demand-quota / --spot-quota do not.
    #[arg(long, value_name = "FILE", requires = "html")]
    config: Option<std::path::PathBuf>,
    /// Prices (TOML, as `jitr cost --prices` reads): the HTML report's
    /// chart of instance time by repository also gives its cost.
    #[arg(long, value_name = "FILE", requires = "html")]
    prices: Option<std::path::PathBuf>,
}

/// Where and how to write the HTML report.
pub struct HtmlReport {
    /// The file.
    pub path: std::path::PathBuf,
    /// The quotas to draw.
    pub quotas: super::audit_html::Quotas,
    /// The prices of the instance time, when given.
    pub prices: Option<super::cost::Prices>,
    /// The chart ends here when given (else at the last event).
    pub until: Option<Timestamp>,
}

/// Replays the log and prints the report; exit 1 when it fails.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let moment = args
        .as_of
        .or(args.until)
        .or(args.now)
        .unwrap_or_else(crate::runtime::now);
    let window = AuditWindow {
        since: args.since,
        as_of: moment,
        deadline_ms: args.deadline.as_millis() as u64,
        orphan_grace_ms: args.orphan_grace.as_millis() as u64,
    };
    let horizon = args.as_of.or(args.until);
    let configured = match &args.config {
        Some(file) => super::config::load(file)?.quotas,
        None => Vec::new(),
    };
    let configured = |market: jitr_domain::Market| {
        configured
            .iter()
            .find(|(m, _)| *m == market)
            .map(|(_, vcpus)| *vcpus)
    };
    let prices = args
        .prices
        .as_deref()
        .map(super::cost::Prices::load)
        .transpose()?;
    let html = args.html.clone().map(|path| HtmlReport {
        path,
        prices,
        quotas: super::audit_html::Quotas {
            on_demand: args
                .on_demand_quota
                .or_else(|| configured(jitr_domain::Market::OnDemand)),
            spot: args
                .spot_quota
                .or_else(|| configured(jitr_domain::Market::Spot)),
        },
        until: args.as_of.or(args.until).or(args.now),
    });
    if args.aws {
        #[cfg(feature = "aws")]
        {
            let config = args.target.settings().load().await;
            let names = jitr_aws::AwsNames::new(args.target.prefix);
            let store = jitr_aws::DynamoEventStore::new(&config, names.events_table());
            let compute =
                jitr_aws::Ec2Compute::new(&config, vec![]).with_deployment(names.prefix());
            let cloud = if args.live {
                Some(jitr_infra::Compute::list_managed(&compute).await?)
            } else {
                None
            };
            if let Some(objects) = args.archive.s3(&config)? {
                let log = crate::app::archive::archived_log(store, objects).await?;
                return print_audit(&log, args.json, window, horizon, cloud, html, !args.full)
                    .await;
            }
            return print_audit(&store, args.json, window, horizon, cloud, html, !args.full).await;
        }
        #[cfg(not(feature = "aws"))]
        return Err(super::without_aws());
    }
    let store = args.archive.open(&args.data.path).await?;
    let cloud = if args.live {
        let sim = super::open_sim_cloud(&args.data.path, "--live")?;
        Some(jitr_infra::Compute::list_managed(&sim).await?)
    } else {
        None
    };
    print_audit(&store, args.json, window, horizon, cloud, html, !args.full).await
}

/// Audits `store` for `window` up to `horizon`: from the last snapshot before
/// `window.since` when there is one (and `from_snapshot`), else from the first
/// event, holding only what is open (ADR-0023); reports the open runners
/// whose head cannot be read too. `progress` hears each page's last position.
pub async fn audit<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    window: AuditWindow,
    horizon: Option<Timestamp>,
    from_snapshot: bool,
    progress: impl FnMut(u64),
) -> Result<AuditReport, StoreError> {
    let snapshot = match window.since {
        Some(since) if from_snapshot => books::latest_before(store, since).await?,
        _ => None,
    };
    let (entry, mut books, mut unreadable) = match snapshot {
        Some((entry, snapshot)) => (Some(entry), snapshot.books, snapshot.unreadable),
        None => (None, Books::new(Window::none()), Vec::new()),
    };
    books.open_window(window.books_window());
    crate::app::archive::require_whole_feed(store, books.position).await?;
    read_feed(
        store,
        books.position,
        |item| match item {
            FeedItem::Event(r) => books.fold(r.position, &r.stream, &r.event, horizon),
            FeedItem::Unreadable(u) => {
                books.pass_over(u.position);
                unreadable.push(u);
            }
        },
        progress,
    )
    .await?;
    let mut report = judge(&books, &unreadable, window);
    report.snapshot = entry;
    report.unreadable_heads = unreadable_heads(store).await?;
    Ok(report)
}

async fn unreadable_heads<S: EventStore + ?Sized>(
    store: &S,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(store
        .open_streams()
        .await?
        .unreadable
        .into_iter()
        .map(|u| (u.key, u.reason))
        .collect())
}

/// Writes the HTML report of a whole replay.
fn write_html(
    replayed: &Replay,
    report: &AuditReport,
    window: AuditWindow,
    html: HtmlReport,
) -> anyhow::Result<()> {
    let covers = replayed.books.covers;
    let since = window
        .since
        .or(covers.map(|(first, _)| first))
        .unwrap_or(window.as_of);
    // A live log's chart ends now; an old one's (a simulation's, a copy's) at
    // its last event, unless --until says otherwise.
    let until = html.until.unwrap_or_else(|| match covers {
        Some((_, last)) if window.as_of.millis_since(last) > 86_400_000 => last,
        _ => window.as_of,
    });
    let series = replayed
        .ledger
        .vcpu_series(since, until, 400, window.orphan_grace_ms);
    let owed = replayed.ledger.owed_records(until);
    let by_repository =
        super::audit_html::by_repository(&replayed.books.usage(), html.prices.as_ref());
    let page = super::audit_html::render(report, &series, &owed, &by_repository, html.quotas)
        .map_err(|e| anyhow::anyhow!("drawing the charts: {e}"))?;
    std::fs::write(&html.path, page)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", html.path.display()))?;
    eprintln!("wrote {}", html.path.display());
    Ok(())
}

/// Replays `store` up to `horizon`, judges it, optionally against the cloud's
/// instances, and prints the report; exit 1 when it fails.
pub async fn print_audit<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    json: bool,
    window: AuditWindow,
    horizon: Option<Timestamp>,
    cloud: Option<Vec<jitr_infra::ManagedInstance>>,
    html: Option<HtmlReport>,
    from_snapshot: bool,
) -> anyhow::Result<ExitCode> {
    let total = store.last_position().await?;
    let bar = super::progress_bar(total, json && total < 100_000);
    let mut report = match html {
        // The HTML report draws every runner's history: a whole replay.
        Some(html) => {
            let replayed = replay(store, window.books_window(), horizon, |p| {
                bar.set_position(p)
            })
            .await?;
            let mut report = judge(&replayed.books, &replayed.unreadable, window);
            report.unreadable_heads = unreadable_heads(store).await?;
            write_html(&replayed, &report, window, html)?;
            report
        }
        None => {
            audit(store, window, horizon, from_snapshot, |p| {
                bar.set_position(p)
            })
            .await?
        }
    };
    bar.finish_and_clear();
    if let Some(cloud) = cloud {
        report.live_check = Some(cross_check(&report, &cloud, window.as_of, 120_000));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
