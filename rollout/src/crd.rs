//! The `CanaryRollout` custom resource (`cohort.dev/v1alpha1`): what a person writes (spec) and
//! what the controller records (status).
//!
//! The schema refuses what it cheaply can (ranges, patterns, CEL rules on the steps); everything
//! else is checked by [`crate::validate::validate_spec`] and surfaces as the `InvalidSpec`
//! condition. Shares (error rates, tolerances, drops, quantiles) are fractions: `0.01` is one
//! percentage point. Weights are percentages with 0.01 resolution, as people say them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube_core::CustomResourceExt;
use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most steps a rollout may have; bounds the cost of the CEL rules on them.
pub const MAX_STEPS: usize = 20;
/// Most gates a rollout may have.
pub const MAX_GATES: usize = 16;
/// Transitions kept in `status.history`; older ones are dropped.
pub const HISTORY_LIMIT: usize = 20;

/// A per-user canary rollout: the canary's weight steps up while every gate stays green and drops
/// to 0 when one goes red.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// The derives name `::kube::core` unless told otherwise; this crate has kube-core, not kube.
#[kube(
    crates(kube_core = "::kube_core"),
    group = "cohort.dev",
    version = "v1alpha1",
    kind = "CanaryRollout",
    namespaced,
    status = "CanaryRolloutStatus",
    shortname = "canary",
    category = "cohort",
    doc = "A per-user canary rollout driven by cohort's controller.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"integer","jsonPath":".status.stepIndex"}"#,
    printcolumn = r#"{"name":"Weight-bp","type":"integer","jsonPath":".status.weightBp"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight)) && self.steps.map(s, s.weight).isSorted()").message("steps must have strictly increasing weights"),
    validation = Rule::new("self.steps[size(self.steps) - 1].weight == 100.0").message("the last step must have weight 100: reaching it is the promotion"),
    // The controller serves and releases only the target the spec names now: an entry left in
    // an old target would keep sending its users to the canary, unmanaged.
    validation = Rule::new("self.target == oldSelf.target").message("spec.target cannot change: delete the CanaryRollout (its entry leaves the old target) and create it again with the new target")
)]
pub struct CanaryRolloutSpec {
    /// Where the filter config goes: an Istio WasmPlugin or a plain Envoy ECDS file.
    pub target: Target,
    /// Bucketing salt; defaults to the rollout name. Changing it reshuffles every user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Destination hosts (`:authority` without port) this rollout splits; `*` matches any host.
    #[schemars(length(min = 1, max = 64))]
    pub hosts: Vec<String>,
    /// Routing header value (and metric label) of the stable version.
    #[serde(default = "default_stable_version")]
    pub stable_version: String,
    /// Routing header value (and metric label) of the canary version.
    #[serde(default = "default_canary_version")]
    pub canary_version: String,
    /// Ordered sources of the user key; the first non-empty one wins. Empty: the filter's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub identity: Vec<IdentitySpec>,
    /// What happens to requests without a user key. A filter-wide setting: rollouts sharing one
    /// target must agree on it.
    #[serde(default)]
    pub anonymous: AnonymousSpec,
    /// The force token testers send as `x-cohort-force: VERSION:TOKEN` to choose a version,
    /// from a key of a Secret in the rollout's namespace (read by the in-cluster controller;
    /// at least 16 visible ASCII characters, e.g. `openssl rand -hex 16`). Without a token
    /// forcing is off. Filter-wide: rollouts sharing one WasmPlugin must use the same token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_token_secret_ref: Option<SecretKeyRef>,
    /// The force token from a file, for `cohort run` next to Envoy (surrounding whitespace is
    /// ignored; a relative path starts at the rollout file's directory). The in-cluster
    /// controller reads `forceTokenSecretRef` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_token_file: Option<String>,
    /// Weights the canary goes through, strictly increasing, ending at 100.
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 20))]
    pub steps: Vec<Step>,
    /// How and how often canary and stable are compared.
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// What happens when the metrics cannot be read or stay too thin.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Who hears about the rollout's milestones (start, steps, promotion, rollback, abort,
    /// trouble), besides its Events: a webhook. Best effort: a webhook that fails never holds
    /// the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<NotificationsSpec>,
    /// Hold the current weight; analysis continues and a failing gate still rolls back.
    #[serde(default)]
    pub paused: bool,
    /// Send everyone to stable (weight 0) and stop. Leave with `abort: false` plus a new `restartAt`.
    #[serde(default)]
    pub abort: bool,
    /// Skip the remaining steps: the canary gets 100% at once.
    #[serde(default)]
    pub promote: bool,
    /// The retry gesture: a new value (the CLI writes the current time) restarts a RolledBack,
    /// Aborted or Promoted rollout from its first step. Ignored while the rollout is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<String>,
    /// The stable and canary Deployments the controller runs, in the rollout's namespace: a new
    /// canary pod template starts a run by itself, the canary is scaled with its weight, and the
    /// promotion copies the tested template into stable. Without it the controller moves the
    /// weight only (and `cohort run` always does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
}

/// The two Deployments of a rollout. Their pods carry the `version` label the routing uses
/// (`stableVersion`, `canaryVersion`); a revision is the pod template without that label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("self.stable != self.canary").message("workload.stable and workload.canary must name two different Deployments")
)]
pub struct WorkloadSpec {
    /// The Deployment serving `stableVersion`; the promotion copies the canary's template into it.
    /// The controller never scales it.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub stable: String,
    /// The Deployment serving `canaryVersion`: bumping its image starts a run. Scaled to its share
    /// of stable's replicas before each step (unless an HorizontalPodAutoscaler targets it), and
    /// to 0 once a run ends.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub canary: String,
    /// How long the canary keeps its pods after everyone is back on stable (a rollback, an abort,
    /// a promotion), so requests in flight and proxies still on the old config finish.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub scale_down_delay: String,
}

