//! The Kubernetes I/O of a reconcile, in one place: the status subresource (server-side apply)
//! and the conditions a failed reconcile sets there, Events (and the webhook notifications they
//! make), the finalizer, and the force token's Secret. [`ClusterStore`] is the driver's
//! [`StatusStore`] over them.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Client, Resource, ResourceExt};

use super::{key, Context, FINALIZER, STATUS_FIELD_MANAGER};
use crate::driver::{Order, Start, StatusStore};
use crate::force_token;
use crate::notify::{self, Webhook};
use crate::source::BoxFuture;
use crate::{Error, Result};
use cohort_rollout::crd::{CanaryRollout, CanaryRolloutSpec, CanaryRolloutStatus};
use cohort_rollout::plan::{EventKind, PlannedEvent, CONDITION_DEGRADED, CONDITION_INVALID_SPEC};

/// Event notes are capped at 1 kB by the API.
const MAX_EVENT_NOTE: usize = 1024;

/// A status that was served but not written, and the stored status it was planned from.
pub(super) struct Unrecorded {
    stored: Option<CanaryRolloutStatus>,
    planned: CanaryRolloutStatus,
    /// Its Events, published once the status is written.
    events: Vec<PlannedEvent>,
}

/// One CanaryRollout's status as a reconcile sees it: the status subresource, the Events on the
/// rollout, and (in the [`Context`], across reconciles) the status it pushed but could not write.
pub(super) struct ClusterStore<'a> {
    rollout: &'a CanaryRollout,
    ctx: &'a Context,
    namespace: &'a str,
    name: &'a str,
    now: Timestamp,
}

impl<'a> ClusterStore<'a> {
    pub(super) fn new(
        rollout: &'a CanaryRollout,
        ctx: &'a Context,
        (namespace, name): (&'a str, &'a str),
        now: Timestamp,
    ) -> Self {
        ClusterStore {
            rollout,
            ctx,
            namespace,
            name,
            now,
        }
    }
}

impl StatusStore for ClusterStore<'_> {
    /// Status is the source of truth (`kubectl`, the CLI and a successor replica read it), so it
    /// never records a weight the WasmPlugin does not serve.
    fn order(&self) -> Order {
        Order::PushThenRecord
    }

    /// A status pushed but not written by an earlier reconcile (its status write failed, or it
    /// timed out) is where this one starts, while the stored status is still the one it was
    /// planned from: the step it entered is neither repeated nor undone.
    fn start(&mut self) -> Start {
        let remembered = self.ctx.unrecorded().remove(&key(self.rollout));
        match remembered {
            Some(entry) if entry.stored == self.rollout.status => Start {
                status: Some(entry.planned),
                events: entry.events,
                remembered: true,
            },
            _ => Start {
                status: self.rollout.status.clone(),
                events: Vec::new(),
                remembered: false,
            },
        }
    }

    /// From here until the status is written, the plan counts as served: a reconcile cut short
    /// (an error, a timeout) is retried from it.
    fn serving(&mut self, planned: &CanaryRolloutStatus, events: &[PlannedEvent]) {
        self.ctx.unrecorded().insert(
            key(self.rollout),
            Unrecorded {
                stored: self.rollout.status.clone(),
                planned: planned.clone(),
                events: events.to_vec(),
            },
        );
    }

    fn record<'s>(&'s mut self, status: &'s CanaryRolloutStatus) -> BoxFuture<'s, Result<()>> {
        Box::pin(async move {
            write_status(self.rollout, self.ctx, self.namespace, self.name, status).await?;
            self.ctx.unrecorded().remove(&key(self.rollout));
            Ok(())
        })
    }

    fn publish<'s>(
        &'s mut self,
        status: &'s CanaryRolloutStatus,
        events: &'s [PlannedEvent],
    ) -> BoxFuture<'s, ()> {
        Box::pin(async move {
            for event in events {
                publish(self.rollout, self.ctx, event, "Reconcile").await;
            }
            notify(
                self.rollout,
                self.ctx,
                (self.namespace, self.name),
                status,
                events,
                self.now,
            );
        })
    }

    /// Nothing was served: the retry plans from the stored status again.
    fn failed<'s>(&'s mut self, error: &'s Error) -> BoxFuture<'s, Result<()>> {
        Box::pin(async move {
            self.ctx.unrecorded().remove(&key(self.rollout));
            record_failure(
                self.rollout,
                self.ctx,
                (self.namespace, self.name),
                error,
                self.now,
            )
            .await
        })
    }
}

