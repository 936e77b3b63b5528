#!/usr/bin/env bash
# The real-client tests: unmodified programs that only know the kernel's
# VFIO/iommufd uAPI drive uiommufd's emulated dma-engine under
# `uiommufd run --device dma-engine,... -- PROGRAM`:
#   - rust-vmm's vfio-ioctls crate (tests/clients/vfio-ioctls): legacy
#     group + container and iommufd cdev; map, COPY/FILL descriptors, MSI-X,
#     INTx, a DMA fault as a device error, DMA logging, migration v2 to a
#     second device;
#   - QEMU 7.2 (bookworm) and QEMU 10.0 (trixie chroot), TCG, no guest OS
#     (tests/clients/qemu/test_qemu.py): vfio-pci realize (legacy and
#     iommufd, one and two devices), BAR0 MMIO, traffic records in guest
#     memory, system_reset (live migration: run-migration.sh).
# Builds what it needs (release CLI + preload, the vfio-ioctls client),
# installs the QEMUs (tests/clients/install-qemu.sh; cached), runs every
# case, prints the wall time of each part, exits non-zero on any failure.
# Run as root (the QEMU 10.0 chroot). UIOMMUFD_SKIP_INSTALL=1: do not
# install. Arguments are passed to test_qemu.py (e.g. --only 7.2).
set -uo pipefail

STEP_TAG=clients
# shellcheck source=tests/clients/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BIN=$REPO_ROOT/target/release
CLIENT_TARGET=$REPO_ROOT/target/clients
CLIENT=$CLIENT_TARGET/release/uiommufd-vfio-ioctls-client
ADDR=0000:f0:00.0 # the registry's default addresses of the first two devices
PEER=0000:f0:01.0

passed=0
failed=0
failures=()
t_all=$SECONDS

# Setup failures end the run: nothing can be tested without them.
setup_qemu_and_release
step "build (vfio-ioctls client)" \
    bash -c "cd tests/clients/vfio-ioctls && nice -n 10 cargo build --release --locked --target-dir '$CLIENT_TARGET'" || exit 1

# One vfio-ioctls case: a fresh sysfs root, two devices (the second is the
# migration peer), a timeout, the client's own PASS/FAIL line. @SYSFS@ in
# the paths is the sysfs root.
vfio_ioctls_case() {
    local name=$1 sysfs_arg=$2 peer_arg=$3
    shift 3
    local dir rc t0=$SECONDS
    dir=$(mktemp -d /tmp/uiommufd-clients.XXXXXX)
    local path=${sysfs_arg//@SYSFS@/$dir/sysfs} peer=${peer_arg//@SYSFS@/$dir/sysfs}
    UIOMMUFD_SYSFS=$dir/sysfs UIOMMUFD_LOG=${UIOMMUFD_LOG:-debug} \
        timeout 60 "$BIN/uiommufd" run --device dma-engine --device dma-engine -- \
        "$CLIENT" "$@" --peer "$peer" "$path" >"$dir/out" 2>"$dir/err"
    rc=$?
    if [ "$rc" = 0 ] && grep -q '^PASS' "$dir/out"; then
        passed=$((passed + 1))
        printf 'PASS %-40s %3ds\n' "$name" "$((SECONDS - t0))"
        sed 's/^/       /' "$dir/out"
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL %-40s %3ds (exit status %d%s)\n' "$name" "$((SECONDS - t0))" "$rc" \
            "$([ "$rc" = 124 ] && echo ', timed out')"
        echo "--- stdout"; cat "$dir/out"
        echo "--- stderr (last 60 lines)"; tail -60 "$dir/err"
    fi
    rm -rf "$dir"
}

vfio_ioctls_all() {
    local before=$failed
    vfio_ioctls_case "vfio-ioctls container (sysfs dir)" \
        "@SYSFS@/devices/$ADDR" "@SYSFS@/devices/$PEER"
    vfio_ioctls_case "vfio-ioctls container (/sys/bus/pci)" \
        "/sys/bus/pci/devices/$ADDR" "/sys/bus/pci/devices/$PEER"
    vfio_ioctls_case "vfio-ioctls iommufd cdev (sysfs dir)" \
        "@SYSFS@/devices/$ADDR" "@SYSFS@/devices/$PEER" --iommufd
    vfio_ioctls_case "vfio-ioctls iommufd cdev (/sys/bus/pci)" \
        "/sys/bus/pci/devices/$ADDR" "/sys/bus/pci/devices/$PEER" --iommufd
    [ "$failed" = "$before" ]
}
step vfio-ioctls vfio_ioctls_all

qemu_all() {
    local out rc
    out=$(mktemp /tmp/uiommufd-clients-qemu.XXXXXX)
    python3 tests/clients/qemu/test_qemu.py "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    local p f
    p=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$out" | tail -1)
    f=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$out" | tail -1)
    passed=$((passed + ${p:-0}))
    if [ "$rc" != 0 ] || [ -z "$p" ]; then
        failed=$((failed + ${f:-1}))
        [ "${f:-1}" = 0 ] && failed=$((failed + 1))
        failures+=("qemu")
    fi
    rm -f "$out"
    return "$rc"
}
# QEMU's counts join ours (they are printed by test_qemu.py itself). The
# harness check (no uiommufd: both QEMUs start, QMP, port I/O, pmemsave)
# tells a broken environment from a broken device.
step "qemu harness" qemu_all --smoke
step qemu qemu_all "$@"

printf '\n==> clients: %ds in all\n' "$((SECONDS - t_all))"
[ "${#failures[@]}" = 0 ] || printf 'clients failed: %s\n' "${failures[*]}"
echo "clients: $passed passed, $failed failed"
[ "$failed" = 0 ]
