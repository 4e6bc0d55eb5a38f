//! `ward-bench`: ward against QEMU, side by side in one run. Prints a Markdown report (medians
//! and ward/QEMU ratios) for BENCHMARKS.md. Run it through `bench/run.sh`, which builds release
//! binaries first.

mod confine;
mod convert;
mod linux;
mod measure;
mod net;
mod netprof;
mod probe;
mod regs;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Runs per VMM and measurement.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Requests per block burst.
    #[arg(long, default_value_t = 20000)]
    burst: u64,
    /// Runs of the Linux guest benchmark (each boots Linux twice).
    #[arg(long, default_value_t = 5)]
    linux_runs: usize,
    /// Skip the Linux guest benchmark.
    #[arg(long)]
    no_linux: bool,
    /// Skip the probe guest's network benchmark (the Linux one still runs).
    #[arg(long)]
    no_probe_net: bool,
    /// Skip the Linux guest's boot benchmark (its network benchmark still runs).
    #[arg(long)]
    no_linux_boot: bool,
    /// Skip the probe guest's start-up and block benchmarks.
    #[arg(long)]
    no_probe: bool,
    /// Skip the cost of the interrupt registers (InterruptStatus and InterruptACK, probe).
    #[arg(long)]
    no_regs: bool,
    /// Skip the cost-of-confinement benchmark (ward confined against ward --unconfined).
    #[arg(long)]
    no_confine: bool,
    /// Skip both network benchmarks (probe and Linux guest; ward-net against QEMU vhost=off).
    #[arg(long)]
    no_net: bool,
    /// MiB per TCP transfer of the Linux network benchmark (part of the Linux benchmark unless
    /// --no-net).
    #[arg(long, default_value_t = 32)]
    net_mib: u64,
    /// What moves the Linux network benchmark's TCP data.
    #[arg(long, value_enum, default_value_t = linux::Tool::Iperf3)]
    net_tool: linux::Tool,
    /// Datagrams per network burst, each way.
    #[arg(long, default_value_t = 3000)]
    net_frames: u64,
    /// Size in MiB of the image for the convert benchmark (0: skip it).
    #[arg(long, default_value_t = 2048)]
    convert_mib: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// The Linux part, run where the VMs run (inside the nested machine).
    InnerLinux {
        #[arg(long)]
        runs: usize,
        #[arg(long)]
        ward_dir: PathBuf,
        #[arg(long)]
        qemu: PathBuf,
        #[arg(long)]
        qemu_data: Option<PathBuf>,
        #[arg(long)]
        guest: PathBuf,
        #[arg(long)]
        disk: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::InnerLinux {
        runs,
        ward_dir,
        qemu,
        qemu_data,
        guest,
        disk,
    }) = args.cmd
    {
        return linux::inner(&linux::Inner {
            ward_dir,
            qemu,
            qemu_data,
            guest,
            disk,
            runs,
        });
    }
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("no binary directory"))?;
    let tmp = ward_tests::TempDir::new("bench");
    let setup = probe::Setup {
        bin_dir: bin_dir.clone(),
        probe: ward_tests::probe_elf(),
        dir: tmp.0.clone(),
        runs: args.runs,
        burst: args.burst,
        tsc_khz: measure::tsc_khz()?,
    };
    if !args.no_probe {
        // One run: raw and qcow2 images, ward and QEMU, all block workloads interleaved.
        let results = probe::run(&setup)?;
        println!("{}", probe::report_raw(&setup, &results));
        println!("{}", probe::report_qcow2(&setup, &results));
    }
    if !args.no_regs {
        println!("{}", regs::report(&setup, &regs::run(&setup)?));
    }
    let probe_net = !args.no_net && !args.no_probe_net;
    let net = net::Setup {
        bin_dir: bin_dir.clone(),
        probe: setup.probe.clone(),
        dir: tmp.0.clone(),
        runs: args.runs,
        frames: args.net_frames,
        tsc_khz: setup.tsc_khz,
        unconfined: false,
    };
    if !args.no_confine {
        println!("{}", confine::run(&setup)?);
        if probe_net {
            let (on, off) = net::run_confinement(&net)?;
            println!("{}", net::report_confinement(&net, &on, &off));
        }
    }
    if probe_net {
        let results = net::run(&net)?;
        println!("{}", net::report(&net, &results));
    }
    if args.convert_mib > 0 {
        println!(
            "{}",
            convert::run(
                &bin_dir.join("ward-img"),
                &tmp.0,
                args.convert_mib << 20,
                args.runs
            )?
        );
    }
    if !args.no_linux {
        if ward_tests::host_is_pvm() {
            println!("Linux guest: inside the nested machine (this host's KVM is PVM).\n");
        }
        if !args.no_linux_boot {
            let report = if ward_tests::host_is_pvm() {
                linux::nested(&bin_dir, args.linux_runs, &tmp.0)?
            } else {
                linux::direct(&bin_dir, args.linux_runs, &tmp.0)?
            };
            println!("{report}");
        }
        if !args.no_net {
            let pairs: &[linux::Pair] = if args.no_confine {
                &[linux::VS_QEMU]
            } else {
                &[linux::VS_QEMU, linux::CONFINEMENT]
            };
            for pair in pairs {
                let report = linux::net(
                    &bin_dir,
                    args.linux_runs,
                    args.net_mib,
                    &tmp.0,
                    *pair,
                    args.net_tool,
                )?;
                println!("{report}");
            }
        }
    }
    Ok(())
}