/// Runs `apply` for a rollout holding the controller's finalizer, `cleanup` for one marked for
/// deletion, after adding the finalizer to one without it (kube-runtime's helper: a JSON patch
/// that tests the list it extends, so it never clobbers another finalizer; the rollout comes back
/// through the watch and is reconciled then).
pub(super) async fn with_finalizer<Apply, Cleanup>(
    ctx: &Context,
    rollout: &Arc<CanaryRollout>,
    (namespace, name): (&str, &str),
    apply: impl FnOnce(Arc<CanaryRollout>) -> Apply,
    cleanup: impl FnOnce(Arc<CanaryRollout>) -> Cleanup,
) -> Result<Action>
where
    Apply: Future<Output = Result<Action>>,
    Cleanup: Future<Output = Result<Action>>,
{
    let api: Api<CanaryRollout> = Api::namespaced(ctx.client.clone(), namespace);
    finalizer(&api, FINALIZER, rollout.clone(), |event| async move {
        match event {
            finalizer::Event::Apply(rollout) => apply(rollout).await,
            finalizer::Event::Cleanup(rollout) => cleanup(rollout).await,
        }
    })
    .await
    .map_err(|error| finalizer_error(error, namespace, name))
}

fn finalizer_error(error: finalizer::Error<Error>, namespace: &str, name: &str) -> Error {
    let failed = |action, detail: String| Error::Finalizer {
        action,
        rollout: format!("{namespace}/{name}"),
        detail,
    };
    match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
        finalizer::Error::AddFinalizer(error) => failed("add", error.to_string()),
        finalizer::Error::RemoveFinalizer(error) => failed("remove", error.to_string()),
        other @ (finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer) => {
            failed("add or remove", other.to_string())
        }
    }
}

/// The force token the spec names: a Secret's key (`None` when it names none). A token file is
/// for `cohort run`; in a cluster it is an error.
pub(super) async fn force_token(
    client: &Client,
    spec: &CanaryRolloutSpec,
    namespace: &str,
) -> Result<Option<String>, Error> {
    match (&spec.force_token_secret_ref, &spec.force_token_file) {
        (Some(reference), _) => force_token::from_secret(client, namespace, reference)
            .await
            .map(Some),
        (None, Some(_)) => Err(Error::ForceTokenUnavailable(
            "spec.forceTokenFile is read by `cohort run` next to Envoy; in a cluster, name a \
             Secret in spec.forceTokenSecretRef"
                .to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

/// Status stays where it was; a `Degraded` condition says why the push (or, for a deleted
/// rollout, the release) failed, and a Warning Event announces it when the condition turns on
/// or changes reason.
pub(super) async fn record_failure(
    rollout: &CanaryRollout,
    ctx: &Context,
    (namespace, name): (&str, &str),
    error: &Error,
    now: Timestamp,
) -> Result<()> {
    // The detail is what failed; the message says what was being done.
    let (reason, detail) = match error.degraded_reason() {
        Some(reason) => (reason, error.cause().to_string()),
        None => ("ReconcileFailed", error.to_string()),
    };
    let (message, action) = match error {
        Error::Release(_) => (
            format!(
                "the entry was not removed from the target, so the deletion waits (retried): \
                 {detail}"
            ),
            "Release",
        ),
        _ => (
            format!("the weight was not pushed, status is unchanged: {detail}"),
            "Push",
        ),
    };
    let mut status = rollout.status.clone().unwrap_or_default();
    let announce = set_condition(
        &mut status.conditions,
        CONDITION_DEGRADED,
        reason,
        &message,
        rollout.metadata.generation,
        now,
    );
    write_status(rollout, ctx, namespace, name, &status).await?;
    if announce {
        let event = PlannedEvent {
            kind: EventKind::Warning,
            reason: reason.to_owned(),
            message,
        };
        publish(rollout, ctx, &event, action).await;
        notify(
            rollout,
            ctx,
            (namespace, name),
            &status,
            std::slice::from_ref(&event),
            now,
        );
    }
    Ok(())
}

/// An ECDS file target in the cluster: `InvalidSpec` naming the field, once announced, and no
/// further action until the spec changes.
pub(super) async fn refuse_target(
    rollout: &CanaryRollout,
    ctx: &Context,
    (namespace, name): (&str, &str),
    now: Timestamp,
) -> Result<Action> {
    let message = "spec.target.envoyEcds: an Envoy ECDS file is served by `cohort run` next to \
                   Envoy; in a cluster, target a WasmPlugin (spec.target.wasmPlugin)";
    let mut status = rollout.status.clone().unwrap_or_default();
    let announce = set_condition(
        &mut status.conditions,
        CONDITION_INVALID_SPEC,
        "InvalidSpec",
        message,
        rollout.metadata.generation,
        now,
    );
    status.message = Some(message.to_owned());
    status.observed_generation = rollout.metadata.generation;
    write_status(rollout, ctx, namespace, name, &status).await?;
    if announce {
        let event = PlannedEvent {
            kind: EventKind::Warning,
            reason: "InvalidSpec".to_owned(),
            message: message.to_owned(),
        };
        publish(rollout, ctx, &event, "Reconcile").await;
    }
    ctx.metrics.observe_rollout(namespace, name, &status);
    Ok(Action::await_change())
}

/// Sets condition `kind` to True with `reason`; returns whether it was not True with that reason
/// before (so it is worth an Event).
fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(condition) => {
            let news = condition.status != "True" || condition.reason != reason;
            if condition.status != "True" {
                condition.last_transition_time = now;
            }
            condition.status = "True".to_owned();
            condition.reason = reason.to_owned();
            condition.message = message.to_owned();
            condition.observed_generation = generation;
            news
        }
        None => {
            conditions.push(Condition {
                type_: kind.to_owned(),
                status: "True".to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_time: now,
                observed_generation: generation,
            });
            true
        }
    }
}

/// Server-side applies `status` on the status subresource, unless it is what is stored. Forced:
/// the controller is the only writer of status (the CLI's verbs set spec fields), so a stray
/// manager that touched status must not wedge it.
async fn write_status(
    rollout: &CanaryRollout,
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &CanaryRolloutStatus,
) -> Result<()> {
    if rollout.status.as_ref() == Some(status) {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": CanaryRollout::api_version(&()),
        "kind": CanaryRollout::kind(&()),
        "status": status,
    });
    let api: Api<CanaryRollout> = Api::namespaced(ctx.client.clone(), namespace);
    let params = PatchParams::apply(STATUS_FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&body))
        .await
        .map_err(|source| Error::Status {
            rollout: format!("{namespace}/{name}"),
            source,
        })?;
    Ok(())
}

