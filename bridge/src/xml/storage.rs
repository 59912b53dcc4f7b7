//! Storage XML: pools and volumes.

use hostbus_protocol::types::{DiskFormat, PoolKind, PoolSpec, VolumeSpec};
use hostbus_protocol::Error;

use super::{attr_at, document, element, empty, parse, text, text_at};

/// The `<source>` of a pool, by kind.
enum PoolSource<'a> {
    /// `fs` and `disk`: the block device.
    Device(&'a str),
    /// `logical`: the volume group.
    Group(&'a str),
    /// `netfs`: the server and its exported directory.
    Export { host: &'a str, dir: &'a str },
}

pub(crate) fn pool_xml(spec: &PoolSpec) -> Result<String, Error> {
    let source = match (spec.kind, spec.source.as_deref()) {
        (PoolKind::Dir, _) => None,
        (PoolKind::Fs | PoolKind::Disk, Some(dev)) => Some(PoolSource::Device(dev)),
        (PoolKind::Logical, Some(vg)) => Some(PoolSource::Group(vg)),
        (PoolKind::Netfs, Some(src)) => {
            let (host, dir) = src.split_once(':').ok_or_else(|| {
                Error::from(hostbus_protocol::ValidationError::new(
                    "spec.source",
                    "must be `host:/path` for a netfs pool",
                ))
            })?;
            Some(PoolSource::Export { host, dir })
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
    Ok(document(|w| {
        element(w, "pool", &[("type", spec.kind.as_str())], |w| {
            text(w, "name", &[], &spec.name)?;
            match source {
                None => {}
                Some(source) => element(w, "source", &[], |w| match source {
                    PoolSource::Device(dev) => empty(w, "device", &[("path", dev)]),
                    PoolSource::Group(vg) => text(w, "name", &[], vg),
                    PoolSource::Export { host, dir } => {
                        empty(w, "host", &[("name", host)])?;
                        empty(w, "dir", &[("path", dir)])
                    }
                })?,
            }
            element(w, "target", &[], |w| {
                text(w, "path", &[], &spec.target_path)
            })
        })
    }))
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
    volume_document(spec, None)
}

/// A qcow2 volume over the image at `backing` (of format `backing_format`):
/// reads fall through to it, writes stay in the new volume.
pub(crate) fn overlay_xml(spec: &VolumeSpec, backing: &str, backing_format: DiskFormat) -> String {
    volume_document(spec, Some((backing, backing_format)))
}

fn volume_document(spec: &VolumeSpec, backing: Option<(&str, DiskFormat)>) -> String {
    let bytes = [("unit", "bytes")];
    document(|w| {
        element(w, "volume", &[], |w| {
            text(w, "name", &[], &spec.name)?;
            text(w, "capacity", &bytes, &spec.capacity_bytes.to_string())?;
            text(w, "allocation", &bytes, &spec.allocation_bytes.to_string())?;
            element(w, "target", &[], |w| {
                empty(w, "format", &[("type", spec.format.as_str())])
            })?;
            if let Some((path, format)) = backing {
                element(w, "backingStore", &[], |w| {
                    text(w, "path", &[], path)?;
                    empty(w, "format", &[("type", format.as_str())])
                })?;
            }
            Ok(())
        })
    })
}

/// The path of the image a volume is an overlay on, if it is one.
pub(crate) fn parse_volume_backing(xml: &str) -> Result<Option<String>, Error> {
    let doc = parse(xml)?;
    Ok(text_at(doc.root_element(), &["backingStore", "path"]).filter(|p| !p.is_empty()))
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
