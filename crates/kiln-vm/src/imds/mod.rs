//! A local EC2 instance metadata service (IMDS) for `kiln boot --imds`:
//! the guest finds it at 169.254.169.254:80 as on EC2, through a guest
//! forward of QEMU's isolated user network in 169.254.0.0/16 to a server
//! on the host's 127.0.0.1 that lives as long as the boot.
//!
//! It answers as EC2 does with IMDSv2 required ("IMDSv1 off"): a token from
//! `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//! (1 to 21600, else 400; a PUT that carries `X-Forwarded-For` is refused
//! with 403, as EC2 refuses a token to anything behind a proxy), and every
//! GET without a valid, unexpired `X-aws-ec2-metadata-token` gets 401.
//! The tree is what Debian 12's cloud-init (22.4, `DataSourceEc2`) crawls:
//! `meta-data/` with its subtrees (listings end subtrees with `/`;
//! `public-keys/` lists `0=kiln`), `dynamic/instance-identity/document`
//! (whose `instanceId`, `region` and `availabilityZone` cloud-init prefers
//! on AWS), and `user-data` (404 when there is none), under `latest` and
//! the dated versions cloud-init tries (`2021-03-23`, `2018-09-24`,
//! `2016-09-02`, `2009-04-04`, ...). `network/interfaces/macs/<mac>/`
//! describes the one NIC (cloud-init renders its network configuration
//! from it, matching the MAC), so the [`Instance`] gives the guest that MAC
//! and expects the address QEMU's DHCP server gives (169.254.2.15).
//!
//! cloud-init believes it runs on AWS (and only then uses IMDSv2) when the
//! DMI system UUID starts with `ec2` and equals the system serial number:
//! [`Instance::smbios`] gives the machine the identity of a Nitro
//! instance, whose instance id it derives from that UUID.
//!
//! Every request is recorded (method, path, status, why it was refused)
//! for the verdict and logged at debug level. [`guest`] has the other
//! side of a verdict: user data that makes the guest report what it got,
//! and the check of that report.
//! Non-goals: IAM credentials, signed identity documents (`pkcs7`,
//! `signature`), IPv6 (`[fd00:ec2::254]`), the hop limit, spot and
//! scheduled events, tags.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use uuid::Uuid;

use crate::error::{Result, VmError};
use crate::network::{GuestForward, Isolated, Mac, Network, Subnet};
use crate::qemu::Smbios;

pub mod guest;

/// Where the guest finds the service, as on EC2.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const PORT: u16 = 80;

/// The header that carries a token on every GET.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The header that asks for a token's lifetime, in seconds.
pub const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// The longest lifetime EC2 grants a token (6 hours).
pub const MAX_TTL_SECONDS: u64 = 21_600;
/// The path of the token request.
pub const TOKEN_PATH: &str = "/latest/api/token";

/// The metadata versions served (all with the same tree): `latest`, the
/// ones cloud-init asks for, and the older dates EC2 lists.
const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "latest",
];

/// What EC2 writes as the vendor in the SMBIOS tables of its instances.
const VENDOR: &str = "Amazon EC2";

/// The instance that the service describes and the VM plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-0` and 16 hex digits, the end of [`Instance::uuid`].
    pub instance_id: String,
    /// The machine's SMBIOS UUID and serial number: starts with `ec2`.
    pub uuid: Uuid,
    pub instance_type: String,
    /// Its last letter dropped, the region.
    pub availability_zone: String,
    pub image_id: String,
    pub account_id: String,
    /// The NIC's address, locally administered.
    pub mac: Mac,
    /// The guest's network; it gets [`Subnet::guest`] by DHCP.
    pub subnet: Subnet,
    /// OpenSSH public keys: `public-keys/N/openssh-key`.
    pub ssh_keys: Vec<String>,
    /// `user-data`; 404 when `None`.
    pub user_data: Option<Vec<u8>>,
}

impl Instance {
    /// A new instance (fresh ids, so cloud-init treats the boot as a first
    /// boot): a t3.micro in us-east-1a with these keys and user data.
    pub fn new(ssh_keys: Vec<String>, user_data: Option<Vec<u8>>) -> anyhow::Result<Instance> {
        for key in &ssh_keys {
            crate::seed::check_ssh_key(key)?;
        }
        Ok(Instance::from_uuid(Uuid::new_v4(), ssh_keys, user_data))
    }

