//! `uiommufd migrate`: live migration of a device and its guest memory,
//! end to end through the uAPI a VMM uses.
//!
//! The source has guest memory and a `dma-engine` in traffic mode writing
//! its record stream into it. It sends all memory, then iterates pre-copy
//! rounds — read and clear the chosen dirty tracker (`--tracker hwpt`: an
//! iommufd HWPT with dirty tracking, `type1`: a VFIO container's dirty
//! pages, `dma-logging`: the device's own DMA log), send what was written —
//! until the dirty set fits the downtime budget or `--max-rounds`; then it
//! stops the device (migration v2 `STOP_COPY`), queues the final dirty
//! pages it already knows, and while the destination reads them reads the
//! device's state and the tracker a last time and sends the rest (see the
//! stop path in `source.rs`, `sched.rs` and `lanes.rs`). The destination loads the pages, gives
//! the state to its device (`RESUMING` → `RUNNING`) and says so: the
//! downtime is from the source's stop to that resume (the destination's
//! own stamp of it where both share a clock, `clock.rs`; else the
//! message's arrival).
//!
//! **Verification** costs no downtime: after resuming, the destination
//! lets its device write a few more records, stops it (the source then
//! measures its raw copy next to the downtime, `floor.rs`) and sends its
//! memory digest and the stream's sequence number; the source writes the
//! records the destination's device must have written (the stream is a
//! pure function of its sequence numbers) into its own stopped memory and
//! compares digests. Equal digests mean every page arrived and the stream
//! went on without a gap or a duplicate; the destination also checks each
//! record around the switch-over on its own.
//!
//! One command runs both sides (the destination is a child process on a
//! Unix socket), or `migrate listen` / `migrate send` run them apart over
//! a Unix or TCP socket. A failure on the way (peer gone, bad stream,
//! device error) ends with a clear error, and a source that had stopped
//! its device restarts it.

mod clock;
mod dest;
mod floor;
mod lanes;
mod records;
mod report;
mod sched;
mod source;
pub(crate) mod vm;
mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use vm::Tracker;

/// Where the other side is.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoint {
    /// A Unix socket path.
    #[arg(long, conflicts_with = "tcp")]
    pub unix: Option<PathBuf>,
    /// A TCP address (`HOST:PORT`).
    #[arg(long)]
    pub tcp: Option<String>,
}

/// The two sides run apart.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Role {
    /// Be the destination: wait for one migration on the endpoint.
    Listen(Endpoint),
    /// Be the source: migrate to the destination at the endpoint.
    Send(Endpoint),
}

/// Options of `uiommufd migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Guest memory size (suffix K, M or G).
    #[arg(long, global = true, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// The dirty tracker the pre-copy rounds read.
    #[arg(long, global = true, value_enum, default_value_t = Tracker::Hwpt)]
    pub tracker: Tracker,
    /// Records per second the device writes (64 bytes each, across all of
    /// guest memory).
    #[arg(long, global = true, default_value_t = 200_000)]
    pub rate: u32,
    /// Pre-copy rounds at most before stopping the device.
    #[arg(long, global = true, default_value_t = 30)]
    pub max_rounds: u32,
    /// Stop the device once the dirty set would take at most this long to send.
    #[arg(long, global = true, default_value_t = 20.0)]
    pub downtime_ms: f64,
    /// Print the report as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Also write the JSON report to this file (next to the report on
    /// stdout, as a CI job that shows the report and sums up many runs
    /// wants).
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,
    /// Write an SVG picture of dirty pages per round and the downtime.
    #[arg(long, global = true)]
    pub svg: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Send pages with plain socket writes instead of zero-copy splices
    /// (to compare the two).
    #[arg(long, global = true)]
    pub plain_copy: bool,
    /// Never run the stop path (nor the raw copies it is compared with)
    /// under `SCHED_FIFO`; by default both do where the process may
    /// (`sched.rs`).
    #[arg(long, global = true)]
    pub no_realtime: bool,
    /// Connections the pages go over (1 or 2; a second one only on a Unix
    /// socket, where both sides run the stop path real-time, see
    /// `lanes.rs`).
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub lanes: u32,
}

/// `uiommufd migrate` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Run one side only (default: both, the destination as a child process).
    #[command(subcommand)]
    pub role: Option<Role>,
    /// Options.
    #[command(flatten)]
    pub opts: Opts,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with K/M/G"))?;
    let v = n
        .checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if v == 0 || !v.is_multiple_of(vm::PAGE) {
        return Err(format!("size {s:?} is not a positive multiple of 4 KiB"));
    }
    Ok(v)
}

/// The send buffer the source's Unix socket asks for where it may
/// (`Sock::grow_send_buffer`): room for a final round of ~60 MiB.
const SEND_BUFFER: libc::c_int = 64 << 20;

/// Any connected stream socket. The source's Unix socket gets a larger
/// send buffer ([`Sock::grow_send_buffer`]); everything else keeps the
/// kernel's defaults.
#[derive(Debug)]
pub(crate) enum Sock {
    Unix(std::os::unix::net::UnixStream),
    Tcp(std::net::TcpStream),
}

