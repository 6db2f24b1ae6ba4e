//! `cohort simulate`: synthetic canary traffic judged by three gate families side by side, to
//! measure how fast each catches a regression and how often it fails a healthy canary, under
//! traffic conditions that do or do not meet the gates' assumptions.
//!
//! Traffic is simulated in ticks (30 s for the comparison families, the rollout's analysis
//! interval for the rollout), not per request: in each tick each version's requests per latency
//! bucket are independent Poisson counts (Poisson arrivals at `rps × share`, split by a
//! log-normal latency over Envoy's default histogram buckets), and its 5xx are binomial among
//! them; the conditions of [`conditions`] change that draw (clustered or overdispersed errors,
//! a heavy user, stalling pods, a day cycle, Prometheus' extrapolated windows). A
//! regressed canary has its error rate multiplied and its latencies scaled from the moment the
//! scenario says ([`Scenario`]: by default when the canary first serves the scenario's weight). Every run's random stream depends only on the seed, the scenario, the
//! condition and the run number, so results do not depend on the thread count.
//!
//! The families:
//! - `rollout` (cohort): a whole CanaryRollout (by default every default: six steps of five
//!   minutes, the sequential error-rate gate and the p99 latency gate, the default failure
//!   policy) driven through the controller's own pure code cycle by cycle ([`rollout`]): the
//!   canary's share follows the plan's weight, each step's tests run until its bake ends, and
//!   the run ends Promoted, RolledBack or undecided at the horizon. The steps set the weight;
//!   the scenario's weight says when a regressed canary turns bad: at the first step that
//!   serves it or more (healthy before), unless the scenario's name ends in `-at<s>s` (bad from
//!   that second) or `-fromstart` (bad from the start). A rollback before the canary turned bad
//!   is a false rollback; detection times count from the moment it turned bad.
//! - `threshold`: Flagger's built-in checks with the values of its documentation, through
//!   [`evaluate`]: `request-success-rate` ≥ 99% (an error-rate gate with `maxRate: 0.01`) and
//!   `request-duration` p99 ≤ 500 ms (a custom gate on the canary's histogram p99, as Flagger's
//!   query computes it), over 1 m windows every 1 m; `threshold: 5` failed checks roll back
//!   (Flagger's documented default) and 10 passed `iterations` promote. A window without canary
//!   data fails the check, as Flagger's "no values found" does. (A p99 bound relative to stable,
//!   like cohort's own latency threshold gate, fails about half the healthy canaries at 5% of
//!   100 rps: 300 requests a minute make a noisy p99.)
//! - `threshold-tuned`: the same checks and windowing, with the error-rate bound (Flagger's
//!   `request-success-rate`, as a 5xx share) and the p99 bound chosen for the condition and the
//!   scenario's traffic (rps and weight) so that the family fails healthy canaries as often as
//!   the target says (`--tune-false-rollbacks`, by default the rollout's error budget): before
//!   the measured runs, A/A runs of the same traffic under the same condition, on a calibration
//!   stream of their own, record each check's canary 5xx share and p99; both bounds are the
//!   same quantile of those values, the lowest one whose Flagger verdicts roll back at most the
//!   target share of the calibration runs (`tune`). The row says the bounds (`tuned`).
//! - `mann-whitney`: Kayenta's judge at a fixed horizon (10 m): per-minute error rate and p99 of
//!   each version compared with a Mann–Whitney test (98% confidence interval of the shift,
//!   Hodges–Lehmann estimate, tolerance 0.25, mean ratio ≥ 1, as in Kayenta's
//!   `MannWhitneyClassifier`; normal approximation for the interval). Any metric classified
//!   High rolls back at the horizon; otherwise it promotes there.
//!
//! The comparison families judge the scenario's fixed weight, as a single analysis would.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use cohort_rollout::crd::{CustomGate, ErrorRateGate, GateCheck, GateSpec, Verdict};
use cohort_rollout::evaluate::{evaluate, histogram_quantile, Observed, Samples};
use cohort_rollout::format::{or_dash, share_percent, whole_seconds};

pub mod conditions;
mod ledger;
pub mod rollout;

pub use conditions::Conditions;
use conditions::{RunState, Tick};
use ledger::Ledger;
pub use rollout::{Rollout, RolloutRun};

/// One analysis interval: the simulation's time step.
pub const TICK_S: u64 = 30;
/// Simulated time per run: long enough for every family to decide.
pub const HORIZON_S: u64 = 1200;
/// Baseline share of requests answered with a 5xx.
pub const BASELINE_ERROR_RATE: f64 = 0.005;
/// Median request latency (log-normal).
pub const LATENCY_MEDIAN_MS: f64 = 60.0;
/// Log-normal shape: p99 ≈ 4 × median (≈ 240 ms), inside Envoy's (100, 250] bucket.
pub const LATENCY_SIGMA: f64 = 0.6;
/// Envoy's default histogram bucket bounds in milliseconds (`upstream_rq_time` and Istio's
/// request-duration histogram use them).
pub const ENVOY_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Buckets including `+Inf`.
const BUCKETS: usize = ENVOY_BUCKETS_MS.len() + 1;
/// Flagger's `threshold`: failed checks before rollback.
pub const THRESHOLD_FAILED_CHECKS: u32 = 5;
/// Flagger's `iterations`: passed checks before promotion.
pub const THRESHOLD_ITERATIONS: u32 = 10;
/// Flagger's interval and window.
const THRESHOLD_INTERVAL_S: u64 = 60;
/// Flagger's documented `request-duration` bound (p99, milliseconds).
pub const THRESHOLD_P99_MS: f64 = 500.0;
/// Flagger's documented `request-success-rate` bound (99%), as a 5xx share.
pub const THRESHOLD_ERROR_RATE: f64 = 0.01;
/// The most checks a Flagger-style analysis makes before it decides.
const THRESHOLD_MAX_CHECKS: u32 = THRESHOLD_FAILED_CHECKS + THRESHOLD_ITERATIONS - 1;
/// Units per version the rollout's source reports when `--units` is not given: the filter's.
pub const DEFAULT_UNITS: usize = cohort_core::bucket::UNITS as usize;
/// The most units `--units` takes.
const MAX_UNITS: usize = 1024;
/// Calibration runs per traffic and condition for `threshold-tuned` when none is given.
pub const DEFAULT_TUNE_RUNS: u32 = 4000;
/// Quantile levels the tuning searches: `k / TUNE_LEVELS` for k in 0..=TUNE_LEVELS.
const TUNE_LEVELS: usize = 100_000;
/// Mixed into the seed of `threshold-tuned`'s calibration runs, so they share no draws with
/// the measured runs.
const TUNE_STREAM: u64 = 0x0074_756e_6564;
/// The name of the threshold family's latency check, as Flagger calls it.
const REQUEST_DURATION: &str = "request-duration";
/// When Kayenta's fixed-horizon judgement is made.
pub const MANN_WHITNEY_HORIZON_S: u64 = 600;
/// Mixed into a run's seed for the rollout family's own random stream: the rollout's traffic
/// follows its plan's weights, so it cannot share the comparison families' draws.
const ROLLOUT_STREAM: u64 = 0x0072_6f6c_6c6f_7574;

