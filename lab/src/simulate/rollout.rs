//! The whole-rollout family: a CanaryRollout driven through the controller's own pure code,
//! cycle by cycle at its analysis interval, in simulated time.
//!
//! Each cycle does what the controller's driver does with a source that reads the simulated
//! traffic: [`compiled_analysis_window`] (the last interval, or everything since the step began
//! when a gate is sequential), [`evaluate_window`] and [`routing::check`] over the samples of
//! that window, then [`plan_compiled`]. The plan's weight sets the canary's share of the next
//! interval's traffic, so the steps, their bakes, the tests running until each bake ends and
//! the failure policy (no-data deadline, errors) all apply as they do for real. A run ends
//! Promoted, RolledBack (with the gates, or the failure-policy rule, that did it) or undecided
//! at the horizon.
//!
//! A regression scenario's canary turns bad when the rollout first serves the scenario's weight
//! (the first step at or above it; healthy before, as a regression that shows only under load),
//! or at the time its `-at<s>s`/`-fromstart` suffix says; detection counts from that moment.

use std::path::Path;

use k8s_openapi::jiff::Timestamp;

use cohort_rollout::crd::{
    default_gates, default_steps, AnalysisSpec, AnonymousSpec, CanaryRolloutSpec,
    CanaryRolloutStatus, FailurePolicy, Phase, Target, Verdict, WasmPluginTarget,
};
use cohort_rollout::evaluate::{evaluate_window, Evaluation};
use cohort_rollout::plan::{plan_compiled, PlanInput};
use cohort_rollout::routing;
use cohort_rollout::sequential::compiled_analysis_window;
use cohort_rollout::validate::compile;
use cohort_rollout::CompiledRollout;

use super::conditions::{Conditions, RunState};
use super::ledger::Ledger;
use super::{Model, Outcome, Rng};

/// Simulated wall-clock time of every run's first cycle (any fixed instant does).
const START_S: i64 = 1_800_000_000;
/// The horizon is this many times the bakes of the steps before 100%…
const HORIZON_BAKES: u64 = 3;
/// …and at least this long.
const MIN_HORIZON_S: u64 = 3600;

/// A CanaryRollout ready to simulate.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// `metadata.name` (the default: `simulated`).
    pub name: String,
    /// The spec as read.
    pub spec: CanaryRolloutSpec,
    compiled: CompiledRollout,
    interval_s: u64,
    /// When an undecided run stops, in seconds: `HORIZON_BAKES` × the bakes before 100%, at
    /// least an hour.
    pub horizon_s: u64,
}

/// How one rollout run went.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRun {
    /// Promoted, rolled back or undecided, with the time.
    pub outcome: Outcome,
    /// What rolled it back: the failed gates' names joined by `+`, or the failure-policy rule
    /// (`no-data`, `errors`, `routing-mismatch`).
    pub cause: Option<String>,
    /// The canary weight (basis points) of each interval of traffic, in order.
    pub weights: Vec<u32>,
    /// When the canary turned bad, in seconds from the start (a regression scenario's onset:
    /// by default the first interval at the scenario's weight or above); `None` if it had not
    /// by the end, or never does (A/A).
    pub regression_start_s: Option<u64>,
}

impl Rollout {
    /// A CanaryRollout with every default: steps, analysis, gates and failure policy (its target
    /// and host play no part in the simulation).
    pub fn default_spec() -> CanaryRolloutSpec {
        CanaryRolloutSpec {
            target: Target::WasmPlugin(WasmPluginTarget {
                name: "cohort".to_owned(),
                namespace: None,
            }),
            salt: None,
            hosts: vec!["checkout".to_owned()],
            stable_version: "stable".to_owned(),
            canary_version: "canary".to_owned(),
            identity: Vec::new(),
            anonymous: AnonymousSpec::default(),
            force_token_secret_ref: None,
            force_token_file: None,
            steps: default_steps(),
            analysis: AnalysisSpec {
                gates: default_gates(),
                ..AnalysisSpec::default()
            },
            failure_policy: FailurePolicy::default(),
            notifications: None,
            paused: false,
            abort: false,
            promote: false,
            restart_at: None,
            workload: None,
        }
    }

    /// The default rollout.
    pub fn default_rollout() -> Result<Self, String> {
        Rollout::new("simulated", Rollout::default_spec())
    }

