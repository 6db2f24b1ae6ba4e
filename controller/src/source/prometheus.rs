//! Samples from a Prometheus server that scrapes the proxies: Istio's sidecars (their merged
//! `:15020/stats/prometheus`, which carries Istio's standard metrics and the filter's) or plain
//! Envoy's admin `/stats/prometheus`.
//!
//! One instant query per series kind serves every rollout, so the queries per cycle do not grow
//! with the number of rollouts. What each version **served** comes from where the rollout's
//! `spec.analysis.served` says: Istio's metrics as the destination reported them (the source
//! side also reports every request, and would count it twice), or the upstream stats of the
//! version's Envoy cluster. What the filter **decided** for each version is its
//! `cohort_decisions_total`. A namespace is a label value of its own (`shop/web` and
//! `billing/web` are two rollouts), so each namespace gets one selector naming exactly its
//! services or rollouts, and the selectors are joined with `or`:
//!
//! ```promql
//! # Istio: served requests, 5xx, latency (latency gates only), by unit
//! sum by (destination_service_namespace, destination_service_name, destination_version, cohort_unit) (increase(istio_requests_total{reporter="destination",destination_service_namespace="shop",destination_service_name=~"cart|web",destination_version=~"v1|v2"}[30s]) or …)
//! sum by (…) (increase(istio_requests_total{reporter="destination",…,response_code=~"5.."}[30s]) or …)
//! sum by (…, le) (increase(istio_request_duration_milliseconds_bucket{reporter="destination",…}[30s]) or …)
//! # Istio: the same three by the Pod that served them
//! sum by (destination_service_namespace, destination_service_name, destination_version, pod) (increase(istio_requests_total{reporter="destination",…}[30s]) or …)
//! sum by (…) (increase(istio_requests_total{reporter="destination",…,response_code=~"5.."}[30s]) or …)
//! sum by (…, le) (increase(istio_request_duration_milliseconds_bucket{reporter="destination",…}[30s]) or …)
//! # Envoy clusters: served requests, 5xx, latency (latency gates only)
//! sum by (envoy_cluster_name) (increase(envoy_cluster_upstream_rq_total{envoy_cluster_name=~"canary|stable"}[30s]))
//! sum by (envoy_cluster_name) (increase(envoy_cluster_upstream_rq_xx{envoy_cluster_name=~"canary|stable",envoy_response_code_class="5"}[30s]))
//! sum by (envoy_cluster_name, le) (increase(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~"canary|stable"}[30s]))
//! # The filter's decisions, every rollout (the routing check compares them with what was served)
//! sum by (destination_service_namespace, destination_service_name, destination_version) (increase(cohort_decisions_total{destination_service_namespace="shop",destination_service_name=~"cart|web"}[30s]) or …)
//! # Business events (business gates only)
//! sum by (cohort_namespace, cohort_rollout, cohort_version, cohort_event) (increase(cohort_events_total{cohort_namespace="shop",cohort_rollout=~"cart|web"}[30s]) or …)
//! ```
//!
//! Grouping Istio's by `cohort_unit` costs no query: each version's total is its units' sum,
//! and the units (present when the Telemetry resource adds the label) give the sequential
//! gates the spread between users. Without the label every series has it empty: one unit,
//! totals only. The by-Pod queries are queries of their own, as grouping by both labels would
//! give stable a series per unit and Pod. `pod` is not Istio's: Prometheus attaches it to what
//! it scrapes from a Pod ([`POD`]), and as the destination reports, that is the Pod that
//! served. The Pods give the sequential gates the spread between Pods, so that one stalled
//! canary Pod does not read as the version's regression; series without the label count in
//! the totals only. The Istio and cluster queries run only when a rollout reads them. Pod
//! labels such as Prometheus' `namespace` cannot stand in for the rollout's namespace: in
//! Istio the filter runs in the caller's sidecar, so they name the caller's namespace. A
//! rollout without a namespace (a rollout file for `cohort run` without `metadata.namespace`)
//! matches `…namespace=""`, which Prometheus also takes for an absent label.
//!
//! Custom gates are the exception: their PromQL is the user's, so each runs once per rollout and
//! version. `increase()` needs two scrapes inside the window: keep the analysis interval at least
//! twice the scrape interval, or the window reads as no data (Inconclusive).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use prometheus_http_query::response::Data;
use prometheus_http_query::Client;

use cohort_core::telemetry::{EVENTS_TOTAL, TAG_EVENT, TAG_NAMESPACE, TAG_ROLLOUT, TAG_VERSION};

use crate::source::series::{
    error_chain, needed, to_samples, Answer, Answers, CustomKey, Series, ServedAnswers, LE,
    SERVER_ERROR_CLASS,
};
use crate::source::{
    BoxFuture, MetricSource, SamplesByRollout, SeriesRequest, CLUSTER_NAME, CLUSTER_REQUESTS_TOTAL,
    CLUSTER_REQUEST_TIME_MS, CLUSTER_RESPONSES_BY_CLASS, CLUSTER_RESPONSE_CLASS, DECISIONS_TOTAL,
    DESTINATION_NAMESPACE, DESTINATION_SERVICE, DESTINATION_VERSION, ISTIO_REPORTER,
    ISTIO_REQUESTS_TOTAL, ISTIO_REQUEST_DURATION_MS, ISTIO_RESPONSE_CODE, POD, UNIT,
};
use crate::Error;
use cohort_rollout::compiled::Served;
use cohort_rollout::crd::GateCheck;
use cohort_rollout::query::{escape_label_value, promql_duration, render_query, QueryContext};

/// A [`MetricSource`] reading a Prometheus server's HTTP API.
#[derive(Clone)]
pub struct PrometheusSource {
    client: Client,
    url: String,
    /// Evaluate at this Unix time instead of now (`cohort analyze` replays the past).
    at: Option<i64>,
}

