//! Releases end to end (`spec.workload`) against the scripted API server: every request asserted,
//! Deployment reads and writes included.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use cohort_rollout::crd::{WorkloadSpec, WorkloadStatus};
use cohort_rollout::workload::revision;

const STABLE: &str = "checkout-stable";
const CANARY: &str = "checkout-canary";

/// [`spec`] running `checkout-stable` and `checkout-canary`.
fn release_spec() -> CanaryRolloutSpec {
    let mut spec = spec();
    spec.workload = Some(WorkloadSpec {
        stable: STABLE.into(),
        canary: CANARY.into(),
        scale_down_delay: "30s".into(),
    });
    spec
}

fn pod_template(image: &str, version: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(
                [("app", "checkout"), ("version", version)]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "checkout".into(),
                image: Some(image.into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
    }
}

/// A Deployment as the API server returns it: `image` on `replicas` pods, `available` of them
/// available, its controller caught up unless `behind`.
#[derive(Clone)]
struct Shape {
    name: &'static str,
    version: &'static str,
    image: &'static str,
    replicas: i32,
    available: i32,
    behind: bool,
    stalled: bool,
}

impl Shape {
    fn stable(image: &'static str, replicas: i32) -> Shape {
        Shape {
            name: STABLE,
            version: "stable",
            image,
            replicas,
            available: replicas,
            behind: false,
            stalled: false,
        }
    }

    fn canary(image: &'static str, replicas: i32) -> Shape {
        Shape {
            name: CANARY,
            version: "canary",
            ..Shape::stable(image, replicas)
        }
    }

    /// Its template just changed: a generation its controller has not seen.
    fn changed(self) -> Shape {
        Shape {
            behind: true,
            available: 0,
            ..self
        }
    }

    fn available(self, available: i32) -> Shape {
        Shape { available, ..self }
    }

    fn stalled(self) -> Shape {
        Shape {
            stalled: true,
            available: 0,
            ..self
        }
    }

    fn json(&self) -> Value {
        let deployment = Deployment {
            metadata: ObjectMeta {
                name: Some(self.name.into()),
                namespace: Some(NAMESPACE.into()),
                generation: Some(if self.behind { 8 } else { 7 }),
                resource_version: Some("41".into()),
                ..ObjectMeta::default()
            },
            spec: DeploymentSpec {
                replicas: Some(self.replicas),
                template: pod_template(self.image, self.version),
                ..DeploymentSpec::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(7),
                replicas: Some(self.replicas),
                updated_replicas: Some(if self.behind { 0 } else { self.replicas }),
                available_replicas: Some(self.available),
                conditions: self.stalled.then(|| {
                    vec![DeploymentCondition {
                        type_: Some("Progressing".into()),
                        status: Some("False".into()),
                        reason: Some("ProgressDeadlineExceeded".into()),
                        message: Some(format!(
                            "ReplicaSet {} has timed out progressing.",
                            self.name
                        )),
                        ..DeploymentCondition::default()
                    }]
                }),
                ..DeploymentStatus::default()
            }),
        };
        serde_json::to_value(deployment).unwrap()
    }

    fn get(&self) -> Call {
        Call::GetDeployment(self.name, Some(self.json()))
    }
}

/// What the test copies: the canary's template, labelled as stable's pods.
fn copied(image: &str) -> Value {
    serde_json::to_value(pod_template(image, "stable")).unwrap()
}

fn rev(image: &str) -> String {
    revision(&pod_template(image, "any"))
}

/// An autoscaler on the canary Deployment.
fn autoscaler() -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "checkout-canary", "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": CANARY},
            "minReplicas": 2, "maxReplicas": 10
        }
    })
}

/// A clock the test moves.
struct MovingClock(std::sync::Mutex<Timestamp>);

impl Clock for MovingClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

/// One controller process running a release: cycle after cycle at the times given, each one's
/// status fed to the next as the API server would (a status write not made keeps the last).
struct Release {
    harness: Harness,
    clock: Arc<MovingClock>,
    status: Option<CanaryRolloutStatus>,
    written: Arc<Mutex<Option<CanaryRolloutStatus>>>,
}

