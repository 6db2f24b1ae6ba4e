//! The Kubernetes manifests: `kubectl kustomize` renders them; every Istio object fits
//! Istio 1.30's CRD schema and every CanaryRollout ours; the filter configs they embed pass the
//! filter's own validation; the pieces agree with each other; the committed CRD is current.
//!
//! Schema checks run the `openAPIV3Schema` through a JSON Schema validator (see
//! `cohort_tests::schema`): types, enums, patterns, ranges, required and unknown fields. CEL rules
//! (`x-kubernetes-validations`) are not evaluated; the CanaryRollout's are covered by
//! `validate_spec`, which these tests run too.

// Test code: a failed expectation panics with its message (clippy.toml's test allowances cover
// only `#[test]` functions, not this file's helpers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

use cohort_rollout::crd::Target;
use cohort_rollout::{crd_yaml, spec_to_filter_rollout, validate_spec, CanaryRollout};
use cohort_tests::manifests::{
    api_group, cohort_crd_path, describe, istio_crd_path, kustomize, read_yaml, CRD_FILE,
};
use cohort_tests::schema::{validate_against_crd, validate_patch_against_crd};
use cohort_tests::workspace_root;

const ISTIO_KINDS: [&str; 3] = ["WasmPlugin", "VirtualService", "DestinationRule"];
/// The Istio kind with no vendored CRD schema: checked field by field instead
/// (`telemetry_labels_served_metrics_with_the_unit_header`).
const TELEMETRY: &str = "Telemetry";
/// Folders of `manifests/` whose YAML is not Kubernetes objects.
const NOT_KUBERNETES: [&str; 2] = ["envoy", "prometheus"];

fn manifests_dir() -> PathBuf {
    workspace_root().join("manifests")
}

/// The kustomizations a user applies, in order, under `manifests/`: the CRD and the controller,
/// then (the CRD established) the example.
const APPLIED: [&str; 2] = [".", "examples"];

/// `kubectl kustomize manifests/DIR` for each of [`APPLIED`], rendered once for all tests.
fn rendered() -> &'static [Value] {
    static RENDERED: OnceLock<Vec<Value>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        APPLIED
            .iter()
            .flat_map(|dir| kustomize(&manifests_dir().join(dir)).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    })
}

fn of_kind(kind: &str) -> Vec<&'static Value> {
    rendered().iter().filter(|o| o["kind"] == kind).collect()
}

fn istio_crd(kind: &str) -> PathBuf {
    istio_crd_path(kind).unwrap_or_else(|e| panic!("{e}"))
}

/// `object` with the value at `pointer` replaced (the parent must exist).
fn with(object: &Value, pointer: &str, value: Value) -> Value {
    let mut object = object.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{pointer}: no parent"));
    match parent {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{pointer}: parent is neither object nor array"),
    }
    object
}

#[test]
fn committed_crd_matches_what_cohort_crd_prints() {
    let committed = std::fs::read_to_string(cohort_crd_path()).unwrap_or_default();
    let current = crd_yaml().unwrap();
    assert!(
        committed == current,
        "{CRD_FILE} differs from `cohort crd`; regenerate it: \
         cargo run -p cohort -- crd > {CRD_FILE}"
    );
}

#[test]
fn kustomize_renders_every_manifest_file() {
    // Each kustomization's resources: YAML files, or folders holding another kustomization.
    let mut listed = Vec::new();
    let mut included = BTreeSet::new();
    for dir in kustomization_dirs() {
        let kustomization =
            read_yaml(&manifests_dir().join(&dir).join("kustomization.yaml")).unwrap();
        for resource in kustomization[0]["resources"].as_array().unwrap() {
            let path = normalize(&Path::new(&dir).join(resource.as_str().unwrap()));
            if manifests_dir().join(&path).is_dir() {
                assert!(included.insert(path), "{dir}: {resource} is included twice");
            } else {
                listed.push(path);
            }
        }
    }
    // Every YAML file outside envoy/ (plain-Envoy templates) and prometheus/ (Prometheus
    // configs, checked by promtool below) is in exactly one kustomization, and each kustomization
    // is applied or included once, so no manifest escapes the checks below.
    let mut files = BTreeSet::new();
    collect_yaml(&manifests_dir(), &manifests_dir(), &mut files);
    files.retain(|file| !is_kustomization(file));
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a file in two kustomizations: {listed:?}"
    );
    assert_eq!(unique, files, "kustomizations' resources vs files");
    let applied: BTreeSet<String> = APPLIED.iter().map(|dir| (*dir).to_owned()).collect();
    assert!(
        applied.is_disjoint(&included),
        "{applied:?} vs {included:?}"
    );
    assert_eq!(
        kustomization_dirs(),
        applied.union(&included).cloned().collect(),
        "kustomizations neither applied nor included"
    );
    let documents: usize = files
        .iter()
        .map(|file| read_yaml(&manifests_dir().join(file)).unwrap().len())
        .sum();
    assert_eq!(rendered().len(), documents);
    for kind in ISTIO_KINDS.iter().chain(&[
        TELEMETRY,
        "CanaryRollout",
        "CustomResourceDefinition",
        "Deployment",
    ]) {
        assert!(!of_kind(kind).is_empty(), "no {kind} rendered");
    }
}

/// `kubectl apply -k` maps every object to its API when it starts, so on a fresh cluster it
/// refuses an object whose CRD is in the same run ("ensure CRDs are installed first"): such
/// objects belong in a kustomization applied once the CRD is established.
#[test]
fn no_kustomization_holds_a_crd_and_objects_of_its_kind() {
    let mut crds = 0;
    for dir in kustomization_dirs() {
        let objects = kustomize(&manifests_dir().join(&dir)).unwrap_or_else(|e| panic!("{e}"));
        let defined: BTreeSet<(&str, &str)> = objects
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .map(|crd| {
                let spec = &crd["spec"];
                (
                    spec["group"].as_str().unwrap(),
                    spec["names"]["kind"].as_str().unwrap(),
                )
            })
            .collect();
        crds += defined.len();
        for object in &objects {
            let kind = (
                api_group(object),
                object["kind"].as_str().unwrap_or_default(),
            );
            assert!(
                !defined.contains(&kind),
                "manifests/{dir} holds {} and its CRD: a first `kubectl apply -k` fails",
                describe(object)
            );
        }
    }
    assert!(crds > 0, "no kustomization holds a CRD");
}

