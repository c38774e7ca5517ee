//! Postcard traces: a configuration and the `(Time, Input)` pairs of a run,
//! optionally with the actions each input produced.
//!
//! [`Trace::replay`] feeds a trace through [`Machine::handle`], checking the
//! machine's invariants after every step and, if actions were recorded, that the
//! replay produces exactly the same actions (determinism). [`Trace::decode`] of
//! arbitrary bytes never panics.

use flightdeck_core::{Action, Config, Input, Machine, Time};
use serde::{Deserialize, Serialize};

use crate::world::World;

/// A recorded run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// The machine's configuration.
    pub config: Config,
    /// The inputs, with the time each happened.
    pub steps: Vec<(Time, Input)>,
    /// The actions each input produced, if recorded (same length as `steps`).
    pub actions: Option<Vec<Vec<Action>>>,
}

/// Why a replay failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// The configuration is invalid (not a violation: the machine refused it).
    Config(String),
    /// An invariant broke after step `step`.
    Invariant {
        /// Index of the step.
        step: usize,
        /// The violation.
        message: String,
    },
    /// The replay produced different actions than the recording.
    Diverged {
        /// Index of the step.
        step: usize,
        /// The recorded actions.
        recorded: Vec<Action>,
        /// The replayed actions.
        replayed: Vec<Action>,
    },
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
        }
    }

    /// Serialises with postcard.
    ///
    /// # Panics
    /// Never in practice: postcard serialisation into a `Vec` cannot fail for these types.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard serialises a trace")
    }

    /// Deserialises from postcard; any bytes are accepted without panicking.
    ///
    /// # Errors
    /// The bytes are not a postcard trace.
    pub fn decode(bytes: &[u8]) -> Result<Trace, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Replays the trace, checking invariants after every step and, if recorded,
    /// that the actions are identical. Returns the final machine.
    ///
    /// # Errors
    /// See [`ReplayError`].
    pub fn replay(&self) -> Result<Machine, ReplayError> {
        let mut machine =
            Machine::new(self.config.clone()).map_err(|e| ReplayError::Config(e.to_string()))?;
        for (step, (now, input)) in self.steps.iter().enumerate() {
            let _reply = machine.handle(*now, input.clone());
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

    /// Writes the trace to `path` (postcard).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, self.encode())
    }
}
