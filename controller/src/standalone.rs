//! `cohort run`: one CanaryRollout driven against a plain Envoy, without Kubernetes.
//!
//! Each cycle reads the rollout file again (so editing `paused`, `abort`, `promote` or
//! `restartAt` in it acts at the next cycle) and runs the same [`driver::cycle`] as the
//! in-cluster controller, over:
//! - the samples of Prometheus when `--prometheus` is given, else of Envoy's admin stats, read
//!   on every cycle of a live rollout ([`Sampling::EveryLiveCycle`] says why);
//! - the ECDS file, written when the weight or the force token changed and on the first cycle
//!   (to re-assert it), each write confirmed on Envoy's admin when `--envoy-admin` is given;
//! - the status, kept in memory and, with `--status-file`, in that file, loaded at start so a
//!   restarted `cohort run` resumes the step it was in. The file is a journal, written before the
//!   push ([`driver::Order::RecordThenPush`] says why and what a failure leaves).
//!
//! The force token (`spec.forceTokenFile`, relative to the rollout file) is read every cycle and
//! written into the ECDS file with the weight; a token that cannot be read keeps the one the
//! file has (and is logged without its content).
//!
//! Notifications go to `spec.notifications.webhook.urlFile` (relative to the rollout file, read
//! when there is something to send); a webhook given only as a Secret is skipped with a log line.
//! Once the rollout settles, the run waits (up to [`notify::DRAIN_LIMIT`]) for the last ones to
//! go out before it exits.
//!
//! Which ECDS file: `--envoy-ecds` wins; without it `spec.target.envoyEcds.path` is used. The
//! filter's name is `spec.target.envoyEcds.filterName` (default `cohort`). A rollout whose target
//! is a WasmPlugin runs too when `--envoy-ecds` is given: the spec's target is then only what the
//! in-cluster controller would use, so one file serves both.
//!
//! Exit codes ([`Outcome::exit_code`], [`Error::exit_code`]): 0 promoted (or, with `--once`,
//! still live), 3 rolled back or aborted, 2 the rollout or status file is unusable, 1 any other
//! failure, 130 stopped by Ctrl-C or SIGTERM.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cohort_core::config::FilterConfig;
use kube::Resource as _;

use crate::driver::{self, Clock, Order, Sampling, Start, StatusStore, SystemClock};
use crate::force_token;
use crate::metrics::Metrics;
use crate::notify::{self, Delivery, Notifier, Webhook};
use crate::source::envoy_admin::{EcdsUpdates, EnvoyAdmin, EnvoyAdminSource, UpdateSeen};
use crate::source::prometheus::PrometheusSource;
use crate::source::{BoxFuture, MetricSource};
use crate::target::envoy_file::{replace_file, EnvoyEcdsFile};
use crate::target::{Released, Target};
use crate::Error;
use cohort_rollout::compiled::{interval_or_fallback, CompiledRollout};
use cohort_rollout::crd;
use cohort_rollout::crd::{
    CanaryRollout, CanaryRolloutSpec, CanaryRolloutStatus, GateCheck, Phase, WebhookSpec,
};
use cohort_rollout::format::{fixed_number, or_dash, seconds, weight_percent};
use cohort_rollout::plan::{EventKind, PlannedEvent};
use cohort_rollout::validate::compile;

/// Each HTTP read (a Prometheus query, an admin scrape) gives up after this.
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a push waits for Envoy to count the ECDS update.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait after a failed cycle; it doubles up to the analysis interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The filter name when the spec does not give one (`spec.target.envoyEcds.filterName`'s
/// default).
const DEFAULT_FILTER_NAME: &str = "cohort";

/// `cohort run`'s command line.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    /// The CanaryRollout to drive, as YAML (what `kubectl apply -f` would take). Re-read every
    /// cycle: set paused, abort, promote or restartAt in it to steer the rollout.
    #[arg(long, value_name = "FILE.yaml")]
    pub rollout: PathBuf,
    /// Envoy's ECDS file for the cohort filter; overrides spec.target.envoyEcds.path.
    #[arg(long = "envoy-ecds", value_name = "FILE")]
    pub envoy_ecds: Option<PathBuf>,
    /// Envoy's admin URL (e.g. http://127.0.0.1:9901): the gates' source without --prometheus,
    /// and used to confirm Envoy applied each push.
    #[arg(
        long = "envoy-admin",
        value_name = "URL",
        required_unless_present = "prometheus"
    )]
    pub envoy_admin: Option<String>,
    /// Prometheus URL (scraping Envoy's /stats/prometheus); the gates read from it when given.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Keep the rollout's status in this JSON file, and resume from it at start.
    #[arg(long = "status-file", value_name = "FILE")]
    pub status_file: Option<PathBuf>,
    /// Run one cycle and exit.
    #[arg(long)]
    pub once: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The canary serves everyone.
    Promoted,
    /// A gate failed (or the failure policy said so): everyone is back on stable.
    RolledBack,
    /// `spec.abort`: everyone is back on stable.
    Aborted,
    /// `--once`: the cycle ran and the rollout is still live.
    Live,
    /// `--once`: the cycle failed (the error was logged).
    Failed,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Promoted | Outcome::Live => 0,
            Outcome::Failed => 1,
            Outcome::RolledBack | Outcome::Aborted => 3,
            Outcome::Interrupted => 130,
        }
    }

    fn of(phase: Phase) -> Option<Outcome> {
        match phase {
            // Succeeded needs `spec.workload`, which `cohort run` leaves alone.
            Phase::Promoted | Phase::Succeeded => Some(Outcome::Promoted),
            Phase::RolledBack => Some(Outcome::RolledBack),
            Phase::Aborted => Some(Outcome::Aborted),
            Phase::Pending | Phase::Progressing | Phase::Paused => None,
        }
    }
}

