//! Presence: heartbeats with the host's health and load, and roster
//! announcements.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hostbus_bridge::HostLoad;
use hostbus_protocol::events::{Health, Load, Versions};
use hostbus_protocol::names;
use hostbus_protocol::types::{HealthStatus, HostRecord};
use hostbus_protocol::{
    encode, now_ms, ContentType, Heartbeat, RosterAction, COMMANDS, PROTOCOL_VERSION,
};
use lapin::Channel;

use super::{lock, Agent};
use crate::stamp::Presence;

/// What heartbeats and announcements report of the host, refreshed off
/// the runtime.
#[derive(Clone, Default)]
pub(super) struct Facts {
    libvirt: String,
    hypervisor: String,
    vms_active: u32,
    memory_free_kib: u64,
    load_avg_milli: u32,
}

impl Facts {
    fn note_load(&mut self, load: &HostLoad) {
        self.load_avg_milli = load.load_avg_milli;
        if let (Some(vms), Some(free)) = (load.vms_active, load.memory_free_kib) {
            self.vms_active = vms;
            self.memory_free_kib = free;
        }
    }
}

impl Agent {
    /// Publishes a heartbeat every interval, never waiting for commands,
    /// until a publish fails; returns why it stopped.
    pub(super) async fn heartbeats(self: Arc<Self>, publ: Channel) -> String {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.publish_heartbeat(&publ).await {
                return format!("cannot publish a heartbeat: {e}");
            }
        }
    }

    /// Publishes this host's roster announcement (`<host>.online` at every
    /// session start, `<host>.offline` at a clean stop), which the broker
    /// keeps in the roster stream for a manager that starts later.
    pub(super) async fn enroll(&self, publ: &Channel, action: RosterAction) -> anyhow::Result<()> {
        let capabilities = if action == RosterAction::Online {
            COMMANDS.iter().map(|c| c.name.to_owned()).collect()
        } else {
            Vec::new()
        };
        let f = lock(&self.facts).clone();
        let a = self.stamp.roster(self.presence(&f), action, capabilities);
        let body = encode(ContentType::MsgPack, &a)?;
        self.publish_confirmed(
            publ,
            names::PRESENCE_EXCHANGE,
            &a.routing_key(),
            &body,
            self.message_props("announcement", None),
        )
        .await
    }

    /// What heartbeats and roster announcements say about this agent now.
    fn presence(&self, f: &Facts) -> Presence {
        Presence {
            time: now_ms(),
            started_at: self.started_at,
            interval_ms: u32::try_from(self.cfg.heartbeat_interval_ms).unwrap_or(u32::MAX),
            labels: self.cfg.labels.clone(),
            versions: self.versions(f),
            placement: self.bridge.placement(),
            migration_uri: self.cfg.migration_uri.clone(),
        }
    }

    pub(super) fn versions(&self, f: &Facts) -> Versions {
        Versions {
            agent: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION.to_string(),
            libvirt: f.libvirt.clone(),
            hypervisor: f.hypervisor.clone(),
        }
    }

    /// Keeps the versions heartbeats report from the host's record.
    pub(super) fn note_host(&self, host: &HostRecord) {
        let mut f = lock(&self.facts);
        f.libvirt = host.libvirt_version.clone();
        f.hypervisor = format!("{} {}", host.hypervisor, host.hypervisor_version);
    }

    /// Refreshes load facts on a blocking thread; heartbeats never wait for it.
    pub(super) fn refresh_facts(&self) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let bridge = self.bridge.clone();
        let facts = self.facts.clone();
        let flag = self.refreshing.clone();
        tokio::task::spawn_blocking(move || {
            lock(&facts).note_load(&bridge.host_load());
            flag.store(false, Ordering::SeqCst);
        });
    }

    /// Keeps load facts read on a blocking thread (at session start, with
    /// the inventory), so the first heartbeat after a start reports the
    /// host's load rather than zeros.
    pub(super) fn note_load(&self, load: &HostLoad) {
        lock(&self.facts).note_load(load);
    }

    /// The host's heartbeat as of now (load facts refreshed in the
    /// background, for the next one).
    pub(crate) fn heartbeat_now(&self) -> Heartbeat {
        self.refresh_facts();
        let f = lock(&self.facts).clone();
        let h = self.bridge.health();
        let health = Health {
            status: h.status,
            hypervisor_connected: h.connected,
            message: if h.status == HealthStatus::Ok {
                String::new()
            } else {
                h.message
            },
        };
        let load = Load {
            in_flight: u32::try_from(self.metrics.in_flight()).unwrap_or(u32::MAX),
            commands_total: self.metrics.commands_total(),
            tasks_running: u32::try_from(self.bridge.running_tasks()).unwrap_or(u32::MAX),
            vms_active: f.vms_active,
            load_avg_milli: f.load_avg_milli,
            memory_free_kib: f.memory_free_kib,
        };
        self.stamp.heartbeat(self.presence(&f), health, load)
    }

    pub(super) async fn publish_heartbeat(&self, publ: &Channel) -> anyhow::Result<()> {
        let hb = self.heartbeat_now();
        let body = encode(ContentType::MsgPack, &hb)?;
        // A heartbeat older than three intervals is worthless: let the broker drop it.
        let props = self.message_props(
            "heartbeat",
            Some(self.cfg.heartbeat_interval_ms.saturating_mul(3)),
        );
        self.publish_confirmed(
            publ,
            names::PRESENCE_EXCHANGE,
            &hb.routing_key(),
            &body,
            props,
        )
        .await?;
        self.metrics.heartbeat_published();
        Ok(())
    }
}
