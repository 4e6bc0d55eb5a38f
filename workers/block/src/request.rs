//! One virtio-blk request: a descriptor chain the guest placed in the queue, parsed with full
//! validation into an operation, executed against the [`Disk`], and answered with a status byte.
//!
//! The guest is hostile. Nothing here panics on guest data, and no byte outside guest memory or
//! outside the image is touched.
//!
//! # Framing
//!
//! Per the spec's message framing rule (virtio 1.2, 2.6.4), nothing is assumed about how a
//! request is cut into descriptors. The device-readable bytes of the chain, in order, are the
//! 16-byte header followed by the data to write; the device-writable bytes are the data to read
//! followed by the status byte, which is the last byte of the chain. So a header split over two
//! descriptors, or data and status in one descriptor, are served like the usual
//! header / data / status layout.
//!
//! # Validation, and how each failure is answered
//!
//! | chain                                                         | status      | used len |
//! |---------------------------------------------------------------|-------------|----------|
//! | does not end (loop, index out of range, nested or malformed   | none        | 0        |
//! | indirect table, descriptor table not in guest memory)         |             |          |
//! | last descriptor not writable, empty, or outside guest memory  | none        | 0        |
//! | more than [`MAX_DESCRIPTORS`] descriptors                     | IOERR       | 1        |
//! | a buffer outside guest memory                                 | IOERR       | 1        |
//! | a readable descriptor after a writable one                    | IOERR       | 1        |
//! | fewer than 16 readable bytes (no full header)                 | IOERR       | 1        |
//! | unknown request type                                          | UNSUPP      | 1        |
//! | data of the wrong direction for the type, IN/OUT data empty   | IOERR       | 1        |
//! | or not a multiple of 512 bytes, GET_ID buffer empty           |             |          |
//! | sectors beyond the capacity, or overflowing `sector*512+len`  | IOERR       | 1        |
//! | OUT on a read-only disk                                       | IOERR       | 1        |
//! | the image read, write or flush fails                          | IOERR       | 1        |
//! | valid IN                                                      | OK          | data + 1 |
//! | valid GET_ID (answer cut to the buffer, at most 20 bytes)     | OK          | id + 1   |
//! | valid OUT, FLUSH (also allowed on a read-only disk)           | OK          | 1        |
//!
//! A chain without an end has no last byte, hence no status byte: it is completed with length
//! 0 rather than having a status written into some buffer the driver meant as data. Every chain
//! is completed with its head index, so the guest is never left waiting; only a head index
//! outside the queue cannot be (the caller counts that).

use std::io;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;

use tracing::warn;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, VolatileSlice};

use crate::disk::{Disk, SECTOR_SIZE};
use crate::metrics::{should_log, Metrics};
use crate::GuestMem;

/// Size of `struct virtio_blk_outhdr`: type (le32), ioprio (le32), sector (le64).
pub const HEADER_SIZE: usize = 16;
/// Most descriptors one chain may have. Linux uses at most `seg_max` + 2; an indirect table may
/// hold up to 65535, and accepting that many would only let a guest make us allocate.
pub const MAX_DESCRIPTORS: usize = 1024;

/// How a chain goes back to the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Head index of the chain.
    pub head: u16,
    /// Bytes written into the chain: data read plus the status byte, or 0 when there was no
    /// status byte to write.
    pub used_len: u32,
}

/// A validated request, with the guest buffers it needs.
#[derive(Debug)]
enum Op {
    /// Read `dst.len` bytes at byte `offset` of the image into `dst`.
    Read {
        offset: u64,
        dst: Buffers,
    },
    /// Write `src` at byte `offset` of the image.
    Write {
        offset: u64,
        src: Buffers,
    },
    Flush,
    GetId {
        dst: Buffers,
    },
    /// Let `len` bytes at `offset` go (they may read back as anything; ward zeroes them).
    Discard {
        offset: u64,
        len: u64,
    },
    /// Make `len` bytes at `offset` read as zeros, deallocating them if `unmap`.
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
}

/// `struct virtio_blk_discard_write_zeroes`: sector (le64), num_sectors (le32), flags (le32).
pub const RANGE_SEGMENT_SIZE: u64 = 16;
/// The one flag: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
const FLAG_UNMAP: u32 = 1;
/// Most sectors one DISCARD or WRITE_ZEROES may cover (`max_discard_sectors`,
/// `max_write_zeroes_sectors`): 1 GiB.
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;

