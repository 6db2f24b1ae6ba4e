//! The controller's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process
//! answers) and `/readyz` (it knows whether it leads and, if it does, its watch is established).
//!
//! An axum router on hyper's HTTP/1.1 server: kubelet and Prometheus only ever send GETs. The
//! accept loop is our own rather than `axum::serve`, which cannot bound how long a client takes
//! to send its request head.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::Listener;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::metrics::{self, Metrics};

/// How long requests under way at shutdown may take to finish; a client that holds its
/// connection longer is left to the process's exit rather than holding that exit up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a client may take to send a request head (on a new connection, or the next one on a
/// kept-alive connection) before it is cut off, so that slow or stalled clients cannot hold
/// connections open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What the handlers share.
#[derive(Debug, Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The three endpoints; anything else is a 404, a method other than GET (or HEAD) a 405. The
/// query string is ignored.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(scrape).fallback(only_get))
        .route("/healthz", get(|| async { "ok\n" }).fallback(only_get))
        .route("/readyz", get(ready).fallback(only_get))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /healthz or /readyz\n",
            )
        })
        .with_state(Shared { metrics, health })
}

async fn scrape(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        shared.metrics.render(),
    )
}

async fn ready(State(shared): State<Shared>) -> (StatusCode, String) {
    match shared.health.readiness() {
        Ok(why) => (StatusCode::OK, format!("{why}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn only_get() -> (StatusCode, &'static str) {
    (StatusCode::METHOD_NOT_ALLOWED, "only GET\n")
}

/// Serves until `shutdown` completes, then lets requests under way finish for at most
/// [`SHUTDOWN_GRACE`]; idle connections close at once. A failing connection is dropped and a
/// failed accept retried: the server itself goes on.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(
        listener,
        router(metrics, health),
        HEADER_READ_TIMEOUT,
        shutdown,
    )
    .await;
    Ok(())
}

/// The accept loop behind [`serve`], with the header timeout as a parameter so that tests need
/// not wait out the real one.
async fn serve_router(
    mut listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let service = TowerToHyperService::new(router);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // axum's `Listener` retries failed accepts, pausing on the ones that would recur at
        // once (out of file descriptors).
        let stream = tokio::select! {
            (stream, _) = Listener::accept(&mut listener) => stream,
            () = &mut shutdown => break,
        };
        let connection = http.serve_connection(TokioIo::new(stream), service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection failed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after the shutdown grace: left to the exit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tower::ServiceExt;

    /// Status, `Content-Type` and body of one request through the router.
    async fn call(router: &Router, method: &str, target: &str) -> (u16, String, String) {
        let request = Request::builder()
            .method(method)
            .uri(target)
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn routes() {
        let health = Arc::new(Health::new(false));
        health.set_watching(true);
        let router = router(Arc::new(Metrics::default()), health);
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
            // HEAD answers as GET would, without the body.
            ("HEAD", "/healthz", 200, ""),
        ];
        for (method, target, status, body) in table {
            let (got_status, content_type, got_body) = call(&router, method, target).await;
            assert_eq!(
                (got_status, got_body.as_str()),
                (status, body),
                "{method} {target}"
            );
            assert_eq!(
                content_type, "text/plain; charset=utf-8",
                "{method} {target}"
            );
        }
        let (status, content_type, body) = call(&router, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(body.contains("# TYPE cohort_controller_rollout_phase gauge"));
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
    async fn cuts_off_a_client_that_stalls_in_its_request_head() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = router(Arc::new(Metrics::default()), Arc::new(Health::new(false)));
        tokio::spawn(serve_router(
            listener,
            router,
            Duration::from_millis(200),
            std::future::pending(),
        ));
        let started = tokio::time::Instant::now();
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // The bound is far above the timeout so that a loaded machine does not fail the test;
        // without a header timeout the read never ends.
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the stalled connection is closed");
        // Closed (or reset) without an answer, and by the timeout rather than at once.
        assert!(read.is_err() || answer.is_empty(), "{answer:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
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
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );
        // Header names are case-insensitive; hyper writes them in lower case.
        assert!(
            response
                .to_ascii_lowercase()
                .contains("\r\ncontent-length: 47\r\n"),
            "{response}"
        );
        assert!(response.ends_with("leadership unknown: no answer on the Lease yet\n"));
        // A scraper's idle keep-alive connection does not hold the shutdown up.
        let _idle = TcpStream::connect(address).await.unwrap();
        stop.send(()).unwrap();
        tokio::time::timeout(SHUTDOWN_GRACE / 2, server)
            .await
            .expect("the server stops promptly")
            .unwrap()
            .unwrap();
    }
}
