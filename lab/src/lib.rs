//! cohort's lab: the commands that show what cohort does without a cluster or a real rollout.
//! `cohort lab` (the crate's root) runs one on this machine; [`simulate`] compares cohort's gates
//! with other styles of gate on simulated traffic; [`analyze`] runs a rollout's gates over past
//! data in Prometheus. The controller image does not build this crate.
//!
//! `cohort lab`: a whole rollout on this machine in about a minute, to see what cohort does.
//!
//! It starts a real Envoy with the built filter ([`envoy`]), a stable and a canary upstream that
//! behave as the scenario says ([`upstream`]), a load generator with many distinct users, some
//! anonymous ([`load`]), and drives a CanaryRollout through short steps with the same code as
//! `cohort run` ([`cohort_controller::standalone::Runner`], in-process), reading the gates from
//! Envoy's admin stats or, with `--prometheus`, from Prometheus. Progress shows live on stderr
//! ([`progress`]); the run ends with a line saying `promoted` or `rolled back` and why, and an
//! HTML report with plots over time ([`report`]). Everything it started stops when it ends, Ctrl-C
//! included.
//!
//! Exit codes: 0 the rollout ended as the scenario expects (healthy: promoted; the others:
//! rolled back), 1 it did not, 2 the lab could not start, 130 Ctrl-C or SIGTERM.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use cohort_controller::standalone::{parse_rollout, RunArgs, Runner};
use cohort_rollout::crd::{CanaryRolloutStatus, Phase};
use cohort_rollout::filter_config::spec_to_filter_config;
use cohort_rollout::format::weight_percent;
use cohort_rollout::plan::CONDITION_ROUTING_MISMATCH;

pub mod analyze;
pub mod envoy;
pub mod load;
pub mod locate;
pub mod progress;
pub mod record;
pub mod report;
pub mod simulate;
pub mod upstream;

use envoy::{free_port, LabEnvoy, Launch, Ports};
use load::{Load, LoadPlan};
use locate::WasmBuild;
use progress::Display;
use record::{BadResponse, Cycle, Recorder};
use upstream::{Behaviour, Upstream};

/// The lab's rollout name: the filter's rollout key and the metrics' `cohort_rollout` label.
pub const ROLLOUT: &str = "checkout";
/// The lab's rollout namespace: the metrics' `cohort_namespace` label.
pub const NAMESPACE: &str = "lab";
/// Longest the rollout may take before the lab gives up on it.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(100);
/// Load keeps running this long after the rollout settles, so the plots show what followed.
const TAIL: Duration = Duration::from_secs(4);
/// How often Envoy's served weight is read and the live display redrawn.
const TICK: Duration = Duration::from_millis(200);
/// Wait after a failed controller cycle.
const RETRY: Duration = Duration::from_secs(1);
/// The sequential gates' `maxDuration`: how long a step waits for a test to decide. A healthy
/// canary's tests do not pass on the lab's few thousand canary requests (passing must rule out
/// a doubled rate at a level of 1/1200), so each step lasts this long and advances as
/// Underpowered. The errors scenario's 503s at 5% need about 22 of them to fail (the test
/// divides its counts by a dispersion of 5 until the looks show less): about 6 s at the
/// default 600 requests/s, so 10 s finds them at the first step in nearly every run, where at
/// 300 requests/s it took 10 s on average and a fifth of runs reached the next step.
const SEQUENTIAL_MAX_DURATION: &str = "10s";

/// What the canary does wrong, if anything.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The canary behaves like stable: it is promoted step by step.
    Healthy,
    /// The canary answers 503 to 15% of requests: the error-rate gate rolls it back.
    Errors,
    /// The canary answers 150 ms slower: the latency gate rolls it back.
    Slow,
    /// The canary reports the checkout event on 15% of answers instead of 40%: the
    /// business-event gate rolls it back.
    BusinessDrop,
    /// The canary route matches a header value the filter never sets, and the canary answers
    /// 503 to everything: the routing check holds the rollout and rolls it back.
    Misrouted,
}

