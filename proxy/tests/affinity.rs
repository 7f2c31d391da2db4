//! Resource affinity: three keys that the mock treats as three projects, rotated round-robin
//! so every request would land elsewhere; resources created through keyrelay are always found
//! again, because their ids carry (sealed) the key that created them.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keyrelay::config::Config;
use keyrelay_mock::MockUpstream;
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "affinity-test-secret-0123456789abcdef";

/// keyrelay with three round-robin keys (or `keys`) in front of `mock`, affinity on.
async fn proxy(mock: &MockUpstream, keys: &str, affinity_extra: &str) -> Harness2 {
    let text = config_text(&mock.url(), "strategy = \"round-robin\"", "").replacen(
        "keys = \"env:KR_KEY_*\"\n",
        &format!("keys = \"{keys}\"\n"),
        1,
    ) + &format!("\n[affinity]\nsecret = \"env:KR_AFFINITY\"\n{affinity_extra}\n");
    let env = env().with("KR_AFFINITY", SECRET);
    let config = Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    Harness2 {
        proxy: keyrelay::start(config).await.unwrap(),
        client: http_client(),
    }
}

struct Harness2 {
    proxy: keyrelay::Running,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Harness2 {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.addr())
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(Full::new(body.into()))
            .unwrap();
        send(&self.client, req).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, "application/json", Bytes::new())
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", path, "application/json", body.to_string())
            .await
    }

    /// Upload `content` as a file (multipart, as the SDKs send it).
    async fn upload(&self, content: &str) -> Value {
        let body = format!(
            "--XB\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{content}\r\n--XB--\r\n"
        );
        let r = self
            .call(
                "POST",
                "/v1/files",
                "multipart/form-data; boundary=XB",
                body,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }
}

#[tokio::test]
async fn a_file_is_always_found_on_the_key_that_created_it() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let file = h.upload("{\"custom_id\":\"a\"}\n").await;
    let id = file["id"].as_str().unwrap();
    assert!(id.starts_with("file-kr1_"), "{file}");
    let creator = mock.seen()[0].key.clone().unwrap();
    for i in 0..12 {
        let path = if i % 2 == 0 {
            format!("/v1/files/{id}")
        } else {
            format!("/v1/files/{id}/content")
        };
        let r = h.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        if i % 2 == 0 {
            assert_eq!(r.json()["id"], id, "the id comes back sealed the same way");
        } else {
            assert_eq!(r.text(), "{\"custom_id\":\"a\"}\n");
        }
    }
    let seen = mock.seen();
    assert_eq!(seen.len(), 13);
    assert!(
        seen.iter()
            .all(|s| s.key.as_deref() == Some(creator.as_str())),
        "a request left the creating key"
    );
    assert!(
        seen.iter().all(|s| !s.uri.contains("kr1_")),
        "a keyrelay id reached the provider"
    );
    // Stateless routes still rotate over every key.
    for _ in 0..3 {
        assert_eq!(
            h.post("/v1/chat/completions", &json!({"model": "m"}))
                .await
                .status,
            200
        );
    }
    for k in KEYS {
        assert!(
            mock.calls(k) >= 1,
            "key {k} never used: rotation is not certain"
        );
    }
}

