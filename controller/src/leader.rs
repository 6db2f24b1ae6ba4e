//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller replicas
//! exactly one pushes weights and writes status.
//!
//! kube 5 ships no lease lock (kube-runtime has the Controller, watcher, reflector, events and
//! finalizers, but no leader election), so this is the client-go recipe in a few lines: every
//! `renew_period` read the Lease, [`decide`] what to do, and write it back with the
//! `resourceVersion` just read, so two replicas racing for it cannot both win (the loser gets 409).
//! Expiry compares the holder's `renewTime` with this replica's clock: cluster clocks are
//! NTP-synced to well under the 15 s lease.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

/// How long a Lease holds without renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a candidate retries).
pub const DEFAULT_RENEW_PERIOD: Duration = Duration::from_secs(5);
/// How long a leader keeps leading while renewals fail; shorter than the lease duration, so it
/// has stepped down before anyone else may take the Lease over.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Which Lease, who we are, and the timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// `holderIdentity` written by this replica: its pod name.
    pub identity: String,
    /// `leaseDurationSeconds` written by this replica.
    pub lease_duration: Duration,
    /// Time between attempts.
    pub renew_period: Duration,
    /// Time a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
}

impl LeaseSettings {
    /// Settings with the default timings (15 s lease, renewed every 5 s, 10 s deadline).
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        LeaseSettings {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_period: DEFAULT_RENEW_PERIOD,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
        }
    }
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// There is no Lease: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    TakeOver,
    /// Someone else holds it for a while yet.
    Wait {
        /// The holder.
        holder: String,
        /// Time until it expires unless renewed.
        expires_in: Duration,
    },
}

/// Decides from the Lease as read (`None`: it does not exist), our identity and the time.
/// A holder whose Lease carries no renew time or duration is treated as expired.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(lease) = lease else {
        return LeaseDecision::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|spec| spec.holder_identity.as_deref())
        .unwrap_or_default();
    if holder.is_empty() {
        return LeaseDecision::TakeOver;
    }
    if holder == identity {
        return LeaseDecision::Renew;
    }
    let renewed = spec.and_then(|spec| spec.renew_time.as_ref());
    let duration = spec
        .and_then(|spec| spec.lease_duration_seconds)
        .and_then(|seconds| u64::try_from(seconds).ok());
    let (Some(renewed), Some(duration)) = (renewed, duration) else {
        return LeaseDecision::TakeOver;
    };
    let held_for = now
        .as_millisecond()
        .saturating_sub(renewed.0.as_millisecond());
    let remaining = i64::try_from(duration.saturating_mul(1000))
        .unwrap_or(i64::MAX)
        .saturating_sub(held_for);
    match u64::try_from(remaining) {
        Ok(millis) if millis > 0 => LeaseDecision::Wait {
            holder: holder.to_owned(),
            expires_in: Duration::from_millis(millis),
        },
        _ => LeaseDecision::TakeOver,
    }
}

