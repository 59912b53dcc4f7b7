//! Settling deliveries on the command channel: acks that complete a run of
//! consecutive delivery tags go out as one `multiple` ack, the rest one by
//! one; requeues go out at once.
//!
//! Every ack is a broker operation, and at high call rates the broker's CPU
//! is the limit (docs/performance.md). Commands finish out of order, so a
//! plain "ack everything up to N" could settle a command still running; the
//! [`Coalescer`] only ever covers tags that have finished, and never names a
//! tag it has settled before (RabbitMQ closes the channel on an unknown tag).
//!
//! The reply-before-ack rule holds: a command's tag reaches the settler only
//! after its reply was written, and acks go out on the channel the reply
//! went out on, after it.

use std::collections::BTreeSet;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How one delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done (its reply, if any, is out): ack.
    Ack(u64),
    /// Not done here: back to the queue.
    Requeue(u64),
}

/// One frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `basic.ack`.
    Ack {
        /// The delivery tag.
        tag: u64,
        /// Whether it covers every unsettled tag up to `tag`.
        multiple: bool,
    },
    /// `basic.nack` with requeue, for one tag.
    Requeue {
        /// The delivery tag.
        tag: u64,
    },
}

/// Turns batches of finished deliveries into as few frames as is safe.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    /// Every tag up to here is settled on the wire.
    floor: u64,
    /// Tags above `floor` already settled on the wire.
    above: BTreeSet<u64>,
}

impl Coalescer {
    /// The frames that settle `batch` (tags not settled before).
    pub(crate) fn plan(&mut self, batch: &[Settle]) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut acks = BTreeSet::new();
        for s in batch {
            match *s {
                Settle::Requeue(tag) => {
                    ops.push(Op::Requeue { tag });
                    self.above.insert(tag);
                }
                Settle::Ack(tag) => {
                    acks.insert(tag);
                }
            }
        }
        // Walk up from the floor over settled and newly finished tags.
        let (mut top, mut last_new, mut covered) = (self.floor, None, 0usize);
        loop {
            let next = top + 1;
            if acks.remove(&next) {
                last_new = Some(next);
                covered += 1;
            } else if !self.above.remove(&next) {
                break;
            }
            top = next;
        }
        if let Some(tag) = last_new {
            ops.push(Op::Ack {
                tag,
                multiple: covered > 1,
            });
        }
        self.floor = top;
        // Finished above a gap (a command still running): one by one, so
        // the gap stays unsettled.
        for tag in acks {
            ops.push(Op::Ack {
                tag,
                multiple: false,
            });
            self.above.insert(tag);
        }
        ops
    }
}

/// The sending side: serving tasks report here.
#[derive(Clone)]
pub(crate) struct Settler {
    tx: mpsc::UnboundedSender<Settle>,
}

impl Settler {
    /// Starts the settling task for `channel` (one per session: delivery
    /// tags are per channel). It ends when every `Settler` is dropped,
    /// after sending what it was given.
    pub(crate) fn start(channel: Channel) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(channel, rx)))
    }

    /// Reports how a delivery ended.
    pub(crate) fn settle(&self, s: Settle) {
        if self.tx.send(s).is_err() {
            tracing::warn!(settle = ?s, "the settling task is gone; the command will be redelivered");
        }
    }
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<Settle>) {
    let mut coalescer = Coalescer::default();
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 1024).await > 0 {
        for op in coalescer.plan(&batch) {
            let sent = match op {
                Op::Ack { tag, multiple } => {
                    channel.basic_ack(tag, BasicAckOptions { multiple }).await
                }
                Op::Requeue { tag } => {
                    channel
                        .basic_nack(
                            tag,
                            BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            },
                        )
                        .await
                }
            };
            if let Err(e) = sent {
                // The channel is gone: its unacked commands are redelivered.
                tracing::warn!(error = %e, ?op, "cannot settle a command");
                return;
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(tag: u64, multiple: bool) -> Op {
        Op::Ack { tag, multiple }
    }

    #[test]
    fn consecutive_acks_become_one_multiple_ack() {
        let mut c = Coalescer::default();
        let ops = c.plan(&[Settle::Ack(2), Settle::Ack(1), Settle::Ack(3)]);
        assert_eq!(ops, vec![ack(3, true)]);
        assert_eq!(c.plan(&[Settle::Ack(4)]), vec![ack(4, false)]);
    }

    #[test]
    fn a_running_command_is_never_covered() {
        let mut c = Coalescer::default();
        // Tag 2 still runs: 1 is acked alone, 3 and 4 one by one.
        let ops = c.plan(&[Settle::Ack(1), Settle::Ack(3), Settle::Ack(4)]);
        assert_eq!(ops, vec![ack(1, false), ack(3, false), ack(4, false),]);
        // 2 and 5 finish: one multiple ack naming 5 covers both (3 and 4
        // are settled already; a frame naming them would close the channel).
        assert_eq!(
            c.plan(&[Settle::Ack(2), Settle::Ack(5)]),
            vec![ack(5, true)]
        );
    }

    #[test]
    fn requeues_go_first_and_are_not_acked() {
        let mut c = Coalescer::default();
        let ops = c.plan(&[Settle::Ack(1), Settle::Requeue(2), Settle::Ack(3)]);
        assert_eq!(ops, vec![Op::Requeue { tag: 2 }, ack(3, true),]);
    }

    /// Simulates the broker: every tag settled exactly once, a multiple ack
    /// covers only finished tags, and no frame names a settled tag.
    #[test]
    fn random_finishing_orders_settle_every_tag_exactly_once() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let n = 1 + rand(60);
            let mut order: Vec<u64> = (1..=n).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rand(i as u64 + 1) as usize);
            }
            let mut c = Coalescer::default();
            let mut finished = BTreeSet::new();
            let mut settled = BTreeSet::new();
            let mut requeued = BTreeSet::new();
            let mut rest = &order[..];
            while !rest.is_empty() {
                let k = 1 + rand(rest.len() as u64) as usize;
                let (now, later) = rest.split_at(k.min(rest.len()));
                rest = later;
                let batch: Vec<Settle> = now
                    .iter()
                    .map(|&t| {
                        if rand(10) == 0 {
                            Settle::Requeue(t)
                        } else {
                            Settle::Ack(t)
                        }
                    })
                    .collect();
                finished.extend(now.iter().copied());
                for op in c.plan(&batch) {
                    match op {
                        Op::Requeue { tag } => {
                            assert!(settled.insert(tag), "tag {tag} settled twice");
                            requeued.insert(tag);
                        }
                        Op::Ack { tag, multiple } => {
                            assert!(!settled.contains(&tag), "names settled tag {tag}");
                            let covers: Vec<u64> = if multiple {
                                (1..=tag).filter(|t| !settled.contains(t)).collect()
                            } else {
                                vec![tag]
                            };
                            for t in covers {
                                assert!(finished.contains(&t), "acks running tag {t}");
                                assert!(!requeued.contains(&t), "acks requeued tag {t}");
                                settled.insert(t);
                            }
                        }
                    }
                }
            }
            assert_eq!(settled, (1..=n).collect(), "every tag settled");
        }
    }
}
