//! What each fuzz target checks, as plain functions: the libFuzzer binaries in `fuzz_targets/`
//! call them, and `tests/replay.rs` runs the committed seeds through them on any toolchain.
//!
//! Beyond "no panic", every function asserts properties of the result:
//! - [`config`]: a document that `serde_json` does not read as an object is refused as one
//!   error naming the whole document, any other error names its field; `parse` is `parse_wire`
//!   then `validate`; what serde serializes reads back as the same config; an accepted config
//!   keeps its bounds; a refusal never echoes the force token.
//! - [`decide`]: the decision is deterministic and explained by its reason; a forced version
//!   needs the exact `VERSION:TOKEN`; placements stay inside their ranges.
//! - [`cookie`]: a found value is a non-empty, bounded slice of the header, under the asked name.
//! - [`header_map`]: the host's serialized header map reads without trusting its sizes.
//! - [`place`]: the placement is the documented formula of the murmur3 hash, core's murmur3
//!   (read over salt, `:` and key in place) equals the `murmur3` crate's over them put together,
//!   raising the weight only adds users, and whole percentages agree with Unleash.

use std::sync::OnceLock;

use arbitrary::Arbitrary;

use cohort_core::bucket::{murmur3_32, place as place_key, placement_of_hash, FULL_WEIGHT_BP};
use cohort_core::config::{
    parse, parse_wire, validate, Anonymous, Compiled, ConfigErrors, FilterConfig, MAX_KEY_BYTES,
    MIN_FORCE_TOKEN_BYTES,
};
use cohort_core::decide::{cookie_value, decide as decide_request, Reason, RequestView, Side};
use cohort_core::header_pairs::{self, HeaderPairs};

/// Config parsing and validation of arbitrary bytes.
pub fn config(data: &[u8]) {
    let wire = parse_wire(data);
    refusal_names_the_document_only_when_it_is_no_object(data, &wire);
    let compiled = parse(data);
    let wire = match wire {
        Ok(wire) => wire,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal without a reason");
            assert_eq!(compiled, Err(errors), "parse differs from parse_wire");
            return;
        }
    };
    assert_eq!(compiled, validate(&wire), "parse differs from validate");

    // What serde serializes reads back as the same config, and validates the same way.
    let json = serde_json::to_vec(&wire).unwrap_or_default();
    assert_eq!(
        parse_wire(&json).as_ref(),
        Ok(&wire),
        "serialize round trip"
    );

    match &compiled {
        Ok(compiled) => check_compiled(&wire, compiled),
        Err(errors) => check_refusal(&wire, errors),
    }
}

/// The whole document is refused, as one error, exactly when `serde_json` cannot read it or
/// reads something other than an object; otherwise every error names a field.
fn refusal_names_the_document_only_when_it_is_no_object(
    data: &[u8],
    wire: &Result<FilterConfig, ConfigErrors>,
) {
    let object = serde_json::from_slice::<serde_json::Value>(data).is_ok_and(|v| v.is_object());
    match wire {
        Ok(wire) => assert!(
            object,
            "a document that is no JSON object was read: {wire:?}"
        ),
        Err(errors) if object => assert!(
            errors.0.iter().all(|error| error.field != "(document)"),
            "{errors}"
        ),
        Err(errors) => {
            assert_eq!(errors.0.len(), 1, "{errors}");
            assert!(
                errors.0.iter().all(|error| error.field == "(document)"),
                "{errors}"
            );
        }
    }
}

fn check_compiled(wire: &FilterConfig, compiled: &Compiled) {
    assert_eq!(compiled.rollouts.len(), wire.rollouts.len());
    assert_eq!(
        compiled.routing_header,
        wire.routing_header.to_ascii_lowercase()
    );
    assert_ne!(compiled.routing_header, compiled.force_header);
    if let Some(token) = &compiled.force_token {
        assert!(token.len() >= MIN_FORCE_TOKEN_BYTES);
        assert!(token.iter().all(u8::is_ascii_graphic));
    }
    let mut hosts = std::collections::BTreeSet::new();
    for (rollout, (name, entry)) in compiled.rollouts.iter().zip(&wire.rollouts) {
        assert_eq!(&rollout.name, name);
        assert_eq!(rollout.namespace, entry.namespace);
        assert!(cohort_core::config::is_namespace(&rollout.namespace));
        // The namespace is a metric tag: nothing in it can end the tag or start another.
        assert!(!rollout.namespace.contains(";.;") && !rollout.namespace.contains("=.="));
        assert_eq!(rollout.weight_bp, entry.weight_bp);
        assert!(rollout.weight_bp <= FULL_WEIGHT_BP);
        assert_eq!(rollout.allow_cohorts >> 100, 0, "a cohort above 99");
        assert_ne!(rollout.stable_version, rollout.canary_version);
        assert!(rollout.allow_keys.windows(2).all(|w| w[0] < w[1]));
        for host in &entry.hosts {
            assert!(hosts.insert(host.clone()), "host {host} claimed twice");
        }
    }
    // A compiled config serves a request.
    let outcome = decide_request(compiled, b"fuzz", &Headers(Vec::new()), &mut || {
        "fuzz-id".to_owned()
    });
    assert!(!outcome.force_denied);
}

