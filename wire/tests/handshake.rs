//! The mutual handshake: success, wrong secret, unknown host, replay, impostor server.

use wire::handshake::{authentication_refused, client_mac};
use wire::*;

fn secret(byte: u8) -> Secret {
    Secret([byte; 32])
}

const DATA: Purpose = Purpose::Data {
    partition: 3,
    queue: 1,
    lane: 0,
    epoch: 1,
};

/// Runs a whole handshake; `server_secret` is what the server holds for the host.
fn run(
    client_secret: Secret,
    server_secret: Option<Secret>,
    impostor_secret: Option<Secret>,
) -> Result<Welcome, WireError> {
    let (mut client, hello) = ClientHandshake::new("host-a", client_secret, DATA, [1; 32])?;
    let (server, challenge) = ServerHandshake::on_hello(hello, [2; 32]).map_err(|(e, _)| e)?;
    let proof = client.on_hello_reply(HelloReply::Challenge(challenge))?;
    let server_mac = match server.on_proof(server_secret.as_ref(), &proof) {
        Ok(mac) => mac,
        Err(_) => {
            return client.on_proof_reply(ProofReply::Refused(authentication_refused()));
        }
    };
    let mac = match impostor_secret {
        Some(other) => handshake::server_mac(&other, &[0; 8]),
        None => server_mac,
    };
    client.on_proof_reply(ProofReply::Welcome(Welcome {
        mac,
        max_io: DEFAULT_MAX_IO,
        max_in_flight: 128,
        array_id: [0; 16],
        partition: None,
        boot_epoch: 1,
        addresses: vec!["127.0.0.1:7700".to_owned()],
    }))
}

#[test]
fn matching_secrets_succeed_both_ways() {
    let welcome = run(secret(9), Some(secret(9)), None).unwrap();
    assert_eq!(welcome.max_io, DEFAULT_MAX_IO);
}

#[test]
fn wrong_secret_and_unknown_host_get_the_same_refusal() {
    let wrong = run(secret(9), Some(secret(8)), None).unwrap_err();
    let unknown = run(secret(9), None, None).unwrap_err();
    assert_eq!(wrong, unknown);
    assert!(wrong.to_string().contains("unknown host or wrong secret"));
    assert_eq!(wrong.errno(), libc_errno::EACCES);
}

#[test]
fn a_server_that_cannot_prove_itself_is_refused() {
    let error = run(secret(9), Some(secret(9)), Some(secret(7))).unwrap_err();
    assert_eq!(error, WireError::BadServerProof);
}

#[test]
fn a_proof_cannot_be_replayed_on_another_connection_or_purpose() {
    let key = secret(5);
    let (mut client, hello) = ClientHandshake::new("host-a", key.clone(), DATA, [1; 32]).unwrap();
    let (_, challenge) = ServerHandshake::on_hello(hello.clone(), [2; 32]).unwrap();
    let captured = client
        .on_hello_reply(HelloReply::Challenge(challenge))
        .unwrap();

    // Same hello replayed, but the server picks a fresh nonce.
    let (fresh, _) = ServerHandshake::on_hello(hello.clone(), [3; 32]).unwrap();
    assert_eq!(
        fresh.on_proof(Some(&key), &captured),
        Err(WireError::BadClientProof)
    );

    // Same nonces, another partition.
    let other_purpose = Hello {
        purpose: Purpose::Data {
            partition: 4,
            queue: 1,
            lane: 0,
            epoch: 1,
        },
        ..hello
    };
    let (other, _) = ServerHandshake::on_hello(other_purpose, [2; 32]).unwrap();
    assert_eq!(
        other.on_proof(Some(&key), &captured),
        Err(WireError::BadClientProof)
    );
}

#[test]
fn bad_hellos_are_refused_with_reasons() {
    let (_, mut hello) = ClientHandshake::new("h", secret(1), Purpose::Control, [0; 32]).unwrap();
    hello.magic = 0xdead_beef;
    let (error, refused) = ServerHandshake::on_hello(hello.clone(), [0; 32]).unwrap_err();
    assert_eq!(error, WireError::BadMagic(0xdead_beef));
    assert_eq!(refused.code, RefusedCode::BadHello);

    hello.magic = MAGIC;
    hello.min_version = PROTOCOL_VERSION + 1;
    hello.max_version = PROTOCOL_VERSION + 2;
    let (error, refused) = ServerHandshake::on_hello(hello, [0; 32]).unwrap_err();
    assert!(matches!(error, WireError::NoCommonVersion { .. }));
    assert_eq!(refused.code, RefusedCode::Version);
}

#[test]
fn a_huge_bad_name_gets_a_small_refusal() {
    let (_, mut hello) = ClientHandshake::new("h", secret(1), Purpose::Control, [0; 32]).unwrap();
    hello.host = "\u{1}".repeat(65_000);
    let (error, refused) = ServerHandshake::on_hello(hello, [0; 32]).unwrap_err();
    assert!(matches!(error, WireError::InvalidName(_)));
    assert_eq!(refused.code, RefusedCode::BadHello);
    // Shown escaped (`\u{1}`), the whole name would be 390 KB: more than a frame holds.
    assert!(
        refused.message.len() < 1024,
        "{} bytes",
        refused.message.len()
    );
    assert!(error.to_string().len() < 1024);
}

#[test]
fn names_are_checked() {
    assert!(ClientHandshake::new("", secret(1), Purpose::Control, [0; 32]).is_err());
    assert!(ClientHandshake::new("a/b", secret(1), Purpose::Control, [0; 32]).is_err());
    assert!(ClientHandshake::new(&"x".repeat(65), secret(1), Purpose::Control, [0; 32]).is_err());
}

#[test]
fn secrets_parse_from_hex_and_hide_in_debug() {
    let key = secret(0xab);
    let text = format!("  {}\n", key.to_hex());
    assert_eq!(Secret::from_hex(&text).unwrap(), key);
    assert_eq!(Secret::from_hex("abc"), Err(WireError::BadSecret));
    assert_eq!(
        Secret::from_hex(&"zz".repeat(32)),
        Err(WireError::BadSecret)
    );
    assert_eq!(format!("{key:?}"), "Secret(..)");
    // The MAC depends on the label: a client proof is never a valid server proof.
    let transcript = b"t";
    assert_ne!(
        client_mac(&key, transcript),
        handshake::server_mac(&key, transcript)
    );
}
