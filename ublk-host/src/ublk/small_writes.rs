//! Small writes of a zero-copy device go out copied: a write of at most
//! [`SMALL_WRITE_MAX`] bytes is read from the request's pages into the tag's own buffer
//! (`pread` of the ublk character device, which the driver allows with `UBLK_F_USER_COPY`)
//! and then sent exactly like a copy-mode write.
//!
//! Why: zero copy sends each write's data from the request's registered pages with a
//! fixed-buffer ring operation of its own (request runs, `client/request_run.rs`, put a
//! batch's heads in one `sendmsg`, but each payload is still its own operation), where
//! copy mode sends a whole batch of heads and payloads in one `sendmsg` and the server
//! reads them as plain frames. For a 4 KiB write that operation costs more than the copy it
//! saves: in the 7.3 lab (`LAB_GUEST_ENV=PROFILE_RW=randwrite scripts/lab --kernel 7.3
//! profile-depth`, 4k randwrite QD32, 2026-12-06) copy mode made 36662 writes/s at 55 us of
//! busy CPU per write, zero copy 29184 at 69 us (queue threads 23.0 against 32.1 us, server
//! 16.7 against 20.6). For large writes the copy is what costs and zero copy wins (1 MiB:
//! 1.3-2.2x, README "Zero copy on the 7.3 kernel"). Reads stay zero copy at every size:
//! their replies land in the request's pages through chained receives (reply runs), which
//! at 4k QD32 beat copy mode (`scripts/lab --kernel 7.3 attach-ab`: 36.4k against 29.0k
//! IOPS).
//!
//! The copy is a synchronous `pread` on the queue thread, not a ring operation: it cannot
//! block (the driver copies from pages the request already holds), and done inside the
//! tag's task it lets the write reach its lane's sender in the same turn as the rest of
//! its burst, where a ring operation would complete one loop turn later.
//!
//! A device created without user copy (a driver that does not offer it, or a device made
//! by an older daemon and taken over by `upgrade`) sends every write zero copy.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;

use libublk::helpers::IoBuf;
use libublk::io::{UblkIOCtx, UblkQueue};
use libublk::sys;
use wire::Op;

use crate::client::{BlockIo, BufRef};

/// The largest write sent copied on a zero-copy device. In the 7.3 lab a build that copied
/// writes up to 64 KiB, against one that copied up to 16 KiB (`LAB_GUEST_ENV=AB_WORKLOADS=
/// randwrite/16k/32:randwrite/32k/32:randwrite/64k/32 scripts/bench-lab-ab OLD --kernel
/// 7.3`, medians of 3): 16 KiB 1.01x (both copy), 32 KiB 1.10x, 64 KiB 0.94x. So the copy
/// pays up to 32 KiB under the emulator, whose copies cost far more against a ring
/// operation than a real machine's (README, "Per-request cost"); there the break-even
/// lies higher, and 32 KiB errs on the side of zero copy.
pub const SMALL_WRITE_MAX: usize = 32 * 1024;

/// The driver flag that lets the daemon copy request data (`pread` of `/dev/ublkcN`).
pub const USER_COPY: u64 = sys::UBLK_F_USER_COPY as u64;

/// One tag's copy path for small writes.
pub struct SmallWrites {
    /// The tag's own buffer, [`SMALL_WRITE_MAX`] bytes.
    buf: IoBuf<u8>,
    /// The device's character device (`/dev/ublkcN`), as the queue opened it.
    cdev: RawFd,
    /// Where the tag's request data is in the character device.
    pos: libc::off_t,
    /// Cleared when the driver refused a copy: the tag's writes then all go zero copy.
    works: Cell<bool>,
}

impl SmallWrites {
    /// The copy path of `tag`, when the device lets the daemon copy request data
    /// (`UBLK_F_USER_COPY`); `None` otherwise.
    pub fn for_tag(queue: &UblkQueue<'_>, tag: u16) -> Option<SmallWrites> {
        if queue.dev.dev_info.flags & USER_COPY == 0 {
            return None;
        }
        let pos = UblkIOCtx::ublk_user_copy_pos(queue.get_qid(), tag, 0);
        let pos = libc::off_t::try_from(pos).ok()?;
        Some(SmallWrites::reading(queue.dev.tgt.fds[0], pos))
    }

