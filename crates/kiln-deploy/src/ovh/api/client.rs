//! A small client of OVH's API v1: the clock offset from `GET /auth/time`,
//! signed requests sent with ureq, 5xx answers and dropped connections
//! retried with bounded exponential backoff, and error answers turned into
//! what to do about them (bad credentials, a missing access rule, an
//! unknown server, a task already running, a clock far off). Secrets never
//! reach a log line: requests are logged as method, URL and status.
//! Non-goals: OAuth2, API v2, paging.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::config::{mask, Credentials};
use super::sign;

/// A call that failed, with advice.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "{call}: OVH refused the credentials (HTTP {status} {code}: {message}). The application key or secret is wrong, \
         or the consumer key is unknown, revoked or expired: make new keys at {create_token} and set them in \
         OVH_APPLICATION_KEY/OVH_APPLICATION_SECRET/OVH_CONSUMER_KEY or ovh.conf"
    )]
    Credentials {
        call: String,
        status: u16,
        code: String,
        message: String,
        create_token: String,
    },
    #[error(
        "{call}: not allowed (HTTP 403 {code}: {message}). The consumer key lacks the access rule `{rule}`: \
         make a consumer key that has it at {create_token} (kiln needs GET /auth/time, \
         GET /dedicated/server/*/install/compatibleTemplates, POST /dedicated/server/*/reinstall, \
         GET /dedicated/server/*/task/*, GET /dedicated/server/*/install/status)"
    )]
    Forbidden {
        call: String,
        code: String,
        message: String,
        rule: String,
        create_token: String,
    },
    #[error(
        "{call}: no dedicated server {service} in this account (HTTP 404: {message}). Check the service name \
         (`GET /dedicated/server` lists yours, e.g. ns1234567.ip-1-2-3.eu) and the endpoint ({endpoint})"
    )]
    UnknownServer {
        call: String,
        service: String,
        message: String,
        endpoint: String,
    },
    #[error(
        "{call}: a task is already running on {service} (HTTP 409 {code}: {message}). Wait for it to end or cancel it \
         (GET /dedicated/server/{service}/task?status=doing lists it), then run kiln again{retried}"
    )]
    Busy {
        call: String,
        service: String,
        code: String,
        message: String,
        retried: String,
    },
    #[error(
        "{call}: {service} cannot install BYOLinux (byolinux_64): {detail}. BYOLinux needs a dedicated server whose \
         compatible templates include byolinux_64 (GET /dedicated/server/{service}/install/compatibleTemplates)"
    )]
    NotByolinux {
        call: String,
        service: String,
        detail: String,
    },
    #[error(
        "{call}: OVH says the request's time is wrong (HTTP {status} {code}: {message}); this machine's clock is \
         {offset} s off the API's. Fix the clock (NTP: `timedatectl set-ntp true`) and run again"
    )]
    Clock {
        call: String,
        status: u16,
        code: String,
        message: String,
        offset: i64,
    },
    #[error("{call}: OVH refused the request (HTTP {status} {code}: {message})")]
    Refused {
        call: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "{call}: OVH's API failed {attempts} time(s), the last with HTTP {status}: {message}. OVH may be having \
         trouble: try again later"
    )]
    Server {
        call: String,
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("{call}: no answer from {base} after {attempts} attempt(s): {detail}")]
    Connection {
        call: String,
        base: String,
        attempts: u32,
        detail: String,
    },
    #[error("{call}: the answer is not what the API describes: {detail}")]
    Invalid { call: String, detail: String },
    #[error("interrupted")]
    Interrupted,
}

/// How patiently 5xx answers and dropped connections are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): base, 2×base, 4×base…, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap)
    }
}

/// A request ready to send: what `--dry-run` prints.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: &'static str,
    pub url: String,
    pub body: String,
    /// The authentication headers (and Content-Type with a body).
    pub headers: Vec<(&'static str, String)>,
}

