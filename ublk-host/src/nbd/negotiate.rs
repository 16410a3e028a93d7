//! The fixed-newstyle handshake of one NBD connection, on a blocking stream, before the
//! connection's queue engine starts.

use std::io::{Read, Write};

use wire::{Access, Features, PartitionInfo};

use crate::error::{HostError, Result};
use crate::nbd::proto::{self, OptionHeader};

/// What one export looks like to NBD clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The export name (the partition's); the empty default name selects it too.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Smallest request alignment (the partition's block size).
    pub block: u32,
}

impl Export {
    /// The export of `partition`: FLUSH, FUA and multi-connection always (a flush on any
    /// lane covers every lane's writes, see DESIGN.md); TRIM and WRITE_ZEROES when the
    /// server performs them; read-only when the host's access is.
    pub fn of(partition: &PartitionInfo) -> Export {
        let mut flags = proto::TX_HAS_FLAGS
            | proto::TX_SEND_FLUSH
            | proto::TX_SEND_FUA
            | proto::TX_CAN_MULTI_CONN;
        if partition.features.contains(Features::DISCARD) {
            flags |= proto::TX_SEND_TRIM;
        }
        if partition.features.contains(Features::WRITE_ZEROES) {
            flags |= proto::TX_SEND_WRITE_ZEROES;
        }
        if partition.access == Access::ReadOnly {
            flags |= proto::TX_READ_ONLY;
        }
        Export {
            name: partition.name.clone(),
            size: partition.size,
            flags,
            block: partition.block_size.max(wire::SECTOR_SIZE),
        }
    }

    fn selected_by(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }
}

/// How a negotiation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// The client selected the export: transmission follows.
    Transmission,
    /// The client ended the negotiation (`NBD_OPT_ABORT`).
    Aborted,
}

fn io(context: &'static str) -> impl Fn(std::io::Error) -> HostError {
    move |e| HostError::io(context, e)
}

/// Runs the server side of the handshake on `stream` for `export`. An unknown export
/// named with `NBD_OPT_EXPORT_NAME` (which has no error reply) or a protocol violation
/// ends with an error: the caller closes the connection.
pub fn negotiate<S: Read + Write>(stream: &mut S, export: &Export) -> Result<Negotiated> {
    stream
        .write_all(&proto::greeting())
        .map_err(io("sending the NBD greeting"))?;
    let mut flags = [0u8; 4];
    stream
        .read_exact(&mut flags)
        .map_err(io("reading the NBD client flags"))?;
    let no_zeroes = proto::client_flags(flags)?;
    loop {
        let mut raw = [0u8; proto::OPTION_HEADER_LEN];
        stream
            .read_exact(&mut raw)
            .map_err(io("reading an NBD option"))?;
        let header = OptionHeader::decode(&raw)?;
        // Bounded by MAX_OPTION_LEN in decode.
        let mut data = vec![0u8; header.len as usize];
        stream
            .read_exact(&mut data)
            .map_err(io("reading NBD option data"))?;
        let (reply, outcome) = answer(header.option, &data, export, no_zeroes)?;
        stream
            .write_all(&reply)
            .map_err(io("sending an NBD option reply"))?;
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
    }
}

/// The reply to one option, and whether negotiation ends with it.
fn answer(
    option: u32,
    data: &[u8],
    export: &Export,
    no_zeroes: bool,
) -> Result<(Vec<u8>, Option<Negotiated>)> {
    let reply = |kind, body: &[u8]| proto::option_reply(option, kind, body);
    Ok(match option {
        proto::OPT_EXPORT_NAME => {
            let name = String::from_utf8_lossy(data);
            if !export.selected_by(&name) {
                return Err(HostError::Nbd(format!("no export named {name:?}")));
            }
            let body = proto::export_name_reply(export.size, export.flags, no_zeroes);
            (body, Some(Negotiated::Transmission))
        }
        proto::OPT_ABORT => (reply(proto::REP_ACK, &[]), Some(Negotiated::Aborted)),
        proto::OPT_LIST if data.is_empty() => {
            let mut out = reply(proto::REP_SERVER, &proto::server_entry(&export.name));
            out.extend(reply(proto::REP_ACK, &[]));
            (out, None)
        }
        proto::OPT_LIST => (reply(proto::REP_ERR_INVALID, &[]), None),
        proto::OPT_INFO | proto::OPT_GO => match proto::parse_info_request(data) {
            None => (reply(proto::REP_ERR_INVALID, &[]), None),
            Some((name, _)) if !export.selected_by(&name) => {
                (reply(proto::REP_ERR_UNKNOWN, &[]), None)
            }
            Some(_) => {
                let mut out = reply(
                    proto::REP_INFO,
                    &proto::info_export(export.size, export.flags),
                );
                let sizes = proto::info_block_size(
                    export.block,
                    export.block.max(PREFERRED_BLOCK),
                    proto::MAX_REQUEST_LEN,
                );
                out.extend(reply(proto::REP_INFO, &sizes));
                out.extend(reply(proto::REP_ACK, &[]));
                let go = (option == proto::OPT_GO).then_some(Negotiated::Transmission);
                (out, go)
            }
        },
        _ => (reply(proto::REP_ERR_UNSUP, &[]), None),
    })
}

