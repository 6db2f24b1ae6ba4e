//! What the CRD schema cannot check about a CanaryRollout spec. Each problem names the field and
//! the fix; the controller shows them in the `InvalidSpec` condition, `cohort run` prints them.

use std::time::Duration;

use cohort_core::bucket::FULL_WEIGHT_BP;
use cohort_core::config::{is_dns_label, NAMESPACE_RULE};

use crate::compiled::{CompiledRollout, CompiledStep, FilterEntry, Served};
use crate::crd::{
    CanaryRolloutSpec, GateCheck, GateSpec, SecretKeyRef, SequentialGate, SequentialMetric, Target,
    MAX_GATES, MAX_STEPS,
};
use crate::duration;
use crate::query;
pub use crate::spec_error::{SpecError, SpecErrors};

/// Checks everything the schema cannot, including that the filter would accept the config the
/// spec produces. `name` is the CanaryRollout's name (the filter's rollout key and default salt).
/// The namespace plays no part in the spec's validity (Kubernetes checks it; `cohort run` checks a
/// file's when it reads it). [`compile`] runs these checks and keeps what they parsed.
pub fn validate_spec(spec: &CanaryRolloutSpec, name: &str) -> Result<(), Vec<SpecError>> {
    compile(spec, "", name)
        .map(|_| ())
        .map_err(|errors| errors.0)
}

/// Checks `spec` as [`validate_spec`] does and returns it ready to drive the rollout
/// `namespace/name`: durations parsed, weights in basis points, the filter entry built once. The
/// errors are [`validate_spec`]'s, in the same order.
pub fn compile(
    spec: &CanaryRolloutSpec,
    namespace: &str,
    name: &str,
) -> Result<CompiledRollout, SpecErrors> {
    let mut errors = Vec::new();
    check_target(&spec.target, &mut errors);
    check_force_token(spec, &mut errors);
    check_notifications(spec, &mut errors);
    let bakes = check_steps(spec, &mut errors);
    let interval = check_positive_duration(
        "spec.analysis.interval",
        &spec.analysis.interval,
        duration::parse(&spec.analysis.interval),
        &mut errors,
    );
    if spec.analysis.min_samples == 0 {
        errors.push(SpecError::new(
            "spec.analysis.minSamples",
            "must be at least 1: gates never judge on no data",
        ));
    }
    let sequential_max_durations = check_gates(&spec.analysis.gates, &mut errors);
    let gates = split_error_budget(spec, &mut errors);
    let no_data_deadline = duration::parse(&spec.failure_policy.no_data_deadline);
    check_sequential_deadlines(
        spec,
        no_data_deadline.as_ref().ok(),
        &sequential_max_durations,
        &mut errors,
    );
    let no_data_deadline = check_positive_duration(
        "spec.failurePolicy.noDataDeadline",
        &spec.failure_policy.no_data_deadline,
        no_data_deadline,
        &mut errors,
    );
    let routing_mismatch_deadline = check_positive_duration(
        "spec.failurePolicy.routingMismatchDeadline",
        &spec.failure_policy.routing_mismatch_deadline,
        duration::parse(&spec.failure_policy.routing_mismatch_deadline),
        &mut errors,
    );
    let served = Served::of(spec, namespace, name)
        .map_err(|error| errors.push(error))
        .ok();
    // The filter's own validation covers hosts, versions, salt, identity, anonymous and events.
    let entry = FilterEntry::build(spec, namespace, name)
        .map_err(|filter_errors| errors.extend(filter_errors.0))
        .ok();
    let steps: Option<Vec<CompiledStep>> = spec
        .steps
        .iter()
        .zip(bakes)
        .map(|(step, bake)| {
            bake.map(|bake| CompiledStep {
                weight_bp: step.weight_bp(),
                bake,
            })
        })
        .collect();
    match (
        errors.is_empty(),
        steps,
        interval,
        no_data_deadline,
        routing_mismatch_deadline,
        served,
        entry,
    ) {
        (
            true,
            Some(steps),
            Some(interval),
            Some(no_data_deadline),
            Some(routing_mismatch_deadline),
            Some(served),
            Some(entry),
        ) => Ok(CompiledRollout {
            steps,
            interval,
            min_samples: spec.analysis.min_samples,
            no_data_deadline,
            sequential_max_durations,
            gates,
            routing_mismatch_deadline,
            served,
            entry,
        }),
        _ => Err(SpecErrors(errors)),
    }
}

