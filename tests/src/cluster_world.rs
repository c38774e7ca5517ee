//! Two instances over one key, with a simulated Redis, explored exhaustively
//! (the cluster bound of issue 9; contract rules 25-29 and invariant 9).
//!
//! Each instance is a [`Driver`] (a machine with `cluster: true`, checked after
//! every input) plus what its real driver would hold toward the coordinator for
//! each flight (a [`Link`]: a claim to send, an owner's writes still to make, a
//! follower's cursor in the remote log). [`Redis`] is the coordinator, reduced
//! to what the cluster layer's scripts do atomically: the lease (holder and
//! generation), the generation counter, one log per generation with its end
//! marker, and the cache entry. Every write is fenced: it lands only while the
//! writer holds the lease of its generation.
//!
//! The explorer ([`crate::cluster_explore`]) interleaves every step either side can
//! take: submits (with the client attaching at once), reads and cancels on
//! either instance; a claim executed at Redis and answered; an owner's next
//! write delivered (or refused: fenced); a follower's next log entry, end, or
//! the discovery that its owner's lease is gone; an owner noticing that its
//! lease was lost (renewal); the user's preparation and upstream; the lease
//! lapsing at any moment (a stalled or dead owner); either instance crashing at
//! any moment (the machine is gone, its lease stays until it lapses); and time
//! jumping to the next deadline. After every transition it checks:
//!
//! - each machine's invariants and the driver's action checks
//!   ([`Driver::try_handle`]);
//! - the lease has one holder, and every generation's log was written by its
//!   claimant only, as a prefix of what that owner's upstream produced, in
//!   order, complete when its end says completed
//!   ([invariant 9](flightdeck_core::contract#invariant-9), rules
//!   [25](flightdeck_core::contract#rule-25), [26](flightdeck_core::contract#rule-26));
//! - every reader's chunks are a prefix of its flight's source (its own
//!   upstream, the generation it follows, or the cached result), and complete
//!   when it ends completed ([rule 27](flightdeck_core::contract#rule-27));
//! - every reader gets exactly one terminal item and nothing after it
//!   ([rule 19](flightdeck_core::contract#rule-19)).
//!
//! In every state where no user work runs, a copy is run to quiescence
//! ([`ClusterWorld::finish`]: claims answered, writes and logs delivered,
//! deadlines passing, nothing else happening): every client of a surviving
//! instance must then have its terminal item, and every surviving machine must
//! be empty with no link left (no request waits forever,
//! [rule 28](flightdeck_core::contract#rule-28), [rule 21](flightdeck_core::contract#rule-21)).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use flightdeck_core::{
    Action, Bytes, Config, FlightId, Input, Item, Key, Outcome, Prepared, Readiness, Reply,
    RequestId, Role, Route, Time, Work,
};

use crate::driver::{Driver, Violation};

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($fmt)+)));
        }
    };
}

/// The one key both instances serve.
fn key() -> Key {
    Key::from("k")
}

/// One write an owner's driver still has to make, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Write {
    /// Append these chunks to the generation's log.
    Append(Vec<Bytes>),
    /// Write the end marker, drop the lease, and fill the cache if cacheable.
    End {
        /// How the owner's flight ended.
        outcome: Outcome,
        /// Whether the result may be cached.
        cacheable: bool,
    },
}

/// What an instance's driver holds toward the coordinator for one flight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// The machine emitted `Claim`; the claim is not answered yet.
    Claiming,
    /// Owner of generation `gen`, with the writes not made yet. `ended` once
    /// the machine's flight ended (its writes may still be in flight).
    Owner {
        /// The generation (fencing token).
        gen: u64,
        /// Writes not made yet, in order.
        pending: VecDeque<Write>,
        /// The machine's flight has ended.
        ended: bool,
    },
    /// Following generation `gen`'s log, `cursor` chunks delivered.
    Following {
        /// The generation followed.
        gen: u64,
        /// Chunks of the log delivered to the machine.
        cursor: usize,
    },
}

