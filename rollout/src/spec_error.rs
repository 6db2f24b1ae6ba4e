//! Problems found in a CanaryRollout spec, each named by its field. [`crate::validate`] finds
//! them, and so does [`crate::filter_config`] when the filter refuses the entry a spec makes.
//! They sit apart from both because `validate` calls `filter_config`: kept in `validate`, they
//! made the two modules import each other.

use std::fmt;

/// One problem with a spec: the field (a dotted path such as `spec.steps[2].weight`) and what is
/// wrong with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SpecError {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl SpecError {
    /// A problem with `field`.
    pub fn new(field: &str, problem: &str) -> Self {
        SpecError {
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }
}

/// Every problem found in one spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}
