//! The lab's load generator: a steady request rate from many distinct users through Envoy.
//!
//! Four users in five send their id in `x-user-id`; every fifth is anonymous: it sends no id,
//! keeps the `cohort-id` cookie the filter sets on its first answer, and sends it back from then
//! on, as a browser would. Users take turns in a fixed scrambled order, so each is seen every
//! `users / rate` seconds. Requests are paced by the clock (open loop), so a slow version does
//! not slow the load down; at most `MAX_IN_FLIGHT` are outstanding.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::record::{Observation, Recorder, Version};
use crate::upstream::{EVENT, UPSTREAM_HEADER};

/// The identity header identified users send (the lab rollout's identity source).
pub const USER_HEADER: &str = "x-user-id";
/// The cookie the filter gives anonymous users (the CRD's default `anonymous.cookieName`).
pub const ANONYMOUS_COOKIE: &str = "cohort-id";
/// Every this-many-th user is anonymous.
const ANONYMOUS_EVERY: u32 = 5;
/// Requests outstanding at most; more are skipped (and counted), never queued.
const MAX_IN_FLIGHT: usize = 256;
/// How often the pacer wakes up to send what is due.
const TICK: Duration = Duration::from_millis(10);
/// A multiplier coprime with any user count that is not a multiple of it: a scrambled but
/// complete round of users.
const SCRAMBLE: u64 = 7_919;

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadPlan {
    /// Requests per second.
    pub rate: u32,
    /// Distinct users.
    pub users: u32,
}

/// The user a request number goes to.
pub fn user_of(request: u64, users: u32) -> u32 {
    let users = u64::from(users.max(1));
    let multiplier = if users % SCRAMBLE == 0 { 1 } else { SCRAMBLE };
    ((request.wrapping_mul(multiplier)) % users) as u32
}

/// Whether `user` is anonymous (sends no id, keeps the filter's cookie).
pub fn is_anonymous(user: u32) -> bool {
    user % ANONYMOUS_EVERY == ANONYMOUS_EVERY - 1
}

/// A running load generator.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    skipped: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts sending to Envoy's listener at `target`, recording every response into
    /// `recorder` on the clock that started at `epoch`.
    pub fn start(
        target: SocketAddr,
        plan: LoadPlan,
        recorder: Arc<Recorder>,
        epoch: Instant,
    ) -> Result<Load, reqwest::Error> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let skipped = Arc::new(AtomicU64::new(0));
        let cookies: Arc<Vec<Mutex<Option<String>>>> =
            Arc::new((0..plan.users).map(|_| Mutex::new(None)).collect());
        let url = format!("http://{target}/checkout");
        let task = {
            let stop = Arc::clone(&stop);
            let skipped = Arc::clone(&skipped);
            tokio::spawn(async move {
                let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
                let mut ticker = tokio::time::interval(TICK);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let started = Instant::now();
                let mut sent: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    let due = (started.elapsed().as_secs_f64() * f64::from(plan.rate)) as u64;
                    while sent < due {
                        let request = sent;
                        sent += 1;
                        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let user = user_of(request, plan.users);
                        let call = Call {
                            http: http.clone(),
                            url: url.clone(),
                            user,
                            cookies: Arc::clone(&cookies),
                            recorder: Arc::clone(&recorder),
                            epoch,
                        };
                        tokio::spawn(async move {
                            call.send().await;
                            drop(permit);
                        });
                    }
                }
                // Let the outstanding requests finish (each times out after 5 s anyway).
                let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
                let _ =
                    tokio::time::timeout(Duration::from_secs(6), in_flight.acquire_many(all)).await;
            })
        };
        Ok(Load {
            stop,
            skipped,
            task: Some(task),
        })
    }

    /// Requests not sent because `MAX_IN_FLIGHT` were outstanding.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Stops sending and waits for the outstanding requests.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request and what it needs to record its answer.
struct Call {
    http: reqwest::Client,
    url: String,
    user: u32,
    cookies: Arc<Vec<Mutex<Option<String>>>>,
    recorder: Arc<Recorder>,
    epoch: Instant,
}

impl Call {
    async fn send(self) {
        let anonymous = is_anonymous(self.user);
        let cookie_slot = self.cookies.get(self.user as usize);
        let mut request = self.http.get(&self.url);
        if anonymous {
            let cookie = cookie_slot
                .and_then(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).clone());
            if let Some(cookie) = cookie {
                request = request.header("cookie", format!("{ANONYMOUS_COOKIE}={cookie}"));
            }
        } else {
            request = request.header(USER_HEADER, format!("user-{}", self.user));
        }
        let sent = Instant::now();
        let (status, version, event) = match request.send().await {
            Ok(response) => {
                let headers = response.headers();
                let version = headers
                    .get(UPSTREAM_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(Version::from_upstream);
                let event = headers
                    .get("x-cohort-events")
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|events| events.split(',').any(|e| e.trim() == EVENT));
                if anonymous {
                    let given = headers
                        .get_all("set-cookie")
                        .iter()
                        .filter_map(|value| value.to_str().ok())
                        .find_map(anonymous_cookie);
                    if let (Some(given), Some(slot)) = (given, cookie_slot) {
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(given);
                    }
                }
                let status = response.status().as_u16();
                // The body is a few bytes; reading it completes the exchange.
                let _ = response.bytes().await;
                (status, version, event)
            }
            Err(_) => (0, None, false),
        };
        let done = Instant::now();
        self.recorder.observe(Observation {
            at: done.saturating_duration_since(self.epoch).as_secs_f64(),
            version,
            status,
            latency_ms: done.saturating_duration_since(sent).as_secs_f64() * 1000.0,
            user: self.user,
            event,
        });
    }
}

/// The value of the anonymous-id cookie in a `Set-Cookie` header, if it is that cookie.
pub fn anonymous_cookie(set_cookie: &str) -> Option<String> {
    let pair = set_cookie.split(';').next()?.trim();
    let (name, value) = pair.split_once('=')?;
    (name.trim() == ANONYMOUS_COOKIE && !value.is_empty()).then(|| value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_gets_a_turn_in_each_round() {
        let users = 2_000;
        let mut seen: Vec<u32> = (0..u64::from(users)).map(|n| user_of(n, users)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), users as usize);
        // A user count that is a multiple of the scrambler still gets everyone.
        let mut plain: Vec<u32> = (0..7_919 * 2).map(|n| user_of(n, 7_919 * 2)).collect();
        plain.dedup();
        assert_eq!(plain.len(), 7_919 * 2);
        assert_eq!((0..100).filter(|&u| is_anonymous(u)).count(), 20);
    }

    #[test]
    fn reads_the_anonymous_cookie_from_set_cookie() {
        let header = "cohort-id=3f2a9c; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax";
        assert_eq!(anonymous_cookie(header), Some("3f2a9c".to_owned()));
        assert_eq!(anonymous_cookie("session=x; Path=/"), None);
        assert_eq!(anonymous_cookie("cohort-id=; Path=/"), None);
    }
}
