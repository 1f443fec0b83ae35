"""Cold start: a fresh process imports lstminfer, loads a model, runs one prediction.

Measured twice: with the Numba cache already filled (the deployment case
after ``lstminfer compile``), and with an empty cache directory (first run on
a new machine: every kernel compiles). Target with a warm cache: <= 1 s.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import lstminfer
from peers import Case, make_runner
case = Case("LSTM", 64, "stream")
run = make_runner("lstminfer-numba", case)
run()
"""


def _fresh_process(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir,
               PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _SCRIPT], check=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_cold_start(benchmark, cache, tmp_path_factory):
    warm_dir = str(tmp_path_factory.getbasetemp() / "numba-cache-warm")
    if cache == "warm":
        _fresh_process(warm_dir)  # fill the cache once

    def once():
        directory = warm_dir if cache == "warm" else tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())
        return _fresh_process(directory)

    benchmark.group = "cold-start"
    benchmark.extra_info.update(op="LSTM", hidden=64, config=f"cold-start-{cache}", peer="lstminfer-numba",
                                T=1, B=1, flops=0)
    benchmark.pedantic(once, rounds=3 if cache == "warm" else 1, iterations=1)
