//! Traces: a configuration and the `(Time, Input)` pairs of a run, optionally
//! with the reply and the actions of each input, in the one trace file format
//! of [`flightdeck_core::driver::trace`]. The same files come from a recording
//! [`World`] (the seed traces, the explorer's counterexamples) and from a
//! manager's recorder in production (`Manager::record_to`).
//!
//! [`Trace::replay`] feeds a trace through [`Machine::handle`], checking the
//! machine's invariants after every step and, where they were recorded, that
//! the replay gives exactly the same reply and actions (determinism; a
//! recording that does not match this build's core). `verify replay FILE` is
//! this function on the command line. [`Trace::decode`] of arbitrary bytes
//! never panics.

use std::io::Read;
use std::path::Path;

use flightdeck_core::driver::trace::{
    encode_header, encode_record, TraceHeader, TraceReadError, TraceReader, TraceStep, VERSION,
};
use flightdeck_core::{Action, Config, Input, Machine, Reply, Time};

use crate::world::World;

/// A recorded run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The machine's configuration.
    pub config: Config,
    /// The inputs, with the time each happened.
    pub steps: Vec<(Time, Input)>,
    /// The actions each input produced, if recorded (same length as `steps`).
    pub actions: Option<Vec<Vec<Action>>>,
    /// The reply to each input, if recorded (same length as `steps`; `None`
    /// for an input whose reply was not kept: a recorder keeps none for reads).
    pub replies: Option<Vec<Option<Reply>>>,
}

/// Why a replay failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The configuration is invalid (not a violation: the machine refused it).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An invariant broke after step `step`.
    #[error("step {step}: {message}")]
    Invariant {
        /// Index of the step.
        step: usize,
        /// The violation.
        message: String,
    },
    /// The replay produced different actions than the recording.
    #[error("step {step}: the actions differ: recorded {recorded:?}, replayed {replayed:?}")]
    Diverged {
        /// Index of the step.
        step: usize,
        /// The recorded actions.
        recorded: Vec<Action>,
        /// The replayed actions.
        replayed: Vec<Action>,
    },
    /// The replay gave a different reply than the recording.
    #[error("step {step}: the reply differs: recorded {recorded:?}, replayed {replayed:?}")]
    ReplyDiverged {
        /// Index of the step.
        step: usize,
        /// The recorded reply.
        recorded: Reply,
        /// The replayed reply.
        replayed: Reply,
    },
}

impl ReplayError {
    /// The index of the step where the replay failed, if a step did.
    #[must_use]
    pub fn step(&self) -> Option<usize> {
        match self {
            ReplayError::Config(_) => None,
            ReplayError::Invariant { step, .. }
            | ReplayError::Diverged { step, .. }
            | ReplayError::ReplyDiverged { step, .. } => Some(*step),
        }
    }
}

impl Trace {
    /// The trace a recording [`World`] made.
    #[must_use]
    pub fn from_world(world: &World) -> Trace {
        let (steps, actions) = world.driver.recorded();
        Trace {
            config: world.machine().config().clone(),
            steps: steps.to_vec(),
            actions: Some(actions.to_vec()),
            replies: None,
        }
    }