/// Validation messages name fields and values, but never the force token: with a different
/// token of the same validity, the messages are the same.
fn check_refusal(wire: &FilterConfig, errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "a refusal without a reason");
    let Some(token) = wire.force_token.as_deref() else {
        return;
    };
    // Each visible ASCII character moved to the next one (`~` wraps to `!`), others kept.
    let other: String = token
        .chars()
        .map(|c| match c {
            '!'..='}' => char::from(c as u8 + 1),
            '~' => '!',
            c => c,
        })
        .collect();
    let mut changed = wire.clone();
    changed.force_token = Some(other);
    let shown = errors.to_string();
    let Err(again) = validate(&changed) else {
        panic!("the token's content changed the verdict: {shown}")
    };
    assert_eq!(shown, again.to_string(), "the force token is echoed");
}

/// The force token of the decide configs.
pub const TOKEN: &str = "0123456789abcdef0123";

/// Configs the decision is fuzzed against: every identity and anonymous mode, allow-lists,
/// named and wildcard hosts, custom header names, forcing on and off.
pub const DECIDE_CONFIGS: [&str; 4] = [
    r#"{"version": 1, "forceToken": "0123456789abcdef0123",
        "identity": [{"kind": "header", "name": "x-user-id"}, {"kind": "cookie", "name": "uid"}],
        "rollouts": {
            "checkout": {"hosts": ["checkout", "pay.example.com"], "weightBp": 500,
                         "allowKeys": ["alice", "bob"], "allowCohorts": [3, 99]},
            "web": {"hosts": ["*"], "weightBp": 5000, "stableVersion": "v1", "canaryVersion": "v2"}
        }}"#,
    r#"{"version": 1, "forceToken": "0123456789abcdef0123", "anonymous": {"mode": "stable"},
        "routingHeader": "X-Route", "forceHeader": "X-Force",
        "identity": [{"kind": "cookie", "name": "session"}],
        "rollouts": {"api": {"hosts": ["api.shop.svc"], "weightBp": 0,
                             "identity": [{"kind": "header", "name": "x-tenant"}]}}}"#,
    r#"{"version": 1,
        "identity": [{"kind": "header", "name": "x-user-id"}],
        "anonymous": {"cookieName": "anon", "maxAgeSeconds": 60},
        "rollouts": {"all": {"hosts": ["*"], "weightBp": 10000, "salt": "s"}}}"#,
    r#"{"version": 1, "forceToken": "0123456789abcdef0123",
        "rollouts": {"a": {"hosts": ["a"], "weightBp": 1}, "b": {"hosts": ["b.ns"], "weightBp": 9999}}}"#,
];

fn decide_configs() -> &'static [Compiled] {
    static CONFIGS: OnceLock<Vec<Compiled>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        DECIDE_CONFIGS
            .iter()
            .map(|c| match parse(c.as_bytes()) {
                Ok(compiled) => compiled,
                Err(errors) => panic!("fuzz config refused: {errors}"),
            })
            .collect()
    })
}

/// A request header name: the ones the configs read, or any other.
#[derive(Debug, Arbitrary)]
pub enum Name<'a> {
    /// `x-user-id`
    UserId,
    /// `x-tenant`
    Tenant,
    /// `cookie`
    Cookie,
    /// The config's force header.
    Force,
    /// The config's routing header.
    Routing,
    /// Anything.
    Other(&'a str),
}

/// A force header value built around the real token, so the accepting path is reached.
#[derive(Debug, Arbitrary)]
pub enum Force<'a> {
    /// Raw bytes.
    Raw(&'a [u8]),
    /// `VERSION:TOKEN` with the token edited.
    Token {
        /// 0: the rollout's canary name, 1: its stable name, else `version`.
        pick: u8,
        /// Used when `pick` is neither.
        version: &'a [u8],
        /// How the token is changed.
        edit: TokenEdit,
    },
}

/// How a force header's token differs from the real one.
#[derive(Debug, Arbitrary)]
pub enum TokenEdit {
    /// The token itself.
    Exact,
    /// One byte replaced (index modulo the length).
    Flip(usize, u8),
    /// The first `n` bytes (modulo the length).
    Prefix(usize),
    /// The token plus one byte.
    Append(u8),
    /// Nothing after the colon.
    Empty,
}