impl Scenario {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::Errors => "errors",
            Scenario::Slow => "slow",
            Scenario::BusinessDrop => "business-drop",
            Scenario::Misrouted => "misrouted",
        }
    }

    /// What happens, in words.
    pub fn story(self) -> &'static str {
        match self {
            Scenario::Healthy => "the canary behaves like stable",
            Scenario::Errors => "the canary answers 503 to 15% of requests",
            Scenario::Slow => "the canary answers 150 ms slower than stable",
            Scenario::BusinessDrop => {
                "the canary reports checkouts on 15% of answers, stable on 40%"
            }
            Scenario::Misrouted => {
                "the canary route matches x-cohort-version: v2, a value the filter never sets, and \
                 the canary answers 503 to every request"
            }
        }
    }

    /// How stable answers, in every scenario: no errors, about 5 ms, a checkout in 40% of
    /// answers.
    pub fn stable() -> Behaviour {
        Behaviour {
            fail_per_mille: 0,
            delay_ms: 4,
            jitter_ms: 2,
            events: upstream::EVENT.to_owned(),
            event_per_mille: 400,
        }
    }

    /// How the canary answers.
    pub fn canary(self) -> Behaviour {
        let stable = Scenario::stable();
        match self {
            Scenario::Healthy => stable,
            Scenario::Errors => Behaviour {
                fail_per_mille: 150,
                ..stable
            },
            Scenario::Slow => Behaviour {
                delay_ms: stable.delay_ms + 150,
                ..stable
            },
            Scenario::BusinessDrop => Behaviour {
                event_per_mille: 150,
                ..stable
            },
            Scenario::Misrouted => Behaviour {
                fail_per_mille: 1000,
                ..stable
            },
        }
    }

    /// Which responses show the canary's fault.
    pub fn bad_response(self) -> BadResponse {
        match self {
            Scenario::Healthy => BadResponse::Never,
            Scenario::Errors | Scenario::Misrouted => BadResponse::ServerError,
            Scenario::Slow => BadResponse::SlowerThan(100.0),
            Scenario::BusinessDrop => BadResponse::AnyCanary,
        }
    }

    /// The routing header value the canary route matches: the canary's name, except where the
    /// scenario is the slip of a route that matches another value.
    pub fn canary_route_value(self) -> &'static str {
        match self {
            Scenario::Misrouted => "v2",
            _ => "canary",
        }
    }

    /// How the rollout should end.
    pub fn expected(self) -> LabOutcome {
        match self {
            Scenario::Healthy => LabOutcome::Promoted,
            Scenario::Errors | Scenario::Slow | Scenario::BusinessDrop | Scenario::Misrouted => {
                LabOutcome::RolledBack
            }
        }
    }
}

/// `cohort lab`'s command line.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LabArgs {
    /// What the canary does wrong, if anything.
    #[arg(long, value_enum, default_value_t = Scenario::Errors)]
    pub scenario: Scenario,
    /// Where the report (report.html) and the run's files go; default
    /// target/cohort-lab/SCENARIO-TIME/ in the repository.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Read the gates from this Prometheus instead of Envoy's admin stats. It must scrape the
    /// lab's Envoy: give --admin-port and see manifests/prometheus/envoy.yaml.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Envoy's admin port on 127.0.0.1 (default: a free one).
    #[arg(long = "admin-port", value_name = "PORT")]
    pub admin_port: Option<u16>,
    /// Requests per second the load generator sends.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(50..=5000))]
    pub rate: u32,
    /// Distinct users the load comes from (one in five anonymous); each comes back every
    /// users/rate seconds, so a user's version can be seen to stick.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(100..=1_000_000))]
    pub users: u32,
    /// The filter's .wasm (default: $COHORT_WASM, else target/cohort_filter.wasm, else built).
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// The Envoy binary (default: $COHORT_ENVOY, else .venv-envoy, else envoy on PATH).
    #[arg(long, value_name = "FILE")]
    pub envoy: Option<PathBuf>,
}

