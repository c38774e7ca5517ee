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
//! The chunks of one read are one `Arc<[Bytes]>` that several readers woken
//! by the same chunks share (the dispatch copies the `Bytes` handles out of
//! the log once per run of such readers, not once per reader). The stream's
//! waker is kept here too, so a delivery wakes the task directly: no listener
//! to allocate or register per wait.
//!
//! Allocation: a stream usually takes each delivery before the next one
//! comes, so the inbox keeps the oldest delivery in a slot of its own and
//! queues later ones only while the stream lags (a queue that allocates
//! only then). An inbox is one allocation, its `Arc`; a stream's deliveries
//! are shared copies. Blocks freed on another thread than their own are
//! what the allocator's locks cost most in the end-to-end profile
//! (BENCHMARKS.md), so a stream's own buffers are kept out of the common path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::Outcome;

/// Chunks delivered after the first, while the stream had not taken it.
pub(crate) type Queued = VecDeque<Arc<[Bytes]>>;

/// What a stream took from its inbox, in order: `chunks`, then the chunks it
/// was handed in its queue, then `end`.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The oldest chunks delivered.
    pub(crate) chunks: Option<Arc<[Bytes]>>,
    /// The terminal item, after every chunk.
    pub(crate) end: Option<Outcome>,
    /// No delivery will follow these.
    pub(crate) over: bool,
}

/// A result stream's inbox (see the module docs).
#[derive(Debug)]
pub(crate) struct Inbox {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The oldest chunks not taken yet. `None` means `more` is empty too.
    first: Option<Arc<[Bytes]>>,
    /// Chunks delivered after `first` (a stream that lags): allocated only then.
    more: Queued,
    /// The terminal item, once the read that found it was done.
    end: Option<Outcome>,
    /// No delivery will follow: the terminal one was made, or the request is
    /// gone (the stream ends without an item then, as before).
    over: bool,
    /// The stream's task, waiting for a delivery.
    waker: Option<Waker>,
}

impl Inbox {
    /// An empty inbox; it allocates nothing until a stream lags.
    pub(crate) fn new() -> Self {
        Inbox {
            state: Mutex::new(State::default()),
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
            if s.first.is_none() {
                s.first = Some(c);
            } else {
                s.more.push_back(c);
            }
        }
        if end.is_some() {
            s.end = end;
        }
        s.over |= last;
        s.waker.take()
    }

    /// Takes every delivery: the oldest chunks and the end in the answer, the
    /// later chunks swapped into `queued` (empty; handed back and forth, so a
    /// lagging stream's queue is reused). Or registers the task to be woken by
    /// the next delivery.
    pub(crate) fn poll_take(&self, queued: &mut Queued, cx: &mut Context<'_>) -> Poll<Taken> {
        let mut s = self.lock();
        if s.first.is_none() && s.end.is_none() && !s.over {
            match &mut s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        core::mem::swap(&mut s.more, queued);
        Poll::Ready(Taken {
            chunks: s.first.take(),
            end: s.end.take(),
            over: s.over,
        })
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
        let mut queued = Queued::new();
        assert!(inbox.poll_take(&mut queued, &mut cx).is_pending());
        let w = inbox
            .deliver(chunks(2), None, false)
            .expect("the waiting task's waker");
        assert!(
            inbox.deliver(chunks(1), None, false).is_none(),
            "woken once"
        );
        assert!(
            inbox.deliver(chunks(3), None, false).is_none(),
            "woken once"
        );
        w.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let Poll::Ready(taken) = inbox.poll_take(&mut queued, &mut cx) else {
            panic!("deliveries were made");
        };
        assert_eq!(taken.chunks.map(|c| c.len()), Some(2), "the oldest first");
        let later: Vec<usize> = queued.iter().map(|c| c.len()).collect();
        assert_eq!(later, [1, 3], "then the later ones, in order");
        assert!(taken.end.is_none() && !taken.over);
        queued.clear();
        assert!(inbox.poll_take(&mut queued, &mut cx).is_pending());
        assert!(queued.is_empty());
    }

    #[test]
    fn the_last_delivery_ends_the_inbox_even_without_an_item() {
        let inbox = Inbox::new();
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let mut queued = Queued::new();
        let _ = inbox.deliver(chunks(1), Some(Outcome::Completed), true);
        let Poll::Ready(taken) = inbox.poll_take(&mut queued, &mut cx) else {
            panic!("the end was delivered");
        };
        assert_eq!(taken.chunks.map(|c| c.len()), Some(1));
        assert_eq!(taken.end, Some(Outcome::Completed));
        assert!(taken.over);
        let gone = Inbox::new();
        let _ = gone.deliver(None, None, true);
        let Poll::Ready(taken) = gone.poll_take(&mut queued, &mut cx) else {
            panic!("the request is gone");
        };
        assert!(taken.chunks.is_none() && taken.end.is_none() && taken.over);
    }
}
