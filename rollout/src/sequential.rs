//! Anytime-valid sequential comparison of canary with stable: the `sequential` gate.
//!
//! # The problem
//! The controller looks at a canary every analysis interval. A fixed-sample test checked that
//! often fails healthy canaries far more often than its nominal level (each look is another chance
//! for noise to cross the line), and a fixed-threshold gate (Flagger's "success rate ≥ 99%") on
//! a 1% canary is either blind or trigger-happy, depending on traffic. We want a gate that may be
//! checked at every interval, fails a healthy canary with probability at most α in total, and
//! decides as soon as the data allow.
//!
//! # The method
//! Every metric is reduced to counts of an *event* over an *exposure* per version: 5xx responses
//! per request (`errorRate`), requests slower than a histogram bound per observed request
//! (`latency`), a business event per request (`businessEvent`).
//!
//! **Fail: a mixture sequential probability ratio test on the canary's share of events**
//! (Lindon & Malek 2022; Lindon, Sanden & Shirikian 2022, the Netflix deployment setting). If
//! events arrive as Poisson processes whose rates are proportional to each version's exposure,
//! then given the total number of events `m`, the canary's count `x` is binomial with
//! `θ = ρw / (1 + w(ρ − 1))`, where `w` is the canary's share of the exposure and `ρ` the ratio
//! of canary's event rate to stable's. Two unknown rates become one binomial with a known null:
//! `ρ = 1` means `θ = w`. The baseline rate drops out, so the test needs no prior knowledge of
//! the service. (For 5xx, which are Bernoulli rather than Poisson per request, the same holds
//! exactly: under the null each error is the canary's with probability `w`.) The likelihood ratio
//! of `ρ` against 1 is `ρ^x / (1 + w(ρ − 1))^m`; for a point `ρ` this is Wald's SPRT, pinned in the
//! tests against the textbook boundaries. We mix it over a fixed distribution of `ρ > 1` (a
//! log-normal shape centred on ×3, on a grid of 40 ratios from 1.1 to 54), as the mixture SPRT of
//! Johari, Pekelis & Walsh ("Always valid inference", 2017/2022) does. For every `ρ ≤ 1` the
//! mixture is a nonnegative supermartingale with mean at most 1, so by Ville's inequality
//! `P(ever ≥ 1/α) ≤ α`, however often and whenever it is looked at: the gate fails when the
//! mixture reaches `1/α`, and `1/mixture` is an always-valid p-value. A discrete mixture is exact
//! (no quadrature error can break validity), and a grid over the ratio makes the test the same
//! at every canary weight.
//!
//! **Pass: confidence sequences on each version's rate** (Howard, Ramdas, McAuliffe & Sekhon,
//! "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021, the
//! method of mixtures; Robbins 1970). For a rate `λ₀`, the Poisson likelihood ratio
//! `r^X e^{−nλ₀(r−1)}` is a supermartingale under Poisson counts and under Bernoulli ones alike
//! (`1 + x ≤ eˣ`); mixing it over a log-uniform grid of `r` gives, for each `λ₀`, a test, and the
//! `λ₀` no test rejects at level α/2 form a time-uniform bound. The gate passes when canary's upper
//! bound is below the margin computed from stable's lower bound (`max(maxRatio × stable,
//! stable + maxIncrease)`), or, for business events, canary's lower bound above
//! `(1 − maxDrop) × ` stable's upper bound. A worse-than-margin canary passes with probability at
//! most α. The margin matters only for passing: any confident evidence that the canary is worse
//! than stable fails it.
//!
//! Why these and not others: a two-proportion z-test re-run each interval inflates false
//! rollbacks (the reason this gate exists); a fixed-horizon test (Kayenta's Mann–Whitney) must
//! wait for its horizon and loses power on sparse per-interval values; the conditional binomial
//! uses only counts the filter already exports, stays exact on thin data (a handful of errors),
//! and its null does not depend on the unknown baseline rate. Compared with a continuous
//! Beta-binomial mixture (Lindon & Malek's closed form) the discrete log-ratio grid is one-sided
//! (no evidence is wasted on "the canary is better") and weight-independent.
//!
//! # What the metric source must provide
//! Cumulative counts **since the current step began** (`status.stepStartedAt`), not a sliding
//! window: the supermartingale argument needs every event since the test started, and the weight
//! (hence `w`) is constant within a step. [`analysis_window`] gives that window, and
//! [`crate::evaluate::evaluate_window`] tells the gate how long the window is (for `maxDuration`):
//! - `errorRate`: requests and 5xx per version (`increase(...[window])`);
//! - `latency`: the request-duration histogram per version, with the same bucket bounds;
//! - `businessEvent`: requests and the event's count per version.
//!
//! A rollout with a sequential gate reads every gate over that window. Each step is a fresh test
//! at the gate's level, which [`crate::validate::compile`] sets to its share of the rollout's
//! budget `spec.analysis.alpha` (split over the sequential gates and the analysed steps), so by
//! the union bound the whole rollout fails a canary no worse than stable with probability at
//! most that budget, under the assumptions below.
//!
//! # Events that arrive together
//! The binomial above treats every request as an independent trial. Real errors are not: a
//! user's client retries a failing request several times (all in one version, since users are
//! bucketed), a dependency has a bad minute, a pod stalls. Each makes the counts vary more than
//! the binomial allows, and a test that ignores it fails healthy canaries far more often than α
//! (BENCHMARKS.md: 46.9% of rollouts with retry clusters of mean 3). The gate therefore measures
//! the excess from the looks themselves ([`Tally`]): at each look it takes the increments since
//! the look before and sums Pearson's X² of the canary's share of events (against the step's own
//! average share) and of stable's events (against Poisson counts at its rate), over every step of
//! the run, pooled with a prior of 5 worth 6 looks. The counts are divided by that dispersion
//! before they are tested or bounded (the quasi-likelihood of Wedderburn 1974, McCullagh & Nelder
//! ch. 9): φ times more variance carries the information of 1/φ as many independent events. The
//! price is time: under independent requests the prior fades as looks accumulate; under
//! clustered errors every regression needs about φ times the events.
//!
//! Variation between looks cannot show a difference that stays: one heavy user whose own error rate
//! is higher sits on the canary for a whole step and moves its rate at every look alike. What the
//! controller randomises is the user, so the gate also measures the spread between users: the
//! filter puts each user in one of 16 *units* (a random partition, independent of the weight) and
//! Istio's metrics carry it as `cohort_unit`. [`unit_dispersion`] compares each version's units
//! with one another, within the window: the jackknife variance of the version's rate (one unit left
//! out at a time) over its Poisson variance. Leaving out a heavy user's unit, or a unit holding a
//! user's retries, moves the rate, and since the excess grows with the counts, the dispersion grows
//! with them: the user moves the test by a bounded number of standard errors however long it runs.
//!
//! A Pod that stalls slows all of its users at once, so units do not see it, and looks see it only
//! in the minutes it lasts, while a canary of four Pods carries it for the whole step. The Pod that served each request is
//! on every Istio series in Prometheus (`pod`), so the gate measures the spread between Pods too
//! ([`pod_dispersion`]): each Pod's rate is its version's times a multiple of variance τ²,
//! estimated from the Pods of both versions, each against its own version's rate (a regression of
//! every canary Pod is no spread). Pooling lets stable's many Pods speak for a canary of one or
//! two, which is sound because Pods of both versions carry the same load each. A version's counts
//! then vary `1 + τ²·Σμ²/Σμ` times as much as independent requests, `μ` each Pod's expected
//! events. Each version's counts are divided by the largest of its dispersions: the looks', its
//! units' and its Pods'. A variance alone does not describe a stall, though: most Pods are as
//! usual and one is far off, a tail no dispersion factor gives a Poisson count. So a canary that
//! would fail is judged again without its worst Pod when that Pod stands apart from the other
//! canary Pods ([`OUTLIER_Z`] standard deviations above its share of their events), and fails
//! only if it is still worse: one Pod's bad minutes are not the version's, while a regression
//! raises every Pod alike and none stands apart. Pass and its bounds read every Pod. Without
//! units or Pods (a plain Envoy's cluster stats, Istio without the
//! Telemetry object or without Pod labels) the looks' alone apply.
//!
//! # Assumptions and limits
//! With an estimated dispersion the supermartingale argument is approximate rather than exact;
//! `cohort simulate --condition …` measures what it keeps under each way events arrive together. A
//! handful of units estimates a variance roughly: with few events (a 1% canary at 10 rps) one retry
//! cluster can make a unit look far off, and the gate then waits longer for the same evidence. The
//! Pods' τ² assumes a Pod of either version is as likely to stall: canary Pods that stall more
//! often than stable's are a regression, which the spread they add makes slower to find. A
//! canary of one Pod beside a stable of one is its Pod: nothing in a window tells that Pod's
//! stall from the version's regression, and two canary Pods stalled at once are more than
//! leaving out one Pod covers. Exposure
//! shares are stable within a step
//! (true in expectation under per-user bucketing); the latency bound is read from stable's
//! histogram at each look, which is nearly fixed once stable has a few thousand observations. The
//! sample minimum does not hold back a Pass or a Fail: the boundaries already account for how much
//! data there is. It applies to the `maxDuration` end, which is `Underpowered`: "no regression
//! found in N requests; a K× regression could have been missed", K being the canary's upper bound
//! over stable's rate.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::compiled::{interval_or_fallback, CompiledRollout};
use crate::crd::{
    CanaryRolloutSpec, CanaryRolloutStatus, GateCheck, GateResult, SequentialGate, SequentialLook,
    SequentialMetric, Tally, Verdict,
};
use crate::evaluate::{happenings, histogram, requests, Bucket, Judge, Samples, UnitSamples};
use crate::format::share_percent_or_unknown;