/// Why a request failed. Each kind has its counter and answer (see the module table).
#[derive(Debug)]
enum Fault {
    BadChain,
    NoStatus,
    TooManyDescriptors(usize),
    OutOfMemory {
        addr: u64,
        len: u64,
    },
    BadOrder,
    BadHeader(u64),
    BadData {
        kind: u32,
        readable: u64,
        writable: u64,
    },
    OutOfRange {
        sector: u64,
        len: u64,
    },
    ReadOnly,
    Unsupported(u32),
    Io(io::Error),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::BadChain => write!(f, "descriptor chain does not end"),
            Fault::NoStatus => write!(f, "no writable status byte at the end of the chain"),
            Fault::TooManyDescriptors(n) => write!(f, "{n} descriptors in one chain"),
            Fault::OutOfMemory { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} is not in guest memory")
            }
            Fault::BadOrder => write!(f, "device-readable descriptor after a writable one"),
            Fault::BadHeader(n) => write!(f, "{n} readable bytes, short of a header"),
            Fault::BadData {
                kind,
                readable,
                writable,
            } => write!(
                f,
                "type {kind} with {readable} bytes to write and {writable} to read"
            ),
            Fault::OutOfRange { sector, len } => {
                write!(f, "{len} bytes at sector {sector} are beyond the disk")
            }
            Fault::ReadOnly => write!(f, "write to a read-only disk"),
            Fault::Unsupported(t) => write!(f, "unsupported request type {t}"),
            Fault::Io(e) => write!(f, "image I/O failed: {e}"),
        }
    }
}

impl Fault {
    fn counter<'m>(&self, m: &'m Metrics) -> &'m AtomicU64 {
        match self {
            Fault::BadChain => &m.bad_chain,
            Fault::NoStatus => &m.no_status,
            Fault::TooManyDescriptors(_) => &m.too_many_descriptors,
            Fault::OutOfMemory { .. } => &m.out_of_memory,
            Fault::BadOrder => &m.bad_order,
            Fault::BadHeader(_) => &m.bad_header,
            Fault::BadData { .. } => &m.bad_data,
            Fault::OutOfRange { .. } => &m.out_of_range,
            Fault::ReadOnly => &m.readonly,
            Fault::Unsupported(_) => &m.unsupported,
            Fault::Io(_) => &m.io_errors,
        }
    }

    fn status(&self) -> u8 {
        match self {
            Fault::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Guest buffers of one direction, in chain order, each non-empty and inside guest memory.
#[derive(Debug, Default, Clone)]
struct Buffers {
    segs: Vec<(GuestAddress, u64)>,
    len: u64,
}

impl Buffers {
    fn push(&mut self, addr: GuestAddress, len: u64) {
        if len > 0 {
            self.segs.push((addr, len));
            self.len += len;
        }
    }

    /// The first `n` bytes (at most all of them), and the rest.
    fn split_at(&self, n: u64) -> (Buffers, Buffers) {
        let mut head = Buffers::default();
        let mut tail = Buffers::default();
        let mut left = n;
        for &(addr, len) in &self.segs {
            let take = left.min(len);
            head.push(addr, take);
            // `take <= len` and `[addr, addr + len)` is guest memory: no overflow.
            tail.push(addr.unchecked_add(take), len - take);
            left -= take;
        }
        (head, tail)
    }

    /// Drops the last byte (the status byte, once it has been located).
    fn drop_last_byte(&mut self) {
        if let Some((_, len)) = self.segs.last_mut() {
            *len -= 1;
            self.len -= 1;
            if *len == 0 {
                self.segs.pop();
            }
        }
    }

    /// The buffers as volatile slices, split where guest memory regions end.
    fn slices<'m>(&self, mem: &'m GuestMem) -> Result<Vec<VolatileSlice<'m, ()>>, Fault> {
        let mut out = Vec::with_capacity(self.segs.len());
        for &(addr, len) in &self.segs {
            let bad = || Fault::OutOfMemory { addr: addr.0, len };
            let count = usize::try_from(len).map_err(|_| bad())?;
            for s in mem.get_slices(addr, count) {
                out.push(s.map_err(|_| bad())?);
            }
        }
        Ok(out)
    }

    /// Copies the first `buf.len()` bytes out of guest memory.
    fn read_prefix(&self, mem: &GuestMem, buf: &mut [u8]) -> Result<(), Fault> {
        let mut done = 0;
        for &(addr, len) in &self.segs {
            let n = (buf.len() - done).min(usize::try_from(len).unwrap_or(usize::MAX));
            mem.read_slice(&mut buf[done..done + n], addr)
                .map_err(|_| Fault::OutOfMemory { addr: addr.0, len })?;
            done += n;
            if done == buf.len() {
                break;
            }
        }
        Ok(())
    }

    /// Copies as much of `data` as fits into guest memory; returns how much that was.
    fn write_prefix(&self, mem: &GuestMem, data: &[u8]) -> Result<usize, Fault> {
        let mut done = 0;
        for &(addr, len) in &self.segs {
            let n = (data.len() - done).min(usize::try_from(len).unwrap_or(usize::MAX));
            mem.write_slice(&data[done..done + n], addr)
                .map_err(|_| Fault::OutOfMemory { addr: addr.0, len })?;
            done += n;
            if done == data.len() {
                break;
            }
        }
        Ok(done)
    }
}

