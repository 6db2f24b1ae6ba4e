//! Custom gate queries: PromQL templates with `{{namespace}}`, `{{rollout}}`, `{{version}}` and
//! `{{interval}}` (spaces inside the braces allowed, as in Flagger's MetricTemplates).
//!
//! `{{namespace}}`, `{{rollout}}` and `{{version}}` may only stand inside a double- or
//! single-quoted PromQL string (`{cohort_version="{{version}}"}`), and their values are escaped
//! for that string: whatever a name holds (quotes, braces, `=~`, backslashes, newlines), it
//! stays one string literal that reads back as the name, and cannot end the selector or add to
//! the query. A template that puts them anywhere else (bare, in a comment, in a raw backtick
//! string) is refused. `{{interval}}` renders as a PromQL duration, anywhere.

use std::time::Duration;

use crate::error::Error;

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

/// Renders `template` for `context`.
pub fn render_query(template: &str, context: &QueryContext<'_>) -> Result<String, Error> {
    let mut out = String::with_capacity(template.len() + 32);
    // Where the template is: inside a string opened by this quote, in a comment, or neither.
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{{") {
            let end = after.find("}}").ok_or(Error::TemplateUnclosed)?;
            let name = after[..end].trim();
            let value = match name {
                "namespace" => context.namespace,
                "rollout" => context.rollout,
                "version" => context.version,
                "interval" => {
                    out.push_str(&promql_duration(context.interval));
                    rest = &after[end + 2..];
                    continue;
                }
                other => return Err(Error::TemplateUnknown(other.to_owned())),
            };
            match quote {
                Some(quote @ ('"' | '\'')) if !comment => {
                    out.push_str(&escape_string_literal(value, quote));
                }
                _ => return Err(Error::TemplateUnquoted(name.to_owned())),
            }
            rest = &after[end + 2..];
            continue;
        }
        let mut len = c.len_utf8();
        match quote {
            None if comment => comment = c != '\n',
            None if c == '#' => comment = true,
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => {}
            // An escape: the next character cannot close the string.
            Some(open) if c == '\\' && open != '`' => {
                len += rest[len..].chars().next().map_or(0, char::len_utf8);
            }
            Some(open) if c == open => quote = None,
            Some(_) => {}
        }
        out.push_str(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(out)
}

/// Checks a template without rendering it for real.
pub fn check_template(template: &str) -> Result<(), Error> {
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
    escape_string_literal(value, '"')
}

/// Escapes `value` for a PromQL string opened by `quote` (`"` or `'`), so that Prometheus reads
/// it back as `value`: backslash, newline and the quote itself are escaped, and so is U+FFFD,
/// which Prometheus' lexer refuses as "invalid UTF-8" when it appears as is.
pub fn escape_string_literal(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\u{fffd}' => out.push_str("\\ufffd"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
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

// Also built for cohort-controller's tests (feature `test-support`), which check the queries it
// builds with the lexer and the hostile names.
#[cfg(any(test, feature = "test-support"))]
pub mod lexer;

#[cfg(any(test, feature = "test-support"))]
#[cfg_attr(not(test), allow(dead_code, unused_imports))]
pub mod tests {
    use super::lexer::{lex, Lexed};
    use super::*;

    /// Names no Kubernetes object can have, but a rollout file for `cohort run` can: each must
    /// reach Prometheus as one string literal holding exactly the name.
    pub const HOSTILE: &[&str] = &[
        "shop",
        "",
        "a\"b",
        "a'b",
        "a\"}",
        "\"} or vector(1) or x{a=\"",
        "'} or vector(1) or x{a='",
        "x\\",
        "x\\\"",
        "a=~\".*\"",
        "a\"=~\".*",
        "{{namespace}}",
        "}}",
        "a\nb",
        "a\r\tb\u{0}",
        "# comment",
        "`raw`",
        "\u{fffd}",
        "ünïcödé-用户",
        ".*|x",
    ];

    fn context(value: &str) -> QueryContext<'_> {
        QueryContext {
            namespace: value,
            rollout: value,
            version: value,
            interval: Duration::from_secs(30),
        }
    }

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
            (r#""{{ version }}/{{version}}""#, r#""canary/canary""#),
            ("x{v='{{version}}'}", "x{v='canary'}"),
            ("{{interval}}{{interval}}", "30s30s"),
            ("a { b } {c}", "a { b } {c}"),
            (
                r#"x{a="\"{{rollout}}"} # "{{interval}}"#,
                r#"x{a="\"checkout"} # "30s"#,
            ),
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

    /// Every hostile value, in double and single quotes, in every name placeholder: the query
    /// keeps the template's shape and each literal reads back as the value.
    #[test]
    fn hostile_values_stay_inside_their_string_literals() {
        type Expected = fn(&str) -> Vec<String>;
        let templates: [(&str, &str, Expected); 3] = [
            (
                r#"sum(rate(x{ns="{{namespace}}",r="{{rollout}}",v="{{version}}"}[{{interval}}]))"#,
                "sum(rate(x{ns=$,r=$,v=$}[30s]))",
                |v| vec![v.to_owned(); 3],
            ),
            (
                "max(x{ns='{{namespace}}', v=~'{{version}}'}) # ok",
                "max(x{ns=$, v=~$}) # ok",
                |v| vec![v.to_owned(); 2],
            ),
            (
                r#"label_replace(up, "a", "{{rollout}}-{{version}}", "", "")"#,
                "label_replace(up, $, $, $, $)",
                |v| vec!["a".into(), format!("{v}-{v}"), String::new(), String::new()],
            ),
        ];
        for value in HOSTILE {
            for (template, shape, expected) in templates {
                let rendered = render_query(template, &context(value)).unwrap();
                let lexed = lex(&rendered)
                    .unwrap_or_else(|e| panic!("{value:?}: Prometheus refuses {rendered}: {e}"));
                assert_eq!(
                    lexed.shape, shape,
                    "{value:?} changed the query: {rendered}"
                );
                assert_eq!(lexed.strings, expected(value), "{rendered}");
            }
        }
    }

    #[test]
    fn escaped_literals_read_back_as_the_value() {
        for value in HOSTILE {
            for quote in ['"', '\''] {
                let literal = format!("{quote}{}{quote}", escape_string_literal(value, quote));
                assert_eq!(
                    lex(&literal),
                    Ok(Lexed {
                        shape: "$".into(),
                        strings: vec![value.to_string()]
                    }),
                    "{literal}"
                );
            }
        }
    }

    #[test]
    fn refuses_bad_templates() {
        assert_eq!(check_template("x[{{interval"), Err(Error::TemplateUnclosed));
        assert_eq!(
            check_template("x{pod=\"{{pod}}\"}"),
            Err(Error::TemplateUnknown("pod".into()))
        );
        assert_eq!(
            Error::TemplateUnknown("pod".into()).to_string(),
            "unknown placeholder {{pod}}; use {{namespace}}, {{rollout}}, {{version}}, {{interval}}"
        );
        assert_eq!(
            Error::TemplateUnclosed.to_string(),
            "has an unclosed \"{{\"; placeholders are written {{name}}"
        );
        // Names outside a quoted string could end the selector: refused wherever they are.
        for (template, name) in [
            ("{{namespace}}{{ rollout }}", "namespace"),
            ("x{ns={{namespace}}}", "namespace"),
            ("x{v=`{{version}}`}", "version"),
            ("up # {{rollout}}", "rollout"),
            (r#"x{a="b"} or {{version}}"#, "version"),
            (r#"x{a="\\"{{rollout}}"#, "rollout"),
        ] {
            assert_eq!(
                check_template(template),
                Err(Error::TemplateUnquoted(name.into())),
                "{template}"
            );
        }
        assert_eq!(
            Error::TemplateUnquoted("version".into()).to_string(),
            "has {{version}} outside a quoted string; put it inside \"...\" (a label value such \
             as {cohort_version=\"{{version}}\"}), where its value is escaped"
        );
        assert_eq!(
            check_template(r#"x{a="{{namespace}}"}[{{ interval }}]"#),
            Ok(())
        );
    }

    #[test]
    fn durations_for_promql() {
        assert_eq!(promql_duration(Duration::from_secs(300)), "300s");
        assert_eq!(promql_duration(Duration::from_millis(2500)), "2500ms");
        assert_eq!(promql_duration(Duration::ZERO), "0s");
    }
}
