"""Whole models (real exports: bundled, PyTorch, Keras/tf2onnx) against onnxruntime with one thread.

    cd benchmarks && OPENBLAS_NUM_THREADS=1 pytest -q test_bench_whole_model.py --benchmark-json=whole.json
    python report.py whole.json

Models and rows are described in ``whole_models.py``: per model, ``stream``
(``Stream.step``), ``run`` (``Model.run`` with the state fed back, T=1), ``seq``
(T=200, B=1), ``batch`` (T=100, B=32) and ``pool`` (64 streams, one
``StreamPool.step``), each against onnxruntime (1 intra-op, 1 inter-op thread)
doing the same work in the same run. Before timing, the lstminfer test asserts
that its outputs match onnxruntime's on the row's inputs (``whole_models.check``),
so a wrong engine fails here instead of posting a speed.
"""
from __future__ import annotations

import time

import pytest

import whole_models as wm
from peers import time_short_calls

LONG_CALL = 2e-3  # s: slower calls are timed one per round, ~ROUND_BUDGET seconds in all
ROUND_BUDGET = 0.6
PARAMS = [pytest.param(name, row, peer, id=f"{name}-{row}-{peer}")
          for name, model in wm.MODELS.items() for row in model.rows for peer in wm.PEERS]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    """Where the PyTorch exports and the Keras-with-state-inputs model are written, once per session."""
    return str(tmp_path_factory.mktemp("whole_models"))


@pytest.mark.parametrize("name,row,peer", PARAMS)
def test_whole_model(benchmark, name, row, peer, model_dir):
    model = wm.MODELS[name]
    try:
        run = wm.make_runner(peer, model, row, model_dir)
    except ImportError as err:  # onnxruntime or torch (the PyTorch exports) absent
        pytest.skip(f"{name} {peer} unavailable: {err}")
    diff = wm.check(model, row, model_dir) if peer == "lstminfer" else None  # asserts; outside the timing
    T, B = wm.ROWS[row]
    benchmark.group = f"{name}-{row}"
    benchmark.extra_info.update(model=name, row=row, peer=peer, T=T, B=B)
    if diff is not None:
        benchmark.extra_info["max_abs_diff"] = diff
    start = time.perf_counter()
    run()  # first call outside the timing (plans, caches, the fast path's shape check)
    once = time.perf_counter() - start
    if once > LONG_CALL:
        rounds = max(5, min(20, int(ROUND_BUDGET / once)))
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        time_short_calls(benchmark, run)