/// Serves one chain: parses it, runs it against `disk`, writes the status byte, and says how to
/// complete it. `mem` is the guest memory the chain was taken from.
pub fn process<M>(
    mem: &GuestMem,
    chain: DescriptorChain<M>,
    disk: &Disk,
    metrics: &Metrics,
) -> Completion
where
    M: Deref<Target = GuestMem>,
{
    Metrics::bump(&metrics.requests);
    let head = chain.head_index();
    let (status, parsed) = parse(mem, chain, disk);
    let (code, data_len) = match parsed.and_then(|op| execute(mem, op, disk, metrics)) {
        Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
        Err(fault) => {
            report(&fault, head, metrics);
            (fault.status(), 0)
        }
    };
    let Some(status) = status else {
        return Completion { head, used_len: 0 };
    };
    if mem.write_obj(code, status).is_err() {
        // Checked when the chain was parsed; guest memory does not shrink under a request.
        report(&Fault::NoStatus, head, metrics);
        return Completion { head, used_len: 0 };
    }
    Completion {
        head,
        // The chain is at most 2^32 - 1 bytes long (the chain iterator stops otherwise).
        used_len: u32::try_from(data_len + 1).unwrap_or(u32::MAX),
    }
}

fn report(fault: &Fault, head: u16, metrics: &Metrics) {
    let n = Metrics::bump(fault.counter(metrics));
    if should_log(n) {
        warn!(head, count = n, "request failed: {fault}");
    }
}

/// Walks the chain. Returns where the status byte is (if the chain has one) and the operation,
/// or why the request is invalid.
fn parse<M>(
    mem: &GuestMem,
    chain: DescriptorChain<M>,
    disk: &Disk,
) -> (Option<GuestAddress>, Result<Op, Fault>)
where
    M: Deref<Target = GuestMem>,
{
    // The chain iterator stops at the end of the chain, but also on a loop (it yields at most
    // queue-size descriptors), a next index out of range, a nested or malformed indirect table,
    // or a descriptor it cannot read. Only a last descriptor without NEXT is a proper end.
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    for d in chain {
        count += 1;
        if descs.len() < MAX_DESCRIPTORS {
            descs.push(d);
        }
        last = Some(d);
    }
    let Some(last) = last.filter(|d| !d.has_next()) else {
        return (None, Err(Fault::BadChain));
    };
    let status = (last.is_write_only() && last.len() > 0)
        .then(|| last.addr().checked_add(u64::from(last.len()) - 1))
        .flatten()
        .filter(|&a| mem.address_in_range(a));
    let Some(status) = status else {
        return (None, Err(Fault::NoStatus));
    };
    if count > MAX_DESCRIPTORS {
        return (Some(status), Err(Fault::TooManyDescriptors(count)));
    }
    (Some(status), build(mem, &descs, disk))
}

