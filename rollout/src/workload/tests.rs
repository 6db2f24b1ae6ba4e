//! Table tests of the workload decisions, and whole releases through the plan.

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::crd::{Step, Verdict};
use crate::evaluate::Evaluation;
use crate::plan::{plan, PlanInput};
use crate::validate::tests::minimal_spec;

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

const NOW: i64 = 1_000;

/// (what, stored status, canary image, expected phase, weight, run revision, events)
type StartCase = (
    &'static str,
    Option<CanaryRolloutStatus>,
    &'static str,
    Phase,
    u32,
    Option<&'static str>,
    Vec<&'static str>,
);
/// (what, canary as observed, autoscaled, expected weight, actions, events)
type CapacityCase = (
    &'static str,
    Deployment,
    bool,
    u32,
    Vec<Action>,
    Vec<&'static str>,
);
/// (what, stable as observed, phase, weight, copies, events, Degraded reason)
type PromotionCase = (
    &'static str,
    Deployment,
    Phase,
    u32,
    bool,
    Vec<&'static str>,
    Option<&'static str>,
);
/// (what, at, canary, autoscaled, actions, events)
type ScaleDownCase = (
    &'static str,
    i64,
    Deployment,
    bool,
    Vec<Action>,
    Vec<&'static str>,
);
/// (what, stable, canary, phase, weight, events)
type MissingCase = (
    &'static str,
    Option<Deployment>,
    Option<Deployment>,
    Phase,
    u32,
    Vec<&'static str>,
);

fn workload() -> WorkloadSpec {
    WorkloadSpec {
        stable: "checkout-stable".into(),
        canary: "checkout-canary".into(),
        scale_down_delay: "30s".into(),
    }
}

/// Steps 10, 50 then 100 (bake 1m), no gates; with the workload.
fn spec() -> CanaryRolloutSpec {
    let mut spec = minimal_spec();
    spec.steps = vec![
        Step::new(10.0, "1m"),
        Step::new(50.0, "1m"),
        Step::new(100.0, "1m"),
    ];
    spec.analysis.gates = Vec::new();
    spec.workload = Some(workload());
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

/// A Deployment running `image` on `replicas` pods, all rolled out and available.
fn deployment(name: &str, image: &str, version: &str, replicas: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            generation: Some(2),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            template: pod_template(image, version),
            ..DeploymentSpec::default()
        },
        status: Some(DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(replicas),
            updated_replicas: Some(replicas),
            available_replicas: Some(replicas),
            ..DeploymentStatus::default()
        }),
    }
}

fn stable(image: &str, replicas: i32) -> Deployment {
    deployment("checkout-stable", image, "stable", replicas)
}

fn canary(image: &str, replicas: i32) -> Deployment {
    deployment("checkout-canary", image, "canary", replicas)
}

/// `deployment` with `available` of its pods available (the rest starting).
fn starting(mut deployment: Deployment, available: i32) -> Deployment {
    let status = deployment.status.as_mut().unwrap();
    status.available_replicas = Some(available);
    deployment
}

/// `deployment` after its template changed: a new generation its controller has not seen.
fn unobserved(mut deployment: Deployment) -> Deployment {
    deployment.metadata.generation = Some(3);
    deployment
}

fn stalled(mut deployment: Deployment) -> Deployment {
    let status = deployment.status.as_mut().unwrap();
    status.available_replicas = Some(0);
    status.conditions = Some(vec![DeploymentCondition {
        type_: Some("Progressing".into()),
        status: Some("False".into()),
        reason: Some("ProgressDeadlineExceeded".into()),
        ..DeploymentCondition::default()
    }]);
    deployment
}

fn observed(stable: Option<Deployment>, canary: Option<Deployment>) -> Observed {
    Observed {
        stable,
        canary,
        ..Observed::default()
    }
}

fn rev(image: &str) -> String {
    revision(&pod_template(image, "any"))
}

fn status(
    phase: Phase,
    step: Option<u32>,
    weight_bp: u32,
    run: Option<&str>,
) -> CanaryRolloutStatus {
    CanaryRolloutStatus {
        phase,
        step_index: step,
        weight_bp,
        step_started_at: step.map(|_| Time(t(NOW - 120))),
        workload: Some(WorkloadStatus {
            revision: run.map(rev),
            ..WorkloadStatus::default()
        }),
        ..CanaryRolloutStatus::default()
    }
}

