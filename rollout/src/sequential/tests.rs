use super::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{GateSpec, SequentialGate, SequentialMetric};
use crate::evaluate::{evaluate, evaluate_window, Observed, UnitSamples, VersionSamples};
use crate::validate::compile;
use crate::validate::tests::minimal_spec;

/// `gate` judged over `window`, its `maxDuration` parsed as compile parses it, after a run whose
/// earlier steps showed events arriving as independent requests (dispersion ≈ 1), so the verdict
/// is the test's on these counts as they are.
fn judged_over(
    gate: &SequentialGate,
    name: &str,
    min_samples: u64,
    samples: &Samples,
    window: Option<Duration>,
) -> GateResult {
    let max_duration = crate::duration::parse(&gate.max_duration).ok();
    let independent_so_far = GateResult {
        sequential: Some(SequentialLook {
            evidence: 1.0,
            evidence_needed: 100.0,
            dispersion: 1.0,
            canary_unit_dispersion: None,
            stable_unit_dispersion: None,
            canary_pod_dispersion: None,
            stable_pod_dispersion: None,
            tally: independent_tally(),
        }),
        ..GateResult::blank(name)
    };
    gate.judge_over(
        name,
        min_samples,
        samples,
        window,
        max_duration,
        Some(&independent_so_far),
    )
}

/// A tally whose earlier steps had Pearson statistics equal to their degrees of freedom.
fn independent_tally() -> Tally {
    Tally {
        earlier_pearson: 1000.0,
        earlier_degrees: 1000.0,
        earlier_stable_pearson: 1000.0,
        earlier_stable_degrees: 1000.0,
        ..Tally::default()
    }
}

/// `|actual - expected| <= tolerance * |expected|`, with a message.
fn close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance * expected.abs(),
        "{what}: {actual} vs {expected}"
    );
}

#[test]
fn a_point_mixture_is_walds_sprt_with_the_textbook_boundaries() {
    // NIST/SEMATECH e-Handbook 6.2.3.2 (sequential sampling): p1 = 0.01, p2 = 0.10, α = 0.05,
    // β = 0.10 give the lines x = -h1 + s·n (accept) and x = h2 + s·n (reject) with
    // h1 = 0.939, h2 = 1.205, s = 0.04. In our terms the null share is w = 0.01 and the
    // alternative share 0.10, an odds ratio of (0.1/0.9)/(0.01/0.99) = 11.
    let (share, ratio) = (0.01, 11.0);
    let per_canary_event =
        log_likelihood_ratio(1.0, 1.0, share, ratio) - log_likelihood_ratio(0.0, 1.0, share, ratio);
    let per_event = -log_likelihood_ratio(0.0, 1.0, share, ratio);
    let reject = (0.9_f64 / 0.05).ln(); // ln((1 - β) / α)
    let accept = (0.95_f64 / 0.10).ln(); // ln((1 - α) / β)
    close(reject / per_canary_event, 1.205_378_6, 1e-7, "h2");
    close(accept / per_canary_event, 0.938_861_6, 1e-7, "h1");
    close(per_event / per_canary_event, 0.039_747_43, 1e-6, "s");
    assert_eq!(per_canary_event, 11.0_f64.ln());
    // The one-point mixture is that likelihood ratio, and it crosses exactly at the line.
    let point = Mixture::point(ratio);
    for events in [10.0, 30.0, 100.0] {
        let line = reject / per_canary_event + per_event / per_canary_event * events;
        for x in [line.floor(), line.ceil()] {
            let evidence = log_evidence(x, events, share, &point);
            close(
                evidence,
                log_likelihood_ratio(x, events, share, ratio),
                1e-12,
                "point mixture",
            );
            assert_eq!(evidence >= reject, x >= line, "x={x} m={events}");
        }
    }
}

#[test]
fn the_fail_mixture_has_the_hand_computed_values() {
    // Independent implementation (Python, same grid): e-values for (x of m events, share w).
    let table = [
        (5.0, 10.0, 0.05, 462.124_294_497_259_2),
        (10.0, 40.0, 0.05, 2_679.753_637_578_547_6),
        (0.0, 20.0, 0.05, 0.221_962_532_696_404_5),
        (3.0, 3.0, 0.01, 178.361_649_036_942_1),
    ];
    let mixture = Mixture::worse_ratios();
    for (x, m, share, expected) in table {
        close(
            log_evidence(x, m, share, &mixture).exp(),
            expected,
            1e-10,
            &format!("x={x} m={m} w={share}"),
        );
    }
    assert_eq!(log_evidence(0.0, 0.0, 0.05, &mixture), 0.0);
    // A two-point mixture is the weighted mean of its likelihood ratios.
    let two = Mixture::on_log_grid(2.0_f64.ln(), 2.0_f64.ln(), 2, |_| 1.0); // ratios 2 and 4
    let by_hand = 0.5 * (2.0_f64.powi(3) / 1.1_f64.powi(10) + 4.0_f64.powi(3) / 1.3_f64.powi(10));
    close(
        log_evidence(3.0, 10.0, 0.1, &two).exp(),
        by_hand,
        1e-12,
        "two points",
    );
}

/// `P(x)` for `x ~ Binomial(m, p)`, exactly enough for small `m`.
fn binomial_pmf(m: u32, p: f64) -> Vec<f64> {
    let mut pmf = vec![0.0; m as usize + 1];
    pmf[0] = (1.0 - p).powi(m as i32);
    for x in 1..=m as usize {
        pmf[x] = pmf[x - 1] * (m as f64 - x as f64 + 1.0) / x as f64 * p / (1.0 - p);
    }
    pmf
}

#[test]
fn the_fail_evidence_is_a_martingale_under_the_null_and_shrinks_when_the_canary_is_better() {
    let mixture = Mixture::worse_ratios();
    for (m, share) in [(1, 0.05), (12, 0.05), (30, 0.01), (40, 0.5)] {
        let expectation = |p: f64| -> f64 {
            binomial_pmf(m, p)
                .iter()
                .enumerate()
                .map(|(x, pmf)| pmf * log_evidence(x as f64, f64::from(m), share, &mixture).exp())
                .sum()
        };
        close(expectation(share), 1.0, 1e-9, &format!("E under H0, m={m}"));
        assert!(expectation(share * 0.5) < 1.0, "a better canary, m={m}");
    }
}

