//! End-to-end tests of the `LD_PRELOAD` shim: builds the cdylib, compiles
//! `tests/c/preload_smoke.c` with the system C compiler and runs it with the
//! shim preloaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `target/<profile>` of this test binary (`target/<profile>/deps/preload-*`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// Build the cdylib with the same profile and target dir as this test, once.
fn preload_so() -> &'static Path {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| uiommufd_testkit::preload::build_preload(&profile_dir()))
}

/// Where compiled C programs go.
fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uiommufd-preload");
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

fn compile(name: &str, extra: &[&str]) -> PathBuf {
    compile_src("preload_smoke.c", name, extra)
}

fn compile_src(file: &str, name: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(file);
    // nextest runs each test in its own process: a per-process name keeps one
    // process from executing a binary another is still writing
    let exe = out_dir().join(format!("{name}-{}", std::process::id()));
    uiommufd_testkit::run_ok(
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
            .arg(&exe)
            .args(extra)
            .arg(&src),
        "the C compiler",
    );
    exe
}

/// The smoke program built plainly (imports open, open64, openat, openat64).
fn smoke() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("preload_smoke", &["-O1"]))
}

/// The smoke program built with `_FORTIFY_SOURCE` (imports `__open_2` & co).
fn smoke_fortified() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile("preload_smoke_fortify", &["-O2", "-D_FORTIFY_SOURCE=2"]))
}

/// `tests/c/preload_io.c`: ordinary I/O (plain, and fortified so that
/// `read` becomes `__read_chk`).
fn io_program(fortified: bool) -> &'static Path {
    static PLAIN: OnceLock<PathBuf> = OnceLock::new();
    static FORTIFIED: OnceLock<PathBuf> = OnceLock::new();
    if fortified {
        FORTIFIED.get_or_init(|| {
            compile_src(
                "preload_io.c",
                "preload_io_fortify",
                &["-O2", "-D_FORTIFY_SOURCE=2"],
            )
        })
    } else {
        PLAIN.get_or_init(|| compile_src("preload_io.c", "preload_io", &["-O1"]))
    }
}

fn run_preloaded(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.args(args).env("LD_PRELOAD", preload_so());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the preloaded program")
}