fn status_at(phase: Phase, step: Option<u32>, weight_bp: u32, run: &str) -> CanaryRolloutStatus {
    status(phase, step, weight_bp, Some(run))
}

fn reasons(events: &[PlannedEvent]) -> Vec<&str> {
    events.iter().map(|event| event.reason.as_str()).collect()
}

#[test]
fn a_revision_is_the_template_without_its_version_label() {
    assert_eq!(
        revision(&pod_template("app:1", "stable")),
        revision(&pod_template("app:1", "canary"))
    );
    assert_ne!(rev("app:1"), rev("app:2"));
    // Pinned: a status written by one controller is read by the next.
    assert_eq!(rev("app:1"), revision(&pod_template("app:1", "x")));
    assert_eq!(rev("app:1").len(), 16);
    assert_eq!(rev("app:1"), "d3d9d970144e36e5");
}

#[test]
fn the_canary_gets_its_share_of_stable_s_replicas() {
    let table = [
        (10, 100, 1),
        (10, 1_000, 1),
        (10, 2_500, 3),
        (4, 2_500, 1),
        (3, 5_000, 2),
        (10, 10_000, 10),
        (0, 500, 1),
        (7, 1, 1),
    ];
    for (stable, weight_bp, expected) in table {
        assert_eq!(
            canary_replicas(stable, weight_bp),
            expected,
            "{stable} stable replicas at {weight_bp} bp"
        );
    }
}

#[test]
fn revisions_start_restart_and_wait_for_runs() {
    let v1 = || Some(stable("app:1", 4));
    // (what, stored status, canary image, expected phase, weight, run revision, events)
    let table: Vec<StartCase> = vec![
        (
            "fresh, same as stable",
            None,
            "app:1",
            Phase::Pending,
            0,
            None,
            vec![],
        ),
        (
            "fresh, new image",
            None,
            "app:2",
            Phase::Pending,
            0,
            Some("app:2"),
            vec!["RunStarted"],
        ),
        (
            "a run at its step",
            Some(status(Phase::Progressing, Some(0), 1_000, Some("app:2"))),
            "app:2",
            Phase::Progressing,
            1_000,
            Some("app:2"),
            vec![],
        ),
        (
            "a template change mid-run",
            Some(status(Phase::Progressing, Some(1), 5_000, Some("app:2"))),
            "app:3",
            Phase::Pending,
            0,
            Some("app:3"),
            vec!["RunStarted"],
        ),
        (
            "mid-run, back to stable's template",
            Some(status(Phase::Progressing, Some(1), 5_000, Some("app:2"))),
            "app:1",
            Phase::Pending,
            0,
            None,
            vec!["CanaryReverted"],
        ),
        (
            "promoting, back to stable's template",
            Some(status(Phase::Promoted, Some(2), 10_000, Some("app:2"))),
            "app:1",
            Phase::Pending,
            0,
            None,
            vec!["CanaryReverted"],
        ),
        (
            "rolled back: the same template waits for a retry",
            Some(status(Phase::RolledBack, Some(1), 0, Some("app:2"))),
            "app:2",
            Phase::RolledBack,
            0,
            Some("app:2"),
            vec![],
        ),
        (
            "rolled back: a new template starts",
            Some(status(Phase::RolledBack, Some(1), 0, Some("app:2"))),
            "app:3",
            Phase::Pending,
            0,
            Some("app:3"),
            vec!["RunStarted"],
        ),
        (
            "succeeded: nothing new",
            Some(status(Phase::Succeeded, Some(2), 0, Some("app:1"))),
            "app:1",
            Phase::Succeeded,
            0,
            Some("app:1"),
            vec![],
        ),
        (
            "promoting: a new template goes back to weight 0",
            Some(status(Phase::Promoted, Some(2), 10_000, Some("app:2"))),
            "app:3",
            Phase::Pending,
            0,
            Some("app:3"),
            vec!["RunStarted"],
        ),
        (
            "workload added to a live run: adopted",
            Some(status(Phase::Progressing, Some(0), 1_000, None)),
            "app:2",
            Phase::Progressing,
            1_000,
            Some("app:2"),
            vec![],
        ),
    ];
    for (what, stored, image, phase, weight_bp, run, events) in table {
        let prepared = before_plan(
            &spec(),
            &workload(),
            stored.as_ref(),
            &observed(v1(), Some(canary(image, 1))),
            t(NOW),
        );
        let status = prepared.status.clone().unwrap_or_default();
        assert_eq!(
            (status.phase, status.weight_bp),
            (phase, weight_bp),
            "{what}"
        );
        let recorded = status.workload.clone().unwrap_or_default();
        assert_eq!(recorded.revision, run.map(rev), "{what}");
        assert_eq!(reasons(&prepared.events), events, "{what}");
        if phase == Phase::Pending {
            assert!(
                status.gates.is_empty() && status.step_started_at.is_none(),
                "{what}"
            );
        }
    }
}

