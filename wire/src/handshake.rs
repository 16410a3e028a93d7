//! The mutual HMAC-SHA256 challenge-response, as pure functions and two small state
//! machines. The caller moves the frames; nothing here touches a socket.
//!
//! ```text
//! C→S Hello     { magic, versions, host, client_nonce, purpose }
//! S→C Challenge { version, server_nonce }            | Refused
//! C→S Proof     { HMAC(secret, CLIENT_LABEL || transcript) }
//! S→C Welcome   { HMAC(secret, SERVER_LABEL || transcript), session parameters } | Refused
//! ```
//!
//! The transcript is the postcard encoding of `Hello` followed by that of `Challenge`:
//! both nonces, the host name, the purpose (partition, queue, lane) and the chosen version.
//! A proof is therefore bound to one connection and one purpose: replaying it elsewhere
//! fails. MACs are compared in constant time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::error::WireError;
use crate::messages::{
    Challenge, Hello, HelloReply, Mac, Nonce, ProofReply, Purpose, Refused, RefusedCode, Welcome,
    MAC_LEN, MAGIC, MAX_NAME_LEN, PROTOCOL_VERSION,
};
use crate::Proof;

/// Domain-separation label of the client's proof.
pub const CLIENT_LABEL: &[u8] = b"multilane v1 client";
/// Domain-separation label of the server's proof.
pub const SERVER_LABEL: &[u8] = b"multilane v1 server";
/// Bytes in a host secret.
pub const SECRET_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A host's shared secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parses 64 hex digits (surrounding whitespace ignored), the form secret files hold.
    pub fn from_hex(text: &str) -> Result<Secret, WireError> {
        let text = text.trim().as_bytes();
        if text.len() != SECRET_LEN * 2 {
            return Err(WireError::BadSecret);
        }
        let mut out = [0u8; SECRET_LEN];
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            let high = hex_digit(pair[0]).ok_or(WireError::BadSecret)?;
            let low = hex_digit(pair[1]).ok_or(WireError::BadSecret)?;
            *byte = high << 4 | low;
        }
        Ok(Secret(out))
    }

    /// The secret as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `name` is a valid host or partition name: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The bytes both proofs are computed over.
pub fn transcript(hello: &Hello, challenge: &Challenge) -> Vec<u8> {
    let mut out = postcard::to_stdvec(hello).expect("a Hello always encodes");
    out = postcard::to_extend(challenge, out).expect("a Challenge always encodes");
    out
}

fn compute(secret: &Secret, label: &[u8], transcript: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(&secret.0).expect("HMAC takes any key length");
    mac.update(label);
    mac.update(transcript);
    mac
}

/// The client's proof over `transcript`.
pub fn client_mac(secret: &Secret, transcript: &[u8]) -> Mac {
    compute(secret, CLIENT_LABEL, transcript)
        .finalize()
        .into_bytes()
        .into()
}

/// The server's proof over `transcript`.
pub fn server_mac(secret: &Secret, transcript: &[u8]) -> Mac {
    compute(secret, SERVER_LABEL, transcript)
        .finalize()
        .into_bytes()
        .into()
}

fn verify(secret: &Secret, label: &[u8], transcript: &[u8], mac: &[u8; MAC_LEN]) -> bool {
    compute(secret, label, transcript).verify_slice(mac).is_ok()
}

/// The client side: build with [`ClientHandshake::new`], send the `Hello`, feed it the
/// server's two answers.
#[derive(Debug)]
pub struct ClientHandshake {
    hello: Hello,
    secret: Secret,
    transcript: Vec<u8>,
}

impl ClientHandshake {
    /// Starts a handshake; returns the state and the `Hello` to send.
    pub fn new(
        host: &str,
        secret: Secret,
        purpose: Purpose,
        client_nonce: Nonce,
    ) -> Result<(ClientHandshake, Hello), WireError> {
        if !valid_name(host) {
            return Err(WireError::invalid_name(host));
        }
        let hello = Hello {
            magic: MAGIC,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            host: host.to_owned(),
            client_nonce,
            purpose,
        };
        let state = ClientHandshake {
            hello: hello.clone(),
            secret,
            transcript: Vec::new(),
        };
        Ok((state, hello))
    }

