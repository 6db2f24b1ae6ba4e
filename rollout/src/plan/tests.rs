//! Table tests of the rollout state machine.

use super::*;
use crate::crd::{GateResult, OnUnderpowered, Step};
use crate::validate::tests::minimal_spec;

/// Seconds since an arbitrary epoch → a timestamp.
fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

/// Steps 1, 5, 25 (bake 1m each) then 100; interval 30s; default failure policy (3 errors, 10m).
fn spec() -> CanaryRolloutSpec {
    let mut spec = minimal_spec();
    spec.steps = vec![
        Step::new(1.0, "1m"),
        Step::new(5.0, "1m"),
        Step::new(25.0, "1m"),
        Step::new(100.0, "1m"),
    ];
    spec
}

fn evaluation(verdict: Verdict) -> Evaluation {
    Evaluation {
        verdict,
        results: vec![GateResult {
            gate: "error-rate".into(),
            verdict,
            canary: Some(0.0),
            stable: Some(0.0),
            threshold: Some(0.01),
            canary_samples: 500.0,
            stable_samples: 5000.0,
            reason: format!("judged {verdict}"),
            sequential: None,
        }],
    }
}

fn input(verdict: Option<Verdict>) -> PlanInput {
    PlanInput {
        rollout: "checkout".into(),
        generation: Some(1),
        evaluation: verdict.map(evaluation),
        routing: None,
    }
}

fn at_step(phase: Phase, step: u32, weight_bp: u32, started: i64) -> CanaryRolloutStatus {
    CanaryRolloutStatus {
        phase,
        step_index: Some(step),
        weight_bp,
        step_started_at: Some(Time(t(started))),
        ..CanaryRolloutStatus::default()
    }
}

fn progressing(step: u32, weight_bp: u32, started: i64) -> CanaryRolloutStatus {
    at_step(Phase::Progressing, step, weight_bp, started)
}

fn settled(phase: Phase, weight_bp: u32) -> CanaryRolloutStatus {
    CanaryRolloutStatus {
        phase,
        step_index: Some(1),
        weight_bp,
        ..CanaryRolloutStatus::default()
    }
}

fn reasons(plan: &Plan) -> Vec<&str> {
    plan.events.iter().map(|e| e.reason.as_str()).collect()
}

struct Row {
    name: &'static str,
    edit: fn(&mut CanaryRolloutSpec),
    from: CanaryRolloutStatus,
    verdict: Option<Verdict>,
    at: i64,
    phase: Phase,
    step: Option<u32>,
    weight_bp: u32,
    events: &'static [&'static str],
}

fn keep(_: &mut CanaryRolloutSpec) {}

