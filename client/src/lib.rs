//! The hostbus client SDK used by cluster managers, event subscribers and
//! operators, and the library behind the `hostctl` CLI. It speaks only the
//! wire protocol and must build without libvirt. The SDK lands with issue 5.