/// Exact probability that the Fail boundary (`1/alpha`) is crossed at some event among the first
/// `events`, looking after every single event, when each event is the canary's with
/// probability `theta` and its exposure share is `share`.
fn crossing_probability(share: f64, theta: f64, alpha: f64, events: usize) -> f64 {
    let mixture = Mixture::worse_ratios();
    let needed = -alpha.ln();
    let mut alive = vec![1.0]; // alive[x]: not yet crossed, x canary events so far
    let mut crossed = 0.0;
    let mut boundary = 0;
    for m in 1..=events {
        let mut next = vec![0.0; m + 1];
        for (x, p) in alive.iter().enumerate() {
            next[x] += p * (1.0 - theta);
            next[x + 1] += p * theta;
        }
        // Evidence grows with x and shrinks with m, so the boundary never moves down.
        while log_evidence(boundary as f64, m as f64, share, &mixture) < needed {
            boundary += 1;
        }
        crossed += next[boundary.min(m + 1)..].iter().sum::<f64>();
        next.truncate(boundary.min(m + 1));
        alive = next;
    }
    crossed
}

#[test]
fn false_failures_stay_below_alpha_however_often_it_is_checked() {
    // Checked after every one of 500 events (far more often than any controller looks).
    let table = [
        // (share, alpha, events, exact probability of ever failing a canary as good as stable)
        (0.05, 0.01, 500, 0.005_482_266_032_445_811),
        (0.5, 0.05, 300, 0.038_025_170_897_142_92),
    ];
    for (share, alpha, events, expected) in table {
        let probability = crossing_probability(share, share, alpha, events);
        close(probability, expected, 1e-9, &format!("w={share} α={alpha}"));
        assert!(probability <= alpha);
    }
    // And a ×5 canary at 5%: failed within 100 events nearly always.
    let theta = 5.0 * 0.05 / (1.0 + 0.05 * 4.0);
    close(
        crossing_probability(0.05, theta, 0.01, 100),
        0.978_800_338_937_690_3,
        1e-9,
        "power",
    );
}

#[test]
fn rate_bounds_have_the_closed_form_values() {
    // No events: the upper bound solves mean(exp(n·U·(1 - r))) = 1/α over the grid, the
    // mixture version of the rule of three (3/n at 95%).
    let table = [
        // (events, exposure, alpha, upper, lower), from an independent implementation
        (0.0, 1000.0, 0.005, 0.007_301_029_994_887_358, 0.0),
        (
            10.0,
            1000.0,
            0.005,
            0.027_839_059_809_739_407,
            0.002_011_816_159_379_123_2,
        ),
        (
            50.0,
            10_000.0,
            0.005,
            0.008_310_321_480_835_225,
            0.002_692_169_321_353_504,
        ),
        (0.0, 100.0, 0.05, 0.047_642_597_772_828_595, 0.0),
        // Many events: the near alternatives keep the bound within ±3% of 10%.
        (
            20_000.0,
            200_000.0,
            0.005,
            0.102_815_904_439_557_96,
            0.097_234_363_605_184_61,
        ),
    ];
    for (events, exposure, alpha, upper, lower) in table {
        let what = format!("{events}/{exposure} at {alpha}");
        close(
            rate_upper_bound(events, exposure, alpha),
            upper,
            2e-6,
            &what,
        );
        close(
            rate_lower_bound(events, exposure, alpha),
            lower,
            2e-6,
            &what,
        );
    }
    // With a single alternative r = e^-5 ≈ 0 the bound is the rule of three itself:
    // exp(n·U·(1 - r)) = 1/α.
    let n = 100.0;
    let r = (-5.0_f64).exp();
    let evidence = log_rate_evidence(
        0.0,
        n,
        0.05_f64.ln().abs() / (n * (1.0 - r)),
        &Mixture::point(r),
    );
    close(evidence, 0.05_f64.ln().abs(), 1e-12, "rule of three");
    assert_eq!(rate_upper_bound(0.0, 0.0, 0.01), f64::INFINITY);
    assert_eq!(rate_lower_bound(5.0, 0.0, 0.01), 0.0);
}

/// Exact probability that a bound excludes the true Bernoulli rate `p` at some request among
/// the first `requests`, looking after every request.
fn miss_probability(p: f64, alpha: f64, requests: usize, upper: bool) -> f64 {
    let mixture = if upper {
        Mixture::lower_rates()
    } else {
        Mixture::higher_rates()
    };
    let needed = -alpha.ln();
    let excluded =
        |x: usize, n: usize| log_rate_evidence(x as f64, n as f64, p, &mixture) >= needed;
    // Upper bounds exclude p when x is small (x <= below), lower bounds when x is large
    // (x >= above); both edges only move up with n, so each is found by a forward scan.
    let mut below: Option<usize> = None;
    let mut above = 0;
    let mut alive = vec![1.0];
    let mut missed = 0.0;
    for n in 1..=requests {
        let mut next = vec![0.0; n + 1];
        for (x, q) in alive.iter().enumerate() {
            next[x] += q * (1.0 - p);
            next[x + 1] += q * p;
        }
        if upper {
            let mut edge = below.map_or(0, |b| b + 1);
            while edge <= n && excluded(edge, n) {
                edge += 1;
            }
            below = edge.checked_sub(1);
            if let Some(b) = below {
                missed += next[..=b].iter().sum::<f64>();
                next[..=b].iter_mut().for_each(|q| *q = 0.0);
            }
        } else {
            while above <= n && !excluded(above, n) {
                above += 1;
            }
            missed += next[above.min(n + 1)..].iter().sum::<f64>();
            next.truncate(above.min(n + 1));
        }
        alive = next;
    }
    missed
}

#[test]
fn rate_bounds_are_time_uniform_on_bernoulli_data() {
    // 2000 looks at a 1% rate: the Poisson mixture stays valid for Bernoulli counts.
    let upper = miss_probability(0.01, 0.01, 2000, true);
    let lower = miss_probability(0.01, 0.01, 2000, false);
    close(upper, 0.002_208_380_695_278_250_6, 1e-8, "upper");
    close(lower, 0.001_175_503_376_760_686_3, 1e-8, "lower");
    assert!(upper <= 0.01 && lower <= 0.01);
}

fn counts(events: f64, exposure: f64) -> Counts {
    Counts { events, exposure }
}

