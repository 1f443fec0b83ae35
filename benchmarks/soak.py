"""Soak, load/drop and thread stress, long: ``python benchmarks/soak.py [--steps 1000000] [--cycles 100000]
[--loads 1000] [--thread-calls 5000] [--csv soak.csv] [--quick]``.

1. ``--steps`` Stream.step calls (streams of random lifetimes 1-200 steps, chunks of 1-6 frames)
   spread over the bundled models and a PyTorch 2-layer LSTM export; then ``--cycles`` StreamPool
   rounds (open a stream of random lifetime, step a random half of the open streams with random
   chunk lengths, close the finished ones). Resident memory (/proc/self/statm) is printed at 20
   checkpoints; its growth after the warm-up (the first checkpoint) is the figure, and the same
   runs at a tenth of the length under tracemalloc give the traced-memory curve. Pools hold 16
   streams: their compiled programs (one per batch shape, at most 32 per model) fill within the
   warm-up (the first quarter); bigger pools take longer to fill that bounded cache.
2. ``--loads`` load/run/stream/pool/drop cycles per backend: file descriptors, Python and native
   threads, temporary files before and after.
3. 8 threads sharing one Model (each backend, threads=1 and 2) for ``--thread-calls`` calls each,
   checked bit for bit against serial calls.

The curves go to ``--csv`` (and a PNG beside it when matplotlib is installed). The tests run a
short version of each (tests/test_soak.py, tests/test_threads.py, same workloads: tests/workloads.py).
"""
from __future__ import annotations

import argparse
import csv
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the shared workloads
import lstminfer  # noqa: E402
from workloads import (bundled_paths, load_and_drop, pool_cycles, resources, rss_bytes, run_shared,  # noqa: E402
                       stream_steps, thread_jobs, torch_two_layer_lstm)

CHECKPOINTS = 20
WARMUP = 5  # checkpoints: a pool's compiled programs per batch shape (at most 32 per model, LRU) fill first
MIB = 1 << 20


def sources() -> dict[str, object]:
    out: dict[str, object] = dict(bundled_paths())
    exported = torch_two_layer_lstm()
    if exported is not None:
        out["torch_lstm_2layer"] = exported
    return out


