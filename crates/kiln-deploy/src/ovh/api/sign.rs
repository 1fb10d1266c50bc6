//! OVH's request signature (API v1): `$1$` followed by the hex SHA-1 of
//! the application secret, the consumer key, the upper-case method, the
//! full URL (query included), the exact body sent and the timestamp,
//! joined with `+`. The timestamp is the API's clock (local time plus the
//! offset learnt from `GET /auth/time`), so a machine whose clock is off
//! still signs valid requests.

use sha1::{Digest, Sha1};

use super::config::Credentials;

/// The `X-Ovh-Signature` value.
pub fn signature(
    application_secret: &str,
    consumer_key: &str,
    method: &str,
    url: &str,
    body: &str,
    timestamp: i64,
) -> String {
    let text = [
        application_secret,
        consumer_key,
        &method.to_uppercase(),
        url,
        body,
        &timestamp.to_string(),
    ]
    .join("+");
    format!("$1${}", hex::encode(Sha1::digest(text.as_bytes())))
}

/// The authentication headers of one request, in the order the official
/// clients send them.
pub fn headers(c: &Credentials, method: &str, url: &str, body: &str, timestamp: i64) -> Vec<(&'static str, String)> {
    vec![
        ("X-Ovh-Application", c.application_key.clone()),
        ("X-Ovh-Consumer", c.consumer_key.expose().to_owned()),
        ("X-Ovh-Timestamp", timestamp.to_string()),
        (
            "X-Ovh-Signature",
            signature(
                c.application_secret.expose(),
                c.consumer_key.expose(),
                method,
                url,
                body,
                timestamp,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovh::api::config::{resolve_endpoint, Secret};
    use serde_json::Value;

    const TABLE: &str = include_str!("testdata/signatures.json");

    fn check_against(table: &[Value]) {
        assert!(table.len() >= 5);
        for case in table {
            let s = |k: &str| case[k].as_str().unwrap().to_owned();
            let base = resolve_endpoint(&s("endpoint")).unwrap();
            let url = format!("{base}{}", s("path"));
            assert_eq!(url, s("url"), "{case}");
            let c = Credentials {
                endpoint: s("endpoint"),
                base_url: base,
                application_key: s("application_key"),
                application_secret: Secret::new(s("application_secret")),
                consumer_key: Secret::new(s("consumer_key")),
            };
            let ts = case["timestamp"].as_i64().unwrap();
            let got: serde_json::Map<String, Value> = headers(&c, &s("method"), &url, &s("sent_body"), ts)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect();
            assert_eq!(Value::Object(got), case["headers"], "{case}");
        }
    }

    /// kiln's signatures equal the official Python client's, recorded in
    /// testdata/signatures.json by testdata/sign.py from
    /// testdata/signature-cases.json.
    #[test]
    fn signatures_match_the_official_clients_table() {
        let table: Vec<Value> = serde_json::from_str(TABLE).unwrap();
        check_against(&table);
    }

    /// The same, with the table made afresh by the Python client now (PyPI
    /// `ovh` in /opt/kiln-test/venv, which scripts/install-deps.sh makes;
    /// or $KILN_OVH_PYTHON): the committed table is not stale and kiln
    /// agrees with the client as installed.
    #[test]
    fn signatures_match_the_official_client_run_now() {
        let Some(python) = crate::ovh::api::oracle_python("ovh", "PyPI `ovh`") else {
            return;
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ovh/api/testdata/sign.py");
        #[allow(clippy::disallowed_methods)] // the oracle, outside kiln's tool registry
        let mut child = std::process::Command::new(&python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(include_bytes!("testdata/signature-cases.json"))
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{script} failed");
        let fresh: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let table: Vec<Value> = serde_json::from_str(TABLE).unwrap();
        assert_eq!(
            fresh, table,
            "the official client now signs differently from the committed table"
        );
        check_against(&fresh);
    }

    #[test]
    fn any_change_changes_the_signature() {
        let base = signature("s", "c", "get", "https://x/1.0/a", "", 1);
        assert_eq!(base, signature("s", "c", "GET", "https://x/1.0/a", "", 1));
        for other in [
            signature("t", "c", "GET", "https://x/1.0/a", "", 1),
            signature("s", "d", "GET", "https://x/1.0/a", "", 1),
            signature("s", "c", "POST", "https://x/1.0/a", "", 1),
            signature("s", "c", "GET", "https://x/1.0/b", "", 1),
            signature("s", "c", "GET", "https://x/1.0/a", "{}", 1),
            signature("s", "c", "GET", "https://x/1.0/a", "", 2),
        ] {
            assert_ne!(base, other);
        }
        assert!(base.starts_with("$1$") && base.len() == 43, "{base}");
    }
}
