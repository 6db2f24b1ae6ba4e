//! End-to-end rollouts: a real Envoy 1.40 with the built filter, a real Prometheus scraping its
//! admin every second, and `cohort run` (the library function, on its own thread) stepping the
//! canary's weight through the ECDS file while a load generator sends requests from many users.
//!
//! Short bakes (2 s) and a 2 s analysis interval keep each test well under a minute. The tests
//! take turns (one lock), so timings are not distorted by each other on small machines.

// Test code: a failed expectation panics with its message (clippy.toml's test allowances cover
// only `#[test]` functions, not this file's helpers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cohort_controller::standalone::release::{release, ReleaseArgs};
use cohort_controller::standalone::{self, load_status, Outcome, RunArgs};
use cohort_controller::target::envoy_file::EnvoyEcdsFile;
use cohort_rollout::crd::{CanaryRolloutStatus, Phase, Verdict};
use cohort_tests::prometheus_server::Prometheus;
use cohort_tests::{config, expected_version, prom, Client, Envoy, TempDir};

/// Generous bound on one whole rollout.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(60);
/// Distinct users the load cycles through.
const USERS: usize = 2_000;
/// Users whose routing is checked at every weight.
const PROBES: usize = 200;

static SERIAL: Mutex<()> = Mutex::new(());

/// One rollout test at a time: they measure time, and each runs Envoy, Prometheus and load.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `cohort run`'s log lines in the test output (shown for failed tests).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
}

/// Envoy serving rollout `web` at weight 0, optionally with Prometheus scraping it.
struct Lab {
    envoy: Envoy,
    prometheus: Option<Prometheus>,
    dir: TempDir,
}

/// The rollout's namespace: its metrics carry it as `cohort_namespace`.
const NAMESPACE: &str = "lab";

/// Where `cohort run` reads its samples.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    EnvoyAdmin,
    Prometheus,
}

