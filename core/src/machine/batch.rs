//! Inputs for drivers that move many chunks or serve many readers, each
//! exactly equivalent to a sequence of the one-chunk, one-read inputs, only
//! cheaper:
//!
//! - [`Machine::handle_chunks`]: the chunks an upstream had ready at once, in one
//!   input (one phase check, one lookup, one idle deadline, one round of wakes),
//!   the same as [`Machine::handle_chunk`] for each in order;
//! - [`Machine::read_borrowed`]: a read that lends the new chunks instead of
//!   cloning each into an owned [`Item`](crate::Item), the same state change as
//!   [`Machine::read`] (both go through one function of the reading sub-state);
//! - [`Machine::handle_chunks_delivering`]: [`Machine::handle_chunks`] followed
//!   by the [`Machine::read_borrowed`] of every reader it woke, with the reads'
//!   results handed to a closure instead of a [`Action::Wake`] per reader.
//!
//! The last one exists for fan-out (issue 10): with thousands of readers on one
//! flight, a chunk cost one queued `Wake`, one poll, one record lookup for the
//! wake and another for the read, and the reader left and re-entered its
//! flight's parked list. Delivered in place, a reader that keeps up stays
//! parked where it is and costs one lookup and a cursor move per chunk. The
//! equivalence is what keeps this safe: the machine ends in the same state,
//! emits the same other actions, and each reader is handed what its read would
//! have returned, through the same reading function.

use bytes::Bytes;