/// One traffic scenario. Its name says it: `aa-5pct-100rps`, `errors-5x-5pct-100rps`,
/// `latency-1.5x-1pct-10rps`. Without a suffix the canary turns bad when it first serves the
/// scenario's weight: from the start at a fixed weight, at the first step at or above it in a
/// whole rollout (a regression that shows under load). `-at120s` makes it turn bad at 120 s of
/// every run whatever the weight, and `-fromstart` (the same as `-at0s`) bad from the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The name it was parsed from.
    pub name: String,
    /// Requests per second to both versions together.
    pub rps: f64,
    /// The canary's share of requests (0.05 = 5%).
    pub canary_weight: f64,
    /// Stable's (and a healthy canary's) 5xx share.
    pub error_rate: f64,
    /// The regressed canary's error rate, as a multiple of `error_rate`.
    pub error_factor: f64,
    /// The regressed canary's latencies, as a multiple of stable's.
    pub latency_factor: f64,
    /// When the canary regresses, in seconds from the start; `None`: when it first serves
    /// `canary_weight` (or more).
    pub regression_start_s: Option<u64>,
}

impl Scenario {
    /// Reads a scenario name: `aa`, `errors-<f>x` or `latency-<f>x`, then `<w>pct`, `<r>rps`,
    /// and optionally `at<s>s` or `fromstart`.
    pub fn parse(name: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{name:?}: {why}; write e.g. aa-5pct-100rps, errors-5x-5pct-100rps or \
                 latency-1.5x-1pct-10rps-at120s (or -fromstart)"
            )
        };
        let parts: Vec<&str> = name.split('-').collect();
        let (kind, rest) = parts.split_first().ok_or_else(|| bad("empty"))?;
        let (factor, rest) = match *kind {
            "aa" => (1.0, rest),
            "errors" | "latency" => {
                let (factor, rest) = rest.split_first().ok_or_else(|| bad("no factor"))?;
                let factor = number(factor.strip_suffix('x'))
                    .filter(|f| *f > 0.0)
                    .ok_or_else(|| bad("the factor is written like 5x"))?;
                (factor, rest)
            }
            _ => return Err(bad("the kind is aa, errors or latency")),
        };
        let (weight, rest) = rest.split_first().ok_or_else(|| bad("no weight"))?;
        let weight = number(weight.strip_suffix("pct"))
            .filter(|w| *w > 0.0 && *w < 100.0)
            .ok_or_else(|| bad("the weight is written like 5pct (0 to 100)"))?;
        let (rps, rest) = rest.split_first().ok_or_else(|| bad("no rps"))?;
        let rps = number(rps.strip_suffix("rps"))
            .filter(|r| *r > 0.0)
            .ok_or_else(|| bad("the traffic is written like 100rps"))?;
        let start = match rest {
            [] => None,
            ["fromstart"] => Some(0),
            [at] => Some(
                at.strip_prefix("at")
                    .and_then(|s| s.strip_suffix('s'))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad("a start is written like at120s or fromstart"))?,
            ),
            _ => return Err(bad("too many parts")),
        };
        Ok(Scenario {
            name: name.to_owned(),
            rps,
            canary_weight: weight / 100.0,
            error_rate: BASELINE_ERROR_RATE,
            error_factor: if *kind == "errors" { factor } else { 1.0 },
            latency_factor: if *kind == "latency" { factor } else { 1.0 },
            regression_start_s: start,
        })
    }

    /// Canary and stable behave the same.
    pub fn is_aa(&self) -> bool {
        self.error_factor == 1.0 && self.latency_factor == 1.0
    }

    /// When the canary regresses at the scenario's fixed weight, which it serves from the start.
    pub fn fixed_weight_start_s(&self) -> u64 {
        self.regression_start_s.unwrap_or(0)
    }

    /// Whether a canary at `weight_bp` basis points serves the scenario's weight or more.
    pub fn serves_weight(&self, weight_bp: u32) -> bool {
        // Half a basis point of slack: 5pct is 500 bp, whatever 0.05 × 10 000 rounds to.
        f64::from(weight_bp) + 0.5 >= self.canary_weight * 10_000.0
    }
}

fn number(text: Option<&str>) -> Option<f64> {
    text.and_then(|t| t.parse::<f64>().ok())
        .filter(|n| n.is_finite())
}

/// The scenarios `cohort simulate` runs by default: A/A, a 5× and a 2× error rate and a 1.5×
/// latency, each at 5% of 100 rps and at 1% of 10 rps, and the 2× regression again at 25%, the
/// weight where a rollout's step serves enough canary traffic to see it.
pub const DEFAULT_SCENARIOS: [&str; 9] = [
    "aa-5pct-100rps",
    "errors-5x-5pct-100rps",
    "errors-2x-5pct-100rps",
    "latency-1.5x-5pct-100rps",
    "aa-1pct-10rps",
    "errors-5x-1pct-10rps",
    "errors-2x-1pct-10rps",
    "latency-1.5x-1pct-10rps",
    "errors-2x-25pct-100rps",
];

/// The gate families compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// cohort: the whole rollout, driven by the controller's plan.
    Rollout,
    /// Flagger-style fixed thresholds per window with a failed-check counter.
    Threshold,
    /// The same with its bounds tuned on A/A runs to a target false-rollback rate.
    ThresholdTuned,
    /// Kayenta-style Mann–Whitney judgement at a fixed horizon.
    MannWhitney,
}

impl Family {
    /// All families, in table order.
    pub const ALL: [Family; 4] = [
        Family::Rollout,
        Family::Threshold,
        Family::ThresholdTuned,
        Family::MannWhitney,
    ];

    /// The name in the table and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Family::Rollout => "rollout",
            Family::Threshold => "threshold",
            Family::ThresholdTuned => "threshold-tuned",
            Family::MannWhitney => "mann-whitney",
        }
    }
}

/// How one run ended for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rolled back at this second.
    RolledBack(u64),
    /// Promoted at this second.
    Promoted(u64),
    /// Still undecided at the horizon.
    Undecided,
}

/// One line of the result: a scenario judged by one family over all runs. Rates are fractions
/// of runs; times are seconds (detection from the regression's start). `None` (JSON null) where
/// the number does not apply (no false rollbacks to count when the canary is bad from the
/// start of every run; no detection in an A/A scenario) or no run got there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// The `--condition` value the traffic was drawn under.
    pub condition: String,
    /// Gate family name.
    pub gate: String,
    /// Runs rolled back while the canary was as good as stable (before a regression began).
    pub false_rollback_rate: Option<f64>,
    /// Runs rolled back after the regression started.
    pub detection_rate: Option<f64>,
    /// Median time from the regression's start to rollback, among detected runs.
    pub median_detect_s: Option<f64>,
    /// 90th percentile of that.
    pub p90_detect_s: Option<f64>,
    /// Median time to promotion in an A/A scenario, among promoted runs.
    pub median_promote_s: Option<f64>,
    /// Runs neither promoted nor rolled back at the horizon.
    pub undecided_rate: f64,
    /// `rollout` only: the share of runs each cause rolled back (a failed gate's name, gates
    /// failing together joined by `+`, or a failure-policy rule: `no-data`, `errors`,
    /// `routing-mismatch`). Empty for the other families.
    pub rolled_back_by: BTreeMap<String, f64>,
    /// `threshold-tuned` only: the bounds its calibration chose. Null for the other families.
    pub tuned: Option<Tuned>,
}

