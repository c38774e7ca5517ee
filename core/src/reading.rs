//! Readers pull: each attached client reads its flight's log through its own
//! cursor ([rule 7](crate::contract#rule-7)).
//!
//! A slow reader blocks nobody and loses nothing, and a late one replays from the
//! first chunk through the same code. A reader that has read everything so far
//! is **parked** in its flight's tail and woken (once) by the next chunk or by the
//! end. After the end, the record keeps the final log and the outcome, and the
//! reader gets exactly one terminal item ([rule 19](crate::contract#rule-19)).
//!
//! Once the reader has taken its terminal item the record has nothing left to
//! give but that fact, so it is kept for its retention only, exactly like an
//! ended record nobody attached to ([rule 21](crate::contract#rule-21)): a client
//! that holds on to its finished stream object does not hold the record forever.

use bytes::Bytes;

use crate::deadline::{Deadlines, Timer};
use crate::flight::Tail;
use crate::flights::Flights;
use crate::request::{Life, Reader, Request};
use crate::{Config, FlightId, Item, Outcome, Readiness, RequestError, RequestId, Time};

/// What a read needs besides the record: the deadline set, the configuration
/// and the time, to start the record's retention on the terminal read.
pub(crate) type Clock<'c> = (&'c mut Deadlines, &'c Config, Time);

/// What one read hands out, lent from the log it reads: the new chunks, and the
/// outcome if this read is the terminal one. A read that copies ([`read`]), one
/// that lends (a driver's) and one delivered in place of a wake
/// ([`lend_woken`]) all go through [`lend`], so they cannot differ in what they
/// do to the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lent<'a> {
    pub(crate) readiness: Readiness,
    pub(crate) chunks: &'a [Bytes],
    pub(crate) end: Option<&'a Outcome>,
}

const PENDING: Lent<'static> = Lent {
    readiness: Readiness::Pending,
    chunks: &[],
    end: None,
};

/// Moves `request`'s reader past everything available and lends it: parks the
/// reader while its request is live, finishes it on the terminal read and starts
/// the record's retention at `now`. See [`Machine::read`](crate::Machine::read).
///
/// Inlined into its callers: it runs once per reader per chunk, and as a
/// call its prologue, epilogue and returned struct were a third of its cost.
#[inline]
pub(crate) fn lend<'a>(
    (deadlines, config, now): Clock<'_>,
    request: RequestId,
    req: &'a mut Request,
    flights: &'a mut Flights,
) -> Result<Lent<'a>, RequestError> {
    let Request {
        life,
        reader,
        deadline,
    } = req;
    let reader = reader.as_mut().ok_or(RequestError::NotAttached)?;
    match life {
        Life::Live(fid) => {
            let Some(flight) = flights.get_mut(*fid) else {
                return Ok(PENDING);
            };
            Ok(lend_live(request, reader, flight.tail_mut()))
        }
        Life::Ended(ending) => {
            if reader.finished {
                return Ok(Lent {
                    readiness: Readiness::Closed,
                    ..PENDING
                });
            }
            let chunks = match &ending.log {
                Some(log) => {
                    let from = reader.cursor.min(log.len());
                    reader.cursor = log.len();
                    &log[from..]
                }
                None => &[],
            };
            reader.finished = true;
            reader.parked = false;
            let until = now + config.retention(&ending.outcome);
            deadlines.arm(deadline, until, Timer::Request(request));
            Ok(Lent {
                readiness: Readiness::Ready,
                chunks,
                end: Some(&ending.outcome),
            })
        }
    }
}

/// [`lend`] of a live request's reader, given its flight's tail.
#[inline]
fn lend_live<'a>(request: RequestId, reader: &mut Reader, tail: &'a mut Tail) -> Lent<'a> {
    // Either way the reader has everything so far: park it, so the next chunk
    // (or the end) wakes it without a second read.
    if !reader.parked {
        reader.parked = true;
        tail.parked.push(request);
    }
    let log = &tail.log;
    let from = reader.cursor.min(log.len());
    if from == log.len() {
        return PENDING;
    }
    reader.cursor = log.len();
    Lent {
        readiness: Readiness::Ready,
        chunks: &log[from..],
        end: None,
    }
}

