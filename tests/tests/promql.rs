//! PromQL escaping against a real Prometheus: series whose rollout and namespace labels hold
//! quotes, braces, `=~`, regex metacharacters, backslashes and newlines, scraped from a fake
//! exporter; the controller's shared queries and rendered custom queries must parse and select
//! exactly the series of the names they were built for, never a neighbour's: not another name's,
//! and not the same name's in another namespace.

// Test code: a failed expectation panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cohort_controller::source::prometheus::queries;
use cohort_controller::source::SeriesRequest;
use cohort_rollout::compiled::Served;
use cohort_rollout::crd::{BusinessEventGate, GateCheck, GateSpec};
use cohort_rollout::query::{render_query, QueryContext};
use cohort_tests::exporter::Exporter;
use cohort_tests::prometheus_server::Prometheus;

/// Names no Kubernetes object can have, but a rollout file for `cohort run` can.
const HOSTILE: &[&str] = &[
    "a\"b",
    "a'b",
    "a\"}",
    "\"} or vector(1) or x{a=\"",
    "'} or vector(1) or x{a='",
    "x\\",
    "x\\\"",
    "a=~\".*\"",
    "a\"=~\".*",
    "{{namespace}}",
    "a\nb",
    "a\tb",
    "# comment",
    "`raw`",
    "\u{fffd}",
    "ünïcödé-用户",
    ".*",
    ".*|x",
    "a.b",
    "a+",
    "(x)",
    "[ab]",
    "^a$",
];

/// Names that a widened matcher would wrongly take in.
const DECOYS: &[&str] = &[
    "web", "a", "ab", "axb", "aab", "x", "b", "other", "AB", "acb",
];

/// A namespace every name also has series in; no request asks for it.
const NEIGHBOUR: &str = "neighbour";

/// A label value in the text exposition format.
fn exposition_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn exposition() -> String {
    let mut text = String::from(
        "# TYPE cohort_decisions_total counter\n# TYPE cohort_events_total counter\n\
         # TYPE istio_requests_total counter\n# TYPE envoy_cluster_upstream_rq_total counter\n\
         # TYPE envoy_cluster_upstream_rq_xx counter\n# TYPE cohort_custom gauge\n",
    );
    for (i, name) in HOSTILE.iter().chain(DECOYS).enumerate() {
        let value = exposition_value(name);
        // Each name's series in the namespace of the same name, and the same name's in a
        // neighbouring namespace, which its queries must leave out.
        for namespace in [value.clone(), NEIGHBOUR.to_owned()] {
            text.push_str(&format!(
                "cohort_decisions_total{{destination_service_namespace=\"{namespace}\",destination_service_name=\"{value}\",destination_version=\"canary\"}} {i}\n\
                 cohort_events_total{{cohort_namespace=\"{namespace}\",cohort_rollout=\"{value}\",cohort_version=\"canary\",cohort_event=\"checkout\"}} {i}\n"
            ));
            // Istio's series as the destination and as the source report them (that the
            // source's are not counted, tests/tests/served_istio.rs shows with growing counters).
            for reporter in ["destination", "source"] {
                for code in ["200", "503"] {
                    text.push_str(&format!(
                        "istio_requests_total{{reporter=\"{reporter}\",destination_service_namespace=\"{namespace}\",destination_service_name=\"{value}\",destination_version=\"canary\",response_code=\"{code}\"}} {i}\n"
                    ));
                }
            }
        }
        // Each name's clusters: the name itself serves canary, `<name>/stable` stable.
        for cluster in [value.clone(), format!("{value}/stable")] {
            text.push_str(&format!(
                "envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{cluster}\"}} {i}\n\
                 envoy_cluster_upstream_rq_xx{{envoy_cluster_name=\"{cluster}\",envoy_response_code_class=\"5\"}} {i}\n"
            ));
        }
        text.push_str(&format!(
            "cohort_custom{{ns=\"{value}\",r=\"{value}\",v=\"canary\"}} {i}\n"
        ));
    }
    text
}

/// Rollout `rollout` in the namespace of the same name, on the Envoy clusters `<rollout>`
/// (canary) and `<rollout>/stable`, with a business-event gate (so events are queried too).
fn request(rollout: &str) -> SeriesRequest {
    SeriesRequest {
        rollout: rollout.to_owned(),
        namespace: rollout.to_owned(),
        stable_version: "stable".into(),
        canary_version: "canary".into(),
        gates: vec![GateSpec::new(GateCheck::BusinessEvent(BusinessEventGate {
            event: "checkout".into(),
            max_drop: 0.1,
        }))],
        served: Served::EnvoyClusters {
            stable: format!("{rollout}/stable"),
            canary: rollout.to_owned(),
        },
    }
}

/// The same rollout on Istio: the service of its name in its namespace.
fn on_istio(mut request: SeriesRequest) -> SeriesRequest {
    request.served = Served::Istio {
        namespace: request.namespace.clone(),
        service: request.rollout.clone(),
    };
    request
}

