//! The in-cluster controller: kube-runtime's `Controller` watching CanaryRollouts, and a thin
//! [`reconcile`] that runs the [`driver`] cycle on one of them.
//!
//! A reconcile starts when a rollout's spec, finalizers or deletion mark change, and when the
//! requeue its last plan asked for comes due; never because a reconcile wrote status
//! ([`reconcile_trigger`]), so a rollout is analysed once per interval.
//!
//! With `spec.workload`, the stable and canary Deployments it names are watched too (a change
//! reconciles the rollouts naming them, [`rollouts_naming`]) and the cycle runs them
//! ([`driver::cycle_with_workload`], [`crate::workload`]).
//!
//! One reconcile is one [`driver::cycle`] over the rollout's WasmPlugin ([`WasmPluginTarget`]),
//! the shared metric source (samples read only at a live step, [`Sampling::WhenPlanned`]), and
//! its status subresource and Events (`cluster::ClusterStore`), which record after the push
//! ([`driver::Order::PushThenRecord`] says why and what a failure leaves). A reconcile that hangs
//! (an API server that does not answer) is cut off after [`RECONCILE_TIMEOUT`]; failures are
//! retried with backoff ([`error_policy`]). The rollout's own Kubernetes I/O (status, Events,
//! the finalizer, the force token's Secret) is in the `cluster` submodule; the WasmPlugin's in
//! [`crate::target::wasmplugin`].
//!
//! Deletion: every rollout gets the finalizer [`FINALIZER`] before its first push. A rollout
//! marked for deletion has its entry removed from its WasmPlugin
//! ([`WasmPluginTarget::release`]), so its users are served stable, then an Event, then the
//! finalizer goes and Kubernetes deletes it. A missing WasmPlugin serves no entry: nothing to
//! remove. Any other failure keeps the finalizer (deletion waits) and is retried with backoff
//! under a `Degraded` condition and a Warning Event, like a failed push.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, reflector, ObjectRef};
use kube::runtime::{watcher, PredicateConfig, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::driver::{self, Clock, Sampling, SystemClock};
use crate::http_server::{self, Health};
use crate::leader::{LeaderElector, LeaseSettings};
use crate::metrics::Metrics;
use crate::notify::{self, Delivery, Notifier, UrlSource, Webhook};
use crate::source::prometheus::PrometheusSource;
use crate::source::shared::SharedCycle;
use crate::source::MetricSource;
use crate::target::wasmplugin::{field_manager, WasmPluginTarget};
use crate::target::Released;
use crate::workload::{Deployments, Workload};
use crate::{Error, Result};
use cohort_rollout::crd::{CanaryRollout, CanaryRolloutSpec, Target, WebhookFormat};
use cohort_rollout::plan::{EventKind, PlannedEvent};

mod cluster;

/// Default `--metrics-address`: the port manifests/controller/deployment.yaml names `metrics`.
pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:9090";
/// Default `--prometheus`: Istio's Prometheus add-on.
pub const DEFAULT_PROMETHEUS_URL: &str = "http://prometheus.istio-system:9090";
/// Default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "cohort-controller";
/// A Prometheus query slower than this makes the gate Error rather than stall the reconcile.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconciles within this of each other share one metric query (see `SharedCycle`): queries per
/// analysis cycle stay near `interval / freshness` per series kind, whatever the rollout count.
pub const SHARED_ANSWER_FRESHNESS: Duration = Duration::from_secs(5);
/// Reconciles in flight at once. kube-runtime's default is unbounded, so a controller starting
/// with 1,000 rollouts would hold 1,000 reconciles (their requests, answers and plans) in memory
/// together; 16 keep two cores busy (the API server is the slow part) and the start-up peak
/// flat (BENCHMARKS.md, "Controller scale").
pub const MAX_CONCURRENT_RECONCILES: u16 = 16;
/// Field manager of the status the controller writes (it owns all of status).
pub const STATUS_FIELD_MANAGER: &str = "cohort-controller";
/// `reportingController` of the controller's Events.
pub const EVENT_REPORTER: &str = "cohort-controller";
/// First retry after a failed reconcile; doubles per failure in a row.
pub const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// A reconcile that takes longer fails: a hung API server cannot hold a rollout forever.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// The finalizer that holds a deleted CanaryRollout until its entry is gone from its target:
/// without it, the entry would keep sending users to the canary with no rollout managing it.
pub const FINALIZER: &str = "cohort.dev/remove-filter-entry";

/// What every reconcile shares.
pub struct Context {
    client: Client,
    source: Arc<dyn MetricSource>,
    clock: Arc<dyn Clock>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// `None` without leader election; otherwise reconciles act only while it reads true.
    leading: Option<watch::Receiver<bool>>,
    /// Failed reconciles in a row, per rollout, for the retry backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
    /// Statuses whose weight was pushed but whose write failed, per rollout, with the status
    /// they replace: the retry plans from them, so it neither repeats the step nor serves a
    /// lower weight than the one already pushed (`cluster::ClusterStore`).
    unrecorded: Mutex<HashMap<(String, String), cluster::Unrecorded>>,
    /// A reconcile taking longer (a hung API server) fails and is retried with backoff.
    reconcile_timeout: Duration,
    /// Sends the webhook notifications; `None` sends none.
    notifier: Option<Arc<Notifier>>,
}

impl Context {
    /// A context whose Events name `instance` (the pod name) as their reporting instance.
    pub fn new(
        client: Client,
        source: Arc<dyn MetricSource>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: EVENT_REPORTER.to_owned(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            source,
            clock,
            metrics,
            leading: None,
            failures: Mutex::new(HashMap::new()),
            unrecorded: Mutex::new(HashMap::new()),
            reconcile_timeout: RECONCILE_TIMEOUT,
            notifier: None,
        }
    }

    /// Rollouts' milestones go to their webhooks (and the controller-wide one) through
    /// `notifier`.
    pub fn with_notifier(mut self, notifier: Arc<Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Reconciles act only while `leading` reads true: a fence for the moment between losing
    /// the Lease and the watch shutting down.
    pub fn with_leadership(mut self, leading: watch::Receiver<bool>) -> Self {
        self.leading = Some(leading);
        self
    }

    /// Reconciles taking longer than `timeout` fail (and are retried with backoff).
    pub fn with_reconcile_timeout(mut self, timeout: Duration) -> Self {
        self.reconcile_timeout = timeout;
        self
    }

    fn is_leading(&self) -> bool {
        self.leading
            .as_ref()
            .is_none_or(|leading| *leading.borrow())
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unrecorded(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), cluster::Unrecorded>> {
        self.unrecorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reconciles one CanaryRollout, as kube-runtime's `Controller` calls it.
pub async fn reconcile(rollout: Arc<CanaryRollout>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = tokio::time::timeout(ctx.reconcile_timeout, reconcile_guarded(&rollout, &ctx))
        .await
        .unwrap_or(Err(Error::Timeout(ctx.reconcile_timeout)));
    ctx.metrics.observe_reconcile(started.elapsed());
    if result.is_ok() {
        ctx.failures().remove(&key(&rollout));
    }
    result
}

/// Retries a failed reconcile with exponential backoff per rollout.
pub fn error_policy(rollout: Arc<CanaryRollout>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut failures = ctx.failures();
        let count = failures.entry(key(&rollout)).or_default();
        *count = count.saturating_add(1);
        *count
    };
    ctx.metrics.count_reconcile_error(error.metric_label());
    let delay = retry_delay(failures);
    tracing::warn!(
        rollout = %rollout.name_any(),
        namespace = rollout.namespace().unwrap_or_default(),
        %error,
        failures,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// `RETRY_BASE` doubled per failure in a row after the first, capped at `RETRY_MAX`.
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_BASE.saturating_mul(1 << doublings).min(RETRY_MAX)
}

fn key(rollout: &CanaryRollout) -> (String, String) {
    (rollout.namespace().unwrap_or_default(), rollout.name_any())
}

/// The leader fence, then the finalizer: a rollout without it gets it (and is reconciled again
/// when that change comes back through the watch), a deleted one is released, any other is
/// reconciled.
async fn reconcile_guarded(rollout: &Arc<CanaryRollout>, ctx: &Context) -> Result<Action> {
    if !ctx.is_leading() {
        return Ok(Action::await_change());
    }
    let name = rollout.name_any();
    let namespace = rollout
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    cluster::with_finalizer(
        ctx,
        rollout,
        (&namespace, &name),
        |rollout| async move { reconcile_rollout(&rollout, ctx).await },
        |rollout| async move { release(&rollout, ctx).await },
    )
    .await
}

/// The deleted rollout's entry leaves its WasmPlugin (an Event says what was done); an error
/// keeps the finalizer, so the deletion waits for the retry.
async fn release(rollout: &CanaryRollout, ctx: &Context) -> Result<Action> {
    let name = rollout.name_any();
    let namespace = rollout
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    // Nothing pushed for it is served any more, nor will be.
    ctx.unrecorded().remove(&key(rollout));
    let message = match wasm_plugin_target(ctx, &rollout.spec, &namespace, &name) {
        // The cluster controller never writes an ECDS file (refuse_target).
        None => "spec.target.envoyEcds: the controller wrote no entry for this rollout, nothing \
                 to remove"
            .to_owned(),
        Some(target) => {
            let plugin = target.describe();
            match target.release(&namespace, &name).await {
                Ok(Released::Removed) => format!(
                    "removed spec.pluginConfig.rollouts.{name} from {plugin}: the filter serves \
                     stable to all of this rollout's users"
                ),
                Ok(Released::Nothing) => {
                    format!("{plugin} holds no entry of this rollout, nothing to remove")
                }
                Ok(Released::TargetMissing) => {
                    format!("{plugin} does not exist, so no entry of this rollout is served")
                }
                Err(error) => {
                    let error = Error::release(error);
                    let now = ctx.clock.now();
                    cluster::record_failure(rollout, ctx, (&namespace, &name), &error, now).await?;
                    return Err(error);
                }
            }
        }
    };
    tracing::info!(rollout = %name, namespace = %namespace, "{message}");
    let event = PlannedEvent {
        kind: EventKind::Normal,
        reason: "TrafficReleased".to_owned(),
        message,
    };
    cluster::publish(rollout, ctx, &event, "Release").await;
    Ok(Action::await_change())
}

/// One [`driver::cycle`] of the rollout, then its metrics.
async fn reconcile_rollout(rollout: &CanaryRollout, ctx: &Context) -> Result<Action> {
    let name = rollout.name_any();
    let namespace = rollout
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(name.clone()))?;
    let now = ctx.clock.now();
    let Some(target) = wasm_plugin_target(ctx, &rollout.spec, &namespace, &name) else {
        return cluster::refuse_target(rollout, ctx, (&namespace, &name), now).await;
    };
    let cycle = driver::Rollout {
        namespace: &namespace,
        name: &name,
        generation: rollout.metadata.generation,
        spec: &rollout.spec,
        entry_spec: &rollout.spec,
        force_token: Box::pin(cluster::force_token(&ctx.client, &rollout.spec, &namespace)),
        now,
    };
    let mut store = cluster::ClusterStore::new(rollout, ctx, (&namespace, &name), now);
    let deployments = rollout
        .spec
        .workload
        .as_ref()
        .map(|workload| Deployments::new(ctx.client.clone(), &namespace, workload.clone()));
    // Samples only where the plan reads them: with `SharedCycle`, queries per interval stay
    // near one per series kind whatever the number of rollouts.
    let plan = driver::cycle_with_workload(
        cycle,
        deployments
            .as_ref()
            .map(|deployments| deployments as &dyn Workload),
        &mut store,
        ctx.source.as_ref(),
        Sampling::WhenPlanned,
        &target,
    )
    .await?;
    ctx.metrics.observe_rollout(&namespace, &name, &plan.status);
    Ok(Action::requeue(plan.requeue))
}

/// The WasmPlugin a spec targets (its namespace defaults to the rollout's); `None` for an ECDS
/// file target, which only `cohort run` next to Envoy can serve.
fn wasm_plugin_target(
    ctx: &Context,
    spec: &CanaryRolloutSpec,
    namespace: &str,
    name: &str,
) -> Option<WasmPluginTarget> {
    match &spec.target {
        Target::WasmPlugin(plugin) => Some(WasmPluginTarget::new(
            ctx.client.clone(),
            plugin.namespace.as_deref().unwrap_or(namespace),
            &plugin.name,
            field_manager(namespace, name),
        )),
        Target::EnvoyEcds(_) => None,
    }
}

/// `cohort controller`: flags, each with an environment variable for the Deployment.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ControllerArgs {
    /// Prometheus server that scrapes the proxies' cohort metrics.
    #[arg(long, env = "COHORT_PROMETHEUS_URL", default_value = DEFAULT_PROMETHEUS_URL)]
    pub prometheus: String,
    /// Elect one active replica on a Lease (`false` only when running a single replica).
    #[arg(long, env = "COHORT_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "COHORT_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// Namespace of the leader Lease [default: $POD_NAMESPACE, else the kubeconfig's].
    #[arg(long, env = "COHORT_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "COHORT_METRICS_ADDRESS", default_value = DEFAULT_METRICS_ADDRESS)]
    pub metrics_address: SocketAddr,
    /// Log lines as text or as JSON objects (`RUST_LOG` filters; default `info`).
    #[arg(long, env = "COHORT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A file holding the URL of a webhook told about every rollout's milestones (mount a
    /// Secret key there); re-read whenever there is something to send.
    #[arg(long, env = "COHORT_WEBHOOK_URL_FILE", value_name = "FILE")]
    pub webhook_url_file: Option<PathBuf>,
    /// The body that webhook gets: `json` (cohort's object) or `slack` (`{"text": ...}`).
    #[arg(long, env = "COHORT_WEBHOOK_FORMAT", value_name = "FORMAT", default_value = "json", value_parser = parse_webhook_format)]
    pub webhook_format: WebhookFormat,
}

fn parse_webhook_format(format: &str) -> std::result::Result<WebhookFormat, String> {
    match format {
        "json" => Ok(WebhookFormat::Json),
        "slack" => Ok(WebhookFormat::Slack),
        other => Err(format!(
            "{other:?} is not a webhook format: use json or slack"
        )),
    }
}

/// Log line formats.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The `cohort controller` command: logs to stderr, connects with the in-cluster (or
/// kubeconfig) credentials, and runs [`run_controller`] until SIGTERM.
pub fn main(args: &ControllerArgs) -> Result<()> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "cannot start the async runtime".to_owned(),
            source,
        })?;
    runtime.block_on(async {
        let client = Client::try_default().await?;
        let prometheus = PrometheusSource::new(&args.prometheus, PROMETHEUS_TIMEOUT)?;
        let source = Arc::new(SharedCycle::new(prometheus, SHARED_ANSWER_FRESHNESS));
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|name| !name.is_empty());
        let leader_election = args.leader_election.then(|| {
            let namespace = args
                .lease_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .filter(|namespace| !namespace.is_empty())
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let identity = instance
                .clone()
                .unwrap_or_else(|| format!("cohort-controller-{}", std::process::id()));
            LeaseSettings::new(&args.lease_name, &namespace, &identity)
        });
        tracing::info!(prometheus = %args.prometheus, "starting the controller");
        let settings = ControllerSettings {
            metrics_address: args.metrics_address,
            leader_election,
            instance,
            webhook_url_file: args.webhook_url_file.clone(),
            webhook_format: args.webhook_format,
        };
        run_controller(client, source, settings).await
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A subscriber installed before (by a test, say) is kept.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// How the in-cluster controller runs.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub metrics_address: SocketAddr,
    /// The Lease to lead by; `None` runs without leader election (one replica only).
    pub leader_election: Option<LeaseSettings>,
    /// This replica's name (pod name), for Events.
    pub instance: Option<String>,
    /// The file holding the controller-wide webhook's URL, if there is one.
    pub webhook_url_file: Option<PathBuf>,
    /// That webhook's body format.
    pub webhook_format: WebhookFormat,
}

/// Runs the controller until SIGTERM or ctrl-c: the HTTP endpoints, the leader elector (when
/// enabled), and the CanaryRollout watch while this replica leads. In-flight reconciles finish
/// before it returns, and the Lease is released.
pub async fn run_controller(
    client: Client,
    source: Arc<dyn MetricSource>,
    settings: ControllerSettings,
) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let everywhere = match &settings.webhook_url_file {
        Some(path) => {
            // Checked at start, so a wrong mount is found when it is made, not at the first
            // rollback.
            let read = std::fs::read(path).map_err(|source| Error::Io {
                context: format!("cannot read --webhook-url-file {}", path.display()),
                source,
            })?;
            notify::parse_url(&read).map_err(|problem| Error::Io {
                context: format!("--webhook-url-file {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, problem),
            })?;
            Some(Webhook {
                url: UrlSource::File(path.clone()),
                format: settings.webhook_format,
            })
        }
        None => None,
    };
    let notifier = Arc::new(Notifier::new(
        Delivery::default(),
        metrics.clone(),
        everywhere,
    )?);
    let health = Arc::new(Health::new(settings.leader_election.is_some()));
    let (stop_sender, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight reconciles");
        stop_sender.send_replace(true);
    });

    let listener = TcpListener::bind(settings.metrics_address)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot listen on {}", settings.metrics_address),
            source,
        })?;
    tracing::info!(address = %settings.metrics_address, "serving /metrics, /healthz and /readyz");
    let server = tokio::spawn(http_server::serve(
        listener,
        metrics.clone(),
        health.clone(),
        became(stop.clone(), true),
    ));

    let context = Context::new(
        client.clone(),
        source,
        Arc::new(SystemClock),
        metrics.clone(),
        settings.instance.clone(),
    )
    .with_notifier(notifier);
    match settings.leader_election {
        None => {
            metrics.set_leader(true);
            let context = Arc::new(context);
            watch_rollouts(
                &client,
                context,
                &health,
                &metrics,
                became(stop.clone(), true),
            )
            .await;
        }
        Some(lease) => {
            tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "leader election on");
            let (leading_sender, leading) = watch::channel(false);
            let context = Arc::new(context.with_leadership(leading.clone()));
            let report = {
                let (health, metrics) = (health.clone(), metrics.clone());
                move |holds: bool| {
                    health.set_leading(holds);
                    metrics.set_leader(holds);
                }
            };
            let elector = LeaderElector::new(client.clone(), lease);
            let elector = tokio::spawn(elector.run(leading_sender, stop.clone(), report));
            loop {
                tokio::select! {
                    () = became(leading.clone(), true) => {}
                    () = became(stop.clone(), true) => {}
                }
                if *stop.borrow() || !*leading.borrow() {
                    break;
                }
                let until = {
                    let (leading, stop) = (leading.clone(), stop.clone());
                    async move {
                        tokio::select! {
                            () = became(leading, false) => tracing::info!("lost the Lease: stopping the watch"),
                            () = became(stop, true) => {}
                        }
                    }
                };
                watch_rollouts(&client, context.clone(), &health, &metrics, until).await;
            }
            if let Err(error) = elector.await {
                tracing::warn!(%error, "the leader elector ended abnormally");
            }
        }
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "the HTTP server failed"),
        Err(error) => tracing::warn!(%error, "the HTTP server ended abnormally"),
    }
    Ok(())
}

