//! The VM power operations: start, shutdown, destroy, reboot, reset,
//! pause, resume, suspend.

use std::time::{Duration, Instant};

use hostbus_protocol::commands::*;
use hostbus_protocol::types::{PowerState, VmOperation, VmRecord};
use hostbus_protocol::{Error, ErrorCode, EventAction};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::{require, require_not_template, VmResult};
use crate::errors::Subject;
use crate::inner::Inner;
use crate::tasks::Progress;

impl Inner {
    /// Looks a VM up, checks `op` is allowed in its state, marks `op` current.
    pub(crate) fn prepare(
        &self,
        uuid: Uuid,
        op: VmOperation,
    ) -> Result<(Connect, Domain, VmRecord), Error> {
        let conn = self.conn()?;
        let dom = self.lookup_vm(&conn, uuid)?;
        let rec = self.vm_record(&dom)?;
        require(&rec, op)?;
        if op == VmOperation::Start {
            require_not_template(&rec, op)?;
        }
        Ok((conn, dom, rec))
    }

    /// Runs one libvirt action of `op` on a VM and returns the new record.
    pub(crate) fn simple_op(
        &self,
        uuid: Uuid,
        id: Uuid,
        op: VmOperation,
        hint: Option<EventAction>,
        action: impl FnOnce(&Domain, &VmRecord) -> Result<(), virt::error::Error>,
    ) -> Result<VmRecord, Error> {
        let (_conn, dom, rec) = self.prepare(uuid, op)?;
        let _op = self.begin_op(uuid, id, op);
        self.lv(&Subject::vm(uuid, op.as_str()), action(&dom, &rec))?;
        let raw = self.vm_raw(&dom)?;
        Ok(self.observe_vm(raw, hint))
    }

    pub(crate) fn vm_start(&self, r: VmStartRequest, id: Uuid) -> VmResult {
        let flags = if r.paused {
            sys::VIR_DOMAIN_START_PAUSED
        } else {
            0
        };
        self.simple_op(r.uuid, id, VmOperation::Start, None, |d, _| {
            match d.create_with_flags(flags) {
                // Drivers without the paused-start flag (the test driver):
                // start, then pause at once.
                Err(e) if r.paused && e.message().contains("unsupported flags") => {
                    d.create()?;
                    d.suspend()
                }
                other => other.map(|_| ()),
            }
        })
    }

    pub(crate) fn vm_destroy(&self, uuid: Uuid, id: Uuid) -> VmResult {
        self.simple_op(uuid, id, VmOperation::Destroy, None, |d, rec| {
            if rec.power_state == PowerState::Suspended {
                d.managed_save_remove(0)
            } else {
                d.destroy()
            }
        })
    }

    /// Asks the guest to reboot. On a real hypervisor whether it does is the
    /// guest's affair (QEMU passes the request on through ACPI): the
    /// `rebooted` event comes from libvirt's reboot callback when the guest
    /// actually resets, never from the request. The test driver reboots
    /// within the call and has no such callback, so there the call itself
    /// reports it.
    pub(crate) fn vm_reboot(&self, uuid: Uuid, id: Uuid) -> VmResult {
        let synchronous = self
            .conn()?
            .driver_type()
            .is_ok_and(|t| t.eq_ignore_ascii_case("test"));
        let hint = synchronous.then_some(EventAction::Rebooted);
        self.simple_op(uuid, id, VmOperation::Reboot, hint, |d, _| d.reboot(0))
    }

    pub(crate) fn vm_reset(&self, uuid: Uuid, id: Uuid) -> VmResult {
        self.simple_op(
            uuid,
            id,
            VmOperation::Reset,
            Some(EventAction::Rebooted),
            |d, _| d.reset(),
        )
    }

    pub(crate) fn vm_pause(&self, uuid: Uuid, id: Uuid) -> VmResult {
        self.simple_op(uuid, id, VmOperation::Pause, None, |d, _| d.suspend())
    }

    pub(crate) fn vm_resume(&self, uuid: Uuid, id: Uuid) -> VmResult {
        self.simple_op(uuid, id, VmOperation::Resume, None, |d, rec| {
            if rec.power_state == PowerState::Suspended {
                d.create().map(|_| ())
            } else {
                d.resume()
            }
        })
    }

    pub(crate) fn vm_suspend(&self, uuid: Uuid, id: Uuid) -> VmResult {
        self.simple_op(uuid, id, VmOperation::Suspend, None, |d, _| {
            d.managed_save(0)
        })
    }

    pub(crate) fn vm_shutdown(
        &self,
        r: VmShutdownRequest,
        progress: &Progress,
        id: Uuid,
    ) -> VmResult {
        let (_conn, dom, _) = self.prepare(r.uuid, VmOperation::Shutdown)?;
        let _op = self.begin_op(r.uuid, id, VmOperation::Shutdown);
        let subject = Subject::vm(r.uuid, "shutdown");
        self.lv(&subject, dom.shutdown())?;
        let timeout = Duration::from_secs(u64::from(r.timeout_s));
        let started = Instant::now();
        loop {
            let raw = self.vm_raw(&dom)?;
            if raw.record.power_state == PowerState::Halted || r.timeout_s == 0 {
                return Ok(self.observe_vm(raw, None));
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                if r.force {
                    tracing::info!(vm = %r.uuid, timeout_s = r.timeout_s, "clean shutdown timed out; forcing off");
                    self.lv(&subject, dom.destroy())?;
                    return self.vm_record(&dom);
                }
                return Err(Error::new(
                    ErrorCode::Timeout,
                    [
                        ("operation", "vm.shutdown".to_owned()),
                        ("timeout_s", r.timeout_s.to_string()),
                    ],
                    format!(
                        "vm {} did not shut down within {} s",
                        raw.record.name, r.timeout_s
                    ),
                ));
            }
            progress.fraction(elapsed.as_millis() as u64, timeout.as_millis() as u64);
            // The guest was asked already: a passed deadline no longer applies.
            progress.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