/// The window the metric source should read: everything since the current step began when the
/// rollout has a sequential gate (at least one second), else the analysis interval. Pass the same
/// duration to [`crate::evaluate::evaluate_window`]. Reads the interval from the spec as written,
/// so it answers for a spec that does not compile too; [`compiled_analysis_window`] is the same
/// for one that does.
pub fn analysis_window(
    spec: &CanaryRolloutSpec,
    status: Option<&CanaryRolloutStatus>,
    now: Timestamp,
) -> Duration {
    let interval = interval_or_fallback(spec);
    let sequential = spec
        .analysis
        .gates
        .iter()
        .any(|gate| matches!(gate.check, GateCheck::Sequential(_)));
    step_window(interval, sequential, status, now)
}

/// [`analysis_window`] of a compiled spec.
pub fn compiled_analysis_window(
    compiled: &CompiledRollout,
    status: Option<&CanaryRolloutStatus>,
    now: Timestamp,
) -> Duration {
    step_window(compiled.interval(), compiled.has_sequential(), status, now)
}

fn step_window(
    interval: Duration,
    sequential: bool,
    status: Option<&CanaryRolloutStatus>,
    now: Timestamp,
) -> Duration {
    let started = status.and_then(|status| status.step_started_at.as_ref());
    match (sequential, started) {
        (true, Some(started)) => {
            let elapsed_ms = now
                .as_millisecond()
                .saturating_sub(started.0.as_millisecond());
            // Whole seconds (Kubernetes stores times so), and never empty.
            let seconds = u64::try_from(elapsed_ms / 1000).unwrap_or(0).max(1);
            Duration::from_secs(seconds)
        }
        _ => interval,
    }
}

/// A discrete mixing distribution: ratios and the logarithms of their weights (summing to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    ratios: Vec<f64>,
    log_weights: Vec<f64>,
}

impl Mixture {
    /// Ratios `exp(u)` on the grid `u = first, first + step, …` (`count` points), weighted by
    /// `weight(u)` (normalised here).
    pub fn on_log_grid(first: f64, step: f64, count: usize, weight: impl Fn(f64) -> f64) -> Self {
        let grid = (0..count).map(|i| first + step * i as f64); // small counts: exact
        Mixture::at_log_ratios(grid, weight)
    }

    /// Ratios `exp(u)` for the given `u`, weighted by `weight(u)` (normalised here).
    pub fn at_log_ratios(
        log_ratios: impl IntoIterator<Item = f64>,
        weight: impl Fn(f64) -> f64,
    ) -> Self {
        let grid: Vec<f64> = log_ratios.into_iter().collect();
        let weights: Vec<f64> = grid.iter().map(|&u| weight(u).max(0.0)).collect();
        let total: f64 = weights.iter().sum();
        Mixture {
            ratios: grid.iter().map(|u| u.exp()).collect(),
            log_weights: weights.iter().map(|w| (w / total).ln()).collect(),
        }
    }

