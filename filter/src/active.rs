//! The config a stream is served by. Its own module so that [`root`](crate::root), which makes
//! it, and [`stream`](crate::stream), which reads it, do not import each other.

use cohort_core::config::Compiled;

use crate::metrics::RolloutMetrics;

/// A config in service, with its metric ids. Streams hold an `Rc` to the one they started with.
#[derive(Debug)]
pub struct Active {
    /// The validated config.
    pub config: Compiled,
    /// Metric ids, indexed like `config.rollouts`.
    pub metrics: Vec<RolloutMetrics>,
}