impl std::fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusSource")
            .field("url", &self.url)
            .finish()
    }
}

impl PrometheusSource {
    /// A source for the Prometheus server at `url` (e.g. `http://prometheus:9090`); each query
    /// gives up after `timeout`, so a hung server makes a gate Error rather than a stuck cycle.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|error| Error::HttpClient(error.to_string()))?;
        let client = Client::from(http, url).map_err(|error| Error::InvalidUrl {
            url: url.to_owned(),
            reason: error_chain(&error),
        })?;
        Ok(PrometheusSource {
            client,
            url: url.to_owned(),
            at: None,
        })
    }

    /// The same source, with every query evaluated at `unix_seconds` rather than now: windows
    /// then end at that time.
    pub fn at(&self, unix_seconds: i64) -> Self {
        PrometheusSource {
            at: Some(unix_seconds),
            ..self.clone()
        }
    }

    async fn vector(&self, query: String) -> Answer {
        let data = self.instant(&query).await?;
        series_of(&data)
    }

    async fn number(&self, query: Result<String, String>) -> Result<Option<f64>, String> {
        let data = self.instant(&query?).await?;
        number_of(&data)
    }

    async fn instant(&self, query: &str) -> Result<Data, String> {
        tracing::debug!(query, "PromQL");
        let mut instant = self.client.query(query);
        if let Some(at) = self.at {
            instant = instant.at(at);
        }
        match instant.get().await {
            Ok(result) => Ok(result.into_inner().0),
            Err(error) => Err(format!(
                "Prometheus at {}: {}",
                self.url,
                error_chain(&error)
            )),
        }
    }

    async fn read(&self, window: Duration, rollouts: &[SeriesRequest]) -> Answers {
        let queries = queries(rollouts, window);
        let custom = custom_queries(rollouts, window);
        let shared = async {
            futures::join!(
                optional(queries.istio.map(|served| self.served(served))),
                optional(queries.istio_pods.map(|served| self.served(served))),
                optional(queries.clusters.map(|served| self.served(served))),
                self.vector(queries.decisions),
                optional(queries.events.map(|query| self.vector(query))),
            )
        };
        let (keys, custom_queries): (Vec<CustomKey>, Vec<Result<String, String>>) =
            custom.into_iter().unzip();
        let custom_answers = join_all(custom_queries.into_iter().map(|query| self.number(query)));
        let ((istio, istio_pods, clusters, decisions, events), custom_answers) =
            futures::join!(shared, custom_answers);
        Answers {
            istio,
            istio_pods,
            clusters,
            decisions,
            events,
            custom: keys.into_iter().zip(custom_answers).collect(),
        }
    }

    async fn served(&self, queries: ServedQueries) -> ServedAnswers {
        let (requests, server_errors, latency) = futures::join!(
            self.vector(queries.requests),
            self.vector(queries.server_errors),
            optional(queries.latency.map(|query| self.vector(query))),
        );
        ServedAnswers {
            requests,
            server_errors,
            latency,
        }
    }
}

async fn optional<T>(future: Option<impl std::future::Future<Output = T>>) -> Option<T> {
    match future {
        Some(future) => Some(future.await),
        None => None,
    }
}

impl MetricSource for PrometheusSource {
    fn samples<'a>(
        &'a self,
        window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, SamplesByRollout> {
        Box::pin(async move {
            if rollouts.is_empty() {
                return BTreeMap::new();
            }
            let answers = self.read(window, rollouts).await;
            to_samples(rollouts, &answers)
        })
    }
}

/// The shared queries of one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queries {
    /// Istio's served metrics by unit; only when a rollout reads them.
    pub istio: Option<ServedQueries>,
    /// The same by the Pod that served them (`pod`); exactly when `istio` is there.
    pub istio_pods: Option<ServedQueries>,
    /// Envoy clusters' upstream stats; only when a rollout reads them.
    pub clusters: Option<ServedQueries>,
    /// The filter's decisions by destination namespace, service and version.
    pub decisions: String,
    /// Business events by rollout, version and event; only when a business gate exists.
    pub events: Option<String>,
}

/// The queries of one kind of served metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedQueries {
    /// Requests served, by version.
    pub requests: String,
    /// 5xx responses, by version.
    pub server_errors: String,
    /// Duration buckets by version and `le`; only when a rollout of this kind has a latency gate.
    pub latency: Option<String>,
}