/// Where the force token comes from: one Secret key or one file, well named.
fn check_force_token(spec: &CanaryRolloutSpec, errors: &mut Vec<SpecError>) {
    if let Some(reference) = &spec.force_token_secret_ref {
        if spec.force_token_file.is_some() {
            errors.push(SpecError::new(
                "spec.forceTokenFile",
                "is set together with forceTokenSecretRef; keep one (the Secret in a cluster, \
                 the file for `cohort run`)",
            ));
        }
        check_secret_key_ref("spec.forceTokenSecretRef", reference, errors);
    }
    if spec.force_token_file.as_deref().is_some_and(str::is_empty) {
        errors.push(SpecError::new(
            "spec.forceTokenFile",
            "is empty; give the path of the file holding the token, or remove the field",
        ));
    }
}

/// The webhook's URL source, as the CRD's rule says (for a `cohort run` file, which no API
/// server checked), and its Secret reference as the force token's.
fn check_notifications(spec: &CanaryRolloutSpec, errors: &mut Vec<SpecError>) {
    let Some(notifications) = &spec.notifications else {
        return;
    };
    let webhook = &notifications.webhook;
    if webhook.url_secret_ref.is_none() && webhook.url_file.is_none() {
        errors.push(SpecError::new(
            "spec.notifications.webhook",
            "has no URL; name a Secret key in urlSecretRef (the in-cluster controller) or a \
             file in urlFile (`cohort run`)",
        ));
    }
    if let Some(reference) = &webhook.url_secret_ref {
        check_secret_key_ref("spec.notifications.webhook.urlSecretRef", reference, errors);
    }
    if webhook.url_file.as_deref().is_some_and(str::is_empty) {
        errors.push(SpecError::new(
            "spec.notifications.webhook.urlFile",
            "is empty; give the path of the file holding the URL, or remove the field",
        ));
    }
}

/// A Secret reference's name and key, as the API server takes them.
fn check_secret_key_ref(field: &str, reference: &SecretKeyRef, errors: &mut Vec<SpecError>) {
    if !is_dns_subdomain(&reference.name) {
        errors.push(SpecError::new(
            &format!("{field}.name"),
            &format!(
                "{:?} is not a Secret name; use lowercase letters, digits, '-' and '.'",
                reference.name
            ),
        ));
    }
    let key = &reference.key;
    let key_ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !key_ok {
        errors.push(SpecError::new(
            &format!("{field}.key"),
            &format!("{key:?} is not a Secret key; use letters, digits, '-', '_' and '.'"),
        ));
    }
}

fn check_target(target: &Target, errors: &mut Vec<SpecError>) {
    match target {
        Target::WasmPlugin(plugin) => {
            if !is_dns_subdomain(&plugin.name) {
                errors.push(SpecError::new(
                    "spec.target.wasmPlugin.name",
                    &format!(
                        "{:?} is not a Kubernetes object name; use lowercase letters, digits, '-' and '.'",
                        plugin.name
                    ),
                ));
            }
            if let Some(namespace) = &plugin.namespace {
                if !is_dns_label(namespace) {
                    errors.push(SpecError::new(
                        "spec.target.wasmPlugin.namespace",
                        &format!(
                            "{namespace:?} is not a namespace name; use {NAMESPACE_RULE}, or omit it for the rollout's namespace"
                        ),
                    ));
                }
            }
        }
        Target::EnvoyEcds(ecds) => {
            if !ecds.path.starts_with('/') {
                errors.push(SpecError::new(
                    "spec.target.envoyEcds.path",
                    &format!(
                        "{:?} is not an absolute path; give the path Envoy's path_config_source watches",
                        ecds.path
                    ),
                ));
            }
            if ecds.filter_name.is_empty() {
                errors.push(SpecError::new(
                    "spec.target.envoyEcds.filterName",
                    "is empty; give the TypedExtensionConfig name of the HTTP filter (its config_discovery name)",
                ));
            }
        }
    }
}

