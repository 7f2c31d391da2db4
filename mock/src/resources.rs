//! Stateful resources, one project per key: files (multipart upload, retrieve, download, list,
//! delete), batches (with an output file), stored responses (`previous_response_id` checked in
//! the project, background responses, `?stream=true&starting_after=N`), vector stores with
//! files, Anthropic message batches and Gemini files. A resource created with one key is a 404
//! for every other key, as across a provider's projects.

use crate::body::MockBody;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// One key's resources, by id (ids sort in creation order).
#[derive(Debug, Default)]
struct Project {
    files: BTreeMap<String, (Value, Bytes)>,
    batches: BTreeMap<String, Value>,
    responses: BTreeMap<String, Value>,
    vector_stores: BTreeMap<String, (Value, Vec<String>)>,
    message_batches: BTreeMap<String, Value>,
    gemini_files: BTreeMap<String, Value>,
    /// Resumable uploads started, by upload id: the display name asked for.
    gemini_uploads: HashMap<String, Value>,
}

/// Every key's project.
#[derive(Debug, Default)]
pub(crate) struct Projects {
    by_key: Mutex<HashMap<String, Project>>,
    next: AtomicU64,
}

type Reply = Response<MockBody>;

/// A request the resource routes know, answered; `None` for any other path.
pub(crate) fn handle(
    parts: &http::request::Parts,
    body: &Bytes,
    key: Option<&str>,
    projects: &Projects,
) -> Option<Reply> {
    let path = parts.uri.path();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (version, segs) = segs.split_first()?;
    let known = matches!(
        segs.first().copied(),
        Some("files" | "batches" | "responses" | "vector_stores" | "messages" | "v1beta" | "audio")
    );
    if !known || (segs.first() == Some(&"messages") && segs.get(1) != Some(&"batches")) {
        return None;
    }
    let id = projects.next.fetch_add(1, Ordering::Relaxed);
    let mut all = projects
        .by_key
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let project = all.entry(key.unwrap_or_default().to_owned()).or_default();
    let req = Req {
        method: &parts.method,
        query: parts.uri.query().unwrap_or_default(),
        content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        body,
        id: format!("{id:08x}{:016x}", id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        command: parts
            .headers
            .get("x-goog-upload-command")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        host: parts
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1"),
    };
    match (*version, segs) {
        ("v1", ["audio", "transcriptions" | "translations"]) => transcription(&req, parts),
        ("v1", ["files", rest @ ..]) => files(&req, project, rest),
        ("v1", ["batches", rest @ ..]) => batches(&req, project, rest),
        ("v1", ["responses", rest @ ..]) => responses(&req, project, rest),
        ("v1", ["vector_stores", rest @ ..]) => vector_stores(&req, project, rest),
        ("v1", ["messages", "batches", rest @ ..]) => message_batches(&req, project, rest),
        ("v1beta", ["files", rest @ ..]) => gemini_files(&req, project, rest),
        ("upload", ["v1beta", "files"]) => gemini_files(&req, project, &[]),
        _ => None,
    }
}

struct Req<'a> {
    method: &'a Method,
    query: &'a str,
    content_type: &'a str,
    body: &'a Bytes,
    /// A fresh id tail, for whatever this request creates.
    id: String,
    /// The mock's own address as the request named it, for links it returns.
    host: &'a str,
    /// Gemini's resumable upload step (`start`, `upload, finalize`).
    command: &'a str,
}