/// What the controller knows of the Deployments' revisions and where a promotion stands; with
/// the Deployments as observed, all a restarted controller needs to resume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The canary revision of the current (or last) run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The last revision copied into stable and served by it (the run Succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_revision: Option<String>,
    /// The last revision rolled back or aborted: not started again unless a person retries
    /// (`spec.restartAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    /// When the canary's template was copied into stable (the promotion under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_started_at: Option<Time>,
    /// When the canary is scaled to 0 (a run ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_at: Option<Time>,
}

/// One key of a Secret in the CanaryRollout's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in its `data`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where the controller writes the filter config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// Istio: the controller server-side-applies `spec.pluginConfig.rollouts.<name>` of this
    /// WasmPlugin (which must run on the client side or at the ingress gateway).
    WasmPlugin(WasmPluginTarget),
    /// Plain Envoy: the controller rewrites this ECDS file (temp file + rename).
    EnvoyEcds(EnvoyEcdsTarget),
}

/// An Istio WasmPlugin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmPluginTarget {
    /// WasmPlugin name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// WasmPlugin namespace; defaults to the CanaryRollout's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A plain Envoy ECDS file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyEcdsTarget {
    /// Absolute path of the file Envoy's `path_config_source` watches.
    #[schemars(length(min = 1))]
    pub path: String,
    /// Name of the `TypedExtensionConfig` (the HTTP filter's `config_discovery` name).
    #[serde(default = "default_filter_name")]
    pub filter_name: String,
}

/// One place to read the user key from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySpec {
    /// A request header or a cookie.
    pub kind: IdentityKind,
    /// Header or cookie name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
}

/// Kinds of identity sources.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IdentityKind {
    /// A request header.
    Header,
    /// A cookie in the `cookie` request header.
    Cookie,
}

/// Treatment of requests without a user key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnonymousSpec {
    /// `cookie`: give the user a random id in a cookie and bucket it; `stable`: always stable.
    #[serde(default)]
    pub mode: AnonymousMode,
    /// Name of that cookie.
    #[serde(default = "default_anonymous_cookie")]
    pub cookie_name: String,
    /// `Max-Age` of that cookie in seconds.
    #[serde(default = "default_anonymous_max_age")]
    #[schemars(range(min = 1))]
    pub max_age_seconds: u64,
}

impl Default for AnonymousSpec {
    fn default() -> Self {
        AnonymousSpec {
            mode: AnonymousMode::default(),
            cookie_name: default_anonymous_cookie(),
            max_age_seconds: default_anonymous_max_age(),
        }
    }
}

/// Anonymous modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AnonymousMode {
    /// Issue a random id in a cookie and bucket it, so the user keeps one version.
    #[default]
    Cookie,
    /// Always send to stable.
    Stable,
}

/// One step of the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Canary share in percent, 0.01 resolution (`0.5` = 50 basis points).
    #[schemars(range(min = 0.01, max = 100.0))]
    pub weight: f64,
    /// Least time at this weight before the next step, with every gate passing; never less than
    /// `analysis.interval`, so the deciding analysis saw only this weight. Ignored on the final
    /// 100% step: with no stable traffic left there is nothing to compare.
    #[serde(default = "default_bake")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub bake: String,
}

impl Step {
    /// A step at `weight` percent baking for `bake`.
    pub fn new(weight: f64, bake: &str) -> Self {
        Step {
            weight,
            bake: bake.to_owned(),
        }
    }

    /// The weight in basis points, `round(weight * 100)`; out-of-range weights saturate.
    pub fn weight_bp(&self) -> u32 {
        percent_to_bp(self.weight)
    }
}

/// `round(percent * 100)` clamped to `0..=10_000`.
pub fn percent_to_bp(percent: f64) -> u32 {
    if percent.is_nan() {
        return 0;
    }
    // Clamped first, so the cast cannot truncate.
    (percent * 100.0).round().clamp(0.0, 10_000.0) as u32
}

/// How canary and stable are compared.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// How often the gates are evaluated (and the window they look at; with a sequential gate,
    /// every gate of the rollout looks at everything since the step began).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub interval: String,
    /// Requests each version needs in the window before a gate may pass or fail.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples: u64,
    /// The rollout's error budget: the chance that a canary no worse than stable is rolled back
    /// at any point, over all steps and all gates however often checked, is at most this
    /// (default 0.01). It is split evenly over the sequential gates and the analysed steps (every
    /// step before the last); a gate's own `alpha` is taken from it first. It covers the
    /// sequential gates, whose tests read how unevenly errors arrive (retries, bad minutes) from
    /// the data; threshold and custom gates, and the failure policy's rollbacks, are outside it.
    #[serde(default = "default_alpha")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub alpha: f64,
    /// The gates; all must pass for the rollout to advance. Omitted: sequential error rate and
    /// sequential latency (p99), which together keep `alpha`. Empty: the rollout advances on
    /// bake time alone.
    #[serde(default = "default_gates")]
    #[schemars(length(max = 16))]
    pub gates: Vec<GateSpec>,
    /// Where error rate and latency are read: what each version served, never what the filter
    /// meant to send it. Omitted: Istio's standard metrics of the service named by the first
    /// host for a WasmPlugin target; the clusters named after the version names for an Envoy
    /// ECDS target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<ServedMetrics>,
}

/// The metrics of what each version served.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServedMetrics {
    /// Istio's standard `istio_requests_total` and `istio_request_duration_milliseconds` as the
    /// destination's sidecars report them (`reporter="destination"`), for this service in the
    /// CanaryRollout's namespace, with `destination_version` set to the version names (the
    /// pods' `version` label). Every sidecar exports these with no extra configuration.
    Istio(IstioService),
    /// A plain Envoy's upstream stats of the stable and the canary cluster
    /// (`cluster.NAME.upstream_rq_*`, `upstream_rq_time`; in Prometheus `envoy_cluster_*`).
    EnvoyClusters(EnvoyClusters),
}

/// The Kubernetes service whose versions a rollout compares.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioService {
    /// The service's name (Istio's `destination_service_name` label), in the CanaryRollout's
    /// namespace.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
}

