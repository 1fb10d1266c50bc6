//! A small AWS client for the handful of calls `kiln publish aws` makes:
//! requests signed with SigV4 (AWS's `aws-sigv4` crate), sent with ureq,
//! retried with exponential backoff and full jitter on throttling, 5xx and
//! connection errors, and errors turned into the service's own code and
//! message (EC2's XML, EBS's JSON). Non-goals: pagination helpers,
//! streaming bodies, any service beyond EC2 and EBS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};

use super::config::{Credentials, Endpoints};

/// The two services kiln talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ec2,
    Ebs,
}

impl Service {
    fn signing_name(self) -> &'static str {
        match self {
            Service::Ec2 => "ec2",
            Service::Ebs => "ebs",
        }
    }
}

/// Whether a request may be sent again after a reply was lost: repeating it
/// must not do the work twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotent {
    Yes,
    /// Retried only when the service said it did nothing (throttled, 503)
    /// or the connection was never made.
    No,
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service answered with an error.
    #[error("{operation}: {code}: {message} (HTTP {status}{request_id})")]
    Service {
        operation: String,
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    /// The endpoint's host name does not resolve.
    #[error("{operation}: cannot resolve {host}: {detail}; is the region right, and is the network up?")]
    Resolve {
        operation: String,
        host: String,
        detail: String,
    },
    /// No answer: refused, dropped, timed out.
    #[error("{operation}: no answer from {endpoint} after {attempts} attempt(s): {detail}")]
    Connection {
        operation: String,
        endpoint: String,
        attempts: u32,
        detail: String,
    },
    #[error("{operation}: signing the request: {detail}")]
    Signing { operation: String, detail: String },
    #[error("interrupted")]
    Interrupted,
}

impl CallError {
    /// The service's error code, if it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the credentials were refused (unknown key, bad signature,
    /// expired token).
    pub fn is_auth(&self) -> bool {
        matches!(
            self.code(),
            Some(
                "AuthFailure"
                    | "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "UnrecognizedClientException"
                    | "InvalidAccessKeyId"
                    | "ExpiredToken"
                    | "ExpiredTokenException"
                    | "AccessDeniedException"
                    | "UnauthorizedOperation"
                    | "AccessDenied"
            )
        )
    }
}

/// Codes that mean "slow down, nothing was done".
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "SlowDown",
];
/// Codes of transient server trouble.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServerException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
];

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The longest wait before attempt `attempt + 1` (exponential, capped);
    /// the actual wait is uniform in [0, this] ("full jitter").
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        exp.min(self.cap)
    }

    fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(jitter())
    }
}

