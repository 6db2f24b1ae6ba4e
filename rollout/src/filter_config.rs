//! From a CanaryRollout spec to the filter's wire config, checked by the same
//! `cohort_core::config::validate` the filter runs, with every error renamed to the spec field a
//! person must edit.

use cohort_core::config::{
    self, AnonymousPolicy, ConfigError, FilterConfig, IdentitySource, RolloutConfig,
};

use crate::crd::{AnonymousMode, CanaryRolloutSpec, IdentityKind};
use crate::spec_error::{SpecError, SpecErrors};

/// The filter's entry for the rollout `namespace/name` (the value under `rollouts.<name>`) at
/// `weight_bp`. It carries the namespace, which the filter puts on the rollout's metrics.
///
/// It is checked inside a whole config (see [`spec_to_filter_config`]), so what is returned is
/// known to pass the filter's validation.
pub fn spec_to_filter_rollout(
    spec: &CanaryRolloutSpec,
    namespace: &str,
    name: &str,
    weight_bp: u32,
) -> Result<RolloutConfig, SpecErrors> {
    let mut config = spec_to_filter_config(spec, namespace, name, weight_bp)?;
    config
        .rollouts
        .remove(name)
        .ok_or_else(|| SpecErrors(vec![SpecError::new("metadata.name", "is empty")]))
}

/// A whole filter config carrying this one rollout, `namespace/name`, at `weight_bp`: what a
/// standalone Envoy's ECDS file gets. Filter-wide settings come from the spec too: the anonymous
/// policy and the business events the gates need counted. Rollouts sharing one target must agree
/// on those. `namespace` is the CanaryRollout's own (not its target's): the filter tags the
/// rollout's metrics with it, so same-named rollouts of two namespaces read their own series.
pub fn spec_to_filter_config(
    spec: &CanaryRolloutSpec,
    namespace: &str,
    name: &str,
    weight_bp: u32,
) -> Result<FilterConfig, SpecErrors> {
    let mut config = FilterConfig::new();
    config.anonymous = AnonymousPolicy {
        mode: match spec.anonymous.mode {
            AnonymousMode::Cookie => "cookie",
            AnonymousMode::Stable => "stable",
        }
        .to_owned(),
        cookie_name: spec.anonymous.cookie_name.clone(),
        max_age_seconds: spec.anonymous.max_age_seconds,
    };
    let events = counted_events(spec);
    config.events = events.iter().map(|(event, _)| event.clone()).collect();
    config
        .rollouts
        .insert(name.to_owned(), rollout_entry(spec, namespace, weight_bp));
    match config::validate(&config) {
        Ok(_) => Ok(config),
        Err(errors) => Err(SpecErrors(
            errors
                .0
                .iter()
                .map(|error| to_spec_error(error, name, &events))
                .collect(),
        )),
    }
}

/// Business event names the filter must count for this rollout's gates, each with the index of
/// the first gate that names it; in gate order, without repeats.
pub fn counted_events(spec: &CanaryRolloutSpec) -> Vec<(String, usize)> {
    let mut events: Vec<(String, usize)> = Vec::new();
    for (index, gate) in spec.analysis.gates.iter().enumerate() {
        if let Some(event) = gate.check.business_event() {
            if !events.iter().any(|(counted, _)| counted == event) {
                events.push((event.to_owned(), index));
            }
        }
    }
    events
}

fn rollout_entry(spec: &CanaryRolloutSpec, namespace: &str, weight_bp: u32) -> RolloutConfig {
    let mut rollout = RolloutConfig::new(spec.hosts.clone(), weight_bp);
    rollout.namespace = namespace.to_owned();
    rollout.salt = spec.salt.clone();
    rollout.stable_version = spec.stable_version.clone();
    rollout.canary_version = spec.canary_version.clone();
    // Empty means "the filter's own identity sources", which the wire format says with None.
    rollout.identity = (!spec.identity.is_empty()).then(|| {
        spec.identity
            .iter()
            .map(|source| IdentitySource {
                kind: match source.kind {
                    IdentityKind::Header => "header",
                    IdentityKind::Cookie => "cookie",
                }
                .to_owned(),
                name: source.name.clone(),
            })
            .collect()
    });
    rollout
}

