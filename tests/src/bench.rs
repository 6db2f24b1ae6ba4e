//! The Envoy overhead benchmark behind `scripts/bench-envoy`: one Envoy bootstrap
//! (`manifests/envoy/bootstrap.yaml`, one worker) and the same two upstreams in six set-ups
//! (seven with (e)), driven by `wrk` at a fixed number of connections.
//!
//! - (a) [`Setup::None`]: no wasm filter, the router alone;
//! - (b) [`Setup::Noop`]: `bench/noop-filter`, a wasm filter that reads one header;
//! - (c) [`Setup::Cohort`]: cohort's filter with [`CONFIG`]'s three rollouts and no events:
//!   it decides, routes and counts the decision, and never reads the response;
//! - (g) [`Setup::CohortEvents`]: the same with one business event counted
//!   ([`CONFIG_WITH_EVENTS`]), so it also reads the events header of each response;
//! - (d) [`Setup::SetsHeader`]: the same no-op filter that also sets the routing header (canary
//!   for 30% of the users, by the last digit of their id), so Envoy matches the route again and
//!   splits the traffic as in (c): what routing by a header set in wasm costs at the least;
//! - (f) [`Setup::ContractCalls`]: the no-op filter making the host calls cohort makes per
//!   request in (g) (the request's header map, routing header and decision counter; the
//!   response's events header and events counter) without cohort's computation: the floor for
//!   any filter keeping the metric contract (ARCHITECTURE.md, Contracts);
//! - (e) [`Setup::Compare`], only when `$COHORT_COMPARE_WASM` names a `.wasm`: another build of
//!   cohort's filter with (c)'s config, to judge a change to the filter within one run.
//!
//! Every request carries a fresh `x-user-id` and one of the three rollouts' hosts, so cohort
//! really buckets (about a quarter of the requests go to the canary), and both upstreams report
//! a `checkout` event, so cohort counts events in (g). Envoy's CPU time is the scheduler's count
//! for all its threads over the run ([`cpu_time`]).

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::envoy::{Envoy, Filter, Options};
use crate::locate::build_wasm;
use crate::{Context, Error, Result, TempDir};

/// cohort's config in set-up (c): three rollouts, keyed on `x-user-id` (then the `uid` cookie),
/// no events.
pub const CONFIG: &str = r#"{"version": 1,
 "identity": [{"kind": "header", "name": "x-user-id"}, {"kind": "cookie", "name": "uid"}],
 "rollouts": {
  "cart": {"hosts": ["cart"], "weightBp": 2500},
  "checkout": {"hosts": ["checkout"], "weightBp": 500, "allowKeys": ["alice", "bob"]},
  "search": {"hosts": ["search"], "weightBp": 5000}
 }}"#;

/// cohort's config in set-up (g): [`CONFIG`] with one business event counted.
pub const CONFIG_WITH_EVENTS: &str = r#"{"version": 1,
 "identity": [{"kind": "header", "name": "x-user-id"}, {"kind": "cookie", "name": "uid"}],
 "events": ["checkout"],
 "rollouts": {
  "cart": {"hosts": ["cart"], "weightBp": 2500},
  "checkout": {"hosts": ["checkout"], "weightBp": 500, "allowKeys": ["alice", "bob"]},
  "search": {"hosts": ["search"], "weightBp": 5000}
 }}"#;

/// The no-op filter's configuration that makes it set `x-cohort-version` as well (set-up (d)).
pub use cohort_bench_noop_filter::SET_ROUTING_HEADER as NOOP_SETS_ROUTING_HEADER;

/// The no-op filter's configuration that makes it make cohort's host calls (set-up (f)).
pub use cohort_bench_noop_filter::CONTRACT_HOST_CALLS as NOOP_CONTRACT_HOST_CALLS;

/// cohort's added cost without events ((c)) over the no-op filter's, at most (issue 6's target,
/// for CPU time and for instructions alike).
pub const TARGET_RATIO: f64 = 1.3;

/// cohort's added cost with events ((g)) over that of the no-op filter making the same host
/// calls ((f)), at most: what cohort computes beyond its host calls.
pub const TARGET_RATIO_OVER_CONTRACT: f64 = 1.05;