#[test]
fn a_canary_gone_mid_run_rolls_back_before_the_plan() {
    let stored = status(Phase::Progressing, Some(1), 5_000, Some("app:2"));
    let prepared = before_plan(
        &spec(),
        &workload(),
        Some(&stored),
        &observed(Some(stable("app:1", 4)), None),
        t(NOW),
    );
    let status = prepared.status.unwrap();
    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
    assert_eq!(status.history.last().unwrap().reason, "WorkloadMissing");
    // At 100% too: everyone was on it.
    let promoting = status_at(Phase::Promoted, Some(2), 10_000, "app:2");
    let prepared = before_plan(
        &spec(),
        &workload(),
        Some(&promoting),
        &observed(Some(stable("app:2", 4)), None),
        t(NOW),
    );
    let status = prepared.status.unwrap();
    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
    // Being deleted counts as gone.
    let mut deleting = canary("app:2", 1);
    deleting.metadata.deletion_timestamp = Some(Time(t(NOW)));
    let prepared = before_plan(
        &spec(),
        &workload(),
        Some(&stored),
        &observed(Some(stable("app:1", 4)), Some(deleting)),
        t(NOW),
    );
    assert_eq!(prepared.status.unwrap().phase, Phase::RolledBack);
    // Abort wins: the plan sends everyone back.
    let mut aborting = spec();
    aborting.abort = true;
    let prepared = before_plan(
        &aborting,
        &workload(),
        Some(&stored),
        &observed(Some(stable("app:1", 4)), None),
        t(NOW),
    );
    assert_eq!(prepared.status.unwrap().phase, Phase::Progressing);
}

/// One cycle as the controller runs it: before the plan, the plan (every gate passing), after.
fn cycle(
    spec: &CanaryRolloutSpec,
    stored: Option<&CanaryRolloutStatus>,
    observed: &Observed,
    now: Timestamp,
) -> Decision {
    let workload = spec.workload.clone().unwrap();
    let served_bp = stored.map_or(0, |status| status.weight_bp);
    let prepared = before_plan(spec, &workload, stored, observed, now);
    let input = PlanInput {
        rollout: "checkout".into(),
        generation: Some(1),
        evaluation: Some(Evaluation {
            verdict: Verdict::Pass,
            results: Vec::new(),
        }),
        routing: None,
    };
    let planned = plan(spec, prepared.status.as_ref(), &input, now);
    let mut decision = after_plan(
        &workload,
        prepared.status.as_ref(),
        served_bp,
        planned,
        observed,
        now,
    );
    let mut events = prepared.events;
    events.append(&mut decision.plan.events);
    decision.plan.events = events;
    decision
}

