//! The Prometheus source reads what each version of an Istio service **served** from Istio's
//! standard metrics, against a real Prometheus scraping stand-in sidecars: one exporter per
//! Pod, each serving `istio_requests_total` and `istio_request_duration_milliseconds` labelled
//! as Istio's sidecars label them, with counters growing between scrapes. The callers' sidecars
//! report the same requests again (`reporter="source"`, here at inflated rates) and carry the
//! filter's `cohort_decisions_total`; another service, and a service of the same name in another
//! namespace, serve beside them. Each version's served requests, 5xx, latency buckets and
//! decisions must come out as the destination Pods of that version counted them, none of the
//! rest; and split by the Pod that served them, with the `pod` label Prometheus attaches when
//! scraping (the sidecars do not export it).

// Test code: a failed expectation panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cohort_controller::source::prometheus::PrometheusSource;
use cohort_controller::source::{MetricSource, SeriesRequest};
use cohort_rollout::compiled::Served;
use cohort_rollout::crd::{ErrorRateGate, GateCheck, GateSpec, LatencyGate};
use cohort_rollout::evaluate::{Observed, UnitSamples, VersionSamples};
use cohort_tests::exporter::{Exporter, Page};
use cohort_tests::prometheus_server::Prometheus;

/// Istio's default buckets of `istio_request_duration_milliseconds`.
const BUCKETS: &[&str] = &[
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
];

/// Every counter starts here, as a sidecar's has counted since long before the window.
const BASE: f64 = 100_000.0;

/// The analysis window the source is asked for.
const WINDOW: Duration = Duration::from_secs(10);

/// Requests of one kind one sidecar reports: who reported them, to which destination, with
/// which code, how many per second, and how long each took.
#[derive(Debug, Clone, Copy)]
struct Traffic {
    reporter: &'static str,
    source: &'static str,
    namespace: &'static str,
    service: &'static str,
    version: &'static str,
    code: u16,
    per_second: f64,
    latency_ms: f64,
    /// The `cohort_unit` label the Telemetry resource adds from the filter's unit header;
    /// `None`: requests without it (the label absent).
    unit: Option<&'static str>,
}

impl Traffic {
    fn destination(
        namespace: &'static str,
        service: &'static str,
        version: &'static str,
        code: u16,
        per_second: f64,
        latency_ms: f64,
    ) -> Traffic {
        Traffic {
            reporter: "destination",
            source: "frontend",
            namespace,
            service,
            version,
            code,
            per_second,
            latency_ms,
            unit: None,
        }
    }

    /// The same requests from the users of one unit.
    fn in_unit(self, unit: &'static str) -> Traffic {
        Traffic {
            unit: Some(unit),
            ..self
        }
    }

    /// The same requests as the calling sidecar reports them.
    fn reported_by_source(self) -> Traffic {
        Traffic {
            reporter: "source",
            ..self
        }
    }

    /// The labels Istio's sidecars put on `istio_requests_total` and the duration histogram.
    fn labels(&self) -> String {
        let Traffic {
            reporter,
            source,
            namespace,
            service,
            version,
            code,
            ..
        } = *self;
        let workload = format!("{service}-{version}");
        let security = if reporter == "destination" {
            "mutual_tls"
        } else {
            "unknown"
        };
        [
            ("reporter", reporter.to_owned()),
            ("source_workload", format!("{source}-v1")),
            ("source_workload_namespace", "shop".to_owned()),
            (
                "source_principal",
                format!("spiffe://cluster.local/ns/shop/sa/{source}"),
            ),
            ("source_app", source.to_owned()),
            ("source_version", "v1".to_owned()),
            ("source_cluster", "Kubernetes".to_owned()),
            ("source_canonical_service", source.to_owned()),
            ("source_canonical_revision", "v1".to_owned()),
            ("destination_workload", workload),
            ("destination_workload_namespace", namespace.to_owned()),
            (
                "destination_principal",
                format!("spiffe://cluster.local/ns/{namespace}/sa/{service}"),
            ),
            ("destination_app", service.to_owned()),
            ("destination_version", version.to_owned()),
            (
                "destination_service",
                format!("{service}.{namespace}.svc.cluster.local"),
            ),
            ("destination_service_name", service.to_owned()),
            ("destination_service_namespace", namespace.to_owned()),
            ("destination_cluster", "Kubernetes".to_owned()),
            ("destination_canonical_service", service.to_owned()),
            ("destination_canonical_revision", version.to_owned()),
            ("request_protocol", "http".to_owned()),
            ("response_code", code.to_string()),
            ("grpc_response_status", String::new()),
            ("response_flags", "-".to_owned()),
            ("connection_security_policy", security.to_owned()),
        ]
        .into_iter()
        .chain(self.unit.map(|unit| ("cohort_unit", unit.to_owned())))
        .map(|(name, value)| format!("{name}=\"{value}\""))
        .collect::<Vec<_>>()
        .join(",")
    }

