//! Controller scale: 10, 100 and 1,000 CanaryRollouts reconciled by the real [`reconcile`]
//! against an in-process fake Kubernetes API and a fake metric source behind the real
//! [`SharedCycle`]. Reports metric queries per analysis cycle, API calls per cycle, reconcile
//! latency and the process's peak resident memory.
//!
//! `cargo bench -p cohort-controller --bench scale` (about a minute; `-- 1000` runs one size)
//!
//! What is real: `reconcile` end to end (validate, `SharedCycle`, `evaluate`, `plan`, the
//! WasmPlugin read / merge / filter-config check / server-side apply, the status apply, Events
//! through kube's `Recorder`, the controller's metrics), on a `kube::Client` that serialises and
//! parses every request and answer. What is faked:
//! - the API server: a tower-test mock service answering GET/PATCH of WasmPlugins, the JSON
//!   patch that adds the controller's finalizer to a CanaryRollout, PATCH of CanaryRollout
//!   status and POST/PATCH of Events from an in-memory store (no admission, no managedFields, no
//!   conflicts); it lives in this process, so its copy of every object (kept as serialised JSON,
//!   about 3.5 MB at 1,000 rollouts) counts in the resident memory reported;
//! - the watch: kube-runtime's `Controller` is not run. The bench plays the watcher, handing
//!   `reconcile` each rollout as the fake API server holds it after the previous cycle;
//! - time: the reconciler's clock advances one analysis interval (1m) per cycle; the cycles
//!   themselves run back to back, each at least `SharedCycle`'s freshness (5 s, as in the
//!   controller) after the previous one, so each cycle's first reconcile refreshes the shared
//!   answer, as reconciles one interval apart would;
//! - metrics: a fake source answering healthy canned samples for every rollout it is asked
//!   about, counting its calls (in the cluster, one call is one PromQL query per series kind).
//!
//! Cycle 0 starts every rollout, [`MAX_CONCURRENT_RECONCILES`] reconciles in flight at a time,
//! as when the controller starts and lists them all: a first pass adds each rollout's finalizer
//! (kube-runtime's helper then waits for the watch to hand the rollout back), a second pass
//! makes the first push; cycles 1.. are analysis cycles, one
//! reconcile after the other, each timed. Rollouts are the committed example
//! (`manifests/examples`: three gates, one interval of 1m) with steps of 1/5/25/50/100 % baking 2
//! minutes each, so they step every other cycle; ten rollouts share each namespace's WasmPlugin.

// A benchmark is test code: a broken fixture should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use cohort_controller::driver::Clock;
use cohort_controller::metrics::Metrics;
use cohort_controller::reconciler::{
    reconcile, Context, MAX_CONCURRENT_RECONCILES, SHARED_ANSWER_FRESHNESS,
};
use cohort_controller::source::shared::SharedCycle;
use cohort_controller::source::{BoxFuture, MetricSource, SamplesByRollout, SeriesRequest};
use cohort_controller::target::wasmplugin::merge;
use cohort_rollout::crd::{CanaryRollout, Phase};
use cohort_rollout::evaluate::{Bucket, Observed, Samples, VersionSamples};

/// The committed example rollout every bench rollout is made from.
const EXAMPLE: &str = include_str!("../../manifests/examples/canaryrollout.yaml");
/// Rollouts sharing one namespace and its WasmPlugin.
const ROLLOUTS_PER_PLUGIN: usize = 10;
/// Analysis cycles after the start cycle.
const ANALYSIS_CYCLES: usize = 6;
/// The example's analysis interval: how far the clock moves per cycle.
const INTERVAL_SECONDS: i64 = 60;
/// The start of the bench's clock.
const T0: i64 = 1_800_000_000;

// --- the fake API server ---------------------------------------------------------------------

/// API calls by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Calls(BTreeMap<&'static str, u64>);

