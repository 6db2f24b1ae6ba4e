//! What the lab saw, on one clock (seconds since the load started): every response the load
//! generator got, the weight Envoy served, and every controller cycle. The live progress and the
//! report both read it.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cohort_rollout::crd::{GateResult, Phase};

/// Which version answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The stable upstream.
    Stable,
    /// The canary upstream.
    Canary,
}

impl Version {
    /// Both, in display order.
    pub const BOTH: [Version; 2] = [Version::Stable, Version::Canary];

    /// `stable` or `canary`: the upstream's name and the report's series name.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Stable => "stable",
            Version::Canary => "canary",
        }
    }

    fn index(self) -> usize {
        match self {
            Version::Stable => 0,
            Version::Canary => 1,
        }
    }

    /// The version an `x-upstream` value names.
    pub fn from_upstream(name: &str) -> Option<Version> {
        match name {
            "stable" => Some(Version::Stable),
            "canary" => Some(Version::Canary),
            _ => None,
        }
    }
}

/// One response the load generator got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Seconds since the load started, when the response was complete.
    pub at: f64,
    /// Who answered; `None` when Envoy answered itself or the request failed.
    pub version: Option<Version>,
    /// The status code; 0 when no response came.
    pub status: u16,
    /// From sending the request to the end of the response.
    pub latency_ms: f64,
    /// The user (an index into the load generator's users).
    pub user: u32,
    /// The response reported the business event.
    pub event: bool,
}

/// Which responses count as bad, for "time from the first bad response to weight 0".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BadResponse {
    /// None: the canary is healthy.
    Never,
    /// 5xx (or no response at all).
    ServerError,
    /// The canary's answers slower than this many milliseconds.
    SlowerThan(f64),
    /// Every canary answer (the harm, fewer business events, is not visible in one response).
    AnyCanary,
}

impl BadResponse {
    fn is_bad(self, observation: &Observation) -> bool {
        let canary = observation.version == Some(Version::Canary);
        match self {
            BadResponse::Never => false,
            BadResponse::ServerError => observation.status >= 500 || observation.status == 0,
            BadResponse::SlowerThan(ms) => canary && observation.latency_ms > ms,
            BadResponse::AnyCanary => canary,
        }
    }
}

/// One version's responses in one second.
#[derive(Debug, Clone, Default)]
pub struct VersionSecond {
    /// Responses.
    pub requests: u64,
    /// 5xx responses.
    pub server_errors: u64,
    /// Responses reporting the business event.
    pub events: u64,
    /// Each response's latency.
    pub latencies_ms: Vec<f32>,
    /// The users served.
    pub users: HashSet<u32>,
}

/// All responses in one second.
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// By version, in [`Version::BOTH`] order.
    pub versions: [VersionSecond; 2],
    /// Responses no upstream gave (Envoy's own replies, connection failures).
    pub unrouted: u64,
}

impl Second {
    /// One version's part.
    pub fn of(&self, version: Version) -> &VersionSecond {
        &self.versions[version.index()]
    }
}

/// One controller cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    /// Seconds since the load started, when the cycle ended.
    pub at: f64,
    /// The phase after the cycle.
    pub phase: Phase,
    /// The step (0-based) after the cycle.
    pub step_index: Option<u32>,
    /// The weight the controller pushed, in basis points.
    pub weight_bp: u32,
    /// Each gate's result in this cycle.
    pub gates: Vec<GateResult>,
    /// The cycle failed: why (the controller retries).
    pub error: Option<String>,
}

/// The lab's record; shared by the load generator, the controller loop and the display.
#[derive(Debug)]
pub struct Recorder {
    bad: BadResponse,
    inner: Mutex<Record>,
}

/// A snapshot of everything recorded.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Responses by whole second since the start.
    pub seconds: Vec<Second>,
    /// `(seconds, weight_bp)` each time the weight Envoy serves changed.
    pub weights: Vec<(f64, u32)>,
    /// Every controller cycle.
    pub cycles: Vec<Cycle>,
    /// When the first bad response came.
    pub first_bad: Option<f64>,
    /// When the weight first went down (the rollback, as Envoy served it).
    pub weight_dropped: Option<f64>,
    /// When a user got stable after canary, and who: per-user routing allows it only once the
    /// weight goes down.
    pub back_to_stable: Vec<(f64, u32)>,
    /// When the controller began the cycle that lowered the weight (a rollback).
    pub rollback_started: Option<f64>,
    /// The version that last served each user.
    last_version: Vec<Option<Version>>,
}

