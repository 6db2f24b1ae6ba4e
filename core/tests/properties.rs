//! Property tests of the contract: core's murmur3, read over parts in place, equals the
//! `murmur3` crate's over the parts put together wherever the bytes are split, raising the
//! weight only adds users (placement and the whole decision), buckets are uniform (chi-square
//! over the 100 cohorts and the 100 sub-buckets), and `validate` accepts what serde serializes
//! from a valid config, which `parse_wire` reads back unchanged.
//!
//! Native only (`cargo test -p cohort-core`); the wasm32 run covers the library's unit tests.

// Test code: a broken fixture should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use cohort_core::bucket::{murmur3_32, murmur3_32_of, place, FULL_WEIGHT_BP};
use cohort_core::config::{
    parse, parse_wire, validate, AnonymousPolicy, Compiled, FilterConfig, IdentitySource,
    RolloutConfig,
};
use cohort_core::decide::{decide, Reason, RequestView, Side};

/// Upper chi-square critical value, 99 degrees of freedom, p = 1e-6: a fair hash exceeds it
/// once in a million salts.
const CHI_SQUARE_UPPER: f64 = 180.79;
/// Lower critical value, 99 degrees of freedom, p = 1e-6: counts this even mean the "hash"
/// follows the keys' own order (say, `i % 100` for key `user-i`), which is not random either.
const CHI_SQUARE_LOWER: f64 = 45.83;
/// Keys per salt in the uniformity test: 200 expected per cohort.
const KEYS: u32 = 20_000;

/// Pearson's statistic of `counts` against a uniform expectation.
fn chi_square(counts: &[u32; 100]) -> f64 {
    let total: u32 = counts.iter().sum();
    let expected = f64::from(total) / 100.0;
    counts
        .iter()
        .map(|&n| (f64::from(n) - expected).powi(2) / expected)
        .sum()
}

#[test]
fn the_chi_square_bounds_catch_biased_and_ordered_buckets() {
    // Ten cohorts 30% over, ten 30% under: a mild bias for a rollout, a clear one here.
    let mut biased = [200u32; 100];
    for i in 0..10 {
        (biased[i], biased[10 + i]) = (260, 140);
    }
    assert!(
        chi_square(&biased) > CHI_SQUARE_UPPER,
        "{}",
        chi_square(&biased)
    );
    assert!(chi_square(&[200; 100]) < CHI_SQUARE_LOWER);
}

proptest! {
    // Fixed seed: the uniformity verdicts are the same on every run and machine.
    #![proptest_config(Config { cases: 32, rng_seed: RngSeed::Fixed(0x00c0_4027), ..Config::default() })]

    /// For any salt, sequential user keys spread evenly over the cohorts and over the
    /// sub-buckets within cohorts.
    #[test]
    fn buckets_are_uniform(salt in "\\PC{1,40}", prefix in "[a-zA-Z0-9@._-]{0,12}") {
        let mut cohorts = [0u32; 100];
        let mut within = [0u32; 100];
        for i in 0..KEYS {
            let placement = place(&salt, format!("{prefix}{i}").as_bytes());
            cohorts[usize::from(placement.cohort)] += 1;
            within[usize::from(placement.bucket % 100)] += 1;
        }
        for (what, counts) in [("cohorts", &cohorts), ("sub-buckets", &within)] {
            let statistic = chi_square(counts);
            prop_assert!(
                (CHI_SQUARE_LOWER..CHI_SQUARE_UPPER).contains(&statistic),
                "{what} for salt {salt:?}, keys {prefix:?}N: chi-square {statistic:.1}"
            );
        }
    }
}