    /// One ratio with all the weight: the mixture is then Wald's SPRT against that ratio.
    pub fn point(ratio: f64) -> Self {
        Mixture {
            ratios: vec![ratio],
            log_weights: vec![0.0],
        }
    }

    /// The alternatives of the Fail test: ratios 1.1 to 54 (40 points, log-spaced by 0.1), log
    /// weights of a normal centred on ln 3 with sd 0.7. Centred between the ×2 regressions a
    /// margin usually names and the ×5+ a bad deploy brings; tuned with `cohort simulate`.
    pub fn worse_ratios() -> Self {
        let centre = 3.0_f64.ln();
        Mixture::on_log_grid(1.1_f64.ln(), 0.1, 40, |u| {
            (-0.5 * ((u - centre) / 0.7).powi(2)).exp()
        })
    }

    /// Alternatives below a rate, for upper confidence bounds: `r = e^{-d}` for 24 distances
    /// `d = 0.002·√2^k` (0.002 to 5.8), equally weighted. Distances spread on a log scale keep
    /// the bound tight from a handful of events (far alternatives) to millions (near ones).
    pub fn lower_rates() -> Self {
        Mixture::at_log_ratios(rate_distances().map(|d| -d), |_| 1.0)
    }

    /// Alternatives above a rate, for lower confidence bounds: `r = e^{d}`, as in
    /// [`Mixture::lower_rates`].
    pub fn higher_rates() -> Self {
        Mixture::at_log_ratios(rate_distances(), |_| 1.0)
    }

    /// `ln Σ wᵢ exp(f(rᵢ))`, computed without overflow.
    fn log_mean_exp(&self, f: impl Fn(f64) -> f64) -> f64 {
        let terms: Vec<f64> = self
            .ratios
            .iter()
            .zip(&self.log_weights)
            .map(|(&ratio, &log_weight)| log_weight + f(ratio))
            .collect();
        let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return max;
        }
        max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()
    }
}

/// `0.002·√2^k` for k = 0..24.
fn rate_distances() -> impl Iterator<Item = f64> {
    (0..24).map(|k| 0.002 * std::f64::consts::SQRT_2.powi(k))
}

/// `ln` of the likelihood ratio of rate ratio `ratio` against 1, given `x` of `m` events in the
/// version under test and its exposure share `share`: `x ln ρ − m ln(1 + w(ρ − 1))`.
pub fn log_likelihood_ratio(x: f64, m: f64, share: f64, ratio: f64) -> f64 {
    x * ratio.ln() - m * (share * (ratio - 1.0)).ln_1p()
}

/// `ln` of the mixture likelihood ratio (the e-value) that the version under test has the higher
/// event rate. Starts at 0 (an e-value of 1) with no events.
pub fn log_evidence(x: f64, m: f64, share: f64, mixture: &Mixture) -> f64 {
    if m <= 0.0 {
        return 0.0;
    }
    mixture.log_mean_exp(|ratio| log_likelihood_ratio(x, m, share, ratio))
}

/// `ln` of the Poisson mixture likelihood ratio testing rate `rate` after `events` in `exposure`.
fn log_rate_evidence(events: f64, exposure: f64, rate: f64, mixture: &Mixture) -> f64 {
    mixture.log_mean_exp(|r| events * r.ln() - exposure * rate * (r - 1.0))
}

/// Time-uniform upper confidence bound on an event rate per unit of exposure at level `alpha`
/// (holds at every look with probability ≥ 1 − alpha). Infinite without exposure.
pub fn rate_upper_bound(events: f64, exposure: f64, alpha: f64) -> f64 {
    if exposure <= 0.0 {
        return f64::INFINITY;
    }
    let mixture = Mixture::lower_rates();
    let target = -alpha.ln();
    let rejects = |rate: f64| log_rate_evidence(events, exposure, rate, &mixture) >= target;
    // At the observed rate the evidence is at most 1 (every term is ≤ 0), and it grows with the
    // rate: bracket, then bisect.
    let mut low = events / exposure;
    let mut high = (2.0 * low).max(1.0 / exposure);
    while !rejects(high) {
        low = high;
        high *= 2.0;
        if !high.is_finite() {
            return f64::INFINITY;
        }
    }
    bisect(low, high, rejects).1
}

/// Time-uniform lower confidence bound on an event rate per unit of exposure at level `alpha`.
pub fn rate_lower_bound(events: f64, exposure: f64, alpha: f64) -> f64 {
    if exposure <= 0.0 || events <= 0.0 {
        return 0.0;
    }
    let mixture = Mixture::higher_rates();
    let target = -alpha.ln();
    let rejects = |rate: f64| log_rate_evidence(events, exposure, rate, &mixture) >= target;
    if !rejects(0.0) {
        return 0.0;
    }
    // Rejected (below the bound) near 0, not at the observed rate: the bound lies between.
    let accepted = |rate: f64| !rejects(rate);
    bisect(0.0, events / exposure, accepted).0
}

/// Narrows `[low, high]` to a relative 1e-6 around where `condition` turns true, given
/// `!condition(low)` and `condition(high)`. Callers take the side that errs safely.
fn bisect(mut low: f64, mut high: f64, condition: impl Fn(f64) -> bool) -> (f64, f64) {
    for _ in 0..200 {
        if high - low <= 1e-6 * high {
            break;
        }
        let middle = low + (high - low) / 2.0;
        if condition(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    (low, high)
}

/// Events over exposure for one version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counts {
    /// How often the event happened (5xx, slow requests, business events).
    pub events: f64,
    /// Requests (or histogram observations) they happened among.
    pub exposure: f64,
}

impl Counts {
    fn rate(self) -> Option<f64> {
        (self.exposure > 0.0).then(|| self.events / self.exposure)
    }

    fn deflated(self, dispersion: f64) -> Counts {
        Counts {
            events: self.events / dispersion,
            exposure: self.exposure / dispersion,
        }
    }
}

/// Which way is worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worse {
    /// More events per exposure is worse (errors, slow requests).
    Higher,
    /// Fewer events per exposure is worse (business events).
    Lower,
}