/// The folders under `manifests/` (relative, `.` for itself) holding a `kustomization.yaml`.
fn kustomization_dirs() -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    collect_yaml(&manifests_dir(), &manifests_dir(), &mut files);
    files
        .iter()
        .filter(|file| is_kustomization(file))
        .map(|file| {
            let dir = file
                .trim_end_matches("kustomization.yaml")
                .trim_end_matches('/');
            if dir.is_empty() { "." } else { dir }.to_owned()
        })
        .collect()
}

fn is_kustomization(file: &str) -> bool {
    Path::new(file).file_name() == Some("kustomization.yaml".as_ref())
}

/// `path` without `.` and `dir/..` steps, `/`-separated (`.` when nothing is left).
fn normalize(path: &Path) -> String {
    use std::path::Component;
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                assert!(
                    parts.pop().is_some(),
                    "{} leaves manifests/",
                    path.display()
                );
            }
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    }
}

fn collect_yaml(root: &Path, dir: &Path, files: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            if !NOT_KUBERNETES.contains(&relative.as_str()) {
                collect_yaml(root, &path, files);
            }
        } else if relative.ends_with(".yaml") || relative.ends_with(".yml") {
            files.insert(relative);
        }
    }
}

#[test]
fn istio_objects_fit_istio_1_30_schemas() {
    let istio: Vec<&Value> = rendered()
        .iter()
        .filter(|o| api_group(o).ends_with(".istio.io") && o["kind"] != TELEMETRY)
        .collect();
    assert!(istio.len() >= ISTIO_KINDS.len());
    for object in istio {
        let kind = object["kind"].as_str().unwrap();
        assert!(ISTIO_KINDS.contains(&kind), "no schema for {kind}");
        if let Err(errors) = validate_against_crd(&istio_crd(kind), object) {
            panic!(
                "{} does not fit its CRD:\n{}",
                describe(object),
                errors.join("\n")
            );
        }
    }
}

#[test]
fn canary_rollouts_fit_our_crd_and_pass_validate_spec() {
    for object in of_kind("CanaryRollout") {
        if let Err(errors) = validate_against_crd(&cohort_crd_path(), object) {
            panic!(
                "{} does not fit the CRD:\n{}",
                describe(object),
                errors.join("\n")
            );
        }
        let rollout: CanaryRollout = serde_json::from_value(object.clone()).unwrap();
        let name = rollout.metadata.name.as_deref().unwrap();
        assert_eq!(
            validate_spec(&rollout.spec, name),
            Ok(()),
            "{}",
            describe(object)
        );
    }
}

#[test]
fn embedded_filter_configs_pass_the_filters_validation() {
    for plugin in of_kind("WasmPlugin") {
        let config = serde_json::to_vec(&plugin["spec"]["pluginConfig"]).unwrap();
        if let Err(errors) = cohort_core::config::parse(&config) {
            panic!("{}: pluginConfig is refused: {errors}", describe(plugin));
        }
    }
}

/// Each CanaryRollout's WasmPlugin exists, runs on the client side with an explicit fail
/// strategy, and accepts the rollout's entry: merged in at every step's weight, the config
/// passes the filter's validation and the filter-wide settings already match the rollout's.
#[test]
fn each_rollout_s_wasm_plugin_accepts_its_entry() {
    for object in of_kind("CanaryRollout") {
        let rollout: CanaryRollout = serde_json::from_value(object.clone()).unwrap();
        let name = rollout.metadata.name.as_deref().unwrap();
        let Target::WasmPlugin(target) = &rollout.spec.target else {
            continue;
        };
        // The entry carries the rollout's own namespace, which may differ from its WasmPlugin's.
        let own_namespace = rollout.metadata.namespace.as_deref().unwrap_or("");
        let namespace = target
            .namespace
            .as_deref()
            .or(rollout.metadata.namespace.as_deref());
        let plugin = of_kind("WasmPlugin")
            .into_iter()
            .find(|p| {
                p["metadata"]["name"] == target.name.as_str()
                    && p["metadata"]["namespace"].as_str() == namespace
            })
            .unwrap_or_else(|| panic!("{}: its WasmPlugin is not in manifests", describe(object)));
        assert_eq!(plugin["spec"]["match"], json!([{"mode": "CLIENT"}]));
        assert!(
            plugin["spec"]["failStrategy"].is_string(),
            "failStrategy unset"
        );
        for step in &rollout.spec.steps {
            let entry =
                spec_to_filter_rollout(&rollout.spec, own_namespace, name, step.weight_bp())
                    .unwrap();
            assert_eq!(entry.namespace, own_namespace);
            let merged = with(
                plugin,
                &format!("/spec/pluginConfig/rollouts/{name}"),
                serde_json::to_value(entry).unwrap(),
            );
            let config = serde_json::to_vec(&merged["spec"]["pluginConfig"]).unwrap();
            if let Err(errors) = cohort_core::config::parse(&config) {
                panic!("{} merged with {name}: {errors}", describe(plugin));
            }
        }
        let own =
            cohort_rollout::spec_to_filter_config(&rollout.spec, own_namespace, name, 0).unwrap();
        let own = serde_json::to_value(own).unwrap();
        let config = &plugin["spec"]["pluginConfig"];
        assert_eq!(config["anonymous"], own["anonymous"], "anonymous policy");
        assert_eq!(config["events"], own["events"], "counted events");
    }
}

