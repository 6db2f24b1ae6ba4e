//! The lab's live progress on stderr. On a terminal, a block at the bottom is redrawn a few
//! times a second (progress bar, step and weight, users per version, each gate's values and
//! verdict) and events scroll above it; elsewhere (CI logs, tests) each controller cycle prints
//! one line instead.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, PoisonError};

use crate::record::Record;
use cohort_rollout::crd::{CanaryRolloutSpec, CanaryRolloutStatus, GateResult, Phase};
use cohort_rollout::duration;
use cohort_rollout::format::{share_percent, weight_percent};

/// Width of the progress bar, in characters.
const BAR_WIDTH: usize = 30;
/// The live block counts users over this many whole seconds.
const RECENT_SECONDS: usize = 2;

/// Where progress goes: stderr, redrawn in place on a terminal.
#[derive(Debug)]
pub struct Display {
    terminal: bool,
    /// Lines of the live block now on screen.
    drawn: Mutex<usize>,
}

impl Default for Display {
    fn default() -> Self {
        Display::new()
    }
}

impl Display {
    /// Redraws in place when stderr is a terminal (and `TERM` is not `dumb`).
    pub fn new() -> Display {
        let dumb = std::env::var("TERM").is_ok_and(|term| term == "dumb");
        Display {
            terminal: std::io::stderr().is_terminal() && !dumb,
            drawn: Mutex::new(0),
        }
    }

    /// Prints a line that stays (above the live block).
    pub fn line(&self, text: &str) {
        let mut drawn = self.drawn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{}{text}", erase(*drawn));
        *drawn = 0;
    }

    /// One line per controller cycle, where the live block is not drawn; `canary_users` is
    /// the canary's share of the users served in the last seconds.
    pub fn cycle_line(&self, at: f64, status: &CanaryRolloutStatus, canary_users: Option<f64>) {
        if self.terminal {
            return;
        }
        let mut line = format!(
            "{at:>6.1}s  {} step {} at {}",
            status.phase,
            status.step_index.map_or(0, |index| index + 1),
            weight_percent(status.weight_bp)
        );
        if let Some(share) = canary_users {
            line.push_str(&format!(", canary users {}", share_percent(share, 1)));
        }
        for gate in &status.gates {
            line.push_str(&format!(" | {}", gate_line(gate, false)));
        }
        self.line(&line);
    }

    /// Replaces the live block with `lines` (terminals only).
    pub fn live(&self, lines: &[String]) {
        if !self.terminal {
            return;
        }
        let mut drawn = self.drawn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        let mut out = erase(*drawn);
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        let _ = err.write_all(colour(&out).as_bytes());
        *drawn = lines.len();
    }

    /// Removes the live block.
    pub fn clear(&self) {
        let mut drawn = self.drawn.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = std::io::stderr().lock().write_all(erase(*drawn).as_bytes());
        *drawn = 0;
    }
}

/// Moves the cursor up `lines` lines and clears to the end of the screen.
fn erase(lines: usize) -> String {
    if lines == 0 {
        String::new()
    } else {
        format!("\x1b[{lines}A\x1b[J")
    }
}

/// Verdicts in colour.
fn colour(text: &str) -> String {
    text.replace(" Pass ", " \x1b[32mPass\x1b[0m ")
        .replace(" Fail ", " \x1b[31;1mFail\x1b[0m ")
        .replace(" Inconclusive ", " \x1b[33mInconclusive\x1b[0m ")
        .replace(" Error ", " \x1b[35mError\x1b[0m ")
        .replace(" Underpowered ", " \x1b[33;1mUnderpowered\x1b[0m ")
}

