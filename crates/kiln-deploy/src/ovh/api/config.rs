//! OVH API credentials, found where OVHcloud's own clients look for them:
//! the variables `OVH_ENDPOINT`, `OVH_APPLICATION_KEY`,
//! `OVH_APPLICATION_SECRET`, `OVH_CONSUMER_KEY`, else `ovh.conf` files
//! (`/etc/ovh.conf`, then `~/.ovh.conf`, then `./ovh.conf`, each later file
//! overriding the earlier ones key by key, as python-ovh's ConfigParser
//! reads them): `[default] endpoint=ovh-eu` and the keys in the endpoint's
//! own section. Each variable wins over every file, key by key.
//! Non-goals: OAuth2 client credentials, creating consumer keys.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// OVHcloud's API endpoints by the names its clients use.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("ovh-eu", "https://eu.api.ovh.com/1.0"),
    ("ovh-ca", "https://ca.api.ovh.com/1.0"),
    ("ovh-us", "https://api.us.ovhcloud.com/1.0"),
    ("kimsufi-eu", "https://eu.api.kimsufi.com/1.0"),
    ("kimsufi-ca", "https://ca.api.kimsufi.com/1.0"),
    ("soyoustart-eu", "https://eu.api.soyoustart.com/1.0"),
    ("soyoustart-ca", "https://ca.api.soyoustart.com/1.0"),
];

/// A secret: its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The value, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(&self.0))
    }
}

/// Shows at most the first 4 characters of a secret of 12 or more, none of a shorter one.
pub fn mask(s: &str) -> String {
    if s.chars().count() >= 12 {
        format!("{}****", s.chars().take(4).collect::<String>())
    } else {
        "****".into()
    }
}

/// Everything needed to sign requests.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The endpoint as configured: a name (`ovh-eu`) or a URL.
    pub endpoint: String,
    /// Its base URL, without a trailing `/`: `https://eu.api.ovh.com/1.0`.
    pub base_url: String,
    pub application_key: String,
    pub application_secret: Secret,
    pub consumer_key: Secret,
}

impl Credentials {
    /// Where keys for this endpoint are made (`…/createToken/`).
    pub fn create_token_url(&self) -> String {
        create_token_url(&self.base_url)
    }
}

fn create_token_url(base_url: &str) -> String {
    format!("{}/createToken/", base_url.trim_end_matches("/1.0"))
}

/// What a process sees: its `OVH_*` variables and the configuration files
/// that exist, in increasing priority.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub vars: BTreeMap<String, String>,
    pub files: Vec<PathBuf>,
}

impl Environment {
    /// This process's variables, and the files python-ovh reads.
    pub fn from_process() -> Self {
        let vars = std::env::vars().filter(|(k, _)| k.starts_with("OVH_")).collect();
        let mut files = vec![PathBuf::from("/etc/ovh.conf")];
        if let Some(home) = std::env::var_os("HOME") {
            files.push(Path::new(&home).join(".ovh.conf"));
        }
        files.push(PathBuf::from("ovh.conf"));
        Environment { vars, files }
    }
}

/// Credentials that could not be found or make no sense.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// A parsed INI file: sections of lower-cased keys.
type Ini = BTreeMap<String, BTreeMap<String, String>>;

/// Parses what python's RawConfigParser reads in an `ovh.conf`: `[section]`
/// headers, `key = value` or `key: value` (keys case-insensitive), `#` and
/// `;` comment lines. Hand-written: the format is these few lines, and no
/// INI crate reads exactly python's dialect either.
fn parse_ini(text: &str, file: &Path, into: &mut Ini) -> Result<(), ConfigError> {
    let mut section: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_owned());
            into.entry(name.trim().to_owned()).or_default();
            continue;
        }
        let at = || format!("{}:{}", file.display(), n + 1);
        let Some(sep) = line.find(['=', ':']) else {
            return Err(ConfigError(format!(
                "{}: expected `key = value` or a [section], got {line:?}",
                at()
            )));
        };
        let Some(sec) = &section else {
            return Err(ConfigError(format!(
                "{}: `{}` comes before any [section] header",
                at(),
                line[..sep].trim()
            )));
        };
        let (key, value) = (line[..sep].trim().to_lowercase(), line[sep + 1..].trim().to_owned());
        into.entry(sec.clone()).or_default().insert(key, value);
    }
    Ok(())
}

