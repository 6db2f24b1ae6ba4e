//! The controller's own metrics, served on `/metrics` in the Prometheus text format (version
//! 0.0.4) by the official client, `prometheus-client`: where each rollout stands (phase, weight,
//! gate values and verdicts), how long reconciles take, how often they fail, whether this
//! replica leads, and how its webhook notifications ended.
//!
//! Names start with `cohort_controller_` so they never mix with the filter's `cohort_*` series,
//! which Prometheus scrapes from Envoy. The Grafana dashboard, the Prometheus manifests and the
//! tests read these names; `exposition_of_a_known_state_is_pinned` holds them still.
//!
//! What happens (reconcile durations, failures) is counted by the client's live metrics. Where
//! rollouts stand is a snapshot of the statuses just written: a [`Collector`] renders it at each
//! scrape, so a deleted rollout or a dropped gate leaves no stale series behind.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use cohort_rollout::crd::{CanaryRolloutStatus, GateResult, Phase, Verdict};

/// `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the reconcile duration histogram: a reconcile is a metrics query
/// plus two or three API calls, so tens of milliseconds to a few seconds.
pub const RECONCILE_DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const PHASES: [Phase; 7] = [
    Phase::Pending,
    Phase::Progressing,
    Phase::Paused,
    Phase::Promoted,
    Phase::RolledBack,
    Phase::Aborted,
    Phase::Succeeded,
];
const VERDICTS: [Verdict; 5] = [
    Verdict::Pass,
    Verdict::Fail,
    Verdict::Inconclusive,
    Verdict::Error,
    Verdict::Underpowered,
];

/// The controller's metrics; shared by the reconciler, the leader elector and the HTTP server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    standing: Arc<Standing>,
    reconcile_duration: Histogram,
    reconcile_errors: Family<ErrorLabels, Counter>,
    notifications: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Where every rollout stands, and whether this replica leads.
#[derive(Debug, Default)]
struct Standing {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by (namespace, name): the scrape lists rollouts in this order.
    rollouts: BTreeMap<(String, String), RolloutSeries>,
    /// `None` until the leader elector (or its absence) has said.
    leader: Option<bool>,
}

#[derive(Debug, Clone)]
struct RolloutSeries {
    phase: Phase,
    weight_bp: u32,
    gates: Vec<GateResult>,
}

impl Default for Metrics {
    fn default() -> Self {
        // Registered names leave out the prefix, the unit and a counter's `_total`, and help
        // texts their final period: the client adds each of them back.
        let mut registry = Registry::with_prefix("cohort_controller");
        let reconcile_duration = Histogram::new(RECONCILE_DURATION_BUCKETS);
        registry.register_with_unit(
            "reconcile_duration",
            "Time each reconcile took, failed ones included",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind (target, status, metadata, kube)",
            reconcile_errors.clone(),
        );
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "notifications",
            "Webhook notifications by outcome (sent, failed after its retries, dropped on a full queue)",
            notifications.clone(),
        );
        let standing = Arc::new(Standing::default());
        registry.register_collector(Box::new(standing.clone()));
        Metrics {
            registry,
            standing,
            reconcile_duration,
            reconcile_errors,
            notifications,
        }
    }
}

