//! The NBD protocol, sans-IO: constants, the fixed-newstyle handshake messages, request
//! decoding and reply encoding. Everything here works on byte slices; nothing reads a
//! socket. Lengths are checked before anything is allocated.
//!
//! Refusals are [`HostError::Nbd`]: the connection ends.
//!
//! Reference: the NBD protocol document (`doc/proto.md` of the nbd project). Big-endian
//! throughout.

/// `"NBDMAGIC"`: the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`: newstyle negotiation; also the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the zero padding.
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;
/// Zero bytes after the `NBD_OPT_EXPORT_NAME` reply without `NO_ZEROES`.
pub const EXPORT_NAME_PADDING: usize = 124;

/// Option: select an export and go (old style; no error reply possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: end negotiation without transmission.
pub const OPT_ABORT: u32 = 2;
/// Option: list the exports.
pub const OPT_LIST: u32 = 3;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and go.
pub const OPT_GO: u32 = 7;

/// Reply: done.
pub const REP_ACK: u32 = 1;
/// Reply: one export of a list.
pub const REP_SERVER: u32 = 2;
/// Reply: one piece of information about an export.
pub const REP_INFO: u32 = 3;
/// Error replies have this bit.
const REP_ERROR: u32 = 1 << 31;
/// Error reply: option not supported.
pub const REP_ERR_UNSUP: u32 = REP_ERROR | 1;
/// Error reply: the option's data is malformed.
pub const REP_ERR_INVALID: u32 = REP_ERROR | 3;
/// Error reply: no such export.
pub const REP_ERR_UNKNOWN: u32 = REP_ERROR | 6;

/// Information type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags field is meaningful.
pub const TX_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: read-only export.
pub const TX_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: FLUSH supported.
pub const TX_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: FUA supported.
pub const TX_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: TRIM supported.
pub const TX_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: WRITE_ZEROES supported.
pub const TX_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: a FLUSH on any connection covers writes completed on every one.
pub const TX_CAN_MULTI_CONN: u16 = 1 << 8;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write (payload follows the request).
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim (discard).
pub const CMD_TRIM: u16 = 4;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// NBD errno: operation not permitted (a write to a read-only export).
pub const NBD_EPERM: u32 = 1;
/// NBD errno: input/output error.
pub const NBD_EIO: u32 = 5;
/// NBD errno: out of memory.
pub const NBD_ENOMEM: u32 = 12;
/// NBD errno: invalid argument (bad alignment, unknown command, out of range).
pub const NBD_EINVAL: u32 = 22;
/// NBD errno: a write past the end.
pub const NBD_ENOSPC: u32 = 28;
/// NBD errno: not supported.
pub const NBD_ENOTSUP: u32 = 95;

/// Largest payload of one request this server accepts (reads and writes).
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// Largest option data this server accepts.
pub const MAX_OPTION_LEN: u32 = 4096;
/// Length of the server's greeting.
pub const GREETING_LEN: usize = 18;
/// Length of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a transmission request.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply.
pub const SIMPLE_REPLY_LEN: usize = 16;

fn refuse(reason: String) -> HostError {
    HostError::Nbd(reason)
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn be64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(raw)
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// Checks the client's flags; returns whether it asked for no zero padding.
pub fn client_flags(bytes: [u8; 4]) -> Result<bool> {
    let flags = u32::from_be_bytes(bytes);
    if flags & CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(refuse("the client is not fixed newstyle".into()));
    }
    Ok(flags & CLIENT_NO_ZEROES != 0)
}

/// A client option header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option (`OPT_*`).
    pub option: u32,
    /// Bytes of option data that follow.
    pub len: u32,
}