/// The shared queries for `rollouts` over `window`.
pub fn queries(rollouts: &[SeriesRequest], window: Duration) -> Queries {
    let needed = needed(rollouts);
    let range = promql_duration(window);
    let destination =
        format!("{DESTINATION_NAMESPACE}, {DESTINATION_SERVICE}, {DESTINATION_VERSION}");
    // Istio's served metrics by unit too: the sums by version are the units' sums. By Pod in
    // queries of their own: grouping by both would give stable units × Pods series.
    let destination_unit = format!("{destination}, {UNIT}");
    let destination_pod = format!("{destination}, {POD}");
    let cluster = CLUSTER_NAME.to_owned();
    let with_le = |by: &str| format!("{by}, {LE}");
    // `sum by (labels) (increase(metric{selector more}[range]) or …)`, one term per selector.
    let increase = |by: &str, metric: &str, selectors: &[String], more: &str| {
        let each: Vec<String> = selectors
            .iter()
            .map(|selector| format!("increase({metric}{{{selector}{more}}}[{range}])"))
            .collect();
        format!("sum by ({by}) ({})", each.join(" or "))
    };

    let istio_selectors = needed.istio.then(|| istio_selectors(rollouts));
    let istio_by = |by: &str| {
        istio_selectors.as_ref().map(|selectors| ServedQueries {
            requests: increase(by, ISTIO_REQUESTS_TOTAL, selectors, ""),
            server_errors: increase(
                by,
                ISTIO_REQUESTS_TOTAL,
                selectors,
                &format!(",{ISTIO_RESPONSE_CODE}=~\"5..\""),
            ),
            latency: needed.istio_latency.then(|| {
                increase(
                    &with_le(by),
                    &format!("{ISTIO_REQUEST_DURATION_MS}_bucket"),
                    selectors,
                    "",
                )
            }),
        })
    };
    let istio = istio_by(&destination_unit);
    let istio_pods = istio_by(&destination_pod);
    let clusters = needed.clusters.then(|| {
        let selectors = [cluster_selector(rollouts)];
        ServedQueries {
            requests: increase(&cluster, CLUSTER_REQUESTS_TOTAL, &selectors, ""),
            server_errors: increase(
                &cluster,
                CLUSTER_RESPONSES_BY_CLASS,
                &selectors,
                &format!(",{CLUSTER_RESPONSE_CLASS}=\"{SERVER_ERROR_CLASS}\""),
            ),
            latency: needed.clusters_latency.then(|| {
                increase(
                    &with_le(&cluster),
                    &format!("{CLUSTER_REQUEST_TIME_MS}_bucket"),
                    &selectors,
                    "",
                )
            }),
        }
    });
    let decision_selectors = selectors(
        rollouts
            .iter()
            .map(|r| (r.namespace.as_str(), r.decision_service())),
        DESTINATION_NAMESPACE,
        DESTINATION_SERVICE,
    );
    let event_selectors = selectors(
        rollouts
            .iter()
            .map(|r| (r.namespace.as_str(), r.rollout.as_str())),
        TAG_NAMESPACE,
        TAG_ROLLOUT,
    );
    let rollout_labels = format!("{TAG_NAMESPACE}, {TAG_ROLLOUT}, {TAG_VERSION}, {TAG_EVENT}");
    Queries {
        istio,
        istio_pods,
        clusters,
        decisions: increase(&destination, DECISIONS_TOTAL, &decision_selectors, ""),
        events: needed
            .events
            .then(|| increase(&rollout_labels, EVENTS_TOTAL, &event_selectors, "")),
    }
}

/// One label selector (without braces) per namespace, matching exactly the names asked for in
/// it: `cohort_namespace="shop",cohort_rollout=~"web|api"`. The namespace is an escaped string
/// literal; each name is regex-escaped, then escaped as a literal. Nothing asked: one selector
/// that matches no series (every one has a name).
fn selectors<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    namespace_label: &str,
    name_label: &str,
) -> Vec<String> {
    grouped(pairs)
        .iter()
        .map(|(namespace, names)| {
            format!(
                "{namespace_label}=\"{}\",{name_label}=~\"{}\"",
                escape_label_value(namespace),
                alternatives(names)
            )
        })
        .collect()
}

/// Names by namespace, regex-escaped, each once, in the order asked; at least one namespace.
fn grouped<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeMap<&'a str, Vec<String>> {
    let mut by_namespace: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (namespace, name) in pairs {
        let names = by_namespace.entry(namespace).or_default();
        let name = regex_escape(name);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if by_namespace.is_empty() {
        by_namespace.insert("", Vec::new());
    }
    by_namespace
}

/// Regex-escaped names as one escaped `=~` literal's content.
fn alternatives(names: &[String]) -> String {
    escape_label_value(&names.join("|"))
}

/// The Istio selectors: destination-reported series of exactly the asked services of each
/// namespace, of the versions compared there.
fn istio_selectors(rollouts: &[SeriesRequest]) -> Vec<String> {
    let istio = || {
        rollouts.iter().filter_map(|rollout| match &rollout.served {
            Served::Istio { namespace, service } => Some((rollout, namespace, service)),
            Served::EnvoyClusters { .. } => None,
        })
    };
    let services =
        grouped(istio().map(|(_, namespace, service)| (namespace.as_str(), service.as_str())));
    let versions = grouped(istio().flat_map(|(rollout, namespace, _)| {
        [
            (namespace.as_str(), rollout.stable_version.as_str()),
            (namespace.as_str(), rollout.canary_version.as_str()),
        ]
    }));
    services
        .iter()
        .map(|(namespace, services)| {
            let versions = versions.get(namespace).map(Vec::as_slice).unwrap_or_default();
            format!(
                "{ISTIO_REPORTER}=\"destination\",{DESTINATION_NAMESPACE}=\"{}\",{DESTINATION_SERVICE}=~\"{}\",{DESTINATION_VERSION}=~\"{}\"",
                escape_label_value(namespace),
                alternatives(services),
                alternatives(versions),
            )
        })
        .collect()
}

/// The cluster selector: every cluster a rollout on Envoy clusters compares, each once.
fn cluster_selector(rollouts: &[SeriesRequest]) -> String {
    let mut clusters: Vec<String> = rollouts
        .iter()
        .filter_map(|rollout| match &rollout.served {
            Served::EnvoyClusters { stable, canary } => Some([stable, canary]),
            Served::Istio { .. } => None,
        })
        .flatten()
        .map(|cluster| regex_escape(cluster))
        .collect();
    clusters.sort();
    clusters.dedup();
    format!("{CLUSTER_NAME}=~\"{}\"", alternatives(&clusters))
}

