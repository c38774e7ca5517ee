//! The trace file: what a manager's recorder writes
//! ([`Manager::record_to`](super::Manager::record_to)) and what
//! `verify replay` and the harness read back.
//!
//! A trace is every input the driver fed the machine, in order, with its time,
//! so that [`Machine::handle`](crate::Machine::handle) replays the run exactly.
//! With each input it keeps what the machine answered (the [`Reply`], except
//! for reads, whose items would repeat the chunks already recorded) and the
//! actions the input queued, so that a replay detects any divergence, not only
//! a broken invariant.
//!
//! # Layout
//!
//! [`MAGIC`], then length-delimited records: each is a `u32` little-endian
//! length followed by that many bytes of postcard. The first record is a
//! [`TraceHeader`] (the format version and the [`Config`]), every later one a
//! [`TraceStep`]. A run cut short (a crash, a full disk) leaves a readable
//! prefix: every complete record before the cut, then a partial one that
//! [`TraceReader`] reports as [`TraceReadError::Truncated`].

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::{Action, Config, Input, Reply, Time};

/// The first bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"fdtrace\n";

/// The version of the layout written by this build.
pub const VERSION: u32 = 1;

/// The largest record a reader accepts (a corrupt length must not make it
/// allocate gigabytes).
pub const MAX_RECORD_BYTES: u32 = 256 << 20;

/// The first record: how to build the machine the steps are fed to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// The layout version ([`VERSION`]).
    pub version: u32,
    /// The machine's configuration.
    pub config: Config,
    /// Whether the steps carry the actions each input queued.
    pub actions: bool,
    /// Whether the steps carry the machine's replies.
    pub replies: bool,
}

/// One input, as the driver fed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// The time the driver stamped on the input (reads carry the machine's
    /// latest time: a read takes none).
    pub time: Time,
    /// The input.
    pub input: Input,
    /// The machine's reply, if recorded (never for reads).
    pub reply: Option<Reply>,
    /// The actions the input queued, in order (empty if not recorded).
    pub actions: Vec<Action>,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceReadError {
    /// The underlying reader failed.
    #[error("reading the trace: {0}")]
    Io(#[from] io::Error),
    /// The bytes do not start with [`MAGIC`] and a header.
    #[error("not a flightdeck trace (no header)")]
    NotATrace,
    /// Written by a newer flightdeck.
    #[error("trace format version {0} is not supported (this build reads {VERSION})")]
    Version(u32),
    /// The file ends inside a record: the run was cut short. The `steps`
    /// complete steps before the cut are readable.
    #[error("the trace is truncated after {steps} complete steps")]
    Truncated {
        /// Complete steps before the cut.
        steps: usize,
    },
    /// A record is not what the layout says.
    #[error("the trace is corrupt at step {step}: {message}")]
    Corrupt {
        /// Index of the step (the header is not a step).
        step: usize,
        /// What was wrong.
        message: String,
    },
}

/// Appends one length-delimited record to `out`.
///
/// # Errors
/// The value does not serialise, or is over [`MAX_RECORD_BYTES`]; `out` is
/// left as it was.
pub fn encode_record<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let body = postcard::to_extend(value, std::mem::take(out));
    match body {
        Ok(mut bytes) => match u32::try_from(bytes.len() - start - 4) {
            Ok(len) if len <= MAX_RECORD_BYTES => {
                bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
                *out = bytes;
                Ok(())
            }
            _ => {
                bytes.truncate(start);
                *out = bytes;
                Err(postcard::Error::SerializeBufferFull)
            }
        },
        // `to_extend` consumed the buffer: what was in it is lost with the error,
        // so a recorder stops at the first one.
        Err(e) => Err(e),
    }
}

/// The start of a trace file: [`MAGIC`] and the header record.
///
/// # Errors
/// As [`encode_record`].
pub fn encode_header(header: &TraceHeader, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    out.extend_from_slice(&MAGIC);
    encode_record(header, out)
}

/// Reads a trace: the header at once, then one step at a time.
#[derive(Debug)]
pub struct TraceReader<R> {
    inner: R,
    header: TraceHeader,
    steps: usize,
    body: Vec<u8>,
}

/// How reading one record went.
enum Frame {
    /// A complete record is in the buffer.
    Record,
    /// The input ended cleanly before the record.
    End,
    /// The input ended inside the record.
    Cut,
    /// The length says more than [`MAX_RECORD_BYTES`].
    TooLong(u32),
}

impl<R: Read> TraceReader<R> {
    /// Reads the magic and the header.
    ///
    /// # Errors
    /// [`TraceReadError::NotATrace`], [`TraceReadError::Version`], or I/O.
    pub fn new(mut inner: R) -> Result<Self, TraceReadError> {
        let mut magic = [0u8; 8];
        let got = read_full(&mut inner, &mut magic)?;
        if got < magic.len() || magic != MAGIC {
            return Err(TraceReadError::NotATrace);
        }
        let mut body = Vec::new();
        match read_frame(&mut inner, &mut body)? {
            Frame::Record => {}
            Frame::End | Frame::Cut | Frame::TooLong(_) => return Err(TraceReadError::NotATrace),
        }
        // The version comes first, so a newer header is recognised as such even
        // if the rest of it does not parse.
        match postcard::take_from_bytes::<u32>(&body) {
            Ok((VERSION, _)) => {}
            Ok((version, _)) => return Err(TraceReadError::Version(version)),
            Err(_) => return Err(TraceReadError::NotATrace),
        }
        let header: TraceHeader =
            postcard::from_bytes(&body).map_err(|_| TraceReadError::NotATrace)?;
        Ok(TraceReader {
            inner,
            header,
            steps: 0,
            body,
        })
    }

