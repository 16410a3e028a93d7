//! The queue's io_uring: libublk's thread-local task ring, shared by the ublk queue (when
//! there is one) and every socket operation of the queue's lanes.
//!
//! Operations are submitted with [`submit`] (libublk's `ublk_submit_sqe_async`, marked as
//! target I/O) and complete when the thread's event loop reaps their CQE and calls
//! `ublk_wake_task`: libublk's loop on a ublk queue thread, [`run_until`] on a plain
//! thread. Either way a future returned here must be awaited to completion, never dropped,
//! because the kernel may use the memory the operation points at until its CQE arrives.
//!
//! # Polling before sleeping
//!
//! Both loops poll the ring for a while ([`poll_completions`]; a ublk queue for longer
//! while its replies take longer, see `ublk/queue.rs`) before they sleep in
//! `io_uring_enter`. A request's reply nearly always arrives within tens of microseconds,
//! and a thread that slept for it is woken by an inter-processor interrupt to a halted
//! CPU: on a virtual machine that wakeup costs more than the whole round trip (4k reads
//! at queue depth 1 on this project's 2-vCPU VM, `bench` against `array-server` on
//! loopback: 3.5-5.5k IOPS sleeping, 17-21k polling for 50-100 us). Each round of the
//! poll yields the CPU (`sched_yield`), so a task that shares the CPU (the server on
//! loopback, fio) runs instead of waiting for the poll to end, and the return from that
//! system call runs the ring's pending task work, which posts the completions.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use libublk::uring_async::{ublk_wake_task, UblkUringOpFuture};
use libublk::UblkUringData;

use crate::error::{HostError, Result};

/// Marks an operation as the target's own I/O (not a ublk command) in its user data.
const TARGET_IO: u64 = UblkUringData::Target as u64;

/// Gives the current thread its task ring with room for `entries` operations at once
/// (twice that in the completion queue); does nothing if the thread already has one.
pub fn init_thread_ring(entries: u32) -> Result<()> {
    libublk::ublk_init_task_ring(|cell| {
        if cell.get().is_none() {
            let ring = IoUring::<squeue::Entry>::builder()
                .setup_cqsize(entries * 2)
                .setup_coop_taskrun()
                .build(entries)
                .map_err(libublk::UblkError::IOError)?;
            cell.set(RefCell::new(ring))
                .map_err(|_| libublk::UblkError::OtherError(-libc::EEXIST))?;
        }
        Ok(())
    })
    .map_err(|e| HostError::Ring(format!("cannot create the queue's io_uring: {e}")))
}

/// Registers `len` bytes at `base` as fixed buffer 0 of the thread's ring (which must
/// have no buffer table yet): what the ublk driver does with a request's pages in zero-copy
/// mode, done by a process for its own memory (`bench --fixed-buffers`, tests), so the
/// zero-copy lane path runs without a ublk device. [`BufRef::Fixed`] addresses into it are
/// user addresses.
///
/// # Safety
///
/// `[base, base + len)` must stay allocated until [`unregister_buffers`] returns (or the
/// ring is gone), and be accessed by the process only while no operation uses it.
///
/// [`BufRef::Fixed`]: crate::client::BufRef::Fixed
pub unsafe fn register_buffer(base: *mut u8, len: usize) -> Result<()> {
    let iovec = libc::iovec {
        iov_base: base.cast(),
        iov_len: len,
    };
    libublk::io::with_task_io_ring_mut(|ring| {
        // SAFETY: the caller keeps the memory allocated while it is registered.
        unsafe { ring.submitter().register_buffers(&[iovec]) }
    })
    .map_err(|e| HostError::Ring(format!("cannot register a fixed buffer: {e}")))
}

/// Drops the thread's ring's buffer table (see [`register_buffer`]).
pub fn unregister_buffers() -> Result<()> {
    libublk::io::with_task_io_ring_mut(|ring| ring.submitter().unregister_buffers())
        .map_err(|e| HostError::Ring(format!("cannot unregister fixed buffers: {e}")))
}

/// Submits one operation on the thread's ring; resolves to its CQE result (`-errno` on
/// failure).
///
/// # Safety
///
/// Every buffer, iovec, message header or timespec `sqe` points at must stay valid (and
/// not be accessed in a conflicting way) until the returned future completes, and the
/// future must be polled to completion, never dropped early: the kernel uses that memory
/// until the CQE arrives.
pub async unsafe fn submit(sqe: squeue::Entry) -> i32 {
    let op = UblkUringOpFuture::new(TARGET_IO);
    push(&[sqe.user_data(op.user_data)]);
    op.await
}