/// The bounds of a `threshold-tuned` gate and how they were found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tuned {
    /// A check fails when the canary's 5xx share is above this (Flagger's
    /// `request-success-rate` bound is 1 minus it).
    pub max_error_rate: f64,
    /// A check fails when the canary's p99 is above this many milliseconds
    /// (`request-duration`).
    pub max_p99_ms: f64,
    /// The false-rollback rate aimed at.
    pub target: f64,
    /// The share of calibration runs these bounds rolled back.
    pub calibration_false_rollback_rate: f64,
    /// A/A calibration runs the bounds were chosen on.
    pub calibration_runs: u32,
}

/// How many runs and which random streams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Runs per scenario and condition set.
    pub runs: u32,
    /// Base seed.
    pub seed: u64,
    /// Worker threads.
    pub threads: usize,
    /// `threshold-tuned`'s target false-rollback rate.
    pub tune_false_rollbacks: f64,
    /// `threshold-tuned`'s calibration runs per traffic (rps and weight) and condition set.
    pub tune_runs: u32,
    /// Units per version the rollout's metric source reports (1: totals only).
    pub units: usize,
}

/// One run's ends, family by family (in [`Family::ALL`] order), and what rolled the rollout back.
#[derive(Debug, Clone, PartialEq)]
struct Ends {
    outcomes: [Outcome; 4],
    /// When the rollout's canary turned bad (the comparison families': the scenario's start).
    rollout_regression_s: Option<u64>,
    cause: Option<String>,
}

