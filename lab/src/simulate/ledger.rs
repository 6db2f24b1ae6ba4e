//! A run's traffic as a metric source would see it: per-tick counts kept as running totals, so
//! any window ending now (the last interval, or everything since a step began) is a difference,
//! or, under `extrapolated`, Prometheus' `increase()` over the scrapes in the window.
//!
//! Under `pod-stall` the ledger also keeps each tick's counts by Pod (their number changes with
//! stable's size, so as one flat list with each tick's span in it rather than running totals),
//! and a window's samples carry every pod that served in it with its counts over the window:
//! the exact counts, also under `extrapolated`.

use std::ops::Range;

use cohort_rollout::evaluate::{Bucket, Observed, Samples, UnitSamples, VersionSamples};

use super::conditions::prometheus_increase;
use super::{Counts, Rng, BUCKETS, ENVOY_BUCKETS_MS};

/// Where stable's scraped counters stand when the rollout starts: far from zero (stable served
/// long before), so Prometheus' zero-point rule never shortens its windows. The canary's
/// counters start at zero with the rollout.
const STABLE_ORIGIN: f64 = 1e9;

/// Both versions' running totals, unit by unit.
#[derive(Debug, Clone, PartialEq)]
struct Totals {
    canary: Vec<Counts>,
    stable: Vec<Counts>,
}

/// A run's traffic so far.
#[derive(Debug, Clone)]
pub(super) struct Ledger {
    tick_s: f64,
    /// Totals after each tick; `totals[0]` is the start.
    totals: Vec<Totals>,
    scrapes: Option<Scrapes>,
    /// `pod-stall`: every tick's counts by pod, canary's then stable's, tick after tick.
    pod_counts: Vec<Counts>,
    /// Where each tick's (canary, stable) pods lie in `pod_counts`: `pod_spans[k]` for the
    /// tick that ends at `totals[k + 1]` (empty for ticks recorded without pods).
    pod_spans: Vec<[Range<usize>; 2]>,
    /// The pods' sums over the last window read.
    pod_window: PodWindow,
}

/// Each version's pods summed over a window of ticks, kept to extend to the next look's.
#[derive(Debug, Clone, Default)]
struct PodWindow {
    /// The ticks summed (indices into `pod_spans`).
    ticks: Range<usize>,
    /// (canary, stable) sums by pod.
    sums: [Vec<Counts>; 2],
    /// The pods' names by index, made once.
    names: Vec<String>,
}

/// `extrapolated`: each version's counters at its scrapes.
#[derive(Debug, Clone)]
struct Scrapes {
    every_s: f64,
    /// The next scrape of (canary, stable).
    next_s: [f64; 2],
    /// (time, totals per unit) of each scrape of (canary, stable).
    points: [Vec<(f64, Vec<Counts>)>; 2],
}

impl Ledger {
    /// An empty ledger of `tick_s`-second ticks of `units` units per version; `scrape_s` reads
    /// windows as Prometheus' `increase()` over scrapes that far apart (each version at its own
    /// phase, drawn here; all of a version's units at once, as one scrape reads them).
    pub fn new(tick_s: f64, scrape_s: Option<f64>, units: usize, rng: &mut Rng) -> Self {
        let scrapes = scrape_s.map(|every_s| Scrapes {
            every_s,
            next_s: [rng.uniform() * every_s, rng.uniform() * every_s],
            points: [Vec::new(), Vec::new()],
        });
        let zero = vec![Counts::default(); units.max(1)];
        Ledger {
            tick_s,
            totals: vec![Totals {
                canary: zero.clone(),
                stable: zero,
            }],
            scrapes,
            pod_counts: Vec::new(),
            pod_spans: Vec::new(),
            pod_window: PodWindow::default(),
        }
    }

    /// Seconds recorded.
    pub fn now_s(&self) -> f64 {
        (self.totals.len() - 1) as f64 * self.tick_s
    }

