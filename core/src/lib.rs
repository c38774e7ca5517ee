//! # flightdeck-core
//!
//! The sans-IO heart of flightdeck: a deterministic state machine that manages
//! streaming requests to an expensive backend (an LLM, typically). It decides
//! everything (which flight runs next, who joins which flight, when a slot is
//! freed, what a client reads next, when a record may be dropped) and does
//! nothing: no I/O, no clock, no threads, no async runtime.
//!
//! ## Why sans-IO
//! The Go system this replaces fought stuck writers, pre-emptive cleanup, a muted
//! messenger and zombie slots, each a race between goroutines. Here there are no
//! races inside the machine: inputs arrive one at a time, stamped with the time
//! they happened, and every consequence (slot released, abort emitted, next flight
//! started, readers woken) happens within that one input. That is what lets the
//! test harness explore every interleaving and replay any run exactly.
//!
//! ## Vocabulary
//! - a **request** is one client's submission, with a [`Key`];
//! - a **flight** is one unit of upstream work for one key: queue, preparation,
//!   upstream stream. Requests sharing a key while a flight is live are its
//!   members; none is special;
//! - a **reader** is the client attached to a request; it pulls [`Item`]s from
//!   its own cursor over the flight's log, so a slow reader blocks nobody and a
//!   late one replays from the first chunk.
//!
//! ## The driving loop
//! Feed inputs (`submit`, `attach`, `read`, `cancel`, `detach`, `handle_*`), and
//! after every input drain [`Machine::poll_action`] and carry each action out;
//! sleep until [`Machine::poll_timeout`] and call [`Machine::handle_timeout`].
//! The runtime adapters (`flightdeck-smol`, `flightdeck-tokio`) are exactly this
//! loop with real tasks and timers. Here it is with a pretend upstream that
//! answers every prompt with two chunks:
//!
//! ```
//! use bytes::Bytes;
//! use flightdeck_core::{Action, Config, Item, Machine, Outcome, Prepared, Route, Time};
//!
//! let mut machine = Machine::new(Config::default()).expect("the default config is valid");
//! let t = Time::from_millis(1);
//!
//! // Two clients ask the same question: one flight, two members.
//! let a = machine.submit(t, "what is rust?".into()).unwrap();
//! let b = machine.submit(t, "what is rust?".into()).unwrap();
//! assert!(matches!(b.route, Route::Joined(_)));
//! machine.attach(t, a.request).unwrap();
//!
//! // The driver loop: carry out every action until nothing is left to do.
//! let mut streams_started = 0;
//! while let Some(action) = machine.poll_action() {
//!     match action {
//!         Action::StartPreparation { flight, .. } => {
//!             // A real driver spawns the user's preparation and reports later.
//!             machine.handle_prepared(t, flight, Ok(Prepared::CACHEABLE)).unwrap();
//!         }
//!         Action::StartStream { flight } => {
//!             streams_started += 1;
//!             for token in ["Rust is ", "a language."] {
//!                 machine.handle_chunk(t, flight, Bytes::from_static(token.as_bytes())).unwrap();
//!             }
//!             machine.handle_upstream_end(t, flight, Ok(())).unwrap();
//!         }
//!         Action::Abort { .. } | Action::FlightEnded { .. } | Action::Wake { .. } => {}
//!         _ => {}
//!     }
//! }
//! assert_eq!(streams_started, 1);
//!
//! // The late joiner attaches after the fact and still reads everything.
//! machine.attach(t, b.request).unwrap();
//! let mut items = Vec::new();
//! machine.read(b.request, &mut items).unwrap();
//! assert_eq!(items, vec![
//!     Item::Chunk(Bytes::from_static(b"Rust is ")),
//!     Item::Chunk(Bytes::from_static(b"a language.")),
//!     Item::End(Outcome::Completed),
//! ]);
//!
//! // Nothing is polled: the driver sleeps exactly until the next deadline.
//! assert!(machine.poll_timeout().is_some());
//! ```
//!
//! ## Several machines
//! With [`Config::cluster`] set, machines on several gateway instances share
//! flights through a coordinator (Redis): the machine asks who runs a new key
//! ([`Action::Claim`]) and takes the answer as an input. See [`cluster`].
//!
//! ## Determinism
//! Ids are sequential and every map the machine iterates is ordered. The one hash
//! map, the index that finds a key's flight or cache entry, is only ever looked
//! up; its seed is random (so that no key can be chosen to crowd it), and nothing
//! the machine outputs depends on it. [`Input`] and [`Action`] are serde types: a
//! run recorded as `(Time, Input)` pairs replays exactly through
//! [`Machine::handle`].

#![forbid(unsafe_code)]

mod action;
mod cache;
pub mod cluster;
mod config;
pub mod contract;
mod deadline;
#[cfg(feature = "driver")]
pub mod driver;
mod ending;
mod error;
mod flight;
mod flights;
mod id;
mod idmap;
mod input;
mod key;
mod live;
mod machine;
mod outcome;
mod queue;
mod reading;
mod records;
mod remote;
mod request;
mod slots;
mod stats;
mod status;
#[cfg(test)]
mod testing;
mod time;

pub use action::Action;
pub use cluster::Role;
pub use config::{Config, ConfigError};
pub use error::{RequestError, StaleFlight, SubmitError};
pub use id::{FlightId, RequestId};
pub use input::{Input, Reply};
pub use key::Key;
pub use machine::{Borrowed, InvariantViolation, Machine};
pub use outcome::{Failure, Item, Outcome, Phase, Prepared, Work};
pub use stats::{Stats, Totals};
pub use status::{Readiness, RequestState, RequestStatus, Route, Submission};
pub use time::Time;

/// Re-exported so users name chunk data without adding the dependency themselves.
pub use bytes::Bytes;