/// A program's run passed: it exited 0 and printed `OK`, and no Rust panic
/// happened under the preload.
fn check_run(what: &str, status: std::process::ExitStatus, stdout: &str, stderr: &str) {
    assert!(
        status.success() && stdout.contains("OK"),
        "{what}: status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // the dispatcher turns an engine panic into EIO, but none may happen at
    // all: the panic hook's message would be on stderr
    assert!(
        !stderr.contains("panicked at"),
        "{what}: a Rust panic happened under the preload:\n{stderr}"
    );
}

fn assert_ok(out: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    check_run(what, out.status, &stdout, &stderr);
}

/// `tests/c/NAME.c` built with `-O1` (a new binary per call).
fn c_program(name: &str) -> PathBuf {
    compile_src(&format!("{name}.c"), name, &["-O1"])
}

/// Run `exe` under the preload quietly and with debug logging; both pass.
fn assert_ok_with_logging(exe: &Path, args: &[&str], env: &[(&str, &str)], what: &str) {
    for log in ["", "debug"] {
        let env: Vec<_> = env.iter().copied().chain([("UIOMMUFD_LOG", log)]).collect();
        let out = run_preloaded(exe, args, &env);
        assert_ok(&out, &format!("{what} (UIOMMUFD_LOG={log:?})"));
    }
}

fn smoke_with(how: &str) {
    let out = run_preloaded(smoke(), &[how], &[]);
    assert_ok(&out, how);
}

/// One `#[test]` per row (`name: the call that is its body`).
macro_rules! cases {
    ($($(#[$doc:meta])* $name:ident: $body:expr;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                $body;
            }
        )*
    };
}

cases! {
    open: smoke_with("open");
    open64: smoke_with("open64");
    openat: smoke_with("openat");
    openat64: smoke_with("openat64");
    openat_relative_to_dirfd: smoke_with("openat-dirfd");
    open_relative_to_cwd: smoke_with("relative");
    open_unnormalised_path: smoke_with("messy-path");
}

#[test]
fn fortified_open() {
    let out = run_preloaded(smoke_fortified(), &["fortify"], &[]);
    assert_ok(&out, "fortify");
}

/// `UIOMMUFD_CHECK_FDS=1`: an fd closed by a raw syscall is noticed at the
/// next ioctl (`EBADF` from the kernel), before its number is reused.
#[test]
fn paranoid_stale_fd_check() {
    let out = run_preloaded(smoke(), &["open"], &[("UIOMMUFD_CHECK_FDS", "1")]);
    assert_ok(&out, "UIOMMUFD_CHECK_FDS=1");
}

#[test]
fn with_debug_logging() {
    let out = run_preloaded(smoke(), &["open"], &[("UIOMMUFD_LOG", "debug")]);
    assert_ok(&out, "UIOMMUFD_LOG=debug");
}

/// `nm -D` of `exe`: its dynamic symbols (`None` without `nm`).
fn imports(exe: &Path) -> Option<String> {
    let out = Command::new("nm").arg("-D").arg(exe).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `exe` (called `name` in messages) imports every one of `syms`; `false`
/// when `nm` is not there to tell.
fn assert_imports(exe: &Path, name: &str, syms: &[&str]) -> bool {
    let Some(all) = imports(exe) else {
        eprintln!("nm not available; skipping the import check");
        return false;
    };
    for sym in syms {
        let has = all.lines().any(|l| {
            l.split_whitespace()
                .any(|w| w.split('@').next() == Some(*sym))
        });
        assert!(has, "{name} does not import {sym}:\n{all}");
    }
    true
}

/// The C programs really call the entry points the tests claim to cover.
#[test]
fn programs_import_the_hooked_symbols() {
    let plain = [
        "open", "open64", "openat", "openat64", "ioctl", "close", "dup", "dup2", "dup3", "fcntl",
    ];
    if assert_imports(smoke(), "preload_smoke", &plain) {
        let fortified = ["__open_2", "__open64_2", "__openat_2", "__openat64_2"];
        assert!(assert_imports(
            smoke_fortified(),
            "preload_smoke_fortify",
            &fortified
        ));
    }
}

/// Without the preload there is no /dev/iommu here (so the tests above do
/// exercise the shim and not a host kernel's iommufd).
#[test]
fn without_preload_the_program_fails() {
    if Path::new("/dev/iommu").exists() {
        eprintln!("host has a real /dev/iommu; skipping");
        return;
    }
    let out = Command::new(smoke()).arg("open").output().expect("run");
    assert!(!out.status.success());
}

/// Ordinary programs are unaffected by the preload.
#[test]
fn ordinary_programs_still_work() {
    let dir = out_dir();
    let script = "set -e; echo hello > plain.txt; cat plain.txt; ls plain.txt >/dev/null; \
                  exec 7<plain.txt; read -r line <&7; exec 7<&-; echo \"$line\"; rm plain.txt";
    let out = uiommufd_testkit::run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .env("LD_PRELOAD", preload_so()),
        "sh",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nhello\n");
    assert!(
        out.stderr.is_empty(),
        "unexpected stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// read/write/readv/writev/poll/select/epoll on pipes, files and eventfds
/// behave as without the shim (the engine-fd hooks only act on engine fds).
#[test]
fn ordinary_io_is_unaffected() {
    let out = run_preloaded(io_program(false), &[], &[]);
    assert_ok(&out, "preload_io");
    let out = run_preloaded(io_program(true), &[], &[("UIOMMUFD_LOG", "debug")]);
    assert_ok(&out, "preload_io (fortified)");
}

/// The I/O program really calls the hooked data functions.
#[test]
fn io_program_imports_the_hooked_symbols() {
    let plain = ["read", "write", "readv", "writev", "poll", "close", "dup"];
    if assert_imports(io_program(false), "preload_io", &plain) {
        assert!(assert_imports(
            io_program(true),
            "preload_io_fortify",
            &["__read_chk"]
        ));
    }
}

/// `tests/c/fail_nth.c`: the emulated `/proc/self/task/TID/fail-nth` and
/// debugfs fault-injection files, driven from C as the kernel selftest
/// `iommufd_fail_nth` drives them (pread/pwrite, opendir/readdir/openat),
/// with a small sweep.
#[test]
fn fail_nth_from_c() {
    let exe = c_program("fail_nth");
    let out = run_preloaded(&exe, &[], &[("UIOMMUFD_CHECK_INVARIANTS", "1")]);
    assert_ok(&out, "fail_nth");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("UIOMMUFD-INVARIANT-VIOLATION"),
        "invariant violations:\n{stderr}"
    );
}

/// `/dev/vfio/vfio` under the preload: `tests/c/vfio_type1.c` drives the VFIO
/// type1 container flow and its dirty page tracking (against the system's
/// `<linux/vfio.h>`), quietly and with debug logging.
#[test]
fn vfio_type1_container_and_dirty_tracking() {
    assert_ok_with_logging(&c_program("vfio_type1"), &[], &[], "vfio_type1");
}

fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

/// `tests/c/host_safety.c`, built once.
fn host_safety() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_src("host_safety.c", "host_safety", &["-O1"]))
}

/// Run a `host_safety` case under the preload; kill it (and fail) when it
/// is not done within `deadline`: a hang is a failure.
fn host_case(case: &str, seconds: &str, deadline: std::time::Duration) {
    use std::io::Read;
    let mut child = Command::new(host_safety())
        .args([case, seconds])
        .env("LD_PRELOAD", preload_so())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run host_safety");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let Some(status) = status else {
        panic!("{case}: hung (killed after {deadline:?})\nstdout:\n{out}\nstderr:\n{err}");
    };
    check_run(case, status, &out, &err);
}

