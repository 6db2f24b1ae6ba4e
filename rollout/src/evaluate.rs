//! Gate evaluation: canary against stable over one window, as pure data in, data out.
//!
//! A metric source fills [`Samples`]; [`evaluate`] judges every gate and combines the verdicts:
//! any Fail → Fail; else any Error → Error; else any Inconclusive → Inconclusive; else Pass.
//! Below a gate's sample minimum for either version the gate is Inconclusive, never Pass or Fail
//! (sequential gates excepted: their boundaries account for sample size; see
//! [`crate::sequential`]).
//!
//! Each gate kind implements [`Judge`]; [`GateCheck`] dispatches to them, so a new kind (a
//! sequential test, say) is a new `GateCheck` variant and one more `Judge` implementation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::crd::{
    BusinessEventGate, CustomGate, ErrorRateGate, GateCheck, GateResult, GateSpec, LatencyGate,
    Verdict,
};
use crate::format::share_percent;

/// One number (or histogram) a metric source tried to read.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Observed<T> {
    /// The query answered with this.
    Value(T),
    /// The query answered with nothing (no series). For counters of things that happen (errors,
    /// events) this means none happened; for request counts it means no traffic.
    #[default]
    NoData,
    /// The query failed; the text says why.
    Failed(String),
}

/// One cumulative histogram bucket: observations `<= le` (Prometheus `le` label).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Upper bound (inclusive); `f64::INFINITY` for the `+Inf` bucket.
    pub le: f64,
    /// Observations at or below `le` in the window.
    pub count: f64,
}

/// What one version did over the window. Counts are window increases, hence `f64` (Prometheus
/// `increase()` extrapolates).
///
/// Requests, server errors and latency are what the version **served** (Istio's destination
/// metrics, or its Envoy cluster's upstream stats); `decisions` is what the filter decided for
/// it. The two differ when the route misses the routing header: see [`crate::routing`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VersionSamples {
    /// Requests the version served (any code, and resets).
    pub requests: Observed<f64>,
    /// Requests that failed on the server side: 5xx responses (and resets, if the source counts
    /// them).
    pub server_errors: Observed<f64>,
    /// Request-duration histogram in milliseconds.
    pub latency_ms: Observed<Vec<Bucket>>,
    /// Requests the filter decided for this version (`cohort_decisions_total`).
    pub decisions: Observed<f64>,
    /// Business event counts by event name.
    pub events: BTreeMap<String, Observed<f64>>,
    /// Custom query results by gate name.
    pub custom: BTreeMap<String, Observed<f64>>,
    /// The same requests, server errors and latency split by the users' unit (Istio's
    /// `cohort_unit` label, from the filter's unit header): one entry per unit seen, none when
    /// the source cannot split them. Sequential gates take the spread between units as the
    /// spread users really make, so one heavy user or one user's retries, all in one unit, do
    /// not read as the whole version's.
    pub units: Vec<UnitSamples>,
    /// The same split by the Pod that served them (the `pod` label Prometheus gives every
    /// series it scrapes from a Pod): one entry per Pod seen, none when the source cannot split
    /// them. Sequential gates take the spread between Pods, pooled over both versions, as the
    /// spread a stalled or slow Pod makes, so a few canary Pods' bad minute does not read as a
    /// regression of the version.
    pub pods: Vec<UnitSamples>,
}

/// One part of a version's samples over the window: a unit of users, or a Pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnitSamples {
    /// The part's name: the `cohort_unit` label value, or the Pod's name.
    pub unit: String,
    /// Requests the unit's users were served.
    pub requests: f64,
    /// Of them, 5xx.
    pub server_errors: f64,
    /// Their request-duration histogram in milliseconds (empty when latency is not read).
    pub latency_ms: Vec<Bucket>,
}

/// Both versions over the same window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Samples {
    /// The canary version.
    pub canary: VersionSamples,
    /// The stable version.
    pub stable: VersionSamples,
}

/// Every gate's result and the combined verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The combined verdict.
    pub verdict: Verdict,
    /// One result per gate, in spec order.
    pub results: Vec<GateResult>,
}

impl Evaluation {
    /// The reasons of the gates that decided the combined verdict, e.g. for an Event on rollback.
    pub fn summary(&self) -> String {
        summary(self.verdict, &self.results)
    }
}

/// The reasons of the gates among `results` whose verdict is `verdict`, as `gate: reason; …`
/// (`VERDICT (no gates)` when none has it).
pub fn summary(verdict: Verdict, results: &[GateResult]) -> String {
    let deciding: Vec<String> = results
        .iter()
        .filter(|result| result.verdict == verdict)
        .map(|result| format!("{}: {}", result.gate, result.reason))
        .collect();
    if deciding.is_empty() {
        format!("{verdict} (no gates)")
    } else {
        deciding.join("; ")
    }
}

/// A gate kind: judges canary against stable from one window of samples.
pub trait Judge {
    /// Judges the gate named `name` with `min_samples` required of each version.
    fn judge(&self, name: &str, min_samples: u64, samples: &Samples) -> GateResult;
}

/// Judges every gate (each with its own or the analysis-wide `min_samples`) and combines them.
pub fn evaluate(gates: &[GateSpec], min_samples: u64, samples: &Samples) -> Evaluation {
    judge_all(gates, &[], min_samples, samples, None, &[])
}

