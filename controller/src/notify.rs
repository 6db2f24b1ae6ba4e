//! Release notifications: a webhook POST for each milestone of a rollout (what is sent for which
//! Event is [`message`]'s, a pure function), from the rollout's `spec.notifications.webhook` and
//! from the controller-wide webhook (`--webhook-url-file`).
//!
//! A webhook never holds a rollout: a cycle only puts its notifications on a bounded queue
//! ([`Notifier::notify`], which never waits: a full queue drops them with a log line and the
//! `dropped` count), and a task of its own sends them, a few at a time, each request with a
//! timeout and retried with backoff a bounded number of times ([`Delivery`]), then given up. The
//! URL is read there too, once per cycle and webhook: from the Secret the spec names (the
//! in-cluster controller), or a file (`cohort run`, and the controller-wide webhook). The URL is
//! a credential (a chat webhook's token is in its path), so it is never logged: errors name where
//! it was read from.
//!
//! Notifications of one cycle go out in order; those of different cycles or rollouts may overlap,
//! so receivers order by `time`.

pub mod message;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::metrics::Metrics;
use crate::Error;
use cohort_rollout::crd::{SecretKeyRef, WebhookFormat, WebhookSpec};
pub use message::{notifications, Cycle, Notification, Topic};

/// Cycles' notifications waiting to be sent; more are dropped, never waited for.
pub const QUEUE_CAPACITY: usize = 256;
/// Cycles' notifications being sent at once (one slow webhook holds at most one of these).
pub const MAX_IN_FLIGHT: usize = 8;
/// Longest `cohort run` waits, once its rollout settled, for the last notifications to go out.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// How each notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Each request gives up after this.
    pub timeout: Duration,
    /// Requests per notification at most (the first and the retries).
    pub attempts: u32,
    /// Wait before the first retry; doubled before each next one.
    pub first_backoff: Duration,
}

impl Default for Delivery {
    /// Four tries over about 27 seconds at worst (5 s each, 1 + 2 + 4 s between): a webhook
    /// restarting or rate-limiting gets time to come back, and a dead one costs a bounded task.
    fn default() -> Self {
        Delivery {
            timeout: Duration::from_secs(5),
            attempts: 4,
            first_backoff: Duration::from_secs(1),
        }
    }
}

/// Where a webhook's URL is read.
#[derive(Clone)]
pub enum UrlSource {
    /// A key of a Secret in the rollout's namespace (`spec.notifications.webhook.urlSecretRef`).
    Secret {
        /// A client with the controller's credentials.
        client: kube::Client,
        /// The rollout's namespace.
        namespace: String,
        /// The Secret and key.
        reference: SecretKeyRef,
    },
    /// A file (`spec.notifications.webhook.urlFile` for `cohort run`, `--webhook-url-file`).
    File(PathBuf),
}

impl UrlSource {
    /// Where, in words (never the URL).
    fn describe(&self) -> String {
        match self {
            UrlSource::Secret {
                namespace,
                reference,
                ..
            } => format!(
                "Secret {namespace}/{} key {:?}",
                reference.name, reference.key
            ),
            UrlSource::File(path) => format!("the webhook URL file {}", path.display()),
        }
    }

    async fn read(&self) -> Result<String, String> {
        let bytes = match self {
            UrlSource::Secret {
                client,
                namespace,
                reference,
            } => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let secret = api
                    .get(&reference.name)
                    .await
                    .map_err(|error| match &error {
                        kube::Error::Api(status) if status.is_not_found() => "not found".to_owned(),
                        kube::Error::Api(status) if status.code == 403 => format!(
                            "not readable by the controller ({}); bind the ClusterRole \
                         cohort-controller-force-token in this namespace \
                         (manifests/controller/rbac.yaml)",
                            status.message
                        ),
                        other => other.to_string(),
                    })?;
                secret
                    .data
                    .and_then(|mut data| data.remove(&reference.key))
                    .ok_or("the Secret has no such key")?
                    .0
            }
            UrlSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|error| error.to_string())?,
        };
        parse_url(&bytes)
    }
}