/// Each step's bake, parsed (`None` where it is not a duration).
fn check_steps(spec: &CanaryRolloutSpec, errors: &mut Vec<SpecError>) -> Vec<Option<Duration>> {
    let steps = &spec.steps;
    if steps.is_empty() {
        errors.push(SpecError::new(
            "spec.steps",
            "is empty; list the weights, ending with {weight: 100}, or omit the field for 1, 5, 25, 50, 75, 100",
        ));
        return Vec::new();
    }
    let mut bakes = Vec::with_capacity(steps.len());
    if steps.len() > MAX_STEPS {
        errors.push(SpecError::new(
            "spec.steps",
            &format!("has {} steps; at most {MAX_STEPS}", steps.len()),
        ));
    }
    let mut previous: Option<(f64, u32)> = None;
    for (i, step) in steps.iter().enumerate() {
        let field = format!("spec.steps[{i}]");
        let weight = step.weight;
        if !(weight.is_finite() && weight > 0.0 && weight <= 100.0) {
            errors.push(SpecError::new(
                &format!("{field}.weight"),
                &format!("{weight} is out of range; use a percentage above 0 and at most 100"),
            ));
        } else if ((weight * 100.0).round() - weight * 100.0).abs() > 1e-6 {
            errors.push(SpecError::new(
                &format!("{field}.weight"),
                &format!(
                    "{weight} has more than two decimals; weights have 0.01% resolution (e.g. 0.25)"
                ),
            ));
        } else {
            let weight_bp = step.weight_bp();
            if let Some((previous_weight, previous_bp)) = previous {
                if weight_bp <= previous_bp {
                    errors.push(SpecError::new(
                        &format!("{field}.weight"),
                        &format!(
                            "{weight} is not above the previous step's {previous_weight}; weights must strictly increase"
                        ),
                    ));
                }
            }
            previous = Some((weight, weight_bp));
        }
        match duration::parse(&step.bake) {
            Ok(bake) => bakes.push(Some(bake)),
            Err(problem) => {
                errors.push(SpecError::new(
                    &format!("{field}.bake"),
                    &problem.to_string(),
                ));
                bakes.push(None);
            }
        }
    }
    let last = steps.len() - 1;
    if steps[last].weight_bp() != FULL_WEIGHT_BP && steps[last].weight.is_finite() {
        errors.push(SpecError::new(
            &format!("spec.steps[{last}].weight"),
            &format!(
                "the last step is {}, not 100; end with {{weight: 100}}: reaching it is the promotion",
                steps[last].weight
            ),
        ));
    }
    bakes
}

/// The gates with every sequential gate's `alpha` set to the level it tests at in each step:
/// its own, or an even share of what `spec.analysis.alpha` leaves. A false rollback needs some
/// gate to fail a healthy canary in some analysed step, so by the union bound the rollout's
/// chance of one is at most the sum of those levels over gates and steps: the budget. Steps
/// are analysed before they advance; the last (100%) step is reached, not analysed.
fn split_error_budget(spec: &CanaryRolloutSpec, errors: &mut Vec<SpecError>) -> Vec<GateSpec> {
    let budget = spec.analysis.alpha;
    let mut gates = spec.analysis.gates.clone();
    if !(budget > 0.0 && budget <= 0.5) {
        errors.push(SpecError::new(
            "spec.analysis.alpha",
            &format!(
                "{budget} is out of range; use a false-rollback rate above 0 and at most 0.5 \
                 (0.01 = 1%)"
            ),
        ));
        return gates;
    }
    let analysed_steps = spec.steps.len().saturating_sub(1).max(1) as f64;
    let sequential = || {
        spec.analysis
            .gates
            .iter()
            .filter_map(|gate| match &gate.check {
                GateCheck::Sequential(sequential) => Some(sequential),
                _ => None,
            })
    };
    if sequential()
        .filter_map(|gate| gate.alpha)
        .any(|alpha| !(alpha > 0.0 && alpha <= 0.5))
    {
        // Reported by the gate's own check; its share of the budget means nothing yet.
        return gates;
    }
    let own: f64 = sequential().filter_map(|gate| gate.alpha).sum();
    let sharing = sequential().filter(|gate| gate.alpha.is_none()).count();
    let spent = own * analysed_steps;
    let left = budget - spent;
    // A little slack for the sum's rounding: 0.002 × 5 steps is a budget of 0.01, exactly.
    if left < -1e-12 || (sharing > 0 && left <= 1e-12) {
        errors.push(SpecError::new(
            "spec.analysis.alpha",
            &format!(
                "is {budget}, but the sequential gates' own alphas spend {} over {} analysed \
                 steps{}; raise spec.analysis.alpha, or omit the gates' alpha to share the \
                 budget evenly",
                crate::format::number(spent),
                analysed_steps,
                if sharing > 0 {
                    " and leave nothing for the gates without one"
                } else {
                    ""
                }
            ),
        ));
        return gates;
    }
    let share = left / (sharing.max(1) as f64 * analysed_steps);
    for gate in &mut gates {
        if let GateCheck::Sequential(sequential) = &mut gate.check {
            sequential.alpha.get_or_insert(share);
        }
    }
    gates
}

/// `parsed` is `text` parsed; returns it when it is positive.
fn check_positive_duration(
    field: &str,
    text: &str,
    parsed: Result<Duration, crate::Error>,
    errors: &mut Vec<SpecError>,
) -> Option<Duration> {
    match parsed {
        Ok(parsed) if parsed == Duration::ZERO => {
            errors.push(SpecError::new(
                field,
                &format!("{text:?} is zero; give a positive duration such as \"30s\""),
            ));
            None
        }
        Ok(parsed) => Some(parsed),
        Err(problem) => {
            errors.push(SpecError::new(field, &problem.to_string()));
            None
        }
    }
}

