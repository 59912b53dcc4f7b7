//! Generation and parsing of libvirt XML. Nothing outside the bridge sees
//! XML: specs go in, records come out. One submodule per object class:
//! `domain` (VMs, their devices and snapshots), `storage` (pools and
//! volumes), `network`; the host's capabilities and the shared readers
//! are here.

mod domain;
#[cfg(test)]
mod golden;
mod network;
mod storage;

pub(crate) use domain::*;
pub(crate) use network::*;
pub(crate) use storage::*;

use std::collections::BTreeMap;

use hostbus_protocol::Error;
use roxmltree::{Document, Node};

/// Escapes text for XML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn parse(xml: &str) -> Result<Document<'_>, Error> {
    Document::parse(xml).map_err(|e| Error::internal(format!("unparsable XML from libvirt: {e}")))
}

pub(super) fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

pub(super) fn path_node<'a, 'i>(n: Node<'a, 'i>, path: &[&str]) -> Option<Node<'a, 'i>> {
    path.iter().try_fold(n, |n, p| child(n, p))
}

pub(super) fn text_at(n: Node<'_, '_>, path: &[&str]) -> Option<String> {
    path_node(n, path)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
}

pub(super) fn attr_at(n: Node<'_, '_>, path: &[&str], attr: &str) -> Option<String> {
    path_node(n, path)
        .and_then(|n| n.attribute(attr))
        .map(str::to_owned)
}

/// Converts a libvirt size with a unit to the given scale (bytes per unit of result).
pub(super) fn scaled(value: u64, unit: Option<&str>, result_unit: u64) -> u64 {
    let mult: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1024,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => 1024,
    };
    value.saturating_mul(mult) / result_unit
}

pub(super) fn size_at(
    n: Node<'_, '_>,
    path: &[&str],
    result_unit: u64,
    default_unit: &str,
) -> Option<u64> {
    let node = path_node(n, path)?;
    let v: u64 = node.text()?.trim().parse().ok()?;
    Some(scaled(
        v,
        Some(node.attribute("unit").unwrap_or(default_unit)),
        result_unit,
    ))
}

// ------------------------------------------------------------------ domains

/// Where a disk's image is, as the bridge writes it.
#[derive(Debug, Clone, PartialEq, Eq)]

pub(crate) struct CapsFacts {
    pub arch: String,
    pub cpu_model: String,
    pub cpu_features: Vec<String>,
    pub guest_domain_types: BTreeMap<String, Vec<String>>,
    pub machine_types: Vec<String>,
}

pub(crate) fn parse_capabilities(xml: &str) -> Result<CapsFacts, Error> {
    let doc = parse(xml)?;
    let root = doc.root_element();
    let cpu = path_node(root, &["host", "cpu"]);
    let arch = cpu.and_then(|c| text_at(c, &["arch"])).unwrap_or_default();
    let mut guest_domain_types: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut machine_types = Vec::new();
    for g in root.children().filter(|c| c.has_tag_name("guest")) {
        let Some(a) = child(g, "arch") else { continue };
        let name = a.attribute("name").unwrap_or_default().to_owned();
        let types = guest_domain_types.entry(name.clone()).or_default();
        for d in a.children().filter(|c| c.has_tag_name("domain")) {
            if let Some(t) = d.attribute("type") {
                if !types.iter().any(|x| x == t) {
                    types.push(t.to_owned());
                }
            }
        }
        if name == arch {
            for m in a.children().filter(|c| c.has_tag_name("machine")) {
                if let Some(t) = m.text() {
                    if !machine_types.iter().any(|x| x == t) {
                        machine_types.push(t.to_owned());
                    }
                }
            }
        }
    }
    Ok(CapsFacts {
        cpu_model: cpu.and_then(|c| text_at(c, &["model"])).unwrap_or_default(),
        cpu_features: cpu
            .map(|c| {
                c.children()
                    .filter(|f| f.has_tag_name("feature"))
                    .filter_map(|f| f.attribute("name").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        arch,
        guest_domain_types,
        machine_types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_respect_units() {
        assert_eq!(scaled(2, Some("GiB"), 1024), 2 * 1024 * 1024);
        assert_eq!(scaled(4096, Some("bytes"), 1), 4096);
    }
}
