//! `uiommufd migrate` end to end: each tracker verifies a migration of a
//! device writing its stream throughout; a destination that dies mid-stream
//! and a corrupted stream end with a clear error. Timings are reported,
//! never asserted.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use uiommufd_testkit::run_ok;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    // No test may hang CI: a side that waits too long for its peer fails.
    c.env("UIOMMUFD_MIGRATE_TIMEOUT_S", "60");
    c
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "uiommufd-migrate-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&d);
    d
}

#[test]
fn each_tracker_verifies_a_migration() {
    for tracker in ["hwpt", "type1", "dma-logging"] {
        let svg = tmp(&format!("{tracker}.svg"));
        let json_out = tmp(&format!("{tracker}.json"));
        let out = bin()
            .args([
                "migrate", "--size", "32M", "--rate", "100000", "--json", "-q",
            ])
            .args(["--tracker", tracker])
            .arg("--svg")
            .arg(&svg)
            .arg("--json-out")
            .arg(&json_out)
            .output()
            .expect("run uiommufd migrate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tracker}: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(v["ok"], true, "{tracker}: {v}");
        let file: Value =
            serde_json::from_slice(&std::fs::read(&json_out).unwrap()).expect("JSON file");
        assert_eq!(file, v, "{tracker}: --json-out writes the same report");
        let _ = std::fs::remove_file(&json_out);
        assert_eq!(v["memory_ok"], true);
        assert_eq!(v["stream_ok"], true);
        assert_eq!(v["tracker"], tracker);
        let rounds = v["rounds"].as_array().unwrap();
        assert_eq!(rounds[0]["pages"], 32 * 256);
        assert_eq!(rounds.last().unwrap()["stopped"], true);
        assert!(v["device_bytes"].as_u64().unwrap() > 0);
        // the raw floor's samples and the copy next to the downtime
        assert_eq!(v["raw_socket_samples_bps"].as_array().unwrap().len(), 3);
        assert_eq!(v["next_raw_samples_bps"].as_array().unwrap().len(), 3);
        assert!(v["next_raw_bps"].as_f64().unwrap() > 0.0);
        // the bound's rate: real-time copies where the stop path was
        let bound_samples = v["bound_raw_samples_bps"].as_array().unwrap().len();
        if v["realtime"] == true {
            assert_eq!(bound_samples, 3);
        } else {
            assert_eq!(bound_samples, 0);
            assert_eq!(v["bound_raw_bps"], v["raw_socket_bps"]);
        }
        let parts = v["downtime_parts_s"].as_object().unwrap();
        let sum: f64 = parts.values().map(|p| p.as_f64().unwrap()).sum();
        let down = v["downtime_s"].as_f64().unwrap();
        assert!(
            (sum - down).abs() < 1e-6,
            "{tracker}: parts {sum} vs {down}"
        );
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(svg.starts_with("<svg"));
        eprintln!(
            "{tracker}: {} rounds, downtime {:.3} ms",
            rounds.len(),
            v["downtime_s"].as_f64().unwrap() * 1e3
        );
    }
}

/// The source moves its code onto huge pages where transparent huge pages
/// may be used (`hugetext.rs`), and leaves it alone when told to; the
/// migration verifies either way.
#[test]
fn the_code_goes_onto_huge_pages_unless_told_not_to() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"));
    for moved in [true, false] {
        let mut c = bin();
        c.args(["migrate", "--size", "16M", "--json", "-q"]);
        if !moved {
            c.env("UIOMMUFD_HUGE_TEXT", "0");
        }
        let out = run_ok(&mut c, "uiommufd migrate");
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(v["ok"], true, "{v}");
        let huge = v["huge_text_bytes"].as_u64().expect("huge_text_bytes");
        if !moved {
            assert_eq!(huge, 0);
        } else if thp {
            assert!(huge >= 2 << 20, "{huge} bytes of code on huge pages");
        }
    }
}

