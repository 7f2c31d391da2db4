//! How keyrelay reaches providers beyond their URL: extra CAs to trust (`ca_file`, global in
//! `[upstream]` or per provider), a client certificate per provider (`client_cert` and
//! `client_key`, for mTLS), and the egress proxy (`[upstream] proxy`, or `HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` from the environment). Every PEM is read and
//! checked here, at load, so a bad one is refused at start with its path.

use super::defaults;
use super::problems::Problems;
use super::raw::{RawProvider, RawUpstream};
use super::secrets::Env;
use keyrelay_pool::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::sync::Arc;

/// A client certificate chain and its key, presented to a provider that asks for one.
#[derive(Clone)]
pub struct ClientIdentity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certs", &self.certs.len())
            .field("key", &"*****")
            .finish()
    }
}

/// A provider's own TLS settings; empty when it uses the shared client.
#[derive(Clone, Debug, Default)]
pub struct ProviderTls {
    /// CAs trusted for this provider on top of the system, bundled and `[upstream]` ones.
    pub ca: Vec<CertificateDer<'static>>,
    pub identity: Option<ClientIdentity>,
}

impl ProviderTls {
    /// Whether the provider needs a client of its own.
    pub fn is_custom(&self) -> bool {
        !self.ca.is_empty() || self.identity.is_some()
    }
}

/// Where upstream connections go: straight to the provider, or through an HTTP proxy (a
/// CONNECT tunnel for every upstream, `http://` and `https://` alike).
#[derive(Clone, Debug, Default)]
pub struct Egress {
    /// The proxy for `http://` upstreams: a URL that may carry `user:password@`, so secret.
    pub http: Option<Secret>,
    /// The proxy for `https://` upstreams.
    pub https: Option<Secret>,
    /// Comma-separated hosts, domain suffixes, IPs, networks or `*` reached directly.
    pub no_proxy: String,
    /// Where the proxy settings came from, for the start-up log.
    pub from: EgressSource,
    /// Whether `HTTPS_PROXY` and friends were to be honoured (`use_env_proxy`).
    pub use_env_proxy: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressSource {
    /// No proxy: `use_env_proxy = false`, or nothing set.
    #[default]
    None,
    /// `[upstream] proxy`.
    Config,
    /// `HTTPS_PROXY` and friends (`use_env_proxy = true`).
    Environment,
}

/// `[upstream] ca_file`: CAs every provider is trusted by.
pub(super) fn global_ca(
    u: &RawUpstream,
    env: &dyn Env,
    p: &mut Problems,
) -> Vec<CertificateDer<'static>> {
    u.ca_file
        .as_deref()
        .map(|r| ca("upstream.ca_file", r, env, p))
        .unwrap_or_default()
}

/// A provider's `ca_file`, `client_cert` and `client_key`.
pub(super) fn provider(
    rp: &RawProvider,
    path: &str,
    env: &dyn Env,
    p: &mut Problems,
) -> ProviderTls {
    let ca = rp
        .ca_file
        .as_deref()
        .map(|r| ca(&format!("{path}.ca_file"), r, env, p))
        .unwrap_or_default();
    let identity = identity(
        rp.client_cert.as_deref(),
        rp.client_key.as_deref(),
        path,
        env,
        p,
    );
    ProviderTls { ca, identity }
}

/// The certificates in the PEM at `reference`, each one usable as a trust anchor.
fn ca(
    path: &str,
    reference: &str,
    env: &dyn Env,
    p: &mut Problems,
) -> Vec<CertificateDer<'static>> {
    let Some(pem) = p.secret(path, reference, env) else {
        return Vec::new();
    };
    let certs = match certificates(pem.expose()) {
        Ok(c) => c,
        Err(e) => {
            p.add(path, e);
            return Vec::new();
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        if let Err(e) = roots.add(cert.clone()) {
            p.add(
                path,
                format!("certificate {} is not a usable CA certificate: {e}", i + 1),
            );
        }
    }
    certs
}

/// Every certificate in a PEM text; a malformed block or none at all is refused.
fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// `client_cert` and `client_key` together, the key matching the certificate.
fn identity(
    cert: Option<&str>,
    key: Option<&str>,
    path: &str,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<ClientIdentity> {
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) | (None, Some(_)) => {
            let missing = if cert.is_none() {
                "client_cert"
            } else {
                "client_key"
            };
            p.add(
                format!("{path}.{missing}"),
                "missing; client_cert and client_key go together",
            );
            return None;
        }
    };
    let (cert_path, key_path) = (format!("{path}.client_cert"), format!("{path}.client_key"));
    let cert_pem = p.secret(&cert_path, cert, env);
    let key_pem = p.secret(&key_path, key, env);
    let certs = match certificates(cert_pem?.expose()) {
        Ok(c) => c,
        Err(e) => {
            p.add(cert_path, e);
            return None;
        }
    };
    let Ok(key) = PrivateKeyDer::from_pem_slice(key_pem?.expose().as_bytes()) else {
        p.add(key_path, "no PEM private key found");
        return None;
    };
    // Building a client config checks that the key is usable and matches the certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let built = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(certs.clone(), key.clone_key())
        });
    if let Err(e) = built {
        p.add(key_path, format!("does not go with client_cert: {e}"));
        return None;
    }
    Some(ClientIdentity {
        certs,
        key: Arc::new(key),
    })
}

