//! Line charts of the fleet page, drawn on the server as SVG (no script,
//! nothing fetched): the fleet over the last hours from the projector's
//! [`FleetSeries`].

use std::fmt::Write;

use jitr_domain::Timestamp;
use jitr_projections::accounting::Distribution;
use jitr_projections::series::{FleetSeries, Minute};

/// Width of a chart, px.
const WIDTH: f64 = 960.0;
/// Height of a chart, px.
const HEIGHT: f64 = 190.0;
/// Left of the plot (the y axis' labels are left of it), px.
const LEFT: f64 = 56.0;
/// Right of the plot (the legend is right of it), px.
const RIGHT: f64 = 800.0;
/// Top of the plot, px.
const TOP: f64 = 26.0;
/// Bottom of the plot, px.
const BOTTOM: f64 = 162.0;
/// Points per line at most: minutes are grouped beyond it.
const MAX_POINTS: usize = 360;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Line {
    /// Its element id.
    pub id: &'static str,
    /// Its legend.
    pub label: String,
    /// Its colour.
    pub color: &'static str,
    /// (moment, value) in time order; a gap is a missing moment.
    pub points: Vec<(Timestamp, f64)>,
}

/// A horizontal line at a value (a quota).
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its element id.
    pub id: &'static str,
    /// Its legend.
    pub label: String,
    /// Its colour.
    pub color: &'static str,
    /// Where.
    pub value: f64,
}

/// A chart over `[since, until]`.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Its element id.
    pub id: &'static str,
    /// Its title.
    pub title: String,
    /// The window.
    pub since: Timestamp,
    /// See `since`.
    pub until: Timestamp,
    /// Its lines.
    pub lines: Vec<Line>,
    /// Its rules.
    pub rules: Vec<Rule>,
}

/// `HH:MM` of a moment, UTC.
fn clock(at: Timestamp) -> String {
    let text = crate::commands::report::rfc3339(at);
    text.get(11..16).unwrap_or(&text).to_owned()
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

impl Chart {
    /// The chart as an SVG element. Each line is a `<polyline>` whose
    /// `data-max` is its largest value; each rule a `<line>` with its value
    /// in `data-value`: both on the same scale.
    pub fn svg(&self) -> String {
        let top_value = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|(_, v)| *v))
            .chain(self.rules.iter().map(|r| r.value))
            .fold(0.0, f64::max);
        let scale_max = nice_ceiling(top_value * 1.05);
        let span = (self.until.0 - self.since.0).max(1) as f64;
        let x = |at: Timestamp| LEFT + (at.0 - self.since.0) as f64 / span * (RIGHT - LEFT);
        let y = |v: f64| BOTTOM - v / scale_max * (BOTTOM - TOP);
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}">"#,
            id = self.id,
            title = askama_escape(&self.title),
        );
        let _ = write!(
            svg,
            r#"<text x="{LEFT}" y="16" font-size="14" font-weight="bold">{}</text>"#,
            askama_escape(&self.title)
        );
        // Axes, the value scale at 0, half and the top, the window's ends.
        let _ = write!(
            svg,
            "<path d=\"M{LEFT} {TOP}V{BOTTOM}H{RIGHT}\" stroke=\"#888\" fill=\"none\"/>"
        );
        for v in [0.0, scale_max / 2.0, scale_max] {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
                LEFT - 6.0,
                y(v) + 4.0,
                number((v * 10.0).round() / 10.0)
            );
        }
        let middle = Timestamp(self.since.0 + (self.until.0 - self.since.0) / 2);
        for (at, anchor) in [
            (self.since, "start"),
            (middle, "middle"),
            (self.until, "end"),
        ] {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"{anchor}\">{} UTC</text>",
                x(at),
                BOTTOM + 16.0,
                clock(at)
            );
        }
        let mut legend_y = TOP + 4.0;
        for rule in &self.rules {
            let _ = write!(
                svg,
                "<line id=\"{id}\" data-value=\"{value}\" x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-dasharray=\"6 4\"/>",
                id = rule.id,
                value = rule.value,
                y = y(rule.value),
                color = rule.color,
            );
            legend(&mut svg, &mut legend_y, "- -", rule.color, &rule.label);
        }
        for line in &self.lines {
            let points: Vec<String> = line
                .points
                .iter()
                .map(|(at, v)| format!("{:.1},{:.1}", x(*at), y(*v)))
                .collect();
            let max = line.points.iter().map(|(_, v)| *v).fold(0.0, f64::max);
            let _ = write!(
                svg,
                "<polyline id=\"{id}\" data-max=\"{max}\" points=\"{points}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                id = line.id,
                points = points.join(" "),
                color = line.color,
            );
            legend(&mut svg, &mut legend_y, "—", line.color, &line.label);
        }
        svg.push_str("</svg>");
        svg
    }
}

