//! Tests of the lease bookkeeping, in paused time: spending, expiry, giving back, sizing.

use super::*;
use crate::key::{Key, Secret};
use crate::select::Strategy;

fn spec() -> PoolSpec {
    let keys = (0..2)
        .map(|i| Key::new(format!("k{i}"), Secret::new(format!("sk-{i}")), 6000, 1))
        .collect();
    PoolSpec::new("p", keys, Strategy::LeastLoaded)
}

fn leased(index: usize, taken: u32, span_ms: u64) -> Leased {
    Leased {
        index,
        taken,
        span: Duration::from_millis(span_ms),
        second: 1000,
        sent: Instant::now(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_spent_then_runs_out() {
    let (spec, p) = (spec(), PoolShares::default());
    assert_eq!(p.spend(&spec, &[]), None);
    p.keep(&spec, leased(1, 3, 200), true);
    assert_eq!(
        p.spend(&spec, &[1]),
        None,
        "a tried key's lease is not spent"
    );
    assert_eq!(p.spend(&spec, &[]), Some(1));
    assert_eq!(p.spend(&spec, &[]), Some(1));
    assert_eq!(
        p.spend(&spec, &[]),
        None,
        "3 taken: 1 by the call, 2 spent here"
    );
    assert_eq!(p.ask(&spec, 64).back, "");
}

#[tokio::test(start_paused = true)]
async fn what_expires_or_is_dropped_is_given_back_once() {
    let (spec, p) = (spec(), PoolShares::default());
    p.keep(&spec, leased(0, 5, 100), true);
    assert_eq!(p.spend(&spec, &[]), Some(0));
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(p.spend(&spec, &[]), None, "expired");
    let fp0 = spec.keys[0].fingerprint.clone();
    assert_eq!(p.ask(&spec, 64).back, format!("{fp0}:1000:3"));
    assert_eq!(p.ask(&spec, 64).back, "");
    // A lease that raced with an invalidation is given back whole, less the attempt's one.
    p.keep(&spec, leased(1, 4, 100), false);
    assert_eq!(p.spend(&spec, &[]), None);
    let fp1 = spec.keys[1].fingerprint.clone();
    assert_eq!(p.ask(&spec, 64).back, format!("{fp1}:1000:3"));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_key_is_spent_no_more() {
    let (spec, shares) = (spec(), Shares::default());
    let p = shares.pool("p");
    p.keep(&spec, leased(0, 4, 500), true);
    p.keep(&spec, leased(1, 4, 500), true);
    shares.drop_key("p", &spec.keys[0].fingerprint);
    assert_eq!(p.spend(&spec, &[]), Some(1));
    assert_eq!(p.spend(&spec, &[]), Some(1));
    assert_eq!(p.spend(&spec, &[]), Some(1));
    assert_eq!(p.spend(&spec, &[]), None);
    let back = shares.to_return(false);
    let fp0 = &spec.keys[0].fingerprint;
    assert_eq!(back, vec![("p".to_owned(), format!("{fp0}:1000:3"))]);
    // Losing the subscription drops every lease.
    p.keep(&spec, leased(1, 4, 500), true);
    shares.set_listening(false);
    assert_eq!(p.spend(&spec, &[]), None);
}

#[tokio::test(start_paused = true)]
async fn leases_grow_while_used_up_and_shrink_when_not() {
    let (spec, p) = (spec(), PoolShares::default());
    assert_eq!(
        p.ask(&spec, 64).want,
        2,
        "nothing left over: twice this one"
    );
    p.waiting.store(5, Ordering::Release);
    assert_eq!(p.ask(&spec, 64).want, 6, "the waiters and this one");
    p.waiting.store(0, Ordering::Release);
    // Each lease used up: twice what it served.
    p.keep(&spec, leased(0, 6, 100), true);
    for _ in 0..5 {
        assert_eq!(p.spend(&spec, &[]), Some(0));
    }
    assert_eq!(p.ask(&spec, 64).want, 12);
    p.keep(&spec, leased(0, 50, 100), true);
    for _ in 0..49 {
        p.spend(&spec, &[]);
    }
    assert_eq!(p.ask(&spec, 64).want, 64, "held to lease_max");
    // Some left when it ended: what it served.
    p.keep(&spec, leased(0, 12, 100), true);
    for _ in 0..3 {
        p.spend(&spec, &[]);
    }
    tokio::time::advance(Duration::from_millis(100)).await;
    let ask = p.ask(&spec, 64);
    assert_eq!(ask.want, 4);
    assert!(ask.back.ends_with(":1000:8"), "{}", ask.back);
}
