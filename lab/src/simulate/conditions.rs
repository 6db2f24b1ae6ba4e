//! Traffic conditions: how a tick's draw departs from the independent model, one small
//! transformation each, so the gates can be measured where their assumptions break.
//!
//! A condition set is one `--condition` value: a name with `:`-separated parameters, or several
//! joined by `+` (`retry-clusters:3+overdispersed:0.5`). Each applies to both versions unless it
//! says otherwise:
//! - `independent`: today's model, no change: Poisson requests per latency bucket, binomial 5xx.
//! - `retry-clusters:MEAN`: errors come in clusters from one user retrying. Failing user events
//!   arrive as a Poisson count (the version's expected errors ÷ MEAN) and each one adds a
//!   geometric number of failed requests with mean MEAN (at least one), all in the version that
//!   drew them (a user is bucketed into one version). The mean error count is unchanged; its
//!   variance grows by a factor 2·MEAN − 1.
//! - `overdispersed:CV`: each tick, each version's error rate is multiplied by its own
//!   log-normal factor with mean 1 and coefficient of variation CV (bad minutes, noisy
//!   dependencies).
//! - `heavy-user:SHARE:MULT`: one user sends SHARE of all requests with MULT × the error rate
//!   of the version it is on (the base rate, times a regressed canary's factor). Its bucket is drawn once per run, uniform: it is on the canary while the canary's
//!   weight is above that bucket (the filter's buckets are nested as the weight grows), else on
//!   stable. The other users share the rest of the traffic by weight.
//! - `pod-stall:PODS:EVERY:FOR:ADD`: pods stall, in both versions alike. Each pod stalls on
//!   average once every EVERY seconds (a Poisson process checked at each tick's start) for FOR
//!   seconds, and while it stalls its requests take ADD milliseconds longer. The canary runs PODS
//!   pods; stable runs as many as carry the same load per pod (PODS × stable's share ÷ the
//!   canary's, rounded, at least PODS, at most [`MAX_STABLE_PODS`]), re-sized each tick as the
//!   weight moves. Every pod serves an equal share of its version's requests, so both versions
//!   have the same slow share in expectation, the canary's far noisier (with PODS = 4 one stall
//!   slows a quarter of its requests, against 1/76 of stable's at 5%): an A/A condition that a
//!   gate must survive. The rollout family's source also reports each version's counts by Pod
//!   (`VersionSamples::pods`, as Istio's metrics carry Prometheus' `pod` label): the version's
//!   drawn unstalled requests (per latency bucket) are split multinomially among its pods by
//!   their unstalled seconds in the tick, the stalled ones by their stalled seconds, and the 5xx
//!   of each part among the pods by the requests each got of it, so the pods add up to the
//!   version's totals exactly and a stalled pod carries the slow requests. Pods are named by
//!   their index within their version (`0`, `1`, …); a look reports every pod that served in
//!   its window with its counts over the window, a pod removed as stable shrank with the weight
//!   included (as a range query still returns its series). The split draws from a stream
//!   of its own, forked from the run's without advancing it, so every other count is what it
//!   was without pods; the comparison families, which read totals, draw no split. Under
//!   `extrapolated` the per-Pod counts are the exact window counts, not extrapolated (so they
//!   add up to the exact totals, not to the extrapolated ones reported beside them).
//! - `diurnal[:AMPLITUDE]`: the request rate follows a day: × (1 + AMPLITUDE · sin(2π t / 24 h
//!   + φ)), φ uniform per run; AMPLITUDE defaults to 0.5. Both versions alike.
//! - `weight-lag:SECONDS`: a pushed weight reaches the filter SECONDS later (istiod's or the
//!   file watch's propagation), so a step's window begins with the weight before it: the first
//!   SECONDS of traffic after each weight change are split at the old weight.
//! - `extrapolated[:SCRAPE]`: the samples are what Prometheus' `increase()` reports: each
//!   version's counters are scraped every SCRAPE seconds (default 15) at a phase of its own, and
//!   a window's increase is the difference of its first and last scrapes extrapolated to the
//!   window's edges (Prometheus' `extrapolatedRate`), not the exact count. The canary's counters
//!   start at zero with the rollout; stable's have run long before.

