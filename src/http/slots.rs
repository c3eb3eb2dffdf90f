//! Connection slots: which open connections are idle (a TLS handshake not
//! finished, a request head not sent yet, keep-alive between requests), so
//! that when `max_connections` are open a new client takes the slot of the
//! connection idle the longest instead of being refused — as nginx closes
//! idle keep-alive connections first when its connections run out. Before,
//! 60 TCP connections that never sent a byte locked real clients out of a
//! TLS hub with `max_connections = 50` for about 65 s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The open connections' states.
#[derive(Default)]
pub(super) struct Slots {
    /// Idle connections: when they became idle, and how to close them.
    idle: Mutex<HashMap<u64, (Instant, smol::channel::Sender<()>)>>,
    next: AtomicU64,
    /// Idle connections closed to make room, since start.
    pub(super) evicted: AtomicU64,
}

impl Slots {
    /// A slot for a new connection, idle until it sends a request.
    pub(super) fn open(self: &Arc<Slots>) -> Slot {
        let id = self.next.fetch_add(1, Relaxed);
        let (close, closed) = smol::channel::bounded(1);
        let slot = Slot { slots: self.clone(), id, close, closed };
        slot.idle();
        slot
    }

    /// Closes the connection idle the longest; whether there was one.
    pub(super) fn evict_idle(&self) -> bool {
        let Ok(mut idle) = self.idle.lock() else { return false };
        let Some((&id, _)) = idle.iter().min_by_key(|(_, (since, _))| *since) else { return false };
        if let Some((_, close)) = idle.remove(&id) {
            close.close();
        }
        self.evicted.fetch_add(1, Relaxed);
        true
    }
}

/// One connection's slot, released when dropped.
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    close: smol::channel::Sender<()>,
    closed: smol::channel::Receiver<()>,
}

impl Slot {
    /// Waiting for a handshake or a request head: may be closed for a new client.
    pub(super) fn idle(&self) {
        if let Ok(mut idle) = self.slots.idle.lock() {
            idle.insert(self.id, (Instant::now(), self.close.clone()));
        }
    }

    /// Answering a request: not closed for anyone.
    pub(super) fn busy(&self) {
        if let Ok(mut idle) = self.slots.idle.lock() {
            idle.remove(&self.id);
        }
    }

    /// Resolves once this connection was chosen to make room.
    pub(super) async fn evicted(&self) {
        let _ = self.closed.recv().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_idle_the_longest_makes_room_and_busy_ones_never_do() {
        let slots = Arc::new(Slots::default());
        let (a, b) = (slots.open(), slots.open());
        a.busy();
        assert!(slots.evict_idle(), "b is idle");
        let done = |slot: &Slot| smol::block_on(futures_lite::future::poll_once(slot.evicted())).is_some();
        assert!(done(&b), "b was told to close");
        assert!(!done(&a), "a was not");
        assert!(!slots.evict_idle(), "a is busy: no one to close");
        a.idle();
        drop(a);
        assert!(!slots.evict_idle(), "a dropped its slot");
    }
}