    /// An instance whose ids all derive from `uuid` (its first three hex
    /// digits become `ec2`).
    pub fn from_uuid(uuid: Uuid, ssh_keys: Vec<String>, user_data: Option<Vec<u8>>) -> Instance {
        let mut b = *uuid.as_bytes();
        b[0] = 0xec;
        b[1] = 0x20 | (b[1] & 0x0f);
        let uuid = Uuid::from_bytes(b);
        Instance {
            instance_id: format!("i-0{}", hex(&b[8..16])),
            uuid,
            instance_type: "t3.micro".to_owned(),
            availability_zone: "us-east-1a".to_owned(),
            image_id: format!("ami-0{}", hex(&b[0..8])),
            account_id: "123456789012".to_owned(),
            mac: Mac::new([0x02, b[11], b[12], b[13], b[14], b[15]]).expect("0x02 is unicast"),
            subnet: Subnet::LINK_LOCAL,
            ssh_keys: ssh_keys.into_iter().map(|k| k.trim().to_owned()).collect(),
            user_data,
        }
    }

    pub fn region(&self) -> &str {
        let az = &self.availability_zone;
        az.strip_suffix(|c: char| c.is_ascii_lowercase()).unwrap_or(az)
    }

    /// The guest's address.
    pub fn local_ipv4(&self) -> Ipv4Addr {
        self.subnet.guest()
    }

    /// EC2's private DNS name: `ip-169-254-2-15.ec2.internal` in us-east-1,
    /// `ip-….REGION.compute.internal` elsewhere.
    pub fn local_hostname(&self) -> String {
        let ip = self.local_ipv4().to_string().replace('.', "-");
        match self.region() {
            "us-east-1" => format!("ip-{ip}.ec2.internal"),
            region => format!("ip-{ip}.{region}.compute.internal"),
        }
    }

    /// A Nitro instance's SMBIOS identity: vendor "Amazon EC2", the
    /// instance type as product, the UUID as UUID and serial (what
    /// cloud-init checks), the instance id as board asset tag.
    pub fn smbios(&self) -> Smbios {
        Smbios {
            vendor: VENDOR.to_owned(),
            product: self.instance_type.clone(),
            serial: self.uuid.to_string(),
            uuid: self.uuid,
            board_asset_tag: self.instance_id.clone(),
            chassis_asset_tag: VENDOR.to_owned(),
        }
    }

    /// The guest's network when the service listens on 127.0.0.1:`port`:
    /// isolated, in [`Instance::subnet`], with the instance's MAC and
    /// 169.254.169.254:80 forwarded to the service.
    pub fn network(&self, port: u16) -> Result<Network> {
        let isolated = Isolated::in_subnet(self.subnet)
            .mac(self.mac)
            .guest_forward(GuestForward {
                addr: ADDRESS,
                port: PORT,
                host_port: port,
            })?;
        Ok(Network::Isolated(isolated))
    }

    /// The instance identity document (unsigned).
    fn identity_document(&self) -> String {
        let doc = serde_json::json!({
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": null,
            "devpayProductCodes": null,
            "marketplaceProductCodes": null,
            "imageId": self.image_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": null,
            "privateIp": self.local_ipv4().to_string(),
            "ramdiskId": null,
            "region": self.region(),
            "version": "2017-09-30",
        });
        serde_json::to_string_pretty(&doc).expect("a JSON value serialises")
    }

