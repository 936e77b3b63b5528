#!/usr/bin/env bash
# Run the uiommufd fuzz targets (fuzz/) with libFuzzer on stable Rust.
#
#   scripts/fuzz.sh TARGET SECONDS [-j N] [-- LIBFUZZER_ARGS...]
#   scripts/fuzz.sh all SECONDS [-j N]      each target for SECONDS, in turn
#   scripts/fuzz.sh build                   build the targets only
#   scripts/fuzz.sh list                    print the target names
#   scripts/fuzz.sh merge TARGET DIR        minimize fuzz/corpus/TARGET into DIR
#
# TARGET: dispatcher | io_pagetable_model | faultsafe_copy | vfio_device. -j N runs N libFuzzer workers
# (fork mode) for on-demand long runs, e.g. `scripts/fuzz.sh all 3600 -j 2`.
#
# No cargo-fuzz and no nightly: the targets are plain binaries linked with
# libfuzzer-sys (which builds libFuzzer from source with the C++ compiler)
# and instrumented with stable codegen options only: `-Cpasses=sancov-module`
# plus `-Cllvm-args=-sanitizer-coverage-*` (what cargo-fuzz passes with
# `--sanitizer none`). `--target <host>` keeps the flags off build scripts
# and proc-macros. Debug assertions and overflow checks are on. The layout
# is cargo-fuzz's, so `cargo fuzz run -s none TARGET` works too for those
# who have it (it needs RUSTC_BOOTSTRAP=1 on stable only for sanitizers).
#
# Corpora: fuzz/corpus/TARGET (grown, git-ignored) seeded from the
# checked-in fuzz/regressions/TARGET (seeds and every crash input found so
# far, all replayed by crates/uiommufd/tests/fuzz_regressions.rs). Crashes
# land in fuzz/artifacts/TARGET/ and make this script exit non-zero.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ="$REPO_ROOT/fuzz"
TARGETS=(dispatcher io_pagetable_model faultsafe_copy vfio_device)

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="$FUZZ/target/$HOST/release"

build() {
    local flags=(
        -Cpasses=sancov-module
        -Cllvm-args=-sanitizer-coverage-level=4
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
        -Cllvm-args=-sanitizer-coverage-pc-table
        -Cllvm-args=-sanitizer-coverage-trace-compares
        --cfg fuzzing
        -Cdebug-assertions
        -Coverflow-checks
    )
    if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
        echo "fuzz.sh: libfuzzer-sys builds libFuzzer with a C++ compiler: install g++ (scripts/setup.sh)" >&2
        exit 1
    fi
    echo "fuzz.sh: building the targets (libFuzzer, coverage-instrumented, $HOST)" >&2
    # RUSTFLAGS from the caller would change the instrumentation: replace them.
    (cd "$FUZZ" && RUSTFLAGS="${flags[*]}" CARGO_TARGET_DIR="$FUZZ/target" \
        cargo build --release --target "$HOST" --bins)
}

# run_target NAME SECONDS JOBS EXTRA...
run_target() {
    local name=$1 secs=$2 jobs=$3
    shift 3
    local corpus="$FUZZ/corpus/$name" seeds="$FUZZ/regressions/$name"
    local artifacts="$FUZZ/artifacts/$name"
    mkdir -p "$corpus" "$seeds" "$artifacts"
    local args=(
        "$corpus" "$seeds"
        -max_total_time="$secs"
        -artifact_prefix="$artifacts/"
        -timeout=10
        -rss_limit_mb=2048
        -max_len=4096
        -print_final_stats=1
    )
    if [ "$jobs" -gt 1 ]; then
        args+=(-fork="$jobs")
    fi
    echo "fuzz.sh: $name for ${secs}s (workers: $jobs)" >&2
    local rc=0
    "$BIN_DIR/$name" "${args[@]}" "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "fuzz.sh: $name FAILED (exit $rc); crash inputs in $artifacts:" >&2
        ls -1 "$artifacts" >&2 || true
        echo "fuzz.sh: replay one with: $BIN_DIR/$name <file>" >&2
        return "$rc"
    fi
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
list)
    printf '%s\n' "${TARGETS[@]}"
    exit 0
    ;;
build)
    build
    exit 0
    ;;
merge)
    [ $# -eq 2 ] || usage
    build
    mkdir -p "$2"
    "$BIN_DIR/$1" -merge=1 "$2" "$FUZZ/corpus/$1" "$FUZZ/regressions/$1"
    exit 0
    ;;
all | dispatcher | io_pagetable_model | faultsafe_copy | vfio_device) ;;
*) usage ;;
esac

[ $# -ge 1 ] || usage
secs=$1
shift
jobs=1
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    -j | --jobs | --workers)
        jobs=$2
        shift 2
        ;;
    -j*)
        jobs=${1#-j}
        shift
        ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *) usage ;;
    esac
done

build
if [ "$cmd" = all ]; then
    for t in "${TARGETS[@]}"; do
        run_target "$t" "$secs" "$jobs" ${extra[@]+"${extra[@]}"}
    done
else
    run_target "$cmd" "$secs" "$jobs" ${extra[@]+"${extra[@]}"}
fi
