//! `cohort status`: one table of rollouts, with a weight bar, each gate's last numbers and
//! verdict, and how long the current step has run. Rendering is pure ([`render_status_table`]);
//! [`run`] only lists the objects and prints.

use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::Client;

use crate::cli::{CliError, Scope};
use cohort_rollout::crd::{CanaryRollout, GateCheck, GateResult, Phase};
use cohort_rollout::format::{number, share_number_percent, weight_percent};

/// How often `--watch` renders again.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Characters in the weight bar between its brackets.
const BAR_WIDTH: u32 = 20;
/// Full weight, in basis points.
const FULL_BP: u32 = 10_000;

/// Whether the table names each rollout's namespace (as `kubectl get -A` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceColumn {
    /// One namespace: no column.
    Hide,
    /// Several namespaces: a NAMESPACE column first.
    Show,
}

/// The status table of `rollouts` at `now`: one row per rollout, continued by one line per
/// further gate and a line with the controller's message.
pub fn render_status_table(
    rollouts: &[CanaryRollout],
    now: Timestamp,
    namespaces: NamespaceColumn,
) -> String {
    let mut header = vec!["NAME", "PHASE", "STEP", "WEIGHT", "IN STEP", "GATES"];
    if namespaces == NamespaceColumn::Show {
        header.insert(0, "NAMESPACE");
    }
    let mut lines: Vec<Line> = vec![Line::Cells(
        header.iter().map(|h| (*h).to_owned()).collect(),
    )];
    for rollout in rollouts {
        lines.extend(rollout_lines(rollout, now, namespaces));
    }
    let columns = header.len();
    let mut widths = vec![0; columns];
    for line in &lines {
        if let Line::Cells(cells) = line {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    for line in &lines {
        match line {
            Line::Cells(cells) => {
                let mut text = String::new();
                for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                    if i + 1 == columns {
                        text.push_str(cell);
                    } else {
                        let _ = write!(text, "{cell:<width$}   ");
                    }
                }
                out.push_str(text.trim_end());
            }
            Line::Note(note) => out.push_str(note),
        }
        out.push('\n');
    }
    out
}

/// One output line: table cells, or free text under the rollout it belongs to.
enum Line {
    Cells(Vec<String>),
    Note(String),
}

fn rollout_lines(
    rollout: &CanaryRollout,
    now: Timestamp,
    namespaces: NamespaceColumn,
) -> Vec<Line> {
    let status = rollout.status.clone().unwrap_or_default();
    let steps = rollout.spec.steps.len();
    let step = match status.step_index {
        Some(index) => format!("{}/{steps}", index.saturating_add(1)),
        None => format!("-/{steps}"),
    };
    let in_step = match (status.phase, &status.step_started_at) {
        (Phase::Progressing | Phase::Paused, Some(started)) => elapsed(since(started.0, now)),
        _ => "-".to_owned(),
    };
    let mut gates: Vec<String> = status
        .gates
        .iter()
        .map(|result| gate_text(rollout, result))
        .collect();
    if gates.is_empty() {
        gates.push(if rollout.spec.analysis.gates.is_empty() {
            "none: steps advance on bake time alone".to_owned()
        } else {
            "-".to_owned()
        });
    }
    let mut first = vec![
        rollout.metadata.name.clone().unwrap_or_default(),
        status.phase.to_string(),
        step,
        weight_bar(status.weight_bp),
        in_step,
    ];
    if namespaces == NamespaceColumn::Show {
        first.insert(0, rollout.metadata.namespace.clone().unwrap_or_default());
    }
    let blank = first.len();
    let mut lines = Vec::new();
    for (i, gate) in gates.into_iter().enumerate() {
        let mut cells = if i == 0 {
            std::mem::take(&mut first)
        } else {
            vec![String::new(); blank]
        };
        cells.push(gate);
        lines.push(Line::Cells(cells));
    }
    if let Some(message) = status.message.as_deref().filter(|m| !m.is_empty()) {
        lines.push(Line::Note(format!("  {message}")));
    }
    lines
}

/// `[#####---------------]  25%`: a bar of [`BAR_WIDTH`] characters and the weight. Any weight
/// above 0 shows at least one `#`, and any below 100% at least one `-`.
pub fn weight_bar(weight_bp: u32) -> String {
    let weight_bp = weight_bp.min(FULL_BP);
    let mut filled = (weight_bp * BAR_WIDTH + FULL_BP / 2) / FULL_BP;
    if weight_bp > 0 {
        filled = filled.max(1);
    }
    if weight_bp < FULL_BP {
        filled = filled.min(BAR_WIDTH - 1);
    }
    let bar: String = (0..BAR_WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    format!("[{bar}] {:>6}", weight_percent(weight_bp))
}

/// `error-rate Pass: canary 0.12%, stable 0.1%, limit 0.6% (n 812/24310)`: the numbers in the
/// gate kind's unit (shares as percentages, latency in ms).
fn gate_text(rollout: &CanaryRollout, result: &GateResult) -> String {
    let kind = rollout
        .spec
        .analysis
        .gates
        .iter()
        .find(|gate| gate.name() == result.gate)
        .map(|gate| &gate.check);
    let unit = |value: f64| match kind {
        Some(GateCheck::ErrorRate(_) | GateCheck::BusinessEvent(_) | GateCheck::Sequential(_)) => {
            share_number_percent(value)
        }
        Some(GateCheck::Latency(_)) => format!("{}ms", number(value)),
        Some(GateCheck::Custom(_)) | None => number(value),
    };
    let values: Vec<String> = [
        ("canary", result.canary),
        ("stable", result.stable),
        ("limit", result.threshold),
    ]
    .into_iter()
    .filter_map(|(label, value)| value.map(|value| format!("{label} {}", unit(value))))
    .collect();
    let mut text = format!("{} {}", result.gate, result.verdict);
    if !values.is_empty() {
        let _ = write!(text, ": {}", values.join(", "));
    }
    let _ = write!(
        text,
        " (n {}/{})",
        number(result.canary_samples),
        number(result.stable_samples)
    );
    text
}

/// Time from `from` to `to`, zero if `to` is earlier (clock skew between hosts).
fn since(from: Timestamp, to: Timestamp) -> Duration {
    let seconds = to.as_second().saturating_sub(from.as_second());
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// `4m12s`, `1h03m`, `2d04h`: two units at most, as people read elapsed time.
pub fn elapsed(duration: Duration) -> String {
    let total = duration.as_secs();
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// Lists the rollouts `scope` names (one, a namespace's, or every namespace's), sorted by
/// namespace and name.
pub async fn fetch(client: &Client, scope: &Scope) -> Result<Vec<CanaryRollout>, CliError> {
    let mut rollouts = match scope {
        Scope::One { namespace, name } => {
            let api: Api<CanaryRollout> = Api::namespaced(client.clone(), namespace);
            vec![api
                .get(name)
                .await
                .map_err(|error| CliError::from_kube(error, namespace, name))?]
        }
        Scope::Namespace(namespace) => {
            let api: Api<CanaryRollout> = Api::namespaced(client.clone(), namespace);
            api.list(&ListParams::default()).await?.items
        }
        Scope::AllNamespaces => {
            let api: Api<CanaryRollout> = Api::all(client.clone());
            api.list(&ListParams::default()).await?.items
        }
    };
    rollouts.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    Ok(rollouts)
}

/// What `cohort status` prints for one fetch.
pub fn render(scope: &Scope, rollouts: &[CanaryRollout], now: Timestamp) -> String {
    if rollouts.is_empty() {
        return match scope {
            Scope::Namespace(namespace) => format!("No CanaryRollouts in namespace {namespace}.\n"),
            _ => "No CanaryRollouts.\n".to_owned(),
        };
    }
    let namespaces = match scope {
        Scope::AllNamespaces => NamespaceColumn::Show,
        Scope::One { .. } | Scope::Namespace(_) => NamespaceColumn::Hide,
    };
    render_status_table(rollouts, now, namespaces)
}

/// `cohort status`: prints the table once, or with `watch` every [`WATCH_INTERVAL`] until
/// Ctrl-C, redrawing the terminal each time.
pub async fn run(client: Client, scope: Scope, watch: bool) -> Result<(), CliError> {
    if !watch {
        let rollouts = fetch(&client, &scope).await?;
        print!("{}", render(&scope, &rollouts, Timestamp::now()));
        return Ok(());
    }
    loop {
        let now = Timestamp::now();
        let screen = match fetch(&client, &scope).await {
            Ok(rollouts) => render(&scope, &rollouts, now),
            // A blip of the API server should not end the watch: show it and try again.
            Err(error) => format!("error: {error}\n"),
        };
        // Clear the screen and home the cursor, then draw.
        print!(
            "\x1b[2J\x1b[H{}   every {}s; Ctrl-C to stop\n\n{screen}",
            now.strftime("%Y-%m-%d %H:%M:%S UTC"),
            WATCH_INTERVAL.as_secs()
        );
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use cohort_rollout::crd::{CanaryRolloutStatus, Verdict};

    const SPEC: &str = r#"
apiVersion: cohort.dev/v1alpha1
kind: CanaryRollout
metadata: {name: checkout, namespace: shop}
spec:
  target: {wasmPlugin: {name: cohort}}
  hosts: [checkout]
  steps: [{weight: 1}, {weight: 5}, {weight: 25}, {weight: 50}, {weight: 100}]
  analysis:
    gates:
    - errorRate: {maxIncrease: 0.005}
    - latency: {quantile: 0.99}
    - name: cpu
      custom: {query: up, max: 0.8}
"#;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn rollout(name: &str, status: Option<CanaryRolloutStatus>) -> CanaryRollout {
        let mut rollout: CanaryRollout = serde_saphyr::from_str(SPEC).unwrap();
        rollout.metadata.name = Some(name.to_owned());
        rollout.status = status;
        rollout
    }

    fn result(gate: &str, verdict: Verdict, values: [Option<f64>; 3], n: [f64; 2]) -> GateResult {
        GateResult {
            gate: gate.to_owned(),
            verdict,
            canary: values[0],
            stable: values[1],
            threshold: values[2],
            canary_samples: n[0],
            stable_samples: n[1],
            reason: String::new(),
            sequential: None,
        }
    }

    #[test]
    fn a_progressing_rollout_shows_its_step_weight_gates_and_time() {
        let status = CanaryRolloutStatus {
            phase: Phase::Progressing,
            step_index: Some(2),
            weight_bp: 2500,
            step_started_at: Some(Time(at(0))),
            gates: vec![
                result(
                    "error-rate",
                    Verdict::Pass,
                    [Some(0.0012), Some(0.001), Some(0.006)],
                    [812.0, 24310.0],
                ),
                result(
                    "latency-p99",
                    Verdict::Inconclusive,
                    [Some(123.456), Some(98.0), Some(127.6)],
                    [90.0, 2400.0],
                ),
                result("cpu", Verdict::Error, [None, None, Some(0.8)], [0.0, 0.0]),
            ],
            message: Some("step 3/5: canary at 25%".to_owned()),
            ..CanaryRolloutStatus::default()
        };
        let table = render_status_table(
            &[rollout("checkout", Some(status)), rollout("search", None)],
            at(252),
            NamespaceColumn::Hide,
        );
        let expected = "\
NAME       PHASE         STEP   WEIGHT                          IN STEP   GATES
checkout   Progressing   3/5    [#####---------------]    25%   4m12s     error-rate Pass: canary 0.12%, stable 0.1%, limit 0.6% (n 812/24310)
                                                                          latency-p99 Inconclusive: canary 123.5ms, stable 98ms, limit 127.6ms (n 90/2400)
                                                                          cpu Error: limit 0.8 (n 0/0)
  step 3/5: canary at 25%
search     Pending       -/5    [--------------------]     0%   -         -
";
        assert_eq!(table, expected, "\n{table}");
    }

    #[test]
    fn all_namespaces_adds_a_namespace_column() {
        let status = CanaryRolloutStatus {
            phase: Phase::RolledBack,
            step_index: Some(1),
            weight_bp: 0,
            step_started_at: Some(Time(at(0))),
            ..CanaryRolloutStatus::default()
        };
        let mut rollout = rollout("checkout", Some(status));
        rollout.spec.analysis.gates.clear();
        let table = render_status_table(&[rollout], at(60), NamespaceColumn::Show);
        let expected = "\
NAMESPACE   NAME       PHASE        STEP   WEIGHT                          IN STEP   GATES
shop        checkout   RolledBack   2/5    [--------------------]     0%   -         none: steps advance on bake time alone
";
        assert_eq!(table, expected, "\n{table}");
    }

    #[test]
    fn weight_bars() {
        let table = [
            (0, "[--------------------]     0%"),
            (1, "[#-------------------]  0.01%"),
            (50, "[#-------------------]   0.5%"),
            (500, "[#-------------------]     5%"),
            (2500, "[#####---------------]    25%"),
            (3333, "[#######-------------] 33.33%"),
            (9999, "[###################-] 99.99%"),
            (10_000, "[####################]   100%"),
            (20_000, "[####################]   100%"),
        ];
        for (weight_bp, bar) in table {
            assert_eq!(weight_bar(weight_bp), bar, "{weight_bp} bp");
        }
    }

    #[test]
    fn numbers_and_durations_read_as_people_write_them() {
        let numbers = [
            (0.0, "0"),
            (3.0, "3"),
            (0.012345, "0.01235"),
            (1234.6, "1235"),
            (123.456, "123.5"),
            (-0.5, "-0.5"),
            (1e-7, "0.0000001"),
            (f64::INFINITY, "inf"),
        ];
        for (value, text) in numbers {
            assert_eq!(number(value), text, "{value}");
        }
        let durations = [
            (0, "0s"),
            (59, "59s"),
            (252, "4m12s"),
            (3780, "1h03m"),
            (187_200, "2d04h"),
        ];
        for (seconds, text) in durations {
            assert_eq!(elapsed(Duration::from_secs(seconds)), text, "{seconds}s");
        }
        // A step start in the future (skewed clocks) reads as zero.
        assert_eq!(since(at(10), at(0)), Duration::ZERO);
    }

    #[test]
    fn empty_listings_say_where_they_looked() {
        let now = at(0);
        assert_eq!(
            render(&Scope::Namespace("shop".into()), &[], now),
            "No CanaryRollouts in namespace shop.\n"
        );
        assert_eq!(
            render(&Scope::AllNamespaces, &[], now),
            "No CanaryRollouts.\n"
        );
    }
}
