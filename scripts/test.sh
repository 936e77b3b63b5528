#!/usr/bin/env bash
# Full test suite: formatting, lints, unit/integration tests, doctests, and
# the Linux iommufd kselftest conformance run. Stops at the first failure.
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
step conformance tests/conformance/kselftest.sh "$@"
printf '\n==> all steps passed\n'
