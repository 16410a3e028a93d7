//! The sans-IO heart of a lane: tags, the in-flight table, reissue order, the link state
//! (up, down, refused, closed), liveness timers and the failure policy.
//!
//! [`LaneCore`] does no I/O and reads no clock: its driver (`lane.rs`) feeds it events
//! (a request started, a reply arrived, bytes were heard, the connection was lost, a new
//! connection was installed, a refusal, a tick with the current time) and carries out
//! what it answers (send these, send a heartbeat, the link is dead, fail these). The
//! in-flight entries are generic (`S`), so the unit tests below drive it with plain
//! numbers and fake time.
//!
//! # Liveness
//!
//! While requests are outstanding, the lane measures silence from the later of the last
//! bytes heard and the moment it became busy. After [`Timers::heartbeat_after`] of
//! silence it asks for one `Heartbeat` probe; after [`Timers::dead_after`] the link is
//! dead and the driver drops the connection (reconnect, then reissue). An idle lane sends
//! nothing; TCP keepalive bounds its detection instead (see `connect.rs`).
//!
//! # Failure policy
//!
//! Requests of a lane that is down wait for the reconnect up to [`Timers::fail_after`];
//! then they fail with `EIO`, and so does every new request until the lane is back. A
//! refusal that says the host may not use the partition any more is final: everything
//! pending and every new request fails with `EACCES` at once, while the driver keeps
//! re-checking slowly so a re-assignment brings the lane back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::error::Errno;

/// The timers a lane runs by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timers {
    /// Silence, with requests outstanding, after which one heartbeat probe is sent.
    pub heartbeat_after: Duration,
    /// Silence, with requests outstanding, after which the link is declared dead.
    pub dead_after: Duration,
    /// How long requests wait for a lane that is down before failing with `EIO`.
    pub fail_after: Duration,
}

/// Where the lane's link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Connected; requests are sent.
    Up,
    /// Lost at `since`; reconnecting. Once `expired`, new requests fail with `EIO`.
    Down {
        /// When the link was lost.
        since: Instant,
        /// Whether the failure policy's bound passed.
        expired: bool,
    },
    /// The server refused the lane for good; requests fail with `errno` until a new
    /// connection succeeds.
    Refused {
        /// What requests fail with.
        errno: Errno,
    },
    /// Closed by its owner; nothing more happens.
    Closed,
}

/// Counters of one lane, for tests and statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Requests issued on the lane (reissues and heartbeats not counted).
    pub requests: u64,
    /// Times the lane was re-established.
    pub reconnects: u64,
    /// Heartbeat probes sent.
    pub heartbeats: u64,
    /// Times the link was declared dead for silence.
    pub dead_detections: u64,
    /// Requests failed by the lane itself (policy bound passed, refusal, close).
    pub failed: u64,
    /// Final refusals received while reconnecting.
    pub refusals: u64,
    /// Runs of read replies received (wire's `Status::Run`).
    pub runs: u64,
    /// Read replies those runs carried.
    pub run_replies: u64,
    /// Runs of writes sent (wire's `Op::Run`).
    pub write_runs: u64,
    /// Writes those runs carried.
    pub run_writes: u64,
}

/// What a request is to the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A caller's request: reissued after a reconnect.
    Request,
    /// A heartbeat probe: belongs to one connection, never reissued.
    Probe,
}

/// What the driver must do after a tick.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action<S> {
    /// Nothing.
    Idle,
    /// Send a heartbeat with this tag (then [`LaneCore::track`] it as a probe).
    Heartbeat(u32),
    /// The link went silent for too long: drop the connection.
    Dead,
    /// The failure policy's bound passed: fail these with `EIO`.
    Fail(Vec<S>),
}

#[derive(Debug)]
struct Entry<S> {
    slot: S,
    seq: u64,
    kind: Kind,
    bytes: u64,
}

/// The lane's state; see the module doc.
#[derive(Debug)]
pub(crate) struct LaneCore<S> {
    timers: Timers,
    link: Link,
    generation: u64,
    inflight: FxHashMap<u32, Entry<S>>,
    /// Tags to send, with their sequence numbers (a stale entry is skipped).
    queue: VecDeque<(u32, u64)>,
    next_tag: u32,
    next_seq: u64,
    /// When the link last heard bytes, or became busy, whichever is later.
    quiet_since: Instant,
    probe: Option<u32>,
    /// Payload bytes of the requests in flight (the multipath queue-depth policy's
    /// measure).
    bytes: u64,
    /// A reply's data is being received: its request has left `inflight` with its head,
    /// but a server that stalls now must still be detected.
    receiving: bool,
    stats: LaneStats,
}

