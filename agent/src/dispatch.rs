//! From a delivery to a reply: envelope, authorization, deadline, decoding,
//! validation, backpressure, the journal, then the bridge on a blocking
//! thread with panics contained. Nothing here touches AMQP; the session
//! publishes what this returns.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hostbus_amqp::{classify_reply_to, ReplyAddress};
use hostbus_bridge::{Bridge, CallContext, Turn};
use hostbus_protocol::commands::*;
use hostbus_protocol::envelope::reply_properties;
use hostbus_protocol::{
    command_info, encode, now_ms, Access, AmqpProperties, AnyRequest, AnyResponse, ContentType,
    Envelope, Error, ErrorCode, Reply, ReplyStatus,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::{authorize, Role};
use crate::journal::{Journal, State};
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
    /// When set, the original message goes to the dead-letter exchange with
    /// this reason: it could not be processed, or kept failing.
    pub dead_letter: Option<String>,
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
    epoch: Uuid,
    seq: Arc<AtomicU64>,
    policy: Policy,
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
    /// One lock per changing command id being handled, taken at admission
    /// by the first delivery of that id, so a duplicate waits for the
    /// original and is then answered from the journal.
    running: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

/// What [`Dispatcher::admit`] decided.
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
    request: AnyRequest,
    info: &'static hostbus_protocol::CommandInfo,
    deliveries: u32,
    turn: Option<Turn>,
    /// For a changing command: the id lock, held when this is the first
    /// delivery of the id; a duplicate waits on it.
    id_lock: Option<IdLock>,
    started: Instant,
    _in_flight: crate::metrics::InFlight,
}

