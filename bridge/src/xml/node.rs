//! The test driver's node file: a whole host (VMs, networks, pools,
//! volumes) in one document.

use std::io;

use hostbus_protocol::Error;
use quick_xml::events::{BytesStart, BytesText, Event};

use super::{is, rewrite};

/// How the uuids and MAC addresses of the shipped node file start.
const UUIDS: &str = "11111111-0000-4000";
const MACS: &str = "52:54:00:10:";

/// `template`, a node file, for simulated host number `index`: its uuids
/// starting with `11111111-0000-4000` start with `5xxxxxxx-0000-4000`
/// (`0x50000000 + index`) instead, and its MAC addresses starting with
/// `52:54:00:10:` with `52:54:` and the two low bytes of `index`.
pub(crate) fn simulated_node(template: &str, index: u32) -> Result<String, Error> {
    let uuids = format!("{:08x}-0000-4000", 0x5000_0000u32.wrapping_add(index));
    let macs = format!("52:54:{:02x}:{:02x}:", (index >> 8) & 0xff, index & 0xff);
    rewrite(template, |w, event, around| match event {
        Event::Text(uuid) if around.within("uuid") => {
            let text = uuid.unescape().map_err(io::Error::other)?;
            match text.strip_prefix(UUIDS) {
                Some(rest) => w.write_event(Event::Text(BytesText::new(&(uuids.clone() + rest)))),
                None => w.write_event(Event::Text(uuid)),
            }
        }
        Event::Empty(mac) if is(mac.name(), "mac") => {
            let mut changed = BytesStart::new("mac");
            let mut renamed = false;
            for a in mac.attributes() {
                let a = a.map_err(io::Error::other)?;
                let value = a.unescape_value().map_err(io::Error::other)?;
                match value.strip_prefix(MACS) {
                    Some(rest) if is(a.key, "address") => {
                        renamed = true;
                        changed.push_attribute(("address", (macs.clone() + rest).as_str()));
                    }
                    _ => changed.push_attribute(a),
                }
            }
            // An address left as it was keeps its bytes.
            w.write_event(Event::Empty(if renamed { changed } else { mac }))
        }
        event => w.write_event(event),
    })
}