    /// The header: the configuration and what the steps carry.
    #[must_use]
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The next step; `None` at the end of a complete trace.
    ///
    /// # Errors
    /// [`TraceReadError::Truncated`] (the steps read so far are the readable
    /// prefix), [`TraceReadError::Corrupt`], or I/O.
    pub fn next_step(&mut self) -> Result<Option<TraceStep>, TraceReadError> {
        match read_frame(&mut self.inner, &mut self.body)? {
            Frame::End => Ok(None),
            Frame::Cut => Err(TraceReadError::Truncated { steps: self.steps }),
            Frame::TooLong(len) => Err(TraceReadError::Corrupt {
                step: self.steps,
                message: format!("a record of {len} bytes (at most {MAX_RECORD_BYTES})"),
            }),
            Frame::Record => {
                let step =
                    postcard::from_bytes(&self.body).map_err(|e| TraceReadError::Corrupt {
                        step: self.steps,
                        message: e.to_string(),
                    })?;
                self.steps += 1;
                Ok(Some(step))
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(inner: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match inner.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one length-delimited record into `body`.
fn read_frame(inner: &mut impl Read, body: &mut Vec<u8>) -> Result<Frame, TraceReadError> {
    let mut len = [0u8; 4];
    match read_full(inner, &mut len)? {
        0 => return Ok(Frame::End),
        4 => {}
        _ => return Ok(Frame::Cut),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_RECORD_BYTES {
        return Ok(Frame::TooLong(len));
    }
    body.clear();
    // `take` + `read_to_end` grows the buffer with what is really there: a
    // corrupt length costs no allocation beyond the file's size.
    let got = inner.take(u64::from(len)).read_to_end(body)?;
    if got < len as usize {
        return Ok(Frame::Cut);
    }
    Ok(Frame::Record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FlightId, Key};

    fn trace(steps: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let header = TraceHeader {
            version: VERSION,
            config: Config::default(),
            actions: true,
            replies: true,
        };
        encode_header(&header, &mut out).expect("header");
        for i in 0..steps {
            let step = TraceStep {
                time: Time::from_millis(i as u64),
                input: Input::Submit {
                    key: Key::new(format!("k{i}")),
                },
                reply: Some(Reply::Done),
                actions: vec![Action::FlightEnded {
                    flight: FlightId::from_raw(i as u64),
                }],
            };
            encode_record(&step, &mut out).expect("step");
        }
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<TraceStep>, TraceReadError> {
        let mut reader = TraceReader::new(bytes)?;
        let mut steps = Vec::new();
        while let Some(step) = reader.next_step()? {
            steps.push(step);
        }
        Ok(steps)
    }

    #[test]
    fn a_trace_reads_back_step_by_step() {
        let steps = read_all(&trace(3)).expect("complete");
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[2].time, Time::from_millis(2));
    }

    #[test]
    fn every_cut_is_reported_with_the_complete_prefix() {
        let full = trace(3);
        let ends: Vec<usize> = (0..=3).map(|n| trace(n).len()).collect();
        for cut in 0..full.len() {
            match read_all(&full[..cut]) {
                Err(TraceReadError::NotATrace) => assert!(cut < ends[0], "cut {cut}"),
                Ok(steps) => assert!(ends.contains(&cut) && steps.len() < 3, "cut {cut}"),
                Err(TraceReadError::Truncated { steps }) => {
                    assert!(ends[steps] < cut && cut < ends[steps + 1], "cut {cut}");
                }
                Err(e) => panic!("cut {cut}: {e}"),
            }
        }
    }

    #[test]
    fn a_newer_version_and_garbage_are_refused() {
        let mut bytes = Vec::from(MAGIC);
        encode_record(&(VERSION + 1, 0u8), &mut bytes).expect("record");
        assert!(matches!(
            TraceReader::new(&bytes[..]),
            Err(TraceReadError::Version(v)) if v == VERSION + 1
        ));
        assert!(matches!(
            TraceReader::new(&b"not a trace at all"[..]),
            Err(TraceReadError::NotATrace)
        ));
        let mut corrupt = trace(2);
        let last = corrupt.len() - 1;
        corrupt[last] = 0xff; // the last action's flight id: an unfinished varint
        assert!(matches!(
            read_all(&corrupt),
            Err(TraceReadError::Corrupt { step: 1, .. })
        ));
        let mut too_long = trace(1);
        too_long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_all(&too_long),
            Err(TraceReadError::Corrupt { step: 1, .. })
        ));
    }
}
