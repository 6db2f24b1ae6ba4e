//! The Kubernetes manifests under `manifests/` as the tests see them: rendered by
//! `kubectl kustomize`, and the schemas they are checked against (our committed CRD, and Istio
//! 1.30's CRDs in the shared `schemas/` folder beside the repository).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::schema::yaml_documents;
use crate::{workspace_root, Context, Result};

/// Where the committed CanaryRollout CRD lives (`cohort crd` writes it).
pub const CRD_FILE: &str = "manifests/crd/canaryrollouts.cohort.dev.yaml";

/// The committed CanaryRollout CRD.
pub fn cohort_crd_path() -> PathBuf {
    workspace_root().join(CRD_FILE)
}

/// The shared folder beside the repository (`../shared`), holding `schemas/`. Its absence is an
/// error, never a reason to skip: the manifests would go unchecked.
pub fn shared_dir() -> Result<PathBuf> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    shared_dir_beside(&workspace_root(), ci)
}

fn shared_dir_beside(repository: &Path, ci: bool) -> Result<PathBuf> {
    let shared = repository.join("..").join("shared");
    if shared.join("schemas").is_dir() {
        return Ok(shared);
    }
    let fix = if ci {
        "CI=true: CI must check the repository out with shared/ beside it"
    } else {
        "check the repository out with shared/ beside it"
    };
    Err(format!(
        "{} has no schemas/ folder (Istio 1.30's CRDs, which the manifests are validated \
         against); {fix}",
        shared.display()
    )
    .into())
}

/// The CRD file in `../shared/schemas` for an Istio kind (`WasmPlugin`, `VirtualService`,
/// `DestinationRule`).
pub fn istio_crd_path(kind: &str) -> Result<PathBuf> {
    let file = format!("istio-{}-crd.yaml", kind.to_ascii_lowercase());
    let path = shared_dir()?.join("schemas").join(&file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no schema for Istio kind {kind}: {} is missing",
            path.display()
        )
        .into())
    }
}

/// Every object `kubectl kustomize DIR` renders.
pub fn kustomize(dir: &Path) -> Result<Vec<Value>> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context(|| {
            "running `kubectl kustomize` (kubectl renders manifests/; install it and put it on PATH)"
                .to_owned()
        })?;
    if !output.status.success() {
        return Err(format!(
            "`kubectl kustomize {}` failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    yaml_documents(&String::from_utf8_lossy(&output.stdout))
}

/// The objects of one YAML file.
pub fn read_yaml(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).context(|| format!("reading {}", path.display()))?;
    yaml_documents(&text).context(|| path.display().to_string())
}

/// `kind namespace/name` (or `kind name`), to name an object in messages.
pub fn describe(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The API group of an object's `apiVersion` (`""` for the core group).
pub fn api_group(object: &Value) -> &str {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    api_version
        .rsplit_once('/')
        .map_or("", |(group, _version)| group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_shared_folder_fails_with_the_fix() {
        let repository = crate::TempDir::new("no-shared").unwrap();
        let inner = repository.path().join("repo");
        std::fs::create_dir_all(&inner).unwrap();
        let local = shared_dir_beside(&inner, false).unwrap_err().0;
        assert!(local.contains("has no schemas/ folder"), "{local}");
        let ci = shared_dir_beside(&inner, true).unwrap_err().0;
        assert!(ci.contains("CI=true: CI must check"), "{ci}");
        std::fs::create_dir_all(repository.path().join("shared/schemas")).unwrap();
        assert!(shared_dir_beside(&inner, true).is_ok());
    }
}
