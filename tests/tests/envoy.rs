//! End-to-end: a real Envoy 1.40 running the built cohort filter in front of two upstreams.
//! Each test starts its own Envoy (about 0.3 s) from the committed `manifests/envoy/` templates.

// Test code: a failed expectation panics with its message (clippy.toml's test allowances cover
// only `#[test]` functions, not this file's helpers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cohort_core::bucket::place;
use cohort_core::decide::cookie_value;
use cohort_rollout::compiled::Served;
use cohort_tests::envoy::{Options, PushResult, UPDATE_REJECTED, UPDATE_SUCCESS};
use cohort_tests::prom::{self, Sample};
use cohort_tests::{config, expected_version, Client, Envoy, Response, FORCE_TOKEN};

/// Generous deadline for anything asynchronous (config pushes, stats flushes).
const DEADLINE: Duration = Duration::from_secs(10);

fn start(weight_bp: u32) -> Envoy {
    Envoy::start(&config(weight_bp).to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn as_user(client: &mut Client, id: &[u8]) -> Response {
    client.get("/", &[(b"x-user-id", id)]).unwrap()
}

/// The version that served `response`, checking that the upstream saw the same routing header.
fn served_by(response: &Response) -> String {
    assert_eq!(response.status, 200, "{response:?}");
    let upstream = response
        .upstream()
        .unwrap_or_else(|| panic!("no upstream answered: {response:?}"));
    assert_eq!(
        response.header("x-seen-version").as_deref(),
        Some(upstream.as_str()),
        "the routing header the upstream saw differs from the cluster: {response:?}"
    );
    upstream
}

/// Runs `f` over `items` on `threads` threads, each with its own keep-alive client; results
/// in item order.
fn in_parallel<T: Sync, R: Send>(
    envoy: &Envoy,
    threads: usize,
    items: &[T],
    f: impl Fn(&mut Client, &T) -> R + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let f = &f;
                let mut client = envoy.client();
                scope.spawn(move || {
                    part.iter()
                        .map(|item| f(&mut client, item))
                        .collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn user_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The first id `prefix-N` for which `wanted(id)` holds.
fn find_id(prefix: &str, wanted: impl Fn(&[u8]) -> bool) -> String {
    (0..100_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| wanted(id.as_bytes()))
        .unwrap()
}

fn canary_id(prefix: &str, weight_bp: u32) -> String {
    find_id(prefix, |id| expected_version(id, weight_bp) == "canary")
}

fn stable_id(prefix: &str, weight_bp: u32) -> String {
    find_id(prefix, |id| expected_version(id, weight_bp) == "stable")
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap().unwrap_or(0)
}

/// `cohort_decisions_total` of rollout `web` (no namespace, so its service is its name) for
/// `version`.
fn decisions(samples: &[Sample], version: &str) -> f64 {
    prom::value(
        samples,
        "cohort_decisions_total",
        &[
            ("destination_service_namespace", ""),
            ("destination_service_name", "web"),
            ("destination_version", version),
        ],
    )
    .unwrap_or(0.0)
}

/// Polls `/stats/prometheus` until `done` holds or the deadline passes; returns the last page.
fn prometheus_until(envoy: &Envoy, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let samples = envoy.prometheus().unwrap();
        if done(&samples) || start.elapsed() > DEADLINE {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// a. 10,000 distinct users at 500 bp: ~5% canary, each exactly where cohort-core puts it.
#[test]
fn ten_thousand_users_land_where_core_puts_them() {
    let envoy = start(500);
    let ids = user_ids("user", 10_000);
    let start = Instant::now();
    let served = in_parallel(&envoy, 4, &ids, |client, id| {
        served_by(&as_user(client, id.as_bytes()))
    });
    let elapsed = start.elapsed();
    let misplaced: Vec<String> = ids
        .iter()
        .zip(&served)
        .filter(|(id, got)| expected_version(id.as_bytes(), 500) != got.as_str())
        .map(|(id, got)| format!("{id}: got {got}"))
        .collect();
    assert!(
        misplaced.is_empty(),
        "{} of 10000 users misplaced, e.g. {:?}",
        misplaced.len(),
        &misplaced[..misplaced.len().min(10)]
    );
    let canary = served.iter().filter(|v| *v == "canary").count();
    let share = canary as f64 / ids.len() as f64;
    eprintln!(
        "canary share at 500 bp: {canary}/10000 = {:.2}% ({:.0} requests/s through Envoy)",
        share * 100.0,
        ids.len() as f64 / elapsed.as_secs_f64()
    );
    assert!((0.043..=0.057).contains(&share), "canary share {share}");
    assert_eq!(envoy.canary.served() as usize, canary);
    assert_eq!(envoy.stable.served() as usize, 10_000 - canary);
}

/// b. The same user keeps its version; raising 500 → 2500 bp keeps every canary user in the
/// canary (even while the new config spreads), and the new weight takes effect quickly.
#[test]
fn users_stick_and_raising_the_weight_only_adds_users() {
    let envoy = start(500);
    let ids = user_ids("sticky", 2_000);
    let first = in_parallel(&envoy, 2, &ids, |c, id| {
        served_by(&as_user(c, id.as_bytes()))
    });
    for _ in 0..2 {
        let again = in_parallel(&envoy, 2, &ids, |c, id| {
            served_by(&as_user(c, id.as_bytes()))
        });
        assert_eq!(first, again, "a user changed version on a repeated request");
    }
    let early_canaries: Vec<&String> = ids
        .iter()
        .zip(&first)
        .filter(|(_, v)| *v == "canary")
        .map(|(id, _)| id)
        .collect();
    assert!(!early_canaries.is_empty());

    // Hammer the early canaries while the weight changes: none may see stable.
    let stop = AtomicBool::new(false);
    let watched = AtomicU64::new(0);
    let probe = find_id("probe", |id| {
        expected_version(id, 500) == "stable" && expected_version(id, 2_500) == "canary"
    });
    let before = stat(&envoy, UPDATE_SUCCESS);
    let (took_effect, demoted) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut client = envoy.client();
            let mut demoted = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                for id in &early_canaries {
                    if served_by(&as_user(&mut client, id.as_bytes())) != "canary" {
                        demoted.push((*id).clone());
                    }
                    watched.fetch_add(1, Ordering::Relaxed);
                }
            }
            demoted
        });
        let mut client = envoy.client();
        let pushed = Instant::now();
        envoy.push_config(&config(2_500).to_string()).unwrap();
        let took_effect = loop {
            if served_by(&as_user(&mut client, probe.as_bytes())) == "canary" {
                break pushed.elapsed();
            }
            assert!(pushed.elapsed() < DEADLINE, "2500 bp never took effect");
        };
        while stat(&envoy, UPDATE_SUCCESS) == before {
            assert!(pushed.elapsed() < DEADLINE, "update_success never rose");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::SeqCst);
        (took_effect, watcher.join().unwrap())
    });
    eprintln!(
        "ECDS rename → new weight routing: {:.1} ms; {} early-canary requests watched during the change",
        took_effect.as_secs_f64() * 1000.0,
        watched.load(Ordering::Relaxed)
    );
    assert!(
        demoted.is_empty(),
        "canary users sent to stable while raising the weight: {demoted:?}"
    );

    // Every worker serves the new weight: every user where core puts it at 2500 bp.
    let start = Instant::now();
    loop {
        let now = in_parallel(&envoy, 2, &ids, |c, id| {
            served_by(&as_user(c, id.as_bytes()))
        });
        let wrong: Vec<_> = ids
            .iter()
            .zip(&now)
            .filter(|(id, v)| expected_version(id.as_bytes(), 2_500) != v.as_str())
            .collect();
        if wrong.is_empty() {
            let canaries = now.iter().filter(|v| *v == "canary").count();
            eprintln!(
                "canary users: {} at 500 bp → {canaries} at 2500 bp (of 2000)",
                early_canaries.len()
            );
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "users not where core puts them at 2500 bp: {:?}",
            &wrong[..wrong.len().min(10)]
        );
    }
}

/// c. Cookie identity, header-over-cookie precedence, anonymous users' cookie, 0% and 100%.
#[test]
fn cookie_identity_and_anonymous_users() {
    let envoy = start(500);
    let mut client = envoy.client();

    // A `uid` cookie alone, among other cookies, and quoted.
    for id in user_ids("cookie", 300) {
        let want = expected_version(id.as_bytes(), 500);
        for cookie in [
            format!("uid={id}"),
            format!("a=1; uid={id}; b=2"),
            format!("theme=dark;uid=\"{id}\""),
        ] {
            let r = client.get("/", &[(b"cookie", cookie.as_bytes())]).unwrap();
            assert_eq!(served_by(&r), want, "cookie {cookie}");
            assert!(
                r.header("set-cookie").is_none(),
                "a known user got a cookie: {r:?}"
            );
        }
    }
    // The header wins over the cookie, both ways round; an empty header falls through.
    let canary = canary_id("prec", 500);
    let stable = stable_id("prec", 500);
    for (header, cookie, want) in [(&canary, &stable, "canary"), (&stable, &canary, "stable")] {
        let cookie = format!("uid={cookie}");
        let r = client
            .get(
                "/",
                &[
                    (b"x-user-id", header.as_bytes()),
                    (b"cookie", cookie.as_bytes()),
                ],
            )
            .unwrap();
        assert_eq!(served_by(&r), want, "x-user-id {header}, {cookie}");
    }
    let cookie = format!("uid={canary}");
    let r = client
        .get("/", &[(b"x-user-id", b""), (b"cookie", cookie.as_bytes())])
        .unwrap();
    assert_eq!(served_by(&r), "canary", "empty x-user-id, {cookie}");

    // Anonymous users at 50%: each gets an id in a cookie, is served where that id falls, and
    // stays there when it sends the cookie back.
    assert_eq!(
        envoy
            .push_config_and_wait(&config(5_000).to_string())
            .unwrap()
            .0,
        PushResult::Accepted
    );
    let mut seen = BTreeMap::new();
    for _ in 0..40 {
        let mut anonymous = envoy.client();
        let r = anonymous.get("/", &[]).unwrap();
        let version = served_by(&r);
        let set_cookie = r
            .header("set-cookie")
            .unwrap_or_else(|| panic!("no set-cookie: {r:?}"));
        let id = set_cookie
            .strip_prefix("cohort-id=")
            .and_then(|rest| rest.split(';').next())
            .unwrap_or_else(|| panic!("unexpected set-cookie {set_cookie:?}"))
            .to_owned();
        assert_eq!(
            set_cookie,
            format!("cohort-id={id}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax")
        );
        assert!(id.len() >= 16, "anonymous id {id:?} is short");
        assert_eq!(
            version,
            expected_version(id.as_bytes(), 5_000),
            "anonymous id {id}"
        );
        let cookie = format!("cohort-id={id}");
        for _ in 0..20 {
            let r = anonymous
                .get("/", &[(b"cookie", cookie.as_bytes())])
                .unwrap();
            assert_eq!(served_by(&r), version, "{cookie} changed version");
            assert!(
                r.header("set-cookie").is_none(),
                "{cookie} got another cookie: {r:?}"
            );
        }
        assert!(
            seen.insert(id.clone(), version).is_none(),
            "id {id} issued twice"
        );
    }
    let canaries = seen.values().filter(|v| *v == "canary").count();
    assert!(
        (1..40).contains(&canaries),
        "40 anonymous users at 50% gave {canaries} canaries"
    );
    // A configured identity beats the anonymous cookie.
    let cookie = format!("cohort-id=anything; uid={canary}");
    let r = client.get("/", &[(b"cookie", cookie.as_bytes())]).unwrap();
    assert_eq!(served_by(&r), expected_version(canary.as_bytes(), 5_000));

    // 100%: everyone, anonymous included, on canary; 0%: everyone on stable.
    for (weight, want) in [(10_000, "canary"), (0, "stable")] {
        assert_eq!(
            envoy
                .push_config_and_wait(&config(weight).to_string())
                .unwrap()
                .0,
            PushResult::Accepted
        );
        let start = Instant::now();
        // Both workers may take a moment to switch; wait for the probe, then check everyone.
        let probe = if want == "canary" { &stable } else { &canary };
        while served_by(&as_user(&mut client, probe.as_bytes())) != want {
            assert!(start.elapsed() < DEADLINE, "{weight} bp never took effect");
        }
        let ids = user_ids("all", 200);
        let got = in_parallel(&envoy, 2, &ids, |c, id| {
            served_by(&as_user(c, id.as_bytes()))
        });
        assert!(got.iter().all(|v| v == want), "at {weight} bp: {got:?}");
        for _ in 0..10 {
            let r = envoy.client().get("/", &[]).unwrap();
            assert_eq!(served_by(&r), want, "anonymous at {weight} bp");
        }
    }
}

/// d. A client cannot choose its version: the routing header is overwritten (and counted), the
/// force header needs the token, and neither the force header nor a forged value reaches the
/// upstream.
#[test]
fn routing_header_is_overwritten_and_forcing_needs_the_token() {
    let envoy = start(500);
    let mut client = envoy.client();
    let stable = stable_id("forge", 500);
    let canary = canary_id("forge", 500);

    type Forged<'a> = (&'a String, &'a [(&'a [u8], &'a [u8])], &'a str);
    let forged: &[Forged] = &[
        (&stable, &[(b"x-cohort-version", b"canary")], "stable"),
        (&stable, &[(b"X-Cohort-Version", b"canary")], "stable"),
        (
            &stable,
            &[
                (b"x-cohort-version", b"canary"),
                (b"x-cohort-version", b"canary"),
            ],
            "stable",
        ),
        (&canary, &[(b"x-cohort-version", b"stable")], "canary"),
        (&stable, &[(b"x-cohort-version", b"v2")], "stable"),
    ];
    for (id, extra, want) in forged {
        let mut headers: Vec<(&[u8], &[u8])> = vec![(b"x-user-id", id.as_bytes())];
        headers.extend_from_slice(extra);
        let r = client.get("/", &headers).unwrap();
        assert_eq!(served_by(&r), *want, "{id} with {extra:?}");
        assert_eq!(r.header("x-seen-count").as_deref(), Some("1"), "{r:?}");
    }
    // Sending the value the filter would choose anyway is not an overwrite.
    let r = client
        .get(
            "/",
            &[
                (b"x-user-id", stable.as_bytes()),
                (b"x-cohort-version", b"stable"),
            ],
        )
        .unwrap();
    assert_eq!(served_by(&r), "stable");

    let good_canary = format!("canary:{FORCE_TOKEN}");
    let good_stable = format!("stable:{FORCE_TOKEN}");
    let wrong_token = format!("canary:{}x", &FORCE_TOKEN[..FORCE_TOKEN.len() - 1]);
    let short_token = format!("canary:{}", &FORCE_TOKEN[..FORCE_TOKEN.len() - 1]);
    let unknown_version = format!("beta:{FORCE_TOKEN}");
    let denied: &[&[u8]] = &[
        b"canary",
        b"canary:",
        wrong_token.as_bytes(),
        short_token.as_bytes(),
        unknown_version.as_bytes(),
        b":0123456789abcdef0123",
        b"\xff\xfe:\x80",
    ];
    for force in denied {
        let r = client
            .get(
                "/",
                &[
                    (b"x-user-id", stable.as_bytes()),
                    (b"x-cohort-force", force),
                ],
            )
            .unwrap();
        assert_eq!(
            served_by(&r),
            "stable",
            "force {:?}",
            String::from_utf8_lossy(force)
        );
        assert_eq!(
            r.header("x-seen-force").as_deref(),
            Some("-"),
            "force header forwarded"
        );
    }
    for (id, force, want) in [
        (&stable, &good_canary, "canary"),
        (&canary, &good_stable, "stable"),
        (&canary, &good_canary, "canary"),
    ] {
        let r = client
            .get(
                "/",
                &[
                    (b"x-user-id", id.as_bytes()),
                    (b"x-cohort-force", force.as_bytes()),
                ],
            )
            .unwrap();
        assert_eq!(served_by(&r), want, "{id} forced with {force}");
        assert_eq!(
            r.header("x-seen-force").as_deref(),
            Some("-"),
            "force header forwarded"
        );
    }
    // Forcing works for anonymous users too, and beats a forged routing header.
    let r = client
        .get(
            "/",
            &[
                (b"x-cohort-force", good_canary.as_bytes()),
                (b"x-cohort-version", b"stable"),
            ],
        )
        .unwrap();
    assert_eq!(served_by(&r), "canary");

    let samples = envoy.prometheus().unwrap();
    assert_eq!(
        prom::value(&samples, "cohort_force_denied_total", &[]),
        Some(denied.len() as f64),
        "cohort_force_denied_total"
    );
    // Every forged value that differed from the decision: 5 above plus the forced request.
    assert_eq!(
        prom::value(&samples, "cohort_routing_header_overwritten_total", &[]),
        Some(forged.len() as f64 + 1.0),
        "cohort_routing_header_overwritten_total"
    );
}

/// d3. The upstream gets the user's unit as cohort-core places it (forced users too), in one
/// header, whatever unit the client sent; a request the filter places nobody on (here anonymous
/// users kept on stable) carries none, a client's included.
#[test]
fn the_upstream_gets_the_users_unit_and_never_the_clients() {
    let mut config = config(500);
    config["anonymous"] = serde_json::json!({"mode": "stable"});
    let envoy = Envoy::start(&config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut client = envoy.client();
    let spoofed: [&[(&[u8], &[u8])]; 4] = [
        &[],
        &[(b"x-cohort-unit", b"0")],
        &[(b"X-Cohort-Unit", b"15"), (b"x-cohort-unit", b"15")],
        &[(b"x-cohort-unit", b"evil")],
    ];
    let forced = format!("canary:{FORCE_TOKEN}");
    let mut units = BTreeSet::new();
    for id in user_ids("unit", 48) {
        let placement = place("web", id.as_bytes());
        units.insert(placement.unit);
        for extra in spoofed {
            for force in [None, Some(forced.as_bytes())] {
                let mut headers: Vec<(&[u8], &[u8])> = vec![(b"x-user-id", id.as_bytes())];
                headers.extend(force.map(|f| (&b"x-cohort-force"[..], f)));
                headers.extend_from_slice(extra);
                let r = client.get("/", &headers).unwrap();
                let want = if force.is_some() {
                    "canary"
                } else {
                    expected_version(id.as_bytes(), 500)
                };
                assert_eq!(served_by(&r), want, "{id} with {headers:?}");
                // One value: several headers would arrive comma-joined.
                assert_eq!(
                    r.header_all("x-seen-unit"),
                    [placement.unit_value()],
                    "{id} with {headers:?}"
                );
            }
        }
    }
    // The users spread over the units, so the check tells the unit from a constant.
    assert!(units.len() > 8, "units {units:?}");
    for extra in spoofed {
        let r = client.get("/", extra).unwrap();
        assert_eq!(served_by(&r), "stable", "{extra:?}");
        assert_eq!(r.header("x-seen-unit").as_deref(), Some("-"), "{extra:?}");
    }
}

/// d2. Forcing needs exactly `VERSION:TOKEN`: every near miss of the token (one byte more, the
/// first byte changed, another case, a space, half of it, the token alone, the token in another
/// header, a wrong copy before the right one) is refused, counted and stripped; without a
/// configured token nothing forces. The exact token still forces (the control).
#[test]
fn forcing_refuses_every_near_miss_of_the_token() {
    let envoy = start(500);
    let mut client = envoy.client();
    let stable = stable_id("near", 500);
    let token = FORCE_TOKEN;
    type Headers = Vec<(&'static [u8], Vec<u8>)>;
    let near_misses: Vec<(String, Headers)> = [
        format!("canary:{token}0"),
        format!("canary:X{}", &token[1..]),
        format!("canary:{}", token.to_uppercase()),
        format!("canary: {token}"),
        format!("canary:{}", &token[..token.len() / 2]),
        format!("canary:{token}:canary"),
        format!("Canary:{token}"),
        token.to_owned(),
    ]
    .into_iter()
    .map(|value| {
        let headers = vec![(&b"x-cohort-force"[..], value.clone().into_bytes())];
        (value, headers)
    })
    .chain([
        (
            "a wrong force header before the right one".to_owned(),
            vec![
                (
                    &b"x-cohort-force"[..],
                    format!("canary:{token}x").into_bytes(),
                ),
                (
                    &b"x-cohort-force"[..],
                    format!("canary:{token}").into_bytes(),
                ),
            ],
        ),
        (
            "the token in the routing header".to_owned(),
            vec![(
                &b"x-cohort-version"[..],
                format!("canary:{token}").into_bytes(),
            )],
        ),
    ])
    .collect();
    let send = |client: &mut Client, extra: &[(&[u8], Vec<u8>)]| {
        let mut headers: Vec<(&[u8], &[u8])> = vec![(b"x-user-id", stable.as_bytes())];
        headers.extend(extra.iter().map(|(name, value)| (*name, value.as_slice())));
        client.get("/", &headers).unwrap()
    };
    for (what, headers) in &near_misses {
        let r = send(&mut client, headers);
        assert_eq!(served_by(&r), "stable", "forced by {what:?}");
        assert_eq!(
            r.header("x-seen-force").as_deref(),
            Some("-"),
            "{what:?} forwarded"
        );
    }
    // The control: the exact token forces, whatever the header name's case.
    let exact = vec![(
        &b"X-Cohort-Force"[..],
        format!("canary:{token}").into_bytes(),
    )];
    assert_eq!(served_by(&send(&mut client, &exact)), "canary");
    let denied = near_misses.len() as f64 - 1.0; // the routing-header case sends no force header
    let samples = envoy.prometheus().unwrap();
    assert_eq!(
        prom::value(&samples, "cohort_force_denied_total", &[]),
        Some(denied),
        "cohort_force_denied_total"
    );

    // Without a configured token, the right-looking header forces nothing.
    let mut no_token = config(500);
    no_token.as_object_mut().unwrap().remove("forceToken");
    let (result, _) = envoy.push_config_and_wait(&no_token.to_string()).unwrap();
    assert_eq!(result, PushResult::Accepted);
    let start = Instant::now();
    loop {
        let r = send(&mut client, &exact);
        if served_by(&r) == "stable" {
            assert_eq!(r.header("x-seen-force").as_deref(), Some("-"));
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "forcing still works without a token"
        );
    }
    for _ in 0..20 {
        assert_eq!(served_by(&send(&mut client, &exact)), "stable");
    }
}

/// Sends a request for a canary user and drops the connection before the (slow) answer.
fn reset_midway(envoy: &Envoy, id: &str) {
    let mut stream = TcpStream::connect(envoy.listen_addr()).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: app.test\r\nx-user-id: {id}\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    drop(stream);
}

/// e. The filter's metrics in /stats/prometheus count exactly what was decided: one decision
/// per request, whatever the upstream answered and whether it answered at all, and the events
/// the upstreams report, per version.
#[test]
fn metrics_count_decisions_and_events() {
    metrics_count_what_was_decided(config(5_000));
}

/// e, without configured events: every decision is still counted; no event series appears.
#[test]
fn metrics_count_decisions_without_events() {
    let mut without_events = config(5_000);
    without_events.as_object_mut().unwrap().remove("events");
    metrics_count_what_was_decided(without_events);
}

fn metrics_count_what_was_decided(filter_config: serde_json::Value) {
    let events_configured = filter_config.get("events").is_some();
    let envoy = Envoy::start(&filter_config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut client = envoy.client();
    let ids = user_ids("metrics", 200);
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    for id in &ids {
        let version = served_by(&as_user(&mut client, id.as_bytes()));
        *sent.entry(version_name(version)).or_default() += 1;
    }
    let canaries: Vec<&String> = ids
        .iter()
        .filter(|id| expected_version(id.as_bytes(), 5_000) == "canary")
        .collect();
    let stables: Vec<&String> = ids
        .iter()
        .filter(|id| expected_version(id.as_bytes(), 5_000) == "stable")
        .collect();

    // Canary upstream failing: each 503 was still decided once, for the canary.
    envoy.canary.fail(1000);
    for id in canaries.iter().take(20) {
        let r = as_user(&mut client, id.as_bytes());
        assert_eq!(r.status, 503);
        assert_eq!(r.upstream().as_deref(), Some("canary"));
    }
    *sent.entry("canary").or_default() += 20;
    envoy.canary.fail(0);

    // Business events: only configured names count, per version.
    envoy.stable.events(Some("checkout, ignored,checkout"));
    envoy.canary.events(Some("checkout"));
    for id in stables.iter().take(7) {
        served_by(&as_user(&mut client, id.as_bytes()));
    }
    for id in canaries.iter().take(3) {
        served_by(&as_user(&mut client, id.as_bytes()));
    }
    envoy.stable.events(None);
    envoy.canary.events(None);
    *sent.entry("stable").or_default() += 7;
    *sent.entry("canary").or_default() += 3;

    // A client that gives up before the answer: the filter never sees a response, and the
    // decision is counted all the same.
    envoy.canary.delay(1_000);
    reset_midway(&envoy, canaries[0]);
    *sent.entry("canary").or_default() += 1;
    envoy.canary.delay(0);

    let want = |version: &str| sent.get(version).copied().unwrap_or(0) as f64;
    let samples = prometheus_until(&envoy, |s| {
        decisions(s, "canary") == want("canary") && decisions(s, "stable") == want("stable")
    });
    for version in ["stable", "canary"] {
        assert_eq!(
            decisions(&samples, version),
            want(version),
            "cohort_decisions_total{{destination_service_name=\"web\",destination_version=\"{version}\"}}"
        );
    }
    let events = |version: &str| {
        prom::value(
            &samples,
            "cohort_events_total",
            &[
                ("cohort_rollout", "web"),
                ("cohort_version", version),
                ("cohort_event", "checkout"),
            ],
        )
    };
    if events_configured {
        assert_eq!(events("stable"), Some(14.0), "stable checkout events");
        assert_eq!(events("canary"), Some(3.0), "canary checkout events");
    } else {
        assert!(
            prom::matching(&samples, "cohort_events_total", &[]).is_empty(),
            "an event series without configured events"
        );
    }
    assert!(
        prom::matching(
            &samples,
            "cohort_events_total",
            &[("cohort_event", "ignored")]
        )
        .is_empty(),
        "an unconfigured event name became a series"
    );
    // The served metrics are the proxy's: the filter counts no responses of its own.
    let own_response_series: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name.starts_with("cohort_request"))
        .collect();
    assert!(own_response_series.is_empty(), "{own_response_series:?}");
    assert_eq!(
        prom::value(
            &samples,
            "cohort_rollout_weight_bp",
            &[("cohort_rollout", "web")]
        ),
        Some(5_000.0)
    );
    assert_eq!(
        prom::value(&samples, "cohort_config_generation", &[]),
        Some(1.0)
    );
    assert_eq!(
        prom::value(&samples, "cohort_config_rejected_total", &[]),
        Some(0.0)
    );
    eprintln!("metrics: sent {sent:?}");
}

/// e. A request whose upstream cannot be reached still counts one decision: it was routed, and
/// the routing check compares decisions with what the proxies served (here a 503 of Envoy's own).
#[test]
fn a_decision_is_counted_when_the_upstream_is_unreachable() {
    let options = Options {
        unreachable_canary: true,
        ..Options::default()
    };
    let envoy =
        Envoy::start_with(&config(10_000).to_string(), &options).unwrap_or_else(|e| panic!("{e}"));
    let mut client = envoy.client();
    let response = as_user(&mut client, b"nobody-answers");
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.upstream(), None, "{response:?}");
    let samples = prometheus_until(&envoy, |s| decisions(s, "canary") >= 1.0);
    assert_eq!(decisions(&samples, "canary"), 1.0);
    assert_eq!(decisions(&samples, "stable"), 0.0);
    assert_eq!(envoy.canary.served(), 0);
    assert!(prom::matching(&samples, "cohort_events_total", &[])
        .iter()
        .all(|s| s.value == 0.0));
}

fn version_name(version: String) -> &'static str {
    match version.as_str() {
        "stable" => "stable",
        "canary" => "canary",
        other => panic!("unexpected version {other}"),
    }
}

/// Runs `pushes` while two clients send each of `ids` in turn, every answer checked against
/// core's placement at `weight_bp`; returns how many requests were sent and what failed.
fn under_load(
    envoy: &Envoy,
    ids: &[String],
    weight_bp: u32,
    pushes: impl FnOnce(),
) -> (u64, Vec<String>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let loaders: Vec<_> = (0..2)
            .map(|_| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut client = envoy.client();
                    let (mut served, mut failures) = (0u64, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        for id in ids {
                            served += 1;
                            match client.get("/", &[(b"x-user-id", id.as_bytes())]) {
                                Ok(r)
                                    if r.status == 200
                                        && r.upstream().as_deref()
                                            == Some(expected_version(id.as_bytes(), weight_bp)) => {
                                }
                                Ok(r) => {
                                    failures.push(format!("{id}: {} {:?}", r.status, r.upstream()))
                                }
                                Err(e) => failures.push(format!("{id}: {e}")),
                            }
                        }
                    }
                    (served, failures)
                })
            })
            .collect();
        // Stop the clients however `pushes` ends, a failed assertion included.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        {
            let _stop = StopOnDrop(&stop);
            pushes();
        }
        loaders.into_iter().map(|h| h.join().unwrap()).fold(
            (0, Vec::new()),
            |(n, mut all), (served, failures)| {
                all.extend(failures);
                (n + served, all)
            },
        )
    })
}