#[test]
fn each_weight_waits_for_the_canary_s_capacity() {
    let stored = status(Phase::Progressing, Some(0), 1_000, Some("app:2"));
    // (what, canary as observed, autoscaled, expected weight, actions, events)
    let table: Vec<CapacityCase> = vec![
        (
            "too small: scaled, the weight held",
            canary("app:2", 1),
            false,
            1_000,
            vec![Action::ScaleCanary { replicas: 5 }],
            vec!["CanaryScaled"],
        ),
        (
            "scaled, not available yet: held",
            starting(canary("app:2", 5), 3),
            false,
            1_000,
            vec![],
            vec![],
        ),
        (
            "scaled, its controller behind: held",
            unobserved(canary("app:2", 5)),
            false,
            1_000,
            vec![],
            vec![],
        ),
        (
            "scaled and available: the step advances",
            canary("app:2", 5),
            false,
            5_000,
            vec![],
            vec!["StepAdvanced"],
        ),
        (
            "bigger than needed: never scaled down mid-run",
            canary("app:2", 8),
            false,
            5_000,
            vec![],
            vec!["StepAdvanced"],
        ),
        (
            "an autoscaler is in charge: no replica patch",
            canary("app:2", 1),
            true,
            5_000,
            vec![],
            vec!["StepAdvanced"],
        ),
        (
            "an autoscaler, its pods starting: held",
            starting(canary("app:2", 2), 1),
            true,
            1_000,
            vec![],
            vec![],
        ),
    ];
    for (what, canary, autoscaled, weight_bp, actions, events) in table {
        let observed = Observed {
            stable: Some(stable("app:1", 10)),
            canary: Some(canary),
            canary_autoscaled: autoscaled,
            unreadable: None,
        };
        let decision = cycle(&spec(), Some(&stored), &observed, t(NOW));
        assert_eq!(decision.plan.weight_bp, weight_bp, "{what}");
        assert_eq!(decision.plan.status.weight_bp, weight_bp, "{what}");
        assert_eq!(decision.actions, actions, "{what}");
        assert_eq!(reasons(&decision.plan.events), events, "{what}");
        if weight_bp == 1_000 {
            assert_eq!(decision.plan.requeue, WORKLOAD_POLL, "{what}");
            assert_eq!(decision.plan.status.step_index, Some(0), "{what}");
        }
    }
}

#[test]
fn the_first_step_waits_for_the_new_revision_to_roll_out() {
    let observed = |canary| observed(Some(stable("app:1", 4)), Some(canary));
    // Just changed: nothing served until its pods run the new template.
    let decision = cycle(
        &spec(),
        None,
        &observed(unobserved(canary("app:2", 1))),
        t(NOW),
    );
    assert_eq!(decision.plan.weight_bp, 0);
    assert_eq!(decision.plan.status.phase, Phase::Pending);
    assert_eq!(reasons(&decision.plan.events), ["RunStarted"]);
    assert!(decision.actions.is_empty());
    let stored = decision.plan.status;
    let decision = cycle(
        &spec(),
        Some(&stored),
        &observed(canary("app:2", 1)),
        t(NOW + 5),
    );
    assert_eq!(decision.plan.weight_bp, 1_000);
    assert_eq!(reasons(&decision.plan.events), ["Started"]);
    // The same template as stable: no run at all.
    let decision = cycle(&spec(), None, &observed(canary("app:1", 1)), t(NOW));
    assert_eq!(
        (decision.plan.status.phase, decision.plan.weight_bp),
        (Phase::Pending, 0)
    );
    assert!(decision.plan.events.is_empty());
    // At the plan's pace: a person, not a Deployment, is what it waits for.
    assert_eq!(decision.plan.requeue, Duration::from_secs(30));
    assert!(decision
        .plan
        .status
        .message
        .unwrap()
        .contains("waiting for a new canary revision"));
}

