//! `uiommufd`: run unmodified programs against a userspace `/dev/iommu`, and
//! show what the engine does.
//!
//! - `uiommufd run [--device KIND[,key=value...]]... [-q] -- PROGRAM [ARGS]`:
//!   exec PROGRAM with `libuiommufd_preload.so` (found next to this binary)
//!   in `LD_PRELOAD` and the declared emulated VFIO devices.
//! - `uiommufd demo`: the /dev/ioasid RFC's flows 5.1 and 5.2 through the
//!   Rust API, printing each IOAS's IOVA map.
//! - `uiommufd bench [--json] [--threads N] [--quick]`: each case's time next
//!   to its physical floor measured in the same run, and the ratio.

mod bench;
mod demo;
mod hugetext;
mod migrate;
mod run;

use clap::{Parser, Subcommand};

/// The Linux IOMMUFD subsystem (/dev/iommu) in userspace.
#[derive(Parser, Debug)]
#[command(name = "uiommufd", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run PROGRAM with a working /dev/iommu and the declared VFIO devices (LD_PRELOAD of libuiommufd_preload.so).
    Run {
        /// Path of the preload library (default: next to this binary, or $UIOMMUFD_PRELOAD).
        #[arg(long)]
        preload: Option<std::path::PathBuf>,
        /// The emulated VFIO PCI devices to declare, one `--device` each
        /// (the help text, with its bracketed syntax, is in `help`).
        #[arg(
            long = "device",
            value_name = "KIND[,key=value...]",
            help = "Declare an emulated VFIO PCI device (repeatable): KIND[,addr=DDDD:BB:DD.F][,group=N][,cdev=N][,key=value...]"
        )]
        devices: Vec<String>,
        /// Do not print where the declared devices are.
        #[arg(short, long)]
        quiet: bool,
        /// The kernel release whose iommufd uAPI the program sees (6.12 ... 7.2;
        /// default: $UIOMMUFD_UAPI, else the newest).
        #[arg(long, value_name = "LEVEL")]
        uapi: Option<uiommufd::UapiLevel>,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        program: Vec<std::ffi::OsString>,
    },
    /// Walk through the /dev/ioasid RFC's use-case flows 5.1 and 5.2 and print the IOVA maps.
    Demo,
    /// Live-migrate guest memory and a DMA-writing device to a destination
    /// process, and verify that no byte the device wrote was lost.
    Migrate(migrate::Args),
    /// Measure the engine against physical floors (populate, memcpy) and print the ratios.
    Bench {
        /// Print JSON (for comparisons across commits) instead of the table.
        #[arg(long)]
        json: bool,
        /// Also measure case 4 (parallel map/unmap) with N threads.
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// Small sizes and few repetitions: a ~20 s smoke run.
        #[arg(long)]
        quick: bool,
        /// Run only these cases (numbers 1-9, comma separated), e.g. to profile one.
        #[arg(long, value_delimiter = ',', value_name = "CASES")]
        only: Vec<u8>,
    },
}

fn main() -> std::process::ExitCode {
    uiommufd::logging::init_from_env();
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run {
            preload,
            devices,
            quiet,
            uapi,
            program,
        } => run::run(preload, &devices, quiet, uapi, program),
        Cmd::Demo => demo::demo(),
        Cmd::Migrate(args) => migrate::migrate(args),
        Cmd::Bench {
            json,
            threads,
            quick,
            only,
        } => bench::bench(bench::Opts {
            json,
            threads,
            quick,
            only,
        }),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uiommufd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
