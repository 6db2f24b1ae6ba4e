//! The lab's HTML report: one self-contained file (inline SVG and CSS, no scripts, nothing
//! fetched) with plots over the run's time of the weight Envoy served, each version's share of
//! requests, 5xx rate, p99 latency and business events per request, and each gate's verdict
//! at every analysis; the rollback moment is marked on every plot.
//!
//! Plot elements carry stable names for tools and tests: each plot is `<svg id="plot-…">`, each
//! line `<polyline class="series" data-series="stable|canary|weight">`, each verdict
//! `<rect class="verdict" data-gate=… data-verdict=…>`, the rollback `class="rollback-marker"`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::record::{quantile, Record, Version};
use crate::{LabOutcome, Scenario};
use cohort_rollout::crd::{CanaryRolloutSpec, Verdict};
use cohort_rollout::format::weight_percent;

/// Plot size in SVG units (the page scales it to its width).
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 200.0;
/// Room for the y axis labels (and the gate names of the verdict plot).
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 26.0;

const STABLE_COLOUR: &str = "#2b6cb0";
const CANARY_COLOUR: &str = "#dd6b20";
const ROLLBACK_COLOUR: &str = "#c53030";

/// What the report shows.
#[derive(Debug)]
pub struct ReportInput<'a> {
    /// The scenario.
    pub scenario: Scenario,
    /// How the rollout ended.
    pub outcome: LabOutcome,
    /// The summary line.
    pub summary: &'a str,
    /// The routing check's finding when the canary did not serve its users (the
    /// `RoutingMismatch` condition's message).
    pub routing_mismatch: Option<&'a str>,
    /// The CanaryRollout, as the lab wrote it.
    pub rollout_yaml: &'a str,
    /// Its spec.
    pub spec: &'a CanaryRolloutSpec,
    /// Everything recorded.
    pub record: &'a Record,
    /// From the first bad response to weight 0.
    pub rollback_time: Option<Duration>,
    /// Requests the load generator skipped (too many outstanding).
    pub skipped: u64,
}

/// A vertical line across a time plot.
#[derive(Debug, Clone)]
struct Marker {
    at: f64,
    class: &'static str,
    label: String,
    colour: &'static str,
}

/// One line of a plot: `(time, value)` points, `None` where there is no value (a gap).
#[derive(Debug, Clone)]
struct Line {
    series: &'static str,
    label: String,
    colour: &'static str,
    points: Vec<(f64, Option<f64>)>,
}

/// One time plot.
#[derive(Debug)]
struct Chart<'a> {
    id: &'static str,
    title: String,
    unit: &'static str,
    lines: Vec<Line>,
    x_max: f64,
    /// The y axis reaches at least this.
    y_floor: f64,
    markers: &'a [Marker],
}

