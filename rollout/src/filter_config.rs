//! From a CanaryRollout spec to the filter's wire config, checked by the same
//! `cohort_core::config::validate` the filter runs, with every error renamed to the spec field a
//! person must edit.

use cohort_core::config::{
    self, AnonymousPolicy, ConfigError, FilterConfig, IdentitySource, RolloutConfig,
    Segment::{Index, Key},
};

use crate::crd::{AnonymousMode, CanaryRolloutSpec, IdentityKind};
use crate::served::Served;
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
    config.rollouts.insert(
        name.to_owned(),
        rollout_entry(spec, namespace, name, weight_bp),
    );
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

fn rollout_entry(
    spec: &CanaryRolloutSpec,
    namespace: &str,
    name: &str,
    weight_bp: u32,
) -> RolloutConfig {
    let mut rollout = RolloutConfig::new(spec.hosts.clone(), weight_bp);
    rollout.namespace = namespace.to_owned();
    // The decisions are tagged with the service whose served metrics they are compared with;
    // the filter's default, the rollout's name, is left implicit.
    rollout.service = Served::of(spec, namespace, name)
        .ok()
        .map(|served| served.decision_service(name).to_owned())
        .filter(|service| service != name);
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

/// Renames a filter config error to the spec field that produced it, matching the path's
/// segments (never its text: a rollout name may hold a dot).
fn to_spec_error(error: &ConfigError, name: &str, events: &[(String, usize)]) -> SpecError {
    let rollout = |key: &str| key == name;
    let field = match error.field.segments().as_slice() {
        [Key("rollouts"), Key(key)] if rollout(key) => {
            return SpecError::new(
                "metadata.name",
                "the CanaryRollout's name is the filter's rollout key and metric label: use 1-63 \
                 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
            );
        }
        [Key("rollouts"), Key(key), Key("weightBp")] if rollout(key) => "spec.steps".to_owned(),
        [Key("rollouts"), Key(key), Key("service")] if rollout(key) => {
            "spec.analysis.served.istio.service".to_owned()
        }
        [Key("rollouts"), Key(key), Key("namespace")] if rollout(key) => {
            "metadata.namespace".to_owned()
        }
        [Key("rollouts"), Key(key), rest @ ..] if rollout(key) => {
            format!("spec.{}", config::dotted(rest))
        }
        [Key("anonymous"), rest @ ..] if !rest.is_empty() => {
            format!("spec.anonymous.{}", config::dotted(rest))
        }
        [Key("events"), Index(index)] => match events.get(*index) {
            Some((_, gate)) => format!("spec.analysis.gates[{gate}].businessEvent.event"),
            None => "spec.analysis.gates".to_owned(),
        },
        [Key("events")] => "spec.analysis.gates".to_owned(),
        _ => format!("filter.{}", error.field),
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
    use cohort_core::config::FieldPath;

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

    fn business_event_gate(event: &str) -> GateSpec {
        GateSpec::new(GateCheck::BusinessEvent(BusinessEventGate {
            event: event.into(),
            max_drop: 0.1,
        }))
    }

    /// Each shape of path core reports, from a real spec that makes the filter refuse its
    /// config, to the one spec field a person edits, with core's problem carried over.
    #[test]
    fn each_path_shape_names_its_spec_field() {
        type Edit = fn(&mut CanaryRolloutSpec);
        type Fields = &'static [&'static str];
        // (rollout name, namespace, weight, edit, the fields core names, the spec fields)
        let table: &[(&str, &str, u32, Edit, Fields, Fields)] = &[
            (
                "checkout",
                "shop",
                10_001,
                |_| {},
                &["rollouts.checkout.weightBp"],
                &["spec.steps"],
            ),
            (
                "checkout",
                "Not A Namespace",
                100,
                |_| {},
                &["rollouts.checkout.namespace"],
                &["metadata.namespace"],
            ),
            (
                "Checkout.v2",
                "shop",
                100,
                |_| {},
                &["rollouts.Checkout.v2"],
                &["metadata.name"],
            ),
            // A dot in the name is one key: what follows it is still the rollout's own field.
            (
                "a.b",
                "shop",
                100,
                |s| s.salt = Some(String::new()),
                &["rollouts.a.b", "rollouts.a.b.salt"],
                &["metadata.name", "spec.salt"],
            ),
            (
                "checkout",
                "shop",
                100,
                |s| s.hosts = vec!["Bad Host".into()],
                &["rollouts.checkout.hosts[0]"],
                &["spec.hosts[0]"],
            ),
            (
                "checkout",
                "shop",
                100,
                |s| {
                    s.identity = vec![IdentitySpec {
                        kind: IdentityKind::Cookie,
                        name: "a b".into(),
                    }]
                },
                &["rollouts.checkout.identity[0].name"],
                &["spec.identity[0].name"],
            ),
            (
                "checkout",
                "shop",
                100,
                |s| s.anonymous.max_age_seconds = 0,
                &["anonymous.maxAgeSeconds"],
                &["spec.anonymous.maxAgeSeconds"],
            ),
            (
                "checkout",
                "shop",
                100,
                |s| {
                    s.analysis.gates.push(business_event_gate("fine"));
                    s.analysis.gates.push(business_event_gate("fine"));
                    s.analysis.gates.push(business_event_gate("not fine"));
                },
                &["events[1]"],
                &["spec.analysis.gates[4].businessEvent.event"],
            ),
            (
                "checkout",
                "shop",
                100,
                |s| {
                    for i in 0..=config::MAX_EVENTS {
                        s.analysis
                            .gates
                            .push(business_event_gate(&format!("event-{i}")));
                    }
                },
                &["events"],
                &["spec.analysis.gates"],
            ),
        ];
        for (name, namespace, weight, edit, core_fields, spec_fields) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            // The config spec_to_filter_config checks, to see the path core reports.
            let mut wire = FilterConfig::new();
            wire.anonymous.cookie_name = spec.anonymous.cookie_name.clone();
            wire.anonymous.max_age_seconds = spec.anonymous.max_age_seconds;
            wire.events = counted_events(&spec)
                .into_iter()
                .map(|(event, _)| event)
                .collect();
            wire.rollouts.insert(
                (*name).to_owned(),
                rollout_entry(&spec, namespace, name, *weight),
            );
            let core = config::validate(&wire).unwrap_err().0;
            assert_eq!(
                core.iter().map(|e| e.field.to_string()).collect::<Vec<_>>(),
                *core_fields
            );

            let errors = spec_to_filter_config(&spec, namespace, name, *weight)
                .unwrap_err()
                .0;
            assert_eq!(
                errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
                *spec_fields,
                "{core_fields:?}"
            );
            for (error, core) in errors.iter().zip(&core) {
                if error.field != "metadata.name" {
                    assert_eq!(error.problem, core.problem);
                }
            }
        }
    }

    /// Paths no spec produces (the controller sets those fields itself, or sets them so core
    /// cannot refuse them) still name the filter's own field, under `filter.`.
    #[test]
    fn paths_no_spec_produces_name_the_filter_field() {
        let top = FieldPath::root();
        let events = [("checkout".to_owned(), 2)];
        let table = [
            (
                top.key("events").index(0),
                "spec.analysis.gates[2].businessEvent.event",
            ),
            (top.key("events").index(1), "spec.analysis.gates"),
            (top.key("routingHeader"), "filter.routingHeader"),
            (
                top.key("identity").index(0).key("kind"),
                "filter.identity[0].kind",
            ),
            (
                top.key("rollouts").key("other").key("weightBp"),
                "filter.rollouts.other.weightBp",
            ),
            (
                top.key("rollouts").key("checkout.weightBp"),
                "filter.rollouts.checkout.weightBp",
            ),
            (top.key("anonymous"), "filter.anonymous"),
            (top.clone(), "filter.(document)"),
        ];
        for (path, expected) in table {
            let error = ConfigError {
                field: path,
                problem: "is wrong".to_owned(),
            };
            let renamed = to_spec_error(&error, "checkout", &events);
            assert_eq!(
                (renamed.field.as_str(), renamed.problem.as_str()),
                (expected, "is wrong"),
                "{}",
                error.field
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

#[cfg(test)]
mod service_tests {
    use super::*;
    use crate::crd::{EnvoyEcdsTarget, Target};
    use crate::validate::tests::minimal_spec;

    /// The entry names the service its decisions are compared with, when that is not the
    /// filter's default (the rollout's name).
    #[test]
    fn the_entry_carries_the_served_service() {
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: &[(&str, Edit, Option<&str>)] = &[
            ("host is the rollout's name", |_| {}, None),
            (
                "another service",
                |s| s.hosts = vec!["payments.shop.svc.cluster.local".into()],
                Some("payments"),
            ),
            (
                "Envoy clusters: the rollout's name",
                |s| {
                    s.hosts = vec!["payments".into()];
                    s.target = Target::EnvoyEcds(EnvoyEcdsTarget {
                        path: "/etc/envoy/ecds.yaml".into(),
                        filter_name: "cohort".into(),
                    });
                },
                None,
            ),
        ];
        for (name, edit, service) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let entry = spec_to_filter_rollout(&spec, "shop", "checkout", 0).unwrap();
            assert_eq!(entry.service.as_deref(), *service, "{name}");
        }
    }
}