#[test]
fn the_promotion_copies_then_waits_for_stable_then_serves_it() {
    let promoted = status(Phase::Promoted, Some(2), 10_000, Some("app:2"));
    let copied = stable("app:2", 10);
    // (what, stable as observed, phase, weight, copies, events, Degraded reason)
    let table: Vec<PromotionCase> = vec![
        (
            "not copied yet",
            stable("app:1", 10),
            Phase::Promoted,
            10_000,
            true,
            vec!["PromotionStarted"],
            None,
        ),
        (
            "copied, rolling out",
            starting(unobserved(copied.clone()), 4),
            Phase::Promoted,
            10_000,
            false,
            vec![],
            None,
        ),
        (
            "copied, rolled out",
            copied.clone(),
            Phase::Succeeded,
            0,
            false,
            vec!["Succeeded"],
            None,
        ),
        (
            "copied, stalled",
            stalled(copied.clone()),
            Phase::Promoted,
            10_000,
            false,
            vec!["PromotionFailed"],
            Some("PromotionFailed"),
        ),
    ];
    for (what, stable, phase, weight_bp, copies, events, degraded) in table {
        let observed = observed(Some(stable), Some(canary("app:2", 10)));
        let decision = cycle(&spec(), Some(&promoted), &observed, t(NOW));
        let status = &decision.plan.status;
        assert_eq!(
            (status.phase, decision.plan.weight_bp),
            (phase, weight_bp),
            "{what}"
        );
        assert_eq!(reasons(&decision.plan.events), events, "{what}");
        assert_eq!(
            matches!(decision.actions.as_slice(), [Action::CopyTemplate(_)]),
            copies,
            "{what}: {:?}",
            decision.actions
        );
        if !copies {
            assert!(
                decision.actions.is_empty(),
                "{what}: nothing is scaled down"
            );
        }
        let degraded_reason = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_DEGRADED && c.status == "True")
            .map(|c| c.reason.as_str());
        assert_eq!(degraded_reason, degraded, "{what}");
        if phase == Phase::Succeeded {
            let recorded = status.workload.clone().unwrap();
            assert_eq!(recorded.promoted_revision, Some(rev("app:2")));
            assert_eq!(recorded.scale_down_at, Some(Time(t(NOW + 30))));
            assert_eq!(decision.plan.requeue, Duration::from_secs(30));
        }
    }
    // The copy is the canary's template with stable's own version label.
    let decision = cycle(
        &spec(),
        Some(&promoted),
        &observed(Some(stable("app:1", 10)), Some(canary("app:2", 10))),
        t(NOW),
    );
    assert_eq!(
        decision.actions,
        [Action::CopyTemplate(Box::new(pod_template(
            "app:2", "stable"
        )))]
    );
    // A stalled promotion is announced once.
    let failed = cycle(
        &spec(),
        Some(&promoted),
        &observed(Some(stalled(copied.clone())), Some(canary("app:2", 10))),
        t(NOW),
    );
    let again = cycle(
        &spec(),
        Some(&failed.plan.status),
        &observed(Some(stalled(copied)), Some(canary("app:2", 10))),
        t(NOW + 30),
    );
    assert!(again.plan.events.is_empty());
    assert_eq!(again.plan.weight_bp, 10_000);
}

#[test]
fn a_run_that_ended_scales_the_canary_down_after_the_delay() {
    let observed = observed(Some(stable("app:1", 10)), Some(canary("app:2", 5)));
    // A failing gate at 50%.
    let stored = status(Phase::Progressing, Some(1), 5_000, Some("app:2"));
    let workload = workload();
    let prepared = before_plan(&spec(), &workload, Some(&stored), &observed, t(NOW));
    let input = PlanInput {
        rollout: "checkout".into(),
        generation: Some(1),
        evaluation: Some(Evaluation {
            verdict: Verdict::Fail,
            results: Vec::new(),
        }),
        routing: None,
    };
    let planned = plan(&spec(), prepared.status.as_ref(), &input, t(NOW));
    let rolled_back = after_plan(
        &workload,
        prepared.status.as_ref(),
        5_000,
        planned,
        &observed,
        t(NOW),
    );
    assert_eq!(rolled_back.plan.weight_bp, 0);
    assert!(rolled_back.actions.is_empty(), "weight 0 goes out first");
    let recorded = rolled_back.plan.status.workload.clone().unwrap();
    assert_eq!(recorded.failed_revision, Some(rev("app:2")));
    assert_eq!(recorded.scale_down_at, Some(Time(t(NOW + 30))));
    assert_eq!(rolled_back.plan.requeue, Duration::from_secs(30));
    let stored = rolled_back.plan.status;
    // (what, at, canary, autoscaled, actions, events)
    let table: Vec<ScaleDownCase> = vec![
        (
            "before the delay",
            NOW + 10,
            canary("app:2", 5),
            false,
            vec![],
            vec![],
        ),
        (
            "after it",
            NOW + 30,
            canary("app:2", 5),
            false,
            vec![Action::ScaleCanary { replicas: 0 }],
            vec!["ScaledDown"],
        ),
        (
            "already at 0",
            NOW + 30,
            canary("app:2", 0),
            false,
            vec![],
            vec![],
        ),
        (
            "an autoscaler's",
            NOW + 30,
            canary("app:2", 5),
            true,
            vec![],
            vec![],
        ),
    ];
    for (what, at, canary, autoscaled, actions, events) in table {
        let observed = Observed {
            stable: Some(stable("app:1", 10)),
            canary: Some(canary),
            canary_autoscaled: autoscaled,
            unreadable: None,
        };
        let decision = cycle(&spec(), Some(&stored), &observed, t(at));
        assert_eq!(decision.plan.weight_bp, 0, "{what}");
        assert_eq!(decision.actions, actions, "{what}");
        assert_eq!(reasons(&decision.plan.events), events, "{what}");
        let pending = decision.plan.status.workload.unwrap().scale_down_at;
        assert_eq!(pending.is_none(), at >= NOW + 30, "{what}");
    }
}

