//! Samples read straight from Envoy's admin `/stats/prometheus`, for a plain Envoy with no
//! Prometheus server (the lab's default).
//!
//! Envoy's counters and histogram buckets are cumulative since it started, so a window's
//! increase is the difference between two scrapes. Every call scrapes once, keeps the scrape in a
//! small ring of timestamped snapshots, and differences it against the snapshot taken closest to
//! `now - window`. Hence:
//! - the first call has nothing to difference against: every sample is no data (the gates say
//!   Inconclusive), and the next call, one interval later, has a baseline;
//! - a value that went down (or a series that vanished) means Envoy restarted in between: the
//!   window is no data rather than a negative or partial count;
//! - custom PromQL gates cannot run here: they are marked Failed (Error) with a hint to use
//!   `--prometheus`; so are the served metrics of a rollout on Istio, which its sidecars report
//!   and Prometheus gathers.
//!
//! A version's served requests are its cluster's upstream stats (`envoy_cluster_upstream_rq_total`,
//! `envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}`,
//! `envoy_cluster_upstream_rq_time_bucket`, by `envoy_cluster_name`); the filter's decisions are
//! `cohort_decisions_total`, its business events `cohort_events_total`. The scrape asks for these
//! families of every cluster, not only the rollouts' clusters: a rollout that goes away must not
//! make its clusters' series vanish from the next scrape, which would read as a restart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cohort_core::telemetry::EVENTS_TOTAL;

use crate::source::series::{
    cluster_server_errors, error_chain, needed, to_samples, Answer, Answers, CustomKey, Series,
    ServedAnswers,
};
use crate::source::{
    BoxFuture, MetricSource, SamplesByRollout, SeriesRequest, CLUSTER_REQUESTS_TOTAL,
    CLUSTER_REQUEST_TIME_MS, CLUSTER_RESPONSES_BY_CLASS, DECISIONS_TOTAL,
};
use crate::Error;
use cohort_rollout::crd::GateCheck;

/// The admin `filter` regex of the scrape. Envoy matches it against each stat's full name before
/// tags are taken out: `cluster.<name>.upstream_rq_total`, `cluster.<name>.upstream_rq_5xx`
/// (exported as `envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}`; the other classes
/// are not needed) and the histogram `cluster.<name>.upstream_rq_time`, and the filter's
/// `wasmcustom.…;cohort_decisions_total` and `…cohort_events_total`, matched where they end. A
/// cluster name may hold dots; `cluster.<name>.external.upstream_rq_5xx` and the like also match,
/// and are dropped as other families.
pub const STATS_FILTER: &str = r"^cluster\..+\.(upstream_rq_total|upstream_rq_5xx|upstream_rq_time)$|(cohort_decisions_total|cohort_events_total)$";

/// Snapshots kept at most. A sliding window needs only the last few; a sequential gate's window
/// (everything since the step began) can span many calls, so a full ring is thinned evenly
/// rather than cut at its old end, keeping a snapshot near the step's start.
const RING_CAPACITY: usize = 64;
/// A baseline older than this many windows is not used: it would mix in an earlier step's
/// weight (the plan bakes every step at least one window).
const MAX_BASELINE_WINDOWS: u32 = 2;

/// A client of Envoy's admin interface.
#[derive(Debug, Clone)]
pub struct EnvoyAdmin {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl EnvoyAdmin {
    /// A client for the admin interface at `url` (e.g. `http://127.0.0.1:9901`); each request
    /// gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let base = reqwest::Url::parse(url).map_err(|error| invalid(error.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".to_owned()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The admin port is local to the proxy; a proxy from the environment has no business
            // in between.
            .no_proxy()
            .build()
            .map_err(|error| Error::HttpClient(error.to_string()))?;
        Ok(EnvoyAdmin { http, base })
    }

