//! A result stream's inbox: the items the machine's reads produced for it,
//! waiting for the stream's task to hand them out.
//!
//! Why it exists: a result stream used to take the manager's lock for every
//! read, so every chunk crossed the machine's lock twice (the upstream's
//! input, then each reader's read), and woken readers on other threads queued
//! up behind the upstream and behind each other. Now the read happens where the
//! machine decided it: the dispatch, already under the lock, carries out a
//! reader's `Wake` by reading for it at once ([`Machine::read_borrowed`](crate::Machine::read_borrowed))
//! and puts the new chunks here. The stream's task never takes the manager's
//! lock to read; it takes only this inbox's small lock, which the dispatch
//! holds for a push.
//!
//! The chunks of one read are one [`Delivery::Chunks`]: an `Arc<[Bytes]>`
//! that several readers woken by the same chunks share (the dispatch copies
//! the `Bytes` handles out of the log once per run of such readers, not once
//! per reader). The stream's waker is kept here too, so a delivery wakes the
//! task directly: no listener to allocate or register per wait.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::Outcome;

/// How many deliveries an inbox and its stream have room for before they grow.
pub(super) const ROOM: usize = 4;

/// What one read gave a stream.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// New chunks, in log order (shared with other readers that read the same).
    Chunks(Arc<[Bytes]>),
    /// The terminal item: nothing follows it.
    End(Outcome),
}

/// Deliveries in the order they were made.
pub(crate) type Deliveries = VecDeque<Delivery>;

/// A result stream's inbox (see the module docs).
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    ready: Deliveries,
    /// No delivery will follow: the terminal one was made, or the request is
    /// gone (the stream ends without an item then, as before).
    over: bool,
    /// The stream's task, waiting for a delivery.
    waker: Option<Waker>,
}

impl Inbox {
    /// An empty inbox, with room for a few deliveries.
    pub(crate) fn new() -> Self {
        Inbox {
            state: Mutex::new(State {
                ready: VecDeque::with_capacity(ROOM),
                over: false,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing foreign runs under this lock: recover from poisoning.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds what a read gave (under the manager's lock): new chunks, the
    /// terminal item; `last` when no delivery will follow (the terminal item
    /// came, or the request is gone). Returns the waiting task's waker, to
    /// wake once the manager's lock is released, if there is news for it.
    pub(crate) fn deliver(
        &self,
        chunks: Option<Arc<[Bytes]>>,
        end: Option<Outcome>,
        last: bool,
    ) -> Option<Waker> {
        if chunks.is_none() && end.is_none() && !last {
            return None;
        }
        let mut s = self.lock();
        if let Some(c) = chunks {
            s.ready.push_back(Delivery::Chunks(c));
        }
        if let Some(o) = end {
            s.ready.push_back(Delivery::End(o));
        }
        s.over |= last;
        s.waker.take()
    }

    /// Moves every delivery into `into` (empty, and handed back and forth so
    /// neither side allocates), or registers the task to be woken by the next
    /// one. Ready with `true` when no delivery will follow those moved.
    pub(crate) fn poll_take(&self, into: &mut Deliveries, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.lock();
        if s.ready.is_empty() && !s.over {
            match &mut s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        core::mem::swap(&mut s.ready, into);
        Poll::Ready(s.over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn chunks(n: usize) -> Option<Arc<[Bytes]>> {
        Some((0..n).map(|_| Bytes::from_static(b"c")).collect())
    }

    #[test]
    fn a_waiting_stream_is_woken_by_the_next_delivery_and_gets_it_in_order() {
        let inbox = Inbox::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut got = Deliveries::new();
        assert!(inbox.poll_take(&mut got, &mut cx).is_pending());
        let w = inbox
            .deliver(chunks(2), None, false)
            .expect("the waiting task's waker");
        assert!(
            inbox.deliver(chunks(1), None, false).is_none(),
            "woken once"
        );
        w.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(inbox.poll_take(&mut got, &mut cx), Poll::Ready(false));
        let lens: Vec<usize> = got
            .iter()
            .map(|d| match d {
                Delivery::Chunks(c) => c.len(),
                Delivery::End(_) => 0,
            })
            .collect();
        assert_eq!(lens, [2, 1]);
        got.clear();
        assert!(inbox.poll_take(&mut got, &mut cx).is_pending());
    }

    #[test]
    fn the_last_delivery_ends_the_inbox_even_without_an_item() {
        let inbox = Inbox::new();
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut got = Deliveries::new();
        let _ = inbox.deliver(None, Some(Outcome::Completed), true);
        assert_eq!(inbox.poll_take(&mut got, &mut cx), Poll::Ready(true));
        assert!(matches!(
            got.pop_front(),
            Some(Delivery::End(Outcome::Completed))
        ));
        let gone = Inbox::new();
        let _ = gone.deliver(None, None, true);
        assert_eq!(gone.poll_take(&mut got, &mut cx), Poll::Ready(true));
        assert!(got.is_empty());
    }
}
