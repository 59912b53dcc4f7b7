//! Network XML.

use hostbus_protocol::types::{ForwardMode, IpSpec, NetworkSpec};
use hostbus_protocol::Error;

use super::{attr_at, child, document, element, empty, parse, path_node, text};

pub(crate) fn network_xml(spec: &NetworkSpec) -> String {
    document(|w| {
        element(w, "network", &[], |w| {
            text(w, "name", &[], &spec.name)?;
            if let Some(b) = &spec.bridge {
                if spec.forward == ForwardMode::Bridge {
                    // An existing host bridge: libvirt manages none of it,
                    // and refuses stp and delay for it (QEMU's driver and
                    // the test driver alike).
                    empty(w, "bridge", &[("name", b.as_str())])?;
                } else {
                    empty(
                        w,
                        "bridge",
                        &[("name", b.as_str()), ("stp", "on"), ("delay", "0")],
                    )?;
                }
            }
            match spec.forward {
                ForwardMode::Isolated | ForwardMode::Unknown => {}
                mode => empty(w, "forward", &[("mode", mode.as_str())])?,
            }
            if let Some(ip) = &spec.ip {
                let prefix = ip.prefix.to_string();
                let at = [
                    ("address", ip.address.as_str()),
                    ("prefix", prefix.as_str()),
                ];
                element(w, "ip", &at, |w| match (&ip.dhcp_start, &ip.dhcp_end) {
                    (Some(a), Some(b)) => element(w, "dhcp", &[], |w| {
                        empty(w, "range", &[("start", a.as_str()), ("end", b.as_str())])
                    }),
                    _ => Ok(()),
                })?;
            }
            Ok(())
        })
    })
}

pub(crate) struct NetworkFacts {
    pub bridge: Option<String>,
    pub forward: ForwardMode,
    pub ip: Option<IpSpec>,
}

fn prefix_from_netmask(mask: &str) -> Option<u8> {
    let addr: std::net::Ipv4Addr = mask.parse().ok()?;
    u8::try_from(u32::from(addr).count_ones()).ok()
}

pub(crate) fn parse_network(xml: &str) -> Result<NetworkFacts, Error> {
    let doc = parse(xml)?;
    let root = doc.root_element();
    let forward = match child(root, "forward") {
        None => ForwardMode::Isolated,
        Some(f) => match f.attribute("mode").unwrap_or("nat") {
            "nat" => ForwardMode::Nat,
            "route" => ForwardMode::Route,
            "bridge" => ForwardMode::Bridge,
            "open" => ForwardMode::Open,
            _ => ForwardMode::Unknown,
        },
    };
    let ip = child(root, "ip").and_then(|ip| {
        let address = ip.attribute("address")?.to_owned();
        let prefix = ip
            .attribute("prefix")
            .and_then(|p| p.parse().ok())
            .or_else(|| ip.attribute("netmask").and_then(prefix_from_netmask))
            .unwrap_or(24);
        let range = path_node(ip, &["dhcp", "range"]);
        Some(IpSpec {
            address,
            prefix,
            dhcp_start: range.and_then(|r| r.attribute("start")).map(str::to_owned),
            dhcp_end: range.and_then(|r| r.attribute("end")).map(str::to_owned),
        })
    });
    Ok(NetworkFacts {
        bridge: attr_at(root, &["bridge"], "name"),
        forward,
        ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_forwarding_networks_have_no_stp_or_delay() {
        let spec = |forward| NetworkSpec {
            name: "n".into(),
            bridge: Some("br0".into()),
            forward,
            ip: None,
            autostart: false,
        };
        let bridged = network_xml(&spec(ForwardMode::Bridge));
        assert!(
            !bridged.contains("stp") && !bridged.contains("delay"),
            "{bridged}"
        );
        let nat = network_xml(&spec(ForwardMode::Nat));
        let doc = parse(&nat).expect("parse");
        assert_eq!(
            attr_at(doc.root_element(), &["bridge"], "stp").as_deref(),
            Some("on"),
            "{nat}"
        );
    }

    #[test]
    fn netmasks_become_prefixes() {
        assert_eq!(prefix_from_netmask("255.255.255.0"), Some(24));
    }
}