impl LabArgs {
    /// The defaults for `scenario`.
    pub fn new(scenario: Scenario) -> LabArgs {
        LabArgs {
            scenario,
            out: None,
            prometheus: None,
            admin_port: None,
            rate: 600,
            users: 500,
            wasm: None,
            envoy: None,
        }
    }
}

/// How the rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabOutcome {
    /// The canary serves everyone.
    Promoted,
    /// A gate failed: everyone is back on stable.
    RolledBack,
    /// The rollout did not settle within the lab's deadline.
    TimedOut,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl LabOutcome {
    /// As the summary line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            LabOutcome::Promoted => "promoted",
            LabOutcome::RolledBack => "rolled back",
            LabOutcome::TimedOut => "timed out",
            LabOutcome::Interrupted => "interrupted",
        }
    }
}

/// Why a lab, simulate or analyze run could not start or finish; the text says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the lab needs is missing or did not start.
    #[error("{0}")]
    Setup(String),
    /// A flag is unusable.
    #[error("{0}")]
    Usage(String),
    /// The rollout file or the metric source (the Prometheus URL) is unusable.
    #[error(transparent)]
    Controller(#[from] cohort_controller::Error),
    /// The rollout's spec does not validate.
    #[error("the rollout's spec is invalid: {0}")]
    InvalidSpec(cohort_rollout::validate::SpecErrors),
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// A finished lab run.
#[derive(Debug, Clone)]
pub struct LabRun {
    /// The scenario.
    pub scenario: Scenario,
    /// How the rollout ended.
    pub outcome: LabOutcome,
    /// The summary line (`promoted: …` or `rolled back: …`).
    pub summary: String,
    /// The HTML report.
    pub report: PathBuf,
    /// From the start of the lab (the wasm build excluded) to its end.
    pub wall_time: Duration,
    /// From the first bad response to weight 0 in Envoy, for a rolled-back run.
    pub rollback_time: Option<Duration>,
    /// Responses the load generator got.
    pub requests: u64,
    /// Distinct users served.
    pub users: usize,
    /// Users a canary answer was followed by a stable one for before any rollback (0 when
    /// per-user routing holds).
    pub switched_back: usize,
}

impl LabRun {
    /// The process exit code: 0 when the rollout ended as the scenario expects.
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            LabOutcome::Interrupted => 130,
            outcome if outcome == self.scenario.expected() => 0,
            _ => 1,
        }
    }
}

/// The `cohort lab` command: returns the process exit code. The controller's log (what
/// `cohort run` prints) goes to `controller.log` in the output directory.
pub fn main(args: &LabArgs) -> i32 {
    let mut args = args.clone();
    let out = out_dir(&args, locate::repository_root().as_deref());
    args.out = Some(out.clone());
    if std::fs::create_dir_all(&out).is_ok() {
        if let Ok(log) = std::fs::File::create(out.join("controller.log")) {
            // Another subscriber may be installed already (a test harness); that one is kept.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .try_init();
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cohort lab: cannot start the async runtime: {error}");
            return 2;
        }
    };
    match runtime.block_on(run(&args, stop_signal())) {
        Ok(run) => run.exit_code(),
        Err(error) => {
            eprintln!("cohort lab: {error}");
            2
        }
    }
}