const MARGIN: Margin = Margin {
    max_ratio: 2.0,
    max_increase: 0.01,
    max_drop: 0.1,
};

#[test]
fn decisions_on_counts() {
    use Verdict::{Fail, Inconclusive, Pass, Underpowered};
    // (canary, stable, worse, expired, verdict)
    let table = [
        // 5% canary, 0.5% errors both: a few thousand requests pass on the +1 point margin.
        (
            counts(15.0, 3000.0),
            counts(285.0, 57_000.0),
            Worse::Higher,
            false,
            Pass,
        ),
        // Same rates, less data: wait.
        (
            counts(2.0, 300.0),
            counts(28.0, 5_700.0),
            Worse::Higher,
            false,
            Inconclusive,
        ),
        // ... unless maxDuration has passed: the test ends without ruling a regression out.
        (
            counts(2.0, 300.0),
            counts(28.0, 5_700.0),
            Worse::Higher,
            true,
            Underpowered,
        ),
        // 5× the errors after one minute at 100 rps: fail.
        (
            counts(8.0, 300.0),
            counts(28.0, 5_700.0),
            Worse::Higher,
            false,
            Fail,
        ),
        // A failure wins over an expired maxDuration.
        (
            counts(8.0, 300.0),
            counts(28.0, 5_700.0),
            Worse::Higher,
            true,
            Fail,
        ),
        // Three errors among three, at a 1% share: fail on thin data when the data say so.
        (
            counts(3.0, 10.0),
            counts(0.0, 990.0),
            Worse::Higher,
            false,
            Fail,
        ),
        // No errors anywhere: pass once the canary has enough requests for the +1 point.
        (
            counts(0.0, 2_000.0),
            counts(0.0, 40_000.0),
            Worse::Higher,
            false,
            Pass,
        ),
        (
            counts(0.0, 100.0),
            counts(0.0, 2_000.0),
            Worse::Higher,
            false,
            Inconclusive,
        ),
        // Business events: 40% fewer checkouts fails, equal ones pass with enough data.
        (
            counts(60.0, 1000.0),
            counts(1900.0, 19_000.0),
            Worse::Lower,
            false,
            Fail,
        ),
        (
            counts(3000.0, 30_000.0),
            counts(60_000.0, 600_000.0),
            Worse::Lower,
            false,
            Pass,
        ),
        (
            counts(10.0, 100.0),
            counts(200.0, 2_000.0),
            Worse::Lower,
            false,
            Inconclusive,
        ),
        // More checkouts is never a failure.
        (
            counts(400.0, 1000.0),
            counts(1900.0, 19_000.0),
            Worse::Lower,
            false,
            Pass,
        ),
        // No traffic on one side.
        (
            counts(0.0, 0.0),
            counts(28.0, 5_700.0),
            Worse::Higher,
            true,
            Inconclusive,
        ),
    ];
    for (canary, stable, worse, expired, verdict) in table {
        let decision = decide(
            canary,
            stable,
            worse,
            MARGIN,
            0.01,
            Dispersion::both(1.0),
            expired,
        );
        assert_eq!(
            decision.verdict, verdict,
            "canary {canary:?} stable {stable:?}: {}",
            decision.reason
        );
    }
}

#[test]
fn decision_numbers_and_reasons() {
    let decision = decide(
        counts(8.0, 300.0),
        counts(28.0, 5_700.0),
        Worse::Higher,
        MARGIN,
        0.01,
        Dispersion::both(1.0),
        false,
    );
    close(
        decision.evidence,
        (log_evidence(8.0, 36.0, 0.05, &Mixture::worse_ratios())).exp(),
        1e-12,
        "evidence",
    );
    close(
        decision.worse_from.unwrap_or_default(),
        28.0 / 5700.0 + 0.01,
        1e-12,
        "worse from",
    );
    assert!(
        decision.reason.starts_with("worse than stable: evidence "),
        "{}",
        decision.reason
    );
    assert!(
        decision.reason.contains("≥ 1/α = 100"),
        "{}",
        decision.reason
    );
    let waiting = decide(
        counts(2.0, 300.0),
        counts(28.0, 5_700.0),
        Worse::Higher,
        MARGIN,
        0.01,
        Dispersion::both(1.0),
        false,
    );
    assert!(
        waiting.reason.starts_with("gathering evidence: ") && waiting.reason.contains("99%"),
        "{}",
        waiting.reason
    );
}

fn traffic(requests: f64, errors: f64) -> VersionSamples {
    VersionSamples {
        requests: Observed::Value(requests),
        server_errors: Observed::Value(errors),
        ..VersionSamples::default()
    }
}

/// A histogram with bounds 50, 100, 250, 500, +Inf: `fast` observations at or below 100 ms,
/// `medium` in (100, 250], `slow` above 250.
fn latency(fast: f64, medium: f64, slow: f64) -> VersionSamples {
    let total = fast + medium + slow;
    let buckets = [
        (50.0, fast / 2.0),
        (100.0, fast),
        (250.0, fast + medium),
        (500.0, fast + medium + slow / 2.0),
        (f64::INFINITY, total),
    ]
    .into_iter()
    .map(|(le, count)| Bucket { le, count })
    .collect();
    VersionSamples {
        requests: Observed::Value(total),
        latency_ms: Observed::Value(buckets),
        ..VersionSamples::default()
    }
}

fn gate(metric: SequentialMetric) -> SequentialGate {
    SequentialGate::new(metric)
}

