//! Two inputs for drivers that move many chunks, each exactly equivalent to a
//! sequence of the one-chunk inputs, only cheaper:
//!
//! - [`Machine::handle_chunks`]: the chunks an upstream had ready at once, in one
//!   input (one phase check, one lookup, one deadline move, one round of wakes),
//!   the same as [`Machine::handle_chunk`] for each in order;
//! - [`Machine::read_borrowed`]: a read that lends the new chunks instead of
//!   cloning each into an owned [`Item`](crate::Item), the same state change as
//!   [`Machine::read`] (both go through one function of the reading sub-state).

use bytes::Bytes;

use super::Machine;
use crate::deadline::Timer;
use crate::flight::FlightPhase;
use crate::reading;
use crate::{
    Action, Failure, FlightId, Outcome, Readiness, RequestError, RequestId, StaleFlight, Time,
};

/// What [`Machine::read_borrowed`] found: the new chunks, lent, and the outcome
/// if this read is the terminal one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Borrowed<'a> {
    /// As [`Machine::read`] would report it.
    pub readiness: Readiness,
    /// The chunks [`Machine::read`] would have appended, in order.
    pub chunks: &'a [Bytes],
    /// The terminal item's outcome, when [`Machine::read`] would have appended
    /// [`Item::End`](crate::Item::End) after the chunks.
    pub end: Option<&'a Outcome>,
}

