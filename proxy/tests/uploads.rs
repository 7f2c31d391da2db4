//! Large uploads: a body over `replay_memory_bytes` streams upstream while it is spilled to a
//! private, unlinked file, so a 429 still moves it to the next key with every byte, and
//! keyrelay's memory stays flat (500 MB through a keyrelay process); over `max_spill_bytes` a
//! body gets one attempt only; stale spill files go at start; `Expect: 100-continue` is
//! answered only once the request is accepted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "tests"
)]

mod raw;
mod support;

use bytes::Bytes;
use futures_util::stream::{self, Stream};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyrelay_mock::{MockUpstream, Reply};
use raw::{exchange, find};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::process::{spawn_keyrelay, Proc};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MB: usize = 1_000_000;
const CHUNK: usize = 256 * 1024;

type Chunks = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("keyrelay-uploads-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn spill(&self) -> PathBuf {
        self.0.join("spill")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `total` deterministic bytes in chunks, generated as they are sent (never held whole); the
/// SHA-256 of what was sent lands in the slot after the last chunk.
fn upload(total: usize) -> (Chunks, Arc<Mutex<Option<String>>>) {
    let mut block = vec![0u8; CHUNK];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut block {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let chunks = stream::unfold(
        (0usize, Sha256::new(), block, slot),
        move |(sent, mut hash, block, slot)| async move {
            if sent >= total {
                return None;
            }
            let n = CHUNK.min(total - sent);
            let mut chunk = block[..n].to_vec();
            // Each chunk differs, so a lost, repeated or reordered chunk changes the hash.
            let mark = (sent as u64).to_le_bytes();
            let m = mark.len().min(n);
            chunk[..m].copy_from_slice(&mark[..m]);
            hash.update(&chunk);
            if sent + n == total {
                // Set with the last chunk: the answer may come before the stream is polled again.
                *slot.lock().unwrap() = Some(hex(&hash.clone().finalize()));
            }
            let frame = Frame::data(Bytes::from(chunk));
            Some((Ok(frame), (sent + n, hash, block, slot)))
        },
    );
    (Box::pin(chunks), out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// POST `body` chunked to `url` as a sink request; the status and the answer's JSON.
async fn post_chunks(url: &str, body: Chunks) -> (u16, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<Chunks>>();
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/octet-stream")
        .header("x-mock-sink", "1")
        .body(StreamBody::new(body))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!("not JSON: {}", String::from_utf8_lossy(&bytes));
    });
    (status, json)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The modes of the deleted spill files `pid` holds open in `dir` right now.
fn open_spill_modes(pid: u32, dir: &Path) -> Vec<u32> {
    let mut modes = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return modes;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with(&*dir.to_string_lossy()) && target.ends_with(" (deleted)") {
            if let Ok(meta) = std::fs::metadata(fd.path()) {
                modes.push(meta.mode() & 0o777);
            }
        }
    }
    modes
}

/// A keyrelay process in front of `mock`, spilling to `scratch`'s spill directory.
async fn relay(mock: &MockUpstream, scratch: &Scratch) -> (Proc, std::net::SocketAddr) {
    let server = format!("spill_dir = \"{}\"", scratch.spill().display());
    let text = config_text(&mock.url(), "", &server)
        .replace(
            "first_byte_timeout = \"5s\"",
            "first_byte_timeout = \"60s\"",
        )
        .replace("idle_timeout = \"5s\"", "idle_timeout = \"60s\"");
    let config = scratch.0.join("keyrelay.toml");
    std::fs::write(&config, text).unwrap();
    let (proc, addr, _) = spawn_keyrelay(&config, &scratch.0, &[], "warn").await;
    (proc, addr)
}

/// What one 500 MB upload through a keyrelay process showed.
struct Seen {
    status: u16,
    answer: serde_json::Value,
    sent_hash: String,
    rss_growth_kib: u64,
    spill_modes: Vec<u32>,
    dir_entries_during: Vec<String>,
}

/// Upload `total` bytes through the keyrelay `proc` while watching its memory and spill files.
async fn watched_upload(
    proc: &Proc,
    addr: std::net::SocketAddr,
    spill: &Path,
    total: usize,
) -> Seen {
    let pid = proc.pid();
    // The baseline: started, and one request served (unauthenticated: it reaches no key).
    let warm = exchange(
        addr,
        b"POST /v1/files HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(warm.status, Some(401));
    // Reset the peak, where the kernel allows it, so the peak seen is the upload's.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let before = status_kib(pid, "VmRSS:");
    let (body, hash) = upload(total);
    let url = format!("http://{addr}/v1/files");
    let sending = tokio::spawn(async move { post_chunks(&url, body).await });
    let (mut modes, mut during) = (Vec::new(), Vec::new());
    while !sending.is_finished() {
        modes.extend(open_spill_modes(pid, spill));
        during.extend(entries(spill));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, answer) = sending.await.unwrap();
    let peak = status_kib(pid, "VmHWM:");
    let sent_hash = hash
        .lock()
        .unwrap()
        .clone()
        .expect("the whole body was sent");
    Seen {
        status,
        answer,
        sent_hash,
        rss_growth_kib: peak.saturating_sub(before),
        spill_modes: modes,
        dir_entries_during: during,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_mb_upload_streams_in_flat_memory_and_a_429_replays_it_whole_on_the_next_key() {
    const TOTAL: usize = 500 * MB;
    let run = async {
        // One keyrelay per case, so the first key each tries is key 1 (equal keys, none used).
        for rate_limited in [false, true] {
            let mock = MockUpstream::start().await.unwrap();
            if rate_limited {
                mock.set(KEYS[0], Reply::rate_limited(&[("retry-after", "30")]));
            }
            let scratch = Scratch::new(if rate_limited { "429" } else { "plain" });
            let (proc, addr) = relay(&mock, &scratch).await;
            let spill = scratch.spill();
            let seen = watched_upload(&proc, addr, &spill, TOTAL).await;
            let case = if rate_limited { "after a 429" } else { "plain" };
            eprintln!(
                "{case}: RSS peak growth {} KiB, spill file modes seen {:?}",
                seen.rss_growth_kib,
                seen.spill_modes
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
            );
            assert_eq!(seen.status, 200, "{case}: {}", seen.answer);
            assert_eq!(
                seen.answer["bytes"], TOTAL as u64,
                "{case}: every byte arrived"
            );
            assert_eq!(
                seen.answer["sha256"],
                seen.sent_hash.as_str(),
                "{case}: in order"
            );
            let calls = (mock.calls(KEYS[0]), mock.calls(KEYS[1]));
            let expected = if rate_limited { (1, 1) } else { (1, 0) };
            assert_eq!(calls, expected, "{case}: attempts per key");
            assert!(
                seen.rss_growth_kib < 16 * 1024,
                "{case}: keyrelay's RSS grew by {} KiB for a 500 MB upload",
                seen.rss_growth_kib
            );
            // Spilled: a file was open, owner-only, and never visible by name.
            assert!(
                !seen.spill_modes.is_empty(),
                "{case}: no spill file was seen open"
            );
            assert!(
                seen.spill_modes.iter().all(|m| *m == 0o600),
                "{case}: {:?}",
                seen.spill_modes
            );
            assert!(
                seen.dir_entries_during.is_empty(),
                "{case}: {:?}",
                seen.dir_entries_during
            );
            let mode = std::fs::metadata(&spill).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{case}: the spill directory is private");
            let pid = proc.pid();
            let closed = eventually(Duration::from_secs(10), || {
                open_spill_modes(pid, &spill).is_empty()
            })
            .await;
            assert!(
                closed,
                "{case}: the spill file is closed once the request ended"
            );
            assert!(
                entries(&spill).is_empty(),
                "{case}: nothing left in the spill directory"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("two 500 MB uploads within 5 minutes");
}

/// A harness spilling into `scratch`, with `server_extra` in `[server]`.
async fn harness(scratch: &Scratch, server_extra: &str) -> Harness {
    let server = format!(
        "spill_dir = \"{}\"\n{server_extra}",
        scratch.spill().display()
    );
    Harness::start_with("", &server).await
}

fn sink_request(h: &Harness, body: Vec<u8>, chunked: bool) -> http::Request<StreamBody<Chunks>> {
    let len = body.len();
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = body
        .chunks(4096)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let mut b = http::Request::post(h.url("/v1/files"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-mock-sink", "1");
    if !chunked {
        b = b.header("content-length", len);
    }
    b.body(StreamBody::new(Box::pin(stream::iter(frames)) as Chunks))
        .unwrap()
}

async fn send_sink(req: http::Request<StreamBody<Chunks>>) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<Chunks>>();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn a_body_past_the_memory_share_is_replayed_from_the_spill_file() {
    let body = pattern(100_000);
    let want = hex(&Sha256::digest(&body));
    for chunked in [true, false] {
        let scratch = Scratch::new(if chunked { "chunked" } else { "declared" });
        let h = harness(&scratch, "replay_memory_bytes = 1024").await;
        h.mock.set(KEYS[0], Reply::rate_limited(&[]));
        h.mock.set(KEYS[1], Reply::status(401));
        let (status, text) = send_sink(sink_request(&h, body.clone(), chunked)).await;
        assert_eq!(status, 200, "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["bytes"], 100_000, "chunked: {chunked}");
        assert_eq!(json["sha256"], want.as_str(), "chunked: {chunked}");
        let calls: Vec<usize> = KEYS.iter().map(|k| h.mock.calls(k)).collect();
        assert_eq!(calls, [1, 1, 1], "chunked: {chunked}: replayed twice");
        assert!(entries(&scratch.spill()).is_empty());
        assert_eq!(h.proxy.app().buffered_bytes(), 0, "no memory held after");
    }
}

#[tokio::test]
async fn over_http2_a_spilled_body_is_replayed_too() {
    let scratch = Scratch::new("h2");
    let h = harness(&scratch, "replay_memory_bytes = 1024").await;
    h.mock.set(KEYS[0], Reply::rate_limited(&[]));
    let body = pattern(300_000);
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<StreamBody<Chunks>>();
    let resp = client
        .request(sink_request(&h, body.clone(), true))
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["bytes"], 300_000);
    assert_eq!(json["sha256"], hex(&Sha256::digest(&body)).as_str());
    assert_eq!((h.mock.calls(KEYS[0]), h.mock.calls(KEYS[1])), (1, 1));
    assert!(entries(&scratch.spill()).is_empty());
}

#[tokio::test]
async fn a_body_over_the_spill_space_gets_one_attempt_and_its_429_is_passed_on() {
    let scratch = Scratch::new("nospace");
    let small = "replay_memory_bytes = 1024\nmax_spill_bytes = 4096";
    let h = harness(&scratch, small).await;
    for key in KEYS {
        h.mock
            .set(key, Reply::rate_limited(&[("retry-after", "30")]));
    }
    let (status, text) = send_sink(sink_request(&h, pattern(64_000), false)).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(h.mock.total_calls(), 1, "not sent again: no copy to send");
    let metrics = h.admin("GET", "/metrics", None).await.text();
    assert!(
        metrics.contains("keyrelay_request_bodies_unreplayable_total 1"),
        "{metrics}"
    );
    // Chunked (it would reserve max_body_bytes), with the keys free: whole on its one attempt.
    let h = harness(&scratch, small).await;
    let body = pattern(64_000);
    let (status, text) = send_sink(sink_request(&h, body.clone(), true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&hex(&Sha256::digest(&body))), "{text}");
    assert_eq!(h.mock.total_calls(), 1);
}

/// Deleted spill files this (test) process holds open in `dir`: the in-process keyrelay's.
fn own_open_spills(dir: &Path) -> usize {
    open_spill_modes(std::process::id(), dir).len()
}

#[tokio::test]
async fn a_client_gone_mid_upload_frees_the_spill_file_and_its_space() {
    let scratch = Scratch::new("abort");
    let h = harness(&scratch, "replay_memory_bytes = 1024").await;
    let space = h.proxy.app().shared().spill_space.clone();
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nx-mock-sink: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "z".repeat(8192));
    for _ in 0..8 {
        s.write_all(chunk.as_bytes()).await.unwrap();
    }
    let spilling = eventually(Duration::from_secs(10), || {
        space.used() > 0 && own_open_spills(&scratch.spill()) > 0
    })
    .await;
    assert!(spilling, "the body went to a spill file");
    assert!(
        entries(&scratch.spill()).is_empty(),
        "never visible by name"
    );
    drop(s);
    let freed = eventually(Duration::from_secs(10), || {
        space.used() == 0 && own_open_spills(&scratch.spill()) == 0
    })
    .await;
    assert!(
        freed,
        "spill space {} still held after the client left",
        space.used()
    );
    assert!(entries(&scratch.spill()).is_empty());
}

#[tokio::test]
async fn the_answer_is_due_first_byte_timeout_after_a_slow_upload_not_from_its_start() {
    let scratch = Scratch::new("slow");
    let mock = MockUpstream::start().await.unwrap();
    let server = format!(
        "spill_dir = \"{}\"\nreplay_memory_bytes = 1024",
        scratch.spill().display()
    );
    let text = config_text(&mock.url(), "", &server)
        .replace("first_byte_timeout = \"5s\"", "first_byte_timeout = \"1s\"");
    let config = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    // Four 8 KiB chunks 600 ms apart: the upload takes longer than first_byte_timeout.
    let chunks = stream::unfold(0u8, |i| async move {
        if i == 4 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        Some((Ok(Frame::data(Bytes::from(vec![b'a' + i; 8192]))), i + 1))
    });
    let url = format!("http://{}/v1/files", proxy.addr());
    let (status, answer) = post_chunks(&url, Box::pin(chunks)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bytes"], 4 * 8192);
}

#[tokio::test]
async fn an_early_answer_reaches_a_client_still_uploading_and_its_connection_serves_on() {
    let scratch = Scratch::new("early");
    let h = harness(&scratch, "replay_memory_bytes = 1024").await;
    for key in KEYS {
        h.mock.set(key, Reply::status(413));
    }
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nx-mock-sink: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "z".repeat(8192));
    s.write_all(format!("{head}{chunk}").as_bytes())
        .await
        .unwrap();
    // The provider answers before the body is complete; keyrelay passes its answer on.
    let answer = read_head(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // The client finishes its upload, read to nowhere, then asks again on the same connection.
    for _ in 0..16 {
        s.write_all(chunk.as_bytes()).await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let again = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    s.write_all(again.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while seen.windows(9).filter(|w| *w == b"HTTP/1.1 ").count() < 1 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer to the second request within 10 s");
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("HTTP/1.1 413"),
        "the connection served on: {text}"
    );
}

#[tokio::test]
async fn stale_spill_files_are_removed_at_start_and_nothing_else() {
    let scratch = Scratch::new("stale");
    let spill = scratch.spill();
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::set_permissions(&spill, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(spill.join("keyrelay-spill-4242-7.tmp"), b"left by a crash").unwrap();
    std::fs::write(spill.join("notes.txt"), b"not ours").unwrap();
    let _h = harness(&scratch, "").await;
    assert_eq!(entries(&spill), vec!["notes.txt".to_owned()]);
}

#[tokio::test]
async fn a_loose_spill_directory_is_refused_by_its_path() {
    let scratch = Scratch::new("loose");
    let spill = scratch.spill();
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::set_permissions(&spill, std::fs::Permissions::from_mode(0o777)).unwrap();
    let text = config_text(
        "http://127.0.0.1:1",
        "",
        &format!(
            "spill_dir = \"{}\"\nreplay_memory_bytes = 2048\nmax_body_bytes = 1024",
            spill.display()
        ),
    );
    let e = keyrelay::config::Config::from_toml_str(&text, &env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.spill_dir"), "{e}");
    assert!(e.contains("server.replay_memory_bytes"), "{e}");
    // A path whose parent is missing is not grown into a tree.
    let deep = scratch.0.join("no/such/spill");
    let text = config_text(
        "http://127.0.0.1:1",
        "",
        &format!("spill_dir = \"{}\"", deep.display()),
    );
    let e = keyrelay::config::Config::from_toml_str(&text, &env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.spill_dir") && e.contains("cannot create"),
        "{e}"
    );
    assert!(!scratch.0.join("no").exists());
}

/// Read from `s` until a blank line ends a head; the head.
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while find(&buf, b"\r\n\r\n").is_none() {
            if s.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            buf.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a head within 10 s");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn expect_100_continue_is_answered_only_for_an_accepted_request() {
    let h = Harness::start("").await;
    let addr = h.proxy.addr();
    let head = |auth: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
            CHAT.len()
        )
    };
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head(&format!("authorization: Bearer {TOKEN}\r\n")).as_bytes())
        .await
        .unwrap();
    let interim = read_head(&mut s).await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    s.write_all(CHAT.as_bytes()).await.unwrap();
    let answer = read_head(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = h.mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, CHAT.as_bytes());
    assert!(
        seen[0].header("expect").is_none(),
        "Expect is not forwarded"
    );

    // Refused: the answer comes without 100 Continue, the body never asked for.
    let refused = exchange(addr, head("").as_bytes()).await;
    assert_eq!(refused.status, Some(401), "{}", refused.head);
    assert!(!refused.head.contains("100 Continue"), "{}", refused.head);
    assert_eq!(h.mock.total_calls(), 1);
}
