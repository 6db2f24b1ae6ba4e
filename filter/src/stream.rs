//! One HTTP stream: decide on request headers and count the decision there; on response headers
//! hand out the anonymous cookie and, only when the config lists events, count the events the
//! upstream reports. The gates judge the proxy's own served metrics, so nothing else of the
//! response is read: with no events the filter reads neither the response nor the clock (the
//! anonymous id aside). Every host call goes through the stream's [`Host`], so these decisions
//! are unit-tested with a fake host.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use cohort_core::config::{Anonymous, DEFAULT_FORCE_HEADER, DEFAULT_ROUTING_HEADER};
use cohort_core::decide::{decide, set_cookie_value, Side};
use cohort_core::header_pairs::HeaderPairs;
use cohort_core::telemetry::UNIT_HEADER;

use crate::active::Active;
use crate::metrics::VmMetrics;
use crate::stream_host::Host;

/// Per-stream state, over the host `H` it calls ([`Envoy`](crate::host::Envoy) in the filter).
pub struct Stream<H> {
    host: H,
    active: Option<Rc<Active>>,
    vm: VmMetrics,
    /// The rollout (its index) and side decided, when the response's events are counted.
    counts_events: Option<(usize, Side)>,
    set_cookie: Option<String>,
}

impl<H: Host> Stream<H> {
    /// A stream on `host` served by `active` (none before the first good config).
    pub fn new(host: H, active: Option<Rc<Active>>, vm: VmMetrics) -> Self {
        Stream {
            host,
            active,
            vm,
            counts_events: None,
            set_cookie: None,
        }
    }
}

/// A fresh 128-bit id for an anonymous user, `now_nanos` being the host's clock. `RandomState`
/// draws its keys from the host's `random_get` once per VM and changes them for every instance,
/// so ids are unpredictable.
fn new_anonymous_id(now_nanos: u64) -> String {
    let high = RandomState::new().hash_one(now_nanos);
    let low = RandomState::new().hash_one(high);
    format!("{high:016x}{low:016x}")
}

impl<H: Host> Context for Stream<H> {}

impl<H: Host> HttpContext for Stream<H> {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let host = &mut self.host;
        let serialized = host.request_headers();
        let headers = HeaderPairs::parse(&serialized);
        let Some(active) = self.active.clone() else {
            // No good config yet: still never let a client pick its version or its unit.
            for name in [DEFAULT_ROUTING_HEADER, DEFAULT_FORCE_HEADER, UNIT_HEADER] {
                if headers.contains(name) {
                    host.remove_request_header(name);
                }
            }
            return Action::Continue;
        };
        let config = &active.config;
        let authority = headers.get(":authority").unwrap_or_default();
        let outcome = decide(config, authority, &headers, &mut || {
            new_anonymous_id(host.now_nanos())
        });
        if outcome.force_denied {
            host.increment(self.vm.force_denied, 1);
        }
        if headers.contains(&config.force_header) {
            host.remove_request_header(&config.force_header);
        }

