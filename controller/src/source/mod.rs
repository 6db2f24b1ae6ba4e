//! Where gate samples come from: a Prometheus server, or Envoy's admin `/stats/prometheus` read
//! directly (plain Envoy without Prometheus). Both answer the same question, "what did canary and
//! stable do over this window?", for every rollout at once, so the number of queries per
//! analysis cycle does not grow with the number of rollouts.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cohort_rollout::compiled::Served;
use cohort_rollout::crd::{CanaryRolloutSpec, GateSpec};
use cohort_rollout::evaluate::Samples;

pub mod envoy_admin;
pub mod prometheus;
pub mod series;
pub mod shared;

// The filter tags its decisions with Istio's own label names, so one name serves both series.
pub use cohort_core::telemetry::{
    DECISIONS_TOTAL, TAG_DESTINATION_NAMESPACE as DESTINATION_NAMESPACE,
    TAG_DESTINATION_SERVICE as DESTINATION_SERVICE, TAG_DESTINATION_VERSION as DESTINATION_VERSION,
};

/// Istio's standard request counter (by `response_code`, `reporter`, …).
pub const ISTIO_REQUESTS_TOTAL: &str = "istio_requests_total";
/// Istio's standard request-duration histogram, in milliseconds.
pub const ISTIO_REQUEST_DURATION_MS: &str = "istio_request_duration_milliseconds";
/// The label the Istio Telemetry resource writes each request's unit header into
/// (manifests/istio/telemetry.yaml): which of the random sets of users it came from.
pub use cohort_core::telemetry::TAG_UNIT as UNIT;
/// The label naming the Pod a series was scraped from. Istio's sidecars do not export it:
/// Prometheus attaches it when scraping, by relabelling `__meta_kubernetes_pod_name` to `pod`
/// (the `kubernetes-pods` job of Istio's samples/addons/prometheus.yaml, from the
/// prometheus-community chart, which scrapes the sidecars' merged metrics).
pub const POD: &str = "pod";
/// Istio's label saying which side reported a request: `source` or `destination`.
pub const ISTIO_REPORTER: &str = "reporter";
/// Istio's label holding the HTTP status.
pub const ISTIO_RESPONSE_CODE: &str = "response_code";

/// Envoy's requests sent to a cluster (`cluster.<name>.upstream_rq_total`).
pub const CLUSTER_REQUESTS_TOTAL: &str = "envoy_cluster_upstream_rq_total";
/// Envoy's responses of a cluster by status class (`cluster.<name>.upstream_rq_<n>xx`).
pub const CLUSTER_RESPONSES_BY_CLASS: &str = "envoy_cluster_upstream_rq_xx";
/// Envoy's histogram of a cluster's request times in milliseconds
/// (`cluster.<name>.upstream_rq_time`).
pub const CLUSTER_REQUEST_TIME_MS: &str = "envoy_cluster_upstream_rq_time";
/// The label Envoy puts a cluster's name in.
pub const CLUSTER_NAME: &str = "envoy_cluster_name";
/// The label Envoy puts a status class in: `"5"` for 5xx.
pub const CLUSTER_RESPONSE_CLASS: &str = "envoy_response_code_class";

/// A boxed future, so sources and targets can be chosen at run time (`dyn MetricSource`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which rollout a series belongs to: the CanaryRollout's namespace and name, the
/// `cohort_namespace` and `cohort_rollout` labels. The name alone is not enough: `shop/checkout`
/// and `billing/checkout` are two rollouts with two sets of series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RolloutKey {
    /// The `cohort_namespace` label value; empty for a rollout file without one (an absent
    /// label reads as empty, as in Prometheus).
    pub namespace: String,
    /// The `cohort_rollout` label value.
    pub name: String,
}

impl RolloutKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        RolloutKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for RolloutKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Samples by rollout, as a source answers them.
pub type SamplesByRollout = BTreeMap<RolloutKey, Samples>;

/// One rollout whose series a source should read.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRequest {
    /// The `cohort_rollout` label value: the CanaryRollout's name.
    pub rollout: String,
    /// The `cohort_namespace` label value: the CanaryRollout's namespace (also what custom
    /// query templates get as `{{namespace}}`).
    pub namespace: String,
    /// The stable version's name (`cohort_version` of its events, `destination_version` of its
    /// decisions and of Istio's metrics).
    pub stable_version: String,
    /// The canary version's name, labelled as stable's is.
    pub canary_version: String,
    /// The gates the samples are for: they decide which series are read.
    pub gates: Vec<GateSpec>,
    /// Where requests, server errors and latency are read: what each version served.
    pub served: Served,
}

impl SeriesRequest {
    /// The request for the rollout `namespace/name` with this spec. `served` comes from the
    /// compiled spec when it compiled; a spec that does not compile (whose samples no plan
    /// reads) falls back to its target's default, so a source that keeps baselines keeps them.
    pub fn new(
        spec: &CanaryRolloutSpec,
        served: Option<&Served>,
        namespace: &str,
        name: &str,
    ) -> Self {
        let served = served
            .cloned()
            .or_else(|| Served::of(spec, namespace, name).ok())
            .unwrap_or_else(|| Served::EnvoyClusters {
                stable: spec.stable_version.clone(),
                canary: spec.canary_version.clone(),
            });
        SeriesRequest {
            rollout: name.to_owned(),
            namespace: namespace.to_owned(),
            stable_version: spec.stable_version.clone(),
            canary_version: spec.canary_version.clone(),
            gates: spec.analysis.gates.clone(),
            served,
        }
    }

    /// The `destination_service_name` the filter tags this rollout's decisions with
    /// (`cohort_decisions_total`, in `namespace`, by `destination_version`).
    pub fn decision_service(&self) -> &str {
        self.served.decision_service(&self.rollout)
    }

    /// The rollout's key: its namespace and name.
    pub fn key(&self) -> RolloutKey {
        RolloutKey::new(&self.namespace, &self.rollout)
    }
}

/// A source of canary-versus-stable samples.
pub trait MetricSource: Send + Sync {
    /// Samples of every requested rollout over the `window` that ends now, keyed by rollout
    /// namespace and name. A query that fails marks what it would have filled as `Observed::Failed` (the gate
    /// then says Error); a query that finds no series leaves `Observed::NoData`.
    fn samples<'a>(
        &'a self,
        window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, SamplesByRollout>;
}
