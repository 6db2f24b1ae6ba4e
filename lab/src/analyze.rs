//! `cohort analyze`: a rollout's gates run over past data in Prometheus, one verdict per
//! analysis interval, so gates can be tuned on real traffic before they are trusted with a
//! rollout.
//!
//! For each interval end `t` in `(from, to]` the same shared queries as a live rollout run as
//! instant queries at `t` (`increase(…[interval])` then covers `(t - interval, t]`), and the same
//! [`evaluate_window`] judges them. A rollout with a sequential gate reads everything since
//! `from` at each `t`, as if a step had begun at `from`. Nothing is written anywhere.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::progress::gate_value;
use crate::Error;
use cohort_controller::source::prometheus::PrometheusSource;
use cohort_controller::source::{MetricSource, SeriesRequest};
use cohort_controller::standalone::{load_rollout, LoadedRollout};
use cohort_rollout::crd::{GateResult, Verdict};
use cohort_rollout::duration;
use cohort_rollout::evaluate::{evaluate_window, Evaluation};
use cohort_rollout::validate::compile;
use cohort_rollout::CompiledRollout;

/// Most intervals one run evaluates (each is a handful of queries).
pub const MAX_INTERVALS: u64 = 2_000;
/// Each query gives up after this.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `cohort analyze`'s command line.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AnalyzeArgs {
    /// The Prometheus that scraped the proxies (e.g. http://127.0.0.1:9090).
    #[arg(long, value_name = "URL")]
    pub prometheus: String,
    /// The CanaryRollout whose gates to run (its analysis interval, sample minimum and gates).
    #[arg(long, value_name = "FILE.yaml")]
    pub rollout: PathBuf,
    /// Start: RFC 3339 (2026-11-24T21:00:00Z), Unix seconds, `now` or `now-DURATION` (now-1h).
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End, in the same forms.
    #[arg(long, value_name = "TIME", default_value = "now")]
    pub to: String,
    /// Evaluate every this long instead of the rollout's analysis.interval (e.g. 1m).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
}

/// One evaluated interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The interval's end.
    pub at: Timestamp,
    /// Every gate's result and the combined verdict.
    pub evaluation: Evaluation,
}

/// The `cohort analyze` command: prints the table to stdout; returns the exit code (0, or 2
/// when it cannot run).
pub fn main(args: &AnalyzeArgs) -> i32 {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
        .and_then(|runtime| runtime.block_on(run(args, &mut std::io::stdout().lock())));
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("cohort analyze: {error}");
            2
        }
    }
}

/// Reads the rollout, evaluates every interval and writes the table to `out`, one row as
/// each interval is done.
pub async fn run(args: &AnalyzeArgs, out: &mut impl std::io::Write) -> Result<(), Error> {
    let rollout = load_rollout(&args.rollout)?;
    // The file's namespace was checked as it was read: compiling in it checks what
    // `validate_spec` checks.
    let compiled =
        compile(&rollout.spec, &rollout.namespace, &rollout.name).map_err(Error::InvalidSpec)?;
    // Whole seconds: Prometheus evaluates at them, and the table shows them.
    let now = Timestamp::now();
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let from = parse_time(&args.from, now).map_err(Error::Usage)?;
    let to = parse_time(&args.to, now).map_err(Error::Usage)?;
    let interval_text = args
        .interval
        .clone()
        .unwrap_or_else(|| rollout.spec.analysis.interval.clone());
    let interval = duration::parse(&interval_text)
        .ok()
        .filter(|interval| interval.as_secs() >= 1)
        .ok_or_else(|| Error::Usage(format!("interval {interval_text:?}: use at least 1s")))?;
    let ends = interval_ends(from, to, interval).map_err(Error::Usage)?;
    let source = PrometheusSource::new(&args.prometheus, HTTP_TIMEOUT)?;
    let gate_names: Vec<String> = rollout
        .spec
        .analysis
        .gates
        .iter()
        .map(|g| g.name())
        .collect();
    let write_error = |error: std::io::Error| Error::Usage(format!("writing: {error}"));
    writeln!(
        out,
        "{} {} from {} to {} every {}s; each cell: verdict canary/stable (limit)",
        rollout.namespace,
        rollout.name,
        from,
        to,
        interval.as_secs()
    )
    .map_err(write_error)?;
    writeln!(out, "{}", header(&gate_names)).map_err(write_error)?;
    let mut rows = Vec::new();
    let mut previous = Vec::new();
    for at in ends {
        let row = evaluate_at(&source, &rollout, &compiled, from, at, interval, &previous).await;
        previous.clone_from(&row.evaluation.results);
        writeln!(out, "{}", table_row(&row, &gate_names)).map_err(write_error)?;
        rows.push(row);
    }
    writeln!(out, "{}", tally(&rows)).map_err(write_error)?;
    Ok(())
}

