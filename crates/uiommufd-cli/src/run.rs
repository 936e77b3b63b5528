//! `uiommufd run`: exec a program with the preload library in `LD_PRELOAD`.

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

/// Replace this process with `program`, the preload first in `LD_PRELOAD`.
pub fn run(preload: Option<PathBuf>, program: Vec<OsString>) -> Result<(), String> {
    let lib = find_preload(preload)?;
    let mut ld = OsString::from(lib.as_os_str());
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        ld.push(":");
        ld.push(old);
    }
    let (prog, args) = program.split_first().ok_or("no program given")?;
    let err = std::process::Command::new(prog)
        .args(args)
        .env("LD_PRELOAD", ld)
        .exec();
    Err(format!("cannot run {}: {err}", prog.to_string_lossy()))
}