def curve(label: str, work, total: int, traced: bool) -> list[tuple[str, int, float]]:
    """Run ``work(n)`` in CHECKPOINTS blocks of total/CHECKPOINTS; (label, done, MiB) after each:
    resident memory, or tracemalloc's current size when ``traced``."""
    block = max(1, total // CHECKPOINTS)
    points = []
    if traced:
        tracemalloc.start()
    try:
        for k in range(1, CHECKPOINTS + 1):
            work(block)
            gc.collect()
            now = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
            points.append((label, k * block, now / MIB))
    finally:
        if traced:
            tracemalloc.stop()
    return points


def soak(models: dict[str, lstminfer.Model], steps: int, cycles: int, traced: bool) -> list[tuple[str, int, float]]:
    rng = np.random.default_rng(0)
    names = list(models)
    pools = {name: models[name].stream_pool(max_streams=16) for name in names}

    def stepping(n: int) -> None:  # n steps spread over the models
        for name in names:
            stream_steps(models[name], rng, max(1, n // len(names)))

    def cycling(n: int) -> None:
        for name in names:
            pool_cycles(pools[name], rng, max(1, n // len(names)))

    kind = "traced" if traced else "rss"
    return curve(f"stream steps ({kind})", stepping, steps, traced) + curve(f"pool cycles ({kind})", cycling,
                                                                           cycles, traced)


def summarize(points: list[tuple[str, int, float]]) -> None:
    labels = dict.fromkeys(label for label, _, _ in points)
    for label in labels:
        ys = [(done, mib) for lab, done, mib in points if lab == label]
        base = ys[WARMUP - 1][1]  # after the warm-up
        grow = max(mib for _, mib in ys[WARMUP - 1:]) - base
        print(f"{label:28s} {ys[-1][0]:>9,d} done  after warm-up ({ys[WARMUP - 1][0]:,d}) {base:8.2f} MiB  "
              f"max growth after it {grow * 1024:8.1f} KiB  end {(ys[-1][1] - base) * 1024:+8.1f} KiB")
        print("    curve (MiB):", " ".join(f"{mib:.2f}" for _, mib in ys))


def loads(source, count: int) -> None:
    """``count`` load/drop cycles per backend: resources before and after, RSS after each tenth."""
    rng = np.random.default_rng(1)
    tempfile.tempdir = tempfile.mkdtemp(prefix="lstminfer-soak-")  # temporary files counted here, not other processes'
    for backend, threads in (("cython", 2), ("cython", 1), ("numba", 2), ("reference", 1)):
        for _ in range(3):
            load_and_drop(source, backend, threads, rng)
        gc.collect()
        before, start, rss = resources(), time.perf_counter(), []
        for k in range(count):
            load_and_drop(source, backend, threads, rng)
            if (k + 1) % max(1, count // 10) == 0:
                gc.collect()
                rss.append(rss_bytes() / MIB)
        after = resources()
        print(f"{count} loads backend={backend} threads={threads}: {'unchanged' if after == before else 'CHANGED'} "
              f"{before} -> {after}; RSS after each tenth (MiB): {' '.join(f'{r:.2f}' for r in rss)} "
              f"({time.perf_counter() - start:.1f} s)")


def threads_stress(all_sources: dict[str, object], calls: int) -> None:
    for name, source in all_sources.items():
        for backend, threads in (("cython", 1), ("cython", 2), ("numba", 1), ("numba", 2), ("reference", 1)):
            model = lstminfer.load(source, backend=backend, threads=threads)
            n = calls if backend != "reference" else max(1, calls // 10)
            start = time.perf_counter()
            failures = run_shared(model, thread_jobs(model, seed=7), n)
            print(f"8 threads x {n} calls {name} backend={backend} threads={threads}: "
                  f"{'bit-identical' if not failures else failures[:3]} ({time.perf_counter() - start:.1f} s)")


def write_csv(points, path: Path) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["run", "done", "MiB"])
        out.writerows((label, done, f"{mib:.4f}") for label, done, mib in points)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {path} (matplotlib not installed: no plot)")
        return
    labels = list(dict.fromkeys(label for label, _, _ in points))
    fig, axes = plt.subplots(len(labels), 1, figsize=(7, 2.2 * len(labels)))
    for ax, label in zip(np.atleast_1d(axes), labels):
        ys = [(done, mib) for lab, done, mib in points if lab == label]
        ax.plot([d for d, _ in ys], [m for _, m in ys], marker=".")
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("MiB")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=100)
    print(f"wrote {path} and {path.with_suffix('.png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=1000)
    parser.add_argument("--thread-calls", type=int, default=2000)
    parser.add_argument("--csv", type=Path, default=Path("soak.csv"))
    parser.add_argument("--quick", action="store_true", help="a hundredth of every count")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.cycles, args.loads, args.thread_calls = (max(1, n // 100) for n in (
            args.steps, args.cycles, args.loads, args.thread_calls))
    all_sources = sources()
    loads(all_sources["adding_lstm"], args.loads)  # first: the soak's heap would blur its RSS
    models = {name: lstminfer.load(source) for name, source in all_sources.items()}
    print(f"models: {', '.join(models)}; {args.steps:,} stream steps, {args.cycles:,} pool cycles")
    start = time.perf_counter()
    points = soak(models, args.steps, args.cycles, traced=False)
    print(f"RSS run: {time.perf_counter() - start:.0f} s")
    points += soak(models, args.steps // 10, args.cycles // 10, traced=True)
    summarize(points)
    write_csv(points, args.csv)
    threads_stress(all_sources, args.thread_calls)


if __name__ == "__main__":
    main()
