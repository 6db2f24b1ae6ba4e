//! `cohort_core::config::parse` (and `parse_wire`, `validate`) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_fuzz::config(data));