/// The routing chain: each rollout's hosts have a VirtualService sending the canary's routing
/// header value to a subset that the host's DestinationRule defines, and everything else to
/// another defined subset.
#[test]
fn virtual_services_route_the_canary_header_to_defined_subsets() {
    for object in of_kind("CanaryRollout") {
        let rollout: CanaryRollout = serde_json::from_value(object.clone()).unwrap();
        let namespace = rollout.metadata.namespace.as_deref().unwrap();
        for host in &rollout.spec.hosts {
            let in_namespace = |kind: &str| {
                of_kind(kind)
                    .into_iter()
                    .filter(move |o| o["metadata"]["namespace"].as_str() == Some(namespace))
            };
            let service = in_namespace("VirtualService")
                .find(|vs| {
                    vs["spec"]["hosts"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(host))
                })
                .unwrap_or_else(|| panic!("no VirtualService for host {host}"));
            let subsets: Vec<&str> = in_namespace("DestinationRule")
                .filter(|dr| dr["spec"]["host"] == host.as_str())
                .flat_map(|dr| dr["spec"]["subsets"].as_array().unwrap())
                .map(|subset| subset["name"].as_str().unwrap())
                .collect();
            let routes = service["spec"]["http"].as_array().unwrap();
            let canary_match =
                json!([{"headers": {"x-cohort-version": {"exact": rollout.spec.canary_version}}}]);
            let canary = routes
                .iter()
                .find(|route| route["match"] == canary_match)
                .unwrap_or_else(|| panic!("{}: no canary header match", describe(service)));
            let fallback = routes.last().unwrap();
            assert!(
                fallback.get("match").is_none(),
                "the last route must match everything"
            );
            for route in [canary, fallback] {
                let subset = route["route"][0]["destination"]["subset"].as_str().unwrap();
                assert!(
                    subsets.contains(&subset),
                    "subset {subset} not in {subsets:?}"
                );
            }
            assert_ne!(canary["route"], fallback["route"]);
        }
    }
}

/// The Telemetry object that labels Istio's served metrics with the user's unit, checked against
/// Istio's Telemetry API reference (`telemetry.istio.io/v1`: `spec.metrics[].providers[].name`,
/// `overrides[].match.metric` one of the standard metrics, `match.mode` `CLIENT_AND_SERVER`,
/// `CLIENT` or `SERVER`, `tagOverrides.<tag>` with `operation` `UPSERT` or `REMOVE` and `value` a
/// CEL expression), since no CRD schema of it is at hand. Unknown fields are refused, as the
/// schema would. The tag and the header are cohort-core's, so the filter, this object and the
/// gates' queries name the same things.
#[test]
fn telemetry_labels_served_metrics_with_the_unit_header() {
    use cohort_core::telemetry::{TAG_UNIT, UNIT_HEADER};

    fn keys(object: &Value) -> BTreeSet<&str> {
        object
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {object}"))
            .keys()
            .map(String::as_str)
            .collect()
    }
    let telemetry = of_kind(TELEMETRY);
    let [telemetry] = telemetry.as_slice() else {
        panic!("{} Telemetry objects, want one", telemetry.len())
    };
    let what = describe(telemetry);
    assert_eq!(telemetry["apiVersion"], "telemetry.istio.io/v1", "{what}");
    assert_eq!(
        keys(telemetry),
        BTreeSet::from(["apiVersion", "kind", "metadata", "spec"])
    );
    // In the namespace of the service the rollouts split, whose sidecars report
    // `reporter="destination"`; no selector, so every workload of it.
    let namespaces: BTreeSet<&str> = of_kind("CanaryRollout")
        .iter()
        .map(|rollout| rollout["metadata"]["namespace"].as_str().unwrap())
        .collect();
    let namespace = telemetry["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(namespaces, BTreeSet::from([namespace]), "{what}");
    assert_eq!(
        keys(&telemetry["spec"]),
        BTreeSet::from(["metrics"]),
        "{what}"
    );

    let metrics = telemetry["spec"]["metrics"].as_array().unwrap();
    let [metrics] = metrics.as_slice() else {
        panic!("{what}: {} metrics entries, want one", metrics.len())
    };
    assert_eq!(
        keys(metrics),
        BTreeSet::from(["providers", "overrides"]),
        "{what}"
    );
    assert_eq!(
        metrics["providers"],
        json!([{"name": "prometheus"}]),
        "{what}"
    );
    let expression = format!("request.headers['{UNIT_HEADER}']");
    let mut overridden = Vec::new();
    for entry in metrics["overrides"].as_array().unwrap() {
        assert_eq!(
            keys(entry),
            BTreeSet::from(["match", "tagOverrides"]),
            "{entry}"
        );
        assert_eq!(
            keys(&entry["match"]),
            BTreeSet::from(["metric", "mode"]),
            "{entry}"
        );
        // The destination reports the series the gates read.
        assert_eq!(entry["match"]["mode"], "SERVER", "{entry}");
        overridden.push(entry["match"]["metric"].as_str().unwrap());
        assert_eq!(
            entry["tagOverrides"],
            json!({TAG_UNIT: {"operation": "UPSERT", "value": expression}}),
            "{entry}"
        );
    }
    overridden.sort_unstable();
    // istio_requests_total and istio_request_duration_milliseconds.
    assert_eq!(overridden, ["REQUEST_COUNT", "REQUEST_DURATION"], "{what}");

    // A Prometheus label name that is none of Istio's standard labels, and a header name as
    // Envoy's header map (which CEL's `request.headers` reads) holds it: lowercase.
    assert!(
        TAG_UNIT
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !TAG_UNIT.starts_with("source_")
            && !TAG_UNIT.starts_with("destination_"),
        "{TAG_UNIT}"
    );
    assert_eq!(UNIT_HEADER, UNIT_HEADER.to_ascii_lowercase());
}

#[test]
fn controller_deployment_is_locked_down_and_probed() {
    let deployments = of_kind("Deployment");
    let deployment = deployments
        .iter()
        .find(|d| d["metadata"]["name"] == "cohort-controller")
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "cohort-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["command"], json!(["cohort", "controller"]));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(container["resources"]["requests"].is_object());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let pod_name = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|env| env["name"] == "POD_NAME")
        .unwrap();
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
}

/// The grants of one role: `group/resource:verb` for every rule of the (Cluster)Role `name`.
fn grants(kind: &str, name: &str) -> BTreeSet<String> {
    let roles: Vec<&Value> = of_kind(kind)
        .into_iter()
        .filter(|role| role["metadata"]["name"] == name)
        .collect();
    assert_eq!(roles.len(), 1, "{kind} {name}");
    roles[0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            assert_eq!(rule["apiGroups"].as_array().unwrap().len(), 1);
            assert!(rule.get("resourceNames").is_none());
            let group = rule["apiGroups"][0].as_str().unwrap().to_owned();
            let verbs: Vec<String> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(move |resource| {
                    let (group, resource) = (group.clone(), resource.as_str().unwrap().to_owned());
                    verbs
                        .clone()
                        .into_iter()
                        .map(move |verb| format!("{group}/{resource}:{verb}"))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Least privilege, pinned: the roles grant exactly the calls the controller's code makes
/// (`cohort_controller::rbac::API_CALLS`, which the scripted API-server tests hold every request
/// to), and this table pins both: a new right is a deliberate change here and there.
#[test]
fn rbac_grants_exactly_what_the_controller_calls() {
    use cohort_controller::rbac::{Scope, API_CALLS};
    let set =
        |grants: &[&str]| -> BTreeSet<String> { grants.iter().map(|g| (*g).to_owned()).collect() };
    let pinned = [
        (
            Scope::Cluster,
            "ClusterRole",
            "cohort-controller",
            set(&[
                "cohort.dev/canaryrollouts:list",
                "cohort.dev/canaryrollouts:watch",
                "cohort.dev/canaryrollouts:patch",
                "cohort.dev/canaryrollouts/status:patch",
                "extensions.istio.io/wasmplugins:get",
                "extensions.istio.io/wasmplugins:patch",
                "apps/deployments:get",
                "apps/deployments:list",
                "apps/deployments:watch",
                "apps/deployments:patch",
                "autoscaling/horizontalpodautoscalers:list",
                "events.k8s.io/events:create",
                "events.k8s.io/events:patch",
            ]),
        ),
        (
            Scope::ControllerNamespace,
            "Role",
            "cohort-controller-leader-election",
            set(&[
                "coordination.k8s.io/leases:get",
                "coordination.k8s.io/leases:create",
                "coordination.k8s.io/leases:update",
            ]),
        ),
        (
            Scope::OptInNamespace,
            "ClusterRole",
            "cohort-controller-force-token",
            set(&["/secrets:get"]),
        ),
    ];
    for (scope, kind, name, expected) in &pinned {
        let called: BTreeSet<String> = API_CALLS
            .iter()
            .filter(|call| call.scope == *scope)
            .map(|call| format!("{}/{}:{}", call.group, call.resource, call.verb))
            .collect();
        assert_eq!(
            &called, expected,
            "{scope:?}: the code's calls vs the pinned table"
        );
        assert_eq!(
            &grants(kind, name),
            expected,
            "{kind} {name} vs the code's calls"
        );
    }
    // No other role of ours.
    let ours = |kind: &str| -> Vec<String> {
        of_kind(kind)
            .into_iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_owned())
            .filter(|n| n.starts_with("cohort"))
            .collect()
    };
    assert_eq!(
        ours("ClusterRole"),
        ["cohort-controller", "cohort-controller-force-token"]
    );
    assert_eq!(ours("Role"), ["cohort-controller-leader-election"]);
    let roles = of_kind("Role");
    assert_eq!(roles[0]["metadata"]["namespace"], "cohort-system");
    // Bindings: the controller's account only; the Secret right is never bound cluster-wide.
    for binding in of_kind("ClusterRoleBinding")
        .into_iter()
        .chain(of_kind("RoleBinding"))
    {
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "cohort-controller", "namespace": "cohort-system"}])
        );
        if binding["kind"] == "ClusterRoleBinding" {
            assert_ne!(binding["roleRef"]["name"], "cohort-controller-force-token");
        }
    }
}

