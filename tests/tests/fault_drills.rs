//! Fault drills against a real Envoy: a filter VM that crashes under `FAIL_RELOAD`.
//!
//! cohort's filter has no way to crash on purpose (and gets none). `tests/crash-filter`, a
//! test-only filter that panics on an `x-crash` header and otherwise routes like cohort's, runs
//! in cohort's own bootstrap and ECDS shape (`manifests/envoy/`, `failure_policy: FAIL_RELOAD`).
//! What it shows is Envoy's behaviour that cohort relies on should its VM ever die: the request
//! that crashed it fails closed (a 5xx from Envoy, never forwarded unrouted), a fresh VM is
//! started with the same configuration, and routing resumes.

// Test code: a failed expectation panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cohort_tests::envoy::{Filter, Options};
use cohort_tests::locate::build_wasm;
use cohort_tests::{prom, Envoy, Response};

/// The crash filter's `.wasm`: `$COHORT_CRASH_WASM`, else built with the `wasm` profile.
fn crash_wasm() -> PathBuf {
    match std::env::var_os("COHORT_CRASH_WASM") {
        Some(path) if Path::new(&path).is_file() => PathBuf::from(path),
        _ => build_wasm("cohort-test-crash-filter").unwrap_or_else(|e| panic!("{e}")),
    }
}

fn counter(envoy: &Envoy, name: &str) -> f64 {
    prom::value(&envoy.prometheus().unwrap(), name, &[]).unwrap_or(0.0)
}

fn routed(response: &Response) -> Option<String> {
    (response.status == 200)
        .then(|| response.upstream())
        .flatten()
}

#[test]
fn a_crashed_filter_vm_is_replaced_under_fail_reload() {
    let options = Options {
        filter: Filter::Wasm(crash_wasm()),
        // One worker: the crash takes down the only VM serving requests.
        concurrency: 1,
        ..Options::default()
    };
    let envoy = Envoy::start_with(r#"{"version": 1}"#, &options).unwrap_or_else(|e| panic!("{e}"));
    let mut client = envoy.client();
    for (route, want) in [(&b"canary"[..], "canary"), (b"stable", "stable")] {
        let r = client.get("/", &[(b"x-route", route)]).unwrap();
        assert_eq!(routed(&r).as_deref(), Some(want), "{r:?}");
    }
    let starts = counter(&envoy, "crash_test_vm_starts");
    let configs = counter(&envoy, "crash_test_configs");
    assert!(starts >= 1.0 && configs >= 1.0);

    // The crash: the request fails closed, answered 503 by Envoy itself.
    let crashed = envoy
        .client()
        .get("/", &[(b"x-crash", b"1"), (b"x-route", b"canary")])
        .unwrap();
    assert_eq!(
        (crashed.status, crashed.upstream()),
        (503, None),
        "{crashed:?}"
    );
    assert_eq!(envoy.canary.served() + envoy.stable.served(), 2);

    // Recovery: requests are routed again by a fresh VM, which ran on_vm_start and
    // on_configure with the same configuration.
    let start = Instant::now();
    let mut failed = 0;
    loop {
        let r = envoy.client().get("/", &[(b"x-route", b"canary")]);
        match r.as_ref().ok().and_then(routed) {
            Some(version) => {
                assert_eq!(version, "canary");
                break;
            }
            None => {
                // While the reload backs off, requests fail closed too.
                let r = r.as_ref().unwrap();
                assert_eq!((r.status, r.upstream()), (503, None), "{r:?}");
                failed += 1;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no recovery after the crash: {r:?}\n{}",
            envoy.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let recovered_in = start.elapsed();
    let mut client = envoy.client();
    for _ in 0..50 {
        for (route, want) in [(&b"canary"[..], "canary"), (b"stable", "stable")] {
            let r = client.get("/", &[(b"x-route", route)]).unwrap();
            assert_eq!(routed(&r).as_deref(), Some(want), "after recovery: {r:?}");
        }
    }
    assert!(
        counter(&envoy, "crash_test_vm_starts") > starts,
        "no new VM started"
    );
    assert!(
        counter(&envoy, "crash_test_configs") > configs,
        "on_configure did not run again"
    );
    // Envoy's own account: one reload, which succeeded; every request in between was turned
    // away by the reload backoff.
    let stat = |name: &str| envoy.stat(name).unwrap().unwrap_or(0);
    assert_eq!(stat("wasm.cohort.vm_reload_success"), 1);
    assert_eq!(stat("wasm.cohort.vm_reload_failure"), 0);
    assert_eq!(stat("wasm.cohort.vm_reload_backoff"), failed);
    eprintln!(
        "crash → routed again in {:.0} ms ({failed} requests failed meanwhile); VM starts {starts} → {}",
        recovered_in.as_secs_f64() * 1000.0,
        counter(&envoy, "crash_test_vm_starts")
    );
}
