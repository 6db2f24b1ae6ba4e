//! Custom gate queries: PromQL templates with `{{namespace}}`, `{{rollout}}`, `{{version}}` and
//! `{{interval}}` (spaces inside the braces allowed, as in Flagger's MetricTemplates).
//!
//! Values are escaped for a PromQL double-quoted string, since that is where label values go
//! (`{cohort_version="{{version}}"}`); the interval is rendered as a PromQL duration.

use std::time::Duration;

/// The placeholders a query may use.
pub const PLACEHOLDERS: [&str; 4] = ["namespace", "rollout", "version", "interval"];

/// What the placeholders stand for in one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryContext<'a> {
    /// The CanaryRollout's namespace.
    pub namespace: &'a str,
    /// The CanaryRollout's name (the `cohort_rollout` label).
    pub rollout: &'a str,
    /// The version being measured (the `cohort_version` label).
    pub version: &'a str,
    /// The analysis window.
    pub interval: Duration,
}

/// Why a template cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("has an unclosed \"{{{{\"; placeholders are written {{{{name}}}}")]
    Unclosed,
    /// A placeholder that is not one of [`PLACEHOLDERS`].
    #[error("unknown placeholder {{{{{0}}}}}; use {{{{namespace}}}}, {{{{rollout}}}}, {{{{version}}}}, {{{{interval}}}}")]
    Unknown(String),
}

/// Renders `template` for `context`.
pub fn render_query(template: &str, context: &QueryContext<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
        match after[..end].trim() {
            "namespace" => out.push_str(&escape_label_value(context.namespace)),
            "rollout" => out.push_str(&escape_label_value(context.rollout)),
            "version" => out.push_str(&escape_label_value(context.version)),
            "interval" => out.push_str(&promql_duration(context.interval)),
            other => return Err(TemplateError::Unknown(other.to_owned())),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template without rendering it for real.
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    let context = QueryContext {
        namespace: "",
        rollout: "",
        version: "",
        interval: Duration::from_secs(1),
    };
    render_query(template, &context).map(|_| ())
}

/// Escapes a value for a PromQL double-quoted string.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `30s`, `1500ms`, `300s`: whole seconds when exact, else milliseconds (PromQL takes both;
/// it does not take fractions such as `1.5h`).
pub fn promql_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let context = QueryContext {
            namespace: "shop",
            rollout: "checkout",
            version: "canary",
            interval: Duration::from_secs(30),
        };
        let table: &[(&str, &str)] = &[
            ("up", "up"),
            (
                r#"sum(rate(x{ns="{{namespace}}",r="{{rollout}}",v="{{version}}"}[{{interval}}]))"#,
                r#"sum(rate(x{ns="shop",r="checkout",v="canary"}[30s]))"#,
            ),
            ("{{ version }}/{{version}}", "canary/canary"),
            ("{{interval}}{{interval}}", "30s30s"),
            ("a { b } {c}", "a { b } {c}"),
        ];
        for (template, expected) in table {
            assert_eq!(render_query(template, &context).as_deref(), Ok(*expected));
        }
        let hostile = QueryContext {
            version: "v\"} or vector(1) #\\\n",
            interval: Duration::from_millis(1500),
            ..context
        };
        assert_eq!(
            render_query(r#"x{v="{{version}}"}[{{interval}}]"#, &hostile).as_deref(),
            Ok(r#"x{v="v\"} or vector(1) #\\\n"}[1500ms]"#)
        );
    }

    #[test]
    fn refuses_bad_templates() {
        assert_eq!(check_template("x[{{interval"), Err(TemplateError::Unclosed));
        assert_eq!(
            check_template("x{pod=\"{{pod}}\"}"),
            Err(TemplateError::Unknown("pod".into()))
        );
        assert_eq!(
            TemplateError::Unknown("pod".into()).to_string(),
            "unknown placeholder {{pod}}; use {{namespace}}, {{rollout}}, {{version}}, {{interval}}"
        );
        assert_eq!(
            TemplateError::Unclosed.to_string(),
            "has an unclosed \"{{\"; placeholders are written {{name}}"
        );
        assert_eq!(check_template("{{namespace}}{{ rollout }}"), Ok(()));
    }

    #[test]
    fn durations_for_promql() {
        assert_eq!(promql_duration(Duration::from_secs(300)), "300s");
        assert_eq!(promql_duration(Duration::from_millis(2500)), "2500ms");
        assert_eq!(promql_duration(Duration::ZERO), "0s");
    }
}
