//! The admin API against a running network server: discovery pushes every assignment
//! change to a connected host within a second, live sessions and their counters show
//! up, revocation closes lanes, and `/metrics` counts the traffic.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use array_server::admin::client::{AdminClient, Answer};
use array_server::admin::{AdminConfig, AdminLimits, AdminServer, AdminToken};
use array_server::net::{self, RunningServer, ServerConfig};
use array_server::Array;
use common::{format, serve, temp_disks, Client, Disks, CHUNK, DISK_SIZE};
use serde_json::{json, Value};
use wire::{Access, ControlEvent, PartitionInfo, Purpose, Status};

/// How long a change may take to reach a connected host.
const PUSH_DEADLINE: Duration = Duration::from_secs(1);

struct Stack {
    _disks: Disks,
    array: Arc<Array>,
    net: RunningServer,
    _admin: AdminServer,
    api: AdminClient,
}

impl Stack {
    fn new() -> Stack {
        Stack::serving(serve)
    }

    /// A stack whose network server `start` starts.
    fn serving(start: impl FnOnce(Arc<Array>) -> RunningServer) -> Stack {
        let disks = temp_disks(2, DISK_SIZE);
        let array = format(&disks, CHUNK);
        let net = start(array.clone());
        let token = AdminToken::generate().unwrap();
        let config = AdminConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            token: token.clone(),
            limits: AdminLimits::default(),
        };
        let admin = AdminServer::start(config, array.clone(), net.live_sessions()).unwrap();
        let api =
            AdminClient::new(&admin.local_addr().to_string(), Some(token.expose().into())).unwrap();
        Stack {
            _disks: disks,
            array,
            net,
            _admin: admin,
            api,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.api.call(method, path, body.as_ref()).unwrap()
    }

    /// Creates a host over the API and returns its secret.
    fn host(&self, name: &str) -> String {
        let answer = self.call("POST", "/api/hosts", Some(json!({ "name": name })));
        assert_eq!(answer.status, 201, "{}", answer.text());
        answer.json()["secret"].as_str().unwrap().to_owned()
    }

    /// Creates a partition over the API and returns its id.
    fn partition(&self, name: &str, size: &str) -> u32 {
        let body = json!({ "name": name, "size": size });
        let answer = self.call("POST", "/api/partitions", Some(body));
        assert_eq!(answer.status, 201, "{}", answer.text());
        answer.json()["id"].as_u64().unwrap() as u32
    }

    fn sessions(&self) -> Vec<Value> {
        let answer = self.call("GET", "/api/sessions", None);
        answer.json()["sessions"].as_array().unwrap().clone()
    }