impl Prepared {
    /// The request as text with the consumer key and signature masked.
    pub fn display_masked(&self, body: Option<&Value>) -> String {
        let mut s = format!("{} {}\n", self.method, self.url);
        for (k, v) in &self.headers {
            let v = match *k {
                "X-Ovh-Consumer" | "X-Ovh-Signature" => mask(v),
                _ => v.clone(),
            };
            s.push_str(&format!("{k}: {v}\n"));
        }
        if let Some(b) = body {
            s.push('\n');
            s.push_str(&serde_json::to_string_pretty(&super::reinstall::masked(b)).unwrap_or_default());
            s.push('\n');
        }
        s
    }
}

/// Signs and sends requests for one set of credentials.
pub struct Client {
    agent: ureq::Agent,
    creds: Credentials,
    /// API time minus local time, in seconds.
    offset: i64,
    pub retry: RetryPolicy,
    /// The serviceName the calls are about, for messages.
    service: String,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Beyond this, a clock offset is worth a warning.
pub const CLOCK_WARNING_SECONDS: i64 = 30;

impl Client {
    /// A client that signs with the local clock, and contacts nothing (`--dry-run`).
    pub fn offline(creds: Credentials, service: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(Some(Duration::from_secs(120)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            agent,
            creds,
            offset: 0,
            retry: RetryPolicy::default(),
            service: service.to_owned(),
        }
    }

    /// A client whose clock is the API's: asks `GET /auth/time` (unsigned).
    pub fn connect(creds: Credentials, service: &str, retry: RetryPolicy) -> Result<Self, ApiError> {
        let mut c = Client::offline(creds, service);
        c.retry = retry;
        let before = now();
        let answer = c.send("GET", "/auth/time", None, false, "GET /auth/time")?;
        let server = answer.as_i64().ok_or_else(|| ApiError::Invalid {
            call: "GET /auth/time".into(),
            detail: format!("expected the API's time as a number, got {answer}"),
        })?;
        c.offset = server - before;
        Ok(c)
    }

    /// API time minus this machine's, in seconds.
    pub fn clock_offset(&self) -> i64 {
        self.offset
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Signs a request for now (API time).
    pub fn prepare(&self, method: &'static str, path: &str, body: Option<&Value>) -> Prepared {
        let url = format!("{}{path}", self.creds.base_url);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut headers = sign::headers(&self.creds, method, &url, &body, now() + self.offset);
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json;charset=utf-8".into()));
        }
        Prepared {
            method,
            url,
            body,
            headers,
        }
    }

    /// A signed call. `rule` is the access rule it needs, for the 403 advice.
    pub fn call(&self, method: &'static str, path: &str, body: Option<&Value>, rule: &str) -> Result<Value, ApiError> {
        self.send(method, path, body, true, rule)
    }

    fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
        signed: bool,
        rule: &str,
    ) -> Result<Value, ApiError> {
        let call = format!("{method} {path}");
        let mut attempt = 0;
        let mut retried_after_answer = false;
        loop {
            attempt += 1;
            if kiln_exec::interrupted() {
                return Err(ApiError::Interrupted);
            }
            // Signed afresh each time: a signature is only valid briefly.
            let prepared = self.prepare(method, path, body);
            let started = Instant::now();
            let outcome = self.send_once(&prepared, signed);
            match outcome {
                Ok((status, text)) => {
                    tracing::debug!(
                        "ovh: {method} {} -> HTTP {status} ({:.2}s)",
                        prepared.url,
                        started.elapsed().as_secs_f64()
                    );
                    if status < 300 {
                        return serde_json::from_str(&text).or_else(|e| {
                            if text.trim().is_empty() {
                                Ok(Value::Null)
                            } else {
                                Err(ApiError::Invalid {
                                    call: call.clone(),
                                    detail: format!("{e}: {}", text.chars().take(200).collect::<String>()),
                                })
                            }
                        });
                    }
                    let (code, message) = error_fields(&text);
                    if status >= 500 {
                        if attempt < self.retry.max_attempts {
                            tracing::warn!(
                                "ovh: {call}: HTTP {status} ({message}); retrying in {:.0}s",
                                self.retry.delay(attempt).as_secs_f64()
                            );
                            retried_after_answer = true;
                        } else {
                            return Err(ApiError::Server {
                                call,
                                status,
                                message,
                                attempts: attempt,
                            });
                        }
                    } else {
                        return Err(self.classify(call, status, code, message, rule, retried_after_answer));
                    }
                }
                Err(e) => {
                    tracing::debug!("ovh: {method} {}: {e}", prepared.url);
                    // A name that does not resolve will not resolve on a retry.
                    // ureq reports getaddrinfo's failure as an I/O error whose
                    // only mark is std's message.
                    let unresolved = matches!(e, ureq::Error::HostNotFound)
                        || matches!(&e, ureq::Error::Io(io) if io.to_string().contains("failed to lookup address"));
                    if attempt >= self.retry.max_attempts || unresolved {
                        let detail = if unresolved {
                            format!(
                                "{e}: is the endpoint ({}) right, and is the network up?",
                                self.creds.endpoint
                            )
                        } else {
                            e.to_string()
                        };
                        return Err(ApiError::Connection {
                            call,
                            base: self.creds.base_url.clone(),
                            attempts: attempt,
                            detail,
                        });
                    }
                    tracing::warn!("ovh: {call}: {e}; retrying");
                    retried_after_answer |= !matches!(e, ureq::Error::ConnectionFailed);
                }
            }
            let until = Instant::now() + self.retry.delay(attempt);
            while Instant::now() < until {
                if kiln_exec::interrupted() {
                    return Err(ApiError::Interrupted);
                }
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
            }
        }
    }

