//! `jitr archive`: moves closed runners past the retention from the log to
//! the archive (ADR-0024), lists what it holds, and queries it with an
//! embedded engine (DataFusion): the window's orphan vCPU-minutes and cost
//! per repository, or any SQL over its `events` and `runners` tables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use datafusion::arrow::array::{Array as _, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use jitr_domain::Timestamp;
use jitr_infra::SqliteEventStore;
use jitr_infra::archive::{ArchiveObjects, EVENTS, LocalArchive, RUNNERS};
use serde::Serialize;

use super::cost::Prices;
use crate::app::archive::{ArchiveRun, archive, load_index};

/// `jitr archive` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Archive every UTC day whose runners all closed more than --retention
    /// ago: close the books, write the day's events and runners as Parquet,
    /// read each part back and count it, then let the log drop them.
    Run(RunArgs),
    /// List the parts the archive's index holds.
    List(Where),
    /// Orphan vCPU-minutes and cost per repository of the runners that
    /// closed in a window of days, from the archive's `runners` table.
    Report(ReportArgs),
    /// Run one SQL query over the archive: tables `events` and `runners`,
    /// each with the partition column `day` (`2026-03-01`).
    Sql(SqlArgs),
}

/// Which log and archive.
#[derive(clap::Args, Debug)]
pub struct Where {
    #[command(flatten)]
    data: super::DataDir,
    /// The archive's directory (default: DATA_DIR/archive).
    #[arg(long, value_name = "DIR")]
    archive_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Where {
    fn archive_dir(&self) -> PathBuf {
        self.archive_dir
            .clone()
            .unwrap_or_else(|| default_dir(&self.data.path))
    }
}

/// The archive of a data directory, unless told otherwise.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("archive")
}

/// `jitr archive run` arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    place: Where,
    /// Archive the AWS deployment (DynamoDB log) to its S3 bucket instead:
    /// its items get their TTL only after the count check.
    #[arg(long)]
    aws: bool,
    #[command(flatten)]
    target: super::AwsTarget,
    /// With --aws: the archive's S3 bucket (the stack's `ArchiveBucket` output).
    #[arg(long, env = "JITR_ARCHIVE_BUCKET")]
    bucket: Option<String>,
    /// How long a closed runner stays in the log (at least 15 days).
    #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
    retention: std::time::Duration,
    /// Archive as of this moment (RFC 3339) instead of now.
    #[arg(long, value_parser = super::parse_moment)]
    now: Option<Timestamp>,
}

/// `jitr archive report` arguments.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    place: Where,
    /// The prices file (as `jitr cost` takes).
    #[arg(long, value_name = "FILE")]
    prices: PathBuf,
    /// First day whose closed runners count (`2026-01-01`; default: all).
    #[arg(long, value_name = "DAY")]
    since: Option<String>,
    /// Last day whose closed runners count (default: all).
    #[arg(long, value_name = "DAY")]
    until: Option<String>,
    /// An instance counts as orphaned this long after its termination became owed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    orphan_grace: std::time::Duration,
    /// Only the archive: leave out the runners closed in the log that are
    /// not archived yet (by default they are added, read from the log).
    #[arg(long)]
    archive_only: bool,
}

/// `jitr archive sql` arguments.
#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    #[command(flatten)]
    place: Where,
    /// The query.
    query: String,
}

