//! Rotation: rate-limited, refused and failing keys hand the request to the next key.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay_mock::Reply;
use std::time::{Duration, Instant};
use support::*;

#[tokio::test]
async fn rate_limited_key_rotates_and_rests_until_reset() {
    let h = Harness::start(r#"strategy = "round-robin""#).await;
    h.mock
        .set(KEYS[0], Reply::rate_limited(&[("retry-after", "30")]));

    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.mock.calls(KEYS[0]), 1);
    assert_eq!(h.mock.calls(KEYS[1]), 1, "retried at once on the next key");

    // Inside the cooldown the key is skipped, whatever the rotation says.
    h.mock.set(KEYS[0], Reply::Normal);
    for _ in 0..6 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(
        h.mock.calls(KEYS[0]),
        1,
        "cooling key used again inside its cooldown"
    );
    let status = h
        .admin("GET", "/admin/api-keys/status", Some(ADMIN_TOKEN))
        .await
        .json();
    let k0 = &status["pools"][0]["keys"][0];
    assert_eq!(k0["state"], "cooling", "{status}");
    assert_eq!(k0["reason"], "rate_limited", "{status}");

    // A reset ends the rest: the key serves again on its next turn.
    let reset = h
        .admin(
            "POST",
            "/admin/keys/openai/KR_KEY_1/reset",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    for _ in 0..3 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(h.mock.calls(KEYS[0]), 2, "reset key not used on its turn");
}

#[tokio::test]
async fn rate_limited_key_serves_again_once_its_hint_passed_never_before() {
    let h = Harness::start(r#"strategy = "round-robin""#).await;
    h.mock
        .set(KEYS[0], Reply::rate_limited(&[("retry-after-ms", "150")]));
    assert_eq!(h.chat(CHAT).await.status, 200);
    let first_429 = h.mock.seen()[0].at;
    h.mock.set(KEYS[0], Reply::Normal);

    // Poll until the key is used again; that use comes after the hint, however slow the box.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.mock.calls(KEYS[0]) < 2 {
        assert!(
            Instant::now() < deadline,
            "key never came back after its cooldown"
        );
        assert_eq!(h.chat(CHAT).await.status, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back = h
        .mock
        .seen()
        .iter()
        .filter(|s| s.key.as_deref() == Some(KEYS[0]))
        .nth(1)
        .unwrap()
        .at;
    assert!(
        back.duration_since(first_429) >= Duration::from_millis(150),
        "reused after {:?}",
        back.duration_since(first_429)
    );
}

#[tokio::test]
async fn all_keys_cooling_answers_429_with_retry_after_and_no_upstream_call() {
    let h = Harness::start("").await;
    h.mock
        .set(KEYS[0], Reply::rate_limited(&[("retry-after", "30")]));
    h.mock
        .set(KEYS[1], Reply::rate_limited(&[("retry-after", "10")]));
    h.mock.set(
        KEYS[2],
        Reply::rate_limited(&[("x-ratelimit-reset-requests", "20s")]),
    );

    let first = h.chat(CHAT).await;
    assert_eq!(first.status, 429);
    assert_eq!(h.mock.total_calls(), 3, "each key tried once");

    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        h.mock.total_calls(),
        3,
        "no upstream call while every key cools"
    );
    assert_eq!(r.headers["retry-after"], "10", "first key ready in 10 s");
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn max_wait_waits_for_a_key_that_frees_up_soon() {
    let h = Harness::start(r#"max_wait = "2s""#).await;
    for k in KEYS {
        h.mock
            .set(k, Reply::rate_limited(&[("retry-after-ms", "300")]));
    }
    assert_eq!(
        h.chat(CHAT).await.status,
        429,
        "three 429s exhaust the attempts"
    );
    for k in KEYS {
        h.mock.set(k, Reply::Normal);
    }
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.mock.total_calls(), 4);
    // The request waited for a key rather than use one early: the upstream call that served
    // it came after the end of the first cooldown.
    let seen = h.mock.seen();
    let waited = seen[3].at.duration_since(seen[0].at);
    assert!(
        waited >= Duration::from_millis(300),
        "a key served {waited:?} after the first 429, inside its 300 ms rest"
    );
}

#[tokio::test]
async fn unauthorized_key_is_quarantined() {
    let h = Harness::start(r#"strategy = "round-robin""#).await;
    h.mock.set(KEYS[0], Reply::status(401));
    assert_eq!(h.chat(CHAT).await.status, 200);
    assert_eq!(h.mock.calls(KEYS[0]), 1);
    h.mock.set(KEYS[0], Reply::Normal);
    for _ in 0..9 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(h.mock.calls(KEYS[0]), 1, "quarantined key was used again");
    assert_eq!(h.mock.calls(KEYS[1]) + h.mock.calls(KEYS[2]), 10);
}

#[tokio::test]
async fn server_error_before_the_head_retries_without_penalty() {
    let h = Harness::start(r#"strategy = "round-robin""#).await;
    h.mock.set(KEYS[0], Reply::status(503));
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.mock.calls(KEYS[0]), 1);
    assert_eq!(h.mock.calls(KEYS[1]), 1);
    h.mock.set(KEYS[0], Reply::Normal);
    for _ in 0..3 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(
        h.mock.calls(KEYS[0]),
        2,
        "a single 5xx must not bench the key"
    );
}

#[tokio::test]
async fn client_error_passes_through_untouched_with_one_call() {
    let h = Harness::start("").await;
    let body = r#"{"error":{"message":"bad model","type":"invalid_request_error","code":"model_not_found"}}"#;
    for k in KEYS {
        h.mock.set(
            k,
            Reply::Fixed {
                status: 400,
                headers: vec![("x-upstream-marker".into(), "kept".into())],
                body: body.into(),
            },
        );
    }
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), body);
    assert_eq!(r.headers["x-upstream-marker"], "kept");
    assert_eq!(h.mock.total_calls(), 1);
}

async fn spread(strategy: &str) -> [usize; 3] {
    let h = Harness::start(&format!("strategy = \"{strategy}\"")).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = h.client.clone();
        let url = h.url("/v1/chat/completions");
        tasks.push(tokio::spawn(
            async move { chat_at(&client, &url).await.status },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.mock.total_calls(), 200);
    [
        h.mock.calls(KEYS[0]),
        h.mock.calls(KEYS[1]),
        h.mock.calls(KEYS[2]),
    ]
}

#[tokio::test]
async fn two_hundred_concurrent_requests_spread_round_robin() {
    let counts = spread("round-robin").await;
    assert!(counts.iter().all(|c| (66..=67).contains(c)), "{counts:?}");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_spread_least_loaded() {
    let counts = spread("least-loaded").await;
    assert!(counts.iter().all(|c| (66..=67).contains(c)), "{counts:?}");
}

#[tokio::test]
async fn rpm_limit_is_never_exceeded() {
    let h = Harness::start("rpm = 2").await;
    for _ in 0..6 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 429, "3 keys x 2 rpm = 6 requests a minute");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    // A second's bucket counts until all of that second has left the minute: up to 61 s.
    assert!((55..=61).contains(&wait), "retry-after {wait}");
    assert_eq!(h.mock.total_calls(), 6);
    assert_eq!(
        [
            h.mock.calls(KEYS[0]),
            h.mock.calls(KEYS[1]),
            h.mock.calls(KEYS[2])
        ],
        [2, 2, 2]
    );
}
