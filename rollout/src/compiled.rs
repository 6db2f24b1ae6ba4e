//! A CanaryRollout spec once it has passed [`crate::validate::compile`]: durations parsed,
//! weights in basis points, the filter entry built and checked by the filter's own validation.
//! A cycle compiles its spec once and reads everything from here, so nothing downstream parses a
//! duration string again or re-runs the filter's checks to learn what it already knows.

use std::time::Duration;

use cohort_core::bucket::FULL_WEIGHT_BP;
use cohort_core::config::FilterConfig;

use crate::crd::CanaryRolloutSpec;
use crate::duration;
use crate::filter_config::spec_to_filter_config;
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
    pub(crate) has_sequential: bool,
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

    /// Whether a gate is sequential (its analysis window is the whole step).
    pub fn has_sequential(&self) -> bool {
        self.has_sequential
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
    use crate::validate::tests::minimal_spec;

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