/// The Envoy clusters that serve each version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyClusters {
    /// The stable version's cluster.
    #[schemars(length(min = 1, max = 253))]
    pub stable: String,
    /// The canary version's cluster.
    #[schemars(length(min = 1, max = 253))]
    pub canary: String,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        AnalysisSpec {
            interval: default_interval(),
            min_samples: default_min_samples(),
            alpha: default_alpha(),
            gates: default_gates(),
            served: None,
        }
    }
}

/// One gate: an optional name and sample minimum, and exactly one check.
///
/// ```yaml
/// - errorRate: {maxIncrease: 0.01}
/// - name: p99
///   latency: {quantile: 0.99, tolerance: 0.2, slackMs: 10}
/// ```
///
/// Deserialization refuses a gate with no kind or with several (serde alone would take the first
/// kind and drop the rest; the schema's `oneOf` refuses it too, but `cohort run` has no API server).
#[derive(Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateSpec {
    /// Name in status, events and metrics; defaults per kind (`error-rate`, `latency-p99`,
    /// `event-checkout`). Required for custom gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Overrides `analysis.minSamples` for this gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<u64>,
    /// What the gate checks.
    #[serde(flatten)]
    pub check: GateCheck,
}

/// The keys that name a gate kind, as [`GateCheck`] serializes them.
pub const GATE_KINDS: [&str; 5] = [
    "errorRate",
    "latency",
    "businessEvent",
    "custom",
    "sequential",
];

/// [`GateSpec`]'s derived reading, used once the kind keys are checked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GateSpecFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    min_samples: Option<u64>,
    #[serde(flatten)]
    check: GateCheck,
}

impl<'de> Deserialize<'de> for GateSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let kinds: Vec<&str> = GATE_KINDS
            .into_iter()
            .filter(|kind| fields.contains_key(*kind))
            .collect();
        if kinds.len() != 1 {
            let found = if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(" and ")
            };
            return Err(D::Error::custom(format!(
                "a gate has exactly one kind ({}); found {found}",
                GATE_KINDS.join(", ")
            )));
        }
        let fields: GateSpecFields =
            serde_json::from_value(serde_json::Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(GateSpec {
            name: fields.name,
            min_samples: fields.min_samples,
            check: fields.check,
        })
    }
}

impl GateSpec {
    /// A gate with the kind's default name and the analysis-wide sample minimum.
    pub fn new(check: GateCheck) -> Self {
        GateSpec {
            name: None,
            min_samples: None,
            check,
        }
    }

    /// The gate's name: the given one, else one derived from the check.
    pub fn name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => self.check.default_name(),
        }
    }
}

/// The kinds of gates. A new kind (e.g. a sequential test) is a new variant plus an
/// implementation of [`crate::evaluate::Judge`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GateCheck {
    /// Canary's 5xx share must not exceed stable's by more than a margin.
    ErrorRate(ErrorRateGate),
    /// Canary's latency quantile must stay within a tolerance of stable's.
    Latency(LatencyGate),
    /// Canary's rate of a business event per request must not drop below stable's by a margin.
    BusinessEvent(BusinessEventGate),
    /// A PromQL query returning one number for the canary must lie in `[min, max]`.
    Custom(CustomGate),
    /// An anytime-valid sequential test of canary against stable on everything since the step
    /// began: fails as soon as the canary is confidently worse, passes as soon as it is
    /// confidently within the margin.
    Sequential(SequentialGate),
}

impl GateCheck {
    /// The name a gate of this kind gets when none is given.
    pub fn default_name(&self) -> String {
        match self {
            GateCheck::ErrorRate(_) => "error-rate".to_owned(),
            GateCheck::Latency(gate) => format!("latency-{}", quantile_label(gate.quantile)),
            GateCheck::BusinessEvent(gate) => format!("event-{}", gate.event),
            GateCheck::Custom(_) => "custom".to_owned(),
            // Named after what they measure, like the threshold kinds: how a gate decides does
            // not change what dashboards and events call it.
            GateCheck::Sequential(gate) => match gate.metric {
                SequentialMetric::ErrorRate => "error-rate".to_owned(),
                SequentialMetric::Latency => format!("latency-{}", quantile_label(gate.quantile())),
                SequentialMetric::BusinessEvent => {
                    format!("event-{}", gate.event.as_deref().unwrap_or_default())
                }
            },
        }
    }

    /// Whether the gate reads the request-duration histogram (sources skip it otherwise).
    pub fn reads_latency(&self) -> bool {
        match self {
            GateCheck::Latency(_) => true,
            GateCheck::Sequential(gate) => gate.metric == SequentialMetric::Latency,
            _ => false,
        }
    }

    /// The business event the gate reads, if any (the filter counts only these).
    pub fn business_event(&self) -> Option<&str> {
        match self {
            GateCheck::BusinessEvent(gate) => Some(&gate.event),
            GateCheck::Sequential(gate) if gate.metric == SequentialMetric::BusinessEvent => {
                gate.event.as_deref()
            }
            _ => None,
        }
    }
}

/// `p99`, `p99.9`, `p50` for quantiles 0.99, 0.999, 0.5.
fn quantile_label(quantile: f64) -> String {
    let percent = (quantile * 100.0 * 1000.0).round() / 1000.0;
    format!("p{percent}")
}

/// Canary error rate (5xx responses over requests) against stable's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRateGate {
    /// Fail when canary's rate exceeds stable's by more than this (a fraction: 0.01 = one
    /// percentage point).
    #[serde(default = "default_max_error_increase")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_increase: f64,
    /// Also fail when canary's rate exceeds this, whatever stable's (a fraction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_rate: Option<f64>,
}

/// Canary latency quantile against stable's, from the request-duration histogram.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyGate {
    /// The quantile, strictly between 0 and 1 (0.99 = p99).
    #[serde(default = "default_quantile")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quantile: f64,
    /// Fail when canary > stable × (1 + tolerance) + slackMs.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0.0))]
    pub tolerance: f64,
    /// Absolute allowance in milliseconds, so fast services are not failed on noise.
    #[serde(default = "default_slack_ms")]
    #[schemars(range(min = 0.0))]
    pub slack_ms: f64,
}

