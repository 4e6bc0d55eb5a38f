//! `ward-bench`: ward against QEMU, side by side in one run. Prints a Markdown report (medians
//! and ward/QEMU ratios) for BENCHMARKS.md. Run it through `bench/run.sh`, which builds release
//! binaries first.

mod measure;
mod probe;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Runs per VMM and measurement.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Requests per block burst.
    #[arg(long, default_value_t = 20000)]
    burst: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("no binary directory"))?;
    let tmp = ward_tests::TempDir::new("bench");
    let setup = probe::Setup {
        bin_dir,
        probe: ward_tests::probe_elf(),
        image: probe::image(&tmp.0)?,
        rundir: tmp.0.clone(),
        runs: args.runs,
        burst: args.burst,
        tsc_khz: measure::tsc_khz()?,
    };
    let results = probe::run(&setup)?;
    println!("{}", probe::report(&setup, &results));
    Ok(())
}