#[test]
fn the_gate_judges_each_metric() {
    use Verdict::{Error, Fail, Inconclusive, Pass, Underpowered};
    let ten_minutes = Some(Duration::from_secs(600));
    let minute = Some(Duration::from_secs(60));
    let errors = gate(SequentialMetric::ErrorRate);
    let slow = gate(SequentialMetric::Latency);
    let mut checkout = gate(SequentialMetric::BusinessEvent);
    checkout.event = Some("checkout".into());
    let with_checkouts = |requests: f64, events: Observed<f64>| {
        let mut samples = traffic(requests, 0.0);
        samples.events.insert("checkout".into(), events);
        samples
    };
    let table: Vec<(&SequentialGate, Samples, Option<Duration>, Verdict)> = vec![
        (
            &errors,
            Samples {
                canary: traffic(300.0, 8.0),
                stable: traffic(5700.0, 28.0),
            },
            minute,
            Fail,
        ),
        (
            &errors,
            Samples {
                canary: traffic(300.0, 2.0),
                stable: traffic(5700.0, 28.0),
            },
            minute,
            Inconclusive,
        ),
        (
            &errors,
            Samples {
                canary: traffic(300.0, 2.0),
                stable: traffic(5700.0, 28.0),
            },
            ten_minutes,
            Underpowered,
        ),
        // maxDuration passes only with the sample minimum (100) met.
        (
            &errors,
            Samples {
                canary: traffic(60.0, 0.0),
                stable: traffic(5700.0, 28.0),
            },
            ten_minutes,
            Inconclusive,
        ),
        // Without the window's length maxDuration cannot expire.
        (
            &errors,
            Samples {
                canary: traffic(300.0, 2.0),
                stable: traffic(5700.0, 28.0),
            },
            None,
            Inconclusive,
        ),
        (
            &errors,
            Samples {
                canary: traffic(300.0, 2.0),
                stable: VersionSamples {
                    requests: Observed::Failed("timeout".into()),
                    ..VersionSamples::default()
                },
            },
            minute,
            Error,
        ),
        // Latency: stable's p99 falls in (100, 250]; 4% of canary requests above 250 ms fails.
        (
            &slow,
            Samples {
                canary: latency(250.0, 38.0, 12.0),
                stable: latency(5000.0, 690.0, 10.0),
            },
            minute,
            Fail,
        ),
        (
            &slow,
            Samples {
                canary: latency(2500.0, 495.0, 5.0),
                stable: latency(50_000.0, 6900.0, 100.0),
            },
            minute,
            Pass,
        ),
        (
            &slow,
            Samples {
                canary: latency(250.0, 49.0, 1.0),
                stable: VersionSamples::default(),
            },
            minute,
            Inconclusive,
        ),
        (
            &slow,
            Samples {
                canary: VersionSamples {
                    latency_ms: Observed::Failed("bad gateway".into()),
                    ..VersionSamples::default()
                },
                stable: latency(5000.0, 690.0, 10.0),
            },
            minute,
            Error,
        ),
        // Business events: half the checkouts fails; no event series at all is no checkouts.
        (
            &checkout,
            Samples {
                canary: with_checkouts(1000.0, Observed::Value(50.0)),
                stable: with_checkouts(19_000.0, Observed::Value(1900.0)),
            },
            minute,
            Fail,
        ),
        (
            &checkout,
            Samples {
                canary: with_checkouts(1000.0, Observed::NoData),
                stable: with_checkouts(19_000.0, Observed::Value(1900.0)),
            },
            minute,
            Fail,
        ),
        (
            &checkout,
            Samples {
                canary: with_checkouts(100.0, Observed::Value(10.0)),
                stable: with_checkouts(1900.0, Observed::Value(190.0)),
            },
            minute,
            Inconclusive,
        ),
    ];
    for (gate, samples, window, verdict) in table {
        let result = judged_over(gate, "gate", 100, &samples, window);
        assert_eq!(
            result.verdict, verdict,
            "{:?} over {window:?}: {}",
            gate.metric, result.reason
        );
    }
    let mut unnamed = gate(SequentialMetric::BusinessEvent);
    unnamed.event = None;
    let result = judged_over(&unnamed, "gate", 1, &Samples::default(), minute);
    assert_eq!(result.verdict, Error);
}

#[test]
fn the_gate_reports_its_numbers() {
    let samples = Samples {
        canary: latency(250.0, 38.0, 12.0),
        stable: latency(5000.0, 690.0, 10.0),
    };
    let result = judged_over(
        &gate(SequentialMetric::Latency),
        "latency-p99",
        100,
        &samples,
        Some(Duration::from_secs(60)),
    );
    assert_eq!(result.gate, "latency-p99");
    assert_eq!(
        (result.canary_samples, result.stable_samples),
        (300.0, 5700.0)
    );
    close(
        result.canary.unwrap_or_default(),
        0.04,
        1e-12,
        "canary slow share",
    );
    close(
        result.stable.unwrap_or_default(),
        10.0 / 5700.0,
        1e-12,
        "stable slow share",
    );
    // Worse from max(2 × 0.175%, 0.175% + 1 point).
    close(
        result.threshold.unwrap_or_default(),
        10.0 / 5700.0 + 0.01,
        1e-12,
        "threshold",
    );
    assert!(
        result.reason.starts_with(
            "canary share slower than 250 ms 4.00% vs stable 0.18% over 60s: worse than stable"
        ),
        "{}",
        result.reason
    );
}

#[test]
fn the_slow_bound_is_the_bucket_holding_stables_quantile() {
    let stable = |fast: f64, medium: f64, slow: f64| match latency(fast, medium, slow).latency_ms {
        Observed::Value(buckets) => buckets,
        _ => Vec::new(),
    };
    assert_eq!(slow_bound(&stable(5000.0, 690.0, 10.0), 0.99), Some(250.0));
    assert_eq!(slow_bound(&stable(5000.0, 690.0, 10.0), 0.5), Some(100.0));
    assert_eq!(slow_bound(&stable(5000.0, 690.0, 10.0), 0.25), Some(50.0));
    // The quantile in the +Inf bucket: the highest finite bound.
    assert_eq!(slow_bound(&stable(10.0, 10.0, 80.0), 0.99), Some(500.0));
    assert_eq!(slow_bound(&[], 0.99), None);
}

#[test]
fn evaluate_window_gives_sequential_gates_their_age() {
    let gates = vec![GateSpec::new(GateCheck::Sequential(gate(
        SequentialMetric::ErrorRate,
    )))];
    let samples = Samples {
        canary: traffic(300.0, 2.0),
        stable: traffic(5700.0, 28.0),
    };
    assert_eq!(
        evaluate(&gates, 100, &samples).verdict,
        Verdict::Inconclusive
    );
    let mut spec = minimal_spec();
    spec.analysis.gates = gates.clone();
    let compiled = compile(&spec, "", "checkout").unwrap();
    let max_durations = compiled.sequential_max_durations();
    let young = evaluate_window(
        &gates,
        max_durations,
        100,
        &samples,
        Duration::from_secs(599),
        &[],
    );
    assert_eq!(young.verdict, Verdict::Inconclusive);
    let old = evaluate_window(
        &gates,
        max_durations,
        100,
        &samples,
        Duration::from_secs(600),
        &[],
    );
    assert_eq!(old.verdict, Verdict::Underpowered);
    assert_eq!(old.results[0].gate, "error-rate");
    assert!(
        old.results[0]
            .reason
            .contains("no regression found in 300 canary requests by maxDuration"),
        "{}",
        old.results[0].reason
    );
}

