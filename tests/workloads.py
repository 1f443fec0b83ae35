"""Random feeds and chunks for any loaded model: the soak and thread stress tests' workloads.

Shared by tests/test_soak.py, tests/test_threads.py and benchmarks/soak.py (which puts
tests/ on its path): the long runs and the short ones drive the models the same way.
"""
from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

import lstminfer
import lstminfer.models


def bundled_paths() -> dict[str, str]:
    return {name: lstminfer.models.path(name) for name in lstminfer.models.available()}


def torch_two_layer_lstm() -> bytes | None:
    """A PyTorch 2-layer LSTM (x, h0, c0 -> y, h_n, c_n) exported to ONNX; None without torch."""
    try:
        import torch_models
    except ImportError:
        return None
    spec = torch_models.RecurrentSpec("LSTM", num_layers=2, state_io=True, input_size=6, hidden_size=24)
    return torch_models.export(spec, "torchscript", 17)


def feeds(model, rng: np.random.Generator, batch: int, time: int) -> dict[str, np.ndarray]:
    """Random float32 feeds for every input: a dimension named like time gets ``time``, any
    other named (symbolic) dimension ``batch``."""
    out = {}
    for arg in model.get_inputs():
        shape = [d if isinstance(d, int) else (time if "time" in str(d).lower() or "seq" in str(d).lower() else batch)
                 for d in arg.shape]
        out[arg.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def chunk(stream_like, rng: np.random.Generator, time: int) -> np.ndarray:
    """One stream chunk of ``time`` steps (batch 1) for a Stream's or StreamPool's model."""
    program = stream_like._program
    vi = program.data_inputs[0]
    shape = []
    for axis, d in enumerate(vi.shape):
        if isinstance(d, int):
            shape.append(d)
        elif axis == program.chunk_batch_axis:
            shape.append(1)
        else:
            shape.append(time)
    return rng.standard_normal(shape).astype(np.float32)


THREADS = 8


# -- soak loops -------------------------------------------------------------------------------
def stream_steps(model, rng: np.random.Generator, steps: int, max_chunk: int = 6) -> None:
    """``steps`` Stream.step calls over streams of random lifetimes (1-200 steps) and chunk lengths."""
    stream, left = model.stream(), 0
    chunks = [chunk(stream, rng, t) for t in range(1, max_chunk + 1)]
    for _ in range(steps):
        if left == 0:
            stream, left = model.stream(), int(rng.integers(1, 200))
        stream.step(chunks[int(rng.integers(0, max_chunk))])
        left -= 1


def pool_cycles(pool, rng: np.random.Generator, cycles: int, max_chunk: int = 4) -> None:
    """``cycles`` rounds of: open a stream of random lifetime (1-50 steps) when there is room, step
    a random half of the open streams (random chunk lengths: one-shape and mixed steps), close
    those whose lifetime is over."""
    chunks = [chunk(pool, rng, t) for t in range(1, max_chunk + 1)]
    left: dict[int, int] = {}
    for _ in range(cycles):
        if len(left) < pool.max_streams:
            left[pool.open()] = int(rng.integers(1, 50))
        stepped = [sid for sid in left if rng.random() < 0.5] or list(left)[:1]
        same = rng.random() < 0.5
        length = int(rng.integers(0, max_chunk))
        pool.step({sid: chunks[length if same else int(rng.integers(0, max_chunk))] for sid in stepped})
        for sid in stepped:
            left[sid] -= 1
            if left[sid] == 0:
                pool.close(sid)
                del left[sid]
    for sid in left:
        pool.close(sid)


def load_and_drop(source, backend: str, threads: int, rng: np.random.Generator) -> None:
    """Load, run (starting a threads=2 kernel's worker thread), stream, pool, then drop it all."""
    model = lstminfer.load(source, backend=backend, threads=threads)
    model.run(None, feeds(model, rng, batch=12, time=3))
    stream = model.stream()
    stream.step(chunk(stream, rng, 3))
    pool = model.stream_pool(max_streams=16)
    ids = [pool.open() for _ in range(12)]
    pool.step({sid: chunk(pool, rng, 2) for sid in ids})  # 12 rows: the threads=2 batch split
    del model, stream, pool


# -- threads ----------------------------------------------------------------------------------
def warm_until_compiled(model, jobs: list[dict]) -> None:
    """Run ``jobs`` until each signature has its compiled program: before that a call may run the
    plan instead (the program set compiles a new signature only once the programs made so far are
    used enough). Plan and program give the same bits except a threads=2 model's recurrent
    kernels at an odd batch (the two split the batch rows differently)."""
    signatures = {tuple(v.shape for v in job.values()) for job in jobs}
    for _ in range(200):
        for job in jobs:
            model.run(None, job)
        if len(model._programs.compiled()) >= len(signatures):
            return


def run_shared(model, jobs_per_thread: list[list[dict]], calls: int) -> list[str]:
    """Each thread calls ``model.run`` ``calls`` times, cycling through its own jobs, and checks
    every result bit for bit against the same job run serially before. The failures.

    Warm-up first, until every signature has its compiled program (``warm_until_compiled``).
    """
    warm_until_compiled(model, [job for jobs in jobs_per_thread for job in jobs])
    expected = [[model.run(None, job) for job in jobs] for jobs in jobs_per_thread]
    failures: list[str] = []
    start = threading.Barrier(len(jobs_per_thread))

    def worker(t: int) -> None:
        jobs = jobs_per_thread[t]
        start.wait()
        for call in range(calls):
            k = call % len(jobs)
            got = model.run(None, jobs[k])
            differ = [i for i, (g, e) in enumerate(zip(got, expected[t][k])) if not np.array_equal(g, e)]
            if differ:
                i = differ[0]
                failures.append(f"thread {t} call {call} job {k}: outputs {differ} differ, max "
                                f"{float(np.abs(got[i] - expected[t][k][i]).max()):.3g}")
                return

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(jobs_per_thread))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return failures


def thread_jobs(model, seed: int, batches=(1, 3, 8, 12)) -> list[list[dict]]:
    """Per thread, its own feeds of several batch sizes and lengths (8+ rows: the threads=2 batch split)."""
    rng = np.random.default_rng(seed)
    return [[feeds(model, rng, batch=b, time=int(rng.integers(1, 9))) for b in batches] for _ in range(THREADS)]


# -- process resources -----------------------------------------------------------------------
PAGE = os.sysconf("SC_PAGE_SIZE")


def _malloc_trim():
    """glibc's malloc_trim, or a no-op elsewhere."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda pad: 0


_TRIM = _malloc_trim()


def rss_bytes() -> int:
    """Resident memory after the allocator hands its free pages back: a compile cache's churn
    leaves free holes in a heap fragmented by a long test run, which RSS would count as growth."""
    _TRIM(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def resources() -> dict[str, int]:
    """What a leak of files, threads or temporary files would grow."""
    import tempfile

    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "python threads": threading.active_count(),
        "native threads": len(os.listdir("/proc/self/task")),
        "temp files": len(os.listdir(tempfile.gettempdir())),
    }