    /// The URL the client was made for.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    async fn get(&self, path: &str, filter: &str) -> Result<String, String> {
        let mut url = self.base.clone();
        url.set_path(path);
        url.query_pairs_mut().clear().append_pair("filter", filter);
        let response =
            self.http.get(url.clone()).send().await.map_err(|error| {
                format!("Envoy admin {url}: {}", error_chain(&error.without_url()))
            })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|error| format!("Envoy admin {url}: {}", error_chain(&error.without_url())))?;
        if !status.is_success() {
            return Err(format!(
                "Envoy admin {url} answered {status}: {}",
                body.chars().take(200).collect::<String>()
            ));
        }
        Ok(body)
    }

    /// `/stats/prometheus`, only the families the source reads: see [`STATS_FILTER`].
    pub async fn cohort_stats(&self) -> Result<String, String> {
        self.get("/stats/prometheus", STATS_FILTER).await
    }

    /// How many ECDS updates of the HTTP filter `filter_name` Envoy applied and rejected so far.
    pub async fn ecds_updates(&self, filter_name: &str) -> Result<EcdsUpdates, String> {
        let prefix = format!("extension_config_discovery.http_filter.{filter_name}.");
        let filter = format!(
            "^{}update_(success|rejected)$",
            crate::source::prometheus::regex_escape(&prefix)
        );
        let text = self.get("/stats", &filter).await?;
        let counter = |name: &str| {
            let wanted = format!("{prefix}{name}: ");
            text.lines()
                .find_map(|line| line.strip_prefix(&wanted))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(EcdsUpdates {
            success: counter("update_success"),
            rejected: counter("update_rejected"),
        })
    }
}

impl EnvoyAdmin {
    /// Polls the ECDS counters of `filter_name` until one has moved past `before` (read before
    /// the file was written), for at most `wait`.
    pub async fn await_ecds_update(
        &self,
        filter_name: &str,
        before: EcdsUpdates,
        wait: Duration,
    ) -> UpdateSeen {
        let started = Instant::now();
        loop {
            match self.ecds_updates(filter_name).await {
                Ok(now) if now.rejected > before.rejected => return UpdateSeen::Rejected,
                Ok(now) if now.success > before.success => return UpdateSeen::Applied,
                Ok(_) => {}
                Err(error) => return UpdateSeen::Unreadable(error),
            }
            if started.elapsed() >= wait {
                return UpdateSeen::NotSeen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What Envoy's ECDS counters say became of one update of the filter's config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateSeen {
    /// `update_success` rose: Envoy serves the new config.
    Applied,
    /// `update_rejected` rose: Envoy or the filter refused it, and the previous config serves on.
    Rejected,
    /// Neither rose in time. Envoy counts nothing for a file whose config did not change, and
    /// nothing for a file it does not watch.
    NotSeen,
    /// The counters could not be read.
    Unreadable(String),
}

/// Envoy's ECDS counters for one filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EcdsUpdates {
    /// `update_success`: configs applied.
    pub success: u64,
    /// `update_rejected`: configs refused (by Envoy or the filter's `on_configure`).
    pub rejected: u64,
}

/// A [`MetricSource`] differencing Envoy admin scrapes.
#[derive(Debug)]
pub struct EnvoyAdminSource {
    admin: EnvoyAdmin,
    ring: Mutex<Ring>,
}

impl EnvoyAdminSource {
    /// A source reading the admin interface at `url`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, Error> {
        Ok(EnvoyAdminSource {
            admin: EnvoyAdmin::new(url, timeout)?,
            ring: Mutex::new(Ring::default()),
        })
    }

    /// The admin client.
    pub fn admin(&self) -> &EnvoyAdmin {
        &self.admin
    }
}

impl MetricSource for EnvoyAdminSource {
    fn samples<'a>(
        &'a self,
        window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, SamplesByRollout> {
        Box::pin(async move {
            let scrape = self.admin.cohort_stats().await;
            let now = Instant::now();
            let answers = match self.ring.lock() {
                Ok(mut ring) => ring.observe(now, scrape, window, rollouts),
                // Another thread panicked holding the ring: its snapshots cannot be trusted.
                Err(_) => failed(rollouts, "the snapshot ring is poisoned".to_owned()),
            };
            to_samples(rollouts, &answers)
        })
    }
}

/// The counters of one scrape: (metric name, labels) → cumulative value.
pub type Counters = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// One scrape, with when it was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When the scrape answered.
    pub at: Instant,
    /// cohort's counters and histogram buckets in it.
    pub counters: Counters,
}

/// Recent snapshots, oldest first.
#[derive(Debug, Default)]
pub struct Ring {
    snapshots: VecDeque<Snapshot>,
}

impl Ring {
    /// Records a scrape taken at `now` (or its failure) and answers for the window ending now.
    pub fn observe(
        &mut self,
        now: Instant,
        scrape: Result<String, String>,
        window: Duration,
        rollouts: &[SeriesRequest],
    ) -> Answers {
        let text = match scrape {
            Ok(text) => text,
            Err(reason) => return failed(rollouts, reason),
        };
        let latest = Snapshot {
            at: now,
            counters: counters(&parse_exposition(&text)),
        };
        let increases = match baseline(&self.snapshots, now, window) {
            None => {
                tracing::debug!("first Envoy scrape of this window: no baseline yet, no data");
                None
            }
            Some(earlier) => match difference(&earlier.counters, &latest.counters) {
                Ok(increases) => Some(increases),
                Err(reset) => {
                    tracing::warn!(
                        series = reset,
                        "an Envoy counter went down (Envoy restarted?): this window has no data"
                    );
                    None
                }
            },
        };
        self.push(latest, window);
        answers(&increases.unwrap_or_default(), rollouts)
    }

