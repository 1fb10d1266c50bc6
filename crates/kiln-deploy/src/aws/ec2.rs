//! The EC2 calls of a publish, over EC2's Query API (form-encoded POST,
//! XML answers): find an AMI by name, watch a snapshot, register the AMI,
//! tag, and delete a snapshot or an AMI when a publish fails half-way.

use std::collections::BTreeMap;

use super::client::{CallError, Client, Idempotent, Request, Service};

const API_VERSION: &str = "2016-11-15";

/// An AMI as DescribeImages shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub state: String,
    pub architecture: String,
    pub root_device_name: String,
    pub ena_support: Option<bool>,
    pub boot_mode: Option<String>,
    pub imds_support: Option<String>,
    pub virtualization_type: String,
    /// Device name → snapshot id.
    pub snapshots: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// A snapshot as DescribeSnapshots shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    /// pending, completed, error (recoverable, recovering).
    pub state: String,
    pub progress: String,
    pub state_message: String,
}

/// What RegisterImage is told.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub snapshot_id: &'a str,
    pub volume_size_gib: u64,
    pub tags: &'a [(String, String)],
}

/// The root device of every AMI kiln registers.
pub const ROOT_DEVICE: &str = "/dev/xvda";

/// Form-encodes one value as the Query API wants (RFC 3986 unreserved kept).
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The body of a Query API call.
pub fn query_body(action: &str, params: &[(String, String)]) -> String {
    let mut body = format!("Action={action}&Version={API_VERSION}");
    for (k, v) in params {
        body.push('&');
        body.push_str(&form_encode(k));
        body.push('=');
        body.push_str(&form_encode(v));
    }
    body
}

fn call(
    client: &Client,
    action: &str,
    params: &[(String, String)],
    idempotent: Idempotent,
) -> Result<String, CallError> {
    let body = query_body(action, params);
    let operation = format!("EC2 {action}");
    let resp = client.call(&Request {
        service: Service::Ec2,
        operation: &operation,
        method: "POST",
        path: "/".to_owned(),
        headers: vec![(
            "content-type".to_owned(),
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        )],
        body: body.as_bytes(),
        body_sha256: None,
        idempotent,
    })?;
    Ok(String::from_utf8_lossy(&resp.body).into_owned())
}

fn p(k: impl Into<String>, v: impl Into<String>) -> (String, String) {
    (k.into(), v.into())
}

/// A parse failure is reported as the service's answer being wrong.
fn unreadable(action: &str, why: impl std::fmt::Display) -> CallError {
    CallError::Service {
        operation: format!("EC2 {action}"),
        status: 200,
        code: "UnreadableAnswer".to_owned(),
        message: why.to_string(),
        request_id: String::new(),
    }
}

/// The account's own AMIs named `name`.
pub fn images_named(client: &Client, name: &str) -> Result<Vec<Image>, CallError> {
    let xml = call(
        client,
        "DescribeImages",
        &[
            p("Owner.1", "self"),
            p("Filter.1.Name", "name"),
            p("Filter.1.Value.1", name),
        ],
        Idempotent::Yes,
    )?;
    parse_images(&xml).map_err(|e| unreadable("DescribeImages", e))
}

/// One AMI by id.
pub fn image(client: &Client, id: &str) -> Result<Option<Image>, CallError> {
    let xml = call(client, "DescribeImages", &[p("ImageId.1", id)], Idempotent::Yes)?;
    let images = parse_images(&xml).map_err(|e| unreadable("DescribeImages", e))?;
    Ok(images.into_iter().find(|i| i.id == id))
}

