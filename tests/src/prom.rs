//! Reads Prometheus text exposition (Envoy's `/stats/prometheus`) with the controller's own
//! parser, so tests and the Envoy-admin metric source read the page the same way.

pub use cohort_controller::source::envoy_admin::{parse_exposition as parse, Sample};

/// The value of the sample named `name` whose labels are exactly `labels`. As in Prometheus, a
/// label with an empty value is no label: Envoy exports the empty `cohort_namespace` of a config
/// without namespaces as `cohort_namespace=""`, which `labels` may leave out or give as `""`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: Vec<&(&str, &str)> = labels.iter().filter(|(_, v)| !v.is_empty()).collect();
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.values().filter(|v| !v.is_empty()).count() == wanted.len()
                && wanted
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
        // An empty label is no label.
        let empty = parse("x{cohort_namespace=\"\",cohort_rollout=\"web\"} 5\n");
        assert_eq!(value(&empty, "x", &[("cohort_rollout", "web")]), Some(5.0));
        assert_eq!(
            value(
                &empty,
                "x",
                &[("cohort_namespace", ""), ("cohort_rollout", "web")]
            ),
            Some(5.0)
        );
        assert_eq!(
            value(
                &empty,
                "x",
                &[("cohort_namespace", "shop"), ("cohort_rollout", "web")]
            ),
            None
        );
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
