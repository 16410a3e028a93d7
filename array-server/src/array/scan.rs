//! Assembling an array by scanning: its member disks are found by the array id written in
//! their metadata slots, in any order, among the machine's block devices and paths the
//! operator lists (globs such as `/var/lib/multilane/*.img`).
//!
//! Probing is read-only and takes no lock: each candidate is opened `O_RDONLY`, its two
//! slots are read and decoded, and it is closed again. A candidate that cannot be opened or
//! read, is smaller than the metadata area, or carries no valid slot is simply not a
//! member. Block devices that may be served by a Multilane host on this very machine
//! (`ublkb*`, `nbd*`) are never probed: reading one while its server is the process
//! starting up would wait on ourselves. Optical and floppy drives (`sr*`, `fd*`) are
//! skipped too (a read can stall for seconds).
//!
//! Disks named explicitly (`--disk`) must belong to the array asked for (else
//! [`Error::ForeignDisk`]); scanned ones of another array are ignored. Two paths to the
//! same disk (a symlink, a device and a glob) count once; two *different* disks claiming
//! one index are refused ([`Error::AmbiguousMember`]); a missing index is named
//! ([`Error::MembersMissing`]), and finding none says so ([`Error::ArrayNotFound`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::metadata::{self, Slot};
use super::stripe::METADATA_AREA;
use crate::error::{Error, Result};

/// Where the kernel lists block devices.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";
/// Where their nodes are.
pub const DEV_DIR: &str = "/dev";
/// Block device names never probed (see the module docs).
pub const SKIPPED_DEVICE_PREFIXES: [&str; 4] = ["ublk", "nbd", "sr", "fd"];

/// Which disks make up the array to open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSpec {
    /// Disks named explicitly (`--disk`): without `array_id`, exactly the array's members.
    pub disks: Vec<PathBuf>,
    /// The array to assemble (`--array`): members are found by this id.
    pub array_id: Option<Uuid>,
    /// Extra paths or globs to probe (`--scan`).
    pub scan: Vec<String>,
    /// Whether the machine's block devices are probed too (default yes).
    pub scan_block_devices: bool,
}

/// What one probed disk says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The path probed.
    pub path: PathBuf,
    /// Its newest valid slot's array.
    pub array_id: Uuid,
    /// Its position in the stripe.
    pub disk_index: u32,
    /// Member disks the array has.
    pub disk_count: u32,
    /// Identifies the disk behind the path: the device number for a block device,
    /// device and inode for a file.
    identity: (u64, u64),
}

/// Reads the metadata of `path`, read-only; `None` if it is not an array member (or
/// cannot be read).
pub fn probe(path: &Path) -> Option<Probe> {
    let mut file = File::open(path).ok()?;
    let stat = file.metadata().ok()?;
    let identity = if stat.file_type().is_block_device() {
        (stat.rdev(), 0)
    } else if stat.is_file() {
        (stat.dev(), stat.ino())
    } else {
        return None;
    };
    if file.seek(SeekFrom::End(0)).ok()? < METADATA_AREA {
        return None;
    }
    let slots = metadata::read_slots(&file, path).ok()?;
    let newest: &Slot = slots.iter().flatten().max_by_key(|s| s.generation)?;
    Some(Probe {
        path: path.to_owned(),
        array_id: newest.array_id,
        disk_index: newest.disk_index,
        disk_count: newest.disk_count,
        identity,
    })
}

/// The machine's block devices as `/dev/NAME`, from `sys_class_block`, without the
/// [`SKIPPED_DEVICE_PREFIXES`]; sorted.
pub fn block_devices(sys_class_block: &Path, dev_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            !SKIPPED_DEVICE_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .map(|name| dev_dir.join(name))
        .filter(|path| path.exists())
        .collect();
    out.sort();
    out
}

/// Expands each pattern: a glob (`*`, `?`, `[...]`) to the paths it matches, sorted; any
/// other path to itself.
pub fn expand(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pattern in patterns {
        let paths = glob::glob(pattern).map_err(|e| Error::Scan {
            pattern: pattern.clone(),
            message: e.to_string(),
        })?;
        out.extend(paths.flatten());
    }
    Ok(out)
}

