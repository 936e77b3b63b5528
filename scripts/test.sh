#!/usr/bin/env bash
# Full test suite: formatting, lints, unit/integration tests, doctests, the
# real-client tests (QEMU, vfio-ioctls), and the Linux iommufd kselftest
# conformance run. Stops at the first failure.
# Extra arguments are passed to tests/conformance/kselftest.sh.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

step() {
    local name=$1
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '\n==> FAILED step "%s" (exit status %d): %s\n' "$name" "$rc" "$*" >&2
        exit "$rc"
    fi
    printf '==> %s ok (%ds)\n' "$name" "$((SECONDS - t0))"
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    step tests cargo nextest run --workspace
else
    echo "(cargo-nextest not installed; using cargo test)"
    step tests cargo test --workspace
fi
step doctests cargo test --workspace --doc

# Real clients (tests/clients/run.sh): rust-vmm's vfio-ioctls, QEMU 7.2 and
# QEMU 10.0 drive the emulated dma-engine through the preload. Builds the
# release CLI/preload and the client (about 1-2 min from clean), then about
# a minute of tests. UIOMMUFD_SKIP_CLIENTS=1 skips it.
clients() {
    if [ "${UIOMMUFD_SKIP_CLIENTS:-0}" = 1 ]; then
        echo "UIOMMUFD_SKIP_CLIENTS=1: skipping the real-client tests"
        return 0
    fi
    tests/clients/run.sh
}
step clients clients

# Live migration by unmodified QEMU (tests/clients/run-migration.sh): 7.2 with
# the v1 region on a type1 container; 10.0 with v2 on iommufd (HWPT dirty
# tracking and device DMA logging), on the legacy container, cancelled and
# destination-lost migrations. About 20 s after the clients step.
migration() {
    if [ "${UIOMMUFD_SKIP_CLIENTS:-0}" = 1 ]; then
        echo "UIOMMUFD_SKIP_CLIENTS=1: skipping the QEMU migration tests"
        return 0
    fi
    UIOMMUFD_SKIP_INSTALL=1 tests/clients/run-migration.sh
}
step migration migration

# The main job at full size: `uiommufd migrate` verifies a 1 GiB migration
# with the device writing throughout, three times per dirty tracker (a few
# seconds each; every report is printed, then a summary).
main_job() {
    cargo build --release --locked -p uiommufd-cli
    # Interleaved runs: one run's downtime and bitmap share swing with the
    # machine (a final set of a few MiB copies in well under a
    # millisecond), so the summary gives every run's numbers and the
    # median. Only the verdicts (every page and the device's stream
    # verified) decide the step.
    local dir
    dir=$(mktemp -d)
    for rep in 1 2 3; do
        for t in hwpt type1 dma-logging; do
            target/release/uiommufd migrate --size 1G --tracker "$t" -q \
                --json-out "$dir/$t-$rep.json" || { rm -rf "$dir"; return 1; }
        done
    done
    python3 scripts/migrate-summary.py "$dir"/*.json
    rm -rf "$dir"
}
step main-job main_job

# Fuzz smoke run: each libFuzzer target (fuzz/, see scripts/fuzz.sh) for a
# bounded time from the checked-in inputs; any crash fails the run. About
# 1.5 min to build the targets from clean plus UIOMMUFD_FUZZ_SECONDS (default
# 25) per target. UIOMMUFD_SKIP_FUZZ=1 skips it.
fuzz_smoke() {
    if [ "${UIOMMUFD_SKIP_FUZZ:-0}" = 1 ]; then
        echo "UIOMMUFD_SKIP_FUZZ=1: skipping the fuzz smoke run"
        return 0
    fi
    scripts/fuzz.sh all "${UIOMMUFD_FUZZ_SECONDS:-25}"
}
step fuzz fuzz_smoke
step conformance tests/conformance/kselftest.sh "$@"
printf '\n==> all steps passed\n'