/// Renames a filter config error to the spec field that produced it.
fn to_spec_error(error: &ConfigError, name: &str, events: &[(String, usize)]) -> SpecError {
    let rollout_prefix = format!("rollouts.{name}");
    if error.field == rollout_prefix {
        return SpecError::new(
            "metadata.name",
            "the CanaryRollout's name is the filter's rollout key and metric label: use 1-63 \
             characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
        );
    }
    let field = if let Some(rest) = error.field.strip_prefix(&format!("{rollout_prefix}.")) {
        match rest {
            "weightBp" => "spec.steps".to_owned(),
            "namespace" => "metadata.namespace".to_owned(),
            _ => format!("spec.{rest}"),
        }
    } else if let Some(rest) = error.field.strip_prefix("anonymous.") {
        format!("spec.anonymous.{rest}")
    } else if let Some(index) = error
        .field
        .strip_prefix("events[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|index| index.parse::<usize>().ok())
    {
        match events.get(index) {
            Some((_, gate)) => format!("spec.analysis.gates[{gate}].businessEvent.event"),
            None => "spec.analysis.gates".to_owned(),
        }
    } else if error.field == "events" {
        "spec.analysis.gates".to_owned()
    } else {
        format!("filter.{}", error.field)
    };
    SpecError::new(&field, &error.problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        AnonymousSpec, BusinessEventGate, EnvoyEcdsTarget, GateCheck, GateSpec, IdentitySpec,
        Target,
    };
    use crate::validate::tests::minimal_spec;

    #[test]
    fn builds_the_rollout_entry() {
        let mut spec = minimal_spec();
        spec.salt = Some("spring-sale".into());
        spec.stable_version = "v1".into();
        spec.canary_version = "v2".into();
        spec.identity = vec![
            IdentitySpec {
                kind: IdentityKind::Header,
                name: "x-user-id".into(),
            },
            IdentitySpec {
                kind: IdentityKind::Cookie,
                name: "session".into(),
            },
        ];
        let rollout = spec_to_filter_rollout(&spec, "shop", "checkout", 2500).unwrap();
        assert_eq!(rollout.hosts, vec!["checkout".to_owned()]);
        assert_eq!(rollout.weight_bp, 2500);
        assert_eq!(rollout.namespace, "shop");
        assert_eq!(rollout.salt.as_deref(), Some("spring-sale"));
        assert_eq!(
            (
                rollout.stable_version.as_str(),
                rollout.canary_version.as_str()
            ),
            ("v1", "v2")
        );
        let identity = rollout.identity.unwrap();
        assert_eq!(
            identity
                .iter()
                .map(|s| (s.kind.as_str(), s.name.as_str()))
                .collect::<Vec<_>>(),
            vec![("header", "x-user-id"), ("cookie", "session")]
        );
        // Without identity sources the filter's own apply.
        let plain = spec_to_filter_rollout(&minimal_spec(), "shop", "checkout", 0).unwrap();
        assert_eq!(plain.identity, None);
        assert_eq!(plain.salt, None);
    }

    #[test]
    fn whole_config_carries_filter_wide_settings_and_validates() {
        let mut spec = minimal_spec();
        spec.anonymous = AnonymousSpec {
            mode: AnonymousMode::Stable,
            ..AnonymousSpec::default()
        };
        for event in ["checkout", "signup", "checkout"] {
            spec.analysis
                .gates
                .push(GateSpec::new(GateCheck::BusinessEvent(BusinessEventGate {
                    event: event.into(),
                    max_drop: 0.1,
                })));
        }
        let config = spec_to_filter_config(&spec, "shop", "checkout", 100).unwrap();
        assert_eq!(config.anonymous.mode, "stable");
        assert_eq!(
            config.events,
            vec!["checkout".to_owned(), "signup".to_owned()]
        );
        assert_eq!(config.rollouts["checkout"].weight_bp, 100);
        assert_eq!(config.rollouts["checkout"].namespace, "shop");
        // What we produce is exactly what the filter accepts after a JSON round trip.
        let json = serde_json::to_vec(&config).unwrap();
        let compiled = config::parse(&json).unwrap();
        assert_eq!(compiled.rollouts[0].weight_bp, 100);
        assert_eq!(compiled.rollouts[0].namespace, "shop");
        assert_eq!(compiled.events, config.events);
    }

    #[test]
    fn errors_name_the_spec_field() {
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: &[(&str, Edit, &str)] = &[
            ("checkout", |s| s.hosts = vec!["Bad Host".into()], "spec.hosts[0]: \"Bad Host\" is not a host name"),
            ("checkout", |s| s.hosts.clear(), "spec.hosts: is empty"),
            ("checkout", |s| s.salt = Some(String::new()), "spec.salt: must be 1-256"),
            ("checkout", |s| s.canary_version = "stable".into(), "spec.canaryVersion: equals stableVersion"),
            ("checkout", |s| s.stable_version = "v 1".into(), "spec.stableVersion:"),
            (
                "checkout",
                |s| s.identity = vec![IdentitySpec { kind: IdentityKind::Header, name: "bad header".into() }],
                "spec.identity[0].name:",
            ),
            ("checkout", |s| s.anonymous.cookie_name = "a b".into(), "spec.anonymous.cookieName:"),
            ("checkout", |s| s.anonymous.max_age_seconds = 0, "spec.anonymous.maxAgeSeconds:"),
            (
                "checkout",
                |s| {
                    s.analysis.gates.push(GateSpec::new(GateCheck::BusinessEvent(BusinessEventGate {
                        event: "fine".into(),
                        max_drop: 0.1,
                    })));
                    s.analysis.gates.push(GateSpec::new(GateCheck::BusinessEvent(BusinessEventGate {
                        event: "not fine".into(),
                        max_drop: 0.1,
                    })));
                },
                "spec.analysis.gates[3].businessEvent.event: \"not fine\" is not a valid event name",
            ),
            ("Checkout.v2", |_| {}, "metadata.name: the CanaryRollout's name is the filter's rollout key"),
        ];
        for (name, edit, expected) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let errors = spec_to_filter_config(&spec, "shop", name, 100)
                .unwrap_err()
                .to_string();
            assert!(
                errors.contains(expected),
                "wanted {expected:?}\n got {errors}"
            );
        }
    }

    /// The entry names the CanaryRollout's own namespace, so `shop/checkout` and
    /// `billing/checkout` differ in it (and only in it); a rollout file without a namespace
    /// writes none; a namespace the filter would refuse points at metadata.namespace.
    #[test]
    fn the_entry_carries_the_rollouts_namespace() {
        let spec = minimal_spec();
        let shop = spec_to_filter_rollout(&spec, "shop", "checkout", 100).unwrap();
        let billing = spec_to_filter_rollout(&spec, "billing", "checkout", 100).unwrap();
        assert_eq!(
            (shop.namespace.as_str(), billing.namespace.as_str()),
            ("shop", "billing")
        );
        assert_eq!(
            RolloutConfig {
                namespace: "shop".into(),
                ..billing
            },
            shop
        );
        let json = serde_json::to_value(&shop).unwrap();
        assert_eq!(json["namespace"], "shop");
        let bare = spec_to_filter_config(&spec, "", "checkout", 100).unwrap();
        let json = serde_json::to_string(&bare).unwrap();
        assert!(!json.contains("namespace"), "{json}");
        let errors = spec_to_filter_config(&spec, "Not A Namespace", "checkout", 100)
            .unwrap_err()
            .0;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "metadata.namespace");
    }

    #[test]
    fn weight_out_of_range_points_at_the_steps() {
        let errors =
            spec_to_filter_rollout(&minimal_spec(), "shop", "checkout", 10_001).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].field, "spec.steps");
    }

    #[test]
    fn target_does_not_change_the_filter_config() {
        let mut spec = minimal_spec();
        let wasm = spec_to_filter_config(&spec, "shop", "checkout", 100).unwrap();
        spec.target = Target::EnvoyEcds(EnvoyEcdsTarget {
            path: "/etc/envoy/ecds.yaml".into(),
            filter_name: "cohort".into(),
        });
        assert_eq!(
            spec_to_filter_config(&spec, "shop", "checkout", 100).unwrap(),
            wasm
        );
    }
}
