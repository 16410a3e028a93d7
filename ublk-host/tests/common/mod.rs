//! A tiny in-process fake array server built on the wire crate, with knobs to misbehave:
//! replies in reverse order, dropped connections, injected errnos, a wrong proof, a
//! connection gone silent (open, but never answering again), a revoked assignment
//! (`NotAssigned` refusals), a restart with a new boot epoch.

#![allow(dead_code)]

pub mod engine_io;
pub mod real;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ublk_host::client::connect::{read_message, write_message};
use ublk_host::client::ClientConfig;
use wire::frame::encode_head;
use wire::handshake::{authentication_refused, server_mac, transcript};
use wire::*;

pub const KIB: u32 = 1024;
pub const MIB: u32 = 1024 * KIB;
/// Stripe chunk of the fake partition.
pub const CHUNK: u32 = 64 * KIB;
/// The fake server's `max_io`.
pub const MAX_IO: u32 = MIB;

pub fn secret() -> Secret {
    Secret([0x42; 32])
}

pub fn other_secret() -> Secret {
    Secret([0x24; 32])
}

pub fn partition(size: u64, access: Access) -> PartitionInfo {
    PartitionInfo {
        id: 7,
        name: "vol0".into(),
        size,
        block_size: 512,
        chunk_size: CHUNK,
        stripe_disks: 4,
        access,
        shared: false,
        features: Features::ALL,
    }
}

/// How the fake server behaves.
#[derive(Clone)]
pub struct Options {
    pub secret: Secret,
    /// Accept any client proof and sign the Welcome with this secret instead.
    pub prove_with: Option<Secret>,
    /// Collect this many requests, then answer them in reverse order.
    pub reverse_window: usize,
    /// Close a data connection, unanswered, when the server's request count reaches this.
    pub drop_at: Option<usize>,
    /// After the drop, refuse every new connection (the server "is gone").
    pub dead_after_drop: bool,
    /// Requests touching this byte offset fail with this errno.
    pub fail: Option<(u64, i32)>,
    pub partition: PartitionInfo,
    /// The boot epoch announced in every `Welcome` (until `Shared::boot_epoch` changes).
    pub boot_epoch: u64,
    /// When the server's request count reaches this, that connection goes silent: it
    /// stays open but is never read from or answered again (a frozen server, a cut
    /// without RST). Later connections are served normally.
    pub silent_at: Option<usize>,
    /// When the server's request count reaches this, the partition is revoked: that
    /// connection closes unanswered and data hellos are refused `NotAssigned` until
    /// `Shared::revoked` is cleared.
    pub revoke_at: Option<usize>,
    /// When the server's request count reaches this, that request's reply is sent only
    /// in part (its head and half its data), then the connection goes silent as with
    /// `silent_at`: a server that stalls in the middle of a reply.
    pub stall_mid_reply_at: Option<usize>,
    /// When the server's request count reaches this, that request's reply trickles out:
    /// its head, then its data in ten pieces `Duration` apart (a slow link, not a dead
    /// server).
    pub trickle_reply_at: Option<(usize, Duration)>,
    /// When the server's request count reaches this and that request is a read flagged
    /// `FLAG_RUN`, its reply is a malformed run: a `Later` head, then a `Run` frame that
    /// claims one reply more than it carries.
    pub bad_run_at: Option<usize>,
}

impl Options {
    pub fn new(partition: PartitionInfo) -> Options {
        Options {
            secret: secret(),
            prove_with: None,
            reverse_window: 1,
            drop_at: None,
            dead_after_drop: false,
            fail: None,
            partition,
            boot_epoch: 1,
            silent_at: None,
            revoke_at: None,
            stall_mid_reply_at: None,
            trickle_reply_at: None,
            bad_run_at: None,
        }
    }
}

