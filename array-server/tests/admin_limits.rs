//! What an unauthenticated client can hold of the admin service: half-sent requests are
//! closed at a deadline, connections beyond the cap hold no file descriptors, a failed
//! accept (EMFILE) backs off instead of spinning; and what it can make the service do:
//! never redirect off the origin, never create a name the page cannot manage.

mod admin_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use admin_support::{wait_for, Fixture};
use array_server::admin::http::{ACCEPT_RETRY_DELAY, LOGIN_LOCATION};
use array_server::admin::AdminLimits;
use array_server::{Array, FormatOptions};
use serde_json::json;

/// Short deadlines, so the tests see them pass.
const SHORT: Duration = Duration::from_millis(400);
/// How long past a deadline the service may take to act on it.
const SLACK: Duration = Duration::from_secs(3);
/// Connection cap of the cap test.
const CAP: usize = 16;
/// Connections the cap test opens beyond the cap.
const EXCESS: usize = 48;
/// File descriptors the process may open besides the ones a test accounts for.
const FD_SLACK: usize = 8;

/// The tests count this process's file descriptors: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn limits() -> AdminLimits {
    AdminLimits {
        header_read_timeout: SHORT,
        body_read_timeout: SHORT,
        max_connections: CAP,
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Reads until the peer closes (or resets); returns what arrived and when it closed,
/// `None` if it still has not closed after `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<(Vec<u8>, Instant)> {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some((received, Instant::now())),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Some((received, Instant::now())),
        }
    }
    None
}