#[test]
fn the_window_runs_from_the_step_start_when_a_gate_is_sequential() {
    let mut spec: CanaryRolloutSpec = serde_json::from_value(serde_json::json!({
        "target": {"envoyEcds": {"path": "/e.yaml"}},
        "hosts": ["a"],
        "analysis": {"interval": "15s"}
    }))
    .unwrap_or_else(|error| unreachable!("{error}"));
    let at = |second: i64| Timestamp::from_second(second).unwrap_or_else(|e| unreachable!("{e}"));
    let status = CanaryRolloutStatus {
        step_started_at: Some(Time(at(1_000))),
        ..CanaryRolloutStatus::default()
    };
    // The default gates include the sequential error-rate gate.
    let table = [
        (Some(&status), 1_250_500, Duration::from_secs(250)),
        (Some(&status), 1_000_400, Duration::from_secs(1)), // never empty
        (Some(&status), 900_000, Duration::from_secs(1)),   // a clock that went back
        (None, 1_250_000, Duration::from_secs(15)),         // no step yet: the interval
    ];
    for (status, now_ms, window) in table {
        let now = Timestamp::from_millisecond(now_ms).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(analysis_window(&spec, status, now), window, "now {now_ms}");
        assert_eq!(
            compiled_analysis_window(&compiled(&spec), status, now),
            window,
            "compiled, now {now_ms}"
        );
    }
    spec.analysis
        .gates
        .retain(|gate| !matches!(gate.check, GateCheck::Sequential(_)));
    assert_eq!(
        analysis_window(&spec, Some(&status), at(1_250)),
        Duration::from_secs(15)
    );
    assert_eq!(
        compiled_analysis_window(&compiled(&spec), Some(&status), at(1_250)),
        Duration::from_secs(15)
    );
}

fn compiled(spec: &CanaryRolloutSpec) -> CompiledRollout {
    crate::validate::compile(spec, "", "checkout").unwrap_or_else(|e| unreachable!("{e}"))
}

/// One look at cumulative counts: (canary events, canary exposure, stable events, stable
/// exposure, window seconds).
fn looks(counts_seen: &[(f64, f64, f64, f64, u64)]) -> Tally {
    counts_seen
        .iter()
        .fold(
            None,
            |previous: Option<Tally>, &(ce, cx, se, sx, seconds)| {
                Some(Tally::next(
                    previous.as_ref(),
                    counts(ce, cx),
                    counts(se, sx),
                    Duration::from_secs(seconds),
                ))
            },
        )
        .unwrap_or_default()
}

#[test]
fn the_tally_reads_the_increments_between_looks() {
    // Six canary errors arriving together in one of four looks, stable's ten a look evenly.
    let clustered = looks(&[
        (0.0, 250.0, 10.0, 1000.0, 30),
        (6.0, 500.0, 20.0, 2000.0, 60),
        (6.0, 750.0, 30.0, 3000.0, 90),
        (6.0, 1000.0, 40.0, 4000.0, 120),
    ]);
    assert_eq!(clustered.step_increments, 4);
    close(clustered.step_square_ratio, 36.0 / 16.0, 1e-12, "Σ x²/m");
    // X² = (Σ x²/m − x·share) / (share (1 − share)), share 6/46, over 3 degrees; stable's
    // Poisson X² is 0 (exactly its rate each look), 3 degrees weighted 3; the prior 6 looks at 5.
    let share = 6.0 / 46.0;
    let pearson = (36.0 / 16.0 - 6.0 * share) / (share * (1.0 - share));
    close(
        clustered.dispersion(),
        (pearson + 6.0 * 5.0) / (3.0 + 3.0 * 3.0 + 6.0),
        1e-12,
        "clustered dispersion",
    );
    // The same errors spread evenly over the looks vary as independent requests would.
    let even = looks(&[
        (1.5, 250.0, 10.0, 1000.0, 30),
        (3.0, 500.0, 20.0, 2000.0, 60),
        (4.5, 750.0, 30.0, 3000.0, 90),
        (6.0, 1000.0, 40.0, 4000.0, 120),
    ]);
    close(
        even.dispersion(),
        (6.0 * 5.0) / (3.0 + 3.0 * 3.0 + 6.0),
        1e-12,
        "even dispersion",
    );
    assert!(clustered.dispersion() > even.dispersion() + 0.5);
    // Before any increment: the prior.
    assert_eq!(Tally::default().dispersion(), 5.0);
}

#[test]
fn a_shorter_window_starts_a_new_step_and_keeps_what_the_last_one_showed() {
    let tally = looks(&[
        (0.0, 250.0, 10.0, 1000.0, 30),
        (6.0, 500.0, 20.0, 2000.0, 60),
        (6.0, 750.0, 30.0, 3000.0, 90),
        // The next step's first look: a 30 s window, counts from zero again.
        (1.0, 1250.0, 9.0, 750.0, 30),
    ]);
    assert_eq!(tally.step_increments, 1);
    assert_eq!(tally.canary_events, 1.0);
    assert_eq!(tally.earlier_degrees, 2.0);
    let share = 6.0 / 36.0;
    close(
        tally.earlier_pearson,
        (36.0 / 16.0 - 6.0 * share) / (share * (1.0 - share)),
        1e-12,
        "the first step's X²",
    );
    assert_eq!(tally.earlier_stable_degrees, 2.0);
}

#[test]
fn many_independent_looks_bring_the_dispersion_to_one_and_clusters_keep_it_high() {
    // Deterministic "independent" increments: each look's counts at their expected values
    // give X² = 0, so the prior's weight fades and the dispersion falls to its floor of 1.
    let mut seen = Vec::new();
    for look in 1..=60u64 {
        let n = look as f64;
        seen.push((0.75 * n, 150.0 * n, 14.25 * n, 2850.0 * n, 30 * look));
    }
    assert!(
        looks(&seen).dispersion() < 1.15,
        "{}",
        looks(&seen).dispersion()
    );
    // A cluster of 9 errors every fourth look on each version, nothing between.
    let mut seen = Vec::new();
    for look in 1..=60u64 {
        let bursts = (look / 4) as f64;
        seen.push((
            9.0 * bursts,
            150.0 * look as f64,
            9.0 * 19.0 * bursts,
            2850.0 * look as f64,
            30 * look,
        ));
    }
    assert!(
        looks(&seen).dispersion() > 5.0,
        "{}",
        looks(&seen).dispersion()
    );
}

