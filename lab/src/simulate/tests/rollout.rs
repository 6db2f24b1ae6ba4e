//! The whole-rollout family: the plan drives the traffic, and the flags that choose it.

use clap::Parser;

use cohort_rollout::crd::{AnalysisSpec, CanaryRollout, FailurePolicy, OnTrouble, Step};

use super::*;

/// One run of `scenario` through `rollout` under `conditions`.
fn run_once(rollout: &Rollout, scenario: &str, conditions: &Conditions, seed: u64) -> RolloutRun {
    run_with_units(rollout, scenario, conditions, DEFAULT_UNITS, seed)
}

/// [`run_once`] with its source reporting `units` units per version.
fn run_with_units(
    rollout: &Rollout,
    scenario: &str,
    conditions: &Conditions,
    units: usize,
    seed: u64,
) -> RolloutRun {
    let scenario = Scenario::parse(scenario).unwrap();
    let model = Model::new(&scenario, conditions);
    rollout.run(&model, conditions, units, &mut Rng::new(seed))
}

/// Runs of a healthy canary rolled back out of `runs`, when its source reports `units`.
fn rolled_back_of(conditions: &Conditions, units: usize, runs: u64) -> u64 {
    let rollout = Rollout::default_rollout().unwrap();
    (0..runs)
        .filter(|seed| {
            let run = run_with_units(&rollout, "aa-5pct-100rps", conditions, units, *seed);
            matches!(run.outcome, Outcome::RolledBack(_))
        })
        .count() as u64
}

/// Consecutive repeats dropped.
fn distinct(weights: &[u32]) -> Vec<u32> {
    let mut steps = weights.to_vec();
    steps.dedup();
    steps
}

#[test]
fn the_default_rollout_is_every_default() {
    let rollout = Rollout::default_rollout().unwrap();
    assert_eq!(
        rollout.step_weights(),
        vec![100, 500, 2500, 5000, 7500, 10_000]
    );
    assert_eq!(rollout.total_bake_s(), 5 * 300);
    assert_eq!(rollout.interval_s(), 30);
    assert_eq!(rollout.spec.analysis, AnalysisSpec::default());
    assert_eq!(rollout.spec.failure_policy, FailurePolicy::default());
}

#[test]
fn a_healthy_canary_goes_through_every_step_and_is_promoted() {
    // The sequential pair: its false rollbacks are bounded (at most 5% of these rollouts),
    // where the default rollout's p99 threshold gate fails many healthy canaries at 1% of
    // 100 rps (BENCHMARKS.md).
    let rollout = sequential_pair_rollout();
    let steps = rollout.step_weights();
    let independent = Conditions::independent();
    let mut promoted = 0;
    for seed in 0..20 {
        let run = run_once(&rollout, "aa-5pct-100rps", &independent, seed);
        let Outcome::Promoted(at) = run.outcome else {
            continue;
        };
        promoted += 1;
        assert!(at >= rollout.total_bake_s(), "{at}");
        // The traffic saw every step below 100%, in order, each for at least its bake.
        assert_eq!(distinct(&run.weights), steps[..steps.len() - 1]);
        for step in &steps[..steps.len() - 1] {
            let intervals = run.weights.iter().filter(|w| *w == step).count() as u64;
            assert!(intervals * 30 >= 300, "{step}: {intervals}");
        }
        assert_eq!(run.weights.len() as u64 * 30, at);
        assert_eq!(run.cause, None);
    }
    assert!(promoted >= 18, "{promoted} of 20");
}

#[test]
fn units_keep_a_heavy_user_on_the_canary_from_failing_it() {
    // One user with 10% of all requests at 6× the error rate: on the canary whenever the
    // canary's weight passes its bucket. Counted in totals, the canary's users look worse than
    // stable's, and most rollouts end rolled back; counted per unit, that user is one unit's.
    let heavy = Conditions::parse("heavy-user:0.1:6").unwrap();
    let totals_only = rolled_back_of(&heavy, 1, 40);
    let by_unit = rolled_back_of(&heavy, DEFAULT_UNITS, 40);
    assert!(
        totals_only >= 15,
        "{totals_only} of 40 rolled back on totals"
    );
    assert!(by_unit <= 2, "{by_unit} of 40 rolled back by unit");
}