/// [`evaluate`] for samples that cover `window`, as read over
/// [`crate::sequential::analysis_window`]: sequential gates take it as their test's age, so
/// their `maxDuration` can expire. `max_durations` are the gates' `maxDuration`s as compiled, in
/// gate order ([`crate::CompiledRollout::sequential_max_durations`]). Other gates judge exactly
/// as in [`evaluate`].
///
/// `previous` are the gates' results at the look before (`status.gates`): a sequential gate
/// reads its own (by name) to see how unevenly events arrive between looks.
pub fn evaluate_window(
    gates: &[GateSpec],
    max_durations: &[Option<Duration>],
    min_samples: u64,
    samples: &Samples,
    window: Duration,
    previous: &[GateResult],
) -> Evaluation {
    judge_all(
        gates,
        max_durations,
        min_samples,
        samples,
        Some(window),
        previous,
    )
}

fn judge_all(
    gates: &[GateSpec],
    max_durations: &[Option<Duration>],
    min_samples: u64,
    samples: &Samples,
    window: Option<Duration>,
    previous: &[GateResult],
) -> Evaluation {
    let results: Vec<GateResult> = gates
        .iter()
        .enumerate()
        .map(|(i, gate)| {
            let name = gate.name();
            let min_samples = gate.min_samples.unwrap_or(min_samples);
            match &gate.check {
                GateCheck::Sequential(sequential) => {
                    let max_duration = max_durations.get(i).copied().flatten();
                    let earlier = previous.iter().find(|result| result.gate == name);
                    sequential.judge_over(
                        &name,
                        min_samples,
                        samples,
                        window,
                        max_duration,
                        earlier,
                    )
                }
                check => check.judge(&name, min_samples, samples),
            }
        })
        .collect();
    Evaluation {
        verdict: combine(results.iter().map(|result| result.verdict)),
        results,
    }
}

/// Any Fail → Fail; else any Error → Error; else any Inconclusive → Inconclusive; else any
/// Underpowered → Underpowered; else Pass
/// (also for no verdicts at all: a rollout without gates advances on bake time).
pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let mut combined = Verdict::Pass;
    for verdict in verdicts {
        combined = match (combined, verdict) {
            (Verdict::Fail, _) | (_, Verdict::Fail) => Verdict::Fail,
            (Verdict::Error, _) | (_, Verdict::Error) => Verdict::Error,
            (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
            (Verdict::Underpowered, _) | (_, Verdict::Underpowered) => Verdict::Underpowered,
            (Verdict::Pass, Verdict::Pass) => Verdict::Pass,
        };
    }
    combined
}

impl Judge for GateCheck {
    fn judge(&self, name: &str, min_samples: u64, samples: &Samples) -> GateResult {
        match self {
            GateCheck::ErrorRate(gate) => gate.judge(name, min_samples, samples),
            GateCheck::Latency(gate) => gate.judge(name, min_samples, samples),
            GateCheck::BusinessEvent(gate) => gate.judge(name, min_samples, samples),
            GateCheck::Custom(gate) => gate.judge(name, min_samples, samples),
            GateCheck::Sequential(gate) => gate.judge(name, min_samples, samples),
        }
    }
}

impl Judge for ErrorRateGate {
    fn judge(&self, name: &str, min_samples: u64, samples: &Samples) -> GateResult {
        let mut result = GateResult::blank(name);
        let counted = (|| {
            Ok::<_, String>((
                requests(&samples.canary.requests, "canary")?,
                happenings(&samples.canary.server_errors, "canary 5xx")?,
                requests(&samples.stable.requests, "stable")?,
                happenings(&samples.stable.server_errors, "stable 5xx")?,
            ))
        })();
        let (canary_requests, canary_errors, stable_requests, stable_errors) = match counted {
            Ok(counts) => counts,
            Err(reason) => return result.error(reason),
        };
        result.canary_samples = canary_requests;
        result.stable_samples = stable_requests;
        let canary_rate = share(canary_errors, canary_requests);
        let stable_rate = share(stable_errors, stable_requests);
        result.canary = canary_rate;
        result.stable = stable_rate;
        if let Some(reason) = thin(min_samples, canary_requests, stable_requests, "requests") {
            return result.inconclusive(reason);
        }
        let (Some(canary_rate), Some(stable_rate)) = (canary_rate, stable_rate) else {
            return result.inconclusive("no requests".to_owned());
        };
        let mut threshold = stable_rate + self.max_increase;
        if let Some(max_rate) = self.max_rate {
            threshold = threshold.min(max_rate);
        }
        result.threshold = Some(threshold);
        let comparison = format!(
            "canary 5xx rate {} vs stable {} (limit {})",
            share_percent(canary_rate, 2),
            share_percent(stable_rate, 2),
            share_percent(threshold, 2)
        );
        if exceeds(canary_rate, threshold) {
            result.fail(comparison)
        } else {
            result.pass(comparison)
        }
    }
}

impl Judge for LatencyGate {
    fn judge(&self, name: &str, min_samples: u64, samples: &Samples) -> GateResult {
        let mut result = GateResult::blank(name);
        let histograms = (|| {
            Ok::<_, String>((
                histogram(&samples.canary.latency_ms, "canary")?,
                histogram(&samples.stable.latency_ms, "stable")?,
            ))
        })();
        let (canary_buckets, stable_buckets) = match histograms {
            Ok(histograms) => histograms,
            Err(reason) => return result.error(reason),
        };
        let label = format!("p{}", self.quantile * 100.0);
        let canary_total = observations(&canary_buckets);
        let stable_total = observations(&stable_buckets);
        result.canary_samples = canary_total;
        result.stable_samples = stable_total;
        let canary_q = histogram_quantile(self.quantile, &canary_buckets);
        let stable_q = histogram_quantile(self.quantile, &stable_buckets);
        result.canary = canary_q.is_finite().then_some(canary_q);
        result.stable = stable_q.is_finite().then_some(stable_q);
        if let Some(reason) = thin(min_samples, canary_total, stable_total, "observations") {
            return result.inconclusive(reason);
        }
        if !canary_q.is_finite() || !stable_q.is_finite() {
            return result.error(format!(
                "the latency histogram has too few buckets for a {label}; the filter's histogram needs at least one finite bucket"
            ));
        }
        let threshold = stable_q * (1.0 + self.tolerance) + self.slack_ms;
        result.threshold = Some(threshold);
        let comparison = format!(
            "canary {label} {canary_q:.1} ms vs stable {stable_q:.1} ms (limit {threshold:.1} ms)"
        );
        if exceeds(canary_q, threshold) {
            result.fail(comparison)
        } else {
            result.pass(comparison)
        }
    }
}

