//! libvirt's event loop and lifecycle callbacks.
//!
//! libvirt delivers events only through a registered event loop implementation;
//! the bridge registers libvirt's default implementation once per process and
//! runs it on its own thread (`hostbus-libvirt-events`). Callbacks run on that
//! thread and do nothing but send the object's identity to the bridge's event
//! worker over a channel: they never call back into libvirt for records, so
//! the loop stays responsive. The worker observes the object, which emits the
//! protocol-level event.
//!
//! virt 0.5 has no safe wrapper for event registration, so this module calls
//! `virt::sys` directly. It is the only module of the bridge with unsafe code.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::ptr::null_mut;
use std::sync::mpsc::Sender;
use std::sync::Once;
use std::time::Duration;

use virt::connect::Connect;
use virt::sys;

/// What a callback reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawEvent {
    /// A domain changed (lifecycle), by uuid.
    Vm(String),
    /// A domain rebooted, by uuid.
    VmRebooted(String),
    /// A storage pool changed, by name.
    Pool(String),
    /// A network changed, by name.
    Network(String),
    /// The connection to libvirt closed.
    ConnectionClosed,
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event loop and starts its thread, once per
/// process. Must run before the first connection is opened.
pub(crate) fn ensure_event_loop() {
    EVENT_LOOP.call_once(|| {
        // libvirt prints every error to stderr by default; the bridge maps
        // and reports errors itself.
        virt::error::clear_error_callback();
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!(error = %e, "cannot register the libvirt event loop; lifecycle events will come from reconciliation only");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("hostbus-libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::warn!(error = %e, "libvirt event loop iteration failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt event loop thread");
        }
    });
}

/// Callback ids registered on one connection.
pub(crate) struct Registrations {
    domain: Vec<c_int>,
    pool: Vec<c_int>,
    network: Vec<c_int>,
    close: bool,
}

type Opaque = Sender<RawEvent>;

fn opaque(tx: &Sender<RawEvent>) -> *mut c_void {
    Box::into_raw(Box::new(tx.clone())).cast()
}

unsafe extern "C" fn free_opaque(opaque: *mut c_void) {
    // SAFETY: libvirt calls this exactly once per registration, with the
    // pointer produced by `opaque()` from a `Box<Sender<RawEvent>>`.
    drop(unsafe { Box::from_raw(opaque.cast::<Opaque>()) });
}

/// Sends `ev` through the sender behind `opaque`.
///
/// # Safety
/// `opaque` must be a pointer produced by `opaque()` that libvirt has not freed.
unsafe fn send(opaque: *mut c_void, ev: RawEvent) {
    // SAFETY: guaranteed by the caller; the sender is only read.
    let tx = unsafe { &*opaque.cast::<Opaque>() };
    let _ = tx.send(ev);
}

