//! The per-request decision: which rollout a request belongs to, whose request it is, and which
//! version serves it. Pure: the request is read through [`RequestView`], so the filter supplies
//! Envoy's headers and tests supply a table.

use subtle::ConstantTimeEq;

use crate::bucket::{place, Placement};
use crate::config::{Anonymous, Compiled, HostPattern, Identity, Rollout, MAX_KEY_BYTES};

/// Read access to the request headers.
pub trait RequestView {
    /// The value of a request header (lowercase name) as raw bytes.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// The two versions of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The current version.
    Stable,
    /// The new version.
    Canary,
}

/// Why a request got its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A force header with the right token.
    Forced,
    /// The canary weight is 0: everyone is on stable.
    CanaryOff,
    /// The key or its cohort is allow-listed.
    AllowListed,
    /// The key's bucket against the weight.
    Bucketed,
    /// No key and the anonymous policy is `stable`.
    Anonymous,
}

/// The decision for a request that belongs to a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'c> {
    /// The rollout the request's host belongs to.
    pub rollout: &'c Rollout,
    /// Its index in [`Compiled::rollouts`].
    pub rollout_index: usize,
    /// The version that serves it.
    pub side: Side,
    /// Why.
    pub reason: Reason,
    /// The key's placement, when a key was found or issued (a forced request's too, when it
    /// carries a key).
    pub placement: Option<Placement>,
    /// A new anonymous id to return in a `Set-Cookie`.
    pub issued_id: Option<String>,
}

impl Decision<'_> {
    /// The routing header value for the chosen side.
    pub fn version(&self) -> &str {
        match self.side {
            Side::Stable => &self.rollout.stable_version,
            Side::Canary => &self.rollout.canary_version,
        }
    }
}

/// Everything the filter needs to act on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<'c> {
    /// `None` when no rollout claims the host: the routing header is removed, nothing else.
    pub decision: Option<Decision<'c>>,
    /// A force header was present but not honoured.
    pub force_denied: bool,
}

/// Decides one request. `authority` is the `:authority` header; `new_id` makes a random id for
/// an anonymous user (called at most once).
pub fn decide<'c>(
    config: &'c Compiled,
    authority: &[u8],
    request: &dyn RequestView,
    new_id: &mut dyn FnMut() -> String,
) -> Outcome<'c> {
    let force = request.header(&config.force_header);
    let Some((rollout_index, rollout)) = find_rollout(config, authority) else {
        return Outcome {
            decision: None,
            force_denied: force.is_some(),
        };
    };
    let mut decision = Decision {
        rollout,
        rollout_index,
        side: Side::Stable,
        reason: Reason::Bucketed,
        placement: None,
        issued_id: None,
    };
    let mut force_denied = false;
    if let Some(value) = force {
        match forced_side(config, rollout, value) {
            Some(side) => {
                decision.side = side;
                decision.reason = Reason::Forced;
                // Forcing picks the version, not the unit: a forced user with a key keeps the
                // unit its key puts it in. No id is issued for a forced request.
                decision.placement = user_key(&rollout.identity, &config.anonymous, request)
                    .map(|key| place(&rollout.salt, key));
                return Outcome {
                    decision: Some(decision),
                    force_denied,
                };
            }
            None => force_denied = true,
        }
    }

    let mut issued_id = None;
    let key = match (
        user_key(&rollout.identity, &config.anonymous, request),
        &config.anonymous,
    ) {
        (Some(key), _) => key,
        (None, Anonymous::Cookie { .. }) => issued_id.insert(new_id()).as_bytes(),
        (None, Anonymous::Stable) => {
            decision.reason = Reason::Anonymous;
            return Outcome {
                decision: Some(decision),
                force_denied,
            };
        }
    };
    let placement = place(&rollout.salt, key);
    decision.placement = Some(placement);
    (decision.side, decision.reason) = if rollout.weight_bp == 0 {
        (Side::Stable, Reason::CanaryOff)
    } else if rollout.allow_cohorts & (1u128 << placement.cohort) != 0
        || rollout
            .allow_keys
            .binary_search_by(|allowed| allowed.as_slice().cmp(key))
            .is_ok()
    {
        (Side::Canary, Reason::AllowListed)
    } else if placement.is_canary(rollout.weight_bp) {
        (Side::Canary, Reason::Bucketed)
    } else {
        (Side::Stable, Reason::Bucketed)
    };
    decision.issued_id = issued_id;
    Outcome {
        decision: Some(decision),
        force_denied,
    }
}