use super::{Counts, Rng, BUCKETS};

/// `diurnal`'s amplitude when none is given.
pub const DEFAULT_DIURNAL_AMPLITUDE: f64 = 0.5;
/// `extrapolated`'s scrape interval when none is given (seconds): Istio's and many
/// Prometheus setups' default.
pub const DEFAULT_SCRAPE_S: f64 = 15.0;
/// A day, for `diurnal`.
pub const DAY_S: f64 = 86_400.0;

/// The examples every `--condition` error shows.
pub const EXAMPLES: &str = "independent, retry-clusters:3, overdispersed:0.5, heavy-user:0.05:4, \
     pod-stall:4:600:60:500, diurnal, diurnal:0.8, extrapolated, extrapolated:30, weight-lag:10, or several \
     joined by + (retry-clusters:3+extrapolated)";

/// `pod-stall`: the most pods stable runs, however small the canary's share.
pub const MAX_STABLE_PODS: u32 = 1000;

/// `pod-stall`'s parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodStall {
    /// Canary pods, each serving an equal share of its requests (stable runs
    /// `stable_pods` of them).
    pub pods: u32,
    /// Mean seconds between one pod's stalls.
    pub every_s: f64,
    /// How long a stall lasts, in seconds.
    pub for_s: f64,
    /// Latency a stall adds to each of its pod's requests, in milliseconds.
    pub add_ms: f64,
}

/// One `--condition` value: the conditions it names, composed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conditions {
    /// The value as given (the `condition` of each row).
    pub name: String,
    /// `retry-clusters`: failed requests per failing user event (mean).
    pub retry_cluster_mean: Option<f64>,
    /// `overdispersed`: coefficient of variation of the per-tick error-rate factor.
    pub overdispersion_cv: Option<f64>,
    /// `heavy-user`: (share of all requests, error-rate multiple).
    pub heavy_user: Option<(f64, f64)>,
    /// `pod-stall`.
    pub pod_stall: Option<PodStall>,
    /// `diurnal`: amplitude of the day cycle.
    pub diurnal_amplitude: Option<f64>,
    /// `extrapolated`: scrape interval in seconds.
    pub scrape_s: Option<f64>,
    /// `weight-lag`: seconds a pushed weight takes to reach the filter.
    pub weight_lag_s: Option<f64>,
}

impl Conditions {
    /// The independent model.
    pub fn independent() -> Self {
        Conditions {
            name: "independent".to_owned(),
            ..Conditions::default()
        }
    }