/// The base URL of an endpoint given by name or URL.
pub fn resolve_endpoint(endpoint: &str) -> Result<String, ConfigError> {
    if let Some((_, url)) = ENDPOINTS.iter().find(|(name, _)| *name == endpoint) {
        return Ok((*url).to_owned());
    }
    if endpoint.starts_with("https://") || endpoint.starts_with("http://") {
        return Ok(endpoint.trim_end_matches('/').to_owned());
    }
    let names: Vec<&str> = ENDPOINTS.iter().map(|(n, _)| *n).collect();
    Err(ConfigError(format!(
        "unknown OVH endpoint {endpoint:?}: use one of {} or a URL such as https://eu.api.ovh.com/1.0",
        names.join(", ")
    )))
}

/// Finds the credentials: each of the four values from its `OVH_*`
/// variable, else from the files; an error names every value missing and
/// where it may be set.
pub fn load(env: &Environment) -> Result<Credentials, ConfigError> {
    let mut ini = Ini::new();
    let mut read = Vec::new();
    for file in &env.files {
        match std::fs::read_to_string(file) {
            Ok(text) => {
                parse_ini(&text, file, &mut ini)?;
                read.push(file.display().to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConfigError(format!("reading {}: {e}", file.display()))),
        }
    }
    let places = {
        let all: Vec<String> = env.files.iter().map(|f| f.display().to_string()).collect();
        let found = if read.is_empty() {
            "none of them exists".to_owned()
        } else {
            format!("read: {}", read.join(", "))
        };
        format!("{} ({found})", all.join(", "))
    };
    let lookup = |section: &str, key: &str| {
        env.vars
            .get(&format!("OVH_{}", key.to_uppercase()))
            .filter(|v| !v.is_empty())
            .cloned()
            .or_else(|| {
                ini.get(section)
                    .and_then(|s| s.get(key))
                    .filter(|v| !v.is_empty())
                    .cloned()
            })
    };
    let endpoint = lookup("default", "endpoint").ok_or_else(|| {
        ConfigError(format!(
            "no OVH API endpoint: set OVH_ENDPOINT (e.g. ovh-eu) or `endpoint=` in the [default] section of an ovh.conf; looked in {places}"
        ))
    })?;
    let base_url = resolve_endpoint(&endpoint)?;
    let keys = ["application_key", "application_secret", "consumer_key"];
    let values: Vec<Option<String>> = keys.iter().map(|k| lookup(&endpoint, k)).collect();
    let missing: Vec<&str> = keys
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        let vars: Vec<String> = missing.iter().map(|k| format!("OVH_{}", k.to_uppercase())).collect();
        let lines: Vec<String> = missing.iter().map(|k| format!("{k}=")).collect();
        return Err(ConfigError(format!(
            "missing OVH credentials for endpoint {endpoint}: {}. Set {}, or {} in the [{endpoint}] section of an ovh.conf (looked in {places}). \
             Make the keys at {} with the rights GET /dedicated/server/*, POST /dedicated/server/*/reinstall",
            missing.join(", "),
            vars.join(", "),
            lines.join(", "),
            create_token_url(&base_url),
        )));
    }
    let mut it = values.into_iter().flatten();
    let (ak, secret, ck) = (it.next(), it.next(), it.next());
    Ok(Credentials {
        endpoint,
        base_url,
        application_key: ak.unwrap_or_default(),
        application_secret: Secret::new(secret.unwrap_or_default()),
        consumer_key: Secret::new(ck.unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], files: &[(&Path, &str)]) -> Environment {
        for (path, text) in files {
            std::fs::write(path, text).unwrap();
        }
        Environment {
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            files: files.iter().map(|(p, _)| p.to_path_buf()).collect(),
        }
    }

    #[test]
    fn variables_alone_suffice() {
        let c = load(&env(
            &[
                ("OVH_ENDPOINT", "ovh-ca"),
                ("OVH_APPLICATION_KEY", "ak"),
                ("OVH_APPLICATION_SECRET", "as"),
                ("OVH_CONSUMER_KEY", "ck"),
            ],
            &[],
        ))
        .unwrap();
        assert_eq!(c.base_url, "https://ca.api.ovh.com/1.0");
        assert_eq!(
            (
                c.application_key.as_str(),
                c.application_secret.expose(),
                c.consumer_key.expose()
            ),
            ("ak", "as", "ck")
        );
        assert_eq!(c.create_token_url(), "https://ca.api.ovh.com/createToken/");
    }

    #[test]
    fn files_merge_key_by_key_and_variables_win() {
        let dir = tempfile::tempdir().unwrap();
        let (etc, home, cwd) = (
            dir.path().join("etc.conf"),
            dir.path().join("home.conf"),
            dir.path().join("cwd.conf"),
        );
        let e = env(
            &[("OVH_CONSUMER_KEY", "ck-from-env")],
            &[
                (
                    &etc,
                    "[default]\nendpoint=kimsufi-eu\n[kimsufi-eu]\napplication_key=etc-ak\napplication_secret=etc-as\n",
                ),
                (
                    &home,
                    "; a comment\n[kimsufi-eu]\nApplication_Secret : home-as\nconsumer_key = home-ck\n",
                ),
                (&cwd, "# nothing for this endpoint\n[ovh-eu]\napplication_key=other\n"),
            ],
        );
        let c = load(&e).unwrap();
        assert_eq!(c.base_url, "https://eu.api.kimsufi.com/1.0");
        assert_eq!(c.application_key, "etc-ak");
        assert_eq!(c.application_secret.expose(), "home-as");
        assert_eq!(c.consumer_key.expose(), "ck-from-env");
    }

    #[test]
    fn an_endpoint_may_be_a_url_and_its_section_is_that_url() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ovh.conf");
        let c = load(&env(
            &[],
            &[(
                &f,
                "[default]\nendpoint=http://127.0.0.1:8080/1.0/\n[http://127.0.0.1:8080/1.0/]\napplication_key=a\napplication_secret=b\nconsumer_key=c\n",
            )],
        ))
        .unwrap();
        assert_eq!(c.base_url, "http://127.0.0.1:8080/1.0");
        assert!(resolve_endpoint("ovh-mars")
            .unwrap_err()
            .to_string()
            .contains("ovh-eu, ovh-ca, ovh-us, kimsufi-eu"));
    }

    #[test]
    fn every_missing_value_is_named_with_where_to_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("absent.conf");
        let e = Environment {
            vars: BTreeMap::new(),
            files: vec![none.clone()],
        };
        let err = load(&e).unwrap_err().to_string();
        assert!(err.contains("no OVH API endpoint: set OVH_ENDPOINT"), "{err}");
        assert!(err.contains("none of them exists"), "{err}");

        let e = env(&[("OVH_ENDPOINT", "ovh-eu"), ("OVH_APPLICATION_KEY", "ak")], &[]);
        let err = load(&e).unwrap_err().to_string();
        assert!(
            err.contains("missing OVH credentials for endpoint ovh-eu: application_secret, consumer_key"),
            "{err}"
        );
        assert!(err.contains("OVH_APPLICATION_SECRET, OVH_CONSUMER_KEY"), "{err}");
        assert!(err.contains("https://eu.api.ovh.com/createToken/"), "{err}");
        assert!(err.contains("POST /dedicated/server/*/reinstall"), "{err}");
    }

    #[test]
    fn a_malformed_file_is_located() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ovh.conf");
        let err = load(&env(&[], &[(&f, "[default]\nendpoint ovh-eu\n")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ovh.conf:2: expected `key = value`"), "{err}");
        let err = load(&env(&[], &[(&f, "endpoint=ovh-eu\n")])).unwrap_err().to_string();
        assert!(
            err.contains("ovh.conf:1: `endpoint` comes before any [section]"),
            "{err}"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("abcdefghijklmnop");
        assert_eq!(format!("{s:?}"), "Secret(****)");
        assert_eq!(s.to_string(), "abcd****");
        assert_eq!(Secret::new("short").to_string(), "****");
    }
}