    /// Handles the server's answer to `Hello`; returns the `Proof` to send.
    pub fn on_hello_reply(&mut self, reply: HelloReply) -> Result<Proof, WireError> {
        let challenge = match reply {
            HelloReply::Challenge(challenge) => challenge,
            HelloReply::Refused(refused) => return Err(refused_error(refused)),
        };
        if !(self.hello.min_version..=self.hello.max_version).contains(&challenge.version) {
            return Err(WireError::UnofferedVersion(challenge.version));
        }
        self.transcript = transcript(&self.hello, &challenge);
        Ok(Proof {
            mac: client_mac(&self.secret, &self.transcript),
        })
    }

    /// Handles the server's answer to `Proof`: checks the server's own proof.
    pub fn on_proof_reply(self, reply: ProofReply) -> Result<Welcome, WireError> {
        let welcome = match reply {
            ProofReply::Welcome(welcome) => welcome,
            ProofReply::Refused(refused) => return Err(refused_error(refused)),
        };
        if self.transcript.is_empty()
            || !verify(&self.secret, SERVER_LABEL, &self.transcript, &welcome.mac)
        {
            return Err(WireError::BadServerProof);
        }
        Ok(welcome)
    }
}

fn refused_error(refused: Refused) -> WireError {
    WireError::Refused {
        code: refused.code,
        message: refused.message,
    }
}

/// The server side: [`ServerHandshake::on_hello`] then [`ServerHandshake::on_proof`].
#[derive(Debug)]
pub struct ServerHandshake {
    hello: Hello,
    transcript: Vec<u8>,
}

impl ServerHandshake {
    /// Checks a `Hello` and answers it with a `Challenge`, or a `Refused` to send back.
    pub fn on_hello(
        hello: Hello,
        server_nonce: Nonce,
    ) -> Result<(ServerHandshake, Challenge), (WireError, Refused)> {
        if hello.magic != MAGIC {
            let error = WireError::BadMagic(hello.magic);
            return Err(refuse(RefusedCode::BadHello, error));
        }
        if !valid_name(&hello.host) {
            let error = WireError::invalid_name(&hello.host);
            return Err(refuse(RefusedCode::BadHello, error));
        }
        if !(hello.min_version..=hello.max_version).contains(&PROTOCOL_VERSION) {
            let error = WireError::NoCommonVersion {
                min: hello.min_version,
                max: hello.max_version,
                ours: PROTOCOL_VERSION,
            };
            return Err(refuse(RefusedCode::Version, error));
        }
        let challenge = Challenge {
            version: PROTOCOL_VERSION,
            server_nonce,
        };
        let transcript = transcript(&hello, &challenge);
        Ok((ServerHandshake { hello, transcript }, challenge))
    }

    /// The `Hello` this handshake started with (host name and purpose).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Checks the client's proof against the host's secret (`None`: unknown host, which
    /// fails exactly like a wrong proof, after the same amount of work). On success
    /// returns the MAC the server puts in its `Welcome`.
    pub fn on_proof(&self, secret: Option<&Secret>, proof: &Proof) -> Result<Mac, WireError> {
        let unknown_host = Secret([0u8; SECRET_LEN]);
        let key = secret.unwrap_or(&unknown_host);
        let matches = verify(key, CLIENT_LABEL, &self.transcript, &proof.mac);
        if !matches || secret.is_none() {
            return Err(WireError::BadClientProof);
        }
        Ok(server_mac(key, &self.transcript))
    }
}

fn refuse(code: RefusedCode, error: WireError) -> (WireError, Refused) {
    let refused = Refused {
        code,
        message: error.to_string(),
    };
    (error, refused)
}

/// The `Refused` a server sends for a failed proof: the same words for unknown host and
/// wrong secret.
pub fn authentication_refused() -> Refused {
    Refused {
        code: RefusedCode::Authentication,
        message: WireError::BadClientProof.to_string(),
    }
}