/// Runs every scenario under every condition set `settings.runs` times and summarises each
/// family. `progress(done, total)` is called from the calling thread about ten times a second,
/// and once at the end.
pub fn simulate(
    scenarios: &[Scenario],
    conditions: &[Conditions],
    rollout: &Rollout,
    settings: Settings,
    mut progress: impl FnMut(usize, usize),
) -> Vec<Row> {
    let runs = settings.runs as usize;
    let cells = scenarios.len() * conditions.len();
    let total = cells * runs;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let empty = Ends {
        outcomes: [Outcome::Undecided; 4],
        rollout_regression_s: None,
        cause: None,
    };
    let outcomes: Mutex<Vec<Ends>> = Mutex::new(vec![empty; total]);
    let tuned = calibrate(scenarios, conditions, settings);
    let models: Vec<Vec<Model>> = scenarios
        .iter()
        .zip(&tuned)
        .map(|(scenario, tuned)| {
            conditions
                .iter()
                .zip(tuned)
                .map(|(conditions, tuned)| Model::new(scenario, conditions).tuned(*tuned))
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..settings.threads.max(1) {
            scope.spawn(|| loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                if job >= total {
                    break;
                }
                let (cell, run) = (job / runs, job % runs);
                let (scenario, condition) = (cell / conditions.len(), cell % conditions.len());
                // The first condition set keeps the seed's streams, so `independent` first gives
                // the comparison families the table they always gave.
                let base = match condition {
                    0 => settings.seed,
                    c => splitmix(settings.seed ^ c as u64),
                };
                let seed = stream_seed(base, scenario as u64, run as u64);
                let model = &models[scenario][condition];
                let [threshold, threshold_tuned, mann_whitney] = model.run(&mut Rng::new(seed));
                let whole = rollout.run(
                    model,
                    model.conditions,
                    settings.units,
                    &mut Rng::new(splitmix(seed ^ ROLLOUT_STREAM)),
                );
                if let Ok(mut outcomes) = outcomes.lock() {
                    outcomes[job] = Ends {
                        outcomes: [whole.outcome, threshold, threshold_tuned, mann_whitney],
                        rollout_regression_s: whole.regression_start_s,
                        cause: whole.cause,
                    };
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        while done.load(Ordering::Relaxed) < total {
            progress(done.load(Ordering::Relaxed), total);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    progress(total, total);
    let outcomes = outcomes.into_inner().unwrap_or_default();
    let mut rows = Vec::new();
    for (s, scenario) in scenarios.iter().enumerate() {
        for (c, condition) in conditions.iter().enumerate() {
            let cell = s * conditions.len() + c;
            let runs_of = &outcomes[cell * runs..(cell + 1) * runs];
            for (slot, family) in Family::ALL.into_iter().enumerate() {
                let ends: Vec<(Outcome, Option<u64>)> = runs_of
                    .iter()
                    .map(|ends| {
                        let start = match family {
                            Family::Rollout => ends.rollout_regression_s,
                            _ => Some(scenario.fixed_weight_start_s()),
                        };
                        (ends.outcomes[slot], start)
                    })
                    .collect();
                let mut row = summarise(scenario, family, &ends);
                row.condition = condition.name.clone();
                match family {
                    Family::Rollout => row.rolled_back_by = causes(runs_of),
                    Family::ThresholdTuned => row.tuned = Some(tuned[s][c]),
                    Family::Threshold | Family::MannWhitney => {}
                }
                rows.push(row);
            }
        }
    }
    rows
}

/// The share of runs each cause rolled back.
fn causes(runs: &[Ends]) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for cause in runs.iter().filter_map(|ends| ends.cause.as_ref()) {
        *counts.entry(cause.clone()).or_default() += 1;
    }
    let runs = runs.len().max(1) as f64;
    counts
        .into_iter()
        .map(|(cause, count)| (cause, count as f64 / runs))
        .collect()
}

/// One family's row from each run's end and when that run's canary turned bad (`None`: it had
/// not when the run ended).
fn summarise(scenario: &Scenario, family: Family, ends: &[(Outcome, Option<u64>)]) -> Row {
    let runs = ends.len().max(1) as f64; // run counts are small: exact
    let mut row = Row {
        scenario: scenario.name.clone(),
        condition: String::new(),
        gate: family.name().to_owned(),
        false_rollback_rate: None,
        detection_rate: None,
        median_detect_s: None,
        p90_detect_s: None,
        median_promote_s: None,
        undecided_rate: ends
            .iter()
            .filter(|(end, _)| *end == Outcome::Undecided)
            .count() as f64
            / runs,
        rolled_back_by: BTreeMap::new(),
        tuned: None,
    };
    let rollbacks = ends.iter().filter_map(|(end, start)| match end {
        Outcome::RolledBack(at) => Some((*at, *start)),
        _ => None,
    });
    if scenario.is_aa() {
        row.false_rollback_rate = Some(rollbacks.count() as f64 / runs);
        let mut promotions: Vec<u64> = ends
            .iter()
            .filter_map(|(end, _)| match end {
                Outcome::Promoted(at) => Some(*at),
                _ => None,
            })
            .collect();
        promotions.sort_unstable();
        row.median_promote_s = quantile(&promotions, 0.5);
        return row;
    }
    // A rollback decided on data that ended before the regression began is a false one.
    let (early, late): (Vec<_>, Vec<_>) =
        rollbacks.partition(|(at, start)| start.is_none_or(|start| *at <= start));
    if ends.iter().any(|(_, start)| *start != Some(0)) {
        row.false_rollback_rate = Some(early.len() as f64 / runs);
    }
    let mut detections: Vec<u64> = late
        .into_iter()
        .filter_map(|(at, start)| start.map(|start| at - start))
        .collect();
    detections.sort_unstable();
    row.detection_rate = Some(detections.len() as f64 / runs);
    row.median_detect_s = quantile(&detections, 0.5);
    row.p90_detect_s = quantile(&detections, 0.9);
    row
}

/// The nearest-rank `q` quantile of sorted seconds.
fn quantile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).map(|&s| s as f64)
}

/// A scenario under one condition set, with its latency bucket probabilities worked out once.
struct Model<'a> {
    scenario: &'a Scenario,
    conditions: &'a Conditions,
    healthy_buckets: [f64; BUCKETS],
    regressed_buckets: [f64; BUCKETS],
    /// The same, shifted by a stall (`pod-stall`; else as unstalled).
    stalled_healthy_buckets: [f64; BUCKETS],
    stalled_regressed_buckets: [f64; BUCKETS],
    threshold_gates: Vec<GateSpec>,
    /// `threshold-tuned`'s gates: Flagger's documented ones until [`Model::tuned`].
    tuned_gates: Vec<GateSpec>,
}

impl<'a> Model<'a> {
    fn new(scenario: &'a Scenario, conditions: &'a Conditions) -> Self {
        let regressed_median = LATENCY_MEDIAN_MS * scenario.latency_factor;
        let stall_ms = conditions.pod_stall.map_or(0.0, |stall| stall.add_ms);
        Model {
            scenario,
            conditions,
            healthy_buckets: lognormal_buckets(LATENCY_MEDIAN_MS),
            regressed_buckets: lognormal_buckets(regressed_median),
            stalled_healthy_buckets: shifted_lognormal_buckets(LATENCY_MEDIAN_MS, stall_ms),
            stalled_regressed_buckets: shifted_lognormal_buckets(regressed_median, stall_ms),
            threshold_gates: flagger_gates(THRESHOLD_ERROR_RATE, THRESHOLD_P99_MS),
            tuned_gates: flagger_gates(THRESHOLD_ERROR_RATE, THRESHOLD_P99_MS),
        }
    }

    /// The model with `threshold-tuned` judging by `tuned`'s bounds.
    fn tuned(mut self, tuned: Tuned) -> Self {
        self.tuned_gates = flagger_gates(tuned.max_error_rate, tuned.max_p99_ms);
        self
    }

    /// What a tick starting at `start_s` draws before the conditions, with the canary at
    /// `canary_share` and regressed or not.
    fn tick(&self, start_s: f64, length_s: f64, canary_share: f64, regressed: bool) -> Tick<'_> {
        let scenario = self.scenario;
        let (canary_error_rate, canary_buckets, canary_stalled_buckets) = if regressed {
            (
                scenario.error_rate * scenario.error_factor,
                &self.regressed_buckets,
                &self.stalled_regressed_buckets,
            )
        } else {
            (
                scenario.error_rate,
                &self.healthy_buckets,
                &self.stalled_healthy_buckets,
            )
        };
        Tick {
            start_s,
            length_s,
            rps: scenario.rps,
            canary_share,
            canary_error_rate,
            stable_error_rate: scenario.error_rate,
            canary_buckets,
            stable_buckets: &self.healthy_buckets,
            canary_stalled_buckets,
            stable_stalled_buckets: &self.stalled_healthy_buckets,
        }
    }

    /// One run of the scenario at its fixed weight, judged by the comparison families
    /// (threshold, threshold-tuned, Mann–Whitney).
    fn run(&self, rng: &mut Rng) -> [Outcome; 3] {
        let mut minutes = MinuteSeries::default();
        let mut threshold = FlaggerChecks::default();
        let mut tuned = FlaggerChecks::default();
        let mut mann_whitney = Outcome::Undecided;
        self.each_minute(rng, |t, this_minute| {
            if !threshold.decided() || !tuned.decided() {
                let samples = flagger_samples(this_minute.clone());
                for (checks, gates) in [
                    (&mut threshold, &self.threshold_gates),
                    (&mut tuned, &self.tuned_gates),
                ] {
                    if !checks.decided() {
                        checks.check(t, evaluate(gates, 1, &samples).verdict == Verdict::Pass);
                    }
                }
            }
            if t <= MANN_WHITNEY_HORIZON_S {
                minutes.push(this_minute);
            }
            if t == MANN_WHITNEY_HORIZON_S {
                mann_whitney = if minutes.any_high() {
                    Outcome::RolledBack(t)
                } else {
                    Outcome::Promoted(t)
                };
            }
            !(threshold.decided() && tuned.decided() && mann_whitney != Outcome::Undecided)
        });
        [threshold.outcome, tuned.outcome, mann_whitney]
    }

    /// Draws the scenario's traffic at its fixed weight tick by tick until the horizon, and
    /// hands `on_minute` each Flagger interval's samples with the second it ends; it stops when
    /// `on_minute` returns false.
    fn each_minute(&self, rng: &mut Rng, mut on_minute: impl FnMut(u64, &Samples) -> bool) {
        let scenario = self.scenario;
        let mut state = RunState::new(self.conditions, rng);
        let mut ledger = Ledger::new(TICK_S as f64, self.conditions.scrape_s, 1, rng);
        let mut t = 0;
        while t < HORIZON_S {
            let regressed = t >= scenario.fixed_weight_start_s();
            let tick = self.tick(t as f64, TICK_S as f64, scenario.canary_weight, regressed);
            // The comparison families read totals, as their sources do.
            let (canary, stable) = self.conditions.draw(&mut state, rng, &tick, 1);
            ledger.record(rng, &canary, &stable);
            t += TICK_S;
            if t % THRESHOLD_INTERVAL_S == 0
                && !on_minute(t, &ledger.samples(THRESHOLD_INTERVAL_S as f64))
            {
                return;
            }
        }
    }

    /// The first `count` Flagger checks' inputs of one run, for the calibration.
    fn checks(&self, rng: &mut Rng, count: usize) -> Vec<Check> {
        let mut checks = Vec::with_capacity(count);
        self.each_minute(rng, |_, samples| {
            checks.push(Check::of(samples));
            checks.len() < count
        });
        checks
    }
}

/// Flagger's check counter: `threshold` failed checks roll back, `iterations` passed promote.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FlaggerChecks {
    passed: u32,
    failed: u32,
    outcome: Outcome,
}

