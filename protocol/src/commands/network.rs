//! Request and response types of the network commands.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::*;
use crate::validate::*;

wire_struct! {
    /// Response of `network.list`.
    NetworkListResponse {
        /// Networks, sorted by name.
        networks: Vec<NetworkRecord>,
    }
}

wire_struct! {
    /// Request of `network.define`.
    NetworkDefineRequest {
        /// What to define.
        spec: NetworkSpec,
    }
}
impl Validate for NetworkDefineRequest {
    fn validate(&self) -> Validation {
        self.spec.validate().map_err(|e| e.within("spec"))
    }
}
