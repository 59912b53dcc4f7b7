//! From a delivery to a reply: envelope, authorization, deadline, decoding,
//! validation, backpressure, the journal, then the bridge on a blocking
//! thread with panics contained. Nothing here touches AMQP; the session
//! publishes what this returns.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hostbus_amqp::{classify_reply_to, ReplyAddress};
use hostbus_bridge::{Bridge, Turn};
use hostbus_protocol::commands::*;
use hostbus_protocol::envelope::reply_properties;
use hostbus_protocol::{
    command_info, encode, now_ms, AmqpProperties, AnyRequest, AnyResponse, ContentType, Envelope,
    Error, ErrorCode, Reply, ReplyStatus,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::{authorize, authorize_role, Role};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::stamp::Stamp;
use crate::sync::lock;

mod run;

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

/// The result of handling one command, whichever binding carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// Where the bus replies (`None` for casts and for the HTTP binding,
    /// which answers on its own connection).
    pub reply_to: Option<String>,
    /// The reply's AMQP properties (the HTTP binding copies its headers).
    pub properties: AmqpProperties,
    /// `ok`, `task` or `error`.
    pub status: ReplyStatus,
    /// The encoded reply body (a protocol `Reply`), in `content_type`.
    pub body: Vec<u8>,
    /// The reply's encoding.
    pub content_type: ContentType,
    /// The command name (or `invalid` when the envelope was unreadable).
    pub command: String,
    /// `ok`, `task` or the error code.
    pub outcome: String,
    /// When set, the original message goes to the dead-letter exchange with
    /// this reason: it could not be processed, or kept failing.
    pub dead_letter: Option<String>,
}

impl Handled {
    /// The bus reply to publish, if the sender asked for one; takes the body.
    pub fn take_reply(&mut self) -> Option<ReplyMessage> {
        let to = self.reply_to.clone()?;
        Some(ReplyMessage {
            to,
            properties: self.properties.clone(),
            body: std::mem::take(&mut self.body),
        })
    }
}

/// Who sent a command, as its binding established it.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A bus message: the broker-verified `user_id` property, looked up in
    /// the roles of broker logins.
    Bus,
    /// A peer the binding identified itself (the HTTP binding: a Unix
    /// socket's peer uid, a TLS client certificate) with the role it maps to.
    Peer {
        /// How logs and errors name the peer (`uid:1000`, a certificate CN).
        principal: &'a str,
        /// Its role, if it has one.
        role: Option<Role>,
    },
}

impl Caller<'_> {
    /// The binding's name in logs.
    fn binding(&self) -> &'static str {
        match self {
            Caller::Bus => "bus",
            Caller::Peer { .. } => "http",
        }
    }
}

/// Knobs of the dispatcher.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Largest payload accepted.
    pub max_payload: usize,
    /// Users and their roles.
    pub roles: BTreeMap<String, Role>,
    /// Operations queued on one object before `BUSY`.
    pub max_object_queue: usize,
    /// Executions of one command (crashes included) before it is dead-lettered.
    pub max_deliveries: u32,
}

/// Turns deliveries into replies.
pub struct Dispatcher {
    bridge: Arc<Bridge>,
    host_id: String,
    /// Stamps `host.snapshot` inventories with the epoch and last event number.
    stamp: Arc<Stamp>,
    policy: Policy,
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
    /// One lock per changing command id being handled, taken at admission
    /// by the first delivery of that id, so a duplicate waits for the
    /// original and is then answered from the journal.
    running: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// What [`Dispatcher::admit`] decided.
// One per delivery, consumed at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Admission {
    /// Answered without running anything: refused, or given up.
    Done(Handled),
    /// To be run by [`Dispatcher::run`]; holds its place in line.
    Ready(Admitted),
}

/// A command admitted to run: decoded, validated, authorized, with its
/// place in the line of the object it changes taken in arrival order.
pub struct Admitted {
    env: Envelope,
    request: Planned,
    deliveries: u32,
    turn: Option<Turn>,
    /// For a changing command: the id lock, held when this is the first
    /// delivery of the id; a duplicate waits on it.
    id_lock: Option<IdLock>,
    started: Instant,
    /// Which binding carried it (`bus`, `http`), for the log.
    binding: &'static str,
    _in_flight: crate::metrics::InFlight,
}

enum IdLock {
    Held(tokio::sync::OwnedMutexGuard<()>),
    Wait(Arc<tokio::sync::Mutex<()>>),
}

