//! `[affinity] mode = "map"`: three round-robin keys the mock treats as three projects; ids
//! pass untouched both ways, and keyrelay finds each resource's key again from the id-to-key
//! map in its store: in this process, or in a Redis two instances share.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keyrelay::config::Config;
use keyrelay_mock::MockUpstream;
use serde_json::{json, Value};
use support::redis::RedisServer;
use support::*;

/// keyrelay in map mode, round-robin over the three test keys in front of `mock`.
async fn proxy(mock: &MockUpstream, extra: &str) -> keyrelay::Running {
    let text = config_text(&mock.url(), "strategy = \"round-robin\"", "")
        + &format!("\n[affinity]\nmode = \"map\"\n{extra}\n");
    let config = Config::from_toml_str(&text, &env()).unwrap_or_else(|e| panic!("{e}"));
    keyrelay::start(config).await.unwrap()
}

async fn call(p: &keyrelay::Running, method: &str, path: &str, ct: &str, body: String) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", p.addr()))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(&http_client(), req).await
}

async fn get(p: &keyrelay::Running, path: &str) -> Reply {
    call(p, "GET", path, "application/json", String::new()).await
}

async fn post(p: &keyrelay::Running, path: &str, body: &Value) -> Reply {
    call(p, "POST", path, "application/json", body.to_string()).await
}

/// Upload a file (multipart, as the SDKs send it); its id.
async fn upload(p: &keyrelay::Running) -> String {
    let body = "--XB\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{\"custom_id\":\"a\"}\n\r\n--XB--\r\n";
    let r = call(
        p,
        "POST",
        "/v1/files",
        "multipart/form-data; boundary=XB",
        body.into(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("file-") && !id.contains("kr1_"),
        "untouched: {id}"
    );
    id
}

/// The key of the last request the mock saw.
fn last_key(mock: &MockUpstream) -> Option<String> {
    mock.seen().last().unwrap().key.clone()
}

/// Files, batches and stored responses made through `creator` are found again through each
/// of `users`, every call on the key that made them.
async fn resources_stay_on_their_key(
    mock: &MockUpstream,
    creator: &keyrelay::Running,
    users: &[&keyrelay::Running],
) {
    for _ in 0..3 {
        let file = upload(creator).await;
        let key = last_key(mock);
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
        let batch = post(creator, "/v1/batches", &body).await;
        assert_eq!(batch.status, 200, "{}", batch.text());
        assert_eq!(
            last_key(mock),
            key,
            "the batch went to another key than its file"
        );
        let batch = batch.json()["id"].as_str().unwrap().to_owned();
        assert!(!batch.contains("kr1_"), "{batch}");
        let body = json!({"model": "m", "input": "hi", "store": true});
        let mut prev = post(creator, "/v1/responses", &body).await.json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let resp_key = last_key(mock);
        for p in users {
            for path in [format!("/v1/files/{file}"), format!("/v1/batches/{batch}")] {
                let r = get(p, &path).await;
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                assert_eq!(last_key(mock), key, "{path} left the creating key");
            }
            let body = json!({"model": "m", "input": "more", "previous_response_id": prev});
            let next = post(p, "/v1/responses", &body).await;
            assert_eq!(next.status, 200, "{}", next.text());
            assert_eq!(last_key(mock), resp_key, "a chained response left its key");
            prev = next.json()["id"].as_str().unwrap().to_owned();
            let r = get(p, &format!("/v1/responses/{prev}")).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(last_key(mock), resp_key);
        }
    }
}

#[tokio::test]
async fn map_mode_keeps_resources_on_their_key_with_ids_untouched() {
    let mock = MockUpstream::start().await.unwrap();
    let p = proxy(&mock, "").await;
    resources_stay_on_their_key(&mock, &p, &[&p, &p]).await;
    for k in KEYS {
        assert!(mock.calls(k) >= 1, "round-robin never used {k}");
    }
}

#[tokio::test]
async fn two_instances_sharing_redis_route_alike_and_keep_no_secret_there() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let store = format!("\n[store]\nurl = \"{}\"\n", redis.url());
    let a = proxy(&mock, &store).await;
    let b = proxy(&mock, &store).await;
    resources_stay_on_their_key(&mock, &a, &[&b, &a, &b]).await;
    let dump = redis.dump();
    assert!(dump.contains("keyrelay:{openai}:id:file-"), "{dump}");
    assert_no_secret(&dump, "the Redis dump");
    // A stream names its response's id in every event: one store write for the answer.
    let body = json!({"model": "m", "input": "hi", "background": true});
    let id = post(&a, "/v1/responses", &body).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = last_key(&mock);
    let sets = redis.calls("set");
    let stream = get(
        &b,
        &format!("/v1/responses/{id}?stream=true&starting_after=0"),
    )
    .await;
    assert_eq!(stream.status, 200, "{}", stream.text());
    assert_eq!(last_key(&mock), key, "the stream came from another key");
    assert!(
        stream.text().matches(id.as_str()).count() >= 2,
        "{}",
        stream.text()
    );
    assert!(
        redis.calls("set") - sets <= 1,
        "{} writes",
        redis.calls("set") - sets
    );
    // Stateless routes never look ids up.
    let (mget, set) = (redis.calls("mget"), redis.calls("set"));
    for _ in 0..5 {
        assert_eq!(
            post(&a, "/v1/chat/completions", &json!({"model": "m"}))
                .await
                .status,
            200
        );
    }
    assert_eq!((redis.calls("mget"), redis.calls("set")), (mget, set));
}

#[tokio::test]
async fn an_unknown_id_passes_or_is_refused_as_configured() {
    let mock = MockUpstream::start().await.unwrap();
    let pass = proxy(&mock, "").await;
    let r = get(&pass, "/v1/files/file-unknown").await;
    assert_eq!(r.status, 404, "the provider's answer: {}", r.text());
    assert_eq!(mock.seen().len(), 1);
    let refuse = proxy(&mock, "unknown_ids = \"refuse\"").await;
    let r = get(&refuse, "/v1/files/file-unknown").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(mock.seen().len(), 1, "an unknown id was sent");
    let known = upload(&refuse).await;
    let r = get(&refuse, &format!("/v1/files/{known}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
