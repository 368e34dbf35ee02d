//! The fleet page `jitr serve` answers at `/`, and each runner's timeline at
//! `/runners/{stream}`: server-rendered HTML (askama templates under
//! `handlers/templates/`), no script, read-only. It shows what the log and the
//! queues say — never a secret (no JIT config, no token, no webhook secret).

use askama::Template;
use std::collections::BTreeMap;

use jitr_domain::{Market, MarketQuota, RunnerStatus, Timestamp};
use jitr_projections::{RunnerViews, pool_of};

use crate::commands::history::Timeline;
use crate::commands::report::{describe, reason, rfc3339};

/// One market's use against its quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketRow {
    /// `spot`, `on-demand`, `stray`.
    pub market: String,
    /// Instances that may be alive.
    pub instances: u32,
    /// Their vCPUs.
    pub vcpus: u32,
    /// The quota as jitr knows it: configured, learnt, or not known yet;
    /// and a pause after a refusal.
    pub quota: String,
}

/// What the process knows of each market's quota.
#[derive(Clone, Debug, Default)]
pub struct Quotas {
    /// The capacity ledger's markets as the last admission round left them.
    pub known: BTreeMap<Market, MarketQuota>,
    /// The pool file's `[quotas]`.
    pub configured: Vec<(Market, u32)>,
}

impl Quotas {
    /// How the page says `market`'s quota at `now`.
    fn describe(&self, market: Market, now: Timestamp) -> String {
        let known = self.known.get(&market).copied().unwrap_or_default();
        let mut text = match (
            known.ceiling,
            self.configured.iter().any(|(m, _)| *m == market),
        ) {
            (Some(c), true) => format!("{c} (configured)"),
            (Some(c), false) => format!("{c} (learnt from EC2's refusal)"),
            (None, _) => "not known yet (no refusal seen)".to_owned(),
        };
        if let Some(until) = known.pause.until.filter(|_| known.pause.holds(now)) {
            text.push_str(&format!(", launches paused until {}", rfc3339(until)));
        }
        text
    }
}

/// One pool's instances in one market.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRow {
    /// The pool.
    pub pool: String,
    /// The market.
    pub market: String,
    /// Instances that may be alive.
    pub instances: u32,
    /// Their vCPUs.
    pub vcpus: u32,
}

/// Jobs started on one pool's runners since this process started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRow {
    /// The pool.
    pub pool: String,
    /// Jobs started.
    pub jobs: u64,
    /// Queued → started over the latest starts: median and 99th percentile.
    pub p50: String,
    /// See `p50`.
    pub p99: String,
    /// Jobs a warm runner took.
    pub warm_hits: u64,
    /// Runner-minutes idle before the jobs they took.
    pub idle_minutes: String,
    /// The pool's runners parked (a stopped pool) now.
    pub parked: u32,
}

/// One open runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerRow {
    /// Its stream id.
    pub stream: String,
    /// Its timeline page.
    pub href: String,
    /// Its pool.
    pub pool: String,
    /// Its status.
    pub status: String,
    /// Its instance, or `—`.
    pub instance: String,
    /// The instance's market, or `—`.
    pub market: String,
    /// Since its request.
    pub age: String,
}

/// A runner (or stray instance) owed a termination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwedRow {
    /// The runner's stream id.
    pub stream: String,
    /// Its timeline page.
    pub href: String,
    /// Its status.
    pub status: String,
    /// The instance, or `—`.
    pub instance: String,
    /// Its vCPUs, or `—`.
    pub vcpus: String,
    /// How long it has been owed.
    pub owed_for: String,
    /// Longer than ten minutes.
    pub overdue: bool,
    /// Why.
    pub reason: String,
    /// `requested` or `not yet`, and whether a stray.
    pub requested: String,
}

/// One queue's depths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRow {
    /// Its name.
    pub name: String,
    /// Messages waiting.
    pub waiting: u64,
    /// Dead letters.
    pub dead: u64,
    /// Above the alarm threshold.
    pub alarming: bool,
    /// The latest dead letters' reasons.
    pub reasons: Vec<String>,
}