/// The pure test, on counts: what the gate decided and the numbers behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Pass, Fail or Inconclusive.
    pub verdict: Verdict,
    /// The mixture e-value that the canary is worse (fails at `1/alpha`).
    pub evidence: f64,
    /// Canary's rate where it would count as worse, at stable's observed rate.
    pub worse_from: Option<f64>,
    /// The canary's rate is confidently below (Higher) or above (Lower) this.
    pub canary_bound: f64,
    /// Why, in words (without the metric's name).
    pub reason: String,
}

/// The margin: canary rates at or beyond this count as worse than stable's `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margin {
    /// Worse at `max_ratio × rate` (and `rate + max_increase`), for Higher.
    pub max_ratio: f64,
    /// Worse at `rate + max_increase` (and `max_ratio × rate`), for Higher.
    pub max_increase: f64,
    /// Worse at `(1 − max_drop) × rate`, for Lower.
    pub max_drop: f64,
}

impl Margin {
    fn worse_from(self, worse: Worse, stable_rate: f64) -> f64 {
        match worse {
            Worse::Higher => (self.max_ratio * stable_rate).max(stable_rate + self.max_increase),
            Worse::Lower => (1.0 - self.max_drop) * stable_rate,
        }
    }
}

/// How much more each version's counts vary than independent requests would make them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dispersion {
    /// The canary's.
    pub canary: f64,
    /// Stable's.
    pub stable: f64,
}

#[cfg(test)]
impl Dispersion {
    /// The same for both versions.
    pub fn both(value: f64) -> Self {
        Dispersion {
            canary: value,
            stable: value,
        }
    }
}

/// Units with requests fewer than this say too little about the spread between them.
pub const MIN_UNITS: usize = 4;

/// How much more a version's event count varies than independent requests would make it vary,
/// measured between its units (random sets of users, [`crate::evaluate::UnitSamples`]): the
/// jackknife variance of the version's rate over its Poisson variance `X / N²`. The jackknife
/// leaves out one unit at a time, `rᵤ = (X − xᵤ) / (N − nᵤ)`, and takes `(k − 1)/k · Σ (rᵤ − r̄)²`.
/// About 1 when requests are independent, whatever the units' sizes. A user whose own error
/// rate differs, or a user's retries, sit in one unit: leaving that unit out moves the rate by
/// what the user adds, however much of the version's traffic the user sends (the sandwich,
/// residuals from the common rate, misses a user who *is* most of a 1% canary), and since the
/// excess grows with the counts, the dispersion grows with them: such a user moves the version's
/// rate by a bounded number of standard errors however long the test runs, where the counts
/// alone would make it any number. `None` with fewer than [`MIN_UNITS`] units with requests, or
/// no events.
pub fn unit_dispersion(units: &[Counts]) -> Option<f64> {
    let served: Vec<Counts> = units
        .iter()
        .copied()
        .filter(|unit| unit.exposure > 0.0 && unit.events >= 0.0)
        .collect();
    if served.len() < MIN_UNITS {
        return None;
    }
    let events: f64 = served.iter().map(|unit| unit.events).sum();
    let exposure: f64 = served.iter().map(|unit| unit.exposure).sum();
    if events <= 0.0 {
        return None;
    }
    let left_out: Vec<f64> = served
        .iter()
        .filter(|unit| exposure - unit.exposure > 0.0)
        .map(|unit| (events - unit.events) / (exposure - unit.exposure))
        .collect();
    let k = left_out.len() as f64;
    if left_out.len() < MIN_UNITS {
        return None;
    }
    let mean = left_out.iter().sum::<f64>() / k;
    let jackknife = (k - 1.0) / k
        * left_out
            .iter()
            .map(|rate| (rate - mean).powi(2))
            .sum::<f64>();
    Some(jackknife / (events / (exposure * exposure)))
}

/// What the spread between Pods says, pooled over both versions ([`pod_dispersion`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodSpread {
    /// τ²: the variance of a Pod's rate multiple around its version's rate (0: Pods alike).
    pub variance: f64,
    /// How much more the canary's count varies than independent requests make it vary,
    /// given τ² and the canary's Pods' sizes.
    pub canary: f64,
    /// The same for stable.
    pub stable: f64,
}

/// Degrees of freedom the Pods must give, over both versions (each version's Pods less one),
/// before their spread is read.
pub const MIN_POD_DEGREES: usize = 2;