/// The rollout claiming `authority`: a named host first, then a `*` rollout.
pub fn find_rollout<'c>(config: &'c Compiled, authority: &[u8]) -> Option<(usize, &'c Rollout)> {
    let host = host_of(authority);
    let mut wildcard = None;
    for (index, rollout) in config.rollouts.iter().enumerate() {
        for pattern in &rollout.hosts {
            match pattern {
                HostPattern::Name(name)
                    if host_matches(name.as_bytes(), rollout.namespace.as_bytes(), host) =>
                {
                    return Some((index, rollout))
                }
                HostPattern::Any if wildcard.is_none() => wildcard = Some((index, rollout)),
                _ => {}
            }
        }
    }
    wildcard
}

/// `authority` without its port and trailing dot.
fn host_of(authority: &[u8]) -> &[u8] {
    let host = if authority.first() == Some(&b'[') {
        // IPv6 literal: `[::1]:8080`.
        match authority.iter().position(|&b| b == b']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.iter().rposition(|&b| b == b':') {
            Some(colon) if authority[colon + 1..].iter().all(u8::is_ascii_digit) => {
                &authority[..colon]
            }
            _ => authority,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}

/// Whether `host` is `name` or one of its Kubernetes service forms. Case-insensitive.
///
/// A one-label `name` is read as Istio reads a short host name: relative to the namespace of the
/// object naming it, here the rollout's `namespace`. It matches `name`, `name.namespace`,
/// `name.namespace.svc` and `name.namespace.svc.DOMAIN` (any cluster domain), so a rollout never
/// claims the same-named service of another namespace or a public domain. With no namespace
/// (plain Envoy, no Kubernetes) there is nothing to read it relative to, so any non-empty
/// namespace label is taken.
///
/// A qualified `name` carries its own namespace, whatever the rollout's: `name.ns` also matches
/// `name.ns.svc[.DOMAIN]`, `name.ns.svc` also matches `name.ns.svc.DOMAIN`, and any other name
/// matches only itself.
///
/// Config validation refuses two rollouts matching one host through `service_key` (config.rs),
/// which reads names by these rules: change both together (its tests compare the two).
fn host_matches(name: &[u8], namespace: &[u8], host: &[u8]) -> bool {
    if host.len() < name.len() || !host[..name.len()].eq_ignore_ascii_case(name) {
        return false;
    }
    let rest = &host[name.len()..];
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix(b".") else {
        return false;
    };
    let is_rollout_namespace = |ns: &[u8]| {
        if namespace.is_empty() {
            !ns.is_empty()
        } else {
            ns.eq_ignore_ascii_case(namespace)
        }
    };
    let name_labels = name.iter().filter(|&&b| b == b'.').count() + 1;
    let mut labels = rest.split(|&b| b == b'.');
    match name_labels {
        // `name` + `ns` [+ `svc` [+ domain]]
        1 => match (labels.next(), labels.next()) {
            (Some(ns), None) => is_rollout_namespace(ns),
            (Some(ns), Some(svc)) => is_rollout_namespace(ns) && svc.eq_ignore_ascii_case(b"svc"),
            _ => false,
        },
        // `name.ns` + `svc` [+ domain]
        2 => labels
            .next()
            .is_some_and(|svc| svc.eq_ignore_ascii_case(b"svc")),
        // `name.ns.svc` + domain
        3 => name.len() >= 4 && name[name.len() - 4..].eq_ignore_ascii_case(b".svc"),
        _ => false,
    }
}

/// The side a force header value `VERSION:TOKEN` asks for, when its token is right.
fn forced_side(config: &Compiled, rollout: &Rollout, value: &[u8]) -> Option<Side> {
    let token = config.force_token.as_deref()?;
    let colon = value.iter().position(|&b| b == b':')?;
    let (version, given) = (&value[..colon], &value[colon + 1..]);
    if !bool::from(given.ct_eq(token)) {
        return None;
    }
    if version == rollout.canary_version.as_bytes() {
        Some(Side::Canary)
    } else if version == rollout.stable_version.as_bytes() {
        Some(Side::Stable)
    } else {
        None
    }
}

/// The first usable key among the identity sources, then the anonymous cookie.
fn user_key<'r>(
    identity: &[Identity],
    anonymous: &Anonymous,
    request: &'r dyn RequestView,
) -> Option<&'r [u8]> {
    let cookies = || request.header("cookie");
    for source in identity {
        let key = match source {
            Identity::Header(name) => request.header(name).filter(|value| usable_key(value)),
            Identity::Cookie(name) => cookies().and_then(|h| cookie_value(h, name.as_bytes())),
        };
        if key.is_some() {
            return key;
        }
    }
    match anonymous {
        Anonymous::Cookie { name, .. } => cookies().and_then(|h| cookie_value(h, name.as_bytes())),
        Anonymous::Stable => None,
    }
}

