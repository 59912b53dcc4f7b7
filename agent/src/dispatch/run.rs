//! The run half of dispatching: a read straight to the bridge; a changing
//! command through the journal (answered from it when done before, its id
//! locked against duplicates, re-run with the bridge's recovery when it
//! was interrupted), all in one blocking step: the journal's start, the
//! bridge with panics contained, the journal's finish.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use hostbus_bridge::{Bridge, CallContext, Turn};
use hostbus_protocol::commands::*;
use hostbus_protocol::{decode, encode, ContentType, Error, Planned, Reply, ReplyStatus, Run};

use crate::journal::{Entry, Journal, State};

use super::{encode_reply, give_up, lock, Dispatcher, Executed, Head, IdLock, Outcome};

impl Dispatcher {
    pub(super) async fn run_read(&self, head: &Head, request: Planned) -> Outcome {
        let inline = request.plan().run == Run::Inline;
        let work = Work {
            bridge: self.bridge.clone(),
            stamp: self.stamp.clone(),
            head: head.clone(),
        };
        // What the bridge answers from memory skips the blocking pool's
        // thread hand-off; libvirt stays off the runtime.
        if inline {
            return work.encode(work.execute(request, None));
        }
        let ct = head.content_type;
        tokio::task::spawn_blocking(move || work.encode(work.execute(request, None)))
            .await
            .unwrap_or_else(|e| {
                Outcome::error(
                    ct,
                    Error::internal(format!("the handler did not finish: {e}")),
                )
            })
    }

    pub(super) async fn run_journaled(
        &self,
        head: &Head,
        request: Planned,
        deliveries: u32,
        turn: Option<Turn>,
        id_lock: Option<IdLock>,
    ) -> Outcome {
        let (held, mutex) = match id_lock {
            Some(IdLock::Held(g)) => {
                let m = lock(&self.running).get(&head.command_id).cloned();
                (g, m)
            }
            Some(IdLock::Wait(m)) => (m.clone().lock_owned().await, Some(m)),
            None => {
                // Not admitted through `admit` (cannot happen): lock now.
                let m = lock(&self.running)
                    .entry(head.command_id)
                    .or_default()
                    .clone();
                (m.clone().lock_owned().await, Some(m))
            }
        };
        let journaled = Journaled {
            work: Work {
                bridge: self.bridge.clone(),
                stamp: self.stamp.clone(),
                head: head.clone(),
            },
            journal: self.journal.clone(),
            max_deliveries: self.policy.max_deliveries,
            deliveries,
        };
        let ct = head.content_type;
        // One hand-off to the blocking pool: the journal's start, the
        // bridge and the journal's finish run on the same thread.
        let out = tokio::task::spawn_blocking(move || journaled.run(request, turn))
            .await
            .unwrap_or_else(|e| {
                Outcome::error(
                    ct,
                    Error::internal(format!("the handler did not finish: {e}")),
                )
            });
        drop(held);
        let mut running = lock(&self.running);
        // The map's and our own reference are all: nobody waits for this id.
        if mutex.is_some_and(|m| Arc::strong_count(&m) <= 2) {
            running.remove(&head.command_id);
        }
        out
    }
}

/// What running a command needs, owned, for a blocking thread.
struct Work {
    bridge: Arc<Bridge>,
    stamp: Arc<crate::stamp::Stamp>,
    head: Head,
}

impl Work {
    /// Runs the request on the bridge in `turn` (its places in its objects'
    /// lines), panics contained.
    fn execute(&self, request: Planned, turn: Option<Turn>) -> Result<Executed, Error> {
        let ctx = CallContext {
            command_id: self.head.command_id,
            deadline: self.head.deadline,
        };
        // The catalogue says what may run as a task (changes).
        let asynchronous = self.head.asynchronous && request.plan().run.changes();
        let bridge = &self.bridge;
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if asynchronous {
                bridge
                    .submit_in_turn(request, &ctx, turn)
                    .map(|t| Executed::Task(Box::new(t)))
            } else {
                bridge
                    .call_in_turn(request, &ctx, turn)
                    .map(|r| Executed::Value(Box::new(r)))
            }
        }));
        match ran {
            Ok(Ok(Executed::Value(mut resp))) => {
                // An inventory says which event it is current up to.
                if let Some(inv) = resp.inventory_mut() {
                    self.stamp.inventory(inv);
                }
                Ok(Executed::Value(resp))
            }
            Ok(other) => other,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(panic = %what, "a handler panicked; the agent goes on");
                Err(Error::internal(format!("the handler panicked: {what}")))
            }
        }
    }

    fn encode(&self, result: Result<Executed, Error>) -> Outcome {
        let ct = self.head.content_type;
        match result {
            Ok(Executed::Value(resp)) => match resp.encode_reply(ct) {
                Ok(body) => Outcome {
                    status: ReplyStatus::Ok,
                    error: None,
                    body,
                    outcome: "ok".to_owned(),
                    unprocessable: None,
                },
                Err(e) => Outcome::error(
                    ct,
                    Error::internal(format!("cannot encode the response: {e}")),
                ),
            },
            Ok(Executed::Task(task)) => Outcome {
                status: ReplyStatus::Task,
                error: None,
                body: encode_reply::<Empty>(ct, &Reply::Task(task)),
                outcome: "task".to_owned(),
                unprocessable: None,
            },
            Err(e) => {
                tracing::info!(code = %e.code, message = %e.message, "command failed");
                Outcome::error(ct, e)
            }
        }
    }
}