    fn wait_sessions(&self, what: &str, mut check: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + common::IO_TIMEOUT;
        loop {
            let sessions = self.sessions();
            if check(&sessions) {
                return sessions;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {sessions:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits for the next pushed list; returns it and how long it took since `since`.
fn next_push(control: &mut Client, since: Instant) -> (Vec<PartitionInfo>, Duration) {
    match control.recv_event().expect("a pushed partition list") {
        ControlEvent::Partitions { partitions, .. } => (partitions, since.elapsed()),
        other => panic!("expected Partitions, got {other:?}"),
    }
}

#[test]
fn a_connected_host_sees_assignments_appear_change_and_disappear_within_a_second() {
    let stack = Stack::new();
    let secret = stack.host("h1");
    stack.partition("vm1", "4M");
    let mut control = Client::control(stack.net.local_addr(), "h1", &secret);
    assert!(control.list().is_empty());

    let steps: [(&str, Option<Value>, Option<Access>); 3] = [
        (
            "PUT",
            Some(json!({"access": "read-write"})),
            Some(Access::ReadWrite),
        ),
        (
            "PUT",
            Some(json!({"access": "read-only"})),
            Some(Access::ReadOnly),
        ),
        ("DELETE", None, None),
    ];
    for (method, body, expected) in steps {
        let started = Instant::now();
        let answer = stack.call(method, "/api/assignments/h1/vm1", body);
        assert!(answer.status < 300, "{}", answer.text());
        let (partitions, took) = next_push(&mut control, started);
        println!("discovery: {method} assignment reached the host in {took:?}");
        assert!(took < PUSH_DEADLINE, "{method}: push took {took:?}");
        match expected {
            Some(access) => {
                assert_eq!(partitions.len(), 1);
                assert_eq!(partitions[0].name, "vm1");
                assert_eq!(partitions[0].access, access);
                assert!(!partitions[0].shared);
            }
            None => assert!(partitions.is_empty()),
        }
    }
}

#[test]
fn metrics_count_traffic_per_server_address_the_lanes_came_in_on() {
    let stack = Stack::serving(|array| {
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            also_listen: vec!["127.0.0.2:0".parse().unwrap()],
            threads: 1,
            ..ServerConfig::default()
        };
        net::start(array, config).unwrap()
    });
    let secret = stack.host("h1");
    let id = stack.partition("vm1", "4M");
    let assigned = stack.call(
        "PUT",
        "/api/assignments/h1/vm1",
        Some(json!({"access": "rw"})),
    );
    assert_eq!(assigned.status, 201);
    let addrs = stack.net.local_addrs();
    // One write on the first address, two on the second (then its lane closes: a closed
    // lane's traffic stays counted).
    let mut first = Client::lane(addrs[0], "h1", &secret, id, 0, 0);
    assert_eq!(first.write(0, &[7u8; 4096]), Status::Ok);
    {
        let mut second = Client::lane(addrs[1], "h1", &secret, id, 1, 0);
        for block in 0..2u64 {
            assert_eq!(second.write(block * 4096, &[7u8; 4096]), Status::Ok);
        }
    }
    stack.wait_sessions("the second lane closed", |s| s.len() == 1);
    let metrics = stack.call("GET", "/metrics", None).text();
    for (addr, writes) in [(addrs[0], 1u64), (addrs[1], 2)] {
        let series = format!("{{local=\"{addr}\"}}");
        for (name, value) in [
            ("multilane_path_requests_total", writes),
            ("multilane_path_written_bytes_total", writes * 4096),
            ("multilane_path_read_bytes_total", 0),
        ] {
            assert!(
                metrics.contains(&format!("{name}{series} {value}\n")),
                "{name}{series} {value}: {metrics}"
            );
        }
    }
}

#[test]
fn lanes_show_in_the_live_view_and_metrics_and_revocation_closes_them() {
    let stack = Stack::new();
    let secret = stack.host("h1");
    let id = stack.partition("vm1", "4M");
    let assigned = stack.call(
        "PUT",
        "/api/assignments/h1/vm1",
        Some(json!({"access": "rw"})),
    );
    assert_eq!(assigned.status, 201);
    let addr = stack.net.local_addr();
    let _control = Client::control(addr, "h1", &secret);
    let mut lanes: Vec<Client> = (0..2u16)
        .map(|queue| Client::lane(addr, "h1", &secret, id, queue, 0))
        .collect();
    for (i, lane) in lanes.iter_mut().enumerate() {
        for block in 0..=i as u64 {
            assert_eq!(lane.write(block * 4096, &[7u8; 4096]), Status::Ok);
        }
    }

    let sessions = stack.wait_sessions("two lanes and a control session", |s| s.len() == 3);
    let data: Vec<&Value> = sessions.iter().filter(|s| s["kind"] == "data").collect();
    assert_eq!(data.len(), 2);
    for (queue, lane) in data.iter().enumerate() {
        assert_eq!(lane["host"], "h1");
        assert_eq!(lane["partition"], "vm1");
        assert_eq!(lane["queue"], queue);
        assert_eq!(lane["lane"], 0);
        assert!(lane["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(lane["writes"], queue + 1);
        assert_eq!(lane["bytes_written"], 4096 * (queue + 1));
    }
    let host = stack.call("GET", "/api/hosts/h1", None).json();
    assert_eq!(
        (host["connected"].clone(), host["lanes"].clone()),
        (json!(true), json!(2))
    );
    assert_eq!(
        stack.call("GET", "/api/partitions/vm1", None).json()["lanes"],
        2
    );

    let metrics = stack.call("GET", "/metrics", None).text();
    let series = "{host=\"h1\",partition=\"vm1\"";
    assert!(
        metrics.contains(&format!(
            "multilane_requests_total{series},op=\"write\"}} 3\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("multilane_written_bytes_total{series}}} 12288\n")));
    assert!(
        metrics.contains(&format!(
            "multilane_request_duration_seconds_count{series}}} 3\n"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("multilane_sessions{host=\"h1\",kind=\"data\"} 2\n"));

    let before = stack.array.generation();
    let refused = stack.call("DELETE", "/api/partitions/vm1", None);
    assert_eq!(refused.status, 409);
    assert!(
        refused.error_message().contains("attached (2 live lanes"),
        "{}",
        refused.text()
    );
    assert_eq!(stack.array.generation(), before);

    let revoked_at = Instant::now();
    assert_eq!(
        stack.call("DELETE", "/api/assignments/h1/vm1", None).status,
        200
    );
    for lane in &mut lanes {
        assert!(lane.closed_by_server(), "a revoked lane must be closed");
    }
    stack.wait_sessions("the lanes to leave the live view", |s| {
        s.iter().all(|session| session["kind"] != "data")
    });
    println!(
        "revocation: lanes closed and gone from the live view in {:?}",
        revoked_at.elapsed()
    );
    let purpose = Purpose::Data {
        partition: id,
        queue: 0,
        lane: 0,
        epoch: u64::MAX,
    };
    assert!(
        Client::connect(addr, "h1", &secret, purpose).is_err(),
        "reconnect must be refused"
    );

    let metrics = stack.call("GET", "/metrics", None).text();
    assert!(
        metrics.contains(&format!(
            "multilane_requests_total{series},op=\"write\"}} 3\n"
        )),
        "closed lanes' traffic stays counted: {metrics}"
    );
}

#[test]
fn a_forced_delete_closes_the_lanes_of_an_attached_partition() {
    let stack = Stack::new();
    let secret = stack.host("h1");
    let id = stack.partition("vm1", "4M");
    stack.call("PUT", "/api/assignments/h1/vm1", Some(json!({})));
    let mut lane = Client::data(stack.net.local_addr(), "h1", &secret, id);
    assert_eq!(lane.write(0, &[1u8; 4096]), Status::Ok);
    stack.wait_sessions("the lane", |s| s.len() == 1);

    let answer = stack.call("DELETE", "/api/partitions/vm1?force=true", None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["closed_lanes"], 1);
    assert!(lane.closed_by_server());
    stack.wait_sessions("no sessions", |s| s.is_empty());
    assert!(stack.array.partitions().is_empty());
}

#[test]
fn the_history_charts_a_partitions_traffic_and_the_disks_health() {
    let stack = Stack::new();
    let secret = stack.host("h1");
    let id = stack.partition("vm1", "4M");
    let assign = Some(json!({"access": "read-write"}));
    assert_eq!(
        stack.call("PUT", "/api/assignments/h1/vm1", assign).status,
        201
    );
    let mut lane = Client::data(stack.net.local_addr(), "h1", &secret, id);
    let deadline = Instant::now() + common::IO_TIMEOUT;
    // Keep writing until a sampled point shows the traffic (one point per second).
    let history = loop {
        for block in 0..16u64 {
            assert_eq!(lane.write(block * 4096, &[3u8; 4096]), Status::Ok);
        }
        let history = stack.call("GET", "/api/history", None).json();
        let busy = |kind: &str, name: &str| {
            history[kind].as_array().unwrap().iter().any(|s| {
                s["name"] == name
                    && s["iops"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v.as_u64() > Some(0))
                    && s["write_bps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v.as_u64() > Some(0))
                    && s["p99_us"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v.as_u64() > Some(0))
            })
        };
        if busy("partitions", "vm1") && busy("hosts", "h1") {
            break history;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic in the history: {history}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(history["interval_ms"], 1000);
    assert_eq!(history["window_ms"], 15 * 60 * 1000);
    let series = &history["partitions"][0];
    let points = series["t"].as_array().unwrap().len();
    for column in ["read_bps", "write_bps", "iops", "p50_us", "p99_us"] {
        assert_eq!(series[column].as_array().unwrap().len(), points, "{column}");
    }
    let disks = history["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    for disk in disks {
        assert_eq!(disk["io_errors"], 0);
        assert_eq!(disk["healthy"], true);
        assert!(disk["last_error"].is_null());
    }
}
