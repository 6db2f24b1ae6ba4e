//! Replays the committed seeds, any local corpus, and a fixed stream of pseudo-random inputs
//! through the fuzz targets' checks, without libFuzzer: `cargo test --no-default-features` here
//! runs on any toolchain (scripts/fuzz-smoke runs it before the real fuzzing).

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["seeds", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    // A fixed pseudo-random stream (xorshift64*), the same on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..3_000 {
        let len = i % 300;
        let bytes = (0..len)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect();
        out.push((PathBuf::from(format!("random-{i}")), bytes));
    }
    out
}

/// Runs `check` on every input of `target`; returns how many were decoded and checked.
fn replay(target: &str, check: impl Fn(&[u8]) -> bool) -> usize {
    let mut checked = 0;
    for (path, bytes) in inputs(target) {
        // A panic names the input, to add to fuzz/seeds/ once fixed.
        eprintln!("{target}: {}", path.display());
        checked += usize::from(check(&bytes));
    }
    checked
}

/// Decodes `bytes` as libFuzzer's `fuzz_target!` does and runs `check`; false if undecodable.
fn decoded<'a, T: Arbitrary<'a>>(bytes: &'a [u8], check: impl Fn(&T)) -> bool {
    match T::arbitrary_take_rest(Unstructured::new(bytes)) {
        Ok(input) => {
            check(&input);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn config_inputs() {
    let all = inputs("config");
    for (path, bytes) in &all {
        eprintln!("config: {}", path.display());
        cohort_fuzz::config(bytes);
    }
    // The seeds reach the accepting path: this is not only a parse-error test.
    let accepted = all
        .iter()
        .filter(|(_, bytes)| cohort_core::config::parse(bytes).is_ok())
        .count();
    assert!(accepted >= 3, "only {accepted} inputs are valid configs");
}

#[test]
fn decide_inputs() {
    let checked = replay("decide", |bytes| decoded(bytes, cohort_fuzz::decide));
    assert!(checked >= 1_000, "only {checked} inputs decoded");
    // The force paths, built explicitly: exact token accepted, every near miss refused.
    for edit in [
        cohort_fuzz::TokenEdit::Exact,
        cohort_fuzz::TokenEdit::Flip(5, b'x'),
        cohort_fuzz::TokenEdit::Prefix(19),
        cohort_fuzz::TokenEdit::Append(b'0'),
        cohort_fuzz::TokenEdit::Empty,
    ] {
        cohort_fuzz::decide(&cohort_fuzz::DecideInput {
            config: 0,
            weight_bp: Some(0),
            authority: b"checkout",
            headers: vec![(cohort_fuzz::Name::UserId, b"alice")],
            force: Some(cohort_fuzz::Force::Token {
                pick: 0,
                version: b"",
                edit,
            }),
        });
    }
}

#[test]
fn cookie_inputs() {
    replay("cookie", |bytes| decoded(bytes, cohort_fuzz::cookie));
    for header in [
        &b"uid=a; uid=b"[..],
        b" uid = \"x\" ",
        b";;=;uid==",
        b"uid=\xff",
    ] {
        cohort_fuzz::cookie(&cohort_fuzz::CookieInput {
            pick: 0,
            other: b"",
            header,
        });
    }
}

#[test]
fn place_inputs() {
    let checked = replay("place", |bytes| decoded(bytes, cohort_fuzz::place));
    assert!(checked >= 1_000, "only {checked} inputs decoded");
}

#[test]
fn header_map_inputs() {
    replay("header_map", |bytes| {
        cohort_fuzz::header_map(bytes);
        true
    });
    // Every truncation and every single-byte change of a well-formed map.
    let good = cohort_core::header_pairs::serialize(&[
        (b":authority", b"shop"),
        (b"X-User-Id", b"alice"),
        (b"x-user-id", b"bob"),
        (b"cookie", b"uid=\xff"),
    ]);
    cohort_fuzz::header_map(&good);
    for end in 0..good.len() {
        cohort_fuzz::header_map(&good[..end]);
    }
    for at in 0..good.len() {
        for byte in [0, 1, 0x7f, 0xff] {
            let mut bytes = good.clone();
            bytes[at] = byte;
            cohort_fuzz::header_map(&bytes);
        }
    }
}
