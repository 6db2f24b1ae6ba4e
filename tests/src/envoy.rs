//! A real Envoy in front of two [`Upstream`]s: the lab's launcher
//! (`cohort_lab::envoy`, which renders the committed templates in `manifests/envoy/`)
//! on the harness's runtime, with what tests add: a choice of filter, config pushes that wait for
//! Envoy's verdict, admin reads, and the log printed when a test fails.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cohort_lab::envoy::{LabEnvoy, Launch, Ports};

use crate::client::{Client, Response};
use crate::locate::{envoy_binary, filter_wasm};
use crate::prom::{self, Sample};
use crate::upstream::Upstream;
use crate::{runtime, Context, Error, Result, TempDir};

pub use cohort_lab::envoy::{free_port, render, render_ecds, BOOTSTRAP_TEMPLATE, ECDS_TEMPLATE};

/// `manifests/envoy/cohort-config.example.json`.
pub const EXAMPLE_CONFIG: &str = include_str!("../../manifests/envoy/cohort-config.example.json");

/// Admin stat counting ECDS updates Envoy applied.
pub const UPDATE_SUCCESS: &str = "extension_config_discovery.http_filter.cohort.update_success";
/// Admin stat counting ECDS updates Envoy (or the filter's `on_configure`) refused.
pub const UPDATE_REJECTED: &str = "extension_config_discovery.http_filter.cohort.update_rejected";

/// How long a push gets to take effect before the harness gives up.
const DEADLINE: Duration = Duration::from_secs(30);

/// Knobs of one Envoy run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// `stats_flush_interval`, e.g. `1s` (histograms appear after a flush).
    pub stats_flush_interval: String,
    /// Envoy's `--log-level`.
    pub log_level: String,
    /// What runs in the bootstrap's `cohort` filter slot.
    pub filter: Filter,
    /// A program and its arguments Envoy runs under (e.g. valgrind); empty runs Envoy itself.
    pub run_under: Vec<String>,
    /// How long Envoy gets to start with the filter loaded; `None` is the launcher's default.
    pub start_deadline: Option<Duration>,
    /// The canary cluster points at a port nothing listens on: Envoy answers its requests with
    /// a 503 of its own, no upstream ever answers.
    pub unreachable_canary: bool,
}

/// What runs in the bootstrap's `cohort` HTTP filter slot (the benchmark compares these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Filter {
    /// cohort's filter ([`filter_wasm`]), from the ECDS file.
    #[default]
    Cohort,
    /// Another `.wasm` from the same ECDS file, given the same config string.
    Wasm(PathBuf),
    /// No wasm filter: the `cohort` entry is cut from the bootstrap, the router alone remains.
    None,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 2,
            stats_flush_interval: "1s".to_owned(),
            log_level: "warn".to_owned(),
            filter: Filter::Cohort,
            run_under: Vec::new(),
            start_deadline: None,
            unreachable_canary: false,
        }
    }
}

/// A running Envoy with its upstreams; killed and cleaned up on drop (its log is printed when
/// the drop happens during a panic, i.e. a failed test).
#[derive(Debug)]
pub struct Envoy {
    process: LabEnvoy,
    dir: TempDir,
    wasm: PathBuf,
    pushes: AtomicU64,
    /// The `stable` upstream.
    pub stable: Upstream,
    /// The `canary` upstream.
    pub canary: Upstream,
}

/// What became of one config push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// `update_success` went up.
    Accepted,
    /// `update_rejected` went up.
    Rejected,
}

impl Envoy {
    /// Starts Envoy serving `config` (the filter's JSON) with default [`Options`], and waits until
    /// it is ready and the filter config is loaded.
    pub fn start(config: &str) -> Result<Envoy> {
        Self::start_with(config, &Options::default())
    }

    /// Starts Envoy with `options`.
    pub fn start_with(config: &str, options: &Options) -> Result<Envoy> {
        let binary = envoy_binary()?;
        let wasm = match &options.filter {
            Filter::Cohort => Some(filter_wasm()?),
            Filter::Wasm(path) => Some(path.clone()),
            Filter::None => None,
        };
        let stable = Upstream::start("stable")?;
        let canary = Upstream::start("canary")?;
        let dir = TempDir::new("envoy")?;
        let canary_addr = if options.unreachable_canary {
            SocketAddr::from(([127, 0, 0, 1], free_port()?))
        } else {
            canary.addr()
        };
        let ports = Ports {
            listen: free_port()?,
            admin: 0,
            stable: stable.addr(),
            canary: canary_addr,
        };
        let defaults = Launch::new(&binary, wasm.as_deref(), config, ports);
        let launch = Launch {
            concurrency: options.concurrency,
            log_level: options.log_level.clone(),
            stats_flush_interval: options.stats_flush_interval.clone(),
            run_under: options.run_under.clone(),
            start_deadline: options.start_deadline.unwrap_or(defaults.start_deadline),
            ..defaults
        };
        let process = runtime()?.block_on(LabEnvoy::start(&launch, dir.path()))?;
        Ok(Envoy {
            process,
            dir,
            wasm: wasm.unwrap_or_default(),
            pushes: AtomicU64::new(0),
            stable,
            canary,
        })
    }