cases! {
    /// Issue 10 item 1: `vfork` children (closing, `close_range`, `closefrom`,
    /// `dup2` over our fds before `exec`/`_exit`) and `posix_spawn` leave the
    /// parent's `/dev/iommu`, dup and fault fds working.
    vfork_children_leave_the_parents_fds_alone: host_case("vfork", "0", secs(60));
    /// Issue 10 item 2: 60 `fork`s while three threads run ioctls,
    /// open/close and dup/close; every child's calls work (a deadlocked child
    /// dies of `SIGALRM` and fails the test).
    fork_in_a_threaded_program: host_case("fork-threads", "0", secs(120));
    /// Issue 10 item 3: signal handlers calling `ioctl`, `dup`, `close`,
    /// `read` (fault fd) and `open("/dev/iommu")` that interrupt the same calls
    /// (and `malloc`) of the main thread: no corruption, no deadlock, every
    /// call works.
    calls_from_signal_handlers: host_case("signals", "2", secs(60));
    /// Issue 10 item 4: `dup` racing `close` of `/dev/iommu` and fault fds
    /// gives `EBADF` or a working fd, never an orphan; `open` racing a `close`
    /// of the number it is about to get never fails.
    dup_racing_close: host_case("dup-race", "2", secs(60));
    /// Issue 10 item 12: `FIOCLEX`, `FIONCLEX`, `FIONBIO`, `FIOASYNC` and
    /// `FIGETBSZ` behave as the kernel's `do_vfs_ioctl` on `/dev/iommu` and
    /// `/dev/vfio/vfio`.
    file_level_ioctls: host_case("fio", "0", secs(30));
    /// Fds closed behind the shim's back (raw `close`, `fclose` of an
    /// `fdopen`ed stream) and reused by a socket, pipe, eventfd, socketpair or
    /// epoll fd are not taken for ours any more, without the per-ioctl `fstat`
    /// of the paranoid mode.
    fds_closed_behind_the_shims_back: host_case("stale", "0", secs(30));
    /// The fds the engine makes for itself in the program's process (the
    /// `/proc/PID/status` and `/proc/PID/maps` it reads for a fork child
    /// reaching the parent's context, a pidfd) never show at a number the
    /// program may `dup`: a thread duplicating every low number the program
    /// does not hold gets `EBADF` only (the stress test once saw such a
    /// `/proc` file as "a dup of a closing `/dev/iommu` fd").
    private_fds_stay_out_of_the_programs_way: host_case("private-fds", "2", secs(60));
}

