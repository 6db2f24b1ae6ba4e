//! Bucketing: `h = murmur3_x86_32("{salt}:{key}", seed 0)`, `cohort = h % 100`,
//! `bucket = cohort * 100 + (h / 100) % 100`; a user is in the canary iff `bucket < weight_bp`.
//! Its unit is `(h / 10_000) % 16` ([`UNITS`]).
//!
//! Because the cohort is the most significant part of the bucket, raising the weight only ever
//! adds users, and at whole percentages the canary set equals Unleash's gradual rollout with
//! `groupId = salt` (`murmur3("{groupId}:{userId}") % 100 + 1 <= percent`).

use std::io::{self, Read};

/// Basis points in 100%: weights and buckets range over `0..=10_000` and `0..10_000`.
pub const FULL_WEIGHT_BP: u32 = 10_000;

/// Units users are split into, so that served metrics can be counted per unit: a random
/// partition of each version's users whose units vary between them as independent samples do,
/// however unevenly traffic is spread over users (one heavy user, one user's retries stay in
/// one unit).
pub const UNITS: u32 = 16;

/// [`Placement::unit`] as its header value: no allocation per request.
const UNIT_VALUES: [&str; UNITS as usize] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
];

/// Where one user key falls for one salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The 1% cohort, `0..=99`.
    pub cohort: u8,
    /// The basis-point bucket, `0..=9999`; `bucket / 100 == cohort`.
    pub bucket: u16,
    /// The unit, `0..UNITS`: `(h / 10_000) % 16`. It comes from the hash's digits above the
    /// bucket's, so at any weight the canary's users (and the stable's) spread evenly over the
    /// units, whatever the bucket boundary.
    pub unit: u8,
}

impl Placement {
    /// Whether this user is in the canary when the canary gets `weight_bp` basis points.
    pub fn is_canary(self, weight_bp: u32) -> bool {
        u32::from(self.bucket) < weight_bp
    }

    /// The unit as a header value, `"0"` to `"15"`.
    pub fn unit_value(self) -> &'static str {
        // A placed unit is below 16 already; the modulo only keeps a hand-built one in range.
        UNIT_VALUES[usize::from(self.unit) % UNIT_VALUES.len()]
    }
}

/// murmur3 x86 32-bit of `data` with seed 0.
pub fn murmur3_32(data: &[u8]) -> u32 {
    murmur3_32_of(&[data])
}

/// murmur3 x86 32-bit, seed 0, of the concatenation of `parts`, read as they are: no buffer
/// holds them put together.
pub fn murmur3_32_of(parts: &[&[u8]]) -> u32 {
    let mut bytes = Parts {
        current: &[],
        rest: parts,
    };
    // The crate hashes any `Read` and so returns `io::Result`, but `Parts` only copies from byte
    // slices, which never fails: the `Err` arm cannot be taken. 0 stands in for it rather than a
    // panic, which would abort the proxy's worker.
    murmur3::murmur3_32(&mut bytes, 0).unwrap_or(0)
}

/// Places `key` (taken as bytes, never re-encoded) for `salt`.
pub fn place(salt: &str, key: &[u8]) -> Placement {
    // Read in place: placing a user copies neither salt nor key.
    placement_of_hash(murmur3_32_of(&[salt.as_bytes(), b":", key]))
}

/// Byte slices read one after the other, as [`Read::chain`] reads two.
struct Parts<'a> {
    current: &'a [u8],
    rest: &'a [&'a [u8]],
}

impl Read for Parts<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // An empty part would read as 0 bytes, which a reader means as its end: skip to one
        // that has bytes.
        while self.current.is_empty() {
            let Some((next, rest)) = self.rest.split_first() else {
                return Ok(0);
            };
            (self.current, self.rest) = (next, rest);
        }
        self.current.read(buf)
    }
}