/// One runner (or queued job no pool serves) waiting, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingRow {
    /// The runner's stream id, or the job (`owner/repo job ID`).
    pub what: String,
    /// The runner's timeline page (none for a job).
    pub href: Option<String>,
    /// Its pool (`-`: none).
    pub pool: String,
    /// The reason's kind (`quota`, `no-pool`, …).
    pub kind: &'static str,
    /// The reason in words.
    pub reason: String,
    /// How long it has waited.
    pub waited: String,
}

/// What waits now: each runner the scale-up last saw waiting that the views
/// still show without a JIT config (a runner that moved on is left out),
/// then each queued job no pool serves.
pub fn waiting_now(
    views: &RunnerViews,
    runners: &[crate::app::scaleup::WaitingRunner],
    jobs: &[crate::app::metrics::UnservedJob],
    now: Timestamp,
) -> Vec<(WaitingRow, jitr_domain::WaitReason)> {
    let mut rows = Vec::new();
    for w in runners {
        let still = views.open.get(&w.stream).is_some_and(|s| {
            s.runner_name.is_none() && s.failure.is_none() && s.termination_requested.is_none()
        });
        if !still {
            continue;
        }
        let stream = w.stream.to_string();
        rows.push((
            WaitingRow {
                href: Some(runner_href(&stream)),
                what: stream,
                pool: if w.pool.is_empty() {
                    "-".into()
                } else {
                    w.pool.clone()
                },
                kind: w.reason.kind(),
                reason: w.reason.to_string(),
                waited: duration(now.millis_since(w.since)),
            },
            w.reason.clone(),
        ));
    }
    for job in jobs {
        let reason = jitr_domain::WaitReason::NoPool {
            labels: job.labels.clone(),
        };
        rows.push((
            WaitingRow {
                what: format!("{} job {}", job.repository, job.job_id),
                href: None,
                pool: "-".into(),
                kind: reason.kind(),
                reason: reason.to_string(),
                waited: duration(now.millis_since(job.since)),
            },
            reason,
        ));
    }
    rows
}

/// Waiting runners and jobs counted by (pool, reason kind), as
/// `jitr_runners_waiting` has them.
pub fn waiting_counts(
    rows: &[(WaitingRow, jitr_domain::WaitReason)],
) -> Vec<(String, String, u64)> {
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (row, _) in rows {
        *counts
            .entry((row.pool.clone(), row.kind.to_owned()))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((pool, kind), n)| (pool, kind, n))
        .collect()
}

/// Which runners the page lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Filter {
    /// Only this status (kebab-case), when not empty.
    #[serde(default)]
    pub status: String,
    /// Only this pool, when not empty.
    #[serde(default)]
    pub pool: String,
    /// The charts' window, hours (default [`DEFAULT_HOURS`], at most
    /// [`MAX_HOURS`]).
    #[serde(default)]
    pub hours: Option<u32>,
}

/// The charts' window unless the query says otherwise, hours.
pub const DEFAULT_HOURS: u32 = 6;
/// The longest window the series keeps, hours.
pub const MAX_HOURS: u32 = 24;

/// One repository's bar on the fleet page.
pub struct RepositoryRow {
    repository: String,
    hours: String,
    usd: String,
    /// The bar's top, px.
    y: u32,
    /// The label's baseline, px.
    text_y: u32,
    /// The bar's width, px.
    width: u32,
    /// Where the value is written, px.
    value_x: u32,
    /// What the bar measures, as written beside it.
    value: String,
}

/// The widest bar, px.
const BAR_WIDTH: f64 = 560.0;
/// Where bars start, px (the repository's name is left of it).
const BAR_X: u32 = 260;

