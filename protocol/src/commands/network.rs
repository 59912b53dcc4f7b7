//! Request and response types of the network commands.

use crate::types::*;

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
    validate(this) { this.spec.validate().map_err(|e| e.within("spec")) }
}
