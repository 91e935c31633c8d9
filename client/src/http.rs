//! What every call shares: the HTTP client's deadlines, the base URL, and
//! turning an answer into a typed result.

use std::time::Duration;

use bakery_protocol::api::ApiError;
use reqwest::{Client, RequestBuilder, Response};

use crate::Error;

/// The deadlines of one party's calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// Longest a connection may take to open.
    pub connect: Duration,
    /// Longest silence within an answer: a stream that goes quiet longer
    /// (the controller sends a keep-alive every 15 s) is dropped.
    pub read: Duration,
    /// Longest a small call may take in all.
    pub call: Duration,
}

/// A base URL and an HTTP client with [`Deadlines`] and, when given, a
/// bearer token sent with every request (marked sensitive, so it is never
/// logged by the HTTP stack).
#[derive(Clone)]
pub(crate) struct Http {
    client: Client,
    base: String,
    pub deadlines: Deadlines,
}

impl Http {
    pub fn new(base: &str, token: Option<&str>, deadlines: Deadlines) -> Http {
        Http::with_roots(base, token, deadlines, None)
    }

    /// [`Http::new`], trusting only `roots` (PEM certificates) for HTTPS
    /// when given: a private CA, instead of the system's roots.
    pub fn with_roots(
        base: &str,
        token: Option<&str>,
        deadlines: Deadlines,
        roots: Option<Vec<reqwest::Certificate>>,
    ) -> Http {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            if let Ok(mut value) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        let mut builder = Client::builder()
            .connect_timeout(deadlines.connect)
            .read_timeout(deadlines.read)
            .default_headers(headers);
        if base.starts_with("http://") {
            // Plain HTTP needs no trust store: loading and parsing the
            // system's CA certificates was a good part of an agent's start.
            builder = builder.tls_certs_only(std::iter::empty());
        } else if let Some(roots) = roots {
            builder = builder.tls_certs_only(roots);
        }
        Http {
            client: builder
                .build()
                .expect("the HTTP client builds with these settings"),
            base: base.trim_end_matches('/').to_string(),
            deadlines,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` (which starts with `/`), without a deadline of
    /// its own: long transfers set theirs.
    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// A small call to `path`, bounded by [`Deadlines::call`].
    pub fn call(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.request(method, path).timeout(self.deadlines.call)
    }

    /// Sends `request`: a transport failure is [`Error::Unreachable`], an
    /// answer other than 2xx is [`Error::Refused`] (4xx) or
    /// [`Error::Unavailable`] (5xx) with the controller's own message.
    pub async fn send(
        &self,
        what: &'static str,
        request: RequestBuilder,
    ) -> Result<Response, Error> {
        let resp = request
            .send()
            .await
            .map_err(|e| self.unreachable(what, &e))?;
        answer(what, resp).await
    }

    pub fn unreachable(&self, what: &'static str, e: &reqwest::Error) -> Error {
        Error::Unreachable {
            what,
            base: self.base.clone(),
            message: describe(e),
        }
    }
}

/// An answer as a result: 2xx passes, anything else is an error carrying
/// the controller's `{"error": …}` text.
pub(crate) async fn answer(what: &'static str, resp: Response) -> Result<Response, Error> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let message = resp
        .json::<ApiError>()
        .await
        .map_or_else(|_| "no details".into(), |e| e.error);
    Err(if status.is_server_error() {
        Error::Unavailable {
            what,
            status,
            message,
        }
    } else {
        Error::Refused {
            what,
            status,
            message,
        }
    })
}

/// Reads a JSON answer.
pub(crate) async fn json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    resp: Response,
) -> Result<T, Error> {
    let bytes = resp.bytes().await.map_err(|e| Error::Decode {
        what,
        message: describe(&e),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
        what,
        message: e.to_string(),
    })
}

/// A transport error with its causes, on one line: reqwest's own text
/// ("error sending request") says nothing without them.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = bakery_protocol::error_chain::flatten(e);
    if e.is_timeout() && !text.contains("timed out") {
        text.push_str(" (timed out)");
    }
    text
}
