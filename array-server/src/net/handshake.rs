//! The server side of the handshake on a fresh connection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_uring::net::TcpStream;
use wire::frame::Limits;
use wire::handshake::authentication_refused;
use wire::{
    Hello, HelloReply, Nonce, Proof, ProofReply, Purpose, Refused, RefusedCode, ServerHandshake,
    Welcome, NONCE_LEN,
};

use super::frames::{send_message, FrameReader};
use super::Shared;
use crate::array::grant::LaneGrant;
use crate::error::{Error, Result};

/// An authenticated, authorised connection, before its `Welcome` is sent.
#[derive(Debug)]
pub struct Admitted {
    /// The host.
    pub host: String,
    /// What the connection is for.
    pub purpose: Purpose,
    /// For a data connection: the partition snapshot it starts with.
    pub grant: Option<Arc<LaneGrant>>,
    /// The `Welcome` to send once the session is registered.
    pub welcome: Welcome,
}

fn fresh_nonce() -> Result<Nonce> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce)
        .map_err(|e| Error::io("drawing a nonce", std::io::Error::other(e.to_string())))?;
    Ok(nonce)
}

/// Runs the handshake; `Ok(None)` when the peer left or was refused (already told why).
/// With `busy`, the hello is answered with `Refused(Busy)`.
pub async fn run(
    stream: &TcpStream,
    reader: &mut FrameReader,
    shared: &Shared,
    peer: SocketAddr,
    busy: bool,
) -> Result<Option<Admitted>> {
    let Some(hello) = reader
        .next_message::<Hello>(Limits::HANDSHAKE, "Hello")
        .await?
    else {
        return Ok(None);
    };
    if busy {
        shared.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "server at its limit of {} connections",
            shared.config.max_connections
        );
        let refused = Refused {
            code: RefusedCode::Busy,
            message,
        };
        send_message(stream, &HelloReply::Refused(refused)).await?;
        return Ok(None);
    }
    let (handshake, challenge) = match ServerHandshake::on_hello(hello, fresh_nonce()?) {
        Ok(accepted) => accepted,
        Err((error, refused)) => {
            log::info!("{peer}: hello refused: {error}");
            send_message(stream, &HelloReply::Refused(refused)).await?;
            return Ok(None);
        }
    };
    send_message(stream, &HelloReply::Challenge(challenge)).await?;
    let Some(proof) = reader
        .next_message::<Proof>(Limits::HANDSHAKE, "Proof")
        .await?
    else {
        return Ok(None);
    };
    let host = handshake.hello().host.clone();
    let secret = shared.array.host_secret(&host);
    let mac = match handshake.on_proof(secret.as_ref(), &proof) {
        Ok(mac) => mac,
        Err(error) => {
            let failures = shared
                .stats
                .failed_authentications
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            log::warn!("{peer}: host {host:?}: {error} ({failures} failed attempts so far)");
            send_message(stream, &ProofReply::Refused(authentication_refused())).await?;
            return Ok(None);
        }
    };
    let purpose = handshake.hello().purpose;
    let grant = match purpose {
        Purpose::Control => None,
        Purpose::Data { partition, .. } => match shared.array.lane_grant(&host, partition) {
            Some(grant) => Some(grant),
            None => {
                shared
                    .stats
                    .refused_not_assigned
                    .fetch_add(1, Ordering::Relaxed);
                let refused = Refused {
                    code: RefusedCode::NotAssigned,
                    message: format!("partition {partition} is not assigned to host {host:?}"),
                };
                send_message(stream, &ProofReply::Refused(refused)).await?;
                return Ok(None);
            }
        },
    };
    let welcome = Welcome {
        mac,
        max_io: shared.config.max_io,
        max_in_flight: shared.config.max_in_flight,
        array_id: shared.array.id().into_bytes(),
        partition: grant.as_ref().map(|grant| grant.info.clone()),
        boot_epoch: shared.boot_epoch,
    };
    Ok(Some(Admitted {
        host,
        purpose,
        grant,
        welcome,
    }))
}
