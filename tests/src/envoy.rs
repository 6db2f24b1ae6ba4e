//! A real Envoy in front of two [`Upstream`]s, configured from the committed templates in
//! `manifests/envoy/` (the one source of truth for the plain-Envoy shape), with the cohort filter
//! loaded over a file-based ECDS source.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Client, Response};
use crate::locate::{envoy_binary, filter_wasm};
use crate::prom::{self, Sample};
use crate::upstream::Upstream;
use crate::{Context, Error, Result, TempDir};

/// `manifests/envoy/bootstrap.yaml`.
pub const BOOTSTRAP_TEMPLATE: &str = include_str!("../../manifests/envoy/bootstrap.yaml");
/// `manifests/envoy/ecds.yaml`.
pub const ECDS_TEMPLATE: &str = include_str!("../../manifests/envoy/ecds.yaml");
/// `manifests/envoy/cohort-config.example.json`.
pub const EXAMPLE_CONFIG: &str = include_str!("../../manifests/envoy/cohort-config.example.json");

/// Admin stat counting ECDS updates Envoy applied.
pub const UPDATE_SUCCESS: &str = "extension_config_discovery.http_filter.cohort.update_success";
/// Admin stat counting ECDS updates Envoy (or the filter's `on_configure`) refused.
pub const UPDATE_REJECTED: &str = "extension_config_discovery.http_filter.cohort.update_rejected";

/// How long Envoy gets to start, and a push to take effect, before the harness gives up.
const DEADLINE: Duration = Duration::from_secs(30);

/// Replaces every `${NAME}` in `template`; fails if a placeholder outside a comment is left.
pub fn render(template: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    for line in out.lines() {
        if !line.trim_start().starts_with('#') && line.contains("${") {
            return Err(Error(format!("template placeholder left unset in: {line}")));
        }
    }
    Ok(out)
}

/// `text` with `from` replaced by `to`, which must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str) -> Result<String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(Error(format!(
            "expected {from:?} once in the bootstrap template, found it {n} times"
        ))),
    }
}

/// `bootstrap` without its `cohort` HTTP filter entry (set-up "no wasm filter").
fn without_wasm_filter(bootstrap: &str) -> Result<String> {
    const ENTRY: &str = "\n          - name: cohort\n";
    const NEXT: &str = "\n          - name: envoy.filters.http.router\n";
    match (bootstrap.find(ENTRY), bootstrap.find(NEXT)) {
        (Some(start), Some(end)) if start < end && bootstrap.matches(ENTRY).count() == 1 => {
            Ok(format!("{}{}", &bootstrap[..start], &bootstrap[end..]))
        }
        _ => Err(Error(
            "the bootstrap template no longer has the `cohort` filter right before the router"
                .into(),
        )),
    }
}

/// The ECDS file for `config` (the filter's JSON) and the `.wasm` at `wasm`.
pub fn render_ecds(wasm: &Path, config: &str) -> Result<String> {
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
        }
    }
}

