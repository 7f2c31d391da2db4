//! `[server] tls_cert` / `tls_key`: optional TLS on the proxy listener, read and checked at load
//! (and so again at each reload).

use super::problems::Problems;
use super::secrets::Env;
use keyrelay_pool::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// Build the listener's TLS config from `file:` (or `env:`) references to PEM, or report why not.
pub(super) fn tls(
    cert: Option<&str>,
    key: Option<&str>,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<Arc<rustls::ServerConfig>> {
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            p.add(
                "server.tls_key",
                "missing; tls_cert and tls_key go together",
            );
            return None;
        }
        (None, Some(_)) => {
            p.add(
                "server.tls_cert",
                "missing; tls_cert and tls_key go together",
            );
            return None;
        }
    };
    let cert_pem = p.secret("server.tls_cert", cert, env);
    let key_pem = p.secret("server.tls_key", key, env);
    let (certs, key) = pem(&cert_pem?, &key_pem?, p)?;
    match build(certs, key) {
        Ok(config) => Some(Arc::new(config)),
        Err(e) => {
            p.add(
                "server.tls_key",
                format!("does not match the certificate: {e}"),
            );
            None
        }
    }
}

/// The certificate chain and private key in the PEM texts, or the problem with each.
fn pem(
    cert_pem: &Secret,
    key_pem: &Secret,
    p: &mut Problems,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.expose().as_bytes())
            .filter_map(Result::ok)
            .collect();
    if certs.is_empty() {
        p.add("server.tls_cert", "no PEM certificate found");
        return None;
    }
    let Ok(key) = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes()) else {
        p.add("server.tls_key", "no PEM private key found");
        return None;
    };
    Some((certs, key))
}

/// A server config for the pair, offering HTTP/2 and HTTP/1.1.
fn build(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
