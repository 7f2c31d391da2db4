//! Config, secrets and admin hardening: `.env` only from the working directory (or
//! `--env-file`) with parse errors by line; `file:` secrets others may read refused; base URLs
//! with credentials or on metadata addresses refused (and never printed); fingerprints keyed by
//! a server secret; the admin listener's Host check and security headers.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

mod support;

use http::{Request, StatusCode};
use http_body_util::Full;
use keyrelay::config::{Config, MapEnv, ALLOW_READABLE_SECRETS};
use keyrelay_pool::{fingerprint, Fingerprinter, Secret};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

const FP_SECRET: &str = "kr-test-fingerprint-secret-0123456789abcdef";

fn tempdir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("keyrelay-hardening-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `keyrelay check` in `dir` with a clean environment (only what `vars` adds).
fn check_in(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    cmd.arg("check")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A minimal config whose client token and keys come from `token` and `keys` references.
fn config(token: &str, keys: &str, provider_extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[clients]]\nname = \"t\"\ntoken = \"{token}\"\n[[providers]]\nname = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nkeys = {keys}\n{provider_extra}"
    )
}

#[test]
fn dotenv_is_read_from_the_working_directory_only() {
    let parent = tempdir("dotenv-parent");
    let child = parent.join("child");
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(
        parent.join(".env"),
        format!("KR_HD_TOKEN={TOKEN}\nKR_HD_KEY_1={}\n", KEYS[0]),
    )
    .unwrap();
    std::fs::write(
        child.join("keyrelay.toml"),
        config("env:KR_HD_TOKEN", "\"env:KR_HD_KEY_*\"", ""),
    )
    .unwrap();

    // The parent's .env is not searched for.
    let out = check_in(&child, &["--config", "keyrelay.toml"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("env var KR_HD_TOKEN is not set"), "{all}");
    assert_no_secret(&all, "check output");

    // Named explicitly, it is read.
    let out = check_in(
        &child,
        &["--config", "keyrelay.toml", "--env-file", "../.env"],
        &[],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&fingerprint(KEYS[0])), "{all}");
    assert_no_secret(&all, "check output");

    // An explicit file that is not there is an error, not silence.
    let out = check_in(
        &child,
        &["--config", "keyrelay.toml", "--env-file", "missing.env"],
        &[],
    );
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("cannot read env file missing.env"), "{all}");
}

#[test]
fn a_dotenv_parse_error_stops_the_start_naming_the_line_not_its_text() {
    let dir = tempdir("dotenv-bad");
    std::fs::write(
        dir.join("keyrelay.toml"),
        config("env:KR_HD_TOKEN", "\"env:KR_HD_KEY_*\"", ""),
    )
    .unwrap();
    std::fs::write(
        dir.join(".env"),
        format!(
            "# comment\nKR_HD_TOKEN={TOKEN}\nKR_HD_KEY_1 {}\nKR_HD_KEY_2=x\n",
            KEYS[1]
        ),
    )
    .unwrap();
    for args in [
        &["--config", "keyrelay.toml"][..],
        &["--config", "keyrelay.toml", "--env-file", ".env"],
    ] {
        let out = check_in(&dir, args, &[]);
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains("line 3 cannot be parsed"), "{all}");
        assert!(
            !all.contains("KR_HD_KEY_1"),
            "the line's text is not echoed: {all}"
        );
        assert_no_secret(&all, "check output");
    }
    // The proxy itself refuses to start the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(["--config", "keyrelay.toml"])
        .env_clear()
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("line 3 cannot be parsed"),
        "{}",
        text(&out)
    );
}

