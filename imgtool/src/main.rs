//! `ward-img`: create, inspect, check (and repair), map, convert, resize and snapshot disk
//! images, with qemu-img's command names, options and output where they mean the same. Errors go
//! to stderr with a non-zero exit; a command that makes a new file writes a temporary file and
//! renames it, so a failure leaves nothing half-written.

mod commands;
mod convert;
mod size;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ward-img",
    version,
    about = "Disk image tool for ward (qemu-img compatible where it matters)"
)]
struct Cli {
    /// Read images without a shared lock, even while a VM writes them (what you read may be
    /// inconsistent). Images written always take an exclusive lock.
    #[arg(short = 'U', long = "force-share", global = true)]
    force_share: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new image: create -f raw|qcow2 [-b BACKING -F FMT] [-o cluster_size=N] FILE [SIZE]
    Create {
        #[arg(short = 'f', default_value = "raw")]
        format: String,
        /// Backing file (qcow2 only), stored as given (relative names are relative to FILE).
        #[arg(short = 'b')]
        backing: Option<String>,
        /// Format of the backing file.
        #[arg(short = 'F')]
        backing_format: Option<String>,
        /// Options, comma separated: cluster_size=SIZE.
        #[arg(short = 'o')]
        options: Option<String>,
        file: PathBuf,
        /// Virtual size (K, M, G, T suffixes); defaults to the backing file's.
        size: Option<String>,
    },
    /// Show an image's format, sizes and backing file.
    Info {
        #[arg(short = 'f')]
        format: Option<String>,
        /// `human` or `json`.
        #[arg(long, default_value = "human")]
        output: String,
        file: PathBuf,
    },
    /// Check a qcow2 image's metadata. Exit 0 clean, 2 corruptions, 3 leaks only, 63 unsupported.
    Check {
        #[arg(short = 'f')]
        format: Option<String>,
        /// Repair: `leaks` (lower refcounts to the references) or `all` (also raise
        /// refcounts below the references, give clusters reached twice a copy each, drop
        /// entries pointing outside the file, fix COPIED flags).
        #[arg(short = 'r', value_parser = ["leaks", "all"])]
        repair: Option<String>,
        file: PathBuf,
    },
    /// Show which ranges of the image hold data, zeros, or nothing.
    Map {
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(long, default_value = "human")]
        output: String,
        file: PathBuf,
    },
    /// Change an image's virtual size: resize [--shrink] [-f FMT] FILE [+|-]SIZE
    Resize {
        /// Allow the size to decrease.
        #[arg(long)]
        shrink: bool,
        #[arg(short = 'f')]
        format: Option<String>,
        file: PathBuf,
        /// New size, or a change of size with a leading + or -.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// List, create, apply or delete internal snapshots (qcow2):
    /// snapshot -l | -c NAME | -a NAME | -d NAME FILE
    Snapshot {
        /// List the snapshots.
        #[arg(short = 'l', conflicts_with_all = ["create", "apply", "delete"])]
        list: bool,
        /// Create a snapshot.
        #[arg(short = 'c', value_name = "NAME", conflicts_with_all = ["apply", "delete"])]
        create: Option<String>,
        /// Revert the disk to a snapshot.
        #[arg(short = 'a', value_name = "NAME", conflicts_with = "delete")]
        apply: Option<String>,
        /// Delete a snapshot.
        #[arg(short = 'd', value_name = "NAME")]
        delete: Option<String>,
        #[arg(short = 'f')]
        format: Option<String>,
        file: PathBuf,
    },
    /// Copy an image into a new one, possibly of another format, skipping zero ranges.
    Convert {
        #[arg(short = 'f')]
        format: Option<String>,
        #[arg(short = 'O', default_value = "raw")]
        out_format: String,
        /// Options for the new image: cluster_size=SIZE.
        #[arg(short = 'o')]
        options: Option<String>,
        /// Show progress.
        #[arg(short = 'p')]
        progress: bool,
        /// Cache mode of the output. `unsafe` (the default, as with qemu-img convert) leaves
        /// the new image to the page cache: a failed command still leaves nothing behind, but a
        /// host crash soon after may lose data. `writeback` syncs it before renaming it into
        /// place.
        #[arg(short = 't', default_value = "unsafe", value_parser = ["writeback", "unsafe"])]
        cache: String,
        input: PathBuf,
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::FORCE_SHARE.store(cli.force_share, std::sync::atomic::Ordering::Relaxed);
    let result = match cli.cmd {
        Cmd::Create {
            format,
            backing,
            backing_format,
            options,
            file,
            size,
        } => commands::create(commands::CreateArgs {
            format: &format,
            backing: backing.as_deref(),
            backing_format: backing_format.as_deref(),
            options: options.as_deref(),
            file: &file,
            size: size.as_deref(),
        }),
        Cmd::Info {
            format,
            output,
            file,
        } => commands::info(&file, format.as_deref(), &output),
        Cmd::Check {
            format,
            repair,
            file,
        } => commands::check(
            &file,
            format.as_deref(),
            repair.map(|r| {
                if r == "all" {
                    ward_image::qcow2::Repair::All
                } else {
                    ward_image::qcow2::Repair::Leaks
                }
            }),
        ),
        Cmd::Map {
            format,
            output,
            file,
        } => commands::map(&file, format.as_deref(), &output),
        Cmd::Resize {
            shrink,
            format,
            file,
            size,
        } => commands::resize(&file, format.as_deref(), &size, shrink),
        Cmd::Snapshot {
            list,
            create,
            apply,
            delete,
            format,
            file,
        } => {
            let op = match (create, apply, delete) {
                (Some(n), _, _) => commands::SnapshotOp::Create(n),
                (_, Some(n), _) => commands::SnapshotOp::Apply(n),
                (_, _, Some(n)) => commands::SnapshotOp::Delete(n),
                _ => {
                    let _ = list;
                    commands::SnapshotOp::List
                }
            };
            commands::snapshot(&file, format.as_deref(), op)
        }
        Cmd::Convert {
            format,
            out_format,
            options,
            progress,
            cache,
            input,
            output,
        } => convert::convert(convert::ConvertArgs {
            input: &input,
            format: format.as_deref(),
            output: &output,
            out_format: &out_format,
            options: options.as_deref(),
            progress,
            sync: cache == "writeback",
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ward-img: {e:#}");
            ExitCode::from(1)
        }
    }
}
