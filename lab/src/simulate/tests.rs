use super::*;
use cohort_rollout::crd::{SequentialGate, SequentialMetric};

mod conditions;
mod rollout;
mod tuned;

/// The old first-Pass family's gate pair (sequential error rate and p99 latency, α = 0.005
/// each, so the pair fails a healthy canary in at most 1% of tests), as a whole rollout with
/// the default steps: five analysed steps, each a fresh test, fail a healthy canary in at most
/// 5% of rollouts.
const PAIR_ALPHA_PER_GATE: f64 = 0.005;

fn sequential_pair_rollout() -> Rollout {
    let mut spec = Rollout::default_spec();
    // Each gate at PAIR_ALPHA_PER_GATE in each of the five analysed steps: a budget of 5%.
    spec.analysis.alpha = 5.0 * 2.0 * PAIR_ALPHA_PER_GATE;
    spec.analysis.gates = [SequentialMetric::ErrorRate, SequentialMetric::Latency]
        .into_iter()
        .map(|metric| {
            GateSpec::new(GateCheck::Sequential(SequentialGate {
                alpha: Some(PAIR_ALPHA_PER_GATE),
                ..SequentialGate::new(metric)
            }))
        })
        .collect();
    Rollout::new("pair", spec).unwrap()
}

#[test]
fn scenario_names_parse() {
    let aa = Scenario::parse("aa-5pct-100rps").unwrap();
    assert_eq!(
        (aa.rps, aa.canary_weight, aa.error_factor, aa.latency_factor),
        (100.0, 0.05, 1.0, 1.0)
    );
    assert!(aa.is_aa());
    let errors = Scenario::parse("errors-2x-1pct-10rps").unwrap();
    assert_eq!(
        (errors.rps, errors.canary_weight, errors.error_factor),
        (10.0, 0.01, 2.0)
    );
    assert!(!errors.is_aa());
    let late = Scenario::parse("latency-1.5x-0.5pct-1000rps-at120s").unwrap();
    assert_eq!(
        (
            late.latency_factor,
            late.canary_weight,
            late.regression_start_s
        ),
        (1.5, 0.005, Some(120))
    );
    // Without a suffix the canary turns bad when it first serves the weight; -fromstart and
    // -at0s both make it bad from the start.
    assert_eq!(errors.regression_start_s, None);
    assert!(errors.serves_weight(100) && !errors.serves_weight(99));
    assert!(Scenario::parse("errors-2x-5pct-100rps")
        .unwrap()
        .serves_weight(500));
    for name in [
        "errors-5x-5pct-100rps-fromstart",
        "errors-5x-5pct-100rps-at0s",
    ] {
        assert_eq!(Scenario::parse(name).unwrap().regression_start_s, Some(0));
    }
    for name in DEFAULT_SCENARIOS {
        assert_eq!(Scenario::parse(name).unwrap().name, name);
    }
    for bad in [
        "",
        "bb-5pct-100rps",
        "errors-5pct-100rps",
        "errors-0x-5pct-100rps",
        "aa-100pct-10rps",
        "aa-5pct",
        "aa-5pct-100rps-120s",
        "aa-5pct-100rps-at2m",
        "aa-5pct-100rps-at1s-x",
        "aa-5pct-100rps-fromstart-at1s",
        "aa-5pct-100rps-from",
    ] {
        let error = Scenario::parse(bad).unwrap_err();
        assert!(error.contains("write e.g."), "{bad}: {error}");
    }
}

/// Mean and variance of `count` draws.
fn moments(count: u32, mut draw: impl FnMut() -> u64) -> (f64, f64) {
    let values: Vec<f64> = (0..count).map(|_| draw() as f64).collect();
    let mean = values.iter().sum::<f64>() / f64::from(count);
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / f64::from(count - 1);
    (mean, variance)
}

