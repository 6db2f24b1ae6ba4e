//! The routing check: did the canary serve the requests the filter decided for it?
//!
//! The filter counts its decisions per version (`cohort_decisions_total`); the served metrics
//! count what each version answered. When the route or VirtualService misses the routing header,
//! the filter's "canary" users are served by stable, the canary serves nothing, and gates that
//! compared decisions would compare stable with stable. So every analysis compares the two over
//! the same window, and a clear shortfall holds the rollout ([`crate::plan()`]).
//!
//! "Clear" means: at least [`MIN_DECISIONS`] canary decisions in the window, and the canary served
//! fewer than [`SHORTFALL_RATIO`] of them. The two counts come from different proxies scraped at
//! different moments, so their windows are offset by up to a scrape interval; with the window at
//! least two scrapes long, that moves a count by about half of it at the very worst, and retries
//! only ever add served requests. A canary that serves what was decided for it never comes near
//! the ratio; a route that ignores the header serves none.

use crate::evaluate::{Observed, Samples};
use crate::format::count;

/// Canary decisions a window needs before a shortfall is judged: below this, a few requests in
/// flight across a scrape boundary could look like one.
pub const MIN_DECISIONS: f64 = 20.0;
/// The canary must serve at least this share of the requests decided for it.
pub const SHORTFALL_RATIO: f64 = 0.5;
/// What usually sends the canary's users elsewhere, for the condition, Event and log line.
pub const USUAL_CAUSES: &str = "check the route or VirtualService header match on the routing \
     header (its name and the canary's value), that the WasmPlugin runs on the client side \
     (match mode CLIENT, or at the ingress gateway: the VirtualService is evaluated in the \
     caller's sidecar), and that no route above the canary's matches first";

/// Both versions' decided and served counts over one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingCounts {
    /// Requests the filter decided for the canary.
    pub canary_decided: f64,
    /// Requests the canary served.
    pub canary_served: f64,
    /// Requests the filter decided for stable.
    pub stable_decided: f64,
    /// Requests stable served.
    pub stable_served: f64,
}

impl RoutingCounts {
    /// Both counts of both versions, in words.
    pub fn describe(&self) -> String {
        format!(
            "the filter decided {} requests for the canary and {} for stable; the canary served \
             {} and stable {}",
            count(self.canary_decided),
            count(self.stable_decided),
            count(self.canary_served),
            count(self.stable_served)
        )
    }
}

/// What one window says about routing.
#[derive(Debug, Clone, PartialEq)]
pub enum Routing {
    /// The counts could not be read (no decision series at all, or a failed query): nothing to
    /// say either way. The text says why.
    Unchecked(String),
    /// Too few canary decisions to tell ([`MIN_DECISIONS`]).
    TooFew(RoutingCounts),
    /// The canary served what was decided for it.
    Served(RoutingCounts),
    /// The canary clearly served fewer than were decided for it.
    Mismatch(RoutingCounts),
}

impl Routing {
    /// The counts, when they were read.
    pub fn counts(&self) -> Option<&RoutingCounts> {
        match self {
            Routing::Unchecked(_) => None,
            Routing::TooFew(counts) | Routing::Served(counts) | Routing::Mismatch(counts) => {
                Some(counts)
            }
        }
    }

    /// The mismatch in words, with the usual causes; `None` unless this is a mismatch.
    pub fn mismatch_message(&self) -> Option<String> {
        match self {
            Routing::Mismatch(counts) => Some(format!(
                "the canary served {} of the {} requests decided for it ({}); {USUAL_CAUSES}",
                count(counts.canary_served),
                count(counts.canary_decided),
                counts.describe()
            )),
            _ => None,
        }
    }
}

