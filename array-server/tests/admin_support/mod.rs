//! Shared by the admin tests: a temporary array with the admin service on loopback.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use array_server::admin::client::{AdminClient, Answer};
use array_server::admin::{
    AdminConfig, AdminLimits, AdminServer, AdminToken, LiveSessions, NoSessions,
};
use array_server::{Array, FormatOptions};
use serde_json::{json, Value};

/// Bytes of each member file.
pub const DISK_SIZE: u64 = 64 << 20;
/// Stripe chunk.
pub const CHUNK: u64 = 64 << 10;

/// A formatted two-disk array, its admin service and a client holding the token.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub array: Arc<Array>,
    pub server: AdminServer,
    pub token: AdminToken,
    pub client: AdminClient,
}

impl Fixture {
    /// An empty array with no network sessions.
    pub fn new() -> Fixture {
        Fixture::with_sessions(Arc::new(NoSessions))
    }

    /// An empty array whose sessions come from `sessions`.
    pub fn with_sessions(sessions: Arc<dyn LiveSessions>) -> Fixture {
        Fixture::with(sessions, AdminLimits::default())
    }

    /// An empty array with no network sessions, served within `limits`.
    pub fn with_limits(limits: AdminLimits) -> Fixture {
        Fixture::with(Arc::new(NoSessions), limits)
    }

    fn with(sessions: Arc<dyn LiveSessions>, limits: AdminLimits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let disks: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("d{i}"))).collect();
        let options = FormatOptions {
            chunk: CHUNK,
            force: false,
            create_size: Some(DISK_SIZE),
        };
        let array = Array::format(&disks, &options).unwrap();
        let token = AdminToken::load_or_create(&dir.path().join("admin-token")).unwrap();
        let config = AdminConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            token: token.clone(),
            limits,
        };
        let server = AdminServer::start(config, array.clone(), sessions).unwrap();
        let base = format!("http://{}", server.local_addr());
        let client = AdminClient::new(&base, Some(token.expose().to_owned())).unwrap();
        Fixture {
            dir,
            array,
            server,
            token,
            client,
        }
    }

    /// A client without a token.
    pub fn anonymous(&self) -> AdminClient {
        AdminClient::new(&self.server.local_addr().to_string(), None).unwrap()
    }

    pub fn get(&self, path: &str) -> Answer {
        self.client.call("GET", path, None).unwrap()
    }

    pub fn send(&self, method: &str, path: &str, body: Value) -> Answer {
        self.client.call(method, path, Some(&body)).unwrap()
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.client.call("DELETE", path, None).unwrap()
    }

    /// Everything an operator defined, with the generation: equal before and after a
    /// refused request means nothing was written.
    pub fn metadata(&self) -> Value {
        json!({
            "generation": self.array.generation(),
            "partitions": format!("{:?}", self.array.partitions()),
            "hosts": format!("{:?}", self.array.hosts()),
            "assignments": format!("{:?}", self.array.assignments()),
        })
    }

    /// Sends a request that must fail with `status` and a message containing `words`,
    /// and checks the metadata did not change.
    pub fn refused(&self, method: &str, path: &str, body: Option<Value>, status: u16, words: &str) {
        let before = self.metadata();
        let answer = self.client.call(method, path, body.as_ref()).unwrap();
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.text());
        let message = answer.error_message();
        assert!(
            message.contains(words),
            "{method} {path}: message {message:?} lacks {words:?}"
        );
        assert_eq!(
            self.metadata(),
            before,
            "{method} {path} changed the metadata"
        );
    }

    pub fn create_host(&self, name: &str) -> Value {
        let answer = self.send("POST", "/api/hosts", json!({ "name": name }));
        assert_eq!(answer.status, 201, "{}", answer.text());
        answer.json()
    }

    pub fn create_partition(&self, name: &str, size: &str, shared: bool) -> Value {
        let body = json!({ "name": name, "size": size, "shared": shared });
        let answer = self.send("POST", "/api/partitions", body);
        assert_eq!(answer.status, 201, "{}", answer.text());
        answer.json()
    }

    pub fn assign(&self, host: &str, partition: &str, access: &str) -> Answer {
        let path = format!("/api/assignments/{host}/{partition}");
        self.send("PUT", &path, json!({ "access": access }))
    }
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub fn wait_for<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