#[test]
fn transitions() {
    use Phase::*;
    use Verdict::{Error, Fail, Inconclusive, Pass, Underpowered};
    let with_errors = |errors| CanaryRolloutStatus {
        consecutive_errors: errors,
        ..progressing(1, 500, 0)
    };
    let without_data_since = |since| CanaryRolloutStatus {
        no_data_since: Some(Time(t(since))),
        ..progressing(1, 500, 0)
    };
    let observed_r1 = CanaryRolloutStatus {
        observed_restart_at: Some("r1".into()),
        ..settled(RolledBack, 0)
    };
    let paused_before_start = CanaryRolloutStatus {
        phase: Paused,
        ..CanaryRolloutStatus::default()
    };
    #[rustfmt::skip]
    let rows = vec![
        // Starting.
        Row { name: "fresh rollout starts at step 0", edit: keep, from: CanaryRolloutStatus::default(), verdict: None, at: 0, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Started"] },
        Row { name: "an evaluation before the start is ignored", edit: keep, from: CanaryRolloutStatus::default(), verdict: Some(Fail), at: 0, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Started"] },
        Row { name: "paused before the start does not start", edit: |s| s.paused = true, from: CanaryRolloutStatus::default(), verdict: None, at: 0, phase: Paused, step: None, weight_bp: 0, events: &["Paused"] },
        Row { name: "resumed before the start starts", edit: keep, from: paused_before_start.clone(), verdict: None, at: 0, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Resumed", "Started"] },
        Row { name: "still paused before the start", edit: |s| s.paused = true, from: paused_before_start, verdict: Some(Fail), at: 0, phase: Paused, step: None, weight_bp: 0, events: &[] },
        Row { name: "promote before the start", edit: |s| s.promote = true, from: CanaryRolloutStatus::default(), verdict: None, at: 0, phase: Promoted, step: Some(3), weight_bp: 10_000, events: &["Promoted"] },
        Row { name: "abort before the start", edit: |s| s.abort = true, from: CanaryRolloutStatus::default(), verdict: None, at: 0, phase: Aborted, step: None, weight_bp: 0, events: &["Aborted"] },
        Row { name: "a single 100% step promotes at once", edit: |s| s.steps = vec![Step::new(100.0, "1m")], from: CanaryRolloutStatus::default(), verdict: None, at: 0, phase: Promoted, step: Some(0), weight_bp: 10_000, events: &["Promoted"] },
        // Baking and advancing.
        Row { name: "pass before the bake ends holds", edit: keep, from: progressing(0, 100, 0), verdict: Some(Pass), at: 59, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "pass when the bake has exactly elapsed advances", edit: keep, from: progressing(0, 100, 0), verdict: Some(Pass), at: 60, phase: Progressing, step: Some(1), weight_bp: 500, events: &["StepAdvanced"] },
        Row { name: "pass after the bake advances", edit: keep, from: progressing(1, 500, 0), verdict: Some(Pass), at: 3600, phase: Progressing, step: Some(2), weight_bp: 2500, events: &["StepAdvanced"] },
        Row { name: "no analysis never advances", edit: keep, from: progressing(0, 100, 0), verdict: None, at: 3600, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "inconclusive holds", edit: keep, from: progressing(0, 100, 0), verdict: Some(Inconclusive), at: 3600, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "error holds", edit: keep, from: progressing(0, 100, 0), verdict: Some(Error), at: 3600, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "fail rolls back at once", edit: keep, from: progressing(0, 100, 0), verdict: Some(Fail), at: 1, phase: RolledBack, step: Some(0), weight_bp: 0, events: &["RolledBack"] },
        Row { name: "fail at a later step rolls back to 0", edit: keep, from: progressing(2, 2500, 0), verdict: Some(Fail), at: 3600, phase: RolledBack, step: Some(2), weight_bp: 0, events: &["RolledBack"] },
        Row { name: "the step before 100% promotes", edit: keep, from: progressing(2, 2500, 0), verdict: Some(Pass), at: 60, phase: Promoted, step: Some(3), weight_bp: 10_000, events: &["Promoted"] },
        Row { name: "a clock that went back never bakes", edit: keep, from: progressing(0, 100, 100), verdict: Some(Pass), at: 0, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "a step without a start time bakes from now", edit: keep, from: CanaryRolloutStatus { step_started_at: None, ..progressing(0, 100, 0) }, verdict: Some(Pass), at: 3600, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "a bake shorter than the interval waits one interval", edit: |s| s.steps[0].bake = "10s".into(), from: progressing(0, 100, 0), verdict: Some(Pass), at: 29, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "a bake shorter than the interval advances after it", edit: |s| s.steps[0].bake = "10s".into(), from: progressing(0, 100, 0), verdict: Some(Pass), at: 30, phase: Progressing, step: Some(1), weight_bp: 500, events: &["StepAdvanced"] },
        Row { name: "progressing without a step anchors at its weight", edit: keep, from: CanaryRolloutStatus { phase: Progressing, weight_bp: 500, ..CanaryRolloutStatus::default() }, verdict: Some(Pass), at: 3600, phase: Progressing, step: Some(1), weight_bp: 500, events: &[] },
        Row { name: "progressing without a step or weight starts", edit: keep, from: CanaryRolloutStatus { phase: Progressing, ..CanaryRolloutStatus::default() }, verdict: Some(Pass), at: 3600, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Started"] },
        // A sequential test that ran out of time: failurePolicy.onUnderpowered decides.
        Row { name: "underpowered before the bake ends holds", edit: keep, from: progressing(0, 100, 0), verdict: Some(Underpowered), at: 59, phase: Progressing, step: Some(0), weight_bp: 100, events: &[] },
        Row { name: "underpowered advances with a warning by default", edit: keep, from: progressing(0, 100, 0), verdict: Some(Underpowered), at: 60, phase: Progressing, step: Some(1), weight_bp: 500, events: &["Underpowered", "StepAdvanced"] },
        Row { name: "underpowered holds on hold", edit: |s| s.failure_policy.on_underpowered = OnUnderpowered::Hold, from: progressing(0, 100, 0), verdict: Some(Underpowered), at: 3600, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Underpowered"] },
        Row { name: "underpowered rolls back on rollback", edit: |s| s.failure_policy.on_underpowered = OnUnderpowered::Rollback, from: progressing(1, 500, 0), verdict: Some(Underpowered), at: 1, phase: RolledBack, step: Some(1), weight_bp: 0, events: &["RolledBack"] },
        Row { name: "no gates: bake time alone advances", edit: |s| s.analysis.gates.clear(), from: progressing(0, 100, 0), verdict: Some(Pass), at: 60, phase: Progressing, step: Some(1), weight_bp: 500, events: &["StepAdvanced"] },
        // Steps edited mid-rollout: the next step is the first above the weight served.
        Row { name: "edited steps: next weight above 25% is 30%", edit: |s| s.steps = vec![Step::new(1.0, "1m"), Step::new(10.0, "1m"), Step::new(30.0, "1m"), Step::new(100.0, "1m")], from: progressing(2, 2500, 0), verdict: Some(Pass), at: 60, phase: Progressing, step: Some(2), weight_bp: 3000, events: &["StepAdvanced"] },
        Row { name: "edited steps: 20% is below 25%, so 50% is next", edit: |s| s.steps = vec![Step::new(1.0, "1m"), Step::new(10.0, "1m"), Step::new(20.0, "1m"), Step::new(50.0, "1m"), Step::new(100.0, "1m")], from: progressing(2, 2500, 0), verdict: Some(Pass), at: 60, phase: Progressing, step: Some(3), weight_bp: 5000, events: &["StepAdvanced"] },
        Row { name: "edited steps: the weight is held until a pass", edit: |s| s.steps = vec![Step::new(50.0, "1m"), Step::new(100.0, "1m")], from: progressing(2, 2500, 0), verdict: Some(Inconclusive), at: 60, phase: Progressing, step: Some(2), weight_bp: 2500, events: &[] },
        // Pause and resume.
        Row { name: "pause holds the weight", edit: |s| s.paused = true, from: progressing(1, 500, 0), verdict: Some(Pass), at: 3600, phase: Paused, step: Some(1), weight_bp: 500, events: &["Paused"] },
        Row { name: "paused stays paused on pass", edit: |s| s.paused = true, from: at_step(Paused, 1, 500, 0), verdict: Some(Pass), at: 3600, phase: Paused, step: Some(1), weight_bp: 500, events: &[] },
        Row { name: "paused still rolls back on fail", edit: |s| s.paused = true, from: at_step(Paused, 1, 500, 0), verdict: Some(Fail), at: 10, phase: RolledBack, step: Some(1), weight_bp: 0, events: &["RolledBack"] },
        Row { name: "resume continues the bake (time paused counts)", edit: keep, from: at_step(Paused, 1, 500, 0), verdict: Some(Pass), at: 3600, phase: Progressing, step: Some(2), weight_bp: 2500, events: &["Resumed", "StepAdvanced"] },
        Row { name: "resume before the bake ends waits", edit: keep, from: at_step(Paused, 1, 500, 0), verdict: Some(Pass), at: 30, phase: Progressing, step: Some(1), weight_bp: 500, events: &["Resumed"] },
        Row { name: "promote while paused", edit: |s| { s.paused = true; s.promote = true }, from: at_step(Paused, 1, 500, 0), verdict: None, at: 10, phase: Promoted, step: Some(3), weight_bp: 10_000, events: &["Promoted"] },
        Row { name: "abort while paused", edit: |s| { s.paused = true; s.abort = true }, from: at_step(Paused, 1, 500, 0), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &["Aborted"] },
        // Operator gestures on a live rollout.
        Row { name: "promote skips the remaining steps", edit: |s| s.promote = true, from: progressing(1, 500, 0), verdict: Some(Inconclusive), at: 10, phase: Promoted, step: Some(3), weight_bp: 10_000, events: &["Promoted"] },
        Row { name: "abort sends everyone to stable", edit: |s| s.abort = true, from: progressing(1, 500, 0), verdict: Some(Pass), at: 3600, phase: Aborted, step: Some(1), weight_bp: 0, events: &["Aborted"] },
        Row { name: "abort wins over promote", edit: |s| { s.abort = true; s.promote = true }, from: progressing(1, 500, 0), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &["Aborted"] },
        Row { name: "restartAt on a live rollout is ignored", edit: |s| s.restart_at = Some("r1".into()), from: progressing(1, 500, 0), verdict: None, at: 10, phase: Progressing, step: Some(1), weight_bp: 500, events: &["RestartIgnored"] },
        Row { name: "restartAt on a fresh rollout just starts", edit: |s| s.restart_at = Some("r1".into()), from: CanaryRolloutStatus::default(), verdict: None, at: 0, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Started"] },
        // Settled phases and the retry gesture.
        Row { name: "rolled back stays rolled back", edit: keep, from: settled(RolledBack, 0), verdict: Some(Pass), at: 3600, phase: RolledBack, step: Some(1), weight_bp: 0, events: &[] },
        Row { name: "promote does not leave rolled back", edit: |s| s.promote = true, from: settled(RolledBack, 0), verdict: None, at: 10, phase: RolledBack, step: Some(1), weight_bp: 0, events: &[] },
        Row { name: "abort after rollback", edit: |s| s.abort = true, from: settled(RolledBack, 0), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &["Aborted"] },
        Row { name: "retry restarts a rolled back rollout", edit: |s| s.restart_at = Some("r1".into()), from: settled(RolledBack, 0), verdict: Some(Fail), at: 10, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Restarted", "Started"] },
        Row { name: "an acted-upon retry does not fire again", edit: |s| s.restart_at = Some("r1".into()), from: observed_r1.clone(), verdict: None, at: 10, phase: RolledBack, step: Some(1), weight_bp: 0, events: &[] },
        Row { name: "a new retry value fires again", edit: |s| s.restart_at = Some("r2".into()), from: observed_r1, verdict: None, at: 10, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Restarted", "Started"] },
        Row { name: "retry with abort set stays aborted", edit: |s| { s.abort = true; s.restart_at = Some("r1".into()) }, from: settled(RolledBack, 0), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &["RestartIgnored", "Aborted"] },
        Row { name: "retry then promote", edit: |s| { s.promote = true; s.restart_at = Some("r1".into()) }, from: settled(RolledBack, 0), verdict: None, at: 10, phase: Promoted, step: Some(3), weight_bp: 10_000, events: &["Restarted", "Promoted"] },
        Row { name: "retry into a paused rollout", edit: |s| { s.paused = true; s.restart_at = Some("r1".into()) }, from: settled(RolledBack, 0), verdict: None, at: 10, phase: Paused, step: None, weight_bp: 0, events: &["Restarted", "Paused"] },
        Row { name: "aborted stays aborted while abort is set", edit: |s| s.abort = true, from: settled(Aborted, 0), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &[] },
        Row { name: "clearing abort alone does not restart", edit: keep, from: settled(Aborted, 0), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &[] },
        Row { name: "retry restarts an aborted rollout", edit: |s| s.restart_at = Some("r1".into()), from: settled(Aborted, 0), verdict: None, at: 10, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Restarted", "Started"] },
        Row { name: "promoted ignores analysis", edit: keep, from: settled(Promoted, 10_000), verdict: Some(Fail), at: 10, phase: Promoted, step: Some(1), weight_bp: 10_000, events: &[] },
        Row { name: "abort a promoted rollout", edit: |s| s.abort = true, from: settled(Promoted, 10_000), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &["Aborted"] },
        Row { name: "retry restarts a promoted rollout", edit: |s| s.restart_at = Some("r1".into()), from: settled(Promoted, 10_000), verdict: None, at: 10, phase: Progressing, step: Some(0), weight_bp: 100, events: &["Restarted", "Started"] },
        // Failure policy.
        Row { name: "errors up to the limit hold quietly", edit: keep, from: with_errors(2), verdict: Some(Error), at: 3600, phase: Progressing, step: Some(1), weight_bp: 500, events: &[] },
        Row { name: "errors beyond the limit degrade and hold", edit: keep, from: with_errors(3), verdict: Some(Error), at: 3600, phase: Progressing, step: Some(1), weight_bp: 500, events: &["AnalysisErrors"] },
        Row { name: "errors beyond the limit roll back per policy", edit: |s| s.failure_policy.on_errors = OnTrouble::Rollback, from: with_errors(3), verdict: Some(Error), at: 3600, phase: RolledBack, step: Some(1), weight_bp: 0, events: &["RolledBack"] },
        Row { name: "a pass after errors advances", edit: keep, from: with_errors(5), verdict: Some(Pass), at: 3600, phase: Progressing, step: Some(2), weight_bp: 2500, events: &["StepAdvanced"] },
        Row { name: "no data just before the deadline", edit: keep, from: without_data_since(0), verdict: Some(Inconclusive), at: 599, phase: Progressing, step: Some(1), weight_bp: 500, events: &[] },
        Row { name: "no data at the deadline degrades and holds", edit: keep, from: without_data_since(0), verdict: Some(Inconclusive), at: 600, phase: Progressing, step: Some(1), weight_bp: 500, events: &["NoData"] },
        Row { name: "no data at the deadline rolls back per policy", edit: |s| s.failure_policy.on_no_data = OnTrouble::Rollback, from: without_data_since(0), verdict: Some(Inconclusive), at: 600, phase: RolledBack, step: Some(1), weight_bp: 0, events: &["RolledBack"] },
        Row { name: "the deadline passes without an analysis too", edit: |s| s.failure_policy.on_no_data = OnTrouble::Rollback, from: without_data_since(0), verdict: None, at: 700, phase: RolledBack, step: Some(1), weight_bp: 0, events: &["RolledBack"] },
        Row { name: "data after a drought advances", edit: keep, from: without_data_since(0), verdict: Some(Pass), at: 900, phase: Progressing, step: Some(2), weight_bp: 2500, events: &["StepAdvanced"] },
        // Invalid specs hold; only abort acts.
        Row { name: "invalid spec holds a live rollout", edit: |s| s.analysis.interval = "soon".into(), from: progressing(1, 500, 0), verdict: Some(Pass), at: 3600, phase: Progressing, step: Some(1), weight_bp: 500, events: &["InvalidSpec"] },
        Row { name: "invalid spec does not start", edit: |s| s.hosts.clear(), from: CanaryRolloutStatus::default(), verdict: None, at: 0, phase: Pending, step: None, weight_bp: 0, events: &["InvalidSpec"] },
        Row { name: "invalid spec does not promote", edit: |s| { s.hosts.clear(); s.promote = true }, from: progressing(1, 500, 0), verdict: None, at: 10, phase: Progressing, step: Some(1), weight_bp: 500, events: &["InvalidSpec"] },
        Row { name: "invalid spec can still abort", edit: |s| { s.hosts.clear(); s.abort = true }, from: progressing(1, 500, 0), verdict: None, at: 10, phase: Aborted, step: Some(1), weight_bp: 0, events: &["Aborted", "InvalidSpec"] },
        Row { name: "invalid spec keeps a retry pending", edit: |s| { s.hosts.clear(); s.restart_at = Some("r1".into()) }, from: settled(RolledBack, 0), verdict: None, at: 10, phase: RolledBack, step: Some(1), weight_bp: 0, events: &["InvalidSpec"] },
    ];
    for row in rows {
        let mut spec = spec();
        (row.edit)(&mut spec);
        let plan = plan(&spec, Some(&row.from), &input(row.verdict), t(row.at));
        let got = (plan.status.phase, plan.status.step_index, plan.weight_bp);
        assert_eq!(
            got,
            (row.phase, row.step, row.weight_bp),
            "{}: {:?}",
            row.name,
            plan.status.message
        );
        assert_eq!(plan.weight_bp, plan.status.weight_bp, "{}", row.name);
        assert_eq!(
            reasons(&plan),
            row.events,
            "{}: {:?}",
            row.name,
            plan.events
        );
    }
}

#[test]
fn none_status_is_a_fresh_rollout() {
    let plan = plan(&spec(), None, &input(None), t(0));
    assert_eq!(
        (plan.status.phase, plan.weight_bp),
        (Phase::Progressing, 100)
    );
    assert_eq!(plan.status.observed_generation, Some(1));
    assert_eq!(plan.status.step_started_at, Some(Time(t(0))));
    assert_eq!(plan.events[0].message, "step 1/4: canary at 1%");
}

#[test]
fn a_retry_is_recorded_and_a_pending_one_fires_once_the_spec_is_fixed() {
    let mut spec = spec();
    spec.restart_at = Some("2026-11-24T20:00:00Z".into());
    let retried = plan(
        &spec,
        Some(&settled(Phase::RolledBack, 0)),
        &input(None),
        t(0),
    );
    assert_eq!(
        retried.status.observed_restart_at.as_deref(),
        Some("2026-11-24T20:00:00Z")
    );
    assert_eq!(
        retried.events[0].message,
        "spec.restartAt changed to \"2026-11-24T20:00:00Z\": starting again from the first step"
    );
    // Broken spec: the retry waits, unconsumed.
    spec.hosts.clear();
    let waiting = plan(
        &spec,
        Some(&settled(Phase::RolledBack, 0)),
        &input(None),
        t(0),
    );
    assert_eq!(waiting.status.observed_restart_at, None);
    spec.hosts = vec!["checkout".into()];
    let fixed = plan(&spec, Some(&waiting.status), &input(None), t(5));
    assert_eq!(reasons(&fixed), vec!["Restarted", "Started"]);
}

#[test]
fn restart_clears_the_previous_run() {
    let mut spec = spec();
    spec.restart_at = Some("r1".into());
    let from = CanaryRolloutStatus {
        consecutive_errors: 7,
        no_data_since: Some(Time(t(0))),
        gates: evaluation(Verdict::Fail).results,
        last_analysis_at: Some(Time(t(0))),
        ..settled(Phase::RolledBack, 0)
    };
    let plan = plan(&spec, Some(&from), &input(None), t(100));
    assert_eq!(plan.status.consecutive_errors, 0);
    assert_eq!(plan.status.no_data_since, None);
    assert!(plan.status.gates.is_empty());
    assert_eq!(plan.status.last_analysis_at, None);
    assert_eq!(plan.status.step_started_at, Some(Time(t(100))));
}

#[test]
fn analysis_updates_counters_and_gate_results() {
    let spec = spec();
    let from = progressing(0, 100, 0);
    let error = plan(&spec, Some(&from), &input(Some(Verdict::Error)), t(10));
    assert_eq!(error.status.consecutive_errors, 1);
    assert_eq!(error.status.no_data_since, None);
    assert_eq!(error.status.gates, evaluation(Verdict::Error).results);
    assert_eq!(error.status.last_analysis_at, Some(Time(t(10))));
    let thin = plan(
        &spec,
        Some(&error.status),
        &input(Some(Verdict::Inconclusive)),
        t(20),
    );
    assert_eq!(thin.status.consecutive_errors, 0);
    assert_eq!(thin.status.no_data_since, Some(Time(t(20))));
    // The drought keeps its start while it lasts, through errors too.
    let still = plan(
        &spec,
        Some(&thin.status),
        &input(Some(Verdict::Inconclusive)),
        t(30),
    );
    assert_eq!(still.status.no_data_since, Some(Time(t(20))));
    let erring = plan(
        &spec,
        Some(&still.status),
        &input(Some(Verdict::Error)),
        t(40),
    );
    assert_eq!(erring.status.no_data_since, Some(Time(t(20))));
    let pass = plan(
        &spec,
        Some(&erring.status),
        &input(Some(Verdict::Pass)),
        t(50),
    );
    assert_eq!(pass.status.no_data_since, None);
    assert_eq!(pass.status.consecutive_errors, 0);
}

#[test]
fn a_full_rollout_visits_every_step_once_and_bakes_each() {
    let spec = spec();
    let mut status: Option<CanaryRolloutStatus> = None;
    let mut pushed: Vec<(i64, u32)> = Vec::new();
    let mut now = 0;
    while now < 3600 {
        let verdict = status.as_ref().map(|_| Verdict::Pass);
        let plan = plan(&spec, status.as_ref(), &input(verdict), t(now));
        if pushed.last().map(|&(_, w)| w) != Some(plan.weight_bp) {
            pushed.push((now, plan.weight_bp));
        }
        assert!(plan.requeue >= Duration::from_secs(1));
        status = Some(plan.status);
        now += 7;
    }
    let weights: Vec<u32> = pushed.iter().map(|&(_, w)| w).collect();
    assert_eq!(weights, vec![100, 500, 2500, 10_000]);
    for pair in pushed.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= 60,
            "every step baked at least 1m: {pushed:?}"
        );
    }
    let status = status.unwrap();
    assert_eq!(status.phase, Phase::Promoted);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Promoted")
    );
    let history: Vec<&str> = status.history.iter().map(|h| h.reason.as_str()).collect();
    assert_eq!(
        history,
        vec!["Started", "StepAdvanced", "StepAdvanced", "Promoted"]
    );
}

/// A restarted controller reads the status back from the API server (whole-second times, JSON):
/// planning again from it gives the same decision, and planning twice at the same moment changes
/// nothing and records no Event.
#[test]
fn status_is_the_source_of_truth_across_restarts() {
    let spec = spec();
    let mut status: Option<CanaryRolloutStatus> = None;
    let verdicts = [
        None,
        Some(Verdict::Inconclusive),
        Some(Verdict::Pass),
        Some(Verdict::Error),
        Some(Verdict::Pass),
        Some(Verdict::Pass),
        Some(Verdict::Pass),
    ];
    for (i, verdict) in verdicts.iter().enumerate() {
        // Sub-second times must not matter: they are cut like the API server cuts them.
        let now = t(40 * i as i64)
            .checked_add(k8s_openapi::jiff::SignedDuration::from_millis(730))
            .unwrap();
        let first = plan(&spec, status.as_ref(), &input(*verdict), now);
        let json = serde_json::to_string(&first.status).unwrap();
        let reread: CanaryRolloutStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(reread, first.status, "round trip at cycle {i}");
        let again = plan(&spec, Some(&reread), &input(None), now);
        assert_eq!(again.status, first.status, "re-plan at cycle {i}");
        assert_eq!(again.weight_bp, first.weight_bp);
        assert!(again.events.is_empty(), "cycle {i}: {:?}", again.events);
        status = Some(reread);
    }
}

/// A small deterministic generator for the invariant test.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[test]
fn weight_never_drops_without_rollback_abort_or_retry_and_no_step_is_skipped() {
    let verdicts = [
        None,
        Some(Verdict::Pass),
        Some(Verdict::Pass),
        Some(Verdict::Pass),
        Some(Verdict::Inconclusive),
        Some(Verdict::Error),
        Some(Verdict::Fail),
    ];
    for seed in 0..40 {
        let mut rng = Lcg(seed);
        let mut spec = spec();
        let mut status: Option<CanaryRolloutStatus> = None;
        let mut now = 0;
        for cycle in 0..300 {
            spec.paused = rng.next(10) == 0;
            spec.abort = rng.next(60) == 0;
            spec.promote = rng.next(80) == 0;
            if rng.next(25) == 0 {
                spec.restart_at = Some(format!("r{cycle}"));
            }
            let verdict = verdicts[rng.next(verdicts.len() as u64) as usize];
            now += rng.next(40) as i64;
            let before = status.clone().unwrap_or_default();
            let plan = plan(&spec, status.as_ref(), &input(verdict), t(now));
            let after = &plan.status;
            let reasons = reasons(&plan);
            let context = format!("seed {seed} cycle {cycle}: {before:?} -> {reasons:?} {after:?}");
            if after.weight_bp < before.weight_bp {
                assert!(
                    matches!(after.phase, Phase::RolledBack | Phase::Aborted)
                        || reasons.contains(&"Restarted"),
                    "weight dropped: {context}"
                );
            }
            if reasons.contains(&"StepAdvanced") {
                assert_eq!(
                    after.step_index,
                    before.step_index.map(|i| i + 1),
                    "advanced by more than one step: {context}"
                );
                assert_ne!(verdict, None, "advanced without analysis: {context}");
            }
            if after.weight_bp > before.weight_bp && !reasons.contains(&"Restarted") {
                assert!(
                    matches!(verdict, Some(Verdict::Pass))
                        || spec.promote
                        || before.phase == Phase::Pending
                        || reasons.contains(&"Started"),
                    "weight rose without a pass: {context}"
                );
            }
            assert!(after.history.len() <= HISTORY_LIMIT, "{context}");
            status = Some(plan.status);
        }
    }
}

#[test]
fn history_is_bounded_and_keeps_the_latest() {
    let mut spec = spec();
    let mut status = plan(&spec, None, &input(None), t(0)).status;
    for i in 0..30 {
        spec.paused = i % 2 == 0;
        status = plan(&spec, Some(&status), &input(None), t(i + 1)).status;
    }
    assert_eq!(status.history.len(), HISTORY_LIMIT);
    let last = status.history.last().unwrap();
    assert_eq!(
        (last.reason.as_str(), last.time.clone()),
        ("Resumed", Time(t(30)))
    );
    assert_eq!(status.history[0].time, Time(t(11)));
}

#[test]
fn history_records_each_transition() {
    let spec = spec();
    let started = plan(&spec, None, &input(None), t(0));
    let rolled_back = plan(
        &spec,
        Some(&started.status),
        &input(Some(Verdict::Fail)),
        t(5),
    );
    let entry = rolled_back.status.history.last().unwrap();
    assert_eq!(
        entry,
        &HistoryEntry {
            time: Time(t(5)),
            from_phase: Phase::Progressing,
            from_step: Some(0),
            to_phase: Phase::RolledBack,
            to_step: Some(0),
            weight_bp: 0,
            reason: "RolledBack".into(),
            message: "rolled back from 1% at step 1: a gate failed: error-rate: judged Fail".into(),
        }
    );
    assert_eq!(rolled_back.events[0].kind, EventKind::Warning);
    assert_eq!(
        rolled_back.status.message.as_deref(),
        Some("rolled back from 1% at step 1: a gate failed: error-rate: judged Fail; fix the canary, then set spec.restartAt to a new value to retry")
    );
}

fn condition<'a>(status: &'a CanaryRolloutStatus, kind: &str) -> (&'a str, &'a str) {
    let condition = status.conditions.iter().find(|c| c.type_ == kind).unwrap();
    (condition.status.as_str(), condition.reason.as_str())
}

#[test]
fn conditions_follow_the_phase() {
    let spec = spec();
    let mut paused_spec = spec.clone();
    paused_spec.paused = true;
    let mut invalid_spec = spec.clone();
    invalid_spec.steps[1].weight = 0.0;
    let mut hold_spec = spec.clone();
    hold_spec.failure_policy.max_consecutive_errors = 0;
    type Conditions = [(&'static str, &'static str); 5];
    let table: Vec<(
        &str,
        &CanaryRolloutSpec,
        CanaryRolloutStatus,
        Option<Verdict>,
        Conditions,
    )> = vec![
        (
            "progressing",
            &spec,
            progressing(0, 100, 0),
            None,
            [
                ("False", "Progressing"),
                ("True", "Progressing"),
                ("False", "NotPaused"),
                ("False", "Healthy"),
                ("False", "Valid"),
            ],
        ),
        (
            "paused",
            &paused_spec,
            progressing(0, 100, 0),
            None,
            [
                ("False", "Paused"),
                ("False", "Paused"),
                ("True", "PausedBySpec"),
                ("False", "Healthy"),
                ("False", "Valid"),
            ],
        ),
        (
            "promoted",
            &spec,
            settled(Phase::Promoted, 10_000),
            None,
            [
                ("True", "Promoted"),
                ("False", "Promoted"),
                ("False", "NotPaused"),
                ("False", "Healthy"),
                ("False", "Valid"),
            ],
        ),
        (
            "rolled back",
            &spec,
            progressing(0, 100, 0),
            Some(Verdict::Fail),
            [
                ("False", "RolledBack"),
                ("False", "RolledBack"),
                ("False", "NotPaused"),
                ("True", "RolledBack"),
                ("False", "Valid"),
            ],
        ),
        (
            "query errors",
            &hold_spec,
            progressing(0, 100, 0),
            Some(Verdict::Error),
            [
                ("False", "Progressing"),
                ("True", "Progressing"),
                ("False", "NotPaused"),
                ("True", "AnalysisErrors"),
                ("False", "Valid"),
            ],
        ),
        (
            "no data",
            &spec,
            CanaryRolloutStatus {
                no_data_since: Some(Time(t(0))),
                ..progressing(0, 100, 0)
            },
            Some(Verdict::Inconclusive),
            [
                ("False", "Progressing"),
                ("True", "Progressing"),
                ("False", "NotPaused"),
                ("True", "NoData"),
                ("False", "Valid"),
            ],
        ),
        (
            "invalid",
            &invalid_spec,
            progressing(0, 100, 0),
            None,
            [
                ("False", "Progressing"),
                ("True", "Progressing"),
                ("False", "NotPaused"),
                ("False", "Healthy"),
                ("True", "InvalidSpec"),
            ],
        ),
    ];
    for (name, spec, from, verdict, expected) in table {
        let plan = plan(spec, Some(&from), &input(verdict), t(3600));
        let got: Vec<(&str, &str)> = [
            CONDITION_READY,
            CONDITION_PROGRESSING,
            CONDITION_PAUSED,
            CONDITION_DEGRADED,
            CONDITION_INVALID_SPEC,
        ]
        .iter()
        .map(|kind| condition(&plan.status, kind))
        .collect();
        assert_eq!(got, expected.to_vec(), "{name}");
    }
}

#[test]
fn invalid_spec_condition_names_the_field() {
    let mut spec = spec();
    spec.steps[2].weight = 3.0;
    let plan = plan(&spec, None, &input(None), t(0));
    let invalid = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_INVALID_SPEC)
        .unwrap();
    assert_eq!(
        invalid.message,
        "spec.steps[2].weight: 3 is not above the previous step's 5; weights must strictly increase"
    );
    assert_eq!(plan.events[0].message, invalid.message);
    assert!(plan
        .status
        .message
        .as_deref()
        .unwrap_or_default()
        .starts_with("the spec is invalid"));
    // Still invalid later: no second Event.
    let again = plan_again(&spec, &plan.status, 10);
    assert!(again.events.is_empty());
}

fn plan_again(spec: &CanaryRolloutSpec, status: &CanaryRolloutStatus, at: i64) -> Plan {
    plan(spec, Some(status), &input(None), t(at))
}

#[test]
fn condition_transition_times_change_only_when_the_status_flips() {
    let mut spec = spec();
    let started = plan(&spec, None, &input(None), t(0));
    let later = plan_again(&spec, &started.status, 20);
    let time = |status: &CanaryRolloutStatus, kind: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.last_transition_time.clone())
    };
    assert_eq!(time(&later.status, CONDITION_PROGRESSING), Some(Time(t(0))));
    spec.paused = true;
    let paused = plan_again(&spec, &later.status, 40);
    assert_eq!(
        time(&paused.status, CONDITION_PROGRESSING),
        Some(Time(t(40)))
    );
    assert_eq!(time(&paused.status, CONDITION_PAUSED), Some(Time(t(40))));
    assert_eq!(time(&paused.status, CONDITION_READY), Some(Time(t(0))));
}

#[test]
fn degraded_is_announced_once() {
    let mut spec = spec();
    spec.failure_policy.max_consecutive_errors = 1;
    let mut status = progressing(0, 100, 0);
    let mut announced = 0;
    for i in 0..5 {
        let plan = plan(
            &spec,
            Some(&status),
            &input(Some(Verdict::Error)),
            t(i * 30),
        );
        announced += plan
            .events
            .iter()
            .filter(|e| e.reason == "AnalysisErrors")
            .count();
        status = plan.status;
    }
    assert_eq!(announced, 1);
    assert_eq!(status.phase, Phase::Progressing);
    assert_eq!(status.weight_bp, 100);
}

#[test]
fn requeue_follows_the_bake_and_the_interval() {
    let spec = spec(); // interval 30s, bakes 1m
    let table: &[(CanaryRolloutStatus, Option<Verdict>, i64, u64)] = &[
        (progressing(0, 100, 0), None, 0, 30), // 60s of bake left: the interval
        (progressing(0, 100, 0), None, 45, 15), // 15s left: exactly when it ends
        (progressing(0, 100, 0), None, 60, 30), // baked, waiting for a pass
        (progressing(0, 100, 0), Some(Verdict::Pass), 60, 30), // just advanced: a fresh bake
        (at_step(Phase::Paused, 0, 100, 0), None, 0, 30),
        (settled(Phase::Promoted, 10_000), None, 0, 300),
        (settled(Phase::RolledBack, 0), None, 0, 300),
        (settled(Phase::Aborted, 0), None, 0, 300),
    ];
    for (from, verdict, at, seconds) in table {
        let plan = plan(&spec, Some(from), &input(*verdict), t(*at));
        assert_eq!(
            plan.requeue,
            Duration::from_secs(*seconds),
            "{:?} at {at}",
            from.phase
        );
    }
    // Half a second of bake left still waits a whole second.
    let mut short = spec.clone();
    short.steps[0].bake = "500ms".into();
    short.analysis.interval = "500ms".into();
    let plan = plan(&short, Some(&progressing(0, 100, 0)), &input(None), t(0));
    assert_eq!(plan.requeue, Duration::from_secs(1));
}

#[test]
fn status_message_says_where_the_rollout_stands() {
    let mut spec = spec();
    let mut table: Vec<(CanaryRolloutStatus, Option<Verdict>, i64, &str)> = vec![
        (progressing(1, 500, 0), None, 20, "step 2/4 at 5%: baked 20s of 1m; not analysed yet"),
        (progressing(1, 500, 0), Some(Verdict::Inconclusive), 20, "step 2/4 at 5%: baked 20s of 1m; gates Inconclusive (error-rate: judged Inconclusive)"),
        (progressing(1, 500, 0), Some(Verdict::Pass), 20, "step 2/4 at 5%: baked 20s of 1m; gates Pass"),
        (settled(Phase::Promoted, 10_000), None, 20, "promoted: the canary serves everyone"),
        (settled(Phase::Aborted, 0), None, 20, "aborted by spec.abort; clear spec.abort and set spec.restartAt to a new value to retry"),
    ];
    let no_gates = CanaryRolloutStatus {
        last_analysis_at: Some(Time(t(10))),
        ..progressing(1, 500, 0)
    };
    table.push((
        no_gates,
        None,
        20,
        "step 2/4 at 5%: baked 20s of 1m; no gates",
    ));
    for (from, verdict, at, expected) in table {
        let plan = plan(&spec, Some(&from), &input(verdict), t(at));
        assert_eq!(plan.status.message.as_deref(), Some(expected));
    }
    spec.paused = true;
    let paused = plan(&spec, Some(&progressing(1, 550, 0)), &input(None), t(0));
    assert_eq!(
        paused.status.message.as_deref(),
        Some("paused at step 2/4 (5.5%); clear spec.paused to resume")
    );
    assert_eq!(
        paused.events[0].message,
        "spec.paused is set: holding the canary at 5.5%"
    );
}

#[test]
fn formatting_helpers() {
    let percents = [
        (0, "0%"),
        (1, "0.01%"),
        (50, "0.5%"),
        (100, "1%"),
        (2525, "25.25%"),
        (10_000, "100%"),
    ];
    for (bp, text) in percents {
        assert_eq!(percent(bp), text);
    }
    let durations = [
        (0, "0ms"),
        (500, "500ms"),
        (1_000, "1s"),
        (90_000, "1m30s"),
        (3_600_000, "1h"),
        (3_661_000, "1h1m1s"),
    ];
    for (ms, text) in durations {
        assert_eq!(human(Duration::from_millis(ms)), text);
    }
}

/// A controller that stopped between its push and its status write left the target one
/// transition ahead of status: adopted only when that one transition explains the live weight.
#[test]
fn an_unrecorded_transition_is_adopted_only_when_one_transition_explains_it() {
    // (case, spec edit, status, live weight, expected (phase, step, weight, events) or None)
    type Adopted = Option<(Phase, Option<u32>, u32, &'static [&'static str])>;
    let paused: fn(&mut CanaryRolloutSpec) = |spec| spec.paused = true;
    let promoted: fn(&mut CanaryRolloutSpec) = |spec| spec.promote = true;
    let aborted: fn(&mut CanaryRolloutSpec) = |spec| spec.abort = true;
    type Case = (
        &'static str,
        fn(&mut CanaryRolloutSpec),
        CanaryRolloutStatus,
        Option<u32>,
        Adopted,
    );
    let table: [Case; 10] = [
        (
            "the next step's weight: an advance",
            keep,
            progressing(0, 100, 0),
            Some(500),
            Some((Phase::Progressing, Some(1), 500, &["StepAdvanced"])),
        ),
        (
            "weight 0: a rollback",
            keep,
            progressing(1, 500, 0),
            Some(0),
            Some((Phase::RolledBack, Some(1), 0, &["RolledBack"])),
        ),
        (
            "a pause set since applies after the advance, in the same cycle's plan",
            paused,
            progressing(0, 100, 0),
            Some(500),
            Some((Phase::Progressing, Some(1), 500, &["StepAdvanced"])),
        ),
        (
            "a promotion does not lift an unrecorded rollback",
            promoted,
            progressing(1, 500, 0),
            Some(0),
            Some((Phase::RolledBack, Some(1), 0, &["RolledBack"])),
        ),
        (
            "what status records",
            keep,
            progressing(1, 500, 0),
            Some(500),
            None,
        ),
        ("no live entry", keep, progressing(1, 500, 0), None, None),
        (
            "two steps ahead",
            keep,
            progressing(0, 100, 0),
            Some(2_500),
            None,
        ),
        (
            "the bake had not elapsed",
            keep,
            progressing(0, 100, 100),
            Some(500),
            None,
        ),
        (
            "an abort decides by itself",
            aborted,
            progressing(1, 500, 0),
            Some(0),
            None,
        ),
        (
            "a settled rollout",
            keep,
            settled(Phase::Promoted, 10_000),
            Some(0),
            None,
        ),
    ];
    for (case, edit, status, live_bp, expected) in table {
        let mut spec = spec();
        edit(&mut spec);
        let compiled = compile(&spec, "", "checkout");
        let adopted = adopt_unrecorded(
            &spec,
            compiled.as_ref(),
            &status,
            live_bp,
            "checkout",
            Some(1),
            t(120),
        );
        let got = adopted.as_ref().map(|plan| {
            (
                plan.status.phase,
                plan.status.step_index,
                plan.weight_bp,
                reasons(plan),
            )
        });
        let expected =
            expected.map(|(phase, step, weight, events)| (phase, step, weight, events.to_vec()));
        assert_eq!(got, expected, "{case}");
        if let Some(plan) = adopted.filter(|plan| plan.weight_bp == 0) {
            let message = plan.status.message.unwrap_or_default();
            assert!(
                message.contains("stopped before recording"),
                "{case}: {message}"
            );
        }
    }
}

fn condition_message<'a>(status: &'a CanaryRolloutStatus, kind: &str) -> &'a str {
    let condition = status.conditions.iter().find(|c| c.type_ == kind).unwrap();
    condition.message.as_str()
}

