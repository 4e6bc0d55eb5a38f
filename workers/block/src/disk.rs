//! The disk image: the one descriptor the worker was handed, its size in whole sectors, the
//! device ID, and positioned vectored I/O between the image and guest memory.
//!
//! Raw images: I/O is `preadv`/`pwritev` straight between the image and the guest's buffers,
//! one system call per request (more only on short transfers): no bounce buffer, so no
//! allocation whose size the guest picks, and no shared file position.
//!
//! qcow2 images (with their backing chains, handed over as descriptors too) go through
//! `ward_image`, by way of a bounce buffer of at most [`BOUNCE`] bytes at a time.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Bytes per virtio-blk sector, whatever the image's own block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Most iovecs one `preadv`/`pwritev` takes (the kernel's UIO_MAXIOV).
const UIO_MAXIOV: usize = 1024;

/// Largest piece of a request copied through the bounce buffer at once (qcow2 images).
const BOUNCE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot find the size of the image")]
    Size(#[source] io::Error),
    #[error("Cannot open the image")]
    Image(#[source] ward_image::Error),
    #[error("The image needs backing file {0:?}, which the launcher did not hand over")]
    MissingBacking(String),
    #[error("Device ID {0:?} is longer than {ID_BYTES} bytes")]
    IdTooLong(String),
}

#[derive(Debug)]
enum Store {
    Raw(File),
    Image(Box<dyn ward_image::DiskImage>),
}

/// An image served as one virtio-blk disk.
#[derive(Debug)]
pub struct Disk {
    store: Store,
    sectors: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Wraps `file`, an image (regular file or block device) opened by the launcher. The disk
    /// has as many sectors as the image holds whole 512-byte sectors; a trailing partial sector
    /// is not exposed. `id` is the GET_ID answer, zero padded.
    pub fn new(file: File, readonly: bool, id: &str) -> Result<Self, Error> {
        let id = id_bytes(id)?;
        // Seeking to the end works for regular files and block devices alike; the position
        // does not matter afterwards, all I/O is positioned.
        let size = (&file).seek(SeekFrom::End(0)).map_err(Error::Size)?;
        Ok(Disk {
            store: Store::Raw(file),
            sectors: size / SECTOR_SIZE,
            readonly,
            id,
        })
    }

    /// Opens `file` in `format` (or the format its header says). A qcow2 image's backing
    /// files come from `backing`, by the names the images store; the worker opens nothing.
    pub fn open(
        file: File,
        format: Option<ward_image::Format>,
        readonly: bool,
        id: &str,
        mut backing: Vec<(String, File)>,
    ) -> Result<Self, Error> {
        let format = match format {
            Some(f) => f,
            None => ward_image::detect_format(&file).map_err(Error::Image)?,
        };
        if format == ward_image::Format::Raw {
            return Self::new(file, readonly, id);
        }
        let mut missing = None;
        let mut resolve = |name: &str| -> io::Result<File> {
            match backing.iter().position(|(n, _)| n == name) {
                Some(i) => Ok(backing.swap_remove(i).1),
                None => {
                    missing = Some(name.to_string());
                    Err(io::ErrorKind::NotFound.into())
                }
            }
        };
        let image = ward_image::open(file, Some(format), readonly, &mut resolve);
        let image = match (image, missing) {
            (Ok(i), _) => i,
            (Err(_), Some(name)) => return Err(Error::MissingBacking(name)),
            (Err(e), None) => return Err(Error::Image(e)),
        };
        Ok(Disk {
            sectors: image.virtual_size() / SECTOR_SIZE,
            store: Store::Image(image),
            readonly,
            id: id_bytes(id)?,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Capacity in bytes (whole sectors only).
    pub fn capacity(&self) -> u64 {
        self.sectors * SECTOR_SIZE
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Fills `bufs`, in order, from the image starting at byte `offset`. The caller has checked
    /// that the range lies within the capacity; a short image (truncated behind our back) is an
    /// error, not a partial success.
    pub fn read_into<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        let file = match &self.store {
            Store::Raw(f) => f,
            Store::Image(img) => return bounce(img.as_ref(), offset, bufs, Direction::Read),
        };
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let mut iovs: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let res = transfer(file, offset, &mut iovs, Direction::Read);
        // As vm-memory does for a failed read: anything may have been written.
        for b in bufs {
            b.bitmap().mark_dirty(0, b.len());
        }
        res
    }

    /// Writes `bufs`, in order, to the image starting at byte `offset`.
    pub fn write_from<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        let file = match &self.store {
            Store::Raw(f) => f,
            Store::Image(img) => return bounce(img.as_ref(), offset, bufs, Direction::Write),
        };
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard()).collect();
        let mut iovs: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        transfer(file, offset, &mut iovs, Direction::Write)
    }

    /// DISCARD and WRITE_ZEROES: `len` bytes at `offset` read as zeros afterwards. Raw images
    /// punch a hole when `unmap` (else zero the range in place), falling back to writing zeros
    /// where the file system can do neither; qcow2 images use zero clusters.
    pub fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        match &self.store {
            Store::Image(img) => img.write_zeroes(offset, len).map_err(io::Error::other),
            Store::Raw(f) => {
                use nix::fcntl::{fallocate, FallocateFlags};
                let mode = if unmap {
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
                } else {
                    FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE
                };
                let (off, n) = (
                    libc::off_t::try_from(offset)
                        .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?,
                    libc::off_t::try_from(len)
                        .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?,
                );
                if fallocate(f.as_raw_fd(), mode, off, n).is_ok() {
                    return Ok(());
                }
                // Block devices and some file systems: write the zeros.
                let zeros = vec![0u8; BOUNCE.min(usize::try_from(len).unwrap_or(BOUNCE))];
                let mut done = 0u64;
                while done < len {
                    let k = (len - done).min(zeros.len() as u64) as usize;
                    std::os::unix::fs::FileExt::write_all_at(f, &zeros[..k], offset + done)?;
                    done += k as u64;
                }
                Ok(())
            }
        }
    }

    /// VIRTIO_BLK_T_FLUSH: data written so far (and, for qcow2, the metadata that maps it)
    /// reaches stable storage.
    pub fn flush(&self) -> io::Result<()> {
        match &self.store {
            Store::Raw(f) => f.sync_data(),
            Store::Image(img) => img.flush().map_err(io::Error::other),
        }
    }
}

/// Moves guest buffers to or from the image, [`BOUNCE`] bytes at a time.
fn bounce<B: BitmapSlice>(
    img: &dyn ward_image::DiskImage,
    mut offset: u64,
    bufs: &[VolatileSlice<'_, B>],
    dir: Direction,
) -> io::Result<()> {
    let mut tmp = vec![0u8; BOUNCE.min(bufs.iter().map(|b| b.len()).sum())];
    for b in bufs {
        let mut done = 0;
        while done < b.len() {
            let n = (b.len() - done).min(BOUNCE);
            let piece = b.subslice(done, n).map_err(io::Error::other)?;
            match dir {
                Direction::Read => {
                    img.read_at(&mut tmp[..n], offset)
                        .map_err(io::Error::other)?;
                    piece.copy_from(&tmp[..n]);
                }
                Direction::Write => {
                    piece.copy_to(&mut tmp[..n]);
                    img.write_at(&tmp[..n], offset).map_err(io::Error::other)?;
                }
            }
            done += n;
            offset += n as u64;
        }
    }
    Ok(())
}

fn id_bytes(id: &str) -> Result<[u8; ID_BYTES], Error> {
    let src = id.as_bytes();
    if src.len() > ID_BYTES {
        return Err(Error::IdTooLong(id.to_string()));
    }
    let mut out = [0u8; ID_BYTES];
    out[..src.len()].copy_from_slice(src);
    Ok(out)
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Moves every byte described by `iovs` at `offset` of `file`, retrying on short transfers and
/// EINTR. `iovs` is consumed (its entries are advanced past what was transferred).
fn transfer(
    file: &File,
    mut offset: u64,
    iovs: &mut [libc::iovec],
    dir: Direction,
) -> io::Result<()> {
    let fd = file.as_raw_fd();
    let mut start = 0;
    loop {
        while start < iovs.len() && iovs[start].iov_len == 0 {
            start += 1;
        }
        if start == iovs.len() {
            return Ok(());
        }
        let pending = &iovs[start..];
        let count = pending.len().min(UIO_MAXIOV);
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let n = match dir {
            // SAFETY: `fd` is the image, open for the life of `file`. Each of the `count`
            // iovecs describes a buffer of guest memory that a `VolatileSlice` covers: mapped
            // and writable for at least `iov_len` bytes while the caller's slices (and the
            // guest memory mapping they borrow) live, which outlasts this call. The kernel
            // writes only within those buffers.
            Direction::Read => unsafe {
                libc::preadv(fd, pending.as_ptr(), count as libc::c_int, off)
            },
            // SAFETY: as above; the kernel only reads the buffers.
            Direction::Write => unsafe {
                libc::pwritev(fd, pending.as_ptr(), count as libc::c_int, off)
            },
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut n = usize::try_from(n).expect("a non-negative ssize_t fits in usize");
        if n == 0 {
            return Err(match dir {
                Direction::Read => io::ErrorKind::UnexpectedEof.into(),
                Direction::Write => io::ErrorKind::WriteZero.into(),
            });
        }
        offset += n as u64;
        while n > 0 {
            let iov = &mut iovs[start];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                iov.iov_len = 0;
                start += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(n).cast();
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    use super::*;

    pub(crate) fn memfd_image(len: u64) -> File {
        let fd = nix::sys::memfd::memfd_create(
            c"ward-block-test",
            nix::sys::memfd::MemFdCreateFlag::empty(),
        )
        .expect("memfd_create");
        let f = File::from(fd);
        f.set_len(len).expect("set_len");
        f
    }

    #[test]
    fn capacity_counts_whole_sectors_only() {
        let d = Disk::new(memfd_image(4 * 512 + 100), false, "x").unwrap();
        assert_eq!(d.sectors(), 4);
        assert_eq!(d.capacity(), 2048);
    }

    #[test]
    fn id_is_zero_padded_and_bounded() {
        let d = Disk::new(memfd_image(512), true, "vda").unwrap();
        assert_eq!(&d.id()[..4], b"vda\0");
        assert!(d.id()[3..].iter().all(|&b| b == 0));
        assert!(Disk::new(memfd_image(512), true, &"x".repeat(20)).is_ok());
        assert!(matches!(
            Disk::new(memfd_image(512), true, &"x".repeat(21)),
            Err(Error::IdTooLong(_))
        ));
    }

    #[test]
    fn vectored_io_across_many_slices_round_trips() {
        // More slices than one preadv takes, to exercise the batching.
        let n = UIO_MAXIOV + 10;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), n * 8)]).unwrap();
        let file = memfd_image((n * 8) as u64 + 512);
        let pattern: Vec<u8> = (0..n * 8).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&pattern, 512).unwrap();
        let d = Disk::new(file, false, "x").unwrap();
        let slices: Vec<_> = (0..n)
            .map(|i| mem.get_slice(GuestAddress((i * 8) as u64), 8).unwrap())
            .collect();
        d.read_into(512, &slices).unwrap();
        let mut back = vec![0u8; n * 8];
        mem.read_slice(&mut back, GuestAddress(0)).unwrap();
        assert_eq!(back, pattern);

        d.write_from(0, &slices[..64]).unwrap();
        let mut img = vec![0u8; 512];
        let Store::Raw(f) = &d.store else {
            panic!("a raw disk")
        };
        f.read_exact_at(&mut img, 0).unwrap();
        assert_eq!(img, pattern[..512]);
    }

    #[test]
    fn reading_past_the_end_of_the_file_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        let d = Disk::new(memfd_image(1024), false, "x").unwrap();
        let s = [mem.get_slice(GuestAddress(0), 1024).unwrap()];
        assert_eq!(
            d.read_into(512, &s).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn qcow2_images_read_and_write_through_the_bounce_buffer() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 3 << 20)]).unwrap();
        let base = memfd_image(4 << 20);
        base.write_all_at(&[0x5au8; 4096], 0).unwrap();
        let over = memfd_image(0);
        let mut opts = ward_image::Qcow2CreateOptions::new(4 << 20);
        opts.backing_file = Some("base.raw".into());
        opts.backing_format = Some(ward_image::Format::Raw);
        ward_image::create_qcow2(&over, &opts).unwrap();
        // The chain is handed over by name; a missing backing file is named in the error.
        let err = Disk::open(over.try_clone().unwrap(), None, false, "q", vec![]).unwrap_err();
        assert!(
            matches!(err, Error::MissingBacking(ref n) if n == "base.raw"),
            "{err:?}"
        );
        let d = Disk::open(over, None, false, "q", vec![("base.raw".into(), base)]).unwrap();
        assert_eq!(d.sectors(), (4 << 20) / SECTOR_SIZE);
        // More than one bounce buffer's worth, across two guest buffers.
        let a = mem.get_slice(GuestAddress(0), 1 << 20).unwrap();
        let b = mem
            .get_slice(GuestAddress(1 << 20), (1 << 20) + 4096)
            .unwrap();
        d.read_into(0, &[a, b]).unwrap();
        let mut head = vec![0u8; 8192];
        mem.read_slice(&mut head, GuestAddress(0)).unwrap();
        assert!(
            head[..4096].iter().all(|&x| x == 0x5a),
            "backing data shows through"
        );
        assert!(head[4096..].iter().all(|&x| x == 0));
        mem.write_slice(&[0xc3u8; 4096], GuestAddress(1 << 20))
            .unwrap();
        d.write_from(8192, &[mem.get_slice(GuestAddress(1 << 20), 4096).unwrap()])
            .unwrap();
        d.flush().unwrap();
        let mut back = vec![0u8; 4096];
        let out = mem.get_slice(GuestAddress(2 << 20), 4096).unwrap();
        d.read_into(8192, &[out]).unwrap();
        mem.read_slice(&mut back, GuestAddress(2 << 20)).unwrap();
        assert!(back.iter().all(|&x| x == 0xc3));
    }
}
