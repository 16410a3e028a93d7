//! Request runs: the order in which a batch's heads and payloads go out.
//!
//! A write's payload in a fixed buffer (a zero-copy lane: the ublk request's own pages)
//! cannot join its head in one `sendmsg`, so each such write cost two ring operations:
//! its head's `sendmsg` and its payload's fixed-buffer write. Where the server takes
//! request runs ([`wire::Features::REQUEST_RUNS`]), small writes of a batch instead go
//! flagged [`FLAG_LATER`]: the heads of the whole batch leave in one `sendmsg`, followed
//! by one [`Op::Run`] head, then the payloads one after the other: N + 1 operations for
//! N writes. The server holds the flagged heads until the run and then serves each write
//! as its data arrives, so nothing else changes for it.
//!
//! [`layout`] decides the order, as indices into the batch (sans-IO, tested here); a
//! batch without runs goes in the plain order ([`plain_steps`]), computed as it is sent;
//! `transfer::send_batch` turns either into iovecs and fixed-buffer writes.

use std::rc::Rc;

use wire::frame::InlineHead;
use wire::{Op, Request, FLAG_LATER, MAX_RUN_REQUESTS};

use crate::client::slot::Slot;

/// Writes up to this size go in runs. Larger payloads fill TCP segments by themselves
/// and their head's `sendmsg` is a small part of their cost.
pub const RUN_WRITE_MAX: u32 = 64 * 1024;

/// One step of a batch on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The head the slot at this index of the batch encoded for itself.
    SlotHead(usize),
    /// A head of the layout's own ([`Layout::heads`]): a write flagged `FLAG_LATER`, or a
    /// run's `Op::Run` head.
    OwnHead(usize),
    /// The payload of the slot at this index of the batch.
    Payload(usize),
}

/// A batch's steps, and the heads they send that the slots do not hold.
#[derive(Debug, Default)]
pub struct Layout {
    /// What goes out, in order.
    pub steps: Vec<Step>,
    /// Heads encoded for this batch.
    pub heads: Vec<InlineHead>,
    /// Runs in the batch.
    pub runs: usize,
    /// Writes those runs carry.
    pub run_writes: usize,
}

/// The writes of the run being gathered.
#[derive(Default)]
struct OpenRun {
    writes: Vec<usize>,
    bytes: u32,
}

/// The largest payload of a run of `batch` (`run_bytes`, the server's `max_io`, where it
/// takes runs), if the batch has at least two writes that go in runs: a run of one saves
/// no operation and costs two more heads to encode and decode (4k zero-copy writes at QD1
/// in the 7.3 lab ran 0.93x of the build before with runs of one, in two boots). `None`:
/// the batch goes in the plain order ([`plain_steps`]).
pub fn runs_apply(batch: &[Rc<Slot>], run_bytes: Option<u32>) -> Option<u32> {
    let several = batch
        .iter()
        .filter(|slot| goes_later(slot))
        .nth(1)
        .is_some();
    run_bytes.filter(|_| several)
}

/// Every request of `batch` in order, each head followed by its payload: the layout of a
/// batch without runs, computed as it is sent.
pub fn plain_steps(batch: &[Rc<Slot>]) -> impl Iterator<Item = Step> + '_ {
    batch
        .iter()
        .enumerate()
        .flat_map(|(index, slot)| plain(index, slot))
}

/// The slot at `index`: its own head, then its payload if it has one.
fn plain(index: usize, slot: &Slot) -> impl Iterator<Item = Step> {
    let payload = (slot.request.payload_len() > 0).then_some(Step::Payload(index));
    std::iter::once(Step::SlotHead(index)).chain(payload)
}

/// Lays `batch` out: every request in order, small writes with fixed-buffer payloads in
/// runs where [`runs_apply`].
pub fn layout(batch: &[Rc<Slot>], run_bytes: Option<u32>) -> Layout {
    let run_bytes = runs_apply(batch, run_bytes);
    let mut out = Layout::default();
    let mut run = OpenRun::default();
    for (index, slot) in batch.iter().enumerate() {
        let request = &slot.request;
        let Some(max) = run_bytes.filter(|_| goes_later(slot)) else {
            out.steps.extend(plain(index, slot));
            continue;
        };
        if run.writes.len() == MAX_RUN_REQUESTS as usize || run.bytes + request.len > max {
            out.close(&mut run);
        }
        let later = Request {
            flags: request.flags | FLAG_LATER,
            ..*request
        };
        out.push_head(&later, 0);
        run.writes.push(index);
        run.bytes += request.len;
    }
    out.close(&mut run);
    out
}

/// Whether `slot`'s write goes in a run: a payload in a fixed buffer, small.
fn goes_later(slot: &Slot) -> bool {
    slot.request.op == Op::Write && slot.buf.is_fixed() && slot.request.len <= RUN_WRITE_MAX
}

impl Layout {
    fn push_head(&mut self, request: &Request, payload_len: u32) {
        let head = InlineHead::encode(request, payload_len)
            .expect("a Request is a few fixed-size fields and always fits an inline head");
        self.steps.push(Step::OwnHead(self.heads.len()));
        self.heads.push(head);
    }