/// Most operations [`submit_linked`] takes at once.
pub const MAX_LINKED: usize = 32;

/// Submits `sqes` (at most [`MAX_LINKED`], and no more than the ring holds) as one
/// chain: each starts once the one before has completed in full; a failed or short one
/// cancels the rest, which complete with `-ECANCELED`. Resolves to every result, in
/// order. One system call for the lot, where awaiting each in turn costs a round trip
/// of the event loop per operation.
///
/// # Safety
///
/// As for [`submit`], for every entry.
pub async unsafe fn submit_linked(sqes: Vec<squeue::Entry>) -> Vec<i32> {
    // SAFETY: the caller's contract; every operation is awaited here.
    let ops = unsafe { push_linked(sqes) };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(op.await);
    }
    results
}

/// Pushes `sqes` as one chain, as [`submit_linked`] does, and returns each operation's
/// future, in order: a caller that awaits them in turn can act on each completion while
/// the rest of the chain runs.
///
/// # Safety
///
/// As for [`submit`], for every entry, and every future must be awaited to completion
/// (the operations' memory stays in use until then).
pub unsafe fn push_linked(sqes: Vec<squeue::Entry>) -> Vec<UblkUringOpFuture> {
    let ops: Vec<UblkUringOpFuture> = sqes
        .iter()
        .map(|_| UblkUringOpFuture::new(TARGET_IO))
        .collect();
    let last = sqes.len().saturating_sub(1);
    let chain: Vec<squeue::Entry> = sqes
        .into_iter()
        .zip(&ops)
        .enumerate()
        .map(|(i, (sqe, op))| {
            let sqe = sqe.user_data(op.user_data);
            // The last entry must not link: it would chain whatever is pushed next.
            if i < last {
                sqe.flags(squeue::Flags::IO_LINK)
            } else {
                sqe
            }
        })
        .collect();
    push(&chain);
    ops
}

/// How many linked operations fit in the thread's submission queue at once.
pub fn linked_room() -> usize {
    libublk::io::with_task_io_ring_mut(|ring| ring.submission().capacity()).min(MAX_LINKED)
}

/// Submits `sqe` linked to a timeout: if it has not completed after `timeout`, the kernel
/// cancels it and it resolves to `-ECANCELED`.
///
/// # Safety
///
/// As for [`submit`].
pub async unsafe fn submit_with_timeout(sqe: squeue::Entry, timeout: Duration) -> i32 {
    let spec = types::Timespec::from(timeout);
    let op = UblkUringOpFuture::new(TARGET_IO);
    let timer = UblkUringOpFuture::new(TARGET_IO);
    // SAFETY (of the whole function): the caller keeps `sqe`'s memory valid and polls
    // this future to completion; `spec` lives in it until the timer's CQE.
    let linked = sqe.user_data(op.user_data).flags(squeue::Flags::IO_LINK);
    let timeout_sqe = opcode::LinkTimeout::new(&spec)
        .build()
        .user_data(timer.user_data);
    push(&[linked, timeout_sqe]);
    let result = op.await;
    // The timer's CQE always comes (-ETIME or -ECANCELED); `spec` must outlive it.
    let _ = timer.await;
    result
}

/// Resolves after `duration` (a ring timeout).
///
/// # Safety
///
/// The future must be polled to completion, never dropped early: the kernel reads the
/// timespec it owns when the operation is submitted.
pub async unsafe fn sleep(duration: Duration) {
    let spec = Box::new(types::Timespec::from(duration));
    let sqe = opcode::Timeout::new(&*spec).build();
    // SAFETY: `spec` lives in this future until the timeout's CQE; the caller polls the
    // future to completion.
    let _ = unsafe { submit(sqe) }.await;
    drop(spec);
}

/// Pushes entries contiguously (a linked pair must not be separated), submitting first to
/// make room if the submission queue is full.
fn push(entries: &[squeue::Entry]) {
    libublk::io::with_task_io_ring_mut(|ring| {
        let free = |ring: &mut IoUring<squeue::Entry>| {
            let queue = ring.submission();
            queue.capacity() - queue.len()
        };
        while free(ring) < entries.len() {
            if let Err(e) = ring.submit() {
                log::warn!("io_uring submit while the queue is full: {e}");
            }
        }
        for entry in entries {
            // SAFETY: every entry points at memory owned by the future that awaits its
            // completion; callers await that future to completion (see the module doc).
            unsafe { ring.submission().push(entry) }.expect("room was made above");
        }
    });
}

