#!/usr/bin/env bash
# Install what scripts/test.sh needs on Debian bookworm (run as root).
# Idempotent: does nothing (and no apt-get update) when everything is present.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }

# The conformance runner builds the kernel selftests with gcc against the
# libc/kernel headers, and fetches/extracts Debian's linux-source-6.12 and
# (through a private apt configuration for trixie-backports, whose
# signature apt checks with the archive keyring) linux-source-7.2.
have gcc || need_pkgs+=(gcc)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need_pkgs+=(debian-archive-keyring)
# The fuzz targets (scripts/fuzz.sh) build libFuzzer from source: C++.
have g++ || need_pkgs+=(g++)
[ -f /usr/include/stdio.h ] || need_pkgs+=(libc6-dev)
[ -f /usr/include/asm-generic/types.h ] || need_pkgs+=(linux-libc-dev)
have xz || need_pkgs+=(xz-utils)
have make || need_pkgs+=(make)
have tar || need_pkgs+=(tar)
have timeout || need_pkgs+=(coreutils)
have awk || need_pkgs+=(mawk)
have apt-get || { echo "setup.sh: apt-get not found (Debian expected)" >&2; exit 1; }
have dpkg-deb || { echo "setup.sh: dpkg-deb not found (Debian expected)" >&2; exit 1; }

if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup.sh: installing ${need_pkgs[*]}"
    SUDO=
    [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
else
    echo "setup.sh: system packages present"
fi

# The real clients tests/clients/run.sh drives: QEMU 7.2 (bookworm) and
# QEMU 10.0 in a cached trixie chroot (about 45 s the first time).
"$(dirname "${BASH_SOURCE[0]}")/../tests/clients/install-qemu.sh"

# Rust components used by scripts/test.sh.
if have rustup; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi
have cargo || { echo "setup.sh: cargo not found; install Rust stable" >&2; exit 1; }
cargo nextest --version >/dev/null 2>&1 \
    || echo "setup.sh: note: cargo-nextest not installed; scripts/test.sh will use cargo test"
exit 0