impl Release {
    fn new(samples: Samples, status: Option<CanaryRolloutStatus>) -> Self {
        let (client, server) = crate::fixtures::mock_client();
        let source = CannedSource::new(samples);
        let clock = Arc::new(MovingClock(std::sync::Mutex::new(t(NOW))));
        let ctx = Context::new(
            client,
            source.clone(),
            clock.clone(),
            Arc::new(Metrics::default()),
            Some("cohort-controller-0".into()),
        );
        Release {
            harness: Harness {
                ctx: Arc::new(ctx),
                server: Some(server),
                source,
            },
            clock,
            status,
            written: Arc::new(Mutex::new(None)),
        }
    }

    /// A status write whose check sees the status sent; kept for the next cycle.
    fn status(&self, check: impl FnOnce(&CanaryRolloutStatus) + Send + 'static) -> Call {
        let written = self.written.clone();
        Call::status(move |status| {
            check(status);
            *written.lock().unwrap() = Some(status.clone());
        })
    }

    /// Reconciles at `t(at)` against `calls`.
    async fn at(&mut self, at: i64, calls: Vec<Call>) -> Action {
        *self.clock.0.lock().unwrap() = t(at);
        let rollout = rollout(release_spec(), self.status.clone());
        let action = self.harness.reconcile(rollout, calls).await.unwrap();
        if let Some(status) = self.written.lock().unwrap().take() {
            self.status = Some(status);
        }
        action
    }
}

fn workload_status(status: &CanaryRolloutStatus) -> WorkloadStatus {
    status.workload.clone().unwrap_or_default()
}