/// Resolves at Ctrl-C or SIGTERM; never when neither can be listened for.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The lab's CanaryRollout: five short steps, a 2 s analysis, and one sequential gate per way a
/// canary can be worse (errors, latency, business events). `ecds` is only what `kubectl` would see: the
/// lab passes the file to the runner directly.
pub fn rollout_yaml(ecds: &Path) -> String {
    format!(
        "# The lab's rollout, driven by the same code as `cohort run --rollout` (this file).
apiVersion: cohort.dev/v1alpha1
kind: CanaryRollout
metadata:
  name: {ROLLOUT}
  namespace: {NAMESPACE}
spec:
  target:
    envoyEcds:
      path: {ecds}
  hosts: [\"*\"]
  identity:
    - kind: header
      name: {user_header}
  # Users without an id get one in a cookie and keep their version.
  anonymous:
    mode: cookie
  steps:
    - weight: 5
      bake: 6s
    - weight: 10
      bake: 6s
    - weight: 25
      bake: 6s
    - weight: 50
      bake: 6s
    - weight: 100
  analysis:
    interval: 2s
    minSamples: 20
    # The default gates (sequential error rate and p99 latency) and a sequential one on the
    # checkout event: together they keep the rollout's error budget, spec.analysis.alpha (1%),
    # the chance that a canary no worse than stable is rolled back at all, however often they
    # look. A test still undecided after maxDuration ({max_duration}, for the lab's short
    # steps) ends Underpowered, and failurePolicy.onUnderpowered (promote, the default)
    # advances; at the lab's rate the failing scenarios' regressions are found sooner.
    gates:
      - sequential: {{metric: errorRate, maxDuration: {max_duration}}}
      - sequential: {{metric: latency, maxDuration: {max_duration}}}
      - sequential: {{metric: businessEvent, event: {event}, maxDuration: {max_duration}}}
  # Short for the lab: a canary its users do not reach is rolled back after 6 s.
  failurePolicy:
    routingMismatchDeadline: 6s
",
        ecds = ecds.display(),
        user_header = load::USER_HEADER,
        event = upstream::EVENT,
        max_duration = SEQUENTIAL_MAX_DURATION,
    )
}

/// The output directory: `--out`, else `target/cohort-lab/SCENARIO-TIME` under the repository
/// (or the working directory).
fn out_dir(args: &LabArgs, root: Option<&Path>) -> PathBuf {
    if let Some(out) = &args.out {
        return out.clone();
    }
    let base = root.map_or_else(|| PathBuf::from("."), Path::to_owned);
    let time = Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
    base.join("target/cohort-lab")
        .join(format!("{}-{time}", args.scenario.name()))
}

/// Runs the lab until the rollout settles (plus a short tail), the deadline passes, or
/// `shutdown` resolves; writes the report and prints the summary. Errors are setup failures.
pub async fn run(args: &LabArgs, shutdown: impl Future<Output = ()>) -> Result<LabRun, Error> {
    let setup =
        |what: &str, error: &dyn std::fmt::Display| Error::Setup(format!("{what}: {error}"));
    let root = locate::repository_root();
    let envoy_binary = locate::envoy_binary(args.envoy.as_deref(), root.as_deref())?;
    let wasm = {
        let (flag, root) = (args.wasm.clone(), root.clone());
        tokio::task::spawn_blocking(move || {
            locate::filter_wasm(flag.as_deref(), root.as_deref(), WasmBuild::IfMissing)
        })
        .await
        .map_err(|e| setup("finding the filter", &e))??
    };
    let started = Instant::now();
    let out = out_dir(args, root.as_deref());
    std::fs::create_dir_all(&out).map_err(|e| setup(&format!("creating {}", out.display()), &e))?;
    let out = out.canonicalize().unwrap_or(out);
    let display = Arc::new(Display::new());
    if wasm.stale {
        display.line(&format!(
            "warning: {} is older than the filter's sources; run scripts/build-wasm to test \
             your changes",
            wasm.path.display()
        ));
    }

    let scenario = args.scenario;
    let stable = Upstream::start("stable", Scenario::stable())
        .await
        .map_err(|e| setup("starting the stable upstream", &e))?;
    let canary = Upstream::start("canary", scenario.canary())
        .await
        .map_err(|e| setup("starting the canary upstream", &e))?;
    let ecds = out.join("ecds.yaml");
    let rollout_file = out.join("rollout.yaml");
    let rollout_text = rollout_yaml(&ecds);
    std::fs::write(&rollout_file, &rollout_text).map_err(|e| setup("writing rollout.yaml", &e))?;
    let rollout = parse_rollout(&rollout_text).map_err(|e| setup("the lab's rollout", &e))?;
    let filter_config = spec_to_filter_config(&rollout.spec, &rollout.namespace, &rollout.name, 0)
        .map_err(|e| setup("the lab's filter config", &e))
        .and_then(|config| {
            serde_json::to_string(&config).map_err(|e| setup("the lab's filter config", &e))
        })?;
    let ports = Ports {
        listen: free_port()?,
        admin: args.admin_port.unwrap_or(0),
        stable: stable.addr(),
        canary: canary.addr(),
    };
    let launch = Launch {
        canary_route_value: scenario.canary_route_value().to_owned(),
        ..Launch::new(&envoy_binary, Some(&wasm.path), &filter_config, ports)
    };
    let mut envoy = LabEnvoy::start(&launch, &out).await?;
    display.line(&format!(
        "cohort lab {}: {}. Envoy on {} (admin {}), {} users at {} requests/s, gates from {}",
        scenario.name(),
        scenario.story(),
        envoy.listen_addr(),
        envoy.admin_url(),
        args.users,
        args.rate,
        args.prometheus.as_deref().unwrap_or("Envoy's admin stats"),
    ));

    let run_args = RunArgs {
        rollout: rollout_file,
        envoy_ecds: Some(ecds),
        envoy_admin: Some(envoy.admin_url()),
        prometheus: args.prometheus.clone(),
        status_file: Some(out.join("status.json")),
        once: false,
    };
    // A status file from an earlier run in the same directory would resume that run.
    let _ = std::fs::remove_file(out.join("status.json"));
    let runner = Runner::new(&run_args).map_err(|e| setup("starting the controller", &e))?;

    let recorder = Arc::new(Recorder::new(args.users, scenario.bad_response()));
    let epoch = Instant::now();
    let plan = LoadPlan {
        rate: args.rate,
        users: args.users,
    };
    let load = Load::start(envoy.listen_addr(), plan, Arc::clone(&recorder), epoch)
        .map_err(|e| setup("starting the load generator", &e))?;
    let ticker = tokio::spawn(tick(
        envoy.admin_url(),
        Arc::clone(&recorder),
        Arc::clone(&display),
        rollout.spec.clone(),
        epoch,
    ));

    tokio::pin!(shutdown);
    let (outcome, status) = drive(runner, &recorder, &display, epoch, &mut shutdown).await;
    if outcome != LabOutcome::Interrupted {
        tokio::select! {
            () = tokio::time::sleep(TAIL) => {}
            () = &mut shutdown => {}
        }
    }
    ticker.abort();
    let skipped = load.skipped();
    load.stop().await;
    // The last weight Envoy served, read once more after the load stopped.
    read_weight(&admin_client(), &envoy.admin_url(), &recorder, epoch).await;
    envoy.stop().await;
    drop((stable, canary));
    display.clear();

    let record = recorder.snapshot();
    let rollback_time = match (record.first_bad, record.weight_dropped) {
        (Some(bad), Some(dropped)) if dropped >= bad && outcome == LabOutcome::RolledBack => {
            Some(Duration::from_secs_f64(dropped - bad))
        }
        _ => None,
    };
    let summary = summary_line(outcome, status.as_ref(), &record, rollback_time);
    let report_path = out.join("report.html");
    let routing_mismatch = status.as_ref().and_then(|status| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_ROUTING_MISMATCH && c.status == "True")
            .map(|c| c.message.clone())
    });
    let html = report::render(&report::ReportInput {
        scenario,
        outcome,
        summary: &summary,
        routing_mismatch: routing_mismatch.as_deref(),
        rollout_yaml: &rollout_text,
        spec: &rollout.spec,
        record: &record,
        rollback_time,
        skipped,
    });
    std::fs::write(&report_path, html).map_err(|e| setup("writing report.html", &e))?;
    let run = LabRun {
        scenario,
        outcome,
        summary,
        report: report_path,
        wall_time: started.elapsed(),
        rollback_time,
        requests: record.total_requests(),
        users: record.total_users(),
        switched_back: record.switched_back(),
    };
    display.line(&format!("{}: {}", scenario.name(), run.summary));
    display.line(&format!(
        "{} requests from {} users in {:.0} s; {} users went back from canary to stable before a \
         rollback; report: {}",
        run.requests,
        run.users,
        run.wall_time.as_secs_f64(),
        run.switched_back,
        run.report.display()
    ));
    if outcome != LabOutcome::Interrupted && outcome != scenario.expected() {
        display.line(&format!(
            "expected {} for {}; the files of this run (envoy.log, status.json) are in {}",
            scenario.expected().as_str(),
            scenario.name(),
            out.display()
        ));
    }
    Ok(run)
}

