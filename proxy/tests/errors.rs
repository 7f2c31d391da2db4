//! Bad requests and failing upstreams: provider-shaped errors, right statuses, no stray calls,
//! and never a client token or provider key where it does not belong.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

mod support;

use keyrelay::config::Config;
use keyrelay_mock::{MockUpstream, Reply};
use support::*;

#[tokio::test]
async fn missing_or_wrong_token_is_401_with_no_upstream_call() {
    let h = Harness::start("").await;
    let url = h.url("/v1/chat/completions");
    let missing = h.send(post(&url, &[], CHAT)).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    for bad in [
        "Bearer nope",
        "Bearer ",
        "Basic abc",
        &format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
    ] {
        let r = h.send(post(&url, &[("authorization", bad)], CHAT)).await;
        assert_eq!(r.status, 401, "{bad}");
    }
    let wrong_style = h.send(post(&url, &[("x-api-key", "nope")], CHAT)).await;
    assert_eq!(wrong_style.status, 401);
    assert_eq!(h.mock.total_calls(), 0);
}

#[tokio::test]
async fn upstream_never_sees_the_client_token_in_any_header_style() {
    let h = Harness::start("").await;
    let base = h.url("/v1/chat/completions");
    let styles: Vec<(String, Vec<(&str, String)>)> = vec![
        (
            base.clone(),
            vec![("authorization", format!("Bearer {TOKEN}"))],
        ),
        (base.clone(), vec![("x-api-key", TOKEN.to_owned())]),
        (base.clone(), vec![("x-goog-api-key", TOKEN.to_owned())]),
        (base.clone(), vec![("api-key", TOKEN.to_owned())]),
        (format!("{base}?key={TOKEN}&alt=sse"), vec![]),
        (
            base.clone(),
            vec![
                ("authorization", format!("bearer {TOKEN}")),
                ("x-api-key", TOKEN.to_owned()),
            ],
        ),
    ];
    for (url, headers) in &styles {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = h.send(post(url, &hs, CHAT)).await;
        assert_eq!(r.status, 200, "{url} {headers:?}: {}", r.text());
    }
    let seen = h.mock.seen();
    assert_eq!(seen.len(), styles.len());
    for s in &seen {
        assert!(!s.uri.contains(TOKEN), "token in upstream URI {}", s.uri);
        for (name, value) in &s.headers {
            assert!(!value.contains(TOKEN), "token in upstream header {name}");
        }
        let auth = s.header("authorization").unwrap();
        assert!(
            KEYS.iter().any(|k| auth == format!("Bearer {k}")),
            "upstream auth is a pool key"
        );
        assert!(
            s.header("x-api-key").is_none()
                && s.header("x-goog-api-key").is_none()
                && s.header("api-key").is_none()
        );
    }
    assert_eq!(
        seen[4].uri, "/v1/chat/completions?alt=sse",
        "query kept minus key="
    );
}

