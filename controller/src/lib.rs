//! cohort's controller: it steps each `CanaryRollout`'s canary weight while its gates pass and
//! sends everyone back to stable when one fails.
//!
//! A pure core decides: [`crd`] (the resource), [`evaluate()`] (gate verdicts), [`plan()`] (the
//! state machine), [`filter_config`] and [`validate`]. One [`driver`] cycle fetches, calls the
//! core, and applies the [`Plan`], for both [`reconciler`] (Kubernetes) and [`standalone`]
//! (`cohort run`). The rest of the shell does the I/O, one module each: [`source`] (Prometheus,
//! Envoy admin), [`target`] (WasmPlugin, ECDS file), [`cli`] (operator verbs).

pub mod analyze;
pub mod cli;
pub mod crd;
pub mod driver;
pub mod duration;
pub mod evaluate;
pub mod filter_config;
#[cfg(test)]
mod fixtures;
pub mod force_token;
pub mod http_server;
pub mod lab;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod query;
pub mod rbac;
pub mod reconciler;
pub mod sequential;
pub mod simulate;
pub mod source;
pub mod standalone;
pub mod target;
pub mod validate;

pub use crd::{crd_yaml, CanaryRollout, CanaryRolloutSpec, CanaryRolloutStatus, Phase, Verdict};
pub use evaluate::{evaluate, evaluate_window, Evaluation, Samples};
pub use filter_config::{spec_to_filter_config, spec_to_filter_rollout};
pub use plan::{plan, Plan, PlanInput};
pub use validate::{validate_spec, SpecError, SpecErrors};