/// The placement of a precomputed hash.
pub fn placement_of_hash(hash: u32) -> Placement {
    let cohort = hash % 100;
    let bucket = cohort * 100 + (hash / 100) % 100;
    let unit = (hash / FULL_WEIGHT_BP) % UNITS;
    // They are provably below 100, 10_000 and 16, so the narrowing casts cannot truncate.
    Placement {
        cohort: cohort as u8,
        bucket: bucket as u16,
        unit: unit as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: murmur3_x86_32 reference values (seed 0) and the placements they give.
    /// The same table runs on native and on wasm32-wasip1 (see the crate's test command).
    #[test]
    fn murmur3_reference_values() {
        let table: &[(&[u8], u32)] = &[
            (b"", 0),
            (b"hello", 0x248b_fa47),
            (b"Hello, world!", 0xc036_3e43),
            (b"The quick brown fox jumps over the lazy dog", 0x2e4f_f723),
        ];
        for (input, want) in table {
            assert_eq!(
                murmur3_32(input),
                *want,
                "murmur3({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn placement_golden_vectors() {
        // (salt, key, hash, cohort, bucket, unit), computed with an independent murmur3
        // (Python's mmh3).
        let table: &[(&str, &str, u32, u8, u16, u8)] = &[
            ("checkout", "alice", 3_211_913_009, 9, 930, 7),
            ("checkout", "bob", 3_207_306_439, 39, 3964, 10),
            ("checkout", "user-42", 2_382_546_941, 41, 4169, 14),
            ("cart", "alice", 366_348_814, 14, 1488, 10),
            ("checkout", "ünïcödé", 833_808_417, 17, 1784, 4),
            ("checkout", "", 147_932_472, 72, 7224, 9),
        ];
        for &(salt, key, hash, cohort, bucket, unit) in table {
            assert_eq!(
                murmur3_32(format!("{salt}:{key}").as_bytes()),
                hash,
                "{salt}:{key}"
            );
            assert_eq!(
                place(salt, key.as_bytes()),
                Placement {
                    cohort,
                    bucket,
                    unit
                },
                "{salt}:{key}"
            );
        }
    }

    #[test]
    fn bucket_layout() {
        // (hash, cohort, bucket, unit)
        let table: &[(u32, u8, u16, u8)] = &[
            (0, 0, 0, 0),
            (99, 99, 9900, 0),
            (100, 0, 1, 0),
            (12_345, 45, 4523, 1),
            // The last hash of unit 15 and the first of unit 0 again: 16 units of 10,000 hashes.
            (159_999, 99, 9999, 15),
            (160_000, 0, 0, 0),
            // 4294967295 % 100 = 95; (4294967295 / 100) % 100 = 72; (4294967295 / 10000) % 16 = 8
            (u32::MAX, 95, 9572, 8),
        ];
        for &(hash, cohort, bucket, unit) in table {
            assert_eq!(
                placement_of_hash(hash),
                Placement {
                    cohort,
                    bucket,
                    unit
                },
                "hash {hash}"
            );
        }
    }

    #[test]
    fn unit_values_name_each_unit() {
        for unit in 0..UNITS as u8 {
            let p = Placement {
                cohort: 0,
                bucket: 0,
                unit,
            };
            assert_eq!(p.unit_value(), unit.to_string());
        }
        assert_eq!(UNIT_VALUES.len(), UNITS as usize);
    }

    /// Within the canary at any weight, and within the stable, users spread evenly over the
    /// units: the unit does not lean on the bucket. 64,000 keys; each unit's share of a side
    /// must be within 5 standard errors of 1/16.
    #[test]
    fn units_split_each_side_evenly_at_any_weight() {
        let placements: Vec<Placement> = (0..64_000u32)
            .map(|i| place("checkout", format!("user-{i}").as_bytes()))
            .collect();
        for weight in [100, 500, 2_500, 5_000, 9_000] {
            for canary in [true, false] {
                let mut counts = [0u32; UNITS as usize];
                for p in placements.iter().filter(|p| p.is_canary(weight) == canary) {
                    assert!(u32::from(p.unit) < UNITS);
                    counts[usize::from(p.unit)] += 1;
                }
                let n = f64::from(counts.iter().sum::<u32>());
                let expected = n / f64::from(UNITS);
                let sd = (n * (1.0 / 16.0) * (15.0 / 16.0)).sqrt();
                for (unit, &count) in counts.iter().enumerate() {
                    assert!(
                        (f64::from(count) - expected).abs() <= 5.0 * sd,
                        "{weight} bp, canary {canary}: unit {unit} has {count} of {n}"
                    );
                }
            }
        }
        // At 10 bp the canary is ten buckets, yet its users take more than ten units: the unit
        // is not a function of the bucket.
        let units: std::collections::BTreeSet<u8> = placements
            .iter()
            .filter(|p| p.is_canary(10))
            .map(|p| p.unit)
            .collect();
        assert!(units.len() > 10, "units at 10 bp: {units:?}");
    }

    #[test]
    fn raising_the_weight_only_adds_users() {
        for i in 0..2_000u32 {
            let p = place("salt", i.to_string().as_bytes());
            let mut was_canary = false;
            for weight in [0, 1, 100, 500, 2_500, 5_000, 7_500, 10_000] {
                let now = p.is_canary(weight);
                assert!(now || !was_canary, "key {i} left the canary at {weight} bp");
                was_canary = now;
            }
            assert!(p.is_canary(FULL_WEIGHT_BP));
            assert!(!p.is_canary(0));
        }
    }

    #[test]
    fn whole_percentages_match_unleash() {
        for i in 0..5_000u32 {
            let key = format!("user-{i}");
            let p = place("group", key.as_bytes());
            let unleash_normalized = murmur3_32(format!("group:{key}").as_bytes()) % 100 + 1;
            for percent in [1u32, 5, 25, 50, 75, 100] {
                assert_eq!(
                    p.is_canary(percent * 100),
                    unleash_normalized <= percent,
                    "{key} at {percent}%"
                );
            }
        }
    }
}
