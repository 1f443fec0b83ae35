#!/usr/bin/env bash
# Build the wheel (`python -m build --wheel`) from a clean clone, list the ISA builds inside it,
# then install it into a fresh venv whose PATH has no C compiler and run `lstminfer demo`:
# a wheel user needs no compiler. Also prints the installed size of the slim install.
#
#   tools/wheel_check.sh [WORKDIR]        (default /tmp/lstminfer-wheel-check)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/lstminfer-wheel-check}
PY=${PYTHON:-python3}

rm -rf "$WORK" && mkdir -p "$WORK"
git clone -q --no-hardlinks "$REPO" "$WORK/src"

"$PY" -m venv "$WORK/buildenv"
"$WORK/buildenv/bin/pip" install -q build
(cd "$WORK/src" && "$WORK/buildenv/bin/python" -m build --wheel --outdir "$WORK/dist" >"$WORK/build.log" 2>&1) \
    || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/*.whl)
echo "wheel: $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"
echo "native modules inside:"
"$WORK/buildenv/bin/python" -m zipfile -l "$WHEEL" | awk '/_native\/.*\.so/ {print "  " $1}'

# A PATH with python's venv and the basic tools, but no gcc/cc/clang.
mkdir -p "$WORK/nocc"
for tool in sh bash env ls cat uname; do ln -sf "$(command -v $tool)" "$WORK/nocc/$tool"; done
"$PY" -m venv "$WORK/venv"
env -i HOME="$HOME" PATH="$WORK/nocc:$WORK/venv/bin" CC=/nonexistent bash -c '
set -e
for cc in gcc cc clang; do if command -v $cc >/dev/null; then echo "a compiler is on PATH: $cc"; exit 1; fi; done
echo "no compiler on PATH"
pip install -q --only-binary :all: "'"$WHEEL"'"
cd / && lstminfer demo
python -c "import lstminfer.kernels.cython_backend as c; print(\"cython build in use:\", c.isa())"
'
echo "installed size (site-packages of the fresh venv): $(du -sh "$WORK"/venv/lib/python3*/site-packages | cut -f1)"
