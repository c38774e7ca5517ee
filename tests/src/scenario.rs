//! The scenario decoder shared by `cargo test` (seeded generator), cargo-fuzz
//! and the recorded seed traces.
//!
//! [`Scenario::decode`] is hand-written: every byte string, including the empty
//! one, decodes to a meaningful scenario (a small valid configuration and a list
//! of [`Op`]s). Ops name their targets by index modulo the current candidates,
//! so no decoded op is ever meaningless.

use std::time::Duration;

use flightdeck_core::Config;

use crate::world::{Op, Violation, World};

/// A configuration plus the ops a [`World`] executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The machine's configuration (always valid).
    pub config: Config,
    /// The ops, in order.
    pub ops: Vec<Op>,
}

/// Reads bytes, yielding zeros once the input is exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
}

/// The most ops a decoded scenario holds (keeps fuzz runs fast).
pub const MAX_OPS: usize = 512;

impl Scenario {
    /// Decodes any byte string into a scenario. Never panics.
    ///
    /// Layout: 6 config bytes (queue capacity 1-8, preparation limit 1-4, stream
    /// limit 1-4, cache capacity 0-3, response limit, a timeout scale), then two
    /// bytes per op (kind, argument).
    #[must_use]
    pub fn decode(data: &[u8]) -> Scenario {
        let mut b = Bytes(data);
        let ms = |x: u8| Duration::from_millis(u64::from(x % 8) * 10 + 5);
        let queue_capacity = usize::from(b.next() % 8) + 1;
        let max_concurrent_requests = usize::from(b.next() % 4) + 1;
        let max_concurrent_streams = usize::from(b.next() % 4) + 1;
        let cache_capacity = usize::from(b.next() % 4);
        let max_response_bytes = u64::from(b.next()) * 4 + 8;
        let scale = b.next();
        let config = Config {
            queue_capacity,
            max_concurrent_requests,
            max_concurrent_streams,
            max_response_bytes,
            cache_capacity,
            cache_ttl: ms(scale),
            queue_timeout: ms(scale.rotate_left(1)) * 4,
            preparation_timeout: ms(scale.rotate_left(2)) * 2,
            stream_slot_timeout: ms(scale.rotate_left(3)) * 4,
            stream_timeout: ms(scale.rotate_left(4)) * 8,
            idle_timeout: ms(scale.rotate_left(5)) * 2,
            attach_timeout: ms(scale.rotate_left(6)) * 3,
            cancelled_retention: ms(scale.rotate_left(7)),
            finished_retention: ms(scale) * 2,
            cluster: false,
        };
        let mut ops = Vec::new();
        while !b.0.is_empty() && ops.len() < MAX_OPS {
            let kind = b.next();
            let arg = b.next();
            ops.push(decode_op(kind, arg));
        }
        Scenario { config, ops }
    }

    /// Runs the scenario in a fresh [`World`], then runs it to quiescence
    /// ([`World::finish`]), checking everything after every step.
    ///
    /// # Errors
    /// The first violation, with the index of the op that caused it.
    pub fn run(&self) -> Result<World, Violation> {
        let world = World::new(self.config.clone())
            .map_err(|e| Violation(format!("decoded an invalid config: {e}")))?;
        self.run_in(world)
    }

    /// Like [`Scenario::run`] in a given (e.g. recording) world.
    ///
    /// # Errors
    /// The first violation, with the index of the op that caused it.
    pub fn run_in(&self, mut world: World) -> Result<World, Violation> {
        for (i, op) in self.ops.iter().enumerate() {
            world
                .apply(op)
                .map_err(|v| Violation(format!("op #{i} {op:?}: {v}")))?;
        }
        world
            .finish()
            .map_err(|v| Violation(format!("at quiescence: {v}")))?;
        Ok(world)
    }
}

/// Decodes one op from a kind byte and an argument byte. Kinds are weighted so
/// that a random byte string makes progress (submits, attaches, upstream work).
#[must_use]
pub fn decode_op(kind: u8, arg: u8) -> Op {
    match kind % 32 {
        0..=3 => Op::Submit { key: arg % 4 },
        4..=6 => Op::Attach(arg),
        7..=10 => Op::Read(arg),
        11 => Op::Cancel(arg),
        12 => Op::Detach(arg),
        13..=15 => Op::PrepareOk {
            which: arg >> 1,
            cacheable: arg & 1 == 0,
        },
        16 => Op::PrepareFail(arg),
        17..=21 => Op::Chunk(arg),
        22..=23 => Op::UpstreamOk(arg),
        24 => Op::UpstreamFail(arg),
        25 => Op::Late(arg),
        26..=27 => Op::NextDeadline,
        _ => Op::Sleep(u16::from(arg % 64)),
    }
}