#[tokio::test]
async fn forwarded_request_keeps_path_query_body_and_sets_host() {
    let h = Harness::start("").await;
    let url = h.url("/v1/chat/completions?api-version=2024&x=1");
    let r = h
        .send(post(
            &url,
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("openai-organization", "org-1"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
            CHAT,
        ))
        .await;
    assert_eq!(r.status, 200);
    let s = &h.mock.seen()[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "/v1/chat/completions?api-version=2024&x=1");
    assert_eq!(s.body.as_ref(), CHAT.as_bytes());
    assert_eq!(
        s.header("openai-organization"),
        None,
        "a client never picks which organization a pooled key bills"
    );
    assert_eq!(s.header("host"), Some(h.mock.addr().to_string().as_str()));
    assert!(
        s.header("x-hop").is_none(),
        "header named by Connection was forwarded"
    );
}

#[tokio::test]
async fn oversized_body_is_413_with_no_upstream_call() {
    let h = Harness::start_with("", "max_body_bytes = 1024").await;
    let big = format!(r#"{{"model":"x","pad":"{}"}}"#, "a".repeat(4096));
    let r = h
        .send(post(
            &h.url("/v1/chat/completions"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            &big,
        ))
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    assert_eq!(h.mock.total_calls(), 0);
    let ok = format!(r#"{{"model":"x","pad":"{}"}}"#, "a".repeat(900));
    let r = h
        .send(post(
            &h.url("/v1/chat/completions"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            &ok,
        ))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn unknown_route_is_404_with_no_upstream_call() {
    let h = Harness::start("").await;
    for path in ["/nope/chat/completions", "/v1x/chat", "/"] {
        let r = h
            .send(post(
                &h.url(path),
                &[("authorization", &format!("Bearer {TOKEN}"))],
                CHAT,
            ))
            .await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    assert_eq!(h.mock.total_calls(), 0);
}

#[tokio::test]
async fn every_key_refused_is_502_and_never_echoes_the_upstream_body() {
    let h = Harness::start("").await;
    for k in KEYS {
        h.mock.set(
            k,
            Reply::Fixed {
                status: 401,
                headers: vec![],
                body: format!(r#"{{"error":{{"message":"Incorrect API key provided: {k}"}}}}"#),
            },
        );
    }
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_rejected_keys");
    assert_no_secret(&r.text(), "the error body");
    assert_eq!(h.mock.total_calls(), 3);
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_slow_head_is_504() {
    // A port held bound but not listening: connections to it are refused for the whole test.
    let closed = support::ports::ClosedPort::new();
    let text = config_text(&format!("http://127.0.0.1:{}", closed.port), "", "");
    let proxy = keyrelay::start(Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    let client = http_client();
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let r = chat_at(&client, &url).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");

    let mock = MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "max_attempts = 2", "").replace(
        "first_byte_timeout = \"5s\"",
        "first_byte_timeout = \"200ms\"",
    );
    let proxy = keyrelay::start(Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let r = send(
        &client,
        post(
            &url,
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("x-mock-head-delay-ms", "2000"),
            ],
            CHAT,
        ),
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert_eq!(
        mock.total_calls(),
        1,
        "a request that reached the provider is never sent again by default"
    );
}

#[tokio::test]
async fn anthropic_and_gemini_routes_answer_in_their_own_error_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[[clients]]
name = "t"
token = "env:KR_TOKEN"
[[providers]]
name = "anthropic"
base_url = "{0}"
auth = "x-api-key"
keys = [{{ name = "a", secret = "env:KR_KEY_1" }}]
[[providers]]
name = "gemini"
base_url = "{0}/v1beta"
auth = "x-goog-api-key"
keys = [{{ secret = "env:KR_KEY_2" }}]
"#,
        mock.url()
    );
    let proxy = keyrelay::start(Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    let client = http_client();
    let a = format!("http://{}/anthropic/v1/messages", proxy.addr());
    let r = send(&client, post(&a, &[("x-api-key", "wrong")], CHAT)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let ok = send(
        &client,
        post(
            &a,
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("anthropic-version", "2023-06-01"),
            ],
            CHAT,
        ),
    )
    .await;
    assert_eq!(ok.status, 200);
    let seen = &mock.seen()[0];
    assert_eq!(seen.uri, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(KEYS[0]));
    assert!(seen.header("authorization").is_none());
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));

    let g = format!(
        "http://{}/gemini/models/gemini-pro:generateContent?key=wrong",
        proxy.addr()
    );
    let r = send(&client, post(&g, &[], CHAT)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");
    let g = format!(
        "http://{}/gemini/models/gemini-pro:generateContent?key={TOKEN}",
        proxy.addr()
    );
    assert_eq!(send(&client, post(&g, &[], CHAT)).await.status, 200);
    let seen = &mock.seen()[1];
    assert_eq!(seen.uri, "/v1beta/models/gemini-pro:generateContent");
    assert_eq!(seen.header("x-goog-api-key"), Some(KEYS[1]));
}
