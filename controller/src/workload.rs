//! The Kubernetes I/O of `spec.workload`: read the stable and canary Deployments (and, when the
//! canary would be scaled, whether an HorizontalPodAutoscaler targets it), and carry out what
//! [`cohort_rollout::workload`] decides. The driver cycle calls it through [`Workload`]
//! ([`crate::driver::cycle_with_workload`]); every decision is made there, none here.
//!
//! Writes are minimal: a JSON merge patch of `spec.replicas` on the canary, and a JSON patch that
//! replaces stable's `spec.template` as a whole (a merge would keep fields the canary's template
//! dropped, so stable would not run the tested template).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;

use crate::source::BoxFuture;
use crate::Error;
use cohort_rollout::crd::WorkloadSpec;
use cohort_rollout::workload::{Action, Observed};

/// The Deployments of one rollout, as the driver cycle sees them.
pub trait Workload: Send + Sync {
    /// Both Deployments as they are now (`None` for one that does not exist).
    fn observe(&self) -> BoxFuture<'_, Result<Observed, Error>>;
    /// Whether an HorizontalPodAutoscaler targets the canary Deployment.
    fn canary_autoscaled(&self) -> BoxFuture<'_, Result<bool, Error>>;
    /// Carries out one decided action.
    fn act<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<(), Error>>;
}

/// A rollout's two Deployments in its namespace, through the API server.
pub struct Deployments {
    client: Client,
    namespace: String,
    spec: WorkloadSpec,
}

impl Deployments {
    /// The Deployments `spec` names in `namespace`.
    pub fn new(client: Client, namespace: &str, spec: WorkloadSpec) -> Self {
        Deployments {
            client,
            namespace: namespace.to_owned(),
            spec,
        }
    }

    fn api(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn failed(&self, name: &str, doing: &str, source: kube::Error) -> Error {
        Error::Workload {
            deployment: format!("{}/{name}", self.namespace),
            doing: doing.to_owned(),
            source,
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Deployment>, Error> {
        self.api()
            .get_opt(name)
            .await
            .map_err(|source| self.failed(name, "read", source))
    }
}

impl Workload for Deployments {
    fn observe(&self) -> BoxFuture<'_, Result<Observed, Error>> {
        Box::pin(async move {
            Ok(Observed {
                stable: self.get(&self.spec.stable).await?,
                canary: self.get(&self.spec.canary).await?,
                ..Observed::default()
            })
        })
    }

    fn canary_autoscaled(&self) -> BoxFuture<'_, Result<bool, Error>> {
        Box::pin(async move {
            let api: Api<HorizontalPodAutoscaler> =
                Api::namespaced(self.client.clone(), &self.namespace);
            let autoscalers = api.list(&ListParams::default()).await.map_err(|source| {
                self.failed(&self.spec.canary, "list the autoscalers of", source)
            })?;
            Ok(autoscalers.items.iter().any(|autoscaler| {
                let target = &autoscaler.spec.scale_target_ref;
                target.kind == "Deployment"
                    && target.name == self.spec.canary
                    && target
                        .api_version
                        .as_deref()
                        .is_none_or(|version| version.starts_with("apps/"))
            }))
        })
    }

    fn act<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let params = PatchParams::default();
            match action {
                Action::ScaleCanary { replicas } => {
                    let body = serde_json::json!({"spec": {"replicas": replicas}});
                    self.api()
                        .patch(&self.spec.canary, &params, &Patch::Merge(&body))
                        .await
                        .map_err(|source| self.failed(&self.spec.canary, "scale", source))?;
                }
                Action::CopyTemplate(template) => {
                    let operations = serde_json::json!([
                        {"op": "replace", "path": "/spec/template", "value": template}
                    ]);
                    let patch: json_patch::Patch =
                        serde_json::from_value(operations).map_err(|error| Error::Workload {
                            deployment: format!("{}/{}", self.namespace, self.spec.stable),
                            doing: "build the template copy for".to_owned(),
                            source: kube::Error::SerdeError(error),
                        })?;
                    self.api()
                        .patch(&self.spec.stable, &params, &Patch::<()>::Json(patch))
                        .await
                        .map_err(|source| {
                            self.failed(
                                &self.spec.stable,
                                "copy the canary's template into",
                                source,
                            )
                        })?;
                }
            }
            Ok(())
        })
    }
}
