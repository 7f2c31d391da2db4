//! Faults the mock injects, chosen per key (`MockUpstream::set(key, Reply::Fault(..))`) or per
//! request (the `x-mock-fault` header), in one syntax: `name` or `name=argument`.
//!
//! | fault                  | what the client of the mock sees                                      |
//! |------------------------|------------------------------------------------------------------------|
//! | `status=N`             | status N with a provider-style JSON error, every time                  |
//! | `status-once=N`        | status N for the key's first request, then normal answers (per key)   |
//! | `429` / `429=S`        | 429, without a hint / with `Retry-After: S`                             |
//! | `forbidden=/prefix`    | 403 `permission_error` on paths under the prefix, normal elsewhere    |
//! | `gemini-invalid-key`   | 400 with Gemini's `API_KEY_INVALID` reason                              |
//! | `reset`                | the connection reset (RST) before the head, the body unread            |
//! | `drop-after-body`      | the whole body read, then the connection closed with no answer         |
//! | `hang`                 | no answer at all, until the client gives up                             |
//! | `slow-head=MS`         | the head after MS milliseconds                                         |
//! | `stall-after=N`        | a stream that stops sending after N chunks, connection kept open       |
//! | `fin-after=N`          | a stream cut after N chunks, the connection closed (FIN)               |
//! | `rst-after=N`          | a stream cut after N chunks, the connection reset (RST)                |
//! | `malformed-after=N`    | chunk N+1 is not JSON, then the stream goes on                          |
//! | `no-done`              | a complete stream without its final `[DONE]`                            |
//! | `error-event-after=N`  | an `event: error` after N chunks, then the stream ends                  |
//! | `redirect=URL`         | 302 to URL                                                               |

use std::time::Duration;

/// One fault; see the module table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    StatusOnce(u16),
    RateLimited { retry_after: Option<u64> },
    Forbidden { path_prefix: String },
    GeminiInvalidKey,
    Reset,
    DropAfterBody,
    Hang,
    SlowHead(Duration),
    StallAfter(u64),
    FinAfter(u64),
    RstAfter(u64),
    MalformedAfter(u64),
    NoDone,
    ErrorEventAfter(u64),
    Redirect(String),
}

impl Fault {
    /// Parse `name` or `name=argument`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Fault> {
        let (name, arg) = match text.trim().split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (text.trim(), None),
        };
        let num = || arg.and_then(|a| a.parse::<u64>().ok());
        let status = || arg.and_then(|a| a.parse::<u16>().ok());
        Some(match (name, arg) {
            ("status", _) => Fault::Status(status()?),
            ("status-once", _) => Fault::StatusOnce(status()?),
            ("429", None) => Fault::RateLimited { retry_after: None },
            ("429", Some(_)) => Fault::RateLimited {
                retry_after: Some(num()?),
            },
            ("forbidden", Some(prefix)) => Fault::Forbidden {
                path_prefix: prefix.to_owned(),
            },
            ("gemini-invalid-key", None) => Fault::GeminiInvalidKey,
            ("reset", None) => Fault::Reset,
            ("drop-after-body", None) => Fault::DropAfterBody,
            ("hang", None) => Fault::Hang,
            ("slow-head", _) => Fault::SlowHead(Duration::from_millis(num()?)),
            ("stall-after", _) => Fault::StallAfter(num()?),
            ("fin-after", _) => Fault::FinAfter(num()?),
            ("rst-after", _) => Fault::RstAfter(num()?),
            ("malformed-after", _) => Fault::MalformedAfter(num()?),
            ("no-done", None) => Fault::NoDone,
            ("error-event-after", _) => Fault::ErrorEventAfter(num()?),
            ("redirect", Some(url)) if !url.is_empty() => Fault::Redirect(url.to_owned()),
            _ => return None,
        })
    }

    /// How a normal SSE stream is bent by this fault, if it is a stream fault.
    pub(crate) fn stream_shape(&self) -> Option<StreamFault> {
        Some(match self {
            Fault::StallAfter(n) => StreamFault::Stall(*n),
            Fault::FinAfter(n) => StreamFault::Cut {
                after: *n,
                rst: false,
            },
            Fault::RstAfter(n) => StreamFault::Cut {
                after: *n,
                rst: true,
            },
            Fault::MalformedAfter(n) => StreamFault::Malformed(*n),
            Fault::NoDone => StreamFault::NoDone,
            Fault::ErrorEventAfter(n) => StreamFault::ErrorEvent(*n),
            _ => return None,
        })
    }
}

/// The stream faults, as the SSE body applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamFault {
    Stall(u64),
    Cut { after: u64, rst: bool },
    Malformed(u64),
    NoDone,
    ErrorEvent(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_parses() {
        assert_eq!(Fault::parse("status=503"), Some(Fault::Status(503)));
        assert_eq!(
            Fault::parse("status-once=500"),
            Some(Fault::StatusOnce(500))
        );
        assert_eq!(
            Fault::parse("429"),
            Some(Fault::RateLimited { retry_after: None })
        );
        assert_eq!(
            Fault::parse("429=20"),
            Some(Fault::RateLimited {
                retry_after: Some(20)
            })
        );
        assert_eq!(
            Fault::parse("forbidden=/v1/fine_tuning"),
            Some(Fault::Forbidden {
                path_prefix: "/v1/fine_tuning".into()
            })
        );
        assert_eq!(
            Fault::parse("gemini-invalid-key"),
            Some(Fault::GeminiInvalidKey)
        );
        assert_eq!(Fault::parse("reset"), Some(Fault::Reset));
        assert_eq!(Fault::parse("drop-after-body"), Some(Fault::DropAfterBody));
        assert_eq!(Fault::parse("hang"), Some(Fault::Hang));
        assert_eq!(
            Fault::parse("slow-head=250"),
            Some(Fault::SlowHead(Duration::from_millis(250)))
        );
        assert_eq!(Fault::parse("stall-after=3"), Some(Fault::StallAfter(3)));
        assert_eq!(Fault::parse("fin-after=3"), Some(Fault::FinAfter(3)));
        assert_eq!(Fault::parse("rst-after=3"), Some(Fault::RstAfter(3)));
        assert_eq!(
            Fault::parse("malformed-after=1"),
            Some(Fault::MalformedAfter(1))
        );
        assert_eq!(Fault::parse("no-done"), Some(Fault::NoDone));
        assert_eq!(
            Fault::parse("error-event-after=2"),
            Some(Fault::ErrorEventAfter(2))
        );
        assert_eq!(
            Fault::parse("redirect=http://127.0.0.1:1/x"),
            Some(Fault::Redirect("http://127.0.0.1:1/x".into()))
        );
        for bad in [
            "",
            "status",
            "status=abc",
            "reset=1",
            "forbidden",
            "nope",
            "redirect=",
        ] {
            assert_eq!(Fault::parse(bad), None, "{bad}");
        }
    }
}