    fn send_once(&self, p: &Prepared, signed: bool) -> Result<(u16, String), ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(p.method)
            .uri(&p.url)
            .header("Accept", "application/json");
        for (k, v) in &p.headers {
            if signed || *k == "X-Ovh-Application" {
                builder = builder.header(*k, v.as_str());
            }
        }
        let request = builder
            .body(p.body.clone().into_bytes())
            .map_err(|e| ureq::Error::BadUri(e.to_string()))?;
        let mut response = self.agent.run(request)?;
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(4 << 20).read_to_string()?;
        Ok((status, text))
    }

    fn classify(
        &self,
        call: String,
        status: u16,
        code: String,
        message: String,
        rule: &str,
        retried: bool,
    ) -> ApiError {
        let create_token = self.creds.create_token_url();
        let service = self.service.clone();
        let lower = message.to_lowercase();
        let credentials = || ApiError::Credentials {
            call: call.clone(),
            status,
            code: code.clone(),
            message: message.clone(),
            create_token: create_token.clone(),
        };
        match (status, code.as_str()) {
            (400 | 401 | 403, "INVALID_KEY" | "INVALID_CREDENTIAL" | "NOT_CREDENTIAL" | "INVALID_SIGNATURE") => {
                credentials()
            }
            (400, "QUERY_TIME_OUT") => ApiError::Clock {
                call,
                status,
                code,
                message,
                offset: self.offset,
            },
            (400, _) if lower.contains("out of time") || lower.contains("timestamp") => ApiError::Clock {
                call,
                status,
                code,
                message,
                offset: self.offset,
            },
            (401, _) => credentials(),
            (403, c) if c.contains("OperatingSystemLicense") => ApiError::Refused {
                call,
                status,
                code,
                message,
            },
            (403, _) => ApiError::Forbidden {
                call,
                code,
                message,
                rule: rule.to_owned(),
                create_token,
            },
            (404 | 409, c) if c.contains("OperatingSystem") => ApiError::NotByolinux {
                call,
                service,
                detail: format!("HTTP {status} {code}: {message}"),
            },
            (404, _) => ApiError::UnknownServer {
                call,
                service,
                message,
                endpoint: self.creds.base_url.clone(),
            },
            (409, _) => ApiError::Busy {
                call,
                service,
                code,
                message,
                retried: if retried {
                    " (an earlier attempt of this call got no clear answer: it may have started the install itself; look at the task list first)".into()
                } else {
                    String::new()
                },
            },
            _ => ApiError::Refused {
                call,
                status,
                code,
                message,
            },
        }
    }
}