#[test]
fn a_missing_deployment_is_degraded_and_never_served() {
    let stored = status(Phase::Progressing, Some(0), 1_000, Some("app:2"));
    // (what, stable, canary, phase, weight, events)
    let table: Vec<MissingCase> = vec![
        (
            "canary deleted mid-run",
            Some(stable("app:1", 10)),
            None,
            Phase::RolledBack,
            0,
            vec!["WorkloadMissing"],
        ),
        (
            "stable deleted mid-run: held",
            None,
            Some(canary("app:2", 5)),
            Phase::Progressing,
            1_000,
            vec!["WorkloadMissing"],
        ),
    ];
    for (what, stable, canary, phase, weight_bp, events) in table {
        let decision = cycle(&spec(), Some(&stored), &observed(stable, canary), t(NOW));
        let status = &decision.plan.status;
        assert_eq!(
            (status.phase, decision.plan.weight_bp),
            (phase, weight_bp),
            "{what}"
        );
        assert_eq!(reasons(&decision.plan.events), events, "{what}");
        assert!(decision.actions.is_empty(), "{what}");
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_DEGRADED)
            .unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "WorkloadMissing"),
            "{what}"
        );
        // Said once.
        let again = cycle(&spec(), Some(status), &observed(None, None), t(NOW + 30));
        assert!(
            !reasons(&again.plan.events).contains(&"WorkloadMissing"),
            "{what}"
        );
    }
    // Before any run: nothing starts.
    let decision = cycle(
        &spec(),
        None,
        &observed(Some(stable("app:1", 10)), None),
        t(NOW),
    );
    assert_eq!(
        (decision.plan.status.phase, decision.plan.weight_bp),
        (Phase::Pending, 0)
    );
}

/// The Deployments as Kubernetes would have them after the actions: rolled out at once.
fn apply(observed: &mut Observed, actions: &[Action]) {
    for action in actions {
        match action {
            Action::ScaleCanary { replicas } => {
                let canary = observed.canary.as_mut().unwrap();
                let image = canary.spec.template.spec.as_ref().unwrap().containers[0]
                    .image
                    .clone()
                    .unwrap();
                *canary = deployment("checkout-canary", &image, "canary", *replicas);
            }
            Action::CopyTemplate(template) => {
                let stable = observed.stable.as_mut().unwrap();
                stable.spec.template = (**template).clone();
            }
        }
    }
}

/// A whole release: the image bump starts it, each step waits for capacity, the promotion
/// copies into stable, everyone goes back to stable, and the canary is scaled down; at every
/// cycle the weight pushed never exceeds what the canary has pods for.
#[test]
fn one_image_bump_releases_end_to_end() {
    let mut observed = observed(Some(stable("app:1", 10)), Some(canary("app:1", 1)));
    observed.canary = Some(canary("app:2", 1));
    let mut stored: Option<CanaryRolloutStatus> = None;
    let mut now = NOW;
    let mut reasons_seen = Vec::new();
    let mut weights = Vec::new();
    for _ in 0..40 {
        let decision = cycle(&spec(), stored.as_ref(), &observed, t(now));
        let canary_pods = replicas(observed.canary.as_ref().unwrap());
        let weight = decision.plan.weight_bp;
        let served = stored.as_ref().map_or(0, |status| status.weight_bp);
        if weight < served {
            assert!(decision.actions.is_empty(), "actions before a lower weight");
        }
        if weight > 0 {
            assert!(
                canary_replicas(10, weight) <= canary_pods,
                "{weight} bp on {canary_pods} pods"
            );
        }
        reasons_seen.extend(decision.plan.events.iter().map(|e| e.reason.clone()));
        weights.push(weight);
        apply(&mut observed, &decision.actions);
        now += decision.plan.requeue.as_secs().max(1) as i64;
        let done = decision.plan.status.phase == Phase::Succeeded
            && replicas(observed.canary.as_ref().unwrap()) == 0;
        stored = Some(decision.plan.status);
        if done {
            break;
        }
    }
    let stored = stored.unwrap();
    assert_eq!(stored.phase, Phase::Succeeded);
    assert_eq!(
        revision(&template(observed.stable.as_ref().unwrap())),
        rev("app:2"),
        "stable runs the tested build"
    );
    assert_eq!(
        template(observed.stable.as_ref().unwrap())
            .metadata
            .unwrap()
            .labels
            .unwrap()["version"],
        "stable"
    );
    let expected = [
        "RunStarted",
        "Started",
        "CanaryScaled",
        "StepAdvanced",
        "CanaryScaled",
        "Promoted",
        "PromotionStarted",
        "Succeeded",
        "ScaledDown",
    ];
    assert_eq!(reasons_seen, expected);
    let mut distinct = weights.clone();
    distinct.dedup();
    assert_eq!(distinct, [1_000, 5_000, 10_000, 0]);
    // Nothing more happens until the next image.
    let decision = cycle(&spec(), Some(&stored), &observed, t(now + 300));
    assert!(decision.actions.is_empty() && decision.plan.events.is_empty());
}

