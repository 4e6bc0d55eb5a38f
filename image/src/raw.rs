//! Raw images: the file is the disk.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use nix::fcntl::{fallocate, FallocateFlags};

use crate::{check_range, DiskImage, Error};

/// A raw disk image over an open file; its virtual size is the file size at open time.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    size: u64,
    readonly: bool,
}

impl RawImage {
    /// Wraps `file`, whose current length becomes the virtual size. Seeking to the end measures
    /// regular files and block devices alike (a block device's metadata says 0); all I/O is
    /// positioned, so the file position does not matter afterwards.
    pub fn new(file: File, readonly: bool) -> Result<Self, Error> {
        let size = (&file).seek(SeekFrom::End(0)).map_err(Error::FileSize)?;
        Ok(RawImage {
            file,
            size,
            readonly,
        })
    }

    /// Makes `len` bytes at `offset` read as zeros, deallocating them where the file system can.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.write_zeroes(offset, len)
    }
}

/// Creates a raw image of `size` bytes (sparse) in `file`, truncating it.
pub fn create_raw(file: &File, size: u64) -> Result<(), Error> {
    reset_len(file, size)
}

/// Empties `file` and sets its length to `size` (reading zeros).
pub(crate) fn reset_len(file: &File, size: u64) -> Result<(), Error> {
    // Truncating to zero only when there is something to drop: on ext4, a truncation to zero
    // marks the file for "replace via truncate" (auto_da_alloc), which makes its close wait
    // for every written block to be allocated, a needless flush for a new file.
    if file.metadata().map_err(Error::FileSize)?.len() != 0 {
        file.set_len(0).map_err(Error::SetLen)?;
    }
    file.set_len(size).map_err(Error::SetLen)
}

impl DiskImage for RawImage {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        check_range(offset, buf.len(), self.size)?;
        read_exact_or_zero(&self.file, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        check_range(offset, buf.len(), self.size)?;
        self.file.write_all_at(buf, offset).map_err(Error::Write)
    }

    fn flush(&self) -> Result<(), Error> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data().map_err(Error::Flush)
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Error> {
        if self.readonly {
            return Err(Error::ReadOnly);
        }
        let end = offset.checked_add(len).filter(|&e| e <= self.size);
        if end.is_none() {
            return Err(Error::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_raw_fd(), flags, off, l) {
            Ok(()) => Ok(()),
            Err(nix::Error::EOPNOTSUPP) => {
                // No hole punching here: write the zeros.
                let zeros = vec![0u8; 1 << 16];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64);
                    let n = usize::try_from(n).expect("bounded by the buffer length");
                    self.file
                        .write_all_at(&zeros[..n], offset + done)
                        .map_err(Error::Write)?;
                    done += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(Error::Discard(e)),
        }
    }
}

/// Reads `buf` at `offset`, filling with zeros whatever lies past the end of the file.
pub(crate) fn read_exact_or_zero(file: &File, buf: &mut [u8], offset: u64) -> Result<(), Error> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Read(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(len: u64) -> File {
        let path =
            std::env::temp_dir().join(format!("ward-image-raw-{}-{len}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create temp file");
        std::fs::remove_file(&path).expect("unlink temp file");
        create_raw(&f, len).expect("create raw");
        f
    }

    #[test]
    fn raw_read_write_zeroes_and_bounds() {
        let img = RawImage::new(temp_file(1 << 20), false).unwrap();
        assert_eq!(img.virtual_size(), 1 << 20);
        img.write_at(&[0xab; 8192], 4096).unwrap();
        let mut buf = vec![0u8; 8192];
        img.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 0xab));
        img.write_zeroes(4096, 4096).unwrap();
        img.read_at(&mut buf, 4096).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 0xab));
        assert!(matches!(
            img.write_at(&[1], 1 << 20),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            img.read_at(&mut buf, u64::MAX),
            Err(Error::OutOfRange { .. })
        ));
        img.flush().unwrap();
    }

    #[test]
    fn raw_readonly_refuses_writes() {
        let img = RawImage::new(temp_file(4096), true).unwrap();
        assert!(matches!(img.write_at(&[1], 0), Err(Error::ReadOnly)));
        assert!(img.readonly());
    }
}
