//! A socket receive that completes only once its buffers are full (or the stream ends or
//! fails), as one tokio-uring operation: `IORING_OP_RECVMSG` with `MSG_WAITALL`.
//!
//! A plain receive completes with whatever has arrived, so a 1 MiB write payload came in
//! as many receives as the peer's segments arrived in, each a turn of the thread's event
//! loop (completion, wakeup, a new submission). With `MSG_WAITALL` the kernel retries the
//! receive itself as data arrives and posts one completion for the whole payload. If the
//! socket is shut down or the peer leaves mid-payload, the completion carries the bytes
//! received so far (or the error), as a short read would.
//!
//! With the socket's low-water mark raised ([`LowWater`]) a payload arrives with a single
//! wakeup; [`Until::Readable`] then waits for readiness first and takes what that wakeup
//! brings (`MSG_WAITALL` would let the kernel retry with the mark above what is still owed).
//!
//! tokio-uring 0.5 has no such receive for TCP, but takes custom operations
//! ([`UnsubmittedOneshot`]); the entry is built with its own `io-uring` version.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use tokio_uring::buf::BoundedBufMut;
use tokio_uring::net::TcpStream;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};
use tokio_uring_sqe::{cqueue, opcode, types};

/// What the kernel may use until the operation's completion arrives; tokio-uring keeps it
/// (even if the future is dropped) until then.
pub struct RecvAllData<T> {
    /// Keeps the socket's descriptor open.
    _stream: Rc<TcpStream>,
    buffers: Vec<T>,
    /// One entry per buffer: its unfilled part.
    _iovecs: Vec<libc::iovec>,
    _header: Box<libc::msghdr>,
}

/// Turns the completion into the bytes received and marks them filled in the buffers.
pub struct RecvAllTransform<T>(PhantomData<T>);

impl<T: BoundedBufMut> OneshotOutputTransform for RecvAllTransform<T> {
    type Output = (io::Result<usize>, Vec<T>);
    type StoredData = RecvAllData<T>;

    fn transform_oneshot_output(self, data: RecvAllData<T>, cqe: cqueue::Entry) -> Self::Output {
        let mut buffers = data.buffers;
        let result = cqe.result();
        if result < 0 {
            return (Err(io::Error::from_raw_os_error(-result)), buffers);
        }
        let received = result as usize;
        let mut left = received;
        for buffer in &mut buffers {
            let took = unfilled(buffer).min(left);
            // SAFETY: the kernel wrote `took` bytes right after the initialised part (the
            // iovecs cover the unfilled parts in order, and a receive fills them in order).
            unsafe { buffer.set_init(buffer.bytes_init() + took) };
            left -= took;
        }
        (Ok(received), buffers)
    }
}

/// Bytes of `buffer` after its initialised part: what a receive may fill.
fn unfilled<T: BoundedBufMut>(buffer: &T) -> usize {
    buffer.bytes_total() - buffer.bytes_init()
}

/// A payload from this size on is received with the socket's low-water mark raised to
/// what is owed ([`LowWater`]).
pub const LOW_WATER_FROM: usize = 128 * 1024;
/// `IORING_RECVSEND_POLL_FIRST` (`linux/io_uring.h`, 5.19): a receive's `ioprio` flag that
/// waits for readiness before the first try.
const RECVSEND_POLL_FIRST: u16 = 1;

/// When a receive completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Once the buffers are full (`MSG_WAITALL`).
    Full,
    /// At the socket's first readiness, with what is there then (`POLL_FIRST`): with the
    /// low-water mark raised to what is owed, once all of it is there.
    Readable,
}

/// The socket's receive low-water mark (`SO_RCVLOWAT`) while a large payload is owed.
///
/// At the default mark every arriving segment wakes the receive: a 1 MiB write payload
/// cost about one wakeup per 64 KiB on loopback, each also paid by the sender, whose
/// `sendmsg` runs it. Raised to the bytes still owed, the socket wakes the receive once
/// they are all there. The mark never exceeds what is owed, so it is always reached (the
/// kernel also wakes a receive whose buffer fills, and caps the mark at half the largest
/// buffer: several wakeups then, never none). Put back to one byte when dropped, before
/// the next head is awaited.
pub struct LowWater {
    fd: RawFd,
    raised: bool,
}

