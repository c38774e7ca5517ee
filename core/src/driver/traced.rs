//! The machine as the manager's lock guards it: [`TracedMachine`], the
//! [`Machine`] with an optional trace [`Recorder`] (recorder.rs).
//!
//! Without a recorder each input method is one branch and the machine's own
//! method. With one, each input is applied, then recorded with its reply and
//! the actions it queued, encoded under the lock (which keeps the order).
//!
//! A batch of chunks is recorded as one [`Input::Chunk`] per chunk at the same
//! time: while recording, the batch is fed chunk by chunk, which
//! `Machine::handle_chunks` guarantees is the same (machine/batch.rs), so every
//! recorded step has its own reply and actions.
//!
//! Only `Deref` to the machine is offered, not `DerefMut`: a driver change that
//! feeds the machine a new kind of input does not compile until it is recorded
//! (a new input is one three-line method on top of [`TracedMachine::step`]).

use std::collections::VecDeque;
use std::ops::Deref;

use bytes::Bytes;
use serde::Serialize;

use super::recorder::{RecordError, Recorder, RecordingStatus};
use super::trace::{encode_header, encode_record, TraceHeader, VERSION};
use crate::{
    Action, Borrowed, Failure, FlightId, Input, Key, Machine, Outcome, Prepared, Reply,
    RequestError, RequestId, Role, StaleFlight, Submission, SubmitError, Time,
};

/// A step as [`TraceStep`](super::trace::TraceStep) serialises it, borrowing its parts (the same bytes).
#[derive(Serialize)]
struct StepRef<'a> {
    time: Time,
    input: &'a Input,
    reply: Option<&'a Reply>,
    actions: ActionsRef<'a>,
}

/// The actions an input queued: the tail of the pending queue.
struct ActionsRef<'a>(&'a VecDeque<Action>, usize);

impl Serialize for ActionsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.range(self.1..))
    }
}

/// The machine the manager's lock guards, with its optional recorder.
pub(crate) struct TracedMachine {
    machine: Machine,
    /// While recording, the actions each input queued are drained at once (to
    /// record them with it) and wait here for the dispatch. Always empty when
    /// not recording.
    pending: VecDeque<Action>,
    recorder: Option<Recorder>,
}

impl Deref for TracedMachine {
    type Target = Machine;

    fn deref(&self) -> &Machine {
        &self.machine
    }
}

impl TracedMachine {
    pub(crate) fn new(machine: Machine) -> Self {
        TracedMachine {
            machine,
            pending: VecDeque::new(),
            recorder: None,
        }
    }

    fn is_recording(&self) -> bool {
        matches!(&self.recorder, Some(r) if r.error.is_none())
    }

    /// `input()` if recording, so that a step's input is built only then.
    fn recording(&self, input: impl FnOnce() -> Input) -> Option<Input> {
        self.is_recording().then(input)
    }

