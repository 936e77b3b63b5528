//! `uiommufd bench --quick --json` runs, prints valid JSON, and reports
//! every case (measured, or skipped with a reason). Timings are never
//! asserted: they depend on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Build the preload with the same profile and target dir as the binary
/// under test, so that case 1 (b) finds it next to the binary.
fn build_preload(bin: &Path) {
    let dir = bin.parent().expect("target/<profile>");
    uiommufd_testkit::preload::build_preload(dir);
}

fn has_cc() -> bool {
    Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn bench_quick_json_has_every_case() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_uiommufd"));
    build_preload(&bin);
    let out = uiommufd_testkit::run_ok(
        Command::new(&bin).args(["bench", "--quick", "--json", "--threads", "3"]),
        "uiommufd bench",
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench --json printed invalid JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let rows = doc["rows"].as_array().expect("rows");
    let skipped = doc["skipped"].as_array().expect("skipped");
    assert!(doc["machine"].is_string());
    assert!(doc["quick"].as_bool().expect("quick"));
    assert!(!doc["references"].as_array().expect("references").is_empty());
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().expect("id")).collect();
    let skipped_ids: Vec<&str> = skipped
        .iter()
        .map(|r| {
            assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()));
            r["id"].as_str().expect("skipped id")
        })
        .collect();
    for row in rows {
        let ours = row["ours"].as_f64().expect("ours is a number");
        assert!(ours.is_finite() && ours > 0.0, "{row}");
        assert!(row["unit"].is_string() && row["what"].is_string(), "{row}");
        if let Some(f) = row["floor"].as_f64() {
            assert!(f.is_finite() && f > 0.0, "{row}");
            assert!(row["ratio"].as_f64().is_some_and(f64::is_finite), "{row}");
            assert_eq!(row["ratio_kind"], "vs_floor", "{row}");
        }
    }

    let mut want: Vec<String> = vec![
        "1.map_unmap_4k.rust.0dom".into(),
        "1.map_unmap_4k.rust.1dom".into(),
        "1.map_unmap_4k.dispatch.0dom".into(),
        "1.map_unmap_4k.preload_ioctl.0dom".into(),
        "3.copy_1g.0dom".into(),
        "3.copy_1g.1dom".into(),
        "5.rw.8b.1024areas".into(),
    ];
    for b in ["4k", "thp"] {
        want.push(format!("2.map_1g.{b}.0dom"));
        for d in ["1dom", "2dom"] {
            want.push(format!("2.map_1g.{b}.{d}"));
            want.push(format!("2.map_1g.{b}.{d}.fresh"));
        }
    }
    for d in ["0dom", "1dom"] {
        for t in [1, 2, 3] {
            want.push(format!("4.threads.{d}.t{t}"));
        }
    }
    for s in ["64k", "4m"] {
        for d in ["read", "write"] {
            want.push(format!("5.rw.{s}.{d}"));
        }
    }
    for id in [
        "8.vtd.translate.hit",
        "8.vtd.translate.1024",
        "8.vtd.translate.1024.walk",
        "8.vtd.dirty.0%",
        "8.vtd.dirty.1%",
        "8.vtd.dirty.100%",
        "8.vtd.map_1g.4k.1dom",
        "8.vtd.map_1g.4k.2dom",
        "8.vtd.attach_1g.4k",
        "8.vtd.domain_map_1g.4k.fresh",
        "8.vtd.domain_map_1g.4k.warm",
    ] {
        want.push(id.into());
    }
    if cfg!(target_arch = "x86_64") {
        for s in ["64k", "4m"] {
            for d in ["read", "write"] {
                want.push(format!("8.vtd.dma.{s}.{d}"));
            }
        }
    }
    for t in ["hwpt", "type1", "dma-logging"] {
        for k in ["cold", "warm"] {
            want.push(format!("9.{k}_read.{t}"));
        }
    }
    // quick: 10^2 .. 10^4 shared-pages areas, 10^2 .. 10^3 own pages objects
    for n in [100, 1000, 10000] {
        want.push(format!("7.growth.fixed.{n}"));
        want.push(format!("7.growth.alloc.{n}"));
    }
    for n in [100, 1000] {
        want.push(format!("7.growth.pages.{n}"));
    }
    for w in &want {
        let measured = ids.contains(&w.as_str());
        // only the preload case may be skipped, and only without a C compiler
        let excused = w.contains("preload_ioctl") && !has_cc() && skipped_ids.contains(&w.as_str());
        assert!(
            measured || excused,
            "case {w} missing; rows: {ids:?}; skipped: {skipped_ids:?}"
        );
    }
    // the dirty bitmap case: measured, or skipped with its reason
    assert!(
        ids.iter().any(|i| i.starts_with("6.dirty"))
            || skipped_ids.iter().any(|i| i.starts_with("6.dirty")),
        "case 6 neither measured nor reported as skipped"
    );
    // ratios of growth rows are relative to the smallest size
    for row in rows
        .iter()
        .filter(|r| r["id"].as_str().is_some_and(|i| i.starts_with("7.")))
    {
        assert_eq!(row["ratio_kind"], "vs_smallest", "{row}");
    }
}
