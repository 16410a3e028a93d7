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
//!
//! Every connection, the first included, must be one the lane can use ([`Expected`]): for
//! its partition, and once the lane runs, with the block size and at least the `max_io`
//! its engine was set up by. A `Welcome` that is not is a failed attempt like any other
//! (the server may be changing hands; the lane keeps trying), never installed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wire::{PartitionInfo, Purpose, RefusedCode, Welcome, WireError};

use crate::client::config::ClientConfig;
use crate::client::connect::{connect, next_lane_epoch, Connection};
use crate::client::ratelog::RateLimited;
use crate::client::uring::EventFd;
use crate::error::{Errno, HostError};

/// First pause between failed attempts, and before reconnecting a lane that relapsed (see
/// `lane_core.rs`); it doubles up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between failed attempts, or before reconnecting a relapsed lane: a
/// healed server is used again within about this long.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Pause between attempts while the server refuses the lane for good.
pub const REFUSED_RETRY: Duration = Duration::from_secs(3);
/// Deadline of one reconnect attempt's TCP connect: a new SYN at least this often, so a
/// healed path is used within about this long.
const RECONNECT_TCP_TIMEOUT: Duration = Duration::from_secs(1);

/// What a data connection's `Welcome` must say for the lane to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expected {
    /// The partition the lane serves.
    pub partition: u32,
    /// What the lane's engine runs by, once the first connection set it.
    pub running: Option<Running>,
}

/// The geometry a running lane's engine was set up by (split sizes, buffer limits), which
/// a new connection must honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Running {
    /// The `max_io` of the first connection: requests are cut to it.
    pub max_io: u32,
    /// The partition's block size: requests are aligned to it.
    pub block_size: u32,
}

impl Expected {
    /// The partition `welcome` opens, if the lane can use the connection (its geometry
    /// itself was checked when it arrived, see `geometry.rs`).
    pub fn accept(&self, welcome: &Welcome) -> Result<PartitionInfo, HostError> {
        let bad = |what: String| Err(HostError::Protocol(what));
        let Some(info) = welcome.partition.clone() else {
            return bad("a data connection's Welcome carries no partition".into());
        };
        if info.id != self.partition {
            return bad(format!(
                "asked for partition {}, the server opened {}",
                self.partition, info.id
            ));
        }
        if welcome.max_io < info.block_size {
            return bad(format!(
                "max_io {} is less than one {}-byte block",
                welcome.max_io, info.block_size
            ));
        }
        let Some(running) = self.running else {
            return Ok(info);
        };
        if info.block_size != running.block_size {
            return bad(format!(
                "the block size changed from {} to {} under a running lane",
                running.block_size, info.block_size
            ));
        }
        if welcome.max_io < running.max_io {
            return bad(format!(
                "max_io shrank from {} to {} under a running lane",
                running.max_io, welcome.max_io
            ));
        }
        Ok(info)
    }
}

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

/// Starts a helper thread that waits `pause`, then retries `connect` for `purpose` (with a
/// fresh epoch each time) until it gets a connection the lane can use (`expected`) or
/// `mailbox.stop` is set. Each attempt tries the `paths` (path index, address) in the
/// order given.
pub(crate) fn spawn_helper(
    config: ClientConfig,
    paths: Vec<(usize, String)>,
    (purpose, expected): (Purpose, Expected),
    mailbox: Arc<Mailbox>,
    pause: Duration,
) -> Result<(), HostError> {
    let mut config = config;
    config.connect_timeout = config.connect_timeout.min(RECONNECT_TCP_TIMEOUT);
    std::thread::Builder::new()
        .name("lane-reconnect".into())
        .spawn(move || {
            sleep_unless_stopped(&mailbox, pause);
            retry(
                &config,
                &paths,
                (purpose, expected),
                &mailbox,
                pause.is_zero(),
            );
        })
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

/// One connection attempt over each of `paths` in turn: the first that succeeds with a
/// connection the lane can use (with its path index and partition), else the last error.
pub(crate) fn connect_first(
    config: &ClientConfig,
    paths: &[(usize, String)],
    (purpose, expected): (Purpose, Expected),
) -> Result<(Connection, usize, PartitionInfo), HostError> {
    let mut last = HostError::Closed;
    for (index, addr) in paths {
        let attempt = connect(&config.via(addr), fresh(purpose)).and_then(|connection| {
            let info = expected.accept(&connection.welcome)?;
            Ok((connection, info))
        });
        match attempt {
            Ok((connection, info)) => return Ok((connection, *index, info)),
            Err(error) if final_refusal(&error).is_some() => return Err(error),
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// Retries until connected or stopped. A lane that relapsed (`announce` false) logs its
/// reconnect at debug level only: the lane's own rate-limited warning says it is lost.
fn retry(
    config: &ClientConfig,
    paths: &[(usize, String)],
    (purpose, expected): (Purpose, Expected),
    mailbox: &Mailbox,
    announce: bool,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut refused = false;
    let failures = RateLimited::default();
    while !mailbox.stop.load(Ordering::Relaxed) {
        attempts += 1;
        match connect_first(config, paths, (purpose, expected)) {
            Ok((connection, path, _)) => {
                let level = if announce {
                    log::Level::Info
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "{purpose:?}: reconnected on path {path} after {attempts} attempt(s)"
                );
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
