//! What a webhook is told, as pure functions: which of a cycle's Events notify ([`topic`], by
//! reason), and the body each notification becomes ([`Notification::body`]): cohort's JSON
//! object, or Slack's incoming-webhook message.
//!
//! The mapping is by reason string, so a reason another part of the controller adds notifies as
//! soon as it is planned, with no change here beyond the table.

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use cohort_rollout::crd::{CanaryRolloutStatus, WebhookFormat};
use cohort_rollout::format::weight_percent;
use cohort_rollout::plan::{EventKind, PlannedEvent};

/// What kind of milestone a notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// A run starts: the first step is served.
    RunStarted,
    /// The canary moved to the next step.
    StepAdvanced,
    /// The canary serves everyone, or is being made the new stable.
    Promotion,
    /// The promotion could not finish.
    PromotionFailed,
    /// Everyone is back on stable because the canary failed.
    RolledBack,
    /// Everyone is back on stable because a person said so.
    Aborted,
    /// The rollout holds on trouble (the `Degraded` condition turned true), or its canary is not
    /// served.
    Degraded,
}

impl Topic {
    /// The name in the JSON body's `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::RunStarted => "runStarted",
            Topic::StepAdvanced => "stepAdvanced",
            Topic::Promotion => "promotion",
            Topic::PromotionFailed => "promotionFailed",
            Topic::RolledBack => "rolledBack",
            Topic::Aborted => "aborted",
            Topic::Degraded => "degraded",
        }
    }

    fn emoji(self) -> &'static str {
        match self {
            Topic::RunStarted | Topic::StepAdvanced => ":arrow_forward:",
            Topic::Promotion => ":white_check_mark:",
            Topic::PromotionFailed | Topic::RolledBack => ":rotating_light:",
            Topic::Aborted => ":no_entry:",
            Topic::Degraded => ":warning:",
        }
    }
}

/// Which Events notify, by reason. Each `Degraded` reason is planned only when the condition
/// turns true (or, for a failed push, changes reason), so each notifies once per episode.
/// `RoutingMismatch` is both the Event of a hold starting and the `Degraded` reason once its
/// deadline passes under `onRoutingMismatch: hold`: both mean users are not getting the canary.
/// Not notified: `Restarted` (the run's start follows in the same cycle), `Paused`, `Resumed`,
/// `RestartIgnored`, `RoutingRestored`, `InvalidSpec`, `TrafficReleased`, `CanaryScaled`,
/// `ScaledDown`.
pub fn topic(reason: &str) -> Option<Topic> {
    Some(match reason {
        "Started" | "RunStarted" => Topic::RunStarted,
        "StepAdvanced" => Topic::StepAdvanced,
        "Promoted" | "PromotionStarted" | "Succeeded" => Topic::Promotion,
        "PromotionFailed" => Topic::PromotionFailed,
        "RolledBack" => Topic::RolledBack,
        "Aborted" => Topic::Aborted,
        // The plan's (analysis trouble), the workload's, and a failed push's
        // (`Error::degraded_reason`, set by `record_failure`).
        "AnalysisErrors"
        | "NoData"
        | "RoutingMismatch"
        | "Underpowered"
        | "WorkloadMissing"
        | "TargetNotFound"
        | "TargetConflict"
        | "InvalidFilterConfig"
        | "TargetUnavailable"
        | "TargetRejected"
        | "ForceTokenUnavailable"
        | "ReconcileFailed" => Topic::Degraded,
        _ => return None,
    })
}

/// One notification: an Event that notifies, with where the rollout stands after the cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The rollout's namespace (empty for a `cohort run` file without one).
    pub namespace: String,
    /// The rollout's name.
    pub rollout: String,
    /// What kind of milestone.
    pub topic: Topic,
    /// The Event's reason.
    pub reason: String,
    /// The Event's type.
    pub kind: EventKind,
    /// The Event's message.
    pub message: String,
    /// The phase after the cycle.
    pub phase: String,
    /// The step after the cycle, counted from 1 (`None` before the first).
    pub step: Option<u32>,
    /// How many steps the spec has.
    pub steps: usize,
    /// The canary weight after the cycle, in basis points.
    pub weight_bp: u32,
    /// The cycle's time.
    pub time: Timestamp,
}

/// The rollout `namespace/name` as the controller saw it this cycle: its spec's step count and
/// the status the cycle recorded.
#[derive(Debug, Clone, Copy)]
pub struct Cycle<'a> {
    /// `metadata.namespace` (empty without one).
    pub namespace: &'a str,
    /// `metadata.name`.
    pub name: &'a str,
    /// How many steps the spec has.
    pub steps: usize,
    /// The status after the cycle.
    pub status: &'a CanaryRolloutStatus,
    /// The cycle's time.
    pub now: Timestamp,
}