/// The validator is really applied: broken copies of the rendered objects are refused, each
/// for the reason planted.
#[test]
fn broken_objects_are_refused() {
    let plugin = of_kind("WasmPlugin")[0];
    let service = of_kind("VirtualService")[0];
    let rule = of_kind("DestinationRule")[0];
    let rollout = of_kind("CanaryRollout")[0];
    let table: Vec<(&str, Value, PathBuf, &str)> = vec![
        (
            "unknown enum value",
            with(plugin, "/spec/failStrategy", json!("FAIL_SOMETIMES")),
            istio_crd("WasmPlugin"),
            "/spec/failStrategy",
        ),
        (
            "unknown match mode",
            with(plugin, "/spec/match/0/mode", json!("CALLER")),
            istio_crd("WasmPlugin"),
            "/spec/match/0/mode",
        ),
        (
            "wrong type: match as a string",
            with(plugin, "/spec/match", json!("CLIENT")),
            istio_crd("WasmPlugin"),
            "/spec/match",
        ),
        (
            "unknown field (typo)",
            with(plugin, "/spec/matches", json!([{"mode": "CLIENT"}])),
            istio_crd("WasmPlugin"),
            "/spec",
        ),
        (
            "missing required url",
            {
                let mut p = plugin.clone();
                p["spec"].as_object_mut().unwrap().remove("url");
                p
            },
            istio_crd("WasmPlugin"),
            "/spec",
        ),
        (
            "wrong type: header match as a string",
            with(
                service,
                "/spec/http/0/match/0/headers/x-cohort-version",
                json!("canary"),
            ),
            istio_crd("VirtualService"),
            "/spec/http/0/match/0/headers/x-cohort-version",
        ),
        (
            "wrong type: subset labels as a list",
            with(rule, "/spec/subsets/0/labels", json!(["version=stable"])),
            istio_crd("DestinationRule"),
            "/spec/subsets/0/labels",
        ),
        (
            "step weight over 100",
            with(rollout, "/spec/steps/0/weight", json!(150)),
            cohort_crd_path(),
            "/spec/steps/0/weight",
        ),
        (
            "bake is not a duration",
            with(rollout, "/spec/steps/0/bake", json!("soon")),
            cohort_crd_path(),
            "/spec/steps/0/bake",
        ),
        (
            "unknown identity kind",
            with(rollout, "/spec/identity/0/kind", json!("query")),
            cohort_crd_path(),
            "/spec/identity/0/kind",
        ),
        (
            "a gate of two kinds",
            with(
                rollout,
                "/spec/analysis/gates/0/custom",
                json!({"query": "up"}),
            ),
            cohort_crd_path(),
            "/spec/analysis/gates/0",
        ),
        (
            "wrong type: paused as a string",
            with(rollout, "/spec/paused", json!("yes")),
            cohort_crd_path(),
            "/spec/paused",
        ),
    ];
    for (what, object, crd, path) in table {
        let errors = validate_against_crd(&crd, &object)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{path}:"))),
            "{what}: expected an error at {path}, got {errors:?}"
        );
    }
}

