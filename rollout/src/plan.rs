//! The rollout state machine, as a pure function: spec + status + this cycle's evaluation + the
//! time → the next status, the weight to push, the Events to record and when to look again.
//!
//! ```text
//! Pending ──start──▶ Progressing(0) ──pass+bake──▶ … Progressing(n-2) ──pass+bake──▶ Promoted
//!    │                    │  ▲                                                   (the 100% step)
//!    │              paused│  │resumed          Fail, or a failure policy set to rollback
//!    ▼                    ▼  │               ──────────────────────────────────▶ RolledBack
//!  Paused (before start)  Paused(i)          spec.abort (from anywhere) ───────▶ Aborted
//! ```
//!
//! Rules, in the order they apply:
//! 1. `spec.abort` wins over everything: weight 0, phase Aborted.
//! 2. Promoted, RolledBack, Aborted and Succeeded (reached only with `spec.workload`, see
//!    [`crate::workload`], which also starts runs for new canary revisions) are left only by the
//!    retry gesture: a new value of `spec.restartAt` (with `abort` false). The rollout starts
//!    again from its first step. A new
//!    `restartAt` on a live rollout is recorded and ignored (with a Warning), so it cannot fire
//!    later by surprise. An invalid spec leaves the gesture pending until the spec is fixed.
//! 3. An invalid spec holds the current weight (only abort acts) and sets `InvalidSpec`.
//! 4. `spec.promote` jumps to 100% (Promoted).
//! 5. `spec.paused` holds the weight; analysis still runs and a Fail still rolls back.
//! 6. A Fail rolls back at once. Error and Inconclusive hold; more than `maxConsecutiveErrors`
//!    Errors in a row, or no conclusive data for `noDataDeadline`, set `Degraded` and hold or roll
//!    back as the failure policy says. A routing mismatch (the canary clearly served fewer
//!    requests than the filter decided for it; see [`crate::routing`]) holds with the
//!    `RoutingMismatch` condition and an Event until a window shows the canary serving again;
//!    after `routingMismatchDeadline`, `onRoutingMismatch` applies (by default, roll back).
//! 7. A step advances only when its bake time (at least one analysis interval, so the verdict's
//!    window lies wholly inside the step) has elapsed (`>=`) and this cycle's verdict is Pass.
//!    The next step is the first whose weight is above the weight being served, so after a
//!    restart or a spec edit the rollout never repeats or skips a step, and the weight never goes
//!    down except by rollback, abort or retry.
//!
//! Times are stored at whole seconds (as Kubernetes serializes them), so a status that went
//! through the API server plans exactly like the one that was written.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use cohort_core::bucket::FULL_WEIGHT_BP;

use crate::compiled::{interval_or_fallback, CompiledRollout};
use crate::crd::{
    CanaryRolloutSpec, CanaryRolloutStatus, GateResult, HistoryEntry, OnTrouble, OnUnderpowered,
    Phase, Verdict, HISTORY_LIMIT,
};
use crate::duration;
use crate::evaluate::Evaluation;
use crate::format::weight_percent as percent;
use crate::routing::Routing;
use crate::spec_error::SpecErrors;
use crate::validate::compile;

/// How often a finished (or stopped) rollout is looked at again, to re-assert its weight.
pub const SETTLED_REQUEUE: Duration = Duration::from_secs(300);
/// Fallbacks for durations an invalid spec left unreadable.
const FALLBACK_BAKE: Duration = Duration::from_secs(300);
const FALLBACK_NO_DATA_DEADLINE: Duration = Duration::from_secs(600);
const FALLBACK_ROUTING_MISMATCH_DEADLINE: Duration = Duration::from_secs(300);
/// Condition messages are capped (the API allows 32 KiB).
const MAX_CONDITION_MESSAGE: usize = 4096;

/// Condition types.
pub const CONDITION_READY: &str = "Ready";
/// Condition types.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition types.
pub const CONDITION_PAUSED: &str = "Paused";
/// Condition types.
pub const CONDITION_DEGRADED: &str = "Degraded";
/// Condition types.
pub const CONDITION_INVALID_SPEC: &str = "InvalidSpec";
/// Condition types.
pub const CONDITION_ROUTING_MISMATCH: &str = "RoutingMismatch";

/// What the reconciler knows this cycle besides spec and status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanInput {
    /// The CanaryRollout's name (the filter's rollout key and default salt).
    pub rollout: String,
    /// `metadata.generation`, recorded as `observedGeneration`.
    pub generation: Option<i64>,
    /// This cycle's gate evaluation; `None` when nothing was analysed (it never advances a step).
    pub evaluation: Option<Evaluation>,
    /// This cycle's routing check, over the evaluation's window; `None` when nothing was read.
    pub routing: Option<Routing>,
}

