//! Where a rollout's served metrics are read: what each version served, which the gates judge
//! and the routing check compares with the filter's decisions. [`Served::of`] applies the
//! defaults of `spec.analysis.served`; [`crate::validate::compile`] keeps the answer in the
//! compiled rollout, and the filter entry takes the service its decisions are tagged with.

use cohort_core::config::is_dns_label;

use crate::crd::{CanaryRolloutSpec, ServedMetrics, Target};
use crate::spec_error::SpecError;

/// Where a rollout's served metrics are read, its defaults applied (see
/// [`crate::crd::AnalysisSpec::served`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Served {
    /// Istio's standard metrics of `service` in `namespace`, reported by the destination.
    Istio {
        /// `destination_service_namespace`: the CanaryRollout's namespace.
        namespace: String,
        /// `destination_service_name`.
        service: String,
    },
    /// A plain Envoy's upstream stats of these clusters.
    EnvoyClusters {
        /// The stable version's cluster.
        stable: String,
        /// The canary version's cluster.
        canary: String,
    },
}

impl Served {
    /// What a spec's `analysis.served` means for the rollout `namespace/name`: the value it
    /// gives, or the default for its target. `Err` names the problem when the default cannot be
    /// made (no host and no name that is a service name).
    pub fn of(spec: &CanaryRolloutSpec, namespace: &str, name: &str) -> Result<Served, SpecError> {
        match (&spec.analysis.served, &spec.target) {
            (Some(ServedMetrics::Istio(istio)), _) => {
                check_service_name("spec.analysis.served.istio.service", &istio.service)?;
                Ok(Served::Istio {
                    namespace: namespace.to_owned(),
                    service: istio.service.clone(),
                })
            }
            (Some(ServedMetrics::EnvoyClusters(clusters)), _) => {
                if clusters.stable == clusters.canary {
                    return Err(SpecError::new(
                        "spec.analysis.served.envoyClusters.canary",
                        &format!(
                            "is {:?}, the same cluster as stable: the gates would compare a \
                             cluster with itself; name the cluster that serves the canary",
                            clusters.canary
                        ),
                    ));
                }
                Ok(Served::EnvoyClusters {
                    stable: clusters.stable.clone(),
                    canary: clusters.canary.clone(),
                })
            }
            (None, Target::EnvoyEcds(_)) => Ok(Served::EnvoyClusters {
                stable: spec.stable_version.clone(),
                canary: spec.canary_version.clone(),
            }),
            (None, Target::WasmPlugin(_)) => {
                // The first host's first label (`checkout` of `checkout.shop.svc.cluster.local`),
                // else the rollout's own name, as a Flagger Canary is named after its service.
                let service = spec
                    .hosts
                    .iter()
                    .filter(|host| host.as_str() != "*")
                    .filter_map(|host| host.split('.').next())
                    .chain(std::iter::once(name))
                    .find(|candidate| is_dns_label(candidate));
                match service {
                    Some(service) => Ok(Served::Istio {
                        namespace: namespace.to_owned(),
                        service: service.to_owned(),
                    }),
                    None => Err(SpecError::new(
                        "spec.analysis.served",
                        "is omitted, and neither the hosts nor the rollout's name is a service \
                         name; set spec.analysis.served.istio.service to the service whose \
                         versions are compared",
                    )),
                }
            }
        }
    }

    /// The service the filter tags its decisions with (`destination_service_name`): the Istio
    /// service, or for Envoy clusters the rollout's own name.
    pub fn decision_service<'a>(&'a self, rollout: &'a str) -> &'a str {
        match self {
            Served::Istio { service, .. } => service,
            Served::EnvoyClusters { .. } => rollout,
        }
    }
}

