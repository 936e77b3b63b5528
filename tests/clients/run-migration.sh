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

STEP_TAG=migration
# shellcheck source=tests/clients/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
t_all=$SECONDS

setup_qemu_and_release
step "qemu live migration" python3 tests/clients/qemu/test_migration.py "$@"
rc=$?
printf '\n==> migration: %ds in all\n' "$((SECONDS - t_all))"
exit "$rc"