impl Default for FlaggerChecks {
    fn default() -> Self {
        FlaggerChecks {
            passed: 0,
            failed: 0,
            outcome: Outcome::Undecided,
        }
    }
}

impl FlaggerChecks {
    fn decided(&self) -> bool {
        self.outcome != Outcome::Undecided
    }

    /// Counts one check ending at second `t`.
    fn check(&mut self, t: u64, passed: bool) {
        if self.decided() {
            return;
        }
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        if self.failed >= THRESHOLD_FAILED_CHECKS {
            self.outcome = Outcome::RolledBack(t);
        } else if self.passed >= THRESHOLD_ITERATIONS {
            self.outcome = Outcome::Promoted(t);
        }
    }
}

/// Flagger's two checks, as the `threshold` families judge them through [`evaluate`]:
/// `request-success-rate` (an error-rate gate whose `maxRate` is `max_error_rate`) and
/// `request-duration` (a custom gate on the canary's p99, at most `max_p99_ms`).
fn flagger_gates(max_error_rate: f64, max_p99_ms: f64) -> Vec<GateSpec> {
    vec![
        GateSpec {
            name: Some("success-rate".to_owned()),
            min_samples: None,
            check: GateCheck::ErrorRate(ErrorRateGate {
                max_increase: 1.0,
                max_rate: Some(max_error_rate),
            }),
        },
        GateSpec {
            name: Some(REQUEST_DURATION.to_owned()),
            min_samples: None,
            check: GateCheck::Custom(CustomGate {
                query: "histogram_quantile(0.99, sum by (le) (rate(istio_request_duration_milliseconds_bucket{reporter=\"destination\",destination_version=\"{{version}}\"}[{{interval}}])))".to_owned(),
                min: None,
                max: Some(max_p99_ms),
            }),
        },
    ]
}

/// What one Flagger check of [`flagger_gates`] reads, kept so the calibration can judge it
/// under any bounds without drawing again.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Check {
    /// Both versions served a request and the canary's p99 is a number: else the check fails
    /// whatever the bounds (Flagger's "no values found").
    usable: bool,
    /// The canary's 5xx share.
    error_rate: f64,
    /// The canary's p99 in milliseconds.
    p99_ms: f64,
}

impl Check {
    fn of(samples: &Samples) -> Self {
        let count = |observed: &Observed<f64>| match observed {
            Observed::Value(value) if *value > 0.0 => *value,
            _ => 0.0,
        };
        let canary_requests = count(&samples.canary.requests);
        let stable_requests = count(&samples.stable.requests);
        let p99_ms = match &samples.canary.latency_ms {
            Observed::Value(buckets) => histogram_quantile(0.99, buckets),
            _ => f64::NAN,
        };
        let error_rate = if canary_requests > 0.0 {
            (count(&samples.canary.server_errors) / canary_requests).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Check {
            // The gates' sample minimum is one request of each version.
            usable: canary_requests >= 1.0 && stable_requests >= 1.0 && p99_ms.is_finite(),
            error_rate,
            p99_ms,
        }
    }

    /// Whether [`flagger_gates`]`(max_error_rate, max_p99_ms)` pass this check: neither value
    /// above its bound, with [`evaluate`]'s tolerance.
    fn passes(&self, max_error_rate: f64, max_p99_ms: f64) -> bool {
        let exceeds = |value: f64, limit: f64| value > limit + 1e-9 * limit.abs().max(1.0);
        self.usable
            && !exceeds(self.error_rate, max_error_rate)
            && !exceeds(self.p99_ms, max_p99_ms)
    }
}

/// How the Flagger counter ends on `checks` under the bounds: rolled back or not.
fn rolls_back(checks: &[Check], max_error_rate: f64, max_p99_ms: f64) -> bool {
    let mut counter = FlaggerChecks::default();
    for (t, check) in (1..).zip(checks) {
        counter.check(t, check.passes(max_error_rate, max_p99_ms));
        if counter.decided() {
            break;
        }
    }
    matches!(counter.outcome, Outcome::RolledBack(_))
}

/// `threshold-tuned`'s bounds from A/A calibration runs (each its first checks): the error-rate
/// and p99 bounds at the same quantile `k / TUNE_LEVELS` of all the runs' usable checks, the
/// lowest `k` whose verdicts roll back at most `target` of the runs (both bounds, and so the
/// checks passed, only grow with `k`: a binary search finds it). Where even the largest values
/// roll back more (checks without data), it keeps those.
fn tune(runs: &[Vec<Check>], target: f64) -> Tuned {
    let usable = || runs.iter().flatten().filter(|check| check.usable);
    let mut error_rates: Vec<f64> = usable().map(|check| check.error_rate).collect();
    let mut p99s: Vec<f64> = usable().map(|check| check.p99_ms).collect();
    error_rates.sort_by(f64::total_cmp);
    p99s.sort_by(f64::total_cmp);
    let at = |sorted: &[f64], k: usize, fallback: f64| -> f64 {
        let last = sorted.len().saturating_sub(1);
        let index = (k as f64 / TUNE_LEVELS as f64 * last as f64).round() as usize;
        sorted.get(index.min(last)).copied().unwrap_or(fallback)
    };
    let bounds = |k: usize| {
        (
            at(&error_rates, k, THRESHOLD_ERROR_RATE),
            at(&p99s, k, THRESHOLD_P99_MS),
        )
    };
    let false_rate = |k: usize| {
        let (max_error_rate, max_p99_ms) = bounds(k);
        let rolled_back = runs
            .iter()
            .filter(|checks| rolls_back(checks, max_error_rate, max_p99_ms))
            .count();
        rolled_back as f64 / runs.len().max(1) as f64
    };
    let (mut low, mut high) = (0, TUNE_LEVELS);
    while low < high {
        let middle = (low + high) / 2;
        if false_rate(middle) <= target {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let (max_error_rate, max_p99_ms) = bounds(low);
    Tuned {
        max_error_rate,
        max_p99_ms,
        target,
        calibration_false_rollback_rate: false_rate(low),
        calibration_runs: u32::try_from(runs.len()).unwrap_or(u32::MAX),
    }
}

/// `threshold-tuned`'s bounds for each scenario (by index) under each condition set: one
/// calibration per traffic (rps and weight) and condition set, on A/A runs of their own stream.
fn calibrate(
    scenarios: &[Scenario],
    conditions: &[Conditions],
    settings: Settings,
) -> Vec<Vec<Tuned>> {
    let mut traffics: Vec<Scenario> = Vec::new();
    let traffic_of: Vec<usize> = scenarios
        .iter()
        .map(|scenario| {
            let same = |other: &Scenario| {
                other.rps == scenario.rps && other.canary_weight == scenario.canary_weight
            };
            traffics.iter().position(same).unwrap_or_else(|| {
                traffics.push(Scenario {
                    name: format!("aa-calibration-{}", traffics.len()),
                    error_factor: 1.0,
                    latency_factor: 1.0,
                    regression_start_s: None,
                    ..scenario.clone()
                });
                traffics.len() - 1
            })
        })
        .collect();
    let runs = settings.tune_runs.max(1) as usize;
    let cells = traffics.len() * conditions.len();
    let base = splitmix(settings.seed ^ TUNE_STREAM);
    let checks = parallel(cells * runs, settings.threads, |job| {
        let (cell, run) = (job / runs, job % runs);
        let (traffic, condition) = (cell / conditions.len(), cell % conditions.len());
        let model = Model::new(&traffics[traffic], &conditions[condition]);
        let seed = stream_seed(
            splitmix(base ^ condition as u64),
            traffic as u64,
            run as u64,
        );
        model.checks(&mut Rng::new(seed), THRESHOLD_MAX_CHECKS as usize)
    });
    let tuned: Vec<Tuned> = checks
        .chunks(runs)
        .map(|runs| tune(runs, settings.tune_false_rollbacks))
        .collect();
    traffic_of
        .iter()
        .map(|traffic| {
            (0..conditions.len())
                .map(|condition| tuned[traffic * conditions.len() + condition])
                .collect()
        })
        .collect()
}

/// `job(0) … job(total − 1)` on `threads` threads, in order.
fn parallel<T: Send>(total: usize, threads: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(total));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    break;
                }
                let result = job(index);
                if let Ok(mut results) = results.lock() {
                    results.push((index, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

/// One version's requests over a period: per latency bucket (not cumulative) and 5xx.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    buckets: [u64; BUCKETS],
    errors: u64,
}

impl Counts {
    /// Poisson requests with mean `requests`, split over the buckets, `error_rate` of them 5xx.
    fn draw(rng: &mut Rng, requests: f64, error_rate: f64, buckets: &[f64; BUCKETS]) -> Self {
        let mut counts = Counts::default();
        for (count, probability) in counts.buckets.iter_mut().zip(buckets) {
            *count = rng.poisson(requests * probability);
        }
        counts.errors = rng.binomial(counts.requests(), error_rate);
        counts
    }

    fn requests(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, other: &Counts) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.errors += other.errors;
    }

    /// `self − other`, for a running total `other` at or below `self`.
    fn subtract(&mut self, other: &Counts) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_sub(*theirs);
        }
        self.errors = self.errors.saturating_sub(other.errors);
    }

    /// Each request kept with chance `share` (binomially): the part of a tick's requests
    /// that arrived in `share` of it, when they arrive uniformly.
    fn thin(&self, rng: &mut Rng, share: f64) -> Counts {
        let mut part = Counts::default();
        for (kept, count) in part.buckets.iter_mut().zip(&self.buckets) {
            *kept = rng.binomial(*count, share);
        }
        part.errors = rng.binomial(self.errors, share).min(part.requests());
        part
    }
}

/// `samples` plus the canary's p99 as the `request-duration` query's answer.
fn flagger_samples(mut samples: Samples) -> Samples {
    let p99 = match &samples.canary.latency_ms {
        Observed::Value(buckets) => histogram_quantile(0.99, buckets),
        _ => f64::NAN,
    };
    let answer = if p99.is_finite() {
        Observed::Value(p99)
    } else {
        Observed::NoData
    };
    samples
        .canary
        .custom
        .insert(REQUEST_DURATION.to_owned(), answer);
    samples
}

/// Kayenta's inputs: one value per minute and version (minutes without data left out, as
/// Kayenta's NaN strategy "remove" does).
#[derive(Debug, Clone, Default, PartialEq)]
struct MinuteSeries {
    canary_errors: Vec<f64>,
    stable_errors: Vec<f64>,
    canary_p99: Vec<f64>,
    stable_p99: Vec<f64>,
}

impl MinuteSeries {
    fn push(&mut self, samples: &Samples) {
        let pairs = [
            (
                &samples.canary,
                &mut self.canary_errors,
                &mut self.canary_p99,
            ),
            (
                &samples.stable,
                &mut self.stable_errors,
                &mut self.stable_p99,
            ),
        ];
        for (version, errors, p99) in pairs {
            if let (Observed::Value(requests), Observed::Value(failed)) =
                (&version.requests, &version.server_errors)
            {
                if *requests > 0.0 {
                    errors.push(failed / requests);
                }
            }
            if let Observed::Value(buckets) = &version.latency_ms {
                let q = histogram_quantile(0.99, buckets);
                if q.is_finite() {
                    p99.push(q);
                }
            }
        }
    }

