//! Frames built by hand (every length form, masked or not, fragmented, with control frames in
//! between), each stream also fed split at every byte.
use super::*;

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONTINUATION: u8 = 0;
const PING: u8 = 9;

/// A frame: FIN when `fin`, RSV1 when `compressed`, masked with `mask` when given.
fn frame(
    fin: bool,
    compressed: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | u8::from(compressed) << 6 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

fn text(payload: &str) -> Vec<u8> {
    frame(true, false, TEXT, payload.as_bytes(), None)
}

/// One whole text frame of `payload`, masked with `mask`.
fn masked(payload: &str, mask: [u8; 4]) -> Vec<u8> {
    frame(true, false, TEXT, payload.as_bytes(), Some(mask))
}

/// Realtime's `response.done` made `n` bytes longer (a field of `n` - 10 `x`s before its usage).
fn padded(n: usize) -> String {
    let pad = format!("\"pad\":\"{}\",\"status\"", "x".repeat(n - 10));
    REALTIME_DONE.replace("\"status\"", &pad)
}

const REALTIME_DONE: &str = r#"{"type":"response.done","event_id":"ev_1","response":{"id":"resp_1","status":"completed","output":[{"type":"message","content":[{"type":"text","text":"the \"usage\": {\"total_tokens\": 999} is not a key"}]}],"usage":{"total_tokens":40,"input_tokens":10,"output_tokens":30,"input_token_details":{"cached_tokens":0,"text_tokens":10,"audio_tokens":0},"output_token_details":{"text_tokens":30,"audio_tokens":0}}}}"#;
const RESPONSES_COMPLETED: &str = r#"{"type":"response.completed","response":{"id":"resp_2","usage":{"input_tokens":7,"output_tokens":5,"total_tokens":12}}}"#;
const GEMINI_TURN: &str = r#"{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":20,"responseTokenCount":6,"totalTokenCount":26}}"#;
const DELTA: &str = r#"{"type":"response.output_text.delta","delta":"Hel","usage":null}"#;

/// The tokens `stream` reports, fed whole, then split at every byte (both must agree).
fn tokens(stream: &[u8]) -> u64 {
    let whole = Messages::default().feed(stream);
    for cut in 0..=stream.len() {
        let mut m = Messages::default();
        let split = m.feed(&stream[..cut]) + m.feed(&stream[cut..]);
        assert_eq!(split, whole, "split at byte {cut}");
    }
    let mut m = Messages::default();
    let bytewise: u64 = stream.iter().map(|b| m.feed(std::slice::from_ref(b))).sum();
    assert_eq!(bytewise, whole, "fed a byte at a time");
    whole
}

#[test]
fn each_providers_usage_message_counts_and_the_others_count_nothing() {
    assert_eq!(tokens(&text(REALTIME_DONE)), 40);
    assert_eq!(tokens(&text(RESPONSES_COMPLETED)), 12);
    assert_eq!(tokens(&text(GEMINI_TURN)), 26);
    assert_eq!(tokens(&text(DELTA)), 0);
    assert_eq!(tokens(&text("not json at all")), 0);
}

#[test]
fn every_message_of_a_session_adds_its_own_report() {
    let mut stream = text(DELTA);
    stream.extend(text(REALTIME_DONE));
    stream.extend(frame(true, false, BINARY, &[0, 1, 2, 3], None));
    stream.extend(text(DELTA));
    stream.extend(text(REALTIME_DONE));
    stream.extend(text(RESPONSES_COMPLETED));
    assert_eq!(tokens(&stream), 40 + 40 + 12);
}

#[test]
fn a_fragmented_message_counts_once_with_control_frames_between_its_parts() {
    let bytes = REALTIME_DONE.as_bytes();
    let (a, rest) = bytes.split_at(30);
    let (b, c) = rest.split_at(100);
    let mut stream = frame(false, false, TEXT, a, None);
    stream.extend(frame(true, false, PING, b"ping", None));
    stream.extend(frame(false, false, CONTINUATION, b, None));
    stream.extend(frame(true, false, PING, b"", None));
    stream.extend(frame(true, false, CONTINUATION, c, None));
    assert_eq!(tokens(&stream), 40);
}

#[test]
fn long_messages_count_with_either_extended_length() {
    // 16-bit length: a message past 125 bytes.
    let f = text(&padded(500));
    assert_eq!(f[1], 126);
    assert_eq!(tokens(&f), 40);
    // 64-bit length: past 64 KiB, the usage at its end is still read (the tail is kept).
    let f = text(&padded(100_000));
    assert_eq!(f[1], 127);
    assert_eq!(Messages::default().feed(&f), 40);
    let mut m = Messages::default();
    let pieces: u64 = f.chunks(997).map(|c| m.feed(c)).sum();
    assert_eq!(pieces, 40);
}

#[test]
fn a_masked_frame_is_read_unmasked() {
    assert_eq!(tokens(&masked(REALTIME_DONE, [0x12, 0x34, 0x56, 0x78])), 40);
    // Past 256 bytes: unmasked piece by piece, the mask's place carried over.
    assert_eq!(tokens(&masked(&padded(700), [0xde, 0xad, 0xbe, 0xef])), 40);
}

#[test]
fn compressed_and_binary_messages_count_nothing() {
    // RSV1: permessage-deflate's compressed message; its bytes are not JSON.
    assert_eq!(
        tokens(&frame(true, true, TEXT, REALTIME_DONE.as_bytes(), None)),
        0
    );
    assert_eq!(
        tokens(&frame(true, false, BINARY, REALTIME_DONE.as_bytes(), None)),
        0
    );
    // A binary message's continuation is not read either; the next text message is.
    let mut stream = frame(false, false, BINARY, b"{\"usage\":", None);
    stream.extend(frame(
        true,
        false,
        CONTINUATION,
        b"{\"total_tokens\":5}}",
        None,
    ));
    stream.extend(text(RESPONSES_COMPLETED));
    assert_eq!(tokens(&stream), 12);
}

#[test]
fn empty_frames_and_a_close_leave_the_reader_in_step() {
    let mut stream = frame(true, false, TEXT, b"", None);
    stream.extend(frame(true, false, PING, b"", None));
    stream.extend(frame(true, false, 8, &[0x03, 0xe8, b'b', b'y', b'e'], None));
    stream.extend(text(GEMINI_TURN));
    assert_eq!(tokens(&stream), 26);
}
