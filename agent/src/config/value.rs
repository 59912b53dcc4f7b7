//! How a setting's value is read from each layer: the text of an
//! environment variable or a flag, or a value of the TOML file. Every type a
//! setting may have implements [`SettingValue`] here (or next to its type),
//! so a value is parsed once, at load, and the code that uses the
//! configuration gets it typed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use hostbus_bridge::DomainType;

use super::{LogFormat, QueueType};
use crate::auth::Role;

/// A type a setting may have.
pub(crate) trait SettingValue: Sized {
    /// Each occurrence of the flag adds a value (a list), rather than the
    /// last one winning.
    const REPEATED: bool = false;
    /// How the environment writes a value, where that is not plain.
    const FORM: Option<&'static str> = None;

    /// The value written as text: an environment variable, a flag.
    fn parse(text: &str) -> Result<Self, String>;

    /// The value written in the TOML file. A scalar reads as its text, so a
    /// number or a boolean may also be written as a string.
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        Self::parse(&scalar_text(value)?)
    }

    /// The value the flag's occurrences give: the last one.
    fn from_flags(texts: &[String]) -> Result<Self, String> {
        Self::parse(texts.last().map_or("", String::as_str))
    }

    /// This value, from a higher layer, over `lower`: it replaces it
    /// (tables add to it).
    fn over(self, _lower: Self) -> Self {
        self
    }

    /// The value as the settings table shows it; `None` for nothing.
    fn show(&self) -> Option<String>;
}

/// The text of a scalar of the TOML file.
fn scalar_text(value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("expected one value, found {}", other.type_str())),
    }
}

impl SettingValue for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn show(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl SettingValue for PathBuf {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl SettingValue for bool {
    fn parse(text: &str) -> Result<Self, String> {
        text.to_ascii_lowercase()
            .parse()
            .map_err(|_| format!("{text:?} is not true or false"))
    }
    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// Whole numbers, unsigned.
macro_rules! numbers {
    ($($t:ty),+) => {$(
        impl SettingValue for $t {
            fn parse(text: &str) -> Result<Self, String> {
                text.parse().map_err(|_| {
                    format!("{text:?} is not a whole number from 0 to {}", <$t>::MAX)
                })
            }
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )+};
}

numbers!(u16, u32, u64, usize);

impl SettingValue for SocketAddr {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:9187"))
    }
    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// A list: comma-separated in the environment, a TOML array in the file,
/// the flag repeated.
impl SettingValue for Vec<String> {
    const REPEATED: bool = true;

    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.split(',').map(str::to_owned).collect())
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Array(items) => items.into_iter().map(scalar_text).collect(),
            other => Self::parse(&scalar_text(other)?),
        }
    }
    fn from_flags(texts: &[String]) -> Result<Self, String> {
        Ok(texts.to_vec())
    }
    fn show(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.join(","))
    }
}

/// A setting that can be off: `off` (or nothing) turns it off.
impl<T: SettingValue> SettingValue for Option<T> {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text == "off" {
            return Ok(None);
        }
        T::parse(text)
            .map(Some)
            .map_err(|e| format!("{e}, or `off`"))
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Self::parse(&s),
            other => T::from_toml(other).map(Some),
        }
    }
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(T::show)
    }
}

/// One of a closed set of names.
fn one_of<T: Copy>(text: &str, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
            format!("`{text}` is not {}", names.join(" or "))
        })
}

impl SettingValue for LogFormat {
    fn parse(text: &str) -> Result<Self, String> {
        one_of(text, LogFormat::ALL, LogFormat::as_str)
    }
    fn show(&self) -> Option<String> {
        Some(self.as_str().to_owned())
    }
}

impl SettingValue for QueueType {
    fn parse(text: &str) -> Result<Self, String> {
        one_of(text, QueueType::ALL, QueueType::as_str)
    }
    fn show(&self) -> Option<String> {
        Some(self.as_str().to_owned())
    }
}

/// `auto`, `kvm`, or `qemu` (also `tcg`).
impl SettingValue for DomainType {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
    }
    fn show(&self) -> Option<String> {
        Some(self.as_str().to_owned())
    }
}

/// A Unix file mode, written in octal (`0660`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl SettingValue for FileMode {
    fn parse(text: &str) -> Result<Self, String> {
        u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .map(FileMode)
            .ok_or_else(|| format!("{text:?} is no octal file mode like 0660"))
    }
    fn show(&self) -> Option<String> {
        Some(format!("{:04o}", self.0))
    }
}

/// A file owner, `UID` or `UID:GID`, numeric.
impl SettingValue for (u32, Option<u32>) {
    fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not UID or UID:GID (numeric)");
        let (uid, gid) = match text.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (text, None),
        };
        Ok((
            uid.parse().map_err(|_| bad())?,
            gid.map(|g| g.parse().map_err(|_| bad())).transpose()?,
        ))
    }
    fn show(&self) -> Option<String> {
        Some(match self {
            (uid, None) => uid.to_string(),
            (uid, Some(gid)) => format!("{uid}:{gid}"),
        })
    }
}

/// The entries of a table setting: `key=value,key=value` in the
/// environment, a TOML table in the file. `what` names an entry's parts in
/// the error (`user=role`).
pub(crate) fn entries_of_text(text: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not {what}"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The entries of a table of the TOML file, each value as its text.
pub(crate) fn entries_of_toml(value: toml::Value) -> Result<Vec<(String, String)>, String> {
    match value {
        toml::Value::Table(t) => t
            .into_iter()
            .map(|(k, v)| Ok((k, scalar_text(v)?)))
            .collect(),
        other => Err(format!("expected a table, found {}", other.type_str())),
    }
}

/// A role by its name, refused naming the entry it is in.
pub(crate) fn role(key: &str, name: &str) -> Result<Role, String> {
    Role::parse(name)
        .ok_or_else(|| format!("{key} = {name:?}: roles are read-only, operator or admin"))
}

/// Users (broker logins, certificate CNs) and their roles.
impl SettingValue for BTreeMap<String, Role> {
    const FORM: Option<&'static str> = Some("user=role,...");

    fn parse(text: &str) -> Result<Self, String> {
        users(entries_of_text(text, "user=role")?)
    }
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        users(entries_of_toml(value)?)
    }
    fn over(mut self, mut lower: Self) -> Self {
        lower.append(&mut self);
        lower
    }
    fn show(&self) -> Option<String> {
        let entries: Vec<String> = self
            .iter()
            .map(|(user, role)| format!("{user}={}", role.as_str()))
            .collect();
        (!entries.is_empty()).then(|| entries.join(","))
    }
}

fn users(entries: Vec<(String, String)>) -> Result<BTreeMap<String, Role>, String> {
    entries
        .into_iter()
        .map(|(user, name)| Ok((user.clone(), role(&user, &name)?)))
        .collect()
}
