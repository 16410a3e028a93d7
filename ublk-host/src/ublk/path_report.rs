//! The per-path report of a device: `/run/multilane/ublkbN.paths.json`, each path's
//! address, state (up: at least one lane connected over it) and traffic, written by the
//! daemon serving the device every [`PUBLISH_INTERVAL`] when it changed, read by
//! `ublk-host list`.
//!
//! A file of its own rather than a field of the state file (`state.rs`): the state file is
//! rewritten in place under its lock, so a reader could catch it half written, and
//! replacing it by a rename would part it from that lock. The report is replaced by a
//! rename (a reader sees the old or the new one, whole). `list` shows it only while the
//! device is claimed, so the last report of a daemon that died is not taken for news.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{EngineConfig, PathSnapshot};
use crate::error::{HostError, Result};
use crate::ublk::state::STATE_DIR;

/// How often the daemon looks whether the path counters changed.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// One path as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReport {
    /// The path's `host:port` (`--server`, in order).
    pub address: String,
    /// Its state and counters.
    #[serde(flatten)]
    pub stats: PathSnapshot,
}

/// Path of device `id`'s report.
pub fn report_path(id: u32) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("ublkb{id}.paths.json"))
}

/// Device `id`'s last report, if it has a readable one.
pub fn load(id: u32) -> Option<Vec<PathReport>> {
    let text = std::fs::read(report_path(id)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Replaces device `id`'s report with `reports` (write aside, then rename).
pub fn write(id: u32, reports: &[PathReport]) -> Result<()> {
    let text = serde_json::to_vec_pretty(reports)
        .map_err(|e| HostError::Protocol(format!("encoding the path report: {e}")))?;
    let path = report_path(id);
    let aside = path.with_extension("json.new");
    let io = |e| HostError::io("writing the path report", e);
    std::fs::write(&aside, text).map_err(io)?;
    std::fs::rename(&aside, &path).map_err(io)
}

/// Removes device `id`'s report (the device is gone).
pub fn remove(id: u32) {
    match std::fs::remove_file(report_path(id)) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => log::warn!("cannot remove {}: {error}", report_path(id).display()),
    }
}

/// The report of `config`'s paths now.
pub fn reports(config: &EngineConfig) -> Vec<PathReport> {
    config
        .client
        .paths()
        .into_iter()
        .zip(config.path_stats.snapshot())
        .map(|(address, stats)| PathReport { address, stats })
        .collect()
}

/// Starts the thread publishing device `id`'s report for as long as the queues hold
/// `config` (it removes the report once they all let go).
pub(crate) fn spawn_publisher(id: u32, config: &Arc<EngineConfig>) -> Result<()> {
    let config: Weak<EngineConfig> = Arc::downgrade(config);
    std::thread::Builder::new()
        .name(format!("paths{id}"))
        .spawn(move || publish(id, &config))
        .map(drop)
        .map_err(|e| HostError::io("starting the path report thread", e))
}

fn publish(id: u32, config: &Weak<EngineConfig>) {
    let mut last: Option<Vec<PathReport>> = None;
    let mut warned = false;
    while let Some(config) = config.upgrade() {
        let now = reports(&config);
        drop(config);
        if last.as_ref() != Some(&now) {
            match write(id, &now) {
                Ok(()) => last = Some(now),
                Err(error) if !warned => {
                    log::warn!("/dev/ublkb{id}: no path report: {error}");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        std::thread::sleep(PUBLISH_INTERVAL);
    }
    remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_lists_every_path_with_its_counters_in_json() {
        let mut client = crate::client::ClientConfig::new(
            "10.0.0.1:7700",
            "h1",
            wire::Secret::from_hex(&"ab".repeat(32)).unwrap(),
        );
        client.more_paths = vec!["10.0.1.1:7700".into()];
        let config = EngineConfig::new(client);
        config.path_stats.lane_moved(None, Some(1));
        config.path_stats.issued(1, 4096);
        let reports = reports(&config);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].address, "10.0.1.1:7700");
        let json = serde_json::to_value(&reports).unwrap();
        assert_eq!(json[0]["up"], false);
        assert_eq!(json[1]["up"], true);
        assert_eq!(json[1]["requests"], 1);
        assert_eq!(json[1]["bytes"], 4096);
        let back: Vec<PathReport> = serde_json::from_value(json).unwrap();
        assert_eq!(back, reports);
    }
}
