//! `jitr cost`: what the runners' instances cost, by repository, pool,
//! instance type or market, over a window of the log (ADR-0023): instance
//! time from `Launched` to `Terminated` (less the time parked), from the
//! audit's books, times the prices of a prices file.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use jitr_domain::{Market, Timestamp};
use jitr_infra::{CheckpointStore, EventStore, StoreError};
use jitr_projections::books::{Books, UsageKey, Window};
use serde::{Deserialize, Serialize};

use crate::app::books::{SnapshotEntry, latest_before};
use crate::commands::audit::{FeedItem, read_feed};
use crate::commands::report::rfc3339;

/// USD per instance-hour, by market then instance type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// On-demand prices.
    #[serde(default, rename = "on-demand")]
    pub on_demand: BTreeMap<String, f64>,
    /// Spot prices.
    #[serde(default)]
    pub spot: BTreeMap<String, f64>,
}

impl Prices {
    /// Reads a prices file (TOML: `[on-demand]` and `[spot]` tables of
    /// `"instance-type" = usd_per_hour`).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let prices: Prices =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (market, table) in [("on-demand", &prices.on_demand), ("spot", &prices.spot)] {
            for (instance_type, usd) in table {
                if !usd.is_finite() || *usd < 0.0 {
                    anyhow::bail!(
                        "{}: [{market}] {instance_type:?} = {usd}: a price is a non-negative number of USD an hour",
                        path.display()
                    );
                }
            }
        }
        Ok(prices)
    }

    /// USD an hour of `instance_type` in `market`, when known.
    pub fn hourly(&self, market: Market, instance_type: &str) -> Option<f64> {
        match market {
            Market::OnDemand => &self.on_demand,
            Market::Spot => &self.spot,
        }
        .get(instance_type)
        .copied()
    }
}

/// What the cost is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupBy {
    /// The job's repository.
    Repo,
    /// The runner's pool.
    Pool,
    /// The instance type.
    Type,
    /// Spot or on-demand.
    Market,
}

impl GroupBy {
    fn of(self, key: &UsageKey) -> String {
        match self {
            GroupBy::Repo => key.repository.clone(),
            GroupBy::Pool => key.pool.clone(),
            GroupBy::Type => key.instance_type.clone(),
            GroupBy::Market => key.market.as_str().to_owned(),
        }
    }
}

/// One group's instance time and cost.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostLine {
    /// The group (a repository, pool, type or market).
    pub group: String,
    /// Instance-seconds.
    pub instance_seconds: f64,
    /// USD (the instance time with a price).
    pub usd: f64,
    /// Instance-seconds with no price in the prices file.
    pub unpriced_instance_seconds: f64,
}

/// The cost report (`--json` prints it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostReport {
    /// The window, RFC 3339.
    pub window: (String, String),
    /// What the lines are grouped by.
    pub by: GroupBy,
    /// The groups, costliest first.
    pub lines: Vec<CostLine>,
    /// All groups.
    pub total: CostLine,
    /// Instance types with time but no price: `market instance-type`.
    pub unpriced: Vec<String>,
    /// The snapshot the fold started from, if any.
    pub snapshot: Option<SnapshotEntry>,
}

/// Prices `usage` (instance-ms by key), grouped `by`.
pub fn price(
    usage: &BTreeMap<UsageKey, u64>,
    prices: &Prices,
    by: GroupBy,
    window: (String, String),
) -> CostReport {
    let mut groups: BTreeMap<String, CostLine> = BTreeMap::new();
    let mut unpriced = std::collections::BTreeSet::new();
    let blank = |group: String| CostLine {
        group,
        instance_seconds: 0.0,
        usd: 0.0,
        unpriced_instance_seconds: 0.0,
    };
    let mut total = blank("total".into());
    for (key, ms) in usage {
        let seconds = *ms as f64 / 1000.0;
        let name = by.of(key);
        let line = groups.entry(name.clone()).or_insert_with(|| blank(name));
        for line in [line, &mut total] {
            line.instance_seconds += seconds;
            match prices.hourly(key.market, &key.instance_type) {
                Some(hourly) => line.usd += seconds / 3600.0 * hourly,
                None => line.unpriced_instance_seconds += seconds,
            }
        }
        if prices.hourly(key.market, &key.instance_type).is_none() {
            unpriced.insert(format!("{} {}", key.market.as_str(), key.instance_type));
        }
    }
    let mut lines: Vec<CostLine> = groups.into_values().collect();
    lines.sort_by(|a, b| {
        b.usd
            .total_cmp(&a.usd)
            .then(b.instance_seconds.total_cmp(&a.instance_seconds))
            .then(a.group.cmp(&b.group))
    });
    CostReport {
        window,
        by,
        lines,
        total,
        unpriced: unpriced.into_iter().collect(),
        snapshot: None,
    }
}

