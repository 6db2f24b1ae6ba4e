//! `cohort_core::bucket::place` on arbitrary salts, keys and weights.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: cohort_fuzz::PlaceInput<'_>| cohort_fuzz::place(&input));
