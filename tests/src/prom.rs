//! Parses Prometheus text exposition (Envoy's `/stats/prometheus`).

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// All samples of a Prometheus text page (comments and malformed lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name_and_labels, value) = match line.rfind('}') {
        Some(end) => (&line[..=end], line[end + 1..].trim()),
        None => line.split_once(' ')?,
    };
    let value = value.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match name_and_labels.find('{') {
        Some(start) => (
            &name_and_labels[..start],
            parse_labels(&name_and_labels[start + 1..name_and_labels.len() - 1])?,
        ),
        None => (name_and_labels, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.insert(key, value);
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(labels)
}

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
