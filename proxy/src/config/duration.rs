//! Durations written with units in the config: `"30s"`, `"250ms"`, `"10m"`, `"1h"`, `"1m30s"`.

use std::time::Duration;

/// A duration with a unit. A bare number is refused, so `timeout = "30"` cannot silently mean
/// thirty of the wrong thing.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.parse::<f64>().is_ok() {
        return Err(format!(
            "\"{t}\" needs a unit, e.g. \"{t}s\" or \"{t}ms\" (units: ms, s, m, h)"
        ));
    }
    keyrelay_pool::parse_go_duration(t)
        .ok_or_else(|| format!("\"{t}\" is not a duration (e.g. \"30s\", \"250ms\", \"5m\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_required() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("30").is_err_and(|e| e.contains("needs a unit")));
        assert!(parse_duration("soon").is_err());
    }
}