/// A running Envoy with its upstreams; killed and cleaned up on drop (its log is printed when
/// the drop happens during a panic, i.e. a failed test).
#[derive(Debug)]
pub struct Envoy {
    child: Option<Child>,
    dir: TempDir,
    admin: SocketAddr,
    listen: SocketAddr,
    ecds: PathBuf,
    wasm: PathBuf,
    log: PathBuf,
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

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Envoy {
    /// Starts Envoy serving `config` (the filter's JSON) with default [`Options`], and waits until
    /// it is ready and the filter config is loaded.
    pub fn start(config: &str) -> Result<Envoy> {
        Self::start_with(config, &Options::default())
    }

    /// Starts Envoy with `options`.
    pub fn start_with(config: &str, options: &Options) -> Result<Envoy> {
        let envoy = envoy_binary()?;
        let wasm = match &options.filter {
            Filter::Cohort => filter_wasm()?,
            Filter::Wasm(path) => path.clone(),
            Filter::None => PathBuf::new(),
        };
        let stable = Upstream::start("stable")?;
        let canary = Upstream::start("canary")?;
        let dir = TempDir::new("envoy")?;
        let ecds = dir.path().join("ecds.yaml");
        fs::write(&ecds, render_ecds(&wasm, config)?)?;

        let listen_port = free_port()?;
        let bootstrap = render(
            BOOTSTRAP_TEMPLATE,
            &[
                ("LISTEN_PORT", &listen_port.to_string()),
                ("ADMIN_PORT", "0"),
                ("ECDS_PATH", &ecds.display().to_string()),
                ("STABLE_HOST", &stable.addr().ip().to_string()),
                ("STABLE_PORT", &stable.addr().port().to_string()),
                ("CANARY_HOST", &canary.addr().ip().to_string()),
                ("CANARY_PORT", &canary.addr().port().to_string()),
            ],
        )?;
        let bootstrap = replace_once(
            &bootstrap,
            "stats_flush_interval: 5s",
            &format!("stats_flush_interval: {}", options.stats_flush_interval),
        )?;
        let bootstrap = match options.filter {
            Filter::None => without_wasm_filter(&bootstrap)?,
            _ => bootstrap,
        };
        let bootstrap_path = dir.path().join("bootstrap.yaml");
        fs::write(&bootstrap_path, bootstrap)?;
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let stdio = dir.path().join("envoy.stdio");
        let stdio_file = fs::File::create(&stdio)?;

        let child = Command::new(&envoy)
            .arg("-c")
            .arg(&bootstrap_path)
            .args(["--concurrency", &options.concurrency.to_string()])
            .args(["--log-level", &options.log_level])
            .arg("--log-path")
            .arg(&log)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // No shared memory: parallel Envoys cannot collide on a base id.
            .arg("--disable-hot-restart")
            .stdin(Stdio::null())
            .stdout(stdio_file.try_clone()?)
            .stderr(stdio_file)
            .spawn()
            .context(|| format!("starting {}", envoy.display()))?;

        let mut envoy = Envoy {
            child: Some(child),
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen: SocketAddr::from(([127, 0, 0, 1], listen_port)),
            ecds,
            wasm,
            log,
            pushes: AtomicU64::new(0),
            stable,
            canary,
        };
        envoy.admin = envoy.wait_for_admin(&admin_path)?;
        envoy.wait_until_ready(options.filter != Filter::None)?;
        Ok(envoy)
    }

    fn wait_for_admin(&mut self, path: &Path) -> Result<SocketAddr> {
        let start = Instant::now();
        loop {
            if let Ok(text) = fs::read_to_string(path) {
                if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                    return Ok(addr);
                }
            }
            self.check_running("waiting for the admin address")?;
            if start.elapsed() > DEADLINE {
                return Err(self.failure("Envoy wrote no admin address"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_ready(&mut self, with_filter: bool) -> Result<()> {
        let start = Instant::now();
        loop {
            self.check_running("waiting for readiness")?;
            let ready = self.admin_get("/ready").is_ok_and(|r| r.status == 200);
            if ready && (!with_filter || self.stat(UPDATE_SUCCESS)?.unwrap_or(0) >= 1) {
                return Ok(());
            }
            if self.stat(UPDATE_REJECTED)?.unwrap_or(0) >= 1 {
                return Err(self.failure("Envoy rejected the initial filter config"));
            }
            if start.elapsed() > DEADLINE {
                return Err(self.failure("Envoy did not become ready with the filter loaded"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn check_running(&mut self, what: &str) -> Result<()> {
        let exited = match self.child.as_mut() {
            Some(child) => child.try_wait()?,
            None => return Err(Error("Envoy is not running".into())),
        };
        match exited {
            Some(status) => Err(self.failure(&format!("Envoy exited ({status}) while {what}"))),
            None => Ok(()),
        }
    }

    /// An error carrying `message` and the tail of Envoy's log and output.
    pub fn failure(&self, message: &str) -> Error {
        Error(format!("{message}\n{}", self.log_tail(60)))
    }

    /// The last `lines` lines of Envoy's log and stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for path in [self.log.clone(), self.dir.path().join("envoy.stdio")] {
            let text = fs::read_to_string(&path).unwrap_or_default();
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

    /// Envoy's whole log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Envoy's process id (`None` once it was stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The listener address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The `.wasm` Envoy runs.
    pub fn wasm(&self) -> &Path {
        &self.wasm
    }

    /// A keep-alive client for the listener sending `host: app.test`.
    pub fn client(&self) -> Client {
        Client::new(self.listen, "app.test")
    }

    /// `GET path` on the admin port.
    pub fn admin_get(&self, path: &str) -> Result<Response> {
        let mut client = Client::new(self.admin, "localhost");
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
        fs::rename(&temp, &self.ecds).context(|| format!("renaming over {}", self.ecds.display()))
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
            BOOTSTRAP_TEMPLATE.matches("- {tag_name: cohort_").count(),
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

    #[test]
    fn render_fills_placeholders_and_refuses_leftovers() {
        let ecds = render_ecds(Path::new("/x/cohort_filter.wasm"), r#"{"a":"it's"}"#).unwrap();
        assert!(ecds.contains(r#"value: '{"a":"it''s"}'"#), "{ecds}");
        assert!(ecds.contains("filename: /x/cohort_filter.wasm"), "{ecds}");
        let error = render(BOOTSTRAP_TEMPLATE, &[("LISTEN_PORT", "1")]).unwrap_err();
        assert!(error.0.contains("placeholder left unset"), "{error}");
        // Placeholders in comments are documentation, not left-overs.
        assert_eq!(render("# ${X}\na: 1\n", &[]).unwrap(), "# ${X}\na: 1\n");
    }

    #[test]
    fn the_filterless_bootstrap_keeps_only_the_router() {
        let bootstrap = without_wasm_filter(BOOTSTRAP_TEMPLATE).unwrap();
        assert!(!bootstrap.contains("- name: cohort\n"), "{bootstrap}");
        assert!(!bootstrap.contains("config_discovery"), "{bootstrap}");
        assert!(bootstrap.contains("http_filters:\n          - name: envoy.filters.http.router\n"));
        // The cohort entry's six lines go, nothing else.
        let removed: Vec<&str> = BOOTSTRAP_TEMPLATE
            .lines()
            .filter(|line| !bootstrap.lines().any(|kept| kept == *line))
            .map(str::trim)
            .collect();
        assert_eq!(removed.len(), 6, "{removed:?}");
        assert_eq!(removed[0], "- name: cohort");
        assert_eq!(
            bootstrap.lines().count() + 6,
            BOOTSTRAP_TEMPLATE.lines().count()
        );
    }
}