/// Canary's rate of a business event per request against stable's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusinessEventGate {
    /// Event name as the upstream reports it (the filter counts only listed names).
    #[schemars(length(min = 1, max = 64))]
    pub event: String,
    /// Fail when canary's rate < stable's × (1 − maxDrop) (a fraction: 0.1 = 10% fewer).
    #[serde(default = "default_max_drop")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_drop: f64,
}

/// A PromQL query returning one number, judged against fixed bounds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomGate {
    /// PromQL template; `{{namespace}}`, `{{rollout}}` and `{{version}}` are replaced inside
    /// quoted strings (label values, escaped there; elsewhere they are refused), `{{interval}}`
    /// anywhere. Evaluated with `version` = the canary version (and the stable one, for
    /// reference).
    #[schemars(length(min = 1))]
    pub query: String,
    /// Fail below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Fail above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// An anytime-valid sequential comparison of canary with stable (see `sequential.rs` for the
/// method). It judges everything since the step began, so the metric source reads that window
/// (`crate::sequential::analysis_window`), and it may be checked at every interval without
/// raising its false-rollback rate above `alpha`.
///
/// ```yaml
/// - sequential: {}                                    # 5xx share, the defaults below
/// - sequential: {metric: latency, quantile: 0.99}     # share of requests slower than stable's p99 bucket
/// - sequential: {metric: businessEvent, event: checkout, maxDrop: 0.05}
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequentialGate {
    /// What is compared: `errorRate` (5xx per request), `latency` (share of requests slower than
    /// the histogram bucket bound holding stable's `quantile`) or `businessEvent` (`event` per
    /// request).
    #[serde(default)]
    pub metric: SequentialMetric,
    /// The business event (metric `businessEvent` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub event: Option<String>,
    /// Stable's latency quantile whose bucket bound splits fast from slow requests (metric
    /// `latency` only; default 0.99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quantile: Option<f64>,
    /// This gate's false-rollback rate at each step: the chance that it ever fails a canary no
    /// worse than stable during one step, however many times it is checked (also the chance of
    /// passing a canary worse than the margin before `maxDuration`). Omitted: an even share of
    /// `spec.analysis.alpha`, the rollout's budget. Given, it is spent at every analysed step
    /// and counts against that budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub alpha: Option<f64>,
    /// Worse means canary's rate at least this many times stable's and at least `maxIncrease`
    /// above it (errorRate, latency; default 2). This margin is what a pass must rule out; the
    /// gate fails sooner, on confident evidence that the canary is worse than stable at all
    /// (the README's "Gates" section has a worked example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub max_ratio: Option<f64>,
    /// See `maxRatio`: a fraction, 0.01 = one percentage point (errorRate, latency; default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_increase: Option<f64>,
    /// Worse means canary's event rate below stable's × (1 − maxDrop) (businessEvent; default
    /// 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_drop: Option<f64>,
    /// Without a decision after this long at a step (and with both versions at the sample
    /// minimum), the test ends `Underpowered`: no regression was found, but the data could not
    /// rule one out; `failurePolicy.onUnderpowered` says what follows. Keep it within
    /// `failurePolicy.noDataDeadline`, which otherwise acts first.
    #[serde(default = "default_max_duration")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_duration: String,
}

impl SequentialGate {
    /// A sequential gate on `metric` with every default.
    pub fn new(metric: SequentialMetric) -> Self {
        SequentialGate {
            metric,
            event: None,
            quantile: None,
            alpha: None,
            max_ratio: None,
            max_increase: None,
            max_drop: None,
            max_duration: default_max_duration(),
        }
    }

    /// The level this gate tests at in each step: `alpha` as compiled (the rollout's budget
    /// split, [`crate::CompiledRollout::gates`]), or 0.01 for a gate judged outside a compiled
    /// rollout without one.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or_else(default_alpha)
    }

    /// `quantile`, or 0.99.
    pub fn quantile(&self) -> f64 {
        self.quantile.unwrap_or_else(default_quantile)
    }

    /// `maxRatio`, or 2.
    pub fn max_ratio(&self) -> f64 {
        self.max_ratio.unwrap_or(2.0)
    }

    /// `maxIncrease`, or 0.01.
    pub fn max_increase(&self) -> f64 {
        self.max_increase.unwrap_or_else(default_max_error_increase)
    }

    /// `maxDrop`, or 0.1.
    pub fn max_drop(&self) -> f64 {
        self.max_drop.unwrap_or_else(default_max_drop)
    }
}

/// What a sequential gate compares.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SequentialMetric {
    /// Server errors (5xx) per request; more is worse.
    #[default]
    ErrorRate,
    /// Requests slower than stable's quantile bucket bound, per request; more is worse.
    Latency,
    /// A business event per request; fewer is worse.
    BusinessEvent,
}

/// What happens when analysis cannot conclude.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Analysis errors (failed queries) in a row tolerated before `onErrors` applies.
    #[serde(default = "default_max_consecutive_errors")]
    pub max_consecutive_errors: u32,
    /// What to do when failed queries exceed `maxConsecutiveErrors`.
    #[serde(default)]
    pub on_errors: OnTrouble,
    /// How long the gates may stay inconclusive (too few samples) before `onNoData` applies.
    #[serde(default = "default_no_data_deadline")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub no_data_deadline: String,
    /// What to do when the no-data deadline passes.
    #[serde(default)]
    pub on_no_data: OnTrouble,
    /// How long the canary may clearly serve fewer requests than the filter decided for it (a
    /// route or VirtualService that misses the routing header) before `onRoutingMismatch`
    /// applies. The rollout never advances meanwhile.
    #[serde(default = "default_routing_mismatch_deadline")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub routing_mismatch_deadline: String,
    /// What to do when the routing-mismatch deadline passes. Default: roll back, since sending
    /// everyone to stable is always safe, and a canary that is not served is not being tested.
    #[serde(default = "default_on_routing_mismatch")]
    pub on_routing_mismatch: OnTrouble,
    /// What to do when a sequential gate reaches its `maxDuration` without finding a regression
    /// but could still have missed one (the `Underpowered` verdict): `promote` takes it as a pass
    /// (the step advances once baked, with a Warning Event saying what could have been missed),
    /// `hold` keeps the weight and reports `Degraded`, `rollback` sends everyone to stable.
    #[serde(default)]
    pub on_underpowered: OnUnderpowered,
}