/// One legend entry right of the plot, at `y` (moved down for the next).
fn legend(svg: &mut String, y: &mut f64, mark: &str, color: &str, label: &str) {
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{y:.1}\" font-size=\"11\" fill=\"{color}\">{mark} {}</text>",
        RIGHT + 10.0,
        askama_escape(label)
    );
    *y += 16.0;
}

/// The least of 1, 2, 2.5, 5 × 10^k at or above `v` (at least 1): the top
/// of a value axis.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|n| *n >= v)
        .unwrap_or(10.0 * magnitude)
}

fn askama_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Minutes grouped so that a line has at most [`MAX_POINTS`] points: each
/// group's first minute's moment, and its minutes.
fn groups(minutes: &[Minute]) -> Vec<(Timestamp, &[Minute])> {
    let size = minutes.len().div_ceil(MAX_POINTS).max(1);
    minutes.chunks(size).map(|c| (c[0].at, c)).collect()
}

/// The vCPU quota of each market, when known: (spot, on-demand).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLines {
    /// Spot.
    pub spot: Option<u32>,
    /// On-demand.
    pub on_demand: Option<u32>,
}

/// The fleet page's charts of `series` over the `hours` before `now`.
pub fn fleet_charts(
    series: &FleetSeries,
    now: Timestamp,
    hours: u32,
    quotas: QuotaLines,
) -> Vec<Chart> {
    let since = Timestamp(now.0 - i64::from(hours) * 3_600_000);
    let minutes = series.window(since, now);
    let grouped = groups(&minutes);
    let most = |pick: fn(&Minute) -> u32| -> Vec<(Timestamp, f64)> {
        grouped
            .iter()
            .map(|(at, ms)| {
                let v = ms.iter().map(pick).max().unwrap_or(0);
                (*at, f64::from(v))
            })
            .collect()
    };
    let chart = |id, title: &str, lines, rules| Chart {
        id,
        title: title.to_owned(),
        since,
        until: now,
        lines,
        rules,
    };
    let mut rules = Vec::new();
    if let Some(q) = quotas.spot {
        rules.push(Rule {
            id: "quota-spot",
            label: format!("spot quota {q}"),
            color: "#f58518",
            value: f64::from(q),
        });
    }
    if let Some(q) = quotas.on_demand {
        rules.push(Rule {
            id: "quota-on-demand",
            label: format!("on-demand quota {q}"),
            color: "#4c78a8",
            value: f64::from(q),
        });
    }
    let waits = |q: fn(&Distribution) -> u64| -> Vec<(Timestamp, f64)> {
        grouped
            .iter()
            .filter_map(|(at, ms)| {
                let samples: Vec<u64> = ms
                    .iter()
                    .flat_map(|m| m.job_waits_ms.iter().copied())
                    .collect();
                (!samples.is_empty()).then(|| (*at, q(&Distribution::of(samples)) as f64 / 1000.0))
            })
            .collect()
    };
    vec![
        chart(
            "chart-vcpus",
            "vCPUs in use per market (the most in each minute), against the quota",
            vec![
                Line {
                    id: "line-vcpus-spot",
                    label: "spot".into(),
                    color: "#f58518",
                    points: most(|m| m.most.spot_vcpus),
                },
                Line {
                    id: "line-vcpus-on-demand",
                    label: "on-demand".into(),
                    color: "#4c78a8",
                    points: most(|m| m.most.on_demand_vcpus),
                },
            ],
            rules,
        ),
        chart(
            "chart-waiting",
            "Runners waiting for an instance",
            vec![Line {
                id: "line-waiting",
                label: "waiting".into(),
                color: "#b279a2",
                points: most(|m| m.most.waiting),
            }],
            vec![],
        ),
        chart(
            "chart-job-waits",
            "Job waits, request to start (seconds)",
            vec![
                Line {
                    id: "line-job-wait-p50",
                    label: "p50".into(),
                    color: "#54a24b",
                    points: waits(|d| d.p50),
                },
                Line {
                    id: "line-job-wait-p99",
                    label: "p99".into(),
                    color: "#e45756",
                    points: waits(|d| d.p99),
                },
            ],
            vec![],
        ),
        chart(
            "chart-owed",
            "Owed terminations: a flat zero past 60 s is the promise kept",
            vec![
                Line {
                    id: "line-owed",
                    label: "owed (in flight)".into(),
                    color: "#bab0ac",
                    points: most(|m| m.most.owed),
                },
                Line {
                    id: "line-overdue",
                    label: "owed over 60 s".into(),
                    color: "#e45756",
                    points: most(|m| m.overdue),
                },
            ],
            vec![],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_axes_end_at_round_numbers() {
        let tops: Vec<f64> = [0.0, 0.5, 3.3, 33.6, 536.0, 20_179.0]
            .iter()
            .map(|v| nice_ceiling(*v))
            .collect();
        assert_eq!(tops, [1.0, 1.0, 5.0, 50.0, 1000.0, 25_000.0]);
    }
}
