//! The admin token: 32 random bytes as 64 hex digits, kept in a 0600 file, compared in
//! constant time.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// Random bytes in a freshly generated token.
const TOKEN_BYTES: usize = 32;
/// Permission of every secret file written: owner read/write only.
pub const PRIVATE_MODE: u32 = 0o600;
/// Shortest token accepted from a file the operator wrote.
const MIN_TOKEN_LEN: usize = 16;

/// The secret that every admin request must present. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A fresh random token.
    pub fn generate() -> Result<AdminToken> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut bytes).map_err(|e| {
            Error::io(
                "generating the admin token",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(AdminToken(hex::encode(bytes)))
    }

    /// A token given as text (surrounding whitespace ignored); at least 16 visible ASCII
    /// characters.
    pub fn from_text(text: &str) -> Result<AdminToken> {
        let text = text.trim();
        let visible = text.bytes().all(|b| b.is_ascii_graphic());
        if text.len() < MIN_TOKEN_LEN || !visible {
            return Err(Error::io(
                "reading the admin token",
                std::io::Error::other(format!(
                    "an admin token is at least {MIN_TOKEN_LEN} visible ASCII characters"
                )),
            ));
        }
        Ok(AdminToken(text.to_owned()))
    }

    /// Reads the token from `path`, which only its owner may access (see
    /// [`read_private`]).
    pub fn load(path: &Path) -> Result<AdminToken> {
        AdminToken::from_text(&read_private(path, "admin token")?)
    }

    /// Reads the token from `path`, or generates one into a new 0600 file there.
    pub fn load_or_create(path: &Path) -> Result<AdminToken> {
        if path.exists() {
            return AdminToken::load(path);
        }
        let token = AdminToken::generate()?;
        token.write_new(path)?;
        Ok(token)
    }

    /// Writes the token into `path`, created with mode 0600 (replacing an existing file).
    pub fn write_new(&self, path: &Path) -> Result<()> {
        write_private(path, &self.0)
    }

    /// The token's text, for a client that must present it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token; takes the same time wherever they differ.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), presented.as_bytes())
    }
}

/// Writes `text` and a newline into a new file at `path` with mode 0600 (replacing an
/// existing file; creating missing folders), synced.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let context = || format!("writing {}", path.display());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io(context(), e))?;
    }
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(path)
        .map_err(|e| Error::io(context(), e))?;
    writeln!(file, "{text}")
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(context(), e))
}

/// The permission bits of a file mode (shown in messages).
pub const PERMISSION_BITS: u32 = 0o7777;
/// Permission bits a secret file may not have: any access by group or others.
pub const FORBIDDEN_MODE: u32 = 0o077;

/// Reads a secret (`what`: "admin token"...) from `path`, refusing, as ssh does for a
/// private key, a file that group or others may access or that another user owns.
pub fn read_private(path: &Path, what: &str) -> Result<String> {
    let context = || format!("reading {what} file {}", path.display());
    let mut file = fs::File::open(path).map_err(|e| Error::io(context(), e))?;
    let metadata = file.metadata().map_err(|e| Error::io(context(), e))?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let user = unsafe { libc::geteuid() };
    if metadata.uid() != user {
        return Err(Error::io(
            context(),
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "it is owned by uid {}, not by this process's user (uid {user}); whoever \
                     owns it chooses the secret: chown {user} {}",
                    metadata.uid(),
                    path.display()
                ),
            ),
        ));
    }
    let mode = metadata.permissions().mode();
    if mode & FORBIDDEN_MODE != 0 {
        return Err(Error::io(
            context(),
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "it is accessible by group or others (mode {:04o}); a secret must be \
                     private to its owner: chmod 600 {}",
                    mode & PERMISSION_BITS,
                    path.display()
                ),
            ),
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::io(context(), e))?;
    Ok(text)
}

/// Compares two byte strings without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_differ_and_match_themselves() {
        let a = AdminToken::generate().unwrap();
        let b = AdminToken::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.matches(a.expose()));
        assert!(!a.matches(b.expose()));
        assert!(!a.matches(&a.expose()[1..]));
        assert!(!a.matches(""));
    }

    #[test]
    fn file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/token");
        let token = AdminToken::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(AdminToken::load_or_create(&path).unwrap(), token);
    }

    #[test]
    fn token_files_another_user_owns_are_refused() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can give a file to another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        AdminToken::load_or_create(&path).unwrap();
        /// `nobody` on Debian.
        const NOBODY: u32 = 65534;
        std::os::unix::fs::chown(&path, Some(NOBODY), None).unwrap();
        let error = AdminToken::load(&path).unwrap_err().to_string();
        assert!(error.contains("owned by uid 65534"), "{error}");
    }

    #[test]
    fn token_files_open_to_group_or_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let token = AdminToken::load_or_create(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let error = AdminToken::load(&path).unwrap_err().to_string();
            assert!(error.contains("group or others"), "mode {mode:o}: {error}");
            assert!(error.contains("chmod 600"), "mode {mode:o}: {error}");
            assert!(AdminToken::load_or_create(&path).is_err());
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(AdminToken::load(&path).unwrap(), token);
    }

    #[test]
    fn short_or_blank_tokens_are_refused() {
        assert!(AdminToken::from_text("short").is_err());
        assert!(AdminToken::from_text("has spaces in the middle of it").is_err());
        assert!(AdminToken::from_text("  0123456789abcdef\n").is_ok());
    }
}
