//! Where registered keys are kept, sealed: the store's Redis (one hash, and a version counter
//! every change bumps so instances notice with one GET), or, with no `[store]`, a local file
//! (written whole to a temporary file and renamed, readable by its owner only). Keys from the
//! config file are never written here.

use super::conn::Link;
use super::seal::Sealed;
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

const KEYS: &str = "keyrelay:{registry}:keys";
const TENANTS: &str = "keyrelay:{registry}:tenants";
const VERSION: &str = "keyrelay:{registry}:version";

/// A tenant created at run time: its name and the SHA-256 digests (hex) of its client token and
/// its admin token (the tokens themselves are shown once, when it is created, and kept nowhere).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    pub client_digest: String,
    pub admin_digest: String,
}

/// Everything the store holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stored {
    #[serde(default)]
    pub keys: Vec<Record>,
    #[serde(default)]
    pub tenants: Vec<TenantRecord>,
}

/// One registered key as stored: where it belongs, its limit, group and fingerprint, and its
/// secret sealed (never in the clear; the seal binds tenant, name and group).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub tenant: String,
    pub name: String,
    pub provider: String,
    pub rpm: u32,
    /// Tokens per sliding minute; absent in records written before `tpm` existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// The key group it serves in; absent in records written before groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub fingerprint: String,
    pub sealed: Sealed,
}

impl Record {
    fn field(tenant: &str, name: &str) -> String {
        format!("{tenant}/{name}")
    }
}

/// The backing store of registered keys.
pub enum Records {
    Redis(Link),
    File {
        path: PathBuf,
        /// One writer at a time in this process.
        lock: tokio::sync::Mutex<()>,
    },
}

type Result<T> = std::result::Result<T, String>;

/// A hash's fields and values.
type Fields = Vec<(String, String)>;

impl Records {
    /// A mark that changes whenever the records do.
    pub async fn version(&self) -> Result<String> {
        match self {
            Records::Redis(link) => {
                let mut c = link.get().await.ok_or("Redis unreachable")?;
                let v: Option<u64> = c
                    .query(&redis::cmd("GET").arg(VERSION).to_owned())
                    .await
                    .map_err(|e| format!("{:?}", e.kind()))?;
                Ok(v.unwrap_or(0).to_string())
            }
            Records::File { path, .. } => Ok(match std::fs::metadata(path) {
                Ok(m) => format!("{:?}:{}", m.modified().ok(), m.len()),
                Err(_) => "none".to_owned(),
            }),
        }
    }

    /// Every registered key.
    pub async fn all(&self) -> Result<Vec<Record>> {
        Ok(self.everything().await?.keys)
    }

    /// Every registered key and runtime tenant.
    pub async fn everything(&self) -> Result<Stored> {
        match self {
            Records::Redis(link) => {
                let mut c = link.get().await.ok_or("Redis unreachable")?;
                let mut p = redis::pipe();
                p.hgetall(KEYS).hgetall(TENANTS);
                let (keys, tenants): (Fields, Fields) =
                    c.pipe(&p).await.map_err(|e| format!("{:?}", e.kind()))?;
                let parse = |v: &String| serde_json::from_str(v).ok();
                Ok(Stored {
                    keys: keys.iter().filter_map(|(_, v)| parse(v)).collect(),
                    tenants: tenants
                        .iter()
                        .filter_map(|(_, v)| serde_json::from_str(v).ok())
                        .collect(),
                })
            }
            Records::File { path, .. } => read_file(path),
        }
    }

    /// Add a runtime tenant; `false` when one of its name exists.
    pub async fn add_tenant(&self, t: &TenantRecord) -> Result<bool> {
        let json = serde_json::to_string(t).map_err(|e| e.to_string())?;
        match self {
            Records::Redis(link) => {
                let mut c = link.get().await.ok_or("Redis unreachable")?;
                let mut p = redis::pipe();
                p.atomic().hset_nx(TENANTS, &t.name, json).incr(VERSION, 1);
                let (added, _): (bool, u64) =
                    c.pipe(&p).await.map_err(|e| format!("{:?}", e.kind()))?;
                Ok(added)
            }
            Records::File { path, lock } => {
                let _one = lock.lock().await;
                let mut all = read_file(path)?;
                if all.tenants.iter().any(|o| o.name == t.name) {
                    return Ok(false);
                }
                all.tenants.push(t.clone());
                write_file(path, &all).map(|()| true)
            }
        }
    }

    /// Remove a runtime tenant and every key registered for it; whether it existed.
    pub async fn remove_tenant(&self, name: &str) -> Result<bool> {
        let keys: Vec<String> = self
            .all()
            .await?
            .into_iter()
            .filter(|r| r.tenant == name)
            .map(|r| Record::field(&r.tenant, &r.name))
            .collect();
        match self {
            Records::Redis(link) => {
                let mut c = link.get().await.ok_or("Redis unreachable")?;
                let mut p = redis::pipe();
                p.atomic().hdel(TENANTS, name).ignore();
                for k in &keys {
                    p.hdel(KEYS, k).ignore();
                }
                p.incr(VERSION, 1).ignore();
                c.pipe::<()>(&p)
                    .await
                    .map_err(|e| format!("{:?}", e.kind()))?;
                Ok(true)
            }
            Records::File { path, lock } => {
                let _one = lock.lock().await;
                let mut all = read_file(path)?;
                let before = all.tenants.len();
                all.tenants.retain(|t| t.name != name);
                all.keys.retain(|r| r.tenant != name);
                write_file(path, &all)?;
                Ok(before != all.tenants.len())
            }
        }
    }

    /// Add or replace `record`.
    pub async fn put(&self, record: &Record) -> Result<()> {
        let json = serde_json::to_string(record).map_err(|e| e.to_string())?;
        match self {
            Records::Redis(link) => {
                let mut c = link.get().await.ok_or("Redis unreachable")?;
                let field = Record::field(&record.tenant, &record.name);
                let mut p = redis::pipe();
                p.atomic().hset(KEYS, field, json).incr(VERSION, 1);
                c.pipe::<()>(&p)
                    .await
                    .map_err(|e| format!("{:?}", e.kind()))
            }
            Records::File { path, lock } => {
                let _one = lock.lock().await;
                let mut all = read_file(path)?;
                all.keys
                    .retain(|r| !(r.tenant == record.tenant && r.name == record.name));
                all.keys.push(record.clone());
                write_file(path, &all)
            }
        }
    }

    /// Remove `tenant`'s key `name`; whether there was one.
    pub async fn remove(&self, tenant: &str, name: &str) -> Result<bool> {
        match self {
            Records::Redis(link) => {
                let mut c = link.get().await.ok_or("Redis unreachable")?;
                let mut p = redis::pipe();
                p.atomic()
                    .hdel(KEYS, Record::field(tenant, name))
                    .incr(VERSION, 1);
                let (gone, _): (u32, u64) =
                    c.pipe(&p).await.map_err(|e| format!("{:?}", e.kind()))?;
                Ok(gone > 0)
            }
            Records::File { path, lock } => {
                let _one = lock.lock().await;
                let mut all = read_file(path)?;
                let before = all.keys.len();
                all.keys.retain(|r| !(r.tenant == tenant && r.name == name));
                write_file(path, &all)?;
                Ok(all.keys.len() != before)
            }
        }
    }
}

fn read_file(path: &PathBuf) -> Result<Stored> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Write every record to a temporary file beside `path`, owner-only, then rename it over.
fn write_file(path: &PathBuf, all: &Stored) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(all).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