    /// Its series at `seconds` after the sidecar started.
    fn exposition(&self, seconds: f64) -> String {
        let labels = self.labels();
        let count = BASE + self.per_second * seconds;
        let mut text = format!("istio_requests_total{{{labels}}} {count}\n");
        for le in BUCKETS {
            let bound: f64 = if *le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let value = if bound >= self.latency_ms {
                count
            } else {
                BASE
            };
            text.push_str(&format!(
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {value}\n"
            ));
        }
        text.push_str(&format!(
            "istio_request_duration_milliseconds_sum{{{labels}}} {}\n\
             istio_request_duration_milliseconds_count{{{labels}}} {count}\n",
            count * self.latency_ms
        ));
        text
    }
}

/// The filter's decisions for one destination, as a caller's sidecar exports them.
#[derive(Debug, Clone, Copy)]
struct Decisions {
    namespace: &'static str,
    service: &'static str,
    version: &'static str,
    per_second: f64,
}

impl Decisions {
    fn exposition(&self, seconds: f64) -> String {
        format!(
            "cohort_decisions_total{{destination_service_namespace=\"{}\",destination_service_name=\"{}\",destination_version=\"{}\"}} {}\n",
            self.namespace,
            self.service,
            self.version,
            BASE + self.per_second * seconds
        )
    }
}

/// One Pod's sidecar: what it reports and the decisions its filter made.
fn pod(traffic: Vec<Traffic>, decisions: Vec<Decisions>) -> Exporter {
    let page: Page = Box::new(move |seconds| {
        let mut text = String::from(
            "# TYPE istio_requests_total counter\n\
             # TYPE istio_request_duration_milliseconds histogram\n",
        );
        for t in &traffic {
            text.push_str(&t.exposition(seconds));
        }
        if !decisions.is_empty() {
            text.push_str("# TYPE cohort_decisions_total counter\n");
        }
        for d in &decisions {
            text.push_str(&d.exposition(seconds));
        }
        text
    });
    Exporter::start(page).unwrap()
}

/// Prometheus scraping each `(target, Pod name)` as the `kubernetes-pods` job of Istio's
/// samples/addons/prometheus.yaml scrapes a sidecar: Kubernetes discovery gives the target
/// `__meta_kubernetes_pod_name` (here each static target carries it), and relabelling copies
/// it to `pod`, which the exported series do not have.
fn scrape_config_with_pods(
    job: &str,
    metrics_path: &str,
    targets: &[(SocketAddr, &str)],
) -> String {
    let mut config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: {job}\n  \
           metrics_path: {metrics_path}\n  \
           honor_labels: true\n  \
           relabel_configs:\n  \
           - {{action: replace, source_labels: [__meta_kubernetes_pod_name], target_label: pod}}\n  \
           static_configs:\n"
    );
    for (target, pod) in targets {
        config.push_str(&format!(
            "  - {{targets: ['{target}'], labels: {{__meta_kubernetes_pod_name: '{pod}'}}}}\n"
        ));
    }
    config
}

fn gates() -> Vec<GateSpec> {
    vec![
        GateSpec::new(GateCheck::ErrorRate(ErrorRateGate {
            max_increase: 0.01,
            max_rate: None,
        })),
        GateSpec::new(GateCheck::Latency(LatencyGate {
            quantile: 0.99,
            tolerance: 0.2,
            slack_ms: 10.0,
        })),
    ]
}