    /// Reads one `--condition` value; the error names the flag and shows examples.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: String| format!("--condition {text:?}: {why}; write e.g. {EXAMPLES}");
        let mut conditions = Conditions {
            name: text.to_owned(),
            ..Conditions::default()
        };
        let mut seen = Vec::new();
        for part in text.split('+') {
            let mut fields = part.split(':');
            let name = fields.next().unwrap_or_default();
            let params: Vec<&str> = fields.collect();
            if seen.contains(&name) {
                return Err(bad(format!("{name} is given twice")));
            }
            seen.push(name);
            let numbers = |wanted: &[&str], optional: usize| -> Result<Vec<f64>, String> {
                let required = wanted.len() - optional;
                if params.len() < required || params.len() > wanted.len() {
                    let form = if wanted.is_empty() {
                        format!("{name} takes no parameters")
                    } else {
                        format!("{name} takes {}", wanted.join(":"))
                    };
                    return Err(bad(form));
                }
                params
                    .iter()
                    .zip(wanted)
                    .map(|(param, what)| {
                        param
                            .parse::<f64>()
                            .ok()
                            .filter(|value| value.is_finite())
                            .ok_or_else(|| {
                                bad(format!("{name}'s {what} {param:?} is not a number"))
                            })
                    })
                    .collect()
            };
            let check = |ok: bool, why: &str| if ok { Ok(()) } else { Err(bad(why.to_owned())) };
            match name {
                "independent" => {
                    numbers(&[], 0)?;
                }
                "retry-clusters" => {
                    let mean = numbers(&["MEAN"], 0)?[0];
                    check(mean >= 1.0, "retry-clusters' MEAN is at least 1")?;
                    conditions.retry_cluster_mean = Some(mean);
                }
                "overdispersed" => {
                    let cv = numbers(&["CV"], 0)?[0];
                    check(cv > 0.0, "overdispersed's CV is above 0")?;
                    conditions.overdispersion_cv = Some(cv);
                }
                "heavy-user" => {
                    let values = numbers(&["SHARE", "MULT"], 0)?;
                    check(
                        values[0] > 0.0 && values[0] < 1.0,
                        "heavy-user's SHARE is a fraction between 0 and 1",
                    )?;
                    check(values[1] >= 0.0, "heavy-user's MULT is at least 0")?;
                    conditions.heavy_user = Some((values[0], values[1]));
                }
                "pod-stall" => {
                    let values = numbers(&["PODS", "EVERY", "FOR", "ADD"], 0)?;
                    check(
                        values[0] >= 1.0 && values[0].fract() == 0.0 && values[0] <= 1000.0,
                        "pod-stall's PODS is a whole number from 1 to 1000",
                    )?;
                    check(
                        values[1] > 0.0 && values[2] > 0.0 && values[3] >= 0.0,
                        "pod-stall's EVERY and FOR are seconds above 0, ADD milliseconds",
                    )?;
                    conditions.pod_stall = Some(PodStall {
                        pods: values[0] as u32,
                        every_s: values[1],
                        for_s: values[2],
                        add_ms: values[3],
                    });
                }
                "diurnal" => {
                    let amplitude = numbers(&["AMPLITUDE"], 1)?
                        .first()
                        .copied()
                        .unwrap_or(DEFAULT_DIURNAL_AMPLITUDE);
                    check(
                        (0.0..1.0).contains(&amplitude),
                        "diurnal's AMPLITUDE is from 0 to below 1",
                    )?;
                    conditions.diurnal_amplitude = Some(amplitude);
                }
                "extrapolated" => {
                    let scrape = numbers(&["SCRAPE"], 1)?
                        .first()
                        .copied()
                        .unwrap_or(DEFAULT_SCRAPE_S);
                    check(scrape >= 1.0, "extrapolated's SCRAPE is at least 1 second")?;
                    conditions.scrape_s = Some(scrape);
                }
                "weight-lag" => {
                    let lag = numbers(&["SECONDS"], 0)?[0];
                    check(lag >= 0.0, "weight-lag's SECONDS is at least 0")?;
                    conditions.weight_lag_s = Some(lag);
                }
                "" => return Err(bad("a condition is empty".to_owned())),
                other => return Err(bad(format!("{other:?} is not a condition"))),
            }
        }
        Ok(conditions)
    }
}

/// One version's requests of one kind in a tick, before the draw.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stream<'a> {
    /// Expected requests in the tick.
    pub requests: f64,
    /// Share of them answered with a 5xx.
    pub error_rate: f64,
    /// Latency bucket probabilities.
    pub buckets: &'a [f64; BUCKETS],
    /// The one unit whose users send all of it (`heavy-user`); `None`: spread evenly over the
    /// version's units.
    pub unit: Option<usize>,
    /// Served by stalled pods (`pod-stall`): split among the pods by their stalled seconds
    /// rather than their unstalled ones.
    pub stalled: bool,
}

/// What one tick should draw, before the conditions.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tick<'a> {
    /// Seconds since the run began, at the tick's start.
    pub start_s: f64,
    /// The tick's length in seconds.
    pub length_s: f64,
    /// Requests per second to both versions together.
    pub rps: f64,
    /// The canary's share of users (0 to 1).
    pub canary_share: f64,
    /// Error rates of each version this tick.
    pub canary_error_rate: f64,
    /// Stable's.
    pub stable_error_rate: f64,
    /// Latency bucket probabilities of each version this tick.
    pub canary_buckets: &'a [f64; BUCKETS],
    /// Stable's.
    pub stable_buckets: &'a [f64; BUCKETS],
    /// The canary's, shifted by a stall (`pod-stall`).
    pub canary_stalled_buckets: &'a [f64; BUCKETS],
    /// Stable's, shifted by a stall.
    pub stable_stalled_buckets: &'a [f64; BUCKETS],
}

