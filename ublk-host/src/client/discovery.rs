//! Discovery: the control connection on which the server lists this host's partitions and
//! pushes every change; [`Watch`] follows the changes across server restarts.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use wire::WireError;
use wire::{Access, ControlEvent, ControlRequest, PartitionInfo, Purpose, RefusedCode, Welcome};

use crate::client::config::ClientConfig;
use crate::client::connect::{connect, read_message, write_message};
use crate::error::{HostError, Result};

/// Default quiet time on a watched control connection before a keepalive ping.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// This host's partitions at one metadata generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionList {
    /// The server's metadata generation the list was taken from.
    pub generation: u64,
    /// Every partition assigned to this host.
    pub partitions: Vec<PartitionInfo>,
}

impl PartitionList {
    /// The partition called `name`.
    pub fn find(&self, name: &str) -> Result<&PartitionInfo> {
        self.partitions
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| HostError::UnknownPartition(name.to_owned()))
    }
}

/// An authenticated control connection.
#[derive(Debug)]
pub struct Discovery {
    stream: TcpStream,
    welcome: Welcome,
    next_ping: u64,
}

impl Discovery {
    /// Connects and authenticates a control connection.
    pub fn open(config: &ClientConfig) -> Result<Discovery> {
        let connection = connect(config, Purpose::Control)?;
        Ok(Discovery {
            stream: connection.stream,
            welcome: connection.welcome,
            next_ping: 0,
        })
    }

    /// What the server said when the connection opened (its `max_io`, its array id).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Asks for the partition list and waits for it.
    pub fn list(&mut self) -> Result<PartitionList> {
        write_message(&self.stream, &ControlRequest::ListPartitions)?;
        self.stream
            .set_read_timeout(Some(DEFAULT_KEEPALIVE))
            .map_err(|e| HostError::io("setting a read timeout", e))?;
        loop {
            if let Some(list) = self.read_event()? {
                return Ok(list);
            }
        }
    }

    /// Waits for the next list the server pushes; pings after `keepalive` of silence and
    /// fails if the server stays silent for another `keepalive`.
    pub fn next_change(&mut self, keepalive: Duration) -> Result<PartitionList> {
        self.stream
            .set_read_timeout(Some(keepalive))
            .map_err(|e| HostError::io("setting a read timeout", e))?;
        let mut pinged = false;
        loop {
            match self.read_event() {
                Ok(Some(list)) => return Ok(list),
                Ok(None) => pinged = false,
                Err(HostError::Io { source, .. }) if is_timeout(&source) && !pinged => {
                    self.next_ping += 1;
                    write_message(&self.stream, &ControlRequest::Ping(self.next_ping))?;
                    pinged = true;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One event: `Some` for a partition list, `None` for a pong.
    fn read_event(&mut self) -> Result<Option<PartitionList>> {
        let event: ControlEvent = read_message(&self.stream, "ControlEvent")?;
        Ok(match event {
            ControlEvent::Partitions {
                generation,
                partitions,
            } => Some(PartitionList {
                generation,
                partitions,
            }),
            ControlEvent::Pong(_) => None,
        })
    }
}

/// First pause after a failed reconnect attempt of a [`Watch`]; it doubles up to
/// [`WATCH_MAX_BACKOFF`].
pub const WATCH_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts of a [`Watch`].
pub const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While a [`Watch`] cannot reconnect, it logs at most once per this interval.
pub const WATCH_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A partition list followed for as long as the caller wants: the current list first, then
/// every change. When the connection is lost (the server restarts, the network drops) it
/// reconnects with backoff, like the lanes, lists again and reports the list if it differs
/// from the last one returned. Logs one line when the connection is lost, at most one per
/// [`WATCH_LOG_INTERVAL`] while it stays lost, and one when it is back.
#[derive(Debug)]
pub struct Watch {
    config: ClientConfig,
    keepalive: Duration,
    discovery: Option<Discovery>,
    /// Whether the current connection has been asked for the list yet.
    listed: bool,
    last: Option<PartitionList>,
    backoff: Duration,
}

impl Watch {
    /// Opens the first connection; an error here (server unreachable, refused) is returned
    /// as is, since it usually means a wrong address or secret.
    pub fn open(config: &ClientConfig, keepalive: Duration) -> Result<Watch> {
        let discovery = Discovery::open(config)?;
        Ok(Watch {
            config: config.clone(),
            keepalive,
            discovery: Some(discovery),
            listed: false,
            last: None,
            backoff: WATCH_FIRST_BACKOFF,
        })
    }

    /// The current list on the first call, then the next list that differs from the last
    /// one returned. Fails only on an error reconnecting cannot fix (the server refuses this
    /// host, or answers with something that is not the protocol).
    pub fn next_list(&mut self) -> Result<PartitionList> {
        loop {
            let discovery = match self.discovery.as_mut() {
                Some(discovery) => discovery,
                None => {
                    self.listed = false;
                    let discovery = self.reconnect()?;
                    self.discovery.insert(discovery)
                }
            };
            let outcome = if self.listed {
                discovery.next_change(self.keepalive)
            } else {
                self.listed = true;
                discovery.list()
            };
            match outcome {
                Ok(list) if self.last.as_ref() == Some(&list) => {}
                Ok(list) => {
                    self.last = Some(list.clone());
                    return Ok(list);
                }
                Err(error) if is_transient(&error) => {
                    log::warn!("discovery on {}: {error}; reconnecting", self.config.server);
                    self.discovery = None;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Opens a new control connection, retrying transient failures with backoff.
    fn reconnect(&mut self) -> Result<Discovery> {
        let started = Instant::now();
        let mut logged = started;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match Discovery::open(&self.config) {
                Ok(discovery) => {
                    log::info!(
                        "discovery on {}: reconnected after {attempts} attempt(s), {:.1} s",
                        self.config.server,
                        started.elapsed().as_secs_f64()
                    );
                    self.backoff = WATCH_FIRST_BACKOFF;
                    return Ok(discovery);
                }
                Err(error) if is_transient(&error) => {
                    if logged.elapsed() >= WATCH_LOG_INTERVAL {
                        log::warn!(
                            "discovery on {}: still unreachable after {attempts} attempts: {error}",
                            self.config.server
                        );
                        logged = Instant::now();
                    }
                }
                Err(error) => return Err(error),
            }
            std::thread::sleep(self.backoff);
            self.backoff = (self.backoff * 2).min(WATCH_MAX_BACKOFF);
        }
    }
}

/// Whether reconnecting may cure `error`: the connection broke or could not be made, or
/// the server was busy.
fn is_transient(error: &HostError) -> bool {
    match error {
        HostError::Resolve { .. }
        | HostError::Connect { .. }
        | HostError::Io { .. }
        | HostError::HandshakeTimeout { .. }
        | HostError::Closed => true,
        HostError::Wire(WireError::Refused { code, .. }) => *code == RefusedCode::Busy,
        HostError::Wire(WireError::Truncated { .. }) => true,
        _ => false,
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One line describing a partition: name, id, size, access, shared.
pub fn describe(partition: &PartitionInfo) -> String {
    let access = match partition.access {
        Access::ReadWrite => "rw",
        Access::ReadOnly => "ro",
    };
    let shared = if partition.shared {
        "shared"
    } else {
        "private"
    };
    format!(
        "{name}\tid={id}\tsize={size}\taccess={access}\t{shared}\tblock={block}\tchunk={chunk}",
        name = partition.name,
        id = partition.id,
        size = partition.size,
        block = partition.block_size,
        chunk = partition.chunk_size,
    )
}
