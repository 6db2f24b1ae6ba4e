//! The plain-Envoy target: the filter's ECDS file, which Envoy's `path_config_source` watches.
//!
//! A push reads the file (YAML; shape in `manifests/envoy/ecds.yaml`), finds the
//! `TypedExtensionConfig` named after the HTTP filter, parses the filter config from its
//! `typed_config.config.configuration.value` (a JSON string), merges this rollout in, checks the
//! result with the filter's own `cohort_core::config::validate`, and writes the whole document
//! back to a temp file in the same directory that is renamed over the path, so Envoy never
//! reads a half-written file. An invalid merge leaves the file untouched.
//!
//! What the merge takes from the pushed config, and why:
//! - `rollouts.<name>`: replaced; every other rollout stays as it is. An entry recording another
//!   namespace belongs to a same-named rollout there and is not replaced (a conflict).
//! - `anonymous`: set. It is filter-wide and comes from the spec, so rollouts sharing one file
//!   must agree on it (the CRD says so).
//! - `events`: the union of the file's and the pushed ones, because another rollout's business
//!   gates may need an event this rollout does not count.
//! - `forceToken`: set when the pushed config has one (the spec's `forceTokenFile`), else the
//!   file's own stays.
//! - everything else filter-wide (routing and force headers, default identity, events header)
//!   stays as the file has it: a spec cannot express those, so the pushed values are only
//!   defaults and would silently undo the operator's settings.
//!
//! Releasing a rollout ([`EnvoyEcdsFile::release_blocking`]) takes the same path with the
//! rollout's entry removed instead of replaced: nothing else in the file changes (filter-wide
//! settings, `events` included, stay as they are, since other rollouts may rely on them), and a
//! file without the entry is not rewritten.
//!
//! The file may hold the force token, so a rewrite never widens its permissions: the temp file
//! is created readable by its owner only and then given the old file's mode.
//!
//! The document is written as JSON (valid YAML, and what Envoy reads for `.json` files); the
//! file's other content is kept, and so is a leading comment block of a `.yaml` file. Two
//! writers on one file (two `cohort run`s) must not run at once: the read-merge-write is not
//! locked.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cohort_core::config::{
    self, ConfigError, ConfigErrors, FieldPath, FilterConfig, RolloutConfig,
};
use serde_json::Value;

use crate::source::BoxFuture;
use crate::target::{check_entry_namespace, entry_belongs_to, Released, Target};
use crate::Error;

/// The ECDS file of one HTTP filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyEcdsFile {
    path: PathBuf,
    filter_name: String,
}