/// How much more each version's event count varies than independent requests would make it vary,
/// from the spread between the Pods that served them. A stalled Pod, a Pod on a slow node, a
/// Pod with a cold cache: each moves the events of its own requests, all of its users at once,
/// so units of users cannot see it, and a canary of a few Pods moves with each one.
///
/// Each Pod's rate is taken as its version's times a multiple with mean 1 and variance τ² (the
/// gamma–Poisson or negative-binomial model): a Pod with `μ` expected events has variance
/// `μ + τ²μ²`. τ² is estimated by moments from every Pod of both versions, each against its own
/// version's rate, so a regression of the whole canary does not read as spread:
/// `Σ (x − n·r̂)² = Σ c·μ + τ² Σ c·μ²` in expectation, with `c = 1 − 2n/N + Σ(n/N)²` for
/// the one degree each version's rate takes (`(k − 1)/k` for `k` equal Pods; 0 for a lone Pod).
/// Pooling is what lets a canary of one or two Pods be judged: the Pods of both versions run
/// the same code under the same load per Pod, and stable's many show how much Pods differ.
/// A version's dispersion is then `1 + τ² Σμ₀² / Σμ₀`, with `μ₀` a Pod's expected events at the
/// rate both versions share if the canary is no worse (the null the test rejects): for `k`
/// equal Pods `1 + τ²·μ₀`, growing with the events each Pod has seen, as a stall's excess does.
/// At its own rate a version whose Pods happened not to stall in the window (a few events, or
/// none) would look precise, and one canary Pod's stall would then stand against it. `None`
/// with fewer than [`MIN_POD_DEGREES`] degrees of freedom, or no events.
pub fn pod_dispersion(canary: &[Counts], stable: &[Counts]) -> Option<PodSpread> {
    let served = |pods: &[Counts]| -> Vec<Counts> {
        pods.iter()
            .copied()
            .filter(|pod| pod.exposure > 0.0 && pod.events >= 0.0)
            .collect()
    };
    let versions = [served(canary), served(stable)];
    let degrees: usize = versions
        .iter()
        .map(|pods| pods.len().saturating_sub(1))
        .sum();
    if degrees < MIN_POD_DEGREES {
        return None;
    }
    // Per version: Σ (x − n·r̂)², Σ c·μ̂ and Σ c·μ̂²; and Σ n² / Σ n for its dispersion.
    let mut squares = 0.0;
    let mut poisson = 0.0;
    let mut heterogeneous = 0.0;
    let mut size = [0.0; 2];
    let mut all_events = 0.0;
    let mut all_exposure = 0.0;
    for (pods, size) in versions.iter().zip(size.iter_mut()) {
        let events: f64 = pods.iter().map(|pod| pod.events).sum();
        let exposure: f64 = pods.iter().map(|pod| pod.exposure).sum();
        all_events += events;
        all_exposure += exposure;
        if exposure > 0.0 {
            *size = pods.iter().map(|pod| pod.exposure.powi(2)).sum::<f64>() / exposure;
        }
        if events <= 0.0 {
            continue;
        }
        let rate = events / exposure;
        let shares_squared: f64 = pods
            .iter()
            .map(|pod| (pod.exposure / exposure).powi(2))
            .sum();
        for pod in pods {
            let expected = pod.exposure * rate;
            let weight = 1.0 - 2.0 * pod.exposure / exposure + shares_squared;
            squares += (pod.events - expected).powi(2);
            poisson += weight * expected;
            heterogeneous += weight * expected * expected;
        }
    }
    if heterogeneous <= 0.0 || all_exposure <= 0.0 {
        return None;
    }
    let variance = ((squares - poisson) / heterogeneous).max(0.0);
    let shared_rate = all_events / all_exposure;
    Some(PodSpread {
        variance,
        canary: 1.0 + variance * shared_rate * size[0],
        stable: 1.0 + variance * shared_rate * size[1],
    })
}

/// Judges canary against stable from counts since the test began. `dispersion` is how much
/// more each version's counts vary than independent requests would make them, at least one
/// ([`Tally::dispersion`], [`unit_dispersion`], [`pod_dispersion`]): the test weighs each version's counts divided
/// by its own. `expired` says `maxDuration` has passed with the sample minimum met, so "no
/// regression detected" ends the test as Underpowered.
pub fn decide(
    canary: Counts,
    stable: Counts,
    worse: Worse,
    margin: Margin,
    alpha: f64,
    dispersion: Dispersion,
    expired: bool,
) -> Decision {
    let worse_from = stable.rate().map(|rate| margin.worse_from(worse, rate));
    // Counts that vary φ times more than independent ones carry the information of 1/φ as many
    // independent events (quasi-likelihood): the test and the bounds read them deflated.
    let canary_requests = canary.exposure;
    let (canary, stable) = (
        canary.deflated(dispersion.canary.max(1.0)),
        stable.deflated(dispersion.stable.max(1.0)),
    );
    let total_exposure = canary.exposure + stable.exposure;
    if canary.exposure <= 0.0 || stable.exposure <= 0.0 {
        return Decision {
            verdict: Verdict::Inconclusive,
            evidence: 1.0,
            worse_from,
            canary_bound: f64::NAN,
            reason: "no traffic to compare yet".to_owned(),
        };
    }
    // The version whose relative excess of events would mean "canary worse".
    let (suspect, share) = match worse {
        Worse::Higher => (canary.events, canary.exposure / total_exposure),
        Worse::Lower => (stable.events, stable.exposure / total_exposure),
    };
    let total_events = canary.events + stable.events;
    let evidence = log_evidence(suspect, total_events, share, &Mixture::worse_ratios()).exp();
    let needed = 1.0 / alpha;
    // Half of alpha for each version's bound: both must hold for a Pass to be wrong.
    let half = alpha / 2.0;
    let (canary_bound, pass_bound) = match worse {
        Worse::Higher => (
            rate_upper_bound(canary.events, canary.exposure, half),
            margin.worse_from(
                worse,
                rate_lower_bound(stable.events, stable.exposure, half),
            ),
        ),
        Worse::Lower => (
            rate_lower_bound(canary.events, canary.exposure, half),
            margin.worse_from(
                worse,
                rate_upper_bound(stable.events, stable.exposure, half),
            ),
        ),
    };
    let within = match worse {
        Worse::Higher => canary_bound < pass_bound,
        Worse::Lower => canary_bound > pass_bound,
    };
    let side = match worse {
        Worse::Higher => "at most",
        Worse::Lower => "at least",
    };
    let confidence = format!("{}%", trim((1.0 - alpha) * 100.0));
    let (verdict, reason) = if evidence >= needed {
        (
            Verdict::Fail,
            format!(
                "worse than stable: evidence {} ≥ 1/α = {} (always-valid p = {})",
                short(evidence),
                short(needed),
                short(1.0 / evidence)
            ),
        )
    } else if within {
        (
            Verdict::Pass,
            format!(
                "within the margin: canary's rate is {side} {} with {confidence} confidence, \
                 worse counts from {}",
                share_percent_or_unknown(canary_bound),
                share_percent_or_unknown(pass_bound)
            ),
        )
    } else if expired {
        // What the data still allow: the canary's rate could be as bad as its bound.
        let missed = match (worse, stable.rate()) {
            (Worse::Higher, Some(rate)) if rate > 0.0 => {
                format!(
                    "a {}× regression could have been missed",
                    trim(canary_bound / rate)
                )
            }
            (Worse::Lower, Some(rate)) if rate > 0.0 => format!(
                "a drop of {} could have been missed",
                share_percent_or_unknown((1.0 - canary_bound / rate).max(0.0))
            ),
            _ => format!(
                "the canary's rate could be as high as {}",
                share_percent_or_unknown(canary_bound)
            ),
        };
        (
            Verdict::Underpowered,
            format!(
                "no regression found in {} canary requests by maxDuration (evidence {} of the {} \
                 needed to fail), but {missed}",
                short(canary_requests),
                short(evidence),
                short(needed)
            ),
        )
    } else {
        (
            Verdict::Inconclusive,
            format!(
                "gathering evidence: {} of the {} needed to fail; canary's rate is {side} {} \
                 ({confidence}), worse counts from {}",
                short(evidence),
                short(needed),
                share_percent_or_unknown(canary_bound),
                share_percent_or_unknown(pass_bound)
            ),
        )
    };
    Decision {
        verdict,
        evidence,
        worse_from,
        canary_bound,
        reason,
    }
}

