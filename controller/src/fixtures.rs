//! Test-only: a scripted Kubernetes API server (tower-test's mock service behind a real
//! `kube::Client`), a fake metric source and a fixed clock.
//!
//! A test lists the requests it expects as [`Call`]s. [`ApiServer::expect`] answers them in
//! order, asserting each one's method, path, query and the key parts of its body; a request
//! out of script fails the test, a missing one fails it by timeout, and a request after the
//! script blocks the reconcile until its timeout fails the test too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Scripts are short lists built once per test: variant size does not matter.
#![allow(clippy::large_enum_variant)]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use crate::driver::Clock;
use crate::source::{BoxFuture, MetricSource, SamplesByRollout, SeriesRequest};
use cohort_rollout::crd::{CanaryRollout, CanaryRolloutStatus};
use cohort_rollout::evaluate::Samples;

/// Namespace of the test rollout and its WasmPlugin.
pub const NAMESPACE: &str = "shop";
/// The test rollout's name.
pub const ROLLOUT: &str = "checkout";
/// The WasmPlugin the test rollout targets.
pub const PLUGIN: &str = "cohort";
/// Longest a scripted exchange may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(2);

const WASM_PLUGIN_PATH: &str =
    "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/cohort";
const STATUS_PATH: &str =
    "/apis/cohort.dev/v1alpha1/namespaces/shop/canaryrollouts/checkout/status";
const ROLLOUT_PATH: &str = "/apis/cohort.dev/v1alpha1/namespaces/shop/canaryrollouts/checkout";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const SECRETS_PATH: &str = "/api/v1/namespaces/shop/secrets";
const DEPLOYMENTS_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments";
const AUTOSCALERS_PATH: &str = "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers";
const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/cohort-system/leases";

