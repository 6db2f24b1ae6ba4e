//! A CanaryRollout spec once it has passed [`crate::validate::compile`]: durations parsed,
//! weights in basis points, the filter entry built and checked by the filter's own validation.
//! A cycle compiles its spec once and reads everything from here, so nothing downstream parses a
//! duration string again or re-runs the filter's checks to learn what it already knows.

use std::time::Duration;

use cohort_core::bucket::FULL_WEIGHT_BP;
use cohort_core::config::FilterConfig;

use crate::crd::{CanaryRolloutSpec, GateSpec};
use crate::duration;
use crate::filter_config::spec_to_filter_config;
pub use crate::served::Served;
use crate::spec_error::SpecErrors;

/// The analysis interval of a spec that may not compile: the one it gives when that parses and
/// is positive, else 30s. What runs for an invalid spec (a requeue, `cohort run`'s samples and
/// backoff) keeps to the user's interval where it can.
pub fn interval_or_fallback(spec: &CanaryRolloutSpec) -> Duration {
    duration::parse(&spec.analysis.interval)
        .ok()
        .filter(|interval| !interval.is_zero())
        .unwrap_or(FALLBACK_INTERVAL)
}

const FALLBACK_INTERVAL: Duration = Duration::from_secs(30);

/// One step of a compiled rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompiledStep {
    /// The canary's weight at this step, in basis points (`10_000` on the last step).
    pub weight_bp: u32,
    /// How long the step bakes before it may advance.
    pub bake: Duration,
}

/// A valid spec, ready to drive: see the module docs. Built only by
/// [`crate::validate::compile`].
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRollout {
    pub(crate) steps: Vec<CompiledStep>,
    pub(crate) interval: Duration,
    pub(crate) min_samples: u64,
    pub(crate) no_data_deadline: Duration,
    pub(crate) sequential_max_durations: Vec<Option<Duration>>,
    pub(crate) gates: Vec<GateSpec>,
    pub(crate) routing_mismatch_deadline: Duration,
    pub(crate) served: Served,
    pub(crate) entry: FilterEntry,
}

impl CompiledRollout {
    /// The steps, in order; never empty, strictly increasing, the last at 100%.
    pub fn steps(&self) -> &[CompiledStep] {
        &self.steps
    }

    /// `spec.analysis.interval`: positive.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// `spec.analysis.minSamples`: at least 1.
    pub fn min_samples(&self) -> u64 {
        self.min_samples
    }

    /// `spec.failurePolicy.noDataDeadline`: positive.
    pub fn no_data_deadline(&self) -> Duration {
        self.no_data_deadline
    }

    /// Each gate's `sequential.maxDuration`, in gate order; `None` for the gates that are not
    /// sequential.
    pub fn sequential_max_durations(&self) -> &[Option<Duration>] {
        &self.sequential_max_durations
    }

    /// `spec.failurePolicy.routingMismatchDeadline`: positive.
    pub fn routing_mismatch_deadline(&self) -> Duration {
        self.routing_mismatch_deadline
    }

    /// Where the served metrics are read.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// The gates as they judge: the spec's, with every sequential gate's `alpha` set to the
    /// level it tests at in each step, so that together they keep `spec.analysis.alpha`.
    pub fn gates(&self) -> &[GateSpec] {
        &self.gates
    }

    /// Whether a gate is sequential (its analysis window is the whole step).
    pub fn has_sequential(&self) -> bool {
        self.sequential_max_durations.iter().any(Option::is_some)
    }

    /// The filter entry, checked once; [`FilterEntry::at`] sets its weight.
    pub fn entry(&self) -> &FilterEntry {
        &self.entry
    }
}

/// The filter config a spec makes for the rollout `namespace/name`, known to pass the filter's
/// validation. The weight is the only part that changes from cycle to cycle, and the filter's
/// only rule about it is its range, so [`FilterEntry::at`] sets it without validating again.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterEntry {
    config: FilterConfig,
}

impl FilterEntry {
    /// Builds and checks the entry of `spec` for `namespace/name` (what
    /// [`spec_to_filter_config`] checks, and nothing else of the spec). A rollout whose spec is
    /// invalid elsewhere can still have an entry: an abort must reach the filter.
    pub fn build(
        spec: &CanaryRolloutSpec,
        namespace: &str,
        name: &str,
    ) -> Result<FilterEntry, SpecErrors> {
        spec_to_filter_config(spec, namespace, name, 0).map(|config| FilterEntry { config })
    }