impl EnvoyEcdsFile {
    /// The file at `path`, holding the `TypedExtensionConfig` named `filter_name`.
    pub fn new(path: impl Into<PathBuf>, filter_name: &str) -> Self {
        EnvoyEcdsFile {
            path: path.into(),
            filter_name: filter_name.to_owned(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The filter's name.
    pub fn filter_name(&self) -> &str {
        &self.filter_name
    }

    /// The filter config the file holds now.
    pub fn read_config(&self) -> Result<FilterConfig, Error> {
        let text = self.read()?;
        let mut document = parse_document(&self.path, &text)?;
        let (_, value) = locate_config(&mut document, &self.filter_name, &self.path)?;
        parse_config(value)
    }

    /// [`Target::apply`] without a runtime: the push as plain file I/O.
    pub fn apply_blocking(&self, name: &str, config: &FilterConfig) -> Result<(), Error> {
        self.rewrite(|existing| merge(existing, name, config).map(Some))
            .map(|_| ())
    }

    /// [`Target::release`] without a runtime: the entry of rollout `namespace/name` removed
    /// from the file. An entry recording another namespace is a same-named rollout's and stays.
    pub fn release_blocking(&self, namespace: &str, name: &str) -> Result<Released, Error> {
        let rewritten = self.rewrite(|mut existing| {
            let ours = |entry: &RolloutConfig| entry_belongs_to(&entry.namespace, namespace);
            if !existing.rollouts.get(name).is_some_and(ours) {
                return Ok(None);
            }
            existing.rollouts.remove(name);
            config::validate(&existing)?;
            Ok(Some(existing))
        });
        match rewritten {
            Ok(true) => Ok(Released::Removed),
            Ok(false) => Ok(Released::Nothing),
            Err(Error::TargetNotFound(_)) => Ok(Released::TargetMissing),
            Err(error) => Err(error),
        }
    }

    /// [`Target::live_weight`] without a runtime.
    pub fn live_weight_blocking(&self, namespace: &str, name: &str) -> Result<Option<u32>, Error> {
        let config = self.read_config()?;
        Ok(config
            .rollouts
            .get(name)
            .filter(|entry| entry_belongs_to(&entry.namespace, namespace))
            .map(|entry| entry.weight_bp))
    }

    /// [`Target::withdraw`] without a runtime: rollout `name`'s entry set to weight 0, the
    /// rest of the file as it is; a file without the entry, or with it at 0, is not rewritten.
    pub fn withdraw_blocking(&self, name: &str) -> Result<(), Error> {
        self.rewrite(|mut existing| match existing.rollouts.get_mut(name) {
            Some(entry) if entry.weight_bp != 0 => {
                entry.weight_bp = 0;
                Ok(Some(existing))
            }
            _ => Ok(None),
        })
        .map(|_| ())
    }

    /// Reads the file, lets `change` turn its filter config into the one to write (`None`:
    /// leave the file as it is), and writes it back by temp file and rename. Returns whether
    /// the file was written.
    fn rewrite(
        &self,
        change: impl FnOnce(FilterConfig) -> Result<Option<FilterConfig>, Error>,
    ) -> Result<bool, Error> {
        let text = self.read()?;
        let mut document = parse_document(&self.path, &text)?;
        let (field, value) = locate_config(&mut document, &self.filter_name, &self.path)?;
        let Some(changed) = change(parse_config(value)?)? else {
            return Ok(false);
        };
        let changed_json = serde_json::to_string(&changed).map_err(|error| {
            Error::TargetUnavailable(format!("cannot encode the config: {error}"))
        })?;
        tracing::debug!(field, path = %self.path.display(), "writing the filter config");
        *value = Value::String(changed_json);
        let mut out = String::new();
        if is_yaml(&self.path) {
            out.push_str(&leading_comments(&text));
        }
        let body = serde_json::to_string_pretty(&document).map_err(|error| {
            Error::TargetUnavailable(format!("cannot encode the ECDS document: {error}"))
        })?;
        out.push_str(&body);
        out.push('\n');
        replace_file(&self.path, out.as_bytes()).map_err(|error| {
            Error::TargetUnavailable(format!("writing {}: {error}", self.path.display()))
        })?;
        Ok(true)
    }

    fn read(&self) -> Result<String, Error> {
        fs::read_to_string(&self.path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => {
                Error::TargetNotFound(format!("the ECDS file {}", self.path.display()))
            }
            _ => Error::TargetUnavailable(format!("reading {}: {error}", self.path.display())),
        })
    }
}

impl Target for EnvoyEcdsFile {
    fn apply<'a>(
        &'a self,
        name: &'a str,
        config: &'a FilterConfig,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let (name, config) = (name.to_owned(), config.clone());
        self.blocking(move |file| file.apply_blocking(&name, &config))
    }

    fn release<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Released, Error>> {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        self.blocking(move |file| file.release_blocking(&namespace, &name))
    }

    fn live_weight<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, Error>> {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        self.blocking(move |file| file.live_weight_blocking(&namespace, &name))
    }

    fn withdraw<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        let name = name.to_owned();
        self.blocking(move |file| file.withdraw_blocking(&name))
    }
}

impl EnvoyEcdsFile {
    /// Runs `io` on this file off the async runtime's threads (file I/O blocks).
    fn blocking<'a, T: Send + 'static>(
        &self,
        io: impl FnOnce(&EnvoyEcdsFile) -> Result<T, Error> + Send + 'static,
    ) -> BoxFuture<'a, Result<T, Error>> {
        let file = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || io(&file))
                .await
                .unwrap_or_else(|error| {
                    Err(Error::TargetUnavailable(format!(
                        "the file operation did not finish: {error}"
                    )))
                })
        })
    }
}

