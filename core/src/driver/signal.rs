//! A flag with a notification, on `event-listener`: how the driver tells a
//! parked result stream "read again", and a running preparation or upstream
//! "stop".
//!
//! The flag is set under the manager's lock, where the machine decided (its
//! `Wake` or `Abort`); the listeners are notified after the lock is released, so
//! no task is woken while the lock is held. A waiter registers its listener
//! first and checks the flag second, so a notification cannot slip in between.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::{Event, EventListener};

/// A waiter's registration with a [`Signal`], kept between polls.
#[derive(Debug, Default)]
pub(crate) struct Listener {
    registered: Option<EventListener>,
    /// `registered` completed (it must not be polled again).
    fired: bool,
}

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

    /// Clears the flag; returns whether it was set.
    fn take(&self) -> bool {
        self.set.swap(false, Ordering::SeqCst)
    }

    /// Polls until the flag is set, then clears it (a reader's wake: once per
    /// `Wake`). `listener` keeps the registration between polls, and a fired
    /// one until the next wait: `event-listener` wakes the task while it holds
    /// the event's lock, so dropping the fired listener at once (which takes
    /// that lock) would contend with the notifier; later it does not.
    pub(crate) fn poll_take(&self, listener: &mut Listener, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.take() {
                return Poll::Ready(());
            }
            match &mut listener.registered {
                Some(l) if !listener.fired => {
                    if Pin::new(l).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    listener.fired = true;
                }
                // Registered before the flag is checked again above.
                _ => {
                    listener.registered = Some(self.event.listen());
                    listener.fired = false;
                }
            }
        }
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
