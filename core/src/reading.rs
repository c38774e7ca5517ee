//! Readers pull: each attached client reads its flight's log through its own
//! cursor ([rule 7](crate::contract#rule-7)).
//!
//! A slow reader blocks nobody and loses nothing, and a late one replays from the
//! first chunk through the same code. A reader that has read everything so far
//! is **parked** in its flight's tail and woken (once) by the next chunk or by the
//! end. After the end, the record keeps the final log and the outcome, and the
//! reader gets exactly one terminal item ([rule 19](crate::contract#rule-19)).

use crate::flights::Flights;
use crate::request::{Life, Reader, Request};
use crate::{Item, Readiness, RequestError, RequestId};

/// Reads everything available to `request`'s reader into `out`, parking it while
/// its request is live. See [`Machine::read`](crate::Machine::read).
pub(crate) fn read(
    request: RequestId,
    req: &mut Request,
    flights: &mut Flights,
    out: &mut Vec<Item>,
) -> Result<Readiness, RequestError> {
    let reader = req.reader.as_mut().ok_or(RequestError::NotAttached)?;
    match &req.life {
        Life::Live(fid) => {
            let Some(flight) = flights.get_mut(*fid) else {
                return Ok(Readiness::Pending);
            };
            // Either way the reader has everything so far: park it, so the
            // next chunk (or the end) wakes it without a second read.
            if !reader.parked {
                reader.parked = true;
                flight.tail_mut().parked.push(request);
            }
            let log = &flight.tail().log;
            let len = log.len();
            let from = reader.cursor.min(len);
            if from < len {
                if from + 1 == len {
                    // The usual case for a reader that keeps up: one new chunk.
                    out.push(Item::Chunk(log[from].clone()));
                } else {
                    out.extend(log[from..].iter().cloned().map(Item::Chunk));
                }
                reader.cursor = len;
                Ok(Readiness::Ready)
            } else {
                Ok(Readiness::Pending)
            }
        }
        Life::Ended(ending) => {
            if reader.finished {
                return Ok(Readiness::Closed);
            }
            if let Some(log) = &ending.log {
                let from = reader.cursor.min(log.len());
                out.extend(log[from..].iter().cloned().map(Item::Chunk));
                reader.cursor = log.len();
            }
            out.push(Item::End(ending.outcome.clone()));
            reader.finished = true;
            reader.parked = false;
            Ok(Readiness::Ready)
        }
    }
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
    use crate::ending::Ending;
    use crate::flights::Flights;
    use crate::request::{Life, Reader, Request};
    use crate::{FlightId, Item, Key, Outcome, Readiness, RequestError, RequestId, Time};

    const R: RequestId = RequestId::from_raw(0);

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
        let (mut flights, fid) = one_flight();
        let mut req = attached(Life::Live(fid));
        let mut out = Vec::new();
        assert_eq!(
            read(R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Pending)
        );
        assert_eq!(
            read(R, &mut req, &mut flights, &mut out),
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
            read(R, &mut req, &mut flights, &mut out),
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
        let (mut flights, _) = one_flight();
        let ending = Ending {
            outcome: Outcome::Completed,
            log: Some(Arc::new(vec![chunk("a"), chunk("b")])),
        };
        let mut req = attached(Life::Ended(Arc::new(ending)));
        req.reader.as_mut().unwrap().cursor = 1;
        let mut out = Vec::new();
        assert_eq!(
            read(R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Ready)
        );
        assert_eq!(
            out,
            [Item::Chunk(chunk("b")), Item::End(Outcome::Completed)]
        );
        out.clear();
        assert_eq!(
            read(R, &mut req, &mut flights, &mut out),
            Ok(Readiness::Closed)
        );
        assert!(out.is_empty());
        req.reader = None;
        assert_eq!(
            read(R, &mut req, &mut flights, &mut out),
            Err(RequestError::NotAttached)
        );
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