/// One fuzzed request.
#[derive(Debug, Arbitrary)]
pub struct DecideInput<'a> {
    /// Which of [`DECIDE_CONFIGS`].
    pub config: u8,
    /// The first rollout's weight (modulo 10,001), replacing the configured one when `Some`.
    pub weight_bp: Option<u16>,
    /// `:authority`
    pub authority: &'a [u8],
    /// Request headers, in order.
    pub headers: Vec<(Name<'a>, &'a [u8])>,
    /// A force header, placed first.
    pub force: Option<Force<'a>>,
}

struct Headers(Vec<(String, Vec<u8>)>);

impl RequestView for Headers {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// The per-request decision on arbitrary headers and authority.
pub fn decide(input: &DecideInput<'_>) {
    let configs = decide_configs();
    let mut config = configs[usize::from(input.config) % configs.len()].clone();
    if let (Some(weight), Some(first)) = (input.weight_bp, config.rollouts.first_mut()) {
        first.weight_bp = u32::from(weight) % (FULL_WEIGHT_BP + 1);
    }
    let name = |n: &Name<'_>| match n {
        Name::UserId => "x-user-id".to_owned(),
        Name::Tenant => "x-tenant".to_owned(),
        Name::Cookie => "cookie".to_owned(),
        Name::Force => config.force_header.clone(),
        Name::Routing => config.routing_header.clone(),
        Name::Other(other) => (*other).to_owned(),
    };
    let mut headers = Vec::new();
    if let Some(force) = &input.force {
        let value = match force {
            Force::Raw(raw) => raw.to_vec(),
            Force::Token {
                pick,
                version,
                edit,
            } => {
                let rollout = cohort_core::decide::find_rollout(&config, input.authority);
                let version = match (pick, rollout) {
                    (0, Some((_, r))) => r.canary_version.as_bytes().to_vec(),
                    (1, Some((_, r))) => r.stable_version.as_bytes().to_vec(),
                    _ => version.to_vec(),
                };
                let mut token = TOKEN.as_bytes().to_vec();
                match *edit {
                    TokenEdit::Exact => {}
                    TokenEdit::Flip(at, byte) => {
                        let at = at % token.len();
                        token[at] = byte;
                    }
                    TokenEdit::Prefix(n) => token.truncate(n % token.len()),
                    TokenEdit::Append(byte) => token.push(byte),
                    TokenEdit::Empty => token.clear(),
                }
                [version, b":".to_vec(), token].concat()
            }
        };
        headers.push((config.force_header.clone(), value));
    }
    headers.extend(input.headers.iter().map(|(n, v)| (name(n), v.to_vec())));
    // The filter reads the headers as the host serializes them.
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_slice()))
        .collect();
    let serialized = header_pairs::serialize(&pairs);
    let request = HeaderPairs::parse(&serialized);
    assert!(
        request.iter().eq(pairs.iter().copied()),
        "header map round trip"
    );

    let mut issued = 0;
    let outcome = decide_request(&config, input.authority, &request, &mut || {
        issued += 1;
        format!("issued-{issued}")
    });
    assert!(issued <= 1, "new_id called {issued} times");
    let again = decide_request(&config, input.authority, &request, &mut || {
        "issued-1".to_owned()
    });
    assert_eq!(outcome, again, "the same request decided twice differently");

    let force = request.header(&config.force_header);
    let Some(decision) = &outcome.decision else {
        assert_eq!(outcome.force_denied, force.is_some());
        assert!(cohort_core::decide::find_rollout(&config, input.authority).is_none());
        return;
    };
    let rollout = decision.rollout;
    assert!(std::ptr::eq(
        rollout,
        &config.rollouts[decision.rollout_index]
    ));
    assert_eq!(
        outcome.force_denied,
        force.is_some() && decision.reason != Reason::Forced
    );
    if let Some(placement) = decision.placement {
        assert!(placement.cohort < 100 && placement.bucket < 10_000);
        assert_eq!(placement.bucket / 100, u16::from(placement.cohort));
    }
    if let Some(id) = &decision.issued_id {
        assert!(matches!(config.anonymous, Anonymous::Cookie { .. }));
        assert_eq!(
            decision.placement,
            Some(place_key(&rollout.salt, id.as_bytes()))
        );
    }
    match decision.reason {
        Reason::Forced => {
            // Only the exact `VERSION:TOKEN` of a configured token chooses a version.
            let token = config.force_token.as_deref();
            let Some(token) = token else {
                panic!("forced without a configured token")
            };
            let expected = [decision.version().as_bytes(), b":", token].concat();
            assert_eq!(force, Some(expected.as_slice()), "forced by {force:?}");
        }
        Reason::CanaryOff => {
            assert_eq!((decision.side, rollout.weight_bp), (Side::Stable, 0));
            assert!(decision.placement.is_some());
        }
        Reason::AllowListed => {
            assert_eq!(decision.side, Side::Canary);
            assert!(rollout.weight_bp > 0);
            assert!(decision.placement.is_some());
        }
        Reason::Bucketed => {
            let Some(placement) = decision.placement else {
                panic!("bucketed without a placement")
            };
            assert!(rollout.weight_bp > 0);
            assert_eq!(
                decision.side == Side::Canary,
                placement.is_canary(rollout.weight_bp)
            );
        }
        Reason::Anonymous => {
            assert_eq!(decision.side, Side::Stable);
            assert_eq!(config.anonymous, Anonymous::Stable);
            assert_eq!(decision.placement, None);
        }
    }
}

