//! Typed arguments: object addresses (`HOST/VM`, `HOST/POOL/VOLUME`) and
//! the value parsers clap runs on flags, so that a malformed argument is a
//! usage error before anything connects.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use hostbus_client::protocol::types::{DiskFormat, DiskSource, PowerState, VolumeRef};
use hostbus_client::{Client, StartAt};

/// What an [`At`] addresses on its host: its name in messages.
pub(crate) trait Object {
    /// `VM`, `POOL`, `NETWORK`.
    const WHAT: &'static str;
}

/// A VM (by name or uuid).
#[derive(Clone, Copy)]
pub(crate) struct Vm;
/// A storage pool.
#[derive(Clone, Copy)]
pub(crate) struct Pool;
/// A virtual network.
#[derive(Clone, Copy)]
pub(crate) struct Network;

impl Object for Vm {
    const WHAT: &'static str = "VM";
}
impl Object for Pool {
    const WHAT: &'static str = "POOL";
}
impl Object for Network {
    const WHAT: &'static str = "NETWORK";
}

/// `HOST/NAME`: an object on one host, split at the first `/`.
pub(crate) struct At<K> {
    pub(crate) host: String,
    pub(crate) name: String,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for At<K> {
    fn clone(&self) -> Self {
        Self {
            host: self.host.clone(),
            name: self.name.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for At<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.name)
    }
}

/// Splits `HOST/REST` at the first `/`; both sides must be non-empty.
fn split<'a>(arg: &'a str, what: &str) -> Result<(&'a str, &'a str), String> {
    arg.split_once('/')
        .filter(|(h, r)| !h.is_empty() && !r.is_empty())
        .ok_or_else(|| format!("expected HOST/{what}, got `{arg}`"))
}

impl<K: Object> FromStr for At<K> {
    type Err = String;

    fn from_str(arg: &str) -> Result<Self, String> {
        let (host, name) = split(arg, K::WHAT)?;
        Ok(Self {
            host: host.to_owned(),
            name: name.to_owned(),
            kind: PhantomData,
        })
    }
}

impl At<Vm> {
    /// The SDK's handle on this VM.
    pub(crate) fn on(&self, client: &Client) -> hostbus_client::Vm {
        client.host(&self.host).vm_key(&self.name)
    }
}

impl At<Pool> {
    /// The SDK's handle on this pool.
    pub(crate) fn on(&self, client: &Client) -> hostbus_client::Pool {
        client.host(&self.host).pool(&self.name)
    }
}

impl At<Network> {
    /// The SDK's handle on this network.
    pub(crate) fn on(&self, client: &Client) -> hostbus_client::Network {
        client.host(&self.host).network(&self.name)
    }
}

/// `HOST/POOL/VOLUME`.
#[derive(Clone, Debug)]
pub(crate) struct VolumeAt {
    pub(crate) pool: At<Pool>,
    pub(crate) volume: String,
}

impl FromStr for VolumeAt {
    type Err = String;

    fn from_str(arg: &str) -> Result<Self, String> {
        let (host, rest) = split(arg, "POOL/VOLUME")?;
        let (pool, volume) =
            split(rest, "VOLUME").map_err(|_| format!("expected HOST/POOL/VOLUME, got `{arg}`"))?;
        Ok(Self {
            pool: At {
                host: host.to_owned(),
                name: pool.to_owned(),
                kind: PhantomData,
            },
            volume: volume.to_owned(),
        })
    }
}

/// `--state`: a power state by its wire name.
pub(crate) fn power_state(s: &str) -> Result<PowerState, String> {
    PowerState::ALL
        .iter()
        .copied()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("unknown state `{s}`"))
}

/// A whole number of GiB (`--size`, `POOL:GiB`), in bytes.
pub(crate) fn gib_in_bytes(s: &str) -> Result<u64, String> {
    scaled(s, 1 << 30, "GiB")
}

/// A whole number of MiB (`--memory`, `set-memory`), in KiB.
pub(crate) fn mib_in_kib(s: &str) -> Result<u64, String> {
    scaled(s, 1024, "MiB")
}

/// `s` whole `unit_name`s of `unit` each; a count the wire's 64 bits cannot
/// hold is refused, not wrapped into a small one.
fn scaled(s: &str, unit: u64, unit_name: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of {unit_name}"))?;
    n.checked_mul(unit)
        .ok_or_else(|| format!("{n} {unit_name} is more than 64 bits can count"))
}

/// `--from` of `hostctl events`: `next`, `first`, an offset, or `-<n><s|m|h|d>`.
pub(crate) fn start_at(s: &str) -> Result<StartAt, String> {
    match s {
        "next" => return Ok(StartAt::Next),
        "first" => return Ok(StartAt::First),
        _ => {}
    }
    if let Ok(o) = s.parse::<u64>() {
        return Ok(StartAt::Offset(o));
    }
    let ago = s
        .strip_prefix('-')
        .and_then(|r| {
            let (n, unit) = r.split_at(r.len().checked_sub(1)?);
            let n: u64 = n.parse().ok()?;
            let secs = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return None,
            };
            Some(n * secs * 1000)
        })
        .ok_or_else(|| format!("--from {s}: say next, first, an offset, or a time like -10m"))?;
    Ok(StartAt::Time(
        hostbus_client::protocol::now_ms().saturating_sub(ago),
    ))
}

/// `POOL/VOLUME` as a disk source.
fn volume(pool: &str, volume: &str) -> DiskSource {
    DiskSource::Volume(VolumeRef {
        pool: pool.to_owned(),
        volume: volume.to_owned(),
    })
}