/// The member disks of `spec`, in stripe order (or as given, without an array id).
pub fn resolve(spec: &DiskSpec) -> Result<Vec<PathBuf>> {
    let Some(array_id) = spec.array_id else {
        if let Some(pattern) = spec.scan.first() {
            return Err(Error::Scan {
                pattern: pattern.clone(),
                message: "scanning needs the array's id (--array ID, see `array-server info`)"
                    .into(),
            });
        }
        if spec.disks.is_empty() {
            return Err(Error::NoDisks);
        }
        return Ok(spec.disks.clone());
    };
    let mut candidates = expand(&spec.scan)?;
    if spec.scan_block_devices {
        candidates.extend(block_devices(
            Path::new(SYS_CLASS_BLOCK),
            Path::new(DEV_DIR),
        ));
    }
    find_members(array_id, &spec.disks, candidates)
}

/// Finds the members of `array_id`: every path in `explicit` must be one; `candidates`
/// that are not are ignored. Returns one path per disk index, in index order.
pub fn find_members(
    array_id: Uuid,
    explicit: &[PathBuf],
    candidates: impl IntoIterator<Item = PathBuf>,
) -> Result<Vec<PathBuf>> {
    let mut members = Members::new(array_id);
    for path in explicit {
        match probe(path) {
            Some(found) if found.array_id == array_id => members.add(found)?,
            Some(found) => {
                return Err(Error::ForeignDisk {
                    path: path.clone(),
                    array_id,
                    found: format!("it belongs to array {}", found.array_id),
                })
            }
            None => {
                return Err(Error::ForeignDisk {
                    path: path.clone(),
                    array_id,
                    found: "it cannot be read or carries no Multilane metadata".into(),
                })
            }
        }
    }
    let mut searched = explicit.len();
    if !members.complete() {
        for path in candidates {
            searched += 1;
            if let Some(found) = probe(&path).filter(|p| p.array_id == array_id) {
                members.add(found)?;
            }
        }
    }
    members.finish(searched)
}

/// The members found so far, by index.
struct Members {
    array_id: Uuid,
    count: Option<u32>,
    by_index: BTreeMap<u32, Probe>,
}

impl Members {
    fn new(array_id: Uuid) -> Members {
        Members {
            array_id,
            count: None,
            by_index: BTreeMap::new(),
        }
    }

    fn add(&mut self, found: Probe) -> Result<()> {
        let count = *self.count.get_or_insert(found.disk_count);
        if found.disk_count != count {
            return Err(Error::DiskSetMismatch(format!(
                "{} says array {} has {} disks; another member says {count}",
                found.path.display(),
                self.array_id,
                found.disk_count
            )));
        }
        match self.by_index.get(&found.disk_index) {
            Some(known) if known.identity == found.identity => Ok(()),
            Some(known) => Err(Error::AmbiguousMember {
                array_id: self.array_id,
                index: found.disk_index,
                first: known.path.clone(),
                second: found.path,
            }),
            None => {
                self.by_index.insert(found.disk_index, found);
                Ok(())
            }
        }
    }

    fn complete(&self) -> bool {
        self.count
            .is_some_and(|count| (0..count).all(|i| self.by_index.contains_key(&i)))
    }

    fn finish(self, searched: usize) -> Result<Vec<PathBuf>> {
        let Some(count) = self.count else {
            return Err(Error::ArrayNotFound {
                array_id: self.array_id,
                searched,
            });
        };
        let missing: Vec<String> = (0..count)
            .filter(|i| !self.by_index.contains_key(i))
            .map(|i| i.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::MembersMissing {
                array_id: self.array_id,
                missing: missing.join(", "),
                count,
                searched,
            });
        }
        Ok(self.by_index.into_values().map(|p| p.path).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Array, FormatOptions};

    const DISK_SIZE: u64 = 4 << 20;

    /// Formats an array on `names` (files created in `dir`); returns its id and paths.
    fn array_on(dir: &Path, names: &[&str]) -> (Uuid, Vec<PathBuf>) {
        let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        let options = FormatOptions {
            chunk: 64 << 10,
            force: false,
            create_size: Some(DISK_SIZE),
        };
        let array = Array::format(&paths, &options).unwrap();
        (array.id(), paths)
    }

