//! The usage scanner: every provider's shape, JSON and SSE, whole and split at every byte.

use super::*;

/// The tokens `body` reports, fed in one piece and then split at every byte (two frames),
/// as frames and as bytes.
fn counted(format: Format, body: &str) -> u64 {
    let whole = {
        let mut u = Usage::new(format);
        u.feed_frame(&Bytes::copy_from_slice(body.as_bytes()));
        u.finish()
    };
    for at in 0..=body.len() {
        let (a, b) = body.as_bytes().split_at(at);
        let mut u = Usage::new(format);
        u.feed_frame(&Bytes::copy_from_slice(a));
        u.feed_frame(&Bytes::copy_from_slice(b));
        assert_eq!(u.finish(), whole, "split at {at} of {body}");
        let mut u = Usage::new(format);
        u.feed(a);
        u.feed(b);
        assert_eq!(u.finish(), whole, "split at {at} of {body}, fed as bytes");
    }
    whole
}

#[test]
fn json_answers_of_each_provider() {
    let openai = r#"{"id":"chatcmpl-1","choices":[{"message":{"content":"hi \"usage\": {\"total_tokens\": 999}"}}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":null}"#;
    assert_eq!(counted(Format::Json, openai), 12);
    // A quoted "usage" inside a string after the real one is no key (its quotes are escaped).
    let quoted = r#"{"usage":{"total_tokens":12},"note":"\"usage\": {\"total_tokens\": 999}"}"#;
    assert_eq!(counted(Format::Json, quoted), 12);
    let no_total = r#"{"usage": {"prompt_tokens": 5, "completion_tokens": 8}}"#;
    assert_eq!(counted(Format::Json, no_total), 13);
    let responses = r#"{"id":"resp_1","object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"x"}]}],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},"output_tokens":4,"output_tokens_details":{"reasoning_tokens":0}}}"#;
    assert_eq!(counted(Format::Json, responses), 13);
    let anthropic = r#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":5,"cache_read_input_tokens":0,"output_tokens":7}}"#;
    assert_eq!(counted(Format::Json, anthropic), 12);
    let gemini = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]}}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":6,"totalTokenCount":11,"promptTokensDetails":[{"modality":"TEXT","tokenCount":4}]},"modelVersion":"gemini-2.0"}"#;
    assert_eq!(counted(Format::Json, gemini), 11);
    // Gemini's streamGenerateContent without alt=sse: one JSON array of chunks; the last counts.
    let array = r#"[{"candidates":[],"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4}},
{"candidates":[],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":8,"totalTokenCount":12}}]"#;
    assert_eq!(counted(Format::Json, array), 12);
    // No usage, a null one, or a body that is not JSON: nothing.
    assert_eq!(counted(Format::Json, r#"{"data":[{"id":"gpt-4o"}]}"#), 0);
    assert_eq!(counted(Format::Json, r#"{"usage":null}"#), 0);
    assert_eq!(counted(Format::Json, "<html>usage</html>"), 0);
}

#[test]
fn sse_streams_of_each_provider() {
    let openai = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n\
                  data: [DONE]\n\n";
    assert_eq!(counted(Format::Sse, openai), 7);
    let responses = "event: response.created\r\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\r\n\r\n\
                     event: response.output_text.delta\r\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\r\n\r\n\
                     event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[],\"usage\":{\"input_tokens\":10,\"output_tokens\":3,\"total_tokens\":13},\"user\":null}}\r\n\r\n";
    assert_eq!(counted(Format::Sse, responses), 13);
    let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
                     event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\n\
                     event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
                     event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    assert_eq!(counted(Format::Sse, anthropic), 40);
    let gemini = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4}}\r\n\r\n\
                  data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}]}}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":9,\"totalTokenCount\":13}}\r\n\r\n";
    assert_eq!(counted(Format::Sse, gemini), 13);
    // A stream without usage (OpenAI without include_usage) counts nothing.
    let bare = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n";
    assert_eq!(counted(Format::Sse, bare), 0);
}