/// Each gate's `sequential.maxDuration` as parsed (`None` when not sequential or unreadable).
fn check_gates(gates: &[GateSpec], errors: &mut Vec<SpecError>) -> Vec<Option<Duration>> {
    if gates.len() > MAX_GATES {
        errors.push(SpecError::new(
            "spec.analysis.gates",
            &format!("has {} gates; at most {MAX_GATES}", gates.len()),
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(gates.len());
    let mut max_durations = Vec::with_capacity(gates.len());
    for (i, gate) in gates.iter().enumerate() {
        let field = format!("spec.analysis.gates[{i}]");
        let name = gate.name();
        if gate.name.is_none() && matches!(gate.check, GateCheck::Custom(_)) {
            errors.push(SpecError::new(
                &format!("{field}.name"),
                "custom gates need a name; it labels the query's result in status and metrics",
            ));
        } else if !is_gate_name(&name) {
            errors.push(SpecError::new(
                &format!("{field}.name"),
                &format!("{name:?} is not a gate name; use 1-63 letters, digits, '-', '_' and '.'"),
            ));
        } else if let Some(other) = names.iter().position(|seen| *seen == name) {
            errors.push(SpecError::new(
                &format!("{field}.name"),
                &format!(
                    "{name:?} is also the name of gates[{other}]; give each gate its own name"
                ),
            ));
        }
        names.push(name);
        if gate.min_samples == Some(0) {
            errors.push(SpecError::new(
                &format!("{field}.minSamples"),
                "must be at least 1: gates never judge on no data",
            ));
        }
        max_durations.push(check_gate(&field, &gate.check, errors));
    }
    max_durations
}

/// A sequential gate's `maxDuration`, parsed.
fn check_gate(field: &str, check: &GateCheck, errors: &mut Vec<SpecError>) -> Option<Duration> {
    let mut fraction = |path: &str, value: f64| {
        if !(0.0..=1.0).contains(&value) {
            errors.push(SpecError::new(
                &format!("{field}.{path}"),
                &format!("{value} is out of range; it is a fraction from 0 to 1 (0.01 = 1%)"),
            ));
        }
    };
    match check {
        GateCheck::ErrorRate(gate) => {
            fraction("errorRate.maxIncrease", gate.max_increase);
            if let Some(max_rate) = gate.max_rate {
                fraction("errorRate.maxRate", max_rate);
            }
        }
        GateCheck::BusinessEvent(gate) => fraction("businessEvent.maxDrop", gate.max_drop),
        GateCheck::Latency(gate) => {
            if !(gate.quantile > 0.0 && gate.quantile < 1.0) {
                errors.push(SpecError::new(
                    &format!("{field}.latency.quantile"),
                    &format!(
                        "{} is out of range; use a quantile strictly between 0 and 1 (0.99 = p99)",
                        gate.quantile
                    ),
                ));
            }
            for (path, value) in [
                ("latency.tolerance", gate.tolerance),
                ("latency.slackMs", gate.slack_ms),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    errors.push(SpecError::new(
                        &format!("{field}.{path}"),
                        &format!("{value} is out of range; use 0 or more"),
                    ));
                }
            }
        }
        GateCheck::Sequential(gate) => return check_sequential(field, gate, errors),
        GateCheck::Custom(gate) => {
            if gate.query.trim().is_empty() {
                errors.push(SpecError::new(
                    &format!("{field}.custom.query"),
                    "is empty; give a PromQL query returning one number",
                ));
            }
            if let Err(problem) = query::check_template(&gate.query) {
                errors.push(SpecError::new(
                    &format!("{field}.custom.query"),
                    &problem.to_string(),
                ));
            }
            match (gate.min, gate.max) {
                (None, None) => errors.push(SpecError::new(
                    &format!("{field}.custom"),
                    "has neither min nor max; give at least one bound",
                )),
                (Some(min), Some(max)) if min > max => errors.push(SpecError::new(
                    &format!("{field}.custom.min"),
                    &format!("{min} is above max {max}; swap them"),
                )),
                _ => {}
            }
            for (path, value) in [("custom.min", gate.min), ("custom.max", gate.max)] {
                if value.is_some_and(|value| !value.is_finite()) {
                    errors.push(SpecError::new(
                        &format!("{field}.{path}"),
                        "must be a finite number",
                    ));
                }
            }
        }
    }
    None
}

/// The gate's `maxDuration`, parsed (zero included: the deadline check compares it as written).
fn check_sequential(
    field: &str,
    gate: &SequentialGate,
    errors: &mut Vec<SpecError>,
) -> Option<Duration> {
    let mut problem = |path: &str, text: String| {
        errors.push(SpecError::new(&format!("{field}.sequential.{path}"), &text));
    };
    if let Some(alpha) = gate.alpha.filter(|alpha| !(*alpha > 0.0 && *alpha <= 0.5)) {
        problem(
            "alpha",
            format!(
                "{alpha} is out of range; use a false-rollback rate above 0 and at most 0.5 (0.01 = 1%), or omit it to take a share of spec.analysis.alpha"
            ),
        );
    }
    match (gate.metric, gate.event.as_deref()) {
        (SequentialMetric::BusinessEvent, None | Some("")) => problem(
            "event",
            "is missing; a businessEvent sequential gate names the event it compares".to_owned(),
        ),
        (SequentialMetric::ErrorRate | SequentialMetric::Latency, Some(_)) => problem(
            "event",
            "is only read with metric businessEvent; remove it or set the metric".to_owned(),
        ),
        _ => {}
    }
    if let Some(quantile) = gate.quantile {
        if !(quantile > 0.0 && quantile < 1.0) {
            problem(
                "quantile",
                format!("{quantile} is out of range; use a quantile strictly between 0 and 1 (0.99 = p99)"),
            );
        }
    }
    if let Some(ratio) = gate.max_ratio {
        if !(ratio.is_finite() && ratio >= 1.0) {
            problem(
                "maxRatio",
                format!(
                    "{ratio} is out of range; use a ratio of 1 or more (2 = twice stable's rate)"
                ),
            );
        }
    }
    for (path, value) in [
        ("maxIncrease", gate.max_increase),
        ("maxDrop", gate.max_drop),
    ] {
        if let Some(value) = value.filter(|value| !(0.0..=1.0).contains(value)) {
            problem(
                path,
                format!("{value} is out of range; it is a fraction from 0 to 1 (0.01 = 1%)"),
            );
        }
    }
    match duration::parse(&gate.max_duration) {
        Ok(parsed) => {
            if parsed.is_zero() {
                problem(
                    "maxDuration",
                    format!(
                        "{:?} is zero; give a positive duration such as \"10m\"",
                        gate.max_duration
                    ),
                );
            }
            Some(parsed)
        }
        Err(error) => {
            problem("maxDuration", error.to_string());
            None
        }
    }
}

/// A sequential gate is inconclusive while it gathers evidence; a no-data deadline shorter than
/// its `maxDuration` would make the failure policy act on a test that is still running.
/// `deadline` and `max_durations` (per gate) are the parsed durations.
fn check_sequential_deadlines(
    spec: &CanaryRolloutSpec,
    deadline: Option<&Duration>,
    max_durations: &[Option<Duration>],
    errors: &mut Vec<SpecError>,
) {
    let Some(deadline) = deadline else {
        return;
    };
    for (i, (gate, max)) in spec.analysis.gates.iter().zip(max_durations).enumerate() {
        let GateCheck::Sequential(sequential) = &gate.check else {
            continue;
        };
        if max.is_some_and(|max| max > *deadline) {
            errors.push(SpecError::new(
                &format!("spec.analysis.gates[{i}].sequential.maxDuration"),
                &format!(
                    "{} is longer than spec.failurePolicy.noDataDeadline {}: the failure policy \
                     would act while the test still gathers evidence; shorten maxDuration or \
                     raise noDataDeadline",
                    sequential.max_duration, spec.failure_policy.no_data_deadline
                ),
            ));
        }
    }
}

fn is_gate_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label)
}