/// What a watched change must alter to start a reconcile: the spec (its generation, which the
/// API server also raises when it marks a rollout for deletion), the finalizers (kube-runtime's
/// helper waits for its own patch to come back) or the deletion mark. Not status: every
/// reconcile that writes status would start the next one at once, which would analyse again
/// within the same interval and count one failed query as several consecutive errors. The
/// reconciles a rollout needs between spec changes come from the requeue its plan asks for.
pub fn reconcile_trigger(rollout: &CanaryRollout) -> Option<u64> {
    let meta = rollout.meta();
    let mut hasher = DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    if meta.generation.is_none() {
        // Without a generation, nothing tells a spec change from a status one: take them all.
        meta.resource_version.hash(&mut hasher);
    }
    meta.finalizers.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// Every CanaryRollout as the watch last saw it, and the changes among them that start a
/// reconcile ([`reconcile_trigger`]).
fn rollout_triggers(
    client: &Client,
) -> (
    reflector::Store<CanaryRollout>,
    impl futures::Stream<Item = Result<CanaryRollout, watcher::Error>> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let triggers = reflector(
        writer,
        watcher(
            Api::<CanaryRollout>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .applied_objects()
    .predicate_filter(reconcile_trigger, PredicateConfig::default());
    (store, triggers)
}

/// The rollouts among `rollouts` whose `spec.workload` names `deployment` (in its namespace).
pub fn rollouts_naming(
    rollouts: &[Arc<CanaryRollout>],
    deployment: &Deployment,
) -> Vec<ObjectRef<CanaryRollout>> {
    let name = deployment.name_any();
    let namespace = deployment.namespace();
    rollouts
        .iter()
        .filter(|rollout| rollout.namespace() == namespace)
        .filter(|rollout| {
            rollout
                .spec
                .workload
                .as_ref()
                .is_some_and(|workload| workload.stable == name || workload.canary == name)
        })
        .map(|rollout| ObjectRef::from_obj(rollout.as_ref()))
        .collect()
}

/// Watches CanaryRollouts and reconciles them until `until` completes (then lets in-flight
/// reconciles finish).
async fn watch_rollouts(
    client: &Client,
    context: Arc<Context>,
    health: &Arc<Health>,
    metrics: &Metrics,
    until: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (store, triggers) = rollout_triggers(client);
    let rollouts = store.clone();
    let controller = Controller::for_stream(triggers, store.clone())
        // A Deployment a rollout names changed (a new canary image, a rollout progressing):
        // that rollout is reconciled now rather than at its next requeue.
        .watches(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
            move |deployment| rollouts_naming(&rollouts.state(), &deployment),
        )
        .with_config(
            kube::runtime::controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES),
        )
        .graceful_shutdown_on(until);
    let ready = {
        let (store, health) = (store.clone(), health.clone());
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                tracing::info!("watching CanaryRollouts");
                health.set_watching(true);
            }
        })
    };
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            match result {
                Ok(_) => {}
                // Logged with its retry delay by error_policy.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                // The watch itself (RBAC, a missing CRD, the API server away): retried by
                // kube-runtime with backoff, but a person should see it.
                Err(error) => tracing::warn!(%error, "watching CanaryRollouts"),
            }
            // Deleted rollouts leave the store: drop their series.
            metrics.retain_rollouts(|namespace, name| {
                store.get(&ObjectRef::new(name).within(namespace)).is_some()
            });
            futures::future::ready(())
        })
        .await;
    ready.abort();
    health.set_watching(false);
}

/// Completes once `flag` reads `value` (or its sender is gone).
async fn became(mut flag: watch::Receiver<bool>, value: bool) {
    let _ = flag.wait_for(|current| *current == value).await;
}

/// SIGTERM (kubelet stopping the pod) or ctrl-c.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only ctrl-c stops the controller");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod notify_tests;
#[cfg(test)]
mod tests;