impl Calls {
    fn since(&self, before: &Calls) -> Calls {
        Calls(
            self.0
                .iter()
                .map(|(kind, n)| (*kind, n - before.0.get(kind).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        )
    }
}

/// Objects keyed by (namespace, name), as serialised JSON (compact: the bench measures the
/// controller's memory, not the fake server's).
#[derive(Default)]
struct Store {
    rollouts: BTreeMap<(String, String), Vec<u8>>,
    plugins: BTreeMap<(String, String), Vec<u8>>,
    calls: Calls,
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn from_bytes(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn ok_bytes(body: &[u8]) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(body.to_vec()))
        .unwrap()
}

type Shared = Arc<Mutex<Store>>;

fn ok(body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn not_found(what: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{what} not found"), "reason": "NotFound", "code": 404
    });
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
        .unwrap()
}

/// Applies the JSON patch kube-runtime's finalizer helper sends to add a finalizer: a `test` of
/// `/metadata/finalizers` (absent reads as null, as the API server reads it), then an `add` of
/// the whole list or of one entry at its end. `false` when the test fails (a 422 there).
fn add_finalizer(rollout: &mut Value, patch: &Value) -> bool {
    for operation in patch.as_array().unwrap() {
        let value = operation["value"].clone();
        let finalizers = &mut rollout["metadata"]["finalizers"];
        match (operation["op"].as_str(), operation["path"].as_str()) {
            (Some("test"), Some("/metadata/finalizers")) if *finalizers != value => return false,
            (Some("test"), Some("/metadata/finalizers")) => {}
            (Some("add"), Some("/metadata/finalizers")) => *finalizers = value,
            (Some("add"), Some("/metadata/finalizers/-")) => {
                finalizers.as_array_mut().unwrap().push(value)
            }
            _ => panic!("a finalizer patch the bench does not serve: {operation}"),
        }
    }
    true
}

fn bump(object: &mut Value) {
    let version = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
}

async fn answer(store: Shared, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let path = parts.uri.path().trim_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    let mut store = store.lock().unwrap();
    let (kind, response) = match (&parts.method, segments.as_slice()) {
        (
            &Method::GET,
            ["apis", "extensions.istio.io", "v1alpha1", "namespaces", ns, "wasmplugins", name],
        ) => (
            "GET wasmplugin",
            match store.plugins.get(&(ns.to_string(), name.to_string())) {
                Some(plugin) => ok_bytes(plugin),
                None => not_found(name),
            },
        ),
        (
            &Method::PATCH,
            ["apis", "extensions.istio.io", "v1alpha1", "namespaces", ns, "wasmplugins", name],
        ) => (
            "PATCH wasmplugin",
            match store.plugins.get_mut(&(ns.to_string(), name.to_string())) {
                Some(stored) => {
                    let mut plugin = from_bytes(stored);
                    let live = plugin["spec"]["pluginConfig"].clone();
                    plugin["spec"]["pluginConfig"] = merge(&live, &body["spec"]["pluginConfig"]);
                    bump(&mut plugin);
                    *stored = to_bytes(&plugin);
                    ok(&plugin)
                }
                None => not_found(name),
            },
        ),
        (
            &Method::PATCH,
            ["apis", "cohort.dev", "v1alpha1", "namespaces", ns, "canaryrollouts", name],
        ) => (
            "PATCH finalizer",
            match store.rollouts.get_mut(&(ns.to_string(), name.to_string())) {
                Some(stored) => {
                    let mut rollout = from_bytes(stored);
                    assert!(
                        add_finalizer(&mut rollout, &body),
                        "finalizers changed under the bench: {body}"
                    );
                    bump(&mut rollout);
                    *stored = to_bytes(&rollout);
                    ok(&rollout)
                }
                None => not_found(name),
            },
        ),
        (
            &Method::PATCH,
            ["apis", "cohort.dev", "v1alpha1", "namespaces", ns, "canaryrollouts", name, "status"],
        ) => (
            "PATCH status",
            match store.rollouts.get_mut(&(ns.to_string(), name.to_string())) {
                Some(stored) => {
                    let mut rollout = from_bytes(stored);
                    rollout["status"] = body["status"].clone();
                    bump(&mut rollout);
                    *stored = to_bytes(&rollout);
                    ok(&rollout)
                }
                None => not_found(name),
            },
        ),
        (&Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
            ("POST event", ok(&body))
        }
        (&Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
            ("PATCH event", ok(&body))
        }
        _ => ("unexpected", not_found(&format!("{} {path}", parts.method))),
    };
    *store.calls.0.entry(kind).or_default() += 1;
    response
}

/// Answers every request of `handle`, each in its own task, until the client is gone.
async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, store: Shared) {
    while let Some((request, respond)) = handle.next_request().await {
        let store = store.clone();
        tokio::spawn(async move { respond.send_response(answer(store, request).await) });
    }
}