impl Judge for BusinessEventGate {
    fn judge(&self, name: &str, min_samples: u64, samples: &Samples) -> GateResult {
        let mut result = GateResult::blank(name);
        let none = Observed::NoData;
        let canary_events = samples.canary.events.get(&self.event).unwrap_or(&none);
        let stable_events = samples.stable.events.get(&self.event).unwrap_or(&none);
        let counted = (|| {
            Ok::<_, String>((
                requests(&samples.canary.requests, "canary")?,
                happenings(canary_events, "canary events")?,
                requests(&samples.stable.requests, "stable")?,
                happenings(stable_events, "stable events")?,
            ))
        })();
        let (canary_requests, canary_count, stable_requests, stable_count) = match counted {
            Ok(counts) => counts,
            Err(reason) => return result.error(reason),
        };
        result.canary_samples = canary_requests;
        result.stable_samples = stable_requests;
        let canary_rate = rate(canary_count, canary_requests);
        let stable_rate = rate(stable_count, stable_requests);
        result.canary = canary_rate;
        result.stable = stable_rate;
        if let Some(reason) = thin(min_samples, canary_requests, stable_requests, "requests") {
            return result.inconclusive(reason);
        }
        let (Some(canary_rate), Some(stable_rate)) = (canary_rate, stable_rate) else {
            return result.inconclusive("no requests".to_owned());
        };
        let threshold = stable_rate * (1.0 - self.max_drop);
        result.threshold = Some(threshold);
        let comparison = format!(
            "canary {event} per request {canary_rate:.4} vs stable {stable_rate:.4} (floor {threshold:.4})",
            event = self.event
        );
        if exceeds(threshold, canary_rate) {
            result.fail(comparison)
        } else {
            result.pass(comparison)
        }
    }
}

impl Judge for CustomGate {
    fn judge(&self, name: &str, min_samples: u64, samples: &Samples) -> GateResult {
        let mut result = GateResult::blank(name);
        let none = Observed::NoData;
        let counted = (|| {
            Ok::<_, String>((
                requests(&samples.canary.requests, "canary")?,
                requests(&samples.stable.requests, "stable")?,
            ))
        })();
        let (canary_requests, stable_requests) = match counted {
            Ok(counts) => counts,
            Err(reason) => return result.error(reason),
        };
        result.canary_samples = canary_requests;
        result.stable_samples = stable_requests;
        if let Observed::Value(stable) = samples.stable.custom.get(name).unwrap_or(&none) {
            result.stable = stable.is_finite().then_some(*stable);
        }
        // An infinite value is a number to judge (a ratio over zero successes is a canary
        // failing every request); only NaN is none. Status stores finite numbers alone.
        let canary = match samples.canary.custom.get(name).unwrap_or(&none) {
            Observed::Failed(reason) => return result.error(format!("query failed: {reason}")),
            Observed::NoData => None,
            Observed::Value(value) => (!value.is_nan()).then_some(*value),
        };
        result.canary = canary.filter(|value| value.is_finite());
        if let Some(reason) = thin(min_samples, canary_requests, stable_requests, "requests") {
            return result.inconclusive(reason);
        }
        let Some(value) = canary else {
            return result.inconclusive("the query returned no number for the canary".to_owned());
        };
        let bounds = match (self.min, self.max) {
            (Some(min), Some(max)) => format!("[{min}, {max}]"),
            (Some(min), None) => format!(">= {min}"),
            (None, Some(max)) => format!("<= {max}"),
            (None, None) => "any value".to_owned(),
        };
        if let Some(min) = self.min.filter(|&min| exceeds(min, value)) {
            result.threshold = Some(min);
            return result.fail(format!("canary {value} is below {bounds}"));
        }
        if let Some(max) = self.max.filter(|&max| exceeds(value, max)) {
            result.threshold = Some(max);
            return result.fail(format!("canary {value} is above {bounds}"));
        }
        result.threshold = self.max.or(self.min);
        result.pass(format!("canary {value} is within {bounds}"))
    }
}

impl GateResult {
    /// An Inconclusive result of gate `name` with nothing measured yet.
    pub fn blank(name: &str) -> Self {
        GateResult {
            gate: name.to_owned(),
            verdict: Verdict::Inconclusive,
            canary: None,
            stable: None,
            threshold: None,
            canary_samples: 0.0,
            stable_samples: 0.0,
            reason: String::new(),
            sequential: None,
        }
    }

    fn with(mut self, verdict: Verdict, reason: String) -> Self {
        self.verdict = verdict;
        self.reason = reason;
        self
    }

    fn pass(self, reason: String) -> Self {
        self.with(Verdict::Pass, reason)
    }

    fn fail(self, reason: String) -> Self {
        self.with(Verdict::Fail, reason)
    }