/// What a run's conditions remember from tick to tick.
#[derive(Debug, Clone, Default)]
pub(super) struct RunState {
    /// `heavy-user`: the user's bucket in [0, 1).
    pub(super) heavy_position: f64,
    /// `pod-stall`: seconds of stall left per canary pod.
    pub(super) stalls: Vec<f64>,
    /// `pod-stall`: seconds of stall left per stable pod (sized each tick by the weight).
    pub(super) stable_stalls: Vec<f64>,
    /// `diurnal`: the run's phase in the day.
    pub(super) diurnal_phase: f64,
    /// `pod-stall` with pods reported ([`RunState::reporting_pods`]): the stream the split by
    /// Pod draws from, apart from the run's so that its draws change no other count.
    pod_rng: Option<Rng>,
    /// Seconds each (canary, stable) pod was stalled in the last tick.
    pub(super) stalled_s: [Vec<f64>; 2],
    /// The last tick's counts of each (canary, stable) pod, when pods are reported.
    pods: [Vec<Counts>; 2],
    /// [`split_by_pod`]'s scratch space.
    pod_scratch: PodScratch,
}

impl RunState {
    /// Draws the run's fixed parts; draws nothing for conditions not set, so the independent
    /// model keeps its random stream.
    pub fn new(conditions: &Conditions, rng: &mut Rng) -> Self {
        let mut state = RunState::default();
        if conditions.heavy_user.is_some() {
            state.heavy_position = rng.uniform();
        }
        if let Some(stall) = conditions.pod_stall {
            state.stalls = vec![0.0; stall.pods as usize];
        }
        if conditions.diurnal_amplitude.is_some() {
            state.diurnal_phase = rng.uniform() * std::f64::consts::TAU;
        }
        state
    }

    /// The state with each tick's counts also split by Pod under `pod-stall` (else unchanged),
    /// drawn from a stream forked from `rng`'s without advancing it: the run's other draws stay
    /// what they are without the split.
    pub fn reporting_pods(mut self, conditions: &Conditions, rng: &Rng) -> Self {
        if conditions.pod_stall.is_some() {
            let mut peek = rng.clone();
            self.pod_rng = Some(Rng::new(peek.next_u64() ^ POD_STREAM));
        }
        self
    }

    /// The last tick's counts by (canary, stable) pod; empty when pods are not reported.
    pub fn pods(&self) -> (&[Counts], &[Counts]) {
        (&self.pods[0], &self.pods[1])
    }
}

/// Mixed into the seed of the split by Pod, so its stream shares no draws with the run's.
const POD_STREAM: u64 = 0x706F_6473_706C_6974;

