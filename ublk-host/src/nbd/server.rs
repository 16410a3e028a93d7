//! The NBD export on a Unix socket: accepts connections, negotiates each on its own thread,
//! then runs that thread as a queue engine thread of its own (own lanes, own io_uring), so
//! every NBD connection is mapped onto the lane engine the way a ublk queue is.
//!
//! Each connection takes a queue number `NBD_QUEUE_BASE + slot` (its lanes are
//! `(partition, queue, lane)` on the server), far above any ublk queue number, so an NBD
//! connection never fences a ublk device's lanes of the same partition, and connections
//! never fence each other while they live. A slot is reused once its connection ended.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wire::PartitionInfo;

use crate::client::{run_queue_thread, EngineConfig};
use crate::error::{HostError, Result};
use crate::nbd::negotiate::{negotiate, Export, Negotiated};
use crate::nbd::transmit;

/// Queue number of the first NBD connection's lanes.
pub const NBD_QUEUE_BASE: u16 = 0x8000;
/// Default bound on simultaneous NBD connections.
pub const DEFAULT_MAX_CONNECTIONS: u16 = 16;
/// A client must finish the handshake within this time.
const NEGOTIATION_DEADLINE: Duration = Duration::from_secs(10);

/// What the export serves, shared by its connection threads.
#[derive(Debug, Clone)]
pub struct NbdExport {
    /// Server, credentials and engine behaviour of every connection's lanes.
    pub engine: EngineConfig,
    /// The partition exported.
    pub partition: PartitionInfo,
    /// Bound on simultaneous connections; more are closed at once.
    pub max_connections: u16,
}

/// Which queue slots live connections use (taken at connect, given back at close: never
/// on the data path).
#[derive(Debug)]
struct Slots(Mutex<Vec<bool>>);

impl Slots {
    fn take(&self) -> Option<u16> {
        let mut used = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let free = used.iter().position(|taken| !taken)?;
        used[free] = true;
        u16::try_from(free).ok()
    }

    fn give_back(&self, slot: u16) {
        let mut used = self.0.lock().unwrap_or_else(|e| e.into_inner());
        used[usize::from(slot)] = false;
    }
}

/// Accepts connections on `listener` and serves each on its own thread, forever (until
/// accepting fails).
pub fn serve(listener: UnixListener, export: NbdExport) -> Result<()> {
    let slots = Arc::new(Slots(Mutex::new(vec![
        false;
        usize::from(export.max_connections)
    ])));
    let export = Arc::new(export);
    loop {
        let (stream, _) = listener
            .accept()
            .map_err(|e| HostError::io("accepting an NBD connection", e))?;
        let Some(slot) = slots.take() else {
            log::warn!(
                "NBD: refusing a connection: {} are open already",
                export.max_connections
            );
            continue;
        };
        let (export, slots) = (export.clone(), slots.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-{slot}"))
            .spawn(move || {
                if let Err(error) = connection(stream, &export, slot) {
                    log::info!("NBD connection {slot} closed: {error}");
                }
                slots.give_back(slot);
            });
        if let Err(error) = spawned {
            log::error!("NBD: cannot start a connection thread: {error}");
        }
    }
}

/// One connection: handshake (blocking, with a deadline), then transmission on a queue
/// engine of its own.
fn connection(mut stream: UnixStream, export: &NbdExport, slot: u16) -> Result<()> {
    let set_deadline = |stream: &UnixStream, deadline| {
        stream
            .set_read_timeout(deadline)
            .map_err(|e| HostError::io("setting the NBD handshake deadline", e))
    };
    set_deadline(&stream, Some(NEGOTIATION_DEADLINE))?;
    let description = Export::of(&export.partition);
    if negotiate(&mut stream, &description)? == Negotiated::Aborted {
        return Ok(());
    }
    set_deadline(&stream, None)?;
    let fd = stream.as_raw_fd();
    let queue = NBD_QUEUE_BASE + slot;
    let served = run_queue_thread(&export.engine, &export.partition, queue, |engine| {
        transmit::serve(engine, fd, description)
    })?;
    drop(stream);
    served
}
