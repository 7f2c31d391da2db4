//! The `[server]` and `[upstream]` sections: the proxy listener and the timeouts towards
//! providers.

use super::problems::Problems;
use super::raw::{RawServer, RawUpstream};
use super::secrets::Env;
use super::{defaults, ServerConfig, UpstreamConfig};

pub(super) fn server(s: &RawServer, env: &dyn Env, p: &mut Problems) -> ServerConfig {
    let listen = p.address("server.listen", s.listen.as_deref(), defaults::LISTEN);
    let max_body_bytes = max_body_bytes(s.max_body_bytes, p);
    let header_read_timeout = p.duration(
        "server.header_read_timeout",
        s.header_read_timeout.as_deref(),
        defaults::HEADER_READ_TIMEOUT,
    );
    let shutdown_grace = p.duration(
        "server.shutdown_grace",
        s.shutdown_grace.as_deref(),
        defaults::SHUTDOWN_GRACE,
    );
    let tls = super::tls::tls(s.tls_cert.as_deref(), s.tls_key.as_deref(), env, p);
    ServerConfig {
        listen,
        max_body_bytes,
        header_read_timeout,
        allow_unauthenticated: s
            .allow_unauthenticated
            .unwrap_or(defaults::ALLOW_UNAUTHENTICATED),
        shutdown_grace,
        tls,
    }
}

fn max_body_bytes(value: Option<i64>, p: &mut Problems) -> usize {
    let Some(n) = value else {
        return defaults::MAX_BODY_BYTES;
    };
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            p.add(
                "server.max_body_bytes",
                format!("must be a positive size in bytes, got {n}"),
            );
            0
        })
}

pub(super) fn upstream(u: &RawUpstream, p: &mut Problems) -> UpstreamConfig {
    UpstreamConfig {
        connect_timeout: p.duration(
            "upstream.connect_timeout",
            u.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
        ),
        first_byte_timeout: p.duration(
            "upstream.first_byte_timeout",
            u.first_byte_timeout.as_deref(),
            defaults::FIRST_BYTE_TIMEOUT,
        ),
        idle_timeout: p.duration(
            "upstream.idle_timeout",
            u.idle_timeout.as_deref(),
            defaults::IDLE_TIMEOUT,
        ),
    }
}