/// An image bump releases itself: the run starts once the canary has rolled out, each step's
/// weight waits for the canary to be scaled for it, the promotion copies the template into
/// stable, waits for its rollout, sends everyone back to stable and scales the canary down.
#[tokio::test]
async fn one_image_bump_is_released_end_to_end() {
    let mut release = Release::new(healthy(), None);
    // Stable runs app:1 on 40 pods; the canary was just given app:2.
    let stable = Shape::stable("app:1", 40);
    let start = NOW;
    let action = release
        .at(
            start,
            vec![
                Call::GetWasmPlugin(live(None)),
                stable.get(),
                Shape::canary("app:2", 1).changed().get(),
                // The entry goes in at 0: nobody reaches a canary still rolling out.
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Pending, 0));
                    assert_eq!(workload_status(status).revision, Some(rev("app:2")));
                    let message = status.message.as_deref().unwrap();
                    assert!(message.contains("waiting for checkout-canary"), "{message}");
                }),
                Call::Event("Normal", "RunStarted"),
            ],
        )
        .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert_eq!(release.harness.source.calls(), 0);

    // Rolled out and available: step 1 (1% of 40 → 1 pod, which it has).
    release
        .at(
            start + 5,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable.get(),
                Shape::canary("app:2", 1).get(),
                Call::ApplyWasmPlugin {
                    weight_bp: 100,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Progressing, 100));
                }),
                Call::Event("Normal", "Started"),
            ],
        )
        .await;

    // Each later step: scaled first (5% → 2 pods, 25% → 10, 100% → 40), the weight held; then
    // pushed once the pods are available.
    let steps = [
        (100, 500, 1, 2),
        (500, 2_500, 2, 10),
        (2_500, 10_000, 10, 40),
    ];
    let mut at = start + 5;
    for (index, (from_bp, to_bp, had, needed)) in steps.into_iter().enumerate() {
        // The same Event again within the Recorder's cache is counted on the first one.
        let scaled = if index == 0 {
            Call::Event("Normal", "CanaryScaled")
        } else {
            Call::EventRepeated("Normal", "CanaryScaled")
        };
        at += 60;
        let action = release
            .at(
                at,
                vec![
                    Call::GetWasmPlugin(live(Some(from_bp))),
                    stable.get(),
                    Shape::canary("app:2", had).get(),
                    Call::ListAutoscalers(vec![]),
                    Call::ScaleDeployment {
                        name: CANARY,
                        replicas: needed,
                    },
                    release.status(move |status| {
                        assert_eq!(status.weight_bp, from_bp, "held while the canary scales");
                        let message = status.message.as_deref().unwrap();
                        assert!(
                            message.contains(&format!("to {needed} replicas")),
                            "{message}"
                        );
                    }),
                    scaled,
                ],
            )
            .await;
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
        at += 5;
        let advanced = match (to_bp, index) {
            (10_000, _) => Call::Event("Normal", "Promoted"),
            (_, 0) => Call::Event("Normal", "StepAdvanced"),
            _ => Call::EventRepeated("Normal", "StepAdvanced"),
        };
        release
            .at(
                at,
                vec![
                    Call::GetWasmPlugin(live(Some(from_bp))),
                    stable.get(),
                    Shape::canary("app:2", needed).get(),
                    Call::ApplyWasmPlugin {
                        weight_bp: to_bp,
                        conflict: false,
                    },
                    release.status(move |status| assert_eq!(status.weight_bp, to_bp)),
                    advanced,
                ],
            )
            .await;
    }

    // Promotion: the template goes into stable (with stable's version label), everyone stays on
    // the canary until stable has rolled it out.
    let canary = Shape::canary("app:2", 40);
    at += 5;
    release
        .at(
            at,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                stable.get(),
                canary.get(),
                Call::CopyTemplate {
                    name: STABLE,
                    template: copied("app:2"),
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Promoted, 10_000));
                    assert!(workload_status(status).promotion_started_at.is_some());
                }),
                Call::Event("Normal", "PromotionStarted"),
            ],
        )
        .await;
    at += 5;
    let rolling = Shape::stable("app:2", 40).changed();
    release
        .at(
            at,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                rolling.get(),
                canary.get(),
                release.status(|status| {
                    assert_eq!(status.weight_bp, 10_000);
                    let message = status.message.as_deref().unwrap();
                    assert!(message.contains("waiting for checkout-stable"), "{message}");
                }),
            ],
        )
        .await;
    at += 5;
    let promoted = Shape::stable("app:2", 40);
    let action = release
        .at(
            at,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                promoted.get(),
                canary.get(),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(move |status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Succeeded, 0));
                    let recorded = workload_status(status);
                    assert_eq!(recorded.promoted_revision, Some(rev("app:2")));
                    assert_eq!(recorded.scale_down_at, Some(Time(t(at + 30))));
                    assert_eq!(condition(status, CONDITION_READY).status, "True");
                    assert_eq!(condition(status, CONDITION_DEGRADED).status, "False");
                }),
                Call::Event("Normal", "Succeeded"),
            ],
        )
        .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    // The canary goes to 0 once everyone has been on stable for scaleDownDelay.
    at += 30;
    release
        .at(
            at,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                promoted.get(),
                canary.get(),
                Call::ListAutoscalers(vec![]),
                Call::ScaleDeployment {
                    name: CANARY,
                    replicas: 0,
                },
                release.status(|status| {
                    assert_eq!(status.phase, Phase::Succeeded);
                    assert_eq!(workload_status(status).scale_down_at, None);
                }),
                Call::Event("Normal", "ScaledDown"),
            ],
        )
        .await;
    // Settled: nothing to do until the next image.
    release
        .at(
            at + 300,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                promoted.get(),
                Shape::canary("app:2", 0).get(),
            ],
        )
        .await;
}

fn running(step: u32, weight_bp: u32, image: &str) -> CanaryRolloutStatus {
    CanaryRolloutStatus {
        workload: Some(WorkloadStatus {
            revision: Some(rev(image)),
            ..WorkloadStatus::default()
        }),
        ..progressing(step, weight_bp, 120)
    }
}