impl Conditions {
    /// Draws one tick's counts of (canary, stable) under these conditions, each split over
    /// `units` units (at least 1) of equal shares of the version's users: the `cohort_unit`s a
    /// source with units reports. One unit draws what the total alone always drew.
    pub(super) fn draw(
        &self,
        state: &mut RunState,
        rng: &mut Rng,
        tick: &Tick,
        units: usize,
    ) -> (Vec<Counts>, Vec<Counts>) {
        let units = units.max(1);
        let rps = match self.diurnal_amplitude {
            Some(amplitude) => {
                tick.rps * diurnal_factor(tick.start_s, amplitude, state.diurnal_phase)
            }
            None => tick.rps,
        };
        let mut canary = vec![Stream {
            requests: 0.0,
            error_rate: tick.canary_error_rate,
            buckets: tick.canary_buckets,
            unit: None,
            stalled: false,
        }];
        let mut stable = vec![Stream {
            requests: 0.0,
            error_rate: tick.stable_error_rate,
            buckets: tick.stable_buckets,
            unit: None,
            stalled: false,
        }];
        let light = match self.heavy_user {
            Some((share, multiple)) => {
                let on_canary = heavy_user_on_canary(state.heavy_position, tick.canary_share);
                let (streams, base) = if on_canary {
                    (&mut canary, tick.canary_error_rate)
                } else {
                    (&mut stable, tick.stable_error_rate)
                };
                let buckets = streams[0].buckets;
                streams.push(Stream {
                    requests: rps * share * tick.length_s,
                    error_rate: base * multiple,
                    buckets,
                    unit: Some(heavy_user_unit(state.heavy_position, units)),
                    stalled: false,
                });
                rps * (1.0 - share)
            }
            None => rps,
        };
        canary[0].requests = light * tick.canary_share * tick.length_s;
        stable[0].requests = light * (1.0 - tick.canary_share) * tick.length_s;
        if let Some(cv) = self.overdispersion_cv {
            for streams in [&mut canary, &mut stable] {
                let factor = lognormal_factor(rng, cv);
                for stream in streams.iter_mut() {
                    stream.error_rate *= factor;
                }
            }
        }
        if let Some(stall) = self.pod_stall {
            let [canary_s, stable_s] = &mut state.stalled_s;
            let stalled = advance_stalls(&mut state.stalls, canary_s, rng, &stall, tick.length_s);
            canary = split_stalled(&canary, stalled, tick.canary_stalled_buckets);
            // Pods added as the weight moves start idle; pods removed take their stalls along.
            state
                .stable_stalls
                .resize(stable_pods(stall.pods, tick.canary_share), 0.0);
            let stalled = advance_stalls(
                &mut state.stable_stalls,
                stable_s,
                rng,
                &stall,
                tick.length_s,
            );
            stable = split_stalled(&stable, stalled, tick.stable_stalled_buckets);
        }
        // Each version's counts by unit, and summed by (unstalled, stalled) for the pods.
        let mut draw = |streams: &[Stream]| {
            let mut counts = vec![Counts::default(); units];
            let mut parts = [Counts::default(); 2];
            for stream in streams {
                let part = &mut parts[usize::from(stream.stalled)];
                match stream.unit {
                    Some(unit) => {
                        let drawn = self.draw_stream(rng, stream);
                        part.add(&drawn);
                        counts[unit % units].add(&drawn);
                    }
                    None => {
                        let share = Stream {
                            requests: stream.requests / units as f64,
                            ..*stream
                        };
                        for unit in counts.iter_mut() {
                            let drawn = self.draw_stream(rng, &share);
                            part.add(&drawn);
                            unit.add(&drawn);
                        }
                    }
                }
            }
            (counts, parts)
        };
        // Canary first, as the independent model always drew it.
        let (canary, canary_parts) = draw(&canary);
        let (stable, stable_parts) = draw(&stable);
        if let Some(pod_rng) = &mut state.pod_rng {
            for (v, parts) in [canary_parts, stable_parts].iter().enumerate() {
                split_by_pod(
                    pod_rng,
                    parts,
                    &state.stalled_s[v],
                    tick.length_s,
                    &mut state.pods[v],
                    &mut state.pod_scratch,
                );
            }
        }
        (canary, stable)
    }

    fn draw_stream(&self, rng: &mut Rng, stream: &Stream) -> Counts {
        match self.retry_cluster_mean {
            Some(mean) => {
                let mut counts = Counts::draw(rng, stream.requests, 0.0, stream.buckets);
                counts.errors =
                    retry_cluster_errors(rng, counts.requests(), stream.error_rate, mean);
                counts
            }
            None => Counts::draw(rng, stream.requests, stream.error_rate, stream.buckets),
        }
    }
}

/// `diurnal`: the rate multiple at `t_s` seconds into the run.
pub(super) fn diurnal_factor(t_s: f64, amplitude: f64, phase: f64) -> f64 {
    1.0 + amplitude * (std::f64::consts::TAU * t_s / DAY_S + phase).sin()
}

/// `heavy-user`: whether the user whose bucket is `position` is on the canary at `share`.
pub(super) fn heavy_user_on_canary(position: f64, share: f64) -> bool {
    position < share
}

/// `heavy-user`: the unit of the user whose bucket is `position`, among `units`: from digits
/// of the position the bucket comparison does not read, as the filter takes a user's unit
/// from other bits of the hash than its bucket.
pub(super) fn heavy_user_unit(position: f64, units: usize) -> usize {
    ((position * 1_048_576.0).fract() * units as f64) as usize % units.max(1)
}

