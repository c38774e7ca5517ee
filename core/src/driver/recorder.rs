//! The opt-in trace recorder ([`Manager::record_to`]): the buffer shared with
//! a writer thread, the thread, and the manager's recording methods.
//!
//! Every input reaches the machine through the manager's lock, so the recorder
//! sits exactly there, in the [`TracedMachine`](super::traced::TracedMachine)
//! the lock guards, which encodes each input under the lock (keeping the
//! order) into a buffer shared with a writer thread; the thread lets records
//! gather for [`WRITE_DELAY`], then writes and flushes them, so a crash loses
//! at most the last few milliseconds, and a slow disk never holds the lock.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Manager, Runtime};

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

/// An attached recorder: the pipe to its writer thread.
pub(super) struct Recorder {
    pipe: Arc<Pipe>,
    thread: Option<JoinHandle<()>>,
    /// Records encoded so far.
    pub(super) records: u64,
    /// Set when recording stopped on its own; nothing more is encoded.
    pub(super) error: Option<RecordError>,
}

impl Recorder {
    /// Appends one record, or stops recording on the first error.
    pub(super) fn push(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), postcard::Error>,
    ) {
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
    pub(super) fn finish(mut self) -> Result<RecordingSummary, RecordError> {
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
        self.shared().with(|g, _| g.machine.recording_status())
    }

    /// Stops recording and waits (blocking the calling thread) until the
    /// writer has written and flushed every record; the writer is then dropped.
    /// Inputs after this are not recorded.
    ///
    /// # Errors
    /// [`RecordError::NotRecording`], or why recording stopped early (the
    /// trace is then a readable prefix).
    pub fn stop_recording(&self) -> Result<RecordingSummary, RecordError> {
        let recorder = self.shared().with(|g, _| g.machine.take_recorder());
        recorder.ok_or(RecordError::NotRecording)?.finish()
    }
}
