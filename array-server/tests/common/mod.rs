//! A small blocking client for the array server (std `TcpStream` + the wire crate), and
//! fixtures: temp member disks, formatted arrays, in-process servers.
#![allow(dead_code)]

pub mod probe;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use array_server::array::PartitionView;
use array_server::net::{self, RunningServer, ServerConfig};
use array_server::{Array, FormatOptions};
use wire::frame::{self, FrameDecoder, FramePrefix, Limits, Progress};
use wire::{
    ClientHandshake, ControlEvent, ControlRequest, HelloReply, Op, PartitionInfo, ProofReply,
    Purpose, Reply, Request, Secret, Status, Welcome, WireError, PREFIX_LEN,
};

/// How long any blocking receive in a test may wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Member disk size used by most tests.
pub const DISK_SIZE: u64 = 24 << 20;
/// Stripe chunk used by most tests.
pub const CHUNK: u64 = 64 << 10;

/// Temp member disks.
pub struct Disks {
    pub dir: tempfile::TempDir,
    pub paths: Vec<PathBuf>,
}

/// `count` member disk files of `size` bytes in a temp directory.
pub fn temp_disks(count: usize, size: u64) -> Disks {
    disks_in(tempfile::tempdir().expect("temp dir"), count, size)
}

/// `count` member disk files of [`DISK_SIZE`] on tmpfs (`/dev/shm`), which the server
/// serves through a shared mapping (the mapped engine); `None` where there is no
/// `/dev/shm`.
pub fn ram_disks(count: usize) -> Option<Disks> {
    let dir = tempfile::tempdir_in("/dev/shm").ok()?;
    Some(disks_in(dir, count, DISK_SIZE))
}

/// `count` member disk files of `size` bytes in `dir`.
pub fn disks_in(dir: tempfile::TempDir, count: usize, size: u64) -> Disks {
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| dir.path().join(format!("disk{i}.img")))
        .collect();
    for path in &paths {
        std::fs::File::create(path).unwrap().set_len(size).unwrap();
    }
    Disks { dir, paths }
}

pub fn format(disks: &Disks, chunk: u64) -> Arc<Array> {
    let options = FormatOptions {
        chunk,
        force: false,
        create_size: None,
    };
    Array::format(&disks.paths, &options).expect("format")
}

/// An array with host `h` assigned partition `p` read-write: what most tests start from.
pub struct Assigned {
    /// The member disks (their temp directory lives as long as this).
    pub disks: Disks,
    pub array: Arc<Array>,
    /// Partition `p`.
    pub partition: PartitionView,
    /// Host `h`'s secret.
    pub secret: String,
}

/// `disk_count` disks of [`DISK_SIZE`] formatted with [`CHUNK`], and a private partition
/// `p` of `partition_size` bytes assigned read-write to host `h`.
pub fn assigned(disk_count: usize, partition_size: u64) -> Assigned {
    assigned_on(temp_disks(disk_count, DISK_SIZE), partition_size)
}

/// As [`assigned`], on `disks`.
pub fn assigned_on(disks: Disks, partition_size: u64) -> Assigned {
    let array = format(&disks, CHUNK);
    let partition = array.create_partition("p", partition_size, false).unwrap();
    let secret = array.create_host("h").unwrap().secret;
    array.assign("h", "p", wire::Access::ReadWrite).unwrap();
    Assigned {
        disks,
        array,
        partition,
        secret,
    }
}

pub fn serve(array: Arc<Array>) -> RunningServer {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        ..ServerConfig::default()
    };
    net::start(array, config).expect("start server")
}

/// Polls `condition` until it holds or `IO_TIMEOUT` passes.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A connected, authenticated client.
pub struct Client {
    pub stream: TcpStream,
    pub welcome: Welcome,
    next_tag: u32,
}

/// Why a connection did not get through the handshake.
#[derive(Debug)]
pub enum ConnectError {
    Io(io::Error),
    Wire(WireError),
}

impl ConnectError {
    pub fn wire(self) -> WireError {
        match self {
            ConnectError::Wire(error) => error,
            ConnectError::Io(error) => panic!("expected a protocol refusal, got {error}"),
        }
    }
}

/// A lane epoch newer than any handed out before in this process.
pub fn next_epoch() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub fn nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).unwrap();
    nonce
}

pub fn open_stream(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

pub fn send_frame(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)
}

/// Reads one frame with wire's decoder: prefix, header bytes, payload bytes. Each receive
/// takes exactly what the decoder still needs, so nothing past the frame is read.
pub fn read_frame(
    stream: &mut TcpStream,
    limits: Limits,
) -> io::Result<(FramePrefix, Vec<u8>, Vec<u8>)> {
    let invalid = |e: WireError| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut decoder = FrameDecoder::new(limits);
    let mut head = Vec::new();
    let prefix = loop {
        match decoder.next_prefix(&head).map_err(invalid)? {
            Progress::Ready(prefix) => break prefix,
            Progress::NeedMore(more) => {
                let filled = head.len();
                head.resize(filled + more, 0);
                stream.read_exact(&mut head[filled..])?;
            }
        }
    };
    let mut payload = vec![0u8; decoder.payload_remaining()];
    stream.read_exact(&mut payload)?;
    decoder.consume_payload(payload.len());
    Ok((prefix, head.split_off(PREFIX_LEN), payload))
}

fn read_message<M: serde::de::DeserializeOwned>(
    stream: &mut TcpStream,
    what: &'static str,
) -> Result<M, ConnectError> {
    let (_, header, _) = read_frame(stream, Limits::HANDSHAKE).map_err(ConnectError::Io)?;
    frame::decode_header(&header, what).map_err(ConnectError::Wire)
}