/// Reactions to a sequential test that ran out of time (`Underpowered`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnUnderpowered {
    /// Advance as on a pass, with a Warning Event.
    #[default]
    Promote,
    /// Keep the current weight (never advance) and report `Degraded`.
    Hold,
    /// Roll back to weight 0.
    Rollback,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_consecutive_errors: default_max_consecutive_errors(),
            on_errors: OnTrouble::default(),
            no_data_deadline: default_no_data_deadline(),
            on_no_data: OnTrouble::default(),
            routing_mismatch_deadline: default_routing_mismatch_deadline(),
            on_routing_mismatch: default_on_routing_mismatch(),
            on_underpowered: OnUnderpowered::default(),
        }
    }
}

/// Reactions to analysis trouble.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnTrouble {
    /// Keep the current weight (never advance) and report `Degraded`.
    #[default]
    Hold,
    /// Roll back to weight 0.
    Rollback,
}

/// Where a rollout's notifications go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsSpec {
    /// An HTTP endpoint that gets a POST (a JSON body) for each notification.
    pub webhook: WebhookSpec,
}

/// A webhook. Its URL is a credential (Slack's and most chat webhooks carry their token in the
/// path), so it is read from a Secret or a file, never written in the spec.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    crates(kube_core = "::kube_core"),
    validation = Rule::new("has(self.urlSecretRef) || has(self.urlFile)").message("a webhook needs its URL: name a Secret key in urlSecretRef (the in-cluster controller) or a file in urlFile (cohort run)")
)]
pub struct WebhookSpec {
    /// The URL (`http://` or `https://`), from a key of a Secret in the rollout's namespace;
    /// read by the in-cluster controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// The URL from a file, for `cohort run` (surrounding whitespace is ignored; a relative path
    /// starts at the rollout file's directory). The in-cluster controller reads `urlSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub url_file: Option<String>,
    /// The body: cohort's JSON object, or Slack's incoming-webhook message (`{"text": ...}`).
    #[serde(default)]
    pub format: WebhookFormat,
}

/// What a webhook's body looks like.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WebhookFormat {
    /// One JSON object: the rollout, its phase, step and weight, and what happened.
    #[default]
    Json,
    /// `{"text": "..."}`, which Slack's incoming webhooks (and Mattermost's, and others) post.
    Slack,
}

/// What the controller observed and decided; the source of truth across restarts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRolloutStatus {
    /// Where the rollout is.
    #[serde(default)]
    pub phase: Phase,
    /// Index into `spec.steps` of the step being baked (absent before the first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_index: Option<u32>,
    /// Canary weight in basis points, as pushed to the filter.
    #[serde(default)]
    pub weight_bp: u32,
    /// When the current step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// When the current step's bake began again, after a routing mismatch healed (the canary's
    /// users reached it only from then). The analysis window still runs from `stepStartedAt`,
    /// so the step's sequential test goes on as one test within its share of the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_started_at: Option<Time>,
    /// When the gates were last evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis_at: Option<Time>,
    /// Each gate's last result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
    /// Analyses in a row that ended in Error.
    #[serde(default)]
    pub consecutive_errors: u32,
    /// Since when analysis has been inconclusive without a break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_since: Option<Time>,
    /// Since when the canary has clearly served fewer requests than were decided for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_mismatch_since: Option<Time>,
    /// One line on the current state and what a person can do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Ready` (promoted), `Progressing`, `Paused`, `Degraded`, `RoutingMismatch`, `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last transitions, oldest first (at most [`HISTORY_LIMIT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// `metadata.generation` this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The `spec.restartAt` value already acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_restart_at: Option<String>,
    /// With `spec.workload`: revisions and the promotion's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadStatus>,
}

/// Phases of a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Not started: weight 0.
    #[default]
    Pending,
    /// At a step, baking and analysing.
    Progressing,
    /// Held by `spec.paused`: weight kept, no advance.
    Paused,
    /// The canary serves everyone.
    Promoted,
    /// A gate failed (or the failure policy said so): weight 0 until a person retries.
    RolledBack,
    /// Stopped by `spec.abort`: weight 0 until a person retries.
    Aborted,
    /// With `spec.workload`: the tested template runs in stable, which serves everyone again
    /// (weight 0); the canary is scaled down.
    Succeeded,
}

impl Phase {
    /// Phases left only through the retry gesture (`spec.restartAt`) or, with `spec.workload`, a
    /// new canary revision.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Promoted | Phase::RolledBack | Phase::Aborted | Phase::Succeeded
        )
    }

    /// The phase's name as it appears in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoted => "Promoted",
            Phase::RolledBack => "RolledBack",
            Phase::Aborted => "Aborted",
            Phase::Succeeded => "Succeeded",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gate's four-valued verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Verdict {
    /// Canary is at least as good as the gate asks.
    Pass,
    /// Canary is worse than the gate allows: roll back.
    Fail,
    /// Not enough data yet: wait; never pass or fail on thin data.
    Inconclusive,
    /// A query failed: retry, count it, hold; never promote.
    Error,
    /// A sequential gate reached `maxDuration` without finding a regression, on too little data
    /// to rule one out: `failurePolicy.onUnderpowered` says what follows.
    Underpowered,
}