impl Recorder {
    /// An empty record for `users` users.
    pub fn new(users: u32, bad: BadResponse) -> Recorder {
        Recorder {
            bad,
            inner: Mutex::new(Record {
                last_version: vec![None; users as usize],
                ..Record::default()
            }),
        }
    }

    /// Records one response.
    pub fn observe(&self, observation: Observation) {
        let bad = self.bad.is_bad(&observation);
        let mut record = self.lock();
        if bad && record.first_bad.is_none() {
            record.first_bad = Some(observation.at);
        }
        let second = observation.at.max(0.0) as usize;
        if record.seconds.len() <= second {
            record.seconds.resize_with(second + 1, Second::default);
        }
        let Some(version) = observation.version else {
            record.seconds[second].unrouted += 1;
            return;
        };
        let slot = &mut record.seconds[second].versions[version.index()];
        slot.requests += 1;
        slot.server_errors += u64::from(observation.status >= 500);
        slot.events += u64::from(observation.event);
        slot.latencies_ms.push(observation.latency_ms as f32);
        slot.users.insert(observation.user);
        if let Some(last) = record.last_version.get_mut(observation.user as usize) {
            let back = *last == Some(Version::Canary) && version == Version::Stable;
            *last = Some(version);
            if back {
                record
                    .back_to_stable
                    .push((observation.at, observation.user));
            }
        }
    }

    /// Records the weight Envoy serves, read at `at`.
    pub fn weight(&self, at: f64, weight_bp: u32) {
        let mut record = self.lock();
        let last = record.weights.last().map(|(_, weight)| *weight);
        if last == Some(weight_bp) {
            return;
        }
        if last.is_some_and(|last| weight_bp < last) && record.weight_dropped.is_none() {
            record.weight_dropped = Some(at);
        }
        record.weights.push((at, weight_bp));
    }

    /// Records a controller cycle that began at `started`.
    pub fn cycle(&self, started: f64, cycle: Cycle) {
        let mut record = self.lock();
        let lowered = record
            .cycles
            .last()
            .is_some_and(|last| cycle.weight_bp < last.weight_bp);
        if lowered && record.rollback_started.is_none() {
            record.rollback_started = Some(started);
        }
        record.cycles.push(cycle);
    }

    /// A copy of everything so far.
    pub fn snapshot(&self) -> Record {
        self.lock().clone()
    }

