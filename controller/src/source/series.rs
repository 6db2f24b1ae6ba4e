//! What both metric sources share: labelled series (as a PromQL instant vector or a differenced
//! Envoy scrape gives them) and the one mapping from those series to each rollout's [`Samples`].
//!
//! Keeping the mapping here means the Prometheus and the Envoy-admin source cannot disagree on
//! what "canary's 5xx count" or "stable's latency histogram" is; each only has to produce
//! [`Answers`].
//!
//! What a version served is read where [`Served`] says: Istio's destination-reported metrics of
//! the service (`destination_service_namespace`, `destination_service_name`,
//! `destination_version`), or the upstream stats of the version's Envoy cluster
//! (`envoy_cluster_name`). What the filter decided for it is `cohort_decisions_total`, tagged
//! with the same three `destination_*` labels. Business events stay the filter's
//! (`cohort_namespace`, `cohort_rollout`, `cohort_version`).

use std::collections::BTreeMap;

use cohort_core::telemetry::{TAG_EVENT, TAG_NAMESPACE, TAG_ROLLOUT, TAG_VERSION};

use crate::source::{
    RolloutKey, SamplesByRollout, SeriesRequest, CLUSTER_NAME, CLUSTER_RESPONSE_CLASS,
    DESTINATION_NAMESPACE, DESTINATION_SERVICE, DESTINATION_VERSION, POD, UNIT,
};
use cohort_rollout::compiled::Served;
use cohort_rollout::crd::{GateCheck, GateSpec};
use cohort_rollout::evaluate::{Bucket, Observed, Samples, UnitSamples, VersionSamples};

/// Envoy's status class counted as a server error (`envoy_response_code_class`).
pub const SERVER_ERROR_CLASS: &str = "5";
/// The histogram bucket label.
pub const LE: &str = "le";

/// One series of a window: its labels and its increase over the window (or a query's value).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label names and values (the metric name is not among them).
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Series {
    /// A series with `labels`.
    pub fn new(labels: &[(&str, &str)], value: f64) -> Self {
        Series {
            labels: labels
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            value,
        }
    }

    /// The value of label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Whether the series is `rollout`'s, of `version`, by the filter's `cohort_*` labels. An
    /// absent `cohort_namespace` label is the empty namespace, as Prometheus has it (Envoy
    /// exports an empty tag as `""`).
    fn is_of(&self, rollout: &RolloutKey, version: &str) -> bool {
        self.label(TAG_NAMESPACE).unwrap_or("") == rollout.namespace
            && self.label(TAG_ROLLOUT) == Some(rollout.name.as_str())
            && self.label(TAG_VERSION) == Some(version)
    }

    /// Whether the series is tagged with this destination (Istio's labels, and the filter's
    /// decisions); an absent namespace label is the empty namespace.
    fn is_destination(&self, namespace: &str, service: &str, version: &str) -> bool {
        self.label(DESTINATION_NAMESPACE).unwrap_or("") == namespace
            && self.label(DESTINATION_SERVICE) == Some(service)
            && self.label(DESTINATION_VERSION) == Some(version)
    }
}

/// What one read returned: the series, or why the read failed.
pub type Answer = Result<Vec<Series>, String>;

/// Identifies one custom query result: rollout, gate name, version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CustomKey {
    /// The rollout (`cohort_namespace`, `cohort_rollout`).
    pub rollout: RolloutKey,
    /// The gate's name.
    pub gate: String,
    /// The version the query was rendered for.
    pub version: String,
}

/// What one kind of served metrics answered: Istio's by destination, or Envoy clusters' by
/// `envoy_cluster_name`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedAnswers {
    /// Requests served (any code).
    pub requests: Answer,
    /// The same, 5xx only.
    pub server_errors: Answer,
    /// Request-duration bucket increases, with `le`; `None` when no gate of a rollout of this
    /// kind reads latency (not read).
    pub latency: Option<Answer>,
}

/// Everything a source read for one window, for every rollout at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    /// Istio's served metrics by `destination_service_namespace`, `destination_service_name`
    /// and `destination_version` (and `cohort_unit`); `None` when no rollout reads Istio's (not
    /// read).
    pub istio: Option<ServedAnswers>,
    /// The same by `destination_*` and the serving Pod's `pod` label instead of the unit; `None`
    /// when not read (no rollout reads Istio's, or the source cannot split them by Pod).
    pub istio_pods: Option<ServedAnswers>,
    /// Envoy clusters' upstream stats by `envoy_cluster_name`; `None` when no rollout reads
    /// clusters (not read).
    pub clusters: Option<ServedAnswers>,
    /// `cohort_decisions_total` increases by the three `destination_*` labels.
    pub decisions: Answer,
    /// Business event increases by rollout, version and `cohort_event`; `None` when no gate
    /// needs events (not read).
    pub events: Option<Answer>,
    /// Custom query results: a number, no number (`None`), or why the query failed.
    pub custom: BTreeMap<CustomKey, Result<Option<f64>, String>>,
}

/// Which series kinds some of the rollouts need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needed {
    /// A rollout reads Istio's served metrics.
    pub istio: bool,
    /// ... and one of those has a gate reading latency.
    pub istio_latency: bool,
    /// A rollout reads Envoy clusters' upstream stats.
    pub clusters: bool,
    /// ... and one of those has a gate reading latency.
    pub clusters_latency: bool,
    /// A gate reads business events.
    pub events: bool,
}

