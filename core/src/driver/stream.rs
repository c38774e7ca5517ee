//! The client's side: a request's result stream.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::VecDeque;
use std::sync::Arc;

use futures_core::Stream;

use super::shared::Shared;
use super::Runtime;
use crate::{Item, RequestId};

/// What a result stream needs from its manager, without the manager's types.
pub(crate) trait Source: Send + Sync {
    fn poll_read(&self, request: RequestId, cx: &mut Context<'_>, out: &mut Vec<Item>) -> Poll<()>;
    fn detach(&self, request: RequestId);
}

impl<P: Send + 'static, R: Runtime> Source for Shared<P, R> {
    fn poll_read(&self, request: RequestId, cx: &mut Context<'_>, out: &mut Vec<Item>) -> Poll<()> {
        Shared::poll_read(self, request, cx, out)
    }

    fn detach(&self, request: RequestId) {
        Shared::detach(self, request);
    }
}

/// One request's result: its chunks, then exactly one [`Item::End`], then `None`
/// (rule 19).
///
/// It reads the flight's log through its own cursor: a slow reader blocks nobody
/// and loses nothing, and a late joiner replays from the first chunk (rule 7). It
/// waits without polling: when nothing is available it is woken as soon as
/// something is.
///
/// **Dropping it cancels its request** if the request is still live, and removes
/// the request's record (rule 15). To stop reading without cancelling, keep it.
#[must_use = "dropping a result stream cancels its request"]
pub struct ResultStream {
    request: RequestId,
    source: Arc<dyn Source>,
    ready: VecDeque<Item>,
    scratch: Vec<Item>,
    done: bool,
}

impl ResultStream {
    pub(crate) fn new(request: RequestId, source: Arc<dyn Source>) -> Self {
        ResultStream {
            request,
            source,
            ready: VecDeque::new(),
            scratch: Vec::new(),
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
        if self.ready.is_empty() && !self.done {
            match self.source.poll_read(self.request, cx, &mut self.scratch) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => self.ready.extend(self.scratch.drain(..)),
            }
        }
        match self.ready.pop_front() {
            Some(item) => {
                if matches!(item, Item::End(_)) {
                    self.done = true;
                    self.ready.clear();
                }
                Poll::Ready(Some(item))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
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
        self.source.detach(self.request);
    }
}

impl core::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResultStream")
            .field("request", &self.request)
            .field("buffered", &self.ready.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