impl Lab {
    fn start(source: Source) -> Lab {
        // The rollout `lab/web` at 0, as `cohort run` writes it: its series are the ones the
        // run reads and pushes to (`cohort_namespace="lab"`).
        let mut initial = config(0);
        initial["rollouts"]["web"]["namespace"] = NAMESPACE.into();
        let envoy = Envoy::start(&initial.to_string()).unwrap_or_else(|e| panic!("{e}"));
        let prometheus = (source == Source::Prometheus).then(|| {
            let prometheus =
                Prometheus::start(envoy.admin_addr()).unwrap_or_else(|e| panic!("{e}"));
            prometheus
                .wait_for_scrape(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{e}"));
            prometheus
        });
        Lab {
            envoy,
            prometheus,
            dir: TempDir::new("rollout").unwrap(),
        }
    }

    /// `cohort run`'s arguments for the rollout `yaml`.
    fn args(&self, yaml: &str) -> RunArgs {
        let rollout = self.dir.path().join("rollout.yaml");
        std::fs::write(&rollout, yaml).unwrap();
        RunArgs {
            rollout,
            envoy_ecds: Some(self.ecds()),
            envoy_admin: Some(format!("http://{}", self.envoy.admin_addr())),
            prometheus: self.prometheus.as_ref().map(Prometheus::url),
            status_file: Some(self.status_file()),
            once: false,
        }
    }

    fn ecds(&self) -> PathBuf {
        self.envoy.dir().join("ecds.yaml")
    }

    fn status_file(&self) -> PathBuf {
        self.dir.path().join("status.json")
    }

    fn status(&self) -> Option<CanaryRolloutStatus> {
        load_status(&self.status_file()).unwrap()
    }

    /// The weight Envoy's filter serves for `lab/web` (its `cohort_rollout_weight_bp` gauge).
    fn weight(&self) -> Option<u32> {
        let response = self
            .envoy
            .admin_get("/stats/prometheus?filter=cohort_rollout_weight_bp")
            .ok()?;
        let samples = prom::parse(&response.text());
        prom::value(
            &samples,
            "cohort_rollout_weight_bp",
            &[("cohort_namespace", NAMESPACE), ("cohort_rollout", "web")],
        )
        .map(|value| value as u32)
    }

    /// Every probe user lands where cohort-core puts them at `weight_bp` (a few retries cover
    /// the moments while Envoy's workers pick the new config up one after the other; a probe
    /// served at the weight Envoy reports once a pass is over is fine too, as the next step may
    /// land while a slow machine is still probing). Returns how many probes are on the canary.
    fn check_routing(&self, weight_bp: u32) -> usize {
        let mut client = self.envoy.client();
        let probes: Vec<String> = (0..PROBES).map(|i| format!("probe-{i}")).collect();
        let mut wrong: Vec<(String, String)> = Vec::new();
        let mut weight_after = Some(weight_bp);
        for attempt in 0..5 {
            let ids: Vec<&String> = if attempt == 0 {
                probes.iter().collect()
            } else {
                std::thread::sleep(Duration::from_millis(100));
                wrong.iter().map(|(id, _)| id).collect()
            };
            let served: Vec<(&String, String)> = ids
                .into_iter()
                .map(|id| (id, served_by(&mut client, id)))
                .collect();
            weight_after = self.weight();
            let fits = |id: &str, got: &str, weight: Option<u32>| {
                weight.is_some_and(|weight| expected_version(id.as_bytes(), weight) == got)
            };
            wrong = served
                .into_iter()
                .filter(|(id, got)| !fits(id, got, Some(weight_bp)) && !fits(id, got, weight_after))
                .map(|(id, got)| (id.clone(), got))
                .collect();
            if wrong.is_empty() {
                break;
            }
        }
        assert!(
            wrong.is_empty(),
            "at {weight_bp} bp (Envoy now reports {weight_after:?}), {} probe users are not where \
             cohort-core puts them: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        probes
            .iter()
            .filter(|id| expected_version(id.as_bytes(), weight_bp) == "canary")
            .count()
    }
}

/// The version (upstream) that served `id`.
fn served_by(client: &mut Client, id: &str) -> String {
    let response = client.get("/", &[(b"x-user-id", id.as_bytes())]).unwrap();
    response
        .upstream()
        .unwrap_or_else(|| panic!("no upstream answered {id}: {response:?}"))
}

/// A CanaryRollout named `web` for every host, keyed by `x-user-id`, analysed every 2 s.
fn rollout(steps: &[f64], gates: &str, min_samples: u64, failure_policy: &str) -> String {
    let steps: Vec<String> = steps
        .iter()
        .map(|weight| format!("{{weight: {weight}, bake: 2s}}"))
        .collect();
    format!(
        "apiVersion: cohort.dev/v1alpha1\n\
         kind: CanaryRollout\n\
         metadata: {{name: web, namespace: {NAMESPACE}}}\n\
         spec:\n  \
           target: {{envoyEcds: {{path: /unused/by/the/tests.yaml}}}}\n  \
           hosts: [\"*\"]\n  \
           identity: [{{kind: header, name: x-user-id}}]\n  \
           steps: [{}]\n  \
           analysis: {{interval: 2s, minSamples: {min_samples}, gates: {gates}}}\n  \
           failurePolicy: {failure_policy}\n",
        steps.join(", ")
    )
}

/// `cohort run` on its own thread with its own runtime; stopped (as by Ctrl-C) on drop.
struct CohortRun {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<Outcome>>,
}

impl CohortRun {
    fn start(args: RunArgs) -> CohortRun {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let shutdown = async {
                let _ = stopped.await;
            };
            runtime
                .block_on(standalone::run(&args, shutdown))
                .unwrap_or_else(|e| panic!("cohort run: {e}"))
        });
        CohortRun {
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn join(mut self) -> Outcome {
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for CohortRun {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// What the load generator saw.
#[derive(Default)]
struct LoadStats {
    sent: AtomicU64,
    server_errors: AtomicU64,
    first_server_error: Mutex<Option<Instant>>,
}

/// Threads sending requests from `USERS` distinct users to Envoy at a bounded rate, for at most
/// `limit`; stopped on drop.
struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(envoy: &Envoy, threads: usize, per_thread_rps: u32, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let max_requests = limit.as_secs() * u64::from(per_thread_rps);
        let pause = Duration::from_secs(1) / per_thread_rps;
        let threads = (0..threads)
            .map(|thread| {
                let stop = Arc::clone(&stop);
                let stats = Arc::clone(&stats);
                let mut client = envoy.client();
                std::thread::spawn(move || {
                    let start = Instant::now();
                    let mut next = start;
                    let mut user = thread;
                    for _ in 0..max_requests {
                        if stop.load(Ordering::Relaxed) || start.elapsed() > limit {
                            return;
                        }
                        let id = format!("user-{}", user % USERS);
                        user += threads;
                        match client.get("/", &[(b"x-user-id", id.as_bytes())]) {
                            Ok(response) => {
                                stats.sent.fetch_add(1, Ordering::Relaxed);
                                if response.status >= 500 {
                                    stats.server_errors.fetch_add(1, Ordering::Relaxed);
                                    let mut first = stats.first_server_error.lock().unwrap();
                                    first.get_or_insert_with(Instant::now);
                                }
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                        next += pause;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        } else {
                            next = Instant::now();
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            stats,
            threads,
        }
    }

    fn first_server_error(&self) -> Option<Instant> {
        *self.stats.first_server_error.lock().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Watches Envoy's weight until `run` ends, calling `on_weight` once for every new weight;
/// returns the outcome and the weights in the order Envoy served them.
fn watch(
    lab: &Lab,
    run: CohortRun,
    mut on_weight: impl FnMut(u32, Instant),
) -> (Outcome, Vec<u32>) {
    let start = Instant::now();
    let mut seen: Vec<u32> = Vec::new();
    loop {
        let weight = lab.weight();
        if let Some(weight) = weight {
            if seen.last() != Some(&weight) {
                seen.push(weight);
                on_weight(weight, Instant::now());
            }
        }
        if run.is_finished() {
            // The last push may land just after the run decided; take it in.
            if let Some(weight) = lab.weight() {
                if seen.last() != Some(&weight) {
                    seen.push(weight);
                    on_weight(weight, Instant::now());
                }
            }
            return (run.join(), seen);
        }
        assert!(
            start.elapsed() < ROLLOUT_DEADLINE,
            "the rollout did not finish in {ROLLOUT_DEADLINE:?}; weights {seen:?}; status {:#?}",
            lab.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bp(steps: &[f64]) -> Vec<u32> {
    steps.iter().map(|w| (w * 100.0).round() as u32).collect()
}

fn last_rollback_message(status: &CanaryRolloutStatus) -> String {
    status
        .history
        .iter()
        .rev()
        .find(|entry| entry.to_phase == Phase::RolledBack)
        .map(|entry| entry.message.clone())
        .unwrap_or_default()
}

/// a. A healthy canary goes through every step to 100%, read from Envoy's admin stats (no
/// Prometheus); at each step Envoy routes every probe user where cohort-core puts them.
#[test]
fn healthy_canary_is_promoted_through_every_step_from_envoy_admin_stats() {
    let _turn = serial();
    logs();
    let started = Instant::now();
    let lab = Lab::start(Source::EnvoyAdmin);
    let steps = [1.0, 5.0, 25.0, 50.0, 75.0, 100.0];
    let gates = "[{errorRate: {maxIncrease: 0.02}}, \
                 {latency: {quantile: 0.9, tolerance: 0.5, slackMs: 50}}]";
    let mut args = lab.args(&rollout(&steps, gates, 5, "{}"));
    args.prometheus = None;
    let release_args = ReleaseArgs {
        rollout: args.rollout.clone(),
        envoy_ecds: args.envoy_ecds.clone(),
        envoy_admin: args.envoy_admin.clone(),
    };
    let load = Load::start(&lab.envoy, 4, 100, ROLLOUT_DEADLINE);
    let run = CohortRun::start(args);

    let mut canary_probes = BTreeMap::new();
    let (outcome, weights) = watch(&lab, run, |weight, _| {
        canary_probes.insert(weight, lab.check_routing(weight));
    });
    assert_eq!(outcome, Outcome::Promoted, "status {:#?}", lab.status());
    // The initial config's 0, then each step in order: none skipped, none repeated.
    let mut expected = vec![0];
    expected.extend(bp(&steps));
    assert_eq!(weights, expected);
    // The canary's share of probe users grows with the weight, ending at all of them.
    let shares: Vec<usize> = expected.iter().map(|w| canary_probes[w]).collect();
    assert!(
        shares.windows(2).all(|pair| pair[0] <= pair[1]),
        "{shares:?}"
    );
    assert_eq!(shares.last(), Some(&PROBES));

    let status = lab.status().unwrap();
    assert_eq!((status.phase, status.weight_bp), (Phase::Promoted, 10_000));
    let advanced = status
        .history
        .iter()
        .filter(|entry| entry.reason == "StepAdvanced")
        .count();
    assert_eq!(advanced, steps.len() - 2, "{:#?}", status.history);
    assert_eq!(
        status.history.last().map(|e| e.reason.as_str()),
        Some("Promoted")
    );
    assert_eq!(load.stats.server_errors.load(Ordering::Relaxed), 0);

    // `cohort release` takes the entry out of the ECDS file and sees Envoy apply it: Envoy
    // drops the rollout (its weight gauge reads 0) and serves stable to every probe user again.
    assert!(release_args.envoy_admin.is_some());
    let line = release(&release_args).unwrap();
    assert!(line.starts_with("removed rollouts.web from"), "{line}");
    assert!(line.contains("Envoy applied it after"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.weight() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "Envoy still serves {:?}",
            lab.weight()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.check_routing(0), 0);
    let config = EnvoyEcdsFile::new(lab.ecds(), "cohort")
        .read_config()
        .unwrap();
    assert!(!config.rollouts.contains_key("web"), "{config:?}");
    eprintln!(
        "healthy rollout (Envoy admin source): {} steps in {:.1}s, {} requests",
        steps.len(),
        started.elapsed().as_secs_f64(),
        load.stats.sent.load(Ordering::Relaxed)
    );
}

/// b. A canary that starts answering 5xx to 10% of its requests mid-rollout (half a second into
/// the 25% step, as a bad dependency or a slow leak would) is rolled back to weight 0; prints the
/// time from the first bad response to weight 0 in Envoy.
#[test]
fn canary_with_ten_percent_5xx_is_rolled_back() {
    let _turn = serial();
    logs();
    let lab = Lab::start(Source::Prometheus);
    let steps = [5.0, 25.0, 50.0, 100.0];
    let args = lab.args(&rollout(
        &steps,
        "[{errorRate: {maxIncrease: 0.02}}]",
        20,
        "{}",
    ));
    let load = Load::start(&lab.envoy, 4, 100, ROLLOUT_DEADLINE);
    let run = CohortRun::start(args);

    let mut back_to_zero: Option<Instant> = None;
    let (outcome, weights) = watch(&lab, run, |weight, at| {
        if weight == 2_500 {
            std::thread::sleep(Duration::from_millis(500));
            lab.envoy.canary.fail(100);
        }
        if weight == 0 && back_to_zero.is_none() && load.first_server_error().is_some() {
            back_to_zero = Some(at);
        }
    });
    assert_eq!(outcome, Outcome::RolledBack, "status {:#?}", lab.status());
    assert_eq!(
        weights,
        vec![0, 500, 2_500, 0],
        "healthy through the first step, rolled back from the second"
    );
    lab.check_routing(0);

    let status = lab.status().unwrap();
    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
    let gate = &status.gates[0];
    assert_eq!(gate.verdict, Verdict::Fail, "{gate:?}");
    assert!(gate.canary.unwrap() > 0.05, "{gate:?}");
    assert!(
        last_rollback_message(&status).contains("error-rate"),
        "{:#?}",
        status.history
    );

    let first_bad = load.first_server_error().expect("the canary answered 5xx");
    let elapsed = back_to_zero.expect("weight 0 seen in Envoy") - first_bad;
    eprintln!(
        "rollback time (Prometheus, 1 s scrape, 2 s interval): first 5xx → weight 0 in Envoy \
         in {:.2}s; gate: canary {:.1}% 5xx vs stable {:.1}% over {:.0}/{:.0} requests",
        elapsed.as_secs_f64(),
        gate.canary.unwrap_or(0.0) * 100.0,
        gate.stable.unwrap_or(0.0) * 100.0,
        gate.canary_samples,
        gate.stable_samples
    );
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
}

/// c. A canary three times slower than stable is rolled back on the latency gate.
#[test]
fn canary_three_times_slower_is_rolled_back_on_latency() {
    let _turn = serial();
    logs();
    let lab = Lab::start(Source::Prometheus);
    lab.envoy.stable.delay(20);
    lab.envoy.canary.delay(60);
    let steps = [10.0, 50.0, 100.0];
    let gates = "[{errorRate: {maxIncrease: 0.02}}, \
                 {latency: {quantile: 0.9, tolerance: 0.5, slackMs: 5}}]";
    let args = lab.args(&rollout(&steps, gates, 20, "{}"));
    let load = Load::start(&lab.envoy, 8, 40, ROLLOUT_DEADLINE);
    let run = CohortRun::start(args);

    let (outcome, weights) = watch(&lab, run, |_, _| {});
    assert_eq!(outcome, Outcome::RolledBack, "status {:#?}", lab.status());
    assert_eq!(weights, vec![0, 1000, 0]);
    lab.check_routing(0);

    let status = lab.status().unwrap();
    let latency = status
        .gates
        .iter()
        .find(|gate| gate.gate == "latency-p90")
        .unwrap();
    assert_eq!(latency.verdict, Verdict::Fail, "{:#?}", status.gates);
    assert!(
        latency.canary.unwrap() > latency.threshold.unwrap(),
        "{latency:?}"
    );
    assert!(
        last_rollback_message(&status).contains("latency-p90"),
        "{:#?}",
        status.history
    );
    eprintln!(
        "latency rollback: canary p90 {:.1} ms vs stable {:.1} ms (limit {:.1} ms), {} requests",
        latency.canary.unwrap_or(0.0),
        latency.stable.unwrap_or(0.0),
        latency.threshold.unwrap_or(0.0),
        load.stats.sent.load(Ordering::Relaxed)
    );
}

/// d. Prometheus goes away mid-rollout: the gates say Error and the rollout holds its weight
/// (Degraded, never promoted); when Prometheus is back on the same port and data, the rollout
/// continues from where it was and is promoted without skipping a step.
#[test]
fn rollout_holds_while_prometheus_is_down_and_continues_when_it_returns() {
    let _turn = serial();
    logs();
    let mut lab = Lab::start(Source::Prometheus);
    let steps = [10.0, 25.0, 50.0, 75.0, 100.0];
    let args = lab.args(&rollout(
        &steps,
        "[{errorRate: {maxIncrease: 0.02}}]",
        20,
        "{maxConsecutiveErrors: 1, onErrors: hold}",
    ));
    let _load = Load::start(&lab.envoy, 4, 100, ROLLOUT_DEADLINE);
    let run = CohortRun::start(args);

    // Until the second step is served.
    let start = Instant::now();
    while lab.weight() != Some(2_500) {
        assert!(!run.is_finished(), "status {:#?}", lab.status());
        assert!(
            start.elapsed() < ROLLOUT_DEADLINE,
            "status {:#?}",
            lab.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.prometheus.as_mut().unwrap().stop();
    let stopped = Instant::now();

    // A cycle reads the failed queries: Error, and the weight holds.
    let held = loop {
        let status = lab.status().unwrap();
        let errors = status
            .gates
            .iter()
            .any(|gate| gate.verdict == Verdict::Error);
        if errors && status.consecutive_errors >= 2 {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "no Error verdicts while Prometheus is down: {status:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(held.phase, Phase::Progressing, "{held:#?}");
    let hold_weight = held.weight_bp;
    assert!(hold_weight == 2_500 || hold_weight == 5_000, "{held:#?}");
    let degraded = held
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "AnalysisErrors"),
        "{held:#?}"
    );
    // A few more cycles while it is down: no promotion.
    let down_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < down_until {
        assert_eq!(
            lab.weight(),
            Some(hold_weight),
            "the weight moved while blind"
        );
        assert!(!run.is_finished());
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = lab.status().unwrap();
    assert_eq!(
        (status.phase, status.weight_bp),
        (Phase::Progressing, hold_weight)
    );
    assert!(
        status.message.as_deref().unwrap_or("").contains("Error"),
        "{status:#?}"
    );
    eprintln!(
        "Prometheus down for {:.1}s: held at {hold_weight} bp after {} failed analyses",
        stopped.elapsed().as_secs_f64(),
        status.consecutive_errors
    );

    lab.prometheus.as_mut().unwrap().restart().unwrap();
    let returned = Instant::now();
    let (outcome, weights) = watch(&lab, run, |_, _| {});
    assert_eq!(outcome, Outcome::Promoted, "status {:#?}", lab.status());
    let expected: Vec<u32> = bp(&steps)
        .into_iter()
        .filter(|&w| w > hold_weight)
        .collect();
    assert_eq!(weights, [vec![hold_weight], expected].concat());
    let status = lab.status().unwrap();
    assert_eq!(status.consecutive_errors, 0);
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "False");
    eprintln!(
        "after Prometheus returned: promoted in {:.1}s",
        returned.elapsed().as_secs_f64()
    );
}