/// Runs `executor` on this thread until `task` finishes, polling for `poll` and then
/// sleeping in the ring between completions; this is the event loop of a queue thread
/// that has no ublk queue.
pub fn run_until<T>(
    executor: &smol::LocalExecutor<'_>,
    task: smol::Task<T>,
    poll: Duration,
) -> Result<T> {
    loop {
        while executor.try_tick() {}
        if task.is_finished() {
            return Ok(smol::future::block_on(task));
        }
        wait_and_wake(poll)?;
    }
}

/// Submits what the thread's ring holds, then polls its completion queue for up to
/// `budget`, yielding the CPU between looks (see the module docs); true when a completion
/// is there, false when the caller should sleep for one (or `budget` is zero).
pub fn poll_completions(budget: Duration) -> bool {
    if budget.is_zero() {
        return false;
    }
    let submitted = libublk::io::with_task_io_ring_mut(|ring| {
        ring.submission().is_empty() || ring.submit().is_ok()
    });
    if !submitted {
        return false; // the sleeping submit reports the error
    }
    let ready = || libublk::io::with_task_io_ring_mut(|ring| !ring.completion().is_empty());
    let deadline = Instant::now() + budget;
    while !ready() {
        if Instant::now() >= deadline {
            return false;
        }
        // SAFETY: sched_yield takes no arguments and touches no memory of ours.
        unsafe { libc::sched_yield() };
    }
    true
}

/// Waits for at least one completion (polling for `poll` first), then wakes the task of
/// every completion reaped.
fn wait_and_wake(poll: Duration) -> Result<()> {
    let submitted = if poll_completions(poll) {
        Ok(0)
    } else {
        libublk::io::with_task_io_ring_mut(|ring| ring.submit_and_wait(1))
    };
    match submitted {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
        Err(e) => return Err(HostError::Ring(format!("submit_and_wait: {e}"))),
    }
    // One at a time, without collecting them: waking a task only schedules it.
    while let Some(cqe) = libublk::io::with_task_io_ring_mut(|ring| ring.completion().next()) {
        ublk_wake_task(cqe.user_data(), &cqe);
    }
    Ok(())
}

/// An eventfd: how another thread (the reconnect helper) wakes a task of the queue.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd, counter 0.
    pub fn new() -> Result<EventFd> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(HostError::io("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter, waking a pending [`EventFd::wait`].
    pub fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array.
        let written = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if written < 0 {
            log::warn!("eventfd write: {}", io::Error::last_os_error());
        }
    }

    /// Waits on the ring until the counter is non-zero (and resets it), or `timeout`
    /// passes; returns whether it was signalled.
    ///
    /// # Safety
    ///
    /// The future must be polled to completion, never dropped early: the kernel writes
    /// the counter into memory the future owns.
    pub unsafe fn wait(&self, timeout: Option<Duration>) -> impl Future<Output = bool> + '_ {
        let fd: RawFd = self.0.as_raw_fd();
        async move {
            let mut value = Box::new([0u8; 8]);
            let read = opcode::Read::new(types::Fd(fd), value.as_mut_ptr(), 8).build();
            // SAFETY: `value` lives in this future until the CQE; the caller polls the
            // future to completion.
            let result = unsafe {
                match timeout {
                    Some(timeout) => submit_with_timeout(read, timeout).await,
                    None => submit(read).await,
                }
            };
            result > 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_returns_with_a_completion_and_gives_up_without_one() {
        // A thread of its own: the ring is thread-local.
        std::thread::spawn(|| {
            init_thread_ring(8).unwrap();
            assert!(
                !poll_completions(Duration::ZERO),
                "a zero budget never polls"
            );
            let started = Instant::now();
            assert!(!poll_completions(Duration::from_millis(2)));
            assert!(started.elapsed() >= Duration::from_millis(2));
            let nop = opcode::Nop::new().build().user_data(7);
            libublk::io::with_task_io_ring_mut(|ring| {
                // SAFETY: a no-op points at no memory.
                unsafe { ring.submission().push(&nop) }.unwrap()
            });
            // Submitted by the poll itself, then seen on the completion queue.
            assert!(poll_completions(Duration::from_secs(10)));
            let reaped: Vec<u64> = libublk::io::with_task_io_ring_mut(|ring| {
                ring.completion().map(|cqe| cqe.user_data()).collect()
            });
            assert_eq!(reaped, [7]);
        })
        .join()
        .unwrap();
    }
}
