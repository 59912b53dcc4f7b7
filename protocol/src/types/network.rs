//! Virtual networks: forward modes, records, specs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::wire_enum;
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

/// A virtual network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NetworkRecord {
    /// Stable identity.
    pub uuid: Uuid,
    /// Unique name on the host; networks are addressed by name.
    pub name: String,
    /// Started.
    pub active: bool,
    /// Started when the host boots.
    pub autostart: bool,
    /// Defined persistently.
    pub persistent: bool,
    /// Host bridge device.
    pub bridge: Option<String>,
    /// Forwarding mode.
    pub forward: ForwardMode,
    /// Host-side address and DHCP range.
    pub ip: Option<IpSpec>,
    /// Generation of the record.
    pub generation: u64,
}

/// The host side of a virtual network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct IpSpec {
    /// Host address on the network, IPv4.
    pub address: String,
    /// Prefix length, 1 to 30.
    pub prefix: u8,
    /// First DHCP address, if DHCP is on.
    #[serde(default)]
    pub dhcp_start: Option<String>,
    /// Last DHCP address, if DHCP is on.
    #[serde(default)]
    pub dhcp_end: Option<String>,
}

impl Validate for IpSpec {
    fn validate(&self) -> Validation {
        check_ipv4("address", &self.address)?;
        check_range("prefix", self.prefix, 1, 30)?;
        match (&self.dhcp_start, &self.dhcp_end) {
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

/// A virtual network to define.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NetworkSpec {
    /// Unique name.
    pub name: String,
    /// Host bridge device name (generated when absent, required for `bridge` forwarding).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Forwarding mode.
    pub forward: ForwardMode,
    /// Host address and DHCP range.
    #[serde(default)]
    pub ip: Option<IpSpec>,
    /// Start when the host boots.
    #[serde(default)]
    pub autostart: bool,
}

impl Validate for NetworkSpec {
    fn validate(&self) -> Validation {
        check_name("name", &self.name)?;
        if let Some(b) = &self.bridge {
            check_name("bridge", b)?;
            if b.len() > 15 {
                return Err(ValidationError::new("bridge", "must be at most 15 bytes"));
            }
        }
        if self.forward == ForwardMode::Unknown {
            return Err(ValidationError::new("forward", "unknown forward mode"));
        }
        if self.forward == ForwardMode::Bridge && self.bridge.is_none() {
            return Err(ValidationError::new(
                "bridge",
                "is required when forward is `bridge`",
            ));
        }
        if let Some(ip) = &self.ip {
            ip.validate().map_err(|e| e.within("ip"))?;
        }
        Ok(())
    }
}