    #[test]
    fn members_are_found_in_stripe_order_whatever_the_scan_order() {
        let dir = tempfile::tempdir().unwrap();
        let (id, paths) = array_on(dir.path(), &["a.img", "b.img", "c.img", "d.img"]);
        let shuffled = vec![
            paths[2].clone(),
            paths[0].clone(),
            paths[3].clone(),
            paths[1].clone(),
        ];
        assert_eq!(find_members(id, &[], shuffled).unwrap(), paths);
        // Through a glob, and with one disk reachable twice (explicit and scanned).
        let pattern = format!("{}/*.img", dir.path().display());
        let spec = DiskSpec {
            disks: vec![paths[3].clone()],
            array_id: Some(id),
            scan: vec![pattern],
            scan_block_devices: false,
        };
        assert_eq!(resolve(&spec).unwrap(), paths);
        let array = Array::open(&resolve(&spec).unwrap()).unwrap();
        assert_eq!(array.id(), id);
    }

    #[test]
    fn a_missing_member_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (id, paths) = array_on(dir.path(), &["a.img", "b.img", "c.img"]);
        let error = find_members(id, &[], vec![paths[2].clone(), paths[0].clone()]).unwrap_err();
        assert!(
            matches!(&error, Error::MembersMissing { missing, count: 3, searched: 2, .. } if missing == "1"),
            "{error:?}"
        );
        assert!(error.to_string().contains("member disk 1 of 3"), "{error}");
        let none = find_members(id, &[], Vec::new()).unwrap_err();
        assert!(matches!(none, Error::ArrayNotFound { .. }), "{none:?}");
    }

    #[test]
    fn a_foreign_disk_is_ignored_when_scanned_and_refused_when_named() {
        let dir = tempfile::tempdir().unwrap();
        let (id, paths) = array_on(dir.path(), &["a.img", "b.img"]);
        let (other, foreign) = array_on(dir.path(), &["x.img", "y.img"]);
        let blank = dir.path().join("blank.img");
        std::fs::write(&blank, vec![0u8; DISK_SIZE as usize]).unwrap();
        let scanned = vec![
            foreign[1].clone(),
            paths[1].clone(),
            blank.clone(),
            foreign[0].clone(),
            paths[0].clone(),
        ];
        assert_eq!(find_members(id, &[], scanned.clone()).unwrap(), paths);
        let error = find_members(id, &[foreign[0].clone()], scanned).unwrap_err();
        assert!(
            matches!(&error, Error::ForeignDisk { path, .. } if *path == foreign[0]),
            "{error:?}"
        );
        assert!(error.to_string().contains(&other.to_string()), "{error}");
        let error = find_members(id, &[blank], Vec::new()).unwrap_err();
        assert!(
            error.to_string().contains("no Multilane metadata"),
            "{error}"
        );
    }

    #[test]
    fn two_disks_claiming_one_index_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (id, paths) = array_on(dir.path(), &["a.img", "b.img"]);
        let clone = dir.path().join("clone.img");
        std::fs::copy(&paths[1], &clone).unwrap();
        let error =
            find_members(id, &[], vec![paths[0].clone(), paths[1].clone(), clone]).unwrap_err();
        assert!(
            matches!(error, Error::AmbiguousMember { index: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn scanning_needs_an_array_id_and_valid_globs() {
        let spec = DiskSpec {
            scan: vec!["/tmp/*.img".into()],
            ..DiskSpec::default()
        };
        assert!(resolve(&spec).unwrap_err().to_string().contains("--array"));
        let bad = DiskSpec {
            array_id: Some(Uuid::nil()),
            scan: vec!["/tmp/[".into()],
            ..DiskSpec::default()
        };
        assert!(matches!(resolve(&bad), Err(Error::Scan { .. })));
    }

    #[test]
    fn block_devices_skip_host_side_devices() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        for name in ["vda", "ublkb0", "nbd3", "sr0", "sdb1", "gone"] {
            std::fs::write(sys.join(name), b"").unwrap();
            if name != "gone" {
                std::fs::write(dev.join(name), b"").unwrap();
            }
        }
        assert_eq!(
            block_devices(&sys, &dev),
            vec![dev.join("sdb1"), dev.join("vda")]
        );
    }
}
