//! The registry client: one repository of one registry, over ureq. It
//! answers the registry's `401` challenges (Basic, or a Bearer token from
//! the challenge's realm, fetched with the credentials if any), retries
//! idempotent calls on connection errors, 429 and 5xx with backoff, and
//! turns the registry's error bodies (`{"errors":[{code,message}]}`) into
//! messages. Credentials never appear in errors or logs.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::Reference;

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn basic(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// http:// instead of https:// (a registry on 127.0.0.1 for tests).
    pub plain_http: bool,
    /// Accept any TLS certificate (a self-signed test registry).
    pub insecure: bool,
    pub credentials: Option<Credentials>,
    /// Ask tokens for push as well as pull.
    pub push: bool,
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, dropped, timed out.
    #[error("{what}: no answer from {base}: {detail}")]
    Connection { what: String, base: String, detail: String },
    /// The registry answered with an error status.
    #[error("{what}: the registry answered HTTP {status}{message}")]
    Status { what: String, status: u16, message: String },
    /// Credentials missing or refused.
    #[error("{what}: {detail}")]
    Auth { what: String, detail: String },
    #[error("interrupted")]
    Interrupted,
}

impl CallError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An answer, its body read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Whether a call may be sent again when its answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Yes,
    /// Sent once; the caller recovers (a PATCH of an upload).
    No,
}

/// One repository of one registry.
pub struct Registry {
    agent: ureq::Agent,
    base: String,
    repository: String,
    credentials: Option<Credentials>,
    push: bool,
    /// The `Authorization` value that the last challenge called for.
    authorization: Mutex<Option<String>>,
    pub attempts: u32,
    pub backoff: Duration,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(reference: &Reference, opts: &RegistryOptions) -> Registry {
        let scheme = if opts.plain_http { "http" } else { "https" };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
        if opts.insecure {
            config = config.tls_config(ureq::tls::TlsConfig::builder().disable_verification(true).build());
        }
        Registry {
            agent: config.build().into(),
            base: format!("{scheme}://{}", reference.api_host()),
            repository: reference.repository.clone(),
            credentials: opts.credentials.clone(),
            push: opts.push,
            authorization: Mutex::new(None),
            attempts: 5,
            backoff: Duration::from_millis(300),
        }
    }