/// One instance: a machine (behind the checking test driver) and its links.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Instance {
    /// The machine and the driver's checks.
    pub driver: Driver,
    /// The driver's links to the coordinator, by flight.
    pub links: BTreeMap<FlightId, Link>,
}

/// One generation's log in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Log {
    /// The claimant: instance and flight.
    pub owner: (u8, FlightId),
    /// The chunks appended, in order.
    pub chunks: Vec<Bytes>,
    /// The end marker, once written.
    pub end: Option<Outcome>,
}

/// The simulated coordinator: what the Redis scripts keep for the key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Redis {
    /// The lease: holder instance and generation.
    pub lease: Option<(u8, u64)>,
    /// The generation counter (the last generation handed out).
    pub generation: u64,
    /// One log per generation.
    pub logs: BTreeMap<u64, Log>,
    /// The cached result, if any.
    pub cache: Option<Vec<Bytes>>,
}

/// Where a flight's chunks come from (what its readers must read).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Its own upstream (an owner).
    Upstream,
    /// The log of this generation (a follower).
    Generation(u64),
    /// The cluster's cache.
    Cache(Vec<Bytes>),
}

/// One client: a request submitted on an instance and attached at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The instance it talks to.
    pub inst: u8,
    /// Its request.
    pub request: RequestId,
    /// How the submit was routed.
    pub route: Route,
    /// Every item read, in order.
    pub items: Vec<Item>,
    /// Its last read was `Pending` and no wake came since.
    pub parked: bool,
    /// It read its terminal item.
    pub closed: bool,
    /// It cancelled.
    pub cancelled: bool,
    /// Its instance crashed: it hears nothing more (and is not owed anything).
    pub gone: bool,
}

/// An upstream's output on one instance, for one flight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// Chunks produced, in order.
    pub chunks: Vec<Bytes>,
    /// It completed successfully.
    pub completed: bool,
}

/// One step of the cluster world. Flights are named by id (ops are
/// enumerated from the state, so each names something that exists).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClusterOp {
    /// A client on this instance submits the key and attaches.
    Submit(u8),
    /// Client `n` reads.
    Read(u8),
    /// Client `n` cancels.
    Cancel(u8),
    /// Redis executes this flight's claim, and the answer is reported.
    Claim(u8, FlightId),
    /// The owner's next write reaches Redis (or is refused: fenced).
    Flush(u8, FlightId),
    /// The follower's next log entry, end, or lost owner reaches its machine.
    Follow(u8, FlightId),
    /// The owner's renewal finds its lease lost.
    Renew(u8, FlightId),
    /// The preparation of this flight succeeds.
    Prepare(u8, FlightId),
    /// The upstream of this flight produces its next chunk.
    Chunk(u8, FlightId),
    /// The upstream of this flight completes.
    UpstreamOk(u8, FlightId),
    /// The lease lapses (its holder is dead or stalled).
    Lapse,
    /// This instance crashes.
    Crash(u8),
    /// Time jumps to the earliest deadline of the surviving machines.
    NextDeadline,
}

/// The bound of a cluster exploration.
#[derive(Clone, Debug)]
pub struct ClusterBound {
    /// Both machines' configuration (`cluster` is set on).
    pub config: Config,
    /// Requests submitted in total, over both instances.
    pub requests: usize,
    /// Chunks each upstream produces before it completes.
    pub chunks: usize,
    /// Generations Redis hands out at most (claims that make an owner).
    pub generations: u64,
    /// Instance crashes at most.
    pub crashes: u8,
}

impl ClusterBound {
    /// The CI bound: 2 requests, 1 chunk per upstream, 2 generations, 1 crash,
    /// limits 1/1 and the explorer's distinct small timeouts.
    #[must_use]
    pub fn small() -> ClusterBound {
        ClusterBound {
            config: Config {
                cluster: true,
                ..crate::explore::config(1, 1)
            },
            requests: 2,
            chunks: 1,
            generations: 2,
            crashes: 1,
        }
    }
}