/// # Safety
/// `dom` must be a valid domain pointer for the duration of the call.
unsafe fn domain_uuid(dom: sys::virDomainPtr) -> Option<String> {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid per the caller; `buf` has the documented size.
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: libvirt wrote a NUL-terminated string into `buf`.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Defines a callback that reports the object it is called for, by the
/// uuid (domains) or name (pools, networks) `$id` reads from it, as
/// `$event`; `$arg`s are the event's own arguments, unused. The SAFETY
/// argument is the same for all: libvirt passes a valid object, whose name
/// lives as long as it, and our registration's opaque.
macro_rules! callback {
    ($(#[$doc:meta])* $name:ident($obj:ty, $id:expr $(, $arg:ident: $ty:ty)*) $(-> $ret:ty = $val:expr)? => $event:path) => {
        $(#[$doc])*
        unsafe extern "C" fn $name(
            _conn: sys::virConnectPtr,
            obj: $obj,
            $($arg: $ty,)*
            opaque: *mut c_void,
        ) $(-> $ret)? {
            // SAFETY: see the macro.
            unsafe {
                if let Some(id) = $id(obj) {
                    send(opaque, $event(id));
                }
            }
            $($val)?
        }
    };
}

/// # Safety
/// `name` must be null or a NUL-terminated string.
unsafe fn owned(name: *const c_char) -> Option<String> {
    // SAFETY: guaranteed by the caller.
    (!name.is_null()).then(|| {
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// # Safety
/// `pool` must be a valid pool pointer for the duration of the call.
unsafe fn pool_name(pool: sys::virStoragePoolPtr) -> Option<String> {
    // SAFETY: the returned name lives as long as the pool.
    unsafe { owned(sys::virStoragePoolGetName(pool)) }
}

/// # Safety
/// `net` must be a valid network pointer for the duration of the call.
unsafe fn network_name(net: sys::virNetworkPtr) -> Option<String> {
    // SAFETY: the returned name lives as long as the network.
    unsafe { owned(sys::virNetworkGetName(net)) }
}

callback!(on_domain_lifecycle(sys::virDomainPtr, domain_uuid, _event: c_int, _detail: c_int) -> c_int = 0 => RawEvent::Vm);
callback!(on_domain_reboot(sys::virDomainPtr, domain_uuid) => RawEvent::VmRebooted);
callback!(
    /// A device was added to or removed from a running domain, or its removal
    /// failed: the guest's answer to a hotplug request, which may come long
    /// after the request returned.
    on_domain_device(sys::virDomainPtr, domain_uuid, _alias: *const c_char) => RawEvent::Vm
);
callback!(
    /// The guest's balloon reached a new size: the memory a `vm.set_memory`
    /// asked for is in effect once the guest has given it back.
    on_domain_balloon(sys::virDomainPtr, domain_uuid, _actual: std::os::raw::c_ulonglong) => RawEvent::Vm
);
callback!(on_pool_lifecycle(sys::virStoragePoolPtr, pool_name, _event: c_int, _detail: c_int) => RawEvent::Pool);
callback!(on_pool_refresh(sys::virStoragePoolPtr, pool_name) => RawEvent::Pool);
callback!(on_network_lifecycle(sys::virNetworkPtr, network_name, _event: c_int, _detail: c_int) => RawEvent::Network);

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, _reason: c_int, opaque: *mut c_void) {
    // SAFETY: our registration's opaque.
    unsafe { send(opaque, RawEvent::ConnectionClosed) };
}

type LifecycleCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type GenericDomainCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);
type DeviceCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *const c_char, *mut c_void);
type BalloonCb = unsafe extern "C" fn(
    sys::virConnectPtr,
    sys::virDomainPtr,
    std::os::raw::c_ulonglong,
    *mut c_void,
);
type PoolLifecycleCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virStoragePoolPtr, c_int, c_int, *mut c_void);
type GenericPoolCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virStoragePoolPtr, *mut c_void);
type NetLifecycleCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virNetworkPtr, c_int, c_int, *mut c_void);
type GenericNetCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virNetworkPtr, *mut c_void);

/// Registers one callback: `register` gets a fresh opaque sender and returns
/// libvirt's callback id, or a negative value when libvirt refused, in
/// which case the opaque is freed here.
fn register_one(
    tx: &Sender<RawEvent>,
    register: impl FnOnce(*mut c_void) -> c_int,
) -> Option<c_int> {
    let op = opaque(tx);
    let rc = register(op);
    if rc < 0 {
        // SAFETY: libvirt did not take ownership of `op`.
        unsafe { free_opaque(op) };
        None
    } else {
        Some(rc)
    }
}

/// Registers each `(event id, callback)` with `register_any` (which gets
/// the id, the callback and a fresh opaque); returns the registrations
/// libvirt accepted. A refusal is logged, as a warning when every driver
/// is `expected` to have such events (domains; the test driver has no pool
/// or network events).
fn register_many<C: Copy>(
    tx: &Sender<RawEvent>,
    callbacks: &[(u32, C)],
    expected: bool,
    register_any: impl Fn(c_int, C, *mut c_void) -> c_int,
) -> Vec<c_int> {
    let mut ids = Vec::new();
    for &(id, cb) in callbacks {
        match register_one(tx, |op| register_any(id as c_int, cb, op)) {
            Some(rc) => ids.push(rc),
            None if expected => {
                tracing::warn!(event_id = id, "libvirt refused an event registration")
            }
            None => tracing::debug!(event_id = id, "no such events on this driver"),
        }
    }
    ids
}