impl Machine {
    /// The upstream of `flight` produced several chunks at once: the same as
    /// [`Machine::handle_chunk`] for each of them in order (rules
    /// [7](crate::contract#rule-7), [16](crate::contract#rule-16),
    /// [22](crate::contract#rule-22)), in one input. In cluster mode an owner
    /// also emits the accepted chunks as one [`Action::Publish`]
    /// ([rule 26](crate::contract#rule-26)). Returns how many chunks were
    /// appended to the log; if one takes the response past `max_response_bytes`,
    /// the flight fails with it and the chunks after it are ignored, as they
    /// would be one by one.
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not streaming (nor, in cluster mode,
    /// following: a follower's chunks are its owner's log,
    /// [rule 27](crate::contract#rule-27)); every chunk is ignored
    /// ([rule 16](crate::contract#rule-16)).
    pub fn handle_chunks(
        &mut self,
        now: Time,
        flight: FlightId,
        chunks: impl IntoIterator<Item = Bytes>,
    ) -> Result<usize, StaleFlight> {
        // A follower's chunks come from the owner's log (contract rule 27).
        self.expect_phase(flight, |p| {
            matches!(
                p,
                FlightPhase::Streaming { .. } | FlightPhase::Following { .. }
            )
        })?;
        let mut chunks = chunks.into_iter().peekable();
        if chunks.peek().is_none() {
            return Ok(0);
        }
        let now = self.advance(now);
        let limit = self.config.max_response_bytes;
        let idle = self.config.idle_timeout;
        let Some(f) = self.flights.get_mut(flight) else {
            return Err(StaleFlight);
        };
        let tail = f.tail_mut();
        let before = tail.log.len();
        // Past the limit the rest is ignored, as one by one after the failure.
        let (accepted, too_large) = tail.append(chunks, limit);
        if accepted > 0 {
            if self.config.cluster && self.remote.is_owner(flight) {
                // Contract rule 26: the owner publishes what it accepted, in order.
                let chunks = tail.log[before..].to_vec();
                self.actions.push_back(Action::Publish { flight, chunks });
            }
            for id in tail.parked.drain(..) {
                self.records.wake(&mut self.actions, id, flight);
            }
            if let FlightPhase::Streaming { ends_by, .. } | FlightPhase::Following { ends_by } =
                f.phase
            {
                self.deadlines.move_to(
                    &mut f.deadline,
                    ends_by.min(now + idle),
                    Timer::Flight(flight),
                );
            }
        }
        if too_large {
            let failure = Failure::ResponseTooLarge { limit };
            self.end_flight(now, flight, &Outcome::Failed(failure), true);
            self.pump(now);
        }
        Ok(accepted)
    }

    /// [`Machine::read`] without the copies: the same state change (the cursor
    /// moves past what is returned, a live request's reader is parked, the
    /// terminal read finishes the reader and starts the record's retention), but
    /// the new chunks are lent out of the log instead of cloned into owned items.
    /// A driver copies what it needs while it holds the machine; a reader that
    /// only looks at the bytes costs no reference count.
    ///
    /// # Errors
    /// [`RequestError::NotFound`] or [`RequestError::NotAttached`]; nothing changes.
    pub fn read_borrowed(&mut self, request: RequestId) -> Result<Borrowed<'_>, RequestError> {
        let req = self
            .records
            .get_mut(request)
            .ok_or(RequestError::NotFound)?;
        let clock = (&mut self.deadlines, &self.config, self.now);
        let lent = reading::lend(clock, request, req, &mut self.flights)?;
        Ok(Borrowed {
            readiness: lent.readiness,
            chunks: lent.chunks,
            end: lent.end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Item, Prepared};

    /// A machine with one streaming flight of `readers` attached members.
    fn streaming(config: Config, readers: usize) -> (Machine, FlightId, Vec<RequestId>) {
        let mut m = Machine::new(config).expect("valid config");
        let t = Time::from_millis(1);
        let ids: Vec<RequestId> = (0..readers)
            .map(|_| {
                let s = m.submit(t, "k".into()).expect("submit");
                m.attach(t, s.request).expect("attach");
                s.request
            })
            .collect();
        let mut flight = None;
        while let Some(a) = m.poll_action() {
            match a {
                Action::StartPreparation { flight: f, .. } => {
                    m.handle_prepared(t, f, Ok(Prepared::CACHEABLE))
                        .expect("prepared");
                }
                Action::StartStream { flight: f } => flight = Some(f),
                _ => {}
            }
        }
        (m, flight.expect("streaming"), ids)
    }

    fn chunk(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    fn actions(m: &mut Machine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    /// `handle_chunks` leaves the machine, its actions and its result exactly as
    /// `handle_chunk` one by one does: within the limit, across it, on a stale
    /// flight, with parked readers, at a later time.
    #[test]
    fn handle_chunks_equals_handle_chunk_one_by_one() {
        let config = Config {
            max_response_bytes: 100,
            ..Config::default()
        };
        let batches: [&[usize]; 5] = [&[], &[10], &[10, 20, 30], &[40, 50, 10], &[60, 1, 1]];
        for batch in batches {
            for parked in [false, true] {
                let (mut a, flight, ids) = streaming(config.clone(), 2);
                if parked {
                    for id in &ids {
                        let _ = a.read(*id, &mut Vec::new());
                    }
                }
                a.handle_chunk(Time::from_millis(2), flight, chunk(5))
                    .expect("streaming");
                let _ = actions(&mut a);
                let mut b = a.clone();
                let chunks: Vec<Bytes> = batch.iter().map(|n| chunk(*n)).collect();
                let now = Time::from_millis(3);
                let one_by_one: Vec<_> = chunks
                    .iter()
                    .map(|c| a.handle_chunk(now, flight, c.clone()))
                    .collect();
                let batched = b.handle_chunks(now, flight, chunks.clone());
                assert_eq!(actions(&mut a), actions(&mut b), "{batch:?}");
                assert_eq!(a, b, "{batch:?} parked {parked}");
                let accepted = batch
                    .iter()
                    .scan(5, |sum, n| {
                        *sum += n;
                        Some(*sum <= 100)
                    })
                    .take_while(|fits| *fits)
                    .count();
                assert_eq!(batched, Ok(accepted), "{batch:?}");
                assert!(one_by_one.iter().all(Result::is_ok) || accepted < batch.len());
                // Stale now or still streaming: both agree on the next batch too.
                let more = [chunk(1)];
                assert_eq!(
                    a.handle_chunk(now, flight, more[0].clone()).map(|()| 1),
                    b.handle_chunks(now, flight, more.clone())
                );
                assert_eq!(a, b);
                a.check_invariants().expect("invariants");
            }
        }
    }

    /// `read_borrowed` changes the machine exactly as `read` does and lends what
    /// `read` copies, through a flight's life: nothing yet, one chunk, several,
    /// the end with chunks left, after the end.
    #[test]
    fn read_borrowed_equals_read() {
        let (mut a, flight, ids) = streaming(Config::default(), 2);
        let (r, late) = (ids[0], ids[1]);
        let compare = |a: &mut Machine, request: RequestId| {
            let mut b = a.clone();
            let mut items = Vec::new();
            let read = a.read(request, &mut items);
            let borrowed = b.read_borrowed(request).map(|lent| {
                let mut copied: Vec<Item> = lent.chunks.iter().cloned().map(Item::Chunk).collect();
                copied.extend(lent.end.cloned().map(Item::End));
                (lent.readiness, copied)
            });
            assert_eq!(read.map(|readiness| (readiness, items)), borrowed);
            assert_eq!(*a, b);
        };
        let t = Time::from_millis(2);
        compare(&mut a, r);
        a.handle_chunk(t, flight, chunk(1)).expect("streaming");
        compare(&mut a, r);
        compare(&mut a, r);
        for n in 2..5 {
            a.handle_chunk(t, flight, chunk(n)).expect("streaming");
        }
        compare(&mut a, r);
        a.handle_chunk(t, flight, chunk(7)).expect("streaming");
        a.handle_upstream_end(t, flight, Ok(())).expect("streaming");
        compare(&mut a, r);
        compare(&mut a, r);
        compare(&mut a, late);
        compare(&mut a, RequestId::from_raw(99));
        a.check_invariants().expect("invariants");
    }
}