    /// What one version serves: `meta-data/`, `dynamic/` and `user-data`.
    fn tree(&self) -> Node {
        let b = self.uuid.as_bytes();
        let id = |prefix: &str, from: usize| format!("{prefix}-0{}", hex(&b[from..from + 8]));
        let hostname = self.local_hostname();
        let ip = self.local_ipv4().to_string();
        let cidr = self.subnet.to_string();
        let mac = self.mac.to_string();
        let nic = Node::dir([
            ("device-number", Node::leaf("0")),
            ("interface-id", Node::leaf(id("eni", 2))),
            ("local-hostname", Node::leaf(&hostname)),
            ("local-ipv4s", Node::leaf(&ip)),
            ("mac", Node::leaf(&mac)),
            ("owner-id", Node::leaf(&self.account_id)),
            ("security-group-ids", Node::leaf(id("sg", 3))),
            ("security-groups", Node::leaf("default")),
            ("subnet-id", Node::leaf(id("subnet", 4))),
            ("subnet-ipv4-cidr-block", Node::leaf(&cidr)),
            ("vpc-id", Node::leaf(id("vpc", 5))),
            ("vpc-ipv4-cidr-block", Node::leaf(&cidr)),
            ("vpc-ipv4-cidr-blocks", Node::leaf(&cidr)),
        ]);
        let keys: BTreeMap<String, Node> = self
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, key)| (i.to_string(), Node::dir([("openssh-key", Node::leaf(key))])))
            .collect();
        // `N=name`: cloud-init fetches `N/openssh-key` for each.
        let key_listing = (0..self.ssh_keys.len())
            .map(|i| format!("{i}={}", key_name(i)))
            .collect::<Vec<_>>()
            .join("\n");
        let mut meta_data = Node::dir([
            ("ami-id", Node::leaf(&self.image_id)),
            ("ami-launch-index", Node::leaf("0")),
            ("ami-manifest-path", Node::leaf("(unknown)")),
            (
                "block-device-mapping",
                Node::dir([("ami", Node::leaf("/dev/xvda")), ("root", Node::leaf("/dev/xvda"))]),
            ),
            ("hostname", Node::leaf(&hostname)),
            ("instance-action", Node::leaf("none")),
            ("instance-id", Node::leaf(&self.instance_id)),
            ("instance-life-cycle", Node::leaf("on-demand")),
            ("instance-type", Node::leaf(&self.instance_type)),
            ("local-hostname", Node::leaf(&hostname)),
            ("local-ipv4", Node::leaf(&ip)),
            ("mac", Node::leaf(&mac)),
            (
                "network",
                Node::dir([("interfaces", Node::dir([("macs", Node::dir([(mac.as_str(), nic)]))]))]),
            ),
            (
                "placement",
                Node::dir([
                    ("availability-zone", Node::leaf(&self.availability_zone)),
                    ("region", Node::leaf(self.region())),
                ]),
            ),
            ("profile", Node::leaf("default-hvm")),
            ("reservation-id", Node::leaf(id("r", 6))),
            ("security-groups", Node::leaf("default")),
            (
                "services",
                Node::dir([
                    ("domain", Node::leaf("amazonaws.com")),
                    ("partition", Node::leaf("aws")),
                ]),
            ),
        ]);
        if !self.ssh_keys.is_empty() {
            meta_data.insert(
                "public-keys",
                Node::Dir {
                    entries: keys,
                    listing: Some(key_listing),
                },
            );
        }
        let mut version = Node::dir([
            ("meta-data", meta_data),
            (
                "dynamic",
                Node::dir([(
                    "instance-identity",
                    Node::dir([("document", Node::leaf(self.identity_document()))]),
                )]),
            ),
        ]);
        if let Some(data) = &self.user_data {
            version.insert("user-data", Node::Leaf(data.clone()));
        }
        // EC2 lists a version's top level without slashes.
        if let Node::Dir { entries, listing } = &mut version {
            *listing = Some(entries.keys().cloned().collect::<Vec<_>>().join("\n"));
        }
        version
    }
}

/// The name of the `i`th key pair in `public-keys/`.
fn key_name(i: usize) -> String {
    match i {
        0 => "kiln".to_owned(),
        i => format!("kiln-{i}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node of the metadata tree.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Vec<u8>),
    /// `listing` replaces the generated one (names, subtrees with `/`).
    Dir {
        entries: BTreeMap<String, Node>,
        listing: Option<String>,
    },
}

impl Node {
    fn leaf(text: impl AsRef<str>) -> Node {
        Node::Leaf(text.as_ref().as_bytes().to_vec())
    }

    fn dir<const N: usize>(entries: [(&str, Node); N]) -> Node {
        Node::Dir {
            entries: entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            listing: None,
        }
    }

    fn insert(&mut self, name: &str, node: Node) {
        if let Node::Dir { entries, .. } = self {
            entries.insert(name.to_owned(), node);
        }
    }

    fn find(&self, path: &[&str]) -> Option<&Node> {
        match (path.split_first(), self) {
            (None, _) => Some(self),
            (Some((first, rest)), Node::Dir { entries, .. }) => entries.get(*first)?.find(rest),
            (Some(_), Node::Leaf(_)) => None,
        }
    }

    /// What a GET of this node returns.
    fn body(&self) -> Vec<u8> {
        match self {
            Node::Leaf(data) => data.clone(),
            Node::Dir {
                listing: Some(listing), ..
            } => listing.clone().into_bytes(),
            Node::Dir { entries, .. } => entries
                .iter()
                .map(|(name, node)| match node {
                    Node::Dir { .. } => format!("{name}/"),
                    Node::Leaf(_) => name.clone(),
                })
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// A GET without a token (401): an IMDSv1 request.
    NoToken,
    /// A GET with an unknown or expired token (401).
    BadToken,
    /// A token request without a TTL of 1 to 21600 seconds (400).
    BadTtl,
    /// A token request through a proxy (`X-Forwarded-For`, 403).
    Forwarded,
    /// A method the path does not take (405).
    Method,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::NoToken,
        Refusal::BadToken,
        Refusal::BadTtl,
        Refusal::Forwarded,
        Refusal::Method,
    ];

    /// For reports: `no token`, `unknown or expired token`, ...
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::NoToken => "no token",
            Refusal::BadToken => "unknown or expired token",
            Refusal::BadTtl => "bad token TTL",
            Refusal::Forwarded => "X-Forwarded-For",
            Refusal::Method => "method not allowed",
        }
    }

    /// For JSON: `no_token`, `bad_token`, ...
    pub fn key(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::BadToken => "bad_token",
            Refusal::BadTtl => "bad_ttl",
            Refusal::Forwarded => "forwarded",
            Refusal::Method => "method",
        }
    }
}

