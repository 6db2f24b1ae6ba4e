//! What can go wrong in cohort-controller, in one enum: a target refusing a push, a force token
//! that cannot be had, a metric source that cannot be set up, the in-cluster controller's
//! Kubernetes I/O, and `cohort run`'s files. One type lets the [`crate::driver`] cycle return the
//! same error to both drivers, and keeps the three ways it is read in one place: `cohort run`'s
//! exit code ([`Error::exit_code`]), the reconcile error counter's label
//! ([`Error::metric_label`]), and the `Degraded` reason ([`Error::degraded_reason`]).
//!
//! Leaf variants say what failed; [`Error::Push`] and [`Error::Release`] say what was being done
//! when it did, and carry the leaf (see [`Error::cause`]).

use std::path::PathBuf;
use std::time::Duration;

use cohort_core::config::ConfigErrors;
use cohort_rollout::validate::SpecErrors;

use crate::reconciler::FINALIZER;

/// Why a cohort-controller operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // What a target says when a write did not happen (nothing is half applied).
    /// The WasmPlugin or ECDS file does not exist.
    #[error("{0} not found; create it first (see manifests/)")]
    TargetNotFound(String),
    /// Someone else owns the fields with other values (server-side apply conflict), or the
    /// entry belongs to another namespace's rollout.
    #[error("conflict: {0}")]
    TargetConflict(String),
    /// Merged with what the target already holds, the config would not validate.
    #[error("the merged filter config is invalid: {0}")]
    InvalidFilterConfig(#[from] ConfigErrors),
    /// A transient failure (I/O, API server, timeout): retry with backoff.
    #[error("{0}")]
    TargetUnavailable(String),
    /// The write was taken but the proxy reading it refused the config (Envoy counted an ECDS
    /// update rejected); the config before keeps serving.
    #[error("{0}")]
    TargetRejected(String),

    // The force token. The messages never contain the token.
    /// The Secret, its key, or the file is missing or unreadable.
    #[error("{0}")]
    ForceTokenUnavailable(String),
    /// It was read, but is not a token the filter accepts.
    #[error("{source_name} does not hold a usable force token: {problem}")]
    ForceTokenInvalid {
        /// Where it was read from.
        source_name: String,
        /// What is wrong (without the token).
        problem: String,
    },

    // Setting up a metric source. (Reading samples never fails as a whole: a failed read marks
    // its samples `Observed::Failed`, which the gates turn into Error.)
    /// The URL given for Prometheus or Envoy's admin is not usable.
    #[error("{url:?} is not a usable URL: {reason}; give e.g. http://127.0.0.1:9090")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),

    // What was being done.
    /// A cycle failed before its push took (the target refused it, or the force token could not
    /// be had): nothing it planned is served, and the status was not advanced. Retried.
    #[error("cannot push the filter config: {0}")]
    Push(Box<Error>),
    /// A rollout's entry could not be taken out of its target. In the cluster the finalizer
    /// stays (the deletion waits) and the release is retried with backoff; for `cohort release`
    /// the file is as it was.
    #[error("cannot remove the rollout's entry from its target: {0}")]
    Release(Box<Error>),

    // The in-cluster controller.
    /// The CanaryRollout came without a namespace, though its kind is namespaced.
    #[error("CanaryRollout {0} has no namespace")]
    MissingNamespace(String),
    /// The status write failed; the weight may be pushed already, and the retry re-plans.
    #[error("cannot write the status of CanaryRollout {rollout}: {source}")]
    Status {
        /// `namespace/name`.
        rollout: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The finalizer could not be added or removed; retried with backoff.
    #[error(
        "cannot {action} finalizer {FINALIZER} on CanaryRollout {rollout}: {detail}; a 403 \
             means the controller's ClusterRole lacks `patch` on canaryrollouts (apply \
             manifests/controller/rbac.yaml), a 422 that metadata.finalizers changed since it \
             was read (the retry reads it again)"
    )]
    Finalizer {
        /// `add` or `remove`.
        action: &'static str,
        /// `namespace/name`.
        rollout: String,
        /// What failed.
        detail: String,
    },
    /// A Deployment of `spec.workload` could not be read or written; retried with backoff.
    #[error("cannot {doing} Deployment {deployment}: {source}")]
    Workload {
        /// `namespace/name`.
        deployment: String,
        /// What was being done (`scale`, `read`, ...).
        doing: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The reconcile did not finish in time (a hung API server, say); retried with backoff.
    #[error("the reconcile took longer than {0:?}; it is retried")]
    Timeout(Duration),
    /// Another Kubernetes API call failed (the leader Lease, for instance).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A socket could not be opened, or the runtime not started.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    // `cohort run` and `cohort release`.
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The rollout file is not a CanaryRollout.
    #[error("{} is not a usable CanaryRollout: {reason}", path.display())]
    Rollout {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The spec does not validate.
    #[error("{}: the spec is invalid: {errors}", path.display())]
    InvalidSpec {
        /// The file.
        path: PathBuf,
        /// Every problem, with its field.
        errors: SpecErrors,
    },
    /// The status file is not a status.
    #[error("the status file {} is not a CanaryRollout status ({reason}); fix it, or delete it to start the rollout over", path.display())]
    StatusFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No ECDS file to drive.
    #[error("no ECDS file to write: give --envoy-ecds FILE, or spec.target.envoyEcds.path")]
    NoEcdsFile,
    /// Custom gates without Prometheus.
    #[error(
        "the gates {0} run PromQL: give --prometheus URL (Envoy's admin stats cannot run queries)"
    )]
    CustomGatesNeedPrometheus(String),
    /// `cohort release` took the entry out of the file, but could not see Envoy apply it.
    #[error("{0}")]
    ReleaseUnconfirmed(String),
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The status could not be recorded before a push; nothing was pushed. Retried.
    #[error("cannot save the status to {}: {source}; the weight was not pushed", path.display())]
    SaveStatus {
        /// The status file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// cohort-controller's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `cause`, as the reason a cycle's push did not happen.
    pub fn push(cause: Error) -> Self {
        Error::Push(Box::new(cause))
    }

    /// `cause`, as the reason a rollout's entry stayed in its target.
    pub fn release(cause: Error) -> Self {
        Error::Release(Box::new(cause))
    }

    /// What failed, without what was being done: the error [`Error::Push`] or
    /// [`Error::Release`] carries, or this one.
    pub fn cause(&self) -> &Error {
        match self {
            Error::Push(cause) | Error::Release(cause) => cause.cause(),
            other => other,
        }
    }

    /// Whether the force token is what failed.
    fn is_force_token(&self) -> bool {
        matches!(
            self,
            Error::ForceTokenUnavailable(_) | Error::ForceTokenInvalid { .. }
        )
    }

    /// The `Degraded` condition's reason for a failed push or release, from what failed; `None`
    /// for a failure that is neither a target's nor the force token's.
    pub fn degraded_reason(&self) -> Option<&'static str> {
        Some(match self.cause() {
            Error::TargetNotFound(_) => "TargetNotFound",
            Error::TargetConflict(_) => "TargetConflict",
            Error::InvalidFilterConfig(_) => "InvalidFilterConfig",
            Error::TargetUnavailable(_) => "TargetUnavailable",
            Error::TargetRejected(_) => "TargetRejected",
            cause if cause.is_force_token() => "ForceTokenUnavailable",
            Error::Workload { .. } => "WorkloadUnavailable",
            _ => return None,
        })
    }

    /// Short fixed label for the reconcile error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Release(_) | Error::ReleaseUnconfirmed(_) => "release",
            Error::Push(cause) if cause.is_force_token() => "force_token",
            Error::ForceTokenUnavailable(_) | Error::ForceTokenInvalid { .. } => "force_token",
            Error::Push(_)
            | Error::TargetNotFound(_)
            | Error::TargetConflict(_)
            | Error::InvalidFilterConfig(_)
            | Error::TargetUnavailable(_)
            | Error::TargetRejected(_) => "target",
            Error::InvalidUrl { .. } | Error::HttpClient(_) => "source",
            Error::MissingNamespace(_) => "metadata",
            Error::Finalizer { .. } => "finalizer",
            Error::Workload { .. } => "workload",
            Error::Timeout(_) => "timeout",
            Error::Status { .. } => "status",
            Error::Kube(_) => "kube",
            Error::Io { .. }
            | Error::Read { .. }
            | Error::Runtime(_)
            | Error::SaveStatus { .. } => "io",
            Error::Rollout { .. }
            | Error::InvalidSpec { .. }
            | Error::StatusFile { .. }
            | Error::NoEcdsFile
            | Error::CustomGatesNeedPrometheus(_) => "setup",
        }
    }

    /// The process exit code of `cohort run` and `cohort release`: 2 for what the user must fix
    /// before running again (a file, a flag, the force token), 1 for a failure a retry may clear.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Read { .. }
            | Error::Rollout { .. }
            | Error::InvalidSpec { .. }
            | Error::StatusFile { .. }
            | Error::NoEcdsFile
            | Error::CustomGatesNeedPrometheus(_)
            | Error::ForceTokenUnavailable(_)
            | Error::ForceTokenInvalid { .. } => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_what_failed_readable() {
        let error = Error::push(Error::TargetConflict("owned by someone else".into()));
        assert_eq!(
            error.to_string(),
            "cannot push the filter config: conflict: owned by someone else"
        );
        assert!(matches!(error.cause(), Error::TargetConflict(_)));
        assert_eq!(error.degraded_reason(), Some("TargetConflict"));
        assert_eq!(error.metric_label(), "target");

        let token = Error::push(Error::ForceTokenUnavailable(
            "Secret shop/t: not found".into(),
        ));
        assert_eq!(token.degraded_reason(), Some("ForceTokenUnavailable"));
        assert_eq!(token.metric_label(), "force_token");

        let release = Error::release(Error::TargetUnavailable("timed out".into()));
        assert_eq!(release.degraded_reason(), Some("TargetUnavailable"));
        assert_eq!(release.metric_label(), "release");
        assert_eq!(
            Error::Timeout(Duration::from_secs(1)).degraded_reason(),
            None
        );
    }

    #[test]
    fn exit_codes_split_what_to_fix_from_what_to_retry() {
        assert_eq!(Error::NoEcdsFile.exit_code(), 2);
        assert_eq!(Error::ForceTokenUnavailable("x".into()).exit_code(), 2);
        assert_eq!(
            Error::push(Error::TargetRejected("rejected".into())).exit_code(),
            1
        );
        assert_eq!(
            Error::release(Error::TargetNotFound("x".into())).exit_code(),
            1
        );
        assert_eq!(Error::ReleaseUnconfirmed("x".into()).exit_code(), 1);
    }
}
