//! Every Kubernetes API call `cohort controller` makes, with the code that makes it.
//!
//! `manifests/controller/rbac.yaml` grants exactly these and nothing more
//! (`tests/tests/manifests.rs` compares them), and every request the scripted API-server tests
//! see must be one of them (`fixtures.rs`), so a new call fails a test until it is listed here
//! and granted there. The CLI's verbs (`cohort status`, `pause`, ...) run with the user's own
//! credentials and are not part of it.

/// Where a right must hold, which decides the kind of grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Any namespace: the `cohort-controller` ClusterRole, bound cluster-wide.
    Cluster,
    /// The controller's own namespace: the `cohort-controller-leader-election` Role.
    ControllerNamespace,
    /// Only the namespaces whose owners opt in: the `cohort-controller-force-token`
    /// ClusterRole, bound by a RoleBinding in each such namespace.
    OptInNamespace,
}

/// One API call: group (`""` for the core group), resource, verb, scope, and who makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    /// API group.
    pub group: &'static str,
    /// Resource (plural, with `/subresource`).
    pub resource: &'static str,
    /// RBAC verb.
    pub verb: &'static str,
    /// Where it is needed.
    pub scope: Scope,
    /// The code that makes it.
    pub by: &'static str,
}

const fn call(
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    scope: Scope,
    by: &'static str,
) -> ApiCall {
    ApiCall {
        group,
        resource,
        verb,
        scope,
        by,
    }
}

/// The calls, in the order a rollout meets them.
pub const API_CALLS: &[ApiCall] = &[
    call(
        "cohort.dev",
        "canaryrollouts",
        "list",
        Scope::Cluster,
        "reconciler::watch_rollouts (kube-runtime Controller: initial list)",
    ),
    call(
        "cohort.dev",
        "canaryrollouts",
        "watch",
        Scope::Cluster,
        "reconciler::watch_rollouts (kube-runtime Controller: watch)",
    ),
    call(
        "cohort.dev",
        "canaryrollouts",
        "patch",
        Scope::Cluster,
        "reconciler::cluster::with_finalizer (kube-runtime finalizer: a JSON patch adding, \
         then removing, metadata.finalizers)",
    ),
    call(
        "",
        "secrets",
        "get",
        Scope::OptInNamespace,
        "force_token::from_secret (spec.forceTokenSecretRef) and notify::UrlSource::read \
         (spec.notifications.webhook.urlSecretRef)",
    ),
    call(
        "extensions.istio.io",
        "wasmplugins",
        "get",
        Scope::Cluster,
        "target::wasmplugin (the live pluginConfig, merged and checked before applying)",
    ),
    call(
        "extensions.istio.io",
        "wasmplugins",
        "patch",
        Scope::Cluster,
        "target::wasmplugin (server-side apply of the rollout's fields)",
    ),
    call(
        "cohort.dev",
        "canaryrollouts/status",
        "patch",
        Scope::Cluster,
        "reconciler::cluster::write_status (server-side apply of status)",
    ),
    call(
        "apps",
        "deployments",
        "list",
        Scope::Cluster,
        "reconciler::watch_rollouts (kube-runtime Controller::watches: the Deployments rollouts \
         name, initial list)",
    ),
    call(
        "apps",
        "deployments",
        "watch",
        Scope::Cluster,
        "reconciler::watch_rollouts (kube-runtime Controller::watches: watch)",
    ),
    call(
        "apps",
        "deployments",
        "get",
        Scope::Cluster,
        "workload::Deployments::observe (spec.workload's stable and canary, every cycle)",
    ),
    call(
        "autoscaling",
        "horizontalpodautoscalers",
        "list",
        Scope::Cluster,
        "workload::Deployments::canary_autoscaled (before scaling the canary: an autoscaler on \
         it stays in charge)",
    ),
    call(
        "apps",
        "deployments",
        "patch",
        Scope::Cluster,
        "workload::Deployments::act (the canary's spec.replicas by merge patch; stable's \
         spec.template by JSON patch at promotion)",
    ),
    call(
        "events.k8s.io",
        "events",
        "create",
        Scope::Cluster,
        "reconciler::cluster::publish (kube-runtime Recorder: a new Event)",
    ),
    call(
        "events.k8s.io",
        "events",
        "patch",
        Scope::Cluster,
        "reconciler::cluster::publish (kube-runtime Recorder: a repeated Event's series)",
    ),
    call(
        "coordination.k8s.io",
        "leases",
        "get",
        Scope::ControllerNamespace,
        "leader (read the Lease)",
    ),
    call(
        "coordination.k8s.io",
        "leases",
        "create",
        Scope::ControllerNamespace,
        "leader (first replica creates the Lease)",
    ),
    call(
        "coordination.k8s.io",
        "leases",
        "update",
        Scope::ControllerNamespace,
        "leader (renew, take over, release)",
    ),
];

/// Whether the controller makes this call.
pub fn is_used(group: &str, resource: &str, verb: &str) -> bool {
    API_CALLS
        .iter()
        .any(|c| c.group == group && c.resource == resource && c.verb == verb)
}
