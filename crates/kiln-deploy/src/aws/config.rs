//! Where the credentials, the region and the endpoints come from: the
//! standard chain of the AWS CLI and SDKs, minus the parts that need a
//! network or another program. In order: `--profile` (if given) names a
//! profile; else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (with
//! `AWS_SESSION_TOKEN`); else the profile `AWS_PROFILE` or `default`, in the
//! shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//! `~/.aws/credentials`), then in the config file (`AWS_CONFIG_FILE`, else
//! `~/.aws/config`, sections `[profile NAME]` and `[default]`). Non-goals:
//! SSO, assumed roles, `credential_process`, instance and container metadata
//! credentials (a profile that needs them is refused, saying what to do).
//!
//! The region: `--region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's
//! `region` in the config file. A region must be one kiln knows unless an
//! endpoint is given (`--endpoint-url` or `AWS_ENDPOINT_URL`): a typo then
//! fails before anything is sent, with the nearest name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Signing credentials, and where they were found (for messages).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no AWS credentials found; looked in:\n{0}\nset AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add the profile to the credentials file (`aws configure`)")]
    NoCredentials(String),
    #[error("{0}")]
    Incomplete(String),
    #[error("profile `{profile}` ({file}) gets its credentials through {how}, which kiln does not support; export them first: eval \"$(aws configure export-credentials --profile {profile} --format env)\"")]
    Unsupported { profile: String, file: String, how: String },
    #[error("no AWS region: pass --region, or set AWS_REGION, or `region` in the profile `{profile}` of {file}")]
    NoRegion { profile: String, file: String },
    #[error("`{region}` is not an AWS region kiln knows{hint}; for a region newer than this kiln, or another EC2-compatible service, pass --endpoint-url")]
    UnknownRegion { region: String, hint: String },
    #[error("--endpoint-url {0}: expected http:// or https:// followed by a host")]
    BadEndpoint(String),
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// What the chain reads, gathered once so that tests can give their own.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub vars: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

const VARIABLES: [&str; 10] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "HOME",
];

impl Environment {
    /// The process's environment.
    pub fn from_process() -> Self {
        // Literal names, so the README's table of variables can be checked.
        let read = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => std::env::var("AWS_ACCESS_KEY_ID").ok(),
            "AWS_SECRET_ACCESS_KEY" => std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
            "AWS_SESSION_TOKEN" => std::env::var("AWS_SESSION_TOKEN").ok(),
            "AWS_PROFILE" => std::env::var("AWS_PROFILE").ok(),
            "AWS_SHARED_CREDENTIALS_FILE" => std::env::var("AWS_SHARED_CREDENTIALS_FILE").ok(),
            "AWS_CONFIG_FILE" => std::env::var("AWS_CONFIG_FILE").ok(),
            "AWS_REGION" => std::env::var("AWS_REGION").ok(),
            "AWS_DEFAULT_REGION" => std::env::var("AWS_DEFAULT_REGION").ok(),
            "AWS_ENDPOINT_URL" => std::env::var("AWS_ENDPOINT_URL").ok(),
            "HOME" => std::env::var("HOME").ok(),
            _ => None,
        };
        let vars: BTreeMap<String, String> = VARIABLES
            .iter()
            .filter_map(|&n| read(n).filter(|v| !v.is_empty()).map(|v| (n.to_owned(), v)))
            .collect();
        let home = vars.get("HOME").map(PathBuf::from);
        Environment { vars, home }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn file(&self, var: &str, default: &str) -> PathBuf {
        match self.var(var) {
            Some(p) => expand_home(p, self.home.as_deref()),
            None => self
                .home
                .clone()
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(default),
        }
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")
    }

    pub fn config_file(&self) -> PathBuf {
        self.file("AWS_CONFIG_FILE", ".aws/config")
    }

    /// The profile in use: `--profile`, else `AWS_PROFILE`, else `default`.
    pub fn profile(&self, flag: Option<&str>) -> String {
        flag.or(self.var("AWS_PROFILE")).unwrap_or("default").to_owned()
    }
}

