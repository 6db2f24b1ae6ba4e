//! Releases end to end, as pure functions: with `spec.workload`, what the controller does to the
//! stable and canary Deployments, and what it lets the plan push, from the spec, the status and
//! the two Deployments as observed this cycle.
//!
//! ```text
//!            new canary revision                     capacity for each step
//! (any) ──────────────────────────▶ Pending ──▶ Progressing(0) ──▶ … ──▶ Promoted (100%)
//!   ▲      (RunStarted; a change                                           │ copy the canary's
//!   │       mid-run also lands here,                                       │ template into stable
//!   │       at weight 0)                                                   ▼ (PromotionStarted)
//!   │                                                         stable rolled out?
//!   │                                               yes: weight 0, Succeeded ─┐   no, deadline
//!   │                                                                         │   exceeded:
//!   └── RolledBack / Aborted / Succeeded ◀── canary scaled to 0 after ◀───────┘   PromotionFailed
//!                                             scaleDownDelay (ScaledDown)         (canary serves)
//! ```
//!
//! The work is split around the plan ([`mod@crate::plan`]), which stays the rollout's state machine:
//! - [`before_plan`] moves the status where a revision says it must be: a new canary revision
//!   (the pod template without its `version` label, hashed) starts a run from step 1 (from any
//!   settled phase, unless it is the revision last analysed: a rolled-back template waits for
//!   `spec.restartAt`); a template change mid-run goes back to weight 0 and starts again; a
//!   canary Deployment gone mid-run rolls back before anyone could reach it.
//! - [`after_plan`] lets the plan's weight through only when the canary can take it: before any
//!   increase the canary is scaled to `ceil(stable replicas × weight)`, at least 1, and must be
//!   rolled out and available (the plan's old weight is held meanwhile, and looked at again
//!   soon). An HorizontalPodAutoscaler on the canary is left in charge: no replica is ever
//!   patched. At 100% it drives the promotion and, once a run ended, the canary's scale-down.
//!
//! Every decision reads only spec, status and what is observed, so a restarted controller resumes
//! where the last one stopped: a copy already made shows as stable's revision (never copied
//! twice), a rollback is recorded before anything else happens, and the canary is scaled down
//! only from a settled status served at weight 0.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use cohort_core::bucket::FULL_WEIGHT_BP;

use crate::crd::{
    CanaryRolloutSpec, CanaryRolloutStatus, HistoryEntry, Phase, WorkloadSpec, WorkloadStatus,
    HISTORY_LIMIT,
};
use crate::duration;
use crate::format::weight_percent as percent;
use crate::plan::{
    condition_is_true, human, millis_between, set_condition, whole_second, EventKind, Plan,
    PlannedEvent, CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY,
};

/// The pod label that tells the versions apart (Istio's `version`, which the DestinationRule
/// subsets select and the served metrics carry as `destination_version`). It is no part of a
/// revision, and the promotion keeps stable's own value.
pub const VERSION_LABEL: &str = "version";
/// How soon a cycle waiting on a Deployment (to scale, to roll out) looks again. The Deployment
/// watch usually starts it earlier.
pub const WORKLOAD_POLL: Duration = Duration::from_secs(5);
/// The plan's history reason for the retry gesture.
const REASON_RESTARTED: &str = "Restarted";
/// `scaleDownDelay` when the spec's does not parse (the schema's pattern makes that rare).
const FALLBACK_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

/// Event and condition reasons.
pub const REASON_RUN_STARTED: &str = "RunStarted";
/// Event and condition reasons.
pub const REASON_PROMOTION_STARTED: &str = "PromotionStarted";
/// Event and condition reasons.
pub const REASON_SUCCEEDED: &str = "Succeeded";
/// Event and condition reasons.
pub const REASON_PROMOTION_FAILED: &str = "PromotionFailed";
/// Event and condition reasons.
pub const REASON_WORKLOAD_MISSING: &str = "WorkloadMissing";
/// Event and condition reasons.
pub const REASON_WORKLOAD_UNREADABLE: &str = "WorkloadUnreadable";
/// Event and condition reasons.
pub const REASON_CANARY_REVERTED: &str = "CanaryReverted";
/// Event and condition reasons.
pub const REASON_CANARY_SCALED: &str = "CanaryScaled";
/// Event and condition reasons.
pub const REASON_SCALED_DOWN: &str = "ScaledDown";

