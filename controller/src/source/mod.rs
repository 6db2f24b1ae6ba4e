//! Where gate samples come from: a Prometheus server, or Envoy's admin `/stats/prometheus` read
//! directly (plain Envoy without Prometheus). Both answer the same question, "what did canary and
//! stable do over this window?", for every rollout at once, so the number of queries per
//! analysis cycle does not grow with the number of rollouts.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::crd::GateSpec;
use crate::evaluate::Samples;

pub mod envoy_admin;
pub mod prometheus;
pub mod series;
pub mod shared;

/// A boxed future, so sources and targets can be chosen at run time (`dyn MetricSource`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One rollout whose series a source should read.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRequest {
    /// The `cohort_rollout` label value: the CanaryRollout's name.
    pub rollout: String,
    /// The CanaryRollout's namespace (for custom query templates).
    pub namespace: String,
    /// The `cohort_version` label value of stable.
    pub stable_version: String,
    /// The `cohort_version` label value of canary.
    pub canary_version: String,
    /// The gates the samples are for: they decide which series are read.
    pub gates: Vec<GateSpec>,
}

/// A source of canary-versus-stable samples.
pub trait MetricSource: Send + Sync {
    /// Samples of every requested rollout over the `window` that ends now, keyed by rollout
    /// name. A query that fails marks what it would have filled as `Observed::Failed` (the gate
    /// then says Error); a query that finds no series leaves `Observed::NoData`.
    fn samples<'a>(
        &'a self,
        window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, BTreeMap<String, Samples>>;
}