/// Queues the notifications `events` make for the rollout's webhook and the controller-wide one;
/// never waits (the Secret holding the URL is read by the sending task).
fn notify(
    rollout: &CanaryRollout,
    ctx: &Context,
    (namespace, name): (&str, &str),
    status: &CanaryRolloutStatus,
    events: &[PlannedEvent],
    now: Timestamp,
) {
    let Some(notifier) = &ctx.notifier else {
        return;
    };
    let cycle = notify::Cycle {
        namespace,
        name,
        steps: rollout.spec.steps.len(),
        status,
        now,
    };
    let notifications = notify::notifications(cycle, events);
    if notifications.is_empty() {
        return;
    }
    let own = rollout
        .spec
        .notifications
        .as_ref()
        .map(|spec| &spec.webhook);
    let own = Webhook::of_cluster_rollout(own, &ctx.client, namespace, name);
    notifier.notify(own, notifications);
}

/// Publishes an Event on the rollout. Events are best effort: a failure is logged, never fails
/// the reconcile (a retry would re-plan from the new status and not plan the Event again).
pub(super) async fn publish(
    rollout: &CanaryRollout,
    ctx: &Context,
    event: &PlannedEvent,
    action: &str,
) {
    let mut note = event.message.clone();
    if note.len() > MAX_EVENT_NOTE {
        let mut cut = MAX_EVENT_NOTE;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let published = ctx
        .recorder
        .publish(
            &Event {
                type_: match event.kind {
                    EventKind::Normal => EventType::Normal,
                    EventKind::Warning => EventType::Warning,
                },
                reason: event.reason.clone(),
                note: Some(note),
                action: action.to_owned(),
                secondary: None,
            },
            &rollout.object_ref(&()),
        )
        .await;
    if let Err(error) = published {
        tracing::warn!(rollout = %rollout.name_any(), reason = %event.reason, %error, "cannot publish Event");
    }
}