/// A Kubernetes service name: a DNS label (RFC 1123), which is what Istio's label carries.
fn check_service_name(field: &str, name: &str) -> Result<(), SpecError> {
    if is_dns_label(name) {
        return Ok(());
    }
    Err(SpecError::new(
        field,
        &format!(
            "{name:?} is not a Kubernetes service name; use lowercase letters, digits and '-' \
             (at most 63), e.g. \"checkout\""
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{EnvoyEcdsTarget, IstioService};
    use crate::validate::compile;
    use crate::validate::tests::minimal_spec;

    fn istio(namespace: &str, service: &str) -> Served {
        Served::Istio {
            namespace: namespace.into(),
            service: service.into(),
        }
    }

    fn clusters(stable: &str, canary: &str) -> Served {
        Served::EnvoyClusters {
            stable: stable.into(),
            canary: canary.into(),
        }
    }

    #[test]
    fn defaults_follow_the_target() {
        type Edit = fn(&mut CanaryRolloutSpec);
        let envoy: Edit = |s| {
            s.target = Target::EnvoyEcds(EnvoyEcdsTarget {
                path: "/etc/envoy/ecds.yaml".into(),
                filter_name: "cohort".into(),
            })
        };
        let table: &[(&str, Edit, Served, &str)] = &[
            (
                "WasmPlugin: the first host's service",
                |_| {},
                istio("shop", "checkout"),
                "checkout",
            ),
            (
                "WasmPlugin: a cluster-local host",
                |s| s.hosts = vec!["checkout.shop.svc.cluster.local".into()],
                istio("shop", "checkout"),
                "checkout",
            ),
            (
                "WasmPlugin: `*` falls back to the rollout's name",
                |s| s.hosts = vec!["*".into()],
                istio("shop", "web"),
                "web",
            ),
            (
                "WasmPlugin: the service given",
                |s| {
                    s.analysis.served = Some(ServedMetrics::Istio(IstioService {
                        service: "payments".into(),
                    }))
                },
                istio("shop", "payments"),
                "payments",
            ),
            (
                "Envoy ECDS: clusters named after the versions",
                envoy,
                clusters("stable", "canary"),
                "web",
            ),
            (
                "Envoy ECDS: version names v1/v2",
                |s| {
                    envoy_target(s);
                    s.stable_version = "v1".into();
                    s.canary_version = "v2".into();
                },
                clusters("v1", "v2"),
                "web",
            ),
            (
                "clusters given",
                |s| {
                    s.analysis.served =
                        Some(ServedMetrics::EnvoyClusters(crate::crd::EnvoyClusters {
                            stable: "checkout_v1".into(),
                            canary: "checkout_v2".into(),
                        }))
                },
                clusters("checkout_v1", "checkout_v2"),
                "web",
            ),
        ];
        for (name, edit, served, decision_service) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let compiled = compile(&spec, "shop", "web").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(compiled.served(), served, "{name}");
            assert_eq!(
                compiled.served().decision_service("web"),
                *decision_service,
                "{name}"
            );
        }
    }

    fn envoy_target(spec: &mut CanaryRolloutSpec) {
        spec.target = Target::EnvoyEcds(EnvoyEcdsTarget {
            path: "/etc/envoy/ecds.yaml".into(),
            filter_name: "cohort".into(),
        });
    }

    #[test]
    fn bad_served_settings_name_their_field() {
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: &[(Edit, &str)] = &[
            (
                |s| {
                    s.analysis.served = Some(ServedMetrics::Istio(IstioService {
                        service: "Checkout_V2".into(),
                    }))
                },
                "spec.analysis.served.istio.service: \"Checkout_V2\" is not a Kubernetes service name",
            ),
            (
                |s| {
                    s.analysis.served = Some(ServedMetrics::EnvoyClusters(crate::crd::EnvoyClusters {
                        stable: "backend".into(),
                        canary: "backend".into(),
                    }))
                },
                "spec.analysis.served.envoyClusters.canary: is \"backend\", the same cluster as stable",
            ),
            (
                |s| s.failure_policy.routing_mismatch_deadline = "never".into(),
                "spec.failurePolicy.routingMismatchDeadline: \"never\" is not a duration",
            ),
            (
                |s| s.failure_policy.routing_mismatch_deadline = "0s".into(),
                "spec.failurePolicy.routingMismatchDeadline: \"0s\" is zero",
            ),
        ];
        for (edit, expected) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let errors = compile(&spec, "shop", "web").unwrap_err();
            let messages: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            assert!(
                messages.iter().any(|m| m.starts_with(expected)),
                "wanted {expected:?}, got {messages:?}"
            );
        }
        // A rollout whose hosts and name are no service names cannot default its service.
        let mut spec = minimal_spec();
        spec.hosts = vec!["*".into()];
        let errors = compile(&spec, "shop", "web.v2").unwrap_err();
        assert!(
            errors.0.iter().any(|e| e.field == "spec.analysis.served"),
            "{errors}"
        );
    }
}
