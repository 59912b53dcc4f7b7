//! The dispatcher: the one seam between the bindings and the bridge. Each
//! binding maps its own wire onto a typed [`Request`] (command, command id,
//! deadline, async flag, protocol version, content type, caller, payload)
//! and gets back a typed [`Handled`] (a reply, a task or an error with its
//! code, encoded in the request's content type). In between: authorization,
//! the deadline, decoding, validation, backpressure, the object lines, the
//! journal, then the bridge on a blocking thread with panics contained.
//! Nothing here knows a binding's wire: no AMQP property, reply address,
//! ack or dead-letter queue, no HTTP status (the crate-boundary test checks
//! what this module imports).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hostbus_bridge::{Bridge, Turn};
use hostbus_protocol::commands::*;
use hostbus_protocol::types::Timestamp;
use hostbus_protocol::{
    command_info, encode, now_ms, AnyRequest, AnyResponse, ContentType, Error, ErrorCode,
    ProtocolVersion, Reply, ReplyStatus,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::{authorize, authorize_role, Role};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::stamp::Stamp;
use crate::sync::lock;

mod run;

/// Everything about a command but its payload and its sender, as every
/// binding reads it from its own wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// The command's wire name, as received (it may name no command).
    pub command: String,
    /// The command id: the key of at-most-once execution.
    pub command_id: Uuid,
    /// Absolute deadline, ms since the Unix epoch; past it, nothing runs.
    pub deadline: Option<Timestamp>,
    /// Run as a task and answer with the task at once.
    pub asynchronous: bool,
    /// The sender's protocol version (one this peer accepts).
    pub version: ProtocolVersion,
    /// The payload's encoding, and the reply's.
    pub content_type: ContentType,
}

/// One command as a binding hands it to the dispatcher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// What the command is.
    pub head: &'a Head,
    /// Who sent it.
    pub caller: Caller<'a>,
    /// The encoded request payload.
    pub payload: &'a [u8],
    /// How many times the binding has seen this message, this time
    /// included (1 for a binding that never redelivers).
    pub deliveries: u32,
}

/// Who sent a command, as its binding established it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caller<'a> {
    /// A bus message: the login the broker verified (`user_id`), looked up
    /// in the roles of broker logins; `cast` when nobody waits for a reply.
    Bus {
        /// The broker-verified login, if the message carried one.
        user: Option<&'a str>,
        /// Whether the sender asked for no reply.
        cast: bool,
    },
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
            Caller::Bus { .. } => "bus",
            Caller::Peer { .. } => "http",
        }
    }

    fn cast(&self) -> bool {
        matches!(self, Caller::Bus { cast: true, .. })
    }
}

/// What the dispatcher answers a command with, whichever binding carried it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Handled {
    /// `ok`, `task` or `error`.
    pub status: ReplyStatus,
    /// The error, when the status is `error`.
    pub error: Option<Error>,
    /// The encoded reply body (a protocol `Reply`), in `content_type`.
    pub body: Vec<u8>,
    /// The reply's encoding.
    pub content_type: ContentType,
    /// `ok`, `task`, the error code, or `journal-…` when answered from the
    /// journal.
    pub outcome: String,
    /// Set when the message itself cannot be processed (it does not decode,
    /// names no command) or kept failing (delivered too often): a binding
    /// that can set messages aside (the bus's dead-letter exchange) does so,
    /// with this reason.
    pub unprocessable: Option<String>,
}

/// Knobs of the dispatcher.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Largest payload accepted.
    pub max_payload: usize,
    /// Users and their roles.
    pub roles: BTreeMap<String, Role>,
    /// Operations queued on one object before `BUSY`.
    pub max_object_queue: usize,
    /// Executions of one command (crashes included) before it is given up.
    pub max_deliveries: u32,
    /// The agent's own broker login: other agents of the fleet send their
    /// host-to-host commands as it (or as a login with role `agent`).
    pub own_login: Option<String>,
}

