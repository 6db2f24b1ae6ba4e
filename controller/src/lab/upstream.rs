//! The lab's two versions of the service: HTTP/1.1 servers on 127.0.0.1 that answer like a
//! scenario says (a share of 503s, a delay, a share of responses reporting the `checkout` business
//! event). Failures and events are spread evenly over the requests rather than drawn at random,
//! so a short analysis window sees the configured rate, not noise around it.
//!
//! Each response carries `x-upstream: NAME`, so the load generator knows which version served
//! it. (The end-to-end tests' upstream, `tests/src/upstream.rs`, does more, synchronously; this
//! one is async and only what the lab needs.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The response header naming the upstream.
pub const UPSTREAM_HEADER: &str = "x-upstream";
/// The business event the upstreams report, and the lab's business gate watches.
pub const EVENT: &str = "checkout";
/// Longest request head read.
const MAX_HEAD: usize = 64 * 1024;

/// How one version answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    /// 503 for this many requests in 1000.
    pub fail_per_mille: u32,
    /// Time before answering, in milliseconds; request `n` waits `n % 3` ms more, so latencies
    /// spread over a few histogram buckets as real ones do.
    pub delay_ms: u64,
    /// `x-cohort-events: checkout` on this many responses in 1000.
    pub event_per_mille: u32,
}

/// A running upstream; stops (with its connections) on drop.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts `name` on a free port of 127.0.0.1.
    pub async fn start(name: &'static str, behaviour: Behaviour) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&served);
        let task = tokio::spawn(async move {
            // Dropping the set (when the task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            let counter = Arc::clone(&counter);
                            connections.spawn(async move {
                                let _ = serve(stream, name, behaviour, &counter).await;
                            });
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Upstream { addr, served, task })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether request `n` (from 0) is one of `per_mille` in 1000, spread evenly: it is when the
/// running count `n * per_mille / 1000` steps up.
pub fn spread(n: u64, per_mille: u32) -> bool {
    let per_mille = u64::from(per_mille.min(1000));
    (n + 1) * per_mille / 1000 != n * per_mille / 1000
}

/// Serves keep-alive requests on one connection until the peer closes it.
async fn serve(
    stream: TcpStream,
    name: &str,
    behaviour: Behaviour,
    served: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = BufReader::new(stream);
    let mut head = Vec::with_capacity(1024);
    loop {
        head.clear();
        let mut content_length = 0_usize;
        let mut close = false;
        // The head, line by line, up to the empty line.
        loop {
            let before = head.len();
            let read = (&mut conn)
                .take((MAX_HEAD - head.len().min(MAX_HEAD)) as u64)
                .read_until(b'\n', &mut head)
                .await?;
            if read == 0 {
                return Ok(());
            }
            let line = &head[before..];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
            if head.len() >= MAX_HEAD {
                return Ok(());
            }
            let text = String::from_utf8_lossy(line).to_ascii_lowercase();
            if let Some(value) = text.strip_prefix("content-length:") {
                content_length = value.trim().parse().unwrap_or(0);
            } else if text.starts_with("connection:") && text.contains("close") {
                close = true;
            }
        }
        if content_length > 0 {
            let mut body = (&mut conn).take(content_length as u64);
            tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        }
        let n = served.fetch_add(1, Ordering::Relaxed);
        let delay = behaviour.delay_ms + n % 3;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let status = if spread(n, behaviour.fail_per_mille) {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let events = if spread(n, behaviour.event_per_mille) {
            format!("x-cohort-events: {EVENT}\r\n")
        } else {
            String::new()
        };
        let body = format!("{name}\n");
        let response = format!(
            "HTTP/1.1 {status}\r\n{UPSTREAM_HEADER}: {name}\r\n{events}content-type: text/plain\r\n\
             content-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        conn.get_mut().write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_hits_the_rate_in_every_run_of_requests() {
        for per_mille in [0, 1, 150, 400, 999, 1000] {
            let hits = (0..1000).filter(|&n| spread(n, per_mille)).count();
            assert_eq!(hits, per_mille as usize);
            // Any 20 consecutive requests are within one of the rate.
            for start in 0..200 {
                let window = (start..start + 20)
                    .filter(|&n| spread(n, per_mille))
                    .count();
                let expected = 20.0 * f64::from(per_mille) / 1000.0;
                assert!(
                    (window as f64 - expected).abs() <= 1.0,
                    "{per_mille}: {window}"
                );
            }
        }
    }

    #[tokio::test]
    async fn answers_keep_alive_requests_as_configured() {
        let behaviour = Behaviour {
            fail_per_mille: 500,
            delay_ms: 0,
            event_per_mille: 1000,
        };
        let upstream = Upstream::start("canary", behaviour).await.unwrap();
        let mut stream = TcpStream::connect(upstream.addr()).await.unwrap();
        let request = "GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc";
        let mut statuses = Vec::new();
        for _ in 0..2 {
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut buffer = vec![0; 4096];
            let n = stream.read(&mut buffer).await.unwrap();
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            assert!(text.contains("x-upstream: canary\r\n"), "{text}");
            assert!(text.contains("x-cohort-events: checkout\r\n"), "{text}");
            assert!(text.ends_with("\r\n\r\ncanary\n"), "{text}");
            statuses.push(text[9..12].to_owned());
        }
        assert_eq!(statuses, ["200", "503"]);
        assert_eq!(upstream.served(), 2);
    }
}
