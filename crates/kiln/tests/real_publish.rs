//! Slow, real tests of `kiln publish aws` against moto in server mode on
//! 127.0.0.1 (PyPI `moto[server]`, installed by scripts/install-deps.sh
//! into /opt/kiln-test/venv). boto3 from moto's Python is the oracle that
//! reads the AMI and the snapshot's blocks back; with moto's IAM
//! authentication on, a whole publish shows that moto accepts kiln's SigV4
//! signatures on every call and refuses wrong keys; a small proxy between
//! kiln and moto records requests and injects faults (throttling, a dropped
//! connection, a rejected block). What moto ignores of RegisterImage
//! (architecture, ENA, boot mode, IMDS, root device, block device mapping)
//! is checked on the wire instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

const BLOCK: u64 = 512 * 1024;

/// moto_server: $KILN_MOTO_SERVER, the venv install-deps.sh makes, or PATH.
fn moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from("/opt/kiln-test/venv/bin/moto_server");
    if venv.is_file() {
        return Some(venv);
    }
    kiln_exec::which("moto_server")
}

/// The Python that has boto3: moto_server's own.
fn python(server: &Path) -> PathBuf {
    let sibling = server.with_file_name("python3");
    if sibling.exists() {
        sibling
    } else {
        PathBuf::from("python3")
    }
}