/// The notifications for a cycle's `events`, in their order.
pub fn notifications(rollout: Cycle<'_>, events: &[PlannedEvent]) -> Vec<Notification> {
    events
        .iter()
        .filter_map(|event| {
            let topic = topic(&event.reason)?;
            Some(Notification {
                namespace: rollout.namespace.to_owned(),
                rollout: rollout.name.to_owned(),
                topic,
                reason: event.reason.clone(),
                kind: event.kind,
                message: event.message.clone(),
                phase: rollout.status.phase.as_str().to_owned(),
                step: rollout.status.step_index.map(|index| index + 1),
                steps: rollout.steps,
                weight_bp: rollout.status.weight_bp,
                time: Timestamp::from_second(rollout.now.as_second()).unwrap_or(rollout.now),
            })
        })
        .collect()
}

impl Notification {
    /// The request body for a webhook of `format`.
    pub fn body(&self, format: WebhookFormat) -> Value {
        match format {
            WebhookFormat::Json => self.json(),
            WebhookFormat::Slack => json!({ "text": self.slack_text() }),
        }
    }

    fn json(&self) -> Value {
        json!({
            "namespace": self.namespace,
            "rollout": self.rollout,
            "event": self.topic.as_str(),
            "reason": self.reason,
            "kind": kind_name(self.kind),
            "message": self.message,
            "phase": self.phase,
            "step": self.step,
            "steps": self.steps,
            "weightBp": self.weight_bp,
            "weight": weight_percent(self.weight_bp),
            "time": self.time.to_string(),
        })
    }

