//! The admin pieces of `array-server format` and `serve`: where the token file lives,
//! and starting the service beside the network server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{AdminConfig, AdminLimits, AdminServer, AdminToken, LiveSessions};
use crate::array::Array;
use crate::error::Result;

/// Folder of the token file of an array on block devices.
pub const TOKEN_DIR: &str = "/etc/multilane";

/// The token file used when none is given: `FIRST_DISK.admin-token` beside a file-backed
/// array, `/etc/multilane/ARRAY_ID.admin-token` for block devices.
pub fn default_token_path(array: &Array) -> PathBuf {
    match array.disks().first() {
        Some(disk) if !disk.view().block_device => {
            let mut path = disk.path().as_os_str().to_owned();
            path.push(".admin-token");
            PathBuf::from(path)
        }
        _ => Path::new(TOKEN_DIR).join(format!("{}.admin-token", array.id())),
    }
}

/// At `format`: writes a fresh token into `path` (or the default place), mode 0600.
pub fn write_format_token(array: &Array, path: Option<&Path>) -> Result<PathBuf> {
    let path = path.map_or_else(|| default_token_path(array), Path::to_owned);
    AdminToken::generate()?.write_new(&path)?;
    Ok(path)
}

/// At `serve --admin ADDR`: reads the token (creating it if the file is missing) and
/// starts the admin service.
pub fn start_for_serve(
    addr: SocketAddr,
    token_file: Option<&Path>,
    array: Arc<Array>,
    sessions: Arc<dyn LiveSessions>,
) -> Result<(AdminServer, PathBuf)> {
    let path = token_file.map_or_else(|| default_token_path(&array), Path::to_owned);
    let token = AdminToken::load_or_create(&path)?;
    if !addr.ip().is_loopback() {
        log::warn!(
            "the admin service listens on {addr}, beyond loopback: anyone who can reach it \
             and has the token controls the array; there is no TLS"
        );
    }
    let config = AdminConfig {
        addr,
        token,
        limits: AdminLimits::default(),
    };
    let server = AdminServer::start(config, array, sessions)?;
    Ok((server, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FormatOptions;

    #[test]
    fn file_arrays_keep_the_token_beside_the_first_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d0.img");
        let options = FormatOptions {
            chunk: 64 << 10,
            force: false,
            create_size: Some(8 << 20),
        };
        let array = Array::format(std::slice::from_ref(&disk), &options).unwrap();
        let written = write_format_token(&array, None).unwrap();
        assert_eq!(written, dir.path().join("d0.img.admin-token"));
        assert!(AdminToken::load(&written).is_ok());
        let given = dir.path().join("given");
        assert_eq!(write_format_token(&array, Some(&given)).unwrap(), given);
    }
}