/// With no downtime budget every tracker runs pre-copy rounds up to the
/// limit (or until a read finds nothing dirty), reading into one bitmap
/// that the source keeps zero between reads by clearing the words it
/// consumed (a debug build asserts that the bitmap is zero before each
/// read).
#[test]
fn rounds_up_to_the_limit_reuse_the_bitmap() {
    for tracker in ["hwpt", "type1", "dma-logging"] {
        let out = run_ok(
            bin()
                .args([
                    "migrate", "--size", "16M", "--rate", "200000", "--json", "-q",
                ])
                .args(["--downtime-ms", "0", "--max-rounds", "4"])
                .args(["--tracker", tracker]),
            "uiommufd migrate",
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(v["ok"], true, "{tracker}: {v}");
        let rounds = v["rounds"].as_array().unwrap();
        // round 0, at least one pre-copy round (the device writes throughout;
        // a read that finds nothing dirty ends them early), the stop
        assert!(
            (3..=5).contains(&rounds.len()),
            "{tracker}: {} rounds: {v}",
            rounds.len()
        );
    }
}

#[test]
fn one_connection_and_normal_scheduling_verify_too() {
    let out = run_ok(
        bin().args([
            "migrate",
            "--size",
            "16M",
            "--json",
            "-q",
            "--lanes",
            "1",
            "--no-realtime",
        ]),
        "uiommufd migrate",
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["realtime"], false);
}

#[test]
fn listen_and_send_over_tcp() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut dst = bin()
        .args(["migrate", "--size", "16M", "-q", "listen", "--tcp", &addr])
        .spawn()
        .unwrap();
    let out = run_ok(
        bin().args([
            "migrate", "--size", "16M", "-q", "--json", "send", "--tcp", &addr,
        ]),
        "uiommufd migrate send",
    );
    assert!(dst.wait().unwrap().success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

/// Read one 32-byte header.
fn header(s: &mut UnixStream) -> [u8; 32] {
    let mut h = [0u8; 32];
    s.read_exact(&mut h).unwrap();
    h
}

#[test]
fn a_destination_dying_mid_stream_is_a_clear_error() {
    let path = tmp("dies");
    let l = UnixListener::bind(&path).unwrap();
    let src = bin()
        .args(["migrate", "--size", "64M", "-q", "send", "--unix"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut s, _) = l.accept().unwrap();
    let h = header(&mut s);
    assert_eq!(
        u32::from_le_bytes(h[0..4].try_into().unwrap()),
        1,
        "Hello first"
    );
    s.write_all(&msg(8, 0, 0, 0)).unwrap();
    // Take a little of round 0, then die.
    let mut buf = vec![0u8; 1 << 20];
    s.read_exact(&mut buf).unwrap();
    drop(s);
    let err = failure(src);
    // Where the source sees it depends on how much of round 0 its send
    // buffer (up to 64 MiB, `Sock::grow_send_buffer`) had taken: in a
    // send, or in the wait for the round's acknowledgement.
    assert!(
        err.contains("sending pages")
            || err.contains("waiting for the destination to read a round"),
        "{err}"
    );
    let _ = std::fs::remove_file(&path);
}

/// A message header: `tag`, then the three words.
fn msg(tag: u32, a: u64, b: u64, c: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..4].copy_from_slice(&tag.to_le_bytes());
    h[8..16].copy_from_slice(&a.to_le_bytes());
    h[16..24].copy_from_slice(&b.to_le_bytes());
    h[24..32].copy_from_slice(&c.to_le_bytes());
    h
}

/// A destination listening on a fresh Unix socket `name`, and a
/// connection to it.
fn destination(name: &str) -> (Child, UnixStream) {
    let path = tmp(name);
    let dst = bin()
        .args(["migrate", "-q", "listen", "--unix"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    (dst, s)
}

/// The stderr of a side that must fail.
fn failure(side: Child) -> String {
    let out = side.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_corrupted_stream_is_refused_by_the_destination() {
    // Garbage instead of a Hello.
    let (dst, mut s) = destination("garbage");
    s.write_all(&[0xa5u8; 64]).unwrap();
    drop(s);
    let err = failure(dst);
    assert!(err.contains("unknown message tag"), "{err}");

    // A valid Hello, then a device state that is not one.
    let (dst, mut s) = destination("badstate");
    s.write_all(&msg(1, u64::from_le_bytes(*b"UIOMIGR1"), 1 << 20, 4096))
        .unwrap();
    let mut r = [0u8; 32];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0], 8, "Ready");
    s.write_all(&msg(4, 8, 0, 0)).unwrap();
    s.write_all(b"notstate").unwrap();
    s.write_all(&msg(5, 0, 0, 0)).unwrap();
    let err = failure(dst);
    assert!(
        err.contains("MIG_DEVICE_STATE") || err.contains("migration stream"),
        "{err}"
    );
}