/// The repositories' bars and the chart's height: cost when priced, else
/// instance-hours; the costliest first, the rest past the chart's bars as
/// `others (N)` (as `audit --html` draws them).
fn repository_rows(
    closed: &BTreeMap<String, crate::app::metrics::RepositoryCost>,
    priced: bool,
) -> (Vec<RepositoryRow>, u32) {
    use crate::commands::audit_html::{RepositoryUsage, top_repositories};
    let lines = top_repositories(
        closed
            .iter()
            .map(|(repository, cost)| RepositoryUsage {
                repository: repository.clone(),
                instance_hours: cost.seconds / 3600.0,
                usd: priced.then_some(cost.usd),
            })
            .collect(),
    );
    let value = |l: &RepositoryUsage| l.usd.unwrap_or(l.instance_hours);
    let top = lines.iter().map(value).fold(0.0, f64::max).max(1e-9);
    let rows = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let width = (value(line) / top * BAR_WIDTH).round() as u32;
            RepositoryRow {
                repository: line.repository.clone(),
                hours: format!("{:.2}", line.instance_hours),
                usd: line
                    .usd
                    .map_or_else(|| "—".into(), |usd| format!("{usd:.2}")),
                y: 6 + 26 * i as u32,
                text_y: 20 + 26 * i as u32,
                width,
                value_x: BAR_X + width + 8,
                value: match line.usd {
                    Some(usd) => format!("${usd:.2}"),
                    None => format!("{:.2} h", line.instance_hours),
                },
            }
        })
        .collect::<Vec<_>>();
    let height = 12 + 26 * rows.len() as u32;
    (rows, height)
}

/// The fleet page.
#[derive(Template)]
#[template(path = "fleet.html")]
pub struct FleetPage {
    now: String,
    position: u64,
    markets: Vec<MarketRow>,
    pools: Vec<PoolRow>,
    starts: Vec<StartRow>,
    owed: Vec<OwedRow>,
    statuses: Vec<String>,
    pool_names: Vec<String>,
    filter_status: String,
    filter_pool: String,
    counts: Vec<(String, String, u64)>,
    runners: Vec<RunnerRow>,
    queues: Vec<QueueRow>,
    waiting: Vec<WaitingRow>,
    charts: Vec<String>,
    hours: u32,
    hour_choices: Vec<u32>,
    repositories: Vec<RepositoryRow>,
    repositories_height: u32,
    repositories_priced: bool,
    bar_x: u32,
}

/// Lines of a runner's console its page shows.
pub const CONSOLE_LINES: usize = 40;

/// What a runner's page says of its instance's console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// Its last lines.
    Tail(String),
    /// Nothing launched.
    NoInstance,
    /// The provider has none (not booted yet, or gone too long ago).
    NotCaptured,
    /// It could not be read.
    NotRead(String),
}

/// A runner's timeline page.
#[derive(Template)]
#[template(path = "runner.html")]
pub struct RunnerPage {
    stream: String,
    status: String,
    instance: String,
    events: Vec<EventRow>,
    console: Option<String>,
    console_note: String,
}

/// One event of a timeline page.
pub struct EventRow {
    seq: u64,
    at: String,
    offset: String,
    kind: &'static str,
    what: String,
}

/// The job starts this process saw, and each pool's parked runners.
fn start_rows(parked: &BTreeMap<String, u32>) -> Vec<StartRow> {
    let starts = crate::app::metrics::job_starts();
    let mut pools: Vec<&String> = starts.keys().chain(parked.keys()).collect();
    pools.sort();
    pools.dedup();
    pools
        .into_iter()
        .map(|pool| {
            let s = starts.get(pool).cloned().unwrap_or_default();
            let waits = jitr_projections::accounting::Distribution::of(
                s.recent_waits_ms.iter().copied().collect(),
            );
            let seconds = |ms: u64| {
                if waits.count == 0 {
                    "—".to_owned()
                } else {
                    format!("{:.1} s", ms as f64 / 1000.0)
                }
            };
            StartRow {
                pool: if pool.is_empty() {
                    "-".into()
                } else {
                    pool.clone()
                },
                jobs: s.jobs,
                p50: seconds(waits.p50),
                p99: seconds(waits.p99),
                warm_hits: s.warm_hits,
                idle_minutes: format!("{:.1}", s.idle_ms as f64 / 60_000.0),
                parked: parked.get(pool).copied().unwrap_or(0),
            }
        })
        .collect()
}

/// The link to a runner's timeline (its id percent-encoded: it holds `/` and
/// `#`).
pub fn runner_href(stream: &str) -> String {
    format!(
        "/runners/{}",
        percent_encoding::utf8_percent_encode(stream, percent_encoding::NON_ALPHANUMERIC)
    )
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// What the serving process knows besides the views.
pub struct Known<'a> {
    /// The quotas.
    pub quotas: Quotas,
    /// The configured pools' names.
    pub pool_names: Vec<String>,
    /// The queues' depths, read just before.
    pub queues: Vec<QueueRow>,
    /// What waits, and why ([`waiting_now`]).
    pub waiting: Vec<(WaitingRow, jitr_domain::WaitReason)>,
    /// The fleet over time, when kept.
    pub series: Option<&'a jitr_projections::series::FleetSeries>,
}

