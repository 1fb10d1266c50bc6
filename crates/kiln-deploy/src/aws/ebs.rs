//! The EBS direct APIs' write side (REST, JSON answers): StartSnapshot,
//! PutSnapshotBlock, CompleteSnapshot.

use super::blocks::BLOCK_SIZE;
use super::client::{CallError, Client, Idempotent, Request, Service};

/// A started snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub snapshot_id: String,
    pub block_size: u64,
}

/// StartSnapshot. `client_token` makes a retry return the same snapshot
/// instead of a second one, so the call is retried like an idempotent one.
pub fn start_snapshot(
    client: &Client,
    volume_size_gib: u64,
    description: &str,
    tags: &[(String, String)],
    client_token: &str,
) -> Result<Started, CallError> {
    let body = serde_json::json!({
        "VolumeSize": volume_size_gib,
        "Timeout": 60,
        "ClientToken": client_token,
        "Description": description,
        "Tags": tags.iter().map(|(k, v)| serde_json::json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    })
    .to_string();
    let resp = client.call(&Request {
        service: Service::Ebs,
        operation: "EBS StartSnapshot",
        method: "POST",
        path: "/snapshots".to_owned(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: body.as_bytes(),
        body_sha256: None,
        idempotent: Idempotent::Yes,
    })?;
    parse_started(&resp.body).ok_or_else(|| CallError::Service {
        operation: "EBS StartSnapshot".to_owned(),
        status: resp.status,
        code: "UnreadableAnswer".to_owned(),
        message: format!("no SnapshotId in {}", String::from_utf8_lossy(&resp.body)),
        request_id: String::new(),
    })
}

/// StartSnapshot's answer. EBS's block size is always 512 KiB; an answer
/// that says otherwise (moto says 512) is not trusted for the layout.
pub fn parse_started(body: &[u8]) -> Option<Started> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(Started {
        snapshot_id: v.get("SnapshotId")?.as_str()?.to_owned(),
        block_size: v.get("BlockSize").and_then(|b| b.as_u64()).unwrap_or(BLOCK_SIZE),
    })
}

/// PutSnapshotBlock of one whole block with its base64 SHA-256 (`checksum`,
/// `sha256_hex` the same digest in hex, which also signs the body).
pub fn put_block(
    client: &Client,
    snapshot_id: &str,
    index: u64,
    data: &[u8],
    checksum: &str,
    sha256_hex: String,
) -> Result<(), CallError> {
    client
        .call(&Request {
            service: Service::Ebs,
            operation: "EBS PutSnapshotBlock",
            method: "PUT",
            path: format!("/snapshots/{snapshot_id}/blocks/{index}"),
            headers: vec![
                ("content-type".to_owned(), "application/octet-stream".to_owned()),
                ("x-amz-Data-Length".to_owned(), data.len().to_string()),
                ("x-amz-Checksum".to_owned(), checksum.to_owned()),
                ("x-amz-Checksum-Algorithm".to_owned(), "SHA256".to_owned()),
            ],
            body: data,
            body_sha256: Some(sha256_hex),
            // Writing a block again writes the same bytes.
            idempotent: Idempotent::Yes,
        })
        .map(drop)
}

/// CompleteSnapshot with the count of written blocks and their LINEAR
/// aggregate checksum.
pub fn complete_snapshot(
    client: &Client,
    snapshot_id: &str,
    changed_blocks: u64,
    aggregate: &str,
) -> Result<(), CallError> {
    client
        .call(&Request {
            service: Service::Ebs,
            operation: "EBS CompleteSnapshot",
            method: "POST",
            path: format!("/snapshots/completion/{snapshot_id}"),
            headers: vec![
                ("x-amz-ChangedBlocksCount".to_owned(), changed_blocks.to_string()),
                ("x-amz-Checksum".to_owned(), aggregate.to_owned()),
                ("x-amz-Checksum-Algorithm".to_owned(), "SHA256".to_owned()),
                ("x-amz-Checksum-Aggregation-Method".to_owned(), "LINEAR".to_owned()),
            ],
            body: b"",
            body_sha256: None,
            // Completing a completed snapshot changes nothing.
            idempotent: Idempotent::Yes,
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_snapshot() {
        // The API reference's answer.
        let body = br#"{"BlockSize":524288,"Description":"kiln","KmsKeyArn":null,"OwnerId":"123456789012","ParentSnapshotId":null,"SnapshotId":"snap-0aaEXAMPLEe306d62","StartTime":1.575488068E9,"Status":"pending","Tags":[],"VolumeSize":8}"#;
        assert_eq!(
            parse_started(body),
            Some(Started {
                snapshot_id: "snap-0aaEXAMPLEe306d62".into(),
                block_size: 524288
            })
        );
        assert_eq!(parse_started(br#"{"Status":"pending"}"#), None);
    }
}
