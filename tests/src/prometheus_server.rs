//! A real Prometheus server on 127.0.0.1 scraping one Envoy's admin `/stats/prometheus` every
//! second, with its data in a temp directory; killed on drop. It can be stopped and started
//! again on the same port and data directory (the "Prometheus went away" scenario).
//!
//! The binary: `$COHORT_PROMETHEUS`, else `prometheus` on `PATH` (Debian's package, which
//! `scripts/setup` installs). The tests fail, never skip, without it.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::envoy::free_port;
use crate::{Context, Error, Result, TempDir};

/// How to get Prometheus, printed whenever it cannot be found.
const INSTALL_PROMETHEUS: &str = "install it with `scripts/setup` or \
     `apt-get install -y --no-install-recommends prometheus`, or point COHORT_PROMETHEUS at a \
     prometheus binary";

/// How long a start (readiness) may take.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The Prometheus binary: `$COHORT_PROMETHEUS`, else `prometheus` on `PATH`.
pub fn prometheus_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("COHORT_PROMETHEUS") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error(format!(
                "COHORT_PROMETHEUS={} is not a file; {INSTALL_PROMETHEUS}",
                path.display()
            )))
        };
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("prometheus"))
            .find(|candidate| candidate.is_file())
    });
    found.ok_or_else(|| {
        Error(format!(
            "Prometheus not found; the rollout tests need a real Prometheus: {INSTALL_PROMETHEUS}"
        ))
    })
}

/// The scrape config: Envoy's admin every second (the timeout may not exceed the interval).
pub fn scrape_config(envoy_admin: SocketAddr) -> String {
    format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: envoy\n  \
           metrics_path: /stats/prometheus\n  \
           static_configs: [{{targets: ['{envoy_admin}']}}]\n"
    )
}

/// A running (or stopped) Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    binary: PathBuf,
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
    starts: u32,
}

impl Prometheus {
    /// Starts Prometheus scraping `envoy_admin` and waits until it is ready (the first scrape
    /// lands a few seconds later: see [`Prometheus::wait_for_scrape`]).
    pub fn start(envoy_admin: SocketAddr) -> Result<Prometheus> {
        Self::start_with_config(&scrape_config(envoy_admin))
    }

    /// Starts Prometheus with `config` as its configuration file and waits until it is ready.
    pub fn start_with_config(config: &str) -> Result<Prometheus> {
        let binary = prometheus_binary()?;
        let dir = TempDir::new("prometheus")?;
        fs::write(dir.path().join("prometheus.yml"), config)?;
        fs::create_dir_all(dir.path().join("data"))?;
        let mut prometheus = Prometheus {
            binary,
            child: None,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            starts: 0,
        };
        prometheus.launch()?;
        Ok(prometheus)
    }

    /// Its base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills it (as a crash would; its data directory stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data directory, and waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<()> {
        self.starts += 1;
        let log = fs::File::create(self.log_path())?;
        let child = Command::new(&self.binary)
            .arg(format!(
                "--config.file={}",
                self.dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.path().join("data").display()
            ))
            // Always the address: the default listens on every interface.
            .arg(format!("--web.listen-address={}", self.addr))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_until_ready()
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("prometheus-{}.log", self.starts))
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(self.failure(&format!("Prometheus exited ({status}) at start")));
                }
            }
            let mut client = Client::new(self.addr, "127.0.0.1");
            client.set_timeout(Duration::from_secs(2));
            if client
                .get("/-/ready", &[(b"connection", b"close")])
                .is_ok_and(|r| r.status == 200)
            {
                return Ok(());
            }
            if start.elapsed() > START_DEADLINE {
                return Err(self.failure("Prometheus did not become ready"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `up` of the Envoy job is 1 (the first scrape landed).
    pub fn wait_for_scrape(&self, deadline: Duration) -> Result<()> {
        self.wait_for_job("envoy", deadline)
    }

    /// Waits until `up` of every target of `job` is 1 (the first scrape of each landed).
    pub fn wait_for_job(&self, job: &str, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(result) = self.query(&format!("min(up{{job=\"{job}\"}})")) {
                let up = result
                    .get(0)
                    .and_then(|series| series["value"][1].as_str())
                    .and_then(|value| value.parse::<f64>().ok());
                if up == Some(1.0) {
                    return Ok(());
                }
            }
            if start.elapsed() > deadline {
                return Err(self.failure(&format!("Prometheus did not scrape job {job} in time")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query; returns `data.result`.
    pub fn query(&self, promql: &str) -> Result<serde_json::Value> {
        let mut client = Client::new(self.addr, "127.0.0.1");
        client.set_timeout(Duration::from_secs(5));
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let response = client.get(&path, &[(b"connection", b"close")])?;
        let body: serde_json::Value = serde_json::from_slice(&response.body).context(|| {
            format!(
                "Prometheus answered {}: {}",
                response.status,
                response.text()
            )
        })?;
        if body["status"] != "success" {
            return Err(Error(format!("query {promql:?} failed: {body}")));
        }
        Ok(body["data"]["result"].clone())
    }

    /// An error carrying `message` and the tail of Prometheus' log.
    pub fn failure(&self, message: &str) -> Error {
        Error(format!("{message}\n{}", self.log_tail(30)))
    }

    /// The last `lines` lines of the current run's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last {} lines) ---\n{}\n",
        path.display(),
        lines.min(all.len()),
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("Prometheus log of the failed test:\n{}", self.log_tail(30));
        }
        self.stop();
    }
}

/// `text` percent-encoded for a URL query value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql_for_a_query_string() {
        assert_eq!(
            percent_encode(r#"up{job="envoy"} > 0"#),
            "up%7Bjob%3D%22envoy%22%7D%20%3E%200"
        );
    }

    #[test]
    fn scrape_config_reads_envoy_admin_every_second() {
        let config = scrape_config(SocketAddr::from(([127, 0, 0, 1], 9901)));
        let parsed: serde_json::Value = serde_saphyr::from_str(&config).unwrap();
        assert_eq!(parsed["global"]["scrape_interval"], "1s");
        assert_eq!(parsed["global"]["scrape_timeout"], "1s");
        let job = &parsed["scrape_configs"][0];
        assert_eq!(job["metrics_path"], "/stats/prometheus");
        assert_eq!(job["static_configs"][0]["targets"][0], "127.0.0.1:9901");
    }
}