impl Client {
    pub fn connect(
        addr: SocketAddr,
        host: &str,
        secret: &str,
        purpose: Purpose,
    ) -> Result<Client, ConnectError> {
        Self::connect_pausing(addr, host, secret, purpose, || {})
    }

    /// [`Client::connect`], running `between` once the challenge has arrived (the server
    /// has read the hello) and before the proof is sent.
    pub fn connect_pausing(
        addr: SocketAddr,
        host: &str,
        secret: &str,
        purpose: Purpose,
        between: impl FnOnce(),
    ) -> Result<Client, ConnectError> {
        let secret = Secret::from_hex(secret).map_err(ConnectError::Wire)?;
        let mut stream = open_stream(addr);
        let (mut handshake, hello) =
            ClientHandshake::new(host, secret, purpose, nonce()).map_err(ConnectError::Wire)?;
        send_frame(&mut stream, &frame::encode_message(&hello).unwrap())
            .map_err(ConnectError::Io)?;
        let reply: HelloReply = read_message(&mut stream, "HelloReply")?;
        between();
        let proof = handshake
            .on_hello_reply(reply)
            .map_err(ConnectError::Wire)?;
        send_frame(&mut stream, &frame::encode_message(&proof).unwrap())
            .map_err(ConnectError::Io)?;
        let reply: ProofReply = read_message(&mut stream, "ProofReply")?;
        let welcome = handshake
            .on_proof_reply(reply)
            .map_err(ConnectError::Wire)?;
        Ok(Client {
            stream,
            welcome,
            next_tag: 0,
        })
    }

    pub fn data(addr: SocketAddr, host: &str, secret: &str, partition: u32) -> Client {
        Self::lane(addr, host, secret, partition, 0, 0)
    }

    pub fn lane(
        addr: SocketAddr,
        host: &str,
        secret: &str,
        partition: u32,
        queue: u16,
        lane: u16,
    ) -> Client {
        Client::connect(
            addr,
            host,
            secret,
            Purpose::Data {
                partition,
                queue,
                lane,
                epoch: next_epoch(),
            },
        )
        .expect("data connect")
    }

    pub fn control(addr: SocketAddr, host: &str, secret: &str) -> Client {
        Client::connect(addr, host, secret, Purpose::Control).expect("control connect")
    }

    pub fn send_request(&mut self, request: Request, payload: &[u8]) -> io::Result<()> {
        let mut bytes = Vec::new();
        frame::encode_head(&request, payload.len() as u32, &mut bytes).unwrap();
        bytes.extend_from_slice(payload);
        self.stream.write_all(&bytes)
    }

    pub fn recv_reply(&mut self) -> io::Result<(Reply, Vec<u8>)> {
        let limits = Limits::data(self.welcome.max_io);
        let (prefix, header, payload) = read_frame(&mut self.stream, limits)?;
        let reply = frame::decode_reply(&header, prefix)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok((reply, payload))
    }

    pub fn call(
        &mut self,
        op: Op,
        offset: u64,
        len: u32,
        flags: u8,
        payload: &[u8],
    ) -> (Status, Vec<u8>) {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.send_request(
            Request {
                tag,
                op,
                offset,
                len,
                flags,
            },
            payload,
        )
        .expect("send request");
        let (reply, data) = self.recv_reply().expect("reply");
        assert_eq!(reply.tag, tag);
        (reply.status, data)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Status {
        self.call(Op::Write, offset, data.len() as u32, 0, data).0
    }

    pub fn write_fua(&mut self, offset: u64, data: &[u8]) -> Status {
        self.call(Op::Write, offset, data.len() as u32, wire::FLAG_FUA, data)
            .0
    }

    pub fn read(&mut self, offset: u64, len: u32) -> (Status, Vec<u8>) {
        self.call(Op::Read, offset, len, 0, &[])
    }

    pub fn read_ok(&mut self, offset: u64, len: u32) -> Vec<u8> {
        let (status, data) = self.read(offset, len);
        assert_eq!(status, Status::Ok, "read {offset}+{len}");
        data
    }

    pub fn flush(&mut self) -> Status {
        self.call(Op::Flush, 0, 0, 0, &[]).0
    }

    pub fn send_control(&mut self, request: &ControlRequest) {
        self.stream
            .write_all(&frame::encode_message(request).unwrap())
            .unwrap();
    }

    pub fn recv_event(&mut self) -> io::Result<ControlEvent> {
        let (_, header, _) = read_frame(&mut self.stream, Limits::HANDSHAKE)?;
        frame::decode_header(&header, "ControlEvent")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    pub fn list(&mut self) -> Vec<PartitionInfo> {
        self.send_control(&ControlRequest::ListPartitions);
        match self.recv_event().expect("partitions") {
            ControlEvent::Partitions { partitions, .. } => partitions,
            other => panic!("expected Partitions, got {other:?}"),
        }
    }

    /// Whether the server closed the connection (EOF or reset) within the timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

/// The encoded heads of `count` reads of `len` bytes each (tags 0..count), cycling over the
/// partition's first `blocks` blocks of `len`: a flood to send without reading replies.
pub fn read_heads(count: u32, len: u32, blocks: u32) -> Vec<u8> {
    let mut heads = Vec::new();
    for tag in 0..count {
        let request = Request {
            tag,
            op: Op::Read,
            offset: u64::from(tag % blocks) * u64::from(len),
            len,
            flags: 0,
        };
        frame::encode_head(&request, 0, &mut heads).unwrap();
    }
    heads
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
