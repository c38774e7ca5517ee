//! Inputs from the user's work (a preparation ended, a chunk arrived, the
//! upstream ended), and the two steps every ending goes through: a member leaving
//! its flight, and a flight ending. Then the scheduler that hands freed slots on.

use std::sync::Arc;

use bytes::Bytes;

use super::Machine;
use crate::deadline::Timer;
use crate::ending::Ending;
use crate::flight::FlightPhase;
use crate::request::Life;
use crate::{Action, Failure, FlightId, Outcome, Prepared, RequestId, StaleFlight, Time, Work};

impl Machine {
    /// The preparation of `flight` finished. On success the flight waits for a
    /// stream slot (and for a client, [rule 6](crate::contract#rule-6)) and its
    /// preparation slot is released in this step ([rule 5](crate::contract#rule-5));
    /// on failure every member ends failed ([rule 20](crate::contract#rule-20)).
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not preparing (it was aborted or ended):
    /// the input is ignored ([rule 16](crate::contract#rule-16)).
    pub fn handle_prepared(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<Prepared, Failure>,
    ) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Preparing))?;
        let now = self.advance(now);
        match result {
            Ok(prepared) => {
                let until = now + self.config.stream_slot_timeout;
                if let Some(f) = self.flights.get_mut(flight) {
                    let seq = self.slots.prepared();
                    f.phase = FlightPhase::Prepared {
                        cacheable: prepared.cacheable,
                        seq,
                    };
                    self.deadlines
                        .move_to(&mut f.deadline, until, Timer::Flight(flight));
                    if f.attached > 0 {
                        self.slots.enlist(seq, flight);
                    }
                }
            }
            Err(failure) => self.end_flight(now, flight, &Outcome::Failed(failure), false),
        }
        self.pump(now);
        Ok(())
    }

    /// The upstream of `flight` produced a chunk. It is appended to the flight's
    /// log once; every reader reads it from there ([rule 7](crate::contract#rule-7)).
    /// A chunk that takes the response past `max_response_bytes` fails the flight
    /// instead ([rule 22](crate::contract#rule-22)).
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not streaming (or following); the chunk is ignored
    /// ([rule 16](crate::contract#rule-16)).
    pub fn handle_chunk(
        &mut self,
        now: Time,
        flight: FlightId,
        data: Bytes,
    ) -> Result<(), StaleFlight> {
        // One code path for one chunk and for a batch (machine/batch.rs).
        self.handle_chunks(now, flight, [data]).map(|_| ())
    }

    /// The upstream of `flight` ended. On success every member ends completed and
    /// the result is cached unless the preparation marked it uncacheable
    /// ([rule 8](crate::contract#rule-8)); on failure every member ends failed
    /// after the chunks already in the log and nothing is cached
    /// ([rule 20](crate::contract#rule-20)). The stream slot goes to the next
    /// waiter in this step.
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not streaming; the input is ignored
    /// ([rule 16](crate::contract#rule-16)).
    pub fn handle_upstream_end(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<(), Failure>,
    ) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Streaming { .. }))?;
        let now = self.advance(now);
        let outcome = match result {
            Ok(()) => Outcome::Completed,
            Err(failure) => Outcome::Failed(failure),
        };
        self.end_flight(now, flight, &outcome, false);
        self.pump(now);
        Ok(())
    }

    pub(super) fn expect_phase(
        &self,
        flight: FlightId,
        phase: impl Fn(&FlightPhase) -> bool,
    ) -> Result<(), StaleFlight> {
        match self.flights.get(flight) {
            Some(f) if phase(&f.phase) => Ok(()),
            _ => Err(StaleFlight),
        }
    }

    /// Hands free slots to waiters: queued flights to preparation slots, then
    /// attached prepared flights to stream slots, both FIFO
    /// (rules [4](crate::contract#rule-4)-[6](crate::contract#rule-6)). Every
    /// input that changes the deadline set ends here, so this is also where the
    /// earliest deadline is settled (`settle_deadlines`).
    pub(super) fn pump(&mut self, now: Time) {
        while self.slots.preparing() < self.config.max_concurrent_requests {
            let Some(fid) = self.queue.pop() else {
                break;
            };
            let Some(f) = self.flights.get_mut(fid) else {
                continue;
            };
            f.phase = FlightPhase::Preparing;
            let until = now + self.config.preparation_timeout;
            // The queue deadline was implied, not armed.
            self.deadlines
                .arm_new(&mut f.deadline, until, Timer::Flight(fid));
            self.slots.start_preparation();
            self.totals.preparations_started += 1;
            self.actions.push_back(Action::StartPreparation {
                flight: fid,
                key: f.key.clone(),
            });
        }
        while self.slots.streaming() < self.config.max_concurrent_streams {
            let Some(fid) = self.slots.next_ready() else {
                break;
            };
            let Some(f) = self.flights.get_mut(fid) else {
                continue;
            };
            let FlightPhase::Prepared { cacheable, .. } = f.phase else {
                continue;
            };
            let ends_by = now + self.config.stream_timeout;
            f.phase = FlightPhase::Streaming { cacheable, ends_by };
            let until = ends_by.min(now + self.config.idle_timeout);
            self.deadlines
                .move_to(&mut f.deadline, until, Timer::Flight(fid));
            self.slots.start_stream();
            self.totals.streams_started += 1;
            self.actions.push_back(Action::StartStream { flight: fid });
        }
        self.settle_deadlines();
    }

    /// One live member leaves its flight with `outcome` (cancel, detach, attach
    /// timeout). If it was the last member, the flight ends now
    /// (rules [10](crate::contract#rule-10)-[12](crate::contract#rule-12)).
    pub(super) fn end_member(&mut self, now: Time, request: RequestId, outcome: Outcome) {
        let Some(req) = self.records.get(request) else {
            return;
        };
        let Life::Live(fid) = req.life else {
            return;
        };
        let attached = req.reader.is_some();
        self.finish(now, request, Ending::without_log(outcome));
        let Some(f) = self.flights.get_mut(fid) else {
            return;
        };
        f.members.remove(request);
        if attached {
            f.attached -= 1;
            if f.attached == 0 {
                if let FlightPhase::Prepared { seq, .. } = f.phase {
                    self.slots.delist(seq, fid);
                }
            }
        }
        if f.members.is_empty() {
            // Nobody waits for this work any more: abort it and free its slot now.
            self.end_flight(now, fid, &Outcome::Cancelled, true);
        }
    }

    /// Ends a flight: releases whatever it holds, aborts running work if `abort`,
    /// ends every member with `outcome`, caches a completed cacheable log,
    /// releases a cluster owner's lease ([`Action::Release`]), and emits
    /// [`Action::FlightEnded`]. The caller pumps afterwards.
    pub(super) fn end_flight(
        &mut self,
        now: Time,
        flight: FlightId,
        outcome: &Outcome,
        abort: bool,
    ) {
        let Some(mut f) = self.flights.remove(flight) else {
            return;
        };
        if f.phase == FlightPhase::Queued {
            self.queue.remove(flight);
        } else {
            // (Already gone if it is the deadline that expired.)
            self.deadlines.remove(f.deadline, Timer::Flight(flight));
        }
        self.slots.release(flight, f.phase);
        let (work, cacheable) = match f.phase {
            FlightPhase::Queued | FlightPhase::Prepared { .. } | FlightPhase::Claiming => {
                (None, false)
            }
            FlightPhase::Preparing => (Some(Work::Preparation), false),
            FlightPhase::Streaming { cacheable, .. } => (Some(Work::Stream), cacheable),
            // A follower's result is not cached here: the cluster's cache is the
            // shared one (see `crate::cluster`). Its abort stops the following.
            FlightPhase::Following { .. } => (Some(Work::Stream), false),
        };
        let owner = self.config.cluster && self.remote.end(flight, f.phase);
        if let Some(work) = work.filter(|_| abort) {
            self.actions.push_back(Action::Abort { flight, work });
        }
        let ending = Ending::after(outcome, f.take_log());
        if *outcome == Outcome::Completed && cacheable {
            let until = now + self.config.cache_ttl;
            let capacity = self.config.cache_capacity;
            self.cache.insert(
                &mut self.deadlines,
                capacity,
                f.key.clone(),
                Arc::clone(&ending),
                until,
            );
        }
        for member in f.members.iter() {
            self.finish(now, member, Arc::clone(&ending));
        }
        if owner {
            // Contract rule 26: the owner's end goes to the shared log, last.
            self.actions.push_back(Action::Release {
                flight,
                outcome: outcome.clone(),
                cacheable: *outcome == Outcome::Completed && cacheable,
            });
        }
        self.actions.push_back(Action::FlightEnded { flight });
    }

    /// Marks a live request ended ([`Records::finish`](crate::records::Records::finish))
    /// and counts its outcome in the totals.
    fn finish(&mut self, now: Time, request: RequestId, ending: Arc<Ending>) {
        let outcome = match ending.outcome {
            Outcome::Completed => &mut self.totals.completed,
            Outcome::Cancelled => &mut self.totals.cancelled,
            Outcome::Failed(_) => &mut self.totals.failed,
            Outcome::TimedOut(_) => &mut self.totals.timed_out,
        };
        let ended = self.records.finish(
            &mut self.deadlines,
            &mut self.actions,
            &self.config,
            now,
            request,
            ending,
        );
        if ended {
            *outcome += 1;
        }
    }
}