/// The hosts requests rotate through, one per rollout.
pub const HOSTS: [&str; 3] = ["cart", "checkout", "search"];

/// The canary share [`HOSTS`] in rotation should give (the mean of the three weights).
pub const EXPECTED_CANARY_SHARE: f64 = (0.25 + 0.05 + 0.50) / 3.0;

/// `wrk`'s Lua script: request `n` goes to `HOSTS[n % 3]` as user `user-n`; at the end it
/// prints one machine-readable line (latencies in microseconds).
const WRK_SCRIPT: &str = r#"local hosts = {"cart", "checkout", "search"}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/", {["Host"] = hosts[n % 3 + 1], ["x-user-id"] = "user-" .. n})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("COHORT_BENCH requests=%d p50=%.2f p99=%.2f errors=%d non2xx=%d\n",
    summary.requests, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"#;

/// One of the set-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// (a) no wasm filter.
    None,
    /// (b) the no-op wasm filter.
    Noop,
    /// (c) cohort's filter, no events.
    Cohort,
    /// (g) cohort's filter counting one event.
    CohortEvents,
    /// (d) the no-op wasm filter setting the routing header.
    SetsHeader,
    /// (f) the no-op wasm filter making cohort's host calls.
    ContractCalls,
    /// (e) another build of cohort's filter (`$COHORT_COMPARE_WASM`).
    Compare,
}

impl Setup {
    /// (a), (b), (c), (g), (d), (f): the order of the first repetition (each later one starts
    /// one further).
    pub const ALL: [Setup; 6] = [
        Setup::None,
        Setup::Noop,
        Setup::Cohort,
        Setup::CohortEvents,
        Setup::SetsHeader,
        Setup::ContractCalls,
    ];

    /// The set-ups to run: [`Setup::ALL`], and (e) when `$COHORT_COMPARE_WASM` is set.
    pub fn selected() -> Vec<Setup> {
        let mut setups = Setup::ALL.to_vec();
        if std::env::var_os(COMPARE_WASM_VAR).is_some() {
            setups.push(Setup::Compare);
        }
        setups
    }

