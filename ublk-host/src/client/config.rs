//! Settings of a client: where the server is, who we are, and how the engine behaves.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use wire::Secret;

use crate::client::durability::Durability;
use crate::client::path_stats::PathStats;
use crate::client::paths::PathPolicy;
use crate::error::{HostError, Result};

/// Default deadline of one connection attempt (TCP connect plus handshake).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time I/O waits for a lost server before failing with `EIO` (queue-and-wait,
/// for a filesystem on the device; like NVMe/TCP's `ctrl_loss_tmo`, but shorter).
pub const DEFAULT_WAIT_BOUND: Duration = Duration::from_secs(120);
/// Default shortest time a queue thread polls for completions before it sleeps (it polls
/// longer while its waits are longer, see `poll_budget.rs`): about one network round trip
/// plus a server's turn on a fast path, and the value Linux suggests for socket busy
/// polling (`net.core.busy_poll`).
pub const DEFAULT_POLL: Duration = Duration::from_micros(50);
/// Default silence, with requests outstanding, after which a lane is dead. Also the
/// sockets' `TCP_USER_TIMEOUT` and keepalive idle time.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(5);
/// Silence, with requests outstanding, after which a lane sends a heartbeat probe.
pub const HEARTBEAT_AFTER: Duration = Duration::from_secs(1);

/// How to reach and authenticate to one array server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the server (path 0).
    pub server: String,
    /// Further `host:port` addresses of the same server, one per further network (paths
    /// 1, 2, ...; see `paths.rs`). Empty for a single path.
    pub more_paths: Vec<String>,
    /// This host's name, as created on the server.
    pub host: String,
    /// This host's shared secret.
    pub secret: Secret,
    /// Deadline of one connection attempt (TCP connect plus handshake).
    pub handshake_timeout: Duration,
    /// Deadline of the TCP connect alone, within `handshake_timeout`. Reconnecting lanes
    /// use a short one, so a fresh SYN goes out soon after a path heals instead of
    /// waiting for TCP's own SYN retransmission backoff.
    pub connect_timeout: Duration,
    /// A connection that has requests outstanding and hears nothing from the server for
    /// this long is dead; also the sockets' `TCP_USER_TIMEOUT` and keepalive idle time
    /// (an idle connection is found dead after about twice this).
    pub dead_after: Duration,
}

impl ClientConfig {
    /// Every path's address, path 0 (`server`) first.
    pub fn paths(&self) -> Vec<String> {
        std::iter::once(self.server.clone())
            .chain(self.more_paths.iter().cloned())
            .collect()
    }

    /// This configuration aimed at `addr` (one path of the server).
    pub fn via(&self, addr: &str) -> ClientConfig {
        ClientConfig {
            server: addr.to_owned(),
            ..self.clone()
        }
    }

    /// A configuration with the default handshake deadline.
    pub fn new(server: impl Into<String>, host: impl Into<String>, secret: Secret) -> Self {
        ClientConfig {
            server: server.into(),
            more_paths: Vec::new(),
            host: host.into(),
            secret,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            connect_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            dead_after: DEFAULT_DEAD_AFTER,
        }
    }
}

/// How one queue's engine behaves.
///
/// Clones share one [`Durability`]: give every queue of a device a clone of the same
/// configuration, so that a FLUSH on one queue covers the writes of the others.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The server and credentials.
    pub client: ClientConfig,
    /// Lanes (TCP connections) each queue owns on each path; at least 1.
    pub lanes_per_queue: u16,
    /// How requests are spread over the paths (with more than one).
    pub path_policy: PathPolicy,
    /// Requests longer than this many bytes are split at stripe-chunk boundaries into
    /// parts that run in parallel over the queue's lanes; 0 never splits (requests longer
    /// than the server's `max_io` are always cut to fit).
    pub split: u32,
    /// How long I/O waits for a lost server (reconnecting, reissuing) before it fails
    /// with `EIO`; new I/O then fails at once until the lane is back.
    pub wait_bound: Duration,
    /// Fail-fast (like NVMe/TCP's `fast_io_fail_tmo`), for md RAID1 or multipath above
    /// the device: when set, I/O fails after this instead of `wait_bound`.
    pub fail_fast: Option<Duration>,
    /// The device-wide boot-epoch and flush state (shared by clones).
    pub durability: Arc<Durability>,
    /// Reads land in fixed buffers (ublk zero copy): each lane's receiver then takes
    /// exactly a reply's header from the socket and receives the payload with a
    /// fixed-buffer read, because a fixed buffer is reachable only by ring operations.
    pub zero_copy: bool,
    /// The partition's size as the device last learned it, in bytes (0: as the lanes'
    /// Welcome said). A live resize raises it before the device grows, so I/O to the new
    /// end is accepted (shared by clones: every queue's engine sees it).
    pub live_size: Arc<AtomicU64>,
    /// Per-path lanes up, requests and bytes (shared by clones: every queue's engine
    /// counts into it). Sized for the client's paths when made: set `client.more_paths`
    /// before [`EngineConfig::new`].
    pub path_stats: Arc<PathStats>,
    /// How long a queue thread polls its ring for completions at least before it sleeps
    /// (see [`crate::client::uring::poll_completions`] and
    /// [`crate::client::poll_budget::PollBudget`]); zero never polls.
    pub poll: Duration,
}