// Also built for cohort-controller's tests (feature `test-support`), which start from `minimal_spec`.
#[cfg(any(test, feature = "test-support"))]
#[cfg_attr(not(test), allow(dead_code, unused_imports))]
pub mod tests {
    use super::*;
    use crate::crd::{
        default_gates, default_steps, AnalysisSpec, AnonymousSpec, BusinessEventGate, CustomGate,
        EnvoyEcdsTarget, ErrorRateGate, FailurePolicy, LatencyGate, SecretKeyRef, Step,
        WasmPluginTarget,
    };

    /// The smallest valid spec: one host, every default.
    pub fn minimal_spec() -> CanaryRolloutSpec {
        CanaryRolloutSpec {
            target: Target::WasmPlugin(WasmPluginTarget {
                name: "cohort".into(),
                namespace: None,
            }),
            salt: None,
            hosts: vec!["checkout".into()],
            stable_version: "stable".into(),
            canary_version: "canary".into(),
            identity: Vec::new(),
            anonymous: AnonymousSpec::default(),
            force_token_secret_ref: None,
            force_token_file: None,
            steps: default_steps(),
            analysis: AnalysisSpec::default(),
            failure_policy: FailurePolicy::default(),
            notifications: None,
            paused: false,
            abort: false,
            promote: false,
            restart_at: None,
            workload: None,
        }
    }

