//! Resolving secret references: `env:NAME`, `env:PREFIX_*` and `file:PATH`. Literals are refused.
//!
//! A `file:` secret that group or others may read (`mode & 0o077 != 0`) is refused, naming the
//! path and the fix (`chmod 600`); a PEM certificate (public by nature) is exempt. Where secrets
//! are mounted world-readable and that cannot be changed (Docker secrets are 0444, Kubernetes
//! secret volumes 0644 by default), the environment variable
//! [`ALLOW_READABLE_SECRETS`]` = 1` lets them load.

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

/// Set to `1` or `true` to load `file:` secrets that group or others may read.
pub const ALLOW_READABLE_SECRETS: &str = "KEYRELAY_ALLOW_READABLE_SECRETS";

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
        let allow = env
            .var(ALLOW_READABLE_SECRETS)
            .is_some_and(|v| matches!(v.trim(), "1" | "true"));
        return file(path, allow).map(|r| vec![r]);
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

/// `file:PATH`: the file's trimmed text, named after the file; refused if others may read it
/// (unless `allow_readable`).
fn file(path: &str, allow_readable: bool) -> Result<Resolved, String> {
    let text = read_small_file(path)?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("secret file {path} is empty"));
    }
    if !allow_readable && !value.starts_with("-----BEGIN CERTIFICATE-----") {
        readable_by_others(path)?;
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

/// The most a `file:` secret may hold: room for a long certificate chain.
const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// A regular file's text, at most [`MAX_SECRET_FILE`] bytes: a device (`/dev/zero`), a FIFO or
/// a huge file would otherwise hang or exhaust the load.
fn read_small_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| format!("cannot read secret file {path}: {}", e.kind());
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(format!("secret file {path} is not a regular file"));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("secret file {path} is larger than 1 MiB"));
    }
    Ok(text)
}

/// Refuse a file whose mode lets group or others read (or write) it.
#[cfg(unix)]
fn readable_by_others(path: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read secret file {path}: {}", e.kind()))?
        .permissions()
        .mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    Err(format!(
        "secret file {path} is open to group or others (mode {:03o}); run `chmod 600 {path}`, \
         or set {ALLOW_READABLE_SECRETS}=1 where secrets are mounted readable and that cannot change",
        mode & 0o777
    ))
}

#[cfg(not(unix))]
fn readable_by_others(_path: &str) -> Result<(), String> {
    Ok(())
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

    #[cfg(unix)]
    #[test]
    fn readable_secret_files_refused_unless_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kr-secret-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "sk-mode-test-secret-0123456789").unwrap();
        let at = format!("file:{}", path.display());
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        set(0o644).unwrap();
        let err = resolve(&at, &MapEnv::default()).unwrap_err();
        assert!(
            err.contains("chmod 600") && err.contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!err.contains("mode-test-secret"), "{err}");
        set(0o640).unwrap();
        assert!(resolve(&at, &MapEnv::default()).is_err());
        let allowed = MapEnv::default().with(ALLOW_READABLE_SECRETS, "1");
        assert_eq!(
            resolve(&at, &allowed).unwrap()[0].secret.expose(),
            "sk-mode-test-secret-0123456789"
        );
        set(0o600).unwrap();
        assert!(resolve(&at, &MapEnv::default()).is_ok());
        set(0o400).unwrap();
        assert!(resolve(&at, &MapEnv::default()).is_ok());
        // A certificate is public: its usual 0644 is fine.
        std::fs::write(
            dir.join("cert"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::set_permissions(dir.join("cert"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(resolve(
            &format!("file:{}", dir.join("cert").display()),
            &MapEnv::default()
        )
        .is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Seen while writing the config fuzz target: `file:/dev/zero` never finished loading.
    #[cfg(unix)]
    #[test]
    fn devices_and_huge_files_are_refused_at_once() {
        let err = resolve("file:/dev/zero", &MapEnv::default()).unwrap_err();
        assert_eq!(err, "secret file /dev/zero is not a regular file");
        let dir = std::env::temp_dir().join(format!("kr-secret-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 1024 * 1024 + 1]).unwrap();
        let err = resolve(&format!("file:{}", big.display()), &MapEnv::default()).unwrap_err();
        assert!(err.ends_with("is larger than 1 MiB"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