impl FleetPage {
    /// The page of `views` at `now`, with what the process `known`, and
    /// `filter` from the query string.
    pub fn of(views: &RunnerViews, now: Timestamp, known: Known<'_>, filter: Filter) -> Self {
        let Known {
            quotas,
            pool_names,
            queues,
            waiting,
            series,
        } = known;
        let quotas = &quotas;
        let hours = filter.hours.unwrap_or(DEFAULT_HOURS).clamp(1, MAX_HOURS);
        let ceiling = |market: Market| {
            quotas
                .known
                .get(&market)
                .and_then(|q| q.ceiling)
                .or_else(|| {
                    quotas
                        .configured
                        .iter()
                        .find(|(m, _)| *m == market)
                        .map(|(_, v)| *v)
                })
        };
        let charts = series.map_or_else(Vec::new, |series| {
            super::chart::fleet_charts(
                series,
                now,
                hours,
                super::chart::QuotaLines {
                    spot: ceiling(Market::Spot),
                    on_demand: ceiling(Market::OnDemand),
                },
            )
            .iter()
            .map(super::chart::Chart::svg)
            .collect()
        });
        let reasons: BTreeMap<&str, &str> = waiting
            .iter()
            .filter(|(row, _)| row.href.is_some())
            .map(|(row, _)| (row.what.as_str(), row.reason.as_str()))
            .collect();
        let (closed, repositories_priced) = crate::app::metrics::closed_by_repository();
        let (repositories, repositories_height) = repository_rows(&closed, repositories_priced);
        let fleet = views.fleet();
        let markets = vec![
            MarketRow {
                market: "spot".into(),
                instances: fleet.spot.instances,
                vcpus: fleet.spot.vcpus,
                quota: quotas.describe(Market::Spot, now),
            },
            MarketRow {
                market: "on-demand".into(),
                instances: fleet.on_demand.instances,
                vcpus: fleet.on_demand.vcpus,
                quota: quotas.describe(Market::OnDemand, now),
            },
            MarketRow {
                market: "stray".into(),
                instances: fleet.strays.instances,
                vcpus: fleet.strays.vcpus,
                quota: "—".into(),
            },
        ];
        let mut by_pool: BTreeMap<(String, &'static str), (u32, u32)> = BTreeMap::new();
        let mut parked: BTreeMap<String, u32> = BTreeMap::new();
        let mut runners = Vec::new();
        for (stream, state) in &views.open {
            let pool = pool_of(state).to_owned();
            let is_parked = state.is_parking() && state.parked_at.is_some();
            if is_parked {
                *parked.entry(pool.clone()).or_default() += 1;
            }
            let alive = state.instance_may_be_alive();
            if let (true, Some(instance)) = (alive, state.instance()) {
                let entry = by_pool
                    .entry((pool.clone(), instance.market.as_str()))
                    .or_default();
                entry.0 += 1;
                entry.1 += instance.vcpus;
            }
            let status = if is_parked {
                "parked".to_owned()
            } else {
                state.status().as_str().to_owned()
            };
            if (!filter.status.is_empty() && filter.status != status)
                || (!filter.pool.is_empty() && filter.pool != pool)
            {
                continue;
            }
            let stream = stream.to_string();
            let status = match reasons.get(stream.as_str()) {
                Some(reason) => format!("waiting: {reason}"),
                None => status,
            };
            runners.push(RunnerRow {
                href: runner_href(&stream),
                stream,
                pool,
                status,
                instance: state
                    .instance()
                    .map_or_else(|| "—".to_owned(), |i| i.id.to_string()),
                market: state
                    .instance()
                    .map_or_else(|| "—".to_owned(), |i| i.market.as_str().to_owned()),
                age: state
                    .request
                    .as_ref()
                    .map_or_else(|| "—".to_owned(), |r| duration(now.millis_since(r.at))),
            });
        }
        let owed = views
            .open_leaks(now)
            .into_iter()
            .map(|leak| {
                let stream = leak.stream.to_string();
                let ms = now.millis_since(leak.owed_since);
                OwedRow {
                    href: runner_href(&stream),
                    stream,
                    status: leak.status.as_str().to_owned(),
                    instance: leak
                        .instance_id
                        .map_or_else(|| "—".to_owned(), |i| i.to_string()),
                    vcpus: leak.vcpus.map_or_else(|| "—".to_owned(), |v| v.to_string()),
                    owed_for: duration(ms),
                    overdue: ms > 600_000,
                    reason: reason(&leak.reason),
                    requested: match (leak.termination_requested, leak.stray) {
                        (_, true) => "requested (stray)".into(),
                        (true, false) => "requested".into(),
                        (false, false) => "not yet".into(),
                    },
                }
            })
            .collect();
        FleetPage {
            now: rfc3339(now),
            position: views.position,
            markets,
            pools: by_pool
                .into_iter()
                .map(|((pool, market), (instances, vcpus))| PoolRow {
                    pool,
                    market: market.to_owned(),
                    instances,
                    vcpus,
                })
                .collect(),
            starts: start_rows(&parked),
            repositories,
            repositories_height,
            repositories_priced,
            bar_x: BAR_X,
            owed,
            statuses: RunnerStatus::ALL
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            pool_names,
            filter_status: filter.status,
            filter_pool: filter.pool,
            counts: views
                .by_pool_and_status()
                .into_iter()
                .map(|((pool, status), n)| (pool, status.as_str().to_owned(), n))
                .collect(),
            runners,
            queues,
            waiting: waiting.into_iter().map(|(row, _)| row).collect(),
            charts,
            hours,
            hour_choices: vec![1, 3, 6, 12, 24],
        }
    }
}

impl RunnerPage {
    /// The page of one runner's timeline, with its console's tail.
    pub fn of(timeline: &Timeline, console: Console) -> Self {
        let start = timeline.events.first().map(|e| e.event.at());
        let (console, console_note) = match console {
            Console::Tail(text) => (
                Some(text),
                format!("the last {CONSOLE_LINES} lines (`jitr logs` prints it all)"),
            ),
            Console::NoInstance => (None, "no instance was launched".to_owned()),
            Console::NotCaptured => (
                None,
                "none captured (EC2 captures it after boot, and keeps it a while after termination)"
                    .to_owned(),
            ),
            Console::NotRead(e) => (None, format!("not read: {e}")),
        };
        RunnerPage {
            console,
            console_note,
            stream: timeline.stream.to_string(),
            status: timeline.status.to_string(),
            instance: timeline
                .instance_id
                .as_ref()
                .map_or_else(|| "none".to_owned(), |i| i.to_string()),
            events: timeline
                .events
                .iter()
                .map(|e| EventRow {
                    seq: e.seq,
                    at: e.at.clone(),
                    offset: format!(
                        "{:.1} s",
                        start.map_or(0, |s| e.event.at().millis_since(s)) as f64 / 1000.0
                    ),
                    kind: e.event.kind(),
                    what: describe(&e.event),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::metrics::RepositoryCost;

    #[test]
    fn repositories_past_the_charts_bars_are_summed_as_others() {
        let closed: BTreeMap<String, RepositoryCost> = (1..=20)
            .map(|i| {
                (
                    format!("acme/repo-{i:02}"),
                    RepositoryCost {
                        seconds: 3600.0 * f64::from(i),
                        usd: 0.5 * f64::from(i),
                        unpriced_seconds: 0.0,
                    },
                )
            })
            .collect();
        let (rows, height) = repository_rows(&closed, true);
        assert_eq!(rows.len(), 15);
        assert_eq!(rows[0].repository, "acme/repo-20");
        // 14 bars, then the 6 smallest (1..=6: 21 h, $10.50) as one.
        assert_eq!(rows[14].repository, "others (6)");
        assert_eq!(
            (rows[14].hours.as_str(), rows[14].usd.as_str()),
            ("21.00", "10.50")
        );
        assert!(rows.iter().all(|r| r.width <= BAR_WIDTH as u32));
        assert_eq!(height, 12 + 26 * 15);
        let (unpriced, _) = repository_rows(&closed, false);
        assert_eq!(unpriced[0].value, "20.00 h");
        assert_eq!(unpriced[14].usd, "—");
    }
}
