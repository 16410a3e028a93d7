//! A run's data (wire's `Status::Run`): the payloads of the `Later` replies before it, in
//! their order, received straight into their slots' buffers by linked chains of ring
//! operations: one chain for the whole run unless a receive comes back short (the data
//! was still arriving), after which the next chain resumes where it stopped.
//!
//! With runs a zero-copy lane takes the heads of a batch of read replies in one receive and
//! their data in one chain, and no longer looks ahead (`ahead.rs`), which copied every
//! small read's data once more just to find the heads between them.

use std::os::fd::RawFd;
use std::rc::Rc;

use super::ahead::payload_sqe;
use super::RecvBuf;
use crate::client::slot::{BufRef, Slot};
use crate::client::transfer::os_error;
use crate::client::uring::{linked_room, push_linked};
use crate::error::{HostError, Result};

/// Bytes of a run reply's data: its request's length (`check_reply` matched its `Later`
/// head to it).
fn data_len(slot: &Slot) -> usize {
    slot.request.len as usize
}

/// Where a run's receive stands: the slot being filled and the bytes of it already in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RunAt {
    slot: usize,
    done: usize,
}

impl RecvBuf {
    /// Receives the payload of the `Run` frame whose head was just decoded: `slots` (the
    /// `Later` replies before it, in order) get their data in their own buffers. Calls `done` with each slot's
    /// index, in order, as soon as all of its data is in (so the lane finishes it while
    /// the rest of the run is still arriving; no operation uses its buffer any more).
    pub async fn receive_run(
        &mut self,
        fd: RawFd,
        slots: &[Rc<Slot>],
        mut done: impl FnMut(usize),
    ) -> Result<()> {
        let total: usize = slots.iter().map(|slot| data_len(slot)).sum();
        let owed = self.decoder.payload_remaining();
        if owed != total {
            return Err(HostError::Protocol(format!(
                "a run owes {owed} payload bytes, its {} replies {total}",
                slots.len()
            )));
        }
        let at = self.copy_buffered(slots)?;
        (0..at.slot).for_each(&mut done);
        let rest = &slots[at.slot..];
        rest.iter().for_each(|slot| slot.set_busy(true));
        let outcome = self.receive_run_chains(fd, slots, at, &mut done).await;
        rest.iter().for_each(|slot| slot.set_busy(false));
        outcome
    }

    /// Moves run data that arrived with the heads into the slots' buffers (none on a lane
    /// that receives exactly); returns where the socket's data starts.
    fn copy_buffered(&mut self, slots: &[Rc<Slot>]) -> Result<RunAt> {
        let mut at = RunAt::default();
        let mut have = self.decoder.consume_payload(self.bytes().len());
        while have > 0 {
            let slot = &slots[at.slot]; // the decoder owes their total
            let len = data_len(slot);
            let take = have.min(len - at.done);
            match slot.buf {
                // SAFETY: the slot's buffer holds `len` bytes (its request's length,
                // checked when its `Later` head was decoded) and stays valid while the slot
                // is unfinished; `at.done + take <= len`.
                BufRef::Ptr(ptr) => unsafe {
                    std::ptr::copy_nonoverlapping(self.bytes().as_ptr(), ptr.add(at.done), take)
                },
                _ => {
                    return Err(HostError::Protocol(format!(
                        "run data for tag {} was taken with the heads, but its buffer is not \
                         one this process can write",
                        slot.request.tag
                    )))
                }
            }
            self.consume(take);
            have -= take;
            at = advance(at, take, len);
        }
        Ok(at)
    }

    /// Receives the rest of a run from `at` on, a linked chain at a time.
    async fn receive_run_chains(
        &mut self,
        fd: RawFd,
        slots: &[Rc<Slot>],
        mut at: RunAt,
        done: &mut impl FnMut(usize),
    ) -> Result<()> {
        let room = linked_room().max(1);
        while at.slot < slots.len() {
            let mut sqes = Vec::with_capacity(room.min(slots.len() - at.slot));
            let mut wants = Vec::with_capacity(sqes.capacity());
            for (i, slot) in slots.iter().enumerate().skip(at.slot).take(room) {
                let (done, len) = (if i == at.slot { at.done } else { 0 }, data_len(slot));
                // SAFETY: `done < len`, inside the slot's buffer.
                let buf = unsafe { slot.buf.add(done) };
                sqes.push(payload_sqe(fd, buf, len - done)?);
                wants.push((len - done, len));
            }
            // SAFETY: every receive goes to a slot buffer that holds it, valid while the
            // slot is unfinished and marked busy (by the caller) until its operation
            // completes; every operation is awaited below.
            let ops = unsafe { push_linked(sqes) };
            // After a short receive the kernel cancels the rest; after an error nothing
            // more is taken. Either way every operation is still awaited.
            let mut ended: Option<Result<()>> = None;
            for ((want, len), op) in wants.into_iter().zip(ops) {
                let result = op.await;
                if ended.is_some() {
                    continue;
                }
                let got = match result {
                    0 => Err(HostError::Closed),
                    n if n < 0 => Err(os_error("receiving a run of replies", n)),
                    n => Ok(n as usize),
                };
                let got = got.and_then(|got| {
                    self.decoder.payload_received(got)?;
                    Ok(got)
                });
                let got = match got {
                    Ok(got) => got,
                    Err(error) => {
                        ended = Some(Err(error));
                        continue;
                    }
                };
                let filling = at.slot;
                at = advance(at, got, len);
                if at.slot > filling {
                    slots[filling].set_busy(false);
                    done(filling);
                }
                if got < want {
                    ended = Some(Ok(()));
                }
            }
            ended.unwrap_or(Ok(()))?;
        }
        Ok(())
    }
}

/// `at` after `bytes` more of its slot (of `len` bytes) arrived.
fn advance(at: RunAt, bytes: usize, len: usize) -> RunAt {
    if at.done + bytes >= len {
        RunAt {
            slot: at.slot + 1,
            done: 0,
        }
    } else {
        RunAt {
            slot: at.slot,
            done: at.done + bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_moves_to_the_next_slot_when_one_is_full() {
        let start = RunAt::default();
        assert_eq!(advance(start, 100, 4096), RunAt { slot: 0, done: 100 });
        let half = RunAt { slot: 0, done: 100 };
        assert_eq!(advance(half, 3996, 4096), RunAt { slot: 1, done: 0 });
    }
}
