//! Metric names and the tag encoding Envoy's tag extraction turns into Prometheus labels.
//!
//! A wasm metric named
//! `cohort_namespace=.=shop;.;cohort_rollout=.=checkout;.;cohort_version=.=canary;.;cohort_events_total`
//! shows in `/stats/prometheus` as
//! `cohort_events_total{cohort_namespace="shop",cohort_rollout="checkout",cohort_version="canary"}`
//! once the bootstrap declares each tag with the regex from [`tag_regex`] (plain Envoy:
//! `stats_config.stats_tags`; Istio: the `extraStatTags` proxy config).
//!
//! The gates judge *served* metrics: the proxy's own (Istio's `istio_requests_total` and
//! `istio_request_duration_milliseconds` with `reporter="destination"`, a plain Envoy's cluster
//! `upstream_rq_*`), never counts of the filter's, so the filter reads no response it does not
//! need. What it counts itself is the decision, [`DECISIONS_TOTAL`], on the request side: how
//! the routing check sees that the split the filter made is the split the proxies served.
//! Its tags are Istio's *standard* names, [`TAG_DESTINATION_NAMESPACE`],
//! [`TAG_DESTINATION_SERVICE`] and [`TAG_DESTINATION_VERSION`]: every Istio sidecar's bootstrap
//! already extracts them (`(destination_version=\.=(.*?);\.;)` and the others are in Istio's
//! default `stats_tags`), so the decisions are labelled in Istio without `extraStatTags` and
//! without restarting a Pod, and they line up with `istio_requests_total`'s labels of the same
//! names. A plain Envoy declares them like the cohort tags ([`TAGS`]).
//!
//! A rollout is named by its namespace and name together: two CanaryRollouts called `checkout`
//! in `shop` and `billing` have series of their own. Without a namespace (a plain Envoy's config)
//! the tag is empty, `cohort_namespace=.=;.;`, which Envoy exports as `cohort_namespace=""`: to
//! Prometheus the same as no label.

use std::fmt::Write as _;

/// Routing decisions by rollout and version, counted when the filter decides, on the request
/// side, whether or not an answer ever comes (counter; tags [`TAG_DESTINATION_NAMESPACE`],
/// [`TAG_DESTINATION_SERVICE`], [`TAG_DESTINATION_VERSION`]).
pub const DECISIONS_TOTAL: &str = "cohort_decisions_total";
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

/// The request header carrying the user's unit ([`crate::bucket::Placement::unit`], `"0"` to
/// `"15"`), which the filter always sets itself for a placed user and removes otherwise, so no
/// client chooses its unit. Istio's served metrics then count each version per unit, and a gate
/// compares versions by the spread between units rather than by totals alone: one heavy user,
/// or one user's retries, all land in one unit and weigh as one sample of sixteen.
pub const UNIT_HEADER: &str = "x-cohort-unit";
/// The label [`UNIT_HEADER`] becomes on Istio's `istio_requests_total` and
/// `istio_request_duration_milliseconds` (`reporter="destination"`), written by the Telemetry
/// resource of `manifests/istio/telemetry.yaml`. Not a tag of the filter's own metrics.
pub const TAG_UNIT: &str = "cohort_unit";

/// Tag: namespace of the rollout's CanaryRollout (empty without one).
pub const TAG_NAMESPACE: &str = "cohort_namespace";
/// Tag: rollout name.
pub const TAG_ROLLOUT: &str = "cohort_rollout";
/// Tag: version name (the routing header value).
pub const TAG_VERSION: &str = "cohort_version";
/// Tag: business event name.
pub const TAG_EVENT: &str = "cohort_event";
/// Tag of [`DECISIONS_TOTAL`], Istio's standard name: the rollout entry's `namespace`.
pub const TAG_DESTINATION_NAMESPACE: &str = "destination_service_namespace";
/// Tag of [`DECISIONS_TOTAL`], Istio's standard name: the rollout entry's `service`.
pub const TAG_DESTINATION_SERVICE: &str = "destination_service_name";
/// Tag of [`DECISIONS_TOTAL`], Istio's standard name: the version decided.
pub const TAG_DESTINATION_VERSION: &str = "destination_version";
/// The tags an Istio sidecar's bootstrap does not extract by itself: its `extraStatTags`. The
/// three `destination_*` tags are among Istio's defaults already.
pub const ISTIO_EXTRA_STAT_TAGS: [&str; 4] = [TAG_NAMESPACE, TAG_ROLLOUT, TAG_VERSION, TAG_EVENT];
/// Every tag the filter emits, for a plain Envoy's bootstrap `stats_tags`.
pub const TAGS: [&str; 7] = [
    TAG_NAMESPACE,
    TAG_ROLLOUT,
    TAG_VERSION,
    TAG_EVENT,
    TAG_DESTINATION_NAMESPACE,
    TAG_DESTINATION_SERVICE,
    TAG_DESTINATION_VERSION,
];

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
    fn tag_encoding() {
        assert_eq!(
            tagged_name(EVENTS_TOTAL, &[(TAG_ROLLOUT, "checkout"), (TAG_VERSION, "canary"), (TAG_EVENT, "buy")]),
            "cohort_rollout=.=checkout;.;cohort_version=.=canary;.;cohort_event=.=buy;.;cohort_events_total"
        );
        assert_eq!(
            tagged_name(
                DECISIONS_TOTAL,
                &[
                    (TAG_DESTINATION_NAMESPACE, "shop"),
                    (TAG_DESTINATION_SERVICE, "checkout"),
                    (TAG_DESTINATION_VERSION, "v2")
                ]
            ),
            "destination_service_namespace=.=shop;.;destination_service_name=.=checkout;.;\
             destination_version=.=v2;.;cohort_decisions_total"
        );
        assert_eq!(
            tagged_name(CONFIG_GENERATION, &[]),
            "cohort_config_generation"
        );
        assert_eq!(tag_regex(TAG_VERSION), r"(cohort_version=\.=(.*?);\.;)");
        // Istio's default stats_tags hold exactly these regexes, so its sidecars extract the
        // decisions' tags without extraStatTags.
        assert_eq!(
            tag_regex(TAG_DESTINATION_VERSION),
            r"(destination_version=\.=(.*?);\.;)"
        );
        assert_eq!(
            tag_regex(TAG_DESTINATION_SERVICE),
            r"(destination_service_name=\.=(.*?);\.;)"
        );
        assert_eq!(
            tag_regex(TAG_DESTINATION_NAMESPACE),
            r"(destination_service_namespace=\.=(.*?);\.;)"
        );
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