/// The two Deployments as the shell read them this cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The stable Deployment; `None` when it does not exist.
    pub stable: Option<Deployment>,
    /// The canary Deployment; `None` when it does not exist.
    pub canary: Option<Deployment>,
    /// Whether an HorizontalPodAutoscaler targets the canary. The shell looks it up only when a
    /// decision would patch the canary's replicas, and decides again with it.
    pub canary_autoscaled: bool,
    /// Why the Deployments could not be read this cycle: then nothing goes up and nothing is
    /// done to them, but a rollback or an abort still goes out.
    pub unreadable: Option<String>,
}

/// What the shell must do to the Deployments, before it pushes the weight.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set the canary's `spec.replicas`.
    ScaleCanary {
        /// The replica count.
        replicas: i32,
    },
    /// Replace stable's `spec.template` with this one: the canary's, carrying stable's own
    /// `version` label value.
    CopyTemplate(Box<PodTemplateSpec>),
}

/// [`before_plan`]'s answer: the status the plan starts from, and Events for what it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The status to plan from.
    pub status: Option<CanaryRolloutStatus>,
    /// Events, in order.
    pub events: Vec<PlannedEvent>,
}

/// [`after_plan`]'s answer: what to serve and record, and what to do first.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The plan to serve: the plan's own, or one holding the weight the status records.
    pub plan: Plan,
    /// Done before the push, in order. Never anything when the weight goes down: a rollback
    /// reaches the filter whatever the Deployments do.
    pub actions: Vec<Action>,
}

impl Decision {
    /// Whether an action sets the canary's replicas (so the shell checks for an autoscaler).
    pub fn scales(&self) -> bool {
        self.actions
            .iter()
            .any(|action| matches!(action, Action::ScaleCanary { .. }))
    }
}

/// The revision of a pod template: murmur3 x64 128 of its JSON (fields in a fixed order, map
/// keys sorted) without the [`VERSION_LABEL`], as 16 hex digits. Stable across processes and
/// versions of the controller, so a status written by one is read by the next.
pub fn revision(template: &PodTemplateSpec) -> String {
    let mut template = template.clone();
    if let Some(labels) = template
        .metadata
        .as_mut()
        .and_then(|metadata| metadata.labels.as_mut())
    {
        labels.remove(VERSION_LABEL);
    }
    // Serializing a k8s-openapi type cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(&template).unwrap_or_default();
    // Reading from a slice cannot fail either.
    let hash = murmur3::murmur3_x64_128(&mut json.as_slice(), 0).unwrap_or(0);
    format!("{:016x}", (hash >> 64) as u64)
}

/// A Deployment's rollout, as `kubectl rollout status` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    /// `spec.replicas` (1 when unset).
    wanted: i32,
    /// `status.replicas`: pods of every revision.
    total: i32,
    updated: i32,
    available: i32,
    /// The controller has seen the latest spec.
    observed: bool,
    /// Its `Progressing` condition says `ProgressDeadlineExceeded`.
    stalled: bool,
}

