//! The two versions of the service, for the lab and the end-to-end tests alike: HTTP/1.1 servers
//! on 127.0.0.1 that answer as their [`Behaviour`] says (a share of 503s, a delay, a share of
//! responses reporting business events), changeable while they run. Failures and events are
//! spread evenly over the requests rather than drawn at random, so a short analysis window sees
//! the configured rate, not noise around it.
//!
//! Every response carries `x-upstream: NAME` (so the load generator knows which version served
//! it), echoes the routing headers the filter controls so a test can see what arrived:
//! `x-seen-version` (the routing header, `-` when absent), `x-seen-count` (how many routing
//! headers arrived), `x-seen-force` (the force header, `-` when absent) and `x-seen-unit` (the
//! unit header, `-` when absent), and the body `NAME`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The response header naming the upstream.
pub const UPSTREAM_HEADER: &str = "x-upstream";
/// The business event the lab's upstreams report, and the lab's business gate watches.
pub const EVENT: &str = "checkout";
/// Longest request head read: above the bootstrap's `max_request_headers_kb` (96), so whatever
/// Envoy forwards is read whole.
const MAX_HEAD: usize = 512 * 1024;
/// Request headers echoed back: (request header, response header).
const ECHOED: [(&[u8], &str); 3] = [
    (b"x-cohort-version", "x-seen-version"),
    (b"x-cohort-force", "x-seen-force"),
    (b"x-cohort-unit", "x-seen-unit"),
];

/// How one version answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// 503 for this many requests in 1000 (1000 and above: every request).
    pub fail_per_mille: u32,
    /// Time before answering, in milliseconds.
    pub delay_ms: u64,
    /// Request `n` waits `n % (jitter_ms + 1)` ms more, so latencies spread over a few histogram
    /// buckets as real ones do; 0 for a delay exact enough to add up.
    pub jitter_ms: u64,
    /// The value of `x-cohort-events` (comma-separated event names) ...
    pub events: String,
    /// ... on this many responses in 1000.
    pub event_per_mille: u32,
}

/// A running upstream; stops (with its connections) on drop.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    behaviour: Mutex<Behaviour>,
    served: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn behaviour(&self) -> std::sync::MutexGuard<'_, Behaviour> {
        // A panic elsewhere while holding the lock leaves a whole value behind: use it.
        self.behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Upstream {
    /// Starts `name` on a free port of 127.0.0.1, on the current tokio runtime.
    pub async fn start(name: &str, behaviour: Behaviour) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            behaviour: Mutex::new(behaviour),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Dropping the set (when the task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            let shared = Arc::clone(&accepting);
                            connections.spawn(async move {
                                let _ = serve(stream, &shared).await;
                            });
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Upstream { addr, shared, task })
    }

    /// Its name (`stable`, `canary`).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How it answers now.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.behaviour().clone()
    }

    /// Changes how it answers from the next request on.
    pub fn update(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.shared.behaviour());
    }

    /// Requests answered (or being answered) so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Requests answered with 503 so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
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

/// What the answer depends on in one request head.
#[derive(Debug, Default)]
struct Request {
    head_method: bool,
    close: bool,
    content_length: u64,
    chunked: bool,
    /// Values of each [`ECHOED`] request header, in order.
    echoed: [Vec<Vec<u8>>; ECHOED.len()],
}

/// Serves keep-alive requests on one connection until the peer closes it.
async fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = BufReader::new(stream);
    loop {
        let Some(request) = read_head(&mut conn).await? else {
            return Ok(());
        };
        if request.chunked {
            skip_chunked(&mut conn).await?;
        } else if request.content_length > 0 {
            let mut body = (&mut conn).take(request.content_length);
            tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
        }
        let n = shared.served.fetch_add(1, Ordering::SeqCst);
        let behaviour = shared.behaviour().clone();
        let delay = behaviour.delay_ms + n % (behaviour.jitter_ms + 1);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let fail = spread(n, behaviour.fail_per_mille);
        if fail {
            shared.failed.fetch_add(1, Ordering::SeqCst);
        }
        let response = respond(&shared.name, &behaviour, n, fail, &request);
        conn.get_mut().write_all(&response).await?;
        if request.close {
            return Ok(());
        }
    }
}

/// The response to request `n`.
fn respond(name: &str, behaviour: &Behaviour, n: u64, fail: bool, request: &Request) -> Vec<u8> {
    let status = if fail {
        "503 Service Unavailable"
    } else {
        "200 OK"
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(format!("HTTP/1.1 {status}\r\n{UPSTREAM_HEADER}: {name}\r\n").as_bytes());
    for ((request_name, response_name), values) in ECHOED.iter().zip(&request.echoed) {
        out.extend_from_slice(response_name.as_bytes());
        out.extend_from_slice(b": ");
        if values.is_empty() {
            out.push(b'-');
        }
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&printable(value));
        }
        out.extend_from_slice(b"\r\n");
        if *request_name == b"x-cohort-version" {
            out.extend_from_slice(format!("x-seen-count: {}\r\n", values.len()).as_bytes());
        }
    }
    if !behaviour.events.is_empty() && spread(n, behaviour.event_per_mille) {
        out.extend_from_slice(format!("x-cohort-events: {}\r\n", behaviour.events).as_bytes());
    }
    out.extend_from_slice(
        format!(
            "content-type: text/plain\r\ncontent-length: {}\r\n",
            name.len()
        )
        .as_bytes(),
    );
    if request.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !request.head_method {
        out.extend_from_slice(name.as_bytes());
    }
    out
}