// --- the fake metric source and the clock ----------------------------------------------------

/// Counts its calls; answers `samples` for every rollout asked about.
struct FakeSource {
    calls: Arc<AtomicUsize>,
    samples: Samples,
}

impl MetricSource for FakeSource {
    fn samples<'a>(
        &'a self,
        _window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, SamplesByRollout> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = rollouts
            .iter()
            .map(|request| (request.key(), self.samples.clone()))
            .collect();
        Box::pin(async move { answer })
    }
}

/// A version serving `requests` with 0.1% errors, p99 under 50 ms, and a checkout per 20.
fn version(requests: f64) -> VersionSamples {
    let cumulative = [
        (5.0, 0.3),
        (10.0, 0.6),
        (25.0, 0.9),
        (50.0, 0.99),
        (100.0, 0.999),
    ];
    let mut buckets: Vec<Bucket> = cumulative
        .iter()
        .map(|&(le, share)| Bucket {
            le,
            count: requests * share,
        })
        .collect();
    buckets.push(Bucket {
        le: f64::INFINITY,
        count: requests,
    });
    VersionSamples {
        requests: Observed::Value(requests),
        server_errors: Observed::Value(requests / 1000.0),
        latency_ms: Observed::Value(buckets),
        decisions: Observed::Value(requests),
        events: BTreeMap::from([("checkout".to_owned(), Observed::Value(requests / 20.0))]),
        custom: BTreeMap::new(),
        // The bench's source reports totals, as a plain Envoy's clusters do.
        units: Vec::new(),
        pods: Vec::new(),
    }
}

/// The reconciler's clock, moved by the bench.
struct BenchClock(AtomicI64);

impl Clock for BenchClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_second(self.0.load(Ordering::SeqCst)).unwrap()
    }
}

// --- rollouts ---------------------------------------------------------------------------------

fn namespace(i: usize) -> String {
    format!("team-{:03}", i / ROLLOUTS_PER_PLUGIN)
}

fn rollout_json(example: &Value, i: usize) -> Value {
    let mut rollout = example.clone();
    let name = format!("svc-{i:04}");
    rollout["metadata"] = json!({
        "name": name, "namespace": namespace(i), "uid": format!("uid-{i}"),
        "generation": 1, "resourceVersion": "1"
    });
    rollout["spec"]["hosts"] = json!([name]);
    // The weight cycle at scale: without `spec.workload`'s Deployment reads and patches, which
    // the scripted API-server tests cover call by call.
    if let Some(spec) = rollout["spec"].as_object_mut() {
        spec.remove("workload");
    }
    // Short bakes, so the analysis cycles step rollouts (and write the WasmPlugin) as well as hold.
    rollout["spec"]["steps"] = json!([
        {"weight": 1, "bake": "2m"}, {"weight": 5, "bake": "2m"}, {"weight": 25, "bake": "2m"},
        {"weight": 50, "bake": "2m"}, {"weight": 100}
    ]);
    rollout
}

