//! The NBD export against the real array server (in-process, temporary member disks),
//! driven by qemu-io / qemu-img (Debian's qemu-utils) and by a raw client that misbehaves.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use array_server::net::RunningServer;
use common::real::{any_loopback_port, RealArray};
use common::{within, MIB};
use ublk_host::client::{run_queue_thread, BlockIo, Discovery, EngineConfig};
use ublk_host::nbd::proto::{self, Request};
use ublk_host::nbd::{NbdExport, DEFAULT_MAX_CONNECTIONS};
use wire::{Access, Op};

const DISKS: usize = 3;
const DISK_SIZE: u64 = 24 << 20;
const PARTITION_SIZE: u64 = 40 << 20;
/// A trim longer than the largest read or write (the kernel's nbd trims whole disks).
const LONG_TRIM: u32 = 36 << 20;
const TEST_DEADLINE: Duration = Duration::from_secs(120);

struct Setup {
    array: RealArray,
    server: RunningServer,
    engine: EngineConfig,
    socket: PathBuf,
    /// The partition's size (the server rounds it up to whole stripes).
    size: u64,
}

/// A formatted array with partition `vol` for host `h1`, its server, and the NBD export
/// of `vol` on a socket in the temporary directory (served by a thread of the test).
fn setup() -> Setup {
    let array = RealArray::format(DISKS, DISK_SIZE, PARTITION_SIZE, Access::ReadWrite);
    let server = array.serve(any_loopback_port(), 2);
    let client = array.client(&server);
    let partition = Discovery::open(&client)
        .unwrap()
        .list()
        .unwrap()
        .find("vol")
        .unwrap()
        .clone();
    let mut engine = EngineConfig::new(client);
    engine.lanes_per_queue = 2;
    let size = partition.size;
    let socket = array.dir().join("vol.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let export = NbdExport {
        engine: engine.clone(),
        partition,
        max_connections: DEFAULT_MAX_CONNECTIONS,
    };
    std::thread::spawn(move || ublk_host::nbd::serve(listener, export));
    Setup {
        array,
        server,
        engine,
        socket,
        size,
    }
}

fn nbd_uri(socket: &Path) -> String {
    format!("nbd+unix:///vol?socket={}", socket.display())
}

/// Runs qemu-io on the export with `commands`; returns its output, panicking if it
/// failed or reported a pattern mismatch.
fn qemu_io(socket: &Path, commands: &[&str]) -> String {
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw", &nbd_uri(socket)]);
    for item in commands {
        command.args(["-c", item]);
    }
    let output = command
        .output()
        .expect("qemu-io (Debian package qemu-utils; scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "qemu-io {commands:?}: {text}");
    assert!(!text.contains("failed"), "qemu-io {commands:?}: {text}");
    text
}

/// Reads `len` bytes at `offset` of the partition through the engine, not through NBD.
fn read_direct(engine: &EngineConfig, offset: u64, len: u32) -> Vec<u8> {
    let partition = Discovery::open(&engine.client)
        .unwrap()
        .list()
        .unwrap()
        .find("vol")
        .unwrap()
        .clone();
    run_queue_thread(engine, &partition, 0, move |engine| async move {
        let io = BlockIo {
            op: Op::Read,
            offset,
            len,
            fua: false,
        };
        let (outcome, data) = engine.execute_owned(io, vec![0; len as usize]).await;
        outcome.unwrap();
        data
    })
    .unwrap()
}

fn flushes(server: &RunningServer) -> u64 {
    server
        .sessions()
        .traffic()
        .values()
        .map(|counters| counters.flushes)
        .sum()
}

#[test]
fn qemu_io_data_lands_on_the_array_and_flush_reaches_the_server() {
    within(TEST_DEADLINE, || {
        let setup = setup();
        let text = qemu_io(
            &setup.socket,
            &[
                "write -P 0xab 0 1M",
                "read -P 0xab 0 1M",
                "write -P 0xcd -f 3M 512k",
                "flush",
                "write -z 1M 64k",
                "read -P 0 1M 64k",
                "discard 2M 64k",
            ],
        );
        assert!(text.contains("wrote 1048576/1048576 bytes"), "{text}");
        assert!(text.contains("read 1048576/1048576 bytes"), "{text}");
        let direct = read_direct(&setup.engine, 0, MIB);
        assert!(
            direct.iter().all(|&b| b == 0xab),
            "the array holds the NBD write"
        );
        let fua = read_direct(&setup.engine, 3 << 20, 512 << 10);
        assert!(fua.iter().all(|&b| b == 0xcd), "the FUA write landed");
        assert!(
            flushes(&setup.server) >= 1,
            "qemu-io's flush reached the server"
        );
        let info = Command::new("qemu-img")
            .args(["info", "--output=json", &nbd_uri(&setup.socket)])
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["virtual-size"], setup.size);
        drop(setup.array);
    });
}