fn expand_home(p: &str, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(p),
    }
}

/// Sections of an INI file, each a map of keys (lower case) to values.
pub type Ini = BTreeMap<String, BTreeMap<String, String>>;

/// An INI file as the AWS tools write it: `[section]`, `key = value`,
/// comments with `#` or `;`. Indented lines (nested settings such as
/// `s3 =`'s) are skipped.
pub fn parse_ini(text: &str) -> Ini {
    let mut sections = Ini::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    sections
}

/// A file's sections, or what happened when it was looked for.
fn read_ini(path: &Path) -> Result<Option<Ini>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(parse_ini(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The section of `profile` in the config file.
fn config_section(profile: &str) -> String {
    if profile == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile}")
    }
}

/// Resolves the credentials along the chain (see the module's header).
pub fn credentials(env: &Environment, profile_flag: Option<&str>) -> Result<Credentials, ConfigError> {
    let mut looked = Vec::new();
    if profile_flag.is_none() {
        match (env.var("AWS_ACCESS_KEY_ID"), env.var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                return Ok(Credentials {
                    access_key_id: id.to_owned(),
                    secret_access_key: secret.to_owned(),
                    session_token: env.var("AWS_SESSION_TOKEN").map(str::to_owned),
                    source: "environment (AWS_ACCESS_KEY_ID)".to_owned(),
                })
            }
            (Some(_), None) => {
                return Err(ConfigError::Incomplete(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Incomplete(
                    "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
                ))
            }
            (None, None) => {
                looked.push("  - environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set".to_owned())
            }
        }
    } else {
        looked.push("  - environment: not used, --profile was given".to_owned());
    }
    let profile = env.profile(profile_flag);
    for (path, section) in [
        (env.credentials_file(), profile.clone()),
        (env.config_file(), config_section(&profile)),
    ] {
        let shown = path.display().to_string();
        let Some(sections) = read_ini(&path)? else {
            looked.push(format!("  - {shown} [{section}]: no such file"));
            continue;
        };
        let Some(keys) = sections.get(&section) else {
            looked.push(format!("  - {shown}: no [{section}] section"));
            continue;
        };
        match (keys.get("aws_access_key_id"), keys.get("aws_secret_access_key")) {
            (Some(id), Some(secret)) => {
                return Ok(Credentials {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    session_token: keys.get("aws_session_token").cloned(),
                    source: format!("{shown} [{section}]"),
                })
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Incomplete(format!(
                    "{shown} [{section}] has only one of aws_access_key_id and aws_secret_access_key"
                )))
            }
            (None, None) => {}
        }
        for (key, how) in [
            ("role_arn", "an assumed role (role_arn)"),
            ("sso_session", "IAM Identity Center (sso_session)"),
            ("sso_start_url", "IAM Identity Center (sso_start_url)"),
            ("credential_process", "credential_process"),
            ("web_identity_token_file", "web identity (web_identity_token_file)"),
            ("login_session", "a console login session (login_session)"),
        ] {
            if keys.contains_key(key) {
                return Err(ConfigError::Unsupported {
                    profile,
                    file: shown,
                    how: how.to_owned(),
                });
            }
        }
        looked.push(format!("  - {shown} [{section}]: no aws_access_key_id"));
    }
    Err(ConfigError::NoCredentials(looked.join("\n")))
}

/// Resolves the region: `--region`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the
/// profile's `region`.
pub fn region(env: &Environment, flag: Option<&str>, profile_flag: Option<&str>) -> Result<String, ConfigError> {
    if let Some(r) = flag.or(env.var("AWS_REGION")).or(env.var("AWS_DEFAULT_REGION")) {
        return Ok(r.to_owned());
    }
    let profile = env.profile(profile_flag);
    let path = env.config_file();
    let from_file =
        read_ini(&path)?.and_then(|s| s.get(&config_section(&profile)).and_then(|k| k.get("region").cloned()));
    from_file.ok_or(ConfigError::NoRegion {
        profile,
        file: path.display().to_string(),
    })
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub ec2: String,
    pub ebs: String,
    /// Set when the user chose the endpoint (both services share it).
    pub custom: bool,
}

