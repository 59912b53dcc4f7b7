//! The run half of dispatching: a read straight to the bridge; a changing
//! command through the journal (answered from it when done before, its id
//! locked against duplicates, re-run with the bridge's recovery when it
//! was interrupted); the bridge on a blocking thread with panics
//! contained; the encoded outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use hostbus_bridge::{Bridge, CallContext, Turn};
use hostbus_protocol::commands::*;
use hostbus_protocol::{
    encode, AnyResponse, ContentType, Envelope, Error, Planned, Reply, ReplyStatus, Run,
};

use crate::journal::State;

use super::{encode_reply, lock, Dispatcher, Executed, IdLock, Outcome};

impl Dispatcher {
    pub(super) async fn run_read(
        &self,
        env: &Envelope,
        request: Planned,
        _deliveries: u32,
    ) -> Outcome {
        let result = self.execute(env, request, None).await;
        self.encode(env, result)
    }

    pub(super) async fn run_journaled(
        &self,
        env: &Envelope,
        request: Planned,
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

    pub(super) async fn run_journaled_locked(
        &self,
        env: &Envelope,
        request: Planned,
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
            self.blocking(move |b| b.clean_interrupted(r.request()))
                .await;
        }
        let result = self.execute(env, request.clone(), turn).await;
        let result = match result {
            Err(e) if interrupted => {
                let err = e.clone();
                match self
                    .blocking(move |b| b.recover(request.request(), &err))
                    .await
                {
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

    pub(super) async fn record(&self, env: &Envelope, out: &Outcome) {
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

    pub(super) fn encode(&self, env: &Envelope, result: Result<Executed, Error>) -> Outcome {
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
    pub(super) async fn execute(
        &self,
        env: &Envelope,
        request: Planned,
        turn: Option<Turn>,
    ) -> Result<Executed, Error> {
        let ctx = CallContext {
            command_id: env.command_id,
            deadline: env.deadline,
        };
        let bridge = self.bridge.clone();
        // The catalogue says what may run as a task (changes) and what is
        // answered from memory (inline), so needs no blocking thread.
        let run = request.plan().run;
        let asynchronous = env.asynchronous && run.changes();
        let inline = !asynchronous && run == Run::Inline;
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
                    self.stamp.inventory(&mut inv);
                    Ok(Executed::Value(Box::new(AnyResponse::HostSnapshot(inv))))
                }
                other => Ok(Executed::Value(Box::new(other))),
            },
            other => other,
        }
    }

    /// Runs `work` on the bridge on a blocking thread; `None` if the thread
    /// failed.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Bridge) -> T + Send + 'static,
    ) -> Option<T> {
        let bridge = self.bridge.clone();
        tokio::task::spawn_blocking(move || work(&bridge))
            .await
            .ok()
    }
}
