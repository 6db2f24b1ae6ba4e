//! `threshold-tuned`: the calibration judges as `evaluate` does and meets its target on runs it
//! was not tuned on; and the command's entry point, briefly, as CI runs it.

use clap::Parser;

use super::*;

/// The Flagger inputs of `minutes` checks of `runs` runs of `scenario` under `condition`.
fn minutes(scenario: &str, condition: &str, runs: u64, minutes: usize) -> Vec<Samples> {
    let scenario = Scenario::parse(scenario).unwrap();
    let conditions = Conditions::parse(condition).unwrap();
    let model = Model::new(&scenario, &conditions);
    let mut all = Vec::new();
    for seed in 0..runs {
        let mut rng = Rng::new(seed);
        let mut seen = 0;
        model.each_minute(&mut rng, |_, samples| {
            all.push(samples.clone());
            seen += 1;
            seen < minutes
        });
    }
    all
}

#[test]
fn checks_judge_as_evaluate_does() {
    // Thin traffic (some minutes without a canary request) and extrapolated windows
    // (fractional counts), judged under bounds that include the values seen themselves.
    let mut samples = minutes("aa-1pct-10rps", "extrapolated", 30, 14);
    samples.extend(minutes("errors-5x-5pct-100rps", "independent", 10, 14));
    let checks: Vec<Check> = samples.iter().map(Check::of).collect();
    assert!(checks.iter().any(|check| !check.usable));
    assert!(checks
        .iter()
        .any(|check| check.usable && check.error_rate > 0.0));
    let mut bounds = vec![(0.0, 100.0), (0.01, 500.0), (1.0, f64::MAX)];
    bounds.extend(
        checks
            .iter()
            .filter(|check| check.usable)
            .take(20)
            .map(|check| (check.error_rate, check.p99_ms)),
    );
    let mut passed = 0;
    for (sample, check) in samples.iter().zip(&checks) {
        for &(max_error_rate, max_p99_ms) in &bounds {
            let verdict = evaluate(
                &flagger_gates(max_error_rate, max_p99_ms),
                1,
                &flagger_samples(sample.clone()),
            )
            .verdict;
            assert_eq!(
                check.passes(max_error_rate, max_p99_ms),
                verdict == Verdict::Pass,
                "{check:?} under ({max_error_rate}, {max_p99_ms}): {verdict:?}"
            );
            passed += usize::from(verdict == Verdict::Pass);
        }
    }
    assert!(passed > 0 && passed < samples.len() * bounds.len());
}

#[test]
fn the_flagger_counter_decides_on_five_failures_or_ten_passes() {
    let good = Check {
        usable: true,
        error_rate: 0.0,
        p99_ms: 200.0,
    };
    let slow = Check {
        p99_ms: 600.0,
        ..good
    };
    let empty = Check {
        usable: false,
        ..good
    };
    assert!(!rolls_back(&[good; 14], 0.01, 500.0));
    assert!(rolls_back(&[slow; 14], 0.01, 500.0));
    assert!(!rolls_back(&[slow; 14], 0.01, 600.0), "at the bound passes");
    assert!(rolls_back(&[empty; 14], 1.0, f64::MAX), "no data fails");
    // Ten passes first promote, whatever follows.
    let mut late = vec![good; 10];
    late.extend([slow; 4]);
    assert!(!rolls_back(&late, 0.01, 500.0));
    let mut early = vec![slow; 4];
    early.extend([good; 9]);
    early.push(slow);
    assert!(rolls_back(&early, 0.01, 500.0));
}