/// One request the service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    /// As requested, with any query.
    pub path: String,
    pub status: u16,
    pub refusal: Option<Refusal>,
}

impl fmt::Display for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} → {}", self.method, self.path, self.status)?;
        if let Some(r) = self.refusal {
            write!(f, " (refused: {})", r.describe())?;
        }
        Ok(())
    }
}

/// Every request of a boot, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImdsLog {
    /// The instance served.
    pub instance_id: String,
    pub requests: Vec<Served>,
}

impl ImdsLog {
    /// How many requests were refused for this reason.
    pub fn refused(&self, why: Refusal) -> usize {
        self.requests.iter().filter(|r| r.refusal == Some(why)).count()
    }

    /// Whether a GET of `path` was answered with `status`.
    pub fn answered(&self, path: &str, status: u16) -> bool {
        self.requests
            .iter()
            .any(|r| r.method == "GET" && r.path == path && r.status == status)
    }

    /// `23 requests, 2 refused (no token)`, each reason with its count;
    /// `23 requests, none refused`.
    pub fn summary(&self) -> String {
        let n = self.requests.len();
        let mut out = format!("{n} request{}", if n == 1 { "" } else { "s" });
        let refused: Vec<String> = Refusal::ALL
            .iter()
            .map(|&r| (r, self.refused(r)))
            .filter(|&(_, count)| count > 0)
            .map(|(r, count)| format!("{count} refused ({})", r.describe()))
            .collect();
        if refused.is_empty() {
            out.push_str(", none refused");
        } else {
            out.push_str(", ");
            out.push_str(&refused.join(", "));
        }
        out
    }
}

/// A response before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The token's remaining lifetime, sent back in [`TTL_HEADER`].
    ttl: Option<u64>,
    refusal: Option<Refusal>,
}

impl Answer {
    fn ok(body: Vec<u8>, ttl: u64) -> Answer {
        Answer {
            status: 200,
            body,
            ttl: Some(ttl),
            refusal: None,
        }
    }

    fn error(status: u16, refusal: Option<Refusal>) -> Answer {
        let reason = match status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Error",
        };
        // EC2's error bodies are short HTML pages like this one.
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n <head>\n  <title>{status} - {reason}</title>\n </head>\n <body>\n  <h1>{status} - {reason}</h1>\n </body>\n</html>\n"
        );
        Answer {
            status,
            body: body.into_bytes(),
            ttl: None,
            refusal,
        }
    }
}

/// The service's state: the tree, the tokens it gave out, the log.
struct State {
    tree: Node,
    /// Token → when it expires.
    tokens: HashMap<String, Instant>,
    log: ImdsLog,
}

impl State {
    fn new(instance: &Instance) -> State {
        State {
            tree: instance.tree(),
            tokens: HashMap::new(),
            log: ImdsLog {
                instance_id: instance.instance_id.clone(),
                requests: Vec::new(),
            },
        }
    }

