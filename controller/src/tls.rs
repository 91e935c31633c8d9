//! HTTPS for the controller's listener: `TLS_CERT_FILE` (PEM, leaf first,
//! then intermediates) and `TLS_KEY_FILE` (PEM, PKCS#8, PKCS#1 or SEC1).
//!
//! The pair is read again within [`RELOAD_CHECK`] of either file changing
//! (cert-manager and similar tools rotate them in place), so a renewal
//! needs no restart; a pair that does not load keeps the last good one
//! in use, with a warning. The files are looked at by a background task,
//! never during a handshake, and read only when they are regular files of
//! at most [`MAX_PEM`]: a path swapped for `/dev/zero`, a FIFO or a hung
//! mount cannot stall or exhaust the listener.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// How often the files' modification times are looked at.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Largest certificate or key file read: a chain is a few KiB.
pub const MAX_PEM: u64 = 1 << 20;

/// The certificate the listener presents, re-read when its files change.
#[derive(Debug)]
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last looked at.
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl Certificates {
    /// Reads the pair; an error names the file and what is wrong with it.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Certificates>, TlsError> {
        let stamps = (modified(cert_file), modified(key_file));
        let key = read_pair(cert_file, key_file)?;
        Ok(Arc::new(Certificates {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(key),
            stamps: Mutex::new(stamps),
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

    /// Looks at the files every [`RELOAD_CHECK`] and loads a changed pair;
    /// runs until the controller stops.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            let me = Arc::clone(&self);
            // Blocking file I/O off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }

    /// Loads the pair again if either file changed since last looked at.
    fn reload_if_changed(&self) {
        let stamps = (modified(&self.cert_file), modified(&self.key_file));
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == stamps {
                return;
            }
            // Not read again until a file changes again.
            *seen = stamps;
        }
        match read_pair(&self.cert_file, &self.key_file) {
            Ok(key) => {
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate changed on disk: now serving the new one");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
            }
            Err(e) => tracing::warn!("{e}; still serving the previous certificate"),
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A file's bytes: a regular file (after symlinks) of at most [`MAX_PEM`].
fn read_bounded(file: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_PEM {
        return Err(format!("is larger than {} KiB", MAX_PEM >> 10));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PEM + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(format!("is larger than {} KiB", MAX_PEM >> 10));
    }
    Ok(bytes)
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let at = |file: &Path, what: &str| TlsError(format!("TLS: {}: {what}", file.display()));
    let cert_pem = read_bounded(cert_file).map_err(|e| at(cert_file, &e))?;
    let key_pem = read_bounded(key_file).map_err(|e| at(key_file, &e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| at(cert_file, &e.to_string()))?;
    if certs.is_empty() {
        return Err(at(
            cert_file,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
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

/// Most PEM an agent is given: ECS allows 8 KiB for all of a task's
/// overrides, the agent's environment included.
const MAX_AGENT_CA: usize = 4 << 10;

/// AGENT_CA_FILE: the CA certificates agents trust for this controller's
/// HTTPS (and nothing else for it), checked once at start-up: PEM
/// certificates, small enough to travel in an agent's environment.
pub fn agent_ca(file: &Path) -> Result<String, TlsError> {
    let at = |what: &str| TlsError(format!("AGENT_CA_FILE {}: {what}", file.display()));
    let pem = read_bounded(file).map_err(|e| at(&e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| at(&e.to_string()))?;
    if certs.is_empty() {
        return Err(at("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    if pem.len() > MAX_AGENT_CA {
        return Err(at(&format!(
            "is {} bytes; agents get it in their environment, which ECS limits: give only the CA that signed the controller's certificate (at most {} KiB)",
            pem.len(),
            MAX_AGENT_CA >> 10
        )));
    }
    String::from_utf8(pem).map_err(|_| at("is not text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_ca_must_be_a_small_pem_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let e = agent_ca(&file).unwrap_err().to_string();
        assert!(
            e.contains("AGENT_CA_FILE") && e.contains("holds no PEM certificate"),
            "{e}"
        );
        // A throwaway self-signed certificate (its key was not kept).
        let cert = include_str!("test-ca.pem").to_string();
        std::fs::write(&file, &cert).unwrap();
        assert_eq!(agent_ca(&file).unwrap(), cert);
        std::fs::write(&file, cert.repeat(8)).unwrap();
        let e = agent_ca(&file).unwrap_err().to_string();
        assert!(e.contains("give only the CA"), "{e}");
        let e = agent_ca(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