    fn any_high(&self) -> bool {
        kayenta_high(&self.canary_errors, &self.stable_errors)
            || kayenta_high(&self.canary_p99, &self.stable_p99)
    }
}

/// Two-sided z for Kayenta's 98% confidence level.
const Z_98: f64 = 2.326_347_874_040_841;

/// Kayenta's Mann–Whitney classification of `canary` against `stable`, direction "increase":
/// High when the 98% interval of the location shift lies above 0.25 × |Hodges–Lehmann shift|
/// and canary's mean is at least stable's.
pub fn kayenta_high(canary: &[f64], stable: &[f64]) -> bool {
    if canary.is_empty() || stable.is_empty() {
        return false; // no data: not High
    }
    let distinct = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.dedup();
        sorted
    };
    let mut all = canary.to_vec();
    all.extend_from_slice(stable);
    if distinct(&all).len() == 1 {
        return false;
    }
    let mut shifts: Vec<f64> = canary
        .iter()
        .flat_map(|c| stable.iter().map(move |s| c - s))
        .collect();
    shifts.sort_by(f64::total_cmp);
    let pairs = shifts.len();
    let estimate = if pairs % 2 == 1 {
        shifts[pairs / 2]
    } else {
        (shifts[pairs / 2 - 1] + shifts[pairs / 2]) / 2.0
    };
    let (n, m) = (canary.len() as f64, stable.len() as f64);
    let spread = (n * m * (n + m + 1.0) / 12.0).sqrt();
    let rank = (n * m / 2.0 - Z_98 * spread).floor().max(1.0) as usize;
    let lower = shifts[rank.min(pairs) - 1];
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    let ratio = if mean(stable) == 0.0 {
        1.0
    } else {
        mean(canary) / mean(stable)
    };
    lower > 0.25 * estimate.abs() && ratio >= 1.0
}

/// Probabilities of Envoy's buckets (the last is `+Inf`) for a log-normal latency with median
/// `median_ms` and shape [`LATENCY_SIGMA`].
fn lognormal_buckets(median_ms: f64) -> [f64; BUCKETS] {
    shifted_lognormal_buckets(median_ms, 0.0)
}

/// [`lognormal_buckets`] of a latency `shift_ms` longer: P(X + shift ≤ le) = P(X ≤ le − shift).
fn shifted_lognormal_buckets(median_ms: f64, shift_ms: f64) -> [f64; BUCKETS] {
    let mut probabilities = [0.0; BUCKETS];
    let mut below = 0.0;
    for (probability, le) in probabilities.iter_mut().zip(ENVOY_BUCKETS_MS) {
        let room = le - shift_ms;
        let cumulative = if room > 0.0 {
            normal_cdf((room / median_ms).ln() / LATENCY_SIGMA)
        } else {
            0.0
        };
        *probability = (cumulative - below).max(0.0);
        below = cumulative;
    }
    probabilities[BUCKETS - 1] = (1.0 - below).max(0.0);
    probabilities
}