/// A changing command with its journal, run on one blocking thread.
struct Journaled {
    work: Work,
    journal: Arc<Journal>,
    max_deliveries: u32,
    deliveries: u32,
}

impl Journaled {
    fn run(self, request: Planned, turn: Option<Turn>) -> Outcome {
        let head = &self.work.head;
        let ct = head.content_type;
        let id = head.command_id.to_string();
        let prev = match self.journal.get(&id) {
            Ok(prev) => prev,
            Err(e) => return Outcome::error(ct, Error::internal(e)),
        };
        if let Some(done) = prev.as_ref().filter(|p| p.state == State::Done) {
            tracing::info!("duplicate command answered from the journal; not executed again");
            return from_journal(done, ct);
        }
        let attempts = match self.journal.start(&id, &head.command) {
            Ok(n) => n,
            Err(e) => return Outcome::error(ct, Error::internal(e)),
        };
        // Executions begun (journal, crashes included) or deliveries
        // (broker or memory), whichever is more.
        let attempts = attempts.max(self.deliveries);
        let out = if attempts > self.max_deliveries {
            give_up(&self.work.head, attempts)
        } else {
            self.work
                .encode(self.execute(request, turn, prev.is_some()))
        };
        if let Err(e) = self
            .journal
            .finish(&id, &head.command, out.status, ct, &out.body)
        {
            tracing::error!(error = %e, "cannot record the reply in the journal");
        }
        out
    }

    /// Runs the command; a re-run of an interrupted one first cleans what
    /// its first run left, and a failure that says the first run took
    /// effect is answered from the object's state (bridge/src/recover.rs).
    fn execute(
        &self,
        request: Planned,
        turn: Option<Turn>,
        interrupted: bool,
    ) -> Result<Executed, Error> {
        let bridge = &self.work.bridge;
        if !interrupted {
            return self.work.execute(request, turn);
        }
        tracing::warn!(
            "command was interrupted before it finished (agent crash?); reconciling with libvirt"
        );
        bridge.clean_interrupted(request.request());
        match self.work.execute(request.clone(), turn) {
            Err(e) => match bridge.recover(request.request(), &e) {
                Some(v) => {
                    tracing::info!("the interrupted command had already taken effect");
                    Ok(Executed::Value(Box::new(v)))
                }
                None => Err(e),
            },
            other => other,
        }
    }
}

/// The reply recorded for a command id, in the encoding `ct` asked for now.
fn from_journal(done: &Entry, ct: ContentType) -> Outcome {
    let status = done.reply_status();
    let stored_ct = ContentType::parse(done.content_type.as_deref()).unwrap_or_default();
    let stored = done.body.as_deref().unwrap_or_default();
    let body = if stored_ct == ct {
        stored.to_vec()
    } else {
        // Same command id, other encoding: re-encode what was stored.
        match decode::<serde_json::Value>(stored_ct, stored, usize::MAX) {
            Ok(v) => encode(ct, &v).unwrap_or_default(),
            Err(_) => stored.to_vec(),
        }
    };
    // The binding needs the error itself (its code, its parameters).
    let error = (status == ReplyStatus::Error)
        .then(|| decode::<Reply<serde::de::IgnoredAny>>(stored_ct, stored, usize::MAX).ok())
        .flatten()
        .and_then(|r| match r {
            Reply::Error(e) => Some(e),
            _ => None,
        });
    Outcome {
        status,
        error,
        body,
        outcome: format!("journal-{}", status.as_str()),
        unprocessable: None,
    }
}