/// The stress test: threads running ioctls, open/close, dup/close races on
/// engine fds, `fork`, `vfork`+`exec`, `posix_spawn`, and a signal handler
/// calling `close`/`dup`/`read`/`ioctl`/`open`, all at once for a bounded
/// time under a watchdog (`UIOMMUFD_STRESS_SECONDS`, default 5).
#[test]
fn stress_threads_forks_signals_and_fd_races() {
    let secs = std::env::var("UIOMMUFD_STRESS_SECONDS").unwrap_or_else(|_| "5".into());
    let deadline = std::time::Duration::from_secs(secs.parse::<u64>().unwrap_or(5) * 6 + 60);
    host_case("stress", &secs, deadline);
}

/// Issue 10 item 1 as reported: CPython's `subprocess.run` (vfork, then
/// closing fds in the child) leaves the parent's `/dev/iommu` fd working.
#[test]
fn python_subprocess_keeps_the_parents_fd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/subprocess_vfork.py");
    let Ok(out) = Command::new("python3")
        .arg(&script)
        .env("LD_PRELOAD", preload_so())
        .output()
    else {
        eprintln!("python3 not available; skipping");
        return;
    };
    assert_ok(&out, "python subprocess");
}

/// `tests/c/preload_paths.c`: bad path pointers (`EFAULT`, never `SIGSEGV`),
/// paths of `PATH_MAX` bytes and more (`ENAMETOOLONG`), `O_PATH` opens of
/// `/dev/iommu` (no context: `ioctl` is `EBADF`), and every form of a path
/// to the node (trailing slash, `.`/`..`, relative, `O_DIRECTORY`,
/// `O_CREAT|O_EXCL`, `O_TMPFILE`) compared with the kernel's answer for
/// `/dev/null` in its place.
#[test]
fn open_path_forms_and_bad_paths() {
    assert_ok_with_logging(&c_program("preload_paths"), &[], &[], "preload_paths");
}

/// `tests/c/engine_fds.c`: access and fault fds through the uAPI under
/// `RLIMIT_AS` = 1 GiB: 1.5 GiB reads and writes (no bounce buffer of that
/// size: whole records, or `EINVAL` on an access fd), `EPOLLET` sees every
/// new fault, `poll` on an access fd is `POLLIN|POLLOUT`, reads into
/// read-only/`PROT_NONE` memory are `EFAULT` with the fault left queued,
/// and the buffer past the records read is never rewritten (a counter
/// another thread increments there loses nothing).
#[test]
fn engine_fds_from_c() {
    assert_ok_with_logging(&c_program("engine_fds"), &[], &[], "engine_fds");
}

/// `tests/c/program_signals.c`: a program with `SIGSEGV`/`SIGBUS` handlers
/// of its own (`SA_SIGINFO` handlers that repair and return, plain ones
/// that `siglongjmp`, `SA_ONSTACK` on an alternate stack, `SA_RESETHAND`,
/// sent signals, children dying of the default action) behaves the same
/// without the preload, with it (which owns the two signals for its
/// fault-safe copies), and with the copies off; under the preload, bad
/// pointers in ioctls are `EFAULT` whatever handler is set, and copies
/// racing `munmap`/`mprotect` of their memory fail cleanly.
#[test]
fn programs_keep_their_own_fault_handlers() {
    let exe = c_program("program_signals");
    let plain = Command::new(&exe).output().expect("run program_signals");
    assert_ok(&plain, "program_signals without the preload");
    let out = run_preloaded(&exe, &["2"], &[]);
    assert_ok(&out, "program_signals under the preload");
    let out = run_preloaded(&exe, &["1"], &[("UIOMMUFD_FAULT_HANDLER", "0")]);
    assert_ok(&out, "program_signals with UIOMMUFD_FAULT_HANDLER=0");
}