/// A rolled-back revision retried by a person runs again, and a second rollback still names it
/// and still scales the canary down.
#[test]
fn a_retried_revision_ends_like_any_run() {
    let mut rolled_back = status(Phase::RolledBack, Some(1), 0, Some("app:2"));
    let recorded = rolled_back.workload.as_mut().unwrap();
    recorded.failed_revision = Some(rev("app:2"));
    let mut retry = spec();
    retry.restart_at = Some("2027-01-01T00:00:00Z".into());
    // Scaled down after the rollback: scaled up again for step 1.
    let observed = observed(Some(stable("app:1", 10)), Some(canary("app:2", 0)));
    let decision = cycle(&retry, Some(&rolled_back), &observed, t(NOW));
    assert_eq!(decision.actions, [Action::ScaleCanary { replicas: 1 }]);
    // The retry stands while the step waits for the canary.
    assert_eq!(
        reasons(&decision.plan.events),
        ["Restarted", "CanaryScaled"]
    );
    let held = decision.plan.status;
    assert_eq!(held.observed_restart_at, retry.restart_at);
    assert_eq!(held.history.last().unwrap().reason, "Restarted");
    assert_eq!((held.phase, held.weight_bp), (Phase::Pending, 0));
    assert_eq!(held.workload.clone().unwrap().failed_revision, None);
    let observed = self::observed(Some(stable("app:1", 10)), Some(canary("app:2", 1)));
    let started = cycle(&retry, Some(&held), &observed, t(NOW + 5))
        .plan
        .status;
    assert_eq!(
        (started.phase, started.weight_bp),
        (Phase::Progressing, 1_000)
    );
    // Failing again.
    let workload = workload();
    let input = PlanInput {
        rollout: "checkout".into(),
        generation: Some(1),
        evaluation: Some(Evaluation {
            verdict: Verdict::Fail,
            results: Vec::new(),
        }),
        routing: None,
    };
    let planned = plan(&retry, Some(&started), &input, t(NOW + 30));
    let again = after_plan(
        &workload,
        Some(&started),
        1_000,
        planned,
        &observed,
        t(NOW + 30),
    );
    let recorded = again.plan.status.workload.unwrap();
    assert_eq!(again.plan.status.phase, Phase::RolledBack);
    assert_eq!(recorded.failed_revision, Some(rev("app:2")));
    assert_eq!(recorded.scale_down_at, Some(Time(t(NOW + 60))));
}

/// A template change at 50%: weight 0 goes out in the cycle itself, before anything is done to
/// the canary (which may need scaling for step 1 in the next).
#[test]
fn a_restart_pushes_weight_zero_before_touching_the_canary() {
    let stored = status(Phase::Progressing, Some(1), 5_000, Some("app:2"));
    let observed = observed(Some(stable("app:1", 10)), Some(canary("app:3", 0)));
    let decision = cycle(&spec(), Some(&stored), &observed, t(NOW));
    assert_eq!(decision.plan.weight_bp, 0);
    assert!(decision.actions.is_empty(), "{:?}", decision.actions);
    assert_eq!(reasons(&decision.plan.events), ["RunStarted"]);
    assert_eq!(decision.plan.requeue, WORKLOAD_POLL);
    let next = cycle(&spec(), Some(&decision.plan.status), &observed, t(NOW + 5));
    assert_eq!(next.actions, [Action::ScaleCanary { replicas: 1 }]);
    assert_eq!(next.plan.weight_bp, 0);
}
