# Shared by tests/clients/run.sh and run-migration.sh (sourced, after they
# set STEP_TAG): the repository root as the working directory, a timed
# step, and the set-up both need (the QEMUs, the release binaries).

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO_ROOT" || exit 1

# step NAME COMMAND...: run COMMAND between "--> $STEP_TAG: NAME" lines
# that say how long it took and whether it failed; its exit status.
step() {
    local name=$1
    shift
    local t0=$SECONDS
    printf '\n--> %s: %s\n' "$STEP_TAG" "$name"
    if "$@"; then
        printf -- '--> %s: %s ok (%ds)\n' "$STEP_TAG" "$name" "$((SECONDS - t0))"
    else
        local rc=$?
        printf -- '--> %s: %s FAILED (exit status %d, %ds)\n' "$STEP_TAG" "$name" "$rc" "$((SECONDS - t0))" >&2
        return "$rc"
    fi
}

# Install the QEMUs (unless UIOMMUFD_SKIP_INSTALL=1) and build the release
# CLI and preload; the run ends on a failure: nothing can be tested then.
setup_qemu_and_release() {
    if [ "${UIOMMUFD_SKIP_INSTALL:-0}" != 1 ]; then
        step install tests/clients/install-qemu.sh || exit 1
    fi
    step "build (release uiommufd + preload)" \
        nice -n 10 cargo build --release --locked -p uiommufd-cli -p uiommufd-preload || exit 1
}
