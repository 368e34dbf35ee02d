//! Metrics as CloudWatch Embedded Metric Format lines: a log line that CloudWatch
//! Logs turns into metrics without an API call.

use jitr_domain::Timestamp;
use serde_json::json;

/// Metric namespace of jitr's own metrics.
pub const NAMESPACE: &str = "jitr";

/// One metric line in CloudWatch's Embedded Metric Format: printed to stdout in
/// Lambda, CloudWatch Logs turns it into metrics without an API call.
pub fn emf_line(
    at: Timestamp,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, f64, &str)],
) -> String {
    let mut doc = serde_json::Map::new();
    let dimension_names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": at.0,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimension_names],
                "Metrics": metrics.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
            }]
        }),
    );
    for (k, v) in dimensions {
        doc.insert((*k).into(), json!(v));
    }
    for (name, value, _) in metrics {
        doc.insert((*name).into(), json!(value));
    }
    serde_json::Value::Object(doc).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_lines_follow_the_embedded_metric_format() {
        let line = emf_line(
            Timestamp(1_700_000_000_000),
            &[("Market", "spot"), ("ErrorClass", "quota")],
            &[("LaunchFailures", 1.0, "Count")],
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000i64);
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "jitr");
        assert_eq!(cw["Dimensions"][0], json!(["Market", "ErrorClass"]));
        assert_eq!(
            cw["Metrics"][0],
            json!({"Name": "LaunchFailures", "Unit": "Count"})
        );
        assert_eq!(v["Market"], "spot");
        assert_eq!(v["LaunchFailures"], 1.0);
    }
}
