//! The controller's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process
//! answers) and `/readyz` (it knows whether it leads and, if it does, its watch is established).
//!
//! A few lines of HTTP/1.1 over a tokio `TcpListener` are enough for three GETs from kubelet and
//! Prometheus, and keep a web framework out of the binary. Every response closes the connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;

/// Longest request head read; probes and scrapers send a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that has not sent its request head by then is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/readyz` reports, updated by the leader elector and the controller loop.
#[derive(Debug)]
pub struct Health {
    leader_known: AtomicBool,
    leading: AtomicBool,
    watching: AtomicBool,
}

impl Health {
    /// Without leader election this replica leads from the start; with it, leadership is
    /// unknown until the first attempt on the Lease.
    pub fn new(leader_election: bool) -> Self {
        Health {
            leader_known: AtomicBool::new(!leader_election),
            leading: AtomicBool::new(!leader_election),
            watching: AtomicBool::new(false),
        }
    }

    /// Records the outcome of an attempt on the Lease.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
        self.leader_known.store(true, Ordering::Relaxed);
    }

    /// Records whether the CanaryRollout watch has delivered its initial list.
    pub fn set_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::Relaxed);
    }

    /// Ready: leadership is known, and a leader has its watch established. A standby replica is
    /// ready too: it is healthy and waiting for the Lease, and its readiness gates nothing.
    pub fn readiness(&self) -> Result<&'static str, &'static str> {
        if !self.leader_known.load(Ordering::Relaxed) {
            return Err("leadership unknown: no answer on the Lease yet");
        }
        if !self.leading.load(Ordering::Relaxed) {
            return Ok("standby: another replica holds the Lease");
        }
        if self.watching.load(Ordering::Relaxed) {
            Ok("leading: watching CanaryRollouts")
        } else {
            Err("leading, but the CanaryRollout watch is not established yet")
        }
    }
}

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        let mut body = body.into();
        body.push('\n');
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }
}

/// Answers one request line; the query string is ignored.
pub fn route(method: &str, target: &str, metrics: &Metrics, health: &Health) -> Reply {
    let path = target.split('?').next().unwrap_or_default();
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET");
    }
    match path {
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
        },
        "/healthz" => Reply::text(200, "ok"),
        "/readyz" => match health.readiness() {
            Ok(why) => Reply::text(200, why),
            Err(why) => Reply::text(503, why),
        },
        _ => Reply::text(404, "not found; try /metrics, /healthz or /readyz"),
    }
}

/// Serves until `shutdown` completes. A failing connection is logged and dropped; only a
/// failing listener ends the server.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &metrics, &health).await {
                tracing::debug!(%peer, %error, "HTTP connection failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, health: &Health) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request head"))??;
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let reply = route(method, target, metrics, health);
    let reason = match reply.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let header = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(reply.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let metrics = Metrics::default();
        let health = Health::new(false);
        health.set_watching(true);
        let table = [
            ("GET", "/healthz", 200, "ok\n"),
            ("GET", "/readyz", 200, "leading: watching CanaryRollouts\n"),
            (
                "GET",
                "/readyz?verbose",
                200,
                "leading: watching CanaryRollouts\n",
            ),
            (
                "GET",
                "/",
                404,
                "not found; try /metrics, /healthz or /readyz\n",
            ),
            ("POST", "/metrics", 405, "only GET\n"),
        ];
        for (method, target, status, body) in table {
            let reply = route(method, target, &metrics, &health);
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (status, body),
                "{method} {target}"
            );
        }
        let reply = route("GET", "/metrics", &metrics, &health);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(reply
            .body
            .contains("# TYPE cohort_controller_rollout_phase gauge"));
    }

    #[test]
    fn readiness_follows_leadership_and_the_watch() {
        let health = Health::new(true);
        assert!(health.readiness().is_err(), "unknown leadership");
        health.set_leading(false);
        assert_eq!(
            health.readiness(),
            Ok("standby: another replica holds the Lease")
        );
        health.set_leading(true);
        assert!(health.readiness().is_err(), "leading without a watch");
        health.set_watching(true);
        assert!(health.readiness().is_ok());
        // Without leader election the replica leads at once, but still waits for its watch.
        let solo = Health::new(false);
        assert!(solo.readiness().is_err());
        solo.set_watching(true);
        assert!(solo.readiness().is_ok());
    }

    #[tokio::test]
    async fn serves_over_tcp_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            Arc::new(Health::new(true)),
            async {
                let _ = stopped.await;
            },
        ));
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        assert!(response.contains("Content-Length: 47\r\n"), "{response}");
        assert!(response.ends_with("leadership unknown: no answer on the Lease yet\n"));
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
