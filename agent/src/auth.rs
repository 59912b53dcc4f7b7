//! Authorization: who may run what.
//!
//! The agent trusts only the AMQP `user_id` property, which RabbitMQ
//! verifies against the publisher's login (a message whose `user_id` differs
//! from the connection's user is refused by the broker). Each user has a
//! role; roles are cumulative: `read` ⊂ `operate` ⊂ `admin`, matching the
//! access level of each command in the catalogue.

use std::collections::BTreeMap;

use hostbus_protocol::{Access, Error, ErrorCode};
use serde::Deserialize;

/// A role, granting commands up to its access level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read commands only (`*.list`, `*.get`, `host.*` facts).
    ReadOnly,
    /// Reads, plus changing the running state of existing objects.
    Operator,
    /// Everything, including creating and destroying objects and data,
    /// but the host-to-host steps.
    Admin,
    /// Another host's agent: reads and the host-to-host steps of
    /// operations that span two hosts (a migration's prepare on its
    /// destination), nothing else. An agent's own broker login has it
    /// too, whatever `roles` says of it.
    Agent,
}

impl Role {
    /// Whether the role may run commands of this access level.
    pub fn grants(self, access: Access) -> bool {
        match self {
            Role::ReadOnly => access == Access::Read,
            Role::Operator => matches!(access, Access::Read | Access::Operate),
            Role::Admin => access != Access::Peer,
            Role::Agent => matches!(access, Access::Read | Access::Peer),
        }
    }

    /// The role's name: `read-only`, `operator`, `admin` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }

    /// Parses `read-only`, `operator`, `admin` or `agent`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read-only" | "readonly" | "read" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

/// Checks that `sender`, a broker login, may run `command`, whose access
/// level is `access`.
pub(crate) fn authorize(
    roles: &BTreeMap<String, Role>,
    sender: Option<&str>,
    command: &str,
    access: Access,
) -> Result<(), Error> {
    let Some(user) = sender.filter(|u| !u.is_empty()) else {
        return Err(denied(
            "",
            command,
            format!("{command} needs a user_id property (set it to your broker login)"),
        ));
    };
    authorize_role(user, roles.get(user).copied(), command, access)
}

/// Checks that `user`, whose role is `role` (`None`: it has none), may run
/// `command`, whose access level is `access`.
pub(crate) fn authorize_role(
    user: &str,
    role: Option<Role>,
    command: &str,
    access: Access,
) -> Result<(), Error> {
    match role {
        Some(role) if role.grants(access) => Ok(()),
        Some(role) => Err(denied(
            user,
            command,
            format!(
                "user {user} has role {role:?}, which may not run {command} ({} access)",
                access.as_str()
            ),
        )),
        None => Err(denied(
            user,
            command,
            format!("user {user} has no role on this host"),
        )),
    }
}

fn denied(user: &str, command: &str, why: String) -> Error {
    Error::new(
        ErrorCode::PermissionDenied,
        [("user", user.to_owned()), ("command", command.to_owned())],
        why,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_cumulative_and_strangers_are_refused() {
        let roles: BTreeMap<String, Role> = [
            ("dash".to_owned(), Role::ReadOnly),
            ("ops".to_owned(), Role::Operator),
            ("root".to_owned(), Role::Admin),
        ]
        .into();
        assert!(authorize(&roles, Some("dash"), "vm.list", Access::Read).is_ok());
        assert_eq!(
            authorize(&roles, Some("dash"), "vm.start", Access::Operate).map_err(|e| e.code),
            Err(ErrorCode::PermissionDenied)
        );
        assert!(authorize(&roles, Some("ops"), "vm.start", Access::Operate).is_ok());
        assert!(authorize(&roles, Some("ops"), "vm.define", Access::Admin).is_err());
        assert!(authorize(&roles, Some("root"), "vm.define", Access::Admin).is_ok());
        let e = authorize(&roles, Some("eve"), "vm.list", Access::Read).expect_err("stranger");
        assert_eq!(e.param("user"), Some("eve"));
        assert!(authorize(&roles, None, "vm.list", Access::Read).is_err());
        // The host-to-host steps: role agent only, never admin; role agent
        // reads, nothing else.
        let roles: BTreeMap<String, Role> = [
            ("root".to_owned(), Role::Admin),
            ("peer".to_owned(), Role::Agent),
        ]
        .into();
        let peer_step = "vm.migrate_prepare";
        assert!(authorize(&roles, Some("root"), peer_step, Access::Peer).is_err());
        assert!(authorize(&roles, Some("peer"), peer_step, Access::Peer).is_ok());
        assert!(authorize(&roles, Some("peer"), "vm.list", Access::Read).is_ok());
        assert!(authorize(&roles, Some("peer"), "vm.start", Access::Operate).is_err());
        assert!(authorize(&roles, Some("peer"), "vm.define", Access::Admin).is_err());
        assert_eq!(Role::parse("agent"), Some(Role::Agent));
        assert!(authorize(&roles, Some(""), "vm.list", Access::Read).is_err());
    }
}