fn rollout(namespace: &str, service: &str) -> SeriesRequest {
    SeriesRequest {
        rollout: format!("{service}-rollout"),
        namespace: namespace.to_owned(),
        stable_version: "v1".to_owned(),
        canary_version: "v2".to_owned(),
        gates: gates(),
        served: Served::Istio {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
        },
    }
}

/// `observed` is a value within 10% of `per_second` over the window (`increase()`
/// extrapolates; the counters grow evenly, so it lands close).
fn assert_near(observed: &Observed<f64>, per_second: f64, what: &str) {
    let expected = per_second * WINDOW.as_secs_f64();
    let Observed::Value(value) = observed else {
        panic!("{what}: {observed:?}, expected about {expected}");
    };
    assert!(
        (value - expected).abs() <= expected * 0.1,
        "{what}: {value}, expected about {expected}"
    );
}

/// The version's latency buckets: none below `below`, and about `per_second` from `from` on.
fn assert_latency(version: &VersionSamples, empty_up_to: f64, per_second: f64, what: &str) {
    let Observed::Value(buckets) = &version.latency_ms else {
        panic!("{what}: latency {:?}", version.latency_ms);
    };
    assert_eq!(buckets.len(), BUCKETS.len(), "{what}: {buckets:?}");
    for bucket in buckets {
        if bucket.le <= empty_up_to {
            // Exactly none: the source-side, other-service and other-namespace requests, all
            // faster than this version's, would land here.
            assert_eq!(
                bucket.count, 0.0,
                "{what}: bucket {} in {buckets:?}",
                bucket.le
            );
        } else {
            assert_near(
                &Observed::Value(bucket.count),
                per_second,
                &format!("{what}: bucket {}", bucket.le),
            );
        }
    }
}