/// One request the controller must make next, and the answer it gets.
pub enum Call {
    /// GET the WasmPlugin; it exists with this `spec.pluginConfig`.
    GetWasmPlugin(Value),
    /// GET the WasmPlugin; it is this whole object (managedFields and all).
    GetWasmPluginObject(Value),
    /// GET the WasmPlugin; 404.
    WasmPluginMissing,
    /// Server-side apply on the WasmPlugin with our field manager, not forced, whose body is
    /// exactly `body` (and fits Istio's schema); the answer is the WasmPlugin `answer`.
    ApplyWasmPluginExactly {
        /// The whole body expected.
        body: Value,
        /// The WasmPlugin after the apply.
        answer: Value,
    },
    /// A JSON patch of the CanaryRollout (no field manager) that is exactly `patch`.
    PatchRollout(Value),
    /// Server-side apply on the WasmPlugin carrying our rollout at this weight.
    ApplyWasmPlugin {
        /// `pluginConfig.rollouts.checkout.weightBp` the body must carry.
        weight_bp: u32,
        /// Answer 409 (a field manager conflict) instead of 200.
        conflict: bool,
    },
    /// Server-side apply of status; the check sees the status sent.
    ApplyStatus(Box<dyn FnOnce(&CanaryRolloutStatus) + Send>),
    /// POST an Event of this type (`Normal`/`Warning`) and reason.
    Event(&'static str, &'static str),
    /// PATCH an Event this process already posted with this type and reason: kube-runtime's
    /// Recorder counts a repeat in the Event's `series` instead of posting a new one.
    EventRepeated(&'static str, &'static str),
    /// GET the Secret `name` in `shop`; it holds `data[key] = value` (`None`: 404).
    GetSecret {
        /// The Secret's name.
        name: &'static str,
        /// Its one key.
        key: &'static str,
        /// The key's value; `None` answers 404.
        value: Option<&'static str>,
    },
    /// A request that gets no answer: the API server hangs (the client's timeout must act).
    Hang,
    /// Any request (asserted to be of this method and path) answered with a 500.
    ServerError(Method, &'static str),
    /// GET the Deployment `name` in `shop`; it is this object (`None`: 404).
    GetDeployment(&'static str, Option<Value>),
    /// LIST the HorizontalPodAutoscalers in `shop`; these are they.
    ListAutoscalers(Vec<Value>),
    /// A JSON merge patch of the Deployment `name` that is exactly `{"spec": {"replicas": N}}`
    /// (and fits apps/v1 Deployment).
    ScaleDeployment {
        /// The Deployment.
        name: &'static str,
        /// The replicas the body must set.
        replicas: i32,
    },
    /// A JSON patch of the Deployment `name` that replaces `/spec/template` with exactly
    /// `template`, and nothing else (the template fits core/v1 PodTemplateSpec).
    CopyTemplate {
        /// The Deployment.
        name: &'static str,
        /// The template the body must carry.
        template: Value,
    },
    /// GET the Lease `cohort-controller`; this is what it is (`None`: 404).
    GetLease(Option<Lease>),
    /// POST (create) the Lease held by this identity.
    CreateLease(&'static str),
    /// PUT (replace) the Lease held by this identity (`None`: released), sent with this
    /// resourceVersion; answer 409 when `conflict`.
    ReplaceLease {
        /// Expected `holderIdentity`.
        holder: Option<&'static str>,
        /// Expected `metadata.resourceVersion`.
        resource_version: &'static str,
        /// Answer 409.
        conflict: bool,
    },
}

impl Call {
    /// A status check, boxed.
    pub fn status(check: impl FnOnce(&CanaryRolloutStatus) + Send + 'static) -> Call {
        Call::ApplyStatus(Box::new(check))
    }

    /// Asserts `request` is this call and builds the answer.
    async fn answer(self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let seen = format!("{method} {path}?{query}");
        let (group, resource, verb) = rbac_call(&method, &path, &query);
        assert!(
            crate::rbac::is_used(&group, &resource, verb),
            "{seen} is {group}/{resource}:{verb}, which crate::rbac::API_CALLS does not list"
        );
        match self {
            Call::GetSecret { name, key, value } => {
                assert_eq!(
                    (method, path),
                    (Method::GET, format!("{SECRETS_PATH}/{name}")),
                    "{seen}"
                );
                match value {
                    Some(value) => ok(json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": name, "namespace": NAMESPACE},
                        "data": {key: base64(value.as_bytes())}
                    })),
                    None => failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("secrets \"{name}\" not found"),
                    ),
                }
            }
            Call::Hang => unreachable!("never answered"),
            Call::ServerError(expected_method, expected_path) => {
                assert_eq!(
                    (method, path.as_str()),
                    (expected_method, expected_path),
                    "{seen}"
                );
                failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "Internal error occurred: etcdserver: request timed out",
                )
            }
            Call::GetWasmPlugin(plugin_config) => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::GET, WASM_PLUGIN_PATH),
                    "{seen}"
                );
                ok(wasm_plugin(plugin_config))
            }
            Call::GetWasmPluginObject(plugin) => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::GET, WASM_PLUGIN_PATH),
                    "{seen}"
                );
                ok(plugin)
            }
            Call::ApplyWasmPluginExactly {
                body: expected,
                answer,
            } => {
                assert_wasm_plugin_apply(&parts, &seen);
                assert_eq!(body, expected, "{seen}");
                if let Some(schema) = wasm_plugin_schema() {
                    check_schema(schema, &body, "");
                }
                ok(answer)
            }
            Call::PatchRollout(expected) => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::PATCH, ROLLOUT_PATH),
                    "{seen}"
                );
                assert!(!query.contains("fieldManager"), "{seen}");
                assert_eq!(
                    parts.headers.get(http::header::CONTENT_TYPE).unwrap(),
                    "application/json-patch+json"
                );
                assert_eq!(body, expected, "{seen}");
                ok(rollout_json())
            }
            Call::WasmPluginMissing => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::GET, WASM_PLUGIN_PATH),
                    "{seen}"
                );
                failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "wasmplugins.extensions.istio.io \"cohort\" not found",
                )
            }
            Call::ApplyWasmPlugin {
                weight_bp,
                conflict,
            } => {
                assert_wasm_plugin_apply(&parts, &seen);
                check_wasm_plugin_apply(&body, weight_bp);
                if conflict {
                    failure(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.pluginConfig.anonymous.mode",
                    )
                } else {
                    ok(wasm_plugin(body["spec"]["pluginConfig"].clone()))
                }
            }
            Call::ApplyStatus(check) => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::PATCH, STATUS_PATH),
                    "{seen}"
                );
                assert!(query.contains("force=true"), "{seen}");
                assert!(query.contains("fieldManager=cohort-controller"), "{seen}");
                assert_eq!(body["apiVersion"], "cohort.dev/v1alpha1");
                assert_eq!(body["kind"], "CanaryRollout");
                // What the API server would check: the status fits our CRD's schema.
                check_schema(status_schema(), &body["status"], ".status");
                let status: CanaryRolloutStatus =
                    serde_json::from_value(body["status"].clone()).unwrap();
                check(&status);
                let mut rollout = rollout_json();
                rollout["status"] = body["status"].clone();
                ok(rollout)
            }
            Call::Event(kind, reason) => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::POST, EVENTS_PATH),
                    "{seen}"
                );
                assert_eq!(
                    (body["type"].as_str(), body["reason"].as_str()),
                    (Some(kind), Some(reason)),
                    "event {}",
                    body["note"]
                );
                assert_eq!(body["regarding"]["kind"], "CanaryRollout");
                assert_eq!(body["regarding"]["name"], ROLLOUT);
                assert_eq!(body["reportingController"], "cohort-controller");
                ok(body)
            }
            Call::GetDeployment(name, deployment) => {
                assert_eq!(
                    (method, path),
                    (Method::GET, format!("{DEPLOYMENTS_PATH}/{name}")),
                    "{seen}"
                );
                match deployment {
                    Some(deployment) => ok(deployment),
                    None => failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("deployments.apps \"{name}\" not found"),
                    ),
                }
            }
            Call::ListAutoscalers(items) => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::GET, AUTOSCALERS_PATH),
                    "{seen}"
                );
                ok(json!({
                    "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
                    "metadata": {"resourceVersion": "1"}, "items": items
                }))
            }
            Call::ScaleDeployment { name, replicas } => {
                assert_eq!(
                    (method, path),
                    (Method::PATCH, format!("{DEPLOYMENTS_PATH}/{name}")),
                    "{seen}"
                );
                assert_eq!(
                    parts.headers.get(http::header::CONTENT_TYPE).unwrap(),
                    "application/merge-patch+json"
                );
                assert_eq!(body, json!({"spec": {"replicas": replicas}}), "{seen}");
                assert_fits::<k8s_openapi::api::apps::v1::Deployment>(&body, "Deployment");
                ok(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": NAMESPACE}}))
            }
            Call::CopyTemplate { name, template } => {
                assert_eq!(
                    (method, path),
                    (Method::PATCH, format!("{DEPLOYMENTS_PATH}/{name}")),
                    "{seen}"
                );
                assert_eq!(
                    parts.headers.get(http::header::CONTENT_TYPE).unwrap(),
                    "application/json-patch+json"
                );
                assert_eq!(
                    body,
                    json!([{"op": "replace", "path": "/spec/template", "value": template}]),
                    "{seen}"
                );
                assert_fits::<k8s_openapi::api::core::v1::PodTemplateSpec>(
                    &body[0]["value"],
                    "Deployment.spec.template",
                );
                ok(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": NAMESPACE}}))
            }
            Call::EventRepeated(kind, reason) => {
                assert_eq!(method, Method::PATCH, "{seen}");
                assert!(path.starts_with(&format!("{EVENTS_PATH}/")), "{seen}");
                assert_eq!(
                    (body["type"].as_str(), body["reason"].as_str()),
                    (Some(kind), Some(reason)),
                    "event {}",
                    body["note"]
                );
                assert!(body["series"]["count"].as_i64().unwrap() >= 2, "{seen}");
                assert_eq!(body["regarding"]["name"], ROLLOUT);
                ok(body)
            }
            Call::GetLease(lease) => {
                let expected = format!("{LEASE_PATH}/cohort-controller");
                assert_eq!(
                    (method, path.as_str()),
                    (Method::GET, expected.as_str()),
                    "{seen}"
                );
                match lease {
                    Some(lease) => ok(serde_json::to_value(lease).unwrap()),
                    None => failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "leases \"cohort-controller\" not found",
                    ),
                }
            }
            Call::CreateLease(holder) => {
                assert_eq!(
                    (method, path.as_str()),
                    (Method::POST, LEASE_PATH),
                    "{seen}"
                );
                assert_eq!(body["metadata"]["name"], "cohort-controller");
                assert_eq!(body["spec"]["holderIdentity"], holder);
                assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
                ok(body)
            }
            Call::ReplaceLease {
                holder,
                resource_version,
                conflict,
            } => {
                let expected = format!("{LEASE_PATH}/cohort-controller");
                assert_eq!(
                    (method, path.as_str()),
                    (Method::PUT, expected.as_str()),
                    "{seen}"
                );
                assert_eq!(body["metadata"]["resourceVersion"], resource_version);
                assert_eq!(body["spec"]["holderIdentity"].as_str(), holder);
                if conflict {
                    failure(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    )
                } else {
                    ok(body)
                }
            }
        }
    }
}

