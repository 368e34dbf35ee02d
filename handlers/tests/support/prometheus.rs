//! Prometheus's text format (OpenMetrics 1.0) parsed by the Prometheus
//! project's own parser (`prometheus_client.openmetrics.parser`, PyPI; `.ci/run`
//! installs it and names its Python in `JITR_TEST_PYTHON`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::Value;

/// One parsed family: its type and samples (name, labels, value).
#[derive(Debug)]
pub struct Family {
    /// Its type.
    pub kind: String,
    /// Its samples: name, labels, value.
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses exposition `text` with `prometheus_client.parser`.
pub fn parse(text: &str) -> BTreeMap<String, Family> {
    let python = std::env::var("JITR_TEST_PYTHON")
        .expect("JITR_TEST_PYTHON names a Python with prometheus-client: run `bash .ci/run`");
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    families
        .into_iter()
        .map(|f| {
            let samples = f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect();
                    (
                        s[0].as_str().unwrap().to_owned(),
                        labels,
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect();
            (
                f["name"].as_str().unwrap().to_owned(),
                Family {
                    kind: f["type"].as_str().unwrap().to_owned(),
                    samples,
                },
            )
        })
        .collect()
}
