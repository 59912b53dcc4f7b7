//! Records (what an object is, as read back from the host) and specs (what a
//! manager asks to create), in the XenAPI spirit: every record carries the
//! object's generation and the operations it allows now.
//!
//! Split by object class: [`host`], [`vm`] (records) and [`vm_spec`] (what
//! to define), [`migration`] (a move's result and notes), [`storage`], [`network`], [`task`]; [`object`] and
//! [`device`] hold what several classes refer to; [`task`] has
//! [`Record`] (any record, a task's result), [`inventory`] the [`Inventory`].

pub mod device;
pub mod host;
pub mod inventory;
pub mod migration;
pub mod network;
pub mod object;
pub mod storage;
pub mod task;
pub mod vm;
pub mod vm_spec;

pub use device::*;
pub use host::*;
pub use inventory::*;
pub use migration::*;
pub use network::*;
pub use object::*;
pub use storage::*;
pub use task::*;
pub use vm::*;
pub use vm_spec::*;

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = u64;