/// One fuzzed `Cookie` header lookup.
#[derive(Debug, Arbitrary)]
pub struct CookieInput<'a> {
    /// 0..=2 pick a usual name (`uid`, `cohort-id`, `session`); else `other`.
    pub pick: u8,
    /// The cookie name when `pick` is not a usual one.
    pub other: &'a [u8],
    /// The `Cookie` header.
    pub header: &'a [u8],
}

/// Cookie parsing of arbitrary headers and names.
pub fn cookie(input: &CookieInput<'_>) {
    let name: &[u8] = match input.pick {
        0 => b"uid",
        1 => b"cohort-id",
        2 => b"session",
        _ => input.other,
    };
    let header = input.header;
    let Some(value) = cookie_value(header, name) else {
        return;
    };
    assert!(!value.is_empty() && value.len() <= MAX_KEY_BYTES);
    assert!(!value.contains(&b';'), "a value spans pairs");
    // A slice of the header itself.
    let start = value.as_ptr() as usize - header.as_ptr() as usize;
    assert!(start + value.len() <= header.len());
    assert_eq!(&header[start..start + value.len()], value);
    // ... inside a pair named `name`.
    let pair_start = header[..start]
        .iter()
        .rposition(|&b| b == b';')
        .map_or(0, |i| i + 1);
    let pair = &header[pair_start..start];
    let eq = pair.iter().position(|&b| b == b'=');
    let Some(eq) = eq else {
        panic!("no '=' before the value")
    };
    assert_eq!(pair[..eq].trim_ascii(), name);
}

/// One fuzzed placement.
#[derive(Debug, Arbitrary)]
pub struct PlaceInput<'a> {
    /// The salt.
    pub salt: &'a str,
    /// The user key.
    pub key: &'a [u8],
    /// Two weights (modulo 10,001).
    pub weights: (u16, u16),
}

/// Bucketing of arbitrary salts and keys.
pub fn place(input: &PlaceInput<'_>) {
    let placement = place_key(input.salt, input.key);
    let joined = [input.salt.as_bytes(), b":", input.key].concat();
    let hash = murmur3_32(&joined);
    let reference = murmur3::murmur3_32(&mut std::io::Cursor::new(&joined), 0).unwrap_or(!hash);
    assert_eq!(
        hash, reference,
        "core's murmur3 differs from the crate's over one buffer"
    );
    assert_eq!(placement, placement_of_hash(hash));
    assert_eq!(u32::from(placement.cohort), hash % 100);
    assert_eq!(
        u32::from(placement.bucket),
        (hash % 100) * 100 + (hash / 100) % 100
    );
    let low = u32::from(input.weights.0.min(input.weights.1)) % (FULL_WEIGHT_BP + 1);
    let high = u32::from(input.weights.0.max(input.weights.1)) % (FULL_WEIGHT_BP + 1);
    let (low, high) = (low.min(high), low.max(high));
    assert!(
        !placement.is_canary(low) || placement.is_canary(high),
        "raising {low} → {high} bp removed a user"
    );
    assert!(!placement.is_canary(0) && placement.is_canary(FULL_WEIGHT_BP));
    let percent = high / 100;
    assert_eq!(placement.is_canary(percent * 100), hash % 100 < percent);
}

/// The host's serialized header map, as arbitrary bytes: read without panicking, every pair a
/// slice of the input, and what it reads serializes back to a map that reads the same.
pub fn header_map(data: &[u8]) {
    let map = HeaderPairs::parse(data);
    let pairs: Vec<(&[u8], &[u8])> = map.iter().collect();
    let within = |slice: &[u8]| {
        let (start, end) = (
            slice.as_ptr() as usize,
            slice.as_ptr() as usize + slice.len(),
        );
        let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        slice.is_empty() || (lo <= start && end <= hi)
    };
    assert!(pairs.iter().all(|(n, v)| within(n) && within(v)));
    let again = header_pairs::serialize(&pairs);
    assert!(HeaderPairs::parse(&again).iter().eq(pairs.iter().copied()));
    for (name, _) in &pairs {
        if let Ok(name) = std::str::from_utf8(name) {
            let first = pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| *v);
            assert_eq!(map.get(name), first, "lookup of {name:?}");
        }
    }
}
