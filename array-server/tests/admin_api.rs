//! The admin API over loopback: every route, the token check, and bad input (each
//! refusal asserts the status, the message, and that the metadata did not change).

mod admin_support;

use admin_support::Fixture;
use serde_json::json;

#[test]
fn every_request_needs_the_token() {
    let fx = Fixture::new();
    let anonymous = fx.anonymous();
    for path in ["/api/array", "/api/partitions", "/api/sessions", "/metrics"] {
        let answer = anonymous.call("GET", path, None).unwrap();
        assert_eq!(answer.status, 401, "{path}");
        assert!(
            answer.error_message().contains("no admin token given"),
            "{path}"
        );
        assert!(answer.header("www-authenticate").is_some());
    }
    let before = fx.metadata();
    let post = anonymous
        .call("POST", "/api/hosts", Some(&json!({"name": "h"})))
        .unwrap();
    assert_eq!(post.status, 401);
    assert_eq!(fx.metadata(), before);

    let wrong = array_server::admin::client::AdminClient::new(
        &fx.server.local_addr().to_string(),
        Some("0".repeat(64)),
    )
    .unwrap();
    let answer = wrong.call("GET", "/api/array", None).unwrap();
    assert_eq!(answer.status, 401);
    assert!(answer.error_message().contains("wrong"));

    let page = anonymous.call("GET", "/", None).unwrap();
    assert_eq!(page.status, 401);
    assert!(page.text().contains("admin token needed"));
    assert!(page.text().contains("<form"));
    assert_eq!(
        anonymous
            .call("GET", "/assets/app.js", None)
            .unwrap()
            .status,
        401
    );
}

#[test]
fn the_page_logs_in_with_a_cookie_and_guards_changes() {
    let fx = Fixture::new();
    let anonymous = fx.anonymous();
    let token = fx.token.expose();
    let login = anonymous
        .call("GET", &format!("/?token={token}"), None)
        .unwrap();
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let cookie = cookie.split(';').next().unwrap();

    let raw = |request: String| anonymous.raw(request.as_bytes()).unwrap();
    let page = raw(format!(
        "GET / HTTP/1.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Multilane array"));
    for asset in ["/assets/app.js", "/assets/style.css"] {
        let answer = raw(format!(
            "GET {asset} HTTP/1.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(answer.status, 200, "{asset}");
    }

    let body = r#"{"name":"h1"}"#;
    let post = |extra: &str| {
        raw(format!(
            "POST /api/hosts HTTP/1.1\r\nCookie: {cookie}\r\n{extra}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ))
    };
    let before = fx.metadata();
    let forged = post("");
    assert_eq!(forged.status, 403);
    assert!(forged.error_message().contains("X-Multilane-Request"));
    assert_eq!(fx.metadata(), before);
    assert_eq!(post("X-Multilane-Request: 1\r\n").status, 201);

    let bad = anonymous.call("GET", "/?token=nope", None).unwrap();
    assert_eq!(bad.status, 401);
    assert!(bad.header("set-cookie").is_none());
}

#[test]
fn array_reports_capacity_and_disks() {
    let fx = Fixture::new();
    fx.create_partition("p", "8M", false);
    let array = fx.get("/api/array").json();
    let (capacity, used, free) = (
        array["capacity"].as_u64().unwrap(),
        array["used"].as_u64().unwrap(),
        array["free"].as_u64().unwrap(),
    );
    assert_eq!(used, 8 << 20);
    assert_eq!(used + free, capacity);
    assert_eq!(array["chunk_size"], admin_support::CHUNK);
    assert_eq!(array["disks"].as_array().unwrap().len(), 2);
    assert_eq!(array["disks"][1]["size"], admin_support::DISK_SIZE);
    assert_eq!(array["id"], fx.array.id().to_string());
}

#[test]
fn partitions_are_created_grown_listed_and_deleted() {
    let fx = Fixture::new();
    let created = fx.create_partition("vm1", "1.5M", false);
    let stripe = 2 * admin_support::CHUNK;
    assert_eq!(created["size"], (3u64 << 19).next_multiple_of(stripe));
    assert_eq!(created["shared"], false);
    assert_eq!(created["lanes"], 0);
    let bytes = fx.send(
        "POST",
        "/api/partitions",
        json!({"name": "vm2", "size": 1048576, "shared": true}),
    );
    assert_eq!(bytes.status, 201);
    assert_eq!(bytes.json()["size"], 1 << 20);

    let grown = fx.send("PATCH", "/api/partitions/vm1", json!({"size": "4M"}));
    assert_eq!(grown.status, 200, "{}", grown.text());
    assert_eq!(grown.json()["size"], 4 << 20);
    assert_eq!(fx.get("/api/partitions/vm1").json()["size"], 4 << 20);

    let list = fx.get("/api/partitions").json();
    let names: Vec<_> = list["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, [json!("vm1"), json!("vm2")]);

    let deleted = fx.delete("/api/partitions/vm2");
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["deleted"], "vm2");
    assert_eq!(fx.get("/api/partitions/vm2").status, 404);
}

#[test]
fn bad_partition_requests_say_why_and_change_nothing() {
    let fx = Fixture::new();
    fx.create_partition("vm1", "1M", false);
    let create = |body: serde_json::Value| Some(body);
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "x", "size": "12X"})),
        400,
        "unknown unit",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "x", "size": "1..5M"})),
        400,
        "cannot read size",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "x", "size": 0})),
        400,
        "above zero",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "x", "size": -5})),
        400,
        "whole number",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "x"})),
        400,
        "\"size\" is required",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"size": "1M"})),
        400,
        "\"name\" is required",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "a b", "size": "1M"})),
        400,
        "invalid name",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "x", "size": "1M", "sharde": true})),
        400,
        "unknown field",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "x", "size": "1M", "shared": "yes"})),
        400,
        "true or false",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!(["x"])),
        400,
        "JSON object",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "vm1", "size": "1M"})),
        409,
        "already exists",
    );
    fx.refused(
        "POST",
        "/api/partitions",
        create(json!({"name": "big", "size": "10G"})),
        409,
        "not enough free space",
    );
    fx.refused(
        "PATCH",
        "/api/partitions/vm1",
        create(json!({"size": "10G"})),
        409,
        "not enough free space",
    );
    fx.refused(
        "PATCH",
        "/api/partitions/vm1",
        create(json!({"size": "512K"})),
        409,
        "can only grow",
    );
    fx.refused(
        "PATCH",
        "/api/partitions/nope",
        create(json!({"size": "2M"})),
        404,
        "no partition named \"nope\"",
    );
    fx.refused(
        "GET",
        "/api/partitions/nope",
        None,
        404,
        "no partition named",
    );
    fx.refused(
        "DELETE",
        "/api/partitions/nope",
        None,
        404,
        "no partition named",
    );
    fx.refused("PUT", "/api/partitions", None, 405, "not allowed");
    fx.refused(
        "GET",
        "/api/nothing",
        None,
        404,
        "no such page or API route",
    );

    let before = fx.metadata();
    let raw = format!(
        "POST /api/partitions HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{{\"name\":",
        fx.token.expose()
    );
    let answer = fx.client.raw(raw.as_bytes()).unwrap();
    assert_eq!(answer.status, 400);
    assert!(answer.error_message().contains("not valid JSON"));
    let huge = json!({ "name": "x".repeat(70 * 1024), "size": "1M" });
    let answer = fx
        .client
        .call("POST", "/api/partitions", Some(&huge))
        .unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(fx.metadata(), before);
}

