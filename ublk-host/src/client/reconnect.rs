//! Re-establishing a dropped lane off the queue thread.
//!
//! TCP connect and the handshake are blocking and may take up to the handshake deadline
//! per attempt, so they run on a short-lived helper thread that retries with backoff and
//! hands what it got back through a mutex-protected mailbox, waking the lane through an
//! eventfd the lane reads on the queue's io_uring. Only reconnection crosses threads; the
//! data path never does.
//!
//! Every attempt carries a fresh lane epoch, so the server fences the connection it
//! replaces. A final refusal (the partition is not assigned to the host any more, or the
//! host is not recognised) is posted to the lane at once, which fails its I/O with the
//! refusal's errno; the helper then keeps re-checking every [`REFUSED_RETRY`], so a
//! re-assignment brings the lane back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wire::{Purpose, RefusedCode, WireError};

use crate::client::config::ClientConfig;
use crate::client::connect::{connect, next_lane_epoch, Connection};
use crate::client::ratelog::RateLimited;
use crate::client::uring::EventFd;
use crate::error::{Errno, HostError};

/// First pause between failed attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Pause between attempts while the server refuses the lane for good.
pub const REFUSED_RETRY: Duration = Duration::from_secs(3);
/// Deadline of one reconnect attempt's TCP connect: a new SYN at least this often, so a
/// healed path is used within about this long.
const RECONNECT_TCP_TIMEOUT: Duration = Duration::from_secs(1);

/// What the helper hands the lane.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// An authenticated connection, and the index of the path it runs on.
    Connected(Connection, usize),
    /// A final refusal: fail the lane's I/O with this errno (the helper keeps trying).
    Refused(Errno),
}

/// Shared between one reconnect episode's helper thread and the queue.
#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Signalled when something is delivered, or to stop a waiting lane.
    pub event: EventFd,
    delivery: Mutex<Option<Delivery>>,
    /// Set by the queue to make the helper give up (the engine is closing).
    pub stop: AtomicBool,
}

impl Mailbox {
    /// An empty mailbox around `event`.
    pub fn new(event: EventFd) -> Mailbox {
        Mailbox {
            event,
            delivery: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    /// Takes what the helper delivered, if anything.
    pub fn take(&self) -> Option<Delivery> {
        self.delivery
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn deliver(&self, delivery: Delivery) {
        *self
            .delivery
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(delivery);
        self.event.signal();
    }

    /// Makes the helper give up and wakes the lane waiting on the mailbox.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.event.signal();
    }
}

/// Starts a helper thread that retries `connect` for `purpose` (with a fresh epoch each
/// time) until it succeeds or `mailbox.stop` is set. Each attempt tries the `paths`
/// (path index, address) in the order given.
pub(crate) fn spawn_helper(
    config: ClientConfig,
    paths: Vec<(usize, String)>,
    purpose: Purpose,
    mailbox: Arc<Mailbox>,
) -> Result<(), HostError> {
    let mut config = config;
    config.connect_timeout = config.connect_timeout.min(RECONNECT_TCP_TIMEOUT);
    std::thread::Builder::new()
        .name("lane-reconnect".into())
        .spawn(move || retry(&config, &paths, purpose, &mailbox))
        .map(drop)
        .map_err(|e| HostError::io("starting a reconnect thread", e))
}

/// With a new lane epoch (data lanes); other purposes unchanged.
fn fresh(purpose: Purpose) -> Purpose {
    match purpose {
        Purpose::Data {
            partition,
            queue,
            lane,
            ..
        } => Purpose::Data {
            partition,
            queue,
            lane,
            epoch: next_lane_epoch(),
        },
        Purpose::Control => Purpose::Control,
    }
}

/// The errno a final refusal fails I/O with; `None` for a transient failure.
fn final_refusal(error: &HostError) -> Option<Errno> {
    match error {
        HostError::Wire(
            wire_error @ (WireError::Refused {
                code: RefusedCode::NotAssigned | RefusedCode::Authentication,
                ..
            }
            | WireError::BadClientProof),
        ) => Some(Errno(wire_error.errno())),
        _ => None,
    }
}

/// One connection attempt over each of `paths` in turn: the first that succeeds (with
/// its path index), else the last error.
pub(crate) fn connect_first(
    config: &ClientConfig,
    paths: &[(usize, String)],
    purpose: Purpose,
) -> Result<(Connection, usize), HostError> {
    let mut last = HostError::Closed;
    for (index, addr) in paths {
        match connect(&config.via(addr), fresh(purpose)) {
            Ok(connection) => return Ok((connection, *index)),
            Err(error) if final_refusal(&error).is_some() => return Err(error),
            Err(error) => last = error,
        }
    }
    Err(last)
}

fn retry(config: &ClientConfig, paths: &[(usize, String)], purpose: Purpose, mailbox: &Mailbox) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut refused = false;
    let failures = RateLimited::default();
    while !mailbox.stop.load(Ordering::Relaxed) {
        attempts += 1;
        match connect_first(config, paths, purpose) {
            Ok((connection, path)) => {
                log::info!("{purpose:?}: reconnected on path {path} after {attempts} attempt(s)");
                mailbox.deliver(Delivery::Connected(connection, path));
                return;
            }
            Err(error) => match final_refusal(&error) {
                Some(errno) => {
                    if !refused {
                        log::error!("{purpose:?}: refused, failing its I/O with {errno}: {error}");
                        mailbox.deliver(Delivery::Refused(errno));
                        refused = true;
                    }
                    backoff = REFUSED_RETRY;
                }
                None => failures.log(log::Level::Warn, || {
                    format!("{purpose:?}: reconnect attempt {attempts} failed: {error}")
                }),
            },
        }
        sleep_unless_stopped(mailbox, backoff);
        if !refused {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Sleeps `pause` in short steps, returning early once the mailbox is stopped.
fn sleep_unless_stopped(mailbox: &Mailbox, pause: Duration) {
    const STEP: Duration = Duration::from_millis(50);
    let mut left = pause;
    while !left.is_zero() && !mailbox.stop.load(Ordering::Relaxed) {
        let step = left.min(STEP);
        std::thread::sleep(step);
        left -= step;
    }
}
