//! `bench-instructions`: the instructions Envoy executes per request in each of the benchmark's
//! set-ups, counted by callgrind (see [`cohort_tests::instructions`]).
//!
//! ```sh
//! scripts/bench-envoy --instructions [--requests 3000] [--warmup 1000]
//! ```
//!
//! One run is enough: the counts repeat to within a fraction of a percent (they move only with
//! Envoy's own randomness, e.g. request ids and timers). Instructions are not time: a host call
//! that waits on memory costs more than its count says. The CPU-time bench is the reference;
//! this one tells apart changes too small for its noise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cohort_tests::bench::{self, flags, Setup, TARGET_RATIO, TARGET_RATIO_OVER_CONTRACT};
use cohort_tests::instructions::{Count, Counted};
use cohort_tests::Result;

const USAGE: &str = "usage: bench-instructions [--requests N] [--warmup N] [--idle SECONDS] \
                     [--keep DIR] [--setups abcdefg]";

#[derive(Debug)]
struct Args {
    requests: u64,
    warmup: u64,
    idle: Duration,
    /// Where each set-up's profile of the measured requests is kept.
    keep: Option<PathBuf>,
    /// The set-ups to run, by letter.
    setups: Vec<Setup>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        requests: 3000,
        warmup: 1000,
        idle: Duration::from_secs(5),
        keep: None,
        setups: Setup::selected(),
    };
    for flag in flags(std::env::args().skip(1), USAGE)? {
        match flag.name.as_str() {
            "--requests" => args.requests = flag.number()?.max(1),
            "--warmup" => args.warmup = flag.number()?,
            "--idle" => args.idle = Duration::from_secs(flag.number()?),
            "--keep" => args.keep = Some(PathBuf::from(&flag.value)),
            "--setups" => {
                args.setups = flag
                    .value
                    .chars()
                    .map(|letter| {
                        Setup::selected()
                            .into_iter()
                            .find(|setup| setup.letter() == letter)
                            .ok_or_else(|| {
                                flag.refused(&format!(
                                    "no set-up ({letter}); (e) needs COHORT_COMPARE_WASM"
                                ))
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            _ => return Err(flag.refused("unknown flag")),
        }
    }
    Ok(args)
}

/// One set-up's measurement: the requests, and an idle stretch to take the timers out.
struct Measured {
    setup: Setup,
    busy: Count,
    idle: Count,
}

impl Measured {
    /// Instructions per request, less what the idle timers ran over the same wall time.
    fn per_request(&self) -> f64 {
        let idle_per_second = self.idle.instructions as f64 / self.idle.wall.as_secs_f64();
        let idle_share = idle_per_second * self.busy.wall.as_secs_f64();
        (self.busy.instructions as f64 - idle_share) / self.busy.requests as f64
    }
}

fn run(args: &Args) -> Result<Vec<Measured>> {
    let mut measured = Vec::new();
    for &setup in &args.setups {
        eprintln!("{setup}: starting Envoy under callgrind");
        let counted = Counted::start(setup)?;
        let busy = counted.measure(args.warmup, args.requests)?;
        if let Some(dir) = &args.keep {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("callgrind.{}", setup.letter()));
            counted.save_last_dump(&path)?;
            eprintln!("{setup}: profile kept in {}", path.display());
        }
        let idle = counted.idle(args.idle)?;
        eprintln!(
            "{setup}: {} instructions for {} requests in {:.1} s; idle {} in {:.1} s",
            busy.instructions,
            busy.requests,
            busy.wall.as_secs_f64(),
            idle.instructions,
            idle.wall.as_secs_f64()
        );
        measured.push(Measured { setup, busy, idle });
    }
    Ok(measured)
}

fn report(measured: &[Measured]) {
    println!("| set-up | instructions per request | raw (no idle correction) | added over (a) |");
    println!("|---|---:|---:|---:|");
    let of = |setup: Setup| {
        measured
            .iter()
            .find(|m| m.setup == setup)
            .map(Measured::per_request)
    };
    let base = of(Setup::None);
    for m in measured {
        let per_request = m.per_request();
        let added = base.map_or(String::from("-"), |base| {
            format!("{:+.0}", per_request - base)
        });
        println!(
            "| {} | {per_request:.0} | {:.0} | {added} |",
            m.setup,
            m.busy.per_request()
        );
    }
    let (Some(base), Some(noop)) = (base, of(Setup::Noop)) else {
        return;
    };
    for line in ratio_lines(base, noop, of(Setup::ContractCalls), &|setup| of(setup)) {
        println!("{line}");
    }
}

/// One line per set-up: what it adds over (a) divided by what (b) adds, and for cohort with
/// events also divided by what (f), the same host calls, adds; each with its target where it has
/// one. `of` gives a set-up's instructions per request, if it ran.
fn ratio_lines(
    base: f64,
    noop: f64,
    contract: Option<f64>,
    of: &dyn Fn(Setup) -> Option<f64>,
) -> Vec<String> {
    let verdict = |ratio: f64, target: f64| {
        let met = if ratio <= target { "met" } else { "not met" };
        format!(" (target ≤ {target}×: {met})")
    };
    let mut lines = Vec::new();
    for setup in [
        Setup::Cohort,
        Setup::CohortEvents,
        Setup::SetsHeader,
        Setup::ContractCalls,
        Setup::Compare,
    ] {
        let Some(value) = of(setup) else {
            continue;
        };
        let ratio = (value - base) / (noop - base);
        let target = match setup {
            Setup::Cohort => verdict(ratio, TARGET_RATIO),
            _ => String::new(),
        };
        lines.push(format!("{setup} added ÷ (b) added: {ratio:.2}×{target}"));
        if let (Setup::CohortEvents, Some(contract)) = (setup, contract) {
            let ratio = (value - base) / (contract - base);
            lines.push(format!(
                "{setup} added ÷ (f) added: {ratio:.2}×{}",
                verdict(ratio, TARGET_RATIO_OVER_CONTRACT)
            ));
        }
    }
    lines
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let modules = match bench::modules_line(&args.setups) {
        Ok(line) => line,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(measured) => {
            println!("{modules}");
            report(&measured);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench-instructions: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_timers_share_is_taken_out() {
        let count = |requests, instructions, seconds| Count {
            requests,
            instructions,
            wall: Duration::from_secs(seconds),
        };
        let measured = Measured {
            setup: Setup::Cohort,
            // 2 s of requests; idle, the timers run 1,000 instructions a second.
            busy: count(100, 1_002_000, 2),
            idle: count(0, 5_000, 5),
        };
        assert_eq!(measured.per_request(), 10_000.0);
        assert_eq!(measured.busy.per_request(), 10_020.0);
    }

    #[test]
    fn each_cohort_setup_gets_its_ratio_lines() {
        // (a) 1000; (b) adds 100, (c) 125, (g) 210, (f) 200.
        let of = |setup| match setup {
            Setup::Cohort => Some(1125.0),
            Setup::CohortEvents => Some(1210.0),
            Setup::ContractCalls => Some(1200.0),
            _ => None,
        };
        assert_eq!(
            ratio_lines(1000.0, 1100.0, Some(1200.0), &of),
            [
                "(c) cohort, no events added ÷ (b) added: 1.25× (target ≤ 1.3×: met)",
                "(g) cohort, with events added ÷ (b) added: 2.10×",
                "(g) cohort, with events added ÷ (f) added: 1.05× (target ≤ 1.05×: met)",
                "(f) no-op + cohort's host calls added ÷ (b) added: 2.00×",
            ]
        );
    }
}