/// Folds `store` for `window` (from the last snapshot before it when there
/// is one) and returns the instance time by key, and the snapshot used.
pub async fn usage<S: EventStore + CheckpointStore + ?Sized>(
    store: &S,
    window: Window,
    progress: impl FnMut(u64),
) -> Result<(BTreeMap<UsageKey, u64>, Option<SnapshotEntry>), StoreError> {
    let snapshot = if window.since.0 > i64::MIN {
        latest_before(store, window.since).await?
    } else {
        None
    };
    let (entry, mut books) = match snapshot {
        Some((entry, snapshot)) => (Some(entry), snapshot.books),
        None => (None, Books::new(Window::none())),
    };
    books.open_window(window);
    crate::app::archive::require_whole_feed(store, books.position).await?;
    read_feed(
        store,
        books.position,
        |item| match item {
            FeedItem::Event(r) => books.fold(r.position, &r.stream, &r.event, Some(window.until)),
            FeedItem::Unreadable(u) => books.pass_over(u.position),
        },
        progress,
    )
    .await?;
    Ok((books.usage(), entry))
}

/// `jitr cost` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    data: super::DataDir,
    /// The prices: a TOML file of `[on-demand]` and `[spot]` tables,
    /// `"c5.xlarge" = 0.17` (USD an instance-hour).
    #[arg(long, value_name = "FILE")]
    prices: std::path::PathBuf,
    /// Start of the window (RFC 3339; default: the first event).
    #[arg(long, value_parser = super::parse_moment)]
    since: Option<Timestamp>,
    /// End of the window (RFC 3339; default: now).
    #[arg(long, value_parser = super::parse_moment)]
    until: Option<Timestamp>,
    /// Group by.
    #[arg(long, value_enum, default_value = "repo")]
    by: GroupBy,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    archive: super::ArchiveChoice,
}

/// Prices the window's instance time and prints it.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    let prices = Prices::load(&args.prices)?;
    let until = args.until.unwrap_or_else(crate::runtime::now);
    let window = Window {
        since: args.since.unwrap_or(Timestamp(i64::MIN)),
        until,
        grace_ms: super::audit::DEFAULT_DEADLINE_MS,
    };
    let store = args.archive.open(&args.data.path).await?;
    let total = store.last_position().await?;
    let bar = super::progress_bar(total, args.json);
    let (usage, snapshot) = usage(&store, window, |p| bar.set_position(p)).await?;
    bar.finish_and_clear();
    let since = args
        .since
        .map_or_else(|| "the first event".to_owned(), rfc3339);
    let mut report = price(&usage, &prices, args.by, (since, rfc3339(until)));
    report.snapshot = snapshot;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as a table for people.
pub fn render(report: &CostReport) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "instance cost {} .. {}, by {:?}\n",
        report.window.0, report.window.1, report.by
    );
    let _ = writeln!(out, "  {:<32} {:>14} {:>12}", "", "instance-hours", "USD");
    for line in report.lines.iter().chain([&report.total]) {
        let _ = writeln!(
            out,
            "  {:<32} {:>14.2} {:>12.2}{}",
            line.group,
            line.instance_seconds / 3600.0,
            line.usd,
            if line.unpriced_instance_seconds > 0.0 {
                format!(
                    "  ({:.2} h unpriced)",
                    line.unpriced_instance_seconds / 3600.0
                )
            } else {
                String::new()
            }
        );
    }
    if !report.unpriced.is_empty() {
        let _ = writeln!(
            out,
            "no price for: {} (add them to the prices file)",
            report.unpriced.join(", ")
        );
    }
    out
}
