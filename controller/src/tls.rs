//! HTTPS for the controller's listener: `TLS_CERT_FILE` (PEM, leaf first,
//! then intermediates) and `TLS_KEY_FILE` (PEM, PKCS#8, PKCS#1 or SEC1).
//!
//! The pair is read again at the next handshake after either file changes
//! (cert-manager and similar tools rotate them in place), so a renewal
//! needs no restart; a pair that does not load keeps the last good one
//! in use, with a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The certificate the listener presents, re-read when its files change.
#[derive(Debug)]
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times when read.
    stamps: (Option<SystemTime>, Option<SystemTime>),
}

impl Certificates {
    /// Reads the pair; an error names the file and what is wrong with it.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Certificates>, TlsError> {
        let stamps = (modified(cert_file), modified(key_file));
        let key = read_pair(cert_file, key_file)?;
        Ok(Arc::new(Certificates {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: Mutex::new(Loaded { key, stamps }),
        }))
    }

    /// A TLS acceptor presenting these certificates (HTTP/1.1).
    pub fn acceptor(self: &Arc<Self>) -> tokio_rustls::TlsAcceptor {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// The certificate in use, first re-read if a file changed: two
    /// `stat`s per handshake, which costs far less than the handshake.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = (modified(&self.cert_file), modified(&self.key_file));
        if stamps != loaded.stamps {
            match read_pair(&self.cert_file, &self.key_file) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_file.display(), "TLS certificate changed on disk: now serving the new one");
                    loaded.key = key;
                }
                Err(e) => tracing::warn!("{e}; still serving the previous certificate"),
            }
            // Not read again until a file changes again.
            loaded.stamps = stamps;
        }
        Arc::clone(&loaded.key)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let at = |file: &Path, what: &str| TlsError(format!("TLS: {}: {what}", file.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| at(cert_file, &e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| at(cert_file, &e.to_string()))?;
    if certs.is_empty() {
        return Err(at(
            cert_file,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        at(
            key_file,
            &format!("{e} (want a PEM private key: PKCS#8, PKCS#1 or SEC1)"),
        )
    })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| at(key_file, &e.to_string()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        TlsError(format!(
            "TLS: the key in {} is not the certificate's in {} ({e})",
            key_file.display(),
            cert_file.display()
        ))
    })?;
    Ok(Arc::new(pair))
}

/// The certificates `TLS_CERT_FILE` and `TLS_KEY_FILE` name: both or
/// neither.
pub fn from_config(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<Option<Arc<Certificates>>, TlsError> {
    match (cert_file, key_file) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Certificates::load(cert, key).map(Some),
        (Some(_), None) => Err(TlsError(
            "TLS_CERT_FILE is set but TLS_KEY_FILE is not: set both to serve HTTPS".into(),
        )),
        (None, Some(_)) => Err(TlsError(
            "TLS_KEY_FILE is set but TLS_CERT_FILE is not: set both to serve HTTPS".into(),
        )),
    }
}
