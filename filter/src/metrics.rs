//! Metric ids, defined once per accepted config (never per request).

use proxy_wasm::types::MetricType;

use cohort_core::config::Compiled;
use cohort_core::decide::Side;
use cohort_core::telemetry::{
    tagged_name, CONFIG_GENERATION, CONFIG_REJECTED_TOTAL, DECISIONS_TOTAL, EVENTS_TOTAL,
    FORCE_DENIED_TOTAL, ROLLOUT_WEIGHT_BP, ROUTING_HEADER_OVERWRITTEN_TOTAL,
    TAG_DESTINATION_NAMESPACE, TAG_DESTINATION_SERVICE, TAG_DESTINATION_VERSION, TAG_EVENT,
    TAG_NAMESPACE, TAG_ROLLOUT, TAG_VERSION,
};

/// Defines a metric by kind and full (tagged) name; `None` when the host refused.
pub type Define<'a> = &'a mut dyn FnMut(MetricType, &str) -> Option<u32>;

/// Metrics that do not depend on the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmMetrics {
    /// `cohort_config_generation`
    pub generation: Option<u32>,
    /// `cohort_config_rejected_total`
    pub rejected: Option<u32>,
    /// `cohort_routing_header_overwritten_total`
    pub overwritten: Option<u32>,
    /// `cohort_force_denied_total`
    pub force_denied: Option<u32>,
}

impl VmMetrics {
    /// Defines the VM-wide metrics.
    pub fn define(define: Define<'_>) -> Self {
        VmMetrics {
            generation: define(MetricType::Gauge, CONFIG_GENERATION),
            rejected: define(MetricType::Counter, CONFIG_REJECTED_TOTAL),
            overwritten: define(MetricType::Counter, ROUTING_HEADER_OVERWRITTEN_TOTAL),
            force_denied: define(MetricType::Counter, FORCE_DENIED_TOTAL),
        }
    }
}

/// One version's metrics within a rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionMetrics {
    /// `cohort_decisions_total`
    pub decisions: Option<u32>,
    /// `cohort_events_total`, indexed like the config's event names.
    pub events: Vec<Option<u32>>,
}

/// One rollout's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutMetrics {
    /// `cohort_rollout_weight_bp`
    pub weight_bp: Option<u32>,
    /// Stable, then canary.
    pub versions: [VersionMetrics; 2],
}

impl RolloutMetrics {
    /// The metrics of one side.
    pub fn side(&self, side: Side) -> &VersionMetrics {
        match side {
            Side::Stable => &self.versions[0],
            Side::Canary => &self.versions[1],
        }
    }
}