#[test]
fn parallel_clients_each_get_their_own_engine_and_see_each_others_writes() {
    within(TEST_DEADLINE, || {
        let setup = setup();
        let writers: Vec<_> = (0..3u64)
            .map(|i| {
                let socket = setup.socket.clone();
                std::thread::spawn(move || {
                    let write = format!("write -P {} {}M 1M", 0x10 + i, i * 2);
                    qemu_io(&socket, &[&write, "flush"]);
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let reads: Vec<String> = (0..3u64)
            .map(|i| format!("read -P {} {}M 1M", 0x10 + i, i * 2))
            .collect();
        let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
        qemu_io(&setup.socket, &reads);
    });
}

/// A raw NBD client: handshake with `NBD_OPT_GO`, then requests.
struct RawClient(UnixStream);

impl RawClient {
    fn connect(socket: &Path) -> RawClient {
        let mut stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut greeting = [0u8; proto::GREETING_LEN];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        stream.write_all(&3u32.to_be_bytes()).unwrap();
        RawClient(stream)
    }

    fn go(socket: &Path) -> RawClient {
        let mut client = RawClient::connect(socket);
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut option = proto::IHAVEOPT.to_be_bytes().to_vec();
        option.extend_from_slice(&proto::OPT_GO.to_be_bytes());
        option.extend_from_slice(&(data.len() as u32).to_be_bytes());
        option.extend_from_slice(&data);
        client.0.write_all(&option).unwrap();
        loop {
            let mut head = [0u8; 20];
            client.0.read_exact(&mut head).unwrap();
            let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
            let mut body = vec![0u8; len as usize];
            client.0.read_exact(&mut body).unwrap();
            if kind == proto::REP_ACK {
                return client;
            }
            assert_eq!(kind, proto::REP_INFO);
        }
    }

    fn send(&mut self, command: u16, offset: u64, len: u32, cookie: u64) {
        let request = Request {
            flags: 0,
            command,
            cookie,
            offset,
            len,
        };
        self.0.write_all(&request.encode()).unwrap();
    }

    /// The reply's error, checking the cookie.
    fn reply(&mut self, cookie: u64) -> u32 {
        let mut raw = [0u8; proto::SIMPLE_REPLY_LEN];
        self.0.read_exact(&mut raw).unwrap();
        let (error, got) = proto::decode_simple_reply(&raw).unwrap();
        assert_eq!(got, cookie);
        error
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.0.read(&mut byte), Ok(0) | Err(_))
    }
}

#[test]
fn bad_nbd_input_gets_the_nbd_errno_or_a_closed_connection_and_the_export_lives_on() {
    within(TEST_DEADLINE, || {
        let setup = setup();
        let mut client = RawClient::go(&setup.socket);
        client.send(42, 0, 512, 1);
        assert_eq!(client.reply(1), proto::NBD_EINVAL, "unknown command");
        client.send(proto::CMD_READ, setup.size, 512, 2);
        assert_eq!(client.reply(2), proto::NBD_EINVAL, "read past the end");
        client.send(proto::CMD_READ, u64::MAX - 100, 512, 3);
        assert_eq!(client.reply(3), proto::NBD_EINVAL, "offset overflow");
        client.send(proto::CMD_READ, 100, 512, 4);
        assert_eq!(client.reply(4), proto::NBD_EINVAL, "misaligned");
        client.send(proto::CMD_READ, 0, !511, 5);
        assert_eq!(client.reply(5), proto::NBD_EINVAL, "4 GiB read");
        client.send(proto::CMD_WRITE, setup.size, 512, 6);
        client.0.write_all(&[0u8; 512]).unwrap();
        assert_eq!(client.reply(6), proto::NBD_ENOSPC, "write past the end");
        client.send(proto::CMD_READ, 0, 4096, 7);
        assert_eq!(client.reply(7), 0, "the connection still works");
        let mut data = [0u8; 4096];
        client.0.read_exact(&mut data).unwrap();
        client.send(proto::CMD_TRIM, 0, LONG_TRIM, 9);
        assert_eq!(
            client.reply(9),
            0,
            "a trim longer than 32 MiB is done, not refused"
        );
        client.send(proto::CMD_WRITE, 0, proto::MAX_REQUEST_LEN + 512, 8);
        assert!(client.closed(), "an oversized write closes the connection");

        let mut bad_magic = RawClient::go(&setup.socket);
        bad_magic.0.write_all(&[0x55; proto::REQUEST_LEN]).unwrap();
        assert!(
            bad_magic.closed(),
            "a bad request magic closes the connection"
        );
        let mut bad_option = RawClient::connect(&setup.socket);
        bad_option
            .0
            .write_all(b"IHAVEOPT\0\0\0\x07\xff\xff\xff\xff")
            .unwrap();
        assert!(bad_option.closed(), "a 4 GiB option closes the connection");

        qemu_io(
            &setup.socket,
            &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"],
        );
    });
}
