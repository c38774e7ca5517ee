//! The seed scenarios of the Go original, run on the pure core in virtual time.
//!
//! A tiny driver plays the part of the runtime: preparations take a few
//! milliseconds, the upstream emits a token every few milliseconds, clients attach,
//! read, cancel and drop. Time is virtual, so the whole run takes milliseconds of
//! real time and prints the same timeline every time.
//!
//! Run it with `cargo run --release -p flightdeck-core --example seeds`.

use std::collections::BTreeMap;
use std::time::Duration;

use flightdeck_core::{
    Action, Bytes, Config, FlightId, Item, Key, Machine, Outcome, Prepared, Readiness,
    RequestError, RequestId, Route, Time,
};

/// Something scheduled to happen at a virtual time.
#[derive(Clone, Copy, Debug)]
enum Event {
    Prepared(FlightId),
    Chunk(FlightId, usize),
    UpstreamEnd(FlightId),
    Submit(&'static str, &'static str),
    Attach(&'static str),
    Cancel(&'static str),
    Drop(&'static str),
}

struct Sim {
    machine: Machine,
    now: Time,
    verbose: bool,
    prep: Duration,
    token: Duration,
    tokens: usize,
    events: BTreeMap<(Time, u64), Event>,
    seq: u64,
    names: BTreeMap<&'static str, RequestId>,
    label: BTreeMap<RequestId, String>,
    reads: BTreeMap<RequestId, Vec<Item>>,
    streams_started: usize,
    max_preparing: usize,
    max_streaming: usize,
    lines: usize,
    last_end: Time,
}

impl Sim {
    fn new(config: Config, prep_ms: u64, token_ms: u64, tokens: usize, verbose: bool) -> Self {
        Sim {
            machine: Machine::new(config).expect("valid config"),
            now: Time::ZERO,
            verbose,
            prep: Duration::from_millis(prep_ms),
            token: Duration::from_millis(token_ms),
            tokens,
            events: BTreeMap::new(),
            seq: 0,
            names: BTreeMap::new(),
            label: BTreeMap::new(),
            reads: BTreeMap::new(),
            streams_started: 0,
            max_preparing: 0,
            max_streaming: 0,
            lines: 0,
            last_end: Time::ZERO,
        }
    }

    fn at(&mut self, ms: u64, event: Event) {
        self.schedule(Time::from_millis(ms), event);
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn say(&mut self, line: impl AsRef<str>) {
        self.lines += 1;
        if self.verbose || self.lines <= 12 {
            println!("  [{:>9}] {}", self.now.to_string(), line.as_ref());
        } else if self.lines == 13 {
            println!("  ... (timeline condensed; checkpoints below)");
        }
    }

    fn who(&self, id: RequestId) -> String {
        self.label
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// Runs until nothing is scheduled and no deadline is pending.
    fn run(&mut self, mut checkpoint: impl FnMut(&mut Sim) -> bool) {
        let mut checked = false;
        loop {
            let next_event = self.events.keys().next().map(|(t, _)| *t);
            let next_deadline = self.machine.poll_timeout();
            let next = match (next_event, next_deadline) {
                (Some(e), Some(d)) => e.min(d),
                (Some(e), None) => e,
                (None, Some(d)) => d,
                (None, None) => break,
            };
            self.now = next;
            if next_deadline == Some(next) {
                self.machine.handle_timeout(next);
                self.drain();
            }
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let event = entry.remove();
                self.apply(event);
                self.drain();
            }
            if !checked && checkpoint(self) {
                checked = true;
            }
        }
        // Every deadline has passed (retentions, cache TTL): contract rule 21.
        println!(
            "  after the last deadline ({}): machine empty = {}",
            self.now,
            self.machine.is_empty()
        );
    }

    fn apply(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Submit(name, key) => match self.machine.submit(now, Key::from(key)) {
                Ok(sub) => {
                    self.names.insert(name, sub.request);
                    self.label
                        .insert(sub.request, format!("{name}({})", sub.request));
                    let how = match sub.route {
                        Route::NewFlight(f) => {
                            let pos = self
                                .machine
                                .status(sub.request)
                                .and_then(|s| s.queue_position);
                            match pos {
                                Some(p) => format!("new flight {f}, queue position {p}"),
                                None => format!("new flight {f}"),
                            }
                        }
                        Route::Joined(f) => format!("joined live flight {f}"),
                        Route::Cached => "served from the cache".to_string(),
                        _ => "routed".to_string(),
                    };
                    let who = self.who(sub.request);
                    self.say(format!("{who} submitted {key:?}: {how}"));
                }
                Err(e) => self.say(format!("{name} submit refused: {e}")),
            },
            Event::Attach(name) => {
                let Some(&id) = self.names.get(name) else {
                    return;
                };
                let who = self.who(id);
                match self.machine.attach(now, id) {
                    Ok(()) => {
                        self.say(format!("{who} client attached"));
                        self.reads.entry(id).or_default();
                        self.read(id);
                    }
                    Err(RequestError::NotFound) => {
                        self.say(format!("{who} client attached: not found (record gone)"));
                    }
                    Err(e) => self.say(format!("{who} attach refused: {e}")),
                }
            }
            Event::Cancel(name) => {
                let Some(&id) = self.names.get(name) else {
                    return;
                };
                let who = self.who(id);
                match self.machine.cancel(now, id) {
                    Ok(()) => self.say(format!("{who} cancelled by id")),
                    Err(e) => self.say(format!("{who} cancel: {e}")),
                }
            }
            Event::Drop(name) => {
                let Some(&id) = self.names.get(name) else {
                    return;
                };
                let who = self.who(id);
                if self.machine.detach(now, id).is_ok() {
                    self.say(format!("{who} client dropped its stream"));
                }
            }
            Event::Prepared(f) => {
                if self
                    .machine
                    .handle_prepared(now, f, Ok(Prepared::CACHEABLE))
                    .is_ok()
                {
                    self.say(format!("{f} prepared, preparation slot released"));
                }
            }
            Event::Chunk(f, i) => {
                let data = Bytes::from(format!("tok{i} "));
                if self.machine.handle_chunk(now, f, data).is_ok() {
                    if i + 1 < self.tokens {
                        self.schedule(now + self.token, Event::Chunk(f, i + 1));
                    } else {
                        self.schedule(now + self.token, Event::UpstreamEnd(f));
                    }
                }
            }
            Event::UpstreamEnd(f) => {
                if self.machine.handle_upstream_end(now, f, Ok(())).is_ok() {
                    self.say(format!("{f} upstream finished, stream slot released"));
                }
            }
        }
    }

    /// Reads until the machine says `Pending` (it will send a `Wake`) or `Closed`,
    /// exactly as a result stream's `poll_next` does.
    fn read(&mut self, id: RequestId) {
        loop {
            let mut items = Vec::new();
            match self.machine.read(id, &mut items) {
                Ok(Readiness::Ready) => {}
                _ => return,
            }
            for item in &items {
                if let Item::End(outcome) = item {
                    self.last_end = self.now;
                    let got = self.reads.get(&id).map_or(0, Vec::len);
                    let who = self.who(id);
                    self.say(format!(
                        "{who} read its last item: {outcome} after {got} chunks"
                    ));
                }
            }
            let ended = matches!(items.last(), Some(Item::End(_)));
            self.reads.entry(id).or_default().extend(items);
            if ended {
                // Done reading: the client drops its stream, which removes the record.
                let _ = self.machine.detach(self.now, id);
                return;
            }
        }
    }

    /// Carries out every queued action, as a runtime adapter would.
    fn drain(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::StartPreparation { flight, .. } => {
                    self.say(format!("{flight} preparing"));
                    self.schedule(self.now + self.prep, Event::Prepared(flight));
                }
                Action::StartStream { flight } => {
                    self.streams_started += 1;
                    self.say(format!("{flight} upstream stream started"));
                    self.schedule(self.now + self.token, Event::Chunk(flight, 0));
                }
                Action::Abort { flight, work } => {
                    self.say(format!("{flight} {work:?} aborted"));
                    self.events.retain(|_, e| !matches!(e,
                        Event::Prepared(f) | Event::Chunk(f, _) | Event::UpstreamEnd(f) if *f == flight));
                }
                Action::Wake { request } => self.read(request),
                _ => {}
            }
        }
        let s = self.machine.stats();
        self.max_preparing = self.max_preparing.max(s.preparing);
        self.max_streaming = self.max_streaming.max(s.streaming);
        if let Err(violation) = self.machine.check_invariants() {
            panic!("{violation}");
        }
    }

    fn outcome_of(&self, name: &str) -> Option<&Outcome> {
        let id = self.names.get(name)?;
        match self.reads.get(id)?.last()? {
            Item::End(o) => Some(o),
            Item::Chunk(_) => None,
        }
    }
}

fn show(outcome: Option<&Outcome>) -> String {
    outcome.map_or_else(|| "no end item".to_string(), ToString::to_string)
}

fn config(prep: usize, streams: usize) -> Config {
    Config {
        max_concurrent_requests: prep,
        max_concurrent_streams: streams,
        ..Config::default()
    }
}

fn decoupling() {
    println!(
        "\n== 1. Implicit decoupling: 100 distinct requests, limits 10 preparing / 5 streaming"
    );
    let mut sim = Sim::new(config(10, 5), 10, 10, 20, false);
    let keys: Vec<&'static str> = (0..100)
        .map(|i| &*Box::leak(format!("question {i}").into_boxed_str()))
        .collect();
    let names: Vec<&'static str> = (0..100)
        .map(|i| &*Box::leak(format!("c{i}").into_boxed_str()))
        .collect();
    for i in 0..100 {
        sim.at(0, Event::Submit(names[i], keys[i]));
        sim.at(0, Event::Attach(names[i]));
    }
    let mut prepared_at = None;
    sim.run(|sim| {
        let s = sim.machine.stats();
        if s.queued == 0 && s.preparing == 0 && prepared_at.is_none() {
            prepared_at = Some(sim.now);
            println!(
                "  checkpoint at {}: all 100 prepared; streaming {}, waiting for a stream slot {}",
                sim.now, s.streaming, s.waiting_for_stream
            );
            return true;
        }
        false
    });
    let done = names
        .iter()
        .filter(|n| sim.outcome_of(n) == Some(&Outcome::Completed))
        .count();
    println!(
        "  summary: 100 requests, all prepared by {} (max {} preparing, max {} streaming), {} upstream streams, {done} completed, the last at {}",
        prepared_at.map_or("never".into(), |t| t.to_string()),
        sim.max_preparing,
        sim.max_streaming,
        sim.streams_started,
        sim.last_end
    );
}

fn herd() {
    println!("\n== 2. Thundering herd: 20 identical requests");
    let mut sim = Sim::new(config(10, 5), 20, 15, 5, false);
    let names: Vec<&'static str> = (0..20)
        .map(|i| &*Box::leak(format!("c{i}").into_boxed_str()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        // Clients arrive over 100 ms; the later ones join mid-stream and replay.
        sim.at(
            i as u64 * 5,
            Event::Submit(name, "what is the meaning of life?"),
        );
        sim.at(i as u64 * 5, Event::Attach(name));
    }
    sim.run(|_| false);
    let full: Vec<usize> = names
        .iter()
        .filter_map(|n| sim.names.get(n).and_then(|id| sim.reads.get(id)))
        .map(|items| items.iter().filter(|i| matches!(i, Item::Chunk(_))).count())
        .collect();
    let totals = sim.machine.stats().totals;
    println!(
        "  summary: 20 requests -> {} flight, {} upstream stream, {} joined live; chunks per reader: min {} max {}",
        totals.flights,
        sim.streams_started,
        totals.coalesced,
        full.iter().min().unwrap_or(&0),
        full.iter().max().unwrap_or(&0)
    );
}

fn cancel_then_attach() {
    println!("\n== 3. Cancel, then attach (the pre-emptive cleanup bug of the Go original)");
    let mut sim = Sim::new(config(10, 5), 10, 10, 5, true);
    sim.at(0, Event::Submit("alice", "slow question"));
    sim.at(1, Event::Cancel("alice"));
    sim.at(1000, Event::Attach("alice"));
    sim.at(1001, Event::Cancel("alice")); // idempotent
    sim.at(2000, Event::Submit("bob", "another question"));
    sim.at(2001, Event::Cancel("bob"));
    sim.at(40_000, Event::Attach("bob")); // after cancelled_retention (30 s)
    sim.run(|_| false);
    println!(
        "  summary: attach 1 s after cancel read \"{}\" (never not-found); attach after the retention: record gone",
        show(sim.outcome_of("alice"))
    );
}

fn cancel_mid_stream() {
    println!("\n== 4. Cancel mid-stream (the muted messenger bug of the Go original)");
    let mut sim = Sim::new(config(10, 5), 10, 20, 10, true);
    sim.at(0, Event::Submit("carol", "long answer"));
    sim.at(0, Event::Attach("carol"));
    sim.at(75, Event::Cancel("carol"));
    sim.run(|_| false);
    let id = sim.names["carol"];
    let items = &sim.reads[&id];
    println!(
        "  summary: carol read {} chunks then \"{}\" as her last item; stream slots in use now {}",
        items.len() - 1,
        show(sim.outcome_of("carol")),
        sim.machine.stats().stream_slots_in_use
    );
}

fn last_member_leaves() {
    println!("\n== 5. The last member leaves (the zombie slot of the Go original)");
    let mut sim = Sim::new(config(10, 1), 10, 20, 10, true);
    sim.at(0, Event::Submit("dave", "shared question"));
    sim.at(0, Event::Attach("dave"));
    sim.at(0, Event::Submit("erin", "shared question"));
    sim.at(0, Event::Attach("erin"));
    sim.at(0, Event::Submit("frank", "waiting question"));
    sim.at(0, Event::Attach("frank"));
    sim.at(50, Event::Cancel("dave"));
    sim.at(90, Event::Drop("erin"));
    sim.run(|_| false);
    println!(
        "  summary: dave {}; erin dropped (flight aborted, slot handed to frank in the same step); frank {}",
        show(sim.outcome_of("dave")),
        show(sim.outcome_of("frank"))
    );
}

fn main() {
    println!("flightdeck seed scenarios on the pure core, in virtual time");
    decoupling();
    herd();
    cancel_then_attach();
    cancel_mid_stream();
    last_member_leaves();
    println!("\nEvery step above was followed by Machine::check_invariants(); all held.");
}
