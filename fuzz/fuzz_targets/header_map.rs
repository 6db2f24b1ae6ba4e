//! `cohort_core::header_pairs::HeaderPairs` on arbitrary bytes, as if the host sent them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_fuzz::header_map(data));