#[test]
fn dispersed_counts_weigh_less() {
    let canary = counts(8.0, 300.0);
    let stable = counts(28.0, 5_700.0);
    let independent = decide(
        canary,
        stable,
        Worse::Higher,
        MARGIN,
        0.01,
        Dispersion::both(1.0),
        false,
    );
    assert_eq!(independent.verdict, Verdict::Fail);
    let dispersed = decide(
        canary,
        stable,
        Worse::Higher,
        MARGIN,
        0.01,
        Dispersion::both(4.0),
        false,
    );
    assert_eq!(
        dispersed.verdict,
        Verdict::Inconclusive,
        "{}",
        dispersed.reason
    );
    close(
        dispersed.evidence,
        log_evidence(2.0, 9.0, 0.05, &Mixture::worse_ratios()).exp(),
        1e-12,
        "evidence on counts divided by 4",
    );
    // Below 1 is read as 1: counts never weigh more than independent ones.
    assert_eq!(
        decide(
            canary,
            stable,
            Worse::Higher,
            MARGIN,
            0.01,
            Dispersion::both(0.5),
            false
        )
        .evidence,
        independent.evidence
    );
}

#[test]
fn an_unreadable_look_keeps_the_tally() {
    let previous = GateResult {
        sequential: Some(SequentialLook {
            evidence: 3.0,
            evidence_needed: 100.0,
            dispersion: 2.0,
            canary_unit_dispersion: None,
            stable_unit_dispersion: None,
            canary_pod_dispersion: None,
            stable_pod_dispersion: None,
            tally: independent_tally(),
        }),
        ..GateResult::blank("error-rate")
    };
    let unreadable = Samples {
        canary: VersionSamples {
            requests: Observed::Failed("timeout".into()),
            ..VersionSamples::default()
        },
        ..Samples::default()
    };
    let result = gate(SequentialMetric::ErrorRate).judge_over(
        "error-rate",
        100,
        &unreadable,
        Some(Duration::from_secs(60)),
        None,
        Some(&previous),
    );
    assert_eq!(result.verdict, Verdict::Error);
    assert_eq!(result.sequential, previous.sequential);
}

#[test]
fn an_underpowered_end_says_what_could_have_been_missed() {
    let decision = decide(
        counts(2.0, 300.0),
        counts(28.0, 5_700.0),
        Worse::Higher,
        MARGIN,
        0.01,
        Dispersion::both(1.0),
        true,
    );
    assert_eq!(decision.verdict, Verdict::Underpowered);
    let ratio = decision.canary_bound / (28.0 / 5_700.0);
    assert!(
        decision
            .reason
            .starts_with("no regression found in 300 canary requests")
            && decision.reason.contains(&format!(
                "a {}× regression could have been missed",
                trim(ratio)
            )),
        "{}",
        decision.reason
    );
    // Business events: a drop.
    let fewer = decide(
        counts(10.0, 100.0),
        counts(190.0, 1_900.0),
        Worse::Lower,
        MARGIN,
        0.01,
        Dispersion::both(1.0),
        true,
    );
    assert_eq!(fewer.verdict, Verdict::Underpowered);
    assert!(
        fewer.reason.contains("could have been missed"),
        "{}",
        fewer.reason
    );
}

#[test]
fn unit_dispersion_compares_the_units_spread_with_independent_requests() {
    let even = |events: f64, exposure: f64, units: usize| vec![counts(events, exposure); units];
    let mut one_unit_has_all = even(0.0, 1000.0, 16);
    one_unit_has_all[0].events = 20.0;
    // Units of unequal sizes with events in proportion.
    let proportional = vec![
        counts(1.0, 100.0),
        counts(2.0, 200.0),
        counts(4.0, 400.0),
        counts(8.0, 800.0),
    ];
    let mut without_requests = even(3.0, 1000.0, 3);
    without_requests.push(counts(0.0, 0.0));
    let table: Vec<(&str, Vec<Counts>, Option<f64>)> = vec![
        (
            "events exactly in proportion",
            even(5.0, 1000.0, 16),
            Some(0.0),
        ),
        ("proportional in unequal units", proportional, Some(0.0)),
        // Left out, unit 0 gives 0 and the others 20/15000; their mean is 20/16000, so the
        // jackknife is 15/16 · ((20/16000)² + 15 (20/15000 − 20/16000)²) = 1.5625e-6, over the
        // Poisson 20/16000²: 20.
        ("every event in one unit", one_unit_has_all, Some(20.0)),
        ("too few units", even(5.0, 1000.0, MIN_UNITS - 1), None),
        (
            "a unit without requests does not count",
            without_requests,
            None,
        ),
        ("no events", even(0.0, 1000.0, 16), None),
    ];
    for (what, units, want) in table {
        match (unit_dispersion(&units), want) {
            (Some(got), Some(want)) => close(got + 1.0, want + 1.0, 1e-12, what),
            (got, want) => assert_eq!(got, want, "{what}"),
        }
    }
}

/// A version of as many parts (units or Pods) as `errors` has, `requests` each, the errors given
/// part by part, in totals (`traffic`) and in the parts `name` names.
fn in_parts(requests: f64, errors: &[f64], name: impl Fn(usize) -> String) -> VersionSamples {
    let mut samples = traffic(requests * errors.len() as f64, errors.iter().sum());
    samples.units = errors
        .iter()
        .enumerate()
        .map(|(i, errors)| UnitSamples {
            unit: name(i),
            requests,
            server_errors: *errors,
            latency_ms: Vec::new(),
        })
        .collect();
    samples
}

/// `requests` each of `units` units, the errors given unit by unit.
fn in_units(requests: f64, errors: &[f64]) -> VersionSamples {
    in_parts(requests, errors, |i| i.to_string())
}

/// The error-rate gate's look at `canary` against `stable` over `seconds`.
fn errors_judged(canary: &VersionSamples, stable: &VersionSamples, seconds: u64) -> GateResult {
    let samples = Samples {
        canary: canary.clone(),
        stable: stable.clone(),
    };
    judged_over(
        &gate(SequentialMetric::ErrorRate),
        "errors",
        100,
        &samples,
        Some(Duration::from_secs(seconds)),
    )
}

