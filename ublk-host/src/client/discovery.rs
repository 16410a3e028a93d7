//! Discovery: the control connection on which the server lists this host's partitions and
//! pushes every change.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use wire::{Access, ControlEvent, ControlRequest, PartitionInfo, Purpose, Welcome};

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