impl Progress {
    fn of(deployment: &Deployment) -> Progress {
        let wanted = replicas(deployment);
        let status = deployment.status.clone().unwrap_or_default();
        let observed = match (deployment.metadata.generation, status.observed_generation) {
            (Some(generation), Some(observed)) => observed >= generation,
            (None, _) => true,
            (Some(_), None) => false,
        };
        let stalled = status.conditions.iter().flatten().any(|condition| {
            condition.type_.as_deref() == Some("Progressing")
                && condition.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        Progress {
            wanted,
            total: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            observed,
            stalled,
        }
    }

    /// Rolled out: every pod runs the latest template and is available, and no old one is left.
    fn complete(self) -> bool {
        self.observed
            && self.updated == self.wanted
            && self.available == self.wanted
            && self.total == self.wanted
    }

    fn describe(self) -> String {
        if !self.observed {
            return "its controller has not seen the latest spec yet".to_owned();
        }
        format!(
            "{}/{} updated, {}/{} available, {} pods",
            self.updated, self.wanted, self.available, self.wanted, self.total
        )
    }
}

/// `spec.replicas`, 1 when unset (the API server's default).
fn replicas(deployment: &Deployment) -> i32 {
    deployment.spec.replicas.unwrap_or(1)
}

fn template(deployment: &Deployment) -> PodTemplateSpec {
    deployment.spec.template.clone()
}

/// The Deployment, unless it is being deleted: its pods are going away.
fn present(deployment: Option<&Deployment>) -> Option<&Deployment> {
    deployment.filter(|deployment| deployment.metadata.deletion_timestamp.is_none())
}

/// Canary replicas for `weight_bp` of stable's: `ceil(stable × weight)`, at least 1.
pub fn canary_replicas(stable_replicas: i32, weight_bp: u32) -> i32 {
    let stable = i64::from(stable_replicas.max(0));
    let full = i64::from(FULL_WEIGHT_BP);
    let needed = (stable * i64::from(weight_bp) + full - 1) / full;
    i32::try_from(needed).unwrap_or(i32::MAX).max(1)
}

/// `scaleDownDelay`, parsed.
fn scale_down_delay(workload: &WorkloadSpec) -> Duration {
    duration::parse(&workload.scale_down_delay).unwrap_or(FALLBACK_SCALE_DOWN_DELAY)
}

fn later(now: Timestamp, by: Duration) -> Time {
    let by = SignedDuration::try_from(by).unwrap_or(SignedDuration::ZERO);
    Time(now.checked_add(by).unwrap_or(now))
}

fn live(phase: Phase) -> bool {
    matches!(phase, Phase::Pending | Phase::Progressing | Phase::Paused)
}

/// The status the plan starts from: see the module docs. `status` is the stored one (`None`
/// for a rollout never reconciled).
pub fn before_plan(
    spec: &CanaryRolloutSpec,
    workload: &WorkloadSpec,
    status: Option<&CanaryRolloutStatus>,
    observed: &Observed,
    now: Timestamp,
) -> Prepared {
    let now = whole_second(now);
    let mut prepared = Prepared {
        status: status.cloned(),
        events: Vec::new(),
    };
    if spec.abort || observed.unreadable.is_some() {
        // The plan aborts, or decides alone; nothing here may start a run.
        return prepared;
    }
    let mut status = status.cloned().unwrap_or_default();
    let mut recorded = status.workload.clone().unwrap_or_default();
    let Some(canary) = present(observed.canary.as_ref()) else {
        let serving = matches!(
            status.phase,
            Phase::Progressing | Phase::Paused | Phase::Promoted
        );
        if serving && status.weight_bp > 0 {
            let message = format!(
                "rolled back from {} at step {}: the canary Deployment {} is missing or being \
                 deleted",
                percent(status.weight_bp),
                status.step_index.map_or(0, |index| index + 1),
                workload.canary
            );
            transition(
                &mut status,
                Phase::RolledBack,
                0,
                REASON_WORKLOAD_MISSING,
                message,
                now,
            );
            prepared.status = Some(status);
        }
        // The Event comes with the condition (`after_plan`).
        return prepared;
    };
    let canary_revision = revision(&template(canary));
    let stable_revision =
        present(observed.stable.as_ref()).map(|stable| revision(&template(stable)));
    // Only a template that differs from stable's is a release to test.
    let new_to_stable = stable_revision
        .as_ref()
        .is_some_and(|stable| *stable != canary_revision);
    let current = recorded.revision.clone();
    let start = |status: &mut CanaryRolloutStatus,
                 recorded: &mut WorkloadStatus,
                 events: &mut Vec<PlannedEvent>,
                 why: String| {
        recorded.revision = Some(canary_revision.clone());
        recorded.scale_down_at = None;
        recorded.promotion_started_at = None;
        if recorded.failed_revision.as_deref() == Some(canary_revision.as_str()) {
            // Retried on purpose: its failure is history now.
            recorded.failed_revision = None;
        }
        let message = format!("canary revision {canary_revision} {why}: starting from step 1");
        if status.phase == Phase::Pending && status.weight_bp == 0 {
            events.push(PlannedEvent {
                kind: EventKind::Normal,
                reason: REASON_RUN_STARTED.to_owned(),
                message,
            });
        } else {
            transition(status, Phase::Pending, 0, REASON_RUN_STARTED, message, now);
            events.push(PlannedEvent {
                kind: EventKind::Normal,
                reason: REASON_RUN_STARTED.to_owned(),
                message: status
                    .history
                    .last()
                    .map(|entry| entry.message.clone())
                    .unwrap_or_default(),
            });
        }
        reset_analysis(status);
    };
    match (status.phase, current.as_deref()) {
        // Joined mid-run (spec.workload added to a live rollout), or mid-promotion: this is the
        // revision being tested.
        (Phase::Progressing | Phase::Paused | Phase::Promoted, None) => {
            recorded.revision = Some(canary_revision.clone());
        }
        (Phase::Pending, None) if new_to_stable => {
            start(
                &mut status,
                &mut recorded,
                &mut prepared.events,
                "differs from stable's".to_owned(),
            );
        }
        // A promotion is still a run: its canary serves everyone until stable has the template.
        (phase, Some(current))
            if (live(phase) || phase == Phase::Promoted) && current != canary_revision =>
        {
            if new_to_stable {
                start(
                    &mut status,
                    &mut recorded,
                    &mut prepared.events,
                    format!("replaced {current} mid-run"),
                );
            } else {
                // Back to stable's template: nothing left to test.
                if status.weight_bp > 0 || status.phase != Phase::Pending {
                    let message = format!(
                        "the canary's template changed mid-run to stable's ({current} → \
                         {canary_revision}): back to weight 0, waiting for a new revision"
                    );
                    transition(
                        &mut status,
                        Phase::Pending,
                        0,
                        REASON_CANARY_REVERTED,
                        message.clone(),
                        now,
                    );
                    reset_analysis(&mut status);
                    prepared.events.push(PlannedEvent {
                        kind: EventKind::Normal,
                        reason: REASON_CANARY_REVERTED.to_owned(),
                        message,
                    });
                }
                recorded.revision = None;
            }
        }
        (phase, current)
            if phase.is_terminal()
                && current != Some(canary_revision.as_str())
                && new_to_stable =>
        {
            start(
                &mut status,
                &mut recorded,
                &mut prepared.events,
                "is new".to_owned(),
            );
        }
        _ => {}
    }
    status.workload = Some(recorded);
    if prepared.status.is_some() || status != CanaryRolloutStatus::default() {
        prepared.status = Some(status);
    }
    prepared
}

/// The plan as it may be served, and what to do to the Deployments first: see the module docs.
/// `before` is the status the plan started from ([`before_plan`]'s), `served_bp` the weight the
/// target served when the cycle began.
pub fn after_plan(
    workload: &WorkloadSpec,
    before: Option<&CanaryRolloutStatus>,
    served_bp: u32,
    plan: Plan,
    observed: &Observed,
    now: Timestamp,
) -> Decision {
    let now = whole_second(now);
    let previous = before.cloned().unwrap_or_default();
    let mut decider = Decider {
        workload,
        observed,
        now,
        served_bp,
        previous: &previous,
        plan,
        actions: Vec::new(),
    };
    decider.decide();
    let mut plan = decider.plan;
    plan.weight_bp = plan.status.weight_bp;
    Decision {
        plan,
        actions: decider.actions,
    }
}

struct Decider<'a> {
    workload: &'a WorkloadSpec,
    observed: &'a Observed,
    now: Timestamp,
    /// What the target served when the cycle began.
    served_bp: u32,
    /// The status the plan started from.
    previous: &'a CanaryRolloutStatus,
    plan: Plan,
    actions: Vec<Action>,
}

impl Decider<'_> {
    fn decide(&mut self) {
        let mut recorded = self
            .plan
            .status
            .workload
            .clone()
            .or_else(|| self.previous.workload.clone())
            .unwrap_or_default();
        self.record_outcome(&mut recorded);
        if let Some(error) = &self.observed.unreadable {
            let message = format!(
                "cannot read the Deployments ({error}): no weight goes up and nothing is done to \
                 them until they can be read"
            );
            if self.plan.status.weight_bp > self.previous.weight_bp {
                self.hold(message.clone(), self.plan.requeue);
            }
            // A rollback's own reason says more than a read that failed alongside it.
            if !condition_is_true(&self.plan.status.conditions, CONDITION_DEGRADED) {
                self.degrade(REASON_WORKLOAD_UNREADABLE, &message);
            }
            self.plan.status.workload = Some(recorded);
            return;
        }
        let observed = self.observed;
        let stable = present(observed.stable.as_ref());
        let canary = present(observed.canary.as_ref());
        let (Some(stable), Some(canary)) = (stable, canary) else {
            self.missing(stable.is_none(), canary.is_none());
            self.plan.status.workload = Some(recorded);
            return;
        };
        let canary_revision = revision(&template(canary));
        let stable_revision = revision(&template(stable));
        let phase = self.plan.status.phase;
        let increase = self.plan.status.weight_bp > self.previous.weight_bp;
        match recorded.revision.clone() {
            None if live(phase) && increase => {
                self.hold(
                    format!(
                        "waiting for a new canary revision: {} runs stable's template; change \
                         its pod template (its image) to start a run",
                        self.workload.canary
                    ),
                    self.plan.requeue,
                );
            }
            Some(revision) if increase && revision == canary_revision => {
                self.capacity(stable, canary, &revision);
            }
            // Restarted (`spec.restartAt`) on a revision the canary no longer runs.
            Some(revision) if increase => {
                self.hold(
                    format!(
                        "{} runs revision {canary_revision}, not {revision}: waiting for the \
                         next cycle to take it up",
                        self.workload.canary
                    ),
                    WORKLOAD_POLL,
                );
            }
            // Promoting, at 100% recorded, the canary still on the revision under test.
            Some(revision)
                if phase == Phase::Promoted
                    && self.previous.phase == Phase::Promoted
                    && self.previous.weight_bp == FULL_WEIGHT_BP
                    && revision == canary_revision =>
            {
                self.promote(stable, canary, &stable_revision, &revision, &mut recorded);
            }
            _ => {}
        }
        self.scale_down(canary, &mut recorded);
        self.plan.status.workload = Some(recorded);
    }

