//! Metric names and the tag encoding Envoy's tag extraction turns into Prometheus labels.
//!
//! A wasm metric named
//! `cohort_namespace=.=shop;.;cohort_rollout=.=checkout;.;cohort_version=.=canary;.;cohort_requests_total`
//! shows in `/stats/prometheus` as
//! `cohort_requests_total{cohort_namespace="shop",cohort_rollout="checkout",cohort_version="canary"}`
//! once the bootstrap declares each tag with the regex from [`tag_regex`] (plain Envoy:
//! `stats_config.stats_tags`; Istio: the `extraStatTags` proxy config).
//!
//! A rollout is named by its namespace and name together: two CanaryRollouts called `checkout`
//! in `shop` and `billing` have series of their own. Without a namespace (a plain Envoy's config)
//! the tag is empty, `cohort_namespace=.=;.;`, which Envoy exports as `cohort_namespace=""`: to
//! Prometheus the same as no label.

use std::fmt::Write as _;

/// Requests by rollout, version and code class (counter).
pub const REQUESTS_TOTAL: &str = "cohort_requests_total";
/// Request duration in milliseconds, from request headers to the end of the stream (histogram).
pub const REQUEST_DURATION_MS: &str = "cohort_request_duration_milliseconds";
/// Business events reported by the upstream (counter).
pub const EVENTS_TOTAL: &str = "cohort_events_total";
/// Number of configs this VM accepted since it started (gauge).
pub const CONFIG_GENERATION: &str = "cohort_config_generation";
/// Configs refused by validation (counter).
pub const CONFIG_REJECTED_TOTAL: &str = "cohort_config_rejected_total";
/// The canary weight in basis points each rollout is serving (gauge).
pub const ROLLOUT_WEIGHT_BP: &str = "cohort_rollout_weight_bp";
/// Client-sent routing headers the filter overwrote (counter).
pub const ROUTING_HEADER_OVERWRITTEN_TOTAL: &str = "cohort_routing_header_overwritten_total";
/// Force headers ignored for a missing or wrong token or an unknown version (counter).
pub const FORCE_DENIED_TOTAL: &str = "cohort_force_denied_total";

/// Tag: namespace of the rollout's CanaryRollout (empty without one).
pub const TAG_NAMESPACE: &str = "cohort_namespace";
/// Tag: rollout name.
pub const TAG_ROLLOUT: &str = "cohort_rollout";
/// Tag: version name (the routing header value).
pub const TAG_VERSION: &str = "cohort_version";
/// Tag: response code class.
pub const TAG_CODE_CLASS: &str = "cohort_code_class";
/// Tag: business event name.
pub const TAG_EVENT: &str = "cohort_event";
/// Every tag the filter emits, for bootstrap `stats_tags` and Istio `extraStatTags`.
pub const TAGS: [&str; 5] = [
    TAG_NAMESPACE,
    TAG_ROLLOUT,
    TAG_VERSION,
    TAG_CODE_CLASS,
    TAG_EVENT,
];

/// Code classes, in the order [`code_class`] indexes them.
pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "reset"];

/// Index into [`CODE_CLASSES`] for an HTTP status; anything outside 100..=599 (0 when no
/// response was received) is a reset.
pub fn code_class(status: u32) -> usize {
    match status {
        100..=599 => (status / 100 - 1) as usize,
        _ => CODE_CLASSES.len() - 1,
    }
}

/// The full metric name carrying `tags` for Envoy's tag extraction.
pub fn tagged_name(name: &str, tags: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(
        name.len()
            + tags
                .iter()
                .map(|(t, v)| t.len() + v.len() + 6)
                .sum::<usize>(),
    );
    for (tag, value) in tags {
        // Writing to a String cannot fail.
        let _ = write!(out, "{tag}=.={value};.;");
    }
    out.push_str(name);
    out
}

/// The tag-extraction regex Envoy needs for `tag`: the first group is cut from the name, the
/// second becomes the label value.
pub fn tag_regex(tag: &str) -> String {
    format!(r"({tag}=\.=(.*?);\.;)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_classes() {
        let table = [
            (0, "reset"),
            (99, "reset"),
            (101, "1xx"),
            (200, "2xx"),
            (204, "2xx"),
            (302, "3xx"),
            (404, "4xx"),
            (503, "5xx"),
            (599, "5xx"),
            (600, "reset"),
        ];
        for (status, class) in table {
            assert_eq!(CODE_CLASSES[code_class(status)], class, "status {status}");
        }
    }

    #[test]
    fn tag_encoding() {
        assert_eq!(
            tagged_name(REQUESTS_TOTAL, &[(TAG_ROLLOUT, "checkout"), (TAG_VERSION, "canary"), (TAG_CODE_CLASS, "5xx")]),
            "cohort_rollout=.=checkout;.;cohort_version=.=canary;.;cohort_code_class=.=5xx;.;cohort_requests_total"
        );
        assert_eq!(
            tagged_name(CONFIG_GENERATION, &[]),
            "cohort_config_generation"
        );
        assert_eq!(tag_regex(TAG_VERSION), r"(cohort_version=\.=(.*?);\.;)");
    }

    #[test]
    fn namespace_tag_encoding() {
        let table: &[(&str, &str)] = &[
            (
                "shop",
                "cohort_namespace=.=shop;.;cohort_rollout=.=checkout;.;cohort_rollout_weight_bp",
            ),
            (
                "billing",
                "cohort_namespace=.=billing;.;cohort_rollout=.=checkout;.;cohort_rollout_weight_bp",
            ),
            // No namespace: the tag is still there, empty (Envoy exports cohort_namespace="").
            (
                "",
                "cohort_namespace=.=;.;cohort_rollout=.=checkout;.;cohort_rollout_weight_bp",
            ),
        ];
        for (namespace, expected) in table {
            assert_eq!(
                tagged_name(
                    ROLLOUT_WEIGHT_BP,
                    &[(TAG_NAMESPACE, namespace), (TAG_ROLLOUT, "checkout")]
                ),
                *expected
            );
        }
        assert_eq!(tag_regex(TAG_NAMESPACE), r"(cohort_namespace=\.=(.*?);\.;)");
        assert_eq!(TAGS[0], "cohort_namespace");
    }
}