fn plugin_json(namespace: &str) -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": {"name": "cohort", "namespace": namespace, "resourceVersion": "1"},
        "spec": {
            "url": "oci://ghcr.io/example/cohort-filter:1", "match": [{"mode": "CLIENT"}],
            "pluginConfig": {"version": 1}
        }
    })
}

/// What the watcher would hand the reconciler now.
fn watched(store: &Shared) -> Vec<Arc<CanaryRollout>> {
    store
        .lock()
        .unwrap()
        .rollouts
        .values()
        .map(|bytes| Arc::new(serde_json::from_slice(bytes).unwrap()))
        .collect()
}

// --- measuring --------------------------------------------------------------------------------

/// `VmHWM` and `VmRSS` of this process, MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

struct Report {
    rollouts: usize,
    queries: Vec<usize>,
    largest_cycle_calls: Calls,
    latencies: Vec<Duration>,
    start_cycle: Duration,
    analysis_cycles: Vec<Duration>,
    errors: usize,
    phases: BTreeMap<String, usize>,
    rss_after_start_mib: f64,
    hwm_mib: f64,
    rss_mib: f64,
}

async fn run(rollouts: usize) -> Report {
    let example: Value = serde_saphyr::from_str(EXAMPLE).unwrap();
    let store: Shared = Arc::default();
    {
        let mut store = store.lock().unwrap();
        for i in 0..rollouts {
            let rollout = rollout_json(&example, i);
            store
                .rollouts
                .insert((namespace(i), format!("svc-{i:04}")), to_bytes(&rollout));
            store
                .plugins
                .entry((namespace(i), "cohort".to_owned()))
                .or_insert_with(|| to_bytes(&plugin_json(&namespace(i))));
        }
    }
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, store.clone()));
    let client = Client::new(service, "default");

    let queries = Arc::new(AtomicUsize::new(0));
    let source = FakeSource {
        calls: queries.clone(),
        samples: Samples {
            canary: version(2_000.0),
            stable: version(20_000.0),
        },
    };
    let clock = Arc::new(BenchClock(AtomicI64::new(T0)));
    let ctx = Arc::new(Context::new(
        client,
        Arc::new(SharedCycle::new(source, SHARED_ANSWER_FRESHNESS)),
        clock.clone(),
        Arc::new(Metrics::default()),
        Some("cohort-bench".to_owned()),
    ));

    let mut errors = 0;
    let mut queries_per_cycle = Vec::new();
    let mut largest_cycle_calls = Calls::default();
    let mut latencies = Vec::new();
    let mut analysis_cycles = Vec::new();

    // Cycle 0: every rollout gets its finalizer, then starts, as many reconciles in flight as
    // the controller allows.
    let started = Instant::now();
    for _pass in ["finalizer", "first push"] {
        let results: Vec<_> = futures::stream::iter(
            watched(&store)
                .into_iter()
                .map(|rollout| reconcile(rollout, ctx.clone())),
        )
        .buffer_unordered(usize::from(MAX_CONCURRENT_RECONCILES))
        .collect()
        .await;
        errors += results.iter().filter(|result| result.is_err()).count();
    }
    let start_cycle = started.elapsed();
    let (_, rss_after_start_mib) = memory_mib();

    let mut last_cycle = Instant::now();
    for cycle in 1..=ANALYSIS_CYCLES {
        clock
            .0
            .store(T0 + cycle as i64 * INTERVAL_SECONDS, Ordering::SeqCst);
        // One analysis interval later, as far as SharedCycle can tell.
        let wait = (SHARED_ANSWER_FRESHNESS + Duration::from_millis(50))
            .saturating_sub(last_cycle.elapsed());
        tokio::time::sleep(wait).await;
        last_cycle = Instant::now();

        let queries_before = queries.load(Ordering::SeqCst);
        let calls_before = store.lock().unwrap().calls.clone();
        let cycle_started = Instant::now();
        for rollout in watched(&store) {
            let started = Instant::now();
            let result = reconcile(rollout, ctx.clone()).await;
            latencies.push(started.elapsed());
            errors += usize::from(result.is_err());
        }
        analysis_cycles.push(cycle_started.elapsed());

        queries_per_cycle.push(queries.load(Ordering::SeqCst) - queries_before);
        let calls = store.lock().unwrap().calls.since(&calls_before);
        if calls.0.values().sum::<u64>() > largest_cycle_calls.0.values().sum::<u64>() {
            largest_cycle_calls = calls;
        }
    }

    let mut phases = BTreeMap::new();
    for rollout in watched(&store) {
        let status = rollout.status.clone().unwrap_or_default();
        let phase = match status.phase {
            Phase::Progressing => format!("Progressing at {}%", status.weight_bp as f64 / 100.0),
            other => format!("{other:?}"),
        };
        *phases.entry(phase).or_default() += 1;
    }
    let (hwm_mib, rss_mib) = memory_mib();
    let unexpected = store
        .lock()
        .unwrap()
        .calls
        .0
        .get("unexpected")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        unexpected, 0,
        "the reconciler made calls the fake API does not serve"
    );
    assert_eq!(errors, 0, "reconciles failed against the fake API");
    drop(ctx);
    let _ = server.await;
    latencies.sort();
    Report {
        rollouts,
        queries: queries_per_cycle,
        largest_cycle_calls,
        latencies,
        start_cycle,
        analysis_cycles,
        errors,
        phases,
        rss_after_start_mib,
        hwm_mib,
        rss_mib,
    }
}

