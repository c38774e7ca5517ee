//! The opt-in trace recorder ([`Manager::record_to`]).
//!
//! Every input reaches the machine through the manager's lock, so the recorder
//! sits exactly there: the lock guards a [`TracedMachine`], the machine plus an
//! optional recorder, whose input methods are the machine's. Without a recorder
//! each is one branch and the machine's own method. With one, each input is
//! encoded (with its reply and the actions it queued) under the lock, which
//! keeps the order, into a buffer shared with a writer thread; the thread lets
//! records gather for [`WRITE_DELAY`], then writes and flushes them, so a
//! crash loses at most the last few milliseconds, and a slow disk never holds
//! the lock.
//!
//! A batch of chunks is recorded as one [`Input::Chunk`] per chunk at the same
//! time: while recording, the batch is fed chunk by chunk, which
//! `Machine::handle_chunks` guarantees is the same (machine/batch.rs), so every
//! recorded step has its own reply and actions.
//!
//! Only `Deref` to the machine is offered, not `DerefMut`: a driver change that
//! feeds the machine a new kind of input does not compile until it is recorded.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::trace::{encode_header, encode_record, TraceHeader, VERSION};
use super::{Manager, Runtime};
use crate::{
    Action, Failure, FlightId, Input, Item, Key, Machine, Prepared, Readiness, Reply, RequestError,
    RequestId, StaleFlight, Submission, SubmitError, Time,
};

/// A recorder holding more than this many bytes its writer has not taken yet
/// stops with [`RecordError::WriterBehind`] instead of growing without bound.
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Why recording could not start, or stopped.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The manager is recording already.
    #[error("the manager is already recording")]
    AlreadyRecording,
    /// The manager is not recording.
    #[error("the manager is not recording")]
    NotRecording,
    /// The manager has taken inputs already: a trace starts from a new machine.
    #[error("the manager has taken inputs already: start recording right after creating it")]
    NotFresh,
    /// The writer thread could not be started.
    #[error("starting the trace writer thread: {0}")]
    Thread(Arc<std::io::Error>),
    /// Writing or flushing the trace failed; recording stopped there.
    #[error("writing the trace failed after {records} records: {error}")]
    Write {
        /// Records encoded before the failure (some may not have been written).
        records: u64,
        /// The writer's error.
        error: Arc<std::io::Error>,
    },
    /// The writer fell more than [`MAX_PENDING_BYTES`] behind; recording stopped.
    #[error("the trace writer fell {MAX_PENDING_BYTES} bytes behind; recording stopped")]
    WriterBehind,
    /// An input did not serialise (a bug in flightdeck); recording stopped.
    #[error("encoding a trace record: {0}")]
    Encode(postcard::Error),
}

/// What [`Manager::recording_status`] reports.
#[derive(Clone, Debug, Default)]
pub struct RecordingStatus {
    /// A recorder is attached and has not failed.
    pub recording: bool,
    /// Records encoded so far (the header and every step).
    pub records: u64,
    /// Why recording stopped on its own, if it did.
    pub error: Option<RecordError>,
}

/// What a finished recording wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordingSummary {
    /// Records written (the header and every step).
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// The buffer between the recorder (under the manager's lock) and its writer thread.
#[derive(Default)]
struct Pipe {
    state: Mutex<PipeState>,
    ready: Condvar,
}

#[derive(Default)]
struct PipeState {
    /// Encoded records the writer has not taken yet.
    pending: Vec<u8>,
    /// No more records: the writer writes what is pending and exits.
    closed: bool,
    /// The writer failed; everything after is dropped.
    failed: Option<Arc<std::io::Error>>,
    /// Bytes written and flushed.
    written: u64,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

/// How long the writer lets records gather after the first one before it
/// writes them: one wake-up, one write and one flush per batch, not per record.
/// A crash loses at most this much of the run (and what the OS did not persist).
pub const WRITE_DELAY: Duration = Duration::from_millis(10);

/// The writer thread: waits for records, lets more gather for
/// [`WRITE_DELAY`], takes them all, writes and flushes them, repeats.
fn write_loop(pipe: &Pipe, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::new();
    loop {
        {
            let mut st = pipe.lock();
            while st.pending.is_empty() && !st.closed {
                st = pipe.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.pending.is_empty() {
                return; // closed and drained
            }
            if !st.closed {
                drop(st);
                std::thread::sleep(WRITE_DELAY);
                st = pipe.lock();
            }
            std::mem::swap(&mut st.pending, &mut batch);
        }
        // A panicking writer is a failed one: the recorder stops, the manager goes on.
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
            out.write_all(&batch).and_then(|()| out.flush())
        }))
        .unwrap_or_else(|_| Err(std::io::Error::other("the trace writer panicked")));
        if let Err(e) = written {
            let mut st = pipe.lock();
            st.failed = Some(Arc::new(e));
            st.pending = Vec::new();
            return;
        }
        pipe.lock().written += batch.len() as u64;
        batch.clear();
    }
}

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

