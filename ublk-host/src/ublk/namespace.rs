//! The daemon's own mount namespace.
//!
//! A daemon serving `/dev/ublkbN` must not hold a filesystem on a ublk device: a filesystem
//! someone mounts on our device elsewhere would otherwise be pinned by our namespace, and
//! the device could never be released. `unshare(CLONE_NEWNS)` with private propagation keeps
//! later mounts out; mounts that already exist when the daemon starts (a filesystem on the
//! very device a recovering daemon takes over) are copied into the new namespace, so they
//! are detached there (`umount2(MNT_DETACH)`, which touches only this namespace).

use std::ffi::CString;

use crate::error::{HostError, Result};

/// Where the kernel lists this process's mounts.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Moves this process into its own mount namespace with private propagation and detaches
/// every ublk block device's filesystem from it.
pub fn enter_private_mount_namespace() -> Result<()> {
    // SAFETY: unshare takes only flags.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(HostError::io("unshare(CLONE_NEWNS)", error));
    }
    let root = c"/";
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    // SAFETY: valid NUL-terminated path, null source/type/data are allowed for a
    // propagation change.
    let changed = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if changed != 0 {
        let error = std::io::Error::last_os_error();
        return Err(HostError::io("making / private", error));
    }
    detach_ublk_mounts()
}

/// Detaches (lazily, in this namespace only) every mount of a ublk block device, deepest
/// first.
fn detach_ublk_mounts() -> Result<()> {
    let table = std::fs::read_to_string(MOUNTINFO)
        .map_err(|e| HostError::io("reading /proc/self/mountinfo", e))?;
    let mut points: Vec<String> = table
        .lines()
        .filter_map(parse_mount)
        .filter(|(device, _)| is_ublk_block(device))
        .map(|(_, point)| point)
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let Ok(path) = CString::new(point.clone()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path; MNT_DETACH is a valid flag.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            let error = std::io::Error::last_os_error();
            log::warn!("cannot detach {point} from this daemon's namespace: {error}");
        } else {
            log::debug!("detached {point} (a ublk filesystem) from this daemon's namespace");
        }
    }
    Ok(())
}

/// The device (`major:minor`) and the mount point of one mountinfo line.
fn parse_mount(line: &str) -> Option<(String, String)> {
    let mut fields = line.split(' ');
    let device = fields.nth(2)?.to_owned();
    let point = unescape(fields.nth(1)?);
    Some((device, point))
}

/// Undoes mountinfo's octal escapes (`\040` for a space...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether block device `major:minor` is a ublk disk (`/sys/dev/block/M:N` -> `.../ublkbN`).
fn is_ublk_block(device: &str) -> bool {
    std::fs::read_link(format!("/sys/dev/block/{device}"))
        .ok()
        .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|name| name.starts_with("ublkb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let line = "36 35 259:3 / /mnt/my\\040disk rw,relatime shared:1 - ext4 /dev/ublkb0 rw";
        assert_eq!(
            parse_mount(line),
            Some(("259:3".to_owned(), "/mnt/my disk".to_owned()))
        );
        assert_eq!(parse_mount("garbage"), None);
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn only_ublk_disks_count() {
        assert!(!is_ublk_block("0:0"));
        assert!(!is_ublk_block("not a device"));
    }
}
