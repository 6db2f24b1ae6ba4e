//! The Envoy the lab and the end-to-end tests run: the committed plain-Envoy templates
//! (`manifests/envoy/`) rendered with free ports on 127.0.0.1, the two upstreams' addresses and
//! the filter, started as a child process that is killed when it is stopped or dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;
use cohort_controller::source::envoy_admin::EnvoyAdmin;

/// `manifests/envoy/bootstrap.yaml`.
pub const BOOTSTRAP_TEMPLATE: &str = include_str!("../../manifests/envoy/bootstrap.yaml");
/// `manifests/envoy/ecds.yaml`.
pub const ECDS_TEMPLATE: &str = include_str!("../../manifests/envoy/ecds.yaml");

/// The HTTP filter's name in the bootstrap, and the ECDS resource's.
pub const FILTER_NAME: &str = "cohort";
/// How long Envoy gets to start with the filter loaded.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How often histograms are merged by default (the template's 5 s would leave the lab's latency
/// gate without data for the first seconds of each short step).
pub const STATS_FLUSH_INTERVAL: &str = "1s";
/// The routing header value the template's canary route matches.
const CANARY_ROUTE_VALUE: &str = "canary";
/// Lines of each log a start failure quotes.
const FAILURE_LOG_LINES: usize = 40;

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
    // The config sits in a single-quoted YAML scalar, where `'` is written `''`; a newline
    // would fold to a space, which JSON does not mind.
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

/// Everything one Envoy run is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The Envoy binary.
    pub binary: PathBuf,
    /// The `.wasm` in the bootstrap's `cohort` filter slot; `None` cuts the slot out of the
    /// bootstrap, leaving the router alone (the benchmark's baseline).
    pub wasm: Option<PathBuf>,
    /// The filter's JSON config, served from the ECDS file.
    pub filter_config: String,
    /// Where Envoy listens and forwards.
    pub ports: Ports,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Envoy's `--log-level`.
    pub log_level: String,
    /// `stats_flush_interval`, e.g. `1s` (histograms appear after a flush).
    pub stats_flush_interval: String,
    /// A program and its arguments that Envoy runs under (the instruction-count benchmark's
    /// `valgrind --tool=callgrind`); empty runs Envoy itself.
    pub run_under: Vec<String>,
    /// How long Envoy gets to write its admin address and load the filter.
    pub start_deadline: Duration,
    /// The routing header value the canary route matches (the canary's name; another value is
    /// the misrouted lab's slip).
    pub canary_route_value: String,
}

impl Launch {
    /// `binary` running `wasm` with `filter_config` on `ports`: two workers, warnings logged,
    /// stats flushed every [`STATS_FLUSH_INTERVAL`].
    pub fn new(binary: &Path, wasm: Option<&Path>, filter_config: &str, ports: Ports) -> Launch {
        Launch {
            binary: binary.to_owned(),
            wasm: wasm.map(Path::to_owned),
            filter_config: filter_config.to_owned(),
            ports,
            concurrency: 2,
            log_level: "warn".to_owned(),
            stats_flush_interval: STATS_FLUSH_INTERVAL.to_owned(),
            run_under: Vec::new(),
            start_deadline: START_DEADLINE,
            canary_route_value: CANARY_ROUTE_VALUE.to_owned(),
        }
    }

    /// The bootstrap, reading the filter from the ECDS file at `ecds`.
    pub fn render_bootstrap(&self, ecds: &Path) -> Result<String, String> {
        let ports = &self.ports;
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
        let bootstrap = bootstrap.replacen(
            flush,
            &format!("stats_flush_interval: {}", self.stats_flush_interval),
            1,
        );
        let canary_match = format!("string_match: {{exact: {CANARY_ROUTE_VALUE}}}");
        if bootstrap.matches(&canary_match).count() != 1 {
            return Err(format!(
                "expected `{canary_match}` once in the bootstrap template"
            ));
        }
        let bootstrap = bootstrap.replacen(
            &canary_match,
            &format!("string_match: {{exact: {}}}", self.canary_route_value),
            1,
        );
        match self.wasm {
            Some(_) => Ok(bootstrap),
            None => without_wasm_filter(&bootstrap),
        }
    }
}