impl Verdict {
    /// The verdict's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
            Verdict::Error => "Error",
            Verdict::Underpowered => "Underpowered",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One gate's judgement over one window, with the numbers behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// Gate name.
    pub gate: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Canary's value (rate, milliseconds, or query result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<f64>,
    /// Stable's value, same unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<f64>,
    /// The bound canary's value was held to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Canary's sample count in the window.
    #[serde(default)]
    pub canary_samples: f64,
    /// Stable's sample count in the window.
    #[serde(default)]
    pub stable_samples: f64,
    /// Why, in words.
    pub reason: String,
    /// A sequential gate's test: its evidence against the line it fails at, and what it carries
    /// to its next look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<SequentialLook>,
}

/// A sequential gate's test at one look.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequentialLook {
    /// The e-value that the canary is worse than stable (the gate fails at `evidenceNeeded`).
    pub evidence: f64,
    /// `1/α` of this gate at this step: where the evidence fails the canary.
    pub evidence_needed: f64,
    /// How much more the event counts varied between looks than independent requests would
    /// (1: as independent; the counts are divided by it before they are tested).
    pub dispersion: f64,
    /// How much more the canary's counts varied between its units (random sets of users) than
    /// independent requests would; absent without units. The canary's counts are divided by
    /// the larger of this and `dispersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_unit_dispersion: Option<f64>,
    /// The same for stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_unit_dispersion: Option<f64>,
    /// How much more the canary's counts vary than independent requests would, from the spread
    /// between the Pods of both versions; absent without Pods. The canary's counts are divided
    /// by the largest of this, its unit dispersion and `dispersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_pod_dispersion: Option<f64>,
    /// The same for stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_pod_dispersion: Option<f64>,
    /// The counts of this step's window at this look and the variation seen so far, read at the
    /// next look.
    pub tally: Tally,
}

/// What a sequential gate carries from one look to the next: the window's counts, to take the
/// next look's increment from, and the spread of the increments so far in this run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    /// The window's length at this look, in seconds (a shorter one next time is a new step).
    pub window_seconds: f64,
    /// The canary's events in the window.
    pub canary_events: f64,
    /// The canary's exposure (requests, observations) in the window.
    pub canary_exposure: f64,
    /// Stable's events in the window.
    pub stable_events: f64,
    /// Stable's exposure in the window.
    pub stable_exposure: f64,
    /// Increments with events seen in this step.
    pub step_increments: u32,
    /// Σ over this step's increments of (canary's events)² / (both versions' events).
    pub step_square_ratio: f64,
    /// Increments with stable exposure seen in this step.
    pub step_stable_increments: u32,
    /// Σ over this step's increments of (stable's events)² / (stable's exposure).
    pub step_stable_square_ratio: f64,
    /// Pearson's statistic of the canary's share of events in the steps before this one, summed.
    pub earlier_pearson: f64,
    /// Its degrees of freedom.
    pub earlier_degrees: f64,
    /// Pearson's statistic of stable's events per exposure in the steps before this one, summed.
    pub earlier_stable_pearson: f64,
    /// Its degrees of freedom.
    pub earlier_stable_degrees: f64,
}

/// One transition of the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When.
    pub time: Time,
    /// Phase before.
    pub from_phase: Phase,
    /// Step before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<u32>,
    /// Phase after.
    pub to_phase: Phase,
    /// Step after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_step: Option<u32>,
    /// Weight after, in basis points.
    pub weight_bp: u32,
    /// CamelCase reason, as in the Event.
    pub reason: String,
    /// Why, in words.
    pub message: String,
}

/// The CRD as YAML, for `cohort crd` and `manifests/`.
pub fn crd_yaml() -> Result<String, crate::Error> {
    serde_saphyr::to_string(&CanaryRollout::crd())
        .map_err(|error| crate::Error::CrdYaml(error.to_string()))
}

