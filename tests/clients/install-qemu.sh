#!/usr/bin/env bash
# Install the real clients the client tests drive (run as root on Debian bookworm):
#  - QEMU 7.2: bookworm's qemu-system-x86, installed on the host.
#  - QEMU 10.0: trixie's qemu-system-x86, in a debootstrap'ed trixie chroot
#    (it needs trixie's glibc), cached under $UIOMMUFD_TRIXIE (default
#    /var/cache/uiommufd/trixie). A marker file written last says the chroot
#    is complete; an incomplete one is removed and rebuilt.
# Idempotent; does nothing (no apt-get update, no network) when both exist.
set -euo pipefail

TRIXIE=${UIOMMUFD_TRIXIE:-/var/cache/uiommufd/trixie}
MARKER=$TRIXIE/.uiommufd-complete
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

updated=0
apt_install() {
    if [ "$updated" = 0 ]; then
        $SUDO apt-get update -qq
        updated=1
    fi
    $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

t0=$SECONDS
host_pkgs=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || host_pkgs+=(qemu-system-x86)
command -v debootstrap >/dev/null 2>&1 || host_pkgs+=(debootstrap)
command -v python3 >/dev/null 2>&1 || host_pkgs+=(python3)
if [ ${#host_pkgs[@]} -gt 0 ]; then
    echo "install-qemu.sh: installing ${host_pkgs[*]}"
    apt_install "${host_pkgs[@]}"
fi
echo "install-qemu.sh: host QEMU: $(qemu-system-x86_64 --version | head -1)"

if [ -f "$MARKER" ] && [ -x "$TRIXIE/usr/bin/qemu-system-x86_64" ]; then
    echo "install-qemu.sh: trixie chroot cached at $TRIXIE"
else
    if [ -e "$TRIXIE" ]; then
        echo "install-qemu.sh: removing incomplete chroot $TRIXIE"
        # A half-built chroot may still have /proc or /dev mounted.
        for m in proc sys dev/pts dev; do
            mountpoint -q "$TRIXIE/$m" 2>/dev/null && $SUDO umount -l "$TRIXIE/$m" || true
        done
        $SUDO rm -rf --one-file-system "$TRIXIE"
    fi
    echo "install-qemu.sh: debootstrap trixie into $TRIXIE (about a minute)"
    $SUDO mkdir -p "$(dirname "$TRIXIE")"
    mirror=${UIOMMUFD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    $SUDO debootstrap --variant=minbase trixie "$TRIXIE" "$mirror" >"$TRIXIE.log" 2>&1 || {
        tail -30 "$TRIXIE.log" >&2
        echo "install-qemu.sh: debootstrap failed (log: $TRIXIE.log)" >&2
        exit 1
    }
    $SUDO chroot "$TRIXIE" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends qemu-system-x86 >>"$TRIXIE.log" 2>&1 || {
        tail -30 "$TRIXIE.log" >&2
        echo "install-qemu.sh: installing qemu in the chroot failed (log: $TRIXIE.log)" >&2
        exit 1
    }
    # Downloaded .debs are not needed once installed.
    $SUDO chroot "$TRIXIE" apt-get clean
    $SUDO touch "$MARKER"
fi
echo "install-qemu.sh: trixie QEMU: $($SUDO chroot "$TRIXIE" qemu-system-x86_64 --version | head -1)"
echo "install-qemu.sh: done in $((SECONDS - t0))s"
