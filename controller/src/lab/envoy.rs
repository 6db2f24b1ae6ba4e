//! The lab's Envoy: the committed plain-Envoy templates (`manifests/envoy/`) rendered with free
//! ports on 127.0.0.1, the two upstreams' addresses and the filter, started as a child process
//! that is killed when the lab ends (or drops it).
//!
//! The end-to-end tests render the same templates with their own copy of [`render`]
//! (`tests/src/envoy.rs`): the controller cannot depend on the test harness, and twenty lines
//! are cheaper than a shared crate.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::lab::LabError;
use crate::source::envoy_admin::EnvoyAdmin;

/// `manifests/envoy/bootstrap.yaml`.
pub const BOOTSTRAP_TEMPLATE: &str = include_str!("../../../manifests/envoy/bootstrap.yaml");
/// `manifests/envoy/ecds.yaml`.
pub const ECDS_TEMPLATE: &str = include_str!("../../../manifests/envoy/ecds.yaml");

/// The HTTP filter's name in the bootstrap, and the ECDS resource's.
pub const FILTER_NAME: &str = "cohort";
/// How long Envoy gets to start with the filter loaded.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How often the lab merges histograms (the template's 5 s would leave the latency gate
/// without data for the first seconds of each short step).
const STATS_FLUSH_INTERVAL: &str = "1s";

/// Replaces every `${NAME}` in `template`; fails if a placeholder outside a comment is left.
pub fn render(template: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    match out
        .lines()
        .find(|line| !line.trim_start().starts_with('#') && line.contains("${"))
    {
        Some(line) => Err(format!("template placeholder left unset in: {line}")),
        None => Ok(out),
    }
}

/// The ECDS file serving `config` (the filter's JSON) from the `.wasm` at `wasm`.
pub fn render_ecds(wasm: &Path, config: &str) -> Result<String, String> {
    // The config sits in a single-quoted YAML scalar, where `'` is written `''`.
    render(
        ECDS_TEMPLATE,
        &[
            ("WASM_PATH", &wasm.display().to_string()),
            ("COHORT_CONFIG", &config.replace('\'', "''")),
        ],
    )
}

/// The addresses the bootstrap is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The listener (what the load generator calls).
    pub listen: u16,
    /// The admin port; 0 lets Envoy pick one.
    pub admin: u16,
    /// The stable upstream.
    pub stable: SocketAddr,
    /// The canary upstream.
    pub canary: SocketAddr,
}

/// The bootstrap for `ports`, reading the filter from the ECDS file at `ecds`.
pub fn render_bootstrap(ports: &Ports, ecds: &Path) -> Result<String, String> {
    let bootstrap = render(
        BOOTSTRAP_TEMPLATE,
        &[
            ("LISTEN_PORT", &ports.listen.to_string()),
            ("ADMIN_PORT", &ports.admin.to_string()),
            ("ECDS_PATH", &ecds.display().to_string()),
            ("STABLE_HOST", &ports.stable.ip().to_string()),
            ("STABLE_PORT", &ports.stable.port().to_string()),
            ("CANARY_HOST", &ports.canary.ip().to_string()),
            ("CANARY_PORT", &ports.canary.port().to_string()),
        ],
    )?;
    let flush = "stats_flush_interval: 5s";
    if bootstrap.matches(flush).count() != 1 {
        return Err(format!("expected `{flush}` once in the bootstrap template"));
    }
    Ok(bootstrap.replacen(
        flush,
        &format!("stats_flush_interval: {STATS_FLUSH_INTERVAL}"),
        1,
    ))
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16, LabError> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| LabError::Setup(format!("no free port on 127.0.0.1: {error}")))?
        .port();
    Ok(port)
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct LabEnvoy {
    child: tokio::process::Child,
    listen: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    stdio: PathBuf,
}

