//! `cohort_core::decide::decide` on arbitrary headers, cookies, force values and authority.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: cohort_fuzz::DecideInput<'_>| cohort_fuzz::decide(&input));