impl Req<'_> {
    fn json(&self) -> Value {
        serde_json::from_slice(self.body).unwrap_or_default()
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

fn reply(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(MockBody::full(body.into()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    resp
}

fn ok(v: &Value) -> Option<Reply> {
    Some(reply(200, "application/json", v.to_string()))
}

fn not_found(what: &str, id: &str) -> Option<Reply> {
    let body = json!({"error": {"message": format!("No such {what}: '{id}'"),
        "type": "invalid_request_error", "param": "id", "code": null}});
    Some(reply(404, "application/json", body.to_string()))
}

/// `{"object":"list","data":[...]}` of `items` after the `after` cursor, at most `limit`.
fn list<'a>(req: &Req<'_>, items: impl Iterator<Item = (&'a String, &'a Value)>) -> Option<Reply> {
    let after = req.param("after");
    let limit: usize = req
        .param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20);
    let mut past = after.is_none();
    let mut data = Vec::new();
    let mut more = false;
    for (id, v) in items {
        if !past {
            past = Some(id.as_str()) == after;
            continue;
        }
        if data.len() == limit {
            more = true;
            break;
        }
        data.push(v.clone());
    }
    let first = data.first().map(|v| v["id"].clone());
    let last = data.last().map(|v| v["id"].clone());
    ok(
        &json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}),
    )
}

/// The `purpose` field and the file part (name, bytes) of a multipart upload.
fn multipart(req: &Req<'_>) -> (String, String, Bytes) {
    let boundary = req
        .content_type
        .split("boundary=")
        .nth(1)
        .map(|b| b.trim_matches('"'))
        .unwrap_or("-");
    let delim = format!("--{boundary}");
    let body: &[u8] = req.body;
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(i) = find(&body[at..], delim.as_bytes()) {
        starts.push(at + i);
        at += i + delim.len();
    }
    let (mut purpose, mut filename, mut content) =
        (String::new(), String::from("upload"), Bytes::new());
    for pair in starts.windows(2) {
        let part = &body[pair[0] + delim.len()..pair[1]];
        let Some(split) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..split]);
        let data = &part[split + 4..];
        let data = data.strip_suffix(b"\r\n").unwrap_or(data);
        if head.contains("name=\"purpose\"") {
            purpose = String::from_utf8_lossy(data).into_owned();
        } else if let Some(name) = head.split("filename=\"").nth(1) {
            filename = name.split('"').next().unwrap_or_default().to_owned();
            content = req.body.slice_ref(data);
        }
    }
    (purpose, filename, content)
}

