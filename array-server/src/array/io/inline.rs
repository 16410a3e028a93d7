//! The inline engine: `pread`/`pwrite` on the calling thread, for RAM-backed member files
//! that could not be mapped (see `mapped`): still no hop to an io_uring worker thread.

use std::io;

use super::buffer::BufPart;
use super::file::{DiskFile, DiskRange};
use super::Engine;
use crate::array::stripe::Piece;
use crate::error::{DiskOp, Result};

/// A member disk read and written with plain system calls on the calling thread.
#[derive(Debug)]
pub struct Inline {
    pub(super) file: DiskFile,
}

impl Engine for Inline {
    fn file(&self) -> &DiskFile {
        &self.file
    }

    async fn read(&self, piece: Piece, mut part: BufPart) -> Result<()> {
        let disk = &self.file;
        let target = part.as_mut_slice();
        let mut done = 0;
        while done < target.len() {
            let at = piece.disk_offset + done as u64;
            let rest = &mut target[done..];
            // SAFETY: reads at most `rest.len()` bytes into `rest`, which we borrow mutably.
            let read = unsafe {
                libc::pread(disk.raw_fd, rest.as_mut_ptr().cast(), rest.len(), at as i64)
            };
            match read {
                0 => return Err(disk.error(DiskOp::Read, at, io::ErrorKind::UnexpectedEof.into())),
                n if n > 0 => done += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(disk.error(DiskOp::Read, at, error));
                    }
                }
            }
        }
        Ok(())
    }

    async fn write(&self, piece: Piece, part: BufPart) -> Result<()> {
        let disk = &self.file;
        let source = part.as_slice();
        let mut done = 0;
        while done < source.len() {
            let at = piece.disk_offset + done as u64;
            let rest = &source[done..];
            // SAFETY: writes at most `rest.len()` bytes from `rest`, which we borrow.
            let written =
                unsafe { libc::pwrite(disk.raw_fd, rest.as_ptr().cast(), rest.len(), at as i64) };
            match written {
                0 => return Err(disk.error(DiskOp::Write, at, io::ErrorKind::WriteZero.into())),
                n if n > 0 => done += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(disk.error(DiskOp::Write, at, error));
                    }
                }
            }
        }
        Ok(())
    }

    async fn release(&self, range: DiskRange) -> io::Result<()> {
        self.file.punch(range).await
    }

    async fn zero(&self, range: DiskRange) -> io::Result<()> {
        self.file.zero_range(range).await
    }
}
