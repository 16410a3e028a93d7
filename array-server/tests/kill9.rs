//! The durability contract against a real `array-server serve` process: a write
//! acknowledged with FUA, or before an acknowledged FLUSH, survives `kill -9` of the
//! server, on every lane it was written on.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{pattern, temp_disks, Client, Disks, CHUNK, DISK_SIZE, IO_TIMEOUT};
use wire::{Access, Status};

const HOST: &str = "durable";
const PARTITION: &str = "vol";
const BLOCK: usize = 64 << 10;

/// A server process on `disks`, killed (SIGKILL) when dropped.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    fn start(disks: &Disks) -> ServerProcess {
        let addr = free_loopback_addr();
        let mut command = Command::new(env!("CARGO_BIN_EXE_array-server"));
        command.arg("serve");
        for path in &disks.paths {
            command.arg("--disk").arg(path);
        }
        let child = command
            .args([
                "--listen",
                &addr.to_string(),
                "--threads",
                "2",
                "--no-admin",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn array-server serve");
        let deadline = Instant::now() + IO_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "array-server never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ServerProcess { child, addr }
    }

    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    listener.local_addr().expect("probe address")
}

#[test]
fn fua_and_flushed_writes_survive_kill_9_of_the_server() {
    let disks = temp_disks(3, DISK_SIZE);
    let (secret, partition_id) = {
        let array = common::format(&disks, CHUNK);
        let partition = array.create_partition(PARTITION, 8 << 20, false).unwrap();
        let secret = array.create_host(HOST).unwrap().secret;
        array.assign(HOST, PARTITION, Access::ReadWrite).unwrap();
        (secret, partition.id)
    }; // the array handle (and its disk locks) is gone before the process starts

    let server = ServerProcess::start(&disks);
    let mut lane0 = Client::lane(server.addr, HOST, &secret, partition_id, 0, 0);
    let mut lane1 = Client::lane(server.addr, HOST, &secret, partition_id, 1, 0);
    let fua_data = pattern(1, BLOCK);
    let flushed_data = pattern(2, 3 * BLOCK);
    assert_eq!(lane0.write_fua(0, &fua_data), Status::Ok);
    // Written on one lane, flushed on another: the flush covers every lane.
    assert_eq!(lane1.write(BLOCK as u64, &flushed_data), Status::Ok);
    assert_eq!(lane0.flush(), Status::Ok);
    server.kill_9();

    let server = ServerProcess::start(&disks);
    let mut reader = Client::lane(server.addr, HOST, &secret, partition_id, 0, 0);
    assert_eq!(reader.read_ok(0, BLOCK as u32), fua_data, "the FUA write");
    assert_eq!(
        reader.read_ok(BLOCK as u64, flushed_data.len() as u32),
        flushed_data,
        "the write acknowledged before the FLUSH"
    );
}