/// The `cohort run` command: logs to stderr (`RUST_LOG` filters, default `info`), stops on
/// Ctrl-C or SIGTERM, and returns the process exit code.
pub fn main(args: &RunArgs) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Another subcommand's setup may have installed a subscriber already; that one is kept.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return report(&Error::Runtime(error)),
    };
    match runtime.block_on(run(args, stop_signal())) {
        Ok(outcome) => outcome.exit_code(),
        Err(error) => report(&error),
    }
}

fn report(error: &Error) -> i32 {
    tracing::error!("{error}");
    error.exit_code()
}

/// Resolves at Ctrl-C or SIGTERM; never when neither can be listened for.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C still stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `cohort run` until the rollout settles, `--once` has run its cycle, or `shutdown`
/// resolves. Errors are setup errors; failed cycles are logged and retried.
pub async fn run(args: &RunArgs, shutdown: impl Future<Output = ()>) -> Result<Outcome, Error> {
    let runner = Runner::new(args)?;
    Ok(runner.run(args.once, shutdown).await)
}

/// A CanaryRollout read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedRollout {
    /// `metadata.name`: the filter's rollout key and metric label.
    pub name: String,
    /// `metadata.namespace`, empty when absent: the filter tags the rollout's metrics with it
    /// (`cohort_namespace`), and custom query templates get it as `{{namespace}}`.
    pub namespace: String,
    /// `metadata.generation`, if the file has one.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: CanaryRolloutSpec,
}

/// Reads a CanaryRollout from YAML text (not validated: see [`cohort_rollout::validate::validate_spec`]).
pub fn parse_rollout(text: &str) -> Result<LoadedRollout, String> {
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let api_version = CanaryRollout::api_version(&());
    let wanted_kind = CanaryRollout::kind(&());
    let kind = value.get("kind").and_then(serde_json::Value::as_str);
    let found_version = value.get("apiVersion").and_then(serde_json::Value::as_str);
    if kind != Some(&*wanted_kind) || found_version != Some(&*api_version) {
        return Err(format!(
            "expected apiVersion: {api_version} and kind: {wanted_kind}, found {} and {}",
            found_version.unwrap_or("no apiVersion"),
            kind.unwrap_or("no kind")
        ));
    }
    let rollout: CanaryRollout = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let name = rollout
        .metadata
        .name
        .filter(|name| !name.is_empty())
        .ok_or("metadata.name is missing; it names the rollout in the filter config and metrics")?;
    let namespace = rollout.metadata.namespace.unwrap_or_default();
    if !cohort_core::config::is_namespace(&namespace) {
        return Err(format!(
            "metadata.namespace {namespace:?} is not a namespace name; use {}, or leave it out",
            cohort_core::config::NAMESPACE_RULE
        ));
    }
    Ok(LoadedRollout {
        name,
        namespace,
        generation: rollout.metadata.generation,
        spec: rollout.spec,
    })
}

/// Reads and parses the rollout file.
pub fn load_rollout(path: &Path) -> Result<LoadedRollout, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_rollout(&text).map_err(|reason| Error::Rollout {
        path: path.to_owned(),
        reason,
    })
}

/// The status saved at `path`, `None` when there is no file yet.
pub fn load_status(path: &Path) -> Result<Option<CanaryRolloutStatus>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| Error::StatusFile {
            path: path.to_owned(),
            reason: error.to_string(),
        })
}

/// Writes `status` to `path` as JSON (temp file + rename: a crash leaves the old or new file).
pub fn save_status(path: &Path, status: &CanaryRolloutStatus) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    json.push(b'\n');
    replace_file(path, &json)
}

/// The ECDS file and filter name `cohort run` drives.
pub fn ecds_target(flag: Option<&Path>, spec: &CanaryRolloutSpec) -> Result<EnvoyEcdsFile, Error> {
    let from_spec = match &spec.target {
        crd::Target::EnvoyEcds(ecds) => Some(ecds),
        crd::Target::WasmPlugin(_) => None,
    };
    let filter_name = from_spec.map_or(DEFAULT_FILTER_NAME, |ecds| ecds.filter_name.as_str());
    let path = match (flag, from_spec) {
        (Some(path), _) => path.to_owned(),
        (None, Some(ecds)) => PathBuf::from(&ecds.path),
        (None, None) => return Err(Error::NoEcdsFile),
    };
    Ok(EnvoyEcdsFile::new(path, filter_name))
}

