//! From a delivery to a reply: envelope, deadline, decoding, validation,
//! then the bridge on a blocking thread with panics contained. Nothing here
//! touches AMQP; the session publishes what this returns.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hostbus_bridge::{Bridge, CallContext};
use hostbus_protocol::commands::Empty;
use hostbus_protocol::envelope::reply_properties;
use hostbus_protocol::{
    encode, now_ms, Access, AmqpProperties, AnyRequest, AnyResponse, ContentType, Envelope, Error,
    Reply, ReplyStatus,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Where and what to reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyMessage {
    /// The `reply_to` queue.
    pub to: String,
    /// Reply properties.
    pub properties: AmqpProperties,
    /// Encoded body.
    pub body: Vec<u8>,
}

/// The result of handling one delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The reply to publish; `None` for casts.
    pub reply: Option<ReplyMessage>,
    /// The command name (or `invalid` when the envelope was unreadable).
    pub command: String,
    /// `ok`, `task` or the error code.
    pub outcome: String,
}

/// Turns deliveries into replies.
pub struct Dispatcher {
    bridge: Arc<Bridge>,
    host_id: String,
    epoch: Uuid,
    seq: Arc<AtomicU64>,
    max_payload: usize,
    metrics: Arc<Metrics>,
}

fn encode_reply<T: serde::Serialize>(ct: ContentType, reply: &Reply<T>) -> Vec<u8> {
    encode(ct, reply).unwrap_or_else(|e| {
        // Encoding our own reply cannot fail short of a bug; say so on the wire.
        let fallback: Reply<Empty> =
            Reply::Error(Error::internal(format!("cannot encode the reply: {e}")));
        encode(ContentType::Json, &fallback).unwrap_or_default()
    })
}

impl Dispatcher {
    /// A dispatcher for one agent epoch.
    pub fn new(
        bridge: Arc<Bridge>,
        host_id: String,
        epoch: Uuid,
        seq: Arc<AtomicU64>,
        max_payload: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            bridge,
            host_id,
            epoch,
            seq,
            max_payload,
            metrics,
        }
    }

    /// Handles one delivery's properties and body.
    pub async fn handle(&self, props: AmqpProperties, body: Vec<u8>) -> Handled {
        let started = Instant::now();
        let _in_flight = self.metrics.start();
        let now = now_ms();
        let env = match Envelope::from_properties(&props) {
            Ok(env) => env,
            Err(err) => return self.refuse_bad_envelope(&props, err, started),
        };
        let span = tracing::info_span!("command", command = %env.command, command_id = %env.command_id, host = %self.host_id);
        async move {
            let (status, body, outcome) = match self.run(&env, &body, now).await {
                Ok(Executed::Value(resp)) => {
                    let body = resp.encode_reply(env.content_type).unwrap_or_else(|e| {
                        encode_reply::<Empty>(env.content_type, &Reply::Error(Error::internal(format!("cannot encode the response: {e}"))))
                    });
                    (ReplyStatus::Ok, body, "ok".to_owned())
                }
                Ok(Executed::Task(task)) => (ReplyStatus::Task, encode_reply::<Empty>(env.content_type, &Reply::Task(task)), "task".to_owned()),
                Err(err) => {
                    let code = err.code.as_str().to_owned();
                    tracing::info!(code = %code, message = %err.message, "command refused or failed");
                    (ReplyStatus::Error, encode_reply::<Empty>(env.content_type, &Reply::Error(err)), code)
                }
            };
            let elapsed = started.elapsed();
            self.metrics.command(&env.command, &outcome, elapsed);
            tracing::info!(outcome = %outcome, duration_ms = elapsed.as_secs_f64() * 1000.0, cast = env.is_cast(), "command handled");
            let reply = env.reply_to.clone().map(|to| ReplyMessage {
                to,
                properties: env.reply_properties(status, &self.host_id, now_ms()),
                body,
            });
            Handled { reply, command: env.command.clone(), outcome }
        }
        .instrument(span)
        .await
    }

    fn refuse_bad_envelope(&self, props: &AmqpProperties, err: Error, started: Instant) -> Handled {
        let ct = ContentType::parse(props.content_type.as_deref()).unwrap_or_default();
        let command = props.kind.clone().unwrap_or_else(|| "invalid".to_owned());
        tracing::info!(command = %command, code = %err.code, message = %err.message, "bad envelope");
        let outcome = err.code.as_str().to_owned();
        self.metrics.command("invalid", &outcome, started.elapsed());
        let correlation = props
            .correlation_id
            .clone()
            .or_else(|| props.message_id.clone())
            .unwrap_or_default();
        let reply = props
            .reply_to
            .clone()
            .filter(|r| !r.is_empty())
            .map(|to| ReplyMessage {
                to,
                properties: reply_properties(
                    correlation,
                    &command,
                    ct,
                    ReplyStatus::Error,
                    &self.host_id,
                    now_ms(),
                ),
                body: encode_reply::<Empty>(ct, &Reply::Error(err)),
            });
        Handled {
            reply,
            command,
            outcome,
        }
    }

    async fn run(&self, env: &Envelope, body: &[u8], now: u64) -> Result<Executed, Error> {
        if env.is_expired(now) {
            return Err(env.expired_error(now));
        }
        let request = AnyRequest::decode(&env.command, env.content_type, body, self.max_payload)?;
        request.validate()?;
        let ctx = CallContext {
            command_id: env.command_id,
        };
        let bridge = self.bridge.clone();
        let asynchronous = env.asynchronous && request.access() != Access::Read;
        let joined = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                if asynchronous {
                    bridge
                        .submit(request, &ctx)
                        .map(|t| Executed::Task(Box::new(t)))
                } else {
                    bridge.call(request, &ctx).map(Executed::Value)
                }
            }))
        })
        .await;
        let result = match joined {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(panic = %what, "a handler panicked; the agent goes on");
                return Err(Error::internal(format!("the handler panicked: {what}")));
            }
            Err(e) => return Err(Error::internal(format!("the handler did not finish: {e}"))),
        };
        match result {
            Ok(Executed::Value(AnyResponse::HostSnapshot(mut inv))) => {
                inv.epoch = Some(self.epoch);
                inv.seq = self.seq.load(Ordering::SeqCst);
                Ok(Executed::Value(AnyResponse::HostSnapshot(inv)))
            }
            other => other,
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Executed {
    Value(AnyResponse),
    Task(Box<hostbus_protocol::types::TaskRecord>),
}