/// Which series kinds any of `rollouts` needs. Served requests and decisions are read for
/// every rollout, gates or not: the routing check compares them.
pub fn needed(rollouts: &[SeriesRequest]) -> Needed {
    let mut needed = Needed::default();
    for rollout in rollouts {
        let latency = rollout.gates.iter().any(|gate| gate.check.reads_latency());
        match rollout.served {
            Served::Istio { .. } => {
                needed.istio = true;
                needed.istio_latency |= latency;
            }
            Served::EnvoyClusters { .. } => {
                needed.clusters = true;
                needed.clusters_latency |= latency;
            }
        }
        needed.events |= rollout
            .gates
            .iter()
            .any(|gate| gate.check.business_event().is_some());
    }
    needed
}

/// Every rollout's samples from what the source read, keyed by namespace and name: a series
/// counts for a rollout only when the labels of its kind match.
pub fn to_samples(rollouts: &[SeriesRequest], answers: &Answers) -> SamplesByRollout {
    rollouts
        .iter()
        .map(|rollout| {
            let samples = Samples {
                canary: version_samples(rollout, Side::Canary, answers),
                stable: version_samples(rollout, Side::Stable, answers),
            };
            (rollout.key(), samples)
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Canary,
    Stable,
}

/// The served series of one version.
enum ServedBy<'a> {
    Istio {
        namespace: &'a str,
        service: &'a str,
        version: &'a str,
    },
    Cluster(&'a str),
}

impl ServedBy<'_> {
    fn matches(&self, series: &Series) -> bool {
        match self {
            ServedBy::Istio {
                namespace,
                service,
                version,
            } => series.is_destination(namespace, service, version),
            ServedBy::Cluster(cluster) => series.label(CLUSTER_NAME) == Some(cluster),
        }
    }
}

fn version_samples(rollout: &SeriesRequest, side: Side, answers: &Answers) -> VersionSamples {
    let key = rollout.key();
    let version = match side {
        Side::Canary => rollout.canary_version.as_str(),
        Side::Stable => rollout.stable_version.as_str(),
    };
    let (served_by, served, what) = match &rollout.served {
        Served::Istio { namespace, service } => (
            ServedBy::Istio {
                namespace,
                service,
                version,
            },
            answers.istio.as_ref(),
            "Istio",
        ),
        Served::EnvoyClusters { stable, canary } => (
            ServedBy::Cluster(match side {
                Side::Canary => canary,
                Side::Stable => stable,
            }),
            answers.clusters.as_ref(),
            "Envoy cluster",
        ),
    };
    let served_total = |answer: Option<&Answer>, kind: &str| match answer {
        Some(answer) => total(answer, |s| served_by.matches(s)),
        None => not_read(&format!("{what} {kind}")),
    };
    let reads_latency = rollout.gates.iter().any(|gate| gate.check.reads_latency());
    let split = |answers: Option<&ServedAnswers>, by: &Split| match (&served_by, answers) {
        (ServedBy::Istio { .. }, Some(answers)) => {
            parts(answers, reads_latency, by, |s| served_by.matches(s))
        }
        _ => Vec::new(),
    };
    let mut samples = VersionSamples {
        units: split(served, &BY_UNIT),
        pods: split(answers.istio_pods.as_ref(), &BY_POD),
        requests: served_total(served.map(|s| &s.requests), "request"),
        server_errors: served_total(served.map(|s| &s.server_errors), "server error"),
        decisions: total(&answers.decisions, |s| {
            s.is_destination(&rollout.namespace, rollout.decision_service(), version)
        }),
        ..VersionSamples::default()
    };
    // By what each gate reads, not by its kind: a sequential gate reads the same series as the
    // threshold gate of its metric.
    for gate in &rollout.gates {
        if gate.check.reads_latency() {
            samples.latency_ms = match served.and_then(|s| s.latency.as_ref()) {
                Some(answer) => histogram(answer, |s| served_by.matches(s)),
                None => not_read(&format!("{what} latency")),
            };
        }
        if let Some(event) = gate.check.business_event() {
            let observed = match &answers.events {
                Some(answer) => total(answer, |s| {
                    s.is_of(&key, version) && s.label(TAG_EVENT) == Some(event)
                }),
                None => not_read("business event"),
            };
            samples.events.insert(event.to_owned(), observed);
        }
        if matches!(gate.check, GateCheck::Custom(_)) {
            let observed = custom(answers, &key, gate, version);
            samples.custom.insert(gate.name(), observed);
        }
    }
    samples
}

/// How a version's samples split into parts: by which label, which of its values name a part,
/// and how many parts there must be for the split to say anything.
struct Split {
    label: &'static str,
    names_a_part: fn(&str) -> bool,
    at_least: usize,
}

/// By unit of users. One unit is no spread: the totals then stand alone.
const BY_UNIT: Split = Split {
    label: UNIT,
    names_a_part: is_unit,
    at_least: 2,
};

/// By the Pod that served. One Pod is kept: the spread between Pods is pooled over both
/// versions, so a one-Pod canary still counts.
const BY_POD: Split = Split {
    label: POD,
    names_a_part: is_pod,
    at_least: 1,
};

/// Whether a `cohort_unit` label value names a unit: requests without the unit header have it
/// empty (Prometheus drops an empty label) or as Istio's `unknown`.
fn is_unit(value: &str) -> bool {
    !value.is_empty() && value != "unknown"
}

/// Whether a `pod` label value names a Pod (an empty one is an absent label to Prometheus).
fn is_pod(value: &str) -> bool {
    !value.is_empty()
}

/// The matching series split `by` its label, one entry per part seen in the requests; series
/// without a part count in the totals only. Nothing when an answer failed or fewer parts than
/// the split needs served.
fn parts(
    served: &ServedAnswers,
    reads_latency: bool,
    by: &Split,
    matches: impl Fn(&Series) -> bool,
) -> Vec<UnitSamples> {
    let (Ok(requests), Ok(server_errors)) = (&served.requests, &served.server_errors) else {
        return Vec::new();
    };
    let latency = match (reads_latency, &served.latency) {
        (false, _) => None,
        (true, Some(Ok(latency))) => Some(latency),
        (true, _) => return Vec::new(),
    };
    let part_of = |s: &Series| {
        s.label(by.label)
            .filter(|part| (by.names_a_part)(part))
            .filter(|_| matches(s))
            .map(str::to_owned)
    };
    let mut by_part: BTreeMap<String, UnitSamples> = BTreeMap::new();
    for s in requests {
        if let Some(part) = part_of(s) {
            let entry = by_part.entry(part.clone()).or_insert_with(|| UnitSamples {
                unit: part,
                ..UnitSamples::default()
            });
            entry.requests += s.value;
        }
    }
    for s in server_errors {
        if let Some(entry) = part_of(s).and_then(|part| by_part.get_mut(&part)) {
            entry.server_errors += s.value;
        }
    }
    if let Some(latency) = latency {
        let mut series_by_part: BTreeMap<String, Vec<&Series>> = BTreeMap::new();
        for s in latency {
            if let Some(part) = part_of(s) {
                series_by_part.entry(part).or_default().push(s);
            }
        }
        for (part, entry) in &mut by_part {
            if let Some(series) = series_by_part.get(part) {
                entry.latency_ms = buckets(series.iter().copied());
            }
        }
    }
    if by_part.len() < by.at_least {
        return Vec::new();
    }
    by_part.into_values().collect()
}

/// The sum of the matching series; no match is no data.
fn total(answer: &Answer, matches: impl Fn(&Series) -> bool) -> Observed<f64> {
    match answer {
        Err(reason) => Observed::Failed(reason.clone()),
        Ok(series) => {
            let mut found = series.iter().filter(|s| matches(s)).peekable();
            if found.peek().is_none() {
                Observed::NoData
            } else {
                Observed::Value(found.map(|s| s.value).sum())
            }
        }
    }
}

/// The buckets of the matching series, equal bounds summed, in bound order.
fn histogram(answer: &Answer, matches: impl Fn(&Series) -> bool) -> Observed<Vec<Bucket>> {
    let series = match answer {
        Err(reason) => return Observed::Failed(reason.clone()),
        Ok(series) => series,
    };
    let buckets = buckets(series.iter().filter(|s| matches(s)));
    if buckets.is_empty() {
        return Observed::NoData;
    }
    Observed::Value(buckets)
}

/// The buckets of `series`, equal bounds summed, in bound order.
fn buckets<'a>(series: impl Iterator<Item = &'a Series>) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    for s in series {
        let Some(le) = s.label(LE).and_then(parse_le) else {
            continue;
        };
        match buckets.iter_mut().find(|bucket| bucket.le == le) {
            Some(bucket) => bucket.count += s.value,
            None => buckets.push(Bucket { le, count: s.value }),
        }
    }
    buckets.sort_by(|a, b| a.le.total_cmp(&b.le));
    buckets
}