    /// A run that just ended in a rollback or an abort names its revision, and the canary's
    /// scale-down is set.
    fn record_outcome(&mut self, recorded: &mut WorkloadStatus) {
        let phase = self.plan.status.phase;
        if live(phase) && recorded.revision.is_some() {
            if recorded.failed_revision == recorded.revision {
                // Retried (`spec.restartAt`): its failure is history, and its end is to come.
                recorded.failed_revision = None;
            }
            recorded.scale_down_at = None;
            return;
        }
        if !matches!(phase, Phase::RolledBack | Phase::Aborted) {
            return;
        }
        let Some(revision) = recorded.revision.clone() else {
            return;
        };
        if recorded.failed_revision.as_deref() == Some(revision.as_str()) {
            return;
        }
        recorded.failed_revision = Some(revision);
        recorded.promotion_started_at = None;
        recorded.scale_down_at = Some(later(self.now, scale_down_delay(self.workload)));
    }

    /// A Deployment is missing: no weight goes up, and `Degraded` says which.
    fn missing(&mut self, stable: bool, canary: bool) {
        let mut problems = Vec::new();
        if canary {
            problems.push(format!(
                "the canary Deployment {} is missing or being deleted: every user is on stable \
                 until it is back",
                self.workload.canary
            ));
        }
        if stable {
            problems.push(format!(
                "the stable Deployment {} is missing or being deleted: no step and no promotion \
                 until it is back",
                self.workload.stable
            ));
        }
        let message = problems.join("; ");
        if self.plan.status.weight_bp > self.previous.weight_bp {
            self.hold(message.clone(), self.plan.requeue);
        }
        self.degrade(REASON_WORKLOAD_MISSING, &message);
    }

