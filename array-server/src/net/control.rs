//! Control sessions: discovery, keepalive, and the partition list pushed on change.

use std::rc::Rc;

use tokio::sync::mpsc;
use tokio_uring::net::TcpStream;
use wire::frame::Limits;
use wire::{ControlEvent, ControlRequest, PartitionInfo};

use super::frames::{send_message, FrameReader};
use super::Shared;
use crate::error::Result;

/// Serves one control connection of `host` until the peer leaves, the host is deleted or
/// a frame does not decode.
pub async fn serve(
    shared: &Shared,
    stream: Rc<TcpStream>,
    reader: FrameReader,
    host: &str,
) -> Result<()> {
    let (requests_tx, mut requests) = mpsc::unbounded_channel();
    // The socket is read by its own task: a receive is never cancelled half-way.
    let reader_task = tokio_uring::spawn(read_requests(reader, requests_tx));
    let mut changes = shared.array.subscribe();
    let mut last_sent: Option<Vec<PartitionInfo>> = shared
        .array
        .host_partitions(host)
        .map(|(_, partitions)| partitions);
    let outcome = loop {
        tokio::select! {
            request = requests.recv() => match request {
                None => break Ok(()),
                Some(Err(error)) => break Err(error),
                Some(Ok(ControlRequest::Ping(value))) => {
                    send_message(&stream, &ControlEvent::Pong(value)).await?;
                }
                Some(Ok(ControlRequest::ListPartitions)) => {
                    let Some((generation, partitions)) = shared.array.host_partitions(host) else {
                        break Ok(());
                    };
                    last_sent = Some(partitions.clone());
                    send_message(&stream, &ControlEvent::Partitions { generation, partitions }).await?;
                }
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let Some((generation, partitions)) = shared.array.host_partitions(host) else {
                    log::info!("host {host:?} was deleted; closing its control session");
                    break Ok(());
                };
                if last_sent.as_ref() != Some(&partitions) {
                    last_sent = Some(partitions.clone());
                    send_message(&stream, &ControlEvent::Partitions { generation, partitions }).await?;
                }
            }
        }
    };
    reader_task.abort();
    outcome
}

async fn read_requests(
    mut reader: FrameReader,
    requests: mpsc::UnboundedSender<Result<ControlRequest>>,
) {
    loop {
        let next = reader
            .next_message::<ControlRequest>(Limits::HANDSHAKE, "ControlRequest")
            .await;
        let stop = !matches!(next, Ok(Some(_)));
        let forwarded = match next {
            Ok(Some(request)) => requests.send(Ok(request)),
            Ok(None) => return,
            Err(error) => requests.send(Err(error)),
        };
        if stop || forwarded.is_err() {
            return;
        }
    }
}