    /// Ends `run` (if it has writes): its `Op::Run` head, then its writes' payloads.
    fn close(&mut self, run: &mut OpenRun) {
        if run.writes.is_empty() {
            return;
        }
        let head = Request {
            tag: run.writes.len() as u32,
            op: Op::Run,
            offset: 0,
            len: run.bytes,
            flags: 0,
        };
        self.push_head(&head, run.bytes);
        self.runs += 1;
        self.run_writes += run.writes.len();
        self.steps.extend(run.writes.drain(..).map(Step::Payload));
        run.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use wire::frame::{decode_request, FramePrefix, Limits};
    use wire::PREFIX_LEN;

    use super::*;
    use crate::client::slot::BufRef;

    fn slot(tag: u32, op: Op, len: u32, buf: BufRef) -> Rc<Slot> {
        let request = Request {
            tag,
            op,
            offset: u64::from(tag) * 4096,
            len,
            flags: 0,
        };
        // SAFETY: the slot is never sent; its buffer is never touched.
        Rc::new(unsafe { Slot::new(request, buf, None) })
    }

    fn fixed(tag: u32, len: u32) -> Rc<Slot> {
        let buf = BufRef::Fixed {
            index: tag as u16,
            addr: 0,
        };
        slot(tag, Op::Write, len, buf)
    }

    fn decode(head: &InlineHead) -> Request {
        let bytes = head.as_bytes();
        let prefix =
            FramePrefix::decode(bytes.first_chunk().unwrap(), Limits::data(1 << 22)).unwrap();
        decode_request(&bytes[PREFIX_LEN..prefix.head_len()], prefix).unwrap()
    }

    #[test]
    fn small_fixed_writes_go_flagged_later_and_their_payloads_follow_one_run_head() {
        let read = slot(1, Op::Read, 4096, BufRef::Fixed { index: 1, addr: 0 });
        let batch = [fixed(0, 4096), read, fixed(2, 8192)];
        let out = layout(&batch, Some(1 << 20));
        use Step::*;
        assert_eq!(
            out.steps,
            [
                OwnHead(0),
                SlotHead(1),
                OwnHead(1),
                OwnHead(2),
                Payload(0),
                Payload(2)
            ]
        );
        let later = decode(&out.heads[0]);
        assert!(later.data_later() && later.tag == 0 && later.len == 4096);
        assert_eq!(decode(&out.heads[1]).tag, 2);
        let run = decode(&out.heads[2]);
        assert_eq!((run.op, run.tag, run.len), (Op::Run, 2, 4096 + 8192));
    }

    #[test]
    fn without_runs_or_for_large_or_ordinary_payloads_each_head_precedes_its_payload() {
        let ordinary = slot(1, Op::Write, 4096, BufRef::Ptr(std::ptr::null_mut()));
        let large = fixed(2, RUN_WRITE_MAX + 4096);
        let flush = slot(3, Op::Flush, 0, BufRef::None);
        let batch = [fixed(0, 4096), ordinary, large, flush, fixed(4, 512)];
        use Step::*;
        assert_eq!(
            layout(&batch[..1], None).steps,
            [SlotHead(0), Payload(0)],
            "the server takes no runs"
        );
        assert_eq!(
            layout(&batch[..1], Some(1 << 20)).steps,
            [SlotHead(0), Payload(0)],
            "a run of one saves nothing"
        );
        let out = layout(&batch, Some(1 << 20));
        assert_eq!(
            out.steps,
            [
                OwnHead(0),
                SlotHead(1),
                Payload(1),
                SlotHead(2),
                Payload(2),
                SlotHead(3),
                OwnHead(1),
                OwnHead(2),
                Payload(0),
                Payload(4)
            ]
        );
    }

    #[test]
    fn a_run_ends_before_it_would_pass_the_servers_payload_limit_or_count() {
        let batch: Vec<_> = (0..4).map(|tag| fixed(tag, 4096)).collect();
        let out = layout(&batch, Some(8192));
        use Step::*;
        assert_eq!(
            out.steps,
            [
                OwnHead(0),
                OwnHead(1),
                OwnHead(2),
                Payload(0),
                Payload(1),
                OwnHead(3),
                OwnHead(4),
                OwnHead(5),
                Payload(2),
                Payload(3)
            ]
        );
        let many: Vec<_> = (0..MAX_RUN_REQUESTS + 1)
            .map(|tag| fixed(tag, 512))
            .collect();
        let out = layout(&many, Some(1 << 22));
        let runs: Vec<Request> = out
            .heads
            .iter()
            .map(decode)
            .filter(|r| r.op == Op::Run)
            .collect();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (out.runs, out.run_writes),
            (2, MAX_RUN_REQUESTS as usize + 1)
        );
        assert_eq!((runs[0].tag, runs[1].tag), (MAX_RUN_REQUESTS, 1));
    }
}