        let client_sent = headers.get(&config.routing_header);
        let chosen = outcome
            .decision
            .as_ref()
            .map(|decision| decision.version().as_bytes());
        if client_sent.is_some() && client_sent != chosen {
            host.increment(self.vm.overwritten, 1);
        }
        let client_sent_unit = headers.contains(UNIT_HEADER);
        let Some(decision) = outcome.decision else {
            if client_sent.is_some() {
                host.remove_request_header(&config.routing_header);
            }
            if client_sent_unit {
                host.remove_request_header(UNIT_HEADER);
            }
            return Action::Continue;
        };
        host.set_request_header(&config.routing_header, decision.version().as_bytes());
        // The unit is the filter's alone, as the version is: a client choosing its unit could
        // pile its requests into one unit of the served metrics.
        match decision.placement {
            Some(placement) => {
                host.set_request_header(UNIT_HEADER, placement.unit_value().as_bytes());
            }
            None if client_sent_unit => host.remove_request_header(UNIT_HEADER),
            None => {}
        }
        // Counted now, not when an answer comes: a request the upstream never answers was still
        // routed, and the routing check compares these with what the proxies served.
        let ids = active.metrics.get(decision.rollout_index);
        host.increment(ids.and_then(|m| m.side(decision.side).decisions), 1);
        if !config.events.is_empty() {
            self.counts_events = Some((decision.rollout_index, decision.side));
        }
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
            self.host
                .add_response_header("set-cookie", cookie.as_bytes());
        }
        // Set only when the config lists events: otherwise the response is not read at all.
        let (Some(active), Some((rollout, side))) = (&self.active, self.counts_events) else {
            return Action::Continue;
        };
        let config = &active.config;
        // One value costs less to read than the whole map; like the map read by name, it is the
        // first header of that name.
        let Some(reported) = self.host.response_header(&config.events_header) else {
            return Action::Continue;
        };
        let Some(ids) = active.metrics.get(rollout).map(|m| m.side(side)) else {
            return Action::Continue;
        };
        for name in reported.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if let Some(index) = config
                .events
                .iter()
                .position(|event| event.as_bytes() == name)
            {
                self.host
                    .increment(ids.events.get(index).copied().flatten(), 1);
            }
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use cohort_core::bucket::place;
    use cohort_core::config;
    use cohort_core::telemetry::{
        tagged_name, DECISIONS_TOTAL, EVENTS_TOTAL, FORCE_DENIED_TOTAL,
        ROUTING_HEADER_OVERWRITTEN_TOTAL, TAG_DESTINATION_NAMESPACE, TAG_DESTINATION_SERVICE,
        TAG_DESTINATION_VERSION, TAG_EVENT, TAG_NAMESPACE, TAG_ROLLOUT, TAG_VERSION,
    };

    use super::*;
    use crate::fake_host::FakeHost;
    use crate::metrics::define_rollouts;

    const TOKEN: &str = "0123456789abcdef";
    const ROUTING: &str = DEFAULT_ROUTING_HEADER;
    const FORCE: &str = DEFAULT_FORCE_HEADER;

    /// A config whose one rollout, `web`, serves host `web`; `top` and `rollout` are extra
    /// fields, each starting with a comma.
    fn document(top: &str, rollout: &str) -> String {
        format!(
            r#"{{"version": 1, "forceToken": "{TOKEN}",
                 "identity": [{{"kind": "header", "name": "x-user-id"}}] {top},
                 "rollouts": {{"web": {{"hosts": ["web"] {rollout}}}}}}}"#
        )
    }

    /// A stream on `host` served by `document` (none: before the first good config), with its
    /// metric ids defined by the fake host, as `Root` defines them.
    fn stream(document: Option<&str>, mut host: FakeHost) -> Stream<FakeHost> {
        let vm = VmMetrics::define(&mut |kind, name| host.define(kind, name));
        let active = document.map(|document| {
            let config = config::parse(document.as_bytes()).unwrap();
            let metrics = define_rollouts(&config, &mut |kind, name| host.define(kind, name));
            Rc::new(Active { config, metrics })
        });
        Stream::new(host, active, vm)
    }

    /// Envoy's callbacks for a whole exchange, the upstream answering `response`.
    fn exchange(stream: &mut Stream<FakeHost>, response: &[(&[u8], &[u8])]) {
        assert_eq!(stream.on_http_request_headers(0, false), Action::Continue);
        stream.host.response = response
            .iter()
            .map(|(name, value)| (name.to_vec(), value.to_vec()))
            .collect();
        assert_eq!(stream.on_http_response_headers(0, false), Action::Continue);
    }

    /// The request headers of a user on host `web`.
    fn user(key: &'static [u8]) -> FakeHost {
        FakeHost::with_request(&[(b":authority", b"web"), (b"x-user-id", key)])
    }

    /// The routing header the upstream gets, when exactly one.
    fn routed(host: &FakeHost) -> Option<String> {
        match host.request_header(ROUTING)[..] {
            [] => None,
            [value] => Some(String::from_utf8_lossy(value).into_owned()),
            ref many => panic!("{} routing headers: {many:?}", many.len()),
        }
    }

    /// The unit header the upstream gets, when exactly one.
    fn unit(host: &FakeHost) -> Option<String> {
        match host.request_header(UNIT_HEADER)[..] {
            [] => None,
            [value] => Some(String::from_utf8_lossy(value).into_owned()),
            ref many => panic!("{} unit headers: {many:?}", many.len()),
        }
    }

    /// `web`'s decisions for `version`: no namespace, the rollout name for the service.
    fn decisions(version: &str) -> String {
        tagged_name(
            DECISIONS_TOTAL,
            &[
                (TAG_DESTINATION_NAMESPACE, ""),
                (TAG_DESTINATION_SERVICE, "web"),
                (TAG_DESTINATION_VERSION, version),
            ],
        )
    }

    fn events(version: &str, event: &str) -> String {
        tagged_name(
            EVENTS_TOTAL,
            &[
                (TAG_NAMESPACE, ""),
                (TAG_ROLLOUT, "web"),
                (TAG_VERSION, version),
                (TAG_EVENT, event),
            ],
        )
    }

    #[test]
    fn keyed_users_are_routed_by_their_bucket() {
        let users: [&[u8]; 8] = [
            b"alice", b"bob", b"carol", b"dave", b"erin", b"frank", b"grace", b"heidi",
        ];
        let mut sides_at_half = Vec::new();
        for weight in [0, 1, 2500, 5000, 9999, 10000] {
            let document = document(
                "",
                &format!(r#", "weightBp": {weight}, "stableVersion": "v1", "canaryVersion": "v2""#),
            );
            for key in users {
                let mut stream = stream(Some(&document), user(key));
                exchange(&mut stream, &[(b":status", b"200")]);
                let canary = place("web", key).is_canary(weight);
                let want = if canary { "v2" } else { "v1" };
                let who = format!("{} at {weight}bp", String::from_utf8_lossy(key));
                assert_eq!(routed(&stream.host).as_deref(), Some(want), "{who}");
                assert!(!stream.host.called("add set-cookie"), "{who}");
                assert_eq!(stream.host.counter(&decisions(want)), 1, "{who}");
                if weight == 5000 {
                    sides_at_half.push(canary);
                }
            }
        }
        // The users land on both sides, so the table tells the bucket from a constant.
        assert!(sides_at_half.contains(&true) && sides_at_half.contains(&false));
    }

    #[test]
    fn allow_listed_keys_get_the_canary_unless_it_is_off() {
        // (weight, key, version)
        let table: &[(u32, &[u8], &str)] = &[
            (1, b"alice", "canary"),
            (0, b"alice", "stable"),
            (10000, b"bob", "canary"),
        ];
        for (weight, key, want) in table {
            let document = document(
                "",
                &format!(r#", "weightBp": {weight}, "allowKeys": ["alice"]"#),
            );
            let mut stream = stream(Some(&document), user(key));
            exchange(&mut stream, &[]);
            assert_eq!(routed(&stream.host).as_deref(), Some(*want), "{weight}bp");
        }
    }

    #[test]
    fn the_routing_header_a_client_sends_is_overwritten_or_removed() {
        // (authority, routing headers the client sent, routing header forwarded, overwrites
        // counted). Everyone on `web` gets the canary.
        type Row = (
            &'static [u8],
            &'static [&'static [u8]],
            Option<&'static str>,
            u64,
        );
        let table: &[Row] = &[
            (b"web", &[], Some("canary"), 0),
            (b"web", &[b"canary"], Some("canary"), 0),
            (b"web", &[b"stable"], Some("canary"), 1),
            (b"web", &[b"evil"], Some("canary"), 1),
            (b"web", &[b"stable", b"canary"], Some("canary"), 1),
            (b"web", &[b"\xff\x00"], Some("canary"), 1),
            // No rollout claims the host: whatever the client sent goes.
            (b"elsewhere", &[b"canary"], None, 1),
            (b"elsewhere", &[], None, 0),
        ];
        let document = document("", r#", "weightBp": 10000"#);
        for (authority, sent, want, overwritten) in table {
            let mut host =
                FakeHost::with_request(&[(b":authority", authority), (b"x-user-id", b"alice")]);
            for value in *sent {
                host.request
                    .push((b"X-Cohort-Version".to_vec(), value.to_vec()));
            }
            let mut stream = stream(Some(&document), host);
            exchange(&mut stream, &[(b":status", b"200")]);
            let row = format!("{} {sent:?}", String::from_utf8_lossy(authority));
            assert_eq!(routed(&stream.host).as_deref(), *want, "{row}");
            assert_eq!(
                stream.host.counter(ROUTING_HEADER_OVERWRITTEN_TOTAL),
                *overwritten,
                "{row}"
            );
            // A header the request does not carry is not removed (a host call saved).
            assert_eq!(
                stream.host.called(&format!("remove {ROUTING}")),
                want.is_none() && !sent.is_empty(),
                "{row}"
            );
        }
    }

    #[test]
    fn a_request_no_rollout_routes_reads_neither_the_clock_nor_the_response() {
        let document = document(r#", "events": ["checkout"]"#, r#", "weightBp": 10000"#);
        let host =
            FakeHost::with_request(&[(b":authority", b"elsewhere"), (b"x-user-id", b"alice")]);
        let mut stream = stream(Some(&document), host);
        exchange(
            &mut stream,
            &[(b":status", b"200"), (b"x-cohort-events", b"checkout")],
        );
        assert_eq!(stream.host.calls, ["request headers"]);
    }

    #[test]
    fn the_force_header_with_the_right_token_forces_and_is_always_removed() {
        let right_canary = format!("canary:{TOKEN}");
        let right_stable = format!("stable:{TOKEN}");
        let wrong = format!("canary:{}", TOKEN.replace('0', "1"));
        let unknown_version = format!("nightly:{TOKEN}");
        let token_only = format!(":{TOKEN}");
        // (force header, whether the config has the token, weight, version forwarded, denials
        // counted)
        let table: &[(&str, bool, u32, &str, u64)] = &[
            (&right_canary, true, 0, "canary", 0),
            (&right_stable, true, 10000, "stable", 0),
            (&wrong, true, 0, "stable", 1),
            (&unknown_version, true, 0, "stable", 1),
            (&token_only, true, 0, "stable", 1),
            ("canary", true, 0, "stable", 1),
            ("canary:", true, 0, "stable", 1),
            ("", true, 0, "stable", 1),
            (&right_canary, false, 0, "stable", 1),
        ];
        for (force, with_token, weight, want, denied) in table {
            let mut document = document("", &format!(r#", "weightBp": {weight}"#));
            if !with_token {
                document = document.replace(&format!(r#""forceToken": "{TOKEN}","#), "");
            }
            let mut host = user(b"alice");
            host.request
                .push((FORCE.as_bytes().to_vec(), force.as_bytes().to_vec()));
            let mut stream = stream(Some(&document), host);
            exchange(&mut stream, &[(b":status", b"200")]);
            let row = format!("{force:?}, token configured: {with_token}, {weight}bp");
            assert_eq!(routed(&stream.host).as_deref(), Some(*want), "{row}");
            assert_eq!(stream.host.counter(FORCE_DENIED_TOTAL), *denied, "{row}");
            assert!(stream.host.request_header(FORCE).is_empty(), "{row}");
        }
    }

    #[test]
    fn a_force_header_on_a_host_no_rollout_claims_is_denied_and_removed() {
        let document = document("", "");
        let force = format!("canary:{TOKEN}");
        let host = FakeHost::with_request(&[
            (b":authority", b"elsewhere"),
            (FORCE.as_bytes(), force.as_bytes()),
        ]);
        let mut stream = stream(Some(&document), host);
        exchange(&mut stream, &[]);
        assert_eq!(stream.host.counter(FORCE_DENIED_TOTAL), 1);
        assert!(stream.host.request_header(FORCE).is_empty());
        assert_eq!(routed(&stream.host), None);
    }

    #[test]
    fn an_anonymous_user_gets_an_id_in_a_cookie_and_is_routed_by_it() {
        // (anonymous policy, cookie header, cookie name and max-age handed out, if any)
        type Row = (
            &'static str,
            Option<&'static [u8]>,
            Option<(&'static str, u64)>,
        );
        let table: &[Row] = &[
            ("", None, Some(("cohort-id", 30 * 24 * 3600))),
            (
                "",
                Some(b"other=1; cohort-id="),
                Some(("cohort-id", 30 * 24 * 3600)),
            ),
            (
                r#", "anonymous": {"mode": "cookie", "cookieName": "sid", "maxAgeSeconds": 60}"#,
                None,
                Some(("sid", 60)),
            ),
            ("", Some(b"other=1; cohort-id=known-user"), None),
            (r#", "anonymous": {"mode": "stable"}"#, None, None),
        ];
        for (anonymous, cookie, issued) in table {
            let document = document(anonymous, r#", "weightBp": 5000"#);
            let mut host = FakeHost::with_request(&[(b":authority", b"web")]);
            host.request
                .extend(cookie.map(|c| (b"cookie".to_vec(), c.to_vec())));
            let mut stream = stream(Some(&document), host);
            exchange(&mut stream, &[(b":status", b"200")]);
            let row = format!("{anonymous} {cookie:?}");
            let set_cookies = stream.host.response_header_values("set-cookie");
            let side = |key: &[u8]| {
                if place("web", key).is_canary(5000) {
                    "canary"
                } else {
                    "stable"
                }
            };
            let want = match (issued, set_cookies.as_slice()) {
                (Some((name, max_age)), [set_cookie]) => {
                    let set_cookie = std::str::from_utf8(set_cookie).unwrap();
                    let (id, attributes) = set_cookie
                        .strip_prefix(&format!("{name}="))
                        .and_then(|rest| rest.split_once(';'))
                        .unwrap_or_else(|| panic!("{row}: {set_cookie}"));
                    assert!(
                        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{row}: {id}"
                    );
                    assert_eq!(
                        attributes,
                        format!(" Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"),
                        "{row}"
                    );
                    side(id.as_bytes())
                }
                (None, []) if anonymous.contains("stable") => "stable",
                (None, []) => side(b"known-user"),
                (_, got) => panic!("{row}: set-cookie {got:?}"),
            };
            assert_eq!(routed(&stream.host).as_deref(), Some(want), "{row}");
        }
    }

    #[test]
    fn anonymous_ids_differ_per_request() {
        let document = document("", "");
        let ids: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let mut stream = stream(
                    Some(&document),
                    FakeHost::with_request(&[(b":authority", b"web")]),
                );
                exchange(&mut stream, &[]);
                stream.host.response_header_values("set-cookie")[0].to_vec()
            })
            .collect();
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn before_the_first_config_requests_pass_with_the_clients_headers_removed() {
        // (the request's headers, the host calls made)
        type Row = (
            &'static [(&'static [u8], &'static [u8])],
            &'static [&'static str],
        );
        let table: &[Row] = &[
            (
                &[
                    (b":authority", b"web"),
                    (b"x-cohort-version", b"canary"),
                    (b"x-cohort-force", b"canary:x"),
                ],
                &[
                    "request headers",
                    "remove x-cohort-version",
                    "remove x-cohort-force",
                ],
            ),
            (
                &[(b":authority", b"web"), (b"x-user-id", b"alice")],
                &["request headers"],
            ),
            (
                &[
                    (b":authority", b"web"),
                    (b"x-user-id", b"alice"),
                    (b"x-cohort-unit", b"3"),
                ],
                &["request headers", "remove x-cohort-unit"],
            ),
        ];
        for (request, calls) in table {
            let mut stream = stream(None, FakeHost::with_request(request));
            exchange(&mut stream, &[(b":status", b"200")]);
            assert_eq!(stream.host.calls, *calls);
            // Everything else the client sent is forwarded as it was.
            let kept: Vec<_> = request
                .iter()
                .filter(|(name, _)| {
                    ![ROUTING, FORCE, UNIT_HEADER]
                        .iter()
                        .any(|header| header.as_bytes() == *name)
                })
                .map(|(name, value)| (name.to_vec(), value.to_vec()))
                .collect();
            assert_eq!(stream.host.request, kept);
        }
    }

    #[test]
    fn the_unit_header_is_the_users_unit_and_never_the_clients() {
        let forced = format!("canary:{TOKEN}");
        let stable_only = r#", "anonymous": {"mode": "stable"}"#;
        // (config's extra top-level fields, its rollout's, request headers besides the unit
        // headers the client sends, the key whose unit the upstream gets, if any)
        type Row<'a> = (
            &'static str,
            &'static str,
            Vec<(&'static [u8], &'a [u8])>,
            Option<&'static [u8]>,
        );
        let table: Vec<Row> = vec![
            // Bucketed on either side, and with the canary off.
            (
                "",
                r#", "weightBp": 10000"#,
                vec![(b":authority", b"web"), (b"x-user-id", b"alice")],
                Some(b"alice"),
            ),
            (
                "",
                r#", "weightBp": 0"#,
                vec![(b":authority", b"web"), (b"x-user-id", b"bob")],
                Some(b"bob"),
            ),
            (
                "",
                r#", "weightBp": 5000"#,
                vec![(b":authority", b"web:80"), (b"x-user-id", b"carol")],
                Some(b"carol"),
            ),
            // Allow-listed and forced users keep the unit of their key.
            (
                "",
                r#", "weightBp": 1, "allowKeys": ["dave"]"#,
                vec![(b":authority", b"web"), (b"x-user-id", b"dave")],
                Some(b"dave"),
            ),
            (
                "",
                r#", "weightBp": 0"#,
                vec![
                    (b":authority", b"web"),
                    (b"x-user-id", b"erin"),
                    (FORCE.as_bytes(), forced.as_bytes()),
                ],
                Some(b"erin"),
            ),
            // A returning anonymous user, by its cookie.
            (
                "",
                r#", "weightBp": 5000"#,
                vec![(b":authority", b"web"), (b"cookie", b"cohort-id=frank")],
                Some(b"frank"),
            ),
            // Nobody placed: forced without a key, anonymous users kept on stable, a host no
            // rollout claims.
            (
                stable_only,
                r#", "weightBp": 0"#,
                vec![
                    (b":authority", b"web"),
                    (FORCE.as_bytes(), forced.as_bytes()),
                ],
                None,
            ),
            (
                stable_only,
                r#", "weightBp": 10000"#,
                vec![(b":authority", b"web")],
                None,
            ),
            (
                "",
                r#", "weightBp": 10000"#,
                vec![(b":authority", b"elsewhere"), (b"x-user-id", b"grace")],
                None,
            ),
        ];
        let spoofed: [&[&[u8]]; 5] = [&[], &[b"0"], &[b"15", b"15"], &[b"99"], &[b"\xff"]];
        for (top, rollout, request, key) in &table {
            let document = document(top, rollout);
            for sent in spoofed {
                let mut host = FakeHost::with_request(request);
                for value in sent {
                    host.request
                        .push((b"X-Cohort-Unit".to_vec(), value.to_vec()));
                }
                let mut stream = stream(Some(&document), host);
                exchange(&mut stream, &[(b":status", b"200")]);
                let row = format!("{top}{rollout} {request:?} sent {sent:?}");
                let want = key.map(|key| place("web", key).unit_value());
                assert_eq!(unit(&stream.host).as_deref(), want, "{row}");
                // Nobody placed: a header the request does not carry is not removed.
                assert_eq!(
                    stream.host.called(&format!("remove {UNIT_HEADER}")),
                    key.is_none() && !sent.is_empty(),
                    "{row}"
                );
                // Only a host no rollout claims goes without a routing header.
                let claimed = request.iter().all(|(_, value)| *value != b"elsewhere");
                assert_eq!(routed(&stream.host).is_some(), claimed, "{row}");
            }
        }
        // The keys land in more than one unit, so the table tells the unit from a constant.
        let units: std::collections::BTreeSet<u8> = table
            .iter()
            .filter_map(|(_, _, _, key)| key.map(|key| place("web", key).unit))
            .collect();
        assert!(units.len() > 1, "{units:?}");
    }

    #[test]
    fn a_unit_header_the_host_refuses_to_set_is_removed() {
        let document = document("", r#", "weightBp": 10000"#);
        let unit_value = place("web", b"alice").unit_value();
        for sent in [None, Some(&b"7"[..])] {
            let mut host = user(b"alice");
            host.refuse_replace = true;
            host.request
                .extend(sent.map(|v| (UNIT_HEADER.as_bytes().to_vec(), v.to_vec())));
            let mut stream = stream(Some(&document), host);
            exchange(&mut stream, &[(b":status", b"200")]);
            assert_eq!(unit(&stream.host), None, "{sent:?}");
            let writes: Vec<&str> = stream
                .host
                .calls
                .iter()
                .map(String::as_str)
                .filter(|call| call.contains(UNIT_HEADER))
                .collect();
            assert_eq!(
                writes,
                [
                    format!("replace {UNIT_HEADER}: {unit_value}"),
                    format!("remove {UNIT_HEADER}")
                ],
                "{sent:?}"
            );
        }
    }

    #[test]
    fn a_routing_header_the_host_refuses_to_set_is_removed() {
        let document = document("", r#", "weightBp": 10000"#);
        for sent in [None, Some(&b"canary"[..]), Some(b"evil")] {
            let mut host = user(b"alice");
            host.refuse_replace = true;
            host.request
                .extend(sent.map(|v| (ROUTING.as_bytes().to_vec(), v.to_vec())));
            let mut stream = stream(Some(&document), host);
            exchange(&mut stream, &[(b":status", b"200")]);
            assert_eq!(routed(&stream.host), None, "{sent:?}");
            let writes: Vec<&str> = stream
                .host
                .calls
                .iter()
                .map(String::as_str)
                .filter(|call| call.contains(ROUTING))
                .collect();
            assert_eq!(
                writes,
                [
                    "replace x-cohort-version: canary",
                    "remove x-cohort-version"
                ],
                "{sent:?}"
            );
        }
    }

    #[test]
    fn business_events_are_counted_from_the_events_header() {
        // (events header values, (event, count) for the canary)
        type Row = (&'static [&'static [u8]], [u64; 2]);
        let table: &[Row] = &[
            (&[b"checkout"], [1, 0]),
            (&[b" checkout, bogus,signup ,checkout,,"], [2, 1]),
            (&[b"CHECKOUT"], [0, 0]),
            (&[b"\xff, signup"], [0, 1]),
            (&[b""], [0, 0]),
            (&[], [0, 0]),
            // Only the first header counts, as Envoy's map is read by name.
            (&[b"signup", b"checkout"], [0, 1]),
        ];
        let document = document(
            r#", "events": ["checkout", "signup"], "eventsHeader": "x-shop-events""#,
            r#", "weightBp": 10000"#,
        );
        for (reported, [checkouts, signups]) in table {
            let mut stream = stream(Some(&document), user(b"alice"));
            let mut response: Vec<(&[u8], &[u8])> = vec![(b":status", b"201")];
            response.extend(reported.iter().map(|value| (&b"x-shop-events"[..], *value)));
            exchange(&mut stream, &response);
            let row = format!("{reported:?}");
            assert_eq!(
                stream.host.counter(&events("canary", "checkout")),
                *checkouts,
                "{row}"
            );
            assert_eq!(
                stream.host.counter(&events("canary", "signup")),
                *signups,
                "{row}"
            );
            assert_eq!(
                stream.host.counter(&events("stable", "checkout")),
                0,
                "{row}"
            );
            assert_eq!(stream.host.counter(&decisions("canary")), 1, "{row}");
        }
    }

    #[test]
    fn without_configured_events_neither_the_response_nor_the_clock_is_read() {
        for weight in [0, 10000] {
            let document = document("", &format!(r#", "weightBp": {weight}"#));
            let mut stream = stream(Some(&document), user(b"alice"));
            exchange(
                &mut stream,
                &[(b":status", b"404"), (b"x-cohort-events", b"checkout")],
            );
            let want = if weight == 0 { "stable" } else { "canary" };
            let unit = place("web", b"alice").unit_value();
            assert_eq!(
                stream.host.calls,
                [
                    "request headers".to_owned(),
                    format!("replace {ROUTING}: {want}"),
                    format!("replace {UNIT_HEADER}: {unit}"),
                    format!("increment {} by 1", decisions(want)),
                ],
                "{weight}bp"
            );
        }
    }

    #[test]
    fn the_decision_is_counted_with_no_response_at_all() {
        // An upstream that never answers: Envoy calls no response callback.
        for events in ["", r#", "events": ["checkout"]"#] {
            for (weight, version) in [(0, "stable"), (10000, "canary")] {
                let document = document(events, &format!(r#", "weightBp": {weight}"#));
                let mut stream = stream(Some(&document), user(b"alice"));
                assert_eq!(stream.on_http_request_headers(0, false), Action::Continue);
                let row = format!("{events} {weight}bp");
                assert_eq!(stream.host.counter(&decisions(version)), 1, "{row}");
                let other = if version == "stable" {
                    "canary"
                } else {
                    "stable"
                };
                assert_eq!(stream.host.counter(&decisions(other)), 0, "{row}");
                assert!(!stream.host.called("clock"), "{row}");
            }
        }
    }

    #[test]
    fn events_are_counted_for_the_version_decided() {
        let document = |weight: u32| {
            document(
                r#", "events": ["checkout"]"#,
                &format!(r#", "weightBp": {weight}"#),
            )
        };
        for (weight, version, other) in [(0, "stable", "canary"), (10000, "canary", "stable")] {
            let mut stream = stream(Some(&document(weight)), user(b"alice"));
            exchange(
                &mut stream,
                &[(b":status", b"500"), (b"x-cohort-events", b"checkout")],
            );
            assert_eq!(stream.host.counter(&events(version, "checkout")), 1);
            assert_eq!(stream.host.counter(&events(other, "checkout")), 0);
            assert_eq!(stream.host.counter(&decisions(version)), 1);
            // The events header by name, nothing else of the response, and no clock.
            let reads: Vec<&String> = stream
                .host
                .calls
                .iter()
                .filter(|call| call.starts_with("response") || *call == "clock")
                .collect();
            assert_eq!(reads, ["response header x-cohort-events"], "{weight}bp");
        }
    }

    #[test]
    fn forced_and_anonymous_requests_count_one_decision() {
        let forced = format!("canary:{TOKEN}");
        // (request headers, version decided)
        type Row = (Vec<(&'static [u8], Vec<u8>)>, &'static str);
        let table: Vec<Row> = vec![
            (
                vec![
                    (b":authority", b"web".to_vec()),
                    (b"x-user-id", b"alice".to_vec()),
                    (FORCE.as_bytes(), forced.clone().into_bytes()),
                ],
                "canary",
            ),
            // Anonymous: a weight of 0 sends the fresh id to stable.
            (vec![(b":authority", b"web".to_vec())], "stable"),
        ];
        for (request, version) in &table {
            let pairs: Vec<(&[u8], &[u8])> = request
                .iter()
                .map(|(name, value)| (*name, value.as_slice()))
                .collect();
            let mut stream = stream(
                Some(&document("", r#", "weightBp": 0"#)),
                FakeHost::with_request(&pairs),
            );
            exchange(&mut stream, &[(b":status", b"200")]);
            assert_eq!(routed(&stream.host).as_deref(), Some(*version));
            let counted: Vec<&String> = stream
                .host
                .calls
                .iter()
                .filter(|call| call.contains(DECISIONS_TOTAL))
                .collect();
            assert_eq!(
                counted,
                [&format!("increment {} by 1", decisions(version))],
                "{version}"
            );
        }
    }

    #[test]
    fn hostile_headers_never_panic_nor_route_as_the_client_asks() {
        let huge = vec![b'a'; 1 << 20];
        let many_cookies = "c=1; ".repeat(50_000).into_bytes();
        let commas = vec![b','; 1 << 20];
        let mut many_headers = vec![(b":authority".to_vec(), b"web".to_vec())];
        many_headers.extend((0..10_000).map(|i| (format!("x-h{i}").into_bytes(), vec![0xff; 16])));
        // (name, request headers, response headers)
        type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
        let pair = |name: &[u8], value: &[u8]| (name.to_vec(), value.to_vec());
        let cases: Vec<(&str, Pairs, Pairs)> = vec![
            (
                "huge key",
                vec![
                    pair(b":authority", b"web"),
                    pair(b"x-user-id", &huge),
                    pair(ROUTING.as_bytes(), b"evil"),
                ],
                vec![pair(b":status", &huge)],
            ),
            (
                "huge cookie header",
                vec![pair(b":authority", b"web"), pair(b"cookie", &many_cookies)],
                vec![pair(b":status", b"200"), pair(b"x-cohort-events", &commas)],
            ),
            (
                "non-UTF-8 everywhere",
                vec![
                    pair(b":authority", b"w\xffeb"),
                    pair(b"\xff\xfe", b"\x00\xff"),
                    pair(b"x-user-id", b"\xc3\x28"),
                    pair(ROUTING.as_bytes(), b"\xff"),
                    pair(FORCE.as_bytes(), b"\xff:\xfe"),
                ],
                vec![
                    pair(b":status", b"\xff\xfe"),
                    pair(b"x-cohort-events", b"\xff,\xfe,checkout"),
                ],
            ),
            (
                "non-UTF-8 key on a claimed host",
                vec![
                    pair(b":authority", b"web:80"),
                    pair(b"x-user-id", b"\xc3\x28\xff"),
                    pair(FORCE.as_bytes(), b"canary:\xff"),
                ],
                vec![pair(b"\xff", b"\xff")],
            ),
            ("10,000 headers", many_headers, vec![]),
            ("nothing at all", vec![], vec![]),
        ];
        for events in ["", r#", "events": ["checkout"]"#] {
            let document = document(events, r#", "weightBp": 5000"#);
            for (name, request, response) in &cases {
                let mut host = FakeHost::default();
                host.request = request.clone();
                let mut stream = stream(Some(&document), host);
                assert_eq!(stream.on_http_request_headers(0, false), Action::Continue);
                stream.host.response = response.clone();
                assert_eq!(stream.on_http_response_headers(0, false), Action::Continue);
                let routed = routed(&stream.host);
                assert!(
                    matches!(routed.as_deref(), None | Some("stable" | "canary")),
                    "{name}: {routed:?}"
                );
                assert!(stream.host.request_header(FORCE).is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn a_header_map_the_host_garbles_reads_as_empty() {
        let good = cohort_core::header_pairs::serialize(&[
            (b":authority", b"web"),
            (b"x-user-id", b"alice"),
        ]);
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1, 0],
            u32::MAX.to_le_bytes().to_vec(),
            good[..good.len() - 1].to_vec(),
            vec![0xff; 4096],
        ];
        for raw in cases {
            let mut host = FakeHost::default();
            host.raw_request = Some(raw.clone());
            let mut stream = stream(Some(&document("", r#", "weightBp": 10000"#)), host);
            exchange(&mut stream, &[(b":status", b"200")]);
            // An empty map names no host, so no rollout routes it.
            assert_eq!(stream.host.calls, ["request headers"], "{raw:?}");
        }
    }
}