    fn inconclusive(self, reason: String) -> Self {
        self.with(Verdict::Inconclusive, reason)
    }

    fn error(self, reason: String) -> Self {
        self.with(Verdict::Error, reason)
    }
}

/// A request count: no data is no traffic; negative or NaN (a broken source) counts as none.
pub(crate) fn requests(observed: &Observed<f64>, who: &str) -> Result<f64, String> {
    match observed {
        Observed::Value(count) if *count > 0.0 => Ok(*count),
        Observed::Value(_) | Observed::NoData => Ok(0.0),
        Observed::Failed(reason) => Err(format!("{who} request query failed: {reason}")),
    }
}

/// A count of things that happen (errors, events): no series means none happened.
pub(crate) fn happenings(observed: &Observed<f64>, what: &str) -> Result<f64, String> {
    match observed {
        Observed::Value(count) if *count > 0.0 => Ok(*count),
        Observed::Value(_) | Observed::NoData => Ok(0.0),
        Observed::Failed(reason) => Err(format!("{what} query failed: {reason}")),
    }
}

pub(crate) fn histogram(
    observed: &Observed<Vec<Bucket>>,
    who: &str,
) -> Result<Vec<Bucket>, String> {
    match observed {
        Observed::Value(buckets) => {
            if !buckets.is_empty() && !buckets.iter().any(|b| b.le == f64::INFINITY) {
                return Err(format!(
                    "the {who} latency histogram has no +Inf bucket; check the metric source"
                ));
            }
            Ok(buckets.clone())
        }
        Observed::NoData => Ok(Vec::new()),
        Observed::Failed(reason) => Err(format!("{who} latency query failed: {reason}")),
    }
}

/// Observations in a histogram: its `+Inf` bucket.
fn observations(buckets: &[Bucket]) -> f64 {
    buckets
        .iter()
        .filter(|b| b.le == f64::INFINITY)
        .map(|b| b.count)
        .fold(0.0, f64::max)
}

/// Why the data is too thin, if it is.
fn thin(min_samples: u64, canary: f64, stable: f64, unit: &str) -> Option<String> {
    // Sample minimums are small integers; the conversion is exact.
    let min = min_samples as f64;
    let short: Vec<String> = [("canary", canary), ("stable", stable)]
        .into_iter()
        .filter(|(_, count)| *count < min)
        .map(|(who, count)| format!("{who} has {count:.0} of {min_samples} {unit} needed"))
        .collect();
    (!short.is_empty()).then(|| short.join(", "))
}

/// `part / whole` clamped to `[0, 1]` (separately extrapolated counters can overshoot).
fn share(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| (part / whole).clamp(0.0, 1.0))
}

/// `count / requests`, unclamped (a request may carry several events).
fn rate(count: f64, requests: f64) -> Option<f64> {
    (requests > 0.0).then(|| count / requests)
}

/// `value > limit`, ignoring float rounding noise so a value exactly at its limit passes.
fn exceeds(value: f64, limit: f64) -> bool {
    if limit.is_infinite() {
        // The tolerance of an infinite limit is NaN, which nothing exceeds.
        return value > limit;
    }
    value > limit + 1e-9 * limit.abs().max(1.0)
}