/// Two instances, Redis, clients and upstreams.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterWorld {
    /// Virtual time, shared by both machines.
    pub now: Time,
    /// The instances; `None` once crashed.
    pub instances: [Option<Instance>; 2],
    /// The coordinator.
    pub redis: Redis,
    /// Every client, in submission order.
    pub clients: Vec<Client>,
    /// Every upstream that ran, by instance and flight.
    pub upstreams: BTreeMap<(u8, FlightId), Upstream>,
    /// Where each flight's chunks come from, once its claim was answered.
    pub sources: BTreeMap<(u8, FlightId), Source>,
    /// Crashes so far.
    pub crashes: u8,
}

impl ClusterWorld {
    /// Two fresh instances with `config` (cluster mode forced on).
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn new(config: &Config) -> Result<Self, flightdeck_core::ConfigError> {
        let config = Config {
            cluster: true,
            ..config.clone()
        };
        let instance = Instance {
            driver: Driver::try_new(config)?,
            links: BTreeMap::new(),
        };
        Ok(ClusterWorld {
            now: Time::ZERO,
            instances: [Some(instance.clone()), Some(instance)],
            redis: Redis::default(),
            clients: Vec::new(),
            upstreams: BTreeMap::new(),
            sources: BTreeMap::new(),
            crashes: 0,
        })
    }

    fn instance(&self, i: u8) -> Option<&Instance> {
        self.instances.get(usize::from(i)).and_then(Option::as_ref)
    }