use super::Machine;
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
        self.append_chunks(now, flight, chunks, false)
            .map(|(accepted, _)| accepted)
    }

    /// [`Machine::handle_chunks`], then, for each reader it woke, in wake order,
    /// what that reader's [`Machine::read_borrowed`] would return, handed to
    /// `deliver` with the reader's id instead of an [`Action::Wake`].
    ///
    /// Exactly equivalent to a driver that calls [`Machine::handle_chunks`]
    /// and then, polling the actions, calls [`Machine::read_borrowed`] for every
    /// [`Action::Wake`] it emitted: the machine ends in the same state (a reader
    /// that keeps up stays parked with its cursor past the new chunks, to be
    /// delivered the next batch), the actions other than those wakes are queued
    /// as usual and in the same order ([`Action::Publish`] in cluster mode, the
    /// aborts and ends of a flight that a chunk takes past
    /// `max_response_bytes`, ...), and `deliver` sees what each read would
    /// have returned: usually [`Readiness::Ready`] and the new chunks. If the
    /// batch ended the flight (past `max_response_bytes`), a woken reader's
    /// delivery is its terminal read: the chunks it had not read and the
    /// outcome in [`Borrowed::end`], after which it is finished and its
    /// record's retention runs, as after [`Machine::read`]. Readers that were
    /// parked on other flights, or that a wake would not reach, are not
    /// delivered to. Actions queued before this call are left alone, their
    /// wakes included.
    ///
    /// `deliver` runs while the machine is borrowed: copy out what the reader
    /// needs (clone a chunk, that is a reference count) and signal it.
    ///
    /// # Errors
    /// As [`Machine::handle_chunks`]; nothing is delivered.
    pub fn handle_chunks_delivering(
        &mut self,
        now: Time,
        flight: FlightId,
        chunks: impl IntoIterator<Item = Bytes>,
        mut deliver: impl FnMut(RequestId, Borrowed<'_>),
    ) -> Result<usize, StaleFlight> {
        let mark = self.actions.len();
        let (accepted, kept_parked) = self.append_chunks(now, flight, chunks, true)?;
        if kept_parked {
            self.deliver_parked(flight, &mut deliver);
        } else {
            self.deliver_woken(mark, &mut deliver);
        }
        Ok(accepted)
    }

    /// [`Machine::handle_chunks`]. With `keep_parked`, a batch that appends
    /// and leaves the flight live wakes nobody: its readers stay in the parked
    /// list, for [`Machine::deliver_parked`]. Returns how many chunks were
    /// appended, and whether the readers were kept parked.
    fn append_chunks(
        &mut self,
        now: Time,
        flight: FlightId,
        chunks: impl IntoIterator<Item = Bytes>,
        keep_parked: bool,
    ) -> Result<(usize, bool), StaleFlight> {
        // A follower's chunks come from the owner's log (contract rule 27).
        self.expect_phase(flight, |p| {
            matches!(
                p,
                FlightPhase::Streaming { .. } | FlightPhase::Following { .. }
            )
        })?;
        let mut chunks = chunks.into_iter().peekable();
        if chunks.peek().is_none() {
            return Ok((0, false));
        }
        let now = self.advance(now);
        let limit = self.config.max_response_bytes;
        let idle = self.config.idle_timeout;
        let Some(f) = self.flights.get_mut(flight) else {
            return Err(StaleFlight);
        };
        // The lazy idle deadline: a chunk records it, its entry in the deadline
        // set stays (crate::deadline's module docs).
        let idle_until = match f.phase {
            FlightPhase::Streaming { ends_by, .. } | FlightPhase::Following { ends_by } => {
                ends_by.min(now + idle)
            }
            _ => f.deadline,
        };
        let tail = f.tail_mut();
        let before = tail.log.len();
        // Past the limit the rest is ignored, as one by one after the failure.
        let (accepted, too_large) = tail.append(chunks, limit);
        let kept_parked = keep_parked && accepted > 0 && !too_large;
        if accepted > 0 {
            if self.config.cluster && self.remote.is_owner(flight) {
                // Contract rule 26: the owner publishes what it accepted, in order.
                let chunks = tail.log[before..].to_vec();
                self.actions.push_back(Action::Publish { flight, chunks });
            }
            if !kept_parked {
                for id in tail.parked.drain(..) {
                    self.records.wake(&mut self.actions, id, flight);
                }
            }
            tail.idle_until = idle_until;
        }
        if too_large {
            let failure = Failure::ResponseTooLarge { limit };
            self.end_flight(now, flight, &Outcome::Failed(failure), true);
            self.pump(now);
        } else {
            self.settle_deadlines();
        }
        Ok((accepted, kept_parked))
    }

    /// The reads of the readers parked on `flight`, which [`Machine::append_chunks`]
    /// kept parked instead of waking, handed to `deliver` in wake order. Each
    /// goes through [`reading::lend_woken`]: a reader a wake would have woken
    /// stays in the parked list, in its place, as the wake and the read after
    /// it would have put it back; any other is dropped from the list, as the
    /// wakes would have dropped it.
    fn deliver_parked(
        &mut self,
        flight: FlightId,
        deliver: &mut impl FnMut(RequestId, Borrowed<'_>),
    ) {
        let Some(f) = self.flights.get_mut(flight) else {
            return;
        };
        let tail = f.tail_mut();
        // Taken out while its readers read: `lend_woken` parks nobody (each
        // reader it lends to is parked already), so the list is put back whole.
        let mut parked = std::mem::take(&mut tail.parked);
        let records = &mut self.records;
        parked.retain(|&id| {
            let lent = records
                .get_mut(id)
                .and_then(|req| reading::lend_woken(id, req, flight, tail));
            match lent {
                Some(lent) => {
                    deliver(id, Borrowed::from(lent));
                    true
                }
                None => false,
            }
        });
        debug_assert!(tail.parked.is_empty(), "a delivery parked a reader");
        tail.parked = parked;
    }

    /// The wakes queued since the actions' length was `mark`, taken out of the
    /// queue (the other actions keep their order) and answered as a driver
    /// would: [`Machine::read_borrowed`] for each, in order, handed to
    /// `deliver`. This is the path of a batch that ended its flight, where
    /// every woken reader reads its end.
    fn deliver_woken(&mut self, mark: usize, deliver: &mut impl FnMut(RequestId, Borrowed<'_>)) {
        if self.actions.len() <= mark {
            return;
        }
        let mut woken = Vec::new();
        for action in self.actions.split_off(mark) {
            match action {
                Action::Wake { request } => woken.push(request),
                other => self.actions.push_back(other),
            }
        }
        for id in woken {
            if let Ok(lent) = self.read_borrowed(id) {
                deliver(id, lent);
            }
        }
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
        reading::lend(clock, request, req, &mut self.flights).map(Borrowed::from)
    }
}

impl<'a> From<reading::Lent<'a>> for Borrowed<'a> {
    fn from(lent: reading::Lent<'a>) -> Self {
        Borrowed {
            readiness: lent.readiness,
            chunks: lent.chunks,
            end: lent.end,
        }
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

    /// A batch is handed to the parked readers in place: no `Wake`, the readers
    /// stay parked and get the next batch too; a reader that has not read yet
    /// (not parked) is left to read for itself. A batch past
    /// `max_response_bytes` delivers each parked reader its end.
    #[test]
    fn delivering_hands_chunks_over_without_wakes() {
        let config = Config {
            max_response_bytes: 10,
            ..Config::default()
        };
        let (mut m, flight, ids) = streaming(config, 3);
        let (r0, r1, lagging) = (ids[0], ids[1], ids[2]);
        for id in [r0, r1] {
            assert_eq!(
                m.read_borrowed(id).map(|b| b.readiness),
                Ok(Readiness::Pending)
            );
        }
        let t = Time::from_millis(2);
        let mut got = Vec::new();
        let mut record = |id: RequestId, lent: Borrowed<'_>| {
            got.push((id, lent.chunks.to_vec(), lent.end.cloned()));
        };
        assert_eq!(
            m.handle_chunks_delivering(t, flight, [chunk(1), chunk(2)], &mut record),
            Ok(2)
        );
        assert_eq!(
            m.handle_chunks_delivering(t, flight, [chunk(3)], &mut record),
            Ok(1)
        );
        assert!(actions(&mut m).is_empty(), "no wake");
        let failed = Outcome::Failed(Failure::ResponseTooLarge { limit: 10 });
        assert_eq!(
            m.handle_chunks_delivering(t, flight, [chunk(4), chunk(5)], &mut record),
            Ok(1)
        );
        assert!(actions(&mut m)
            .iter()
            .all(|a| !matches!(a, Action::Wake { .. })));
        let expected = |id| {
            [
                (id, vec![chunk(1), chunk(2)], None),
                (id, vec![chunk(3)], None),
                (id, vec![chunk(4)], Some(failed.clone())),
            ]
        };
        let [a0, a1, a2] = expected(r0);
        let [b0, b1, b2] = expected(r1);
        assert_eq!(got, [a0, b0, a1, b1, a2, b2]);
        let mut items = Vec::new();
        assert_eq!(m.read(r0, &mut items), Ok(Readiness::Closed));
        assert_eq!(m.read(lagging, &mut items), Ok(Readiness::Ready));
        assert_eq!(items.len(), 5, "four chunks and the end");
        m.check_invariants().expect("invariants");
    }

    /// What a driver saw: every delivery (a read after a wake, or a chunk
    /// handed over in place) per reader, in order, and every other action.
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        deliveries: Vec<(RequestId, Readiness, Vec<Item>)>,
        actions: Vec<Action>,
        flights: Vec<FlightId>,
        requests: Vec<RequestId>,
    }

    impl Seen {
        fn delivered(&mut self, id: RequestId, lent: Borrowed<'_>) {
            let mut items: Vec<Item> = lent.chunks.iter().cloned().map(Item::Chunk).collect();
            items.extend(lent.end.cloned().map(Item::End));
            self.deliveries.push((id, lent.readiness, items));
        }

        /// Drains `m` as a driver does: a `Wake` is answered with a read.
        fn drain(&mut self, m: &mut Machine) {
            while let Some(action) = m.poll_action() {
                match action {
                    Action::Wake { request } => {
                        if let Ok(lent) = m.read_borrowed(request) {
                            self.delivered(request, lent);
                        }
                    }
                    other => {
                        match &other {
                            Action::StartPreparation { flight, .. }
                            | Action::StartStream { flight }
                            | Action::Claim { flight, .. } => self.flights.push(*flight),
                            _ => {}
                        }
                        self.actions.push(other);
                    }
                }
            }
        }
    }

    /// Over random histories (local and cluster mode, readers that keep up,
    /// lag, detach and cancel, batches that cross `max_response_bytes`), a
    /// machine fed `handle_chunks_delivering` and one fed `handle_chunks` then
    /// a read per `Wake` end equal, emit the same other actions and hand each
    /// reader the same chunks and ends, step by step.
    #[test]
    fn delivering_equals_chunks_then_reads() {
        use crate::{Failure, Input, Role};
        use core::time::Duration;
        let mut rng = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let (mut delivered, mut ended_by_batch, mut published) = (0usize, 0usize, 0usize);
        for history in 0..450 {
            let ms = Duration::from_millis;
            let config = Config {
                queue_capacity: 4,
                max_concurrent_requests: 2,
                max_concurrent_streams: 2,
                max_response_bytes: 40 + next(200),
                queue_timeout: ms(200),
                stream_timeout: ms(400),
                idle_timeout: ms(60),
                attach_timeout: ms(100),
                cluster: history % 3 == 0,
                ..Config::default()
            };
            let mut a = Machine::new(config).expect("valid config");
            let mut b = a.clone();
            let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
            let mut t = Time::from_millis(1);
            for _ in 0..120 {
                t = t + ms(next(8));
                // Mostly recent requests and flights: old ones are long gone.
                let recent = |n: usize, r: u64| n - 1 - usize::try_from(r).unwrap() % n.min(6);
                let request = match next(1 << 16) {
                    _ if seen_a.requests.is_empty() => RequestId::from_raw(0),
                    r => seen_a.requests[recent(seen_a.requests.len(), r)],
                };
                let flight = match next(1 << 16) {
                    _ if seen_a.flights.is_empty() => FlightId::from_raw(0),
                    r => seen_a.flights[recent(seen_a.flights.len(), r)],
                };
                let input = match next(100) {
                    0..=11 => Input::Submit {
                        key: crate::Key::from(next(3)),
                    },
                    12..=23 => Input::Attach { request },
                    24..=33 => Input::Read { request },
                    34..=36 => Input::Cancel { request },
                    37..=39 => Input::Detach { request },
                    40..=47 => Input::Prepared {
                        flight,
                        result: match next(6) {
                            0 => Err(Failure::Preparation("no".into())),
                            1 => Ok(Prepared::UNCACHEABLE),
                            _ => Ok(Prepared::CACHEABLE),
                        },
                    },
                    48..=77 => {
                        let batch: Vec<Bytes> = (0..next(4))
                            .map(|_| chunk(1 + usize::try_from(next(16)).unwrap()))
                            .collect();
                        let got_a = a.handle_chunks(t, flight, batch.clone());
                        seen_a.drain(&mut a);
                        let before = seen_b.deliveries.len();
                        let got_b = b.handle_chunks_delivering(t, flight, batch, |id, lent| {
                            seen_b.delivered(id, lent);
                        });
                        delivered += seen_b.deliveries.len() - before;
                        ended_by_batch += seen_b.deliveries[before..]
                            .iter()
                            .filter(|(_, _, items)| matches!(items.last(), Some(Item::End(_))))
                            .count();
                        let before = seen_b.deliveries.len();
                        seen_b.drain(&mut b);
                        assert_eq!(seen_b.deliveries.len(), before, "no wake left to answer");
                        assert_eq!(got_a, got_b);
                        assert_eq!(a, b, "history {history}");
                        assert_eq!(seen_a, seen_b, "history {history}");
                        continue;
                    }
                    78..=84 => Input::UpstreamEnded {
                        flight,
                        result: if next(4) == 0 {
                            Err(Failure::Upstream("down".into()))
                        } else {
                            Ok(())
                        },
                    },
                    85..=90 => Input::Timeout,
                    91..=94 => Input::Claimed {
                        flight,
                        role: match next(5) {
                            0 | 1 => Role::Owner,
                            2 | 3 => Role::Follower,
                            _ => Role::Cached(vec![chunk(3)]),
                        },
                    },
                    95..=96 => Input::RemoteEnded {
                        flight,
                        outcome: Outcome::Completed,
                    },
                    97..=98 => Input::OwnerLost { flight },
                    _ => Input::Fenced {
                        flight,
                        reason: "lease".into(),
                    },
                };
                let reply = a.handle(t, input.clone());
                assert_eq!(reply, b.handle(t, input.clone()), "history {history}");
                if let (Input::Attach { request }, crate::Reply::Request(Ok(()))) = (&input, &reply)
                {
                    // A client that attaches reads at once, and so parks.
                    let read = Input::Read { request: *request };
                    assert_eq!(a.handle(t, read.clone()), b.handle(t, read));
                }
                if let crate::Reply::Submit(Ok(s)) = &reply {
                    seen_a.requests.push(s.request);
                    seen_b.requests.push(s.request);
                }
                seen_a.drain(&mut a);
                seen_b.drain(&mut b);
                assert_eq!(a, b, "history {history}");
                assert_eq!(seen_a, seen_b, "history {history}");
            }
            a.check_invariants().expect("invariants");
            b.check_invariants().expect("invariants");
            published += seen_b
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Publish { .. }))
                .count();
        }
        // The histories did reach both paths: chunks delivered in place to
        // parked readers, and batches that ended their flight.
        println!("{delivered} deliveries, {ended_by_batch} ends, {published} publishes");
        assert!(delivered > 1000, "{delivered} deliveries");
        assert!(ended_by_batch > 10, "{ended_by_batch} ends delivered");
        assert!(published > 10, "{published} publishes");
    }
}
