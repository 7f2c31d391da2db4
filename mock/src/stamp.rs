//! Send-time stamps on SSE chunks, for benchmarks that time each chunk through a proxy: with the
//! request header `x-mock-stamp: 1` every chunk carries `"t_us":<UNIX time in microseconds>`,
//! taken when the chunk is handed to the connection. Without the header nothing changes.

use bytes::Bytes;
use http::HeaderMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The request header that turns stamps on.
pub const HEADER: &str = "x-mock-stamp";

/// Whether the request asked for stamped chunks (`x-mock-stamp: 1` or `true`).
pub(crate) fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Microseconds since the UNIX epoch, now (0 if the clock is before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Chunk `i` of a stream, stamped with the time it is made.
pub(crate) fn chunk(i: u64, usage: bool) -> Bytes {
    let usage = crate::body::null_usage(usage);
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"t_us\":{},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]{usage}}}\n\n",
        now_us()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_chunk_carries_the_time_it_was_made() {
        let before = now_us();
        let c = chunk(7, false);
        let text = std::str::from_utf8(&c).unwrap();
        let t: u64 = text
            .split("\"t_us\":")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(t >= before && t <= now_us(), "{text}");
        assert!(text.contains("tok7 ") && text.ends_with("\n\n"), "{text}");
        assert!(!text.contains("usage"), "{text}");
        // With the usage chunk asked for, every chunk says it has no usage yet, as OpenAI's do.
        let c = chunk(7, true);
        let text = std::str::from_utf8(&c).unwrap();
        assert!(text.ends_with(",\"usage\":null}\n\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(text[6..].trim_end()).unwrap();
        assert!(json["usage"].is_null() && json["t_us"].is_u64(), "{text}");
    }

    /// One raw HTTP/1.1 stream request to the mock, `Connection: close`, the whole answer.
    async fn stream_answer(extra: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mock = crate::MockUpstream::start().await.unwrap();
        let body = r#"{"stream":true}"#;
        let mut tcp = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-mock-chunks: 3\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_stream_is_stamped_only_when_asked() {
        let stamped = stream_answer("x-mock-stamp: 1\r\n").await;
        assert_eq!(stamped.matches("\"t_us\":").count(), 3, "{stamped}");
        assert!(stamped.contains("data: [DONE]"), "{stamped}");
        let plain = stream_answer("").await;
        assert!(!plain.contains("t_us"), "{plain}");
        assert_eq!(plain.matches("chat.completion.chunk").count(), 3, "{plain}");
    }

    #[test]
    fn only_the_header_turns_stamps_on() {
        let mut h = HeaderMap::new();
        assert!(!wanted(&h));
        h.insert(HEADER, http::HeaderValue::from_static("0"));
        assert!(!wanted(&h));
        h.insert(HEADER, http::HeaderValue::from_static("1"));
        assert!(wanted(&h));
    }
}
