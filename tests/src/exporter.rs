//! Stand-ins for scrape targets: each serves a Prometheus text page made at scrape time from the
//! seconds since it started, so its counters grow between scrapes as a proxy's do. One exporter
//! is one target (one Pod's sidecar, say): Prometheus tells its series apart from another
//! target's with the same labels by `instance`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Result;

/// A page as a function of the seconds since the exporter started.
pub type Page = Box<dyn Fn(f64) -> String + Send + 'static>;

/// A running exporter on 127.0.0.1; stops on drop.
#[derive(Debug)]
pub struct Exporter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Exporter {
    /// Serves `page(seconds since start)` at every path.
    pub fn start(page: Page) -> Result<Exporter> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let started = Instant::now();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let body = page(started.elapsed().as_secs_f64());
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(Exporter { addr, stop })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A Prometheus config scraping `targets` of one `job` at `metrics_path` every second.
pub fn scrape_config(job: &str, metrics_path: &str, targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: {job}\n  \
           metrics_path: {metrics_path}\n  \
           static_configs: [{{targets: [{}]}}]\n",
        targets.join(", ")
    )
}