#[test]
fn patch_bodies_are_checked_without_required_fields() {
    // What the controller's server-side apply sends: only pluginConfig.rollouts.<name>.
    let patch = json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "cohort", "namespace": "shop"},
        "spec": {"pluginConfig": {"rollouts": {"checkout": {"hosts": ["checkout"], "weightBp": 100}}}}
    });
    let crd = istio_crd("WasmPlugin");
    assert!(
        validate_against_crd(&crd, &patch).is_err(),
        "url is required"
    );
    assert_eq!(validate_patch_against_crd(&crd, &patch), Ok(()));
    let typo = with(&patch, "/spec/pluginconfig", json!({}));
    assert!(validate_patch_against_crd(&crd, &typo).is_err());
    // The CLI's merge patches on a CanaryRollout.
    let pause = json!({
        "apiVersion": "cohort.dev/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": {"name": "checkout"},
        "spec": {"paused": true}
    });
    assert_eq!(
        validate_patch_against_crd(&cohort_crd_path(), &pause),
        Ok(())
    );
}

#[test]
fn objects_of_an_unserved_version_are_refused() {
    let plugin = with(
        of_kind("WasmPlugin")[0],
        "/apiVersion",
        json!("extensions.istio.io/v9"),
    );
    let errors = validate_against_crd(&istio_crd("WasmPlugin"), &plugin).unwrap_err();
    assert!(errors[0].contains("no served version"), "{errors:?}");
}

/// The example's caller runs the filter (WasmPlugin mode CLIENT), so its Pods declare the tags
/// of the filter's business events as `extraStatTags`, or they stay inside the metric names; the
/// decision counter's tags are Istio's own, which every sidecar extracts without them.
#[test]
fn callers_declare_the_event_tags_as_extra_stat_tags() {
    let callers: Vec<&Value> = of_kind("Deployment")
        .into_iter()
        .filter(|d| {
            d["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"].is_string()
        })
        .collect();
    assert!(
        !callers.is_empty(),
        "no Deployment carries proxy.istio.io/config"
    );
    for caller in callers {
        let annotation = caller["spec"]["template"]["metadata"]["annotations"]
            ["proxy.istio.io/config"]
            .as_str()
            .unwrap();
        let config: Value = serde_json::from_str(annotation).unwrap_or_else(|e| {
            panic!(
                "{}: proxy.istio.io/config is not JSON: {e}",
                describe(caller)
            )
        });
        assert_eq!(
            config["extraStatTags"],
            json!(cohort_core::telemetry::ISTIO_EXTRA_STAT_TAGS),
            "{}",
            describe(caller)
        );
    }
}

/// Every DestinationRule subset selects the Pods of a Deployment in its namespace, and the
/// Service of the host selects them all.
#[test]
fn subsets_select_deployed_pods_behind_the_service() {
    for rule in of_kind("DestinationRule") {
        let namespace = rule["metadata"]["namespace"].as_str().unwrap();
        let host = rule["spec"]["host"].as_str().unwrap();
        let service = of_kind("Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == host && s["metadata"]["namespace"] == namespace)
            .unwrap_or_else(|| panic!("no Service {namespace}/{host}"));
        let selects = |selector: &Value, labels: &Value| {
            selector
                .as_object()
                .unwrap()
                .iter()
                .all(|(key, value)| &labels[key] == value)
        };
        for subset in rule["spec"]["subsets"].as_array().unwrap() {
            let pods = of_kind("Deployment")
                .into_iter()
                .filter(|d| d["metadata"]["namespace"] == namespace)
                .map(|d| &d["spec"]["template"]["metadata"]["labels"])
                .find(|labels| selects(&subset["labels"], labels))
                .unwrap_or_else(|| {
                    panic!("subset {} selects no Deployment's Pods", subset["name"])
                });
            assert!(
                selects(&service["spec"]["selector"], pods),
                "Service {host} does not select subset {}",
                subset["name"]
            );
        }
    }
}

/// The Prometheus configs load: `promtool check config` as they are (Envoy) or with the
/// Kubernetes discovery swapped for a static target (Istio: Debian's Prometheus is built without
/// Kubernetes discovery), so their relabelling rules are checked too.
#[test]
fn prometheus_configs_pass_promtool() {
    let dir = manifests_dir().join("prometheus");
    promtool_check(&dir.join("envoy.yaml"));
    let envoy = read_yaml(&dir.join("envoy.yaml")).unwrap();
    assert_eq!(
        envoy[0]["scrape_configs"][0]["metrics_path"], "/stats/prometheus",
        "Envoy serves Prometheus text at /stats/prometheus"
    );

    let istio_text = std::fs::read_to_string(dir.join("istio.yaml")).unwrap();
    let istio = read_yaml(&dir.join("istio.yaml")).unwrap();
    let job = &istio[0]["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"], json!([{"role": "pod"}]));
    let keep = &job["relabel_configs"][0];
    assert_eq!(
        (keep["action"].as_str(), keep["source_labels"][0].as_str()),
        (
            Some("keep"),
            Some("__meta_kubernetes_pod_annotation_prometheus_io_scrape")
        ),
        "only Pods that ask to be scraped"
    );
    let discovery = "    kubernetes_sd_configs:\n      - role: pod\n";
    assert_eq!(istio_text.matches(discovery).count(), 1);
    let static_copy = istio_text.replace(
        discovery,
        "    static_configs:\n      - targets: [\"127.0.0.1:15020\"]\n",
    );
    let temp = cohort_tests::TempDir::new("promtool").unwrap();
    let copy = temp.path().join("istio-static.yaml");
    std::fs::write(&copy, static_copy).unwrap();
    promtool_check(&copy);
}

