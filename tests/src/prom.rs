//! Reads Prometheus text exposition (Envoy's `/stats/prometheus`) with the controller's own
//! parser, so tests and the Envoy-admin metric source read the page the same way.

pub use cohort_controller::source::envoy_admin::{parse_exposition as parse, Sample};

/// The value of the sample named `name` whose labels are exactly `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// The samples named `name` whose labels include `labels`.
pub fn matching<'s>(samples: &'s [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'s Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoy_lines() {
        let text = "# TYPE cohort_requests_total counter\n\
            cohort_requests_total{cohort_rollout=\"web\",cohort_version=\"canary\",cohort_code_class=\"5xx\"} 7\n\
            cohort_config_generation{} 2\n\
            plain 3.5\n\
            h_bucket{cohort_version=\"a\\\"b\",le=\"+Inf\"} 4\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 4);
        assert_eq!(
            value(
                &samples,
                "cohort_requests_total",
                &[
                    ("cohort_rollout", "web"),
                    ("cohort_version", "canary"),
                    ("cohort_code_class", "5xx")
                ]
            ),
            Some(7.0)
        );
        assert_eq!(value(&samples, "cohort_config_generation", &[]), Some(2.0));
        assert_eq!(value(&samples, "plain", &[]), Some(3.5));
        assert_eq!(
            value(
                &samples,
                "h_bucket",
                &[("cohort_version", "a\"b"), ("le", "+Inf")]
            ),
            Some(4.0)
        );
    }
}
