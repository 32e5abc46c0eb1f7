//! rustls configuration from PEM files and bytes, for servers and clients.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::{Context, Error, Result};

/// Installs ring as the process's TLS provider (once; later calls do nothing).
/// Needed explicitly: rust-s3's HTTPS client links aws-lc-rs beside ring, so rustls
/// no longer picks one by itself.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<std::result::Result<Vec<_>, _>>().map_err(|e| Error::new(format!("{what}: {e}")))?;
    if certs.is_empty() {
        crate::bail!("{what}: expected at least one PEM certificate, found none");
    }
    Ok(certs)
}

pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::new(format!("{what}: expected a PEM private key: {e}")))
}

pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    crate::net::file::read_config(path)
}

pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem, what)? {
        roots.add(cert).with_context(|| format!("{what}: bad CA certificate"))?;
    }
    Ok(roots)
}

/// Who must present a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified if presented; other credentials (a bearer token) may be used instead.
    Optional,
    Required,
}

pub fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, client_roots: Option<(RootCertStore, ClientAuth)>) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder();
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some((roots, mode)) => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = match mode {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| Error::new(format!("client CA: {e}")))?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).context("server certificate and key")?;
    // SPDY upgrades cannot ride HTTP/2, so only HTTP/1.1 is offered.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub fn client_config(roots: RootCertStore, identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).context("client certificate and key")?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