/// The gates' verdict over the interval ending at `at`.
async fn evaluate_at(
    source: &PrometheusSource,
    rollout: &LoadedRollout,
    compiled: &CompiledRollout,
    from: Timestamp,
    at: Timestamp,
    interval: Duration,
    previous: &[GateResult],
) -> Row {
    let spec = &rollout.spec;
    let window = if compiled.has_sequential() {
        Duration::from_secs(seconds_between(from, at).max(1))
    } else {
        interval
    };
    let request = SeriesRequest::new(spec, None, &rollout.namespace, &rollout.name);
    let mut samples = source
        .at(at.as_second())
        .samples(window, std::slice::from_ref(&request))
        .await;
    let samples = samples.remove(&request.key()).unwrap_or_default();
    Row {
        at,
        evaluation: evaluate_window(
            compiled.gates(),
            compiled.sequential_max_durations(),
            spec.analysis.min_samples,
            &samples,
            window,
            previous,
        ),
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> u64 {
    u64::try_from(to.as_second().saturating_sub(from.as_second())).unwrap_or(0)
}

/// `now`, `now-DURATION`, Unix seconds or RFC 3339, relative to `now`.
pub fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix("now-") {
        let ago = duration::parse(ago).map_err(|error| format!("{text}: {error}"))?;
        let ago = k8s_openapi::jiff::SignedDuration::try_from(ago)
            .map_err(|error| format!("{text}: {error}"))?;
        return now
            .checked_sub(ago)
            .map_err(|error| format!("{text}: {error}"));
    }
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        let seconds: i64 = text.parse().map_err(|error| format!("{text}: {error}"))?;
        return Timestamp::from_second(seconds).map_err(|error| format!("{text}: {error}"));
    }
    text.parse::<Timestamp>().map_err(|error| {
        format!(
            "{text:?} is not a time: write RFC 3339 (2026-11-24T21:00:00Z), Unix seconds, now or \
             now-DURATION ({error})"
        )
    })
}

/// The ends of the intervals that fit in `(from, to]`, whole seconds.
pub fn interval_ends(
    from: Timestamp,
    to: Timestamp,
    interval: Duration,
) -> Result<Vec<Timestamp>, String> {
    let span = seconds_between(from, to);
    let step = interval.as_secs().max(1);
    if span < step {
        return Err(format!(
            "from {from} to {to} holds no whole interval of {step}s; widen --from/--to"
        ));
    }
    let count = span / step;
    if count > MAX_INTERVALS {
        return Err(format!(
            "{count} intervals of {step}s; at most {MAX_INTERVALS} per run: give a longer \
             --interval or a shorter span"
        ));
    }
    (1..=count)
        .map(|index| {
            let offset = i64::try_from(index * step).map_err(|error| error.to_string())?;
            Timestamp::from_second(from.as_second().saturating_add(offset))
                .map_err(|error| error.to_string())
        })
        .collect()
}

/// Width of a gate's column.
const CELL: usize = 34;

fn header(gates: &[String]) -> String {
    let mut line = format!("{:<20}", "time (UTC)");
    for gate in gates {
        line.push_str(&format!("  {gate:<CELL$}"));
    }
    line.push_str("  combined");
    line
}

fn cell(result: &GateResult) -> String {
    format!(
        "{} {}/{} ({})",
        result.verdict,
        gate_value(&result.gate, result.canary),
        gate_value(&result.gate, result.stable),
        gate_value(&result.gate, result.threshold)
    )
}

fn table_row(row: &Row, gates: &[String]) -> String {
    let mut line = format!("{:<20}", row.at.strftime("%Y-%m-%d %H:%M:%S").to_string());
    for gate in gates {
        let text = row
            .evaluation
            .results
            .iter()
            .find(|result| &result.gate == gate)
            .map_or_else(|| "-".to_owned(), cell);
        line.push_str(&format!("  {text:<CELL$}"));
    }
    line.push_str(&format!("  {}", row.evaluation.verdict));
    line
}

