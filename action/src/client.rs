//! Connecting to the controller: its URL, and the client token from the
//! environment. The calls themselves are `bakery-client`'s.

pub use bakery_client::{Controller, Event};

/// CONTROLLER_TOKEN, or the content of CONTROLLER_TOKEN_FILE.
fn client_token() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("CONTROLLER_TOKEN").or_else(|| {
        var("CONTROLLER_TOKEN_FILE")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.trim().to_string())
    })
}

/// The controller at `base`, with the client token when one is set.
pub fn connect(base: &str) -> Controller {
    Controller::new(base, client_token().as_deref())
}
