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

/// The preload, built with the same profile and target dir as the binary
/// under test (cargo makes it a no-op when it is up to date).
fn build_preload() -> std::path::PathBuf {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_uiommufd"));
    uiommufd_testkit::preload::build_preload(bin.parent().expect("target/<profile>"))
}

#[test]
fn declared_devices_are_announced_and_reach_the_program() {
    let preload = build_preload();
    let dir = std::env::temp_dir().join(format!("uiommufd-run-ok-{}", std::process::id()));
    let sysfs = dir.join("sysfs");
    let script = "cat \"$UIOMMUFD_SYSFS/devices/0000:f4:02.0/vfio-dev/vfio21/dev\"; \
                  readlink /sys/bus/pci/devices/0000:f4:02.0/iommu_group; \
                  stat -c '%F %t:%T' /dev/vfio/devices/vfio21 /dev/vfio/5151; \
                  echo \"$UIOMMUFD_DEVICES\"";
    let out = uiommufd()
        .env("UIOMMUFD_PRELOAD", &preload)
        .env("UIOMMUFD_SYSFS", &sysfs)
        .args([
            "run",
            "--device",
            "dma-engine,addr=f4:02.0,group=5151,cdev=21",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let want_err = format!(
        "uiommufd: dma-engine 0000:f4:02.0: sysfs {}/devices/0000:f4:02.0, group /dev/vfio/5151, cdev /dev/vfio/devices/vfio21",
        sysfs.display()
    );
    assert!(stderr.contains(&want_err), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "240:21",
            "../../kernel/iommu_groups/5151",
            // stat prints the numbers in hex
            "character special file f0:15",
            "character special file f1:141f",
            "dma-engine,addr=f4:02.0,group=5151,cdev=21",
        ],
        "{stderr}"
    );
    // -q: nothing announced
    let out = uiommufd()
        .env("UIOMMUFD_PRELOAD", &preload)
        .env("UIOMMUFD_SYSFS", &sysfs)
        .args(["run", "-q", "--device", "dma-engine", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