impl Judge for SequentialGate {
    /// Without the window's length `maxDuration` never expires, and without earlier looks the
    /// counts are taken as independent: see [`SequentialGate::judge_over`].
    fn judge(&self, name: &str, min_samples: u64, samples: &Samples) -> GateResult {
        self.judge_over(name, min_samples, samples, None, None, None)
    }
}

/// The dispersion assumed before the looks show it: retries of failed requests (Envoy's and
/// Istio's retry policies, clients' own) make clusters of several errors common, and one large
/// cluster in a 1% canary's first minute must not read as a regression. Tuned with
/// `cohort simulate --condition retry-clusters:5` (BENCHMARKS.md).
pub const PRIOR_DISPERSION: f64 = 5.0;
/// How many looks' worth of weight the prior has.
pub const PRIOR_DEGREES: f64 = 6.0;
/// How much one look of stable's own Pearson statistic weighs against one of the canary's
/// share: stable's many events show early how unevenly events arrive, which a small canary's
/// few cannot; both estimate the same dispersion when canary and stable are alike.
pub const STABLE_WEIGHT: f64 = 3.0;

impl Tally {
    /// Folds a look at the window's counts into the tally of the look before (`None` at the first
    /// look of a run). A window shorter than the last one belongs to a new step: the finished
    /// step's spread is kept and its counts start again.
    pub fn next(
        previous: Option<&Tally>,
        canary: Counts,
        stable: Counts,
        window: Duration,
    ) -> Tally {
        let window_seconds = window.as_secs_f64();
        let mut tally = previous.cloned().unwrap_or_default();
        if previous.is_some_and(|previous| window_seconds < previous.window_seconds) {
            if let Some((pearson, degrees)) = tally.step_pearson() {
                tally.earlier_pearson += pearson;
                tally.earlier_degrees += degrees;
            }
            if let Some((pearson, degrees)) = tally.step_stable_pearson() {
                tally.earlier_stable_pearson += pearson;
                tally.earlier_stable_degrees += degrees;
            }
            tally = Tally {
                earlier_pearson: tally.earlier_pearson,
                earlier_degrees: tally.earlier_degrees,
                earlier_stable_pearson: tally.earlier_stable_pearson,
                earlier_stable_degrees: tally.earlier_stable_degrees,
                ..Tally::default()
            };
        }
        let stable_exposure_increment = (stable.exposure - tally.stable_exposure).max(0.0);
        // Prometheus' extrapolated windows can shrink a little between looks: no negative counts.
        let canary_increment = (canary.events - tally.canary_events).max(0.0);
        let stable_increment = (stable.events - tally.stable_events).max(0.0);
        let events = canary_increment + stable_increment;
        if events > 0.0 {
            tally.step_increments = tally.step_increments.saturating_add(1);
            tally.step_square_ratio += canary_increment * canary_increment / events;
        }
        if stable_exposure_increment > 0.0 {
            tally.step_stable_increments = tally.step_stable_increments.saturating_add(1);
            tally.step_stable_square_ratio +=
                stable_increment * stable_increment / stable_exposure_increment;
        }
        tally.window_seconds = window_seconds;
        tally.canary_events = canary.events;
        tally.canary_exposure = canary.exposure;
        tally.stable_events = stable.events;
        tally.stable_exposure = stable.exposure;
        tally
    }

    /// Pearson's X² of this step's increments against the step's share of events on the canary,
    /// with its degrees of freedom; `None` while it says nothing (under two increments, or no
    /// events on one side).
    fn step_pearson(&self) -> Option<(f64, f64)> {
        let events = self.canary_events + self.stable_events;
        if self.step_increments < 2 || events <= 0.0 {
            return None;
        }
        let share = self.canary_events / events;
        if share <= 0.0 || share >= 1.0 {
            return None;
        }
        let pearson =
            (self.step_square_ratio - self.canary_events * share) / (share * (1.0 - share));
        Some((pearson.max(0.0), f64::from(self.step_increments - 1)))
    }

    /// Pearson's X² of stable's increments against its rate of events per exposure in this step
    /// (Poisson variance), with its degrees of freedom.
    fn step_stable_pearson(&self) -> Option<(f64, f64)> {
        if self.step_stable_increments < 2 || self.stable_events <= 0.0 {
            return None;
        }
        let rate = self.stable_events / self.stable_exposure;
        let pearson = self.step_stable_square_ratio / rate - self.stable_events;
        Some((pearson.max(0.0), f64::from(self.step_stable_increments - 1)))
    }

    /// How much more the counts vary between looks than independent requests would make them
    /// vary, at least 1. Clustered errors (a user retrying), rates that vary from minute to
    /// minute, pods that stall: anything that makes events arrive together raises it. Two
    /// Pearson statistics estimate it, both summed over every step of the run so far: the
    /// canary's share of events against its step's average share, and stable's events against
    /// Poisson counts at its rate (weighted [`STABLE_WEIGHT`]). They are pooled with
    /// [`PRIOR_DEGREES`] looks at [`PRIOR_DISPERSION`], since a few looks say little about a
    /// variance.
    pub fn dispersion(&self) -> f64 {
        let (share, share_degrees) = self.step_pearson().unwrap_or((0.0, 0.0));
        let (stable, stable_degrees) = self.step_stable_pearson().unwrap_or((0.0, 0.0));
        let pearson =
            self.earlier_pearson + share + STABLE_WEIGHT * (self.earlier_stable_pearson + stable);
        let degrees = self.earlier_degrees
            + share_degrees
            + STABLE_WEIGHT * (self.earlier_stable_degrees + stable_degrees);
        ((pearson + PRIOR_DEGREES * PRIOR_DISPERSION) / (degrees + PRIOR_DEGREES)).max(1.0)
    }
}

