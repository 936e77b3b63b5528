//! Case 1 (b): the ioctl path a C program takes. A small C program, built
//! at bench time with `cc`, opens `/dev/iommu` under `LD_PRELOAD` of the
//! shim and times `IOMMU_IOAS_MAP`+`IOMMU_IOAS_UNMAP` of one page, and the
//! floor (`MADV_POPULATE_WRITE` of that page) in the same process.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Report, Row, Scale, Unit};

/// The timing program. Prints `key value` lines: medians in ns.
const C_SRC: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define IOMMUFD_TYPE ';'
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)

struct iommu_ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iommu_ioas_map {
	uint32_t size, flags, ioas_id, reserved;
	uint64_t user_va, length, iova;
};
struct iommu_ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, long n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp);
	return v[n / 2];
}

int main(int argc, char **argv)
{
	long reps = argc > 1 ? atol(argv[1]) : 9, iters = argc > 2 ? atol(argv[2]) : 2000;
	int fd = open("/dev/iommu", O_RDWR);
	if (fd < 0) { perror("open /dev/iommu"); return 1; }
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a)) { perror("IOMMU_IOAS_ALLOC"); return 1; }
	void *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) { perror("mmap"); return 1; }
	memset(buf, 1, 4096);
	struct iommu_ioas_map m = {
		.size = sizeof(m), .flags = 7, /* FIXED_IOVA | WRITEABLE | READABLE */
		.ioas_id = a.out_ioas_id, .user_va = (uintptr_t)buf, .length = 4096,
		.iova = 1ull << 30,
	};
	struct iommu_ioas_unmap u = {
		.size = sizeof(u), .ioas_id = a.out_ioas_id, .iova = 1ull << 30, .length = 4096,
	};
	double *v = calloc((size_t)reps, sizeof(double));
	if (!v) return 1;
	for (long r = -1; r < reps; r++) {
		uint64_t t = now_ns();
		for (long i = 0; i < iters; i++) {
			if (ioctl(fd, IOMMU_IOAS_MAP, &m) || ioctl(fd, IOMMU_IOAS_UNMAP, &u)) {
				perror("IOMMU_IOAS_MAP/UNMAP");
				return 1;
			}
		}
		if (r >= 0) v[r] = (double)(now_ns() - t) / (double)iters;
	}
	printf("map_unmap_ns %.1f\n", median(v, reps));
	for (long r = -1; r < reps; r++) {
		uint64_t t = now_ns();
		for (long i = 0; i < iters; i++) {
			if (madvise(buf, 4096, MADV_POPULATE_WRITE)) { perror("madvise"); return 1; }
		}
		if (r >= 0) v[r] = (double)(now_ns() - t) / (double)iters;
	}
	printf("madvise_ns %.1f\n", median(v, reps));
	for (long r = -1; r < reps; r++) {
		uint64_t t = now_ns();
		for (long i = 0; i < iters; i++)
			syscall(SYS_getppid);
		if (r >= 0) v[r] = (double)(now_ns() - t) / (double)iters;
	}
	printf("syscall_ns %.1f\n", median(v, reps));
	close(fd);
	return 0;
}
"#;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let d = std::env::temp_dir().join(format!("uiommufd-bench-{}", std::process::id()));
        std::fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        Ok(TempDir(d))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Build the C program; returns its path.
fn build(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("ioctl_bench.c");
    let exe = dir.join("ioctl_bench");
    std::fs::write(&src, C_SRC).map_err(|e| format!("write {}: {e}", src.display()))?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-O2", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .map_err(|e| format!("cannot run {cc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cc} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(exe)
}

/// Case 1 (b): run the C program under the preload; skipped (with the
/// reason) when the preload or a C compiler is missing.
pub fn preload_ioctl(s: &Scale, r: &mut Report) -> Result<(), String> {
    let id = "1.map_unmap_4k.preload_ioctl.0dom";
    let lib = match crate::run::find_preload(None) {
        Ok(l) => l,
        Err(e) => {
            r.skip(id, e);
            return Ok(());
        }
    };
    let dir = TempDir::new()?;
    let exe = match build(dir.path()) {
        Ok(e) => e,
        Err(e) => {
            r.skip(id, e);
            return Ok(());
        }
    };
    let out = Command::new(&exe)
        .arg(s.reps.to_string())
        .arg(s.iters.to_string())
        .env("LD_PRELOAD", &lib)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "the ioctl program failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| -> Result<f64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().parse::<f64>()))
            .ok_or_else(|| format!("the ioctl program printed no {k}: {text}"))?
            .map_err(|e| format!("{k}: {e}"))
    };
    let ns = get("map_unmap_ns")?;
    let floor = get("madvise_ns")?;
    let sys = get("syscall_ns")?;
    r.push(
        Row::vs_floor(
            id,
            1,
            "IOMMU_IOAS_MAP+UNMAP 4 KiB from C via ioctl() on /dev/iommu under LD_PRELOAD, no domain",
            Unit::NsPerOp,
            ns,
            floor,
            "MADV_POPULATE_WRITE of the page, same C process",
        )
        .note(format!("a bare syscall (getppid) costs {sys:.0} ns there")),
    );
    Ok(())
}
