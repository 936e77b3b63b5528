//! `uiommufd run --device`: declarations are checked before the program
//! starts.

use std::process::Command;

fn uiommufd() -> Command {
    let exe = env!("CARGO_BIN_EXE_uiommufd");
    let mut c = Command::new(exe);
    // the preload is never loaded in these runs: any regular file will do
    c.env("UIOMMUFD_PRELOAD", exe)
        .env_remove("UIOMMUFD_DEVICES");
    c
}

#[test]
fn a_bad_device_fails_before_the_program_runs() {
    let dir = std::env::temp_dir().join(format!("uiommufd-run-devices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ran");
    for (spec, why) in [
        ("no-such-model", "unknown device model \"no-such-model\""),
        ("x,novalue", "is not key=value"),
        ("x,addr=0:0:20.0", "is not DDDD:BB:DD.F"),
        ("x,group=abc", "is not a number"),
        ("a;b", "one device per --device"),
    ] {
        let out = uiommufd()
            .env("UIOMMUFD_SYSFS", dir.join("sysfs"))
            .args(["run", "--device", spec, "--", "touch"])
            .arg(&marker)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec}: {stderr}");
        assert!(
            stderr.contains(why) && stderr.starts_with("uiommufd: "),
            "{spec}: {stderr}"
        );
        assert!(!marker.exists(), "{spec}: the program ran");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