impl SequentialGate {
    /// Judges samples that cover `window` since the step began. The test expires once `window`
    /// reaches `max_duration`, this gate's `maxDuration` as compiled
    /// ([`crate::CompiledRollout::sequential_max_durations`]); with either unknown it cannot.
    /// `previous` is this gate's result at the look before (from `status.gates`): the counts
    /// it saw, so the test can tell how unevenly events arrive.
    pub fn judge_over(
        &self,
        name: &str,
        min_samples: u64,
        samples: &Samples,
        window: Option<Duration>,
        max_duration: Option<Duration>,
        previous: Option<&GateResult>,
    ) -> GateResult {
        let mut result = GateResult::blank(name);
        let previous_tally = previous
            .and_then(|previous| previous.sequential.as_ref())
            .map(|look| &look.tally);
        let counted = match self.metric {
            SequentialMetric::ErrorRate => error_counts(samples),
            SequentialMetric::Latency => slow_counts(samples, self.quantile()),
            SequentialMetric::BusinessEvent => event_counts(samples, self.event.as_deref()),
        };
        let Counted {
            canary,
            stable,
            canary_units,
            stable_units,
            canary_pods,
            stable_pods,
            what,
        } = match counted {
            Ok(counted) => counted,
            Err(reason) => {
                result.verdict = Verdict::Error;
                result.reason = reason;
                // An unreadable look takes nothing from the run's memory.
                result.sequential = previous.and_then(|previous| previous.sequential.clone());
                return result;
            }
        };
        result.canary_samples = canary.exposure;
        result.stable_samples = stable.exposure;
        result.canary = canary.rate();
        result.stable = stable.rate();
        let min = min_samples as f64; // small integers: exact
        let expired = matches!((window, max_duration), (Some(window), Some(max)) if window >= max)
            && canary.exposure >= min
            && stable.exposure >= min;
        let worse = match self.metric {
            SequentialMetric::BusinessEvent => Worse::Lower,
            SequentialMetric::ErrorRate | SequentialMetric::Latency => Worse::Higher,
        };
        let margin = Margin {
            max_ratio: self.max_ratio(),
            max_increase: self.max_increase(),
            max_drop: self.max_drop(),
        };
        let tally = window.map(|window| Tally::next(previous_tally, canary, stable, window));
        let canary_spread = unit_dispersion(&canary_units);
        let stable_spread = unit_dispersion(&stable_units);
        let pod_spread = pod_dispersion(&canary_pods, &stable_pods);
        let over_time = tally.as_ref().map_or(1.0, Tally::dispersion);
        // Each version's counts vary at least as much as its units and its Pods show.
        let dispersion = Dispersion {
            canary: over_time
                .max(canary_spread.unwrap_or(1.0))
                .max(pod_spread.map_or(1.0, |pods| pods.canary)),
            stable: over_time
                .max(stable_spread.unwrap_or(1.0))
                .max(pod_spread.map_or(1.0, |pods| pods.stable)),
        };
        let alpha = self.alpha();
        let decision = decide(canary, stable, worse, margin, alpha, dispersion, expired);
        let decision = match (
            decision.verdict,
            worse,
            without_worst_pod(canary, &canary_pods),
        ) {
            // One Pod's stall is not the version's regression: the canary fails only if it is
            // worse without the Pod that adds the most. Pass still reads every Pod.
            (Verdict::Fail, Worse::Higher, Some(rest)) => {
                let without = decide(rest, stable, worse, margin, alpha, dispersion, expired);
                if without.verdict == Verdict::Fail {
                    decision
                } else {
                    Decision {
                        verdict: match without.verdict {
                            Verdict::Underpowered => Verdict::Underpowered,
                            _ => Verdict::Inconclusive,
                        },
                        evidence: without.evidence,
                        reason: format!(
                            "worse than stable only with its worst Pod: evidence {} with it, {} \
                             without it, of the {} needed to fail",
                            short(decision.evidence),
                            short(without.evidence),
                            short(1.0 / alpha)
                        ),
                        ..decision
                    }
                }
            }
            _ => decision,
        };
        result.sequential = tally.map(|tally| SequentialLook {
            evidence: decision.evidence,
            evidence_needed: 1.0 / alpha,
            dispersion: over_time,
            canary_unit_dispersion: canary_spread,
            stable_unit_dispersion: stable_spread,
            canary_pod_dispersion: pod_spread.map(|pods| pods.canary),
            stable_pod_dispersion: pod_spread.map(|pods| pods.stable),
            tally,
        });
        result.threshold = decision.worse_from;
        result.verdict = decision.verdict;
        let rates = match (canary.rate(), stable.rate()) {
            (Some(canary), Some(stable)) => {
                format!(
                    "canary {what} {} vs stable {}",
                    share_percent_or_unknown(canary),
                    share_percent_or_unknown(stable)
                )
            }
            _ => format!("{what}: canary {canary:?}, stable {stable:?}"),
        };
        let over = window.map_or(String::new(), |window| {
            format!(" over {}s", window.as_secs())
        });
        // Why a visible difference may not fail: how much users and Pods differ.
        let between = |parts: &str, canary: Option<f64>, stable: Option<f64>| {
            if canary.is_none() && stable.is_none() {
                return String::new();
            }
            format!(
                "; between {parts} counts vary {} (canary) and {} (stable) times as much as \
                 independent requests",
                canary.map_or("?".to_owned(), |d| format!("{d:.1}")),
                stable.map_or("?".to_owned(), |d| format!("{d:.1}"))
            )
        };
        result.reason = format!(
            "{rates}{over}: {}{}{}",
            decision.reason,
            between("units", canary_spread, stable_spread),
            between(
                "Pods",
                pod_spread.map(|pods| pods.canary),
                pod_spread.map(|pods| pods.stable)
            )
        );
        result
    }
}

/// How many standard deviations above its share of the canary's events a Pod must be to stand
/// apart from the canary's other Pods.
pub const OUTLIER_Z: f64 = 3.0;

