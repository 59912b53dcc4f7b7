//! The HTTP binding's settings (docs/http.md), parsed and checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::auth::Role;

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
}

/// The uid this process runs as (the owner of its `/proc` entry).
fn own_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

impl Config {
    /// The HTTP binding's settings; `None` when it is off.
    pub fn http(&self) -> Result<Option<HttpSettings>, ConfigError> {
        let socket = match &self.http_socket {
            None => None,
            Some(path) => Some(SocketSettings {
                path: path.clone(),
                mode: u32::from_str_radix(self.http_socket_mode.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        field_error(
                            "http_socket_mode",
                            format_args!(
                                "{:?} is no octal file mode like 0660",
                                self.http_socket_mode
                            ),
                        )
                    })?,
                owner: self
                    .http_socket_owner
                    .as_deref()
                    .map(parse_owner)
                    .transpose()?,
            }),
        };
        let tcp = match &self.http_listen {
            None => None,
            Some(addr) => {
                let addr = addr.parse().map_err(|_| {
                    field_error(
                        "http_listen",
                        format_args!("{addr:?} is not an address like 0.0.0.0:9443"),
                    )
                })?;
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
        let mut peer_roles = PeerRoles::default();
        for (peer, role) in &self.http_peer_roles {
            let bad = |why: &str| {
                field_error("http_peer_roles", format_args!("{peer} = {role:?}: {why}"))
            };
            let role =
                Role::parse(role).ok_or_else(|| bad("roles are read-only, operator or admin"))?;
            let id = |s: &str| {
                s.parse::<u32>()
                    .map_err(|_| bad("peers are uid:N or gid:N"))
            };
            match peer.split_once(':') {
                Some(("uid", n)) => peer_roles.uids.insert(id(n)?, role),
                Some(("gid", n)) => peer_roles.gids.insert(id(n)?, role),
                _ => return Err(bad("peers are uid:N or gid:N")),
            };
        }
        if self.http_peer_roles.is_empty() {
            peer_roles.uids.insert(0, Role::Admin);
            if let Some(uid) = own_uid() {
                peer_roles.uids.insert(uid, Role::Admin);
            }
        }
        Ok(Some(HttpSettings {
            socket,
            tcp,
            peer_roles,
            roles: self.role_map()?,
        }))
    }
}

fn parse_owner(s: &str) -> Result<(u32, Option<u32>), ConfigError> {
    let bad = || {
        field_error(
            "http_socket_owner",
            format_args!("{s:?} is not UID or UID:GID (numeric)"),
        )
    };
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.map(|g| g.parse().map_err(|_| bad())).transpose()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::Flags;
    use super::*;

    fn load(env: &[(&str, &str)], flags: Flags) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(&flags, &env)
    }

    #[test]
    fn the_binding_is_off_by_default_and_peers_map_to_roles() {
        let c = load(&[], Flags::default()).expect("load");
        assert!(c.http().expect("http").is_none());
        let flags = Flags {
            http_socket: Some("/run/hostbus/agent.sock".into()),
            ..Flags::default()
        };
        let c = load(
            &[
                (
                    "HOSTBUS_HTTP_PEER_ROLES",
                    "uid:1000=read-only,gid:27=operator",
                ),
                ("HOSTBUS_HTTP_SOCKET_OWNER", "0:27"),
            ],
            flags.clone(),
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
        let d = load(&[], flags.clone())
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
            let e = load(&[(k, v)], flags.clone()).expect_err(v);
            assert!(e.to_string().contains("http_"), "{e}");
        }
        let tcp = Flags {
            http_listen: Some("127.0.0.1:9443".into()),
            ..Flags::default()
        };
        let e = load(&[], tcp).expect_err("no TLS material");
        assert!(e.to_string().contains("http_tls_cert"), "{e}");
    }
}
