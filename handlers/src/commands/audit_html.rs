//! `jitr audit --html FILE`: the audit as one self-contained HTML file — the
//! fleet's vCPUs over time per market, stacked legitimate / owed within the
//! grace / orphaned, with the quota as a line (SVG drawn by `plotters`,
//! inline); failures by stage; every runner that was ever owed a termination
//! with its compensation latency; instance time (and cost) by repository. The
//! data behind the charts is embedded as
//! JSON (`<script type="application/json" id="chart-data">`, never run).

use jitr_domain::{Market, Timestamp};
use jitr_projections::accounting::{OwedRecord, VcpuBands, VcpuSample};
use plotters::prelude::*;
use serde::Serialize;

use jitr_projections::books::UsageKey;

use super::audit::AuditReport;
use super::cost::Prices;
use super::report::rfc3339;

/// The quotas drawn as lines (vCPUs), when known.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Quotas {
    /// On-demand.
    pub on_demand: Option<u32>,
    /// Spot.
    pub spot: Option<u32>,
}

/// One repository's instance time in the window, and its cost when priced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RepositoryUsage {
    /// `owner/repo`, or `others` for the rest past the chart's bars.
    pub repository: String,
    /// Instance-hours.
    pub instance_hours: f64,
    /// USD, when prices were given (instance time without a price counts 0).
    pub usd: Option<f64>,
}

/// Bars the repository chart draws; the rest are summed as `others`.
const REPOSITORY_BARS: usize = 15;

/// Instance time (and cost, with `prices`) by repository, the largest first:
/// [`REPOSITORY_BARS`] of them, then `others`.
pub fn by_repository(
    usage: &std::collections::BTreeMap<UsageKey, u64>,
    prices: Option<&Prices>,
) -> Vec<RepositoryUsage> {
    let mut repositories: std::collections::BTreeMap<&str, RepositoryUsage> =
        std::collections::BTreeMap::new();
    for (key, ms) in usage {
        let hours = *ms as f64 / 3_600_000.0;
        let line = repositories
            .entry(&key.repository)
            .or_insert_with(|| RepositoryUsage {
                repository: key.repository.clone(),
                instance_hours: 0.0,
                usd: prices.map(|_| 0.0),
            });
        line.instance_hours += hours;
        if let (Some(usd), Some(hourly)) = (
            line.usd.as_mut(),
            prices.and_then(|p| p.hourly(key.market, &key.instance_type)),
        ) {
            *usd += hours * hourly;
        }
    }
    top_repositories(repositories.into_values().collect())
}

/// `lines` the largest first (by cost where priced, else instance-hours):
/// [`REPOSITORY_BARS`] of them, the rest summed as `others (N)`.
pub fn top_repositories(mut lines: Vec<RepositoryUsage>) -> Vec<RepositoryUsage> {
    let priced = lines.iter().any(|l| l.usd.is_some());
    let weight = |l: &RepositoryUsage| l.usd.unwrap_or(l.instance_hours);
    lines.sort_by(|a, b| {
        weight(b)
            .total_cmp(&weight(a))
            .then(a.repository.cmp(&b.repository))
    });
    if lines.len() > REPOSITORY_BARS {
        let rest = lines.split_off(REPOSITORY_BARS - 1);
        lines.push(RepositoryUsage {
            repository: format!("others ({})", rest.len()),
            instance_hours: rest.iter().map(|l| l.instance_hours).sum(),
            usd: priced.then(|| rest.iter().filter_map(|l| l.usd).sum()),
        });
    }
    lines
}