pub struct Shared {
    pub options: Options,
    pub store: Mutex<Vec<u8>>,
    /// Requests received per (queue, lane).
    pub per_lane: Mutex<HashMap<(u16, u16), u64>>,
    /// Every request header received, in arrival order.
    pub log: Mutex<Vec<Request>>,
    pub requests: AtomicUsize,
    pub data_connections: AtomicUsize,
    pub dead: AtomicBool,
    /// Keepalive pings answered.
    pub pings: AtomicUsize,
    /// Heartbeats answered.
    pub heartbeats: AtomicUsize,
    /// The boot epoch announced now.
    pub boot_epoch: AtomicU64,
    /// The partition is not assigned (data hellos refused `NotAssigned`).
    pub revoked: AtomicBool,
    /// Connections gone silent, kept open.
    silent: Mutex<Vec<TcpStream>>,
    controls: Mutex<Vec<TcpStream>>,
}

pub struct FakeServer {
    pub addr: String,
    pub shared: Arc<Shared>,
}

impl FakeServer {
    pub fn start(options: Options) -> FakeServer {
        FakeServer::start_on("127.0.0.1:0", options)
    }

    pub fn start_on(listen: &str, options: Options) -> FakeServer {
        let listener = TcpListener::bind(listen).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let size = options.partition.size as usize;
        let boot_epoch = AtomicU64::new(options.boot_epoch);
        let shared = Arc::new(Shared {
            options,
            heartbeats: AtomicUsize::new(0),
            boot_epoch,
            revoked: AtomicBool::new(false),
            silent: Mutex::new(Vec::new()),
            store: Mutex::new(vec![0; size]),
            per_lane: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            data_connections: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            pings: AtomicUsize::new(0),
            controls: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = accept_shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        FakeServer { addr, shared }
    }

    pub fn client(&self, secret: Secret) -> ClientConfig {
        let mut config = ClientConfig::new(self.addr.clone(), "host-a", secret);
        config.handshake_timeout = Duration::from_secs(2);
        config
    }

    /// Pushes a new partition list to every control connection.
    pub fn push(&self, generation: u64, partitions: Vec<PartitionInfo>) {
        let event = ControlEvent::Partitions {
            generation,
            partitions,
        };
        for stream in self.shared.controls.lock().unwrap().iter() {
            let _ = write_message(stream, &event);
        }
    }

    pub fn lanes_used(&self) -> usize {
        self.shared.per_lane.lock().unwrap().len()
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    stream.set_nodelay(true).unwrap();
    let Some(purpose) = handshake(&stream, shared) else {
        return;
    };
    match purpose {
        Purpose::Control => serve_control(stream, shared),
        Purpose::Data { queue, lane, .. } => {
            shared.data_connections.fetch_add(1, Ordering::SeqCst);
            serve_data(stream, shared, queue, lane);
        }
    }
}

fn handshake(stream: &TcpStream, shared: &Shared) -> Option<Purpose> {
    let hello: Hello = read_message(stream, "Hello").ok()?;
    let purpose = hello.purpose;
    let (state, challenge) = match ServerHandshake::on_hello(hello.clone(), [9; NONCE_LEN]) {
        Ok(ok) => ok,
        Err((_, refused)) => {
            let _ = write_message(stream, &HelloReply::Refused(refused));
            return None;
        }
    };
    if shared.dead.load(Ordering::SeqCst) {
        let refused = Refused {
            code: RefusedCode::Busy,
            message: "server going away".into(),
        };
        let _ = write_message(stream, &HelloReply::Refused(refused));
        return None;
    }
    write_message(stream, &HelloReply::Challenge(challenge.clone())).ok()?;
    let proof: Proof = read_message(stream, "Proof").ok()?;
    let mac = match &shared.options.prove_with {
        Some(wrong) => server_mac(wrong, &transcript(&hello, &challenge)),
        None => match state.on_proof(Some(&shared.options.secret), &proof) {
            Ok(mac) => mac,
            Err(_) => {
                let _ = write_message(stream, &ProofReply::Refused(authentication_refused()));
                return None;
            }
        },
    };
    if matches!(purpose, Purpose::Data { .. }) && shared.revoked.load(Ordering::SeqCst) {
        let refused = Refused {
            code: RefusedCode::NotAssigned,
            message: "partition not assigned".into(),
        };
        let _ = write_message(stream, &ProofReply::Refused(refused));
        return None;
    }
    let welcome = Welcome {
        mac,
        max_io: MAX_IO,
        max_in_flight: 128,
        array_id: [7; 16],
        partition: match purpose {
            Purpose::Control => None,
            Purpose::Data { .. } => Some(shared.options.partition.clone()),
        },
        boot_epoch: shared.boot_epoch.load(Ordering::SeqCst),
        addresses: Vec::new(),
    };
    write_message(stream, &ProofReply::Welcome(welcome)).ok()?;
    Some(purpose)
}

fn serve_control(stream: TcpStream, shared: &Shared) {
    shared
        .controls
        .lock()
        .unwrap()
        .push(stream.try_clone().unwrap());
    while let Ok(request) = read_message::<ControlRequest>(&stream, "ControlRequest") {
        let event = match request {
            ControlRequest::ListPartitions => ControlEvent::Partitions {
                generation: 1,
                partitions: vec![shared.options.partition.clone()],
            },
            ControlRequest::Ping(n) => {
                shared.pings.fetch_add(1, Ordering::SeqCst);
                ControlEvent::Pong(n)
            }
        };
        if write_message(&stream, &event).is_err() {
            return;
        }
    }
}

/// Reads one request and its payload with wire's decoder, taking exactly the bytes it
/// still needs from the socket.
fn read_request(mut stream: &TcpStream) -> Option<(Request, Vec<u8>)> {
    let mut decoder = FrameDecoder::new(Limits::data(MAX_IO));
    let mut head = Vec::new();
    let request = loop {
        match decoder.next_head::<Request>(&head).ok()? {
            Progress::Ready(head) => break head.message,
            Progress::NeedMore(more) => {
                let filled = head.len();
                head.resize(filled + more, 0);
                stream.read_exact(&mut head[filled..]).ok()?;
            }
        }
    };
    let mut payload = vec![0; decoder.payload_remaining()];
    stream.read_exact(&mut payload).ok()?;
    decoder.consume_payload(payload.len());
    Some((request, payload))
}

/// A lane's requests in order, with the writes of request runs (wire's `FLAG_LATER`,
/// `Op::Run`) given their payloads from the run, as the array server serves them.
#[derive(Default)]
struct Requests {
    held: Vec<Request>,
    ready: std::collections::VecDeque<(Request, Vec<u8>)>,
}

impl Requests {
    /// The next request and its payload; `None` at the end of the stream or on a
    /// malformed run.
    fn next(&mut self, stream: &TcpStream) -> Option<(Request, Vec<u8>)> {
        while self.ready.is_empty() {
            let (request, payload) = read_request(stream)?;
            if request.data_later() {
                self.held.push(request);
            } else if request.op == Op::Run {
                let bytes: u64 = self.held.iter().map(|w| u64::from(w.len)).sum();
                if request.tag as usize != self.held.len() || bytes != u64::from(request.len) {
                    return None;
                }
                let mut at = 0;
                for write in self.held.drain(..) {
                    let end = at + write.len as usize;
                    self.ready.push_back((write, payload[at..end].to_vec()));
                    at = end;
                }
            } else {
                self.ready.push_back((request, payload));
            }
        }
        self.ready.pop_front()
    }
}

fn serve_data(stream: TcpStream, shared: &Shared, queue: u16, lane: u16) {
    let mut pending = Vec::new();
    let mut requests = Requests::default();
    while let Some((request, payload)) = requests.next(&stream) {
        let count = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if shared.options.drop_at == Some(count) {
            if shared.options.dead_after_drop {
                shared.dead.store(true, Ordering::SeqCst);
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        if shared.options.silent_at == Some(count) {
            shared.silent.lock().unwrap().push(stream);
            return;
        }
        if shared.options.stall_mid_reply_at == Some(count) {
            let (reply, data) = execute(shared, &request, &payload);
            let mut out = Vec::new();
            encode_head(&reply, reply.len, &mut out).unwrap();
            out.extend_from_slice(&data[..data.len() / 2]);
            let _ = (&stream).write_all(&out);
            shared.silent.lock().unwrap().push(stream);
            return;
        }
        if let Some((at, gap)) = shared.options.trickle_reply_at {
            if at == count {
                let (reply, data) = execute(shared, &request, &payload);
                let mut out = Vec::new();
                encode_head(&reply, reply.len, &mut out).unwrap();
                if (&stream).write_all(&out).is_err() {
                    return;
                }
                for piece in data.chunks(data.len().div_ceil(10).max(1)) {
                    std::thread::sleep(gap);
                    if (&stream).write_all(piece).is_err() {
                        return;
                    }
                }
                continue;
            }
        }
        if shared.options.bad_run_at == Some(count) && request.may_run() {
            let (reply, data) = execute(shared, &request, &payload);
            let later = Reply {
                status: Status::Later,
                ..reply
            };
            let run = Reply {
                tag: 2,
                status: Status::Run,
                len: reply.len,
            };
            let mut out = Vec::new();
            encode_head(&later, 0, &mut out).unwrap();
            if (&stream).write_all(&out).is_err() || send_reply(&stream, &run, &data).is_err() {
                return;
            }
            continue;
        }
        if shared.options.revoke_at == Some(count) {
            shared.revoked.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        if request.op == Op::Heartbeat {
            shared.heartbeats.fetch_add(1, Ordering::SeqCst);
        }
        *shared
            .per_lane
            .lock()
            .unwrap()
            .entry((queue, lane))
            .or_default() += 1;
        shared.log.lock().unwrap().push(request);
        pending.push(execute(shared, &request, &payload));
        if pending.len() >= shared.options.reverse_window {
            for (reply, data) in pending.drain(..).rev() {
                if send_reply(&stream, &reply, &data).is_err() {
                    return;
                }
            }
        }
    }
}

fn send_reply(mut stream: &TcpStream, reply: &Reply, data: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::new();
    encode_head(reply, reply.len, &mut out).unwrap();
    out.extend_from_slice(data);
    stream.write_all(&out)
}

fn execute(shared: &Shared, request: &Request, payload: &[u8]) -> (Reply, Vec<u8>) {
    let status = |errno| {
        (
            Reply {
                tag: request.tag,
                status: Status::Errno(errno),
                len: 0,
            },
            Vec::new(),
        )
    };
    let start = request.offset as usize;
    let end = start + request.len as usize;
    let info = &shared.options.partition;
    if end as u64 > info.size {
        return status(libc_errno::EINVAL);
    }
    if let Some((offset, errno)) = shared.options.fail {
        if (start..end.max(start + 1)).contains(&(offset as usize)) {
            return status(errno);
        }
    }
    let writes = matches!(request.op, Op::Write | Op::Discard | Op::WriteZeroes);
    if writes && info.access == Access::ReadOnly {
        return status(libc_errno::EROFS);
    }
    let mut store = shared.store.lock().unwrap();
    let data = match request.op {
        Op::Read => store[start..end].to_vec(),
        Op::Write => {
            store[start..end].copy_from_slice(payload);
            Vec::new()
        }
        Op::Discard | Op::WriteZeroes => {
            store[start..end].fill(0);
            Vec::new()
        }
        Op::Flush | Op::Heartbeat | Op::Run => Vec::new(),
    };
    let reply = Reply {
        tag: request.tag,
        status: Status::Ok,
        len: data.len() as u32,
    };
    (reply, data)
}

/// Runs `body` on its own thread and fails the test if it takes longer than `limit`.
pub fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            handle.join().unwrap();
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(handle.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded its {limit:?} deadline"),
    }
}

/// Waits (bounded) until `condition` holds.
pub fn wait_until(limit: Duration, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Deterministic test data for `len` bytes at `offset`, different per `seed`.
pub fn pattern(offset: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = offset + i as u64;
            (x ^ (x >> 9) ^ (x >> 17)).wrapping_mul(31) as u8 ^ seed
        })
        .collect()
}