/// The live block: where the rollout is, who gets which version, what the gates say.
pub fn live_block(spec: &CanaryRolloutSpec, record: &Record, now: f64) -> Vec<String> {
    let mut lines = Vec::new();
    let last = record
        .cycles
        .iter()
        .rev()
        .find(|cycle| cycle.error.is_none());
    let step_index = last.and_then(|cycle| cycle.step_index);
    let phase = last.map_or(Phase::Pending, |cycle| cycle.phase);
    let served = record.weights.last().map_or(0, |(_, weight)| *weight);
    let step_started = step_index.and_then(|index| {
        record
            .cycles
            .iter()
            .find(|cycle| cycle.step_index == Some(index) && cycle.error.is_none())
            .map(|cycle| cycle.at)
    });
    // A settled rollout has no step time left to count.
    let in_step = match step_started {
        Some(started) if !phase.is_terminal() => (now - started).max(0.0),
        _ => 0.0,
    };
    let bake = step_index
        .and_then(|index| spec.steps.get(index as usize))
        .and_then(|step| duration::parse(&step.bake).ok())
        .map_or(0.0, |bake| bake.as_secs_f64());
    let fraction = progress(phase, step_index, in_step, bake, spec.steps.len());
    lines.push(format!(
        "  [{}] {:<11} step {}/{}  canary {:>5}  {:.0} s in step (bake {:.0} s)  t {:.1} s",
        bar(fraction),
        phase.as_str(),
        step_index.map_or(0, |index| index + 1),
        spec.steps.len(),
        weight_percent(served),
        in_step,
        bake,
        now
    ));
    let whole = now.max(0.0) as usize;
    let traffic = record.traffic(whole.saturating_sub(RECENT_SECONDS), whole);
    let users = traffic.users[0] + traffic.users[1];
    let share = traffic.canary_user_share().unwrap_or(0.0);
    lines.push(format!(
        "  users (last {RECENT_SECONDS} s): stable {:.1}%  canary {:.1}%  of {users}  ·  {:.0} req/s",
        (1.0 - share) * 100.0,
        share * 100.0,
        traffic.per_second
    ));
    if let Some(cycle) = last {
        for gate in &cycle.gates {
            lines.push(format!("  {}", gate_line(gate, true)));
        }
    }
    lines
}

/// How far the rollout is, 0..=1: whole steps done plus the bake time of the current one.
fn progress(phase: Phase, step: Option<u32>, in_step: f64, bake: f64, steps: usize) -> f64 {
    if phase == Phase::Promoted {
        return 1.0;
    }
    let baked_steps = steps.saturating_sub(1).max(1) as f64;
    let Some(step) = step else { return 0.0 };
    let within = if bake > 0.0 {
        (in_step / bake).min(1.0)
    } else {
        1.0
    };
    ((f64::from(step) + within) / baked_steps).clamp(0.0, 1.0)
}

/// `██████░░░░` for `fraction` of [`BAR_WIDTH`].
fn bar(fraction: f64) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
    format!("{}{}", "█".repeat(filled), "░".repeat(BAR_WIDTH - filled))
}

/// A gate's value in its unit, told by the gate's (default) name: `error-rate` a share in
/// percent, `latency-*` milliseconds, anything else a plain number (events per request).
pub fn gate_value(gate: &str, value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if gate.starts_with("error-rate") => share_percent(v, 2),
        Some(v) if gate.starts_with("latency") => format!("{v:.1} ms"),
        Some(v) => format!("{v:.3}"),
    }
}

/// A result's value in its unit. A sequential gate's values are rates of its events per request
/// (5xx, requests slower than stable's quantile, business events), so its latency is a share
/// too, not milliseconds; other gates' are read by name as [`gate_value`] does.
fn result_value(gate: &GateResult, value: Option<f64>) -> String {
    match value {
        Some(v) if gate.sequential.is_some() && gate.gate.starts_with("latency") => {
            share_percent(v, 2)
        }
        _ => gate_value(&gate.gate, value),
    }
}

/// An e-value as a person reads it: `0.42`, `37`, `1200`, `3.1e9`.
pub fn evidence_number(evidence: f64) -> String {
    if !evidence.is_finite() || evidence >= 1e5 {
        format!("{evidence:.1e}")
    } else if evidence >= 10.0 {
        format!("{evidence:.0}")
    } else {
        format!("{evidence:.2}")
    }
}