impl LabEnvoy {
    /// Writes the bootstrap and ECDS file into `dir`, starts `binary` on them, and waits until
    /// Envoy is ready with the filter config loaded.
    pub async fn start(
        binary: &Path,
        wasm: &Path,
        dir: &Path,
        filter_config: &str,
        ports: &Ports,
    ) -> Result<LabEnvoy, LabError> {
        let setup =
            |what: &str, error: &dyn std::fmt::Display| LabError::Setup(format!("{what}: {error}"));
        let ecds = dir.join("ecds.yaml");
        let ecds_text =
            render_ecds(wasm, filter_config).map_err(|e| setup("rendering ecds.yaml", &e))?;
        std::fs::write(&ecds, ecds_text).map_err(|e| setup("writing ecds.yaml", &e))?;
        let bootstrap = dir.join("bootstrap.yaml");
        let bootstrap_text =
            render_bootstrap(ports, &ecds).map_err(|e| setup("rendering bootstrap.yaml", &e))?;
        std::fs::write(&bootstrap, bootstrap_text)
            .map_err(|e| setup("writing bootstrap.yaml", &e))?;
        let admin_path = dir.join("admin-address");
        let _ = std::fs::remove_file(&admin_path);
        let log = dir.join("envoy.log");
        let stdio = dir.join("envoy.stdio");
        let stdio_file =
            std::fs::File::create(&stdio).map_err(|e| setup("creating envoy.stdio", &e))?;
        let stderr_file = stdio_file
            .try_clone()
            .map_err(|e| setup("creating envoy.stdio", &e))?;
        let child = tokio::process::Command::new(binary)
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", "2", "--log-level", "warn"])
            .arg("--log-path")
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory: several Envoys (two labs, the tests) cannot collide on a base id.
            .arg("--disable-hot-restart")
            .stdin(std::process::Stdio::null())
            .stdout(stdio_file)
            .stderr(stderr_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| setup(&format!("starting {}", binary.display()), &e))?;
        let mut envoy = LabEnvoy {
            child,
            listen: SocketAddr::from(([127, 0, 0, 1], ports.listen)),
            admin: SocketAddr::from(([127, 0, 0, 1], ports.admin)),
            log,
            stdio,
        };
        envoy.admin = envoy.wait_for_admin(&admin_path).await?;
        envoy.wait_until_ready().await?;
        Ok(envoy)
    }

    /// The listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin interface's URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Envoy's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    async fn wait_for_admin(&mut self, path: &Path) -> Result<SocketAddr, LabError> {
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                    return Ok(addr);
                }
            }
            self.check_running("starting").await?;
            if started.elapsed() > START_DEADLINE {
                return Err(self.failure("Envoy wrote no admin address"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_until_ready(&mut self) -> Result<(), LabError> {
        let admin = EnvoyAdmin::new(&self.admin_url(), Duration::from_secs(2))
            .map_err(|error| LabError::Setup(error.to_string()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| LabError::Setup(error.to_string()))?;
        let ready_url = format!("{}/ready", self.admin_url());
        let started = Instant::now();
        loop {
            self.check_running("loading the filter").await?;
            if let Ok(updates) = admin.ecds_updates(FILTER_NAME).await {
                if updates.rejected > 0 {
                    return Err(self.failure("Envoy rejected the lab's filter config"));
                }
                let ready = http
                    .get(&ready_url)
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if ready && updates.success > 0 {
                    return Ok(());
                }
            }
            if started.elapsed() > START_DEADLINE {
                return Err(self.failure("Envoy did not become ready with the filter loaded"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn check_running(&mut self, what: &str) -> Result<(), LabError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(&format!("Envoy exited ({status}) while {what}"))),
            Err(error) => Err(self.failure(&format!("cannot watch Envoy: {error}"))),
        }
    }

    /// A setup error carrying `message` and the tail of Envoy's log and output.
    fn failure(&self, message: &str) -> LabError {
        let mut text = message.to_owned();
        for path in [&self.log, &self.stdio] {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            if !tail.is_empty() {
                text.push_str(&format!(
                    "\n--- {} (last lines) ---\n{}",
                    path.display(),
                    tail.join("\n")
                ));
            }
        }
        LabError::Setup(text)
    }

    /// Stops Envoy and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_gets_every_address_and_a_fast_stats_flush() {
        let ports = Ports {
            listen: 10_000,
            admin: 0,
            stable: SocketAddr::from(([127, 0, 0, 1], 10_001)),
            canary: SocketAddr::from(([127, 0, 0, 1], 10_002)),
        };
        let bootstrap = render_bootstrap(&ports, Path::new("/lab/ecds.yaml")).unwrap();
        assert!(bootstrap.contains("port_value: 10000"));
        assert!(bootstrap.contains("port_value: 10002"));
        assert!(bootstrap.contains("path: /lab/ecds.yaml"));
        assert!(bootstrap.contains("stats_flush_interval: 1s"));
        let ecds = render_ecds(Path::new("/x.wasm"), r#"{"a":"it's"}"#).unwrap();
        assert!(ecds.contains(r#"value: '{"a":"it''s"}'"#), "{ecds}");
        assert!(render("a: ${B}\n", &[]).is_err());
        assert_eq!(render("# ${B}\n", &[]).unwrap(), "# ${B}\n");
    }
}
