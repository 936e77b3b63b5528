//! `/dev/vfio/vfio` under the preload: builds the cdylib, compiles
//! `tests/c/vfio_type1.c` (the VFIO type1 container flow and its dirty page
//! tracking, against the system's `<linux/vfio.h>`) and runs it preloaded.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>` of this test binary (`target/<profile>/deps/<name>-*`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// Build the cdylib with the same profile and target dir as this test.
fn preload_so() -> PathBuf {
    let dir = profile_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "uiommufd-preload"]);
    if dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p uiommufd-preload failed");
    let so = dir.join("libuiommufd_preload.so");
    assert!(so.exists(), "{} missing after the build", so.display());
    so
}

fn compile(file: &str, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(file);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("uiommufd-preload");
    std::fs::create_dir_all(&dir).expect("create test dir");
    let exe = dir.join(format!("{name}-{}", std::process::id()));
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-Wall", "-Wextra", "-Werror", "-O1", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run the C compiler");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn vfio_type1_container_and_dirty_tracking() {
    let so = preload_so();
    let exe = compile("vfio_type1.c", "vfio_type1");
    for log in ["", "debug"] {
        let out = Command::new(&exe)
            .env("LD_PRELOAD", &so)
            .env("UIOMMUFD_LOG", log)
            .output()
            .expect("run vfio_type1");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "vfio_type1 (UIOMMUFD_LOG={log:?}): status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
}

/// Without the preload there is no /dev/vfio/vfio here (so the test above
/// exercises the shim, not a host VFIO).
#[test]
fn without_preload_the_program_fails() {
    if Path::new("/dev/vfio/vfio").exists() {
        eprintln!("host has a real /dev/vfio/vfio; skipping");
        return;
    }
    let exe = compile("vfio_type1.c", "vfio_type1_plain");
    let out = Command::new(&exe).output().expect("run");
    assert!(!out.status.success());
}