    /// Serialises in the trace file format.
    ///
    /// # Panics
    /// Never in practice: postcard serialisation into a `Vec` cannot fail for these types.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let header = TraceHeader {
            version: VERSION,
            config: self.config.clone(),
            actions: self.actions.is_some(),
            replies: self.replies.is_some(),
        };
        let mut out = Vec::new();
        encode_header(&header, &mut out).expect("postcard serialises a header");
        for (i, (time, input)) in self.steps.iter().enumerate() {
            let step = TraceStep {
                time: *time,
                input: input.clone(),
                reply: self
                    .replies
                    .as_ref()
                    .and_then(|r| r.get(i).cloned().flatten()),
                actions: self
                    .actions
                    .as_ref()
                    .and_then(|a| a.get(i).cloned())
                    .unwrap_or_default(),
            };
            encode_record(&step, &mut out).expect("postcard serialises a step");
        }
        out
    }

    /// Deserialises a complete trace; any bytes are accepted without panicking.
    ///
    /// # Errors
    /// The bytes are not a complete trace (see [`TraceReadError`]).
    pub fn decode(bytes: &[u8]) -> Result<Trace, TraceReadError> {
        Trace::read(bytes)
    }

    /// Reads a complete trace.
    ///
    /// # Errors
    /// As [`Trace::read_prefix`], and the error that ended a prefix.
    pub fn read(reader: impl Read) -> Result<Trace, TraceReadError> {
        match Trace::read_prefix(reader)? {
            (trace, None) => Ok(trace),
            (_, Some(e)) => Err(e),
        }
    }

    /// Reads as much of a trace as is readable: every complete step, and the
    /// error that stopped the reading early, if one did (a run cut short leaves
    /// [`TraceReadError::Truncated`]).
    ///
    /// # Errors
    /// No header could be read.
    pub fn read_prefix(
        reader: impl Read,
    ) -> Result<(Trace, Option<TraceReadError>), TraceReadError> {
        let mut reader = TraceReader::new(reader)?;
        let header = reader.header().clone();
        let mut trace = Trace {
            config: header.config,
            steps: Vec::new(),
            actions: header.actions.then(Vec::new),
            replies: header.replies.then(Vec::new),
        };
        let stopped = loop {
            match reader.next_step() {
                Ok(Some(step)) => {
                    trace.steps.push((step.time, step.input));
                    if let Some(actions) = &mut trace.actions {
                        actions.push(step.actions);
                    }
                    if let Some(replies) = &mut trace.replies {
                        replies.push(step.reply);
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        Ok((trace, stopped))
    }

    /// Reads a complete trace file.
    ///
    /// # Errors
    /// The file cannot be opened, or as [`Trace::read`].
    pub fn load(path: &Path) -> Result<Trace, TraceReadError> {
        Trace::read(std::io::BufReader::new(std::fs::File::open(path)?))
    }

    /// Replays the trace, checking invariants after every step and, where
    /// recorded, that the reply and the actions are identical. Returns the
    /// final machine.
    ///
    /// # Errors
    /// See [`ReplayError`]: the first step that failed.
    pub fn replay(&self) -> Result<Machine, ReplayError> {
        let mut machine =
            Machine::new(self.config.clone()).map_err(|e| ReplayError::Config(e.to_string()))?;
        for (step, (now, input)) in self.steps.iter().enumerate() {
            let reply = machine.handle(*now, input.clone());
            let mut replayed = Vec::new();
            while let Some(a) = machine.poll_action() {
                replayed.push(a);
            }
            machine
                .check_invariants()
                .map_err(|v| ReplayError::Invariant {
                    step,
                    message: v.to_string(),
                })?;
            let recorded_reply = self.replies.as_ref().and_then(|r| r.get(step));
            if let Some(Some(recorded)) = recorded_reply {
                if *recorded != reply {
                    return Err(ReplayError::ReplyDiverged {
                        step,
                        recorded: recorded.clone(),
                        replayed: reply,
                    });
                }
            }
            if let Some(recorded) = self.actions.as_ref().and_then(|a| a.get(step)) {
                if *recorded != replayed {
                    return Err(ReplayError::Diverged {
                        step,
                        recorded: recorded.clone(),
                        replayed,
                    });
                }
            }
        }
        Ok(machine)
    }

    /// A short human-readable listing of the inputs.
    #[must_use]
    pub fn listing(&self) -> String {
        let mut s = format!("config: {:?}\n", self.config);
        for (i, (t, input)) in self.steps.iter().enumerate() {
            s.push_str(&format!("  #{i:3} t={t} {input:?}\n"));
        }
        s
    }

    /// Writes the trace to `path`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.encode())
    }
}
