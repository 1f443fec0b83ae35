"""Soak: memory stays flat over many stream steps and pool open/step/close cycles, and loading
and dropping models leaves no file descriptor, thread or temporary file behind. Short runs
(a few seconds); ``benchmarks/soak.py`` runs 10^6 steps and 10^5 cycles and prints the curve."""
from __future__ import annotations

import gc
import os
import tempfile
import tracemalloc

import numpy as np
import pytest

import lstminfer
from workloads import bundled_paths, load_and_drop, pool_cycles, resources, rss_bytes, stream_steps, torch_two_layer_lstm

# What a short run may grow by after its warm-up: allocator noise and cache churn, not a leak
# (a leak of one small object per step: ~100 B x 2,000 steps = 200 KB between the half means).
RSS_SLACK = 1 << 20
TRACED_SLACK = 16 << 10

SANITIZED = os.environ.get("LSTMINFER_SANITIZED") == "1"  # tools/sanitize.sh: ASan's quarantine grows RSS


def _sources():
    out = list(bundled_paths().items())
    exported = torch_two_layer_lstm()
    if exported is not None:
        out.append(("torch_lstm_2layer", exported))
    return out


SOURCES = _sources()


def growth(run, rounds: int, traced_rounds: int = 6) -> tuple[int, float]:
    """(RSS growth, traced-memory trend) in bytes after two warm-up calls of ``run`` (the caches
    of compiled programs per batch shape fill: bounded, but a pool's changing batch sizes churn
    them, moving the traced size by up to ~50 KB either way): RSS over ``rounds`` calls
    without tracemalloc (which costs memory of its own), then the mean traced size of the last
    half of ``traced_rounds`` calls minus that of the first half (a leak grows it; a cache that
    swaps one program for another moves it both ways)."""
    run()
    run()
    gc.collect()
    rss0 = rss_bytes()
    for _ in range(rounds):
        run()
    gc.collect()
    rss = rss_bytes() - rss0
    sizes = []
    tracemalloc.start()
    try:
        run()  # the caches' content, made before the start, is not traced: replaced by traced content
        run()
        for _ in range(traced_rounds):
            run()
            gc.collect()
            sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    half = traced_rounds // 2
    return rss, float(np.mean(sizes[half:]) - np.mean(sizes[:half]))


@pytest.mark.parametrize("name, source", SOURCES, ids=[n for n, _ in SOURCES])
def test_stream_steps_keep_memory_flat(name, source):
    model = lstminfer.load(source)
    rng = np.random.default_rng(1)
    rss, traced = growth(lambda: stream_steps(model, rng, 2000), rounds=6, traced_rounds=4)
    if not SANITIZED:
        assert rss < RSS_SLACK, f"{name}: RSS grew {rss} B over 12,000 steps after warm-up"
    assert traced < TRACED_SLACK, f"{name}: tracemalloc grew {traced:.0f} B in 4,000 steps"


@pytest.mark.parametrize("name, source, threads", [SOURCES[0] + (1,), SOURCES[-1] + (2,)],
                         ids=[f"{SOURCES[0][0]}-1", f"{SOURCES[-1][0]}-2"])
def test_pool_open_step_close_cycles_keep_memory_flat(name, source, threads):
    model = lstminfer.load(source, threads=threads)
    pool = model.stream_pool(max_streams=16)
    rng = np.random.default_rng(2)
    rss, traced = growth(lambda: pool_cycles(pool, rng, 400), rounds=6)
    if not SANITIZED:
        assert rss < RSS_SLACK, f"{name}: RSS grew {rss} B over 2,400 pool cycles after warm-up"
    assert traced < TRACED_SLACK * 8, f"{name}: tracemalloc grew {traced:.0f} B in 1,200 pool cycles"


@pytest.mark.parametrize("backend, threads, cycles", [("cython", 2, 60), ("cython", 1, 40), ("numba", 2, 30),
                                                      ("reference", 1, 30)])
def test_load_drop_cycles_leave_no_fd_thread_or_temp_file(backend, threads, cycles, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # temporary files counted here, away from other processes'
    source = bundled_paths()["adding_lstm"]
    blob = open(source, "rb").read()
    rng = np.random.default_rng(3)
    for warm in (source, blob):  # imports, caches and the first worker threads settle first
        load_and_drop(warm, backend, threads, rng)
    gc.collect()
    before = resources()
    for k in range(cycles):
        load_and_drop(source if k % 2 else blob, backend, threads, rng)
    gc.collect()
    after = resources()
    assert after == before, f"{cycles} load/drop cycles: {before} -> {after}"