    /// Records a step: its input, its reply and the actions it queued.
    fn record(&mut self, now: Time, input: &Input, reply: Option<&Reply>) {
        let Some(recorder) = &mut self.recorder else {
            return;
        };
        let first = self.pending.len();
        while let Some(action) = self.machine.poll_action() {
            self.pending.push_back(action);
        }
        let step = StepRef {
            time: now,
            input,
            reply,
            actions: ActionsRef(&self.pending, first),
        };
        recorder.push(|out| encode_record(&step, out));
    }

    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        match self.pending.pop_front() {
            Some(action) => Some(action),
            None => self.machine.poll_action(),
        }
    }

    /// Applies one input: without a recorder (`input` is `None`) only `apply`;
    /// with one, `apply`, then the step is recorded with its reply. Every
    /// input method is this; a new kind of input is three lines.
    fn step<T>(
        &mut self,
        now: Time,
        input: Option<Input>,
        apply: impl FnOnce(&mut Machine) -> T,
        reply: impl FnOnce(&T) -> Reply,
    ) -> T {
        let out = apply(&mut self.machine);
        if let Some(input) = input {
            self.record(now, &input, Some(&reply(&out)));
        }
        out
    }

    pub(crate) fn submit(&mut self, now: Time, key: Key) -> Result<Submission, SubmitError> {
        let input = self.recording(|| Input::Submit { key: key.clone() });
        let apply = |m: &mut Machine| m.submit(now, key);
        self.step(now, input, apply, |out| Reply::Submit(out.clone()))
    }

    pub(crate) fn attach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        let input = self.recording(|| Input::Attach { request });
        let apply = |m: &mut Machine| m.attach(now, request);
        self.step(now, input, apply, |out| Reply::Request(out.clone()))
    }

    pub(crate) fn cancel(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        let input = self.recording(|| Input::Cancel { request });
        let apply = |m: &mut Machine| m.cancel(now, request);
        self.step(now, input, apply, |out| Reply::Request(out.clone()))
    }

    pub(crate) fn detach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        let input = self.recording(|| Input::Detach { request });
        let apply = |m: &mut Machine| m.detach(now, request);
        self.step(now, input, apply, |out| Reply::Request(out.clone()))
    }

    /// A read carries no time; it is recorded at the machine's latest, and
    /// without its reply (its items are chunks the trace has already). It
    /// queues no action, so recording it before it is applied is the same.
    pub(crate) fn read_borrowed(
        &mut self,
        request: RequestId,
    ) -> Result<Borrowed<'_>, RequestError> {
        if let Some(input) = self.recording(|| Input::Read { request }) {
            self.record(self.machine.now(), &input, None);
        }
        self.machine.read_borrowed(request)
    }

    /// [`Machine::handle_chunks_delivering`]. Recorded as what it is
    /// equivalent to: the chunks (one by one, as [`TracedMachine::handle_chunks`]),
    /// then a read per woken reader; while recording, the readers are woken
    /// instead (`deliver` is not called) and the dispatch's reads record
    /// themselves.
    pub(crate) fn handle_chunks_delivering(
        &mut self,
        now: Time,
        flight: FlightId,
        chunks: impl IntoIterator<Item = Bytes>,
        deliver: impl FnMut(RequestId, Borrowed<'_>),
    ) -> Result<usize, StaleFlight> {
        if self.is_recording() {
            return self.handle_chunks(now, flight, chunks);
        }
        self.machine
            .handle_chunks_delivering(now, flight, chunks, deliver)
    }

    pub(crate) fn handle_prepared(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<Prepared, Failure>,
    ) -> Result<(), StaleFlight> {
        let input = self.recording(|| Input::Prepared {
            flight,
            result: result.clone(),
        });
        let apply = |m: &mut Machine| m.handle_prepared(now, flight, result);
        self.step(now, input, apply, |out| Reply::Flight(*out))
    }

    /// Recorded chunk by chunk (see the module docs).
    pub(crate) fn handle_chunks(
        &mut self,
        now: Time,
        flight: FlightId,
        chunks: impl IntoIterator<Item = Bytes>,
    ) -> Result<usize, StaleFlight> {
        if !self.is_recording() {
            return self.machine.handle_chunks(now, flight, chunks);
        }
        let mut accepted = 0;
        for data in chunks {
            let input = Some(Input::Chunk {
                flight,
                data: data.clone(),
            });
            let apply = |m: &mut Machine| m.handle_chunks(now, flight, [data]);
            match self.step(now, input, apply, |out| Reply::Flight(out.map(|_| ()))) {
                Ok(1) => accepted += 1,
                Err(stale) if accepted == 0 => return Err(stale),
                // Over the response limit (the flight failed): the rest is ignored.
                Ok(_) | Err(_) => break,
            }
        }
        Ok(accepted)
    }

    /// Cluster mode: a claim's answer ([`Machine::handle_claimed`]).
    pub(crate) fn handle_claimed(
        &mut self,
        now: Time,
        flight: FlightId,
        role: Role,
    ) -> Result<(), StaleFlight> {
        let input = self.recording(|| Input::Claimed {
            flight,
            role: role.clone(),
        });
        let apply = |m: &mut Machine| m.handle_claimed(now, flight, role);
        self.step(now, input, apply, |out| Reply::Flight(*out))
    }

    /// Cluster mode: a follower's remote end ([`Machine::handle_remote_end`]).
    pub(crate) fn handle_remote_end(
        &mut self,
        now: Time,
        flight: FlightId,
        outcome: Outcome,
    ) -> Result<(), StaleFlight> {
        let input = self.recording(|| Input::RemoteEnded {
            flight,
            outcome: outcome.clone(),
        });
        let apply = |m: &mut Machine| m.handle_remote_end(now, flight, outcome);
        self.step(now, input, apply, |out| Reply::Flight(*out))
    }

    /// Cluster mode: a follower's owner is gone ([`Machine::handle_owner_lost`]).
    pub(crate) fn handle_owner_lost(
        &mut self,
        now: Time,
        flight: FlightId,
    ) -> Result<(), StaleFlight> {
        let input = self.recording(|| Input::OwnerLost { flight });
        let apply = |m: &mut Machine| m.handle_owner_lost(now, flight);
        self.step(now, input, apply, |out| Reply::Flight(*out))
    }

    /// Cluster mode: an owner's write was refused ([`Machine::handle_fenced`]).
    pub(crate) fn handle_fenced(
        &mut self,
        now: Time,
        flight: FlightId,
        reason: String,
    ) -> Result<(), StaleFlight> {
        let input = self.recording(|| Input::Fenced {
            flight,
            reason: reason.clone(),
        });
        let apply = |m: &mut Machine| m.handle_fenced(now, flight, reason);
        self.step(now, input, apply, |out| Reply::Flight(*out))
    }

    pub(crate) fn handle_upstream_end(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<(), Failure>,
    ) -> Result<(), StaleFlight> {
        let input = self.recording(|| Input::UpstreamEnded {
            flight,
            result: result.clone(),
        });
        let apply = |m: &mut Machine| m.handle_upstream_end(now, flight, result);
        self.step(now, input, apply, |out| Reply::Flight(*out))
    }

    pub(crate) fn handle_timeout(&mut self, now: Time) {
        let input = self.recording(|| Input::Timeout);
        self.step(now, input, |m| m.handle_timeout(now), |()| Reply::Done);
    }

    pub(crate) fn shutdown(&mut self, now: Time) {
        let input = self.recording(|| Input::Shutdown);
        self.step(now, input, |m| m.shutdown(now), |()| Reply::Done);
    }

    /// Attaches `recorder` and queues the header, if the machine is new.
    pub(super) fn start(&mut self, mut recorder: Recorder) -> Result<(), (Recorder, RecordError)> {
        if self.recorder.is_some() {
            return Err((recorder, RecordError::AlreadyRecording));
        }
        let config = self.machine.config().clone();
        let fresh = Machine::new(config.clone()).is_ok_and(|new| new == self.machine);
        if !fresh {
            return Err((recorder, RecordError::NotFresh));
        }
        let header = TraceHeader {
            version: VERSION,
            config,
            actions: true,
            replies: true,
        };
        recorder.push(|out| encode_header(&header, out));
        self.recorder = Some(recorder);
        Ok(())
    }

    /// Detaches the recorder (between inputs, so no action waits in `pending`).
    pub(super) fn take_recorder(&mut self) -> Option<Recorder> {
        self.recorder.take()
    }

    pub(super) fn recording_status(&self) -> RecordingStatus {
        match &self.recorder {
            None => RecordingStatus::default(),
            Some(r) => RecordingStatus {
                recording: r.error.is_none(),
                records: r.records,
                error: r.error.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::trace::TraceStep;

    /// The borrowed form the recorder encodes is byte for byte the
    /// [`TraceStep`] the readers decode.
    #[test]
    fn a_borrowed_step_encodes_as_a_trace_step() {
        let input = Input::Chunk {
            flight: FlightId::from_raw(3),
            data: Bytes::from_static(b"abc"),
        };
        let reply = Reply::Flight(Err(StaleFlight));
        let queued: VecDeque<Action> = [
            Action::Wake {
                request: RequestId::from_raw(1),
            },
            Action::FlightEnded {
                flight: FlightId::from_raw(3),
            },
        ]
        .into();
        for (first, reply) in [(0, Some(&reply)), (1, None), (2, Some(&reply))] {
            let borrowed = StepRef {
                time: Time::from_millis(7),
                input: &input,
                reply,
                actions: ActionsRef(&queued, first),
            };
            let owned = TraceStep {
                time: Time::from_millis(7),
                input: input.clone(),
                reply: reply.cloned(),
                actions: queued.range(first..).cloned().collect(),
            };
            assert_eq!(
                postcard::to_allocvec(&borrowed).expect("encodes"),
                postcard::to_allocvec(&owned).expect("encodes")
            );
        }
    }
}
