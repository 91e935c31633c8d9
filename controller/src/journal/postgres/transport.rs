//! How a controller reaches PostgreSQL: over TLS when the URL says
//! `sslmode=require`, the server's certificate always verified (against
//! DATABASE_CA_FILE, or the system's roots), else in the clear.
//!
//! libpq's `require` encrypts without checking who answers; a controller
//! hands the database its builds' records, so here `require` also means
//! "the right server". `prefer` (tokio-postgres's default) and `disable`
//! connect in the clear: an unverified encryption would protect against
//! nothing a private network does not.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{describe, JournalError};

/// In the clear, or over verified TLS.
#[derive(Clone)]
pub(super) enum Transport {
    Plain,
    Tls(MakeRustlsConnect),
}

impl Transport {
    /// What `config`'s sslmode asks for; `ca_file` (DATABASE_CA_FILE) is
    /// the CA the server's certificate must chain to (the system's roots
    /// without it).
    pub(super) fn for_config(
        config: &Config,
        ca_file: Option<&Path>,
    ) -> Result<Transport, JournalError> {
        if config.get_ssl_mode() != SslMode::Require {
            return Ok(Transport::Plain);
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let unreadable = |e: &dyn std::fmt::Display| {
                    JournalError::Postgres(format!(
                        "DATABASE_CA_FILE {}: {e}; give a PEM file of the CA that signed \
                         the server's certificate",
                        path.display()
                    ))
                };
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| unreadable(&e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| unreadable(&e))?;
                if certs.is_empty() {
                    return Err(unreadable(&"no certificate in it"));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| unreadable(&e))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| JournalError::Postgres(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Transport::Tls(MakeRustlsConnect::new(tls)))
    }

    /// Connects, the connection's task spawned on this runtime. Bounded by
    /// `limit`: `connect_timeout` bounds the socket's connect only, and a
    /// server (or a proxy) may accept and never answer.
    pub(super) async fn connect(
        &self,
        config: &Config,
        limit: Duration,
    ) -> Result<Client, JournalError> {
        let late = || {
            JournalError::Postgres(format!(
                "the server did not answer within {limit:?} (connect_timeout)"
            ))
        };
        match self {
            Transport::Plain => {
                let (client, connection) = tokio::time::timeout(limit, config.connect(NoTls))
                    .await
                    .map_err(|_| late())??;
                tokio::spawn(watch(connection));
                Ok(client)
            }
            Transport::Tls(tls) => {
                let connected = tokio::time::timeout(limit, config.connect(tls.clone()))
                    .await
                    .map_err(|_| late())?;
                let (client, connection) = connected.map_err(|e| {
                    let said = describe(&e);
                    let hint = if said.contains("certificate") {
                        "; set DATABASE_CA_FILE to the CA that signed the server's \
                         certificate (for RDS, its region's bundle)"
                    } else {
                        ""
                    };
                    JournalError::Postgres(format!("{said}{hint}"))
                })?;
                tokio::spawn(watch(connection));
                Ok(client)
            }
        }
    }
}

/// Drives a connection until it ends, saying why if it failed.
async fn watch<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!("state database connection: {}", describe(&e));
    }
}
