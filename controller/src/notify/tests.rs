//! The sending side against a real local HTTP server: the bodies it receives, retries and giving
//! up, and a full queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc as channel, oneshot};

use super::*;
use crate::fixtures::TempDir;
use cohort_rollout::plan::EventKind;

/// How the test webhook answers one request.
pub(crate) enum Reply {
    /// This status, at once.
    Status(u16),
    /// 200 once the sender fires (or is dropped).
    After(oneshot::Receiver<()>),
    /// Never: the connection stays open and silent.
    Never,
}

/// One request the test webhook received.
#[derive(Debug)]
pub(crate) struct Received {
    pub method: String,
    pub content_type: Option<String>,
    pub body: Value,
}

/// A webhook on 127.0.0.1: answers its requests as `replies` say, in order (200 once they run
/// out), and hands each request over as it arrives, before answering it.
pub(crate) struct Hook {
    pub url: String,
    pub received: channel::UnboundedReceiver<Received>,
}

impl Hook {
    pub(crate) async fn start(replies: Vec<Reply>) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/T000/B000/secret",
            listener.local_addr().unwrap()
        );
        let (seen, received) = channel::unbounded_channel();
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, replies) = (seen.clone(), replies.clone());
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    let reply = replies.lock().unwrap().pop_front();
                    let _ = seen.send(request);
                    let status = match reply {
                        None => 200,
                        Some(Reply::Status(status)) => status,
                        Some(Reply::After(release)) => {
                            let _ = release.await;
                            200
                        }
                        Some(Reply::Never) => {
                            let _open = stream;
                            std::future::pending::<()>().await;
                            return;
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Hook { url, received }
    }

    /// The next request, failing the test if none comes.
    pub(crate) async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.received.recv())
            .await
            .expect("the webhook got no request")
            .expect("the webhook stopped")
    }

    /// Requests received and not taken yet.
    pub(crate) fn rest(&mut self) -> Vec<Received> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }
}

/// One HTTP/1.1 request: its head, then `content-length` bytes of JSON.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while bytes.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
    Some(Received {
        method: head.split(' ').next().unwrap_or_default().to_owned(),
        content_type: header("content-type"),
        body: serde_json::from_slice(&bytes[head_end..head_end + length]).unwrap(),
    })
}

/// Quick enough for tests; the timeout only matters to [`Reply::Never`].
pub(crate) fn quick() -> Delivery {
    Delivery {
        timeout: Duration::from_millis(300),
        attempts: 3,
        first_backoff: Duration::from_millis(10),
    }
}

/// A webhook whose URL is in a file of `dir`.
pub(crate) fn file_webhook(dir: &TempDir, name: &str, url: &str, format: WebhookFormat) -> Webhook {
    let path = dir.0.join(name);
    std::fs::write(&path, format!("{url}\n")).unwrap();
    Webhook {
        url: UrlSource::File(path),
        format,
    }
}

fn notification(reason: &str, kind: EventKind, message: &str) -> Notification {
    let status = cohort_rollout::crd::CanaryRolloutStatus {
        phase: cohort_rollout::crd::Phase::Progressing,
        step_index: Some(1),
        weight_bp: 500,
        ..Default::default()
    };
    let cycle = Cycle {
        namespace: "shop",
        name: "checkout",
        steps: 4,
        status: &status,
        now: Timestamp::from_second(1_800_000_000).unwrap(),
    };
    let event = cohort_rollout::plan::PlannedEvent {
        kind,
        reason: reason.into(),
        message: message.into(),
    };
    let mut made = notifications(cycle, &[event]);
    assert_eq!(made.len(), 1, "{reason} notifies");
    made.remove(0)
}

fn counted(metrics: &Metrics, outcome: &str) -> u64 {
    let prefix = format!("cohort_controller_notifications_total{{outcome=\"{outcome}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.parse().unwrap())
}

#[tokio::test]
async fn a_real_server_gets_the_json_and_the_slack_body() {
    let dir = TempDir::new("notify-bodies");
    let (mut own, mut everywhere) = (Hook::start(vec![]).await, Hook::start(vec![]).await);
    let metrics = Arc::new(Metrics::default());
    let slack = file_webhook(&dir, "all", &everywhere.url, WebhookFormat::Slack);
    let notifier = Notifier::new(quick(), metrics.clone(), Some(slack)).unwrap();
    let json = file_webhook(&dir, "own", &own.url, WebhookFormat::Json);
    let advanced = notification("StepAdvanced", EventKind::Normal, "step 2/4: canary at 5%");
    let holding = notification("NoData", EventKind::Warning, "too few samples; holding");
    notifier.notify(Some(json), vec![advanced.clone(), holding.clone()]);
    notifier.drain(Duration::from_secs(10)).await;

    // One cycle's notifications arrive in order.
    let first = own.next().await;
    assert_eq!(first.method, "POST");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.body, advanced.body(WebhookFormat::Json));
    assert_eq!(first.body["event"], "stepAdvanced");
    assert_eq!(first.body["rollout"], "checkout");
    assert_eq!(first.body["weightBp"], 500);
    let second = own.next().await;
    assert_eq!(second.body["event"], "degraded");
    assert_eq!(second.body["kind"], "Warning");
    assert!(own.rest().is_empty());

    let first = everywhere.next().await;
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        first.body,
        json!({"text": ":arrow_forward: *shop/checkout* StepAdvanced: step 2/4: canary at 5% \
                (Progressing, step 2/4, canary at 5%)"})
    );
    assert_eq!(
        everywhere.next().await.body,
        holding.body(WebhookFormat::Slack)
    );
    assert!(everywhere.rest().is_empty());
    assert_eq!(counted(&metrics, "sent"), 4);
    assert_eq!(counted(&metrics, "failed"), 0);
}

