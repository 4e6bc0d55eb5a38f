//! `convert`: copies what may hold data from one image into a new one, in a few threads.
//!
//! The source's data ranges (a qcow2 map, or SEEK_DATA/SEEK_HOLE on a raw file: holes are
//! never read) are cut into chunks. Each worker thread takes the next chunk, reads it, finds
//! the pieces that are not all zeros, waits for its turn and writes only those pieces into the
//! new image (which reads zeros elsewhere), so chunks are written in order while the other
//! workers read the chunks after it — much as qemu-img's coroutines do. The output is a
//! temporary file renamed into place only when everything (with `-t writeback`, its sync too)
//! succeeded.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use anyhow::Context;
use ward_image::qcow2::MapKind;
use ward_image::{DiskImage, Format, Qcow2CreateOptions, Qcow2Image};

use crate::commands::{apply_options, format_arg, open_image, resolver_for, Temp};

/// Bytes read per step.
const CHUNK: u64 = 2 << 20;
/// Worker threads, each reading, scanning and (in its turn) writing one chunk at a time.
const WORKERS: usize = 3;

pub struct ConvertArgs<'a> {
    pub input: &'a Path,
    pub format: Option<&'a str>,
    pub output: &'a Path,
    pub out_format: &'a str,
    pub options: Option<&'a str>,
    pub progress: bool,
    /// Sync the output before renaming it into place (`-t writeback`); the default `-t
    /// unsafe` skips it, as qemu-img's convert does by default.
    pub sync: bool,
}

/// What the workers share: the next chunk to read, whose turn it is to write, and whether one
/// of them failed.
struct Shared {
    next: AtomicUsize,
    turn: Mutex<usize>,
    cv: Condvar,
    failed: AtomicBool,
    progress: Mutex<Progress>,
}

struct Progress {
    copied: u64,
    last_pct: u64,
}

pub fn convert(a: ConvertArgs<'_>) -> anyhow::Result<u8> {
    let out_format = format_arg(Some(a.out_format))?.context("an output format is required")?;
    let (f, fmt) = open_image(a.input, a.format, false)?;
    let (src, ranges) = open_source(a.input, f, fmt)?;
    let size = src.virtual_size();
    let (tmp, out) = Temp::new(a.output)?;
    let grain = match out_format {
        Format::Raw => {
            ward_image::create_raw(&out, size)?;
            4096
        }
        Format::Qcow2 => {
            let mut opts = Qcow2CreateOptions::new(size);
            apply_options(a.options, &mut opts)?;
            ward_image::create_qcow2(&out, &opts)?;
            // A qcow2 cluster is allocated whole: zeros are worth skipping per cluster.
            1usize << opts.cluster_bits
        }
    };
    let mut no_backing = |n: &str| -> std::io::Result<File> {
        Err(std::io::Error::other(format!(
            "unexpected backing file {n}"
        )))
    };
    // The output is a new file nobody sees until the rename: its writes need not be ordered
    // for crash safety (a failure deletes it), only flushed once at the end.
    let (qcow2_out, raw_out) = match out_format {
        Format::Qcow2 => {
            let q = Qcow2Image::open(out.try_clone()?, false, &mut no_backing)?;
            q.set_ordered_writes(false);
            (Some(q), None)
        }
        Format::Raw => (
            None,
            Some(ward_image::open(
                out.try_clone()?,
                Some(out_format),
                false,
                &mut no_backing,
            )?),
        ),
    };
    let dst: &dyn DiskImage = match (&qcow2_out, &raw_out) {
        (Some(q), _) => q,
        (None, Some(r)) => &**r,
        (None, None) => unreachable!("one output is open"),
    };
    let total: u64 = ranges.iter().map(|(_, len)| len).sum();

    let chunks = split_chunks(&ranges);
    let shared = Shared {
        next: AtomicUsize::new(0),
        turn: Mutex::new(0),
        cv: Condvar::new(),
        failed: AtomicBool::new(false),
        progress: Mutex::new(Progress {
            copied: 0,
            last_pct: u64::MAX,
        }),
    };
    let src = &*src;
    let result = std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let (chunks, shared) = (&chunks, &shared);
                s.spawn(move || {
                    let r = copy_chunks(src, dst, chunks, grain, shared, total, a.progress);
                    if r.is_err() {
                        // Wake the others: none may wait for a turn that will never come.
                        shared.failed.store(true, Ordering::Relaxed);
                        let _t = shared.turn.lock().unwrap_or_else(|e| e.into_inner());
                        shared.cv.notify_all();
                    }
                    r
                })
            })
            .collect();
        let mut result = Ok(());
        for w in workers {
            let r = w.join().expect("a worker does not panic");
            // The first error is the cause; later ones only saw it.
            if result.is_ok() {
                result = r;
            }
        }
        result
    });
    result?;
    // The new image's tables are written out here, where an error still fails the command
    // (dropping the image would write them too, but could not report a failure).
    if let Some(q) = &qcow2_out {
        q.write_metadata()?;
    }
    if a.sync {
        dst.flush()?;
    }
    drop(qcow2_out);
    drop(raw_out);
    if a.sync {
        out.sync_all()?;
    }
    tmp.commit()?;
    if a.progress {
        eprintln!();
    }
    Ok(0)
}

/// Splits `ranges` into chunks that end on multiples of CHUNK, so output clusters are
/// written whole.
fn split_chunks(ranges: &[(u64, u64)]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let end = start + len;
        let mut off = start;
        while off < end {
            let next = ((off / CHUNK + 1) * CHUNK).min(end);
            out.push((off, usize::try_from(next - off).expect("at most CHUNK")));
            off = next;
        }
    }
    out
}

