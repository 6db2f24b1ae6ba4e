//! Test harness: real Envoy with the built filter, upstream servers, a raw HTTP client.
//!
//! - [`locate`]: finds the Envoy binary and builds the filter's `.wasm` (the lab's locator).
//! - [`envoy`]: runs the lab's Envoy from `manifests/envoy/*.yaml`, pushes configs, reads stats.
//! - [`upstream`]: the lab's `stable` and `canary` HTTP/1.1 servers, steerable at run time.
//! - [`client`]: a raw HTTP/1.1 client that sends any bytes (non-UTF-8, huge headers).
//! - [`prom`]: parses Prometheus text output.
//! - [`prometheus_server`]: a real Prometheus scraping Envoy's admin every second.
//! - [`bench`]: the Envoy overhead benchmark's three set-ups, `wrk` runs and CPU accounting.
//! - [`manifests`]: renders `manifests/` with kustomize; finds our CRD and Istio's.
//! - [`schema`]: validates Kubernetes objects against a CRD's `openAPIV3Schema` (offline).

use std::fmt;
use std::path::PathBuf;

pub mod bench;
pub mod client;
pub mod envoy;
pub mod exporter;
pub mod instructions;
pub mod locate;
pub mod manifests;
pub mod prom;
pub mod prometheus_server;
pub mod schema;
pub mod upstream;

pub use client::{Client, Response};
pub use envoy::Envoy;
pub use upstream::Upstream;

/// What went wrong in the harness, as a message that says how to fix it where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error(error.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_owned())
    }
}

impl From<cohort_lab::Error> for Error {
    fn from(error: cohort_lab::Error) -> Self {
        Error(error.to_string())
    }
}

/// The harness's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| Error(format!("{}: {error}", what())))
    }
}

/// The runtime the harness's async parts (the lab's Envoy launcher and upstreams) run on: one
/// for the test process, with worker threads of its own, so upstreams keep answering while the
/// test's thread sends requests.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("harness")
                .enable_all()
                .build()
                .map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(|error| Error(format!("cannot start the harness's async runtime: {error}")))
}

/// The workspace root (the directory above this crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `cohort-<prefix>-<pid>-<n>-<nanos>` under [`std::env::temp_dir`].
    pub fn new(prefix: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "cohort-{prefix}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The force token the test configs carry.
pub const FORCE_TOKEN: &str = "0123456789abcdef0123";

/// The tests' base filter config: identity `x-user-id` header then `uid` cookie, event
/// `checkout`, and one rollout `web` for every host at `weight_bp`.
pub fn config(weight_bp: u32) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "forceToken": FORCE_TOKEN,
        "identity": [
            {"kind": "header", "name": "x-user-id"},
            {"kind": "cookie", "name": "uid"}
        ],
        "events": ["checkout"],
        "rollouts": {"web": {"hosts": ["*"], "weightBp": weight_bp}}
    })
}

/// The version cohort-core puts `key` on in rollout `web` (salt `web`) at `weight_bp`.
pub fn expected_version(key: &[u8], weight_bp: u32) -> &'static str {
    if cohort_core::bucket::place("web", key).is_canary(weight_bp) {
        "canary"
    } else {
        "stable"
    }
}