/// Φ(x), from `erfc` (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7).
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let polynomial = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ]
    .iter()
    .rev()
    .fold(0.0, |acc, c| c + t * acc);
    let value = t * (-z * z + polynomial).exp();
    if x >= 0.0 {
        value
    } else {
        2.0 - value
    }
}

/// A run's seed from the base seed, the scenario and the run (SplitMix64 finaliser of each).
fn stream_seed(seed: u64, scenario: u64, run: u64) -> u64 {
    splitmix(splitmix(splitmix(seed) ^ scenario) ^ run)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// xoshiro256** (Blackman & Vigna): small, fast, and the same stream on every platform and
/// crate version, which keeps BENCHMARKS.md reproducible.
#[derive(Debug, Clone)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator seeded through SplitMix64, as the xoshiro authors recommend.
    pub fn new(seed: u64) -> Self {
        let mut state = [0; 4];
        for (i, word) in (0u64..).zip(&mut state) {
            *word = splitmix(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        if state == [0; 4] {
            state[0] = 1; // the one state xoshiro cannot leave
        }
        Rng { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A Poisson count with mean `mean`: inversion below 30, else Hörmann's transformed
    /// rejection (PTRS, 1993), exact in both cases.
    pub fn poisson(&mut self, mean: f64) -> u64 {
        // NaN and non-positive means alike.
        if mean.is_nan() || mean <= 0.0 {
            return 0;
        }
        if mean < 30.0 {
            let mut k = 0;
            let mut probability = (-mean).exp();
            let mut cumulative = probability;
            let u = self.uniform();
            while u > cumulative && k < 1000 {
                k += 1;
                probability *= mean / k as f64;
                cumulative += probability;
            }
            return k;
        }
        let slam = mean.sqrt();
        let log_mean = mean.ln();
        let b = 0.931 + 2.53 * slam;
        let a = -0.059 + 0.024_83 * b;
        let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
        let v_r = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.uniform() - 0.5;
            let v = self.uniform();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + mean + 0.43).floor();
            if us >= 0.07 && v <= v_r {
                return k as u64;
            }
            if k < 0.0 || (us < 0.013 && v > us) {
                continue;
            }
            let accept = v.ln() + inv_alpha.ln() - (a / (us * us) + b).ln();
            if accept <= -mean + k * log_mean - ln_factorial(k) {
                return k as u64;
            }
        }
    }

    /// A binomial count of `trials` with success probability `p`, by inversion in chunks small
    /// enough that `(1 - p)^chunk` stays far from underflow (cost ∝ trials × p).
    pub fn binomial(&mut self, trials: u64, p: f64) -> u64 {
        if p.is_nan() || p <= 0.0 || trials == 0 {
            return 0;
        }
        if p >= 1.0 {
            return trials;
        }
        if p > 0.5 {
            return trials - self.binomial(trials, 1.0 - p);
        }
        let chunk = ((300.0 / -(1.0 - p).ln()).floor() as u64).max(1);
        let mut successes = 0;
        let mut left = trials;
        while left > 0 {
            let n = left.min(chunk);
            left -= n;
            let odds = p / (1.0 - p);
            let mut k = 0;
            let mut probability = (1.0 - p).powf(n as f64);
            let mut cumulative = probability;
            let u = self.uniform();
            while u > cumulative && k < n {
                k += 1;
                probability *= odds * (n - k + 1) as f64 / k as f64;
                cumulative += probability;
            }
            successes += k;
        }
        successes
    }
}

/// ln(k!) for a whole `k ≥ 0`: exact below 10, Stirling's series above (error < 1e-10).
fn ln_factorial(k: f64) -> f64 {
    const SMALL: [f64; 10] = [
        0.0,
        0.0,
        std::f64::consts::LN_2,
        1.791_759_469_228_055,
        3.178_053_830_347_146,
        4.787_491_742_782_046,
        6.579_251_212_010_101,
        8.525_161_361_065_415,
        10.604_602_902_745_25,
        12.801_827_480_081_469,
    ];
    if k < 10.0 {
        return SMALL[k.max(0.0) as usize];
    }
    let z = k + 1.0;
    let z2 = z * z;
    (z - 0.5) * z.ln() - z + 0.5 * (2.0 * std::f64::consts::PI).ln() + 1.0 / (12.0 * z)
        - 1.0 / (360.0 * z * z2)
        + 1.0 / (1260.0 * z2 * z2 * z)
}

/// The result as a table, one line per scenario, condition and family; a last column says
/// `threshold-tuned`'s bounds when there are such rows.
pub fn table(rows: &[Row]) -> String {
    let tuned = rows.iter().any(|row| row.tuned.is_some());
    let mut header = vec![
        "scenario",
        "condition",
        "gate",
        "false rollback",
        "detected",
        "median detect",
        "p90 detect",
        "median promote",
        "undecided",
        "rolled back by",
    ];
    if tuned {
        header.push("tuned");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut line = vec![
                row.scenario.clone(),
                row.condition.clone(),
                row.gate.clone(),
                or_dash(row.false_rollback_rate, |rate| share_percent(rate, 2)),
                or_dash(row.detection_rate, |rate| share_percent(rate, 2)),
                or_dash(row.median_detect_s, whole_seconds),
                or_dash(row.p90_detect_s, whole_seconds),
                or_dash(row.median_promote_s, whole_seconds),
                share_percent(row.undecided_rate, 2),
                causes_cell(&row.rolled_back_by),
            ];
            if tuned {
                line.push(row.tuned.as_ref().map_or("-".to_owned(), tuned_cell));
            }
            line
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let last = header.len() - 1;
    // Left-aligned: the names and the text columns after the numbers.
    let numbers = 3..9;
    let render = |line: &[String]| {
        let mut out = String::new();
        for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
            let pad = *width - cell.chars().count();
            if !numbers.contains(&i) {
                out.push_str(cell);
                if i < last {
                    out.push_str(&" ".repeat(pad));
                }
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            }
            out.push_str(if i < last { "  " } else { "\n" });
        }
        out
    };
    let mut out = render(
        &header
            .iter()
            .map(|cell| (*cell).to_owned())
            .collect::<Vec<_>>(),
    );
    for line in &cells {
        out.push_str(&render(line));
    }
    out
}

/// `5xx ≤ 1.33%, p99 ≤ 342 ms (A/A 0.95% of 4000)`: tuned bounds and their calibration.
fn tuned_cell(tuned: &Tuned) -> String {
    format!(
        "5xx ≤ {}, p99 ≤ {:.0} ms (A/A {} of {})",
        share_percent(tuned.max_error_rate, 2),
        tuned.max_p99_ms,
        share_percent(tuned.calibration_false_rollback_rate, 2),
        tuned.calibration_runs
    )
}

/// `latency-p99 3.10%, error-rate 0.40%`: the causes, most frequent first; `-` for none.
fn causes_cell(causes: &BTreeMap<String, f64>) -> String {
    if causes.is_empty() {
        return "-".to_owned();
    }
    let mut sorted: Vec<(&String, &f64)> = causes.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    sorted
        .iter()
        .map(|(cause, share)| format!("{cause} {}", share_percent(**share, 2)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `cohort simulate`'s command line.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SimulateArgs {
    /// Runs per scenario and condition.
    #[arg(long, default_value_t = 10_000)]
    pub runs: u32,
    /// Base seed; the same seed gives the same table.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// A scenario to run (repeatable): aa, errors-<F>x or latency-<F>x, then the canary's
    /// weight and the traffic, e.g. errors-5x-5pct-100rps or latency-1.5x-1pct-10rps. A
    /// regressed canary turns bad when it first serves the scenario's weight: from the start at
    /// the comparison families' fixed weight, at the first step at or above it in the rollout.
    /// Add -at<S>s to make it turn bad at S seconds whatever the weight, or -fromstart (the same
    /// as -at0s) to make it bad from the start. Default: aa, errors-5x, errors-2x and
    /// latency-1.5x at 5pct-100rps and at 1pct-10rps, and errors-2x-25pct-100rps.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// A traffic condition to run every scenario under (repeatable; each gives its own rows):
    /// independent, retry-clusters:MEAN, overdispersed:CV, heavy-user:SHARE:MULT,
    /// pod-stall:PODS:EVERY:FOR:ADD (every pod of both versions stalls once every EVERY s on
    /// average, for FOR s, adding ADD ms; the canary runs PODS pods, stable as many as carry the
    /// same load per pod; the rollout family's source also reports the counts by Pod),
    /// diurnal[:AMPLITUDE], extrapolated[:SCRAPE], weight-lag:SECONDS (a
    /// pushed weight reaches the filter that much later), or several joined by + to compose
    /// them; default: independent.
    #[arg(long = "condition", value_name = "NAME[:PARAMS]")]
    pub conditions: Vec<String>,
    /// The CanaryRollout (YAML, as `cohort run` reads it) whose whole rollout the `rollout`
    /// family simulates; default: one with every default (steps, gates, failure policy).
    #[arg(long, value_name = "FILE")]
    pub rollout: Option<PathBuf>,
    /// The false-rollback rate the threshold-tuned family's bounds are tuned to on A/A runs of
    /// each scenario's traffic and condition (a fraction, e.g. 0.01); default: the rollout's
    /// error budget (spec.analysis.alpha, 1% by default).
    #[arg(long, value_name = "RATE")]
    pub tune_false_rollbacks: Option<f64>,
    /// A/A calibration runs per traffic (rps and weight) and condition for threshold-tuned.
    #[arg(long, value_name = "RUNS", default_value_t = DEFAULT_TUNE_RUNS)]
    pub tune_runs: u32,
    /// Units per version the rollout family's metric source reports: 16, Istio's metrics with
    /// the `cohort_unit` label (manifests/istio/telemetry.yaml); 1, totals only (a plain Envoy's
    /// cluster stats, or Istio without that label).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_UNITS)]
    pub units: usize,
    /// Print a JSON array of rows instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The scenarios, condition sets and rollout `args` name; errors name the flag.
pub fn read_args(args: &SimulateArgs) -> Result<(Vec<Scenario>, Vec<Conditions>, Rollout), String> {
    let names: Vec<String> = if args.scenarios.is_empty() {
        DEFAULT_SCENARIOS
            .iter()
            .map(|name| (*name).to_owned())
            .collect()
    } else {
        args.scenarios.clone()
    };
    let scenarios = names
        .iter()
        .map(|name| Scenario::parse(name).map_err(|error| format!("--scenario {error}")))
        .collect::<Result<Vec<_>, _>>()?;
    let conditions = if args.conditions.is_empty() {
        vec![Conditions::independent()]
    } else {
        args.conditions
            .iter()
            .map(|text| Conditions::parse(text))
            .collect::<Result<Vec<_>, _>>()?
    };
    let rollout = match &args.rollout {
        Some(path) => Rollout::from_file(path)?,
        None => Rollout::default_rollout()?,
    };
    Ok((scenarios, conditions, rollout))
}

/// The settings `args` ask for (the tuning target defaults to `rollout`'s error budget); the
/// error names the flag.
pub fn read_settings(args: &SimulateArgs, rollout: &Rollout) -> Result<Settings, String> {
    let target = args
        .tune_false_rollbacks
        .unwrap_or(rollout.spec.analysis.alpha);
    if !(0.0..1.0).contains(&target) {
        return Err(format!(
            "--tune-false-rollbacks {target}: a rate from 0 to below 1, e.g. 0.01"
        ));
    }
    Ok(Settings {
        runs: args.runs.max(1),
        seed: args.seed,
        threads: args.threads.max(1),
        tune_false_rollbacks: target,
        tune_runs: args.tune_runs.max(1),
        units: args.units.clamp(1, MAX_UNITS),
    })
}

/// What `cohort simulate` with `args` computes: its rows, `progress` called as [`simulate`] says.
pub fn run(args: &SimulateArgs, progress: impl FnMut(usize, usize)) -> Result<Vec<Row>, String> {
    let (scenarios, conditions, rollout) = read_args(args)?;
    let settings = read_settings(args, &rollout)?;
    Ok(simulate(
        &scenarios,
        &conditions,
        &rollout,
        settings,
        progress,
    ))
}

/// Runs `cohort simulate`: the table (or JSON) on stdout, a progress bar on stderr.
pub fn main(args: &SimulateArgs) -> anyhow::Result<()> {
    let mut bar = ProgressBar::new();
    let rows = run(args, |done, total| bar.show(done, total)).map_err(anyhow::Error::msg)?;
    bar.finish();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        write!(out, "{}", table(&rows))?;
    }
    Ok(())
}

/// A progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise.
struct ProgressBar {
    started: Instant,
    terminal: bool,
    last_tenth: Option<usize>,
}

impl ProgressBar {
    fn new() -> Self {
        ProgressBar {
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_tenth: None,
        }
    }

    fn show(&mut self, done: usize, total: usize) {
        let line = progress_line(done, total, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}");
        } else {
            let tenth = done * 10 / total.max(1);
            if self.last_tenth != Some(tenth) {
                self.last_tenth = Some(tenth);
                let _ = writeln!(err, "{line}");
            }
        }
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// `simulating [##########----------]  50% 6000/12000 runs 21s`.
pub fn progress_line(done: usize, total: usize, elapsed: Duration) -> String {
    const WIDTH: usize = 30;
    let total = total.max(1);
    let done = done.min(total);
    let filled = done * WIDTH / total;
    format!(
        "simulating [{}{}] {:>3}% {done}/{total} runs {}s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        done * 100 / total,
        elapsed.as_secs()
    )
}

#[cfg(test)]
mod tests;
