//! `bench-envoy`: what cohort's filter costs Envoy, against no filter and a no-op wasm filter.
//!
//! ```sh
//! scripts/bench-envoy [--reps 15] [--duration 2] [--connections 1] [--warmup 3] [--pin 1,0]
//! ```
//!
//! Starts the six set-ups of [`cohort_tests::bench`] side by side (one Envoy worker each),
//! warms each up, then runs `wrk` against each set-up in turn, `--reps` times (each repetition
//! starting one set-up later), and prints every run, the medians per set-up, and what (b), (c),
//! (g), (d) and (f) add over (a). Short runs, many times over: on a shared machine the speed of the cores
//! drifts within seconds, so what the filters add is taken within each repetition (the runs of
//! one repetition follow each other) and the median over repetitions is reported. A benchmark,
//! not a test: it asserts nothing about timing.

use std::process::{Command, ExitCode};
use std::time::Duration;

use cohort_tests::bench::{
    self as bench, drive, flags, median, Load, Medians, Run, Setup, EXPECTED_CANARY_SHARE,
    TARGET_RATIO, TARGET_RATIO_OVER_CONTRACT,
};
use cohort_tests::locate::envoy_binary;
use cohort_tests::Result;

const USAGE: &str = "usage: bench-envoy [--reps N] [--duration SECONDS] [--connections N] \
                     [--warmup SECONDS] [--workers N] [--pin ENVOY_CPUS,WRK_CPUS]";

/// cohort's added p50 target without events ((c)), µs.
const TARGET_ADDED_P50_US: f64 = 20.0;

#[derive(Debug)]
struct Args {
    reps: usize,
    warmup: Duration,
    workers: u32,
    load: Load,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        reps: 15,
        warmup: Duration::from_secs(3),
        workers: 1,
        load: Load {
            connections: 1,
            duration: Duration::from_secs(2),
            pin: None,
        },
    };
    for flag in flags(std::env::args().skip(1), USAGE)? {
        match flag.name.as_str() {
            "--reps" => args.reps = flag.number()?.max(1) as usize,
            "--duration" => args.load.duration = Duration::from_secs(flag.number()?.max(1)),
            "--connections" => args.load.connections = flag.number()?.max(1) as u32,
            "--warmup" => args.warmup = Duration::from_secs(flag.number()?),
            "--workers" => args.workers = flag.number()?.max(1) as u32,
            "--pin" => {
                let (envoy, wrk) = flag
                    .value
                    .split_once(',')
                    .ok_or_else(|| flag.refused("expected ENVOY_CPUS,WRK_CPUS"))?;
                args.load.pin = Some((envoy.to_owned(), wrk.to_owned()));
            }
            _ => return Err(flag.refused("unknown flag")),
        }
    }
    Ok(args)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".to_owned())
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|output| {
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            text.lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("?")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "?".to_owned())
}

