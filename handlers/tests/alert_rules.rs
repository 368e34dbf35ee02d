//! The Prometheus alerting rules shipped for `jitr serve`
//! (`infra/prometheus/alerts.yml`): valid and unit-tested by the Prometheus
//! project's own `promtool` (Debian's `prometheus` package; `.ci/run`
//! installs it, `JITR_TEST_PROMTOOL` may name another), written only in
//! names `/metrics` exposes, every alert tested and in the runbook.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use jitr_handlers::app::metrics::{ALL, Kind};

fn rules_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/prometheus"))
}

fn promtool(args: &[&str]) -> String {
    let tool = std::env::var("JITR_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let out = Command::new(&tool)
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool}: {e} (Debian's prometheus package has it; .ci/run installs it)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// Every sample name `/metrics` can show.
fn exposed() -> BTreeSet<String> {
    ALL.iter()
        .flat_map(|def| match def.kind {
            Kind::Counter | Kind::Sum => vec![format!("jitr_{}_total", def.prom)],
            Kind::Gauge => vec![format!("jitr_{}", def.prom)],
            Kind::Seconds => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("jitr_{}{s}", def.prom))
                .collect(),
        })
        .collect()
}

/// The `jitr_…` names in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("jitr_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name.clone());
        rest = &rest[at + name.len()..];
    }
    names
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_alerting_rules_are_valid_and_fire_where_their_tests_say() {
    let check = promtool(&["check", "rules", "alerts.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn the_alerting_rules_use_only_exposed_names_and_each_alert_is_tested_and_in_the_runbook() {
    let rules = read(&rules_dir().join("alerts.yml"));
    let tests = read(&rules_dir().join("alerts_test.yml"));
    let runbook = read(&rules_dir().join("../../docs/runbook.md"));
    let exposed = exposed();
    for name in names_in(&rules).union(&names_in(&tests)) {
        assert!(
            exposed.contains(name),
            "{name} is not a name /metrics exposes"
        );
    }
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "{alert} has no test in which it fires"
        );
        assert!(
            runbook.contains(&format!("`{alert}`")),
            "{alert} is not in docs/runbook.md"
        );
    }
}
