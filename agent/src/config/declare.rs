//! What one declaration of a setting becomes: the `settings!` macro (the
//! `Config` field, its entry in [`SETTINGS`](super::SETTINGS), its reading
//! from the layers), the flags and the environment variables it gives, and
//! the settings table of docs/operations.md.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use clap::{ArgAction, ArgMatches, Command};

use super::value::SettingValue;
use super::{field_error, ConfigError, SETTINGS};

/// Declares the settings: each is its doc comment (the meaning, as
/// docs/operations.md's table shows it), `name: Type = default`, then
/// optionally `, shown "..."` (the table's default column, where the
/// default's own text does not say it) and `, flag "name"` (with
/// `value "NAME"`, the flag's value as the docs write it). The environment
/// variable is `HOSTBUS_` and the name in capitals; how a value is read
/// from text, the file and flags is its type's [`SettingValue`].
macro_rules! settings {
    (@opt) => { None };
    (@opt $x:literal) => { Some($x) };
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr
        $(, shown $shown:literal)?
        $(, flag $flag:literal $(value $vname:literal)?)?
        ;
    )+) => {
        /// The validated configuration: one typed field per setting.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        /// Every setting, in the order of docs/operations.md's table.
        pub const SETTINGS: &[SettingInfo] = &[$(
            SettingInfo {
                name: stringify!($name),
                doc: concat!($($doc, "\n"),+),
                flag: settings!(@opt $($flag)?),
                value_name: settings!(@opt $($($vname)?)?),
                repeated: <$ty as SettingValue>::REPEATED,
                form: <$ty as SettingValue>::FORM,
                shown: settings!(@opt $($shown)?),
                default: || <$ty as SettingValue>::show(&$default),
            },
        )+];

        impl Config {
            /// Each setting from the layers that give it, else its default.
            fn from_layers(layers: &mut Layers<'_>) -> Result<Self, ConfigError> {
                Ok(Config {
                    $( $name: layers.take::<$ty>(stringify!($name))?.unwrap_or_else(|| $default), )+
                })
            }
        }
    };
}

/// What the declaration says of one setting, for the flags, the
/// environment and the documentation.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// The name: the `Config` field and the key of the file.
    pub name: &'static str,
    /// The doc comment, a line each.
    pub doc: &'static str,
    /// The flag (without `--`), if the setting has one.
    pub flag: Option<&'static str>,
    /// The flag's value as the docs write it (`--http-socket PATH`).
    pub value_name: Option<&'static str>,
    /// The flag may be repeated, each occurrence adding a value.
    pub repeated: bool,
    /// How the environment writes a value, where that is not plain.
    pub form: Option<&'static str>,
    /// The default as the docs say it, where the value does not.
    pub shown: Option<&'static str>,
    /// The default value's text; `None` for nothing.
    pub default: fn() -> Option<String>,
}

impl SettingInfo {
    /// The environment variable: `HOSTBUS_` and the name in capitals.
    pub fn env(&self) -> String {
        env_variable(self.name)
    }

    /// The doc comment on one line.
    pub fn meaning(&self) -> String {
        let lines: Vec<&str> = self.doc.lines().map(str::trim).collect();
        lines.join(" ")
    }

    /// The row of docs/operations.md's settings table.
    fn row(&self) -> String {
        let flag = match self.flag {
            None => "—".to_owned(),
            Some(flag) => {
                let value = self.value_name.map(|v| format!(" {v}")).unwrap_or_default();
                let repeat = if self.repeated { " (repeat)" } else { "" };
                format!("`--{flag}{value}`{repeat}")
            }
        };
        let env = match self.form {
            None => format!("`{}`", self.env()),
            Some(form) => format!("`{}` (`{form}`)", self.env()),
        };
        let default = match (self.shown, (self.default)()) {
            (Some(shown), _) => shown.to_owned(),
            (None, Some(value)) => format!("`{value}`"),
            (None, None) => "none".to_owned(),
        };
        format!(
            "| `{}` | {flag} | {env} | {default} | {} |",
            self.name,
            self.meaning()
        )
    }
}

/// The settings table of docs/operations.md ("Configuration reference"),
/// as the declarations give it.
pub fn reference_table() -> String {
    let mut table = String::from(TABLE_HEADER);
    table.push_str("\n|---|---|---|---|---|\n");
    for s in SETTINGS {
        let _ = writeln!(table, "{}", s.row());
    }
    table
}

/// The first line of the settings table.
pub(super) const TABLE_HEADER: &str = "| field | flag | environment | default | meaning |";

/// The flags of the settings that have one, as the command line gave them:
/// text, read at load like the environment's, so that a bad value is
/// refused the same way from any layer (exit 64, naming the setting).
#[derive(Debug, Clone, Default)]
pub struct SettingFlags(BTreeMap<&'static str, Vec<String>>);

impl clap::FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = SettingFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for s in SETTINGS.iter().filter(|s| s.flag.is_some()) {
            if let Some(values) = matches.get_many::<String>(s.name) {
                self.0.insert(s.name, values.cloned().collect());
            }
        }
        Ok(())
    }
}

impl clap::Args for SettingFlags {
    fn augment_args(cmd: Command) -> Command {
        SETTINGS.iter().fold(cmd, |cmd, s| {
            let Some(flag) = s.flag else { return cmd };
            let meaning = s.meaning();
            let short = meaning.split_inclusive(". ").next().unwrap_or_default();
            cmd.arg(
                clap::Arg::new(s.name)
                    .long(flag)
                    .value_name(
                        s.value_name
                            .map_or_else(|| s.name.to_ascii_uppercase(), str::to_owned),
                    )
                    .help(short.trim_end().to_owned())
                    .long_help(meaning.clone())
                    .action(if s.repeated {
                        ArgAction::Append
                    } else {
                        ArgAction::Set
                    }),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// The environment variable of the setting `name`.
fn env_variable(name: &str) -> String {
    format!("HOSTBUS_{}", name.to_ascii_uppercase())
}

/// The sources of settings above the defaults, lowest first.
pub(super) struct Layers<'a> {
    /// The TOML file's table; each setting takes its key out.
    pub(super) file: toml::Table,
    /// The file's path, for messages.
    pub(super) file_name: String,
    /// The environment.
    pub(super) env: &'a HashMap<String, String>,
    /// The flags.
    pub(super) flags: &'a SettingFlags,
}

impl Layers<'_> {
    /// The setting `name` from the layers that give it (a higher one over
    /// a lower), or `None` when none does.
    pub(super) fn take<T: SettingValue>(
        &mut self,
        name: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        let mut value: Option<T> = None;
        let mut add = |read: Result<T, String>, from: &str| {
            let v = read.map_err(|e| field_error(name, format_args!("{e} ({from})")))?;
            value = Some(match value.take() {
                Some(lower) => v.over(lower),
                None => v,
            });
            Ok::<_, ConfigError>(())
        };
        if let Some(v) = self.file.remove(name) {
            add(T::from_toml(v), &self.file_name)?;
        }
        let env = env_variable(name);
        if let Some(text) = self.env.get(&env) {
            add(T::parse(text), &env)?;
        }
        if let Some(texts) = self.flags.0.get(name) {
            let flag = SETTINGS
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.flag);
            add(T::from_flags(texts), &format!("--{}", flag.unwrap_or(name)))?;
        }
        Ok(value)
    }
}
