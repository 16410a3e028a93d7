//! Control sessions: discovery, keepalive, and the partition list pushed on change.
//!
//! Requests pass from the socket's reader task to the session through a channel of
//! [`CONTROL_QUEUE`] requests: when the peer does not read the answers, the session's send
//! waits, the channel fills, and the reader stops reading the socket, so a ping flood
//! costs a fixed amount of memory and TCP pushes back.

use std::rc::Rc;

use tokio::sync::mpsc;
use tokio_uring::net::TcpStream;
use wire::frame::Limits;
use wire::{ControlEvent, ControlRequest, PartitionInfo};

use super::frames::{send_message, FrameReader};
use super::Shared;
use crate::error::Result;

/// Requests read ahead of the one being answered.
const CONTROL_QUEUE: usize = 8;

/// Serves one control connection of `host` until the peer leaves, the host is deleted or
/// a frame does not decode.
pub async fn serve(
    shared: &Shared,
    stream: Rc<TcpStream>,
    reader: FrameReader,
    host: &str,
) -> Result<()> {
    let (requests_tx, requests) = mpsc::channel(CONTROL_QUEUE);
    // The socket is read by its own task: a receive is never cancelled half-way.
    let reader_task = tokio_uring::spawn(read_requests(reader, requests_tx));
    let outcome = answer(shared, &stream, requests, host).await;
    // The reader task's receive holds the socket until it completes: shut the socket down
    // so that it does, and the descriptor is closed when the last handle drops.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    reader_task.abort();
    outcome
}

/// Answers requests and pushes changes until the peer leaves, the host is deleted or a
/// frame does not decode.
async fn answer(
    shared: &Shared,
    stream: &TcpStream,
    mut requests: mpsc::Receiver<Result<ControlRequest>>,
    host: &str,
) -> Result<()> {
    let mut changes = shared.array.subscribe();
    let mut last_sent: Option<Vec<PartitionInfo>> = shared
        .array
        .host_partitions(host)
        .map(|(_, partitions)| partitions);
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                None => return Ok(()),
                Some(Err(error)) => return Err(error),
                Some(Ok(ControlRequest::Ping(value))) => {
                    send_message(stream, &ControlEvent::Pong(value)).await?;
                }
                Some(Ok(ControlRequest::ListPartitions)) => {
                    let Some((generation, partitions)) = shared.array.host_partitions(host) else {
                        return Ok(());
                    };
                    last_sent = Some(partitions.clone());
                    send_message(stream, &ControlEvent::Partitions { generation, partitions }).await?;
                }
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let Some((generation, partitions)) = shared.array.host_partitions(host) else {
                    log::info!("host {host:?} was deleted; closing its control session");
                    return Ok(());
                };
                if last_sent.as_ref() != Some(&partitions) {
                    last_sent = Some(partitions.clone());
                    send_message(stream, &ControlEvent::Partitions { generation, partitions }).await?;
                }
            }
        }
    }
}

async fn read_requests(mut reader: FrameReader, requests: mpsc::Sender<Result<ControlRequest>>) {
    loop {
        let next = reader
            .next_message::<ControlRequest>(Limits::HANDSHAKE, "ControlRequest")
            .await;
        let stop = !matches!(next, Ok(Some(_)));
        let forwarded = match next {
            Ok(Some(request)) => requests.send(Ok(request)).await,
            Ok(None) => return,
            Err(error) => requests.send(Err(error)).await,
        };
        if stop || forwarded.is_err() {
            return;
        }
    }
}
