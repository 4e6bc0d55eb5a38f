//! The console log: every byte the guest writes, in a file the launcher opened, rotated into
//! a second file without any path access.
//!
//! The current log holds at most `max` bytes. When a write would take it past that, its newest
//! `max` bytes (all of it, normally) are copied into the old log, which is truncated first, and
//! the current log is truncated to 0; writing goes on there. So the two files together hold
//! between `max` and `2 × max` of the newest bytes once that much was written (old, then
//! current, is the output in order), and never more than `2 × max` bytes on disk.
//!
//! The copy is `copy_file_range`, or `pread`/`pwrite` where the file system cannot do that
//! (different file systems, or an old kernel). It reads the current log, so that descriptor
//! must be open for reading as well as writing; writes go through `O_APPEND`, so truncating
//! the file is all it takes to start over at offset 0.
//!
//! A failed copy loses the previous log but not the bound: the current log is truncated
//! anyway and the write goes on. A failed truncation of the current log stops that write (the
//! bytes are dropped, counted by the caller) rather than letting the file grow.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;

/// Smallest rotation size accepted: below this, rotation would copy more than it logs.
pub const MIN_MAX: u64 = 4096;
/// Chunk of the `pread`/`pwrite` fallback copy.
const COPY_CHUNK: usize = 64 * 1024;