impl LowWater {
    /// The mark of `stream`'s socket, not raised yet.
    pub fn new(stream: &TcpStream) -> LowWater {
        LowWater {
            fd: stream.as_raw_fd(),
            raised: false,
        }
    }

    /// Raises the mark to `owed` bytes when that is at least [`LOW_WATER_FROM`] (else
    /// lowers it); returns how the receive for them should complete.
    pub fn raise(&mut self, owed: usize) -> Until {
        if owed < LOW_WATER_FROM {
            self.lower();
            return Until::Full;
        }
        self.raised = set_low_water(self.fd, owed);
        match self.raised {
            true => Until::Readable,
            false => Until::Full,
        }
    }

    fn lower(&mut self) {
        if std::mem::take(&mut self.raised) {
            set_low_water(self.fd, 1);
        }
    }
}

impl Drop for LowWater {
    fn drop(&mut self) {
        self.lower();
    }
}

/// Sets `SO_RCVLOWAT`; returns whether it took (a failure costs wakeups, not data).
fn set_low_water(fd: RawFd, bytes: usize) -> bool {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: passes a live c_int and its size; the call is synchronous.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        log::debug!("SO_RCVLOWAT {bytes}: {}", io::Error::last_os_error());
    }
    result == 0
}

/// Receives into the unfilled parts of `buffers`, in order, until all are full
/// ([`Until::Full`]) or the socket's first readiness ([`Until::Readable`]); returns the
/// bytes received (short of full only if the stream ended, was shut down or failed midway,
/// or with `Readable`) and the buffers, their filled parts advanced.
pub async fn recv_all<T: BoundedBufMut + Unpin + 'static>(
    stream: &Rc<TcpStream>,
    mut buffers: Vec<T>,
    until: Until,
) -> (io::Result<usize>, Vec<T>) {
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buffer| libc::iovec {
            // SAFETY: `bytes_init <= bytes_total`, so this stays inside the buffer.
            iov_base: unsafe { buffer.stable_mut_ptr().add(buffer.bytes_init()) }.cast(),
            iov_len: unfilled(buffer),
        })
        .collect();
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    header.msg_iov = iovecs.as_mut_ptr();
    header.msg_iovlen = iovecs.len() as _;
    let (flags, ioprio) = match until {
        Until::Full => (libc::MSG_WAITALL as u32, 0),
        Until::Readable => (0, RECVSEND_POLL_FIRST),
    };
    let entry = opcode::RecvMsg::new(types::Fd(stream.as_raw_fd()), &mut *header)
        .flags(flags)
        .ioprio(ioprio)
        .build();
    let data = RecvAllData {
        _stream: stream.clone(),
        buffers,
        _iovecs: iovecs,
        _header: header,
    };
    UnsubmittedOneshot::new(data, RecvAllTransform(PhantomData), entry)
        .submit()
        .await
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::Shutdown;
    use std::sync::mpsc;

    use tokio_uring::buf::BoundedBuf;

    use super::*;

    /// A loopback pair: the ring side for the test, the std side for a peer thread.
    async fn pair() -> (Rc<TcpStream>, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (Rc::new(TcpStream::from_std(ours)), peer)
    }

    /// A peer thread that writes `chunks` one at a time (`TCP_NODELAY`: a segment each),
    /// each when the test says `go` and answering when it is written (on loopback: in our
    /// socket's receive queue), then shuts its side down (`end`).
    fn trickle(
        mut peer: std::net::TcpStream,
        chunks: Vec<Vec<u8>>,
        end: Shutdown,
    ) -> (Peer, std::thread::JoinHandle<()>) {
        let (go, wait) = mpsc::channel::<()>();
        let (written, heard) = mpsc::channel::<()>();
        peer.set_nodelay(true).unwrap();
        let thread = std::thread::spawn(move || {
            for chunk in chunks {
                wait.recv().unwrap();
                peer.write_all(&chunk).unwrap();
                written.send(()).unwrap();
            }
            peer.shutdown(end).unwrap();
        });
        (Peer { go, heard }, thread)
    }

    struct Peer {
        go: mpsc::Sender<()>,
        heard: mpsc::Receiver<()>,
    }

    impl Peer {
        /// Has the next chunk written and waits until it is.
        fn send_next(&self) {
            self.go.send(()).unwrap();
            self.heard.recv().unwrap();
        }
    }

    /// Bytes waiting in `stream`'s receive queue.
    fn unread(stream: &TcpStream) -> libc::c_int {
        let mut waiting: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which points at `waiting`.
        let result = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut waiting) };
        assert_eq!(result, 0, "FIONREAD");
        waiting
    }

    #[test]
    fn one_completion_for_a_payload_sent_in_pieces_into_several_buffers() {
        tokio_uring::start(async {
            let (stream, peer) = pair().await;
            let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 3000]).collect();
            let sent: Vec<u8> = chunks.concat();
            let (peer, thread) = trickle(peer, chunks, Shutdown::Write);
            // Two buffers, the first already holding 10 bytes (kept as they are).
            let mut first = vec![0xaa_u8; 10];
            first.reserve_exact(5000 - 10);
            let second = Vec::with_capacity(sent.len() - (5000 - 10));
            let receive = tokio_uring::spawn({
                let stream = stream.clone();
                async move { recv_all(&stream, vec![first, second], Until::Full).await }
            });
            // The first piece is taken from the socket, and the receive goes on waiting.
            peer.send_next();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while unread(&stream) > 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the receive took nothing"
                );
                // Parks the runtime, which submits the receive (a yield would not).
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert!(!receive.is_finished(), "completed after the first piece");
            for _ in 1..4 {
                peer.send_next();
            }
            let (result, buffers) = receive.await.unwrap();
            assert_eq!(result.unwrap(), sent.len(), "all of it, in one completion");
            assert_eq!(buffers[0][..10], [0xaa; 10]);
            assert_eq!([&buffers[0][10..], &buffers[1][..]].concat(), sent);
            thread.join().unwrap();
        });
    }

    #[test]
    fn with_the_low_water_mark_raised_a_large_payload_stays_in_the_socket_until_whole() {
        tokio_uring::start(async {
            let (stream, peer) = pair().await;
            let piece = LOW_WATER_FROM / 2;
            let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; piece]).collect();
            let sent: Vec<u8> = chunks.concat();
            let (peer, thread) = trickle(peer, chunks, Shutdown::Write);
            let mut low_water = LowWater::new(&stream);
            assert_eq!(low_water.raise(sent.len()), Until::Readable);
            let receive = tokio_uring::spawn({
                let stream = stream.clone();
                let buffer = Vec::with_capacity(sent.len());
                async move { recv_all(&stream, vec![buffer], Until::Readable).await }
            });
            for _ in 1..4 {
                peer.send_next();
            }
            // Three pieces of four in the socket: nothing taken, nothing completed (the
            // runtime parks and submits the receive meanwhile).
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(unread(&stream) as usize, 3 * piece);
            assert!(!receive.is_finished(), "woken before the payload was whole");
            peer.send_next();
            let (result, buffers) = receive.await.unwrap();
            assert_eq!(result.unwrap(), sent.len(), "all of it, in one completion");
            assert_eq!(buffers[0], sent);
            drop(low_water); // back to one byte
            assert_eq!(low_water_of(&stream), 1);
            thread.join().unwrap();
        });
    }

    /// `stream`'s `SO_RCVLOWAT`.
    fn low_water_of(stream: &TcpStream) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: passes a live c_int and its size for the kernel to fill.
        let result = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(result, 0, "SO_RCVLOWAT");
        value
    }

    #[test]
    fn a_stream_ended_midway_completes_with_what_came() {
        tokio_uring::start(async {
            let (stream, peer) = pair().await;
            let (peer, thread) = trickle(peer, vec![vec![7; 100]], Shutdown::Write);
            peer.send_next();
            let buffer = Vec::with_capacity(4096).slice(..4096);
            let (result, buffers) = recv_all(&stream, vec![buffer], Until::Full).await;
            assert_eq!(result.unwrap(), 100);
            assert_eq!(&buffers[0][..], &[7; 100][..]);
            thread.join().unwrap();
        });
    }
}
