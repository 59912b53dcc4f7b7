//! The HTTP binding's settings (docs/http.md), gathered and checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::auth::Role;

use super::value::{entries_of_text, entries_of_toml, role, SettingValue};
use super::{field_error, Config, ConfigError};

/// Where and how the HTTP binding serves; `None` parts are off.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The Unix socket.
    pub socket: Option<SocketSettings>,
    /// TCP with TLS.
    pub tcp: Option<TcpSettings>,
    /// Roles of the socket's peers.
    pub peer_roles: PeerRoles,
    /// Roles of certificate holders, by subject CN: the broker logins' table.
    pub roles: BTreeMap<String, Role>,
}

/// The Unix socket: path, file mode, owner.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    /// Path of the socket.
    pub path: PathBuf,
    /// File mode.
    pub mode: u32,
    /// Owner uid and group gid to give the socket file.
    pub owner: Option<(u32, Option<u32>)>,
}

/// The TCP listener and its TLS material.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Key, PEM.
    pub key: PathBuf,
    /// CA of client certificates, PEM.
    pub client_ca: PathBuf,
}

/// Roles of local peers by uid and by (primary) gid; a uid entry wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRoles {
    /// By uid.
    pub uids: BTreeMap<u32, Role>,
    /// By gid.
    pub gids: BTreeMap<u32, Role>,
}

impl PeerRoles {
    /// The role of a peer with this uid and gid, if any.
    pub fn role(&self, uid: u32, gid: u32) -> Option<Role> {
        self.uids.get(&uid).or_else(|| self.gids.get(&gid)).copied()
    }

    /// No peer has a role.
    pub fn is_empty(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    fn from_entries(entries: Vec<(String, String)>) -> Result<Self, String> {
        let mut roles = PeerRoles::default();
        for (peer, name) in entries {
            let role = role(&peer, &name)?;
            let bad = || format!("{peer} = {name:?}: peers are uid:N or gid:N");
            let id = |n: &str| n.parse::<u32>().map_err(|_| bad());
            match peer.split_once(':') {
                Some(("uid", n)) => roles.uids.insert(id(n)?, role),
                Some(("gid", n)) => roles.gids.insert(id(n)?, role),
                _ => return Err(bad()),
            };
        }
        Ok(roles)
    }
}

/// `uid:N=role,gid:N=role` in the environment, a table in the file.
impl SettingValue for PeerRoles {
    const FORM: Option<&'static str> = Some("uid:1000=read-only,gid:990=operator");

    fn parse(text: &str) -> Result<Self, String> {
        Self::from_entries(entries_of_text(text, "peer=role")?)
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        Self::from_entries(entries_of_toml(value)?)
    }
    fn over(mut self, mut lower: Self) -> Self {
        lower.uids.append(&mut self.uids);
        lower.gids.append(&mut self.gids);
        lower
    }
    fn show(&self) -> Option<String> {
        let uids = self
            .uids
            .iter()
            .map(|(n, r)| format!("uid:{n}={}", r.as_str()));
        let gids = self
            .gids
            .iter()
            .map(|(n, r)| format!("gid:{n}={}", r.as_str()));
        let entries: Vec<String> = uids.chain(gids).collect();
        (!entries.is_empty()).then(|| entries.join(","))
    }
}

/// The uid this process runs as (the owner of its `/proc` entry).
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

impl Config {
    /// The HTTP binding's settings; `None` when it is off.
    pub fn http(&self) -> Result<Option<HttpSettings>, ConfigError> {
        let socket = self.http_socket.as_ref().map(|path| SocketSettings {
            path: path.clone(),
            mode: self.http_socket_mode.0,
            owner: self.http_socket_owner,
        });
        let tcp = match self.http_listen {
            None => None,
            Some(addr) => {
                let need = |field: &str, v: &Option<PathBuf>| {
                    v.clone().ok_or_else(|| {
                        field_error(field, "is needed with http_listen: the TCP binding is TLS with client certificates only")
                    })
                };
                Some(TcpSettings {
                    addr,
                    cert: need("http_tls_cert", &self.http_tls_cert)?,
                    key: need("http_tls_key", &self.http_tls_key)?,
                    client_ca: need("http_client_ca", &self.http_client_ca)?,
                })
            }
        };
        if socket.is_none() && tcp.is_none() {
            return Ok(None);
        }
        let mut peer_roles = self.http_peer_roles.clone();
        if peer_roles.is_empty() {
            peer_roles.uids.insert(0, Role::Admin);
            if let Some(uid) = own_uid() {
                peer_roles.uids.insert(uid, Role::Admin);
            }
        }
        Ok(Some(HttpSettings {
            socket,
            tcp,
            peer_roles,
            roles: self.roles.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{env, flags};
    use super::super::Flags;
    use super::*;

    fn load(pairs: &[(&str, &str)], flags: Flags) -> Result<Config, ConfigError> {
        Config::load(&flags, &env(pairs))
    }

    #[test]
    fn the_binding_is_off_by_default_and_peers_map_to_roles() {
        let c = load(&[], Flags::default()).expect("load");
        assert!(c.http().expect("http").is_none());
        let socket = flags(&["--http-socket", "/run/hostbus/agent.sock"]);
        let c = load(
            &[
                (
                    "HOSTBUS_HTTP_PEER_ROLES",
                    "uid:1000=read-only,gid:27=operator",
                ),
                ("HOSTBUS_HTTP_SOCKET_OWNER", "0:27"),
            ],
            socket.clone(),
        )
        .expect("load");
        let h = c.http().expect("http").expect("on");
        let s = h.socket.expect("socket");
        assert_eq!((s.mode, s.owner), (0o660, Some((0, Some(27)))));
        assert_eq!(
            h.peer_roles.role(1000, 27),
            Some(Role::ReadOnly),
            "a uid wins"
        );
        assert_eq!(h.peer_roles.role(1001, 27), Some(Role::Operator));
        assert_eq!(
            h.peer_roles.role(0, 0),
            None,
            "given roles replace the default"
        );
        let d = load(&[], socket.clone())
            .expect("load")
            .http()
            .expect("http")
            .expect("on");
        assert_eq!(
            d.peer_roles.role(0, 0),
            Some(Role::Admin),
            "root by default"
        );
        for (k, v) in [
            ("HOSTBUS_HTTP_PEER_ROLES", "user:bob=admin"),
            ("HOSTBUS_HTTP_PEER_ROLES", "uid:x=admin"),
            ("HOSTBUS_HTTP_PEER_ROLES", "uid:1=root"),
            ("HOSTBUS_HTTP_SOCKET_MODE", "0999"),
            ("HOSTBUS_HTTP_SOCKET_OWNER", "bob"),
        ] {
            let e = load(&[(k, v)], socket.clone()).expect_err(v);
            assert!(e.to_string().contains("http_"), "{e}");
        }
        let tcp = flags(&["--http-listen", "127.0.0.1:9443"]);
        let e = load(&[], tcp).expect_err("no TLS material");
        assert!(e.to_string().contains("http_tls_cert"), "{e}");
    }
}