/// `[upstream] proxy`, `proxy_auth`, `no_proxy` and `use_env_proxy`.
pub(super) fn egress(u: &RawUpstream, env: &dyn Env, p: &mut Problems) -> Egress {
    let mut no_proxy = no_proxy_list(u.no_proxy.as_deref().unwrap_or_default(), p);
    let use_env_proxy = u.use_env_proxy.unwrap_or(defaults::USE_ENV_PROXY);
    if u.proxy_auth.is_some() && u.proxy.is_none() {
        p.add("upstream.proxy_auth", "set without upstream.proxy");
    }
    if let Some(url) = u.proxy.as_deref() {
        let auth = u
            .proxy_auth
            .as_deref()
            .and_then(|r| p.secret("upstream.proxy_auth", r, env));
        let proxy = configured_proxy(url, auth.as_ref(), p);
        return Egress {
            http: proxy.clone(),
            https: proxy,
            no_proxy: no_proxy.join(","),
            from: EgressSource::Config,
            use_env_proxy,
        };
    }
    if !use_env_proxy {
        return Egress {
            no_proxy: no_proxy.join(","),
            ..Egress::default()
        };
    }
    let var = |names: [&'static str; 2]| {
        names.iter().find_map(|n| {
            let v = env.var(n).filter(|v| !v.trim().is_empty())?;
            Some((*n, v))
        })
    };
    if let Some((_, v)) = var(["NO_PROXY", "no_proxy"]) {
        no_proxy.push(v);
    }
    let all = var(["ALL_PROXY", "all_proxy"]);
    let https = var(["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone());
    let http = var(["HTTP_PROXY", "http_proxy"]).or(all);
    let https = https.and_then(|(name, value)| env_proxy(name, &value, p));
    let http = http.and_then(|(name, value)| env_proxy(name, &value, p));
    let from = if https.is_some() || http.is_some() {
        EgressSource::Environment
    } else {
        EgressSource::None
    };
    Egress {
        http,
        https,
        no_proxy: no_proxy.join(","),
        from,
        use_env_proxy,
    }
}

/// `[upstream] no_proxy`: each entry one host, domain suffix, IP, network or `*`.
fn no_proxy_list(entries: &[String], p: &mut Problems) -> Vec<String> {
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let entry = entry.trim();
        let bad = entry.is_empty()
            || entry.contains([',', ' ', '\t', '@'])
            || (entry.contains('/') && !looks_like_network(entry));
        if bad {
            p.add(
                format!("upstream.no_proxy[{i}]"),
                format!("\"{entry}\" is not a host, domain suffix, IP, network or \"*\""),
            );
        } else {
            out.push(entry.to_owned());
        }
    }
    out
}

/// `10.0.0.0/8`, `fd00::/8`.
fn looks_like_network(entry: &str) -> bool {
    entry.split_once('/').is_some_and(|(ip, bits)| {
        ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok()
    })
}

/// `[upstream] proxy`: `http://host[:port]`, no credentials (those go in `proxy_auth`, a
/// secret `user:password`). The URL is never echoed in a problem.
fn configured_proxy(url: &str, auth: Option<&Secret>, p: &mut Problems) -> Option<Secret> {
    let path = "upstream.proxy";
    let uri = match proxy_uri(url) {
        Ok(u) => u,
        Err(e) => {
            p.add(path, e);
            return None;
        }
    };
    let authority = uri.authority()?.as_str();
    if authority.contains('@') {
        p.add(path, "may not carry credentials; put user:password in upstream.proxy_auth (\"env:NAME\" or \"file:PATH\")");
        return None;
    }
    let Some(auth) = auth else {
        return Some(Secret::new(format!("http://{authority}")));
    };
    let Some((user, password)) = auth.expose().split_once(':') else {
        p.add("upstream.proxy_auth", "must be user:password");
        return None;
    };
    Some(Secret::new(format!(
        "http://{}:{}@{authority}",
        encode_userinfo(user),
        encode_userinfo(password)
    )))
}

/// A proxy from the environment; its value (which may hold credentials) is never echoed.
fn env_proxy(name: &str, value: &str, p: &mut Problems) -> Option<Secret> {
    let value = value.trim();
    // curl's convention: a bare `host:port` means an HTTP proxy.
    let url = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    match proxy_uri(&url) {
        Ok(_) => Some(Secret::new(url)),
        Err(e) => {
            p.add(
                "upstream.use_env_proxy",
                format!("{name} from the environment {e}; fix it, or set use_env_proxy = false"),
            );
            None
        }
    }
}

/// The proxy URL parsed and checked: `http` scheme, a host, and nothing after the authority.
fn proxy_uri(url: &str) -> Result<http::Uri, String> {
    const SHAPE: &str = "must be an http:// proxy URL like \"http://proxy.internal:3128\"";
    let uri: http::Uri = url.parse().map_err(|_| format!("is not a URL; {SHAPE}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{SHAPE} (https:// and SOCKS proxies are not supported)"
        ));
    }
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    let bare = uri
        .path_and_query()
        .is_none_or(|pq| pq.as_str() == "/" || pq.as_str().is_empty());
    if !host_ok || !bare {
        return Err(SHAPE.to_owned());
    }
    Ok(uri)
}

/// Percent-encode everything but RFC 3986's unreserved characters, for `user:password@`.
fn encode_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