    /// The set-up's letter: `a` for (a) and so on.
    pub fn letter(self) -> char {
        match self {
            Setup::None => 'a',
            Setup::Noop => 'b',
            Setup::Cohort => 'c',
            Setup::CohortEvents => 'g',
            Setup::SetsHeader => 'd',
            Setup::ContractCalls => 'f',
            Setup::Compare => 'e',
        }
    }

    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Setup::None => "(a) no wasm filter",
            Setup::Noop => "(b) no-op wasm filter",
            Setup::Cohort => "(c) cohort, no events",
            Setup::CohortEvents => "(g) cohort, with events",
            Setup::SetsHeader => "(d) no-op + routing header",
            Setup::ContractCalls => "(f) no-op + cohort's host calls",
            Setup::Compare => "(e) cohort, compared build",
        }
    }

    /// Starts Envoy (`workers` worker threads) in this set-up, with upstreams that report a
    /// `checkout` event on every answer.
    pub fn start(self, workers: u32) -> Result<Envoy> {
        self.start_under(workers, &[], None)
    }

    /// [`Setup::start`] with Envoy run under `run_under` (a program and its arguments, e.g.
    /// valgrind), given `start_deadline` to come up.
    pub fn start_under(
        self,
        workers: u32,
        run_under: &[String],
        start_deadline: Option<Duration>,
    ) -> Result<Envoy> {
        let filter = match self {
            Setup::None => Filter::None,
            Setup::Noop => Filter::Wasm(noop_wasm()?),
            Setup::Cohort | Setup::CohortEvents => Filter::Cohort,
            Setup::SetsHeader | Setup::ContractCalls => Filter::Wasm(noop_wasm()?),
            Setup::Compare => Filter::Wasm(compare_wasm()?),
        };
        // The no-op filter ignores any other configuration.
        let config = match self {
            Setup::SetsHeader => NOOP_SETS_ROUTING_HEADER,
            Setup::ContractCalls => NOOP_CONTRACT_HOST_CALLS,
            Setup::CohortEvents => CONFIG_WITH_EVENTS,
            _ => CONFIG,
        };
        let options = Options {
            concurrency: workers,
            // The committed bootstrap's own interval.
            stats_flush_interval: "5s".to_owned(),
            filter,
            run_under: run_under.to_vec(),
            start_deadline,
            ..Options::default()
        };
        let envoy = Envoy::start_with(config, &options)?;
        envoy.stable.events(Some("checkout"));
        envoy.canary.events(Some("checkout"));
        Ok(envoy)
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The no-op filter's `.wasm`: `$COHORT_NOOP_WASM`, else built with the `wasm` profile.
pub fn noop_wasm() -> Result<PathBuf> {
    wasm_from_env("COHORT_NOOP_WASM").unwrap_or_else(|| build_wasm("cohort-bench-noop-filter"))
}

/// Which `.wasm` each set-up runs, as one line for the bench's header: the options of
/// `scripts/bench-envoy` swap the no-op filter and (e).
pub fn modules_line(setups: &[Setup]) -> Result<String> {
    let noop = noop_wasm()?;
    let mut line = format!(
        "modules: (b) (d) (f) {}; (c) (g) {}",
        noop.display(),
        crate::locate::filter_wasm()?.display()
    );
    if setups.contains(&Setup::Compare) {
        line += &format!("; (e) {}", compare_wasm()?.display());
    }
    Ok(line)
}

/// The environment variable naming set-up (e)'s `.wasm`.
pub const COMPARE_WASM_VAR: &str = "COHORT_COMPARE_WASM";

/// Set-up (e)'s `.wasm`: `$COHORT_COMPARE_WASM`.
pub fn compare_wasm() -> Result<PathBuf> {
    wasm_from_env(COMPARE_WASM_VAR).unwrap_or_else(|| {
        Err(Error(format!(
            "set-up (e) needs {COMPARE_WASM_VAR}: the path of a cohort_filter.wasm to compare"
        )))
    })
}

/// The `.wasm` environment variable `var` names (an error when it is not a file), or `None`
/// when it is unset.
fn wasm_from_env(var: &str) -> Option<Result<PathBuf>> {
    let path = PathBuf::from(std::env::var_os(var)?);
    Some(if path.is_file() {
        Ok(path)
    } else {
        Err(Error(format!("{var}={} is not a file", path.display())))
    })
}

/// How `wrk` drives Envoy.
#[derive(Debug, Clone)]
pub struct Load {
    /// Open connections, each with one request in flight (`wrk -c`).
    pub connections: u32,
    /// Length of one run.
    pub duration: Duration,
    /// `taskset -c` CPU lists for Envoy and `wrk` (e.g. `1` and `0`), or none.
    pub pin: Option<(String, String)>,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Responses `wrk` counted.
    pub requests: u64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Envoy's CPU time (user + system) over the run.
    pub envoy_cpu: Duration,
    /// Wall time of the run.
    pub wall: Duration,
    /// Share of the requests the canary upstream answered.
    pub canary_share: f64,
}

impl Run {
    /// Envoy CPU time per request, µs.
    pub fn cpu_per_request_us(&self) -> f64 {
        if self.requests == 0 {
            return f64::NAN;
        }
        self.envoy_cpu.as_secs_f64() * 1e6 / self.requests as f64
    }

    /// Requests per second.
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64()
    }
}