/// `bootstrap` without its `cohort` HTTP filter entry.
fn without_wasm_filter(bootstrap: &str) -> Result<String, String> {
    const ENTRY: &str = "\n          - name: cohort\n";
    const NEXT: &str = "\n          - name: envoy.filters.http.router\n";
    match (bootstrap.find(ENTRY), bootstrap.find(NEXT)) {
        (Some(start), Some(end)) if start < end && bootstrap.matches(ENTRY).count() == 1 => {
            Ok(format!("{}{}", &bootstrap[..start], &bootstrap[end..]))
        }
        _ => Err(
            "the bootstrap template no longer has the `cohort` filter right before the router"
                .to_owned(),
        ),
    }
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16, Error> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| Error::Setup(format!("no free port on 127.0.0.1: {error}")))?
        .port();
    Ok(port)
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct LabEnvoy {
    child: tokio::process::Child,
    listen: SocketAddr,
    admin: SocketAddr,
    ecds: PathBuf,
    log: PathBuf,
    stdio: PathBuf,
}

impl LabEnvoy {
    /// Writes the bootstrap and ECDS file into `dir`, starts Envoy on them, and waits until it
    /// is ready with the filter config loaded.
    pub async fn start(launch: &Launch, dir: &Path) -> Result<LabEnvoy, Error> {
        let setup =
            |what: &str, error: &dyn std::fmt::Display| Error::Setup(format!("{what}: {error}"));
        let ecds = dir.join("ecds.yaml");
        // Written without a filter slot too: pushes to it then go nowhere, as they should.
        let wasm = launch.wasm.clone().unwrap_or_default();
        let ecds_text = render_ecds(&wasm, &launch.filter_config)
            .map_err(|e| setup("rendering ecds.yaml", &e))?;
        std::fs::write(&ecds, ecds_text).map_err(|e| setup("writing ecds.yaml", &e))?;
        let bootstrap = dir.join("bootstrap.yaml");
        let bootstrap_text = launch
            .render_bootstrap(&ecds)
            .map_err(|e| setup("rendering bootstrap.yaml", &e))?;
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
        let binary = &launch.binary;
        let mut command = match launch.run_under.split_first() {
            Some((program, args)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => tokio::process::Command::new(binary),
        };
        let child = command
            .arg("-c")
            .arg(&bootstrap)
            .args(["--concurrency", &launch.concurrency.to_string()])
            .args(["--log-level", &launch.log_level])
            .arg("--log-path")
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory: several Envoys (two labs, parallel tests) cannot collide on a
            // base id.
            .arg("--disable-hot-restart")
            .stdin(std::process::Stdio::null())
            .stdout(stdio_file)
            .stderr(stderr_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let program = launch.run_under.first().map_or_else(
                    || binary.display().to_string(),
                    |program| format!("{program} (to run {})", binary.display()),
                );
                setup(&format!("starting {program}"), &e)
            })?;
        let mut envoy = LabEnvoy {
            child,
            listen: SocketAddr::from(([127, 0, 0, 1], launch.ports.listen)),
            admin: SocketAddr::from(([127, 0, 0, 1], launch.ports.admin)),
            ecds,
            log,
            stdio,
        };
        envoy.admin = envoy
            .wait_for_admin(&admin_path, launch.start_deadline)
            .await?;
        envoy
            .wait_until_ready(launch.wasm.is_some(), launch.start_deadline)
            .await?;
        Ok(envoy)
    }

    /// The listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin interface's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The admin interface's URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The ECDS file Envoy watches.
    pub fn ecds_path(&self) -> &Path {
        &self.ecds
    }

