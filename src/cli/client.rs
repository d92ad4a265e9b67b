//! The client of the relay's HTTP API that the `channels` command uses.
//!
//! A deliberately small HTTP/1.1 client: one TCP connection per request
//! through hyper's `client::conn::http1`, plain `http://` only (the API
//! listens on loopback by default). Every failure, from a refused
//! connection to a 4xx answer, becomes one [`ClientError`] whose text is a
//! single line for the user.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

const PREFIX: &str = "/api/v1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Registration binds a port and writes the registry: seconds at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything that can go wrong, each shown to the user as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url} is not a usable API URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {url} ({}): is `speedrelay serve` running there?", source.kind())]
    Connect { url: String, source: std::io::Error },
    #[error("no answer from {url} within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("HTTP exchange with {url} failed: {source}")]
    Http { url: String, source: hyper::Error },
    /// The server answered with an error status; `message` is its `error`
    /// (prefixed by `field`, followed by `details`).
    #[error("{message} ({status})")]
    Api { status: u16, message: String },
    #[error("{url} answered {status} with a body that is not JSON")]
    NotJson { url: String, status: u16 },
    #[error("cannot read schema file {path}: {source}")]
    SchemaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema file {path} is not JSON: {source}")]
    SchemaJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("schema file {path} must hold an Avro schema object ({{\"type\": …}})")]
    SchemaNotObject { path: PathBuf },
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
}

/// The API's base address and credentials.
#[derive(Debug, Clone)]
pub struct ApiClient {
    /// As the user wrote it, for messages.
    url: String,
    /// `host:port` to connect to and send as `Host`.
    authority: String,
    /// Path before `/api/v1` (empty, or e.g. `/relay` behind a proxy).
    base_path: String,
    token: Option<String>,
}

impl ApiClient {
    /// [`ApiClient::new`] with the token of `SPEEDRELAY_API_TOKEN`: read
    /// from the environment only, so it never shows in `ps`.
    pub fn from_env(url: &str) -> Result<Self, ClientError> {
        let token = std::env::var("SPEEDRELAY_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Self::new(url, token)
    }

    /// Parses `http://host[:port][/path]`; anything else is refused here,
    /// before any connection is tried.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(bad("only http:// is supported")),
            None => return Err(bad("write it as http://HOST:PORT")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad(
                "user information is not supported; use SPEEDRELAY_API_TOKEN",
            ));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_string(),
            authority: format!("{host}:{port}"),
            base_path: uri.path().trim_end_matches('/').to_string(),
            token,
        })
    }

    /// One request to `/api/v1{path}`: the JSON body of a 2xx answer, or
    /// the server's error as [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let timeout = || ClientError::Timeout {
            url: self.url.clone(),
            secs: REQUEST_TIMEOUT.as_secs(),
        };
        let (status, bytes) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
                .await
                .map_err(|_| timeout())??;
        let parsed = serde_json::from_slice::<Value>(&bytes);
        if status.is_success() {
            return parsed.map_err(|_| ClientError::NotJson {
                url: self.url.clone(),
                status: status.as_u16(),
            });
        }
        let mut message = match &parsed {
            Ok(v) => error_text(v),
            Err(_) => None,
        }
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes);
            let first = text.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                first.chars().take(200).collect()
            }
        });
        if status == StatusCode::UNAUTHORIZED {
            message.push_str(if self.token.is_some() {
                "; SPEEDRELAY_API_TOKEN does not match the relay's token"
            } else {
                "; set SPEEDRELAY_API_TOKEN"
            });
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let connect_error = |source| ClientError::Connect {
            url: self.url.clone(),
            source,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection timed out",
                ))
            })?
            .map_err(connect_error)?;
        let http_error = |source| ClientError::Http {
            url: self.url.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // The connection future does the I/O; it ends when the exchange is
        // over and `sender` is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri = format!("{}{PREFIX}{path}", self.base_path);
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, &self.authority)
            .header("accept", "application/json");
        if let Some(token) = &self.token
            && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let payload = match body {
            Some(v) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| ClientError::BadUrl {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(http_error)?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The one-line text of an error body `{error, field?, details?}`.
pub fn error_text(v: &Value) -> Option<String> {
    let error = v.get("error")?.as_str()?;
    let mut text = match v.get("field").and_then(Value::as_str) {
        Some(field) if !error.starts_with(field) => format!("{field}: {error}"),
        _ => error.to_string(),
    };
    let details = match v.get("details").or_else(|| v.get("reasons")) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other.to_string()],
    };
    if !details.is_empty() {
        text.push_str(" — ");
        text.push_str(&details.join("; "));
    }
    Some(one_line(&text))
}

/// Collapses a message's line breaks and runs of spaces into single spaces.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls() {
        let c = ApiClient::new("http://127.0.0.1:9000/", None).unwrap();
        assert_eq!(c.authority, "127.0.0.1:9000");
        assert_eq!(c.base_path, "");
        let c = ApiClient::new("http://relay.local/proxy/", None).unwrap();
        assert_eq!(c.authority, "relay.local:80");
        assert_eq!(c.base_path, "/proxy");
        for bad in [
            "https://x:1",
            "127.0.0.1:8080",
            "http://u:p@x:1",
            "ht tp://x",
        ] {
            assert!(
                matches!(ApiClient::new(bad, None), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_bodies_become_one_line() {
        let v = json!({"error": "is required", "field": "port"});
        assert_eq!(error_text(&v).unwrap(), "port: is required");
        let v = json!({"error": "port 1 is used by channel x", "used_by": "x"});
        assert_eq!(error_text(&v).unwrap(), "port 1 is used by channel x");
        let v = json!({"error": "bad\nthing", "details": ["a", "b"]});
        assert_eq!(error_text(&v).unwrap(), "bad thing — a; b");
        assert_eq!(error_text(&json!({"status": 1})), None);
    }
}
