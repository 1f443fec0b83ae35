#!/usr/bin/env bash
# Install lstminfer from a clean clone inside an arm64 Debian bookworm root (QEMU user
# emulation through binfmt) and run its tests there. Correctness only: emulated timings
# mean nothing. Run it on every change to native/ or setup.py.
#
#   sudo tools/aarch64_check.sh [pytest args...]      (default: the ARM subset below)
#
# Needs root (debootstrap, chroot, binfmt) and network access to Debian and PyPI.
# The root is kept in $ARM_ROOT (default /var/tmp/lstminfer-arm64) and reused: the first
# run builds it (~3 min + the Python packages under emulation), later runs only reinstall
# the project. onnxruntime's and torch's tests skip there (no usable aarch64 wheel under
# QEMU); tests/test_x86_reference_outputs.py compares against outputs saved on x86-64.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ARM_ROOT:-/var/tmp/lstminfer-arm64}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Tests that cover kernels, the API, streaming and the CLI without onnxruntime or torch.
DEFAULT_TESTS=(tests/test_x86_reference_outputs.py tests/test_cython_kernels.py tests/test_int8_kernels.py
               tests/test_reference_rnn.py tests/test_native_layout.py tests/test_api.py tests/test_streaming.py
               tests/test_cli.py tests/test_demo.py tests/test_bundled_models.py tests/test_cpu_threads.py)

log() { echo "[aarch64_check] $*" >&2; }

setup_binfmt() {
    command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null \
        || apt-get install -y qemu-user-static debootstrap binfmt-support >/dev/null
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 || true
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { log "binfmt entry qemu-aarch64 missing"; exit 2; }
}

build_root() {
    [ -e "$ROOT/.lstminfer-root-done" ] && return
    # Built in a staging folder, renamed only when complete: a half-built root is never reused,
    # and nothing is removed while the host's /proc or /sys may be mounted inside it.
    local stage="$ROOT.partial"
    for d in sys dev proc; do mountpoint -q "$stage/$d" 2>/dev/null && umount -l "$stage/$d"; done
    [ -e "$ROOT" ] && { log "$ROOT exists but is incomplete: remove it (after unmounting its proc/sys/dev)"; exit 2; }
    rm -rf --one-file-system "$stage"
    log "debootstrap arm64 bookworm into $stage"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,python3-dev,gcc,g++,git,ca-certificates bookworm "$stage" "$MIRROR"
    cp /usr/bin/qemu-aarch64-static "$stage/usr/bin/"  # for kernels whose binfmt entry lacks the F flag
    chroot "$stage" /debootstrap/debootstrap --second-stage
    for d in sys dev proc; do mountpoint -q "$stage/$d" && umount -l "$stage/$d"; done
    touch "$stage/.lstminfer-root-done"
    mv "$stage" "$ROOT"
}

mount_root() {
    for d in proc dev sys; do mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"; done
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # The host's CA bundle (it may trust a proxy's CA that the fresh root does not): pip uses it.
    cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$ROOT/etc/host-ca.crt"
}

umount_root() {
    for d in sys dev proc; do mountpoint -q "$ROOT/$d" && umount -l "$ROOT/$d" || true; done
}

setup_binfmt
build_root
trap umount_root EXIT
mount_root

# A clean clone of the committed HEAD: what a user gets, without this tree's build outputs.
rm -rf --one-file-system "$ROOT/src/lstminfer"
mkdir -p "$ROOT/src"
git clone -q --no-hardlinks "$REPO" "$ROOT/src/lstminfer"
git -C "$ROOT/src/lstminfer" log --oneline -1 >&2

TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=("${DEFAULT_TESTS[@]}")

chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/host-ca.crt SSL_CERT_FILE=/etc/host-ca.crt \
    ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} ${HTTP_PROXY:+HTTP_PROXY=$HTTP_PROXY} /bin/bash -euo pipefail -c "
uname -m
cd /src/lstminfer
[ -x /venv/bin/python ] || python3 -m venv /venv
/venv/bin/pip install -q --prefer-binary 'setuptools>=77' wheel numpy onnx Cython pytest hypothesis
/venv/bin/pip install -q --no-build-isolation .  # the build requirements are above: one numpy, not two
cd /tmp   # the installed package, not the source tree
/venv/bin/lstminfer info \$(/venv/bin/python -c 'import lstminfer.models as m; print(m.path(\"adding_lstm\"))') | tail -2
/venv/bin/python -c 'import lstminfer.kernels.cython_backend as c; print(\"cython build in use:\", c.isa(), \"int8 dot products:\", c.vnni_available())'
/venv/bin/lstminfer demo
cd /src/lstminfer
mv lstminfer /tmp/lstminfer-source-hidden  # tests import the installed build
trap 'mv /tmp/lstminfer-source-hidden lstminfer' EXIT
/venv/bin/python -m pytest -q -p no:cacheprovider ${TESTS[*]}
"
log "done"
