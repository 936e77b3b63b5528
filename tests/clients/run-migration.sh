#!/usr/bin/env bash
# Live migration by unmodified QEMU of uiommufd's emulated dma-engine
# (tests/clients/qemu/test_migration.py): QEMU 7.2 with the v1 region
# protocol on a type1 container; QEMU 10.0 with v2 on iommufd (HWPT dirty
# tracking, device DMA logging), on the legacy container, and cancelled /
# destination-lost migrations. Meant to run after tests/clients/run.sh
# (which installs the QEMUs and builds the release binaries); it installs
# (tests/clients/install-qemu.sh, cached: nothing to do when run.sh did) and
# builds (a no-op when up to date) itself too, so it also runs alone.
# Run as root (the QEMU 10.0 chroot). UIOMMUFD_SKIP_INSTALL=1: do not
# install. Arguments go to test_migration.py (e.g. --only 7.2, --keep).
# Exits non-zero on any failure.
set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO_ROOT"
t_all=$SECONDS

step() {
    local name=$1
    shift
    local t0=$SECONDS
    printf '\n--> migration: %s\n' "$name"
    if "$@"; then
        printf -- '--> migration: %s ok (%ds)\n' "$name" "$((SECONDS - t0))"
    else
        local rc=$?
        printf -- '--> migration: %s FAILED (exit status %d, %ds)\n' "$name" "$rc" "$((SECONDS - t0))" >&2
        return "$rc"
    fi
}

if [ "${UIOMMUFD_SKIP_INSTALL:-0}" != 1 ]; then
    step install tests/clients/install-qemu.sh || exit 1
fi
step "build (release uiommufd + preload)" \
    nice -n 10 cargo build --release --locked -p uiommufd-cli -p uiommufd-preload || exit 1
step "qemu live migration" python3 tests/clients/qemu/test_migration.py "$@"
rc=$?
printf '\n==> migration: %ds in all\n' "$((SECONDS - t_all))"
exit "$rc"