/// The block size clients should prefer (the page size: no read-modify-write below it).
const PREFERRED_BLOCK: u32 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> Export {
        Export {
            name: "vol0".into(),
            size: 1 << 20,
            flags: proto::TX_HAS_FLAGS | proto::TX_SEND_FLUSH,
            block: 512,
        }
    }

    /// A client's bytes in, the server's bytes out.
    struct Script {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn option(option: u32, data: &[u8]) -> Vec<u8> {
        let mut out = proto::IHAVEOPT.to_be_bytes().to_vec();
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn run(client: Vec<u8>) -> (Result<Negotiated>, Vec<u8>) {
        let mut script = Script {
            input: std::io::Cursor::new(client),
            output: Vec::new(),
        };
        let outcome = negotiate(&mut script, &export());
        (outcome, script.output)
    }

    /// The option replies after the greeting: (option, reply type, data length).
    fn replies(mut out: &[u8]) -> Vec<(u32, u32, usize)> {
        out = &out[proto::GREETING_LEN..];
        let mut found = Vec::new();
        while out.len() >= 20 {
            let field = |at: usize| u32::from_be_bytes(out[at..at + 4].try_into().unwrap());
            let len = field(16) as usize;
            found.push((field(8), field(12), len));
            out = &out[20 + len..];
        }
        found
    }

    fn go(name: &str) -> Vec<u8> {
        let mut data = proto::server_entry(name);
        data.extend_from_slice(&0u16.to_be_bytes());
        data
    }

    #[test]
    fn go_answers_info_then_ack_and_starts_transmission() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(option(proto::OPT_LIST, &[]));
        client.extend(option(proto::OPT_GO, &go("nope")));
        client.extend(option(99, &[]));
        client.extend(option(proto::OPT_INFO, &go("vol0")));
        client.extend(option(proto::OPT_GO, &go("")));
        let (outcome, out) = run(client);
        assert_eq!(outcome.unwrap(), Negotiated::Transmission);
        assert_eq!(
            replies(&out),
            vec![
                (proto::OPT_LIST, proto::REP_SERVER, 8),
                (proto::OPT_LIST, proto::REP_ACK, 0),
                (proto::OPT_GO, proto::REP_ERR_UNKNOWN, 0),
                (99, proto::REP_ERR_UNSUP, 0),
                (proto::OPT_INFO, proto::REP_INFO, 12),
                (proto::OPT_INFO, proto::REP_INFO, 14),
                (proto::OPT_INFO, proto::REP_ACK, 0),
                (proto::OPT_GO, proto::REP_INFO, 12),
                (proto::OPT_GO, proto::REP_INFO, 14),
                (proto::OPT_GO, proto::REP_ACK, 0),
            ]
        );
    }

    #[test]
    fn export_name_answers_size_and_flags() {
        let mut client = 1u32.to_be_bytes().to_vec();
        client.extend(option(proto::OPT_EXPORT_NAME, b"vol0"));
        let (outcome, out) = run(client);
        assert_eq!(outcome.unwrap(), Negotiated::Transmission);
        assert_eq!(
            out.len(),
            proto::GREETING_LEN + 10 + proto::EXPORT_NAME_PADDING
        );
        assert_eq!(&out[18..26], &(1u64 << 20).to_be_bytes());
    }

    #[test]
    fn abort_and_bad_input_end_negotiation() {
        let mut client = 3u32.to_be_bytes().to_vec();
        client.extend(option(proto::OPT_ABORT, &[]));
        assert_eq!(run(client).0.unwrap(), Negotiated::Aborted);
        let not_fixed = 0u32.to_be_bytes().to_vec();
        assert!(run(not_fixed).0.is_err());
        let mut bad_magic = 3u32.to_be_bytes().to_vec();
        bad_magic.extend(b"XHAVEOPT\0\0\0\x07\0\0\0\0");
        assert!(run(bad_magic).0.is_err());
        let mut unknown = 3u32.to_be_bytes().to_vec();
        unknown.extend(option(proto::OPT_EXPORT_NAME, b"other"));
        assert!(run(unknown).0.is_err());
        let mut huge = 3u32.to_be_bytes().to_vec();
        huge.extend(proto::IHAVEOPT.to_be_bytes());
        huge.extend(proto::OPT_GO.to_be_bytes());
        huge.extend(u32::MAX.to_be_bytes());
        assert!(run(huge).0.is_err(), "refused before allocating 4 GiB");
        let truncated = 3u32.to_be_bytes().to_vec();
        assert!(run(truncated).0.is_err(), "end of stream");
    }
}
