//! The user's side: a preparer and an upstream, and how the driver erases their
//! types so that a manager is generic over the payload only.

use core::fmt::Display;
use core::future::Future;
use core::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_core::Stream;
use futures_lite::StreamExt;

use crate::Prepared;

/// What a successful preparation hands to the upstream: the value the upstream
/// needs (`request`: a tokenised prompt, a built HTTP request...) and whether the
/// flight's result may be stored in the cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Preparation<Q> {
    /// What the upstream is called with.
    pub request: Q,
    /// Whether the result may be cached ([rule 8](crate::contract#rule-8)).
    pub cacheable: bool,
}

impl<Q> Preparation<Q> {
    /// A preparation whose result may be cached.
    #[must_use]
    pub fn cacheable(request: Q) -> Self {
        Preparation {
            request,
            cacheable: true,
        }
    }

    /// A preparation whose result must not be cached.
    #[must_use]
    pub fn uncacheable(request: Q) -> Self {
        Preparation {
            request,
            cacheable: false,
        }
    }
}

/// The user's preparation: turns the payload of the submit that created a flight
/// into what the upstream needs. At most `max_concurrent_requests` run at once.
///
/// Implemented for every `Fn(P) -> impl Future<Output = Result<Preparation<Q>, E>>`,
/// so a closure does:
///
/// ```
/// # use flightdeck_core::driver::{Preparation, Preparer};
/// fn check<P>(_: impl Preparer<P>) {}
/// check(|prompt: String| async move {
///     Ok::<_, std::io::Error>(Preparation::cacheable(prompt.trim().to_owned()))
/// });
/// ```
///
/// Or implement it on a type of your own, with an `async fn`:
///
/// ```
/// # use flightdeck_core::driver::{Preparation, Preparer};
/// struct Tokenizer {
///     max_tokens: usize,
/// }
///
/// impl Preparer<String> for Tokenizer {
///     type Output = Vec<String>;
///     type Error = String;
///
///     async fn prepare(&self, prompt: String) -> Result<Preparation<Vec<String>>, String> {
///         let tokens: Vec<String> = prompt.split_whitespace().map(str::to_owned).collect();
///         if tokens.len() > self.max_tokens {
///             return Err(format!("{} tokens, at most {}", tokens.len(), self.max_tokens));
///         }
///         Ok(Preparation::cacheable(tokens))
///     }
/// }
/// # fn check(_: impl Preparer<String>) {}
/// # check(Tokenizer { max_tokens: 4096 });
/// ```
///
/// An error fails the flight with [`Failure::Preparation`](crate::Failure::Preparation)
/// (its `Display` text); a panic fails it with
/// [`Failure::Panicked`](crate::Failure::Panicked) ([rule 23](crate::contract#rule-23)). The future may be
/// dropped at any await point when the flight is aborted.
pub trait Preparer<P>: Send + Sync + 'static {
    /// What the upstream is called with.
    type Output: Send + 'static;
    /// Why a preparation failed.
    type Error: Display;
    /// Prepares one flight from the payload of the submit that created it.
    fn prepare(
        &self,
        payload: P,
    ) -> impl Future<Output = Result<Preparation<Self::Output>, Self::Error>> + Send;
}

impl<P, F, Fut, Q, E> Preparer<P> for F
where
    F: Fn(P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Preparation<Q>, E>> + Send,
    Q: Send + 'static,
    E: Display,
{
    type Output = Q;
    type Error = E;

    fn prepare(&self, payload: P) -> impl Future<Output = Result<Preparation<Q>, E>> + Send {
        self(payload)
    }
}

/// The user's upstream: opens one stream of chunks for a prepared flight. At most
/// `max_concurrent_streams` run at once.
///
/// Implemented for every `Fn(Q) -> impl Future<Output = Result<S, E>>` where `S`
/// is a `Stream<Item = Result<Bytes, E>>`, so a closure does:
///
/// ```
/// # use flightdeck_core::driver::Upstream;
/// # use flightdeck_core::Bytes;
/// fn check<Q>(_: impl Upstream<Q>) {}
/// check(|prompt: String| async move {
///     let words: Vec<Result<Bytes, std::io::Error>> =
///         prompt.split(' ').map(|w| Ok(Bytes::from(w.to_owned()))).collect();
///     Ok::<_, std::io::Error>(futures_lite::stream::iter(words))
/// });
/// ```
///
/// Every chunk counts toward `max_response_bytes`. An error (opening or mid-stream)
/// fails the flight with [`Failure::Upstream`](crate::Failure::Upstream) after the
/// chunks already delivered; a panic fails it with
/// [`Failure::Panicked`](crate::Failure::Panicked). The stream is dropped as soon as
/// nobody waits for it any more ([rule 12](crate::contract#rule-12)) or a deadline expires.
pub trait Upstream<Q>: Send + Sync + 'static {
    /// The stream of chunks.
    type Stream: Stream<Item = Result<Bytes, Self::Error>> + Send + 'static;
    /// Why the upstream failed.
    type Error: Display;
    /// Opens the upstream stream for one prepared flight.
    fn open(&self, request: Q) -> impl Future<Output = Result<Self::Stream, Self::Error>> + Send;
}

impl<Q, F, Fut, S, E> Upstream<Q> for F
where
    F: Fn(Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S, E>> + Send,
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Display,
{
    type Stream = S;
    type Error = E;

    fn open(&self, request: Q) -> impl Future<Output = Result<S, E>> + Send {
        self(request)
    }
}

/// A boxed, sendable future, as runtimes spawn them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An upstream stream with its error already turned into text.
pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Opens the upstream for one prepared flight; holds the prepared value.
pub(crate) type Opener = Box<dyn FnOnce() -> BoxFuture<Result<ChunkStream, String>> + Send>;

/// Prepares one flight and returns how to open its upstream.
pub(crate) type PrepareFn<P> =
    Box<dyn Fn(P) -> BoxFuture<Result<(Prepared, Opener), String>> + Send + Sync>;

/// Erases the preparer's output type `Q`: it lives only inside the opener.
pub(crate) fn erase<P, Pr, U>(preparer: Pr, upstream: U) -> PrepareFn<P>
where
    P: Send + 'static,
    Pr: Preparer<P>,
    U: Upstream<Pr::Output>,
{
    let preparer = Arc::new(preparer);
    let upstream = Arc::new(upstream);
    Box::new(move |payload: P| {
        let preparer = Arc::clone(&preparer);
        let upstream = Arc::clone(&upstream);
        Box::pin(async move {
            let preparation = match preparer.prepare(payload).await {
                Ok(p) => p,
                Err(e) => return Err(e.to_string()),
            };
            let prepared = Prepared {
                cacheable: preparation.cacheable,
            };
            let request = preparation.request;
            let opener: Opener = Box::new(move || {
                Box::pin(async move {
                    let stream = match upstream.open(request).await {
                        Ok(s) => s,
                        Err(e) => return Err(e.to_string()),
                    };
                    let stream: ChunkStream =
                        Box::pin(stream.map(|chunk| chunk.map_err(|e| e.to_string())));
                    Ok(stream)
                })
            });
            Ok((prepared, opener))
        })
    })
}