    /// Reads a CanaryRollout file, as `cohort run` does. Errors name `--rollout`.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let bad = |why: String| {
            format!(
                "--rollout {}: {why}; give a CanaryRollout YAML file as `cohort run` reads it, \
                 e.g. --rollout manifests/examples/canaryrollout.yaml",
                path.display()
            )
        };
        let text = std::fs::read_to_string(path).map_err(|error| bad(error.to_string()))?;
        let loaded = cohort_controller::standalone::parse_rollout(&text).map_err(bad)?;
        Rollout::new(&loaded.name, loaded.spec).map_err(bad)
    }

    /// Compiles `spec` as the controller does; it must be valid, and not paused, aborted or
    /// promoted by hand, with an interval of whole seconds.
    pub fn new(name: &str, spec: CanaryRolloutSpec) -> Result<Self, String> {
        let compiled = compile(&spec, "", name).map_err(|errors| {
            errors
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        if spec.paused || spec.abort || spec.promote {
            return Err(
                "spec.paused, spec.abort and spec.promote must be false: the \
                        simulation measures the gates, not a person's gestures"
                    .to_owned(),
            );
        }
        let interval = compiled.interval();
        if interval.subsec_nanos() != 0 {
            return Err(format!(
                "spec.analysis.interval is {}: the simulation needs whole seconds",
                spec.analysis.interval
            ));
        }
        let interval_s = interval.as_secs();
        let steps = compiled.steps();
        let bakes: u64 = steps[..steps.len().saturating_sub(1)]
            .iter()
            .map(|step| step.bake.as_secs().max(interval_s))
            .sum();
        Ok(Rollout {
            name: name.to_owned(),
            spec,
            interval_s,
            horizon_s: (HORIZON_BAKES * bakes).max(MIN_HORIZON_S),
            compiled,
        })
    }

    /// The analysis interval in seconds.
    pub fn interval_s(&self) -> u64 {
        self.interval_s
    }

    /// The bakes of the steps before 100%, in seconds: the earliest a run can be promoted.
    pub fn total_bake_s(&self) -> u64 {
        let steps = self.compiled.steps();
        steps[..steps.len().saturating_sub(1)]
            .iter()
            .map(|step| step.bake.as_secs())
            .sum()
    }

    /// The weights of the spec's steps, in basis points.
    pub fn step_weights(&self) -> Vec<u32> {
        self.compiled
            .steps()
            .iter()
            .map(|step| step.weight_bp)
            .collect()
    }

    /// One rollout of `model`'s scenario under `conditions`, its source reporting `units` units
    /// per version (1: totals only).
    pub(super) fn run(
        &self,
        model: &Model,
        conditions: &Conditions,
        units: usize,
        rng: &mut Rng,
    ) -> RolloutRun {
        let scenario = model.scenario;
        let interval = self.interval_s as f64;
        // The rollout's source reads Pods (`pod-stall`), its split drawn on a stream of its own.
        let mut state = RunState::new(conditions, rng).reporting_pods(conditions, rng);
        let mut ledger = Ledger::new(interval, conditions.scrape_s, units, rng);
        let mut status: Option<CanaryRolloutStatus> = None;
        let mut weights = Vec::new();
        let mut onset: Option<u64> = None;
        let mut t = 0u64;
        loop {
            let now = Timestamp::from_second(START_S.saturating_add_unsigned(t))
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let analysed = status.as_ref().is_some_and(|status| {
                matches!(status.phase, Phase::Progressing | Phase::Paused)
                    && status.step_index.is_some()
            });
            let (evaluation, routing) = if analysed {
                let window = compiled_analysis_window(&self.compiled, status.as_ref(), now);
                let samples = ledger.samples(window.as_secs_f64());
                let evaluation = evaluate_window(
                    self.compiled.gates(),
                    self.compiled.sequential_max_durations(),
                    self.compiled.min_samples(),
                    &samples,
                    window,
                    status.as_ref().map_or(&[][..], |status| &status.gates[..]),
                );
                (Some(evaluation), Some(routing::check(&samples)))
            } else {
                (None, None)
            };
            let input = PlanInput {
                rollout: self.name.clone(),
                generation: None,
                evaluation: evaluation.clone(),
                routing,
            };
            let plan = plan_compiled(&self.spec, Ok(&self.compiled), status.as_ref(), &input, now);
            let weight_bp = plan.weight_bp;
            let phase = plan.status.phase;
            match phase {
                Phase::Promoted => {
                    return RolloutRun {
                        outcome: Outcome::Promoted(t),
                        cause: None,
                        weights,
                        regression_start_s: onset,
                    }
                }
                Phase::RolledBack | Phase::Aborted => {
                    return RolloutRun {
                        outcome: Outcome::RolledBack(t),
                        cause: Some(self.cause(evaluation.as_ref(), &plan.status)),
                        weights,
                        regression_start_s: onset,
                    }
                }
                _ => {}
            }
            status = Some(plan.status);
            if t >= self.horizon_s {
                return RolloutRun {
                    outcome: Outcome::Undecided,
                    cause: None,
                    weights,
                    regression_start_s: onset,
                };
            }
            if onset.is_none() && !scenario.is_aa() {
                onset = match scenario.regression_start_s {
                    Some(start) => (t >= start).then_some(start),
                    None => scenario.serves_weight(weight_bp).then_some(t),
                };
            }
            let regressed = onset.is_some();
            let share = served_share(weights.last().copied(), weight_bp, conditions, interval);
            let tick = model.tick(t as f64, interval, share, regressed);
            let (canary, stable) = conditions.draw(&mut state, rng, &tick, units);
            ledger.record(rng, &canary, &stable);
            if conditions.pod_stall.is_some() {
                ledger.record_pods(state.pods());
            }
            weights.push(weight_bp);
            t += self.interval_s;
        }
    }

    /// What rolled a run back: the failed gates, else the failure-policy rule that fired.
    fn cause(&self, evaluation: Option<&Evaluation>, status: &CanaryRolloutStatus) -> String {
        if let Some(evaluation) = evaluation.filter(|e| e.verdict == Verdict::Fail) {
            return evaluation
                .results
                .iter()
                .filter(|result| result.verdict == Verdict::Fail)
                .map(|result| result.gate.as_str())
                .collect::<Vec<_>>()
                .join("+");
        }
        if status.consecutive_errors > self.spec.failure_policy.max_consecutive_errors {
            "errors".to_owned()
        } else if status.routing_mismatch_since.is_some() {
            "routing-mismatch".to_owned()
        } else if status.no_data_since.is_some() {
            "no-data".to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// The canary's share of an interval's traffic: the plan's weight, or under `weight-lag`, the
/// weight before it for the lag's part of the interval after a change.
fn served_share(
    previous_bp: Option<u32>,
    weight_bp: u32,
    conditions: &Conditions,
    interval: f64,
) -> f64 {
    let share = f64::from(weight_bp) / 10_000.0;
    match (previous_bp, conditions.weight_lag_s) {
        (Some(previous_bp), Some(lag)) if previous_bp != weight_bp && interval > 0.0 => {
            let old = f64::from(previous_bp) / 10_000.0;
            let lagged = lag.min(interval) / interval;
            lagged * old + (1.0 - lagged) * share
        }
        _ => share,
    }
}

#[cfg(test)]
mod weight_lag_tests {
    use super::*;

    #[test]
    fn a_lagging_weight_splits_the_first_interval_after_a_change() {
        let lagging = Conditions::parse("weight-lag:10").unwrap_or_default();
        // 10 s of 30 at 1%, 20 s at 5%.
        let share = served_share(Some(100), 500, &lagging, 30.0);
        assert!(
            (share - (0.01 / 3.0 + 0.05 * 2.0 / 3.0)).abs() < 1e-12,
            "{share}"
        );
        // No change, no lag, or the first interval: the plan's weight.
        assert_eq!(served_share(Some(500), 500, &lagging, 30.0), 0.05);
        assert_eq!(served_share(None, 500, &lagging, 30.0), 0.05);
        assert_eq!(
            served_share(Some(100), 500, &Conditions::independent(), 30.0),
            0.05
        );
        // A lag longer than the interval serves the old weight throughout.
        let long = Conditions::parse("weight-lag:60").unwrap_or_default();
        assert_eq!(served_share(Some(100), 500, &long, 30.0), 0.01);
    }
}
