"""How fast a batch-1 whole-model row could possibly be: the time to merely read its float32 weights.

At batch 1 a recurrent step reads every byte of its weights once and does little arithmetic per
byte, so no kernel (ours or onnxruntime's) can take less than the time this core needs to stream
those bytes from cache. This script measures that floor with a read-only AVX loop (compiled here
with the system C compiler, no arithmetic but one add per vector into 16 independent sums, fully
unrolled: fewer sums left the loop waiting on its adds, not on memory, and read 15-25 % slower
than the cache delivers) over a buffer of the row's size,
times lstminfer and onnxruntime (1 thread each, alternated) on the same row, and prints the best
ratio any kernel could reach against the ratio we reach.

Rows: ``step`` (T=1, every weight read once: W, R and the head) and ``seq`` (T=200: the input
projections run as one product over all steps, so each step reads only the recurrent R of every
layer, one layer after the other: each layer's R timed on its own, as it sits in cache).

    PYTHONPATH=. python benchmarks/weight_floor.py [--models torch_lstm2_h256 torch_classifier]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import whole_models  # noqa: E402

READ_LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512 vec; enum { LANES = 16 };
#define LOAD _mm512_load_ps
#define ADD _mm512_add_ps
#define ZERO _mm512_setzero_ps
#elif defined(__AVX2__)
#include <immintrin.h>
typedef __m256 vec; enum { LANES = 8 };
#define LOAD _mm256_load_ps
#define ADD _mm256_add_ps
#define ZERO _mm256_setzero_ps
#else
#error "needs AVX2 or AVX-512"
#endif
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define SUMS 16
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) / 4 / (SUMS * LANES) * (SUMS * LANES);
  if (n == 0) n = SUMS * LANES;
  float *a = aligned_alloc(64, n * 4 + 64);
  for (size_t i = 0; i < n; i++) a[i] = 1.0f / (float)(i + 1);
  int reps = (int)(2e9 / (n * 4.0)) + 1; double best = 1e30; float sink = 0;
  for (int trial = 0; trial < 7; trial++) {
    vec s[SUMS]; for (int k = 0; k < SUMS; k++) s[k] = ZERO();
    double t0 = now();
    for (int r = 0; r < reps; r++)
      for (size_t i = 0; i < n; i += SUMS * LANES) {
#pragma GCC unroll 16
        for (int k = 0; k < SUMS; k++) s[k] = ADD(s[k], LOAD(a + i + k * LANES));
      }
    double t = (now() - t0) / reps; if (t < best) best = t;
    float out[LANES]; vec v = s[0]; for (int k = 1; k < SUMS; k++) v = ADD(v, s[k]);
    __builtin_memcpy(out, &v, sizeof out); sink += out[0];
  }
  printf("%.6f %g\n", best * 1e6, sink);
  return 0;
}
"""


def read_floor_us(nbytes: int, workdir: Path) -> float:
    """Best time, µs, to read ``nbytes`` of float32 once (buffer kept hot, as weights are)."""
    exe = workdir / "read_loop"
    if not exe.exists():
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("weight_floor.py needs a C compiler (cc or $CC) for its read loop")
        src = workdir / "read_loop.c"
        src.write_text(READ_LOOP)
        subprocess.run([cc, "-O2", "-march=native", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), str(nbytes)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def recurrent_bytes(path: str) -> tuple[int, list[int]]:
    """(bytes of the float initializers a step reads in full, bytes of each recurrent node's R).

    An embedding table (a Gather's data) is left out: a step reads one row of it."""
    model = onnx.load(path)
    looked_up = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer
             if t.data_type == onnx.TensorProto.FLOAT and t.name not in looked_up}
    recurrent = [n.input[2] for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    return sum(sizes.values()), [sizes.get(name, 0) for name in recurrent]


def median_us(run, seconds: float = 0.4) -> float:
    run()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def measure(name: str, rounds: int, workdir: Path) -> list[dict]:
    model = whole_models.MODELS[name]
    path = whole_models.model_path(name, str(workdir))
    every, recurrent = recurrent_bytes(path)
    rows = []
    for row, steps, parts in (("stream", 1, [every]), ("seq", 200, recurrent)):
        if row not in model.rows:
            continue
        ours = whole_models.make_runner("lstminfer", model, row, str(workdir))
        ort = whole_models.make_runner("ort-1t", model, row, str(workdir))
        ours_us, ort_us = [], []
        for _ in range(rounds):  # alternated: the box is shared, medians move together
            ours_us.append(median_us(ours))
            ort_us.append(median_us(ort))
        floor = sum(read_floor_us(nbytes, workdir) for nbytes in parts) * steps
        rows.append(dict(model=name, row=row, weights_kib=sum(parts) / 1024, floor_us=floor,
                         ours_us=statistics.median(ours_us), ort_us=statistics.median(ort_us)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["torch_lstm2_h256", "torch_classifier", "adding_lstm"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lstminfer-floor-") as tmp:
        rows = [r for name in args.models for r in measure(name, args.rounds, Path(tmp))]
    print("| model | row | weights read per step | read floor µs | lstminfer µs | onnxruntime µs "
          "| best possible ratio (ort / floor) | ratio reached (ort / ours) | ours / floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['row']} | {r['weights_kib']:,.0f} KiB | {r['floor_us']:,.1f} | "
              f"{r['ours_us']:,.1f} | {r['ort_us']:,.1f} | {r['ort_us'] / r['floor_us']:.2f}x | "
              f"{r['ort_us'] / r['ours_us']:.2f}x | {r['ours_us'] / r['floor_us']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
