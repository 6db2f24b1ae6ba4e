//! Scripted API-server tests of the reconciler: every request it makes is asserted, in order.

use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::*;
use crate::fixtures::{
    finished, mock_client, rollout, ApiServer, Call, CannedSource, FixedClock, NAMESPACE, ROLLOUT,
    TIMEOUT,
};
use crate::target::wasmplugin::owned_fields;
use cohort_rollout::crd::{CanaryRolloutStatus, Phase};
use cohort_rollout::crd::{EnvoyEcdsTarget, ErrorRateGate, GateCheck, GateSpec, Step, Verdict};
use cohort_rollout::evaluate::Samples;
use cohort_rollout::evaluate::{Observed, VersionSamples};
use cohort_rollout::filter_config::spec_to_filter_config;
use cohort_rollout::plan::{plan, PlanInput, CONDITION_DEGRADED, CONDITION_INVALID_SPEC};
use cohort_rollout::plan::{CONDITION_PAUSED, CONDITION_READY, CONDITION_ROUTING_MISMATCH};
use cohort_rollout::validate::tests::minimal_spec;

/// The reconciles happen at `t(NOW)`.
pub(super) const NOW: i64 = 1_000;

pub(super) fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

/// Steps 1, 5, 25 (bake 1m each) then 100; interval 30s; one error-rate gate, 100 samples.
pub(super) fn spec() -> CanaryRolloutSpec {
    let mut spec = minimal_spec();
    spec.steps = vec![
        Step::new(1.0, "1m"),
        Step::new(5.0, "1m"),
        Step::new(25.0, "1m"),
        Step::new(100.0, "1m"),
    ];
    spec.analysis.gates = vec![GateSpec::new(GateCheck::ErrorRate(ErrorRateGate {
        max_increase: 0.01,
        max_rate: None,
    }))];
    spec
}

fn traffic(canary: (f64, f64), stable: (f64, f64)) -> Samples {
    let version = |(requests, errors): (f64, f64)| VersionSamples {
        requests: Observed::Value(requests),
        server_errors: Observed::Value(errors),
        ..VersionSamples::default()
    };
    Samples {
        canary: version(canary),
        stable: version(stable),
    }
}

/// Canary 0.1% errors, stable 0.1%.
pub(super) fn healthy() -> Samples {
    traffic((1_000.0, 1.0), (10_000.0, 10.0))
}

/// Canary 10% errors, stable 0.1%.
pub(super) fn failing() -> Samples {
    traffic((1_000.0, 100.0), (10_000.0, 10.0))
}

/// Canary below the sample minimum.
fn thin() -> Samples {
    traffic((10.0, 0.0), (10_000.0, 10.0))
}

/// Every query failed.
fn unreadable() -> Samples {
    let failed = VersionSamples {
        requests: Observed::Failed("connection refused".into()),
        server_errors: Observed::Failed("connection refused".into()),
        ..VersionSamples::default()
    };
    Samples {
        canary: failed.clone(),
        stable: failed,
    }
}

pub(super) fn progressing(step: u32, weight_bp: u32, started_ago: i64) -> CanaryRolloutStatus {
    CanaryRolloutStatus {
        phase: Phase::Progressing,
        step_index: Some(step),
        weight_bp,
        step_started_at: Some(Time(t(NOW - started_ago))),
        ..CanaryRolloutStatus::default()
    }
}

/// The WasmPlugin's live `pluginConfig`: another rollout (`search`) and ours at `weight_bp`
/// (`None`: ours not there yet), as our earlier applies left it.
fn live(weight_bp: Option<u32>) -> Value {
    let search =
        json!({"hosts": ["search"], "weightBp": 100, "stableVersion": "v1", "canaryVersion": "v2"});
    let mut config = json!({"version": 1, "rollouts": {"search": search}});
    if let Some(weight_bp) = weight_bp {
        let ours = owned_fields(
            ROLLOUT,
            &spec_to_filter_config(&spec(), NAMESPACE, ROLLOUT, weight_bp).unwrap(),
        )
        .unwrap();
        config = crate::target::wasmplugin::merge(&config, &ours);
    }
    config
}

fn condition<'s>(status: &'s CanaryRolloutStatus, kind: &str) -> &'s Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {status:?}"))
}

/// A reconciler wired to a scripted API server, a canned metric source and a fixed clock.
struct Harness {
    ctx: Arc<Context>,
    server: Option<ApiServer>,
    source: Arc<CannedSource>,
}

impl Harness {
    fn new(samples: Samples) -> Self {
        Self::at(samples, t(NOW))
    }

    fn at(samples: Samples, now: Timestamp) -> Self {
        let (client, server) = mock_client();
        let source = CannedSource::new(samples);
        let ctx = Context::new(
            client,
            source.clone(),
            Arc::new(FixedClock(now)),
            Arc::new(Metrics::default()),
            Some("cohort-controller-0".into()),
        );
        Harness {
            ctx: Arc::new(ctx),
            server: Some(server),
            source,
        }
    }

    /// Reconciles `rollout` against the script; fails if a call is missing or unscripted.
    async fn reconcile(&mut self, rollout: CanaryRollout, calls: Vec<Call>) -> Result<Action> {
        let script = self.server.take().unwrap().expect(calls);
        let result = tokio::time::timeout(TIMEOUT, reconcile(Arc::new(rollout), self.ctx.clone()))
            .await
            .expect("the reconcile hung: it made a call the script does not answer");
        self.server = Some(finished(script).await);
        result
    }
}

/// Keeps what a status check saw, for the next reconcile.
fn keep(slot: &Arc<Mutex<Option<CanaryRolloutStatus>>>) -> impl Fn(&CanaryRolloutStatus) {
    let slot = slot.clone();
    move |status| *slot.lock().unwrap() = Some(status.clone())
}

