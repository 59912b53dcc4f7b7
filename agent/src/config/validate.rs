//! Validation of a loaded configuration, and the values parsed from its
//! text for the bridge, authorization, TLS and metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hostbus_protocol::names::{check_host_id, check_label};

use super::{field_error, Config, ConfigError};

impl Config {
    /// `domain_type` for the bridge.
    pub fn bridge_domain_type(&self) -> Result<hostbus_bridge::DomainType, ConfigError> {
        self.domain_type
            .parse()
            .map_err(|e: String| field_error("domain_type", e))
    }

    /// `console_log_dir` for the bridge (`None` when `off`).
    pub fn bridge_console_log_dir(&self) -> Option<String> {
        (self.console_log_dir != "off").then(|| self.console_log_dir.clone())
    }

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
        self.bridge_domain_type()?;
        if self.console_log_dir != "off" && !self.console_log_dir.starts_with('/') {
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
        if !(50..=3_600_000).contains(&self.heartbeat_interval_ms) {
            return Err(field_error(
                "heartbeat_interval_ms",
                "must be between 50 and 3600000",
            ));
        }
        if self.reconcile_interval_ms < 100 {
            return Err(field_error("reconcile_interval_ms", "must be at least 100"));
        }
        if self.max_payload_bytes < 1024 || self.max_payload_bytes > 64 << 20 {
            return Err(field_error(
                "max_payload_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if self.reconnect_max_backoff_ms < 100 {
            return Err(field_error(
                "reconnect_max_backoff_ms",
                "must be at least 100",
            ));
        }
        self.metrics_socket()?;
        self.role_map()?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(field_error(
                "tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        self.tls()?;
        if self.max_deliveries == 0 {
            return Err(field_error("max_deliveries", "must be at least 1"));
        }
        if self.max_object_queue == 0 {
            return Err(field_error("max_object_queue", "must be at least 1"));
        }
        if self.dead_letter_max_length == 0 {
            return Err(field_error("dead_letter_max_length", "must be at least 1"));
        }
        for (field, v) in [
            ("dead_letter_max_age_s", self.dead_letter_max_age_s),
            ("event_retention_s", self.event_retention_s),
            ("roster_retention_s", self.roster_retention_s),
            ("beat_retention_s", self.beat_retention_s),
        ] {
            if v < 60 {
                return Err(field_error(field, "must be at least 60"));
            }
        }
        if self.event_retention_bytes < 1 << 20 {
            return Err(field_error(
                "event_retention_bytes",
                "must be at least 1048576",
            ));
        }
        if !(100..=600_000).contains(&self.connect_timeout_ms) {
            return Err(field_error(
                "connect_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if self.amqp_frame_max != 0 && self.amqp_frame_max < 4096 {
            return Err(field_error(
                "amqp_frame_max",
                "must be 0 (the broker's) or at least 4096 (AMQP's smallest frame)",
            ));
        }
        Ok(())
    }

    /// The roles, parsed.
    pub fn role_map(&self) -> Result<BTreeMap<String, crate::auth::Role>, ConfigError> {
        self.roles
            .iter()
            .map(|(u, r)| {
                crate::auth::Role::parse(r)
                    .map(|role| (u.clone(), role))
                    .ok_or_else(|| {
                        field_error(
                            "roles",
                            format_args!("{u} = {r:?}: roles are read-only, operator or admin"),
                        )
                    })
            })
            .collect()
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

    /// The metrics address, or `None` when disabled.
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_addr == "off" || self.metrics_addr.is_empty() {
            return Ok(None);
        }
        self.metrics_addr.parse().map(Some).map_err(|_| {
            field_error(
                "metrics_addr",
                format_args!(
                    "{:?} is not an address like 127.0.0.1:9187, or `off`",
                    self.metrics_addr
                ),
            )
        })
    }
}