/// A transcription (or translation) of the multipart's file part: its text says what arrived
/// (the file's name, its bytes and their SHA-256) and how the body came (`chunked` or not).
fn transcription(req: &Req<'_>, parts: &http::request::Parts) -> Option<Reply> {
    use sha2::Digest;
    let (_, filename, content) = multipart(req);
    let chunked = parts
        .headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let digest = hex_of(&sha2::Sha256::digest(&content));
    let text = format!(
        "file={filename} bytes={} sha256={digest} chunked={chunked}",
        content.len()
    );
    ok(&json!({ "text": text }))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn files(req: &Req<'_>, p: &mut Project, rest: &[&str]) -> Option<Reply> {
    match (req.method, rest) {
        (&Method::POST, []) => {
            let (purpose, filename, content) = multipart(req);
            let id = format!("file-{}", req.id);
            let v = json!({"id": id, "object": "file", "bytes": content.len(), "created_at": 1_700_000_000,
                "filename": filename, "purpose": purpose, "status": "processed"});
            p.files.insert(id, (v.clone(), content));
            ok(&v)
        }
        (&Method::GET, []) => list(req, p.files.iter().map(|(k, (v, _))| (k, v))),
        (&Method::GET, [id]) => match p.files.get(*id) {
            Some((v, _)) => ok(v),
            None => not_found("File", id),
        },
        (&Method::DELETE, [id]) => match p.files.remove(*id) {
            Some(_) => ok(&json!({"id": id, "object": "file", "deleted": true})),
            None => not_found("File", id),
        },
        (&Method::GET, [id, "content"]) => match p.files.get(*id) {
            Some((_, content)) => Some(reply(200, "application/octet-stream", content.clone())),
            None => not_found("File", id),
        },
        _ => None,
    }
}

fn batches(req: &Req<'_>, p: &mut Project, rest: &[&str]) -> Option<Reply> {
    match (req.method, rest) {
        (&Method::POST, []) => {
            let body = req.json();
            let input = body["input_file_id"].as_str().unwrap_or_default();
            let Some((_, content)) = p.files.get(input) else {
                return not_found("File", input);
            };
            let lines = content.split(|b| *b == b'\n').filter(|l| !l.is_empty());
            let mut out = String::new();
            let mut n = 0;
            for line in lines.take(1000) {
                let v: Value = serde_json::from_slice(line).unwrap_or_default();
                let r = json!({"id": format!("batch_req_{n}"), "custom_id": v["custom_id"],
                    "response": {"status_code": 200, "body": {"object": "chat.completion"}}, "error": null});
                out.push_str(&r.to_string());
                out.push('\n');
                n += 1;
            }
            let out_id = format!("file-out{}", req.id);
            let meta = json!({"id": out_id, "object": "file", "bytes": out.len(), "created_at": 1_700_000_000,
                "filename": "batch_output.jsonl", "purpose": "batch_output", "status": "processed"});
            p.files.insert(out_id.clone(), (meta, Bytes::from(out)));
            let id = format!("batch_{}", req.id);
            let v = json!({"id": id, "object": "batch", "endpoint": body["endpoint"], "errors": null,
                "input_file_id": input, "completion_window": body["completion_window"],
                "status": "completed", "output_file_id": out_id, "error_file_id": null,
                "created_at": 1_700_000_000, "request_counts": {"total": n, "completed": n, "failed": 0},
                "metadata": body["metadata"]});
            p.batches.insert(id, v.clone());
            ok(&v)
        }
        (&Method::GET, []) => list(req, p.batches.iter()),
        (&Method::GET, [id]) => match p.batches.get(*id) {
            Some(v) => ok(v),
            None => not_found("Batch", id),
        },
        _ => None,
    }
}

/// A stored response's event stream, as `GET ?stream=true` replays it.
fn response_events(v: &Value) -> Vec<Value> {
    let mut created = v.clone();
    created["status"] = json!("in_progress");
    let mut events = vec![
        json!({"type": "response.created", "response": created}),
        json!({"type": "response.in_progress", "response": created}),
    ];
    for word in ["Hello", " from", " the", " mock."] {
        events.push(
            json!({"type": "response.output_text.delta", "item_id": "msg_mock",
            "output_index": 0, "content_index": 0, "delta": word, "logprobs": []}),
        );
    }
    events.push(json!({"type": "response.completed", "response": v}));
    for (i, e) in events.iter_mut().enumerate() {
        e["sequence_number"] = json!(i);
    }
    events
}

fn sse(events: &[Value]) -> Option<Reply> {
    let mut out = String::new();
    for e in events {
        out.push_str(&format!(
            "event: {}\ndata: {e}\n\n",
            e["type"].as_str().unwrap_or("message")
        ));
    }
    Some(reply(200, "text/event-stream", out))
}

fn responses(req: &Req<'_>, p: &mut Project, rest: &[&str]) -> Option<Reply> {
    match (req.method, rest) {
        (&Method::POST, []) => {
            let body = req.json();
            let previous = body["previous_response_id"].as_str();
            if let Some(prev) = previous.filter(|prev| !p.responses.contains_key(*prev)) {
                let e = json!({"error": {"message": format!("Previous response with id '{prev}' not found."),
                    "type": "invalid_request_error", "param": "previous_response_id", "code": "previous_response_not_found"}});
                return Some(reply(400, "application/json", e.to_string()));
            }
            let id = format!("resp_{}", req.id);
            let background = body["background"].as_bool().unwrap_or(false);
            let v = json!({"id": id, "object": "response", "created_at": 1_700_000_000, "status": "completed",
                "model": body["model"], "previous_response_id": previous, "background": background,
                "store": body["store"].as_bool().unwrap_or(true), "error": null, "incomplete_details": null,
                "instructions": null, "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0,
                "tool_choice": "auto", "tools": [], "top_p": 1.0,
                "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello from the mock.", "annotations": []}]}],
                "usage": {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9,
                    "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}});
            if body["store"].as_bool().unwrap_or(true) {
                p.responses.insert(id, v.clone());
            }
            if body["stream"].as_bool().unwrap_or(false) {
                return sse(&response_events(&v));
            }
            if background {
                let mut queued = v;
                queued["status"] = json!("queued");
                queued["output"] = json!([]);
                return ok(&queued);
            }
            ok(&v)
        }
        (&Method::GET, [id]) => {
            let Some(v) = p.responses.get(*id) else {
                return not_found("Response", id);
            };
            if req.param("stream") == Some("true") {
                let after: i64 = req
                    .param("starting_after")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(-1);
                let events: Vec<Value> = response_events(v)
                    .into_iter()
                    .filter(|e| e["sequence_number"].as_i64().unwrap_or(0) > after)
                    .collect();
                return sse(&events);
            }
            ok(v)
        }
        _ => None,
    }
}

