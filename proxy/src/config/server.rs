//! The `[server]` and `[upstream]` sections: the proxy listener and the timeouts towards
//! providers.

use super::problems::Problems;
use super::raw::{RawServer, RawUpstream};
use super::secrets::Env;
use super::{defaults, ServerConfig, UpstreamConfig};

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: u32 = 1024;

pub(super) fn server(s: &RawServer, env: &dyn Env, p: &mut Problems) -> ServerConfig {
    let listen = p.address("server.listen", s.listen.as_deref(), defaults::LISTEN);
    let max_body_bytes = size(
        "server.max_body_bytes",
        s.max_body_bytes,
        defaults::MAX_BODY_BYTES,
        p,
    );
    let bodies = bodies(s, max_body_bytes, p);
    let body_read_timeout = p.period(
        "server.body_read_timeout",
        s.body_read_timeout.as_deref(),
        defaults::BODY_READ_TIMEOUT,
    );
    let header_read_timeout = p.period(
        "server.header_read_timeout",
        s.header_read_timeout.as_deref(),
        defaults::HEADER_READ_TIMEOUT,
    );
    let keepalive_timeout = p.period(
        "server.keepalive_timeout",
        s.keepalive_timeout.as_deref(),
        defaults::KEEPALIVE_TIMEOUT,
    );
    let max_connections = p.positive(
        "server.max_connections",
        s.max_connections,
        defaults::MAX_CONNECTIONS,
    );
    let workers = match s.workers {
        None => crate::workers::default_count(),
        Some(_) => p.whole("server.workers", s.workers, 0, MAX_WORKERS) as usize,
    };
    // Zero is allowed: stop at once, cutting what is in flight.
    let shutdown_grace = p.duration(
        "server.shutdown_grace",
        s.shutdown_grace.as_deref(),
        defaults::SHUTDOWN_GRACE,
    );
    let tls = super::tls::tls(s.tls_cert.as_deref(), s.tls_key.as_deref(), env, p);
    ServerConfig {
        listen,
        max_body_bytes,
        max_buffered_bytes: bodies.max_buffered_bytes,
        replay_memory_bytes: bodies.replay_memory_bytes,
        max_spill_bytes: bodies.max_spill_bytes,
        spill_dir: bodies.spill_dir,
        body_read_timeout,
        header_read_timeout,
        keepalive_timeout,
        max_connections,
        workers,
        allow_unauthenticated: s
            .allow_unauthenticated
            .unwrap_or(defaults::ALLOW_UNAUTHENTICATED),
        shutdown_grace,
        tls,
    }
}

/// The fields about holding request bodies, in memory and on disk.
struct Bodies {
    max_buffered_bytes: usize,
    replay_memory_bytes: usize,
    max_spill_bytes: usize,
    spill_dir: std::path::PathBuf,
}

/// `replay_memory_bytes` (at most `max_body_bytes`; unset, the default or `max_body_bytes`
/// when smaller), `max_buffered_bytes` (room for at least one such body), `max_spill_bytes`
/// (zero: never spill) and `spill_dir` (made ready here: created 0700 when missing, owned by
/// us, writable by no one else).
fn bodies(s: &RawServer, max_body_bytes: usize, p: &mut Problems) -> Bodies {
    let replay_memory_bytes = match s.replay_memory_bytes {
        None => defaults::REPLAY_MEMORY_BYTES.min(max_body_bytes),
        Some(_) => size(
            "server.replay_memory_bytes",
            s.replay_memory_bytes,
            defaults::REPLAY_MEMORY_BYTES,
            p,
        ),
    };
    if max_body_bytes > 0 && replay_memory_bytes > max_body_bytes {
        p.add(
            "server.replay_memory_bytes",
            format!("must be at most server.max_body_bytes ({max_body_bytes}), got {replay_memory_bytes}"),
        );
    }
    let max_buffered_bytes = size(
        "server.max_buffered_bytes",
        s.max_buffered_bytes,
        defaults::MAX_BUFFERED_BYTES,
        p,
    );
    let in_memory = replay_memory_bytes.min(max_body_bytes);
    if max_buffered_bytes > 0 && max_buffered_bytes < in_memory {
        p.add(
            "server.max_buffered_bytes",
            format!("must be at least what one body may hold in memory (server.replay_memory_bytes, or server.max_body_bytes when smaller: {in_memory}), got {max_buffered_bytes}"),
        );
    }
    let max_spill_bytes = match s.max_spill_bytes {
        None => defaults::MAX_SPILL_BYTES,
        Some(n) => usize::try_from(n).unwrap_or_else(|_| {
            p.add(
                "server.max_spill_bytes",
                format!("must be a size in bytes (0: never spill), got {n}"),
            );
            0
        }),
    };
    let spill_dir = s
        .spill_dir
        .as_deref()
        .map_or_else(defaults::spill_dir, std::path::PathBuf::from);
    if s.spill_dir.as_deref() == Some("") {
        p.add("server.spill_dir", "must be a directory path");
    } else if let Err(why) = crate::body::spill::prepare_dir(&spill_dir) {
        p.add("server.spill_dir", why);
    }
    Bodies {
        max_buffered_bytes,
        replay_memory_bytes,
        max_spill_bytes,
        spill_dir,
    }
}

/// A positive size in bytes at `path`, or `default` when unset.
fn size(path: &str, value: Option<i64>, default: usize, p: &mut Problems) -> usize {
    let Some(n) = value else {
        return default;
    };
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            p.add(path, format!("must be a positive size in bytes, got {n}"));
            0
        })
}

pub(super) fn upstream(u: &RawUpstream, env: &dyn Env, p: &mut Problems) -> UpstreamConfig {
    UpstreamConfig {
        connect_timeout: p.period(
            "upstream.connect_timeout",
            u.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
        ),
        first_byte_timeout: p.period(
            "upstream.first_byte_timeout",
            u.first_byte_timeout.as_deref(),
            defaults::FIRST_BYTE_TIMEOUT,
        ),
        idle_timeout: p.period(
            "upstream.idle_timeout",
            u.idle_timeout.as_deref(),
            defaults::IDLE_TIMEOUT,
        ),
        pass_headers: pass_headers(u.pass_headers.as_deref().unwrap_or_default(), p),
        forwarded_for: u.forwarded_for.unwrap_or(defaults::FORWARDED_FOR),
        ca: super::upstream_tls::global_ca(u, env, p),
        egress: super::upstream_tls::egress(u, env, p),
    }
}

/// Header names (or `prefix*`) a deployment forwards beyond the built-in allow-list. Client
/// credentials and hop-by-hop headers can never be added.
fn pass_headers(names: &[String], p: &mut Problems) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let name = name.trim().to_ascii_lowercase();
        let bare = name.strip_suffix('*').unwrap_or(&name);
        let valid = !bare.is_empty() && http::HeaderName::from_bytes(bare.as_bytes()).is_ok();
        let forbidden = [
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "api-key",
            "cookie",
            "host",
            "connection",
            "proxy-authorization",
            // keyrelay's own: it names a key group, for keyrelay only.
            "x-keyrelay-group",
        ]
        .iter()
        .any(|f| f.starts_with(bare));
        if !valid {
            p.add(
                format!("upstream.pass_headers[{i}]"),
                format!("\"{name}\" is not a header name"),
            );
        } else if forbidden {
            p.add(
                format!("upstream.pass_headers[{i}]"),
                format!("\"{name}\" may never be forwarded"),
            );
        } else {
            out.push(name);
        }
    }
    out
}
