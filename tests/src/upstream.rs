//! The `stable` and `canary` servers behind the harness's Envoy: the lab's upstream
//! (`cohort_lab::upstream`, which documents what each response carries) on the
//! harness's runtime, with the setters a test calls while it runs.

use std::net::SocketAddr;

use cohort_lab::upstream as lab;

pub use lab::Behaviour;

use crate::{runtime, Context, Result};

/// A running upstream; stops on drop.
#[derive(Debug)]
pub struct Upstream {
    inner: lab::Upstream,
}

impl Upstream {
    /// Starts `name` on a free port of 127.0.0.1, answering 200 at once without events.
    pub fn start(name: &str) -> Result<Upstream> {
        let inner = runtime()?
            .block_on(lab::Upstream::start(name, Behaviour::default()))
            .context(|| format!("starting upstream {name}"))?;
        Ok(Upstream { inner })
    }

    /// Its name (`stable`, `canary`).
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr()
    }

    /// How it answers now.
    pub fn behaviour(&self) -> Behaviour {
        self.inner.behaviour()
    }

    /// Answers 503 to `per_mille` of 1000 requests (0: never, 1000: always), spread evenly.
    pub fn fail(&self, per_mille: u32) {
        self.inner
            .update(|b| b.fail_per_mille = per_mille.min(1000));
    }

    /// Sleeps exactly `ms` before each answer.
    pub fn delay(&self, ms: u64) {
        self.inner.update(|b| {
            b.delay_ms = ms;
            b.jitter_ms = 0;
        });
    }

    /// Reports `events` (comma-separated names) in `x-cohort-events` on every answer, or
    /// nothing with `None`.
    pub fn events(&self, events: Option<&str>) {
        self.inner.update(|b| {
            b.events = events.unwrap_or_default().to_owned();
            b.event_per_mille = if events.is_some() { 1000 } else { 0 };
        });
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.inner.served()
    }

    /// Requests answered with 503 so far.
    pub fn failed(&self) -> u64 {
        self.inner.failed()
    }
}
