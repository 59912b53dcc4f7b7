//! Validation of a loaded configuration: what a value's type does not say
//! (ranges, names, settings that go together), and the TLS material read
//! from the files it names.

use std::fmt::Display;

use hostbus_protocol::names::{check_host_id, check_label};

use super::{field_error, Config, ConfigError};

/// `field` must be at least `min`.
fn at_least<T: PartialOrd + Display>(field: &str, v: T, min: T) -> Result<(), ConfigError> {
    if v < min {
        return Err(field_error(field, format_args!("must be at least {min}")));
    }
    Ok(())
}

/// `field` must lie between `min` and `max`, both included.
fn between<T: PartialOrd + Display>(field: &str, v: T, min: T, max: T) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(field_error(
            field,
            format_args!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.broker_urls.is_empty() {
            return Err(field_error(
                "broker_urls",
                "at least one broker URL is needed",
            ));
        }
        for u in &self.broker_urls {
            u.parse::<lapin::uri::AMQPUri>().map_err(|e| {
                field_error("broker_urls", format_args!("{u:?} is not an AMQP URL: {e}"))
            })?;
        }
        check_host_id("host_id", &self.host_id).map_err(|e| field_error("host_id", e.reason))?;
        for l in &self.labels {
            check_label("labels", l)
                .map_err(|e| field_error("labels", format_args!("{l:?} {}", e.reason)))?;
        }
        if self.libvirt_uri.is_empty() {
            return Err(field_error("libvirt_uri", "must not be empty"));
        }
        if self
            .console_log_dir
            .as_ref()
            .is_some_and(|dir| !dir.starts_with('/'))
        {
            return Err(field_error(
                "console_log_dir",
                "must be an absolute directory or `off`",
            ));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(field_error(
                "concurrency",
                format_args!("must be between 1 and 1024, got {}", self.concurrency),
            ));
        }
        between(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            50,
            3_600_000,
        )?;
        at_least("reconcile_interval_ms", self.reconcile_interval_ms, 100)?;
        between("max_payload_bytes", self.max_payload_bytes, 1024, 64 << 20)?;
        at_least(
            "reconnect_max_backoff_ms",
            self.reconnect_max_backoff_ms,
            100,
        )?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(field_error(
                "tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        self.tls()?;
        self.http()?;
        at_least("max_deliveries", self.max_deliveries, 1)?;
        at_least("max_object_queue", self.max_object_queue, 1)?;
        at_least("dead_letter_max_length", self.dead_letter_max_length, 1)?;
        for (field, v) in [
            ("dead_letter_max_age_s", self.dead_letter_max_age_s),
            ("event_retention_s", self.event_retention_s),
            ("roster_retention_s", self.roster_retention_s),
            ("beat_retention_s", self.beat_retention_s),
        ] {
            at_least(field, v, 60)?;
        }
        at_least("event_retention_bytes", self.event_retention_bytes, 1 << 20)?;
        between("connect_timeout_ms", self.connect_timeout_ms, 100, 600_000)?;
        if self.amqp_frame_max != 0 && self.amqp_frame_max < 4096 {
            return Err(field_error(
                "amqp_frame_max",
                "must be 0 (the broker's) or at least 4096 (AMQP's smallest frame)",
            ));
        }
        Ok(())
    }

    /// The TLS material, read from the configured files.
    pub fn tls(&self) -> Result<hostbus_amqp::Tls, ConfigError> {
        hostbus_amqp::Tls::load(
            self.tls_ca_file.as_deref(),
            self.tls_cert_file.as_deref(),
            self.tls_key_file.as_deref(),
        )
        .map_err(|e| field_error("tls_ca_file", e))
    }
}