    /// A copy path that reads request data from `cdev` at `pos`.
    fn reading(cdev: RawFd, pos: libc::off_t) -> SmallWrites {
        SmallWrites {
            buf: IoBuf::new(SMALL_WRITE_MAX),
            cdev,
            pos,
            works: Cell::new(true),
        }
    }

    /// Whether `io` goes out copied.
    pub fn takes(&self, io: &BlockIo) -> bool {
        io.op == Op::Write && io.len as usize <= SMALL_WRITE_MAX && self.works.get()
    }

    /// Copies the current request's `len` bytes (at most [`SMALL_WRITE_MAX`]) into the
    /// tag's buffer and returns it, for the lane to send from; `None` if the driver did
    /// not copy them, and the write is to go zero copy. The request's pages are untouched
    /// either way, so a refused copy costs the optimisation, never the write: after one,
    /// the tag sends every write zero copy (a driver that allows the flag but not the copy
    /// would refuse them all).
    pub fn copy_in(&self, len: u32) -> Option<BufRef> {
        let len = len as usize;
        if len > SMALL_WRITE_MAX {
            return None;
        }
        let ptr = self.buf.as_mut_ptr();
        // SAFETY: the tag's buffer holds SMALL_WRITE_MAX >= len bytes and nothing else
        // uses it now: the tag's previous request completed before this one was fetched,
        // and this one is handed to its lane only after the copy.
        let copied = unsafe { libc::pread(self.cdev, ptr.cast(), len, self.pos) };
        if usize::try_from(copied) == Ok(len) {
            return Some(BufRef::Ptr(ptr));
        }
        let why = if copied < 0 {
            io::Error::last_os_error().to_string()
        } else {
            format!("only {copied} bytes")
        };
        log::warn!(
            "the ublk driver did not copy a {len}-byte write at {:#x} ({why}): this tag \
             sends its writes zero copy from now on",
            self.pos
        );
        self.works.set(false);
        None
    }
}

impl std::fmt::Debug for SmallWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallWrites")
            .field("cdev", &self.cdev)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    fn io(op: Op, len: u32) -> BlockIo {
        BlockIo {
            op,
            offset: 0,
            len,
            fua: false,
        }
    }

    /// A file standing in for the character device: `len` patterned bytes after `pos`.
    fn device_file(pos: usize, len: usize) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..pos + len).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        file
    }

    #[test]
    fn only_writes_up_to_the_limit_are_copied() {
        let file = device_file(0, 0);
        let small = SmallWrites::reading(file.as_raw_fd(), 0);
        let limit = SMALL_WRITE_MAX as u32;
        assert!(small.takes(&io(Op::Write, 4096)));
        assert!(small.takes(&io(Op::Write, limit)));
        assert!(!small.takes(&io(Op::Write, limit + 512)));
        assert!(!small.takes(&io(Op::Read, 4096)));
        assert!(!small.takes(&io(Op::Flush, 0)));
    }

    #[test]
    fn the_request_data_is_copied_from_its_position() {
        let pos = 8192;
        let file = device_file(pos, SMALL_WRITE_MAX);
        let small = SmallWrites::reading(file.as_raw_fd(), pos as libc::off_t);
        let Some(BufRef::Ptr(ptr)) = small.copy_in(4096) else {
            panic!("the copy did not give the tag's buffer");
        };
        // SAFETY: the tag's buffer holds SMALL_WRITE_MAX bytes, 4096 of them just copied.
        let copied = unsafe { std::slice::from_raw_parts(ptr, 4096) };
        let expected: Vec<u8> = (pos..pos + 4096).map(|i| (i % 251) as u8).collect();
        assert_eq!(copied, expected.as_slice());
        assert!(small.takes(&io(Op::Write, 4096)));
    }

    /// A copy the device refuses (here: short, past its end) sends the write zero copy,
    /// and the tag's later writes too.
    #[test]
    fn a_refused_copy_turns_copying_off() {
        let file = device_file(0, 1024);
        let small = SmallWrites::reading(file.as_raw_fd(), 0);
        assert!(small.copy_in(4096).is_none());
        assert!(!small.takes(&io(Op::Write, 4096)));
    }
}