#[tokio::test]
async fn batches_reference_their_file_and_its_output_downloads() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let lines: String = (0..5)
        .map(|i| format!("{{\"custom_id\":\"r{i}\"}}\n"))
        .collect();
    for round in 0..3 {
        let file = h.upload(&lines).await;
        let batch = h
            .post("/v1/batches", &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
            .await;
        assert_eq!(batch.status, 200, "round {round}: {}", batch.text());
        let batch = batch.json();
        let id = batch["id"].as_str().unwrap();
        assert!(id.starts_with("batch_kr1_"), "{batch}");
        assert_eq!(
            batch["input_file_id"], file["id"],
            "the same id, sealed alike"
        );
        let out = batch["output_file_id"].as_str().unwrap();
        assert!(out.starts_with("file-kr1_"), "{batch}");
        for _ in 0..4 {
            let again = h.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(again.status, 200, "{}", again.text());
            assert_eq!(again.json()["output_file_id"], out);
        }
        let content = h.get(&format!("/v1/files/{out}/content")).await;
        assert_eq!(content.status, 200, "{}", content.text());
        assert_eq!(content.text().lines().count(), 5);
    }
    // Listing from one key: a cursor pins the page to its key.
    let files = h.get("/v1/files?limit=1").await;
    assert_eq!(files.status, 200, "{}", files.text());
    let last = files.json()["last_id"].as_str().unwrap().to_owned();
    assert!(last.starts_with("file-kr1_"), "{}", files.text());
    let before = mock.seen().len();
    let next = h.get(&format!("/v1/files?limit=1&after={last}")).await;
    assert_eq!(next.status, 200, "{}", next.text());
    let seen = mock.seen();
    let first_page = seen[before - 1].key.clone();
    assert_eq!(
        seen[before].key, first_page,
        "the next page came from another key"
    );
    assert!(!seen[before].uri.contains("kr1_"), "{}", seen[before].uri);
}

#[tokio::test]
async fn stored_responses_chain_on_the_key_that_stored_them() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let first = h
        .post(
            "/v1/responses",
            &json!({"model": "m", "input": "hi", "store": true}),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let mut previous = first.json()["id"].as_str().unwrap().to_owned();
    assert!(previous.starts_with("resp_kr1_"));
    for _ in 0..6 {
        let next = h
            .post(
                "/v1/responses",
                &json!({"model": "m", "input": "more", "previous_response_id": previous}),
            )
            .await;
        assert_eq!(next.status, 200, "{}", next.text());
        assert_eq!(next.json()["previous_response_id"], previous.as_str());
        previous = next.json()["id"].as_str().unwrap().to_owned();
    }
    let got = h.get(&format!("/v1/responses/{previous}")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["id"], previous.as_str());
}

#[tokio::test]
async fn a_background_response_is_polled_and_streamed_with_starting_after_from_its_key() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let bg = h
        .post(
            "/v1/responses",
            &json!({"model": "m", "input": "hi", "background": true}),
        )
        .await;
    assert_eq!(bg.json()["status"], "queued", "{}", bg.text());
    let id = bg.json()["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let polled = h.get(&format!("/v1/responses/{id}")).await;
        assert_eq!(polled.json()["status"], "completed", "{}", polled.text());
    }
    let stream = h
        .get(&format!("/v1/responses/{id}?stream=true&starting_after=2"))
        .await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    let events: Vec<Value> = stream
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["sequence_number"].as_i64().unwrap() > 2),
        "{events:?}"
    );
    let done = events.last().unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(
        done["response"]["id"],
        id.as_str(),
        "response.id inside an SSE event is sealed"
    );
    // A streamed create: its events carry the sealed id too.
    let streamed = h
        .post(
            "/v1/responses",
            &json!({"model": "m", "input": "hi", "stream": true}),
        )
        .await;
    let created = streamed.text();
    let line = created.lines().find(|l| l.starts_with("data: ")).unwrap();
    let created: Value = serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap();
    assert!(
        created["response"]["id"]
            .as_str()
            .unwrap()
            .starts_with("resp_kr1_"),
        "{created}"
    );
}