/// A frame is read line by line only where a usage key in it may have an object for its value
/// (or the frame ends before that is known); OpenAI's `"usage":null` on every chunk is not.
#[test]
fn only_a_usage_key_that_may_hold_an_object_sends_a_frame_line_by_line() {
    for (found, may) in [
        (r#""usage":null}"#, false),
        (r#""usage" : null,"x":1"#, false),
        (r#""usageMetadata":null"#, false),
        (r#""usage_bytes":0"#, false),
        (r#""usage":{"total_tokens":1}"#, true),
        (r#""usage": {"#, true),
        (r#""usageMetadata":{"totalTokenCount":3}"#, true),
        // Cut before the value is known.
        (r#""usage"#, true),
        (r#""usage""#, true),
        (r#""usage":"#, true),
        (r#""usage": "#, true),
        (r#""usageMeta"#, true),
    ] {
        assert_eq!(may_report(found.as_bytes()), may, "{found}");
    }
}

#[test]
fn a_cut_stream_counts_what_it_saw() {
    let mut u = Usage::new(Format::Sse);
    u.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n");
    // The message_delta line never ends: not read.
    u.feed(
        b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15",
    );
    assert_eq!(u.finish(), 26);
}

#[test]
fn memory_stays_bounded_and_usage_at_the_end_of_a_huge_answer_still_counts() {
    let mut u = Usage::new(Format::Json);
    u.feed(b"{\"choices\":[{\"message\":{\"content\":\"");
    let filler = vec![b'x'; 10_000];
    for _ in 0..1_000 {
        u.feed(&filler);
        assert!(u.record.len() <= MAX_RECORD, "{}", u.record.len());
    }
    u.feed(b"\"}}],\"usage\":{\"total_tokens\":42}}");
    assert_eq!(u.finish(), 42);
    // One SSE line of 10 MB, in 10 kB frames: bounded too.
    let mut u = Usage::new(Format::Sse);
    u.feed(b"data: {\"type\":\"response.completed\",\"response\":{\"output\":\"");
    for _ in 0..1_000 {
        u.feed(&filler);
        assert!(u.record.len() <= MAX_RECORD);
    }
    u.feed(b"\",\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}}\n\n");
    assert_eq!(u.finish(), 7);
    // A usage report at the start of a huge JSON answer is lost, not kept at any cost.
    let mut u = Usage::new(Format::Json);
    u.feed(b"{\"usage\":{\"total_tokens\":42},\"data\":\"");
    for _ in 0..10 {
        u.feed(&filler);
    }
    u.feed(b"\"}");
    assert_eq!(u.finish(), 0);
}

#[test]
fn the_meter_hands_its_count_on_once_when_dropped() {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    let mut m = Meter::new(
        Format::Json,
        Box::new(move |t| seen.lock().unwrap().push(t)),
    );
    m.feed(&Bytes::from_static(br#"{"usage":{"input_tokens":2,"#));
    m.feed(&Bytes::from_static(br#""output_tokens":3}}"#));
    drop(m);
    assert_eq!(*got.lock().unwrap(), [5]);
}

#[test]
fn the_last_usage_key_whose_value_reads_is_the_one_counted() {
    let json = |s: &str| counted(Format::Json, s);
    // The later of the two keys wins, whichever it is.
    assert_eq!(
        json(r#"{"usage":{"total_tokens":3},"usageMetadata":{"totalTokenCount":9}}"#),
        9
    );
    assert_eq!(
        json(r#"{"usageMetadata":{"totalTokenCount":9},"usage":{"total_tokens":3}}"#),
        3
    );
    // A later key whose value is not an object falls back to the other one.
    assert_eq!(
        json(r#"{"usageMetadata":{"totalTokenCount":9},"usage":null}"#),
        9
    );
    // Of one key, the last place it is.
    assert_eq!(
        json(r#"{"a":{"usage":{"total_tokens":1}},"usage":{"total_tokens":4}}"#),
        4
    );
    // Keys that only start like one are not it.
    assert_eq!(
        json(r#"{"usage_note":{"total_tokens":5},"usages":{"total_tokens":6}}"#),
        0
    );
}