    /// Before the plan's weight goes up: the canary scaled for it, rolled out and available.
    fn capacity(&mut self, stable: &Deployment, canary: &Deployment, revision: &str) {
        let wanted_bp = self.plan.status.weight_bp;
        let needed = canary_replicas(replicas(stable), wanted_bp);
        let workload = self.workload;
        let name = &workload.canary;
        if self.served_bp > self.previous.weight_bp {
            // A run restarted this cycle: its weight 0 goes out first, with nothing to wait for.
            self.hold(
                format!(
                    "back to weight 0 first; {name} is made ready for {} in the next cycle",
                    percent(wanted_bp)
                ),
                WORKLOAD_POLL,
            );
            return;
        }
        if !self.observed.canary_autoscaled && replicas(canary) < needed {
            self.actions.push(Action::ScaleCanary { replicas: needed });
            let message = format!(
                "scaled {name} from {} to {needed} replicas for {} ({} of stable's {}), before \
                 the weight goes up",
                replicas(canary),
                percent(wanted_bp),
                percent(wanted_bp),
                replicas(stable)
            );
            self.hold(message.clone(), WORKLOAD_POLL);
            self.event(EventKind::Normal, REASON_CANARY_SCALED, message);
            return;
        }
        let progress = Progress::of(canary);
        if !progress.complete() {
            self.hold(
                format!(
                    "waiting for {name} (revision {revision}) to roll out before serving it {}: {}",
                    percent(wanted_bp),
                    progress.describe()
                ),
                WORKLOAD_POLL,
            );
        }
    }