/// One worker: takes the next chunk, reads it and finds its non-zero pieces, then waits for its
/// turn and writes them. Chunks are written in their order, so a new qcow2 image's clusters
/// follow the guest's order on the host, while other workers read the chunks after it.
fn copy_chunks(
    src: &dyn DiskImage,
    dst: &dyn DiskImage,
    chunks: &[(u64, usize)],
    grain: usize,
    shared: &Shared,
    total: u64,
    progress: bool,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(&(off, n)) = chunks.get(i) else {
            return Ok(());
        };
        if shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        src.read_at(&mut buf[..n], off)
            .with_context(|| format!("cannot read the source at {off}"))?;
        let pieces = nonzero_pieces(&buf[..n], off, grain);
        let mut turn = shared.turn.lock().unwrap_or_else(|e| e.into_inner());
        while *turn != i {
            if shared.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            turn = shared.cv.wait(turn).unwrap_or_else(|e| e.into_inner());
        }
        for &(start, len) in &pieces {
            let at = off + start as u64;
            dst.write_at(&buf[start..start + len], at)
                .with_context(|| format!("cannot write the output at {at}"))?;
        }
        *turn += 1;
        drop(turn);
        shared.cv.notify_all();
        if progress {
            let mut p = shared.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.copied += n as u64;
            let pct = p.copied * 100 / total.max(1);
            if pct != p.last_pct {
                eprint!("\r    ({pct}.00/100%)");
                let _ = std::io::stderr().flush();
                p.last_pct = pct;
            }
        }
    }
}

/// Whether `b` is all zeros. Folding 256 bytes at a time lets the compiler use vector ORs,
/// where `iter().all()` would test byte by byte.
fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(256);
    for blk in &mut blocks {
        if blk.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&x| x == 0)
}

/// The pieces of `buf` (which starts at image offset `off`) that are not all zeros, checked
/// per `grain`-aligned (in the image) piece, with neighbours merged.
fn nonzero_pieces(buf: &[u8], off: u64, grain: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut i = 0usize;
    while i < buf.len() {
        let in_grain =
            usize::try_from(off.wrapping_add(i as u64) % grain as u64).expect("below the grain");
        let n = (grain - in_grain).min(buf.len() - i);
        if !is_zero(&buf[i..i + n]) {
            match out.last_mut() {
                Some((s, l)) if *s + *l == i => *l += n,
                _ => out.push((i, n)),
            }
        }
        i += n;
    }
    out
}

/// (start, length) ranges of a disk.
type Ranges = Vec<(u64, u64)>;

/// Opens the source (read-only, once) and finds the ranges that may hold data, merged and in
/// order: a qcow2 image's allocated clusters when it has no backing file, a raw file's
/// SEEK_DATA ranges, else everything.
fn open_source(path: &Path, f: File, fmt: Format) -> anyhow::Result<(Box<dyn DiskImage>, Ranges)> {
    match fmt {
        Format::Qcow2 => {
            let img = Qcow2Image::open(f, true, &mut resolver_for(path))?;
            let size = img.virtual_size();
            let ranges = if img.header().backing_file.is_none() {
                let mut out: Vec<(u64, u64)> = Vec::new();
                for e in img.map()? {
                    if matches!(e.kind, MapKind::Data | MapKind::Compressed) {
                        match out.last_mut() {
                            Some((s, l)) if *s + *l == e.start => *l += e.length,
                            _ => out.push((e.start, e.length)),
                        }
                    }
                }
                out
            } else {
                vec![(0, size)]
            };
            Ok((Box::new(img), ranges))
        }
        Format::Raw => {
            let img = ward_image::open(f.try_clone()?, Some(fmt), true, &mut resolver_for(path))?;
            let ranges = raw_data_ranges(&f, img.virtual_size());
            Ok((img, ranges))
        }
    }
}

/// A raw file's data ranges by SEEK_DATA/SEEK_HOLE (holes read as zeros); the whole file when
/// the file system cannot tell.
fn raw_data_ranges(f: &File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).unwrap_or(i64::MAX);
    while pos < end {
        let Ok(data) = lseek(f.as_raw_fd(), pos, Whence::SeekData) else {
            // ENXIO: no data after pos; anything else: the file system can't say.
            if nix::errno::Errno::last() == nix::errno::Errno::ENXIO {
                break;
            }
            return vec![(0, size)];
        };
        let hole = lseek(f.as_raw_fd(), data, Whence::SeekHole)
            .unwrap_or(end)
            .min(end);
        if hole > data {
            out.push((data as u64, (hole - data) as u64));
        }
        pos = hole;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_at_every_position() {
        for len in [0usize, 1, 255, 256, 257, 4096, 70_000] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b));
            for i in [0, len / 2, len.saturating_sub(1)] {
                if i < len {
                    b[i] = 1;
                    assert!(!is_zero(&b), "byte {i} of {len}");
                    b[i] = 0;
                }
            }
        }
    }

    #[test]
    fn pieces_follow_image_grains_and_merge() {
        // The buffer starts 1 KiB into a 4 KiB grain: its first piece is 3 KiB long.
        let mut b = vec![0u8; 3072 + 4096 * 3];
        b[10] = 1; // first (partial) grain
        b[3072 + 4096 + 5] = 1; // third grain
        b[3072 + 8192 + 4095] = 1; // fourth grain, last byte: merges with the third
        assert_eq!(
            nonzero_pieces(&b, 1024, 4096),
            vec![(0, 3072), (3072 + 4096, 8192)]
        );
        assert!(nonzero_pieces(&vec![0u8; 8192], 0, 4096).is_empty());
    }
}
