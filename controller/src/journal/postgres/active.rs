//! Where the active controller answers, as a standby sees it (its
//! forwarding, crate::forward): read from the database every second.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_postgres::Client;

use super::{connect_limit, deadline, reach, schema, Target};
use crate::journal::JournalError;

/// The URL the controller holding the database published, as a standby
/// sees it: read every [`WATCH_EVERY`] on a connection of its own, until
/// dropped.
pub struct ActiveUrl {
    url: Arc<RwLock<Option<String>>>,
    watching: tokio::task::JoinHandle<()>,
}

/// How often a standby reads where the active controller is.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl ActiveUrl {
    /// Starts watching `target`'s database. Fails only on a URL that does
    /// not parse; an unreachable server is retried.
    pub fn watch(target: &Target) -> Result<ActiveUrl, JournalError> {
        let (config, transport) = reach(target)?;
        let url = Arc::new(RwLock::new(None));
        let seen = Arc::clone(&url);
        let watching = tokio::spawn(async move {
            let mut client: Option<Client> = None;
            loop {
                if client.as_ref().is_none_or(Client::is_closed) {
                    client = transport
                        .connect(&config, connect_limit(&config))
                        .await
                        .ok();
                }
                let now = match &client {
                    Some(c) => deadline(schema::active_url(c)).await.unwrap_or(None),
                    None => None,
                };
                *seen.write().unwrap_or_else(|p| p.into_inner()) = now;
                tokio::time::sleep(WATCH_EVERY).await;
            }
        });
        Ok(ActiveUrl { url, watching })
    }

    /// Where the active controller answers, as last read.
    pub fn current(&self) -> Option<String> {
        self.url.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for ActiveUrl {
    fn drop(&mut self) {
        self.watching.abort();
    }
}