#[test]
fn poisson_and_binomial_draws_have_the_right_moments() {
    let mut rng = Rng::new(7);
    // Both samplers: inversion below 30, PTRS above.
    for mean in [0.02, 0.7, 12.0, 29.0, 31.0, 150.0, 2850.0] {
        let (m, v) = moments(20_000, || rng.poisson(mean));
        // Four standard errors of the mean; the variance to within 6%.
        let se = (mean / 20_000.0).sqrt();
        assert!((m - mean).abs() < 4.0 * se, "poisson({mean}) mean {m}");
        assert!(
            (v / mean - 1.0).abs() < 0.06,
            "poisson({mean}) variance {v}"
        );
    }
    assert_eq!(rng.poisson(0.0), 0);
    assert_eq!(rng.poisson(f64::NAN), 0);
    for (trials, p) in [(300, 0.005), (3000, 0.025), (2000, 0.5), (50, 0.9)] {
        let (m, v) = moments(20_000, || rng.binomial(trials, p));
        let mean = trials as f64 * p;
        let variance = mean * (1.0 - p);
        let se = (variance / 20_000.0).sqrt();
        assert!(
            (m - mean).abs() < 4.0 * se,
            "binomial({trials}, {p}) mean {m}"
        );
        assert!(
            (v / variance - 1.0).abs() < 0.06,
            "binomial({trials}, {p}) variance {v}"
        );
    }
    assert_eq!(rng.binomial(10, 0.0), 0);
    assert_eq!(rng.binomial(10, 1.0), 10);
    assert_eq!(rng.binomial(0, 0.5), 0);
}

#[test]
fn the_generator_is_xoshiro256_starstar() {
    // The reference implementation's first outputs from the state {1, 2, 3, 4}.
    let mut rng = Rng {
        state: [1, 2, 3, 4],
    };
    let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
    assert_eq!(first, vec![11_520, 0, 1_509_978_240]);
    // Seeds give independent, reproducible streams.
    let a: Vec<u64> = (0..4)
        .map({
            let mut rng = Rng::new(1);
            move |_| rng.next_u64()
        })
        .collect();
    let b: Vec<u64> = (0..4)
        .map({
            let mut rng = Rng::new(1);
            move |_| rng.next_u64()
        })
        .collect();
    assert_eq!(a, b);
    assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    assert_ne!(stream_seed(1, 0, 1), stream_seed(1, 1, 0));
}