    /// At 100%, recorded: copy the template into stable, wait for its rollout, then everyone
    /// back on stable.
    fn promote(
        &mut self,
        stable: &Deployment,
        canary: &Deployment,
        stable_revision: &str,
        revision: &str,
        recorded: &mut WorkloadStatus,
    ) {
        let workload = self.workload;
        let name = &workload.stable;
        if stable_revision != revision {
            let mut copy = template(canary);
            let stable_label = template(stable)
                .metadata
                .and_then(|metadata| metadata.labels)
                .and_then(|labels| labels.get(VERSION_LABEL).cloned());
            let labels = copy
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(BTreeMap::new);
            match stable_label {
                Some(value) => labels.insert(VERSION_LABEL.to_owned(), value),
                None => labels.remove(VERSION_LABEL),
            };
            self.actions.push(Action::CopyTemplate(Box::new(copy)));
            recorded.promotion_started_at = Some(Time(self.now));
            let message = format!(
                "copying canary revision {revision} from {} into {name}; everyone stays on the \
                 canary until {name} has rolled it out",
                self.workload.canary
            );
            self.event(EventKind::Normal, REASON_PROMOTION_STARTED, message.clone());
            self.plan.status.message = Some(format!("promoting: {message}"));
            self.plan.requeue = WORKLOAD_POLL;
            return;
        }
        if recorded.promotion_started_at.is_none() {
            // Copied by a controller that stopped before recording it.
            recorded.promotion_started_at = Some(Time(self.now));
        }
        let progress = Progress::of(stable);
        if progress.complete() {
            recorded.promoted_revision = Some(revision.to_owned());
            recorded.promotion_started_at = None;
            let delay = scale_down_delay(self.workload);
            recorded.scale_down_at = Some(later(self.now, delay));
            let message = format!(
                "{name} runs revision {revision} on {} replicas and serves everyone again; {} is \
                 scaled to 0 in {}",
                progress.wanted,
                self.workload.canary,
                human(delay)
            );
            transition(
                &mut self.plan.status,
                Phase::Succeeded,
                0,
                REASON_SUCCEEDED,
                message.clone(),
                self.now,
            );
            self.event(EventKind::Normal, REASON_SUCCEEDED, message.clone());
            let generation = self.plan.status.observed_generation;
            set_condition(
                &mut self.plan.status.conditions,
                CONDITION_READY,
                true,
                REASON_SUCCEEDED,
                &message,
                generation,
                self.now,
            );
            self.plan.status.message = Some(format!("succeeded: {message}"));
            self.plan.requeue = delay.max(Duration::from_secs(1));
            return;
        }
        if progress.observed && progress.stalled {
            let message = format!(
                "{name} did not roll out revision {revision} (ProgressDeadlineExceeded: {}); the \
                 canary keeps serving everyone and nothing is scaled down; fix {name}, or set \
                 spec.abort to send everyone back to it",
                progress.describe()
            );
            self.plan.status.message = Some(format!("promotion failed: {message}"));
            self.degrade(REASON_PROMOTION_FAILED, &message);
            self.plan.requeue = self.plan.requeue.min(Duration::from_secs(30));
            return;
        }
        self.plan.status.message = Some(format!(
            "promoting: waiting for {name} to roll out revision {revision} ({}); everyone is on \
             the canary meanwhile",
            progress.describe()
        ));
        self.plan.requeue = WORKLOAD_POLL;
    }

