//! The O_DIRECT io_uring engine: real disks and files on disk file systems. Every piece is
//! a read or write on the thread's ring, all pieces of a request in flight at once.

use std::io;

use tokio_uring::buf::BoundedBuf;

use super::buffer::BufPart;
use super::file::{DiskFile, DiskRange};
use super::Engine;
use crate::array::stripe::Piece;
use crate::error::{DiskOp, Result};

/// A member disk driven through io_uring (O_DIRECT when its file system allows it).
#[derive(Debug)]
pub struct Direct {
    pub(super) file: DiskFile,
}

impl Engine for Direct {
    fn file(&self) -> &DiskFile {
        &self.file
    }

    async fn read(&self, piece: Piece, mut part: BufPart) -> Result<()> {
        let disk = &self.file;
        let total = piece.len as usize;
        let mut done = 0;
        while done < total {
            let at = piece.disk_offset + done as u64;
            let (result, slice) = disk.file.read_at(part.slice(done..total), at).await;
            part = slice.into_inner();
            match result {
                Ok(0) => {
                    return Err(disk.error(DiskOp::Read, at, io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(read) => done += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(disk.error(DiskOp::Read, at, e)),
            }
        }
        Ok(())
    }

    async fn write(&self, piece: Piece, mut part: BufPart) -> Result<()> {
        let disk = &self.file;
        let total = piece.len as usize;
        let mut done = 0;
        while done < total {
            let at = piece.disk_offset + done as u64;
            let (result, slice) = disk
                .file
                .write_at(part.slice(done..total), at)
                .submit()
                .await;
            part = slice.into_inner();
            match result {
                Ok(0) => {
                    return Err(disk.error(DiskOp::Write, at, io::ErrorKind::WriteZero.into()))
                }
                Ok(written) => done += written,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(disk.error(DiskOp::Write, at, e)),
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