#[test]
fn tuned_bounds_meet_their_target_on_fresh_runs() {
    let scenario = Scenario::parse("aa-5pct-100rps").unwrap();
    let regressed = Scenario::parse("errors-5x-5pct-100rps").unwrap();
    let conditions = Conditions::parse("retry-clusters:3").unwrap();
    let runs = 1500;
    let settings = |target: f64| Settings {
        runs,
        seed: 3,
        threads: 2,
        tune_false_rollbacks: target,
        tune_runs: runs,
        units: DEFAULT_UNITS,
    };
    let tuned = calibrate(
        &[scenario.clone(), regressed],
        std::slice::from_ref(&conditions),
        settings(0.05),
    );
    // One calibration per traffic and condition: both scenarios share it.
    assert_eq!(tuned[0], tuned[1]);
    let tuned = tuned[0][0];
    assert_eq!((tuned.target, tuned.calibration_runs), (0.05, runs));
    // At most the target on the calibration runs, and close below it: the next quantile down
    // would exceed it.
    let se = (0.05f64 * 0.95 / f64::from(runs)).sqrt();
    assert!(
        tuned.calibration_false_rollback_rate <= 0.05
            && tuned.calibration_false_rollback_rate > 0.05 - 2.0 * se,
        "{tuned:?}"
    );
    // On runs of the measured stream, the same rate within sampling noise (both estimates'
    // errors, four standard errors).
    let model = Model::new(&scenario, &conditions).tuned(tuned);
    let rolled_back = (0..u64::from(runs))
        .filter(|run| {
            let [_, tuned, _] = model.run(&mut Rng::new(stream_seed(3, 0, *run)));
            matches!(tuned, Outcome::RolledBack(_))
        })
        .count() as f64
        / f64::from(runs);
    assert!(
        (rolled_back - tuned.calibration_false_rollback_rate).abs() < 4.0 * 2f64.sqrt() * se,
        "{rolled_back} vs {tuned:?}"
    );
    // A stricter target gives bounds no lower.
    let strict = calibrate(
        std::slice::from_ref(&scenario),
        std::slice::from_ref(&conditions),
        settings(0.01),
    )[0][0];
    assert!(
        strict.max_error_rate >= tuned.max_error_rate && strict.max_p99_ms >= tuned.max_p99_ms,
        "{strict:?} vs {tuned:?}"
    );
    assert!(strict.calibration_false_rollback_rate <= 0.01, "{strict:?}");
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

#[test]
fn the_command_gives_every_family_a_row_of_rates() {
    // What CI runs, briefly: a composed condition, an A/A and a regression scenario.
    let cli = Cli::try_parse_from([
        "simulate",
        "--runs",
        "20",
        "--tune-runs",
        "200",
        "--condition",
        "retry-clusters:3+extrapolated",
        "--scenario",
        "aa-5pct-100rps",
        "--scenario",
        "errors-5x-5pct-100rps",
        "--json",
    ])
    .unwrap();
    let rows = run(&cli.args, |_, _| {}).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    let objects = json.as_array().unwrap();
    for scenario in ["aa-5pct-100rps", "errors-5x-5pct-100rps"] {
        for family in Family::ALL {
            let found: Vec<&serde_json::Value> = objects
                .iter()
                .filter(|row| row["scenario"] == scenario && row["gate"] == family.name())
                .collect();
            assert_eq!(found.len(), 1, "{scenario} {}", family.name());
            let row = found[0];
            assert_eq!(row["condition"], "retry-clusters:3+extrapolated");
            for rate in ["false_rollback_rate", "detection_rate", "undecided_rate"] {
                if let Some(rate) = row[rate].as_f64() {
                    assert!((0.0..=1.0).contains(&rate), "{row}");
                }
            }
            let is_aa = scenario.starts_with("aa");
            assert_eq!(
                row["false_rollback_rate"].is_number(),
                is_aa || family == Family::Rollout,
                "{row}"
            );
            assert_eq!(row["detection_rate"].is_number(), !is_aa, "{row}");
        }
    }
    assert_eq!(objects.len(), 2 * Family::ALL.len());
    // The target defaults to the rollout's budget; a bad one names the flag.
    assert_eq!(rows[2].tuned.unwrap().target, 0.01);
    let cli = Cli::try_parse_from(["simulate", "--tune-false-rollbacks", "1.5"]).unwrap();
    let error = run(&cli.args, |_, _| {}).unwrap_err();
    assert!(error.starts_with("--tune-false-rollbacks"), "{error}");
}