/// The read of a reader that a chunk of `flight` is delivered to in place of a
/// wake ([`Machine::handle_chunks_delivering`](crate::Machine::handle_chunks_delivering)),
/// given the flight's tail: `None` unless a wake would have woken it (it is
/// live on `flight` and parked, the condition of `Records::wake`), else
/// exactly what [`lend`] would lend it after that wake.
///
/// A wake takes the reader out of the flight's parked list and the read puts
/// it back (the readers woken by one append are re-parked in wake order). Here
/// the reader is never unparked, so the read finds it parked and parks nothing:
/// the caller keeps it in the parked list where it was, and drops the readers
/// for which this returns `None`, as the wakes would have. The cursor moves,
/// and the chunks are lent, by the same function as in every live read; a live
/// read touches neither the deadlines nor the time, so none are needed.
#[inline]
pub(crate) fn lend_woken<'a>(
    request: RequestId,
    req: &mut Request,
    flight: FlightId,
    tail: &'a mut Tail,
) -> Option<Lent<'a>> {
    if !matches!(req.life, Life::Live(f) if f == flight) {
        return None;
    }
    let reader = req.reader.as_mut().filter(|r| r.parked)?;
    Some(lend_live(request, reader, tail))
}

/// [`lend`], with the chunks and the end copied into `out` as items (a chunk
/// copy shares its bytes).
pub(crate) fn read(
    clock: Clock<'_>,
    request: RequestId,
    req: &mut Request,
    flights: &mut Flights,
    out: &mut Vec<Item>,
) -> Result<Readiness, RequestError> {
    let lent = lend(clock, request, req, flights)?;
    if let [one] = lent.chunks {
        // The usual case for a reader that keeps up: one new chunk.
        out.push(Item::Chunk(one.clone()));
    } else {
        out.extend(lent.chunks.iter().cloned().map(Item::Chunk));
    }
    if let Some(outcome) = lent.end {
        out.push(Item::End(outcome.clone()));
    }
    Ok(lent.readiness)
}