#[test]
fn a_20x_error_canary_is_rolled_back_by_the_error_gate() {
    let rollout = Rollout::default_rollout().unwrap();
    for seed in 0..10 {
        let run = run_once(
            &rollout,
            "errors-20x-5pct-100rps-fromstart",
            &Conditions::independent(),
            seed,
        );
        assert_eq!(run.regression_start_s, Some(0));
        let Outcome::RolledBack(at) = run.outcome else {
            panic!("{run:?}");
        };
        assert_eq!(run.cause.as_deref(), Some("error-rate"), "{run:?}");
        // At the first step (1%): one canary request a second at 10% errors.
        assert!(at <= 300, "{at}");
        assert!(run.weights.iter().all(|weight| *weight == 100));
    }
}

#[test]
fn a_regression_shows_when_the_rollout_first_serves_its_weight() {
    let rollout = Rollout::default_rollout().unwrap();
    let independent = Conditions::independent();
    for seed in 0..10 {
        let run = run_once(&rollout, "errors-20x-5pct-100rps", &independent, seed);
        // Healthy through the 1% step's bake; bad from the first interval at 5%, and rolled
        // back there by the error gate.
        let first = run.weights.iter().position(|w| *w == 500).unwrap() as u64;
        assert_eq!(run.regression_start_s, Some(first * 30), "{run:?}");
        assert!(first * 30 >= 300, "{run:?}");
        let Outcome::RolledBack(at) = run.outcome else {
            panic!("{run:?}");
        };
        assert!(at > first * 30 && at <= first * 30 + 300, "{run:?}");
        assert_eq!(run.cause.as_deref(), Some("error-rate"), "{run:?}");
        assert_eq!(distinct(&run.weights), vec![100, 500]);
    }
    // At 25%, the third step; an explicit start wins over the weight; A/A never turns bad.
    let run = run_once(&rollout, "errors-20x-25pct-100rps", &independent, 1);
    let first = run.weights.iter().position(|w| *w == 2500).unwrap() as u64;
    assert_eq!(run.regression_start_s, Some(first * 30), "{run:?}");
    let run = run_once(&rollout, "errors-20x-25pct-100rps-at60s", &independent, 1);
    assert_eq!(run.regression_start_s, Some(60), "{run:?}");
    assert!(run.weights.iter().all(|w| *w == 100), "{run:?}");
    let run = run_once(&rollout, "aa-5pct-100rps", &independent, 1);
    assert_eq!(run.regression_start_s, None);
    // The rows count detection from that moment, and rollbacks before it as false.
    let rows = simulate(
        &[Scenario::parse("errors-20x-5pct-100rps").unwrap()],
        &[independent],
        &rollout,
        Settings {
            runs: 10,
            seed: 1,
            threads: 2,
            tune_false_rollbacks: 0.01,
            tune_runs: 20,
            units: DEFAULT_UNITS,
        },
        |_, _| {},
    );
    let row = &rows[0];
    assert_eq!(row.gate, "rollout");
    assert_eq!(
        (row.false_rollback_rate, row.detection_rate),
        (Some(0.0), Some(1.0)),
        "{row:?}"
    );
    assert!(row.median_detect_s.unwrap() <= 300.0, "{row:?}");
    // The fixed-weight families see it from the start: nothing false to count.
    assert_eq!(rows[1].false_rollback_rate, None, "{:?}", rows[1]);
}

#[test]
fn thin_traffic_meets_the_failure_policy() {
    // Without a sequential gate the window is the last interval: 0.1 canary request a second
    // never reaches the sample minimum, so the no-data deadline (1m here) rolls back.
    let mut spec = Rollout::default_spec();
    spec.analysis.gates = vec![GateSpec::new(GateCheck::ErrorRate(ErrorRateGate {
        max_increase: 0.01,
        max_rate: None,
    }))];
    spec.failure_policy.no_data_deadline = "1m".to_owned();
    spec.failure_policy.on_no_data = OnTrouble::Rollback;
    let rollout = Rollout::new("thin", spec.clone()).unwrap();
    let run = run_once(&rollout, "aa-1pct-10rps", &Conditions::independent(), 1);
    assert_eq!(run.cause.as_deref(), Some("no-data"), "{run:?}");
    assert_eq!(run.outcome, Outcome::RolledBack(90));
    // Held instead, the run is undecided at the horizon, still at its first step.
    spec.failure_policy.on_no_data = OnTrouble::Hold;
    let rollout = Rollout::new("thin", spec).unwrap();
    assert_eq!(rollout.horizon_s, 3 * 5 * 300);
    let run = run_once(&rollout, "aa-1pct-10rps", &Conditions::independent(), 1);
    assert_eq!(run.outcome, Outcome::Undecided);
    let rows = simulate(
        &[Scenario::parse("aa-1pct-10rps").unwrap()],
        &[Conditions::independent()],
        &rollout,
        Settings {
            runs: 4,
            seed: 1,
            threads: 1,
            tune_false_rollbacks: 0.01,
            tune_runs: 20,
            units: DEFAULT_UNITS,
        },
        |_, _| {},
    );
    assert_eq!(rows[0].gate, "rollout");
    assert_eq!(
        (rows[0].undecided_rate, rows[0].false_rollback_rate),
        (1.0, Some(0.0))
    );
    assert_eq!(distinct(&run.weights), vec![100]);
    assert_eq!(run.weights.len() as u64 * 30, rollout.horizon_s);
}

