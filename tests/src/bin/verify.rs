//! `verify`: check your own flightdeck configuration with the harness, from the
//! command line.
//!
//! Runs the exhaustive explorer ([`flightdeck_tests::explore`]) over a bound you
//! choose and the reference-model check ([`flightdeck_tests::model_check`])
//! against your configuration, printing progress, a summary, and on a violation
//! the shrunk counterexample (exit status 1).
//!
//! ```text
//! cargo run --release -p flightdeck-tests --bin verify -- \
//!     --max-preparations 1 --max-streams 2 --queue 3 --requests 3 --keys 2
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use flightdeck_core::Config;
use flightdeck_tests::explore::{explore_with, Bound};
use flightdeck_tests::model_check;

/// Which checks to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The exhaustive explorer over the bound.
    Explore,
    /// The reference-model check over random inputs.
    Model,
    /// Both, explorer first.
    Both,
}

/// Check a flightdeck configuration: every interleaving within a bound, then the
/// core against the reference model over random inputs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Which checks to run.
    #[arg(long, value_enum, default_value = "both")]
    mode: Mode,

    /// `max_concurrent_requests`: preparations at once.
    #[arg(long, default_value_t = 1)]
    max_preparations: usize,
    /// `max_concurrent_streams`: upstream streams at once.
    #[arg(long, default_value_t = 1)]
    max_streams: usize,
    /// `queue_capacity`: flights waiting for preparation.
    #[arg(long, default_value_t = 2)]
    queue: usize,
    /// `cache_capacity`: cached results.
    #[arg(long, default_value_t = 1)]
    cache: usize,
    /// `max_response_bytes`.
    #[arg(long, default_value_t = 1 << 20)]
    max_response_bytes: u64,
    /// Every timeout, in milliseconds, in this order: cache ttl, queue,
    /// preparation, stream slot, stream, idle, attach, cancelled retention,
    /// finished retention. The explorer tries every order in which they can
    /// fire, so only their order matters to it, not their size.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 9,
        default_value = "70,40,30,50,100,35,60,20,25"
    )]
    timeouts_ms: Vec<u64>,

    /// Explorer: requests submitted in total.
    #[arg(long, default_value_t = 3)]
    requests: usize,
    /// Explorer: distinct keys.
    #[arg(long, default_value_t = 2)]
    keys: u8,
    /// Explorer: chunks per upstream.
    #[arg(long, default_value_t = 2)]
    chunks: usize,
    /// Explorer: clients read at every step, not only at quiescence.
    #[arg(long)]
    reads: bool,
    /// Explorer: preparations may succeed uncacheable too.
    #[arg(long)]
    uncacheable: bool,
    /// Explorer: a progress line every this many states.
    #[arg(long, default_value_t = 1_000_000)]
    progress_every: usize,

    /// Model check: cases.
    #[arg(long, default_value_t = 2048)]
    cases: u32,
    /// Model check: ops per case, at most.
    #[arg(long, default_value_t = 150)]
    max_ops: usize,
}

impl Args {
    fn config(&self) -> Config {
        let t: Vec<Duration> = self
            .timeouts_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        Config {
            queue_capacity: self.queue,
            max_concurrent_requests: self.max_preparations,
            max_concurrent_streams: self.max_streams,
            max_response_bytes: self.max_response_bytes,
            cache_capacity: self.cache,
            cache_ttl: t[0],
            queue_timeout: t[1],
            preparation_timeout: t[2],
            stream_slot_timeout: t[3],
            stream_timeout: t[4],
            idle_timeout: t[5],
            attach_timeout: t[6],
            cancelled_retention: t[7],
            finished_retention: t[8],
            cluster: false,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = args.config();
    if let Err(e) = config.validate() {
        eprintln!("invalid configuration: {e}");
        return ExitCode::from(2);
    }
    println!("configuration: {config:?}");
    if matches!(args.mode, Mode::Explore | Mode::Both) {
        let bound = Bound::new(config.clone())
            .requests(args.requests)
            .keys(args.keys)
            .chunks(args.chunks)
            .reads(args.reads)
            .uncacheable(args.uncacheable);
        println!(
            "exploring every interleaving of {} requests over {} keys, {} chunks per upstream, \
             reads {}, uncacheable {}",
            bound.requests,
            bound.keys,
            bound.chunks,
            if bound.reads {
                "at every step"
            } else {
                "at quiescence"
            },
            bound.uncacheable
        );
        let explored = explore_with(&bound, args.progress_every, |r, depth| {
            eprintln!(
                "  {} states, {} transitions, depth {depth} (deepest {}), {:.0} s",
                r.states,
                r.transitions,
                r.max_depth,
                r.elapsed.as_secs_f64()
            );
        });
        match explored {
            Ok(r) => println!(
                "explorer: {} states, {} transitions, max depth {}, {:.1} s: every invariant holds",
                r.states,
                r.transitions,
                r.max_depth,
                r.elapsed.as_secs_f64()
            ),
            Err(cx) => {
                println!("explorer found a violation:\n{cx}");
                return ExitCode::FAILURE;
            }
        }
    }
    if matches!(args.mode, Mode::Model | Mode::Both) {
        println!(
            "model check: {} cases of up to {} ops",
            args.cases, args.max_ops
        );
        match model_check::check(config, args.cases, args.max_ops) {
            Ok(r) => {
                println!(
                    "model check: {} cases in {:.1} s: the core agrees with the reference model",
                    r.cases,
                    r.elapsed.as_secs_f64()
                );
                let unreached = r.unreached();
                if !unreached.is_empty() {
                    println!(
                        "  never reached with this configuration (nothing was checked there): \
                         {unreached:?}"
                    );
                }
            }
            Err(cx) => {
                println!("model check found a disagreement:\n{cx}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
