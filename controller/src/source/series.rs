//! What both metric sources share: labelled series (as a PromQL instant vector or a differenced
//! Envoy scrape gives them) and the one mapping from those series to each rollout's [`Samples`].
//!
//! Keeping the mapping here means the Prometheus and the Envoy-admin source cannot disagree on
//! what "canary's 5xx count" or "stable's latency histogram" is; each only has to produce
//! [`Answers`].

use std::collections::BTreeMap;

use cohort_core::telemetry::{TAG_CODE_CLASS, TAG_EVENT, TAG_NAMESPACE, TAG_ROLLOUT, TAG_VERSION};

use crate::source::{RolloutKey, SamplesByRollout, SeriesRequest};
use cohort_rollout::crd::{GateCheck, GateSpec};
use cohort_rollout::evaluate::{Bucket, Observed, Samples, VersionSamples};

/// The code class counted as a server error.
pub const SERVER_ERROR_CLASS: &str = "5xx";
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

    fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    /// Whether the series is `rollout`'s, of `version`. An absent `cohort_namespace` label is
    /// the empty namespace, as Prometheus has it (Envoy exports an empty tag as `""`).
    fn is_of(&self, rollout: &RolloutKey, version: &str) -> bool {
        self.label(TAG_NAMESPACE).unwrap_or("") == rollout.namespace
            && self.label(TAG_ROLLOUT) == Some(rollout.name.as_str())
            && self.label(TAG_VERSION) == Some(version)
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

/// Everything a source read for one window, for every rollout at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    /// `cohort_requests_total` increases by rollout and version (any other labels are summed).
    pub requests: Answer,
    /// The same, 5xx only.
    pub server_errors: Answer,
    /// Request-duration bucket increases by rollout, version and `le`; `None` when no gate
    /// needs latency (not read).
    pub latency: Option<Answer>,
    /// Business event increases by rollout, version and `cohort_event`; `None` when no gate
    /// needs events (not read).
    pub events: Option<Answer>,
    /// Custom query results: a number, no number (`None`), or why the query failed.
    pub custom: BTreeMap<CustomKey, Result<Option<f64>, String>>,
}

/// Which series kinds any of `rollouts` needs: (latency, events).
pub fn needed_kinds(rollouts: &[SeriesRequest]) -> (bool, bool) {
    let gates = || rollouts.iter().flat_map(|rollout| rollout.gates.iter());
    let latency = gates().any(|gate| gate.check.reads_latency());
    let events = gates().any(|gate| gate.check.business_event().is_some());
    (latency, events)
}

/// Every rollout's samples from what the source read, keyed by namespace and name: a series
/// counts for a rollout only when both labels match.
pub fn to_samples(rollouts: &[SeriesRequest], answers: &Answers) -> SamplesByRollout {
    rollouts
        .iter()
        .map(|rollout| {
            let samples = Samples {
                canary: version_samples(rollout, &rollout.canary_version, answers),
                stable: version_samples(rollout, &rollout.stable_version, answers),
            };
            (rollout.key(), samples)
        })
        .collect()
}