/// Every custom gate's query, rendered per rollout and version (or why it cannot be).
pub fn custom_queries(
    rollouts: &[SeriesRequest],
    window: Duration,
) -> Vec<(CustomKey, Result<String, String>)> {
    let mut out = Vec::new();
    for rollout in rollouts {
        for gate in &rollout.gates {
            let GateCheck::Custom(custom) = &gate.check else {
                continue;
            };
            for version in [&rollout.canary_version, &rollout.stable_version] {
                let context = QueryContext {
                    namespace: &rollout.namespace,
                    rollout: &rollout.rollout,
                    version,
                    interval: window,
                };
                let rendered = render_query(&custom.query, &context)
                    .map_err(|error| format!("the query template {error}"));
                let key = CustomKey {
                    rollout: rollout.key(),
                    gate: gate.name(),
                    version: version.clone(),
                };
                out.push((key, rendered));
            }
        }
    }
    out
}

/// `text` with RE2 metacharacters escaped, for a `=~` matcher that must match it literally.
pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The series of an instant-vector answer (a scalar reads as one unlabelled series).
pub fn series_of(data: &Data) -> Answer {
    match data {
        Data::Vector(vector) => Ok(vector
            .iter()
            .map(|instant| Series {
                labels: instant
                    .metric()
                    .iter()
                    .filter(|(name, _)| name.as_str() != "__name__")
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
                value: instant.sample().value(),
            })
            .collect()),
        Data::Scalar(sample) => Ok(vec![Series {
            labels: BTreeMap::new(),
            value: sample.value(),
        }]),
        Data::Matrix(_) => Err("the query returned a range vector; use an instant query".into()),
    }
}

/// The one number a custom query must return: `None` for an empty answer.
pub fn number_of(data: &Data) -> Result<Option<f64>, String> {
    let series = series_of(data)?;
    match series.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.value)),
        many => Err(format!(
            "the query returned {} series; a custom gate's query must return one number \
             (aggregate it, e.g. with sum() or max())",
            many.len()
        )),
    }
}

