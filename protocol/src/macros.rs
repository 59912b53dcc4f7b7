//! The two declarations every wire type goes through: what a wire enum and
//! a wire struct derive, and how they read unknown values, is written here
//! once.

/// Declares a wire enum of unit variants in snake_case with an `Unknown`
/// fallback, `as_str`, `Display` and `ALL`.
macro_rules! wire_enum {
    ($(#[doc = $doc:literal])+ $name:ident { $( $(#[doc = $vdoc:literal])+ $variant:ident = $wire:literal, )+ }) => {
        $(#[doc = $doc])+
        ///
        /// Values this peer does not know decode to `Unknown`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
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

/// Declares a wire struct: named public fields, serde, schema and (feature
/// `arbitrary`) fuzzing support, and with a `validate(this) { .. }` clause
/// its [`Validate`](crate::validate::Validate) rule, beside the fields it
/// checks. After the doc comment, `#[serde(..)]` and a `#[derive(..)]` of
/// further traits go on the struct; every field takes its own docs and
/// attributes.
macro_rules! wire_struct {
    (
        $(#[doc = $doc:literal])+
        $(#[serde($($container:tt)*)])*
        $(#[derive($($extra:ident),+)])?
        $name:ident { $( $(#[$fmeta:meta])* $field:ident : $ty:ty, )* }
        $( validate($this:ident) $check:block )?
    ) => {
        $(#[doc = $doc])+
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        $(#[derive($($extra),+)])?
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        $(#[serde($($container)*)])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        $(impl crate::validate::Validate for $name {
            #[allow(unused_variables)]
            fn validate(&self) -> crate::validate::Validation {
                let $this = self;
                $check
            }
        })?
    };
}