/// One snapshot by id; `None` if it does not exist.
pub fn snapshot(client: &Client, id: &str) -> Result<Option<Snapshot>, CallError> {
    match call(client, "DescribeSnapshots", &[p("SnapshotId.1", id)], Idempotent::Yes) {
        Ok(xml) => {
            let snaps = parse_snapshots(&xml).map_err(|e| unreadable("DescribeSnapshots", e))?;
            Ok(snaps.into_iter().find(|s| s.id == id))
        }
        Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a snapshot; one that is already gone is fine.
pub fn delete_snapshot(client: &Client, id: &str) -> Result<(), CallError> {
    match call(client, "DeleteSnapshot", &[p("SnapshotId", id)], Idempotent::Yes) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deregisters an AMI; one that is already gone is fine.
pub fn deregister_image(client: &Client, id: &str) -> Result<(), CallError> {
    match call(client, "DeregisterImage", &[p("ImageId", id)], Idempotent::Yes) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Some("InvalidAMIID.NotFound" | "InvalidAMIID.Unavailable")) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The RegisterImage parameters: an x86_64 HVM AMI booting in either
/// firmware (`uefi-preferred`), ENA, IMDSv2 only, a gp3 root volume from
/// the snapshot, and the tags on the AMI and its snapshot.
pub fn registration_params(r: &Registration<'_>) -> Vec<(String, String)> {
    let mut params = vec![
        p("Name", r.name),
        p("Description", r.description),
        p("Architecture", "x86_64"),
        p("VirtualizationType", "hvm"),
        p("RootDeviceName", ROOT_DEVICE),
        p("BlockDeviceMapping.1.DeviceName", ROOT_DEVICE),
        p("BlockDeviceMapping.1.Ebs.SnapshotId", r.snapshot_id),
        p("BlockDeviceMapping.1.Ebs.VolumeSize", r.volume_size_gib.to_string()),
        p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        p("EnaSupport", "true"),
        p("BootMode", "uefi-preferred"),
        p("ImdsSupport", "v2.0"),
    ];
    for (n, kind) in [(1, "image"), (2, "snapshot")] {
        params.push(p(format!("TagSpecification.{n}.ResourceType"), kind));
        for (i, (k, v)) in r.tags.iter().enumerate() {
            params.push(p(format!("TagSpecification.{n}.Tag.{}.Key", i + 1), k.as_str()));
            params.push(p(format!("TagSpecification.{n}.Tag.{}.Value", i + 1), v.as_str()));
        }
    }
    params
}

/// Registers the AMI; its id. Not retried once sent: a second
/// RegisterImage would fail on the name (see the caller).
pub fn register_image(client: &Client, r: &Registration<'_>) -> Result<String, CallError> {
    let xml = call(client, "RegisterImage", &registration_params(r), Idempotent::No)?;
    let doc = roxmltree::Document::parse(&xml).map_err(|e| unreadable("RegisterImage", e))?;
    doc.descendants()
        .find(|n| n.tag_name().name() == "imageId")
        .and_then(|n| n.text())
        .map(str::to_owned)
        .ok_or_else(|| unreadable("RegisterImage", "no imageId in the answer"))
}

/// Tags resources (idempotent: the same tags again change nothing).
pub fn create_tags(client: &Client, resources: &[&str], tags: &[(String, String)]) -> Result<(), CallError> {
    let mut params = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        params.push(p(format!("ResourceId.{}", i + 1), *r));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        params.push(p(format!("Tag.{}.Key", i + 1), k.as_str()));
        params.push(p(format!("Tag.{}.Value", i + 1), v.as_str()));
    }
    call(client, "CreateTags", &params, Idempotent::Yes).map(drop)
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    node.children().find(|n| n.is_element() && n.tag_name().name() == name)
}

fn text(node: roxmltree::Node<'_, '_>, name: &str) -> String {
    child(node, name)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
        .unwrap_or_default()
}

fn items<'a>(node: Option<roxmltree::Node<'a, 'a>>) -> Vec<roxmltree::Node<'a, 'a>> {
    node.map(|n| {
        n.children()
            .filter(|c| c.is_element() && c.tag_name().name() == "item")
            .collect()
    })
    .unwrap_or_default()
}

fn tags(item: roxmltree::Node<'_, '_>) -> BTreeMap<String, String> {
    items(child(item, "tagSet"))
        .into_iter()
        .map(|t| (text(t, "key"), text(t, "value")))
        .collect()
}

/// DescribeImages' `imagesSet`.
pub fn parse_images(xml: &str) -> Result<Vec<Image>, roxmltree::Error> {
    let doc = roxmltree::Document::parse(xml)?;
    let set = doc.descendants().find(|n| n.tag_name().name() == "imagesSet");
    Ok(items(set)
        .into_iter()
        .map(|item| {
            let opt = |name: &str| Some(text(item, name)).filter(|t| !t.is_empty());
            Image {
                id: text(item, "imageId"),
                name: text(item, "name"),
                state: text(item, "imageState"),
                architecture: text(item, "architecture"),
                root_device_name: text(item, "rootDeviceName"),
                ena_support: opt("enaSupport").map(|t| t == "true"),
                boot_mode: opt("bootMode"),
                imds_support: opt("imdsSupport"),
                virtualization_type: text(item, "virtualizationType"),
                snapshots: items(child(item, "blockDeviceMapping"))
                    .into_iter()
                    .filter_map(|m| {
                        let ebs = child(m, "ebs")?;
                        Some((text(m, "deviceName"), text(ebs, "snapshotId")))
                    })
                    .collect(),
                tags: tags(item),
            }
        })
        .collect())
}

/// DescribeSnapshots' `snapshotSet`.
pub fn parse_snapshots(xml: &str) -> Result<Vec<Snapshot>, roxmltree::Error> {
    let doc = roxmltree::Document::parse(xml)?;
    let set = doc.descendants().find(|n| n.tag_name().name() == "snapshotSet");
    Ok(items(set)
        .into_iter()
        .map(|item| Snapshot {
            id: text(item, "snapshotId"),
            state: text(item, "status"),
            progress: text(item, "progress"),
            state_message: text(item, "stateMessage"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DescribeImages as EC2 answers it (the API reference's example, with
    /// the fields of a registered uefi-preferred AMI).
    const DESCRIBE_IMAGES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>
    <imagesSet>
        <item>
            <imageId>ami-0a1b2c3d4e5f60718</imageId>
            <imageLocation>123456789012/debian-12-ami-1.0.0</imageLocation>
            <imageState>available</imageState>
            <imageOwnerId>123456789012</imageOwnerId>
            <creationDate>2025-01-10T09:15:31.000Z</creationDate>
            <isPublic>false</isPublic>
            <architecture>x86_64</architecture>
            <imageType>machine</imageType>
            <name>debian-12-ami-1.0.0</name>
            <description>kiln debian-12-ami 1.0.0</description>
            <rootDeviceType>ebs</rootDeviceType>
            <rootDeviceName>/dev/xvda</rootDeviceName>
            <blockDeviceMapping>
                <item>
                    <deviceName>/dev/xvda</deviceName>
                    <ebs>
                        <snapshotId>snap-0123456789abcdef0</snapshotId>
                        <volumeSize>2</volumeSize>
                        <deleteOnTermination>true</deleteOnTermination>
                        <volumeType>gp3</volumeType>
                        <encrypted>false</encrypted>
                    </ebs>
                </item>
            </blockDeviceMapping>
            <virtualizationType>hvm</virtualizationType>
            <tagSet>
                <item><key>kiln:version</key><value>1.0.0</value></item>
                <item><key>Name</key><value>debian-12-ami-1.0.0</value></item>
            </tagSet>
            <hypervisor>xen</hypervisor>
            <enaSupport>true</enaSupport>
            <bootMode>uefi-preferred</bootMode>
            <imdsSupport>v2.0</imdsSupport>
        </item>
    </imagesSet>
</DescribeImagesResponse>"#;

    #[test]
    fn parses_describe_images() {
        let images = parse_images(DESCRIBE_IMAGES).unwrap();
        assert_eq!(images.len(), 1);
        let i = &images[0];
        assert_eq!(i.id, "ami-0a1b2c3d4e5f60718");
        assert_eq!(i.name, "debian-12-ami-1.0.0");
        assert_eq!(i.state, "available");
        assert_eq!(i.architecture, "x86_64");
        assert_eq!(i.root_device_name, "/dev/xvda");
        assert_eq!(i.ena_support, Some(true));
        assert_eq!(i.boot_mode.as_deref(), Some("uefi-preferred"));
        assert_eq!(i.imds_support.as_deref(), Some("v2.0"));
        assert_eq!(i.snapshots["/dev/xvda"], "snap-0123456789abcdef0");
        assert_eq!(i.tags["kiln:version"], "1.0.0");
        // Nested <item>s (mappings, tags) are not taken for images.
        let none = parse_images(
            r#"<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>x</requestId><imagesSet/></DescribeImagesResponse>"#,
        )
        .unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn parses_describe_snapshots() {
        let xml = r#"<DescribeSnapshotsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
   <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>
   <snapshotSet>
      <item>
         <snapshotId>snap-1234567890abcdef0</snapshotId>
         <volumeId>vol-ffffffff</volumeId>
         <status>pending</status>
         <startTime>2025-01-10T09:15:31.000Z</startTime>
         <progress>80%</progress>
         <ownerId>123456789012</ownerId>
         <volumeSize>15</volumeSize>
         <description>kiln</description>
         <encrypted>false</encrypted>
         <tagSet><item><key>kiln:image</key><value>x.raw</value></item></tagSet>
      </item>
   </snapshotSet>
</DescribeSnapshotsResponse>"#;
        let s = parse_snapshots(xml).unwrap();
        assert_eq!(
            s,
            vec![Snapshot {
                id: "snap-1234567890abcdef0".into(),
                state: "pending".into(),
                progress: "80%".into(),
                state_message: String::new(),
            }]
        );
    }

    #[test]
    fn registration_asks_for_the_whole_contract() {
        let tags = vec![("kiln:version".to_owned(), "1.0.0".to_owned())];
        let params = registration_params(&Registration {
            name: "debian-12 1.0.0",
            description: "d",
            snapshot_id: "snap-1",
            volume_size_gib: 2,
            tags: &tags,
        });
        let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        for (k, v) in [
            ("Architecture", "x86_64"),
            ("EnaSupport", "true"),
            ("BootMode", "uefi-preferred"),
            ("ImdsSupport", "v2.0"),
            ("RootDeviceName", "/dev/xvda"),
            ("VirtualizationType", "hvm"),
            ("BlockDeviceMapping.1.Ebs.SnapshotId", "snap-1"),
            ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
            ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
            ("TagSpecification.1.ResourceType", "image"),
            ("TagSpecification.2.ResourceType", "snapshot"),
            ("TagSpecification.2.Tag.1.Value", "1.0.0"),
        ] {
            assert_eq!(get(k), Some(v), "{k}");
        }
        let body = query_body("RegisterImage", &params);
        assert!(
            body.starts_with("Action=RegisterImage&Version=2016-11-15&Name=debian-12%201.0.0&"),
            "{body}"
        );
        assert!(body.contains("&RootDeviceName=%2Fdev%2Fxvda&"), "{body}");
    }

    #[test]
    fn form_encoding_keeps_only_unreserved() {
        assert_eq!(form_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(form_encode("a b+c/é"), "a%20b%2Bc%2F%C3%A9");
    }
}