/// `error-rate Pass canary 0.00% stable 0.00% limit 2.00%`, and with `padded` aligned in
/// columns with the sample counts. A sequential gate adds its evidence and the evidence it
/// fails at (`evidence 3.1/1200`).
pub fn gate_line(gate: &GateResult, padded: bool) -> String {
    let value = |v: Option<f64>| result_value(gate, v);
    let verdict = gate.verdict.as_str();
    let evidence = gate.sequential.as_ref().map_or(String::new(), |look| {
        format!(
            " evidence {}/{}",
            evidence_number(look.evidence),
            evidence_number(look.evidence_needed)
        )
    });
    if padded {
        // The verdict keeps a space on each side, so the terminal colouring can find it.
        format!(
            "{:<15} {verdict:<12} canary {:>9}  stable {:>9}  limit {:>9}  n {:.0}/{:.0}{evidence}",
            gate.gate,
            value(gate.canary),
            value(gate.stable),
            value(gate.threshold),
            gate.canary_samples,
            gate.stable_samples
        )
    } else {
        format!(
            "{} {verdict} canary {} stable {} limit {}{evidence}",
            gate.gate,
            value(gate.canary),
            value(gate.stable),
            value(gate.threshold)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BadResponse, Cycle, Observation, Recorder, Version};
    use crate::rollout_yaml;
    use cohort_controller::standalone::parse_rollout;
    use cohort_rollout::crd::Verdict;
    use std::path::Path;

    fn gate(name: &str, verdict: Verdict, canary: f64, stable: f64, limit: f64) -> GateResult {
        GateResult {
            gate: name.into(),
            verdict,
            canary: Some(canary),
            stable: Some(stable),
            threshold: Some(limit),
            canary_samples: 30.0,
            stable_samples: 570.0,
            reason: String::new(),
            sequential: None,
        }
    }

    #[test]
    fn gate_values_are_shown_in_their_units() {
        let error = gate("error-rate", Verdict::Fail, 0.15, 0.0, 0.02);
        assert_eq!(
            gate_line(&error, false),
            "error-rate Fail canary 15.00% stable 0.00% limit 2.00%"
        );
        let latency = gate("latency-p90", Verdict::Pass, 6.5, 6.0, 59.0);
        assert!(gate_line(&latency, true).contains("canary    6.5 ms"));
        let event = gate("event-checkout", Verdict::Pass, 0.4, 0.4, 0.3);
        assert!(gate_line(&event, false).contains("limit 0.300"));
    }

    #[test]
    fn a_sequential_gate_shows_its_rates_and_evidence() {
        let look = |evidence| {
            Some(cohort_rollout::crd::SequentialLook {
                evidence,
                evidence_needed: 1200.0,
                dispersion: 5.0,
                canary_unit_dispersion: None,
                stable_unit_dispersion: None,
                canary_pod_dispersion: None,
                stable_pod_dispersion: None,
                tally: cohort_rollout::crd::Tally::default(),
            })
        };
        let latency = GateResult {
            sequential: look(3.1234),
            ..gate("latency-p99", Verdict::Inconclusive, 0.012, 0.01, 0.02)
        };
        assert_eq!(
            gate_line(&latency, false),
            "latency-p99 Inconclusive canary 1.20% stable 1.00% limit 2.00% evidence 3.12/1200"
        );
        let errors = GateResult {
            sequential: look(2.5e7),
            ..gate("error-rate", Verdict::Fail, 0.15, 0.0, 0.01)
        };
        assert!(gate_line(&errors, true).ends_with("n 30/570 evidence 2.5e7/1200"));
    }

    #[test]
    fn the_block_shows_step_weight_users_and_gates() {
        let spec = parse_rollout(&rollout_yaml(Path::new("/e.yaml")))
            .unwrap()
            .spec;
        let recorder = Recorder::new(100, BadResponse::Never);
        recorder.weight(0.1, 1000);
        for user in 0..10 {
            let version = if user == 0 {
                Version::Canary
            } else {
                Version::Stable
            };
            recorder.observe(Observation {
                at: 3.5,
                version: Some(version),
                status: 200,
                latency_ms: 5.0,
                user,
                event: false,
            });
        }
        recorder.cycle(
            0.0,
            Cycle {
                at: 1.0,
                phase: Phase::Progressing,
                step_index: Some(1),
                weight_bp: 1000,
                gates: vec![gate("error-rate", Verdict::Pass, 0.0, 0.0, 0.02)],
                error: None,
            },
        );
        let block = live_block(&spec, &recorder.snapshot(), 4.0);
        assert_eq!(block.len(), 3, "{block:#?}");
        assert!(block[0].contains("step 2/5"), "{}", block[0]);
        assert!(block[0].contains("canary   10%"), "{}", block[0]);
        assert!(
            block[0].contains(&format!("{}{}", "█".repeat(9), "░")),
            "{}",
            block[0]
        );
        assert!(block[1].contains("stable 90.0%"), "{}", block[1]);
        assert!(block[1].contains("canary 10.0%"), "{}", block[1]);
        assert!(block[2].contains("error-rate"), "{}", block[2]);
    }

    #[test]
    fn progress_counts_bake_time_of_the_current_step() {
        assert_eq!(progress(Phase::Pending, None, 0.0, 6.0, 5), 0.0);
        assert_eq!(progress(Phase::Progressing, Some(0), 3.0, 6.0, 5), 0.125);
        assert_eq!(progress(Phase::Progressing, Some(3), 60.0, 6.0, 5), 1.0);
        assert_eq!(progress(Phase::Promoted, Some(4), 0.0, 0.0, 5), 1.0);
        assert_eq!(bar(0.5).chars().filter(|c| *c == '█').count(), 15);
    }
}
