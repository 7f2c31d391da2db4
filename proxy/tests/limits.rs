//! Connection limits, on a keyrelay in process: silent, slow and idle connections closed by
//! their timeouts on both listeners, the connection cap, oversized heads, and the reloads
//! that must be refused.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::Config;
use keyrelay::{App, ReloadError, Shared};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_TIMEOUT: Duration = Duration::from_millis(300);

/// Write one HTTP/1.1 request on `stream` and read its response: status and body.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String) {
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..end].to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        // A chunked answer may arrive over several reads: it ends with its last chunk.
        let chunked = head.contains("transfer-encoding: chunked");
        if chunked && !text.ends_with("0\r\n\r\n") {
            continue;
        }
        if got.len() >= end + 4 + length {
            let status = text[9..12].parse().unwrap();
            return (status, text[end + 4..].to_owned());
        }
    }
}

fn chat_request() -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: keyrelay\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    )
    .into_bytes()
}

async fn limited(server_extra: &str) -> Harness {
    Harness::start_with("", server_extra).await
}

#[tokio::test]
async fn silent_and_preface_only_connections_are_closed_within_the_header_timeout() {
    let h = limited("header_read_timeout = \"300ms\"").await;
    let addr = h.proxy.addr();
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        silent.push(s);
    }
    // Normal requests beside them are served, before and after the silent ones are dropped.
    for _ in 0..5 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    let watchers = silent.into_iter().map(|mut s| {
        tokio::spawn(async move { closed_after(&mut s, opened, Duration::from_secs(3)).await })
    });
    for (i, w) in watchers.enumerate() {
        let took = w
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("connection {i} still open after 3s"));
        assert!(
            took >= HEADER_TIMEOUT,
            "connection {i} closed after {took:?}, before its timeout"
        );
        assert!(
            took < Duration::from_millis(1500),
            "connection {i} closed only after {took:?}"
        );
    }
    assert_eq!(h.chat(CHAT).await.status, 200);
}

#[tokio::test]
async fn a_head_trickled_slowly_is_cut_at_the_header_timeout() {
    let h = limited("header_read_timeout = \"300ms\"").await;
    let opened = Instant::now();
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: keyrelay\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let took = closed_after(&mut s, opened, Duration::from_secs(3))
        .await
        .expect("still open");
    assert!(took < Duration::from_millis(1600), "closed after {took:?}");
}

