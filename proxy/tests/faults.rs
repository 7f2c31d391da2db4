//! Faults that must never cost more than the one request they belong to: refusals bench no key
//! for others, an invalid key is benched however the provider says it, a request that reached
//! the provider is not sent again, retries stay within their budget and the request's deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::Config;
use keyrelay_mock::{MockUpstream, Reply};
use std::time::{Duration, Instant};
use support::*;

fn refusal(key: &str) -> Reply {
    Reply::Fixed {
        status: 403,
        headers: vec![],
        body: format!(
            r#"{{"type":"error","error":{{"type":"permission_error","message":"key {key} may not use this"}}}}"#
        ),
    }
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

async fn post_to(h: &Harness, path: &str, extra: &[(&str, &str)]) -> support::Reply {
    let (name, value) = bearer();
    let mut headers: Vec<(&str, &str)> = vec![(name, &value)];
    headers.extend_from_slice(extra);
    h.send(post(&h.url(path), &headers, CHAT)).await
}

/// A harness whose first-byte timeout is 200 ms.
async fn impatient(provider_extra: &str) -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), provider_extra, "").replace(
        "first_byte_timeout = \"5s\"",
        "first_byte_timeout = \"200ms\"",
    );
    let config = Config::from_toml_str(&text, &env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    Harness {
        mock,
        proxy,
        client: http_client(),
    }
}

#[tokio::test]
async fn a_refusal_benches_no_key_for_other_traffic() {
    let h = Harness::start("").await;
    for k in KEYS {
        h.mock.set(k, refusal(k));
    }
    let r = post_to(&h, "/v1/fine_tuning/jobs", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "upstream_refused");
    assert_eq!(r.json()["error"]["type"], "permission_error");
    assert_no_secret(&r.text(), "a refusal's answer");
    assert_eq!(h.mock.total_calls(), 3, "each key was asked once");

    // Every key still serves everything else.
    for k in KEYS {
        h.mock.set(k, Reply::Normal);
    }
    for _ in 0..6 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    for k in KEYS {
        assert!(h.mock.calls(k) >= 2, "key {k} benched for chat");
    }
    let admin = h.proxy.admin_addr().unwrap();
    let ready = http::Request::get(format!("http://{admin}/readyz"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let ready = h.send(ready).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // On the refused route, one remembered key gets one chance instead of all three.
    let before = h.mock.total_calls();
    let r = post_to(&h, "/v1/fine_tuning/jobs", &[]).await;
    assert_eq!(
        r.status, 200,
        "the provider's own answer wins once it allows the key"
    );
    assert_eq!(h.mock.total_calls(), before + 1);
}

#[tokio::test]
async fn gemini_style_invalid_key_is_benched_and_the_request_moves_on() {
    let h = Harness::start("strategy = \"round-robin\"").await;
    h.mock.set(
        KEYS[0],
        Reply::Fixed {
            status: 400,
            headers: vec![],
            body: r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#.into(),
        },
    );
    for _ in 0..6 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(
        h.mock.calls(KEYS[0]),
        1,
        "an invalid key is asked once, then quarantined"
    );
}

#[tokio::test]
async fn a_client_error_that_echoes_the_words_benches_nothing() {
    let h = Harness::start("strategy = \"round-robin\"").await;
    let body = r#"{"error":{"message":"Invalid value: 'API_KEY_INVALID invalid_api_key'","type":"invalid_request_error","code":null}}"#;
    for k in KEYS {
        h.mock.set(
            k,
            Reply::Fixed {
                status: 400,
                headers: vec![],
                body: body.into(),
            },
        );
    }
    for _ in 0..3 {
        let r = h.chat(CHAT).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.text(), body, "a client error passes through untouched");
    }
    assert_eq!(
        h.mock.total_calls(),
        3,
        "no retries for a client's own error"
    );
    for k in KEYS {
        h.mock.set(k, Reply::Normal);
    }
    for _ in 0..3 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    for k in KEYS {
        assert_eq!(
            h.mock.calls(k),
            2,
            "key {k} was benched by a client's request"
        );
    }
}

#[tokio::test]
async fn replays_after_send_only_where_the_provider_opts_in() {
    let slow = [("x-mock-head-delay-ms", "2000")];
    let h = impatient("max_attempts = 2").await;
    let r = post_to(&h, "/v1/chat/completions", &slow).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        h.mock.total_calls(),
        1,
        "by default a sent request is never replayed"
    );
    let h = impatient("max_attempts = 2\nretry_after_send = true").await;
    let r = post_to(&h, "/v1/chat/completions", &slow).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        h.mock.total_calls(),
        2,
        "opted in: sent again on the next key"
    );
}

#[tokio::test]
async fn the_deadline_bounds_every_attempt() {
    let h = Harness::start("deadline = \"300ms\"\nretry_after_send = true").await;
    let started = Instant::now();
    let r = post_to(
        &h,
        "/v1/chat/completions",
        &[("x-mock-head-delay-ms", "3000")],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    // One attempt used the whole deadline; there was none left for another.
    assert_eq!(h.mock.total_calls(), 1);
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

#[tokio::test]
async fn a_spent_retry_budget_passes_the_last_answer_on() {
    let h = Harness::start("retry_budget_percent = 0\nretry_budget_min_per_second = 0").await;
    for k in KEYS {
        h.mock.set(k, Reply::rate_limited(&[("retry-after", "30")]));
    }
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json()["error"]["code"],
        "rate_limit_exceeded",
        "the provider's own answer"
    );
    assert_eq!(h.mock.total_calls(), 1, "no retry beyond the budget");
}