/// The endpoints for `region`, or the one given: `--endpoint-url`, else
/// `AWS_ENDPOINT_URL`. Without one, `region` must be known.
pub fn endpoints(env: &Environment, region: &str, flag: Option<&str>) -> Result<Endpoints, ConfigError> {
    if let Some(url) = flag.or(env.var("AWS_ENDPOINT_URL")) {
        let url = url.trim_end_matches('/');
        let host = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
            return Err(ConfigError::BadEndpoint(url.to_owned()));
        }
        return Ok(Endpoints {
            ec2: url.to_owned(),
            ebs: url.to_owned(),
            custom: true,
        });
    }
    if !REGIONS.contains(&region) {
        let nearest = REGIONS
            .iter()
            .map(|r| (strsim_distance(r, region), r))
            .min()
            .filter(|(d, _)| *d <= 3)
            .map(|(_, r)| format!(" (did you mean `{r}`?)"))
            .unwrap_or_default();
        return Err(ConfigError::UnknownRegion {
            region: region.to_owned(),
            hint: nearest,
        });
    }
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    Ok(Endpoints {
        ec2: format!("https://ec2.{region}.{domain}"),
        ebs: format!("https://ebs.{region}.{domain}"),
        custom: false,
    })
}

/// Levenshtein distance, for "did you mean".
fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The regions with EC2 and the EBS direct APIs, as of this kiln (2025).
pub const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-south-1",
    "ap-south-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-south-1",
    "eu-south-2",
    "eu-north-1",
    "il-central-1",
    "me-south-1",
    "me-central-1",
    "mx-central-1",
    "sa-east-1",
    "us-gov-east-1",
    "us-gov-west-1",
    "cn-north-1",
    "cn-northwest-1",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], home: &Path) -> Environment {
        Environment {
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            home: Some(home.to_owned()),
        }
    }

    fn aws_dir(credentials: &str, config: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), credentials).unwrap();
        std::fs::write(home.path().join(".aws/config"), config).unwrap();
        home
    }

    const CREDENTIALS: &str = "\
# written by aws configure
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = secret-default

[ci]
aws_access_key_id=AKIACI
aws_secret_access_key=secret-ci
aws_session_token = token-ci
";
    const CONFIG: &str = "\
[default]
region = eu-west-3
[profile ci]
region = us-west-2
s3 =
  max_concurrent_requests = 20
