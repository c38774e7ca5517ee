//! The demo: a simulated LLM behind flightdeck, written once against the
//! runtime-independent [`Manager`] and run on each runtime by a three-line
//! `main` (`runtime-tokio/examples/demo.rs`, `runtime-smol/examples/demo-smol.rs`).
//!
//! A burst of ten questions arrives at once, several of them identical; the
//! "model" streams a token every 20-40 ms. Identical questions share one upstream
//! stream; one client cancels mid-answer; one joins late and still reads the
//! answer from its first token; a repeat question after the burst is served
//! from the cache. Prints live progress, then a summary.
//!
//! ```text
//! cargo run --release -p flightdeck-tokio --example demo
//! cargo run --release -p flightdeck-smol --example demo-smol
//! ```

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicBool;

use flightdeck_core::driver::{Manager, Preparation};
use flightdeck_core::{Bytes, Config, Item, Outcome};

use crate::runtimes::TestRt;

/// The simulated model's answer to a prompt, one token per word.
fn answer(prompt: &str) -> &'static str {
    match prompt {
        "What is Rust?" => {
            "Rust is a systems programming language focused on safety, speed and \
             concurrency, without a garbage collector."
        }
        "What is coalescing?" => {
            "Coalescing serves identical requests with one upstream stream and \
             replays it to every client that asks."
        }
        "Why sans-IO?" => {
            "A sans-IO core makes every decision without touching a clock or a \
             socket, so it can be tested exhaustively."
        }
        _ => {
            "Once upon a time a very long answer kept streaming token after token \
             long after anyone cared to read it, until someone pressed stop, and \
             the model was finally allowed to rest."
        }
    }
}

/// The per-token delay: 20-40 ms, varying with the token.
fn pace(i: usize) -> Duration {
    Duration::from_millis(20 + (i as u64 * 7919) % 21)
}

struct Client {
    name: &'static str,
    prompt: &'static str,
    /// Submit this long after the start.
    delay_ms: u64,
    /// Cancel after this many tokens.
    cancel_after: Option<usize>,
}

#[derive(Debug)]
struct Report {
    name: &'static str,
    prompt: &'static str,
    flight: String,
    first_token: Option<Duration>,
    tokens: usize,
    outcome: Outcome,
    total: Duration,
}

/// Runs the demo on runtime `T` (a fresh runtime, blocking until the demo ends).
pub fn run<T: TestRt>() {
    T::block_on(burst::<T>());
}

