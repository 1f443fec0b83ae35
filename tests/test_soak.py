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

# What a short run may grow by after its warm-up: allocator noise, not a leak (a leak of one
# small array per step would be ~100 B x 20,000 steps = 2 MB).
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


def growth(run, rounds: int) -> tuple[int, int]:
    """(RSS growth, traced-memory growth) in bytes over ``rounds`` calls of ``run`` after one
    warm-up call; RSS measured without tracemalloc (which costs memory of its own)."""
    run()
    gc.collect()
    rss0 = rss_bytes()
    for _ in range(rounds):
        run()
    gc.collect()
    rss = rss_bytes() - rss0
    tracemalloc.start()
    try:
        run()
        gc.collect()
        traced0 = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced0
    finally:
        tracemalloc.stop()
    return rss, traced


@pytest.mark.parametrize("name, source", SOURCES, ids=[n for n, _ in SOURCES])
def test_stream_steps_keep_memory_flat(name, source):
    model = lstminfer.load(source)
    rng = np.random.default_rng(1)
    rss, traced = growth(lambda: stream_steps(model, rng, 2000), rounds=10)
    if not SANITIZED:
        assert rss < RSS_SLACK, f"{name}: RSS grew {rss} B over 20,000 steps after warm-up"
    assert traced < TRACED_SLACK, f"{name}: tracemalloc grew {traced} B over 2,000 steps"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name, source", SOURCES[:1] + SOURCES[-1:], ids=[n for n, _ in SOURCES[:1] + SOURCES[-1:]])
def test_pool_open_step_close_cycles_keep_memory_flat(name, source, threads):
    model = lstminfer.load(source, threads=threads)
    pool = model.stream_pool(max_streams=48)
    rng = np.random.default_rng(2)
    rss, traced = growth(lambda: pool_cycles(pool, rng, 500), rounds=8)
    if not SANITIZED:
        assert rss < RSS_SLACK, f"{name}: RSS grew {rss} B over 4,000 pool cycles after warm-up"
    assert traced < TRACED_SLACK, f"{name}: tracemalloc grew {traced} B over 500 pool cycles"


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