#[test]
fn hosts_are_created_with_a_secret_once_rotated_and_deleted() {
    let fx = Fixture::new();
    let created = fx.create_host("h1");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(created["secret_file_name"], "h1.secret");
    assert!(created["usage"]
        .as_str()
        .unwrap()
        .contains("--secret-file h1.secret"));
    assert_eq!(fx.array.host_secret("h1").unwrap().to_hex(), secret);

    let host = fx.get("/api/hosts/h1");
    assert_eq!(host.status, 200);
    assert!(
        !host.text().contains(&secret),
        "a host's secret is shown only once"
    );
    assert_eq!(host.json()["connected"], false);
    assert!(!fx.get("/api/hosts").text().contains(&secret));

    let rotated = fx.send("POST", "/api/hosts/h1/rotate-secret", json!({}));
    assert_eq!(rotated.status, 200);
    let fresh = rotated.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(fresh, secret);
    assert_eq!(fx.array.host_secret("h1").unwrap().to_hex(), fresh);

    assert_eq!(fx.delete("/api/hosts/h1").status, 200);
    assert!(fx.get("/api/hosts").json()["hosts"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn bad_host_requests_say_why_and_change_nothing() {
    let fx = Fixture::new();
    fx.create_host("h1");
    fx.create_partition("p", "1M", false);
    assert_eq!(fx.assign("h1", "p", "read-write").status, 201);
    fx.refused(
        "POST",
        "/api/hosts",
        Some(json!({"name": "h1"})),
        409,
        "host \"h1\" already exists",
    );
    fx.refused(
        "POST",
        "/api/hosts",
        Some(json!({"name": "bad/name"})),
        400,
        "invalid name",
    );
    fx.refused(
        "POST",
        "/api/hosts",
        Some(json!({"name": 7})),
        400,
        "must be a string",
    );
    fx.refused(
        "POST",
        "/api/hosts",
        Some(json!({})),
        400,
        "\"name\" is required",
    );
    fx.refused(
        "GET",
        "/api/hosts/nope",
        None,
        404,
        "no host named \"nope\"",
    );
    fx.refused("DELETE", "/api/hosts/nope", None, 404, "no host named");
    fx.refused(
        "POST",
        "/api/hosts/nope/rotate-secret",
        None,
        404,
        "no host named",
    );
    fx.refused("DELETE", "/api/hosts/h1", None, 409, "still assigned");

    let forced = fx.delete("/api/hosts/h1?force=true");
    assert_eq!(forced.status, 200, "{}", forced.text());
    assert!(fx.array.assignments().is_empty());
    assert_eq!(fx.array.partitions().len(), 1);
}

#[test]
fn assignments_are_made_changed_and_revoked() {
    let fx = Fixture::new();
    fx.create_host("h1");
    fx.create_host("h2");
    fx.create_partition("private", "1M", false);
    fx.create_partition("shared", "1M", true);

    let made = fx.assign("h1", "private", "read-write");
    assert_eq!(made.status, 201);
    assert_eq!(made.json()["access"], "read-write");
    let changed = fx.assign("h1", "private", "read-only");
    assert_eq!(changed.status, 200);
    assert_eq!(changed.json()["access"], "read-only");
    assert_eq!(fx.assign("h1", "shared", "rw").status, 201);
    assert_eq!(fx.assign("h2", "shared", "ro").status, 201);

    let list = fx.get("/api/assignments").json();
    assert_eq!(list["assignments"].as_array().unwrap().len(), 3);
    let shared = fx.get("/api/partitions/shared").json();
    assert_eq!(
        shared["hosts"],
        json!([{"host": "h1", "access": "read-write"}, {"host": "h2", "access": "read-only"}])
    );
    let h1 = fx.get("/api/hosts/h1").json();
    assert_eq!(h1["partitions"].as_array().unwrap().len(), 2);

    let revoked = fx.delete("/api/assignments/h2/shared");
    assert_eq!(revoked.status, 200);
    assert_eq!(
        fx.get("/api/assignments").json()["assignments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn bad_assignments_say_why_and_change_nothing() {
    let fx = Fixture::new();
    fx.create_host("h1");
    fx.create_host("h2");
    fx.create_partition("private", "1M", false);
    assert_eq!(fx.assign("h1", "private", "read-write").status, 201);
    let put = |access: &str| Some(json!({ "access": access }));
    fx.refused(
        "PUT",
        "/api/assignments/h2/private",
        put("read-write"),
        409,
        "private and already assigned to host \"h1\"",
    );
    fx.refused(
        "PUT",
        "/api/assignments/h2/private",
        put("write-only"),
        400,
        "neither",
    );
    fx.refused(
        "PUT",
        "/api/assignments/h2/private",
        Some(json!({"acess": "ro"})),
        400,
        "unknown field",
    );
    fx.refused(
        "PUT",
        "/api/assignments/nope/private",
        put("ro"),
        404,
        "no host named",
    );
    fx.refused(
        "PUT",
        "/api/assignments/h2/nope",
        put("ro"),
        404,
        "no partition named",
    );
    fx.refused(
        "DELETE",
        "/api/assignments/h2/private",
        None,
        404,
        "not assigned",
    );
    fx.refused(
        "DELETE",
        "/api/partitions/private",
        None,
        409,
        "still assigned",
    );

    let forced = fx.delete("/api/partitions/private?force=true");
    assert_eq!(forced.status, 200, "{}", forced.text());
    assert!(fx.array.assignments().is_empty() && fx.array.partitions().is_empty());
}

#[test]
fn sessions_and_metrics_answer_without_a_network_server() {
    let fx = Fixture::new();
    fx.create_partition("p", "2M", false);
    assert_eq!(fx.get("/api/sessions").json(), json!({ "sessions": [] }));
    let metrics = fx.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text();
    assert!(
        text.contains("multilane_array_used_bytes 2097152\n"),
        "{text}"
    );
    assert!(text.contains("multilane_partition_size_bytes{partition=\"p\"} 2097152\n"));
    assert!(text.contains("multilane_disk_io_errors_total{disk=\"1\""));
}

#[test]
fn idle_keep_alive_connections_do_not_starve_new_ones() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let request = format!(
        "GET /api/array HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        fx.token.expose()
    );
    // Browsers keep up to six connections open per server; hold more than that idle.
    let idle: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(fx.server.local_addr()).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut first = [0u8; 12];
            stream.read_exact(&mut first).unwrap();
            assert_eq!(&first, b"HTTP/1.1 200");
            stream
        })
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(fx.get("/api/array").status, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}