/// What the reconciler should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write.
    pub status: CanaryRolloutStatus,
    /// The canary weight to push to the filter, in basis points (equals `status.weightBp`).
    pub weight_bp: u32,
    /// Events to record, in order.
    pub events: Vec<PlannedEvent>,
    /// When to reconcile again.
    pub requeue: Duration,
}

/// A Kubernetes Event to record on the CanaryRollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Normal or Warning.
    pub kind: EventKind,
    /// CamelCase reason (`StepAdvanced`, `RolledBack`, …).
    pub reason: String,
    /// What happened, in words.
    pub message: String,
}

/// Kubernetes Event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Routine progress.
    Normal,
    /// Something a person should look at.
    Warning,
}

/// Plans one reconcile. `status` is `None` for a CanaryRollout never reconciled before. Pure:
/// reads no clock (`now` is given) and does no I/O.
pub fn plan(
    spec: &CanaryRolloutSpec,
    status: Option<&CanaryRolloutStatus>,
    input: &PlanInput,
    now: Timestamp,
) -> Plan {
    let compiled = compile(spec, "", &input.rollout);
    plan_compiled(spec, compiled.as_ref(), status, input, now)
}

/// [`plan`] for a spec already compiled: `compiled` is [`compile`]'s answer for `spec`. The spec
/// is still read for what the user asks this cycle (abort, pause, promote, retry) and, when it
/// is invalid, for the durations it can still give.
pub fn plan_compiled(
    spec: &CanaryRolloutSpec,
    compiled: Result<&CompiledRollout, &SpecErrors>,
    status: Option<&CanaryRolloutStatus>,
    input: &PlanInput,
    now: Timestamp,
) -> Plan {
    let previous = status.cloned().unwrap_or_default();
    let mut planner = Planner {
        spec,
        now: whole_second(now),
        timing: Timing::of(spec, compiled),
        spec_errors: compiled
            .err()
            .map(|errors| errors.0.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        status: previous.clone(),
        events: Vec::new(),
        routing_mismatch: None,
    };
    planner.status.observed_generation = input.generation.or(previous.observed_generation);
    planner.run(input.evaluation.as_ref(), input.routing.as_ref());
    planner.finish(&previous)
}

/// What a controller that stopped between its push and its status write left: the target
/// serves the next step's weight (an advance) or 0 (a rollback) while `status` still records the
/// step before. Planned as that transition now, so the step is neither repeated nor undone, and
/// as the stopped controller planned it: without a pause or promotion set since, which its
/// author set seeing the old status and which applies to the adopted one in this same cycle
/// (after a rollback, a promotion waits for a retry, as after any rollback). `None` when the live
/// weight is what the status records, or is not explained by one transition. Pure, like
/// [`plan`]: `live_bp` is the weight the target serves (`None` without an entry).
pub fn adopt_unrecorded(
    spec: &CanaryRolloutSpec,
    compiled: Result<&CompiledRollout, &SpecErrors>,
    status: &CanaryRolloutStatus,
    live_bp: Option<u32>,
    name: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Plan> {
    let live_bp = live_bp?;
    let step = usize::try_from(status.step_index?).ok()?;
    if live_bp == status.weight_bp
        || spec.abort
        || !matches!(status.phase, Phase::Progressing | Phase::Paused)
    {
        return None;
    }
    let as_planned = CanaryRolloutSpec {
        paused: false,
        promote: false,
        ..spec.clone()
    };
    let evaluation = if live_bp == 0 {
        Evaluation {
            verdict: Verdict::Fail,
            results: vec![GateResult {
                gate: "recovered".to_owned(),
                verdict: Verdict::Fail,
                canary: None,
                stable: None,
                threshold: None,
                canary_samples: 0.0,
                stable_samples: 0.0,
                reason: "the filter serves weight 0, which only a rollback writes; the controller \
                         that wrote it stopped before recording it"
                    .to_owned(),
                sequential: None,
            }],
        }
    } else if as_planned.steps.get(step + 1).map(|next| next.weight_bp()) == Some(live_bp) {
        Evaluation {
            verdict: Verdict::Pass,
            results: status.gates.clone(),
        }
    } else {
        return None;
    };
    let input = PlanInput {
        rollout: name.to_owned(),
        generation,
        evaluation: Some(evaluation),
        routing: None,
    };
    // Pause and promotion are no part of what `compile` checks: `compiled` is `as_planned`'s too.
    let adopted = plan_compiled(&as_planned, compiled, Some(status), &input, now);
    (adopted.weight_bp == live_bp).then_some(adopted)
}

/// The spec's durations: the compiled ones, or for an invalid spec those that still parse (with
/// fallbacks for the rest), so its requeue keeps to the user's interval where it can.
struct Timing {
    interval: Duration,
    no_data_deadline: Duration,
    routing_mismatch_deadline: Duration,
    bakes: Vec<Duration>,
}

impl Timing {
    fn of(spec: &CanaryRolloutSpec, compiled: Result<&CompiledRollout, &SpecErrors>) -> Self {
        if let Ok(compiled) = compiled {
            return Timing {
                interval: compiled.interval(),
                no_data_deadline: compiled.no_data_deadline(),
                routing_mismatch_deadline: compiled.routing_mismatch_deadline(),
                bakes: compiled.steps().iter().map(|step| step.bake).collect(),
            };
        }
        Timing {
            interval: interval_or_fallback(spec),
            no_data_deadline: duration::parse(&spec.failure_policy.no_data_deadline)
                .unwrap_or(FALLBACK_NO_DATA_DEADLINE),
            routing_mismatch_deadline: duration::parse(
                &spec.failure_policy.routing_mismatch_deadline,
            )
            .unwrap_or(FALLBACK_ROUTING_MISMATCH_DEADLINE),
            bakes: spec
                .steps
                .iter()
                .map(|step| duration::parse(&step.bake).unwrap_or(FALLBACK_BAKE))
                .collect(),
        }
    }
}

struct Planner<'a> {
    spec: &'a CanaryRolloutSpec,
    now: Timestamp,
    timing: Timing,
    spec_errors: Vec<String>,
    status: CanaryRolloutStatus,
    events: Vec<PlannedEvent>,
    /// This cycle's routing mismatch in words, for the condition.
    routing_mismatch: Option<String>,
}

impl Planner<'_> {
    fn run(&mut self, evaluation: Option<&Evaluation>, routing: Option<&Routing>) {
        if self.spec.abort {
            self.abort();
            return;
        }
        if self.status.phase.is_terminal() {
            if !self.retry() {
                return;
            }
        } else {
            self.ignore_retry_while_live();
        }
        if !self.spec_errors.is_empty() {
            // An invalid spec holds whatever is served.
            return;
        }
        if self.spec.promote {
            self.promote("spec.promote is set: the canary serves everyone".to_owned());
            return;
        }
        self.follow_pause_flag();
        if self.status.phase == Phase::Pending {
            self.enter_next_step("Started", String::new());
            return;
        }
        if self.status.step_index.is_none() {
            if self.status.phase == Phase::Progressing {
                // A status written by hand: anchor it to the steps rather than stall.
                self.anchor_to_steps();
            }
            // Paused before the first step: nothing to analyse.
            return;
        }
        if self.status.step_started_at.is_none() {
            // A status written by hand or by an older controller: bake from now.
            self.status.step_started_at = Some(Time(self.now));
            self.status.bake_started_at = None;
        }
        self.analyse_and_advance(evaluation, routing);
    }

    fn abort(&mut self) {
        if self.restart_requested() {
            self.status.observed_restart_at = self.spec.restart_at.clone();
            self.event(
                EventKind::Warning,
                "RestartIgnored",
                "spec.restartAt changed while spec.abort is set; clear spec.abort, then set \
                 spec.restartAt again to retry"
                    .to_owned(),
            );
        }
        if self.status.phase != Phase::Aborted {
            self.transition(
                Phase::Aborted,
                self.status.step_index,
                0,
                "Aborted",
                EventKind::Warning,
                "spec.abort is set: every user is back on stable".to_owned(),
            );
        }
    }

    /// The retry gesture on a settled rollout: back to Pending with a clean slate. An invalid
    /// spec leaves the gesture pending (unrecorded) until it is fixed. Returns whether it fired.
    fn retry(&mut self) -> bool {
        if !self.restart_requested() || !self.spec_errors.is_empty() {
            return false;
        }
        self.status.observed_restart_at = self.spec.restart_at.clone();
        let message = format!(
            "spec.restartAt changed to {:?}: starting again from the first step",
            self.spec.restart_at.as_deref().unwrap_or_default()
        );
        self.transition(
            Phase::Pending,
            None,
            0,
            "Restarted",
            EventKind::Normal,
            message,
        );
        self.reset_analysis();
        true
    }

    /// A new `restartAt` on a live rollout is recorded, so it cannot fire later by surprise.
    fn ignore_retry_while_live(&mut self) {
        if !self.restart_requested() {
            return;
        }
        self.status.observed_restart_at = self.spec.restart_at.clone();
        if self.status.phase != Phase::Pending {
            self.event(
                EventKind::Warning,
                "RestartIgnored",
                format!(
                    "spec.restartAt changed while the rollout is {}: ignored; a rollout restarts \
                     only from Promoted, RolledBack or Aborted",
                    self.status.phase
                ),
            );
        }
    }

    fn follow_pause_flag(&mut self) {
        let (phase, step, weight_bp) = (
            self.status.phase,
            self.status.step_index,
            self.status.weight_bp,
        );
        if self.spec.paused && phase != Phase::Paused {
            let message = match step {
                Some(_) => format!(
                    "spec.paused is set: holding the canary at {}",
                    percent(weight_bp)
                ),
                None => "spec.paused is set: not starting".to_owned(),
            };
            self.transition(
                Phase::Paused,
                step,
                weight_bp,
                "Paused",
                EventKind::Normal,
                message,
            );
        } else if !self.spec.paused && phase == Phase::Paused {
            let to = match step {
                Some(_) => Phase::Progressing,
                None => Phase::Pending,
            };
            let message = "spec.paused is cleared: resuming".to_owned();
            self.transition(to, step, weight_bp, "Resumed", EventKind::Normal, message);
        }
    }

    /// Records this cycle's verdict, applies the failure policy, and advances a baked step on a
    /// Pass (a paused rollout is analysed, and may roll back, but does not advance).
    fn analyse_and_advance(&mut self, evaluation: Option<&Evaluation>, routing: Option<&Routing>) {
        let verdict = evaluation.map(|evaluation| self.record(evaluation));
        if let Some(routing) = routing {
            self.record_routing(routing);
        }
        if verdict == Some(Verdict::Fail) {
            let summary = evaluation.map(Evaluation::summary).unwrap_or_default();
            self.rollback(format!("a gate failed: {summary}"));
            return;
        }
        let policy = &self.spec.failure_policy;
        let trouble = [
            (self.errors_exceeded(), policy.on_errors),
            (self.no_data_exceeded(), policy.on_no_data),
            (self.routing_mismatch_exceeded(), policy.on_routing_mismatch),
        ];
        for (trouble, reaction) in trouble {
            if let (Some(trouble), OnTrouble::Rollback) = (trouble, reaction) {
                self.rollback(trouble);
                return;
            }
        }
        let underpowered = verdict == Some(Verdict::Underpowered);
        if underpowered && policy.on_underpowered == OnUnderpowered::Rollback {
            let summary = evaluation.map(Evaluation::summary).unwrap_or_default();
            self.rollback(format!(
                "a gate ran out of time without ruling out a regression and \
                 failurePolicy.onUnderpowered is rollback: {summary}"
            ));
            return;
        }
        let passing = verdict == Some(Verdict::Pass)
            || (underpowered && policy.on_underpowered == OnUnderpowered::Promote);
        if self.status.phase == Phase::Progressing
            && passing
            && self.status.routing_mismatch_since.is_none()
            && self.bake_remaining().is_zero()
        {
            let at = format!(
                " after {} at {}",
                human(self.elapsed_in_step()),
                percent(self.status.weight_bp)
            );
            if underpowered {
                let summary = evaluation.map(Evaluation::summary).unwrap_or_default();
                self.event(
                    EventKind::Warning,
                    "Underpowered",
                    format!(
                        "advancing{at} as failurePolicy.onUnderpowered is promote, although a gate \
                         could not rule out a regression: {summary}"
                    ),
                );
                self.enter_next_step(
                    "StepAdvanced",
                    format!("{at} with no regression found (underpowered)"),
                );
            } else {
                self.enter_next_step("StepAdvanced", format!("{at} with every gate passing"));
            }
        }
    }

    /// Records this cycle's evaluation and updates the error and no-data counters.
    fn record(&mut self, evaluation: &Evaluation) -> Verdict {
        self.status.gates = evaluation.results.clone();
        self.status.last_analysis_at = Some(Time(self.now));
        match evaluation.verdict {
            Verdict::Error => {
                self.status.consecutive_errors = self.status.consecutive_errors.saturating_add(1);
            }
            Verdict::Inconclusive => {
                self.status.consecutive_errors = 0;
                if self.status.no_data_since.is_none() {
                    self.status.no_data_since = Some(Time(self.now));
                }
            }
            Verdict::Pass | Verdict::Fail | Verdict::Underpowered => {
                self.status.consecutive_errors = 0;
                self.status.no_data_since = None;
            }
        }
        evaluation.verdict
    }

    /// Starts or ends a routing mismatch. A window too thin to tell (or unreadable) changes
    /// nothing: a mismatch holds until a window shows the canary serving.
    fn record_routing(&mut self, routing: &Routing) {
        match routing {
            Routing::Mismatch(_) => {
                let message = routing.mismatch_message().unwrap_or_default();
                if self.status.routing_mismatch_since.is_none() {
                    self.status.routing_mismatch_since = Some(Time(self.now));
                    self.event(
                        EventKind::Warning,
                        CONDITION_ROUTING_MISMATCH,
                        format!("holding: {message}"),
                    );
                }
                self.routing_mismatch = Some(message);
            }
            Routing::Served(counts) => {
                if self.status.routing_mismatch_since.take().is_some() {
                    // The step's weight was not served while misrouted: it bakes again, in full,
                    // with its users on the canary. The sequential test goes on over the whole
                    // step: a fresh one would spend the step's share of the budget again.
                    self.status.bake_started_at = Some(Time(self.now));
                    self.event(
                        EventKind::Normal,
                        "RoutingRestored",
                        format!(
                            "the canary serves its users again ({}); the step bakes again from now",
                            counts.describe()
                        ),
                    );
                }
            }
            Routing::TooFew(_) | Routing::Unchecked(_) => {}
        }
    }

    fn routing_mismatch_exceeded(&self) -> Option<String> {
        let since = self.status.routing_mismatch_since.as_ref()?;
        let waited = millis_between(since.0, self.now);
        (waited >= self.timing.routing_mismatch_deadline).then(|| {
            format!(
                "the canary has not served the requests decided for it for {} (deadline {}): \
                 its users were not getting the canary",
                human(waited),
                human(self.timing.routing_mismatch_deadline)
            )
        })
    }

    /// The gates that ran out of time, when the policy says to hold on them.
    fn underpowered_hold(&self) -> Option<String> {
        if self.spec.failure_policy.on_underpowered != OnUnderpowered::Hold {
            return None;
        }
        let verdict = crate::evaluate::combine(self.status.gates.iter().map(|gate| gate.verdict));
        (verdict == Verdict::Underpowered)
            .then(|| crate::evaluate::summary(verdict, &self.status.gates))
    }

    fn errors_exceeded(&self) -> Option<String> {
        let limit = self.spec.failure_policy.max_consecutive_errors;
        (self.status.consecutive_errors > limit).then(|| {
            format!(
                "{} analyses in a row failed to read the metrics (limit {limit})",
                self.status.consecutive_errors
            )
        })
    }

    fn no_data_exceeded(&self) -> Option<String> {
        let since = self.status.no_data_since.as_ref()?;
        let waited = millis_between(since.0, self.now);
        (waited >= self.timing.no_data_deadline).then(|| {
            format!(
                "the gates have been inconclusive (too few samples) for {} (deadline {})",
                human(waited),
                human(self.timing.no_data_deadline)
            )
        })
    }

    /// Moves to the first step whose weight is above the one served, or promotes when that step
    /// is 100% (or there is none).
    fn enter_next_step(&mut self, reason: &str, why: String) {
        let steps = &self.spec.steps;
        let next = steps
            .iter()
            .position(|step| step.weight_bp() > self.status.weight_bp);
        match next {
            Some(index) if steps[index].weight_bp() < FULL_WEIGHT_BP => {
                let weight_bp = steps[index].weight_bp();
                let message = format!(
                    "step {}/{}: canary at {}{why}",
                    index + 1,
                    steps.len(),
                    percent(weight_bp)
                );
                self.transition(
                    Phase::Progressing,
                    u32::try_from(index).ok(),
                    weight_bp,
                    reason,
                    EventKind::Normal,
                    message,
                );
                self.status.step_started_at = Some(Time(self.now));
                self.status.bake_started_at = None;
                self.status.no_data_since = None;
                self.status.consecutive_errors = 0;
            }
            _ => self.promote(format!(
                "the last step is reached{why}: the canary serves everyone"
            )),
        }
    }

    fn promote(&mut self, message: String) {
        let last = self.spec.steps.len().checked_sub(1);
        self.transition(
            Phase::Promoted,
            last.and_then(|index| u32::try_from(index).ok()),
            FULL_WEIGHT_BP,
            "Promoted",
            EventKind::Normal,
            message,
        );
        self.status.step_started_at = Some(Time(self.now));
        self.status.bake_started_at = None;
        self.status.no_data_since = None;
        self.status.consecutive_errors = 0;
    }

    fn rollback(&mut self, cause: String) {
        let message = format!(
            "rolled back from {} at step {}: {cause}",
            percent(self.status.weight_bp),
            self.status.step_index.map_or(0, |index| index + 1)
        );
        self.transition(
            Phase::RolledBack,
            self.status.step_index,
            0,
            "RolledBack",
            EventKind::Warning,
            message,
        );
    }

    fn reset_analysis(&mut self) {
        let status = &mut self.status;
        status.step_started_at = None;
        status.bake_started_at = None;
        status.last_analysis_at = None;
        status.gates.clear();
        status.consecutive_errors = 0;
        status.no_data_since = None;
        status.routing_mismatch_since = None;
    }

    fn restart_requested(&self) -> bool {
        self.spec.restart_at.is_some() && self.spec.restart_at != self.status.observed_restart_at
    }

    fn transition(
        &mut self,
        to: Phase,
        step: Option<u32>,
        weight_bp: u32,
        reason: &str,
        kind: EventKind,
        message: String,
    ) {
        let entry = HistoryEntry {
            time: Time(self.now),
            from_phase: self.status.phase,
            from_step: self.status.step_index,
            to_phase: to,
            to_step: step,
            weight_bp,
            reason: reason.to_owned(),
            message: message.clone(),
        };
        let history = &mut self.status.history;
        history.push(entry);
        if history.len() > HISTORY_LIMIT {
            let excess = history.len() - HISTORY_LIMIT;
            history.drain(..excess);
        }
        self.status.phase = to;
        self.status.step_index = step;
        self.status.weight_bp = weight_bp;
        self.event(kind, reason, message);
    }

    fn event(&mut self, kind: EventKind, reason: &str, message: String) {
        self.events.push(PlannedEvent {
            kind,
            reason: reason.to_owned(),
            message,
        });
    }

    /// Progressing without a step: the last step at or below the weight served, or a fresh
    /// start when the weight is below every step.
    fn anchor_to_steps(&mut self) {
        let weight_bp = self.status.weight_bp;
        let anchor = self
            .spec
            .steps
            .iter()
            .rposition(|step| step.weight_bp() <= weight_bp);
        match anchor.and_then(|index| u32::try_from(index).ok()) {
            Some(index) => {
                self.status.step_index = Some(index);
                self.status.step_started_at = Some(Time(self.now));
                self.status.bake_started_at = None;
            }
            None => {
                self.status.weight_bp = 0;
                self.enter_next_step("Started", String::new());
            }
        }
    }

    /// The least time at the current step: its bake, and never less than one analysis interval,
    /// so the Pass that advances it comes from a window spent wholly at this weight.
    fn current_bake(&self) -> Duration {
        let index = self
            .status
            .step_index
            .and_then(|index| usize::try_from(index).ok());
        let bake = index
            .and_then(|index| self.timing.bakes.get(index).copied())
            .unwrap_or(FALLBACK_BAKE);
        bake.max(self.timing.interval)
    }

    fn elapsed_in_step(&self) -> Duration {
        self.status
            .step_started_at
            .as_ref()
            .map_or(Duration::ZERO, |started| {
                millis_between(started.0, self.now)
            })
    }

    fn bake_remaining(&self) -> Duration {
        let baked = match &self.status.bake_started_at {
            Some(started) => millis_between(started.0, self.now),
            None => self.elapsed_in_step(),
        };
        self.current_bake().saturating_sub(baked)
    }

    fn requeue(&self) -> Duration {
        match self.status.phase {
            Phase::Promoted | Phase::RolledBack | Phase::Aborted | Phase::Succeeded => {
                SETTLED_REQUEUE
            }
            Phase::Pending | Phase::Paused => self.timing.interval,
            Phase::Progressing => {
                let remaining = self.bake_remaining();
                if remaining.is_zero() {
                    self.timing.interval
                } else {
                    // Look again right when the bake ends (not before a second from now).
                    self.timing
                        .interval
                        .min(remaining)
                        .max(Duration::from_secs(1))
                }
            }
        }
    }

    /// The last analysis in words: the combined verdict and the gates holding it back.
    fn gates_summary(&self) -> String {
        let status = &self.status;
        if status.last_analysis_at.is_none() {
            return "not analysed yet".to_owned();
        }
        if status.gates.is_empty() {
            return "no gates".to_owned();
        }
        let verdict = crate::evaluate::combine(status.gates.iter().map(|gate| gate.verdict));
        let holding: Vec<String> = status
            .gates
            .iter()
            .filter(|gate| gate.verdict != Verdict::Pass)
            .map(|gate| format!("{}: {}", gate.gate, gate.reason))
            .collect();
        if holding.is_empty() {
            format!("gates {verdict}")
        } else {
            format!("gates {verdict} ({})", holding.join("; "))
        }
    }

    /// One line on where the rollout stands and what a person can do.
    fn describe(&self) -> String {
        let status = &self.status;
        let steps = self.spec.steps.len();
        let step = status.step_index.map_or(0, |index| index + 1);
        if !self.spec_errors.is_empty() && !status.phase.is_terminal() && !self.spec.abort {
            return format!(
                "the spec is invalid, holding the canary at {}: {}",
                percent(status.weight_bp),
                self.spec_errors.join("; ")
            );
        }
        match status.phase {
            Phase::Pending => "waiting to start".to_owned(),
            Phase::Paused if status.step_index.is_none() => {
                "paused before the first step; clear spec.paused to start".to_owned()
            }
            Phase::Paused => format!(
                "paused at step {step}/{steps} ({}); clear spec.paused to resume",
                percent(status.weight_bp)
            ),
            Phase::Progressing => {
                let verdict = self.gates_summary();
                let routing = match (&status.routing_mismatch_since, &self.routing_mismatch) {
                    (Some(_), Some(mismatch)) => format!("; held by a routing mismatch: {mismatch}"),
                    (Some(_), None) => "; held by a routing mismatch (see the RoutingMismatch \
                                        condition)"
                        .to_owned(),
                    (None, _) => String::new(),
                };
                format!(
                    "step {step}/{steps} at {}: baked {} of {}; {verdict}{routing}",
                    percent(status.weight_bp),
                    human(self.elapsed_in_step()),
                    human(self.current_bake())
                )
            }
            Phase::Promoted => "promoted: the canary serves everyone".to_owned(),
            Phase::RolledBack => {
                let cause = status
                    .history
                    .iter()
                    .rev()
                    .find(|entry| entry.to_phase == Phase::RolledBack)
                    .map_or("rolled back", |entry| entry.message.as_str());
                format!("{cause}; fix the canary, then set spec.restartAt to a new value to retry")
            }
            Phase::Aborted => "aborted by spec.abort; clear spec.abort and set spec.restartAt to a new value to retry".to_owned(),
            Phase::Succeeded => "succeeded: stable runs the tested revision and serves everyone".to_owned(),
        }
    }

    /// Why the rollout is degraded, if it is: `(reason, message)`.
    fn degradation(&self, message: &str) -> Option<(&'static str, String)> {
        match self.status.phase {
            Phase::RolledBack => Some(("RolledBack", message.to_owned())),
            Phase::Progressing | Phase::Paused => self
                .errors_exceeded()
                .map(|trouble| ("AnalysisErrors", format!("{trouble}; holding")))
                .or_else(|| {
                    self.no_data_exceeded()
                        .map(|trouble| ("NoData", format!("{trouble}; holding")))
                })
                .or_else(|| {
                    self.routing_mismatch_exceeded()
                        .map(|trouble| (CONDITION_ROUTING_MISMATCH, format!("{trouble}; holding")))
                })
                .or_else(|| {
                    self.underpowered_hold().map(|trouble| {
                        (
                            "Underpowered",
                            format!(
                                "{trouble}; holding (failurePolicy.onUnderpowered is hold): \
                                 promote by hand, or abort"
                            ),
                        )
                    })
                }),
            Phase::Pending | Phase::Promoted | Phase::Aborted | Phase::Succeeded => None,
        }
    }

    /// Writes the message and conditions, announces conditions that just turned bad, and hands
    /// the plan over.
    fn finish(mut self, previous: &CanaryRolloutStatus) -> Plan {
        if !matches!(self.status.phase, Phase::Progressing | Phase::Paused) {
            // Only a live canary can be misrouted; a retry starts clean.
            self.status.routing_mismatch_since = None;
        }
        let message = self.describe();
        let phase = self.status.phase;
        let degraded = self.degradation(&message);
        let invalid = self.spec_errors.join("; ");

        // A rollback has its own Event; holding on trouble is announced once, when it starts.
        let was_degraded = condition_is_true(&previous.conditions, CONDITION_DEGRADED);
        if let Some((reason, trouble)) = &degraded {
            if !was_degraded && phase != Phase::RolledBack {
                self.event(EventKind::Warning, reason, trouble.clone());
            }
        }
        let was_invalid = condition_is_true(&previous.conditions, CONDITION_INVALID_SPEC);
        if !invalid.is_empty() && !was_invalid {
            self.event(EventKind::Warning, "InvalidSpec", invalid.clone());
        }

        let generation = self.status.observed_generation;
        let now = self.now;
        let conditions_before = &previous.conditions;
        let conditions = &mut self.status.conditions;
        let mut set = |kind: &str, on: bool, reason: &str, message: &str| {
            set_condition(conditions, kind, on, reason, message, generation, now);
        };
        let only_when = |on: bool| if on { message.as_str() } else { "" };
        let promoted = matches!(phase, Phase::Promoted | Phase::Succeeded);
        let progressing = phase == Phase::Progressing;
        let paused = phase == Phase::Paused;
        set(CONDITION_READY, promoted, phase.as_str(), &message);
        set(
            CONDITION_PROGRESSING,
            progressing,
            phase.as_str(),
            only_when(progressing),
        );
        let paused_reason = if paused { "PausedBySpec" } else { "NotPaused" };
        set(CONDITION_PAUSED, paused, paused_reason, only_when(paused));
        match &degraded {
            Some((reason, trouble)) => set(CONDITION_DEGRADED, true, reason, trouble),
            None => set(CONDITION_DEGRADED, false, "Healthy", ""),
        }
        let previous_mismatch = previous
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_ROUTING_MISMATCH && c.status == "True")
            .map(|c| c.message.clone());
        let live = matches!(phase, Phase::Progressing | Phase::Paused);
        match (&self.status.routing_mismatch_since, &self.routing_mismatch) {
            // A settled rollout keeps the condition it ended with: a rollback for a mismatch
            // stays explained until a retry.
            _ if !live && phase != Phase::Pending => {}
            (Some(_), Some(mismatch)) => set(
                CONDITION_ROUTING_MISMATCH,
                true,
                "CanaryNotServed",
                mismatch,
            ),
            // Held from an earlier window; this one was too thin to tell.
            (Some(_), None) => set(
                CONDITION_ROUTING_MISMATCH,
                true,
                "CanaryNotServed",
                previous_mismatch
                    .as_deref()
                    .unwrap_or("the canary did not serve the requests decided for it"),
            ),
            // Shown once a mismatch was seen, so a healthy rollout's status stays short.
            (None, _) if has_condition(conditions_before, CONDITION_ROUTING_MISMATCH) => {
                set(CONDITION_ROUTING_MISMATCH, false, "Served", "")
            }
            (None, _) => {}
        }
        if invalid.is_empty() {
            set(CONDITION_INVALID_SPEC, false, "Valid", "");
        } else {
            set(CONDITION_INVALID_SPEC, true, "InvalidSpec", &invalid);
        }

        self.status.message = Some(message);
        let requeue = self.requeue();
        Plan {
            weight_bp: self.status.weight_bp,
            status: self.status,
            events: self.events,
            requeue,
        }
    }
}

