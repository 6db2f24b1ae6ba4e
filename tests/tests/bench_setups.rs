//! The Envoy overhead benchmark's set-ups route as they claim (`scripts/bench-envoy` times
//! them; this only checks them, with no timing): (a) and (b) send everyone to stable untouched,
//! (d) and (f) route by the last digit of the user id and (f) counts as cohort does, (c) and (g)
//! route each user by cohort's placement for the host's rollout.

// Test code: a failed expectation panics with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cohort_core::bucket::place;
use cohort_tests::bench::{Setup, HOSTS};
use cohort_tests::Response;

/// `(rollout, weight_bp)` of each of [`HOSTS`], as `bench::CONFIG` sets them.
const WEIGHTS: [(&str, u32); 3] = [("cart", 2500), ("checkout", 500), ("search", 5000)];

fn get(client: &mut cohort_tests::Client, host: &str, user: &str) -> Response {
    let response = client
        .get(
            "/",
            &[(b"host", host.as_bytes()), (b"x-user-id", user.as_bytes())],
        )
        .unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    response
}

#[test]
fn without_cohort_everyone_reaches_stable_untouched() {
    for setup in [Setup::None, Setup::Noop] {
        let envoy = setup.start(1).unwrap_or_else(|e| panic!("{setup}: {e}"));
        let mut client = envoy.client();
        for (i, host) in HOSTS.iter().enumerate() {
            let response = get(&mut client, host, &format!("user-{i}"));
            assert_eq!(response.upstream().as_deref(), Some("stable"), "{setup}");
            assert_eq!(
                response.header("x-seen-version").as_deref(),
                Some("-"),
                "{setup} sets no routing header"
            );
        }
    }
}

#[test]
fn the_header_setting_baselines_route_by_the_last_digit_of_the_user() {
    for setup in [Setup::SetsHeader, Setup::ContractCalls] {
        let envoy = setup.start(1).unwrap_or_else(|e| panic!("{setup}: {e}"));
        routes_by_the_last_digit(&envoy);
        if setup == Setup::ContractCalls {
            // It counts as cohort does: every decision, and the event every answer reports.
            // Envoy may count the last answer's event after the client has it: wait for it.
            for counter in ["bench_decisions_total", "bench_events_total"] {
                let name = format!("wasmcustom.{counter}");
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut count = envoy.stat(&name).unwrap();
                while count != Some(10) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    count = envoy.stat(&name).unwrap();
                }
                assert_eq!(count, Some(10), "{name}");
            }
        }
    }
}

fn routes_by_the_last_digit(envoy: &cohort_tests::envoy::Envoy) {
    let mut client = envoy.client();
    for i in 0..10 {
        let host = HOSTS[i % HOSTS.len()];
        let expected = if i <= 2 { "canary" } else { "stable" };
        // A client's own value is replaced, as cohort would: send the other version.
        let forged = if i <= 2 { "stable" } else { "canary" };
        let response = client
            .get(
                "/",
                &[
                    (b"host", host.as_bytes()),
                    (b"x-user-id", format!("user-{i}").as_bytes()),
                    (b"x-cohort-version", forged.as_bytes()),
                ],
            )
            .unwrap();
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.upstream().as_deref(), Some(expected), "user-{i}");
        assert_eq!(response.header("x-seen-version").as_deref(), Some(expected));
    }
}

#[test]
fn cohort_routes_each_user_by_its_hosts_rollout() {
    for setup in [Setup::Cohort, Setup::CohortEvents] {
        cohort_routes_by_placement(setup);
    }
}

fn cohort_routes_by_placement(setup: Setup) {
    let envoy = setup.start(1).unwrap_or_else(|e| panic!("{setup}: {e}"));
    let mut client = envoy.client();
    let mut canaries = 0;
    for (host, (rollout, weight_bp)) in HOSTS.iter().zip(WEIGHTS) {
        assert_eq!(*host, rollout);
        for i in 0..40 {
            let user = format!("user-{i}");
            let expected = if place(rollout, user.as_bytes()).is_canary(weight_bp) {
                canaries += 1;
                "canary"
            } else {
                "stable"
            };
            let response = get(&mut client, host, &user);
            assert_eq!(
                response.upstream().as_deref(),
                Some(expected),
                "{host} {user}"
            );
            assert_eq!(response.header("x-seen-version").as_deref(), Some(expected));
        }
    }
    assert!(canaries > 0, "{setup}: some users reach the canary");
}