fn promtool_check(path: &Path) {
    let output = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool (Debian's prometheus package has it; scripts/setup installs it): {e}")
        });
    assert!(
        output.status.success(),
        "promtool check config {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Prometheus puts a job's target labels on every series it scrapes; when a series has a label of
/// the same name, the target's wins and the series' own is renamed `exported_<name>`, unless the
/// job sets `honor_labels: true`. The controller's series carry the rollout's `namespace`, which
/// the dashboard's controller panels filter on, so no job that scrapes the controller may set a
/// label its series carry without honoring theirs.
#[test]
fn prometheus_jobs_keep_the_controller_s_own_labels() {
    let pod = controller_pod_discovery_labels();
    let own = controller_metric_labels();
    assert!(own.contains("namespace"), "controller labels: {own:?}");
    let mut scraping = 0;
    for entry in std::fs::read_dir(manifests_dir().join("prometheus")).unwrap() {
        let path = entry.unwrap().path();
        let config = read_yaml(&path).unwrap();
        for job in config[0]["scrape_configs"].as_array().unwrap() {
            if !scrapes_controller(job, &pod) {
                continue;
            }
            scraping += 1;
            // The evaluation is real: a keep rule the controller's Pods fail drops them.
            let refusing = json!({
                "source_labels": ["__meta_kubernetes_namespace"],
                "regex": "elsewhere",
                "action": "keep",
            });
            let mut narrowed = job.clone();
            narrowed["relabel_configs"]
                .as_array_mut()
                .unwrap()
                .push(refusing);
            assert!(!scrapes_controller(&narrowed, &pod));
            if job["honor_labels"] == true {
                continue;
            }
            let clashing: Vec<String> = target_labels(job).intersection(&own).cloned().collect();
            assert!(
                clashing.is_empty(),
                "{}, job {}: sets {clashing:?} on the controller's series, which carry labels of \
                 those names (Prometheus would rename theirs exported_*); honor them \
                 (honor_labels: true) or do not set them",
                path.display(),
                job["job_name"]
            );
        }
    }
    assert!(
        scraping > 0,
        "no Prometheus job scrapes the controller, whose series the dashboard shows"
    );
}

/// The label names of the controller's series.
fn controller_metric_labels() -> BTreeSet<String> {
    cohort_tests::prom::parse(&controller_metrics_page())
        .into_iter()
        .flat_map(|sample| sample.labels.into_keys())
        .collect()
}

/// The labels Prometheus's Kubernetes discovery (`role: pod`) gives the controller's Pods, from
/// the rendered Deployment: what a job's keep and drop rules read. A label left out reads as
/// empty, as in Prometheus.
fn controller_pod_discovery_labels() -> BTreeMap<String, String> {
    let deployment = of_kind("Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "cohort-controller")
        .unwrap();
    let template = &deployment["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    let text = |value: &Value| {
        value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned)
    };
    let mut labels: BTreeMap<String, String> = [
        ("namespace", text(&deployment["metadata"]["namespace"])),
        ("pod_container_name", text(&container["name"])),
        (
            "pod_container_port_name",
            text(&container["ports"][0]["name"]),
        ),
        (
            "pod_container_port_number",
            text(&container["ports"][0]["containerPort"]),
        ),
        ("pod_phase", "Running".to_owned()),
        ("pod_ready", "true".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (format!("__meta_kubernetes_{name}"), value))
    .collect();
    let sanitize = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    for (kind, map) in [
        ("label", &template["metadata"]["labels"]),
        ("annotation", &template["metadata"]["annotations"]),
    ] {
        for (name, value) in map.as_object().into_iter().flatten() {
            let name = sanitize(name);
            labels.insert(format!("__meta_kubernetes_pod_{kind}_{name}"), text(value));
            labels.insert(
                format!("__meta_kubernetes_pod_{kind}present_{name}"),
                "true".to_owned(),
            );
        }
    }
    labels
}

/// Whether a scrape job scrapes the controller: it discovers Pods, and its keep and drop rules
/// keep the controller's. (Static targets are addresses written down: Envoy's admin here.)
/// Rules that rewrite labels are assumed not to rewrite those later keep or drop rules read.
fn scrapes_controller(job: &Value, pod: &BTreeMap<String, String>) -> bool {
    let Some(discovery) = job["kubernetes_sd_configs"].as_array() else {
        return false;
    };
    assert!(
        discovery.iter().all(|d| d["role"] == "pod"),
        "job {}: this test knows only role: pod",
        job["job_name"]
    );
    for rule in job["relabel_configs"].as_array().into_iter().flatten() {
        let action = rule["action"].as_str().unwrap_or("replace");
        if action != "keep" && action != "drop" {
            continue;
        }
        let value: Vec<&str> = rule["source_labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|label| pod.get(label.as_str().unwrap()).map_or("", String::as_str))
            .collect();
        let value = value.join(rule["separator"].as_str().unwrap_or(";"));
        let regex = match &rule["regex"] {
            Value::Null => "(.*)".to_owned(),
            Value::String(regex) => regex.clone(),
            other => other.to_string(),
        };
        if full_match(&regex, &value) != (action == "keep") {
            return false;
        }
    }
    true
}

/// Whether a relabel `regex` (anchored at both ends in Prometheus) matches all of `value`, by the
/// JSON Schema validator's `pattern` (unanchored, hence the anchors added).
fn full_match(regex: &str, value: &str) -> bool {
    jsonschema::is_valid(
        &json!({"type": "string", "pattern": format!("^(?:{regex})$")}),
        &json!(value),
    )
}

/// The labels a job puts on every series it scrapes: `job`, `instance`, static targets'
/// `labels`, and relabel rules' `target_label`s (those starting with `__` never reach storage).
fn target_labels(job: &Value) -> BTreeSet<String> {
    let mut labels = BTreeSet::from(["job".to_owned(), "instance".to_owned()]);
    for targets in job["static_configs"].as_array().into_iter().flatten() {
        labels.extend(
            targets["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, _)| name.clone()),
        );
    }
    for rule in job["relabel_configs"].as_array().into_iter().flatten() {
        assert_ne!(
            rule["action"], "labelmap",
            "job {}: this test does not work out labelmap's labels",
            job["job_name"]
        );
        if let Some(label) = rule["target_label"].as_str() {
            if !label.starts_with("__") {
                labels.insert(label.to_owned());
            }
        }
    }
    labels
}

/// Every metric name the filter and the controller export, and the proxies' served metrics the
/// controller's sources read: the filter's from `cohort_core::telemetry` (histograms as their
/// `_bucket`, `_sum` and `_count` series), the sources' from `cohort_controller::source`, the
/// controller's as its `/metrics` renders them.
fn emitted_metrics() -> BTreeSet<String> {
    use cohort_controller::source::{
        CLUSTER_REQUESTS_TOTAL, CLUSTER_REQUEST_TIME_MS, CLUSTER_RESPONSES_BY_CLASS,
        DECISIONS_TOTAL, ISTIO_REQUESTS_TOTAL, ISTIO_REQUEST_DURATION_MS,
    };
    use cohort_core::telemetry::*;
    let mut names: BTreeSet<String> = [
        DECISIONS_TOTAL,
        ISTIO_REQUESTS_TOTAL,
        CLUSTER_REQUESTS_TOTAL,
        CLUSTER_RESPONSES_BY_CLASS,
        EVENTS_TOTAL,
        CONFIG_GENERATION,
        CONFIG_REJECTED_TOTAL,
        ROLLOUT_WEIGHT_BP,
        ROUTING_HEADER_OVERWRITTEN_TOTAL,
        FORCE_DENIED_TOTAL,
    ]
    .iter()
    .map(|name| (*name).to_owned())
    .collect();
    for suffix in ["_bucket", "_sum", "_count"] {
        for histogram in [ISTIO_REQUEST_DURATION_MS, CLUSTER_REQUEST_TIME_MS] {
            names.insert(format!("{histogram}{suffix}"));
        }
    }
    for line in controller_metrics_page()
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap();
        names.insert(name.to_owned());
    }
    names
}

/// The controller's `/metrics` page with every family it has filled in: a rollout with a gate,
/// a reconcile, a reconcile error and the leader flag.
fn controller_metrics_page() -> String {
    use cohort_rollout::crd::{CanaryRolloutStatus, GateResult, Verdict};
    let metrics = cohort_controller::metrics::Metrics::default();
    let status = CanaryRolloutStatus {
        gates: vec![GateResult {
            gate: "error-rate".into(),
            verdict: Verdict::Pass,
            canary: Some(0.0),
            stable: Some(0.0),
            threshold: Some(0.01),
            canary_samples: 1.0,
            stable_samples: 1.0,
            reason: String::new(),
            sequential: None,
        }],
        ..CanaryRolloutStatus::default()
    };
    metrics.observe_rollout("shop", "checkout", &status);
    metrics.observe_reconcile(std::time::Duration::from_millis(5));
    metrics.count_reconcile_error("target");
    metrics.set_leader(true);
    metrics.render()
}

/// PromQL words that are not metric names.
const PROMQL_WORDS: [&str; 17] = [
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
];

/// The metric names an expression reads: identifiers outside strings, label matchers, range
/// selectors and grouping label lists, that are neither functions (followed by `(`), PromQL
/// words, numbers nor Grafana variables (`$name`).
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| {
        let mut j = from;
        while j < chars.len() && chars[j] != close {
            if chars[j] == '"' {
                j += 1;
                while j < chars.len() && chars[j] != '"' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
            }
            j += 1;
        }
        j + 1
    };
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i = skip_to(i + 1, '"');
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable or a number (with any exponent).
            i += 1;
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next] == ' ' {
                next += 1;
            }
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ];
            if grouping.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
                i = skip_to(next + 1, ')');
            } else if chars.get(next) == Some(&'(') || PROMQL_WORDS.contains(&word.as_str()) {
                // A function or aggregation, or an operator word.
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql_as_grafana_writes_it() {
    let expr = r#"sum by (cohort_version, le) (rate(cohort_x_bucket{cohort_rollout=~"$rollout",a="}"}[$__rate_interval])) / on (v) group_left sum(y_total) > bool 0.5e3 or max(z) == 1"#;
    assert_eq!(metric_names(expr), ["cohort_x_bucket", "y_total", "z"]);
}

/// The Grafana dashboard is valid JSON; each query reads only series the filter or the
/// controller exports or the sources read (what each version served), and between them the
/// panels show all of them.
#[test]
fn grafana_dashboard_queries_only_metrics_we_emit() {
    let path = manifests_dir().join("grafana/cohort-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let emitted = emitted_metrics();
    let mut read = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{:?} reads no metric: {expr}",
                panel["title"]
            );
            for name in names {
                assert!(
                    emitted.contains(&name),
                    "panel {:?} reads {name}, which neither the filter nor the controller exports",
                    panel["title"]
                );
                read.insert(name);
            }
        }
    }
    // Grafana's `label_values(METRIC{SELECTOR}, LABEL)` lists the namespaces and the rollouts
    // (a rollout is its namespace and name: `cohort_namespace` and `cohort_rollout`).
    let mut listed = BTreeSet::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(definition) = variable["definition"].as_str() else {
            continue;
        };
        let (selector, label) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|rest| rest.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: {definition}", variable["name"]));
        let metric = selector.split('{').next().unwrap();
        assert!(
            emitted.contains(metric),
            "the {} variable reads {metric}",
            variable["name"]
        );
        listed.insert(label.trim().to_owned());
    }
    assert_eq!(
        listed,
        BTreeSet::from(["cohort_namespace".to_owned(), "cohort_rollout".to_owned()])
    );
    // Every panel that picks rollouts by name picks their namespace too.
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            if expr.contains("$rollout") {
                assert!(
                    expr.matches("$namespace").count() == expr.matches("$rollout").count(),
                    "panel {:?} selects $rollout without $namespace: {expr}",
                    panel["title"]
                );
            }
        }
    }
    for wanted in [
        "cohort_decisions_total",
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_time_bucket",
        "cohort_events_total",
        "cohort_rollout_weight_bp",
        "cohort_config_rejected_total",
        "cohort_controller_rollout_phase",
        "cohort_controller_gate_verdict",
    ] {
        assert!(read.contains(wanted), "no panel shows {wanted}");
    }
}

