//! The pure core of cohort's controller: the `CanaryRollout` resource, gate evaluation, the
//! rollout state machine and the filter config a rollout produces. No I/O here: the reconciler
//! and `cohort run` fetch samples, call [`evaluate()`] and [`plan()`], and apply the [`Plan`].

pub mod cli;
pub mod crd;
pub mod duration;
pub mod evaluate;
pub mod filter_config;
#[cfg(test)]
mod fixtures;
pub mod http_server;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod query;
pub mod reconciler;
pub mod sequential;
pub mod source;
pub mod standalone;
pub mod target;
pub mod validate;

pub use crd::{crd_yaml, CanaryRollout, CanaryRolloutSpec, CanaryRolloutStatus, Phase, Verdict};
pub use evaluate::{evaluate, evaluate_window, Evaluation, Samples};
pub use filter_config::{spec_to_filter_config, spec_to_filter_rollout};
pub use plan::{plan, Plan, PlanInput};
pub use validate::{validate_spec, SpecError, SpecErrors};