    /// Runs `read` on the record without copying it.
    pub fn read<T>(&self, read: impl FnOnce(&Record) -> T) -> T {
        read(&self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Traffic over a span of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Traffic {
    /// Responses per version, in [`Version::BOTH`] order.
    pub requests: [u64; 2],
    /// Distinct users per version.
    pub users: [usize; 2],
    /// Responses per second, all versions.
    pub per_second: f64,
}

impl Traffic {
    /// The canary's share of users, 0..=1 (`None` without users).
    pub fn canary_user_share(&self) -> Option<f64> {
        let total = self.users[0] + self.users[1];
        (total > 0).then(|| self.users[1] as f64 / total as f64)
    }
}

impl Record {
    /// Responses and users in the whole seconds `[from, to)`.
    pub fn traffic(&self, from: usize, to: usize) -> Traffic {
        let span = self
            .seconds
            .get(from..to.min(self.seconds.len()))
            .unwrap_or(&[]);
        let mut traffic = Traffic::default();
        for version in Version::BOTH {
            let users: HashSet<u32> = span
                .iter()
                .flat_map(|second| second.of(version).users.iter().copied())
                .collect();
            traffic.users[version.index()] = users.len();
            traffic.requests[version.index()] =
                span.iter().map(|second| second.of(version).requests).sum();
        }
        if !span.is_empty() {
            let all: u64 = traffic.requests.iter().sum::<u64>()
                + span.iter().map(|second| second.unrouted).sum::<u64>();
            traffic.per_second = all as f64 / span.len() as f64;
        }
        traffic
    }

    /// Responses in all seconds.
    pub fn total_requests(&self) -> u64 {
        self.seconds
            .iter()
            .map(|s| s.versions.iter().map(|v| v.requests).sum::<u64>() + s.unrouted)
            .sum()
    }

    /// Users who got stable after canary before the rollback began (or at all, without one):
    /// 0 when every user kept their version while the weight only went up.
    pub fn switched_back(&self) -> usize {
        let cutoff = match (self.rollback_started, self.weight_dropped) {
            (Some(started), Some(dropped)) => started.min(dropped),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => f64::INFINITY,
        };
        self.back_to_stable
            .iter()
            .filter(|(at, _)| *at < cutoff)
            .map(|(_, user)| *user)
            .collect::<HashSet<u32>>()
            .len()
    }

    /// Distinct users served.
    pub fn total_users(&self) -> usize {
        self.last_version.iter().filter(|v| v.is_some()).count()
    }

    /// The weight served at `at`, from the recorded changes.
    pub fn weight_at(&self, at: f64) -> Option<u32> {
        self.weights
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map(|(_, weight)| *weight)
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub fn quantile(values: &mut [f32], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f32::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(f64::from(values[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(at: f64, version: Version, user: u32, status: u16) -> Observation {
        Observation {
            at,
            version: Some(version),
            status,
            latency_ms: 5.0,
            user,
            event: false,
        }
    }

    #[test]
    fn seconds_users_and_the_first_bad_response() {
        let recorder = Recorder::new(10, BadResponse::ServerError);
        recorder.observe(response(0.2, Version::Stable, 1, 200));
        recorder.observe(response(0.7, Version::Stable, 2, 200));
        recorder.observe(response(1.5, Version::Canary, 3, 503));
        recorder.observe(response(1.6, Version::Canary, 3, 200));
        let record = recorder.snapshot();
        assert_eq!(record.first_bad, Some(1.5));
        let traffic = record.traffic(0, 2);
        assert_eq!(traffic.requests, [2, 2]);
        assert_eq!(traffic.users, [2, 1]);
        assert_eq!(traffic.per_second, 2.0);
        assert_eq!(traffic.canary_user_share(), Some(1.0 / 3.0));
        assert_eq!(record.seconds[1].of(Version::Canary).server_errors, 1);
        assert_eq!(record.total_users(), 3);
    }

    fn cycle(at: f64, weight_bp: u32) -> Cycle {
        Cycle {
            at,
            phase: Phase::Progressing,
            step_index: None,
            weight_bp,
            gates: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn users_sent_back_to_stable_count_only_before_the_weight_drops() {
        let recorder = Recorder::new(10, BadResponse::Never);
        recorder.weight(0.0, 500);
        recorder.observe(response(0.1, Version::Canary, 1, 200));
        recorder.observe(response(0.2, Version::Stable, 1, 200));
        recorder.weight(1.0, 2500);
        recorder.weight(1.0, 2500);
        recorder.cycle(1.5, cycle(0.2, 2500));
        recorder.cycle(1.8, cycle(2.0, 0));
        recorder.observe(response(1.9, Version::Canary, 2, 200));
        recorder.observe(response(1.95, Version::Stable, 2, 200));
        recorder.weight(2.0, 0);
        recorder.observe(response(2.1, Version::Canary, 3, 200));
        recorder.observe(response(2.2, Version::Stable, 3, 200));
        let record = recorder.snapshot();
        // User 1 before anything went down; users 2 and 3 once the rollback had begun.
        assert_eq!(record.switched_back(), 1);
        assert_eq!(record.rollback_started, Some(1.8));
        assert_eq!(record.weight_dropped, Some(2.0));
        assert_eq!(record.weights.len(), 3);
        assert_eq!(record.weight_at(1.5), Some(2500));
        assert_eq!(record.weight_at(-1.0), None);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut values: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        assert_eq!(quantile(&mut values, 0.99), Some(99.0));
        assert_eq!(quantile(&mut values, 1.0), Some(100.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