#[test]
fn excess_errors_in_one_unit_are_not_the_versions_but_spread_over_all_units_they_are() {
    // Canary at 5% against stable at 0.5%: 16 units each. The canary's 135 errors are 1.7×
    // stable's rate; spread over its units they fail it, all but 75 of them in one unit (one
    // heavy user) they say little about the rest of its users.
    let stable = in_units(19_000.0, &[95.0; 16]);
    let spread = in_units(1000.0, &[135.0 / 16.0; 16]);
    let mut one_unit = [5.0; 16];
    one_unit[0] = 60.0;
    let one_unit = in_units(1000.0, &one_unit);
    let judge = |canary: &VersionSamples| errors_judged(canary, &stable, 300);
    let failed = judge(&spread);
    assert_eq!(failed.verdict, Verdict::Fail, "{}", failed.reason);
    let look = failed.sequential.unwrap_or_else(|| panic!("a look"));
    assert!(look.canary_unit_dispersion.is_some_and(|d| d < 1e-9));
    let held = judge(&one_unit);
    assert_eq!(held.verdict, Verdict::Inconclusive, "{}", held.reason);
    assert!(
        held.reason.ends_with(
            "; between units counts vary 22.4 (canary) and 0.0 (stable) times as much as independent \
             requests"
        ),
        "{}",
        held.reason
    );
    let look = held.sequential.unwrap_or_else(|| panic!("a look"));
    // Left out, unit 0 gives 75/15000 and the others 130/15000: the jackknife is
    // 15/16 · ((75 − 126.5625)² + 15 (130 − 126.5625)²) / 15000² = 1.1816e-5, over the Poisson
    // 135/16000²: 22.41.
    close(
        look.canary_unit_dispersion.unwrap_or_default(),
        15.0 / 16.0 * (51.5625_f64.powi(2) + 15.0 * 3.4375_f64.powi(2))
            / 15_000.0_f64.powi(2)
            / (135.0 / 16_000.0_f64.powi(2)),
        1e-9,
        "canary's unit dispersion",
    );
    // The same totals without units: the counts alone fail it.
    let mut totals_only = one_unit.clone();
    totals_only.units.clear();
    assert_eq!(judge(&totals_only).verdict, Verdict::Fail);
}

#[test]
fn pod_dispersion_pools_the_spread_between_the_pods_of_both_versions() {
    let pods = |events: &[f64]| -> Vec<Counts> {
        events
            .iter()
            .map(|&events| counts(events, 1000.0))
            .collect()
    };
    let mut without_requests = pods(&[10.0, 20.0, 30.0]);
    without_requests.push(counts(0.0, 0.0));
    // (what, canary's Pods, stable's Pods, Some((τ², canary's dispersion, stable's))).
    type Row = (
        &'static str,
        Vec<Counts>,
        Vec<Counts>,
        Option<(f64, f64, f64)>,
    );
    let table: Vec<Row> = vec![
        (
            "events in proportion in every Pod",
            pods(&[15.0, 15.0]),
            pods(&[15.0; 4]),
            Some((0.0, 1.0, 1.0)),
        ),
        // Stable: rate 0.015, μ = 15 per Pod, Σ(x − μ)² = 300, c = 1 − 2/4 + 4/16 = 0.75.
        // Canary: exactly its rate, c = 1 − 1 + 1/2 = 0.5. τ² = (300 − 0.75·60 − 0.5·30) /
        // (0.75·4·225 + 0.5·2·225) = 240/900; each version's Σμ²/Σμ is 15: 1 + 4 = 5.
        (
            "stable's spread is the canary's too",
            pods(&[15.0, 15.0]),
            pods(&[10.0, 10.0, 10.0, 30.0]),
            Some((240.0 / 900.0, 5.0, 5.0)),
        ),
        (
            "a whole canary three times worse is no spread",
            pods(&[45.0, 45.0]),
            pods(&[15.0; 4]),
            Some((0.0, 1.0, 1.0)),
        ),
        // A lone canary Pod adds no degree of freedom (c = 0) but is weighed by stable's τ²:
        // stable's Σ(x − 20)² = 200, c = 2/3, τ² = (200 − 40)/800 = 0.2; Σμ²/Σμ = 20.
        (
            "a one-Pod canary takes stable's spread",
            pods(&[20.0]),
            pods(&[10.0, 20.0, 30.0]),
            Some((0.2, 5.0, 5.0)),
        ),
        (
            "a Pod without requests does not count",
            pods(&[20.0]),
            without_requests,
            Some((0.2, 5.0, 5.0)),
        ),
        ("too few Pods", pods(&[20.0]), pods(&[10.0, 30.0]), None),
        ("no events", pods(&[0.0; 2]), pods(&[0.0; 4]), None),
        ("no Pods", Vec::new(), Vec::new(), None),
    ];
    for (what, canary, stable, want) in table {
        let got = pod_dispersion(&canary, &stable);
        match (got, want) {
            (Some(got), Some((variance, canary, stable))) => {
                close(got.variance + 1.0, variance + 1.0, 1e-12, what);
                close(got.canary, canary, 1e-12, what);
                close(got.stable, stable, 1e-12, what);
            }
            (got, want) => assert_eq!(got.is_some(), want.is_some(), "{what}: {got:?}"),
        }
    }
}

/// `requests` each of as many Pods as `errors` has, the errors given Pod by Pod.
fn in_pods(requests: f64, errors: &[f64]) -> VersionSamples {
    let mut samples = in_parts(requests, errors, |i| format!("pod-{i}"));
    samples.pods = std::mem::take(&mut samples.units);
    samples
}