/// Drives one rollout; see the module docs.
pub struct Runner {
    rollout_path: PathBuf,
    rollout: LoadedRollout,
    /// The last spec that validated: pushes are built from it when an edit breaks the file (the
    /// plan then holds, but an abort must still reach Envoy).
    valid_spec: CanaryRolloutSpec,
    /// The analysis interval of `rollout`'s spec, read when the spec is.
    interval: Duration,
    source: Box<dyn MetricSource>,
    target: EcdsTarget,
    store: FileStore,
    clock: Arc<dyn Clock>,
}

/// What one successful cycle decided.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleReport {
    /// The phase after the cycle.
    pub phase: Phase,
    /// The weight Envoy was told, in basis points.
    pub weight_bp: u32,
    /// When to run the next cycle.
    pub requeue: Duration,
}

impl Runner {
    /// Reads the rollout (and the saved status) and sets up the source and target.
    pub fn new(args: &RunArgs) -> Result<Runner, Error> {
        let rollout = load_rollout(&args.rollout)?;
        // The file's namespace was checked as it was read: compiling in it checks what
        // `validate_spec` checks.
        let compiled =
            compile(&rollout.spec, &rollout.namespace, &rollout.name).map_err(|errors| {
                Error::InvalidSpec {
                    path: args.rollout.clone(),
                    errors,
                }
            })?;
        let target = ecds_target(args.envoy_ecds.as_deref(), &rollout.spec)?;
        let admin = args
            .envoy_admin
            .as_deref()
            .map(|url| EnvoyAdmin::new(url, HTTP_TIMEOUT))
            .transpose()?;
        let source: Box<dyn MetricSource> = match (&args.prometheus, &args.envoy_admin) {
            (Some(url), _) => Box::new(PrometheusSource::new(url, HTTP_TIMEOUT)?),
            (None, Some(url)) => {
                let custom: Vec<String> = rollout
                    .spec
                    .analysis
                    .gates
                    .iter()
                    .filter(|gate| matches!(gate.check, GateCheck::Custom(_)))
                    .map(|gate| gate.name())
                    .collect();
                if !custom.is_empty() {
                    return Err(Error::CustomGatesNeedPrometheus(custom.join(", ")));
                }
                Box::new(EnvoyAdminSource::new(url, HTTP_TIMEOUT)?)
            }
            (None, None) => {
                return Err(Error::Rollout {
                    path: args.rollout.clone(),
                    reason: "no metric source: give --prometheus URL or --envoy-admin URL"
                        .to_owned(),
                })
            }
        };
        // A token the run cannot read or use stops it before it touches anything.
        force_token_of(&rollout.spec, &args.rollout)?;
        let status = match &args.status_file {
            Some(path) => load_status(path)?,
            None => None,
        };
        // `cohort run` serves no /metrics: nothing reads these counts; its log says what failed.
        let notifier = Notifier::new(Delivery::default(), Arc::new(Metrics::default()), None)?;
        tracing::info!(
            rollout = %rollout.name,
            ecds = %target.path().display(),
            filter = target.filter_name(),
            source = if args.prometheus.is_some() { "prometheus" } else { "envoy-admin" },
            resumed = status.as_ref().map(|s| s.phase.as_str()),
            "cohort run"
        );
        Ok(Runner {
            rollout_path: args.rollout.clone(),
            valid_spec: rollout.spec.clone(),
            interval: compiled.interval(),
            rollout,
            source,
            target: EcdsTarget {
                file: target,
                admin,
                pushed: Mutex::new(None),
            },
            store: FileStore {
                status,
                path: args.status_file.clone(),
                notifier,
                facts: None,
            },
            clock: Arc::new(SystemClock),
        })
    }

    /// The status as of the last successful cycle.
    pub fn status(&self) -> Option<&CanaryRolloutStatus> {
        self.store.status.as_ref()
    }