/// Runs an archive subcommand.
pub async fn command(args: Args) -> anyhow::Result<ExitCode> {
    match args {
        Args::Run(args) => run(args).await,
        Args::List(place) => list(place).await,
        Args::Report(args) => report_command(args).await,
        Args::Sql(args) => sql_command(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(crate::runtime::now);
    let retention_ms = args.retention.as_millis() as u64;
    if args.aws {
        #[cfg(feature = "aws")]
        {
            let Some(bucket) = &args.bucket else {
                anyhow::bail!(
                    "--aws needs --bucket (or JITR_ARCHIVE_BUCKET): the stack's ArchiveBucket output"
                );
            };
            let config = args.target.settings().load().await;
            let names = jitr_aws::AwsNames::new(args.target.prefix.clone());
            let store = jitr_aws::DynamoEventStore::new(&config, names.events_table());
            let objects = jitr_aws::S3Archive::new(&config, bucket, "");
            return run_on(&store, &objects, now, retention_ms, args.place.json).await;
        }
        #[cfg(not(feature = "aws"))]
        return Err(super::without_aws());
    }
    let path = args.place.data.path.join(super::LOG_FILE);
    if !path.is_file() {
        anyhow::bail!("no jitr log at {}", path.display());
    }
    let store = SqliteEventStore::open(&path)?;
    let objects = LocalArchive::new(args.place.archive_dir());
    run_on(&store, &objects, now, retention_ms, args.place.json).await
}

async fn run_on<S: jitr_infra::ExpiringLog + jitr_infra::CheckpointStore>(
    store: &S,
    objects: &dyn ArchiveObjects,
    now: Timestamp,
    retention_ms: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new_spinner();
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let done = archive(store, objects, now, retention_ms, None, |n| {
        bar.set_message(format!("{n} events archived"))
    })
    .await?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        print!("{}", render_run(&done, &objects.location()));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_run(run: &ArchiveRun, location: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !run.snapshots.is_empty() {
        let _ = writeln!(out, "closed the books of {} days", run.snapshots.len());
    }
    for part in &run.parts {
        let _ = writeln!(
            out,
            "day {}  positions {}..={}  {} runners  {} events  archived, counted, let go",
            part.day, part.first, part.last, part.runners, part.events
        );
    }
    for day in &run.deferred_days {
        let _ = writeln!(
            out,
            "day {day}: deferred, no snapshot holds all its events yet"
        );
    }
    if run.parts.is_empty() {
        let _ = writeln!(out, "nothing past the retention to archive");
    } else {
        let events: u64 = run.parts.iter().map(|p| p.events).sum();
        let _ = writeln!(out, "{events} events archived to {location}");
    }
    out
}

async fn list(place: Where) -> anyhow::Result<ExitCode> {
    let store = super::open_existing(&place.data.path)?;
    let (index, _) = load_index(&store).await?;
    if place.json {
        println!("{}", serde_json::to_string_pretty(&index)?);
        return Ok(ExitCode::SUCCESS);
    }
    if index.parts.is_empty() {
        println!("nothing archived");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} parts, {} events, at {}",
        index.parts.len(),
        index.events(),
        index.location
    );
    for p in &index.parts {
        println!(
            "  {}  positions {}..={}  {} runners  {} events",
            p.day, p.first, p.last, p.runners, p.events
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A session over the archive at `dir`: `events` and `runners`, partitioned
/// by `day`, and `prices` when given. With `hot` (the log's closed runners
/// not archived yet, [`hot_runners`]), `runners` is the archived ones and
/// those.
pub async fn session(
    dir: &Path,
    prices: Option<&Prices>,
    hot: Option<Vec<RecordBatch>>,
) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    for table in [EVENTS, RUNNERS] {
        let path = dir.join(table);
        if !path.is_dir() {
            anyhow::bail!(
                "no archive at {} (no {table}/ in it): `jitr archive run` writes one",
                dir.display()
            );
        }
        let options = ParquetReadOptions::default()
            .table_partition_cols(vec![("day".to_owned(), DataType::Utf8)]);
        let name = if table == RUNNERS && hot.is_some() {
            "archived_runners"
        } else {
            table
        };
        ctx.register_parquet(name, path.to_string_lossy().as_ref(), options)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if let Some(hot) = hot {
        ctx.register_table(
            "hot_runners",
            Arc::new(MemTable::try_new(runners_with_day_schema(), vec![hot])?),
        )?;
        ctx.sql(
            "CREATE VIEW runners AS \
             SELECT * FROM archived_runners UNION ALL SELECT * FROM hot_runners",
        )
        .await?;
    }
    if let Some(prices) = prices {
        let schema = Arc::new(Schema::new(vec![
            Field::new("market", DataType::Utf8, false),
            Field::new("instance_type", DataType::Utf8, false),
            Field::new("usd_per_hour", DataType::Float64, false),
        ]));
        let rows: Vec<(&str, &String, f64)> =
            [("on-demand", &prices.on_demand), ("spot", &prices.spot)]
                .into_iter()
                .flat_map(|(market, table)| table.iter().map(move |(t, usd)| (market, t, *usd)))
                .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(rows.iter().map(|r| Some(r.0)).collect::<StringArray>()),
                Arc::new(
                    rows.iter()
                        .map(|r| Some(r.1.as_str()))
                        .collect::<StringArray>(),
                ),
                Arc::new(rows.iter().map(|r| Some(r.2)).collect::<Float64Array>()),
            ],
        )?;
        ctx.register_table(
            "prices",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
        )?;
    }
    Ok(ctx)
}

/// The report's query: runners closed on the days `since..=until`, by
/// repository. The same SQL runs on Athena (docs/deploy.md).
pub fn report_sql(since: Option<&str>, until: Option<&str>, grace_ms: u64) -> String {
    let mut days = Vec::new();
    if let Some(since) = since {
        days.push(format!("r.day >= '{since}'"));
    }
    if let Some(until) = until {
        days.push(format!("r.day <= '{until}'"));
    }
    let filter = if days.is_empty() {
        String::new()
    } else {
        format!("WHERE {}\n", days.join(" AND "))
    };
    format!(
        "SELECT r.repository,
       COUNT(*) AS runners,
       SUM(r.instance_ms) AS instance_ms,
       SUM(CAST(r.vcpus AS BIGINT) * GREATEST(COALESCE(r.owed_ms, 0) - {grace_ms}, 0)) AS orphan_vcpu_ms,
       SUM(CASE WHEN r.owed_ms > {grace_ms} THEN 1 ELSE 0 END) AS orphans,
       SUM(r.instance_ms * p.usd_per_hour) / 3600000.0 AS usd,
       SUM(CASE WHEN p.usd_per_hour IS NULL THEN r.instance_ms ELSE 0 END) AS unpriced_ms
FROM runners r
LEFT JOIN prices p ON r.market = p.market AND r.instance_type = p.instance_type
{filter}GROUP BY r.repository
ORDER BY usd DESC NULLS LAST, r.repository"
    )
}

/// One repository's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RepositoryLine {
    /// `owner/repo` (`-` for runners with none).
    pub repository: String,
    /// Runners closed.
    pub runners: u64,
    /// Instance time, ms.
    pub instance_ms: u64,
    /// Orphan time, vCPU-ms.
    pub orphan_vcpu_ms: u64,
    /// Runners orphaned.
    pub orphans: u64,
    /// USD of the priced instance time.
    pub usd: f64,
    /// Instance time with no price, ms.
    pub unpriced_ms: u64,
}

/// Rows of the `runners` table a batch of [`hot_runners`] holds at most.
const HOT_BATCH_ROWS: usize = 100_000;

/// The `runners` table's schema with its partition column `day`.
fn runners_with_day_schema() -> Arc<Schema> {
    let mut fields: Vec<Field> = crate::app::archive::runners_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("day", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// `records` as rows of the `runners` table with its `day` column.
fn runners_with_day(
    records: &[jitr_projections::record::RunnerRecord],
) -> anyhow::Result<RecordBatch> {
    let batch = crate::app::archive::runners_batch(records)?;
    let days: StringArray = records
        .iter()
        .map(|r| Some(crate::app::books::day_name(r.closed_at)))
        .collect();
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(days));
    Ok(RecordBatch::try_new(runners_with_day_schema(), columns)?)
}

/// The closed runners of `log` (a hot log: the archived ones are gone from
/// it), as rows of the archive's `runners` table with its `day` column: the
/// tail a report adds to the archived days. Reads the log once, keeping only
/// the open streams' events and batches of [`HOT_BATCH_ROWS`] rows.
pub async fn hot_runners<S: jitr_infra::EventStore + ?Sized>(
    log: &S,
    progress: impl FnMut(u64),
) -> anyhow::Result<Vec<RecordBatch>> {
    use std::collections::HashMap;

    use jitr_domain::{RunnerEvent, RunnerState, StreamId, evolve, is_terminal};
    use jitr_projections::record::RunnerRecord;

    use crate::commands::audit::{FeedItem, read_feed};

    let mut open: HashMap<StreamId, (RunnerState, Vec<RunnerEvent>)> = HashMap::new();
    let mut records = Vec::with_capacity(HOT_BATCH_ROWS);
    let mut batches = Vec::new();
    let mut failed = None;
    read_feed(
        log,
        0,
        |item| {
            let FeedItem::Event(r) = item else { return };
            let (state, events) = open.entry(r.stream.clone()).or_default();
            *state = evolve(std::mem::take(state), &r.event);
            events.push(r.event.clone());
            if !is_terminal(state) {
                return;
            }
            if let Some((_, events)) = open.remove(&r.stream) {
                records.extend(RunnerRecord::of(&r.stream, &events));
            }
            if records.len() >= HOT_BATCH_ROWS && failed.is_none() {
                match runners_with_day(&records) {
                    Ok(batch) => batches.push(batch),
                    Err(e) => failed = Some(e),
                }
                records.clear();
            }
        },
        progress,
    )
    .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    batches.push(runners_with_day(&records)?);
    Ok(batches)
}

/// Runs the report's query over the archive at `dir`, and over `hot` (the
/// log's closed runners not archived yet) when given.
pub async fn report(
    dir: &Path,
    prices: &Prices,
    since: Option<&str>,
    until: Option<&str>,
    grace_ms: u64,
    hot: Option<Vec<RecordBatch>>,
) -> anyhow::Result<Vec<RepositoryLine>> {
    let ctx = session(dir, Some(prices), hot).await?;
    let batches = ctx
        .sql(&report_sql(since, until, grace_ms))
        .await?
        .collect()
        .await?;
    let mut lines = Vec::new();
    for batch in &batches {
        // Engines hand text back as views, sums as whatever they widened to.
        let column = |i: usize, to: &DataType| {
            datafusion::arrow::compute::cast(batch.column(i), to)
                .with_context(|| format!("the report's column {i} as {to}"))
        };
        let text = column(0, &DataType::Utf8)?;
        let text = text.as_any().downcast_ref::<StringArray>();
        let usd = column(5, &DataType::Float64)?;
        let usd = usd.as_any().downcast_ref::<Float64Array>();
        let ints = [1, 2, 3, 4, 6]
            .map(|i| column(i, &DataType::Int64))
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ints: Vec<&Int64Array> = ints
            .iter()
            .filter_map(|a| a.as_any().downcast_ref::<Int64Array>())
            .collect();
        let (Some(repo), Some(usd), [runners, instance_ms, orphan, orphans, unpriced]) =
            (text, usd, ints.as_slice())
        else {
            anyhow::bail!("the report's query returned columns of other types");
        };
        let number = |a: &Int64Array, row: usize| -> u64 {
            if a.is_null(row) {
                0
            } else {
                a.value(row).max(0) as u64
            }
        };
        for row in 0..batch.num_rows() {
            lines.push(RepositoryLine {
                repository: if repo.is_null(row) {
                    "-".into()
                } else {
                    repo.value(row).to_owned()
                },
                runners: number(runners, row),
                instance_ms: number(instance_ms, row),
                orphan_vcpu_ms: number(orphan, row),
                orphans: number(orphans, row),
                usd: if usd.is_null(row) {
                    0.0
                } else {
                    usd.value(row)
                },
                unpriced_ms: number(unpriced, row),
            });
        }
    }
    Ok(lines)
}

async fn report_command(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let prices = Prices::load(&args.prices)?;
    for day in [&args.since, &args.until].into_iter().flatten() {
        super::parse_moment(&format!("{day}T00:00:00Z"))
            .map_err(|e| anyhow::anyhow!("{day:?} is not a day (2026-01-31): {e}"))?;
    }
    let hot = if args.archive_only {
        None
    } else {
        let path = args.place.data.path.join(super::LOG_FILE);
        if !path.is_file() {
            anyhow::bail!(
                "no jitr log at {}: the report adds the runners closed in the log and not \
                 archived yet; point --data-dir at the log, or give --archive-only to read \
                 the archive alone",
                path.display()
            );
        }
        let log = SqliteEventStore::open_read_only(&path)?;
        let total = jitr_infra::EventStore::last_position(&log).await?;
        let bar = super::progress_bar(total, args.place.json);
        let hot = hot_runners(&log, |p| bar.set_position(p)).await?;
        bar.finish_and_clear();
        Some(hot)
    };
    let from_log: usize = hot.iter().flatten().map(RecordBatch::num_rows).sum();
    let lines = report(
        &args.place.archive_dir(),
        &prices,
        args.since.as_deref(),
        args.until.as_deref(),
        args.orphan_grace.as_millis() as u64,
        hot,
    )
    .await?;
    if args.place.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "runners closed {} .. {}, from the archive{}",
        args.since.as_deref().unwrap_or("the first day"),
        args.until.as_deref().unwrap_or("the last day"),
        if args.archive_only {
            String::new()
        } else {
            format!(" and the log ({from_log} runners closed there, not archived yet)")
        }
    );
    println!(
        "  {:<32} {:>9} {:>14} {:>18} {:>12}",
        "repository", "runners", "instance-hours", "orphan vCPU-min", "USD"
    );
    for l in &lines {
        println!(
            "  {:<32} {:>9} {:>14.2} {:>18.2} {:>12.2}{}",
            l.repository,
            l.runners,
            l.instance_ms as f64 / 3_600_000.0,
            l.orphan_vcpu_ms as f64 / 60_000.0,
            l.usd,
            if l.unpriced_ms > 0 {
                format!("  ({:.2} h unpriced)", l.unpriced_ms as f64 / 3_600_000.0)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn sql_command(args: SqlArgs) -> anyhow::Result<ExitCode> {
    let ctx = session(&args.place.archive_dir(), None, None).await?;
    let batches = ctx.sql(&args.query).await?.collect().await?;
    if args.place.json {
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(rows_as_json(batch)?);
        }
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{}",
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)?
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A batch's rows as JSON objects (values as the engine prints them).
fn rows_as_json(batch: &RecordBatch) -> anyhow::Result<Vec<serde_json::Value>> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let schema = batch.schema();
    Ok((0..batch.num_rows())
        .map(|row| {
            let object = schema
                .fields()
                .iter()
                .zip(&formatters)
                .zip(batch.columns())
                .map(|((field, f), column)| {
                    let value = if column.is_null(row) {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::String(f.value(row).to_string())
                    };
                    (field.name().clone(), value)
                })
                .collect();
            serde_json::Value::Object(object)
        })
        .collect())
}
