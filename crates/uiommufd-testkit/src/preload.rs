//! The `LD_PRELOAD` shim for tests that run programs under it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build `libuiommufd_preload.so` with cargo into `profile_dir`
/// (`target/<profile>` of the test binary or of the binary under test:
/// the same target dir, release when that is `release`); its path. Cargo
/// makes this a no-op when the library is up to date.
pub fn build_preload(profile_dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "-p", "uiommufd-preload"]);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p uiommufd-preload failed");
    let so = profile_dir.join("libuiommufd_preload.so");
    assert!(so.exists(), "{} missing after the build", so.display());
    so
}