/// The controller image runs what the Deployment runs (`cohort controller`), as the user the
/// Deployment sets, built in a separate stage; the filter image holds `plugin.wasm`.
#[test]
fn images_fit_the_manifests() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    assert!(
        stages
            .last()
            .is_some_and(|s| s.contains("distroless") || s.contains("-slim")),
        "runtime stage: {stages:?}"
    );
    assert!(dockerfile
        .contains("cargo build --locked --release -p cohort --no-default-features --bin cohort"));
    assert!(dockerfile.contains("/usr/local/bin/cohort"));
    let deployment = of_kind("Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "cohort-controller")
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let user = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert!(
        dockerfile.contains(&format!("USER {user}:")),
        "the image's USER is the Deployment's runAsUser {user}"
    );
    assert_eq!(pod["containers"][0]["command"][0], "cohort");

    let filter = std::fs::read_to_string(workspace_root().join("filter/Dockerfile")).unwrap();
    assert!(filter.contains("FROM scratch"));
    assert!(filter.contains("COPY cohort_filter.wasm ./plugin.wasm"));
}

/// `scripts/publish-wasm` pushes with oras the *oci* Wasm image variant as Istio's fetcher reads
/// it (istio/istio pkg/wasm/imagefetcher.go, `extractOCIArtifactImage`): exactly two layers, one
/// of them `application/vnd.module.wasm.content.layer.v1+wasm` holding the module as built, and
/// no `--config` (config.json as the manifest's config would leave one layer). Stub `oras` and
/// `docker` first on PATH record what oras was given, and make sure no real push happens.
#[test]
fn publish_wasm_pushes_the_two_layers_istio_reads() {
    use std::os::unix::fs::PermissionsExt;
    const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
    const CONFIG_LAYER: &str = "application/vnd.module.wasm.config.v1+json";
    let temp = cohort_tests::TempDir::new("publish-wasm").unwrap();
    let (bin, record) = (temp.path().join("bin"), temp.path().join("record"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&record).unwrap();
    let stub = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    // publish-wasm runs oras in a folder it removes on exit: keep a copy of each file named.
    stub(
        "oras",
        r#"printf '%s\n' "$@" >"$RECORD/argv"
for arg in "$@"; do
  if [ -f "${arg%:*}" ]; then cp "${arg%:*}" "$RECORD/"; fi
done
"#,
    );
    // With oras found first this never runs; it stands in for a real docker on PATH.
    stub(
        "docker",
        "echo 'stub docker: publish-wasm chose docker over oras' >&2\nexit 1\n",
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path =
        std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&path)))
            .unwrap();
    let output = std::process::Command::new(workspace_root().join("scripts/publish-wasm"))
        .arg("oci://registry.example/cohort-filter:test")
        .env("PATH", path)
        .env("RECORD", &record)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/publish-wasm: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let argv = std::fs::read_to_string(record.join("argv")).unwrap();
    let argv: Vec<&str> = argv.lines().collect();
    assert_eq!(
        argv[..2],
        ["push", "registry.example/cohort-filter:test"],
        "{argv:?}"
    );
    assert!(
        !argv.iter().any(|arg| arg.starts_with("--config")),
        "--config makes config.json the manifest's config, leaving one layer: {argv:?}"
    );
    let layers: Vec<(&str, &str)> = argv[2..]
        .iter()
        .map(|arg| {
            arg.rsplit_once(':')
                .unwrap_or_else(|| panic!("{arg}: not FILE:MEDIATYPE ({argv:?})"))
        })
        .collect();
    assert_eq!(layers.len(), 2, "Istio needs exactly two layers: {argv:?}");
    let media_types: BTreeSet<&str> = layers.iter().map(|(_, media_type)| *media_type).collect();
    assert_eq!(media_types, BTreeSet::from([CONFIG_LAYER, WASM_LAYER]));
    let (file, _) = layers.iter().find(|(_, t)| *t == WASM_LAYER).unwrap();
    let pushed = std::fs::read(record.join(file)).unwrap();
    let built = std::fs::read(workspace_root().join("target/cohort_filter.wasm")).unwrap();
    assert!(pushed.starts_with(b"\0asm"), "{file} is not a Wasm module");
    assert!(
        pushed == built,
        "{file} differs from target/cohort_filter.wasm"
    );
}

/// The Envoy quickstart's rollout fits our CRD, passes `validate_spec`, and drives a rollout
/// the example filter config has (the one the quickstart renders into the ECDS file).
#[test]
fn envoy_quickstart_rollout_fits_the_crd_and_the_example_config() {
    let path = manifests_dir().join("envoy/rollout.yaml");
    let object = read_yaml(&path).unwrap().remove(0);
    if let Err(errors) = validate_against_crd(&cohort_crd_path(), &object) {
        panic!(
            "{} does not fit the CRD:\n{}",
            path.display(),
            errors.join("\n")
        );
    }
    let rollout: CanaryRollout = serde_json::from_value(object).unwrap();
    let name = rollout.metadata.name.as_deref().unwrap();
    assert_eq!(validate_spec(&rollout.spec, name), Ok(()));
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(manifests_dir().join("envoy/cohort-config.example.json")).unwrap(),
    )
    .unwrap();
    assert!(
        example["rollouts"][name].is_object(),
        "cohort-config.example.json has no rollout {name}"
    );
}
