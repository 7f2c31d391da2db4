//! Criterion: the header work on a realistic SDK request head (the OpenAI Python SDK's, with
//! its Stainless telemetry): finding the client's credential, the allow-list policy, and the
//! credential swap that puts a pooled key in for one attempt.

#![allow(clippy::expect_used, reason = "a bench fails loudly on a broken setup")]

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use keyrelay::headers::{presented_credentials, with_credential, HeaderPolicy};
use std::hint::black_box;

/// What the OpenAI Python SDK sends on a chat completion, as hyper hands it over.
fn sdk_head() -> HeaderMap {
    let pairs = [
        ("host", "keyrelay.internal:8080"),
        ("accept-encoding", "gzip, deflate"),
        ("connection", "keep-alive"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.4"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.4"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.12.7"),
        ("authorization", "Bearer kr-client-token-0123456789abcdef"),
        ("x-stainless-async", "false"),
        ("x-stainless-retry-count", "0"),
        ("content-length", "1043"),
    ];
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        // Parsed from bytes, as hyper does: custom names and values are not static.
        let name = HeaderName::from_bytes(k.as_bytes()).expect("a valid name");
        h.append(
            name,
            HeaderValue::from_bytes(v.as_bytes()).expect("a valid value"),
        );
    }
    h
}

fn headers(c: &mut Criterion) {
    let head = sdk_head();
    let policy = HeaderPolicy::new(&[], false);
    let mut key = HeaderValue::from_static("Bearer sk-proj-bench-0123456789abcdefghijklmnop");
    key.set_sensitive(true);
    let credential = (http::header::AUTHORIZATION, key);
    let forwarded = policy.forward(head.clone(), None);

    c.bench_function("presented_credentials", |b| {
        b.iter(|| black_box(presented_credentials(black_box(&head), None)));
    });
    c.bench_function("policy_forward", |b| {
        b.iter_batched(
            || head.clone(),
            |h| black_box(policy.forward(h, None)),
            criterion::BatchSize::SmallInput,
        );
    });
    c.bench_function("credential_swap", |b| {
        b.iter(|| {
            black_box(with_credential(
                black_box(&forwarded),
                (&credential.0, &credential.1),
                &[],
            ))
        });
    });
    c.bench_function("forward_and_swap", |b| {
        b.iter_batched(
            || head.clone(),
            |h| {
                let forwarded = policy.forward(h, None);
                black_box(with_credential(
                    &forwarded,
                    (&credential.0, &credential.1),
                    &[],
                ))
            },
            criterion::BatchSize::SmallInput,
        );
    });
}

criterion_group!(benches, headers);
criterion_main!(benches);