#[test]
fn normal_cdf_and_latency_buckets() {
    for (x, expected) in [
        (0.0, 0.5),
        (1.959_963_985, 0.975),
        (-1.959_963_985, 0.025),
        (2.326_347_874, 0.99),
        (-3.0, 0.001_349_898),
    ] {
        assert!(
            (normal_cdf(x) - expected).abs() < 2e-7,
            "Φ({x}) = {}",
            normal_cdf(x)
        );
    }
    // ln Γ(k + 1) against exact factorials on both sides of the switch to Stirling.
    for k in [9u32, 10, 15, 20] {
        let exact: f64 = (1..=k).map(f64::from).map(f64::ln).sum();
        assert!((ln_factorial(f64::from(k)) - exact).abs() < 1e-9, "{k}!");
    }
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    assert!((buckets.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // The median sits at 60 ms: half the mass at or below 50 ms would be wrong, 60 is inside
    // (50, 100]; p99 ≈ 240 ms lies inside (100, 250].
    let below = |le: f64| -> f64 {
        ENVOY_BUCKETS_MS
            .iter()
            .zip(&buckets)
            .filter(|(bound, _)| **bound <= le)
            .map(|(_, p)| p)
            .sum()
    };
    assert!(below(50.0) < 0.5 && below(100.0) > 0.5);
    assert!(below(100.0) < 0.99 && below(250.0) > 0.99);
}

#[test]
fn kayenta_classification() {
    let baseline = [
        0.0050, 0.0048, 0.0052, 0.0049, 0.0051, 0.0050, 0.0047, 0.0053, 0.0050, 0.0049,
    ];
    let shifted: Vec<f64> = baseline.iter().map(|v| v * 3.0).collect();
    assert!(kayenta_high(&shifted, &baseline));
    assert!(!kayenta_high(&baseline, &shifted), "lower is not High");
    assert!(!kayenta_high(&baseline, &baseline));
    assert!(!kayenta_high(&[], &baseline));
    assert!(!kayenta_high(&[0.0; 10], &[0.0; 10]));
    // Sparse canary minutes (mostly zero errors) against a steady stable: not High, although
    // the canary's mean is higher. The fixed-horizon rank test cannot see it.
    let sparse = [0.0, 0.0, 0.0333, 0.0, 0.0, 0.0, 0.0333, 0.0, 0.0, 0.0];
    assert!(!kayenta_high(&sparse, &baseline));
}

#[test]
fn quantiles_are_nearest_rank() {
    let sorted = [30, 60, 60, 90, 120, 150, 180, 210, 240, 600];
    assert_eq!(quantile(&sorted, 0.5), Some(120.0));
    assert_eq!(quantile(&sorted, 0.9), Some(240.0));
    assert_eq!(quantile(&sorted, 1.0), Some(600.0));
    assert_eq!(quantile(&sorted[..1], 0.9), Some(30.0));
    assert_eq!(quantile(&[], 0.5), None);
}

/// How soon the pair's rollout catches a 10× error rate at its first step (median, seconds):
/// nine analysis intervals. Its counts by unit are spread thin over sixteen units there, and
/// the first looks' spread between them is noisy (210 s measured with seed 42).
const DETECT_10X_AT_1PCT_S: f64 = 270.0;

#[test]
fn a_small_simulation_is_sane_and_reproducible() {
    // Small enough for a debug build: two scenarios, 120 runs each.
    let runs = 120;
    let scenarios: Vec<Scenario> = ["aa-5pct-100rps", "errors-10x-5pct-100rps-fromstart"]
        .iter()
        .map(|name| Scenario::parse(name).unwrap())
        .collect();
    let settings = Settings {
        runs,
        seed: 42,
        threads: 2,
        tune_false_rollbacks: 0.01,
        tune_runs: 400,
        units: DEFAULT_UNITS,
    };
    let conditions = [Conditions::independent()];
    let rollout = sequential_pair_rollout();
    let mut calls = 0;
    let rows = simulate(
        &scenarios,
        &conditions,
        &rollout,
        settings,
        |done, total| {
            calls += 1;
            assert!(done <= total && total == 240);
        },
    );
    assert!(calls >= 1);
    let json = serde_json::to_value(&rows).unwrap();
    let objects = json.as_array().unwrap();
    assert_eq!(objects.len(), 8);
    for object in objects {
        let mut keys: Vec<&str> = object
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            vec![
                "condition",
                "detection_rate",
                "false_rollback_rate",
                "gate",
                "median_detect_s",
                "median_promote_s",
                "p90_detect_s",
                "rolled_back_by",
                "scenario",
                "tuned",
                "undecided_rate"
            ]
        );
    }
    let row = |scenario: &str, gate: &str| {
        rows.iter()
            .find(|row| row.scenario == scenario && row.gate == gate)
            .unwrap()
    };
    assert!(rows.iter().all(|row| row.condition == "independent"));
    // A/A: the pair at α = 0.005 each fails at most 1% of healthy canaries per step, so at most
    // 5% over the five analysed steps; allow three binomial standard errors at this run count.
    let alpha = 5.0 * 2.0 * PAIR_ALPHA_PER_GATE;
    let se = (alpha * (1.0 - alpha) / f64::from(runs)).sqrt();
    let aa = row("aa-5pct-100rps", "rollout");
    assert!(
        aa.false_rollback_rate.unwrap() <= alpha + 3.0 * se,
        "{aa:?}"
    );
    assert!(aa.detection_rate.is_none());
    // Promotion comes no sooner than the bakes of the steps before 100%.
    assert!(
        aa.median_promote_s.unwrap() >= rollout.total_bake_s() as f64,
        "{aa:?}"
    );
    let rolled_back: f64 = aa.rolled_back_by.values().sum();
    assert!((rolled_back - aa.false_rollback_rate.unwrap()).abs() < 1e-12);
    // A 10× regression: every family catches it; the rollout at its first step (1% of
    // 100 rps: one canary request a second), within a few analysis intervals.
    let bad = row("errors-10x-5pct-100rps-fromstart", "rollout");
    assert_eq!(bad.detection_rate, Some(1.0), "{bad:?}");
    assert!(
        bad.median_detect_s.unwrap() <= DETECT_10X_AT_1PCT_S,
        "{bad:?}"
    );
    assert!(bad.false_rollback_rate.is_none() && bad.median_promote_s.is_none());
    assert!(bad.rolled_back_by.contains_key("error-rate"), "{bad:?}");
    // Every run ends one way: rolled back, promoted or undecided.
    for row in &rows {
        let rolled_back =
            row.false_rollback_rate.unwrap_or(0.0) + row.detection_rate.unwrap_or(0.0);
        assert!(rolled_back + row.undecided_rate <= 1.0 + 1e-12, "{row:?}");
    }
    assert_eq!(bad.undecided_rate, 0.0);
    assert!(row("errors-10x-5pct-100rps-fromstart", "threshold")
        .rolled_back_by
        .is_empty());
    // Only threshold-tuned says its bounds, the same for both scenarios (same traffic and
    // condition), and a 10× error rate is far above them.
    for row in &rows {
        assert_eq!(
            row.tuned.is_some(),
            row.gate == "threshold-tuned",
            "{row:?}"
        );
    }
    let tuned = row("aa-5pct-100rps", "threshold-tuned").tuned.unwrap();
    assert_eq!(
        row("errors-10x-5pct-100rps-fromstart", "threshold-tuned").tuned,
        Some(tuned)
    );
    assert!(tuned.calibration_false_rollback_rate <= 0.01, "{tuned:?}");
    assert_eq!(tuned.calibration_runs, 400);
    assert!(tuned.max_error_rate < 0.05, "{tuned:?}");
    assert_eq!(
        row("errors-10x-5pct-100rps-fromstart", "threshold-tuned").detection_rate,
        Some(1.0)
    );
    assert_eq!(
        row("errors-10x-5pct-100rps-fromstart", "threshold").detection_rate,
        Some(1.0)
    );
    // The same seed gives the same rows, whatever the thread count.
    let again = simulate(
        &scenarios,
        &conditions,
        &rollout,
        Settings {
            threads: 1,
            ..settings
        },
        |_, _| {},
    );
    assert_eq!(again, rows);
}

#[test]
fn table_and_progress_rendering() {
    let rows = vec![
        Row {
            scenario: "aa-5pct-100rps".into(),
            condition: "retry-clusters:3".into(),
            gate: "rollout".into(),
            false_rollback_rate: Some(0.003),
            detection_rate: None,
            median_detect_s: None,
            p90_detect_s: None,
            median_promote_s: Some(1500.0),
            undecided_rate: 0.0105,
            rolled_back_by: [
                ("error-rate".to_owned(), 0.001),
                ("latency-p99".to_owned(), 0.002),
            ]
            .into_iter()
            .collect(),
            tuned: None,
        },
        Row {
            scenario: "errors-5x-5pct-100rps".into(),
            condition: "independent".into(),
            gate: "mann-whitney".into(),
            false_rollback_rate: None,
            detection_rate: Some(0.9835),
            median_detect_s: Some(600.0),
            p90_detect_s: Some(600.0),
            median_promote_s: None,
            undecided_rate: 0.0,
            rolled_back_by: BTreeMap::new(),
            tuned: None,
        },
    ];
    let expected = "\
scenario               condition         gate          false rollback  detected  median detect  p90 detect  median promote  undecided  rolled back by
aa-5pct-100rps         retry-clusters:3  rollout                0.30%         -              -           -           1500s      1.05%  latency-p99 0.20%, error-rate 0.10%
errors-5x-5pct-100rps  independent       mann-whitney               -    98.35%           600s        600s               -      0.00%  -
";
    assert_eq!(table(&rows), expected);
    // With a threshold-tuned row, a last column says its bounds; the other rows a dash.
    let mut with_tuned = rows.clone();
    with_tuned.push(Row {
        gate: "threshold-tuned".into(),
        tuned: Some(Tuned {
            max_error_rate: 0.0133,
            max_p99_ms: 342.4,
            target: 0.01,
            calibration_false_rollback_rate: 0.0095,
            calibration_runs: 4000,
        }),
        ..rows[1].clone()
    });
    let table = table(&with_tuned);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].ends_with("rolled back by                       tuned"),
        "{table}"
    );
    assert!(lines[1].ends_with("  -"), "{table}");
    assert!(
        lines[3].ends_with(
            "  -                                    5xx ≤ 1.33%, p99 ≤ 342 ms (A/A 0.95% of 4000)"
        ),
        "{table}"
    );
    assert_eq!(
        progress_line(6, 12, Duration::from_secs(21)),
        "simulating [###############---------------]  50% 6/12 runs 21s"
    );
    assert_eq!(
        progress_line(0, 0, Duration::ZERO),
        "simulating [------------------------------]   0% 0/1 runs 0s"
    );
}