    /// `scheme://host`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `BASE/v2/REPO/{rest}`.
    pub fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{rest}", self.base, self.repository)
    }

    /// An absolute URL for a `Location` header's value.
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    /// Sends a request and reads the answer (up to 64 MiB: manifests and
    /// error bodies; blobs are streamed by [`Registry::open`]).
    pub fn call(
        &self,
        what: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        retry: Retry,
    ) -> Result<Reply, CallError> {
        let mut response = self.send(what, method, url, headers, body, retry)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .map_err(|e| self.connection(what, &e))?
        };
        Ok(Reply { status, headers, body })
    }

    /// Sends a request and hands back the answer with its body unread.
    pub fn open(
        &self,
        what: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<ureq::http::Response<ureq::Body>, CallError> {
        self.send(what, "GET", url, headers, &[], Retry::Yes)
    }

    fn connection(&self, what: &str, e: &ureq::Error) -> CallError {
        CallError::Connection {
            what: what.to_owned(),
            base: self.base.clone(),
            detail: e.to_string(),
        }
    }

    fn send(
        &self,
        what: &str,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        retry: Retry,
    ) -> Result<ureq::http::Response<ureq::Body>, CallError> {
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            attempt += 1;
            if kiln_exec::interrupted() {
                return Err(CallError::Interrupted);
            }
            let mut builder = ureq::http::Request::builder().method(method).uri(url);
            for (k, v) in headers {
                builder = builder.header(*k, *v);
            }
            let authorization = self.authorization.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(a) = &authorization {
                builder = builder.header("Authorization", a.as_str());
            }
            let request = builder.body(body.to_vec()).map_err(|e| CallError::Connection {
                what: what.to_owned(),
                base: self.base.clone(),
                detail: format!("bad request: {e}"),
            })?;
            tracing::debug!("oci: {method} {url}");
            let outcome = self.agent.run(request);
            let retryable = match outcome {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    if status == 401 && !challenged {
                        challenged = true;
                        let challenge = response
                            .headers()
                            .get("www-authenticate")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        self.authenticate(what, &challenge)?;
                        attempt -= 1;
                        continue;
                    }
                    if status == 401 || status == 403 {
                        let body = response
                            .body_mut()
                            .with_config()
                            .limit(1 << 20)
                            .read_to_vec()
                            .unwrap_or_default();
                        let how = if self.credentials.is_some() {
                            "the registry refused these credentials (check the user name and password, and that the user may push to this repository)"
                        } else {
                            "the registry wants credentials: log in with `docker login` (kiln reads ~/.docker/config.json) or pass --username and --password-stdin"
                        };
                        return Err(CallError::Auth {
                            what: what.to_owned(),
                            detail: format!("HTTP {status}{}; {how}", error_message(&body)),
                        });
                    }
                    let transient = status == 429 || status >= 500;
                    if !(transient && retry == Retry::Yes && attempt < self.attempts) {
                        return Ok(response);
                    }
                    tracing::debug!("oci: {what}: HTTP {status}; retrying");
                    true
                }
                Err(e) => {
                    let unsent = matches!(e, ureq::Error::ConnectionFailed | ureq::Error::HostNotFound);
                    if matches!(e, ureq::Error::HostNotFound)
                        || !(retry == Retry::Yes || unsent)
                        || attempt >= self.attempts
                    {
                        return Err(self.connection(what, &e));
                    }
                    tracing::debug!("oci: {what}: {e}; retrying");
                    true
                }
            };
            debug_assert!(retryable);
            let wait = self.backoff.saturating_mul(1 << (attempt - 1).min(5));
            std::thread::sleep(wait.min(Duration::from_secs(10)));
        }
    }

    /// Answers a `401` challenge: Basic with the credentials, or a Bearer
    /// token from the realm.
    fn authenticate(&self, what: &str, challenge: &str) -> Result<(), CallError> {
        let (scheme, params) = parse_challenge(challenge);
        let auth_error = |detail: String| CallError::Auth {
            what: what.to_owned(),
            detail,
        };
        let no_credentials = || {
            auth_error(
                "the registry wants credentials: log in with `docker login` (kiln reads ~/.docker/config.json) \
                 or pass --username and --password-stdin"
                    .to_owned(),
            )
        };
        let value = match scheme.to_ascii_lowercase().as_str() {
            "basic" => self.credentials.as_ref().ok_or_else(no_credentials)?.basic(),
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| auth_error(format!("a Bearer challenge without a realm: {challenge:?}")))?;
                let actions = if self.push { "pull,push" } else { "pull" };
                let mut scopes = vec![format!("repository:{}:{actions}", self.repository)];
                if let Some(s) = params.get("scope") {
                    if !scopes.contains(s) {
                        scopes.push(s.clone());
                    }
                }
                let mut url = format!("{realm}{}", if realm.contains('?') { '&' } else { '?' });
                let mut query: Vec<String> = Vec::new();
                if let Some(service) = params.get("service") {
                    query.push(format!("service={}", encode_query(service)));
                }
                for s in &scopes {
                    query.push(format!("scope={}", encode_query(s)));
                }
                url.push_str(&query.join("&"));
                let mut builder = ureq::http::Request::builder().method("GET").uri(&url);
                if let Some(c) = &self.credentials {
                    builder = builder.header("Authorization", c.basic());
                }
                let request = builder
                    .body(Vec::new())
                    .map_err(|e| auth_error(format!("bad token realm {realm:?}: {e}")))?;
                let mut response = self
                    .agent
                    .run(request)
                    .map_err(|e| auth_error(format!("fetching a token from {realm}: {e}")))?;
                let status = response.status().as_u16();
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_to_vec()
                    .unwrap_or_default();
                if status == 401 || status == 403 {
                    return Err(match &self.credentials {
                        Some(_) => auth_error(format!(
                            "the token service {realm} refused these credentials (HTTP {status}); check the user name and password"
                        )),
                        None => no_credentials(),
                    });
                }
                if status != 200 {
                    return Err(auth_error(format!(
                        "the token service {realm} answered HTTP {status}{}",
                        error_message(&body)
                    )));
                }
                let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
                    auth_error(format!("the token service {realm} answered something that is not JSON"))
                })?;
                let token = doc
                    .get("token")
                    .or_else(|| doc.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| auth_error(format!("the token service {realm} gave no token")))?;
                format!("Bearer {token}")
            }
            _ => {
                return Err(auth_error(format!(
                    "the registry answered 401 with an unknown challenge {:?}",
                    scheme
                )))
            }
        };
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }
}

/// Splits `Bearer realm="https://…",service="…",scope="…"` into its scheme
/// and parameters. Hand-written: a quoted-string list, small enough not to
/// warrant a parser crate.
pub fn parse_challenge(header: &str) -> (String, std::collections::BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = std::collections::BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    (scheme.to_owned(), params)
}

/// Percent-encodes a query value (scopes contain `:` and `,`).
fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `: CODE: message` from a registry's error body, or nothing.
pub fn error_message(body: &[u8]) -> String {
    let doc: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let errors = doc
        .as_ref()
        .and_then(|d| d.get("errors"))
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("?");
                    let message = e.get("message").and_then(|c| c.as_str()).unwrap_or_default();
                    format!("{code}: {message}")
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
    match errors {
        Some(e) if !e.is_empty() => format!(": {e}"),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() || text.len() > 300 {
                String::new()
            } else {
                format!(": {text}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="basic-realm""#);
        assert_eq!((s.as_str(), p["realm"].as_str()), ("Basic", "basic-realm"));
        let (_, p) = parse_challenge(r#"Bearer realm=plain, error="x\"y""#);
        assert_eq!((p["realm"].as_str(), p["error"].as_str()), ("plain", "x\"y"));
        assert_eq!(
            encode_query("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"errors":[{"code":"DENIED","message":"no push"}]}"#),
            ": DENIED: no push"
        );
        assert_eq!(error_message(b"  "), "");
        assert_eq!(error_message(b"oops"), ": oops");
    }

    #[test]
    fn credentials_stay_out_of_debug() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
