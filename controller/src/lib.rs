//! cohort's controller: it steps each `CanaryRollout`'s canary weight while its gates pass and
//! sends everyone back to stable when one fails.
//!
//! The decisions are cohort-rollout's (the resource, gate verdicts, the state machine, the filter
//! entry); this crate does the I/O around them. One [`driver`] cycle fetches samples, calls
//! cohort-rollout, and applies the plan, for both the [`reconciler`] (Kubernetes) and
//! [`standalone`] (`cohort run`). The I/O sits one module each: [`source`] (Prometheus, Envoy
//! admin), [`target`] (WasmPlugin, ECDS file), [`reconciler`] (Kubernetes), [`leader`] (leader
//! election), [`metrics`] and [`http_server`] (the controller's own `/metrics`, `/healthz`,
//! `/readyz`), [`workload`] (the Deployments `spec.workload` names), [`notify`] (webhook
//! notifications). The `cohort` binary (cohort's `cli/`) puts a command line on it.

// Re-exported so `cohort_rollout::crd::…` and the like keep naming the rollout modules inside this crate.
// `evaluate` and `plan` bring the functions of those names along (cohort-rollout's root has both).
pub use cohort_rollout::{
    crd, duration, evaluate, filter_config, plan, query, sequential, validate,
};

pub mod driver;
mod error;
#[cfg(test)]
mod fixtures;
pub mod force_token;
pub mod http_server;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod rbac;
pub mod reconciler;
pub mod source;
pub mod standalone;
pub mod target;
pub mod workload;

pub use error::{Error, Result};
