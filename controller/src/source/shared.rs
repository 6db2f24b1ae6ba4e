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

use crate::source::{BoxFuture, MetricSource, RolloutKey, SamplesByRollout, SeriesRequest};

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
    /// Every rollout asked about (by namespace and name), by window, with when it last asked.
    known: BTreeMap<Duration, BTreeMap<RolloutKey, (SeriesRequest, Instant)>>,
    /// The last answer per window and when it was fetched.
    answers: BTreeMap<Duration, (Instant, SamplesByRollout)>,
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

    /// Drops every kept answer: the next call asks the inner source (tests start a cycle so).
    #[cfg(test)]
    pub(crate) async fn forget_answers(&self) {
        self.state.lock().await.answers.clear();
    }

    async fn shared_samples(
        &self,
        window: Duration,
        rollouts: &[SeriesRequest],
    ) -> SamplesByRollout {
        // Held across the inner query: concurrent reconciles wait for the one query in flight
        // instead of each sending their own.
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let known = state.known.entry(window).or_default();
        for request in rollouts {
            known.insert(request.key(), (request.clone(), now));
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
                let key = request.key();
                let samples = answer.get(&key)?.clone();
                Some((key, samples))
            })
            .collect()
    }
}

impl<S: MetricSource> MetricSource for SharedCycle<S> {
    fn samples<'a>(
        &'a self,
        window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, SamplesByRollout> {
        Box::pin(self.shared_samples(window, rollouts))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use cohort_rollout::evaluate::Samples;

    /// Counts its calls and answers every requested rollout with an empty sample.
    #[derive(Default)]
    struct CountingSource {
        calls: AtomicUsize,
        largest_batch: AtomicUsize,
        last_batch: std::sync::Mutex<Vec<SeriesRequest>>,
    }

    impl MetricSource for Arc<CountingSource> {
        fn samples<'a>(
            &'a self,
            _window: Duration,
            rollouts: &'a [SeriesRequest],
        ) -> BoxFuture<'a, SamplesByRollout> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.largest_batch
                .fetch_max(rollouts.len(), Ordering::SeqCst);
            if let Ok(mut last) = self.last_batch.lock() {
                *last = rollouts.to_vec();
            }
            let answer = rollouts
                .iter()
                .map(|r| (r.key(), Samples::default()))
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
            gates: cohort_rollout::crd::default_gates(),
            served: cohort_rollout::compiled::Served::EnvoyClusters {
                stable: "stable".to_owned(),
                canary: "canary".to_owned(),
            },
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
            shared.forget_answers().await;
            for r in &requests {
                let answer = shared.samples(window, std::slice::from_ref(r)).await;
                assert!(answer.contains_key(&r.key()));
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
        assert!(answer.contains_key(&RolloutKey::new("shop", "a")));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            inner.largest_batch.load(Ordering::SeqCst),
            2,
            "the refresh asks for a and b together"
        );
    }

    /// `shop/checkout` and `billing/checkout` are two rollouts: both are asked for in the next
    /// cycle, and each gets only its own answer.
    #[tokio::test]
    async fn same_named_rollouts_of_two_namespaces_are_two_rollouts() {
        let inner = Arc::new(CountingSource::default());
        let shared = SharedCycle::new(inner.clone(), Duration::from_secs(60));
        let window = Duration::from_secs(30);
        let shop = request("checkout");
        let billing = SeriesRequest {
            namespace: "billing".to_owned(),
            ..request("checkout")
        };
        shared.samples(window, std::slice::from_ref(&shop)).await;
        shared.samples(window, std::slice::from_ref(&billing)).await;
        shared.forget_answers().await;
        let answer = shared.samples(window, std::slice::from_ref(&billing)).await;
        assert_eq!(
            answer.keys().collect::<Vec<_>>(),
            [&RolloutKey::new("billing", "checkout")]
        );
        assert_eq!(inner.largest_batch.load(Ordering::SeqCst), 2);
    }

    /// A rollout on Istio and one on Envoy clusters join one batch, each asked with where its
    /// served metrics are and the service its decisions are tagged with.
    #[tokio::test]
    async fn rollouts_of_both_served_kinds_share_one_query() {
        use cohort_rollout::compiled::Served;
        let inner = Arc::new(CountingSource::default());
        let shared = SharedCycle::new(inner.clone(), Duration::from_secs(60));
        let window = Duration::from_secs(30);
        let on_clusters = request("web");
        let on_istio = SeriesRequest {
            served: Served::Istio {
                namespace: "shop".to_owned(),
                service: "cart-svc".to_owned(),
            },
            ..request("cart")
        };
        shared
            .samples(window, std::slice::from_ref(&on_clusters))
            .await;
        shared
            .samples(window, std::slice::from_ref(&on_istio))
            .await;
        shared.forget_answers().await;
        let answer = shared
            .samples(window, std::slice::from_ref(&on_istio))
            .await;
        assert_eq!(answer.keys().collect::<Vec<_>>(), [&on_istio.key()]);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        let mut batch = inner.last_batch.lock().unwrap().clone();
        batch.sort_by_key(SeriesRequest::key);
        assert_eq!(batch, [on_istio, on_clusters]);
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
        assert!(answer.contains_key(&RolloutKey::new("shop", "a")));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    }
}