    /// Answers `method url`; `header` looks a request header up by name
    /// (case-insensitively).
    fn answer(&mut self, method: &str, url: &str, header: &dyn Fn(&str) -> Option<String>, now: Instant) -> Answer {
        let path = url.split(['?', '#']).next().unwrap_or("");
        if path == TOKEN_PATH {
            return match method {
                "PUT" => self.issue_token(header, now),
                _ => Answer::error(405, Some(Refusal::Method)),
            };
        }
        if method != "GET" && method != "HEAD" {
            return Answer::error(405, Some(Refusal::Method));
        }
        let Some(token) = header(TOKEN_HEADER) else {
            return Answer::error(401, Some(Refusal::NoToken));
        };
        let ttl = match self.tokens.get(token.trim()) {
            Some(&expires) if expires > now => (expires - now).as_secs(),
            _ => return Answer::error(401, Some(Refusal::BadToken)),
        };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let dir_wanted = path.ends_with('/');
        match segments.split_first() {
            None => Answer::ok(VERSIONS.join("\n").into_bytes(), ttl),
            Some((version, _)) if !VERSIONS.contains(version) => Answer::error(404, None),
            Some((_, rest)) => match self.tree.find(rest) {
                Some(Node::Leaf(_)) if dir_wanted => Answer::error(404, None),
                Some(node) => Answer::ok(node.body(), ttl),
                None => Answer::error(404, None),
            },
        }
    }

    fn issue_token(&mut self, header: &dyn Fn(&str) -> Option<String>, now: Instant) -> Answer {
        if header("X-Forwarded-For").is_some() {
            return Answer::error(403, Some(Refusal::Forwarded));
        }
        let ttl = header(TTL_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|t| (1..=MAX_TTL_SECONDS).contains(t));
        let Some(ttl) = ttl else {
            return Answer::error(400, Some(Refusal::BadTtl));
        };
        self.tokens.retain(|_, expires| *expires > now);
        let mut raw = Vec::with_capacity(32);
        raw.extend_from_slice(Uuid::new_v4().as_bytes());
        raw.extend_from_slice(Uuid::new_v4().as_bytes());
        let token = BASE64.encode(raw);
        self.tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        Answer::ok(token.into_bytes(), ttl)
    }
}

/// The running service: a thread serving 127.0.0.1 on a free port.
/// Dropping it (or [`ImdsServer::stop`]) stops it.
pub struct ImdsServer {
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl fmt::Debug for ImdsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImdsServer").field("port", &self.port).finish()
    }
}

impl ImdsServer {
    /// Starts serving `instance`'s metadata on 127.0.0.1 (never another
    /// address: the guest reaches it only through QEMU's forward).
    pub fn start(instance: &Instance) -> Result<ImdsServer> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| VmError::Io {
            context: "starting the metadata service on 127.0.0.1".to_owned(),
            source: std::io::Error::other(e),
        })?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| VmError::Config("the metadata service is not on a TCP port".to_owned()))?;
        let server = Arc::new(server);
        let state = Arc::new(Mutex::new(State::new(instance)));
        let thread = std::thread::Builder::new()
            .name("kiln-imds".to_owned())
            .spawn({
                let server = Arc::clone(&server);
                let state = Arc::clone(&state);
                move || {
                    // Ends when `unblock` is called.
                    for request in server.incoming_requests() {
                        serve(&state, request);
                    }
                }
            })
            .map_err(VmError::io("starting the metadata service's thread"))?;
        tracing::debug!("imds: serving instance {} on 127.0.0.1:{port}", instance.instance_id);
        Ok(ImdsServer {
            server,
            state,
            thread: Some(thread),
            port,
        })
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests so far.
    pub fn log(&self) -> ImdsLog {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).log.clone()
    }

    /// Stops serving and returns every request.
    pub fn stop(mut self) -> ImdsLog {
        self.shutdown();
        self.log()
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.server.unblock();
            let _ = thread.join();
        }
    }
}

impl Drop for ImdsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Answers one request and records it.
fn serve(state: &Mutex<State>, request: tiny_http::Request) {
    let method = request.method().as_str().to_owned();
    let url = request.url().to_owned();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str().to_owned(), h.value.as_str().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let answer = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let answer = state.answer(&method, &url, &header, Instant::now());
        let served = Served {
            method,
            path: url,
            status: answer.status,
            refusal: answer.refusal,
        };
        tracing::debug!("imds: {served}");
        state.log.requests.push(served);
        answer
    };
    let mut response = tiny_http::Response::from_data(answer.body)
        .with_status_code(answer.status)
        .with_header(header_of("Content-Type", "text/plain"))
        .with_header(header_of("Server", "EC2ws"));
    if let Some(ttl) = answer.ttl {
        response.add_header(header_of(TTL_HEADER, &ttl.to_string()));
    }
    if answer.status == 405 {
        response.add_header(header_of("Allow", "GET, HEAD, PUT"));
    }
    // The guest may hang up first; nothing to do about it.
    let _ = request.respond(response);
}