#[test]
fn a_stalled_canary_pod_is_one_pod_but_a_regression_of_every_pod_fails() {
    // Stable: 20 Pods at 1%, half of them at 0.2% and half at 1.8% (Pods differ). The canary's
    // 4 Pods: 160 errors of 4,000 (4×), once with 130 of them in one bad Pod, once spread.
    let stable = in_pods(1000.0, &[2.0, 18.0].repeat(10));
    let one_pod = in_pods(1000.0, &[10.0, 10.0, 10.0, 130.0]);
    let every_pod = in_pods(1000.0, &[40.0; 4]);
    let judge = |canary: &VersionSamples| errors_judged(canary, &stable, 300);
    let held = judge(&one_pod);
    assert_eq!(held.verdict, Verdict::Inconclusive, "{}", held.reason);
    let look = held.sequential.clone().unwrap_or_else(|| panic!("a look"));
    // Σ(x − μ)²: stable 20·64 = 1280, canary 3·900 + 8100 = 10800; c: 0.95 and 0.75;
    // τ² = (12080 − 0.95·200 − 0.75·160) / (0.95·20·100 + 0.75·4·1600) = 11770/6700.
    // At the rate both would share, 360/24000, every Pod expects 15 events: 1 + 15τ² each.
    let variance = 11_770.0 / 6_700.0;
    for (what, got) in [
        ("canary's", look.canary_pod_dispersion),
        ("stable's", look.stable_pod_dispersion),
    ] {
        close(got.unwrap_or_default(), 1.0 + variance * 15.0, 1e-9, what);
    }
    assert!(
        held.reason.ends_with(
            "; between Pods counts vary 27.4 (canary) and 27.4 (stable) times as much as \
             independent requests"
        ),
        "{}",
        held.reason
    );
    let failed = judge(&every_pod);
    assert_eq!(failed.verdict, Verdict::Fail, "{}", failed.reason);
    // The same totals without Pods: the counts alone fail it.
    let mut totals_only = one_pod.clone();
    totals_only.pods.clear();
    assert_eq!(judge(&totals_only).verdict, Verdict::Fail);
}

#[test]
fn a_version_whose_pods_saw_no_stall_is_weighed_at_the_shared_rate() {
    // Half the traffic each, four Pods each: one canary Pod stalled (every request slow), no
    // stable Pod did in this window. At its own rate stable would look exact (no events, no
    // spread) and the canary's stall alone would fail it; under the null both share a rate.
    let canary = [
        counts(0.0, 1000.0),
        counts(0.0, 1000.0),
        counts(0.0, 1000.0),
        counts(1000.0, 1000.0),
    ];
    let stable = [counts(0.0, 1000.0); 4];
    let spread = pod_dispersion(&canary, &stable).unwrap_or_else(|| panic!("a spread"));
    // Canary: rate 0.25, μ̂ = 250, Σ(x − μ̂)² = 750000, c = 0.75: τ² = (750000 − 750)/187500.
    let variance = (750_000.0 - 750.0) / 187_500.0;
    close(spread.variance, variance, 1e-12, "τ²");
    // Shared rate 1000/8000: each Pod expects 125 events.
    close(spread.canary, 1.0 + 125.0 * variance, 1e-12, "canary");
    close(spread.stable, 1.0 + 125.0 * variance, 1e-12, "stable");
    let decision = decide(
        counts(1000.0, 4000.0),
        counts(0.0, 4000.0),
        Worse::Higher,
        Margin {
            max_ratio: 1.5,
            max_increase: 0.0,
            max_drop: 0.0,
        },
        0.001,
        Dispersion {
            canary: spread.canary,
            stable: spread.stable,
        },
        false,
    );
    assert_eq!(
        decision.verdict,
        Verdict::Inconclusive,
        "{}",
        decision.reason
    );
}

#[test]
fn only_a_pod_apart_from_the_others_is_left_out() {
    let pods = |events: &[f64]| -> Vec<Counts> {
        events
            .iter()
            .map(|&events| counts(events, 1000.0))
            .collect()
    };
    let total = |pods: &[Counts]| Counts {
        events: pods.iter().map(|pod| pod.events).sum(),
        exposure: pods.iter().map(|pod| pod.exposure).sum(),
    };
    let table: Vec<(&str, Vec<Counts>, Option<Counts>)> = vec![
        // 71 events of 80, a quarter of the requests: 51 above its share, sd √(80·¼·¾) = 3.9.
        (
            "one stalled Pod",
            pods(&[3.0, 3.0, 3.0, 71.0]),
            Some(counts(9.0, 3000.0)),
        ),
        // A regression of every Pod: the largest, 38 of 132, is 5 above its share, sd 5.
        (
            "every Pod worse alike",
            pods(&[31.0, 35.0, 28.0, 38.0]),
            None,
        ),
        // 20 of 40 against a share of 10: sd √(40·¼·¾) = 2.74, 10 is 3.65 sd.
        (
            "just apart",
            pods(&[6.0, 7.0, 7.0, 20.0]),
            Some(counts(20.0, 3000.0)),
        ),
        // 17 of 37 against a share of 9.25: sd √(37·¼·¾) = 2.63, 7.75 is 2.94 sd: kept.
        ("just not apart", pods(&[7.0, 7.0, 6.0, 17.0]), None),
        ("one Pod", pods(&[71.0]), None),
        ("no events", pods(&[0.0; 4]), None),
    ];
    for (what, pods, want) in table {
        assert_eq!(without_worst_pod(total(&pods), &pods), want, "{what}");
    }
}

#[test]
fn a_canary_worse_only_by_one_stalled_pod_is_not_failed() {
    // A 5% canary's 5xx: one of its Pods failed every request of the window, the others are as
    // stable's 76 Pods (about 1%): the totals fail it, the Pods do not.
    let canary = in_pods(70.0, &[1.0, 1.0, 0.0, 71.0]);
    let stable = in_pods(70.0, &[0.0, 1.0, 1.0, 1.0].repeat(19));
    let held = errors_judged(&canary, &stable, 60);
    assert_eq!(held.verdict, Verdict::Inconclusive, "{}", held.reason);
    assert!(
        held.reason
            .contains("worse than stable only with its worst Pod: evidence "),
        "{}",
        held.reason
    );
    // Every canary Pod as bad as the stalled one's share: the same totals fail.
    let spread = in_pods(70.0, &[18.0, 18.0, 18.0, 19.0]);
    assert_eq!(spread.server_errors, canary.server_errors);
    let failed = errors_judged(&spread, &stable, 60);
    assert_eq!(failed.verdict, Verdict::Fail, "{}", failed.reason);
    // Without Pods the totals alone fail it too.
    let (mut canary_totals, mut stable_totals) = (canary, stable);
    canary_totals.pods.clear();
    stable_totals.pods.clear();
    assert_eq!(
        errors_judged(&canary_totals, &stable_totals, 60).verdict,
        Verdict::Fail
    );
}
