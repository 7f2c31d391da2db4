//! TLS towards providers: the roots trusted (the bundled web PKI roots, the system's store,
//! and any `ca_file`), a client certificate where a provider asks for one, and ALPN offering
//! HTTP/2 before HTTP/1.1.

use crate::config::{ClientIdentity, ProviderTls};
use rustls::pki_types::CertificateDer;
use std::sync::{Arc, OnceLock};

/// The roots every upstream client starts from: the bundled web PKI roots and the system's
/// store. The store is read once per process (about 70 ms in a debug build), so a reload does
/// not pay for it again; a CA added to it later is trusted from the next start (a `ca_file`
/// applies at a reload). A store that is missing or partly unreadable is a warning, not a
/// failure: the bundled roots still serve.
pub(super) fn base_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(load_roots)
}

fn load_roots() -> rustls::RootCertStore {
    let started = std::time::Instant::now();
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
        ms = started.elapsed().as_millis(),
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
