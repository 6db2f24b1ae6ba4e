//! On a plain Envoy, what each version **served** is its cluster's upstream stats. A real Envoy
//! routes to a `stable` and a `canary` cluster (real upstreams; canary answers 503), with no
//! filter in front: the route alone picks the cluster, by the `x-cohort-version` header. Both
//! sources must count the requests per cluster as Envoy served them: the admin source by
//! differencing two `/stats/prometheus` scrapes (exactly), Prometheus scraping that Envoy by
//! `increase()` (within its extrapolation).

// Test code: a failed expectation panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_controller::source::envoy_admin::EnvoyAdminSource;
use cohort_controller::source::prometheus::PrometheusSource;
use cohort_controller::source::{MetricSource, SeriesRequest};
use cohort_rollout::compiled::Served;
use cohort_rollout::crd::{ErrorRateGate, GateCheck, GateSpec, LatencyGate};
use cohort_rollout::evaluate::{Observed, Samples};
use cohort_tests::envoy::{Filter, Options};
use cohort_tests::prometheus_server::Prometheus;
use cohort_tests::{config, Client, Envoy};

fn rollout() -> SeriesRequest {
    SeriesRequest {
        rollout: "web".to_owned(),
        namespace: "shop".to_owned(),
        stable_version: "stable".to_owned(),
        canary_version: "canary".to_owned(),
        gates: vec![
            GateSpec::new(GateCheck::ErrorRate(ErrorRateGate {
                max_increase: 0.01,
                max_rate: None,
            })),
            GateSpec::new(GateCheck::Latency(LatencyGate {
                quantile: 0.99,
                tolerance: 0.2,
                slack_ms: 10.0,
            })),
        ],
        served: Served::EnvoyClusters {
            stable: "stable".to_owned(),
            canary: "canary".to_owned(),
        },
    }
}