/// An attached recorder: the pipe to its writer thread.
struct Recorder {
    pipe: Arc<Pipe>,
    thread: Option<JoinHandle<()>>,
    records: u64,
    /// Set when recording stopped on its own; nothing more is encoded.
    error: Option<RecordError>,
}

impl Recorder {
    /// Appends one record, or stops recording on the first error.
    fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<(), postcard::Error>) {
        if self.error.is_some() {
            return;
        }
        let mut st = self.pipe.lock();
        if let Some(error) = &st.failed {
            let error = Arc::clone(error);
            drop(st);
            self.error = Some(RecordError::Write {
                records: self.records,
                error,
            });
            return;
        }
        if st.pending.len() > MAX_PENDING_BYTES {
            drop(st);
            self.error = Some(RecordError::WriterBehind);
            return;
        }
        let was_empty = st.pending.is_empty();
        if let Err(e) = encode(&mut st.pending) {
            drop(st);
            self.error = Some(RecordError::Encode(e));
            return;
        }
        drop(st);
        self.records += 1;
        if was_empty {
            self.pipe.ready.notify_one();
        }
    }

    /// Closes the pipe and waits for the writer to write and flush everything.
    fn finish(mut self) -> Result<RecordingSummary, RecordError> {
        self.pipe.close();
        if let Some(thread) = self.thread.take() {
            // The writer catches its own errors and panics.
            let _ = thread.join();
        }
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let st = self.pipe.lock();
        match &st.failed {
            Some(error) => Err(RecordError::Write {
                records: self.records,
                error: Arc::clone(error),
            }),
            None => Ok(RecordingSummary {
                records: self.records,
                bytes: st.written,
            }),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Dropped with the manager: the writer finishes on its own (detached).
        self.pipe.close();
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
    /// without its reply (its items are chunks the trace has already).
    pub(crate) fn read(
        &mut self,
        request: RequestId,
        out: &mut Vec<Item>,
    ) -> Result<Readiness, RequestError> {
        let result = self.machine.read(request, out);
        if let Some(input) = self.recording(|| Input::Read { request }) {
            self.record(self.machine.now(), &input, None);
        }
        result
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
    fn start(&mut self, mut recorder: Recorder) -> Result<(), (Recorder, RecordError)> {
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

    fn status(&self) -> RecordingStatus {
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

impl<P: Send + 'static, R: Runtime> Manager<P, R> {
    /// Starts recording every input this manager feeds its machine to
    /// `writer`, as a trace file ([`driver::trace`](super::trace)) that
    /// `verify replay FILE` re-runs through the core, checking every invariant
    /// and that every reply and action is the same.
    ///
    /// Call it right after creating the manager: a trace starts from a new
    /// machine. Records are encoded under the manager's lock (to keep their
    /// order) and written by a thread of their own, which lets them gather for
    /// [`WRITE_DELAY`], then writes and flushes them; pass an unbuffered writer
    /// (a `File`), the recorder buffers. A failing (or panicking) writer stops
    /// the recording, never the manager: see
    /// [`Manager::recording_status`]. Without a recorder, each input costs one
    /// branch more.
    ///
    /// # Errors
    /// [`RecordError::NotFresh`], [`RecordError::AlreadyRecording`], or
    /// [`RecordError::Thread`]; the writer is dropped unused.
    pub fn record_to(&self, writer: impl Write + Send + 'static) -> Result<(), RecordError> {
        let pipe = Arc::new(Pipe::default());
        let writer_pipe = Arc::clone(&pipe);
        let writer: Box<dyn Write + Send> = Box::new(writer);
        let thread = std::thread::Builder::new()
            .name("flightdeck-trace".to_owned())
            .spawn(move || write_loop(&writer_pipe, writer))
            .map_err(|e| RecordError::Thread(Arc::new(e)))?;
        let recorder = Recorder {
            pipe,
            thread: Some(thread),
            records: 0,
            error: None,
        };
        let refused = self.shared().with(|g, _| g.machine.start(recorder).err());
        match refused {
            None => Ok(()),
            Some((recorder, error)) => {
                drop(recorder.finish());
                Err(error)
            }
        }
    }

    /// Whether the manager is recording, how many records so far, and why
    /// recording stopped if it stopped on its own (the writer failed).
    #[must_use]
    pub fn recording_status(&self) -> RecordingStatus {
        self.shared().with(|g, _| g.machine.status())
    }

    /// Stops recording and waits (blocking the calling thread) until the
    /// writer has written and flushed every record; the writer is then dropped.
    /// Inputs after this are not recorded.
    ///
    /// # Errors
    /// [`RecordError::NotRecording`], or why recording stopped early (the
    /// trace is then a readable prefix).
    pub fn stop_recording(&self) -> Result<RecordingSummary, RecordError> {
        let recorder = self.shared().with(|g, _| g.machine.recorder.take());
        recorder.ok_or(RecordError::NotRecording)?.finish()
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