/// The API server side of a mock client; it keeps every request it saw (`METHOD path?query`
/// and the body as text), for tests that check what was sent.
pub struct ApiServer(
    Handle<Request<Body>, Response<Body>>,
    Arc<Mutex<Vec<String>>>,
);

impl ApiServer {
    /// Answers `calls` in order, then gives the handle back for the next script.
    pub fn expect(self, calls: Vec<Call>) -> JoinHandle<ApiServer> {
        let (mut handle, seen) = (self.0, self.1);
        tokio::spawn(async move {
            for (index, call) in calls.into_iter().enumerate() {
                let (request, respond) = tokio::time::timeout(TIMEOUT, handle.next_request())
                    .await
                    .unwrap_or_else(|_| panic!("expected call #{index} never came"))
                    .expect("the client is gone");
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                seen.lock().unwrap().push(format!(
                    "{} {}\n{}",
                    parts.method,
                    parts.uri,
                    String::from_utf8_lossy(&bytes)
                ));
                let request = Request::from_parts(parts, Body::from(bytes.to_vec()));
                if matches!(call, Call::Hang) {
                    // Never answered: the client waits until its caller gives up.
                    tokio::spawn(async move {
                        let _unanswered = respond;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                respond.send_response(call.answer(request).await);
            }
            ApiServer(handle, seen)
        })
    }

    /// Every request seen so far, each as `METHOD uri` and its body.
    pub fn requests(&self) -> Vec<String> {
        self.1.lock().unwrap().clone()
    }
}

/// A kube client talking to a scripted API server.
pub fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (
        Client::new(service, "default"),
        ApiServer(handle, Arc::new(Mutex::new(Vec::new()))),
    )
}

/// The RBAC (group, resource, verb) of a request to the API server.
pub fn rbac_call(method: &Method, path: &str, query: &str) -> (String, String, &'static str) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... (core) or /apis/GROUP/VERSION/...
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {path}"),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected API path {path}"),
    };
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => panic!("unexpected method {other} on {path}"),
    };
    (group.to_owned(), resource, verb)
}