#[test]
fn a_rollout_of_our_own_steps_drives_the_traffic() {
    let mut spec = Rollout::default_spec();
    spec.steps = vec![
        Step::new(10.0, "1m"),
        Step::new(50.0, "2m"),
        Step::new(100.0, "1m"),
    ];
    spec.analysis.interval = "1m".to_owned();
    spec.analysis.gates.clear();
    let rollout = Rollout::new("own", spec).unwrap();
    assert_eq!(rollout.interval_s(), 60);
    let run = run_once(&rollout, "aa-50pct-100rps", &Conditions::independent(), 3);
    // Without gates each step advances on its bake alone: 1 m at 10%, 2 m at 50%.
    assert_eq!(run.outcome, Outcome::Promoted(180));
    assert_eq!(run.weights, vec![1000, 5000, 5000]);
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn parse(flags: &[&str]) -> Result<(Vec<Scenario>, Vec<Conditions>, Rollout), String> {
    let cli = Cli::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied()))
        .map_err(|error| error.to_string())?;
    read_args(&cli.args)
}

#[test]
fn condition_and_rollout_flags() {
    let (scenarios, conditions, rollout) = parse(&[]).unwrap();
    assert_eq!(scenarios.len(), DEFAULT_SCENARIOS.len());
    assert_eq!(conditions, vec![Conditions::independent()]);
    assert_eq!(rollout.spec, Rollout::default_spec());
    let (_, conditions, _) = parse(&[
        "--condition",
        "independent",
        "--condition",
        "retry-clusters:3",
        "--condition",
        "overdispersed:0.5+diurnal",
    ])
    .unwrap();
    let names: Vec<&str> = conditions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "independent",
            "retry-clusters:3",
            "overdispersed:0.5+diurnal"
        ]
    );
    let error = parse(&["--condition", "retry-clusters"]).unwrap_err();
    assert!(
        error.starts_with("--condition \"retry-clusters\""),
        "{error}"
    );
    assert!(error.contains("write e.g."), "{error}");
    let error = parse(&["--scenario", "bb-5pct-100rps"]).unwrap_err();
    assert!(error.starts_with("--scenario"), "{error}");

    // A rollout file, as `cohort run` reads it (JSON is YAML).
    let dir = std::env::temp_dir().join(format!("cohort-simulate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = Rollout::default_spec();
    spec.steps = vec![Step::new(20.0, "2m"), Step::new(100.0, "5m")];
    let file = dir.join("rollout.yaml");
    let resource = CanaryRollout::new("checkout", spec.clone());
    std::fs::write(&file, serde_json::to_string(&resource).unwrap()).unwrap();
    let (_, _, rollout) = parse(&["--rollout", file.to_str().unwrap()]).unwrap();
    assert_eq!((rollout.name.as_str(), &rollout.spec), ("checkout", &spec));
    assert_eq!(rollout.step_weights(), vec![2000, 10_000]);
    // Missing, not a CanaryRollout, invalid: each error names the flag and the file.
    let invalid = dir.join("invalid.yaml");
    spec.analysis.interval = "soon".to_owned();
    let resource = CanaryRollout::new("checkout", spec);
    std::fs::write(&invalid, serde_json::to_string(&resource).unwrap()).unwrap();
    let other = dir.join("other.yaml");
    std::fs::write(&other, "kind: Deployment\napiVersion: apps/v1\n").unwrap();
    for (path, says) in [
        (dir.join("missing.yaml"), "No such file"),
        (other, "expected apiVersion"),
        (invalid, "spec.analysis.interval"),
    ] {
        let error = parse(&["--rollout", path.to_str().unwrap()]).unwrap_err();
        assert!(error.starts_with("--rollout "), "{error}");
        assert!(error.contains(path.to_str().unwrap()), "{error}");
        assert!(error.contains(says), "{error}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
