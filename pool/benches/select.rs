//! Criterion: one attempt's work in the pool on the embedded store (acquire a key, then report
//! a 200 through the lease), with 1, 8 and 64 keys and each selection strategy.

#![allow(clippy::expect_used, reason = "a bench fails loudly on a broken setup")]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, StatusCode};
use keyrelay_pool::{
    Acquired, Answer, Fingerprinter, Key, KeyAuth, MemoryStore, Observed, Pool, PoolSettings,
    PoolSpec, Secret, Strategy, Tried,
};
use std::hint::black_box;
use std::sync::Arc;

/// A pool of `n` keys with a limit far above what a bench run sends.
fn pool(n: usize, strategy: Strategy) -> Pool {
    // Keyed fingerprints are quick to make (the unkeyed ones are deliberately slow).
    let fingerprints = Fingerprinter::keyed(Secret::new("bench-server-secret"));
    let keys = (0..n)
        .map(|i| {
            let secret = Secret::new(format!("sk-bench-{i:04}"));
            Key::fingerprinted(format!("k{i}"), secret, u32::MAX, 1, &fingerprints)
        })
        .collect();
    let auth = KeyAuth {
        header: http::header::AUTHORIZATION,
        bearer: true,
    };
    let spec = PoolSpec::new("bench", keys, strategy);
    let store = Arc::new(MemoryStore::new());
    Pool::new(spec, PoolSettings::default(), store, auth, &Observed::new())
        .expect("a bench pool builds")
}

/// Acquire then report, as one request's single successful attempt does. The embedded
/// store's futures are ready at once, so no runtime is needed.
fn attempt(pool: &Pool, headers: &HeaderMap) {
    let mut tried = Tried::new("/v1/chat/completions", 3);
    let acquired = pool.acquire(&mut tried).now_or_never().expect("ready");
    let Acquired::Lease(lease) = acquired else {
        panic!("no key: {acquired:?}");
    };
    black_box(lease.credential());
    let answer = Answer::Head {
        status: StatusCode::OK,
        headers,
        body: None,
    };
    black_box(lease.report(answer).now_or_never().expect("ready"));
}

fn select(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("acquire_report");
    for strategy in [
        Strategy::LeastLoaded,
        Strategy::RoundRobin,
        Strategy::Weighted,
    ] {
        for n in [1, 8, 64] {
            let pool = pool(n, strategy);
            let id = BenchmarkId::new(format!("{strategy:?}"), n);
            group.bench_with_input(id, &pool, |b, pool| b.iter(|| attempt(pool, &headers)));
        }
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