/// Why writing the log failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot write the log")]
    Write(#[source] io::Error),
    #[error("Cannot truncate the old log")]
    TruncateOld(#[source] io::Error),
    #[error("Cannot copy the log into the old log")]
    Copy(#[source] io::Error),
    #[error("Cannot truncate the log")]
    TruncateCurrent(#[source] io::Error),
}

/// What one [`Log::write`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes that reached the log.
    pub bytes: u64,
    /// Rotations it took.
    pub rotations: u64,
}

/// The current and the old log, and how full the current one is.
#[derive(Debug)]
pub struct Log {
    cur: File,
    old: File,
    max: u64,
    /// Bytes in the current log, as far as this process knows (its size when it was handed
    /// over, plus what was written since).
    size: u64,
}

impl Log {
    /// Takes over the two files; `size` is the current log's size now. `max` is at least
    /// [`MIN_MAX`] (the caller validated it).
    pub fn new(cur: File, old: File, max: u64, size: u64) -> Log {
        Log {
            cur,
            old,
            max: max.max(MIN_MAX),
            size,
        }
    }

    /// Bytes in the current log.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `data`, rotating as often as needed so the current log never exceeds `max`.
    /// On error, the [`Written`] beside it says what got done before it; the caller counts the
    /// error, and later writes try again.
    pub fn write(&mut self, mut data: &[u8]) -> Result<Written, (Written, Error)> {
        let mut done = Written::default();
        let mut copy_error = None;
        while !data.is_empty() {
            if self.size >= self.max {
                match self.rotate() {
                    Ok(()) => {}
                    Err(e @ Error::Copy(_)) => copy_error = Some(e),
                    Err(e) => return Err((done, e)),
                }
                done.rotations += 1;
            }
            let room = usize::try_from(self.max - self.size).unwrap_or(usize::MAX);
            let chunk = &data[..room.min(data.len())];
            match (&self.cur).write(chunk) {
                Ok(0) => return Err((done, Error::Write(io::ErrorKind::WriteZero.into()))),
                Ok(n) => {
                    self.size += n as u64;
                    done.bytes += n as u64;
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((done, Error::Write(e))),
            }
        }
        match copy_error {
            None => Ok(done),
            Some(e) => Err((done, e)),
        }
    }

    /// Moves the newest `max` bytes of the current log into the old one and empties the
    /// current one.
    fn rotate(&mut self) -> Result<(), Error> {
        let keep = self.size.min(self.max);
        let from = self.size - keep;
        self.old.set_len(0).map_err(Error::TruncateOld)?;
        let copied = copy(&self.cur, from, &self.old, keep);
        self.cur.set_len(0).map_err(Error::TruncateCurrent)?;
        self.size = 0;
        copied.map_err(Error::Copy)
    }
}

/// Copies `len` bytes at `from` in `src` to the start of `dst`, stopping early at the end of
/// `src` (someone else may have truncated it).
pub fn copy(src: &File, from: u64, dst: &File, len: u64) -> io::Result<()> {
    match copy_in_kernel(src, from, dst, len) {
        Ok(()) => Ok(()),
        Err(Fallback(0)) => copy_through_memory(src, from, dst, 0, len),
        Err(Fallback(done)) => copy_through_memory(src, from + done, dst, done, len - done),
    }
}

/// `copy_file_range` could not (or could no longer) do the copy; this many bytes were done.
struct Fallback(u64);

fn copy_in_kernel(src: &File, from: u64, dst: &File, len: u64) -> Result<(), Fallback> {
    let mut done = 0u64;
    while done < len {
        let (Ok(mut off_in), Ok(mut off_out)) = (i64::try_from(from + done), i64::try_from(done))
        else {
            return Err(Fallback(done));
        };
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => return Ok(()),
            Ok(n) => done += n as u64,
            Err(Errno::EINTR) => {}
            // Different file systems, a kernel or file system without it, or anything else:
            // the plain copy reports real errors.
            Err(_) => return Err(Fallback(done)),
        }
    }
    Ok(())
}

/// `pread`/`pwrite` copy of `len` bytes from `src` at `from` to `dst` at `to`.
pub fn copy_through_memory(src: &File, from: u64, dst: &File, to: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match src.read_at(&mut buf[..want], from + done) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(name: &std::ffi::CStr) -> File {
        File::from(
            nix::sys::memfd::memfd_create(name, nix::sys::memfd::MemFdCreateFlag::empty())
                .expect("memfd_create"),
        )
    }

    fn contents(f: &File) -> Vec<u8> {
        let len = f.metadata().unwrap().len();
        let mut v = vec![0u8; len as usize];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    /// The current log opened as the launcher does: appending.
    fn appending(f: &File) -> File {
        use std::os::fd::AsRawFd;
        let dup = f.try_clone().unwrap();
        let fd = dup.as_raw_fd();
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_APPEND;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        dup
    }

    fn check_bound_and_suffix(cur: &File, old: &File, max: u64, all: &[u8]) {
        let (c, o) = (contents(cur), contents(old));
        assert!(c.len() as u64 <= max, "current {} > {max}", c.len());
        assert!(o.len() as u64 <= max, "old {} > {max}", o.len());
        let kept = [o, c].concat();
        assert!(
            all.ends_with(&kept),
            "old + current is not the newest output"
        );
        // At least the newest `max` bytes survive (or everything, if less was written).
        assert!(kept.len() as u64 >= max.min(all.len() as u64));
    }

    #[test]
    fn rotation_keeps_the_newest_bytes_within_the_bound() {
        let (cur, old) = (memfd(c"cur"), memfd(c"old"));
        let max = MIN_MAX;
        let mut log = Log::new(appending(&cur), old.try_clone().unwrap(), max, 0);
        let mut all = Vec::new();
        let mut rotations = 0;
        // Chunks of every size around the bound, including ones larger than two logs.
        for (i, len) in [1usize, 100, 4095, 1, 4096, 5000, 12_345, 3, 0, 8192, 77]
            .iter()
            .enumerate()
        {
            let chunk: Vec<u8> = (0..*len).map(|j| ((i * 31 + j) % 251) as u8).collect();
            let w = log.write(&chunk).unwrap();
            assert_eq!(w.bytes, *len as u64);
            rotations += w.rotations;
            all.extend_from_slice(&chunk);
            check_bound_and_suffix(&cur, &old, max, &all);
        }
        assert!(rotations >= 8, "{rotations}");
        assert_eq!(log.size(), contents(&cur).len() as u64);
    }

    #[test]
    fn exactly_full_log_rotates_on_the_next_byte_only() {
        let (cur, old) = (memfd(c"cur"), memfd(c"old"));
        let mut log = Log::new(appending(&cur), old.try_clone().unwrap(), MIN_MAX, 0);
        let w = log.write(&vec![b'a'; MIN_MAX as usize]).unwrap();
        assert_eq!(w.rotations, 0);
        assert!(contents(&old).is_empty());
        let w = log.write(b"b").unwrap();
        assert_eq!(w.rotations, 1);
        assert_eq!(contents(&old), vec![b'a'; MIN_MAX as usize]);
        assert_eq!(contents(&cur), b"b");
    }

    #[test]
    fn an_oversized_log_from_before_keeps_only_its_newest_bytes() {
        let (cur, old) = (memfd(c"cur"), memfd(c"old"));
        let before: Vec<u8> = (0..3 * MIN_MAX).map(|i| (i % 253) as u8).collect();
        cur.write_all_at(&before, 0).unwrap();
        old.write_all_at(b"stale old log", 0).unwrap();
        let mut log = Log::new(
            appending(&cur),
            old.try_clone().unwrap(),
            MIN_MAX,
            3 * MIN_MAX,
        );
        log.write(b"new").unwrap();
        assert_eq!(contents(&old), before[2 * MIN_MAX as usize..]);
        assert_eq!(contents(&cur), b"new");
    }

    #[test]
    fn fallback_copy_matches_the_kernel_copy() {
        let src = memfd(c"src");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        src.write_all_at(&data, 0).unwrap();
        for (from, len) in [(0u64, 200_000u64), (1000, 70_000), (150_000, 100_000)] {
            let (a, b) = (memfd(c"a"), memfd(c"b"));
            copy(&src, from, &a, len).unwrap();
            copy_through_memory(&src, from, &b, 0, len).unwrap();
            let end = (from + len).min(data.len() as u64) as usize;
            assert_eq!(contents(&a), data[from as usize..end]);
            assert_eq!(contents(&b), data[from as usize..end]);
        }
    }

    #[test]
    fn write_errors_are_reported_not_panicked() {
        let (cur, old) = (memfd(c"cur"), memfd(c"old"));
        // A read-only descriptor on the current log: every write fails.
        let ro = File::open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&cur)
        ))
        .unwrap();
        let mut log = Log::new(ro, old, MIN_MAX, 0);
        let (w, e) = log.write(b"x").unwrap_err();
        assert_eq!(w, Written::default());
        assert!(matches!(e, Error::Write(_)), "{e:?}");
    }
}
