//! Samples from a Prometheus server that scrapes the proxies' `/stats/prometheus`.
//!
//! One instant query per series kind serves every rollout (`sum by (cohort_namespace,
//! cohort_rollout, cohort_version, …)`), so the queries per cycle do not grow with the number of
//! rollouts. A rollout is its namespace and name together (`shop/web` and `billing/web` are two),
//! so each namespace gets one selector naming exactly its rollouts, and the selectors are joined
//! with `or`:
//!
//! ```promql
//! sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace="billing",cohort_rollout=~"web"}[30s]) or increase(cohort_requests_total{cohort_namespace="shop",cohort_rollout=~"web|api"}[30s]))
//! sum by (…) (increase(cohort_requests_total{cohort_namespace="billing",cohort_rollout=~"web",cohort_code_class="5xx"}[30s]) or …)
//! sum by (…, le) (increase(cohort_request_duration_milliseconds_bucket{…}[30s]) or …)   # latency gates only
//! sum by (…, cohort_event) (increase(cohort_events_total{…}[30s]) or …)                 # business gates only
//! ```
//!
//! Pod labels such as Prometheus' `namespace` cannot stand in for `cohort_namespace`: in Istio
//! the filter runs in the caller's sidecar, so they name the caller's namespace. A rollout
//! without a namespace (a rollout file for `cohort run` without `metadata.namespace`) matches
//! `cohort_namespace=""`, which Prometheus also takes for an absent label.
//!
//! Custom gates are the exception: their PromQL is the user's, so each runs once per rollout and
//! version. `increase()` needs two scrapes inside the window: keep the analysis interval at least
//! twice the scrape interval, or the window reads as no data (Inconclusive).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use prometheus_http_query::response::Data;
use prometheus_http_query::Client;

use cohort_core::telemetry::{
    EVENTS_TOTAL, REQUESTS_TOTAL, REQUEST_DURATION_MS, TAG_CODE_CLASS, TAG_EVENT, TAG_NAMESPACE,
    TAG_ROLLOUT, TAG_VERSION,
};

use crate::source::series::{
    error_chain, needed_kinds, to_samples, Answer, Answers, CustomKey, Series, LE,
    SERVER_ERROR_CLASS,
};
use crate::source::{BoxFuture, MetricSource, SamplesByRollout, SeriesRequest};
use crate::Error;
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
            let (requests, server_errors, latency, events) = futures::join!(
                self.vector(queries.requests),
                self.vector(queries.server_errors),
                optional(queries.latency.map(|query| self.vector(query))),
                optional(queries.events.map(|query| self.vector(query))),
            );
            (requests, server_errors, latency, events)
        };
        let (keys, custom_queries): (Vec<CustomKey>, Vec<Result<String, String>>) =
            custom.into_iter().unzip();
        let custom_answers = join_all(custom_queries.into_iter().map(|query| self.number(query)));
        let ((requests, server_errors, latency, events), custom_answers) =
            futures::join!(shared, custom_answers);
        Answers {
            requests,
            server_errors,
            latency,
            events,
            custom: keys.into_iter().zip(custom_answers).collect(),
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
    /// Requests by rollout and version.
    pub requests: String,
    /// 5xx responses by rollout and version.
    pub server_errors: String,
    /// Duration buckets by rollout, version and `le`; only when a latency gate exists.
    pub latency: Option<String>,
    /// Business events by rollout, version and event; only when a business gate exists.
    pub events: Option<String>,
}

/// The shared queries for `rollouts` over `window`.
pub fn queries(rollouts: &[SeriesRequest], window: Duration) -> Queries {
    let (latency, events) = needed_kinds(rollouts);
    let selectors = selectors(rollouts);
    let range = promql_duration(window);
    let by = |extra: &str| {
        let mut labels = format!("{TAG_NAMESPACE}, {TAG_ROLLOUT}, {TAG_VERSION}");
        if !extra.is_empty() {
            labels.push_str(", ");
            labels.push_str(extra);
        }
        labels
    };
    let increase = |labels: String, metric: &str, more: &str| {
        let each: Vec<String> = selectors
            .iter()
            .map(|selector| format!("increase({metric}{{{selector}{more}}}[{range}])"))
            .collect();
        format!("sum by ({labels}) ({})", each.join(" or "))
    };
    Queries {
        requests: increase(by(""), REQUESTS_TOTAL, ""),
        server_errors: increase(
            by(""),
            REQUESTS_TOTAL,
            &format!(",{TAG_CODE_CLASS}=\"{SERVER_ERROR_CLASS}\""),
        ),
        latency: latency.then(|| increase(by(LE), &format!("{REQUEST_DURATION_MS}_bucket"), "")),
        events: events.then(|| increase(by(TAG_EVENT), EVENTS_TOTAL, "")),
    }
}