/// Registers the lifecycle callbacks on `conn`. Failures are logged: the
/// periodic reconciliation still catches every change, only later.
pub(crate) fn register(conn: &Connect, tx: &Sender<RawEvent>) -> Registrations {
    let mut regs = Registrations {
        domain: Vec::new(),
        pool: Vec::new(),
        network: Vec::new(),
        close: false,
    };
    // SAFETY: `conn` is a live connection for the duration of the call.
    let ptr = unsafe { conn.as_ptr() };

    // SAFETY (all transmutes below): libvirt's *RegisterAny functions take a
    // generic callback type and call it with the signature of the event id,
    // exactly like the C macros VIR_DOMAIN_EVENT_CALLBACK & co. The function
    // types differ only in their trailing arguments, which follow the C ABI.
    let device = unsafe { std::mem::transmute::<DeviceCb, GenericDomainCb>(on_domain_device) };
    let balloon = unsafe { std::mem::transmute::<BalloonCb, GenericDomainCb>(on_domain_balloon) };
    let domain_cbs: [(u32, GenericDomainCb); 6] = [
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, unsafe {
            std::mem::transmute::<LifecycleCb, GenericDomainCb>(on_domain_lifecycle)
        }),
        (sys::VIR_DOMAIN_EVENT_ID_REBOOT, on_domain_reboot),
        (sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, device),
        (sys::VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, device),
        (sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, device),
        (sys::VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, balloon),
    ];
    let free: sys::virFreeCallback = Some(free_opaque);
    // SAFETY (the registrations below): valid connection; libvirt frees
    // `op` through `free_opaque` when it drops the registration.
    regs.domain = register_many(tx, &domain_cbs, true, |id, cb, op| unsafe {
        sys::virConnectDomainEventRegisterAny(ptr, null_mut(), id, Some(cb), op, free)
    });
    let pool_cbs: [(u32, GenericPoolCb); 2] = [
        (sys::VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, unsafe {
            std::mem::transmute::<PoolLifecycleCb, GenericPoolCb>(on_pool_lifecycle)
        }),
        (sys::VIR_STORAGE_POOL_EVENT_ID_REFRESH, on_pool_refresh),
    ];
    regs.pool = register_many(tx, &pool_cbs, false, |id, cb, op| unsafe {
        sys::virConnectStoragePoolEventRegisterAny(ptr, null_mut(), id, Some(cb), op, free)
    });
    // SAFETY: as for domains.
    let cb = unsafe { std::mem::transmute::<NetLifecycleCb, GenericNetCb>(on_network_lifecycle) };
    let net_cbs = [(sys::VIR_NETWORK_EVENT_ID_LIFECYCLE, cb)];
    regs.network = register_many(tx, &net_cbs, false, |id, cb, op| unsafe {
        sys::virConnectNetworkEventRegisterAny(ptr, null_mut(), id, Some(cb), op, free)
    });
    // SAFETY: valid connection; libvirt frees `op` through `free_opaque`
    // when the callback is unregistered or the connection is freed.
    regs.close = register_one(tx, |op| unsafe {
        sys::virConnectRegisterCloseCallback(ptr, Some(on_close), op, Some(free_opaque))
    })
    .is_some();
    regs
}

/// Removes the callbacks registered on `conn`.
pub(crate) fn deregister(conn: &Connect, regs: Registrations) {
    // SAFETY: `conn` is the live connection the callbacks were registered on.
    let ptr = unsafe { conn.as_ptr() };
    for id in regs.domain {
        // SAFETY: `id` came from a successful registration on `ptr`.
        unsafe { sys::virConnectDomainEventDeregisterAny(ptr, id) };
    }
    for id in regs.pool {
        // SAFETY: as above.
        unsafe { sys::virConnectStoragePoolEventDeregisterAny(ptr, id) };
    }
    for id in regs.network {
        // SAFETY: as above.
        unsafe { sys::virConnectNetworkEventDeregisterAny(ptr, id) };
    }
    if regs.close {
        // SAFETY: `on_close` was registered on `ptr`.
        unsafe { sys::virConnectUnregisterCloseCallback(ptr, Some(on_close)) };
    }
}