impl Sock {
    /// A send buffer that holds a whole stop-and-copy round, on a Unix
    /// socket: its pages, spliced, then go into the socket at once (see
    /// the stop path in `source.rs`), and the source never waits for the
    /// destination to make room — each such wait was a sleep and a wake-up
    /// on both sides, inside the downtime. [`SEND_BUFFER`] where the
    /// process may exceed `net.core.wmem_max` (`SO_SNDBUFFORCE`,
    /// `CAP_NET_ADMIN`), else the largest `SO_SNDBUF` it may ask for
    /// (`wmem_max`, which the kernel doubles: 8 MiB by default). Spliced
    /// pages are referenced, not copied, so the buffer costs no memory of
    /// its own. Round times do not depend on it: every round's copy time
    /// runs to the destination's reading of it, not to the source's last
    /// write. TCP keeps the kernel's autotuning (a fixed `SO_SNDBUF` turns
    /// it off).
    fn grow_send_buffer(&self) {
        let Sock::Unix(s) = self else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(s);
        let set = |opt: libc::c_int, v: libc::c_int| {
            // SAFETY: an int option on our own socket; a refusal keeps
            // the size it had.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            r == 0
        };
        if set(libc::SO_SNDBUFFORCE, SEND_BUFFER / 2) {
            return;
        }
        let max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|v| v.trim().parse::<libc::c_int>().ok())
            .unwrap_or(4 << 20)
            .clamp(1 << 20, SEND_BUFFER / 2);
        set(libc::SO_SNDBUF, max);
    }

    /// Fail any read or write that waits longer than `t` (a peer that
    /// hangs is a peer gone): `$UIOMMUFD_MIGRATE_TIMEOUT_S`, default 60 s.
    fn set_timeouts(&self) {
        let t = std::env::var("UIOMMUFD_MIGRATE_TIMEOUT_S")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(60)
            .max(1);
        let t = Some(Duration::from_secs(t));
        let _ = match self {
            Sock::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Sock::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
        };
    }
}

impl std::os::fd::AsRawFd for Sock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Sock::Unix(s) => s.as_raw_fd(),
            Sock::Tcp(s) => s.as_raw_fd(),
        }
    }
}

fn listen(ep: &Endpoint) -> Result<Sock, String> {
    if let Some(p) = &ep.unix {
        let _ = std::fs::remove_file(p);
        let l = std::os::unix::net::UnixListener::bind(p)
            .map_err(|e| format!("listening on {}: {e}", p.display()))?;
        let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let _ = std::fs::remove_file(p);
        Ok(Sock::Unix(s))
    } else if let Some(a) = &ep.tcp {
        let l = std::net::TcpListener::bind(a).map_err(|e| format!("listening on {a}: {e}"))?;
        let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        let _ = s.set_nodelay(true);
        Ok(Sock::Tcp(s))
    } else {
        Err("give --unix PATH or --tcp HOST:PORT".into())
    }
}

fn connect(ep: &Endpoint, patience: Duration) -> Result<Sock, String> {
    let t = Instant::now();
    loop {
        let r = if let Some(p) = &ep.unix {
            std::os::unix::net::UnixStream::connect(p).map(Sock::Unix)
        } else if let Some(a) = &ep.tcp {
            std::net::TcpStream::connect(a).map(|s| {
                let _ = s.set_nodelay(true);
                Sock::Tcp(s)
            })
        } else {
            return Err("give --unix PATH or --tcp HOST:PORT".into());
        };
        match r {
            Ok(s) => return Ok(s),
            Err(e) if t.elapsed() < patience => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("connecting to the destination: {e}")),
        }
    }
}

/// Run `uiommufd migrate`.
pub fn migrate(args: Args) -> Result<(), String> {
    // The engine reaches this process's memory (dirty bitmaps, ioctl
    // arguments) with in-process fault-safe copies instead of a
    // process_vm_readv/writev system call per piece (without it, those
    // system calls: slower, same results).
    let _ = uiommufd::faultsafe::install();
    // The engine's code on huge pages: the bitmap reads after a round
    // that streamed all memory find it cold (hugetext.rs). Before any
    // thread starts.
    // (The report says how much of it is: `Report::huge_text`.)
    let _ = crate::hugetext::remap();
    match args.role {
        Some(Role::Listen(ep)) => {
            let s = listen(&ep)?;
            s.set_timeouts();
            dest::run(s, &args.opts)
        }
        Some(Role::Send(ep)) => {
            let s = connect(&ep, Duration::from_secs(10))?;
            s.set_timeouts();
            finish(source::run(s, &args.opts)?, &args.opts)
        }
        None => {
            let dir = std::env::temp_dir().join(format!("uiommufd-migrate-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let sock = dir.join("sock");
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut child = std::process::Command::new(exe)
                .arg("migrate")
                .arg("--size")
                .arg(args.opts.size.to_string())
                .arg("--tracker")
                .arg(args.opts.tracker.name())
                .arg("-q")
                .args(args.opts.no_realtime.then_some("--no-realtime"))
                .arg("listen")
                .arg("--unix")
                .arg(&sock)
                .spawn()
                .map_err(|e| format!("starting the destination: {e}"))?;
            let ep = Endpoint {
                unix: Some(sock),
                tcp: None,
            };
            let r = connect(&ep, Duration::from_secs(10)).and_then(|s| {
                s.set_timeouts();
                source::run(s, &args.opts)
            });
            if r.is_err() {
                // It may still be waiting for a connection: never wait for it.
                let _ = child.kill();
            }
            let status = child.wait().map_err(|e| e.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            let report = r?;
            match status? {
                s if s.success() => {}
                s => return Err(format!("the destination failed ({s})")),
            }
            finish(report, &args.opts)
        }
    }
}

fn finish(r: report::Report, o: &Opts) -> Result<(), String> {
    let json = (o.json || o.json_out.is_some())
        .then(|| serde_json::to_string_pretty(&r.json()).unwrap_or_default());
    match &json {
        Some(j) if o.json => println!("{j}"),
        _ => print!("{}", r.text()),
    }
    if let (Some(p), Some(j)) = (&o.json_out, &json) {
        std::fs::write(p, format!("{j}\n")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &o.svg {
        std::fs::write(p, r.svg()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if r.ok() {
        Ok(())
    } else {
        Err("verification failed".into())
    }
}
