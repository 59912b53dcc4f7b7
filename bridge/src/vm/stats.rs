//! VM statistics: CPU time, memory, block and network counters.

use hostbus_protocol::types::{BlockStats, NetStats, PowerState, VmStats};
use hostbus_protocol::{now_ms, Error};
use uuid::Uuid;
use virt::sys;

use crate::errors::Subject;
use crate::inner::Inner;

impl Inner {
    pub(crate) fn vm_stats(&self, uuid: Uuid) -> Result<VmStats, Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, uuid)?;
        let raw = self.vm_raw(&dom)?;
        let nic_devs = raw.nic_devs.clone();
        let rec = self.observe_vm(raw, None);
        let info = self.lv(&Subject::vm(uuid, "stats"), dom.info())?;
        let active = matches!(rec.power_state, PowerState::Running | PowerState::Paused);
        let mut block = Vec::new();
        let mut net = Vec::new();
        let mut memory_rss_kib = None;
        if active {
            for d in &rec.disks {
                if let Ok(s) = dom.block_stats(&d.target) {
                    block.push(BlockStats {
                        target: d.target.clone(),
                        read_reqs: s.rd_req.max(0) as u64,
                        read_bytes: s.rd_bytes.max(0) as u64,
                        write_reqs: s.wr_req.max(0) as u64,
                        write_bytes: s.wr_bytes.max(0) as u64,
                    });
                }
            }
            for (n, dev) in rec.nics.iter().zip(nic_devs) {
                let s = dev.as_deref().and_then(|d| dom.interface_stats(d).ok());
                net.push(NetStats {
                    mac: n.mac.clone(),
                    rx_bytes: s.as_ref().map_or(0, |s| s.rx_bytes.max(0) as u64),
                    rx_packets: s.as_ref().map_or(0, |s| s.rx_packets.max(0) as u64),
                    tx_bytes: s.as_ref().map_or(0, |s| s.tx_bytes.max(0) as u64),
                    tx_packets: s.as_ref().map_or(0, |s| s.tx_packets.max(0) as u64),
                    interface: dev,
                });
            }
            memory_rss_kib = dom.memory_stats(0).ok().and_then(|v| {
                v.into_iter()
                    .find(|m| m.tag == sys::VIR_DOMAIN_MEMORY_STAT_RSS)
                    .map(|m| m.val)
            });
        }
        Ok(VmStats {
            uuid,
            sampled_at: now_ms(),
            power_state: rec.power_state,
            cpu_time_ns: info.cpu_time,
            vcpus: rec.vcpus,
            memory_kib: rec.memory_kib,
            memory_rss_kib,
            block,
            net,
        })
    }
}