/// Standard base64, as the API server encodes a Secret's data.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Waits for a script to finish (every call made), failing on timeout.
pub async fn finished(script: JoinHandle<ApiServer>) -> ApiServer {
    tokio::time::timeout(TIMEOUT, script)
        .await
        .expect("the script did not finish: a call is missing")
        .expect("the script failed")
}

fn ok(body: Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&status).unwrap()))
        .unwrap()
}

/// The WasmPlugin as the API server would return it.
pub fn wasm_plugin(plugin_config: Value) -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": PLUGIN, "namespace": NAMESPACE, "resourceVersion": "7"},
        "spec": {
            "url": "oci://ghcr.io/example/cohort:1",
            "match": [{"mode": "CLIENT"}],
            "pluginConfig": plugin_config
        }
    })
}

fn rollout_json() -> Value {
    json!({
        "apiVersion": "cohort.dev/v1alpha1",
        "kind": "CanaryRollout",
        "metadata": {"name": ROLLOUT, "namespace": NAMESPACE},
        "spec": {"target": {"wasmPlugin": {"name": PLUGIN}}, "hosts": ["checkout"]}
    })
}

/// A server-side apply of the WasmPlugin, as the rollout `shop/checkout` sends it: its own field
/// manager, never forced.
fn assert_wasm_plugin_apply(parts: &http::request::Parts, seen: &str) {
    let query = parts.uri.query().unwrap_or_default();
    assert_eq!(
        (&parts.method, parts.uri.path()),
        (&Method::PATCH, WASM_PLUGIN_PATH),
        "{seen}"
    );
    assert!(
        query.contains("fieldManager=cohort.dev%2Fshop.checkout"),
        "{seen}"
    );
    assert!(
        !query.contains("force"),
        "WasmPlugin applies are never forced: {seen}"
    );
    assert_eq!(
        parts.headers.get(http::header::CONTENT_TYPE).unwrap(),
        "application/apply-patch+yaml"
    );
}