fn print_run(rep: usize, setup: Setup, run: &Run) {
    println!(
        "rep {rep}  {:<24} {:>8} req  {:>8.0} req/s  p50 {:>7.1} µs  p99 {:>7.1} µs  \
         Envoy CPU {:>6.1} µs/req  canary {:>5.1}%",
        setup.label(),
        run.requests,
        run.throughput(),
        run.p50_us,
        run.p99_us,
        run.cpu_per_request_us(),
        run.canary_share * 100.0
    );
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench-envoy: {error}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    let args = parse_args()?;
    let envoy_path = envoy_binary()?;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!("# Envoy overhead");
    println!(
        "envoy: {} ({})",
        command_line(&envoy_path.to_string_lossy(), &["--version"]),
        envoy_path.display()
    );
    println!("wrk: {}", command_line("wrk", &["--version"]));
    let setups = Setup::selected();
    println!("{}", bench::modules_line(&setups)?);
    let labels: Vec<&str> = setups
        .iter()
        .map(|setup| setup.label().split(' ').next().unwrap_or_default())
        .collect();
    println!(
        "{cpus} CPUs; load average before: {}; Envoy --concurrency {}; wrk -t1 -c{}; {} s per run, \
         {} repetitions of {}, {} s warm-up each; pinning: {}",
        load_average(),
        args.workers,
        args.load.connections,
        args.load.duration.as_secs(),
        args.reps,
        labels.join(" "),
        args.warmup.as_secs(),
        args.load
            .pin
            .as_ref()
            .map_or("none".to_owned(), |(envoy, wrk)| format!(
                "Envoy on CPU {envoy}, wrk on CPU {wrk}"
            )),
    );

    // Where a set-up's runs are kept: its place in `setups`.
    let index_of = |setup: Setup| setups.iter().position(|s| *s == setup).unwrap_or_default();
    let envoys = setups
        .iter()
        .map(|setup| setup.start(args.workers))
        .collect::<Result<Vec<_>>>()?;
    if args.warmup > Duration::ZERO {
        let warmup = Load {
            duration: args.warmup,
            ..args.load.clone()
        };
        for envoy in &envoys {
            drive(envoy, &warmup)?;
        }
    }

    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); setups.len()];
    for rep in 1..=args.reps {
        // Each repetition starts one set-up later than the one before, so no set-up always runs
        // first (after the idle print) or right after a given other one.
        for offset in 0..setups.len() {
            let index = (rep - 1 + offset) % setups.len();
            let run = drive(&envoys[index], &args.load)?;
            print_run(rep, setups[index], &run);
            runs[index].push(run);
        }
    }
    let load_after = load_average();

    let medians: Vec<Medians> = runs.iter().map(|runs| Medians::of(runs)).collect();
    // What each set-up adds over (a), within each repetition, then the median over repetitions.
    let added = |setup: Setup, f: fn(&Run) -> f64| -> f64 {
        let differences: Vec<f64> = runs[index_of(setup)]
            .iter()
            .zip(&runs[index_of(Setup::None)])
            .map(|(run, baseline)| f(run) - f(baseline))
            .collect();
        median(&differences)
    };
    let added_all = |setup: Setup| {
        [
            added(setup, |r| r.p50_us),
            added(setup, |r| r.p99_us),
            added(setup, Run::cpu_per_request_us),
        ]
    };
    let (noop, cohort, cohort_events, sets_header, contract_calls) = (
        added_all(Setup::Noop),
        added_all(Setup::Cohort),
        added_all(Setup::CohortEvents),
        added_all(Setup::SetsHeader),
        added_all(Setup::ContractCalls),
    );
    println!();
    println!(
        "## Medians of {} runs (load average after: {load_after})",
        args.reps
    );
    println!();
    println!("| set-up | req/s | p50 µs | p99 µs | Envoy CPU µs/req | canary share |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (setup, m) in setups.iter().zip(&medians) {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1}% |",
            setup.label(),
            m.throughput,
            m.p50_us,
            m.p99_us,
            m.cpu_us,
            m.canary_share * 100.0
        );
    }
    println!();
    println!("| added over (a), median of the repetitions' differences | p50 µs | p99 µs | Envoy CPU µs/req |");
    println!("|---|---:|---:|---:|");
    let compared = setups
        .contains(&Setup::Compare)
        .then(|| added_all(Setup::Compare));
    let mut rows = vec![
        (Setup::Noop, noop),
        (Setup::SetsHeader, sets_header),
        (Setup::ContractCalls, contract_calls),
        (Setup::Cohort, cohort),
        (Setup::CohortEvents, cohort_events),
    ];
    rows.extend(compared.map(|added| (Setup::Compare, added)));
    for (setup, added) in rows {
        println!(
            "| {} | {:+.1} | {:+.1} | {:+.1} |",
            setup.label(),
            added[0],
            added[1],
            added[2]
        );
    }
    println!();
    let ratios = |over: [f64; 3], base: [f64; 3]| {
        format!(
            "CPU per request {:.2}×, p50 {:.2}×, p99 {:.2}×",
            over[2] / base[2],
            over[0] / base[0],
            over[1] / base[1]
        )
    };
    println!(
        "(c) cohort, no events: added cost ÷ the no-op filter's: {} (target ≤ {TARGET_RATIO}×)",
        ratios(cohort, noop)
    );
    println!(
        "(g) cohort, with events: added cost ÷ the no-op filter's: {}",
        ratios(cohort_events, noop)
    );
    println!(
        "(g) cohort, with events: added cost ÷ (f)'s: {} (target ≤ {TARGET_RATIO_OVER_CONTRACT}×)",
        ratios(cohort_events, contract_calls)
    );
    println!(
        "(d)'s added cost ÷ the no-op filter's: {} (setting the routing header alone)",
        ratios(sets_header, noop)
    );
    println!(
        "(c) cohort, no events: added cost ÷ (d)'s: {}",
        ratios(cohort, sets_header)
    );
    println!(
        "(f)'s added cost ÷ the no-op filter's: {} (cohort's host calls alone)",
        ratios(contract_calls, noop)
    );
    if let Some(compared) = compared {
        println!(
            "the compared build's added cost ÷ the no-op filter's: {}",
            ratios(compared, noop)
        );
        println!(
            "(c) cohort, no events: added cost ÷ the compared build's: {}",
            ratios(cohort, compared)
        );
    }
    println!(
        "(c) cohort, no events: added p50 {:.1} µs (target ≤ {TARGET_ADDED_P50_US} µs at -c1); \
         (g) cohort, with events: {:.1} µs",
        cohort[0], cohort_events[0]
    );
    let c = medians[index_of(Setup::Cohort)];
    println!(
        "(c) cohort's canary share {:.1}% (expected about {:.1}%, as (g); (a) and (b) send \
         everyone to stable, (d) and (f) 30% to the canary)",
        c.canary_share * 100.0,
        EXPECTED_CANARY_SHARE * 100.0
    );
    Ok(())
}
