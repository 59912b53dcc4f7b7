//! Records (what an object is, as read back from the host) and specs (what a
//! manager asks to create), in the XenAPI spirit: every record carries the
//! object's generation and the operations it allows now.
//!
//! Split by object class: [`host`], [`vm`] (records) and [`vm_spec`] (what
//! to define), [`storage`], [`network`], [`task`]; [`object`] and
//! [`device`] hold what several classes refer to; [`task`] has
//! [`Record`] (any record, a task's result), [`inventory`] the [`Inventory`].

pub mod device;
pub mod host;
pub mod inventory;
pub mod network;
pub mod object;
pub mod storage;
pub mod task;
pub mod vm;
pub mod vm_spec;

pub use device::*;
pub use host::*;
pub use inventory::*;
pub use network::*;
pub use object::*;
pub use storage::*;
pub use task::*;
pub use vm::*;
pub use vm_spec::*;

/// Milliseconds since the Unix epoch, UTC.
pub type Timestamp = u64;

/// Declares a wire enum of unit variants in snake_case with an `Unknown`
/// fallback, `as_str`, `Display` and `ALL`.
macro_rules! wire_enum {
    ($(#[doc = $doc:literal])+ $name:ident { $( $(#[doc = $vdoc:literal])+ $variant:ident = $wire:literal, )+ }) => {
        $(#[doc = $doc])+
        ///
        /// Values this peer does not know decode to `Unknown`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub enum $name {
            $( $(#[doc = $vdoc])+ #[serde(rename = $wire)] $variant, )+
            /// A value sent by a newer peer that this one does not know.
            #[serde(other, rename = "unknown")]
            Unknown,
        }

        impl $name {
            /// Every known value.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// `Ok` for a value this peer knows; `unknown` (any value it
            /// does not know) is refused, naming `field` and the values.
            pub fn known(self, field: &str) -> crate::validate::Validation {
                if self != $name::Unknown {
                    return Ok(());
                }
                let known: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                Err(crate::validate::ValidationError::new(
                    field,
                    format!("unknown value; one of {}", known.join(", ")),
                ))
            }

            /// The value as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Unknown => "unknown",
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use wire_enum;