/// The apply body carries type, name and our `pluginConfig` fields only, at `weight_bp`, and
/// fits Istio's WasmPlugin schema.
fn check_wasm_plugin_apply(body: &Value, weight_bp: u32) {
    assert_eq!(body["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(body["kind"], "WasmPlugin");
    assert_eq!(
        body["metadata"],
        json!({"name": PLUGIN, "namespace": NAMESPACE})
    );
    let spec = body["spec"].as_object().unwrap();
    assert_eq!(
        spec.keys().collect::<Vec<_>>(),
        ["pluginConfig"],
        "only pluginConfig is applied"
    );
    let plugin_config = &body["spec"]["pluginConfig"];
    let rollouts = plugin_config["rollouts"].as_object().unwrap();
    assert_eq!(
        rollouts.keys().collect::<Vec<_>>(),
        [ROLLOUT],
        "only our entry is applied"
    );
    assert_eq!(rollouts[ROLLOUT]["weightBp"], weight_bp);
    assert_eq!(plugin_config["version"], 1);
    // What we apply on its own is a config the filter accepts.
    cohort_core::config::parse(&serde_json::to_vec(plugin_config).unwrap()).unwrap();
    if let Some(schema) = wasm_plugin_schema() {
        check_schema(schema, body, "");
    }
}

/// Istio 1.30's WasmPlugin `openAPIV3Schema` from `../shared/schemas`; `None` (with a note)
/// when that checkout is absent, except under `CI=true`, where its absence fails the test.
fn wasm_plugin_schema() -> Option<&'static Value> {
    static SCHEMA: OnceLock<Option<Value>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/schemas/istio-wasmplugin-crd.yaml"
            );
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                    eprintln!("skipping the WasmPlugin schema check: {path}: {error}");
                    return None;
                }
                Err(error) => panic!("{path}: {error} (required under CI=true)"),
            };
            let crd: Value = serde_saphyr::from_str(&text).unwrap();
            assert_eq!(crd["spec"]["group"], crate::target::wasmplugin::GROUP);
            assert_eq!(
                crd["spec"]["names"]["kind"],
                crate::target::wasmplugin::KIND
            );
            assert_eq!(
                crd["spec"]["names"]["plural"],
                crate::target::wasmplugin::PLURAL
            );
            let version = crd["spec"]["versions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == crate::target::wasmplugin::VERSION)
                .expect("the CRD has our version");
            assert_eq!(version["served"], true, "our WasmPlugin version is served");
            Some(version["schema"]["openAPIV3Schema"].clone())
        })
        .as_ref()
}

