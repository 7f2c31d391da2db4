//! The problem collector: every problem found in a config file, each named by its path.
//!
//! Validation never stops at the first problem. Each section's checker reads its raw values
//! through the helpers here, which note a problem and hand back a placeholder, so one load
//! reports everything wrong with a file at once.

use super::duration::parse_duration;
use super::secrets::{resolve, Env};
use keyrelay_pool::Secret;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// One problem in a config file, named by its path (`providers[1].keys[0].secret`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file, in the order they were found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problems):", self.0.len())?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl Problems {
    /// A list of one problem.
    pub(super) fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        let mut p = Problems::default();
        p.add(path, message);
        p
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// Whether any problem's text contains `needle` (for tests and tooling).
    pub fn mentions(&self, needle: &str) -> bool {
        self.0.iter().any(|p| p.to_string().contains(needle))
    }

    /// Note a problem at `path`.
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `value` as a duration with a unit, or `default` when absent.
    pub(super) fn duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        parse_duration(text).unwrap_or_else(|e| {
            self.add(path, e);
            Duration::ZERO
        })
    }

    /// `value` as a whole number from 1 to `u32::MAX`, or `default` when absent.
    pub(super) fn positive(&mut self, path: &str, value: Option<i64>, default: u32) -> u32 {
        let Some(v) = value else { return default };
        match u32::try_from(v) {
            Ok(n) if n > 0 => n,
            _ => {
                let max = u32::MAX;
                self.add(
                    path,
                    format!("must be a whole number from 1 to {max}, got {v}"),
                );
                1
            }
        }
    }

    /// `value` as a whole number from 0 to `max`, or `default` when absent.
    pub(super) fn whole(&mut self, path: &str, value: Option<i64>, default: u32, max: u32) -> u32 {
        let Some(v) = value else { return default };
        match u32::try_from(v) {
            Ok(n) if n <= max => n,
            _ => {
                self.add(
                    path,
                    format!("must be a whole number from 0 to {max}, got {v}"),
                );
                0
            }
        }
    }

    /// `value` as a duration of more than zero, or `default` when absent.
    pub(super) fn period(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d.is_zero() && value.is_some_and(|v| parse_duration(v).is_ok()) {
            self.add(path, "must be more than zero");
        }
        d
    }

    /// `value` as a socket address, or `default` when absent (and shown as the example).
    pub(super) fn address(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: SocketAddr,
    ) -> SocketAddr {
        let Some(text) = value else { return default };
        text.parse().unwrap_or_else(|_| {
            self.add(
                path,
                format!("\"{text}\" is not an address like \"{default}\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    /// Resolve a reference that must name exactly one secret.
    pub(super) fn secret(&mut self, path: &str, reference: &str, env: &dyn Env) -> Option<Secret> {
        match resolve(reference, env) {
            Ok(mut v) if v.len() == 1 => Some(v.remove(0).secret),
            Ok(_) => {
                self.add(path, "names one value; a glob is not allowed here");
                None
            }
            Err(e) => {
                self.add(path, e);
                None
            }
        }
    }
}
