//! Reading a key's mark as status.lua returns it (`<until_ms>|<kind>|<since_ms>|<reason>`, or
//! from before `since_ms` was stored, `<until_ms>|<kind>|<reason>`) into a mode.

use crate::store::KeyMode;
use std::time::Duration;

/// A mark as stored, `<until_ms>|<kind>|<since_ms>|<reason>`, with `left_ms` still to run. No mark (``),
/// one that has run out, and anything unreadable read as ready; reasons outside the known set
/// read as `other`, so a label never carries free text.
pub(super) fn mode_of(mark: &str, left_ms: u64) -> KeyMode {
    let mut parts = mark.splitn(3, '|');
    let (_, kind, rest) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    // The since_ms part, when there is one, is digits before the reason.
    let reason = match rest.split_once('|') {
        Some((since, reason)) if !since.is_empty() && since.bytes().all(|b| b.is_ascii_digit()) => {
            reason
        }
        _ => rest,
    };
    let reason: &'static str = match reason {
        "rate_limited" => "rate_limited",
        "unauthorized" => "unauthorized",
        "manual" => "manual",
        _ => "other",
    };
    let remaining = Duration::from_millis(left_ms);
    match kind {
        Some("disabled") => KeyMode::Disabled,
        Some("cooling") if left_ms > 0 => KeyMode::Cooling { remaining, reason },
        Some("quarantined") if left_ms > 0 => KeyMode::Quarantined { remaining, reason },
        _ => KeyMode::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_in_force_read_as_their_mode() {
        assert_eq!(
            mode_of("1700000030000|cooling|rate_limited", 30_000),
            KeyMode::Cooling {
                remaining: Duration::from_secs(30),
                reason: "rate_limited"
            }
        );
        assert_eq!(
            mode_of("1700000600000|quarantined|unauthorized", 600_000),
            KeyMode::Quarantined {
                remaining: Duration::from_secs(600),
                reason: "unauthorized"
            }
        );
        // A disable has no end: it holds whatever the time left says.
        assert_eq!(mode_of("0|disabled|manual", 0), KeyMode::Disabled);
        assert_eq!(
            mode_of("0|disabled|1700000000000|manual", 0),
            KeyMode::Disabled
        );
        // With the time it was set, as mark.lua writes it now.
        assert_eq!(
            mode_of("1700000030000|cooling|1700000000000|rate_limited", 30_000),
            KeyMode::Cooling {
                remaining: Duration::from_secs(30),
                reason: "rate_limited"
            }
        );
    }

    #[test]
    fn no_mark_a_spent_mark_or_garbage_reads_as_ready() {
        assert_eq!(mode_of("", 0), KeyMode::Ready);
        assert_eq!(
            mode_of("1700000030000|cooling|rate_limited", 0),
            KeyMode::Ready
        );
        assert_eq!(
            mode_of("1700000600000|quarantined|unauthorized", 0),
            KeyMode::Ready
        );
        assert_eq!(mode_of("garbage", 5_000), KeyMode::Ready);
        assert_eq!(mode_of("5|frozen|manual", 5_000), KeyMode::Ready);
    }

    #[test]
    fn an_unknown_reason_reads_as_other() {
        assert_eq!(
            mode_of("1|cooling|sk-live-secret-looking-text", 1_000),
            KeyMode::Cooling {
                remaining: Duration::from_secs(1),
                reason: "other"
            }
        );
        // A reason with the separator in it stays one reason.
        assert_eq!(
            mode_of("1|cooling|rate_limited|extra", 1_000),
            KeyMode::Cooling {
                remaining: Duration::from_secs(1),
                reason: "other"
            }
        );
    }
}
