//! The client's side: a request's result stream.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::sync::Arc;

use futures_core::Stream;

use super::shared::{Read, Shared};
use super::signal::{Listener, Signal};
use super::Runtime;
use crate::{Item, RequestId};

/// What a result stream needs from its manager, without the manager's types.
pub(crate) trait Source: Send + Sync {
    fn read(&self, request: RequestId, out: &mut Vec<Item>) -> Read;
    fn detach(&self, request: RequestId);
}

impl<P: Send + 'static, R: Runtime> Source for Shared<P, R> {
    fn read(&self, request: RequestId, out: &mut Vec<Item>) -> Read {
        Shared::read(self, request, out)
    }

    fn detach(&self, request: RequestId) {
        Shared::detach(self, request);
    }
}

/// One request's result: its chunks, then exactly one [`Item::End`], then `None`
/// ([rule 19](crate::contract#rule-19)).
///
/// It reads the flight's log through its own cursor: a slow reader blocks nobody
/// and loses nothing, and a late joiner replays from the first chunk ([rule 7](crate::contract#rule-7)). It
/// waits without polling: when nothing is available it is woken as soon as
/// something is, and until then a poll costs no lock.
///
/// **Dropping it cancels its request** if the request is still live, and removes
/// the request's record ([rule 15](crate::contract#rule-15)). To stop reading without cancelling, keep it.
#[must_use = "dropping a result stream cancels its request"]
pub struct ResultStream {
    request: RequestId,
    source: Arc<dyn Source>,
    signal: Arc<Signal>,
    /// Registered with `signal` while parked and waiting.
    listener: Listener,
    /// Items read and not handed out yet: `ready[next..]`.
    ready: Vec<Item>,
    next: usize,
    /// The machine parked the reader at the last read: read again only once
    /// `signal` says it woke it.
    parked: bool,
    done: bool,
}

impl ResultStream {
    /// A stream for `request`, whose `signal` the manager has registered.
    pub(crate) fn new(request: RequestId, source: Arc<dyn Source>, signal: Arc<Signal>) -> Self {
        ResultStream {
            request,
            source,
            signal,
            listener: Listener::default(),
            ready: Vec::new(),
            next: 0,
            parked: false,
            done: false,
        }
    }

    /// The request this stream reads.
    #[must_use]
    pub fn id(&self) -> RequestId {
        self.request
    }

    /// The next item, or `None` after the end: the same as
    /// `StreamExt::next`, without needing a stream extension trait.
    pub async fn next_item(&mut self) -> Option<Item> {
        core::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.next == self.ready.len() {
            self.ready.clear();
            self.next = 0;
            while self.ready.is_empty() && !self.done {
                if self.parked && self.signal.poll_take(&mut self.listener, cx).is_pending() {
                    return Poll::Pending;
                }
                match self.source.read(self.request, &mut self.ready) {
                    Read::Parked | Read::ItemsParked => self.parked = true,
                    Read::Over => {
                        self.parked = false;
                        self.done = true;
                    }
                }
            }
        }
        let Some(slot) = self.ready.get_mut(self.next) else {
            self.done = true;
            return Poll::Ready(None);
        };
        // Take the item, leaving a placeholder that `clear` drops for free.
        let item = core::mem::replace(slot, Item::End(crate::Outcome::Completed));
        self.next += 1;
        if matches!(item, Item::End(_)) {
            self.done = true;
            self.next = self.ready.len();
        }
        Poll::Ready(Some(item))
    }
}

impl Stream for ResultStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl Drop for ResultStream {
    fn drop(&mut self) {
        self.source.detach(self.request);
    }
}

impl core::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResultStream")
            .field("request", &self.request)
            .field("buffered", &(self.ready.len() - self.next))
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
