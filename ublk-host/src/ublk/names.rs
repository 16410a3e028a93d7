//! Stable names: `/dev/multilane/<partition>` → `/dev/ublkbN`.
//!
//! `/dev/ublkbN` says nothing about what it is, and N depends on the order devices were
//! made in. The daemon serving a device links `/dev/multilane/<partition>` to it once the
//! device is live (after creating it, and again after taking it over), and removes the link
//! when it removes the device; `detach` of a device whose daemon died removes it too. A
//! daemon killed with `kill -9` leaves the link in place, which is right: the device is still
//! there (quiesced) and the daemon that takes it over keeps the link.
//!
//! Two servers may each have a partition of the same name. The first device attached gets
//! `/dev/multilane/<partition>`; while it is there, another device of the same partition
//! name gets `/dev/multilane/<partition>@<server>` (`vol0@10.0.1.1:7700`) instead of
//! taking the name over, so a name never moves under a filesystem that uses it. A link to a
//! device that no longer exists is stale and is replaced.
//!
//! The links are plain symlinks on `/dev` (devtmpfs), so they are seen in every mount
//! namespace, including outside the daemon's private one.

use std::path::{Path, PathBuf};

use crate::ublk::inspect;
use crate::ublk::state::{self, TargetData};

/// Where the stable names live.
pub const LINK_DIR: &str = "/dev/multilane";

/// `/dev/ublkbN`.
fn device_path(id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ublkb{id}"))
}

/// The device id a `/dev/ublkbN` link points at.
fn linked_id(target: &Path) -> Option<u32> {
    target
        .file_name()?
        .to_str()?
        .strip_prefix("ublkb")?
        .parse()
        .ok()
}

/// The link name device `id` serving `target` gets, given `holder`: the device the
/// short name `<partition>` points at now, and what that device serves.
pub fn choose_name(
    id: u32,
    target: &TargetData,
    holder: Option<(u32, Option<TargetData>)>,
) -> String {
    let short = target.partition.clone();
    match holder {
        Some((other, Some(serving))) if other != id && serving.partition == target.partition => {
            format!("{short}@{}", target.server)
        }
        _ => short,
    }
}

/// Links `/dev/multilane/<name>` to `/dev/ublkb<id>`, the name chosen by [`choose_name`];
/// returns the link's path. Failing to make a name does not stop the device: logged.
pub fn publish(id: u32, target: &TargetData) -> Option<PathBuf> {
    match publish_in(Path::new(LINK_DIR), id, target) {
        Ok(path) => Some(path),
        Err(error) => {
            log::warn!("cannot make the stable name of /dev/ublkb{id} in {LINK_DIR}: {error}");
            None
        }
    }
}

fn publish_in(dir: &Path, id: u32, target: &TargetData) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let holder = std::fs::read_link(dir.join(&target.partition))
        .ok()
        .and_then(|to| linked_id(&to))
        .filter(|&other| inspect::exists(other))
        .map(|other| (other, state::target_data(other)));
    let link = dir.join(choose_name(id, target, holder));
    // Made under a temporary name and renamed over the old link: atomic replacement.
    let temporary = dir.join(format!(".ublkb{id}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(device_path(id), &temporary)?;
    std::fs::rename(&temporary, &link)?;
    Ok(link)
}

/// Removes every stable name pointing at `/dev/ublkb<id>`.
pub fn withdraw(id: u32) {
    for link in links_to(Path::new(LINK_DIR), id) {
        if let Err(error) = std::fs::remove_file(&link) {
            log::warn!("cannot remove {}: {error}", link.display());
        }
    }
}

/// The stable names pointing at `/dev/ublkb<id>`.
pub fn names_of(id: u32) -> Vec<PathBuf> {
    links_to(Path::new(LINK_DIR), id)
}

fn links_to(dir: &Path, id: u32) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut links: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| std::fs::read_link(path).is_ok_and(|to| to == device_path(id)))
        .collect();
    links.sort();
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str, partition: &str) -> TargetData {
        TargetData {
            server: server.into(),
            more_paths: Vec::new(),
            host: "h1".into(),
            partition: partition.into(),
            partition_id: 1,
            lanes_per_queue: 1,
            split: 0,
            zero_copy: false,
        }
    }

    #[test]
    fn the_short_name_goes_to_the_first_device_of_a_partition_name() {
        let a = target("10.0.0.1:7700", "vol0");
        let b = target("10.0.1.1:7700", "vol0");
        assert_eq!(choose_name(3, &b, None), "vol0", "free");
        assert_eq!(
            choose_name(3, &b, Some((3, Some(b.clone())))),
            "vol0",
            "ours"
        );
        assert_eq!(
            choose_name(3, &b, Some((1, None))),
            "vol0",
            "not ours to keep"
        );
        assert_eq!(
            choose_name(3, &b, Some((1, Some(target("x:1", "other"))))),
            "vol0",
            "a stale link to a device serving something else"
        );
        assert_eq!(
            choose_name(3, &b, Some((1, Some(a)))),
            "vol0@10.0.1.1:7700",
            "taken by the same partition name of another server"
        );
    }

    #[test]
    fn links_are_replaced_atomically_and_found_by_target() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("multilane");
        // 4000000000 is no ublk device here, so an old link to it is stale.
        let stale = 4_000_000_000u32;
        std::fs::create_dir_all(&names).unwrap();
        std::os::unix::fs::symlink(device_path(stale), names.join("vol0")).unwrap();
        let id = 4_000_000_001u32;
        let link = publish_in(&names, id, &target("s:1", "vol0")).unwrap();
        assert_eq!(link, names.join("vol0"));
        assert_eq!(std::fs::read_link(&link).unwrap(), device_path(id));
        assert_eq!(links_to(&names, id), vec![link.clone()]);
        assert!(links_to(&names, stale).is_empty());
        let again = publish_in(&names, id, &target("s:1", "vol0")).unwrap();
        assert_eq!(again, link, "publishing again (recovery) keeps the name");
        assert_eq!(
            std::fs::read_dir(&names).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
