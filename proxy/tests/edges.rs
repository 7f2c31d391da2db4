//! Hostile edges: what a client may not control about the upstream request.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::Config;
use keyrelay_mock::MockUpstream;
use support::*;

#[tokio::test]
async fn only_allowed_headers_reach_the_provider_and_accounts_come_from_the_key() {
    let mock = MockUpstream::start().await.unwrap();
    let keys = r#"keys = [
  { name = "k1", secret = "env:KR_KEY_1", organization = "org-one", project = "proj-one" },
]
"#;
    let text = config_text(&mock.url(), "", "").replace("keys = \"env:KR_KEY_*\"\n", keys);
    let proxy = keyrelay::start(Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let r = send(
        &http_client(),
        post(
            &url,
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("openai-organization", "org-theirs"),
                ("openai-project", "proj-theirs"),
                ("cookie", "session=abc"),
                ("x-forwarded-for", "10.1.2.3"),
                ("x-forwarded-host", "evil.example"),
                ("x-goog-user-project", "someone-elses"),
                ("x-stainless-lang", "python"),
                ("openai-beta", "assistants=v2"),
                ("idempotency-key", "abc-123"),
                ("x-unknown-thing", "1"),
            ],
            CHAT,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let s = &mock.seen()[0];
    assert_eq!(s.header("openai-organization"), Some("org-one"));
    assert_eq!(s.header("openai-project"), Some("proj-one"));
    for dropped in [
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-goog-user-project",
        "x-unknown-thing",
    ] {
        assert_eq!(s.header(dropped), None, "{dropped} reached the provider");
    }
    assert_eq!(s.header("x-stainless-lang"), Some("python"));
    assert_eq!(s.header("openai-beta"), Some("assistants=v2"));
    assert_eq!(s.header("idempotency-key"), Some("abc-123"));
    assert_eq!(s.header("content-type"), Some("application/json"));
    // The provider's own host, whatever the client addressed: the base URL's authority.
    let authority = mock
        .url()
        .split("://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(s.header("host"), Some(authority.as_str()));
    let hosts = s.headers.iter().filter(|(k, _)| k == "host").count();
    assert_eq!(hosts, 1, "one Host header");
}

#[tokio::test]
async fn x_forwarded_for_is_keyrelays_own_when_configured() {
    let mock = MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "", "").replace(
        "pass_headers = [\"x-mock-*\"]",
        "pass_headers = [\"x-mock-*\"]\nforwarded_for = true",
    );
    let proxy = keyrelay::start(Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let headers = [
        ("authorization", format!("Bearer {TOKEN}")),
        ("x-forwarded-for", "10.1.2.3".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = send(&http_client(), post(&url, &headers, CHAT)).await;
    assert_eq!(r.status, 200);
    assert_eq!(mock.seen()[0].header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn headers_that_may_never_be_forwarded_are_refused_in_config() {
    let text = config_text("http://127.0.0.1:1", "", "").replace(
        "pass_headers = [\"x-mock-*\"]",
        "pass_headers = [\"cookie\", \"x-api*\", \"bad header\"]",
    );
    let e = Config::from_toml_str(&text, &env()).unwrap_err();
    assert!(
        e.mentions("upstream.pass_headers[0]: \"cookie\" may never be forwarded"),
        "{e}"
    );
    assert!(e.mentions("upstream.pass_headers[1]"), "{e}");
    assert!(
        e.mentions("upstream.pass_headers[2]: \"bad header\" is not a header name"),
        "{e}"
    );
}
