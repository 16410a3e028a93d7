//! Who gets a file descriptor: connections that have not proved a secret yet live in a
//! small room of their own, authenticated ones in the rest, and a failing `accept` backs
//! off instead of spinning.
//!
//! # Budgets
//!
//! - **Unauthenticated**: at most `max_unauthenticated` connections per server (split
//!   evenly over the threads, at least one each) between `accept` and the end of their
//!   handshake, which has a deadline (`handshake_timeout`). When a thread's share is full,
//!   a new connection evicts one waiting connection (its socket is shut down): one from
//!   the peer address that holds the most places, and of those the oldest that has not
//!   sent a well-formed `Hello` yet, else the oldest ([`pick_victim`]). So a flood holds at
//!   most `max_unauthenticated` descriptors; one from other addresses never evicts a
//!   host's connection while the flood holds more places than the host, and a flood of
//!   silent connections from the host's own address (a shared NAT, loopback) evicts its
//!   own connections first once the host has said `Hello`. A flood of well-formed hellos
//!   from the host's own address at a rate above the room divided by the host's round
//!   trip can still delay it: no bounded room tells such a flood from hosts.
//! - **Authenticated**: `max_connections` sessions, clamped at start so that they, the
//!   unauthenticated room and [`FD_RESERVE`] fit in the descriptor limit (raised to its
//!   hard limit first). A session may hold [`FDS_PER_SESSION`] descriptors.
//! - **Accept failures** (out of descriptors, ...): the next attempt waits
//!   [`ACCEPT_FIRST_BACKOFF`], doubled per failure up to [`ACCEPT_MAX_BACKOFF`]; failures
//!   are logged at most once per [`ACCEPT_LOG_EVERY`] with the count since the last line.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio_uring::net::TcpStream;

/// Descriptors kept out of every connection budget: member disks per thread, listeners,
/// metadata handles, the admin service, logs.
pub const FD_RESERVE: u64 = 256;
/// Descriptors one authenticated session may hold: its socket (write payloads are received
/// into disk mappings through the socket itself, see `net/recv_all.rs`).
pub const FDS_PER_SESSION: u64 = 1;
/// First pause after a failed `accept`.
pub const ACCEPT_FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between two `accept` attempts while they fail.
pub const ACCEPT_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Shortest interval between two log lines about failing `accept`s.
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// Raises the soft descriptor limit to the hard one; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return u64::MAX;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: plain system call with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
        log::warn!(
            "cannot raise the descriptor limit: {}",
            std::io::Error::last_os_error()
        );
    }
    limit.rlim_cur
}

/// `max_connections` clamped to what the descriptor limit `fd_limit` leaves once the
/// unauthenticated room and the reserve are set aside.
pub fn session_room(fd_limit: u64, max_connections: usize, max_unauthenticated: usize) -> usize {
    let left = fd_limit
        .saturating_sub(FD_RESERVE)
        .saturating_sub(max_unauthenticated as u64);
    let room = usize::try_from(left / FDS_PER_SESSION).unwrap_or(usize::MAX);
    if room < max_connections {
        log::warn!(
            "descriptor limit {fd_limit} leaves room for {room} sessions, not {max_connections}"
        );
    }
    room.min(max_connections)
}

/// One thread's unauthenticated connections, oldest first.
pub struct Unauthenticated {
    share: usize,
    next_id: u64,
    waiting: VecDeque<Waiting>,
}

/// One connection between `accept` and the end of its handshake.
struct Waiting {
    id: u64,
    stream: Rc<TcpStream>,
    peer: IpAddr,
    /// Set by the handshake once the peer's `Hello` decoded.
    spoke: Rc<Cell<bool>>,
}

/// A connection's place among the unauthenticated ones (see [`Unauthenticated::admit`]).
#[derive(Debug)]
pub struct Admission {
    /// For [`Unauthenticated::leave`].
    pub id: u64,
    /// To be set once the peer's `Hello` decoded: such a connection is evicted after the
    /// silent ones of its address.
    pub spoke: Rc<Cell<bool>>,
    /// Whether another connection was shut down to make room.
    pub evicted: bool,
}