#[tokio::test]
async fn a_vector_store_and_its_files_stay_on_one_key() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    for _ in 0..2 {
        let file = h.upload("doc").await;
        let vs = h
            .post(
                "/v1/vector_stores",
                &json!({"name": "docs", "file_ids": [file["id"]]}),
            )
            .await;
        assert_eq!(vs.status, 200, "{}", vs.text());
        let vs_id = vs.json()["id"].as_str().unwrap().to_owned();
        assert!(vs_id.starts_with("vs_kr1_"));
        let listed = h.get(&format!("/v1/vector_stores/{vs_id}/files")).await;
        assert_eq!(listed.status, 200, "{}", listed.text());
        assert_eq!(listed.json()["data"][0]["id"], file["id"]);
        // One more file on each key: the one on the store's key joins it; the others cannot,
        // and keyrelay says so before sending.
        let (mut joined, mut refused) = (0, 0);
        for _ in 0..3 {
            let other = h.upload("doc2").await;
            let path = format!("/v1/vector_stores/{vs_id}/files");
            let added = h.post(&path, &json!({"file_id": other["id"]})).await;
            if added.status == 400 {
                assert_eq!(added.json()["error"]["code"], "resource_ids_conflict");
                refused += 1;
                continue;
            }
            assert_eq!(added.status, 200, "{}", added.text());
            assert_eq!(added.json()["vector_store_id"], vs_id.as_str());
            let one = h
                .get(&format!(
                    "/v1/vector_stores/{vs_id}/files/{}",
                    other["id"].as_str().unwrap()
                ))
                .await;
            assert_eq!(one.status, 200, "{}", one.text());
            joined += 1;
        }
        assert_eq!((joined, refused), (1, 2));
    }
}

#[tokio::test]
async fn a_tampered_or_forged_id_is_refused_and_never_sent() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let file = h.upload("x").await;
    let id = file["id"].as_str().unwrap();
    let sent = mock.total_calls();
    let mut tampered = id.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [
        format!("/v1/files/{tampered}"),
        "/v1/files/file-kr1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        format!("/v1/files?after={tampered}"),
        format!("/v1/files/{}", id.replace("file-", "batch_")),
    ] {
        let r = h.get(&bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_resource_id");
    }
    let r = h
        .post(
            "/v1/batches",
            &json!({"input_file_id": tampered, "endpoint": "/v1/chat/completions"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        mock.total_calls(),
        sent,
        "a tampered id reached the provider"
    );
    // Another keyrelay with another secret does not accept this one's ids.
    let text = config_text(&mock.url(), "", "") + "\n[affinity]\nsecret = \"env:KR_OTHER\"\n";
    let env = env().with("KR_OTHER", "a-different-secret-0123456789");
    let other = keyrelay::start(Config::from_toml_str(&text, &env).unwrap())
        .await
        .unwrap();
    let req = Request::builder()
        .uri(format!("http://{}/v1/files/{id}", other.addr()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&http_client(), req).await.status, 400);
    assert_eq!(mock.total_calls(), sent);
}

#[tokio::test]
async fn ids_from_elsewhere_pass_or_are_refused_as_configured() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let r = h.get("/v1/files/file-fromelsewhere").await;
    assert_eq!(
        r.status,
        404,
        "passed to the provider, which does not know it: {}",
        r.text()
    );
    assert_eq!(mock.total_calls(), 1);
    assert!(mock.seen()[0].uri.ends_with("/files/file-fromelsewhere"));
    let strict = proxy(&mock, "env:KR_KEY_*", "unknown_ids = \"refuse\"").await;
    let r = strict.get("/v1/files/file-fromelsewhere").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unknown_resource_id");
    let r = strict
        .post(
            "/v1/batches",
            &json!({"input_file_id": "file-x", "endpoint": "/v1/embeddings"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(mock.total_calls(), 1, "a refused id reached the provider");
    // Stateless routes are not looked at, even in refuse mode.
    let chat = strict
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "file_id": "file-x"}),
        )
        .await;
    assert_eq!(chat.status, 200);
}

#[tokio::test]
async fn a_removed_or_disabled_key_is_named_clearly() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let ids: Vec<String> = futures_collect(&h).await;
    let on_first = &ids[0];
    let on_second = &ids[1];
    // The same config without keys 2 and 3: ids sealed to them name a removed key.
    let only_one = proxy(&mock, "env:KR_KEY_1", "").await;
    let gone = only_one.get(&format!("/v1/files/{on_second}")).await;
    assert_eq!(gone.status, 410, "{}", gone.text());
    assert_eq!(gone.json()["error"]["code"], "resource_key_removed");
    assert_eq!(
        only_one.get(&format!("/v1/files/{on_first}")).await.status,
        200
    );
    // A disabled key: 429 (it may serve again once enabled), never another key.
    let admin = Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/admin/keys/openai/KR_KEY_2/disable",
            h.proxy.admin_addr().unwrap()
        ))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&h.client, admin).await.status, 200);
    let sent = mock.total_calls();
    let off = h.get(&format!("/v1/files/{on_second}")).await;
    assert_eq!(off.status, 429, "{}", off.text());
    assert_eq!(off.json()["error"]["code"], "resource_key_disabled");
    assert_eq!(mock.total_calls(), sent);
}