fn routing(canary_decided: f64, canary_served: f64) -> Routing {
    use crate::evaluate::{Observed, Samples, VersionSamples};
    let version = |decided: f64, served: f64| VersionSamples {
        decisions: Observed::Value(decided),
        requests: Observed::Value(served),
        ..VersionSamples::default()
    };
    crate::routing::check(&Samples {
        canary: version(canary_decided, canary_served),
        stable: version(1000.0, 1000.0 + canary_decided - canary_served),
    })
}

fn with_routing(verdict: Verdict, routing: Routing) -> PlanInput {
    PlanInput {
        routing: Some(routing),
        ..input(Some(verdict))
    }
}

/// A canary its users never reach (the route misses the header) is never advanced, whatever
/// the gates say; the failure policy decides after the deadline, and a healed route goes on.
#[test]
fn a_routing_mismatch_holds_and_the_policy_decides_after_the_deadline() {
    let spec = spec();
    let baked = progressing(1, 500, 0);
    let misrouted = routing(480.0, 0.0);
    assert!(matches!(misrouted, Routing::Mismatch(_)));

    // First seen: hold at 5% (the bake is over and the gates pass), Event, condition.
    let first = plan(
        &spec,
        Some(&baked),
        &with_routing(Verdict::Pass, misrouted.clone()),
        t(120),
    );
    assert_eq!(
        (first.status.phase, first.weight_bp),
        (Phase::Progressing, 500)
    );
    assert_eq!(reasons(&first), ["RoutingMismatch"]);
    assert_eq!(first.events[0].kind, EventKind::Warning);
    for wanted in ["served 0 of the 480", "VirtualService", "CLIENT"] {
        assert!(
            first.events[0].message.contains(wanted),
            "{wanted:?} in {}",
            first.events[0].message
        );
    }
    assert_eq!(
        condition(&first.status, CONDITION_ROUTING_MISMATCH),
        ("True", "CanaryNotServed")
    );
    let message = condition_message(&first.status, CONDITION_ROUTING_MISMATCH);
    assert!(message.contains("served 0 of the 480"), "{message}");
    assert_eq!(first.status.routing_mismatch_since, Some(Time(t(120))));
    let said = first.status.message.as_deref().unwrap_or_default();
    assert!(
        said.contains("held by a routing mismatch: the canary served 0 of the 480"),
        "{said}"
    );

    // Still misrouted, or too thin to tell: held, announced once, the condition keeps its counts.
    let again = plan(
        &spec,
        Some(&first.status),
        &with_routing(Verdict::Pass, misrouted.clone()),
        t(150),
    );
    assert_eq!((again.weight_bp, reasons(&again).len()), (500, 0));
    let thin = plan(
        &spec,
        Some(&again.status),
        &with_routing(Verdict::Pass, routing(5.0, 0.0)),
        t(180),
    );
    assert_eq!(thin.weight_bp, 500);
    assert_eq!(
        condition(&thin.status, CONDITION_ROUTING_MISMATCH),
        ("True", "CanaryNotServed")
    );
    assert_eq!(
        condition_message(&thin.status, CONDITION_ROUTING_MISMATCH),
        condition_message(&again.status, CONDITION_ROUTING_MISMATCH)
    );

    // The default policy rolls back once the deadline (5m) has passed.
    let before_deadline = plan(
        &spec,
        Some(&thin.status),
        &with_routing(Verdict::Pass, misrouted.clone()),
        t(120 + 299),
    );
    assert_eq!(before_deadline.status.phase, Phase::Progressing);
    let at_deadline = plan(
        &spec,
        Some(&thin.status),
        &with_routing(Verdict::Pass, misrouted.clone()),
        t(120 + 300),
    );
    assert_eq!(
        (at_deadline.status.phase, at_deadline.weight_bp),
        (Phase::RolledBack, 0)
    );
    assert_eq!(reasons(&at_deadline), ["RolledBack"]);
    assert!(at_deadline.events[0]
        .message
        .contains("has not served the requests decided for it for 5m"));
    // The rolled-back rollout keeps the condition that explains it.
    assert_eq!(
        condition(&at_deadline.status, CONDITION_ROUTING_MISMATCH),
        ("True", "CanaryNotServed")
    );

    // `onRoutingMismatch: hold` keeps holding, Degraded, and never advances.
    let mut hold = spec.clone();
    hold.failure_policy.on_routing_mismatch = OnTrouble::Hold;
    let held = plan(
        &hold,
        Some(&thin.status),
        &with_routing(Verdict::Pass, misrouted.clone()),
        t(120 + 900),
    );
    assert_eq!(
        (held.status.phase, held.weight_bp),
        (Phase::Progressing, 500)
    );
    assert_eq!(condition(&held.status, CONDITION_DEGRADED).0, "True");
    assert_eq!(reasons(&held), [CONDITION_ROUTING_MISMATCH]);

    // A healed route clears the hold; the next passing cycle advances.
    let healed = plan(
        &spec,
        Some(&thin.status),
        &with_routing(Verdict::Pass, routing(480.0, 470.0)),
        t(240),
    );
    assert_eq!(reasons(&healed), ["RoutingRestored"]);
    assert_eq!(healed.status.routing_mismatch_since, None);
    assert_eq!(
        condition(&healed.status, CONDITION_ROUTING_MISMATCH).0,
        "False"
    );
    assert_eq!(healed.weight_bp, 500, "the step bakes again once served");
    assert_eq!(healed.status.bake_started_at, Some(Time(t(240))));
    // The analysis window (and the sequential test over it) still runs from the step's start.
    assert_eq!(healed.status.step_started_at, thin.status.step_started_at);
    let baking = plan(
        &spec,
        Some(&healed.status),
        &with_routing(Verdict::Pass, routing(480.0, 470.0)),
        t(299),
    );
    assert_eq!(baking.weight_bp, 500, "a full bake from the healing");
    let advanced = plan(
        &spec,
        Some(&healed.status),
        &with_routing(Verdict::Pass, routing(480.0, 470.0)),
        t(300),
    );
    assert_eq!(advanced.weight_bp, 2500);
    assert_eq!(advanced.status.bake_started_at, None);

    // A gate that fails still rolls back at once, mismatch or not.
    let failed = plan(
        &spec,
        Some(&first.status),
        &with_routing(Verdict::Fail, misrouted),
        t(150),
    );
    assert_eq!(failed.status.phase, Phase::RolledBack);
}