/// Cycles the controller until the rollout settles, the deadline passes or `shutdown` fires.
/// Returns how it ended and the last status.
async fn drive(
    mut runner: Runner,
    recorder: &Recorder,
    display: &Display,
    epoch: Instant,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> (LabOutcome, Option<CanaryRolloutStatus>) {
    let deadline = tokio::time::sleep(ROLLOUT_DEADLINE);
    tokio::pin!(deadline);
    let mut shown_history = 0;
    loop {
        let started = epoch.elapsed().as_secs_f64();
        let result = tokio::select! {
            result = runner.cycle() => result,
            () = &mut *shutdown => return (LabOutcome::Interrupted, runner.status().cloned()),
            () = &mut deadline => return (LabOutcome::TimedOut, runner.status().cloned()),
        };
        let at = epoch.elapsed().as_secs_f64();
        let wait = match result {
            Ok(report) => {
                let status = runner.status().cloned().unwrap_or_default();
                for entry in status.history.iter().skip(shown_history) {
                    display.line(&format!("{:>6.1}s  {}", at, entry.message));
                }
                shown_history = status.history.len();
                recorder.cycle(
                    started,
                    Cycle {
                        at,
                        phase: report.phase,
                        step_index: status.step_index,
                        weight_bp: report.weight_bp,
                        gates: status.gates.clone(),
                        error: None,
                    },
                );
                let now = at as usize;
                let share = recorder.read(|record| {
                    record
                        .traffic(now.saturating_sub(2), now)
                        .canary_user_share()
                });
                display.cycle_line(at, &status, share);
                match report.phase {
                    Phase::Promoted | Phase::Succeeded => {
                        return (LabOutcome::Promoted, Some(status))
                    }
                    Phase::RolledBack | Phase::Aborted => {
                        return (LabOutcome::RolledBack, Some(status))
                    }
                    Phase::Pending | Phase::Progressing | Phase::Paused => report.requeue,
                }
            }
            Err(error) => {
                display.line(&format!("{at:>6.1}s  controller: {error}; retrying"));
                let status = runner.status().cloned().unwrap_or_default();
                recorder.cycle(
                    started,
                    Cycle {
                        at,
                        phase: status.phase,
                        step_index: status.step_index,
                        weight_bp: status.weight_bp,
                        gates: Vec::new(),
                        error: Some(error.to_string()),
                    },
                );
                RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut *shutdown => return (LabOutcome::Interrupted, runner.status().cloned()),
            () = &mut deadline => return (LabOutcome::TimedOut, runner.status().cloned()),
        }
    }
}

/// Reads Envoy's served weight and redraws the live display, every [`TICK`].
async fn tick(
    admin_url: String,
    recorder: Arc<Recorder>,
    display: Arc<Display>,
    spec: cohort_rollout::crd::CanaryRolloutSpec,
    epoch: Instant,
) {
    let http = admin_client();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        ticker.tick().await;
        read_weight(&http, &admin_url, &recorder, epoch).await;
        let now = epoch.elapsed().as_secs_f64();
        let block = recorder.read(|record| progress::live_block(&spec, record, now));
        display.live(&block);
    }
}

fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

/// Records the weight Envoy serves for the lab's rollout, `lab/checkout` (its `cohort_rollout_weight_bp`
/// gauge); a failed read records nothing.
async fn read_weight(http: &reqwest::Client, admin_url: &str, recorder: &Recorder, epoch: Instant) {
    let url = format!(
        "{admin_url}/stats/prometheus?filter={}$",
        cohort_core::telemetry::ROLLOUT_WEIGHT_BP
    );
    let Ok(response) = http.get(&url).send().await else {
        return;
    };
    let Ok(text) = response.text().await else {
        return;
    };
    let at = epoch.elapsed().as_secs_f64();
    let weight = cohort_controller::source::envoy_admin::parse_exposition(&text)
        .into_iter()
        .find(|sample| {
            let label = |tag: &str| sample.labels.get(tag).map_or("", String::as_str);
            sample.name == cohort_core::telemetry::ROLLOUT_WEIGHT_BP
                && label(cohort_core::telemetry::TAG_NAMESPACE) == NAMESPACE
                && label(cohort_core::telemetry::TAG_ROLLOUT) == ROLLOUT
        })
        .map(|sample| sample.value);
    if let Some(weight) = weight {
        recorder.weight(at, weight.clamp(0.0, 10_000.0) as u32);
    }
}

/// The summary line: how the rollout ended and why.
fn summary_line(
    outcome: LabOutcome,
    status: Option<&CanaryRolloutStatus>,
    record: &record::Record,
    rollback_time: Option<Duration>,
) -> String {
    let last_message = |phase: Phase| {
        status.and_then(|status| {
            status
                .history
                .iter()
                .rev()
                .find(|entry| entry.to_phase == phase)
                .map(|entry| entry.message.clone())
        })
    };
    let where_ = status.map_or_else(
        || "before the first step".to_owned(),
        |status| {
            format!(
                "at step {} ({})",
                status.step_index.map_or(0, |index| index + 1),
                weight_percent(status.weight_bp)
            )
        },
    );
    match outcome {
        LabOutcome::Promoted => {
            let weights: Vec<String> = record
                .weights
                .iter()
                .map(|(_, weight)| weight_percent(*weight))
                .filter(|weight| weight != "0%" && weight != "100%")
                .collect();
            let weights = if weights.is_empty() {
                "each step".to_owned()
            } else {
                weights.join(", ")
            };
            let underpowered = underpowered_weights(record);
            if underpowered.is_empty() {
                format!("promoted: every gate passed at {weights}; the canary serves every user")
            } else {
                // A sequential test that ran out of time did not pass: say where the promotion
                // rested on failurePolicy.onUnderpowered instead.
                format!(
                    "promoted: no gate found a regression at {weights}, though at {} a test ran \
                     out of time before it could rule one out (Underpowered: \
                     failurePolicy.onUnderpowered promoted); the canary serves every user",
                    underpowered.join(", ")
                )
            }
        }
        LabOutcome::RolledBack => {
            // The plan's message says "rolled back from 5% at step 1: <why>".
            let why = last_message(Phase::RolledBack)
                .or_else(|| last_message(Phase::Aborted))
                .unwrap_or_else(|| "a gate failed".to_owned());
            let mut line = if why.starts_with("rolled back") {
                why
            } else {
                format!("rolled back: {why}")
            };
            if let Some(time) = rollback_time {
                line.push_str(&format!(
                    "; weight 0 in Envoy {:.1} s after the first bad response",
                    time.as_secs_f64()
                ));
            }
            line
        }
        LabOutcome::TimedOut => format!(
            "timed out: neither promoted nor rolled back after {} s, still {where_}: {}",
            ROLLOUT_DEADLINE.as_secs(),
            status
                .and_then(|status| status.message.clone())
                .unwrap_or_else(|| "no analysis finished".to_owned())
        ),
        LabOutcome::Interrupted => format!("interrupted {where_}"),
    }
}

/// The weights at which a gate said Underpowered, in order: each look judged the weight the
/// cycle before left.
fn underpowered_weights(record: &record::Record) -> Vec<String> {
    let mut weights: Vec<String> = Vec::new();
    for pair in record.cycles.windows(2) {
        let [before, look] = pair else { continue };
        let underpowered = look
            .gates
            .iter()
            .any(|gate| gate.verdict == cohort_rollout::crd::Verdict::Underpowered);
        let weight = weight_percent(before.weight_bp);
        if underpowered && !weights.contains(&weight) {
            weights.push(weight);
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_rollout::crd::{GateResult, Verdict};
    use cohort_rollout::validate::validate_spec;

    #[test]
    fn a_promotion_on_underpowered_tests_says_so() {
        let cycle = |at: f64, weight_bp: u32, verdict: Option<Verdict>| Cycle {
            at,
            phase: Phase::Progressing,
            step_index: Some(0),
            weight_bp,
            gates: verdict.map_or_else(Vec::new, |verdict| {
                vec![GateResult {
                    verdict,
                    ..GateResult::blank("error-rate")
                }]
            }),
            error: None,
        };
        let record = |advance: Verdict| {
            let recorder = Recorder::new(10, record::BadResponse::Never);
            for (at, weight) in [(0.1, 500), (8.0, 1000), (16.0, 10_000)] {
                recorder.weight(at, weight);
            }
            for cycle in [
                cycle(0.1, 500, None),
                cycle(2.0, 500, Some(Verdict::Inconclusive)),
                cycle(8.0, 1000, Some(advance)),
                cycle(16.0, 10_000, Some(Verdict::Pass)),
            ] {
                recorder.cycle(cycle.at, cycle);
            }
            recorder.snapshot()
        };
        assert_eq!(
            summary_line(
                LabOutcome::Promoted,
                None,
                &record(Verdict::Underpowered),
                None
            ),
            "promoted: no gate found a regression at 5%, 10%, though at 5% a test ran out of \
             time before it could rule one out (Underpowered: failurePolicy.onUnderpowered \
             promoted); the canary serves every user"
        );
        assert_eq!(
            summary_line(LabOutcome::Promoted, None, &record(Verdict::Pass), None),
            "promoted: every gate passed at 5%, 10%; the canary serves every user"
        );
    }

    #[test]
    fn the_lab_rollout_is_valid_and_its_filter_config_counts_checkout() {
        let rollout = parse_rollout(&rollout_yaml(Path::new("/lab/ecds.yaml"))).unwrap();
        assert_eq!(rollout.name, ROLLOUT);
        assert_eq!(validate_spec(&rollout.spec, &rollout.name), Ok(()));
        let config =
            spec_to_filter_config(&rollout.spec, &rollout.namespace, &rollout.name, 0).unwrap();
        assert_eq!(config.events, vec![upstream::EVENT.to_owned()]);
        // The metrics it reads (and the weight it plots) are `lab/checkout`'s.
        assert_eq!(rollout.namespace, NAMESPACE);
        assert_eq!(config.rollouts[ROLLOUT].namespace, NAMESPACE);
        let weights: Vec<u32> = rollout.spec.steps.iter().map(|s| s.weight_bp()).collect();
        assert_eq!(weights, [500, 1000, 2500, 5000, 10_000]);
    }

    #[test]
    fn scenarios_differ_from_stable_in_one_way_each() {
        let stable = Scenario::stable();
        assert_eq!(Scenario::Healthy.canary(), stable);
        for scenario in [Scenario::Errors, Scenario::Slow, Scenario::BusinessDrop] {
            let canary = scenario.canary();
            let differences = [
                canary.fail_per_mille != stable.fail_per_mille,
                canary.delay_ms != stable.delay_ms,
                canary.event_per_mille != stable.event_per_mille,
            ];
            assert_eq!(
                differences.iter().filter(|d| **d).count(),
                1,
                "{scenario:?}"
            );
            assert_eq!(scenario.expected(), LabOutcome::RolledBack);
        }
    }

    #[test]
    fn exit_codes_say_whether_the_scenario_played_out() {
        let run = |scenario, outcome| LabRun {
            scenario,
            outcome,
            summary: String::new(),
            report: PathBuf::new(),
            wall_time: Duration::ZERO,
            rollback_time: None,
            requests: 0,
            users: 0,
            switched_back: 0,
        };
        assert_eq!(run(Scenario::Healthy, LabOutcome::Promoted).exit_code(), 0);
        assert_eq!(run(Scenario::Errors, LabOutcome::RolledBack).exit_code(), 0);
        assert_eq!(
            run(Scenario::Healthy, LabOutcome::RolledBack).exit_code(),
            1
        );
        assert_eq!(run(Scenario::Slow, LabOutcome::TimedOut).exit_code(), 1);
        assert_eq!(
            run(Scenario::Errors, LabOutcome::Interrupted).exit_code(),
            130
        );
    }
}