impl std::fmt::Debug for Unauthenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unauthenticated")
            .field("share", &self.share)
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl Unauthenticated {
    /// Room for `share` connections (at least one).
    pub fn new(share: usize) -> Rc<RefCell<Unauthenticated>> {
        Rc::new(RefCell::new(Unauthenticated {
            share: share.max(1),
            next_id: 0,
            waiting: VecDeque::new(),
        }))
    }

    /// Admits `stream` from `peer`; when the room is full one waiting connection is shut
    /// down first, chosen by [`pick_victim`].
    pub fn admit(&mut self, stream: Rc<TcpStream>, peer: IpAddr) -> Admission {
        let mut evicted = false;
        while self.waiting.len() >= self.share {
            let places = self.waiting.iter().map(|w| (w.peer, w.spoke.get()));
            let Some(victim) = pick_victim(places).and_then(|i| self.waiting.remove(i)) else {
                break;
            };
            // Its pending receive completes, its handshake fails, its task ends.
            let _ = victim.stream.shutdown(std::net::Shutdown::Both);
            evicted = true;
        }
        let id = self.next_id;
        self.next_id += 1;
        let spoke = Rc::new(Cell::new(false));
        self.waiting.push_back(Waiting {
            id,
            stream,
            peer,
            spoke: spoke.clone(),
        });
        Admission { id, spoke, evicted }
    }

    /// The connection `id` finished its handshake (or failed it).
    pub fn leave(&mut self, id: u64) {
        self.waiting.retain(|waiting| waiting.id != id);
    }
}

/// Which of the waiting connections (peer address, whether it has said `Hello`; oldest
/// first) to evict: of the address holding the most places (the earliest such address on
/// a tie), the oldest silent one, else its oldest. `None` when there are none.
pub fn pick_victim(places: impl Iterator<Item = (IpAddr, bool)> + Clone) -> Option<usize> {
    let mut held: HashMap<IpAddr, usize> = HashMap::new();
    for (peer, _) in places.clone() {
        *held.entry(peer).or_default() += 1;
    }
    let most = held.values().copied().max()?;
    let (busiest, _) = places.clone().find(|(peer, _)| held[peer] == most)?;
    let mut of_busiest = places.enumerate().filter(|(_, (peer, _))| *peer == busiest);
    let oldest = of_busiest.clone().next().map(|(index, _)| index);
    of_busiest
        .find(|(_, (_, spoke))| !spoke)
        .map(|(index, _)| index)
        .or(oldest)
}

/// Spacing and logging of `accept` retries.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Default for AcceptBackoff {
    fn default() -> AcceptBackoff {
        AcceptBackoff {
            next: ACCEPT_FIRST_BACKOFF,
            last_log: None,
            unlogged: 0,
        }
    }
}

impl AcceptBackoff {
    /// Notes a failure; returns how long to wait before the next attempt.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        self.unlogged += 1;
        let due = self
            .last_log
            .is_none_or(|last| last.elapsed() >= ACCEPT_LOG_EVERY);
        if due {
            log::warn!(
                "accept failed {} time(s): {error}; retrying in {:?}",
                self.unlogged,
                self.next
            );
            self.last_log = Some(Instant::now());
            self.unlogged = 0;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(ACCEPT_MAX_BACKOFF);
        wait
    }

    /// Notes a success: the next failure waits the shortest pause again.
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_FIRST_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_busiest_address_loses_a_place_before_a_host_with_one() {
        // A host (address 9) said hello first; a flood from address 1 came after it.
        let places = [
            (ip(9), true),
            (ip(1), false),
            (ip(1), false),
            (ip(1), false),
        ];
        assert_eq!(pick_victim(places.iter().copied()), Some(1));
        // Even a silent host is safe while the flood holds more places.
        let places = [(ip(9), false), (ip(1), true), (ip(1), true)];
        assert_eq!(pick_victim(places.iter().copied()), Some(1));
    }

    #[test]
    fn from_one_address_the_silent_go_before_those_that_said_hello() {
        let places = [(ip(1), true), (ip(1), false), (ip(1), true), (ip(1), false)];
        assert_eq!(pick_victim(places.iter().copied()), Some(1));
        let places = [(ip(1), true), (ip(1), true)];
        assert_eq!(pick_victim(places.iter().copied()), Some(0), "the oldest");
    }

    #[test]
    fn ties_go_to_the_address_seen_first_and_nothing_is_picked_from_nothing() {
        let places = [(ip(2), true), (ip(3), false), (ip(3), true), (ip(2), false)];
        assert_eq!(pick_victim(places.iter().copied()), Some(3));
        assert_eq!(pick_victim(std::iter::empty()), None);
    }
}
