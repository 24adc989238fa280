//! Which TLS servers the host trusts: the public web PKI plus, when the
//! operator sets `ca_bundle`, the certificates of a private CA (self-hosted
//! control plane, an internal mirror, a TLS-inspecting proxy).
//!
//! One definition for every outbound connection of the host (the agent's
//! control-plane and download client, the deploy runner's health checks and
//! reports, the sandbox's `net.probe`), so a setting that makes downloads work
//! cannot leave the health check or the pre-upgrade probe failing.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A CA bundle that cannot be used. Refused at start, never silently ignored:
/// an agent that ignored it would fail later at the first download.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ca_bundle {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_bundle {path}: not a PEM certificate bundle: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error(
        "ca_bundle {path}: holds no certificate (expected `-----BEGIN CERTIFICATE-----` blocks)"
    )]
    Empty { path: PathBuf },
    #[error("ca_bundle {path}: certificate {index} refused: {reason}")]
    Cert {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The certificates of a PEM bundle (one or more `CERTIFICATE` blocks; other
/// blocks, e.g. a key pasted by mistake, are ignored).
pub fn read_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for c in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(c.map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?);
    }
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The client configuration every outbound TLS connection uses: the web PKI
/// roots, plus the certificates of `ca_bundle` when given.
pub fn client_config(ca_bundle: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_bundle {
        for (index, c) in read_ca_bundle(path)?.into_iter().enumerate() {
            roots.add(c).map_err(|e| TlsError::Cert {
                path: path.to_path_buf(),
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_missing_empty_or_broken_bundle() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TlsError::Read { .. })
        ));
        let empty = d.path().join("empty.pem");
        std::fs::write(&empty, "just text\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(matches!(e, TlsError::Empty { .. }), "{e}");
        assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
        let broken = d.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(client_config(Some(&broken)).is_err());
    }

    #[test]
    fn without_a_bundle_the_web_pki_is_trusted() {
        assert!(client_config(None).is_ok());
    }
}