/// The file's rollouts and filter-wide settings with `name`'s entry from `pushed`, validated.
pub fn merge(
    mut existing: FilterConfig,
    name: &str,
    pushed: &FilterConfig,
) -> Result<FilterConfig, Error> {
    let Some(rollout) = pushed.rollouts.get(name) else {
        return Err(Error::InvalidFilterConfig(ConfigErrors(vec![
            ConfigError {
                field: FieldPath::root().key("rollouts").key(name),
                problem: "the pushed config has no entry for this rollout".to_owned(),
            },
        ])));
    };
    check_entry_namespace(
        "the ECDS file",
        name,
        existing
            .rollouts
            .get(name)
            .map(|entry| entry.namespace.as_str()),
        &rollout.namespace,
    )?;
    existing.version = pushed.version;
    existing.anonymous = pushed.anonymous.clone();
    if pushed.force_token.is_some() {
        existing.force_token = pushed.force_token.clone();
    }
    for event in &pushed.events {
        if !existing.events.contains(event) {
            existing.events.push(event.clone());
        }
    }
    existing.rollouts.insert(name.to_owned(), rollout.clone());
    config::validate(&existing)?;
    Ok(existing)
}

fn parse_document(path: &Path, text: &str) -> Result<Value, Error> {
    serde_saphyr::from_str(text).map_err(|error| {
        Error::TargetUnavailable(format!(
            "{} is not a YAML document: {error}; fix or re-render it from manifests/envoy/ecds.yaml",
            path.display()
        ))
    })
}

/// The `configuration.value` node of the filter's `TypedExtensionConfig`, with its field path.
fn locate_config<'d>(
    document: &'d mut Value,
    filter_name: &str,
    path: &Path,
) -> Result<(String, &'d mut Value), Error> {
    let resources = document
        .get_mut("resources")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| {
            Error::TargetNotFound(format!(
                "a `resources` list in {} (the shape of manifests/envoy/ecds.yaml)",
                path.display()
            ))
        })?;
    let found = resources
        .iter_mut()
        .enumerate()
        .find(|(_, resource)| resource.get("name").and_then(Value::as_str) == Some(filter_name));
    let Some((index, resource)) = found else {
        return Err(Error::TargetNotFound(format!(
            "the TypedExtensionConfig named {filter_name:?} in {}",
            path.display()
        )));
    };
    let field = FieldPath::root()
        .key("resources")
        .index(index)
        .key("typed_config")
        .key("config")
        .key("configuration")
        .key("value");
    match resource
        .pointer_mut("/typed_config/config/configuration/value")
        .filter(|value| value.is_string())
    {
        Some(value) => Ok((field.to_string(), value)),
        None => Err(Error::InvalidFilterConfig(ConfigErrors(vec![
            ConfigError {
                field,
                problem: format!(
                "is missing or not a string in {}; it holds the filter config as one JSON string",
                path.display()
            ),
            },
        ]))),
    }
}

fn parse_config(value: &Value) -> Result<FilterConfig, Error> {
    let json = value.as_str().unwrap_or_default();
    Ok(config::parse_wire(json.as_bytes())?)
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|ext| ext.to_str()),
        Some("yaml" | "yml")
    )
}