/// Turns requests into answers.
pub(crate) struct Dispatcher {
    bridge: Arc<Bridge>,
    host_id: String,
    /// Stamps inventories in responses with the epoch and last event number.
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
pub(crate) enum Admission {
    /// Answered without running anything: refused, or given up.
    Done(Handled),
    /// To be run by [`Dispatcher::run`]; holds its place in line.
    Ready(Admitted),
}

/// A command admitted to run: decoded, validated, authorized, with its
/// places in the lines of the objects it changes taken in arrival order.
pub(crate) struct Admitted {
    head: Head,
    request: Planned,
    deliveries: u32,
    turn: Option<Turn>,
    /// For a changing command: the id lock, held when this is the first
    /// delivery of the id; a duplicate waits on it.
    id_lock: Option<IdLock>,
    started: Instant,
    /// Which binding carried it (`bus`, `http`), for the log.
    binding: &'static str,
    cast: bool,
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
    error: Option<Error>,
    body: Vec<u8>,
    outcome: String,
    unprocessable: Option<String>,
}

impl Outcome {
    fn error(ct: ContentType, e: Error) -> Self {
        Self {
            status: ReplyStatus::Error,
            body: encode_reply::<Empty>(ct, &Reply::Error(e.clone())),
            outcome: e.code.as_str().to_owned(),
            error: Some(e),
            unprocessable: None,
        }
    }