    /// Cycles until the rollout settles, `once` has run one cycle, or `shutdown` resolves.
    pub async fn run(mut self, once: bool, shutdown: impl Future<Output = ()>) -> Outcome {
        tokio::pin!(shutdown);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let result = tokio::select! {
                result = self.cycle() => result,
                () = &mut shutdown => return self.stopped(),
            };
            let wait = match result {
                Ok(report) => {
                    backoff = FIRST_BACKOFF;
                    if let Some(outcome) = Outcome::of(report.phase) {
                        return self.ended(outcome).await;
                    }
                    if once {
                        return self.ended(Outcome::Live).await;
                    }
                    report.requeue
                }
                Err(error) => {
                    if once {
                        tracing::error!("{error}");
                        return self.ended(Outcome::Failed).await;
                    }
                    tracing::warn!("{error}; retrying in {}", seconds(backoff));
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.interval().max(FIRST_BACKOFF));
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => return self.stopped(),
            }
        }
    }

    /// The run ends with `outcome` once the notifications it queued went out (or the drain
    /// limit passed): the last of them says how it ended.
    async fn ended(&self, outcome: Outcome) -> Outcome {
        self.store.notifier.drain(notify::DRAIN_LIMIT).await;
        outcome
    }

    fn stopped(&self) -> Outcome {
        match &self.store.path {
            Some(path) if self.store.status.is_some() => tracing::info!(
                "stopped; the status is in {}: run again to resume",
                path.display()
            ),
            _ => tracing::info!("stopped"),
        }
        Outcome::Interrupted
    }

    /// One [`driver::cycle`], on the rollout file as it is now.
    pub async fn cycle(&mut self) -> Result<CycleReport, Error> {
        self.reload_rollout();
        let rollout = &self.rollout;
        let (valid_spec, rollout_path) = (&self.valid_spec, &self.rollout_path);
        let now = self.clock.now();
        self.store.facts = Some(CycleFacts {
            namespace: rollout.namespace.clone(),
            name: rollout.name.clone(),
            steps: rollout.spec.steps.len(),
            webhook: rollout
                .spec
                .notifications
                .as_ref()
                .map(|spec| spec.webhook.clone()),
            rollout_path: rollout_path.clone(),
            now,
        });
        let cycle = driver::Rollout {
            namespace: &rollout.namespace,
            name: &rollout.name,
            generation: rollout.generation,
            spec: &rollout.spec,
            entry_spec: valid_spec,
            force_token: Box::pin(async move {
                Ok(
                    force_token_of(valid_spec, rollout_path).unwrap_or_else(|error| {
                        tracing::warn!("{error}; the ECDS file keeps the force token it has");
                        None
                    }),
                )
            }),
            now,
        };
        let plan = driver::cycle(
            cycle,
            &mut self.store,
            self.source.as_ref(),
            Sampling::EveryLiveCycle,
            &self.target,
        )
        .await?;
        tracing::info!(
            "{}",
            progress_line(&rollout.name, &rollout.spec, &plan.status, plan.requeue)
        );
        Ok(CycleReport {
            phase: plan.status.phase,
            weight_bp: plan.weight_bp,
            requeue: plan.requeue,
        })
    }

    /// Picks up edits of the rollout file; an unreadable file keeps the previous spec.
    fn reload_rollout(&mut self) {
        match load_rollout(&self.rollout_path) {
            Ok(rollout) => {
                if rollout.spec != self.rollout.spec {
                    tracing::info!("the rollout file changed; using the new spec");
                }
                let compiled = compile(&rollout.spec, &rollout.namespace, &rollout.name);
                if compiled.is_ok() {
                    self.valid_spec = rollout.spec.clone();
                }
                // The name keys the filter entry, and with the namespace the metrics: neither can
                // change under a run.
                if (&rollout.namespace, &rollout.name)
                    == (&self.rollout.namespace, &self.rollout.name)
                {
                    self.interval = compiled.as_ref().map_or_else(
                        |_| interval_or_fallback(&rollout.spec),
                        CompiledRollout::interval,
                    );
                    self.rollout = rollout;
                } else {
                    tracing::warn!(
                        "the rollout file now names {:?} in namespace {:?}; cohort run keeps driving {:?} in {:?} (restart it to switch)",
                        rollout.name,
                        rollout.namespace,
                        self.rollout.name,
                        self.rollout.namespace
                    );
                }
            }
            Err(error) => tracing::warn!("{error}; keeping the spec read before"),
        }
    }

    fn interval(&self) -> Duration {
        self.interval
    }
}

/// `cohort run`'s status: in memory, and with `--status-file` in that file too; its Events go to
/// the log and, as notifications, to the rollout's webhook.
struct FileStore {
    status: Option<CanaryRolloutStatus>,
    path: Option<PathBuf>,
    notifier: Notifier,
    /// The rollout as the current cycle sees it, for its notifications.
    facts: Option<CycleFacts>,
}

/// What a notification says about the rollout besides its status.
struct CycleFacts {
    namespace: String,
    name: String,
    steps: usize,
    webhook: Option<WebhookSpec>,
    rollout_path: PathBuf,
    now: k8s_openapi::jiff::Timestamp,
}

impl StatusStore for FileStore {
    /// Only this run reads the file, and it must never re-decide a step it left.
    fn order(&self) -> Order {
        Order::RecordThenPush
    }

    fn start(&mut self) -> Start {
        Start {
            status: self.status.clone(),
            ..Start::default()
        }
    }

