//! Scripted API-server tests of notifications: what a reconcile's Events send to a real local
//! webhook, and that the reconcile never waits for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use tokio::sync::oneshot;

use super::tests::{failing, healthy, progressing, t, NOW};
use super::*;
use crate::fixtures::{
    finished, mock_client, rollout, ApiServer, Call, CannedSource, FixedClock, TempDir, TIMEOUT,
};
use crate::notify::tests::{file_webhook, quick, Hook, Reply};
use cohort_rollout::crd::{
    CanaryRolloutStatus, NotificationsSpec, Phase, SecretKeyRef, WebhookSpec,
};
use cohort_rollout::evaluate::Samples;

/// The reconciler tests' rollout (steps 1, 5, 25 then 100; one error-rate gate) with the
/// webhook's URL in Secret `checkout-webhook`.
fn spec() -> CanaryRolloutSpec {
    let mut spec = super::tests::spec();
    spec.notifications = Some(NotificationsSpec {
        webhook: WebhookSpec {
            url_secret_ref: Some(SecretKeyRef {
                name: "checkout-webhook".into(),
                key: "url".into(),
            }),
            url_file: None,
            format: WebhookFormat::Json,
        },
    });
    spec
}

fn at_step_two() -> CanaryRolloutStatus {
    progressing(1, 500, 10)
}

/// The WasmPlugin's `pluginConfig` with our entry at `weight_bp` (`None`: not there yet), as
/// our applies left it.
fn live(weight_bp: Option<u32>) -> serde_json::Value {
    let empty = json!({"version": 1, "rollouts": {}});
    let Some(weight_bp) = weight_bp else {
        return empty;
    };
    let ours = crate::target::wasmplugin::owned_fields(
        "checkout",
        &cohort_rollout::filter_config::spec_to_filter_config(
            &spec(),
            "shop",
            "checkout",
            weight_bp,
        )
        .unwrap(),
    )
    .unwrap();
    crate::target::wasmplugin::merge(&empty, &ours)
}

fn context(
    samples: Samples,
    everywhere: Option<Webhook>,
) -> (Arc<Context>, ApiServer, Arc<Metrics>) {
    let (client, server) = mock_client();
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::new(quick(), metrics.clone(), everywhere).unwrap();
    let ctx = Context::new(
        client,
        CannedSource::new(samples),
        Arc::new(FixedClock(t(NOW))),
        metrics.clone(),
        Some("cohort-controller-0".into()),
    )
    .with_notifier(Arc::new(notifier));
    (Arc::new(ctx), server, metrics)
}

/// A rollback sends one notification, to the URL in the rollout's Secret (read after the
/// Event, by the sending task); the reconcile returns while the webhook still holds its answer.
#[tokio::test]
async fn a_rollback_sends_one_notification_without_waiting_for_the_webhook() {
    let (release, held) = oneshot::channel();
    let mut hook = Hook::start(vec![Reply::After(held)]).await;
    let url: &'static str = Box::leak(hook.url.clone().into_boxed_str());
    let (ctx, server, metrics) = context(failing(), None);
    let script = server.expect(vec![
        Call::GetWasmPlugin(live(Some(500))),
        Call::ApplyWasmPlugin {
            weight_bp: 0,
            conflict: false,
        },
        Call::status(|status| assert_eq!(status.phase, Phase::RolledBack)),
        Call::Event("Warning", "RolledBack"),
        Call::GetSecret {
            name: "checkout-webhook",
            key: "url",
            value: Some(url),
        },
    ]);
    let rollout = Arc::new(rollout(spec(), Some(at_step_two())));
    // The webhook cannot answer before `release` fires, which is after the reconcile returned:
    // a reconcile that waited for it would hang here and fail on the timeout.
    let action = tokio::time::timeout(TIMEOUT, reconcile(rollout, ctx.clone()))
        .await
        .expect("the reconcile waited for the webhook")
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(cohort_rollout::plan::SETTLED_REQUEUE)
    );
    let received = hook.next().await;
    release.send(()).unwrap();
    finished(script).await;
    assert_eq!(received.body["event"], "rolledBack");
    assert_eq!(received.body["reason"], "RolledBack");
    assert_eq!(received.body["kind"], "Warning");
    assert_eq!(received.body["namespace"], "shop");
    assert_eq!(received.body["rollout"], "checkout");
    assert_eq!(received.body["phase"], "RolledBack");
    assert_eq!(
        (
            received.body["step"].clone(),
            received.body["steps"].clone()
        ),
        (json!(2), json!(4))
    );
    assert_eq!(received.body["weightBp"], 0);
    assert_eq!(received.body["time"], "2027-01-15T08:16:40Z");
    let message = received.body["message"].as_str().unwrap();
    assert!(
        message.starts_with("rolled back from 5% at step 2: a gate failed"),
        "{message}"
    );
    ctx.notifier.as_ref().unwrap().drain(TIMEOUT).await;
    assert!(hook.rest().is_empty(), "one notification");
    assert_eq!(
        metrics
            .render()
            .matches("notifications_total{outcome=\"sent\"} 1")
            .count(),
        1
    );
}

