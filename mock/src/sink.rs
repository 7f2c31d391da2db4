//! A body sink for large uploads: a request with `x-mock-sink` has its body read as it streams,
//! counted and hashed (SHA-256) without being held, and is answered
//! `{"bytes":N,"sha256":"hex"}` (recorded as its body). A key scripted with a fixed answer (a
//! 429) gets it at once, before a byte of the body is read, as providers answer early (the rest
//! of the body is then read and dropped for a while, as a real front end lingers).

use crate::{fixed, record, MockBody, Reply, State};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use std::fmt::Write;
use std::time::Duration;

/// How long an early answer keeps reading the rest of the body before the connection closes.
const LINGER: Duration = Duration::from_secs(2);

/// Whether the request asks for the sink.
pub(crate) fn wanted(parts: &http::request::Parts) -> bool {
    parts.headers.contains_key("x-mock-sink")
}

/// Answer a sink request: the key's fixed script at once, else the body's length and hash.
pub(crate) async fn answer(
    parts: &http::request::Parts,
    body: Incoming,
    key: Option<String>,
    state: &State,
) -> Response<MockBody> {
    let scripted = state.reply_for(key.as_deref());
    if let Some(Reply::Fixed {
        status,
        headers,
        body: text,
    }) = scripted
    {
        record(state, parts, key, bytes::Bytes::new());
        // Like a real front end (nginx's lingering close), keep reading what the client still
        // sends for a while: closing at once with unread bytes resets the connection, and the
        // reset can destroy the answer before the client reads it.
        tokio::spawn(async move {
            let drain = async {
                let mut body = body;
                while let Some(Ok(_)) = body.frame().await {}
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
        return fixed(status, &headers, text);
    }
    let summary = match digest(body).await {
        Ok((len, hash)) => format!(r#"{{"bytes":{len},"sha256":"{hash}"}}"#),
        Err(()) => {
            record(state, parts, key, bytes::Bytes::new());
            return fixed(400, &[], r#"{"error":{"message":"body cut"}}"#.to_owned());
        }
    };
    record(state, parts, key, bytes::Bytes::from(summary.clone()));
    fixed(200, &[], summary)
}

/// The body's length and SHA-256 (hex), read chunk by chunk.
async fn digest(mut body: Incoming) -> Result<(u64, String), ()> {
    let mut hash = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(data) = frame.data_ref() {
            hash.update(data);
            len += data.len() as u64;
        }
    }
    let mut hex = String::with_capacity(64);
    for b in hash.finalize() {
        let _ = write!(hex, "{b:02x}");
    }
    Ok((len, hex))
}