/// The whole report.
pub fn render(input: &ReportInput<'_>) -> String {
    let record = input.record;
    let x_max = time_span(record);
    let markers = markers(input);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>cohort lab: {scenario}</title>\n<style>{CSS}</style></head><body>\n\
         <h1>cohort lab: {scenario}</h1>\n<p>{story}.</p>\n\
         <p class=\"summary {class}\">{summary}</p>\n",
        scenario = escape(input.scenario.name()),
        story = escape(input.scenario.story()),
        class = input.outcome.as_str().replace(' ', "-"),
        summary = escape(input.summary),
    );
    if let Some(mismatch) = input.routing_mismatch {
        let _ = writeln!(
            html,
            "<p class=\"routing-mismatch\" id=\"routing-mismatch\"><strong>Routing mismatch:\
             </strong> {}</p>",
            escape(mismatch)
        );
    }
    html.push_str(&facts(input));

    let share = |version: Version| {
        per_second(record, |second| {
            let total: u64 = second.versions.iter().map(|v| v.requests).sum();
            (total > 0).then(|| 100.0 * second.of(version).requests as f64 / total as f64)
        })
    };
    let by_version = |f: &dyn Fn(Version) -> Vec<(f64, Option<f64>)>| {
        Version::BOTH
            .iter()
            .map(|&version| Line {
                series: version.as_str(),
                label: version.as_str().to_owned(),
                colour: colour(version),
                points: f(version),
            })
            .collect::<Vec<_>>()
    };
    let charts = [
        Chart {
            id: "plot-weight",
            title: "Canary weight: the share of users Envoy sends to the canary".to_owned(),
            unit: "%",
            lines: vec![Line {
                series: "weight",
                label: "canary weight".to_owned(),
                colour: CANARY_COLOUR,
                points: weight_steps(record, x_max),
            }],
            x_max,
            y_floor: 100.0,
            markers: &markers,
        },
        Chart {
            id: "plot-share",
            title: "Share of requests served by each version".to_owned(),
            unit: "%",
            lines: by_version(&share),
            x_max,
            y_floor: 100.0,
            markers: &markers,
        },
        Chart {
            id: "plot-errors",
            title: "5xx responses per version".to_owned(),
            unit: "%",
            lines: by_version(&|version| {
                per_second(record, |second| {
                    let part = second.of(version);
                    (part.requests > 0)
                        .then(|| 100.0 * part.server_errors as f64 / part.requests as f64)
                })
            }),
            x_max,
            y_floor: 5.0,
            markers: &markers,
        },
        Chart {
            id: "plot-p99",
            title: "p99 latency per version, as the users saw it".to_owned(),
            unit: "ms",
            lines: by_version(&|version| {
                per_second(record, |second| {
                    let mut latencies = second.of(version).latencies_ms.clone();
                    quantile(&mut latencies, 0.99)
                })
            }),
            x_max,
            y_floor: 20.0,
            markers: &markers,
        },
        Chart {
            id: "plot-events",
            title: "Checkout events per request, per version".to_owned(),
            unit: "",
            lines: by_version(&|version| {
                per_second(record, |second| {
                    let part = second.of(version);
                    (part.requests > 0).then(|| part.events as f64 / part.requests as f64)
                })
            }),
            x_max,
            y_floor: 0.5,
            markers: &markers,
        },
    ];
    for chart in &charts {
        let _ = write!(
            html,
            "<h2>{}</h2>\n{}",
            escape(&chart.title),
            svg_chart(chart)
        );
    }
    let _ = write!(
        html,
        "<h2>Gate verdicts at each analysis</h2>\n{}",
        verdict_chart(input, x_max, &markers)
    );
    html.push_str(&cycle_table(input));
    let _ = write!(
        html,
        "<h2>The rollout</h2>\n<pre>{}</pre>\n</body></html>\n",
        escape(input.rollout_yaml)
    );
    html
}

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;max-width:960px;margin:2em auto;\
padding:0 1em;color:#1a202c}h1{font-size:1.6em}h2{font-size:1.1em;margin:1.6em 0 .3em}\
.summary{font-weight:600;padding:.6em .8em;border-radius:4px}\
.promoted{background:#e6fffa}.rolled-back{background:#fff5f5}.timed-out,.interrupted{background:#fffff0}\
.routing-mismatch{padding:.6em .8em;border-radius:4px;background:#fffaf0;border-left:4px solid #dd6b20}\
svg{width:100%;height:auto;background:#fff;border:1px solid #e2e8f0}\
svg text{font:11px system-ui,sans-serif;fill:#4a5568}.grid{stroke:#edf2f7}\
.axis{stroke:#a0aec0}.series{fill:none;stroke-width:1.8}\
table{border-collapse:collapse;font-size:12px;margin-top:.5em}td,th{border:1px solid #e2e8f0;\
padding:2px 6px;text-align:right}th{background:#f7fafc}.Pass{color:#276749}.Fail{color:#c53030;\
font-weight:600}.Inconclusive{color:#975a16}.Error{color:#6b46c1}\
pre{background:#f7fafc;padding:.8em;overflow:auto}dl{display:grid;grid-template-columns:max-content auto;\
gap:.2em 1em}dt{color:#4a5568}dd{margin:0}";

fn colour(version: Version) -> &'static str {
    match version {
        Version::Stable => STABLE_COLOUR,
        Version::Canary => CANARY_COLOUR,
    }
}

/// The key numbers of the run.
fn facts(input: &ReportInput<'_>) -> String {
    let record = input.record;
    let mut rows: Vec<(&str, String)> = vec![
        ("requests", record.total_requests().to_string()),
        ("distinct users", record.total_users().to_string()),
        (
            "users sent back from canary to stable before a rollback",
            record.switched_back().to_string(),
        ),
        (
            "weights Envoy served",
            record
                .weights
                .iter()
                .map(|(at, weight)| format!("{} at {at:.1} s", weight_percent(*weight)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    if let Some(bad) = record.first_bad {
        rows.push(("first bad response", format!("{bad:.1} s")));
    }
    if let Some(time) = input.rollback_time {
        rows.push((
            "from the first bad response to weight 0 in Envoy",
            format!("{:.2} s", time.as_secs_f64()),
        ));
    }
    if input.skipped > 0 {
        rows.push((
            "requests the load generator skipped (too many outstanding)",
            input.skipped.to_string(),
        ));
    }
    let mut out = String::from("<dl>");
    for (name, value) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(name), escape(&value));
    }
    out.push_str("</dl>\n");
    out
}

/// The plots' time span: to the last thing recorded, at least 10 s.
fn time_span(record: &Record) -> f64 {
    let last_cycle = record.cycles.last().map_or(0.0, |cycle| cycle.at);
    let last_weight = record.weights.last().map_or(0.0, |(at, _)| *at);
    (record.seconds.len() as f64)
        .max(last_cycle)
        .max(last_weight)
        .max(10.0)
}

/// Step changes and the rollback, marked on every time plot.
fn markers(input: &ReportInput<'_>) -> Vec<Marker> {
    let record = input.record;
    let mut markers = Vec::new();
    let mut previous = 0;
    for &(at, weight) in &record.weights {
        if weight > previous && previous > 0 {
            markers.push(Marker {
                at,
                class: "step-marker",
                label: weight_percent(weight),
                colour: "#a0aec0",
            });
        }
        previous = weight;
    }
    if input.outcome == LabOutcome::RolledBack {
        if let Some(at) = record.weight_dropped {
            markers.push(Marker {
                at,
                class: "rollback-marker",
                label: "rolled back".to_owned(),
                colour: ROLLBACK_COLOUR,
            });
        }
    }
    markers
}

/// A value per whole second, plotted at the middle of the second.
fn per_second(
    record: &Record,
    value: impl Fn(&crate::record::Second) -> Option<f64>,
) -> Vec<(f64, Option<f64>)> {
    record
        .seconds
        .iter()
        .enumerate()
        .map(|(index, second)| (index as f64 + 0.5, value(second)))
        .collect()
}

/// The served weight as a step line in percent, held to the end of the plot.
fn weight_steps(record: &Record, x_max: f64) -> Vec<(f64, Option<f64>)> {
    let mut points = Vec::new();
    let mut current: Option<f64> = None;
    for &(at, weight) in &record.weights {
        let value = f64::from(weight) / 100.0;
        if current.is_some() {
            points.push((at, current));
        }
        points.push((at, Some(value)));
        current = Some(value);
    }
    if current.is_some() {
        points.push((x_max, current));
    }
    points
}

/// 1, 2 or 5 × 10ⁿ at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10_f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|factor| factor * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

/// Seconds between x ticks: at most about a dozen.
fn tick_step(x_max: f64) -> f64 {
    [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0]
        .into_iter()
        .find(|step| x_max / step <= 12.0)
        .unwrap_or(300.0)
}

fn x_of(at: f64, x_max: f64) -> f64 {
    LEFT + (at / x_max).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
}

/// The frame, grid and time axis shared by every plot.
fn frame(out: &mut String, id: &str, x_max: f64) {
    let _ = write!(
        out,
        "<svg id=\"{id}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\">\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\"/>",
        bottom = HEIGHT - BOTTOM,
        right = WIDTH - RIGHT,
    );
    let step = tick_step(x_max);
    let mut at = 0.0;
    while at <= x_max + 1e-9 {
        let x = x_of(at, x_max);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{bottom}\"/>\
             <text x=\"{x:.1}\" y=\"{label_y}\" text-anchor=\"middle\">{at:.0} s</text>",
            bottom = HEIGHT - BOTTOM,
            label_y = HEIGHT - BOTTOM + 16.0,
        );
        at += step;
    }
}

fn draw_markers(out: &mut String, markers: &[Marker], x_max: f64) {
    for marker in markers {
        let x = x_of(marker.at, x_max);
        let dash = if marker.class == "rollback-marker" {
            "6 3"
        } else {
            "2 3"
        };
        let _ = write!(
            out,
            "<g class=\"{class}\"><line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{bottom}\" \
             stroke=\"{colour}\" stroke-width=\"1.5\" stroke-dasharray=\"{dash}\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\" fill=\"{colour}\">{label}</text></g>",
            class = marker.class,
            bottom = HEIGHT - BOTTOM,
            colour = marker.colour,
            tx = x + 3.0,
            ty = TOP + 10.0,
            label = escape(&marker.label),
        );
    }
}

fn svg_chart(chart: &Chart<'_>) -> String {
    let data_max = chart
        .lines
        .iter()
        .flat_map(|line| line.points.iter().filter_map(|(_, value)| *value))
        .fold(0.0_f64, f64::max);
    let y_max = nice_ceiling(data_max.max(chart.y_floor));
    let plot_height = HEIGHT - TOP - BOTTOM;
    let y_of = |value: f64| TOP + plot_height - (value / y_max).clamp(0.0, 1.0) * plot_height;
    let mut out = String::new();
    frame(&mut out, chart.id, chart.x_max);
    for tick in 0..=4 {
        let value = y_max * f64::from(tick) / 4.0;
        let y = y_of(value);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\"/>\
             <text x=\"{lx}\" y=\"{ly:.1}\" text-anchor=\"end\">{label}</text>",
            right = WIDTH - RIGHT,
            lx = LEFT - 6.0,
            ly = y + 4.0,
            label = axis_label(value, chart.unit),
        );
    }
    draw_markers(&mut out, chart.markers, chart.x_max);
    for (index, line) in chart.lines.iter().enumerate() {
        // Runs of points without gaps, one polyline each.
        for run in line.points.split(|(_, value)| value.is_none()) {
            if run.is_empty() {
                continue;
            }
            let points: Vec<String> = run
                .iter()
                .filter_map(|(at, value)| {
                    value.map(|v| format!("{:.1},{:.1}", x_of(*at, chart.x_max), y_of(v)))
                })
                .collect();
            let _ = write!(
                out,
                "<polyline class=\"series\" data-series=\"{}\" stroke=\"{}\" points=\"{}\"/>",
                line.series,
                line.colour,
                points.join(" ")
            );
        }
        let legend_x = WIDTH - RIGHT - 200.0 + 100.0 * index as f64;
        let _ = write!(
            out,
            "<rect x=\"{legend_x}\" y=\"6\" width=\"12\" height=\"3\" fill=\"{colour}\"/>\
             <text x=\"{tx}\" y=\"12\">{label}</text>",
            colour = line.colour,
            tx = legend_x + 16.0,
            label = escape(&line.label),
        );
    }
    out.push_str("</svg>\n");
    out
}

fn axis_label(value: f64, unit: &str) -> String {
    let number = if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if unit.is_empty() {
        number
    } else if unit == "%" {
        format!("{number}%")
    } else {
        format!("{number} {unit}")
    }
}

fn verdict_colour(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "#48bb78",
        Verdict::Fail => ROLLBACK_COLOUR,
        Verdict::Inconclusive => "#cbd5e0",
        Verdict::Error => "#9f7aea",
        Verdict::Underpowered => "#ecc94b",
    }
}

/// One row per gate, one cell per analysis (from the previous analysis to this one), coloured
/// by the verdict.
fn verdict_chart(input: &ReportInput<'_>, x_max: f64, markers: &[Marker]) -> String {
    let gates: Vec<String> = input
        .spec
        .analysis
        .gates
        .iter()
        .map(|gate| gate.name())
        .collect();
    let mut out = String::new();
    frame(&mut out, "plot-gates", x_max);
    let rows = gates.len().max(1) as f64;
    let row_height = ((HEIGHT - TOP - BOTTOM) / rows).min(40.0);
    for (row, gate) in gates.iter().enumerate() {
        let y = TOP + row as f64 * row_height;
        let _ = write!(
            out,
            "<text x=\"{lx}\" y=\"{ly:.1}\" text-anchor=\"end\">{name}</text>",
            lx = LEFT - 6.0,
            ly = y + row_height / 2.0 + 4.0,
            name = escape(gate),
        );
        let mut previous = 0.0;
        for cycle in &input.record.cycles {
            let Some(result) = cycle.gates.iter().find(|result| &result.gate == gate) else {
                previous = cycle.at;
                continue;
            };
            let x = x_of(previous, x_max);
            let width = (x_of(cycle.at, x_max) - x - 1.0).max(1.0);
            let _ = write!(
                out,
                "<rect class=\"verdict\" data-gate=\"{gate}\" data-verdict=\"{verdict}\" \
                 x=\"{x:.1}\" y=\"{ry:.1}\" width=\"{width:.1}\" height=\"{rh:.1}\" \
                 fill=\"{fill}\"><title>{at:.1} s: {verdict}: {reason}</title></rect>",
                gate = escape(gate),
                verdict = result.verdict,
                ry = y + 3.0,
                rh = row_height - 6.0,
                fill = verdict_colour(result.verdict),
                at = cycle.at,
                reason = escape(&result.reason),
            );
            previous = cycle.at;
        }
    }
    draw_markers(&mut out, markers, x_max);
    let legend = [
        Verdict::Pass,
        Verdict::Fail,
        Verdict::Inconclusive,
        Verdict::Error,
        Verdict::Underpowered,
    ];
    for (index, verdict) in legend.iter().enumerate() {
        let x = WIDTH - RIGHT - 500.0 + 100.0 * index as f64;
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{tx}\" y=\"13\">{verdict}</text>",
            verdict_colour(*verdict),
            tx = x + 14.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

/// Every analysis: when, where the rollout stood, each gate's verdict and numbers.
fn cycle_table(input: &ReportInput<'_>) -> String {
    let gates: Vec<String> = input
        .spec
        .analysis
        .gates
        .iter()
        .map(|gate| gate.name())
        .collect();
    let mut out = String::from(
        "<details><summary>Every analysis (canary / stable / limit)</summary><table><tr>\
         <th>time</th><th>phase</th><th>step</th><th>weight</th>",
    );
    for gate in &gates {
        let _ = write!(out, "<th>{}</th>", escape(gate));
    }
    out.push_str("</tr>");
    for cycle in &input.record.cycles {
        let _ = write!(
            out,
            "<tr><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td>",
            cycle.at,
            cycle.phase,
            cycle.step_index.map_or(0, |index| index + 1),
            weight_percent(cycle.weight_bp)
        );
        if let Some(error) = &cycle.error {
            let _ = write!(
                out,
                "<td colspan=\"{}\">{}</td></tr>",
                gates.len().max(1),
                escape(error)
            );
            continue;
        }
        for gate in &gates {
            match cycle.gates.iter().find(|result| &result.gate == gate) {
                Some(result) => {
                    let number = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
                    let _ = write!(
                        out,
                        "<td class=\"{verdict}\" title=\"{reason}\">{verdict} {} / {} / {}</td>",
                        number(result.canary),
                        number(result.stable),
                        number(result.threshold),
                        verdict = result.verdict,
                        reason = escape(&result.reason),
                    );
                }
                None => out.push_str("<td></td>"),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></details>\n");
    out
}

/// `text` safe in HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{BadResponse, Cycle, Observation, Recorder};
    use crate::rollout_yaml;
    use cohort_controller::standalone::parse_rollout;
    use cohort_rollout::crd::{GateResult, Phase};
    use std::path::Path;

    fn recorded() -> Record {
        let recorder = Recorder::new(100, BadResponse::ServerError);
        recorder.weight(0.2, 0);
        recorder.weight(0.5, 500);
        for tenth in 0..40 {
            let at = f64::from(tenth) / 10.0;
            let canary = tenth % 10 == 0;
            recorder.observe(Observation {
                at,
                version: Some(if canary {
                    Version::Canary
                } else {
                    Version::Stable
                }),
                status: if canary && tenth > 10 { 503 } else { 200 },
                latency_ms: 5.0,
                user: tenth,
                event: tenth % 2 == 0,
            });
        }
        recorder.cycle(
            0.0,
            Cycle {
                at: 2.0,
                phase: Phase::Progressing,
                step_index: Some(0),
                weight_bp: 500,
                gates: vec![GateResult {
                    gate: "error-rate".into(),
                    verdict: Verdict::Fail,
                    canary: Some(0.5),
                    stable: Some(0.0),
                    threshold: Some(0.02),
                    canary_samples: 2.0,
                    stable_samples: 18.0,
                    reason: "canary <5xx> rate".into(),
                    sequential: None,
                }],
                error: None,
            },
        );
        recorder.weight(3.0, 0);
        recorder.snapshot()
    }

    #[test]
    fn a_routing_mismatch_is_marked_above_the_plots() {
        let yaml = rollout_yaml(Path::new("/lab/ecds.yaml"));
        let spec = parse_rollout(&yaml).unwrap().spec;
        let record = recorded();
        let input = |routing_mismatch| ReportInput {
            scenario: Scenario::Misrouted,
            outcome: LabOutcome::RolledBack,
            summary: "rolled back: the canary has not served the requests decided for it",
            routing_mismatch,
            rollout_yaml: &yaml,
            spec: &spec,
            record: &record,
            rollback_time: None,
            skipped: 0,
        };
        let html = render(&input(Some("the canary served 0 of the 480 <requests>")));
        let banner = html.find("id=\"routing-mismatch\"").expect("the banner");
        assert!(banner < html.find("<svg").unwrap(), "above the plots");
        assert!(html.contains("served 0 of the 480 &lt;requests&gt;"));
        assert!(!render(&input(None)).contains("routing-mismatch\""));
    }

    #[test]
    fn the_report_has_every_plot_its_series_and_the_rollback_marker() {
        let yaml = rollout_yaml(Path::new("/lab/ecds.yaml"));
        let spec = parse_rollout(&yaml).unwrap().spec;
        let record = recorded();
        let html = render(&ReportInput {
            scenario: Scenario::Errors,
            outcome: LabOutcome::RolledBack,
            summary: "rolled back: error-rate failed",
            routing_mismatch: None,
            rollout_yaml: &yaml,
            spec: &spec,
            record: &record,
            rollback_time: Some(Duration::from_millis(1900)),
            skipped: 0,
        });
        for id in [
            "plot-weight",
            "plot-share",
            "plot-errors",
            "plot-p99",
            "plot-events",
            "plot-gates",
        ] {
            assert_eq!(
                html.matches(&format!("<svg id=\"{id}\"")).count(),
                1,
                "{id}"
            );
        }
        assert!(html.contains("data-series=\"weight\""));
        assert!(html.contains("data-series=\"stable\""));
        assert!(html.contains("data-series=\"canary\""));
        assert!(html.contains("data-gate=\"error-rate\" data-verdict=\"Fail\""));
        // Marked on every time plot and the verdict plot.
        assert_eq!(html.matches("class=\"rollback-marker\"").count(), 6);
        assert!(
            html.contains("canary &lt;5xx&gt; rate"),
            "reasons are escaped"
        );
        assert!(html.contains("1.90 s"));
        assert!(
            !html.contains("<script") && !html.contains("http"),
            "self-contained"
        );
    }

    #[test]
    fn axes_use_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(151.0), 200.0);
        assert_eq!(tick_step(30.0), 5.0);
        assert_eq!(tick_step(100.0), 10.0);
        assert_eq!(axis_label(0.25, ""), "0.25");
        assert_eq!(axis_label(50.0, "%"), "50%");
        assert_eq!(axis_label(7.5, "ms"), "7.5 ms");
    }

    #[test]
    fn weight_steps_hold_until_the_next_change() {
        let record = recorded();
        let points = weight_steps(&record, 10.0);
        assert_eq!(
            points,
            vec![
                (0.2, Some(0.0)),
                (0.5, Some(0.0)),
                (0.5, Some(5.0)),
                (3.0, Some(5.0)),
                (3.0, Some(0.0)),
                (10.0, Some(0.0)),
            ]
        );
    }
}