#[tokio::test]
async fn a_rollback_scales_the_canary_down_after_the_delay_and_is_not_retried() {
    let mut release = Release::new(failing(), Some(running(1, 500, "app:2")));
    let stable = Shape::stable("app:1", 40);
    let canary = Shape::canary("app:2", 2);
    let action = release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                stable.get(),
                canary.get(),
                // Weight 0 first; nothing is done to the Deployments in this cycle.
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
                    let recorded = workload_status(status);
                    assert_eq!(recorded.failed_revision, Some(rev("app:2")));
                    assert_eq!(recorded.scale_down_at, Some(Time(t(NOW + 30))));
                }),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    // Before the delay: nothing.
    let action = release
        .at(
            NOW + 10,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable.get(),
                canary.get(),
            ],
        )
        .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(20)));
    release
        .at(
            NOW + 30,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable.get(),
                canary.get(),
                Call::ListAutoscalers(vec![]),
                Call::ScaleDeployment {
                    name: CANARY,
                    replicas: 0,
                },
                release.status(|status| {
                    assert_eq!(status.phase, Phase::RolledBack);
                    assert_eq!(workload_status(status).scale_down_at, None);
                }),
                Call::Event("Normal", "ScaledDown"),
            ],
        )
        .await;
    // The same template is not tried again by itself, even healthy now.
    release.harness.source.set(healthy());
    release
        .at(
            NOW + 400,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable.get(),
                Shape::canary("app:2", 0).get(),
            ],
        )
        .await;
    assert_eq!(release.status.as_ref().unwrap().phase, Phase::RolledBack);
}

#[tokio::test]
async fn a_template_change_mid_run_goes_back_to_zero_and_starts_again() {
    let mut release = Release::new(healthy(), Some(running(2, 2_500, "app:2")));
    let stable = Shape::stable("app:1", 40);
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(2_500))),
                stable.get(),
                Shape::canary("app:3", 10).changed().available(6).get(),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Pending, 0));
                    assert_eq!(status.step_index, None);
                    assert!(status.gates.is_empty());
                    assert_eq!(workload_status(status).revision, Some(rev("app:3")));
                    assert_eq!(status.history.last().unwrap().reason, "RunStarted");
                }),
                Call::Event("Normal", "RunStarted"),
            ],
        )
        .await;
    // Rolled out: step 1 again, on the new revision.
    release
        .at(
            NOW + 5,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable.get(),
                Shape::canary("app:3", 10).get(),
                Call::ApplyWasmPlugin {
                    weight_bp: 100,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!(
                        (status.phase, status.step_index),
                        (Phase::Progressing, Some(0))
                    );
                }),
                Call::Event("Normal", "Started"),
            ],
        )
        .await;
}

#[tokio::test]
async fn an_autoscaler_on_the_canary_stays_in_charge() {
    let mut release = Release::new(healthy(), Some(running(0, 100, "app:2")));
    let stable = Shape::stable("app:1", 40);
    // 5% of 40 wants 2 pods; the autoscaler keeps 1 and no replica is patched.
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                stable.get(),
                Shape::canary("app:2", 1).get(),
                Call::ListAutoscalers(vec![autoscaler()]),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: false,
                },
                release.status(|status| assert_eq!(status.weight_bp, 500)),
                Call::Event("Normal", "StepAdvanced"),
            ],
        )
        .await;
    // Rolled back: not scaled down either.
    release.harness.source.set(failing());
    release
        .at(
            NOW + 5,
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                stable.get(),
                Shape::canary("app:2", 3).get(),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(|status| assert_eq!(status.phase, Phase::RolledBack)),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await;
    release
        .at(
            NOW + 40,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable.get(),
                Shape::canary("app:2", 3).get(),
                Call::ListAutoscalers(vec![autoscaler()]),
                release.status(|status| {
                    assert_eq!(workload_status(status).scale_down_at, None);
                }),
            ],
        )
        .await;
}

fn promoting(image: &str) -> CanaryRolloutStatus {
    CanaryRolloutStatus {
        phase: Phase::Promoted,
        step_index: Some(3),
        weight_bp: 10_000,
        step_started_at: Some(Time(t(NOW - 20))),
        workload: Some(WorkloadStatus {
            revision: Some(rev(image)),
            promotion_started_at: Some(Time(t(NOW - 20))),
            ..WorkloadStatus::default()
        }),
        ..CanaryRolloutStatus::default()
    }
}