/// The error's class or code, and message, from an OVH error body
/// (`{"class": …, "message": …}` or `{"errorCode": …, "message": …}`).
pub fn error_fields(text: &str) -> (String, String) {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = v["errorCode"]
        .as_str()
        .or_else(|| v["class"].as_str())
        .unwrap_or("")
        .to_owned();
    let message = v["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect::<String>().trim().to_owned());
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovh::api::config::Secret;

    fn client() -> Client {
        Client::offline(
            Credentials {
                endpoint: "ovh-eu".into(),
                base_url: "https://eu.api.ovh.com/1.0".into(),
                application_key: "ak".into(),
                application_secret: Secret::new("as"),
                consumer_key: Secret::new("consumerkey-0123456789"),
            },
            "ns1.example",
        )
    }

    #[test]
    fn error_answers_become_advice() {
        let c = client();
        let rule = "POST /dedicated/server/*/reinstall";
        let classify = |status, body: &str| {
            let (code, message) = error_fields(body);
            c.classify("POST /x".into(), status, code, message, rule, false)
                .to_string()
        };
        let cases = [
            (
                401,
                r#"{"errorCode":"NOT_CREDENTIAL","message":"You must login first"}"#,
                "OVH refused the credentials",
            ),
            (
                403,
                r#"{"errorCode":"INVALID_CREDENTIAL","message":"This credential is not valid"}"#,
                "revoked or expired",
            ),
            (
                400,
                r#"{"errorCode":"INVALID_KEY","message":"Invalid application key"}"#,
                "eu.api.ovh.com/createToken/",
            ),
            (
                403,
                r#"{"errorCode":"NOT_GRANTED_CALL","message":"This call has not been granted"}"#,
                "lacks the access rule `POST /dedicated/server/*/reinstall`",
            ),
            (
                404,
                r#"{"class":"Client::NotFound","message":"The requested object (serviceName = ns1.example) does not exist"}"#,
                "no dedicated server ns1.example in this account",
            ),
            (
                409,
                r#"{"class":"Client::Conflict::TaskAlreadyExists","message":"A task is already running"}"#,
                "a task is already running on ns1.example",
            ),
            (
                409,
                r#"{"class":"Client::Conflict::OperatingSystemIncompatible","message":"byolinux_64 is not compatible"}"#,
                "cannot install BYOLinux",
            ),
            (
                400,
                r#"{"errorCode":"QUERY_TIME_OUT","message":"Query out of time"}"#,
                "Fix the clock",
            ),
            (
                400,
                r#"{"class":"Client::BadRequest::HostnameInvalidFormat","message":"bad hostname"}"#,
                "OVH refused the request (HTTP 400 Client::BadRequest::HostnameInvalidFormat: bad hostname)",
            ),
            (418, "teapot", "HTTP 418 : teapot"),
        ];
        for (status, body, want) in cases {
            let got = classify(status, body);
            assert!(got.contains(want), "{status} {body}: {got}");
            assert!(!got.contains("consumerkey-0123456789"), "{got}");
        }
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let r = RetryPolicy::default();
        let waits: Vec<u64> = (1..=8).map(|a| r.delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_dry_run_shows_no_secret() {
        let c = client();
        let body = serde_json::json!({"operatingSystem": "byolinux_64",
            "customizations": {"imageURL": "https://x/i.qcow2", "httpHeaders": {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}}});
        let p = c.prepare("POST", "/dedicated/server/ns1.example/reinstall", Some(&body));
        let text = p.display_masked(Some(&body));
        assert!(
            text.starts_with("POST https://eu.api.ovh.com/1.0/dedicated/server/ns1.example/reinstall\n"),
            "{text}"
        );
        assert!(text.contains("X-Ovh-Application: ak\n"), "{text}");
        assert!(text.contains("X-Ovh-Consumer: cons****\n"), "{text}");
        assert!(text.contains("X-Ovh-Signature: $1$"), "{text}");
        for secret in ["consumerkey-0123456789", "dXNlcjpwYXNzd29yZA", p.headers[3].1.as_str()] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