    /// Once a run ended and everyone has been on stable for `scaleDownDelay`: the canary to 0.
    fn scale_down(&mut self, canary: &Deployment, recorded: &mut WorkloadStatus) {
        let Some(at) = recorded.scale_down_at.clone() else {
            return;
        };
        if at.0 > self.now {
            let wait = millis_between(self.now, at.0).max(Duration::from_secs(1));
            self.plan.requeue = self.plan.requeue.min(wait);
            return;
        }
        let settled = matches!(
            self.plan.status.phase,
            Phase::RolledBack | Phase::Aborted | Phase::Succeeded
        ) && self.plan.status.weight_bp == 0
            && self.previous.weight_bp == 0
            && self.previous.phase == self.plan.status.phase
            && self.served_bp == 0;
        if !settled {
            return;
        }
        recorded.scale_down_at = None;
        let from = replicas(canary);
        if self.observed.canary_autoscaled || from == 0 {
            return;
        }
        self.actions.push(Action::ScaleCanary { replicas: 0 });
        self.event(
            EventKind::Normal,
            REASON_SCALED_DOWN,
            format!(
                "scaled {} from {from} to 0 replicas: the run ended {}",
                self.workload.canary, self.plan.status.phase
            ),
        );
    }

    /// Serves the status the plan started from (its weight) instead of the plan's, and looks
    /// again after `requeue`: soon when a Deployment is about to be ready, at the plan's pace
    /// when it waits on a person (the Deployment watch starts a reconcile on any change anyway).
    ///
    /// A retry (`spec.restartAt`) the plan acted on in the same cycle stands: the rollout is
    /// held at Pending, weight 0, with the retry's history entry and Event; only the step it went
    /// on to waits.
    fn hold(&mut self, why: String, requeue: Duration) {
        let restarted = (self.plan.status.observed_restart_at != self.previous.observed_restart_at)
            .then(|| {
                let history = &self.plan.status.history;
                history
                    .iter()
                    .rposition(|entry| entry.reason == REASON_RESTARTED && entry.time.0 == self.now)
            })
            .flatten();
        let mut status = match restarted {
            Some(entry) => {
                let mut status = self.plan.status.clone();
                status.history.truncate(entry + 1);
                let now = self.now;
                status.phase = Phase::Pending;
                status.step_index = None;
                status.weight_bp = 0;
                reset_analysis(&mut status);
                let generation = status.observed_generation;
                for kind in [CONDITION_READY, CONDITION_PROGRESSING] {
                    set_condition(
                        &mut status.conditions,
                        kind,
                        false,
                        Phase::Pending.as_str(),
                        "",
                        generation,
                        now,
                    );
                }
                let kept = self
                    .plan
                    .events
                    .iter()
                    .position(|event| event.reason == REASON_RESTARTED)
                    .map_or(0, |index| index + 1);
                self.plan.events.truncate(kept);
                status
            }
            None => {
                self.plan.events.clear();
                self.previous.clone()
            }
        };
        status.observed_generation = self.plan.status.observed_generation;
        status.observed_restart_at = self.plan.status.observed_restart_at.clone();
        status.workload = self.plan.status.workload.clone();
        status.message = Some(why);
        self.plan.status = status;
        self.plan.requeue = requeue;
    }