/// The reader's invariants: its cursor is within the log it reads
/// ([invariant 4](crate::contract#invariant-4)); while its request is live it has
/// not finished, and if parked its flight will wake it; once ended it is never
/// left parked (nothing would wake it).
pub(crate) fn check(
    id: RequestId,
    reader: &Reader,
    life: &Life,
    flights: &Flights,
) -> Result<(), String> {
    match life {
        Life::Live(fid) => {
            let Some(f) = flights.get(*fid) else {
                return Ok(()); // the record's own check reports the missing flight
            };
            if reader.cursor > f.tail().log.len() {
                return Err(format!("{id} cursor past the log"));
            }
            if reader.finished {
                return Err(format!("{id} finished while live"));
            }
            if reader.parked && !f.tail().parked.contains(&id) {
                return Err(format!("{id} parked but its flight will not wake it"));
            }
        }
        Life::Ended(ending) => {
            if let Some(log) = &ending.log {
                if reader.cursor > log.len() {
                    return Err(format!("{id} cursor past the log"));
                }
            }
            if reader.parked {
                return Err(format!("{id} ended but its reader waits unwoken"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::{check, read};
    use crate::deadline::{Deadlines, Timer};
    use crate::ending::Ending;
    use crate::flights::Flights;
    use crate::request::{Life, Reader, Request};
    use crate::{Config, FlightId, Item, Key, Outcome, Readiness, RequestError, RequestId, Time};

    const R: RequestId = RequestId::from_raw(0);
    const NOW: Time = Time::from_millis(3);

    fn chunk(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn attached(life: Life) -> Request {
        Request {
            life,
            reader: Some(Reader {
                cursor: 0,
                parked: false,
                finished: false,
            }),
            deadline: None,
        }
    }

    fn one_flight() -> (Flights, FlightId) {
        let mut flights = Flights::default();
        let id = flights.create(Key::from("k"), Time::ZERO);
        flights.get_mut(id).unwrap().members.insert(R);
        (flights, id)
    }

    #[test]
    fn a_live_reader_reads_what_is_there_and_parks_once() {
        let (mut d, c) = (Deadlines::default(), Config::default());
        let (mut flights, fid) = one_flight();
        let mut req = attached(Life::Live(fid));
        let mut out = Vec::new();
        assert_eq!(
            read((&mut d, &c, NOW), R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Pending)
        );
        assert_eq!(
            read((&mut d, &c, NOW), R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Pending)
        );
        assert_eq!(
            flights.get(fid).unwrap().tail().parked,
            [R],
            "parked once, not twice"
        );
        assert!(out.is_empty());
        flights
            .get_mut(fid)
            .unwrap()
            .tail_mut()
            .log
            .extend([chunk("a"), chunk("b")]);
        req.reader.as_mut().unwrap().parked = false; // as a wake does
        assert_eq!(
            read((&mut d, &c, NOW), R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Ready)
        );
        assert_eq!(out, [Item::Chunk(chunk("a")), Item::Chunk(chunk("b"))]);
        assert_eq!(req.reader.as_ref().unwrap().cursor, 2);
        assert!(req.reader.as_ref().unwrap().parked);
        assert_eq!(
            check(R, req.reader.as_ref().unwrap(), &req.life, &flights),
            Ok(())
        );
    }

    #[test]
    fn an_ended_reader_gets_the_rest_then_one_end_then_closed() {
        let (mut d, c) = (Deadlines::default(), Config::default());
        let (mut flights, _) = one_flight();
        let ending = Ending {
            outcome: Outcome::Completed,
            log: Some(Arc::new(vec![chunk("a"), chunk("b")])),
        };
        let mut req = attached(Life::Ended(Arc::new(ending)));
        req.reader.as_mut().unwrap().cursor = 1;
        let mut out = Vec::new();
        assert_eq!(
            read((&mut d, &c, NOW), R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Ready)
        );
        assert_eq!(
            out,
            [Item::Chunk(chunk("b")), Item::End(Outcome::Completed)]
        );
        // Having read its end, the record is only retained (contract rule 21).
        let until = NOW + c.finished_retention;
        assert_eq!(req.deadline, Some(until));
        assert!(d.contains(until, Timer::Request(R)) && d.len() == 1);
        out.clear();
        assert_eq!(
            read((&mut d, &c, NOW), R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Closed)
        );
        assert!(out.is_empty());
        assert_eq!(d.len(), 1, "a Closed read arms nothing more");
        req.reader = None;
        assert_eq!(
            read((&mut d, &c, NOW), R, &mut req, &mut flights, &mut out),
            Err(RequestError::NotAttached)
        );
    }

    /// A read that lends changes the state exactly as a read that copies, and
    /// lends what it copies: nothing yet, chunks, the end, after the end.
    #[test]
    fn lending_and_copying_reads_agree() {
        let (mut flights, fid) = one_flight();
        let mut req = attached(Life::Live(fid));
        let c = Config::default();
        let compare = |req: &mut Request, flights: &mut Flights| {
            let (mut req2, mut flights2) = (req.clone(), flights.clone());
            let (mut d, mut d2) = (Deadlines::default(), Deadlines::default());
            let mut items = Vec::new();
            let copied = read((&mut d, &c, NOW), R, req, flights, &mut items);
            let lent = super::lend((&mut d2, &c, NOW), R, &mut req2, &mut flights2).map(|lent| {
                let mut lent_items: Vec<Item> =
                    lent.chunks.iter().cloned().map(Item::Chunk).collect();
                lent_items.extend(lent.end.cloned().map(Item::End));
                (lent.readiness, lent_items)
            });
            assert_eq!(copied.map(|r| (r, items)), lent);
            assert_eq!((&*req, &*flights, &d), (&req2, &flights2, &d2));
        };
        compare(&mut req, &mut flights);
        flights
            .get_mut(fid)
            .unwrap()
            .tail_mut()
            .log
            .push(chunk("a"));
        compare(&mut req, &mut flights);
        let log = vec![chunk("a"), chunk("b"), chunk("c")];
        flights.get_mut(fid).unwrap().tail_mut().log = log.clone();
        compare(&mut req, &mut flights);
        req.life = Life::Ended(Arc::new(Ending {
            outcome: Outcome::Completed,
            log: Some(Arc::new(log)),
        }));
        compare(&mut req, &mut flights);
        compare(&mut req, &mut flights);
        req.reader = None;
        compare(&mut req, &mut flights);
    }

    #[test]
    fn check_fires_on_each_corruption() {
        let (mut flights, fid) = one_flight();
        flights
            .get_mut(fid)
            .unwrap()
            .tail_mut()
            .log
            .push(chunk("a"));
        let live = Life::Live(fid);
        let ok = Reader {
            cursor: 1,
            parked: false,
            finished: false,
        };
        assert_eq!(check(R, &ok, &live, &flights), Ok(()));
        let fails = |reader: Reader, life: &Life, needle: &str| {
            let err = check(R, &reader, life, &flights).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        fails(
            Reader {
                cursor: 2,
                ..ok.clone()
            },
            &live,
            "cursor past the log",
        );
        fails(
            Reader {
                finished: true,
                ..ok.clone()
            },
            &live,
            "finished while live",
        );
        fails(
            Reader {
                parked: true,
                ..ok.clone()
            },
            &live,
            "will not wake it",
        );

        let ended = Life::Ended(Arc::new(Ending {
            outcome: Outcome::Completed,
            log: Some(Arc::new(vec![chunk("a")])),
        }));
        assert_eq!(check(R, &ok, &ended, &flights), Ok(()));
        fails(
            Reader {
                cursor: 2,
                ..ok.clone()
            },
            &ended,
            "cursor past the log",
        );
        fails(
            Reader {
                parked: true,
                ..ok.clone()
            },
            &ended,
            "waits unwoken",
        );
        let cancelled = Life::Ended(Arc::new(Ending {
            outcome: Outcome::Cancelled,
            log: None,
        }));
        let far = Reader { cursor: 9, ..ok };
        assert_eq!(
            check(R, &far, &cancelled, &flights),
            Ok(()),
            "no log: any cursor"
        );
    }
}