/// How many intervals got each combined verdict, and the first that would have rolled back.
fn tally(rows: &[Row]) -> String {
    let count = |verdict: Verdict| {
        rows.iter()
            .filter(|row| row.evaluation.verdict == verdict)
            .count()
    };
    let mut line = format!(
        "{} intervals: {} Pass, {} Fail, {} Inconclusive, {} Error, {} Underpowered",
        rows.len(),
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Inconclusive),
        count(Verdict::Error),
        count(Verdict::Underpowered)
    );
    match rows
        .iter()
        .find(|row| row.evaluation.verdict == Verdict::Fail)
    {
        Some(row) => line.push_str(&format!(
            "; a rollout would have rolled back at {}: {}",
            row.at,
            row.evaluation.summary()
        )),
        None => line.push_str("; no interval would have rolled a rollout back"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn times_in_every_accepted_form() {
        let now = at("2026-11-24T21:00:00Z");
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("now-1h30m", now), Ok(at("2026-11-24T19:30:00Z")));
        assert_eq!(
            parse_time("1795554000", now),
            Ok(at("2026-11-24T21:00:00Z"))
        );
        assert_eq!(
            parse_time("2026-11-24T20:59:00Z", now),
            Ok(at("2026-11-24T20:59:00Z"))
        );
        assert!(parse_time("yesterday", now)
            .unwrap_err()
            .contains("RFC 3339"));
        assert!(parse_time("now-soon", now).is_err());
    }

    #[test]
    fn intervals_end_inside_the_span() {
        let ends = interval_ends(
            at("2026-11-24T21:00:00Z"),
            at("2026-11-24T21:01:05Z"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(
            ends,
            vec![at("2026-11-24T21:00:30Z"), at("2026-11-24T21:01:00Z")]
        );
        let short = interval_ends(ends[0], ends[1], Duration::from_secs(60));
        assert!(short.unwrap_err().contains("no whole interval"));
        let long = interval_ends(
            at("2026-11-01T00:00:00Z"),
            at("2026-11-24T00:00:00Z"),
            Duration::from_secs(1),
        );
        assert!(long.unwrap_err().contains("at most 2000"));
    }

    #[test]
    fn rows_show_each_gate_and_the_combined_verdict() {
        let result = |gate: &str, verdict, canary, stable, limit| GateResult {
            gate: gate.into(),
            verdict,
            canary: Some(canary),
            stable: Some(stable),
            threshold: Some(limit),
            canary_samples: 50.0,
            stable_samples: 950.0,
            reason: format!("{gate} reason"),
            sequential: None,
        };
        let rows = vec![
            Row {
                at: at("2026-11-24T21:00:30Z"),
                evaluation: Evaluation {
                    verdict: Verdict::Pass,
                    results: vec![result("error-rate", Verdict::Pass, 0.0, 0.001, 0.011)],
                },
            },
            Row {
                at: at("2026-11-24T21:01:00Z"),
                evaluation: Evaluation {
                    verdict: Verdict::Fail,
                    results: vec![result("error-rate", Verdict::Fail, 0.1, 0.001, 0.011)],
                },
            },
        ];
        let gates = vec!["error-rate".to_owned(), "latency-p99".to_owned()];
        assert!(header(&gates).starts_with("time (UTC)"));
        let line = table_row(&rows[1], &gates);
        assert!(line.starts_with("2026-11-24 21:01:00"), "{line}");
        assert!(line.contains("Fail 10.00%/0.10% (1.10%)"), "{line}");
        assert!(line.ends_with("  Fail"), "{line}");
        assert!(line.contains("  -  "), "a gate without a result: {line}");
        let summary = tally(&rows);
        assert!(
            summary.starts_with("2 intervals: 1 Pass, 1 Fail"),
            "{summary}"
        );
        assert!(
            summary.contains("rolled back at 2026-11-24T21:01:00Z: error-rate: error-rate reason")
        );
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_gives_error_verdicts_not_a_crash() {
        let dir = std::env::temp_dir().join(format!("cohort-analyze-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rollout = dir.join("rollout.yaml");
        std::fs::write(
            &rollout,
            "apiVersion: cohort.dev/v1alpha1\nkind: CanaryRollout\nmetadata: {name: web}\n\
             spec:\n  target: {envoyEcds: {path: /e.yaml}}\n  hosts: [web]\n  \
             steps: [{weight: 10, bake: 1m}, {weight: 100}]\n  \
             analysis: {interval: 30s, gates: [{errorRate: {maxIncrease: 0.01}}]}\n",
        )
        .unwrap();
        let args = AnalyzeArgs {
            prometheus: "http://127.0.0.1:9".into(),
            rollout,
            from: "now-1m".into(),
            to: "now".into(),
            interval: None,
        };
        let mut out = Vec::new();
        run(&args, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(
            text.contains("2 intervals: 0 Pass, 0 Fail, 0 Inconclusive, 2 Error"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
