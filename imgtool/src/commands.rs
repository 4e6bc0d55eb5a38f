//! The subcommands. Each returns the process exit code, or an error for the caller to print.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use serde_json::json;
use ward_image::qcow2::{MapKind, Repair};
use ward_image::{Format, Qcow2CreateOptions, Qcow2Image};

use crate::size;

/// Bit 0 of qcow2's incompatible features: the image was not closed cleanly.
const DIRTY_BIT: u64 = 1;

pub(crate) fn format_arg(name: Option<&str>) -> anyhow::Result<Option<Format>> {
    name.map(|n| {
        Format::from_name(n).with_context(|| format!("unknown format {n:?} (raw or qcow2)"))
    })
    .transpose()
}

/// `-U`: read images without taking a shared lock (they may be in use, and change under us).
pub(crate) static FORCE_SHARE: AtomicBool = AtomicBool::new(false);

/// Locks held until the process exits: a shared lock on every image read, an exclusive one on
/// every image written, as qemu-img does, so that an image a VM is writing (ward's launcher
/// holds an exclusive lock on it) is neither read half-written nor changed under the VM.
static LOCKS: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

fn lock(f: &File, path: &Path, write: bool) -> std::io::Result<()> {
    if !write && FORCE_SHARE.load(Ordering::Relaxed) {
        return Ok(());
    }
    let arg = if write {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    match Flock::lock(f.try_clone()?, arg) {
        Ok(l) => {
            LOCKS.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            Ok(())
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(std::io::Error::other(format!(
            "cannot get a{} lock on {}: is it in use by a running VM?{}",
            if write { "n exclusive" } else { " shared" },
            path.display(),
            if write { "" } else { " (-U reads it anyway)" }
        ))),
        Err((_, e)) => Err(e.into()),
    }
}

/// Opens backing files by the name stored in an image: relative names are relative to the
/// directory of the image that names them (as qemu resolves them). Read-only, shared-locked.
pub(crate) fn resolver_for(image: &Path) -> impl FnMut(&str) -> std::io::Result<File> {
    let dir = image.parent().map(Path::to_path_buf).unwrap_or_default();
    move |name: &str| {
        let p = Path::new(name);
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        };
        let f = File::open(&path)?;
        lock(&f, &path, false)?;
        Ok(f)
    }
}

/// Opens an image, locked: shared to read, exclusive to write.
pub(crate) fn open_file(path: &Path, write: bool) -> anyhow::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    lock(&f, path, write)?;
    Ok(f)
}

/// Opens an image (locked, see [`open_file`]) and tells its format: `format` if given, else
/// what its header says.
pub(crate) fn open_image(
    path: &Path,
    format: Option<&str>,
    write: bool,
) -> anyhow::Result<(File, Format)> {
    let f = open_file(path, write)?;
    let fmt = match format_arg(format)? {
        Some(f) => f,
        None => ward_image::detect_format(&f)?,
    };
    Ok((f, fmt))
}

/// Applies `-o key=value,...` (cluster_size, lazy_refcounts) to new-image options.
pub(crate) fn apply_options(
    options: Option<&str>,
    opts: &mut Qcow2CreateOptions,
) -> anyhow::Result<()> {
    for opt in options.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            Some(("cluster_size", v)) => {
                let n = size::parse(v).map_err(anyhow::Error::msg)?;
                if !n.is_power_of_two() {
                    bail!("cluster_size {n} is not a power of two");
                }
                opts.cluster_bits = n.trailing_zeros();
            }
            Some(("lazy_refcounts", v)) => {
                opts.lazy_refcounts = match v {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => bail!("lazy_refcounts must be on or off, not {v:?}"),
                }
            }
            _ => bail!("unknown option {opt:?} (known: cluster_size, lazy_refcounts)"),
        }
    }
    Ok(())
}