    /// The whole filter config at `weight_bp`; `None` above 100%, which the filter refuses.
    pub fn at(&self, weight_bp: u32) -> Option<FilterConfig> {
        if weight_bp > FULL_WEIGHT_BP {
            return None;
        }
        let mut config = self.config.clone();
        // Built by `spec_to_filter_config`: exactly one rollout.
        for rollout in config.rollouts.values_mut() {
            rollout.weight_bp = weight_bp;
        }
        Some(config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crd::{GateCheck, GateSpec, SequentialGate, SequentialMetric, Step};
    use crate::validate::tests::minimal_spec;
    use crate::validate::{compile, validate_spec};

    const fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn compile_converts_durations_and_steps() {
        type Edit = fn(&mut CanaryRolloutSpec);
        // (case, edit, steps as (bp, bake), interval, no-data deadline, sequential maxDurations)
        type Case = (
            &'static str,
            Edit,
            Vec<(u32, Duration)>,
            Duration,
            Duration,
            Vec<Option<Duration>>,
        );
        let table: [Case; 3] = [
            (
                "the defaults",
                |_| {},
                [100, 500, 2_500, 5_000, 7_500, 10_000]
                    .map(|bp| (bp, secs(300)))
                    .to_vec(),
                secs(30),
                secs(600),
                vec![Some(secs(600)), Some(secs(600))],
            ),
            (
                "fractional weights and compound durations",
                |spec| {
                    spec.steps = vec![
                        Step::new(0.25, "1.5m"),
                        Step::new(12.5, "1h30m"),
                        Step::new(100.0, "500ms"),
                    ];
                    spec.analysis.interval = "15s".into();
                    spec.failure_policy.no_data_deadline = "2h".into();
                },
                vec![
                    (25, secs(90)),
                    (1_250, secs(5_400)),
                    (10_000, Duration::from_millis(500)),
                ],
                secs(15),
                secs(7_200),
                vec![Some(secs(600)), Some(secs(600))],
            ),
            (
                "a time-only rollout, then a second sequential gate",
                |spec| {
                    spec.analysis.gates = Vec::new();
                    let mut gate = SequentialGate::new(SequentialMetric::Latency);
                    gate.max_duration = "90s".into();
                    spec.analysis
                        .gates
                        .push(GateSpec::new(GateCheck::Sequential(gate)));
                    spec.steps = vec![Step::new(100.0, "0s")];
                },
                vec![(10_000, Duration::ZERO)],
                secs(30),
                secs(600),
                vec![Some(secs(90))],
            ),
        ];
        for (case, edit, steps, interval, deadline, max_durations) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let compiled = compile(&spec, "shop", "checkout").unwrap();
            let got: Vec<(u32, Duration)> = compiled
                .steps()
                .iter()
                .map(|step| (step.weight_bp, step.bake))
                .collect();
            assert_eq!(got, steps, "{case}");
            assert_eq!(compiled.interval(), interval, "{case}");
            assert_eq!(compiled.no_data_deadline(), deadline, "{case}");
            assert_eq!(compiled.min_samples(), spec.analysis.min_samples, "{case}");
            assert_eq!(compiled.sequential_max_durations(), max_durations, "{case}");
            assert!(compiled.has_sequential(), "{case}");
            assert_eq!(
                compiled.entry().at(2_500),
                Some(spec_to_filter_config(&spec, "shop", "checkout", 2_500).unwrap()),
                "{case}"
            );
        }
    }

    #[test]
    fn compile_refuses_what_validate_spec_refuses() {
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: [(Edit, &[&str]); 6] = [
            (
                |spec| spec.analysis.interval = "0s".into(),
                &["spec.analysis.interval"],
            ),
            (
                |spec| spec.steps[2].bake = "soon".into(),
                &["spec.steps[2].bake"],
            ),
            (
                |spec| spec.failure_policy.no_data_deadline = "5m".into(),
                &[
                    "spec.analysis.gates[0].sequential.maxDuration",
                    "spec.analysis.gates[1].sequential.maxDuration",
                ],
            ),
            (
                |spec| spec.failure_policy.no_data_deadline = "never".into(),
                &["spec.failurePolicy.noDataDeadline"],
            ),
            (
                |spec| {
                    spec.steps[5].weight = 99.0;
                    spec.hosts.clear();
                },
                &["spec.steps[5].weight", "spec.hosts"],
            ),
            (
                |spec| spec.analysis.min_samples = 0,
                &["spec.analysis.minSamples"],
            ),
        ];
        for (edit, fields) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let errors = compile(&spec, "", "checkout").unwrap_err().0;
            let got: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
            assert_eq!(got, fields);
            assert_eq!(validate_spec(&spec, "checkout"), Err(errors));
        }
        // The namespace is the rollout's, checked where it is read: validate_spec leaves it out.
        let spec = minimal_spec();
        let errors = compile(&spec, "Not A Namespace", "checkout").unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "metadata.namespace");
        assert_eq!(validate_spec(&spec, "checkout"), Ok(()));
    }

    #[test]
    fn the_entry_at_a_weight_is_what_the_spec_builds_at_that_weight() {
        let spec = minimal_spec();
        let entry = FilterEntry::build(&spec, "shop", "checkout").unwrap();
        for weight_bp in [0, 1, 2_500, 9_999, FULL_WEIGHT_BP] {
            assert_eq!(
                entry.at(weight_bp),
                Some(spec_to_filter_config(&spec, "shop", "checkout", weight_bp).unwrap()),
                "{weight_bp}"
            );
        }
        assert!(spec_to_filter_config(&spec, "shop", "checkout", FULL_WEIGHT_BP + 1).is_err());
        assert_eq!(entry.at(FULL_WEIGHT_BP + 1), None);
    }

    #[test]
    fn an_entry_that_does_not_build_says_why() {
        let mut spec = minimal_spec();
        spec.hosts.clear();
        assert_eq!(
            FilterEntry::build(&spec, "shop", "checkout").unwrap_err(),
            spec_to_filter_config(&spec, "shop", "checkout", 0).unwrap_err()
        );
    }
}

