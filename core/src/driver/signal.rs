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
    /// `Wake`). `listener` keeps the registration between polls.
    pub(crate) fn poll_take(
        &self,
        listener: &mut Option<EventListener>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            if self.take() {
                *listener = None;
                return Poll::Ready(());
            }
            match listener {
                Some(l) => {
                    if Pin::new(l).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *listener = None;
                }
                // Registered before the flag is checked again above.
                None => *listener = Some(self.event.listen()),
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