/// Reads one request head; `None` when the peer closed the connection (or sent a head too long
/// to answer).
async fn read_head(conn: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut request = Request::default();
    let mut line = Vec::with_capacity(256);
    let mut read_total = 0;
    let mut first = true;
    loop {
        line.clear();
        let read = (&mut *conn)
            .take((MAX_HEAD - read_total) as u64)
            .read_until(b'\n', &mut line)
            .await?;
        read_total += read;
        if read == 0 || read_total >= MAX_HEAD {
            return Ok(None);
        }
        let line = trim(&line);
        if first {
            first = false;
            request.head_method = line.starts_with(b"HEAD ");
            continue;
        }
        if line.is_empty() {
            return Ok(Some(request));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].to_ascii_lowercase();
        let value = trim(&line[colon + 1..]);
        match name.as_slice() {
            b"content-length" => {
                request.content_length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .unwrap_or(0);
            }
            b"transfer-encoding" => {
                request.chunked = value.to_ascii_lowercase().ends_with(b"chunked");
            }
            b"connection" => {
                request.close = value
                    .split(|&b| b == b',')
                    .any(|token| trim(token).eq_ignore_ascii_case(b"close"));
            }
            _ => {
                if let Some(i) = ECHOED.iter().position(|(echoed, _)| *echoed == name) {
                    request.echoed[i].push(value.to_vec());
                }
            }
        }
    }
}

/// Reads past a chunked body and its trailers.
async fn skip_chunked(conn: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if conn.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let size_text = trim(&line).split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|text| u64::from_str_radix(text.trim(), 16).ok())
            .ok_or_else(|| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if conn.read_until(b'\n', &mut line).await? == 0 || trim(&line).is_empty() {
                    return Ok(());
                }
            }
        }
        let mut chunk = (&mut *conn).take(size + 2);
        tokio::io::copy(&mut chunk, &mut tokio::io::sink()).await?;
    }
}

/// `bytes` without leading and trailing white space (CR and LF included).
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// `value` with bytes outside visible ASCII percent-encoded, safe to echo in a header.
fn printable(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_graphic() && b != b'%' || b == b' ' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
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

    async fn exchange(stream: &mut TcpStream, request: &[u8]) -> String {
        stream.write_all(request).await.unwrap();
        let mut buffer = vec![0; 4096];
        let n = stream.read(&mut buffer).await.unwrap();
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }

    #[tokio::test]
    async fn answers_keep_alive_requests_as_configured() {
        let behaviour = Behaviour {
            fail_per_mille: 500,
            events: EVENT.to_owned(),
            event_per_mille: 1000,
            ..Behaviour::default()
        };
        let upstream = Upstream::start("canary", behaviour).await.unwrap();
        let mut stream = TcpStream::connect(upstream.addr()).await.unwrap();
        let request = b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc";
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let text = exchange(&mut stream, request).await;
            assert!(text.contains("x-upstream: canary\r\n"), "{text}");
            assert!(text.contains("x-cohort-events: checkout\r\n"), "{text}");
            assert!(
                text.contains("x-seen-version: -\r\nx-seen-count: 0\r\n"),
                "{text}"
            );
            assert!(text.ends_with("\r\n\r\ncanary"), "{text}");
            statuses.push(text[9..12].to_owned());
        }
        assert_eq!(statuses, ["200", "503"]);
        assert_eq!((upstream.served(), upstream.failed()), (2, 1));
    }

    #[tokio::test]
    async fn echoes_routing_headers_skips_chunked_bodies_and_changes_at_run_time() {
        let upstream = Upstream::start("stable", Behaviour::default())
            .await
            .unwrap();
        let mut stream = TcpStream::connect(upstream.addr()).await.unwrap();
        let request = b"POST / HTTP/1.1\r\nx-cohort-version: canary\r\nX-Cohort-Version: b\xff\r\n\
            x-cohort-force: t\r\nx-cohort-unit: 7\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\
            t: 1\r\n\r\n";
        let text = exchange(&mut stream, request).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("x-seen-version: canary,b%FF\r\n"), "{text}");
        assert!(text.contains("x-seen-count: 2\r\n"), "{text}");
        assert!(text.contains("x-seen-force: t\r\n"), "{text}");
        assert!(text.contains("x-seen-unit: 7\r\n"), "{text}");
        assert!(!text.contains("x-cohort-events"), "{text}");
        upstream.update(|b| {
            b.fail_per_mille = 1000;
            b.events = "a, b".to_owned();
            b.event_per_mille = 1000;
        });
        let text = exchange(&mut stream, b"HEAD / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("x-cohort-events: a, b\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
    }
}
