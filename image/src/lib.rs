//! Disk images for ward: raw files and qcow2 (version 3 read/write, version 2 read),
//! interoperable with qemu-img.
//!
//! Images are opened from already-open [`File`]s: the block worker never sees paths, so a
//! qcow2 backing file is obtained through a resolver callback that maps the name stored in the
//! image to an open file. Every image implements [`DiskImage`], which uses interior mutability
//! so one image can be shared by several I/O threads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

mod error;
pub mod qcow2;
pub mod raw;

pub use error::Error;
pub use qcow2::{create_qcow2, Qcow2CreateOptions, Qcow2Image};
pub use raw::{create_raw, RawImage};

/// Maps a backing file name stored in an image to an open file.
pub type Resolver<'a> = dyn FnMut(&str) -> io::Result<File> + 'a;

/// The deepest backing chain [`open`] follows before assuming a loop.
pub const MAX_CHAIN_DEPTH: u32 = 16;

/// A virtual disk: a byte-addressed device of a fixed size.
pub trait DiskImage: Send + Sync + std::fmt::Debug {
    /// Size of the disk as the guest sees it, in bytes.
    fn virtual_size(&self) -> u64;
    /// Fills `buf` from the disk at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error>;
    /// Writes `buf` to the disk at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Error>;
    /// Makes every completed write (data and metadata) durable.
    fn flush(&self) -> Result<(), Error>;
    /// Whether writes are refused.
    fn readonly(&self) -> bool;
    /// Makes `len` bytes at `offset` read as zeros.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Error> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; usize::try_from(len.min(CHUNK)).expect("chunk fits usize")];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK);
            let n_usize = usize::try_from(n).expect("chunk fits usize");
            self.write_at(&zeros[..n_usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

/// Disk image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// The name qemu-img uses for the format.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Parses a qemu-img format name.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "raw" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }
}

/// Guesses the format of an image from its first bytes: qcow2 magic, else raw.
pub fn detect_format(file: &File) -> Result<Format, Error> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read_at(&mut magic[got..], got as u64) {
            Ok(0) => return Ok(Format::Raw),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Read(e)),
        }
    }
    Ok(if magic == qcow2::header::MAGIC.to_be_bytes() {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Opens an image of the given format (or the detected one when `format` is `None`).
///
/// A qcow2 image's backing chain is opened read-only through `resolver`.
pub fn open(
    file: File,
    format: Option<Format>,
    readonly: bool,
    resolver: &mut Resolver<'_>,
) -> Result<Box<dyn DiskImage>, Error> {
    open_at_depth(file, format, readonly, resolver, 0)
}

pub(crate) fn open_at_depth(
    file: File,
    format: Option<Format>,
    readonly: bool,
    resolver: &mut Resolver<'_>,
    depth: u32,
) -> Result<Box<dyn DiskImage>, Error> {
    if depth > MAX_CHAIN_DEPTH {
        return Err(Error::BackingChainTooDeep(MAX_CHAIN_DEPTH));
    }
    let format = match format {
        Some(f) => f,
        None => detect_format(&file)?,
    };
    Ok(match format {
        Format::Raw => Box::new(RawImage::new(file, readonly)?),
        Format::Qcow2 => Box::new(Qcow2Image::open_at_depth(file, readonly, resolver, depth)?),
    })
}

/// Checks that `len` bytes at `offset` fit in a disk of `size` bytes.
pub(crate) fn check_range(offset: u64, len: usize, size: u64) -> Result<(), Error> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(contents: &[u8]) -> File {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ward-image-lib-{}-{n}", std::process::id()));
        std::fs::write(&path, contents).expect("write temp file");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open temp file");
        std::fs::remove_file(&path).expect("unlink temp file");
        f
    }

    #[test]
    fn detects_qcow2_magic_else_raw() {
        assert_eq!(detect_format(&temp_file(b"")).unwrap(), Format::Raw);
        assert_eq!(detect_format(&temp_file(b"QF")).unwrap(), Format::Raw);
        // The magic alone decides; the header is checked when opening.
        let f = temp_file(b"QFI\xfb but short");
        assert_eq!(detect_format(&f).unwrap(), Format::Qcow2);
        let r = open(f, None, true, &mut |_: &str| unreachable!());
        assert!(
            matches!(r, Err(Error::TruncatedHeader(14))),
            "{:?}",
            r.err()
        );
        let f = temp_file(&[0u8; 4096]);
        create_qcow2(&f, &Qcow2CreateOptions::new(1 << 20)).unwrap();
        assert_eq!(detect_format(&f).unwrap(), Format::Qcow2);
        let img = open(f, None, true, &mut |_: &str| unreachable!()).unwrap();
        assert_eq!(img.virtual_size(), 1 << 20);
        assert!(img.readonly());
        // Forced raw: the qcow2 file is just bytes.
        let f = temp_file(&[7u8; 3000]);
        let img = open(f, Some(Format::Raw), false, &mut |_: &str| unreachable!()).unwrap();
        assert_eq!(img.virtual_size(), 3000);
    }

    #[test]
    fn format_names() {
        for f in [Format::Raw, Format::Qcow2] {
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        assert_eq!(Format::from_name("vmdk"), None);
    }
}