    /// Envoy's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Envoy's process id (`None` once it exited and was reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn wait_for_admin(
        &mut self,
        path: &Path,
        deadline: Duration,
    ) -> Result<SocketAddr, Error> {
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                    return Ok(addr);
                }
            }
            self.check_running("starting")?;
            if started.elapsed() > deadline {
                return Err(self.failure("Envoy wrote no admin address"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_until_ready(
        &mut self,
        with_filter: bool,
        deadline: Duration,
    ) -> Result<(), Error> {
        let admin = EnvoyAdmin::new(&self.admin_url(), Duration::from_secs(2))
            .map_err(|error| Error::Setup(error.to_string()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|error| Error::Setup(error.to_string()))?;
        let ready_url = format!("{}/ready", self.admin_url());
        let started = Instant::now();
        loop {
            self.check_running("loading the filter")?;
            let loaded = if with_filter {
                match admin.ecds_updates(FILTER_NAME).await {
                    Ok(updates) if updates.rejected > 0 => {
                        return Err(self.failure("Envoy rejected the initial filter config"));
                    }
                    Ok(updates) => updates.success > 0,
                    Err(_) => false,
                }
            } else {
                true
            };
            if loaded {
                let ready = http
                    .get(&ready_url)
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if ready {
                    return Ok(());
                }
            }
            if started.elapsed() > deadline {
                return Err(self.failure("Envoy did not become ready with the filter loaded"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_running(&mut self, what: &str) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(&format!("Envoy exited ({status}) while {what}"))),
            Err(error) => Err(self.failure(&format!("cannot watch Envoy: {error}"))),
        }
    }

    /// A setup error carrying `message` and the tail of Envoy's log and output.
    fn failure(&self, message: &str) -> Error {
        Error::Setup(format!("{message}\n{}", self.log_tail(FAILURE_LOG_LINES)))
    }

    /// The last `lines` lines of Envoy's log and of its stdout/stderr, each under a heading.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in [&self.log, &self.stdio] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "--- {} (last {} lines) ---\n",
                path.display(),
                tail.len()
            ));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Stops Envoy and waits for it to exit (again: a no-op).
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(wasm: Option<&Path>) -> Launch {
        let ports = Ports {
            listen: 10_000,
            admin: 0,
            stable: SocketAddr::from(([127, 0, 0, 1], 10_001)),
            canary: SocketAddr::from(([127, 0, 0, 1], 10_002)),
        };
        Launch::new(Path::new("/envoy"), wasm, "{}", ports)
    }

    #[test]
    fn the_bootstrap_gets_every_address_and_a_fast_stats_flush() {
        let bootstrap = launch(Some(Path::new("/x.wasm")))
            .render_bootstrap(Path::new("/lab/ecds.yaml"))
            .unwrap();
        assert!(bootstrap.contains("port_value: 10000"));
        assert!(bootstrap.contains("port_value: 10002"));
        assert!(bootstrap.contains("path: /lab/ecds.yaml"));
        assert!(bootstrap.contains("stats_flush_interval: 1s"));
        let ecds = render_ecds(Path::new("/x.wasm"), r#"{"a":"it's"}"#).unwrap();
        assert!(ecds.contains(r#"value: '{"a":"it''s"}'"#), "{ecds}");
        assert!(ecds.contains("filename: /x.wasm"), "{ecds}");
        let error = render(BOOTSTRAP_TEMPLATE, &[("LISTEN_PORT", "1")]).unwrap_err();
        assert!(error.contains("placeholder left unset"), "{error}");
        // Placeholders in comments are documentation, not left-overs.
        assert_eq!(render("# ${B}\n", &[]).unwrap(), "# ${B}\n");
    }

    #[test]
    fn the_misrouted_bootstrap_matches_another_value_on_the_canary_route() {
        let routed = launch(None).render_bootstrap(Path::new("/e.yaml")).unwrap();
        assert!(routed.contains("string_match: {exact: canary}"));
        let misrouted = Launch {
            canary_route_value: "v2".to_owned(),
            ..launch(None)
        }
        .render_bootstrap(Path::new("/e.yaml"))
        .unwrap();
        assert!(
            misrouted.contains("string_match: {exact: v2}"),
            "{misrouted}"
        );
        assert!(!misrouted.contains("{exact: canary}"));
        assert_eq!(misrouted.lines().count(), routed.lines().count());
    }

    #[test]
    fn the_filterless_bootstrap_keeps_only_the_router() {
        let with_filter = launch(Some(Path::new("/x.wasm")))
            .render_bootstrap(Path::new("/ecds.yaml"))
            .unwrap();
        let bootstrap = launch(None)
            .render_bootstrap(Path::new("/ecds.yaml"))
            .unwrap();
        assert!(!bootstrap.contains("- name: cohort\n"), "{bootstrap}");
        assert!(!bootstrap.contains("config_discovery"), "{bootstrap}");
        assert!(bootstrap.contains("http_filters:\n          - name: envoy.filters.http.router\n"));
        // The cohort entry's six lines go, nothing else.
        let removed: Vec<&str> = with_filter
            .lines()
            .filter(|line| !bootstrap.lines().any(|kept| kept == *line))
            .map(str::trim)
            .collect();
        assert_eq!(removed.len(), 6, "{removed:?}");
        assert_eq!(removed[0], "- name: cohort");
        assert_eq!(bootstrap.lines().count() + 6, with_filter.lines().count());
    }
}
