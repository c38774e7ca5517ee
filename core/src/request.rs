//! A request record and its reader.
//!
//! A record is live while its request belongs to a flight, and ended afterwards.
//! An ended record keeps what its client still needs to read: the chunks it has
//! not read yet (by sharing the flight's final log) and the outcome. It is removed
//! when its client detaches, or, if no client is attached, when its retention
//! deadline passes. That is the whole cleanup story: no janitor, no conditions.

use std::sync::Arc;

use crate::ending::Ending;
use crate::{FlightId, Time};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Life {
    /// A member of this flight.
    Live(FlightId),
    /// Ended. Shared by every member a flight ended with, and by the cache.
    Ended(Arc<Ending>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Reader {
    /// Index of the next chunk to hand out.
    pub(crate) cursor: usize,
    /// It read and found nothing; it is owed a wake.
    pub(crate) parked: bool,
    /// It has read the terminal item.
    pub(crate) finished: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Request {
    pub(crate) life: Life,
    pub(crate) reader: Option<Reader>,
    /// The attach deadline (live, no reader) or the retention deadline (ended, no reader).
    pub(crate) deadline: Option<Time>,
}