/// No answer (a timeout) and two 500s: three attempts, then given up; the task goes on with
/// the next notification.
#[tokio::test]
async fn a_webhook_that_times_out_or_fails_is_retried_then_given_up() {
    let dir = TempDir::new("notify-retries");
    let mut hook = Hook::start(vec![Reply::Never, Reply::Status(500), Reply::Status(503)]).await;
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::new(quick(), metrics.clone(), None).unwrap();
    let webhook = file_webhook(&dir, "url", &hook.url, WebhookFormat::Json);
    let rolled_back = notification("RolledBack", EventKind::Warning, "a gate failed");
    notifier.notify(Some(webhook.clone()), vec![rolled_back.clone()]);
    notifier.drain(Duration::from_secs(10)).await;
    let attempts = hook.rest();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(attempt.body, rolled_back.body(WebhookFormat::Json));
    }
    assert_eq!(counted(&metrics, "failed"), 1);
    assert_eq!(counted(&metrics, "sent"), 0);

    // The webhook is back: the next notification goes through at once.
    notifier.notify(Some(webhook), vec![rolled_back.clone()]);
    notifier.drain(Duration::from_secs(10)).await;
    assert_eq!(hook.rest().len(), 1);
    assert_eq!(counted(&metrics, "sent"), 1);
}

/// 429 is retried (rate limited); another 4xx is not, as the same request would get it again.
#[tokio::test]
async fn a_client_error_is_given_up_at_once_and_429_is_retried() {
    let dir = TempDir::new("notify-4xx");
    let mut hook = Hook::start(vec![Reply::Status(404), Reply::Status(429)]).await;
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::new(quick(), metrics.clone(), None).unwrap();
    let webhook = file_webhook(&dir, "url", &hook.url, WebhookFormat::Json);
    let aborted = notification("Aborted", EventKind::Warning, "spec.abort is set");
    notifier.notify(Some(webhook.clone()), vec![aborted.clone()]);
    notifier.drain(Duration::from_secs(10)).await;
    assert_eq!(hook.rest().len(), 1);
    assert_eq!(counted(&metrics, "failed"), 1);
    notifier.notify(Some(webhook), vec![aborted]);
    notifier.drain(Duration::from_secs(10)).await;
    assert_eq!(hook.rest().len(), 2, "429, then 200");
    assert_eq!(counted(&metrics, "sent"), 1);
}

#[tokio::test]
async fn an_unreadable_url_is_counted_as_failed_without_a_request() {
    let dir = TempDir::new("notify-no-url");
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::new(quick(), metrics.clone(), None).unwrap();
    let missing = Webhook {
        url: UrlSource::File(dir.0.join("missing")),
        format: WebhookFormat::Json,
    };
    let not_a_url = file_webhook(&dir, "bad", "hooks.example.com/secret", WebhookFormat::Json);
    let promoted = notification("Promoted", EventKind::Normal, "the canary serves everyone");
    notifier.notify(Some(missing), vec![promoted.clone()]);
    notifier.notify(Some(not_a_url), vec![promoted]);
    notifier.drain(Duration::from_secs(10)).await;
    assert_eq!(counted(&metrics, "failed"), 2);
}

/// `notify` never waits: with the sending task not having run yet, the queue takes
/// [`QUEUE_CAPACITY`] cycles and the rest are dropped and counted.
#[tokio::test]
async fn a_full_queue_drops_without_waiting() {
    let dir = TempDir::new("notify-full");
    let hook = Hook::start(vec![]).await;
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::new(quick(), metrics.clone(), None).unwrap();
    let webhook = file_webhook(&dir, "url", &hook.url, WebhookFormat::Json);
    let advanced = notification("StepAdvanced", EventKind::Normal, "step 2/4");
    // No await in between: the single-threaded test runtime cannot run the task meanwhile.
    for _ in 0..QUEUE_CAPACITY + 5 {
        notifier.notify(Some(webhook.clone()), vec![advanced.clone()]);
    }
    assert_eq!(counted(&metrics, "dropped"), 5);
    notifier.drain(Duration::from_secs(30)).await;
    assert_eq!(
        counted(&metrics, "sent"),
        u64::try_from(QUEUE_CAPACITY).unwrap()
    );
}

#[test]
fn urls_are_trimmed_checked_and_never_quoted() {
    assert_eq!(
        parse_url(b"  https://hooks.slack.com/services/T0/B0/XyZ\n").as_deref(),
        Ok("https://hooks.slack.com/services/T0/B0/XyZ")
    );
    assert_eq!(
        parse_url(b"http://10.0.0.1:8080/hook").as_deref(),
        Ok("http://10.0.0.1:8080/hook")
    );
    for bad in [
        &b""[..],
        b"hooks.slack.com/services/T0/B0/XyZ",
        b"ftp://hooks.example.com/XyZ",
        b"file:///etc/XyZ",
        b"https://hooks.example.com/\xff",
    ] {
        let problem = parse_url(bad).unwrap_err();
        assert!(!problem.contains("XyZ"), "the URL is shown: {problem}");
    }
}

#[test]
fn a_notifier_without_a_runtime_drops_and_counts() {
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::new(quick(), metrics.clone(), None).unwrap();
    let webhook = Webhook {
        url: UrlSource::File("/nonexistent".into()),
        format: WebhookFormat::Json,
    };
    let advanced = notification("StepAdvanced", EventKind::Normal, "step 2/4");
    notifier.notify(Some(webhook), vec![advanced]);
    assert_eq!(counted(&metrics, "dropped"), 1);
}
