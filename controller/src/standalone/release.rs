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
//! With `--envoy-admin`, the release is confirmed as `cohort run` confirms a push: Envoy's ECDS
//! counters for the filter are read before the file is rewritten, and `update_success` must
//! rise within [`CONFIRM_TIMEOUT`]. The entry is removed even when the counters cannot be read
//! first: serving stable is the safe direction, and the exit code says it is unconfirmed.
//!
//! Exit codes: 0 when the file no longer serves the entry (removed now, absent, or no file)
//! and, with `--envoy-admin`, Envoy applied the removal; 2 when the rollout file is unusable or
//! names no ECDS file; 1 when the file cannot be rewritten (it is left as it was), or when Envoy
//! rejected the removal or was not seen to apply it (the file no longer holds the entry).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{ecds_target, load_rollout, Error, HTTP_TIMEOUT};
use crate::source::envoy_admin::{EnvoyAdmin, UpdateSeen};
use crate::target::Released;

/// How long a release waits for Envoy to count the rewritten file; a watched file is applied
/// within tens of milliseconds.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// `cohort release`'s command line.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ReleaseArgs {
    /// The CanaryRollout whose entry goes, as YAML (the file `cohort run` was given).
    #[arg(long, value_name = "FILE.yaml")]
    pub rollout: PathBuf,
    /// Envoy's ECDS file for the cohort filter; overrides spec.target.envoyEcds.path.
    #[arg(long = "envoy-ecds", value_name = "FILE")]
    pub envoy_ecds: Option<PathBuf>,
    /// Envoy's admin URL (e.g. http://127.0.0.1:9901): confirm that Envoy applied the removal.
    #[arg(long = "envoy-admin", value_name = "URL")]
    pub envoy_admin: Option<String>,
}