#[tokio::test]
async fn a_stable_rollout_that_fails_keeps_the_canary_serving() {
    let mut release = Release::new(healthy(), Some(promoting("app:2")));
    // The copy was made; its rollout is stuck: watched, not done.
    let stalled = Shape::stable("app:2", 40).stalled();
    let canary = Shape::canary("app:2", 40);
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                stalled.get(),
                canary.get(),
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Promoted, 10_000));
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert_eq!(
                        (degraded.status.as_str(), degraded.reason.as_str()),
                        ("True", "PromotionFailed")
                    );
                    assert!(status
                        .message
                        .as_deref()
                        .unwrap()
                        .contains("ProgressDeadlineExceeded"));
                }),
                Call::Event("Warning", "PromotionFailed"),
            ],
        )
        .await;
    // Said once; nothing scaled, no weight moved.
    release
        .at(
            NOW + 30,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                stalled.get(),
                canary.get(),
            ],
        )
        .await;
}

#[tokio::test]
async fn a_deployment_missing_or_deleted_mid_run_never_gets_users() {
    // The canary deleted at 5%: everyone back on stable at once.
    let mut release = Release::new(healthy(), Some(running(1, 500, "app:2")));
    let stable = Shape::stable("app:1", 40);
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                stable.get(),
                Call::GetDeployment(CANARY, None),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert_eq!(
                        (degraded.status.as_str(), degraded.reason.as_str()),
                        ("True", "WorkloadMissing")
                    );
                    assert!(degraded.message.contains("checkout-canary"));
                }),
                Call::Event("Warning", "WorkloadMissing"),
            ],
        )
        .await;
    release
        .at(
            NOW + 30,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable.get(),
                Call::GetDeployment(CANARY, None),
            ],
        )
        .await;

    // Stable gone at 1%, with the step baked: held, no promotion or step, said once.
    let mut release = Release::new(healthy(), Some(running(0, 100, "app:2")));
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::GetDeployment(STABLE, None),
                Shape::canary("app:2", 1).get(),
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Progressing, 100));
                    assert_eq!(
                        condition(status, CONDITION_DEGRADED).reason,
                        "WorkloadMissing"
                    );
                }),
                Call::Event("Warning", "WorkloadMissing"),
            ],
        )
        .await;

    // Never created: the rollout waits at 0.
    let mut release = Release::new(healthy(), None);
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(None)),
                stable.get(),
                Call::GetDeployment(CANARY, None),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Pending, 0));
                    assert_eq!(
                        condition(status, CONDITION_DEGRADED).reason,
                        "WorkloadMissing"
                    );
                }),
                Call::Event("Warning", "WorkloadMissing"),
            ],
        )
        .await;
}

