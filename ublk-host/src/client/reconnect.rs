//! Re-establishing a dropped lane off the queue thread.
//!
//! TCP connect and the handshake are blocking and may take up to the handshake deadline
//! per attempt, so they run on a short-lived helper thread that retries with backoff and
//! hands the authenticated socket back through a mutex-protected mailbox, waking the
//! queue's reconnect task through an eventfd the task reads on the queue's io_uring. Only
//! reconnection crosses threads; the data path never does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wire::Purpose;

use crate::client::config::ClientConfig;
use crate::client::connect::{connect, Connection};
use crate::client::uring::EventFd;

/// First pause between failed attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Shared between one reconnect episode's helper thread and the queue.
#[derive(Debug)]
pub(crate) struct Mailbox {
    /// Signalled when `connection` is filled.
    pub event: EventFd,
    /// The authenticated connection, once one attempt succeeded.
    pub connection: Mutex<Option<Connection>>,
    /// Set by the queue to make the helper give up (the engine is closing).
    pub stop: AtomicBool,
}

impl Mailbox {
    /// An empty mailbox around `event`.
    pub fn new(event: EventFd) -> Mailbox {
        Mailbox {
            event,
            connection: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    /// Takes the connection the helper delivered, if any.
    pub fn take(&self) -> Option<Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// Starts a helper thread that retries `connect` with backoff until it succeeds or
/// `mailbox.stop` is set.
pub(crate) fn spawn_helper(config: ClientConfig, purpose: Purpose, mailbox: Arc<Mailbox>) {
    let spawned = std::thread::Builder::new()
        .name("lane-reconnect".into())
        .spawn(move || retry(&config, purpose, &mailbox));
    if let Err(e) = spawned {
        log::error!("cannot start a reconnect thread: {e}");
    }
}

fn retry(config: &ClientConfig, purpose: Purpose, mailbox: &Mailbox) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    while !mailbox.stop.load(Ordering::Relaxed) {
        attempts += 1;
        match connect(config, purpose) {
            Ok(connection) => {
                log::info!("{purpose:?}: reconnected after {attempts} attempt(s)");
                *mailbox
                    .connection
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(connection);
                mailbox.event.signal();
                return;
            }
            Err(e) => log::warn!("{purpose:?}: reconnect attempt {attempts} failed: {e}"),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
