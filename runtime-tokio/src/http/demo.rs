//! `flightdeck --demo`: the whole service at work over real HTTP, then exit.
//!
//! It starts the gateway on a loopback port (127.0.0.1:0) and runs clients
//! against it through HTTP, exactly as curl would: a burst of concurrent
//! questions with duplicates (they share one upstream stream), a client that
//! cancels mid-stream by id (it reads `cancelled` as its last event, and its
//! flight's upstream is aborted since nobody else waits for it), a late joiner
//! (it replays the answer from the first token), and a repeat after the burst
//! (served from the cache). It prints each client's timeline and a summary read
//! back from `/v1/stats` and `/metrics`, checks that the members of each flight
//! read identical answers, shuts the server down gracefully, and returns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use super::sse::SseDecoder;
use super::{serve, Gateway, GatewayConfig};

/// One demo client.
#[derive(Clone, Copy)]
struct Client {
    name: &'static str,
    prompt: &'static str,
    /// Tokens the simulated model is asked for.
    tokens: u64,
    /// When to start.
    start: Start,
    /// Cancel by id after reading this many chunks.
    cancel_after: Option<usize>,
}

/// What one client saw.
#[derive(Debug)]
struct Seen {
    name: &'static str,
    prompt: &'static str,
    route: String,
    id: u64,
    first_chunk: Option<Duration>,
    text: String,
    chunks: usize,
    terminal: String,
    total: Duration,
}

/// When a client starts: with the burst, or on another client's progress (so
/// that the story holds however fast or loaded the machine is).
#[derive(Clone, Copy)]
enum Start {
    /// At once, with the burst.
    Burst,
    /// Once this client has read this many tokens.
    AfterTokens(&'static str, usize),
    /// Once these clients have read their whole answers.
    AfterEnds(&'static [&'static str]),
}

const CLIENTS: [Client; 10] = [
    client("ana", "What is Rust?", 24, Start::Burst, None),
    client("ben", "What is Rust?", 24, Start::Burst, None),
    client("cleo", "What is Rust?", 24, Start::Burst, None),
    client("dev", "What is coalescing?", 24, Start::Burst, None),
    client("eve", "What is coalescing?", 24, Start::Burst, None),
    client("finn", "Why sans-IO?", 24, Start::Burst, None),
    client(
        "gus",
        "Tell me a very long story",
        200,
        Start::Burst,
        Some(6),
    ),
    client("hana", "What is a flight?", 24, Start::Burst, None),
    // Joins the live "What is Rust?" flight mid-stream; replays from token 0.
    client(
        "ivy",
        "What is Rust?",
        24,
        Start::AfterTokens("ana", 8),
        None,
    ),
    // Asks again once that flight completed: the cache answers.
    client(
        "jo",
        "What is coalescing?",
        24,
        Start::AfterEnds(&["dev", "eve"]),
        None,
    ),
];

const fn client(
    name: &'static str,
    prompt: &'static str,
    tokens: u64,
    start: Start,
    cancel_after: Option<usize>,
) -> Client {
    Client {
        name,
        prompt,
        tokens,
        start,
        cancel_after,
    }
}

/// Each client's progress: tokens read, and whether its stream ended.
type Progress = BTreeMap<&'static str, (usize, bool)>;

/// Waits until `start` holds.
async fn wait_for_start(start: Start, progress: &mut watch::Receiver<Progress>) {
    let ready = |p: &Progress| match start {
        Start::Burst => true,
        Start::AfterTokens(who, n) => p.get(who).is_some_and(|&(read, _)| read >= n),
        Start::AfterEnds(whom) => whom
            .iter()
            .all(|who| p.get(who).is_some_and(|&(_, end)| end)),
    };
    // An error means every sender is gone: start anyway rather than hang.
    let _ = progress.wait_for(ready).await;
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Prints a timeline line, prefixed with the time since the start.
fn say(start: Instant, who: &str, what: &str) {
    println!("{:>6} ms  {who:<5} {what}", ms(start.elapsed()));
}

/// Runs the demo with `config` (the simulated model answers the seeds' API
/// unless a seeds upstream is configured). Returns once the server has shut down.
///
/// # Errors
/// A server or client error, or a result that contradicts what the demo shows
/// (members of one flight reading different answers, more upstream streams than
/// distinct questions).
pub async fn run(config: GatewayConfig) -> Result<(), String> {
    let gateway = Gateway::connect(config).await.map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let base = format!("http://{address}");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, gateway.clone(), async {
        let _ = stopped.await;
    }));
    let model = if gateway.config().seeds_upstream.is_some() {
        "seeds upstream"
    } else {
        "simulated model"
    };
    println!(
        "flightdeck demo: gateway on {base} ({model}), {} clients\n",
        CLIENTS.len()
    );

    let start = Instant::now();
    let http = reqwest::Client::new();
    let base = Arc::new(base);
    let (progress, _) = watch::channel(Progress::new());
    let mut tasks = Vec::new();
    for client in CLIENTS {
        let http = http.clone();
        let base = Arc::clone(&base);
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            wait_for_start(client.start, &mut progress.subscribe()).await;
            let seen = run_client(&http, &base, start, client, &progress).await;
            // Whatever happened, this client will not progress any more.
            progress.send_modify(|p| p.entry(client.name).or_default().1 = true);
            seen
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.map_err(|e| e.to_string())??);
    }
    let stats: Value = get_json(&http, &format!("{base}/v1/stats")).await?;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;

    let report = summary(&seen, &stats, &metrics)?;
    println!("{report}");

    let _ = stop.send(());
    server
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("server error: {e}"))?;
    println!(
        "server shut down gracefully; tasks still running: {}",
        gateway.manager().tasks_running()
    );
    Ok(())
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    http.get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

