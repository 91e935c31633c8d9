//! How a controller reaches PostgreSQL: over TLS when the URL says
//! `sslmode=require`, the server's certificate always verified (against
//! DATABASE_CA_FILE, or the system's roots), else in the clear.
//!
//! libpq's `require` encrypts without checking who answers; a controller
//! hands the database its builds' records, so here `require` also means
//! "the right server". `prefer` (tokio-postgres's default) and `disable`
//! connect in the clear: an unverified encryption would protect against
//! nothing a private network does not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{describe, JournalError};

/// What every session sets first. The server ends a statement or a lock
/// wait before the controller's own deadline does (so a connection is not
/// left waiting on an answer nobody reads), and a transaction left open; the
/// keepalive is the server's side of the one the controller sets.
const SESSION: &str = "SET statement_timeout = '25s'; SET lock_timeout = '20s'; \
     SET idle_in_transaction_session_timeout = '60s'; SET tcp_keepalives_idle = 5; \
     SET tcp_keepalives_interval = 3; SET tcp_keepalives_count = 3; \
     SET tcp_user_timeout = 15000";

/// DATABASE_URL as tokio-postgres reads it, with what libpq users write
/// that it does not know: `sslmode=verify-full` or `verify-ca` (read as
/// `require`: this controller always verifies) and `sslrootcert=FILE` (the
/// CA file, unless DATABASE_CA_FILE gives one). The error never repeats
/// any of the URL: it may hold a password.
pub(super) fn parse(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<(Config, Option<PathBuf>), JournalError> {
    let bad = || {
        JournalError::Postgres(
            "DATABASE_URL is not a PostgreSQL connection URL: expected \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=require], special \
             characters in the password percent-encoded (@ as %40)"
                .into(),
        )
    };
    let mut ca = ca_file.map(Path::to_path_buf);
    let Ok(mut parsed) = url::Url::parse(url) else {
        // The key=value form (`host=db user=bakery`) is not a URL.
        return Ok((url.parse().map_err(|_| bad())?, ca));
    };
    let mut kept: Vec<(String, String)> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        match (&*key, &*value) {
            ("sslmode", "verify-full" | "verify-ca") => {
                kept.push((key.into_owned(), "require".into()));
            }
            ("sslrootcert", file) => {
                ca.get_or_insert_with(|| file.into());
            }
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    Ok((parsed.as_str().parse().map_err(|_| bad())?, ca))
}

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
                prepare(client, limit).await
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
                prepare(client, limit).await
            }
        }
    }
}

/// Sets [`SESSION`] on a new connection, within `limit`.
async fn prepare(client: Client, limit: Duration) -> Result<Client, JournalError> {
    tokio::time::timeout(limit, client.batch_execute(SESSION))
        .await
        .map_err(|_| JournalError::Timeout(limit))??;
    Ok(client)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_settings_tokio_postgres_lacks_are_read_and_nothing_of_the_url_is_repeated() {
        let (config, ca) = parse(
            "postgres://u:pw@db.internal:5432/bakery?sslmode=verify-full&sslrootcert=/rds.pem&application_name=x",
            None,
        )
        .unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(ca.as_deref(), Some(Path::new("/rds.pem")));
        assert_eq!(config.get_application_name(), Some("x"));
        // DATABASE_CA_FILE wins over sslrootcert.
        let (_, ca) = parse(
            "postgres://u:pw@db/b?sslmode=verify-ca&sslrootcert=/url.pem",
            Some(Path::new("/env.pem")),
        )
        .unwrap();
        assert_eq!(ca.as_deref(), Some(Path::new("/env.pem")));
        // The key=value form is read as tokio-postgres reads it.
        let (config, _) = parse("host=db user=bakery sslmode=require", None).unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        for bad in [
            "postgres://u:hunter2@db:notaport/x",
            "postgres://u:hunter2@db/x?hunter2=1",
            "host=db password=hunter2 cd=x",
        ] {
            let e = parse(bad, None).err().unwrap().to_string();
            assert!(e.contains("not a PostgreSQL connection URL"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