/// `overdispersed`: a log-normal factor with mean 1 and coefficient of variation `cv`.
pub(super) fn lognormal_factor(rng: &mut Rng, cv: f64) -> f64 {
    let variance = (1.0 + cv * cv).ln();
    (variance.sqrt() * standard_normal(rng) - variance / 2.0).exp()
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut Rng) -> f64 {
    let u = 1.0 - rng.uniform(); // in (0, 1]: the logarithm stays finite
    let v = rng.uniform();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `retry-clusters`: the 5xx among `requests` when failing user events (expected
/// `requests × error_rate ÷ mean` of them) each fail a geometric number of requests with mean
/// `mean`; never more than `requests`.
pub(super) fn retry_cluster_errors(
    rng: &mut Rng,
    requests: u64,
    error_rate: f64,
    mean: f64,
) -> u64 {
    let rate = error_rate.clamp(0.0, 1.0);
    let events = rng.poisson(requests as f64 * rate / mean);
    let mut errors = 0u64;
    for _ in 0..events {
        errors = errors.saturating_add(geometric(rng, mean));
        if errors >= requests {
            return requests;
        }
    }
    errors
}

/// A geometric count on 1, 2, … with mean `mean` (≥ 1), by inversion.
pub(super) fn geometric(rng: &mut Rng, mean: f64) -> u64 {
    if mean <= 1.0 {
        return 1;
    }
    let stop = 1.0 / mean; // chance each request is the user's last
    let u = 1.0 - rng.uniform();
    // Capped: a cluster of a billion requests is no longer a retry.
    1 + (u.ln() / (1.0 - stop).ln()).floor().clamp(0.0, 1e9) as u64
}

/// `pod-stall`: how many pods stable runs beside the canary's `pods` at `canary_share`: as many
/// as carry the canary's load per pod, at least `pods` and at most [`MAX_STABLE_PODS`].
pub(super) fn stable_pods(pods: u32, canary_share: f64) -> usize {
    let pods = f64::from(pods);
    let same_load = (pods * (1.0 - canary_share) / canary_share).round();
    // A zero share gives infinity, clamped to the most; NaN (no share at all) the least.
    let count = if same_load.is_nan() {
        pods
    } else {
        same_load.clamp(pods, f64::from(MAX_STABLE_PODS).max(pods))
    };
    count as usize
}

/// `pod-stall`: moves every pod's stall on by one tick of `length_s` seconds (a pod not stalled
/// starts one at the tick's start with the chance of a Poisson process at rate 1 / `every_s`),
/// sets `stalled_s` to the seconds of the tick each pod was stalled, and returns the share of
/// the version's requests served stalled in that tick.
pub(super) fn advance_stalls(
    stalls: &mut [f64],
    stalled_s: &mut Vec<f64>,
    rng: &mut Rng,
    stall: &PodStall,
    length_s: f64,
) -> f64 {
    stalled_s.clear();
    if stalls.is_empty() {
        return 0.0;
    }
    let start = 1.0 - (-length_s / stall.every_s).exp();
    let mut all_s = 0.0;
    for left in stalls.iter_mut() {
        if *left <= 0.0 && rng.uniform() < start {
            *left = stall.for_s;
        }
        let this_tick = left.min(length_s).max(0.0);
        all_s += this_tick;
        stalled_s.push(this_tick);
        *left -= this_tick;
    }
    all_s / (length_s * stalls.len() as f64)
}

/// `pod-stall`: scratch space of [`split_by_pod`], kept from tick to tick.
#[derive(Debug, Clone, Default)]
pub(super) struct PodScratch {
    /// Running sums of the pods' shares of the part being split.
    cumulative: Vec<f64>,
    /// Each pod's requests of that part, then those of them not yet given a 5xx.
    requests: Vec<u64>,
    /// The same shares as an alias table.
    alias: Alias,
}

/// `pod-stall`: splits a version's tick, drawn as its `parts` (unstalled, stalled), among its
/// pods into `pods` (one per entry of `stalled_s`, each pod's stalled seconds of the
/// `length_s`-second tick). Every pod serves an equal share of the requests over time, so a
/// pod's share of the unstalled requests is its unstalled seconds over all pods' and of the
/// stalled ones its stalled seconds over all pods'. Each latency bucket is split
/// multinomially by those shares, and each part's 5xx among its requests at random, so the
/// pods add up exactly and no pod has more 5xx than requests.
pub(super) fn split_by_pod(
    rng: &mut Rng,
    parts: &[Counts; 2],
    stalled_s: &[f64],
    length_s: f64,
    pods: &mut Vec<Counts>,
    scratch: &mut PodScratch,
) {
    let count = stalled_s.len();
    pods.clear();
    pods.resize(count, Counts::default());
    let PodScratch {
        cumulative,
        requests,
        alias,
    } = scratch;
    for (stalled, part) in parts.iter().enumerate() {
        let share = |s: f64| {
            if stalled == 1 {
                s
            } else {
                (length_s - s).max(0.0)
            }
        };
        cumulative.clear();
        let mut running = 0.0;
        cumulative.extend(stalled_s.iter().map(|&s| {
            running += share(s);
            running
        }));
        if part.requests() == 0 || running <= 0.0 {
            continue;
        }
        requests.clear();
        requests.resize(count, 0);
        alias.build(cumulative);
        for (b, &total) in part.buckets.iter().enumerate() {
            multinomial(rng, total, cumulative, alias, |pod, got| {
                pods[pod].buckets[b] += got;
                requests[pod] += got;
            });
        }
        let errors = part.errors.min(part.requests());
        if errors < count as u64 {
            // Few 5xx: each picks a request not yet failed, uniformly (a pod by its requests,
            // kept with the share of them still unfailed): the multivariate hypergeometric.
            cumulative.clear();
            let mut running = 0.0;
            cumulative.extend(requests.iter().map(|&r| {
                running += r as f64;
                running
            }));
            let mut left = errors;
            while left > 0 {
                let pod = pick(cumulative, rng.uniform() * running);
                let before = if pod == 0 { 0.0 } else { cumulative[pod - 1] };
                if rng.uniform() * (cumulative[pod] - before) < requests[pod] as f64 {
                    requests[pod] -= 1;
                    pods[pod].errors += 1;
                    left -= 1;
                }
            }
        } else {
            // Many: sequential binomials by requests (the hypergeometric's approximation),
            // kept within what this pod and the ones after it can hold.
            let (mut left, mut requests_left) = (errors, part.requests());
            for (pod, &pod_requests) in pods.iter_mut().zip(requests.iter()) {
                if left == 0 || pod_requests == 0 {
                    continue;
                }
                let drawn = rng.binomial(left, pod_requests as f64 / requests_left as f64);
                let least = left.saturating_sub(requests_left - pod_requests);
                let got = drawn.clamp(least, left.min(pod_requests));
                pod.errors += got;
                left -= got;
                requests_left -= pod_requests;
            }
        }
    }
}

/// Splits `total` among slots whose shares run up as `cumulative` (positive at the end; `alias`
/// built from it), handing `give` each slot's count (only those above 0): one categorical draw
/// per item when there are few per slot (a draw from the alias table costs far less than a
/// binomial's logarithm and power), else sequential binomials, either way an exact
/// multinomial.
fn multinomial(
    rng: &mut Rng,
    total: u64,
    cumulative: &[f64],
    alias: &Alias,
    mut give: impl FnMut(usize, u64),
) {
    let Some(&all) = cumulative.last() else {
        return;
    };
    if total == 0 || all <= 0.0 {
        return;
    }
    if total < ITEMS_PER_SLOT * cumulative.len() as u64 {
        for _ in 0..total {
            give(alias.pick(rng), 1);
        }
        return;
    }
    let mut left = total;
    let mut before = 0.0;
    for (slot, &upto) in cumulative.iter().enumerate() {
        let weight = upto - before;
        let weight_left = all - before;
        before = upto;
        if weight <= 0.0 {
            continue;
        }
        // The last slot with a share takes the rest, whatever rounding left in the weights.
        let last = upto >= all;
        let got = if last || weight >= weight_left {
            left
        } else {
            rng.binomial(left, weight / weight_left)
        };
        if got > 0 {
            give(slot, got);
        }
        left -= got;
        if left == 0 {
            break;
        }
    }
}

/// Up to this many items per slot, [`multinomial`] draws each item's slot.
const ITEMS_PER_SLOT: u64 = 10;

/// Walker's alias table (Vose's construction): a draw among slots of given shares in constant
/// time.
#[derive(Debug, Clone, Default)]
pub(super) struct Alias {
    /// Chance of keeping the slot drawn uniformly, else taking its alias.
    keep: Vec<f64>,
    alias: Vec<usize>,
    /// Construction scratch: slots under and over an average share.
    small: Vec<usize>,
    large: Vec<usize>,
}

impl Alias {
    /// The table of the shares running up as `cumulative` (positive at the end).
    fn build(&mut self, cumulative: &[f64]) {
        let slots = cumulative.len();
        let all = cumulative.last().copied().unwrap_or_default();
        let Alias {
            keep,
            alias,
            small,
            large,
        } = self;
        keep.clear();
        alias.clear();
        small.clear();
        large.clear();
        let mut before = 0.0;
        for (slot, &upto) in cumulative.iter().enumerate() {
            let scaled = (upto - before) * slots as f64 / all;
            before = upto;
            keep.push(scaled);
            alias.push(slot);
            if scaled < 1.0 {
                small.push(slot);
            } else {
                large.push(slot);
            }
        }
        while let (Some(&under), Some(&over)) = (small.last(), large.last()) {
            small.pop();
            large.pop();
            alias[under] = over;
            keep[over] += keep[under] - 1.0;
            if keep[over] < 1.0 {
                small.push(over);
            } else {
                large.push(over);
            }
        }
        // What rounding leaves over is a whole share each.
        for slot in large.drain(..).chain(small.drain(..)) {
            keep[slot] = 1.0;
        }
    }

    /// A slot, drawn by the shares.
    fn pick(&self, rng: &mut Rng) -> usize {
        let at = rng.uniform() * self.keep.len() as f64;
        let slot = (at as usize).min(self.keep.len().saturating_sub(1));
        if at - (slot as f64) < self.keep[slot] {
            slot
        } else {
            self.alias[slot]
        }
    }
}

/// The slot whose share holds `at` (in [0, the last running sum)): the first whose running
/// sum is above it, or the last with a share when rounding puts `at` at the very end.
fn pick(cumulative: &[f64], at: f64) -> usize {
    let slot = cumulative.partition_point(|&upto| upto <= at);
    if slot < cumulative.len() {
        return slot;
    }
    let all = cumulative.last().copied().unwrap_or_default();
    cumulative
        .partition_point(|&upto| upto < all)
        .min(cumulative.len().saturating_sub(1))
}

/// Splits each stream into its unstalled part and a `stalled` share with `stalled_buckets`.
fn split_stalled<'a>(
    streams: &[Stream<'a>],
    stalled: f64,
    stalled_buckets: &'a [f64; BUCKETS],
) -> Vec<Stream<'a>> {
    if stalled <= 0.0 {
        return streams.to_vec();
    }
    streams
        .iter()
        .flat_map(|stream| {
            [
                Stream {
                    requests: stream.requests * (1.0 - stalled),
                    ..*stream
                },
                Stream {
                    requests: stream.requests * stalled,
                    buckets: stalled_buckets,
                    stalled: true,
                    ..*stream
                },
            ]
        })
        .collect()
}

/// `extrapolated`: Prometheus' `increase()` of one counter over the range (`start`, `end`],
/// from its scrapes `(time, value)` inside the range in time order (Prometheus 3's
/// `extrapolatedRate`: the first-to-last difference, extrapolated to each edge when the scrapes
/// reach within 1.1 average intervals of it, else by half an interval, and never to before the
/// counter's zero). `None` with fewer than two scrapes, as Prometheus returns no value.
pub fn prometheus_increase(points: &[(f64, f64)], start: f64, end: f64) -> Option<f64> {
    let (&(first_t, first), &(last_t, last)) = (points.first()?, points.last()?);
    if points.len() < 2 || last_t <= first_t {
        return None;
    }
    let mut increase = last - first;
    // Counter resets (none in simulation, but the rule is Prometheus').
    for pair in points.windows(2) {
        if pair[1].1 < pair[0].1 {
            increase += pair[0].1;
        }
    }
    let sampled = last_t - first_t;
    let average = sampled / (points.len() - 1) as f64;
    let threshold = average * 1.1;
    let mut to_start = first_t - start;
    let mut to_end = end - last_t;
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if increase > 0.0 && first >= 0.0 {
        to_start = to_start.min(sampled * (first / increase));
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    Some(increase * (sampled + to_start + to_end) / sampled)
}