/// Runs `wrk` against `envoy` for `load.duration` and measures Envoy's CPU time meanwhile.
/// Fails when a request failed or was answered other than 2xx.
pub fn drive(envoy: &Envoy, load: &Load) -> Result<Run> {
    let pid = envoy
        .pid()
        .ok_or_else(|| Error("Envoy is not running".into()))?;
    let dir = TempDir::new("wrk")?;
    let script = dir.path().join("cohort.lua");
    fs::write(&script, WRK_SCRIPT)?;
    let url = format!("http://{}/", envoy.listen_addr());
    let mut command = match &load.pin {
        Some((envoy_cpus, wrk_cpus)) => {
            pin(pid, envoy_cpus)?;
            let mut command = Command::new("taskset");
            command.args(["-c", wrk_cpus, "wrk"]);
            command
        }
        None => Command::new("wrk"),
    };
    command
        .args(["-t", "1", "-c", &load.connections.to_string()])
        .args(["-d", &format!("{}s", load.duration.as_secs().max(1))])
        .arg("-s")
        .arg(&script)
        .arg(&url);

    let served_before = (envoy.stable.served(), envoy.canary.served());
    let cpu_before = cpu_time(pid)?;
    let started = Instant::now();
    let output = command.output().context(|| {
        "running wrk (Debian: `apt-get install --no-install-recommends wrk`; scripts/bench-envoy \
         installs it)"
            .to_owned()
    })?;
    let wall = started.elapsed();
    let envoy_cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    let stable = envoy.stable.served() - served_before.0;
    let canary = envoy.canary.served() - served_before.1;

    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(Error(format!(
            "wrk failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let summary = parse_summary(&stdout)?;
    if summary.errors > 0 || summary.non_2xx > 0 {
        return Err(envoy.failure(&format!(
            "{} socket errors and {} non-2xx answers in the run:\n{stdout}",
            summary.errors, summary.non_2xx
        )));
    }
    Ok(Run {
        requests: summary.requests,
        p50_us: summary.p50_us,
        p99_us: summary.p99_us,
        envoy_cpu,
        wall,
        canary_share: canary as f64 / (stable + canary).max(1) as f64,
    })
}

/// One `--name value` pair from a bench binary's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The flag, e.g. `--reps`.
    pub name: String,
    /// Its value.
    pub value: String,
    usage: &'static str,
}

impl Flag {
    /// The value as a number.
    pub fn number(&self) -> Result<u64> {
        self.value.parse().map_err(|_| {
            Error(format!(
                "{} {}: not a number\n{}",
                self.name, self.value, self.usage
            ))
        })
    }

    /// The error for a flag the binary does not know, or a value it cannot use (`why`).
    pub fn refused(&self, why: &str) -> Error {
        Error(format!(
            "{} {}: {why}\n{}",
            self.name, self.value, self.usage
        ))
    }
}

/// `args` as `--name value` pairs; `-h`, `--help` and a flag without a value are errors that
/// carry `usage`.
pub fn flags(args: impl IntoIterator<Item = String>, usage: &'static str) -> Result<Vec<Flag>> {
    let mut args = args.into_iter();
    let mut flags = Vec::new();
    while let Some(name) = args.next() {
        if name == "-h" || name == "--help" {
            return Err(Error(usage.to_owned()));
        }
        let value = args
            .next()
            .ok_or_else(|| Error(format!("{name} needs a value\n{usage}")))?;
        flags.push(Flag { name, value, usage });
    }
    Ok(flags)
}

/// The line the Lua script prints.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    non_2xx: u64,
}

fn parse_summary(stdout: &str) -> Result<Summary> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("COHORT_BENCH "))
        .ok_or_else(|| Error(format!("wrk printed no summary line:\n{stdout}")))?;
    let field = |name: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| Error(format!("no {name}= in wrk's summary: {line}")))
    };
    Ok(Summary {
        requests: field("requests")? as u64,
        p50_us: field("p50")?,
        p99_us: field("p99")?,
        errors: field("errors")? as u64,
        non_2xx: field("non2xx")? as u64,
    })
}

/// Pins every thread of `pid` to `cpus` (a `taskset -c` list).
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context(|| "running taskset (util-linux)".to_owned())?;
    if status.success() {
        Ok(())
    } else {
        Err(Error(format!(
            "taskset -a -p -c {cpus} {pid} failed ({status})"
        )))
    }
}

/// CPU time of process `pid`, all threads: the scheduler's own count in nanoseconds
/// (`/proc/PID/task/*/schedstat`, first field), else user + system from `/proc/PID/stat`.
///
/// A thread that exits leaves the sum, so this is for processes whose threads live as long as
/// they do, as Envoy's workers do.
///
/// The scheduler's count is exact; `/proc/PID/stat` samples at the timer tick, and on an
/// otherwise idle machine, where the cores sleep between requests, those samples are biased by
/// when the cores wake: differences of a few µs per request drown in it.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    scheduled_time(pid).map_or_else(|| ticked_time(pid), Ok)
}

fn scheduled_time(pid: u32) -> Option<Duration> {
    let mut nanos: u64 = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let schedstat = fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanos += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(nanos))
}