enum IdLock {
    Held(tokio::sync::OwnedMutexGuard<()>),
    Wait(Arc<tokio::sync::Mutex<()>>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
        host_id: String,
        epoch: Uuid,
        seq: Arc<AtomicU64>,
        policy: Policy,
        journal: Arc<Journal>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            bridge,
            host_id,
            epoch,
            seq,
            policy,
            journal,
            metrics,
            running: Mutex::default(),
        }
    }

    /// Handles one delivery, start to end: [`admit`](Self::admit) then
    /// [`run`](Self::run). `deliveries` counts this delivery of the message
    /// (1 the first time).
    pub async fn handle(&self, props: &AmqpProperties, body: &[u8], deliveries: u32) -> Handled {
        match self.admit(props, body, deliveries) {
            Admission::Done(h) => h,
            Admission::Ready(a) => self.run(a).await,
        }
    }

    /// Everything about a delivery that needs neither libvirt nor the
    /// journal, without blocking: the envelope, the command, authorization,
    /// the deadline, decoding, validation, backpressure, and the command's
    /// place in the line of the object it changes. Call it in the order
    /// deliveries arrive: commands on one object then run in that order.
    pub fn admit(&self, props: &AmqpProperties, body: &[u8], deliveries: u32) -> Admission {
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
                h.reply = None;
                return Admission::Done(h);
            }
        }
        let span = tracing::info_span!("command", command = %env.command, command_id = %env.command_id, host = %self.host_id);
        let _enter = span.enter();
        match self.check(&env, body, deliveries) {
            Err(out) => Admission::Done(self.finish(&env, out, started)),
            Ok((info, request)) => {
                let id_lock = (info.access != Access::Read).then(|| {
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
                    info,
                    deliveries,
                    turn,
                    id_lock,
                    started,
                    _in_flight: in_flight,
                })
            }
        }
    }

    /// Runs an admitted command and builds its reply.
    pub async fn run(&self, a: Admitted) -> Handled {
        let span = tracing::info_span!("command", command = %a.env.command, command_id = %a.env.command_id, host = %self.host_id);
        async move {
            let Admitted {
                env,
                request,
                info,
                deliveries,
                turn,
                id_lock,
                started,
                _in_flight,
            } = a;
            let out = if info.access == Access::Read {
                self.run_read(&env, request, deliveries).await
            } else {
                self.run_journaled(&env, request, deliveries, turn, id_lock)
                    .await
            };
            self.finish(&env, out, started)
        }
        .instrument(span)
        .await
    }

    fn finish(&self, env: &Envelope, out: Outcome, started: Instant) -> Handled {
        let elapsed = started.elapsed();
        // Label by the catalogue's name: a `type` off the wire is any text.
        let label = command_info(&env.command).map_or("unknown", |i| i.name);
        self.metrics.command(label, &out.outcome, elapsed);
        tracing::info!(outcome = %out.outcome, duration_ms = elapsed.as_secs_f64() * 1000.0, cast = env.is_cast(), "command handled");
        let reply = env.reply_to.clone().map(|to| ReplyMessage {
            to,
            properties: env.reply_properties(out.status, &self.host_id, now_ms()),
            body: out.body,
        });
        Handled {
            reply,
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
    ) -> Result<(&'static hostbus_protocol::CommandInfo, AnyRequest), Outcome> {
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
        if let Err(e) = authorize(
            &self.policy.roles,
            env.sender.as_deref(),
            info.name,
            info.access,
        ) {
            return Err(refuse(e));
        }
        let now = now_ms();
        if env.is_expired(now) {
            return Err(refuse(env.expired_error(now)));
        }
        // Reads are not journaled: their deliveries are all there is to
        // count. (A changing command's are counted with its journal.)
        if info.access == Access::Read && deliveries > self.policy.max_deliveries {
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
        if let Err(e) = request.validate() {
            return Err(refuse(e.into()));
        }
        let depth = self.bridge.queue_depth(&request);
        if depth >= self.policy.max_object_queue {
            let retry = 200 * depth as u64;
            return Err(refuse(Error::new(
                ErrorCode::Busy,
                [
                    ("object", env.command.clone()),
                    ("retry_after_ms", retry.to_string()),
                ],
                format!(
                    "{depth} operations are already queued on this object; retry in {retry} ms"
                ),
            )));
        }
        Ok((info, request))
    }

    async fn run_read(&self, env: &Envelope, request: AnyRequest, _deliveries: u32) -> Outcome {
        let result = self.execute(env, request, None).await;
        self.encode(env, result)
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

    async fn run_journaled(
        &self,
        env: &Envelope,
        request: AnyRequest,
        deliveries: u32,
        turn: Option<Turn>,
        id_lock: Option<IdLock>,
    ) -> Outcome {
        let (held, mutex) = match id_lock {
            Some(IdLock::Held(g)) => {
                let m = lock(&self.running).get(&env.command_id).cloned();
                (g, m)
            }
            Some(IdLock::Wait(m)) => (m.clone().lock_owned().await, Some(m)),
            None => {
                // Not admitted through `admit` (cannot happen): lock now.
                let m = lock(&self.running)
                    .entry(env.command_id)
                    .or_default()
                    .clone();
                (m.clone().lock_owned().await, Some(m))
            }
        };
        let out = self
            .run_journaled_locked(env, request, deliveries, turn)
            .await;
        drop(held);
        let mut running = lock(&self.running);
        // The map's and our own reference are all: nobody waits for this id.
        if mutex.is_some_and(|m| Arc::strong_count(&m) <= 2) {
            running.remove(&env.command_id);
        }
        out
    }

    async fn run_journaled_locked(
        &self,
        env: &Envelope,
        request: AnyRequest,
        deliveries: u32,
        turn: Option<Turn>,
    ) -> Outcome {
        let id = env.command_id.to_string();
        let journal = self.journal.clone();
        let (id2, name) = (id.clone(), env.command.clone());
        let seen = tokio::task::spawn_blocking(move || {
            let prev = journal.get(&id2)?;
            if prev.as_ref().is_some_and(|p| p.state == State::Done) {
                return Ok((prev, 0));
            }
            let attempts = journal.start(&id2, &name)?;
            Ok::<_, crate::journal::JournalError>((prev, attempts))
        })
        .await;
        let (prev, attempts) = match seen {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Outcome::error(env.content_type, Error::internal(e)),
            Err(e) => {
                return Outcome::error(
                    env.content_type,
                    Error::internal(format!("journal task failed: {e}")),
                )
            }
        };
        if let Some(done) = prev.as_ref().filter(|p| p.state == State::Done) {
            tracing::info!("duplicate command answered from the journal; not executed again");
            let status = done.reply_status();
            let outcome = match status {
                ReplyStatus::Ok => "ok".to_owned(),
                ReplyStatus::Task => "task".to_owned(),
                ReplyStatus::Error => "error".to_owned(),
            };
            let stored_ct = ContentType::parse(done.content_type.as_deref()).unwrap_or_default();
            let body = if stored_ct == env.content_type {
                done.body.clone().unwrap_or_default()
            } else {
                // Same command id, other encoding: re-encode what was stored.
                match hostbus_protocol::decode::<serde_json::Value>(
                    stored_ct,
                    done.body.as_deref().unwrap_or_default(),
                    usize::MAX,
                ) {
                    Ok(v) => encode(env.content_type, &v).unwrap_or_default(),
                    Err(_) => done.body.clone().unwrap_or_default(),
                }
            };
            return Outcome {
                status,
                body,
                outcome: format!("journal-{outcome}"),
                dead_letter: None,
            };
        }
        // Executions begun (journal, crashes included) or deliveries
        // (broker or memory), whichever is more.
        let attempts = attempts.max(deliveries);
        if attempts > self.policy.max_deliveries {
            let out = self.give_up(env, attempts);
            self.record(env, &out).await;
            return out;
        }
        let interrupted = prev.is_some();
        if interrupted {
            tracing::warn!(attempts, "command was interrupted before it finished (agent crash?); reconciling with libvirt");
            let r = request.clone();
            self.blocking(move |b| b.clean_interrupted(&r)).await;
        }
        let result = self.execute(env, request.clone(), turn).await;
        let result = match result {
            Err(e) if interrupted => {
                let err = e.clone();
                match self.blocking(move |b| b.recover(&request, &err)).await {
                    Some(Some(v)) => {
                        tracing::info!("the interrupted command had already taken effect");
                        Ok(Executed::Value(Box::new(v)))
                    }
                    _ => Err(e),
                }
            }
            other => other,
        };
        let out = self.encode(env, result);
        self.record(env, &out).await;
        out
    }

    async fn record(&self, env: &Envelope, out: &Outcome) {
        let journal = self.journal.clone();
        let (id, name, status, ct, body) = (
            env.command_id.to_string(),
            env.command.clone(),
            out.status,
            env.content_type,
            out.body.clone(),
        );
        match tokio::task::spawn_blocking(move || journal.finish(&id, &name, status, ct, &body))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot record the reply in the journal"),
            Err(e) => tracing::error!(error = %e, "journal task failed"),
        }
    }

    fn encode(&self, env: &Envelope, result: Result<Executed, Error>) -> Outcome {
        let ct = env.content_type;
        match result {
            Ok(Executed::Value(resp)) => match resp.encode_reply(ct) {
                Ok(body) => Outcome {
                    status: ReplyStatus::Ok,
                    body,
                    outcome: "ok".to_owned(),
                    dead_letter: None,
                },
                Err(e) => Outcome::error(
                    ct,
                    Error::internal(format!("cannot encode the response: {e}")),
                ),
            },
            Ok(Executed::Task(task)) => Outcome {
                status: ReplyStatus::Task,
                body: encode_reply::<Empty>(ct, &Reply::Task(task)),
                outcome: "task".to_owned(),
                dead_letter: None,
            },
            Err(e) => {
                tracing::info!(code = %e.code, message = %e.message, "command failed");
                Outcome::error(ct, e)
            }
        }
    }

    /// Runs the request on the bridge on a blocking thread, panics
    /// contained, in `turn` (its place in its object's line).
    async fn execute(
        &self,
        env: &Envelope,
        request: AnyRequest,
        turn: Option<Turn>,
    ) -> Result<Executed, Error> {
        let ctx = CallContext {
            command_id: env.command_id,
            deadline: env.deadline,
        };
        let bridge = self.bridge.clone();
        let asynchronous = env.asynchronous && request.access() != Access::Read;
        let inline = !asynchronous && Bridge::runs_inline(&request);
        let run = move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                if asynchronous {
                    bridge
                        .submit_in_turn(request, &ctx, turn)
                        .map(|t| Executed::Task(Box::new(t)))
                } else {
                    bridge
                        .call_in_turn(request, &ctx, turn)
                        .map(|r| Executed::Value(Box::new(r)))
                }
            }))
        };
        // Libvirt stays off the runtime; what the bridge answers from memory
        // skips the blocking pool's thread hand-off.
        let joined = if inline {
            Ok(run())
        } else {
            tokio::task::spawn_blocking(run).await
        };
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
            Ok(Executed::Value(resp)) => match *resp {
                AnyResponse::HostSnapshot(mut inv) => {
                    inv.epoch = Some(self.epoch);
                    inv.seq = self.seq.load(Ordering::SeqCst);
                    Ok(Executed::Value(Box::new(AnyResponse::HostSnapshot(inv))))
                }
                other => Ok(Executed::Value(Box::new(other))),
            },
            other => other,
        }
    }

    /// Runs `work` on the bridge on a blocking thread; `None` if the thread
    /// failed.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Bridge) -> T + Send + 'static,
    ) -> Option<T> {
        let bridge = self.bridge.clone();
        tokio::task::spawn_blocking(move || work(&bridge))
            .await
            .ok()
    }
}