    /// An error carrying `message` and the tail of Envoy's log and output.
    pub fn failure(&self, message: &str) -> Error {
        Error(format!("{message}\n{}", self.log_tail(60)))
    }

    /// The last `lines` lines of Envoy's log and stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Envoy's whole log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// Envoy's process id (`None` once it was stopped).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The listener address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.process.listen_addr()
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.process.admin_addr()
    }

    /// The `.wasm` Envoy runs.
    pub fn wasm(&self) -> &Path {
        &self.wasm
    }

    /// A keep-alive client for the listener sending `host: app.test`.
    pub fn client(&self) -> Client {
        Client::new(self.listen_addr(), "app.test")
    }

    /// `GET path` on the admin port.
    pub fn admin_get(&self, path: &str) -> Result<Response> {
        let mut client = Client::new(self.admin_addr(), "localhost");
        client.set_timeout(Duration::from_secs(10));
        client.get(path, &[(b"connection", b"close")])
    }

    /// A counter or gauge from `/stats` (`None` when Envoy does not have it).
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let response = self.admin_get(&format!("/stats?filter=^{name}$"))?;
        if response.status != 200 {
            return Err(Error(format!(
                "/stats answered {}: {}",
                response.status,
                response.text()
            )));
        }
        let prefix = format!("{name}: ");
        Ok(response
            .text()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok()))
    }

    /// `/stats/prometheus` as text.
    pub fn prometheus_text(&self) -> Result<String> {
        let response = self.admin_get("/stats/prometheus")?;
        if response.status != 200 {
            return Err(Error(format!(
                "/stats/prometheus answered {}",
                response.status
            )));
        }
        Ok(response.text())
    }

    /// `/stats/prometheus`, parsed.
    pub fn prometheus(&self) -> Result<Vec<Sample>> {
        Ok(prom::parse(&self.prometheus_text()?))
    }

    /// Replaces the ECDS file with `config` (write a temp file, rename it over the watched
    /// path) and returns at once.
    pub fn push_config(&self, config: &str) -> Result<()> {
        self.push_ecds(&render_ecds(&self.wasm, config)?)
    }

    /// Replaces the ECDS file with `text` as is.
    pub fn push_ecds(&self, text: &str) -> Result<()> {
        let n = self.pushes.fetch_add(1, Ordering::SeqCst);
        let temp = self.dir.path().join(format!(".ecds-{n}.yaml.tmp"));
        fs::write(&temp, text)?;
        let ecds = self.process.ecds_path();
        fs::rename(&temp, ecds).context(|| format!("renaming over {}", ecds.display()))
    }

    /// Pushes `config` and waits until Envoy counts it as accepted or rejected; returns which,
    /// and the time from the rename to the counter changing.
    pub fn push_config_and_wait(&self, config: &str) -> Result<(PushResult, Duration)> {
        let success = self.stat(UPDATE_SUCCESS)?.unwrap_or(0);
        let rejected = self.stat(UPDATE_REJECTED)?.unwrap_or(0);
        let start = Instant::now();
        self.push_config(config)?;
        loop {
            if self.stat(UPDATE_SUCCESS)?.unwrap_or(0) > success {
                return Ok((PushResult::Accepted, start.elapsed()));
            }
            if self.stat(UPDATE_REJECTED)?.unwrap_or(0) > rejected {
                return Ok((PushResult::Rejected, start.elapsed()));
            }
            if start.elapsed() > DEADLINE {
                return Err(self.failure("Envoy neither accepted nor rejected the pushed config"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The temp directory holding the bootstrap, ECDS file and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("Envoy log of the failed test:\n{}", self.log_tail(80));
        }
        // Inside another runtime, blocking would panic; dropping the process kills it unwaited.
        if tokio::runtime::Handle::try_current().is_err() {
            if let Ok(runtime) = runtime() {
                runtime.block_on(self.process.stop());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_core::telemetry::{tag_regex, TAGS};

    #[test]
    fn bootstrap_declares_every_tag_the_filter_emits() {
        for tag in TAGS {
            let entry = format!("{{tag_name: {tag}, regex: '{}'}}", tag_regex(tag));
            assert!(
                BOOTSTRAP_TEMPLATE.contains(&entry),
                "bootstrap.yaml lacks `{entry}`"
            );
        }
        assert_eq!(
            BOOTSTRAP_TEMPLATE.matches("- {tag_name: ").count(),
            TAGS.len(),
            "bootstrap.yaml declares a tag the filter does not emit"
        );
    }

    #[test]
    fn example_config_is_valid() {
        if let Err(errors) = cohort_core::config::parse(EXAMPLE_CONFIG.as_bytes()) {
            panic!("cohort-config.example.json: {errors}");
        }
    }
}
