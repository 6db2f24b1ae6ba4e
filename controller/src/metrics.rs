//! The controller's own metrics, rendered in the Prometheus text format (version 0.0.4) for
//! `/metrics`: where each rollout stands (phase, weight, gate values and verdicts), how long
//! reconciles take, how often they fail, and whether this replica leads.
//!
//! Names start with `cohort_controller_` so they never mix with the filter's `cohort_*` series,
//! which Prometheus scrapes from Envoy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::crd::{CanaryRolloutStatus, GateResult, Phase, Verdict};

/// Upper bounds (seconds) of the reconcile duration histogram: a reconcile is a metrics query
/// plus two or three API calls, so tens of milliseconds to a few seconds.
pub const RECONCILE_DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const PHASES: [Phase; 6] = [
    Phase::Pending,
    Phase::Progressing,
    Phase::Paused,
    Phase::Promoted,
    Phase::RolledBack,
    Phase::Aborted,
];
const VERDICTS: [Verdict; 4] = [
    Verdict::Pass,
    Verdict::Fail,
    Verdict::Inconclusive,
    Verdict::Error,
];

/// The controller's metrics; shared by the reconciler, the leader elector and the HTTP server.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by (namespace, name).
    rollouts: BTreeMap<(String, String), RolloutSeries>,
    reconcile_duration: Histogram,
    /// Keyed by error kind (a fixed, small set).
    reconcile_errors: BTreeMap<&'static str, u64>,
    /// `None` until the leader elector (or its absence) has said.
    leader: Option<bool>,
}

#[derive(Debug, Clone)]
struct RolloutSeries {
    phase: Phase,
    weight_bp: u32,
    gates: Vec<GateResult>,
}

#[derive(Debug)]
struct Histogram {
    /// Per bucket of [`RECONCILE_DURATION_BUCKETS`]: observations at or below its bound.
    cumulative: [u64; RECONCILE_DURATION_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            cumulative: [0; RECONCILE_DURATION_BUCKETS.len()],
            count: 0,
            sum_seconds: 0.0,
        }
    }
}

impl Metrics {
    /// Records where a rollout stands, from the status just written.
    pub fn observe_rollout(&self, namespace: &str, name: &str, status: &CanaryRolloutStatus) {
        self.state().rollouts.insert(
            (namespace.to_owned(), name.to_owned()),
            RolloutSeries {
                phase: status.phase,
                weight_bp: status.weight_bp,
                gates: status.gates.clone(),
            },
        );
    }

    /// Drops the series of rollouts for which `keep(namespace, name)` is false (deleted ones).
    pub fn retain_rollouts(&self, keep: impl Fn(&str, &str) -> bool) {
        self.state()
            .rollouts
            .retain(|(namespace, name), _| keep(namespace, name));
    }