impl Metrics {
    /// Records where a rollout stands, from the status just written.
    pub fn observe_rollout(&self, namespace: &str, name: &str, status: &CanaryRolloutStatus) {
        self.standing.state().rollouts.insert(
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
        self.standing
            .state()
            .rollouts
            .retain(|(namespace, name), _| keep(namespace, name));
    }

    /// Records one reconcile's duration (successful or not).
    pub fn observe_reconcile(&self, duration: Duration) {
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// Counts a failed reconcile by its kind (a short fixed label, e.g. `target`).
    pub fn count_reconcile_error(&self, kind: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { error: kind })
            .inc();
    }

    /// Counts `count` webhook notifications that ended with `outcome` (`sent`, `failed`,
    /// `dropped`).
    pub fn count_notifications(&self, outcome: &'static str, count: usize) {
        self.notifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.standing.state().leader = Some(leading);
    }

    /// Everything, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail, and neither can `Standing::encode` but through it.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl Standing {
    /// A poisoned lock still holds usable numbers: a panic elsewhere must not blind `/metrics`.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for Standing {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let state = self.state();
        let rollouts = || {
            state
                .rollouts
                .iter()
                .map(|((namespace, name), rollout)| (namespace.as_str(), name.as_str(), rollout))
        };
        let gates = || {
            rollouts().flat_map(|(namespace, name, rollout)| {
                rollout
                    .gates
                    .iter()
                    .map(move |gate| (namespace, name, gate))
            })
        };

        let mut family = encoder.encode_descriptor(
            "rollout_phase",
            "1 for the phase each CanaryRollout is in, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, rollout) in rollouts() {
            for phase in PHASES {
                let labels = [
                    ("namespace", namespace),
                    ("rollout", name),
                    ("phase", phase.as_str()),
                ];
                let on = i64::from(rollout.phase == phase);
                ConstGauge::new(on).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "rollout_weight_bp",
            "Canary weight each CanaryRollout has pushed to the filter, in basis points.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, rollout) in rollouts() {
            let labels = [("namespace", namespace), ("rollout", name)];
            ConstGauge::new(rollout.weight_bp).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "gate_value",
            "Each gate's last canary and stable values and the bound canary was held to.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, gate) in gates() {
            let values = [
                ("canary", gate.canary),
                ("stable", gate.stable),
                ("threshold", gate.threshold),
            ];
            // An absent value (no threshold, say) is no series, not a zero.
            for (series, value) in values {
                if let Some(value) = value {
                    let labels = [
                        ("namespace", namespace),
                        ("rollout", name),
                        ("gate", gate.gate.as_str()),
                        ("series", series),
                    ];
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "gate_samples",
            "Requests each version had in each gate's last analysis window.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, gate) in gates() {
            let counts = [
                ("canary", gate.canary_samples),
                ("stable", gate.stable_samples),
            ];
            for (version, count) in counts {
                let labels = [
                    ("namespace", namespace),
                    ("rollout", name),
                    ("gate", gate.gate.as_str()),
                    ("version", version),
                ];
                ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "gate_verdict",
            "1 for each gate's last verdict, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, name, gate) in gates() {
            for verdict in VERDICTS {
                let labels = [
                    ("namespace", namespace),
                    ("rollout", name),
                    ("gate", gate.gate.as_str()),
                    ("verdict", verdict.as_str()),
                ];
                let on = i64::from(gate.verdict == verdict);
                ConstGauge::new(on).encode(family.encode_family(&labels)?)?;
            }
        }

        let family = encoder.encode_descriptor(
            "leader",
            "1 while this replica holds the leader Lease (or runs without leader election).",
            None,
            MetricType::Gauge,
        )?;
        if let Some(leading) = state.leader {
            ConstGauge::new(i64::from(leading)).encode(family)?;
        }
        Ok(())
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
            sequential: None,
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
                r#"cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Succeeded"} 0"#,
            ]
        );
        for expected in [
            r#"cohort_controller_rollout_weight_bp{namespace="shop",rollout="checkout"} 500"#,
            r#"cohort_controller_gate_value{namespace="shop",rollout="checkout",gate="error-rate",series="canary"} 0.02"#,
            r#"cohort_controller_gate_value{namespace="shop",rollout="checkout",gate="error-rate",series="stable"} 0.01"#,
            r#"cohort_controller_gate_samples{namespace="shop",rollout="checkout",gate="error-rate",version="canary"} 150.0"#,
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
        let metrics = Metrics::default();
        // The client declares a labelled counter once it has a series (as client_golang does);
        // every other family is declared from the start.
        metrics.count_reconcile_error("target");
        metrics.count_notifications("sent", 2);
        let text = metrics.render();
        for family in [
            "cohort_controller_rollout_phase gauge",
            "cohort_controller_rollout_weight_bp gauge",
            "cohort_controller_gate_value gauge",
            "cohort_controller_gate_samples gauge",
            "cohort_controller_gate_verdict gauge",
            "cohort_controller_reconcile_duration_seconds histogram",
            "cohort_controller_reconcile_errors_total counter",
            "cohort_controller_notifications_total counter",
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
        let metrics = Metrics::default();
        let odd = GateResult {
            canary: Some(f64::INFINITY),
            stable: Some(f64::NEG_INFINITY),
            threshold: Some(f64::NAN),
            canary_samples: 0.25,
            ..gate("a\"b\\c\nd", Verdict::Pass)
        };
        let status = CanaryRolloutStatus {
            gates: vec![odd],
            ..CanaryRolloutStatus::default()
        };
        metrics.observe_rollout("shop", "checkout", &status);
        let text = metrics.render();
        let samples = lines(&text);
        let labels = r#"namespace="shop",rollout="checkout",gate="a\"b\\c\nd""#;
        for expected in [
            format!(r#"cohort_controller_gate_value{{{labels},series="canary"}} +Inf"#),
            format!(r#"cohort_controller_gate_value{{{labels},series="stable"}} -Inf"#),
            format!(r#"cohort_controller_gate_value{{{labels},series="threshold"}} NaN"#),
            format!(r#"cohort_controller_gate_samples{{{labels},version="canary"}} 0.25"#),
        ] {
            assert!(
                samples.contains(&expected.as_str()),
                "missing {expected}\n{text}"
            );
        }
    }

    /// The whole page for one known state: every name, type, help text, label set and bucket
    /// bound that the dashboard, the Prometheus manifests and the tests read.
    #[test]
    fn exposition_of_a_known_state_is_pinned() {
        let metrics = Metrics::default();
        let status = CanaryRolloutStatus {
            phase: Phase::Paused,
            weight_bp: 2500,
            gates: vec![GateResult {
                threshold: Some(0.05),
                ..gate("error-rate", Verdict::Inconclusive)
            }],
            ..CanaryRolloutStatus::default()
        };
        metrics.observe_rollout("shop", "checkout", &status);
        metrics.observe_reconcile(Duration::from_millis(30));
        metrics.count_reconcile_error("kube");
        metrics.set_leader(false);
        assert_eq!(metrics.render(), PINNED);
    }

    const PINNED: &str = r#"# HELP cohort_controller_reconcile_duration_seconds Time each reconcile took, failed ones included.
# TYPE cohort_controller_reconcile_duration_seconds histogram
cohort_controller_reconcile_duration_seconds_bucket{le="0.005"} 0
cohort_controller_reconcile_duration_seconds_bucket{le="0.01"} 0
cohort_controller_reconcile_duration_seconds_bucket{le="0.025"} 0
cohort_controller_reconcile_duration_seconds_bucket{le="0.05"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="0.1"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="0.25"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="0.5"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="1"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="2.5"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="5"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="10"} 1
cohort_controller_reconcile_duration_seconds_bucket{le="+Inf"} 1
cohort_controller_reconcile_duration_seconds_sum 0.03
cohort_controller_reconcile_duration_seconds_count 1
# HELP cohort_controller_reconcile_errors_total Reconciles that failed, by kind (target, status, metadata, kube).
# TYPE cohort_controller_reconcile_errors_total counter
cohort_controller_reconcile_errors_total{error="kube"} 1
# HELP cohort_controller_rollout_phase 1 for the phase each CanaryRollout is in, 0 for the others.
# TYPE cohort_controller_rollout_phase gauge
cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Pending"} 0
cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Progressing"} 0
cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Paused"} 1
cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Promoted"} 0
cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="RolledBack"} 0
cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Aborted"} 0
cohort_controller_rollout_phase{namespace="shop",rollout="checkout",phase="Succeeded"} 0
# HELP cohort_controller_rollout_weight_bp Canary weight each CanaryRollout has pushed to the filter, in basis points.
# TYPE cohort_controller_rollout_weight_bp gauge
cohort_controller_rollout_weight_bp{namespace="shop",rollout="checkout"} 2500
# HELP cohort_controller_gate_value Each gate's last canary and stable values and the bound canary was held to.
# TYPE cohort_controller_gate_value gauge
cohort_controller_gate_value{namespace="shop",rollout="checkout",gate="error-rate",series="canary"} 0.02
cohort_controller_gate_value{namespace="shop",rollout="checkout",gate="error-rate",series="stable"} 0.01
cohort_controller_gate_value{namespace="shop",rollout="checkout",gate="error-rate",series="threshold"} 0.05
# HELP cohort_controller_gate_samples Requests each version had in each gate's last analysis window.
# TYPE cohort_controller_gate_samples gauge
cohort_controller_gate_samples{namespace="shop",rollout="checkout",gate="error-rate",version="canary"} 150.0
cohort_controller_gate_samples{namespace="shop",rollout="checkout",gate="error-rate",version="stable"} 2000.0
# HELP cohort_controller_gate_verdict 1 for each gate's last verdict, 0 for the others.
# TYPE cohort_controller_gate_verdict gauge
cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Pass"} 0
cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Fail"} 0
cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Inconclusive"} 1
cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Error"} 0
cohort_controller_gate_verdict{namespace="shop",rollout="checkout",gate="error-rate",verdict="Underpowered"} 0
# HELP cohort_controller_leader 1 while this replica holds the leader Lease (or runs without leader election).
# TYPE cohort_controller_leader gauge
cohort_controller_leader 0
"#;
}