fn default_stable_version() -> String {
    cohort_core::config::DEFAULT_STABLE_VERSION.to_owned()
}
fn default_canary_version() -> String {
    cohort_core::config::DEFAULT_CANARY_VERSION.to_owned()
}
fn default_filter_name() -> String {
    "cohort".to_owned()
}
fn default_anonymous_cookie() -> String {
    cohort_core::config::DEFAULT_ANONYMOUS_COOKIE.to_owned()
}
fn default_anonymous_max_age() -> u64 {
    cohort_core::config::DEFAULT_ANONYMOUS_MAX_AGE_SECONDS
}
fn default_scale_down_delay() -> String {
    "30s".to_owned()
}
fn default_bake() -> String {
    "5m".to_owned()
}
/// 1, 5, 25, 50, 75, 100 percent, five minutes each.
pub fn default_steps() -> Vec<Step> {
    [1.0, 5.0, 25.0, 50.0, 75.0, 100.0]
        .into_iter()
        .map(|weight| Step::new(weight, "5m"))
        .collect()
}
fn default_interval() -> String {
    "30s".to_owned()
}
fn default_min_samples() -> u64 {
    100
}
/// Error rate by a sequential test (α 0.01; worse = ×2 and +1 point) and p99 latency (+20% +
/// 10 ms): what a rollout gets without `gates`.
pub fn default_gates() -> Vec<GateSpec> {
    vec![
        GateSpec::new(GateCheck::Sequential(SequentialGate::new(
            SequentialMetric::ErrorRate,
        ))),
        GateSpec::new(GateCheck::Sequential(SequentialGate::new(
            SequentialMetric::Latency,
        ))),
    ]
}
fn default_max_error_increase() -> f64 {
    0.01
}
fn default_quantile() -> f64 {
    0.99
}
fn default_tolerance() -> f64 {
    0.2
}
fn default_slack_ms() -> f64 {
    10.0
}
fn default_max_drop() -> f64 {
    0.1
}
fn default_alpha() -> f64 {
    0.01
}
fn default_max_duration() -> String {
    "10m".to_owned()
}
fn default_max_consecutive_errors() -> u32 {
    3
}
fn default_no_data_deadline() -> String {
    "10m".to_owned()
}
fn default_routing_mismatch_deadline() -> String {
    "5m".to_owned()
}
fn default_on_routing_mismatch() -> OnTrouble {
    OnTrouble::Rollback
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate_spec;

    #[test]
    fn webhooks_read_as_written_and_carry_their_schema_rule() {
        let spec: CanaryRolloutSpec = serde_json::from_value(serde_json::json!({
            "target": {"wasmPlugin": {"name": "cohort"}},
            "hosts": ["checkout"],
            "notifications": {"webhook": {"urlSecretRef": {"name": "hooks", "key": "url"}}}
        }))
        .unwrap();
        let webhook = &spec.notifications.as_ref().unwrap().webhook;
        assert_eq!(webhook.format, WebhookFormat::Json, "the default");
        assert_eq!(webhook.url_file, None);
        let slack: WebhookSpec =
            serde_json::from_value(serde_json::json!({"urlFile": "url", "format": "slack"}))
                .unwrap();
        assert_eq!(slack.format, WebhookFormat::Slack);
        assert!(
            serde_json::from_value::<WebhookSpec>(serde_json::json!({"format": "teams"})).is_err()
        );

        let crd = serde_json::to_value(CanaryRollout::crd()).unwrap();
        let webhook = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["notifications"]["properties"]["webhook"];
        assert_eq!(
            webhook["x-kubernetes-validations"][0]["rule"],
            "has(self.urlSecretRef) || has(self.urlFile)"
        );
        assert_eq!(
            webhook["properties"]["format"]["enum"],
            serde_json::json!(["json", "slack"])
        );
        assert_eq!(webhook["properties"]["urlFile"]["minLength"], 1);
        assert_eq!(
            webhook["properties"]["urlSecretRef"]["required"],
            serde_json::json!(["key", "name"])
        );
    }

    #[test]
    fn crd_yaml_round_trips_and_carries_the_schema_rules() {
        let yaml = crd_yaml().unwrap();
        let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(parsed, serde_json::to_value(CanaryRollout::crd()).unwrap());
        assert_eq!(parsed["metadata"]["name"], "canaryrollouts.cohort.dev");
        assert_eq!(parsed["spec"]["scope"], "Namespaced");
        assert_eq!(parsed["spec"]["names"]["shortNames"][0], "canary");
        let version = &parsed["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules: Vec<&str> = spec["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|rule| rule["rule"].as_str().unwrap())
            .collect();
        assert_eq!(rules.len(), 3);
        assert!(rules[0].contains("exists_one") && rules[0].contains("isSorted()"));
        assert!(rules[1].contains("== 100.0"));
        assert_eq!(rules[2], "self.target == oldSelf.target");
        let steps = &spec["properties"]["steps"];
        assert_eq!(steps["maxItems"], 20);
        assert_eq!(steps["items"]["properties"]["weight"]["minimum"], 0.01);
        assert_eq!(steps["items"]["properties"]["weight"]["maximum"], 100.0);
        assert_eq!(
            steps["items"]["properties"]["bake"]["pattern"],
            crate::duration::DURATION_PATTERN
        );
        let gate = &spec["properties"]["analysis"]["properties"]["gates"]["items"];
        assert_eq!(gate["oneOf"].as_array().map(Vec::len), Some(5));
        for kind in [
            "errorRate",
            "latency",
            "businessEvent",
            "custom",
            "sequential",
            "name",
        ] {
            assert!(gate["properties"][kind].is_object(), "gate property {kind}");
        }
        assert_eq!(
            spec["properties"]["target"]["oneOf"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(spec["required"], serde_json::json!(["hosts", "target"]));
    }

    const EXAMPLE: &str = r#"
apiVersion: cohort.dev/v1alpha1
kind: CanaryRollout
metadata: {name: checkout, namespace: shop}
spec:
  target: {wasmPlugin: {name: cohort}}
  hosts: [checkout]
  identity: [{kind: header, name: x-user-id}, {kind: cookie, name: session}]
  steps:
  - {weight: 0.5, bake: 2m}
  - {weight: 5, bake: 5m}
  - {weight: 100}
  analysis:
    interval: 15s
    minSamples: 200
    gates:
    - errorRate: {maxIncrease: 0.005, maxRate: 0.05}
    - name: p95
      latency: {quantile: 0.95, tolerance: 0.1, slackMs: 5}
    - businessEvent: {event: checkout, maxDrop: 0.05}
      minSamples: 1000
    - name: cpu
      custom: {query: 'max(rate(cpu{namespace="{{namespace}}"}[{{interval}}]))', max: 0.8}
  failurePolicy: {onNoData: rollback}
"#;

    #[test]
    fn a_written_rollout_reads_as_intended() {
        let rollout: CanaryRollout = serde_saphyr::from_str(EXAMPLE).unwrap();
        let spec = &rollout.spec;
        assert_eq!(
            spec.target,
            Target::WasmPlugin(WasmPluginTarget {
                name: "cohort".into(),
                namespace: None
            })
        );
        assert_eq!(
            spec.steps.iter().map(Step::weight_bp).collect::<Vec<_>>(),
            vec![50, 500, 10_000]
        );
        assert_eq!(spec.steps[2].bake, "5m");
        let gates = &spec.analysis.gates;
        assert_eq!(
            gates.iter().map(GateSpec::name).collect::<Vec<_>>(),
            vec!["error-rate", "p95", "event-checkout", "cpu"]
        );
        assert_eq!(
            gates[0].check,
            GateCheck::ErrorRate(ErrorRateGate {
                max_increase: 0.005,
                max_rate: Some(0.05)
            })
        );
        assert_eq!(gates[2].min_samples, Some(1000));
        assert!(
            matches!(&gates[3].check, GateCheck::Custom(custom) if custom.max == Some(0.8) && custom.min.is_none())
        );
        assert_eq!(spec.failure_policy.on_no_data, OnTrouble::Rollback);
        assert_eq!(spec.failure_policy.on_errors, OnTrouble::Hold);
        assert_eq!(spec.failure_policy.no_data_deadline, "10m");
        assert!(!spec.paused && !spec.abort && !spec.promote);
        assert_eq!(validate_spec(spec, "checkout"), Ok(()));
        assert_eq!(rollout.status, None);
    }

    #[test]
    fn a_gate_without_a_known_kind_is_refused() {
        let table = [
            ("{name: x}", "found none"),
            ("{bayesian: {alpha: 0.05}}", "found none"),
            (
                "{errorRate: {}, latency: {}}",
                "found errorRate and latency",
            ),
            ("{latency: {quantile: high}}", "invalid type"),
        ];
        for (gate, expected) in table {
            let json = serde_saphyr::from_str::<serde_json::Value>(gate).unwrap();
            let error = serde_json::from_value::<GateSpec>(json)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "gate {gate}: {error}");
        }
        // Through the whole spec and the YAML reader too.
        let yaml = "target: {envoyEcds: {path: /e.yaml}}\nhosts: [a]\nanalysis: {gates: [{errorRate: {}, custom: {query: up}}]}\n";
        assert!(serde_saphyr::from_str::<CanaryRolloutSpec>(yaml).is_err());
        // Unknown keys beside one kind are tolerated, as the API server would prune them.
        let gate: GateSpec =
            serde_json::from_value(serde_json::json!({"errorRate": {}, "note": 1})).unwrap();
        assert_eq!(gate.name(), "error-rate");
    }

    #[test]
    fn sequential_gates_read_with_their_defaults() {
        let yaml = r#"
- sequential: {}
- sequential: {metric: latency, quantile: 0.95, alpha: 0.005, maxDuration: 20m}
- sequential: {metric: businessEvent, event: checkout, maxDrop: 0.05}
"#;
        let gates: Vec<GateSpec> = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            gates.iter().map(GateSpec::name).collect::<Vec<_>>(),
            vec!["error-rate", "latency-p95", "event-checkout"]
        );
        let GateCheck::Sequential(errors) = &gates[0].check else {
            panic!("{:?}", gates[0].check);
        };
        assert_eq!(*errors, SequentialGate::new(SequentialMetric::ErrorRate));
        assert_eq!(
            (
                errors.alpha,
                errors.max_ratio(),
                errors.max_increase(),
                errors.max_duration.as_str()
            ),
            (None, 2.0, 0.01, "10m")
        );
        let GateCheck::Sequential(latency) = &gates[1].check else {
            panic!("{:?}", gates[1].check);
        };
        assert_eq!((latency.quantile(), latency.alpha), (0.95, Some(0.005)));
        assert!(gates[1].check.reads_latency() && !gates[0].check.reads_latency());
        assert_eq!(gates[2].check.business_event(), Some("checkout"));
        assert_eq!(gates[0].check.business_event(), None);
        // Only the fields given are written back.
        assert_eq!(
            serde_json::to_value(&gates[0]).unwrap(),
            serde_json::json!({"sequential": {"metric": "errorRate", "maxDuration": "10m"}})
        );
        // The default gates: sequential error rate and latency, both within the rollout's budget.
        let defaults = default_gates();
        assert!(
            matches!(&defaults[0].check, GateCheck::Sequential(gate) if gate.metric == SequentialMetric::ErrorRate)
        );
        assert!(
            matches!(&defaults[1].check, GateCheck::Sequential(gate) if gate.metric == SequentialMetric::Latency)
        );
    }

    #[test]
    fn status_round_trips_as_json() {
        let status = CanaryRolloutStatus {
            phase: Phase::RolledBack,
            step_index: Some(2),
            weight_bp: 0,
            gates: vec![GateResult {
                gate: "error-rate".into(),
                verdict: Verdict::Fail,
                canary: Some(0.1),
                stable: Some(0.0),
                threshold: Some(0.01),
                canary_samples: 300.0,
                stable_samples: 9000.0,
                reason: "too many 5xx".into(),
                sequential: Some(SequentialLook {
                    evidence: 140.5,
                    evidence_needed: 100.0,
                    dispersion: 1.25,
                    canary_unit_dispersion: None,
                    stable_unit_dispersion: None,
                    canary_pod_dispersion: None,
                    stable_pod_dispersion: None,
                    tally: Tally {
                        window_seconds: 90.0,
                        canary_events: 30.0,
                        canary_exposure: 300.0,
                        step_increments: 3,
                        ..Tally::default()
                    },
                }),
            }],
            consecutive_errors: 1,
            ..CanaryRolloutStatus::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "RolledBack");
        assert_eq!(json["gates"][0]["verdict"], "Fail");
        assert_eq!(json["gates"][0]["canarySamples"], 300.0);
        assert_eq!(
            serde_json::from_value::<CanaryRolloutStatus>(json).unwrap(),
            status
        );
        // An empty status (a fresh object) reads as Pending at weight 0.
        let empty: CanaryRolloutStatus = serde_json::from_str("{}").unwrap();
        assert_eq!((empty.phase, empty.weight_bp), (Phase::Pending, 0));
    }

    #[test]
    fn weights_convert_to_basis_points() {
        let table = [
            (0.01, 1),
            (0.5, 50),
            (1.0, 100),
            (12.34, 1234),
            (33.33, 3333),
            (0.29, 29),
            (100.0, 10_000),
            (100.5, 10_000),
            (-1.0, 0),
            (f64::NAN, 0),
        ];
        for (percent, bp) in table {
            assert_eq!(percent_to_bp(percent), bp, "{percent}%");
        }
    }

    #[test]
    fn default_gate_names() {
        let table = [
            (0.99, "latency-p99"),
            (0.999, "latency-p99.9"),
            (0.5, "latency-p50"),
            (0.95, "latency-p95"),
        ];
        for (quantile, name) in table {
            let check = GateCheck::Latency(LatencyGate {
                quantile,
                tolerance: 0.2,
                slack_ms: 0.0,
            });
            assert_eq!(check.default_name(), name);
        }
    }
}
