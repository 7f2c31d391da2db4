//! The tokens an answer used, read from the provider's own `usage` report as the answer's
//! frames pass (each frame is handed on as it came, before or after it is looked at: nothing is
//! held back or changed). Only built when a `tpm` limit applies to the request.
//!
//! Where each provider reports it:
//! - JSON: OpenAI `usage.total_tokens` (else prompt + completion; the Responses API's
//!   input + output), Anthropic `usage.input_tokens + output_tokens`, Gemini
//!   `usageMetadata.totalTokenCount`.
//! - SSE: OpenAI's last chunk's `usage` (with `stream_options.include_usage`), the Responses
//!   API's `response.completed` (`response.usage`), Anthropic's `message_start` (input) and
//!   `message_delta` (output, cumulative), Gemini's last `usageMetadata`.
//!
//! A JSON body is one record, an SSE line another; of each, at most [`MAX_RECORD`] bytes are
//! kept, and past that only the last [`TAIL`] (providers put `usage` at the end), so a huge
//! answer costs bounded memory and, at worst, counts nothing.

use bytes::Bytes;
use memchr::memmem::Finder;
use serde::Deserialize;
use std::sync::LazyLock;

/// The most of one record kept whole.
const MAX_RECORD: usize = 64 * 1024;
/// What is kept of a record past [`MAX_RECORD`]: its end.
const TAIL: usize = 16 * 1024;

/// How the answer is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Sse,
}

/// One usage report, whichever provider's names it uses. An absent count stays as it was.
#[derive(Debug, Default, Deserialize)]
struct Reported {
    #[serde(alias = "prompt_tokens", alias = "promptTokenCount")]
    input_tokens: Option<u64>,
    #[serde(alias = "completion_tokens", alias = "candidatesTokenCount")]
    output_tokens: Option<u64>,
    #[serde(alias = "totalTokenCount")]
    total_tokens: Option<u64>,
}

/// The counts reported so far, each as last reported.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
}

impl Counts {
    fn merge(&mut self, r: &Reported) {
        self.input = r.input_tokens.or(self.input);
        self.output = r.output_tokens.or(self.output);
        self.total = r.total_tokens.or(self.total);
    }

    fn tokens(&self) -> u64 {
        self.total.unwrap_or_else(|| {
            self.input
                .unwrap_or(0)
                .saturating_add(self.output.unwrap_or(0))
        })
    }
}

/// Reads an answer's usage as its bytes pass.
#[derive(Debug)]
pub struct Usage {
    format: Format,
    /// A JSON body that came in one frame so far, held as it came (no copy).
    whole: Option<Bytes>,
    /// The JSON body so far, or the SSE line in progress (bounded; see [`Usage::keep`]).
    record: Vec<u8>,
    counts: Counts,
}