fn vs_file(vs: &str, file: &str) -> Value {
    json!({"id": file, "object": "vector_store.file", "vector_store_id": vs, "status": "completed",
        "created_at": 1_700_000_000, "usage_bytes": 0, "last_error": null})
}

fn vector_stores(req: &Req<'_>, p: &mut Project, rest: &[&str]) -> Option<Reply> {
    match (req.method, rest) {
        (&Method::POST, []) => {
            let body = req.json();
            let ids: Vec<String> = body["file_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(missing) = ids.iter().find(|f| !p.files.contains_key(*f)) {
                return not_found("File", missing);
            }
            let id = format!("vs_{}", req.id);
            let v = json!({"id": id, "object": "vector_store", "name": body["name"], "status": "completed",
                "created_at": 1_700_000_000, "usage_bytes": 0,
                "file_counts": {"in_progress": 0, "completed": ids.len(), "failed": 0, "cancelled": 0, "total": ids.len()}});
            p.vector_stores.insert(id, (v.clone(), ids));
            ok(&v)
        }
        (&Method::GET, []) => list(req, p.vector_stores.iter().map(|(k, (v, _))| (k, v))),
        (&Method::GET, [id]) => match p.vector_stores.get(*id) {
            Some((v, _)) => ok(v),
            None => not_found("VectorStore", id),
        },
        (&Method::POST, [id, "files"]) => {
            let file = req.json()["file_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if !p.files.contains_key(&file) {
                return not_found("File", &file);
            }
            let Some((_, files)) = p.vector_stores.get_mut(*id) else {
                return not_found("VectorStore", id);
            };
            files.push(file.clone());
            ok(&vs_file(id, &file))
        }
        (&Method::GET, [id, "files", rest @ ..]) => {
            let Some((_, files)) = p.vector_stores.get(*id) else {
                return not_found("VectorStore", id);
            };
            match rest {
                [] => {
                    let all: BTreeMap<String, Value> =
                        files.iter().map(|f| (f.clone(), vs_file(id, f))).collect();
                    list(req, all.iter())
                }
                [file] if files.iter().any(|f| f == file) => ok(&vs_file(id, file)),
                [file] => not_found("VectorStoreFile", file),
                _ => None,
            }
        }
        _ => None,
    }
}

fn anthropic_not_found(id: &str) -> Option<Reply> {
    let e = json!({"type": "error", "error": {"type": "not_found_error", "message": format!("No such batch: {id}")}});
    Some(reply(404, "application/json", e.to_string()))
}

