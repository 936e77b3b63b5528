//! `uiommufd run --uapi LEVEL`: the level reaches the program's environment
//! (`UIOMMUFD_UAPI`, which the engine reads when a context is created); a
//! level that is not emulated fails before the program runs.

use std::process::Command;

fn uiommufd() -> Command {
    let exe = env!("CARGO_BIN_EXE_uiommufd");
    let mut c = Command::new(exe);
    // not a shared library: the dynamic loader ignores it (with a warning),
    // which is all these runs need
    c.env("UIOMMUFD_PRELOAD", exe)
        .env_remove("UIOMMUFD_DEVICES")
        .env_remove("UIOMMUFD_UAPI");
    c
}

/// `uiommufd run -q ARGS -- sh -c 'echo uapi=$UIOMMUFD_UAPI'` with
/// `UIOMMUFD_UAPI` set to `env` first when given: the run's output.
fn uapi_seen(args: &[&str], env: Option<&str>) -> std::process::Output {
    let mut c = uiommufd();
    if let Some(level) = env {
        c.env("UIOMMUFD_UAPI", level);
    }
    c.args(["run", "-q"])
        .args(args)
        .args(["--", "sh", "-c", "echo \"uapi=$UIOMMUFD_UAPI\""])
        .output()
        .unwrap()
}

#[test]
fn the_level_reaches_the_program() {
    for (arg, want) in [("6.12", "6.12"), ("6.13.7", "6.13"), ("v7.2", "7.2")] {
        let out = uapi_seen(&["--uapi", arg], None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{arg}: {out:?}");
        assert_eq!(stdout.trim(), format!("uapi={want}"), "{arg}");
    }
    // without --uapi the caller's environment is left as it is
    let out = uapi_seen(&[], Some("6.14"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "uapi=6.14");
}

#[test]
fn an_unknown_level_fails_before_the_program_runs() {
    for bad in ["6.11", "7.3", "6", "latest"] {
        let out = uiommufd()
            .args(["run", "-q", "--uapi", bad, "--", "sh", "-c", "echo ran"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ran"),
            "{bad}"
        );
        assert!(stderr.contains("--uapi"), "{bad}: {stderr}");
    }
}
