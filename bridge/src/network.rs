//! Virtual networks.

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{NetworkRecord, ObjectClass};
use hostbus_protocol::{Error, ErrorCode};
use virt::connect::Connect;
use virt::network::Network;

use crate::errors::Subject;
use crate::errors::{already_exists, state_error};
use crate::inner::{read_all, uuid_of, Inner};
use crate::xml;

fn net_bad_state(name: &str, op: &str, active: bool) -> Error {
    let current = if active { "active" } else { "inactive" };
    state_error(ErrorCode::NetworkBadState, "network", name, op, current)
}

impl Inner {
    pub(crate) fn lookup_network(&self, conn: &Connect, name: &str) -> Result<Network, Error> {
        self.lv(
            &Subject::network(name, "lookup"),
            conn.lookup_network_by_name(name),
        )
    }

    fn network_raw(&self, n: &Network) -> Result<NetworkRecord, Error> {
        let name = n.name().unwrap_or_default();
        let facts = xml::parse_network(&self.lv(&Subject::network(&name, "get"), n.xml_desc(0))?)?;
        Ok(NetworkRecord {
            uuid: uuid_of(n.uuid_string()),
            active: n.is_active().unwrap_or(false),
            autostart: n.autostart().unwrap_or(false),
            persistent: n.is_persistent().unwrap_or(true),
            bridge: n.bridge_name().ok().or(facts.bridge),
            forward: facts.forward,
            ip: facts.ip,
            generation: 0,
            name,
        })
    }

    pub(crate) fn network_record(&self, n: &Network) -> Result<NetworkRecord, Error> {
        let rec = self.network_raw(n)?;
        let id = rec.name.clone();
        Ok(self.observed(&id, rec, None))
    }

    pub(crate) fn all_networks(&self, conn: &Connect) -> Result<Vec<NetworkRecord>, Error> {
        let nets = self.lv(&Subject::Host, conn.list_all_networks(0));
        let mut out = read_all(nets, ErrorCode::NetworkNotFound, |n| {
            self.network_record(&n)
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) fn refresh_network(&self, name: &str) -> Result<(), Error> {
        let conn = self.conn()?;
        match conn.lookup_network_by_name(name) {
            Ok(n) => {
                self.network_record(&n)?;
            }
            Err(_) => {
                self.gone(ObjectClass::Network, name);
            }
        }
        Ok(())
    }

    pub(crate) fn network_list(&self) -> Result<NetworkListResponse, Error> {
        let conn = self.conn()?;
        Ok(NetworkListResponse {
            networks: self.all_networks(&conn)?,
        })
    }

    pub(crate) fn network_get(&self, name: &str) -> Result<NetworkRecord, Error> {
        let conn = self.conn()?;
        let n = self.lookup_network(&conn, name)?;
        self.network_record(&n)
    }

    pub(crate) fn network_define(&self, r: NetworkDefineRequest) -> Result<NetworkRecord, Error> {
        let spec = r.spec;
        let conn = self.conn()?;
        if conn.lookup_network_by_name(&spec.name).is_ok() {
            return Err(already_exists("network", &spec.name));
        }
        let subject = Subject::network(&spec.name, "define");
        let n = self.lv(&subject, conn.define_network_xml(&xml::network_xml(&spec)))?;
        if spec.autostart {
            self.lv(&subject, n.set_autostart(true).map(|_| ()))?;
            self.lv(&subject, n.create().map(|_| ()))?;
        }
        tracing::info!(network = %spec.name, "defined network");
        self.network_record(&n)
    }

    fn network_op(
        &self,
        name: &str,
        op: &'static str,
        need_active: bool,
        act: impl FnOnce(&Network) -> Result<(), virt::error::Error>,
    ) -> Result<Network, Error> {
        let conn = self.conn()?;
        let n = self.lookup_network(&conn, name)?;
        let rec = self.network_record(&n)?;
        if rec.active != need_active {
            return Err(net_bad_state(name, op, rec.active));
        }
        self.lv(&Subject::network(name, op), act(&n))?;
        Ok(n)
    }

    pub(crate) fn network_start(&self, name: &str) -> Result<NetworkRecord, Error> {
        let n = self.network_op(name, "network.start", false, |n| n.create().map(|_| ()))?;
        self.network_record(&n)
    }

    pub(crate) fn network_stop(&self, name: &str) -> Result<NetworkRecord, Error> {
        let n = self.network_op(name, "network.stop", true, |n| n.destroy())?;
        self.network_record(&n)
    }

    pub(crate) fn network_undefine(&self, name: &str) -> Result<Empty, Error> {
        self.network_op(name, "network.undefine", false, |n| n.undefine())?;
        self.gone(ObjectClass::Network, name);
        tracing::info!(network = %name, "undefined network");
        Ok(Empty {})
    }
}
