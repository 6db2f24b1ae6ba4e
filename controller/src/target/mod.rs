//! Where the filter config goes: an Istio WasmPlugin's `spec.pluginConfig` (server-side apply),
//! or a plain Envoy ECDS file (temp file + rename). Either way one rollout's entry changes and
//! every other rollout sharing the filter is left as it is. A rollout that goes away
//! ([`Target::release`]) takes its entry with it, so its users are served stable again.

use cohort_core::config::FilterConfig;

use crate::source::BoxFuture;
use crate::Error;

pub mod wasmplugin;

pub mod envoy_file;

/// A filter config holds one entry per rollout name, and the entry records its rollout's
/// namespace. Writing `rollouts.<name>` for the rollout of namespace `ours` over the entry of
/// another namespace's same-named rollout would take over that rollout's users, so it is
/// refused. An entry without a namespace (written before entries carried one) is taken over.
pub fn check_entry_namespace(
    target: &str,
    name: &str,
    existing: Option<&str>,
    ours: &str,
) -> Result<(), Error> {
    match existing {
        Some(theirs) if !entry_belongs_to(theirs, ours) => {
            let ours = if ours.is_empty() {
                "(no namespace)"
            } else {
                ours
            };
            Err(Error::TargetConflict(format!(
                "{target}: rollouts.{name} is the entry of CanaryRollout {theirs}/{name}, and a \
                 filter config holds one entry per rollout name; rename one of the two rollouts \
                 (metadata.name) or give the one in {ours} another target (spec.target)"
            )))
        }
        _ => Ok(()),
    }
}

/// Whether an entry recording namespace `entry` is the rollout of namespace `ours`'s to write
/// or remove (an entry without a namespace is anyone's of that name).
pub fn entry_belongs_to(entry: &str, ours: &str) -> bool {
    entry.is_empty() || entry == ours
}

/// What releasing a rollout's entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The entry was removed.
    Removed,
    /// The target held nothing of this rollout: nothing was written.
    Nothing,
    /// The target does not exist, so nothing serves this rollout's entry.
    TargetMissing,
}

/// A place the filter reads its config from. The driver's cycle ([`crate::driver`]) calls it
/// through this trait: [`Target::live_weight`], then [`Target::serves`] and [`Target::apply`] or
/// [`Target::withdraw`]; a deleted rollout calls [`Target::release`].
pub trait Target: Send + Sync {
    /// Makes the filter serve rollout `name` as `config` describes it (`config` carries that one
    /// rollout plus the filter-wide settings it needs), keeping every other rollout's entry.
    /// Returns once the write is accepted (API server answered, file renamed into place).
    fn apply<'a>(
        &'a self,
        name: &'a str,
        config: &'a FilterConfig,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Removes the entry of rollout `namespace/name`, keeping every other rollout's; the filter
    /// then serves stable to everyone that entry sent to the canary. A missing target is not an
    /// error: it serves no entry.
    fn release<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Released, Error>>;

    /// The weight the live entry of rollout `namespace/name` serves now (`None` without one: a
    /// same-named rollout's entry of another namespace is not this one's). A target that merges
    /// its writes onto what it read (the WasmPlugin) keeps this read for the writes that follow.
    fn live_weight<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, Error>>;

    /// Sets rollout `name`'s live entry to weight 0, keeping the rest of it (and the filter-wide
    /// settings, the force token among them): how a rollback reaches the filter when the entry
    /// cannot be built (a spec too broken, a force token that cannot be read). Nothing is written
    /// when there is no entry or it is at 0 already.
    fn withdraw<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;

    /// Whether the target is known, without I/O, to serve `config` for rollout `name` already
    /// (from what it read or wrote before), so nothing needs writing. `false` when it cannot
    /// tell.
    fn serves(&self, _name: &str, _config: &FilterConfig) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_written_only_for_its_own_namespace() {
        // (the entry's namespace, the writing rollout's, refused)
        let table = [
            (None, "shop", false),
            (Some("shop"), "shop", false),
            (Some(""), "shop", false),
            (Some(""), "", false),
            (Some("shop"), "blog", true),
            (Some("shop"), "", true),
        ];
        for (existing, ours, refused) in table {
            let result = check_entry_namespace("WasmPlugin mesh/cohort", "web", existing, ours);
            assert_eq!(result.is_err(), refused, "{existing:?} written by {ours:?}");
            if let Err(error) = result {
                let message = error.to_string();
                assert!(matches!(error, Error::TargetConflict(_)), "{message}");
                for part in [
                    "WasmPlugin mesh/cohort",
                    "rollouts.web",
                    "CanaryRollout shop/web",
                    "metadata.name",
                    "spec.target",
                ] {
                    assert!(message.contains(part), "{part:?} missing from {message}");
                }
            }
        }
    }
}
