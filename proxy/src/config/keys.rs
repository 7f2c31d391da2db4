//! A provider's `keys` entry: a secret reference or a list of key tables, each checked by path;
//! and `[server] fingerprint_secret`, which keys every key's fingerprint.

use super::problems::Problems;
use super::secrets::{resolve, Env};
use keyrelay_pool::{Account, Fingerprinter, Key};

/// `[server] fingerprint_secret`: keyed fingerprints when set (see `keyrelay_pool::key`), else
/// the slow unkeyed derivation.
pub(super) fn fingerprinter(
    reference: Option<&str>,
    env: &dyn Env,
    p: &mut Problems,
) -> Fingerprinter {
    let Some(reference) = reference else {
        return Fingerprinter::default();
    };
    match p.secret("server.fingerprint_secret", reference, env) {
        Some(s) if s.expose().len() < 16 => {
            p.add(
                "server.fingerprint_secret",
                "too short: use at least 16 random characters (e.g. `openssl rand -hex 32`)",
            );
            Fingerprinter::default()
        }
        Some(s) => Fingerprinter::keyed(s),
        None => Fingerprinter::default(),
    }
}

/// What every key of one provider is built with.
pub(super) struct Keys<'a> {
    pub rpm: u32,
    /// Tokens per sliding minute for each key; `None`: no limit.
    pub tpm: Option<u32>,
    pub weight: u32,
    pub fingerprinter: &'a Fingerprinter,
    pub env: &'a dyn Env,
}

const KEY_FIELDS: [&str; 8] = [
    "name",
    "secret",
    "rpm",
    "tpm",
    "weight",
    "organization",
    "project",
    "group",
];

impl Keys<'_> {
    pub(super) fn list(
        &self,
        value: Option<&toml::Value>,
        path: &str,
        p: &mut Problems,
    ) -> Vec<Key> {
        let path = format!("{path}.keys");
        let mut out = Vec::new();
        let before = p.len();
        match value {
            None => p.add(&path, "missing; e.g. keys = \"env:OPENAI_API_KEY_*\""),
            Some(toml::Value::String(reference)) => {
                self.by_reference(reference, &path, p, &mut out)
            }
            Some(toml::Value::Array(items)) => {
                for (j, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{j}]");
                    match item {
                    toml::Value::String(reference) => {
                        self.by_reference(reference, &item_path, p, &mut out)
                    }
                    toml::Value::Table(t) => {
                        if let Some(k) = self.by_table(t, &item_path, p) {
                            out.push(k);
                        }
                    }
                    _ => p.add(
                        &item_path,
                        "must be a table { name, secret, rpm, tpm, weight, organization, project, group } or a secret reference",
                    ),
                }
                }
            }
            Some(_) => p.add(
                &path,
                "must be a secret reference string or an array of key tables",
            ),
        }
        if out.is_empty() && p.len() == before {
            p.add(&path, "the provider has no keys");
        }
        duplicates(&out, &path, p);
        out
    }

    fn key(&self, name: String, secret: keyrelay_pool::Secret, rpm: u32, weight: u32) -> Key {
        Key::fingerprinted(name, secret, rpm, weight, self.fingerprinter).with_tpm(self.tpm)
    }

    fn by_reference(&self, reference: &str, path: &str, p: &mut Problems, out: &mut Vec<Key>) {
        match resolve(reference, self.env) {
            Ok(resolved) => out.extend(
                resolved
                    .into_iter()
                    .map(|r| self.key(r.name, r.secret, self.rpm, self.weight)),
            ),
            Err(e) => p.add(path, e),
        }
    }

    fn by_table(&self, t: &toml::Table, path: &str, p: &mut Problems) -> Option<Key> {
        for field in t.keys().filter(|f| !KEY_FIELDS.contains(&f.as_str())) {
            p.add(format!("{path}.{field}"), "unknown field");
        }
        let name = match t.get("name") {
            None => None,
            Some(toml::Value::String(n)) if !n.trim().is_empty() => Some(n.trim().to_owned()),
            Some(_) => {
                p.add(format!("{path}.name"), "must be a non-empty string");
                None
            }
        };
        let rpm = number(t, "rpm", path, self.rpm, p);
        let weight = number(t, "weight", path, self.weight, p);
        let tpm = match t.get("tpm") {
            None => self.tpm,
            Some(_) => Some(number(t, "tpm", path, 1, p)),
        };
        let secret_path = format!("{path}.secret");
        let reference = match t.get("secret") {
            Some(toml::Value::String(s)) => s,
            Some(_) => {
                p.add(
                    secret_path,
                    "must be a string like \"env:NAME\" or \"file:PATH\"",
                );
                return None;
            }
            None => {
                p.add(secret_path, "missing; use \"env:NAME\" or \"file:PATH\"");
                return None;
            }
        };
        match resolve(reference, self.env) {
            Ok(mut r) if r.len() == 1 => {
                let r = r.remove(0);
                let key = self.key(name.unwrap_or(r.name), r.secret, rpm, weight);
                let group = group(t.get("group"), &format!("{path}.group"), p);
                Some(
                    key.with_tpm(tpm)
                        .with_account(account(t, path, p))
                        .with_group(group),
                )
            }
            Ok(_) => {
                p.add(
                    secret_path,
                    "a glob names many keys; write keys = \"env:PREFIX_*\" instead",
                );
                None
            }
            Err(e) => {
                p.add(secret_path, e);
                None
            }
        }
    }
}

/// No two keys of a provider may share a name or a secret.
fn duplicates(keys: &[Key], path: &str, p: &mut Problems) {
    for (j, k) in keys.iter().enumerate() {
        if keys[..j].iter().any(|o| o.name == k.name) {
            p.add(path, format!("duplicate key name \"{}\"", k.name));
        }
        if let Some(o) = keys[..j].iter().find(|o| o.secret == k.secret) {
            let message = format!(
                "keys \"{}\" and \"{}\" have the same secret",
                o.name, k.name
            );
            p.add(path, message);
        }
    }
}

/// The OpenAI organization and project a key bills, where its table names them.
fn account(t: &toml::Table, path: &str, p: &mut Problems) -> Account {
    let mut field = |name: &str| match t.get(name) {
        None => None,
        Some(toml::Value::String(v))
            if http::HeaderValue::from_str(v.trim()).is_ok() && !v.trim().is_empty() =>
        {
            Some(v.trim().to_owned())
        }
        Some(_) => {
            p.add(
                format!("{path}.{name}"),
                "must be a non-empty id such as \"org-...\"",
            );
            None
        }
    };
    Account {
        organization: field("organization"),
        project: field("project"),
    }
}

/// A key's or a client's `group`: 1-64 letters, digits, '-' or '_'.
pub(super) fn group(value: Option<&toml::Value>, path: &str, p: &mut Problems) -> Option<String> {
    match value {
        None => None,
        Some(toml::Value::String(g)) if keyrelay_pool::valid_group(g) => Some(g.clone()),
        Some(_) => {
            p.add(path, "must be 1-64 letters, digits, '-' or '_'");
            None
        }
    }
}

/// A key's own `rpm` or `weight`, or the provider's when absent.
fn number(t: &toml::Table, field: &str, path: &str, default: u32, p: &mut Problems) -> u32 {
    let path = format!("{path}.{field}");
    match t.get(field) {
        None => default,
        Some(toml::Value::Integer(n)) => p.positive(&path, Some(*n), default),
        Some(_) => {
            p.add(path, "must be a whole number");
            default
        }
    }
}