    fn push(&mut self, latest: Snapshot, window: Duration) {
        let now = latest.at;
        self.snapshots.push_back(latest);
        let keep_for = window.saturating_mul(MAX_BASELINE_WINDOWS + 1);
        // The newest snapshot always stays, however old the others are.
        while self.snapshots.len() > 1
            && self
                .snapshots
                .front()
                .is_some_and(|oldest| now.saturating_duration_since(oldest.at) > keep_for)
        {
            self.snapshots.pop_front();
        }
        while self.snapshots.len() > RING_CAPACITY {
            self.thin();
        }
    }

    /// Drops the inner snapshot whose neighbours are closest together: the one whose loss
    /// widens the gaps least. The oldest and the newest always stay.
    fn thin(&mut self) {
        let snapshots = &self.snapshots;
        let densest = (1..snapshots.len().saturating_sub(1)).min_by_key(|&i| {
            snapshots[i + 1]
                .at
                .saturating_duration_since(snapshots[i - 1].at)
        });
        match densest {
            Some(index) => {
                self.snapshots.remove(index);
            }
            None => {
                self.snapshots.pop_front();
            }
        }
    }

    /// How many snapshots are kept.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }
}

/// The earlier snapshot taken closest to `now - window`, if one is recent enough.
pub fn baseline(
    snapshots: &VecDeque<Snapshot>,
    now: Instant,
    window: Duration,
) -> Option<&Snapshot> {
    let oldest_usable = window.saturating_mul(MAX_BASELINE_WINDOWS);
    snapshots
        .iter()
        .filter(|snapshot| snapshot.at < now)
        .filter(|snapshot| now.duration_since(snapshot.at) <= oldest_usable)
        .min_by_key(|snapshot| abs_diff(now.duration_since(snapshot.at), window))
}

fn abs_diff(a: Duration, b: Duration) -> Duration {
    a.checked_sub(b).unwrap_or_else(|| b.saturating_sub(a))
}

/// `latest - earlier` per series; a series new since `earlier` counts from 0. `Err` names a
/// series that went down or vanished: Envoy restarted and the window cannot be trusted.
pub fn difference(earlier: &Counters, latest: &Counters) -> Result<Counters, String> {
    let mut increases = Counters::new();
    for (key, &value) in latest {
        let before = earlier.get(key).copied().unwrap_or(0.0);
        if value < before {
            return Err(describe(key));
        }
        increases.insert(key.clone(), value - before);
    }
    if let Some(key) = earlier.keys().find(|key| !latest.contains_key(*key)) {
        return Err(describe(key));
    }
    Ok(increases)
}

fn describe(key: &(String, BTreeMap<String, String>)) -> String {
    let labels: Vec<String> = key
        .1
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    format!("{}{{{}}}", key.0, labels.join(","))
}

/// The families the source reads.
fn is_read_family(name: &str) -> bool {
    name == CLUSTER_REQUESTS_TOTAL
        || name == CLUSTER_RESPONSES_BY_CLASS
        || name == cluster_bucket_family()
        || name == DECISIONS_TOTAL
        || name == EVENTS_TOTAL
}

fn cluster_bucket_family() -> String {
    format!("{CLUSTER_REQUEST_TIME_MS}_bucket")
}

/// The read families of a parsed page, keyed by name and labels (duplicate lines summed).
pub fn counters(samples: &[Sample]) -> Counters {
    let mut out = Counters::new();
    for sample in samples.iter().filter(|s| is_read_family(&s.name)) {
        *out.entry((sample.name.clone(), sample.labels.clone()))
            .or_insert(0.0) += sample.value;
    }
    out
}

/// The window's increases as the answers a Prometheus source would give.
pub fn answers(increases: &Counters, rollouts: &[SeriesRequest]) -> Answers {
    let needed = needed(rollouts);
    let family = |name: &str| -> Vec<Series> {
        increases
            .iter()
            .filter(|((family, _), _)| family == name)
            .map(|((_, labels), value)| Series {
                labels: labels.clone(),
                value: *value,
            })
            .collect()
    };
    Answers {
        istio: needed
            .istio
            .then(|| istio_unsupported(needed.istio_latency)),
        istio_pods: None,
        clusters: needed.clusters.then(|| ServedAnswers {
            requests: Ok(family(CLUSTER_REQUESTS_TOTAL)),
            server_errors: Ok(cluster_server_errors(&family(CLUSTER_RESPONSES_BY_CLASS))),
            latency: needed
                .clusters_latency
                .then(|| Ok(family(&cluster_bucket_family()))),
        }),
        decisions: Ok(family(DECISIONS_TOTAL)),
        events: needed.events.then(|| Ok(family(EVENTS_TOTAL))),
        custom: custom_unsupported(rollouts),
    }
}

/// Why a rollout on Istio reads nothing here.
pub const ISTIO_NEEDS_PROMETHEUS: &str = "Istio's metrics are read through Prometheus \
     (cohort run --prometheus URL): Envoy's admin stats hold one proxy's clusters, not what \
     the service's sidecars served";

/// Istio's served metrics, failed: Envoy's admin cannot give them.
fn istio_unsupported(latency: bool) -> ServedAnswers {
    let fail = || -> Answer { Err(ISTIO_NEEDS_PROMETHEUS.to_owned()) };
    ServedAnswers {
        requests: fail(),
        server_errors: fail(),
        latency: latency.then(fail),
    }
}

/// Every answer failed for `reason` (Istio's for its own).
fn failed(rollouts: &[SeriesRequest], reason: String) -> Answers {
    let needed = needed(rollouts);
    let fail = || -> Answer { Err(reason.clone()) };
    Answers {
        istio: needed
            .istio
            .then(|| istio_unsupported(needed.istio_latency)),
        istio_pods: None,
        clusters: needed.clusters.then(|| ServedAnswers {
            requests: fail(),
            server_errors: fail(),
            latency: needed.clusters_latency.then(fail),
        }),
        decisions: fail(),
        events: needed.events.then(fail),
        custom: custom_unsupported(rollouts),
    }
}

fn custom_unsupported(
    rollouts: &[SeriesRequest],
) -> BTreeMap<CustomKey, Result<Option<f64>, String>> {
    let mut out = BTreeMap::new();
    for rollout in rollouts {
        for gate in &rollout.gates {
            if !matches!(gate.check, GateCheck::Custom(_)) {
                continue;
            }
            for version in [&rollout.canary_version, &rollout.stable_version] {
                let key = CustomKey {
                    rollout: rollout.key(),
                    gate: gate.name(),
                    version: version.clone(),
                };
                let reason = "custom PromQL gates need a Prometheus server (cohort run \
                              --prometheus URL); Envoy's admin stats cannot run queries"
                    .to_owned();
                out.insert(key, Err(reason));
            }
        }
    }
    out
}

/// One line of Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// The samples of a Prometheus text page; comments, blank and malformed lines are skipped (a
/// line this parser cannot read is never one of cohort's, which Envoy prints plainly).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// `name{label="value",…} value [timestamp]`.
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    if !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels up to and including the closing `}`; returns them and the text after it.
fn parse_labels(mut rest: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        if name.is_empty() {
            return None;
        }
        rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::series::tests::{all_gates, istio_request, request, request_in, shop};
    use crate::source::RolloutKey;
    use cohort_rollout::evaluate::{Bucket, Observed};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_exposition_lines() {
        // (line, expected (name, labels, value) or None for a skipped line)
        type Expected = Option<(&'static str, &'static [(&'static str, &'static str)], f64)>;
        let table: &[(&str, Expected)] = &[
            (
                r#"envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="canary"} 7"#,
                Some((
                    "envoy_cluster_upstream_rq_xx",
                    &[
                        ("envoy_response_code_class", "5"),
                        ("envoy_cluster_name", "canary"),
                    ],
                    7.0,
                )),
            ),
            (
                r#"h_bucket{v="a\"b\\c\nd",le="+Inf"} 4 1700000000000"#,
                Some(("h_bucket", &[("v", "a\"b\\c\nd"), ("le", "+Inf")], 4.0)),
            ),
            ("plain 3.5", Some(("plain", &[], 3.5))),
            ("gauge{} 1e+06", Some(("gauge", &[], 1_000_000.0))),
            (
                r#"x{a="1",} -Inf"#,
                Some(("x", &[("a", "1")], f64::NEG_INFINITY)),
            ),
            (
                r#"x{a = "1" , b="}"} 2"#,
                Some(("x", &[("a", "1"), ("b", "}")], 2.0)),
            ),
            ("# TYPE envoy_cluster_upstream_rq_total counter", None),
            ("", None),
            ("no_value", None),
            ("x{a=\"1\" 2", None),
            ("x{a=1} 2", None),
            ("x 1.2.3", None),
            ("9x 1", None),
            ("x{=\"1\"} 1", None),
        ];
        for (line, expected) in table {
            let got = parse_line(line);
            let want = expected.map(|(name, pairs, value)| Sample {
                name: name.to_owned(),
                labels: labels(pairs),
                value,
            });
            assert_eq!(got, want, "line {line:?}");
        }
        assert!(parse_line("x NaN").is_some_and(|s| s.value.is_nan()));
        assert_eq!(parse_exposition("# HELP a\na 1\n\nb{c=\"d\"} 2\n").len(), 2);
    }

    /// A page as Envoy 1.40 prints it (names and label order as a real Envoy's): the clusters
    /// of `shop/web` ([`request`]), another cluster, the filter's decisions and events, and
    /// families the source does not read.
    const PAGE: &str = r#"# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="shop-web-canary"} 100
envoy_cluster_upstream_rq_total{envoy_cluster_name="shop-web-stable"} 900
envoy_cluster_upstream_rq_total{envoy_cluster_name="other"} 5
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="shop-web-canary"} 90
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="shop-web-canary"} 10
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="shop-web-stable"} 900
envoy_cluster_upstream_rq_completed{envoy_cluster_name="shop-web-canary"} 100
cohort_decisions_total{destination_service_namespace="shop",destination_service_name="web",destination_version="canary"} 101
cohort_decisions_total{destination_service_namespace="shop",destination_service_name="web",destination_version="stable"} 899
cohort_events_total{cohort_namespace="shop",cohort_rollout="web",cohort_version="stable",cohort_event="checkout"} 30
cohort_rollout_weight_bp{cohort_namespace="shop",cohort_rollout="web"} 500
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="shop-web-canary",le="10"} 60
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="shop-web-canary",le="+Inf"} 100
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="shop-web-canary"} 800
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="shop-web-canary"} 100
"#;

    fn key(name: &str, pairs: &[(&str, &str)]) -> (String, BTreeMap<String, String>) {
        (name.to_owned(), labels(pairs))
    }

    #[test]
    fn keeps_only_the_families_gates_read() {
        let counters = counters(&parse_exposition(PAGE));
        assert_eq!(counters.len(), 11);
        assert!(counters
            .keys()
            .all(|(name, _)| name != "cohort_rollout_weight_bp"
                && name != "envoy_cluster_upstream_rq_completed"
                && !name.ends_with("_sum")
                && !name.ends_with("_count")));
    }

    #[test]
    fn differences_counters() {
        let a = key("envoy_cluster_upstream_rq_total", &[("v", "a")]);
        let b = key("envoy_cluster_upstream_rq_total", &[("v", "b")]);
        type Values = Vec<(&'static str, f64)>;
        type Row = (Values, Values, Result<Values, ()>);
        let table: Vec<Row> = vec![
            (vec![("a", 10.0)], vec![("a", 15.0)], Ok(vec![("a", 5.0)])),
            (vec![("a", 10.0)], vec![("a", 10.0)], Ok(vec![("a", 0.0)])),
            // A series new since the baseline counts from zero.
            (
                vec![("a", 10.0)],
                vec![("a", 12.0), ("b", 3.0)],
                Ok(vec![("a", 2.0), ("b", 3.0)]),
            ),
            (vec![], vec![("b", 3.0)], Ok(vec![("b", 3.0)])),
            // Went down, or vanished: Envoy restarted.
            (vec![("a", 10.0)], vec![("a", 4.0)], Err(())),
            (vec![("a", 10.0), ("b", 1.0)], vec![("a", 12.0)], Err(())),
        ];
        let build = |pairs: &[(&str, f64)]| -> Counters {
            pairs
                .iter()
                .map(|(which, value)| (if *which == "a" { a.clone() } else { b.clone() }, *value))
                .collect()
        };
        for (earlier, latest, expected) in table {
            let got = difference(&build(&earlier), &build(&latest)).map_err(|_| ());
            assert_eq!(
                got,
                expected.map(|pairs| build(&pairs)),
                "{earlier:?} → {latest:?}"
            );
        }
        assert_eq!(
            difference(&build(&[("a", 2.0)]), &build(&[("a", 1.0)])),
            Err(r#"envoy_cluster_upstream_rq_total{v="a"}"#.to_owned())
        );
    }

    fn snapshot(at: Instant) -> Snapshot {
        Snapshot {
            at,
            counters: Counters::new(),
        }
    }

    #[test]
    fn picks_the_snapshot_closest_to_one_window_ago() {
        let now = Instant::now() + Duration::from_secs(600);
        let ago = |ms: u64| now - Duration::from_millis(ms);
        let window = Duration::from_secs(2);
        // (snapshot ages in ms, expected age of the pick)
        let table: &[(&[u64], Option<u64>)] = &[
            (&[], None),
            (&[3000, 2100, 1000], Some(2100)),
            (&[1900, 900], Some(1900)),
            (&[1000], Some(1000)),
            // Older than two windows: would mix in an earlier step.
            (&[4001], None),
            (&[4000], Some(4000)),
            // Not earlier than now.
            (&[0], None),
        ];
        for (ages, expected) in table {
            let ring: VecDeque<Snapshot> = ages.iter().map(|&ms| snapshot(ago(ms))).collect();
            let picked = baseline(&ring, now, window).map(|s| now.duration_since(s.at));
            assert_eq!(picked, expected.map(Duration::from_millis), "ages {ages:?}");
        }
    }

    /// `shop/web`'s clusters: canary's 2xx and 5xx, stable's 2xx, as Envoy counts them
    /// (`upstream_rq_total` and the class counters), and the filter's decisions for canary.
    fn page(canary_2xx: u64, canary_5xx: u64, stable_2xx: u64) -> String {
        let canary = canary_2xx + canary_5xx;
        format!(
            "envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"shop-web-canary\"}} {canary}\n\
             envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"shop-web-stable\"}} {stable_2xx}\n\
             envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"2\",envoy_cluster_name=\"shop-web-canary\"}} {canary_2xx}\n\
             envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"5\",envoy_cluster_name=\"shop-web-canary\"}} {canary_5xx}\n\
             envoy_cluster_upstream_rq_xx{{envoy_response_code_class=\"2\",envoy_cluster_name=\"shop-web-stable\"}} {stable_2xx}\n\
             cohort_decisions_total{{destination_service_namespace=\"shop\",destination_service_name=\"web\",destination_version=\"canary\"}} {canary}\n"
        )
    }

    #[test]
    fn the_ring_answers_increases_over_the_window() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let window = Duration::from_secs(2);
        let rollouts = [request("web", all_gates())];
        let mut ring = Ring::default();

        // First scrape: no baseline, everything no data.
        let first = to_samples(
            &rollouts,
            &ring.observe(at(0), Ok(page(10, 0, 100)), window, &rollouts),
        );
        assert_eq!(first[&shop("web")].canary.requests, Observed::NoData);
        assert_eq!(first[&shop("web")].canary.decisions, Observed::NoData);
        assert_eq!(first[&shop("web")].stable.latency_ms, Observed::NoData);
        // Custom gates cannot run on Envoy stats: an Error, with the way out.
        assert!(
            matches!(&first[&shop("web")].canary.custom["cpu"], Observed::Failed(reason) if reason.contains("--prometheus"))
        );

        let second = to_samples(
            &rollouts,
            &ring.observe(at(2), Ok(page(100, 10, 1000)), window, &rollouts),
        );
        let web = &second[&shop("web")];
        assert_eq!(web.canary.requests, Observed::Value(100.0));
        assert_eq!(web.canary.server_errors, Observed::Value(10.0));
        assert_eq!(web.canary.decisions, Observed::Value(100.0));
        assert_eq!(web.stable.requests, Observed::Value(900.0));
        // A 2xx class of stable is counted, its 5xx class is absent: no data.
        assert_eq!(web.stable.server_errors, Observed::NoData);
        assert_eq!(web.stable.decisions, Observed::NoData);

        // A failed scrape fails the samples and leaves the ring as it was.
        let failed = to_samples(
            &rollouts,
            &ring.observe(at(3), Err("refused".into()), window, &rollouts),
        );
        assert_eq!(
            failed[&shop("web")].canary.requests,
            Observed::Failed("refused".into())
        );
        assert_eq!(
            failed[&shop("web")].stable.decisions,
            Observed::Failed("refused".into())
        );
        assert_eq!(ring.len(), 2);

        // Envoy restarted: counters went down; no data for this window, then a fresh baseline.
        let restarted = to_samples(
            &rollouts,
            &ring.observe(at(4), Ok(page(5, 0, 50)), window, &rollouts),
        );
        assert_eq!(restarted[&shop("web")].canary.requests, Observed::NoData);
        let after = to_samples(
            &rollouts,
            &ring.observe(at(6), Ok(page(25, 0, 250)), window, &rollouts),
        );
        assert_eq!(after[&shop("web")].canary.requests, Observed::Value(20.0));

        // Old snapshots are dropped, the newest is always kept.
        let late = to_samples(
            &rollouts,
            &ring.observe(at(600), Ok(page(30, 0, 300)), window, &rollouts),
        );
        assert_eq!(late[&shop("web")].canary.requests, Observed::NoData);
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn a_full_ring_is_thinned_evenly_and_keeps_its_oldest_snapshot() {
        let start = Instant::now();
        let mut ring = Ring::default();
        // A window as long as a sequential gate's: nothing ages out, the capacity bounds it.
        let window = Duration::from_secs(3600);
        for second in 0..200 {
            let at = start + Duration::from_secs(second);
            ring.push(snapshot(at), window);
        }
        assert_eq!(ring.len(), RING_CAPACITY);
        let ages: Vec<u64> = ring
            .snapshots
            .iter()
            .map(|s| s.at.duration_since(start).as_secs())
            .collect();
        assert_eq!(ages.first(), Some(&0));
        assert_eq!(ages.last(), Some(&199));
        let widest = ages.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap();
        assert!(widest <= 8, "gaps stay even: {ages:?}");
        // The step-start snapshot is still there to difference against.
        let now = start + Duration::from_secs(199);
        let picked = baseline(&ring.snapshots, now, Duration::from_secs(199)).unwrap();
        assert_eq!(picked.at, start);
    }

    #[test]
    fn histograms_and_events_difference_too() {
        let rollouts = [request("web", all_gates())];
        let earlier = counters(&parse_exposition(PAGE));
        let later_page = PAGE
            .replace("le=\"10\"} 60", "le=\"10\"} 70")
            .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 120")
            .replace(
                "cohort_event=\"checkout\"} 30",
                "cohort_event=\"checkout\"} 33",
            )
            .replace(
                "destination_version=\"canary\"} 101",
                "destination_version=\"canary\"} 121",
            );
        let later = counters(&parse_exposition(&later_page));
        let increases = difference(&earlier, &later).unwrap();
        let samples = to_samples(&rollouts, &answers(&increases, &rollouts));
        let web = &samples[&shop("web")];
        assert_eq!(
            web.canary.latency_ms,
            Observed::Value(vec![
                Bucket {
                    le: 10.0,
                    count: 10.0
                },
                Bucket {
                    le: f64::INFINITY,
                    count: 20.0
                }
            ])
        );
        assert_eq!(web.stable.events["checkout"], Observed::Value(3.0));
        assert_eq!(web.canary.decisions, Observed::Value(20.0));
        // Counters that did not move: a zero increase, not no data.
        assert_eq!(web.canary.requests, Observed::Value(0.0));
        // Without latency or event gates those families are not handed over; requests and
        // decisions always are (the routing check reads them).
        let plain = answers(&increases, &[request("web", Vec::new())]);
        assert_eq!(plain.events, None);
        assert!(plain.istio.is_none());
        let clusters = plain.clusters.unwrap();
        assert_eq!(clusters.latency, None);
        assert!(clusters.requests.is_ok_and(|series| !series.is_empty()));
        assert!(plain.decisions.is_ok_and(|series| series.len() == 2));
    }

    /// Envoy's page as it shows the decisions of two same-named rollouts of two namespaces and
    /// of one without a namespace (an empty tag, exported as `destination_service_namespace=""`):
    /// each reads its own.
    #[test]
    fn the_namespace_label_keeps_same_named_rollouts_apart() {
        let page = |shop: u64, billing: u64, bare: u64| {
            format!(
                "cohort_decisions_total{{destination_service_namespace=\"shop\",destination_service_name=\"checkout\",destination_version=\"canary\"}} {shop}\n\
                 cohort_decisions_total{{destination_service_namespace=\"billing\",destination_service_name=\"checkout\",destination_version=\"canary\"}} {billing}\n\
                 cohort_decisions_total{{destination_service_namespace=\"\",destination_service_name=\"checkout\",destination_version=\"canary\"}} {bare}\n"
            )
        };
        let rollouts = [
            request("checkout", Vec::new()),
            request_in("billing", "checkout", Vec::new()),
            request_in("", "checkout", Vec::new()),
        ];
        let start = Instant::now();
        let window = Duration::from_secs(2);
        let mut ring = Ring::default();
        ring.observe(start, Ok(page(0, 0, 0)), window, &rollouts);
        let samples = to_samples(
            &rollouts,
            &ring.observe(start + window, Ok(page(1, 20, 300)), window, &rollouts),
        );
        let decisions = |namespace: &str| {
            samples[&RolloutKey::new(namespace, "checkout")]
                .canary
                .decisions
                .clone()
        };
        assert_eq!(decisions("shop"), Observed::Value(1.0));
        assert_eq!(decisions("billing"), Observed::Value(20.0));
        assert_eq!(decisions(""), Observed::Value(300.0));
    }

    /// A rollout on Istio asked of Envoy's admin: its served samples fail with the way out, the
    /// Envoy-cluster rollout beside it reads as usual, and its decisions are still read.
    #[test]
    fn a_rollout_on_istio_needs_prometheus() {
        let web = request("web", all_gates());
        let cart = istio_request("cart", "web", all_gates());
        let rollouts = [web.clone(), cart.clone()];
        let start = Instant::now();
        let window = Duration::from_secs(2);
        let mut ring = Ring::default();
        ring.observe(start, Ok(page(0, 0, 0)), window, &rollouts);
        let samples = to_samples(
            &rollouts,
            &ring.observe(start + window, Ok(page(8, 2, 30)), window, &rollouts),
        );
        let cart = &samples[&cart.key()];
        for observed in [
            &cart.canary.requests,
            &cart.canary.server_errors,
            &cart.stable.requests,
        ] {
            assert_eq!(
                observed,
                &Observed::Failed(ISTIO_NEEDS_PROMETHEUS.to_owned())
            );
        }
        assert!(
            matches!(&cart.stable.latency_ms, Observed::Failed(reason) if reason.contains("--prometheus"))
        );
        assert_eq!(samples[&web.key()].canary.requests, Observed::Value(10.0));
        assert_eq!(
            samples[&web.key()].canary.server_errors,
            Observed::Value(2.0)
        );
        // A failed scrape: the Istio rollout still says why it can never read here.
        let failed = failed(&rollouts, "refused".into());
        let failed = to_samples(&rollouts, &failed);
        assert_eq!(
            failed[&RolloutKey::new("shop", "cart")].canary.requests,
            Observed::Failed(ISTIO_NEEDS_PROMETHEUS.to_owned())
        );
        assert_eq!(
            failed[&web.key()].canary.requests,
            Observed::Failed("refused".into())
        );
    }

    /// The scrape's filter against Envoy's full stat names: the read families of any cluster,
    /// whatever its name holds, and the filter's counters; nothing else a page is full of.
    #[test]
    fn the_scrape_filter_takes_the_read_families_only() {
        let filter = regex::Regex::new(STATS_FILTER).unwrap();
        let taken = [
            "cluster.canary.upstream_rq_total",
            "cluster.stable.upstream_rq_5xx",
            "cluster.stable.upstream_rq_time",
            "cluster.outbound|80||web.shop.svc.cluster.local.upstream_rq_total",
            "wasmcustom.destination_service_namespace=.=shop;.;destination_service_name=.=web;.;destination_version=.=canary;.;cohort_decisions_total",
            "wasmcustom.cohort_namespace=.=shop;.;cohort_rollout=.=web;.;cohort_version=.=canary;.;cohort_event=.=checkout;.;cohort_events_total",
        ];
        let left = [
            "cluster.canary.upstream_rq_200",
            "cluster.canary.upstream_rq_2xx",
            "cluster.canary.upstream_rq_completed",
            "cluster.canary.upstream_rq_total_extra",
            "cluster.canary.upstream_cx_total",
            "cluster.canary.upstream_rq_timeout",
            "cluster_manager.cluster_added",
            "http.ingress.downstream_rq_total",
            "http.ingress.downstream_rq_time",
            "wasmcustom.cohort_rollout_weight_bp",
            "server.uptime",
        ];
        for name in taken {
            assert!(filter.is_match(name), "{name} not taken");
        }
        for name in left {
            assert!(!filter.is_match(name), "{name} taken");
        }
    }

    #[tokio::test]
    async fn an_unreachable_admin_fails_the_samples() {
        let source = EnvoyAdminSource::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let rollouts = [request("web", Vec::new())];
        let samples = source.samples(Duration::from_secs(2), &rollouts).await;
        assert!(
            matches!(&samples[&shop("web")].canary.requests, Observed::Failed(reason) if reason.contains("127.0.0.1:9"))
        );
        assert!(EnvoyAdmin::new("ftp://x", Duration::from_secs(1)).is_err());
        assert!(EnvoyAdmin::new("127.0.0.1:9901", Duration::from_secs(1)).is_err());
    }
}