async fn run_client(
    http: &reqwest::Client,
    base: &str,
    start: Instant,
    client: Client,
    progress: &watch::Sender<Progress>,
) -> Result<Seen, String> {
    let began = Instant::now();
    let payload = json!({"prompt": client.prompt, "tokens": client.tokens});
    let placed: Value = http
        .post(format!("{base}/v1/requests"))
        .json(&json!({ "payload": payload }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let id = placed["id"].as_u64().ok_or("no id in the answer")?;
    let route = placed["route"].as_str().unwrap_or("?").to_owned();
    let position = match placed["position"].as_u64() {
        Some(p) => format!(", queue position {p}"),
        None => String::new(),
    };
    say(
        start,
        client.name,
        &format!(
            "asks {:?} -> request {id}, {route}{position}",
            client.prompt
        ),
    );

    let mut response = http
        .get(format!("{base}/v1/requests/{id}/stream"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?;
    let mut decoder = SseDecoder::default();
    let mut seen = Seen {
        name: client.name,
        prompt: client.prompt,
        route,
        id,
        first_chunk: None,
        text: String::new(),
        chunks: 0,
        terminal: String::new(),
        total: Duration::ZERO,
    };
    let mut cancelled = false;
    'read: while let Some(bytes) = response.chunk().await.map_err(|e| e.to_string())? {
        for event in decoder.push(&bytes) {
            if event.event == "chunk" {
                if seen.first_chunk.is_none() {
                    let ttfc = began.elapsed();
                    seen.first_chunk = Some(ttfc);
                    say(
                        start,
                        client.name,
                        &format!("first token after {} ms", ms(ttfc)),
                    );
                }
                seen.chunks += 1;
                seen.text.push_str(&event.data);
                let read = seen.chunks;
                progress.send_modify(|p| p.entry(client.name).or_default().0 = read);
                if client.cancel_after == Some(seen.chunks) && !cancelled {
                    cancelled = true;
                    let answer: Value = http
                        .post(format!("{base}/v1/requests/{id}/cancel"))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?;
                    say(
                        start,
                        client.name,
                        &format!("cancels after {} tokens -> {answer}", seen.chunks),
                    );
                }
            } else {
                seen.terminal = event.event;
                break 'read;
            }
        }
    }
    seen.total = began.elapsed();
    say(
        start,
        client.name,
        &format!(
            "ends: {} after {} tokens, {} ms",
            seen.terminal,
            seen.chunks,
            ms(seen.total)
        ),
    );
    Ok(seen)
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn summary(seen: &[Seen], stats: &Value, metrics: &str) -> Result<String, String> {
    let mut out = String::from("\nclients\n");
    let mut answers: BTreeMap<&str, Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        answers.entry(s.prompt).or_default().push(s);
        let ttfc = s
            .first_chunk
            .map_or("-".to_owned(), |d| format!("{} ms", ms(d)));
        let _ = writeln!(
            out,
            "  {:<5} request {:>2}  {:<10} first token {:>7}  {:>3} tokens  {}",
            s.name, s.id, s.route, ttfc, s.chunks, s.terminal
        );
    }
    for (prompt, members) in &answers {
        let complete: Vec<&&Seen> = members
            .iter()
            .filter(|s| s.terminal == "completed")
            .collect();
        if complete.windows(2).any(|w| w[0].text != w[1].text) {
            return Err(format!("members asking {prompt:?} read different answers"));
        }
    }
    let totals = &stats["totals"];
    let streams = totals["streams_started"].as_u64().unwrap_or(0);
    let distinct = answers.len() as u64;
    if streams > distinct {
        return Err(format!(
            "{streams} upstream streams for {distinct} distinct questions"
        ));
    }
    let (mut new_flight, mut followers) = (Vec::new(), Vec::new());
    for s in seen {
        if let Some(d) = s.first_chunk {
            if s.route == "new_flight" {
                new_flight.push(d);
            } else {
                followers.push(d);
            }
        }
    }
    let mean = |v: &[Duration]| -> String {
        if v.is_empty() {
            return "-".to_owned();
        }
        let total: Duration = v.iter().sum();
        format!(
            "{} ms",
            ms(total / u32::try_from(v.len()).unwrap_or(u32::MAX))
        )
    };
    let _ = writeln!(out, "\nsummary");
    let _ = writeln!(out, "  requests submitted        {}", totals["submitted"]);
    let _ = writeln!(out, "  distinct questions        {distinct}");
    let _ = writeln!(out, "  upstream streams started  {streams}");
    let _ = writeln!(out, "  coalesced (joined)        {}", totals["coalesced"]);
    let _ = writeln!(out, "  cache hits                {}", totals["cache_hits"]);
    let _ = writeln!(
        out,
        "  completed / cancelled     {} / {}",
        totals["completed"], totals["cancelled"]
    );
    let _ = writeln!(
        out,
        "  upstreams aborted         {} (nobody waited any more)",
        metric(metrics, "flightdeck_upstream_aborted_total")
    );
    let _ = writeln!(
        out,
        "  first token, new flights  {} (mean)",
        mean(&new_flight)
    );
    let _ = writeln!(
        out,
        "  first token, joined/cache {} (mean)",
        mean(&followers)
    );
    let _ = writeln!(out, "  every member of a flight read the same answer: yes");
    Ok(out)
}