    /// One line: what happened to which rollout, and where it stands. Slack reads `&`, `<` and
    /// `>` as markup (`<!channel>` notifies everyone), so the parts that come from the cluster
    /// are escaped.
    fn slack_text(&self) -> String {
        let rollout = if self.namespace.is_empty() {
            self.rollout.clone()
        } else {
            format!("{}/{}", self.namespace, self.rollout)
        };
        let step = match self.step {
            Some(step) => format!("step {step}/{}", self.steps),
            None => "no step yet".to_owned(),
        };
        format!(
            "{} *{}* {}: {} ({}, {step}, canary at {})",
            self.topic.emoji(),
            slack_escape(&rollout),
            slack_escape(&self.reason),
            slack_escape(&self.message),
            slack_escape(&self.phase),
            weight_percent(self.weight_bp)
        )
    }
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Normal => "Normal",
        EventKind::Warning => "Warning",
    }
}

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Error;
    use cohort_rollout::crd::Phase;

    /// Every reason the controller plans today and those being added, and what it notifies.
    const TABLE: &[(&str, Option<Topic>)] = &[
        ("Started", Some(Topic::RunStarted)),
        ("RunStarted", Some(Topic::RunStarted)),
        ("StepAdvanced", Some(Topic::StepAdvanced)),
        ("Promoted", Some(Topic::Promotion)),
        ("PromotionStarted", Some(Topic::Promotion)),
        ("Succeeded", Some(Topic::Promotion)),
        ("PromotionFailed", Some(Topic::PromotionFailed)),
        ("RolledBack", Some(Topic::RolledBack)),
        ("Aborted", Some(Topic::Aborted)),
        ("AnalysisErrors", Some(Topic::Degraded)),
        ("NoData", Some(Topic::Degraded)),
        ("RoutingMismatch", Some(Topic::Degraded)),
        ("Underpowered", Some(Topic::Degraded)),
        ("WorkloadMissing", Some(Topic::Degraded)),
        ("TargetNotFound", Some(Topic::Degraded)),
        ("TargetConflict", Some(Topic::Degraded)),
        ("InvalidFilterConfig", Some(Topic::Degraded)),
        ("TargetUnavailable", Some(Topic::Degraded)),
        ("TargetRejected", Some(Topic::Degraded)),
        ("ForceTokenUnavailable", Some(Topic::Degraded)),
        ("ReconcileFailed", Some(Topic::Degraded)),
        ("Restarted", None),
        ("RestartIgnored", None),
        ("Paused", None),
        ("Resumed", None),
        ("RoutingRestored", None),
        ("InvalidSpec", None),
        ("TrafficReleased", None),
        ("CanaryScaled", None),
        ("ScaledDown", None),
        ("rolledback", None),
        ("", None),
    ];

    #[test]
    fn reasons_map_to_topics() {
        for (reason, expected) in TABLE {
            assert_eq!(topic(reason), *expected, "{reason:?}");
        }
    }

    /// A failed push sets `Degraded` with the error's reason: each of them notifies.
    #[test]
    fn every_push_failure_reason_notifies_as_degraded() {
        let failures = [
            Error::TargetNotFound("WasmPlugin shop/cohort".into()),
            Error::TargetConflict("x".into()),
            Error::TargetUnavailable("x".into()),
            Error::TargetRejected("x".into()),
            Error::ForceTokenUnavailable("x".into()),
            Error::ForceTokenInvalid {
                source_name: "x".into(),
                problem: "y".into(),
            },
        ];
        for error in failures {
            let reason = Error::push(error).degraded_reason().unwrap();
            assert_eq!(topic(reason), Some(Topic::Degraded), "{reason}");
        }
    }

    /// The plan's own `Degraded` reasons notify: those of analysis trouble, and a rollback (its
    /// own topic).
    #[test]
    fn the_plan_s_degraded_reasons_notify() {
        use cohort_rollout::plan::CONDITION_ROUTING_MISMATCH;
        for reason in [
            "AnalysisErrors",
            "NoData",
            CONDITION_ROUTING_MISMATCH,
            "Underpowered",
        ] {
            assert_eq!(topic(reason), Some(Topic::Degraded), "{reason}");
        }
    }

    fn status(phase: Phase, step_index: Option<u32>, weight_bp: u32) -> CanaryRolloutStatus {
        CanaryRolloutStatus {
            phase,
            step_index,
            weight_bp,
            ..CanaryRolloutStatus::default()
        }
    }

    fn event(kind: EventKind, reason: &str, message: &str) -> PlannedEvent {
        PlannedEvent {
            kind,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn now() -> Timestamp {
        "2027-01-15T10:20:30.750Z".parse().unwrap()
    }

    /// A cycle of the four-step rollout shop/checkout in `status`, at [`now`].
    fn shop_checkout(status: &CanaryRolloutStatus) -> Cycle<'_> {
        Cycle {
            namespace: "shop",
            name: "checkout",
            steps: 4,
            status,
            now: now(),
        }
    }

    #[test]
    fn a_cycle_s_events_become_notifications_in_order() {
        let status = status(Phase::Progressing, Some(0), 100);
        let context = shop_checkout(&status);
        let events = [
            event(EventKind::Normal, "Restarted", "spec.restartAt changed"),
            event(EventKind::Normal, "Started", "step 1/4: canary at 1%"),
            event(EventKind::Warning, "InvalidSpec", "no"),
        ];
        let sent = notifications(context, &events);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].body(WebhookFormat::Json),
            json!({
                "namespace": "shop",
                "rollout": "checkout",
                "event": "runStarted",
                "reason": "Started",
                "kind": "Normal",
                "message": "step 1/4: canary at 1%",
                "phase": "Progressing",
                "step": 1,
                "steps": 4,
                "weightBp": 100,
                "weight": "1%",
                "time": "2027-01-15T10:20:30Z",
            })
        );
        assert!(notifications(context, &events[..1]).is_empty());
    }

    #[test]
    fn slack_bodies_are_one_escaped_line() {
        let status = status(Phase::RolledBack, Some(1), 0);
        let context = shop_checkout(&status);
        let rolled_back = event(
            EventKind::Warning,
            "RolledBack",
            "rolled back from 5% at step 2: a gate failed: p99 <!channel> & more",
        );
        let sent = notifications(context, &[rolled_back]);
        assert_eq!(
            sent[0].body(WebhookFormat::Slack),
            json!({"text": ":rotating_light: *shop/checkout* RolledBack: rolled back from 5% at \
                   step 2: a gate failed: p99 &lt;!channel&gt; &amp; more (RolledBack, step 2/4, \
                   canary at 0%)"})
        );
        let pending = CanaryRolloutStatus::default();
        let no_namespace = Cycle {
            namespace: "",
            name: "web",
            steps: 3,
            status: &pending,
            now: now(),
        };
        let aborted = notifications(
            no_namespace,
            &[event(EventKind::Warning, "Aborted", "spec.abort is set")],
        );
        assert_eq!(
            aborted[0].body(WebhookFormat::Slack)["text"],
            ":no_entry: *web* Aborted: spec.abort is set (Pending, no step yet, canary at 0%)"
        );
        assert_eq!(aborted[0].body(WebhookFormat::Json)["step"], Value::Null);
    }
}
