//! Fault drill: Prometheus down, slow, or answering garbage, through the real
//! [`PrometheusSource`] (a fake HTTP server plays Prometheus), [`evaluate`] and [`plan`]: the
//! samples read as failed, the gates say Error (never Pass), the rollout holds its weight and
//! never promotes, and after `maxConsecutiveErrors` in a row `onErrors` applies (hold, or roll
//! back when asked).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::source::series::tests::{request, shop};
use cohort_rollout::crd::{
    CanaryRolloutSpec, CanaryRolloutStatus, ErrorRateGate, GateSpec, OnTrouble, Phase, Step,
    Verdict,
};
use cohort_rollout::evaluate::{evaluate, Observed};
use cohort_rollout::plan::{plan, PlanInput};
use cohort_rollout::validate::tests::minimal_spec;

/// How the fake Prometheus answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Nothing listens.
    Down,
    /// Accepts, then answers after the source's timeout.
    Slow,
    /// Answers this status and body to every query.
    Answer(u16, &'static str),
}

const GARBAGE: &[(u16, &str)] = &[
    (200, "<html>not prometheus</html>"),
    (200, r#"{"status": "success", "data": {"resultType": "vec"#),
    (
        200,
        r#"{"status": "success", "data": {"resultType": "matrix", "result": []}}"#,
    ),
    (
        200,
        r#"{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {"envoy_cluster_name": "shop-web-canary"}, "value": [1, "NaN"]}, {"metric": {"envoy_cluster_name": "shop-web-stable"}, "value": [1, "NaN"]}]}}"#,
    ),
    (
        200,
        r#"{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {"envoy_cluster_name": "shop-web-canary"}, "value": [1, "+Inf"]}, {"metric": {"envoy_cluster_name": "shop-web-stable"}, "value": [1, "-Inf"]}]}}"#,
    ),
    (
        200,
        r#"{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {"envoy_cluster_name": "shop-web-canary"}, "value": [1, "-5"]}, {"metric": {"envoy_cluster_name": "shop-web-stable"}, "value": [1, "-7"]}]}}"#,
    ),
    (
        400,
        r#"{"status": "error", "errorType": "bad_data", "error": "parse error"}"#,
    ),
    (500, "internal error"),
    (
        503,
        r#"{"status": "error", "errorType": "unavailable", "error": "too many queries"}"#,
    ),
];

/// A fake Prometheus on 127.0.0.1; returns its URL.
async fn fake_prometheus(mode: Mode) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    if matches!(mode, Mode::Down) {
        return url; // dropped: nothing listens on the port any more
    }
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 * 1024];
                let _ = stream.read(&mut buffer).await;
                let (status, body) = match mode {
                    Mode::Slow => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        (
                            200,
                            r#"{"status": "success", "data": {"resultType": "vector", "result": []}}"#,
                        )
                    }
                    Mode::Answer(status, body) => (status, body),
                    Mode::Down => unreachable!(),
                };
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_secs(seconds)
}

fn spec(on_errors: OnTrouble) -> CanaryRolloutSpec {
    let mut spec = minimal_spec();
    spec.steps = vec![
        Step::new(5.0, "1m"),
        Step::new(25.0, "1m"),
        Step::new(100.0, "1m"),
    ];
    spec.analysis.gates = vec![GateSpec::new(GateCheck::ErrorRate(ErrorRateGate {
        max_increase: 0.01,
        max_rate: None,
    }))];
    spec.failure_policy.on_errors = on_errors;
    spec
}

#[tokio::test]
async fn prometheus_down_slow_or_garbage_holds_and_never_promotes() {
    let mut modes = vec![Mode::Down, Mode::Slow];
    modes.extend(
        GARBAGE
            .iter()
            .map(|&(status, body)| Mode::Answer(status, body)),
    );
    for mode in modes {
        let url = fake_prometheus(mode).await;
        let source = PrometheusSource::new(&url, Duration::from_millis(300)).unwrap();
        let rollouts = [request("web", Vec::new())];
        let started = std::time::Instant::now();
        let samples = source
            .samples(Duration::from_secs(30), &rollouts)
            .await
            .remove(&shop("web"))
            .unwrap_or_default();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: the timeout did not act"
        );
        for version in [&samples.canary, &samples.stable] {
            for observed in [&version.requests, &version.server_errors] {
                assert!(
                    !matches!(observed, Observed::Value(v) if v.is_finite() && *v >= 0.0),
                    "{mode:?} read as a usable number: {observed:?}"
                );
            }
        }

        for on_errors in [OnTrouble::Hold, OnTrouble::Rollback] {
            let spec = spec(on_errors);
            // Baked at 5% for an hour: with a passing gate it would advance at once.
            let mut status = CanaryRolloutStatus {
                phase: Phase::Progressing,
                step_index: Some(0),
                weight_bp: 500,
                step_started_at: Some(Time(t(-3600))),
                ..CanaryRolloutStatus::default()
            };
            for cycle in 1..=6u32 {
                let evaluation =
                    evaluate(&spec.analysis.gates, spec.analysis.min_samples, &samples);
                assert_ne!(evaluation.verdict, Verdict::Pass, "{mode:?}");
                let input = PlanInput {
                    rollout: "web".into(),
                    generation: Some(1),
                    evaluation: Some(evaluation.clone()),
                    routing: None,
                };
                let planned = plan(&spec, Some(&status), &input, t(i64::from(cycle) * 30));
                let weight = planned.weight_bp;
                assert!(
                    weight == 500 || (weight == 0 && planned.status.phase == Phase::RolledBack),
                    "{mode:?} {on_errors:?} cycle {cycle}: weight {weight}, {:?}",
                    planned.status.phase
                );
                assert_ne!(planned.status.phase, Phase::Promoted);
                if evaluation.verdict == Verdict::Error {
                    let limit = spec.failure_policy.max_consecutive_errors;
                    let rolled_back = planned.status.phase == Phase::RolledBack;
                    // Held until the errors in a row pass the limit; then the policy decides.
                    assert_eq!(
                        rolled_back,
                        on_errors == OnTrouble::Rollback && cycle > limit,
                        "{mode:?} {on_errors:?} cycle {cycle}: {:?}",
                        planned.status
                    );
                }
                status = planned.status;
            }
        }
    }
}