    #[test]
    fn minimal_and_defaulted_specs_are_valid() {
        assert_eq!(validate_spec(&minimal_spec(), "checkout"), Ok(()));
        // The YAML a person writes gets the same defaults from serde as from the schema.
        let spec: CanaryRolloutSpec = serde_json::from_value(serde_json::json!({
            "target": {"envoyEcds": {"path": "/etc/envoy/ecds.yaml"}},
            "hosts": ["checkout"]
        }))
        .unwrap();
        assert_eq!(validate_spec(&spec, "checkout"), Ok(()));
        assert_eq!(spec.steps, default_steps());
        assert_eq!(spec.analysis.gates, default_gates());
        assert_eq!(spec.analysis.interval, "30s");
        assert_eq!(spec.failure_policy.max_consecutive_errors, 3);
    }

    fn gate(check: GateCheck) -> GateSpec {
        GateSpec::new(check)
    }

    #[test]
    fn notification_webhooks_need_a_url_source_and_a_valid_secret_reference() {
        use crate::crd::{NotificationsSpec, WebhookFormat, WebhookSpec};
        let with = |url_secret_ref: Option<SecretKeyRef>, url_file: Option<&str>| {
            let mut spec = minimal_spec();
            spec.notifications = Some(NotificationsSpec {
                webhook: WebhookSpec {
                    url_secret_ref,
                    url_file: url_file.map(str::to_owned),
                    format: WebhookFormat::Slack,
                },
            });
            validate_spec(&spec, "checkout")
                .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        let secret = |name: &str, key: &str| {
            Some(SecretKeyRef {
                name: name.into(),
                key: key.into(),
            })
        };
        assert_eq!(with(secret("hooks", "url"), None), Ok(()));
        assert_eq!(with(None, Some("webhook-url")), Ok(()));
        // One spec for both: the cluster reads the Secret, `cohort run` the file.
        assert_eq!(with(secret("hooks", "url"), Some("webhook-url")), Ok(()));
        let problems = |result: Result<(), Vec<String>>| result.unwrap_err().join("\n");
        let none = problems(with(None, None));
        assert!(
            none.starts_with("spec.notifications.webhook: has no URL"),
            "{none}"
        );
        let bad = problems(with(secret("Hooks", "a/b"), Some("")));
        for expected in [
            "spec.notifications.webhook.urlSecretRef.name: \"Hooks\" is not a Secret name",
            "spec.notifications.webhook.urlSecretRef.key: \"a/b\" is not a Secret key",
            "spec.notifications.webhook.urlFile: is empty",
        ] {
            assert!(bad.contains(expected), "{expected}\n{bad}");
        }
    }

    #[test]
    fn bad_specs_name_the_field_and_the_fix() {
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: &[(Edit, &str)] = &[
            (|s| s.steps.clear(), "spec.steps: is empty"),
            (
                |s| s.force_token_secret_ref = Some(SecretKeyRef { name: "Bad_Name".into(), key: "token".into() }),
                "spec.forceTokenSecretRef.name: \"Bad_Name\" is not a Secret name",
            ),
            (
                |s| s.force_token_secret_ref = Some(SecretKeyRef { name: "t".into(), key: "a/b".into() }),
                "spec.forceTokenSecretRef.key: \"a/b\" is not a Secret key",
            ),
            (
                |s| {
                    s.force_token_secret_ref = Some(SecretKeyRef { name: "t".into(), key: "token".into() });
                    s.force_token_file = Some("token".into());
                },
                "spec.forceTokenFile: is set together with forceTokenSecretRef",
            ),
            (|s| s.force_token_file = Some(String::new()), "spec.forceTokenFile: is empty"),
            (|s| s.steps = vec![Step::new(1.0, "1m"); 21], "spec.steps: has 21 steps; at most 20"),
            (|s| s.steps[0].weight = 0.0, "spec.steps[0].weight: 0 is out of range"),
            (|s| s.steps[0].weight = -1.0, "spec.steps[0].weight: -1 is out of range"),
            (|s| s.steps[0].weight = f64::NAN, "spec.steps[0].weight: NaN is out of range"),
            (|s| s.steps[5].weight = 100.5, "spec.steps[5].weight: 100.5 is out of range"),
            (|s| s.steps[1].weight = 5.125, "spec.steps[1].weight: 5.125 has more than two decimals"),
            (|s| s.steps[2].weight = 5.0, "spec.steps[2].weight: 5 is not above the previous step's 5"),
            (|s| s.steps[2].weight = 4.0, "spec.steps[2].weight: 4 is not above the previous step's 5"),
            (|s| s.steps[5].weight = 90.0, "spec.steps[5].weight: the last step is 90, not 100"),
            (|s| s.steps[3].bake = "5 minutes".into(), "spec.steps[3].bake: \"5 minutes\" is not a duration"),
            (|s| s.steps[3].bake = String::new(), "spec.steps[3].bake: is empty"),
            (|s| s.analysis.interval = "0s".into(), "spec.analysis.interval: \"0s\" is zero"),
            (|s| s.analysis.interval = "30".into(), "spec.analysis.interval: \"30\" is not a duration"),
            (|s| s.analysis.min_samples = 0, "spec.analysis.minSamples: must be at least 1"),
            (|s| s.failure_policy.no_data_deadline = "1d".into(), "spec.failurePolicy.noDataDeadline:"),
            (
                |s| s.target = Target::WasmPlugin(WasmPluginTarget { name: "Cohort_Plugin".into(), namespace: None }),
                "spec.target.wasmPlugin.name: \"Cohort_Plugin\" is not a Kubernetes object name",
            ),
            (
                |s| s.target = Target::WasmPlugin(WasmPluginTarget { name: "cohort".into(), namespace: Some("a.b".into()) }),
                "spec.target.wasmPlugin.namespace: \"a.b\" is not a namespace name; use 1-63 characters of a-z, 0-9 and '-'",
            ),
            (
                |s| s.target = Target::EnvoyEcds(EnvoyEcdsTarget { path: "ecds.yaml".into(), filter_name: "cohort".into() }),
                "spec.target.envoyEcds.path: \"ecds.yaml\" is not an absolute path",
            ),
            (
                |s| s.target = Target::EnvoyEcds(EnvoyEcdsTarget { path: "/e.yaml".into(), filter_name: String::new() }),
                "spec.target.envoyEcds.filterName: is empty",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::ErrorRate(ErrorRateGate { max_increase: 1.5, max_rate: None }))],
                "spec.analysis.gates[0].errorRate.maxIncrease: 1.5 is out of range",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::ErrorRate(ErrorRateGate { max_increase: 0.1, max_rate: Some(-0.1) }))],
                "spec.analysis.gates[0].errorRate.maxRate: -0.1 is out of range",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::Latency(LatencyGate { quantile: 1.0, tolerance: 0.2, slack_ms: 0.0 }))],
                "spec.analysis.gates[0].latency.quantile: 1 is out of range",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::Latency(LatencyGate { quantile: 0.5, tolerance: -0.1, slack_ms: 0.0 }))],
                "spec.analysis.gates[0].latency.tolerance: -0.1 is out of range",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::Latency(LatencyGate { quantile: 0.5, tolerance: 0.1, slack_ms: f64::INFINITY }))],
                "spec.analysis.gates[0].latency.slackMs: inf is out of range",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::BusinessEvent(BusinessEventGate { event: "buy".into(), max_drop: 2.0 }))],
                "spec.analysis.gates[0].businessEvent.maxDrop: 2 is out of range",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::Custom(CustomGate { query: "up".into(), min: Some(0.0), max: None }))],
                "spec.analysis.gates[0].name: custom gates need a name",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: Some("q".into()), min_samples: None, check: GateCheck::Custom(CustomGate { query: "up".into(), min: None, max: None }) }],
                "spec.analysis.gates[0].custom: has neither min nor max",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: Some("q".into()), min_samples: None, check: GateCheck::Custom(CustomGate { query: "up".into(), min: Some(2.0), max: Some(1.0) }) }],
                "spec.analysis.gates[0].custom.min: 2 is above max 1",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: Some("q".into()), min_samples: None, check: GateCheck::Custom(CustomGate { query: " ".into(), min: Some(0.0), max: None }) }],
                "spec.analysis.gates[0].custom.query: is empty",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: Some("q".into()), min_samples: None, check: GateCheck::Custom(CustomGate { query: "x{pod=\"{{pod}}\"}".into(), min: Some(0.0), max: None }) }],
                "spec.analysis.gates[0].custom.query: unknown placeholder {{pod}}; use {{namespace}}, {{rollout}}, {{version}}, {{interval}}",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: Some("q".into()), min_samples: None, check: GateCheck::Custom(CustomGate { query: "x[{{interval".into(), min: Some(0.0), max: None }) }],
                "spec.analysis.gates[0].custom.query: has an unclosed \"{{\"",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: Some("q".into()), min_samples: None, check: GateCheck::Custom(CustomGate { query: "up".into(), min: Some(f64::NAN), max: None }) }],
                "spec.analysis.gates[0].custom.min: must be a finite number",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::ErrorRate(ErrorRateGate { max_increase: 0.01, max_rate: None })); 2],
                "spec.analysis.gates[1].name: \"error-rate\" is also the name of gates[0]",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: Some("my gate".into()), min_samples: None, check: GateCheck::ErrorRate(ErrorRateGate { max_increase: 0.01, max_rate: None }) }],
                "spec.analysis.gates[0].name: \"my gate\" is not a gate name",
            ),
            (
                |s| s.analysis.gates = vec![GateSpec { name: None, min_samples: Some(0), check: GateCheck::ErrorRate(ErrorRateGate { max_increase: 0.01, max_rate: None }) }],
                "spec.analysis.gates[0].minSamples: must be at least 1",
            ),
            (
                |s| s.analysis.gates = vec![gate(GateCheck::ErrorRate(ErrorRateGate { max_increase: 0.01, max_rate: None })); 17],
                "spec.analysis.gates: has 17 gates; at most 16",
            ),
            // The filter's own checks, renamed to spec fields.
            (|s| s.hosts = vec!["checkout:8080".into()], "spec.hosts[0]: \"checkout:8080\" is not a host name"),
            (|s| s.canary_version = "stable".into(), "spec.canaryVersion: equals stableVersion"),
        ];
        for (edit, expected) in table {
            let mut spec = minimal_spec();
            edit(&mut spec);
            let errors = validate_spec(&spec, "checkout").unwrap_err();
            let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert!(
                messages.iter().any(|m| m.starts_with(expected)),
                "wanted an error starting with {expected:?}\n got {messages:?}"
            );
        }
    }

    #[test]
    fn valid_variations_pass() {
        type Edit = fn(&mut CanaryRolloutSpec);
        let table: &[Edit] = &[
            |s| s.steps = vec![Step::new(100.0, "0s")],
            |s| {
                s.steps = vec![
                    Step::new(0.01, "1m"),
                    Step::new(0.5, "1m"),
                    Step::new(100.0, "1m"),
                ]
            },
            |s| s.steps = vec![Step::new(12.34, "1h30m"), Step::new(100.0, "1.5h")],
            |s| s.analysis.gates.clear(),
            |s| s.hosts = vec!["*".into()],
            |s| {
                s.analysis.gates = vec![GateSpec {
                    name: Some("saturation".into()),
                    min_samples: Some(1),
                    check: GateCheck::Custom(CustomGate {
                        query: "max(x{ns=\"{{namespace}}\",r=\"{{rollout}}\",v=\"{{ version }}\"}[{{interval}}])".into(),
                        min: None,
                        max: Some(0.8),
                    }),
                }]
            },
        ];
        for (i, edit) in table.iter().enumerate() {
            let mut spec = minimal_spec();
            edit(&mut spec);
            assert_eq!(validate_spec(&spec, "checkout"), Ok(()), "variation {i}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut spec = minimal_spec();
        spec.steps[1].weight = 0.0;
        spec.analysis.interval = "soon".into();
        spec.hosts = vec!["Bad".into()];
        let errors = validate_spec(&spec, "checkout").unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let joined = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        assert_eq!(SpecErrors(errors).to_string(), joined);
    }

    #[test]
    fn sequential_gates_are_checked() {
        use crate::crd::{SequentialGate, SequentialMetric};
        let sequential = |edit: &dyn Fn(&mut SequentialGate)| {
            let mut gate = SequentialGate::new(SequentialMetric::ErrorRate);
            edit(&mut gate);
            let mut spec = minimal_spec();
            spec.analysis.gates = vec![GateSpec::new(GateCheck::Sequential(gate))];
            validate_spec(&spec, "checkout")
                .err()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(sequential(&|_| {}), Vec::<String>::new());
        type Edit<'a> = &'a dyn Fn(&mut SequentialGate);
        let table: Vec<(Edit, &str)> =
            vec![
            (&|g| g.alpha = Some(0.0), "sequential.alpha: 0 is out of range"),
            (&|g| g.alpha = Some(0.6), "sequential.alpha: 0.6 is out of range"),
            (
                &|g| g.metric = SequentialMetric::BusinessEvent,
                "sequential.event: is missing",
            ),
            (
                &|g| g.event = Some("checkout".into()),
                "sequential.event: is only read with metric businessEvent",
            ),
            (
                &|g| g.quantile = Some(1.0),
                "sequential.quantile: 1 is out of range",
            ),
            (
                &|g| g.max_ratio = Some(0.5),
                "sequential.maxRatio: 0.5 is out of range",
            ),
            (
                &|g| g.max_increase = Some(2.0),
                "sequential.maxIncrease: 2 is out of range",
            ),
            (
                &|g| g.max_drop = Some(-0.1),
                "sequential.maxDrop: -0.1 is out of range",
            ),
            (
                &|g| g.max_duration = "0s".into(),
                "sequential.maxDuration: \"0s\" is zero",
            ),
            (
                &|g| g.max_duration = "soon".into(),
                "sequential.maxDuration: \"soon\" is not a duration",
            ),
            (
                &|g| g.max_duration = "11m".into(),
                "sequential.maxDuration: 11m is longer than spec.failurePolicy.noDataDeadline 10m",
            ),
        ];
        for (edit, expected) in table {
            let errors = sequential(edit);
            assert!(
                errors.len() == 1
                    && errors[0].starts_with("spec.analysis.gates[0].")
                    && errors[0].contains(expected),
                "{expected}: {errors:?}"
            );
        }
    }
}
