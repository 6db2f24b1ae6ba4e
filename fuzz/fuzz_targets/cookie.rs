//! `cohort_core::decide::cookie_value` on arbitrary `Cookie` headers and names.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: cohort_fuzz::CookieInput<'_>| cohort_fuzz::cookie(&input));