fn require_moto() -> Option<PathBuf> {
    let found = moto_server();
    kiln_exec::testing::require_or_skip(
        found.is_some(),
        "moto_server is not installed (scripts/install-deps.sh puts moto[server] into /opt/kiln-test/venv; or set KILN_MOTO_SERVER)",
    )
    .then(|| found.unwrap())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A moto server on 127.0.0.1, killed when dropped. With `auth`, moto's IAM
/// authentication is on: a user with an allow-all policy and its key are
/// made first, and every later request must be signed by that key.
struct Moto {
    child: Child,
    port: u16,
    python: PathBuf,
    key: (String, String),
    _dir: tempfile::TempDir,
}

impl Moto {
    fn start(server: &Path, auth: bool) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        // No built-in AMIs: DescribeSnapshots then lists only what tests make.
        std::fs::write(dir.path().join("amis.json"), "[]").unwrap();
        let port = free_port();
        #[allow(clippy::disallowed_methods)] // the service under test
        let mut cmd = Command::new(server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_AMIS_PATH", dir.path().join("amis.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("moto.log")).unwrap());
        if auth {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        }
        let child = cmd.spawn().expect("moto_server starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut moto = Moto {
            child,
            port,
            python: python(server),
            key: ("testing".into(), "testing".into()),
            _dir: dir,
        };
        if auth {
            let out = moto.boto(
                r#"
iam = boto3.client("iam", **kw)
iam.create_user(UserName="kiln")
iam.put_user_policy(UserName="kiln", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
k = iam.create_access_key(UserName="kiln")["AccessKey"]
print(json.dumps([k["AccessKeyId"], k["SecretAccessKey"]]))
"#,
            );
            let k: (String, String) = serde_json::from_str(out.trim()).unwrap();
            moto.key = k;
        }
        moto
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a boto3 script with `kw` (endpoint, region, the key) and
    /// `json`, `boto3` imported; returns its stdout.
    fn boto(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json, base64, hashlib, sys\nkw = dict(endpoint_url={:?}, region_name='us-east-1', aws_access_key_id={:?}, aws_secret_access_key={:?})\n",
            self.url(),
            self.key.0,
            self.key.1
        );
        let out = common::run(
            common::tool(self.python.to_str().unwrap())
                .arg("-c")
                .arg(format!("{prelude}{script}")),
        );
        assert!(out.status.success(), "boto3 script failed:\n{}", common::text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The account's snapshots (moto's own AMIs are off).
    fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.boto(
            "print(json.dumps(boto3.client('ec2', **kw).describe_snapshots(OwnerIds=['self'])['Snapshots'], default=str))",
        );
        serde_json::from_str(out.trim()).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does with a request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Forward,
    /// Close the connection without an answer.
    Drop,
    /// Answer with this status and an AWS error code.
    Answer(u16, &'static str),
}

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
}

type Rule = dyn Fn(&Seen, usize) -> Fault + Send + Sync;

/// An HTTP proxy in front of moto: one request per connection, recorded,
/// passed to `rule` with how many requests came before it.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Proxy {
    fn start(upstream: u16, rule: Box<Rule>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Rule> = Arc::from(rule);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (log, rule) = (Arc::clone(&log), Arc::clone(&rule));
                std::thread::spawn(move || {
                    let _ = Proxy::serve(conn, upstream, &log, &*rule);
                });
            }
        });
        Proxy { port, seen }
    }

    fn serve(conn: TcpStream, upstream: u16, log: &Mutex<Vec<Seen>>, rule: &Rule) -> std::io::Result<()> {
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let end = line == "\r\n";
            head.push(line);
            if end {
                break;
            }
        }
        let length: usize = head
            .iter()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut first = head[0].split_whitespace();
        let seen = Seen {
            method: first.next().unwrap_or_default().to_owned(),
            path: first.next().unwrap_or_default().to_owned(),
            body: body.clone(),
        };
        let n = {
            let mut log = log.lock().unwrap();
            log.push(seen.clone());
            log.len() - 1
        };
        let mut conn = conn;
        match rule(&seen, n) {
            Fault::Drop => Ok(()),
            Fault::Answer(status, code) => {
                let body = format!(
                    "<Response><Errors><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error></Errors><RequestID>proxy</RequestID></Response>"
                );
                write!(
                    conn,
                    "HTTP/1.1 {status} Injected\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            }
            Fault::Forward => {
                let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
                for l in &head[..head.len() - 1] {
                    if !l.to_ascii_lowercase().starts_with("connection:") {
                        up.write_all(l.as_bytes())?;
                    }
                }
                up.write_all(b"Connection: close\r\n\r\n")?;
                up.write_all(&body)?;
                let mut answer = Vec::new();
                up.read_to_end(&mut answer)?;
                // Not kept alive: the next request comes on a new connection.
                let split = answer
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(answer.len(), |p| p + 2);
                let head = String::from_utf8_lossy(&answer[..split]);
                for l in head.split_inclusive("\r\n") {
                    if !l.to_ascii_lowercase().starts_with("connection:") {
                        conn.write_all(l.as_bytes())?;
                    }
                }
                conn.write_all(b"Connection: close\r\n")?;
                conn.write_all(&answer[split..])
            }
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn is_block_put(s: &Seen) -> bool {
    s.method == "PUT" && s.path.contains("/blocks/")
}

/// A synthetic raw disk: `size` bytes, random data in blocks `data` (the
/// last one may be short), zeros elsewhere; with its manifest.
fn synthetic_image(dir: &Path, size: u64, data: &[u64]) -> PathBuf {
    use sha2::Digest;
    let image = dir.join("synth-1.2.3-ami.raw");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(size).unwrap();
    let mut seed = 0x2545f4914f6cdd1du64;
    for &b in data {
        let at = b * BLOCK;
        let len = (size - at).min(BLOCK) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8 | 1
            })
            .collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &bytes, at).unwrap();
    }
    let sha512 = hex::encode(sha2::Sha512::digest(std::fs::read(&image).unwrap()));
    let manifest = serde_json::json!({
        "manifestVersion": 1, "name": "synth", "version": "1.2.3",
        "artifacts": [{"target": "ami", "path": "synth-1.2.3-ami.raw", "format": "raw", "size": size, "sha512": sha512}],
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    image
}

fn publish(image: &Path, endpoint: &str, key: &(String, String), extra: &[&str]) -> Output {
    let home = image.parent().unwrap();
    common::run(
        common::kiln()
            .args(["publish", "aws"])
            .arg(image)
            .args(["--region", "us-east-1", "--endpoint-url", endpoint])
            .args(extra)
            .env("HOME", home)
            .env("AWS_ACCESS_KEY_ID", &key.0)
            .env("AWS_SECRET_ACCESS_KEY", &key.1)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL"),
    )
}

#[test]
#[ignore = "slow: starts moto_server"]
fn publishes_only_the_nonzero_blocks_and_registers_the_ami() {
    let Some(server) = require_moto() else { return };
    // Authentication off: moto 5.2 refuses boto3's own signature of
    // ListSnapshotBlocks, which the oracle below needs.
    let moto = Moto::start(&server, false);
    // Throttling and a dropped connection on the way are retried.
    let proxy = Proxy::start(
        moto.port,
        Box::new(|s: &Seen, n: usize| match n {
            0 => Fault::Answer(503, "RequestLimitExceeded"),
            _ if is_block_put(s) && s.path.ends_with("/blocks/3") && n < 8 => Fault::Drop,
            _ if is_block_put(s) && s.path.ends_with("/blocks/40") && n < 12 => {
                Fault::Answer(400, "ThrottlingException")
            }
            _ => Fault::Forward,
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    // 20 MiB + 777 bytes: 41 blocks, the last one short.
    let size = 40 * BLOCK + 777;
    let data = [0, 3, 4, 17, 39, 40];
    let image = synthetic_image(dir.path(), size, &data);
    let out = publish(
        &image,
        &proxy.url(),
        &moto.key,
        &["--name", "synth-1.2.3", "--json", "--jobs", "4"],
    );
    let t = common::text(&out);
    assert!(out.status.success(), "{t}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (ami, snap) = (result["ami"].as_str().unwrap(), result["snapshot"].as_str().unwrap());
    assert_eq!(result["blocks_sent"], data.len());
    assert_eq!(result["blocks_total"], 41);
    assert!(result["retries"].as_u64().unwrap() >= 3, "{result}");

    // Only the non-zero blocks went out, each once or retried.
    let seen = proxy.seen();
    let mut put: Vec<u64> = seen
        .iter()
        .filter(|s| is_block_put(s))
        .map(|s| s.path.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    put.sort_unstable();
    put.dedup();
    assert_eq!(put, data);

    // What moto does not keep of RegisterImage, on the wire.
    let register = seen
        .iter()
        .find(|s| String::from_utf8_lossy(&s.body).contains("Action=RegisterImage"))
        .expect("a RegisterImage request");
    let form = String::from_utf8_lossy(&register.body).into_owned();
    for pair in [
        "Name=synth-1.2.3",
        "Architecture=x86_64",
        "EnaSupport=true",
        "BootMode=uefi-preferred",
        "ImdsSupport=v2.0",
        "VirtualizationType=hvm",
        "RootDeviceName=%2Fdev%2Fxvda",
        "BlockDeviceMapping.1.DeviceName=%2Fdev%2Fxvda",
        "BlockDeviceMapping.1.Ebs.VolumeType=gp3",
        "BlockDeviceMapping.1.Ebs.DeleteOnTermination=true",
        "TagSpecification.1.ResourceType=image",
        "TagSpecification.2.ResourceType=snapshot",
    ] {
        assert!(form.contains(pair), "RegisterImage lacks {pair}: {form}");
    }
    assert!(
        form.contains(&format!("BlockDeviceMapping.1.Ebs.SnapshotId={snap}")),
        "{form}"
    );

    // DescribeImages and the snapshot's blocks, read back by boto3.
    let check = moto.boto(&format!(
        r#"
ec2 = boto3.client("ec2", **kw)
ebs = boto3.client("ebs", **kw)
img = ec2.describe_images(Owners=["self"])["Images"]
snaps = ec2.describe_snapshots(SnapshotIds=["{snap}"])["Snapshots"]
blocks = {{}}
for b in ebs.list_snapshot_blocks(SnapshotId="{snap}")["Blocks"]:
    data = ebs.get_snapshot_block(SnapshotId="{snap}", BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
    blocks[str(b["BlockIndex"])] = base64.b64encode(data["BlockData"].read()).decode()
print(json.dumps({{"images": img, "snapshot": snaps[0], "blocks": blocks}}, default=str))
"#
    ));
    let v: serde_json::Value = serde_json::from_str(check.trim()).unwrap();
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{v}");
    let img = &images[0];
    assert_eq!(img["ImageId"], ami);
    assert_eq!(img["Name"], "synth-1.2.3");
    assert_eq!(img["State"], "available");
    let tags: std::collections::BTreeMap<String, String> = img["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().to_owned(),
                t["Value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("manifest.json")).unwrap()).unwrap();
    let sha512 = manifest["artifacts"][0]["sha512"].as_str().unwrap();
    assert_eq!(tags.get("kiln:version").map(String::as_str), Some("1.2.3"));
    assert_eq!(tags.get("kiln:sha512").map(String::as_str), Some(sha512));
    // moto 5 keeps none of these from RegisterImage; should a later moto
    // keep them, they must be what kiln asked for.
    for (field, want) in [
        ("Architecture", "x86_64"),
        ("BootMode", "uefi-preferred"),
        ("ImdsSupport", "v2.0"),
        ("RootDeviceName", "/dev/xvda"),
    ] {
        if let Some(got) = img[field].as_str() {
            if got != want {
                eprintln!("note: moto reports {field} = {got:?} (it does not keep RegisterImage's {want:?})");
            }
        }
    }
    assert_eq!(v["snapshot"]["State"], "completed");
    let snap_tags = v["snapshot"]["Tags"].to_string();
    assert!(
        snap_tags.contains("kiln:sha512") && snap_tags.contains(sha512),
        "{snap_tags}"
    );

    // The snapshot's blocks are exactly the image's non-zero ones, padded.
    let bytes = std::fs::read(&image).unwrap();
    let blocks = v["blocks"].as_object().unwrap();
    let mut indexes: Vec<u64> = blocks.keys().map(|k| k.parse().unwrap()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, data);
    use base64::Engine;
    for (k, b64) in blocks {
        let i: u64 = k.parse().unwrap();
        let got = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let mut want = bytes[(i * BLOCK) as usize..((i + 1) * BLOCK).min(size) as usize].to_vec();
        want.resize(BLOCK as usize, 0);
        assert!(got == want, "block {i} differs");
    }

    // The manifest records the publish as Packer would.
    let entry = &manifest["published"][0];
    assert_eq!(entry["artifact_id"], format!("us-east-1:{ami}"));
    assert_eq!(
        (entry["ami"].as_str(), entry["snapshot"].as_str()),
        (Some(ami), Some(snap))
    );
    assert_eq!(entry["target"], "aws");

    // The same name again: refused before anything is made.
    let before = moto.snapshots().len();
    let out = publish(&image, &moto.url(), &moto.key, &["--name", "synth-1.2.3"]);
    let t = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("the AMI name `synth-1.2.3` is already taken in us-east-1 by ami-"),
        "{t}"
    );
    assert!(t.contains("nothing was created"), "{t}");
    assert_eq!(moto.snapshots().len(), before);
}

#[test]
#[ignore = "slow: starts moto_server"]
fn a_failed_upload_deletes_the_half_made_snapshot() {
    let Some(server) = require_moto() else { return };
    let moto = Moto::start(&server, false);
    // The 5th block is refused for good (not a retryable error).
    let proxy = Proxy::start(
        moto.port,
        Box::new(|s: &Seen, _| {
            if is_block_put(s) && s.path.ends_with("/blocks/9") {
                Fault::Answer(400, "ValidationException")
            } else {
                Fault::Forward
            }
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 16 * BLOCK, &[0, 1, 2, 5, 9, 12, 15]);
    let out = publish(&image, &proxy.url(), &moto.key, &["--name", "broken-1", "--jobs", "2"]);
    let t = common::text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("writing block 9"), "{t}");
    assert!(t.contains("ValidationException: injected by the test proxy"), "{t}");
    assert!(t.contains("deleted the half-made snapshot snap-"), "{t}");
    assert!(proxy
        .seen()
        .iter()
        .any(|s| String::from_utf8_lossy(&s.body).contains("Action=DeleteSnapshot")));
    assert_eq!(
        moto.snapshots(),
        Vec::<serde_json::Value>::new(),
        "an orphaned snapshot"
    );
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert!(!manifest.contains("published"), "{manifest}");
}

#[test]
#[ignore = "slow: starts moto_server"]
fn signatures_are_accepted_and_invalid_credentials_refused_with_nothing_made() {
    let Some(server) = require_moto() else { return };
    let moto = Moto::start(&server, true);
    let dir = tempfile::tempdir().unwrap();
    let image = synthetic_image(dir.path(), 4 * BLOCK, &[1, 3]);
    for (key, what) in [
        ((moto.key.0.clone(), "not-the-secret".to_owned()), "a wrong secret"),
        (("AKIANOSUCHKEY0000000".to_owned(), "x".to_owned()), "an unknown key"),
    ] {
        let out = publish(&image, &moto.url(), &key, &["--name", "creds-1"]);
        let t = common::text(&out);
        assert_eq!(out.status.code(), Some(3), "{what}: {t}");
        assert!(
            t.contains("AWS refused the credentials from environment (AWS_ACCESS_KEY_ID)"),
            "{what}: {t}"
        );
        assert!(t.contains("AuthFailure"), "{what}: {t}");
    }
    assert_eq!(moto.snapshots(), Vec::<serde_json::Value>::new());
    // The right key: moto checks the signature of every call (EBS's
    // StartSnapshot, PutSnapshotBlock, CompleteSnapshot; EC2's) and accepts them.
    let out = publish(&image, &moto.url(), &moto.key, &["--name", "creds-1"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(!moto.snapshots().is_empty());
}

/// The AMI example as built by `kiln build` (shared with the boot tests)
/// publishes as it is: exactly its non-zero 512 KiB blocks go out, and its
/// manifest gains the `published` entry with the AMI and snapshot ids.
#[test]
#[ignore = "slow: builds the AMI example and starts moto_server"]
fn the_ami_example_publishes_its_nonzero_blocks() {
    let Some(server) = require_moto() else { return };
    let image = common::example_image("debian-12-ami.toml", "debian-12-ami-1.0.0-ami.raw");
    let nonzero = {
        let mut f = std::fs::File::open(&image).unwrap();
        let mut block = vec![0u8; BLOCK as usize];
        let mut count = 0u64;
        loop {
            let n = f.read(&mut block).unwrap();
            if n == 0 {
                break;
            }
            // A short read is completed before the block is judged.
            let mut len = n;
            while len < block.len() {
                let m = f.read(&mut block[len..]).unwrap();
                if m == 0 {
                    break;
                }
                len += m;
            }
            count += u64::from(block[..len].iter().any(|&b| b != 0));
        }
        count
    };
    let moto = Moto::start(&server, false);
    let out = publish(
        &image,
        &moto.url(),
        &moto.key,
        &["--name", "debian-12-ami-1.0.0", "--json"],
    );
    let t = common::text(&out);
    assert!(out.status.success(), "{t}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["blocks_sent"], nonzero, "{result}");
    assert_eq!(
        result["blocks_total"],
        std::fs::metadata(&image).unwrap().len().div_ceil(BLOCK)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.with_file_name("manifest.json")).unwrap()).unwrap();
    let published = manifest["published"]
        .as_array()
        .expect("a published list in the manifest");
    let entry = published.last().unwrap();
    assert_eq!(entry["ami"], result["ami"]);
    assert_eq!(entry["snapshot"], result["snapshot"]);
    assert_eq!(
        entry["artifact_id"],
        format!("us-east-1:{}", result["ami"].as_str().unwrap()).as_str()
    );
}