/// The headers SigV4 adds to a request (`authorization`, `x-amz-date`,
/// the session token, and `x-amz-content-sha256` when `content_sha` is set),
/// for a body whose SHA-256 is `payload` (hex).
#[allow(clippy::too_many_arguments)]
pub fn sign_headers(
    credentials: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    payload: &str,
    time: SystemTime,
    content_sha: bool,
) -> Result<Vec<(String, String)>, String> {
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "kiln",
    )
    .into();
    let mut settings = SigningSettings::default();
    if content_sha {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Precomputed(payload.to_owned()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What a status and error code say about retrying.
fn retryable_answer(status: u16, code: &str, idempotent: Idempotent) -> bool {
    let refused = status == 429 || status == 503 || THROTTLING.contains(&code);
    let transient = matches!(status, 500 | 502 | 504) || TRANSIENT.contains(&code);
    refused || (transient && idempotent == Idempotent::Yes)
}

/// One request.
pub struct Request<'a> {
    pub service: Service,
    /// For messages: "EBS PutSnapshotBlock".
    pub operation: &'a str,
    pub method: &'static str,
    /// Path and query, starting with `/`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
    /// SHA-256 of `body`, hex, when the caller has it already.
    pub body_sha256: Option<String>,
    pub idempotent: Idempotent,
}

/// A successful answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Signs and sends requests for one account and region.
pub struct Client {
    agent: ureq::Agent,
    credentials: Credentials,
    region: String,
    endpoints: Endpoints,
    pub retry: RetryPolicy,
    /// Bytes put on the wire: request lines, headers and bodies, retries included.
    sent: AtomicU64,
    /// Retries made, all calls together.
    retries: AtomicU64,
    /// Set while a failed publish cleans up: Ctrl-C must not stop that.
    interrupts_ignored: std::sync::atomic::AtomicBool,
}

impl Client {
    pub fn new(credentials: Credentials, region: String, endpoints: Endpoints, connections: usize) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .max_idle_connections_per_host(connections.max(1) + 2)
            .max_idle_connections(connections.max(1) + 8)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
            credentials,
            region,
            endpoints,
            retry: RetryPolicy::default(),
            sent: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            interrupts_ignored: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether calls go on after an interruption (while cleaning up).
    pub fn ignore_interrupts(&self, ignore: bool) {
        self.interrupts_ignored.store(ignore, Ordering::SeqCst);
    }

    fn interrupted(&self) -> bool {
        kiln_exec::interrupted() && !self.interrupts_ignored.load(Ordering::SeqCst)
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Bytes sent so far (an estimate of what went on the wire: request
    /// line, headers, body).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    fn base(&self, service: Service) -> &str {
        match service {
            Service::Ec2 => &self.endpoints.ec2,
            Service::Ebs => &self.endpoints.ebs,
        }
    }

    /// Sends `req`, retrying what may be retried; an error answer becomes
    /// [`CallError::Service`].
    pub fn call(&self, req: &Request<'_>) -> Result<Response, CallError> {
        let url = format!("{}{}", self.base(req.service), req.path);
        let payload = req
            .body_sha256
            .clone()
            .unwrap_or_else(|| hex::encode(Sha256::digest(req.body)));
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.interrupted() {
                return Err(CallError::Interrupted);
            }
            let headers = self.signed_headers(req, &url, &payload)?;
            let outcome = self.send_once(req, &url, &headers);
            match outcome {
                Ok(resp) if resp.status < 300 => return Ok(resp.into_response()),
                Ok(resp) => {
                    let err = service_error(req.operation, resp.status, &resp.body, resp.error_type.as_deref());
                    let code = err.code().unwrap_or_default().to_owned();
                    if attempt < self.retry.max_attempts && retryable_answer(resp.status, &code, req.idempotent) {
                        tracing::debug!("{}: {err}; retrying", req.operation);
                    } else {
                        return Err(err);
                    }
                }
                Err(e) => {
                    let detail = e.to_string();
                    if let ureq::Error::HostNotFound = e {
                        return Err(CallError::Resolve {
                            operation: req.operation.to_owned(),
                            host: host_of(&url),
                            detail,
                        });
                    }
                    // A connection never made sent nothing; anything later
                    // may have reached the service.
                    let unsent = matches!(e, ureq::Error::ConnectionFailed);
                    let may_retry = unsent || req.idempotent == Idempotent::Yes;
                    if attempt < self.retry.max_attempts && may_retry {
                        tracing::debug!("{}: {detail}; retrying", req.operation);
                    } else {
                        return Err(CallError::Connection {
                            operation: req.operation.to_owned(),
                            endpoint: self.base(req.service).to_owned(),
                            attempts: attempt,
                            detail,
                        });
                    }
                }
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            let wait = self.retry.delay(attempt);
            let until = std::time::Instant::now() + wait;
            while std::time::Instant::now() < until {
                if self.interrupted() {
                    return Err(CallError::Interrupted);
                }
                std::thread::sleep((until - std::time::Instant::now()).min(Duration::from_millis(100)));
            }
        }
    }

    fn signed_headers(&self, req: &Request<'_>, url: &str, payload: &str) -> Result<Vec<(String, String)>, CallError> {
        let signing = |detail: String| CallError::Signing {
            operation: req.operation.to_owned(),
            detail,
        };
        let mut headers = req.headers.clone();
        headers.extend(
            sign_headers(
                &self.credentials,
                &self.region,
                req.service.signing_name(),
                req.method,
                url,
                &req.headers,
                payload,
                SystemTime::now(),
                true,
            )
            .map_err(signing)?,
        );
        Ok(headers)
    }

    fn send_once(
        &self,
        req: &Request<'_>,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<RawResponse, ureq::Error> {
        let mut builder = ureq::http::Request::builder().method(req.method).uri(url);
        let mut size = req.method.len() + url.len() + 12 + req.body.len();
        for (k, v) in headers {
            builder = builder.header(k.as_str(), v.as_str());
            size += k.len() + v.len() + 4;
        }
        // Host, User-Agent, Content-Length and Accept, which ureq adds.
        size += 120;
        let request = builder
            .body(req.body.to_vec())
            .map_err(|e| ureq::Error::BadUri(e.to_string()))?;
        self.sent.fetch_add(size as u64, Ordering::Relaxed);
        let mut response = self.agent.run(request)?;
        let status = response.status().as_u16();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.body_mut().with_config().limit(16 << 20).read_to_vec()?;
        Ok(RawResponse {
            status,
            body,
            error_type,
        })
    }
}

struct RawResponse {
    status: u16,
    body: Vec<u8>,
    error_type: Option<String>,
}

impl From<RawResponse> for Response {
    fn from(r: RawResponse) -> Self {
        Response {
            status: r.status,
            body: r.body,
        }
    }
}

impl RawResponse {
    fn into_response(self) -> Response {
        self.into()
    }
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// The error in an answer: EC2's `<Response><Errors><Error><Code>`, an AWS
/// XML `<ErrorResponse><Error>` or `<Error>`, or a JSON body's `message`
/// with the code from `x-amzn-ErrorType` or `__type`.
pub fn service_error(operation: &str, status: u16, body: &[u8], error_type: Option<&str>) -> CallError {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    let (mut code, mut message, mut request_id) = (None, None, None);
    if trimmed.starts_with('<') {
        if let Ok(doc) = roxmltree::Document::parse(trimmed) {
            let find = |name: &str| {
                doc.descendants()
                    .find(|n| n.tag_name().name() == name)
                    .and_then(|n| n.text())
                    .map(|t| t.trim().to_owned())
            };
            code = find("Code");
            message = find("Message");
            request_id = find("RequestID").or_else(|| find("RequestId"));
        }
    } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(trimmed) {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        message = s("message").or_else(|| s("Message"));
        code = s("__type").or_else(|| s("code")).or_else(|| s("Code"));
        if let Some(reason) = s("Reason") {
            message = Some(format!("{} ({reason})", message.unwrap_or_default()));
        }
    }
    let header_code = error_type.map(|t| t.split(':').next().unwrap_or(t).to_owned());
    let code = code
        .or(header_code)
        .map(|c| c.rsplit('#').next().unwrap_or(&c).to_owned())
        .unwrap_or_else(|| match status {
            429 => "TooManyRequests".to_owned(),
            503 => "ServiceUnavailable".to_owned(),
            _ => format!("HTTP{status}"),
        });
    let message = message.unwrap_or_else(|| {
        let mut m: String = trimmed.chars().take(300).collect();
        if m.is_empty() {
            m = "(empty answer)".into();
        }
        m
    });
    CallError::Service {
        operation: operation.to_owned(),
        status,
        code,
        message,
        request_id: request_id.map(|r| format!(", request {r}")).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_errors_give_code_and_message() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InvalidAMIName.Duplicate</Code><Message>AMI name debian-12 is already in use by AMI ami-0123456789abcdef0</Message></Error></Errors><RequestID>59dbff89-35bd-4eac-99ed-be587EXAMPLE</RequestID></Response>"#;
        let e = service_error("EC2 RegisterImage", 400, body, None);
        assert_eq!(e.code(), Some("InvalidAMIName.Duplicate"));
        assert_eq!(
            e.to_string(),
            "EC2 RegisterImage: InvalidAMIName.Duplicate: AMI name debian-12 is already in use by AMI ami-0123456789abcdef0 (HTTP 400, request 59dbff89-35bd-4eac-99ed-be587EXAMPLE)"
        );
        let auth = br#"<Response><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message></Error></Errors><RequestID>x</RequestID></Response>"#;
        assert!(service_error("EC2 DescribeImages", 401, auth, None).is_auth());
        // The generic AWS shape (IAM, STS, moto's auth errors).
        let generic = br#"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error><RequestId>r</RequestId></ErrorResponse>"#;
        let e = service_error("EBS StartSnapshot", 403, generic, None);
        assert!(e.is_auth(), "{e}");
    }

    #[test]
    fn ebs_errors_give_code_and_message() {
        let body = br#"{"message":"The snapshot 'snap-1' does not exist.","Reason":"SNAPSHOT_NOT_FOUND"}"#;
        let e = service_error(
            "EBS PutSnapshotBlock",
            404,
            body,
            Some("ResourceNotFoundException:http://internal.amazon.com/coral/com.amazon.coral.validate/"),
        );
        assert_eq!(e.code(), Some("ResourceNotFoundException"));
        assert!(e.to_string().contains("does not exist. (SNAPSHOT_NOT_FOUND)"), "{e}");
        let typed = br#"{"__type":"com.amazon.coral.service#ThrottlingException","message":"Rate exceeded"}"#;
        assert_eq!(service_error("x", 400, typed, None).code(), Some("ThrottlingException"));
        assert_eq!(service_error("x", 503, b"", None).code(), Some("ServiceUnavailable"));
        assert_eq!(service_error("x", 418, b"<html>", None).code(), Some("HTTP418"));
    }

    #[test]
    fn what_is_retried() {
        use Idempotent::*;
        for (status, code, idem, retried) in [
            (400, "ThrottlingException", No, true),
            (400, "RequestLimitExceeded", No, true),
            (429, "TooManyRequests", No, true),
            (503, "ServiceUnavailable", No, true),
            (500, "InternalError", Yes, true),
            (500, "InternalError", No, false),
            (502, "HTTP502", Yes, true),
            (400, "ValidationException", Yes, false),
            (401, "AuthFailure", Yes, false),
            (400, "InvalidAMIName.Duplicate", No, false),
        ] {
            assert_eq!(
                retryable_answer(status, code, idem),
                retried,
                "{status} {code} {idem:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_it() {
        let p = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (1..=6).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        let delays: Vec<Duration> = (0..50).map(|_| p.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 40, "jitter varies");
    }

    /// AWS's published SigV4 test suite (as shipped in aws-sigv4's
    /// `aws-signing-test-suite/v4`): `get-vanilla` and
    /// `post-x-www-form-urlencoded`; then a session token is signed too.
    #[test]
    fn signs_the_aws_test_vectors() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            source: "test".into(),
        };
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 20150830T123600Z
        let empty = hex::encode(Sha256::digest(b""));
        let headers = sign_headers(
            &creds,
            "us-east-1",
            "service",
            "GET",
            "https://example.amazonaws.com/",
            &[],
            &empty,
            time,
            false,
        )
        .unwrap();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("x-amz-date").as_deref(), Some("20150830T123600Z"));
        assert_eq!(
            get("authorization").as_deref(),
            Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        // post-x-www-form-urlencoded (a signed body, so x-amz-content-sha256).
        let body = b"Param1=value1";
        let form = vec![
            (
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("Content-Length".to_owned(), "13".to_owned()),
        ];
        let headers = sign_headers(
            &creds,
            "us-east-1",
            "service",
            "POST",
            "https://example.amazonaws.com/",
            &form,
            &hex::encode(Sha256::digest(body)),
            time,
            true,
        )
        .unwrap();
        let auth = headers.iter().find(|(k, _)| k == "authorization").unwrap().1.clone();
        assert!(
            auth.ends_with("SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"),
            "{auth}"
        );
        let with_token = Credentials {
            session_token: Some("AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==".into()),
            ..creds
        };
        let headers = sign_headers(
            &with_token,
            "us-east-1",
            "service",
            "GET",
            "https://example.amazonaws.com/",
            &[],
            &empty,
            time,
            true,
        )
        .unwrap();
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            names.contains(&"x-amz-security-token") && names.contains(&"x-amz-content-sha256"),
            "{names:?}"
        );
        let auth = headers.iter().find(|(k, _)| k == "authorization").unwrap().1.clone();
        assert!(
            auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"),
            "{auth}"
        );
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            host_of("https://ebs.mars-1.amazonaws.com/snapshots"),
            "ebs.mars-1.amazonaws.com"
        );
        assert_eq!(host_of("http://127.0.0.1:5000/?Action=x"), "127.0.0.1:5000");
    }
}