fn print(report: &Report) {
    let latencies = &report.latencies;
    println!("## {} rollouts", report.rollouts);
    println!(
        "metric source calls per analysis cycle: {:?}",
        report.queries
    );
    println!(
        "API calls in the busiest analysis cycle: {:?}",
        report.largest_cycle_calls.0
    );
    println!(
        "reconcile ({} timed, one at a time): p50 {}, p99 {}, max {}",
        latencies.len(),
        ms(quantile(latencies, 0.50)),
        ms(quantile(latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    println!(
        "start cycle ({MAX_CONCURRENT_RECONCILES} at a time): {}; analysis cycles: {}",
        ms(report.start_cycle),
        report
            .analysis_cycles
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "failed reconciles: {}; rollouts now: {:?}",
        report.errors, report.phases
    );
    println!(
        "process memory: after the start cycle (VmRSS) {:.1} MiB; peak so far (VmHWM) {:.1} MiB; \
         now (VmRSS) {:.1} MiB",
        report.rss_after_start_mib, report.hwm_mib, report.rss_mib
    );
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; a number picks one size.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1_000]
    } else {
        sizes
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (hwm, rss) = memory_mib();
    println!("# Controller scale");
    println!(
        "before any rollout: VmHWM {hwm:.1} MiB, VmRSS {rss:.1} MiB; {ROLLOUTS_PER_PLUGIN} rollouts \
         per WasmPlugin; SharedCycle freshness {:?}; {ANALYSIS_CYCLES} analysis cycles",
        SHARED_ANSWER_FRESHNESS
    );
    println!();
    let reports: Vec<Report> = sizes
        .iter()
        .map(|&rollouts| {
            let report = runtime.block_on(run(rollouts));
            print(&report);
            report
        })
        .collect();
    println!("| rollouts | source calls per analysis cycle | reconcile p50 | reconcile p99 | peak RSS so far |");
    println!("|---:|---|---:|---:|---:|");
    for report in &reports {
        println!(
            "| {} | {:?} | {} | {} | {:.1} MiB |",
            report.rollouts,
            report.queries,
            ms(quantile(&report.latencies, 0.50)),
            ms(quantile(&report.latencies, 0.99)),
            report.hwm_mib
        );
    }
}
