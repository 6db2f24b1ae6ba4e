//! One HTTP stream: decide on request headers, hand out the anonymous cookie and count business
//! events on response headers, count the request and its duration at the end.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use cohort_core::config::{Anonymous, DEFAULT_FORCE_HEADER, DEFAULT_ROUTING_HEADER};
use cohort_core::decide::{decide, set_cookie_value, Side};
use cohort_core::header_pairs::HeaderPairs;
use cohort_core::telemetry::code_class;

use crate::host;
use crate::metrics::VmMetrics;
use crate::root::Active;

/// With the `request-side-only` feature (a bench build, never shipped) the filter decides, routes
/// and hands out cookies, but skips its clock reads, response headers and metrics: what Envoy
/// pays for the decision alone, whatever the gates' inputs cost (BENCHMARKS.md, "Envoy overhead").
const REQUEST_SIDE_ONLY: bool = cfg!(feature = "request-side-only");

/// Per-stream state.
pub struct Stream {
    active: Option<Rc<Active>>,
    vm: VmMetrics,
    started_ns: u64,
    routed: Option<(usize, Side)>,
    set_cookie: Option<String>,
    status: u32,
}

impl Stream {
    /// A stream served by `active` (none before the first good config).
    pub fn new(active: Option<Rc<Active>>, vm: VmMetrics) -> Self {
        Stream {
            active,
            vm,
            started_ns: 0,
            routed: None,
            set_cookie: None,
            status: 0,
        }
    }
}

/// A fresh 128-bit id for an anonymous user. `RandomState` draws its keys from the host's
/// `random_get` once per VM and changes them for every instance, so ids are unpredictable.
fn new_anonymous_id() -> String {
    let high = RandomState::new().hash_one(host::now_nanos());
    let low = RandomState::new().hash_one(high);
    format!("{high:016x}{low:016x}")
}

/// The response's status code; 0 (counted as a reset) when it is missing or not a number.
fn parse_status(value: Option<&[u8]>) -> u32 {
    value
        .and_then(|status| std::str::from_utf8(status).ok()?.parse().ok())
        .unwrap_or(0)
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let serialized = host::request_headers();
        let headers = HeaderPairs::parse(&serialized);
        let Some(active) = self.active.clone() else {
            // No good config yet: still never let a client pick its version.
            for name in [DEFAULT_ROUTING_HEADER, DEFAULT_FORCE_HEADER] {
                if headers.contains(name) {
                    host::remove_request_header(name);
                }
            }
            return Action::Continue;
        };
        let config = &active.config;
        let authority = headers.get(":authority").unwrap_or_default();
        let outcome = decide(config, authority, &headers, &mut new_anonymous_id);
        if outcome.force_denied {
            host::increment(self.vm.force_denied, 1);
        }
        if headers.contains(&config.force_header) {
            host::remove_request_header(&config.force_header);
        }

        let client_sent = headers.get(&config.routing_header);
        let chosen = outcome
            .decision
            .as_ref()
            .map(|decision| decision.version().as_bytes());
        if client_sent.is_some() && client_sent != chosen {
            host::increment(self.vm.overwritten, 1);
        }
        let Some(decision) = outcome.decision else {
            if client_sent.is_some() {
                host::remove_request_header(&config.routing_header);
            }
            return Action::Continue;
        };
        // The clock, like the response's headers, is read only for a routed request: a host
        // without a rollout pays for none of it.
        if !REQUEST_SIDE_ONLY {
            self.started_ns = host::now_nanos();
        }
        host::set_request_header(&config.routing_header, decision.version().as_bytes());
        self.routed = Some((decision.rollout_index, decision.side));
        if let (
            Some(id),
            Anonymous::Cookie {
                name,
                max_age_seconds,
            },
        ) = (&decision.issued_id, &config.anonymous)
        {
            self.set_cookie = Some(set_cookie_value(name, id, *max_age_seconds));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(cookie) = self.set_cookie.take() {
            host::add_response_header("set-cookie", cookie.as_bytes());
        }
        if REQUEST_SIDE_ONLY {
            return Action::Continue;
        }
        let (Some(active), Some((rollout, side))) = (&self.active, self.routed) else {
            return Action::Continue;
        };
        let config = &active.config;
        if config.events.is_empty() {
            // Only the status is needed: one value costs less to read than the whole map.
            self.status = parse_status(host::response_header(":status").as_deref());
            return Action::Continue;
        }
        let serialized = host::response_headers();
        let headers = HeaderPairs::parse(&serialized);
        self.status = parse_status(headers.get(":status"));
        let Some(ids) = active.metrics.get(rollout).map(|m| m.side(side)) else {
            return Action::Continue;
        };
        if let Some(reported) = headers.get(&config.events_header) {
            for name in reported.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if let Some(index) = config
                    .events
                    .iter()
                    .position(|event| event.as_bytes() == name)
                {
                    host::increment(ids.events.get(index).copied().flatten(), 1);
                }
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if REQUEST_SIDE_ONLY {
            return;
        }
        let (Some(active), Some((rollout, side))) = (&self.active, self.routed) else {
            return;
        };
        let Some(ids) = active.metrics.get(rollout).map(|m| m.side(side)) else {
            return;
        };
        host::increment(
            ids.requests.get(code_class(self.status)).copied().flatten(),
            1,
        );
        let elapsed_ms = host::now_nanos().saturating_sub(self.started_ns) / 1_000_000;
        host::record(ids.duration_ms, elapsed_ms);
    }
}
