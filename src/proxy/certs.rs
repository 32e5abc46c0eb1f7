//! The proxy's certificate files as one unit that follows their renewal. In a cluster
//! they come from one Secret volume that the operator renews before the leaves
//! expire; the kubelet swaps the whole volume at once, so everything built from it
//! (the serving config, the client identity towards recorders, the TLS for cluster
//! Recorder replicas) is rebuilt together, and a set that does not build as a whole
//! leaves the previous set in use. See `net::reload` for when the files are read.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::error::Result;
use crate::net::reload::{Files, Reloading};
use crate::net::tls;

/// A client certificate chain and its key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// What the proxy builds from its certificate files.
pub struct Certs {
    /// Serves kubectl (`--tls-cert`, `--tls-key`, `--client-ca`).
    pub server: Arc<ServerConfig>,
    /// Presented to the policy's recorders, each trusted by its own `caFile`.
    pub recorder_identity: Option<Identity>,
    /// Trusts `--recorder-ca` and presents the identity: for cluster Recorder replicas.
    pub cluster_recorders: Option<Arc<ClientConfig>>,
}

impl Certs {
    /// The identity, copied for a client config of its own.
    pub fn identity(&self) -> Option<Identity> {
        self.recorder_identity.as_ref().map(|(c, k)| (c.clone(), k.clone_key()))
    }
}

/// Where the certificate files are, as the flags name them.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// `--recorder-cert` and `--recorder-key`.
    pub recorder: Option<(PathBuf, PathBuf)>,
    /// Only with `--recorders-from-cluster`.
    pub recorder_ca: Option<PathBuf>,
}

impl CertFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut out = vec![self.cert.clone(), self.key.clone()];
        out.extend(self.client_ca.iter().cloned());
        if let Some((c, k)) = &self.recorder {
            out.extend([c.clone(), k.clone()]);
        }
        out.extend(self.recorder_ca.iter().cloned());
        out
    }

    fn build(&self, files: &Files<'_>) -> Result<Certs> {
        let chain = tls::certs_from_pem(files.get(&self.cert)?, &format!("--tls-cert {}", self.cert.display()))?;
        let key = tls::key_from_pem(files.get(&self.key)?, &format!("--tls-key {}", self.key.display()))?;
        let client_roots = match &self.client_ca {
            Some(p) => Some((tls::roots_from_pem(files.get(p)?, &format!("--client-ca {}", p.display()))?, tls::ClientAuth::Optional)),
            None => None,
        };
        let server = tls::server_config(chain, key, client_roots)?;
        let recorder_identity = match &self.recorder {
            Some((c, k)) => {
                let identity = (tls::certs_from_pem(files.get(c)?, "--recorder-cert")?, tls::key_from_pem(files.get(k)?, "--recorder-key")?);
                // A key that does not match its certificate is found now, not by each recorder.
                tls::client_config(RootCertStore::empty(), Some((identity.0.clone(), identity.1.clone_key()))).map_err(|e| e.wrap("--recorder-cert and --recorder-key"))?;
                Some(identity)
            }
            None => None,
        };
        let cluster_recorders = match &self.recorder_ca {
            Some(p) => {
                let roots = tls::roots_from_pem(files.get(p)?, &format!("--recorder-ca {}", p.display()))?;
                let identity = recorder_identity.as_ref().map(|(c, k)| (c.clone(), k.clone_key()));
                Some(tls::client_config(roots, identity)?)
            }
            None => None,
        };
        Ok(Certs { server, recorder_identity, cluster_recorders })
    }

    /// Builds the certificates now (an error is a startup error), then rebuilds them
    /// when the files change.
    pub fn load(self) -> Result<Arc<Reloading<Certs>>> {
        let paths = self.paths();
        Ok(Arc::new(Reloading::new("proxy certificates", paths, move |files| self.build(files))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pki::Ca;

    #[test]
    fn a_recorder_key_that_does_not_match_is_refused() {
        crate::net::tls::install_provider();
        let dir = std::env::temp_dir().join(format!("kubetape-certs-{}", crate::net::random::hex(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("certs-test").unwrap();
        let (serving, client, other) = (ca.server("p", &["127.0.0.1"]).unwrap(), ca.client("kubetape-proxy", &[]).unwrap(), ca.client("x", &[]).unwrap());
        let p = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let files = |key: &str| CertFiles {
            cert: p("tls.crt", &serving.cert),
            key: p("tls.key", &serving.key),
            client_ca: Some(p("ca.crt", &ca.cert_pem)),
            recorder: Some((p("recorder.crt", &client.cert), p("recorder.key", key))),
            recorder_ca: Some(p("recorder-ca.crt", &ca.cert_pem)),
        };
        let certs = files(&client.key).load().unwrap().get();
        assert!(certs.recorder_identity.is_some() && certs.cluster_recorders.is_some());
        let e = files(&other.key).load().err().expect("a mismatched recorder key fails at start");
        assert!(e.to_string().contains("--recorder-cert and --recorder-key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