fn version_samples(rollout: &SeriesRequest, version: &str, answers: &Answers) -> VersionSamples {
    let key = rollout.key();
    let mut samples = VersionSamples {
        requests: total(&answers.requests, |s| s.is_of(&key, version)),
        server_errors: total(&answers.server_errors, |s| s.is_of(&key, version)),
        ..VersionSamples::default()
    };
    // By what each gate reads, not by its kind: a sequential gate reads the same series as the
    // threshold gate of its metric.
    for gate in &rollout.gates {
        if gate.check.reads_latency() {
            samples.latency_ms = histogram(answers.latency.as_ref(), &key, version);
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

/// The buckets of one version's histogram, equal bounds summed, in bound order.
fn histogram(
    answer: Option<&Answer>,
    rollout: &RolloutKey,
    version: &str,
) -> Observed<Vec<Bucket>> {
    let series = match answer {
        None => return not_read("latency"),
        Some(Err(reason)) => return Observed::Failed(reason.clone()),
        Some(Ok(series)) => series,
    };
    let mut buckets: Vec<Bucket> = Vec::new();
    for s in series.iter().filter(|s| s.is_of(rollout, version)) {
        let Some(le) = s.label(LE).and_then(parse_le) else {
            continue;
        };
        match buckets.iter_mut().find(|bucket| bucket.le == le) {
            Some(bucket) => bucket.count += s.value,
            None => buckets.push(Bucket { le, count: s.value }),
        }
    }
    if buckets.is_empty() {
        return Observed::NoData;
    }
    buckets.sort_by(|a, b| a.le.total_cmp(&b.le));
    Observed::Value(buckets)
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

/// A series kind the source skipped although a gate needs it: a bug, reported rather than
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

/// The requests whose code class is 5xx, from all requests (for sources that read every class).
pub fn server_errors_of(requests: &[Series]) -> Vec<Series> {
    requests
        .iter()
        .filter(|s| s.label(TAG_CODE_CLASS) == Some(SERVER_ERROR_CLASS))
        .cloned()
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cohort_rollout::compiled::Served;
    use cohort_rollout::crd::{BusinessEventGate, CustomGate, ErrorRateGate, LatencyGate};

    /// The key of rollout `name` in `shop`, the namespace of [`request`].
    pub(crate) fn shop(name: &str) -> RolloutKey {
        RolloutKey::new("shop", name)
    }

    pub(crate) fn request(rollout: &str, gates: Vec<GateSpec>) -> SeriesRequest {
        request_in("shop", rollout, gates)
    }

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
                stable: "stable".into(),
                canary: "canary".into(),
            },
            decision_service: rollout.into(),
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

    fn rv(rollout: &str, version: &str, value: f64) -> Series {
        Series::new(
            &[
                (TAG_NAMESPACE, "shop"),
                (TAG_ROLLOUT, rollout),
                (TAG_VERSION, version),
            ],
            value,
        )
    }

    fn bucket(version: &str, le: &str, value: f64) -> Series {
        Series::new(
            &[
                (TAG_NAMESPACE, "shop"),
                (TAG_ROLLOUT, "web"),
                (TAG_VERSION, version),
                (LE, le),
            ],
            value,
        )
    }

    #[test]
    fn maps_every_kind_to_its_rollout_and_version() {
        let rollouts = [request("web", all_gates()), request("api", Vec::new())];
        let key = |version: &str| CustomKey {
            rollout: shop("web"),
            gate: "cpu".into(),
            version: version.into(),
        };
        let answers = Answers {
            requests: Ok(vec![
                rv("web", "canary", 100.0),
                rv("web", "stable", 900.0),
                rv("api", "stable", 50.0),
                rv("other", "canary", 7.0),
            ]),
            server_errors: Ok(vec![rv("web", "canary", 3.0)]),
            latency: Some(Ok(vec![
                bucket("canary", "+Inf", 100.0),
                bucket("canary", "10", 60.0),
                bucket("canary", "5", 20.0),
                // Two series with one bound (e.g. two Envoy workers' exports) are summed.
                bucket("canary", "10", 5.0),
                bucket("canary", "garbage", 1.0),
            ])),
            events: Some(Ok(vec![
                Series::new(
                    &[
                        (TAG_NAMESPACE, "shop"),
                        (TAG_ROLLOUT, "web"),
                        (TAG_VERSION, "stable"),
                        (TAG_EVENT, "checkout"),
                    ],
                    40.0,
                ),
                Series::new(
                    &[
                        (TAG_NAMESPACE, "shop"),
                        (TAG_ROLLOUT, "web"),
                        (TAG_VERSION, "stable"),
                        (TAG_EVENT, "signup"),
                    ],
                    9.0,
                ),
            ])),
            custom: BTreeMap::from([
                (key("canary"), Ok(Some(0.5))),
                (key("stable"), Err("bad query".into())),
            ]),
        };
        let samples = to_samples(&rollouts, &answers);
        assert_eq!(samples.len(), 2);
        let web = &samples[&shop("web")];
        assert_eq!(web.canary.requests, Observed::Value(100.0));
        assert_eq!(web.stable.requests, Observed::Value(900.0));
        assert_eq!(web.canary.server_errors, Observed::Value(3.0));
        // No 5xx series for stable: no data (the gate reads that as "none happened").
        assert_eq!(web.stable.server_errors, Observed::NoData);
        assert_eq!(
            web.canary.latency_ms,
            Observed::Value(vec![
                Bucket {
                    le: 5.0,
                    count: 20.0
                },
                Bucket {
                    le: 10.0,
                    count: 65.0
                },
                Bucket {
                    le: f64::INFINITY,
                    count: 100.0
                },
            ])
        );
        assert_eq!(web.stable.latency_ms, Observed::NoData);
        assert_eq!(web.stable.events["checkout"], Observed::Value(40.0));
        assert_eq!(web.canary.events["checkout"], Observed::NoData);
        assert_eq!(web.canary.custom["cpu"], Observed::Value(0.5));
        assert_eq!(
            web.stable.custom["cpu"],
            Observed::Failed("bad query".into())
        );
        // A rollout without latency, event or custom gates gets only request counts.
        let api = &samples[&shop("api")];
        assert_eq!(api.stable.requests, Observed::Value(50.0));
        assert_eq!(api.canary.requests, Observed::NoData);
        assert_eq!(api.canary.latency_ms, Observed::NoData);
        assert!(api.canary.events.is_empty() && api.canary.custom.is_empty());
    }

    /// Same-named rollouts of two namespaces each read their own series; a rollout without a
    /// namespace reads the series without the label or with it empty, and no one else's.
    #[test]
    fn series_belong_to_a_namespace_and_a_name() {
        let with_namespace = |namespace: Option<&str>, version: &str, value: f64| {
            let mut labels = vec![(TAG_ROLLOUT, "checkout"), (TAG_VERSION, version)];
            if let Some(namespace) = namespace {
                labels.push((TAG_NAMESPACE, namespace));
            }
            Series::new(&labels, value)
        };
        let rollouts = [
            request("checkout", Vec::new()),
            request_in("billing", "checkout", Vec::new()),
            request_in("", "checkout", Vec::new()),
        ];
        let answers = Answers {
            requests: Ok(vec![
                with_namespace(Some("shop"), "canary", 10.0),
                with_namespace(Some("billing"), "canary", 200.0),
                with_namespace(Some(""), "canary", 3000.0),
                with_namespace(None, "canary", 40000.0),
                with_namespace(Some("other"), "canary", 500000.0),
            ]),
            server_errors: Ok(vec![with_namespace(Some("billing"), "canary", 7.0)]),
            latency: None,
            events: None,
            custom: BTreeMap::new(),
        };
        let samples = to_samples(&rollouts, &answers);
        assert_eq!(samples.len(), 3);
        let shop_checkout = &samples[&shop("checkout")];
        let billing_checkout = &samples[&RolloutKey::new("billing", "checkout")];
        let bare_checkout = &samples[&RolloutKey::new("", "checkout")];
        assert_eq!(shop_checkout.canary.requests, Observed::Value(10.0));
        assert_eq!(shop_checkout.canary.server_errors, Observed::NoData);
        assert_eq!(billing_checkout.canary.requests, Observed::Value(200.0));
        assert_eq!(billing_checkout.canary.server_errors, Observed::Value(7.0));
        // An empty label and an absent one are the same namespace, "".
        assert_eq!(bare_checkout.canary.requests, Observed::Value(43000.0));
    }

    #[test]
    fn a_failed_read_fails_what_it_would_have_filled() {
        let rollouts = [request("web", all_gates())];
        let answers = Answers {
            requests: Err("connection refused".into()),
            server_errors: Ok(Vec::new()),
            latency: Some(Err("timeout".into())),
            events: None,
            custom: BTreeMap::new(),
        };
        let web = &to_samples(&rollouts, &answers)[&shop("web")];
        assert_eq!(
            web.canary.requests,
            Observed::Failed("connection refused".into())
        );
        assert_eq!(web.canary.server_errors, Observed::NoData);
        assert_eq!(web.stable.latency_ms, Observed::Failed("timeout".into()));
        // Events a gate needs but the source did not read: a Failed, never silent no-data.
        assert!(matches!(web.canary.events["checkout"], Observed::Failed(_)));
        // Custom results not there at all: no data.
        assert_eq!(web.canary.custom["cpu"], Observed::NoData);
    }

    #[test]
    fn sequential_gates_read_the_series_of_their_metric() {
        use cohort_rollout::crd::{SequentialGate, SequentialMetric};
        let mut event = SequentialGate::new(SequentialMetric::BusinessEvent);
        event.event = Some("checkout".into());
        let gates = vec![
            GateSpec::new(GateCheck::Sequential(SequentialGate::new(
                SequentialMetric::Latency,
            ))),
            GateSpec::new(GateCheck::Sequential(event)),
        ];
        let rollouts = [request("web", gates)];
        assert_eq!(needed_kinds(&rollouts), (true, true));
        let answers = Answers {
            requests: Ok(vec![rv("web", "canary", 10.0)]),
            server_errors: Ok(Vec::new()),
            latency: Some(Ok(vec![bucket("canary", "+Inf", 10.0)])),
            events: Some(Ok(vec![Series::new(
                &[
                    (TAG_NAMESPACE, "shop"),
                    (TAG_ROLLOUT, "web"),
                    (TAG_VERSION, "canary"),
                    (TAG_EVENT, "checkout"),
                ],
                4.0,
            )])),
            custom: BTreeMap::new(),
        };
        let web = &to_samples(&rollouts, &answers)[&shop("web")];
        assert_eq!(
            web.canary.latency_ms,
            Observed::Value(vec![Bucket {
                le: f64::INFINITY,
                count: 10.0
            }])
        );
        assert_eq!(web.canary.events["checkout"], Observed::Value(4.0));
    }

    #[test]
    fn needed_kinds_follow_the_gates() {
        assert_eq!(needed_kinds(&[]), (false, false));
        assert_eq!(
            needed_kinds(&[request("a", Vec::new()), request("b", all_gates())]),
            (true, true)
        );
        assert_eq!(
            needed_kinds(&[request("a", all_gates()[..2].to_vec())]),
            (true, false)
        );
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
