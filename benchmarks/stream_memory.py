"""Memory per open stream: ``python benchmarks/stream_memory.py [--streams 10000] [--hidden 64 256]``.

Counts (tracemalloc) what a pool of N streams and N ``Stream`` objects
allocate once the model's stream program exists, each stream stepped once,
and prints it per stream next to the state's own bytes (h and c of one
single-layer LSTM). The target: the state plus a small constant.
"""
from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

import lstminfer
from peers import onnx_model


def _allocated(make) -> tuple[int, object]:
    """Bytes still allocated after ``make()`` (its result kept alive), and that result."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = make()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def pool_bytes_per_stream(model, streams: int, hidden: int) -> float:
    x = np.zeros((1, 1, hidden), np.float32)

    def make():
        pool = model.stream_pool(max_streams=streams)
        ids = [pool.open() for _ in range(streams)]
        for start in range(0, streams, 64):  # every stream stepped once, 64 per batched step
            pool.step({sid: x for sid in ids[start:start + 64]})
        return pool, ids

    total, _ = _allocated(make)
    return total / streams


def stream_bytes_per_stream(model, streams: int, hidden: int) -> float:
    x = np.zeros((1, 1, hidden), np.float32)

    def make():
        made = [model.stream() for _ in range(streams)]
        for s in made:
            s.step(x)
        return made

    total, _ = _allocated(make)
    return total / streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    print(f"| LSTM | state bytes | per pool stream ({args.streams:,} open) | per `Stream` ({args.streams:,}) |")
    print("|---|---|---|---|")
    for hidden in args.hidden:
        model = lstminfer.load(onnx_model("LSTM", hidden))
        model.stream()  # the stream program is built once per model, outside the count
        state = 2 * hidden * 4
        pool = pool_bytes_per_stream(model, args.streams, hidden)
        single = stream_bytes_per_stream(model, args.streams, hidden)
        print(f"| H={hidden} | {state} B | {pool:.0f} B (state + {pool - state:.0f}) "
              f"| {single:.0f} B (state + {single - state:.0f}) |")


if __name__ == "__main__":
    main()