impl Usage {
    pub fn new(format: Format) -> Usage {
        Usage {
            format,
            whole: None,
            record: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The answer's next frame: a JSON body's first is held as it is (most answers are one
    /// frame), copied aside only when another comes.
    pub fn feed_frame(&mut self, data: &Bytes) {
        if self.format == Format::Sse {
            return self.feed(data);
        }
        if self.whole.is_none() && self.record.is_empty() && data.len() <= MAX_RECORD {
            self.whole = Some(data.clone());
            return;
        }
        if let Some(first) = self.whole.take() {
            self.keep(&first);
        }
        self.keep(data);
    }

    /// The next bytes of the answer.
    pub fn feed(&mut self, data: &[u8]) {
        if self.format == Format::Json {
            self.keep(data);
            return;
        }
        let mut rest = data;
        if self.record.is_empty() {
            // No line began before these bytes. A line can hold a report only where a usage
            // key has an object for its value (OpenAI marks every chunk `"usage":null` when
            // the usage chunk is asked for): the lines before the first such key are skipped,
            // and without one only a line left unfinished is kept, for the bytes that end it.
            // One search, not one a line.
            match KEY.find_iter(data).find(|&at| may_report(&data[at..])) {
                Some(at) => {
                    rest = memchr::memrchr(b'\n', &data[..at]).map_or(data, |nl| &data[nl + 1..]);
                }
                None => {
                    let unfinished =
                        memchr::memrchr(b'\n', data).map_or(data, |nl| &data[nl + 1..]);
                    self.keep(unfinished);
                    return;
                }
            }
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let line = &rest[..nl];
            if self.record.is_empty() {
                self.read(line);
            } else {
                self.keep(line);
                let record = std::mem::take(&mut self.record);
                self.read(&record);
                self.record = record;
                self.record.clear();
            }
            rest = &rest[nl + 1..];
        }
        self.keep(rest);
    }

    /// The answer ended (however it ended): the tokens it reported. An SSE line cut short is
    /// not read (its JSON would not parse).
    pub fn finish(&mut self) -> u64 {
        if let Some(whole) = self.whole.take() {
            self.read(&whole);
        } else if self.format == Format::Json {
            let record = std::mem::take(&mut self.record);
            self.read(&record);
        }
        self.record = Vec::new();
        self.counts.tokens()
    }

    /// Add to the record in progress, keeping at most [`MAX_RECORD`] bytes: past it, its last
    /// [`TAIL`] bytes.
    fn keep(&mut self, bytes: &[u8]) {
        if self.record.len() + bytes.len() <= MAX_RECORD {
            self.record.extend_from_slice(bytes);
        } else if bytes.len() >= TAIL {
            self.record.clear();
            self.record.extend_from_slice(&bytes[bytes.len() - TAIL..]);
        } else {
            let excess = self.record.len() + bytes.len() - TAIL;
            self.record.drain(..excess);
            self.record.extend_from_slice(bytes);
        }
    }

    fn read(&mut self, record: &[u8]) {
        if let Some(r) = last_report(record) {
            self.counts.merge(&r);
        }
    }
}

/// What both usage keys start with, searched for forward (most records have neither); the
/// searcher is built once: building one costs more than searching a small answer.
static KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage"));

/// Whether the `"usage` found at the start of `found` may begin a report: a `"usage"` or
/// `"usageMetadata"` key whose value is an object, or bytes that end before that is known (a
/// key the frame cuts is in its unfinished line, which is kept and read whole later).
fn may_report(found: &[u8]) -> bool {
    let Some((_, len)) = usage_key(found) else {
        // Another key (`"usage_bytes"`), unless the bytes end inside the key's name.
        return b"Metadata\"".starts_with(&found[6..]);
    };
    let after = &found[len..];
    match value_of(after) {
        Some(v) => v.first().is_none_or(|&b| b == b'{'),
        None => after.trim_ascii_start().is_empty(),
    }
}

/// Which of the two usage keys.
enum UsageKey {
    Usage,
    Metadata,
}

/// The usage key a `"usage` found at the start of `found` begins, and its length through its
/// closing quote; `None` for another key (or bytes that end inside the name).
fn usage_key(found: &[u8]) -> Option<(UsageKey, usize)> {
    let rest = &found[6..];
    if rest.starts_with(b"\"") {
        Some((UsageKey::Usage, 7))
    } else if rest.starts_with(b"Metadata\"") {
        Some((UsageKey::Metadata, 15))
    } else {
        None
    }
}

/// A key's value: what follows its closing quote, past blanks, the `:` and blanks; `None`
/// without the `:`.
fn value_of(after_key: &[u8]) -> Option<&[u8]> {
    Some(
        after_key
            .trim_ascii_start()
            .strip_prefix(b":")?
            .trim_ascii_start(),
    )
}

/// The usage object of the last `"usage"` or `"usageMetadata"` key in `record`. Inside a JSON
/// string a quote is escaped, so these bytes only ever match a key.
fn last_report(record: &[u8]) -> Option<Reported> {
    let (mut usage, mut metadata) = (None, None);
    for at in KEY.find_iter(record) {
        match usage_key(&record[at..]) {
            Some((UsageKey::Usage, len)) => usage = Some(at + len),
            Some((UsageKey::Metadata, len)) => metadata = Some(at + len),
            None => {}
        }
    }
    if usage.is_none() && metadata.is_none() {
        return None;
    }
    let [usage, metadata] =
        [usage, metadata].map(|end| end.and_then(|end| Some(end).zip(value_after(&record[end..]))));
    match (usage, metadata) {
        (Some((a, r)), Some((b, _))) if a > b => Some(r),
        (_, Some((_, r))) | (Some((_, r)), None) => Some(r),
        (None, None) => None,
    }
}

/// The object after a key's closing quote (`: {...}`), ignoring whatever follows it.
fn value_after(rest: &[u8]) -> Option<Reported> {
    let rest = value_of(rest)?;
    if !rest.starts_with(b"{") {
        return None;
    }
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Reported>();
    values.next()?.ok()
}

/// What to do with the tokens once the answer has ended.
pub type Then = Box<dyn FnOnce(u64) + Send + Sync>;

/// A scanner and what to do with its count: given the count once, when dropped (the body it
/// reads ended, however it ended).
pub struct Meter {
    usage: Usage,
    then: Option<Then>,
}

impl Meter {
    pub fn new(format: Format, then: Then) -> Meter {
        Meter {
            usage: Usage::new(format),
            then: Some(then),
        }
    }

    /// Read the answer as `format` (before any byte of it is fed).
    pub fn set_format(&mut self, format: Format) {
        self.usage = Usage::new(format);
    }

    pub fn feed(&mut self, data: &Bytes) {
        self.usage.feed_frame(data);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let tokens = self.usage.finish();
        if let Some(then) = self.then.take() {
            then(tokens);
        }
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
