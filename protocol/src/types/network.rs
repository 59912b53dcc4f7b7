//! Virtual networks: forward modes, records, specs.

use uuid::Uuid;

use crate::validate::*;

wire_enum! {
    /// How a virtual network reaches the outside.
    ForwardMode {
        /// No forwarding: guests reach each other and the host only.
        Isolated = "isolated",
        /// NAT through the host.
        Nat = "nat",
        /// Routed without NAT.
        Route = "route",
        /// Attached to an existing host bridge.
        Bridge = "bridge",
        /// Open forwarding, no firewall rules.
        Open = "open",
    }
}

wire_struct! {
    /// A virtual network.
    NetworkRecord {
        /// Stable identity.
        uuid: Uuid,
        /// Unique name on the host; networks are addressed by name.
        name: String,
        /// Started.
        active: bool,
        /// Started when the host boots.
        autostart: bool,
        /// Defined persistently.
        persistent: bool,
        /// Host bridge device.
        bridge: Option<String>,
        /// Forwarding mode.
        forward: ForwardMode,
        /// Host-side address and DHCP range.
        ip: Option<IpSpec>,
        /// Generation of the record.
        generation: u64,
    }
}

wire_struct! {
    /// The host side of a virtual network.
    IpSpec {
        /// Host address on the network, IPv4.
        address: String,
        /// Prefix length, 1 to 30.
        prefix: u8,
        /// First DHCP address, if DHCP is on.
        #[serde(default)]
        dhcp_start: Option<String>,
        /// Last DHCP address, if DHCP is on.
        #[serde(default)]
        dhcp_end: Option<String>,
    }
    validate(this) {
        check_ipv4("address", &this.address)?;
        check_range("prefix", this.prefix, 1, 30)?;
        match (&this.dhcp_start, &this.dhcp_end) {
            (Some(s), Some(e)) => {
                check_ipv4("dhcp_start", s)?;
                check_ipv4("dhcp_end", e)
            }
            (None, None) => Ok(()),
            _ => Err(ValidationError::new(
                "dhcp_start",
                "dhcp_start and dhcp_end must be given together",
            )),
        }
    }
}

wire_struct! {
    /// A virtual network to define.
    NetworkSpec {
        /// Unique name.
        name: String,
        /// Host bridge device name (generated when absent, required for `bridge` forwarding).
        #[serde(default)]
        bridge: Option<String>,
        /// Forwarding mode.
        forward: ForwardMode,
        /// Host address and DHCP range.
        #[serde(default)]
        ip: Option<IpSpec>,
        /// Start when the host boots.
        #[serde(default)]
        autostart: bool,
    }
    validate(this) {
        check_name("name", &this.name)?;
        if let Some(b) = &this.bridge {
            check_name("bridge", b)?;
            if b.len() > 15 {
                return Err(ValidationError::new("bridge", "must be at most 15 bytes"));
            }
        }
        if this.forward == ForwardMode::Unknown {
            return Err(ValidationError::new("forward", "unknown forward mode"));
        }
        if this.forward == ForwardMode::Bridge && this.bridge.is_none() {
            return Err(ValidationError::new(
                "bridge",
                "is required when forward is `bridge`",
            ));
        }
        if let Some(ip) = &this.ip {
            ip.validate().map_err(|e| e.within("ip"))?;
        }
        Ok(())
    }
}