/// The repositories' bars as an SVG document: cost when priced, else
/// instance-hours.
fn repository_chart(lines: &[RepositoryUsage]) -> Result<String, String> {
    let priced = lines.iter().any(|l| l.usd.is_some());
    let value = |l: &RepositoryUsage| {
        if priced {
            l.usd.unwrap_or(0.0)
        } else {
            l.instance_hours
        }
    };
    let top = lines.iter().map(value).fold(0.0, f64::max).max(1e-9) * 1.25;
    let rows = lines.len().max(1);
    let mut svg = String::new();
    {
        let height = 60 + 26 * rows as u32;
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                if priced {
                    "Cost by repository (USD)"
                } else {
                    "Instance-hours by repository"
                },
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(220)
            .build_cartesian_2d(0f64..top, 0f64..rows as f64)
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = lines.iter().map(|l| l.repository.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(rows * 2 + 1)
            .y_label_formatter(&|y: &f64| {
                // Labels sit at the bars' middles (i + 0.5), the largest on top.
                let middle = y - y.floor();
                let row = rows.checked_sub(1 + y.floor() as usize);
                match row {
                    Some(i) if (middle - 0.5).abs() < 1e-6 => names[i].clone(),
                    _ => String::new(),
                }
            })
            .x_desc(if priced { "USD" } else { "instance-hours" })
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(lines.iter().enumerate().map(|(i, l)| {
                let y = (rows - 1 - i) as f64;
                Rectangle::new([(0.0, y + 0.15), (value(l), y + 0.85)], LEGITIMATE.filled())
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// What the charts show, as embedded in the file.
#[derive(Debug, Serialize)]
pub struct ChartData<'a> {
    /// The samples.
    pub series: &'a [VcpuSample],
    /// Instance time (and cost) by repository.
    pub by_repository: &'a [RepositoryUsage],
    /// The quotas.
    pub quotas: Quotas,
    /// The orphan grace, ms.
    pub orphan_grace_ms: u64,
}

const LEGITIMATE: RGBColor = RGBColor(76, 120, 168);
const OWED: RGBColor = RGBColor(242, 170, 60);
const ORPHANED: RGBColor = RGBColor(200, 50, 40);

/// A band of the stacked chart: its label, colour and cumulative height.
type Layer = (&'static str, RGBColor, fn(VcpuBands) -> u32);

/// One market's stacked chart as an SVG document.
fn market_chart(
    title: &str,
    series: &[VcpuSample],
    pick: impl Fn(&VcpuSample) -> VcpuBands,
    quota: Option<u32>,
) -> Result<String, String> {
    let start = series.first().map_or(0, |s| s.at_ms);
    let minutes = |s: &VcpuSample| (s.at_ms - start) as f64 / 60_000.0;
    let span = series.last().map_or(1.0, minutes).max(1.0);
    let peak = series
        .iter()
        .map(|s| {
            let b = pick(s);
            b.legitimate + b.owed + b.orphaned
        })
        .max()
        .unwrap_or(0)
        .max(quota.unwrap_or(0));
    let top = f64::from(peak.max(4)) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..span, 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("minutes since the first event")
            .y_desc("vCPUs")
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| e.to_string())?;
        // Stacked: each band drawn from zero up to its cumulative height, the
        // tallest first.
        let layers: [Layer; 3] = [
            ("orphaned", ORPHANED, |b| b.legitimate + b.owed + b.orphaned),
            ("owed, within the grace", OWED, |b| b.legitimate + b.owed),
            ("legitimate", LEGITIMATE, |b| b.legitimate),
        ];
        for (label, color, height) in layers {
            chart
                .draw_series(AreaSeries::new(
                    series
                        .iter()
                        .map(|s| (minutes(s), f64::from(height(pick(s))))),
                    0.0,
                    color.mix(0.85),
                ))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        if let Some(q) = quota {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, f64::from(q)), (span, f64::from(q))],
                    BLACK.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(format!("quota {q} vCPUs"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as one HTML document.
pub fn render(
    report: &AuditReport,
    series: &[VcpuSample],
    owed: &[OwedRecord],
    by_repository: &[RepositoryUsage],
    quotas: Quotas,
) -> Result<String, String> {
    let on_demand = market_chart("On-demand vCPUs", series, |s| s.on_demand, quotas.on_demand)?;
    let spot = market_chart("Spot vCPUs", series, |s| s.spot, quotas.spot)?;
    let repositories = repository_chart(by_repository)?;
    let data = serde_json::to_string(&ChartData {
        series,
        by_repository,
        quotas,
        orphan_grace_ms: report.orphan_grace_ms,
    })
    .map_err(|e| e.to_string())?
    // Inside <script>, "</" would end the element.
    .replace("</", "<\\/");
    let mut html = String::new();
    html.push_str(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>jitr audit</title>\n<style>\nbody { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1d2329; }\nh1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }\ntable { border-collapse: collapse; } th, td { text-align: left; padding: .25rem .7rem .25rem 0; border-bottom: 1px solid #e3e6e8; }\ntd.n, th.n { text-align: right; } .meta { color: #5b6670; } .warn { color: #a3300b; font-weight: 600; }\n</style>\n</head>\n<body>\n",
    );
    let window = &report.window;
    html.push_str(&format!(
        "<h1>jitr audit</h1>\n<p class=\"meta\">as of {} · window {} – {} · {} events, {} runners · orphan grace {} s</p>\n",
        escape(&report.as_of),
        escape(&window.0),
        escape(&window.1),
        report.events,
        report.runners,
        report.orphan_grace_ms / 1000
    ));
    let leaks = &report.leaks;
    html.push_str(&format!(
        "<p id=\"leak-summary\"><span class=\"{}\">{:.1} orphan vCPU-minutes</span> ({} orphans) · {:.1} vCPU-minutes owed within the grace · compensation latency p50 {} ms, p99 {} ms over {} terminations</p>\n",
        if leaks.orphan_vcpu_minutes > 0.0 { "warn" } else { "" },
        leaks.orphan_vcpu_minutes,
        leaks.orphans,
        leaks.owed_vcpu_minutes,
        leaks.compensation_latency_ms.p50,
        leaks.compensation_latency_ms.p99,
        leaks.compensation_latency_ms.count
    ));
    let waiting: u64 = report.waiting.iter().map(|w| w.runners).sum();
    if waiting > 0 {
        html.push_str(&format!(
            "<p id=\"waiting\" class=\"warn\">{waiting} runners waiting for capacity at the end of the window (launches refused: the quota is full)</p>\n"
        ));
    }
    html.push_str("<h2>vCPUs over time</h2>\n<div id=\"chart-on-demand\">");
    html.push_str(&on_demand);
    html.push_str("</div>\n<div id=\"chart-spot\">");
    html.push_str(&spot);
    html.push_str("</div>\n");
    html.push_str("<h2>Instance time by repository</h2>\n<div id=\"chart-repositories\">");
    html.push_str(&repositories);
    html.push_str("</div>\n<table id=\"repositories\">\n<tr><th>repository</th><th class=\"n\">instance-hours</th><th class=\"n\">USD</th></tr>\n");
    if by_repository.is_empty() {
        html.push_str("<tr><td colspan=\"3\">none</td></tr>\n");
    }
    for line in by_repository {
        html.push_str(&format!(
            "<tr class=\"repository\"><td>{}</td><td class=\"n\">{:.2}</td><td class=\"n\">{}</td></tr>\n",
            escape(&line.repository),
            line.instance_hours,
            line.usd.map_or_else(|| "—".to_owned(), |usd| format!("{usd:.2}")),
        ));
    }
    html.push_str("</table>\n");
    html.push_str("<h2>Failures by stage</h2>\n<table id=\"failures\">\n<tr><th>stage</th><th class=\"n\">runners</th></tr>\n");
    if report.failures.is_empty() {
        html.push_str("<tr><td colspan=\"2\">none</td></tr>\n");
    }
    for (stage, n) in &report.failures {
        html.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{n}</td></tr>\n",
            escape(stage)
        ));
    }
    html.push_str("</table>\n<h2>Runners ever owed a termination</h2>\n<table id=\"owed-runners\">\n<tr><th>runner</th><th>instance</th><th>market</th><th class=\"n\">vCPUs</th><th>owed since</th><th class=\"n\">compensation latency</th></tr>\n");
    if owed.is_empty() {
        html.push_str("<tr><td colspan=\"6\">none</td></tr>\n");
    }
    for record in owed {
        let latency = record.terminated_ms.map_or_else(
            || "<span class=\"warn\">never terminated</span>".to_owned(),
            |t| format!("{:.1} s", (t - record.owed_since_ms) as f64 / 1000.0),
        );
        html.push_str(&format!(
            "<tr class=\"owed\"><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{latency}</td></tr>\n",
            escape(&record.stream.to_string()),
            escape(record.instance_id.as_deref().unwrap_or("—")),
            record.market.map_or("—", Market::as_str),
            record.vcpus,
            rfc3339(Timestamp(record.owed_since_ms)),
        ));
    }
    html.push_str("</table>\n<script type=\"application/json\" id=\"chart-data\">");
    html.push_str(&data);
    html.push_str("</script>\n</body>\n</html>\n");
    Ok(html)
}