impl EngineConfig {
    /// One lane per queue, no splitting, the default wait bound, no fail-fast.
    pub fn new(client: ClientConfig) -> Self {
        let path_stats = Arc::new(PathStats::new(client.paths().len()));
        EngineConfig {
            client,
            lanes_per_queue: 1,
            path_policy: PathPolicy::default(),
            split: 0,
            wait_bound: DEFAULT_WAIT_BOUND,
            fail_fast: None,
            durability: Arc::default(),
            zero_copy: false,
            live_size: Arc::default(),
            path_stats,
            poll: DEFAULT_POLL,
        }
    }

    /// How long I/O waits for a lost server: the fail-fast bound when set, else the
    /// wait bound.
    pub fn fail_after(&self) -> Duration {
        self.fail_fast.unwrap_or(self.wait_bound)
    }
}

/// The permission bits of a file mode (shown in messages).
const PERMISSION_BITS: u32 = 0o7777;
/// Permission bits a secret file may not have: any access by group or others.
pub const SECRET_FILE_FORBIDDEN_MODE: u32 = 0o077;

/// Reads a host secret (64 hex digits) from a file, which only its owner may access and
/// which this process's user must own: a file that group or others can access, or that
/// another user owns, is refused, as ssh refuses such a key (whoever can choose the secret
/// can also prove to be the server).
pub fn read_secret_file(path: &str) -> Result<Secret> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let unusable = |reason: String| HostError::Secret {
        path: path.to_owned(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| unusable(e.to_string()))?;
    let metadata = file.metadata().map_err(|e| unusable(e.to_string()))?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let user = unsafe { libc::geteuid() };
    if metadata.uid() != user {
        return Err(unusable(format!(
            "it is owned by uid {}, not by this process's user (uid {user}): chown {user} {path}",
            metadata.uid()
        )));
    }
    let mode = metadata.permissions().mode();
    if mode & SECRET_FILE_FORBIDDEN_MODE != 0 {
        return Err(unusable(format!(
            "it is accessible by group or others (mode {:04o}); a host secret must be \
             private to its owner: chmod 600 {path}",
            mode & PERMISSION_BITS
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| unusable(e.to_string()))?;
    Secret::from_hex(&text).map_err(|e| unusable(e.to_string()))
}

/// Parses a byte size: a number with an optional `K`, `M` or `G` suffix (powers of 1024,
/// an optional trailing `B` or `iB` allowed), e.g. `128K`, `1MiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = |reason: &str| HostError::Config {
        what: "size",
        reason: format!("{text:?}: {reason}"),
    };
    let upper = text.trim().to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 10),
        Some('M') => (&body[..body.len() - 1], 20),
        Some('G') => (&body[..body.len() - 1], 30),
        _ => (body, 0),
    };
    let value: u64 = digits.parse().map_err(|_| bad("not a number"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| bad("too large"))
}

#[cfg(test)]
mod tests {
    use super::{parse_size, read_secret_file};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_another_user_owns_are_refused() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.secret");
        std::fs::write(&path, format!("{:064x}\n", 42)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        /// `nobody` on Debian.
        const NOBODY: u32 = 65534;
        std::os::unix::fs::chown(&path, Some(NOBODY), None).unwrap();
        let error = read_secret_file(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("owned by uid 65534"), "{error}");
    }

    #[test]
    fn secret_files_open_to_group_or_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.secret");
        std::fs::write(&path, format!("{:064x}\n", 42)).unwrap();
        let text = path.to_str().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o601] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = read_secret_file(text).unwrap_err().to_string();
            assert!(error.contains("group or others"), "mode {mode:o}: {error}");
            assert!(error.contains("chmod 600"), "mode {mode:o}: {error}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(read_secret_file(text).is_ok(), "mode {mode:o}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("128K").unwrap(), 128 << 10);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("x").is_err());
        assert!(parse_size("").is_err());
    }
}