/// User + system CPU time from `/proc/PID/stat` (fields 14 and 15, in clock ticks).
fn ticked_time(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after it, where the
    // state is field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |field: usize| -> Result<u64> {
        fields
            .get(field - 3)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| Error(format!("field {field} of /proc/{pid}/stat: {stat}")))
    };
    let ticks = ticks(14)? + ticks(15)?;
    Ok(Duration::from_millis(
        ticks * 1000 / clock_ticks_per_second(),
    ))
}

/// `getconf CLK_TCK`, 100 (Linux's USER_HZ) when that cannot be read.
fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// The median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The medians of one set-up's runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Medians {
    /// p50 latency, µs.
    pub p50_us: f64,
    /// p99 latency, µs.
    pub p99_us: f64,
    /// Envoy CPU per request, µs.
    pub cpu_us: f64,
    /// Requests per second.
    pub throughput: f64,
    /// Canary share.
    pub canary_share: f64,
}

impl Medians {
    /// The medians of `runs`.
    pub fn of(runs: &[Run]) -> Medians {
        let of = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Medians {
            p50_us: of(|r| r.p50_us),
            p99_us: of(|r| r.p99_us),
            cpu_us: of(Run::cpu_per_request_us),
            throughput: of(Run::throughput),
            canary_share: of(|r| r.canary_share),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_parsed() {
        let out = "Running 1s test @ http://x/\n  1 threads\nCOHORT_BENCH requests=1234 \
                   p50=101.50 p99=250.00 errors=0 non2xx=2\n";
        assert_eq!(
            parse_summary(out).unwrap(),
            Summary {
                requests: 1234,
                p50_us: 101.5,
                p99_us: 250.0,
                errors: 0,
                non_2xx: 2
            }
        );
        assert!(parse_summary("no line").is_err());
    }

    #[test]
    fn flags_come_in_pairs() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let parsed = flags(args(&["--reps", "3", "--pin", "1,0"]), "usage").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            (parsed[0].name.as_str(), parsed[0].number().unwrap()),
            ("--reps", 3)
        );
        assert_eq!(parsed[1].value, "1,0");
        let error = parsed[1].number().unwrap_err().to_string();
        assert!(
            error.starts_with("--pin 1,0: not a number\nusage"),
            "{error}"
        );
        let error = flags(args(&["--reps"]), "usage").unwrap_err().to_string();
        assert!(error.starts_with("--reps needs a value"), "{error}");
        let error = flags(args(&["--reps", "1", "-h"]), "usage")
            .unwrap_err()
            .to_string();
        assert_eq!(error, "usage");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn this_process_has_a_cpu_time_that_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_time(pid).unwrap();
        assert!(before < Duration::from_secs(3600));
        let started = Instant::now();
        let mut x = 0u64;
        // Spin until the count has grown by 20 ms: it must, however loaded the machine is.
        // Other test threads may exit meanwhile and leave the sum: hence saturating.
        while cpu_time(pid).unwrap().saturating_sub(before) < Duration::from_millis(20) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the CPU time never grew"
            );
        }
        // The fallback reads the same process.
        assert!(ticked_time(pid).unwrap() < Duration::from_secs(3600));
    }

    #[test]
    fn each_setup_is_named_by_its_letter() {
        for setup in Setup::ALL.into_iter().chain([Setup::Compare]) {
            assert!(
                setup.label().starts_with(&format!("({})", setup.letter())),
                "{setup}"
            );
        }
    }

    #[test]
    fn the_configs_are_valid_and_match_the_script() {
        let config = cohort_core::config::parse(CONFIG.as_bytes()).unwrap();
        let with_events = cohort_core::config::parse(CONFIG_WITH_EVENTS.as_bytes()).unwrap();
        assert_eq!(config.rollouts.len(), HOSTS.len());
        for host in HOSTS {
            assert!(WRK_SCRIPT.contains(&format!("\"{host}\"")), "{host}");
        }
        // (c) and (g) differ in their events only.
        assert!(config.events.is_empty());
        assert_eq!(with_events.events, ["checkout"]);
        assert_eq!(with_events.rollouts, config.rollouts);
        // (f) reads and counts what (g) does.
        assert_eq!(
            with_events.events_header,
            cohort_bench_noop_filter::EVENTS_HEADER
        );
        assert_eq!(
            with_events.events[0].as_bytes(),
            cohort_bench_noop_filter::EVENT
        );
    }
}