    pub(crate) fn alive(&self) -> impl Iterator<Item = (u8, &Instance)> + '_ {
        (0u8..2).filter_map(|i| self.instance(i).map(|inst| (i, inst)))
    }

    /// Feeds `input` to instance `i` at the world's time and carries out the
    /// actions (updating links, upstreams and clients).
    fn input(&mut self, i: u8, input: Input) -> Result<Reply, Violation> {
        let now = self.now;
        let Some(inst) = self.instances[usize::from(i)].as_mut() else {
            return Err(Violation(format!("input to crashed instance {i}")));
        };
        inst.driver.now = now;
        let reply = inst.driver.try_handle(input)?;
        for action in inst.driver.take() {
            self.on_action(i, &action)?;
        }
        Ok(reply)
    }

    fn on_action(&mut self, i: u8, action: &Action) -> Result<(), Violation> {
        let Some(inst) = self.instances[usize::from(i)].as_mut() else {
            return Ok(());
        };
        match action {
            Action::Claim { flight, key: k } => {
                ensure!(*k == key(), "Claim for a foreign key {k}");
                ensure!(
                    inst.links.insert(*flight, Link::Claiming).is_none(),
                    "Claim for {flight:?} on instance {i} while a link is open"
                );
            }
            Action::Publish { flight, chunks } => match inst.links.get_mut(flight) {
                Some(Link::Owner { pending, ended, .. }) if !*ended => {
                    pending.push_back(Write::Append(chunks.clone()));
                }
                other => {
                    return Err(Violation(format!(
                        "Publish for {flight:?} on {i}, which is no live owner: {other:?}"
                    )))
                }
            },
            Action::Release {
                flight,
                outcome,
                cacheable,
            } => match inst.links.get_mut(flight) {
                Some(Link::Owner { pending, ended, .. }) if !*ended => {
                    pending.push_back(Write::End {
                        outcome: outcome.clone(),
                        cacheable: *cacheable,
                    });
                }
                other => {
                    return Err(Violation(format!(
                        "Release for {flight:?} on {i}, which is no live owner: {other:?}"
                    )))
                }
            },
            Action::Abort {
                flight,
                work: Work::Stream,
            } => {
                if matches!(inst.links.get(flight), Some(Link::Following { .. })) {
                    inst.links.remove(flight);
                }
            }
            Action::FlightEnded { flight } => match inst.links.get_mut(flight) {
                Some(Link::Owner { pending, ended, .. }) if !pending.is_empty() => *ended = true,
                Some(_) => {
                    inst.links.remove(flight);
                }
                None => {}
            },
            Action::StartPreparation { flight, .. } => {
                self.upstreams.entry((i, *flight)).or_default();
            }
            Action::Wake { request } => {
                let c = self
                    .clients
                    .iter_mut()
                    .find(|c| c.inst == i && c.request == *request);
                let Some(c) = c else {
                    return Err(Violation(format!("Wake for unknown {request:?} on {i}")));
                };
                c.parked = false;
            }
            _ => {}
        }
        Ok(())
    }

    /// Every op enabled in this state under `bound`.
    #[must_use]
    pub fn enabled(&self, bound: &ClusterBound) -> Vec<ClusterOp> {
        let mut ops = Vec::new();
        let idx = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
        for (i, inst) in self.alive() {
            if self.clients.len() < bound.requests {
                ops.push(ClusterOp::Submit(i));
            }
            for (&f, link) in &inst.links {
                match link {
                    Link::Claiming => {
                        let owner_needed = self.redis.cache.is_none() && self.redis.lease.is_none();
                        if !owner_needed || self.redis.generation < bound.generations {
                            ops.push(ClusterOp::Claim(i, f));
                        }
                    }
                    Link::Owner {
                        gen,
                        pending,
                        ended,
                    } => {
                        if !pending.is_empty() {
                            ops.push(ClusterOp::Flush(i, f));
                        }
                        if !ended && self.redis.lease != Some((i, *gen)) {
                            ops.push(ClusterOp::Renew(i, f));
                        }
                    }
                    Link::Following { gen, cursor } => {
                        if self.follow_step(*gen, *cursor).is_some() {
                            ops.push(ClusterOp::Follow(i, f));
                        }
                    }
                }
            }
            for f in inst.driver.running_preparations() {
                ops.push(ClusterOp::Prepare(i, f));
            }
            for f in inst.driver.running_streams() {
                let made = self.upstreams.get(&(i, f)).map_or(0, |u| u.chunks.len());
                ops.push(if made < bound.chunks {
                    ClusterOp::Chunk(i, f)
                } else {
                    ClusterOp::UpstreamOk(i, f)
                });
            }
            if self.crashes < bound.crashes {
                ops.push(ClusterOp::Crash(i));
            }
        }
        for (n, c) in self.clients.iter().enumerate() {
            if c.gone {
                continue;
            }
            if !c.parked && !c.closed {
                ops.push(ClusterOp::Read(idx(n)));
            }
            if !c.cancelled && !c.closed {
                ops.push(ClusterOp::Cancel(idx(n)));
            }
        }
        if self.redis.lease.is_some() {
            ops.push(ClusterOp::Lapse);
        }
        if self.next_deadline().is_some() {
            ops.push(ClusterOp::NextDeadline);
        }
        ops
    }

    /// What a follower of `gen` at `cursor` would receive next, if anything.
    fn follow_step(&self, gen: u64, cursor: usize) -> Option<Input> {
        let flight = FlightId::from_raw(u64::MAX); // replaced by the caller
        let log = self.redis.logs.get(&gen)?;
        if let Some(data) = log.chunks.get(cursor) {
            return Some(Input::Chunk {
                flight,
                data: data.clone(),
            });
        }
        if let Some(outcome) = &log.end {
            return Some(Input::RemoteEnded {
                flight,
                outcome: outcome.clone(),
            });
        }
        // Nothing new: the owner is lost once its lease is gone.
        let held = self.redis.lease.is_some_and(|(_, g)| g == gen);
        (!held).then_some(Input::OwnerLost { flight })
    }

    fn next_deadline(&self) -> Option<Time> {
        self.alive()
            .filter_map(|(_, inst)| inst.driver.machine.poll_timeout())
            .min()
    }

    /// Applies one op, then checks the whole world.
    ///
    /// # Errors
    /// The first violation found.
    pub fn apply(&mut self, op: &ClusterOp) -> Result<(), Violation> {
        self.apply_op(op)?;
        self.check()
    }

    fn link(&self, i: u8, f: FlightId) -> Option<&Link> {
        self.instance(i).and_then(|inst| inst.links.get(&f))
    }

    fn set_link(&mut self, i: u8, f: FlightId, link: Option<Link>) {
        if let Some(inst) = self.instances[usize::from(i)].as_mut() {
            match link {
                Some(link) => inst.links.insert(f, link),
                None => inst.links.remove(&f),
            };
        }
    }

    fn expect_ok(reply: &Reply, what: &str) -> Result<(), Violation> {
        ensure!(*reply == Reply::Flight(Ok(())), "{what} refused: {reply:?}");
        Ok(())
    }

    fn apply_op(&mut self, op: &ClusterOp) -> Result<(), Violation> {
        match *op {
            ClusterOp::Submit(i) => {
                if let Reply::Submit(Ok(sub)) = self.input(i, Input::Submit { key: key() })? {
                    self.clients.push(Client {
                        inst: i,
                        request: sub.request,
                        route: sub.route,
                        items: Vec::new(),
                        parked: false,
                        closed: false,
                        cancelled: false,
                        gone: false,
                    });
                    let reply = self.input(
                        i,
                        Input::Attach {
                            request: sub.request,
                        },
                    )?;
                    ensure!(reply == Reply::Request(Ok(())), "attach refused: {reply:?}");
                }
            }
            ClusterOp::Read(n) => self.read(usize::from(n))?,
            ClusterOp::Cancel(n) => {
                let c = &self.clients[usize::from(n)];
                let (i, request) = (c.inst, c.request);
                if self.input(i, Input::Cancel { request })? == Reply::Request(Ok(())) {
                    self.clients[usize::from(n)].cancelled = true;
                }
            }
            ClusterOp::Claim(i, f) => self.claim(i, f)?,
            ClusterOp::Flush(i, f) => self.flush(i, f)?,
            ClusterOp::Follow(i, f) => {
                let Some(&Link::Following { gen, cursor }) = self.link(i, f) else {
                    return Ok(());
                };
                let Some(step) = self.follow_step(gen, cursor) else {
                    return Ok(());
                };
                let input = match step {
                    Input::Chunk { data, .. } => {
                        self.set_link(
                            i,
                            f,
                            Some(Link::Following {
                                gen,
                                cursor: cursor + 1,
                            }),
                        );
                        Input::Chunk { flight: f, data }
                    }
                    Input::RemoteEnded { outcome, .. } => {
                        self.set_link(i, f, None);
                        Input::RemoteEnded { flight: f, outcome }
                    }
                    _ => {
                        self.set_link(i, f, None);
                        Input::OwnerLost { flight: f }
                    }
                };
                let reply = self.input(i, input)?;
                Self::expect_ok(&reply, "a follower's log entry")?;
            }
            ClusterOp::Renew(i, f) => {
                self.set_link(i, f, None);
                let reason = "lease lost".to_owned();
                let reply = self.input(i, Input::Fenced { flight: f, reason })?;
                Self::expect_ok(&reply, "fencing a live owner")?;
            }
            ClusterOp::Prepare(i, flight) => {
                let result = Ok(Prepared::CACHEABLE);
                let reply = self.input(i, Input::Prepared { flight, result })?;
                Self::expect_ok(&reply, "a preparation")?;
            }
            ClusterOp::Chunk(i, flight) => {
                let up = self.upstreams.entry((i, flight)).or_default();
                let data = Bytes::from(format!("i{i}f{}c{};", flight.raw(), up.chunks.len()));
                up.chunks.push(data.clone());
                let reply = self.input(i, Input::Chunk { flight, data })?;
                Self::expect_ok(&reply, "a chunk")?;
            }
            ClusterOp::UpstreamOk(i, flight) => {
                let reply = self.input(
                    i,
                    Input::UpstreamEnded {
                        flight,
                        result: Ok(()),
                    },
                )?;
                Self::expect_ok(&reply, "an upstream end")?;
                self.upstreams.entry((i, flight)).or_default().completed = true;
            }
            ClusterOp::Lapse => self.redis.lease = None,
            ClusterOp::Crash(i) => {
                self.instances[usize::from(i)] = None;
                self.crashes += 1;
                for c in self.clients.iter_mut().filter(|c| c.inst == i) {
                    c.gone = true;
                }
            }
            ClusterOp::NextDeadline => {
                if let Some(at) = self.next_deadline() {
                    self.now = self.now.max(at);
                    for i in 0..2 {
                        if self.instance(i).is_some() {
                            self.input(i, Input::Timeout)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Redis runs the claim script for `f` on instance `i`, atomically: the
    /// cache, else the live lease's generation, else a new generation and the
    /// lease; the answer is reported to the machine.
    fn claim(&mut self, i: u8, f: FlightId) -> Result<(), Violation> {
        if self.link(i, f) != Some(&Link::Claiming) {
            return Ok(());
        }
        let (role, link, source) = if let Some(chunks) = &self.redis.cache {
            let source = Source::Cache(chunks.clone());
            (Role::Cached(chunks.clone()), None, source)
        } else if let Some((_, gen)) = self.redis.lease {
            let link = Link::Following { gen, cursor: 0 };
            (Role::Follower, Some(link), Source::Generation(gen))
        } else {
            self.redis.generation += 1;
            let gen = self.redis.generation;
            self.redis.lease = Some((i, gen));
            let log = Log {
                owner: (i, f),
                chunks: Vec::new(),
                end: None,
            };
            self.redis.logs.insert(gen, log);
            let link = Link::Owner {
                gen,
                pending: VecDeque::new(),
                ended: false,
            };
            (Role::Owner, Some(link), Source::Upstream)
        };
        self.set_link(i, f, link);
        self.sources.insert((i, f), source);
        let reply = self.input(i, Input::Claimed { flight: f, role })?;
        Self::expect_ok(&reply, "a claim's answer")
    }

    /// The owner's next write reaches Redis: it lands if the writer still holds
    /// the lease of its generation, else it is refused and the owner is fenced.
    fn flush(&mut self, i: u8, f: FlightId) -> Result<(), Violation> {
        let Some(Link::Owner {
            gen,
            mut pending,
            ended,
        }) = self.link(i, f).cloned()
        else {
            return Ok(());
        };
        let Some(write) = pending.pop_front() else {
            return Ok(());
        };
        if self.redis.lease != Some((i, gen)) {
            // Fenced: nothing is written; the driver stops writing and tells
            // its machine (a flight that already ended is stale).
            self.set_link(i, f, None);
            if !ended {
                let reason = "fenced".to_owned();
                let reply = self.input(i, Input::Fenced { flight: f, reason })?;
                Self::expect_ok(&reply, "fencing a live owner")?;
            }
            return Ok(());
        }
        let Some(log) = self.redis.logs.get_mut(&gen) else {
            return Err(Violation(format!("generation {gen} has no log")));
        };
        match write {
            Write::Append(chunks) => log.chunks.extend(chunks),
            Write::End { outcome, cacheable } => {
                if cacheable && outcome == Outcome::Completed {
                    self.redis.cache = Some(log.chunks.clone());
                }
                log.end = Some(outcome);
                self.redis.lease = None;
            }
        }
        let done = ended && pending.is_empty();
        let link = (!done).then_some(Link::Owner {
            gen,
            pending,
            ended,
        });
        self.set_link(i, f, link);
        Ok(())
    }

    /// Client `n` reads once, checking the reading contract (rule 19).
    ///
    /// # Errors
    /// A violation of the reading contract.
    pub fn read(&mut self, n: usize) -> Result<(), Violation> {
        let c = &self.clients[n];
        if c.gone || c.parked || c.closed {
            return Ok(());
        }
        let (i, request) = (c.inst, c.request);
        let reply = self.input(i, Input::Read { request })?;
        let c = &mut self.clients[n];
        let Reply::Read(Ok(readiness), items) = reply else {
            return Err(Violation(format!(
                "read of attached {request:?} on {i} answered {reply:?}"
            )));
        };
        if let Some(pos) = items.iter().position(|it| matches!(it, Item::End(_))) {
            ensure!(
                pos + 1 == items.len(),
                "{request:?} got items after its terminal: {items:?} (contract rule 19)"
            );
            c.closed = true;
        }
        match readiness {
            Readiness::Pending => {
                ensure!(items.is_empty(), "Pending with items {items:?}");
                c.parked = true;
            }
            Readiness::Closed => {
                return Err(Violation(format!(
                    "{request:?} read Closed before its terminal item"
                )))
            }
            _ => {}
        }
        c.items.extend(items);
        Ok(())
    }

    /// The content a client's reads must be a prefix of (and equal to, once it
    /// ends completed); `None` for a cache hit with no completed log to match.
    fn expected(&self, c: &Client) -> Option<Vec<Bytes>> {
        let (Route::NewFlight(flight) | Route::Joined(flight)) = c.route else {
            // A local cache hit: some completed upstream of that instance, of
            // which what it read so far is a prefix.
            let read: Vec<&Bytes> = chunks_of(&c.items).collect();
            return self
                .upstreams
                .iter()
                .filter(|((i, _), u)| *i == c.inst && u.completed)
                .map(|(_, u)| u.chunks.clone())
                .find(|log| read.len() <= log.len() && read.iter().zip(log).all(|(a, b)| *a == b));
        };
        Some(match self.sources.get(&(c.inst, flight)) {
            None => Vec::new(),
            Some(Source::Upstream) => self
                .upstreams
                .get(&(c.inst, flight))
                .map(|u| u.chunks.clone())
                .unwrap_or_default(),
            Some(Source::Generation(g)) => self
                .redis
                .logs
                .get(g)
                .map(|l| l.chunks.clone())
                .unwrap_or_default(),
            Some(Source::Cache(chunks)) => chunks.clone(),
        })
    }

    /// The checks of every state (see the module docs).
    ///
    /// # Errors
    /// The first violation found.
    pub fn check(&self) -> Result<(), Violation> {
        // Invariant 9: one lease holder (by construction), one writer per
        // generation, each log a prefix of its owner's upstream output.
        for (gen, log) in &self.redis.logs {
            let made = self.upstreams.get(&log.owner).cloned().unwrap_or_default();
            ensure!(
                log.chunks.len() <= made.chunks.len()
                    && log.chunks[..] == made.chunks[..log.chunks.len()],
                "generation {gen}'s log {:?} is not a prefix of its owner's output {:?} \
                 (contract rule 26)",
                log.chunks,
                made.chunks
            );
            if log.end == Some(Outcome::Completed) {
                ensure!(
                    made.completed && log.chunks == made.chunks,
                    "generation {gen} ended completed with {:?}, its owner made {made:?}",
                    log.chunks
                );
            }
        }
        let live_owners = self
            .alive()
            .flat_map(|(i, inst)| {
                inst.links.values().filter_map(move |l| match l {
                    Link::Owner {
                        gen, ended: false, ..
                    } => Some((i, *gen)),
                    _ => None,
                })
            })
            .filter(|holder| self.redis.lease == Some(*holder))
            .count();
        ensure!(
            live_owners <= 1,
            "{live_owners} live owners hold the lease at once (contract invariant 9)"
        );
        // Contract rules 7, 27: every reader's chunks are a prefix of its source.
        for c in self.clients.iter().filter(|c| !c.gone) {
            let read: Vec<Bytes> = chunks_of(&c.items).cloned().collect();
            let Some(expected) = self.expected(c) else {
                return Err(Violation(format!(
                    "{:?} on {} (a cache hit) read {read:?}, no completed log of its instance",
                    c.request, c.inst
                )));
            };
            ensure!(
                read.len() <= expected.len() && read[..] == expected[..read.len()],
                "{:?} on {} read {read:?}, not a prefix of its source {expected:?} \
                 (contract rule 27)",
                c.request,
                c.inst
            );
            if let Some(Item::End(outcome)) = c.items.last() {
                if *outcome == Outcome::Completed {
                    ensure!(
                        read == expected,
                        "{:?} on {} completed with {read:?}, its source is {expected:?}",
                        c.request,
                        c.inst
                    );
                }
                if c.cancelled {
                    ensure!(
                        *outcome == Outcome::Cancelled,
                        "{:?} cancelled but ended {outcome:?} (contract rule 14)",
                        c.request
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether user work (a preparation or an upstream) runs on a live instance.
    #[must_use]
    pub fn work_running(&self) -> bool {
        self.alive().any(|(_, inst)| {
            !inst.driver.running_preparations().is_empty()
                || !inst.driver.running_streams().is_empty()
        })
    }

    /// Runs the world to rest within `bound`'s generations: clients read
    /// whenever they can, claims are answered, owners' writes and followers'
    /// logs delivered, lost leases noticed; the user's work is left hanging
    /// (its deadlines end it), no lease lapses and nothing crashes; time jumps
    /// to each next deadline. Then
    /// every surviving client must have its terminal item and every surviving
    /// machine must be empty with no link left.
    ///
    /// # Errors
    /// The first violation found.
    pub fn finish(&mut self, bound: &ClusterBound) -> Result<(), Violation> {
        self.finish_known(bound, &mut HashSet::new())
    }

    /// [`ClusterWorld::finish`], stopping early at a state in `known` (one
    /// already run to rest without a violation: the run is deterministic, so
    /// the rest of it is known good) and adding every state it passes to it.
    pub(crate) fn finish_known(
        &mut self,
        bound: &ClusterBound,
        known: &mut HashSet<u128>,
    ) -> Result<(), Violation> {
        // Nothing new happens at rest: no submit, no crash.
        let bound = ClusterBound {
            requests: 0,
            crashes: 0,
            ..bound.clone()
        };
        let mut passed = Vec::new();
        for _ in 0..10_000 {
            let print = fingerprint(self);
            if known.contains(&print) {
                known.extend(passed);
                return Ok(());
            }
            passed.push(print);
            let step = self.enabled(&bound).into_iter().find(|op| {
                matches!(
                    op,
                    ClusterOp::Read(_)
                        | ClusterOp::Claim(..)
                        | ClusterOp::Flush(..)
                        | ClusterOp::Follow(..)
                        | ClusterOp::Renew(..)
                )
            });
            let op = match step {
                Some(op) => op,
                None if self.next_deadline().is_some() => ClusterOp::NextDeadline,
                None => break,
            };
            self.apply(&op)?;
        }
        for c in self.clients.iter().filter(|c| !c.gone) {
            ensure!(
                matches!(c.items.last(), Some(Item::End(_))),
                "{:?} on {} never got its terminal item at rest: {:?} (contract rules 19, 28)",
                c.request,
                c.inst,
                c.items
            );
        }
        for (i, inst) in self.alive() {
            ensure!(
                inst.driver.machine.is_empty(),
                "instance {i} not empty at rest (contract rule 21): {:?}",
                inst.driver.machine.stats()
            );
            ensure!(
                inst.links.is_empty(),
                "instance {i} keeps links at rest: {:?}",
                inst.links
            );
        }
        known.extend(passed);
        Ok(())
    }
}

pub(crate) fn chunks_of(items: &[Item]) -> impl Iterator<Item = &Bytes> + '_ {
    items.iter().filter_map(|it| match it {
        Item::Chunk(b) => Some(b),
        Item::End(_) => None,
    })
}

pub(crate) fn fingerprint(world: &ClusterWorld) -> u128 {
    let mut a = DefaultHasher::new();
    world.hash(&mut a);
    let mut b = DefaultHasher::new();
    0xc1u8.hash(&mut b);
    world.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}