/// A webhook URL from a Secret's or a file's bytes: trimmed (a file's final newline), and
/// `http` or `https`. The problem never quotes the URL.
pub fn parse_url(bytes: &[u8]) -> Result<String, String> {
    let text =
        std::str::from_utf8(bytes.trim_ascii()).map_err(|_| "it is not UTF-8 text".to_owned())?;
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Ok(text.to_owned())
        }
        Ok(url) => Err(format!(
            "it is not an http(s) URL (scheme {:?})",
            url.scheme()
        )),
        Err(error) => Err(format!("it is not a URL ({error})")),
    }
}

/// One webhook: where its URL is read and what its body looks like.
#[derive(Clone)]
pub struct Webhook {
    /// Where the URL is read (once per cycle that notifies).
    pub url: UrlSource,
    /// The body's format.
    pub format: WebhookFormat,
}

impl Webhook {
    /// The rollout's own webhook as the in-cluster controller reads it: its Secret. A spec that
    /// names only a file (for `cohort run`) has none here, which is logged.
    pub fn of_cluster_rollout(
        spec: Option<&WebhookSpec>,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Option<Webhook> {
        let spec = spec?;
        match &spec.url_secret_ref {
            Some(reference) => Some(Webhook {
                url: UrlSource::Secret {
                    client: client.clone(),
                    namespace: namespace.to_owned(),
                    reference: reference.clone(),
                },
                format: spec.format,
            }),
            None => {
                tracing::warn!(rollout = %name, namespace = %namespace, "spec.notifications.webhook.urlFile is read by `cohort run`; in a cluster, name a Secret in urlSecretRef: not notified");
                None
            }
        }
    }

    /// The rollout's own webhook as `cohort run` reads it: its file, relative to the rollout
    /// file's directory. A spec that names only a Secret has none here, which is logged.
    pub fn of_file_rollout(spec: Option<&WebhookSpec>, rollout_path: &Path) -> Option<Webhook> {
        let spec = spec?;
        match &spec.url_file {
            Some(file) => {
                let base = rollout_path.parent().unwrap_or(Path::new("."));
                Some(Webhook {
                    url: UrlSource::File(base.join(file)),
                    format: spec.format,
                })
            }
            None => {
                tracing::warn!("spec.notifications.webhook.urlSecretRef names a Kubernetes Secret, which the in-cluster controller reads; `cohort run` reads spec.notifications.webhook.urlFile: not notified");
                None
            }
        }
    }
}

/// One cycle's notifications for one webhook.
struct Job {
    webhook: Webhook,
    notifications: Vec<Notification>,
}

/// What the sending task needs.
struct Sender {
    http: reqwest::Client,
    delivery: Delivery,
    metrics: Arc<Metrics>,
    /// Jobs queued or being sent, for [`Notifier::drain`].
    outstanding: AtomicUsize,
    idle: Notify,
}

/// The queue and the task that sends from it, started with the first notification (so it runs
/// on the runtime of whoever notifies).
pub struct Notifier {
    queue: mpsc::Sender<Job>,
    /// Taken by the task when it starts.
    jobs: Mutex<Option<mpsc::Receiver<Job>>>,
    sender: Arc<Sender>,
    /// The controller-wide webhook: told about every rollout.
    everywhere: Option<Webhook>,
}

impl Notifier {
    /// A notifier sending as `delivery` says, counting in `metrics`, and telling `everywhere`
    /// (the controller-wide webhook) about every rollout.
    pub fn new(
        delivery: Delivery,
        metrics: Arc<Metrics>,
        everywhere: Option<Webhook>,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(delivery.timeout)
            .build()
            .map_err(|error| Error::HttpClient(error.to_string()))?;
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        Ok(Notifier {
            queue,
            jobs: Mutex::new(Some(jobs)),
            sender: Arc::new(Sender {
                http,
                delivery,
                metrics,
                outstanding: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
            everywhere,
        })
    }

    /// Queues `notifications` for the rollout's own webhook and the controller-wide one. Never
    /// waits: a full queue drops them (logged and counted).
    pub fn notify(&self, own: Option<Webhook>, notifications: Vec<Notification>) {
        if notifications.is_empty() {
            return;
        }
        for webhook in own.into_iter().chain(self.everywhere.clone()) {
            self.enqueue(Job {
                webhook,
                notifications: notifications.clone(),
            });
        }
    }

    fn enqueue(&self, job: Job) {
        if !self.start() {
            self.dropped(&job, "no async runtime to send from");
            return;
        }
        self.sender.outstanding.fetch_add(1, Ordering::SeqCst);
        if let Err(error) = self.queue.try_send(job) {
            let (job, why) = match error {
                mpsc::error::TrySendError::Full(job) => (job, "the notification queue is full"),
                mpsc::error::TrySendError::Closed(job) => (job, "the notification task stopped"),
            };
            self.sender.finished();
            self.dropped(&job, why);
        }
    }

    fn dropped(&self, job: &Job, why: &str) {
        for notification in &job.notifications {
            tracing::warn!(rollout = %notification.rollout, namespace = %notification.namespace, reason = %notification.reason, "notification dropped: {why}");
        }
        self.sender
            .metrics
            .count_notifications("dropped", job.notifications.len());
    }

    /// Starts the sending task if it is not running; false without a runtime to run it on.
    fn start(&self) -> bool {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(receiver) = jobs.take() else {
            return true;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(send_all(receiver, self.sender.clone()));
                true
            }
            Err(_) => {
                *jobs = Some(receiver);
                false
            }
        }
    }

    /// Waits until every queued notification was sent or given up, or `limit` passed: for a
    /// process about to exit (`cohort run` once its rollout settled).
    pub async fn drain(&self, limit: Duration) {
        let drained = async {
            loop {
                let idle = self.sender.idle.notified();
                if self.sender.outstanding.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(limit, drained).await.is_err() {
            tracing::warn!(
                "some notifications were not sent within {}s; exiting without them",
                limit.as_secs()
            );
        }
    }
}

impl Sender {
    fn finished(&self) {
        if self.outstanding.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// The sending task: each job on a task of its own, at most [`MAX_IN_FLIGHT`] at once.
async fn send_all(mut jobs: mpsc::Receiver<Job>, sender: Arc<Sender>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let sender = sender.clone();
        tokio::spawn(async move {
            deliver(&sender, job).await;
            sender.finished();
            drop(permit);
        });
    }
}

/// Reads the URL once, then sends each notification in order.
async fn deliver(sender: &Sender, job: Job) {
    let Job {
        webhook,
        notifications,
    } = job;
    let url = match webhook.url.read().await {
        Ok(url) => url,
        Err(why) => {
            tracing::warn!(
                "{} notifications not sent: {}: {why}",
                notifications.len(),
                webhook.url.describe()
            );
            sender
                .metrics
                .count_notifications("failed", notifications.len());
            return;
        }
    };
    for notification in notifications {
        let body = notification.body(webhook.format);
        match send(sender, &url, &body).await {
            Ok(()) => sender.metrics.count_notifications("sent", 1),
            Err(why) => {
                tracing::warn!(rollout = %notification.rollout, namespace = %notification.namespace, reason = %notification.reason, "notification given up: the webhook from {} {why}", webhook.url.describe());
                sender.metrics.count_notifications("failed", 1);
            }
        }
    }
}

/// POSTs `body`, retrying a timeout, a connection failure, a 5xx or a 429 with backoff, up to
/// `attempts` requests. Another 4xx is not retried: the same request would get it again.
async fn send(sender: &Sender, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let delivery = sender.delivery;
    let mut backoff = delivery.first_backoff;
    let mut attempt = 1;
    loop {
        let response = sender
            .http
            .post(url)
            .timeout(delivery.timeout)
            .json(body)
            .send()
            .await;
        let failure = match response {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                let why = format!("answered {status}");
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(why);
                }
                why
            }
            // Without the URL: it holds the webhook's credential.
            Err(error) => error.without_url().to_string(),
        };
        if attempt >= delivery.attempts {
            return Err(format!("{failure} ({attempt} attempts)"));
        }
        tracing::debug!("webhook attempt {attempt} failed: {failure}; retrying");
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
        attempt += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests;
