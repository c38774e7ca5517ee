//! # The behaviour contract
//!
//! This module holds no code. It is the promise flightdeck makes to its users,
//! written down next to the code that keeps it, so that a maintainer never needs
//! anything outside the repository to learn why a line exists. Every rule is
//! covered by tests that fail if it breaks (each such test is named after its rule,
//! `ruleN_...`), and the harness crate checks the [invariants](#invariants) after
//! every step of every run it explores or generates.
//!
//! The design descends from a Go chatbot backend (`manager.go`, `streamer.go`)
//! described in a blog series. That design fought four bugs, named below where a
//! rule exists because of them:
//! - the **stuck writer**: a goroutine blocked forever writing to a channel whose
//!   reader had gone, holding memory and a slot;
//! - the **pre-emptive cleanup**: a cancelled request's record was wiped before its
//!   client came to read the confirmation, which then saw "not found";
//! - the **muted messenger**: the cancellation status was sent through the very
//!   context the cancel had just closed, so it was lost (patched with a best-effort
//!   "last gasp" write);
//! - the **zombie slot**: work nobody waited for kept its semaphore slot until a
//!   periodic janitor noticed, and the first client (the "leader") had to stay
//!   alive because the shared work was tied to it.
//!
//! flightdeck makes these impossible by construction: one input at a time, every
//! consequence within that input, readers that pull, and a deadline for everything.
//!
//! ## How to cite a rule
//! Each rule and invariant below is a heading with a stable anchor: `rule-1` to
//! `rule-29`, and `invariant-1` to `invariant-9`.
//! - In `///` and `//!` docs of this crate, link it:
//!   ``[rule 13](crate::contract#rule-13)``, or for a range,
//!   ``rules [10](crate::contract#rule-10)-[12](crate::contract#rule-12)``.
//! - In docs of another crate, link ``flightdeck_core::contract#rule-13``.
//! - In `//` comments (and in tests, which rustdoc does not render), write
//!   "contract rule 13" (or "contract invariant 3"), so that a text search for
//!   `contract rule 13` finds every line that relies on it.
//!
//! Renumbering a rule breaks every citation: add new rules at the end instead.
//!
//! ## Admission and coalescing
//!
//! ### Rule 1
//! **A submit answers at once, and a refused submit changes nothing.** It returns a
//! request id or an error (the queue is full, the key is empty, the machine is
//! shutting down) without waiting for anything. *Why:* a caller that is told "no"
//! must be able to retry or go elsewhere knowing that no half-made record, counter
//! or queue place was left behind.
//!
//! ### Rule 2
//! **One live flight per key; a new request joins it, or is served from the cache,
//! or creates a flight.** A request whose key has a live flight (queued, preparing
//! or streaming) joins it at once and takes no queue place and no slot; otherwise a
//! completed cached result serves it at once; otherwise a new flight is queued.
//! *Why:* identical requests are the point of the product: the expensive upstream
//! runs once per key at a time, however many clients ask.
//!
//! ### Rule 3
//! **The queue holds flights, first in first out, bounded by `queue_capacity`.** A
//! request's position is its flight's and can be observed. *Why:* a bounded queue
//! turns overload into an immediate refusal ([rule 1](#rule-1)) instead of
//! unbounded memory, and FIFO makes waiting fair and predictable.
//!
//! ## Preparation and streaming
//!
//! ### Rule 4
//! **At most `max_concurrent_requests` preparations and at most
//! `max_concurrent_streams` upstream streams run at once.** *Why:* these are the
//! two scarce resources (the Go `MAX_CONCURRENT_REQUESTS` and
//! `MAX_CONCURRENT_LLM_STREAMS` semaphores), and they are limited separately.
//!
//! ### Rule 5
//! **A preparation slot is released in the step in which preparation ends, and
//! preparation never waits for a stream slot.** With 100 distinct requests, limits
//! 10 and 5, and instant preparation, all 100 finish preparing while 5 stream and
//! 95 wait for a stream slot. *Why:* the Go post "Implicit Decoupling" showed that
//! cheap preparation must not be held hostage by the slow stage; a prepared flight
//! waits without holding anything.
//!
//! ### Rule 6
//! **Flights waiting for a stream slot are served FIFO, and only once a member has
//! a client attached.** *Why:* streaming into a log nobody reads wastes the most
//! expensive slot (the Go leader waited for `ClientConnected` for the same reason);
//! the flight takes a slot as soon as a client attaches.
//!
//! ### Rule 7
//! **Every chunk is appended to the flight's log once and reaches every attached
//! reader exactly once, in order, without gaps, late joiners included.** A reader
//! that attaches late replays from the first chunk through the same code path.
//! *Why:* the Go broadcaster could lose tokens for a slow reader or block the
//! writer on it (the stuck writer); here readers pull from their own cursor, so a
//! slow one blocks nobody and loses nothing.
//!
//! ### Rule 8
//! **When the upstream finishes, every member ends completed, the result is cached
//! (unless preparation said it must not be), and the stream slot goes to the next
//! waiting flight in the same step.** *Why:* there is no instant at which a slot is
//! free while someone waits for it, so throughput never depends on a later event.
//!
//! ## Cancellation and disconnects
//!
//! ### Rule 9
//! **Cancel is idempotent.** An unknown id answers "not found"; a request that
//! already finished answers an error saying so and nothing changes; cancelling a
//! cancelled request succeeds again. *Why:* clients retry cancels over unreliable
//! networks; a retry must be harmless and truthful.
//!
//! ### Rule 10
//! **Cancelling the last member of a queued flight removes the flight from the
//! queue; no work starts for it.** *Why:* a queue place is capacity other clients
//! are refused for ([rule 3](#rule-3)).
//!
//! ### Rule 11
//! **Cancelling one member of a flight that has others ends that request only.**
//! *Why:* no member is special. The Go design had a leader whose cancel would have
//! killed the shared work, and faked its cancellation to keep the others going;
//! here there is no leader to protect.
//!
//! ### Rule 12
//! **Cancelling the last member aborts the flight in the same step: the abort is
//! emitted, and the slot is released and handed to the next waiter in that step.**
//! *Why:* this is the zombie slot made impossible. No slot is ever held by work
//! nobody waits for, not even until a janitor runs.
//!
//! ### Rule 13
//! **Cancel, then attach within `cancelled_retention`: the stream yields the
//! cancellation, never "not found"; after the retention the record is gone.**
//! *Why:* this is the pre-emptive cleanup bug. A cancelled record is kept for its
//! client to pick up the confirmation (the Go `CLIENT_PICKUP_TIMEOUT`), and it is
//! dropped by a deadline, not by whichever task happens to finish first.
//!
//! ### Rule 14
//! **Cancel while a client reads: the client gets every chunk it was already given,
//! then the cancelled status as its last item, guaranteed.** *Why:* this is the
//! muted messenger. The Go "last gasp" write was best effort and could lose the
//! status; here the status is state in the record that the reader pulls.
//!
//! ### Rule 15
//! **A client that drops its stream without cancelling cancels its request, and the
//! record is removed at once.** *Why:* nobody is left to confirm to, so keeping the
//! record would only hold memory until a retention passed.
//!
//! ### Rule 16
//! **Late completions are harmless.** A preparation result, chunk or upstream end
//! that arrives for a flight that was already aborted or ended is ignored and never
//! resurrects anything. *Why:* an abort and the work's own completion race in any
//! real runtime; flight ids are never reused, so a stale report names a flight
//! that no longer exists (or is in another phase) and is answered with an error.
//!
//! ## Deadlines
//!
//! ### Rule 17
//! **Every phase has a deadline**: time in the queue, preparation, waiting for a
//! stream slot, total stream time, idle time between chunks, time before a client
//! attaches, and the retention of finished and cancelled records. Each expiry ends
//! the affected requests with a status naming the phase and frees what they held in
//! the same step. *Why:* the Go janitor was a coroner that found zombies a minute
//! later; here nothing can be held forever, and nothing waits for a sweep.
//!
//! ### Rule 18
//! **There is no periodic scan.** The machine knows its earliest deadline and the
//! driver sleeps exactly until it; handling a deadline costs O(log n) in the number
//! of pending deadlines. *Why:* polling wakes for nothing and still reacts late
//! (the Go post "Superior Event-Driven").
//!
//! ## Results
//!
//! ### Rule 19
//! **Every request a client attached to yields exactly one terminal item
//! (completed, cancelled, failed, timed out), and it is the last item.** *Why:* a
//! client must always learn how its request ended, and must never wait after the
//! end; a stream that just closes is ambiguous.
//!
//! ### Rule 20
//! **A failed preparation or upstream ends every member with the failure, after the
//! chunks already delivered; nothing is cached.** *Why:* a failure is an answer too,
//! but not one to repeat to the next client from the cache.
//!
//! ### Rule 21
//! **After every request has ended and every retention has passed, the machine
//! holds nothing**: no requests, flights, slots, deadlines, readers or cache
//! entries. This holds even while clients keep their finished result streams:
//! once a reader has read its terminal item, its record is kept for the retention
//! of its outcome (`finished_retention`, or `cancelled_retention` after a cancel),
//! counted from that read, exactly as for a record nobody attached to, and then
//! dropped; a read or detach after that answers "not found". *Why:* leaks are the
//! first Go bug (the stuck writer's growing memory); a server that keeps stream
//! objects around must not keep their records with them. Emptiness at quiescence
//! is checked rather than hoped for.
//!
//! ## Bad input and limits
//!
//! ### Rule 22
//! **Errors are values, never panics**: unknown ids, a second attach, zero limits in
//! a configuration, a response over `max_response_bytes` (which ends the flight
//! with a clear failure), an upstream that errors or panics, a preparation that
//! panics. *Why:* the machine is shared by every client of a server; one caller's
//! mistake must not take the others down.
//!
//! ### Rule 23
//! **The runtime adapters catch a panicking user future and turn it into a failure
//! of that flight; its slot is released and nothing leaks.** *Why:* the same as
//! [rule 22](#rule-22) for code the user supplies: it runs in the adapters, so the
//! adapters must contain it.
//!
//! ## Observability
//!
//! ### Rule 24
//! **A stats snapshot** gives what is held now (queued, preparing, streaming,
//! waiting for a stream slot, slots in use, readers, cache entries) and totals
//! since the start (submitted, coalesced, cache hits, streams started, completed,
//! cancelled, failed, timed out). *Why:* operators must see saturation and the
//! effect of coalescing without instrumenting the code.
//!
//! ## Cluster mode
//!
//! With [`Config::cluster`](crate::Config::cluster) set, several machines (one
//! per gateway instance) share flights through a coordinator (Redis): the key's
//! **owner** runs the upstream and publishes its log, **followers** on other
//! instances read it. The coordinator's answers are inputs and the machine's
//! requests to it are actions ([`crate::cluster`]), so these rules are the
//! machine's to keep like the others; the harness explores two machines over
//! one key with an owner crash at every point. With cluster mode off, none of
//! this happens and rules 1-24 alone apply.
//!
//! ### Rule 25
//! **One owner per key and generation across the cluster; a new flight claims
//! its key before it queues.** A submit that creates a flight makes it claim
//! the key ([`Action::Claim`](crate::Action::Claim)); the coordinator answers
//! owner, follower, cached or unavailable, atomically for all instances, and a
//! lease with a fencing generation backs the answer. Requests on one instance
//! still join its live flight as in [rule 2](#rule-2), claiming or not. A
//! claiming flight is queue time and takes a queue place
//! ([rule 3](#rule-3)). *Why:* rule 2 across machines: a herd spread over N
//! instances still makes one upstream call.
//!
//! ### Rule 26
//! **An owner publishes every chunk it accepts, in order, and releases its end
//! last; a fenced owner's writes change nothing and its flight ends with a clear
//! failure.** Every batch the owner appends to its log is also emitted as
//! [`Action::Publish`](crate::Action::Publish), and its end as
//! [`Action::Release`](crate::Action::Release) right before `FlightEnded`,
//! saying whether the result may be cached. Each write is checked against the
//! owner's generation where it is stored (atomically, in the coordinator); a
//! write from an owner whose lease was lost is refused, and the owner is told
//! ([`Machine::handle_fenced`](crate::Machine::handle_fenced)): its members end
//! [`Failure::Cluster`](crate::Failure::Cluster) after the chunks they had, its
//! work is aborted and its slot handed on in the same step, and nothing is
//! released. *Why:* [rule 16](#rule-16) across machines: an owner that stalled
//! and lost its lease must not write into a log that another owner now writes.
//!
//! ### Rule 27
//! **Followers read the owner's log from its first chunk, in order, without
//! loss, and hold no slot.** A follower flight's chunks are the owner's log,
//! replayed from its first entry; its members and late joiners read them
//! through the same cursors as any log ([rule 7](#rule-7)). It has a stream's
//! deadlines (total and idle, [rule 17](#rule-17)), and when its last member
//! leaves or a deadline passes it stops following in that step
//! ([rule 12](#rule-12)). A follower's result is not cached locally: the
//! coordinator's cache is the shared one. *Why:* the follower's answer must be
//! the owner's answer, token for token, and following must not cost the scarce
//! upstream slots the owner already spends.
//!
//! ### Rule 28
//! **Owner lost: re-claim if nothing was read, else a clear failure.** When a
//! follower's owner is gone (its lease lapsed, or its flight ended without an
//! answer: cancelled, timed out, or shut down), a follower that has received
//! nothing claims the key again, under
//! its original queue deadline, and may become the owner: its members never see
//! the loss. One that has received chunks ends every member
//! [`Failure::OwnerLost`](crate::Failure::OwnerLost) after the chunks already
//! delivered ([rule 20](#rule-20)), as does one with no queue place left to
//! re-claim with. *Why:* a new upstream call would not continue the lost one
//! token for token, so a half-read answer cannot be silently completed; an
//! unread one can simply be asked again.
//!
//! ### Rule 29
//! **Coordinator unavailable: a clear failure, never a hang.** A claim the
//! coordinator cannot answer ends the flight
//! [`Failure::Cluster`](crate::Failure::Cluster) with the reason; a claim that
//! is never answered ends at the queue deadline. *Why:* a client must learn
//! that its request failed and why ([rule 19](#rule-19)), whatever happened to
//! the cluster.
//!
//! ## Invariants
//!
//! These hold after every input, whatever the inputs were.
//! [`Machine::check_invariants`](crate::Machine::check_invariants) checks the
//! first five and the eighth against the whole state (and the bookkeeping they
//! rest on, below); the harness calls it after every step of every run it
//! explores or generates, checks the sixth on the actions the machine emits,
//! the seventh whenever a run comes to rest, and the ninth across the two
//! machines of its cluster bound.
//!
//! ### Invariant 1
//! **Slots in use equal the flights holding them, and never exceed the limits.**
//! The counters are not trusted: they are recounted from the flights' phases.
//!
//! ### Invariant 2
//! **Each request is in exactly one state and at most one flight, and each
//! flight's members are exactly the requests that point to it.** Membership is
//! recorded on both sides (the flight lists its members, the request names its
//! flight) for speed; the two must agree.
//!
//! ### Invariant 3
//! **At most one live flight per key** ([rule 2](#rule-2)), and the key index
//! names exactly the live flights.
//!
//! ### Invariant 4
//! **Every reader's cursor is within its flight's log.**
//!
//! ### Invariant 5
//! **A cancelled or finished request holds no slot and is in no queue.** Ended
//! requests are not members of any flight, and a flight with no members is not
//! live.
//!
//! ### Invariant 6
//! **No action is ever emitted for an aborted generation.** Flight ids are never
//! reused, and an ended flight is forgotten, so nothing can address it again
//! ([rule 16](#rule-16)).
//!
//! ### Invariant 7
//! **At quiescence the machine is empty** ([rule 21](#rule-21)): once nothing is
//! left to do and every retention has passed,
//! [`Machine::is_empty`](crate::Machine::is_empty) holds.
//!
//! ### Invariant 8
//! **The remote bookkeeping agrees with the phases.** The claiming and
//! following flights are exactly those in those phases, every cluster owner is
//! a live flight in a local phase (queued, preparing, prepared, streaming),
//! queued plus claiming flights stay within `queue_capacity`, and with cluster
//! mode off nothing is remote at all.
//!
//! ### Invariant 9
//! **Across machines: at most one owner holds a key's lease at any instant,
//! and every follower's log is a prefix of its owner generation's log.** This
//! one is not a property of one machine: the harness's two-instance bound
//! checks it after every step over two machines and a simulated coordinator
//! ([rule 25](#rule-25), [rule 27](#rule-27)).
//!
//! ### Bookkeeping the invariants rest on
//! Beyond the numbered invariants, the checker also insists that no slot is free while a flight
//! waits for one (which is what makes [rule 8](#rule-8) and [rule 12](#rule-12)
//! hold), that every record without a client has exactly one armed deadline and
//! one with a client has none (so nothing is held forever, [rule 17](#rule-17)),
//! that the number of armed deadlines equals the number of their owners, and that
//! the queue's implied deadlines never decrease from its head.
