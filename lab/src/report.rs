//! The lab's HTML report: one self-contained file (inline SVG and CSS, no scripts, nothing
//! fetched) with plots over the run's time of the weight Envoy served, each version's share of
//! requests, 5xx rate, p99 latency and business events per request, each gate's verdict at
//! every analysis, and, for the sequential gates, their evidence against the line they fail at;
//! the rollback moment is marked on every plot.
//!
//! Plot elements carry stable names for tools and tests: each plot is `<svg id="plot-…">`, each
//! line `<polyline class="series" data-series="stable|canary|weight">`, each verdict
//! `<rect class="verdict" data-gate=… data-verdict=…>`, the rollback `class="rollback-marker"`.
//! The evidence plot (`plot-evidence`, only when a gate ran a sequential test) has one
//! `<polyline class="series" data-series="evidence" data-gate=…>` per gate and step, a
//! `<circle class="look" data-gate=…>` per look (its tooltip gives the dispersion) and a
//! `<g class="evidence-needed" data-needed=…>` per line a gate fails at.

use std::fmt::Write as _;
use std::time::Duration;

use crate::progress::evidence_number;
use crate::record::{quantile, Cycle, Record, Version};
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
    if let Some(chart) = evidence_chart(&record.cycles, x_max, &markers) {
        let _ = write!(
            html,
            "<h2>Sequential gates: evidence that the canary is worse than stable</h2>\n\
             <p class=\"note\">Each gate's e-value on a log scale (1: no evidence either way). A \
             gate fails the canary when its line reaches its dashed line, 1/α for its share of \
             the rollout's error budget; each step starts a new test at 1. Each look's tooltip \
             gives its numbers and the dispersion: how much more unevenly events arrived than \
             independent requests would make them (the test divides its counts by it).</p>\n\
             {chart}"
        );
    }
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
font-weight:600}.Inconclusive{color:#975a16}.Error{color:#6b46c1}.Underpowered{color:#b7791f}\
.note{color:#4a5568;font-size:12px;margin:.2em 0 .4em}\
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

/// The sequential gates' lines, in the order the gates first report; none is red, the colour
/// of the line they fail at.
const EVIDENCE_COLOURS: [&str; 5] = ["#6b46c1", "#2c7a7b", "#b7791f", "#d53f8c", "#2b6cb0"];
/// The evidence axis goes no lower than 10⁻³: below 1 the test only says the canary looks no
/// worse, and a canary better than stable drives the e-value towards 0.
const EVIDENCE_FLOOR: f64 = -3.0;

/// One look of a sequential gate's test.
#[derive(Debug, Clone, PartialEq)]
struct Look {
    at: f64,
    verdict: Verdict,
    evidence: f64,
    needed: f64,
    dispersion: f64,
    /// The first look of a new test: the window since the step began got shorter, so the step
    /// changed and the evidence started again at 1 (as [`cohort_rollout::crd::Tally`] tells).
    new_test: bool,
}

/// A sequential gate's looks over the run.
#[derive(Debug, Clone, PartialEq)]
struct EvidenceLine {
    gate: String,
    looks: Vec<Look>,
}

/// Each gate that reported a sequential test, with every look it reported; gates without one
/// (threshold and custom gates) are left out.
fn evidence_lines(cycles: &[Cycle]) -> Vec<EvidenceLine> {
    let mut lines: Vec<EvidenceLine> = Vec::new();
    let mut windows: Vec<f64> = Vec::new();
    for cycle in cycles {
        for result in &cycle.gates {
            let Some(sequential) = &result.sequential else {
                continue;
            };
            let window = sequential.tally.window_seconds;
            let index = match lines.iter().position(|line| line.gate == result.gate) {
                Some(index) => index,
                None => {
                    lines.push(EvidenceLine {
                        gate: result.gate.clone(),
                        looks: Vec::new(),
                    });
                    windows.push(window);
                    lines.len() - 1
                }
            };
            let (Some(line), Some(last_window)) = (lines.get_mut(index), windows.get_mut(index))
            else {
                continue;
            };
            let new_test = !line.looks.is_empty() && window < *last_window;
            *last_window = window;
            line.looks.push(Look {
                at: cycle.at,
                verdict: result.verdict,
                evidence: sequential.evidence,
                needed: sequential.evidence_needed,
                dispersion: sequential.dispersion,
                new_test,
            });
        }
    }
    lines
}

/// `log10` of an e-value, held within what an axis can show (an overflowed e-value is
/// infinite; one of a much better canary is 0).
fn evidence_power(evidence: f64) -> Option<f64> {
    (!evidence.is_nan() && evidence >= 0.0).then(|| evidence.log10().clamp(-300.0, 300.0))
}

/// `1`, `10`, `1000`, `0.01`, `1e6` for 10^`power`.
fn power_label(power: f64) -> String {
    if (-3.0..0.0).contains(&power) {
        format!("{:.*}", (-power) as usize, 10_f64.powf(power))
    } else if (0.0..=3.0).contains(&power) {
        format!("{:.0}", 10_f64.powf(power))
    } else {
        format!("1e{power:.0}")
    }
}

/// Each sequential gate's evidence over time on a log axis, with the line it fails at; `None`
/// when no gate ran a sequential test.
fn evidence_chart(cycles: &[Cycle], x_max: f64, markers: &[Marker]) -> Option<String> {
    let lines = evidence_lines(cycles);
    if lines.is_empty() {
        return None;
    }
    let looks = || lines.iter().flat_map(|line| line.looks.iter());
    let mut needed: Vec<f64> = Vec::new();
    for look in looks() {
        if look.needed.is_finite()
            && !needed
                .iter()
                .any(|value| (value - look.needed).abs() <= 1e-9 * look.needed)
        {
            needed.push(look.needed);
        }
    }
    let values = looks()
        .filter_map(|look| evidence_power(look.evidence))
        .chain(needed.iter().filter_map(|value| evidence_power(*value)));
    let (low, high) = values.fold((0.0_f64, 1.0_f64), |(low, high), value| {
        (low.min(value), high.max(value))
    });
    let low = low.max(EVIDENCE_FLOOR).floor();
    let high = high.ceil();
    let plot_height = HEIGHT - TOP - BOTTOM;
    let y_of = |value: f64| {
        TOP + plot_height - ((value - low) / (high - low)).clamp(0.0, 1.0) * plot_height
    };
    let mut out = String::new();
    frame(&mut out, "plot-evidence", x_max);
    // About six labelled powers of ten, whatever the range.
    let step = ((high - low) / 6.0).ceil().max(1.0);
    let mut power = low;
    while power <= high + 1e-9 {
        let y = y_of(power);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\"/>\
             <text x=\"{lx}\" y=\"{ly:.1}\" text-anchor=\"end\">{label}</text>",
            right = WIDTH - RIGHT,
            lx = LEFT - 6.0,
            ly = y + 4.0,
            label = power_label(power),
        );
        power += step;
    }
    for value in &needed {
        let y = evidence_power(*value).map_or(TOP, y_of);
        let _ = write!(
            out,
            "<g class=\"evidence-needed\" data-needed=\"{value}\"><line x1=\"{LEFT}\" \
             y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\" stroke=\"{ROLLBACK_COLOUR}\" \
             stroke-width=\"1.2\" stroke-dasharray=\"6 4\"/><text x=\"{tx}\" y=\"{ty:.1}\" \
             text-anchor=\"end\" fill=\"{ROLLBACK_COLOUR}\">fails here: evidence {label} \
             (1/α)</text></g>",
            right = WIDTH - RIGHT,
            tx = WIDTH - RIGHT - 4.0,
            ty = y - 4.0,
            label = evidence_number(*value),
        );
    }
    draw_markers(&mut out, markers, x_max);
    for (index, line) in lines.iter().enumerate() {
        let colour = EVIDENCE_COLOURS[index % EVIDENCE_COLOURS.len()];
        let gate = escape(&line.gate);
        // One polyline per test: a step's first look starts a new one.
        let mut tests: Vec<Vec<&Look>> = Vec::new();
        for look in &line.looks {
            match tests.last_mut() {
                Some(test) if !look.new_test => test.push(look),
                _ => tests.push(vec![look]),
            }
        }
        for test in &tests {
            let points: Vec<String> = test
                .iter()
                .filter_map(|look| {
                    evidence_power(look.evidence)
                        .map(|value| format!("{:.1},{:.1}", x_of(look.at, x_max), y_of(value)))
                })
                .collect();
            let _ = write!(
                out,
                "<polyline class=\"series\" data-series=\"evidence\" data-gate=\"{gate}\" \
                 stroke=\"{colour}\" points=\"{}\"/>",
                points.join(" ")
            );
        }
        for look in &line.looks {
            let Some(value) = evidence_power(look.evidence) else {
                continue;
            };
            let _ = write!(
                out,
                "<circle class=\"look\" data-gate=\"{gate}\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" \
                 r=\"2.5\" fill=\"{colour}\"><title>{at:.1} s, {gate}: {verdict}, evidence {e} \
                 of the {n} needed to fail, dispersion {d:.2}</title></circle>",
                cx = x_of(look.at, x_max),
                cy = y_of(value),
                at = look.at,
                verdict = look.verdict,
                e = evidence_number(look.evidence),
                n = evidence_number(look.needed),
                d = look.dispersion,
            );
        }
        // The legend gives each gate's last dispersion, so it shows without hovering.
        let legend_x = LEFT + 230.0 * index as f64;
        let dispersion = line.looks.last().map_or(String::new(), |look| {
            format!(" (dispersion {:.2})", look.dispersion)
        });
        let _ = write!(
            out,
            "<rect x=\"{legend_x}\" y=\"6\" width=\"12\" height=\"3\" fill=\"{colour}\"/>\
             <text x=\"{tx}\" y=\"12\">{gate}{dispersion}</text>",
            tx = legend_x + 16.0,
        );
    }
    out.push_str("</svg>\n");
    Some(out)
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
    use crate::record::{BadResponse, Observation, Recorder};
    use crate::rollout_yaml;
    use cohort_controller::standalone::parse_rollout;
    use cohort_rollout::crd::{GateResult, Phase, SequentialLook, Tally};
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
            !html.contains("plot-evidence"),
            "no gate ran a sequential test, so no evidence plot"
        );
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

    /// A sequential gate's result at one look: `window` seconds into its step.
    fn sequential(gate: &str, verdict: Verdict, evidence: f64, window: f64) -> GateResult {
        GateResult {
            gate: gate.into(),
            verdict,
            canary: Some(0.01),
            stable: Some(0.01),
            threshold: Some(0.02),
            canary_samples: 30.0,
            stable_samples: 570.0,
            reason: String::new(),
            sequential: Some(SequentialLook {
                evidence,
                evidence_needed: 1200.0,
                dispersion: 1.75,
                canary_unit_dispersion: None,
                stable_unit_dispersion: None,
                canary_pod_dispersion: None,
                stable_pod_dispersion: None,
                tally: Tally {
                    window_seconds: window,
                    ..Tally::default()
                },
            }),
        }
    }

    /// Two steps of looks of two sequential gates and a threshold gate; at the second step's
    /// last look the error-rate gate reaches the evidence it fails at.
    fn sequential_record() -> Record {
        let recorder = Recorder::new(100, BadResponse::ServerError);
        recorder.weight(0.1, 500);
        recorder.weight(6.5, 1000);
        let looks = [
            (2.0, 2.0, 0.8, Verdict::Inconclusive),
            (4.0, 4.0, 3.0, Verdict::Inconclusive),
            (6.0, 6.0, 0.5, Verdict::Underpowered),
            // The step changed: the window since the step began is shorter, a new test.
            (8.0, 2.0, 40.0, Verdict::Inconclusive),
            (10.0, 4.0, 1200.0, Verdict::Fail),
        ];
        for (at, window, evidence, verdict) in looks {
            let threshold = GateResult {
                sequential: None,
                ..sequential("custom", Verdict::Pass, 1.0, window)
            };
            recorder.cycle(
                at - 0.1,
                Cycle {
                    at,
                    phase: Phase::Progressing,
                    step_index: Some(u32::from(at > 7.0)),
                    weight_bp: if at > 7.0 { 1000 } else { 500 },
                    gates: vec![
                        sequential("error-rate", verdict, evidence, window),
                        sequential("latency-p99", Verdict::Inconclusive, 0.001, window),
                        threshold,
                    ],
                    error: None,
                },
            );
        }
        recorder.weight(10.2, 0);
        recorder.snapshot()
    }

    /// The number after `attribute="` in `svg`, after the first occurrence of `after`.
    fn number_after(svg: &str, after: &str, attribute: &str) -> f64 {
        let start = svg.find(after).unwrap_or_else(|| panic!("no {after}"));
        let rest = &svg[start..];
        let key = format!("{attribute}=\"");
        let value = &rest[rest.find(&key).unwrap() + key.len()..];
        value[..value.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn evidence_lines_follow_each_sequential_gate_and_restart_with_each_step() {
        let record = sequential_record();
        let lines = evidence_lines(&record.cycles);
        let gates: Vec<&str> = lines.iter().map(|line| line.gate.as_str()).collect();
        assert_eq!(
            gates,
            ["error-rate", "latency-p99"],
            "the threshold gate is left out"
        );
        let errors = &lines[0];
        let starts: Vec<bool> = errors.looks.iter().map(|look| look.new_test).collect();
        assert_eq!(starts, [false, false, false, true, false]);
        let evidence: Vec<f64> = errors.looks.iter().map(|look| look.evidence).collect();
        assert_eq!(evidence, [0.8, 3.0, 0.5, 40.0, 1200.0]);
        assert_eq!(errors.looks[4].verdict, Verdict::Fail);
        assert_eq!(errors.looks[4].at, 10.0);
        assert!(evidence_lines(&recorded().cycles).is_empty());
    }

    #[test]
    fn the_evidence_plot_draws_each_gate_against_the_line_it_fails_at() {
        let yaml = rollout_yaml(Path::new("/lab/ecds.yaml"));
        let spec = parse_rollout(&yaml).unwrap().spec;
        let record = sequential_record();
        let html = render(&ReportInput {
            scenario: Scenario::Errors,
            outcome: LabOutcome::RolledBack,
            summary: "rolled back: error-rate failed",
            routing_mismatch: None,
            rollout_yaml: &yaml,
            spec: &spec,
            record: &record,
            rollback_time: None,
            skipped: 0,
        });
        assert_eq!(html.matches("<svg id=\"plot-evidence\"").count(), 1);
        let start = html.find("<svg id=\"plot-evidence\"").unwrap();
        let svg = &html[start..start + html[start..].find("</svg>").unwrap()];
        // One line per gate and step; the threshold gate has none.
        let lines = |gate: &str| {
            svg.matches(&format!("data-series=\"evidence\" data-gate=\"{gate}\""))
                .count()
        };
        assert_eq!(lines("error-rate"), 2);
        assert_eq!(lines("latency-p99"), 2);
        assert_eq!(lines("custom"), 0);
        assert_eq!(svg.matches("class=\"look\"").count(), 10);
        // The look that failed sits on the dashed line, the first look (0.8) below it.
        assert_eq!(svg.matches("class=\"evidence-needed\"").count(), 1);
        let needed_y = number_after(svg, "data-needed=\"1200\"", "y1");
        let first_y = number_after(svg, "<circle class=\"look\" data-gate=\"error-rate\"", "cy");
        assert!(first_y > needed_y, "the first look (0.8) is below the line");
        let fail_look = svg
            .match_indices("<circle class=\"look\" data-gate=\"error-rate\"")
            .nth(4)
            .map(|(index, _)| index)
            .unwrap();
        assert_eq!(number_after(&svg[fail_look..], "<circle", "cy"), needed_y);
        assert!(svg.contains("fails here: evidence 1200"));
        // 10⁻³ is the floor of the axis: latency's 0.001 sits on the bottom line.
        let bottom = HEIGHT - BOTTOM;
        assert_eq!(
            number_after(
                svg,
                "<circle class=\"look\" data-gate=\"latency-p99\"",
                "cy"
            ),
            bottom
        );
        assert!(svg.contains(">0.001</text>") && svg.contains(">1000</text>"));
        // The dispersion: in every look's tooltip and, the last one, in the legend.
        assert!(svg.contains(
            "<title>10.0 s, error-rate: Fail, evidence 1200 of the 1200 needed to fail, \
             dispersion 1.75</title>"
        ));
        assert!(svg.contains(">error-rate (dispersion 1.75)</text>"));
        // The same step and rollback markers as every time plot.
        assert!(svg.contains("class=\"step-marker\""));
        assert!(svg.contains("class=\"rollback-marker\""));
        assert_eq!(html.matches("class=\"rollback-marker\"").count(), 7);
        assert!(!html.contains("<script") && !html.contains("http"));
    }

    #[test]
    fn evidence_reads_as_numbers() {
        assert_eq!(power_label(0.0), "1");
        assert_eq!(power_label(3.0), "1000");
        assert_eq!(power_label(-2.0), "0.01");
        assert_eq!(power_label(6.0), "1e6");
        assert_eq!(evidence_number(1200.0), "1200");
        assert_eq!(evidence_number(0.5), "0.50");
        assert_eq!(evidence_number(3.1e9), "3.1e9");
        assert_eq!(evidence_power(0.0), Some(-300.0));
        assert_eq!(evidence_power(f64::INFINITY), Some(300.0));
        assert_eq!(evidence_power(f64::NAN), None);
    }
}
