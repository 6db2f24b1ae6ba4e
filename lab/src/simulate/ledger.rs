//! A run's traffic as a metric source would see it: per-tick counts kept as running totals, so
//! any window ending now (the last interval, or everything since a step began) is a difference,
//! or, under `extrapolated`, Prometheus' `increase()` over the scrapes in the window.

use cohort_rollout::evaluate::{Bucket, Observed, Samples, VersionSamples};

use super::conditions::prometheus_increase;
use super::{Counts, Rng, Traffic, BUCKETS, ENVOY_BUCKETS_MS};

/// Where stable's scraped counters stand when the rollout starts: far from zero (stable served
/// long before), so Prometheus' zero-point rule never shortens its windows. The canary's
/// counters start at zero with the rollout.
const STABLE_ORIGIN: f64 = 1e9;

/// A run's traffic so far.
#[derive(Debug, Clone)]
pub(super) struct Ledger {
    tick_s: f64,
    /// Totals after each tick; `totals[0]` is the start.
    totals: Vec<Traffic>,
    scrapes: Option<Scrapes>,
}

/// `extrapolated`: each version's counters at its scrapes.
#[derive(Debug, Clone)]
struct Scrapes {
    every_s: f64,
    /// The next scrape of (canary, stable).
    next_s: [f64; 2],
    /// (time, totals) of each scrape of (canary, stable).
    points: [Vec<(f64, Counts)>; 2],
}

impl Ledger {
    /// An empty ledger of `tick_s`-second ticks; `scrape_s` reads windows as Prometheus'
    /// `increase()` over scrapes that far apart (each version at its own phase, drawn here).
    pub fn new(tick_s: f64, scrape_s: Option<f64>, rng: &mut Rng) -> Self {
        let scrapes = scrape_s.map(|every_s| Scrapes {
            every_s,
            next_s: [rng.uniform() * every_s, rng.uniform() * every_s],
            points: [Vec::new(), Vec::new()],
        });
        Ledger {
            tick_s,
            totals: vec![Traffic::default()],
            scrapes,
        }
    }

    /// Seconds recorded.
    pub fn now_s(&self) -> f64 {
        (self.totals.len() - 1) as f64 * self.tick_s
    }

    /// Records the next tick. Under `extrapolated`, the tick's requests are spread uniformly
    /// over it (binomial thinning) to read the counters at the scrapes inside it.
    pub fn record(&mut self, rng: &mut Rng, canary: &Counts, stable: &Counts) {
        let start_s = self.now_s();
        let before = self.totals.last().copied().unwrap_or_default();
        let mut after = before;
        after.add(canary, stable);
        self.totals.push(after);
        let Some(scrapes) = &mut self.scrapes else {
            return;
        };
        let end_s = start_s + self.tick_s;
        let versions = [(canary, before.canary), (stable, before.stable)];
        for (v, (tick, total)) in versions.into_iter().enumerate() {
            let mut left = *tick;
            let mut total = total;
            let mut cursor = start_s;
            while scrapes.next_s[v] <= end_s {
                let at = scrapes.next_s[v];
                let share = ((at - cursor) / (end_s - cursor)).clamp(0.0, 1.0);
                let part = left.thin(rng, share);
                left.subtract(&part);
                total.add(&part);
                scrapes.points[v].push((at, total));
                cursor = at;
                scrapes.next_s[v] += scrapes.every_s;
            }
        }
    }

    /// The samples of the `window_s` seconds ending now, as the source would report them.
    pub fn samples(&self, window_s: f64) -> Samples {
        match &self.scrapes {
            None => {
                let ticks = ((window_s / self.tick_s) - 1e-9).ceil().max(1.0) as usize;
                let end = self.totals.len() - 1;
                let start = end.saturating_sub(ticks);
                let mut window = self.totals[end];
                window.subtract(&self.totals[start]);
                Samples {
                    canary: window.canary.version_samples(),
                    stable: window.stable.version_samples(),
                }
            }
            Some(scrapes) => {
                let end = self.now_s();
                let start = end - window_s;
                let read = |v: usize, origin: f64| {
                    let inside: Vec<&(f64, Counts)> = scrapes.points[v]
                        .iter()
                        .filter(|(at, _)| *at > start && *at <= end)
                        .collect();
                    increase_samples(&inside, start, end, origin)
                };
                Samples {
                    canary: read(0, 0.0),
                    stable: read(1, STABLE_ORIGIN),
                }
            }
        }
    }
}

/// One version's samples from its scrapes inside (`start`, `end`]: every counter series (the
/// cumulative histogram buckets, the 5xx) through [`prometheus_increase`]. No data with fewer
/// than two scrapes.
fn increase_samples(
    points: &[&(f64, Counts)],
    start: f64,
    end: f64,
    origin: f64,
) -> VersionSamples {
    let series = |value: &dyn Fn(&Counts) -> f64| -> Option<f64> {
        let values: Vec<(f64, f64)> = points
            .iter()
            .map(|(at, counts)| (*at, origin + value(counts)))
            .collect();
        prometheus_increase(&values, start, end)
    };
    let mut cumulative = [0.0; BUCKETS];
    for (i, slot) in cumulative.iter_mut().enumerate() {
        match series(&|counts: &Counts| counts.buckets[..=i].iter().sum::<u64>() as f64) {
            Some(value) => *slot = value,
            None => return VersionSamples::default(),
        }
    }
    let errors = series(&|counts: &Counts| counts.errors as f64).unwrap_or(0.0);
    version_samples(cumulative[BUCKETS - 1], errors, &cumulative)
}

/// What a metric source reports for one version: counters and a cumulative histogram
/// (`cumulative[i]` requests at or below bucket `i`'s bound, the last `+Inf`).
pub(super) fn version_samples(
    requests: f64,
    errors: f64,
    cumulative: &[f64; BUCKETS],
) -> VersionSamples {
    let histogram = ENVOY_BUCKETS_MS
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(cumulative)
        .map(|(le, count)| Bucket { le, count: *count })
        .collect();
    VersionSamples {
        requests: Observed::Value(requests),
        server_errors: Observed::Value(errors),
        latency_ms: Observed::Value(histogram),
        // The simulated route serves every request where the filter decided.
        decisions: Observed::Value(requests),
        ..VersionSamples::default()
    }
}