#[tokio::test]
async fn the_admin_listener_has_the_header_timeout_too() {
    let h = limited("header_read_timeout = \"300ms\"").await;
    let admin = h.proxy.admin_addr().unwrap();
    let opened = Instant::now();
    let mut silent = TcpStream::connect(admin).await.unwrap();
    let mut partial = TcpStream::connect(admin).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut preface = TcpStream::connect(admin).await.unwrap();
    preface.write_all(H2_PREFACE).await.unwrap();
    for s in [&mut silent, &mut partial, &mut preface] {
        let took = closed_after(s, opened, Duration::from_secs(3))
            .await
            .expect("still open");
        assert!(
            took >= HEADER_TIMEOUT && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }
    assert_eq!(h.admin("GET", "/healthz", None).await.status, 200);
}

#[tokio::test]
async fn an_idle_http1_keepalive_connection_is_closed_after_keepalive_timeout() {
    let h = limited("keepalive_timeout = \"400ms\"").await;
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    // Two requests on one connection: a request in flight or just answered keeps it open.
    assert_eq!(exchange(&mut s, &chat_request()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = exchange(&mut s, &chat_request()).await;
    assert_eq!(status, 200, "{body}");
    let idle_from = Instant::now();
    let took = closed_after(&mut s, idle_from, Duration::from_secs(3))
        .await
        .expect("still open");
    assert!(
        took >= Duration::from_millis(350),
        "closed after {took:?}, before the timeout"
    );
    assert!(
        took < Duration::from_millis(1500),
        "closed only after {took:?}"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_after_keepalive_timeout() {
    let h = limited("keepalive_timeout = \"400ms\"").await;
    let tcp = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post("http://keyrelay/v1/chat/completions")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(CHAT.as_bytes()), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut data = response.into_body();
    while let Some(chunk) = data.data().await {
        chunk.unwrap();
    }
    let idle_from = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    let took = idle_from.elapsed();
    assert!(
        ended.is_ok(),
        "the HTTP/2 connection was still open after 3s"
    );
    assert!(took >= Duration::from_millis(350), "closed after {took:?}");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_counted() {
    let h = limited("max_connections = 3\nheader_read_timeout = \"30s\"").await;
    let addr = h.proxy.addr();
    let metrics = h.proxy.app().metrics().clone();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    assert!(eventually(Duration::from_secs(5), || metrics.open_connections() == 3).await);

    let tried = Instant::now();
    let mut over = TcpStream::connect(addr).await.unwrap();
    let took = closed_after(&mut over, tried, Duration::from_secs(2)).await;
    let took = took.expect("the connection over the cap was left open");
    assert!(
        took < Duration::from_millis(500),
        "closed only after {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || metrics.connections_refused()
            == 1)
        .await
    );
    // Scraped on a connection of its own that closes after the answer.
    let mut scrape = TcpStream::connect(h.proxy.admin_addr().unwrap())
        .await
        .unwrap();
    let admin = h.proxy.admin_addr().unwrap();
    let get = format!("GET /metrics HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
    let get = get.as_bytes();
    let (_, text) = exchange(&mut scrape, get).await;
    drop(scrape);
    assert!(
        text.contains("keyrelay_connections_refused_total 1"),
        "{text}"
    );
    // Both listeners count: the three held, and this scrape's own admin connection.
    assert!(text.contains("keyrelay_open_connections 4"), "{text}");
    assert!(eventually(Duration::from_secs(5), || metrics.open_connections() == 3).await);

    // One leaves: serving resumes.
    drop(held.pop());
    let two = eventually(Duration::from_secs(5), || metrics.open_connections() == 2).await;
    assert!(two, "open connections: {}", metrics.open_connections());
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(exchange(&mut s, &chat_request()).await.0, 200);
    assert_eq!(metrics.connections_refused(), 1);
}

#[tokio::test]
async fn oversized_heads_get_431_and_other_clients_are_unaffected() {
    let h = limited("").await;
    let addr = h.proxy.addr();
    let big = "a".repeat(70 * 1024);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /v1/models HTTP/1.1\r\nhost: keyrelay\r\nx-big: {big}\r\n\r\n");
    assert_eq!(exchange(&mut s, request.as_bytes()).await.0, 431);

    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /v1/models HTTP/1.1\r\nhost: keyrelay\r\n{many}\r\n");
    assert_eq!(exchange(&mut s, request.as_bytes()).await.0, 431);

    assert_eq!(h.mock.seen().len(), 0);
    assert_eq!(h.chat(CHAT).await.status, 200);
}

fn config(mock_url: &str, listen: &str, extra: &str) -> Config {
    let text = config_text(mock_url, "", "").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{listen}\""),
        1,
    ) + extra;
    Config::from_toml_str(&text, &env()).unwrap_or_else(|e| panic!("{e}"))
}

fn refused_fields(e: &ReloadError) -> Vec<&'static str> {
    match e {
        ReloadError::Refused(r) => r.iter().map(|r| r.field).collect(),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_reload_that_needs_a_rebind_is_refused_naming_the_field_and_the_old_config_serves() {
    let h = limited("").await;
    let url = h.mock.url();
    let live = h.proxy.live().clone();
    let before = Arc::as_ptr(&live.app());

    let e = live.reload(&config(&url, "127.0.0.1:1", "")).unwrap_err();
    assert_eq!(refused_fields(&e), ["server.listen"]);
    assert!(
        e.to_string()
            .contains("server.listen: only a restart can re-bind"),
        "{e}"
    );

    let moved_admin = config_text(&url, "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:1\"",
    );
    let moved_admin = Config::from_toml_str(&moved_admin, &env()).unwrap();
    let e = live.reload(&moved_admin).unwrap_err();
    assert_eq!(refused_fields(&e), ["admin.listen"]);

    // TLS on where it was off: the listener would need a new socket loop, so a restart.
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls_env = env()
        .with("KR_CERT", &c.cert.pem())
        .with("KR_CERT_KEY", &c.key_pair.serialize_pem());
    let tls = config_text(
        &url,
        "",
        "tls_cert = \"env:KR_CERT\"\ntls_key = \"env:KR_CERT_KEY\"",
    );
    let tls = Config::from_toml_str(&tls, &tls_env).unwrap_or_else(|e| panic!("{e}"));
    let e = live.reload(&tls).unwrap_err();
    assert_eq!(refused_fields(&e), ["server.tls_cert"]);
    assert!(e.to_string().contains("TLS is off"), "{e}");

    assert_eq!(
        Arc::as_ptr(&live.app()),
        before,
        "a refused reload swapped the app"
    );
    assert_eq!(h.chat(CHAT).await.status, 200);
    let text = h.admin("GET", "/metrics", None).await.text();
    assert!(
        text.contains(r#"keyrelay_config_reloads_total{result="failure"} 3"#),
        "{text}"
    );

    // An unchanged file still reloads.
    live.reload(&config(&url, "127.0.0.1:0", "")).unwrap();
    assert_ne!(Arc::as_ptr(&live.app()), before);
    assert_eq!(h.chat(CHAT).await.status, 200);
}

#[tokio::test]
async fn a_reload_may_not_turn_off_client_auth_on_a_public_socket() {
    // The live state of a process bound to 0.0.0.0, built without binding anything.
    let url = "http://127.0.0.1:1";
    let started = config(url, "0.0.0.0:8080", "");
    let shared = Shared::new(Arc::new(keyrelay_pool::MemoryStore::new()));
    let app = Arc::new(App::new(&started, shared).unwrap());
    let live = keyrelay::server::Live::new(app, &started);

    let open = |listen: &str| {
        config_text(url, "", "allow_unauthenticated = true")
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{listen}\""),
                1,
            )
            .replace(
                "[[clients]]\nname = \"tests\"\ntoken = \"env:KR_TOKEN\"\n",
                "",
            )
    };
    // The same public address: the file itself is refused at load.
    let e = Config::from_toml_str(&open("0.0.0.0:8080"), &env()).unwrap_err();
    assert!(e.mentions("server.allow_unauthenticated"), "{e}");

    // A file that claims loopback while the bound socket is public: refused by the reload.
    let sneaky = Config::from_toml_str(&open("127.0.0.1:8080"), &env()).unwrap();
    let e = live.reload(&sneaky).unwrap_err();
    assert_eq!(
        refused_fields(&e),
        ["server.listen", "server.allow_unauthenticated"]
    );
    assert!(e.to_string().contains("0.0.0.0:8080 without tokens"), "{e}");
    assert_no_secret(&e.to_string(), "the reload error");
}

#[test]
fn zero_timeouts_are_refused_at_load() {
    let server =
        "header_read_timeout = \"0s\"\nkeepalive_timeout = \"0ms\"\nshutdown_grace = \"0s\"";
    let text = config_text("http://127.0.0.1:1", "", server)
        .replace(
            "first_byte_timeout = \"5s\"",
            "first_byte_timeout = \"0s\"\nconnect_timeout = \"0s\"",
        )
        .replace("idle_timeout = \"5s\"", "idle_timeout = \"0s\"");
    let e = Config::from_toml_str(&text, &env()).unwrap_err();
    for field in [
        "server.header_read_timeout",
        "server.keepalive_timeout",
        "upstream.connect_timeout",
        "upstream.first_byte_timeout",
        "upstream.idle_timeout",
    ] {
        assert!(
            e.mentions(&format!("{field}: must be more than zero")),
            "{field}: {e}"
        );
    }
    // Zero grace is a choice (stop at once), not a mistake.
    assert!(!e.mentions("server.shutdown_grace"), "{e}");
    let e = Config::from_toml_str(
        &config_text("http://127.0.0.1:1", "", "max_connections = 0"),
        &env(),
    )
    .unwrap_err();
    assert!(e.mentions("server.max_connections"), "{e}");
}

/// hyper times the wait for the next HTTP/1 request head from the end of the last answer, so
/// an idle HTTP/1 connection lasts at most the shorter of the two timeouts (documented in
/// config.toml); this fails if a hyper upgrade changes that.
#[tokio::test]
async fn an_idle_http1_connection_is_also_bounded_by_the_header_timeout() {
    let h = limited("header_read_timeout = \"300ms\"\nkeepalive_timeout = \"60s\"").await;
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    assert_eq!(exchange(&mut s, &chat_request()).await.0, 200);
    let idle_from = Instant::now();
    let took = closed_after(&mut s, idle_from, Duration::from_secs(3)).await;
    let took = took.expect("still open");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_http2_header_list_over_the_limit_is_refused_and_the_connection_serves_on() {
    let h = limited("").await;
    let tcp = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let chat = |extra: Option<String>| {
        let mut b = http::Request::post("http://keyrelay/v1/chat/completions")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json");
        if let Some(v) = extra {
            b = b.header("x-big", v);
        }
        b.body(()).unwrap()
    };
    // Over the 64 KiB list keyrelay advertises (hyper's own default is 16 MiB): 431.
    let (response, _) = client
        .send_request(chat(Some("a".repeat(80 * 1024))), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 431);
    assert_eq!(h.mock.seen().len(), 0);

    // Under it, on the same connection: served.
    let mut client = client.ready().await.unwrap();
    let (response, mut body) = client
        .send_request(chat(Some("a".repeat(40 * 1024))), false)
        .unwrap();
    body.send_data(bytes::Bytes::from_static(CHAT.as_bytes()), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}

/// The real binary on `config_text(mock_url)` with a long header timeout, and its address.
async fn spawn_keyrelay(mock_url: &str) -> (support::process::Proc, std::net::SocketAddr) {
    let dir = std::env::temp_dir().join(format!("keyrelay-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keyrelay.toml");
    let text = config_text(mock_url, "", "header_read_timeout = \"60s\"");
    std::fs::write(&path, text).unwrap();
    let mut proc = support::process::Proc::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"))
            .arg("--config")
            .arg(&path)
            .current_dir(&dir)
            .env("KR_TOKEN", TOKEN)
            .env("KR_ADMIN", ADMIN_TOKEN)
            .env("KR_KEY_1", KEYS[0])
            .env("KEYRELAY_LOG", "info"),
        "cargo builds it",
    );
    let (addr, _) = proc
        .wait_line(Duration::from_secs(20), support::process::keyrelay_addrs)
        .await;
    (proc, addr)
}

/// Poll chat requests to `url` until one answers 200; fail after `within`.
async fn serves_within(url: &str, within: Duration) {
    let client = http_client();
    let deadline = Instant::now() + within;
    let auth = format!("Bearer {TOKEN}");
    loop {
        let sent = client.request(post(url, &[("authorization", &auth)], CHAT));
        let status = sent.await.map_or(0, |r| r.status().as_u16());
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not serving within {within:?} ({status})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds (user and system) `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ, 100 on Linux
}

/// The real binary with its descriptor limit lowered after start (so its cap, fitted to the
/// limit at start, is far above it): `accept()` runs out of descriptors. It must log that at
/// most once a second, not spin, and serve again once the clients go.
#[tokio::test]
async fn out_of_descriptors_the_listener_logs_backs_off_and_serves_again() {
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let (mut proc, addr) = spawn_keyrelay(&mock.url()).await;
    let client = http_client();
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(chat_at(&client, &url).await.status, 200);
    drop(client);

    let pid = proc.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_fds + 8;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());

    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    proc.wait_line(Duration::from_secs(5), |l| {
        l.contains("accept failed; pausing the listener")
            .then_some(())
    })
    .await;
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    assert!(
        cpu < 0.2,
        "keyrelay used {:.0}% CPU while out of descriptors",
        cpu * 100.0
    );
    let logged = |p: &support::process::Proc| {
        let all = p.stdout() + &p.stderr();
        all.matches("accept failed; pausing the listener").count()
    };
    let lines = logged(&proc);
    assert!(
        (1..=4).contains(&lines),
        "{lines} accept-error lines in about 2 s"
    );

    drop(held);
    serves_within(&url, Duration::from_secs(10)).await;
    assert_no_secret(&(proc.stdout() + &proc.stderr()), "keyrelay's log");
}

#[tokio::test]
async fn with_no_worker_threads_connections_are_served_on_the_main_runtime() {
    for workers in ["workers = 0", "workers = 3"] {
        let h = limited(workers).await;
        let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
        for _ in 0..3 {
            let (status, body) = exchange(&mut s, &chat_request()).await;
            assert_eq!(status, 200, "{workers}: {body}");
        }
        assert_eq!(h.mock.seen().len(), 3, "{workers}");
    }
}
