//! `cohort lab` end to end: the library entry point runs the whole lab (real Envoy with the built
//! filter, two upstreams, the load generator, the standalone controller) for the `healthy`,
//! `errors` and `misrouted` scenarios, and the HTML report it writes holds its plots.
//!
//! The runs go in parallel: about 60 s of wall time together on two cores (the healthy run
//! waits out its sequential tests' 10 s maxDuration at each of four steps).

// Test code: a failed expectation panics with its message (clippy.toml's test allowances cover
// only `#[test]` functions, not this file's helpers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cohort_lab::{self as lab, LabArgs, LabOutcome, LabRun, Scenario};
use cohort_tests::locate::{envoy_binary, filter_wasm};
use cohort_tests::TempDir;

/// The lab's own promise is about two minutes; much more means something hangs.
const WALL_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Runs the lab for `scenario` into a temporary directory; returns the run and its report.
fn run_lab(scenario: Scenario) -> (LabRun, String, TempDir) {
    let dir = TempDir::new("lab").unwrap();
    let mut args = LabArgs::new(scenario);
    args.out = Some(dir.path().join(scenario.name()));
    args.wasm = Some(filter_wasm().unwrap_or_else(|e| panic!("{e}")));
    args.envoy = Some(envoy_binary().unwrap_or_else(|e| panic!("{e}")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run = runtime
        .block_on(lab::run(&args, std::future::pending()))
        .unwrap_or_else(|e| panic!("cohort lab {}: {e}", scenario.name()));
    let html = std::fs::read_to_string(&run.report).unwrap();
    eprintln!(
        "cohort lab {}: {} in {:.1} s ({} requests); {}",
        scenario.name(),
        run.outcome.as_str(),
        run.wall_time.as_secs_f64(),
        run.requests,
        run.summary
    );
    (run, html, dir)
}

/// Every plot of the report, each with its series.
fn assert_plots(html: &str) {
    for id in [
        "plot-weight",
        "plot-share",
        "plot-errors",
        "plot-p99",
        "plot-events",
        "plot-gates",
        "plot-evidence",
    ] {
        assert!(html.contains(&format!("<svg id=\"{id}\"")), "no {id}");
    }
    assert!(html.contains("data-series=\"weight\""));
    for version in ["stable", "canary"] {
        assert!(
            html.matches(&format!("data-series=\"{version}\"")).count() >= 4,
            "{version}: a line on each per-version plot"
        );
    }
    for gate in ["error-rate", "latency-p99", "event-checkout"] {
        assert!(
            html.contains(&format!("data-gate=\"{gate}\"")),
            "no verdicts of {gate}"
        );
        // The lab's gates are sequential: each has its evidence plotted.
        assert!(
            html.contains(&format!("data-series=\"evidence\" data-gate=\"{gate}\"")),
            "no evidence line of {gate}"
        );
    }
    assert!(
        !html.contains("<script") && !html.contains("http"),
        "the report is self-contained"
    );
}

#[test]
fn healthy_canary_is_promoted_and_the_report_plots_every_step() {
    let (run, html, _dir) = run_lab(Scenario::Healthy);
    assert_eq!(run.outcome, LabOutcome::Promoted, "{}", run.summary);
    assert_eq!(run.exit_code(), 0);
    assert!(
        run.summary
            .starts_with("promoted: no gate found a regression at 5%, 10%, 25%, 50%"),
        "{}",
        run.summary
    );
    assert_eq!(run.switched_back, 0, "users kept their version");
    assert!(run.users >= 400, "{} users", run.users);
    assert!(run.wall_time < WALL_TIME_LIMIT, "{:?}", run.wall_time);
    assert_plots(&html);
    assert!(!html.contains("rollback-marker"));
    assert!(!html.contains("data-verdict=\"Fail\""));
    // A step marker for each raise after the first step, on the five time plots, the verdict
    // plot and the sequential gates' evidence plot.
    assert_eq!(html.matches("class=\"step-marker\"").count(), 7 * 4);
}

#[test]
fn canary_with_errors_is_rolled_back_and_the_report_marks_when() {
    let (run, html, _dir) = run_lab(Scenario::Errors);
    assert_eq!(run.outcome, LabOutcome::RolledBack, "{}", run.summary);
    assert_eq!(run.exit_code(), 0);
    assert!(run.summary.starts_with("rolled back"), "{}", run.summary);
    assert!(run.summary.contains("error-rate"), "{}", run.summary);
    let rollback = run.rollback_time.expect("a rollback time");
    eprintln!(
        "rollback time: weight 0 in Envoy {:.2} s after the first 5xx",
        rollback.as_secs_f64()
    );
    assert!(rollback < Duration::from_secs(15), "{rollback:?}");
    assert_eq!(run.switched_back, 0, "nobody went back before the rollback");
    assert!(run.wall_time < WALL_TIME_LIMIT, "{:?}", run.wall_time);
    assert_plots(&html);
    // On the five time plots, the verdict plot and the evidence plot.
    assert_eq!(html.matches("class=\"rollback-marker\"").count(), 7);
    assert!(html.contains("data-gate=\"error-rate\" data-verdict=\"Fail\""));
}

/// The slip that made a canary answering 503 to everything look healthy: the canary route
/// matches a value the filter never sets, so stable serves the canary's users. The routing
/// check sees the canary serve none of the requests decided for it, holds, and rolls back; no
/// gate ever passes on stable's numbers.
#[test]
fn a_misrouted_canary_is_never_promoted_and_the_report_says_why() {
    let (run, html, _dir) = run_lab(Scenario::Misrouted);
    assert_eq!(run.outcome, LabOutcome::RolledBack, "{}", run.summary);
    assert_eq!(run.exit_code(), 0);
    assert!(
        run.summary
            .contains("has not served the requests decided for it"),
        "{}",
        run.summary
    );
    assert!(run.wall_time < WALL_TIME_LIMIT, "{:?}", run.wall_time);
    assert!(
        html.contains("id=\"routing-mismatch\""),
        "the report marks it"
    );
    assert!(
        html.contains("the canary served 0 of the"),
        "with both counts"
    );
    assert!(
        !html.contains("data-verdict=\"Pass\""),
        "no gate passed on stable's numbers"
    );
}