fn build(mem: &GuestMem, descs: &[Descriptor], disk: &Disk) -> Result<Op, Fault> {
    let mut readable = Buffers::default();
    let mut writable = Buffers::default();
    for d in descs.iter().filter(|d| d.len() > 0) {
        let len = u64::from(d.len());
        let in_memory = usize::try_from(len).is_ok_and(|n| mem.check_range(d.addr(), n));
        if !in_memory {
            return Err(Fault::OutOfMemory {
                addr: d.addr().0,
                len,
            });
        }
        if d.is_write_only() {
            writable.push(d.addr(), len);
        } else if writable.len > 0 {
            return Err(Fault::BadOrder);
        } else {
            readable.push(d.addr(), len);
        }
    }
    // The last descriptor is writable and non-empty (checked by the caller): its last byte is
    // the status byte, not data.
    writable.drop_last_byte();

    if readable.len < HEADER_SIZE as u64 {
        return Err(Fault::BadHeader(readable.len));
    }
    let (header, data_out) = readable.split_at(HEADER_SIZE as u64);
    let mut raw = [0u8; HEADER_SIZE];
    header.read_prefix(mem, &mut raw)?;
    let kind = u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    let bad_data = || Fault::BadData {
        kind,
        readable: data_out.len,
        writable: writable.len,
    };
    match kind {
        VIRTIO_BLK_T_IN => {
            if data_out.len != 0 || !whole_sectors(writable.len) {
                return Err(bad_data());
            }
            let offset = range(disk, sector, writable.len)?;
            Ok(Op::Read {
                offset,
                dst: writable,
            })
        }
        VIRTIO_BLK_T_OUT => {
            if writable.len != 0 || !whole_sectors(data_out.len) {
                return Err(bad_data());
            }
            if disk.readonly() {
                return Err(Fault::ReadOnly);
            }
            let offset = range(disk, sector, data_out.len)?;
            Ok(Op::Write {
                offset,
                src: data_out,
            })
        }
        VIRTIO_BLK_T_FLUSH => {
            if data_out.len != 0 || writable.len != 0 {
                return Err(bad_data());
            }
            Ok(Op::Flush)
        }
        VIRTIO_BLK_T_GET_ID => {
            if data_out.len != 0 || writable.len == 0 {
                return Err(bad_data());
            }
            Ok(Op::GetId { dst: writable })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            // One range per request: max_discard_seg and max_write_zeroes_seg are 1.
            if writable.len != 0 || data_out.len != RANGE_SEGMENT_SIZE {
                return Err(bad_data());
            }
            if disk.readonly() {
                return Err(Fault::ReadOnly);
            }
            let mut seg = [0u8; RANGE_SEGMENT_SIZE as usize];
            data_out.read_prefix(mem, &mut seg)?;
            let start = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
            let sectors = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
            // Reserved flag bits, or UNMAP on a discard, are not for us to guess at.
            if flags & !FLAG_UNMAP != 0 || (kind == VIRTIO_BLK_T_DISCARD && flags != 0) {
                return Err(Fault::Unsupported(kind));
            }
            if sectors == 0 || sectors > MAX_RANGE_SECTORS {
                return Err(bad_data());
            }
            let len = u64::from(sectors) * SECTOR_SIZE;
            let offset = range(disk, start, len)?;
            Ok(if kind == VIRTIO_BLK_T_DISCARD {
                Op::Discard { offset, len }
            } else {
                Op::WriteZeroes {
                    offset,
                    len,
                    unmap: flags & FLAG_UNMAP != 0,
                }
            })
        }
        other => Err(Fault::Unsupported(other)),
    }
}

fn whole_sectors(len: u64) -> bool {
    len > 0 && len.is_multiple_of(SECTOR_SIZE)
}

/// The byte offset of `len` bytes at `sector`, if they lie within the disk.
fn range(disk: &Disk, sector: u64, len: u64) -> Result<u64, Fault> {
    sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|off| off.checked_add(len).map(|end| (off, end)))
        .filter(|&(_, end)| end <= disk.capacity())
        .map(|(off, _)| off)
        .ok_or(Fault::OutOfRange { sector, len })
}

/// Runs a valid request; returns the bytes of data written into the chain.
fn execute(mem: &GuestMem, op: Op, disk: &Disk, metrics: &Metrics) -> Result<u64, Fault> {
    match op {
        Op::Read { offset, dst } => {
            let slices = dst.slices(mem)?;
            disk.read_into(offset, &slices).map_err(Fault::Io)?;
            Metrics::bump(&metrics.reads);
            Metrics::add(&metrics.read_bytes, dst.len);
            Ok(dst.len)
        }
        Op::Write { offset, src } => {
            let slices = src.slices(mem)?;
            disk.write_from(offset, &slices).map_err(Fault::Io)?;
            Metrics::bump(&metrics.writes);
            Metrics::add(&metrics.write_bytes, src.len);
            Ok(0)
        }
        Op::Flush => {
            disk.flush().map_err(Fault::Io)?;
            Metrics::bump(&metrics.flushes);
            Ok(0)
        }
        Op::GetId { dst } => {
            let n = dst.write_prefix(mem, disk.id())?;
            Metrics::bump(&metrics.get_ids);
            Ok(n as u64)
        }
        Op::Discard { offset, len } => {
            disk.zero_range(offset, len, true).map_err(Fault::Io)?;
            Metrics::bump(&metrics.discards);
            Ok(0)
        }
        Op::WriteZeroes { offset, len, unmap } => {
            disk.zero_range(offset, len, unmap).map_err(Fault::Io)?;
            Metrics::bump(&metrics.write_zeroes);
            Ok(0)
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