    /// Records one reconcile's duration (successful or not).
    pub fn observe_reconcile(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let mut state = self.state();
        let histogram = &mut state.reconcile_duration;
        for (bound, count) in RECONCILE_DURATION_BUCKETS
            .iter()
            .zip(histogram.cumulative.iter_mut())
        {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_seconds += seconds;
    }

    /// Counts a failed reconcile by its kind (a short fixed label, e.g. `target`).
    pub fn count_reconcile_error(&self, kind: &'static str) {
        *self.state().reconcile_errors.entry(kind).or_default() += 1;
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.state().leader = Some(leading);
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let state = self.state();
        let mut out = String::new();

        family(
            &mut out,
            "cohort_controller_rollout_phase",
            "gauge",
            "1 for the phase each CanaryRollout is in, 0 for the others.",
        );
        for ((namespace, name), rollout) in &state.rollouts {
            for phase in PHASES {
                let labels = [
                    ("namespace", namespace.as_str()),
                    ("rollout", name.as_str()),
                    ("phase", phase.as_str()),
                ];
                sample(
                    &mut out,
                    "cohort_controller_rollout_phase",
                    &labels,
                    one_hot(rollout.phase == phase),
                );
            }
        }

        family(
            &mut out,
            "cohort_controller_rollout_weight_bp",
            "gauge",
            "Canary weight each CanaryRollout has pushed to the filter, in basis points.",
        );
        for ((namespace, name), rollout) in &state.rollouts {
            let labels = [
                ("namespace", namespace.as_str()),
                ("rollout", name.as_str()),
            ];
            sample(
                &mut out,
                "cohort_controller_rollout_weight_bp",
                &labels,
                f64::from(rollout.weight_bp),
            );
        }

        family(
            &mut out,
            "cohort_controller_gate_value",
            "gauge",
            "Each gate's last canary and stable values and the bound canary was held to.",
        );
        for ((namespace, name), rollout) in &state.rollouts {
            for gate in &rollout.gates {
                let values = [
                    ("canary", gate.canary),
                    ("stable", gate.stable),
                    ("threshold", gate.threshold),
                ];
                for (series, value) in values {
                    if let Some(value) = value {
                        let labels = [
                            ("namespace", namespace.as_str()),
                            ("rollout", name.as_str()),
                            ("gate", gate.gate.as_str()),
                            ("series", series),
                        ];
                        sample(&mut out, "cohort_controller_gate_value", &labels, value);
                    }
                }
            }
        }

        family(
            &mut out,
            "cohort_controller_gate_samples",
            "gauge",
            "Requests each version had in each gate's last analysis window.",
        );
        for ((namespace, name), rollout) in &state.rollouts {
            for gate in &rollout.gates {
                let counts = [
                    ("canary", gate.canary_samples),
                    ("stable", gate.stable_samples),
                ];
                for (version, count) in counts {
                    let labels = [
                        ("namespace", namespace.as_str()),
                        ("rollout", name.as_str()),
                        ("gate", gate.gate.as_str()),
                        ("version", version),
                    ];
                    sample(&mut out, "cohort_controller_gate_samples", &labels, count);
                }
            }
        }

        family(
            &mut out,
            "cohort_controller_gate_verdict",
            "gauge",
            "1 for each gate's last verdict, 0 for the others.",
        );
        for ((namespace, name), rollout) in &state.rollouts {
            for gate in &rollout.gates {
                for verdict in VERDICTS {
                    let labels = [
                        ("namespace", namespace.as_str()),
                        ("rollout", name.as_str()),
                        ("gate", gate.gate.as_str()),
                        ("verdict", verdict.as_str()),
                    ];
                    sample(
                        &mut out,
                        "cohort_controller_gate_verdict",
                        &labels,
                        one_hot(gate.verdict == verdict),
                    );
                }
            }
        }

        let name = "cohort_controller_reconcile_duration_seconds";
        family(
            &mut out,
            name,
            "histogram",
            "Time each reconcile took, failed ones included.",
        );
        let histogram = &state.reconcile_duration;
        for (bound, count) in RECONCILE_DURATION_BUCKETS
            .iter()
            .zip(histogram.cumulative.iter())
        {
            let le = number(*bound);
            sample(
                &mut out,
                &format!("{name}_bucket"),
                &[("le", &le)],
                *count as f64,
            );
        }
        let count = histogram.count as f64;
        sample(
            &mut out,
            &format!("{name}_bucket"),
            &[("le", "+Inf")],
            count,
        );
        sample(&mut out, &format!("{name}_sum"), &[], histogram.sum_seconds);
        sample(&mut out, &format!("{name}_count"), &[], count);

        family(
            &mut out,
            "cohort_controller_reconcile_errors_total",
            "counter",
            "Reconciles that failed, by kind (target, status, metadata, kube).",
        );
        for (kind, count) in &state.reconcile_errors {
            sample(
                &mut out,
                "cohort_controller_reconcile_errors_total",
                &[("error", kind)],
                *count as f64,
            );
        }

        family(
            &mut out,
            "cohort_controller_leader",
            "gauge",
            "1 while this replica holds the leader Lease (or runs without leader election).",
        );
        if let Some(leading) = state.leader {
            sample(&mut out, "cohort_controller_leader", &[], one_hot(leading));
        }
        out
    }

    /// A poisoned lock still holds usable numbers: a panic elsewhere must not blind `/metrics`.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

/// Label values escape backslash, double quote and newline, and nothing else.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value as Prometheus reads it (`+Inf`, `-Inf`, `NaN`; Rust would write `inf`).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

fn one_hot(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(name: &str, verdict: Verdict) -> GateResult {
        GateResult {
            gate: name.into(),
            verdict,
            canary: Some(0.02),
            stable: Some(0.01),
            threshold: None,
            canary_samples: 150.0,
            stable_samples: 2000.0,
            reason: "why".into(),
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|line| !line.starts_with('#')).collect()
    }

    #[test]
    fn renders_phase_one_hot_weight_and_gates() {
        let metrics = Metrics::default();
        let status = CanaryRolloutStatus {
            phase: Phase::Progressing,
            weight_bp: 500,
            gates: vec![gate("error-rate", Verdict::Fail)],
            ..CanaryRolloutStatus::default()
        };
        metrics.observe_rollout("shop", "checkout", &status);
        let text = metrics.render();
        let samples = lines(&text);
        let phases: Vec<&str> = samples
            .iter()
            .copied()
            .filter(|line| line.starts_with("cohort_controller_rollout_phase{"))
            .collect();
        assert_eq!(
            phases,
            [
                r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Pending"} 0"#,
                r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Progressing"} 1"#,
                r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Paused"} 0"#,
                r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Promoted"} 0"#,
                r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="RolledBack"} 0"#,
                r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Aborted"} 0"#,
            ]
        );
        for expected in [
            r#"cohort_controller_rollout_weight_bp{namespace="shop",rollout="checkout"} 500"#,
            r#"cohort_controller_gate_value{namespace="shop",rollout="checkout",gate="error-rate",series="canary"} 0.02"#,
            r#"cohort_controller_gate_value{namespace="shop",rollout="checkout",gate="error-rate",series="stable"} 0.01"#,
            r#"cohort_controller_gate_samples{namespace="shop",rollout="checkout",gate="error-rate",version="canary"} 150"#,
            r#"cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Fail"} 1"#,
            r#"cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Pass"} 0"#,
        ] {
            assert!(samples.contains(&expected), "missing {expected}\n{text}");
        }
        // An absent threshold is no series, not a zero.
        assert!(!text.contains(r#"series="threshold""#));
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let text = Metrics::default().render();
        for family in [
            "cohort_controller_rollout_phase gauge",
            "cohort_controller_rollout_weight_bp gauge",
            "cohort_controller_gate_value gauge",
            "cohort_controller_gate_samples gauge",
            "cohort_controller_gate_verdict gauge",
            "cohort_controller_reconcile_duration_seconds histogram",
            "cohort_controller_reconcile_errors_total counter",
            "cohort_controller_leader gauge",
        ] {
            let type_line = format!("# TYPE {family}");
            assert_eq!(text.matches(&type_line).count(), 1, "{type_line}");
            let name = family.split(' ').next().unwrap();
            assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1);
        }
    }

    #[test]
    fn reconcile_histogram_is_cumulative() {
        let metrics = Metrics::default();
        for millis in [3, 40, 40, 2000, 60_000] {
            metrics.observe_reconcile(Duration::from_millis(millis));
        }
        let text = metrics.render();
        let samples = lines(&text);
        let name = "cohort_controller_reconcile_duration_seconds";
        for (le, count) in [
            ("0.005", 1),
            ("0.025", 1),
            ("0.05", 3),
            ("2.5", 4),
            ("10", 4),
            ("+Inf", 5),
        ] {
            let expected = format!("{name}_bucket{{le=\"{le}\"}} {count}");
            assert!(samples.contains(&expected.as_str()), "{expected}\n{text}");
        }
        assert!(samples.contains(&format!("{name}_count 5").as_str()));
        let sum: f64 = samples
            .iter()
            .find_map(|line| line.strip_prefix(&format!("{name}_sum ")))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 62.083).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn errors_leader_and_forgetting_rollouts() {
        let metrics = Metrics::default();
        let unknown = metrics.render();
        assert!(!lines(&unknown)
            .iter()
            .any(|line| line.starts_with("cohort_controller_leader")));
        metrics.set_leader(true);
        metrics.count_reconcile_error("target");
        metrics.count_reconcile_error("target");
        metrics.count_reconcile_error("status");
        metrics.observe_rollout("shop", "gone", &CanaryRolloutStatus::default());
        metrics.observe_rollout("shop", "kept", &CanaryRolloutStatus::default());
        metrics.retain_rollouts(|_, name| name == "kept");
        let text = metrics.render();
        let samples = lines(&text);
        for expected in [
            "cohort_controller_leader 1",
            r#"cohort_controller_reconcile_errors_total{error="status"} 1"#,
            r#"cohort_controller_reconcile_errors_total{error="target"} 2"#,
        ] {
            assert!(samples.contains(&expected), "missing {expected}\n{text}");
        }
        assert!(!text.contains(r#"rollout="gone""#));
        assert!(text.contains(r#"rollout="kept""#));
    }

    #[test]
    fn label_values_and_numbers_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("gate", "a\"b\\c\nd")], f64::INFINITY);
        assert_eq!(out, "m{gate=\"a\\\"b\\\\c\\nd\"} +Inf\n");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(0.25), "0.25");
    }
}