#[cfg(test)]
mod budget_tests {
    use crate::crd::{
        CanaryRolloutSpec, GateCheck, GateSpec, SequentialGate, SequentialMetric, Step,
    };
    use crate::validate::compile;
    use crate::validate::tests::minimal_spec;

    fn sequential(metric: SequentialMetric, alpha: Option<f64>) -> GateSpec {
        GateSpec::new(GateCheck::Sequential(SequentialGate {
            alpha,
            ..SequentialGate::new(metric)
        }))
    }

    fn levels(spec: &CanaryRolloutSpec) -> Result<Vec<f64>, String> {
        let compiled = compile(spec, "shop", "web").map_err(|e| e.to_string())?;
        Ok(compiled
            .gates()
            .iter()
            .filter_map(|gate| match &gate.check {
                GateCheck::Sequential(sequential) => sequential.alpha,
                _ => None,
            })
            .collect())
    }

    /// Every sequential gate tests at its share of `spec.analysis.alpha` in each analysed step
    /// (every step before the last), so the levels summed over gates and steps never exceed the
    /// rollout's budget.
    #[test]
    fn the_rollout_budget_is_split_over_gates_and_steps() {
        use SequentialMetric::{ErrorRate, Latency};
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: &[(&str, Edit, &[f64])] = &[
            // Default steps 1, 5, 25, 50, 75, 100: five analysed.
            (
                "one sequential gate, default budget",
                |s| s.analysis.gates = vec![sequential(ErrorRate, None)],
                &[0.002],
            ),
            (
                "two gates, three analysed steps, budget 3%",
                |s| {
                    s.steps = vec![
                        Step::new(5.0, "1m"),
                        Step::new(25.0, "1m"),
                        Step::new(50.0, "1m"),
                        Step::new(100.0, "1m"),
                    ];
                    s.analysis.alpha = 0.03;
                    s.analysis.gates = vec![sequential(ErrorRate, None), sequential(Latency, None)];
                },
                &[0.005, 0.005],
            ),
            (
                "a gate's own alpha is taken first",
                |s| {
                    s.analysis.gates = vec![
                        sequential(ErrorRate, Some(0.001)),
                        sequential(Latency, None),
                    ]
                },
                &[0.001, 0.001],
            ),
            (
                "own alphas that spend the budget exactly",
                |s| s.analysis.gates = vec![sequential(ErrorRate, Some(0.002))],
                &[0.002],
            ),
            (
                "a single 100% step is analysed once",
                |s| {
                    s.steps = vec![Step::new(100.0, "1m")];
                    s.analysis.gates = vec![sequential(ErrorRate, None)];
                },
                &[0.01],
            ),
        ];
        for (name, edit, expected) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let got = levels(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.len(), expected.len(), "{name}");
            for (got, want) in got.iter().zip(*expected) {
                assert!((got - want).abs() < 1e-12, "{name}: {got} against {want}");
            }
            let analysed = spec.steps.len().saturating_sub(1).max(1) as f64;
            let spent: f64 = got.iter().sum::<f64>() * analysed;
            assert!(spent <= spec.analysis.alpha + 1e-12, "{name}: {spent}");
        }
    }

    #[test]
    fn a_budget_the_gates_overspend_is_refused() {
        use SequentialMetric::{ErrorRate, Latency};
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: &[(&str, Edit, &str)] = &[
            (
                "own alpha at every step",
                |s| s.analysis.gates = vec![sequential(ErrorRate, Some(0.01))],
                "spec.analysis.alpha: is 0.01, but the sequential gates' own alphas spend 0.05 over 5 analysed steps",
            ),
            (
                "nothing left for the others",
                |s| s.analysis.gates = vec![sequential(ErrorRate, Some(0.002)), sequential(Latency, None)],
                "and leave nothing for the gates without one",
            ),
            (
                "budget out of range",
                |s| s.analysis.alpha = 0.0,
                "spec.analysis.alpha: 0 is out of range",
            ),
        ];
        for (name, edit, expected) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let error = levels(&spec).unwrap_err();
            assert!(error.contains(expected), "{name}: {error}");
        }
    }
}
