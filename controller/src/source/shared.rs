//! One query per series kind per cycle for all rollouts, however many there are.
//!
//! The in-cluster controller reconciles each CanaryRollout on its own, so each reconcile asks for
//! one rollout. [`SharedCycle`] remembers every rollout it has been asked about and, when its
//! last answer for a window is older than `freshness`, asks the inner source once for all of
//! them. Reconciles landing within `freshness` of each other share that answer, so the queries
//! per analysis cycle stay at about `interval / freshness` per series kind, independent of the
//! number of rollouts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::evaluate::Samples;
use crate::source::{BoxFuture, MetricSource, SeriesRequest};

/// A rollout not asked about for this many of its windows is forgotten (deleted or settled).
const FORGET_AFTER_WINDOWS: u32 = 4;

/// Shares each answer of `inner` between all rollouts asking within `freshness`.
pub struct SharedCycle<S> {
    inner: S,
    freshness: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Every rollout asked about, by window, with when it last asked.
    known: BTreeMap<Duration, BTreeMap<String, (SeriesRequest, Instant)>>,
    /// The last answer per window and when it was fetched.
    answers: BTreeMap<Duration, (Instant, BTreeMap<String, Samples>)>,
}

impl<S: MetricSource> SharedCycle<S> {
    /// Wraps `inner`; answers younger than `freshness` are reused.
    pub fn new(inner: S, freshness: Duration) -> Self {
        SharedCycle {
            inner,
            freshness,
            state: Mutex::new(State::default()),
        }
    }

    async fn shared_samples(
        &self,
        window: Duration,
        rollouts: &[SeriesRequest],
    ) -> BTreeMap<String, Samples> {
        // Held across the inner query: concurrent reconciles wait for the one query in flight
        // instead of each sending their own.
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let known = state.known.entry(window).or_default();
        for request in rollouts {
            known.insert(request.rollout.clone(), (request.clone(), now));
        }
        let forget_before = now.checked_sub(window.saturating_mul(FORGET_AFTER_WINDOWS));
        known.retain(|_, (_, asked)| forget_before.is_none_or(|limit| *asked >= limit));

        let fresh = state
            .answers
            .get(&window)
            .is_some_and(|(fetched, _)| now.duration_since(*fetched) < self.freshness);
        // A rollout new since the last answer is not in it: it reads as no data (Inconclusive,
        // a hold) until the next refresh, at most `freshness` away. Refreshing for each newcomer
        // would cost one query per rollout when the controller starts.
        if !fresh {
            let all: Vec<SeriesRequest> = state
                .known
                .get(&window)
                .map(|known| known.values().map(|(request, _)| request.clone()).collect())
                .unwrap_or_default();
            let answer = self.inner.samples(window, &all).await;
            state.answers.insert(window, (now, answer));
        }
        let Some((_, answer)) = state.answers.get(&window) else {
            return BTreeMap::new();
        };
        rollouts
            .iter()
            .filter_map(|request| {
                Some((
                    request.rollout.clone(),
                    answer.get(&request.rollout)?.clone(),
                ))
            })
            .collect()
    }
}

impl<S: MetricSource> MetricSource for SharedCycle<S> {
    fn samples<'a>(
        &'a self,
        window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, BTreeMap<String, Samples>> {
        Box::pin(self.shared_samples(window, rollouts))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Counts its calls and answers every requested rollout with an empty sample.
    #[derive(Default)]
    struct CountingSource {
        calls: AtomicUsize,
        largest_batch: AtomicUsize,
    }

    impl MetricSource for Arc<CountingSource> {
        fn samples<'a>(
            &'a self,
            _window: Duration,
            rollouts: &'a [SeriesRequest],
        ) -> BoxFuture<'a, BTreeMap<String, Samples>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest_batch
                .fetch_max(rollouts.len(), Ordering::SeqCst);
            let answer = rollouts
                .iter()
                .map(|r| (r.rollout.clone(), Samples::default()))
                .collect();
            Box::pin(async move { answer })
        }
    }

    fn request(name: &str) -> SeriesRequest {
        SeriesRequest {
            rollout: name.to_owned(),
            namespace: "shop".to_owned(),
            stable_version: "stable".to_owned(),
            canary_version: "canary".to_owned(),
            gates: crate::crd::default_gates(),
        }
    }

    #[tokio::test]
    async fn queries_per_cycle_do_not_grow_with_rollouts() {
        let window = Duration::from_secs(30);
        for rollouts in [10usize, 1_000] {
            let inner = Arc::new(CountingSource::default());
            let shared = SharedCycle::new(inner.clone(), Duration::from_secs(60));
            let requests: Vec<SeriesRequest> =
                (0..rollouts).map(|i| request(&format!("r{i}"))).collect();
            // First cycle: the first rollout's query answers it alone; the rest join the next one.
            for r in &requests {
                shared.samples(window, std::slice::from_ref(r)).await;
            }
            assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "{rollouts} rollouts");
            // After a refresh, one query answers every rollout.
            shared.state.lock().await.answers.clear();
            for r in &requests {
                let answer = shared.samples(window, std::slice::from_ref(r)).await;
                assert!(answer.contains_key(&r.rollout));
            }
            assert_eq!(inner.calls.load(Ordering::SeqCst), 2, "{rollouts} rollouts");
            assert_eq!(inner.largest_batch.load(Ordering::SeqCst), rollouts);
        }
    }

    #[tokio::test]
    async fn stale_answers_are_refreshed_for_everyone() {
        let inner = Arc::new(CountingSource::default());
        let shared = SharedCycle::new(inner.clone(), Duration::ZERO);
        let window = Duration::from_secs(30);
        shared.samples(window, &[request("a")]).await;
        shared.samples(window, &[request("b")]).await;
        let answer = shared.samples(window, &[request("a")]).await;
        assert!(answer.contains_key("a"));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            inner.largest_batch.load(Ordering::SeqCst),
            2,
            "the refresh asks for a and b together"
        );
    }

    #[tokio::test]
    async fn windows_are_kept_apart() {
        let inner = Arc::new(CountingSource::default());
        let shared = SharedCycle::new(inner.clone(), Duration::from_secs(60));
        shared
            .samples(Duration::from_secs(30), &[request("a")])
            .await;
        let answer = shared
            .samples(Duration::from_secs(60), &[request("a")])
            .await;
        assert!(answer.contains_key("a"));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }
}