/// The `q` quantile of a cumulative histogram, as PromQL's `histogram_quantile` computes it:
/// buckets sorted by bound, equal bounds merged, counts forced monotonic, linear interpolation
/// inside the bucket holding rank `q × total` (the first bucket starts at 0), and the highest
/// finite bound when the rank falls in the `+Inf` bucket. NaN without a `+Inf` bucket, with fewer
/// than two buckets, or with no observations.
pub fn histogram_quantile(q: f64, buckets: &[Bucket]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut sorted: Vec<Bucket> = buckets.iter().copied().filter(|b| !b.le.is_nan()).collect();
    sorted.sort_by(|a, b| a.le.total_cmp(&b.le));
    let mut merged: Vec<Bucket> = Vec::with_capacity(sorted.len());
    for bucket in sorted {
        match merged.last_mut() {
            Some(last) if last.le == bucket.le => last.count += bucket.count,
            _ => merged.push(bucket),
        }
    }
    let mut running_max = f64::NEG_INFINITY;
    for bucket in &mut merged {
        running_max = running_max.max(bucket.count);
        bucket.count = running_max;
    }
    let (Some(last), true) = (merged.last(), merged.len() >= 2) else {
        return f64::NAN;
    };
    if last.le != f64::INFINITY {
        return f64::NAN;
    }
    let total = last.count;
    if total.is_nan() || total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let finite = &merged[..merged.len() - 1];
    let Some(index) = finite.iter().position(|b| b.count >= rank) else {
        // The rank is in the +Inf bucket: the best answer is the highest finite bound.
        return finite.last().map_or(f64::NAN, |b| b.le);
    };
    let end = finite[index].le;
    if index == 0 && end <= 0.0 {
        return end;
    }
    let (start, below) = match index.checked_sub(1).and_then(|i| finite.get(i)) {
        Some(previous) => (previous.le, previous.count),
        None => (0.0, 0.0),
    };
    let in_bucket = finite[index].count - below;
    if in_bucket <= 0.0 {
        return start;
    }
    start + (end - start) * ((rank - below) / in_bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    fn buckets(pairs: &[(f64, f64)]) -> Vec<Bucket> {
        pairs
            .iter()
            .map(|&(le, count)| Bucket { le, count })
            .collect()
    }

    fn traffic(requests: f64, errors: f64) -> VersionSamples {
        VersionSamples {
            requests: Observed::Value(requests),
            server_errors: Observed::Value(errors),
            ..VersionSamples::default()
        }
    }

    fn samples(canary: VersionSamples, stable: VersionSamples) -> Samples {
        Samples { canary, stable }
    }

    fn error_rate(max_increase: f64, max_rate: Option<f64>) -> GateCheck {
        GateCheck::ErrorRate(ErrorRateGate {
            max_increase,
            max_rate,
        })
    }

    fn judge(check: &GateCheck, min_samples: u64, samples: &Samples) -> GateResult {
        check.judge("gate", min_samples, samples)
    }

    #[test]
    fn histogram_quantile_matches_promql() {
        // (q, buckets, expected); expected NaN is written as f64::NAN.
        let standard = [
            (10.0, 50.0),
            (20.0, 80.0),
            (50.0, 95.0),
            (100.0, 100.0),
            (INF, 100.0),
        ];
        type Row = (f64, Vec<(f64, f64)>, f64);
        let table: Vec<Row> = vec![
            (0.5, standard.to_vec(), 10.0),
            (0.25, standard.to_vec(), 5.0),
            (0.8, standard.to_vec(), 20.0),
            (0.9, standard.to_vec(), 40.0),
            (0.99, standard.to_vec(), 90.0),
            (1.0, standard.to_vec(), 100.0),
            (0.0, standard.to_vec(), 0.0),
            // Rank in the +Inf bucket: the highest finite bound.
            (0.99, vec![(10.0, 50.0), (20.0, 90.0), (INF, 100.0)], 20.0),
            // Unsorted input and duplicated bounds (two series summed) are handled.
            (0.5, vec![(INF, 100.0), (20.0, 80.0), (10.0, 50.0)], 10.0),
            (
                0.5,
                vec![(10.0, 25.0), (10.0, 25.0), (20.0, 80.0), (INF, 100.0)],
                10.0,
            ),
            // Non-monotonic counts are forced monotonic.
            (0.5, vec![(10.0, 50.0), (20.0, 40.0), (INF, 100.0)], 10.0),
            // A first bucket with a non-positive bound answers its bound.
            (0.1, vec![(0.0, 20.0), (10.0, 50.0), (INF, 100.0)], 0.0),
            // NaN: no +Inf bucket, a single bucket, no observations.
            (0.5, vec![(10.0, 50.0), (20.0, 100.0)], f64::NAN),
            (0.5, vec![(INF, 100.0)], f64::NAN),
            (0.5, vec![(10.0, 0.0), (INF, 0.0)], f64::NAN),
            (0.5, vec![], f64::NAN),
            // Out-of-range quantiles.
            (-0.1, standard.to_vec(), f64::NEG_INFINITY),
            (1.1, standard.to_vec(), INF),
            (f64::NAN, standard.to_vec(), f64::NAN),
        ];
        for (q, pairs, expected) in table {
            let got = histogram_quantile(q, &buckets(&pairs));
            let same = (got.is_nan() && expected.is_nan())
                || got == expected
                || (got - expected).abs() < 1e-9;
            assert!(
                same,
                "q={q} buckets={pairs:?}: got {got}, expected {expected}"
            );
        }
    }

    #[test]
    fn error_rate_gate() {
        // (max_increase, max_rate, canary (requests, errors), stable (requests, errors), verdict)
        type Traffic = (f64, f64);
        let table: &[(f64, Option<f64>, Traffic, Traffic, Verdict)] = &[
            (0.01, None, (1000.0, 0.0), (1000.0, 0.0), Verdict::Pass),
            (0.01, None, (1000.0, 10.0), (1000.0, 0.0), Verdict::Pass), // exactly at the limit
            (0.01, None, (1000.0, 11.0), (1000.0, 0.0), Verdict::Fail), // just above
            (0.01, None, (1000.0, 30.0), (1000.0, 20.0), Verdict::Pass), // 3% vs 2% + 1
            (0.01, None, (1000.0, 31.0), (1000.0, 20.0), Verdict::Fail),
            (0.0, None, (1000.0, 1.0), (1000.0, 0.0), Verdict::Fail), // no increase allowed
            (0.0, None, (1000.0, 5.0), (2000.0, 10.0), Verdict::Pass), // equal rates
            (
                0.1,
                Some(0.05),
                (1000.0, 60.0),
                (1000.0, 20.0),
                Verdict::Fail,
            ), // absolute cap
            (
                0.1,
                Some(0.05),
                (1000.0, 50.0),
                (1000.0, 20.0),
                Verdict::Pass,
            ),
            (0.01, None, (100.0, 100.0), (100.0, 100.0), Verdict::Pass), // both all-5xx
            (0.01, None, (100.0, 150.0), (100.0, 0.0), Verdict::Fail),   // overshoot clamps to 100%
            // Thin data: Inconclusive however bad the canary looks.
            (
                0.01,
                None,
                (99.0, 99.0),
                (1000.0, 0.0),
                Verdict::Inconclusive,
            ),
            (
                0.01,
                None,
                (1000.0, 500.0),
                (99.0, 0.0),
                Verdict::Inconclusive,
            ),
            (0.01, None, (0.0, 0.0), (0.0, 0.0), Verdict::Inconclusive),
            (0.01, None, (100.0, 0.0), (100.0, 0.0), Verdict::Pass), // exactly the minimum
            (0.01, None, (100.0, 5.0), (100.0, 0.0), Verdict::Fail),
        ];
        for &(max_increase, max_rate, canary, stable, verdict) in table {
            let gate = error_rate(max_increase, max_rate);
            let s = samples(traffic(canary.0, canary.1), traffic(stable.0, stable.1));
            let result = judge(&gate, 100, &s);
            assert_eq!(
                result.verdict, verdict,
                "maxIncrease={max_increase} maxRate={max_rate:?} canary={canary:?} stable={stable:?}: {}",
                result.reason
            );
        }
    }

    #[test]
    fn error_rate_reports_its_numbers() {
        let s = samples(traffic(1000.0, 31.0), traffic(2000.0, 40.0));
        let result = judge(&error_rate(0.01, None), 100, &s);
        assert_eq!(result.verdict, Verdict::Fail);
        assert_eq!(result.canary, Some(0.031));
        assert_eq!(result.stable, Some(0.02));
        assert_eq!(result.threshold, Some(0.03));
        assert_eq!(
            (result.canary_samples, result.stable_samples),
            (1000.0, 2000.0)
        );
        assert_eq!(
            result.reason,
            "canary 5xx rate 3.10% vs stable 2.00% (limit 3.00%)"
        );
    }

    #[test]
    fn missing_and_failed_observations() {
        let gate = error_rate(0.01, None);
        // No 5xx series means no 5xx: the canary passes.
        let no_error_series = samples(
            VersionSamples {
                requests: Observed::Value(500.0),
                ..VersionSamples::default()
            },
            traffic(500.0, 0.0),
        );
        assert_eq!(judge(&gate, 100, &no_error_series).verdict, Verdict::Pass);
        // No request series means no traffic: inconclusive.
        let no_traffic = samples(VersionSamples::default(), traffic(500.0, 0.0));
        let result = judge(&gate, 100, &no_traffic);
        assert_eq!(result.verdict, Verdict::Inconclusive);
        assert_eq!(result.reason, "canary has 0 of 100 requests needed");
        // A failed query is an Error, even with thin data.
        let failed = samples(
            VersionSamples {
                requests: Observed::Value(5.0),
                server_errors: Observed::Failed("timeout".into()),
                ..VersionSamples::default()
            },
            traffic(500.0, 0.0),
        );
        let result = judge(&gate, 100, &failed);
        assert_eq!(result.verdict, Verdict::Error);
        assert_eq!(result.reason, "canary 5xx query failed: timeout");
        let failed_requests = samples(
            traffic(500.0, 0.0),
            VersionSamples {
                requests: Observed::Failed("503 from Prometheus".into()),
                ..VersionSamples::default()
            },
        );
        assert_eq!(judge(&gate, 100, &failed_requests).verdict, Verdict::Error);
        // Negative or NaN counts from a broken source count as nothing.
        let broken = samples(traffic(-5.0, 0.0), traffic(f64::NAN, 0.0));
        assert_eq!(judge(&gate, 1, &broken).verdict, Verdict::Inconclusive);
    }

    fn latency(quantile: f64, tolerance: f64, slack_ms: f64) -> GateCheck {
        GateCheck::Latency(LatencyGate {
            quantile,
            tolerance,
            slack_ms,
        })
    }

    /// A histogram with `total` observations, all in the bucket ending at `ms` (bounds 10, 20,
    /// 50, 100, 200, 500, +Inf): its quantiles interpolate inside that bucket.
    fn latency_at(ms: f64, total: f64) -> VersionSamples {
        let bounds = [10.0, 20.0, 50.0, 100.0, 200.0, 500.0, INF];
        let histogram = bounds
            .iter()
            .map(|&le| Bucket {
                le,
                count: if le >= ms { total } else { 0.0 },
            })
            .collect();
        VersionSamples {
            requests: Observed::Value(total),
            latency_ms: Observed::Value(histogram),
            ..VersionSamples::default()
        }
    }

    #[test]
    fn latency_gate() {
        // p50 of "everything in the bucket (a, b]" is a + (b - a) / 2.
        // Bucket medians: (0,10] → 5, (10,20] → 15, (20,50] → 35, (50,100] → 75, (100,200] → 150.
        // (quantile, tolerance, slack, canary bucket, stable bucket, verdict)
        let table: &[(f64, f64, f64, f64, f64, Verdict)] = &[
            (0.5, 0.2, 0.0, 20.0, 20.0, Verdict::Pass),     // 15 vs 15
            (0.5, 0.2, 0.0, 50.0, 20.0, Verdict::Fail),     // 35 > 18
            (0.5, 0.2, 20.0, 50.0, 20.0, Verdict::Pass),    // 35 <= 38
            (0.5, 0.2, 3.0, 20.0, 10.0, Verdict::Fail), // 15 > 5*1.2+3 (stable p50 in (0,10] is 5)
            (0.5, 0.0, 0.0, 100.0, 50.0, Verdict::Fail), // 75 > 35
            (0.5, 1.2, 0.0, 100.0, 50.0, Verdict::Pass), // 75 <= 77
            (0.5, 1.0, 5.0, 100.0, 50.0, Verdict::Pass), // 75 <= 75: exactly at the limit
            (0.5, 1.0, 4.9, 100.0, 50.0, Verdict::Fail), // 75 > 74.9
            (0.5, 0.2, 0.0, 10.0, 200.0, Verdict::Pass), // faster canary
            (0.99, 0.2, 10.0, 200.0, 100.0, Verdict::Fail), // p99 199 > 99*1.2+10
        ];
        for &(quantile, tolerance, slack, canary_ms, stable_ms, verdict) in table {
            let gate = latency(quantile, tolerance, slack);
            let s = samples(latency_at(canary_ms, 500.0), latency_at(stable_ms, 500.0));
            let result = judge(&gate, 100, &s);
            assert_eq!(
                result.verdict, verdict,
                "q={quantile} tol={tolerance} slack={slack} canary≤{canary_ms} stable≤{stable_ms}: {}",
                result.reason
            );
        }
    }

    #[test]
    fn latency_gate_numbers_and_thin_data() {
        let gate = latency(0.5, 0.2, 10.0);
        let s = samples(latency_at(50.0, 500.0), latency_at(20.0, 500.0));
        let result = judge(&gate, 100, &s);
        assert_eq!(result.verdict, Verdict::Fail);
        assert_eq!((result.canary, result.stable), (Some(35.0), Some(15.0)));
        assert_eq!(result.threshold, Some(28.0));
        assert_eq!(
            result.reason,
            "canary p50 35.0 ms vs stable 15.0 ms (limit 28.0 ms)"
        );
        // Samples come from the histogram, not the request counter.
        let thin = samples(latency_at(500.0, 99.0), latency_at(20.0, 500.0));
        let result = judge(&gate, 100, &thin);
        assert_eq!(result.verdict, Verdict::Inconclusive);
        assert_eq!(result.reason, "canary has 99 of 100 observations needed");
        let empty = samples(VersionSamples::default(), latency_at(20.0, 500.0));
        assert_eq!(judge(&gate, 100, &empty).verdict, Verdict::Inconclusive);
        let failed = samples(
            VersionSamples {
                latency_ms: Observed::Failed("bad gateway".into()),
                ..VersionSamples::default()
            },
            latency_at(20.0, 500.0),
        );
        assert_eq!(judge(&gate, 100, &failed).verdict, Verdict::Error);
        let no_inf = samples(
            VersionSamples {
                latency_ms: Observed::Value(buckets(&[(10.0, 500.0), (20.0, 500.0)])),
                ..VersionSamples::default()
            },
            latency_at(20.0, 500.0),
        );
        let result = judge(&gate, 100, &no_inf);
        assert_eq!(result.verdict, Verdict::Error);
        assert!(
            result.reason.contains("no +Inf bucket"),
            "{}",
            result.reason
        );
        let only_inf = samples(
            VersionSamples {
                latency_ms: Observed::Value(buckets(&[(INF, 500.0)])),
                ..VersionSamples::default()
            },
            latency_at(20.0, 500.0),
        );
        assert_eq!(judge(&gate, 100, &only_inf).verdict, Verdict::Error);
    }

    fn business(event: &str, max_drop: f64) -> GateCheck {
        GateCheck::BusinessEvent(BusinessEventGate {
            event: event.to_owned(),
            max_drop,
        })
    }

    fn with_events(requests: f64, event: &str, count: Observed<f64>) -> VersionSamples {
        let mut samples = traffic(requests, 0.0);
        samples.events.insert(event.to_owned(), count);
        samples
    }

    #[test]
    fn business_event_gate() {
        use Observed::{Failed, NoData, Value};
        // (max_drop, canary (requests, events), stable (requests, events), verdict)
        type Counts = (f64, Observed<f64>);
        let table: Vec<(f64, Counts, Counts, Verdict)> = vec![
            (
                0.1,
                (1000.0, Value(100.0)),
                (1000.0, Value(100.0)),
                Verdict::Pass,
            ),
            (
                0.1,
                (1000.0, Value(90.0)),
                (1000.0, Value(100.0)),
                Verdict::Pass,
            ), // at the floor
            (
                0.1,
                (1000.0, Value(89.0)),
                (1000.0, Value(100.0)),
                Verdict::Fail,
            ),
            (
                0.1,
                (1000.0, Value(200.0)),
                (1000.0, Value(100.0)),
                Verdict::Pass,
            ), // better
            (
                0.0,
                (1000.0, Value(99.0)),
                (1000.0, Value(100.0)),
                Verdict::Fail,
            ),
            (
                1.0,
                (1000.0, Value(0.0)),
                (1000.0, Value(100.0)),
                Verdict::Pass,
            ), // any drop allowed
            (
                0.1,
                (2000.0, Value(180.0)),
                (1000.0, Value(100.0)),
                Verdict::Pass,
            ), // rates, not counts
            (
                0.1,
                (2000.0, Value(170.0)),
                (1000.0, Value(100.0)),
                Verdict::Fail,
            ),
            // No series for the canary's events: none happened, so the rate is 0.
            (0.1, (1000.0, NoData), (1000.0, Value(100.0)), Verdict::Fail),
            (0.1, (1000.0, NoData), (1000.0, NoData), Verdict::Pass),
            (
                0.1,
                (1000.0, Failed("x".into())),
                (1000.0, Value(100.0)),
                Verdict::Error,
            ),
            (
                0.1,
                (50.0, Value(0.0)),
                (1000.0, Value(100.0)),
                Verdict::Inconclusive,
            ),
        ];
        for (max_drop, canary, stable, verdict) in table {
            let gate = business("checkout", max_drop);
            let s = samples(
                with_events(canary.0, "checkout", canary.1.clone()),
                with_events(stable.0, "checkout", stable.1.clone()),
            );
            let result = judge(&gate, 100, &s);
            assert_eq!(
                result.verdict, verdict,
                "maxDrop={max_drop} canary={canary:?} stable={stable:?}: {}",
                result.reason
            );
        }
        // An event the source did not report at all is treated like no series.
        let s = samples(
            traffic(1000.0, 0.0),
            with_events(1000.0, "checkout", Value(5.0)),
        );
        assert_eq!(
            judge(&business("checkout", 0.5), 100, &s).verdict,
            Verdict::Fail
        );
    }

    fn custom(min: Option<f64>, max: Option<f64>) -> GateCheck {
        GateCheck::Custom(CustomGate {
            query: "sum(rate(x{version=\"{{version}}\"}[{{interval}}]))".to_owned(),
            min,
            max,
        })
    }

    fn with_custom(requests: f64, value: Observed<f64>) -> VersionSamples {
        let mut samples = traffic(requests, 0.0);
        samples.custom.insert("gate".to_owned(), value);
        samples
    }

    #[test]
    fn custom_gate() {
        use Observed::{Failed, NoData, Value};
        // (min, max, canary requests, canary value, verdict)
        type Row = (Option<f64>, Option<f64>, f64, Observed<f64>, Verdict);
        let table: Vec<Row> = vec![
            (Some(0.0), Some(1.0), 1000.0, Value(0.5), Verdict::Pass),
            (Some(0.0), Some(1.0), 1000.0, Value(0.0), Verdict::Pass), // bounds are inclusive
            (Some(0.0), Some(1.0), 1000.0, Value(1.0), Verdict::Pass),
            (Some(0.0), Some(1.0), 1000.0, Value(1.01), Verdict::Fail),
            (Some(0.0), Some(1.0), 1000.0, Value(-0.01), Verdict::Fail),
            (None, Some(10.0), 1000.0, Value(-1e9), Verdict::Pass),
            (Some(10.0), None, 1000.0, Value(1e9), Verdict::Pass),
            (Some(10.0), None, 1000.0, Value(9.0), Verdict::Fail),
            (Some(0.0), Some(1.0), 1000.0, NoData, Verdict::Inconclusive),
            (
                Some(0.0),
                Some(1.0),
                1000.0,
                Value(f64::NAN),
                Verdict::Inconclusive,
            ),
            // errors / successes when every canary request fails
            (
                None,
                Some(0.05),
                1000.0,
                Value(f64::INFINITY),
                Verdict::Fail,
            ),
            (
                Some(0.0),
                None,
                1000.0,
                Value(f64::NEG_INFINITY),
                Verdict::Fail,
            ),
            (Some(0.0), None, 1000.0, Value(f64::INFINITY), Verdict::Pass),
            (
                Some(0.0),
                Some(1.0),
                1000.0,
                Failed("parse error".into()),
                Verdict::Error,
            ),
            (
                Some(0.0),
                Some(1.0),
                10.0,
                Value(5.0),
                Verdict::Inconclusive,
            ), // thin data
        ];
        for (min, max, requests, value, verdict) in table {
            let gate = custom(min, max);
            let s = samples(
                with_custom(requests, value.clone()),
                with_custom(1000.0, Value(0.3)),
            );
            let result = judge(&gate, 100, &s);
            assert_eq!(
                result.verdict, verdict,
                "min={min:?} max={max:?} requests={requests} value={value:?}: {}",
                result.reason
            );
            assert_eq!(result.stable, Some(0.3));
        }
        let s = samples(with_custom(1000.0, Value(2.0)), traffic(1000.0, 0.0));
        let result = judge(&custom(Some(0.0), Some(1.0)), 100, &s);
        assert_eq!(result.threshold, Some(1.0));
        assert_eq!(result.reason, "canary 2 is above [0, 1]");
    }

    #[test]
    fn combining_verdicts() {
        use Verdict::{Error, Fail, Inconclusive, Pass};
        let table: &[(&[Verdict], Verdict)] = &[
            (&[], Pass),
            (&[Pass], Pass),
            (&[Pass, Pass, Pass], Pass),
            (&[Pass, Inconclusive], Inconclusive),
            (&[Inconclusive, Pass], Inconclusive),
            (&[Pass, Error, Inconclusive], Error),
            (&[Inconclusive, Error], Error),
            (&[Error, Fail], Fail),
            (&[Fail, Error, Inconclusive, Pass], Fail),
            (&[Pass, Pass, Fail], Fail),
            (&[Error], Error),
            (&[Inconclusive], Inconclusive),
        ];
        for (verdicts, expected) in table {
            assert_eq!(combine(verdicts.iter().copied()), *expected, "{verdicts:?}");
        }
    }

    #[test]
    fn evaluate_names_gates_and_applies_sample_minimums() {
        let gates = vec![
            GateSpec::new(error_rate(0.01, None)),
            GateSpec {
                name: Some("p50".into()),
                min_samples: Some(10),
                check: latency(0.5, 0.2, 10.0),
            },
            GateSpec::new(business("checkout", 0.1)),
        ];
        let mut canary = latency_at(20.0, 50.0);
        canary
            .events
            .insert("checkout".into(), Observed::Value(5.0));
        let mut stable = latency_at(20.0, 5000.0);
        stable
            .events
            .insert("checkout".into(), Observed::Value(500.0));
        let evaluation = evaluate(&gates, 100, &samples(canary, stable));
        let summary: Vec<(&str, Verdict)> = evaluation
            .results
            .iter()
            .map(|r| (r.gate.as_str(), r.verdict))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("error-rate", Verdict::Inconclusive),
                ("p50", Verdict::Pass), // its own minimum of 10 is met by 50
                ("event-checkout", Verdict::Inconclusive),
            ]
        );
        assert_eq!(evaluation.verdict, Verdict::Inconclusive);
        assert_eq!(
            evaluation.summary(),
            "error-rate: canary has 50 of 100 requests needed; \
             event-checkout: canary has 50 of 100 requests needed"
        );
        let none = evaluate(&[], 100, &Samples::default());
        assert_eq!(none.verdict, Verdict::Pass);
        assert_eq!(none.summary(), "Pass (no gates)");
    }
}
