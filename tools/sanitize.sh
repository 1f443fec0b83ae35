#!/usr/bin/env bash
# Build native/ with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy of this
# checkout and run the kernel, streaming and quantization tests on it. Any report fails the run.
#
#   tools/sanitize.sh [pytest args...]      (default: the test files listed below, -q)
#   PYTHON=/path/to/python tools/sanitize.sh
#   SANITIZE_DIR=/tmp/x tools/sanitize.sh   (keep the copy and its build there; default: a temp dir, removed)
#
# The copy keeps this checkout's normal .so files untouched. CPython leaks by design, so
# leak detection is off; everything else (heap/stack overflows, use after free, UB) halts the run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python}
KEEP=${SANITIZE_DIR:+1}
WORK=${SANITIZE_DIR:-$(mktemp -d -t lstminfer-sanitize.XXXXXX)}
[[ -z "$KEEP" ]] && trap 'rm -rf "$WORK"' EXIT

# tracked and untracked (not ignored) files: the working tree as it is, without its builds. Only
# files that differ are copied (with a fresh mtime), so a kept SANITIZE_DIR rebuilds only what changed.
mkdir -p "$WORK"
(cd "$ROOT" && git ls-files -z -co --exclude-standard) | while IFS= read -r -d '' f; do
    [[ -f "$ROOT/$f" ]] || continue
    cmp -s "$ROOT/$f" "$WORK/$f" 2>/dev/null || install -D -m "$(stat -c %a "$ROOT/$f")" "$ROOT/$f" "$WORK/$f"
done

cd "$WORK"
echo "== building native/ with -fsanitize=address,undefined in $WORK"
LSTMINFER_SANITIZE=1 "$PYTHON" setup.py -q build_ext --inplace >build.log 2>&1 || { tail -50 build.log; exit 1; }

ASAN_RT=$(gcc -print-file-name=libasan.so)
UBSAN_RT=$(gcc -print-file-name=libubsan.so)
REPORTS="$WORK/sanitizer-reports"
mkdir -p "$REPORTS"
TESTS=(tests/test_cython_kernels.py tests/test_int8_kernels.py tests/test_numba_kernels.py tests/test_streaming.py
       tests/test_conv_streaming.py tests/test_quantized.py tests/test_soak.py tests/test_threads.py)
[[ $# -gt 0 ]] && TESTS=("$@")

echo "== running ${TESTS[*]} under the sanitizers"
status=0
LD_PRELOAD="$ASAN_RT:$UBSAN_RT" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$REPORTS/asan" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan" \
LSTMINFER_SANITIZED=1 \
    "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" || status=$?

if compgen -G "$REPORTS/*" >/dev/null; then
    echo "== sanitizer reports:"
    cat "$REPORTS"/*
    exit 1
fi
echo "== sanitizer reports: none (pytest exit $status)"
exit "$status"
