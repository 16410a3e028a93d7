//! The server side of the handshake on a fresh connection, with the fencing of the data
//! connection a new one replaces (see `sessions.rs`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// How long a replacing data hello waits for the connection it fences to finish what it
/// admitted, before it is refused `Busy` (the host then retries with a newer epoch).
/// Below the hosts' (and the server's) handshake deadline, so the refusal arrives in time.
pub const FENCE_WAIT: Duration = Duration::from_secs(3);

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
/// With `busy`, the hello is answered with `Refused(Busy)`. `spoke` is set once the hello
/// decoded (the connection then keeps its place among the unauthenticated ones longer,
/// see `admission.rs`).
pub async fn run(
    stream: &TcpStream,
    reader: &mut FrameReader,
    shared: &Shared,
    peer: SocketAddr,
    busy: bool,
    spoke: &Cell<bool>,
) -> Result<Option<Admitted>> {
    let Some(hello) = reader
        .next_message::<Hello>(Limits::HANDSHAKE, "Hello")
        .await?
    else {
        return Ok(None);
    };
    spoke.set(true);
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
            if auth_warning_due() {
                log::warn!("{peer}: host {host:?}: {error} ({failures} failed attempts so far)");
            }
            send_message(stream, &ProofReply::Refused(authentication_refused())).await?;
            return Ok(None);
        }
    };
    let purpose = handshake.hello().purpose;
    if let Some(refused) = host_at_its_limit(shared, &host, purpose) {
        shared.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
        log::info!("{peer}: host {host:?}: {}", refused.message);
        send_message(stream, &ProofReply::Refused(refused)).await?;
        return Ok(None);
    }
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
    if grant.is_some() {
        if let Some(refused) = fence(shared, &host, purpose).await {
            send_message(stream, &ProofReply::Refused(refused)).await?;
            return Ok(None);
        }
    }
    let welcome = Welcome {
        mac,
        max_io: shared.config.max_io,
        max_in_flight: shared.config.max_in_flight,
        array_id: shared.array.id().into_bytes(),
        partition: grant.as_ref().map(|grant| grant.info.clone()),
        boot_epoch: shared.boot_epoch,
        addresses: shared.announced.clone(),
    };
    Ok(Some(Admitted {
        host,
        purpose,
        grant,
        welcome,
    }))
}

/// Shortest interval between two warnings about failed proofs: a guessing peer must not
/// fill the log (each line says how many attempts failed so far, so none is lost).
const AUTH_WARNING_EVERY: Duration = Duration::from_secs(1);

/// Whether a failed proof may be logged now (at most once per [`AUTH_WARNING_EVERY`],
/// process-wide).
fn auth_warning_due() -> bool {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now_ms = unix_nanos() / 1_000_000;
    let last = LAST_MS.load(Ordering::Relaxed);
    now_ms.saturating_sub(last) >= AUTH_WARNING_EVERY.as_millis() as u64
        && LAST_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// The wall clock in nanoseconds since 1970 (the unit of lane epochs).
fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `Some(refusal)` when `host` holds `max_host_connections` live sessions already, not
/// counting those this connection replaces (a lane reconnecting): one host must not take
/// the places the server has for all of them.
fn host_at_its_limit(shared: &Shared, host: &str, purpose: Purpose) -> Option<Refused> {
    let sessions = &shared.sessions;
    let held = sessions.host_session_count(host);
    let limit = shared.config.max_host_connections;
    if held < limit || held - sessions.replaced_by(host, purpose).len() < limit {
        return None;
    }
    Some(Refused {
        code: RefusedCode::Busy,
        message: format!("host at its limit of {limit} connections"),
    })
}

/// Fences the live connections a data connection for `purpose` replaces; `Some` is the
/// refusal to send instead of the `Welcome` (a stale epoch, or a fence that did not drain
/// within [`FENCE_WAIT`]).
async fn fence(shared: &Shared, host: &str, purpose: Purpose) -> Option<Refused> {
    let sessions = &shared.sessions;
    if let Some(refused) = epoch_from_the_future(purpose) {
        log::warn!("host {host:?}: {}", refused.message);
        return Some(refused);
    }
    if let Err(newest) = sessions.claim_lane(host, purpose) {
        log::info!("host {host:?}: stale data hello {purpose:?} (newest epoch {newest})");
        return Some(Refused {
            code: RefusedCode::Stale,
            message: format!(
                "lane {purpose:?}: its epoch is not newer than {newest}, the newest this lane \
                 has had on this server (a newer connection replaced it, or the host's clock \
                 went back: ublk-host's epochs are wall-clock nanoseconds)"
            ),
        });
    }
    let replaced = sessions.replaced_by(host, purpose);
    if replaced.is_empty() {
        return None;
    }
    for old in &replaced {
        log::info!(
            "host {host:?}: {purpose:?} replaces session {}: fencing it",
            old.id
        );
        old.fence();
    }
    let drained = async {
        for old in &replaced {
            old.drained().await;
        }
    };
    if tokio::time::timeout(FENCE_WAIT, drained).await.is_err() {
        log::warn!("host {host:?}: {purpose:?}: the replaced lane did not drain in time");
        return Some(Refused {
            code: RefusedCode::Busy,
            message: "the connection this one replaces is still finishing its requests".into(),
        });
    }
    if !sessions.still_claimed(host, purpose) {
        return Some(Refused {
            code: RefusedCode::Stale,
            message: format!(
                "lane {purpose:?}: a newer connection claimed the lane while this one waited"
            ),
        });
    }
    None
}

/// How far ahead of the server's clock a lane epoch may be, in nanoseconds (a day): the
/// server remembers the newest epoch of every lane, so one epoch far in the future (a host
/// whose clock was once set years ahead, or a peer with the secret that means harm) would
/// refuse every later connection of that lane as stale until the server restarts.
const MAX_EPOCH_AHEAD_NS: u64 = 24 * 3600 * 1_000_000_000;

/// `Some(refusal)` for a data hello whose epoch is more than [`MAX_EPOCH_AHEAD_NS`] past
/// the server's wall clock (epochs are wall-clock nanoseconds); it is not recorded.
fn epoch_from_the_future(purpose: Purpose) -> Option<Refused> {
    let Purpose::Data { epoch, .. } = purpose else {
        return None;
    };
    let now_ns = unix_nanos();
    if epoch <= now_ns.saturating_add(MAX_EPOCH_AHEAD_NS) {
        return None;
    }
    Some(Refused {
        code: RefusedCode::BadHello,
        message: format!(
            "lane epoch {epoch} is more than a day ahead of the server's clock ({now_ns} ns \
             since 1970): check the host's clock"
        ),
    })
}