/// Whether the peer closed `stream` (without waiting).
fn closed_by_peer(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn a_half_sent_request_head_is_closed_within_the_header_timeout() {
    let _serial = serial();
    let fx = Fixture::with_limits(limits());
    let mut stream = TcpStream::connect(fx.server.local_addr()).unwrap();
    let start = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let (_, closed) = read_until_closed(&mut stream, SHORT + SLACK)
        .expect("the half-sent request was not closed");
    let held = closed - start;
    assert!(
        held >= SHORT / 2,
        "closed after {held:?}, before the deadline"
    );
    // An idle keep-alive connection waiting for its next request is closed the same way.
    let mut idle = TcpStream::connect(fx.server.local_addr()).unwrap();
    let token = fx.token.expose();
    let request = format!("GET /api/array HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n");
    idle.write_all(request.as_bytes()).unwrap();
    let (answer, _) = read_until_closed(&mut idle, SHORT + SLACK)
        .expect("the idle keep-alive connection was not closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn a_refused_request_closes_its_connection() {
    let _serial = serial();
    let fx = Fixture::with_limits(AdminLimits {
        header_read_timeout: Duration::from_secs(60),
        ..limits()
    });
    let mut stream = TcpStream::connect(fx.server.local_addr()).unwrap();
    // Pipelined requests without the token: the first is refused and the rest never run.
    let request = b"GET /api/array HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(&request.repeat(50)).unwrap();
    let (answer, _) = read_until_closed(&mut stream, SLACK)
        .expect("a refused connection stayed open (it would hold a place under the cap)");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 401").count(), 1, "{text}");
}

#[test]
fn a_body_that_never_arrives_is_answered_408_and_closed() {
    let _serial = serial();
    let fx = Fixture::with_limits(limits());
    let before = fx.metadata();
    let mut stream = TcpStream::connect(fx.server.local_addr()).unwrap();
    let token = fx.token.expose();
    let head = format!(
        "POST /api/hosts HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"na"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let (answer, _) =
        read_until_closed(&mut stream, SHORT + SLACK).expect("the slow body was not closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(fx.metadata(), before);
}

#[test]
fn connections_beyond_the_cap_are_closed_and_hold_no_descriptors() {
    let _serial = serial();
    let fx = Fixture::with_limits(AdminLimits {
        header_read_timeout: Duration::from_secs(60),
        ..limits()
    });
    let baseline = open_fds();
    let clients: Vec<TcpStream> = (0..CAP + EXCESS)
        .map(|_| TcpStream::connect(fx.server.local_addr()).unwrap())
        .collect();
    let closed = wait_for(SLACK, || {
        let closed = clients.iter().filter(|c| closed_by_peer(c)).count();
        (closed >= EXCESS).then_some(closed)
    });
    assert_eq!(
        closed,
        Some(EXCESS),
        "every connection beyond the cap of {CAP} is closed, the others kept"
    );
    let held_by_server = open_fds().saturating_sub(baseline + clients.len());
    assert!(
        held_by_server <= CAP + FD_SLACK,
        "the service holds {held_by_server} descriptors for {} connections (cap {CAP})",
        clients.len()
    );
    // Once the idle ones go, the service answers again.
    drop(clients);
    let answered = wait_for(SLACK, || {
        let answer = fx.client.call("GET", "/api/array", None).ok()?;
        (answer.status == 200).then_some(())
    });
    assert!(answered.is_some(), "the service never answered again");
}

#[test]
fn a_login_redirect_never_leaves_the_origin() {
    let _serial = serial();
    let fx = Fixture::new();
    let anonymous = fx.anonymous();
    let token = fx.token.expose();
    for path in [
        "/%2Fevil.example",
        "/%2F%2Fevil.example",
        "//evil.example",
        "/%5Cevil.example",
        "/assets/%2F..%2F%2Fevil.example",
        "/",
    ] {
        let answer = anonymous
            .call("GET", &format!("{path}?token={token}"), None)
            .unwrap();
        assert_eq!(answer.status, 303, "{path}");
        assert_eq!(answer.header("location"), Some(LOGIN_LOCATION), "{path}");
    }
    assert_eq!(LOGIN_LOCATION, "/");
}

#[test]
fn names_the_page_cannot_manage_are_refused_with_400() {
    let _serial = serial();
    let fx = Fixture::new();
    for bad in [".", "..", "-x", "--force"] {
        fx.refused(
            "POST",
            "/api/hosts",
            Some(json!({ "name": bad })),
            400,
            "invalid name",
        );
        let body = json!({ "name": bad, "size": "1M" });
        fx.refused("POST", "/api/partitions", Some(body), 400, "invalid name");
    }
    // The offline CLI goes through the same check.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d0");
    let options = FormatOptions {
        chunk: 64 << 10,
        force: false,
        create_size: Some(16 << 20),
    };
    drop(Array::format(std::slice::from_ref(&disk), &options).unwrap());
    for args in [
        vec!["host", "create", ".."],
        vec!["partition", "create", ".", "1M"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_array-server"))
            .args(&args)
            .arg("--disk")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains("invalid name"), "{args:?}: {message}");
    }
}

fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    listener.local_addr().expect("probe address")
}

/// A `serve` process's stderr lines, with when each arrived.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

#[test]
fn an_accept_that_runs_out_of_descriptors_backs_off() {
    /// The server process's descriptor limit: enough to start, soon exhausted.
    const FD_LIMIT: usize = 48;
    /// Connections made to exhaust it.
    const FLOOD: usize = 80;
    /// How long the failing accepts are watched.
    const WINDOW: Duration = Duration::from_secs(1);
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("d{i}"))).collect();
    let options = FormatOptions {
        chunk: 64 << 10,
        force: false,
        create_size: Some(16 << 20),
    };
    drop(Array::format(&disks, &options).unwrap());
    let admin = free_loopback_addr();
    let exe = env!("CARGO_BIN_EXE_array-server");
    let script = format!(
        "ulimit -n {FD_LIMIT} && exec {exe} serve --disk {} --disk {} --listen 127.0.0.1:0 \
         --threads 1 --admin {admin}",
        disks[0].display(),
        disks[1].display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Lines = Arc::default();
    let stderr = child.stderr.take().unwrap();
    let collector = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push((Instant::now(), line));
            }
        })
    };
    let up = wait_for(SLACK, || TcpStream::connect(admin).ok());
    assert!(up.is_some(), "the admin service never listened");
    let _flood: Vec<TcpStream> = (0..FLOOD)
        .filter_map(|_| TcpStream::connect(admin).ok())
        .collect();
    let failing = |line: &str| line.contains("admin HTTP accept failed");
    let first = wait_for(SLACK, || {
        let lines = lines.lock().unwrap();
        lines.iter().find(|(_, l)| failing(l)).map(|(at, _)| *at)
    })
    .expect("accept never ran out of descriptors");
    let watched = wait_for(WINDOW + SLACK, || {
        (Instant::now() >= first + WINDOW).then_some(())
    });
    assert!(watched.is_some());
    let failures = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, l)| failing(l) && *at <= first + WINDOW)
        .count();
    let _ = child.kill();
    let _ = child.wait();
    let _ = collector.join();
    let most = (WINDOW.as_millis() / ACCEPT_RETRY_DELAY.as_millis()) as usize + 2;
    assert!(
        failures <= most,
        "{failures} failed accepts logged in {WINDOW:?} (at most {most} with the back-off)"
    );
}
