//! What can go wrong in cohort-rollout, apart from a spec's validation: a duration string that
//! does not parse, a PromQL template that cannot be rendered, the CRD that cannot be written as
//! YAML. A spec's validation has its own report, [`crate::spec_error::SpecErrors`]: one entry
//! per field, which the plan, `Degraded`/`InvalidSpec` conditions and the CLI list one by one.

/// Why a cohort-rollout function failed. Each message reads after the field or file it is
/// about (`spec.steps[0].bake: is empty; …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A duration string is empty.
    #[error("is empty; write a duration such as \"30s\", \"5m\" or \"1h30m\"")]
    DurationEmpty,
    /// A duration has a part with no number, no unit, or an unknown unit.
    #[error("{0:?} is not a duration; write a number and a unit (ms, s, m, h), e.g. \"30s\" or \"1h30m\"")]
    DurationMalformed(String),
    /// A duration does not fit in a `Duration`.
    #[error("{0:?} is too long")]
    DurationOverflow(String),
    /// A query template has `{{` without a matching `}}`.
    #[error("has an unclosed \"{{{{\"; placeholders are written {{{{name}}}}")]
    TemplateUnclosed,
    /// A query template has a placeholder that is not one of [`crate::query::PLACEHOLDERS`].
    #[error("unknown placeholder {{{{{0}}}}}; use {{{{namespace}}}}, {{{{rollout}}}}, {{{{version}}}}, {{{{interval}}}}")]
    TemplateUnknown(String),
    /// A query template has a name placeholder outside a double- or single-quoted string.
    #[error("has {{{{{0}}}}} outside a quoted string; put it inside \"...\" (a label value such as {{cohort_version=\"{{{{version}}}}\"}}), where its value is escaped")]
    TemplateUnquoted(String),
    /// The YAML serializer refused the CRD (its message: the serializer's error is neither
    /// `Clone` nor `PartialEq`).
    #[error("cannot render the CRD as YAML: {0}")]
    CrdYaml(String),
}