/// The `status` schema of the CanaryRollout CRD the controller is built with.
fn status_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(CanaryRollout::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"].clone()
    })
}

/// A structural check of a server-side apply body: every field is declared (or under
/// `x-kubernetes-preserve-unknown-fields`), with the declared type and enum. `required` is not
/// checked: an apply body is partial, the API server validates the merged object.
fn check_schema(schema: &Value, value: &Value, path: &str) {
    if let Some(kind) = schema["type"].as_str() {
        let fits = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        assert!(fits, "{path}: {value} is not of type {kind}");
    }
    if let Some(allowed) = schema["enum"].as_array() {
        assert!(
            allowed.contains(value),
            "{path}: {value} is not one of {allowed:?}"
        );
    }
    let open = schema["x-kubernetes-preserve-unknown-fields"] == true;
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                let at = format!("{path}.{key}");
                match schema["properties"].get(key) {
                    Some(declared) => check_schema(declared, field, &at),
                    // Every object has these at its root.
                    None if path.is_empty()
                        && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) => {}
                    None => assert!(open, "{at} is not in the schema"),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_schema(&schema["items"], item, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// `body` is a `T` as Kubernetes defines it: it reads as one, and every field it carries comes
/// back from the typed value unchanged (k8s-openapi drops fields it does not know, so a typo or a
/// field of the wrong place would be lost, and fail here).
pub fn assert_fits<T: serde::de::DeserializeOwned + serde::Serialize>(body: &Value, what: &str) {
    let typed: T = serde_json::from_value(body.clone())
        .unwrap_or_else(|error| panic!("{what}: {body} does not read as one: {error}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_kept(body, &back, what);
}

fn assert_kept(sent: &Value, typed: &Value, path: &str) {
    match (sent, typed) {
        (Value::Object(sent), Value::Object(typed)) => {
            for (key, value) in sent {
                let at = format!("{path}.{key}");
                let kept = typed
                    .get(key)
                    .unwrap_or_else(|| panic!("{at} is not a field of {path}"));
                assert_kept(value, kept, &at);
            }
        }
        (Value::Array(sent), Value::Array(typed)) => {
            assert_eq!(sent.len(), typed.len(), "{path}");
            for (index, (sent, typed)) in sent.iter().zip(typed).enumerate() {
                assert_kept(sent, typed, &format!("{path}[{index}]"));
            }
        }
        (sent, typed) => assert_eq!(sent, typed, "{path}"),
    }
}

/// A metric source answering canned samples, counting its calls and the windows asked for.
#[derive(Default)]
pub struct CannedSource {
    samples: Mutex<Samples>,
    calls: AtomicUsize,
    windows: std::sync::Mutex<Vec<Duration>>,
}

impl CannedSource {
    /// Answers `samples` for every requested rollout.
    pub fn new(samples: Samples) -> Arc<Self> {
        Arc::new(CannedSource {
            samples: Mutex::new(samples),
            ..CannedSource::default()
        })
    }

    /// Answers `samples` from now on.
    pub fn set(&self, samples: Samples) {
        *self.samples.lock().unwrap() = samples;
    }

    /// The windows it was asked for, in order.
    pub fn windows(&self) -> Vec<Duration> {
        self.windows.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// How often it was asked.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl MetricSource for CannedSource {
    fn samples<'a>(
        &'a self,
        window: Duration,
        rollouts: &'a [SeriesRequest],
    ) -> BoxFuture<'a, SamplesByRollout> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut windows) = self.windows.lock() {
            windows.push(window);
        }
        let answer = rollouts
            .iter()
            .map(|request| {
                let samples = self.samples.lock().unwrap().clone();
                (request.key(), samples)
            })
            .collect();
        Box::pin(async move { answer })
    }
}

/// A `Write` into a shared buffer, for capturing logs.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every log line (any level, any target) of the current thread goes here until the guard
    /// drops.
    pub fn logs(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // Callsites first hit while no subscriber wanted them (in another test's thread) keep
        // "never" as their cached interest: ask them again, now that this one wants everything.
        tracing::callsite::rebuild_interest_cache();
        guard
    }

    /// What was logged.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A clock stopped at one instant.
pub struct FixedClock(pub Timestamp);

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

/// A test rollout in namespace `shop`, carrying the controller's finalizer (as every rollout
/// does once the controller has seen it).
pub fn rollout(
    spec: cohort_rollout::crd::CanaryRolloutSpec,
    status: Option<CanaryRolloutStatus>,
) -> CanaryRollout {
    let mut rollout = CanaryRollout::new(ROLLOUT, spec);
    rollout.metadata.namespace = Some(NAMESPACE.to_owned());
    rollout.metadata.generation = Some(3);
    rollout.metadata.uid = Some("0b1c2d3e".to_owned());
    rollout.metadata.finalizers = Some(vec![crate::reconciler::FINALIZER.to_owned()]);
    rollout.status = status;
    rollout
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A directory named after `tag`, this process and the time.
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "cohort-{tag}-{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// manifests/envoy/ecds.yaml with `config` as the cohort filter's configuration.
pub fn ecds_document(config: &str) -> String {
    include_str!("../../manifests/envoy/ecds.yaml")
        .replace("${WASM_PATH}", "/opt/cohort_filter.wasm")
        .replace("${COHORT_CONFIG}", &config.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuses(schema: &Value, body: Value) -> String {
        let schema = schema.clone();
        let panic = std::panic::catch_unwind(move || check_schema(&schema, &body, ""))
            .expect_err("the schema check must refuse this body");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn the_status_check_refuses_what_the_crd_does_not_declare() {
        let written = json!({"phase": "Succeeded", "workload": {"revision": "d3d9d970144e36e5"}});
        check_schema(status_schema(), &written, "");
        let typo = json!({"workload": {"revison": "x"}});
        assert!(refuses(status_schema(), typo).contains(".workload.revison is not in the schema"));
        let phase = json!({"phase": "Done"});
        assert!(refuses(status_schema(), phase).contains("is not one of"));
    }

    #[test]
    fn the_type_check_refuses_unknown_and_mistyped_fields() {
        use k8s_openapi::api::apps::v1::Deployment;
        assert_fits::<Deployment>(&json!({"spec": {"replicas": 3}}), "Deployment");
        let refused = |body: Value| {
            std::panic::catch_unwind(move || assert_fits::<Deployment>(&body, "Deployment"))
                .expect_err("the type check must refuse this body");
        };
        refused(json!({"spec": {"replica": 3}}));
        refused(json!({"spec": {"replicas": "3"}}));
        refused(json!({"replicas": 3}));
    }

    #[test]
    fn the_schema_check_refuses_what_the_api_server_would() {
        // Absent only outside CI (under CI=true its absence fails here).
        let Some(schema) = wasm_plugin_schema() else {
            return;
        };
        let typo =
            json!({"apiVersion": "extensions.istio.io/v1alpha1", "spec": {"pluginConfg": {}}});
        assert!(refuses(schema, typo).contains(".spec.pluginConfg is not in the schema"));
        let list = json!({"spec": {"pluginConfig": []}});
        assert!(refuses(schema, list).contains("is not of type object"));
        let mode = json!({"spec": {"match": [{"mode": "SIDEWAYS"}]}});
        assert!(refuses(schema, mode).contains("is not one of"));
    }
}