#[test]
fn a_healthy_rollout_shows_no_routing_condition() {
    let spec = spec();
    let planned = plan(
        &spec,
        Some(&progressing(1, 500, 0)),
        &with_routing(Verdict::Pass, routing(480.0, 480.0)),
        t(120),
    );
    assert_eq!(planned.weight_bp, 2500);
    assert!(planned
        .events
        .iter()
        .all(|e| e.reason != CONDITION_ROUTING_MISMATCH));
    assert!(planned
        .status
        .conditions
        .iter()
        .all(|c| c.type_ != CONDITION_ROUTING_MISMATCH));
}

#[test]
fn an_underpowered_hold_is_degraded_and_says_what_could_have_been_missed() {
    let mut spec = spec();
    spec.failure_policy.on_underpowered = OnUnderpowered::Hold;
    let plan = plan(
        &spec,
        Some(&progressing(0, 100, 0)),
        &input(Some(Verdict::Underpowered)),
        t(3600),
    );
    let (status, reason) = condition(&plan.status, CONDITION_DEGRADED);
    assert_eq!((status, reason), ("True", "Underpowered"));
    let message = condition_message(&plan.status, CONDITION_DEGRADED);
    assert!(
        message.contains("error-rate: judged Underpowered")
            && message.contains("failurePolicy.onUnderpowered is hold"),
        "{message}"
    );
    // Announced once.
    let again = plan_again(&spec, &plan.status, 3630);
    assert!(!reasons(&again).contains(&"Underpowered"));
    // The default policy advances, and its Event says what the gate could not rule out.
    let advanced = super::plan(
        &self::spec(),
        Some(&progressing(0, 100, 0)),
        &input(Some(Verdict::Underpowered)),
        t(60),
    );
    let warning = &advanced.events[0];
    assert_eq!(warning.kind, EventKind::Warning);
    assert!(
        warning.message.contains("could not rule out a regression")
            && warning.message.contains("judged Underpowered"),
        "{}",
        warning.message
    );
    assert!(
        advanced.status.history.last().is_some_and(|entry| entry
            .message
            .contains("with no regression found (underpowered)")),
        "{:?}",
        advanced.status.history
    );
}
