//! Secrets at rest: member files and secret files are private to their owner, secret
//! files others can read are refused, and a secret sent to `--secret-file` is never
//! printed (offline `host create`/`rotate` and `ctl host create`/`rotate`).

mod admin_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use admin_support::Fixture;

/// Owner read/write only.
const PRIVATE: u32 = 0o600;
/// How long a CLI run may take.
const RUN_DEADLINE: Duration = Duration::from_secs(20);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `array-server ARGS` to completion (killed at the deadline).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_array-server"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn array-server");
    let deadline = Instant::now() + RUN_DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("array-server {args:?} did not end within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn secret_in(path: &Path) -> String {
    let secret = std::fs::read_to_string(path).unwrap().trim().to_owned();
    assert_eq!(secret.len(), 64, "a secret is 64 hex digits: {secret:?}");
    secret
}

/// Formats a two-disk array with `format --size`; returns the directory and disk args.
fn formatted() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("d{i}"))).collect();
    let mut args = vec!["format".to_owned(), "--size".to_owned(), "32M".to_owned()];
    let mut disk_args = Vec::new();
    for disk in &disks {
        disk_args.extend(["--disk".to_owned(), disk.display().to_string()]);
    }
    args.extend(disk_args.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = run(&refs);
    assert!(output.status.success(), "format: {}", stderr(&output));
    (dir, disk_args)
}

#[test]
fn format_size_creates_member_files_only_the_owner_can_read() {
    let (dir, _) = formatted();
    for name in ["d0", "d1", "d0.admin-token"] {
        assert_eq!(mode(&dir.path().join(name)), PRIVATE, "{name}");
    }
}

#[test]
fn offline_host_secrets_sent_to_a_file_are_never_printed() {
    let (dir, disks) = formatted();
    let file = dir.path().join("h1.secret");
    let file_arg = file.display().to_string();
    let with_disks = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(disks.iter().map(String::as_str));
        run(&all)
    };

    let created = with_disks(&["host", "create", "h1", "--secret-file", &file_arg]);
    assert!(created.status.success(), "{}", stderr(&created));
    let secret = secret_in(&file);
    assert_eq!(mode(&file), PRIVATE);
    assert!(
        !stdout(&created).contains(&secret),
        "create printed the secret"
    );
    assert!(!stderr(&created).contains(&secret));

    let rotated = with_disks(&["host", "rotate", "h1", "--secret-file", &file_arg]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let new_secret = secret_in(&file);
    assert_ne!(new_secret, secret);
    assert_eq!(mode(&file), PRIVATE);
    assert!(!stdout(&rotated).contains(&new_secret), "rotate printed it");
    assert!(!stderr(&rotated).contains(&new_secret));

    // Without a file, the secret is printed once: that is the only way to get it.
    let shown = with_disks(&["host", "create", "h2"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let printed = stdout(&shown);
    assert!(
        printed
            .lines()
            .any(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())),
        "{printed}"
    );
}

#[test]
fn ctl_secrets_sent_to_a_file_are_never_printed_and_open_token_files_are_refused() {
    let fx = Fixture::new();
    let url = format!("http://{}", fx.server.local_addr());
    let token = fx.dir.path().join("admin-token");
    let token_arg = token.display().to_string();
    let file = fx.dir.path().join("h1.secret");
    let file_arg = file.display().to_string();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--admin", &url, "--token-file", &token_arg];
        all.extend_from_slice(args);
        run(&all)
    };

    for verb in ["create", "rotate"] {
        let output = ctl(&["host", verb, "h1", "--secret-file", &file_arg]);
        assert!(output.status.success(), "{verb}: {}", stderr(&output));
        let secret = secret_in(&file);
        assert_eq!(mode(&file), PRIVATE);
        assert!(!stdout(&output).contains(&secret), "ctl {verb} printed it");
        assert!(!stderr(&output).contains(&secret));
    }

    chmod(&token, 0o644);
    let refused = ctl(&["host", "list"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("group or others"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}

#[test]
fn serve_refuses_an_admin_token_file_others_can_read() {
    let (dir, disks) = formatted();
    let token = dir.path().join("d0.admin-token");
    chmod(&token, 0o640);
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    args.extend(disks.iter().map(String::as_str));
    let output = run(&args);
    assert!(
        !output.status.success(),
        "serve started with a 0640 token file"
    );
    let message = stderr(&output);
    assert!(message.contains("group or others"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}