    fn into_handled(self, ct: ContentType) -> Handled {
        Handled {
            status: self.status,
            error: self.error,
            body: self.body,
            content_type: ct,
            outcome: self.outcome,
            unprocessable: self.unprocessable,
        }
    }
}

enum Executed {
    Value(Box<AnyResponse>),
    Task(Box<hostbus_protocol::types::TaskRecord>),
}

impl Dispatcher {
    /// A dispatcher for one agent epoch.
    pub(crate) fn new(
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

    /// The id of the host this dispatcher serves.
    pub(crate) fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Handles one request, start to end: [`admit`](Self::admit) then
    /// [`run`](Self::run).
    pub(crate) async fn handle(&self, request: Request<'_>) -> Handled {
        match self.admit(request) {
            Admission::Done(h) => h,
            Admission::Ready(a) => self.run(a).await,
        }
    }

    /// A request whose head the binding could not read (a missing command
    /// id, an unsupported version or content type, ...): logged, counted
    /// as `command` (`invalid` when it names none), answered with `err` in
    /// `ct`, and unprocessable.
    pub(crate) fn refuse(&self, command: Option<&str>, ct: ContentType, err: Error) -> Handled {
        let command = command.unwrap_or("invalid");
        tracing::info!(command = %command, code = %err.code, message = %err.message, "bad envelope");
        self.metrics
            .command("invalid", err.code.as_str(), std::time::Duration::ZERO);
        let reason = format!("{}: {}", err.code, err.message);
        let mut o = Outcome::error(ct, err);
        o.unprocessable = Some(reason);
        o.into_handled(ct)
    }

    /// Everything about a request that needs neither libvirt nor the
    /// journal, without blocking: the command, authorization, the deadline,
    /// decoding, validation, backpressure, and the command's places in the
    /// lines of the objects it changes. Call it in the order requests
    /// arrive: commands on one object then run in that order.
    pub(crate) fn admit(&self, r: Request<'_>) -> Admission {
        let started = Instant::now();
        let in_flight = self.metrics.start();
        let head = r.head;
        let span = tracing::info_span!("command", command = %head.command, command_id = %head.command_id, host = %self.host_id);
        let _enter = span.enter();
        let binding = r.caller.binding();
        match self.check(&r) {
            Err(out) => Admission::Done(self.finish(head, out, started, binding, r.caller.cast())),
            Ok(request) => {
                let id_lock = request.plan().run.changes().then(|| {
                    let mut running = lock(&self.running);
                    match running.get(&head.command_id) {
                        Some(m) => IdLock::Wait(m.clone()),
                        None => {
                            let m = Arc::new(tokio::sync::Mutex::new(()));
                            running.insert(head.command_id, m.clone());
                            match m.try_lock_owned() {
                                Ok(g) => IdLock::Held(g),
                                Err(_) => IdLock::Wait(running[&head.command_id].clone()),
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
                    head: head.clone(),
                    request,
                    deliveries: r.deliveries,
                    turn,
                    id_lock,
                    started,
                    binding,
                    cast: r.caller.cast(),
                    _in_flight: in_flight,
                })
            }
        }
    }

    /// Runs an admitted command and builds its answer.
    pub(crate) async fn run(&self, a: Admitted) -> Handled {
        let span = tracing::info_span!("command", command = %a.head.command, command_id = %a.head.command_id, host = %self.host_id);
        async move {
            // `a` (its in-flight guard with it) lives until the reply is built.
            let out = if !a.request.plan().run.changes() {
                self.run_read(&a.head, a.request).await
            } else {
                let (request, turn, id_lock) = (a.request, a.turn, a.id_lock);
                self.run_journaled(&a.head, request, a.deliveries, turn, id_lock)
                    .await
            };
            self.finish(&a.head, out, a.started, a.binding, a.cast)
        }
        .instrument(span)
        .await
    }

    fn finish(
        &self,
        head: &Head,
        out: Outcome,
        started: Instant,
        binding: &'static str,
        cast: bool,
    ) -> Handled {
        let elapsed = started.elapsed();
        // Label by the catalogue's name: a command name off the wire is any text.
        let label = command_info(&head.command).map_or("unknown", |i| i.name);
        self.metrics.command(label, &out.outcome, elapsed);
        tracing::info!(outcome = %out.outcome, duration_ms = elapsed.as_secs_f64() * 1000.0, binding, cast, "command handled");
        out.into_handled(head.content_type)
    }

    /// The checks of [`admit`](Self::admit).
    #[allow(clippy::result_large_err)]
    fn check(&self, r: &Request<'_>) -> Result<Planned, Outcome> {
        let head = r.head;
        let ct = head.content_type;
        let refuse = |e: Error| {
            tracing::info!(code = %e.code, message = %e.message, "command refused");
            Outcome::error(ct, e)
        };
        let Some(info) = command_info(&head.command) else {
            let mut o = refuse(Error::unknown_command(&head.command));
            o.unprocessable = Some(format!("UNKNOWN_COMMAND: {}", head.command));
            return Err(o);
        };
        let authorized = match r.caller {
            Caller::Bus { user, .. }
                if info.access == hostbus_protocol::Access::Peer
                    && user.is_some()
                    && user == self.policy.own_login.as_deref() =>
            {
                Ok(())
            }
            Caller::Bus { user, .. } => authorize(&self.policy.roles, user, info.name, info.access),
            Caller::Peer { principal, role } => {
                authorize_role(principal, role, info.name, info.access)
            }
        };
        if let Err(e) = authorized {
            return Err(refuse(e));
        }
        let now = now_ms();
        if let Some(deadline) = head.deadline.filter(|d| now >= *d) {
            return Err(refuse(Error::expired(&head.command, deadline, now)));
        }
        // Reads are not journaled: their deliveries are all there is to
        // count. (A changing command's are counted with its journal.)
        if !info.run.changes() && r.deliveries > self.policy.max_deliveries {
            return Err(give_up(head, r.deliveries));
        }
        let request =
            match AnyRequest::decode(&head.command, ct, r.payload, self.policy.max_payload) {
                Ok(r) => r,
                Err(e) => {
                    let mut o = refuse(e);
                    o.unprocessable = Some(format!(
                        "{}: the payload does not decode as {}",
                        o.outcome, head.command
                    ));
                    return Err(o);
                }
            };
        let request = Planned::new(request).map_err(refuse)?;
        self.bridge.excluded(&request).map_err(refuse)?;
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
}

/// The answer to a command delivered or begun `attempts` times without
/// finishing: an internal error, and unprocessable (a poison message).
fn give_up(head: &Head, attempts: u32) -> Outcome {
    let reason = format!(
        "{} was delivered {attempts} times without finishing",
        head.command
    );
    tracing::error!(attempts, "poison command: given up");
    let mut o = Outcome::error(head.content_type, Error::internal(&reason));
    o.unprocessable = Some(reason);
    o
}