[profile cfgonly]
aws_access_key_id = AKIACFG
aws_secret_access_key = secret-cfg
[profile sso]
sso_session = corp
";

    #[test]
    fn the_environment_comes_first_then_profiles() {
        let home = aws_dir(CREDENTIALS, CONFIG);
        let e = env(
            &[("AWS_ACCESS_KEY_ID", "AKIAENV"), ("AWS_SECRET_ACCESS_KEY", "s")],
            home.path(),
        );
        let c = credentials(&e, None).unwrap();
        assert_eq!((c.access_key_id.as_str(), c.session_token), ("AKIAENV", None));
        // --profile overrides the environment, as in the AWS CLI.
        let c = credentials(&e, Some("ci")).unwrap();
        assert_eq!(c.access_key_id, "AKIACI");
        assert_eq!(c.session_token.as_deref(), Some("token-ci"));
        assert!(c.source.ends_with(".aws/credentials [ci]"), "{}", c.source);
        let plain = env(&[], home.path());
        assert_eq!(credentials(&plain, None).unwrap().access_key_id, "AKIADEFAULT");
        let by_var = env(&[("AWS_PROFILE", "ci")], home.path());
        assert_eq!(credentials(&by_var, None).unwrap().access_key_id, "AKIACI");
        // Keys in the config file's [profile X] count too.
        assert_eq!(credentials(&plain, Some("cfgonly")).unwrap().access_key_id, "AKIACFG");
        // The secret never shows in debug output.
        assert!(!format!("{c:?}").contains("secret-ci"));
    }

    #[test]
    fn missing_credentials_say_where_kiln_looked() {
        let home = tempfile::tempdir().unwrap();
        let err = credentials(&env(&[], home.path()), None).unwrap_err().to_string();
        assert!(
            err.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"),
            "{err}"
        );
        assert!(err.contains(".aws/credentials [default]: no such file"), "{err}");
        assert!(err.contains(".aws/config [default]: no such file"), "{err}");
        let home = aws_dir(CREDENTIALS, CONFIG);
        let err = credentials(&env(&[], home.path()), Some("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no [nope] section") && err.contains("no [profile nope] section"),
            "{err}"
        );
        let half = env(&[("AWS_ACCESS_KEY_ID", "AKIA")], home.path());
        assert!(credentials(&half, None)
            .unwrap_err()
            .to_string()
            .contains("AWS_SECRET_ACCESS_KEY is not"));
        let err = credentials(&env(&[], home.path()), Some("sso"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("IAM Identity Center") && err.contains("export-credentials"),
            "{err}"
        );
    }

    #[test]
    fn files_can_be_moved_by_variables() {
        let home = aws_dir("", "");
        let other = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(other.path(), CREDENTIALS).unwrap();
        let e = env(
            &[("AWS_SHARED_CREDENTIALS_FILE", other.path().to_str().unwrap())],
            home.path(),
        );
        assert_eq!(credentials(&e, None).unwrap().access_key_id, "AKIADEFAULT");
    }

    #[test]
    fn region_from_flag_variables_then_profile() {
        let home = aws_dir(CREDENTIALS, CONFIG);
        let e = env(&[], home.path());
        assert_eq!(region(&e, None, None).unwrap(), "eu-west-3");
        assert_eq!(region(&e, None, Some("ci")).unwrap(), "us-west-2");
        assert_eq!(region(&e, Some("ap-south-1"), Some("ci")).unwrap(), "ap-south-1");
        let v = env(&[("AWS_DEFAULT_REGION", "sa-east-1")], home.path());
        assert_eq!(region(&v, None, None).unwrap(), "sa-east-1");
        let v = env(
            &[("AWS_DEFAULT_REGION", "sa-east-1"), ("AWS_REGION", "eu-north-1")],
            home.path(),
        );
        assert_eq!(region(&v, None, None).unwrap(), "eu-north-1");
        let err = region(&e, None, Some("cfgonly")).unwrap_err().to_string();
        assert!(err.contains("no AWS region") && err.contains("--region"), "{err}");
    }

    #[test]
    fn unknown_regions_are_refused_unless_an_endpoint_is_given() {
        let e = Environment::default();
        let err = endpoints(&e, "eu-wset-1", None).unwrap_err().to_string();
        assert!(
            err.contains("`eu-wset-1` is not an AWS region") && err.contains("did you mean `eu-west-1`?"),
            "{err}"
        );
        let ok = endpoints(&e, "eu-west-1", None).unwrap();
        assert_eq!(ok.ebs, "https://ebs.eu-west-1.amazonaws.com");
        assert_eq!(ok.ec2, "https://ec2.eu-west-1.amazonaws.com");
        assert_eq!(
            endpoints(&e, "cn-north-1", None).unwrap().ec2,
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
        let moto = endpoints(&e, "mars-1", Some("http://127.0.0.1:5000/")).unwrap();
        assert_eq!((moto.ec2.as_str(), moto.custom), ("http://127.0.0.1:5000", true));
        assert!(endpoints(&e, "us-east-1", Some("127.0.0.1:5000")).is_err());
    }

    #[test]
    fn ini_parsing() {
        let s = parse_ini("[a]\nk = v = w\n; c\n#c\n[ profile  x ]\n  nested = 1\nK2=2\n");
        assert_eq!(s["a"]["k"], "v = w");
        assert_eq!(s["profile x"]["k2"], "2");
        assert!(!s["profile x"].contains_key("nested"));
    }
}