fn encode_reply<T: serde::Serialize>(ct: ContentType, reply: &Reply<T>) -> Vec<u8> {
    encode(ct, reply).unwrap_or_else(|e| {
        // Encoding our own reply cannot fail short of a bug; say so on the wire.
        let fallback: Reply<Empty> =
            Reply::Error(Error::internal(format!("cannot encode the reply: {e}")));
        encode(ContentType::Json, &fallback).unwrap_or_default()
    })
}

/// What execution produced: an encoded reply body with its status.
struct Outcome {
    status: ReplyStatus,
    body: Vec<u8>,
    outcome: String,
    dead_letter: Option<String>,
}

impl Outcome {
    fn error(ct: ContentType, e: Error) -> Self {
        let outcome = e.code.as_str().to_owned();
        Self {
            status: ReplyStatus::Error,
            body: encode_reply::<Empty>(ct, &Reply::Error(e)),
            outcome,
            dead_letter: None,
        }
    }
}

enum Executed {
    Value(Box<AnyResponse>),
    Task(Box<hostbus_protocol::types::TaskRecord>),
}

impl Dispatcher {
    /// A dispatcher for one agent epoch.
    pub fn new(
        bridge: Arc<Bridge>,
        stamp: Arc<Stamp>,
        policy: Policy,
        journal: Arc<Journal>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            bridge,
            host_id: stamp.host_id().to_owned(),
            stamp,
            policy,
            journal,
            metrics,
            running: Mutex::default(),
        }
    }

    /// Handles one delivery, start to end: [`admit`](Self::admit) then
    /// [`run`](Self::run). `deliveries` counts this delivery of the message
    /// (1 the first time).
    pub async fn handle(
        &self,
        props: &AmqpProperties,
        body: &[u8],
        deliveries: u32,
        caller: Caller<'_>,
    ) -> Handled {
        match self.admit(props, body, deliveries, caller) {
            Admission::Done(h) => h,
            Admission::Ready(a) => self.run(a).await,
        }
    }

    /// Everything about a delivery that needs neither libvirt nor the
    /// journal, without blocking: the envelope, the command, authorization,
    /// the deadline, decoding, validation, backpressure, and the command's
    /// place in the line of the object it changes. Call it in the order
    /// deliveries arrive: commands on one object then run in that order.
    pub fn admit(
        &self,
        props: &AmqpProperties,
        body: &[u8],
        deliveries: u32,
        caller: Caller<'_>,
    ) -> Admission {
        let started = Instant::now();
        let in_flight = self.metrics.start();
        let env = match Envelope::from_properties(props) {
            Ok(env) => env,
            Err(err) => return Admission::Done(self.refuse_bad_envelope(props, err, started)),
        };
        if let Some(to) = &env.reply_to {
            if classify_reply_to(to) == ReplyAddress::Invalid {
                // Replying would make the broker close our connection.
                let err = Error::new(
                    ErrorCode::BadEnvelope,
                    [
                        ("property", "reply_to".to_owned()),
                        (
                            "reason",
                            "is not a reply address the broker issued".to_owned(),
                        ),
                    ],
                    "bad envelope: `reply_to` is not a reply address the broker issued",
                );
                let mut h = self.refuse_bad_envelope(props, err, started);
                h.reply_to = None;
                return Admission::Done(h);
            }
        }
        let span = tracing::info_span!("command", command = %env.command, command_id = %env.command_id, host = %self.host_id);
        let _enter = span.enter();
        match self.check(&env, body, deliveries, caller) {
            Err(out) => Admission::Done(self.finish(&env, out, started, caller.binding())),
            Ok(request) => {
                let id_lock = request.plan().run.changes().then(|| {
                    let mut running = lock(&self.running);
                    match running.get(&env.command_id) {
                        Some(m) => IdLock::Wait(m.clone()),
                        None => {
                            let m = Arc::new(tokio::sync::Mutex::new(()));
                            running.insert(env.command_id, m.clone());
                            match m.try_lock_owned() {
                                Ok(g) => IdLock::Held(g),
                                Err(_) => IdLock::Wait(running[&env.command_id].clone()),
                            }
                        }
                    }
                });
                // A duplicate of a command in flight takes no place: it
                // waits for the original and is answered from the journal.
                let turn = match id_lock {
                    Some(IdLock::Wait(_)) => None,
                    _ => self.bridge.take_turn(&request),
                };
                Admission::Ready(Admitted {
                    env,
                    request,
                    deliveries,
                    turn,
                    id_lock,
                    started,
                    binding: caller.binding(),
                    _in_flight: in_flight,
                })
            }
        }
    }

    /// Runs an admitted command and builds its reply.
    pub async fn run(&self, a: Admitted) -> Handled {
        let span = tracing::info_span!("command", command = %a.env.command, command_id = %a.env.command_id, host = %self.host_id);
        async move {
            // `a` (its in-flight guard with it) lives until the reply is built.
            let out = if !a.request.plan().run.changes() {
                self.run_read(&a.env, a.request, a.deliveries).await
            } else {
                let (request, turn, id_lock) = (a.request, a.turn, a.id_lock);
                self.run_journaled(&a.env, request, a.deliveries, turn, id_lock)
                    .await
            };
            self.finish(&a.env, out, a.started, a.binding)
        }
        .instrument(span)
        .await
    }

    fn finish(
        &self,
        env: &Envelope,
        out: Outcome,
        started: Instant,
        binding: &'static str,
    ) -> Handled {
        let elapsed = started.elapsed();
        // Label by the catalogue's name: a `type` off the wire is any text.
        let label = command_info(&env.command).map_or("unknown", |i| i.name);
        self.metrics.command(label, &out.outcome, elapsed);
        tracing::info!(outcome = %out.outcome, duration_ms = elapsed.as_secs_f64() * 1000.0, binding, cast = binding == "bus" && env.is_cast(), "command handled");
        Handled {
            reply_to: env.reply_to.clone(),
            properties: env.reply_properties(out.status, &self.host_id, now_ms()),
            status: out.status,
            body: out.body,
            content_type: env.content_type,
            command: env.command.clone(),
            outcome: out.outcome,
            dead_letter: out.dead_letter,
        }
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
        let dead_letter = Some(format!("{}: {}", err.code, err.message));
        Handled {
            reply_to: props.reply_to.clone().filter(|r| !r.is_empty()),
            properties: reply_properties(
                correlation,
                &command,
                ct,
                ReplyStatus::Error,
                &self.host_id,
                now_ms(),
            ),
            status: ReplyStatus::Error,
            body: encode_reply::<Empty>(ct, &Reply::Error(err)),
            content_type: ct,
            command,
            outcome,
            dead_letter,
        }
    }

    /// The checks of [`admit`](Self::admit) after the envelope.
    #[allow(clippy::result_large_err)]
    fn check(
        &self,
        env: &Envelope,
        body: &[u8],
        deliveries: u32,
        caller: Caller<'_>,
    ) -> Result<Planned, Outcome> {
        let ct = env.content_type;
        let refuse = |e: Error| {
            tracing::info!(code = %e.code, message = %e.message, "command refused");
            Outcome::error(ct, e)
        };
        let Some(info) = command_info(&env.command) else {
            let mut o = refuse(Error::unknown_command(&env.command));
            o.dead_letter = Some(format!("UNKNOWN_COMMAND: {}", env.command));
            return Err(o);
        };
        let authorized = match caller {
            Caller::Bus => authorize(
                &self.policy.roles,
                env.sender.as_deref(),
                info.name,
                info.access,
            ),
            Caller::Peer { principal, role } => {
                authorize_role(principal, role, info.name, info.access)
            }
        };
        if let Err(e) = authorized {
            return Err(refuse(e));
        }
        let now = now_ms();
        if env.is_expired(now) {
            return Err(refuse(env.expired_error(now)));
        }
        // Reads are not journaled: their deliveries are all there is to
        // count. (A changing command's are counted with its journal.)
        if !info.run.changes() && deliveries > self.policy.max_deliveries {
            return Err(self.give_up(env, deliveries));
        }
        let request = match AnyRequest::decode(&env.command, ct, body, self.policy.max_payload) {
            Ok(r) => r,
            Err(e) => {
                let mut o = refuse(e);
                o.dead_letter = Some(format!(
                    "{}: the payload does not decode as {}",
                    o.outcome, env.command
                ));
                return Err(o);
            }
        };
        let request = Planned::new(request).map_err(refuse)?;
        let (depth, object) = self.bridge.queue_depth(&request);
        if depth >= self.policy.max_object_queue {
            let retry = 200 * depth as u64;
            return Err(refuse(Error::new(
                ErrorCode::Busy,
                [
                    ("object", object.unwrap_or_default().to_owned()),
                    ("retry_after_ms", retry.to_string()),
                ],
                format!(
                    "{depth} operations are already queued on this object; retry in {retry} ms"
                ),
            )));
        }
        Ok(request)
    }

    fn give_up(&self, env: &Envelope, attempts: u32) -> Outcome {
        let reason = format!(
            "{} was delivered {attempts} times without finishing",
            env.command
        );
        tracing::error!(attempts, "poison command: dead-lettered");
        let mut o = Outcome::error(env.content_type, Error::internal(&reason));
        o.dead_letter = Some(reason);
        o
    }
}