/// Sets a condition, keeping `lastTransitionTime` unless its status flips.
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    on: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if on { "True" } else { "False" };
    let mut message = message.to_owned();
    if message.len() > MAX_CONDITION_MESSAGE {
        let mut cut = MAX_CONDITION_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(condition) => {
            if condition.status != status {
                condition.last_transition_time = Time(now);
            }
            condition.status = status.to_owned();
            condition.reason = reason.to_owned();
            condition.message = message;
            condition.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time: Time(now),
            observed_generation: generation,
        }),
    }
}

fn has_condition(conditions: &[Condition], kind: &str) -> bool {
    conditions.iter().any(|c| c.type_ == kind)
}

pub(crate) fn condition_is_true(conditions: &[Condition], kind: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == kind && c.status == "True")
}

/// `now` cut to whole seconds, as Kubernetes stores times.
pub(crate) fn whole_second(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// Time from `from` to `to`; zero when `to` is earlier (a clock that went back never bakes).
pub(crate) fn millis_between(from: Timestamp, to: Timestamp) -> Duration {
    let millis = to.as_millisecond().saturating_sub(from.as_millisecond());
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// `90s` → `1m30s`; sub-second parts are dropped unless that is all there is.
pub(crate) fn human(duration: Duration) -> String {
    let total = duration.as_secs();
    if total == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 {
        out.push_str(&format!("{seconds}s"));
    }
    out
}

#[cfg(test)]
mod tests;