/// The comment (and blank) lines a file starts with, so a rewrite keeps its documentation.
fn leading_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if !(trimmed.is_empty() || trimmed.starts_with('#')) {
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Writes `bytes` to a temp file next to `path` and renames it over `path`: readers see the old
/// file or the new one, never a mix. The new file keeps the old one's permissions.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{file_name}.cohort-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = create_private(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if let Ok(metadata) = fs::metadata(path) {
            fs::set_permissions(&temp, metadata.permissions())?;
        }
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// A new file only its owner can read (until the caller sets the mode it should have).
fn create_private(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::{ecds_document as ecds, TempDir};

    const EXISTING: &str = r#"{"version": 1, "forceToken": "0123456789abcdef0123",
        "identity": [{"kind": "header", "name": "x-user-id"}], "events": ["signup"],
        "rollouts": {"api": {"hosts": ["api"], "weightBp": 700},
                     "web": {"hosts": ["web"], "weightBp": 100}}}"#;

    fn pushed(hosts: &[&str], weight_bp: u32) -> FilterConfig {
        let mut config = FilterConfig::new();
        config.anonymous.mode = "stable".into();
        config.events = vec!["checkout".into(), "signup".into()];
        config.rollouts.insert(
            "web".into(),
            RolloutConfig::new(hosts.iter().map(|h| (*h).to_owned()).collect(), weight_bp),
        );
        config
    }

    #[test]
    fn replaces_one_rollout_and_keeps_the_rest() {
        let dir = TempDir::new("envoy-file-keep");
        let path = dir.0.join("ecds.yaml");
        fs::write(&path, ecds(EXISTING)).unwrap();
        let file = EnvoyEcdsFile::new(&path, "cohort");
        file.apply_blocking("web", &pushed(&["web", "www"], 2500))
            .unwrap();

        let config = file.read_config().unwrap();
        assert_eq!(config.rollouts["web"].weight_bp, 2500);
        assert_eq!(config.rollouts["web"].hosts, vec!["web", "www"]);
        // The other rollout and the operator's filter-wide settings are untouched.
        assert_eq!(config.rollouts["api"].weight_bp, 700);
        assert_eq!(config.force_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(config.identity.len(), 1);
        // The spec's filter-wide settings: anonymous set, events added to the file's.
        assert_eq!(config.anonymous.mode, "stable");
        assert_eq!(config.events, vec!["signup", "checkout"]);

        // The rest of the document survives, and the result is still YAML Envoy reads.
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# The cohort filter's ECDS file"),
            "{text}"
        );
        let document: Value = serde_saphyr::from_str(&text).unwrap();
        let resource = &document["resources"][0];
        assert_eq!(
            resource["@type"],
            "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
        );
        assert_eq!(
            resource["typed_config"]["config"]["failure_policy"],
            "FAIL_RELOAD"
        );
        assert_eq!(
            resource["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"],
            "/opt/cohort_filter.wasm"
        );
        assert_eq!(
            resource["typed_config"]["config"]["configuration"]["@type"],
            "type.googleapis.com/google.protobuf.StringValue"
        );
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["ecds.yaml"]);

        // A second push over the rewritten (JSON) file works the same.
        file.apply_blocking("web", &pushed(&["web"], 0)).unwrap();
        let again = file.read_config().unwrap();
        assert_eq!(again.rollouts["web"].weight_bp, 0);
        assert_eq!(again.rollouts["api"].weight_bp, 700);
    }

    #[test]
    fn a_new_rollout_is_added() {
        let dir = TempDir::new("envoy-file-add");
        let path = dir.0.join("ecds.json");
        let existing = r#"{"version": 1, "rollouts": {"api": {"hosts": ["api"], "weightBp": 1}}}"#;
        fs::write(
            &path,
            serde_json::to_string(&serde_saphyr::from_str::<Value>(&ecds(existing)).unwrap())
                .unwrap(),
        )
        .unwrap();
        let file = EnvoyEcdsFile::new(&path, "cohort");
        file.apply_blocking("web", &pushed(&["web"], 100)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        // A JSON file stays pure JSON (Envoy parses `.json` files as JSON).
        assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
        let config = file.read_config().unwrap();
        assert_eq!(
            config.rollouts.keys().collect::<Vec<_>>(),
            vec!["api", "web"]
        );
    }

    #[test]
    fn an_invalid_merge_leaves_the_file_byte_identical() {
        let dir = TempDir::new("envoy-file-invalid");
        let path = dir.0.join("ecds.yaml");
        let original = ecds(EXISTING);
        fs::write(&path, &original).unwrap();
        let file = EnvoyEcdsFile::new(&path, "cohort");
        // Host `api` already belongs to rollout `api`.
        let error = file
            .apply_blocking("web", &pushed(&["api"], 500))
            .unwrap_err();
        let Error::InvalidFilterConfig(errors) = &error else {
            panic!("expected Invalid, got {error:?}");
        };
        assert!(errors.to_string().contains("already claimed"), "{errors}");
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
        // So does a push that lacks the rollout's entry.
        let error = file
            .apply_blocking("other", &pushed(&["x"], 1))
            .unwrap_err();
        assert!(matches!(error, Error::InvalidFilterConfig(_)), "{error:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
    }

    #[test]
    fn a_same_named_rollout_of_another_namespace_neither_writes_nor_releases_the_entry() {
        let dir = TempDir::new("envoy-file-namespace");
        let path = dir.0.join("ecds.yaml");
        let original = ecds(&EXISTING.replace(
            r#""web": {"hosts""#,
            r#""web": {"namespace": "shop", "hosts""#,
        ));
        fs::write(&path, &original).unwrap();
        let file = EnvoyEcdsFile::new(&path, "cohort");
        let mut blog = pushed(&["web"], 500);
        blog.rollouts.get_mut("web").unwrap().namespace = "blog".into();
        let error = file.apply_blocking("web", &blog).unwrap_err();
        assert!(matches!(error, Error::TargetConflict(_)), "{error:?}");
        assert!(
            error.to_string().contains("CanaryRollout shop/web"),
            "{error}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
        // Nor does releasing blog/web remove it.
        assert_eq!(
            file.release_blocking("blog", "web").unwrap(),
            Released::Nothing
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
        // Its own namespace's rollout writes it, and releases it.
        let mut shop = blog.clone();
        shop.rollouts.get_mut("web").unwrap().namespace = "shop".into();
        file.apply_blocking("web", &shop).unwrap();
        assert_eq!(file.read_config().unwrap().rollouts["web"].weight_bp, 500);
        assert_eq!(
            file.release_blocking("shop", "web").unwrap(),
            Released::Removed
        );
        assert!(!file.read_config().unwrap().rollouts.contains_key("web"));
    }

    #[test]
    fn missing_things_are_not_found() {
        let dir = TempDir::new("envoy-file-missing");
        let path = dir.0.join("ecds.yaml");
        let file = EnvoyEcdsFile::new(&path, "cohort");
        let error = file
            .apply_blocking("web", &pushed(&["web"], 1))
            .unwrap_err();
        assert!(matches!(error, Error::TargetNotFound(_)), "{error:?}");
        assert!(!path.exists());

        fs::write(&path, ecds(EXISTING)).unwrap();
        let other = EnvoyEcdsFile::new(&path, "not-cohort");
        let error = other
            .apply_blocking("web", &pushed(&["web"], 1))
            .unwrap_err();
        assert!(
            matches!(&error, Error::TargetNotFound(what) if what.contains("\"not-cohort\"")),
            "{error:?}"
        );

        let table = [
            ("resources: 3\n", "NotFound"),
            ("resources:\n- {name: cohort, typed_config: {}}\n", "Invalid"),
            ("resources: [\n", "Unavailable"),
            (
                "resources:\n- name: cohort\n  typed_config: {config: {configuration: {value: 'not json'}}}\n",
                "Invalid",
            ),
        ];
        for (text, kind) in table {
            fs::write(&path, text).unwrap();
            let error = file
                .apply_blocking("web", &pushed(&["web"], 1))
                .unwrap_err();
            let got = match error {
                Error::TargetNotFound(_) => "NotFound",
                Error::InvalidFilterConfig(_) => "Invalid",
                Error::TargetUnavailable(_) => "Unavailable",
                Error::TargetConflict(_) => "Conflict",
                Error::TargetRejected(_) => "Rejected",
                other => panic!("not a target's error: {other}"),
            };
            assert_eq!(got, kind, "{text:?}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
    }

    /// The `configuration.value` string of a file's text.
    fn configuration(text: &str) -> String {
        let document: Value = serde_saphyr::from_str(text).unwrap();
        document["resources"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_release_removes_one_entry_and_leaves_every_other_byte() {
        let dir = TempDir::new("envoy-file-release");
        let path = dir.0.join("ecds.yaml");
        fs::write(&path, ecds(EXISTING)).unwrap();
        let file = EnvoyEcdsFile::new(&path, "cohort");
        let mut checkout = pushed(&["checkout"], 2500);
        let entry = checkout.rollouts.remove("web").unwrap();
        checkout.rollouts.insert("checkout".into(), entry);
        file.apply_blocking("checkout", &checkout).unwrap();
        let before = fs::read_to_string(&path).unwrap();

        assert_eq!(
            file.release_blocking("", "checkout").unwrap(),
            Released::Removed
        );
        let after = fs::read_to_string(&path).unwrap();
        // Exactly the entry's bytes are gone from the config; the rest of the file is as it was.
        let removed = format!(
            "\"checkout\":{},",
            serde_json::to_string(&checkout.rollouts["checkout"]).unwrap()
        );
        let (old, new) = (configuration(&before), configuration(&after));
        assert!(old.contains(&removed), "{old}");
        assert_eq!(new, old.replacen(&removed, "", 1));
        let quoted = |text: &str| serde_json::to_string(text).unwrap();
        assert_eq!(after, before.replacen(&quoted(&old), &quoted(&new), 1));
        let config = file.read_config().unwrap();
        assert_eq!(config.rollouts.keys().collect::<Vec<_>>(), ["api", "web"]);
        assert_eq!(config.force_token.as_deref(), Some("0123456789abcdef0123"));

        // Again: nothing to remove, and the file is not rewritten.
        assert_eq!(
            file.release_blocking("", "checkout").unwrap(),
            Released::Nothing
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), after);
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["ecds.yaml"], "no temp file is left behind");
    }

    #[tokio::test]
    async fn a_missing_file_serves_no_entry_and_releases_through_the_trait() {
        let dir = TempDir::new("envoy-file-release-missing");
        let path = dir.0.join("ecds.yaml");
        let target: Box<dyn Target> = Box::new(EnvoyEcdsFile::new(&path, "cohort"));
        assert_eq!(
            target.release("", "web").await.unwrap(),
            Released::TargetMissing
        );
        assert!(!path.exists());
        fs::write(&path, ecds(EXISTING)).unwrap();
        assert_eq!(target.release("", "web").await.unwrap(), Released::Removed);
        let config = EnvoyEcdsFile::new(&path, "cohort").read_config().unwrap();
        assert_eq!(config.rollouts.keys().collect::<Vec<_>>(), ["api"]);
        // An unreadable document is an error, not "nothing to remove": Envoy may serve it.
        fs::write(&path, "resources: [\n").unwrap();
        assert!(matches!(
            target.release("", "api").await,
            Err(Error::TargetUnavailable(_))
        ));
    }

    #[tokio::test]
    async fn applies_through_the_trait() {
        let dir = TempDir::new("envoy-file-trait");
        let path = dir.0.join("ecds.yaml");
        fs::write(&path, ecds(EXISTING)).unwrap();
        let target: Box<dyn Target> = Box::new(EnvoyEcdsFile::new(&path, "cohort"));
        target.apply("web", &pushed(&["web"], 5000)).await.unwrap();
        let config = EnvoyEcdsFile::new(&path, "cohort").read_config().unwrap();
        assert_eq!(config.rollouts["web"].weight_bp, 5000);
    }

    /// What the driver's cycle reads and writes when a rollback cannot build its entry: the live
    /// weight of the rollout's own entry, then that entry at 0 with everything else (the force
    /// token included) as it was.
    #[tokio::test]
    async fn reads_the_live_weight_and_withdraws_through_the_trait() {
        let dir = TempDir::new("envoy-file-withdraw");
        let path = dir.0.join("ecds.yaml");
        let target: Box<dyn Target> = Box::new(EnvoyEcdsFile::new(&path, "cohort"));
        assert!(matches!(
            target.live_weight("", "web").await,
            Err(Error::TargetNotFound(_))
        ));
        fs::write(&path, ecds(EXISTING)).unwrap();
        assert_eq!(target.live_weight("", "web").await.unwrap(), Some(100));
        assert_eq!(target.live_weight("", "search").await.unwrap(), None);
        let mut shop = pushed(&["web"], 300);
        shop.rollouts.get_mut("web").unwrap().namespace = "shop".into();
        target.apply("web", &shop).await.unwrap();
        assert_eq!(target.live_weight("shop", "web").await.unwrap(), Some(300));
        // A same-named rollout's entry in another namespace is not this one's.
        assert_eq!(target.live_weight("blog", "web").await.unwrap(), None);

        target.withdraw("web").await.unwrap();
        let config = EnvoyEcdsFile::new(&path, "cohort").read_config().unwrap();
        assert_eq!(config.rollouts["web"].weight_bp, 0);
        assert_eq!(config.rollouts["web"].hosts, ["web"]);
        assert_eq!(config.rollouts["api"].weight_bp, 700);
        assert_eq!(config.force_token.as_deref(), Some("0123456789abcdef0123"));
        // At 0 already, or without an entry: the file is not rewritten.
        let before = fs::read_to_string(&path).unwrap();
        target.withdraw("web").await.unwrap();
        target.withdraw("search").await.unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
    }
}