#[cfg(test)]
mod drills;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::series::tests::{all_gates, istio_request, request, shop};
    use crate::source::RolloutKey;
    use cohort_rollout::crd::{CustomGate, GateSpec};
    use cohort_rollout::evaluate::Observed;

    const DESTINATION: &str =
        "destination_service_namespace, destination_service_name, destination_version";

    #[test]
    fn shared_queries_cover_all_rollouts_at_once() {
        let rollouts = [
            request("web", all_gates()),
            request("api", Vec::new()),
            istio_request("cart", "cart-svc", all_gates()),
            istio_request("pay", "pay-svc", Vec::new()),
        ];
        let q = queries(&rollouts, Duration::from_secs(30));
        let istio = q.istio.unwrap();
        let istio_selector = r#"reporter="destination",destination_service_namespace="shop",destination_service_name=~"cart-svc|pay-svc",destination_version=~"v1|v2""#;
        assert_eq!(
            istio.requests,
            format!(
                "sum by ({DESTINATION}, cohort_unit) (increase(istio_requests_total{{{istio_selector}}}[30s]))"
            )
        );
        assert_eq!(
            istio.server_errors,
            format!("sum by ({DESTINATION}, cohort_unit) (increase(istio_requests_total{{{istio_selector},response_code=~\"5..\"}}[30s]))")
        );
        assert_eq!(
            istio.latency,
            Some(format!("sum by ({DESTINATION}, cohort_unit, le) (increase(istio_request_duration_milliseconds_bucket{{{istio_selector}}}[30s]))"))
        );
        // The same by the serving Pod, in queries of their own.
        let pods = q.istio_pods.unwrap();
        assert_eq!(
            pods.requests,
            format!(
                "sum by ({DESTINATION}, pod) (increase(istio_requests_total{{{istio_selector}}}[30s]))"
            )
        );
        assert_eq!(
            pods.server_errors,
            format!("sum by ({DESTINATION}, pod) (increase(istio_requests_total{{{istio_selector},response_code=~\"5..\"}}[30s]))")
        );
        assert_eq!(
            pods.latency,
            Some(format!("sum by ({DESTINATION}, pod, le) (increase(istio_request_duration_milliseconds_bucket{{{istio_selector}}}[30s]))"))
        );
        let clusters = q.clusters.unwrap();
        let cluster_selector = r#"envoy_cluster_name=~"shop-api-canary|shop-api-stable|shop-web-canary|shop-web-stable""#;
        assert_eq!(
            clusters.requests,
            format!("sum by (envoy_cluster_name) (increase(envoy_cluster_upstream_rq_total{{{cluster_selector}}}[30s]))")
        );
        assert_eq!(
            clusters.server_errors,
            format!("sum by (envoy_cluster_name) (increase(envoy_cluster_upstream_rq_xx{{{cluster_selector},envoy_response_code_class=\"5\"}}[30s]))")
        );
        assert_eq!(
            clusters.latency,
            Some(format!("sum by (envoy_cluster_name, le) (increase(envoy_cluster_upstream_rq_time_bucket{{{cluster_selector}}}[30s]))"))
        );
        assert_eq!(
            q.decisions,
            format!(
                r#"sum by ({DESTINATION}) (increase(cohort_decisions_total{{destination_service_namespace="shop",destination_service_name=~"web|api|cart-svc|pay-svc"}}[30s]))"#
            )
        );
        assert_eq!(
            q.events.as_deref(),
            Some(
                r#"sum by (cohort_namespace, cohort_rollout, cohort_version, cohort_event) (increase(cohort_events_total{cohort_namespace="shop",cohort_rollout=~"web|api|cart|pay"}[30s]))"#
            )
        );
    }

    #[test]
    fn each_namespace_gets_a_selector_of_its_own() {
        let in_namespace = |namespace: &str, rollout: &str| {
            let mut request = istio_request(rollout, rollout, Vec::new());
            request.namespace = namespace.to_owned();
            request.served = Served::Istio {
                namespace: namespace.to_owned(),
                service: rollout.to_owned(),
            };
            request
        };
        let rollouts = [
            in_namespace("shop", "web"),
            in_namespace("billing", "web"),
            in_namespace("shop", "api"),
            in_namespace("", "web"),
            // Asked twice: named once.
            in_namespace("shop", "web"),
        ];
        let q = queries(&rollouts, Duration::from_secs(30));
        assert_eq!(q.clusters, None);
        let one = |namespace: &str, services: &str| {
            format!("increase(istio_requests_total{{reporter=\"destination\",destination_service_namespace=\"{namespace}\",destination_service_name=~\"{services}\",destination_version=~\"v1|v2\"}}[30s])")
        };
        assert_eq!(
            q.istio.unwrap().requests,
            format!(
                "sum by ({DESTINATION}, cohort_unit) ({} or {} or {})",
                one("", "web"),
                one("billing", "web"),
                one("shop", "web|api")
            )
        );
        let pods = q.istio_pods.unwrap();
        assert_eq!(
            pods.requests,
            format!(
                "sum by ({DESTINATION}, pod) ({} or {} or {})",
                one("", "web"),
                one("billing", "web"),
                one("shop", "web|api")
            )
        );
        // No latency gate: no latency query, by unit or by Pod.
        assert_eq!(pods.latency, None);
        assert_eq!(
            q.decisions,
            format!(
                r#"sum by ({DESTINATION}) (increase(cohort_decisions_total{{destination_service_namespace="",destination_service_name=~"web"}}[30s]) or increase(cohort_decisions_total{{destination_service_namespace="billing",destination_service_name=~"web"}}[30s]) or increase(cohort_decisions_total{{destination_service_namespace="shop",destination_service_name=~"web|api"}}[30s]))"#
            )
        );
        // Never an empty `sum by (…) ()`: with nothing asked, a selector that matches nothing.
        let nothing = queries(&[], Duration::from_secs(30));
        assert_eq!(
            nothing.decisions,
            format!(
                r#"sum by ({DESTINATION}) (increase(cohort_decisions_total{{destination_service_namespace="",destination_service_name=~""}}[30s]))"#
            )
        );
        assert_eq!(
            (nothing.istio, nothing.clusters, nothing.events),
            (None, None, None)
        );
        assert_eq!(nothing.istio_pods, None);
    }

    /// The versions an Istio selector takes are the ones the rollouts of its namespace compare.
    #[test]
    fn istio_selectors_take_each_namespace_s_versions() {
        let mut blue_green = istio_request("web", "web", Vec::new());
        blue_green.stable_version = "blue".into();
        blue_green.canary_version = "green".into();
        let mut elsewhere = istio_request("api", "api", Vec::new());
        elsewhere.namespace = "billing".into();
        elsewhere.served = Served::Istio {
            namespace: "billing".into(),
            service: "api".into(),
        };
        let rollouts = [
            blue_green,
            istio_request("cart", "cart", Vec::new()),
            elsewhere,
        ];
        let requests = queries(&rollouts, Duration::from_secs(60))
            .istio
            .unwrap()
            .requests;
        assert!(
            requests.contains(r#"destination_service_namespace="shop",destination_service_name=~"web|cart",destination_version=~"blue|green|v1|v2""#),
            "{requests}"
        );
        assert!(
            requests.contains(r#"destination_service_namespace="billing",destination_service_name=~"api",destination_version=~"v1|v2""#),
            "{requests}"
        );
    }

    /// `shop/checkout` and `billing/checkout` on Istio: their queries are the same but for the
    /// namespace matchers.
    #[test]
    fn same_named_rollouts_differ_only_by_the_namespace_matcher() {
        let window = Duration::from_secs(30);
        let in_namespace = |namespace: &str| {
            let mut request = istio_request("checkout", "checkout", all_gates());
            request.namespace = namespace.to_owned();
            request.served = Served::Istio {
                namespace: namespace.to_owned(),
                service: "checkout".to_owned(),
            };
            queries(&[request], window)
        };
        let (shop_q, billing_q) = (in_namespace("shop"), in_namespace("billing"));
        let (shop_istio, billing_istio) = (shop_q.istio.unwrap(), billing_q.istio.unwrap());
        let (shop_pods, billing_pods) = (shop_q.istio_pods.unwrap(), billing_q.istio_pods.unwrap());
        let pairs = [
            (Some(shop_pods.requests), Some(billing_pods.requests)),
            (
                Some(shop_pods.server_errors),
                Some(billing_pods.server_errors),
            ),
            (shop_pods.latency, billing_pods.latency),
            (Some(shop_istio.requests), Some(billing_istio.requests)),
            (
                Some(shop_istio.server_errors),
                Some(billing_istio.server_errors),
            ),
            (shop_istio.latency, billing_istio.latency),
            (Some(shop_q.decisions), Some(billing_q.decisions)),
            (shop_q.events, billing_q.events),
        ];
        for (shop_query, billing_query) in pairs {
            let (shop_query, billing_query) = (shop_query.unwrap(), billing_query.unwrap());
            assert_ne!(shop_query, billing_query);
            assert_eq!(shop_query.matches(r#"namespace="shop""#).count(), 1);
            assert_eq!(
                shop_query.replace(r#"namespace="shop""#, r#"namespace="billing""#),
                billing_query
            );
        }
    }

    #[test]
    fn only_needed_kinds_are_queried_and_names_are_escaped() {
        let q = queries(&[request("a.b", Vec::new())], Duration::from_millis(2500));
        let clusters = q.clusters.unwrap();
        assert_eq!(
            clusters.requests,
            r#"sum by (envoy_cluster_name) (increase(envoy_cluster_upstream_rq_total{envoy_cluster_name=~"shop-a\\.b-canary|shop-a\\.b-stable"}[2500ms]))"#
        );
        assert_eq!(
            q.decisions,
            format!(
                r#"sum by ({DESTINATION}) (increase(cohort_decisions_total{{destination_service_namespace="shop",destination_service_name=~"a\\.b"}}[2500ms]))"#
            )
        );
        assert_eq!((clusters.latency, q.istio, q.events), (None, None, None));
        assert_eq!(q.istio_pods, None);
        assert_eq!(regex_escape("x|y.*"), r"x\|y\.\*");
    }

    /// The regex a lexed `=~` literal holds, anchored as Prometheus anchors it.
    fn anchored(literal: &str) -> regex::Regex {
        regex::Regex::new(&format!("^(?:{literal})$"))
            .unwrap_or_else(|e| panic!("{literal:?}: {e}"))
    }

    /// Whatever a rollout's (or a cluster's) name holds, the shared queries keep their shape,
    /// each `=~` matcher is one string literal, and its regex (anchored, as Prometheus anchors
    /// it) matches exactly the names asked for: no quote, brace or regex metacharacter in a name
    /// widens it.
    #[test]
    fn hostile_rollout_names_cannot_alter_the_shared_queries() {
        use cohort_rollout::query::lexer::lex;
        let mut names: Vec<&str> = cohort_rollout::query::tests::HOSTILE.to_vec();
        names.extend([
            "a.b", "a+", "(x)", "[ab]", "x{2}", "^a$", "a|b", "a\\d", "-",
        ]);
        for name in names {
            let rollouts = [request(name, all_gates()), request("web", Vec::new())];
            let q = queries(&rollouts, Duration::from_secs(30));
            let clusters = q.clusters.unwrap();
            let shapes = [
                (&q.decisions, format!("sum by ({DESTINATION}) (increase(cohort_decisions_total{{destination_service_namespace=$,destination_service_name=~$}}[30s]))"), 2),
                (&q.events.clone().unwrap(), "sum by (cohort_namespace, cohort_rollout, cohort_version, cohort_event) (increase(cohort_events_total{cohort_namespace=$,cohort_rollout=~$}[30s]))".to_owned(), 2),
                (&clusters.requests, "sum by (envoy_cluster_name) (increase(envoy_cluster_upstream_rq_total{envoy_cluster_name=~$}[30s]))".to_owned(), 1),
                (&clusters.server_errors, "sum by (envoy_cluster_name) (increase(envoy_cluster_upstream_rq_xx{envoy_cluster_name=~$,envoy_response_code_class=$}[30s]))".to_owned(), 2),
                (&clusters.latency.clone().unwrap(), "sum by (envoy_cluster_name, le) (increase(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~$}[30s]))".to_owned(), 1),
            ];
            let mut regexes = Vec::new();
            for (query, shape, literals) in shapes {
                let lexed = lex(query)
                    .unwrap_or_else(|e| panic!("{name:?}: Prometheus refuses {query}: {e}"));
                assert_eq!(lexed.shape, shape, "{name:?} changed the query: {query}");
                assert_eq!(lexed.strings.len(), literals);
                if literals == 2 && lexed.strings[0] == "shop" {
                    regexes.push((
                        lexed.strings[1].clone(),
                        vec![name.to_owned(), "web".to_owned()],
                    ));
                } else {
                    let clusters = [name, "web"]
                        .iter()
                        .flat_map(|r| ["canary", "stable"].map(|v| format!("shop-{r}-{v}")))
                        .collect();
                    regexes.push((lexed.strings[0].clone(), clusters));
                }
            }
            for (literal, wanted) in regexes {
                let matcher = anchored(&literal);
                for name in &wanted {
                    assert!(matcher.is_match(name), "{literal:?} misses {name:?}");
                }
                let near_misses = wanted.iter().flat_map(|name| {
                    [
                        format!("{name}x"),
                        format!("x{name}"),
                        name.replace(|c: char| !c.is_alphanumeric(), "x"),
                    ]
                });
                for other in
                    near_misses.chain(["webweb".to_owned(), "other".to_owned(), String::new()])
                {
                    if !wanted.contains(&other) {
                        assert!(!matcher.is_match(&other), "{literal:?} takes {other:?}");
                    }
                }
            }
        }
    }

    /// Whatever a namespace holds (a rollout file for `cohort run` can say anything), it stays
    /// one string literal of an `=` matcher that reads back as the namespace: quotes, braces,
    /// `=~`, backslashes and regex metacharacters neither end the selector nor widen it.
    #[test]
    fn hostile_namespaces_cannot_alter_the_shared_queries() {
        use cohort_rollout::query::lexer::lex;
        let mut namespaces: Vec<&str> = cohort_rollout::query::tests::HOSTILE.to_vec();
        namespaces.extend([".*", "a|b", "x\\", "\"} or vector(1) or {a=\""]);
        let on_istio = |namespace: &str, name: &str| {
            let mut request = istio_request(name, name, all_gates());
            request.namespace = namespace.to_owned();
            request.served = Served::Istio {
                namespace: namespace.to_owned(),
                service: name.to_owned(),
            };
            request
        };
        for namespace in namespaces {
            let rollouts = [on_istio(namespace, "web"), on_istio("zzz", "api")];
            let q = queries(&rollouts, Duration::from_secs(30));
            // The selectors come in namespace order: compare them as a set.
            let selectors = |strings: Vec<String>, per_selector: usize| {
                let mut chunks: Vec<Vec<String>> = strings
                    .chunks(per_selector)
                    .map(<[String]>::to_vec)
                    .collect();
                chunks.sort();
                chunks
            };
            let expected = |before: &[&str], after: &[&str]| {
                let mut chunks: Vec<Vec<String>> = [[namespace, "web"], ["zzz", "api"]]
                    .iter()
                    .map(|pair| {
                        before
                            .iter()
                            .chain(pair)
                            .chain(after)
                            .map(|s| (*s).to_owned())
                            .collect()
                    })
                    .collect();
                chunks.sort();
                chunks
            };
            let istio = q.istio.unwrap();
            let one = "increase(istio_requests_total{reporter=$,destination_service_namespace=$,destination_service_name=~$,destination_version=~$}[30s])";
            let lexed = lex(&istio.requests).unwrap_or_else(|e| {
                panic!("{namespace:?}: Prometheus refuses {}: {e}", istio.requests)
            });
            assert_eq!(
                lexed.shape,
                format!("sum by ({DESTINATION}, cohort_unit) ({one} or {one})")
            );
            assert_eq!(
                selectors(lexed.strings, 4),
                expected(&["destination"], &["v1|v2"]),
                "{}",
                istio.requests
            );
            let lexed = lex(&istio.server_errors).unwrap();
            assert_eq!(
                selectors(lexed.strings, 5),
                expected(&["destination"], &["v1|v2", "5.."])
            );
            let lexed = lex(&istio.latency.unwrap()).unwrap();
            assert_eq!(
                selectors(lexed.strings, 4),
                expected(&["destination"], &["v1|v2"])
            );
            let pods = q.istio_pods.unwrap();
            let bucket = one.replace(
                "istio_requests_total",
                "istio_request_duration_milliseconds_bucket",
            );
            let one_5xx = one.replace("}[30s]", ",response_code=~$}[30s]");
            for (query, shape, per_selector, after) in [
                (
                    &pods.requests,
                    format!("sum by ({DESTINATION}, pod) ({one} or {one})"),
                    4,
                    &["v1|v2"][..],
                ),
                (
                    &pods.server_errors,
                    format!("sum by ({DESTINATION}, pod) ({one_5xx} or {one_5xx})"),
                    5,
                    &["v1|v2", "5.."][..],
                ),
                (
                    &pods.latency.unwrap(),
                    format!("sum by ({DESTINATION}, pod, le) ({bucket} or {bucket})"),
                    4,
                    &["v1|v2"][..],
                ),
            ] {
                let lexed = lex(query)
                    .unwrap_or_else(|e| panic!("{namespace:?}: Prometheus refuses {query}: {e}"));
                assert_eq!(lexed.shape, shape, "{query}");
                assert_eq!(
                    selectors(lexed.strings, per_selector),
                    expected(&["destination"], after),
                    "{query}"
                );
            }
            for query in [q.decisions, q.events.unwrap()] {
                let lexed = lex(&query).unwrap();
                assert_eq!(selectors(lexed.strings, 2), expected(&[], &[]), "{query}");
            }
        }
    }

    /// One shared cycle, through the real Prometheus source (a fake server answers every query
    /// with the series of both namespaces, as Prometheus would for the joint query):
    /// `shop/checkout` and `billing/checkout` each get their own samples, from one query per kind.
    #[tokio::test]
    async fn same_named_rollouts_get_their_own_samples_from_one_shared_cycle() {
        use crate::source::shared::SharedCycle;
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let series = |namespace: &str, version: &str, value: u32| {
            serde_json::json!({
                "metric": {"destination_service_namespace": namespace, "destination_service_name": "checkout", "destination_version": version},
                "value": [1.7e9, value.to_string()]
            })
        };
        let body =
            serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
                series("shop", "v2", 100), series("shop", "v1", 1000),
                series("billing", "v2", 7), series("billing", "v1", 70),
            ]}})
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0u8; 64 * 1024];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]).into_owned();
                let target = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                let query = reqwest::Url::parse(&format!("http://x{target}"))
                    .ok()
                    .and_then(|url| {
                        url.query_pairs()
                            .find(|(key, _)| key == "query")
                            .map(|(_, value)| value.into_owned())
                    })
                    .unwrap_or(target);
                log.lock().unwrap().push(query);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });

        let source = PrometheusSource::new(&url, Duration::from_secs(5)).unwrap();
        let shared = SharedCycle::new(source, Duration::from_secs(600));
        let window = Duration::from_secs(30);
        let in_namespace = |namespace: &str| {
            let mut request = istio_request("checkout", "checkout", Vec::new());
            request.namespace = namespace.to_owned();
            request.served = Served::Istio {
                namespace: namespace.to_owned(),
                service: "checkout".to_owned(),
            };
            request
        };
        let shop_checkout = in_namespace("shop");
        let billing_checkout = in_namespace("billing");
        // Both become known; the next cycle asks for both at once.
        shared
            .samples(window, std::slice::from_ref(&shop_checkout))
            .await;
        shared
            .samples(window, std::slice::from_ref(&billing_checkout))
            .await;
        let first_cycle = asked.lock().unwrap().len();
        assert_eq!(
            first_cycle, 5,
            "requests and 5xx by unit and by Pod, and decisions, for shop/checkout"
        );
        shared.forget_answers().await;
        let shop_samples = shared
            .samples(window, std::slice::from_ref(&shop_checkout))
            .await;
        let billing_samples = shared
            .samples(window, std::slice::from_ref(&billing_checkout))
            .await;
        let mut queries_sent = asked.lock().unwrap()[first_cycle..].to_vec();
        assert_eq!(
            queries_sent.len(),
            5,
            "one query per kind for both: {queries_sent:?}"
        );
        let joint = queries(&[billing_checkout.clone(), shop_checkout.clone()], window);
        let joint_istio = joint.istio.unwrap();
        let joint_pods = joint.istio_pods.unwrap();
        let mut expected = [
            joint_istio.requests,
            joint_istio.server_errors,
            joint_pods.requests,
            joint_pods.server_errors,
            joint.decisions,
        ];
        queries_sent.sort();
        expected.sort();
        assert_eq!(queries_sent, expected);

        let shop_key = RolloutKey::new("shop", "checkout");
        let billing_key = RolloutKey::new("billing", "checkout");
        assert_eq!(shop_samples.keys().collect::<Vec<_>>(), [&shop_key]);
        assert_eq!(billing_samples.keys().collect::<Vec<_>>(), [&billing_key]);
        let (shop_s, billing_s) = (&shop_samples[&shop_key], &billing_samples[&billing_key]);
        assert_eq!(shop_s.canary.requests, Observed::Value(100.0));
        assert_eq!(shop_s.stable.requests, Observed::Value(1000.0));
        assert_eq!(shop_s.canary.decisions, Observed::Value(100.0));
        assert_eq!(billing_s.canary.requests, Observed::Value(7.0));
        assert_eq!(billing_s.stable.requests, Observed::Value(70.0));
        assert_eq!(billing_s.stable.decisions, Observed::Value(70.0));
        assert_ne!(shop_s, billing_s);
    }

    #[test]
    fn custom_queries_run_per_rollout_and_version() {
        let mut gates = all_gates();
        gates.push(GateSpec {
            name: Some("broken".into()),
            min_samples: None,
            check: GateCheck::Custom(CustomGate {
                query: "x{{pod}}".into(),
                min: None,
                max: None,
            }),
        });
        gates[3].check = GateCheck::Custom(CustomGate {
            query:
                r#"max(rate(x{ns="{{namespace}}",r="{{rollout}}",v="{{version}}"}[{{interval}}]))"#
                    .into(),
            min: None,
            max: Some(1.0),
        });
        let rendered = custom_queries(&[request("web", gates)], Duration::from_secs(2));
        let table: Vec<(String, String, Result<String, String>)> = rendered
            .into_iter()
            .map(|(key, query)| (key.gate, key.version, query))
            .collect();
        assert_eq!(table.len(), 4);
        assert_eq!(
            table[0],
            (
                "cpu".to_owned(),
                "canary".to_owned(),
                Ok(r#"max(rate(x{ns="shop",r="web",v="canary"}[2s]))"#.to_owned())
            )
        );
        assert_eq!(table[1].1, "stable");
        assert_eq!(
            table[1].2.as_deref(),
            Ok(r#"max(rate(x{ns="shop",r="web",v="stable"}[2s]))"#)
        );
        assert!(table[2].2.as_ref().is_err_and(|e| e.contains("{{pod}}")));
    }

    fn data(json: serde_json::Value) -> Data {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn answers_map_to_series_and_numbers() {
        // The `data` object of Prometheus' /api/v1/query answer, as the server sends it.
        let vector = data(serde_json::json!({
            "resultType": "vector",
            "result": [
                {"metric": {"envoy_cluster_name": "shop-web-canary"}, "value": [1.7e9, "12.5"]},
                {"metric": {"__name__": "x", "envoy_cluster_name": "shop-web-stable"}, "value": [1.7e9, "300"]}
            ]
        }));
        let series = series_of(&vector).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[0],
            Series::new(&[("envoy_cluster_name", "shop-web-canary")], 12.5)
        );
        assert!(!series[1].labels.contains_key("__name__"));
        assert!(number_of(&vector)
            .unwrap_err()
            .contains("returned 2 series"));

        let empty = data(serde_json::json!({"resultType": "vector", "result": []}));
        assert_eq!(series_of(&empty), Ok(Vec::new()));
        assert_eq!(number_of(&empty), Ok(None));
        let scalar = data(serde_json::json!({"resultType": "scalar", "result": [1.7e9, "0.25"]}));
        assert_eq!(number_of(&scalar), Ok(Some(0.25)));
        let matrix = data(serde_json::json!({"resultType": "matrix", "result": []}));
        assert!(series_of(&matrix).is_err());

        // End to end through the shared mapping.
        let answers = Answers {
            istio: None,
            istio_pods: None,
            clusters: Some(ServedAnswers {
                requests: series_of(&vector),
                server_errors: series_of(&empty),
                latency: None,
            }),
            decisions: series_of(&empty),
            events: None,
            custom: BTreeMap::new(),
        };
        let samples = to_samples(&[request("web", Vec::new())], &answers);
        assert_eq!(samples[&shop("web")].canary.requests, Observed::Value(12.5));
        assert_eq!(
            samples[&shop("web")].stable.requests,
            Observed::Value(300.0)
        );
        assert_eq!(samples[&shop("web")].canary.server_errors, Observed::NoData);
        assert_eq!(samples[&shop("web")].canary.decisions, Observed::NoData);
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_every_sample() {
        // Port 9 (discard) on loopback: nothing listens in the test environment.
        let source = PrometheusSource::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let rollouts = [
            request("web", all_gates()),
            istio_request("cart", "cart", all_gates()),
        ];
        let samples = source.samples(Duration::from_secs(30), &rollouts).await;
        for key in [shop("web"), shop("cart")] {
            let samples = &samples[&key];
            let Observed::Failed(reason) = &samples.canary.requests else {
                panic!("expected a failure, got {:?}", samples.canary.requests);
            };
            assert!(reason.contains("127.0.0.1:9"), "{reason}");
            assert!(matches!(samples.stable.latency_ms, Observed::Failed(_)));
            assert!(matches!(samples.stable.decisions, Observed::Failed(_)));
            assert!(matches!(
                samples.canary.events["checkout"],
                Observed::Failed(_)
            ));
        }
        assert!(matches!(
            samples[&shop("web")].canary.custom["cpu"],
            Observed::Failed(_)
        ));
        assert!(PrometheusSource::new("not a url", Duration::from_secs(1)).is_err());
    }
}