fn header_of(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ6dM1uHnJRJ4qmp5ZAjBWDuAGEzAF4DNt3cGRWr2O6U kiln@test";

    fn instance() -> Instance {
        let uuid: Uuid = "5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5".parse().unwrap();
        Instance::from_uuid(uuid, vec![KEY.to_owned()], Some(b"#cloud-config\n{}\n".to_vec()))
    }

    /// An HTTP client that returns 4xx answers instead of failing on them.
    fn agent() -> ureq::Agent {
        ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
    }

    fn put_token(imds: &ImdsServer, ttl: &str, extra: Option<(&str, &str)>) -> (u16, String, Option<String>) {
        let mut req = agent()
            .put(format!("{}{TOKEN_PATH}", imds.url()))
            .header(TTL_HEADER, ttl);
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        let mut resp = req.send_empty().unwrap();
        let ttl = resp.headers().get(TTL_HEADER).map(|v| v.to_str().unwrap().to_owned());
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap(), ttl)
    }

    fn get(imds: &ImdsServer, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = agent().get(format!("{}{path}", imds.url()));
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        let mut resp = req.call().unwrap();
        (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
    }

    fn token(imds: &ImdsServer) -> String {
        let (status, token, _) = put_token(imds, "21600", None);
        assert_eq!(status, 200);
        token
    }

    #[test]
    fn ids_derive_from_the_uuid() {
        let i = instance();
        assert_eq!(i.uuid.to_string(), "ec2c1d2e-3a4b-4c5d-8e6f-708192a3b4c5");
        assert_eq!(i.instance_id, "i-08e6f708192a3b4c5");
        assert_eq!(i.mac.to_string(), "02:81:92:a3:b4:c5");
        assert_eq!(i.region(), "us-east-1");
        assert_eq!(i.local_ipv4().to_string(), "169.254.2.15");
        assert_eq!(i.local_hostname(), "ip-169-254-2-15.ec2.internal");
        let mut other = i.clone();
        other.availability_zone = "eu-west-3b".to_owned();
        assert_eq!(other.local_hostname(), "ip-169-254-2-15.eu-west-3.compute.internal");
        let fresh = Instance::new(Vec::new(), None).unwrap();
        assert!(fresh.uuid.to_string().starts_with("ec2"), "{}", fresh.uuid);
        assert!(fresh.instance_id.ends_with(&fresh.uuid.simple().to_string()[16..]));
        let smbios = i.smbios();
        assert_eq!(smbios.serial, smbios.uuid.to_string(), "cloud-init wants them equal");
        assert_eq!(smbios.board_asset_tag, i.instance_id);
        assert_eq!(smbios.vendor, "Amazon EC2");
    }

    #[test]
    fn bad_keys_are_refused_before_anything_runs() {
        let err = Instance::new(vec!["ssh-ed25519 nope".to_owned()], None).unwrap_err();
        assert!(err.to_string().contains("does not match its type"), "{err:#}");
    }

    #[test]
    fn the_token_flow() {
        let imds = ImdsServer::start(&instance()).unwrap();
        let (status, token, ttl) = put_token(&imds, "21600", None);
        assert_eq!((status, ttl.as_deref()), (200, Some("21600")));
        assert_eq!(token.len(), 44, "{token}");
        assert_eq!(
            get(&imds, "/latest/meta-data/instance-id", Some(&token)),
            (200, "i-08e6f708192a3b4c5".to_owned())
        );
        // IMDSv1: no token, a made-up one.
        assert_eq!(get(&imds, "/latest/meta-data/instance-id", None).0, 401);
        assert_eq!(get(&imds, "/latest/meta-data/instance-id", Some("AAAA")).0, 401);
        assert_eq!(get(&imds, "/", None).0, 401);
        let log = imds.stop();
        assert_eq!(
            log.summary(),
            "5 requests, 2 refused (no token), 1 refused (unknown or expired token)"
        );
        assert!(log.answered("/latest/meta-data/instance-id", 200));
        assert_eq!(
            log.requests[0].to_string(),
            "PUT /latest/api/token → 200",
            "{:?}",
            log.requests
        );
        assert_eq!(
            log.requests[2].to_string(),
            "GET /latest/meta-data/instance-id → 401 (refused: no token)"
        );
    }

    #[test]
    fn token_ttl_bounds_and_proxies() {
        let imds = ImdsServer::start(&instance()).unwrap();
        for (ttl, want) in [
            ("1", 200),
            ("21600", 200),
            ("0", 400),
            ("21601", 400),
            ("-5", 400),
            ("six hours", 400),
            ("", 400),
        ] {
            assert_eq!(put_token(&imds, ttl, None).0, want, "TTL {ttl:?}");
        }
        let resp = agent().put(format!("{}{TOKEN_PATH}", imds.url())).send_empty().unwrap();
        assert_eq!(resp.status().as_u16(), 400, "no TTL header");
        assert_eq!(put_token(&imds, "60", Some(("X-Forwarded-For", "203.0.113.7"))).0, 403);
        // Only PUT gives a token, and only there.
        let t = token(&imds);
        assert_eq!(get(&imds, TOKEN_PATH, Some(&t)).0, 405);
        let resp = agent()
            .put(format!("{}/latest/meta-data/", imds.url()))
            .header(TTL_HEADER, "60")
            .send_empty()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405);
        let log = imds.stop();
        assert_eq!(log.refused(Refusal::BadTtl), 6);
        assert_eq!(log.refused(Refusal::Forwarded), 1);
        assert_eq!(log.refused(Refusal::Method), 2);
    }

    #[test]
    fn tokens_expire() {
        let imds = ImdsServer::start(&instance()).unwrap();
        let (status, short, _) = put_token(&imds, "1", None);
        assert_eq!(status, 200);
        assert_eq!(get(&imds, "/latest/meta-data/instance-type", Some(&short)).0, 200);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(get(&imds, "/latest/meta-data/instance-type", Some(&short)).0, 401);
        assert_eq!(imds.log().refused(Refusal::BadToken), 1);
    }

    /// What cloud-init 22.4 crawls, and the listings it walks.
    #[test]
    fn the_tree_as_cloud_init_walks_it() {
        let imds = ImdsServer::start(&instance()).unwrap();
        let t = token(&imds);
        let cases: &[(&str, u16, &str)] = &[
            ("/latest/meta-data/instance-id", 200, "i-08e6f708192a3b4c5"),
            ("/2021-03-23/meta-data/instance-id", 200, "i-08e6f708192a3b4c5"),
            ("/2018-09-24/meta-data/instance-id", 200, "i-08e6f708192a3b4c5"),
            ("/2009-04-04/meta-data/instance-id", 200, "i-08e6f708192a3b4c5"),
            ("/1999-01-01/meta-data/instance-id", 404, ""),
            ("/latest/meta-data/instance-type", 200, "t3.micro"),
            ("/latest/meta-data/local-ipv4", 200, "169.254.2.15"),
            ("/latest/meta-data/mac", 200, "02:81:92:a3:b4:c5"),
            ("/latest/meta-data/hostname", 200, "ip-169-254-2-15.ec2.internal"),
            ("/latest/meta-data/local-hostname", 200, "ip-169-254-2-15.ec2.internal"),
            ("/latest/meta-data/placement/availability-zone", 200, "us-east-1a"),
            ("/latest/meta-data/placement/", 200, "availability-zone\nregion"),
            ("/latest/meta-data/placement", 200, "availability-zone\nregion"),
            ("/latest/meta-data/public-keys/", 200, "0=kiln"),
            ("/latest/meta-data/public-keys/0/", 200, "openssh-key"),
            ("/latest/meta-data/public-keys/0/openssh-key", 200, KEY),
            ("/latest/meta-data/public-keys/1/openssh-key", 404, ""),
            ("/latest/meta-data/instance-id/", 404, ""),
            ("/latest/meta-data/nothing-here", 404, ""),
            ("/latest/meta-data/network/interfaces/macs/", 200, "02:81:92:a3:b4:c5/"),
            (
                "/latest/meta-data/network/interfaces/macs/02:81:92:a3:b4:c5/subnet-ipv4-cidr-block",
                200,
                "169.254.0.0/16",
            ),
            (
                "/latest/meta-data/network/interfaces/macs/02:81:92:a3:b4:c5/device-number",
                200,
                "0",
            ),
            ("/latest/user-data", 200, "#cloud-config\n{}\n"),
            ("/latest/", 200, "dynamic\nmeta-data\nuser-data"),
            ("/latest/dynamic/", 200, "instance-identity/"),
            ("/latest/dynamic/instance-identity", 200, "document"),
            ("/latest/meta-data/instance-id?x=1", 200, "i-08e6f708192a3b4c5"),
        ];
        for &(path, status, body) in cases {
            let (got_status, got_body) = get(&imds, path, Some(&t));
            assert_eq!(got_status, status, "{path}: {got_body}");
            if status == 200 {
                assert_eq!(got_body, body, "{path}");
            }
        }
        let (status, listing) = get(&imds, "/latest/meta-data/", Some(&t));
        assert_eq!(status, 200);
        let keys: Vec<&str> = listing.lines().collect();
        for want in [
            "ami-id",
            "block-device-mapping/",
            "hostname",
            "instance-id",
            "instance-type",
            "local-hostname",
            "local-ipv4",
            "mac",
            "network/",
            "placement/",
            "public-keys/",
        ] {
            assert!(keys.contains(&want), "{want} missing from {keys:?}");
        }
        let (status, doc) = get(&imds, "/latest/dynamic/instance-identity/document", Some(&t));
        assert_eq!(status, 200);
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["instanceId"], "i-08e6f708192a3b4c5");
        assert_eq!(doc["region"], "us-east-1");
        assert_eq!(doc["availabilityZone"], "us-east-1a");
        assert_eq!(doc["privateIp"], "169.254.2.15");
        let (status, versions) = get(&imds, "/", Some(&t));
        assert_eq!(status, 200);
        assert!(
            versions.ends_with("2021-03-23\n2021-07-15\n2022-09-24\nlatest"),
            "{versions}"
        );
    }

    #[test]
    fn without_keys_or_user_data_they_are_not_found() {
        let bare = Instance::from_uuid(Uuid::nil(), Vec::new(), None);
        let imds = ImdsServer::start(&bare).unwrap();
        let t = token(&imds);
        assert_eq!(get(&imds, "/latest/user-data", Some(&t)).0, 404);
        assert_eq!(get(&imds, "/latest/meta-data/public-keys/", Some(&t)).0, 404);
        assert_eq!(get(&imds, "/latest/", Some(&t)), (200, "dynamic\nmeta-data".to_owned()));
        let listing = get(&imds, "/latest/meta-data/", Some(&t)).1;
        assert!(!listing.contains("public-keys"), "{listing}");
    }

    #[test]
    fn several_keys_are_several_key_pairs() {
        let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFa2m0Ybk4MBhcVHPxDLD5Sq0mWLKNrGzCRq+DyvW3a8 other";
        let i = Instance::from_uuid(Uuid::nil(), vec![KEY.to_owned(), other.to_owned()], None);
        let imds = ImdsServer::start(&i).unwrap();
        let t = token(&imds);
        assert_eq!(
            get(&imds, "/latest/meta-data/public-keys/", Some(&t)).1,
            "0=kiln\n1=kiln-1"
        );
        assert_eq!(
            get(&imds, "/latest/meta-data/public-keys/1/openssh-key", Some(&t)).1,
            other
        );
    }

    /// The machine's network and identity as QEMU gets them.
    #[test]
    fn qemu_argv_of_an_instance() {
        let i = instance();
        let mut cfg = crate::qemu::VmConfig::new("/run/console.log");
        cfg.net = i.network(41234).unwrap();
        cfg.smbios = Some(i.smbios());
        let args = crate::qemu::render(&crate::qemu::qemu_args(&cfg, None).unwrap());
        let lines: Vec<&str> = args
            .lines()
            .filter(|l| l.starts_with("-nic") || l.starts_with("-smbios"))
            .collect();
        assert_eq!(
            lines,
            [
                "-smbios type=0,vendor=Amazon EC2",
                "-smbios type=1,manufacturer=Amazon EC2,product=t3.micro,serial=ec2c1d2e-3a4b-4c5d-8e6f-708192a3b4c5,uuid=ec2c1d2e-3a4b-4c5d-8e6f-708192a3b4c5",
                "-smbios type=2,manufacturer=Amazon EC2,asset=i-08e6f708192a3b4c5",
                "-smbios type=3,manufacturer=Amazon EC2,asset=Amazon EC2",
                "-nic user,model=virtio-net-pci,restrict=on,ipv6=off,mac=02:81:92:a3:b4:c5,net=169.254.0.0/16,guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:41234",
            ]
        );
        assert_eq!(
            cfg.net.to_string(),
            "isolated (subnet 169.254.0.0/16; MAC 02:81:92:a3:b4:c5; guest 169.254.169.254:80 → host 127.0.0.1:41234)"
        );
    }

    #[test]
    fn summaries() {
        let served = |status, refusal| Served {
            method: "GET".into(),
            path: "/latest/meta-data/".into(),
            status,
            refusal,
        };
        let mut log = ImdsLog::default();
        assert_eq!(log.summary(), "0 requests, none refused");
        log.requests.push(served(200, None));
        assert_eq!(log.summary(), "1 request, none refused");
        log.requests.push(served(401, Some(Refusal::NoToken)));
        log.requests.push(served(401, Some(Refusal::NoToken)));
        assert_eq!(log.summary(), "3 requests, 2 refused (no token)");
    }
}
