//! `jitr audit --html FILE`: the audit as one self-contained HTML file — the
//! fleet's vCPUs over time per market, stacked legitimate / owed within the
//! grace / orphaned, with the quota as a line (SVG drawn by `plotters`,
//! inline); failures by stage; every runner that was ever owed a termination
//! with its compensation latency. The data behind the charts is embedded as
//! JSON (`<script type="application/json" id="chart-data">`, never run).

use jitr_domain::{Market, Timestamp};
use jitr_projections::accounting::{OwedRecord, VcpuBands, VcpuSample};
use plotters::prelude::*;
use serde::Serialize;

use super::audit::AuditReport;
use super::report::rfc3339;

/// The quotas drawn as lines (vCPUs), when known.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Quotas {
    /// On-demand.
    pub on_demand: Option<u32>,
    /// Spot.
    pub spot: Option<u32>,
}

/// What the charts show, as embedded in the file.
#[derive(Debug, Serialize)]
pub struct ChartData<'a> {
    /// The samples.
    pub series: &'a [VcpuSample],
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
    quotas: Quotas,
) -> Result<String, String> {
    let on_demand = market_chart("On-demand vCPUs", series, |s| s.on_demand, quotas.on_demand)?;
    let spot = market_chart("Spot vCPUs", series, |s| s.spot, quotas.spot)?;
    let data = serde_json::to_string(&ChartData {
        series,
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