    /// Records the next tick, unit by unit (as many as the ledger was made with). Under
    /// `extrapolated`, the tick's requests are spread uniformly over it (binomial thinning) to
    /// read the counters at the scrapes inside it.
    pub fn record(&mut self, rng: &mut Rng, canary: &[Counts], stable: &[Counts]) {
        let start_s = self.now_s();
        let Some(mut after) = self.totals.last().cloned() else {
            return;
        };
        for (total, tick) in after.canary.iter_mut().zip(canary) {
            total.add(tick);
        }
        for (total, tick) in after.stable.iter_mut().zip(stable) {
            total.add(tick);
        }
        self.totals.push(after);
        let Some(scrapes) = &mut self.scrapes else {
            return;
        };
        let end_s = start_s + self.tick_s;
        let before = &self.totals[self.totals.len() - 2];
        let versions = [(canary, &before.canary), (stable, &before.stable)];
        for (v, (tick, total)) in versions.into_iter().enumerate() {
            let mut left = tick.to_vec();
            let mut total = total.clone();
            let mut cursor = start_s;
            while scrapes.next_s[v] <= end_s {
                let at = scrapes.next_s[v];
                let share = ((at - cursor) / (end_s - cursor)).clamp(0.0, 1.0);
                for (unit_left, unit_total) in left.iter_mut().zip(total.iter_mut()) {
                    let part = unit_left.thin(rng, share);
                    unit_left.subtract(&part);
                    unit_total.add(&part);
                }
                scrapes.points[v].push((at, total.clone()));
                cursor = at;
                scrapes.next_s[v] += scrapes.every_s;
            }
        }
    }

    /// Records the (canary, stable) counts by pod of the tick [`Ledger::record`] recorded last.
    pub fn record_pods(&mut self, (canary, stable): (&[Counts], &[Counts])) {
        let ticks = self.totals.len() - 1;
        let at = self.pod_counts.len();
        self.pod_spans
            .resize(ticks.saturating_sub(1), [at..at, at..at]);
        self.pod_counts.extend_from_slice(canary);
        let middle = self.pod_counts.len();
        self.pod_counts.extend_from_slice(stable);
        self.pod_spans
            .push([at..middle, middle..self.pod_counts.len()]);
    }

    /// The samples of the `window_s` seconds ending now, as the source would report them: each
    /// version's totals, its units when there are several, and its pods when they are recorded.
    pub fn samples(&mut self, window_s: f64) -> Samples {
        let mut samples = self.totals_samples(window_s);
        let ticks = ((window_s / self.tick_s) - 1e-9).ceil().max(1.0) as usize;
        let end = self.totals.len() - 1;
        let recorded = self.pod_spans.len();
        let window = end.saturating_sub(ticks).min(recorded)..end.min(recorded);
        if window.is_empty() {
            return samples;
        }
        self.sum_pods(window);
        for (v, version) in [&mut samples.canary, &mut samples.stable]
            .into_iter()
            .enumerate()
        {
            // A source with no data for the version has none for its pods either.
            if matches!(version.requests, Observed::Value(_)) {
                version.pods = self.pod_window.sums[v]
                    .iter()
                    .zip(&self.pod_window.names)
                    .map(|(counts, name)| {
                        let series = Series::of(counts);
                        UnitSamples {
                            unit: name.clone(),
                            requests: series.requests,
                            server_errors: series.errors,
                            latency_ms: histogram(&series.cumulative),
                        }
                    })
                    .collect();
            }
        }
        samples
    }

    /// Sums each version's pods over the recorded `ticks`: every pod that served in any of them,
    /// as a range query returns every series with samples in the range (a pod removed as stable
    /// shrank included), so the pods add up to the version's counts. A window that starts where
    /// the last one did (everything since a step began, look after look) only adds the ticks
    /// since.
    fn sum_pods(&mut self, ticks: Range<usize>) {
        let cache = &mut self.pod_window;
        let from = if cache.ticks.start == ticks.start && cache.ticks.end <= ticks.end {
            cache.ticks.end
        } else {
            cache.sums.iter_mut().for_each(Vec::clear);
            ticks.start
        };
        for spans in &self.pod_spans[from..ticks.end] {
            for (sums, span) in cache.sums.iter_mut().zip(spans) {
                if sums.len() < span.len() {
                    sums.resize(span.len(), Counts::default());
                }
                for (sum, counts) in sums.iter_mut().zip(&self.pod_counts[span.clone()]) {
                    sum.add(counts);
                }
            }
        }
        let most = cache.sums.iter().map(Vec::len).max().unwrap_or(0);
        while cache.names.len() < most {
            cache.names.push(cache.names.len().to_string());
        }
        cache.ticks = ticks;
    }

