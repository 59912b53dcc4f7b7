//! Storage XML: pools and volumes.

use hostbus_protocol::types::{DiskFormat, PoolKind, PoolSpec, VolumeSpec};
use hostbus_protocol::Error;

use super::{attr_at, esc, parse, text_at};

pub(crate) fn pool_xml(spec: &PoolSpec) -> Result<String, Error> {
    let source = match (spec.kind, spec.source.as_deref()) {
        (PoolKind::Dir, _) => String::new(),
        (PoolKind::Fs | PoolKind::Disk, Some(dev)) => {
            format!("<source><device path='{}'/></source>", esc(dev))
        }
        (PoolKind::Logical, Some(vg)) => format!("<source><name>{}</name></source>", esc(vg)),
        (PoolKind::Netfs, Some(src)) => {
            let (host, dir) = src.split_once(':').ok_or_else(|| {
                Error::from(hostbus_protocol::ValidationError::new(
                    "spec.source",
                    "must be `host:/path` for a netfs pool",
                ))
            })?;
            format!(
                "<source><host name='{}'/><dir path='{}'/></source>",
                esc(host),
                esc(dir)
            )
        }
        (kind, None) if kind != PoolKind::Dir => {
            return Err(hostbus_protocol::ValidationError::new(
                "spec.source",
                format_args!("is required for a {kind} pool"),
            )
            .into())
        }
        (kind, _) => {
            return Err(Error::new(
                hostbus_protocol::ErrorCode::OperationNotSupported,
                [
                    ("operation", "pool.define".to_owned()),
                    ("reason", format!("{kind} pools")),
                ],
                format!("{kind} pools cannot be defined through hostbus yet"),
            ))
        }
    };
    Ok(format!(
        "<pool type='{}'><name>{}</name>{source}<target><path>{}</path></target></pool>",
        spec.kind.as_str(),
        esc(&spec.name),
        esc(&spec.target_path)
    ))
}

pub(crate) struct PoolFacts {
    pub kind: PoolKind,
    pub target_path: Option<String>,
}

pub(crate) fn parse_pool(xml: &str) -> Result<PoolFacts, Error> {
    let doc = parse(xml)?;
    let root = doc.root_element();
    let kind = match root.attribute("type") {
        Some("dir") => PoolKind::Dir,
        Some("fs") => PoolKind::Fs,
        Some("netfs") => PoolKind::Netfs,
        Some("logical") => PoolKind::Logical,
        Some("disk") => PoolKind::Disk,
        Some("iscsi") => PoolKind::Iscsi,
        Some("rbd") => PoolKind::Rbd,
        _ => PoolKind::Unknown,
    };
    Ok(PoolFacts {
        kind,
        target_path: text_at(root, &["target", "path"]),
    })
}

pub(crate) fn volume_xml(spec: &VolumeSpec) -> String {
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{}</capacity><allocation unit='bytes'>{}</allocation>\
         <target><format type='{}'/></target></volume>",
        esc(&spec.name),
        spec.capacity_bytes,
        spec.allocation_bytes,
        spec.format.as_str()
    )
}

pub(crate) fn parse_volume_format(xml: &str) -> Result<DiskFormat, Error> {
    let doc = parse(xml)?;
    Ok(
        match attr_at(doc.root_element(), &["target", "format"], "type").as_deref() {
            Some("qcow2") => DiskFormat::Qcow2,
            // A dir pool reports an ISO image as `iso`: raw bytes to QEMU.
            Some("raw") | Some("dir") | Some("iso") | None => DiskFormat::Raw,
            Some(_) => DiskFormat::Unknown,
        },
    )
}

// ----------------------------------------------------------------- networks
