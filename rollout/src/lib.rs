//! cohort's rollout logic, as pure functions over values: the `CanaryRollout` resource ([`crd`])
//! and its checks ([`validate`], [`duration`], [`query`] for the PromQL templates), the filter
//! entry a spec becomes ([`filter_config`]), the gates' verdicts ([`evaluate()`], with the
//! sequential tests in [`sequential`]), the state machine that turns a verdict into the next
//! weight and status ([`plan()`]), and how numbers read in reasons and tables ([`mod@format`]).
//! It does no I/O: no tokio, no Kubernetes client, no HTTP. The controller (cohort-controller)
//! fetches samples and status, calls this crate, and applies the [`Plan`] it returns.

pub mod compiled;
pub mod crd;
pub mod duration;
mod error;
pub mod evaluate;
pub mod filter_config;
pub mod format;
pub mod plan;
pub mod query;
pub mod routing;
pub mod sequential;
pub mod served;
pub mod spec_error;
pub mod validate;
pub mod workload;

pub use compiled::{CompiledRollout, CompiledStep, FilterEntry};
pub use crd::{crd_yaml, CanaryRollout, CanaryRolloutSpec, CanaryRolloutStatus, Phase, Verdict};
pub use error::Error;
pub use evaluate::{evaluate, evaluate_window, Evaluation, Samples};
pub use filter_config::{spec_to_filter_config, spec_to_filter_rollout};
pub use plan::{plan, Plan, PlanInput};
pub use validate::{compile, validate_spec, SpecError, SpecErrors};
