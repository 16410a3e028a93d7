//! The `array-server` binary as an operator runs it: assembling by array id, the
//! configuration file, and quiet output (progress on a terminal only, own log lines only).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_array-server");
/// How long a started server may take to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("array-server runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Formats an array on `names` (16 MiB files in `dir`); returns its id.
fn format(dir: &Path, names: &[&str]) -> String {
    let mut args = vec!["format", "--size", "16M", "--admin-token-file", "token"];
    for name in names {
        args.extend(["--disk", name]);
    }
    let out = run(dir, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("formatted array "))
        .expect("format prints the array id");
    id.to_owned()
}

#[test]
fn offline_commands_find_the_members_by_array_id() {
    let dir = tempfile::tempdir().unwrap();
    let id = format(dir.path(), &["a.img", "b.img", "c.img"]);
    let glob = format!("{}/*.img", dir.path().display());
    let base = [
        "--array",
        id.as_str(),
        "--scan",
        glob.as_str(),
        "--no-device-scan",
    ];
    let create = [&["partition", "create", "vm1", "4M"][..], &base[..]].concat();
    let out = run(dir.path(), &create);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = run(dir.path(), &[&["info", "--json"][..], &base[..]].concat());
    assert!(info.status.success(), "{}", text(&info.stderr));
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let paths: Vec<String> = json["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(paths, ["a.img", "b.img", "c.img"], "stripe order");
    assert_eq!(json["partitions"], 1);
    // Or from a configuration file's [array] section, as the service finds it.
    let config = dir.path().join("array.toml");
    std::fs::write(
        &config,
        format!("[array]\nid = \"{id}\"\nscan = [\"{glob}\"]\nscan_block_devices = false\n"),
    )
    .unwrap();
    let listed = run(
        dir.path(),
        &["partition", "list", "--config", config.to_str().unwrap()],
    );
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(text(&listed.stdout).contains("vm1"));

    std::fs::rename(dir.path().join("b.img"), dir.path().join("b.away")).unwrap();
    let missing = run(dir.path(), &[&["info"][..], &base[..]].concat());
    assert!(!missing.status.success());
    let error = text(&missing.stderr);
    assert!(error.contains("member disk 1 of 3"), "{error}");

    let other = tempfile::tempdir().unwrap();
    format(other.path(), &["x.img"]);
    let foreign = other.path().join("x.img");
    let named = [
        &["info", "--disk", foreign.to_str().unwrap()][..],
        &base[..],
    ]
    .concat();
    let refused = run(dir.path(), &named);
    assert!(!refused.status.success());
    let error = text(&refused.stderr);
    assert!(error.contains("is not a member of array"), "{error}");
}

#[test]
fn format_shows_progress_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "format", "--size", "16M", "--disk", "a.img", "--disk", "b.img",
        ],
    );
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("format:") && !stderr.contains('\r'),
        "{stderr:?}"
    );
    // `script` (util-linux, essential on Debian) gives the command a terminal.
    let command = format!("{BIN} format --size 16M --disk c.img --disk d.img");
    let tty = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("script(1) runs");
    let shown = text(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(
        shown.contains("format: writing metadata on disks (2/2 done)"),
        "{shown:?}"
    );
}

/// Kills the child on drop (a failed assertion must not leave a server running).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_runs_from_a_config_file_and_prints_its_own_lines_only() {
    let dir = tempfile::tempdir().unwrap();
    let id = format(dir.path(), &["a.img", "b.img"]);
    let config = dir.path().join("array.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"token\"\n\
             [array]\nid = \"{id}\"\nscan = [\"{}/*.img\"]\nscan_block_devices = false\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--threads",
            "2",
        ])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let (lines, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut got = Vec::new();
    while !got.iter().any(|l: &String| l.starts_with("admin page on")) {
        let line = seen
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|_| panic!("serve did not come up; stdout so far: {got:?}"));
        got.push(line);
    }
    assert!(
        got[0].starts_with("array-server listening on 127.0.0.1:"),
        "{got:?}"
    );
    // SIGTERM, as systemd stops it: a clean exit.
    // SAFETY: kill(2) on the pid of a child this test started and still owns.
    let status = unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    assert_eq!(status, 0);
    let mut server = server;
    let exit = server.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let log: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    for line in &log {
        assert!(line.contains(" array_server"), "a foreign log line: {line}");
    }
}

#[test]
fn serve_refuses_a_bad_config_file_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("array.toml");
    std::fs::write(&config, "[server]\nlisten_addr = \"0.0.0.0:7700\"\n").unwrap();
    let out = run(dir.path(), &["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("unknown field `listen_addr`") && error.contains("array.toml"),
        "{error}"
    );
}