/// A new controller (fresh memory) at each point of a promotion: the copy is made once, the
/// weight never goes back up, and the canary is scaled down only after stable has rolled out.
#[tokio::test]
async fn a_controller_restarted_at_each_point_of_the_promotion_resumes_it() {
    let stable_old = Shape::stable("app:1", 40);
    let stable_rolling = Shape::stable("app:2", 40).changed();
    let stable_done = Shape::stable("app:2", 40);
    let canary = Shape::canary("app:2", 40);

    // Stopped after pushing 100%, before recording it: taken as done, and the copy follows.
    let mut release = Release::new(healthy(), Some(running(2, 2_500, "app:2")));
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                stable_old.get(),
                canary.get(),
                Call::CopyTemplate {
                    name: STABLE,
                    template: copied("app:2"),
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Promoted, 10_000));
                }),
                Call::Event("Normal", "Promoted"),
                Call::Event("Normal", "PromotionStarted"),
            ],
        )
        .await;

    // Stopped after the copy, before recording it: stable already has it, so no second copy.
    let mut unrecorded_copy = promoting("app:2");
    unrecorded_copy
        .workload
        .as_mut()
        .unwrap()
        .promotion_started_at = None;
    let mut release = Release::new(healthy(), Some(unrecorded_copy));
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                stable_rolling.get(),
                canary.get(),
                release.status(|status| {
                    assert_eq!(status.weight_bp, 10_000);
                    assert_eq!(
                        workload_status(status).promotion_started_at,
                        Some(Time(t(NOW)))
                    );
                }),
            ],
        )
        .await;

    // Stable still rolling: no scale-down, no weight change, whatever the time.
    let mut release = Release::new(healthy(), Some(promoting("app:2")));
    release
        .at(
            NOW + 600,
            vec![
                Call::GetWasmPlugin(live(Some(10_000))),
                stable_rolling.clone().available(39).get(),
                canary.get(),
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Promoted, 10_000));
                }),
            ],
        )
        .await;

    // Stopped after pushing 0, before recording Succeeded: recorded now, nothing pushed again,
    // and the canary waits for its delay.
    let mut release = Release::new(healthy(), Some(promoting("app:2")));
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable_done.get(),
                canary.get(),
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Succeeded, 0));
                    assert_eq!(
                        workload_status(status).scale_down_at,
                        Some(Time(t(NOW + 30)))
                    );
                }),
                Call::Event("Normal", "Succeeded"),
            ],
        )
        .await;

    // Stopped after recording Succeeded, before the scale-down: done once the delay is over.
    let succeeded = release.status.clone().unwrap();
    let mut release = Release::new(healthy(), Some(succeeded));
    release
        .at(
            NOW + 31,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable_done.get(),
                canary.get(),
                Call::ListAutoscalers(vec![]),
                Call::ScaleDeployment {
                    name: CANARY,
                    replicas: 0,
                },
                release.status(|status| assert_eq!(status.phase, Phase::Succeeded)),
                Call::Event("Normal", "ScaledDown"),
            ],
        )
        .await;

    // Stopped after pushing a rollback's 0, before recording it: the rollback is taken as done,
    // and nothing goes back up.
    let mut release = Release::new(healthy(), Some(running(1, 500, "app:2")));
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable_old.get(),
                Shape::canary("app:2", 2).get(),
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
                    assert_eq!(workload_status(status).failed_revision, Some(rev("app:2")));
                }),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await;
    let rolled_back = release.status.clone().unwrap();
    let mut release = Release::new(healthy(), Some(rolled_back));
    release
        .at(
            NOW + 5,
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                stable_old.get(),
                Shape::canary("app:2", 2).get(),
            ],
        )
        .await;
}

/// A Deployment event reconciles exactly the rollouts naming it.
#[test]
fn deployment_changes_map_to_the_rollouts_naming_them() {
    let ours = Arc::new(rollout(release_spec(), None));
    let mut elsewhere = rollout(release_spec(), None);
    elsewhere.metadata.namespace = Some("other".into());
    let plain = Arc::new({
        let mut plain = rollout(spec(), None);
        plain.metadata.name = Some("plain".into());
        plain
    });
    let rollouts = [ours, Arc::new(elsewhere), plain];
    let deployment = |name: &'static str| -> Deployment {
        serde_json::from_value(Shape::stable("app:1", 1).json())
            .map(|mut d: Deployment| {
                d.metadata.name = Some(name.into());
                d
            })
            .unwrap()
    };
    let named = |name| -> Vec<(Option<String>, String)> {
        rollouts_naming(&rollouts, &deployment(name))
            .into_iter()
            .map(|reference| (reference.namespace, reference.name))
            .collect()
    };
    let ours = vec![(Some(NAMESPACE.to_owned()), ROLLOUT.to_owned())];
    assert_eq!(named(STABLE), ours);
    assert_eq!(named(CANARY), ours);
    assert!(named("shop-client").is_empty());
}

/// Deployments that cannot be read stop no rollback, and hold every increase.
#[tokio::test]
async fn unreadable_deployments_hold_increases_but_never_a_rollback() {
    const STABLE_PATH: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout-stable";
    let mut release = Release::new(failing(), Some(running(1, 500, "app:2")));
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::ServerError(http::Method::GET, STABLE_PATH),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
                    assert_eq!(condition(status, CONDITION_DEGRADED).reason, "RolledBack");
                }),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await;

    // Baked and passing at 1%: the step waits until the Deployments can be read.
    let mut release = Release::new(healthy(), Some(running(0, 100, "app:2")));
    release
        .at(
            NOW,
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::ServerError(http::Method::GET, STABLE_PATH),
                release.status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Progressing, 100));
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert_eq!(degraded.reason, "WorkloadUnreadable");
                    assert!(
                        degraded.message.contains("checkout-stable"),
                        "{}",
                        degraded.message
                    );
                }),
                Call::Event("Warning", "WorkloadUnreadable"),
            ],
        )
        .await;
}
