//! `uiommufd run`: exec a program with the preload library in `LD_PRELOAD`
//! and, with `--device`, emulated VFIO devices declared (checked here
//! first, so that a bad declaration fails before the program starts).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The file name of the preload library cargo builds.
const PRELOAD_NAME: &str = "libuiommufd_preload.so";

/// Where the preload is: `--preload`, `$UIOMMUFD_PRELOAD`, or next to this binary.
pub(crate) fn find_preload(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("UIOMMUFD_PRELOAD").map(PathBuf::from)) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("preload library {} does not exist", p.display()))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this binary's path: {e}"))?;
    let dir = exe.parent().ok_or("this binary has no parent directory")?;
    // cargo puts test/bench binaries one level down (deps/)
    for cand in [dir.join(PRELOAD_NAME), dir.join("..").join(PRELOAD_NAME)] {
        if cand.is_file() {
            return cand.canonicalize().map_err(|e| e.to_string());
        }
    }
    Err(format!(
        "{PRELOAD_NAME} not found next to {} — build it with `cargo build --release -p uiommufd-preload`, or pass --preload",
        exe.display()
    ))
}

/// Declare `specs` (after those already in `$UIOMMUFD_DEVICES`, in the
/// order the preload will declare them), write their sysfs tree, and
/// return the environment the program gets: `UIOMMUFD_DEVICES` and
/// `UIOMMUFD_SYSFS`. A bad declaration fails here, before the program runs.
fn declare(specs: &[String], quiet: bool) -> Result<Vec<(&'static str, String)>, String> {
    use uiommufd::vfio::{registry, sysfs};
    let mut all: Vec<String> = std::env::var(registry::DEVICES_ENV)
        .unwrap_or_default()
        .split(';')
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect();
    for s in specs {
        if s.contains(';') {
            return Err(format!("--device {s:?}: one device per --device (no ';')"));
        }
        all.push(s.clone());
    }
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let mut decls = Vec::new();
    for s in &all {
        let d = registry::declare(s).map_err(|e| format!("device {s:?}: {e}"))?;
        decls.push(d);
    }
    let root = sysfs::write_declared().map_err(|e| format!("{e}"))?;
    if !quiet {
        for d in &decls {
            eprintln!(
                "uiommufd: {} {}: sysfs {}, group /dev/vfio/{}, cdev /dev/vfio/devices/vfio{}",
                d.kind,
                d.addr,
                sysfs::device_dir(&root, &d.addr).display(),
                d.group,
                d.cdev
            );
        }
    }
    Ok(vec![
        (registry::DEVICES_ENV, all.join(";")),
        (sysfs::SYSFS_ENV, root.to_string_lossy().into_owned()),
    ])
}

/// Replace this process with `program`, the preload first in `LD_PRELOAD`,
/// the devices `specs` declared and, if given, the uAPI level set.
pub fn run(
    preload: Option<PathBuf>,
    specs: &[String],
    quiet: bool,
    uapi: Option<uiommufd::UapiLevel>,
    program: Vec<OsString>,
) -> Result<(), String> {
    let lib = find_preload(preload)?;
    let mut env = declare(specs, quiet)?;
    if let Some(level) = uapi {
        env.push((uiommufd::UapiLevel::ENV, level.to_string()));
    }
    let mut ld = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        ld.push(":");
        ld.push(old);
    }
    let (prog, args) = program.split_first().ok_or("no program given")?;
    let err = std::process::Command::new(prog)
        .args(args)
        .env("LD_PRELOAD", ld)
        .envs(env)
        .exec();
    Err(format!("cannot run {}: {err}", prog.to_string_lossy()))
}