/// The same rollout said to run on Istio.
fn on_istio() -> SeriesRequest {
    SeriesRequest {
        rollout: "cart".to_owned(),
        served: Served::Istio {
            namespace: "shop".to_owned(),
            service: "cart".to_owned(),
        },
        ..rollout()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One request to `version` (by the route's header); returns its status.
fn send(client: &mut Client, version: &str) -> u16 {
    let response = if version == "canary" {
        client.get("/", &[(b"x-cohort-version", b"canary")])
    } else {
        client.get("/", &[])
    };
    response.unwrap().status
}

/// The count of a latency histogram's `+Inf` bucket.
fn latency_total(observed: &Observed<Vec<cohort_rollout::evaluate::Bucket>>) -> f64 {
    let Observed::Value(buckets) = observed else {
        panic!("latency {observed:?}");
    };
    let last = buckets.last().unwrap();
    assert_eq!(last.le, f64::INFINITY, "{buckets:?}");
    last.count
}

fn start_envoy() -> Envoy {
    let options = Options {
        filter: Filter::None,
        ..Options::default()
    };
    let envoy =
        Envoy::start_with(&config(0).to_string(), &options).unwrap_or_else(|e| panic!("{e}"));
    envoy.canary.fail(1000);
    envoy
}

#[test]
fn the_admin_source_counts_each_cluster_s_requests_exactly() {
    let envoy = start_envoy();
    let source = EnvoyAdminSource::new(
        &format!("http://{}", envoy.admin_addr()),
        Duration::from_secs(5),
    )
    .unwrap();
    let runtime = runtime();
    let rollouts = [rollout(), on_istio()];
    let window = Duration::from_secs(3);
    let started = Instant::now();
    // The baseline: nothing to difference against yet.
    let first = runtime.block_on(source.samples(window, &rollouts));
    assert_eq!(first[&rollouts[0].key()].canary.requests, Observed::NoData);

    let mut client = envoy.client();
    for _ in 0..30 {
        assert_eq!(send(&mut client, "stable"), 200);
    }
    for _ in 0..12 {
        assert_eq!(send(&mut client, "canary"), 503);
    }
    assert_eq!((envoy.stable.served(), envoy.canary.failed()), (30, 12));
    // One window after the baseline, and past two histogram flushes (1s each).
    std::thread::sleep(
        window
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(2500)),
    );
    let samples = runtime.block_on(source.samples(window, &rollouts));

    let Samples { stable, canary } = &samples[&rollouts[0].key()];
    assert_eq!(stable.requests, Observed::Value(30.0));
    assert_eq!(canary.requests, Observed::Value(12.0));
    assert_eq!(canary.server_errors, Observed::Value(12.0));
    // Envoy makes a class counter at its first response of that class: stable had no 5xx.
    assert_eq!(stable.server_errors, Observed::NoData);
    assert_eq!(latency_total(&stable.latency_ms), 30.0);
    assert_eq!(latency_total(&canary.latency_ms), 12.0);
    // No filter ran: it decided nothing.
    assert_eq!(canary.decisions, Observed::NoData);

    // A rollout on Istio asked of Envoy's admin: failed, with the way out.
    let istio = &samples[&rollouts[1].key()];
    for observed in [&istio.canary.requests, &istio.stable.server_errors] {
        assert!(
            matches!(observed, Observed::Failed(reason) if reason.contains("--prometheus")),
            "{observed:?}"
        );
    }
}

#[test]
fn prometheus_counts_each_cluster_s_requests_from_envoy_s_stats() {
    let envoy = start_envoy();
    // Canary's 5xx counter exists before Prometheus' first scrape, as it does once a canary
    // has failed once: a counter's first scrape has no increase to count.
    let mut client = envoy.client();
    assert_eq!(send(&mut client, "canary"), 503);
    assert_eq!(send(&mut client, "stable"), 200);
    let prometheus = Prometheus::start(envoy.admin_addr()).unwrap_or_else(|e| panic!("{e}"));
    prometheus
        .wait_for_scrape(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));

    // Steady traffic, two stable requests to each canary one, for longer than the window.
    let window = Duration::from_secs(8);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let mut client = envoy.client();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for version in ["stable", "stable", "canary"] {
                    let status = send(&mut client, version);
                    let index = usize::from(version == "canary");
                    assert_eq!(status, if index == 1 { 503 } else { 200 });
                    sent[index].fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let started = Instant::now();
    std::thread::sleep(window + Duration::from_secs(4));
    let source = PrometheusSource::new(&prometheus.url(), Duration::from_secs(5)).unwrap();
    let rollouts = [rollout()];
    let samples = runtime().block_on(source.samples(window, &rollouts));
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    let canary_rate = sent[1].load(Ordering::SeqCst) as f64 / elapsed;

    let Samples { stable, canary } = &samples[&rollouts[0].key()];
    let value = |observed: &Observed<f64>, what: &str| match observed {
        Observed::Value(value) => *value,
        other => panic!("{what}: {other:?}"),
    };
    let (stable_requests, canary_requests) = (
        value(&stable.requests, "stable requests"),
        value(&canary.requests, "canary requests"),
    );
    let expected = canary_rate * window.as_secs_f64();
    assert!(
        (canary_requests - expected).abs() <= expected * 0.15,
        "canary served {canary_requests}, sent about {expected} in the window"
    );
    let ratio = stable_requests / canary_requests;
    assert!(
        (1.8..=2.2).contains(&ratio),
        "stable {stable_requests} / canary {canary_requests}"
    );
    // Every canary answer was a 503; stable never had one.
    let errors = value(&canary.server_errors, "canary 5xx");
    assert!(
        (errors / canary_requests - 1.0).abs() <= 0.03,
        "canary 5xx {errors} of {canary_requests}"
    );
    assert_eq!(stable.server_errors, Observed::NoData);
    // Histograms flush every second: they trail the counters by at most that.
    for (version, requests, latency) in [
        ("stable", stable_requests, &stable.latency_ms),
        ("canary", canary_requests, &canary.latency_ms),
    ] {
        let counted = latency_total(latency);
        assert!(
            (counted / requests - 1.0).abs() <= 0.15,
            "{version}: {counted} timed of {requests}"
        );
    }
    assert_eq!(canary.decisions, Observed::NoData);
}