/// f. Bad configs are refused, the last good one keeps serving, and no request fails meanwhile.
#[test]
fn bad_config_pushes_are_rejected_without_failing_requests() {
    let envoy = start(500);
    let ids = user_ids("load", 50);
    let bad_configs = [
        "{\"version\": 1, \"rollouts\": {".to_owned(),
        config(20_000).to_string(),
        {
            let mut c = config(500);
            c["identity"] = serde_json::json!([{"kind": "query", "name": "user"}]);
            c.to_string()
        },
        "[]".to_owned(),
        String::new(),
    ];
    let (served, failures) = under_load(&envoy, &ids, 500, || {
        for (i, bad) in bad_configs.iter().enumerate() {
            let rejected_before = prom::value(
                &envoy.prometheus().unwrap(),
                "cohort_config_rejected_total",
                &[],
            )
            .unwrap();
            let (result, elapsed) = envoy.push_config_and_wait(bad).unwrap();
            assert_eq!(
                result,
                PushResult::Rejected,
                "bad config {bad:?} was accepted"
            );
            let samples = envoy.prometheus().unwrap();
            let rejected = prom::value(&samples, "cohort_config_rejected_total", &[]).unwrap();
            assert!(
                rejected > rejected_before,
                "cohort_config_rejected_total stayed {rejected} after {bad:?}"
            );
            assert_eq!(
                prom::value(&samples, "cohort_config_generation", &[]),
                Some(1.0)
            );
            assert_eq!(
                prom::value(
                    &samples,
                    "cohort_rollout_weight_bp",
                    &[("cohort_rollout", "web")]
                ),
                Some(500.0)
            );
            assert_eq!(stat(&envoy, UPDATE_REJECTED), i as u64 + 1);
            eprintln!(
                "bad config {i} rejected in {:.1} ms",
                elapsed.as_secs_f64() * 1000.0
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    eprintln!("{served} requests during {} bad pushes", bad_configs.len());
    assert!(
        failures.is_empty(),
        "{} of {served} requests failed during bad pushes, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        envoy.log().contains("rollouts.web.weightBp"),
        "the rejection log names the field"
    );

    // A good config after the bad ones (with an unknown field, which is tolerated) takes.
    let mut good = config(2_500);
    good["someFutureField"] = serde_json::json!({"x": 1});
    let (result, _) = envoy.push_config_and_wait(&good.to_string()).unwrap();
    assert_eq!(result, PushResult::Accepted);
    let samples = prometheus_until(&envoy, |s| {
        prom::value(s, "cohort_rollout_weight_bp", &[("cohort_rollout", "web")]) == Some(2_500.0)
    });
    assert_eq!(
        prom::value(
            &samples,
            "cohort_rollout_weight_bp",
            &[("cohort_rollout", "web")]
        ),
        Some(2_500.0)
    );
    assert_eq!(
        prom::value(&samples, "cohort_config_generation", &[]),
        Some(2.0),
        "cohort_config_generation after one accepted push"
    );
}

/// f2. Pushes Envoy itself refuses (a truncated ECDS file, a `.wasm` that is not there) and a
/// burst of pushes with no pause between them, good and bad alternating, under load: no request
/// fails or is misrouted, and the last good config serves.
#[test]
fn ecds_refusals_and_push_bursts_fail_no_request() {
    let envoy = start(500);
    let ids = user_ids("burst", 50);
    let good = |n: usize| {
        let mut c = config(500);
        c["burst"] = serde_json::json!(n);
        c.to_string()
    };
    let (served, failures) = under_load(&envoy, &ids, 500, || {
        // Refused by Envoy before the filter sees anything.
        let ecds = cohort_tests::envoy::render_ecds(envoy.wasm(), &good(0)).unwrap();
        let truncated = &ecds[..ecds.len() / 2];
        let missing_wasm =
            cohort_tests::envoy::render_ecds(&envoy.dir().join("no-such-filter.wasm"), &good(0))
                .unwrap();
        for (what, text) in [("truncated", truncated), ("missing .wasm", &missing_wasm)] {
            let rejected = stat(&envoy, UPDATE_REJECTED);
            let success = stat(&envoy, UPDATE_SUCCESS);
            envoy.push_ecds(text).unwrap();
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(stat(&envoy, UPDATE_SUCCESS), success, "{what} was applied");
            eprintln!(
                "{what} ECDS file: update_rejected {rejected} → {}",
                stat(&envoy, UPDATE_REJECTED)
            );
        }
        // A burst: good and bad configs back to back, no waiting for Envoy between them.
        for n in 1..=20 {
            let text = if n % 2 == 0 {
                good(n)
            } else {
                config(20_000).to_string()
            };
            envoy.push_config(&text).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let (result, _) = envoy.push_config_and_wait(&good(99)).unwrap();
        assert_eq!(result, PushResult::Accepted);
        std::thread::sleep(Duration::from_millis(300));
    });
    eprintln!("{served} requests during the refused pushes and the burst");
    assert!(
        failures.is_empty(),
        "{} of {served} requests failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let samples = envoy.prometheus().unwrap();
    assert_eq!(
        prom::value(
            &samples,
            "cohort_rollout_weight_bp",
            &[("cohort_rollout", "web")]
        ),
        Some(500.0)
    );
    assert_eq!(stat(&envoy, "wasm.cohort.vm_reload"), 0);
}

/// g. Hostile input is bucketed or ignored, never a filter error, and the VM keeps working.
#[test]
fn hostile_headers_and_cookies_never_break_the_filter() {
    let envoy = start(5_000);
    let mut client = envoy.client();
    let big = vec![b'a'; 50 * 1024];
    let big_cookie = [b"uid=".as_slice(), &big].concat();
    let max_key = vec![b'k'; 1024];
    let too_long_key = vec![b'k'; 1025];
    let many_cookies: String = (0..199)
        .map(|i| format!("c{i}=v{i}; "))
        .chain(std::iter::once("uid=many-cookies-user".to_owned()))
        .collect();
    let utf8_key = "ünïcödé-用户".as_bytes();

    // (headers, expected key: Some(key) → routed by it; None → anonymous, gets a cookie)
    type Case<'a> = (Vec<(&'a [u8], &'a [u8])>, Option<&'a [u8]>);
    let cases: Vec<Case> = vec![
        (vec![(b"x-user-id", &big)], None),
        (vec![(b"cookie", &big_cookie)], None),
        (vec![(b"x-user-id", &max_key)], Some(&max_key)),
        (vec![(b"x-user-id", &too_long_key)], None),
        (
            vec![(b"x-user-id", b"\xff\xfe\x80user")],
            Some(b"\xff\xfe\x80user"),
        ),
        (vec![(b"x-user-id", utf8_key)], Some(utf8_key)),
        (
            vec![(b"cookie", b"uid=\xc3\x28\xa0\xa1")],
            Some(b"\xc3\x28\xa0\xa1"),
        ),
        (
            vec![(b"cookie", many_cookies.as_bytes())],
            Some(b"many-cookies-user"),
        ),
        (vec![(b"x-user-id", b"id"), (b"x-user-id", b"other")], None),
    ];
    for (i, (headers, key)) in cases.iter().enumerate() {
        let r = client.get("/", headers).unwrap();
        let version = served_by(&r);
        match key {
            Some(key) => assert_eq!(version, expected_version(key, 5_000), "case {i}"),
            None if i == cases.len() - 1 => {} // duplicate header: either value is fine
            None => assert!(
                r.header("set-cookie").is_some(),
                "case {i}: key not ignored"
            ),
        }
    }

    // Malformed Cookie headers: routed as cohort-core's cookie parser reads them.
    let malformed: &[&[u8]] = &[
        b";;;",
        b"=",
        b"a",
        b"uid",
        b"uid=",
        b"uid=\"",
        b"uid=\"abc",
        b"uid=abc\"",
        b"\"uid=quoted\"",
        b"=uid; ==; uid==x",
        b"uid=;uid=second",
        b"; ; uid = spaced ;",
        b"uid=\xff; \xff=\xfe",
        b"uid=a=b=c",
    ];
    for cookie in malformed {
        let r = client.get("/", &[(b"cookie", cookie)]).unwrap();
        let version = served_by(&r);
        let shown = String::from_utf8_lossy(cookie);
        match cookie_value(cookie, b"uid") {
            Some(key) => assert_eq!(version, expected_version(key, 5_000), "cookie {shown}"),
            None => assert!(r.header("set-cookie").is_some(), "cookie {shown}"),
        }
    }
    // Two cookie headers in one request.
    let r = client
        .get("/", &[(b"cookie", b"a=1"), (b"cookie", b"uid=two-headers")])
        .unwrap();
    served_by(&r);

    // Odd hosts: the wildcard rollout still claims them (or Envoy's codec refuses the request
    // itself, before any filter runs, with a 400 — never a 5xx).
    let hosts: &[&[u8]] = &[
        b"\xff\xfe.example",
        b"app.test:99999999999",
        b"[::1]:8080",
        b"APP.TEST.",
        &[b'h'; 2048],
    ];
    for host in hosts {
        let r = client
            .get("/", &[(b"host", host), (b"x-user-id", b"host-user")])
            .unwrap();
        let shown = String::from_utf8_lossy(host);
        if r.status == 400 && r.upstream().is_none() && r.text() == "Bad Request" {
            eprintln!("host {shown:?}: Envoy's codec answered 400 itself");
            client = envoy.client();
            continue;
        }
        assert_eq!(
            served_by(&r),
            expected_version(b"host-user", 5_000),
            "host {shown}"
        );
    }

    // The VM is alive and unchanged: normal users routed by core, no VM reload, metrics there.
    let ids = user_ids("after", 100);
    let got = in_parallel(&envoy, 2, &ids, |c, id| {
        served_by(&as_user(c, id.as_bytes()))
    });
    for (id, version) in ids.iter().zip(&got) {
        assert_eq!(version, expected_version(id.as_bytes(), 5_000), "{id}");
    }
    let samples = envoy.prometheus().unwrap();
    assert_eq!(
        prom::value(&samples, "cohort_config_generation", &[]),
        Some(1.0)
    );
    assert_eq!(
        stat(&envoy, "wasm.cohort.vm_reload"),
        0,
        "the VM was reloaded"
    );
    let log = envoy.log();
    let crashes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("Wasm VM failed") || l.contains("trap"))
        .collect();
    assert!(crashes.is_empty(), "the VM failed: {crashes:?}");
}

/// The committed example config serves as is.
#[test]
fn committed_example_config_serves() {
    let envoy = Envoy::start(cohort_tests::envoy::EXAMPLE_CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let id = canary_id("example", 500);
    let r = as_user(&mut envoy.client(), id.as_bytes());
    assert_eq!(served_by(&r), "canary");
}

/// The rollout's namespace reaches Prometheus on every per-rollout series: as the
/// `cohort_namespace` label, and as Istio's `destination_service_namespace` on the decisions. A
/// config without one exports the tag empty: Envoy's tag extraction
/// (`(cohort_namespace=\.=(.*?);\.;)`) still cuts `cohort_namespace=.=;.;` out of the name and
/// exports `cohort_namespace=""`, which Prometheus reads as no label. The same rollout name with
/// and without a namespace keeps two sets of series.
#[test]
fn metrics_carry_the_rollout_namespace() {
    use cohort_controller::source::envoy_admin::{answers, counters};
    use cohort_controller::source::series::to_samples;
    use cohort_controller::source::{RolloutKey, SeriesRequest};
    use cohort_rollout::evaluate::Observed;
    let mut shop = config(10_000);
    shop["rollouts"]["web"]["namespace"] = "shop".into();
    let envoy = Envoy::start(&shop.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut client = envoy.client();
    served_by(&as_user(&mut client, b"in-shop"));
    // The same rollout without a namespace, as a plain Envoy's config has it.
    let (result, _) = envoy
        .push_config_and_wait(&config(10_000).to_string())
        .unwrap();
    assert_eq!(result, PushResult::Accepted);
    for id in ["bare-1", "bare-2"] {
        served_by(&as_user(&mut client, id.as_bytes()));
    }
    fn canary_decisions(samples: &[Sample], namespace: &str) -> Option<f64> {
        prom::value(
            samples,
            "cohort_decisions_total",
            &[
                ("destination_service_namespace", namespace),
                ("destination_service_name", "web"),
                ("destination_version", "canary"),
            ],
        )
    }
    let samples = prometheus_until(&envoy, |s| {
        canary_decisions(s, "shop") == Some(1.0) && canary_decisions(s, "") == Some(2.0)
    });
    assert_eq!(canary_decisions(&samples, "shop"), Some(1.0));
    assert_eq!(canary_decisions(&samples, ""), Some(2.0));

    let text = envoy.prometheus_text().unwrap();
    // Every tag was cut out of the names, the empty one too.
    assert!(!text.contains("=.="), "a tag left in a name:\n{text}");
    // (family, its namespace label, its rollout label)
    let per_rollout = [
        (
            "cohort_decisions_total",
            "destination_service_namespace",
            ("destination_service_name", "web"),
        ),
        (
            "cohort_events_total",
            "cohort_namespace",
            ("cohort_rollout", "web"),
        ),
        (
            "cohort_rollout_weight_bp",
            "cohort_namespace",
            ("cohort_rollout", "web"),
        ),
    ];
    for (family, namespace_label, rollout) in per_rollout {
        let series = prom::matching(&samples, family, &[rollout]);
        assert!(!series.is_empty(), "no {family}");
        for namespace in ["shop", ""] {
            assert!(
                series
                    .iter()
                    .any(|s| s.labels.get(namespace_label).map(String::as_str) == Some(namespace)),
                "{family} lacks {namespace_label}={namespace:?}"
            );
        }
        assert!(
            series
                .iter()
                .all(|s| s.labels.contains_key(namespace_label)),
            "a {family} series without {namespace_label}"
        );
    }
    assert!(
        text.contains(
            r#"cohort_rollout_weight_bp{cohort_namespace="",cohort_rollout="web"} 10000"#
        ),
        "the empty namespace as Envoy exports it:\n{text}"
    );
    assert!(
        text.contains(
            r#"cohort_decisions_total{destination_service_namespace="",destination_service_name="web",destination_version="canary"} 2"#
        ),
        "the decisions with Istio's tag names:\n{text}"
    );
    // The shop series is no longer served: its gauge says so, though the rollout's name stays.
    assert!(
        text.contains(
            r#"cohort_rollout_weight_bp{cohort_namespace="shop",cohort_rollout="web"} 0"#
        ),
        "{text}"
    );
    // VM-wide metrics carry no rollout tags.
    assert_eq!(
        prom::value(&samples, "cohort_config_generation", &[]),
        Some(2.0)
    );

    // The controller's Envoy-admin reading (here over the whole count): what was served is the
    // clusters' (one Envoy's clusters, whatever rollout sent to them); the filter's decisions
    // keep the two namespaces apart.
    let request = |namespace: &str| SeriesRequest {
        rollout: "web".to_owned(),
        namespace: namespace.to_owned(),
        stable_version: "stable".to_owned(),
        canary_version: "canary".to_owned(),
        gates: Vec::new(),
        served: Served::EnvoyClusters {
            stable: "stable".to_owned(),
            canary: "canary".to_owned(),
        },
    };
    let rollouts = [request("shop"), request(""), request("billing")];
    let read = to_samples(&rollouts, &answers(&counters(&samples), &rollouts));
    let canary = |namespace: &str| read[&RolloutKey::new(namespace, "web")].canary.clone();
    for namespace in ["shop", "", "billing"] {
        assert_eq!(
            canary(namespace).requests,
            Observed::Value(3.0),
            "{namespace:?}"
        );
    }
    assert_eq!(canary("shop").decisions, Observed::Value(1.0));
    assert_eq!(canary("").decisions, Observed::Value(2.0));
    assert_eq!(canary("billing").decisions, Observed::NoData);
}

/// A rollout entry's `service` names the decisions' `destination_service_name`, as Istio names
/// the Service its served metrics count.
#[test]
fn decisions_carry_the_entrys_service() {
    let mut checkout = config(10_000);
    checkout["rollouts"]["web"]["namespace"] = "shop".into();
    checkout["rollouts"]["web"]["service"] = "web-svc".into();
    let envoy = Envoy::start(&checkout.to_string()).unwrap_or_else(|e| panic!("{e}"));
    served_by(&as_user(&mut envoy.client(), b"someone"));
    let labels = [
        ("destination_service_namespace", "shop"),
        ("destination_service_name", "web-svc"),
        ("destination_version", "canary"),
    ];
    let samples = prometheus_until(&envoy, |s| {
        prom::value(s, "cohort_decisions_total", &labels) == Some(1.0)
    });
    assert_eq!(
        prom::value(&samples, "cohort_decisions_total", &labels),
        Some(1.0)
    );
}