/// A temporary file beside `dest`, renamed over it by [`Temp::commit`], removed otherwise.
pub(crate) struct Temp {
    path: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Temp {
    pub(crate) fn new(dest: &Path) -> anyhow::Result<(Temp, File)> {
        let name = dest
            .file_name()
            .with_context(|| format!("{} is not a file name", dest.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".ward-img-{}", std::process::id()));
        let path = dest.with_file_name(tmp_name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok((
            Temp {
                path,
                dest: dest.to_path_buf(),
                done: false,
            },
            f,
        ))
    }

    pub(crate) fn commit(mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.path, &self.dest)
            .with_context(|| format!("cannot create {}", self.dest.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub struct CreateArgs<'a> {
    pub format: &'a str,
    pub backing: Option<&'a str>,
    pub backing_format: Option<&'a str>,
    pub options: Option<&'a str>,
    pub file: &'a Path,
    pub size: Option<&'a str>,
}

pub fn create(a: CreateArgs<'_>) -> anyhow::Result<u8> {
    let format = format_arg(Some(a.format))?.expect("given");
    let backing_format = format_arg(a.backing_format)?;
    let size = match (a.size, a.backing) {
        (Some(s), _) => size::parse(s).map_err(anyhow::Error::msg)?,
        (None, Some(b)) => {
            // The backing file's virtual size, as qemu-img does.
            let mut resolve = resolver_for(a.file);
            let f = resolve(b).with_context(|| format!("cannot open backing file {b}"))?;
            ward_image::open(f, backing_format, true, &mut resolver_for(a.file))?.virtual_size()
        }
        (None, None) => bail!("a size is needed (or a backing file to take it from)"),
    };
    let (tmp, f) = Temp::new(a.file)?;
    match format {
        Format::Raw => {
            if a.backing.is_some() {
                bail!("raw images cannot have a backing file");
            }
            ward_image::create_raw(&f, size)?;
        }
        Format::Qcow2 => {
            let mut opts = Qcow2CreateOptions::new(size);
            apply_options(a.options, &mut opts)?;
            opts.backing_file = a.backing.map(str::to_string);
            opts.backing_format = backing_format;
            ward_image::create_qcow2(&f, &opts)?;
        }
    }
    f.sync_all().context("cannot sync the new image")?;
    tmp.commit()?;
    println!(
        "Formatting '{}', fmt={} size={}",
        a.file.display(),
        format.name(),
        size
    );
    Ok(0)
}

pub fn info(path: &Path, format: Option<&str>, output: &str) -> anyhow::Result<u8> {
    let (f, fmt) = open_image(path, format, false)?;
    let actual = f.metadata()?.blocks() * 512;
    let mut v = json!({
        "filename": path.display().to_string(),
        "format": fmt.name(),
        "actual-size": actual,
        "dirty-flag": false,
    });
    let mut human = vec![
        format!("image: {}", path.display()),
        format!("file format: {}", fmt.name()),
    ];
    let virtual_size;
    let mut extra = Vec::new();
    match fmt {
        Format::Raw => {
            virtual_size = f.metadata()?.len();
        }
        Format::Qcow2 => {
            let img = Qcow2Image::open(f, true, &mut resolver_for(path))?;
            let h = img.header();
            virtual_size = h.size;
            let dirty = h.incompatible_features & DIRTY_BIT != 0;
            v["cluster-size"] = json!(img.cluster_size());
            v["dirty-flag"] = json!(dirty);
            let compat = if h.version >= 3 { "1.1" } else { "0.10" };
            let lazy = h.compatible_features & 1 != 0;
            let corrupt = h.incompatible_features & 2 != 0;
            let mut data = json!({
                "compat": compat,
                "compression-type": "zlib",
                "refcount-bits": 1u64 << h.refcount_order,
            });
            if h.version >= 3 {
                data["lazy-refcounts"] = json!(lazy);
                data["corrupt"] = json!(corrupt);
                data["extended-l2"] = json!(false);
            }
            v["format-specific"] = json!({ "type": "qcow2", "data": data });
            extra.push(format!("cluster_size: {}", img.cluster_size()));
            if let Some(b) = &h.backing_file {
                v["backing-filename"] = json!(b);
                v["full-backing-filename"] = json!(b);
                extra.push(format!("backing file: {b}"));
            }
            if let Some(bf) = &h.backing_format {
                v["backing-filename-format"] = json!(bf);
                extra.push(format!("backing file format: {bf}"));
            }
            extra.push("Format specific information:".into());
            extra.push(format!("    compat: {compat}"));
            extra.push("    compression type: zlib".into());
            if h.version >= 3 {
                extra.push(format!("    lazy refcounts: {lazy}"));
            }
            extra.push(format!("    refcount bits: {}", 1u64 << h.refcount_order));
            if h.version >= 3 {
                extra.push(format!("    corrupt: {corrupt}"));
                extra.push("    extended l2: false".into());
            }
            if dirty {
                // qemu-img shows this only in JSON; said here so a human sees it too.
                extra.push("    dirty: true (repaired when next opened for writing)".into());
            }
        }
    }
    v["virtual-size"] = json!(virtual_size);
    human.push(format!(
        "virtual size: {} ({virtual_size} bytes)",
        size::human(virtual_size)
    ));
    human.push(format!("disk size: {}", size::human(actual)));
    human.extend(extra);
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&v)?),
        "human" => println!("{}", human.join("\n")),
        other => bail!("unknown output format {other:?} (human or json)"),
    }
    Ok(0)
}

pub fn check(path: &Path, format: Option<&str>, repair: Option<Repair>) -> anyhow::Result<u8> {
    // One descriptor (and lock) for the whole command: a repair's exclusive lock would
    // conflict with a shared one taken through another descriptor.
    let (f, fmt) = open_image(path, format, repair.is_some())?;
    if fmt != Format::Qcow2 {
        eprintln!("ward-img: This image format does not support checks");
        return Ok(63);
    }
    let img = match repair {
        None => Qcow2Image::open(f, true, &mut resolver_for(path))?,
        Some(mode) => {
            let (img, fixed) = Qcow2Image::open_for_repair(f, mode, &mut resolver_for(path))?;
            if fixed.leaks_fixed + fixed.corruptions_fixed > 0 {
                println!("The following inconsistencies were found and repaired:\n");
                println!("    {} leaked clusters", fixed.leaks_fixed);
                println!("    {} corruptions\n", fixed.corruptions_fixed);
                println!("Double checking the fixed image now...");
            }
            img
        }
    };
    let r = img.check()?;
    for m in &r.messages {
        println!("{m}");
    }
    if r.corruptions > 0 {
        println!("\n{} errors were found on the image.", r.corruptions);
        println!("Data may be corrupted, or further writes to the image may corrupt it.");
        return Ok(2);
    }
    if r.leaks > 0 {
        println!("\n{} leaked clusters were found on the image.", r.leaks);
        println!("This means waste of disk space, but no harm to data.");
        return Ok(3);
    }
    println!("No errors were found on the image.");
    Ok(0)
}

/// The size a `resize` argument asks for: absolute, or relative with a leading `+` or `-`.
fn new_size(old: u64, arg: &str) -> anyhow::Result<u64> {
    let parse = |s: &str| size::parse(s).map_err(anyhow::Error::msg);
    if let Some(d) = arg.strip_prefix('+') {
        old.checked_add(parse(d)?).context("new size overflows")
    } else if let Some(d) = arg.strip_prefix('-') {
        let d = parse(d)?;
        old.checked_sub(d)
            .with_context(|| format!("cannot shrink by {d} bytes: the image has only {old}"))
    } else {
        parse(arg)
    }
}

pub fn resize(
    path: &Path,
    format: Option<&str>,
    size_arg: &str,
    shrink: bool,
) -> anyhow::Result<u8> {
    let (f, fmt) = open_image(path, format, true)?;
    match fmt {
        Format::Raw => {
            let old = f.metadata().context("cannot query the image size")?.len();
            let new = new_size(old, size_arg)?;
            if new < old && !shrink {
                bail!("Use the --shrink option to perform a shrink operation");
            }
            f.set_len(new).context("cannot resize the image")?;
            f.sync_all().context("cannot flush the image")?;
        }
        Format::Qcow2 => {
            let img = Qcow2Image::open(f, false, &mut resolver_for(path))?;
            let old = img.header().size;
            let new = new_size(old, size_arg)?;
            if new < old && !shrink {
                bail!("Use the --shrink option to perform a shrink operation");
            }
            img.resize(new, shrink)?;
        }
    }
    println!("Image resized.");
    Ok(0)
}

/// What `snapshot` does.
pub enum SnapshotOp {
    List,
    Create(String),
    Apply(String),
    Delete(String),
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time in the local time zone (TZ, else /etc/localtime), as
/// qemu-img prints snapshot dates.
fn date_local(secs: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(secs), 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// One line of `qemu-img snapshot -l`, or its heading.
fn snapshot_line(s: Option<&ward_image::qcow2::Snapshot>) -> String {
    let Some(s) = s else {
        return format!(
            "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}",
            "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT"
        );
    };
    let ms = s.vm_clock_nsec / 1_000_000;
    let clock = format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    let icount = s.icount.map(|i| i.to_string()).unwrap_or_default();
    format!(
        "{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}",
        s.id,
        s.name,
        size::human(s.vm_state_size),
        date_local(s.date_sec),
        clock,
        icount
    )
}

pub fn snapshot(path: &Path, format: Option<&str>, op: SnapshotOp) -> anyhow::Result<u8> {
    let write = !matches!(op, SnapshotOp::List);
    let (f, fmt) = open_image(path, format, write)?;
    if fmt != Format::Qcow2 {
        bail!("{} images do not support internal snapshots", fmt.name());
    }
    let mut img = Qcow2Image::open(f, !write, &mut resolver_for(path))?;
    match op {
        SnapshotOp::List => {
            let list = img.snapshots()?;
            if !list.is_empty() {
                println!("Snapshot list:");
                println!("{}", snapshot_line(None));
                for s in &list {
                    println!("{}", snapshot_line(Some(s)));
                }
            }
        }
        SnapshotOp::Create(n) => {
            img.snapshot_create(&n)
                .with_context(|| format!("cannot create snapshot {n:?}"))?;
        }
        SnapshotOp::Apply(n) => img
            .snapshot_apply(&n)
            .with_context(|| format!("cannot apply snapshot {n:?}"))?,
        SnapshotOp::Delete(n) => img
            .snapshot_delete(&n)
            .with_context(|| format!("cannot delete snapshot {n:?}"))?,
    }
    Ok(0)
}

pub fn map(path: &Path, format: Option<&str>, output: &str) -> anyhow::Result<u8> {
    let (f, fmt) = open_image(path, format, false)?;
    let extents = match fmt {
        Format::Raw => {
            let len = f.metadata()?.len();
            vec![(0, len, "data", Some(0))]
        }
        Format::Qcow2 => Qcow2Image::open(f, true, &mut resolver_for(path))?
            .map()?
            .into_iter()
            .map(|e| {
                let kind = match e.kind {
                    MapKind::Unallocated => "unallocated",
                    MapKind::Zero => "zero",
                    MapKind::Data => "data",
                    MapKind::Compressed => "compressed",
                };
                (e.start, e.length, kind, e.host_offset)
            })
            .collect(),
    };
    match output {
        "json" => {
            let list: Vec<_> = extents
                .iter()
                .map(|(start, length, kind, off)| {
                    let mut o = json!({
                        "start": start, "length": length,
                        "data": *kind == "data" || *kind == "compressed",
                        "zero": *kind == "zero",
                    });
                    if let Some(off) = off {
                        o["offset"] = json!(off);
                    }
                    o
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        "human" => {
            println!("{:<20}{:<20}{:<20}Kind", "Offset", "Length", "Mapped to");
            for (start, length, kind, off) in extents {
                let mapped = off.map(|o| format!("{o:#x}")).unwrap_or_default();
                println!("{start:<#20x}{length:<#20x}{mapped:<20}{kind}");
            }
        }
        other => bail!("unknown output format {other:?} (human or json)"),
    }
    Ok(0)
}
