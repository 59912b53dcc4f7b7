//! libvirt calls that virt 0.5 does not wrap. With `events.rs`, the only
//! module of the bridge with unsafe code.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::raw::c_int;

use virt::connect::Connect;
use virt::sys;

/// Cumulative host CPU time over all CPUs by kind (`user`, `kernel`,
/// `idle`, `iowait`, ...), in nanoseconds: `virNodeGetCPUStats`.
pub(crate) fn node_cpu_times(conn: &Connect) -> Result<BTreeMap<String, u64>, virt::error::Error> {
    // SAFETY: `conn` is a live connection for the duration of the call.
    let ptr = unsafe { conn.as_ptr() };
    let mut n: c_int = 0;
    // SAFETY: a null params array asks libvirt for the number of fields.
    let rc = unsafe {
        sys::virNodeGetCPUStats(
            ptr,
            sys::VIR_NODE_CPU_STATS_ALL_CPUS,
            std::ptr::null_mut(),
            &mut n,
            0,
        )
    };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut params = vec![
        sys::virNodeCPUStats {
            field: [0; 80],
            value: 0,
        };
        usize::try_from(n).unwrap_or(0)
    ];
    // SAFETY: `params` has room for `n` entries, as libvirt asked.
    let rc = unsafe {
        sys::virNodeGetCPUStats(
            ptr,
            sys::VIR_NODE_CPU_STATS_ALL_CPUS,
            params.as_mut_ptr(),
            &mut n,
            0,
        )
    };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    let filled = usize::try_from(n).unwrap_or(0).min(params.len());
    Ok(params[..filled]
        .iter()
        .map(|p| {
            // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
            let name = unsafe { CStr::from_ptr(p.field.as_ptr()) };
            (name.to_string_lossy().into_owned(), p.value)
        })
        .collect())
}

/// Aborts the domain's current job (a migration): `virDomainAbortJob`.
pub(crate) fn abort_job(dom: &virt::domain::Domain) -> Result<(), virt::error::Error> {
    // SAFETY: `dom` is a live domain handle for the duration of the call.
    let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// The guest's downtime (ms) of the domain's last completed job, a
/// migration, as libvirt measured it: the `downtime` field of
/// `virDomainGetJobStats(.., VIR_DOMAIN_JOB_STATS_COMPLETED)`. `None` when
/// there is no completed job or no such field. (virt 0.5's `job_stats`
/// reads libvirt's parameter array without checking it for null, which it
/// is when there is no job.)
pub(crate) fn completed_downtime_ms(dom: &virt::domain::Domain) -> Option<u64> {
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: `dom` is live; libvirt allocates `params` (n entries) or
    // leaves it null.
    let rc = unsafe {
        sys::virDomainGetJobStats(
            dom.as_ptr(),
            &mut kind,
            &mut params,
            &mut n,
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED,
        )
    };
    if rc < 0 || params.is_null() {
        return None;
    }
    let count = usize::try_from(n).unwrap_or(0);
    // SAFETY: libvirt returned `n` initialised entries at `params`.
    let entries = unsafe { std::slice::from_raw_parts(params, count) };
    let downtime = entries.iter().find_map(|p| {
        // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
        let name = unsafe { CStr::from_ptr(p.field.as_ptr()) };
        if name.to_bytes() == b"downtime" && p.type_ == sys::VIR_TYPED_PARAM_ULLONG as c_int {
            // SAFETY: the type says the union holds an unsigned long long.
            Some(unsafe { p.value.ul })
        } else {
            None
        }
    });
    // SAFETY: `params` and `n` are what libvirt returned.
    unsafe { sys::virTypedParamsFree(params, n) };
    downtime
}
