//! A flag with a notification, on `event-listener`: how the driver tells a
//! running preparation, upstream or follow task "stop", and pending claims
//! "the manager is closing".
//!
//! The flag is set under the manager's lock, where the machine decided (its
//! `Abort`); the listeners are notified after the lock is released, so no task
//! is woken while the lock is held. A waiter registers its listener first and
//! checks the flag second, so a notification cannot slip in between.
//!
//! Result streams do not use it: their wake is a delivery to their inbox,
//! which keeps the stream's `Waker` itself (`inbox.rs`). A stream waits once
//! per delivery, so a listener per wait (an allocation and a registration in
//! the event's list) was a cost a stop signal, waited for once per task, does
//! not have.

use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

/// A flag and the tasks waiting for it.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    event: Event,
}

impl Signal {
    /// Sets the flag (under the manager's lock). Returns whether it was clear,
    /// that is whether a [`Signal::notify`] is owed.
    pub(crate) fn set(&self) -> bool {
        !self.set.swap(true, Ordering::SeqCst)
    }

    /// Wakes the tasks waiting for the flag (after the lock is released).
    pub(crate) fn notify(&self) {
        self.event.notify(usize::MAX);
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Waits until the flag is set, leaving it set (a stop: for good).
    pub(crate) async fn wait(&self) {
        loop {
            if self.is_set() {
                return;
            }
            let listener = self.event.listen();
            if self.is_set() {
                return;
            }
            listener.await;
        }
    }
}