struct Request(Vec<(&'static str, Vec<u8>)>);

impl RequestView for Request {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn one_rollout(
    weight_bp: u32,
    salt: &str,
    allow_cohorts: &[u32],
    allow_keys: &[String],
) -> Compiled {
    let mut config = FilterConfig::new();
    config.identity = vec![IdentitySource {
        kind: "header".into(),
        name: "x-user-id".into(),
    }];
    let mut rollout = RolloutConfig::new(vec!["*".into()], weight_bp);
    rollout.salt = Some(salt.to_owned());
    rollout.allow_cohorts = allow_cohorts.to_vec();
    rollout.allow_keys = allow_keys.to_vec();
    config.rollouts.insert("web".into(), rollout);
    validate(&config).unwrap()
}

proptest! {
    #![proptest_config(Config { cases: 4096, ..Config::default() })]

    /// core's murmur3, read over the parts where they lie (no buffer), is the `murmur3` crate's
    /// over the parts put together, wherever they are split.
    #[test]
    fn murmur3_matches_the_reference_crate(
        data in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let reference = murmur3::murmur3_32(&mut std::io::Cursor::new(&data), 0).unwrap();
        prop_assert_eq!(murmur3_32(&data), reference);
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parts = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            parts.push(&data[start..cut]);
            start = cut;
        }
        prop_assert_eq!(murmur3_32_of(&parts), reference);
    }
}

proptest! {
    /// Raising the weight only adds users: a placement in the canary at `low` is in it at any
    /// `high` above.
    #[test]
    fn raising_the_weight_only_adds_users(
        salt in "\\PC{1,40}",
        key in proptest::collection::vec(any::<u8>(), 0..64),
        a in 0..=FULL_WEIGHT_BP,
        b in 0..=FULL_WEIGHT_BP,
    ) {
        let (low, high) = (a.min(b), a.max(b));
        let placement = place(&salt, &key);
        prop_assert!(!placement.is_canary(low) || placement.is_canary(high));
    }

    /// The same through the whole per-request decision, allow-lists and anonymous users
    /// included: a request served by the canary at `low` is served by it at `high`.
    #[test]
    fn raising_the_weight_only_adds_requests(
        salt in "[a-z0-9]{1,12}",
        key in proptest::collection::vec(any::<u8>(), 0..40),
        allow_cohorts in proptest::collection::vec(0u32..100, 0..4),
        allow_keys in proptest::collection::vec("[a-z]{1,4}", 0..4),
        a in 0..=FULL_WEIGHT_BP,
        b in 0..=FULL_WEIGHT_BP,
    ) {
        let (low, high) = (a.min(b), a.max(b));
        let request = Request(vec![("x-user-id", key)]);
        let side = |weight_bp| {
            let config = one_rollout(weight_bp, &salt, &allow_cohorts, &allow_keys);
            let outcome = decide(&config, b"app", &request, &mut || "anonymous-id".to_owned());
            let decision = outcome.decision.unwrap();
            assert_ne!(decision.reason, Reason::Forced);
            decision.side
        };
        prop_assert!(side(low) == Side::Stable || side(high) == Side::Canary);
    }
}

/// RFC 9110 token characters other than letters and digits.
const TOKEN_MARKS: &str = "!#$%&'*+.^_`|~-";

fn header_name() -> impl Strategy<Value = String> {
    // `x-` keeps it clear of the reserved names (host, cookie, ...); mixed case is allowed.
    "[xX]-[a-zA-Z0-9-]{1,20}"
}

fn cookie_name() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9{}]{{1,24}}", regex_class(TOKEN_MARKS)))
        .unwrap()
        .prop_filter(
            "browsers drop __Host- and __Secure- cookies without Secure",
            |name| {
                let name = name.to_ascii_lowercase();
                !name.starts_with("__host-") && !name.starts_with("__secure-")
            },
        )
}

fn regex_class(chars: &str) -> String {
    chars
        .chars()
        .map(|c| format!("\\{c}"))
        .collect::<Vec<_>>()
        .join("")
}

fn identity() -> impl Strategy<Value = Vec<IdentitySource>> {
    let source = prop_oneof![
        header_name().prop_map(|name| IdentitySource {
            kind: "header".into(),
            name
        }),
        cookie_name().prop_map(|name| IdentitySource {
            kind: "cookie".into(),
            name
        }),
    ];
    proptest::collection::vec(source, 0..4)
}

fn version_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,63}"
}

/// A rollout whose hosts are made unique by the caller.
fn rollout(hosts: BTreeSet<String>) -> impl Strategy<Value = RolloutConfig> {
    (
        0..=FULL_WEIGHT_BP,
        proptest::option::of("\\PC{1,64}"),
        (version_name(), version_name()).prop_filter("versions differ", |(s, c)| s != c),
        proptest::option::of(identity()),
        proptest::collection::vec(0u32..100, 0..6),
        proptest::collection::vec("\\PC{1,40}", 0..6),
        proptest::option::of("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"),
    )
        .prop_map(
            move |(weight_bp, salt, (stable, canary), identity, cohorts, keys, namespace)| {
                RolloutConfig {
                    namespace: namespace.unwrap_or_default(),
                    service: None,
                    hosts: hosts.iter().cloned().collect(),
                    salt,
                    weight_bp,
                    stable_version: stable,
                    canary_version: canary,
                    identity,
                    allow_cohorts: cohorts,
                    allow_keys: keys,
                }
            },
        )
}

fn rollouts() -> impl Strategy<Value = BTreeMap<String, RolloutConfig>> {
    let name = "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?";
    let host_label = "[a-z0-9]([a-z0-9-]{0,15}[a-z0-9])?";
    proptest::collection::btree_map(
        name,
        (
            proptest::collection::btree_set(host_label, 1..4),
            any::<bool>(),
        ),
        0..4,
    )
    .prop_flat_map(move |named| {
        // Hosts carry their rollout's name, so no host is claimed twice; one rollout may add `*`.
        let mut wildcard_taken = false;
        let entries: Vec<_> = named
            .into_iter()
            .map(|(name, (labels, wildcard))| {
                let mut hosts: BTreeSet<String> =
                    labels.iter().map(|l| format!("{l}.{name}")).collect();
                if wildcard && !wildcard_taken {
                    wildcard_taken = true;
                    hosts.insert("*".into());
                }
                (name, rollout(hosts))
            })
            .collect();
        entries
            .into_iter()
            .map(|(name, strategy)| strategy.prop_map(move |r| (name.clone(), r)))
            .collect::<Vec<_>>()
            .prop_map(|pairs| pairs.into_iter().collect::<BTreeMap<_, _>>())
    })
}