/// Checks one window's samples: see the module docs.
pub fn check(samples: &Samples) -> Routing {
    let (canary, stable) = (&samples.canary, &samples.stable);
    if matches!(canary.decisions, Observed::NoData) && matches!(stable.decisions, Observed::NoData)
    {
        return Routing::Unchecked(
            "no decision counts (cohort_decisions_total) in the window: no traffic, or the \
             filter's metrics are not scraped"
                .to_owned(),
        );
    }
    let read = |observed: &Observed<f64>, what: &str| match observed {
        Observed::Value(value) => Ok(*value),
        Observed::NoData => Ok(0.0),
        Observed::Failed(reason) => Err(format!("{what}: {reason}")),
    };
    let counts = (|| {
        Ok::<_, String>(RoutingCounts {
            canary_decided: read(&canary.decisions, "canary decisions")?,
            canary_served: read(&canary.requests, "canary requests served")?,
            stable_decided: read(&stable.decisions, "stable decisions")?,
            stable_served: read(&stable.requests, "stable requests served")?,
        })
    })();
    let counts = match counts {
        Ok(counts) => counts,
        Err(reason) => return Routing::Unchecked(reason),
    };
    if counts.canary_decided < MIN_DECISIONS {
        Routing::TooFew(counts)
    } else if counts.canary_served < SHORTFALL_RATIO * counts.canary_decided {
        Routing::Mismatch(counts)
    } else {
        Routing::Served(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::VersionSamples;

    fn samples(
        canary_decided: Observed<f64>,
        canary_served: Observed<f64>,
        stable_decided: Observed<f64>,
        stable_served: Observed<f64>,
    ) -> Samples {
        Samples {
            canary: VersionSamples {
                decisions: canary_decided,
                requests: canary_served,
                ..VersionSamples::default()
            },
            stable: VersionSamples {
                decisions: stable_decided,
                requests: stable_served,
                ..VersionSamples::default()
            },
        }
    }

    fn kind(routing: &Routing) -> &'static str {
        match routing {
            Routing::Unchecked(_) => "unchecked",
            Routing::TooFew(_) => "too few",
            Routing::Served(_) => "served",
            Routing::Mismatch(_) => "mismatch",
        }
    }

    #[test]
    fn verdicts() {
        use Observed::{Failed, NoData, Value};
        let table = [
            // A route that ignores the header: stable serves everything.
            (
                "misrouted",
                Value(480.0),
                NoData,
                Value(520.0),
                Value(1000.0),
                "mismatch",
            ),
            (
                "stable serves the canary's decisions, the canary a trickle of its own",
                Value(300.0),
                Value(12.0),
                Value(700.0),
                Value(988.0),
                "mismatch",
            ),
            (
                "misrouted, canary series present at 0",
                Value(480.0),
                Value(0.0),
                Value(520.0),
                Value(1000.0),
                "mismatch",
            ),
            (
                "partly misrouted",
                Value(400.0),
                Value(150.0),
                Value(600.0),
                Value(850.0),
                "mismatch",
            ),
            (
                "served as decided",
                Value(480.0),
                Value(478.0),
                Value(520.0),
                Value(522.0),
                "served",
            ),
            // Scrape timing: the served count lags by a good part of a scrape.
            (
                "served, one scrape behind",
                Value(480.0),
                Value(300.0),
                Value(520.0),
                Value(500.0),
                "served",
            ),
            // Client retries are served twice and decided once.
            (
                "retries add served requests",
                Value(100.0),
                Value(130.0),
                Value(100.0),
                Value(100.0),
                "served",
            ),
            // Callers that bypass the filter reach both versions: only more served.
            (
                "traffic that bypasses the filter",
                Value(50.0),
                Value(90.0),
                Value(50.0),
                Value(400.0),
                "served",
            ),
            (
                "too few to tell",
                Value(19.0),
                NoData,
                Value(2000.0),
                Value(2019.0),
                "too few",
            ),
            (
                "weight 0: no canary decisions",
                NoData,
                NoData,
                Value(900.0),
                Value(900.0),
                "too few",
            ),
            (
                "exactly at the ratio",
                Value(40.0),
                Value(20.0),
                Value(0.0),
                Value(0.0),
                "served",
            ),
            (
                "just below it",
                Value(40.0),
                Value(19.0),
                Value(0.0),
                Value(0.0),
                "mismatch",
            ),
            (
                "no decisions at all",
                NoData,
                Value(10.0),
                NoData,
                Value(900.0),
                "unchecked",
            ),
            (
                "decisions failed",
                Failed("down".into()),
                Value(10.0),
                Value(1.0),
                Value(900.0),
                "unchecked",
            ),
            (
                "served failed",
                Value(480.0),
                Failed("down".into()),
                Value(520.0),
                Value(1000.0),
                "unchecked",
            ),
        ];
        for (name, canary_decided, canary_served, stable_decided, stable_served, expected) in table
        {
            let routing = check(&samples(
                canary_decided,
                canary_served,
                stable_decided,
                stable_served,
            ));
            assert_eq!(kind(&routing), expected, "{name}: {routing:?}");
        }
    }

    #[test]
    fn a_mismatch_names_both_counts_and_the_causes() {
        let routing = check(&samples(
            Observed::Value(480.0),
            Observed::NoData,
            Observed::Value(520.0),
            Observed::Value(1000.0),
        ));
        let message = routing.mismatch_message().unwrap_or_default();
        for wanted in [
            "served 0 of the 480",
            "stable 1,000",
            "VirtualService",
            "CLIENT",
            "route above",
        ] {
            assert!(
                message.contains(wanted),
                "{wanted:?} missing from {message}"
            );
        }
        assert_eq!(
            check(&samples(
                Observed::Value(480.0),
                Observed::Value(480.0),
                Observed::Value(520.0),
                Observed::Value(520.0)
            ))
            .mismatch_message(),
            None
        );
    }
}