/// The canary's counts without its worst Pod, the one whose events most exceed what the canary's
/// rate gives its requests, when that Pod stands apart from the others: its events lie more than
/// [`OUTLIER_Z`] standard deviations above its share of the canary's (binomial, given the
/// canary's events). `None` with fewer than two Pods with requests, or no Pod apart: a
/// regression of the whole canary raises every Pod alike and keeps all of them.
fn without_worst_pod(canary: Counts, pods: &[Counts]) -> Option<Counts> {
    let served: Vec<&Counts> = pods.iter().filter(|pod| pod.exposure > 0.0).collect();
    if served.len() < 2 {
        return None;
    }
    let events: f64 = served.iter().map(|pod| pod.events).sum();
    let exposure: f64 = served.iter().map(|pod| pod.exposure).sum();
    let rate = events / exposure;
    let excess = |pod: &Counts| pod.events - pod.exposure * rate;
    let worst = served
        .into_iter()
        .max_by(|a, b| excess(a).total_cmp(&excess(b)))?;
    let share = worst.exposure / exposure;
    let spread = (events * share * (1.0 - share)).sqrt();
    if !(spread > 0.0 && excess(worst) > OUTLIER_Z * spread) {
        return None;
    }
    Some(Counts {
        events: (canary.events - worst.events).max(0.0),
        exposure: (canary.exposure - worst.exposure).max(0.0),
    })
}

/// One version's events over exposure, in total, per unit and per Pod (empty when the source
/// cannot split them so).
struct Counted {
    canary: Counts,
    stable: Counts,
    canary_units: Vec<Counts>,
    stable_units: Vec<Counts>,
    canary_pods: Vec<Counts>,
    stable_pods: Vec<Counts>,
    what: String,
}

/// 5xx over requests.
fn error_counts(samples: &Samples) -> Result<Counted, String> {
    let canary = Counts {
        events: happenings(&samples.canary.server_errors, "canary 5xx")?,
        exposure: requests(&samples.canary.requests, "canary")?,
    };
    let stable = Counts {
        events: happenings(&samples.stable.server_errors, "stable 5xx")?,
        exposure: requests(&samples.stable.requests, "stable")?,
    };
    let by_unit = |units: &[UnitSamples]| {
        units
            .iter()
            .map(|unit| Counts {
                events: unit.server_errors,
                exposure: unit.requests,
            })
            .collect()
    };
    Ok(Counted {
        canary,
        stable,
        canary_units: by_unit(&samples.canary.units),
        stable_units: by_unit(&samples.stable.units),
        canary_pods: by_unit(&samples.canary.pods),
        stable_pods: by_unit(&samples.stable.pods),
        what: "5xx rate".to_owned(),
    })
}

/// Business events over requests.
fn event_counts(samples: &Samples, event: Option<&str>) -> Result<Counted, String> {
    let Some(event) = event else {
        return Err("a businessEvent sequential gate needs `event`".to_owned());
    };
    let none = crate::evaluate::Observed::NoData;
    let canary = Counts {
        events: happenings(
            samples.canary.events.get(event).unwrap_or(&none),
            "canary events",
        )?,
        exposure: requests(&samples.canary.requests, "canary")?,
    };
    let stable = Counts {
        events: happenings(
            samples.stable.events.get(event).unwrap_or(&none),
            "stable events",
        )?,
        exposure: requests(&samples.stable.requests, "stable")?,
    };
    // The filter counts business events by version only: no units, no Pods.
    Ok(Counted {
        canary,
        stable,
        canary_units: Vec::new(),
        stable_units: Vec::new(),
        canary_pods: Vec::new(),
        stable_pods: Vec::new(),
        what: format!("{event} per request"),
    })
}

/// Requests slower than the bucket bound holding stable's `quantile`, over observations.
fn slow_counts(samples: &Samples, quantile: f64) -> Result<Counted, String> {
    let canary = histogram(&samples.canary.latency_ms, "canary")?;
    let stable = histogram(&samples.stable.latency_ms, "stable")?;
    let stable_total = cumulative_at(&stable, f64::INFINITY);
    let bound = slow_bound(&stable, quantile);
    let Some(bound) = bound.filter(|_| stable_total > 0.0) else {
        // No stable observations (or no finite bucket): nothing splits fast from slow yet.
        let zero = Counts {
            events: 0.0,
            exposure: 0.0,
        };
        let canary_total = cumulative_at(&canary, f64::INFINITY);
        return Ok(Counted {
            canary: Counts {
                exposure: canary_total,
                ..zero
            },
            stable: zero,
            canary_units: Vec::new(),
            stable_units: Vec::new(),
            canary_pods: Vec::new(),
            stable_pods: Vec::new(),
            what: "slow share".to_owned(),
        });
    };
    let split = |buckets: &[Bucket]| {
        let total = cumulative_at(buckets, f64::INFINITY);
        Counts {
            events: (total - cumulative_at(buckets, bound)).max(0.0),
            exposure: total,
        }
    };
    // Each unit and Pod is split at the bound stable's whole histogram gives.
    let by_unit =
        |units: &[UnitSamples]| units.iter().map(|unit| split(&unit.latency_ms)).collect();
    Ok(Counted {
        canary: split(&canary),
        stable: split(&stable),
        canary_units: by_unit(&samples.canary.units),
        stable_units: by_unit(&samples.stable.units),
        canary_pods: by_unit(&samples.canary.pods),
        stable_pods: by_unit(&samples.stable.pods),
        what: format!("share slower than {bound} ms"),
    })
}

/// The smallest finite bucket bound at or above stable's `quantile` (its highest finite bound
/// when the quantile lies in the `+Inf` bucket).
pub fn slow_bound(stable: &[Bucket], quantile: f64) -> Option<f64> {
    let total = cumulative_at(stable, f64::INFINITY);
    let mut bounds: Vec<f64> = stable
        .iter()
        .map(|bucket| bucket.le)
        .filter(|le| le.is_finite())
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds
        .iter()
        .copied()
        .find(|&le| cumulative_at(stable, le) >= quantile * total)
        .or_else(|| bounds.last().copied())
}

/// Observations at or below `le`: the largest cumulative count among buckets with bound ≤ `le`
/// (so uneven bucket layouts and non-monotonic extrapolated counts read safely).
fn cumulative_at(buckets: &[Bucket], le: f64) -> f64 {
    buckets
        .iter()
        .filter(|bucket| bucket.le <= le && bucket.count.is_finite())
        .map(|bucket| bucket.count)
        .fold(0.0, f64::max)
}

/// A number for humans: `512`, `3.2`, `0.0041`.
fn short(value: f64) -> String {
    if value >= 1e6 {
        format!("{value:.2e}")
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 0.01 {
        trim(value)
    } else {
        format!("{value:.1e}")
    }
}

/// Up to 2 decimals without trailing zeros.
fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests;