impl<S: Clone> LaneCore<S> {
    /// A closed lane (not yet connected) with `timers`.
    pub fn new(timers: Timers, now: Instant) -> LaneCore<S> {
        LaneCore {
            timers,
            link: Link::Closed,
            generation: 0,
            inflight: FxHashMap::default(),
            queue: VecDeque::new(),
            next_tag: 0,
            next_seq: 0,
            quiet_since: now,
            probe: None,
            bytes: 0,
            receiving: false,
            stats: LaneStats::default(),
        }
    }

    /// Marks whether a reply's data is being received (see `tick`): the lane is busy as
    /// long as it is, even with no request in flight.
    pub fn set_receiving(&mut self, receiving: bool) {
        self.receiving = receiving;
    }

    /// Counts a run of `replies` read replies received whole.
    pub fn ran(&mut self, replies: usize) {
        self.stats.runs += 1;
        self.stats.run_replies += replies as u64;
    }

    /// Counts `runs` runs of writes sent, carrying `writes` writes.
    pub fn sent_runs(&mut self, runs: usize, writes: usize) {
        self.stats.write_runs += runs as u64;
        self.stats.run_writes += writes as u64;
    }

    /// The link state.
    pub fn link(&self) -> Link {
        self.link
    }

    /// The current connection's generation (grows with every connection installed).
    #[cfg(test)]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `generation` is the live connection.
    pub fn is_current(&self, generation: u64) -> bool {
        self.generation == generation && self.link == Link::Up
    }

    /// The counters.
    pub fn stats(&self) -> LaneStats {
        self.stats
    }

    /// Requests (and probes) outstanding.
    #[cfg(test)]
    pub fn outstanding(&self) -> usize {
        self.inflight.len()
    }

    /// Payload bytes of the requests in flight.
    pub fn outstanding_bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether anything waits to be sent.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Admits a new request: its tag, or the errno it fails with at once.
    pub fn begin(&mut self, kind: Kind) -> Result<u32, Errno> {
        match self.link {
            Link::Up | Link::Down { expired: false, .. } => {}
            Link::Down { expired: true, .. } | Link::Closed => {
                self.stats.failed += 1;
                return Err(Errno::EIO);
            }
            Link::Refused { errno } => {
                self.stats.failed += 1;
                return Err(errno);
            }
        }
        if kind == Kind::Request {
            self.stats.requests += 1;
        }
        loop {
            let tag = self.next_tag;
            self.next_tag = tag.wrapping_add(1);
            if !self.inflight.contains_key(&tag) {
                return Ok(tag);
            }
        }
    }