fn write_secret(path: &Path, value: &str, mode: u32) {
    std::fs::write(path, value).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn secret_files_others_may_read_are_refused_with_the_fix() {
    let dir = tempdir("modes");
    let key = dir.join("openai.key");
    let token = dir.join("token");
    write_secret(&token, TOKEN, 0o600);
    let text_for = || {
        config(
            &format!("file:{}", token.display()),
            &format!("[{{ secret = \"file:{}\" }}]", key.display()),
            "",
        )
    };
    for mode in [0o644, 0o604, 0o640, 0o660, 0o606] {
        write_secret(&key, KEYS[0], mode);
        let err = Config::from_toml_str(&text_for(), &MapEnv::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        assert!(err.contains(&key.display().to_string()), "{err}");
        assert!(err.contains(ALLOW_READABLE_SECRETS), "{err}");
        assert_no_secret(&err, "config error");
    }
    // The override, for mounts that cannot be made private.
    let allowed = MapEnv::default().with(ALLOW_READABLE_SECRETS, "1");
    let c = Config::from_toml_str(&text_for(), &allowed).unwrap();
    assert_eq!(c.providers[0].keys[0].secret.expose(), KEYS[0]);
    for mode in [0o600, 0o400] {
        write_secret(&key, KEYS[0], mode);
        Config::from_toml_str(&text_for(), &MapEnv::default()).unwrap();
    }

    // Through the binary: refused, then accepted with the variable set.
    write_secret(&key, KEYS[0], 0o644);
    std::fs::write(dir.join("keyrelay.toml"), text_for()).unwrap();
    let out = check_in(&dir, &["--config", "keyrelay.toml"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("chmod 600"), "{all}");
    assert_no_secret(&all, "check output");
    let out = check_in(
        &dir,
        &["--config", "keyrelay.toml"],
        &[(ALLOW_READABLE_SECRETS, "1")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_no_secret(&text(&out), "check output");
}

#[test]
fn base_urls_with_credentials_or_on_metadata_addresses_are_refused() {
    let with_base = |url: &str, extra: &str| {
        config("env:KR_TOKEN", "\"env:KR_KEY_*\"", extra).replace("http://127.0.0.1:9/v1", url)
    };
    for url in [
        "https://user:hunter2-base-url-pw@api.example.com/v1",
        "https://hunter2-base-url-pw@api.example.com",
    ] {
        let err = Config::from_toml_str(&with_base(url, ""), &env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers[0].base_url"), "{err}");
        assert!(err.contains("credentials"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    for url in [
        "http://169.254.169.254/latest",
        "http://169.254.10.1:8080",
        "http://[fe80::1]/v1",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://2852039166/",
    ] {
        let err = Config::from_toml_str(&with_base(url, ""), &env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("link-local or cloud metadata"), "{url}: {err}");
        let allowed = with_base(url, "allow_link_local_base_url = true");
        let c = Config::from_toml_str(&allowed, &env()).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(c.providers[0].allow_link_local_base_url);
    }

    // `keyrelay check` prints neither the password nor any key.
    let dir = tempdir("check-creds");
    std::fs::write(
        dir.join("keyrelay.toml"),
        with_base("https://user:hunter2-base-url-pw@api.example.com/v1", ""),
    )
    .unwrap();
    let vars = [
        ("KR_TOKEN", TOKEN),
        ("KR_KEY_1", KEYS[0]),
        ("KR_KEY_2", KEYS[1]),
    ];
    let out = check_in(&dir, &["--config", "keyrelay.toml"], &vars);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("https://***@api.example.com/v1"), "{all}");
    assert_no_secret(&all, "check output");
    std::fs::write(
        dir.join("keyrelay.toml"),
        with_base("https://api.example.com/v1", ""),
    )
    .unwrap();
    let out = check_in(&dir, &["--config", "keyrelay.toml"], &vars);
    assert!(out.status.success(), "{}", text(&out));
    assert_no_secret(&text(&out), "check output");
}

#[tokio::test]
async fn fingerprints_are_keyed_by_the_server_secret() {
    let env = env()
        .with("KR_FP", FP_SECRET)
        .with("KR_FP_2", "another-fingerprint-secret-42");
    let keyed = |reference: &str| {
        let text = config("env:KR_TOKEN", "\"env:KR_KEY_*\"", "").replace(
            "[server]\n",
            &format!("[server]\nfingerprint_secret = \"{reference}\"\n"),
        );
        Config::from_toml_str(&text, &env).unwrap()
    };
    let a = keyed("env:KR_FP");
    let again = keyed("env:KR_FP");
    let b = keyed("env:KR_FP_2");
    let plain =
        Config::from_toml_str(&config("env:KR_TOKEN", "\"env:KR_KEY_*\"", ""), &env).unwrap();
    let fps = |c: &Config| -> Vec<String> {
        c.providers[0]
            .keys
            .iter()
            .map(|k| k.fingerprint.clone())
            .collect()
    };
    // Instances sharing the secret agree; the secret changes them; without one, the slow
    // unkeyed derivation.
    assert_eq!(fps(&a), fps(&again));
    assert_ne!(fps(&a), fps(&b));
    let want = Fingerprinter::keyed(Secret::new(FP_SECRET));
    assert_eq!(fps(&a)[0], want.fingerprint(KEYS[0]));
    assert_eq!(fps(&plain)[0], fingerprint(KEYS[0]));
    assert_ne!(fps(&a)[0], fps(&plain)[0]);
    assert!(fps(&a).iter().all(|f| f.len() == 12));

    // Refused: a literal, a short secret.
    let text = config("env:KR_TOKEN", "\"env:KR_KEY_*\"", "").replace(
        "[server]\n",
        "[server]\nfingerprint_secret = \"short-literal\"\n",
    );
    let err = Config::from_toml_str(&text, &env).unwrap_err().to_string();
    assert!(err.contains("server.fingerprint_secret"), "{err}");
    let err = Config::from_toml_str(
        &text.replace("short-literal", "env:KR_SHORT"),
        &env.clone().with("KR_SHORT", "abc"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("too short"), "{err}");

    // A running proxy names its keys by the keyed fingerprint, and never shows the secret.
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "", "fingerprint_secret = \"env:KR_FP\"");
    let proxy = keyrelay::start(Config::from_toml_str(&text, &env).unwrap())
        .await
        .unwrap();
    let admin = proxy.admin_addr().unwrap();
    let client = http_client();
    let get = |path: &str, token: bool| {
        let mut b = Request::get(format!("http://{admin}{path}"));
        if token {
            b = b.header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        }
        b.body(Full::default()).unwrap()
    };
    let status = send(&client, get("/admin/api-keys/status", true)).await;
    assert_eq!(status.status, StatusCode::OK);
    let body = status.text();
    assert!(body.contains(&want.fingerprint(KEYS[0])), "{body}");
    assert!(!body.contains(&fingerprint(KEYS[0])), "{body}");
    let metrics = send(&client, get("/metrics", false)).await.text();
    for place in [&body, &metrics] {
        assert!(!place.contains(&FP_SECRET[..12]));
        assert_no_secret(place, "admin output");
    }
}

async fn admin_get(admin: std::net::SocketAddr, path: &str, host: Option<&str>) -> Reply {
    let mut b = Request::get(format!("http://{admin}{path}"));
    if let Some(h) = host {
        b = b.header("host", h);
    }
    send(&http_client(), b.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn the_admin_listener_answers_only_its_own_hosts() {
    let h = Harness::start("").await;
    let admin = h.proxy.admin_addr().unwrap();
    let port = admin.port();
    for path in [
        "/metrics",
        "/healthz",
        "/admin",
        "/admin/api-keys/status",
        "/admin/dashboard.js",
    ] {
        for host in [
            format!("rebind.attacker.example:{port}"),
            "rebind.attacker.example".to_owned(),
            format!("localhost:{}", port + 1),
            format!("127.0.0.1.nip.io:{port}"),
        ] {
            let r = admin_get(admin, path, Some(&host)).await;
            assert_eq!(
                r.status,
                StatusCode::MISDIRECTED_REQUEST,
                "{path} with Host {host}"
            );
            assert!(!r.text().contains("keyrelay_"), "{path}: {}", r.text());
        }
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = admin_get(admin, "/metrics", Some(&host)).await;
        assert_eq!(r.status, StatusCode::OK, "Host {host}");
    }
    // What hyper's client sends by default (the URL's authority) works, over HTTP/2 too.
    assert_eq!(
        admin_get(admin, "/healthz", None).await.status,
        StatusCode::OK
    );
    let h2: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let r = h2
        .request(
            Request::get(format!("http://{admin}/healthz"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A configured name is answered.
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "", "").replace(
        "token = \"env:KR_ADMIN\"",
        "token = \"env:KR_ADMIN\"\nallowed_hosts = [\"keyrelay.internal\", \"Metrics.Example:80\"]",
    );
    let proxy = keyrelay::start(Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    let admin = proxy.admin_addr().unwrap();
    for (host, want) in [
        ("keyrelay.internal:1234", StatusCode::OK),
        ("keyrelay.internal", StatusCode::OK),
        ("metrics.example", StatusCode::OK),
        ("metrics.example:81", StatusCode::MISDIRECTED_REQUEST),
        ("other.internal", StatusCode::MISDIRECTED_REQUEST),
    ] {
        assert_eq!(
            admin_get(admin, "/metrics", Some(host)).await.status,
            want,
            "{host}"
        );
    }
    let bad = config_text(&mock.url(), "", "").replace(
        "token = \"env:KR_ADMIN\"",
        "token = \"env:KR_ADMIN\"\nallowed_hosts = [\"a b\"]",
    );
    let err = Config::from_toml_str(&bad, &env()).unwrap_err().to_string();
    assert!(err.contains("admin.allowed_hosts[0]"), "{err}");
}

#[tokio::test]
async fn the_dashboard_is_served_under_a_strict_csp_with_nothing_inline() {
    let h = Harness::start("").await;
    let admin = h.proxy.admin_addr().unwrap();
    let page = admin_get(admin, "/admin", None).await;
    assert_eq!(page.status, StatusCode::OK);
    let header = |r: &Reply, name: &str| {
        r.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        header(&page, "content-security-policy"),
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    assert_eq!(header(&page, "x-frame-options"), "DENY");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    let html = page.text().to_ascii_lowercase();
    assert!(
        html.contains("<script src=\"/admin/dashboard.js\"></script>"),
        "{html}"
    );
    assert!(
        html.contains("<link rel=\"stylesheet\" href=\"/admin/dashboard.css\">"),
        "{html}"
    );
    // Nothing the CSP would have to allow: no inline script or style, no handler attributes.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(!html.contains("<style"), "{html}");
    assert!(!html.contains(" style="), "{html}");
    assert!(!html.contains(" on"), "no inline event handlers: {html}");
    assert!(!html.contains("javascript:"), "{html}");

    let js = admin_get(admin, "/admin/dashboard.js", None).await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(header(&js, "content-type").starts_with("text/javascript"));
    assert!(js.text().contains("/admin/api-keys/status"));
    let css = admin_get(admin, "/admin/dashboard.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(header(&css, "content-type").starts_with("text/css"));
    // JSON answers and refusals carry the headers too.
    for path in ["/metrics", "/admin/api-keys/status", "/nope"] {
        let r = admin_get(admin, path, None).await;
        assert_eq!(header(&r, "x-frame-options"), "DENY", "{path}");
        assert!(header(&r, "content-security-policy").contains("frame-ancestors 'none'"));
    }
}
