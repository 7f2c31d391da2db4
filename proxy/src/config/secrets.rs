//! Resolving secret references: `env:NAME`, `env:PREFIX_*` and `file:PATH`. Literals are refused.

use keyrelay_pool::Secret;
use std::collections::BTreeMap;

/// Where `env:` references are looked up. The process environment in production; a map in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable, for `env:PREFIX_*`.
    fn vars(&self) -> Vec<(String, String)>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

/// A fixed environment, for tests and embedding.
#[derive(Clone, Debug, Default)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A resolved secret and the name it suggests for its key (the variable or file name).
#[derive(Debug)]
pub(super) struct Resolved {
    pub name: String,
    pub secret: Secret,
}

/// Resolve one reference into one or more secrets (a glob gives one per variable, sorted).
/// The error never includes the reference's value if it looks like a literal secret.
pub(super) fn resolve(reference: &str, env: &dyn Env) -> Result<Vec<Resolved>, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return match name.strip_suffix('*') {
            Some(prefix) => env_glob(name, prefix, env),
            None => env_var(name, env).map(|r| vec![r]),
        };
    }
    if let Some(path) = reference.strip_prefix("file:") {
        return file(path).map(|r| vec![r]);
    }
    Err("literal secrets are not allowed in the config; use \"env:NAME\", \"env:PREFIX_*\" or \"file:PATH\"".into())
}

/// `env:PREFIX_*`: every non-empty variable with the prefix, sorted by name.
fn env_glob(name: &str, prefix: &str, env: &dyn Env) -> Result<Vec<Resolved>, String> {
    if prefix.is_empty() {
        return Err("env:* would take every variable; give a prefix".into());
    }
    let mut vars: Vec<(String, String)> = env
        .vars()
        .into_iter()
        .filter(|(k, v)| k.starts_with(prefix) && !v.trim().is_empty())
        .collect();
    vars.sort();
    if vars.is_empty() {
        return Err(format!("no env var matches {name}"));
    }
    Ok(vars
        .into_iter()
        .map(|(name, value)| Resolved {
            name,
            secret: Secret::new(value.trim()),
        })
        .collect())
}

/// `env:NAME`: one variable, set and not blank.
fn env_var(name: &str, env: &dyn Env) -> Result<Resolved, String> {
    if name.is_empty() {
        return Err("env: needs a variable name".into());
    }
    match env.var(name) {
        Some(v) if !v.trim().is_empty() => Ok(Resolved {
            name: name.to_owned(),
            secret: Secret::new(v.trim()),
        }),
        Some(_) => Err(format!("env var {name} is empty")),
        None => Err(format!("env var {name} is not set")),
    }
}

/// `file:PATH`: the file's trimmed text, named after the file.
fn file(path: &str) -> Result<Resolved, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {path}: {}", e.kind()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("secret file {path} is empty"));
    }
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_owned());
    Ok(Resolved {
        name,
        secret: Secret::new(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_sorted_and_named() {
        let env = MapEnv::default()
            .with("K_2", "two")
            .with("K_1", "one")
            .with("OTHER", "x");
        let r = resolve("env:K_*", &env).unwrap_or_default();
        let names: Vec<_> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["K_1", "K_2"]);
        assert_eq!(r[0].secret.expose(), "one");
    }

    #[test]
    fn literal_refused_without_echo() {
        let err = resolve("sk-live-abcdef123456", &MapEnv::default()).unwrap_err();
        assert!(err.contains("literal secrets are not allowed"));
        assert!(!err.contains("abcdef"));
    }

    #[test]
    fn missing_env_named() {
        let err = resolve("env:NOPE", &MapEnv::default()).unwrap_err();
        assert_eq!(err, "env var NOPE is not set");
        let err = resolve("env:NOPE_*", &MapEnv::default()).unwrap_err();
        assert_eq!(err, "no env var matches NOPE_*");
    }
}
