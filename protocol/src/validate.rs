//! Validation of requests: every field that a peer can get wrong is checked
//! before anything executes, and the error names the field at fault.

use std::fmt;

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct ValidationError {
    /// Path of the field at fault, such as `spec.disks[1].capacity_bytes`.
    pub field: String,
    /// What is wrong with it, in plain words.
    pub reason: String,
}

impl ValidationError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// Prefixes the field path with `parent`, so nested specs report a full path.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Checks a request (or a part of one) before it executes.
pub trait Validate {
    /// Returns the first field at fault, if any.
    fn validate(&self) -> Result<(), ValidationError>;
}

/// Result alias for validation.
pub type Validation = Result<(), ValidationError>;

/// Longest object name (VMs, pools, volumes, networks, snapshots), in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest free-text description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Largest vCPU count a spec may ask for.
pub const MAX_VCPUS: u32 = 4096;
/// Smallest memory a VM may be given, in KiB (1 MiB).
pub const MIN_MEMORY_KIB: u64 = 1024;
/// Largest memory a VM may be given, in KiB (16 TiB).
pub const MAX_MEMORY_KIB: u64 = 16 * 1024 * 1024 * 1024;
/// Largest volume size, in bytes (1 PiB).
pub const MAX_VOLUME_BYTES: u64 = 1 << 50;
/// Most disks or NICs in one VM spec.
pub const MAX_DEVICES: usize = 64;
/// Longest shutdown timeout, in seconds.
pub const MAX_SHUTDOWN_TIMEOUT_S: u32 = 3600;

/// Object names: 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`, `+`,
/// starting with a letter, digit or `_`.
pub fn check_name(field: &str, name: &str) -> Validation {
    if name.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format_args!("must be at most {MAX_NAME_LEN} bytes, got {}", name.len()),
        ));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(ValidationError::new(
            field,
            "must start with an ASCII letter, digit or `_`",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')))
    {
        return Err(ValidationError::new(
            field,
            format_args!("contains {bad:?}; allowed are ASCII letters, digits and . _ - +"),
        ));
    }
    Ok(())
}

/// Free text: at most [`MAX_DESCRIPTION_LEN`] bytes, no control characters but newline and tab.
pub fn check_text(field: &str, text: &str) -> Validation {
    if text.len() > MAX_DESCRIPTION_LEN {
        return Err(ValidationError::new(
            field,
            format_args!(
                "must be at most {MAX_DESCRIPTION_LEN} bytes, got {}",
                text.len()
            ),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// An inclusive numeric range.
pub fn check_range<T: PartialOrd + fmt::Display + Copy>(
    field: &str,
    v: T,
    min: T,
    max: T,
) -> Validation {
    if v < min || v > max {
        return Err(ValidationError::new(
            field,
            format_args!("must be between {min} and {max}, got {v}"),
        ));
    }
    Ok(())
}

/// Absolute file system paths: start with `/`, no NUL, no `..` component, at most 4096 bytes.
pub fn check_path(field: &str, path: &str) -> Validation {
    if !path.starts_with('/') {
        return Err(ValidationError::new(field, "must be an absolute path"));
    }
    if path.len() > 4096 {
        return Err(ValidationError::new(field, "must be at most 4096 bytes"));
    }
    if path.contains('\0') || path.split('/').any(|c| c == "..") {
        return Err(ValidationError::new(field, "must not contain NUL or `..`"));
    }
    Ok(())
}

/// MAC addresses in the `52:54:00:12:34:56` form; multicast addresses are refused.
pub fn check_mac(field: &str, mac: &str) -> Validation {
    let parts: Vec<&str> = mac.split(':').collect();
    let well_formed = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(ValidationError::new(
            field,
            "must be six colon-separated hex octets like 52:54:00:12:34:56",
        ));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(ValidationError::new(field, "must be a unicast address"));
    }
    Ok(())
}

/// Guest device targets such as `vda`, `sdb`, `hdc`, `xvda`.
pub fn check_device_target(field: &str, target: &str) -> Validation {
    let ok = ["vd", "sd", "hd", "xvd"].iter().any(|prefix| {
        target.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 3 && rest.bytes().all(|b| b.is_ascii_lowercase())
        })
    });
    if !ok {
        return Err(ValidationError::new(
            field,
            "must be a device name like vda, sdb, hdc or xvda",
        ));
    }
    Ok(())
}

/// IPv4 addresses in dotted form.
pub fn check_ipv4(field: &str, addr: &str) -> Validation {
    addr.parse::<std::net::Ipv4Addr>()
        .map(|_| ())
        .map_err(|_| ValidationError::new(field, "must be an IPv4 address like 192.168.122.1"))
}

/// Validates each element of a list, reporting `field[i]...` on failure.
pub fn check_each<T: Validate>(field: &str, items: &[T], max: usize) -> Validation {
    if items.len() > max {
        return Err(ValidationError::new(
            field,
            format_args!("must have at most {max} entries, got {}", items.len()),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        item.validate()
            .map_err(|e| e.within(&format!("{field}[{i}]")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(check_name("name", "web-01.prod_a+b").is_ok());
        assert_eq!(check_name("name", "").unwrap_err().field, "name");
        assert!(check_name("name", "-x").is_err());
        assert!(check_name("name", "a b").is_err());
        assert!(check_name("name", "a/b").is_err());
        assert!(check_name("name", &"a".repeat(65)).is_err());
        assert!(check_name("name", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn macs_and_targets() {
        assert!(check_mac("m", "52:54:00:ab:cd:ef").is_ok());
        assert!(check_mac("m", "01:00:5e:00:00:01").is_err());
        assert!(check_mac("m", "52:54:00:ab:cd").is_err());
        assert!(check_device_target("t", "vdb").is_ok());
        assert!(check_device_target("t", "vd").is_err());
        assert!(check_device_target("t", "nvme0").is_err());
    }

    #[test]
    fn nested_paths_read_naturally() {
        let e = ValidationError::new("capacity_bytes", "too big").within("spec.disks[1]");
        assert_eq!(e.field, "spec.disks[1].capacity_bytes");
    }
}