/// The Lease to write for `decision` (`Create`, `Renew` or `TakeOver`), starting from the one
/// read; its `resourceVersion` makes the write fail if anyone wrote in between.
pub fn claimed(
    current: Option<&Lease>,
    settings: &LeaseSettings,
    decision: &LeaseDecision,
    now: Timestamp,
) -> Lease {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let duration = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
    spec.lease_duration_seconds = Some(duration);
    spec.renew_time = Some(MicroTime(now));
    match decision {
        LeaseDecision::Create => {
            spec.holder_identity = Some(settings.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        LeaseDecision::TakeOver => {
            spec.holder_identity = Some(settings.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        LeaseDecision::Renew | LeaseDecision::Wait { .. } => {}
    }
    lease
}

/// Acquires, renews and releases one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    /// An elector for the Lease `settings` names.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// One attempt on the Lease; returns whether this replica holds it afterwards. Losing a
    /// race (409 on create or replace) is not an error: someone else leads.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.settings.name).await?;
        let decision = decide(current.as_ref(), &self.settings.identity, now);
        let written = match decision {
            LeaseDecision::Wait { .. } => return Ok(false),
            LeaseDecision::Create => {
                let lease = claimed(None, &self.settings, &decision, now);
                self.api.create(&PostParams::default(), &lease).await
            }
            LeaseDecision::Renew | LeaseDecision::TakeOver => {
                let lease = claimed(current.as_ref(), &self.settings, &decision, now);
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up (if we hold it) so a successor need not wait for it to expire.
    pub async fn release(&self, now: Timestamp) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(now));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone wrote it in between: it is not ours to release any more.
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Tries every `renew_period` until `shutdown` turns true, publishing leadership on
    /// `leading` (and to `report` after every attempt); releases the Lease on the way out.
    pub async fn run(
        self,
        leading: watch::Sender<bool>,
        mut shutdown: watch::Receiver<bool>,
        report: impl Fn(bool) + Send,
    ) {
        let mut last_renewed: Option<Instant> = None;
        loop {
            let holds = match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(true) => {
                    last_renewed = Some(Instant::now());
                    true
                }
                Ok(false) => {
                    last_renewed = None;
                    false
                }
                Err(error) => {
                    // Keep leading through brief API trouble, never past the renew deadline:
                    // after it the Lease may expire and another replica take over.
                    let within_deadline =
                        last_renewed.is_some_and(|at| at.elapsed() < self.settings.renew_deadline);
                    tracing::warn!(%error, within_deadline, lease = %self.settings.name, "cannot reach the leader Lease");
                    if !within_deadline {
                        last_renewed = None;
                    }
                    within_deadline
                }
            };
            let was_leading = leading.send_replace(holds);
            if was_leading != holds {
                tracing::info!(
                    leading = holds,
                    identity = %self.settings.identity,
                    lease = %self.settings.name,
                    "leadership changed"
                );
            }
            report(holds);
            self.pause(&mut shutdown).await;
            if *shutdown.borrow() {
                break;
            }
        }
        if leading.send_replace(false) {
            if let Err(error) = self.release(Timestamp::now()).await {
                tracing::warn!(%error, "cannot release the leader Lease; it expires by itself");
            }
        }
        report(false);
    }

    async fn pause(&self, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            () = tokio::time::sleep(self.settings.renew_period) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("cohort-controller".into()),
                namespace: Some("cohort-system".into()),
                resource_version: Some("41".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: renewed.map(|s| MicroTime(at(s))),
                lease_duration_seconds: duration,
                lease_transitions: Some(2),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let wait = |holder: &str, seconds: u64| LeaseDecision::Wait {
            holder: holder.into(),
            expires_in: Duration::from_secs(seconds),
        };
        let no_spec = Lease {
            spec: None,
            ..lease(None, None, None)
        };
        let table: [(&str, Option<Lease>, i64, LeaseDecision); 10] = [
            ("no lease", None, 0, LeaseDecision::Create),
            (
                "lease without spec",
                Some(no_spec),
                0,
                LeaseDecision::TakeOver,
            ),
            (
                "released",
                Some(lease(None, Some(0), Some(15))),
                1,
                LeaseDecision::TakeOver,
            ),
            (
                "empty holder",
                Some(lease(Some(""), Some(0), Some(15))),
                1,
                LeaseDecision::TakeOver,
            ),
            (
                "ours, fresh",
                Some(lease(Some("me"), Some(0), Some(15))),
                1,
                LeaseDecision::Renew,
            ),
            (
                "ours, expired",
                Some(lease(Some("me"), Some(0), Some(15))),
                60,
                LeaseDecision::Renew,
            ),
            (
                "theirs, fresh",
                Some(lease(Some("other"), Some(0), Some(15))),
                5,
                wait("other", 10),
            ),
            (
                "theirs, just expired",
                Some(lease(Some("other"), Some(0), Some(15))),
                15,
                LeaseDecision::TakeOver,
            ),
            (
                "theirs, no renew time",
                Some(lease(Some("other"), None, Some(15))),
                0,
                LeaseDecision::TakeOver,
            ),
            (
                "theirs, renewed in our future",
                Some(lease(Some("other"), Some(10), Some(15))),
                0,
                wait("other", 25),
            ),
        ];
        for (case, lease, now, expected) in table {
            assert_eq!(decide(lease.as_ref(), "me", at(now)), expected, "{case}");
        }
    }

    #[test]
    fn claims_keep_the_resource_version_and_count_transitions() {
        let settings = LeaseSettings::new("cohort-controller", "cohort-system", "me");
        let current = lease(Some("other"), Some(0), Some(15));

        let taken = claimed(Some(&current), &settings, &LeaseDecision::TakeOver, at(20));
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("41"));
        let spec = taken.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(20))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(20))));
        assert_eq!(spec.lease_duration_seconds, Some(15));

        let ours = lease(Some("me"), Some(0), Some(15));
        let renewed = claimed(Some(&ours), &settings, &LeaseDecision::Renew, at(5));
        let spec = renewed.spec.unwrap();
        assert_eq!(
            spec.lease_transitions,
            Some(2),
            "a renewal is no transition"
        );
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));

        let created = claimed(None, &settings, &LeaseDecision::Create, at(0));
        assert_eq!(created.metadata.name.as_deref(), Some("cohort-controller"));
        assert_eq!(created.metadata.namespace.as_deref(), Some("cohort-system"));
        assert_eq!(created.metadata.resource_version, None);
        assert_eq!(created.spec.unwrap().lease_transitions, Some(0));
    }
    /// The elector against a scripted API server, at `now`.
    async fn attempt(calls: Vec<crate::fixtures::Call>, now: i64) -> bool {
        let (client, server) = crate::fixtures::mock_client();
        let elector = LeaderElector::new(
            client,
            LeaseSettings::new("cohort-controller", "cohort-system", "me"),
        );
        let script = server.expect(calls);
        let holds = elector.try_acquire_or_renew(at(now)).await.unwrap();
        crate::fixtures::finished(script).await;
        holds
    }

    #[tokio::test]
    async fn creates_takes_over_renews_or_waits() {
        use crate::fixtures::Call;
        let replace = |holder, conflict| Call::ReplaceLease {
            holder,
            resource_version: "41",
            conflict,
        };
        assert!(attempt(vec![Call::GetLease(None), Call::CreateLease("me")], 0).await);
        let theirs = || lease(Some("other"), Some(0), Some(15));
        assert!(!attempt(vec![Call::GetLease(Some(theirs()))], 5).await);
        assert!(
            attempt(
                vec![Call::GetLease(Some(theirs())), replace(Some("me"), false)],
                20
            )
            .await
        );
        // Another candidate wrote first: its resourceVersion wins, we wait.
        assert!(
            !attempt(
                vec![Call::GetLease(Some(theirs())), replace(Some("me"), true)],
                20
            )
            .await
        );
        let ours = lease(Some("me"), Some(0), Some(15));
        assert!(
            attempt(
                vec![Call::GetLease(Some(ours)), replace(Some("me"), false)],
                5
            )
            .await
        );
    }

    #[tokio::test]
    async fn release_clears_the_holder_only_when_it_is_us() {
        use crate::fixtures::Call;
        let settings = LeaseSettings::new("cohort-controller", "cohort-system", "me");
        let (client, server) = crate::fixtures::mock_client();
        let elector = LeaderElector::new(client, settings);
        let script = server.expect(vec![
            Call::GetLease(Some(lease(Some("me"), Some(0), Some(15)))),
            Call::ReplaceLease {
                holder: None,
                resource_version: "41",
                conflict: false,
            },
            Call::GetLease(Some(lease(Some("other"), Some(0), Some(15)))),
        ]);
        elector.release(at(3)).await.unwrap();
        elector.release(at(3)).await.unwrap();
        crate::fixtures::finished(script).await;
    }
}