    /// Records the request `begin` admitted as `tag`, with `bytes` of payload; returns
    /// whether it was queued for sending (the sender must be woken).
    pub fn track(&mut self, tag: u32, slot: S, kind: Kind, bytes: u64, now: Instant) -> bool {
        if self.inflight.is_empty() && !self.receiving {
            self.quiet_since = now; // became busy
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += bytes;
        self.inflight.insert(
            tag,
            Entry {
                slot,
                seq,
                kind,
                bytes,
            },
        );
        if kind == Kind::Probe {
            self.probe = Some(tag);
            self.stats.heartbeats += 1;
        }
        let up = self.link == Link::Up;
        if up {
            self.queue.push_back((tag, seq));
        }
        up
    }

    /// Takes up to `max` queued requests to send, in order.
    pub fn next_batch(&mut self, batch: &mut Vec<S>, max: usize) {
        while batch.len() < max {
            let Some((tag, seq)) = self.queue.pop_front() else {
                break;
            };
            if let Some(entry) = self.inflight.get(&tag).filter(|e| e.seq == seq) {
                batch.push(entry.slot.clone());
            }
        }
    }

    /// Bytes arrived from the server.
    pub fn heard(&mut self, now: Instant) {
        self.quiet_since = now;
    }

    /// A reply for `tag` arrived: the request it answers, if in flight.
    pub fn reply(&mut self, tag: u32, now: Instant) -> Option<S> {
        self.heard(now);
        let entry = self.inflight.remove(&tag)?;
        self.bytes -= entry.bytes;
        if self.probe == Some(tag) {
            self.probe = None;
        }
        Some(entry.slot)
    }

    /// Puts back a request whose reply was cut off, so it is reissued after the
    /// reconnect; hands it back with the errno to fail it with if the lane holds no
    /// requests any more (closed, refused, or down past the policy bound).
    pub fn restore(&mut self, tag: u32, slot: S, bytes: u64) -> Result<(), (S, Errno)> {
        match self.link {
            Link::Up | Link::Down { expired: false, .. } => {}
            Link::Down { expired: true, .. } | Link::Closed => {
                self.stats.failed += 1;
                return Err((slot, Errno::EIO));
            }
            Link::Refused { errno } => {
                self.stats.failed += 1;
                return Err((slot, errno));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += bytes;
        self.inflight.insert(
            tag,
            Entry {
                slot,
                seq,
                kind: Kind::Request,
                bytes,
            },
        );
        Ok(())
    }

    /// The connection of `generation` failed; returns whether this is news (the driver
    /// then drops the connection and reconnects).
    pub fn connection_lost(&mut self, generation: u64, now: Instant) -> bool {
        if !self.is_current(generation) {
            return false;
        }
        self.go_down(now);
        true
    }

    fn go_down(&mut self, now: Instant) {
        self.link = Link::Down {
            since: now,
            expired: false,
        };
        self.queue.clear();
    }

    /// A new connection is in service: returns its generation and the probes of the
    /// old one, which are dropped (the driver finishes them). Every request still in
    /// flight is queued again in its original order.
    pub fn connected(&mut self, now: Instant) -> (u64, Vec<S>) {
        if self.generation > 0 {
            self.stats.reconnects += 1;
        }
        self.generation += 1;
        self.link = Link::Up;
        self.quiet_since = now;
        self.probe = None;
        self.receiving = false;
        let probes: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, e)| e.kind == Kind::Probe)
            .map(|(tag, _)| *tag)
            .collect();
        let dropped = probes
            .iter()
            .filter_map(|tag| self.inflight.remove(tag))
            .map(|e| e.slot)
            .collect();
        let mut order: Vec<(u32, u64)> = self.inflight.iter().map(|(t, e)| (*t, e.seq)).collect();
        order.sort_by_key(|(_, seq)| *seq);
        self.queue = order.into();
        (self.generation, dropped)
    }

    /// The server refused the lane for good: returns everything pending, to fail with
    /// `errno` now; new requests fail the same way until [`LaneCore::connected`].
    pub fn refused(&mut self, errno: Errno) -> Vec<S> {
        if self.link == Link::Closed {
            return Vec::new();
        }
        self.link = Link::Refused { errno };
        self.stats.refusals += 1;
        self.drain()
    }

    /// Closes the lane: returns everything pending, to fail with `EIO`.
    pub fn close(&mut self) -> Vec<S> {
        self.link = Link::Closed;
        self.drain()
    }

    fn drain(&mut self) -> Vec<S> {
        self.queue.clear();
        self.probe = None;
        self.bytes = 0;
        let slots: Vec<S> = self.inflight.drain().map(|(_, e)| e.slot).collect();
        self.stats.failed += slots.len() as u64;
        slots
    }

    /// Advances the timers to `now`.
    pub fn tick(&mut self, now: Instant) -> Action<S> {
        match self.link {
            Link::Up if !self.inflight.is_empty() || self.receiving => {
                let silent = now.saturating_duration_since(self.quiet_since);
                if silent >= self.timers.dead_after {
                    self.stats.dead_detections += 1;
                    self.go_down(now);
                    Action::Dead
                } else if silent >= self.timers.heartbeat_after && self.probe.is_none() {
                    match self.begin(Kind::Probe) {
                        Ok(tag) => Action::Heartbeat(tag),
                        Err(_) => Action::Idle,
                    }
                } else {
                    Action::Idle
                }
            }
            Link::Down {
                since,
                expired: false,
            } if now.saturating_duration_since(since) >= self.timers.fail_after => {
                self.link = Link::Down {
                    since,
                    expired: true,
                };
                Action::Fail(self.drain())
            }
            _ => Action::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn timers() -> Timers {
        Timers {
            heartbeat_after: SEC,
            dead_after: 5 * SEC,
            fail_after: 30 * SEC,
        }
    }

    /// A connected core at fake time `t0`.
    fn up() -> (LaneCore<u32>, Instant) {
        let t0 = Instant::now();
        let mut core = LaneCore::new(timers(), t0);
        core.connected(t0);
        (core, t0)
    }

    fn start(core: &mut LaneCore<u32>, id: u32, now: Instant) -> u32 {
        let tag = core.begin(Kind::Request).unwrap();
        core.track(tag, id, Kind::Request, u64::from(id), now);
        tag
    }

    fn batch(core: &mut LaneCore<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        core.next_batch(&mut out, 64);
        out
    }

    #[test]
    fn requests_are_queued_and_matched_by_tag() {
        let (mut core, t0) = up();
        let a = start(&mut core, 10, t0);
        let b = start(&mut core, 11, t0);
        assert_ne!(a, b);
        assert_eq!(batch(&mut core), vec![10, 11]);
        assert_eq!(core.reply(b, t0), Some(11));
        assert_eq!(core.reply(b, t0), None, "a tag answers once");
        assert_eq!(core.outstanding(), 1);
        assert_eq!(core.stats().requests, 2);
    }

    #[test]
    fn idle_lane_never_probes_nor_dies() {
        let (mut core, t0) = up();
        assert_eq!(core.tick(t0 + 1000 * SEC), Action::Idle);
        assert_eq!(core.link(), Link::Up);
    }

    #[test]
    fn a_server_that_stalls_in_the_middle_of_a_reply_is_dead() {
        let (mut core, t0) = up();
        let tag = start(&mut core, 1, t0);
        assert_eq!(core.reply(tag, t0), Some(1), "the head arrived");
        assert_eq!(
            core.tick(t0 + 100 * SEC),
            Action::Idle,
            "nothing owed: idle"
        );
        let t1 = t0 + 100 * SEC;
        let tag = start(&mut core, 2, t1);
        assert_eq!(core.reply(tag, t1), Some(2));
        core.set_receiving(true); // its data is still coming
        let Action::Heartbeat(probe) = core.tick(t1 + SEC) else {
            panic!("expected a heartbeat after 1 s of silence mid-reply");
        };
        core.track(probe, 99, Kind::Probe, 0, t1 + SEC);
        assert_eq!(core.tick(t1 + 5 * SEC), Action::Dead);
    }

    #[test]
    fn silence_brings_one_heartbeat_then_death() {
        let (mut core, t0) = up();
        start(&mut core, 1, t0);
        assert_eq!(core.tick(t0 + SEC / 2), Action::Idle);
        let Action::Heartbeat(probe) = core.tick(t0 + SEC) else {
            panic!("expected a heartbeat after 1 s of silence");
        };
        core.track(probe, 99, Kind::Probe, 0, t0 + SEC);
        assert_eq!(core.tick(t0 + 2 * SEC), Action::Idle, "one probe at a time");
        assert_eq!(core.tick(t0 + 5 * SEC), Action::Dead);
        assert!(matches!(core.link(), Link::Down { expired: false, .. }));
        assert_eq!(core.stats().dead_detections, 1);
        assert_eq!(core.stats().heartbeats, 1);
    }

    #[test]
    fn bytes_heard_keep_a_busy_lane_alive() {
        let (mut core, t0) = up();
        start(&mut core, 1, t0);
        for second in 1..20 {
            core.heard(t0 + second * SEC);
            assert_ne!(core.tick(t0 + second * SEC + SEC / 2), Action::Dead);
        }
    }

    #[test]
    fn answered_probe_resets_silence() {
        let (mut core, t0) = up();
        start(&mut core, 1, t0);
        let Action::Heartbeat(probe) = core.tick(t0 + SEC) else {
            panic!("expected a heartbeat");
        };
        core.track(probe, 99, Kind::Probe, 0, t0 + SEC);
        assert_eq!(core.reply(probe, t0 + 2 * SEC), Some(99));
        assert!(matches!(core.tick(t0 + 3 * SEC), Action::Heartbeat(_)));
        assert_eq!(
            core.tick(t0 + 7 * SEC),
            Action::Dead,
            "silent again since 2 s"
        );
        let (mut core, t0) = up();
        start(&mut core, 1, t0);
        core.heard(t0 + 4 * SEC);
        assert!(matches!(core.tick(t0 + 5 * SEC), Action::Heartbeat(_)));
    }

    #[test]
    fn busy_clock_starts_when_the_lane_becomes_busy() {
        let (mut core, t0) = up();
        let later = t0 + 100 * SEC;
        start(&mut core, 1, later);
        assert_eq!(core.tick(later + SEC / 2), Action::Idle);
    }

    #[test]
    fn reconnect_reissues_in_order_and_drops_probes() {
        let (mut core, t0) = up();
        let tags: Vec<u32> = (0..4).map(|i| start(&mut core, i, t0)).collect();
        assert_eq!(batch(&mut core).len(), 4);
        core.reply(tags[1], t0);
        let Action::Heartbeat(probe) = core.tick(t0 + SEC) else {
            panic!("expected a heartbeat");
        };
        core.track(probe, 99, Kind::Probe, 0, t0 + SEC);
        let generation = core.generation();
        assert!(core.connection_lost(generation, t0 + 2 * SEC));
        assert!(!core.connection_lost(generation, t0 + 2 * SEC), "news once");
        // A request started while down waits, unsent, and goes out after the others.
        start(&mut core, 7, t0 + 2 * SEC);
        assert!(batch(&mut core).is_empty());
        let (next, dropped) = core.connected(t0 + 3 * SEC);
        assert_eq!(next, generation + 1);
        assert_eq!(dropped, vec![99]);
        assert_eq!(batch(&mut core), vec![0, 2, 3, 7]);
        assert!(!core.is_current(generation));
        assert_eq!(core.stats().reconnects, 1);
    }

    #[test]
    fn down_past_the_bound_fails_everything_then_new_requests() {
        let (mut core, t0) = up();
        start(&mut core, 1, t0);
        core.connection_lost(core.generation(), t0);
        start(&mut core, 2, t0 + SEC);
        assert_eq!(core.tick(t0 + 29 * SEC), Action::Idle);
        let Action::Fail(mut failed) = core.tick(t0 + 30 * SEC) else {
            panic!("expected the policy bound to fail the pending requests");
        };
        failed.sort_unstable();
        assert_eq!(failed, vec![1, 2]);
        assert_eq!(core.begin(Kind::Request), Err(Errno::EIO));
        assert_eq!(core.stats().failed, 3);
        core.connected(t0 + 40 * SEC);
        assert!(core.begin(Kind::Request).is_ok(), "back once reconnected");
    }

    #[test]
    fn refusal_is_final_until_a_connection_succeeds() {
        let (mut core, t0) = up();
        start(&mut core, 1, t0);
        core.connection_lost(core.generation(), t0);
        let eacces = Errno(libc::EACCES);
        assert_eq!(core.refused(eacces), vec![1]);
        assert_eq!(core.begin(Kind::Request), Err(eacces));
        assert_eq!(core.tick(t0 + 100 * SEC), Action::Idle);
        core.connected(t0 + 100 * SEC);
        assert!(core.begin(Kind::Request).is_ok());
    }

    #[test]
    fn close_fails_everything_and_stays_closed() {
        let (mut core, t0) = up();
        start(&mut core, 1, t0);
        assert_eq!(core.close(), vec![1]);
        assert_eq!(core.begin(Kind::Request), Err(Errno::EIO));
        assert!(core.refused(Errno::EIO).is_empty());
        assert_eq!(core.link(), Link::Closed);
    }

    #[test]
    fn tags_in_flight_are_never_reused() {
        let (mut core, t0) = up();
        core.next_tag = u32::MAX;
        let a = start(&mut core, 1, t0);
        let b = start(&mut core, 2, t0);
        assert_eq!((a, b), (u32::MAX, 0));
        core.next_tag = u32::MAX;
        assert_eq!(start(&mut core, 3, t0), 1, "skips both tags in flight");
    }

    #[test]
    fn outstanding_bytes_follow_requests_replies_and_failures() {
        let (mut core, t0) = up();
        let a = start(&mut core, 4096, t0);
        start(&mut core, 512, t0);
        assert_eq!(core.outstanding_bytes(), 4608);
        let slot = core.reply(a, t0).unwrap();
        assert_eq!(core.outstanding_bytes(), 512);
        core.restore(a, slot, 4096).unwrap();
        assert_eq!(core.outstanding_bytes(), 4608);
        core.connection_lost(core.generation(), t0);
        core.connected(t0);
        assert_eq!(
            core.outstanding_bytes(),
            4608,
            "reissued, still outstanding"
        );
        core.close();
        assert_eq!(core.outstanding_bytes(), 0);
    }

    #[test]
    fn a_reply_cut_off_is_restored_and_reissued() {
        let (mut core, t0) = up();
        let tag = start(&mut core, 5, t0);
        batch(&mut core);
        let slot = core.reply(tag, t0).unwrap();
        core.restore(tag, slot, 5).unwrap();
        core.connection_lost(core.generation(), t0);
        core.connected(t0);
        assert_eq!(batch(&mut core), vec![5]);
        let slot = core.reply(tag, t0).unwrap();
        core.close();
        assert_eq!(
            core.restore(tag, slot, 5),
            Err((5, Errno::EIO)),
            "never lost"
        );
    }
}