/// The demo's scenario: the burst, the cached repeat, the summary, the shutdown.
///
/// # Panics
/// Never in practice: the configuration is valid and the demo's requests are
/// accepted (a panic would be a bug in flightdeck).
pub async fn burst<T: TestRt>() {
    let start = Instant::now();
    let ms = move || start.elapsed().as_millis();
    let upstream_calls = Arc::new(AtomicUsize::new(0));

    // Preparation: "tokenise" the prompt (simulated: 30 ms).
    let prepare = |prompt: String| async move {
        T::sleep(Duration::from_millis(30)).await;
        Ok::<_, Infallible>(Preparation::cacheable(prompt))
    };
    // The upstream: the model streams its answer a token at a time.
    let calls = upstream_calls.clone();
    let upstream = move |prompt: String| {
        calls.fetch_add(1, SeqCst);
        println!("[{:>5} ms] upstream: generating for {prompt:?}", ms());
        async move {
            let tokens: Vec<String> = answer(&prompt)
                .split(' ')
                .map(|w| format!("{w} "))
                .collect();
            let stream = futures_lite::stream::unfold(0usize, move |i| {
                let token = tokens.get(i).cloned();
                async move {
                    let token = token?;
                    T::sleep(pace(i)).await;
                    Some((Ok::<_, Infallible>(Bytes::from(token)), i + 1))
                }
            });
            Ok::<_, Infallible>(stream)
        }
    };
    let config = Config {
        max_concurrent_requests: 4,
        max_concurrent_streams: 3,
        ..Config::default()
    };
    let manager: Manager<String, T::R> =
        Manager::new(config, prepare, upstream).expect("valid config");

    let clients = vec![
        Client {
            name: "ana",
            prompt: "What is Rust?",
            delay_ms: 0,
            cancel_after: None,
        },
        Client {
            name: "ben",
            prompt: "What is Rust?",
            delay_ms: 0,
            cancel_after: None,
        },
        Client {
            name: "cleo",
            prompt: "What is coalescing?",
            delay_ms: 0,
            cancel_after: None,
        },
        Client {
            name: "dev",
            prompt: "Why sans-IO?",
            delay_ms: 0,
            cancel_after: None,
        },
        Client {
            name: "eve",
            prompt: "What is Rust?",
            delay_ms: 0,
            cancel_after: None,
        },
        Client {
            name: "finn",
            prompt: "Tell me a story",
            delay_ms: 0,
            cancel_after: Some(6),
        },
        Client {
            name: "gus",
            prompt: "What is coalescing?",
            delay_ms: 0,
            cancel_after: None,
        },
        Client {
            name: "hana",
            prompt: "Why sans-IO?",
            delay_ms: 0,
            cancel_after: None,
        },
        Client {
            name: "ivan",
            prompt: "What is Rust?",
            delay_ms: 0,
            cancel_after: None,
        },
        // The late joiner: asks while "What is Rust?" is mid-answer.
        Client {
            name: "jo",
            prompt: "What is Rust?",
            delay_ms: 250,
            cancel_after: None,
        },
    ];

    let mut tasks = Vec::new();
    for c in clients {
        let m = manager.clone();
        tasks.push(T::spawn(async move {
            T::sleep(Duration::from_millis(c.delay_ms)).await;
            run_client::<T>(m, c, start).await
        }));
    }
    // Live gauges while the burst runs; the task stops at its next tick once
    // the burst is over (dropping a task's handle detaches it on tokio).
    let burst_over = Arc::new(AtomicBool::new(false));
    let gauges = {
        let m = manager.clone();
        let over = Arc::clone(&burst_over);
        T::spawn(async move {
            while !over.load(SeqCst) {
                T::sleep(Duration::from_millis(200)).await;
                let s = m.stats();
                println!(
                    "[{:>5} ms] stats: queued {} preparing {} waiting {} streaming {} readers {}",
                    ms(),
                    s.queued,
                    s.preparing,
                    s.waiting_for_stream,
                    s.streaming,
                    s.readers
                );
            }
        })
    };
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await);
    }
    burst_over.store(true, SeqCst);
    gauges.await;

    // After the burst: the same question again is served from the cache.
    let again = Client {
        name: "kim",
        prompt: "What is Rust?",
        delay_ms: 0,
        cancel_after: None,
    };
    reports.push(run_client::<T>(manager.clone(), again, start).await);

    println!("\nsummary");
    println!(
        "{:<6} {:<20} {:<7} {:>10} {:>7} {:>9}  outcome",
        "client", "prompt", "flight", "first tok", "tokens", "total"
    );
    for r in &reports {
        println!(
            "{:<6} {:<20} {:<7} {:>10} {:>7} {:>9}  {}",
            r.name,
            r.prompt,
            r.flight,
            r.first_token
                .map_or("-".to_owned(), |d| format!("{} ms", d.as_millis())),
            r.tokens,
            format!("{} ms", r.total.as_millis()),
            r.outcome,
        );
    }
    let totals = manager.stats().totals;
    println!(
        "\n{} requests, {} upstream streams started ({} upstream calls), {} coalesced, {} cache hits, \
         {} completed, {} cancelled",
        totals.submitted,
        totals.streams_started,
        upstream_calls.load(SeqCst),
        totals.coalesced,
        totals.cache_hits,
        totals.completed,
        totals.cancelled,
    );
    manager.shutdown().await;
    let tasks = manager.tasks();
    println!(
        "shutdown: {} tasks spawned, {} finished, in {} ms",
        tasks.spawned,
        tasks.finished,
        ms()
    );
}

async fn run_client<T: TestRt>(m: Manager<String, T::R>, c: Client, start: Instant) -> Report {
    let ms = || start.elapsed().as_millis();
    let submitted = Instant::now();
    let mut stream = m
        .submit_and_stream(c.prompt, c.prompt.to_owned())
        .expect("submit");
    let id = stream.id();
    let flight = match m.status(id).and_then(|s| s.flight) {
        Some(f) => f.to_string(),
        None => "cache".to_owned(),
    };
    println!(
        "[{:>5} ms] {:<5} asks {:?} ({id} on {flight})",
        ms(),
        c.name,
        c.prompt
    );
    let mut first_token = None;
    let mut tokens = 0;
    let mut text = String::new();
    let outcome = loop {
        match stream.next_item().await {
            Some(Item::Chunk(token)) => {
                tokens += 1;
                text.push_str(std::str::from_utf8(&token).unwrap_or("?"));
                if first_token.is_none() {
                    first_token = Some(submitted.elapsed());
                    println!(
                        "[{:>5} ms] {:<5} first token {:?}",
                        ms(),
                        c.name,
                        text.trim()
                    );
                }
                if Some(tokens) == c.cancel_after {
                    println!(
                        "[{:>5} ms] {:<5} cancels after {tokens} tokens",
                        ms(),
                        c.name
                    );
                    m.cancel(id).expect("cancel");
                }
            }
            Some(Item::End(outcome)) => break outcome,
            None => unreachable!("a stream ends with exactly one End"),
        }
    };
    println!(
        "[{:>5} ms] {:<5} {outcome}: {:?}",
        ms(),
        c.name,
        text.trim()
    );
    Report {
        name: c.name,
        prompt: c.prompt,
        flight,
        first_token,
        tokens,
        outcome,
        total: submitted.elapsed(),
    }
}