fn usable_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), unquoted; the first usable one
/// wins. Malformed pairs are skipped.
pub fn cookie_value<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii() != name {
            return None;
        }
        let value = pair[eq + 1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        usable_key(value).then_some(value)
    })
}

/// The `Set-Cookie` value that hands an anonymous user its id.
pub fn set_cookie_value(cookie_name: &str, id: &str, max_age_seconds: u64) -> String {
    format!("{cookie_name}={id}; Path=/; Max-Age={max_age_seconds}; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::parse;

    type Headerlist = &'static [(&'static str, &'static [u8])];

    struct Headers(BTreeMap<&'static str, Vec<u8>>);

    impl RequestView for Headers {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0.get(name).map(Vec::as_slice)
        }
    }

    fn headers(pairs: &[(&'static str, &[u8])]) -> Headers {
        Headers(pairs.iter().map(|(k, v)| (*k, v.to_vec())).collect())
    }

    fn config(extra: &str, rollout: &str) -> Compiled {
        let document = format!(
            r#"{{"version": 1, "forceToken": "0123456789abcdef",
                 "identity": [{{"kind": "header", "name": "x-user-id"}}, {{"kind": "cookie", "name": "uid"}}]
                 {extra},
                 "rollouts": {{"checkout": {{"hosts": ["checkout"] {rollout}}},
                               "other": {{"hosts": ["*"], "weightBp": 10000}}}}}}"#
        );
        match parse(document.as_bytes()) {
            Ok(compiled) => compiled,
            Err(errors) => panic!("{errors}"),
        }
    }

    fn run<'c>(config: &'c Compiled, authority: &[u8], request: &Headers) -> Outcome<'c> {
        decide(config, authority, request, &mut || "fresh-id".to_owned())
    }

    #[test]
    fn hosts() {
        // (namespace of the "checkout" rollout, authority, rollout that claims it)
        let table: &[(&str, &[u8], &str)] = &[
            // Plain Envoy: no namespace to read `checkout` relative to, so any one will do.
            ("", b"checkout", "checkout"),
            ("", b"checkout:8080", "checkout"),
            ("", b"CHECKOUT.", "checkout"),
            ("", b"checkout.shop", "checkout"),
            ("", b"checkout.billing", "checkout"),
            ("", b"checkout.io", "checkout"),
            ("", b"checkout.shop.svc", "checkout"),
            ("", b"checkout.shop.svc.cluster.local", "checkout"),
            ("", b"checkout.shop.svc.cluster.local:80", "checkout"),
            ("", b"checkout.shop.other", "other"),
            ("", b"checkout.example.com", "other"),
            ("", b"checkoutx", "other"),
            ("", b"checkout..svc", "other"),
            ("", b"[::1]:8080", "other"),
            ("", b"", "other"),
            ("", b"\xff\xfe:99", "other"),
            // Kubernetes: `checkout` is the service of the rollout's own namespace.
            ("shop", b"checkout", "checkout"),
            ("shop", b"checkout:8080", "checkout"),
            ("shop", b"CHECKOUT.", "checkout"),
            ("shop", b"checkout.shop", "checkout"),
            ("shop", b"Checkout.SHOP.Svc", "checkout"),
            ("shop", b"checkout.shop.svc.cluster.local", "checkout"),
            ("shop", b"checkout.shop.svc.cluster.local.:80", "checkout"),
            ("shop", b"checkout.shop.svc.corp.internal", "checkout"),
            ("shop", b"checkout.billing", "other"),
            ("shop", b"checkout.billing.svc", "other"),
            ("shop", b"checkout.billing.svc.cluster.local:8080", "other"),
            ("shop", b"checkout.io", "other"),
            ("shop", b"checkout.com:443", "other"),
            ("shop", b"checkout.shops", "other"),
            ("shop", b"checkout.sho", "other"),
            ("shop", b"checkout.shop.other", "other"),
            ("shop", b"checkoutx.shop", "other"),
        ];
        for (namespace, authority, want) in table {
            let config = config("", &format!(r#", "namespace": "{namespace}""#));
            let got = find_rollout(&config, authority).map(|(_, r)| r.name.as_str());
            assert_eq!(
                got,
                Some(*want),
                "namespace {namespace:?}, authority {}",
                String::from_utf8_lossy(authority)
            );
        }
    }

    #[test]
    fn qualified_host_names() {
        // A qualified name carries its own namespace, whatever the rollout's.
        // (host name, rollout namespace, host, matches)
        type Row = (&'static [u8], &'static [u8], &'static [u8], bool);
        let table: &[Row] = &[
            (b"checkout.shop", b"", b"checkout.shop", true),
            (
                b"checkout.shop",
                b"",
                b"checkout.shop.svc.cluster.local",
                true,
            ),
            (b"checkout.shop", b"", b"checkout.shop.other", false),
            (b"checkout.shop", b"billing", b"checkout.shop", true),
            (b"checkout.shop", b"billing", b"checkout.shop.svc", true),
            (b"checkout.shop", b"billing", b"checkout.billing", false),
            (
                b"checkout.shop.svc",
                b"",
                b"checkout.shop.svc.corp.internal",
                true,
            ),
            (
                b"checkout.shop.svc",
                b"billing",
                b"checkout.shop.svc.cluster.local",
                true,
            ),
            (b"api.example.com", b"", b"api.example.com", true),
            (b"api.example.com", b"shop", b"api.example.com", true),
            (b"api.example.com", b"", b"api.example.com.evil", false),
            (b"api.example.com", b"shop", b"api.example.com.shop", false),
        ];
        for (name, namespace, host, want) in table {
            assert_eq!(
                host_matches(name, namespace, host),
                *want,
                "{} in namespace {} vs {}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(namespace),
                String::from_utf8_lossy(host)
            );
        }
    }

    #[test]
    fn no_rollout_for_the_host() {
        let config = match parse(br#"{"version": 1, "rollouts": {"a": {"hosts": ["a"]}}}"#) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let outcome = run(&config, b"b", &headers(&[("x-cohort-force", b"canary:x")]));
        assert_eq!(
            outcome,
            Outcome {
                decision: None,
                force_denied: true
            }
        );
    }

    #[test]
    fn decisions() {
        // alice: cohort 9, bucket 930; bob: cohort 39, bucket 3964 (salt "checkout", see bucket.rs).
        // (rollout fields, request headers, version, reason, force denied)
        type Row = (&'static str, Headerlist, &'static str, Reason, bool);
        let table: &[Row] = &[
            (
                r#", "weightBp": 1000"#,
                &[("x-user-id", b"alice")],
                "canary",
                Reason::Bucketed,
                false,
            ),
            (
                r#", "weightBp": 930"#,
                &[("x-user-id", b"alice")],
                "stable",
                Reason::Bucketed,
                false,
            ),
            (
                r#", "weightBp": 931"#,
                &[("x-user-id", b"alice")],
                "canary",
                Reason::Bucketed,
                false,
            ),
            (
                r#", "weightBp": 1000"#,
                &[("x-user-id", b"bob")],
                "stable",
                Reason::Bucketed,
                false,
            ),
            (
                r#", "weightBp": 1000"#,
                &[("cookie", b"a=1; uid=alice")],
                "canary",
                Reason::Bucketed,
                false,
            ),
            // header before cookie
            (
                r#", "weightBp": 1000"#,
                &[("x-user-id", b"bob"), ("cookie", b"uid=alice")],
                "stable",
                Reason::Bucketed,
                false,
            ),
            // empty header falls through to the cookie
            (
                r#", "weightBp": 1000"#,
                &[("x-user-id", b""), ("cookie", b"uid=alice")],
                "canary",
                Reason::Bucketed,
                false,
            ),
            (
                r#", "weightBp": 0"#,
                &[("x-user-id", b"alice")],
                "stable",
                Reason::CanaryOff,
                false,
            ),
            (
                r#", "weightBp": 1, "allowKeys": ["bob"]"#,
                &[("x-user-id", b"bob")],
                "canary",
                Reason::AllowListed,
                false,
            ),
            (
                r#", "weightBp": 1, "allowCohorts": [39]"#,
                &[("x-user-id", b"bob")],
                "canary",
                Reason::AllowListed,
                false,
            ),
            (
                r#", "weightBp": 0, "allowKeys": ["bob"]"#,
                &[("x-user-id", b"bob")],
                "stable",
                Reason::CanaryOff,
                false,
            ),
            (
                r#", "weightBp": 0"#,
                &[
                    ("x-user-id", b"bob"),
                    ("x-cohort-force", b"canary:0123456789abcdef"),
                ],
                "canary",
                Reason::Forced,
                false,
            ),
            (
                r#", "weightBp": 10000"#,
                &[
                    ("x-user-id", b"bob"),
                    ("x-cohort-force", b"stable:0123456789abcdef"),
                ],
                "stable",
                Reason::Forced,
                false,
            ),
            (
                r#", "weightBp": 0"#,
                &[
                    ("x-user-id", b"bob"),
                    ("x-cohort-force", b"canary:0123456789abcdeX"),
                ],
                "stable",
                Reason::CanaryOff,
                true,
            ),
            (
                r#", "weightBp": 0"#,
                &[("x-user-id", b"bob"), ("x-cohort-force", b"canary")],
                "stable",
                Reason::CanaryOff,
                true,
            ),
            (
                r#", "weightBp": 0"#,
                &[
                    ("x-user-id", b"bob"),
                    ("x-cohort-force", b"v9:0123456789abcdef"),
                ],
                "stable",
                Reason::CanaryOff,
                true,
            ),
        ];
        for (rollout, request, version, reason, denied) in table {
            let config = config("", rollout);
            let outcome = run(&config, b"checkout", &headers(request));
            let Some(decision) = &outcome.decision else {
                panic!("no decision for {rollout}")
            };
            assert_eq!(
                (decision.version(), decision.reason, outcome.force_denied),
                (*version, *reason, *denied),
                "rollout {rollout}, request {request:?}"
            );
        }
    }

    #[test]
    fn anonymous_users() {
        let config_cookie = config("", r#", "weightBp": 10000"#);
        let outcome = run(&config_cookie, b"checkout", &headers(&[]));
        let decision = outcome.decision.unwrap();
        assert_eq!(decision.issued_id.as_deref(), Some("fresh-id"));
        assert_eq!(decision.placement, Some(place("checkout", b"fresh-id")));

        // A returning anonymous user is bucketed by the cookie it was given.
        let outcome = run(
            &config_cookie,
            b"checkout",
            &headers(&[("cookie", b"cohort-id=alice")]),
        );
        let decision = outcome.decision.unwrap();
        assert_eq!(
            (decision.issued_id, decision.placement),
            (None, Some(place("checkout", b"alice")))
        );

        let config_stable = config(
            r#", "anonymous": {"mode": "stable"}"#,
            r#", "weightBp": 10000"#,
        );
        let decision = run(&config_stable, b"checkout", &headers(&[]))
            .decision
            .unwrap();
        assert_eq!(
            (
                decision.version(),
                decision.reason,
                decision.issued_id.as_deref()
            ),
            ("stable", Reason::Anonymous, None)
        );
    }

    #[test]
    fn a_forced_user_keeps_the_placement_of_its_key() {
        let force: &[u8] = b"canary:0123456789abcdef";
        // (anonymous policy, request, placement)
        type Row = (
            &'static str,
            Vec<(&'static str, &'static [u8])>,
            Option<&'static [u8]>,
        );
        let table: Vec<Row> = vec![
            (
                "",
                vec![("x-user-id", b"bob"), ("x-cohort-force", force)],
                Some(b"bob"),
            ),
            (
                "",
                vec![("cookie", b"cohort-id=alice"), ("x-cohort-force", force)],
                Some(b"alice"),
            ),
            // No key: none is issued for a forced request, so there is no placement.
            ("", vec![("x-cohort-force", force)], None),
            (
                r#", "anonymous": {"mode": "stable"}"#,
                vec![("x-cohort-force", force)],
                None,
            ),
        ];
        for (anonymous, request, key) in table {
            let config = config(anonymous, r#", "weightBp": 0"#);
            let decision = run(&config, b"checkout", &headers(&request))
                .decision
                .unwrap();
            assert_eq!(
                (
                    decision.reason,
                    decision.side,
                    decision.issued_id.as_deref()
                ),
                (Reason::Forced, Side::Canary, None),
                "{request:?}"
            );
            assert_eq!(
                decision.placement,
                key.map(|key| place("checkout", key)),
                "{request:?}"
            );
        }
    }

    #[test]
    fn oversized_keys_are_ignored() {
        let config = config(
            r#", "anonymous": {"mode": "stable"}"#,
            r#", "weightBp": 10000"#,
        );
        let huge = vec![b'a'; MAX_KEY_BYTES + 1];
        let decision = run(&config, b"checkout", &headers(&[("x-user-id", &huge)]))
            .decision
            .unwrap();
        assert_eq!(decision.reason, Reason::Anonymous);
    }

    #[test]
    fn cookies() {
        type Row = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        let table: &[Row] = &[
            (b"uid=alice", b"uid", Some(b"alice")),
            (b"a=1;uid=alice", b"uid", Some(b"alice")),
            (b" a=1 ;  uid = \"alice\" ", b"uid", Some(b"alice")),
            (b"xuid=bob; uid=alice", b"uid", Some(b"alice")),
            (b"uid=; uid=carol", b"uid", Some(b"carol")),
            (b"uid", b"uid", None),
            (b";;;=;uid==x", b"uid", Some(b"=x")),
            (b"a=\xff\xfe; uid=\xc3\x28", b"uid", Some(b"\xc3\x28")),
            (b"", b"uid", None),
            (b"\"", b"uid", None),
        ];
        for (header, name, want) in table {
            assert_eq!(
                cookie_value(header, name),
                *want,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn set_cookie() {
        assert_eq!(
            set_cookie_value("cohort-id", "abc", 60),
            "cohort-id=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
    }
}