/// Removes the rollout's entry (and with an admin URL waits for Envoy to apply that); returns
/// what was done, as one line for people.
pub fn release(args: &ReleaseArgs) -> Result<String, Error> {
    let rollout = load_rollout(&args.rollout)?;
    let target = ecds_target(args.envoy_ecds.as_deref(), &rollout.spec)?;
    let confirm_with = args
        .envoy_admin
        .as_deref()
        .map(|url| {
            let admin = EnvoyAdmin::new(url, HTTP_TIMEOUT)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Runtime)?;
            Ok::<_, Error>((admin, runtime))
        })
        .transpose()?;
    let filter = target.filter_name();
    // Read before the write, so that a rise afterwards is this update.
    let counters_before = confirm_with
        .as_ref()
        .map(|(admin, runtime)| runtime.block_on(admin.ecds_updates(filter)));

    let file = target.path().display();
    let who = if rollout.namespace.is_empty() {
        rollout.name.clone()
    } else {
        format!("{}/{}", rollout.namespace, rollout.name)
    };
    let released = target
        .release_blocking(&rollout.namespace, &rollout.name)
        .map_err(Error::release)?;
    let removed = format!(
        "removed rollouts.{} from {file} (filter {filter})",
        rollout.name
    );
    match released {
        Released::Nothing => {
            return Ok(format!("{file} holds no entry of {who}: nothing to remove"))
        }
        Released::TargetMissing => {
            return Ok(format!(
                "{file} does not exist: no entry of {who} is served"
            ))
        }
        Released::Removed => {}
    }
    let (Some((admin, runtime)), Some(before)) = (confirm_with, counters_before) else {
        return Ok(format!(
            "{removed}: once Envoy reads the file, all of {who}'s users are served stable"
        ));
    };
    let unconfirmed = |why: String| {
        Error::ReleaseUnconfirmed(format!(
            "{removed}, but {why}; Envoy may still serve {who}'s canary"
        ))
    };
    let before =
        before.map_err(|error| unconfirmed(format!("its counters were unreadable ({error})")))?;
    let started = Instant::now();
    match runtime.block_on(admin.await_ecds_update(filter, before, CONFIRM_TIMEOUT)) {
        UpdateSeen::Applied => Ok(format!(
            "{removed}: Envoy applied it after {} ms, all of {who}'s users are served stable",
            started.elapsed().as_millis()
        )),
        UpdateSeen::Rejected => Err(Error::ReleaseUnconfirmed(format!(
            "{removed}, but Envoy rejected that config (update_rejected went up), so the \
             previous one, with {who}'s entry, keeps serving; Envoy's log says why: fix the file \
             (the entry is already out of it) and Envoy serves stable once it accepts it"
        ))),
        UpdateSeen::NotSeen => Err(unconfirmed(format!(
            "Envoy counted no update of filter {filter} within {} s: check that it serves that \
             filter from this file",
            CONFIRM_TIMEOUT.as_secs()
        ))),
        UpdateSeen::Unreadable(error) => Err(unconfirmed(format!(
            "its counters became unreadable ({error})"
        ))),
    }
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
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    /// A fake Envoy admin whose `/stats` answers the filter's ECDS counters
    /// `(update_success, update_rejected)` from `script`, one entry per request, the last one
    /// from then on. Returns its URL and how many requests it answered.
    fn fake_admin(script: Vec<(u64, u64)>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answered = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&answered);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let n = count.fetch_add(1, Ordering::SeqCst);
                let (success, rejected) = script[n.min(script.len() - 1)];
                let body = format!(
                    "extension_config_discovery.http_filter.cohort.update_success: {success}\n\
                     extension_config_discovery.http_filter.cohort.update_rejected: {rejected}\n"
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, answered)
    }

    /// A rollout `web` of namespace `shop` whose entry is in the ECDS file, released through
    /// the admin at `admin`; returns the result and the file's entries afterwards.
    fn release_confirmed_by(admin: &str, tag: &str) -> (Result<String, Error>, Vec<String>) {
        let dir = TempDir::new(tag);
        let ecds_path = dir.0.join("ecds.yaml");
        fs::write(&ecds_path, ecds(CONFIG)).unwrap();
        let args = ReleaseArgs {
            rollout: rollout_file(
                &dir.0,
                "{name: web, namespace: shop}",
                "{wasmPlugin: {name: cohort}}",
            ),
            envoy_ecds: Some(ecds_path.clone()),
            envoy_admin: Some(admin.to_owned()),
        };
        let result = release(&args);
        (result, entries(&ecds_path))
    }

    #[test]
    fn with_an_admin_url_the_release_waits_for_envoy_to_apply_it() {
        // Read before the write, then polled until update_success rises.
        let (url, answered) = fake_admin(vec![(3, 1), (3, 1), (3, 1), (4, 1)]);
        let (result, left) = release_confirmed_by(&url, "release-applied");
        let line = result.unwrap();
        assert!(line.contains("Envoy applied it after"), "{line}");
        assert!(line.contains("shop/web"), "{line}");
        assert_eq!(left, ["api"]);
        assert_eq!(answered.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_release_envoy_rejects_or_never_counts_is_an_error_with_the_entry_still_removed() {
        let (url, _) = fake_admin(vec![(3, 1), (3, 2)]);
        let (result, left) = release_confirmed_by(&url, "release-rejected");
        let error = result.unwrap_err();
        assert!(matches!(error, Error::ReleaseUnconfirmed(_)), "{error}");
        assert!(
            error.to_string().contains("rejected that config"),
            "{error}"
        );
        assert_eq!(error.exit_code(), 1);
        assert_eq!(left, ["api"]);

        // The counters never move: Envoy does not watch this file.
        let (url, answered) = fake_admin(vec![(3, 1)]);
        let (result, left) = release_confirmed_by(&url, "release-not-seen");
        let error = result.unwrap_err().to_string();
        assert!(
            error.contains("counted no update of filter cohort within 5 s"),
            "{error}"
        );
        assert!(
            error.contains("may still serve shop/web's canary"),
            "{error}"
        );
        assert_eq!(left, ["api"]);
        assert!(answered.load(Ordering::SeqCst) > 2);

        // No admin at all: stable is still served as soon as Envoy reads the file.
        let (result, left) = release_confirmed_by("http://127.0.0.1:9", "release-no-admin");
        let error = result.unwrap_err();
        assert!(error.to_string().contains("unreadable"), "{error}");
        assert_eq!(error.exit_code(), 1);
        assert_eq!(left, ["api"]);
    }

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
            envoy_admin: None,
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
            // Nothing is removed, so there is nothing to confirm and the admin is not asked.
            envoy_admin: Some("http://127.0.0.1:9".into()),
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
            envoy_admin: None,
        };
        let error = release(&args).unwrap_err();
        assert!(matches!(error, Error::NoEcdsFile), "{error}");
        assert_eq!(error.exit_code(), 2);
        // A file that is not a filter config: an error, and the file stays as it was.
        let broken = dir.0.join("ecds.yaml");
        fs::write(&broken, "resources: [\n").unwrap();
        let error = release(&ReleaseArgs {
            envoy_ecds: Some(broken.clone()),
            ..args
        })
        .unwrap_err();
        assert!(matches!(error, Error::Release(_)), "{error}");
        assert_eq!(error.exit_code(), 1);
        assert!(error.to_string().contains("entry"), "{error}");
        assert_eq!(fs::read_to_string(&broken).unwrap(), "resources: [\n");
    }
}
