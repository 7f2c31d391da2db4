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

/// A streaming chat request with the client token and extra headers.
fn stream_req(
    h: &Harness,
    extra: &[(&str, &str)],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let (name, value) = bearer();
    let mut headers: Vec<(&str, &str)> = vec![(name, &value)];
    headers.extend_from_slice(extra);
    post(
        &h.url("/v1/chat/completions"),
        &headers,
        r#"{"model":"m","stream":true,"messages":[]}"#,
    )
}

/// The bytes a client received and whether the body ended cleanly.
async fn read_stream(h: &Harness, extra: &[(&str, &str)]) -> (u16, String, bool) {
    use http_body_util::BodyExt;
    let resp = h.client.request(stream_req(h, extra)).await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let clean = loop {
        match body.frame().await {
            Some(Ok(f)) => {
                got.extend_from_slice(f.data_ref().map(|d| d.as_ref()).unwrap_or_default())
            }
            Some(Err(_)) => break false,
            None => break true,
        }
    };
    (status, String::from_utf8_lossy(&got).into_owned(), clean)
}

#[tokio::test]
async fn read_then_drop_is_never_replayed_by_default() {
    let h = Harness::start("").await;
    for _ in 0..20 {
        let r = post_to(
            &h,
            "/v1/chat/completions",
            &[("x-mock-fault", "drop-after-body")],
        )
        .await;
        assert_eq!(r.status, 502);
        assert_eq!(r.json()["error"]["code"], "upstream_connection_lost");
    }
    assert_eq!(
        h.mock.total_calls(),
        20,
        "one receipt per request, no replay"
    );
    let h = Harness::start("retry_after_send = true").await;
    let r = post_to(
        &h,
        "/v1/chat/completions",
        &[("x-mock-fault", "drop-after-body")],
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(h.mock.total_calls(), 3, "opted in: every key tried");
}

#[tokio::test]
async fn a_reset_before_the_head_is_not_replayed_either() {
    let h = Harness::start("").await;
    let r = post_to(&h, "/v1/chat/completions", &[("x-mock-fault", "reset")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(h.mock.total_calls(), 1);
}

#[tokio::test]
async fn streams_cut_by_fin_or_rst_look_cut_after_one_attempt() {
    let h = Harness::start("").await;
    for fault in ["fin-after=2", "rst-after=2"] {
        let before = h.mock.total_calls();
        let (status, text, clean) =
            read_stream(&h, &[("x-mock-fault", fault), ("x-mock-chunks", "6")]).await;
        assert_eq!(status, 200, "{fault}");
        assert!(!clean, "{fault}: a cut stream ended cleanly");
        assert!(
            text.contains("tok1") && !text.contains("[DONE]"),
            "{fault}: {text}"
        );
        assert_eq!(
            h.mock.total_calls(),
            before + 1,
            "{fault}: exactly one upstream attempt"
        );
    }
}

#[tokio::test]
async fn odd_but_complete_streams_pass_through_untouched() {
    let h = Harness::start("").await;
    let (_, text, clean) =
        read_stream(&h, &[("x-mock-fault", "no-done"), ("x-mock-chunks", "3")]).await;
    assert!(
        clean && text.contains("tok2") && !text.contains("[DONE]"),
        "{text}"
    );
    let (_, text, clean) = read_stream(
        &h,
        &[
            ("x-mock-fault", "malformed-after=1"),
            ("x-mock-chunks", "3"),
        ],
    )
    .await;
    assert!(
        clean && text.contains("{\"delta\n\n") && text.contains("[DONE]"),
        "{text}"
    );
    let (_, text, clean) = read_stream(&h, &[("x-mock-fault", "error-event-after=2")]).await;
    assert!(
        clean && text.ends_with("\n\n") && text.contains("event: error"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stalled_stream_is_cut_by_the_idle_timeout() {
    let h = Harness::start("").await;
    // The harness's idle timeout is 5 s; the stall is forever.
    let started = Instant::now();
    let (_, text, clean) = read_stream(&h, &[("x-mock-fault", "stall-after=2")]).await;
    assert!(!clean, "a stalled stream ended cleanly");
    assert!(text.contains("tok1"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn a_refused_route_leaves_chat_and_readiness_alone() {
    let h = Harness::start("").await;
    for k in KEYS {
        h.mock.set(
            k,
            Reply::Fault(keyrelay_mock::Fault::Forbidden {
                path_prefix: "/v1/fine_tuning".into(),
            }),
        );
    }
    let mut chat_ok = 0;
    for i in 0..60 {
        if i % 2 == 0 {
            let r = post_to(&h, "/v1/fine_tuning/jobs", &[]).await;
            assert_eq!(r.status, 403);
        } else if h.chat(CHAT).await.status == 200 {
            chat_ok += 1;
        }
    }
    assert_eq!(chat_ok, 30, "every chat request succeeded");
    let ready = h.admin("GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    // The route costs one upstream call per request once every key's refusal is remembered.
    let refused_calls = h
        .mock
        .seen()
        .iter()
        .filter(|s| s.uri.starts_with("/v1/fine_tuning"))
        .count();
    assert!(
        refused_calls <= 3 + 29,
        "{refused_calls} calls for 30 refused requests"
    );
}

#[tokio::test]
async fn a_429_storm_is_answered_by_keyrelay_without_upstream_calls() {
    let h = Harness::start("").await;
    for k in KEYS {
        h.mock.set(
            k,
            Reply::Fault(keyrelay_mock::Fault::RateLimited {
                retry_after: Some(20),
            }),
        );
    }
    let first = h.chat(CHAT).await;
    assert_eq!(first.status, 429);
    assert_eq!(h.mock.total_calls(), 3, "each key tried once");
    let started = Instant::now();
    for _ in 0..50 {
        let r = h.chat(CHAT).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    }
    assert_eq!(
        h.mock.total_calls(),
        3,
        "no upstream call while every key cools"
    );
    // 50 local answers take milliseconds each at most, even on a busy machine.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_redirect_is_passed_back_and_its_target_never_called() {
    let h = Harness::start("").await;
    let canary = MockUpstream::start().await.unwrap();
    let to = format!("redirect={}/stolen", canary.url());
    let r = post_to(&h, "/v1/chat/completions", &[("x-mock-fault", &to)]).await;
    assert_eq!(r.status, 302);
    assert_eq!(canary.total_calls(), 0);
}

#[tokio::test]
async fn a_server_error_once_moves_to_the_next_key_and_benches_nothing() {
    let h = Harness::start("strategy = \"round-robin\"").await;
    h.mock
        .set(KEYS[0], Reply::Fault(keyrelay_mock::Fault::StatusOnce(500)));
    for _ in 0..6 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert!(h.mock.calls(KEYS[0]) >= 2, "key 0 was benched by one 500");
}

#[tokio::test]
async fn the_mocks_control_routes_script_keys_and_count_receipts() {
    let h = Harness::start("strategy = \"round-robin\"").await;
    let control = |path: &str| {
        http::Request::post(format!("{}{path}", h.mock.url()))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let scripted = h
        .send(control(&format!(
            "/__mock/script?key={}&fault=status%3D503",
            KEYS[0]
        )))
        .await;
    assert_eq!(scripted.status, 200);
    assert_eq!(h.send(control("/__mock/script?key=x")).await.status, 400);
    for _ in 0..3 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    let stats = h
        .send(
            http::Request::get(format!("{}/__mock/stats", h.mock.url()))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .json();
    // Round-robin: key 0 (503), 1; then 2; then 0 (503), 1: five receipts for three requests.
    assert_eq!(stats["received"], 5, "{stats}");
    assert_eq!(h.send(control("/__mock/reset")).await.status, 200);
    for _ in 0..3 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert!(h.mock.calls(KEYS[0]) >= 2);
}
