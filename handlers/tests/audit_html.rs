//! `jitr audit --html` over the seed incident, simulated without and with
//! compensation: the data behind the charts shows the uncompensated run's
//! orphans climbing to the on-demand quota, and the compensated run's orphan
//! band flat at zero. The files are loaded in headless Chromium: the charts'
//! SVG and the owed-runners table are in the rendered DOM; screenshots are
//! saved under the target directory.

use std::process::Command;

use serde_json::Value;

#[path = "support/browser.rs"]
mod browser;
use browser::{browse, screenshots};

const ON_DEMAND_QUOTA: u64 = 32;
const SPOT_QUOTA: u64 = 8;
const PRICES: &str = "[on-demand]\n\"c5.xlarge\" = 0.17\n[spot]\n\"c5.xlarge\" = 0.068\n";
const UNTIL: &str = "2026-05-04T07:22:00Z";

fn jitr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jitr"))
        .args(args)
        .output()
        .expect("run jitr")
}

/// Simulates the seed incident in a new data directory and writes its HTML
/// audit; returns the file's text and the path.
fn report(dir: &std::path::Path, compensated: bool) -> (String, std::path::PathBuf) {
    let data = dir.join(if compensated { "with" } else { "without" });
    let data_s = data.to_str().unwrap();
    let mut args = vec![
        "simulate",
        "--scenario",
        "seed-incident",
        "--data-dir",
        data_s,
    ];
    if !compensated {
        args.push("--without-compensation");
    }
    let sim = jitr(&args);
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let html = dir.join(if compensated {
        "with.html"
    } else {
        "without.html"
    });
    // The quotas as flags, or (the compensated run) from a pool file's
    // `[quotas]`.
    let pools = dir.join("pools.toml");
    std::fs::write(
        &pools,
        format!(
            "[[pool]]\nname = \"default\"\nlabels = [\"linux\"]\n\
             instance_types = [\"c5.xlarge\"]\nvcpus = 4\nimage = \"ami-jitr-runner\"\n\n\
             [quotas]\non_demand_vcpus = {ON_DEMAND_QUOTA}\nspot_vcpus = {SPOT_QUOTA}\n"
        ),
    )
    .unwrap();
    let (on_demand, spot) = (ON_DEMAND_QUOTA.to_string(), SPOT_QUOTA.to_string());
    let prices = dir.join("prices.toml");
    std::fs::write(&prices, PRICES).unwrap();
    let quotas = if compensated {
        vec![
            "--config",
            pools.to_str().unwrap(),
            "--prices",
            prices.to_str().unwrap(),
        ]
    } else {
        vec!["--on-demand-quota", &on_demand, "--spot-quota", &spot]
    };
    let html_s = html.to_str().unwrap();
    let mut args = vec!["audit", "--data-dir", data_s, "--html", html_s];
    args.extend(quotas);
    // The simulation's end: T0 of `jitr simulate` plus its three hours.
    args.extend(["--until", UNTIL]);
    let audit = jitr(&args);
    assert!(
        audit.status.code() == Some(0) || audit.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    (std::fs::read_to_string(&html).unwrap(), html)
}

/// The JSON behind the charts.
fn chart_data(html: &str) -> Value {
    let start = html
        .find("<script type=\"application/json\" id=\"chart-data\">")
        .expect("chart data embedded");
    let rest = &html[start..];
    let json = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(&json.replace("<\\/", "</")).unwrap()
}

fn band_max(data: &Value, market: &str, band: &str) -> u64 {
    data["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[market][band].as_u64().unwrap())
        .max()
        .unwrap()
}

#[test]
fn the_seed_incidents_audit_shows_the_death_spiral_without_compensation_and_none_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (without, without_path) = report(dir.path(), false);
    let (with, with_path) = report(dir.path(), true);

    let spiral = chart_data(&without);
    assert_eq!(spiral["quotas"]["on_demand"], ON_DEMAND_QUOTA);
    assert!(spiral["series"].as_array().unwrap().len() >= 100);
    // Orphans climb until they hold the whole on-demand quota.
    assert_eq!(band_max(&spiral, "on_demand", "orphaned"), ON_DEMAND_QUOTA);
    let last = spiral["series"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["on_demand"]["orphaned"], ON_DEMAND_QUOTA,
        "and keep it"
    );
    assert!(without.contains("never terminated"), "owed runners listed");
    assert!(
        without.contains("runners waiting for capacity"),
        "the jobs the orphans keep out"
    );

    let flat = chart_data(&with);
    assert_eq!(flat["quotas"]["on_demand"], ON_DEMAND_QUOTA);
    assert_eq!(flat["quotas"]["spot"], SPOT_QUOTA);
    assert_eq!(band_max(&flat, "on_demand", "orphaned"), 0);
    assert_eq!(band_max(&flat, "spot", "orphaned"), 0);
    assert!(band_max(&flat, "on_demand", "legitimate") > 0, "jobs ran");
    assert!(!with.contains("never terminated"));
    assert!(!with.contains("runners waiting for capacity"));
    // Instance time and cost by repository: `jitr cost`'s figures for the
    // same window; without prices, hours only.
    let cost = jitr(&[
        "cost",
        "--data-dir",
        dir.path().join("with").to_str().unwrap(),
        "--prices",
        dir.path().join("prices.toml").to_str().unwrap(),
        "--until",
        UNTIL,
        "--by",
        "repo",
        "--json",
    ]);
    assert!(
        cost.status.success(),
        "{}",
        String::from_utf8_lossy(&cost.stderr)
    );
    let cost: Value = serde_json::from_slice(&cost.stdout).unwrap();
    let repositories = flat["by_repository"].as_array().unwrap();
    assert_eq!(repositories.len(), cost["lines"].as_array().unwrap().len());
    for line in cost["lines"].as_array().unwrap() {
        let drawn = repositories
            .iter()
            .find(|r| r["repository"] == line["group"])
            .unwrap_or_else(|| panic!("{} not drawn", line["group"]));
        let hours = line["instance_seconds"].as_f64().unwrap() / 3600.0;
        assert!((drawn["instance_hours"].as_f64().unwrap() - hours).abs() < 1e-9);
        let usd = line["usd"].as_f64().unwrap();
        assert!(usd > 0.0);
        assert!((drawn["usd"].as_f64().unwrap() - usd).abs() < 1e-9);
    }
    let unpriced = spiral["by_repository"].as_array().unwrap();
    assert!(!unpriced.is_empty() && unpriced.iter().all(|r| r["usd"].is_null()));

    // As a browser renders them: the charts' SVG, the tables, no script run.
    let shots = screenshots();
    for (name, path, text) in [
        ("audit-without-compensation.png", &without_path, &without),
        ("audit-with-compensation.png", &with_path, &with),
    ] {
        let url = format!("file://{}", path.display());
        let dom = browse(&url, "--dump-dom");
        for id in ["chart-on-demand", "chart-spot"] {
            let chart = dom
                .split(&format!("id=\"{id}\""))
                .nth(1)
                .unwrap_or_else(|| panic!("no {id} in {name}"));
            assert!(
                chart
                    .trim_start_matches('>')
                    .trim_start()
                    .starts_with("<svg"),
                "{id} is an SVG"
            );
        }
        assert!(dom.contains("id=\"owed-runners\""));
        assert!(dom.contains("id=\"failures\""));
        let bars = dom
            .split("id=\"chart-repositories\"")
            .nth(1)
            .expect("the repositories' chart");
        assert!(
            bars.trim_start_matches('>')
                .trim_start()
                .starts_with("<svg")
        );
        assert_eq!(
            dom.matches("<tr class=\"repository\">").count(),
            chart_data(text)["by_repository"].as_array().unwrap().len()
        );
        assert_eq!(
            dom.matches("<tr class=\"owed\">").count(),
            text.matches("<tr class=\"owed\">").count()
        );
        let file = shots.join(name);
        let _ = std::fs::remove_file(&file);
        browse(&url, &format!("--screenshot={}", file.display()));
        let png = std::fs::read(&file).expect("screenshot written");
        assert!(png.starts_with(b"\x89PNG"));
        eprintln!("screenshot {} ({} bytes)", file.display(), png.len());
    }
}
