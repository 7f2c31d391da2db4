//! TLS towards providers: the roots trusted (the bundled web PKI roots, the system's store,
//! and any `ca_file`), a client certificate where a provider asks for one, and ALPN offering
//! HTTP/2 before HTTP/1.1.

use crate::config::{ClientIdentity, ProviderTls};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

/// The roots every upstream client starts from: the bundled web PKI roots and the system's
/// store, read once per config. A store that is missing or partly unreadable is a warning, not
/// a failure: the bundled roots still serve.
pub(super) fn base_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let bundled = roots.len();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "could not read (part of) the system certificate store; the bundled roots still apply");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(
        bundled,
        system = added,
        ignored,
        "upstream TLS roots loaded"
    );
    roots
}

/// A client config trusting `roots` plus `extra` CAs, presenting `identity` if given.
pub(super) fn client_config(
    roots: &rustls::RootCertStore,
    extra: &[&[CertificateDer<'static>]],
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = roots.clone();
    for cert in extra.iter().flat_map(|c| c.iter()) {
        // Each was checked when the config was loaded.
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    match identity {
        Some(id) => builder.with_client_auth_cert(id.certs.clone(), id.key.clone_key()),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The extra CAs for a provider: the global ones and its own.
pub(super) fn extra<'a>(
    global: &'a [CertificateDer<'static>],
    own: &'a ProviderTls,
) -> [&'a [CertificateDer<'static>]; 2] {
    [global, &own.ca]
}