/// Three uploads, round-robin: one file on each key, in key order.
async fn futures_collect(h: &Harness2) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(h.upload("x").await["id"].as_str().unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn a_cooling_key_is_waited_for_then_refused_with_retry_after() {
    let mock = MockUpstream::start().await.unwrap();
    let h = proxy(&mock, "env:KR_KEY_*", "").await;
    let id = h.upload("x").await["id"].as_str().unwrap().to_owned();
    let creator = mock.seen()[0].key.clone().unwrap();
    mock.set(
        &creator,
        keyrelay_mock::Reply::rate_limited(&[("retry-after", "30")]),
    );
    let limited = h.get(&format!("/v1/files/{id}")).await;
    assert_eq!(
        limited.status,
        429,
        "the provider's 429 is passed on: {}",
        limited.text()
    );
    let calls = mock.total_calls();
    let cooling = h.get(&format!("/v1/files/{id}")).await;
    assert_eq!(cooling.status, 429, "{}", cooling.text());
    assert!(cooling.headers.contains_key("retry-after"));
    assert_eq!(mock.total_calls(), calls, "no other key was asked");
}

#[test]
fn affinity_settings_are_checked_by_path() {
    let text = |extra: &str| {
        config_text("http://127.0.0.1:1", "", "") + &format!("\n[affinity]\n{extra}\n")
    };
    let env = env().with("KR_SHORT", "short").with("KR_AFFINITY", SECRET);
    let err = Config::from_toml_str(
        &text("secret = \"env:KR_SHORT\"\nunknown_ids = \"maybe\"\nmax_rewrite_bytes = 0\nmode = \"sometimes\"\nmap_ttl = \"0s\""),
        &env,
    )
    .unwrap_err()
    .to_string();
    for path in [
        "affinity.secret",
        "affinity.unknown_ids",
        "affinity.max_rewrite_bytes",
        "affinity.mode",
        "affinity.map_ttl",
    ] {
        assert!(err.contains(path), "{path} not named: {err}");
    }
    let map = Config::from_toml_str(&text("mode = \"map\"\nmap_ttl = \"1h\""), &env).unwrap();
    assert_eq!(map.affinity.mode, keyrelay::config::AffinityMode::Map);
    assert_eq!(map.affinity.map_ttl, std::time::Duration::from_secs(3600));
    assert!(!err.contains("short\""), "the secret was shown: {err}");
    let ok = Config::from_toml_str(&text("secret = \"env:KR_AFFINITY\""), &env).unwrap();
    assert!(ok.affinity.secret.is_some());
    assert!(format!("{ok:?}").contains("*****") && !format!("{ok:?}").contains(SECRET));
}

/// keyrelay with a Gemini provider at `/gemini` (round-robin; the upload headers pass by
/// default).
async fn gemini_proxy(mock: &MockUpstream) -> keyrelay::Running {
    let text = config_text(&mock.url(), "", "")
        .replace(
            "name = \"openai\"",
            "name = \"gemini\"\nauth = \"x-goog-api-key\"",
        )
        .replace(
            &format!("{}/v1\"", mock.url()),
            &format!("{}\"", mock.url()),
        )
        .replace(
            "route = \"/v1\"",
            "route = \"/gemini\"\nstrategy = \"round-robin\"",
        )
        + "\n[affinity]\nsecret = \"env:KR_AFFINITY\"\n";
    let env = env().with("KR_AFFINITY", SECRET);
    let config = Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    keyrelay::start(config).await.unwrap()
}

#[tokio::test]
async fn a_gemini_resumable_upload_link_points_back_at_keyrelay_and_its_key() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = gemini_proxy(&mock).await;
    let client = http_client();
    let step = |url: String, command: &'static str, body: &'static str| {
        Request::builder()
            .method("POST")
            .uri(url)
            .header("x-goog-api-key", TOKEN)
            .header("x-goog-upload-protocol", "resumable")
            .header("x-goog-upload-command", command)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let origin = format!("http://{}", proxy.addr());
    for _ in 0..3 {
        let start = send(
            &client,
            step(
                format!("{origin}/gemini/upload/v1beta/files"),
                "start",
                "{\"file\":{\"displayName\":\"n\"}}",
            ),
        )
        .await;
        assert_eq!(start.status, 200, "{}", start.text());
        let link = start.headers["x-goog-upload-url"]
            .to_str()
            .unwrap()
            .to_owned();
        let prefix = format!("{origin}/gemini/upload/v1beta/files?upload_id=kr1_");
        assert!(link.starts_with(&prefix), "{link}");
        let starter = mock.seen().last().unwrap().key.clone();
        let done = send(&client, step(link, "upload, finalize", "the bytes")).await;
        assert_eq!(done.status, 200, "{}", done.text());
        let name = done.json()["file"]["name"].as_str().unwrap().to_owned();
        assert!(name.starts_with("files/kr1_"), "{name}");
        let last = mock.seen().last().unwrap().clone();
        assert_eq!(
            last.key, starter,
            "the upload's second step went to another key"
        );
        assert!(last.uri.contains("upload_id=up"), "{}", last.uri);
        let got = send(
            &client,
            Request::builder()
                .uri(format!("{origin}/gemini/v1beta/{name}"))
                .header("x-goog-api-key", TOKEN)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
}

/// One step of a Gemini resumable upload, with the client token when `token` is set.
fn upload_step(
    url: &str,
    token: Option<&str>,
    command: &str,
    body: &'static str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method("POST")
        .uri(url)
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", command);
    if let Some(t) = token {
        b = b.header("x-goog-api-key", t);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Start a Gemini resumable upload with the client token: the link keyrelay answered.
async fn start_upload(proxy: &keyrelay::Running) -> String {
    let url = format!("http://{}/gemini/upload/v1beta/files", proxy.addr());
    let start = "{\"file\":{\"displayName\":\"n\"}}";
    let started = send(
        &http_client(),
        upload_step(&url, Some(TOKEN), "start", start),
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.text());
    started.headers["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_gemini_upload_step_is_authenticated_by_its_sealed_link_alone() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = gemini_proxy(&mock).await;
    let client = http_client();
    let mut starters = Vec::new();
    for _ in 0..3 {
        let link = start_upload(&proxy).await;
        let starter = mock.seen().last().unwrap().key.clone();
        let done = send(
            &client,
            upload_step(&link, None, "upload, finalize", "bytes"),
        )
        .await;
        assert_eq!(
            done.status,
            200,
            "no token, the sealed link: {}",
            done.text()
        );
        assert!(done.json()["file"]["name"]
            .as_str()
            .unwrap()
            .starts_with("files/kr1_"));
        let last = mock.seen().last().unwrap().clone();
        assert_eq!(last.key, starter, "the token-less step went to another key");
        assert!(last.uri.contains("upload_id=up"), "{}", last.uri);
        starters.push(starter);
    }
    starters.dedup();
    assert_eq!(
        starters.len(),
        3,
        "round-robin started each upload on another key"
    );
}

#[tokio::test]
async fn a_forged_or_misplaced_upload_link_is_refused_and_never_sent() {
    let mock = MockUpstream::start().await.unwrap();
    let proxy = gemini_proxy(&mock).await;
    let client = http_client();
    let link = start_upload(&proxy).await;
    let (head, sealed) = link.split_once("upload_id=kr1_").unwrap();
    let sealed = sealed.split('&').next().unwrap();
    let flipped = {
        let mut b = sealed.as_bytes().to_vec();
        b[10] = if b[10] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    // A sealed Gemini file name (the same codec, another bound prefix) is no upload id.
    let done = send(&client, upload_step(&link, None, "upload, finalize", "b")).await;
    let name = done.json()["file"]["name"].as_str().unwrap().to_owned();
    let file_payload = name.strip_prefix("files/").unwrap();
    let link = start_upload(&proxy).await;
    let before = mock.seen().len();
    for (url, token, want) in [
        (format!("{head}upload_id=kr1_{flipped}"), None, 400),
        (format!("{head}upload_id=kr1_{}", "A".repeat(60)), None, 400),
        (format!("{head}upload_id={file_payload}"), None, 400),
        (format!("{head}upload_id=up1"), None, 401),
        (head.trim_end_matches('?').to_owned(), None, 401),
        // The link elsewhere than the upload path, or with a wrong token: the usual 401.
        (
            link.replace("/upload/v1beta/files", "/v1beta/files"),
            None,
            401,
        ),
        (link.clone(), Some("wrong-token"), 401),
    ] {
        let r = send(&client, upload_step(&url, token, "upload, finalize", "b")).await;
        assert_eq!(r.status, want, "{url}: {}", r.text());
        assert!(
            r.json()["error"]["status"].is_string(),
            "Gemini-shaped: {}",
            r.text()
        );
    }
    assert_eq!(
        mock.seen().len(),
        before,
        "a forged upload step reached the provider"
    );
    let done = send(&client, upload_step(&link, None, "upload, finalize", "b")).await;
    assert_eq!(done.status, 200, "{}", done.text());
}

#[tokio::test]
async fn a_tenant_upload_link_stays_in_the_tenant_pool() {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\npass_headers = [\"x-goog-upload-*\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[[clients]]\nname = \"tests\"\ntoken = \"env:KR_TOKEN\"\n\
         [[providers]]\nname = \"gemini\"\nauth = \"x-goog-api-key\"\nbase_url = \"{}\"\n\
         route = \"/gemini\"\nkeys = [\"env:KR_KEY_1\", \"env:KR_KEY_2\"]\n\
         [affinity]\nsecret = \"env:KR_AFFINITY\"\n\
         [[tenants]]\nname = \"acme\"\n[[tenants.clients]]\nname = \"acme-app\"\ntoken = \"env:KR_ACME\"\n\
         [[tenants.providers]]\nname = \"gemini\"\nkeys = \"env:KR_KEY_3\"\n",
        mock.url()
    );
    let env = env()
        .with("KR_AFFINITY", SECRET)
        .with("KR_ACME", "acme-client-token-0123456789");
    let config = Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    let proxy = keyrelay::start(config).await.unwrap();
    let client = http_client();
    let url = format!("http://{}/gemini/upload/v1beta/files", proxy.addr());
    let start = "{\"file\":{\"displayName\":\"n\"}}";
    for (token, pool_keys) in [
        ("acme-client-token-0123456789", &KEYS[2..]),
        (TOKEN, &KEYS[..2]),
    ] {
        for _ in 0..2 {
            let r = send(&client, upload_step(&url, Some(token), "start", start)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let link = r.headers["x-goog-upload-url"].to_str().unwrap().to_owned();
            let done = send(&client, upload_step(&link, None, "upload, finalize", "b")).await;
            assert_eq!(done.status, 200, "{}", done.text());
            let key = mock.seen().last().unwrap().key.clone().unwrap();
            assert!(
                pool_keys.contains(&key.as_str()),
                "the step left its pool: {key}"
            );
        }
    }
}