/// Defines every rollout's metrics for `config`, in rollout order.
pub fn define_rollouts(config: &Compiled, define: Define<'_>) -> Vec<RolloutMetrics> {
    config
        .rollouts
        .iter()
        .map(|rollout| {
            // Namespace and name together name the rollout: same-named rollouts of two
            // namespaces keep separate series.
            let rollout_tags = [
                (TAG_NAMESPACE, rollout.namespace.as_str()),
                (TAG_ROLLOUT, rollout.name.as_str()),
            ];
            let mut version = |name: &str| {
                let tags = [rollout_tags[0], rollout_tags[1], (TAG_VERSION, name)];
                // Istio's own tag names (cohort_core::telemetry), with Istio's values: the
                // namespace and the Service, so they line up with the served metrics.
                let destination = [
                    (TAG_DESTINATION_NAMESPACE, rollout.namespace.as_str()),
                    (TAG_DESTINATION_SERVICE, rollout.service.as_str()),
                    (TAG_DESTINATION_VERSION, name),
                ];
                VersionMetrics {
                    decisions: define(
                        MetricType::Counter,
                        &tagged_name(DECISIONS_TOTAL, &destination),
                    ),
                    events: config
                        .events
                        .iter()
                        .map(|event| {
                            define(
                                MetricType::Counter,
                                &tagged_name(
                                    EVENTS_TOTAL,
                                    &[tags[0], tags[1], tags[2], (TAG_EVENT, event)],
                                ),
                            )
                        })
                        .collect(),
                }
            };
            let versions = [
                version(&rollout.stable_version),
                version(&rollout.canary_version),
            ];
            RolloutMetrics {
                weight_bp: define(
                    MetricType::Gauge,
                    &tagged_name(ROLLOUT_WEIGHT_BP, &rollout_tags),
                ),
                versions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics `document`'s rollouts get, and every name defined for them, in order.
    fn define_all(document: &[u8]) -> (Vec<RolloutMetrics>, Vec<(MetricType, String)>) {
        let config = cohort_core::config::parse(document).unwrap();
        let mut names = Vec::new();
        let metrics = define_rollouts(&config, &mut |kind, name| {
            names.push((kind, name.to_owned()));
            Some(names.len() as u32)
        });
        (metrics, names)
    }

    fn names_of(document: &[u8]) -> Vec<(MetricType, String)> {
        define_all(document).1
    }

    #[test]
    fn ids_per_rollout_version_and_event() {
        let (metrics, names) = define_all(
            br#"{"version": 1, "events": ["checkout", "signup"],
                 "rollouts": {"web": {"namespace": "shop", "service": "web-svc", "hosts": ["web"],
                                      "canaryVersion": "v2"}}}"#,
        );
        assert_eq!(metrics.len(), 1);
        // 2 versions × (1 decision counter + 2 events) + 1 weight gauge
        assert_eq!(names.len(), 2 * (1 + 2) + 1);
        for version in ["stable", "v2"] {
            assert!(names.contains(&(
                MetricType::Counter,
                format!(
                    "destination_service_namespace=.=shop;.;destination_service_name=.=web-svc;.;\
                     destination_version=.={version};.;cohort_decisions_total"
                )
            )));
        }
        assert!(names.iter().all(|(kind, _)| *kind != MetricType::Histogram));
        assert!(names.contains(&(
            MetricType::Counter,
            "cohort_namespace=.=shop;.;cohort_rollout=.=web;.;cohort_version=.=v2;.;cohort_event=.=signup;.;cohort_events_total".into()
        )));
        assert!(names.contains(&(
            MetricType::Gauge,
            "cohort_namespace=.=shop;.;cohort_rollout=.=web;.;cohort_rollout_weight_bp".into()
        )));
        // Every per-rollout metric carries the namespace.
        assert!(names.iter().all(|(_, name)| name
            .starts_with("cohort_namespace=.=shop;.;cohort_rollout=.=web;.;")
            || name.starts_with("destination_service_namespace=.=shop;.;")));
        let canary = metrics[0].side(Side::Canary);
        assert_eq!(canary.events.len(), 2);
        assert!(canary.decisions.is_some());
        assert_ne!(canary.decisions, metrics[0].side(Side::Stable).decisions);
    }

    #[test]
    fn without_a_namespace_the_tag_is_empty() {
        let names = names_of(br#"{"version": 1, "rollouts": {"web": {"hosts": ["web"]}}}"#);
        assert_eq!(names.len(), 2 + 1);
        assert!(names.contains(&(
            MetricType::Gauge,
            "cohort_namespace=.=;.;cohort_rollout=.=web;.;cohort_rollout_weight_bp".into()
        )));
        // Without a service, the rollout name stands for it.
        assert!(names.contains(&(
            MetricType::Counter,
            "destination_service_namespace=.=;.;destination_service_name=.=web;.;\
             destination_version=.=canary;.;cohort_decisions_total"
                .into()
        )));
        assert!(names.iter().all(|(_, name)| name
            .starts_with("cohort_namespace=.=;.;cohort_rollout=.=web;.;")
            || name.starts_with(
                "destination_service_namespace=.=;.;destination_service_name=.=web;.;"
            )));
    }

    #[test]
    fn same_named_rollouts_of_two_namespaces_get_distinct_ids() {
        let shop = names_of(
            br#"{"version": 1, "rollouts": {"checkout": {"namespace": "shop", "hosts": ["checkout"]}}}"#,
        );
        let billing = names_of(
            br#"{"version": 1, "rollouts": {"checkout": {"namespace": "billing", "hosts": ["checkout"]}}}"#,
        );
        assert_eq!(shop.len(), billing.len());
        for ((_, a), (_, b)) in shop.iter().zip(&billing) {
            assert_ne!(a, b);
            assert_eq!(a.replacen("=shop;", "=billing;", 1), *b);
        }
    }
}
