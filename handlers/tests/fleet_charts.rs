//! The fleet page's charts (issue 28) over `jitr simulate --scenario burst`:
//! the log the simulation wrote, folded as `serve`'s projector folds it (the
//! views with the live series), drawn on the page; the vCPU lines never rise
//! above the quota lines, in the data and in the SVG as drawn; the page
//! checked in headless Chromium, and a screenshot kept
//! (`screenshots/fleet-charts.png` under the target directory; the one in
//! `docs/` was taken so).

use askama::Template;
use jitr_domain::{Market, Timestamp};
use jitr_handlers::commands::simulate::{self, Scenario};
use jitr_handlers::runtime::page::{Filter, FleetPage, Known, Quotas};
use jitr_infra::{EventStore, SqliteEventStore};
use jitr_projections::RunnerViews;
use jitr_projections::series::{FleetSeries, apply_with_series};

#[path = "support/browser.rs"]
mod browser;

/// The burst's simulated quotas (`simulate`'s settings for it).
const SPOT_QUOTA: u32 = 16;
const ON_DEMAND_QUOTA: u32 = 32;

/// The points of the polyline `id` in `svg`, and the y of the rule `rule`.
fn line_and_rule(page: &str, id: &str, rule: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let line = page
        .split(&format!("<polyline id=\"{id}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no line {id}"));
    let max: f64 = line
        .split("data-max=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .parse()
        .unwrap();
    let points: Vec<(f64, f64)> = line
        .split("points=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    let rule_y: f64 = page
        .split(&format!("<line id=\"{rule}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no rule {rule}"))
        .split("y1=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .parse()
        .unwrap();
    (points, max, rule_y)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_burst_the_vcpu_lines_stay_under_the_quota_lines() {
    let dir = tempfile::tempdir().unwrap();
    let report = simulate::run(dir.path(), Scenario::Burst, 1, true)
        .await
        .unwrap();
    assert!(report.jobs_served > 0, "{report:?}");
    let store = SqliteEventStore::open(dir.path().join("events.db")).unwrap();
    let events = store.read_all(0, 10_000_000).await.unwrap();
    let mut views = RunnerViews::default();
    let mut series = FleetSeries::default();
    for record in &events {
        apply_with_series(
            &mut views,
            &mut series,
            record.position,
            &record.stream,
            &record.event,
        );
    }
    let first = events.first().unwrap().event.at();
    let now = events.iter().map(|r| r.event.at()).max().unwrap();
    let hours = (now.millis_since(first).div_ceil(3_600_000) as u32).clamp(1, 24);

    // The data: no minute holds more than the quota, and the burst used both
    // markets, waited, and kept its promise (nothing owed at the end).
    let minutes = series.window(Timestamp(now.0 - i64::from(hours) * 3_600_000), now);
    assert!(minutes.len() >= 60, "{} minutes", minutes.len());
    let most = |pick: fn(&jitr_projections::series::Minute) -> u32| {
        minutes.iter().map(pick).max().unwrap()
    };
    assert!(most(|m| m.most.spot_vcpus) <= SPOT_QUOTA);
    assert!(most(|m| m.most.on_demand_vcpus) <= ON_DEMAND_QUOTA);
    assert!(most(|m| m.most.spot_vcpus) > 0 && most(|m| m.most.on_demand_vcpus) > 0);
    assert!(most(|m| m.most.waiting) > 0, "a burst makes jobs wait");
    assert_eq!(minutes.last().unwrap().end.owed, 0);
    // The promise: no termination stayed owed past the compensation's 60 s.
    assert_eq!(most(|m| m.overdue), 0, "a termination overdue");
    assert!(minutes.iter().any(|m| !m.job_waits_ms.is_empty()));

    let page = FleetPage::of(
        &views,
        now,
        Known {
            quotas: Quotas {
                known: Default::default(),
                configured: vec![
                    (Market::Spot, SPOT_QUOTA),
                    (Market::OnDemand, ON_DEMAND_QUOTA),
                ],
            },
            pool_names: vec!["default".into()],
            queues: Vec::new(),
            waiting: Vec::new(),
            series: Some(&series),
        },
        Filter {
            hours: Some(hours),
            ..Filter::default()
        },
    )
    .render()
    .unwrap();
    assert!(!page.contains("<script"));
    // The drawing: every point of each vCPU line is on or below its quota
    // line (SVG's y grows downwards), and the line reaches its data's most.
    for (line, rule, quota) in [
        ("line-vcpus-spot", "quota-spot", SPOT_QUOTA),
        ("line-vcpus-on-demand", "quota-on-demand", ON_DEMAND_QUOTA),
    ] {
        let (points, max, rule_y) = line_and_rule(&page, line, rule);
        assert!(points.len() > 10, "{line}: {} points", points.len());
        assert!(max <= f64::from(quota) && max > 0.0, "{line}: {max}");
        for (x, y) in &points {
            assert!(
                *y >= rule_y - 1e-9,
                "{line} at x {x}: y {y} above the quota line at {rule_y}"
            );
        }
    }
    for id in [
        "chart-vcpus",
        "chart-waiting",
        "chart-job-waits",
        "chart-owed",
    ] {
        assert!(page.contains(&format!("<svg id=\"{id}\"")), "{id}");
    }

    // As a browser renders it: the charts are in its DOM; a screenshot.
    let file = dir.path().join("fleet.html");
    std::fs::write(&file, &page).unwrap();
    let url = format!("file://{}", file.display());
    let dom = browser::browse(&url, "--dump-dom");
    for id in [
        "line-vcpus-spot",
        "quota-on-demand",
        "line-owed",
        "line-overdue",
        "line-job-wait-p99",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} in the DOM");
    }
    let shot = browser::screenshots().join("fleet-charts.png");
    browser::browse(&url, &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a screenshot"
    );
}
