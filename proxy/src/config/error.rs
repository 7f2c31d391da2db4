//! [`ConfigError`]: why a config could not be loaded, keeping the cause.

use super::problems::Problems;
use std::path::PathBuf;

/// Why loading a config failed. Every variant prints as the list of problems users see
/// (`invalid configuration (N problems):` then one `  - path: message` line each).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.problems())]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not TOML, or not the shape of a config.
    Parse(#[source] toml::de::Error),
    /// The config parsed but is not valid: every problem, each with its path.
    Invalid(Problems),
}

impl ConfigError {
    /// Every problem, each with its path; a read or parse failure is one problem with no path.
    pub fn problems(&self) -> Problems {
        match self {
            ConfigError::Read { path, source } => {
                Problems::one("", format!("cannot read {}: {source}", path.display()))
            }
            ConfigError::Parse(e) => Problems::one(
                "",
                format!("not valid config TOML: {}", e.to_string().trim()),
            ),
            ConfigError::Invalid(problems) => problems.clone(),
        }
    }

    /// Whether any problem's text contains `needle` (for tests and tooling).
    pub fn mentions(&self, needle: &str) -> bool {
        self.problems().mentions(needle)
    }
}