/// `tests/c/vfio_devices.c`: a device declared with `UIOMMUFD_DEVICES` as
/// QEMU finds it — the sysfs tree (`sysfsdev=`), the `/sys/bus/pci/devices`
/// and `/sys/kernel/iommu_groups` redirects (`host=`), the `/dev/vfio`
/// nodes' `stat`, and the opened cdev's `fstat`.
#[test]
fn declared_vfio_device_from_c() {
    let exe = c_program("vfio_devices");
    let sysfs = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vfio-devices-sysfs-{}", std::process::id()));
    let (addr, group, cdev) = ("0000:f3:04.0", "4242", "17");
    let decl = format!("dma-engine,addr={addr},group={group},cdev={cdev}");
    assert_ok_with_logging(
        &exe,
        &[sysfs.to_str().unwrap(), addr, group, cdev],
        &[
            ("UIOMMUFD_DEVICES", decl.as_str()),
            ("UIOMMUFD_SYSFS", sysfs.to_str().unwrap()),
        ],
        "vfio_devices",
    );
    let _ = std::fs::remove_dir_all(&sysfs);
}

/// A bad `UIOMMUFD_DEVICES`: a clear message on stderr, and the program
/// runs without emulated devices (`vfio_devices.c` then finds none).
#[test]
fn bad_device_declaration_is_reported() {
    let exe = compile_src("vfio_devices.c", "vfio_devices_bad", &["-O1"]);
    let sysfs = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vfio-devices-bad-{}", std::process::id()));
    let out = run_preloaded(
        &exe,
        &[sysfs.to_str().unwrap(), "0000:f3:04.0", "4242", "17"],
        &[
            ("UIOMMUFD_DEVICES", "no-such-model,group=4242,cdev=17"),
            ("UIOMMUFD_SYSFS", sysfs.to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("UIOMMUFD_DEVICES")
            && stderr.contains("unknown device model \"no-such-model\"")
            && stderr.contains("running without emulated devices"),
        "a bad declaration is reported:\n{stderr}"
    );
    assert!(!sysfs.exists(), "no tree for a failed declaration");
    assert!(
        stderr.contains("stat /dev/vfio/4242"),
        "the group is not emulated:\n{stderr}"
    );
}

/// `tests/c/vtd_nested.c`: VT-d first-stage nesting from C with the
/// dma-engine: hardware info, nest parent, S1 HWPT over the program's own
/// table, the ring and COPYs through both stages, a stale translation
/// until `HWPT_INVALIDATE`, and a fault read from the fault fd, answered,
/// and the COPY retried.
#[test]
fn vtd_nested_from_c() {
    let exe = c_program("vtd_nested");
    let sysfs = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vtd-nested-sysfs-{}", std::process::id()));
    let out = run_preloaded(
        &exe,
        &[],
        &[
            (
                "UIOMMUFD_DEVICES",
                "dma-engine,addr=0000:f3:05.0,group=4243,cdev=18",
            ),
            ("UIOMMUFD_SYSFS", sysfs.to_str().unwrap()),
        ],
    );
    assert_ok(&out, "vtd_nested under the preload");
    let _ = std::fs::remove_dir_all(&sysfs);
}

/// Issue 16: `IOMMU_IOAS_MAP_FILE` of a memfd from C under the preload: the
/// fd number is the program's, the area survives the program's `munmap`
/// and `close`; at `UIOMMUFD_UAPI=6.12` the command is `ENOTTY`.
#[test]
fn map_file_of_a_memfd() {
    let exe = c_program("map_file");
    let out = run_preloaded(&exe, &[], &[]);
    assert_ok(&out, "map_file at the default level");
    let out = run_preloaded(&exe, &[], &[("UIOMMUFD_UAPI", "6.13")]);
    assert_ok(&out, "map_file at 6.13");
    let out = run_preloaded(&exe, &["6.12"], &[("UIOMMUFD_UAPI", "6.12")]);
    assert_ok(&out, "map_file at 6.12");
    // a value that names no level is logged and the default (7.2) used
    let out = run_preloaded(&exe, &[], &[("UIOMMUFD_UAPI", "6.99")]);
    assert_ok(&out, "map_file with an unknown UIOMMUFD_UAPI");
    // the 6.12 expectations fail at a newer level: the check can fail
    let out = run_preloaded(&exe, &["6.12"], &[("UIOMMUFD_UAPI", "7.2")]);
    assert!(!out.status.success(), "MAP_FILE answered at 7.2 as at 6.12");
}

/// Issue 12 item 3, pins that hold: memory pinned for a mock domain and an
/// access survives the program's `munmap`, `mmap(MAP_FIXED)`, `madvise
/// (MADV_DONTNEED)` and `mremap` for the IOMMU, while the program's calls
/// do what they say; `IOAS_UNMAP` releases it.
#[test]
fn pins_hold_when_the_program_unmaps() {
    assert_ok_with_logging(&c_program("pins_hold"), &[], &[], "pins_hold");
}

/// Issue 16 item 1: one context shared by two unrelated processes through
/// `SCM_RIGHTS` (`tests/c/scm_rights.c`): each maps its own memory into the
/// same IOAS and sees the other's areas; the owner's access reads and
/// writes the peer's memory.
#[test]
fn scm_rights_shares_one_context_between_unrelated_processes() {
    scm_rights_run(false);
}

/// The same with the fd sent by `sendmmsg` and received by `recvmmsg`.
#[test]
fn scm_rights_by_sendmmsg_and_recvmmsg() {
    scm_rights_run(true);
}

fn scm_rights_run(mmsg: bool) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let exe = EXE.get_or_init(|| compile_src("scm_rights.c", "scm_rights", &["-O1"]));
    let name = format!("uiommufd-test-scm-{}-{mmsg}", std::process::id());
    let env: &[(&str, &str)] = if mmsg { &[("SCM_MMSG", "1")] } else { &[] };
    let mut owner = Command::new(exe)
        .args(["owner", &name])
        .envs(env.iter().copied())
        .env("LD_PRELOAD", preload_so())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the owner");
    // the peer starts once the owner listens
    let mut lines = BufReader::new(owner.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).expect("the owner's first line");
    assert_eq!(first.trim(), "LISTENING", "owner did not start");
    let peer = run_preloaded(exe, &["peer", &name], env);
    let status = owner.wait().expect("wait for the owner");
    let mut rest = String::new();
    let _ = lines.read_to_string(&mut rest);
    let mut err = String::new();
    let _ = owner.stderr.take().unwrap().read_to_string(&mut err);
    assert_ok(&peer, "scm_rights peer");
    check_run("scm_rights owner", status, &rest, &err);
}

/// Issue 16 item 1: a `/dev/iommu` fd inherited across `exec` keeps its
/// context (`tests/c/exec_share.c`): after `fork` + `execv`, `vfork` +
/// `execve` (the child makes the fd inheritable, as CPython does),
/// `posix_spawn` by the owner and by a client, each time with the parent's
/// own fd closed first; a failed `exec` changes nothing; a new image that
/// never claims its reference does not keep the context after it exits.
#[test]
fn exec_keeps_the_context() {
    assert_ok_with_logging(&c_program("exec_share"), &[], &[], "exec_share");
}

/// Issue 16 item 1: a `/dev/iommu` fd inherited across `fork` (and again by
/// a grandchild) is the parent's context (`tests/c/fork_share.c`).
#[test]
fn fork_shares_the_context() {
    assert_ok(
        &run_preloaded(&c_program("fork_share"), &[], &[]),
        "fork_share",
    );
}