    /// `Degraded` with `reason`, announced by a Warning Event when it turns on (or changes
    /// reason); its `lastTransitionTime` kept while it stays on.
    fn degrade(&mut self, reason: &str, message: &str) {
        let was = self
            .previous
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_DEGRADED && c.status == "True")
            .cloned();
        let generation = self.plan.status.observed_generation;
        let conditions = &mut self.plan.status.conditions;
        set_condition(
            conditions,
            CONDITION_DEGRADED,
            true,
            reason,
            message,
            generation,
            self.now,
        );
        if let (Some(was), Some(now)) = (
            &was,
            conditions
                .iter_mut()
                .find(|c| c.type_ == CONDITION_DEGRADED),
        ) {
            now.last_transition_time = was.last_transition_time.clone();
        }
        let announced = was.is_some_and(|was| was.reason == reason);
        if !announced {
            self.event(EventKind::Warning, reason, message.to_owned());
        }
    }

    fn event(&mut self, kind: EventKind, reason: &str, message: String) {
        self.plan.events.push(PlannedEvent {
            kind,
            reason: reason.to_owned(),
            message,
        });
    }
}

/// Moves `status` to `to` at `weight_bp`, with a history entry.
fn transition(
    status: &mut CanaryRolloutStatus,
    to: Phase,
    weight_bp: u32,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    let step = if to == Phase::Pending {
        None
    } else {
        status.step_index
    };
    status.history.push(HistoryEntry {
        time: Time(now),
        from_phase: status.phase,
        from_step: status.step_index,
        to_phase: to,
        to_step: step,
        weight_bp,
        reason: reason.to_owned(),
        message,
    });
    if status.history.len() > HISTORY_LIMIT {
        let excess = status.history.len() - HISTORY_LIMIT;
        status.history.drain(..excess);
    }
    status.phase = to;
    status.step_index = step;
    status.weight_bp = weight_bp;
    // The plan rewrites them each cycle; a status held before it runs again must not claim the
    // phase it left.
    let generation = status.observed_generation;
    let conditions = &mut status.conditions;
    let ready = matches!(to, Phase::Promoted | Phase::Succeeded);
    set_condition(
        conditions,
        CONDITION_READY,
        ready,
        to.as_str(),
        "",
        generation,
        now,
    );
    let progressing = to == Phase::Progressing;
    set_condition(
        conditions,
        CONDITION_PROGRESSING,
        progressing,
        to.as_str(),
        "",
        generation,
        now,
    );
}

/// A run starts clean: no bake, no verdicts, no counters from the one before.
fn reset_analysis(status: &mut CanaryRolloutStatus) {
    status.step_started_at = None;
    status.bake_started_at = None;
    status.last_analysis_at = None;
    status.gates.clear();
    status.consecutive_errors = 0;
    status.no_data_since = None;
    status.routing_mismatch_since = None;
}

#[cfg(test)]
mod tests;