/// `--disk`: `POOL:GiB`, `POOL/VOLUME` or `/path`, with an optional
/// A `--disk`: where its data comes from, and its format if stated.
#[derive(Clone, Debug)]
pub(crate) struct DiskArg {
    pub(crate) source: DiskSource,
    pub(crate) format: Option<DiskFormat>,
}

/// `@raw` / `@qcow2`.
pub(crate) fn disk(arg: &str) -> Result<DiskArg, String> {
    let (arg, format) = match arg.rsplit_once('@') {
        Some((rest, "raw")) => (rest, Some(DiskFormat::Raw)),
        Some((rest, "qcow2")) => (rest, Some(DiskFormat::Qcow2)),
        Some((_, other)) => {
            return Err(format!(
                "disk `{arg}`: format `{other}` is not raw or qcow2"
            ))
        }
        None => (arg, None),
    };
    let source = if arg.starts_with('/') {
        DiskSource::Path(arg.to_owned())
    } else if let Some((pool, size)) = arg.split_once(':') {
        let capacity_bytes = gib_in_bytes(size).map_err(|e| format!("disk `{arg}`: {e}"))?;
        DiskSource::NewVolume {
            pool: pool.to_owned(),
            capacity_bytes,
        }
    } else if let Some((pool, name)) = arg.split_once('/') {
        volume(pool, name)
    } else {
        return Err(format!("disk `{arg}`: use POOL:GiB, POOL/VOLUME or /path"));
    };
    Ok(DiskArg { source, format })
}

/// `--cdrom`: `POOL/VOLUME` or `/path`.
pub(crate) fn cdrom(arg: &str) -> Result<DiskSource, String> {
    if arg.starts_with('/') {
        Ok(DiskSource::Path(arg.to_owned()))
    } else if let Some((pool, name)) = arg.split_once('/') {
        Ok(volume(pool, name))
    } else {
        Err(format!("cdrom `{arg}`: use POOL/VOLUME or /path"))
    }
}

/// `--ip`: `ADDRESS/PREFIX`.
pub(crate) fn cidr(arg: &str) -> Result<(String, u8), String> {
    let (address, prefix) = arg
        .split_once('/')
        .ok_or("--ip must look like 192.168.150.1/24")?;
    let prefix = prefix.parse().map_err(|_| "--ip prefix must be a number")?;
    Ok((address.to_owned(), prefix))
}

/// `--dhcp`: `START-END`.
pub(crate) fn range(arg: &str) -> Result<(String, String), String> {
    arg.split_once('-')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| "--dhcp must look like START-END".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes the wire's 64 bits cannot hold are refused: `--size` was
    /// shifted by 30 bits unchecked, so 17179869185 GiB created 1 GiB.
    #[test]
    fn sizes_are_scaled_and_never_wrap() {
        assert_eq!(gib_in_bytes("10"), Ok(10 << 30));
        assert_eq!(mib_in_kib("512"), Ok(512 * 1024));
        assert!(gib_in_bytes("17179869185").is_err());
        assert!(mib_in_kib(&u64::MAX.to_string()).is_err());
        assert!(gib_in_bytes("-1").is_err());
        assert!(disk("default:17179869185").is_err());
        use clap::Parser;
        let huge = [
            "hostctl",
            "volume",
            "create",
            "h1/default",
            "v",
            "--size",
            "17179869185",
        ];
        assert!(crate::cli::Cli::try_parse_from(huge).is_err());
    }

    #[test]
    fn addresses_split_at_the_first_slash() {
        let vm: At<Vm> = "h1/web/01".parse().expect("vm");
        assert_eq!((vm.host.as_str(), vm.name.as_str()), ("h1", "web/01"));
        assert_eq!(
            "no-slash".parse::<At<Vm>>().err().as_deref(),
            Some("expected HOST/VM, got `no-slash`")
        );
        assert!("/x".parse::<At<Pool>>().is_err());
        assert!("h1/".parse::<At<Network>>().is_err());
        let v: VolumeAt = "h1/default/a/b".parse().expect("volume");
        assert_eq!(
            (
                v.pool.host.as_str(),
                v.pool.name.as_str(),
                v.volume.as_str()
            ),
            ("h1", "default", "a/b")
        );
        assert!("h1/default".parse::<VolumeAt>().is_err());
    }

    #[test]
    fn disks_name_their_source_and_format() {
        let d = disk("default:10@raw").expect("new volume");
        assert_eq!(d.format, Some(DiskFormat::Raw));
        assert!(matches!(
            d.source,
            DiskSource::NewVolume { capacity_bytes, .. } if capacity_bytes == 10 << 30
        ));
        assert!(matches!(
            disk("/srv/x.img").expect("path").source,
            DiskSource::Path(_)
        ));
        assert!(matches!(
            disk("p/v").expect("volume").source,
            DiskSource::Volume(_)
        ));
        assert!(disk("p:ten").is_err());
        assert!(disk("p/v@vmdk").is_err());
        assert!(disk("nothing").is_err());
        assert!(cdrom("iso").is_err());
    }

    #[test]
    fn times_count_back_from_now() {
        assert_eq!(start_at("next"), Ok(StartAt::Next));
        assert_eq!(start_at("first"), Ok(StartAt::First));
        assert_eq!(start_at("42"), Ok(StartAt::Offset(42)));
        // The clock ticks while start_at reads it: bound it on both sides.
        let before = hostbus_client::protocol::now_ms();
        let parsed = start_at("-10m");
        let after = hostbus_client::protocol::now_ms();
        match parsed {
            Ok(StartAt::Time(t)) => assert!(
                t >= before - 600_000 && t <= after - 600_000,
                "{before} {t} {after}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(start_at("-10y").is_err());
        assert!(start_at("yesterday").is_err());
    }
}