/// The pairs of `namespace` and `name` label values of a query's answer.
fn pairs(result: &serde_json::Value, namespace: &str, name: &str) -> BTreeSet<(String, String)> {
    result
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let label = |label: &str| series["metric"][label].as_str().unwrap_or("").to_owned();
            (label(namespace), label(name))
        })
        .collect()
}

/// The `label` values of a query's answer.
fn label_values(result: &serde_json::Value, label: &str) -> BTreeSet<String> {
    result
        .as_array()
        .unwrap()
        .iter()
        .map(|series| series["metric"][label].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn hostile_names_select_exactly_their_own_series() {
    let page = exposition();
    let exporter = Exporter::start(Box::new(move |_| page.clone())).unwrap();
    let prometheus = Prometheus::start(exporter.addr()).unwrap_or_else(|e| panic!("{e}"));
    prometheus
        .wait_for_scrape(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    // Every series scraped (a value the exposition parser refused would fail the whole scrape),
    // and at least two scrapes inside the window, so `increase()` answers.
    let start = Instant::now();
    let all = HOSTILE.len() + DECOYS.len();
    loop {
        let scrapes = prometheus
            .query("count_over_time(up{job=\"envoy\"}[30s])")
            .unwrap();
        let scrapes: f64 = scrapes[0]["value"][1]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap();
        let series = prometheus.query("count(cohort_custom)").unwrap();
        let series: f64 = series[0]["value"][1]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap();
        if scrapes >= 3.0 && series == all as f64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "scraped {series} of {all} series in {scrapes} scrapes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    for name in HOSTILE.iter().chain(DECOYS) {
        // The shared queries for this rollout and `web`: exactly those two rollouts answer.
        let rollouts = [request(name), request("web")];
        let shared = queries(&rollouts, Duration::from_secs(30));
        let expected: BTreeSet<(String, String)> = [
            (name.to_string(), name.to_string()),
            ("web".to_owned(), "web".to_owned()),
        ]
        .into();
        let run = |query: &str| {
            prometheus
                .query(query)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"))
        };
        let decisions = run(&shared.decisions);
        assert_eq!(
            pairs(
                &decisions,
                "destination_service_namespace",
                "destination_service_name"
            ),
            expected,
            "{}",
            shared.decisions
        );
        let events = shared.events.clone().unwrap();
        assert_eq!(
            pairs(&run(&events), "cohort_namespace", "cohort_rollout"),
            expected,
            "{events}"
        );
        let clusters = shared.clusters.clone().unwrap();
        for query in [&clusters.requests, &clusters.server_errors] {
            assert_eq!(
                label_values(&run(query), "envoy_cluster_name"),
                BTreeSet::from([
                    name.to_string(),
                    format!("{name}/stable"),
                    "web".to_owned(),
                    "web/stable".to_owned()
                ]),
                "{query}"
            );
        }
        let istio = queries(&rollouts.map(on_istio), Duration::from_secs(30))
            .istio
            .unwrap();
        for query in [&istio.requests, &istio.server_errors] {
            assert_eq!(
                pairs(
                    &run(query),
                    "destination_service_namespace",
                    "destination_service_name"
                ),
                expected,
                "{query}"
            );
        }
        // The same name in the neighbouring namespace: only that namespace's series.
        let mut neighbour = request(name);
        neighbour.namespace = NEIGHBOUR.to_owned();
        let shared = queries(
            &[neighbour.clone(), on_istio(neighbour)],
            Duration::from_secs(30),
        );
        let only_neighbour = BTreeSet::from([(NEIGHBOUR.to_owned(), name.to_string())]);
        assert_eq!(
            pairs(
                &run(&shared.decisions),
                "destination_service_namespace",
                "destination_service_name"
            ),
            only_neighbour,
            "{}",
            shared.decisions
        );
        let istio_requests = shared.istio.unwrap().requests;
        assert_eq!(
            pairs(
                &run(&istio_requests),
                "destination_service_namespace",
                "destination_service_name"
            ),
            only_neighbour,
            "{istio_requests}"
        );
        let events = shared.events.unwrap();
        assert_eq!(
            pairs(&run(&events), "cohort_namespace", "cohort_rollout"),
            only_neighbour,
            "{events}"
        );

        // A custom query in double and single quotes: exactly this name's series.
        for template in [
            r#"sum by (ns, r) (cohort_custom{ns="{{namespace}}",r="{{rollout}}",v="{{version}}"})"#,
            "sum by (ns, r) (cohort_custom{ns='{{namespace}}',r='{{rollout}}',v='{{version}}'})",
        ] {
            let context = QueryContext {
                namespace: name,
                rollout: name,
                version: "canary",
                interval: Duration::from_secs(30),
            };
            let query = render_query(template, &context).unwrap();
            let result = prometheus
                .query(&query)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(
                label_values(&result, "ns"),
                BTreeSet::from([name.to_string()]),
                "{query}"
            );
            assert_eq!(
                label_values(&result, "r"),
                BTreeSet::from([name.to_string()])
            );
        }
    }
}
