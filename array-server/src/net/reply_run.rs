//! Read replies gathered into a *run* (wire's `Status::Later` and `Status::Run`): the heads
//! of several read replies, then one frame with all their data.
//!
//! A host that receives each read's data into a buffer of its own that it cannot read
//! ahead into (a zero-copy ublk queue's fixed buffers) would otherwise pay a receive for
//! every reply's head and look at the stream ahead (copying it) to chain those receives.
//! With the heads of one writer batch together it takes them all in one receive and the
//! data in one chain of receives. Only reads the host flagged `FLAG_RUN` go into runs.

use wire::frame;
use wire::{Reply, Status};

/// The run a writer batch is gathering: its heads (encoded back to back) and its data
/// buffers, in order.
#[derive(Debug)]
pub(super) struct Run<B> {
    heads: Vec<u8>,
    data: Vec<B>,
    /// The first reply's tag: a run of one reply is sent as a plain reply.
    first_tag: Option<u32>,
    count: u32,
    bytes: u32,
    /// Most data bytes one run carries: the frame payload limit the host decodes with.
    max_bytes: u32,
}

impl<B> Run<B> {
    /// An empty run that carries at most `max_bytes` (the server's `max_io`).
    pub fn new(max_bytes: u32) -> Run<B> {
        Run {
            heads: Vec::new(),
            data: Vec::new(),
            first_tag: None,
            count: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Whether `len` more bytes fit this run.
    pub fn has_room(&self, len: u32) -> bool {
        self.bytes
            .checked_add(len)
            .is_some_and(|bytes| bytes <= self.max_bytes)
    }

    /// Buffers the run adds to a batch when taken: its heads, then its data.
    pub fn buffers(&self) -> usize {
        match self.first_tag {
            Some(_) => 1 + self.data.len(),
            None => 0,
        }
    }

    /// Adds read reply `tag`, whose `len` bytes of data are `data` (call
    /// [`Run::has_room`] first: a reply that does not fit is sent as a plain one).
    pub fn push(&mut self, tag: u32, len: u32, data: impl IntoIterator<Item = B>) {
        self.data.extend(data);
        self.first_tag.get_or_insert(tag);
        let later = Reply {
            tag,
            status: Status::Later,
            len,
        };
        encode(&later, 0, &mut self.heads);
        self.count += 1;
        self.bytes += len;
    }

    /// Appends the run to `batch` and empties it: the `Later` heads and the `Run` head as
    /// one buffer (`head` makes it), then the data. A run of one reply goes as a plain
    /// reply.
    pub fn take_into(&mut self, batch: &mut Vec<B>, head: impl FnOnce(Vec<u8>) -> B) {
        let Some(first_tag) = self.first_tag.take() else {
            return;
        };
        let mut heads = std::mem::take(&mut self.heads);
        if self.count == 1 {
            heads.clear();
            let reply = Reply {
                tag: first_tag,
                status: Status::Ok,
                len: self.bytes,
            };
            encode(&reply, self.bytes, &mut heads);
        } else {
            let run = Reply {
                tag: self.count,
                status: Status::Run,
                len: self.bytes,
            };
            encode(&run, self.bytes, &mut heads);
        }
        batch.push(head(heads));
        batch.append(&mut self.data);
        self.count = 0;
        self.bytes = 0;
    }
}

/// Appends `reply`'s frame head; a reply head always encodes (a few varints).
fn encode(reply: &Reply, payload_len: u32, out: &mut Vec<u8>) {
    frame::encode_head(reply, payload_len, out).expect("a reply head encodes");
}

#[cfg(test)]
mod tests {
    use wire::frame::{FrameDecoder, Limits, Progress};

    use super::*;

    /// Decodes the bytes of `batch` as reply frames: each reply and its frame's payload.
    fn frames(batch: &[Vec<u8>]) -> Vec<(Reply, Vec<u8>)> {
        let stream = batch.concat();
        let mut decoder = FrameDecoder::new(Limits::data(1 << 20));
        let mut at = 0;
        let mut out = Vec::new();
        while at < stream.len() {
            let Ok(Progress::Ready(head)) = decoder.next_head::<Reply>(&stream[at..]) else {
                panic!("a whole frame at {at}");
            };
            at += head.prefix.head_len();
            let payload = head.prefix.payload_len as usize;
            assert_eq!(decoder.consume_payload(payload), payload);
            out.push((head.message, stream[at..at + payload].to_vec()));
            at += payload;
        }
        out
    }

    fn reply(tag: u32, status: Status, len: u32) -> Reply {
        Reply { tag, status, len }
    }

    #[test]
    fn a_run_sends_every_head_then_every_payload() {
        let mut run = Run::new(1 << 20);
        run.push(7, 3, [b"abc".to_vec()]);
        run.push(9, 4, [b"de".to_vec(), b"fg".to_vec()]);
        let mut batch = vec![b"".to_vec()];
        run.take_into(&mut batch, |heads| heads);
        let got = frames(&batch);
        let replies: Vec<Reply> = got.iter().map(|(reply, _)| *reply).collect();
        assert_eq!(
            replies,
            [
                reply(7, Status::Later, 3),
                reply(9, Status::Later, 4),
                reply(2, Status::Run, 7)
            ]
        );
        assert_eq!(
            got[2].1, b"abcdefg",
            "the run carries the data in head order"
        );
        let mut again = vec![];
        run.take_into(&mut again, |heads| heads);
        assert!(again.is_empty(), "taking a run empties it");
    }

    #[test]
    fn a_run_of_one_is_a_plain_reply() {
        let mut run = Run::new(1 << 20);
        run.push(5, 2, [b"xy".to_vec()]);
        let mut batch = vec![];
        run.take_into(&mut batch, |heads| heads);
        assert_eq!(frames(&batch), [(reply(5, Status::Ok, 2), b"xy".to_vec())]);
    }

    #[test]
    fn a_run_holds_no_more_than_its_limit() {
        let mut run: Run<Vec<u8>> = Run::new(8);
        assert!(run.has_room(8));
        run.push(1, 6, [b"abcdef".to_vec()]);
        assert!(run.has_room(2));
        assert!(!run.has_room(3));
        assert!(!run.has_room(u32::MAX), "no overflow");
        assert_eq!(run.buffers(), 2, "its heads and its data");
    }
}