/// A push that fails sets `Degraded` (a Warning Event): the controller-wide webhook hears it,
/// in Slack's format, from its file; no Secret is read for it.
#[tokio::test]
async fn a_failed_push_notifies_the_controller_wide_webhook() {
    let dir = TempDir::new("notify-degraded");
    let mut hook = Hook::start(vec![]).await;
    let everywhere = file_webhook(&dir, "url", &hook.url, WebhookFormat::Slack);
    let (ctx, server, _) = context(healthy(), Some(everywhere));
    let mut quiet = spec();
    quiet.notifications = None;
    let script = server.expect(vec![
        Call::WasmPluginMissing,
        Call::status(|status| assert_eq!(status.phase, Phase::Progressing)),
        Call::Event("Warning", "TargetNotFound"),
    ]);
    let rollout = Arc::new(rollout(quiet, Some(at_step_two())));
    let error = tokio::time::timeout(TIMEOUT, reconcile(rollout, ctx.clone()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, Error::Push(_)), "{error}");
    finished(script).await;
    let text = hook.next().await.body["text"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with(":warning: *shop/checkout* TargetNotFound: the weight was not pushed"),
        "{text}"
    );
    assert!(
        text.ends_with("(Progressing, step 2/4, canary at 5%)"),
        "{text}"
    );
    ctx.notifier.as_ref().unwrap().drain(TIMEOUT).await;
    assert!(hook.rest().is_empty());
}

fn secret(url: &'static str) -> Call {
    Call::GetSecret {
        name: "checkout-webhook",
        key: "url",
        value: Some(url),
    }
}

/// A webhook that never answers, then fails: the first notification is tried three times and
/// given up, while the rollout goes on: the next reconcile runs, and notifies (the Secret now
/// holds another webhook's URL, read afresh), while the first request still hangs.
#[tokio::test]
async fn a_hanging_then_failing_webhook_is_given_up_while_the_rollout_goes_on() {
    let mut failing_hook =
        Hook::start(vec![Reply::Never, Reply::Status(500), Reply::Status(500)]).await;
    let mut next_hook = Hook::start(vec![]).await;
    let leak = |hook: &Hook| -> &'static str { Box::leak(hook.url.clone().into_boxed_str()) };
    let (ctx, server, metrics) = context(healthy(), None);
    let script = server.expect(vec![
        Call::GetWasmPlugin(live(None)),
        Call::ApplyWasmPlugin {
            weight_bp: 100,
            conflict: false,
        },
        Call::status(|status| assert_eq!(status.phase, Phase::Progressing)),
        Call::Event("Normal", "Started"),
        secret(leak(&failing_hook)),
    ]);
    let started = tokio::time::timeout(
        TIMEOUT,
        reconcile(Arc::new(rollout(spec(), None)), ctx.clone()),
    )
    .await
    .expect("the reconcile waited for the webhook");
    assert!(started.is_ok(), "{started:?}");
    let server = finished(script).await;
    // The first attempt is in, and will never be answered.
    assert_eq!(failing_hook.next().await.body["event"], "runStarted");

    let script = server.expect(vec![
        Call::GetWasmPlugin(live(Some(100))),
        Call::ApplyWasmPlugin {
            weight_bp: 500,
            conflict: false,
        },
        Call::status(|status| assert_eq!(status.weight_bp, 500)),
        Call::Event("Normal", "StepAdvanced"),
        secret(leak(&next_hook)),
    ]);
    let advanced = tokio::time::timeout(
        TIMEOUT,
        reconcile(
            Arc::new(rollout(spec(), Some(progressing(0, 100, 120)))),
            ctx.clone(),
        ),
    )
    .await
    .expect("the reconcile waited for the webhook");
    assert!(advanced.is_ok(), "{advanced:?}");
    finished(script).await;
    assert_eq!(next_hook.next().await.body["event"], "stepAdvanced");

    ctx.notifier
        .as_ref()
        .unwrap()
        .drain(Duration::from_secs(10))
        .await;
    let retries: Vec<_> = failing_hook
        .rest()
        .into_iter()
        .map(|r| r.body["event"].clone())
        .collect();
    assert_eq!(
        retries,
        ["runStarted", "runStarted"],
        "two retries, then given up"
    );
    assert!(next_hook.rest().is_empty());
    let page = metrics.render();
    assert!(
        page.contains("notifications_total{outcome=\"failed\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("notifications_total{outcome=\"sent\"} 1"),
        "{page}"
    );
}
