//! The force token: read from a Kubernetes Secret (in-cluster) or a file (`cohort run`), checked
//! the way the filter checks it, and handed to the filter config. Never logged, never put in
//! status or an Event: every error here names where the token was looked for and what is wrong
//! with it, never its content.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::Client;

use cohort_core::config::MIN_FORCE_TOKEN_BYTES;

use cohort_rollout::crd::SecretKeyRef;

use crate::Error;

/// The token in `bytes` (surrounding whitespace, such as a file's final newline, dropped),
/// checked as the filter checks it.
pub fn parse_token(bytes: &[u8], source_name: &str) -> Result<String, Error> {
    let invalid = |problem: String| Error::ForceTokenInvalid {
        source_name: source_name.to_owned(),
        problem,
    };
    let token = bytes.trim_ascii();
    if token.len() < MIN_FORCE_TOKEN_BYTES || !token.iter().all(u8::is_ascii_graphic) {
        return Err(invalid(format!(
            "it must be at least {MIN_FORCE_TOKEN_BYTES} visible ASCII characters \
             (found {} bytes); generate one with `openssl rand -hex 16`",
            token.len()
        )));
    }
    // All ASCII, so this cannot fail.
    String::from_utf8(token.to_vec()).map_err(|_| invalid("it is not ASCII".to_owned()))
}

/// The token in `key` of Secret `name` in `namespace`.
pub async fn from_secret(
    client: &Client,
    namespace: &str,
    reference: &SecretKeyRef,
) -> Result<String, Error> {
    let source_name = format!(
        "Secret {namespace}/{} key {:?}",
        reference.name, reference.key
    );
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api.get(&reference.name).await.map_err(|error| {
        let why = match &error {
            kube::Error::Api(status) if status.is_not_found() => "not found".to_owned(),
            kube::Error::Api(status) if status.code == 403 => format!(
                "not readable by the controller ({}); bind the ClusterRole \
                 cohort-controller-force-token in this namespace (manifests/controller/rbac.yaml)",
                status.message
            ),
            other => other.to_string(),
        };
        Error::ForceTokenUnavailable(format!("Secret {namespace}/{}: {why}", reference.name))
    })?;
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .ok_or_else(|| {
            Error::ForceTokenUnavailable(format!("{source_name}: the Secret has no such key"))
        })?;
    parse_token(&value.0, &source_name)
}

/// The token in the file at `path` (relative paths start at `base`).
pub fn from_file(path: &str, base: &Path) -> Result<String, Error> {
    let full = base.join(path);
    let source_name = format!("the force token file {}", full.display());
    let bytes = std::fs::read(&full)
        .map_err(|error| Error::ForceTokenUnavailable(format!("{source_name}: {error}")))?;
    parse_token(&bytes, &source_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "5f0c2b1e9a7d43c8b6e1";

    /// The token, or the error's message (`Error` has no `PartialEq`).
    fn shown(read: Result<String, Error>) -> Result<String, String> {
        read.map_err(|error| error.to_string())
    }

    #[test]
    fn tokens_are_trimmed_and_checked_without_being_shown() {
        assert_eq!(
            shown(parse_token(TOKEN.as_bytes(), "x")).as_deref(),
            Ok(TOKEN)
        );
        assert_eq!(
            shown(parse_token(format!("  {TOKEN}\r\n").as_bytes(), "x")).as_deref(),
            Ok(TOKEN)
        );
        for bad in [
            &b""[..],
            b"\n",
            b"short-token",
            b"5f0c2b1e9a7d 43c8b6e1",
            b"5f0c2b1e9a7d43c8\xff",
            "5f0c2b1e9a7d43c8b6é".as_bytes(),
        ] {
            let error = parse_token(bad, "Secret shop/t key \"token\"").unwrap_err();
            let shown = error.to_string();
            assert!(
                shown.starts_with("Secret shop/t key \"token\" does not hold a usable force token"),
                "{shown}"
            );
            let bad = String::from_utf8_lossy(bad);
            let bad = bad.trim();
            if bad.len() >= 4 {
                assert!(!shown.contains(bad), "the token is shown: {shown}");
            }
        }
    }

    #[test]
    fn files_are_read_relative_to_the_rollout() {
        let dir = std::env::temp_dir().join(format!("cohort-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        assert_eq!(shown(from_file("token", &dir)).as_deref(), Ok(TOKEN));
        let absolute = dir.join("token").display().to_string();
        assert_eq!(
            shown(from_file(&absolute, Path::new("/elsewhere"))).as_deref(),
            Ok(TOKEN)
        );
        let missing = from_file("missing", &dir).unwrap_err();
        assert!(
            matches!(missing, Error::ForceTokenUnavailable(_)),
            "{missing}"
        );
        std::fs::write(dir.join("token"), "short\n").unwrap();
        let short = from_file("token", &dir).unwrap_err().to_string();
        assert!(
            short.contains("found 5 bytes") && !short.contains("short"),
            "{short}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