/// The version's Pods are exactly `expected` (name, requests and 5xx per second), in name
/// order, each with its latency histogram; their requests, 5xx and `+Inf` buckets add up to the
/// version's totals.
fn assert_pods(version: &VersionSamples, expected: &[(&str, f64, f64)], what: &str) {
    let names: Vec<&str> = version.pods.iter().map(|pod| pod.unit.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(name, ..)| *name).collect();
    assert_eq!(names, expected_names, "{what}: {:?}", version.pods);
    for (pod, (name, requests, errors)) in version.pods.iter().zip(expected) {
        let what = format!("{what} Pod {name}");
        assert_near(&Observed::Value(pod.requests), *requests, &what);
        if *errors > 0.0 {
            assert_near(&Observed::Value(pod.server_errors), *errors, &what);
        } else {
            assert_eq!(pod.server_errors, 0.0, "{what}");
        }
        assert_eq!(
            pod.latency_ms.len(),
            BUCKETS.len(),
            "{what}: {:?}",
            pod.latency_ms
        );
        let inf = pod.latency_ms.last().unwrap();
        assert_eq!(inf.le, f64::INFINITY, "{what}");
        assert_near(&Observed::Value(inf.count), *requests, &what);
    }
    let sum = |part: fn(&UnitSamples) -> f64| version.pods.iter().map(part).sum::<f64>();
    let inf = |pod: &UnitSamples| pod.latency_ms.last().map_or(0.0, |bucket| bucket.count);
    let total_inf = match &version.latency_ms {
        Observed::Value(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
        other => panic!("{what}: latency {other:?}"),
    };
    for (part, got, total) in [
        ("requests", sum(|pod| pod.requests), &version.requests),
        ("5xx", sum(|pod| pod.server_errors), &version.server_errors),
        ("+Inf bucket", sum(inf), &Observed::Value(total_inf)),
    ] {
        let total = match total {
            Observed::Value(total) => *total,
            Observed::NoData => 0.0,
            other => panic!("{what} {part}: {other:?}"),
        };
        assert!(
            (got - total).abs() <= 1e-9 * total.max(1.0),
            "{what}: the Pods' {part} add up to {got}, the version's to {total}"
        );
    }
}

fn number(prometheus: &Prometheus, query: &str) -> f64 {
    let result = prometheus.query(query).unwrap();
    result[0]["value"][1]
        .as_str()
        .unwrap_or("0")
        .parse()
        .unwrap()
}

#[test]
fn istio_served_metrics_are_read_per_version_from_the_destination() {
    let checkout = |version, code, per_second, latency_ms| {
        Traffic::destination("shop", "checkout", version, code, per_second, latency_ms)
    };
    // Two Pods per version. Stable (v1) serves 14/s, 1/s of them 503: 7/s on each Pod, the 503s
    // on Pod a. Canary (v2) 6/s, 1/s 500: 4/s on Pod a with the 500s, 2/s on Pod b. The
    // canary's carry the unit label (3/s of unit 3, 1/s of them 500, on one Pod; 1/s of unit 9
    // on each); stable's do not. Each Pod's name is given to Prometheus, not exported.
    let pods = [
        (
            "checkout-v1-6d5c8-a",
            pod(
                vec![checkout("v1", 200, 6.0, 7.0), checkout("v1", 503, 1.0, 7.0)],
                Vec::new(),
            ),
        ),
        (
            "checkout-v1-6d5c8-b",
            pod(vec![checkout("v1", 200, 7.0, 7.0)], Vec::new()),
        ),
        (
            "checkout-v2-7f9b4-a",
            pod(
                vec![
                    checkout("v2", 200, 2.0, 40.0).in_unit("3"),
                    checkout("v2", 500, 1.0, 40.0).in_unit("3"),
                    checkout("v2", 200, 1.0, 40.0).in_unit("9"),
                ],
                Vec::new(),
            ),
        ),
        (
            "checkout-v2-7f9b4-b",
            pod(
                vec![checkout("v2", 200, 2.0, 40.0).in_unit("9")],
                Vec::new(),
            ),
        ),
        // The callers: the same service's requests as the source reports them, far more of
        // them and faster (a source series counted would show), and the filter's decisions.
        (
            "frontend-v1-55d7c-a",
            pod(
                vec![
                    checkout("v1", 200, 100.0, 1.0).reported_by_source(),
                    checkout("v2", 503, 50.0, 1.0).reported_by_source(),
                ],
                vec![
                    Decisions {
                        namespace: "shop",
                        service: "checkout",
                        version: "v1",
                        per_second: 7.0,
                    },
                    Decisions {
                        namespace: "shop",
                        service: "checkout",
                        version: "v2",
                        per_second: 3.0,
                    },
                    Decisions {
                        namespace: "shop",
                        service: "payments",
                        version: "v2",
                        per_second: 40.0,
                    },
                ],
            ),
        ),
        (
            "frontend-v1-55d7c-b",
            pod(
                vec![checkout("v2", 200, 100.0, 1.0).reported_by_source()],
                vec![
                    Decisions {
                        namespace: "shop",
                        service: "checkout",
                        version: "v1",
                        per_second: 8.0,
                    },
                    Decisions {
                        namespace: "shop",
                        service: "checkout",
                        version: "v2",
                        per_second: 3.5,
                    },
                    Decisions {
                        namespace: "billing",
                        service: "checkout",
                        version: "v2",
                        per_second: 70.0,
                    },
                ],
            ),
        ),
        // Another service of the namespace, versioned alike.
        (
            "payments-8c6f2-a",
            pod(
                vec![
                    Traffic::destination("shop", "payments", "v2", 200, 80.0, 3.0),
                    Traffic::destination("shop", "payments", "v1", 500, 20.0, 3.0),
                ],
                Vec::new(),
            ),
        ),
        // The same service name in another namespace, with a rollout of its own.
        (
            "checkout-v2-4b7d9-a",
            pod(
                vec![
                    Traffic::destination("billing", "checkout", "v2", 200, 90.0, 2.0),
                    Traffic::destination("billing", "checkout", "v2", 503, 30.0, 2.0),
                ],
                Vec::new(),
            ),
        ),
    ];
    let targets: Vec<_> = pods
        .iter()
        .map(|(name, exporter)| (exporter.addr(), *name))
        .collect();
    let prometheus = Prometheus::start_with_config(&scrape_config_with_pods(
        "istio-sidecars",
        "/stats/prometheus",
        &targets,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    prometheus
        .wait_for_job("istio-sidecars", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    // A whole window of scrapes, and a few more, so increase() extrapolates only to its edges.
    std::thread::sleep(WINDOW + Duration::from_secs(3));

    // What the source must leave out is there to be left out.
    assert!(
        number(
            &prometheus,
            r#"sum(istio_requests_total{reporter="source"})"#
        ) > 0.0
    );
    assert_eq!(
        number(
            &prometheus,
            r#"count(count by (instance) (istio_requests_total{destination_service_name="checkout",destination_service_namespace="shop",reporter="destination"}))"#
        ),
        4.0,
        "four Pods serve shop/checkout"
    );

    let shop = rollout("shop", "checkout");
    let billing = rollout("billing", "checkout");
    assert_eq!(
        number(
            &prometheus,
            r#"count(count by (pod) (istio_requests_total{destination_service_name="checkout",destination_service_namespace="shop",reporter="destination"}))"#
        ),
        4.0,
        "Prometheus attaches each Pod's name"
    );

    // Every query at one instant, so the Pods' sums and the totals see the same scrapes.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let source = PrometheusSource::new(&prometheus.url(), Duration::from_secs(5))
        .unwrap()
        .at(i64::try_from(now.as_secs()).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let samples = runtime.block_on(source.samples(WINDOW, &[shop.clone(), billing.clone()]));

    let shop_samples = &samples[&shop.key()];
    let (stable, canary) = (&shop_samples.stable, &shop_samples.canary);
    assert_near(&stable.requests, 14.0, "stable requests");
    assert_near(&stable.server_errors, 1.0, "stable 5xx");
    assert_near(&canary.requests, 6.0, "canary requests");
    assert_near(&canary.server_errors, 1.0, "canary 5xx");
    assert_near(&stable.decisions, 15.0, "stable decisions");
    assert_near(&canary.decisions, 6.5, "canary decisions");
    assert_latency(stable, 5.0, 14.0, "stable");
    assert_latency(canary, 25.0, 6.0, "canary");
    // The canary's units, summed over its Pods; stable has none.
    let units: Vec<&str> = canary.units.iter().map(|u| u.unit.as_str()).collect();
    assert_eq!(units, ["3", "9"], "{:?}", canary.units);
    for (unit, requests, errors) in [(&canary.units[0], 3.0, 1.0), (&canary.units[1], 3.0, 0.0)] {
        let what = format!("canary unit {}", unit.unit);
        assert_near(&Observed::Value(unit.requests), requests, &what);
        if errors > 0.0 {
            assert_near(&Observed::Value(unit.server_errors), errors, &what);
        } else {
            assert_eq!(unit.server_errors, 0.0, "{what}");
        }
        let inf = unit
            .latency_ms
            .last()
            .map(|bucket| (bucket.le, bucket.count));
        assert!(
            inf.is_some_and(|(le, _)| le == f64::INFINITY),
            "{what}: {inf:?}"
        );
        assert_near(&Observed::Value(inf.unwrap().1), requests, &what);
    }
    assert_eq!(stable.units, Vec::new());

    // Each version's Pods: exactly its two, as Prometheus named them, summing to its totals.
    assert_pods(
        canary,
        &[
            ("checkout-v2-7f9b4-a", 4.0, 1.0),
            ("checkout-v2-7f9b4-b", 2.0, 0.0),
        ],
        "canary",
    );
    assert_pods(
        stable,
        &[
            ("checkout-v1-6d5c8-a", 7.0, 1.0),
            ("checkout-v1-6d5c8-b", 7.0, 0.0),
        ],
        "stable",
    );

    // billing/checkout reads its own namespace's service: canary only, and no stable at all.
    let billing_samples = &samples[&billing.key()];
    assert_near(
        &billing_samples.canary.requests,
        120.0,
        "billing canary requests",
    );
    assert_near(
        &billing_samples.canary.server_errors,
        30.0,
        "billing canary 5xx",
    );
    assert_near(
        &billing_samples.canary.decisions,
        70.0,
        "billing canary decisions",
    );
    assert_eq!(billing_samples.stable.requests, Observed::NoData);
    assert_eq!(billing_samples.stable.decisions, Observed::NoData);
    assert_latency(&billing_samples.canary, 1.0, 120.0, "billing canary");
    // A one-Pod canary keeps its Pod; a version with no Pods has none.
    assert_pods(
        &billing_samples.canary,
        &[("checkout-v2-4b7d9-a", 120.0, 30.0)],
        "billing canary",
    );
    assert_eq!(billing_samples.stable.pods, Vec::new());
}
