//! The client's side: a request's result stream.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::sync::Arc;

use bytes::Bytes;

use futures_core::Stream;

use super::inbox::{Inbox, Queued};
use super::shared::Shared;
use super::Runtime;
use crate::{Item, RequestId};

/// What a result stream needs from its manager, without the manager's types.
pub(crate) trait Source: Send + Sync {
    /// The stream was dropped; `over` when its inbox had its last delivery
    /// (the request is no longer live: only its record is left to remove).
    fn detach(&self, request: RequestId, over: bool);
}

impl<P: Send + 'static, R: Runtime> Source for Shared<P, R> {
    fn detach(&self, request: RequestId, over: bool) {
        Shared::detach(self, request, over);
    }
}

/// One request's result: its chunks, then exactly one [`Item::End`], then `None`
/// ([rule 19](crate::contract#rule-19)).
///
/// It reads the flight's log through its own cursor: a slow reader blocks nobody
/// and loses nothing, and a late joiner replays from the first chunk ([rule 7](crate::contract#rule-7)). It
/// waits without polling: the manager reads for it as soon as the machine has
/// something new for it, and wakes it; a poll takes no manager lock.
///
/// **Dropping it cancels its request** if the request is still live, and removes
/// the request's record ([rule 15](crate::contract#rule-15)). To stop reading without cancelling, keep it.
#[must_use = "dropping a result stream cancels its request"]
pub struct ResultStream {
    request: RequestId,
    source: Arc<dyn Source>,
    /// Where the manager's reads for this stream land.
    inbox: Arc<Inbox>,
    /// The chunks being handed out, and how many of them were.
    current: Option<(Arc<[Bytes]>, usize)>,
    /// Chunks taken from the inbox after `current` (a stream that lagged).
    queued: Queued,
    /// The terminal item, taken from the inbox, handed out after every chunk.
    end: Option<crate::Outcome>,
    /// The inbox said no delivery follows those in `ready`.
    over: bool,
    /// The terminal item was handed out (or the request is gone).
    done: bool,
}

impl ResultStream {
    /// A stream for `request`, whose `inbox` the manager has registered.
    pub(crate) fn new(request: RequestId, source: Arc<dyn Source>, inbox: Arc<Inbox>) -> Self {
        ResultStream {
            request,
            source,
            inbox,
            current: None,
            queued: Queued::new(),
            end: None,
            over: false,
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
        loop {
            if let Some((chunks, next)) = &mut self.current {
                if let Some(chunk) = chunks.get(*next) {
                    *next += 1;
                    return Poll::Ready(Some(Item::Chunk(chunk.clone())));
                }
                self.current = None;
            }
            if let Some(chunks) = self.queued.pop_front() {
                self.current = Some((chunks, 0));
                continue;
            }
            if let Some(outcome) = self.end.take() {
                self.done = true;
                return Poll::Ready(Some(Item::End(outcome)));
            }
            if self.done || self.over {
                self.done = true;
                return Poll::Ready(None);
            }
            match self.inbox.poll_take(&mut self.queued, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(taken) => {
                    self.current = taken.chunks.map(|chunks| (chunks, 0));
                    self.end = taken.end;
                    self.over = taken.over;
                }
            }
        }
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
        self.source.detach(self.request, self.done || self.over);
    }
}

impl core::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResultStream")
            .field("request", &self.request)
            .field("queued", &self.queued.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
