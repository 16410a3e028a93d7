//! Socket I/O of a lane on the queue's io_uring: batched sends with short-send resumption,
//! and single receives (the reply parsing built on them is in `receive.rs`).

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use io_uring::{opcode, types};

use crate::client::slot::{BufRef, Slot};
use crate::client::uring::submit;
use crate::error::{HostError, Result};

fn os_error(context: &'static str, result: i32) -> HostError {
    HostError::io(context, io::Error::from_raw_os_error(-result))
}

/// Sends the frames of `batch` (head, then a write's payload from the caller's buffer)
/// with as few `sendmsg` calls as the socket allows; a payload in a fixed buffer goes out
/// with fixed-buffer writes after the frames before it (their last `sendmsg` says
/// `MSG_MORE`, so the head waits for its payload).
pub(crate) async fn send_batch(fd: RawFd, batch: &[Rc<Slot>]) -> Result<()> {
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(batch.len() * 2);
    for slot in batch {
        iovecs.push(libc::iovec {
            iov_base: slot.head.as_ptr() as *mut libc::c_void,
            iov_len: slot.head.len(),
        });
        let payload = slot.request.payload_len() as usize;
        if payload == 0 {
            continue;
        }
        match slot.buf {
            BufRef::Ptr(ptr) => iovecs.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: payload,
            }),
            BufRef::Fixed { index, addr } => {
                send_iovecs(fd, &mut iovecs, libc::MSG_MORE).await?;
                iovecs.clear();
                // SAFETY: the slot's fixed buffer holds `payload` bytes from `addr` and
                // stays registered while the slot is unfinished (`Slot::new`'s contract);
                // the caller marked the slot busy.
                unsafe { write_fixed(fd, index, addr, payload).await? };
            }
            BufRef::None => {
                return Err(HostError::Protocol(format!(
                    "tag {} carries data but has no buffer",
                    slot.request.tag
                )))
            }
        }
    }
    send_iovecs(fd, &mut iovecs, 0).await
}

/// Sends everything `iovecs` points at (nothing if empty), resuming short sends.
///
/// The first attempt is a direct non-blocking `sendmsg`: with room in the socket buffer
/// (nearly always) it sends everything at once and saves a ring round trip (an
/// `io_uring_enter` that returns with only the send's completion, and a wakeup of this
/// task). Whatever the socket does not take at once goes through the ring, which waits
/// for room.
async fn send_iovecs(fd: RawFd, iovecs: &mut [libc::iovec], flags: i32) -> Result<()> {
    let mut first = 0;
    let mut direct = true;
    while first < iovecs.len() {
        // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = iovecs[first..].as_mut_ptr();
        message.msg_iovlen = iovecs.len() - first;
        let flags = libc::MSG_NOSIGNAL | flags;
        let sent = if direct {
            direct = false;
            // SAFETY: `message` points at live iovecs (see below); the call is synchronous.
            let sent = unsafe { libc::sendmsg(fd, &message, flags | libc::MSG_DONTWAIT) };
            match sent {
                n if n >= 0 => n as i32,
                _ => match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => continue,
                    Some(errno) => -errno,
                    None => -libc::EIO,
                },
            }
        } else {
            let sqe = opcode::SendMsg::new(types::Fd(fd), &message)
                .flags(flags as u32)
                .build();
            // SAFETY: `message` and `iovecs` live until the send completes (awaited
            // here); the iovecs point at the slots' heads (owned by the slots, kept
            // alive by the caller's batch) and payloads (valid while the slot is
            // unfinished, by `Slot::new`'s contract, and marked busy by the caller so
            // they are not released meanwhile).
            unsafe { submit(sqe) }.await
        };
        if sent < 0 {
            return Err(os_error("sending requests", sent));
        }
        if sent == 0 {
            return Err(HostError::Closed);
        }
        first = advance(iovecs, first, sent as usize);
    }
    Ok(())
}

/// Writes `len` bytes of fixed buffer `index` from `addr` to the socket (a stream socket's
/// write is a send), resuming short writes.
///
/// # Safety
///
/// Buffer `index` of the thread's ring must hold `[addr, addr + len)` and stay registered
/// and unmodified until the returned future completes; it must be polled to completion.
async unsafe fn write_fixed(fd: RawFd, index: u16, addr: u64, len: usize) -> Result<()> {
    let mut done = 0;
    while done < len {
        let chunk = (len - done).min(u32::MAX as usize) as u32;
        let at = (addr + done as u64) as *const u8;
        let sqe = opcode::WriteFixed::new(types::Fd(fd), at, chunk, index).build();
        // SAFETY: the caller vouches for the fixed buffer and for polling to completion.
        match unsafe { submit(sqe) }.await {
            0 => return Err(HostError::Closed),
            n if n < 0 => return Err(os_error("sending a fixed buffer", n)),
            n => done += n as usize,
        }
    }
    Ok(())
}

/// Consumes `sent` bytes from `iovecs[first..]`; returns the new first unsent iovec.
fn advance(iovecs: &mut [libc::iovec], mut first: usize, mut sent: usize) -> usize {
    while sent > 0 {
        let iovec = &mut iovecs[first];
        if sent >= iovec.iov_len {
            sent -= iovec.iov_len;
            first += 1;
        } else {
            // SAFETY: `sent < iov_len`, so the new base stays inside the same buffer.
            iovec.iov_base = unsafe { iovec.iov_base.cast::<u8>().add(sent) }.cast();
            iovec.iov_len -= sent;
            sent = 0;
        }
    }
    first
}

/// Receives once into `dest` (up to `len` bytes); `MSG_WAITALL` asks for all of it at
/// once (a fixed buffer is read with a fixed-buffer read, which takes what is there).
///
/// # Safety
///
/// `dest` must hold `len` writable bytes (a fixed buffer: registered in the thread's ring)
/// that are not otherwise accessed until the returned future completes; the future must
/// be polled to completion.
pub(crate) async unsafe fn recv_into(
    fd: RawFd,
    dest: BufRef,
    len: usize,
    flags: i32,
) -> Result<usize> {
    let len = len.min(u32::MAX as usize) as u32;
    let sqe = match dest {
        BufRef::Ptr(ptr) => opcode::Recv::new(types::Fd(fd), ptr, len)
            .flags(flags)
            .build(),
        BufRef::Fixed { index, addr } => {
            opcode::ReadFixed::new(types::Fd(fd), addr as *mut u8, len, index).build()
        }
        BufRef::None => return Err(HostError::Protocol("a receive without a buffer".into())),
    };
    // SAFETY: the caller vouches for the buffer and for polling to completion.
    match unsafe { submit(sqe) }.await {
        0 => Err(HostError::Closed),
        n if n < 0 => Err(os_error("receiving replies", n)),
        n => Ok(n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::advance;

    #[test]
    fn advance_handles_partial_iovecs() {
        let a = [0u8; 10];
        let b = [0u8; 20];
        let mut iovecs = [
            libc::iovec {
                iov_base: a.as_ptr() as *mut _,
                iov_len: 10,
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: 20,
            },
        ];
        let first = advance(&mut iovecs, 0, 13);
        assert_eq!(first, 1);
        assert_eq!(iovecs[1].iov_len, 17);
        assert_eq!(advance(&mut iovecs, first, 17), 2);
    }
}