fn message_batches(req: &Req<'_>, p: &mut Project, rest: &[&str]) -> Option<Reply> {
    match (req.method, rest) {
        (&Method::POST, []) => {
            let body = req.json();
            let n = body["requests"].as_array().map_or(0, Vec::len);
            let id = format!("msgbatch_{}", req.id);
            let v = json!({"id": id, "type": "message_batch", "processing_status": "ended",
                "request_counts": {"processing": 0, "succeeded": n, "errored": 0, "canceled": 0, "expired": 0},
                "created_at": "2025-01-01T00:00:00Z", "ended_at": "2025-01-01T00:01:00Z",
                "expires_at": "2025-01-02T00:00:00Z", "archived_at": null, "cancel_initiated_at": null,
                "results_url": format!("http://{}/v1/messages/batches/{id}/results", req.host),
                "requests": body["requests"]});
            p.message_batches.insert(id, v.clone());
            let mut shown = v;
            if let Some(o) = shown.as_object_mut() {
                o.remove("requests");
            }
            ok(&shown)
        }
        (&Method::GET, [id, rest @ ..]) => {
            let Some(v) = p.message_batches.get(*id) else {
                return anthropic_not_found(id);
            };
            match rest {
                [] => {
                    let mut shown = v.clone();
                    if let Some(o) = shown.as_object_mut() {
                        o.remove("requests");
                    }
                    ok(&shown)
                }
                ["results"] => {
                    let mut out = String::new();
                    for r in v["requests"].as_array().into_iter().flatten() {
                        let line = json!({"custom_id": r["custom_id"], "result": {"type": "succeeded",
                            "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": "mock",
                                "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn",
                                "usage": {"input_tokens": 1, "output_tokens": 1}}}});
                        out.push_str(&line.to_string());
                        out.push('\n');
                    }
                    Some(reply(200, "application/x-jsonl", out))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn gemini_files(req: &Req<'_>, p: &mut Project, rest: &[&str]) -> Option<Reply> {
    let missing = |id: &str| {
        let e = json!({"error": {"code": 404, "message": format!("File {id} not found."), "status": "NOT_FOUND"}});
        Some(reply(404, "application/json", e.to_string()))
    };
    match (req.method, rest) {
        (&Method::POST, []) if req.command.contains("start") => {
            let id = format!("up{}", req.id);
            p.gemini_uploads
                .insert(id.clone(), req.json()["file"].clone());
            let mut resp = reply(200, "application/json", "{}");
            let link = format!(
                "http://{}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable",
                req.host
            );
            if let Ok(v) = http::HeaderValue::from_str(&link) {
                resp.headers_mut().insert("x-goog-upload-url", v);
            }
            Some(resp)
        }
        (&Method::POST, []) if req.command.contains("upload") => {
            let id = req.param("upload_id").unwrap_or_default();
            let Some(asked) = p.gemini_uploads.remove(id) else {
                return missing(id);
            };
            let name = format!("files/{}", req.id);
            let v = json!({"name": name, "displayName": asked["displayName"].as_str().or(asked["display_name"].as_str()),
                "mimeType": "text/plain", "sizeBytes": req.body.len().to_string(), "state": "ACTIVE",
                "uri": format!("https://generativelanguage.googleapis.com/v1beta/{name}")});
            p.gemini_files.insert(name, v.clone());
            let mut resp = reply(200, "application/json", json!({"file": v}).to_string());
            resp.headers_mut().insert(
                "x-goog-upload-status",
                http::HeaderValue::from_static("final"),
            );
            Some(resp)
        }
        (&Method::POST, []) => {
            let name = format!("files/{}", req.id);
            let v = json!({"name": name, "displayName": "upload", "mimeType": "application/octet-stream",
                "sizeBytes": req.body.len().to_string(), "state": "ACTIVE",
                "uri": format!("https://generativelanguage.googleapis.com/v1beta/{name}")});
            p.gemini_files.insert(name, v.clone());
            ok(&json!({"file": v}))
        }
        (&Method::GET, []) => {
            let files: Vec<&Value> = p.gemini_files.values().collect();
            ok(&json!({"files": files}))
        }
        (&Method::GET, [id]) => match p.gemini_files.get(&format!("files/{id}")) {
            Some(v) => ok(v),
            None => missing(id),
        },
        (&Method::DELETE, [id]) => match p.gemini_files.remove(&format!("files/{id}")) {
            Some(_) => ok(&json!({})),
            None => missing(id),
        },
        _ => None,
    }
}