impl OptionHeader {
    /// Decodes an option header; refuses a bad magic or data longer than
    /// [`MAX_OPTION_LEN`] before anything is allocated for it.
    pub fn decode(bytes: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader> {
        let magic = be64(bytes);
        if magic != IHAVEOPT {
            return Err(refuse(format!("bad option magic {magic:#x}")));
        }
        let header = OptionHeader {
            option: be32(&bytes[8..]),
            len: be32(&bytes[12..]),
        };
        if header.len > MAX_OPTION_LEN {
            return Err(refuse(format!(
                "option data of {} bytes (at most {MAX_OPTION_LEN})",
                header.len
            )));
        }
        Ok(header)
    }
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: the export name and the information types
/// asked for. `None` if the data is malformed (answered with `REP_ERR_INVALID`).
pub fn parse_info_request(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = usize::try_from(be32(data.get(..4)?)).ok()?;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = usize::from(be16(rest.get(..2)?));
    let requests = rest.get(2..)?;
    if requests.len() != count * 2 {
        return None;
    }
    let name = String::from_utf8(name.to_vec()).ok()?;
    Some((name, requests.chunks(2).map(be16).collect()))
}

/// An option reply: header and data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of a `REP_SERVER` reply naming one export.
pub fn server_entry(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// The data of an `INFO_EXPORT` information reply.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// The data of an `INFO_BLOCK_SIZE` information reply.
pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for value in [minimum, preferred, maximum] {
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, transmission flags, padding unless the client
/// asked for none.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + EXPORT_NAME_PADDING);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + EXPORT_NAME_PADDING, 0);
    }
    out
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// The command (`CMD_*`; others are answered with `EINVAL`).
    pub command: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (of the payload that follows, for a write).
    pub len: u32,
}

impl Request {
    /// Decodes a request header; only the magic is checked here.
    pub fn decode(bytes: &[u8; REQUEST_LEN]) -> Result<Request> {
        let magic = be32(bytes);
        if magic != REQUEST_MAGIC {
            return Err(refuse(format!("bad request magic {magic:#x}")));
        }
        Ok(Request {
            flags: be16(&bytes[4..]),
            command: be16(&bytes[6..]),
            cookie: be64(&bytes[8..]),
            offset: be64(&bytes[16..]),
            len: be32(&bytes[24..]),
        })
    }

    /// Encodes the request (the client's side; tests use it).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Bytes of payload that follow this request on the socket. A write longer than
    /// [`MAX_REQUEST_LEN`] cannot be skipped safely: the caller closes the connection.
    pub fn payload_len(&self) -> u32 {
        if self.command == CMD_WRITE {
            self.len
        } else {
            0
        }
    }
}

/// A simple reply header (read data follows it when `error` is 0).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Decodes a simple reply header (the client's side; tests use it): error and cookie.
pub fn decode_simple_reply(bytes: &[u8; SIMPLE_REPLY_LEN]) -> Result<(u32, u64)> {
    let magic = be32(bytes);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(refuse(format!("bad reply magic {magic:#x}")));
    }
    Ok((be32(&bytes[4..]), be64(&bytes[8..])))
}

/// The NBD errno for a Linux errno (NBD has a fixed small set; everything else is EIO).
pub fn nbd_errno(linux: i32) -> u32 {
    match linux {
        libc::EPERM | libc::EROFS | libc::EACCES => NBD_EPERM,
        libc::ENOMEM => NBD_ENOMEM,
        libc::EINVAL => NBD_EINVAL,
        libc::ENOSPC => NBD_ENOSPC,
        libc::EOPNOTSUPP => NBD_ENOTSUP,
        _ => NBD_EIO,
    }
}

use crate::error::{HostError, Result};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_fixed_newstyle() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(be16(&g[16..]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        assert!(client_flags([0, 0, 0, 3]).unwrap());
        assert!(!client_flags([0, 0, 0, 1]).unwrap());
        let error = client_flags([0, 0, 0, 0]).unwrap_err().to_string();
        assert!(error.contains("fixed newstyle"), "{error}");
    }

    #[test]
    fn option_headers_check_magic_and_length_first() {
        let mut raw = [0u8; OPTION_HEADER_LEN];
        raw[..8].copy_from_slice(b"IHAVEOPT");
        raw[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
        raw[12..].copy_from_slice(&12u32.to_be_bytes());
        let header = OptionHeader::decode(&raw).unwrap();
        assert_eq!((header.option, header.len), (OPT_GO, 12));
        raw[12..].copy_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        let error = OptionHeader::decode(&raw).unwrap_err().to_string();
        assert!(error.contains("4097 bytes"), "{error}");
        raw[0] = b'X';
        let error = OptionHeader::decode(&raw).unwrap_err().to_string();
        assert!(error.contains("bad option magic"), "{error}");
    }

    #[test]
    fn info_requests_parse_and_malformed_ones_do_not() {
        let mut data = server_entry("vol0");
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&data),
            Some(("vol0".to_owned(), vec![INFO_BLOCK_SIZE]))
        );
        assert_eq!(parse_info_request(&data[..data.len() - 1]), None);
        assert_eq!(parse_info_request(&[0, 0, 0, 9, b'a']), None);
        assert_eq!(parse_info_request(&[0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(
            parse_info_request(&[0, 0, 0, 0, 0, 0]),
            Some((String::new(), vec![]))
        );
    }

    #[test]
    fn replies_have_the_documented_layout() {
        let reply = simple_reply(0x1122_3344_5566_7788, NBD_EINVAL);
        assert_eq!(
            decode_simple_reply(&reply).unwrap(),
            (NBD_EINVAL, 0x1122_3344_5566_7788)
        );
        let option = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(option.len(), 20);
        assert_eq!(be64(&option), OPTION_REPLY_MAGIC);
        assert_eq!(export_name_reply(1 << 20, TX_HAS_FLAGS, false).len(), 134);
        assert_eq!(export_name_reply(1 << 20, TX_HAS_FLAGS, true).len(), 10);
        assert_eq!(info_export(4096, 1).len(), 12);
        assert_eq!(info_block_size(512, 4096, MAX_REQUEST_LEN).len(), 14);
        assert_eq!(nbd_errno(libc::EROFS), NBD_EPERM);
        assert_eq!(nbd_errno(libc::ECONNRESET), NBD_EIO);
    }

    proptest! {
        #[test]
        fn decoding_any_request_bytes_never_panics_and_round_trips(raw in any::<[u8; REQUEST_LEN]>()) {
            match Request::decode(&raw) {
                Ok(request) => prop_assert_eq!(request.encode(), raw),
                Err(error) => prop_assert!(matches!(error, HostError::Nbd(_))),
            }
        }

        #[test]
        fn requests_round_trip(flags: u16, command: u16, cookie: u64, offset: u64, len: u32) {
            let request = Request { flags, command, cookie, offset, len };
            prop_assert_eq!(Request::decode(&request.encode()).unwrap(), request);
        }

        #[test]
        fn option_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_info_request(&data);
        }

        #[test]
        fn option_headers_never_panic(raw in any::<[u8; OPTION_HEADER_LEN]>()) {
            if let Ok(header) = OptionHeader::decode(&raw) {
                prop_assert!(header.len <= MAX_OPTION_LEN);
            }
        }
    }
}
