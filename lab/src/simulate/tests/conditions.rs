//! Each condition's transformation, by its moments under a fixed seed.

use super::super::conditions::*;
use super::*;
use cohort_rollout::evaluate::UnitSamples;

/// Mean and variance of `count` draws of a real number.
fn real_moments(count: u32, mut draw: impl FnMut() -> f64) -> (f64, f64) {
    let values: Vec<f64> = (0..count).map(|_| draw()).collect();
    let mean = values.iter().sum::<f64>() / f64::from(count);
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / f64::from(count - 1);
    (mean, variance)
}

/// A tick of `requests` expected requests to each version (half the traffic each).
fn tick<'a>(buckets: &'a [f64; BUCKETS], stalled: &'a [f64; BUCKETS], error_rate: f64) -> Tick<'a> {
    Tick {
        start_s: 0.0,
        length_s: 30.0,
        rps: 200.0,
        canary_share: 0.5,
        canary_error_rate: error_rate,
        stable_error_rate: error_rate,
        canary_buckets: buckets,
        stable_buckets: buckets,
        canary_stalled_buckets: stalled,
        stable_stalled_buckets: stalled,
    }
}

#[test]
fn condition_values_parse_and_bad_ones_name_the_flag() {
    let independent = Conditions::parse("independent").unwrap();
    assert_eq!(independent, Conditions::independent());
    let composed = Conditions::parse("retry-clusters:3+overdispersed:0.5+extrapolated").unwrap();
    assert_eq!(
        composed.name,
        "retry-clusters:3+overdispersed:0.5+extrapolated"
    );
    assert_eq!(composed.retry_cluster_mean, Some(3.0));
    assert_eq!(composed.overdispersion_cv, Some(0.5));
    assert_eq!(composed.scrape_s, Some(DEFAULT_SCRAPE_S));
    assert_eq!(
        Conditions::parse("heavy-user:0.05:4").unwrap().heavy_user,
        Some((0.05, 4.0))
    );
    assert_eq!(
        Conditions::parse("pod-stall:4:600:60:500")
            .unwrap()
            .pod_stall,
        Some(PodStall {
            pods: 4,
            every_s: 600.0,
            for_s: 60.0,
            add_ms: 500.0
        })
    );
    assert_eq!(
        Conditions::parse("diurnal").unwrap().diurnal_amplitude,
        Some(DEFAULT_DIURNAL_AMPLITUDE)
    );
    assert_eq!(
        Conditions::parse("diurnal:0.8").unwrap().diurnal_amplitude,
        Some(0.8)
    );
    assert_eq!(
        Conditions::parse("extrapolated:30").unwrap().scrape_s,
        Some(30.0)
    );
    assert_eq!(
        Conditions::parse("weight-lag:10").unwrap().weight_lag_s,
        Some(10.0)
    );
    for (bad, says) in [
        ("", "empty"),
        ("clustered", "not a condition"),
        ("retry-clusters", "takes MEAN"),
        ("retry-clusters:x", "not a number"),
        ("retry-clusters:0.5", "at least 1"),
        ("overdispersed:0", "above 0"),
        ("heavy-user:0.05", "takes SHARE:MULT"),
        ("heavy-user:1.5:4", "fraction"),
        ("pod-stall:4:600:60", "PODS:EVERY:FOR:ADD"),
        ("pod-stall:2.5:600:60:500", "whole number"),
        ("independent:1", "no parameters"),
        ("diurnal:1.5", "AMPLITUDE"),
        ("extrapolated:0.5", "SCRAPE"),
        ("weight-lag", "takes SECONDS"),
        ("weight-lag:-1", "at least 0"),
        ("diurnal+diurnal", "twice"),
    ] {
        let error = Conditions::parse(bad).unwrap_err();
        assert!(error.starts_with("--condition"), "{bad}: {error}");
        assert!(error.contains(says), "{bad}: {error}");
        assert!(
            error.contains("write e.g. independent, retry-clusters:3"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn independent_keeps_the_plain_draw_and_its_stream() {
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let tick = tick(&buckets, &buckets, 0.01);
    let conditions = Conditions::independent();
    let mut rng = Rng::new(5);
    let mut state = RunState::new(&conditions, &mut rng);
    let drawn = draw_totals(&conditions, &mut state, &mut rng, &tick);
    let mut plain = Rng::new(5);
    let canary = Counts::draw(&mut plain, 3000.0, 0.01, &buckets);
    let stable = Counts::draw(&mut plain, 3000.0, 0.01, &buckets);
    assert_eq!(drawn, (canary, stable));
}

#[test]
fn retry_clusters_keep_the_mean_and_inflate_the_variance() {
    let mut rng = Rng::new(11);
    let (mean, variance) = real_moments(20_000, || geometric(&mut rng, 3.0) as f64);
    // Geometric on 1, 2, …: mean m, variance m(m − 1).
    assert!((mean - 3.0).abs() < 0.05, "{mean}");
    assert!((variance / 6.0 - 1.0).abs() < 0.08, "{variance}");
    assert_eq!(geometric(&mut rng, 1.0), 1);
    // 3000 requests at 1%: 30 errors on average, variance 30 × (2·3 − 1) = 150 instead of ≈ 30.
    let (mean, variance) = real_moments(20_000, || {
        retry_cluster_errors(&mut rng, 3000, 0.01, 3.0) as f64
    });
    assert!(
        (mean - 30.0).abs() < 4.0 * (150.0f64 / 20_000.0).sqrt(),
        "{mean}"
    );
    assert!((variance / 150.0 - 1.0).abs() < 0.08, "{variance}");
    assert!(retry_cluster_errors(&mut rng, 10, 1.0, 50.0) <= 10);
    // Through the draw: the errors of a whole tick, same law.
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let conditions = Conditions::parse("retry-clusters:3").unwrap();
    let tick = tick(&buckets, &buckets, 0.01);
    let mut state = RunState::new(&conditions, &mut rng);
    let (mean, variance) = real_moments(10_000, || {
        draw_totals(&conditions, &mut state, &mut rng, &tick)
            .0
            .errors as f64
    });
    assert!((mean - 30.0).abs() < 0.6, "{mean}");
    assert!(variance > 4.0 * 30.0 && variance < 6.0 * 30.0, "{variance}");
}

#[test]
fn overdispersion_multiplies_the_error_rate_by_a_mean_one_factor() {
    let mut rng = Rng::new(12);
    let (mean, variance) = real_moments(40_000, || lognormal_factor(&mut rng, 0.5));
    assert!((mean - 1.0).abs() < 0.01, "{mean}");
    assert!((variance.sqrt() - 0.5).abs() < 0.02, "{variance}");
    // The tick's errors: mean μ, variance ≈ μ + μ²·CV² (binomial noise plus the factor's).
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let conditions = Conditions::parse("overdispersed:0.5").unwrap();
    let tick = tick(&buckets, &buckets, 0.01);
    let mut state = RunState::new(&conditions, &mut rng);
    let (mean, variance) = real_moments(20_000, || {
        draw_totals(&conditions, &mut state, &mut rng, &tick)
            .1
            .errors as f64
    });
    let expected = 30.0 + 30.0 * 30.0 * 0.25;
    assert!((mean - 30.0).abs() < 0.5, "{mean}");
    assert!(
        (variance / expected - 1.0).abs() < 0.1,
        "{variance} vs {expected}"
    );
}

#[test]
fn a_heavy_user_lands_in_one_version_by_its_bucket() {
    assert!(heavy_user_on_canary(0.03, 0.05));
    assert!(!heavy_user_on_canary(0.07, 0.05));
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let conditions = Conditions::parse("heavy-user:0.2:10").unwrap();
    let tick = tick(&buckets, &buckets, 0.01);
    let mut rng = Rng::new(13);
    let mut state = RunState::new(&conditions, &mut rng);
    let on_canary = heavy_user_on_canary(state.heavy_position, tick.canary_share);
    let (mut canary, mut stable) = (Vec::new(), Vec::new());
    for _ in 0..5000 {
        let (c, s) = draw_totals(&conditions, &mut state, &mut rng, &tick);
        canary.push(c);
        stable.push(s);
    }
    let mean = |counts: &[Counts], f: fn(&Counts) -> u64| {
        counts.iter().map(|c| f(c) as f64).sum::<f64>() / counts.len() as f64
    };
    // 6000 requests a tick: the heavy user's 1200 (at 10% errors) on its side, the other 4800
    // split evenly (at 1%).
    let (heavy, light) = if on_canary {
        (&canary, &stable)
    } else {
        (&stable, &canary)
    };
    assert!((mean(heavy, Counts::requests) - 3600.0).abs() < 5.0);
    assert!((mean(light, Counts::requests) - 2400.0).abs() < 5.0);
    assert!((mean(heavy, |c| c.errors) - (24.0 + 120.0)).abs() < 1.0);
    assert!((mean(light, |c| c.errors) - 24.0).abs() < 0.5);
    // Across runs the user is on the canary as often as the canary's share.
    let mut rng = Rng::new(14);
    let on = (0..20_000)
        .filter(|_| {
            let state = RunState::new(&conditions, &mut rng);
            heavy_user_on_canary(state.heavy_position, 0.05)
        })
        .count();
    assert!((on as f64 / 20_000.0 - 0.05).abs() < 0.005, "{on}");
}

#[test]
fn stalling_pods_slow_their_share_of_canary_requests() {
    let stall = PodStall {
        pods: 4,
        every_s: 600.0,
        for_s: 60.0,
        add_ms: 500.0,
    };
    // An idle pod starts a stall with chance q = 1 − e^(−30/600) a tick; a stall covers two
    // ticks. The stalled share is 2 / (2 + (1 − q)/q) in the long run.
    let q = 1.0 - (-30.0f64 / 600.0).exp();
    let expected = 2.0 / (2.0 + (1.0 - q) / q);
    let mut rng = Rng::new(15);
    let mut stalls = vec![0.0; 4];
    let mut seconds = Vec::new();
    let (mean, _) = real_moments(50_000, || {
        let share = advance_stalls(&mut stalls, &mut seconds, &mut rng, &stall, 30.0);
        // Each pod's stalled seconds make the share.
        assert_eq!(seconds.len(), 4);
        assert!((seconds.iter().sum::<f64>() / 120.0 - share).abs() < 1e-12);
        share
    });
    assert!((mean - expected).abs() < 0.005, "{mean} vs {expected}");
    assert_eq!(
        advance_stalls(&mut [], &mut seconds, &mut rng, &stall, 30.0),
        0.0
    );
    assert!(seconds.is_empty());
    // A stalled request's latency is 500 ms longer: nothing at or below 500 ms, most of it in
    // (500, 1000] (bucket 9).
    let stalled = shifted_lognormal_buckets(LATENCY_MEDIAN_MS, 500.0);
    assert!((stalled.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(stalled[..9].iter().sum::<f64>(), 0.0, "{stalled:?}");
    assert!(stalled[9] > 0.99, "{stalled:?}");
    // Stable runs as many pods as carry the canary's load per pod: 76 beside 4 at 5%.
    assert_eq!(stable_pods(4, 0.05), 76);
    assert_eq!(stable_pods(4, 0.01), 396);
    assert_eq!(stable_pods(4, 0.5), 4, "never fewer than the canary's");
    assert_eq!(stable_pods(4, 0.9), 4);
    assert_eq!(stable_pods(20, 0.01), MAX_STABLE_PODS as usize);
    assert_eq!(stable_pods(4, 0.0), MAX_STABLE_PODS as usize);
    // Through the draw at 5%: both versions get the same slow share on average; the canary's
    // four pods make its share per tick far noisier than stable's 76.
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let conditions = Conditions::parse("pod-stall:4:600:60:500").unwrap();
    let mut tick = tick(&buckets, &stalled, 0.0);
    tick.canary_share = 0.05;
    let mut state = RunState::new(&conditions, &mut rng);
    let (mut canary_shares, mut stable_shares) = (Vec::new(), Vec::new());
    let (mut slow_canary, mut slow_stable, mut canary_all, mut stable_all) = (0, 0, 0, 0);
    for _ in 0..20_000 {
        let (canary, stable) = draw_totals(&conditions, &mut state, &mut rng, &tick);
        let (canary_slow, stable_slow) = (
            canary.buckets[9..].iter().sum::<u64>(),
            stable.buckets[9..].iter().sum::<u64>(),
        );
        canary_shares.push(canary_slow as f64 / canary.requests().max(1) as f64);
        stable_shares.push(stable_slow as f64 / stable.requests().max(1) as f64);
        slow_canary += canary_slow;
        slow_stable += stable_slow;
        canary_all += canary.requests();
        stable_all += stable.requests();
    }
    assert_eq!(state.stable_stalls.len(), 76);
    // Slower than 500 ms: a healthy request rarely (≈ 2 in 10 000), a stalled one always.
    let healthy_slow: f64 = buckets[9..].iter().sum();
    let want = expected + (1.0 - expected) * healthy_slow;
    let share = slow_canary as f64 / canary_all as f64;
    assert!((share - want).abs() < 0.005, "{share} vs {want}");
    let stable_share = slow_stable as f64 / stable_all as f64;
    assert!(
        (stable_share - want).abs() < 0.002,
        "{stable_share} vs {want}"
    );
    let spread = |shares: &[f64]| {
        let mut values = shares.iter();
        real_moments(shares.len() as u32, || {
            values.next().copied().unwrap_or_default()
        })
        .1
        .sqrt()
    };
    let (canary_spread, stable_spread) = (spread(&canary_shares), spread(&stable_shares));
    assert!(
        canary_spread > 3.0 * stable_spread,
        "{canary_spread} vs {stable_spread}"
    );
}

/// Asserts that `pods` add up to `total` exactly (requests, 5xx, every bucket) and that no
/// pod has more 5xx than requests.
fn assert_pods_add_up(pods: &[Counts], total: &Counts, what: &str) {
    let mut sum = Counts::default();
    for pod in pods {
        assert!(pod.errors <= pod.requests(), "{what}: {pod:?}");
        sum.add(pod);
    }
    assert_eq!(&sum, total, "{what}");
}

#[test]
fn pods_split_each_tick_exactly_and_the_stalled_ones_are_slow() {
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let stalled = shifted_lognormal_buckets(LATENCY_MEDIAN_MS, 500.0);
    // Both 5xx splits: few 5xx (fewer than the pods) and many.
    for error_rate in [0.002, 0.3] {
        let conditions = Conditions::parse("pod-stall:4:300:45:500").unwrap();
        let mut tick = tick(&buckets, &stalled, error_rate);
        let mut rng = Rng::new(17);
        let mut state = RunState::new(&conditions, &mut rng).reporting_pods(&conditions, &rng);
        // (slow, all) requests of pods stalled all tick and of pods not stalled at all.
        let (mut stalled_pods, mut idle_pods) = ((0, 0), (0, 0));
        for round in 0..3000 {
            // The weight moves now and then, and stable's pods with it.
            tick.canary_share = [0.01, 0.05, 0.25][round / 1000];
            let (canary, stable) = conditions.draw(&mut state, &mut rng, &tick, 16);
            let (canary_pods, stable_pods_drawn) = state.pods();
            assert_eq!(canary_pods.len(), 4);
            assert_eq!(
                stable_pods_drawn.len(),
                stable_pods(4, tick.canary_share),
                "{round}"
            );
            for (pods, units, v) in [(canary_pods, &canary, 0), (stable_pods_drawn, &stable, 1)] {
                let mut total = Counts::default();
                units.iter().for_each(|unit| total.add(unit));
                assert_pods_add_up(pods, &total, &format!("tick {round}"));
                for (pod, &seconds) in pods.iter().zip(&state.stalled_s[v]) {
                    let slow = pod.buckets[9..].iter().sum::<u64>();
                    let tally = if seconds >= 30.0 {
                        &mut stalled_pods
                    } else if seconds == 0.0 {
                        &mut idle_pods
                    } else {
                        continue;
                    };
                    tally.0 += slow;
                    tally.1 += pod.requests();
                }
            }
        }
        // A pod stalled all tick serves every request 500 ms late; one not stalled almost none
        // (≈ 2 in 10 000 of healthy requests are that slow).
        let share = |(slow, all): (u64, u64)| slow as f64 / all as f64;
        assert!(stalled_pods.1 > 10_000 && idle_pods.1 > 10_000);
        assert_eq!(share(stalled_pods), 1.0, "{stalled_pods:?}");
        assert!(share(idle_pods) < 0.001, "{idle_pods:?}");
    }
}

#[test]
fn a_partly_stalled_pod_gets_its_seconds_share_of_each_part() {
    let mut rng = Rng::new(18);
    let healthy = Counts {
        buckets: [
            0, 0, 0, 0, 0, 0, 4000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        errors: 40,
    };
    let slow = Counts {
        buckets: [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 1000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        errors: 0,
    };
    // Pod 0 stalled 20 s of 30, pod 1 10 s, pods 2 and 3 not at all: of the unstalled
    // requests pod 0 serves 10/90, pod 1 20/90, the others 30/90; of the stalled 2/3 and 1/3.
    let seconds = [20.0, 10.0, 0.0, 0.0];
    let (mut pods, mut scratch) = (Vec::new(), PodScratch::default());
    let mut sums = [[0.0; 2]; 4];
    for _ in 0..2000 {
        split_by_pod(
            &mut rng,
            &[healthy, slow],
            &seconds,
            30.0,
            &mut pods,
            &mut scratch,
        );
        let mut total = healthy;
        total.add(&slow);
        assert_pods_add_up(&pods, &total, "split");
        for (sum, pod) in sums.iter_mut().zip(&pods) {
            sum[0] += pod.buckets[6] as f64 / 2000.0;
            sum[1] += pod.buckets[9] as f64 / 2000.0;
        }
    }
    let want = [
        [4000.0 / 9.0, 2000.0 / 3.0],
        [8000.0 / 9.0, 1000.0 / 3.0],
        [4000.0 / 3.0, 0.0],
        [4000.0 / 3.0, 0.0],
    ];
    for (got, want) in sums.iter().zip(&want) {
        for (got, want) in got.iter().zip(want) {
            assert!((got - want).abs() < 2.0, "{sums:?}");
        }
    }
    // No pods, no split.
    split_by_pod(
        &mut rng,
        &[healthy, slow],
        &[],
        30.0,
        &mut pods,
        &mut scratch,
    );
    assert!(pods.is_empty());
}

#[test]
fn reporting_pods_leaves_every_other_draw_as_it_was() {
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let stalled = shifted_lognormal_buckets(LATENCY_MEDIAN_MS, 500.0);
    let mut tick = tick(&buckets, &stalled, 0.01);
    tick.canary_share = 0.05;
    for name in ["pod-stall:4:600:60:500", "independent", "retry-clusters:3"] {
        let conditions = Conditions::parse(name).unwrap();
        let (mut plain_rng, mut pods_rng) = (Rng::new(19), Rng::new(19));
        let mut plain = RunState::new(&conditions, &mut plain_rng);
        let mut with_pods =
            RunState::new(&conditions, &mut pods_rng).reporting_pods(&conditions, &pods_rng);
        for _ in 0..200 {
            assert_eq!(
                conditions.draw(&mut plain, &mut plain_rng, &tick, 16),
                conditions.draw(&mut with_pods, &mut pods_rng, &tick, 16),
                "{name}"
            );
            assert_eq!(plain.pods(), (&[][..], &[][..]), "{name}");
            let (canary, stable) = with_pods.pods();
            let want = if conditions.pod_stall.is_some() {
                (4, 76)
            } else {
                (0, 0)
            };
            assert_eq!((canary.len(), stable.len()), want, "{name}");
        }
    }
}

#[test]
fn the_ledger_reports_every_pod_of_the_window_adding_up_to_the_totals() {
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let stalled = shifted_lognormal_buckets(LATENCY_MEDIAN_MS, 500.0);
    let mut tick = tick(&buckets, &stalled, 0.01);
    tick.rps = 20.0;
    for name in [
        "pod-stall:4:600:60:500",
        "pod-stall:4:600:60:500+extrapolated",
    ] {
        let conditions = Conditions::parse(name).unwrap();
        let mut rng = Rng::new(20);
        let mut state = RunState::new(&conditions, &mut rng).reporting_pods(&conditions, &rng);
        let mut ledger = Ledger::new(30.0, conditions.scrape_s, 16, &mut rng);
        // Exact counts of each version since the start, to check the pods against under
        // `extrapolated` (whose totals are not exact).
        let mut exact = [Counts::default(); 2];
        let mut last = [Counts::default(); 2];
        for round in 0..20 {
            // Ten ticks at 1% (396 stable pods), ten at 25% (12).
            tick.canary_share = if round < 10 { 0.01 } else { 0.25 };
            let (canary, stable) = conditions.draw(&mut state, &mut rng, &tick, 16);
            ledger.record(&mut rng, &canary, &stable);
            ledger.record_pods(state.pods());
            for (v, units) in [&canary, &stable].into_iter().enumerate() {
                last[v] = Counts::default();
                units.iter().for_each(|unit| last[v].add(unit));
                exact[v].add(&last[v]);
            }
            let stable_now = stable_pods(4, tick.canary_share);
            for (window, pods_seen, since) in [
                (30.0, stable_now, last),
                // Since the start: the pods removed at 25% are still there.
                (30.0 * f64::from(round + 1), 396, exact),
            ] {
                let samples = ledger.samples(window);
                for (v, (version, pods)) in [(&samples.canary, 4), (&samples.stable, pods_seen)]
                    .into_iter()
                    .enumerate()
                {
                    if version.requests == Observed::NoData {
                        // Too few scrapes: no pods either.
                        assert!(version.pods.is_empty());
                        continue;
                    }
                    assert_eq!(version.pods.len(), pods, "{name} {round} {window}");
                    let names: Vec<&str> = version.pods.iter().map(|p| p.unit.as_str()).collect();
                    assert_eq!(names[..2], ["0", "1"]);
                    let sum =
                        |f: &dyn Fn(&UnitSamples) -> f64| version.pods.iter().map(f).sum::<f64>();
                    let (requests, errors) = (since[v].requests(), since[v].errors);
                    assert_eq!(sum(&|p| p.requests), requests as f64, "{name} {round}");
                    assert_eq!(sum(&|p| p.server_errors), errors as f64, "{name} {round}");
                    let mut below = 0;
                    for (i, count) in since[v].buckets.iter().enumerate() {
                        below += count;
                        assert_eq!(sum(&|p| p.latency_ms[i].count), below as f64);
                    }
                    if conditions.scrape_s.is_none() {
                        // The version's own totals are exact, and the pods add up to them.
                        assert_eq!(version.requests, Observed::Value(requests as f64));
                        assert_eq!(version.server_errors, Observed::Value(errors as f64));
                    }
                }
            }
        }
    }
    // Without pods recorded (every condition but pod-stall), no pods.
    let conditions = Conditions::parse("retry-clusters:3+extrapolated").unwrap();
    let mut rng = Rng::new(21);
    let mut state = RunState::new(&conditions, &mut rng).reporting_pods(&conditions, &rng);
    let mut ledger = Ledger::new(30.0, conditions.scrape_s, 16, &mut rng);
    for _ in 0..4 {
        let (canary, stable) = conditions.draw(&mut state, &mut rng, &tick, 16);
        ledger.record(&mut rng, &canary, &stable);
        let samples = ledger.samples(60.0);
        assert!(samples.canary.pods.is_empty() && samples.stable.pods.is_empty());
    }
}

#[test]
fn diurnal_traffic_follows_the_day() {
    let (mean, _) = real_moments(86_400, {
        let mut t = 0.0;
        move || {
            t += 1.0;
            diurnal_factor(t, 0.5, 1.0)
        }
    });
    assert!((mean - 1.0).abs() < 1e-6, "{mean}");
    assert!((diurnal_factor(DAY_S / 4.0, 0.5, 0.0) - 1.5).abs() < 1e-12);
    assert!((diurnal_factor(3.0 * DAY_S / 4.0, 0.5, 0.0) - 0.5).abs() < 1e-12);
    // Through the draw: both versions scale alike.
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let conditions = Conditions::parse("diurnal:0.5").unwrap();
    let mut rng = Rng::new(16);
    let mut state = RunState::new(&conditions, &mut rng);
    let phase = state.diurnal_phase;
    let mut noon = tick(&buckets, &buckets, 0.0);
    noon.start_s = (std::f64::consts::FRAC_PI_2 - phase).rem_euclid(std::f64::consts::TAU)
        / std::f64::consts::TAU
        * DAY_S;
    let (canary, stable): (Vec<_>, Vec<_>) = (0..2000)
        .map(|_| draw_totals(&conditions, &mut state, &mut rng, &noon))
        .unzip();
    let mean = |counts: &[Counts]| {
        counts.iter().map(|c| c.requests() as f64).sum::<f64>() / counts.len() as f64
    };
    assert!(
        (mean(&canary) / 4500.0 - 1.0).abs() < 0.01,
        "{}",
        mean(&canary)
    );
    assert!(
        (mean(&stable) / 4500.0 - 1.0).abs() < 0.01,
        "{}",
        mean(&stable)
    );
}

#[test]
fn prometheus_increase_extrapolates_to_the_window() {
    // Scrapes at 5 s and 20 s in (0, 30]: 30 counted over 15 s, extrapolated over 30 s.
    let far = [(5.0, 1000.0), (20.0, 1030.0)];
    assert_eq!(prometheus_increase(&far, 0.0, 30.0), Some(60.0));
    // A counter that starts at zero is not extrapolated to before its zero.
    let fresh = [(5.0, 0.0), (20.0, 30.0)];
    assert_eq!(prometheus_increase(&fresh, 0.0, 30.0), Some(50.0));
    // A gap at the end wider than 1.1 intervals: only half an interval is added.
    let early = [(1.0, 100.0), (2.0, 101.0), (3.0, 102.0)];
    assert_eq!(
        prometheus_increase(&early, 0.0, 30.0),
        Some(2.0 * 3.5 / 2.0)
    );
    assert_eq!(prometheus_increase(&far[..1], 0.0, 30.0), None);
    assert_eq!(prometheus_increase(&[], 0.0, 30.0), None);
}

#[test]
fn extrapolated_windows_are_noisy_but_unbiased_for_stable() {
    let buckets = lognormal_buckets(LATENCY_MEDIAN_MS);
    let conditions = Conditions::parse("extrapolated").unwrap();
    let tick = tick(&buckets, &buckets, 0.01);
    let (mut exact, mut read) = (Vec::new(), Vec::new());
    for seed in 0..400 {
        let mut rng = Rng::new(seed);
        let mut state = RunState::new(&conditions, &mut rng);
        let mut ledger = Ledger::new(30.0, conditions.scrape_s, 1, &mut rng);
        for _ in 0..4 {
            let (canary, stable) = draw_totals(&conditions, &mut state, &mut rng, &tick);
            ledger.record(&mut rng, &[canary], &[stable]);
            exact.push(stable.requests() as f64);
            let samples = ledger.samples(30.0);
            let Observed::Value(requests) = samples.stable.requests else {
                panic!("two scrapes in every 30 s window: {samples:?}");
            };
            read.push(requests);
        }
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    assert!((mean(&read) / mean(&exact) - 1.0).abs() < 0.01);
    // Not the exact counts: the extrapolation adds its own noise.
    assert!(read.iter().zip(&exact).filter(|(r, e)| r != e).count() > read.len() / 2);
    // Without `extrapolated`, a window is the exact sum of its ticks.
    let mut rng = Rng::new(1);
    let mut ledger = Ledger::new(30.0, None, 1, &mut rng);
    let (canary, stable) = draw_totals(
        &Conditions::independent(),
        &mut RunState::default(),
        &mut rng,
        &tick,
    );
    ledger.record(&mut rng, &[canary], &[stable]);
    ledger.record(&mut rng, &[canary], &[stable]);
    assert_eq!(
        ledger.samples(60.0).canary.requests,
        Observed::Value(2.0 * canary.requests() as f64)
    );
    assert_eq!(
        ledger.samples(30.0).stable.server_errors,
        Observed::Value(stable.errors as f64)
    );
}

/// One tick's draw of each version's total (one unit).
fn draw_totals(
    conditions: &Conditions,
    state: &mut RunState,
    rng: &mut Rng,
    tick: &Tick,
) -> (Counts, Counts) {
    let (canary, stable) = conditions.draw(state, rng, tick, 1);
    (canary[0], stable[0])
}
