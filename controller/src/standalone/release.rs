//! `cohort release`: takes one rollout's entry out of a plain Envoy's ECDS file, so the filter
//! serves stable to all of its users. It is what deleting the CanaryRollout does in a cluster,
//! for rollouts driven by `cohort run`. Stop `cohort run` for the rollout first: its next
//! cycle would write the entry again.
//!
//! The file is picked as `cohort run` picks it (`--envoy-ecds`, else
//! `spec.target.envoyEcds.path`), and the entry by the rollout's `metadata.name`. An entry
//! that records another namespace belongs to a same-named rollout there and stays. The spec
//! need not validate: a broken rollout can still be released.
//!
//! Exit codes: 0 when the file no longer serves the entry (removed now, absent, or no file),
//! 2 when the rollout file is unusable or names no ECDS file, 1 when the file cannot be
//! rewritten (it is left as it was).

use std::path::PathBuf;

use super::{ecds_target, load_rollout, RunError};
use crate::target::Released;

/// `cohort release`'s command line.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ReleaseArgs {
    /// The CanaryRollout whose entry goes, as YAML (the file `cohort run` was given).
    #[arg(long, value_name = "FILE.yaml")]
    pub rollout: PathBuf,
    /// Envoy's ECDS file for the cohort filter; overrides spec.target.envoyEcds.path.
    #[arg(long = "envoy-ecds", value_name = "FILE")]
    pub envoy_ecds: Option<PathBuf>,
}

/// Removes the rollout's entry; returns what was done, as one line for people.
pub fn release(args: &ReleaseArgs) -> Result<String, RunError> {
    let rollout = load_rollout(&args.rollout)?;
    let target = ecds_target(args.envoy_ecds.as_deref(), &rollout.spec)?;
    let file = target.path().display();
    let who = if rollout.namespace.is_empty() {
        rollout.name.clone()
    } else {
        format!("{}/{}", rollout.namespace, rollout.name)
    };
    let released = target
        .release_blocking(&rollout.namespace, &rollout.name)
        .map_err(RunError::Release)?;
    Ok(match released {
        Released::Removed => format!(
            "removed rollouts.{} from {file} (filter {}): once Envoy reads the file, all of \
             {who}'s users are served stable",
            rollout.name,
            target.filter_name()
        ),
        Released::Nothing => format!("{file} holds no entry of {who}: nothing to remove"),
        Released::TargetMissing => format!("{file} does not exist: no entry of {who} is served"),
    })
}

/// The `cohort release` command: prints what was done, or the error on stderr; returns the
/// process exit code.
pub fn main(args: &ReleaseArgs) -> i32 {
    match release(args) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(error) => {
            eprintln!("cohort release: {error}");
            error.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::path::Path;

    use crate::fixtures::{ecds_document as ecds, TempDir};
    use crate::target::envoy_file::EnvoyEcdsFile;

    fn rollout_file(dir: &Path, metadata: &str, spec_target: &str) -> PathBuf {
        let path = dir.join("rollout.yaml");
        fs::write(
            &path,
            format!(
                "apiVersion: cohort.dev/v1alpha1\nkind: CanaryRollout\nmetadata: {metadata}\n\
                 spec:\n  target: {spec_target}\n  hosts: [web]\n"
            ),
        )
        .unwrap();
        path
    }

    fn entries(path: &Path) -> Vec<String> {
        let config = EnvoyEcdsFile::new(path, "cohort").read_config().unwrap();
        config.rollouts.keys().cloned().collect()
    }

    const CONFIG: &str = r#"{"version": 1,
        "rollouts": {"api": {"hosts": ["api"], "weightBp": 700},
                     "web": {"namespace": "shop", "hosts": ["web"], "weightBp": 2500}}}"#;

    #[test]
    fn removes_the_rollouts_entry_once_and_keeps_the_others() {
        let dir = TempDir::new("release-removes");
        let ecds_path = dir.0.join("ecds.yaml");
        fs::write(&ecds_path, ecds(CONFIG)).unwrap();
        // The file comes from the spec.
        let target = format!("{{envoyEcds: {{path: {}}}}}", ecds_path.display());
        let args = ReleaseArgs {
            rollout: rollout_file(&dir.0, "{name: web, namespace: shop}", &target),
            envoy_ecds: None,
        };
        let line = release(&args).unwrap();
        assert!(line.starts_with("removed rollouts.web from"), "{line}");
        assert!(line.contains("shop/web"), "{line}");
        assert_eq!(entries(&ecds_path), ["api"]);
        let again = release(&args).unwrap();
        assert!(again.contains("holds no entry of shop/web"), "{again}");
        assert_eq!(entries(&ecds_path), ["api"]);
    }

    #[test]
    fn another_namespaces_entry_and_a_missing_file_are_left_alone() {
        let dir = TempDir::new("release-others");
        let ecds_path = dir.0.join("ecds.yaml");
        fs::write(&ecds_path, ecds(CONFIG)).unwrap();
        let original = fs::read_to_string(&ecds_path).unwrap();
        // A WasmPlugin target, with the file given on the command line as `cohort run` takes it.
        let args = ReleaseArgs {
            rollout: rollout_file(
                &dir.0,
                "{name: web, namespace: blog}",
                "{wasmPlugin: {name: cohort}}",
            ),
            envoy_ecds: Some(ecds_path.clone()),
        };
        let line = release(&args).unwrap();
        assert!(line.contains("holds no entry of blog/web"), "{line}");
        assert_eq!(fs::read_to_string(&ecds_path).unwrap(), original);

        let missing = ReleaseArgs {
            envoy_ecds: Some(dir.0.join("missing.yaml")),
            ..args
        };
        let line = release(&missing).unwrap();
        assert!(line.contains("does not exist"), "{line}");
        assert!(!dir.0.join("missing.yaml").exists());
    }

    #[test]
    fn unusable_input_names_the_problem_and_its_exit_code() {
        let dir = TempDir::new("release-unusable");
        // No ECDS file anywhere.
        let args = ReleaseArgs {
            rollout: rollout_file(&dir.0, "{name: web}", "{wasmPlugin: {name: cohort}}"),
            envoy_ecds: None,
        };
        let error = release(&args).unwrap_err();
        assert!(matches!(error, RunError::NoEcdsFile), "{error}");
        assert_eq!(error.exit_code(), 2);
        // A file that is not a filter config: an error, and the file stays as it was.
        let broken = dir.0.join("ecds.yaml");
        fs::write(&broken, "resources: [\n").unwrap();
        let error = release(&ReleaseArgs {
            envoy_ecds: Some(broken.clone()),
            ..args
        })
        .unwrap_err();
        assert!(matches!(error, RunError::Release(_)), "{error}");
        assert_eq!(error.exit_code(), 1);
        assert!(error.to_string().contains("entry"), "{error}");
        assert_eq!(fs::read_to_string(&broken).unwrap(), "resources: [\n");
    }
}