    /// Each version's totals and units over the `window_s` seconds ending now.
    fn totals_samples(&self, window_s: f64) -> Samples {
        match &self.scrapes {
            None => {
                let ticks = ((window_s / self.tick_s) - 1e-9).ceil().max(1.0) as usize;
                let end = self.totals.len() - 1;
                let start = end.saturating_sub(ticks);
                let window = |now: &[Counts], then: &[Counts]| -> Vec<Option<Series>> {
                    now.iter()
                        .zip(then)
                        .map(|(now, then)| {
                            let mut counts = *now;
                            counts.subtract(then);
                            Some(Series::of(&counts))
                        })
                        .collect()
                };
                Samples {
                    canary: version_of_units(window(
                        &self.totals[end].canary,
                        &self.totals[start].canary,
                    )),
                    stable: version_of_units(window(
                        &self.totals[end].stable,
                        &self.totals[start].stable,
                    )),
                }
            }
            Some(scrapes) => {
                let end = self.now_s();
                let start = end - window_s;
                let read = |v: usize, origin: f64| {
                    let inside: Vec<&(f64, Vec<Counts>)> = scrapes.points[v]
                        .iter()
                        .filter(|(at, _)| *at > start && *at <= end)
                        .collect();
                    let units = inside.first().map_or(0, |(_, units)| units.len());
                    version_of_units(
                        (0..units)
                            .map(|unit| increase_series(&inside, unit, start, end, origin))
                            .collect(),
                    )
                };
                Samples {
                    canary: read(0, 0.0),
                    stable: read(1, STABLE_ORIGIN),
                }
            }
        }
    }
}

/// One unit's counters over a window: requests, 5xx, and the cumulative histogram
/// (`cumulative[i]` requests at or below bucket `i`'s bound, the last `+Inf`).
#[derive(Debug, Clone, Copy)]
struct Series {
    requests: f64,
    errors: f64,
    cumulative: [f64; BUCKETS],
}

impl Series {
    /// Exact counts.
    fn of(counts: &Counts) -> Self {
        let mut cumulative = [0.0; BUCKETS];
        let mut running = 0;
        for (slot, count) in cumulative.iter_mut().zip(&counts.buckets) {
            running += count;
            *slot = running as f64;
        }
        Series {
            requests: counts.requests() as f64,
            errors: counts.errors as f64,
            cumulative,
        }
    }
}

/// One unit's series from its version's scrapes inside (`start`, `end`]: every counter (the
/// cumulative histogram buckets, the 5xx) through [`prometheus_increase`]. `None` with fewer
/// than two scrapes.
fn increase_series(
    points: &[&(f64, Vec<Counts>)],
    unit: usize,
    start: f64,
    end: f64,
    origin: f64,
) -> Option<Series> {
    let series = |value: &dyn Fn(&Counts) -> f64| -> Option<f64> {
        let values: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|(at, units)| units.get(unit).map(|counts| (*at, origin + value(counts))))
            .collect();
        prometheus_increase(&values, start, end)
    };
    let mut cumulative = [0.0; BUCKETS];
    for (i, slot) in cumulative.iter_mut().enumerate() {
        *slot = series(&|counts: &Counts| counts.buckets[..=i].iter().sum::<u64>() as f64)?;
    }
    let errors = series(&|counts: &Counts| counts.errors as f64).unwrap_or(0.0);
    Some(Series {
        requests: cumulative[BUCKETS - 1],
        errors,
        cumulative,
    })
}

/// What a metric source reports for one version from its units' series: the sums (as
/// `sum by` over the units adds each series' increase), and the units themselves when there
/// are several. No data when a unit has none (fewer than two scrapes in the window).
fn version_of_units(units: Vec<Option<Series>>) -> VersionSamples {
    let Some(units) = units.into_iter().collect::<Option<Vec<Series>>>() else {
        return VersionSamples::default();
    };
    let mut total = Series {
        requests: 0.0,
        errors: 0.0,
        cumulative: [0.0; BUCKETS],
    };
    for unit in &units {
        total.requests += unit.requests;
        total.errors += unit.errors;
        for (sum, count) in total.cumulative.iter_mut().zip(&unit.cumulative) {
            *sum += count;
        }
    }
    let mut samples = version_samples(total.requests, total.errors, &total.cumulative);
    if units.len() > 1 {
        samples.units = units
            .iter()
            .enumerate()
            .map(|(i, unit)| UnitSamples {
                unit: i.to_string(),
                requests: unit.requests,
                server_errors: unit.errors,
                latency_ms: histogram(&unit.cumulative),
            })
            .collect();
    }
    samples
}

/// Envoy's buckets with their cumulative counts.
fn histogram(cumulative: &[f64; BUCKETS]) -> Vec<Bucket> {
    ENVOY_BUCKETS_MS
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(cumulative)
        .map(|(le, count)| Bucket { le, count: *count })
        .collect()
}

/// What a metric source reports for one version: counters and a cumulative histogram
/// (`cumulative[i]` requests at or below bucket `i`'s bound, the last `+Inf`).
pub(super) fn version_samples(
    requests: f64,
    errors: f64,
    cumulative: &[f64; BUCKETS],
) -> VersionSamples {
    VersionSamples {
        requests: Observed::Value(requests),
        server_errors: Observed::Value(errors),
        latency_ms: Observed::Value(histogram(cumulative)),
        // The simulated route serves every request where the filter decided.
        decisions: Observed::Value(requests),
        ..VersionSamples::default()
    }
}
