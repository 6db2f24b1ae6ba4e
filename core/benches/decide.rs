//! Nanoseconds per routing decision: what the filter adds to every request, less the host calls.
//!
//! `cargo bench -p cohort-core --bench decide`

// A benchmark is test code: a broken fixture should stop it loudly.
#![allow(clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

use cohort_core::bucket::place;
use cohort_core::config::{parse, Compiled};
use cohort_core::decide::{decide, RequestView};

/// Three rollouts, header then cookie identity, as a mesh-wide filter would carry.
const CONFIG: &str = r#"{
    "version": 1,
    "identity": [{"kind": "header", "name": "x-user-id"}, {"kind": "cookie", "name": "uid"}],
    "events": ["checkout"],
    "rollouts": {
        "cart": {"hosts": ["cart"], "weightBp": 2500},
        "checkout": {"hosts": ["checkout"], "weightBp": 500, "allowKeys": ["alice", "bob"]},
        "search": {"hosts": ["search"], "weightBp": 100}
    }
}"#;

struct Request {
    user: Option<&'static [u8]>,
    cookie: Option<&'static [u8]>,
}

impl RequestView for Request {
    fn header(&self, name: &str) -> Option<&[u8]> {
        match name {
            "x-user-id" => self.user,
            "cookie" => self.cookie,
            _ => None,
        }
    }
}

fn compiled() -> Compiled {
    match parse(CONFIG.as_bytes()) {
        Ok(config) => config,
        Err(errors) => panic!("benchmark config: {errors}"),
    }
}

fn benches(c: &mut Criterion) {
    let config = compiled();
    let by_header = Request {
        user: Some(b"user-4711"),
        cookie: None,
    };
    let by_cookie = Request {
        user: None,
        cookie: Some(b"theme=dark; uid=user-4711; lang=en"),
    };
    let anonymous = Request {
        user: None,
        cookie: None,
    };
    let mut new_id = || "0123456789abcdef0123456789abcdef".to_owned();

    c.bench_function("place (murmur3 + bucket)", |b| {
        b.iter(|| place(black_box("checkout"), black_box(b"user-4711")))
    });
    c.bench_function("decide: header key", |b| {
        b.iter(|| {
            decide(
                &config,
                black_box(b"checkout.shop.svc.cluster.local:8080"),
                &by_header,
                &mut new_id,
            )
            .force_denied
        })
    });
    c.bench_function("decide: cookie key", |b| {
        b.iter(|| {
            decide(
                &config,
                black_box(b"checkout:8080"),
                &by_cookie,
                &mut new_id,
            )
            .force_denied
        })
    });
    c.bench_function("decide: anonymous (issues an id)", |b| {
        b.iter(|| decide(&config, black_box(b"checkout"), &anonymous, &mut new_id).force_denied)
    });
    c.bench_function("decide: host without rollout", |b| {
        b.iter(|| {
            decide(
                &config,
                black_box(b"unrelated.example.com"),
                &by_header,
                &mut new_id,
            )
            .force_denied
        })
    });
}

criterion_group!(decide_benches, benches);
criterion_main!(decide_benches);