/// Configs every field of which is valid.
fn valid_config() -> impl Strategy<Value = FilterConfig> {
    (
        (header_name(), header_name()).prop_filter("routing and force headers differ", |(r, f)| {
            !r.eq_ignore_ascii_case(f)
        }),
        proptest::option::of("[!-~]{16,48}"),
        identity(),
        (
            prop_oneof![Just("cookie".to_owned()), Just("stable".to_owned())],
            cookie_name(),
            1u64..=2 * 365 * 24 * 3600,
        ),
        header_name(),
        proptest::collection::btree_set("[A-Za-z0-9_-]{1,64}", 0..=32),
        rollouts(),
    )
        .prop_map(
            |(
                (routing, force),
                token,
                identity,
                (mode, cookie, max_age),
                events_header,
                events,
                rollouts,
            )| FilterConfig {
                version: 1,
                routing_header: routing,
                force_header: force,
                force_token: token,
                identity,
                anonymous: AnonymousPolicy {
                    mode,
                    cookie_name: cookie,
                    max_age_seconds: max_age,
                },
                events_header,
                events: events.into_iter().collect(),
                rollouts,
            },
        )
        .prop_filter(
            "no user key comes from the routing or force header",
            |config| {
                let rewritten = [&config.routing_header, &config.force_header];
                let sources = config.identity.iter().chain(
                    config
                        .rollouts
                        .values()
                        .flat_map(|rollout| rollout.identity.iter().flatten()),
                );
                sources
                    .filter(|source| source.kind == "header")
                    .all(|source| {
                        !rewritten
                            .iter()
                            .any(|header| header.eq_ignore_ascii_case(&source.name))
                    })
            },
        )
}

/// Configs with any strings and numbers where the valid ones have constrained ones.
fn any_config() -> impl Strategy<Value = FilterConfig> {
    (
        valid_config(),
        any::<u32>(),
        "\\PC{0,12}",
        proptest::option::of("\\PC{0,20}"),
        "\\PC{0,8}",
        any::<u64>(),
        proptest::collection::vec("\\PC{0,6}", 0..3),
        (
            any::<u32>(),
            "\\PC{0,8}",
            proptest::collection::vec(any::<u32>(), 0..3),
        ),
    )
        .prop_map(
            |(
                mut config,
                version,
                header,
                token,
                mode,
                max_age,
                events,
                (weight, host, cohorts),
            )| {
                config.version = version % 3;
                config.routing_header = header;
                config.force_token = token;
                config.anonymous.mode = mode;
                config.anonymous.max_age_seconds = max_age;
                config.events = events;
                if let Some(rollout) = config.rollouts.values_mut().next() {
                    rollout.weight_bp = weight;
                    rollout.hosts.push(host);
                    rollout.allow_cohorts = cohorts;
                }
                config
            },
        )
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    /// What serde serializes from a valid config reads back as the same config and validates,
    /// compiling to what the config says.
    #[test]
    fn validate_accepts_what_serialize_produces(config in valid_config()) {
        let json = serde_json::to_vec(&config).unwrap();
        prop_assert_eq!(parse_wire(&json), Ok(config.clone()));
        let compiled = match parse(&json) {
            Ok(compiled) => compiled,
            Err(errors) => panic!("refused: {errors}\n{}", String::from_utf8_lossy(&json)),
        };
        prop_assert_eq!(&compiled.routing_header, &config.routing_header.to_ascii_lowercase());
        prop_assert_eq!(&compiled.force_header, &config.force_header.to_ascii_lowercase());
        prop_assert_eq!(
            compiled.force_token.as_deref(),
            config.force_token.as_deref().map(str::as_bytes)
        );
        prop_assert_eq!(compiled.rollouts.len(), config.rollouts.len());
        for (compiled, (name, rollout)) in compiled.rollouts.iter().zip(&config.rollouts) {
            prop_assert_eq!(&compiled.name, name);
            prop_assert_eq!(compiled.weight_bp, rollout.weight_bp);
            prop_assert_eq!(&compiled.salt, rollout.salt.as_ref().unwrap_or(name));
            prop_assert_eq!(compiled.hosts.len(), rollout.hosts.len());
        }
    }

    /// Any config, valid or not, survives the round trip, and is judged the same either way.
    #[test]
    fn any_config_round_trips_and_validates_the_same(config in any_config()) {
        let json = serde_json::to_vec(&config).unwrap();
        prop_assert_eq!(parse_wire(&json), Ok(config.clone()));
        prop_assert_eq!(parse(&json), validate(&config));
    }
}
