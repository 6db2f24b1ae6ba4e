//! The operator's verbs: `cohort status` and `cohort promote|abort|pause|resume|retry`. Each is
//! a thin kube call around a pure function (the table, the patch body, the report), which the
//! tests cover.

pub mod gesture;
pub mod status;

use clap::Args;
use kube::Client;

pub use gesture::Gesture;

/// Which rollouts a command looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One rollout.
    One {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Every rollout in a namespace.
    Namespace(String),
    /// Every rollout in the cluster.
    AllNamespaces,
}

/// Failures of the CLI's calls to the API server.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The named CanaryRollout does not exist.
    #[error(
        "no CanaryRollout {name:?} in namespace {namespace:?} (list them with `cohort status -A`)"
    )]
    NotFound {
        /// Namespace looked in.
        namespace: String,
        /// Name looked for.
        name: String,
    },
    /// No kubeconfig or in-cluster config could be loaded.
    #[error("cannot reach Kubernetes: no usable kubeconfig or in-cluster config")]
    Config(#[source] kube::Error),
    /// The API server refused or failed the call.
    #[error("the Kubernetes API call failed")]
    Kube(#[from] kube::Error),
}

impl CliError {
    /// Names the rollout when the API server says it does not exist.
    pub fn from_kube(error: kube::Error, namespace: &str, name: &str) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 404 => CliError::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            _ => CliError::Kube(error),
        }
    }
}

/// Namespace selection shared by the verbs.
#[derive(Debug, Clone, Args)]
pub struct NamespaceArgs {
    /// Namespace; defaults to the kubeconfig context's (or the Pod's) namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// `cohort status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// One rollout; all rollouts in the namespace when omitted.
    pub name: Option<String>,
    #[command(flatten)]
    pub namespace: NamespaceArgs,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["name", "namespace"])]
    pub all_namespaces: bool,
    /// Render again every 2 seconds until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
}

/// `cohort promote|abort|pause|resume|retry`.
#[derive(Debug, Clone, Args)]
pub struct GestureArgs {
    /// The CanaryRollout.
    pub name: String,
    #[command(flatten)]
    pub namespace: NamespaceArgs,
}

/// A client from the kubeconfig (or the in-cluster config).
pub async fn client() -> Result<Client, CliError> {
    Client::try_default().await.map_err(CliError::Config)
}

/// Runs `cohort status`.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let client = client().await?;
    let namespace = || {
        args.namespace
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned())
    };
    let scope = match (&args.name, args.all_namespaces) {
        (_, true) => Scope::AllNamespaces,
        (Some(name), false) => Scope::One {
            namespace: namespace(),
            name: name.clone(),
        },
        (None, false) => Scope::Namespace(namespace()),
    };
    status::run(client, scope, args.watch).await
}

/// Runs one of the gestures and prints what was done.
pub async fn gesture(gesture: Gesture, args: GestureArgs) -> Result<(), CliError> {
    let client = client().await?;
    let namespace = args
        .namespace
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let report = gesture::run(client, &namespace, &args.name, gesture).await?;
    print!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};

    use super::*;

    fn rollout_json(namespace: &str, name: &str) -> Value {
        json!({
            "apiVersion": "cohort.dev/v1alpha1", "kind": "CanaryRollout",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"target": {"wasmPlugin": {"name": "cohort"}}, "hosts": [name], "paused": true},
            "status": {"phase": "Progressing", "stepIndex": 1, "weightBp": 500}
        })
    }

    /// A client whose API server is `serve`: it gets each request (method, path and query, body)
    /// and returns the status code and JSON body to answer.
    fn client_answering(
        serve: impl Fn(&str, &str, Value) -> (u16, Value) + Send + 'static,
    ) -> (Client, tokio::task::JoinHandle<usize>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut answered = 0;
            while let Some((request, respond)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request.uri().to_string();
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned());
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                if method == "PATCH" {
                    assert_eq!(
                        content_type.as_deref(),
                        Some("application/merge-patch+json")
                    );
                }
                let (status, reply) = serve(&method, &uri, body);
                let response = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                respond.send_response(response);
                answered += 1;
            }
            answered
        });
        (Client::new(service, "default"), server)
    }

    #[tokio::test]
    async fn a_gesture_is_one_merge_patch_of_the_named_rollout() {
        let (client, server) = client_answering(|method, uri, body| {
            assert_eq!(method, "PATCH");
            assert_eq!(
                uri,
                "/apis/cohort.dev/v1alpha1/namespaces/shop/canaryrollouts/checkout?&fieldManager=cohort-cli"
            );
            assert_eq!(body, json!({"spec": {"paused": true}}));
            (200, rollout_json("shop", "checkout"))
        });
        let report = gesture::run(client, "shop", "checkout", Gesture::Pause)
            .await
            .unwrap();
        assert!(
            report.starts_with("shop/checkout: set spec.paused=true\n"),
            "{report}"
        );
        assert_eq!(server.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_missing_rollout_is_named_in_the_error() {
        let (client, _server) = client_answering(|_, _, _| {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "canaryrollouts.cohort.dev \"nope\" not found", "reason": "NotFound", "code": 404});
            (404, status)
        });
        let error = gesture::run(client, "shop", "nope", Gesture::Abort)
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "no CanaryRollout \"nope\" in namespace \"shop\" (list them with `cohort status -A`)"
        );
    }

    #[tokio::test]
    async fn status_lists_one_namespace_or_all_sorted() {
        let (client, server) = client_answering(|method, uri, _| {
            assert_eq!(method, "GET");
            let items = match uri {
                "/apis/cohort.dev/v1alpha1/canaryrollouts?" => {
                    vec![rollout_json("shop", "search"), rollout_json("blog", "feed")]
                }
                "/apis/cohort.dev/v1alpha1/namespaces/shop/canaryrollouts?" => {
                    vec![
                        rollout_json("shop", "search"),
                        rollout_json("shop", "checkout"),
                    ]
                }
                "/apis/cohort.dev/v1alpha1/namespaces/shop/canaryrollouts/checkout" => {
                    return (200, rollout_json("shop", "checkout"));
                }
                other => panic!("unexpected request {other}"),
            };
            let list = json!({"apiVersion": "cohort.dev/v1alpha1", "kind": "CanaryRolloutList",
                "metadata": {"resourceVersion": "1"}, "items": items});
            (200, list)
        });
        let names = |rollouts: Vec<cohort_rollout::crd::CanaryRollout>| -> Vec<String> {
            rollouts
                .iter()
                .map(|r| {
                    format!(
                        "{}/{}",
                        r.metadata.namespace.clone().unwrap(),
                        r.metadata.name.clone().unwrap()
                    )
                })
                .collect()
        };
        let all = status::fetch(&client, &Scope::AllNamespaces).await.unwrap();
        assert_eq!(names(all), ["blog/feed", "shop/search"]);
        let shop = status::fetch(&client, &Scope::Namespace("shop".into()))
            .await
            .unwrap();
        assert_eq!(names(shop), ["shop/checkout", "shop/search"]);
        let one = Scope::One {
            namespace: "shop".into(),
            name: "checkout".into(),
        };
        assert_eq!(
            names(status::fetch(&client, &one).await.unwrap()),
            ["shop/checkout"]
        );
        drop(client);
        assert_eq!(server.await.unwrap(), 3);
    }
}
