//! `jitr audit`: replays the whole log and reports runners by status, the fleet,
//! and every runner owed a termination.

use std::collections::BTreeMap;

use jitr_domain::{InstanceId, RunnerStatus, StreamId, TerminationReason, Timestamp};
use jitr_infra::{EventStore, StoreError};
use jitr_projections::{Fleet, RunnerViews};
use serde::Serialize;

use crate::projector::FEED_PAGE;
use crate::report::{reason, rfc3339, span};

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
}

impl AuditReport {
    /// Whether the log shows an instance owed a termination past the deadline.
    pub fn failed(&self) -> bool {
        self.owed_past_deadline > 0
    }
}

/// Replays the whole log into fresh views; `progress` hears each page's last
/// position.
pub async fn replay<S: EventStore + ?Sized>(
    store: &S,
    mut progress: impl FnMut(u64),
) -> Result<(RunnerViews, u64), StoreError> {
    let mut views = RunnerViews::default();
    let mut events = 0u64;
    loop {
        let page = store.read_all(views.position, FEED_PAGE).await?;
        let Some(last) = page.last() else { break };
        let last = last.position;
        for r in &page {
            views.apply(r.position, &r.stream, &r.event);
        }
        events += page.len() as u64;
        progress(last);
    }
    Ok((views, events))
}

/// Judges replayed views at `now`.
pub fn judge(views: &RunnerViews, events: u64, now: Timestamp, deadline_ms: u64) -> AuditReport {
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
                past_deadline: owed_for_ms > deadline_ms,
            }
        })
        .collect();
    AuditReport {
        schema: 1,
        as_of: rfc3339(now),
        as_of_ms: now.0,
        events,
        runners: (views.open.len() + views.closed.len()) as u64,
        by_status: views.by_status(),
        fleet: views.fleet(),
        owed_past_deadline: owed.iter().filter(|o| o.past_deadline).count() as u64,
        owed,
        deadline_ms,
        events_after_close: views.after_close,
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
    if report.events_after_close > 0 {
        let _ = writeln!(
            out,
            "\nwarning: {} events arrived after their stream closed",
            report.events_after_close
        );
    }
    out
}