    /// A failed save stops the push, and the status stays where it was.
    fn journal<'a>(
        &'a mut self,
        status: &'a CanaryRolloutStatus,
    ) -> BoxFuture<'a, Result<(), Error>> {
        if let Some(path) = &self.path {
            if let Err(source) = save_status(path, status) {
                let path = path.clone();
                return Box::pin(std::future::ready(Err(Error::SaveStatus { path, source })));
            }
        }
        self.status = Some(status.clone());
        Box::pin(std::future::ready(Ok(())))
    }

    /// Best effort: Envoy serves the weight `status` records already, so a lost save costs a
    /// restart only the cycles since the last one.
    fn record<'a>(
        &'a mut self,
        status: &'a CanaryRolloutStatus,
    ) -> BoxFuture<'a, Result<(), Error>> {
        if let Some(path) = &self.path {
            if let Err(error) = save_status(path, status) {
                tracing::warn!("cannot save the status to {}: {error}", path.display());
            }
        }
        self.status = Some(status.clone());
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish<'a>(
        &'a mut self,
        status: &'a CanaryRolloutStatus,
        events: &'a [PlannedEvent],
    ) -> BoxFuture<'a, ()> {
        for event in events {
            match event.kind {
                EventKind::Normal => tracing::info!(reason = %event.reason, "{}", event.message),
                EventKind::Warning => tracing::warn!(reason = %event.reason, "{}", event.message),
            }
        }
        if let Some(facts) = &self.facts {
            let cycle = notify::Cycle {
                namespace: &facts.namespace,
                name: &facts.name,
                steps: facts.steps,
                status,
                now: facts.now,
            };
            let notifications = notify::notifications(cycle, events);
            if !notifications.is_empty() {
                let own = Webhook::of_file_rollout(facts.webhook.as_ref(), &facts.rollout_path);
                self.notifier.notify(own, notifications);
            }
        }
        Box::pin(std::future::ready(()))
    }

    /// The run logs the error and retries from the recorded status.
    fn failed<'a>(&'a mut self, _error: &'a Error) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// `cohort run`'s target: the ECDS file, each write confirmed on Envoy's admin when there is
/// one, and the last push remembered.
struct EcdsTarget {
    file: EnvoyEcdsFile,
    admin: Option<EnvoyAdmin>,
    /// The weight and force token last pushed (`None`: nothing yet).
    pushed: Mutex<Option<(u32, Option<String>)>>,
}

impl EcdsTarget {
    fn pushed(&self) -> std::sync::MutexGuard<'_, Option<(u32, Option<String>)>> {
        self.pushed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `write` and, with an admin URL, waits for Envoy to count it.
    async fn confirmed(&self, write: BoxFuture<'_, Result<(), Error>>) -> Result<(), Error> {
        let before = match &self.admin {
            Some(admin) => match admin.ecds_updates(self.file.filter_name()).await {
                Ok(updates) => Some(updates),
                Err(error) => {
                    tracing::warn!(
                        "cannot read Envoy's ECDS counters, pushing unconfirmed: {error}"
                    );
                    None
                }
            },
            None => None,
        };
        write.await?;
        tracing::debug!(path = %self.file.path().display(), "ECDS file written");
        if let (Some(admin), Some(before)) = (&self.admin, before) {
            self.confirm(admin, before).await?;
        }
        Ok(())
    }

    /// Waits until Envoy counts the update: `Err` when it rejected it. No answer in time is
    /// only logged: Envoy does not count a file whose config did not change.
    async fn confirm(&self, admin: &EnvoyAdmin, before: EcdsUpdates) -> Result<(), Error> {
        let started = Instant::now();
        match admin
            .await_ecds_update(self.file.filter_name(), before, CONFIRM_TIMEOUT)
            .await
        {
            UpdateSeen::Applied => {
                tracing::debug!(
                    after_ms = started.elapsed().as_millis(),
                    "Envoy applied the update"
                );
                Ok(())
            }
            UpdateSeen::Rejected => Err(Error::TargetRejected(
                "Envoy rejected the pushed filter config (update_rejected went up); see Envoy's log"
                    .to_owned(),
            )),
            UpdateSeen::NotSeen => {
                tracing::info!(
                    "Envoy did not count an ECDS update within {} (unchanged config?)",
                    seconds(CONFIRM_TIMEOUT)
                );
                Ok(())
            }
            UpdateSeen::Unreadable(error) => {
                tracing::warn!("cannot confirm the push: {error}");
                Ok(())
            }
        }
    }
}

/// What a push of `config` serves for rollout `name`.
fn served_by(name: &str, config: &FilterConfig) -> Option<(u32, Option<String>)> {
    let entry = config.rollouts.get(name)?;
    Some((entry.weight_bp, config.force_token.clone()))
}

impl Target for EcdsTarget {
    fn apply<'a>(
        &'a self,
        name: &'a str,
        config: &'a FilterConfig,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.confirmed(self.file.apply(name, config)).await?;
            *self.pushed() = served_by(name, config);
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Released, Error>> {
        self.file.release(namespace, name)
    }

    fn live_weight<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, Error>> {
        self.file.live_weight(namespace, name)
    }

    fn withdraw<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.confirmed(self.file.withdraw(name)).await?;
            *self.pushed() = None;
            Ok(())
        })
    }

    /// From the last push: this run is the file's only writer, so what it pushed last is what
    /// the file serves. A run starts knowing nothing, so its first cycle writes, re-asserting
    /// the weight of a run killed between its journal and its push.
    fn serves(&self, name: &str, config: &FilterConfig) -> bool {
        let wanted = served_by(name, config);
        wanted.is_some() && *self.pushed() == wanted
    }
}