#[tokio::test]
async fn first_reconcile_starts_on_a_shared_wasm_plugin() {
    let mut harness = Harness::new(healthy());
    let action = harness
        .reconcile(
            rollout(spec(), None),
            vec![
                Call::GetWasmPlugin(live(None)),
                Call::ApplyWasmPlugin {
                    weight_bp: 100,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!(status.phase, Phase::Progressing);
                    assert_eq!((status.step_index, status.weight_bp), (Some(0), 100));
                    assert_eq!(status.step_started_at, Some(Time(t(NOW))));
                    assert_eq!(status.observed_generation, Some(3));
                }),
                Call::Event("Normal", "Started"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(harness.source.calls(), 0, "starting needs no samples");
}

#[tokio::test]
async fn step_advances_after_bake_with_passing_gates() {
    let mut harness = Harness::new(healthy());
    let action = harness
        .reconcile(
            rollout(spec(), Some(progressing(0, 100, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!(status.phase, Phase::Progressing);
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    assert_eq!(status.step_started_at, Some(Time(t(NOW))));
                    assert_eq!(status.gates.len(), 1);
                    assert_eq!(status.gates[0].verdict, Verdict::Pass);
                    assert_eq!(status.last_analysis_at, Some(Time(t(NOW))));
                    let entry = status.history.last().unwrap();
                    assert_eq!((entry.from_step, entry.to_step), (Some(0), Some(1)));
                }),
                Call::Event("Normal", "StepAdvanced"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(harness.source.calls(), 1);
}

#[tokio::test]
async fn a_failing_gate_pushes_weight_zero_at_once() {
    let mut harness = Harness::new(failing());
    // Ten seconds into the step: a Fail does not wait for the bake.
    let action = harness
        .reconcile(
            rollout(spec(), Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!(status.phase, Phase::RolledBack);
                    assert_eq!(status.weight_bp, 0);
                    assert_eq!(status.gates[0].verdict, Verdict::Fail);
                    assert_eq!(condition(status, CONDITION_DEGRADED).status, "True");
                    assert_eq!(condition(status, CONDITION_DEGRADED).reason, "RolledBack");
                }),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(cohort_rollout::plan::SETTLED_REQUEUE)
    );
}

#[tokio::test]
async fn inconclusive_gates_hold_without_touching_the_wasm_plugin() {
    let mut harness = Harness::new(thin());
    harness
        .reconcile(
            rollout(spec(), Some(progressing(1, 500, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status(|status| {
                    assert_eq!(status.phase, Phase::Progressing);
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    assert_eq!(status.gates[0].verdict, Verdict::Inconclusive);
                    assert_eq!(status.no_data_since, Some(Time(t(NOW))));
                }),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn query_errors_hold_and_are_counted() {
    let mut harness = Harness::new(unreadable());
    harness
        .reconcile(
            rollout(spec(), Some(progressing(1, 500, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status(|status| {
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    assert_eq!(status.gates[0].verdict, Verdict::Error);
                    assert_eq!(status.consecutive_errors, 1);
                    assert_eq!(condition(status, CONDITION_DEGRADED).status, "False");
                }),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn pause_and_resume_hold_the_weight() {
    let mut paused_spec = spec();
    paused_spec.paused = true;
    let paused = Arc::new(Mutex::new(None));
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            // Ten seconds into the step: resuming does not also advance.
            rollout(paused_spec, Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status({
                    let keep = keep(&paused);
                    move |status| {
                        assert_eq!(status.phase, Phase::Paused);
                        assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                        assert_eq!(condition(status, CONDITION_PAUSED).status, "True");
                        keep(status);
                    }
                }),
                Call::Event("Normal", "Paused"),
            ],
        )
        .await
        .unwrap();

    let paused = paused.lock().unwrap().take().unwrap();
    harness
        .reconcile(
            rollout(spec(), Some(paused)),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status(|status| {
                    assert_eq!(status.phase, Phase::Progressing);
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    assert_eq!(condition(status, CONDITION_PAUSED).status, "False");
                }),
                Call::Event("Normal", "Resumed"),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn promote_pushes_full_weight_without_analysis() {
    let mut promoted = spec();
    promoted.promote = true;
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(promoted, Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::ApplyWasmPlugin {
                    weight_bp: 10_000,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!(status.phase, Phase::Promoted);
                    assert_eq!((status.step_index, status.weight_bp), (Some(3), 10_000));
                    assert_eq!(condition(status, CONDITION_READY).status, "True");
                }),
                Call::Event("Normal", "Promoted"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(harness.source.calls(), 0);
}

#[tokio::test]
async fn abort_pushes_weight_zero() {
    let mut aborted = spec();
    aborted.abort = true;
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(aborted, Some(progressing(2, 2_500, 10))),
            vec![
                Call::GetWasmPlugin(live(Some(2_500))),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Aborted, 0));
                }),
                Call::Event("Warning", "Aborted"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(harness.source.calls(), 0);
}

#[tokio::test]
async fn abort_with_a_broken_spec_zeroes_the_live_entry() {
    let mut broken = spec();
    broken.abort = true;
    broken.hosts = vec!["Bad Host".into()];
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(broken, Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Aborted, 0));
                    assert_eq!(condition(status, CONDITION_INVALID_SPEC).status, "True");
                }),
                Call::Event("Warning", "Aborted"),
                Call::Event("Warning", "InvalidSpec"),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_restarted_controller_resumes_the_step_in_status() {
    // Twenty seconds into step 2 of 4 (5%) when the controller restarts: it neither repeats
    // step 1 nor jumps ahead; the bake keeps its start.
    let status = progressing(1, 500, 20);
    let kept = Arc::new(Mutex::new(None));
    let mut restarted = Harness::new(healthy());
    restarted
        .reconcile(
            rollout(spec(), Some(status)),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status({
                    let keep = keep(&kept);
                    move |status| {
                        assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                        assert_eq!(status.step_started_at, Some(Time(t(NOW - 20))));
                        keep(status);
                    }
                }),
            ],
        )
        .await
        .unwrap();

    // Once the bake is over the next step is 25%, entered exactly once.
    let status = kept.lock().unwrap().take().unwrap();
    let mut later = Harness::at(healthy(), t(NOW + 60));
    later
        .reconcile(
            rollout(spec(), Some(status)),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::ApplyWasmPlugin {
                    weight_bp: 2_500,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!((status.step_index, status.weight_bp), (Some(2), 2_500));
                    let advances = status
                        .history
                        .iter()
                        .filter(|entry| entry.reason == "StepAdvanced")
                        .count();
                    assert_eq!(advances, 1);
                }),
                Call::Event("Normal", "StepAdvanced"),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_settled_rollout_with_unchanged_status_writes_nothing() {
    let mut spec = spec();
    spec.promote = true;
    let promoted = CanaryRolloutStatus {
        phase: Phase::Promoted,
        step_index: Some(3),
        weight_bp: 10_000,
        ..CanaryRolloutStatus::default()
    };
    let input = PlanInput {
        rollout: ROLLOUT.into(),
        generation: Some(3),
        evaluation: None,
        routing: None,
    };
    let settled = plan(&spec, Some(&promoted), &input, t(NOW)).status;
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(spec, Some(settled)),
            vec![Call::GetWasmPlugin(live(Some(10_000)))],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_wasm_plugin_leaves_status_where_it_was() {
    let mut harness = Harness::new(healthy());
    let rollout = rollout(spec(), Some(progressing(0, 100, 120)));
    let error = harness
        .reconcile(
            rollout.clone(),
            vec![
                Call::WasmPluginMissing,
                Call::status(|status| {
                    assert_eq!(status.phase, Phase::Progressing);
                    assert_eq!((status.step_index, status.weight_bp), (Some(0), 100));
                    assert_eq!(
                        status.gates,
                        Vec::new(),
                        "the analysis is not recorded either"
                    );
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert_eq!(
                        (degraded.status.as_str(), degraded.reason.as_str()),
                        ("True", "TargetNotFound")
                    );
                    assert!(
                        degraded
                            .message
                            .contains("WasmPlugin shop/cohort not found"),
                        "{}",
                        degraded.message
                    );
                }),
                Call::Event("Warning", "TargetNotFound"),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Push(cause) if matches!(**cause, Error::TargetNotFound(_))),
        "{error}"
    );
    // Retried with backoff, growing per failure in a row.
    let ctx = harness.ctx.clone();
    let rollout = Arc::new(rollout);
    assert_eq!(
        error_policy(rollout.clone(), &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(rollout, &error, ctx),
        Action::requeue(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn a_conflict_is_reported_then_the_retry_succeeds() {
    let mut harness = Harness::new(healthy());
    let first = rollout(spec(), Some(progressing(0, 100, 120)));
    let degraded = Arc::new(Mutex::new(None));
    let error = harness
        .reconcile(
            first.clone(),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: true,
                },
                Call::status({
                    let keep = keep(&degraded);
                    move |status| {
                        assert_eq!((status.step_index, status.weight_bp), (Some(0), 100));
                        let condition = condition(status, CONDITION_DEGRADED);
                        assert_eq!(condition.reason, "TargetConflict");
                        assert!(condition
                            .message
                            .contains(".spec.pluginConfig.anonymous.mode"));
                        keep(status);
                    }
                }),
                Call::Event("Warning", "TargetConflict"),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Push(cause) if matches!(**cause, Error::TargetConflict(_))),
        "{error}"
    );
    assert_eq!(
        error_policy(Arc::new(first), &error, harness.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );

    let status = degraded.lock().unwrap().take().unwrap();
    let retry = rollout(spec(), Some(status));
    harness
        .reconcile(
            retry.clone(),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    let condition = condition(status, CONDITION_DEGRADED);
                    assert_eq!(
                        (condition.status.as_str(), condition.reason.as_str()),
                        ("False", "Healthy")
                    );
                }),
                Call::Event("Normal", "StepAdvanced"),
            ],
        )
        .await
        .unwrap();
    // The success reset the backoff.
    let error = Error::push(Error::TargetUnavailable("again".into()));
    assert_eq!(
        error_policy(Arc::new(retry), &error, harness.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_write_the_target_would_refuse_is_not_pushed() {
    // Another rollout already claims host "checkout": the filter would reject the merge.
    let mut clash = live(Some(100));
    clash["rollouts"]["search"]["hosts"] = json!(["checkout"]);
    // `billing/checkout` already serves through the same WasmPlugin.
    let mut taken = live(Some(100));
    taken["rollouts"][ROLLOUT]["namespace"] = json!("billing");
    let table = [
        (clash, "InvalidFilterConfig", "already claimed"),
        (taken, "TargetConflict", "CanaryRollout billing/checkout"),
    ];
    for (live, reason, message) in table {
        let mut harness = Harness::new(healthy());
        let error = harness
            .reconcile(
                rollout(spec(), Some(progressing(0, 100, 120))),
                vec![
                    Call::GetWasmPlugin(live),
                    Call::status(move |status| {
                        assert_eq!(status.weight_bp, 100);
                        let condition = condition(status, CONDITION_DEGRADED);
                        assert_eq!(condition.reason, reason);
                        assert!(condition.message.contains(message), "{}", condition.message);
                    }),
                    Call::Event("Warning", reason),
                ],
            )
            .await
            .unwrap_err();
        let refused = match reason {
            "InvalidFilterConfig" => {
                matches!(&error, Error::Push(cause) if matches!(**cause, Error::InvalidFilterConfig(_)))
            }
            _ => {
                matches!(&error, Error::Push(cause) if matches!(**cause, Error::TargetConflict(_)))
            }
        };
        assert!(refused, "{reason}: {error}");
    }
}

#[tokio::test]
async fn an_invalid_spec_sets_the_condition_and_pushes_nothing() {
    let mut invalid = spec();
    invalid.hosts = vec!["Bad Host".into()];
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(invalid, Some(progressing(1, 500, 120))),
            vec![
                Call::status(|status| {
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    let condition = condition(status, CONDITION_INVALID_SPEC);
                    assert_eq!(condition.status, "True");
                    assert!(
                        condition.message.contains("spec.hosts[0]"),
                        "{}",
                        condition.message
                    );
                }),
                Call::Event("Warning", "InvalidSpec"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(harness.source.calls(), 0, "an invalid spec is not analysed");
}

#[tokio::test]
async fn an_ecds_file_target_is_an_invalid_spec_in_the_cluster() {
    let mut ecds = spec();
    ecds.target = Target::EnvoyEcds(EnvoyEcdsTarget {
        path: "/etc/envoy/ecds.yaml".into(),
        filter_name: "cohort".into(),
    });
    let mut harness = Harness::new(healthy());
    let action = harness
        .reconcile(
            rollout(ecds, None),
            vec![
                Call::status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Pending, 0));
                    let condition = condition(status, CONDITION_INVALID_SPEC);
                    assert_eq!(condition.status, "True");
                    assert!(condition.message.starts_with("spec.target.envoyEcds:"));
                }),
                Call::Event("Warning", "InvalidSpec"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_makes_no_calls() {
    let (client, server) = mock_client();
    let (_leading, not_leading) = watch::channel(false);
    let ctx = Context::new(
        client,
        CannedSource::new(healthy()),
        Arc::new(FixedClock(t(NOW))),
        Arc::new(Metrics::default()),
        None,
    )
    .with_leadership(not_leading);
    let script = server.expect(Vec::new());
    let action = reconcile(
        Arc::new(rollout(spec(), Some(progressing(0, 100, 120)))),
        Arc::new(ctx),
    )
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
    finished(script).await;
}

#[tokio::test]
async fn reconciles_feed_the_metrics() {
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(spec(), Some(progressing(0, 100, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: false,
                },
                Call::status(|_| {}),
                Call::Event("Normal", "StepAdvanced"),
            ],
        )
        .await
        .unwrap();
    let text = harness.ctx.metrics.render();
    for expected in [
        r#"cohort_controller_rollout_weight_bp{namespace="shop",rollout="checkout"} 500"#,
        r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Progressing"} 1"#,
        r#"cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Pass"} 1"#,
        "cohort_controller_reconcile_duration_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|line| line == expected),
            "missing {expected}\n{text}"
        );
    }
}

#[test]
fn retry_delays_double_up_to_five_minutes() {
    let table = [
        (0, 5),
        (1, 5),
        (2, 10),
        (3, 20),
        (6, 160),
        (7, 300),
        (u32::MAX, 300),
    ];
    for (failures, seconds) in table {
        assert_eq!(
            retry_delay(failures),
            Duration::from_secs(seconds),
            "{failures}"
        );
    }
}

#[test]
fn controller_flags_default_to_the_deployment_manifest() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }
    let defaults = Cli::try_parse_from(["cohort"]).unwrap().args;
    assert_eq!(
        defaults,
        ControllerArgs {
            prometheus: DEFAULT_PROMETHEUS_URL.into(),
            leader_election: true,
            lease_name: "cohort-controller".into(),
            lease_namespace: None,
            metrics_address: "0.0.0.0:9090".parse().unwrap(),
            log_format: LogFormat::Text,
            webhook_url_file: None,
            webhook_format: cohort_rollout::crd::WebhookFormat::Json,
        }
    );
    let given = Cli::try_parse_from([
        "cohort",
        "--leader-election=false",
        "--log-format=json",
        "--prometheus=http://127.0.0.1:9091",
        "--metrics-address=127.0.0.1:8081",
        "--lease-namespace=ops",
        "--webhook-url-file=/etc/cohort/webhook/url",
        "--webhook-format=slack",
    ])
    .unwrap()
    .args;
    assert!(!given.leader_election);
    assert_eq!(given.log_format, LogFormat::Json);
    assert_eq!(given.prometheus, "http://127.0.0.1:9091");
    assert_eq!(given.lease_namespace.as_deref(), Some("ops"));
    assert_eq!(
        given.webhook_url_file.as_deref(),
        Some(std::path::Path::new("/etc/cohort/webhook/url"))
    );
    assert_eq!(
        given.webhook_format,
        cohort_rollout::crd::WebhookFormat::Slack
    );
    assert!(Cli::try_parse_from(["cohort", "--log-format=xml"]).is_err());
    assert!(Cli::try_parse_from(["cohort", "--webhook-format=xml"]).is_err());
}

#[tokio::test]
async fn a_sequential_gate_reads_everything_since_the_step_started() {
    use cohort_rollout::crd::{SequentialGate, SequentialMetric};
    // Interval gates read the last interval (30s); a sequential gate reads the whole step so far
    // (120s here), since an anytime-valid test needs every observation since it began.
    let mut sequential = spec();
    sequential.analysis.gates = vec![GateSpec::new(GateCheck::Sequential(SequentialGate::new(
        SequentialMetric::ErrorRate,
    )))];
    for (spec, window) in [(spec(), 30), (sequential, 120)] {
        let mut harness = Harness::new(thin());
        harness
            .reconcile(
                rollout(spec, Some(progressing(1, 500, 120))),
                vec![Call::GetWasmPlugin(live(Some(500))), Call::status(|_| {})],
            )
            .await
            .unwrap();
        assert_eq!(harness.source.windows(), vec![Duration::from_secs(window)]);
    }
}

// Fault drills against the API server: 500 on the status write, an API server that never
// answers, and the force token's Secret.

impl Harness {
    /// Like [`Harness::new`], with reconciles cut off after `timeout`.
    fn with_timeout(samples: Samples, timeout: Duration) -> Self {
        let (client, server) = mock_client();
        let source = CannedSource::new(samples);
        let ctx = Context::new(
            client,
            source.clone(),
            Arc::new(FixedClock(t(NOW))),
            Arc::new(Metrics::default()),
            Some("cohort-controller-0".into()),
        )
        .with_reconcile_timeout(timeout);
        Harness {
            ctx: Arc::new(ctx),
            server: Some(server),
            source,
        }
    }
}

const STATUS_PATH: &str =
    "/apis/cohort.dev/v1alpha1/namespaces/shop/canaryrollouts/checkout/status";

/// The retry after a lost status write: it starts from the step that was pushed, so with thin
/// data it holds there (no apply: the live weight is already right), writes that step, and
/// announces the advance once.
fn retry_from_the_pushed_step() -> Vec<Call> {
    vec![
        Call::GetWasmPlugin(live(Some(500))),
        Call::status(|status| {
            assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
            let advances = status
                .history
                .iter()
                .filter(|entry| entry.reason == "StepAdvanced")
                .count();
            assert_eq!(advances, 1, "{:?}", status.history);
        }),
        Call::Event("Normal", "StepAdvanced"),
    ]
}

#[tokio::test]
async fn a_500_on_the_status_write_is_retried_from_the_pushed_step() {
    let mut harness = Harness::new(healthy());
    let stored = rollout(spec(), Some(progressing(0, 100, 120)));
    let error = harness
        .reconcile(
            stored.clone(),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: false,
                },
                Call::ServerError(http::Method::PATCH, STATUS_PATH),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Status { .. }), "{error}");
    assert_eq!(error.metric_label(), "status");
    assert_eq!(
        error_policy(Arc::new(stored.clone()), &error, harness.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    // The data turned thin before the retry: re-planning from the stored step 0 would hold
    // there and push 100 bp back over the 500 already served.
    harness.source.set(thin());
    harness
        .reconcile(stored, retry_from_the_pushed_step())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_hung_api_server_times_out_and_the_retry_resumes() {
    let mut harness = Harness::with_timeout(healthy(), Duration::from_millis(300));
    let stored = rollout(spec(), Some(progressing(0, 100, 120)));
    let started = std::time::Instant::now();
    let error = harness
        .reconcile(
            stored.clone(),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: false,
                },
                Call::Hang,
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout(_)), "{error}");
    assert_eq!(error.metric_label(), "timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    harness.source.set(thin());
    harness
        .reconcile(stored, retry_from_the_pushed_step())
        .await
        .unwrap();

    // Hung before anything was pushed: the retry plans from the stored status as if nothing
    // happened (and the drill's failing data rolls back at once).
    let stored = rollout(spec(), Some(progressing(1, 500, 10)));
    let error = harness
        .reconcile(stored.clone(), vec![Call::Hang])
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout(_)), "{error}");
    harness.source.set(failing());
    harness
        .reconcile(
            stored,
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                Call::status(|status| assert_eq!(status.phase, Phase::RolledBack)),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await
        .unwrap();
}

/// A force token long enough for the filter, with a line end as `kubectl create secret
/// --from-file` leaves it.
const TOKEN: &str = "c0h0rt-f0rce-7a1e9b2d4c6f8";

fn spec_with_token() -> CanaryRolloutSpec {
    let mut spec = spec();
    spec.force_token_secret_ref = Some(cohort_rollout::crd::SecretKeyRef {
        name: "checkout-force".into(),
        key: "token".into(),
    });
    spec
}

fn secret() -> Call {
    Call::GetSecret {
        name: "checkout-force",
        key: "token",
        value: Some("c0h0rt-f0rce-7a1e9b2d4c6f8\n"),
    }
}

/// The token goes into the WasmPlugin (that is what the filter reads) and into nothing else the
/// controller writes or logs: not the status, not an Event, not a log line at any level.
#[tokio::test]
async fn the_force_token_reaches_the_wasm_plugin_and_nothing_else() {
    let logs = crate::fixtures::Captured::default();
    let _guard = logs.logs();
    // Proves the capture takes every level. Third-party TRACE callsites are not a reliable
    // witness: one first hit in another test's thread may keep a stale "never" interest.
    tracing::trace!("capture check");
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(spec_with_token(), Some(progressing(0, 100, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                secret(),
                Call::ApplyWasmPlugin {
                    weight_bp: 500,
                    conflict: false,
                },
                Call::status(|status| assert_eq!(status.weight_bp, 500)),
                Call::Event("Normal", "StepAdvanced"),
            ],
        )
        .await
        .unwrap();
    // A missing Secret: the weight holds, the condition and the Event say why.
    let mut missing = Harness::new(healthy());
    let error = missing
        .reconcile(
            rollout(spec_with_token(), Some(progressing(1, 500, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::GetSecret {
                    name: "checkout-force",
                    key: "token",
                    value: None,
                },
                Call::status(|status| {
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert_eq!(degraded.reason, "ForceTokenUnavailable");
                    assert!(
                        degraded
                            .message
                            .contains("Secret shop/checkout-force: not found"),
                        "{}",
                        degraded.message
                    );
                }),
                Call::Event("Warning", "ForceTokenUnavailable"),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Push(cause) if matches!(**cause, Error::ForceTokenUnavailable(_) | Error::ForceTokenInvalid { .. })),
        "{error}"
    );
    let logs = logs.text();
    assert!(logs.contains("capture check"), "nothing was captured");

    let requests = harness.server.as_ref().unwrap().requests();
    let (plugin, others): (Vec<&String>, Vec<&String>) = requests
        .iter()
        .partition(|request| request.starts_with("PATCH /apis/extensions.istio.io/"));
    assert_eq!(plugin.len(), 1);
    let body: Value = serde_json::from_str(plugin[0].split_once('\n').unwrap().1).unwrap();
    assert_eq!(body["spec"]["pluginConfig"]["forceToken"], TOKEN);
    let everything_else = others
        .iter()
        .map(|r| r.as_str())
        .chain(
            missing
                .server
                .as_ref()
                .unwrap()
                .requests()
                .iter()
                .map(|r| r.as_str()),
        )
        .collect::<Vec<_>>()
        .join("\n")
        .to_owned();
    // The Secret itself came back base64-encoded; what the controller sent never has the token.
    assert!(!everything_else.contains(TOKEN), "{everything_else}");
    assert!(!logs.contains(TOKEN), "the token was logged:\n{logs}");
    assert!(!format!("{error} {error:?}").contains(TOKEN));
}

/// Without the Secret, a failing gate still rolls back: the live entry goes to 0 and keeps the
/// live token (an apply without it would switch forcing off for every rollout on the plugin).
#[tokio::test]
async fn an_unreadable_token_does_not_stop_a_rollback() {
    let mut live_with_token = live(Some(500));
    live_with_token["forceToken"] = json!(TOKEN);
    let mut harness = Harness::new(failing());
    harness
        .reconcile(
            rollout(spec_with_token(), Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPlugin(live_with_token),
                Call::GetSecret {
                    name: "checkout-force",
                    key: "token",
                    value: None,
                },
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                Call::status(|status| assert_eq!(status.phase, Phase::RolledBack)),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await
        .unwrap();
    let requests = harness.server.as_ref().unwrap().requests();
    let apply = requests
        .iter()
        .find(|r| r.starts_with("PATCH /apis/extensions.istio.io/"))
        .unwrap();
    let body: Value = serde_json::from_str(apply.split_once('\n').unwrap().1).unwrap();
    assert_eq!(body["spec"]["pluginConfig"]["forceToken"], TOKEN);
}

/// A Secret holding something the filter would refuse: held, and the message describes the
/// value without showing it.
#[tokio::test]
async fn an_unusable_token_is_described_without_being_shown() {
    let mut harness = Harness::new(healthy());
    let error = harness
        .reconcile(
            rollout(spec_with_token(), Some(progressing(0, 100, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(100))),
                Call::GetSecret {
                    name: "checkout-force",
                    key: "token",
                    value: Some("hunter2-secret"),
                },
                Call::status(|status| {
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert!(
                        degraded
                            .message
                            .contains("does not hold a usable force token")
                            && !degraded.message.contains("hunter2"),
                        "{}",
                        degraded.message
                    );
                }),
                Call::Event("Warning", "ForceTokenUnavailable"),
            ],
        )
        .await
        .unwrap_err();
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

/// A controller that stopped between the WasmPlugin apply and the status write (its memory gone
/// with it): the next one finds the live entry a step ahead of status and takes the advance as
/// done. On thin data it then holds there, instead of re-planning from the recorded step and
/// pushing that step's lower weight back.
#[tokio::test]
async fn a_new_controller_takes_an_unrecorded_advance_as_done() {
    let mut harness = Harness::new(thin());
    harness
        .reconcile(
            rollout(spec(), Some(progressing(0, 100, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status(|status| {
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    assert_eq!(status.gates[0].verdict, Verdict::Inconclusive);
                    let advances: Vec<_> = status
                        .history
                        .iter()
                        .filter(|entry| entry.reason == "StepAdvanced")
                        .map(|entry| (entry.from_step, entry.to_step))
                        .collect();
                    assert_eq!(advances, [(Some(0), Some(1))]);
                }),
                Call::Event("Normal", "StepAdvanced"),
            ],
        )
        .await
        .unwrap();
}

/// The same for an unrecorded rollback: the live entry at 0 stays at 0 (recorded now as a
/// rollback), even though the data looks healthy again.
#[tokio::test]
async fn a_new_controller_never_undoes_an_unrecorded_rollback() {
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(spec(), Some(progressing(1, 500, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                Call::status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
                    assert!(
                        status
                            .message
                            .as_deref()
                            .unwrap_or("")
                            .contains("stopped before recording"),
                        "{:?}",
                        status.message
                    );
                }),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await
        .unwrap();
    // A live weight no single transition explains is not adopted: the plan decides as usual.
    let mut odd = Harness::new(thin());
    odd.reconcile(
        rollout(spec(), Some(progressing(0, 100, 120))),
        vec![
            Call::GetWasmPlugin(live(Some(2_500))),
            Call::ApplyWasmPlugin {
                weight_bp: 100,
                conflict: false,
            },
            Call::status(|status| {
                assert_eq!((status.step_index, status.weight_bp), (Some(0), 100))
            }),
        ],
    )
    .await
    .unwrap();
}

/// A gesture made while the transition was unrecorded (the person saw the old status) applies
/// after it, never instead of it: a pause keeps the weight the filter serves, and a promotion
/// does not lift an unrecorded rollback.
#[tokio::test]
async fn gestures_made_before_an_unrecorded_transition_was_recorded_apply_after_it() {
    let mut paused = spec();
    paused.paused = true;
    let mut harness = Harness::new(thin());
    harness
        .reconcile(
            rollout(paused, Some(progressing(0, 100, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status(|status| {
                    assert_eq!(
                        (status.phase, status.step_index, status.weight_bp),
                        (Phase::Paused, Some(1), 500)
                    );
                }),
                Call::Event("Normal", "StepAdvanced"),
                Call::Event("Normal", "Paused"),
            ],
        )
        .await
        .unwrap();

    let mut promoted = spec();
    promoted.promote = true;
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            rollout(promoted, Some(progressing(1, 500, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(0))),
                Call::status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
                }),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await
        .unwrap();
}

// The finalizer: added before the first push without touching other finalizers; on deletion the
// rollout's entry leaves the WasmPlugin, an Event says so, and only then the finalizer goes.

const WASM_PLUGIN_PATH: &str =
    "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/cohort";
/// Another controller's finalizer, which ours must never disturb.
const OTHER_FINALIZER: &str = "backup.example.com/snapshot";

fn with_finalizers(mut rollout: CanaryRollout, finalizers: &[&str]) -> CanaryRollout {
    rollout.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
    rollout
}

/// A rollout marked for deletion, holding our finalizer second (after another controller's).
fn deleted(status: Option<CanaryRolloutStatus>) -> CanaryRollout {
    let mut rollout = with_finalizers(rollout(spec(), status), &[OTHER_FINALIZER, FINALIZER]);
    rollout.metadata.deletion_timestamp = Some(Time(t(NOW - 5)));
    rollout
}

/// The JSON patch that takes our finalizer (at index 1) off, if it still is there.
fn remove_finalizer() -> Call {
    Call::PatchRollout(json!([
        {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
        {"op": "remove", "path": "/metadata/finalizers/1"}
    ]))
}

/// A managedFields entry owning these `spec.pluginConfig` fields.
fn managed(manager: &str, operation: &str, plugin_config: Value) -> Value {
    json!({
        "manager": manager, "operation": operation,
        "apiVersion": "extensions.istio.io/v1alpha1", "time": "2027-01-15T08:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:pluginConfig": plugin_config}}
    })
}

fn owned_entry() -> Value {
    json!({"f:hosts": {}, "f:weightBp": {}, "f:stableVersion": {}, "f:canaryVersion": {}})
}

/// The WasmPlugin as the API server returns it, with the managers that wrote it: its author
/// (client-side kubectl, owning `version`) when `authored`, `search`'s rollout, and ours.
fn plugin_with_owners(plugin_config: Value, authored: bool) -> Value {
    let shared = |rollout: &str| {
        json!({
            "f:version": {},
            "f:anonymous": {"f:mode": {}, "f:cookieName": {}, "f:maxAgeSeconds": {}},
            "f:rollouts": {format!("f:{rollout}"): owned_entry()}
        })
    };
    let mut managed_fields = Vec::new();
    if authored {
        managed_fields.push(managed(
            "kubectl-client-side-apply",
            "Update",
            json!({"f:version": {}, "f:routingHeader": {}}),
        ));
    }
    managed_fields.push(managed("cohort.dev/shop.search", "Apply", shared("search")));
    managed_fields.push(managed(
        "cohort.dev/shop.checkout",
        "Apply",
        shared(ROLLOUT),
    ));
    let mut plugin = crate::fixtures::wasm_plugin(plugin_config);
    plugin["metadata"]["uid"] = json!(PLUGIN_UID);
    plugin["metadata"]["managedFields"] = Value::Array(managed_fields);
    plugin
}

const PLUGIN_UID: &str = "5f0c9a7e-2b1d-4e8f-9c3a-6d2e1f0b7a45";

/// The release: our manager applies nothing, so the API server drops every field only it
/// owned; the uid and resourceVersion read pin the apply to that WasmPlugin (and keep it from
/// creating one).
fn release_body() -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "cohort", "namespace": "shop", "uid": PLUGIN_UID,
                     "resourceVersion": "7"}
    })
}

#[tokio::test]
async fn the_first_reconcile_adds_the_finalizer_and_pushes_nothing() {
    let mut harness = Harness::new(healthy());
    let action = harness
        .reconcile(
            with_finalizers(rollout(spec(), None), &[]),
            vec![Call::PatchRollout(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
            ]))],
        )
        .await
        .unwrap();
    // The patch comes back through the watch, and that reconcile pushes.
    assert_eq!(action, Action::await_change());
    assert_eq!(harness.source.calls(), 0);
}

#[tokio::test]
async fn the_finalizer_joins_other_finalizers_without_replacing_them() {
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            with_finalizers(rollout(spec(), None), &[OTHER_FINALIZER]),
            // The test fails (and the retry re-reads) if the list changed since it was read.
            vec![Call::PatchRollout(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": [OTHER_FINALIZER]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
            ]))],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_deleted_rollout_leaves_the_wasm_plugin_before_its_finalizer_goes() {
    let mut harness = Harness::new(healthy());
    let action = harness
        .reconcile(
            deleted(Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPluginObject(plugin_with_owners(live(Some(500)), true)),
                Call::ApplyWasmPluginExactly {
                    body: release_body(),
                    answer: crate::fixtures::wasm_plugin(live(None)),
                },
                Call::Event("Normal", "TrafficReleased"),
                remove_finalizer(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(
        harness.source.calls(),
        0,
        "a deleted rollout is not analysed"
    );
    let requests = harness.server.as_ref().unwrap().requests();
    let event = requests
        .iter()
        .find(|r| r.starts_with("POST /apis/events.k8s.io/"))
        .unwrap();
    assert!(
        event.contains("removed spec.pluginConfig.rollouts.checkout from WasmPlugin shop/cohort"),
        "{event}"
    );
}

/// The last rollout on a WasmPlugin whose author set no `version`: the release keeps applying
/// `version`, since without it the filter would refuse the config and keep serving the old one,
/// entry included.
#[tokio::test]
async fn a_release_keeps_version_when_no_one_else_holds_it() {
    let only_ours = json!({
        "version": 1,
        "rollouts": {ROLLOUT: live(Some(500))["rollouts"][ROLLOUT].clone()}
    });
    let mut plugin = plugin_with_owners(only_ours, false);
    let ours = plugin["metadata"]["managedFields"][1].clone();
    plugin["metadata"]["managedFields"] = json!([ours]);
    let mut body = release_body();
    body["spec"] = json!({"pluginConfig": {"version": 1}});
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            deleted(Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPluginObject(plugin),
                Call::ApplyWasmPluginExactly {
                    body,
                    answer: crate::fixtures::wasm_plugin(json!({"version": 1, "rollouts": {}})),
                },
                Call::Event("Normal", "TrafficReleased"),
                remove_finalizer(),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_deleted_rollout_whose_wasm_plugin_is_gone_is_let_go() {
    let mut harness = Harness::new(healthy());
    harness
        .reconcile(
            deleted(Some(progressing(1, 500, 10))),
            vec![
                Call::WasmPluginMissing,
                Call::Event("Normal", "TrafficReleased"),
                remove_finalizer(),
            ],
        )
        .await
        .unwrap();
    // And one whose WasmPlugin holds nothing of it: no apply.
    let mut harness = Harness::new(healthy());
    let mut plugin = plugin_with_owners(live(None), true);
    plugin["metadata"]["managedFields"]
        .as_array_mut()
        .unwrap()
        .pop();
    harness
        .reconcile(
            deleted(None),
            vec![
                Call::GetWasmPluginObject(plugin),
                Call::Event("Normal", "TrafficReleased"),
                remove_finalizer(),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_release_keeps_the_finalizer_and_is_retried() {
    let mut harness = Harness::new(healthy());
    let stored = deleted(Some(progressing(1, 500, 10)));
    let error = harness
        .reconcile(
            stored.clone(),
            vec![
                Call::GetWasmPluginObject(plugin_with_owners(live(Some(500)), true)),
                Call::ServerError(http::Method::PATCH, WASM_PLUGIN_PATH),
                Call::status(|status| {
                    // Still where it was: nothing but the condition changes.
                    assert_eq!((status.step_index, status.weight_bp), (Some(1), 500));
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert_eq!(
                        (degraded.status.as_str(), degraded.reason.as_str()),
                        ("True", "TargetUnavailable")
                    );
                    assert!(
                        degraded.message.contains("the deletion waits"),
                        "{}",
                        degraded.message
                    );
                }),
                Call::Event("Warning", "TargetUnavailable"),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Release(cause) if matches!(**cause, Error::TargetUnavailable(_))),
        "{error}"
    );
    assert_eq!(error.metric_label(), "release");
    assert_eq!(
        error_policy(Arc::new(stored.clone()), &error, harness.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(Arc::new(stored.clone()), &error, harness.ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    // The retry: the API server is back.
    harness
        .reconcile(
            stored,
            vec![
                Call::GetWasmPluginObject(plugin_with_owners(live(Some(500)), true)),
                Call::ApplyWasmPluginExactly {
                    body: release_body(),
                    answer: crate::fixtures::wasm_plugin(live(None)),
                },
                Call::Event("Normal", "TrafficReleased"),
                remove_finalizer(),
            ],
        )
        .await
        .unwrap();
}

/// Someone edited the entry by hand (so their manager owns part of it): the release cannot
/// remove it without taking their fields, so it says who and how to fix it, and waits.
#[tokio::test]
async fn an_entry_another_manager_holds_is_named_and_the_deletion_waits() {
    let edited = managed(
        "kubectl-edit",
        "Update",
        json!({"f:rollouts": {"f:checkout": {"f:weightBp": {}}}}),
    );
    let mut plugin = plugin_with_owners(live(Some(500)), true);
    plugin["metadata"]["managedFields"]
        .as_array_mut()
        .unwrap()
        .push(edited.clone());
    // What the API server leaves: the field the other manager owns, and its ownership.
    let mut remaining = live(None);
    remaining["rollouts"][ROLLOUT] = json!({"weightBp": 500});
    let mut after = plugin_with_owners(remaining, true);
    let fields = after["metadata"]["managedFields"].as_array_mut().unwrap();
    fields.pop();
    fields.push(edited);
    let mut harness = Harness::new(healthy());
    let error = harness
        .reconcile(
            deleted(Some(progressing(1, 500, 10))),
            vec![
                Call::GetWasmPluginObject(plugin),
                Call::ApplyWasmPluginExactly {
                    body: release_body(),
                    answer: after,
                },
                Call::status(|status| {
                    let degraded = condition(status, CONDITION_DEGRADED);
                    assert_eq!(degraded.reason, "TargetConflict");
                }),
                Call::Event("Warning", "TargetConflict"),
            ],
        )
        .await
        .unwrap_err();
    let (Error::Release(_), Error::TargetConflict(message)) = (&error, error.cause()) else {
        panic!("expected a release conflict, got {error}");
    };
    assert!(message.contains("(kubectl-edit)"), "{message}");
    assert!(
        message.contains("kubectl edit wasmplugin -n shop cohort"),
        "{message}"
    );
}

#[tokio::test]
async fn a_deleted_rollout_without_our_finalizer_is_left_alone() {
    let mut harness = Harness::new(healthy());
    let mut gone = deleted(None);
    gone.metadata.finalizers = Some(vec![OTHER_FINALIZER.to_owned()]);
    let action = harness.reconcile(gone, Vec::new()).await.unwrap();
    assert_eq!(action, Action::await_change());
}

// What starts a reconcile: the watch is filtered by `reconcile_trigger`, so the status a
// reconcile writes does not start the next one.

#[test]
fn status_writes_do_not_start_a_reconcile_but_spec_finalizer_and_deletion_changes_do() {
    let stored = rollout(spec(), Some(progressing(1, 500, 30)));
    let trigger = reconcile_trigger(&stored);
    let changed = |change: fn(&mut CanaryRollout)| {
        let mut rollout = stored.clone();
        change(&mut rollout);
        reconcile_trigger(&rollout)
    };
    // A reconcile's own writes: the status (one more error counted, a new analysis time) and
    // the resourceVersion the API server gives it.
    type Change = (&'static str, fn(&mut CanaryRollout));
    let quiet: [Change; 3] = [
        ("status", |r| {
            let status = r.status.as_mut().unwrap();
            status.consecutive_errors += 1;
            status.last_analysis_at = Some(Time(t(NOW)));
        }),
        ("resourceVersion", |r| {
            r.metadata.resource_version = Some("8".into())
        }),
        ("annotations", |r| {
            r.metadata.annotations = Some([("note".into(), "x".into())].into())
        }),
    ];
    for (what, change) in quiet {
        assert_eq!(changed(change), trigger, "{what} started a reconcile");
    }
    let triggering: [Change; 4] = [
        // `cohort pause` and every other gesture edit the spec.
        ("generation", |r| r.metadata.generation = Some(4)),
        ("our finalizer added", |r| {
            r.metadata.finalizers = None;
        }),
        ("another finalizer", |r| {
            r.metadata
                .finalizers
                .as_mut()
                .unwrap()
                .push(OTHER_FINALIZER.into())
        }),
        ("deletion", |r| {
            r.metadata.deletion_timestamp = Some(Time(t(NOW)))
        }),
    ];
    for (what, change) in triggering {
        assert_ne!(changed(change), trigger, "{what} started no reconcile");
    }

    // Without a generation every change counts.
    let mut no_generation = stored.clone();
    no_generation.metadata.generation = None;
    let before = reconcile_trigger(&no_generation);
    no_generation.metadata.resource_version = Some("9".into());
    assert_ne!(reconcile_trigger(&no_generation), before);
}

/// The trigger stream the controller runs on, against an API server that lists one rollout and
/// then watches it change: the status write a reconcile makes starts no reconcile, a spec
/// change does.
#[tokio::test]
async fn the_watch_starts_a_reconcile_for_a_spec_change_not_for_a_status_write() {
    use http::{Request, Response};
    use kube::client::Body;

    let with_version = |rollout: &mut CanaryRollout, version: &str| {
        rollout.metadata.resource_version = Some(version.to_owned());
        serde_json::to_value(&*rollout).unwrap()
    };
    let mut stored = rollout(spec(), Some(progressing(1, 500, 30)));
    let listed = with_version(&mut stored, "1");
    stored.status.as_mut().unwrap().consecutive_errors = 1;
    let status_written = with_version(&mut stored, "2");
    stored.metadata.generation = Some(4);
    let spec_changed = with_version(&mut stored, "3");

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let (list, answer) = handle.next_request().await.unwrap();
        assert!(
            !list.uri().to_string().contains("watch=true"),
            "{}",
            list.uri()
        );
        let page = json!({"apiVersion": "cohort.dev/v1alpha1", "kind": "CanaryRolloutList",
            "metadata": {"resourceVersion": "1"}, "items": [listed]});
        answer.send_response(Response::new(Body::from(page.to_string().into_bytes())));
        let (watch, answer) = handle.next_request().await.unwrap();
        assert!(
            watch.uri().to_string().contains("watch=true"),
            "{}",
            watch.uri()
        );
        let events: String = [status_written, spec_changed]
            .into_iter()
            .map(|object| json!({"type": "MODIFIED", "object": object}).to_string() + "\n")
            .collect();
        answer.send_response(Response::new(Body::from(events.into_bytes())));
        // Hold any later watch open: the test has what it needs by then.
        std::future::pending::<()>().await;
    });
    let (_store, triggers) = rollout_triggers(&Client::new(service, "default"));
    let triggered: Vec<CanaryRollout> = tokio::time::timeout(
        TIMEOUT,
        triggers.take(2).map(|rollout| rollout.unwrap()).collect(),
    )
    .await
    .expect("the watch never delivered the spec change");
    server.abort();
    let seen: Vec<_> = triggered
        .iter()
        .map(|r| r.metadata.resource_version.as_deref())
        .collect();
    assert_eq!(seen, [Some("1"), Some("3")]);
}

/// The route misses the routing header: the filter decided 1,000 requests for the canary, the
/// canary served none, and stable served them all.
fn misrouted() -> Samples {
    let mut samples = traffic((0.0, 0.0), (11_000.0, 11.0));
    samples.canary.requests = Observed::NoData;
    samples.canary.server_errors = Observed::NoData;
    samples.canary.decisions = Observed::Value(1_000.0);
    samples.stable.decisions = Observed::Value(10_000.0);
    samples
}

#[tokio::test]
async fn a_misrouted_canary_holds_with_a_condition_and_an_event() {
    let mut harness = Harness::new(misrouted());
    harness
        .reconcile(
            rollout(spec(), Some(progressing(1, 500, 120))),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::Progressing, 500));
                    assert_eq!(status.routing_mismatch_since, Some(Time(t(NOW))));
                    let mismatch = condition(status, CONDITION_ROUTING_MISMATCH);
                    assert_eq!(
                        (mismatch.status.as_str(), mismatch.reason.as_str()),
                        ("True", "CanaryNotServed")
                    );
                    for wanted in [
                        "served 0 of the 1,000",
                        "stable 11,000",
                        "VirtualService",
                        "CLIENT",
                    ] {
                        assert!(
                            mismatch.message.contains(wanted),
                            "{wanted:?} in {}",
                            mismatch.message
                        );
                    }
                }),
                Call::Event("Warning", "RoutingMismatch"),
            ],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_misrouted_canary_is_rolled_back_after_the_deadline() {
    let mut harness = Harness::new(misrouted());
    let since_deadline = CanaryRolloutStatus {
        routing_mismatch_since: Some(Time(t(NOW - 300))),
        ..progressing(1, 500, 400)
    };
    harness
        .reconcile(
            rollout(spec(), Some(since_deadline)),
            vec![
                Call::GetWasmPlugin(live(Some(500))),
                Call::ApplyWasmPlugin {
                    weight_bp: 0,
                    conflict: false,
                },
                Call::status(|status| {
                    assert_eq!((status.phase, status.weight_bp), (Phase::RolledBack, 0));
                    assert_eq!(status.routing_mismatch_since, None);
                    let last = status.history.last().unwrap();
                    assert!(
                        last.message
                            .contains("has not served the requests decided for it"),
                        "{}",
                        last.message
                    );
                }),
                Call::Event("Warning", "RolledBack"),
            ],
        )
        .await
        .unwrap();
}

mod workload;
