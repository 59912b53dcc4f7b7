//! The one stamping point of the agent's events, feeding both bindings.
//!
//! Every event (a bridge event, `agent.online`/`agent.offline`) is numbered
//! here, under one short lock, and handed in that order to the bus
//! publisher and to the HTTP binding's subscribers: both bindings see the
//! same records with the same epoch and sequence numbers, whether or not
//! the broker is reachable. The lock makes numbering and hand-off one
//! step, so no subscriber sees a higher number before a lower one.

use std::sync::{Arc, Mutex};

use hostbus_bridge::ObjectEvent;
use hostbus_protocol::Event;
use tokio::sync::{broadcast, mpsc};

use crate::stamp::Stamp;
use crate::sync::lock;

/// Events an HTTP subscriber may fall behind by before it misses some
/// (and sees a gap in `seq`, which tells it to resync).
pub(crate) const SUBSCRIBER_BUFFER: usize = 1024;

/// Numbers events and hands them to the bindings.
pub(crate) struct Feed {
    stamp: Arc<Stamp>,
    order: Mutex<()>,
    /// To the bus publisher: unbounded, as the bridge's thread must never
    /// block; a session drains what queued while it was disconnected.
    bus: mpsc::UnboundedSender<Event>,
    /// To HTTP subscribers (none, often).
    http: broadcast::Sender<Event>,
}

impl Feed {
    /// A feed stamping with `stamp`, and the bus publisher's end of it.
    pub(crate) fn new(stamp: Arc<Stamp>) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (bus, rx) = mpsc::unbounded_channel();
        let (http, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let feed = Self {
            stamp,
            order: Mutex::new(()),
            bus,
            http,
        };
        (feed, rx)
    }

    /// Numbers a bridge event and hands it to both bindings. Called on the
    /// bridge's observing threads: never blocks on anything but the lock.
    /// `false` once the bus publisher's end is gone.
    pub(crate) fn bridge_event(&self, ev: ObjectEvent) -> bool {
        let _order = lock(&self.order);
        let event = self.stamp.event(ev);
        let _ = self.http.send(event.clone());
        self.bus.send(event).is_ok()
    }

    /// Numbers an event made by `make` (an announcement, which the session
    /// publishes itself, confirmed) and hands it to HTTP subscribers;
    /// returns it for the bus.
    pub(crate) fn announce(&self, make: impl FnOnce(&Stamp) -> Event) -> Event {
        let _order = lock(&self.order);
        let event = make(&self.stamp);
        let _ = self.http.send(event.clone());
        event
    }

    /// A new HTTP subscription, and the last number given out before it:
    /// the subscription delivers every event numbered after it.
    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<Event>, u64) {
        let _order = lock(&self.order);
        (self.http.subscribe(), self.stamp.last_seq())
    }

    /// The stamp (host id, epoch, last number).
    pub(crate) fn stamp(&self) -> &Stamp {
        &self.stamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostbus_protocol::types::{ObjectClass, Record};
    use hostbus_protocol::EventAction;

    fn ev(id: &str) -> ObjectEvent {
        ObjectEvent {
            class: ObjectClass::Vm,
            action: EventAction::Started,
            object_id: id.into(),
            generation: 1,
            record: Record::None,
            time: 1,
            migration: None,
        }
    }

    #[test]
    fn both_bindings_get_the_same_numbers_in_order() {
        let (feed, mut bus) = Feed::new(Arc::new(Stamp::new("h1")));
        let (mut http, last) = feed.subscribe();
        assert_eq!(last, 0);
        assert!(feed.bridge_event(ev("a")));
        let online = feed.announce(|s| s.announcement(EventAction::Online, 2, None));
        assert!(feed.bridge_event(ev("b")));
        let on_bus: Vec<u64> = std::iter::from_fn(|| bus.try_recv().ok())
            .map(|e| e.seq)
            .collect();
        let on_http: Vec<u64> = std::iter::from_fn(|| http.try_recv().ok())
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            on_bus,
            vec![1, 3],
            "announcements go to the bus by the session"
        );
        assert_eq!(online.seq, 2);
        assert_eq!(on_http, vec![1, 2, 3]);
        let (_, last) = feed.subscribe();
        assert_eq!(last, 3);
    }
}