/// The force token `spec` names: its `forceTokenFile`, relative to the rollout file's directory
/// (a Secret reference needs the in-cluster controller).
pub fn force_token_of(
    spec: &CanaryRolloutSpec,
    rollout_path: &Path,
) -> Result<Option<String>, Error> {
    match (&spec.force_token_file, &spec.force_token_secret_ref) {
        (Some(file), _) => {
            let base = rollout_path.parent().unwrap_or(Path::new("."));
            force_token::from_file(file, base).map(Some)
        }
        (None, Some(_)) => Err(Error::ForceTokenUnavailable(
            "spec.forceTokenSecretRef names a Kubernetes Secret, which the in-cluster controller \
             reads; `cohort run` reads the token from spec.forceTokenFile"
                .to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

/// One line per cycle: where the rollout is and what each gate said.
///
/// `web Progressing step 2/6 at 5% | error-rate Pass canary 0.0100 stable 0.0050 limit 0.0150
/// n 40/760 | next 2s`
pub fn progress_line(
    name: &str,
    spec: &CanaryRolloutSpec,
    status: &CanaryRolloutStatus,
    requeue: Duration,
) -> String {
    let step = status
        .step_index
        .map_or("-".to_owned(), |index| format!("{}", index + 1));
    let mut line = format!(
        "{name} {} step {step}/{} at {}",
        status.phase,
        spec.steps.len(),
        weight_percent(status.weight_bp)
    );
    for gate in &status.gates {
        line.push_str(&format!(
            " | {} {} canary {} stable {} limit {} n {:.0}/{:.0}",
            gate.gate,
            gate.verdict,
            or_dash(gate.canary, fixed_number),
            or_dash(gate.stable, fixed_number),
            or_dash(gate.threshold, fixed_number),
            gate.canary_samples,
            gate.stable_samples
        ));
    }
    if !status.phase.is_terminal() {
        line.push_str(&format!(" | next {}", seconds(requeue)));
    }
    line
}

pub mod release;

#[cfg(test)]
mod kill_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::TempDir;
    use crate::source::{SamplesByRollout, SeriesRequest};
    use cohort_rollout::crd::{GateResult, Verdict};
    use cohort_rollout::evaluate::{Observed, Samples, VersionSamples};
    use cohort_rollout::filter_config::spec_to_filter_config;
    use cohort_rollout::validate::validate_spec;
    use std::sync::{Arc, Mutex};

    const ROLLOUT: &str = r#"
apiVersion: cohort.dev/v1alpha1
kind: CanaryRollout
metadata: {name: web, namespace: shop}
spec:
  target: {envoyEcds: {path: /etc/envoy/ecds.yaml, filterName: cohort}}
  hosts: ["*"]
  steps: [{weight: 10, bake: 1h}, {weight: 100}]
  analysis:
    interval: 2s
    minSamples: 10
    gates: [{errorRate: {maxIncrease: 0.02}}]
"#;

    #[test]
    fn reads_a_rollout_as_kubectl_would_take_it() {
        let rollout = parse_rollout(ROLLOUT).unwrap();
        assert_eq!(rollout.name, "web");
        assert_eq!(rollout.namespace, "shop");
        assert_eq!(rollout.generation, None);
        assert_eq!(rollout.spec.steps.len(), 2);
        assert_eq!(validate_spec(&rollout.spec, &rollout.name), Ok(()));

        let table = [
            (
                ROLLOUT.replace("kind: CanaryRollout", "kind: Deployment"),
                "kind: CanaryRollout, found",
            ),
            (
                ROLLOUT.replace("cohort.dev/v1alpha1", "cohort.dev/v1"),
                "expected apiVersion: cohort.dev/v1alpha1",
            ),
            (
                ROLLOUT.replace("name: web, ", ""),
                "metadata.name is missing",
            ),
            (ROLLOUT.replace("hosts: [\"*\"]", "hosts: 3"), "hosts"),
            ("a: [".to_owned(), ""),
        ];
        for (text, expected) in table {
            let error = parse_rollout(&text).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error}");
        }
        // Without a namespace the metrics carry an empty one (a plain Envoy's rollout).
        let no_namespace = parse_rollout(&ROLLOUT.replace(", namespace: shop", "")).unwrap();
        assert_eq!(no_namespace.namespace, "");
        let filter = spec_to_filter_config(&no_namespace.spec, &no_namespace.namespace, "web", 0);
        assert_eq!(filter.unwrap().rollouts["web"].namespace, "");
        let shop = parse_rollout(ROLLOUT).unwrap();
        let filter = spec_to_filter_config(&shop.spec, &shop.namespace, "web", 0).unwrap();
        assert_eq!(filter.rollouts["web"].namespace, "shop");
        for bad in ["Shop", "a\\\"b", "-x"] {
            let text = ROLLOUT.replace("namespace: shop", &format!("namespace: {bad:?}"));
            let error = parse_rollout(&text).unwrap_err();
            assert!(error.contains("metadata.namespace"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_flag_overrides_the_spec_target() {
        let spec = parse_rollout(ROLLOUT).unwrap().spec;
        let from_spec = ecds_target(None, &spec).unwrap();
        assert_eq!(from_spec.path(), Path::new("/etc/envoy/ecds.yaml"));
        let flagged = ecds_target(Some(Path::new("/tmp/e.yaml")), &spec).unwrap();
        assert_eq!(flagged.path(), Path::new("/tmp/e.yaml"));
        assert_eq!(flagged.filter_name(), "cohort");

        let mut wasm = spec.clone();
        wasm.target = crd::Target::WasmPlugin(crd::WasmPluginTarget {
            name: "cohort-filter".into(),
            namespace: None,
        });
        assert!(matches!(ecds_target(None, &wasm), Err(Error::NoEcdsFile)));
        let flagged = ecds_target(Some(Path::new("/tmp/e.yaml")), &wasm).unwrap();
        assert_eq!(flagged.filter_name(), DEFAULT_FILTER_NAME);
    }

    #[test]
    fn exit_codes() {
        let table = [
            (Outcome::Promoted, 0),
            (Outcome::Live, 0),
            (Outcome::Failed, 1),
            (Outcome::RolledBack, 3),
            (Outcome::Aborted, 3),
            (Outcome::Interrupted, 130),
        ];
        for (outcome, code) in table {
            assert_eq!(outcome.exit_code(), code, "{outcome:?}");
        }
        assert_eq!(Error::NoEcdsFile.exit_code(), 2);
        assert_eq!(
            Error::push(Error::TargetRejected("rejected".into())).exit_code(),
            1
        );
    }

    #[test]
    fn progress_line_shows_phase_weight_and_gates() {
        let spec = parse_rollout(ROLLOUT).unwrap().spec;
        let status = CanaryRolloutStatus {
            phase: Phase::Progressing,
            step_index: Some(0),
            weight_bp: 1000,
            gates: vec![GateResult {
                gate: "error-rate".into(),
                verdict: Verdict::Pass,
                canary: Some(0.01),
                stable: Some(0.005),
                threshold: Some(0.025),
                canary_samples: 40.0,
                stable_samples: 360.0,
                reason: String::new(),
                sequential: None,
            }],
            ..CanaryRolloutStatus::default()
        };
        assert_eq!(
            progress_line("web", &spec, &status, Duration::from_secs(2)),
            "web Progressing step 1/2 at 10% | error-rate Pass canary 0.0100 stable 0.0050 \
             limit 0.0250 n 40/360 | next 2.0s"
        );
        let promoted = CanaryRolloutStatus {
            phase: Phase::Promoted,
            step_index: Some(1),
            weight_bp: 10_000,
            ..CanaryRolloutStatus::default()
        };
        assert_eq!(
            progress_line("web", &spec, &promoted, Duration::from_secs(300)),
            "web Promoted step 2/2 at 100%"
        );
    }

    /// A source answering whatever the test put in.
    struct Scripted(Arc<Mutex<Samples>>);

    impl MetricSource for Scripted {
        fn samples<'a>(
            &'a self,
            _window: Duration,
            rollouts: &'a [SeriesRequest],
        ) -> BoxFuture<'a, SamplesByRollout> {
            let samples = self.0.lock().unwrap().clone();
            Box::pin(async move {
                rollouts
                    .iter()
                    .map(|r| (r.key(), samples.clone()))
                    .collect()
            })
        }
    }

    fn traffic(requests: f64, errors: f64) -> VersionSamples {
        VersionSamples {
            requests: Observed::Value(requests),
            server_errors: Observed::Value(errors),
            ..VersionSamples::default()
        }
    }

    #[tokio::test]
    async fn starts_holds_rolls_back_and_resumes_from_the_status_file() {
        let dir = TempDir::new("standalone");
        let ecds = dir.0.join("ecds.yaml");
        std::fs::write(
            &ecds,
            include_str!("../../manifests/envoy/ecds.yaml")
                .replace("${WASM_PATH}", "/x.wasm")
                .replace(
                    "${COHORT_CONFIG}",
                    r#"{"version": 1, "rollouts": {"api": {"hosts": ["api"], "weightBp": 42}}}"#,
                ),
        )
        .unwrap();
        let rollout_file = dir.0.join("rollout.yaml");
        std::fs::write(&rollout_file, ROLLOUT).unwrap();
        let status_file = dir.0.join("status.json");
        let args = RunArgs {
            rollout: rollout_file.clone(),
            envoy_ecds: Some(ecds.clone()),
            envoy_admin: None,
            prometheus: Some("http://127.0.0.1:9".into()),
            status_file: Some(status_file.clone()),
            once: false,
        };
        let script = Arc::new(Mutex::new(Samples::default()));
        let start = |script: &Arc<Mutex<Samples>>| {
            let mut runner = Runner::new(&args).unwrap();
            runner.source = Box::new(Scripted(Arc::clone(script)));
            runner
        };
        let served = || {
            let config = EnvoyEcdsFile::new(&ecds, "cohort").read_config().unwrap();
            (
                config.rollouts["web"].weight_bp,
                config.rollouts["api"].weight_bp,
            )
        };

        // First cycle: the first step's weight goes into the file; thin data holds it.
        let mut runner = start(&script);
        let report = runner.cycle().await.unwrap();
        assert_eq!((report.phase, report.weight_bp), (Phase::Progressing, 1000));
        assert_eq!(served(), (1000, 42));
        let report = runner.cycle().await.unwrap();
        assert_eq!(report.phase, Phase::Progressing);
        assert_eq!(
            runner.status().unwrap().gates[0].verdict,
            Verdict::Inconclusive
        );

        // A restarted run resumes from the status file, still at the first step.
        drop(runner);
        let mut runner = start(&script);
        assert_eq!(runner.status().map(|s| s.weight_bp), Some(1000));
        let report = runner.cycle().await.unwrap();
        assert_eq!((report.phase, report.weight_bp), (Phase::Progressing, 1000));

        // The canary fails: weight 0 in the file, and the run ends RolledBack.
        *script.lock().unwrap() = Samples {
            canary: traffic(100.0, 20.0),
            stable: traffic(900.0, 0.0),
        };
        let outcome = runner.run(false, std::future::pending()).await;
        assert_eq!(outcome, Outcome::RolledBack);
        assert_eq!(served(), (0, 42));
        let saved = load_status(&status_file).unwrap().unwrap();
        assert_eq!((saved.phase, saved.weight_bp), (Phase::RolledBack, 0));

        // Resuming a settled rollout re-asserts its weight and ends at once.
        let outcome = start(&script).run(false, std::future::pending()).await;
        assert_eq!(outcome, Outcome::RolledBack);

        // A broken status file stops the run before it touches anything.
        std::fs::write(&status_file, "{\"phase\": 7}").unwrap();
        let error = Runner::new(&args).err().unwrap();
        assert!(matches!(error, Error::StatusFile { .. }), "{error}");
        assert_eq!(error.exit_code(), 2);
    }

    /// `cohort run` notifies the webhook in `spec.notifications.webhook.urlFile`, and returns
    /// its outcome only once the last notification went out.
    #[tokio::test]
    async fn a_run_notifies_its_url_file_and_exits_after_the_last_notification() {
        use crate::notify::tests::Hook;
        let dir = TempDir::new("standalone-notify");
        let ecds = dir.0.join("ecds.yaml");
        std::fs::write(
            &ecds,
            include_str!("../../manifests/envoy/ecds.yaml")
                .replace("${WASM_PATH}", "/x.wasm")
                .replace("${COHORT_CONFIG}", r#"{"version": 1, "rollouts": {}}"#),
        )
        .unwrap();
        let mut hook = Hook::start(vec![]).await;
        std::fs::write(dir.0.join("webhook-url"), format!("{}\n", hook.url)).unwrap();
        let rollout_file = dir.0.join("rollout.yaml");
        let with_webhook = format!(
            "{ROLLOUT}  notifications: {{webhook: {{urlFile: webhook-url, format: json}}}}\n"
        );
        std::fs::write(&rollout_file, with_webhook).unwrap();
        let args = RunArgs {
            rollout: rollout_file,
            envoy_ecds: Some(ecds),
            envoy_admin: None,
            prometheus: Some("http://127.0.0.1:9".into()),
            status_file: None,
            once: false,
        };
        let script = Arc::new(Mutex::new(Samples {
            canary: traffic(100.0, 20.0),
            stable: traffic(900.0, 0.0),
        }));
        let mut runner = Runner::new(&args).unwrap();
        runner.source = Box::new(Scripted(Arc::clone(&script)));
        let outcome = runner.run(false, std::future::pending()).await;
        assert_eq!(outcome, Outcome::RolledBack);
        // Both were sent before `run` returned: nothing is waited for.
        let sent: Vec<_> = hook.rest().into_iter().map(|r| r.body).collect();
        let events: Vec<_> = sent.iter().map(|body| body["event"].clone()).collect();
        assert_eq!(
            events,
            [
                serde_json::json!("runStarted"),
                serde_json::json!("rolledBack")
            ],
            "{sent:?}"
        );
        assert_eq!(sent[1]["namespace"], "shop");
        assert_eq!(sent[1]["rollout"], "web");
        assert_eq!(sent[1]["weightBp"], 0);
    }

    #[tokio::test]
    async fn custom_gates_need_prometheus_and_shutdown_interrupts() {
        let dir = TempDir::new("standalone-custom");
        let rollout_file = dir.0.join("rollout.yaml");
        let custom = ROLLOUT.replace(
            "gates: [{errorRate: {maxIncrease: 0.02}}]",
            "gates: [{name: cpu, custom: {query: up, max: 1}}]",
        );
        std::fs::write(&rollout_file, custom).unwrap();
        let mut args = RunArgs {
            rollout: rollout_file,
            envoy_ecds: Some(dir.0.join("missing.yaml")),
            envoy_admin: Some("http://127.0.0.1:9".into()),
            prometheus: None,
            status_file: None,
            once: false,
        };
        let error = Runner::new(&args).err().unwrap();
        assert!(error.to_string().contains("cpu"), "{error}");
        // With Prometheus it starts; the ECDS file is missing, so cycles fail and are retried
        // until the shutdown future fires.
        args.prometheus = Some("http://127.0.0.1:9".into());
        let outcome = run(&args, tokio::time::sleep(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Interrupted);
        args.once = true;
        assert_eq!(
            run(&args, std::future::pending()).await.unwrap(),
            Outcome::Failed
        );
    }
}
