//! Generation and parsing of libvirt XML. Nothing outside the bridge sees
//! XML: specs go in, records come out. One submodule per object class:
//! `domain` (VMs, their devices and snapshots), `storage` (pools and
//! volumes), `network`; `node` (the test driver's node file); the host's
//! capabilities, the shared readers and the shared writing are here.
//!
//! Every document is written by quick-xml's `Writer` (through [`element`],
//! [`empty`] and [`text`]), which escapes text and attribute values; a
//! document libvirt gave is changed by [`rewrite`], which copies it event
//! by event from quick-xml's `Reader` to a `Writer`. roxmltree reads.

mod domain;
#[cfg(test)]
mod golden;
mod network;
mod node;
mod storage;

pub(crate) use domain::*;
pub(crate) use network::*;
pub(crate) use node::*;
pub(crate) use storage::*;

use std::collections::BTreeMap;
use std::io;

use hostbus_protocol::Error;
use quick_xml::events::{BytesText, Event};
use quick_xml::name::QName;
use quick_xml::{Reader, Writer};
use roxmltree::{Document, Node};

/// The writer every document for libvirt goes through, into memory.
type Xml = Writer<Vec<u8>>;

/// The document `write` writes.
fn document(write: impl FnOnce(&mut Xml) -> io::Result<()>) -> String {
    let mut xml = Xml::new(Vec::new());
    // A `Vec<u8>` takes every write, so writing cannot fail (as `write!`
    // into a `String` cannot).
    let _ = write(&mut xml);
    into_string(xml)
}

/// What `xml` wrote. Everything written is `&str`, or events read from
/// one, so the bytes are UTF-8.
fn into_string(xml: Xml) -> String {
    String::from_utf8(xml.into_inner())
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Writes `<name attributes>`, what `content` writes, `</name>`.
fn element(
    w: &mut Xml,
    name: &str,
    attributes: &[(&str, &str)],
    content: impl FnOnce(&mut Xml) -> io::Result<()>,
) -> io::Result<()> {
    w.create_element(name)
        .with_attributes(attributes.iter().copied())
        .write_inner_content(content)
        .map(drop)
}

/// Writes the empty element `<name attributes/>`.
fn empty(w: &mut Xml, name: &str, attributes: &[(&str, &str)]) -> io::Result<()> {
    w.create_element(name)
        .with_attributes(attributes.iter().copied())
        .write_empty()
        .map(drop)
}

/// Writes `<name attributes>text</name>`.
fn text(w: &mut Xml, name: &str, attributes: &[(&str, &str)], text: &str) -> io::Result<()> {
    w.create_element(name)
        .with_attributes(attributes.iter().copied())
        .write_text_content(BytesText::new(text))
        .map(drop)
}

/// Whether an element read is named `name`.
fn is(element: QName<'_>, name: &str) -> bool {
    element.as_ref() == name.as_bytes()
}

/// The names of the elements around an event of [`rewrite`], outermost
/// first.
struct Around(Vec<Vec<u8>>);

impl Around {
    /// Whether the elements around are exactly `names`.
    fn is(&self, names: &[&str]) -> bool {
        self.0.len() == names.len() && self.0.iter().zip(names).all(|(a, n)| a == n.as_bytes())
    }

    /// Whether the innermost element around is named `name`.
    fn within(&self, name: &str) -> bool {
        self.0.last().is_some_and(|a| a == name.as_bytes())
    }
}

/// `xml` (a definition libvirt gave, say) copied event by event from
/// quick-xml's reader to its writer, each event through `edit`, which
/// writes it as it is (`w.write_event(event)`), changed, with more around
/// it, or not at all. An event written as it is keeps its bytes: the
/// document's quotes, whitespace and comments stay. `edit` is told the
/// elements around the event: an element's parents; for text, the element
/// it is in.
fn rewrite(
    xml: &str,
    mut edit: impl FnMut(&mut Xml, Event<'_>, &Around) -> io::Result<()>,
) -> Result<String, Error> {
    let mut reader = Reader::from_str(xml);
    let mut out = Xml::new(Vec::new());
    let mut around = Around(Vec::new());
    loop {
        let event = reader.read_event().map_err(|e| {
            let at = reader.error_position();
            Error::internal(format!("unparsable XML at byte {at}: {e}"))
        })?;
        let opened = match &event {
            Event::Eof => break,
            Event::Start(e) => Some(e.name().as_ref().to_vec()),
            Event::End(_) => {
                around.0.pop();
                None
            }
            _ => None,
        };
        edit(&mut out, event, &around)
            .map_err(|e| Error::internal(format!("cannot rewrite XML: {e}")))?;
        around.0.extend(opened);
    }
    Ok(into_string(out))
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

/// What the bridge reads from the host's capabilities.
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