/// One label selector (without braces) per namespace, matching exactly the rollouts asked for
/// in it: `cohort_namespace="shop",cohort_rollout=~"web|api"`. The namespace is an escaped
/// string literal; each name is regex-escaped, then escaped as a literal. No rollouts: one
/// selector that matches none of cohort's series (every one has a rollout name).
fn selectors(rollouts: &[SeriesRequest]) -> Vec<String> {
    let mut by_namespace: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for rollout in rollouts {
        let names = by_namespace.entry(rollout.namespace.as_str()).or_default();
        let name = regex_escape(&rollout.rollout);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if by_namespace.is_empty() {
        by_namespace.insert("", Vec::new());
    }
    by_namespace
        .iter()
        .map(|(namespace, names)| {
            format!(
                "{TAG_NAMESPACE}=\"{}\",{TAG_ROLLOUT}=~\"{}\"",
                escape_label_value(namespace),
                escape_label_value(&names.join("|"))
            )
        })
        .collect()
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
    use crate::source::series::tests::{all_gates, request, request_in, shop};
    use crate::source::RolloutKey;
    use cohort_rollout::crd::{CustomGate, GateSpec};
    use cohort_rollout::evaluate::Observed;

    #[test]
    fn shared_queries_cover_all_rollouts_at_once() {
        let rollouts = [request("web", all_gates()), request("api", Vec::new())];
        let q = queries(&rollouts, Duration::from_secs(30));
        assert_eq!(
            q.requests,
            r#"sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace="shop",cohort_rollout=~"web|api"}[30s]))"#
        );
        assert_eq!(
            q.server_errors,
            r#"sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace="shop",cohort_rollout=~"web|api",cohort_code_class="5xx"}[30s]))"#
        );
        assert_eq!(
            q.latency.as_deref(),
            Some(
                r#"sum by (cohort_namespace, cohort_rollout, cohort_version, le) (increase(cohort_request_duration_milliseconds_bucket{cohort_namespace="shop",cohort_rollout=~"web|api"}[30s]))"#
            )
        );
        assert_eq!(
            q.events.as_deref(),
            Some(
                r#"sum by (cohort_namespace, cohort_rollout, cohort_version, cohort_event) (increase(cohort_events_total{cohort_namespace="shop",cohort_rollout=~"web|api"}[30s]))"#
            )
        );
    }

    #[test]
    fn each_namespace_gets_a_selector_of_its_own() {
        let rollouts = [
            request_in("shop", "web", Vec::new()),
            request_in("billing", "web", Vec::new()),
            request_in("shop", "api", Vec::new()),
            request_in("", "web", Vec::new()),
            // Asked twice: named once.
            request_in("shop", "web", Vec::new()),
        ];
        let q = queries(&rollouts, Duration::from_secs(30));
        assert_eq!(
            q.requests,
            r#"sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace="",cohort_rollout=~"web"}[30s]) or increase(cohort_requests_total{cohort_namespace="billing",cohort_rollout=~"web"}[30s]) or increase(cohort_requests_total{cohort_namespace="shop",cohort_rollout=~"web|api"}[30s]))"#
        );
        assert_eq!(
            q.server_errors,
            r#"sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace="",cohort_rollout=~"web",cohort_code_class="5xx"}[30s]) or increase(cohort_requests_total{cohort_namespace="billing",cohort_rollout=~"web",cohort_code_class="5xx"}[30s]) or increase(cohort_requests_total{cohort_namespace="shop",cohort_rollout=~"web|api",cohort_code_class="5xx"}[30s]))"#
        );
        // Never an empty `sum by (…) ()`: with nothing asked, a selector that matches nothing.
        assert_eq!(
            queries(&[], Duration::from_secs(30)).requests,
            r#"sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace="",cohort_rollout=~""}[30s]))"#
        );
    }

    /// `shop/checkout` and `billing/checkout`: their queries are the same but for the
    /// namespace matcher.
    #[test]
    fn same_named_rollouts_differ_only_by_the_namespace_matcher() {
        let window = Duration::from_secs(30);
        let shop_q = queries(&[request_in("shop", "checkout", all_gates())], window);
        let billing_q = queries(&[request_in("billing", "checkout", all_gates())], window);
        let pairs = [
            (Some(shop_q.requests), Some(billing_q.requests)),
            (Some(shop_q.server_errors), Some(billing_q.server_errors)),
            (shop_q.latency, billing_q.latency),
            (shop_q.events, billing_q.events),
        ];
        for (shop_query, billing_query) in pairs {
            let (shop_query, billing_query) = (shop_query.unwrap(), billing_query.unwrap());
            assert_ne!(shop_query, billing_query);
            assert_eq!(shop_query.matches(r#"cohort_namespace="shop""#).count(), 1);
            assert_eq!(
                shop_query.replace(
                    r#"cohort_namespace="shop""#,
                    r#"cohort_namespace="billing""#
                ),
                billing_query
            );
        }
    }

    #[test]
    fn only_needed_kinds_are_queried_and_names_are_escaped() {
        let q = queries(&[request("a.b", Vec::new())], Duration::from_millis(2500));
        assert_eq!(
            q.requests,
            r#"sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace="shop",cohort_rollout=~"a\\.b"}[2500ms]))"#
        );
        assert_eq!((q.latency, q.events), (None, None));
        assert_eq!(regex_escape("x|y.*"), r"x\|y\.\*");
    }

    /// Whatever a rollout's name holds, the shared queries keep their shape, the `=~` matcher
    /// is one string literal, and its regex (anchored, as Prometheus anchors it) matches exactly
    /// the rollouts asked for: no quote, brace or regex metacharacter in a name widens it.
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
            let shapes = [
                (&q.requests, "sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace=$,cohort_rollout=~$}[30s]))", 2),
                (&q.server_errors, "sum by (cohort_namespace, cohort_rollout, cohort_version) (increase(cohort_requests_total{cohort_namespace=$,cohort_rollout=~$,cohort_code_class=$}[30s]))", 3),
            ];
            let mut regexes = Vec::new();
            for (query, shape, literals) in shapes {
                let lexed = lex(query)
                    .unwrap_or_else(|e| panic!("{name:?}: Prometheus refuses {query}: {e}"));
                assert_eq!(lexed.shape, shape, "{name:?} changed the query: {query}");
                assert_eq!(lexed.strings.len(), literals);
                assert_eq!(lexed.strings[0], "shop");
                regexes.push(lexed.strings[1].clone());
            }
            for query in [q.latency.unwrap(), q.events.unwrap()] {
                let lexed = lex(&query).unwrap();
                assert!(
                    lexed
                        .shape
                        .contains("{cohort_namespace=$,cohort_rollout=~$}[30s]"),
                    "{query}"
                );
                assert_eq!(lexed.strings[1..], regexes[..1]);
            }
            let matcher = regex::Regex::new(&format!("^(?:{})$", regexes[0]))
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert!(
                matcher.is_match(name) && matcher.is_match("web"),
                "{name:?}"
            );
            let near_misses = [
                format!("{name}x"),
                format!("x{name}"),
                name.replace(|c: char| !c.is_alphanumeric(), "x"),
                "webweb".to_owned(),
                "other".to_owned(),
                String::new(),
            ];
            for other in near_misses {
                if other != name && other != "web" {
                    assert!(
                        !matcher.is_match(&other),
                        "{name:?}'s matcher takes {other:?}"
                    );
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
        for namespace in namespaces {
            let rollouts = [
                request_in(namespace, "web", all_gates()),
                request_in("zzz", "api", Vec::new()),
            ];
            let q = queries(&rollouts, Duration::from_secs(30));
            let one = "increase(cohort_requests_total{cohort_namespace=$,cohort_rollout=~$}[30s])";
            let shape = format!(
                "sum by (cohort_namespace, cohort_rollout, cohort_version) ({one} or {one})"
            );
            // The selectors come in namespace order: compare them as a set.
            let selectors = |strings: Vec<String>, per_selector: usize| {
                let mut chunks: Vec<Vec<String>> = strings
                    .chunks(per_selector)
                    .map(<[String]>::to_vec)
                    .collect();
                chunks.sort();
                chunks
            };
            let expected = |extra: &[&str]| {
                let mut chunks: Vec<Vec<String>> = [[namespace, "web"], ["zzz", "api"]]
                    .iter()
                    .map(|pair| pair.iter().chain(extra).map(|s| (*s).to_owned()).collect())
                    .collect();
                chunks.sort();
                chunks
            };
            let lexed = lex(&q.requests).unwrap_or_else(|e| {
                panic!("{namespace:?}: Prometheus refuses {}: {e}", q.requests)
            });
            assert_eq!(lexed.shape, shape, "{namespace:?} changed {}", q.requests);
            assert_eq!(selectors(lexed.strings, 2), expected(&[]), "{}", q.requests);
            let lexed = lex(&q.server_errors).unwrap();
            assert_eq!(selectors(lexed.strings, 3), expected(&["5xx"]));
            for query in [q.latency.unwrap(), q.events.unwrap()] {
                let lexed = lex(&query).unwrap();
                assert_eq!(selectors(lexed.strings, 2), expected(&[]), "{query}");
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
                "metric": {"cohort_namespace": namespace, "cohort_rollout": "checkout", "cohort_version": version},
                "value": [1.7e9, value.to_string()]
            })
        };
        let body =
            serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
                series("shop", "canary", 100), series("shop", "stable", 1000),
                series("billing", "canary", 7), series("billing", "stable", 70),
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
        let shop_checkout = request_in("shop", "checkout", Vec::new());
        let billing_checkout = request_in("billing", "checkout", Vec::new());
        // Both become known; the next cycle asks for both at once.
        shared
            .samples(window, std::slice::from_ref(&shop_checkout))
            .await;
        shared
            .samples(window, std::slice::from_ref(&billing_checkout))
            .await;
        let first_cycle = asked.lock().unwrap().len();
        assert_eq!(first_cycle, 2, "requests and 5xx for shop/checkout");
        shared.forget_answers().await;
        let shop_samples = shared
            .samples(window, std::slice::from_ref(&shop_checkout))
            .await;
        let billing_samples = shared
            .samples(window, std::slice::from_ref(&billing_checkout))
            .await;
        let queries_sent = asked.lock().unwrap()[first_cycle..].to_vec();
        assert_eq!(
            queries_sent.len(),
            2,
            "one query per kind for both: {queries_sent:?}"
        );
        let joint = queries(&[billing_checkout.clone(), shop_checkout.clone()], window);
        assert_eq!(queries_sent, [joint.requests, joint.server_errors]);

        let shop_key = RolloutKey::new("shop", "checkout");
        let billing_key = RolloutKey::new("billing", "checkout");
        assert_eq!(shop_samples.keys().collect::<Vec<_>>(), [&shop_key]);
        assert_eq!(billing_samples.keys().collect::<Vec<_>>(), [&billing_key]);
        assert_eq!(
            shop_samples[&shop_key].canary.requests,
            Observed::Value(100.0)
        );
        assert_eq!(
            shop_samples[&shop_key].stable.requests,
            Observed::Value(1000.0)
        );
        assert_eq!(
            billing_samples[&billing_key].canary.requests,
            Observed::Value(7.0)
        );
        assert_eq!(
            billing_samples[&billing_key].stable.requests,
            Observed::Value(70.0)
        );
        assert_ne!(shop_samples[&shop_key], billing_samples[&billing_key]);
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
                {"metric": {"cohort_namespace": "shop", "cohort_rollout": "web", "cohort_version": "canary"}, "value": [1.7e9, "12.5"]},
                {"metric": {"__name__": "x", "cohort_namespace": "shop", "cohort_rollout": "web", "cohort_version": "stable"}, "value": [1.7e9, "300"]}
            ]
        }));
        let series = series_of(&vector).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[0],
            Series::new(
                &[
                    ("cohort_namespace", "shop"),
                    ("cohort_rollout", "web"),
                    ("cohort_version", "canary")
                ],
                12.5
            )
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
            requests: series_of(&vector),
            server_errors: series_of(&empty),
            latency: None,
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
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_every_sample() {
        // Port 9 (discard) on loopback: nothing listens in the test environment.
        let source = PrometheusSource::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let rollouts = [request("web", all_gates())];
        let samples = source.samples(Duration::from_secs(30), &rollouts).await;
        let web = &samples[&shop("web")];
        let Observed::Failed(reason) = &web.canary.requests else {
            panic!("expected a failure, got {:?}", web.canary.requests);
        };
        assert!(reason.contains("127.0.0.1:9"), "{reason}");
        assert!(matches!(web.stable.latency_ms, Observed::Failed(_)));
        assert!(matches!(web.canary.custom["cpu"], Observed::Failed(_)));
        assert!(PrometheusSource::new("not a url", Duration::from_secs(1)).is_err());
    }
}