/// A bucket bound as Prometheus and Envoy print it: a number or `+Inf`.
pub fn parse_le(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        other => other.parse().ok().filter(|le: &f64| !le.is_nan()),
    }
}

fn custom(
    answers: &Answers,
    rollout: &RolloutKey,
    gate: &GateSpec,
    version: &str,
) -> Observed<f64> {
    let key = CustomKey {
        rollout: rollout.clone(),
        gate: gate.name(),
        version: version.to_owned(),
    };
    match answers.custom.get(&key) {
        Some(Ok(Some(value))) => Observed::Value(*value),
        Some(Ok(None)) | None => Observed::NoData,
        Some(Err(reason)) => Observed::Failed(reason.clone()),
    }
}

/// A series kind the source skipped although a rollout needs it: a bug, reported rather than
/// mistaken for "no traffic".
fn not_read<T>(what: &str) -> Observed<T> {
    Observed::Failed(format!("the {what} series were not read"))
}

/// An error with its causes, so "error sending request" says why ("connection refused").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The 5xx responses among Envoy clusters' responses by class (for the admin source, which
/// reads every class).
pub fn cluster_server_errors(responses_by_class: &[Series]) -> Vec<Series> {
    responses_by_class
        .iter()
        .filter(|s| s.label(CLUSTER_RESPONSE_CLASS) == Some(SERVER_ERROR_CLASS))
        .cloned()
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cohort_rollout::crd::{BusinessEventGate, CustomGate, ErrorRateGate, LatencyGate};

    /// The key of rollout `name` in `shop`, the namespace of [`request`].
    pub(crate) fn shop(name: &str) -> RolloutKey {
        RolloutKey::new("shop", name)
    }

    /// `shop/rollout` served by the Envoy clusters `shop-rollout-stable` and
    /// `shop-rollout-canary`, its decisions tagged `destination_service_name=rollout`.
    pub(crate) fn request(rollout: &str, gates: Vec<GateSpec>) -> SeriesRequest {
        request_in("shop", rollout, gates)
    }

    /// `namespace/rollout` served by the clusters `namespace-rollout-stable` and `…-canary`.
    pub(crate) fn request_in(
        namespace: &str,
        rollout: &str,
        gates: Vec<GateSpec>,
    ) -> SeriesRequest {
        SeriesRequest {
            rollout: rollout.into(),
            namespace: namespace.into(),
            stable_version: "stable".into(),
            canary_version: "canary".into(),
            gates,
            served: Served::EnvoyClusters {
                stable: cluster(namespace, rollout, "stable"),
                canary: cluster(namespace, rollout, "canary"),
            },
        }
    }

    /// The cluster [`request_in`] names for a version.
    pub(crate) fn cluster(namespace: &str, rollout: &str, version: &str) -> String {
        format!("{namespace}-{rollout}-{version}")
    }

    /// `shop/rollout` served by the Istio service `service` in `shop`, versions `v1` (stable)
    /// and `v2` (canary).
    pub(crate) fn istio_request(
        rollout: &str,
        service: &str,
        gates: Vec<GateSpec>,
    ) -> SeriesRequest {
        SeriesRequest {
            rollout: rollout.into(),
            namespace: "shop".into(),
            stable_version: "v1".into(),
            canary_version: "v2".into(),
            gates,
            served: Served::Istio {
                namespace: "shop".into(),
                service: service.into(),
            },
        }
    }

    pub(crate) fn all_gates() -> Vec<GateSpec> {
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
            GateSpec::new(GateCheck::BusinessEvent(BusinessEventGate {
                event: "checkout".into(),
                max_drop: 0.1,
            })),
            GateSpec {
                name: Some("cpu".into()),
                min_samples: None,
                check: GateCheck::Custom(CustomGate {
                    query: "up".into(),
                    min: None,
                    max: Some(1.0),
                }),
            },
        ]
    }

    /// A series of Envoy cluster `cluster`, with more labels.
    fn on_cluster(cluster: &str, more: &[(&str, &str)], value: f64) -> Series {
        let mut labels = vec![(CLUSTER_NAME, cluster)];
        labels.extend_from_slice(more);
        Series::new(&labels, value)
    }

    /// A series labelled with this destination, with more labels.
    fn to(
        namespace: &str,
        service: &str,
        version: &str,
        more: &[(&str, &str)],
        value: f64,
    ) -> Series {
        let mut labels = vec![
            (DESTINATION_NAMESPACE, namespace),
            (DESTINATION_SERVICE, service),
            (DESTINATION_VERSION, version),
        ];
        labels.extend_from_slice(more);
        Series::new(&labels, value)
    }

    fn event(rollout: &str, version: &str, name: &str, value: f64) -> Series {
        Series::new(
            &[
                (TAG_NAMESPACE, "shop"),
                (TAG_ROLLOUT, rollout),
                (TAG_VERSION, version),
                (TAG_EVENT, name),
            ],
            value,
        )
    }

    fn buckets(pairs: &[(f64, f64)]) -> Observed<Vec<Bucket>> {
        Observed::Value(
            pairs
                .iter()
                .map(|&(le, count)| Bucket { le, count })
                .collect(),
        )
    }

    /// Nothing read of anything: a starting point the tests fill.
    fn empty() -> Answers {
        Answers {
            istio: None,
            istio_pods: None,
            clusters: None,
            decisions: Ok(Vec::new()),
            events: None,
            custom: BTreeMap::new(),
        }
    }

    /// Istio's series labelled `cohort_unit` give each version its units, with requests, 5xx
    /// and latency per unit, summed over the units' series; requests without a unit count in
    /// the totals only; Envoy clusters and a failed answer give no units.
    #[test]
    fn istio_series_split_by_unit() {
        let cart = istio_request("cart", "cart-svc", all_gates());
        let web = request("web", all_gates());
        let unit = |value: &'static str| (UNIT, value);
        let answers = Answers {
            istio: Some(ServedAnswers {
                requests: Ok(vec![
                    to("shop", "cart-svc", "v2", &[unit("0")], 30.0),
                    to("shop", "cart-svc", "v2", &[unit("7")], 10.0),
                    // A second series of unit 7 (another pod): summed.
                    to("shop", "cart-svc", "v2", &[unit("7")], 5.0),
                    // No unit header: the totals only.
                    to("shop", "cart-svc", "v2", &[], 2.0),
                    to("shop", "cart-svc", "v2", &[unit("unknown")], 3.0),
                    to("shop", "cart-svc", "v1", &[unit("3")], 400.0),
                    to("shop", "other", "v2", &[unit("0")], 99.0),
                ]),
                server_errors: Ok(vec![
                    to(
                        "shop",
                        "cart-svc",
                        "v2",
                        &[unit("7"), ("response_code", "503")],
                        4.0,
                    ),
                    to(
                        "shop",
                        "cart-svc",
                        "v2",
                        &[unit("7"), ("response_code", "500")],
                        1.0,
                    ),
                ]),
                latency: Some(Ok(vec![
                    to("shop", "cart-svc", "v2", &[unit("0"), (LE, "25")], 20.0),
                    to("shop", "cart-svc", "v2", &[unit("0"), (LE, "+Inf")], 30.0),
                    to("shop", "cart-svc", "v2", &[unit("7"), (LE, "+Inf")], 15.0),
                ])),
            }),
            clusters: Some(ServedAnswers {
                requests: Ok(vec![on_cluster(
                    &cluster("shop", "web", "canary"),
                    &[unit("1")],
                    9.0,
                )]),
                server_errors: Ok(Vec::new()),
                latency: Some(Ok(Vec::new())),
            }),
            ..empty()
        };
        let samples = to_samples(&[cart.clone(), web.clone()], &answers);
        let canary = &samples[&cart.key()].canary;
        assert_eq!(canary.requests, Observed::Value(50.0));
        assert_eq!(
            canary.units,
            vec![
                UnitSamples {
                    unit: "0".into(),
                    requests: 30.0,
                    server_errors: 0.0,
                    latency_ms: vec![
                        Bucket {
                            le: 25.0,
                            count: 20.0
                        },
                        Bucket {
                            le: f64::INFINITY,
                            count: 30.0
                        },
                    ],
                },
                UnitSamples {
                    unit: "7".into(),
                    requests: 15.0,
                    server_errors: 5.0,
                    latency_ms: vec![Bucket {
                        le: f64::INFINITY,
                        count: 15.0
                    }],
                },
            ]
        );
        // One unit is no spread: no units.
        assert_eq!(samples[&cart.key()].stable.units, Vec::new());
        assert_eq!(samples[&web.key()].canary.units, Vec::new());

        let failed = Answers {
            istio: Some(ServedAnswers {
                server_errors: Err("timeout".into()),
                ..answers.istio.clone().unwrap()
            }),
            ..answers
        };
        let samples = to_samples(std::slice::from_ref(&cart), &failed);
        assert_eq!(samples[&cart.key()].canary.units, Vec::new());
    }

    /// Istio's series labelled `pod` give each version its Pods, with requests, 5xx and latency
    /// per Pod: a one-Pod canary keeps its one Pod, series without `pod` count in the totals
    /// only, another destination's Pods are not the version's, and a rollout without latency
    /// gates gets its Pods without histograms.
    #[test]
    fn istio_series_split_by_pod() {
        let cart = istio_request("cart", "cart-svc", all_gates());
        let pay = istio_request("pay", "pay-svc", Vec::new());
        let web = request("web", all_gates());
        let pod = |name: &'static str| (POD, name);
        let code = |value: &'static str| ("response_code", value);
        let totals = ServedAnswers {
            requests: Ok(vec![
                to("shop", "cart-svc", "v2", &[], 30.0),
                to("shop", "cart-svc", "v1", &[], 400.0),
                to("shop", "pay-svc", "v2", &[], 8.0),
            ]),
            server_errors: Ok(vec![to("shop", "cart-svc", "v2", &[], 3.0)]),
            latency: Some(Ok(vec![to(
                "shop",
                "cart-svc",
                "v2",
                &[(LE, "+Inf")],
                30.0,
            )])),
        };
        let pods = ServedAnswers {
            requests: Ok(vec![
                to("shop", "cart-svc", "v2", &[pod("cart-v2-a")], 30.0),
                to("shop", "cart-svc", "v1", &[pod("cart-v1-a")], 200.0),
                to("shop", "cart-svc", "v1", &[pod("cart-v1-b")], 180.0),
                // Scraped without the relabelling: the totals only.
                to("shop", "cart-svc", "v1", &[], 20.0),
                to("shop", "cart-svc", "v1", &[pod("")], 1.0),
                // Another namespace's, another service's and another version's Pods.
                to("billing", "cart-svc", "v2", &[pod("billing-a")], 5.0),
                to("shop", "other", "v2", &[pod("other-a")], 6.0),
                to("shop", "cart-svc", "v3", &[pod("cart-v3-a")], 7.0),
                to("shop", "pay-svc", "v2", &[pod("pay-v2-a")], 5.0),
                to("shop", "pay-svc", "v2", &[pod("pay-v2-b")], 3.0),
            ]),
            server_errors: Ok(vec![
                to(
                    "shop",
                    "cart-svc",
                    "v2",
                    &[pod("cart-v2-a"), code("503")],
                    3.0,
                ),
                to(
                    "shop",
                    "cart-svc",
                    "v1",
                    &[pod("cart-v1-b"), code("500")],
                    2.0,
                ),
                // A 5xx of a Pod without requests in the window is no Pod.
                to(
                    "shop",
                    "cart-svc",
                    "v1",
                    &[pod("cart-v1-gone"), code("500")],
                    1.0,
                ),
            ]),
            latency: Some(Ok(vec![
                to(
                    "shop",
                    "cart-svc",
                    "v2",
                    &[pod("cart-v2-a"), (LE, "50")],
                    20.0,
                ),
                to(
                    "shop",
                    "cart-svc",
                    "v2",
                    &[pod("cart-v2-a"), (LE, "+Inf")],
                    30.0,
                ),
                to(
                    "shop",
                    "cart-svc",
                    "v1",
                    &[pod("cart-v1-a"), (LE, "+Inf")],
                    200.0,
                ),
                to(
                    "shop",
                    "cart-svc",
                    "v1",
                    &[pod("cart-v1-b"), (LE, "10")],
                    150.0,
                ),
                to(
                    "shop",
                    "cart-svc",
                    "v1",
                    &[pod("cart-v1-b"), (LE, "+Inf")],
                    180.0,
                ),
                to("shop", "cart-svc", "v1", &[(LE, "+Inf")], 20.0),
            ])),
        };
        let answers = Answers {
            istio: Some(totals),
            istio_pods: Some(pods),
            clusters: Some(ServedAnswers {
                requests: Ok(vec![on_cluster(
                    &cluster("shop", "web", "canary"),
                    &[pod("web-a")],
                    9.0,
                )]),
                server_errors: Ok(Vec::new()),
                latency: Some(Ok(Vec::new())),
            }),
            ..empty()
        };
        let part =
            |name: &str, requests: f64, server_errors: f64, latency: &[(f64, f64)]| UnitSamples {
                unit: name.into(),
                requests,
                server_errors,
                latency_ms: latency
                    .iter()
                    .map(|&(le, count)| Bucket { le, count })
                    .collect(),
            };
        let inf = f64::INFINITY;
        let samples = to_samples(&[cart.clone(), pay.clone(), web.clone()], &answers);
        let (cart_s, pay_s) = (&samples[&cart.key()], &samples[&pay.key()]);
        let table: Vec<(&str, &Vec<UnitSamples>, Vec<UnitSamples>)> = vec![
            (
                "cart canary, one Pod",
                &cart_s.canary.pods,
                vec![part("cart-v2-a", 30.0, 3.0, &[(50.0, 20.0), (inf, 30.0)])],
            ),
            (
                "cart stable",
                &cart_s.stable.pods,
                vec![
                    part("cart-v1-a", 200.0, 0.0, &[(inf, 200.0)]),
                    part("cart-v1-b", 180.0, 2.0, &[(10.0, 150.0), (inf, 180.0)]),
                ],
            ),
            (
                "pay canary, no latency gate",
                &pay_s.canary.pods,
                vec![
                    part("pay-v2-a", 5.0, 0.0, &[]),
                    part("pay-v2-b", 3.0, 0.0, &[]),
                ],
            ),
            ("pay stable, no series", &pay_s.stable.pods, Vec::new()),
            (
                "web on Envoy clusters",
                &samples[&web.key()].canary.pods,
                Vec::new(),
            ),
        ];
        for (what, got, want) in table {
            assert_eq!(got, &want, "{what}");
        }
        // The totals come from the unit queries, the series without `pod` among them.
        assert_eq!(cart_s.stable.requests, Observed::Value(400.0));
        assert_eq!(cart_s.canary.server_errors, Observed::Value(3.0));
        // Pods are not units: the answers by unit carry no unit label here.
        assert_eq!(cart_s.canary.units, Vec::new());

        // A failed answer by Pod leaves every version without Pods; the totals stand.
        for fail in ["requests", "server errors", "latency"] {
            let mut failed = answers.clone();
            let pods = failed.istio_pods.as_mut().unwrap();
            let error: Answer = Err("timeout".into());
            match fail {
                "requests" => pods.requests = error,
                "server errors" => pods.server_errors = error,
                _ => pods.latency = Some(error),
            }
            let samples = to_samples(std::slice::from_ref(&cart), &failed);
            let cart_s = &samples[&cart.key()];
            assert_eq!(cart_s.canary.pods, Vec::new(), "{fail}");
            assert_eq!(cart_s.stable.pods, Vec::new(), "{fail}");
            assert_eq!(cart_s.stable.requests, Observed::Value(400.0), "{fail}");
        }
        // Not read (a source that cannot split by Pod): no Pods, the totals stand.
        let unread = Answers {
            istio_pods: None,
            ..answers
        };
        let samples = to_samples(std::slice::from_ref(&cart), &unread);
        assert_eq!(samples[&cart.key()].canary.pods, Vec::new());
        assert_eq!(samples[&cart.key()].canary.requests, Observed::Value(30.0));
    }

    /// A rollout on Envoy clusters and one on Istio in one answer: each version reads its own
    /// cluster's, or its own destination's, served series, and its decisions; no one else's.
    #[test]
    fn maps_every_kind_to_its_rollout_and_version() {
        let web = request("web", all_gates());
        let cart = istio_request("cart", "cart-svc", all_gates());
        let api = request("api", Vec::new());
        let rollouts = [web.clone(), cart.clone(), api.clone()];
        let custom_key = |version: &str| CustomKey {
            rollout: shop("web"),
            gate: "cpu".into(),
            version: version.into(),
        };
        let web_canary = cluster("shop", "web", "canary");
        let web_stable = cluster("shop", "web", "stable");
        let class5 = [(CLUSTER_RESPONSE_CLASS, "5")];
        let answers = Answers {
            clusters: Some(ServedAnswers {
                requests: Ok(vec![
                    on_cluster(&web_canary, &[], 100.0),
                    on_cluster(&web_stable, &[], 900.0),
                    on_cluster(&cluster("shop", "api", "stable"), &[], 50.0),
                    on_cluster("unrelated", &[], 7.0),
                ]),
                server_errors: Ok(vec![on_cluster(&web_canary, &class5, 3.0)]),
                latency: Some(Ok(vec![
                    on_cluster(&web_canary, &[(LE, "+Inf")], 100.0),
                    on_cluster(&web_canary, &[(LE, "10")], 60.0),
                    on_cluster(&web_canary, &[(LE, "5")], 20.0),
                    // Two series with one bound (e.g. two Envoys' exports) are summed.
                    on_cluster(&web_canary, &[(LE, "10")], 5.0),
                    on_cluster(&web_canary, &[(LE, "garbage")], 1.0),
                ])),
            }),
            istio: Some(ServedAnswers {
                requests: Ok(vec![
                    to("shop", "cart-svc", "v2", &[], 40.0),
                    to("shop", "cart-svc", "v1", &[], 400.0),
                    // Another namespace's service of the same name, another service, and a
                    // version the rollout does not compare: none of cart's.
                    to("billing", "cart-svc", "v2", &[], 1.0),
                    to("shop", "other", "v2", &[], 2.0),
                    to("shop", "cart-svc", "v3", &[], 3.0),
                ]),
                server_errors: Ok(vec![to("shop", "cart-svc", "v1", &[], 4.0)]),
                latency: Some(Ok(vec![
                    to("shop", "cart-svc", "v2", &[(LE, "25")], 30.0),
                    to("shop", "cart-svc", "v2", &[(LE, "+Inf")], 40.0),
                    to("shop", "other", "v2", &[(LE, "+Inf")], 99.0),
                ])),
            }),
            decisions: Ok(vec![
                to("shop", "web", "canary", &[], 110.0),
                to("shop", "web", "stable", &[], 890.0),
                to("shop", "cart-svc", "v2", &[], 44.0),
                to("billing", "web", "canary", &[], 5.0),
            ]),
            events: Some(Ok(vec![
                event("web", "stable", "checkout", 40.0),
                event("web", "stable", "signup", 9.0),
                event("cart", "v2", "checkout", 6.0),
            ])),
            istio_pods: None,
            custom: BTreeMap::from([
                (custom_key("canary"), Ok(Some(0.5))),
                (custom_key("stable"), Err("bad query".into())),
            ]),
        };
        let samples = to_samples(&rollouts, &answers);
        assert_eq!(samples.len(), 3);
        let (web, cart, api) = (
            &samples[&web.key()],
            &samples[&cart.key()],
            &samples[&api.key()],
        );
        type Row<'a> = (&'a str, &'a Observed<f64>, Observed<f64>);
        let table: Vec<Row> = vec![
            (
                "web canary requests",
                &web.canary.requests,
                Observed::Value(100.0),
            ),
            (
                "web stable requests",
                &web.stable.requests,
                Observed::Value(900.0),
            ),
            (
                "web canary 5xx",
                &web.canary.server_errors,
                Observed::Value(3.0),
            ),
            // No 5xx series for stable: no data (the gate reads that as "none happened").
            (
                "web stable 5xx",
                &web.stable.server_errors,
                Observed::NoData,
            ),
            (
                "web canary decisions",
                &web.canary.decisions,
                Observed::Value(110.0),
            ),
            (
                "web stable decisions",
                &web.stable.decisions,
                Observed::Value(890.0),
            ),
            (
                "cart canary requests",
                &cart.canary.requests,
                Observed::Value(40.0),
            ),
            (
                "cart stable requests",
                &cart.stable.requests,
                Observed::Value(400.0),
            ),
            (
                "cart canary 5xx",
                &cart.canary.server_errors,
                Observed::NoData,
            ),
            (
                "cart stable 5xx",
                &cart.stable.server_errors,
                Observed::Value(4.0),
            ),
            (
                "cart canary decisions",
                &cart.canary.decisions,
                Observed::Value(44.0),
            ),
            (
                "cart stable decisions",
                &cart.stable.decisions,
                Observed::NoData,
            ),
            (
                "api stable requests",
                &api.stable.requests,
                Observed::Value(50.0),
            ),
            (
                "api canary requests",
                &api.canary.requests,
                Observed::NoData,
            ),
            (
                "web stable checkout",
                &web.stable.events["checkout"],
                Observed::Value(40.0),
            ),
            (
                "web canary checkout",
                &web.canary.events["checkout"],
                Observed::NoData,
            ),
            (
                "cart canary checkout",
                &cart.canary.events["checkout"],
                Observed::Value(6.0),
            ),
            (
                "web canary cpu",
                &web.canary.custom["cpu"],
                Observed::Value(0.5),
            ),
            (
                "web stable cpu",
                &web.stable.custom["cpu"],
                Observed::Failed("bad query".into()),
            ),
        ];
        for (what, got, want) in table {
            assert_eq!(got, &want, "{what}");
        }
        assert_eq!(
            web.canary.latency_ms,
            buckets(&[(5.0, 20.0), (10.0, 65.0), (f64::INFINITY, 100.0)])
        );
        assert_eq!(web.stable.latency_ms, Observed::NoData);
        assert_eq!(
            cart.canary.latency_ms,
            buckets(&[(25.0, 30.0), (f64::INFINITY, 40.0)])
        );
        // A rollout without latency, event or custom gates gets requests and decisions only.
        assert_eq!(api.canary.latency_ms, Observed::NoData);
        assert!(api.canary.events.is_empty() && api.canary.custom.is_empty());
    }

    /// Same-named rollouts of two namespaces each read their own decisions and events; a
    /// rollout without a namespace reads the series without the label or with it empty, and no
    /// one else's.
    #[test]
    fn series_belong_to_a_namespace_and_a_name() {
        let decision = |namespace: Option<&str>, value: f64| {
            let mut labels = vec![
                (DESTINATION_SERVICE, "checkout"),
                (DESTINATION_VERSION, "canary"),
            ];
            if let Some(namespace) = namespace {
                labels.push((DESTINATION_NAMESPACE, namespace));
            }
            Series::new(&labels, value)
        };
        let events = |namespace: Option<&str>, value: f64| {
            let mut labels = vec![
                (TAG_ROLLOUT, "checkout"),
                (TAG_VERSION, "canary"),
                (TAG_EVENT, "checkout"),
            ];
            if let Some(namespace) = namespace {
                labels.push((TAG_NAMESPACE, namespace));
            }
            Series::new(&labels, value)
        };
        let gates = all_gates()[2..3].to_vec();
        let rollouts = [
            request("checkout", gates.clone()),
            request_in("billing", "checkout", gates.clone()),
            request_in("", "checkout", gates),
        ];
        let namespaces = [Some("shop"), Some("billing"), Some(""), None, Some("other")];
        let values = [10.0, 200.0, 3000.0, 40000.0, 500000.0];
        let answers = Answers {
            clusters: Some(ServedAnswers {
                requests: Ok(Vec::new()),
                server_errors: Ok(Vec::new()),
                latency: None,
            }),
            decisions: Ok(namespaces
                .iter()
                .zip(values)
                .map(|(namespace, value)| decision(*namespace, value))
                .collect()),
            events: Some(Ok(namespaces
                .iter()
                .zip(values)
                .map(|(namespace, value)| events(*namespace, value))
                .collect())),
            ..empty()
        };
        let samples = to_samples(&rollouts, &answers);
        assert_eq!(samples.len(), 3);
        // An empty label and an absent one are the same namespace, "".
        for (namespace, expected) in [("shop", 10.0), ("billing", 200.0), ("", 43000.0)] {
            let canary = &samples[&RolloutKey::new(namespace, "checkout")].canary;
            assert_eq!(canary.decisions, Observed::Value(expected), "{namespace:?}");
            assert_eq!(
                canary.events["checkout"],
                Observed::Value(expected),
                "{namespace:?}"
            );
        }
    }

    /// Each read that fails fails what it would have filled, and only that; a kind the source
    /// did not read although a rollout needs it is a Failed too, never silent no-data.
    #[test]
    fn a_failed_read_fails_what_it_would_have_filled() {
        let web = request("web", all_gates());
        let cart = istio_request("cart", "cart", all_gates());
        let rollouts = [web.clone(), cart.clone()];
        let answers = Answers {
            clusters: Some(ServedAnswers {
                requests: Err("connection refused".into()),
                server_errors: Ok(Vec::new()),
                latency: Some(Err("timeout".into())),
            }),
            istio: None,
            istio_pods: None,
            decisions: Err("decisions: bad gateway".into()),
            events: None,
            custom: BTreeMap::new(),
        };
        let samples = to_samples(&rollouts, &answers);
        let (web, cart) = (&samples[&web.key()], &samples[&cart.key()]);
        assert_eq!(
            web.canary.requests,
            Observed::Failed("connection refused".into())
        );
        assert_eq!(web.canary.server_errors, Observed::NoData);
        assert_eq!(web.stable.latency_ms, Observed::Failed("timeout".into()));
        assert_eq!(
            web.stable.decisions,
            Observed::Failed("decisions: bad gateway".into())
        );
        assert!(matches!(web.canary.events["checkout"], Observed::Failed(_)));
        // Custom results not there at all: no data.
        assert_eq!(web.canary.custom["cpu"], Observed::NoData);
        for observed in [&cart.canary.requests, &cart.stable.server_errors] {
            assert!(
                matches!(observed, Observed::Failed(reason) if reason.contains("Istio")),
                "{observed:?}"
            );
        }
        assert!(matches!(cart.canary.latency_ms, Observed::Failed(_)));
    }

    #[test]
    fn sequential_gates_read_the_series_of_their_metric() {
        use cohort_rollout::crd::{SequentialGate, SequentialMetric};
        let mut event_gate = SequentialGate::new(SequentialMetric::BusinessEvent);
        event_gate.event = Some("checkout".into());
        let gates = vec![
            GateSpec::new(GateCheck::Sequential(SequentialGate::new(
                SequentialMetric::Latency,
            ))),
            GateSpec::new(GateCheck::Sequential(event_gate)),
        ];
        let rollouts = [request("web", gates)];
        let needs = needed(&rollouts);
        assert!(needs.clusters_latency && needs.events && !needs.istio);
        let canary = cluster("shop", "web", "canary");
        let answers = Answers {
            clusters: Some(ServedAnswers {
                requests: Ok(vec![on_cluster(&canary, &[], 10.0)]),
                server_errors: Ok(Vec::new()),
                latency: Some(Ok(vec![on_cluster(&canary, &[(LE, "+Inf")], 10.0)])),
            }),
            events: Some(Ok(vec![event("web", "canary", "checkout", 4.0)])),
            ..empty()
        };
        let web = &to_samples(&rollouts, &answers)[&shop("web")];
        assert_eq!(web.canary.latency_ms, buckets(&[(f64::INFINITY, 10.0)]));
        assert_eq!(web.canary.events["checkout"], Observed::Value(4.0));
    }

    #[test]
    fn needed_kinds_follow_the_served_kind_and_the_gates() {
        let latency_only = all_gates()[1..2].to_vec();
        let table = [
            (vec![], Needed::default()),
            (
                vec![request("a", Vec::new())],
                Needed {
                    clusters: true,
                    ..Needed::default()
                },
            ),
            (
                vec![
                    request("a", Vec::new()),
                    istio_request("b", "b", latency_only),
                ],
                Needed {
                    clusters: true,
                    istio: true,
                    istio_latency: true,
                    ..Needed::default()
                },
            ),
            (
                vec![
                    istio_request("a", "a", Vec::new()),
                    request("b", all_gates()),
                ],
                Needed {
                    clusters: true,
                    clusters_latency: true,
                    istio: true,
                    istio_latency: false,
                    events: true,
                },
            ),
        ];
        for (rollouts, expected) in table {
            assert_eq!(needed(&rollouts), expected, "{rollouts:?}");
        }
    }

    #[test]
    fn the_5xx_class_of_envoy_responses() {
        let responses = [
            on_cluster("a", &[(CLUSTER_RESPONSE_CLASS, "2")], 10.0),
            on_cluster("a", &[(CLUSTER_RESPONSE_CLASS, "5")], 3.0),
            on_cluster("b", &[(CLUSTER_RESPONSE_CLASS, "4")], 1.0),
            on_cluster("b", &[], 1.0),
        ];
        assert_eq!(cluster_server_errors(&responses), [responses[1].clone()]);
    }

    #[test]
    fn bucket_bounds() {
        let table = [
            ("+Inf", Some(f64::INFINITY)),
            ("0.5", Some(0.5)),
            ("1000", Some(1000.0)),
            ("1e3", Some(1000.0)),
            ("NaN", None),
            ("", None),
            ("ten", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_le(text), expected, "{text:?}");
        }
    }
}
